/* test-inbound.c - the SOCKS5 and HTTP CONNECT parsers of sillad-client:
 * greetings, RFC 1929 authentication, requests with IPv4, IPv6 and domain
 * names, every truncation of valid input, malformed input, HTTP heads,
 * and the SOCKS5 codes for the exit's failure texts. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cu.h"
#include "inbound-http.h"
#include "inbound-socks5.h"
#include "sillad.h"
#include "tunnel.h"

/* ---- SOCKS5 ------------------------------------------------------------- */

static void
test_greeting(void)
{
    static const uint8_t noauth[] = { 5, 1, 0 };
    static const uint8_t both[] = { 5, 2, 0, 2 };
    static const uint8_t gssapi[] = { 5, 1, 1 };
    struct sl_error e;
    uint8_t m = 0x77;

    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_greeting_parse(noauth, 3, 0, &m, &e), 3);
    CU_ASSERT_EQUAL(m, S5_METHOD_NONE);
    CU_ASSERT_EQUAL(s5_greeting_parse(noauth, 3, 1, &m, &e), 3);
    CU_ASSERT_EQUAL(m, S5_METHOD_REFUSED);
    CU_ASSERT_EQUAL(s5_greeting_parse(both, 4, 1, &m, &e), 4);
    CU_ASSERT_EQUAL(m, S5_METHOD_USERPASS);
    CU_ASSERT_EQUAL(s5_greeting_parse(both, 4, 0, &m, &e), 4);
    CU_ASSERT_EQUAL(m, S5_METHOD_NONE);
    CU_ASSERT_EQUAL(s5_greeting_parse(gssapi, 3, 0, &m, &e), 3);
    CU_ASSERT_EQUAL(m, S5_METHOD_REFUSED);
    /* Truncations need more; the result is left alone. */
    for (size_t n = 0; n < sizeof(both); n++) {
        m = 0x77;
        CU_ASSERT_EQUAL(s5_greeting_parse(both, n, 1, &m, &e), 0);
        CU_ASSERT_EQUAL(m, 0x77);
    }
    CU_ASSERT_EQUAL(e.code, 0);
    /* Trailing bytes (a pipelined request) are not consumed. */
    {
        static const uint8_t more[] = { 5, 1, 0, 5, 1, 0, 1 };

        CU_ASSERT_EQUAL(s5_greeting_parse(more, sizeof(more), 0, &m, &e), 3);
    }
}

static void
test_greeting_bad(void)
{
    static const uint8_t v4[] = { 4, 1, 0, 80, 127, 0, 0, 1, 0 };
    static const uint8_t zero[] = { 5, 0 };
    static const uint8_t http[] = "GET / HTTP/1.1\r\n";
    struct sl_error e;
    uint8_t m;

    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_greeting_parse(v4, sizeof(v4), 0, &m, &e), -1);
    CU_ASSERT_TEXT(e.text, "greeting: version 4, not 5");
    CU_ASSERT_STRING_EQUAL(e.layer, "socks5");
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_greeting_parse(zero, 2, 0, &m, &e), -1);
    CU_ASSERT_TEXT(e.text, "greeting: no methods offered");
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_greeting_parse(http, 1, 0, &m, &e), -1);
    CU_ASSERT_TEXT(e.text, "greeting: version 71, not 5");
}

