/*
 * test-blake3.c: BLAKE3 against the official test vectors.
 *
 * The vectors are read from $SL_SPEC_DIR/blake3_test_vectors.json (default
 * SL_SPEC_DIR_DEFAULT, set by the build to the shared spec directory).  A
 * missing or unreadable file is a test failure, never a skip: a silently
 * skipped vector test would hide a broken checkout.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <jansson.h>

#include "blake3.h"

#ifndef SL_SPEC_DIR_DEFAULT
#define SL_SPEC_DIR_DEFAULT "../shared/spec"
#endif

/* CUnit tests take no arguments, so the parsed file lives here. */
static json_t *vectors;

static int
unhex(const char *hex, uint8_t *out, size_t outcap, size_t *outlen)
{
    size_t n = strlen(hex);

    if (n % 2 != 0 || n / 2 > outcap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    *outlen = n / 2;
    return 0;
}

static void
load_vectors(void)
{
    const char *dir = getenv("SL_SPEC_DIR");
    char path[4096];
    json_error_t err;

    int n;

    if (dir == NULL || *dir == '\0')
        dir = SL_SPEC_DIR_DEFAULT;
    n = snprintf(path, sizeof path, "%s/blake3_test_vectors.json", dir);
    if (n < 0 || (size_t)n >= sizeof path) {
        fprintf(stderr, "test-blake3: SL_SPEC_DIR too long\n");
        return;
    }
    vectors = json_load_file(path, 0, &err);
    if (vectors == NULL)
        fprintf(stderr, "test-blake3: cannot load %s: %s (line %d)\n", path,
                err.text, err.line);
}

enum mode { M_HASH, M_KEYED, M_DERIVE };

static void
init_mode(struct blake3_hasher *h, enum mode mode)
{
    const char *key = json_string_value(json_object_get(vectors, "key"));
    const char *ctx =
        json_string_value(json_object_get(vectors, "context_string"));

    switch (mode) {
    case M_HASH:
        blake3_hasher_init(h);
        break;
    case M_KEYED:
        blake3_hasher_init_keyed(h, (const uint8_t *)key);
        break;
    case M_DERIVE:
        blake3_hasher_init_derive_key(h, ctx);
        break;
    }
}

static void
one_shot(enum mode mode, uint8_t out[32], const uint8_t *in, size_t len)
{
    const char *key = json_string_value(json_object_get(vectors, "key"));
    const char *ctx =
        json_string_value(json_object_get(vectors, "context_string"));

    switch (mode) {
    case M_HASH:
        blake3_hash(out, in, len);
        break;
    case M_KEYED:
        blake3_keyed_hash(out, (const uint8_t *)key, in, len);
        break;
    case M_DERIVE:
        blake3_derive_key(out, ctx, in, len);
        break;
    }
}

/*
 * Feed the input in pieces of `step` bytes (0: all at once), then check the
 * full extended output, a 32-byte finalize, and seeks into the XOF stream.
 */
static int
check_split(enum mode mode, const uint8_t *in, size_t len, size_t step,
            const uint8_t *want, size_t want_len)
{
    struct blake3_hasher h;
    uint8_t out[256], out32[32];
    size_t off = 0;
    int ok = 1;

    init_mode(&h, mode);
    if (step == 0)
        step = len;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        blake3_hasher_update(&h, in + off, n);
        off += n;
    }
    blake3_hasher_finalize(&h, out, want_len);
    ok &= memcmp(out, want, want_len) == 0;
    blake3_hasher_finalize(&h, out32, sizeof out32);
    ok &= memcmp(out32, want, 32) == 0;
    /* Finalize must not disturb the state: do it again. */
    blake3_hasher_finalize(&h, out, want_len);
    ok &= memcmp(out, want, want_len) == 0;
    const size_t seeks[] = {1, 31, 63, 64, 65, 100};
    for (size_t i = 0; i < sizeof seeks / sizeof seeks[0]; i++) {
        size_t s = seeks[i];
        if (s >= want_len)
            continue;
        blake3_hasher_finalize_seek(&h, s, out, want_len - s);
        ok &= memcmp(out, want + s, want_len - s) == 0;
    }
    blake3_hasher_wipe(&h);
    return ok;
}

/* Update once with `split` bytes, then the rest. */
static int
check_at(enum mode mode, const uint8_t *in, size_t len, size_t split,
         const uint8_t *want, size_t want_len)
{
    struct blake3_hasher h;
    uint8_t out[256];

    if (split > len)
        return 1;
    init_mode(&h, mode);
    blake3_hasher_update(&h, in, split);
    blake3_hasher_update(&h, in + split, len - split);
    blake3_hasher_finalize(&h, out, want_len);
    return memcmp(out, want, want_len) == 0;
}

