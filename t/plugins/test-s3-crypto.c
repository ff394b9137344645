/*
 * test-s3-crypto.c: the sosistab3 crypto core against the spec.
 *
 * Section 11 of the spec ("test-cookie") is reproduced byte for byte with
 * its fixed keys, timestamps, padding and nonces, for every AEAD backend;
 * then the failure paths: tampering, the 1 MiB limit, truncation, cookie
 * parsing corner cases.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <sodium.h>

#include "blake3.h"
#include "s3-crypto.h"

/* ---- Spec §11 values ------------------------------------------------ */

#define HEX_EMPTY                                                             \
    "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
#define HEX_COOKIE_KEY                                                        \
    "9fcc810a538b8f7d5c6183598c90e47b155569eccbc295c670c67df35dada1c3"
#define HEX_HS_KEY_C                                                          \
    "5fdfb23bba398f1ac4e0015db2e7da016a7c4bee54450caab2b160bfe7b36117"
#define HEX_HS_KEY_S                                                          \
    "56b606c4aab48810781b1852791312b9c1555c65375021954392b538bd3c3a72"
#define HEX_SK_C                                                              \
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
#define HEX_PK_C                                                              \
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
#define HEX_SK_S                                                              \
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
#define HEX_PK_S                                                              \
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
#define HEX_PAD_HASH_C                                                        \
    "cc6ed67ec997fb472fa3d0a16294018003ffb0d18a2c28f9cb1fdac16343a415"
#define HEX_PLAIN_C                                                           \
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"        \
    "000000006553f1000000000000000005"                                        \
    "cc6ed67ec997fb472fa3d0a16294018003ffb0d18a2c28f9cb1fdac16343a415"        \
    "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
#define HEX_HS_C                                                              \
    "000102030405060708090a0bf8bb87042aba3cd9849a195eed23d8f31c2e8d66"        \
    "9bd7b20dd2a749b9457f941fe77ed35aa3daa8c209512f6c4f834813098d3075"        \
    "7acb9353da4602399f3b210406f8e8356b21a564e797916469e07993dce64d2c"        \
    "4b771c21ae4b6241e6d85062048440ed0696d277be56155499345e331ec01f2a"        \
    "2d964e8c6f2635ea26530674"
#define HEX_H                                                                 \
    "0733ac08f9c6252b0b4292a4d33a28c5d54add4ed20ae9205bb708c33f7fe621"
#define HEX_PLAIN_S                                                           \
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"        \
    "000000006553f1010000000000000000"                                        \
    "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"        \
    "0733ac08f9c6252b0b4292a4d33a28c5d54add4ed20ae9205bb708c33f7fe621"
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
#define HEX_KEY_DN                                                            \
    "6234b3d2eaa1d67f7963ad00980c0fea8dc19ba05625c636de900591e8485221"
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

static const enum s3_aead BACKENDS[] = {S3_AEAD_OPENSSL, S3_AEAD_SODIUM,
                                        S3_AEAD_HYBRID, S3_AEAD_DEFAULT};
#define N_BACKENDS (sizeof BACKENDS / sizeof BACKENDS[0])

