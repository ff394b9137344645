/*
 * test-e2e.c: the e2e layer against the spec (sillad-and-stacks.md §6,
 * §10.2, §10.3).
 *
 * The layer is linked in, compiled with its test-only entry point
 * (e2e-test.h) so that tests can fix its challenge, ephemeral keys and
 * X25519 output; the tcp and sosistab3 modules are loaded from
 * SILLAD_PLUGIN_PATH for the end-to-end cases.
 *
 *   - §10.2 byte strings: ClientHello (34 and 37 bytes), ExitHello
 *     (97 bytes, Reject), the 67-byte signed message, the MAC example;
 *     strict decoding;
 *   - §10.3 keys and the first crypt message, through the codec and
 *     through the layer (client and exit, over a socketpair and a
 *     bufferevent pair), answered by a raw peer;
 *   - shared-secret mode over a lower pipe that exposes a secret;
 *   - the client's refusals: wrong or tampered signature, Reject, wrong
 *     MAC, other mode, oversize length, malformed hello, timeout;
 *   - the exit's drops: oversize length, malformed hello, challenge
 *     without a secret, no signing key;
 *   - the crypt pipe: tampered and oversize messages end the receive
 *     direction, half-close sends no empty message;
 *   - the key file: creation, mode, size; pubkey parsing;
 *   - full handshakes over tcp | e2e and tcp | sosistab3 | e2e, with and
 *     without pubkey, and a wrong pubkey refused.
 *
 * Every wait is bounded, and an alarm ends the program if the loop stops.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "../cu.h"
#include "e2e-key.h"
#include "e2e-test.h"
#include "e2e-wire.h"
#include "sillad.h"
#include "stdcode.h"
/* The handshakes here run longer than the harness waits by default. */
#define WH_WAIT_MS 5000
#include "wrap-harness.h"

const struct sl_plugin *sl_plugin_e2e_describe(void);

#define HARD_LIMIT_S 240

/* §10.2 / §10.3 values. */
#define HEX_SS "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
#define HEX_MAC "3dde57f2bed8c89331da0de8e263249d7bd4429cd08df26214a3465f23eeb28a"
#define HEX_C2E "3aeab336335c2d79d24ab5dcb74456a1f7fdb08d2092a2a86f90f8ce12244aa4"
#define HEX_E2C "c2602c509e0893833673774e11e936489bd64c570f1dd5d45c6062114bd083db"
#define HEX_HELLO_MSG "00000015771d54c23fd375bade476fe9eb6b4a2d788a10576b"
/* RFC 8032 test 1: the exit's signing key in these tests. */
#define HEX_SEED "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
#define HEX_PK "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
/* RFC 8032 test 2's public key: valid, but not the exit's. */
#define HEX_OTHER_PK "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
#define HEX_OTHER_PK_TAIL "d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"

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

static uint8_t sign_sk[64], sign_pk[32];   /* the test exit's key pair */
static char tmpdir[256];

/* ---- hooks ---------------------------------------------------------------- */

static struct {
    bool c_set, sk_set[3], dh_set;
    uint8_t c[32], sk[3][32], dh[32];
} fx;

static void
hook_challenge(void *arg, uint8_t c[32])
{
    (void)arg;
    if (fx.c_set)
        memcpy(c, fx.c, 32);
    else
        randombytes_buf(c, 32);
}

static void
hook_secret(void *arg, enum sl_role role, uint8_t sk[32])
{
    (void)arg;
    if (fx.sk_set[role])
        memcpy(sk, fx.sk[role], 32);
    else
        randombytes_buf(sk, 32);
}

static void
hook_dh(void *arg, enum sl_role role, uint8_t dh[32])
{
    (void)arg;
    (void)role;
    if (fx.dh_set)
        memcpy(dh, fx.dh, 32);
}

static const struct e2e_test_hooks hooks = {
    .challenge = hook_challenge,
    .secret = hook_secret,
    .dh = hook_dh,
};

/* ---- the layer ----------------------------------------------------------- */

/* A configured layer from "key", "value" pairs (NULL-terminated); NULL
 * with *e set when configuration fails. */
static void *
layer_cfg_e(struct sl_error *e, ...)
{
    struct sl_opts *o = sl_opts_new();
    const char *k;
    void *cfg = NULL;
    va_list ap;

    sl_error_clear(e);
    CU_ASSERT_FATAL(o != NULL);
    va_start(ap, e);
    while ((k = va_arg(ap, const char *)) != NULL)
        CU_ASSERT_FATAL(sl_opts_add(o, k, va_arg(ap, const char *), e) == 0);
    va_end(ap);
    if (sl_opts_check(o, wh_ops->opts, "e2e", e) == 0 &&
        wh_ops->configure(sl_host_get(), wh_plugin_ctx, o, &cfg, e) != 0)
        cfg = NULL;
    sl_opts_free(o);
    return cfg;
}

static char keyfile[300];

/* Writes the RFC 8032 seed to keyfile (mode 0600). */
static void
write_test_key(void)
{
    uint8_t seed[32];
    int fd;

    unhex(HEX_SEED, seed, 32);
    snprintf(keyfile, sizeof(keyfile), "%s/exit.key", tmpdir);
    unlink(keyfile);
    fd = open(keyfile, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, seed, 32) == 32);
    close(fd);
}

/* A lower pipe over a raw peer that shares ss_hex (32 bytes), if given. */
static struct sl_pipe *
raw_new(struct wh_raw *r, enum wh_raw_kind kind, const char *ss_hex)
{
    struct sl_pipe *p = wh_raw_new(r, kind);

    if (ss_hex != NULL)
        r->ss_len = unhex(ss_hex, r->ss, 32);
    return p;
}

/* Reads one length-prefixed message into out (cap bytes); returns its
 * length, or (size_t)-1. */
static size_t
raw_read_msg(struct wh_raw *r, uint8_t *out, size_t cap)
{
    uint8_t hdr[4];
    size_t len;

    if (!wh_raw_read(r, hdr, 4))
        return (size_t)-1;
    len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 |
          hdr[3];
    if (len > cap || !wh_raw_read(r, out, len))
        return (size_t)-1;
    return len;
}

static void
raw_write_msg(struct wh_raw *r, const void *p, size_t n)
{
    uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16),
                       (uint8_t)(n >> 8), (uint8_t)n };

    wh_raw_write(r, hdr, 4);
    wh_raw_write(r, p, n);
}

/* An ExitHello for the ClientHello ch, signed with the test key; flip
 * (if >= 0) toggles that byte of the payload afterwards. */
static void
make_exit_hello(const struct e2e_client_hello *ch,
                const struct e2e_exit_inner *in, struct sc_enc *out,
                int flip)
{
    struct sc_enc m;
    uint8_t sig[64];

    sc_enc_init(&m, 300000);
    e2e_signed_message(&m, ch, in);
    CU_ASSERT_FATAL(!m.failed);
    crypto_sign_detached(sig, NULL, m.buf, m.len, sign_sk);
    sc_enc_free(&m);
    sc_enc_init(out, 200000);
    e2e_exit_inner_put(out, in);
    sc_put_raw(out, sig, 64);
    CU_ASSERT_FATAL(!out->failed);
    if (flip >= 0 && (size_t)flip < out->len)
        out->buf[flip] ^= 0x01;
}

