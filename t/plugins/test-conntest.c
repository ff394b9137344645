/*
 * test-conntest.c: the conntest layer against sillad-and-stacks.md §2.5,
 * byte for byte, with a raw peer on the other side of a socketpair and of
 * a bufferevent pair:
 *
 *   - client: ping_count rounds of a big-endian u16 size in 1..999 and
 *     that many bytes, each echoed before the next, then 00 00, and the
 *     pipe handed up is the lower one, usable at once; zero rounds; a
 *     wrong echo and a close mid-round fail with their reasons;
 *   - server: rounds of any size (up to 65535) echoed, 00 00 hands the
 *     lower pipe up with the bytes behind it and a later EOF intact; the
 *     deadline; a close before the terminator; a peer that does not read
 *     its echoes is not read either;
 *   - cancel on both sides; options.
 *
 * Every wait is bounded, and an alarm ends the program if the loop stops.
 */
#include "config.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

#include "wrap-harness.h"

const struct sl_plugin *sl_plugin_conntest_describe(void);

#define HARD_LIMIT_S 120

/* Plays the server by hand: echoes `rounds` rounds, checking their form,
 * then expects the terminator.  Returns the number of rounds seen. */
static int
echo_rounds(struct wh_raw *r, int rounds)
{
    uint8_t hdr[2], buf[1000];
    int i;

    for (i = 0; i < rounds; i++) {
        size_t n;

        CU_ASSERT_FATAL(wh_raw_read(r, hdr, 2));
        n = (size_t)hdr[0] << 8 | hdr[1];
        CU_ASSERT_FATAL(n >= 1 && n <= 999);
        CU_ASSERT_FATAL(wh_raw_read(r, buf, n));
        wh_raw_write(r, buf, n);
    }
    CU_ASSERT_FATAL(wh_raw_read(r, hdr, 2));
    CU_ASSERT(hdr[0] == 0 && hdr[1] == 0);
    return i;
}

static void
client_rounds(enum wh_raw_kind kind, const char *count, int rounds)
{
    struct wh_raw raw;
    struct wh_wres w;
    struct wh_user u;
    struct sl_pipe *lower;
    void *cfg = wh_cfg("ping_count", count, NULL);
    long pipes0 = sl_pipe_count();

    lower = wh_raw_new(&raw, kind);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, NULL);
    echo_rounds(&raw, rounds);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(!w.inside);
    /* conntest adds no pipe: the lower one comes back. */
    CU_ASSERT_FATAL(w.p == lower);
    wh_raw_pump(&raw);
    CU_ASSERT(evbuffer_get_length(raw.acc) == 0);
    wh_user_attach(&u, w.p);
    bufferevent_write(sl_pipe_get0_bev(w.p), "ping", 4);
    wh_raw_expect(&raw, "ping");
    wh_raw_writes(&raw, "pong");
    wh_user_expect(&u, "pong", 4);
    sl_pipe_free(w.p);
    wh_user_free(&u);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_client_socketpair(void)
{
    client_rounds(WH_RAW_FD, "2", 2);
    client_rounds(WH_RAW_FD, "1", 1);
}

static void
test_client_bevpair(void)
{
    client_rounds(WH_RAW_BEV, "2", 2);
    client_rounds(WH_RAW_BEV, "7", 7);
}

static void
test_client_zero_rounds(void)
{
    client_rounds(WH_RAW_FD, "0", 0);
    client_rounds(WH_RAW_BEV, "0", 0);
}

/* The default is one round. */
static void
test_client_default(void)
{
    struct wh_raw raw;
    struct wh_wres w;
    void *cfg = wh_cfg(NULL);

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), SL_ROLE_CLIENT, &w,
                  NULL);
    CU_ASSERT(echo_rounds(&raw, 1) == 1);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p != NULL);
    sl_pipe_free(w.p);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

