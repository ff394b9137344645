/* tcp.c - the tcp base layer: dial and listen, IPv4 and IPv6.
 *
 * Dialing resolves the host without blocking (the core's resolver), then
 * races the addresses happy-eyeballs style: attempt k starts 250 ms after
 * attempt k-1, or at once when k-1 fails; the first connection wins.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "sillad/plugin.h"

#define LAYER "tcp"
#define MAX_ATTEMPTS 8
#define STAGGER_MS 250
#define IO_CHUNK (128 * 1024)
#define MIN_CHUNK 4096
/* libevent sizes a buffer chain to a power of two that also holds the
 * chain's header: a read of 2^k - CHAIN_SLACK bytes fills a chain of 2^k
 * instead of half of one twice as large. */
#define CHAIN_SLACK 256

struct tcp_cfg {
    const struct sl_host *h;
    char host[256];
    char port[8];
    int64_t connect_timeout_ms;
    int nodelay;
    int64_t keepalive_s;
    int backlog;
    int family;
    size_t read_buffer;
    size_t dbg_rmax, dbg_wmax;   /* SL_DBG_RMAX / SL_DBG_WPARTIAL */
};

struct tcp_pipe {
    const struct sl_host *h;
    struct sl_pipe *pipe;        /* for pipe_set_error */
    evutil_socket_t fd;
    struct bufferevent *mine;    /* our end of the pair */
    struct event *rev, *wev;
    struct event *linger_ev;     /* after the pipe is gone (see linger) */
    size_t read_buffer, rchunk, wchunk;
    size_t rsize;                /* next read's size, MIN_CHUNK..rchunk */
    int busy;                    /* inside a handler that may free us */
    unsigned dead : 1;
    unsigned lingering : 1;      /* pipe freed, accepted bytes still going */
    unsigned read_eof : 1;       /* the peer ended its send direction */
    unsigned failed : 1;         /* an error was given to the user */
    unsigned shut_pending : 1;
    unsigned shut_done : 1;
    char remote[64];
};

struct attempt {
    struct tcp_dial *d;
    evutil_socket_t fd;
    struct event *ev;
    struct sockaddr_storage sa;
    socklen_t salen;
};

struct tcp_dial {
    struct tcp_cfg *cfg;
    struct event_base *base;
    sl_pipe_fn *done;
    void *arg;
    void *resolve_req;
    struct event *done_ev;     /* delivers the result from the loop */
    struct event *stagger_ev;  /* starts the next attempt */
    struct event *timeout_ev;  /* connect_timeout */
    struct sockaddr_storage addrs[MAX_ATTEMPTS];
    socklen_t addrlen[MAX_ATTEMPTS];
    size_t naddrs, next;
    struct attempt att[MAX_ATTEMPTS];
    size_t live;
    struct sl_pipe *result;
    struct sl_error err;
    int canceled, finished;
};

struct tcp_listener {
    struct tcp_cfg *cfg;
    struct event_base *base;
    struct evconnlistener *lev;
    struct event *retry_ev;
    int backoff_ms;
    sl_pipe_fn *on_accept;
    void *arg;
};

