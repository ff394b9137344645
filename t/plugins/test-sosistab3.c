/*
 * test-sosistab3.c: the sosistab3 layer itself, against the spec.
 *
 * The layer is linked in, compiled with its test-only entry point
 * (s3-test.h) so that tests can fix its randomness, clock and server
 * deadline; the tcp module is loaded from SILLAD_PLUGIN_PATH for the
 * end-to-end cases.
 *
 *   - spec §11 byte for byte through the layer: the client's HS_c and
 *     padding and its "hello" (and obfs "hi") records, the server's HS_s
 *     and "world" record, over a socketpair and over a bufferevent pair;
 *   - records that arrive with the handshake; EOF inside a record;
 *     half-close; records split at record_size;
 *   - probes refused in silence over real TCP, the server closing only at
 *     its deadline: wrong cookie, tampered handshake or padding, replayed
 *     handshake, clock skew, truncated handshake, garbage;
 *   - tampered and over-long records after a good handshake;
 *   - the client's refusal of bad replies; cancellation at every stage;
 *   - the replay cache.
 *
 * Every wait is bounded, and an alarm ends the program if the loop stops.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "blake3.h"
#include "../cu.h"
#include "s3-crypto.h"
#include "s3-replay.h"
#include "s3-test.h"
#include "sillad.h"
#include "wrap-harness.h"

const struct sl_plugin *sl_plugin_sosistab3_describe(void);

#define HARD_LIMIT_S 240
#define DEADLINE_MS 150

/* ---- spec §11 values (also in test-s3-crypto.c) -------------------------- */

#define HEX_SK_C                                                              \
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
#define HEX_SK_S                                                              \
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
#define HEX_HS_C                                                              \
    "000102030405060708090a0bf8bb87042aba3cd9849a195eed23d8f31c2e8d66"        \
    "9bd7b20dd2a749b9457f941fe77ed35aa3daa8c209512f6c4f834813098d3075"        \
    "7acb9353da4602399f3b210406f8e8356b21a564e797916469e07993dce64d2c"        \
    "4b771c21ae4b6241e6d85062048440ed0696d277be56155499345e331ec01f2a"        \
    "2d964e8c6f2635ea26530674"
#define HEX_PAD_C "0011223344"
#define HEX_HS_S                                                              \
    "0c0d0e0f1011121314151617e93e7e717d201261c351ac098e009db60a8ae438"        \
    "29b5e9bdf64624c156fb9691b43f5a3e5d36b68f9bcd5f20e5b7b2c338918145"        \
    "2aa09dbdf044c249eba76d9dc09a2ebb23db1f2101a06ed7510ea212ffa84f8b"        \
    "9ac5be2839807ff4238a0076f310b1e920396af3dceb6638dba8e52c3dfdd965"        \
    "ad813b8b6587e75907730f49"
#define HEX_SS                                                                \
    "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
#define HEX_KEY_UP                                                            \
    "25baf2c42f36941c7993ea7870ff4ce3091e3888acb62010054821f84043936f"
#define HEX_REC_HELLO                                                         \
    "8bd6393183b87686b788466753f3df9de395d18a8bf367705c06aac766f75d7ba2"      \
    "56195aa273a4d5f5"
#define HEX_REC_WORLD                                                         \
    "828edfd70f0cd014a5cf60f5dd609d47a0eaa11e0ea2258b7d13c13dd07bec46fd"      \
    "1389b7c22427697d"
#define HEX_REC_HI                                                            \
    "d9ecd30e736c2be479917fb6201d4f685c187db815fe610ed8425995eee5ce07ee"      \
    "bd3da46591"
#define HEX_REC_PAD                                                           \
    "6fe219db1b6edcb00279256f522489c0ae95c0ff75163af5e2763df37223a3b391"      \
    "1d0bde8d2f516001fa5a525ec40d27ccedab1ea0278b7a53acd923e22ea7de17fc"      \
    "c53216d4ec6ed4746b58b2de3478d856b3914d1db6be1c0fdee042"
#define SPEC_COOKIE "test-cookie"
#define SPEC_T_C 1700000000u
#define SPEC_T_S 1700000001u

static size_t
unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;

    CU_ASSERT_FATAL(n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;

        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static void
dump_diff(const char *what, const uint8_t *got, const uint8_t *want,
          size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            fprintf(stderr, "\n  %s: first difference at byte %zu "
                    "(%02x, want %02x)\n", what, i, got[i], want[i]);
            return;
        }
}

#define CU_ASSERT_BYTES(got, want, n, what)                                 \
    do {                                                                    \
        dump_diff((what), (got), (want), (n));                              \
        CU_ASSERT(memcmp((got), (want), (n)) == 0);                         \
    } while (0)

/* ---- hooks: fixed randomness and time, per role -------------------------- */

struct fixed {
    bool sk_set[3], hs_set[3], time_set[3];
    uint8_t sk[3][32];
    uint8_t nonce[3][12];
    uint8_t pad[3][1024];
    size_t padlen[3];
    uint64_t time[3];
    int obfs;                /* -1: the cookie's setting */
    unsigned r;
};

static struct fixed fx;

static void
hook_secret(void *arg, enum sl_role role, uint8_t sk[32])
{
    (void)arg;
    if (fx.sk_set[role])
        memcpy(sk, fx.sk[role], 32);
    else
        randombytes_buf(sk, 32);
}

static size_t
hook_hs_random(void *arg, enum sl_role role, uint8_t nonce[12],
               uint8_t *padding)
{
    size_t n;

    (void)arg;
    if (!fx.hs_set[role]) {
        randombytes_buf(nonce, 12);
        n = randombytes_uniform(1025);
        randombytes_buf(padding, n);
        return n;
    }
    memcpy(nonce, fx.nonce[role], 12);
    memcpy(padding, fx.pad[role], fx.padlen[role]);
    return fx.padlen[role];
}

static uint64_t
hook_time(void *arg, enum sl_role role)
{
    (void)arg;
    return fx.time_set[role] ? fx.time[role] : (uint64_t)time(NULL);
}

static int
hook_obfs(void *arg, enum sl_role role)
{
    (void)arg;
    (void)role;
    return fx.obfs;
}

static unsigned
hook_jitter(void *arg)
{
    (void)arg;
    return fx.r;
}

static struct s3_test_hooks hooks = {
    .secret = hook_secret,
    .hs_random = hook_hs_random,
    .unix_time = hook_time,
    .obfs = hook_obfs,
    .jitter = hook_jitter,
    .deadline_ms = DEADLINE_MS,
};

static void
fixed_reset(void)
{
    memset(&fx, 0, sizeof(fx));
    fx.obfs = -1;
    hooks.deadline_ms = DEADLINE_MS;
}

/* The spec's inputs for role (client or server). */
static void
fixed_spec(enum sl_role role)
{
    if (role == SL_ROLE_CLIENT) {
        unhex(HEX_SK_C, fx.sk[role], 32);
        for (int i = 0; i < 12; i++)
            fx.nonce[role][i] = (uint8_t)i;
        fx.padlen[role] = unhex(HEX_PAD_C, fx.pad[role], 1024);
        fx.time[role] = SPEC_T_C;
    } else {
        unhex(HEX_SK_S, fx.sk[role], 32);
        for (int i = 0; i < 12; i++)
            fx.nonce[role][i] = (uint8_t)(12 + i);
        fx.padlen[role] = 0;
        fx.time[role] = SPEC_T_S;
    }
    fx.sk_set[role] = fx.hs_set[role] = fx.time_set[role] = true;
}

