/*
 * s3-crypto.h: the pure crypto core of the sosistab3 transport.
 *
 * No I/O, no libevent, no global mutable state, nothing calls back.  The
 * contract is doc/PROTOCOL.sosistab3 (shared/spec/sosistab3.md); section
 * numbers below refer to it.  Functions that draw randomness are separate
 * thin wrappers, so that everything else is deterministic and testable
 * with the spec's fixed values.
 *
 * Return values: S3_OK (0) or a negative enum s3_status.  S3_EAGAIN and
 * S3_ENOSPC are not failures (see s3_rec_open); every other negative
 * value is.  Out arguments come last and are left untouched on failure.
 * Every key or secret these functions keep is wiped with sodium_memzero
 * when freed; MAC and hash checks are constant time.
 */
#ifndef SL_S3_CRYPTO_H
#define SL_S3_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define S3_KEY_LEN 32
#define S3_HASH_LEN 32
#define S3_NONCE_LEN 12
#define S3_TAG_LEN 16

/* Handshake (§4, §10). */
#define S3_HS_PLAIN_LEN 112
#define S3_HS_LEN 140                /* nonce(12) || ciphertext(112) || tag */
#define S3_HS_PAD_SEND_MAX 1024      /* we send 0..=1024 padding bytes */
#define S3_HS_PAD_RECV_MAX 100000    /* we accept at most this many */
#define S3_HS_TIME_SKEW 300          /* server: |timestamp - now| <= 300 s */

/* Records (§7, §10). */
#define S3_REC_HDR_LEN 20            /* enc_len(4) || tag_len(16) */
#define S3_REC_OVERHEAD 36           /* header + body tag */
#define S3_REC_MIN_BUFFERED 24       /* bytes needed before the header */
#define S3_REC_MAX_BODY 1048576      /* largest |L| sent or accepted */
#define S3_OBFS_THRESHOLD 2000       /* pad data records shorter than this */
#define S3_OBFS_JITTER_MAX 9         /* r is uniform in 0..=9 */

enum s3_status {
    S3_OK = 0,
    S3_EAGAIN = -1,     /* not a failure: more input needed */
    S3_ENOSPC = -2,     /* not a failure: output buffer too small */
    S3_EINVAL = -3,     /* bad argument or wrong use of a state */
    S3_ENOMEM = -4,
    S3_ECRYPTO = -5,    /* the AEAD backend itself failed */
    S3_EHSAUTH = -6,    /* handshake AEAD authentication failed */
    S3_EHSPADLEN = -7,  /* handshake padding_len > 100000 */
    S3_EHSPADHASH = -8, /* handshake padding does not match its hash */
    S3_EHSREPLY = -9,   /* server's responding_to is not BLAKE3(HS_c) */
    S3_EHSTIME = -10,   /* client timestamp more than 300 s off */
    S3_ELOWORDER = -11, /* X25519 result is all zero (malicious peer) */
    S3_ELENAUTH = -12,  /* record length AEAD authentication failed */
    S3_ETOOBIG = -13,   /* record |L| > 1048576 */
    S3_EBODYAUTH = -14, /* record body AEAD authentication failed */
    S3_ENONCE = -15,    /* 64-bit record counter exhausted */
};

/* Static English text for a status code; never NULL. */
const char *s3_strerror(int code);

/* BLAKE3("") : the client's responding_to and the empty padding hash. */
extern const uint8_t s3_empty_hash[S3_HASH_LEN];

/* ---- Cookie and keys (§2, §3) ------------------------------------- */

struct s3_cookie {
    uint8_t key[S3_KEY_LEN]; /* cookie_key = KDF("cookie", secret) */
    bool obfs_lengths;       /* pad short writes (§7.4) */
    bool obfs_timing;        /* parsed for fidelity; no effect (§13.7) */
};

/*
 * Parse a cookie string of len bytes (no NUL needed; the bytes are hashed
 * as given, so pass UTF-8).  The secret is everything before the first
 * "---"; the rest is ObfsParams JSON with serde_json semantics: an object
 * with both boolean fields (unknown fields ignored, a repeated field
 * refused) or a two-element boolean array; anything else silently gives
 * the defaults (both false), as in Rust.  Returns S3_OK, or S3_ENOMEM.
 * Wipe *out with s3_cookie_wipe.
 */
int s3_cookie_parse(const char *text, size_t len, struct s3_cookie *out);

void s3_cookie_wipe(struct s3_cookie *cookie);

enum s3_side { S3_CLIENT = 0, S3_SERVER = 1 };

/* Handshake AEAD key of the message sent by `sender` (hs_key_c/hs_key_s). */
void s3_hs_key(const struct s3_cookie *cookie, enum s3_side sender,
               uint8_t key[S3_KEY_LEN]);