static const struct sl_opt_spec tcp_opts[] = {
    { "addr", SL_OPT_ADDR, SL_OPT_REQUIRED, NULL,
      "host:port to dial, or ip:port to listen on", NULL, 0, 0 },
    { "connect_timeout", SL_OPT_DURATION, 0, "10s",
      "give up a dial after this long", NULL, 1, 3600000 },
    { "nodelay", SL_OPT_BOOL, 0, "true", "set TCP_NODELAY", NULL, 0, 0 },
    { "keepalive", SL_OPT_DURATION, 0, "60s",
      "TCP keepalive idle time (0 turns keepalive off)", NULL, 0, 86400000 },
    { "backlog", SL_OPT_INT, 0, "1024", "listen backlog", NULL, 1, 65535 },
    { "family", SL_OPT_ENUM, 0, "any", "address family to use", "any|ipv4|ipv6",
      0, 0 },
    { "read_buffer", SL_OPT_SIZE, 0, "256k",
      "stop reading the socket while this much input waits", NULL, 4096,
      1073741824 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static int
tcp_configure(const struct sl_host *h, void *plugin_ctx,
              const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct tcp_cfg *c = calloc(1, sizeof(*c));
    const char *addr = h->opt_str(o, "addr");
    const char *fam = h->opt_str(o, "family");
    const char *env;
    const char *colon;

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->h = h;
    /* The core checked the syntax; split host and port again here. */
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');

        snprintf(c->host, sizeof(c->host), "%.*s", (int)(close - addr - 1),
                 addr + 1);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        snprintf(c->host, sizeof(c->host), "%.*s", (int)(colon - addr),
                 addr);
    }
    snprintf(c->port, sizeof(c->port), "%s", colon + 1);
    c->connect_timeout_ms = h->opt_int(o, "connect_timeout");
    c->nodelay = (int)h->opt_int(o, "nodelay");
    c->keepalive_s = h->opt_int(o, "keepalive") / 1000;
    c->backlog = (int)h->opt_int(o, "backlog");
    c->family = strcmp(fam, "ipv4") == 0   ? AF_INET
                : strcmp(fam, "ipv6") == 0 ? AF_INET6
                                           : AF_UNSPEC;
    c->read_buffer = (size_t)h->opt_int(o, "read_buffer");
    /* Test hooks: force short reads and partial writes. */
    if ((env = getenv("SL_DBG_RMAX")) != NULL)
        c->dbg_rmax = (size_t)strtoul(env, NULL, 10);
    if ((env = getenv("SL_DBG_WPARTIAL")) != NULL)
        c->dbg_wmax = (size_t)strtoul(env, NULL, 10);
    *out = c;
    return 0;
}

static void
tcp_unconfigure(void *cfg)
{
    free(cfg);
}

static void
format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)sa;

        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const void *)sa;

        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    } else {
        snprintf(buf, len, "?");
    }
}

/* ---- the data path ------------------------------------------------------
 *
 * The pipe's bufferevent is one end of a bufferevent pair; this layer
 * drives the socket itself through the other end ("mine").  libevent 2.1's
 * socket bufferevent reads at most 4 KiB per wakeup (EVBUFFER_MAX_READ),
 * which caps bulk throughput far below the kernel's; here each wakeup reads
 * up to IO_CHUNK straight into the pair, and the pair moves chains, not
 * bytes, so nothing is copied twice.
 *
 *   socket -> read -> mine.output -> (pair) -> user input
 *   user output -> (pair) -> mine.input -> writev -> socket
 *
 * Bounds: the user's input holds at most its read high watermark
 * (read_buffer unless the user sets another), and mine.output at most one
 * read: the socket is read only while mine.output is empty (the pair has
 * moved everything to the user), and each read is no larger than the room
 * left under the user's watermark (MIN_CHUNK at least; a user who has
 * reading turned off gets one read of less than MIN_CHUNK), so a user who
 * stops reading leaves the rest in the kernel's socket buffer.  Reads are
 * sized to what arrives: rsize doubles after a read that filled it, up to
 * the largest read (rchunk), and halves after one that used less than a
 * quarter, so a connection that trickles does not pin large chains.  The
 * pair stops moving the user's output while mine.input holds read_buffer
 * bytes (the socket is slow).
 */

static int
tcp_query(void *layer_ctx, int what, void *out, size_t *len)
{
    struct tcp_pipe *tp = layer_ctx;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char local[64];
    const char *text = NULL;
    int fd;

    switch (what) {
    case SL_Q_REMOTE_ADDR:
        text = tp->remote;
        break;
    case SL_Q_LOCAL_ADDR:
        if (getsockname(tp->fd, (struct sockaddr *)&ss, &sl) != 0)
            return SL_ESYS;
        format_addr((struct sockaddr *)&ss, local, sizeof(local));
        text = local;
        break;
    case SL_Q_FD:
        fd = (int)tp->fd;
        return sl_query_answer_bytes(out, len, &fd, sizeof(fd));
    default:
        /* The core answers SL_Q_PROTOCOL with the layer name, "tcp". */
        return SL_ENOTSUP;
    }
    return sl_query_answer_str(out, len, text);
}

static void
tp_free(struct tcp_pipe *tp)
{
    if (tp->rev != NULL)
        event_free(tp->rev);
    if (tp->wev != NULL)
        event_free(tp->wev);
    if (tp->linger_ev != NULL)
        event_free(tp->linger_ev);
    if (tp->mine != NULL)
        bufferevent_free(tp->mine);
    if (tp->fd >= 0)
        evutil_closesocket(tp->fd);
    free(tp);
}

