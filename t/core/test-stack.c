/* test-stack.c - the stack grammar, its JSON form and type checks. */
#include "config.h"

#include <stdlib.h>

#include "../cu.h"
#include "fake.h"

static char errbuf[512];

static const char *
parse_err(const char *text)
{
    struct sl_error e;
    struct sl_stack *s;

    sl_error_clear(&e);
    s = sl_stack_parse(text, &e);
    CU_ASSERT_PTR_NULL(s);
    sl_stack_free(s);
    snprintf(errbuf, sizeof(errbuf), "%s", e.text);
    return errbuf;
}

static void
test_parse_ok(void)
{
    struct sl_error e;
    struct sl_stack *s;
    char *text;

    fake_register();
    sl_error_clear(&e);
    s = sl_stack_parse("fbase addr=127.0.0.1:9000 n=4|fwrap key='a b|c'"
                       " | fwrap key=\"q\\\"x\"", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(sl_stack_len(s), 3);
    CU_ASSERT_EQUAL(sl_stack_produces(s), SL_IO_PIPE);
    text = sl_stack_to_string(s);
    /* Secrets are never shown; defaults are not part of the text. */
    CU_ASSERT_TEXT(text, "fbase addr=127.0.0.1:9000 n=4 | fwrap key=*** | "
                         "fwrap key=***");
    free(text);
    sl_stack_free(s);

    s = sl_stack_parse("  fbase name='x y' d=5ms   |   fmux  ", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(sl_stack_produces(s), SL_IO_SESSION);
    text = sl_stack_to_string(s);
    CU_ASSERT_TEXT(text, "fbase name='x y' d=5ms | fmux");
    free(text);
    sl_stack_free(s);

    /* Layers above a mux run on its streams. */
    s = sl_stack_parse("fbase|fmux|fwrap key=k|fmux", &e);
    CU_ASSERT_PTR_NOT_NULL(s);
    sl_stack_free(s);
}

static void
test_parse_errors(void)
{
    fake_register();
    CU_ASSERT_TEXT(parse_err(""), "stack: empty");
    CU_ASSERT_TEXT(parse_err("fbase |"),
                   "stack: layer name expected after '|' at end of text");
    CU_ASSERT_TEXT(parse_err("nosuch x=1"),
                   "stack layer 1 (nosuch): no such layer (is its plugin "
                   "installed? see sillad-inspect)");
    CU_ASSERT_TEXT(parse_err("fwrap key=1"),
                   "stack layer 1 (fwrap): a stack must start with a base "
                   "layer such as tcp, but 'fwrap' is a wrap layer");
    CU_ASSERT_TEXT(parse_err("fbase | fbase"),
                   "stack layer 2 (fbase): a base layer can only come "
                   "first; it has nothing to run on here");
    CU_ASSERT_TEXT(parse_err("fbase | fwrap"),
                   "stack layer 2 (fwrap): missing required option 'key' "
                   "(a secret)");
    CU_ASSERT_TEXT(parse_err("fbase | fwrap key=reject"),
                   "stack layer 2 (fwrap): fwrap: key rejected");
    CU_ASSERT_TEXT(parse_err("fbase d=soon"),
                   "stack layer 1 (fbase): option 'd': 'soon' is not a "
                   "duration (e.g. 250ms, 5s, 2m, 1h)");
    CU_ASSERT_TEXT(parse_err("fbase name='abc"),
                   "stack: column 12: unterminated single quote");
    CU_ASSERT_TEXT(parse_err("fbase name"),
                   "stack layer 1 (fbase): column 7: expected KEY=VALUE, "
                   "found 'name'");
    CU_ASSERT_TEXT(parse_err("fbase n=1 n=2"),
                   "stack layer 1 (fbase): column 11: option 'n' given "
                   "twice");
    CU_ASSERT_TEXT(parse_err("fbase name=\"a\\qb\""),
                   "stack: column 15: unknown escape '\\q' (use \\\\ \\\" "
                   "\\n \\t)");
    CU_ASSERT_TEXT(parse_err("fbase, fwrap"),
                   "stack: column 6: unexpected ',' (quote values "
                   "containing | , ( or ))");
    CU_ASSERT_TEXT(parse_err("| fbase"),
                   "stack: column 1: layer name expected, found '|'");
    CU_ASSERT_TEXT(parse_err("fbase|fbase|fbase|fbase|fbase|fbase|fbase|"
                             "fbase|fbase|fbase|fbase|fbase|fbase|fbase|"
                             "fbase|fbase|fbase"),
                   "stack: more than 16 layers");
}

static void
test_json(void)
{
    struct sl_error e;
    struct sl_stack *s;
    char *text;

    fake_register();
    sl_error_clear(&e);
    s = sl_stack_from_json_text(
        "[{\"layer\":\"fbase\",\"n\":7,\"fail\":false,"
        "\"optional\":{\"mode\":\"b\",\"future\":1}},"
        "{\"layer\":\"fwrap\",\"key\":\"k\"}]", &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    text = sl_stack_to_string(s);
    CU_ASSERT_TEXT(text, "fbase n=7 fail=false mode=b | fwrap key=***");
    free(text);
    sl_stack_free(s);

    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_from_json_text(
        "[{\"layer\":\"fbase\",\"n\":[1]}]", &e));
    CU_ASSERT_TEXT(e.text, "stack: layer 1 (fbase): option 'n' must be a "
                           "string, integer or boolean");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_from_json_text("[{\"n\":1}]", &e));
    CU_ASSERT_TEXT(e.text, "stack: layer 1: expected an object with a "
                           "\"layer\" string");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_from_json_text("[{\"layer\":\"fbase\"", &e));
    CU_ASSERT_TEXT(e.text, "stack JSON: line 1 column 17: '}' expected "
                           "near end of file");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_stack_from_json_text(
        "[{\"layer\":\"fbase\",\"typo\":1}]", &e));
    CU_ASSERT_TEXT(e.text, "stack layer 1 (fbase): unknown option 'typo' "
                           "(known: addr, d, fail, name, n, sz, mode)");
}

