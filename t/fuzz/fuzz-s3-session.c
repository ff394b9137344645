/*
 * fuzz-s3-session.c: libFuzzer target for the whole sosistab3 layer on the
 * server side: the handshake state machine, then the record path.
 *
 * The input is what a hostile client sends down the lower pipe, fed to a
 * live server wrap (the real layer code, linked in with its test hooks
 * for a fixed clock and a fixed server key) over a bufferevent pair, in
 * pieces of varying size with the event loop run between them.  Byte 0
 * picks how the rest is used:
 *
 *   0  raw bytes, from the first byte of the handshake on;
 *   1  a valid client hello built here (timestamp skew from byte 1,
 *      padding of byte 2 bytes taken from the input), then raw bytes;
 *   2  the same hello, then a script of records sealed with the session's
 *      real key: each step is an op byte and a length byte, then that
 *      many bytes of input: a data record, a padding record, raw bytes,
 *      or a data record with one bit flipped.
 *
 * Besides "no crash, no UB, no leak, no hang" it checks: the wrap's done
 * runs exactly once and never inside wrap() or cancel(); a server that
 * fails writes nothing; the plaintext handed up is never more than what
 * the records carried; and the server's reply is one handshake message
 * with at most 1024 bytes of padding.  A wrap still running when the
 * input ends is cancelled (its deadline is 10-20 s of real time).
 *
 * Build (run-fuzzers.sh sources fuzz-s3-session.sh.inc):
 *
 *   clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -D_GNU_SOURCE -DS3_TEST_HOOKS -Iplugin-api -Icore -Icommon \
 *       -Iplugins/sosistab3 -IBUILD t/fuzz/fuzz-s3-session.c \
 *       plugins/sosistab3/sosistab3.c plugins/sosistab3/s3-replay.c \
 *       plugins/sosistab3/s3-crypto.c common/blake3.c core/[a-z]*.c \
 *       $(pkg-config --cflags --libs libevent jansson libsodium libcrypto) \
 *       -ldl -lm -o fuzz-s3-session
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "s3-crypto.h"
#include "s3-test.h"
#include "sillad.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

#define COOKIE "fuzz-cookie"
#define T_NOW 1700000000ULL
#define MAX_SCRIPT_STEPS 64

const struct sl_plugin *sl_plugin_sosistab3_describe(void);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static const struct sl_layer *layer;
static const struct sl_layer_ops *ops;
static uint8_t key_c[S3_KEY_LEN];          /* hs_key_c */
static uint8_t client_sk[S3_KEY_LEN], client_pk[S3_KEY_LEN];
static uint8_t server_sk[S3_KEY_LEN], server_pk[S3_KEY_LEN];
static uint8_t key_up[S3_KEY_LEN];         /* the client sends with it */

static void
hook_secret(void *arg, enum sl_role role, uint8_t sk[32])
{
    (void)arg;
    (void)role;
    memcpy(sk, server_sk, 32);
}

static uint64_t
hook_time(void *arg, enum sl_role role)
{
    (void)arg;
    (void)role;
    return T_NOW;
}

static struct s3_test_hooks hooks = {
    .secret = hook_secret,
    .unix_time = hook_time,
};

struct run {
    int calls;
    int in_call;
    struct sl_pipe *p;
    uint64_t plain_in;       /* plaintext the records carried */
    uint64_t plain_out;      /* handed up */
};