/* ---- §10.2 and §10.3 through the codec ----------------------------------- */

static void
test_hello_bytes(void)
{
    struct e2e_client_hello ch, back;
    struct e2e_exit_inner in, inb;
    struct sc_enc e;
    uint8_t want[200], sig[64], sigb[64];
    const char *why = NULL;
    size_t n;

    /* X25519, no credentials: 34 bytes. */
    memset(&ch, 0, sizeof(ch));
    ch.kind = E2E_CH_X25519;
    memset(ch.key, 0xab, 32);
    sc_enc_init(&e, 1000);
    e2e_client_hello_put(&e, &ch);
    CU_ASSERT_EQUAL(e.len, 34);
    want[0] = 0x00;
    want[1] = 0x01;
    memset(want + 2, 0xab, 32);
    CU_ASSERT_BYTES(e.buf, want, 34, "X25519 ClientHello");
    CU_ASSERT_EQUAL(e2e_client_hello_get(e.buf, e.len, &back, &why), 0);
    CU_ASSERT(back.kind == E2E_CH_X25519 && back.cred_len == 0 &&
              memcmp(back.key, ch.key, 32) == 0);
    sc_enc_free(&e);

    /* Challenge, credentials 01 02 03: 37 bytes. */
    ch.kind = E2E_CH_CHALLENGE;
    ch.cred = (const unsigned char *)"\x01\x02\x03";
    ch.cred_len = 3;
    memset(ch.key, 0x11, 32);
    sc_enc_init(&e, 1000);
    e2e_client_hello_put(&e, &ch);
    CU_ASSERT_EQUAL(e.len, 37);
    memcpy(want, "\x03\x01\x02\x03\x00", 5);
    memset(want + 5, 0x11, 32);
    CU_ASSERT_BYTES(e.buf, want, 37, "challenge ClientHello");
    CU_ASSERT_EQUAL(e2e_client_hello_get(e.buf, e.len, &back, &why), 0);
    CU_ASSERT(back.kind == E2E_CH_CHALLENGE && back.cred_len == 3 &&
              memcmp(back.cred, "\x01\x02\x03", 3) == 0);
    sc_enc_free(&e);

    /* ExitHello X25519(cd...): 97 bytes; signed message 67 bytes. */
    ch.kind = E2E_CH_X25519;
    ch.cred = NULL;
    ch.cred_len = 0;
    memset(ch.key, 0xab, 32);
    memset(&in, 0, sizeof(in));
    in.kind = E2E_EH_X25519;
    memset(in.key, 0xcd, 32);
    sc_enc_init(&e, 1000);
    e2e_signed_message(&e, &ch, &in);
    CU_ASSERT_EQUAL(e.len, 67);
    want[0] = 0x00;
    want[1] = 0x01;
    memset(want + 2, 0xab, 32);
    want[34] = 0x02;
    memset(want + 35, 0xcd, 32);
    CU_ASSERT_BYTES(e.buf, want, 67, "signed message");
    sc_enc_free(&e);
    memset(sig, 0x5a, 64);
    sc_enc_init(&e, 1000);
    e2e_exit_inner_put(&e, &in);
    sc_put_raw(&e, sig, 64);
    CU_ASSERT_EQUAL(e.len, 97);
    CU_ASSERT_EQUAL(e.buf[0], 0x02);
    CU_ASSERT_EQUAL(e2e_exit_hello_get(e.buf, e.len, &inb, sigb, &why), 0);
    CU_ASSERT(inb.kind == E2E_EH_X25519 && memcmp(inb.key, in.key, 32) == 0 &&
              memcmp(sigb, sig, 64) == 0);
    /* One byte more or less is refused. */
    CU_ASSERT_EQUAL(e2e_exit_hello_get(e.buf, e.len - 1, &inb, sigb, &why),
                    -1);
    CU_ASSERT_TEXT(why, "stdcode: truncated input");
    sc_put_u8(&e, 0);
    CU_ASSERT_EQUAL(e2e_exit_hello_get(e.buf, e.len, &inb, sigb, &why), -1);
    CU_ASSERT_TEXT(why, "stdcode: trailing bytes");
    sc_enc_free(&e);

    /* SharedSecretResponse: 01 + 32 + 64. */
    in.kind = E2E_EH_RESPONSE;
    sc_enc_init(&e, 1000);
    e2e_exit_inner_put(&e, &in);
    sc_put_raw(&e, sig, 64);
    CU_ASSERT(e.len == 97 && e.buf[0] == 0x01);
    sc_enc_free(&e);

    /* Reject("no") = 00 02 6e 6f + signature. */
    in.kind = E2E_EH_REJECT;
    in.reason = (const unsigned char *)"no";
    in.reason_len = 2;
    sc_enc_init(&e, 1000);
    e2e_exit_inner_put(&e, &in);
    sc_put_raw(&e, sig, 64);
    CU_ASSERT(e.len == 68 && memcmp(e.buf, "\x00\x02no", 4) == 0);
    CU_ASSERT_EQUAL(e2e_exit_hello_get(e.buf, e.len, &inb, sigb, &why), 0);
    CU_ASSERT(inb.kind == E2E_EH_REJECT && inb.reason_len == 2 &&
              memcmp(inb.reason, "no", 2) == 0);
    sc_enc_free(&e);

    /* Unknown variants and over-long varints are refused. */
    n = unhex("0002" "abababababababababababababababababababababababababababab"
              "abababab", want, sizeof(want));
    CU_ASSERT_EQUAL(e2e_client_hello_get(want, n, &back, &why), -1);
    CU_ASSERT_TEXT(why, "ClientHello: unknown ClientCryptHello variant");
    n = unhex("fb0000" "01" "abababababababababababababababababababababababab"
              "abababababababab", want, sizeof(want));
    CU_ASSERT_EQUAL(e2e_client_hello_get(want, n, &back, &why), -1);
    CU_ASSERT_TEXT(why, "stdcode: over-long varint");
    want[0] = 0x03;
    CU_ASSERT_EQUAL(e2e_exit_hello_get(want, 97, &inb, sigb, &why), -1);
    CU_ASSERT_TEXT(why, "ExitHello: unknown ExitHelloInner variant");
}