static void
test_auth(void)
{
    static const uint8_t ok[] = { 1, 3, 'b', 'o', 'b', 4, 'p', 'a', 's',
                                  's' };
    static const uint8_t nopass[] = { 1, 1, 'a', 0 };
    static const uint8_t v5[] = { 5, 1, 'a', 1, 'b' };
    static const uint8_t nouser[] = { 1, 0, 1, 'b' };
    static const uint8_t nul[] = { 1, 2, 'a', 0, 1, 'b' };
    struct s5_auth a;
    struct sl_error e;

    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_auth_parse(ok, sizeof(ok), &a, &e), (int)sizeof(ok));
    CU_ASSERT_STRING_EQUAL(a.user, "bob");
    CU_ASSERT_STRING_EQUAL(a.pass, "pass");
    for (size_t n = 0; n < sizeof(ok); n++)
        CU_ASSERT_EQUAL(s5_auth_parse(ok, n, &a, &e), 0);
    CU_ASSERT_EQUAL(s5_auth_parse(nopass, sizeof(nopass), &a, &e), 4);
    CU_ASSERT_STRING_EQUAL(a.user, "a");
    CU_ASSERT_STRING_EQUAL(a.pass, "");
    CU_ASSERT_EQUAL(e.code, 0);
    CU_ASSERT_EQUAL(s5_auth_parse(v5, sizeof(v5), &a, &e), -1);
    CU_ASSERT_TEXT(e.text, "authentication: version 5, not 1");
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_auth_parse(nouser, sizeof(nouser), &a, &e), -1);
    CU_ASSERT_TEXT(e.text, "authentication: empty user name");
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_auth_parse(nul, sizeof(nul), &a, &e), -1);
    CU_ASSERT_TEXT(e.text, "authentication: NUL in user name or password");
    /* The longest message of all: 255 + 255. */
    {
        uint8_t big[S5_MSG_MAX];

        memset(big, 'x', sizeof(big));
        big[0] = 1;
        big[1] = 255;
        big[2 + 255] = 255;
        sl_error_clear(&e);
        CU_ASSERT_EQUAL(s5_auth_parse(big, sizeof(big), &a, &e),
                        (int)sizeof(big));
        CU_ASSERT_EQUAL(strlen(a.user), 255);
        CU_ASSERT_EQUAL(strlen(a.pass), 255);
    }
}

static void
check_request(const uint8_t *req, size_t n, const char *host, uint16_t port,
              uint8_t atyp)
{
    struct s5_request r;
    struct sl_error e;
    uint8_t rep = 0x77;

    sl_error_clear(&e);
    CU_ASSERT_EQUAL(s5_request_parse(req, n, &r, &rep, &e), (int)n);
    CU_ASSERT_EQUAL(rep, S5_REP_OK);
    CU_ASSERT_STRING_EQUAL(r.host, host);
    CU_ASSERT_EQUAL(r.port, port);
    CU_ASSERT_EQUAL(r.atyp, atyp);
    for (size_t k = 0; k < n; k++) {
        memset(&r, 0x55, sizeof(r));
        CU_ASSERT_EQUAL(s5_request_parse(req, k, &r, &rep, &e), 0);
        CU_ASSERT_EQUAL(r.port, 0x5555);
    }
    CU_ASSERT_EQUAL(e.code, 0);
}

static void
test_request(void)
{
    static const uint8_t v4[] = { 5, 1, 0, 1, 93, 184, 215, 14, 0x01, 0xbb };
    static const uint8_t v6[] = { 5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0,
                                  0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90 };
    static const uint8_t v6m[] = { 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                   0xff, 0xff, 127, 0, 0, 1, 0, 80 };
    static const uint8_t name[] = { 5, 1, 0, 3, 11, 'e', 'x', 'a', 'm', 'p',
                                    'l', 'e', '.', 'c', 'o', 'm', 0, 80 };

    check_request(v4, sizeof(v4), "93.184.215.14", 443, 1);
    check_request(v6, sizeof(v6), "2001:db8::1", 8080, 4);
    check_request(v6m, sizeof(v6m), "::ffff:127.0.0.1", 80, 4);
    check_request(name, sizeof(name), "example.com", 80, 3);
    /* A 255-byte name: the longest message. */
    {
        uint8_t big[262];
        char want[256];

        big[0] = 5;
        big[1] = 1;
        big[2] = 0;
        big[3] = 3;
        big[4] = 255;
        memset(big + 5, 'a', 255);
        memset(want, 'a', 255);
        want[255] = '\0';
        big[260] = 0xff;
        big[261] = 0xff;
        check_request(big, sizeof(big), want, 65535, 3);
    }
}

