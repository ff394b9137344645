/*
 * fuzz-s3-handshake.c: libFuzzer target for the sosistab3 handshake
 * parser and the cookie parser.
 *
 * Every input is used three ways: as a received handshake (140 bytes and
 * padding) opened with the spec's fixed handshake keys, so that the seed
 * corpus holds valid messages; as a 112-byte plaintext that is sealed and
 * opened again, which reaches the field checks a random tag never passes;
 * and as a cookie string.  Invariant violations abort.  Memory use is
 * bounded by the input size.
 *
 * build: clang -fsanitize=fuzzer,address,undefined -Icommon
 *        -Iplugins/sosistab3 t/fuzz/fuzz-s3-handshake.c
 *        plugins/sosistab3/s3-crypto.c common/blake3.c
 *        -lsodium -ljansson -lcrypto
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "s3-crypto.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* hs_key_c and hs_key_s of the spec's cookie "test-cookie" (§11.1). */
static const uint8_t KEYS[2][32] = {
    {0x5f, 0xdf, 0xb2, 0x3b, 0xba, 0x39, 0x8f, 0x1a, 0xc4, 0xe0, 0x01,
     0x5d, 0xb2, 0xe7, 0xda, 0x01, 0x6a, 0x7c, 0x4b, 0xee, 0x54, 0x45,
     0x0c, 0xaa, 0xb2, 0xb1, 0x60, 0xbf, 0xe7, 0xb3, 0x61, 0x17},
    {0x56, 0xb6, 0x06, 0xc4, 0xaa, 0xb4, 0x88, 0x10, 0x78, 0x1b, 0x18,
     0x52, 0x79, 0x13, 0x12, 0xb9, 0xc1, 0x55, 0x5c, 0x65, 0x37, 0x50,
     0x21, 0x95, 0x43, 0x92, 0xb5, 0x38, 0xbd, 0x3c, 0x3a, 0x72},
};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (sodium_init() < 0)
        abort();
    return 0;
}

static void
received(const uint8_t *data, size_t size)
{
    struct s3_hs hs;

    if (size < S3_HS_LEN)
        return;
    for (int k = 0; k < 2; k++) {
        int r = s3_hs_open(KEYS[k], data, &hs);
        if (r == S3_EHSAUTH || r == S3_EHSPADLEN)
            continue;
        if (r != S3_OK || hs.padding_len > S3_HS_PAD_RECV_MAX)
            abort();
        /* What a receiver does next; results may be anything. */
        (void)s3_hs_check_padding(&hs, data + S3_HS_LEN, size - S3_HS_LEN);
        (void)s3_hs_check_reply(&hs, data);
        (void)s3_hs_check_time(hs.timestamp, 1700000000u);
    }
}

static void
round_trip(const uint8_t *data, size_t size)
{
    uint8_t plain[S3_HS_PLAIN_LEN] = {0}, again[S3_HS_PLAIN_LEN];
    uint8_t msg[S3_HS_LEN];
    unsigned long long clen;
    struct s3_hs hs, got;
    int r;

    memcpy(plain, data, size < sizeof plain ? size : sizeof plain);
    s3_hs_decode(plain, &hs);
    s3_hs_encode(&hs, again);
    if (memcmp(plain, again, sizeof plain) != 0)
        abort();
    /* Seal the raw plaintext as a peer would and parse it back. */
    memset(msg, 0xa5, S3_NONCE_LEN);
    crypto_aead_chacha20poly1305_ietf_encrypt(msg + S3_NONCE_LEN, &clen,
                                              plain, sizeof plain, NULL, 0,
                                              NULL, msg, KEYS[0]);
    r = s3_hs_open(KEYS[0], msg, &got);
    if (hs.padding_len > S3_HS_PAD_RECV_MAX) {
        if (r != S3_EHSPADLEN)
            abort();
    } else if (r != S3_OK || memcmp(&got, &hs, sizeof hs) != 0) {
        abort();
    }
    if (s3_hs_open(KEYS[1], msg, &got) != S3_EHSAUTH)
        abort();
}

static void
cookie(const uint8_t *data, size_t size)
{
    struct s3_cookie c;

    if (s3_cookie_parse((const char *)data, size, &c) == S3_OK)
        s3_cookie_wipe(&c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    received(data, size);
    round_trip(data, size);
    cookie(data, size);
    return 0;
}
