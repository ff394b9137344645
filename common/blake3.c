/*
 * blake3.c: portable BLAKE3, written from the BLAKE3 specification
 * (O'Connor, Aumasson, Neves, Wilcox-O'Hearn, 2020).
 *
 * Structure: input is cut into 1024-byte chunks, each chunk into 64-byte
 * blocks compressed in a chain; chunk chaining values (CVs) are merged
 * pairwise into a binary tree whose root is compressed with the ROOT flag
 * to produce any amount of output.  The CV stack holds the left subtrees
 * still waiting for a right sibling; it is merged lazily, only once more
 * input shows that the chunk just completed is not the last one, because
 * the last chunk (or parent) must be finalised with the ROOT flag instead.
 */
#include "blake3.h"

#include <string.h>

#include <sodium.h>

enum {
    CHUNK_START = 1u << 0,
    CHUNK_END = 1u << 1,
    PARENT = 1u << 2,
    ROOT = 1u << 3,
    KEYED_HASH = 1u << 4,
    DERIVE_KEY_CONTEXT = 1u << 5,
    DERIVE_KEY_MATERIAL = 1u << 6,
};

static const uint32_t IV[8] = {
    0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
    0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u,
};

/*
 * Message word order for each of the 7 rounds: round 0 is the identity and
 * each next row applies the BLAKE3 permutation
 * (2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8) to the previous one.  A table
 * instead of permuting m[] in place lets the compiler resolve every index
 * at compile time in the unrolled rounds.
 */
