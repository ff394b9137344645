/* test-opts.c - option value parsers and option checking. */
#include "config.h"

#include "../cu.h"
#include "sillad.h"

static void
test_duration(void)
{
    int64_t v;

    CU_ASSERT(sl_parse_duration_ms("250ms", &v) == 0 && v == 250);
    CU_ASSERT(sl_parse_duration_ms("5s", &v) == 0 && v == 5000);
    CU_ASSERT(sl_parse_duration_ms("2m", &v) == 0 && v == 120000);
    CU_ASSERT(sl_parse_duration_ms("1h", &v) == 0 && v == 3600000);
    CU_ASSERT(sl_parse_duration_ms("42", &v) == 0 && v == 42);
    CU_ASSERT(sl_parse_duration_ms("", &v) != 0);
    CU_ASSERT(sl_parse_duration_ms("5x", &v) != 0);
    CU_ASSERT(sl_parse_duration_ms("-5s", &v) != 0);
    CU_ASSERT(sl_parse_duration_ms(" 5s", &v) != 0);
    CU_ASSERT(sl_parse_duration_ms("99999999999999999999s", &v) != 0);
    CU_ASSERT(sl_parse_duration_ms("9223372036854775807h", &v) != 0);
}

static void
test_size(void)
{
    int64_t v;

    CU_ASSERT(sl_parse_size("4096", &v) == 0 && v == 4096);
    CU_ASSERT(sl_parse_size("64k", &v) == 0 && v == 65536);
    CU_ASSERT(sl_parse_size("16M", &v) == 0 && v == 16777216);
    CU_ASSERT(sl_parse_size("1G", &v) == 0 && v == 1073741824);
    CU_ASSERT(sl_parse_size("1T", &v) != 0);
    CU_ASSERT(sl_parse_size("k", &v) != 0);
}

static void
test_bool_int(void)
{
    int b;
    int64_t v;

    CU_ASSERT(sl_parse_bool("yes", &b) == 0 && b == 1);
    CU_ASSERT(sl_parse_bool("OFF", &b) == 0 && b == 0);
    CU_ASSERT(sl_parse_bool("2", &b) != 0);
    CU_ASSERT(sl_parse_int("-12", &v) == 0 && v == -12);
    CU_ASSERT(sl_parse_int("12a", &v) != 0);
    CU_ASSERT(sl_parse_int("", &v) != 0);
}

static void
test_addr(void)
{
    char h[64], p[8];

    CU_ASSERT(sl_parse_addr("127.0.0.1:80", h, sizeof(h), p, sizeof(p)) == 0);
    CU_ASSERT_STRING_EQUAL(h, "127.0.0.1");
    CU_ASSERT_STRING_EQUAL(p, "80");
    CU_ASSERT(sl_parse_addr("[::1]:443", h, sizeof(h), p, sizeof(p)) == 0);
    CU_ASSERT_STRING_EQUAL(h, "::1");
    CU_ASSERT(sl_parse_addr("example.com:0", h, sizeof(h), p, sizeof(p)) ==
              0);
    CU_ASSERT(sl_parse_addr("::1:443", h, sizeof(h), p, sizeof(p)) != 0);
    CU_ASSERT(sl_parse_addr("host", h, sizeof(h), p, sizeof(p)) != 0);
    CU_ASSERT(sl_parse_addr("host:", h, sizeof(h), p, sizeof(p)) != 0);
    CU_ASSERT(sl_parse_addr(":80", h, sizeof(h), p, sizeof(p)) != 0);
    CU_ASSERT(sl_parse_addr("h:65536", h, sizeof(h), p, sizeof(p)) != 0);
    CU_ASSERT(sl_parse_addr("h:8x", h, sizeof(h), p, sizeof(p)) != 0);
    CU_ASSERT(sl_parse_addr("[::1]443", h, sizeof(h), p, sizeof(p)) != 0);
}