/*
 * ss = X25519(sk, peer_pk).  Returns S3_ELOWORDER when libsodium refuses
 * an all-zero result (a low-order peer key): Rust accepts it (§13.8), but
 * an honest peer never produces it, so refusing only diverges for
 * malicious peers and keeps a known-zero key out of the session.
 */
int s3_shared_secret(const uint8_t sk[S3_KEY_LEN],
                     const uint8_t peer_pk[S3_KEY_LEN],
                     uint8_t ss[S3_KEY_LEN]);

/* key_up = KDF("up", ss), key_dn = KDF("dn", ss). */
void s3_session_keys(const uint8_t ss[S3_KEY_LEN],
                     uint8_t key_up[S3_KEY_LEN], uint8_t key_dn[S3_KEY_LEN]);

/* ---- Handshake (§4, §5) -------------------------------------------- */

struct s3_hs {
    uint8_t eph_pk[S3_KEY_LEN];
    uint64_t timestamp;        /* Unix seconds */
    uint64_t padding_len;
    uint8_t padding_hash[S3_HASH_LEN];
    uint8_t responding_to[S3_HASH_LEN];
};

/* The 112-byte plaintext of *hs (big-endian integers), and back. */
void s3_hs_encode(const struct s3_hs *hs, uint8_t out[S3_HS_PLAIN_LEN]);
void s3_hs_decode(const uint8_t in[S3_HS_PLAIN_LEN], struct s3_hs *out);

/*
 * Build and seal a handshake message: out = nonce || AEAD(key, nonce,
 * plaintext) with padding_len and padding_hash = BLAKE3(padding) taken
 * from the padding bytes (padding may be NULL when padding_len is 0).
 * Deterministic; s3_hs_seal_random draws the random parts.
 */
int s3_hs_seal(const uint8_t key[S3_KEY_LEN], const uint8_t eph_pk[S3_KEY_LEN],
               uint64_t timestamp, const uint8_t *padding, size_t padding_len,
               const uint8_t responding_to[S3_HASH_LEN],
               const uint8_t nonce[S3_NONCE_LEN], uint8_t out[S3_HS_LEN]);

/*
 * Open a 140-byte message.  Returns S3_EHSAUTH (wrong key or tampered)
 * or S3_EHSPADLEN (padding_len > 100000); on S3_OK *out holds the fields.
 * The caller then reads padding_len bytes and calls s3_hs_check_padding.
 */
int s3_hs_open(const uint8_t key[S3_KEY_LEN], const uint8_t in[S3_HS_LEN],
               struct s3_hs *out);

/* S3_OK iff len == hs->padding_len and BLAKE3(padding) matches. */
int s3_hs_check_padding(const struct s3_hs *hs, const uint8_t *padding,
                        size_t len);

/* Client: S3_OK iff hs_s->responding_to == BLAKE3(hs_c) (§5.3). */
int s3_hs_check_reply(const struct s3_hs *hs_s, const uint8_t hs_c[S3_HS_LEN]);

/* Server: S3_OK iff |timestamp - now| <= 300, else S3_EHSTIME (§5.2). */
int s3_hs_check_time(uint64_t timestamp, uint64_t now);

/* ---- Randomness wrappers ------------------------------------------ */

/* Fresh X25519 key pair (32 random bytes; libsodium clamps on use). */
int s3_keypair(uint8_t sk[S3_KEY_LEN], uint8_t pk[S3_KEY_LEN]);

/* Uniform 0..=1024 (randombytes_uniform). */
size_t s3_random_padding_len(void);

/* Uniform 0..=9, the jitter r of §7.4. */
unsigned s3_random_jitter(void);

void s3_random_nonce(uint8_t nonce[S3_NONCE_LEN]);

/*
 * Everything the handshake sender writes in one go: out = HS || padding,
 * with a random nonce, a random padding length and random padding bytes.
 * out must hold S3_HS_LEN + S3_HS_PAD_SEND_MAX bytes; *out_len is set to
 * the number used.
 */
int s3_hs_seal_random(const uint8_t key[S3_KEY_LEN],
                      const uint8_t eph_pk[S3_KEY_LEN], uint64_t timestamp,
                      const uint8_t responding_to[S3_HASH_LEN], uint8_t *out,
                      size_t *out_len);

/* ---- Record layer (§7) -------------------------------------------- */

/*
 * ChaCha20-Poly1305 IETF backends; all produce identical bytes.  OpenSSL
 * EVP is about 3x faster than libsodium 1.0.18 on 16 KiB records but pays
 * a fixed cost per call that makes it slower below about 128 bytes
 * (bench/bench-aead), so HYBRID, the default, seals and opens the 4-byte
 * length and bodies under 128 bytes with libsodium and longer bodies with
 * OpenSSL.
 */