static void
test_mac_and_keys(void)
{
    uint8_t c[32], ss[32], mac[32], want[64], c2e[32], e2c[32];
    uint8_t msg[64], pt[8];
    size_t n;

    memset(c, 0x11, 32);
    unhex(HEX_SS, ss, 32);
    e2e_challenge_mac(mac, c, ss, 32);
    unhex(HEX_MAC, want, 32);
    CU_ASSERT_BYTES(mac, want, 32, "KH(c, ss)");
    e2e_crypt_keys(ss, c2e, e2c);
    unhex(HEX_C2E, want, 32);
    CU_ASSERT_BYTES(c2e, want, 32, "KDF(c2e)");
    unhex(HEX_E2C, want, 32);
    CU_ASSERT_BYTES(e2c, want, 32, "KDF(e2c)");
    CU_ASSERT_EQUAL(e2e_crypt_seal(c2e, 0, "hello", 5, msg), 0);
    n = unhex(HEX_HELLO_MSG, want, sizeof(want));
    CU_ASSERT_EQUAL(n, 25);
    CU_ASSERT_BYTES(msg, want, 25, "first crypt message");
    CU_ASSERT_EQUAL(e2e_crypt_open(c2e, 0, msg + 4, 21, pt), 0);
    CU_ASSERT(memcmp(pt, "hello", 5) == 0);
    /* Wrong counter, wrong key, tampering, bad lengths. */
    CU_ASSERT_EQUAL(e2e_crypt_open(c2e, 1, msg + 4, 21, pt), -1);
    CU_ASSERT_EQUAL(e2e_crypt_open(e2c, 0, msg + 4, 21, pt), -1);
    msg[10] ^= 1;
    CU_ASSERT_EQUAL(e2e_crypt_open(c2e, 0, msg + 4, 21, pt), -1);
    CU_ASSERT_EQUAL(e2e_crypt_open(c2e, 0, msg + 4, 15, pt), -1);
    CU_ASSERT_EQUAL(e2e_crypt_open(c2e, 0, msg + 4, E2E_MSG_MAX + 1, pt),
                    -1);
    {
        uint8_t nonce[12];

        e2e_nonce(0x0102030405060708ull, nonce);
        CU_ASSERT(memcmp(nonce, "\x08\x07\x06\x05\x04\x03\x02\x01\0\0\0\0",
                         12) == 0);
    }
}

/* ---- §10.3 through the layer --------------------------------------------- */

/* The client, X25519 mode, with pubkey: its ClientHello, then "hello" as
 * the spec's first crypt message; the exit's "world" comes through. */
static void
spec_client(enum wh_raw_kind kind)
{
    long pipes0 = sl_pipe_count();
    struct sl_error e;
    void *cfg = layer_cfg_e(&e, "pubkey", HEX_PK, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = raw_new(&r, kind, NULL);
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    struct sc_enc eh;
    uint8_t got[200], want[200], e2c[32], c2e[32], dh[32], msg[64];
    uint8_t ss[64];
    size_t n, sslen = sizeof(ss);
    struct wh_wres w;
    struct wh_user u;
    struct wh_want uw;
    const char *why;
    char proto[16];

    CU_ASSERT_FATAL(cfg != NULL);
    memset(&fx, 0, sizeof(fx));
    fx.sk_set[SL_ROLE_CLIENT] = true;
    memset(fx.sk[SL_ROLE_CLIENT], 0x42, 32);
    fx.dh_set = true;
    unhex(HEX_SS, fx.dh, 32);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, NULL);
    n = raw_read_msg(&r, got, sizeof(got));
    CU_ASSERT_FATAL(n == 34);
    CU_ASSERT_FATAL(e2e_client_hello_get(got, n, &ch, &why) == 0);
    CU_ASSERT(ch.kind == E2E_CH_X25519 && ch.cred_len == 0);
    crypto_scalarmult_base(want, fx.sk[SL_ROLE_CLIENT]);
    CU_ASSERT_BYTES(ch.key, want, 32, "client public key");
    /* Nothing more until the exit answers. */
    wh_run_for(20);
    wh_raw_pump(&r);
    CU_ASSERT(evbuffer_get_length(r.acc) == 0 && w.calls == 0);
    memset(&in, 0, sizeof(in));
    in.kind = E2E_EH_X25519;
    memset(dh, 0x07, 32);
    crypto_scalarmult_base(in.key, dh);
    make_exit_hello(&ch, &in, &eh, -1);
    /* The first crypt message from the exit rides behind the hello. */
    e2e_crypt_keys(fx.dh, c2e, e2c);
    e2e_crypt_seal(e2c, 0, "world", 5, msg);
    {
        uint8_t both[4 + 97 + 25];

        both[0] = 0;
        both[1] = 0;
        both[2] = 0;
        both[3] = 0x61;
        CU_ASSERT_FATAL(eh.len == 97);
        memcpy(both + 4, eh.buf, 97);
        memcpy(both + 101, msg, 25);
        wh_raw_write(&r, both, sizeof(both));
    }
    sc_enc_free(&eh);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_FATAL(w.p != NULL);
    CU_ASSERT(w.calls == 1 && !w.inside);
    CU_ASSERT_STRING_EQUAL(sl_pipe_protocol(w.p, proto, sizeof(proto)),
                           "e2e");
    CU_ASSERT_EQUAL(sl_pipe_query(w.p, SL_Q_SHARED_SECRET, ss, &sslen),
                    SL_ENOENT);
    wh_user_attach(&u, w.p);
    bufferevent_write(sl_pipe_get0_bev(w.p), "hello", 5);
    n = unhex(HEX_HELLO_MSG, want, sizeof(want));
    CU_ASSERT_FATAL(wh_raw_read(&r, got, n));
    CU_ASSERT_BYTES(got, want, n, "first crypt message");
    uw.u = &u;
    uw.n = 5;
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
              memcmp(evbuffer_pullup(u.in, -1), "world", 5) == 0);
    /* Half-close: the raw end reads EOF and no empty message. */
    sl_pipe_shutdown_write(w.p);
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    CU_ASSERT_EQUAL(evbuffer_get_length(r.acc), 0);
    CU_ASSERT(!u.eof && !u.error);
    /* The exit's second message still arrives after our shutdown. */
    e2e_crypt_seal(e2c, 1, "again", 5, msg);
    wh_raw_write(&r, msg, 25);
    uw.n = 10;
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 10);
    wh_raw_shutdown(&r);
    CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
    CU_ASSERT(u.eof && !u.error);
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

/* The exit, X25519 mode: its signed ExitHello (97 bytes behind 00 00 00
 * 61), then the spec's "hello" message opens to "hello". */
