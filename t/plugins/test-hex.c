/*
 * test-hex.c: the hex layer against sillad-and-stacks.md §2.4, byte for
 * byte, with a raw peer on the other side of a socketpair and of a
 * bufferevent pair:
 *
 *   - the codec: lowercase out, either case in, odd digits, bad bytes;
 *   - sending: the user's bytes arrive as lowercase digits, in order, also
 *     in bulk (larger than a chunk and the lower queue);
 *   - receiving: digits in pieces (odd splits), upper case, a non-digit
 *     ending the receive direction while sending goes on, an odd digit at
 *     EOF dropped;
 *   - digits that arrive with the wrap; half-close each way; the shared
 *     secret hidden; cancel; options.
 *
 * Every wait is bounded, and an alarm ends the program if the loop stops.
 */
#include "config.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "hex-codec.h"
#include "wrap-harness.h"

const struct sl_plugin *sl_plugin_hex_describe(void);

#define HARD_LIMIT_S 120

/* ---- the codec --------------------------------------------------------- */

static void
test_codec(void)
{
    static const uint8_t bytes[] = { 0x00, 0x01, 0x7f, 0x80, 0xab, 0xff };
    uint8_t out[16];
    char text[16];
    size_t bad;

    hex_encode(bytes, sizeof(bytes), text);
    CU_ASSERT(memcmp(text, "00017f80abff", 12) == 0);
    CU_ASSERT(hex_decode("00017F80aBff", 12, out, &bad) == 6);
    CU_ASSERT(bad == 12);
    CU_ASSERT(memcmp(out, bytes, 6) == 0);
    /* An odd digit is not decoded, and not bad. */
    CU_ASSERT(hex_decode("abc", 3, out, &bad) == 1);
    CU_ASSERT(bad == 3);
    CU_ASSERT(out[0] == 0xab);
    /* Bad bytes: the pairs before them only. */
    CU_ASSERT(hex_decode("ab0g12", 6, out, &bad) == 1);
    CU_ASSERT(bad == 3);
    CU_ASSERT(hex_decode("abg", 3, out, &bad) == 1);
    CU_ASSERT(bad == 2);
    CU_ASSERT(hex_decode(" a", 2, out, &bad) == 0);
    CU_ASSERT(bad == 0);
    CU_ASSERT(hex_decode("0x", 2, out, &bad) == 0);
    CU_ASSERT(bad == 1);
    CU_ASSERT(hex_decode("", 0, out, &bad) == 0);
    CU_ASSERT(bad == 0);
}

/* ---- through the layer ------------------------------------------------- */

struct fixture {
    struct wh_raw raw;
    struct wh_user user;
    struct sl_pipe *p;
    void *cfg;
    long pipes0;
};

static void
fx_start(struct fixture *f, enum wh_raw_kind kind, enum sl_role role,
         const char *early)
{
    struct wh_wres w;
    struct sl_pipe *lower;

    memset(f, 0, sizeof(*f));
    f->pipes0 = sl_pipe_count();
    f->cfg = wh_cfg(NULL);
    lower = wh_raw_new(&f->raw, kind);
    if (early != NULL) {
        /* Digits already waiting below when the wrap starts. */
        wh_raw_writes(&f->raw, early);
        wh_run_for(20);
    }
    wh_start_wrap(f->cfg, lower, role, &w, NULL);
    CU_ASSERT(w.calls == 0);   /* never inside wrap() */
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_PTR_NOT_NULL_FATAL(w.p);
    CU_ASSERT(!w.inside);
    f->p = w.p;
    wh_user_attach(&f->user, f->p);
}

static void
fx_stop(struct fixture *f)
{
    sl_pipe_free(f->p);
    wh_user_free(&f->user);
    wh_raw_free(&f->raw);
    wh_ops->unconfigure(f->cfg);
    CU_ASSERT(sl_pipe_count() == f->pipes0);
}

