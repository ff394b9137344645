/* testhttpd - a small HTTP/1.1 server for the end-to-end tests.
 *
 *   testhttpd [--addr ADDR] --port-file FILE   serve (ADDR 127.0.0.1:0)
 *   testhttpd [--addr ADDR] --closed --port-file FILE
 *                                              hold a refused port
 *   testhttpd --print N                        write body N to stdout
 *
 * GET /bytes/N answers N bytes (N < 2^40) of a fixed pattern with a
 * Content-Length and "Connection: close"; any other path is 404.  Bodies
 * are streamed in 64 KiB pieces, each after the last has left, so memory
 * stays small for any N and many concurrent downloads.  The bound port is
 * written to FILE (written then renamed) once listening.  With --closed
 * it binds ADDR but never listens, so that connections to the port written
 * are refused for as long as it runs.  SIGTERM and SIGINT stop it.
 */
#include "config.h"

#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#define PIECE 65536
#define MAX_N (1ULL << 40)

/* Byte `off` of every body: no short period, so a lost or repeated
 * piece shows. */
static void
fill(unsigned char *buf, uint64_t off, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = off + i;

        buf[i] = (unsigned char)(x * 131u + (x >> 12) * 7u + (x >> 20));
    }
}

struct dl {
    struct evhttp_request *req;
    uint64_t left, off;
};

static void send_piece(struct evhttp_connection *conn, void *arg);

static void
dl_closed(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    /* The client went away: evhttp frees the request; stop sending. */
    ((struct dl *)arg)->req = NULL;
}

static void
send_piece(struct evhttp_connection *conn, void *arg)
{
    struct dl *d = arg;
    unsigned char buf[PIECE];
    struct evbuffer *b;
    size_t n;

    (void)conn;
    if (d->req == NULL) {
        free(d);
        return;
    }
    if (d->left == 0) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(d->req),
                                      NULL, NULL);
        evhttp_send_reply_end(d->req);
        free(d);
        return;
    }
    n = d->left < PIECE ? (size_t)d->left : PIECE;
    fill(buf, d->off, n);
    d->off += n;
    d->left -= n;
    b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_reply_end(d->req);
        free(d);
        return;
    }
    evbuffer_add(b, buf, n);
    evhttp_send_reply_chunk_with_cb(d->req, b, send_piece, d);
    evbuffer_free(b);
}