static void
spec_server(enum wh_raw_kind kind)
{
    long pipes0 = sl_pipe_count();
    struct sl_error e;
    void *cfg;
    struct wh_raw r;
    struct sl_pipe *lower;
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    struct sc_enc m;
    uint8_t got[200], want[200], sig[64], csk[32], c2e[32], e2c[32];
    uint8_t msg[64];
    size_t n;
    struct wh_wres w;
    struct wh_user u;
    struct wh_want uw;
    const char *why;

    write_test_key();
    cfg = layer_cfg_e(&e, "signing_key", keyfile, NULL);
    CU_ASSERT_FATAL(cfg != NULL);
    lower = raw_new(&r, kind, NULL);
    memset(&fx, 0, sizeof(fx));
    fx.sk_set[SL_ROLE_SERVER] = true;
    memset(fx.sk[SL_ROLE_SERVER], 0x24, 32);
    fx.dh_set = true;
    unhex(HEX_SS, fx.dh, 32);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, NULL);
    memset(&ch, 0, sizeof(ch));
    ch.kind = E2E_CH_X25519;
    memset(csk, 0x42, 32);
    crypto_scalarmult_base(ch.key, csk);
    /* Credentials are ignored, but signed over. */
    ch.cred = (const unsigned char *)"\x01\x02\x03";
    ch.cred_len = 3;
    sc_enc_init(&m, 1000);
    e2e_client_hello_put(&m, &ch);
    raw_write_msg(&r, m.buf, m.len);
    sc_enc_free(&m);
    CU_ASSERT_FATAL(wh_raw_read(&r, got, 4));
    CU_ASSERT(memcmp(got, "\x00\x00\x00\x61", 4) == 0);
    CU_ASSERT_FATAL(wh_raw_read(&r, got, 97));
    CU_ASSERT_FATAL(e2e_exit_hello_get(got, 97, &in, sig, &why) == 0);
    CU_ASSERT(in.kind == E2E_EH_X25519);
    crypto_scalarmult_base(want, fx.sk[SL_ROLE_SERVER]);
    CU_ASSERT_BYTES(in.key, want, 32, "exit public key");
    sc_enc_init(&m, 1000);
    e2e_signed_message(&m, &ch, &in);
    CU_ASSERT_EQUAL(m.len, 37 + 33);
    CU_ASSERT(crypto_sign_verify_detached(sig, m.buf, m.len, sign_pk) == 0);
    sc_enc_free(&m);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_FATAL(w.p != NULL);
    wh_user_attach(&u, w.p);
    n = unhex(HEX_HELLO_MSG, want, sizeof(want));
    wh_raw_write(&r, want, n);
    uw.u = &u;
    uw.n = 5;
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
              memcmp(evbuffer_pullup(u.in, -1), "hello", 5) == 0);
    /* And the exit writes with KDF("e2c"). */
    bufferevent_write(sl_pipe_get0_bev(w.p), "world", 5);
    CU_ASSERT_FATAL(wh_raw_read(&r, got, 25));
    e2e_crypt_keys(fx.dh, c2e, e2c);
    e2e_crypt_seal(e2c, 0, "world", 5, msg);
    CU_ASSERT_BYTES(got, msg, 25, "exit's first message");
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

/* ---- shared-secret mode --------------------------------------------------- */

/* Client over a lower pipe with the spec's secret: challenge 11..11, the
 * exit answers with mac_hex (the spec's MAC or another), signed; bytes
 * then pass unchanged.  expect: NULL for success, else the error text. */
static void
challenge_client(const char *mac_hex, const char *pubkey, int flip,
                 const char *expect)
{
    long pipes0 = sl_pipe_count();
    struct sl_error e;
    void *cfg = pubkey != NULL ? layer_cfg_e(&e, "pubkey", pubkey, NULL)
                               : layer_cfg_e(&e, NULL);
    struct wh_raw r;
    struct sl_pipe *lower = raw_new(&r, WH_RAW_FD, HEX_SS);
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    struct sc_enc eh;
    uint8_t got[200], want[64], ss[64];
    size_t n, sslen = sizeof(ss);
    struct wh_wres w;
    const char *why;

    CU_ASSERT_FATAL(cfg != NULL);
    memset(&fx, 0, sizeof(fx));
    fx.c_set = true;
    memset(fx.c, 0x11, 32);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, NULL);
    n = raw_read_msg(&r, got, sizeof(got));
    CU_ASSERT_FATAL(n == 34);
    want[0] = 0;
    want[1] = 0;
    memset(want + 2, 0x11, 32);
    CU_ASSERT_BYTES(got, want, 34, "challenge ClientHello");
    CU_ASSERT_FATAL(e2e_client_hello_get(got, n, &ch, &why) == 0);
    memset(&in, 0, sizeof(in));
    in.kind = E2E_EH_RESPONSE;
    unhex(mac_hex, in.key, 32);
    make_exit_hello(&ch, &in, &eh, flip);
    raw_write_msg(&r, eh.buf, eh.len);
    wh_raw_write(&r, "plain", 5);
    sc_enc_free(&eh);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    if (expect != NULL) {
        CU_ASSERT(w.p == NULL);
        CU_ASSERT_TEXT(w.err.text, expect);
        CU_ASSERT(!w.inside);
    } else {
        struct wh_user u;
        struct wh_want uw = { &u, 5 };

        CU_ASSERT_FATAL(w.p != NULL);
        /* The secret below stays visible. */
        CU_ASSERT_EQUAL(sl_pipe_query(w.p, SL_Q_SHARED_SECRET, ss, &sslen),
                        0);
        CU_ASSERT(sslen == 32 && memcmp(ss, r.ss, 32) == 0);
        wh_user_attach(&u, w.p);
        CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
        CU_ASSERT(evbuffer_get_length(u.in) == 5 &&
                  memcmp(evbuffer_pullup(u.in, -1), "plain", 5) == 0);
        bufferevent_write(sl_pipe_get0_bev(w.p), "bytes", 5);
        CU_ASSERT_FATAL(wh_raw_read(&r, got, 5));
        CU_ASSERT(memcmp(got, "bytes", 5) == 0);
        sl_pipe_free(w.p);
        wh_user_free(&u);
    }
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_challenge_ok(void)
{
    challenge_client(HEX_MAC, HEX_PK, -1, NULL);
    challenge_client(HEX_MAC, NULL, -1, NULL);
}

static void
test_challenge_wrong_mac(void)
{
    challenge_client(HEX_E2C, HEX_PK, -1, "the exit's answer to the "
                     "challenge is wrong: it does not hold the shared "
                     "secret below");
}

static void
test_challenge_signature_checked(void)
{
    /* A bridge that knows the cookie could answer the challenge; the
     * signature still gives it away. */
    challenge_client(HEX_MAC, HEX_PK, 97 - 3, "the exit's signature does "
                     "not verify with pubkey (wrong exit or wrong key)");
    challenge_client(HEX_MAC, HEX_OTHER_PK, -1, "the exit's signature "
                     "does not verify with pubkey (wrong exit or wrong "
                     "key)");
}

/* The exit in challenge mode, over a lower pipe with a secret. */
static void
test_challenge_server(void)
{
    long pipes0 = sl_pipe_count();
    struct sl_error e;
    void *cfg;
    struct wh_raw r;
    struct sl_pipe *lower;
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    struct sc_enc m;
    uint8_t got[200], want[64], sig[64];
    struct wh_wres w;
    const char *why;

    write_test_key();
    cfg = layer_cfg_e(&e, "signing_key", keyfile, NULL);
    CU_ASSERT_FATAL(cfg != NULL);
    lower = raw_new(&r, WH_RAW_BEV, HEX_SS);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, NULL);
    memset(&ch, 0, sizeof(ch));
    ch.kind = E2E_CH_CHALLENGE;
    memset(ch.key, 0x11, 32);
    sc_enc_init(&m, 1000);
    e2e_client_hello_put(&m, &ch);
    raw_write_msg(&r, m.buf, m.len);
    sc_enc_free(&m);
    CU_ASSERT_FATAL(raw_read_msg(&r, got, sizeof(got)) == 97);
    CU_ASSERT_FATAL(e2e_exit_hello_get(got, 97, &in, sig, &why) == 0);
    CU_ASSERT(in.kind == E2E_EH_RESPONSE);
    unhex(HEX_MAC, want, 32);
    CU_ASSERT_BYTES(in.key, want, 32, "SharedSecretResponse");
    sc_enc_init(&m, 1000);
    e2e_signed_message(&m, &ch, &in);
    CU_ASSERT(crypto_sign_verify_detached(sig, m.buf, m.len, sign_pk) == 0);
    sc_enc_free(&m);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_FATAL(w.p != NULL);
    sl_pipe_free(w.p);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* ---- the client's refusals ------------------------------------------------ */

