/* tunnel-client.c - a test client for sillad-exit: dials a stack that
 * makes a session, opens the session-metadata stream, then tunnel streams.
 *
 *   tunnel-client [--no-meta] [--parallel K] [--hold] [--bytes N] STACK
 *                 COMMAND
 *
 * For a rich COMMAND (starting with '{') it prints each reply as
 * "reply: JSON"; a stream that ends before its reply prints "closed
 * without reply".  With --bytes N (one stream) it then sends N bytes and
 * expects them back (an echo server behind the exit), printing
 * "echo: N bytes ok".  With --datagrams N (a udp command) it sends N
 * datagrams framed as in §7.5 (little-endian u16 length, then the bytes;
 * datagram k has k*37 bytes) and expects each back from a UDP echo
 * server, printing "datagrams: N ok".  With --hold, streams that got a success reply stay
 * open until every stream has its reply (so that they count against the
 * exit's per-session limit).  Exit status 0 when every stream did what was
 * asked, 1 otherwise; everything is bounded by a 20 s timer.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "sillad.h"
#include "tunnel.h"

#define MAX_STREAMS 64

struct st {
    struct cl *cl;
    struct sl_pipe *p;
    int got_reply, ended, ok;
    struct evbuffer *echo;
};

struct cl {
    struct event_base *base;
    const char *cmd;
    int rich, parallel, no_meta, hold, datagrams;
    size_t bytes;
    unsigned char *data;
    struct sl_session *s;
    struct st st[MAX_STREAMS];
    int finished, status;
};

static void
check_done(struct cl *c)
{
    for (int i = 0; i < c->parallel; i++)
        if (!c->st[i].ended)
            return;
    event_base_loopexit(c->base, NULL);
}

static void
st_end(struct st *s, int ok)
{
    if (s->ended)
        return;
    s->ended = 1;
    s->ok = ok;
    if (!ok)
        s->cl->status = 1;
    sl_pipe_free(s->p);
    s->p = NULL;
    check_done(s->cl);
}

static void
send_datagrams(struct cl *c, struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);

    for (int k = 1; k <= c->datagrams; k++) {
        unsigned char hdr[2] = { (unsigned char)(k * 37 & 0xff),
                                 (unsigned char)(k * 37 >> 8) };

        evbuffer_add(out, hdr, 2);
        evbuffer_add(out, c->data, (size_t)k * 37);
    }
}

static void
st_read(struct bufferevent *bev, void *arg)
{
    struct st *s = arg;
    struct cl *c = s->cl;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (c->rich && !s->got_reply) {
        unsigned char *p;
        size_t n;
        struct sl_error e;
        struct tun_reply r;
        int got;

        sl_error_clear(&e);
        got = tun_msg_take(in, &p, &n, &e);
        if (got == 0)
            return;
        if (got < 0) {
            printf("bad reply: %s\n", e.text);
            st_end(s, 0);
            return;
        }
        s->got_reply = 1;
        printf("reply: %.*s\n", (int)n, (const char *)p);
        if (tun_reply_parse(p, n, &r, &e) != 0 || !r.ok) {
            free(p);
            /* A failure is what some tests want: success of the client
             * means "a reply arrived". */
            st_end(s, 1);
            return;
        }
        free(p);
        if (c->datagrams > 0)
            send_datagrams(c, bev);
        if (c->bytes == 0 && c->hold) {
            s->ended = 1;
            s->ok = 1;
            check_done(c);
            return;
        }
        if (c->bytes == 0 && c->datagrams == 0) {
            st_end(s, 1);
            return;
        }
    }
    if (c->datagrams > 0) {
        size_t want = 0;

        evbuffer_add_buffer(s->echo, in);
        for (int k = 1; k <= c->datagrams; k++)
            want += 2 + (size_t)k * 37;
        if (evbuffer_get_length(s->echo) >= want) {
            const unsigned char *b = evbuffer_pullup(s->echo, -1);
            int same = evbuffer_get_length(s->echo) == want;

            for (int k = 1; same && k <= c->datagrams; k++) {
                size_t n = (size_t)k * 37;

                same = (b[0] | b[1] << 8) == (int)n &&
                       memcmp(b + 2, c->data, n) == 0;
                b += 2 + n;
            }
            printf("datagrams: %d %s\n", c->datagrams,
                   same ? "ok" : "differ");
            st_end(s, same);
        }
        return;
    }
    if (c->bytes > 0) {
        evbuffer_add_buffer(s->echo, in);
        if (evbuffer_get_length(s->echo) >= c->bytes) {
            int same = evbuffer_get_length(s->echo) == c->bytes &&
                       memcmp(evbuffer_pullup(s->echo, -1), c->data,
                              c->bytes) == 0;

            printf("echo: %zu bytes %s\n", c->bytes, same ? "ok" : "differ");
            st_end(s, same);
        }
    }
}

