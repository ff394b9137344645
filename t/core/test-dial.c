/* test-dial.c - dialer combinators, cancellation, and real tcp dials. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "../cu.h"
#include "fake.h"

struct result {
    int calls;
    int done;
    int code;
    char remote[64];
    int64_t at_ms;
};

static void
on_conn(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
        void *arg)
{
    struct result *r = arg;

    r->calls++;
    r->done = 1;
    r->at_ms = sl_now_ms();
    r->code = err ? err->code : 0;
    CU_ASSERT((p == NULL) == (err != NULL));
    if (p != NULL) {
        sl_pipe_remote_addr(p, r->remote, sizeof(r->remote));
        sl_pipe_free(p);
    }
    sl_session_free(s);
}

/* Dials text; returns the result after the loop has drained. */
static struct result
dial(struct event_base *base, const char *text, int cancel_after_ms)
{
    struct result r = { 0 };
    struct sl_error e;
    struct sl_dialer *d;
    struct sl_dial_op *op = NULL;
    int64_t start = sl_now_ms();
    int stop = 0;

    sl_error_clear(&e);
    d = sl_dialer_parse(text, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_EQUAL(sl_dialer_dial(d, base, on_conn, &r, &op, &e), 0);
    /* Never inside the call that started it. */
    CU_ASSERT_EQUAL(r.calls, 0);
    if (cancel_after_ms == 0)
        sl_dial_op_cancel(op);
    else if (cancel_after_ms > 0) {
        run_until(base, &stop, cancel_after_ms);
        if (!r.done)
            sl_dial_op_cancel(op);
    }
    run_until(base, &r.done, 5000);
    /* Let late completions (cancelled race losers) run too. */
    event_base_loop(base, EVLOOP_NONBLOCK);
    run_until(base, &stop, 30);
    r.at_ms -= start;
    sl_dialer_free(d);
    CU_ASSERT_EQUAL(r.calls, 1);
    return r;
}

static void
test_combinators(void)
{
    struct event_base *base = event_base_new();
    struct result r;
    long pipes = sl_pipe_count();

    fake_register();
    r = dial(base, "fbase name=a", -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "a") == 0);

    r = dial(base, "race(fbase name=slow d=200ms, fbase name=fast d=10ms)",
             -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "fast") == 0);
    CU_ASSERT(r.at_ms < 150);

    r = dial(base, "race(fbase fail=true, fbase name=b d=20ms)", -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "b") == 0);

    r = dial(base, "race(fbase fail=true name=x, fbase fail=true d=5ms)", -1);
    CU_ASSERT_EQUAL(r.code, SL_ESYS);

    r = dial(base, "fallback(fbase fail=true, fbase fail=true, fbase name=c)",
             -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "c") == 0);

    r = dial(base, "timeout(30ms, fbase d=2s)", -1);
    CU_ASSERT_EQUAL(r.code, SL_ETIMEDOUT);
    CU_ASSERT(r.at_ms >= 25 && r.at_ms < 1000);

    r = dial(base, "timeout(1s, fbase name=in)", -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "in") == 0);

    r = dial(base, "delay(50ms, fbase name=late)", -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "late") == 0);
    CU_ASSERT(r.at_ms >= 45);

    r = dial(base, "fbase | fwrap key=k", -1);
    CU_ASSERT_EQUAL(r.code, 0);

    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    event_base_free(base);
}

/* The caller frees the dialer once its dial has called back, or while it
 * is cancelled (a reload replacing its routes): the attempts still running
 * or still calling back (race losers, a cancelled attempt) must not need
 * it. */
struct owned_dial {
    struct sl_dialer *d;
    struct result r;
};

static void
on_conn_free_dialer(struct sl_pipe *p, struct sl_session *s,
                    const struct sl_error *err, void *arg)
{
    struct owned_dial *od = arg;

    on_conn(p, s, err, &od->r);
    sl_dialer_free(od->d);
    od->d = NULL;
}