enum reply {
    R_TAMPER_SIG, R_TAMPER_KEY, R_REJECT, R_REJECT_UNSIGNED, R_OVERSIZE,
    R_GARBAGE, R_RESPONSE, R_LOW_ORDER, R_SILENT, R_CLOSE
};

static void
client_refuses(enum reply how, const char *pubkey, int code,
               const char *expect)
{
    long pipes0 = sl_pipe_count();
    struct sl_error e;
    void *cfg = pubkey != NULL
                    ? layer_cfg_e(&e, "pubkey", pubkey, "handshake_timeout",
                                  "200ms", NULL)
                    : layer_cfg_e(&e, "handshake_timeout", "200ms", NULL);
    struct wh_raw r;
    struct sl_pipe *lower = raw_new(&r, WH_RAW_FD, NULL);
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    struct sc_enc eh;
    uint8_t got[200], sk[32];
    const char *why;
    struct wh_wres w;

    CU_ASSERT_FATAL(cfg != NULL);
    memset(&fx, 0, sizeof(fx));
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, NULL);
    CU_ASSERT_FATAL(raw_read_msg(&r, got, sizeof(got)) == 34);
    CU_ASSERT_FATAL(e2e_client_hello_get(got, 34, &ch, &why) == 0);
    memset(&in, 0, sizeof(in));
    in.kind = E2E_EH_X25519;
    randombytes_buf(sk, 32);
    crypto_scalarmult_base(in.key, sk);
    switch (how) {
    case R_TAMPER_SIG:
        make_exit_hello(&ch, &in, &eh, 40);
        raw_write_msg(&r, eh.buf, eh.len);
        sc_enc_free(&eh);
        break;
    case R_TAMPER_KEY:
        make_exit_hello(&ch, &in, &eh, 5);
        raw_write_msg(&r, eh.buf, eh.len);
        sc_enc_free(&eh);
        break;
    case R_REJECT:
    case R_REJECT_UNSIGNED:
        in.kind = E2E_EH_REJECT;
        in.reason = (const unsigned char *)"no\nfree users today";
        in.reason_len = strlen((const char *)in.reason);
        make_exit_hello(&ch, &in, &eh, how == R_REJECT ? -1 : 70);
        raw_write_msg(&r, eh.buf, eh.len);
        sc_enc_free(&eh);
        break;
    case R_OVERSIZE:
        wh_raw_write(&r, "\x00\x01\x86\xa1", 4);   /* 100001 */
        break;
    case R_GARBAGE:
        raw_write_msg(&r, "\x02\x00", 2);
        break;
    case R_RESPONSE:
        in.kind = E2E_EH_RESPONSE;
        make_exit_hello(&ch, &in, &eh, -1);
        raw_write_msg(&r, eh.buf, eh.len);
        sc_enc_free(&eh);
        break;
    case R_LOW_ORDER:
        memset(in.key, 0, 32);     /* the identity: dh is all zero */
        make_exit_hello(&ch, &in, &eh, -1);
        raw_write_msg(&r, eh.buf, eh.len);
        sc_enc_free(&eh);
        break;
    case R_SILENT:
        break;
    case R_CLOSE:
        wh_raw_shutdown(&r);
        break;
    }
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p == NULL && !w.inside);
    CU_ASSERT_EQUAL(w.err.code, code);
    CU_ASSERT_TEXT(w.err.text, expect);
    /* The connection is closed. */
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_client_refusals(void)
{
    static const char badsig[] = "the exit's signature does not verify "
                                 "with pubkey (wrong exit or wrong key)";

    client_refuses(R_TAMPER_SIG, HEX_PK, SL_EAUTH, badsig);
    client_refuses(R_TAMPER_KEY, HEX_PK, SL_EAUTH, badsig);
    client_refuses(R_REJECT, HEX_PK, SL_EAUTH, "the exit refused the "
                   "session: no?free users today");
    client_refuses(R_REJECT, NULL, SL_EAUTH, "the exit refused the "
                   "session: no?free users today");
    client_refuses(R_REJECT_UNSIGNED, HEX_PK, SL_EAUTH, badsig);
    client_refuses(R_OVERSIZE, HEX_PK, SL_EPROTO, "ExitHello length "
                   "100001 exceeds 100000");
    client_refuses(R_GARBAGE, HEX_PK, SL_EPROTO, "malformed ExitHello: "
                   "stdcode: truncated input");
    client_refuses(R_RESPONSE, HEX_PK, SL_EPROTO, "the exit answered an "
                   "X25519 hello with a shared-secret response");
    client_refuses(R_LOW_ORDER, HEX_PK, SL_EAUTH, "the exit's X25519 key "
                   "is of low order");
    client_refuses(R_SILENT, HEX_PK, SL_ETIMEDOUT, "no ExitHello within "
                   "200 ms");
    client_refuses(R_CLOSE, HEX_PK, SL_ECLOSED, "connection closed during "
                   "the hello");
    /* Without pubkey a tampered signature goes unnoticed, as in Geph. */
}

/* ---- the exit's drops ----------------------------------------------------- */

static void
server_drops(const void *bytes, size_t n, bool with_ss, int code,
             const char *expect)
{
    long pipes0 = sl_pipe_count();
    struct sl_error e;
    void *cfg;
    struct wh_raw r;
    struct sl_pipe *lower;
    struct wh_wres w;

    write_test_key();
    cfg = layer_cfg_e(&e, "signing_key", keyfile, "handshake_timeout",
                      "200ms", NULL);
    CU_ASSERT_FATAL(cfg != NULL);
    lower = raw_new(&r, WH_RAW_FD, with_ss ? HEX_SS : NULL);
    wh_start_wrap(cfg, lower, SL_ROLE_SERVER, &w, NULL);
    wh_raw_write(&r, bytes, n);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p == NULL && !w.inside);
    CU_ASSERT_EQUAL(w.err.code, code);
    CU_ASSERT_TEXT(w.err.text, expect);
    /* Dropped without a word: no Reject. */
    CU_ASSERT(wh_run_until(wh_raw_closed, &r, WH_WAIT_MS));
    CU_ASSERT_EQUAL(evbuffer_get_length(r.acc), 0);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_server_drops(void)
{
    uint8_t hello[4 + 34];

    server_drops("\x00\x01\x86\xa1", 4, false, SL_EPROTO,
                 "ClientHello length 100001 exceeds 100000");
    server_drops("\xff\xff\xff\xff", 4, false, SL_EPROTO,
                 "ClientHello length 4294967295 exceeds 100000");
    server_drops("\x00\x00\x00\x02\x00\x01", 6, false, SL_EPROTO,
                 "malformed ClientHello: stdcode: truncated input");
    server_drops("", 0, false, SL_ETIMEDOUT, "no ClientHello within "
                 "200 ms");
    /* A challenge over a pipe without a shared secret. */
    memcpy(hello, "\x00\x00\x00\x22\x00\x00", 6);
    memset(hello + 6, 0x11, 32);
    server_drops(hello, sizeof(hello), false, SL_EPROTO, "the client sent "
                 "a shared-secret challenge but the pipe below has no "
                 "shared secret");
    /* A low-order X25519 key. */
    memcpy(hello, "\x00\x00\x00\x22\x00\x01", 6);
    memset(hello + 6, 0, 32);
    server_drops(hello, sizeof(hello), false, SL_EAUTH, "the client's "
                 "X25519 key is of low order");
    /* Trailing byte inside the message. */
    {
        uint8_t t[4 + 35];

        memcpy(t, "\x00\x00\x00\x23\x00\x01", 6);
        memset(t + 6, 0x09, 33);
        server_drops(t, sizeof(t), true, SL_EPROTO, "malformed "
                     "ClientHello: stdcode: trailing bytes");
    }
}