static const struct sl_opt_spec spec[] = {
    { "addr", SL_OPT_ADDR, SL_OPT_REQUIRED, NULL, "where", NULL, 0, 0 },
    { "n", SL_OPT_INT, 0, "3", "count", NULL, 1, 10 },
    { "t", SL_OPT_DURATION, 0, "1s", "time", NULL, 0, 0 },
    { "mode", SL_OPT_ENUM, 0, "a", "mode", "a|bb|c", 0, 0 },
    { "pw", SL_OPT_STR, SL_OPT_SECRET, NULL, "secret", NULL, 0, 0 },
    { "flag", SL_OPT_BOOL, 0, NULL, "flag", NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static const char *
check(const char *k1, const char *v1, const char *k2, const char *v2)
{
    static struct sl_error e;
    struct sl_opts *o = sl_opts_new();

    sl_error_clear(&e);
    if (k1 != NULL)
        sl_opts_add(o, k1, v1, &e);
    if (k2 != NULL)
        sl_opts_add(o, k2, v2, &e);
    if (e.code == 0)
        sl_opts_check(o, spec, "stack layer 1 (x)", &e);
    sl_opts_free(o);
    return e.code ? e.text : "";
}

static void
test_check(void)
{
    struct sl_error e;
    struct sl_opts *o = sl_opts_new();

    sl_error_clear(&e);
    CU_ASSERT(sl_opts_add(o, "addr", "1.2.3.4:5", &e) == 0);
    CU_ASSERT(sl_opts_check(o, spec, "w", &e) == 0);
    CU_ASSERT(sl_opts_int(o, "n") == 3);
    CU_ASSERT(sl_opts_int(o, "t") == 1000);
    CU_ASSERT(sl_opts_has(o, "addr") && !sl_opts_has(o, "n"));
    CU_ASSERT_STRING_EQUAL(sl_opts_str(o, "mode"), "a");
    CU_ASSERT(sl_opts_str(o, "pw") == NULL);
    sl_opts_free(o);

    CU_ASSERT_TEXT(check(NULL, NULL, NULL, NULL),
                   "stack layer 1 (x): missing required option 'addr' "
                   "(where)");
    CU_ASSERT_TEXT(check("addr", "h:1", "adr", "x"),
                   "stack layer 1 (x): unknown option 'adr' (known: addr, "
                   "n, t, mode, pw, flag)");
    CU_ASSERT_TEXT(check("addr", "h:1", "n", "11"),
                   "stack layer 1 (x): option 'n': 11 is out of range "
                   "[1, 10]");
    CU_ASSERT_TEXT(check("addr", "h:1", "n", "x"),
                   "stack layer 1 (x): option 'n': 'x' is not an integer");
    CU_ASSERT_TEXT(check("addr", "h:1", "t", "5 s"),
                   "stack layer 1 (x): option 't': '5 s' is not a duration "
                   "(e.g. 250ms, 5s, 2m, 1h)");
    CU_ASSERT_TEXT(check("addr", "h:1", "mode", "b"),
                   "stack layer 1 (x): option 'mode': 'b' is not one of "
                   "a|bb|c");
    CU_ASSERT_TEXT(check("addr", "nope", NULL, NULL),
                   "stack layer 1 (x): option 'addr': 'nope' is not an "
                   "address (host:port, ip:port or [ipv6]:port)");
    CU_ASSERT_TEXT(check("addr", "h:1", "flag", "maybe"),
                   "stack layer 1 (x): option 'flag': 'maybe' is not a "
                   "boolean (true or false)");
    CU_ASSERT_TEXT(check("addr", "h:1", "addr", "h:2"),
                   "option 'addr' given twice");
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "duration", test_duration },
        { "size", test_size },
        { "bool and int", test_bool_int },
        { "address", test_addr },
        { "check against a table", test_check },
        { NULL, NULL },
    };

    return cu_run("opts", tests);
}