static void
user_write(struct fixture *f, const void *data, size_t n)
{
    bufferevent_write(sl_pipe_get0_bev(f->p), data, n);
}

static void
bytes_both_ways(enum wh_raw_kind kind)
{
    struct fixture f;
    char buf[64];
    size_t len;

    fx_start(&f, kind, SL_ROLE_CLIENT, NULL);
    user_write(&f, "Hi\x00\xff", 4);
    wh_raw_expect(&f.raw, "486900ff");
    /* Digits in odd pieces and upper case. */
    wh_raw_writes(&f.raw, "4");
    wh_run_for(10);
    CU_ASSERT(evbuffer_get_length(f.user.in) == 0);
    wh_raw_writes(&f.raw, "86");
    wh_run_for(10);
    wh_raw_writes(&f.raw, "9FF0");
    wh_user_expect(&f.user, "Hi\xff", 3);
    wh_raw_writes(&f.raw, "0");
    wh_user_expect(&f.user, "\x00", 1);
    /* The protocol is the layer's; the shared secret is hidden. */
    CU_ASSERT_STRING_EQUAL(sl_pipe_protocol(f.p, buf, sizeof(buf)), "hex");
    len = sizeof(buf);
    CU_ASSERT(sl_pipe_query(f.p, SL_Q_SHARED_SECRET, buf, &len) ==
              SL_ENOENT);
    fx_stop(&f);
}

static void
test_bytes_socketpair(void)
{
    bytes_both_ways(WH_RAW_FD);
}

static void
test_bytes_bevpair(void)
{
    bytes_both_ways(WH_RAW_BEV);
}

/* A non-digit ends the receive direction after the pairs before it; the
 * send direction keeps working. */
static void
bad_char(enum wh_raw_kind kind, const char *text, const char *want,
         size_t want_len)
{
    struct fixture f;

    fx_start(&f, kind, SL_ROLE_SERVER, NULL);
    wh_raw_writes(&f.raw, text);
    CU_ASSERT(wh_run_until(wh_user_ended, &f.user, WH_WAIT_MS));
    CU_ASSERT(f.user.eof);
    CU_ASSERT(!f.user.error);
    CU_ASSERT(evbuffer_get_length(f.user.in) == want_len);
    CU_ASSERT(want_len == 0 ||
              memcmp(evbuffer_pullup(f.user.in, -1), want, want_len) == 0);
    /* More digits are not read any more. */
    wh_raw_writes(&f.raw, "4142");
    wh_run_for(20);
    CU_ASSERT(evbuffer_get_length(f.user.in) == want_len);
    user_write(&f, "ok", 2);
    wh_raw_expect(&f.raw, "6f6b");
    fx_stop(&f);
}

static void
test_bad_char(void)
{
    bad_char(WH_RAW_FD, "4142zz", "AB", 2);
    bad_char(WH_RAW_BEV, "414\n", "A", 1);
    bad_char(WH_RAW_FD, "41 2", "A", 1);
    bad_char(WH_RAW_BEV, "G", "", 0);
    bad_char(WH_RAW_FD, "41\xff", "A", 1);
}

/* EOF after an odd digit: the digit is dropped, the reader sees EOF. */
static void
eof_odd(enum wh_raw_kind kind)
{
    struct fixture f;

    fx_start(&f, kind, SL_ROLE_CLIENT, NULL);
    wh_raw_writes(&f.raw, "616");
    wh_raw_shutdown(&f.raw);
    CU_ASSERT(wh_run_until(wh_user_ended, &f.user, WH_WAIT_MS));
    CU_ASSERT(f.user.eof && !f.user.error);
    CU_ASSERT(evbuffer_get_length(f.user.in) == 1);
    /* Half-close: the other direction still works, then ends in turn. */
    user_write(&f, "\x0a", 1);
    CU_ASSERT_FATAL(sl_pipe_shutdown_write(f.p) == 0);
    wh_raw_expect(&f.raw, "0a");
    CU_ASSERT(wh_run_until(wh_raw_closed, &f.raw, WH_WAIT_MS));
    fx_stop(&f);
}