/* Reports a socket error or EOF to the user end of the pair. */
static void
tp_report(struct tcp_pipe *tp, short what, int err)
{
    struct bufferevent *user = bufferevent_pair_get_partner(tp->mine);

    if (tp->failed)
        return;
    event_del(tp->rev);
    if (what & BEV_EVENT_EOF) {
        /* Half-close: hand over what is buffered, then EOF; sending goes
         * on until the user shuts down too. */
        if (tp->read_eof)
            return;
        tp->read_eof = 1;
        bufferevent_flush(tp->mine, EV_WRITE, BEV_FINISHED);
        return;
    }
    tp->failed = 1;
    event_del(tp->wev);
    if (tp->pipe != NULL) {
        struct sl_error e;

        memset(&e, 0, sizeof(e));
        tp->h->error_sys(&e, err, LAYER, "%s %s",
                         (what & BEV_EVENT_READING) ? "read from"
                                                    : "write to",
                         tp->remote);
        tp->h->pipe_set_error(tp->pipe, &e);
    }
    if (user != NULL) {
        EVUTIL_SET_SOCKET_ERROR(err);
        bufferevent_trigger_event(user, what | BEV_EVENT_ERROR, 0);
    }
}

/* libevent runs a read callback again on every loop turn while the input
 * stays at its high watermark with reading enabled, and mine_readcb can
 * do nothing while the socket takes nothing: measured, a blocked sender
 * ran it millions of times a GiB (a spinning loop that starved both ends
 * on a busy machine).  So mine stops reading while its input is full and
 * unsent, and reads again once a write makes room; meanwhile the user's
 * output holds the rest, as the watermark means. */
static void
tp_read_ctl(struct tcp_pipe *tp)
{
    size_t held = evbuffer_get_length(bufferevent_get_input(tp->mine));
    int on = (bufferevent_get_enabled(tp->mine) & EV_READ) != 0;

    if (held >= tp->read_buffer && (tp->failed ||
                                    event_pending(tp->wev, EV_WRITE, NULL))) {
        if (on)
            bufferevent_disable(tp->mine, EV_READ);
    } else if (!on && !tp->failed) {
        /* The pair moves the user's output in now; mine_readcb follows
         * (deferred). */
        bufferevent_enable(tp->mine, EV_READ);
    }
}

/* Writes what the user gave us; returns 0, or -1 after reporting. */
static int
tp_flush(struct tcp_pipe *tp)
{
    struct evbuffer *in = bufferevent_get_input(tp->mine);

again:
    while (evbuffer_get_length(in) > 0) {
        int n = evbuffer_write_atmost(in, tp->fd, (ev_ssize_t)tp->wchunk);

        if (n < 0) {
            int err = EVUTIL_SOCKET_ERROR();

            if (err == EAGAIN || err == EINTR)
                break;
            tp_report(tp, BEV_EVENT_WRITING, err);
            return -1;
        }
        if (n == 0)
            break;
    }
    if (evbuffer_get_length(in) > 0) {
        event_add(tp->wev, NULL);
        tp_read_ctl(tp);
        return 0;
    }
    event_del(tp->wev);
    if (!(bufferevent_get_enabled(tp->mine) & EV_READ)) {
        /* The socket took all and has room: on with what the user holds. */
        tp_read_ctl(tp);
        if (evbuffer_get_length(in) > 0)
            goto again;
    }
    if (tp->shut_pending && !tp->shut_done) {
        tp->shut_done = 1;
        if (shutdown(tp->fd, SHUT_WR) != 0 && errno != ENOTCONN)
            tp->h->log(SL_LOG_DEBUG, LAYER, "shutdown %s: %s", tp->remote,
                       strerror(errno));
    }
    return 0;
}

static void
tp_maybe_read(struct tcp_pipe *tp)
{
    size_t queued = evbuffer_get_length(bufferevent_get_output(tp->mine));

    if (tp->failed || tp->read_eof)
        return;
    if (queued == 0)
        event_add(tp->rev, NULL);
    else
        event_del(tp->rev);
}

/* rsize less the chain's header, when rsize is a power of two worth it. */
static size_t
tp_rsize_bytes(const struct tcp_pipe *tp)
{
    return tp->rsize >= MIN_CHUNK ? tp->rsize - CHAIN_SLACK : tp->rsize;
}

/* The size of the next read: rsize, within the room left under the
 * user's read high watermark. */