static const uint8_t SCHED[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

/* What finalisation needs to produce a CV or root output bytes. */
struct output {
    uint32_t cv[8];
    uint32_t block[16];
    uint64_t counter;
    uint8_t block_len;
    uint8_t flags;
};

static inline uint32_t
rotr32(uint32_t w, unsigned c)
{
    return (w >> c) | (w << (32 - c));
}

/* Byte-wise so that the code is endian- and alignment-neutral. */
static inline uint32_t
load32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline void
store32(uint8_t *p, uint32_t w)
{
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

static void
load_block(uint32_t m[16], const uint8_t *block)
{
    for (int i = 0; i < 16; i++)
        m[i] = load32(block + 4 * i);
}

#define G(a, b, c, d, x, y)                                                   \
    do {                                                                      \
        v[a] = v[a] + v[b] + (x);                                             \
        v[d] = rotr32(v[d] ^ v[a], 16);                                       \
        v[c] = v[c] + v[d];                                                   \
        v[b] = rotr32(v[b] ^ v[c], 12);                                       \
        v[a] = v[a] + v[b] + (y);                                             \
        v[d] = rotr32(v[d] ^ v[a], 8);                                        \
        v[c] = v[c] + v[d];                                                   \
        v[b] = rotr32(v[b] ^ v[c], 7);                                        \
    } while (0)

#define ROUND(r)                                                              \
    do {                                                                      \
        G(0, 4, 8, 12, m[SCHED[r][0]], m[SCHED[r][1]]);                       \
        G(1, 5, 9, 13, m[SCHED[r][2]], m[SCHED[r][3]]);                       \
        G(2, 6, 10, 14, m[SCHED[r][4]], m[SCHED[r][5]]);                      \
        G(3, 7, 11, 15, m[SCHED[r][6]], m[SCHED[r][7]]);                      \
        G(0, 5, 10, 15, m[SCHED[r][8]], m[SCHED[r][9]]);                      \
        G(1, 6, 11, 12, m[SCHED[r][10]], m[SCHED[r][11]]);                    \
        G(2, 7, 8, 13, m[SCHED[r][12]], m[SCHED[r][13]]);                     \
        G(3, 4, 9, 14, m[SCHED[r][14]], m[SCHED[r][15]]);                     \
    } while (0)

/*
 * The BLAKE3 compression function, leaving the full 16-word state in out.
 * The state and message live in local arrays with constant indices only,
 * so the compiler keeps them in registers; working through the caller's
 * pointers would force a reload after every store for fear of aliasing.
 */
static inline void
compress(uint32_t out[16], const uint32_t cv[8], const uint32_t msg[16],
         uint64_t counter, uint8_t block_len, uint8_t flags)
{
    uint32_t v[16], m[16];

    memcpy(m, msg, sizeof m);
    for (int i = 0; i < 8; i++)
        v[i] = cv[i];
    v[8] = IV[0];
    v[9] = IV[1];
    v[10] = IV[2];
    v[11] = IV[3];
    v[12] = (uint32_t)counter;
    v[13] = (uint32_t)(counter >> 32);
    v[14] = block_len;
    v[15] = flags;
    ROUND(0);
    ROUND(1);
    ROUND(2);
    ROUND(3);
    ROUND(4);
    ROUND(5);
    ROUND(6);
    memcpy(out, v, sizeof v);
}

/* Chaining-value form: only the first 8 output words are needed. */
static void
compress_cv(uint32_t cv[8], const uint32_t m[16], uint64_t counter,
            uint8_t block_len, uint8_t flags)
{
    uint32_t v[16];

    compress(v, cv, m, counter, block_len, flags);
    for (int i = 0; i < 8; i++)
        cv[i] = v[i] ^ v[i + 8];
}

static void
chunk_init(struct blake3_chunk *c, const uint32_t key[8], uint8_t flags,
           uint64_t counter)
{
    memcpy(c->cv, key, sizeof c->cv);
    c->counter = counter;
    memset(c->buf, 0, sizeof c->buf);
    c->buf_len = 0;
    c->blocks_done = 0;
    c->flags = flags;
}

static size_t
chunk_len(const struct blake3_chunk *c)
{
    return (size_t)c->blocks_done * BLAKE3_BLOCK_LEN + c->buf_len;
}

static uint8_t
chunk_start_flag(const struct blake3_chunk *c)
{
    return c->blocks_done == 0 ? CHUNK_START : 0;
}

static void
chunk_compress_block(struct blake3_chunk *c, const uint8_t *block)
{
    uint32_t m[16];

    load_block(m, block);
    compress_cv(c->cv, m, c->counter, BLAKE3_BLOCK_LEN,
                c->flags | chunk_start_flag(c));
    c->blocks_done++;
}

/*
 * Absorb at most the rest of this chunk.  A full block is compressed only
 * once more input follows it, because the chunk's last block carries
 * CHUNK_END (and maybe ROOT) and is compressed at finalisation.
 */
static void
chunk_update(struct blake3_chunk *c, const uint8_t *in, size_t len)
{
    while (len > 0) {
        if (c->buf_len == BLAKE3_BLOCK_LEN) {
            chunk_compress_block(c, c->buf);
            c->buf_len = 0;
            memset(c->buf, 0, sizeof c->buf);
        }
        /* Whole blocks straight from the input, skipping the copy. */
        while (c->buf_len == 0 && len > BLAKE3_BLOCK_LEN) {
            chunk_compress_block(c, in);
            in += BLAKE3_BLOCK_LEN;
            len -= BLAKE3_BLOCK_LEN;
        }
        size_t take = BLAKE3_BLOCK_LEN - c->buf_len;
        if (take > len)
            take = len;
        memcpy(c->buf + c->buf_len, in, take);
        c->buf_len += (uint8_t)take;
        in += take;
        len -= take;
    }
}

static void
chunk_output(const struct blake3_chunk *c, struct output *o)
{
    /* The unused tail of buf is kept zero, as the padding requires. */
    memcpy(o->cv, c->cv, sizeof o->cv);
    load_block(o->block, c->buf);
    o->counter = c->counter;
    o->block_len = c->buf_len;
    o->flags = c->flags | chunk_start_flag(c) | CHUNK_END;
}

static void
parent_output(struct output *o, const uint32_t left[8],
              const uint32_t right[8], const uint32_t key[8], uint8_t flags)
{
    memcpy(o->cv, key, sizeof o->cv);
    memcpy(o->block, left, 8 * sizeof(uint32_t));
    memcpy(o->block + 8, right, 8 * sizeof(uint32_t));
    o->counter = 0;
    o->block_len = BLAKE3_BLOCK_LEN;
    o->flags = flags | PARENT;
}

static void
output_cv(const struct output *o, uint32_t cv[8])
{
    memcpy(cv, o->cv, 8 * sizeof(uint32_t));
    compress_cv(cv, o->block, o->counter, o->block_len, o->flags);
}

/*
 * Root output: block i of the output stream is the root compression with
 * counter i, all 16 state words (the upper 8 folded with the input CV).
 */
static void
output_root_bytes(const struct output *o, uint64_t seek, uint8_t *out,
                  size_t len)
{
    uint64_t counter = seek / BLAKE3_BLOCK_LEN;
    size_t skip = (size_t)(seek % BLAKE3_BLOCK_LEN);
    uint32_t v[16];
    uint8_t block[BLAKE3_BLOCK_LEN];

    while (len > 0) {
        compress(v, o->cv, o->block, counter, o->block_len, o->flags | ROOT);
        for (int i = 0; i < 8; i++) {
            store32(block + 4 * i, v[i] ^ v[i + 8]);
            store32(block + 32 + 4 * i, v[i + 8] ^ o->cv[i]);
        }
        size_t take = BLAKE3_BLOCK_LEN - skip;
        if (take > len)
            take = len;
        memcpy(out, block + skip, take);
        out += take;
        len -= take;
        skip = 0;
        counter++;
    }
}

static void
hasher_init(struct blake3_hasher *h, const uint32_t key[8], uint8_t flags)
{
    memcpy(h->key, key, sizeof h->key);
    chunk_init(&h->chunk, key, flags, 0);
    h->cv_stack_len = 0;
}

/*
 * Add the CV of a finished chunk, total_chunks being the number of chunks
 * finished so far.  Each trailing zero bit of total_chunks marks a subtree
 * that is now complete, so that many stack entries merge with the new CV.
 */
static void
add_chunk_cv(struct blake3_hasher *h, uint32_t cv[8], uint64_t total_chunks)
{
    struct output o;

    while ((total_chunks & 1) == 0) {
        h->cv_stack_len--;
        parent_output(&o, h->cv_stack[h->cv_stack_len], cv, h->key,
                      h->chunk.flags);
        output_cv(&o, cv);
        total_chunks >>= 1;
    }
    memcpy(h->cv_stack[h->cv_stack_len], cv, 8 * sizeof(uint32_t));
    h->cv_stack_len++;
}

void
blake3_hasher_init(struct blake3_hasher *h)
{
    hasher_init(h, IV, 0);
}

void
blake3_hasher_init_keyed(struct blake3_hasher *h,
                         const uint8_t key[BLAKE3_KEY_LEN])
{
    uint32_t words[8];

    for (int i = 0; i < 8; i++)
        words[i] = load32(key + 4 * i);
    hasher_init(h, words, KEYED_HASH);
    sodium_memzero(words, sizeof words);
}

void
blake3_hasher_init_derive_key_raw(struct blake3_hasher *h,
                                  const void *context, size_t context_len)
{
    struct blake3_hasher ctx_hasher;
    uint8_t ctx_key[BLAKE3_KEY_LEN];
    uint32_t words[8];

    hasher_init(&ctx_hasher, IV, DERIVE_KEY_CONTEXT);
    blake3_hasher_update(&ctx_hasher, context, context_len);
    blake3_hasher_finalize(&ctx_hasher, ctx_key, sizeof ctx_key);
    for (int i = 0; i < 8; i++)
        words[i] = load32(ctx_key + 4 * i);
    hasher_init(h, words, DERIVE_KEY_MATERIAL);
}

void
blake3_hasher_init_derive_key(struct blake3_hasher *h, const char *context)
{
    blake3_hasher_init_derive_key_raw(h, context, strlen(context));
}

void
blake3_hasher_update(struct blake3_hasher *h, const void *in, size_t len)
{
    const uint8_t *p = in;

    while (len > 0) {
        if (chunk_len(&h->chunk) == BLAKE3_CHUNK_LEN) {
            /* More input follows, so this chunk is not the root. */
            struct output o;
            uint32_t cv[8];
            uint64_t total = h->chunk.counter + 1;

            chunk_output(&h->chunk, &o);
            output_cv(&o, cv);
            add_chunk_cv(h, cv, total);
            chunk_init(&h->chunk, h->key, h->chunk.flags, total);
        }
        size_t take = BLAKE3_CHUNK_LEN - chunk_len(&h->chunk);
        if (take > len)
            take = len;
        chunk_update(&h->chunk, p, take);
        p += take;
        len -= take;
    }
}

void
blake3_hasher_finalize_seek(const struct blake3_hasher *h, uint64_t seek,
                            uint8_t *out, size_t out_len)
{
    struct output o;
    uint32_t cv[8];
    size_t left = h->cv_stack_len;

    if (out_len == 0)
        return;
    chunk_output(&h->chunk, &o);
    while (left > 0) {
        left--;
        output_cv(&o, cv);
        parent_output(&o, h->cv_stack[left], cv, h->key, h->chunk.flags);
    }
    output_root_bytes(&o, seek, out, out_len);
}

void
blake3_hasher_finalize(const struct blake3_hasher *h, uint8_t *out,
                       size_t out_len)
{
    blake3_hasher_finalize_seek(h, 0, out, out_len);
}

void
blake3_hasher_wipe(struct blake3_hasher *h)
{
    sodium_memzero(h, sizeof *h);
}

void
blake3_hash(uint8_t out[BLAKE3_OUT_LEN], const void *in, size_t len)
{
    struct blake3_hasher h;

    blake3_hasher_init(&h);
    blake3_hasher_update(&h, in, len);
    blake3_hasher_finalize(&h, out, BLAKE3_OUT_LEN);
}

void
blake3_keyed_hash(uint8_t out[BLAKE3_OUT_LEN],
                  const uint8_t key[BLAKE3_KEY_LEN], const void *in,
                  size_t len)
{
    struct blake3_hasher h;

    blake3_hasher_init_keyed(&h, key);
    blake3_hasher_update(&h, in, len);
    blake3_hasher_finalize(&h, out, BLAKE3_OUT_LEN);
    blake3_hasher_wipe(&h);
}

void
blake3_derive_key(uint8_t out[BLAKE3_OUT_LEN], const char *context,
                  const void *material, size_t len)
{
    struct blake3_hasher h;

    blake3_hasher_init_derive_key(&h, context);
    blake3_hasher_update(&h, material, len);
    blake3_hasher_finalize(&h, out, BLAKE3_OUT_LEN);
    blake3_hasher_wipe(&h);
}