/* Decode a hex literal; aborts the test on a malformed literal. */
static size_t
unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;

    CU_ASSERT_FATAL(strlen(hex) % 2 == 0 && n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        CU_ASSERT_FATAL(sscanf(hex + 2 * i, "%2x", &v) == 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

static int
eq_hex(const uint8_t *got, size_t len, const char *hex)
{
    uint8_t want[512];
    size_t n = unhex(hex, want, sizeof want);

    if (n != len || memcmp(got, want, n) != 0) {
        fprintf(stderr, "\n  want %s\n  got  ", hex);
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, "%02x", got[i]);
        fprintf(stderr, "\n");
        return 0;
    }
    return 1;
}

static void
spec_cookie(struct s3_cookie *c)
{
    CU_ASSERT_FATAL(s3_cookie_parse("test-cookie", 11, c) == S3_OK);
}

/* ---- Keys ---------------------------------------------------------- */

static void
test_keys(void)
{
    struct s3_cookie c, c2;
    uint8_t k[32], e[32];
    const char *with = "test-cookie---{\"obfs_lengths\":true,"
                       "\"obfs_timing\":false}";

    blake3_hash(e, "", 0);
    CU_ASSERT(eq_hex(e, 32, HEX_EMPTY));
    CU_ASSERT(memcmp(e, s3_empty_hash, 32) == 0);
    spec_cookie(&c);
    CU_ASSERT(eq_hex(c.key, 32, HEX_COOKIE_KEY));
    CU_ASSERT(!c.obfs_lengths && !c.obfs_timing);
    s3_hs_key(&c, S3_CLIENT, k);
    CU_ASSERT(eq_hex(k, 32, HEX_HS_KEY_C));
    s3_hs_key(&c, S3_SERVER, k);
    CU_ASSERT(eq_hex(k, 32, HEX_HS_KEY_S));
    /* Only the part before "---" is hashed. */
    CU_ASSERT_FATAL(s3_cookie_parse(with, strlen(with), &c2) == S3_OK);
    CU_ASSERT(memcmp(c.key, c2.key, 32) == 0);
    CU_ASSERT(c2.obfs_lengths && !c2.obfs_timing);
    s3_cookie_wipe(&c);
    s3_cookie_wipe(&c2);
    CU_ASSERT(sodium_is_zero(c.key, 32));
}

static void
test_x25519(void)
{
    uint8_t sk_c[32], sk_s[32], pk[32], ss[32], ss2[32], up[32], dn[32];
    uint8_t zero[32] = {0};

    unhex(HEX_SK_C, sk_c, 32);
    unhex(HEX_SK_S, sk_s, 32);
    CU_ASSERT_FATAL(crypto_scalarmult_base(pk, sk_c) == 0);
    CU_ASSERT(eq_hex(pk, 32, HEX_PK_C));
    CU_ASSERT_FATAL(crypto_scalarmult_base(pk, sk_s) == 0);
    CU_ASSERT(eq_hex(pk, 32, HEX_PK_S));
    CU_ASSERT_FATAL(s3_shared_secret(sk_c, pk, ss) == S3_OK);
    CU_ASSERT(eq_hex(ss, 32, HEX_SS));
    unhex(HEX_PK_C, pk, 32);
    CU_ASSERT_FATAL(s3_shared_secret(sk_s, pk, ss2) == S3_OK);
    CU_ASSERT(memcmp(ss, ss2, 32) == 0);
    s3_session_keys(ss, up, dn);
    CU_ASSERT(eq_hex(up, 32, HEX_KEY_UP));
    CU_ASSERT(eq_hex(dn, 32, HEX_KEY_DN));
    /* A low-order point: our documented refusal (spec §13.8). */
    memset(ss2, 0xee, 32);
    CU_ASSERT(s3_shared_secret(sk_c, zero, ss2) == S3_ELOWORDER);
    CU_ASSERT(ss2[0] == 0xee); /* untouched on failure */
    /* Fresh key pairs agree. */
    CU_ASSERT_FATAL(s3_keypair(sk_c, pk) == S3_OK);
    CU_ASSERT_FATAL(s3_keypair(sk_s, up) == S3_OK);
    CU_ASSERT_FATAL(s3_shared_secret(sk_c, up, ss) == S3_OK);
    CU_ASSERT_FATAL(s3_shared_secret(sk_s, pk, ss2) == S3_OK);
    CU_ASSERT(memcmp(ss, ss2, 32) == 0);
}

/* ---- Handshake ----------------------------------------------------- */

static const uint8_t PAD_C[5] = {0x00, 0x11, 0x22, 0x33, 0x44};

static void
make_hs_c(uint8_t hs_c[S3_HS_LEN])
{
    struct s3_cookie c;
    uint8_t key[32], pk[32], nonce[12];

    spec_cookie(&c);
    s3_hs_key(&c, S3_CLIENT, key);
    unhex(HEX_PK_C, pk, 32);
    for (int i = 0; i < 12; i++)
        nonce[i] = (uint8_t)i;
    CU_ASSERT_FATAL(s3_hs_seal(key, pk, 1700000000u, PAD_C, sizeof PAD_C,
                               s3_empty_hash, nonce, hs_c) == S3_OK);
}

static void
test_handshake_spec(void)
{
    struct s3_cookie c;
    struct s3_hs hs, got;
    uint8_t key_c[32], key_s[32], plain[112], hs_c[140], hs_s[140];
    uint8_t h[32], nonce[12];

    spec_cookie(&c);
    s3_hs_key(&c, S3_CLIENT, key_c);
    s3_hs_key(&c, S3_SERVER, key_s);

    /* Client plaintext and message. */
    unhex(HEX_PK_C, hs.eph_pk, 32);
    hs.timestamp = 1700000000u;
    hs.padding_len = 5;
    blake3_hash(hs.padding_hash, PAD_C, sizeof PAD_C);
    CU_ASSERT(eq_hex(hs.padding_hash, 32, HEX_PAD_HASH_C));
    memcpy(hs.responding_to, s3_empty_hash, 32);
    s3_hs_encode(&hs, plain);
    CU_ASSERT(eq_hex(plain, 112, HEX_PLAIN_C));
    s3_hs_decode(plain, &got);
    CU_ASSERT(memcmp(&got, &hs, sizeof hs) == 0);
    make_hs_c(hs_c);
    CU_ASSERT(eq_hex(hs_c, 140, HEX_HS_C));
    blake3_hash(h, hs_c, 140);
    CU_ASSERT(eq_hex(h, 32, HEX_H));

    /* The server opens it. */
    CU_ASSERT_FATAL(s3_hs_open(key_c, hs_c, &got) == S3_OK);
    CU_ASSERT(memcmp(&got, &hs, sizeof hs) == 0);
    CU_ASSERT(s3_hs_check_padding(&got, PAD_C, 5) == S3_OK);
    CU_ASSERT(s3_hs_check_time(got.timestamp, 1700000000u + 300) == S3_OK);

    /* Server plaintext and message. */
    unhex(HEX_PK_S, hs.eph_pk, 32);
    hs.timestamp = 1700000001u;
    hs.padding_len = 0;
    memcpy(hs.padding_hash, s3_empty_hash, 32);
    memcpy(hs.responding_to, h, 32);
    s3_hs_encode(&hs, plain);
    CU_ASSERT(eq_hex(plain, 112, HEX_PLAIN_S));
    for (int i = 0; i < 12; i++)
        nonce[i] = (uint8_t)(12 + i);
    CU_ASSERT_FATAL(s3_hs_seal(key_s, hs.eph_pk, 1700000001u, NULL, 0, h,
                               nonce, hs_s) == S3_OK);
    CU_ASSERT(eq_hex(hs_s, 140, HEX_HS_S));

    /* The client opens it and checks the binding. */
    CU_ASSERT_FATAL(s3_hs_open(key_s, hs_s, &got) == S3_OK);
    CU_ASSERT(memcmp(&got, &hs, sizeof hs) == 0);
    CU_ASSERT(s3_hs_check_padding(&got, NULL, 0) == S3_OK);
    CU_ASSERT(s3_hs_check_reply(&got, hs_c) == S3_OK);
    hs_c[139] ^= 1;
    CU_ASSERT(s3_hs_check_reply(&got, hs_c) == S3_EHSREPLY);
    /* Keys are per direction: the client key does not open HS_s. */
    CU_ASSERT(s3_hs_open(key_c, hs_s, &got) == S3_EHSAUTH);
    s3_cookie_wipe(&c);
}

static void
test_handshake_failures(void)
{
    struct s3_cookie c;
    struct s3_hs hs, got;
    uint8_t key[32], hs_c[140], bad[140], pk[32], nonce[12] = {0};
    uint8_t *pad = calloc(1, S3_HS_PAD_RECV_MAX + 1);

    CU_ASSERT_FATAL(pad != NULL);
    spec_cookie(&c);
    s3_hs_key(&c, S3_CLIENT, key);
    make_hs_c(hs_c);
    /* Every single-bit flip anywhere is refused by the AEAD. */
    for (int i = 0; i < 140; i++) {
        memcpy(bad, hs_c, 140);
        bad[i] ^= (uint8_t)(1u << (i % 8));
        memset(&got, 0x5a, sizeof got);
        CU_ASSERT(s3_hs_open(key, bad, &got) == S3_EHSAUTH);
        CU_ASSERT(got.timestamp == 0x5a5a5a5a5a5a5a5aull); /* untouched */
    }
    /* Padding length limit: 100000 accepted, 100001 refused. */
    unhex(HEX_PK_C, pk, 32);
    CU_ASSERT_FATAL(s3_hs_seal(key, pk, 1, pad, S3_HS_PAD_RECV_MAX,
                               s3_empty_hash, nonce, bad) == S3_OK);
    CU_ASSERT(s3_hs_open(key, bad, &hs) == S3_OK);
    CU_ASSERT(hs.padding_len == S3_HS_PAD_RECV_MAX);
    CU_ASSERT(s3_hs_check_padding(&hs, pad, S3_HS_PAD_RECV_MAX) == S3_OK);
    pad[777] = 1;
    CU_ASSERT(s3_hs_check_padding(&hs, pad, S3_HS_PAD_RECV_MAX) ==
              S3_EHSPADHASH);
    CU_ASSERT(s3_hs_check_padding(&hs, pad, S3_HS_PAD_RECV_MAX - 1) ==
              S3_EHSPADHASH);
    CU_ASSERT_FATAL(s3_hs_seal(key, pk, 1, pad, S3_HS_PAD_RECV_MAX + 1,
                               s3_empty_hash, nonce, bad) == S3_OK);
    CU_ASSERT(s3_hs_open(key, bad, &hs) == S3_EHSPADLEN);
    /* Timestamp window: +-300 inclusive. */
    CU_ASSERT(s3_hs_check_time(1000, 1300) == S3_OK);
    CU_ASSERT(s3_hs_check_time(1300, 1000) == S3_OK);
    CU_ASSERT(s3_hs_check_time(1000, 1301) == S3_EHSTIME);
    CU_ASSERT(s3_hs_check_time(1301, 1000) == S3_EHSTIME);
    CU_ASSERT(s3_hs_check_time(UINT64_MAX, 0) == S3_EHSTIME);
    CU_ASSERT(s3_hs_check_time(0, UINT64_MAX) == S3_EHSTIME);
    free(pad);
    s3_cookie_wipe(&c);
}

static void
test_handshake_random(void)
{
    uint8_t key[32], pk[32], sk[32], buf[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t n = 0, max_seen = 0;
    struct s3_hs hs;

    randombytes_buf(key, sizeof key);
    CU_ASSERT_FATAL(s3_keypair(sk, pk) == S3_OK);
    for (int i = 0; i < 200; i++) {
        CU_ASSERT_FATAL(s3_hs_seal_random(key, pk, 42, s3_empty_hash, buf,
                                          &n) == S3_OK);
        CU_ASSERT(n >= S3_HS_LEN && n <= sizeof buf);
        CU_ASSERT_FATAL(s3_hs_open(key, buf, &hs) == S3_OK);
        CU_ASSERT(hs.timestamp == 42);
        CU_ASSERT(memcmp(hs.eph_pk, pk, 32) == 0);
        CU_ASSERT(s3_hs_check_padding(&hs, buf + S3_HS_LEN,
                                      n - S3_HS_LEN) == S3_OK);
        if (n > max_seen)
            max_seen = n;
    }
    CU_ASSERT(max_seen > S3_HS_LEN); /* padding does vary */
    for (int i = 0; i < 1000; i++) {
        CU_ASSERT(s3_random_padding_len() <= 1024);
        CU_ASSERT(s3_random_jitter() <= 9);
    }
}

/* ---- Records ------------------------------------------------------- */

static struct s3_dir *
dir(const char *hexkey, enum s3_role role, enum s3_aead aead)
{
    uint8_t key[32];
    struct s3_dir *d = NULL;

    unhex(hexkey, key, 32);
    CU_ASSERT_FATAL(s3_dir_new(key, role, aead, &d) == S3_OK);
    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT(aead == S3_AEAD_DEFAULT || s3_dir_aead(d) == aead);
    sodium_memzero(key, sizeof key);
    return d;
}

static void
test_records_spec(void)
{
    for (size_t b = 0; b < N_BACKENDS; b++) {
        struct s3_dir *up = dir(HEX_KEY_UP, S3_SEAL, BACKENDS[b]);
        struct s3_dir *dn = dir(HEX_KEY_DN, S3_SEAL, BACKENDS[b]);
        struct s3_dir *up2 = dir(HEX_KEY_UP, S3_SEAL, BACKENDS[b]);
        uint8_t out[256];
        size_t n = 0;

        CU_ASSERT(s3_rec_seal(up, (const uint8_t *)"hello", 5, out,
                              sizeof out) == S3_OK);
        CU_ASSERT(eq_hex(out, 41, HEX_REC_HELLO));
        CU_ASSERT(s3_rec_seal(dn, (const uint8_t *)"world", 5, out,
                              sizeof out) == S3_OK);
        CU_ASSERT(eq_hex(out, 41, HEX_REC_WORLD));
        /* "hi" with obfs_lengths and r = 3: 38 + 93 = 131 bytes. */
        CU_ASSERT(s3_write_size(2, true, 3) == 131);
        CU_ASSERT(s3_write_seal(up, (const uint8_t *)"hi", 2, true, 3, out,
                                sizeof out, &n) == S3_OK);
        CU_ASSERT_FATAL(n == 131);
        CU_ASSERT(eq_hex(out, 38, HEX_REC_HI));
        CU_ASSERT(eq_hex(out + 38, 93, HEX_REC_PAD));
        CU_ASSERT(s3_dir_counter(up) == 6);
        /* Same bytes through the record-level calls, in place. */
        CU_ASSERT(s3_rec_seal(up2, (const uint8_t *)"hello", 5, out,
                              sizeof out) == S3_OK);
        memcpy(out + 20, "hi", 2);
        CU_ASSERT(s3_rec_seal(up2, out + 20, 2, out, 38) == S3_OK);
        CU_ASSERT(eq_hex(out, 38, HEX_REC_HI));
        CU_ASSERT(s3_rec_seal_padding(up2, 57, out, 93) == S3_OK);
        CU_ASSERT(eq_hex(out, 93, HEX_REC_PAD));
        s3_dir_free(up);
        s3_dir_free(dn);
        s3_dir_free(up2);
    }
}

/* hello || hi || pad, the client's first 172 bytes of records. */
static size_t
client_stream(uint8_t *buf, size_t cap)
{
    size_t n = unhex(HEX_REC_HELLO, buf, cap);
    n += unhex(HEX_REC_HI, buf + n, cap - n);
    n += unhex(HEX_REC_PAD, buf + n, cap - n);
    return n;
}

static void
test_records_open(void)
{
    for (size_t b = 0; b < N_BACKENDS; b++) {
        struct s3_dir *up = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
        struct s3_dir *dn = dir(HEX_KEY_DN, S3_OPEN, BACKENDS[b]);
        uint8_t in[256], out[256];
        size_t n = client_stream(in, sizeof in), off = 0, rl = 0;
        int32_t L = 99;

        CU_ASSERT_FATAL(n == 172);
        CU_ASSERT(s3_rec_peek(up, in, n, &rl, &L) == S3_OK);
        CU_ASSERT(rl == 41 && L == 5);
        CU_ASSERT(s3_rec_open(up, in, n, out, sizeof out, &rl, &L) == S3_OK);
        CU_ASSERT(rl == 41 && L == 5 && memcmp(out, "hello", 5) == 0);
        off += rl;
        CU_ASSERT(s3_rec_open(up, in + off, n - off, out, sizeof out, &rl,
                              &L) == S3_OK);
        CU_ASSERT(rl == 38 && L == 2 && memcmp(out, "hi", 2) == 0);
        off += rl;
        memset(out, 0x77, sizeof out);
        CU_ASSERT(s3_rec_open(up, in + off, n - off, NULL, 0, &rl, &L) ==
                  S3_OK);
        CU_ASSERT(rl == 93 && L == -57);
        off += rl;
        CU_ASSERT(off == n);
        CU_ASSERT(s3_dir_counter(up) == 6);
        CU_ASSERT(s3_rec_open(up, in + off, 0, out, sizeof out, &rl, &L) ==
                  S3_EAGAIN);
        CU_ASSERT(rl == 24);

        n = unhex(HEX_REC_WORLD, in, sizeof in);
        /* The up key does not open the down direction. */
        struct s3_dir *wrong = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
        CU_ASSERT(s3_rec_open(wrong, in, n, out, sizeof out, &rl, &L) ==
                  S3_ELENAUTH);
        s3_dir_free(wrong);
        /* Not enough room: S3_ENOSPC, nothing consumed, then success. */
        CU_ASSERT(s3_rec_open(dn, in, n, out, 4, &rl, &L) == S3_ENOSPC);
        CU_ASSERT(rl == 41 && L == 5 && s3_dir_counter(dn) == 0);
        /* In place: plaintext lands at in + 20. */
        CU_ASSERT(s3_rec_open(dn, in, n, in + 20, 5, &rl, &L) == S3_OK);
        CU_ASSERT(L == 5 && memcmp(in + 20, "world", 5) == 0);
        /* Wrong role. */
        CU_ASSERT(s3_rec_seal(dn, out, 1, out, sizeof out) == S3_EINVAL);
        s3_dir_free(up);
        s3_dir_free(dn);
    }
}

static void
test_records_truncated(void)
{
    for (size_t b = 0; b < N_BACKENDS; b++) {
        struct s3_dir *up = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
        uint8_t in[256], out[256];
        size_t n = client_stream(in, sizeof in), rl = 0;
        int32_t L = 0;

        /* Every proper prefix of each record is "need more". */
        for (size_t k = 0; k < 41; k++) {
            CU_ASSERT(s3_rec_open(up, in, k, out, sizeof out, &rl, &L) ==
                      S3_EAGAIN);
            CU_ASSERT(rl == (k < 24 ? 24u : 41u));
            CU_ASSERT(L == (k < 24 ? 0 : 5));
            CU_ASSERT(s3_dir_counter(up) == 0);
        }
        /* Peek waits for 24 bytes, not 20 (spec §7.3 step 1). */
        CU_ASSERT(s3_rec_peek(up, in, 23, &rl, &L) == S3_EAGAIN);
        CU_ASSERT(s3_rec_open(up, in, 41, out, sizeof out, &rl, &L) ==
                  S3_OK);
        for (size_t k = 0; k < 38; k++)
            CU_ASSERT(s3_rec_open(up, in + 41, k, out, sizeof out, &rl,
                                  &L) == S3_EAGAIN);
        CU_ASSERT(s3_rec_open(up, in + 41, 38, out, sizeof out, &rl, &L) ==
                  S3_OK);
        CU_ASSERT(L == 2 && s3_dir_counter(up) == 4);
        /* A padding record needs its whole body too. */
        for (size_t k = 0; k < 93; k++) {
            CU_ASSERT(s3_rec_open(up, in + 79, k, NULL, 0, &rl, &L) ==
                      S3_EAGAIN);
            CU_ASSERT(rl == (k < 24 ? 24u : 93u));
        }
        CU_ASSERT(s3_rec_open(up, in + 79, n - 79, out, 0, &rl, &L) ==
                  S3_OK);
        CU_ASSERT(L == -57);
        s3_dir_free(up);
    }
}

static void
test_records_tampered(void)
{
    for (size_t b = 0; b < N_BACKENDS; b++) {
        uint8_t in[256], bad[256], out[256];
        size_t n = client_stream(in, sizeof in), rl = 0;
        int32_t L = 0;

        /* Flip one bit of each byte of "hello" and of the padding record. */
        for (size_t i = 0; i < n; i++) {
            struct s3_dir *up = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
            size_t start = i < 41 ? 0 : i < 79 ? 41 : 79;
            size_t len = i < 41 ? 41 : i < 79 ? 38 : 93;
            int want = i - start < 20 ? S3_ELENAUTH : S3_EBODYAUTH;

            memcpy(bad, in, n);
            bad[i] ^= (uint8_t)(1u << (i % 8));
            /* Bring the state to the record's counter. */
            for (size_t off = 0; off < start;) {
                CU_ASSERT_FATAL(s3_rec_open(up, in + off, n - off, out,
                                            sizeof out, &rl, &L) == S3_OK);
                off += rl;
            }
            rl = 12345;
            memset(out, 0x77, sizeof out);
            CU_ASSERT(s3_rec_open(up, bad + start, len, out, sizeof out, &rl,
                                  &L) == want);
            CU_ASSERT(rl == 12345); /* untouched on failure */
            /* No unauthenticated plaintext escapes. */
            CU_ASSERT(memcmp(out, "hello", 5) != 0);
            /* The failure is sticky, even for the good bytes. */
            CU_ASSERT(s3_rec_open(up, in + start, len, out, sizeof out, &rl,
                                  &L) == want);
            s3_dir_free(up);
        }
    }
}

/* Encrypt a bare header int32_le(L) at counter 0: a record header only. */
static void
forge_header(const uint8_t key[32], int32_t L, uint8_t out[24])
{
    uint8_t hdr[4], nonce[12] = {0};

    for (int i = 0; i < 4; i++)
        hdr[i] = (uint8_t)((uint32_t)L >> (8 * i));
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        out, out + 4, NULL, hdr, 4, NULL, 0, NULL, nonce, key);
    memset(out + 20, 0, 4);
}

static void
test_records_limits(void)
{
    size_t big = S3_REC_MAX_BODY;
    uint8_t *data = malloc(big + 1);
    uint8_t *wire = malloc(2 * (big + 1) + 4 * S3_REC_OVERHEAD);
    uint8_t *out = malloc(big + 1);
    uint8_t key[32];

    CU_ASSERT_FATAL(data != NULL && wire != NULL && out != NULL);
    unhex(HEX_KEY_UP, key, 32);
    for (size_t i = 0; i <= big; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    for (size_t b = 0; b < N_BACKENDS; b++) {
        struct s3_dir *s = dir(HEX_KEY_UP, S3_SEAL, BACKENDS[b]);
        struct s3_dir *o = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
        size_t rl = 0, n = 0;
        int32_t L = 0;
        uint8_t hdr[24];

        /* Exactly 1 MiB, as data and as padding, is accepted. */
        CU_ASSERT_FATAL(s3_rec_seal(s, data, big, wire,
                                    big + S3_REC_OVERHEAD) == S3_OK);
        CU_ASSERT(s3_rec_open(o, wire, big + S3_REC_OVERHEAD, out, big, &rl,
                              &L) == S3_OK);
        CU_ASSERT(L == (int32_t)big && rl == big + S3_REC_OVERHEAD);
        CU_ASSERT(memcmp(out, data, big) == 0);
        CU_ASSERT_FATAL(s3_rec_seal_padding(s, big, wire,
                                            big + S3_REC_OVERHEAD) == S3_OK);
        CU_ASSERT(s3_rec_open(o, wire, big + S3_REC_OVERHEAD, NULL, 0, &rl,
                              &L) == S3_OK);
        CU_ASSERT(L == -(int32_t)big);
        /* We never send more... */
        CU_ASSERT(s3_rec_seal(s, data, big + 1, wire, 2 * big) == S3_EINVAL);
        CU_ASSERT(s3_rec_seal_padding(s, big + 1, wire, 2 * big) ==
                  S3_EINVAL);
        /* ...but split a larger write into 1 MiB + 1 byte records. */
        CU_ASSERT(s3_write_size(big + 1, false, 0) ==
                  big + 1 + 2 * S3_REC_OVERHEAD);
        CU_ASSERT(s3_write_seal(s, data, big + 1, true, 9, wire,
                                2 * (big + 1) + 4 * S3_REC_OVERHEAD,
                                &n) == S3_OK);
        CU_ASSERT(n == big + 1 + 2 * S3_REC_OVERHEAD);
        CU_ASSERT(s3_rec_open(o, wire, n, out, big + 1, &rl, &L) == S3_OK);
        CU_ASSERT(L == (int32_t)big && memcmp(out, data, big) == 0);
        CU_ASSERT(s3_rec_open(o, wire + rl, n - rl, out, big, &rl, &L) ==
                  S3_OK);
        CU_ASSERT(L == 1 && out[0] == data[big]);
        s3_dir_free(s);
        s3_dir_free(o);

        /* A forged header of 1 MiB + 1 is refused from 24 bytes on. */
        const int32_t too_big[] = {(int32_t)big + 1, -(int32_t)big - 1,
                                   INT32_MIN, INT32_MAX};
        for (size_t i = 0; i < 4; i++) {
            o = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
            forge_header(key, too_big[i], hdr);
            CU_ASSERT(s3_rec_open(o, hdr, 24, out, big, &rl, &L) ==
                      S3_ETOOBIG);
            CU_ASSERT(s3_rec_peek(o, hdr, 24, &rl, &L) == S3_ETOOBIG);
            s3_dir_free(o);
        }
        o = dir(HEX_KEY_UP, S3_OPEN, BACKENDS[b]);
        forge_header(key, -(int32_t)big, hdr);
        CU_ASSERT(s3_rec_peek(o, hdr, 24, &rl, &L) == S3_OK);
        CU_ASSERT(rl == big + S3_REC_OVERHEAD && L == -(int32_t)big);
        s3_dir_free(o);
    }
    free(data);
    free(wire);
    free(out);
}

/*
 * All backends produce the same bytes and open each other's records; the
 * sizes straddle the HYBRID switch at 128 bytes.
 */
static void
test_backends_agree(void)
{
    static const enum s3_aead seal_with[3] = {
        S3_AEAD_OPENSSL, S3_AEAD_SODIUM, S3_AEAD_HYBRID};
    static const enum s3_aead open_with[3] = {
        S3_AEAD_SODIUM, S3_AEAD_HYBRID, S3_AEAD_OPENSSL};
    const size_t sizes[] = {0, 1, 15, 16, 63, 64, 65, 127, 128, 129, 4095,
                            4096, 4097, 16384, 100000};
    size_t max = 100000 + S3_REC_OVERHEAD;
    uint8_t *data = malloc(max), *o = malloc(max), *w[3];
    struct s3_dir *sd[3], *od[3];
    uint8_t key[32];

    CU_ASSERT_FATAL(data != NULL && o != NULL);
    randombytes_buf(key, sizeof key);
    randombytes_buf(data, max);
    for (int k = 0; k < 3; k++) {
        w[k] = malloc(max);
        CU_ASSERT_FATAL(w[k] != NULL);
        CU_ASSERT_FATAL(s3_dir_new(key, S3_SEAL, seal_with[k], &sd[k]) ==
                        S3_OK);
        CU_ASSERT_FATAL(s3_dir_new(key, S3_OPEN, open_with[k], &od[k]) ==
                        S3_OK);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i], p = (n * 7) % 300, rl = 0;
        int32_t L = 0;

        for (int k = 0; k < 3; k++)
            CU_ASSERT(s3_rec_seal(sd[k], data, n, w[k], max) == S3_OK);
        CU_ASSERT(memcmp(w[0], w[1], n + S3_REC_OVERHEAD) == 0);
        CU_ASSERT(memcmp(w[0], w[2], n + S3_REC_OVERHEAD) == 0);
        for (int k = 0; k < 3; k++) {
            memset(o, 0, n);
            CU_ASSERT(s3_rec_open(od[k], w[k], n + S3_REC_OVERHEAD, o, max,
                                  &rl, &L) == S3_OK);
            CU_ASSERT(L == (int32_t)n && memcmp(o, data, n) == 0);
        }
        for (int k = 0; k < 3; k++)
            CU_ASSERT(s3_rec_seal_padding(sd[k], p, w[k], max) == S3_OK);
        CU_ASSERT(memcmp(w[0], w[1], p + S3_REC_OVERHEAD) == 0);
        CU_ASSERT(memcmp(w[0], w[2], p + S3_REC_OVERHEAD) == 0);
        for (int k = 0; k < 3; k++) {
            CU_ASSERT(s3_rec_open(od[k], w[k], max, NULL, 0, &rl, &L) ==
                      S3_OK);
            CU_ASSERT(rl == p + S3_REC_OVERHEAD && L == -(int32_t)p);
        }
    }
    for (int k = 0; k < 3; k++) {
        CU_ASSERT(s3_dir_counter(sd[k]) == s3_dir_counter(od[k]));
        s3_dir_free(sd[k]);
        s3_dir_free(od[k]);
        free(w[k]);
    }
    CU_ASSERT_STRING_EQUAL(s3_aead_name(S3_AEAD_DEFAULT), "hybrid");
    free(data);
    free(o);
}

static void
test_obfs_lengths(void)
{
    size_t p = 0;

    CU_ASSERT(s3_obfs_pad_len(2, 3, &p) && p == 57);
    /* Empty write: orig 36, next_power_of_two(72) = 128. */
    CU_ASSERT(s3_obfs_pad_len(0, 0, &p) && p == 56);
    CU_ASSERT(s3_obfs_pad_len(0, 9, &p) && p == 65);
    /* orig + 36 = 128 exactly: an empty padding record (spec §13.11). */
    CU_ASSERT(s3_obfs_pad_len(56, 0, &p) && p == 0);
    CU_ASSERT(s3_obfs_pad_len(57, 0, &p) && p == 256 - 57 - 72);
    /* orig + 36 = 1025: the largest padding, 1032 with r = 9. */
    CU_ASSERT(s3_obfs_pad_len(953, 9, &p) && p == 1032);
    CU_ASSERT(s3_obfs_pad_len(1963, 0, &p) && p == 2048 - 1963 - 72);
    CU_ASSERT(!s3_obfs_pad_len(1964, 0, &p));
    CU_ASSERT(!s3_obfs_pad_len(100000, 5, &p));
    /* Every write below the threshold lands on 2^k + r total bytes. */
    for (size_t len = 0; len < 1964; len++) {
        for (unsigned r = 0; r <= 9; r++) {
            size_t total = s3_write_size(len, true, r) - r;
            CU_ASSERT((total & (total - 1)) == 0);
        }
    }
    CU_ASSERT(s3_write_size(0, false, 0) == 36);
    CU_ASSERT(s3_write_size(0, true, 0) == 128);
    CU_ASSERT(s3_write_size(5, true, 10) == 0);
    CU_ASSERT(s3_write_size(3000, true, 4) == 3036);
}

/* ---- Cookie parsing -------------------------------------------------- */

struct cookie_case {
    const char *text;
    const char *secret;
    bool lengths, timing;
};

static void
test_cookie_cases(void)
{
    static const struct cookie_case cases[] = {
        {"mysecret---[true,false]", "mysecret", true, false},
        {"mysecret---[false,true]", "mysecret", false, true},
        {"mysecret---{\"obfs_lengths\":true}", "mysecret", false, false},
        {"mysecret---{\"obfs_timing\":true}", "mysecret", false, false},
        {"a---b---{\"obfs_lengths\":true,\"obfs_timing\":true}", "a", false,
         false},
        {"a---{\"obfs_lengths\":1,\"obfs_timing\":0}", "a", false, false},
        {"a---{\"obfs_lengths\":\"true\",\"obfs_timing\":false}", "a", false,
         false},
        {"a---{\"obfs_lengths\":null,\"obfs_timing\":false}", "a", false,
         false},
        {"a---{\"obfs_lengths\":true,\"obfs_timing\":true}", "a", true, true},
        {"a--- {\n\"obfs_timing\" : false ,\t\"obfs_lengths\":true }\r\n",
         "a", true, false},
        /* Unknown fields of any type are ignored. */
        {"a---{\"x\":[1,{\"y\":null}],\"obfs_lengths\":true,"
         "\"obfs_timing\":false,\"z\":-1.5e3}",
         "a", true, false},
        {"a---{\"big\":123456789012345678901234567890,"
         "\"obfs_lengths\":true,\"obfs_timing\":false}",
         "a", true, false},
        /* serde refuses a repeated field: defaults. */
        {"a---{\"obfs_lengths\":true,\"obfs_timing\":false,"
         "\"obfs_lengths\":true}",
         "a", false, false},
        {"a---{\"obfs_lengths\":true,\"obfs_timing\":true,"
         "\"obfs_timing\":true}",
         "a", false, false},
        /* ...but a repeated unknown key, even nested, is fine. */
        {"a---{\"x\":1,\"x\":2,\"obfs_lengths\":true,\"obfs_timing\":true}",
         "a", true, true},
        {"a---{\"obfs_lengths\":true,\"n\":{\"obfs_lengths\":1,"
         "\"obfs_lengths\":2},\"obfs_timing\":false}",
         "a", true, false},
        /* Keys are compared after unescaping. */
        {"a---{\"obfs\\u005flengths\":true,\"obfs_timing\":false}", "a", true,
         false},
        {"a---{\"obfs\\u005flengths\":true,\"obfs_timing\":false,"
         "\"obfs_lengths\":true}",
         "a", false, false},
        {"a---{\"q\\\"\":\"obfs_lengths\",\"obfs_lengths\":true,"
         "\"obfs_timing\":false}",
         "a", true, false},
        {"a---{\"obfs_lengths\":true,\"obfs_timing\":false,"
         "\"s\":\"\\u0000\"}",
         "a", true, false},
        /* Documented divergence: Jansson refuses NUL in keys, serde would
         * ignore the unknown key; we fall back to the defaults. */
        {"a---{\"obfs_lengths\\u0000\":false,\"obfs_lengths\":true,"
         "\"obfs_timing\":false}",
         "a", false, false},
        /* Not JSON, or not ObfsParams: defaults. */
        {"a---{\"obfs_lengths\":true,\"obfs_timing\":false}x", "a", false,
         false},
        {"a---{\"obfs_lengths\":true,\"obfs_timing\":false,}", "a", false,
         false},
        {"a---[true]", "a", false, false},
        {"a---[true,false,true]", "a", false, false},
        {"a---[1,0]", "a", false, false},
        {"a---[]", "a", false, false},
        {"a---null", "a", false, false},
        {"a---true", "a", false, false},
        {"a---", "a", false, false},
        {"---[true,true]", "", true, true},
        {"ab--c", "ab--c", false, false},
        {"ab--c----[true,true]", "ab--c", false, false},
        {"0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef",
         false, false},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct cookie_case *c = &cases[i];
        struct s3_cookie got;
        uint8_t key[32];
        int ok;

        CU_ASSERT_FATAL(s3_cookie_parse(c->text, strlen(c->text), &got) ==
                        S3_OK);
        blake3_derive_key(key, "cookie", c->secret, strlen(c->secret));
        ok = memcmp(key, got.key, 32) == 0 &&
             got.obfs_lengths == c->lengths && got.obfs_timing == c->timing;
        if (!ok)
            fprintf(stderr, "\n  cookie case %zu (%s): %d %d\n", i, c->text,
                    got.obfs_lengths, got.obfs_timing);
        CU_ASSERT(ok);
        s3_cookie_wipe(&got);
    }
    /* The length is honoured: no NUL terminator needed. */
    {
        struct s3_cookie a, b;
        CU_ASSERT(s3_cookie_parse("test-cookieXYZ", 11, &a) == S3_OK);
        spec_cookie(&b);
        CU_ASSERT(memcmp(a.key, b.key, 32) == 0);
        CU_ASSERT(s3_cookie_parse("a---[true,true]]", 15, &a) == S3_OK);
        CU_ASSERT(a.obfs_lengths && a.obfs_timing);
    }
}

int
main(void)
{
    CU_pSuite suite;
    unsigned failures;

    if (sodium_init() < 0)
        return 2;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    suite = CU_add_suite("s3-crypto", NULL, NULL);
    if (suite == NULL ||
        !CU_add_test(suite, "keys (spec 11.1)", test_keys) ||
        !CU_add_test(suite, "x25519 and session keys (11.4)", test_x25519) ||
        !CU_add_test(suite, "handshakes (11.2, 11.3)", test_handshake_spec) ||
        !CU_add_test(suite, "handshake failures", test_handshake_failures) ||
        !CU_add_test(suite, "random handshakes", test_handshake_random) ||
        !CU_add_test(suite, "records sealed (11.5)", test_records_spec) ||
        !CU_add_test(suite, "records opened (11.5)", test_records_open) ||
        !CU_add_test(suite, "truncated records", test_records_truncated) ||
        !CU_add_test(suite, "tampered records", test_records_tampered) ||
        !CU_add_test(suite, "1 MiB limit", test_records_limits) ||
        !CU_add_test(suite, "backends agree", test_backends_agree) ||
        !CU_add_test(suite, "obfs_lengths", test_obfs_lengths) ||
        !CU_add_test(suite, "cookie parsing", test_cookie_cases)) {
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failures = CU_get_number_of_failures() +
               CU_get_run_summary()->nSuitesFailed;
    CU_cleanup_registry();
    return failures == 0 ? 0 : 1;
}
