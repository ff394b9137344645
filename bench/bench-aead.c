/*
 * bench-aead.c: ChaCha20-Poly1305 throughput, OpenSSL EVP vs libsodium.
 *
 * Prints MB/s (10^6 bytes of plaintext per second) for sealing records of
 * 16 KiB (or argv[1] bytes): the bare AEAD of each library, then the s3
 * record sealer and opener on each backend (OpenSSL, libsodium and the
 * size-based hybrid), and the ratios.  Each figure is
 * the best of several rounds, the rounds interleaving the backends so that
 * a noisy neighbour hurts both alike.  It asserts nothing about speed; it
 * exits non-zero only if something fails to work.
 *
 * usage: bench-aead [record_bytes [seconds_per_measurement]]
 */
/* clock_gettime under -std=c11. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "s3-crypto.h"

#define ROUNDS 5

struct bench {
    size_t len;             /* record plaintext bytes */
    double seconds;         /* wall time per measurement */
    uint8_t key[32];
    uint8_t *data, *out;
    uint8_t *wire;          /* pre-sealed records for the opener */
    size_t wire_len, wire_records;
    EVP_CIPHER_CTX *evp;
};

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
nonce_of(uint8_t nonce[12], uint64_t n)
{
    memset(nonce, 0, 12);
    for (int i = 0; i < 8; i++)
        nonce[i] = (uint8_t)(n >> (8 * i));
}

/* One bare EVP seal, the same calls s3-crypto makes per AEAD use. */
static int
evp_seal(struct bench *b, uint64_t n)
{
    uint8_t nonce[12], tag[16], fin[16];
    int outl, finl;

    nonce_of(nonce, n);
    if (EVP_CipherInit_ex(b->evp, NULL, NULL, NULL, nonce, -1) != 1 ||
        EVP_CipherUpdate(b->evp, b->out, &outl, b->data, (int)b->len) != 1 ||
        EVP_CipherFinal_ex(b->evp, fin, &finl) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->evp, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
        return -1;
    return 0;
}

static int
sodium_seal(struct bench *b, uint64_t n)
{
    uint8_t nonce[12], tag[16];

    nonce_of(nonce, n);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        b->out, tag, NULL, b->data, b->len, NULL, 0, NULL, nonce, b->key);
    return 0;
}

enum kind { RAW_EVP, RAW_SODIUM, S3_SEALER, S3_OPENER };

struct item {
    const char *name;
    enum kind kind;
    enum s3_aead aead;
};

static const struct item ITEMS[] = {
    {"raw seal, OpenSSL EVP", RAW_EVP, S3_AEAD_OPENSSL},
    {"raw seal, libsodium", RAW_SODIUM, S3_AEAD_SODIUM},
    {"s3 record seal, OpenSSL", S3_SEALER, S3_AEAD_OPENSSL},
    {"s3 record seal, libsodium", S3_SEALER, S3_AEAD_SODIUM},
    {"s3 record seal, hybrid", S3_SEALER, S3_AEAD_HYBRID},
    {"s3 record open, OpenSSL", S3_OPENER, S3_AEAD_OPENSSL},
    {"s3 record open, libsodium", S3_OPENER, S3_AEAD_SODIUM},
    {"s3 record open, hybrid", S3_OPENER, S3_AEAD_HYBRID},
};
#define N_ITEMS (sizeof ITEMS / sizeof ITEMS[0])
enum { I_RAW_EVP, I_RAW_SODIUM, I_SEAL_EVP, I_SEAL_SODIUM, I_SEAL_HYBRID,
       I_OPEN_EVP, I_OPEN_SODIUM, I_OPEN_HYBRID };

/* MB/s of one measurement, or a negative value on failure. */
static double
measure(struct bench *b, const struct item *it)
{
    struct s3_dir *d = NULL;
    uint64_t records = 0;
    double t0 = now(), t;
    size_t off = 0, rl = 0;
    int32_t L;

    if (it->kind == S3_SEALER &&
        s3_dir_new(b->key, S3_SEAL, it->aead, &d) != S3_OK)
        return -1;
    do {
        for (int i = 0; i < 64; i++, records++) {
            int r = 0;
            switch (it->kind) {
            case RAW_EVP:
                r = evp_seal(b, records);
                break;
            case RAW_SODIUM:
                r = sodium_seal(b, records);
                break;
            case S3_SEALER:
                r = s3_rec_seal(d, b->data, b->len, b->out,
                                b->len + S3_REC_OVERHEAD);
                break;
            case S3_OPENER:
                if (d == NULL || off == b->wire_len) {
                    /* Start the pre-sealed stream over at counter 0. */
                    s3_dir_free(d);
                    d = NULL;
                    off = 0;
                    if (s3_dir_new(b->key, S3_OPEN, it->aead, &d) != S3_OK)
                        return -1;
                }
                r = s3_rec_open(d, b->wire + off, b->wire_len - off, b->out,
                                b->len, &rl, &L);
                off += rl;
                break;
            }
            if (r != 0) {
                s3_dir_free(d);
                return -1;
            }
        }
        t = now() - t0;
    } while (t < b->seconds);
    s3_dir_free(d);
    return (double)records * (double)b->len / t / 1e6;
}