/* ---- the layer ----------------------------------------------------------- */


/* A configured layer from "key=value" pairs (NULL-terminated). */
static void *
layer_cfg(const char *cookie, ...)
{
    struct sl_opts *o = sl_opts_new();
    struct sl_error e;
    const char *k;
    void *cfg = NULL;
    va_list ap;

    sl_error_clear(&e);
    CU_ASSERT_FATAL(o != NULL);
    CU_ASSERT_FATAL(sl_opts_add(o, "cookie", cookie, &e) == 0);
    va_start(ap, cookie);
    while ((k = va_arg(ap, const char *)) != NULL)
        CU_ASSERT_FATAL(sl_opts_add(o, k, va_arg(ap, const char *), &e) == 0);
    va_end(ap);
    CU_ASSERT_FATAL(sl_opts_check(o, wh_ops->opts, "sosistab3", &e) == 0);
    CU_ASSERT_FATAL(wh_ops->configure(sl_host_get(), wh_plugin_ctx, o, &cfg,
                                      &e) == 0);
    sl_opts_free(o);
    return cfg;
}

/* A TCP connection to addr. */
static void
raw_connect(struct wh_raw *r, const char *addr)
{
    char host[64], port[16];
    struct addrinfo hints, *ai = NULL;

    memset(r, 0, sizeof(*r));
    r->kind = WH_RAW_FD;
    r->acc = evbuffer_new();
    CU_ASSERT_FATAL(sl_parse_addr(addr, host, sizeof(host), port,
                                  sizeof(port)) == 0);
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    CU_ASSERT_FATAL(getaddrinfo(host, port, &hints, &ai) == 0);
    r->fd = socket(ai->ai_family, SOCK_STREAM, 0);
    CU_ASSERT_FATAL(r->fd >= 0);
    CU_ASSERT_FATAL(connect(r->fd, ai->ai_addr, ai->ai_addrlen) == 0);
    freeaddrinfo(ai);
}

/* ---- the spec through the layer ------------------------------------------ */

static void
spec_client(enum wh_raw_kind kind)
{
    uint8_t got[256], want[256], ss[32];
    size_t n, len = sizeof(ss);
    long pipes0 = sl_pipe_count();
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = wh_raw_new(&r, kind);
    struct wh_wres w;
    struct wh_user u;
    struct wh_want uw;
    void *op;
    char proto[32];

    fixed_reset();
    fixed_spec(SL_ROLE_CLIENT);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, &op);
    CU_ASSERT(w.calls == 0);
    /* HS_c || padding, in one piece. */
    n = unhex(HEX_HS_C HEX_PAD_C, want, sizeof(want));
    CU_ASSERT_FATAL(wh_raw_read(&r, got, n));
    CU_ASSERT_BYTES(got, want, n, "HS_c || padding");
    /* Nothing more until the server speaks. */
    wh_run_for(20);
    wh_raw_pump(&r);
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    CU_ASSERT(w.calls == 0);
    n = unhex(HEX_HS_S, want, sizeof(want));
    wh_raw_write(&r, want, n);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_FATAL(w.p != NULL);
    CU_ASSERT(w.calls == 1 && !w.inside);
    CU_ASSERT(sl_pipe_query(w.p, SL_Q_SHARED_SECRET, ss, &len) == 0);
    CU_ASSERT(len == 32);
    n = unhex(HEX_SS, want, sizeof(want));
    CU_ASSERT_BYTES(ss, want, 32, "ss");
    CU_ASSERT_STRING_EQUAL(sl_pipe_protocol(w.p, proto, sizeof(proto)),
                           "sosistab3");
    wh_user_attach(&u, w.p);
    /* "hello": record 0, nonces 0 and 1. */
    bufferevent_write(sl_pipe_get0_bev(w.p), "hello", 5);
    n = unhex(HEX_REC_HELLO, want, sizeof(want));
    CU_ASSERT_FATAL(wh_raw_read(&r, got, n));
    CU_ASSERT_BYTES(got, want, n, "hello record");
    /* "hi" with obfs_lengths and r = 3: records 1 and 2, 131 bytes. */
    fx.obfs = 1;
    fx.r = 3;
    bufferevent_write(sl_pipe_get0_bev(w.p), "hi", 2);
    n = unhex(HEX_REC_HI HEX_REC_PAD, want, sizeof(want));
    CU_ASSERT(n == 131);
    CU_ASSERT_FATAL(wh_raw_read(&r, got, n));
    CU_ASSERT_BYTES(got, want, n, "hi record and padding record");
    fx.obfs = -1;
    /* The server's "world". */
    n = unhex(HEX_REC_WORLD, want, sizeof(want));
    wh_raw_write(&r, want, n);
    uw.u = &u;
    uw.n = 5;
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 5);
    CU_ASSERT(memcmp(evbuffer_pullup(u.in, -1), "world", 5) == 0);
    CU_ASSERT(!u.eof && !u.error);
    sl_pipe_free(w.p);
    wh_user_free(&u);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_spec_client_socketpair(void)
{
    spec_client(WH_RAW_FD);
}

static void
test_spec_client_bevpair(void)
{
    spec_client(WH_RAW_BEV);
}

static void
spec_server(enum wh_raw_kind kind)
{
    uint8_t got[256], want[256], ss[32];
    size_t n, len = sizeof(ss);
    long pipes0 = sl_pipe_count();
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = wh_raw_new(&r, kind);
    struct wh_wres w;
    struct wh_user u;
    struct wh_want uw;
    void *op;

    fixed_reset();
    fixed_spec(SL_ROLE_SERVER);
    hooks.deadline_ms = 20000;
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, &op);
    /* HS_c without its padding: the server must wait in silence. */
    n = unhex(HEX_HS_C, want, sizeof(want));
    wh_raw_write(&r, want, n);
    wh_run_for(30);
    wh_raw_pump(&r);
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    CU_ASSERT(w.calls == 0);
    n = unhex(HEX_PAD_C, want, sizeof(want));
    wh_raw_write(&r, want, n);
    n = unhex(HEX_HS_S, want, sizeof(want));
    CU_ASSERT_FATAL(wh_raw_read(&r, got, n));
    CU_ASSERT_BYTES(got, want, n, "HS_s");
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_FATAL(w.p != NULL);
    CU_ASSERT(w.calls == 1 && !w.inside);
    CU_ASSERT(sl_pipe_query(w.p, SL_Q_SHARED_SECRET, ss, &len) == 0);
    n = unhex(HEX_SS, want, sizeof(want));
    CU_ASSERT_BYTES(ss, want, 32, "ss");
    wh_user_attach(&u, w.p);
    n = unhex(HEX_REC_HELLO, want, sizeof(want));
    wh_raw_write(&r, want, n);
    uw.u = &u;
    uw.n = 5;
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
              memcmp(evbuffer_pullup(u.in, -1), "hello", 5) == 0);
    bufferevent_write(sl_pipe_get0_bev(w.p), "world", 5);
    n = unhex(HEX_REC_WORLD, want, sizeof(want));
    CU_ASSERT_FATAL(wh_raw_read(&r, got, n));
    CU_ASSERT_BYTES(got, want, n, "world record");
    sl_pipe_free(w.p);
    wh_user_free(&u);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_spec_server_socketpair(void)
{
    spec_server(WH_RAW_FD);
}

static void
test_spec_server_bevpair(void)
{
    spec_server(WH_RAW_BEV);
}

