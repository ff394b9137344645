/* test-above.c - stacks that run above an existing pipe
 * (sl_stack_parse_above, sl_listener_new_above, sl_listener_feed): the
 * exit's b2e path, where each stream of a plain picomux link carries a
 * client's own obfuscation stack. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "../cu.h"
#include "fake.h"

struct got {
    int pipes, sessions, done;
    struct sl_pipe *p;
    struct sl_session *s;
};

static void
on_conn(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
        void *arg)
{
    struct got *g = arg;

    CU_ASSERT_PTR_NULL(err);
    if (p != NULL) {
        g->pipes++;
        sl_pipe_free(g->p);
        g->p = p;
    }
    if (s != NULL) {
        g->sessions++;
        sl_session_free(g->s);
        g->s = s;
    }
    g->done = 1;
}

/* A pipe over one end of a socketpair; *other gets the other end. */
static struct sl_pipe *
socket_pipe(struct event_base *base, int *other)
{
    int sv[2];
    struct bufferevent *bev;

    CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    evutil_make_socket_nonblocking(sv[0]);
    bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bev);
    *other = sv[1];
    return sl_pipe_new("sp", bev, NULL, NULL, NULL);
}

static void
test_parse(void)
{
    struct sl_error e;
    struct sl_stack *s;
    struct sl_listener *l;
    struct event_base *base = event_base_new();

    fake_register();
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_parse_above("fbase", &e));
    CU_ASSERT_TEXT(e.text, "stack layer 1 (fbase): this stack runs above an "
                           "existing pipe, so it must start with a wrap or "
                           "mux layer, but 'fbase' is a base layer");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_parse_above("fwrap key=k | fbase", &e));
    CU_ASSERT_TEXT(e.text, "stack layer 2 (fbase): a base layer can only "
                           "come first; it has nothing to run on here");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_parse_above("fwrap", &e));
    CU_ASSERT(strstr(e.text, "key") != NULL);
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_parse_above("", &e));
    CU_ASSERT_TEXT(e.text, "stack: empty");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_parse_above("fwrap key=k )", &e));
    /* The ordinary parser still refuses a stack without a base. */
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_parse("fwrap key=k", &e));

    sl_error_clear(&e);
    s = sl_stack_parse_above("fwrap key=k | fwrap key=j", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(sl_stack_len(s), 2);
    CU_ASSERT_EQUAL(sl_stack_produces(s), SL_IO_PIPE);
    CU_ASSERT_TEXT(sl_opts_str(sl_stack_opts_at(s, 1), "key"), "j");
    CU_ASSERT_PTR_NULL(sl_stack_opts_at(s, 2));
    /* Not listenable or dialable on its own. */
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_listener_new(s, base, on_conn, NULL, &e));
    CU_ASSERT_EQUAL(e.code, SL_EINVAL);
    sl_stack_free(s);
    /* A stack with a base is refused by the listener above pipes. */
    s = sl_stack_parse("fbase", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    sl_error_clear(&e);
    l = sl_listener_new_above(s, base, on_conn, NULL, &e);
    CU_ASSERT_PTR_NULL(l);
    CU_ASSERT_TEXT(e.text, "this stack starts with a base layer; parse it "
                           "with sl_stack_parse_above to run it above pipes");
    sl_stack_free(s);
    event_base_free(base);
}

/* The dial failure above is reported with an error; check its text. */
static struct sl_error dial_err;
static int dial_done;

static void
on_dial_fail(struct sl_pipe *p, struct sl_session *s,
             const struct sl_error *err, void *arg)
{
    (void)arg;
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(err);
    if (err != NULL)
        dial_err = *err;
    dial_done = 1;
}