/* A wrong echo (flip byte `at`), or a close after `at` echoed bytes. */
static void
client_fails(enum wh_raw_kind kind, bool close, size_t at,
             int want_code, const char *want_text)
{
    struct wh_raw raw;
    struct wh_wres w;
    uint8_t hdr[2], buf[1000];
    size_t n;
    void *cfg = wh_cfg("ping_count", "2", NULL);
    long pipes0 = sl_pipe_count();

    wh_start_wrap(cfg, wh_raw_new(&raw, kind), SL_ROLE_CLIENT, &w, NULL);
    CU_ASSERT_FATAL(wh_raw_read(&raw, hdr, 2));
    n = (size_t)hdr[0] << 8 | hdr[1];
    CU_ASSERT_FATAL(wh_raw_read(&raw, buf, n));
    if (at >= n)
        at = n - 1;
    if (close) {
        wh_raw_write(&raw, buf, at);
        wh_raw_shutdown(&raw);
    } else {
        buf[at] ^= 0x40;
        wh_raw_write(&raw, buf, n);
    }
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p == NULL);
    CU_ASSERT(w.err.code == want_code);
    if (strstr(w.err.text, want_text) == NULL)
        fprintf(stderr, "\n  got: %s\n", w.err.text);
    CU_ASSERT(strstr(w.err.text, want_text) != NULL);
    CU_ASSERT_STRING_EQUAL(w.err.layer, "conntest");
    CU_ASSERT(sl_pipe_count() == pipes0);
    /* The connection is closed (seen on a socket), nothing more sent. */
    if (kind == WH_RAW_FD)
        CU_ASSERT(wh_run_until(wh_raw_closed, &raw, WH_WAIT_MS));
    wh_raw_pump(&raw);
    CU_ASSERT(evbuffer_get_length(raw.acc) == 0);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

static void
test_client_bad_echo(void)
{
    client_fails(WH_RAW_FD, false, 0, SL_EPROTO,
                 "round 1 of 2: the echo differs from what was sent at "
                 "byte 0 of");
    client_fails(WH_RAW_BEV, false, 5, SL_EPROTO,
                 "round 1 of 2: the echo differs");
}

static void
test_client_closed(void)
{
    client_fails(WH_RAW_FD, true, 0, SL_ECLOSED,
                 "connection closed during round 1 of 2 (0 of");
    client_fails(WH_RAW_BEV, true, 1, SL_ECLOSED,
                 "connection closed during round 1 of 2 (1 of");
}

/* ---- the server -------------------------------------------------------- */

/* Rounds of the given sizes, then 00 00 and `after`, in one write. */
static size_t
make_rounds(uint8_t *out, const size_t *sizes, int k, const char *after)
{
    size_t len = 0;

    for (int i = 0; i < k; i++) {
        out[len++] = (uint8_t)(sizes[i] >> 8);
        out[len++] = (uint8_t)sizes[i];
        for (size_t j = 0; j < sizes[i]; j++)
            out[len++] = (uint8_t)(j * 7 + (size_t)i);
    }
    out[len++] = 0;
    out[len++] = 0;
    memcpy(out + len, after, strlen(after));
    return len + strlen(after);
}

/* Takes the pipe and sets its callbacks inside the done callback, as the
 * core's listener hands a pipe to its user. */
struct taker {
    struct wh_wres w;
    struct wh_user u;
};

static void
take_done(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct taker *t = arg;

    wh_wrap_done(p, err, &t->w);
    if (t->w.p != NULL)
        wh_user_attach(&t->u, t->w.p);
}

static void
server_rounds(enum wh_raw_kind kind, bool shut_after)
{
    static const size_t sizes[] = { 1, 999, 1000, 4096, 65535, 2 };
    static uint8_t msg[80000], echo[80000];
    struct wh_raw raw;
    struct taker t;
    struct sl_pipe *lower;
    struct sl_error e;
    size_t len, echo_len = 0;
    void *op;
    void *cfg = wh_cfg(NULL);
    long pipes0 = sl_pipe_count();

    len = make_rounds(msg, sizes, 6, "after");
    for (size_t off = 0, i = 0; i < 6; i++) {
        memcpy(echo + echo_len, msg + off + 2, sizes[i]);
        echo_len += sizes[i];
        off += 2 + sizes[i];
    }
    lower = wh_raw_new(&raw, kind);
    memset(&t, 0, sizeof(t));
    sl_error_clear(&e);
    CU_ASSERT_FATAL(wh_ops->wrap(cfg, wh_base, lower, SL_ROLE_SERVER,
                                 take_done, &t, &op, &e) == 0);
    wh_raw_write(&raw, msg, len);
    if (shut_after)
        wh_raw_shutdown(&raw);
    {
        static uint8_t got[80000];

        CU_ASSERT_FATAL(wh_raw_read(&raw, got, echo_len));
        CU_ASSERT(memcmp(got, echo, echo_len) == 0);
    }
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &t.w, WH_WAIT_MS));
    CU_ASSERT_FATAL(t.w.p == lower);
    /* The bytes behind the terminator, and the EOF behind them, reach the
     * next reader. */
    wh_user_expect(&t.u, "after", 5);
    if (shut_after) {
        CU_ASSERT(wh_run_until(wh_user_ended, &t.u, WH_WAIT_MS));
        CU_ASSERT(t.u.eof && !t.u.error);
    }
    bufferevent_write(sl_pipe_get0_bev(t.w.p), "reply", 5);
    wh_raw_expect(&raw, "reply");
    wh_raw_pump(&raw);
    CU_ASSERT(evbuffer_get_length(raw.acc) == 0);
    sl_pipe_free(t.w.p);
    wh_user_free(&t.u);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_server_socketpair(void)
{
    server_rounds(WH_RAW_FD, false);
    server_rounds(WH_RAW_FD, true);
}