static void
run_mode(enum mode mode, const char *field)
{
    json_t *cases = json_object_get(vectors, "cases");
    size_t i;
    json_t *c;

    CU_ASSERT_FATAL(json_is_array(cases));
    CU_ASSERT_FATAL(json_array_size(cases) >= 35);
    json_array_foreach(cases, i, c) {
        size_t len = (size_t)json_integer_value(json_object_get(c,
                                                                "input_len"));
        const char *hex = json_string_value(json_object_get(c, field));
        uint8_t want[256], out32[32];
        size_t want_len = 0;
        uint8_t *in = malloc(len ? len : 1);

        CU_ASSERT_FATAL(in != NULL);
        CU_ASSERT_FATAL(hex != NULL);
        CU_ASSERT_FATAL(unhex(hex, want, sizeof want, &want_len) == 0);
        CU_ASSERT_FATAL(want_len > 32);
        for (size_t j = 0; j < len; j++)
            in[j] = (uint8_t)(j % 251);

        one_shot(mode, out32, in, len);
        CU_ASSERT(memcmp(out32, want, 32) == 0);

        const size_t steps[] = {0, 1, 63, 64, 65, 1023, 1024, 1025, 4096};
        for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
            int ok = check_split(mode, in, len, steps[s], want, want_len);
            if (!ok)
                fprintf(stderr, "%s len %zu step %zu: mismatch\n", field,
                        len, steps[s]);
            CU_ASSERT(ok);
        }
        const size_t splits[] = {1, 63, 64, 65, 1023, 1024, 1025, 2048, 3073};
        for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
            int ok = check_at(mode, in, len, splits[s], want, want_len);
            if (!ok)
                fprintf(stderr, "%s len %zu split at %zu: mismatch\n",
                        field, len, splits[s]);
            CU_ASSERT(ok);
        }
        free(in);
    }
}

static void
test_vectors_present(void)
{
    CU_ASSERT_FATAL(vectors != NULL);
    CU_ASSERT(json_is_string(json_object_get(vectors, "key")));
    CU_ASSERT_EQUAL(strlen(json_string_value(json_object_get(vectors,
                                                             "key"))),
                    32);
}

static void
test_hash(void)
{
    CU_ASSERT_FATAL(vectors != NULL);
    run_mode(M_HASH, "hash");
}

static void
test_keyed_hash(void)
{
    CU_ASSERT_FATAL(vectors != NULL);
    run_mode(M_KEYED, "keyed_hash");
}

static void
test_derive_key(void)
{
    CU_ASSERT_FATAL(vectors != NULL);
    run_mode(M_DERIVE, "derive_key");
}

/* Vectors that do not depend on the file, so a missing file fails twice. */
static void
test_known_empty(void)
{
    static const uint8_t empty[32] = {
        0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d,
        0xea, 0x36, 0xdc, 0xc9, 0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1,
        0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f, 0x32, 0x62,
    };
    uint8_t out[32];
    struct blake3_hasher h;

    blake3_hash(out, NULL, 0);
    CU_ASSERT(memcmp(out, empty, 32) == 0);
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, "", 0);
    blake3_hasher_finalize(&h, out, 32);
    CU_ASSERT(memcmp(out, empty, 32) == 0);
}

/* A long input crosses many tree levels; compare split and whole. */
static void
test_long_input(void)
{
    size_t len = (1u << 20) + 12345;
    uint8_t *in = malloc(len);
    uint8_t a[64], b[64];
    struct blake3_hasher h;

    CU_ASSERT_FATAL(in != NULL);
    for (size_t i = 0; i < len; i++)
        in[i] = (uint8_t)(i * 7 + (i >> 11));
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, in, len);
    blake3_hasher_finalize(&h, a, sizeof a);
    blake3_hasher_init(&h);
    for (size_t off = 0, step = 1; off < len; step = step * 3 % 4099 + 1) {
        size_t n = len - off < step ? len - off : step;
        blake3_hasher_update(&h, in + off, n);
        off += n;
    }
    blake3_hasher_finalize(&h, b, sizeof b);
    CU_ASSERT(memcmp(a, b, sizeof a) == 0);
    free(in);
}

int
main(void)
{
    CU_pSuite suite;
    unsigned failures;

    load_vectors();
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    suite = CU_add_suite("blake3", NULL, NULL);
    if (suite == NULL ||
        CU_add_test(suite, "vectors file present", test_vectors_present) ==
            NULL ||
        CU_add_test(suite, "hash vectors", test_hash) == NULL ||
        CU_add_test(suite, "keyed_hash vectors", test_keyed_hash) == NULL ||
        CU_add_test(suite, "derive_key vectors", test_derive_key) == NULL ||
        CU_add_test(suite, "empty input", test_known_empty) == NULL ||
        CU_add_test(suite, "long input, odd splits", test_long_input) ==
            NULL) {
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failures = CU_get_number_of_failures() +
               CU_get_run_summary()->nSuitesFailed;
    CU_cleanup_registry();
    json_decref(vectors);
    return failures == 0 ? 0 : 1;
}