static void
test_dialer_parse(void)
{
    struct sl_error e;
    struct sl_dialer *d;

    fake_register();
    sl_error_clear(&e);
    d = sl_dialer_parse("race(fbase name=a, delay(10ms, fbase), "
                        "fallback(fbase fail=1, timeout(1s, fbase|fwrap "
                        "key=k)))", &e);
    CU_ASSERT_PTR_NOT_NULL(d);
    sl_dialer_free(d);
    d = sl_dialer_parse("race(fbase, fbase | fmux)", &e);
    CU_ASSERT_PTR_NULL(d);
    CU_ASSERT_TEXT(e.text, "dialer: race(): alternative 2 ends in a mux but "
                           "alternative 1 in a pipe");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_dialer_parse("timeout(fbase)", &e));
    CU_ASSERT_TEXT(e.text, "dialer: column 9: 'fbase' is not a duration "
                           "(e.g. 250ms, 5s)");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_dialer_parse("delay(1s, fbase, fbase)", &e));
    CU_ASSERT_TEXT(e.text, "dialer: delay() takes a duration and exactly "
                           "one dialer");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_dialer_parse("race(fbase fbase)", &e));
    CU_ASSERT_TEXT(e.text, "stack layer 1 (fbase): column 12: expected "
                           "KEY=VALUE, found 'fbase'");
    sl_error_clear(&e);
    CU_ASSERT_PTR_NULL(sl_dialer_parse("race(fbase", &e));
    CU_ASSERT_TEXT(e.text, "dialer: column 11: expected ',' or ')' in "
                           "race(...)");
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "parse", test_parse_ok },
        { "parse errors name the place", test_parse_errors },
        { "JSON form", test_json },
        { "dialer expressions", test_dialer_parse },
        { NULL, NULL },
    };
    int r = cu_run("stack", tests);

    sl_loader_unload_all();
    return r;
}