static void
test_eof_odd(void)
{
    eof_odd(WH_RAW_FD);
    eof_odd(WH_RAW_BEV);
}

/* EOF arriving while decoding waits for a slow reader: every byte before
 * it is still delivered, then EOF. */
static void
test_eof_behind_full_buffer(void)
{
    enum { N = 20000 };
    struct fixture f;
    struct wh_wres w;
    struct bufferevent *ubev;
    char *digits = malloc(2 * N);

    CU_ASSERT_FATAL(digits != NULL);
    memset(digits, 'a', 2 * N);
    memset(&f, 0, sizeof(f));
    f.pipes0 = sl_pipe_count();
    f.cfg = wh_cfg("read_buffer", "4k", NULL);
    wh_start_wrap(f.cfg, wh_raw_new(&f.raw, WH_RAW_BEV), SL_ROLE_CLIENT, &w,
                  NULL);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    f.p = w.p;
    wh_user_attach(&f.user, f.p);
    ubev = sl_pipe_get0_bev(f.p);
    bufferevent_disable(ubev, EV_READ);
    wh_raw_write(&f.raw, digits, 2 * N);
    wh_raw_shutdown(&f.raw);
    wh_run_for(50);
    bufferevent_enable(ubev, EV_READ);
    CU_ASSERT(wh_run_until(wh_user_ended, &f.user, WH_WAIT_MS));
    CU_ASSERT(f.user.eof && !f.user.error);
    wh_run_for(10);
    CU_ASSERT(evbuffer_get_length(f.user.in) == N);
    fx_stop(&f);
    free(digits);
}

