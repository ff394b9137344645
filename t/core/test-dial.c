/* test-dial.c - dialer combinators, cancellation, and real tcp dials. */
#include "config.h"

#include <stdlib.h>
#include <unistd.h>

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

int
main(void)
{
    static const struct cu_test tests[] = {
        { "combinators", test_combinators },
        { "cancel at every point, exactly once", test_cancel },
        { "tcp dial and listen", test_tcp },
        { "events held between handshake and owner", test_hold },
        { NULL, NULL },
    };
    int r;

    sl_log_set_level(SL_LOG_ERR);
    r = cu_run("dial", tests);
    sl_loader_unload_all();
    return r;
}
