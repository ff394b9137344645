/* cu.h - the CUnit boilerplate shared by the test programs. */
#ifndef SILLAD_T_CU_H
#define SILLAD_T_CU_H

#include <stdio.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

struct cu_test {
    const char *name;
    void (*fn)(void);
};

/* Registers tests (NULL-terminated) as one suite, runs them verbosely and
 * returns the process exit status: 0 only when every assertion passed. */
static inline int
cu_run(const char *suite, const struct cu_test *tests)
{
    CU_pSuite s;
    unsigned failed;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite(suite, NULL, NULL);
    if (s == NULL)
        return 2;
    for (; tests->name != NULL; tests++)
        if (CU_add_test(s, tests->name, tests->fn) == NULL)
            return 2;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}

/* Asserts that an error text equals the expected sentence, showing both. */
#define CU_ASSERT_TEXT(actual, expected)                                    \
    do {                                                                    \
        const char *a_ = (actual), *x_ = (expected);                        \
        if (strcmp(a_, x_) != 0)                                            \
            fprintf(stderr, "\n  expected: %s\n  actual:   %s\n", x_, a_);  \
        CU_ASSERT_STRING_EQUAL(a_, x_);                                     \
    } while (0)

#endif
