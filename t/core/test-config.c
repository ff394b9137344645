/* test-config.c - config files: positions in every error. */
#include "config.h"

#include <stdlib.h>
#include <unistd.h>

#include "../cu.h"
#include "fake.h"

static const char *
load_err(const char *text)
{
    static struct sl_error e;
    struct sl_config *c;

    sl_error_clear(&e);
    c = sl_config_load_text(text, "x.json", &e);
    CU_ASSERT_PTR_NULL(c);
    sl_config_free(c);
    return e.text;
}

static void
test_syntax(void)
{
    CU_ASSERT_TEXT(load_err("{\n  \"a\": 1,\n  \"b\": tru\n}"),
                   "x.json:3:10: invalid token near 'tru'");
    CU_ASSERT_TEXT(load_err("{\"a\":1,\"a\":2}"),
                   "x.json:1:10: duplicate object key near '\"a\"'");
    CU_ASSERT_TEXT(load_err("[1]"),
                   "x.json:1:1: the configuration must be a JSON object");
    CU_ASSERT_TEXT(load_err(""),
                   "x.json:1:0: '[' or '{' expected near end of file");
}

static void
test_positions(void)
{
    struct sl_error e;
    struct sl_config *c;
    char where[128];
    static const char *const allowed[] = { "listen", NULL };

    fake_register();
    sl_error_clear(&e);
    c = sl_config_load_text("{\n  \"log_level\": \"info\",\n"
                            "  \"stacks\": {\n"
                            "    \"good\": \"fbase name=g\",\n"
                            "    \"bad\": [{\"layer\": \"fbase\", "
                            "\"d\": \"x\"}],\n"
                            "    \"race\": {\"race\": [\"fbase\", 5]}\n"
                            "  },\n  \"lisen\": 1\n}\n", "c.json", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_TEXT(sl_config_where(c, "/stacks/bad", where, sizeof(where)),
                   "c.json:5:12");
    CU_ASSERT_TEXT(sl_config_where(c, "/stacks/race/race/1", where,
                                   sizeof(where)), "c.json:6:32");
    CU_ASSERT(sl_config_check_keys(c, allowed, &e) != 0);
    CU_ASSERT_TEXT(e.text, "c.json:8:12: unknown key \"lisen\"");
    sl_error_clear(&e);
    {
        struct sl_dialer *d = sl_config_dialer(c, "/stacks/good", &e);

        CU_ASSERT_PTR_NOT_NULL(d);
        sl_dialer_free(d);
    }
    CU_ASSERT_PTR_NULL(sl_config_dialer(c, "/stacks/bad", &e));
    CU_ASSERT_TEXT(e.text, "c.json:5:12: stack layer 1 (fbase): option"
                           " 'd': 'x' is not a duration (e.g. 250ms, 5s,"
                           " 2m, 1h)");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_config_dialer(c, "/stacks/race", &e));
    CU_ASSERT_TEXT(e.text, "c.json:6:13: /stacks/race.race[1]: expected a "
                           "stack (string or array) or a combinator object "
                           "{\"race\":[...]}, {\"fallback\":[...]}, "
                           "{\"timeout\":\"5s\",\"dial\":..} or "
                           "{\"delay\":\"1s\",\"dial\":..}");
    sl_config_free(c);

    sl_error_clear(&e);
    c = sl_config_load_text("{\"log_level\": \"loud\"}", "l.json", &e);
    CU_ASSERT(sl_config_apply_common(c, "t", &e) != 0);
    CU_ASSERT_TEXT(e.text, "l.json:1:15: \"log_level\" must be one of "
                           "error, warning, notice, info, debug");
    sl_config_free(c);
    sl_log_set_level(SL_LOG_ERR);
}

static void
test_file(void)
{
    struct sl_error e;
    char path[] = "/tmp/sillad-test-XXXXXX";
    int fd = mkstemp(path);

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(write(fd, "{\"syslog\": 3}", 13) == 13);
    close(fd);
    sl_error_clear(&e);
    {
        struct sl_config *c = sl_config_load(path, &e);
        char want[256];

        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        CU_ASSERT(sl_config_apply_common(c, "t", &e) != 0);
        snprintf(want, sizeof(want), "%s:1:12: \"syslog\" must be true or "
                 "false", path);
        CU_ASSERT_TEXT(e.text, want);
        sl_config_free(c);
    }
    unlink(path);
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_config_load("/nonexistent/x.json", &e));
    CU_ASSERT_TEXT(e.text, "/nonexistent/x.json: cannot open: No such file "
                           "or directory");
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "syntax errors", test_syntax },
        { "positions of values", test_positions },
        { "files", test_file },
        { NULL, NULL },
    };
    int r;

    sl_log_set_level(SL_LOG_ERR);
    r = cu_run("config", tests);
    sl_loader_unload_all();
    return r;
}
