/*
 * e2e-key.h: the exit's long-term ed25519 signing key file, and public
 * keys written as hex.
 *
 * The file holds exactly the 32-byte ed25519 seed, raw (no newline, no
 * encoding): the format of Geph's exit signing_secret file, so either
 * program can use the other's key.  It must be a regular file, exactly 32
 * bytes long, and not readable or writable by group or others.  A missing
 * file is created with O_CREAT|O_EXCL, mode 0600, from libsodium's random
 * generator.
 *
 * Linked by the e2e layer and by programs (sillad-exit --print-pubkey);
 * it needs libsodium (sodium_init() done by the caller) and nothing of the
 * core.  Errors go into *e (code, layer "e2e", one sentence naming the
 * file); the first error set on *e wins.  The seed is secret: callers wipe
 * it with sodium_memzero when done.  Nothing here calls back.
 */
#ifndef SL_E2E_KEY_H
#define SL_E2E_KEY_H

#include <stdint.h>

#include "sillad/plugin.h"

#define E2E_SEED_LEN 32
#define E2E_PK_LEN 32
#define E2E_PK_HEX_LEN 64

/* Reads the seed at path and derives its public key.  Returns 0 or SL_E*:
 * SL_ENOENT when the file does not exist, SL_ESYS for other system errors,
 * SL_EINVAL for a wrong size, type or permissions. */
int e2e_key_load(const char *path, uint8_t seed[E2E_SEED_LEN],
                 uint8_t pk[E2E_PK_LEN], struct sl_error *e);

/* As e2e_key_load, but creates the file (mode 0600) with a fresh seed when
 * it does not exist; *created (may be NULL) says whether it did. */
int e2e_key_open(const char *path, uint8_t seed[E2E_SEED_LEN],
                 uint8_t pk[E2E_PK_LEN], int *created, struct sl_error *e);

/* e2e_key_open without the created flag. */
int e2e_key_load_or_create(const char *path, uint8_t seed[E2E_SEED_LEN],
                           uint8_t pk[E2E_PK_LEN], struct sl_error *e);

/* Public key <-> 64 lower-case hex digits.  e2e_pk_from_hex accepts upper
 * and lower case, exactly 64 digits; returns 0 or SL_EINVAL (e set). */
void e2e_pk_to_hex(const uint8_t pk[E2E_PK_LEN],
                   char hex[E2E_PK_HEX_LEN + 1]);
int e2e_pk_from_hex(const char *hex, uint8_t pk[E2E_PK_LEN],
                    struct sl_error *e);

#endif /* SL_E2E_KEY_H */
