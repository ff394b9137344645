/* test-tunnel.c - roles/tunnel.c: messages, commands, replies, B2eMetadata
 * against the bytes of sillad-and-stacks.md §10. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "../cu.h"
#include "sillad.h"
#include "tunnel.h"

/* §10.1: B2eMetadata{ConnTest(Sosistab3New("0011..eeff", None)),
 * 1700086400 s + 123456789 ns}. */
static const unsigned char b2e_101[46] = {
    0x02, 0x04, 0x20,
    '0', '0', '1', '1', '2', '2', '3', '3', '4', '4', '5', '5', '6', '6',
    '7', '7', '8', '8', '9', '9', 'a', 'a', 'b', 'b', 'c', 'c', 'd', 'd',
    'e', 'e', 'f', 'f',
    0x01,
    0xfc, 0x80, 0x42, 0x55, 0x65,
    0xfc, 0x15, 0xcd, 0x5b, 0x07,
};

/* ---- §10.4 --------------------------------------------------------------- */

static void
test_rich_command_bytes(void)
{
    char *j = tun_cmd_rich("tcp", "example.com", "443");

    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_TEXT(j, "{\"protocol\":\"tcp\",\"host\":\"example.com:443\"}");
    CU_ASSERT_EQUAL(strlen(j), 43);   /* the SYN body length of §10.4 */
    free(j);
    j = tun_cmd_rich("udp", "2001:db8::1", "53");
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_TEXT(j, "{\"protocol\":\"udp\",\"host\":\"[2001:db8::1]:53\"}");
    free(j);
    CU_ASSERT_PTR_NULL(tun_cmd_rich("tcp", "", "443"));
    CU_ASSERT_PTR_NULL(tun_cmd_rich("tcp", "a", ""));
    CU_ASSERT_PTR_NULL(tun_cmd_rich("tcp", "a", "123456"));
}

static void
test_reply_bytes(void)
{
    static const char want[] =
        "{\"success\":{\"resolved_addr\":\"93.184.215.14:443\",\"open_ms\":42}}";
    char *j = tun_reply_ok("93.184.215.14:443", 42);
    struct evbuffer *b = evbuffer_new();
    unsigned char hdr[4];

    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_TEXT(j, want);
    CU_ASSERT_EQUAL(tun_msg_put(b, j, strlen(j)), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(b), 4 + 0x3e);
    evbuffer_copyout(b, hdr, 4);
    CU_ASSERT(hdr[0] == 0 && hdr[1] == 0 && hdr[2] == 0 && hdr[3] == 0x3e);
    free(j);
    evbuffer_free(b);
    j = tun_reply_ok("8.8.8.8:53", -1);
    CU_ASSERT_TEXT(j, "{\"success\":{\"resolved_addr\":\"8.8.8.8:53\","
                      "\"open_ms\":null}}");
    free(j);
    j = tun_reply_fail(TUN_FAIL_REFUSED ": 127.0.0.1:1");
    CU_ASSERT_TEXT(j, "{\"fail\":\"connection refused: 127.0.0.1:1\"}");
    free(j);
    j = tun_reply_fail("quote \" and \\ and \n");
    CU_ASSERT_TEXT(j, "{\"fail\":\"quote \\\" and \\\\ and \\n\"}");
    free(j);
}

/* ---- messages ------------------------------------------------------------ */