/* Records right behind the handshake are opened at once. */
static void
leftover(enum wh_raw_kind kind)
{
    uint8_t buf[512], got[256];
    size_t n;
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower;
    struct wh_wres w;
    struct wh_user u;
    struct wh_want uw = { &u, 5 };
    void *op;

    /* Client: HS_s and "world" in one write. */
    fixed_reset();
    fixed_spec(SL_ROLE_CLIENT);
    lower = wh_raw_new(&r, kind);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, &op);
    CU_ASSERT_FATAL(wh_raw_read(&r, got, 145));
    n = unhex(HEX_HS_S HEX_REC_WORLD, buf, sizeof(buf));
    wh_raw_write(&r, buf, n);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS) &&
                    w.p != NULL);
    wh_user_attach(&u, w.p);
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
              memcmp(evbuffer_pullup(u.in, -1), "world", 5) == 0);
    sl_pipe_free(w.p);
    wh_user_free(&u);
    wh_raw_free(&r);
    /* Server: HS_c, padding and "hello" in one write. */
    fixed_reset();
    fixed_spec(SL_ROLE_SERVER);
    lower = wh_raw_new(&r, kind);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, &op);
    n = unhex(HEX_HS_C HEX_PAD_C HEX_REC_HELLO, buf, sizeof(buf));
    wh_raw_write(&r, buf, n);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS) &&
                    w.p != NULL);
    wh_user_attach(&u, w.p);
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
              memcmp(evbuffer_pullup(u.in, -1), "hello", 5) == 0);
    sl_pipe_free(w.p);
    wh_user_free(&u);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

static void
test_leftover_socketpair(void)
{
    leftover(WH_RAW_FD);
}

static void
test_leftover_bevpair(void)
{
    leftover(WH_RAW_BEV);
}

/* A client pipe over the spec handshake, for the record tests. */
static struct sl_pipe *
spec_client_pipe(void *cfg, struct wh_raw *r, enum wh_raw_kind kind)
{
    uint8_t buf[256];
    size_t n;
    struct sl_pipe *lower = wh_raw_new(r, kind);
    struct wh_wres w;
    void *op;

    fixed_reset();
    fixed_spec(SL_ROLE_CLIENT);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, &op);
    CU_ASSERT_FATAL(wh_raw_read(r, buf, 145));
    n = unhex(HEX_HS_S, buf, sizeof(buf));
    wh_raw_write(r, buf, n);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS) &&
                    w.p != NULL);
    return w.p;
}

/* The server's records 0 ("world") and 1, sealed afresh. */
static size_t
server_records(uint8_t *out, size_t cap)
{
    uint8_t key_dn[32], ss[32];
    struct s3_dir *d;

    CU_ASSERT_FATAL(cap >= 2 * (5 + S3_REC_OVERHEAD));
    unhex(HEX_SS, ss, sizeof(ss));
    blake3_derive_key(key_dn, "dn", ss, 32);
    CU_ASSERT_FATAL(s3_dir_new(key_dn, S3_SEAL, S3_AEAD_SODIUM, &d) == S3_OK);
    CU_ASSERT_FATAL(s3_rec_seal(d, (const uint8_t *)"world", 5, out, cap) ==
                    S3_OK);
    CU_ASSERT_FATAL(s3_rec_seal(d, (const uint8_t *)"again", 5, out + 41,
                                cap - 41) == S3_OK);
    s3_dir_free(d);
    return 2 * (5 + S3_REC_OVERHEAD);
}

/* EOF in the middle of a record is a clean EOF after the data before:
 * with 30 bytes of record 1 (its length part is good) and with 10 bytes
 * (under the 24 needed to look at it), over both kinds of lower pipe. */
static void
test_eof_mid_record(void)
{
    static const size_t cut[] = { 30, 10 };

    for (int i = 0; i < 4; i++) {
        uint8_t buf[256];
        void *cfg = layer_cfg(SPEC_COOKIE, NULL);
        struct wh_raw r;
        struct sl_pipe *p = spec_client_pipe(cfg, &r,
                                             i < 2 ? WH_RAW_FD : WH_RAW_BEV);
        struct wh_user u;

        wh_user_attach(&u, p);
        server_records(buf, sizeof(buf));
        wh_raw_write(&r, buf, 41 + cut[i % 2]);
        wh_raw_shutdown(&r);
        CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
        CU_ASSERT(u.eof && !u.error);
        CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
                  memcmp(evbuffer_pullup(u.in, -1), "world", 5) == 0);
        sl_pipe_free(p);
        wh_user_free(&u);
        wh_raw_free(&r);
        wh_ops->unconfigure(cfg);
    }
}

/* A tampered record, and an over-long one, are read errors, after the
 * good record before them. */
static void
bad_record(bool too_long)
{
    uint8_t rec[64], want[64], key_dn[32], ss[32];
    size_t n;
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *p = spec_client_pipe(cfg, &r, WH_RAW_FD);
    const struct sl_error *se;
    struct s3_dir *d;
    struct wh_user u;
    char text[256];

    wh_user_attach(&u, p);
    unhex(HEX_SS, ss, sizeof(ss));
    blake3_derive_key(key_dn, "dn", ss, 32);
    CU_ASSERT_FATAL(s3_dir_new(key_dn, S3_SEAL, S3_AEAD_SODIUM, &d) == S3_OK);
    CU_ASSERT_FATAL(s3_rec_seal(d, (const uint8_t *)"world", 5, rec,
                                sizeof(rec)) == S3_OK);
    n = unhex(HEX_REC_WORLD, want, sizeof(want));
    CU_ASSERT(memcmp(rec, want, n) == 0);
    wh_raw_write(&r, rec, n);
    if (too_long) {
        /* Record 1's length part (nonce 2) saying 1 MiB + 1. */
        uint8_t hdr[4] = { 0x01, 0x00, 0x10, 0x00 };
        uint8_t nonce[12] = { 2 };
        unsigned long long cl;

        crypto_aead_chacha20poly1305_ietf_encrypt(rec, &cl, hdr, 4, NULL, 0,
                                                  NULL, nonce, key_dn);
        wh_raw_write(&r, rec, 24);
    } else {
        CU_ASSERT_FATAL(s3_rec_seal(d, (const uint8_t *)"again", 5, rec,
                                    sizeof(rec)) == S3_OK);
        rec[S3_REC_HDR_LEN + 2] ^= 1;   /* a bit of its body */
        wh_raw_write(&r, rec, 5 + S3_REC_OVERHEAD);
    }
    s3_dir_free(d);
    CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
    CU_ASSERT(u.error && !u.eof);
    CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
              memcmp(evbuffer_pullup(u.in, -1), "world", 5) == 0);
    se = sl_pipe_get0_error(p);
    CU_ASSERT_FATAL(se != NULL);
    CU_ASSERT_TEXT(sl_error_str(se, text, sizeof(text)),
                   too_long ? "sosistab3: record longer than 1 MiB"
                            : "sosistab3: record authentication failed");
    sl_pipe_free(p);
    wh_user_free(&u);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

static void
test_tampered_record(void)
{
    bad_record(false);
}

static void
test_overlong_record(void)
{
    bad_record(true);
}