static void
user_read(struct bufferevent *bev, void *arg)
{
    struct run *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    r->plain_out += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void
user_event(struct bufferevent *bev, short what, void *arg)
{
    user_read(bev, arg);
    (void)what;
}

static void
wrap_done(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct run *r = arg;

    CHECK(!r->in_call);
    r->calls++;
    CHECK(r->calls == 1);
    CHECK((p != NULL) != (err != NULL && err->code != 0));
    if (p == NULL)
        return;
    r->p = p;
    sl_pipe_setcb(p, user_read, NULL, user_event, r);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static void
setup(void)
{
    struct s3_cookie ck;
    struct sl_error e;
    uint8_t ss[S3_KEY_LEN], key_dn[S3_KEY_LEN];

    sl_log_set_level(0);
    CHECK(sodium_init() >= 0);
    base = event_base_new();
    CHECK(base != NULL);
    sl_error_clear(&e);
    CHECK(sl_loader_register(sl_plugin_sosistab3_describe(), "fuzz", &e) ==
          0);
    layer = sl_layer_find("sosistab3");
    CHECK(layer != NULL);
    ops = sl_layer_get0_ops(layer);
    CHECK(s3_cookie_parse(COOKIE, strlen(COOKIE), &ck) == S3_OK);
    s3_hs_key(&ck, S3_CLIENT, key_c);
    s3_cookie_wipe(&ck);
    for (int i = 0; i < 32; i++) {
        client_sk[i] = (uint8_t)(0x11 + i);
        server_sk[i] = (uint8_t)(0x71 + 3 * i);
    }
    CHECK(crypto_scalarmult_base(client_pk, client_sk) == 0);
    CHECK(crypto_scalarmult_base(server_pk, server_sk) == 0);
    CHECK(s3_shared_secret(client_sk, server_pk, ss) == S3_OK);
    s3_session_keys(ss, key_up, key_dn);
    s3_test_set_hooks(&hooks);
}

/* A fresh cfg per input: its replay cache would otherwise remember the
 * hello of an earlier input and make runs depend on their order. */
static void *
configure(void)
{
    struct sl_opts *o = sl_opts_new();
    struct sl_error e;
    void *cfg = NULL;

    sl_error_clear(&e);
    CHECK(o != NULL);
    sl_opts_add(o, "cookie", COOKIE, &e);
    sl_opts_add(o, "read_buffer", "4k", &e);
    sl_opts_add(o, "replay_cache", "16", &e);
    sl_opts_add(o, "start_wait", "0", &e);
    CHECK(sl_opts_check(o, ops->opts, "fuzz", &e) == 0);
    CHECK(ops->configure(sl_host_get(), sl_layer_get0_plugin_ctx(layer), o,
                         &cfg, &e) == 0);
    sl_opts_free(o);
    return cfg;
}

/* Appends n bytes to what the client sends. */
static void
put(struct evbuffer *wire, const void *p, size_t n)
{
    if (n > 0)
        CHECK(evbuffer_add(wire, p, n) == 0);
}

/* The hello of modes 1 and 2; returns the input bytes used. */
static size_t
hello(struct evbuffer *wire, const uint8_t *data, size_t size)
{
    static const uint8_t nonce[S3_NONCE_LEN] = { 1, 2, 3 };
    uint8_t msg[S3_HS_LEN];
    size_t used = 0, pad = 0;
    int64_t skew = 0;

    if (size > 0) {
        /* Mostly in the window, sometimes just outside it. */
        skew = (int64_t)(int8_t)data[0] * 3;
        used++;
    }
    if (size > used) {
        pad = data[used++];
        if (pad > size - used)
            pad = size - used;
    }
    CHECK(s3_hs_seal(key_c, client_pk, (uint64_t)((int64_t)T_NOW + skew),
                     data + used, pad, s3_empty_hash, nonce, msg) == S3_OK);
    put(wire, msg, sizeof(msg));
    put(wire, data + used, pad);
    return used + pad;
}

/* Mode 2's records; returns the plaintext they carry. */
static uint64_t
records(struct evbuffer *wire, const uint8_t *data, size_t size)
{
    struct s3_dir *up = NULL;
    uint8_t out[255 + S3_REC_OVERHEAD];
    uint64_t plain = 0;
    size_t off = 0;

    CHECK(s3_dir_new(key_up, S3_SEAL, S3_AEAD_DEFAULT, &up) == S3_OK);
    for (int step = 0; step < MAX_SCRIPT_STEPS && off + 2 <= size; step++) {
        uint8_t op = data[off] % 4;
        size_t n = data[off + 1];

        off += 2;
        if (n > size - off)
            n = size - off;
        switch (op) {
        case 0:
        case 3:
            CHECK(s3_rec_seal(up, data + off, n, out, sizeof(out)) == S3_OK);
            if (op == 3)
                out[(data[off - 2] >> 2) % (n + S3_REC_OVERHEAD)] ^= 1;
            else
                plain += n;
            put(wire, out, n + S3_REC_OVERHEAD);
            break;
        case 1:
            CHECK(s3_rec_seal_padding(up, n, out, sizeof(out)) == S3_OK);
            put(wire, out, n + S3_REC_OVERHEAD);
            break;
        default:
            put(wire, data + off, n);
            break;
        }
        off += n;
    }
    s3_dir_free(up);
    return plain;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunk[] = { 1, 140, 7, 4096, 13, 64, 65536 };
    struct bufferevent *pair[2];
    struct sl_pipe *lower;
    struct evbuffer *wire;
    struct sl_error e;
    struct run r;
    void *op = NULL, *cfg;
    size_t k = 0, used, sent_back;
    uint8_t mode;

    if (base == NULL)
        setup();
    if (size == 0)
        return 0;
    mode = data[0] % 3;
    data++;
    size--;
    memset(&r, 0, sizeof(r));
    sl_error_clear(&e);
    wire = evbuffer_new();
    CHECK(wire != NULL);
    if (mode == 0) {
        put(wire, data, size);
    } else {
        used = hello(wire, data, size);
        if (mode == 1)
            put(wire, data + used, size - used);
        else
            r.plain_in = records(wire, data + used, size - used);
    }
    cfg = configure();
    CHECK(bufferevent_pair_new(base, 0, pair) == 0);
    lower = sl_pipe_new("fuzz", pair[0], NULL, NULL, NULL);
    CHECK(lower != NULL);
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    r.in_call = 1;
    CHECK(ops->wrap(cfg, base, lower, SL_ROLE_SERVER, wrap_done, &r, &op,
                    &e) == 0);
    r.in_call = 0;
    while (evbuffer_get_length(wire) > 0) {
        size_t n = chunk[k++ % (sizeof(chunk) / sizeof(chunk[0]))];

        if (n > evbuffer_get_length(wire))
            n = evbuffer_get_length(wire);
        evbuffer_remove_buffer(wire, bufferevent_get_output(pair[1]), n);
        for (int i = 0; i < 4; i++)
            event_base_loop(base, EVLOOP_NONBLOCK);
    }
    for (int i = 0; i < 16; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    /* What the server wrote: its hello (140 bytes, at most 1024 of
     * padding), only once it succeeded, and no records (we send none). */
    sent_back = evbuffer_get_length(bufferevent_get_input(pair[1]));
    if (r.p == NULL)
        CHECK(sent_back == 0);
    else
        CHECK(sent_back >= S3_HS_LEN &&
              sent_back <= S3_HS_LEN + S3_HS_PAD_SEND_MAX);
    CHECK(r.plain_out <= r.plain_in);
    if (r.calls == 0) {
        r.in_call = 1;
        ops->cancel(op);
        r.in_call = 0;
        for (int i = 0; i < 16 && r.calls == 0; i++)
            event_base_loop(base, EVLOOP_NONBLOCK);
        CHECK(r.calls == 1);
    }
    if (r.p != NULL)
        sl_pipe_free(r.p);
    bufferevent_free(pair[1]);
    evbuffer_free(wire);
    for (int i = 0; i < 4; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    ops->unconfigure(cfg);
    return 0;
}