/* The user shuts down first: every digit goes out before the lower EOF. */
static void
test_shutdown_after_bulk(void)
{
    enum { N = 300000 };   /* more than a chunk and than the lower queue */
    struct fixture f;
    uint8_t *data = malloc(N), *got = malloc(N);
    char *digits = malloc(2 * N), *want = malloc(2 * N);

    CU_ASSERT_FATAL(data && got && digits && want);
    for (size_t i = 0; i < N; i++)
        data[i] = (uint8_t)(i * 131 + (i >> 8));
    hex_encode(data, N, want);
    fx_start(&f, WH_RAW_FD, SL_ROLE_CLIENT, NULL);
    user_write(&f, data, N);
    CU_ASSERT(sl_pipe_shutdown_write(f.p) == 0);
    CU_ASSERT(wh_raw_read(&f.raw, digits, 2 * N));
    CU_ASSERT(memcmp(digits, want, 2 * N) == 0);
    CU_ASSERT(wh_run_until(wh_raw_closed, &f.raw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(f.raw.acc) == 0);
    /* And back, in upper case, in one go. */
    for (size_t i = 0; i < 2 * N; i++)
        if (want[i] >= 'a')
            want[i] = (char)(want[i] - 'a' + 'A');
    wh_raw_write(&f.raw, want, 2 * N);
    wh_raw_shutdown(&f.raw);
    CU_ASSERT(wh_run_until(wh_user_ended, &f.user, WH_WAIT_MS));
    CU_ASSERT(f.user.eof && !f.user.error);
    CU_ASSERT_FATAL(evbuffer_get_length(f.user.in) == N);
    evbuffer_remove(f.user.in, got, N);
    CU_ASSERT(memcmp(got, data, N) == 0);
    fx_stop(&f);
    free(data);
    free(got);
    free(digits);
    free(want);
}

/* Digits the layers below already read are decoded at once. */
static void
test_early_digits(void)
{
    struct fixture f;

    fx_start(&f, WH_RAW_BEV, SL_ROLE_SERVER, "68656c6c6f");
    wh_user_expect(&f.user, "hello", 5);
    fx_stop(&f);
    fx_start(&f, WH_RAW_FD, SL_ROLE_SERVER, "68656c6c6f");
    wh_user_expect(&f.user, "hello", 5);
    fx_stop(&f);
}

/* A reader that does not read: what waits is bounded by read_buffer. */
static void
test_bounded(void)
{
    enum { N = 2 * 1024 * 1024 };
    struct fixture f;
    char *digits = malloc(N);
    struct bufferevent *ubev;
    size_t held;

    CU_ASSERT_FATAL(digits != NULL);
    memset(digits, '7', N);
    fx_start(&f, WH_RAW_BEV, SL_ROLE_CLIENT, NULL);
    ubev = sl_pipe_get0_bev(f.p);
    bufferevent_disable(ubev, EV_READ);
    wh_raw_write(&f.raw, digits, N);
    wh_run_for(100);
    /* The user's input, our pair end and the lower input together hold
     * at most read_buffer (256 KiB) bytes and twice that in digits. */
    held = evbuffer_get_length(bufferevent_get_input(ubev));
    CU_ASSERT(held <= 256 * 1024);
    CU_ASSERT(evbuffer_get_length(bufferevent_get_output(f.raw.bev)) > 0);
    bufferevent_enable(ubev, EV_READ);
    {
        struct wh_want w = { &f.user, N / 2 };

        CU_ASSERT(wh_run_until(wh_user_has, &w, WH_WAIT_MS));
    }
    CU_ASSERT(evbuffer_get_length(f.user.in) == N / 2);
    fx_stop(&f);
    free(digits);
}

/* Cancelled before the result: ECANCELED from the loop, nothing leaks. */
static void
test_cancel(void)
{
    struct wh_raw raw;
    struct wh_wres w;
    long pipes0 = sl_pipe_count();
    void *cfg = wh_cfg(NULL), *op = NULL;

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), SL_ROLE_CLIENT, &w,
                  &op);
    w.in_call = true;
    wh_ops->cancel(op);
    w.in_call = false;
    CU_ASSERT(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
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
test_options(void)
{
    struct sl_error e;

    CU_ASSERT(wh_cfg_try(&e, "read_buffer", "1k", NULL) == NULL);
    CU_ASSERT(strstr(e.text, "read_buffer") != NULL);
    CU_ASSERT(wh_cfg_try(&e, "chunk", "1", NULL) == NULL);
    CU_ASSERT(strstr(e.text, "chunk") != NULL);
    wh_ops->unconfigure(wh_cfg("read_buffer", "64k", NULL));
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "codec", test_codec },
        { "bytes both ways, socketpair", test_bytes_socketpair },
        { "bytes both ways, bufferevent pair", test_bytes_bevpair },
        { "a non-digit ends receiving", test_bad_char },
        { "odd digit at EOF, half-close", test_eof_odd },
        { "EOF behind a full buffer", test_eof_behind_full_buffer },
        { "bulk then shutdown", test_shutdown_after_bulk },
        { "digits before the wrap", test_early_digits },
        { "a slow reader is bounded", test_bounded },
        { "cancel", test_cancel },
        { "options", test_options },
        { NULL, NULL },
    };
    const struct sl_layer *l;
    struct sl_error e;
    int rc;

    alarm(HARD_LIMIT_S);
    signal(SIGPIPE, SIG_IGN);
    if (getenv("HEX_TEST_VERBOSE") == NULL)
        sl_log_set_level(SL_LOG_ERR);
    sl_error_clear(&e);
    if (sl_loader_register(sl_plugin_hex_describe(), "test-hex", &e) != 0) {
        fprintf(stderr, "test-hex: %s\n", e.text);
        return 2;
    }
    l = sl_layer_find("hex");
    wh_ops = sl_layer_get0_ops(l);
    wh_plugin_ctx = sl_layer_get0_plugin_ctx(l);
    wh_base = event_base_new();
    rc = cu_run("hex", tests);
    event_base_free(wh_base);
    sl_loader_unload_all();
    return rc;
}
