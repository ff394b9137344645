/* plaincat.c - the baseline for `make bench`: a plain socket copy with
 * read(2)/write(2) and 64 KiB buffers, no framework.
 *
 *   plaincat listen ADDRFILE    accept one connection, copy it to stdout
 *   plaincat dial IP PORT       copy stdin to a connection
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int
copy(int from, int to)
{
    static char buf[65536];

    for (;;) {
        ssize_t n = read(from, buf, sizeof(buf)), off = 0;

        if (n == 0)
            return 0;
        if (n < 0)
            return -1;
        while (off < n) {
            ssize_t w = write(to, buf + off, (size_t)(n - off));

            if (w <= 0)
                return -1;
            off += w;
        }
    }
}

int
main(int argc, char **argv)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int one = 1, fd;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (argc == 3 && strcmp(argv[1], "listen") == 0) {
        FILE *f;
        int c;

        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
            listen(fd, 1) != 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
            return 1;
        f = fopen(argv[2], "w");
        if (f == NULL)
            return 1;
        fprintf(f, "%u\n", ntohs(sa.sin_port));
        fclose(f);
        c = accept(fd, NULL, NULL);
        if (c < 0)
            return 1;
        return copy(c, STDOUT_FILENO) == 0 ? 0 : 1;
    }
    if (argc == 4 && strcmp(argv[1], "dial") == 0) {
        sa.sin_port = htons((uint16_t)atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &sa.sin_addr);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            return 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (copy(STDIN_FILENO, fd) != 0)
            return 1;
        return close(fd) == 0 ? 0 : 1;
    }
    fprintf(stderr, "usage: plaincat listen ADDRFILE | dial IP PORT\n");
    return 2;
}
