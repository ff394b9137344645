/* socks-load - a load generator for SOCKS5 proxies, and the HTTP origin it
 * fetches from.
 *
 *   socks-load serve --addr-file FILE
 *       Serves "GET /N" on 127.0.0.1 (port 0, written to FILE): an HTTP/1.0
 *       response of N bytes, then close.  N is at most 2^40.
 *
 *   socks-load fetch --proxy HOST:PORT --target HOST:PORT --size N
 *                    --count C --concurrency K [--samples FILE]
 *       Runs C fetches of /N through the SOCKS5 proxy (no authentication,
 *       CONNECT by domain name), at most K at a time.  Each fetch checks
 *       that exactly N body bytes arrived.  Prints one line of figures:
 *         ok=C failed=F seconds=S mib_per_s=R p50_ms=A p99_ms=B
 *       where latencies run from the start of the TCP connect to the last
 *       body byte.  Exits 1 if any fetch failed.  --samples FILE also
 *       appends each latency (ms) to FILE, one per line, so that several
 *       runs can be pooled.
 *
 * Bounded: a fetch that makes no progress for 30 s fails; the head of a
 * response is at most 4 KiB.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define HEAD_MAX 4096
#define STALL_SECS 30
#define CHUNK (256 * 1024)

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
parse_hostport(const char *s, char *host, size_t hlen, int *port)
{
    const char *c = strrchr(s, ':');
    char *end;
    long p;

    if (c == NULL || (size_t)(c - s) >= hlen || c == s)
        return -1;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = '\0';
    p = strtol(c + 1, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

/* ---- serve -------------------------------------------------------------- */

struct origin {
    uint64_t left;
    int head_done;
};

static void
origin_free(struct bufferevent *bev, struct origin *o)
{
    bufferevent_free(bev);
    free(o);
}

static void
origin_fill(struct bufferevent *bev, struct origin *o)
{
    static char block[CHUNK];
    struct evbuffer *out = bufferevent_get_output(bev);

    /* A little at a time: a thousand connections each buffering a large
     * body in one loop turn would starve every other one. */
    while (o->left > 0 && evbuffer_get_length(out) < 65536) {
        size_t n = o->left < CHUNK ? (size_t)o->left : CHUNK;

        if (block[1] == 0)
            for (size_t i = 0; i < sizeof(block); i++)
                block[i] = (char)('a' + i % 26);
        evbuffer_add(out, block, n);
        o->left -= n;
    }
}

static void
origin_write(struct bufferevent *bev, void *arg)
{
    struct origin *o = arg;

    if (!o->head_done)
        return;
    if (o->left > 0)
        origin_fill(bev, o);
    else if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        origin_free(bev, o);
}

static void
origin_read(struct bufferevent *bev, void *arg)
{
    struct origin *o = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_ptr end;
    char line[128];
    unsigned long long n;

    if (o->head_done) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) {
        if (evbuffer_get_length(in) > HEAD_MAX)
            origin_free(bev, o);
        return;
    }
    memset(line, 0, sizeof(line));
    evbuffer_copyout(in, line, sizeof(line) - 1);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (sscanf(line, "GET /%llu ", &n) != 1 || n > (1ULL << 40)) {
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "HTTP/1.0 404 Not Found\r\n"
                            "Content-Length: 0\r\n\r\n");
        o->head_done = 1;
        return;
    }
    evbuffer_add_printf(bufferevent_get_output(bev),
                        "HTTP/1.0 200 OK\r\nContent-Length: %llu\r\n"
                        "Content-Type: application/octet-stream\r\n\r\n", n);
    o->head_done = 1;
    o->left = n;
    origin_fill(bev, o);
}

static void
origin_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    origin_free(bev, arg);
}

static void
origin_accept(struct evconnlistener *l, evutil_socket_t fd,
              struct sockaddr *sa, int salen, void *arg)
{
    struct event_base *base = evconnlistener_get_base(l);
    struct bufferevent *bev;
    struct origin *o;

    (void)sa;
    (void)salen;
    (void)arg;
    o = calloc(1, sizeof(*o));
    bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (o == NULL || bev == NULL) {
        free(o);
        if (bev != NULL)
            bufferevent_free(bev);
        else
            evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, origin_read, origin_write, origin_event, o);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static int
serve(const char *addr_file)
{
    struct event_base *base = event_base_new();
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    struct evconnlistener *l;
    FILE *f;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    l = evconnlistener_new_bind(base, origin_accept, NULL,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                1024, (struct sockaddr *)&sin, sizeof(sin));
    if (l == NULL) {
        perror("socks-load serve: listen");
        return 1;
    }
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &len);
    f = fopen(addr_file, "w");
    if (f == NULL || fprintf(f, "127.0.0.1:%d\n", ntohs(sin.sin_port)) < 0
        || fclose(f) != 0) {
        perror(addr_file);
        return 1;
    }
    event_base_dispatch(base);
    return 0;
}