static void
test_msg_take(void)
{
    struct evbuffer *b = evbuffer_new();
    unsigned char *p = NULL, big[5] = { 0, 1, 0x86, 0xa1, 0 };
    size_t n = 99;
    struct sl_error e;

    sl_error_clear(&e);
    /* Nothing, then the header a byte at a time, then the payload. */
    CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), 0);
    evbuffer_add(b, "\0\0", 2);
    CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), 0);
    evbuffer_add(b, "\0\5he", 4);
    CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(b), 6);
    evbuffer_add(b, "llo", 3);
    CU_ASSERT_EQUAL(tun_msg_put(b, "", 0), 0);
    CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), 1);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT(memcmp(p, "hello", 5) == 0);
    free(p);
    p = NULL;
    /* The empty message behind it. */
    CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), 1);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_PTR_NOT_NULL(p);
    free(p);
    CU_ASSERT_EQUAL(evbuffer_get_length(b), 0);
    /* 100 001 is one above the limit and refused before any payload. */
    evbuffer_add(b, big, 4);
    CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), -1);
    CU_ASSERT_EQUAL(e.code, SL_EPROTO);
    CU_ASSERT_TEXT(e.text, "message length 100001 is above the limit of "
                           "100000 bytes");
    evbuffer_drain(b, 4);
    /* Exactly the limit is fine. */
    {
        unsigned char *blob = calloc(1, TUN_MSG_MAX + 1);

        CU_ASSERT_EQUAL(tun_msg_put(b, blob, TUN_MSG_MAX), 0);
        CU_ASSERT_EQUAL(tun_msg_put(b, blob, TUN_MSG_MAX + 1), -1);
        CU_ASSERT_EQUAL(evbuffer_get_length(b), 4 + TUN_MSG_MAX);
        CU_ASSERT_EQUAL(tun_msg_take(b, &p, &n, &e), 1);
        CU_ASSERT_EQUAL(n, TUN_MSG_MAX);
        free(p);
        free(blob);
    }
    evbuffer_free(b);
}

/* ---- commands ------------------------------------------------------------ */

static int
parse(const char *s, struct tun_cmd *c, struct sl_error *e)
{
    memset(c, 0x5a, sizeof(*c));
    sl_error_clear(e);
    return tun_cmd_parse(s, strlen(s), c, e);
}

static void
test_cmd_rich(void)
{
    struct tun_cmd c;
    struct sl_error e;

    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\",\"host\":\"example.com:443\"}",
                          &c, &e), 0);
    CU_ASSERT_EQUAL(c.rich, 1);
    CU_ASSERT_EQUAL(c.proto, TUN_TCP);
    CU_ASSERT_TEXT(c.host, "example.com");
    CU_ASSERT_TEXT(c.port, "443");
    /* Field order, extra fields and whitespace do not matter (serde). */
    CU_ASSERT_EQUAL(parse(" {\"host\":\"[2001:db8::1]:53\", \"x\":[1],"
                          "\"protocol\":\"udp\"}", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("{\"host\":\"[2001:db8::1]:53\", \"x\":[1],"
                          "\"protocol\":\"udp\"}", &c, &e), 0);
    CU_ASSERT_EQUAL(c.proto, TUN_UDP);
    CU_ASSERT_TEXT(c.host, "2001:db8::1");
    CU_ASSERT_TEXT(c.port, "53");
    /* Unknown protocol: well-formed, answered with a failure. */
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"sctp\",\"host\":\"a:1\"}", &c, &e),
                    SL_ENOTSUP);
    CU_ASSERT_EQUAL(c.rich, 1);
    CU_ASSERT_TEXT(e.text, "unknown protocol 'sctp' (tcp or udp)");
    /* Bad host inside a well-formed command: also a failure reply. */
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\",\"host\":\"nocolon\"}", &c,
                          &e), SL_ENOTSUP);
    CU_ASSERT_TEXT(e.text, "host 'nocolon' has no ':port'");
    CU_ASSERT_TEXT(c.host, "");
    /* Malformed: dropped without reply. */
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\"", &c, &e), SL_EINVAL);
    CU_ASSERT(strncmp(e.text, "rich tunnel command: column", 27) == 0);
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\"}", &c, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "rich tunnel command: expected an object with "
                           "string fields \"protocol\" and \"host\"");
    CU_ASSERT_EQUAL(parse("{\"protocol\":1,\"host\":\"a:1\"}", &c, &e),
                    SL_EINVAL);
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\",\"host\":\"a:1\","
                          "\"host\":\"b:2\"}", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\",\"host\":\"a:1\"} x", &c,
                          &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("{\"protocol\":\"tcp\",\"host\":\"a\\u0000b:1\"}",
                          &c, &e), SL_EINVAL);
    {
        static const char bad[] = "{\"protocol\":\"tcp\",\"host\":\"\xff:1\"}";
        struct tun_cmd keep = c;

        sl_error_clear(&e);
        CU_ASSERT_EQUAL(tun_cmd_parse(bad, strlen(bad), &c, &e), SL_EINVAL);
        CU_ASSERT_TEXT(e.text, "tunnel command is not UTF-8 text");
        CU_ASSERT(memcmp(&keep, &c, sizeof(c)) == 0);   /* untouched */
    }
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(tun_cmd_parse("", 0, &c, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "empty tunnel command");
}