static void
test_dialer_freed_early(void)
{
    static const char *const dialers[] = {
        "race(fbase name=fast d=5ms, fbase d=200ms)",
        "race(fbase name=fast, delay(100ms, fbase))",
        "race(fbase fail=true, fbase d=5ms, timeout(1s, fbase d=300ms))",
        "fallback(fbase fail=true, fbase d=20ms)",
        "fbase d=20ms",
    };
    struct event_base *base = event_base_new();
    long pipes = sl_pipe_count();
    int stop = 0;

    fake_register();
    for (size_t i = 0; i < sizeof(dialers) / sizeof(dialers[0]); i++)
        for (int cancel = 0; cancel < 2; cancel++) {
            struct owned_dial od = { 0 };
            struct sl_dial_op *op = NULL;
            struct sl_error e;

            sl_error_clear(&e);
            od.d = sl_dialer_parse(dialers[i], &e);
            CU_ASSERT_PTR_NOT_NULL_FATAL(od.d);
            CU_ASSERT_EQUAL(sl_dialer_dial(od.d, base, on_conn_free_dialer,
                                           &od, &op, &e), 0);
            if (cancel) {
                /* Cancelled and its dialer freed before it calls back. */
                run_until(base, &stop, 2);
                if (!od.r.done) {
                    sl_dial_op_cancel(op);
                    sl_dialer_free(od.d);
                    od.d = NULL;
                }
            }
            run_until(base, &od.r.done, 5000);
            /* The losers and cancelled attempts finish after that. */
            run_until(base, &stop, 400);
            CU_ASSERT_EQUAL(od.r.calls, 1);
            CU_ASSERT_PTR_NULL(od.d);
        }
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    event_base_free(base);
}

static void
test_cancel(void)
{
    static const char *const dialers[] = {
        "fbase d=50ms",
        "fbase | fwrap key=k",
        "race(fbase d=50ms, fbase d=60ms)",
        "fallback(fbase fail=1, fbase d=50ms)",
        "timeout(1s, fbase d=50ms)",
        "delay(40ms, fbase)",
        "delay(1ms, race(fbase d=50ms, timeout(1s, fbase d=70ms)))",
    };
    static const int when[] = { 0, 1, 5, 20, 45 };
    struct event_base *base = event_base_new();
    long pipes = sl_pipe_count();

    fake_register();
    for (size_t i = 0; i < sizeof(dialers) / sizeof(dialers[0]); i++)
        for (size_t k = 0; k < sizeof(when) / sizeof(when[0]); k++) {
            struct result r = dial(base, dialers[i], when[k]);

            /* Exactly once (dial() checks), and either cancelled or a
             * success that raced the cancel and was then freed. */
            CU_ASSERT(r.code == SL_ECANCELED || r.code == 0);
            if (when[k] == 0)
                CU_ASSERT_EQUAL(r.code, SL_ECANCELED);
        }
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    event_base_free(base);
}

static void
test_tcp(void)
{
    struct event_base *base = event_base_new();
    struct sl_error e;
    struct sl_stack *ls;
    struct sl_listener *l;
    char addr[64], text[128];
    struct result r, accepted = { 0 };
    long pipes = sl_pipe_count();

    if (sl_layer_find("tcp") == NULL)
        sl_loader_load_all(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sl_layer_find("tcp"));
    sl_error_clear(&e);
    ls = sl_stack_parse("tcp addr=127.0.0.1:0", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ls);
    l = sl_listener_new(ls, base, on_conn, &accepted, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT_EQUAL(sl_listener_local_addr(l, addr, sizeof(addr)), 0);
    snprintf(text, sizeof(text), "tcp addr=%s", addr);
    r = dial(base, text, -1);
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.remote, addr);
    sl_listener_free(l);
    sl_stack_free(ls);

    /* The port is closed now: a refused connection, named. */
    r = dial(base, text, -1);
    CU_ASSERT_EQUAL(r.code, SL_ESYS);
    r = dial(base, "tcp addr=localhost:1", -1);
    CU_ASSERT_EQUAL(r.code, SL_ESYS);
    r = dial(base, "tcp addr=no-such-host.invalid:80", -1);
    CU_ASSERT_EQUAL(r.code, SL_ERESOLVE);
    r = dial(base, "fallback(tcp addr=127.0.0.1:1, fbase name=ok)", -1);
    CU_ASSERT(r.code == 0 && strcmp(r.remote, "ok") == 0);
    r = dial(base, "tcp addr=localhost:1", 0);
    CU_ASSERT_EQUAL(r.code, SL_ECANCELED);
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    sl_resolver_release(base);
    event_base_free(base);
}