static void
test_dial_refused(void)
{
    struct event_base *base = event_base_new();
    struct sl_error e;
    struct sl_stack *s;
    struct sl_dialer *d;

    fake_register();
    sl_error_clear(&e);
    s = sl_stack_parse_above("fwrap key=k", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    d = sl_dialer_from_stack(s);
    CU_ASSERT_EQUAL(sl_dialer_dial(d, base, on_dial_fail, NULL, NULL, &e), 0);
    CU_ASSERT_EQUAL(dial_done, 0);   /* never inside the call */
    run_until(base, &dial_done, 1000);
    CU_ASSERT_EQUAL(dial_err.code, SL_EINVAL);
    CU_ASSERT_TEXT(dial_err.text, "a stack that runs above a pipe cannot be "
                                  "dialed on its own");
    sl_dialer_free(d);
    event_base_free(base);
}

/* Bytes fed in at the socket come out of the pipe the stack produced. */
static void
test_feed_wrap(void)
{
    struct event_base *base = event_base_new();
    struct sl_error e;
    struct sl_stack *s;
    struct sl_listener *l;
    struct got g = { 0 };
    long pipes = sl_pipe_count();
    int other, stop = 0;
    char buf[16] = { 0 };

    fake_register();
    sl_error_clear(&e);
    s = sl_stack_parse_above("fwrap key=k | fwrap key=j", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    l = sl_listener_new_above(s, base, on_conn, &g, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT_EQUAL(sl_listener_local_addr(l, buf, sizeof(buf)), SL_ENOTSUP);
    CU_ASSERT_EQUAL(sl_listener_feed(l, socket_pipe(base, &other)), 0);
    CU_ASSERT_EQUAL(g.done, 0);      /* fwrap finishes from the loop */
    CU_ASSERT_EQUAL(write(other, "hello", 5), 5);
    run_until(base, &g.done, 2000);
    CU_ASSERT_EQUAL_FATAL(g.pipes, 1);
    bufferevent_enable(sl_pipe_get0_bev(g.p), EV_READ);
    {
        struct evbuffer *in = bufferevent_get_input(sl_pipe_get0_bev(g.p));
        int64_t until = sl_now_ms() + 2000;

        while (evbuffer_get_length(in) < 5 && sl_now_ms() < until)
            run_until(base, &stop, 10);
        CU_ASSERT_EQUAL(evbuffer_remove(in, buf, sizeof(buf)), 5);
        CU_ASSERT(memcmp(buf, "hello", 5) == 0);
    }
    /* Several pipes in flight, then the listener goes away before their
     * handshakes end: no callback, nothing leaked. */
    g.done = 0;
    {
        int o[3];

        for (int i = 0; i < 3; i++)
            CU_ASSERT_EQUAL(sl_listener_feed(l, socket_pipe(base, &o[i])), 0);
        sl_listener_free(l);
        run_until(base, &stop, 50);
        for (int i = 0; i < 3; i++)
            close(o[i]);
    }
    CU_ASSERT_EQUAL(g.done, 0);
    CU_ASSERT_EQUAL(g.pipes, 1);
    sl_pipe_free(g.p);
    close(other);
    sl_stack_free(s);
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    event_base_free(base);
}

/* ---- the b2e shape with the real layers ---------------------------------- */

struct b2e {
    struct event_base *base;
    struct sl_listener *above;
    struct sl_session *link;          /* the outer picomux session */
    struct sl_session *inner;         /* what the stack above produced */
    struct sl_pipe *echo;
    int streams_fed;
    char meta[32];
};

static void
echo_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    evbuffer_add_buffer(bufferevent_get_output(bev),
                        bufferevent_get_input(bev));
}

/* Client side: collects what comes back. */
static void
collect_read(struct bufferevent *bev, void *arg)
{
    evbuffer_add_buffer(arg, bufferevent_get_input(bev));
}

static void
inner_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
             size_t len, void *arg)
{
    struct b2e *b = arg;

    (void)s;
    snprintf(b->meta, sizeof(b->meta), "%.*s", (int)len, (const char *)meta);
    sl_pipe_free(b->echo);
    b->echo = stream;
    sl_pipe_setcb(stream, echo_read, NULL, NULL, b);
    bufferevent_enable(sl_pipe_get0_bev(stream), EV_READ | EV_WRITE);
}

static void
above_conn(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
           void *arg)
{
    struct b2e *b = arg;

    (void)err;
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_PTR_NOT_NULL(s);
    if (s == NULL)
        return;
    sl_session_free(b->inner);
    b->inner = s;
    sl_session_setcb(s, inner_stream, NULL, b);
}

static void
link_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
            size_t len, void *arg)
{
    struct b2e *b = arg;

    (void)s;
    (void)meta;
    (void)len;
    b->streams_fed++;
    CU_ASSERT_EQUAL(sl_listener_feed(b->above, stream), 0);
}