static size_t
tp_read_size(struct tcp_pipe *tp)
{
    struct bufferevent *user = bufferevent_pair_get_partner(tp->mine);
    size_t full = tp_rsize_bytes(tp), want = full, high = 0, have;

    if (user == NULL)
        return want;
    /* A user that is not reading gets one small read, which the pair
     * hands over (and so wakes us) once it reads again. */
    if (!(bufferevent_get_enabled(user) & EV_READ))
        return full < MIN_CHUNK - CHAIN_SLACK ? full : MIN_CHUNK - CHAIN_SLACK;
    bufferevent_getwatermark(user, EV_READ, NULL, &high);
    if (high == 0)
        return want;
    have = evbuffer_get_length(bufferevent_get_input(user));
    if (have + want <= high)
        return want;
    want = high > have + MIN_CHUNK ? high - have : MIN_CHUNK;
    if (want >= MIN_CHUNK && full >= MIN_CHUNK) {
        /* Down to a chain size too. */
        size_t p = MIN_CHUNK;

        while (p * 2 <= want + CHAIN_SLACK)
            p *= 2;
        want = p - CHAIN_SLACK;
    }
    return want < full ? want : full;
}

static void
on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_pipe *tp = arg;
    struct evbuffer *out = bufferevent_get_output(tp->mine);
    struct evbuffer_iovec v[2];
    size_t size = tp_read_size(tp);
    int nv;
    ssize_t n;

    (void)what;
    nv = evbuffer_reserve_space(out, (ev_ssize_t)size, v, 2);
    if (nv < 1)
        return;
    /* The reservation may be larger than asked; read no more than size
     * so that the read bound (and the SL_DBG_RMAX hook) hold. */
    if (v[0].iov_len >= size) {
        v[0].iov_len = size;
        nv = 1;
    } else if (nv == 2 && v[0].iov_len + v[1].iov_len > size) {
        v[1].iov_len = size - v[0].iov_len;
    }
    n = readv(fd, (struct iovec *)v, nv);
    if (n < 0) {
        int err = errno;

        v[0].iov_len = 0;
        evbuffer_commit_space(out, v, 1);
        if (err != EAGAIN && err != EINTR)
            tp_report(tp, BEV_EVENT_READING, err);
        return;
    }
    if (n == 0) {
        v[0].iov_len = 0;
        evbuffer_commit_space(out, v, 1);
        tp_report(tp, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
        return;
    }
    if ((size_t)n <= v[0].iov_len) {
        v[0].iov_len = (size_t)n;
        nv = 1;
    } else {
        v[1].iov_len = (size_t)n - v[0].iov_len;
    }
    if ((size_t)n == size && size == tp_rsize_bytes(tp) &&
        tp->rsize < tp->rchunk)
        tp->rsize = tp->rsize * 2 < tp->rchunk ? tp->rsize * 2 : tp->rchunk;
    else if ((size_t)n < tp->rsize / 4 && tp->rsize > MIN_CHUNK)
        tp->rsize = tp->rsize / 2 > MIN_CHUNK ? tp->rsize / 2 : MIN_CHUNK;
    tp->busy++;
    /* The pair hands this to the user now; its callbacks may run, and may
     * free the pipe (then tp->dead is set and we free at the end). */
    evbuffer_commit_space(out, v, nv);
    tp->busy--;
    if (tp->dead) {
        tp_free(tp);
        return;
    }
    tp_maybe_read(tp);
}

/* After the pipe is freed, the bytes it had accepted (up to the pair's
 * write bound) still go out, then the FIN if one was asked for, as close(2)
 * sends what write(2) accepted.  Gives up when the socket takes nothing
 * for LINGER_MS, or on an error. */
#define LINGER_MS 30000

static void
linger_step(struct tcp_pipe *tp)
{
    struct evbuffer *in = bufferevent_get_input(tp->mine);
    size_t before = evbuffer_get_length(in);
    struct timeval tv = { LINGER_MS / 1000, (LINGER_MS % 1000) * 1000 };

    if (tp_flush(tp) != 0 || tp->failed || evbuffer_get_length(in) == 0) {
        tp_free(tp);
        return;
    }
    if (evbuffer_get_length(in) < before ||
        !evtimer_pending(tp->linger_ev, NULL))
        evtimer_add(tp->linger_ev, &tv);
}

static void
linger_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_pipe *tp = arg;

    (void)fd;
    (void)what;
    tp->h->log(SL_LOG_INFO, LAYER, "%s: %zu unsent bytes dropped after "
               "%d s without progress", tp->remote,
               evbuffer_get_length(bufferevent_get_input(tp->mine)),
               LINGER_MS / 1000);
    tp_free(tp);
}