static void
count_eventcb(struct bufferevent *bev, short what, void *arg)
{
    short *got = arg;

    (void)bev;
    *got |= what;
}

/* An EOF that reaches a pipe between its handshake and its owner (the
 * dial result waits one loop pass) is raised again for the owner. */
static void
test_hold(void)
{
    struct event_base *base = event_base_new();
    struct bufferevent *pair[2];
    struct sl_pipe *p;
    short got = 0;

    CU_ASSERT_FATAL(bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE, pair)
                    == 0);
    p = sl_pipe_new("test", pair[0], NULL, NULL, NULL);
    CU_ASSERT_FATAL(p != NULL);
    sl_pipe_hold(p);
    bufferevent_trigger_event(pair[0], BEV_EVENT_EOF | BEV_EVENT_READING,
                              BEV_TRIG_DEFER_CALLBACKS);
    event_base_loop(base, EVLOOP_NONBLOCK);
    sl_pipe_setcb(p, NULL, NULL, count_eventcb, &got);
    CU_ASSERT_EQUAL(got, 0);        /* deferred, not inside setcb */
    event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(got, BEV_EVENT_EOF | BEV_EVENT_READING);
    /* Raised once: a second setcb has nothing held. */
    got = 0;
    sl_pipe_setcb(p, NULL, NULL, count_eventcb, &got);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(got, 0);
    sl_pipe_free(p);
    bufferevent_free(pair[1]);
    event_base_free(base);
}

/* A new pipe is held until someone sets its callbacks, and an owner that
 * sets them directly (a layer above: bufferevent_setcb) still gets what
 * came before, once, from the loop.  A pipe handed over without
 * callbacks is held again. */