static void
test_server_needs_key(void)
{
    struct sl_error e;
    void *cfg = layer_cfg_e(&e, NULL);
    struct wh_raw r;
    struct sl_pipe *lower;
    long pipes0 = sl_pipe_count();
    void *op = NULL;

    CU_ASSERT_FATAL(cfg != NULL);
    lower = raw_new(&r, WH_RAW_FD, NULL);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(wh_ops->wrap(cfg, wh_base, lower, SL_ROLE_SERVER,
                                 wh_wrap_done, NULL, &op, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "accepting needs signing_key=FILE (the exit's "
                   "ed25519 key)");
    CU_ASSERT(sl_pipe_count() == pipes0);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
}

/* ---- the crypt pipe's receive side --------------------------------------- */

/* A client pipe in X25519 mode with the spec's dh over a raw peer. */
static struct sl_pipe *
crypt_client(struct wh_raw *r, void **cfgp)
{
    struct sl_error e;
    void *cfg = layer_cfg_e(&e, NULL);
    struct sl_pipe *lower = raw_new(r, WH_RAW_FD, NULL);
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    struct sc_enc eh;
    uint8_t got[200], sk[32];
    const char *why;
    struct wh_wres w;

    CU_ASSERT_FATAL(cfg != NULL);
    memset(&fx, 0, sizeof(fx));
    fx.dh_set = true;
    unhex(HEX_SS, fx.dh, 32);
    wh_start_wrap(cfg, lower, SL_ROLE_CLIENT, &w, NULL);
    CU_ASSERT_FATAL(raw_read_msg(r, got, sizeof(got)) == 34);
    CU_ASSERT_FATAL(e2e_client_hello_get(got, 34, &ch, &why) == 0);
    memset(&in, 0, sizeof(in));
    in.kind = E2E_EH_X25519;
    randombytes_buf(sk, 32);
    crypto_scalarmult_base(in.key, sk);
    make_exit_hello(&ch, &in, &eh, -1);
    raw_write_msg(r, eh.buf, eh.len);
    sc_enc_free(&eh);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_FATAL(w.p != NULL);
    *cfgp = cfg;
    return w.p;
}

static void
bad_message(int how)
{
    long pipes0 = sl_pipe_count();
    struct wh_raw r;
    void *cfg;
    struct sl_pipe *p = crypt_client(&r, &cfg);
    uint8_t c2e[32], e2c[32], msg[64], big[8];
    struct wh_user u;
    struct wh_want uw = { &u, 5 };
    const struct sl_error *err;

    wh_user_attach(&u, p);
    e2e_crypt_keys(fx.dh, c2e, e2c);
    e2e_crypt_seal(e2c, 0, "first", 5, msg);
    wh_raw_write(&r, msg, 25);
    CU_ASSERT(wh_run_until(wh_user_has, &uw, WH_WAIT_MS));
    if (how == 0) {
        e2e_crypt_seal(e2c, 1, "later", 5, msg);
        msg[6] ^= 0x80;
        wh_raw_write(&r, msg, 25);
    } else if (how == 1) {
        memcpy(big, "\x00\x01\x86\xa1zzzz", 8);
        wh_raw_write(&r, big, 8);
    } else if (how == 2) {
        /* Replayed: message 0 again. */
        wh_raw_write(&r, msg, 25);
    } else {
        /* A good message and a tampered one in one piece: the good one
         * is delivered, then reading ends. */
        uint8_t two[50];

        e2e_crypt_seal(e2c, 1, "again", 5, two);
        e2e_crypt_seal(e2c, 2, "wrong", 5, two + 25);
        two[40] ^= 0x01;
        wh_raw_write(&r, two, sizeof(two));
    }
    CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
    CU_ASSERT(u.eof && !u.error);
    CU_ASSERT(evbuffer_get_length(u.in) == (how == 3 ? 10u : 5u));
    err = sl_pipe_get0_error(p);
    CU_ASSERT_FATAL(err != NULL);
    CU_ASSERT_TEXT(err->text, how == 1
                   ? "crypt message longer than 100000 bytes; receive "
                     "direction ended"
                   : "crypt message authentication failed; receive "
                     "direction ended");
    /* Sending goes on. */
    bufferevent_write(sl_pipe_get0_bev(p), "still", 5);
    {
        uint8_t got[25], pt[5];

        CU_ASSERT_FATAL(wh_raw_read(&r, got, 25));
        CU_ASSERT(e2e_crypt_open(c2e, 0, got + 4, 21, pt) == 0 &&
                  memcmp(pt, "still", 5) == 0);
    }
    sl_pipe_free(p);
    wh_user_free(&u);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_crypt_bad_messages(void)
{
    bad_message(0);
    bad_message(1);
    bad_message(2);
    bad_message(3);
}

/* Large writes become messages of at most 8192 plaintext bytes. */
static void
test_crypt_chunks(void)
{
    long pipes0 = sl_pipe_count();
    struct wh_raw r;
    void *cfg;
    struct sl_pipe *p = crypt_client(&r, &cfg);
    const size_t total = 8192 * 3 + 100;
    uint8_t *data = malloc(total), *got = malloc(total), c2e[32], e2c[32];
    uint8_t hdr[4], ct[8192 + 16];
    size_t off = 0;
    uint64_t ctr = 0;

    randombytes_buf(data, total);
    e2e_crypt_keys(fx.dh, c2e, e2c);
    bufferevent_write(sl_pipe_get0_bev(p), data, total);
    while (off < total) {
        size_t len;

        CU_ASSERT_FATAL(wh_raw_read(&r, hdr, 4));
        len = (size_t)hdr[2] << 8 | hdr[3];
        CU_ASSERT_FATAL(hdr[0] == 0 && hdr[1] == 0);
        CU_ASSERT_FATAL(len > 16 && len <= 8192 + 16);
        CU_ASSERT_FATAL(wh_raw_read(&r, ct, len));
        CU_ASSERT_FATAL(e2e_crypt_open(c2e, ctr++, ct, len, got + off) == 0);
        off += len - 16;
    }
    CU_ASSERT(off == total && memcmp(got, data, total) == 0);
    CU_ASSERT(ctr == 4);
    sl_pipe_free(p);
    wh_raw_free(&r);
    wh_ops->unconfigure(cfg);
    free(data);
    free(got);
    wh_run_for(5);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

/* ---- keys and options ---------------------------------------------------- */

static void
test_key_file(void)
{
    char path[300];
    uint8_t seed[32], pk[32], seed2[32], pk2[32];
    struct sl_error e;
    struct stat st;
    void *cfg;
    int created = -1, fd;
    char hex[65];

    snprintf(path, sizeof(path), "%s/made.key", tmpdir);
    unlink(path);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(e2e_key_load(path, seed, pk, &e), SL_ENOENT);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(e2e_key_open(path, seed, pk, &created, &e), 0);
    CU_ASSERT_EQUAL(created, 1);
    CU_ASSERT(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600 &&
              st.st_size == 32);
    CU_ASSERT_EQUAL(e2e_key_open(path, seed2, pk2, &created, &e), 0);
    CU_ASSERT_EQUAL(created, 0);
    CU_ASSERT(memcmp(seed, seed2, 32) == 0 && memcmp(pk, pk2, 32) == 0);
    /* The RFC 8032 key gives its public key. */
    write_test_key();
    CU_ASSERT_EQUAL(e2e_key_load_or_create(keyfile, seed, pk, &e), 0);
    e2e_pk_to_hex(pk, hex);
    CU_ASSERT_STRING_EQUAL(hex, HEX_PK);
    /* Readable by others: refused. */
    chmod(path, 0644);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(e2e_key_load_or_create(path, seed, pk, &e), SL_EINVAL);
    CU_ASSERT(strstr(e.text, "has mode 0644: it must not be accessible to "
                     "group or others (chmod 600)") != NULL);
    /* The layer refuses it at configure time. */
    cfg = layer_cfg_e(&e, "signing_key", path, NULL);
    CU_ASSERT(cfg == NULL);
    CU_ASSERT(strstr(e.text, "has mode 0644") != NULL);
    /* Wrong size. */
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(write(fd, "0123456789abcdef0123456789abcdef\n", 33) == 33);
    close(fd);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(e2e_key_load_or_create(path, seed, pk, &e), SL_EINVAL);
    CU_ASSERT(strstr(e.text, "is 33 bytes long; it must hold exactly the "
                     "32-byte ed25519 seed") != NULL);
    unlink(path);
    /* A directory is not a key. */
    sl_error_clear(&e);
    CU_ASSERT(e2e_key_load_or_create(tmpdir, seed, pk, &e) != 0);
    /* An unwritable place. */
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(e2e_key_load_or_create("/nonexistent-dir/k", seed, pk,
                                           &e), SL_ESYS);
    CU_ASSERT_TEXT(e.text, "cannot create signing key /nonexistent-dir/k");
}

static void
test_options(void)
{
    struct sl_error e;
    void *cfg;
    uint8_t pk[32];

    cfg = layer_cfg_e(&e, "pubkey", "abcd", NULL);
    CU_ASSERT(cfg == NULL);
    CU_ASSERT_TEXT(e.text, "pubkey must be 64 hex digits (an ed25519 "
                   "public key), not 4 characters");
    cfg = layer_cfg_e(&e, "pubkey", "g" HEX_OTHER_PK_TAIL, NULL);
    CU_ASSERT(cfg == NULL);
    CU_ASSERT_TEXT(e.text, "pubkey: character 1 is not a hex digit");
    cfg = layer_cfg_e(&e, "signing_key", "", NULL);
    CU_ASSERT(cfg == NULL);
    CU_ASSERT_TEXT(e.text, "signing_key is empty");
    cfg = layer_cfg_e(&e, "pubkey", "D75A980182B10AB7D54BFED3C964073A0EE172F3"
                      "DAA62325AF021A68F707511A", NULL);
    CU_ASSERT_FATAL(cfg != NULL);
    wh_ops->unconfigure(cfg);
    cfg = layer_cfg_e(&e, "handshake_timeout", "0", NULL);
    CU_ASSERT(cfg == NULL);
    cfg = layer_cfg_e(&e, "bogus", "1", NULL);
    CU_ASSERT(cfg == NULL);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(e2e_pk_from_hex(HEX_PK, pk, &e), 0);
    CU_ASSERT(memcmp(pk, sign_pk, 32) == 0);
}

/* ---- end to end over tcp and sosistab3 ----------------------------------- */

struct srv {
    struct sl_stack *stack;
    struct sl_listener *l;
    char addr[64];
    struct sl_pipe *p;
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
    if (sv->p == NULL)
        sv->p = p;
    else
        sl_pipe_free(p);
}

static bool
srv_has_pipe(void *arg)
{
    return ((struct srv *)arg)->p != NULL;
}

struct dialed {
    int calls;
    struct sl_pipe *p;
    struct sl_error err;
};

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
          void *arg)
{
    struct dialed *d = arg;

    (void)s;
    d->calls++;
    d->p = p;
    if (e != NULL)
        d->err = *e;
}

static bool
dialed(void *arg)
{
    return ((struct dialed *)arg)->calls > 0;
}

/* below: "" or "sosistab3 cookie=x | "; pubkey: NULL, or the hex. */
static void
end_to_end(const char *below, const char *pubkey, const char *expect)
{
    const size_t big = 1024 * 1024 + 17;
    uint8_t *data = malloc(big), ssc[64], sss[64];
    size_t lc = sizeof(ssc), ls = sizeof(sss);
    long pipes0 = sl_pipe_count();
    struct srv sv;
    struct sl_dialer *d;
    struct sl_error e;
    struct dialed dd;
    struct wh_user uc, us;
    struct wh_want w;
    char text[600], proto[16];
    int rc, rs;

    memset(&fx, 0, sizeof(fx));
    memset(&sv, 0, sizeof(sv));
    memset(&dd, 0, sizeof(dd));
    write_test_key();
    sl_error_clear(&e);
    snprintf(text, sizeof(text), "tcp addr=127.0.0.1:0 | %se2e "
             "signing_key=%s", below, keyfile);
    sv.stack = sl_stack_parse(text, &e);
    CU_ASSERT_FATAL(sv.stack != NULL);
    sv.l = sl_listener_new(sv.stack, wh_base, srv_accept, &sv, &e);
    CU_ASSERT_FATAL(sv.l != NULL);
    CU_ASSERT_FATAL(sl_listener_local_addr(sv.l, sv.addr,
                                           sizeof(sv.addr)) == 0);
    snprintf(text, sizeof(text), "tcp addr=%s | %se2e%s%s", sv.addr, below,
             pubkey != NULL ? " pubkey=" : "", pubkey != NULL ? pubkey : "");
    d = sl_dialer_parse(text, &e);
    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT_FATAL(sl_dialer_dial(d, wh_base, on_dialed, &dd, NULL, &e) == 0);
    CU_ASSERT_FATAL(wh_run_until(dialed, &dd, WH_WAIT_MS));
    if (expect != NULL) {
        CU_ASSERT(dd.p == NULL);
        CU_ASSERT(strstr(dd.err.text, expect) != NULL);
        if (strstr(dd.err.text, expect) == NULL)
            fprintf(stderr, "\n  got: %s\n", dd.err.text);
        goto out;
    }
    CU_ASSERT_FATAL(dd.p != NULL);
    CU_ASSERT_FATAL(wh_run_until(srv_has_pipe, &sv, WH_WAIT_MS));
    CU_ASSERT_STRING_EQUAL(sl_pipe_protocol(dd.p, proto, sizeof(proto)),
                           "e2e");
    CU_ASSERT_STRING_EQUAL(sl_pipe_protocol(sv.p, proto, sizeof(proto)),
                           "e2e");
    rc = sl_pipe_query(dd.p, SL_Q_SHARED_SECRET, ssc, &lc);
    rs = sl_pipe_query(sv.p, SL_Q_SHARED_SECRET, sss, &ls);
    if (*below == '\0') {
        CU_ASSERT(rc == SL_ENOENT && rs == SL_ENOENT);
    } else {
        CU_ASSERT(rc == 0 && rs == 0 && lc == 32 && ls == 32 &&
                  memcmp(ssc, sss, 32) == 0);
    }
    wh_user_attach(&uc, dd.p);
    wh_user_attach(&us, sv.p);
    randombytes_buf(data, big);
    bufferevent_write(sl_pipe_get0_bev(dd.p), data, big);
    w.u = &us;
    w.n = big;
    CU_ASSERT(wh_run_until(wh_user_has, &w, 20000));
    CU_ASSERT(evbuffer_get_length(us.in) == big &&
              memcmp(evbuffer_pullup(us.in, -1), data, big) == 0);
    bufferevent_write(sl_pipe_get0_bev(sv.p), "pong", 4);
    w.u = &uc;
    w.n = 4;
    CU_ASSERT(wh_run_until(wh_user_has, &w, WH_WAIT_MS));
    CU_ASSERT(evbuffer_get_length(uc.in) == 4);
    sl_pipe_free(dd.p);
    CU_ASSERT(wh_run_until(wh_user_ended, &us, WH_WAIT_MS));
    wh_user_free(&uc);
    wh_user_free(&us);
out:
    sl_pipe_free(sv.p);
    sl_listener_free(sv.l);
    sl_stack_free(sv.stack);
    sl_dialer_free(d);
    free(data);
    wh_run_for(10);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_tcp_e2e(void)
{
    end_to_end("", HEX_PK, NULL);
    end_to_end("", NULL, NULL);
}

static void
test_tcp_sosistab3_e2e(void)
{
    end_to_end("sosistab3 cookie=x | ", HEX_PK, NULL);
    end_to_end("sosistab3 cookie=x | ", NULL, NULL);
}

static void
test_wrong_pubkey(void)
{
    /* Another valid key: the signature does not verify, in both modes. */
    const char *other = HEX_OTHER_PK;

    end_to_end("", other, "the exit's signature does not verify with "
               "pubkey");
    end_to_end("sosistab3 cookie=x | ", other, "the exit's signature does "
               "not verify with pubkey");
}

/* ---- main ---------------------------------------------------------------- */

static int
load_module(const char *name)
{
    const char *path = getenv("SILLAD_PLUGIN_PATH");
    char file[4096];
    struct sl_error e;
    size_t n;

    if (path == NULL) {
        fprintf(stderr, "test-e2e: SILLAD_PLUGIN_PATH is not set\n");
        return -1;
    }
    n = strcspn(path, ":");
    snprintf(file, sizeof(file), "%.*s/%s.so", (int)n, path, name);
    sl_error_clear(&e);
    if (sl_loader_load_file(file, &e) != 0) {
        fprintf(stderr, "test-e2e: %s\n", e.text);
        return -1;
    }
    return 0;
}

static void
rm_tmpdir(void)
{
    char path[400];

    snprintf(path, sizeof(path), "%s/exit.key", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/made.key", tmpdir);
    unlink(path);
    rmdir(tmpdir);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "§10.2 hello bytes", test_hello_bytes },
        { "§10.2 MAC, §10.3 keys and first message", test_mac_and_keys },
        { "§10.3 client, socketpair", test_spec_client_socketpair },
        { "§10.3 client, bufferevent pair", test_spec_client_bevpair },
        { "§10.3 exit, socketpair", test_spec_server_socketpair },
        { "§10.3 exit, bufferevent pair", test_spec_server_bevpair },
        { "challenge mode, client", test_challenge_ok },
        { "challenge mode, wrong MAC", test_challenge_wrong_mac },
        { "challenge mode, signature checked",
          test_challenge_signature_checked },
        { "challenge mode, exit", test_challenge_server },
        { "client refusals", test_client_refusals },
        { "exit drops", test_server_drops },
        { "exit needs signing_key", test_server_needs_key },
        { "crypt pipe: bad messages end reading", test_crypt_bad_messages },
        { "crypt pipe: 8192-byte chunks", test_crypt_chunks },
        { "key file", test_key_file },
        { "options", test_options },
        { "tcp | e2e", test_tcp_e2e },
        { "tcp | sosistab3 | e2e", test_tcp_sosistab3_e2e },
        { "wrong pubkey refused", test_wrong_pubkey },
        { NULL, NULL },
    };
    const struct sl_layer *l;
    struct sl_error e;
    uint8_t seed[32];
    const char *t = getenv("TMPDIR");
    int rc;

    alarm(HARD_LIMIT_S);
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 2;
    if (getenv("E2E_TEST_VERBOSE") == NULL)
        sl_log_set_level(SL_LOG_ERR);
    snprintf(tmpdir, sizeof(tmpdir), "%s/test-e2e.XXXXXX",
             t != NULL && *t != '\0' ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("test-e2e: mkdtemp");
        return 2;
    }
    if (sodium_hex2bin(seed, 32, HEX_SEED, 64, NULL, NULL, NULL) != 0)
        return 2;
    crypto_sign_seed_keypair(sign_pk, sign_sk, seed);
    sl_error_clear(&e);
    if (sl_loader_register(sl_plugin_e2e_describe(), "test-e2e", &e) != 0 ||
        load_module("tcp") != 0 || load_module("sosistab3") != 0) {
        fprintf(stderr, "test-e2e: %s\n", e.text);
        rm_tmpdir();
        return 2;
    }
    l = sl_layer_find("e2e");
    wh_ops = sl_layer_get0_ops(l);
    wh_plugin_ctx = sl_layer_get0_plugin_ctx(l);
    wh_base = event_base_new();
    e2e_test_set_hooks(&hooks);
    rc = cu_run("e2e", tests);
    e2e_test_set_hooks(NULL);
    sl_resolver_release(wh_base);
    event_base_free(wh_base);
    sl_loader_unload_all();
    rm_tmpdir();
    return rc;
}