static void
test_server_bevpair(void)
{
    server_rounds(WH_RAW_BEV, false);
    server_rounds(WH_RAW_BEV, true);
}

/* Zero rounds, the terminator split over two writes. */
static void
test_server_zero_rounds(void)
{
    struct wh_raw raw;
    struct wh_wres w;
    void *cfg = wh_cfg(NULL);

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), SL_ROLE_SERVER, &w,
                  NULL);
    wh_raw_write(&raw, "\0", 1);
    wh_run_for(20);
    CU_ASSERT(w.calls == 0);
    wh_raw_write(&raw, "\0", 1);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p != NULL);
    sl_pipe_free(w.p);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

static void
server_fails(const char *deadline, bool shut, int want_code,
             const char *want_text)
{
    struct wh_raw raw;
    struct wh_wres w;
    void *cfg = wh_cfg("deadline", deadline, NULL);
    long pipes0 = sl_pipe_count();
    int64_t t0 = sl_now_ms();

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), SL_ROLE_SERVER, &w,
                  NULL);
    wh_raw_write(&raw, "\0\3abc\0", 6);   /* a round, and half a header */
    if (shut)
        wh_raw_shutdown(&raw);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p == NULL);
    CU_ASSERT(w.err.code == want_code);
    if (strstr(w.err.text, want_text) == NULL)
        fprintf(stderr, "\n  got: %s\n", w.err.text);
    CU_ASSERT(strstr(w.err.text, want_text) != NULL);
    if (!shut)
        CU_ASSERT(sl_now_ms() - t0 >= 90);
    CU_ASSERT(sl_pipe_count() == pipes0);
    CU_ASSERT(wh_run_until(wh_raw_closed, &raw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(raw.acc) == 3);   /* the echo */
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

static void
test_server_deadline(void)
{
    server_fails("100ms", false, SL_ETIMEDOUT,
                 "no terminator within the deadline (1 rounds seen)");
}

static void
test_server_closed(void)
{
    server_fails("30s", true, SL_ECLOSED,
                 "connection closed before the terminator (1 rounds seen)");
}

/* A client that sends rounds but never reads its echoes: the server stops
 * reading once 64 KiB of echoes wait, and goes on when they drain. */
static void
test_server_bounded(void)
{
    enum { ROUNDS = 40, SIZE = 60000 };
    struct wh_raw raw;
    struct wh_wres w;
    struct bufferevent *lbev;
    uint8_t *msg = malloc(ROUNDS * (SIZE + 2) + 2);
    size_t len = 0;
    void *cfg = wh_cfg(NULL);
    struct sl_pipe *lower;

    CU_ASSERT_FATAL(msg != NULL);
    for (int i = 0; i < ROUNDS; i++) {
        msg[len++] = SIZE >> 8;
        msg[len++] = SIZE & 255;
        memset(msg + len, i, SIZE);
        len += SIZE;
    }
    msg[len++] = 0;
    msg[len++] = 0;
    lower = wh_raw_new(&raw, WH_RAW_BEV);
    lbev = sl_pipe_get0_bev(lower);
    /* The raw peer does not read: its input stays small. */
    bufferevent_setwatermark(raw.bev, EV_READ, 0, 4096);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, NULL);
    bufferevent_write(raw.bev, msg, len);
    wh_run_for(100);
    CU_ASSERT(w.calls == 0);
    CU_ASSERT(evbuffer_get_length(bufferevent_get_output(lbev)) <
              64 * 1024 + SIZE + 4096);
    CU_ASSERT(evbuffer_get_length(bufferevent_get_input(lbev)) > 0);
    /* Now read: everything is echoed and the terminator seen. */
    bufferevent_setwatermark(raw.bev, EV_READ, 0, 0);
    {
        struct wh_raw_want want = { &raw, (size_t)ROUNDS * SIZE };

        CU_ASSERT(wh_run_until(wh_raw_has, &want, WH_WAIT_MS));
    }
    CU_ASSERT(evbuffer_get_length(raw.acc) == (size_t)ROUNDS * SIZE);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p == lower);
    sl_pipe_free(w.p);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
    free(msg);
}