static void
st_event(struct bufferevent *bev, short what, void *arg)
{
    struct st *s = arg;

    (void)bev;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    st_read(bev, arg);
    if (s->ended)
        return;
    if (s->cl->rich && !s->got_reply)
        printf("closed without reply\n");
    else if (s->cl->bytes > 0)
        printf("closed after %zu of %zu echo bytes\n",
               evbuffer_get_length(s->echo), s->cl->bytes);
    st_end(s, s->cl->rich ? 0 : s->cl->bytes == 0);
}

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct cl *c = arg;
    struct sl_error e;
    char buf[256];

    sl_pipe_free(p);
    if (s == NULL) {
        printf("dial failed: %s\n",
               err ? sl_error_str(err, buf, sizeof(buf)) : "no session");
        c->status = 1;
        event_base_loopexit(c->base, NULL);
        return;
    }
    c->s = s;
    sl_error_clear(&e);
    if (!c->no_meta) {
        struct sl_pipe *m = NULL;

        /* SYN "null" then FIN, as the Geph client does (§7.1). */
        if (sl_session_open(s, "null", 4, &m, &e) == 0)
            sl_pipe_close(m, 1000, NULL, NULL);
    }
    for (int i = 0; i < c->parallel; i++) {
        struct st *st = &c->st[i];

        st->cl = c;
        st->echo = evbuffer_new();
        if (sl_session_open(s, c->cmd, strlen(c->cmd), &st->p, &e) != 0) {
            printf("open: %s\n", e.text);
            st->p = NULL;
            st_end(st, 0);
            continue;
        }
        sl_pipe_setcb(st->p, st_read, NULL, st_event, st);
        bufferevent_enable(sl_pipe_get0_bev(st->p), EV_READ | EV_WRITE);
        if (c->bytes > 0)
            bufferevent_write(sl_pipe_get0_bev(st->p), c->data, c->bytes);
        if (c->datagrams > 0 && !c->rich)
            send_datagrams(c, sl_pipe_get0_bev(st->p));
    }
}

static void
on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct cl *c = arg;

    (void)fd;
    (void)what;
    printf("timed out\n");
    c->status = 1;
    event_base_loopexit(c->base, NULL);
}

int
main(int argc, char **argv)
{
    struct cl c;
    struct sl_error e;
    struct sl_dialer *d;
    struct event *t;
    struct timeval tv = { 20, 0 };
    int i = 1;
    size_t data_len;

    memset(&c, 0, sizeof(c));
    c.parallel = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--no-meta") == 0)
            c.no_meta = 1;
        else if (strcmp(argv[i], "--datagrams") == 0 && i + 1 < argc)
            c.datagrams = atoi(argv[++i]);
        else if (strcmp(argv[i], "--hold") == 0)
            c.hold = 1;
        else if (strcmp(argv[i], "--parallel") == 0 && i + 1 < argc)
            c.parallel = atoi(argv[++i]);
        else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc)
            c.bytes = (size_t)strtoul(argv[++i], NULL, 10);
        else
            break;
    }
    if (argc - i != 2 || c.parallel < 1 || c.parallel > MAX_STREAMS ||
        (c.parallel > 1 && c.bytes > 0)) {
        fprintf(stderr, "usage: tunnel-client [--no-meta] [--parallel K] "
                "[--hold] [--bytes N] STACK COMMAND\n");
        return 2;
    }
    c.cmd = argv[i + 1];
    c.rich = c.cmd[0] == '{';
    if (c.datagrams < 0 || c.datagrams > 1000)
        return 2;
    data_len = c.bytes > (size_t)c.datagrams * 37 ? c.bytes
               : (size_t)c.datagrams * 37;
    c.data = malloc(data_len + 1);
    for (size_t k = 0; k < data_len; k++)
        c.data[k] = (unsigned char)(k * 13 + (k >> 11));
    sl_loader_load_all(NULL);
    c.base = event_base_new();
    sl_error_clear(&e);
    d = sl_dialer_parse(argv[i], &e);
    if (d == NULL || sl_dialer_dial(d, c.base, on_dialed, &c, NULL, &e) != 0) {
        printf("dial: %s\n", e.text);
        return 1;
    }
    t = evtimer_new(c.base, on_timeout, &c);
    evtimer_add(t, &tv);
    event_base_dispatch(c.base);
    for (int k = 0; k < c.parallel; k++) {
        sl_pipe_free(c.st[k].p);
        if (c.st[k].echo != NULL)
            evbuffer_free(c.st[k].echo);
    }
    sl_session_free(c.s);
    {
        struct timeval z = { 0, 100000 };

        /* Let the metadata stream's close and the frees go out. */
        event_base_loopexit(c.base, &z);
        event_base_dispatch(c.base);
    }
    event_free(t);
    sl_dialer_free(d);
    free(c.data);
    sl_resolver_release(c.base);
    event_base_free(c.base);
    sl_loader_unload_all();
    return c.status;
}