static void
test_hold_direct(void)
{
    struct event_base *base = event_base_new();
    struct bufferevent *pair[2];
    struct sl_pipe *p;
    short got = 0;
    int64_t end;

    CU_ASSERT_FATAL(bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE, pair)
                    == 0);
    p = sl_pipe_new("test", pair[0], NULL, NULL, NULL);
    CU_ASSERT_FATAL(p != NULL);
    bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED);
    event_base_loop(base, EVLOOP_NONBLOCK);
    bufferevent_setcb(pair[0], NULL, NULL, count_eventcb, &got);
    CU_ASSERT_EQUAL(got, 0);
    end = sl_now_ms() + 3000;
    while (got == 0 && sl_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    CU_ASSERT(got & BEV_EVENT_EOF);
    /* Once only. */
    got = 0;
    end = sl_now_ms() + 20;
    while (sl_now_ms() < end)
        event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(got, 0);
    /* Handed over without callbacks: held again, raised for sl_pipe_setcb. */
    bufferevent_setcb(pair[0], NULL, NULL, NULL, NULL);
    core_pipe_handover(p);
    bufferevent_trigger_event(pair[0], BEV_EVENT_ERROR | BEV_EVENT_READING,
                              BEV_TRIG_DEFER_CALLBACKS);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(got, 0);
    sl_pipe_setcb(p, NULL, NULL, count_eventcb, &got);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(got, BEV_EVENT_ERROR | BEV_EVENT_READING);
    /* An owner's callbacks are left alone. */
    got = 0;
    core_pipe_handover(p);
    bufferevent_trigger_event(pair[0], BEV_EVENT_EOF, 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CU_ASSERT_EQUAL(got, BEV_EVENT_EOF);
    sl_pipe_free(p);
    bufferevent_free(pair[1]);
    event_base_free(base);
}

struct kept {
    struct sl_pipe *p;
    int done;
};

static void
keep_conn(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct kept *k = arg;

    (void)s;
    (void)err;
    k->p = p;
    k->done = 1;
}

static void
closed_cb(void *arg)
{
    *(int *)arg = 1;
}

/* A tcp pipe closed gracefully while the socket is full still sends what
 * the layer had accepted, then the FIN: the peer reads every byte. */
static void
test_tcp_linger(void)
{
    enum { TOTAL = 160 * 1024 };
    struct event_base *base = event_base_new();
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    int lfd, peer, small = 4096, fd, closed = 0, eof = 0, stop = 0;
    size_t fdlen = sizeof(fd), got = 0, bad = 0;
    char text[64];
    unsigned char *buf = malloc(TOTAL);
    struct sl_dialer *d;
    struct sl_error e;
    struct kept k = { 0 };
    long pipes = sl_pipe_count();
    int64_t until;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t i = 0; i < TOTAL; i++)
        buf[i] = (unsigned char)(i * 7 + i / 251);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    CU_ASSERT_FATAL(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    CU_ASSERT_FATAL(listen(lfd, 1) == 0);
    getsockname(lfd, (struct sockaddr *)&sin, &sl);
    snprintf(text, sizeof(text), "tcp addr=127.0.0.1:%u",
             ntohs(sin.sin_port));
    sl_error_clear(&e);
    d = sl_dialer_parse(text, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_EQUAL(sl_dialer_dial(d, base, keep_conn, &k, NULL, &e), 0);
    run_until(base, &k.done, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k.p);
    peer = accept(lfd, NULL, NULL);
    CU_ASSERT_FATAL(peer >= 0);
    CU_ASSERT_EQUAL(sl_pipe_query(k.p, SL_Q_FD, &fd, &fdlen), 0);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    /* The peer does not read yet: most of this stays in the layer. */
    bufferevent_write(sl_pipe_get0_bev(k.p), buf, TOTAL);
    sl_pipe_close(k.p, 2000, closed_cb, &closed);
    run_until(base, &closed, 5000);
    CU_ASSERT_EQUAL(closed, 1);
    evutil_make_socket_nonblocking(peer);
    until = sl_now_ms() + 10000;
    while (!eof && sl_now_ms() < until) {
        unsigned char tmp[8192];
        ssize_t n = read(peer, tmp, sizeof(tmp));

        if (n > 0) {
            for (ssize_t i = 0; i < n && got + (size_t)i < TOTAL; i++)
                bad += tmp[i] != buf[got + (size_t)i];
            got += (size_t)n;
        } else if (n == 0) {
            eof = 1;
        } else {
            run_until(base, &stop, 5);
        }
    }
    CU_ASSERT_EQUAL(got, TOTAL);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(eof, 1);
    run_until(base, &stop, 20);
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    close(peer);
    close(lfd);
    sl_dialer_free(d);
    free(buf);
    sl_resolver_release(base);
    event_base_free(base);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "combinators", test_combinators },
        { "cancel at every point, exactly once", test_cancel },
        { "a dialer freed while its attempts finish",
          test_dialer_freed_early },
        { "tcp dial and listen", test_tcp },
        { "events held between handshake and owner", test_hold },
        { "events held for an owner that sets callbacks directly",
          test_hold_direct },
        { "a closed tcp pipe still sends what it accepted", test_tcp_linger },
        { NULL, NULL },
    };
    int r;

    sl_log_set_level(SL_LOG_ERR);
    r = cu_run("dial", tests);
    sl_loader_unload_all();
    return r;
}
