/* udp-echo.c - a UDP echo server for the exit's udp tunnel test: binds
 * 127.0.0.1 port 0, writes "127.0.0.1:PORT" to the file given, and sends
 * every datagram back to its sender.  Ends after 60 s at the latest. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
    struct sockaddr_in sin = { 0 };
    socklen_t sl = sizeof(sin);
    int fd;
    FILE *f;
    char tmp[4096];

    if (argc != 2) {
        fprintf(stderr, "usage: udp-echo ADDR-FILE\n");
        return 2;
    }
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &sl) != 0) {
        perror("udp-echo");
        return 1;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", argv[1]);
    f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "127.0.0.1:%u\n", ntohs(sin.sin_port)) < 0 ||
        fclose(f) != 0 || rename(tmp, argv[1]) != 0) {
        perror(argv[1]);
        return 1;
    }
    alarm(60);
    for (;;) {
        unsigned char buf[65536];
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(fd, buf, sizeof(buf), 0,
                             (struct sockaddr *)&from, &fl);

        if (n >= 0)
            sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
}