/* Writes are cut into records of at most record_size bytes. */
static void
test_record_size(void)
{
    uint8_t data[2500], got[2500 + 3 * 36], key_up[32], out[1000];
    void *cfg = layer_cfg(SPEC_COOKIE, "record_size", "1000", NULL);
    struct wh_raw r;
    struct sl_pipe *p = spec_client_pipe(cfg, &r, WH_RAW_BEV);
    struct s3_dir *d;
    size_t off = 0, rec_len;
    int32_t L;
    static const int32_t want[] = { 1000, 1000, 500 };

    randombytes_buf(data, sizeof(data));
    bufferevent_write(sl_pipe_get0_bev(p), data, sizeof(data));
    CU_ASSERT_FATAL(wh_raw_read(&r, got, sizeof(got)));
    unhex(HEX_KEY_UP, key_up, sizeof(key_up));
    CU_ASSERT_FATAL(s3_dir_new(key_up, S3_OPEN, S3_AEAD_DEFAULT, &d) ==
                    S3_OK);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_FATAL(s3_rec_open(d, got + off, sizeof(got) - off, out,
                                    sizeof(out), &rec_len, &L) == S3_OK);
        CU_ASSERT(L == want[i]);
        CU_ASSERT(memcmp(out, data + 1000 * i, (size_t)L) == 0);
        off += rec_len;
    }
    CU_ASSERT(off == sizeof(got));
    s3_dir_free(d);
    sl_pipe_free(p);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

/* The cookie's ObfsParams turn length padding on for what this end
 * sends: "hello" becomes 41 + 90 = 131 bytes with r = 3 (spec §7.4). */
