/*
 * e2e-test.h - test-only entry point of the e2e layer.
 *
 * Exists only when e2e.c is compiled with -DE2E_TEST_HOOKS, which the test
 * program does (it links the layer statically); the loadable module is
 * built without it, so nothing can make a deployed layer use fixed
 * randomness.  Every hook is optional (NULL keeps the real behaviour); the
 * hooks are process-wide: set them before a wrap starts, NULL after.
 */
#ifndef SL_E2E_TEST_H
#define SL_E2E_TEST_H

#include <stdint.h>

#include "sillad/plugin.h"

struct e2e_test_hooks {
    void *arg;
    /* The client's 32-byte shared-secret challenge. */
    void (*challenge)(void *arg, uint8_t c[32]);
    /* The 32-byte ephemeral X25519 secret of role. */
    void (*secret)(void *arg, enum sl_role role, uint8_t sk[32]);
    /* Replaces the X25519 output of role before the keys are derived. */
    void (*dh)(void *arg, enum sl_role role, uint8_t dh[32]);
};

/* Installs hooks (NULL removes them).  The struct must outlive its use. */
void e2e_test_set_hooks(const struct e2e_test_hooks *hooks);

#endif /* SL_E2E_TEST_H */
