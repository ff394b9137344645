/*
 * stdcode.h: Geph's "stdcode" binary encoding (bincode 1.3 with varint
 * integers and no trailing bytes; spec sillad-and-stacks.md §5.1).
 *
 * Canonical on output: every integer and length is written in its
 * shortest varint form, which is what bincode produces and what a
 * signature computed over a re-encoding expects (§6.2).
 * Strict on input: over-long varints, the u128 and reserved tags (254,
 * 255), values above the caller's type bound, truncation and trailing
 * bytes are all refused.  bincode itself accepts over-long varints; being
 * stricter only refuses encodings no bincode encoder ever emits.
 *
 * Varint form: v < 251 is one byte; v < 2^16 is 251 then 2 bytes LE;
 * v < 2^32 is 252 then 4 bytes LE; otherwise 253 then 8 bytes LE.
 * Signed integers are zigzag-encoded first (-1 -> 1, 1 -> 2, ...).
 *
 * Nothing here does I/O, keeps global state or calls back.  The encoder
 * allocates with realloc and never grows past its max; the decoder only
 * reads the caller's buffer and returns pointers into it.
 */
#ifndef SL_STDCODE_H
#define SL_STDCODE_H

#include <stddef.h>
#include <stdint.h>

/* Largest encoding of one varint: tag 253 and 8 bytes. */
#define SC_VARINT_MAX 9

/*
 * Encoder.  buf holds len bytes of output (NULL while len is 0).  Once an
 * append would pass max bytes, or memory runs out, failed is set to 1 and
 * every later append is ignored: build the whole value, then check failed
 * once.  The caller owns buf after sc_enc_init and releases it with
 * sc_enc_free (or takes it and sets e->buf to NULL).
 */
struct sc_enc {
    unsigned char *buf;
    size_t len, cap, max;
    int failed;
};

/* Starts an empty encoding whose output may not exceed max bytes. */
void sc_enc_init(struct sc_enc *e, size_t max);
/* Frees buf and empties *e (it may be reused after sc_enc_init). */
void sc_enc_free(struct sc_enc *e);

void sc_put_u8(struct sc_enc *e, uint8_t v);
/* u16, u32, u64, usize and every length. */
void sc_put_varint(struct sc_enc *e, uint64_t v);
/* i16, i32, i64: zigzag, then varint. */
void sc_put_zigzag(struct sc_enc *e, int64_t v);
/* bool: one byte, 0 or 1. */
void sc_put_bool(struct sc_enc *e, int v);
/* Fixed-size arrays and tuples of u8 (keys, hashes, signatures). */
void sc_put_raw(struct sc_enc *e, const void *p, size_t n);
/* String, Vec<u8>, Bytes: varint length then the bytes. */
void sc_put_bytes(struct sc_enc *e, const void *p, size_t n);

/*
 * Decoder over len bytes at p (borrowed; must outlive the decoder and any
 * pointer sc_get_bytes returns).  off is the next byte to read.  Every
 * getter returns 0, or -1 after setting err to a static sentence naming
 * the fault ("stdcode: over-long varint", ...); off is then the offset of
 * the item that failed.  Once err is set every getter fails without
 * reading, so a decode may check only its last result.  Out arguments are
 * untouched on failure.
 */
struct sc_dec {
    const unsigned char *p;
    size_t len, off;
    const char *err;
};

void sc_dec_init(struct sc_dec *d, const void *p, size_t len);
int sc_get_u8(struct sc_dec *d, uint8_t *v);
/* Reads a varint and refuses values above max (the type's bound:
 * UINT16_MAX for u16, a protocol limit for a length, ...). */
int sc_get_varint(struct sc_dec *d, uint64_t max, uint64_t *v);
/* Reads a zigzag varint and refuses values outside [min, max]. */
int sc_get_zigzag(struct sc_dec *d, int64_t min, int64_t max, int64_t *v);
/* Reads one byte that must be 0 or 1. */
int sc_get_bool(struct sc_dec *d, int *v);
/* Copies exactly n bytes to out. */
int sc_get_raw(struct sc_dec *d, void *out, size_t n);
/* Reads a length (refused above max) and points *p at that many bytes
 * inside the input (not NUL-terminated; never NULL, even for n == 0). */
int sc_get_bytes(struct sc_dec *d, size_t max, const unsigned char **p,
                 size_t *n);
/* 0 when every byte was consumed and nothing failed; -1 otherwise (err
 * keeps the first fault, or becomes "stdcode: trailing bytes"). */
int sc_dec_finish(struct sc_dec *d);

#endif /* SL_STDCODE_H */