/* Cancel mid-exchange on each side, and with the client's result already
 * on its way (zero rounds finish inside wrap). */
static void
cancel(enum sl_role role, const char *count)
{
    struct wh_raw raw;
    struct wh_wres w;
    void *cfg = wh_cfg("ping_count", count, NULL), *op = NULL;
    long pipes0 = sl_pipe_count();

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), role, &w, &op);
    w.in_call = true;
    wh_ops->cancel(op);
    w.in_call = false;
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.calls == 1 && w.p == NULL && !w.inside);
    CU_ASSERT(w.err.code == SL_ECANCELED);
    wh_run_for(10);
    CU_ASSERT(w.calls == 1);
    CU_ASSERT(sl_pipe_count() == pipes0);
    CU_ASSERT(wh_raw_closed(&raw));
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

static void
test_cancel(void)
{
    cancel(SL_ROLE_CLIENT, "0");
    cancel(SL_ROLE_CLIENT, "2");
    cancel(SL_ROLE_SERVER, "1");
}

static void
test_options(void)
{
    struct sl_error e;

    CU_ASSERT(wh_cfg_try(&e, "ping_count", "-1", NULL) == NULL);
    CU_ASSERT(strstr(e.text, "ping_count") != NULL);
    CU_ASSERT(wh_cfg_try(&e, "ping_count", "1001", NULL) == NULL);
    CU_ASSERT(wh_cfg_try(&e, "deadline", "0", NULL) == NULL);
    CU_ASSERT(strstr(e.text, "deadline") != NULL);
    CU_ASSERT(wh_cfg_try(&e, "pings", "1", NULL) == NULL);
    wh_ops->unconfigure(wh_cfg("ping_count", "1000", "deadline", "1h",
                               NULL));
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "client rounds, socketpair", test_client_socketpair },
        { "client rounds, bufferevent pair", test_client_bevpair },
        { "client, zero rounds", test_client_zero_rounds },
        { "client, default one round", test_client_default },
        { "client refuses a wrong echo", test_client_bad_echo },
        { "client, closed mid-round", test_client_closed },
        { "server rounds, socketpair", test_server_socketpair },
        { "server rounds, bufferevent pair", test_server_bevpair },
        { "server, zero rounds", test_server_zero_rounds },
        { "server deadline", test_server_deadline },
        { "server, closed before the terminator", test_server_closed },
        { "server, a peer that does not read", test_server_bounded },
        { "cancel", test_cancel },
        { "options", test_options },
        { NULL, NULL },
    };
    const struct sl_layer *l;
    struct sl_error e;
    int rc;

    alarm(HARD_LIMIT_S);
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 2;
    if (getenv("CONNTEST_TEST_VERBOSE") == NULL)
        sl_log_set_level(SL_LOG_ERR);
    sl_error_clear(&e);
    if (sl_loader_register(sl_plugin_conntest_describe(), "test-conntest",
                           &e) != 0) {
        fprintf(stderr, "test-conntest: %s\n", e.text);
        return 2;
    }
    l = sl_layer_find("conntest");
    wh_ops = sl_layer_get0_ops(l);
    wh_plugin_ctx = sl_layer_get0_plugin_ctx(l);
    wh_base = event_base_new();
    rc = cu_run("conntest", tests);
    event_base_free(wh_base);
    sl_loader_unload_all();
    return rc;
}