static void
check_bad_request(const uint8_t *req, size_t n, uint8_t want_rep,
                  const char *want_text)
{
    struct s5_request r;
    struct sl_error e;
    uint8_t rep = 0x77;

    sl_error_clear(&e);
    memset(&r, 0x55, sizeof(r));
    CU_ASSERT_EQUAL(s5_request_parse(req, n, &r, &rep, &e), -1);
    CU_ASSERT_EQUAL(rep, want_rep);
    CU_ASSERT_TEXT(e.text, want_text);
    CU_ASSERT_EQUAL(r.port, 0x5555);
}

static void
test_request_bad(void)
{
    static const uint8_t bind[] = { 5, 2, 0, 1, 1, 2, 3, 4, 0, 80 };
    static const uint8_t udp[] = { 5, 3, 0, 1, 1, 2, 3, 4, 0, 80 };
    static const uint8_t atyp[] = { 5, 1, 0, 2, 1, 2, 3, 4, 0, 80 };
    static const uint8_t ver[] = { 4, 1, 0, 1, 1, 2, 3, 4, 0, 80 };
    static const uint8_t empty[] = { 5, 1, 0, 3, 0, 0, 80 };
    static const uint8_t port0[] = { 5, 1, 0, 1, 1, 2, 3, 4, 0, 0 };
    static const uint8_t colon[] = { 5, 1, 0, 3, 3, 'a', ':', 'b', 0, 80 };
    static const uint8_t ctl[] = { 5, 1, 0, 3, 3, 'a', '\n', 'b', 0, 80 };
    static const uint8_t space[] = { 5, 1, 0, 3, 3, 'a', ' ', 'b', 0, 80 };
    static const uint8_t high[] = { 5, 1, 0, 3, 3, 'a', 0xc3, 'b', 0, 80 };
    static const char *name_err = "request: the domain name holds a byte "
                                  "that is not printable ASCII, a blank, "
                                  "':' or a bracket";

    check_bad_request(bind, sizeof(bind), S5_REP_CMD,
                      "request: command 2 is not supported (only CONNECT)");
    check_bad_request(udp, sizeof(udp), S5_REP_CMD,
                      "request: command 3 is not supported (only CONNECT)");
    check_bad_request(atyp, sizeof(atyp), S5_REP_ATYP,
                      "request: address type 2 is not supported");
    check_bad_request(ver, sizeof(ver), S5_REP_FAILURE,
                      "request: version 4, not 5");
    check_bad_request(empty, sizeof(empty), S5_REP_FAILURE,
                      "request: empty domain name");
    check_bad_request(port0, sizeof(port0), S5_REP_FAILURE,
                      "request: port 0");
    check_bad_request(colon, sizeof(colon), S5_REP_FAILURE, name_err);
    check_bad_request(ctl, sizeof(ctl), S5_REP_FAILURE, name_err);
    check_bad_request(space, sizeof(space), S5_REP_FAILURE, name_err);
    check_bad_request(high, sizeof(high), S5_REP_FAILURE, name_err);
    /* A bad command is known from two bytes on. */
    check_bad_request(bind, 2, S5_REP_CMD,
                      "request: command 2 is not supported (only CONNECT)");
}

static void
test_replies(void)
{
    uint8_t out[10];
    static const uint8_t ok[10] = { 5, 0, 0, 1, 0, 0, 0, 0, 0, 0 };
    static const uint8_t refused[10] = { 5, 5, 0, 1, 0, 0, 0, 0, 0, 0 };

    CU_ASSERT_EQUAL(s5_reply(S5_REP_OK, out), 10);
    CU_ASSERT(memcmp(out, ok, 10) == 0);
    CU_ASSERT_EQUAL(s5_reply(S5_REP_REFUSED, out), 10);
    CU_ASSERT(memcmp(out, refused, 10) == 0);
    CU_ASSERT_EQUAL(s5_method_reply(S5_METHOD_USERPASS, out), 2);
    CU_ASSERT(out[0] == 5 && out[1] == 2);
    CU_ASSERT_EQUAL(s5_auth_reply(1, out), 2);
    CU_ASSERT(out[0] == 1 && out[1] == 0);
    CU_ASSERT_EQUAL(s5_auth_reply(0, out), 2);
    CU_ASSERT(out[0] == 1 && out[1] != 0);
}