enum s3_aead {
    S3_AEAD_DEFAULT = 0, /* = S3_AEAD_HYBRID */
    S3_AEAD_OPENSSL = 1,
    S3_AEAD_SODIUM = 2,
    S3_AEAD_HYBRID = 3,
};

/* Bodies of at least this many bytes go to OpenSSL under HYBRID. */
#define S3_HYBRID_EVP_MIN 128

/* "openssl", "libsodium" or "hybrid" (DEFAULT resolved); never NULL. */
const char *s3_aead_name(enum s3_aead aead);

enum s3_role { S3_SEAL = 0, S3_OPEN = 1 };

/* One direction of records: a key, a backend and the nonce counter. */
struct s3_dir;

/*
 * New direction state for sealing or opening (never both) with a 32-byte
 * key (key_up or key_dn), counter 0.  The key is copied; the caller may
 * wipe its own copy.  Free with s3_dir_free, which wipes it.
 */
int s3_dir_new(const uint8_t key[S3_KEY_LEN], enum s3_role role,
               enum s3_aead aead, struct s3_dir **out);

void s3_dir_free(struct s3_dir *dir);

/* The backend actually in use (never S3_AEAD_DEFAULT). */
enum s3_aead s3_dir_aead(const struct s3_dir *dir);

/* Next counter value n; record i uses 2i and 2i + 1. */
uint64_t s3_dir_counter(const struct s3_dir *dir);

/*
 * Seal one data record (L = len, len <= 1 MiB; len 0 is the empty
 * record) into out[0 .. len + 36).  data may be NULL when len is 0, and
 * may be exactly out + 20 (in-place); no other overlap.  Returns S3_EINVAL
 * for a bad size or an opening state; a backend failure makes the state
 * unusable.
 */
int s3_rec_seal(struct s3_dir *dir, const uint8_t *data, size_t len,
                uint8_t *out, size_t outcap);

/* Seal a padding record: L = -p, body p zero bytes (p <= 1 MiB). */
int s3_rec_seal_padding(struct s3_dir *dir, size_t p, uint8_t *out,
                        size_t outcap);

/*
 * Length padding of §7.4 for a write of len bytes and jitter r (0..=9):
 * true, with the padding body length in *p, when a padding record must
 * follow; false when none is sent (len >= 1964).
 */
bool s3_obfs_pad_len(size_t len, unsigned r, size_t *p);

/*
 * Wire size of one upper-layer write of len bytes: data records of at most
 * 1 MiB each (one empty record when len is 0), plus the padding record of
 * §7.4 when obfs_lengths.  0 means r > 9 or an absurd len.
 */
size_t s3_write_size(size_t len, bool obfs_lengths, unsigned r);

/*
 * Seal one upper-layer write as s3_write_size describes, into out (no
 * overlap with data).  S3_ENOSPC when outcap is too small.
 */
int s3_write_seal(struct s3_dir *dir, const uint8_t *data, size_t len,
                  bool obfs_lengths, unsigned r, uint8_t *out, size_t outcap,
                  size_t *out_len);

/*
 * Decrypt the next record's header from a contiguous buffer.  S3_EAGAIN
 * while inlen < 24 (the Rust receiver waits for 24, not 20, bytes, which
 * decides whether a short tampered tail is an error or a clean EOF).
 * S3_OK: *rec_len = 36 + |L|, the record's wire size, and *L.  Fatal:
 * S3_ELENAUTH, S3_ETOOBIG.  Consumes nothing.
 */
int s3_rec_peek(struct s3_dir *dir, const uint8_t *in, size_t inlen,
                size_t *rec_len, int32_t *L);

/*
 * Open the next record from in[0 .. inlen), decrypting a data record's
 * body straight into out (out may be exactly in + 20; no other overlap).
 * The length is decrypted afresh on every call, never cached, as in Rust.
 *
 *   S3_OK      one record consumed: *rec_len = its wire size, *L its
 *              length field; if L > 0, out[0 .. L) holds the data.  L <= 0
 *              (empty or padding record) writes nothing.  The counter
 *              advances by 2.
 *   S3_EAGAIN  incomplete: *rec_len = bytes needed before a retry can
 *              succeed (24 before the header is readable, then 36 + |L|);
 *              *L = L, or 0 if unknown.
 *   S3_ENOSPC  L > outcap: *rec_len and *L set; retry with more room.
 *   fatal      S3_ELENAUTH, S3_ETOOBIG, S3_EBODYAUTH: the state stays
 *              failed and every later call returns the same code.
 *
 * At end of input a pending S3_EAGAIN means a partial record, which the
 * Rust reader drops silently, reporting a clean EOF (§7.3).
 */
int s3_rec_open(struct s3_dir *dir, const uint8_t *in, size_t inlen,
                uint8_t *out, size_t outcap, size_t *rec_len, int32_t *L);

#endif /* SL_S3_CRYPTO_H */