static void
test_obfs_cookie(void)
{
    uint8_t got[131], key_up[32], out[64], want[64];
    void *cfg = layer_cfg(SPEC_COOKIE "---{\"obfs_lengths\":true,"
                          "\"obfs_timing\":false}", NULL);
    struct wh_raw r;
    struct sl_pipe *p = spec_client_pipe(cfg, &r, WH_RAW_FD);
    struct s3_dir *d;
    size_t rec_len, n;
    int32_t L;

    fx.r = 3;
    bufferevent_write(sl_pipe_get0_bev(p), "hello", 5);
    CU_ASSERT_FATAL(wh_raw_read(&r, got, sizeof(got)));
    wh_run_for(20);
    wh_raw_pump(&r);
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    /* The same keys as the spec: the params are not part of the secret. */
    n = unhex(HEX_REC_HELLO, want, sizeof(want));
    CU_ASSERT(memcmp(got, want, n) == 0);
    unhex(HEX_KEY_UP, key_up, sizeof(key_up));
    CU_ASSERT_FATAL(s3_dir_new(key_up, S3_OPEN, S3_AEAD_DEFAULT, &d) ==
                    S3_OK);
    CU_ASSERT(s3_rec_open(d, got, sizeof(got), out, sizeof(out), &rec_len,
                          &L) == S3_OK && L == 5 && rec_len == 41);
    CU_ASSERT(s3_rec_open(d, got + 41, sizeof(got) - 41, out, sizeof(out),
                          &rec_len, &L) == S3_OK && L == -54 &&
              rec_len == 90);
    s3_dir_free(d);
    sl_pipe_free(p);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

/* shutdown_write ends the lower's sending after the records; reading goes
 * on. */
static void
test_half_close(void)
{
    uint8_t buf[256];
    size_t n;
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *p = spec_client_pipe(cfg, &r, WH_RAW_FD);
    struct wh_user u;
    struct wh_want uw = { &u, 5 };

    wh_user_attach(&u, p);
    bufferevent_write(sl_pipe_get0_bev(p), "hello", 5);
    CU_ASSERT(sl_pipe_shutdown_write(p) == 0);
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    CU_ASSERT(!r.reset);
    n = unhex(HEX_REC_HELLO, buf, sizeof(buf));
    CU_ASSERT(evbuffer_get_length(r.acc) == n);
    CU_ASSERT(memcmp(evbuffer_pullup(r.acc, -1), buf, n) == 0);
    n = unhex(HEX_REC_WORLD, buf, sizeof(buf));
    wh_raw_write(&r, buf, n);
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(!u.eof && !u.error);
    sl_pipe_free(p);
    wh_user_free(&u);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

/* ---- the client refuses bad replies, at once ----------------------------- */

static void
client_refuses(int how)
{
    uint8_t hs_c[145], reply[140], key_s[32], pk[32], sk[32], h[32];
    uint8_t nonce[12] = { 9 }, pad[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    struct s3_cookie ck;
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = wh_raw_new(&r, WH_RAW_FD);
    struct wh_wres w;
    void *op;
    int64_t t0;
    char text[256];

    fixed_reset();
    fixed_spec(SL_ROLE_CLIENT);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, &op);
    CU_ASSERT_FATAL(wh_raw_read(&r, hs_c, sizeof(hs_c)));
    CU_ASSERT_FATAL(s3_cookie_parse(SPEC_COOKIE, strlen(SPEC_COOKIE), &ck) ==
                    S3_OK);
    s3_hs_key(&ck, S3_SERVER, key_s);
    s3_cookie_wipe(&ck);
    CU_ASSERT_FATAL(s3_keypair(sk, pk) == S3_OK);
    blake3_hash(h, hs_c, S3_HS_LEN);
    switch (how) {
    case 0:   /* garbage */
        randombytes_buf(reply, sizeof(reply));
        break;
    case 1:   /* a good message, but for another hello */
        h[0] ^= 1;
        CU_ASSERT(s3_hs_seal(key_s, pk, 1, NULL, 0, h, nonce, reply) ==
                  S3_OK);
        break;
    default:  /* padding that does not match its hash */
        CU_ASSERT(s3_hs_seal(key_s, pk, 1, pad, sizeof(pad), h, nonce,
                             reply) == S3_OK);
        pad[0] ^= 1;
        break;
    }
    t0 = sl_now_ms();
    wh_raw_write(&r, reply, sizeof(reply));
    if (how == 2)
        wh_raw_write(&r, pad, sizeof(pad));
    CU_ASSERT(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.calls == 1 && w.p == NULL);
    CU_ASSERT(w.at - t0 < 1000);
    CU_ASSERT_TEXT(sl_error_str(&w.err, text, sizeof(text)),
                   how == 0   ? "sosistab3: handshake MAC mismatch"
                   : how == 1 ? "sosistab3: handshake reply is not for our "
                                "hello"
                              : "sosistab3: handshake padding hash mismatch");
    /* The connection is dropped at once. */
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

static void
test_client_refuses_garbage(void)
{
    client_refuses(0);
}

static void
test_client_refuses_other_reply(void)
{
    client_refuses(1);
}

static void
test_client_refuses_bad_padding(void)
{
    client_refuses(2);
}

/* ---- cancellation -------------------------------------------------------- */

static void
cancel_at(enum sl_role role, int stage)
{
    long pipes0 = sl_pipe_count();
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = wh_raw_new(&r, WH_RAW_FD);
    struct wh_wres w;
    uint8_t buf[256];
    size_t n;
    void *op;

    fixed_reset();
    fixed_spec(role);
    hooks.deadline_ms = 5000;
    wh_start_wrap(cfg, lower, role, &w, &op);
    if (stage >= 1) {
        if (role == SL_ROLE_SERVER) {
            /* 1: half a hello; 2: a bad hello (silent until deadline). */
            n = unhex(HEX_HS_C, buf, sizeof(buf));
            if (stage == 2)
                buf[40] ^= 1;
            wh_raw_write(&r, buf, stage == 1 ? 70 : n);
        } else {
            CU_ASSERT_FATAL(wh_raw_read(&r, buf, 145));
            if (stage == 2) {
                n = unhex(HEX_HS_S, buf, sizeof(buf));
                wh_raw_write(&r, buf, 100);
            }
        }
        wh_run_for(20);
    }
    CU_ASSERT(w.calls == 0);
    w.in_call = true;
    wh_ops->cancel(op);
    w.in_call = false;
    CU_ASSERT(w.calls == 0);
    CU_ASSERT(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    wh_run_for(20);
    CU_ASSERT(w.calls == 1 && !w.inside && w.p == NULL);
    CU_ASSERT(w.err.code == SL_ECANCELED);
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_cancel(void)
{
    for (int stage = 0; stage < 3; stage++) {
        cancel_at(SL_ROLE_CLIENT, stage);
        cancel_at(SL_ROLE_SERVER, stage);
    }
}

/* A server's failure reaches done only at the deadline, with its reason;
 * nothing is written and the lower pipe closes then. */
static void
server_fails(void *cfg, const uint8_t *bytes, size_t n, bool shut,
             const char *why)
{
    struct wh_raw r;
    struct sl_pipe *lower = wh_raw_new(&r, WH_RAW_FD);
    struct wh_wres w;
    void *op;
    int64_t t0 = sl_now_ms();
    char text[256];

    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, &op);
    wh_raw_write(&r, bytes, n);
    if (shut)
        wh_raw_shutdown(&r);
    wh_run_for(DEADLINE_MS / 2);
    CU_ASSERT(w.calls == 0);
    CU_ASSERT(wh_run_until(wh_wres_called, &w, DEADLINE_MS + WH_WAIT_MS));
    CU_ASSERT(w.calls == 1 && w.p == NULL && !w.inside);
    CU_ASSERT(w.at - t0 >= DEADLINE_MS - 5);
    CU_ASSERT_TEXT(sl_error_str(&w.err, text, sizeof(text)), why);
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    wh_raw_free(&r);
}

static void
test_server_failures(void)
{
    uint8_t hello[256], junk[140];
    size_t n;
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower;
    struct wh_wres w;
    void *op;

    fixed_reset();
    fixed_spec(SL_ROLE_SERVER);
    n = unhex(HEX_HS_C HEX_PAD_C, hello, sizeof(hello));
    randombytes_buf(junk, sizeof(junk));
    server_fails(cfg, junk, sizeof(junk), false,
                 "sosistab3: handshake MAC mismatch");
    hello[n - 1] ^= 1;
    server_fails(cfg, hello, n, false,
                 "sosistab3: handshake padding hash mismatch");
    hello[n - 1] ^= 1;
    server_fails(cfg, hello, 100, false,
                 "sosistab3: handshake not finished by the deadline");
    server_fails(cfg, hello, 100, true,
                 "sosistab3: connection closed during the handshake");
    /* The server's clock 301 s after the client's timestamp. */
    fx.time[SL_ROLE_SERVER] = SPEC_T_C + 301;
    server_fails(cfg, hello, n, false,
                 "sosistab3: handshake timestamp out of window");
    /* 300 s is still in the window; the same hello again is a replay. */
    fx.time[SL_ROLE_SERVER] = SPEC_T_C - 300;
    lower = wh_raw_new(&r, WH_RAW_FD);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, &op);
    wh_raw_write(&r, hello, n);
    CU_ASSERT(wh_run_until(wh_wres_called, &w, WH_WAIT_MS) && w.p != NULL);
    sl_pipe_free(w.p);
    wh_raw_free(&r);
    server_fails(cfg, hello, n, false, "sosistab3: handshake already seen");
    wh_ops->unconfigure(cfg);
}

/* unconfigure while a server handshake runs: it still finishes. */
static void
test_unconfigure_midway(void)
{
    uint8_t buf[256];
    size_t n;
    void *cfg = layer_cfg(SPEC_COOKIE, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = wh_raw_new(&r, WH_RAW_FD);
    struct wh_wres w;
    void *op;

    fixed_reset();
    fixed_spec(SL_ROLE_SERVER);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, &op);
    wh_ops->unconfigure(cfg);
    n = unhex(HEX_HS_C HEX_PAD_C, buf, sizeof(buf));
    wh_raw_write(&r, buf, n);
    CU_ASSERT(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p != NULL);
    sl_pipe_free(w.p);
    wh_raw_free(&r);
}

/* ---- probes over TCP: refused in silence until the deadline -------------- */

struct srv {
    struct sl_stack *stack;
    struct sl_listener *l;
    char addr[64];
    int accepted;
    struct sl_pipe *pipes[8];
    int npipes;
};

static void
srv_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
           void *arg)
{
    struct srv *sv = arg;

    (void)s;
    (void)e;
    if (p == NULL)
        return;
    sv->accepted++;
    if (sv->npipes < 8)
        sv->pipes[sv->npipes++] = p;
    else
        sl_pipe_free(p);
}

static void
srv_start(struct srv *sv)
{
    struct sl_error e;

    memset(sv, 0, sizeof(*sv));
    sl_error_clear(&e);
    sv->stack = sl_stack_parse("tcp addr=127.0.0.1:0 | sosistab3 "
                               "cookie=" SPEC_COOKIE, &e);
    CU_ASSERT_FATAL(sv->stack != NULL);
    sv->l = sl_listener_new(sv->stack, wh_base, srv_accept, sv, &e);
    CU_ASSERT_FATAL(sv->l != NULL);
    CU_ASSERT_FATAL(sl_listener_local_addr(sv->l, sv->addr,
                                           sizeof(sv->addr)) == 0);
}

static void
srv_stop(struct srv *sv)
{
    for (int i = 0; i < sv->npipes; i++)
        sl_pipe_free(sv->pipes[i]);
    sl_listener_free(sv->l);
    sl_stack_free(sv->stack);
    wh_run_for(5);
}

/* A client hello for the spec cookie: timestamp skew seconds off. */
static size_t
make_hello(const char *cookie, int64_t skew, uint8_t *out)
{
    uint8_t key_c[32], sk[32], pk[32];
    struct s3_cookie ck;
    size_t len = 0;

    CU_ASSERT_FATAL(s3_cookie_parse(cookie, strlen(cookie), &ck) == S3_OK);
    s3_hs_key(&ck, S3_CLIENT, key_c);
    s3_cookie_wipe(&ck);
    CU_ASSERT_FATAL(s3_keypair(sk, pk) == S3_OK);
    CU_ASSERT_FATAL(s3_hs_seal_random(key_c, pk,
                                      (uint64_t)((int64_t)time(NULL) + skew),
                                      s3_empty_hash, out, &len) == S3_OK);
    return len;
}

/*
 * Sends bytes (then ends sending if shut) on a fresh connection and checks
 * the server's silence: zero bytes back, and the close only after the
 * deadline from accept.
 */
static void
probe(struct srv *sv, const uint8_t *bytes, size_t n, bool shut,
      const char *what)
{
    struct wh_raw r;
    int64_t t0 = sl_now_ms();
    int before = sv->accepted;

    raw_connect(&r, sv->addr);
    wh_raw_write(&r, bytes, n);
    if (shut)
        wh_raw_shutdown(&r);
    wh_run_for(DEADLINE_MS / 2);
    wh_raw_pump(&r);
    if (r.eof || evbuffer_get_length(r.acc) != 0)
        fprintf(stderr, "\n  %s: reacted before the deadline\n", what);
    CU_ASSERT(!r.eof);
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, DEADLINE_MS + WH_WAIT_MS));
    if (evbuffer_get_length(r.acc) != 0)
        fprintf(stderr, "\n  %s: the server sent %zu bytes\n", what,
                evbuffer_get_length(r.acc));
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    CU_ASSERT(r.closed_at - t0 >= DEADLINE_MS - 5);
    CU_ASSERT(r.closed_at - t0 < DEADLINE_MS + 2000);
    CU_ASSERT(sv->accepted == before);
    wh_raw_free(&r);
}