static void
link_conn(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct b2e *b = arg;

    (void)err;
    CU_ASSERT_PTR_NULL(p);
    if (s == NULL)
        return;
    sl_session_free(b->link);
    b->link = s;
    sl_session_setcb(s, link_stream, NULL, b);
}

static void
test_b2e_shape(void)
{
    struct b2e b = { 0 };
    struct sl_error e;
    struct sl_stack *ls, *as;
    struct sl_listener *l;
    struct sl_dialer *d;
    struct got g = { 0 };
    struct sl_pipe *st = NULL;
    char addr[64], text[256];
    unsigned char *data;
    struct evbuffer *got;
    const size_t total = 300000;
    long pipes = sl_pipe_count();
    int stop = 0;

    if (sl_layer_find("picomux") == NULL)
        sl_loader_load_all(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sl_layer_find("picomux"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(sl_layer_find("sosistab3"));
    b.base = event_base_new();
    sl_error_clear(&e);
    ls = sl_stack_parse("tcp addr=127.0.0.1:0 | picomux", &e);
    as = sl_stack_parse_above("sosistab3 cookie=b2e-test | picomux", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ls);
    CU_ASSERT_PTR_NOT_NULL_FATAL(as);
    l = sl_listener_new(ls, b.base, link_conn, &b, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    b.above = sl_listener_new_above(as, b.base, above_conn, &b, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b.above);
    CU_ASSERT_EQUAL_FATAL(sl_listener_local_addr(l, addr, sizeof(addr)), 0);
    /* The client's view: a stream of the link, sosistab3 on it, picomux
     * on that (what a bridge plus a client amount to). */
    snprintf(text, sizeof(text), "tcp addr=%s | picomux | sosistab3 "
             "cookie=b2e-test | picomux", addr);
    d = sl_dialer_parse(text, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_EQUAL(sl_dialer_dial(d, b.base, on_conn, &g, NULL, &e), 0);
    run_until(b.base, &g.done, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g.s);
    CU_ASSERT_EQUAL(b.streams_fed, 1);
    CU_ASSERT_PTR_NOT_NULL(b.inner);
    CU_ASSERT_EQUAL(sl_session_open(g.s, "tunnel-1", 8, &st, &e), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    data = malloc(total);
    for (size_t i = 0; i < total; i++)
        data[i] = (unsigned char)(i * 7 + (i >> 9));
    got = evbuffer_new();
    sl_pipe_setcb(st, collect_read, NULL, NULL, got);
    bufferevent_write(sl_pipe_get0_bev(st), data, total);
    bufferevent_enable(sl_pipe_get0_bev(st), EV_READ | EV_WRITE);
    {
        int64_t until = sl_now_ms() + 10000;

        while (evbuffer_get_length(got) < total && sl_now_ms() < until)
            run_until(b.base, &stop, 20);
    }
    if (evbuffer_get_length(got) != total)
        fprintf(stderr, "received %zu of %zu\n", evbuffer_get_length(got),
                total);
    CU_ASSERT_EQUAL(evbuffer_get_length(got), total);
    CU_ASSERT(evbuffer_get_length(got) == total &&
              memcmp(evbuffer_pullup(got, -1), data, total) == 0);
    CU_ASSERT_TEXT(b.meta, "tunnel-1");
    free(data);
    evbuffer_free(got);
    sl_pipe_free(st);
    sl_session_free(g.s);
    run_until(b.base, &stop, 100);
    sl_pipe_free(b.echo);
    sl_session_free(b.inner);
    sl_session_free(b.link);
    sl_listener_free(b.above);
    sl_listener_free(l);
    run_until(b.base, &stop, 50);
    sl_dialer_free(d);
    sl_stack_free(as);
    sl_stack_free(ls);
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    sl_resolver_release(b.base);
    event_base_free(b.base);
    sl_loader_unload_all();
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "parse and refusals", test_parse },
        { "dialing an above stack fails", test_dial_refused },
        { "feeding pipes to a wrap stack", test_feed_wrap },
        { "b2e: sosistab3|picomux above picomux streams", test_b2e_shape },
        { NULL, NULL },
    };

    return cu_run("above", tests);
}