/* ---- fetch -------------------------------------------------------------- */

enum st { S_GREET, S_REPLY, S_HEAD, S_BODY };

struct run {
    struct event_base *base;
    struct sockaddr_storage proxy;
    socklen_t proxy_len;
    char thost[256];
    int tport;
    uint64_t size;
    long count, started, done, failed, active, concurrency;
    double *lat;
    uint64_t bytes;
};

struct fetch {
    struct run *r;
    struct bufferevent *bev;
    struct event *stall;
    enum st st;
    uint64_t got;
    double t0;
};

static void start_more(struct run *r);

static void
fetch_end(struct fetch *f, const char *why)
{
    struct run *r = f->r;

    if (why != NULL) {
        if (r->failed < 5)
            fprintf(stderr, "socks-load: fetch failed: %s\n", why);
        r->failed++;
    } else {
        r->lat[r->done - r->failed] = (now_s() - f->t0) * 1000.0;
        r->bytes += f->got;
    }
    r->done++;
    r->active--;
    bufferevent_free(f->bev);
    event_free(f->stall);
    free(f);
    if (r->done == r->count)
        event_base_loopexit(r->base, NULL);
    else
        start_more(r);
}

static void
fetch_read(struct bufferevent *bev, void *arg)
{
    struct fetch *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned char b[10];
    struct timeval tv = { STALL_SECS, 0 };

    evtimer_add(f->stall, &tv);
    for (;;) {
        size_t have = evbuffer_get_length(in);

        switch (f->st) {
        case S_GREET:
            if (have < 2)
                return;
            evbuffer_remove(in, b, 2);
            if (b[0] != 5 || b[1] != 0)
                return fetch_end(f, "SOCKS5 method refused");
            f->st = S_REPLY;
            break;
        case S_REPLY: {
            size_t need;

            if (have < 5)
                return;
            evbuffer_copyout(in, b, 5);
            if (b[0] != 5 || b[1] != 0) {
                static char msg[64];

                snprintf(msg, sizeof(msg), "SOCKS5 reply code %u", b[1]);
                return fetch_end(f, msg);
            }
            need = b[3] == 1 ? 10 : b[3] == 4 ? 22 : b[3] == 3 ? 7u + b[4]
                                                               : 0;
            if (need == 0)
                return fetch_end(f, "bad SOCKS5 reply address type");
            if (have < need)
                return;
            evbuffer_drain(in, need);
            f->st = S_HEAD;
            break;
        }
        case S_HEAD: {
            struct evbuffer_ptr p = evbuffer_search(in, "\r\n\r\n", 4, NULL);
            char head[HEAD_MAX + 1];
            const char *cl;

            if (p.pos < 0) {
                if (have > HEAD_MAX)
                    return fetch_end(f, "response head too long");
                return;
            }
            if ((size_t)p.pos + 4 > HEAD_MAX)
                return fetch_end(f, "response head too long");
            evbuffer_remove(in, head, (size_t)p.pos + 4);
            head[p.pos + 4] = '\0';
            if (strncmp(head, "HTTP/1.", 7) != 0 || strstr(head, " 200 ")
                == NULL)
                return fetch_end(f, "HTTP status is not 200");
            cl = strstr(head, "Content-Length: ");
            if (cl == NULL || strtoull(cl + 16, NULL, 10) != f->r->size)
                return fetch_end(f, "wrong Content-Length");
            f->st = S_BODY;
            break;
        }
        case S_BODY:
            f->got += have;
            evbuffer_drain(in, have);
            if (f->got > f->r->size)
                return fetch_end(f, "more body bytes than announced");
            if (f->got == f->r->size)
                return fetch_end(f, NULL);
            return;
        }
    }
}