static void
test_cmd_legacy(void)
{
    struct tun_cmd c;
    struct sl_error e;

    CU_ASSERT_EQUAL(parse("udp$8.8.8.8:53", &c, &e), 0);
    CU_ASSERT_EQUAL(c.rich, 0);
    CU_ASSERT_EQUAL(c.proto, TUN_UDP);
    CU_ASSERT_TEXT(c.host, "8.8.8.8");
    CU_ASSERT_TEXT(c.port, "53");
    CU_ASSERT_EQUAL(parse("tcp$example.com:80", &c, &e), 0);
    CU_ASSERT_EQUAL(c.proto, TUN_TCP);
    CU_ASSERT_TEXT(c.host, "example.com");
    CU_ASSERT_EQUAL(parse("example.com:443", &c, &e), 0);
    CU_ASSERT_EQUAL(c.rich, 0);
    CU_ASSERT_EQUAL(c.proto, TUN_TCP);
    CU_ASSERT_TEXT(c.host, "example.com");
    CU_ASSERT_TEXT(c.port, "443");
    /* Split at the first $ and at the last ':'. */
    CU_ASSERT_EQUAL(parse("tcp$a$b:1", &c, &e), 0);
    CU_ASSERT_TEXT(c.host, "a$b");
    CU_ASSERT_EQUAL(parse("2001:db8::1:443", &c, &e), 0);
    CU_ASSERT_TEXT(c.host, "2001:db8::1");
    CU_ASSERT_TEXT(c.port, "443");
    CU_ASSERT_EQUAL(parse("[2001:db8::1]:443", &c, &e), 0);
    CU_ASSERT_TEXT(c.host, "2001:db8::1");
    CU_ASSERT_EQUAL(parse("[::1]:65535", &c, &e), 0);
    CU_ASSERT_TEXT(c.host, "::1");
    CU_ASSERT_TEXT(c.port, "65535");
    CU_ASSERT_EQUAL(parse("ftp$a:1", &c, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "legacy tunnel command: unknown protocol 'ftp' "
                           "(tcp or udp)");
    CU_ASSERT_EQUAL(parse("example.com", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse(":80", &c, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "empty host name before ':port'");
    CU_ASSERT_EQUAL(parse("a:0", &c, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "port '0' is not a number from 1 to 65535");
    CU_ASSERT_EQUAL(parse("a:65536", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("a:", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("a:8o", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("a:123456", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("[::1:80", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("[]:80", &c, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(parse("a b:80", &c, &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "host name has a forbidden character (0x20) at "
                           "byte 2");
    {
        char longhost[300];

        memset(longhost, 'a', 256);
        strcpy(longhost + 256, ":80");
        CU_ASSERT_EQUAL(parse(longhost, &c, &e), SL_EINVAL);
        CU_ASSERT_TEXT(e.text, "host name longer than 255 bytes");
        longhost[255] = ':';
        CU_ASSERT_EQUAL(parse(longhost, &c, &e), SL_EINVAL);  /* 2 colons */
        memset(longhost, 'a', 255);
        strcpy(longhost + 255, ":80");
        CU_ASSERT_EQUAL(parse(longhost, &c, &e), 0);
        CU_ASSERT_EQUAL(strlen(c.host), 255);
    }
}

/* ---- replies ------------------------------------------------------------- */

static int
rparse(const char *s, struct tun_reply *r, struct sl_error *e)
{
    sl_error_clear(e);
    return tun_reply_parse(s, strlen(s), r, e);
}

static void
test_reply_parse(void)
{
    struct tun_reply r;
    struct sl_error e;
    char big[1200];

    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":"
                           "\"93.184.215.14:443\",\"open_ms\":42}}", &r, &e),
                    0);
    CU_ASSERT_EQUAL(r.ok, 1);
    CU_ASSERT_TEXT(r.resolved_addr, "93.184.215.14:443");
    CU_ASSERT_EQUAL(r.open_ms, 42);
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"8.8.8.8:53\","
                           "\"open_ms\":null}}", &r, &e), 0);
    CU_ASSERT_EQUAL(r.open_ms, -1);
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"x\",\"y\":1}}",
                           &r, &e), 0);
    CU_ASSERT_EQUAL(r.open_ms, -1);
    CU_ASSERT_EQUAL(rparse("{\"fail\":\"connection refused: x\"}", &r, &e),
                    0);
    CU_ASSERT_EQUAL(r.ok, 0);
    CU_ASSERT_TEXT(r.fail, "connection refused: x");
    /* A long failure text is cut to the field. */
    strcpy(big, "{\"fail\":\"");
    memset(big + 9, 'x', 1000);
    strcpy(big + 1009, "\"}");
    CU_ASSERT_EQUAL(rparse(big, &r, &e), 0);
    CU_ASSERT_EQUAL(strlen(r.fail), sizeof(r.fail) - 1);
    CU_ASSERT_EQUAL(rparse("{\"fail\":1}", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"success\":{}}", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"x\","
                           "\"open_ms\":-1}}", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"x\"},"
                           "\"fail\":\"y\"}", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"other\":1}", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("\"success\"", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("", &r, &e), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"fail\":\"a\"", &r, &e), SL_EINVAL);
    CU_ASSERT(strncmp(e.text, "tunnel reply: column", 20) == 0);
}

/* The compact forms are read and written as text, everything else by
 * Jansson: both must give the same bytes and the same values. */
static void
test_compact_forms(void)
{
    static const char *cmds[][2] = {
        { "{\"protocol\":\"tcp\",\"host\":\"example.com:443\"}",
          "{ \"host\" : \"example.com:443\", \"protocol\" : \"tcp\" }" },
        { "{\"protocol\":\"udp\",\"host\":\"[2001:db8::1]:53\"}",
          "{\"protocol\":\"\\u0075dp\",\"host\":\"[2001:db8::1]:53\"}" },
        { "{\"protocol\":\"sctp\",\"host\":\"a:1\"}",
          "{\"host\":\"a:1\",\"protocol\":\"sctp\"}" },
        { "{\"protocol\":\"tcp\",\"host\":\"no-port\"}",
          "{\"protocol\":\"tcp\",\"host\":\"no-port\"}\n" },
    };
    static const char *replies[][2] = {
        { "{\"success\":{\"resolved_addr\":\"1.2.3.4:80\",\"open_ms\":7}}",
          "{\"success\":{\"open_ms\":7,\"resolved_addr\":\"1.2.3.4:80\"}}" },
        { "{\"success\":{\"resolved_addr\":\"[::1]:80\",\"open_ms\":null}}",
          "{\"success\": {\"resolved_addr\": \"[::1]:80\", \"open_ms\": null}}" },
        { "{\"success\":{\"resolved_addr\":\"x:1\",\"open_ms\":0}}",
          "{\"success\":{\"resolved_addr\":\"\\u0078:1\",\"open_ms\":0}}" },
        { "{\"success\":{\"resolved_addr\":\"x:1\",\"open_ms\":"
          "999999999999}}",
          "{\"success\":{\"resolved_addr\":\"x:1\",\"open_ms\":"
          "999999999999} }" },
    };
    struct tun_cmd a, b;
    struct sl_error ea, eb;
    struct tun_reply ra, rb;
    char *j;

    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        int x = parse(cmds[i][0], &a, &ea), y = parse(cmds[i][1], &b, &eb);

        CU_ASSERT_EQUAL(x, y);
        CU_ASSERT_TEXT(ea.text, eb.text);
        CU_ASSERT(a.rich == b.rich && a.proto == b.proto);
        if (x == 0) {
            CU_ASSERT_TEXT(a.host, b.host);
            CU_ASSERT_TEXT(a.port, b.port);
        }
    }
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(rparse(replies[i][0], &ra, &ea), 0);
        CU_ASSERT_EQUAL_FATAL(rparse(replies[i][1], &rb, &eb), 0);
        CU_ASSERT(ra.ok == 1 && rb.ok == 1);
        CU_ASSERT_TEXT(ra.resolved_addr, rb.resolved_addr);
        CU_ASSERT_EQUAL(ra.open_ms, rb.open_ms);
    }
    CU_ASSERT_EQUAL(ra.open_ms, 0x7fffffffL);
    /* Not JSON, whatever the shape. */
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"x\","
                           "\"open_ms\":042}}", &ra, &ea), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"x\","
                           "\"open_ms\":}}", &ra, &ea), SL_EINVAL);
    CU_ASSERT_EQUAL(rparse("{\"success\":{\"resolved_addr\":\"x\","
                           "\"open_ms\":1}}}", &ra, &ea), SL_EINVAL);
    /* Strings that need escapes are written by Jansson. */
    j = tun_cmd_rich("tcp", "a\"b", "1");
    CU_ASSERT_TEXT(j, "{\"protocol\":\"tcp\",\"host\":\"a\\\"b:1\"}");
    free(j);
    j = tun_cmd_rich("tcp", "caf\xc3\xa9.example", "80");
    CU_ASSERT_TEXT(j, "{\"protocol\":\"tcp\",\"host\":\"caf\xc3\xa9.example:80\"}");
    free(j);
    CU_ASSERT_PTR_NULL(tun_cmd_rich("tcp", "bad\xff", "80"));
    j = tun_reply_ok("a\\b", 3);
    CU_ASSERT_TEXT(j, "{\"success\":{\"resolved_addr\":\"a\\\\b\","
                      "\"open_ms\":3}}");
    free(j);
}

/* ---- B2eMetadata ---------------------------------------------------------- */

static int
to_stack(const void *b, size_t n, char *out, size_t len, struct sl_error *e)
{
    sl_error_clear(e);
    return tun_obfs_to_stack(b, n, out, len, e);
}

static void
test_b2e_decode(void)
{
    char st[512];
    struct sl_error e;
    unsigned char b[64];

    CU_ASSERT_EQUAL(to_stack(b2e_101, sizeof(b2e_101), st, sizeof(st), &e),
                    0);
    CU_ASSERT_TEXT(st, "sosistab3 cookie=\"00112233445566778899aabbccddeeff\""
                       " | conntest");
    /* Legacy leaf Sosistab3("k"): TCP -> sosistab3. */
    memcpy(b, "\x00\x01k\x00\x00", 5);
    CU_ASSERT_EQUAL(to_stack(b, 5, st, sizeof(st), &e), 0);
    CU_ASSERT_TEXT(st, "sosistab3 cookie=\"k\"");
    /* None: raw tcp, nothing above. */
    memcpy(b, "\x01\x05\x00", 3);
    CU_ASSERT_EQUAL(to_stack(b, 3, st, sizeof(st), &e), 0);
    CU_ASSERT_TEXT(st, "");
    /* The broker's Tls flavour: ConnTest(Sosistab3New(c, PlainTls(None))). */
    memcpy(b, "\x02\x04\x02\x61\x22\x03\x01\x00\x00", 9);
    CU_ASSERT_EQUAL(to_stack(b, 9, st, sizeof(st), &e), 0);
    CU_ASSERT_TEXT(st, "tls | sosistab3 cookie=\"a\\\"\" | conntest");
    /* Hex(Hex(None)) */
    memcpy(b, "\x05\x05\x01\x00\x00", 5);
    CU_ASSERT_EQUAL(to_stack(b, 5, st, sizeof(st), &e), 0);
    CU_ASSERT_TEXT(st, "hex | hex");
    /* Faults. */
    memcpy(b, "\x06\x01k", 3);
    CU_ASSERT_EQUAL(to_stack(b, 3, st, sizeof(st), &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "B2eMetadata: protocol Meeklike (byte 0) is not "
                           "supported");
    CU_ASSERT_TEXT(st, "");
    memcpy(b, "\x02\x07\x00\x00", 4);
    CU_ASSERT_EQUAL(to_stack(b, 4, st, sizeof(st), &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "B2eMetadata: unknown protocol variant 7 at "
                           "byte 1");
    CU_ASSERT_EQUAL(to_stack(b2e_101, sizeof(b2e_101) - 1, st, sizeof(st),
                             &e), SL_EINVAL);
    CU_ASSERT(strncmp(e.text, "B2eMetadata: expiry at byte", 27) == 0);
    memcpy(b, b2e_101, sizeof(b2e_101));
    b[sizeof(b2e_101)] = 0;
    CU_ASSERT_EQUAL(to_stack(b, sizeof(b2e_101) + 1, st, sizeof(st), &e),
                    SL_EINVAL);
    CU_ASSERT_EQUAL(to_stack(b2e_101, 10, st, sizeof(st), &e), SL_EINVAL);
    CU_ASSERT_EQUAL(to_stack(b, 0, st, sizeof(st), &e), SL_EINVAL);
    /* Over-long varint for the variant (251 then 2 bytes for 2). */
    memcpy(b, "\xfb\x02\x00\x01\x00\x00", 6);
    CU_ASSERT_EQUAL(to_stack(b, 6, st, sizeof(st), &e), SL_EINVAL);
    /* Nesting bound: 16 layers pass, 17 do not. */
    memset(b, 0x05, 17);
    memcpy(b + 16, "\x01\x00\x00", 3);
    CU_ASSERT_EQUAL(to_stack(b, 19, st, sizeof(st), &e), 0);
    memset(b, 0x05, 17);
    memcpy(b + 17, "\x01\x00\x00", 3);
    CU_ASSERT_EQUAL(to_stack(b, 20, st, sizeof(st), &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "B2eMetadata: protocol nested deeper than 16 "
                           "layers");
    /* Cookie not UTF-8, cookie with NUL. */
    memcpy(b, "\x00\x01\xff\x00\x00", 5);
    CU_ASSERT_EQUAL(to_stack(b, 5, st, sizeof(st), &e), SL_EINVAL);
    memcpy(b, "\x00\x01\x00\x00\x00", 5);
    CU_ASSERT_EQUAL(to_stack(b, 5, st, sizeof(st), &e), SL_EINVAL);
    CU_ASSERT_TEXT(e.text, "B2eMetadata: sosistab3 cookie is not UTF-8 text "
                           "without NUL");
    /* Output bound. */
    CU_ASSERT_EQUAL(to_stack(b2e_101, sizeof(b2e_101), st, 20, &e),
                    SL_ELIMIT);
    CU_ASSERT_TEXT(st, "");
}

static void
test_b2e_encode(void)
{
    struct sc_enc out;
    struct sl_error e;
    char st[512];

    sc_enc_init(&out, 4096);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(tun_b2e_meta("sosistab3 cookie=00112233445566778899aabb"
                                 "ccddeeff | conntest", 1700086400,
                                 123456789, &out, &e), 0);
    CU_ASSERT_EQUAL_FATAL(out.len, sizeof(b2e_101));
    CU_ASSERT(memcmp(out.buf, b2e_101, sizeof(b2e_101)) == 0);
    sc_enc_free(&out);

    /* Round trip through the stack text, with a cookie that needs
     * quoting. */
    sc_enc_init(&out, 4096);
    sl_error_clear(&e);
    CU_ASSERT_EQUAL(tun_b2e_meta("tls | sosistab3 cookie='a\"b\\\\c|d' | "
                                 "conntest", 5, 6, &out, &e), 0);
    CU_ASSERT_EQUAL(to_stack(out.buf, out.len, st, sizeof(st), &e), 0);
    CU_ASSERT_TEXT(st, "tls | sosistab3 cookie=\"a\\\"b\\\\\\\\c|d\" | "
                       "conntest");
    {
        struct sc_enc again;

        sc_enc_init(&again, 4096);
        CU_ASSERT_EQUAL(tun_b2e_meta(st, 5, 6, &again, &e), 0);
        CU_ASSERT_EQUAL(again.len, out.len);
        CU_ASSERT(again.len == out.len &&
                  memcmp(again.buf, out.buf, out.len) == 0);
        sc_enc_free(&again);
    }
    sc_enc_free(&out);

    /* Raw tcp. */
    sc_enc_init(&out, 4096);
    CU_ASSERT_EQUAL(tun_b2e_meta("none", 1, 2, &out, &e), 0);
    CU_ASSERT(out.len == 3 && memcmp(out.buf, "\x01\x01\x02", 3) == 0);
    sc_enc_free(&out);
    sc_enc_init(&out, 4096);
    CU_ASSERT_EQUAL(tun_b2e_meta("  ", 1, 2, &out, &e), 0);
    CU_ASSERT(out.len == 3 && memcmp(out.buf, "\x01\x01\x02", 3) == 0);
    sc_enc_free(&out);

#define B2E_BAD(stack_, msg_)                                                   \
    do {                                                                     \
        sc_enc_init(&out, 4096);                                             \
        sl_error_clear(&e);                                                  \
        CU_ASSERT_EQUAL(tun_b2e_meta(stack_, 0, 0, &out, &e), SL_EINVAL);    \
        CU_ASSERT_TEXT(e.text, msg_);                                        \
        sc_enc_free(&out);                                                   \
    } while (0)
    B2E_BAD("tcp addr=1.2.3.4:5 | sosistab3 cookie=x",
            "protocol stack layer 1 (tcp): leave tcp out; the protocol is "
            "what the client runs above tcp");
    B2E_BAD("sosistab3", "protocol stack layer 1 (sosistab3): give exactly "
                         "one option, cookie=...");
    B2E_BAD("sosistab3 cookie=x aead=auto",
            "protocol stack layer 1 (sosistab3): give exactly one option, "
            "cookie=...");
    B2E_BAD("sosistab3 cookie=x | conntest ping_count=2",
            "protocol stack layer 2 (conntest): option 'ping_count' cannot "
            "be carried in B2eMetadata; the exit runs conntest with its "
            "defaults");
    B2E_BAD("picomux", "protocol stack layer 1 (picomux): not expressible as "
                       "a Geph ObfsProtocol (sosistab3, conntest, tls and "
                       "hex are)");
    B2E_BAD("hex )", "protocol stack: column 5: unexpected ')'");
    B2E_BAD("hex |", "stack: layer name expected after '|' at end of text");
#undef B2E_BAD
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "rich command bytes (10.4)", test_rich_command_bytes },
        { "reply bytes (10.4)", test_reply_bytes },
        { "length-prefixed messages", test_msg_take },
        { "rich commands", test_cmd_rich },
        { "legacy commands", test_cmd_legacy },
        { "reply parsing", test_reply_parse },
        { "compact forms read and written as Jansson does",
          test_compact_forms },
        { "B2eMetadata decoding (10.1)", test_b2e_decode },
        { "B2eMetadata encoding (10.1)", test_b2e_encode },
        { NULL, NULL },
    };

    return cu_run("tunnel", tests);
}