static void
test_fail_codes(void)
{
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_POLICY), 0x02);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_POLICY ": 127.0.0.1 is "
                                    "private"), 0x02);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_REFUSED), 0x05);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_REFUSED ": 127.0.0.1:1"), 0x05);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_UNREACH), 0x04);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_DNS ": no.such"), 0x04);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_NETUNR), 0x03);
    CU_ASSERT_EQUAL(s5_rep_for_fail(TUN_FAIL_TIMEOUT), 0x06);
    CU_ASSERT_EQUAL(s5_rep_for_fail("some Geph error"), 0x01);
    CU_ASSERT_EQUAL(s5_rep_for_fail(""), 0x01);
    /* A prefix, not a substring. */
    CU_ASSERT_EQUAL(s5_rep_for_fail("x " TUN_FAIL_REFUSED), 0x01);
}

/* ---- HTTP --------------------------------------------------------------- */

static int
parse(const char *head, struct http_req *r, int *status, struct sl_error *e)
{
    sl_error_clear(e);
    memset(r, 0, sizeof(*r));
    return http_head_parse(head, strlen(head), r, status, e);
}

static void
test_http_connect(void)
{
    static const char *h1 = "CONNECT example.com:443 HTTP/1.1\r\n"
                            "Host: example.com:443\r\n"
                            "User-Agent: t\r\n\r\n";
    static const char *h6 = "CONNECT [2001:db8::1]:8443 HTTP/1.0\n\n";
    static const char *auth = "CONNECT 10.0.0.1:80 HTTP/1.1\r\n"
                              "proxy-authorization:   Basic Ym9iOnNlY3JldA==\r\n"
                              "\r\nEARLY";
    struct http_req r;
    struct sl_error e;
    int st;

    CU_ASSERT_EQUAL(parse(h1, &r, &st, &e), (int)strlen(h1));
    CU_ASSERT(r.is_connect);
    CU_ASSERT_STRING_EQUAL(r.host, "example.com");
    CU_ASSERT_STRING_EQUAL(r.port, "443");
    CU_ASSERT_EQUAL(r.minor, 1);
    CU_ASSERT_STRING_EQUAL(r.basic, "");
    CU_ASSERT_EQUAL(parse(h6, &r, &st, &e), (int)strlen(h6));
    CU_ASSERT_STRING_EQUAL(r.host, "2001:db8::1");
    CU_ASSERT_STRING_EQUAL(r.port, "8443");
    CU_ASSERT_EQUAL(r.minor, 0);
    /* The head ends before the early data. */
    CU_ASSERT_EQUAL(parse(auth, &r, &st, &e), (int)strlen(auth) - 5);
    CU_ASSERT_STRING_EQUAL(r.basic, "bob:secret");
    /* Every truncation needs more. */
    for (size_t n = 0; n < strlen(h1); n++) {
        sl_error_clear(&e);
        CU_ASSERT_EQUAL(http_head_parse(h1, n, &r, &st, &e), 0);
    }
    CU_ASSERT_EQUAL(e.code, 0);
}

static void
test_http_other_methods(void)
{
    struct http_req r;
    struct sl_error e;
    int st;

    CU_ASSERT(parse("GET http://example.com/ HTTP/1.1\r\nHost: "
                    "example.com\r\n\r\n", &r, &st, &e) > 0);
    CU_ASSERT(!r.is_connect);
    CU_ASSERT_STRING_EQUAL(r.method, "GET");
    CU_ASSERT_STRING_EQUAL(r.target, "http://example.com/");
    CU_ASSERT(parse("POST / HTTP/1.0\r\n\r\n", &r, &st, &e) > 0);
    CU_ASSERT(!r.is_connect);
}