static void
on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_pipe *tp = arg;

    (void)fd;
    (void)what;
    if (tp->lingering)
        linger_step(tp);
    else
        tp_flush(tp);
}

/* mine.input got data from the user: send it. */
static void
mine_readcb(struct bufferevent *bev, void *arg)
{
    struct tcp_pipe *tp = arg;

    (void)bev;
    if (!tp->failed && !event_pending(tp->wev, EV_WRITE, NULL))
        tp_flush(tp);
    else
        tp_read_ctl(tp);
}

/* mine.output drained into the user's input: read the socket again. */
static void
mine_writecb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    tp_maybe_read(arg);
}

static int
tcp_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct tcp_pipe *tp = layer_ctx;

    (void)p;
    /* The core calls this once the user's output is empty; the FIN goes
     * out after whatever the pair already moved to us. */
    tp->shut_pending = 1;
    if (!tp->failed)
        tp_flush(tp);
    return 0;
}

static void
tcp_pipe_destroy(void *layer_ctx)
{
    struct tcp_pipe *tp = layer_ctx;

    if (tp->busy > 0) {
        tp->dead = 1;   /* freed when the handler on the stack returns */
        return;
    }
    if (!tp->failed &&
        evbuffer_get_length(bufferevent_get_input(tp->mine)) > 0 &&
        (tp->linger_ev = evtimer_new(event_get_base(tp->wev),
                                     linger_timeout, tp)) != NULL) {
        /* The core frees the user's end next: keep ours, stop reading. */
        tp->pipe = NULL;
        tp->lingering = 1;
        event_del(tp->rev);
        bufferevent_setcb(tp->mine, NULL, NULL, NULL, NULL);
        linger_step(tp);
        return;
    }
    tp_free(tp);
}

static const struct sl_pipe_ops tcp_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = tcp_shutdown_write,
    .query = tcp_query,
    .destroy = tcp_pipe_destroy,
};

static void
set_sockopts(struct tcp_cfg *c, evutil_socket_t fd)
{
    int one = 1;

    if (c->nodelay)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (c->keepalive_s > 0) {
        int idle = (int)c->keepalive_s;
        int intvl = idle / 3 > 0 ? idle / 3 : 1;
        int cnt = 3;

        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef TCP_KEEPIDLE
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
#endif
    }
}

/* Consumes fd. */
static struct sl_pipe *
make_pipe(struct tcp_cfg *c, struct event_base *base, evutil_socket_t fd,
          const struct sockaddr *peer, struct sl_error *e)
{
    struct tcp_pipe *tp = calloc(1, sizeof(*tp));
    struct bufferevent *pair[2] = { NULL, NULL };
    struct sl_pipe *p;

    if (tp == NULL) {
        evutil_closesocket(fd);
        c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    tp->h = c->h;
    tp->fd = fd;
    tp->read_buffer = c->read_buffer;
    /* Test hooks force short reads and partial writes. */
    tp->rchunk = c->dbg_rmax ? c->dbg_rmax
                 : c->read_buffer < IO_CHUNK ? c->read_buffer : IO_CHUNK;
    tp->wchunk = c->dbg_wmax ? c->dbg_wmax : IO_CHUNK;
    tp->rsize = tp->rchunk < 16384 ? tp->rchunk : 16384;
    format_addr(peer, tp->remote, sizeof(tp->remote));
    set_sockopts(c, fd);
    evutil_make_socket_nonblocking(fd);
    tp->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, tp);
    tp->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, tp);
    if (tp->rev == NULL || tp->wev == NULL ||
        bufferevent_pair_new(base, 0, pair) != 0) {
        tp_free(tp);
        c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    tp->mine = pair[0];
    bufferevent_setcb(tp->mine, mine_readcb, mine_writecb, NULL, tp);
    /* Bound what the user may queue towards a slow socket ... */
    bufferevent_setwatermark(tp->mine, EV_READ, 0, c->read_buffer);
    /* ... and read again once the pair has moved all we read. */
    bufferevent_setwatermark(tp->mine, EV_WRITE, 0, 0);
    bufferevent_enable(tp->mine, EV_READ | EV_WRITE);
    event_add(tp->rev, NULL);
    /* The user's input is bounded too (the user may raise it): the pair
     * moves our output there at once, so this is what stops the reads
     * of a user who does not drain. */
    bufferevent_setwatermark(pair[1], EV_READ, 0, c->read_buffer);
    p = c->h->pipe_new(LAYER, pair[1], NULL, &tcp_pipe_ops, tp);
    if (p == NULL) {
        c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    tp->pipe = p;
    return p;
}

/* ---- dialing ------------------------------------------------------------- */

static void
attempt_close(struct attempt *a)
{
    if (a->ev != NULL) {
        event_free(a->ev);
        a->ev = NULL;
    }
    if (a->fd >= 0) {
        evutil_closesocket(a->fd);
        a->fd = -1;
        a->d->live--;
    }
}

static void
dial_finish(struct tcp_dial *d)
{
    if (d->finished)
        return;
    d->finished = 1;
    for (size_t i = 0; i < d->next; i++)
        attempt_close(&d->att[i]);
    event_del(d->stagger_ev);
    event_del(d->timeout_ev);
    if (d->resolve_req != NULL) {
        /* resolved() still owes us its callback: deliver from there, so
         * that it never runs on a freed dial. */
        d->cfg->h->resolve_cancel(d->resolve_req);
        return;
    }
    event_active(d->done_ev, EV_TIMEOUT, 0);
}

static void
dial_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_dial *d = arg;
    struct sl_pipe *p = d->result;
    struct sl_error err = d->err;

    (void)fd;
    (void)what;
    if (d->canceled && p != NULL) {
        d->cfg->h->pipe_free(p);
        p = NULL;
    }
    if (d->canceled) {
        memset(&err, 0, sizeof(err));
        d->cfg->h->error_set(&err, SL_ECANCELED, LAYER, "dial cancelled");
    }
    event_free(d->done_ev);
    event_free(d->stagger_ev);
    event_free(d->timeout_ev);
    d->done(p, p ? NULL : &err, d->arg);
    free(d);
}

