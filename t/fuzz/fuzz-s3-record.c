/*
 * fuzz-s3-record.c: libFuzzer target for the sosistab3 record parser.
 *
 * Two uses of every input:
 *
 * 1. As received bytes, opened record by record with the spec's fixed
 *    direction keys (key_up, then key_dn) on all three backends, which must
 *    agree on every status, length and plaintext.  The seed corpus holds
 *    the spec's records, so the fuzzer starts past the length check.
 *
 * 2. As a script: byte 0 picks obfs_lengths and the backends, then each
 *    byte n starts a write of the next n bytes.  The writes are sealed and
 *    the stream is opened again in growing windows whose steps come from
 *    the input, to exercise "need more" at every offset; the plaintext must
 *    come back exactly.
 *
 * Invariant violations abort.  Memory is bounded by the input size (at
 * most 64 writes of at most 255 bytes each in the script).
 *
 * build: clang -fsanitize=fuzzer,address,undefined -Icommon
 *        -Iplugins/sosistab3 t/fuzz/fuzz-s3-record.c
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

#define MAX_WRITES 64

/* key_up and key_dn of the spec's example session (§11.4). */
static const uint8_t KEYS[2][32] = {
    {0x25, 0xba, 0xf2, 0xc4, 0x2f, 0x36, 0x94, 0x1c, 0x79, 0x93, 0xea,
     0x78, 0x70, 0xff, 0x4c, 0xe3, 0x09, 0x1e, 0x38, 0x88, 0xac, 0xb6,
     0x20, 0x10, 0x05, 0x48, 0x21, 0xf8, 0x40, 0x43, 0x93, 0x6f},
    {0x62, 0x34, 0xb3, 0xd2, 0xea, 0xa1, 0xd6, 0x7f, 0x79, 0x63, 0xad,
     0x00, 0x98, 0x0c, 0x0f, 0xea, 0x8d, 0xc1, 0x9b, 0xa0, 0x56, 0x25,
     0xc6, 0x36, 0xde, 0x90, 0x05, 0x91, 0xe8, 0x48, 0x52, 0x21},
};

static const enum s3_aead AEADS[3] = {S3_AEAD_OPENSSL, S3_AEAD_SODIUM,
                                      S3_AEAD_HYBRID};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (sodium_init() < 0)
        abort();
    return 0;
}

static struct s3_dir *
new_dir(const uint8_t key[32], enum s3_role role, enum s3_aead aead)
{
    struct s3_dir *d = NULL;

    if (s3_dir_new(key, role, aead, &d) != S3_OK)
        abort();
    return d;
}

/* Use 1: received bytes, differential across backends. */
static void
received(const uint8_t *data, size_t size)
{
    /* A record body never exceeds what is buffered. */
    uint8_t *out[3];

    for (int b = 0; b < 3; b++)
        if ((out[b] = malloc(size + 1)) == NULL)
            abort();
    for (int k = 0; k < 2; k++) {
        struct s3_dir *d[3];
        size_t off = 0;

        for (int b = 0; b < 3; b++)
            d[b] = new_dir(KEYS[k], S3_OPEN, AEADS[b]);
        for (;;) {
            int r[3];
            size_t rl[3] = {0, 0, 0};
            int32_t L[3] = {0, 0, 0};

            for (int b = 0; b < 3; b++)
                r[b] = s3_rec_open(d[b], data + off, size - off, out[b],
                                   size, &rl[b], &L[b]);
            for (int b = 1; b < 3; b++)
                if (r[b] != r[0] || rl[b] != rl[0] || L[b] != L[0])
                    abort();
            if (r[0] != S3_OK)
                break;
            if (rl[0] < S3_REC_OVERHEAD || rl[0] > size - off)
                abort();
            for (int b = 1; b < 3; b++)
                if (L[0] > 0 && memcmp(out[0], out[b], (size_t)L[0]) != 0)
                    abort();
            off += rl[0];
        }
        for (int b = 0; b < 3; b++)
            s3_dir_free(d[b]);
    }
    for (int b = 0; b < 3; b++)
        free(out[b]);
}

/* Use 2: seal a script of writes, reopen it in growing windows. */
static void
script(const uint8_t *data, size_t size)
{
    bool obfs;
    struct s3_dir *s, *o;
    uint8_t *wire, *plain, *got;
    size_t cap, wire_len = 0, plain_len = 0, got_len = 0, i = 1;
    int writes = 0;

    if (size < 1)
        return;
    obfs = data[0] & 1;
    s = new_dir(KEYS[0], S3_SEAL, AEADS[(data[0] >> 1) % 3]);
    o = new_dir(KEYS[0], S3_OPEN, AEADS[(data[0] >> 3) % 3]);
    /* Each write adds at most 2 headers and a padding body of <= 1032. */
    cap = size + MAX_WRITES * (2 * S3_REC_OVERHEAD + 1032 + 9);
    wire = malloc(cap);
    plain = malloc(size + 1);
    got = malloc(size + 1);
    if (wire == NULL || plain == NULL || got == NULL)
        abort();
    while (i < size && writes < MAX_WRITES) {
        size_t n = data[i++];
        unsigned r = (unsigned)(n % 10);
        size_t used = 0;

        if (n > size - i)
            n = size - i;
        if (s3_write_seal(s, data + i, n, obfs, r, wire + wire_len,
                          cap - wire_len, &used) != S3_OK ||
            used != s3_write_size(n, obfs, r))
            abort();
        memcpy(plain + plain_len, data + i, n);
        plain_len += n;
        wire_len += used;
        i += n;
        writes++;
    }
    /* Reveal the stream a few bytes at a time. */
    size_t off = 0, visible = 0, step_at = 0;
    while (off < wire_len) {
        size_t rl = 0;
        int32_t L = 0;
        int r = s3_rec_open(o, wire + off, visible - off, got + got_len,
                            size + 1 - got_len, &rl, &L);
        if (r == S3_OK) {
            if (L > 0)
                got_len += (size_t)L;
            off += rl;
            continue;
        }
        if (r != S3_EAGAIN || visible == wire_len || rl <= visible - off)
            abort();
        visible += 1 + data[step_at++ % size] % 97;
        if (visible > wire_len)
            visible = wire_len;
    }
    if (got_len != plain_len || memcmp(got, plain, plain_len) != 0 ||
        s3_dir_counter(o) != s3_dir_counter(s))
        abort();
    s3_dir_free(s);
    s3_dir_free(o);
    free(wire);
    free(plain);
    free(got);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    received(data, size);
    script(data, size);
    return 0;
}
