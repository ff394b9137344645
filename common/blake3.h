/*
 * blake3.h: portable BLAKE3 (hash, keyed_hash, derive_key, XOF).
 *
 * Written for sillad from the BLAKE3 specification; plain C11, no SIMD,
 * no global state.  A hasher is a plain struct the caller owns (on the
 * stack or embedded); it allocates nothing.  Nothing here can call back.
 */
#ifndef SL_BLAKE3_H
#define SL_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

#define BLAKE3_OUT_LEN 32
#define BLAKE3_KEY_LEN 32
#define BLAKE3_BLOCK_LEN 64
#define BLAKE3_CHUNK_LEN 1024
/* Enough for 2^54 chunks, i.e. the 2^64-byte input limit of BLAKE3. */
#define BLAKE3_MAX_DEPTH 54

/* Internal state of the chunk being absorbed; only blake3.c reads it. */
struct blake3_chunk {
    uint32_t cv[8];
    uint64_t counter;
    uint8_t buf[BLAKE3_BLOCK_LEN];
    uint8_t buf_len;
    uint8_t blocks_done;
    uint8_t flags;
};

struct blake3_hasher {
    uint32_t key[8];
    struct blake3_chunk chunk;
    uint8_t cv_stack_len;
    uint32_t cv_stack[BLAKE3_MAX_DEPTH][8];
};

/* Regular (unkeyed) hashing. */
void blake3_hasher_init(struct blake3_hasher *h);

/* Keyed hashing with a 32-byte key; the key is copied into *h. */
void blake3_hasher_init_keyed(struct blake3_hasher *h,
                              const uint8_t key[BLAKE3_KEY_LEN]);

/*
 * Key derivation: context is a NUL-terminated string, hashed in
 * DERIVE_KEY_CONTEXT mode; the material is then fed with update().
 */
void blake3_hasher_init_derive_key(struct blake3_hasher *h,
                                   const char *context);

/* Same with an explicit context length (context need not be a C string). */
void blake3_hasher_init_derive_key_raw(struct blake3_hasher *h,
                                       const void *context,
                                       size_t context_len);

/* Absorb len bytes; any length, any number of calls. */
void blake3_hasher_update(struct blake3_hasher *h, const void *in,
                          size_t len);

/*
 * Write out_len bytes of output (any length: extendable output).  Does not
 * change *h, so more input may follow and finalize may be called again;
 * the first 32 bytes of a longer output equal the default 32-byte digest.
 */
void blake3_hasher_finalize(const struct blake3_hasher *h, uint8_t *out,
                            size_t out_len);

/* As finalize, starting at byte offset seek of the output stream. */
void blake3_hasher_finalize_seek(const struct blake3_hasher *h,
                                 uint64_t seek, uint8_t *out,
                                 size_t out_len);

/* Wipe *h (it may hold key material) with sodium_memzero. */
void blake3_hasher_wipe(struct blake3_hasher *h);

/* One-shot helpers, 32-byte output.  The temporary state is wiped. */
void blake3_hash(uint8_t out[BLAKE3_OUT_LEN], const void *in, size_t len);
void blake3_keyed_hash(uint8_t out[BLAKE3_OUT_LEN],
                       const uint8_t key[BLAKE3_KEY_LEN],
                       const void *in, size_t len);
void blake3_derive_key(uint8_t out[BLAKE3_OUT_LEN], const char *context,
                       const void *material, size_t len);

#endif /* SL_BLAKE3_H */