static void start_attempt(struct tcp_dial *d);

static void
attempt_ready(evutil_socket_t fd, short what, void *arg)
{
    struct attempt *a = arg;
    struct tcp_dial *d = a->d;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    char addr[64];

    (void)what;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        soerr = errno;
    if (soerr != 0) {
        format_addr((struct sockaddr *)&a->sa, addr, sizeof(addr));
        memset(&d->err, 0, sizeof(d->err));
        d->cfg->h->error_sys(&d->err, soerr, LAYER, "connect to %s", addr);
        attempt_close(a);
        if (d->next < d->naddrs) {
            /* Do not wait for the stagger when an attempt has failed. */
            event_del(d->stagger_ev);
            start_attempt(d);
        } else if (d->live == 0) {
            dial_finish(d);
        }
        return;
    }
    /* Won: hand the socket to a pipe, close the others. */
    event_free(a->ev);
    a->ev = NULL;
    a->fd = -1;
    d->live--;
    memset(&d->err, 0, sizeof(d->err));
    d->result = make_pipe(d->cfg, d->base, fd, (struct sockaddr *)&a->sa,
                          &d->err);
    dial_finish(d);
}

static void
stagger_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    start_attempt(arg);
}

static void
start_attempt(struct tcp_dial *d)
{
    while (d->next < d->naddrs) {
        struct attempt *a = &d->att[d->next];
        struct sockaddr *sa = (struct sockaddr *)&d->addrs[d->next];
        char addr[64];

        a->d = d;
        a->fd = -1;
        memcpy(&a->sa, sa, d->addrlen[d->next]);
        a->salen = d->addrlen[d->next];
        d->next++;
        a->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK |
                                          SOCK_CLOEXEC, IPPROTO_TCP);
        if (a->fd < 0) {
            format_addr(sa, addr, sizeof(addr));
            memset(&d->err, 0, sizeof(d->err));
            d->cfg->h->error_sys(&d->err, errno, LAYER, "socket for %s",
                                 addr);
            continue;
        }
        d->live++;
        if (connect(a->fd, sa, a->salen) != 0 && errno != EINPROGRESS) {
            format_addr(sa, addr, sizeof(addr));
            memset(&d->err, 0, sizeof(d->err));
            d->cfg->h->error_sys(&d->err, errno, LAYER, "connect to %s",
                                 addr);
            attempt_close(a);
            continue;
        }
        a->ev = event_new(d->base, a->fd, EV_WRITE, attempt_ready, a);
        if (a->ev == NULL) {
            attempt_close(a);
            continue;
        }
        event_add(a->ev, NULL);
        if (d->next < d->naddrs) {
            struct timeval tv = { 0, STAGGER_MS * 1000 };

            event_add(d->stagger_ev, &tv);
        }
        return;
    }
    if (d->live == 0)
        dial_finish(d);
}

