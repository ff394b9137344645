/* test-loader.c - the loader refuses bad plugins with exact sentences. */
#include "config.h"

#include <stdlib.h>

#include "../cu.h"
#include "sillad.h"

static char path[1024];

static const char *
dummy(const char *name)
{
    const char *top = getenv("SL_TOP_BUILDDIR");

    snprintf(path, sizeof(path), "%s/t/dummy/.libs/%s.so", top ? top : ".",
             name);
    return path;
}

static const char *
refusal(const char *name)
{
    static char want[8192];
    static struct sl_error e;

    sl_error_clear(&e);
    CU_ASSERT(sl_loader_load_file(dummy(name), &e) != 0);
    (void)want;
    return e.text;
}

static void
expect(const char *name, const char *fmt)
{
    char want[8192];
    const char *got = refusal(name);

    snprintf(want, sizeof(want), fmt, dummy(name));
    CU_ASSERT_TEXT(got, want);
}

static void
test_refusals(void)
{
    expect("wrongmajor", "plugin %s: abi_major is 2, but this sillad "
                         "supports only 1");
    expect("futureminor", "plugin %s: abi_minor is 1, newer than this "
                          "sillad's 0");
    expect("shortstruct", "plugin %s: struct_size is 16, smaller than the "
                          "72 bytes of struct sl_plugin in ABI 1.0");
    expect("failinit", "plugin %s: init failed: dummy: refusing to start "
                       "(test)");
    expect("nosymbol", "plugin %s: no symbol sl_plugin_describe (not a "
                       "sillad plugin)");
    expect("shortlayer", "plugin %s: layer 0 struct_size is 24, smaller "
                         "than the 112 bytes of struct sl_layer_ops in ABI "
                         "1.0");
}

static void
test_good_and_duplicate(void)
{
    struct sl_error e;
    char good[1024], want[4096];

    sl_error_clear(&e);
    snprintf(good, sizeof(good), "%s", dummy("good"));
    CU_ASSERT_EQUAL(sl_loader_load_file(good, &e), 0);
    CU_ASSERT_PTR_NOT_NULL(sl_layer_find("dummy"));
    /* Loading the same file again is a no-op, not a duplicate. */
    CU_ASSERT_EQUAL(sl_loader_load_file(good, &e), 0);
    snprintf(want, sizeof(want), "plugin %s: layer 'dummy' is already "
             "provided by %s", dummy("duplicate"), good);
    CU_ASSERT_TEXT(refusal("duplicate"), want);
}

static void
test_not_a_library(void)
{
    struct sl_error e;

    sl_error_clear(&e);
    CU_ASSERT(sl_loader_load_file("/nonexistent/x.so", &e) != 0);
    CU_ASSERT_TEXT(e.text, "plugin /nonexistent/x.so: cannot load: "
                           "/nonexistent/x.so: cannot open shared object "
                           "file: No such file or directory");
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "refusals name file, field and values", test_refusals },
        { "good plugin, then a duplicate layer", test_good_and_duplicate },
        { "not a library", test_not_a_library },
        { NULL, NULL },
    };
    int r;

    sl_log_set_level(SL_LOG_ERR);
    r = cu_run("loader", tests);
    sl_loader_unload_all();
    return r;
}