static void
fetch_event(struct bufferevent *bev, short what, void *arg)
{
    struct fetch *f = arg;
    size_t hl = strlen(f->r->thost);
    unsigned char req[300];
    char get[128];

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;

        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one,
                   sizeof(one));
        req[0] = 5;
        req[1] = 1;
        req[2] = 0;
        bufferevent_write(bev, req, 3);
        req[0] = 5;
        req[1] = 1;
        req[2] = 0;
        req[3] = 3;
        req[4] = (unsigned char)hl;
        memcpy(req + 5, f->r->thost, hl);
        req[5 + hl] = (unsigned char)(f->r->tport >> 8);
        req[6 + hl] = (unsigned char)f->r->tport;
        bufferevent_write(bev, req, 7 + hl);
        snprintf(get, sizeof(get), "GET /%" PRIu64 " HTTP/1.0\r\n"
                 "Host: origin\r\n\r\n", f->r->size);
        bufferevent_write(bev, get, strlen(get));
        return;
    }
    if (what & BEV_EVENT_EOF)
        fetch_end(f, f->st == S_BODY ? "connection closed before the end of "
                  "the body" : "connection closed during the handshake");
    else
        fetch_end(f, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void
fetch_stall(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fetch_end(arg, "no progress for 30 s");
}

static void
start_more(struct run *r)
{
    while (r->active < r->concurrency && r->started < r->count) {
        struct fetch *f = calloc(1, sizeof(*f));
        struct timeval tv = { STALL_SECS, 0 };

        if (f == NULL) {
            fprintf(stderr, "socks-load: out of memory\n");
            exit(1);
        }
        f->r = r;
        f->t0 = now_s();
        f->bev = bufferevent_socket_new(r->base, -1, BEV_OPT_CLOSE_ON_FREE);
        f->stall = evtimer_new(r->base, fetch_stall, f);
        bufferevent_setcb(f->bev, fetch_read, NULL, fetch_event, f);
        bufferevent_enable(f->bev, EV_READ | EV_WRITE);
        evtimer_add(f->stall, &tv);
        r->started++;
        r->active++;
        if (bufferevent_socket_connect(f->bev, (struct sockaddr *)&r->proxy,
                                       (int)r->proxy_len) != 0) {
            fetch_end(f, "connect to the proxy failed");
            return;
        }
    }
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double
pct(const double *v, long n, double p)
{
    long i;

    if (n == 0)
        return 0;
    i = (long)ceil(p * (double)n) - 1;
    if (i < 0)
        i = 0;
    return v[i];
}

static int
fetch(const char *proxy, const char *target, uint64_t size, long count,
      long conc, const char *samples)
{
    struct run r;
    char host[256];
    int port;
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.proxy;
    double t0, secs;
    long ok;

    memset(&r, 0, sizeof(r));
    if (parse_hostport(proxy, host, sizeof(host), &port) != 0
        || inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
        fprintf(stderr, "socks-load: --proxy must be IPv4:PORT, not '%s'\n",
                proxy);
        return 2;
    }
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    r.proxy_len = sizeof(*sin);
    if (parse_hostport(target, r.thost, sizeof(r.thost), &r.tport) != 0) {
        fprintf(stderr, "socks-load: --target must be HOST:PORT, not '%s'\n",
                target);
        return 2;
    }
    r.size = size;
    r.count = count;
    r.concurrency = conc;
    r.lat = calloc((size_t)count, sizeof(double));
    r.base = event_base_new();
    if (r.lat == NULL || r.base == NULL)
        return 2;
    t0 = now_s();
    start_more(&r);
    event_base_dispatch(r.base);
    secs = now_s() - t0;
    ok = r.done - r.failed;
    if (samples != NULL) {
        FILE *f = fopen(samples, "a");

        if (f == NULL) {
            fprintf(stderr, "socks-load: %s: %s\n", samples, strerror(errno));
            return 2;
        }
        for (long i = 0; i < ok; i++)
            fprintf(f, "%.4f\n", r.lat[i]);
        if (fclose(f) != 0) {
            fprintf(stderr, "socks-load: %s: %s\n", samples, strerror(errno));
            return 2;
        }
    }
    qsort(r.lat, (size_t)ok, sizeof(double), cmp_double);
    printf("ok=%ld failed=%ld seconds=%.3f mib_per_s=%.1f p50_ms=%.3f "
           "p99_ms=%.3f\n", ok, r.failed, secs,
           (double)r.bytes / 1048576.0 / secs, pct(r.lat, ok, 0.50),
           pct(r.lat, ok, 0.99));
    free(r.lat);
    event_base_free(r.base);
    return r.failed == 0 ? 0 : 1;
}

static void
usage(void)
{
    fprintf(stderr, "usage: socks-load serve --addr-file FILE\n"
            "       socks-load fetch --proxy IP:PORT --target HOST:PORT "
            "--size N --count C --concurrency K [--samples FILE]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    const char *proxy = NULL, *target = NULL, *addr_file = NULL;
    const char *samples = NULL;
    unsigned long long size = 0;
    long count = 1, conc = 1;

    signal(SIGPIPE, SIG_IGN);
    if (argc < 2)
        usage();
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (v == NULL)
            usage();
        if (strcmp(k, "--proxy") == 0)
            proxy = v;
        else if (strcmp(k, "--target") == 0)
            target = v;
        else if (strcmp(k, "--addr-file") == 0)
            addr_file = v;
        else if (strcmp(k, "--size") == 0)
            size = strtoull(v, NULL, 10);
        else if (strcmp(k, "--count") == 0)
            count = strtol(v, NULL, 10);
        else if (strcmp(k, "--concurrency") == 0)
            conc = strtol(v, NULL, 10);
        else if (strcmp(k, "--samples") == 0)
            samples = v;
        else
            usage();
        i++;
    }
    if (strcmp(argv[1], "serve") == 0 && addr_file != NULL)
        return serve(addr_file);
    if (strcmp(argv[1], "fetch") == 0 && proxy != NULL && target != NULL
        && count > 0 && conc > 0)
        return fetch(proxy, target, size, count, conc, samples);
    usage();
    return 2;
}