static void
dial_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_dial *d = arg;

    (void)fd;
    (void)what;
    memset(&d->err, 0, sizeof(d->err));
    d->cfg->h->error_set(&d->err, SL_ETIMEDOUT, LAYER,
                         "connect to %s:%s timed out after %lld ms",
                         d->cfg->host, d->cfg->port,
                         (long long)d->cfg->connect_timeout_ms);
    dial_finish(d);
}

static void
resolved(int err, const char *why, const struct addrinfo *ai, void *arg)
{
    struct tcp_dial *d = arg;

    d->resolve_req = NULL;
    if (d->finished) {
        event_active(d->done_ev, EV_TIMEOUT, 0);
        return;
    }
    if (err != 0) {
        d->cfg->h->error_set(&d->err, err, LAYER, "%s", why);
        dial_finish(d);
        return;
    }
    /* In the resolver's order (RFC 6724); the stagger covers a broken
     * family at the cost of 250 ms. */
    for (const struct addrinfo *a = ai; a && d->naddrs < MAX_ATTEMPTS;
         a = a->ai_next) {
        if (a->ai_addrlen > sizeof(d->addrs[0]))
            continue;
        memcpy(&d->addrs[d->naddrs], a->ai_addr, a->ai_addrlen);
        d->addrlen[d->naddrs] = (socklen_t)a->ai_addrlen;
        d->naddrs++;
    }
    if (d->naddrs == 0) {
        d->cfg->h->error_set(&d->err, SL_ERESOLVE, LAYER,
                             "no usable address for %s", d->cfg->host);
        dial_finish(d);
        return;
    }
    start_attempt(d);
}

static int
tcp_dial(void *cfg, struct event_base *base, sl_pipe_fn *done, void *arg,
         void **op, struct sl_error *e)
{
    struct tcp_cfg *c = cfg;
    struct tcp_dial *d = calloc(1, sizeof(*d));
    struct timeval tv;

    if (d == NULL)
        return c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    d->cfg = c;
    d->base = base;
    d->done = done;
    d->arg = arg;
    d->done_ev = event_new(base, -1, 0, dial_deliver, d);
    d->stagger_ev = evtimer_new(base, stagger_fired, d);
    d->timeout_ev = evtimer_new(base, dial_timeout, d);
    if (d->done_ev == NULL || d->stagger_ev == NULL ||
        d->timeout_ev == NULL)
        goto nomem;
    tv.tv_sec = c->connect_timeout_ms / 1000;
    tv.tv_usec = (c->connect_timeout_ms % 1000) * 1000;
    evtimer_add(d->timeout_ev, &tv);
    d->resolve_req = c->h->resolve(base, c->host, c->port, c->family,
                                   resolved, d, e);
    if (d->resolve_req == NULL)
        goto fail;
    *op = d;
    return 0;
nomem:
    c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
fail:
    if (d->done_ev)
        event_free(d->done_ev);
    if (d->stagger_ev)
        event_free(d->stagger_ev);
    if (d->timeout_ev)
        event_free(d->timeout_ev);
    free(d);
    return e->code;
}

static void
tcp_cancel(void *op)
{
    struct tcp_dial *d = op;

    d->canceled = 1;
    dial_finish(d);
}

/* ---- listening ----------------------------------------------------------- */

static void
accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
          struct sockaddr *sa, int salen, void *arg)
{
    struct tcp_listener *l = arg;
    struct sl_error e;
    struct sl_pipe *p;

    (void)lev;
    (void)salen;
    l->backoff_ms = 0;
    memset(&e, 0, sizeof(e));
    p = make_pipe(l->cfg, l->base, fd, sa, &e);
    if (p == NULL) {
        l->on_accept(NULL, &e, l->arg);
        return;
    }
    l->on_accept(p, NULL, l->arg);
}

static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_listener *l = arg;

    (void)fd;
    (void)what;
    evconnlistener_enable(l->lev);
}