/* A good hello on a fresh connection: the server answers. */
static void
probe_accepted(struct srv *sv, const uint8_t *bytes, size_t n)
{
    struct wh_raw r;
    struct wh_raw_want w = { &r, S3_HS_LEN };

    raw_connect(&r, sv->addr);
    wh_raw_write(&r, bytes, n);
    CU_ASSERT(wh_run_until(wh_raw_has, &w, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(r.acc) >= S3_HS_LEN &&
              evbuffer_get_length(r.acc) <= S3_HS_LEN + S3_HS_PAD_SEND_MAX);
    wh_raw_free(&r);
}

static void
test_probe_wrong_cookie(void)
{
    uint8_t hello[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t n = make_hello("wrong-cookie", 0, hello);
    struct srv sv;

    fixed_reset();
    srv_start(&sv);
    probe(&sv, hello, n, false, "wrong cookie");
    srv_stop(&sv);
}

static void
test_probe_tampered(void)
{
    uint8_t hello[S3_HS_LEN + S3_HS_PAD_SEND_MAX + 8];
    size_t n = make_hello(SPEC_COOKIE, 0, hello);
    struct srv sv;

    fixed_reset();
    srv_start(&sv);
    hello[60] ^= 0x10;                       /* the ciphertext */
    probe(&sv, hello, n, false, "tampered handshake");
    hello[60] ^= 0x10;
    hello[5] ^= 0x01;                        /* the nonce */
    probe(&sv, hello, n, false, "tampered nonce");
    hello[5] ^= 0x01;
    memcpy(hello + n, "12345678", 8);        /* padding: one byte more */
    if (n > S3_HS_LEN) {
        hello[n - 1] ^= 0x80;                /* the padding itself */
        probe(&sv, hello, n, false, "tampered padding");
    }
    srv_stop(&sv);
}

static void
test_probe_replay(void)
{
    uint8_t hello[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t n = make_hello(SPEC_COOKIE, 0, hello);
    struct srv sv;

    fixed_reset();
    srv_start(&sv);
    probe_accepted(&sv, hello, n);
    wh_run_for(20);
    probe(&sv, hello, n, false, "replayed handshake");
    srv_stop(&sv);
}

static void
test_probe_clock_skew(void)
{
    uint8_t hello[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t n;
    struct srv sv;

    fixed_reset();
    srv_start(&sv);
    n = make_hello(SPEC_COOKIE, -301, hello);
    probe(&sv, hello, n, false, "301 s slow");
    n = make_hello(SPEC_COOKIE, 301, hello);
    probe(&sv, hello, n, false, "301 s fast");
    n = make_hello(SPEC_COOKIE, -298, hello);
    probe_accepted(&sv, hello, n);
    n = make_hello(SPEC_COOKIE, 298, hello);
    probe_accepted(&sv, hello, n);
    srv_stop(&sv);
}

/* The server's clock injected instead: 1000 s ahead of the client. */
static void
test_probe_server_clock(void)
{
    uint8_t hello[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t n = make_hello(SPEC_COOKIE, 0, hello);
    struct srv sv;

    fixed_reset();
    fx.time_set[SL_ROLE_SERVER] = true;
    fx.time[SL_ROLE_SERVER] = (uint64_t)time(NULL) + 1000;
    srv_start(&sv);
    probe(&sv, hello, n, false, "server clock 1000 s ahead");
    srv_stop(&sv);
    fixed_reset();
}

static void
test_probe_truncated(void)
{
    uint8_t hello[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    struct srv sv;

    make_hello(SPEC_COOKIE, 0, hello);
    fixed_reset();
    srv_start(&sv);
    /* 100 bytes, then the client ends its sending: the server must not
     * close at that EOF, only at its deadline. */
    probe(&sv, hello, 100, true, "truncated handshake");
    srv_stop(&sv);
}

static void
test_probe_garbage(void)
{
    uint8_t junk[3000];
    struct srv sv;

    randombytes_buf(junk, sizeof(junk));
    fixed_reset();
    srv_start(&sv);
    probe(&sv, junk, 1, true, "one byte");
    probe(&sv, junk, sizeof(junk), false, "3000 random bytes");
    srv_stop(&sv);
}

/* Without the test deadline the server holds a failed probe for at least
 * 10 s; freeing the listener then ends it at once. */
static void
test_probe_real_deadline(void)
{
    uint8_t junk[200];
    struct srv sv;
    struct wh_raw r;
    long pipes0 = sl_pipe_count();

    randombytes_buf(junk, sizeof(junk));
    fixed_reset();
    hooks.deadline_ms = 0;
    srv_start(&sv);
    raw_connect(&r, sv.addr);
    wh_raw_write(&r, junk, sizeof(junk));
    CU_ASSERT(!wh_run_until(wh_raw_closed, &r, 1000));
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    srv_stop(&sv);
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(r.acc) == 0);
    wh_raw_free(&r);
    fixed_reset();
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* ---- end to end over TCP ------------------------------------------------- */

struct dialed {
    int calls;
    struct sl_pipe *p;
};

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
          void *arg)
{
    struct dialed *d = arg;

    (void)s;
    (void)e;
    d->calls++;
    d->p = p;
}

static bool
dialed(void *arg)
{
    return ((struct dialed *)arg)->calls > 0;
}

static bool
srv_has_pipe(void *arg)
{
    return ((struct srv *)arg)->npipes > 0;
}

static void
test_end_to_end(void)
{
    const size_t big = 3 * 1024 * 1024 + 17;
    uint8_t *data = malloc(big), ssc[32], sss[32];
    size_t lc = 32, ls = 32;
    long pipes0 = sl_pipe_count();
    struct srv sv;
    struct sl_dialer *d;
    struct sl_error e;
    struct dialed dd = { 0, NULL };
    struct wh_user uc, us;
    struct wh_want w;
    char text[128], remote[64];

    fixed_reset();
    srv_start(&sv);
    snprintf(text, sizeof(text), "tcp addr=%s | sosistab3 cookie="
             SPEC_COOKIE, sv.addr);
    sl_error_clear(&e);
    d = sl_dialer_parse(text, &e);
    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT_FATAL(sl_dialer_dial(d, wh_base, on_dialed, &dd, NULL, &e) == 0);
    CU_ASSERT_FATAL(wh_run_until(dialed, &dd, WH_WAIT_MS) && dd.p != NULL);
    CU_ASSERT_FATAL(wh_run_until(srv_has_pipe, &sv, WH_WAIT_MS));
    CU_ASSERT(sl_pipe_query(dd.p, SL_Q_SHARED_SECRET, ssc, &lc) == 0);
    CU_ASSERT(sl_pipe_query(sv.pipes[0], SL_Q_SHARED_SECRET, sss, &ls) == 0);
    CU_ASSERT(lc == 32 && ls == 32 && memcmp(ssc, sss, 32) == 0);
    CU_ASSERT_STRING_EQUAL(sl_pipe_remote_addr(dd.p, remote, sizeof(remote)),
                           sv.addr);
    wh_user_attach(&uc, dd.p);
    wh_user_attach(&us, sv.pipes[0]);
    randombytes_buf(data, big);
    bufferevent_write(sl_pipe_get0_bev(dd.p), data, big);
    w.u = &us;
    w.n = big;
    CU_ASSERT(wh_run_until(wh_user_has, &w, 20000));
    CU_ASSERT(evbuffer_get_length(us.in) == big &&
              memcmp(evbuffer_pullup(us.in, -1), data, big) == 0);
    bufferevent_write(sl_pipe_get0_bev(sv.pipes[0]), "pong", 4);
    w.u = &uc;
    w.n = 4;
    CU_ASSERT(wh_run_until(wh_user_has, &w, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(uc.in) == 4);
    sl_pipe_free(dd.p);
    CU_ASSERT(wh_run_until(wh_user_ended, &us, WH_WAIT_MS));
    CU_ASSERT(us.eof || us.error);
    wh_user_free(&uc);
    wh_user_free(&us);
    sl_dialer_free(d);
    srv_stop(&sv);
    free(data);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* ---- options ------------------------------------------------------------- */

static void
test_options(void)
{
    struct sl_opts *o = sl_opts_new();
    struct sl_error e;

    sl_error_clear(&e);
    /* cookie */
    CU_ASSERT(sl_opts_check(o, wh_ops->opts, "sosistab3", &e) != 0);
    sl_opts_free(o);
    o = sl_opts_new();
    sl_error_clear(&e);
    sl_opts_add(o, "cookie", "x", &e);
    sl_opts_add(o, "record_size", "2M", &e);
    CU_ASSERT(sl_opts_check(o, wh_ops->opts, "sosistab3", &e) != 0);
    sl_opts_free(o);
    o = sl_opts_new();
    sl_error_clear(&e);
    sl_opts_add(o, "cookie", "x", &e);
    sl_opts_add(o, "aead", "chacha", &e);
    CU_ASSERT(sl_opts_check(o, wh_ops->opts, "sosistab3", &e) != 0);
    sl_opts_free(o);
    /* Every backend interoperates with the spec's bytes. */
    {
        static const char *const aeads[] = { "auto", "openssl", "libsodium" };

        for (int i = 0; i < 3; i++) {
            void *cfg = layer_cfg(SPEC_COOKIE, "aead", aeads[i], NULL);
            struct wh_raw r;
            struct sl_pipe *p = spec_client_pipe(cfg, &r, WH_RAW_BEV);
            uint8_t got[64], want[64];
            size_t n = unhex(HEX_REC_HELLO, want, sizeof(want));

            bufferevent_write(sl_pipe_get0_bev(p), "hello", 5);
            CU_ASSERT(wh_raw_read(&r, got, n) && memcmp(got, want, n) == 0);
            sl_pipe_free(p);
            wh_raw_free(&r);
            wh_ops->unconfigure(cfg);
        }
    }
}

/* ---- the replay cache ---------------------------------------------------- */

static void
test_replay_cache(void)
{
    struct s3_replay *c = s3_replay_new(3);
    uint8_t k[5][32];

    CU_ASSERT_FATAL(c != NULL);
    for (int i = 0; i < 5; i++)
        randombytes_buf(k[i], 32);
    CU_ASSERT(s3_replay_check(c, k[0], 0) == S3_REPLAY_NEW);
    CU_ASSERT(s3_replay_check(c, k[0], 1) == S3_REPLAY_SEEN);
    CU_ASSERT(s3_replay_check(c, k[1], 10) == S3_REPLAY_NEW);
    /* Lookups ignore age: k[0] is 700 s old but no clean-up ran. */
    CU_ASSERT(s3_replay_check(c, k[0], 700000) == S3_REPLAY_SEEN);
    CU_ASSERT(s3_replay_size(c) == 2);
    /* Third entry: more than twice the 1 kept, so a clean-up runs and
     * drops both older entries (over 600 s old). */
    CU_ASSERT(s3_replay_check(c, k[2], 700000) == S3_REPLAY_NEW);
    CU_ASSERT(s3_replay_size(c) == 1);
    CU_ASSERT(s3_replay_check(c, k[0], 700001) == S3_REPLAY_NEW);
    /* The hard bound (3): the oldest young entry goes. */
    CU_ASSERT(s3_replay_check(c, k[3], 700002) == S3_REPLAY_NEW);
    CU_ASSERT(s3_replay_size(c) == 3);
    CU_ASSERT(s3_replay_check(c, k[4], 700003) == S3_REPLAY_NEW);
    CU_ASSERT(s3_replay_size(c) == 3);
    CU_ASSERT(s3_replay_evictions(c) == 1);
    CU_ASSERT(s3_replay_check(c, k[0], 700004) == S3_REPLAY_SEEN);
    CU_ASSERT(s3_replay_check(c, k[4], 700004) == S3_REPLAY_SEEN);
    s3_replay_unref(c);
    /* Many entries: the table grows, every key is found again. */
    c = s3_replay_new(100000);
    {
        uint8_t key[32] = { 0 };

        for (uint32_t i = 0; i < 5000; i++) {
            memcpy(key, &i, sizeof(i));
            CU_ASSERT_FATAL(s3_replay_check(c, key, i) == S3_REPLAY_NEW);
        }
        for (uint32_t i = 0; i < 5000; i++) {
            memcpy(key, &i, sizeof(i));
            CU_ASSERT_FATAL(s3_replay_check(c, key, 5000) == S3_REPLAY_SEEN);
        }
    }
    CU_ASSERT(s3_replay_size(c) == 5000);
    s3_replay_unref(s3_replay_ref(c));
    s3_replay_unref(c);
}

/* ---- the listener: accept queue and start-up wait ------------------------ */

/* Two pipes over the ends of one bufferevent pair. */
static void
pipe_pair(struct sl_pipe **a, struct sl_pipe **b)
{
    struct bufferevent *pair[2];

    CU_ASSERT_FATAL(bufferevent_pair_new(wh_base, 0, pair) == 0);
    *a = sl_pipe_new("raw", pair[0], NULL, NULL, NULL);
    *b = sl_pipe_new("raw", pair[1], NULL, NULL, NULL);
    CU_ASSERT_FATAL(*a != NULL && *b != NULL);
}

struct hs_set {
    int n;
    struct wh_wres *w;
};

static bool
all_called(void *arg)
{
    struct hs_set *set = arg;

    for (int i = 0; i < set->n; i++)
        if (set->w[i].calls == 0)
            return false;
    return true;
}

static void
wres_release(struct wh_wres *w)
{
    sl_pipe_free(w->p);
    w->p = NULL;
}

/* Handshakes that finish in one turn of the loop, before any is handed
 * on: beyond accept_queue, the new pipe is dropped (§5.2 step 9), and the
 * queue frees up as pipes are taken. */
static void
test_accept_queue(void)
{
    long pipes0 = sl_pipe_count();
    void *cfg = layer_cfg("queue-cookie", "accept_queue", "2", NULL);
    struct sl_pipe *cl[4], *sv[4];
    struct wh_wres wc[4], ws[4];
    struct hs_set set = { 3, NULL };
    void *op;
    int ok = 0, full = 0;

    fixed_reset();
    for (int i = 0; i < 3; i++) {
        pipe_pair(&cl[i], &sv[i]);
        wh_start_wrap(cfg, sv[i], SL_ROLE_SERVER, &ws[i], &op);
    }
    for (int i = 0; i < 3; i++)
        wh_start_wrap(cfg, cl[i], SL_ROLE_CLIENT, &wc[i], &op);
    set.w = ws;
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    for (int i = 0; i < 3; i++) {
        CU_ASSERT(ws[i].calls == 1);
        if (ws[i].p != NULL) {
            ok++;
        } else {
            CU_ASSERT(ws[i].err.code == SL_ELIMIT);
            CU_ASSERT(strstr(ws[i].err.text, "accept queue full") != NULL);
            full += ws[i].err.code == SL_ELIMIT;
        }
    }
    CU_ASSERT(ok == 2 && full == 1);
    /* Taken: there is room again. */
    pipe_pair(&cl[3], &sv[3]);
    wh_start_wrap(cfg, sv[3], SL_ROLE_SERVER, &ws[3], &op);
    wh_start_wrap(cfg, cl[3], SL_ROLE_CLIENT, &wc[3], &op);
    set.n = 1;
    set.w = &ws[3];
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    CU_ASSERT(ws[3].p != NULL);
    set.n = 4;
    set.w = wc;
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    for (int i = 0; i < 4; i++) {
        wres_release(&wc[i]);
        wres_release(&ws[i]);
    }
    wh_run_for(20);
    wh_ops->unconfigure(cfg);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* start_wait: no handshake is read before the wait ends; then it runs. */
static void
test_start_wait(void)
{
    long pipes0 = sl_pipe_count();
    int64_t t0 = sl_now_ms();
    void *cfg = layer_cfg("wait-cookie", "start_wait", "300ms", NULL);
    struct sl_pipe *cl, *sv;
    struct wh_wres wc, ws;
    struct hs_set set = { 1, &ws };
    void *op;

    fixed_reset();
    pipe_pair(&cl, &sv);
    wh_start_wrap(cfg, sv, SL_ROLE_SERVER, &ws, &op);
    wh_start_wrap(cfg, cl, SL_ROLE_CLIENT, &wc, &op);
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    CU_ASSERT(ws.p != NULL);
    CU_ASSERT(ws.at - t0 >= 300);
    set.w = &wc;
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    CU_ASSERT(wc.p != NULL);
    wres_release(&wc);
    wres_release(&ws);
    wh_run_for(20);
    wh_ops->unconfigure(cfg);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* SOSISTAB3_WAIT in the environment: 300 s unless start_wait says
 * otherwise; a held connection can be cancelled. */
static void
test_wait_env(void)
{
    long pipes0 = sl_pipe_count();
    void *cfg, *cfg0;
    struct sl_pipe *cl, *sv;
    struct wh_wres wc, ws;
    struct hs_set set = { 1, &ws };
    void *op_s, *op_c;

    fixed_reset();
    CU_ASSERT_FATAL(setenv("SOSISTAB3_WAIT", "1", 1) == 0);
    cfg = layer_cfg("env-cookie", NULL);
    cfg0 = layer_cfg("env-cookie", "start_wait", "0", NULL);
    unsetenv("SOSISTAB3_WAIT");
    pipe_pair(&cl, &sv);
    wh_start_wrap(cfg, sv, SL_ROLE_SERVER, &ws, &op_s);
    wh_start_wrap(cfg, cl, SL_ROLE_CLIENT, &wc, &op_c);
    wh_run_for(100);
    CU_ASSERT(ws.calls == 0 && wc.calls == 0);
    wh_ops->cancel(op_s);
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    CU_ASSERT(ws.p == NULL && ws.err.code == SL_ECANCELED);
    /* A pair end says nothing when its partner goes: cancel the client. */
    wh_ops->cancel(op_c);
    set.w = &wc;
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    CU_ASSERT(wc.p == NULL);
    /* start_wait=0 overrides the environment. */
    pipe_pair(&cl, &sv);
    wh_start_wrap(cfg0, sv, SL_ROLE_SERVER, &ws, &op_s);
    wh_start_wrap(cfg0, cl, SL_ROLE_CLIENT, &wc, &op_c);
    set.w = &ws;
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    set.w = &wc;
    CU_ASSERT(wh_run_until(all_called, &set, WH_WAIT_MS));
    CU_ASSERT(ws.p != NULL && wc.p != NULL);
    wres_release(&wc);
    wres_release(&ws);
    wh_run_for(20);
    wh_ops->unconfigure(cfg);
    wh_ops->unconfigure(cfg0);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* ---- main ---------------------------------------------------------------- */

static int
load_tcp(void)
{
    const char *path = getenv("SILLAD_PLUGIN_PATH");
    char file[4096];
    struct sl_error e;
    size_t n;

    if (path == NULL) {
        fprintf(stderr, "test-sosistab3: SILLAD_PLUGIN_PATH is not set\n");
        return -1;
    }
    n = strcspn(path, ":");
    snprintf(file, sizeof(file), "%.*s/tcp.so", (int)n, path);
    sl_error_clear(&e);
    if (sl_loader_load_file(file, &e) != 0) {
        fprintf(stderr, "test-sosistab3: %s\n", e.text);
        return -1;
    }
    return 0;
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "spec §11 client, socketpair", test_spec_client_socketpair },
        { "spec §11 client, bufferevent pair", test_spec_client_bevpair },
        { "spec §11 server, socketpair", test_spec_server_socketpair },
        { "spec §11 server, bufferevent pair", test_spec_server_bevpair },
        { "records with the handshake, socketpair",
          test_leftover_socketpair },
        { "records with the handshake, bufferevent pair",
          test_leftover_bevpair },
        { "EOF inside a record", test_eof_mid_record },
        { "tampered record", test_tampered_record },
        { "over-long record", test_overlong_record },
        { "record_size splits writes", test_record_size },
        { "obfs_lengths from the cookie", test_obfs_cookie },
        { "half-close", test_half_close },
        { "client refuses garbage", test_client_refuses_garbage },
        { "client refuses a reply to another hello",
          test_client_refuses_other_reply },
        { "client refuses bad padding", test_client_refuses_bad_padding },
        { "server failures reported at the deadline", test_server_failures },
        { "cancel at every stage", test_cancel },
        { "unconfigure during a handshake", test_unconfigure_midway },
        { "probe: wrong cookie", test_probe_wrong_cookie },
        { "probe: tampered handshake", test_probe_tampered },
        { "probe: replayed handshake", test_probe_replay },
        { "probe: clock skew", test_probe_clock_skew },
        { "probe: server clock", test_probe_server_clock },
        { "probe: truncated handshake", test_probe_truncated },
        { "probe: garbage", test_probe_garbage },
        { "probe: real deadline", test_probe_real_deadline },
        { "end to end over tcp", test_end_to_end },
        { "options", test_options },
        { "replay cache", test_replay_cache },
        { "accept queue bound", test_accept_queue },
        { "start-up wait (start_wait)", test_start_wait },
        { "start-up wait from SOSISTAB3_WAIT", test_wait_env },
        { NULL, NULL },
    };
    const struct sl_layer *l;
    struct sl_error e;
    int rc;

    alarm(HARD_LIMIT_S);
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 2;
    if (getenv("S3_TEST_VERBOSE") == NULL)
        sl_log_set_level(SL_LOG_ERR);
    sl_error_clear(&e);
    if (sl_loader_register(sl_plugin_sosistab3_describe(), "test-sosistab3",
                           &e) != 0 || load_tcp() != 0) {
        fprintf(stderr, "test-sosistab3: %s\n", e.text);
        return 2;
    }
    l = sl_layer_find("sosistab3");
    wh_ops = sl_layer_get0_ops(l);
    wh_plugin_ctx = sl_layer_get0_plugin_ctx(l);
    wh_base = event_base_new();
    fixed_reset();
    s3_test_set_hooks(&hooks);
    rc = cu_run("sosistab3", tests);
    s3_test_set_hooks(NULL);
    sl_resolver_release(wh_base);
    event_base_free(wh_base);
    sl_loader_unload_all();
    return rc;
}
