/*
 * s3-test.h - test-only entry point of the sosistab3 layer.
 *
 * Exists only when sosistab3.c is compiled with -DS3_TEST_HOOKS, which the
 * test program does (it links the layer statically); the loadable module is
 * built without it and has none of this, so no option or environment
 * variable can make a deployed layer use fixed randomness or a fake clock.
 *
 * Every hook is optional: a NULL function (or deadline_ms 0) keeps the real
 * behaviour.  The hooks are process-wide; set them before a wrap starts and
 * restore NULL after.  role is SL_ROLE_CLIENT or SL_ROLE_SERVER.
 */
#ifndef SL_S3_TEST_H
#define SL_S3_TEST_H

#include <stddef.h>
#include <stdint.h>

#include "sillad/plugin.h"

struct s3_test_hooks {
    void *arg;
    /* The 32-byte ephemeral X25519 secret of a handshake. */
    void (*secret)(void *arg, enum sl_role role, uint8_t sk[32]);
    /* The handshake's 12-byte nonce and its padding: fills padding (room
     * for 1024 bytes) and returns its length, at most 1024. */
    size_t (*hs_random)(void *arg, enum sl_role role, uint8_t nonce[12],
                        uint8_t *padding);
    /* Unix time in seconds: the client's timestamp, the server's "now". */
    uint64_t (*unix_time)(void *arg, enum sl_role role);
    /* Per data record sealed: 1 or 0 forces obfs_lengths on or off for
     * it, -1 keeps the cookie's setting. */
    int (*obfs)(void *arg, enum sl_role role);
    /* The padding jitter r of §7.4, 0..9. */
    unsigned (*jitter)(void *arg);
    /* The server's handshake deadline in ms instead of 10-20 s. */
    int64_t deadline_ms;
};

/* Installs hooks (NULL removes them).  The struct must outlive its use. */
void s3_test_set_hooks(const struct s3_test_hooks *hooks);

#endif /* SL_S3_TEST_H */