static void
accept_error(struct evconnlistener *lev, void *arg)
{
    struct tcp_listener *l = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct sl_error e;
    struct timeval tv;

    memset(&e, 0, sizeof(e));
    l->cfg->h->error_sys(&e, err, LAYER, "accept on %s:%s", l->cfg->host,
                         l->cfg->port);
    l->on_accept(NULL, &e, l->arg);
    /* Out of fds (EMFILE) leaves the socket readable: back off 5..100 ms
     * instead of spinning, like a careful accept loop does. */
    l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : 5;
    if (l->backoff_ms > 100)
        l->backoff_ms = 100;
    evconnlistener_disable(lev);
    tv.tv_sec = 0;
    tv.tv_usec = (l->backoff_ms + rand() % 5) * 1000;
    evtimer_add(l->retry_ev, &tv);
}

static int
tcp_listen(void *cfg, struct event_base *base, sl_pipe_fn *on_accept,
           void *arg, void **out, struct sl_error *e)
{
    struct tcp_cfg *c = cfg;
    struct tcp_listener *l;
    struct evutil_addrinfo hints, *ai = NULL;
    const char *host = c->host;
    int r;

    if (strcmp(host, "localhost") == 0)
        host = c->family == AF_INET6 ? "::1" : "127.0.0.1";
    else if (strcmp(host, "*") == 0)
        host = c->family == AF_INET6 ? "::" : "0.0.0.0";
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = c->family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV |
                     EVUTIL_AI_PASSIVE;
    /* Listening happens at start-up: a numeric address, no resolver. */
    r = evutil_getaddrinfo(host, c->port, &hints, &ai);
    if (r != 0)
        return c->h->error_set(e, SL_EINVAL, LAYER, "listen address %s:%s "
                               "must be a numeric IP address, localhost or "
                               "*: %s", c->host, c->port,
                               evutil_gai_strerror(r));
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        evutil_freeaddrinfo(ai);
        return c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    l->cfg = c;
    l->base = base;
    l->on_accept = on_accept;
    l->arg = arg;
    l->retry_ev = evtimer_new(base, retry_cb, l);
    l->lev = evconnlistener_new_bind(base, accept_cb, l,
                                     LEV_OPT_CLOSE_ON_FREE |
                                         LEV_OPT_REUSEABLE |
                                         LEV_OPT_CLOSE_ON_EXEC,
                                     c->backlog, ai->ai_addr,
                                     (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    if (l->lev == NULL || l->retry_ev == NULL) {
        int err = errno;

        if (l->retry_ev)
            event_free(l->retry_ev);
        free(l);
        return c->h->error_sys(e, err, LAYER, "listen on %s:%s", c->host,
                               c->port);
    }
    evconnlistener_set_error_cb(l->lev, accept_error);
    *out = l;
    return 0;
}

static int
tcp_listener_query(void *listener, int what, void *out, size_t *len)
{
    struct tcp_listener *l = listener;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char buf[64];

    if (what != SL_Q_LOCAL_ADDR)
        return SL_ENOTSUP;
    if (getsockname(evconnlistener_get_fd(l->lev), (struct sockaddr *)&ss,
                    &sl) != 0)
        return SL_ESYS;
    format_addr((struct sockaddr *)&ss, buf, sizeof(buf));
    return sl_query_answer_str(out, len, buf);
}

static void
tcp_listener_free(void *listener)
{
    struct tcp_listener *l = listener;

    evconnlistener_free(l->lev);
    event_free(l->retry_ev);
    free(l);
}

static int
tcp_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    /* Bufferevents cross the ABI: the loop must be the libevent we were
     * built against, to the minor version. */
    return sl_check_libevent(h, LAYER, e);
}

static const struct sl_layer_ops tcp_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "TCP connections over IPv4 and IPv6",
    .kind = SL_KIND_BASE,
    .consumes = SL_IO_NONE,
    .produces = SL_IO_PIPE,
    .flags = SL_LF_HALF_CLOSE,
    .opts = tcp_opts,
    .configure = tcp_configure,
    .unconfigure = tcp_unconfigure,
    .dial = tcp_dial,
    .listen = tcp_listen,
    .listener_query = tcp_listener_query,
    .listener_free = tcp_listener_free,
    .cancel = tcp_cancel,
};

static const struct sl_layer_ops *const tcp_layers[] = { &tcp_layer, NULL };

SL_PLUGIN_DEFINE(tcp, "TCP base layer", PACKAGE_VERSION, "ISC",
                 "sillad", tcp_layers, tcp_init, NULL)