static void
check_http_bad(const char *head, int want_status, const char *want_text)
{
    struct http_req r;
    struct sl_error e;
    int st = 0;

    CU_ASSERT_EQUAL(parse(head, &r, &st, &e), -1);
    CU_ASSERT_EQUAL(st, want_status);
    CU_ASSERT_TEXT(e.text, want_text);
    CU_ASSERT_STRING_EQUAL(e.layer, "http");
}

static void
test_http_bad(void)
{
    static const char *target = "CONNECT target is not host:port with a "
                                "port from 1 to 65535";

    check_http_bad("CONNECT example.com HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT example.com:0 HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT example.com:65536 HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT example.com:443x HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT :443 HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT [::1:443 HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT [zz]:443 HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT a@b:443 HTTP/1.1\r\n\r\n", 400, target);
    check_http_bad("CONNECT a:443 HTTP/2.0\r\n\r\n", 505,
                   "request line: only HTTP/1.0 and HTTP/1.1 are supported");
    check_http_bad("CONNECT a:443 HTTP/1.2\r\n\r\n", 505,
                   "request line: only HTTP/1.0 and HTTP/1.1 are supported");
    check_http_bad("CONNECT a:443\r\n\r\n", 400, "request line: no target");
    check_http_bad("CONNECT a:443 FOO\r\n\r\n", 400,
                   "request line: no HTTP version");
    check_http_bad("\x05\x01\x00", 400,
                   "request line: the method is not a token");
    check_http_bad("CONNECT a:1 HTTP/1.1\r\n folded\r\n\r\n", 400,
                   "header: obsolete line folding");
    check_http_bad("CONNECT a:1 HTTP/1.1\r\nNoColon\r\n\r\n", 400,
                   "header: no field name");
    check_http_bad("CONNECT a:1 HTTP/1.1\r\nBad Name: x\r\n\r\n", 400,
                   "header: bad field name");
    check_http_bad("CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic "
                   "!!!\r\n\r\n", 400,
                   "header: Proxy-Authorization is not valid base64");
}

static void
test_http_limit(void)
{
    char *big = malloc(HTTP_HEAD_MAX + 100);
    struct http_req r;
    struct sl_error e;
    int st = 0;
    size_t n;

    CU_ASSERT_FATAL(big != NULL);
    n = (size_t)snprintf(big, 100, "CONNECT a:1 HTTP/1.1\r\nX: ");
    memset(big + n, 'x', HTTP_HEAD_MAX + 100 - n);
    sl_error_clear(&e);
    /* Below the bound: more is needed. */
    CU_ASSERT_EQUAL(http_head_parse(big, HTTP_HEAD_MAX - 1, &r, &st, &e), 0);
    /* At the bound without an end: refused. */
    CU_ASSERT_EQUAL(http_head_parse(big, HTTP_HEAD_MAX, &r, &st, &e), -1);
    CU_ASSERT_EQUAL(st, 431);
    CU_ASSERT_TEXT(e.text, "request head longer than 8192 bytes");
    /* A head that ends exactly at the bound is fine. */
    memcpy(big + HTTP_HEAD_MAX - 4, "\r\n\r\n", 4);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(http_head_parse(big, HTTP_HEAD_MAX + 100, &r, &st, &e),
                    HTTP_HEAD_MAX);
    free(big);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "socks5 greeting and method choice", test_greeting },
        { "socks5 malformed greetings", test_greeting_bad },
        { "socks5 username/password (RFC 1929)", test_auth },
        { "socks5 CONNECT with IPv4, IPv6 and names", test_request },
        { "socks5 malformed and unsupported requests", test_request_bad },
        { "socks5 replies", test_replies },
        { "socks5 codes for the exit's failure texts", test_fail_codes },
        { "http CONNECT heads", test_http_connect },
        { "http other methods parse (answered 405)",
          test_http_other_methods },
        { "http malformed heads", test_http_bad },
        { "http head bound of 8 KiB", test_http_limit },
        { NULL, NULL },
    };

    sl_log_set_level(SL_LOG_ERR);
    return cu_run("inbound", tests);
}