static int
setup(struct bench *b)
{
    struct s3_dir *d = NULL;
    size_t rec = b->len + S3_REC_OVERHEAD;

    randombytes_buf(b->key, sizeof b->key);
    b->data = malloc(b->len);
    b->out = malloc(rec);
    /* About 1 MiB of records for the opener to cycle through. */
    b->wire_records = (1u << 20) / rec + 1;
    b->wire_len = b->wire_records * rec;
    b->wire = malloc(b->wire_len);
    if (b->data == NULL || b->out == NULL || b->wire == NULL)
        return -1;
    randombytes_buf(b->data, b->len);
    if (s3_dir_new(b->key, S3_SEAL, S3_AEAD_SODIUM, &d) != S3_OK)
        return -1;
    for (size_t i = 0; i < b->wire_records; i++)
        if (s3_rec_seal(d, b->data, b->len, b->wire + i * rec, rec) != 0)
            return -1;
    s3_dir_free(d);
    if ((b->evp = EVP_CIPHER_CTX_new()) == NULL ||
        EVP_EncryptInit_ex(b->evp, EVP_chacha20_poly1305(), NULL, b->key,
                           NULL) != 1)
        return -1;
    return 0;
}

int
main(int argc, char **argv)
{
    struct bench b = {.len = 16384, .seconds = 0.4};
    double best[N_ITEMS] = {0};
    int rc = 1;

    if (argc > 1)
        b.len = strtoul(argv[1], NULL, 10);
    if (argc > 2)
        b.seconds = strtod(argv[2], NULL);
    if (b.len == 0 || b.len > S3_REC_MAX_BODY || b.seconds <= 0) {
        fprintf(stderr, "usage: bench-aead [1..1048576 [seconds]]\n");
        return 2;
    }
    if (sodium_init() < 0 || setup(&b) != 0) {
        fprintf(stderr, "bench-aead: setup failed\n");
        goto out;
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (size_t i = 0; i < N_ITEMS; i++) {
            double mbs = measure(&b, &ITEMS[i]);
            if (mbs < 0) {
                fprintf(stderr, "bench-aead: %s failed\n", ITEMS[i].name);
                goto out;
            }
            if (mbs > best[i])
                best[i] = mbs;
        }
    }
    printf("ChaCha20-Poly1305, %zu-byte records, best of %d x %.2f s\n",
           b.len, ROUNDS, b.seconds);
    printf("  %s, libsodium %s\n", OpenSSL_version(OPENSSL_VERSION),
           sodium_version_string());
    for (size_t i = 0; i < N_ITEMS; i++)
        printf("  %-28s %9.1f MB/s\n", ITEMS[i].name, best[i]);
    printf("ratios:\n");
    printf("  raw seal   OpenSSL / libsodium   %.2f\n",
           best[I_RAW_EVP] / best[I_RAW_SODIUM]);
    printf("  s3 seal    OpenSSL / libsodium   %.2f\n",
           best[I_SEAL_EVP] / best[I_SEAL_SODIUM]);
    printf("  s3 seal    hybrid  / OpenSSL     %.2f\n",
           best[I_SEAL_HYBRID] / best[I_SEAL_EVP]);
    printf("  s3 open    OpenSSL / libsodium   %.2f\n",
           best[I_OPEN_EVP] / best[I_OPEN_SODIUM]);
    printf("  s3 open    hybrid  / OpenSSL     %.2f\n",
           best[I_OPEN_HYBRID] / best[I_OPEN_EVP]);
    printf("  s3 seal / raw seal, OpenSSL      %.2f\n",
           best[I_SEAL_EVP] / best[I_RAW_EVP]);
    printf("  s3 seal / raw seal, libsodium    %.2f\n",
           best[I_SEAL_SODIUM] / best[I_RAW_SODIUM]);
    printf("  default backend: %s\n", s3_aead_name(S3_AEAD_DEFAULT));
    rc = 0;
out:
    EVP_CIPHER_CTX_free(b.evp);
    free(b.data);
    free(b.out);
    free(b.wire);
    return rc;
}
