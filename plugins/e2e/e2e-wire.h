/*
 * e2e-wire.h: the bytes of the client/exit hello and of the crypt pipe
 * (spec sillad-and-stacks.md §6, examples §10.2 and §10.3).
 *
 * Pure functions: no I/O, no libevent, no global state, nothing calls
 * back.  Encoders write canonical stdcode (common/stdcode.h); decoders are
 * strict (no over-long varints, no trailing bytes, enum indexes in range)
 * and bounded: every length is checked against E2E_MSG_MAX before use.
 *
 *   ClientHello      = { credentials: bytes, crypt_hello: ClientCryptHello }
 *   ClientCryptHello = 0 SharedSecretChallenge([u8; 32])
 *                    | 1 X25519([u8; 32])
 *   ExitHello        = { inner: ExitHelloInner, signature: [u8; 64] }
 *   ExitHelloInner   = 0 Reject(string)
 *                    | 1 SharedSecretResponse([u8; 32])
 *                    | 2 X25519([u8; 32])
 *
 * Each hello travels as one message: a 4-byte big-endian length, then the
 * stdcode payload (§5.2); lengths above E2E_MSG_MAX are refused.
 */
#ifndef SL_E2E_WIRE_H
#define SL_E2E_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "stdcode.h"

#define E2E_MSG_MAX 100000        /* largest length prefix accepted (§5.2) */
#define E2E_KEY_LEN 32
#define E2E_SIG_LEN 64
#define E2E_TAG_LEN 16            /* Poly1305 */
#define E2E_NONCE_LEN 12
#define E2E_CHUNK_MAX 8192        /* plaintext per crypt message sent */

enum e2e_client_kind {
    E2E_CH_CHALLENGE = 0,         /* SharedSecretChallenge(c) */
    E2E_CH_X25519 = 1             /* X25519(client_pk) */
};

enum e2e_exit_kind {
    E2E_EH_REJECT = 0,            /* Reject(reason) */
    E2E_EH_RESPONSE = 1,          /* SharedSecretResponse(KH(c, ss)) */
    E2E_EH_X25519 = 2             /* X25519(exit_pk) */
};

/* A decoded ClientHello.  cred points into the decoded buffer. */
struct e2e_client_hello {
    const unsigned char *cred;
    size_t cred_len;
    enum e2e_client_kind kind;
    uint8_t key[E2E_KEY_LEN];     /* the challenge or the public key */
};

/* A decoded ExitHelloInner.  reason points into the decoded buffer
 * (Reject only; not NUL-terminated, not checked for UTF-8). */
struct e2e_exit_inner {
    enum e2e_exit_kind kind;
    const unsigned char *reason;
    size_t reason_len;
    uint8_t key[E2E_KEY_LEN];     /* the MAC or the public key */
};

/* Appends the stdcode of a ClientHello / ExitHelloInner to *enc. */
void e2e_client_hello_put(struct sc_enc *enc,
                          const struct e2e_client_hello *ch);
void e2e_exit_inner_put(struct sc_enc *enc, const struct e2e_exit_inner *in);

/* Decodes a whole ClientHello payload (no length prefix).  Returns 0, or
 * -1 with *why set to a static sentence. */
int e2e_client_hello_get(const void *p, size_t n,
                         struct e2e_client_hello *ch, const char **why);

/* Decodes a whole ExitHello payload: inner and signature. */
int e2e_exit_hello_get(const void *p, size_t n, struct e2e_exit_inner *in,
                       uint8_t sig[E2E_SIG_LEN], const char **why);

/* The signed message: stdcode(ClientHello) || stdcode(inner), into *enc
 * (initialised by the caller). */
void e2e_signed_message(struct sc_enc *enc, const struct e2e_client_hello *ch,
                        const struct e2e_exit_inner *in);

/* KH(c, ss) = BLAKE3 keyed_hash(key = c, message = ss). */
void e2e_challenge_mac(uint8_t out[E2E_KEY_LEN],
                       const uint8_t c[E2E_KEY_LEN], const void *ss,
                       size_t ss_len);

/* Crypt-pipe keys from the X25519 output: client->exit ("c2e") and
 * exit->client ("e2c"), BLAKE3 derive_key. */
void e2e_crypt_keys(const uint8_t dh[E2E_KEY_LEN], uint8_t c2e[E2E_KEY_LEN],
                    uint8_t e2c[E2E_KEY_LEN]);

/* The nonce of message number counter: u64 LE then 4 zero bytes. */
void e2e_nonce(uint64_t counter, uint8_t nonce[E2E_NONCE_LEN]);

/* Seals n (<= E2E_MSG_MAX - 16) plaintext bytes as one crypt message:
 * out gets the 4-byte BE length, ciphertext and tag (4 + n + 16 bytes).
 * Returns 0 or -1 (n too large). */
int e2e_crypt_seal(const uint8_t key[E2E_KEY_LEN], uint64_t counter,
                   const void *pt, size_t n, unsigned char *out);

/* Opens one message payload (the bytes after the length prefix, n of
 * them, 16 <= n <= E2E_MSG_MAX) into out (n - 16 bytes).  Returns 0, or
 * -1 when n is out of range or authentication fails. */
int e2e_crypt_open(const uint8_t key[E2E_KEY_LEN], uint64_t counter,
                   const void *ct, size_t n, unsigned char *out);

#endif /* SL_E2E_WIRE_H */