static void
handle(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_request_get_uri(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char len[32], *end;
    unsigned long long n;
    struct dl *d;

    (void)arg;
    evhttp_add_header(h, "Connection", "close");
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET ||
        strncmp(path, "/bytes/", 7) != 0 || path[7] < '0' || path[7] > '9') {
        evhttp_send_error(req, 404, "Not Found");
        return;
    }
    n = strtoull(path + 7, &end, 10);
    if (*end != '\0' || n >= MAX_N) {
        evhttp_send_error(req, 404, "Not Found");
        return;
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        evhttp_send_error(req, 500, "Out of memory");
        return;
    }
    d->req = req;
    d->left = n;
    snprintf(len, sizeof(len), "%llu", n);
    evhttp_add_header(h, "Content-Length", len);
    evhttp_add_header(h, "Content-Type", "application/octet-stream");
    evhttp_send_reply_start(req, 200, "OK");
    evhttp_connection_set_closecb(evhttp_request_get_connection(req),
                                  dl_closed, d);
    send_piece(NULL, d);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static int
print_body(unsigned long long n)
{
    unsigned char buf[PIECE];
    uint64_t off = 0;

    while (off < n) {
        size_t k = n - off < PIECE ? (size_t)(n - off) : PIECE;

        fill(buf, off, k);
        if (fwrite(buf, 1, k, stdout) != k)
            return 1;
        off += k;
    }
    return fflush(stdout) != 0;
}

/* Writes the port of the socket fd to path (written, then renamed). */
static int
write_port(evutil_socket_t fd, const char *path)
{
    struct sockaddr_storage ss;
    ev_socklen_t sl = sizeof(ss);
    char tmp[4096];
    FILE *f;
    unsigned p;

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    p = ntohs(ss.ss_family == AF_INET6
              ? ((struct sockaddr_in6 *)&ss)->sin6_port
              : ((struct sockaddr_in *)&ss)->sin_port);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%u\n", p) < 0 || fclose(f) != 0 ||
        rename(tmp, path) != 0) {
        fprintf(stderr, "testhttpd: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* A socket bound to host:port but never listening: connections to its
 * port are refused (RST), and no other socket can take the port while it
 * is held (no SO_REUSEADDR, no SO_REUSEPORT; connect() never picks it
 * either).  host is numeric, IPv6 in brackets or not. */
static evutil_socket_t
bind_closed(const char *host, const char *port)
{
    struct evutil_addrinfo hints, *ai = NULL;
    char name[256];
    size_t n = strlen(host);
    evutil_socket_t fd = -1;

    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memcpy(name, host + 1, n - 2);
        name[n - 2] = '\0';
    } else {
        snprintf(name, sizeof(name), "%s", host);
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_PASSIVE;
    if (evutil_getaddrinfo(name, port, &hints, &ai) != 0 || ai == NULL) {
        fprintf(stderr, "testhttpd: bad address %s:%s\n", host, port);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) != 0) {
        fprintf(stderr, "testhttpd: cannot bind %s:%s\n", host, port);
        if (fd >= 0)
            evutil_closesocket(fd);
        fd = -1;
    }
    evutil_freeaddrinfo(ai);
    return fd;
}

int
main(int argc, char **argv)
{
    const char *addr = "127.0.0.1:0", *port_file = NULL;
    struct event_base *base;
    struct evhttp *http = NULL;
    struct evhttp_bound_socket *bs;
    struct event *sigterm, *sigint;
    evutil_socket_t closed_fd = -1;
    char host[256], port[16];
    int rc = 1, closed = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--print") == 0 && i + 1 < argc)
            return print_body(strtoull(argv[i + 1], NULL, 10));
        if (strcmp(argv[i], "--addr") == 0 && i + 1 < argc)
            addr = argv[++i];
        else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
            port_file = argv[++i];
        else if (strcmp(argv[i], "--closed") == 0)
            closed = 1;
        else {
            fprintf(stderr, "usage: testhttpd [--addr ADDR] [--closed] "
                    "--port-file FILE | --print N\n");
            return 2;
        }
    }
    if (port_file == NULL) {
        fprintf(stderr, "testhttpd: --port-file is required\n");
        return 2;
    }
    {
        const char *colon = strrchr(addr, ':');

        if (colon == NULL || (size_t)(colon - addr) >= sizeof(host)) {
            fprintf(stderr, "testhttpd: bad address %s\n", addr);
            return 2;
        }
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        snprintf(port, sizeof(port), "%s", colon + 1);
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (base == NULL)
        return 1;
    if (closed) {
        closed_fd = bind_closed(host, port);
        if (closed_fd < 0 || write_port(closed_fd, port_file) != 0)
            goto out;
    } else {
        http = evhttp_new(base);
        if (http == NULL)
            goto out;
        evhttp_set_gencb(http, handle, NULL);
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
        bs = evhttp_bind_socket_with_handle(http, host,
                                            (ev_uint16_t)atoi(port));
        if (bs == NULL) {
            fprintf(stderr, "testhttpd: cannot listen on %s\n", addr);
            goto out;
        }
        if (write_port(evhttp_bound_socket_get_fd(bs), port_file) != 0)
            goto out;
    }
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    event_base_dispatch(base);
    event_free(sigterm);
    event_free(sigint);
    rc = 0;
out:
    if (closed_fd >= 0)
        evutil_closesocket(closed_fd);
    if (http != NULL)
        evhttp_free(http);
    event_base_free(base);
    return rc;
}
