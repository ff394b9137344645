/*
 * test-picomux-frame.c: the picomux wire codec against the spec.
 *
 * Every expected byte string below is typed from picomux.md §14, not
 * produced by the encoder under test, so the encoder cannot agree with
 * itself by accident.
 *
 * PING bodies follow what serde_json 1.0.140 (locked by Geph5) does for
 * from_slice::<PingInfo>, read in its de.rs and read.rs:
 *
 *  - Lone surrogates.  serde_json refuses an unpaired \uD800..\uDFFF only
 *    in strings it decodes (parse_str with validation on).  In PingInfo
 *    those are the keys of the top-level object, so {"\ud800":1,...} is
 *    fatal.  The string value of an unknown field is skipped by
 *    ignore_str/ignore_escape, which only wants four hex digits after \u
 *    ("we don't care if the codepoint is valid", in its comment), so
 *    {"s":"\ud800","next_ping_in_ms":7} is accepted.  We do the same:
 *    refusing it would kill a mux a Rust peer keeps.
 *  - Invalid UTF-8 follows the same split: from_slice checks UTF-8 only
 *    in decoded strings (as_str), so it is fatal in those keys and
 *    ignored inside unknown fields' values.
 *  - Depth.  The 128-level recursion limit guards only recursive
 *    descent; ignore_value skips unknown fields with its own heap stack
 *    and no limit.  So a 30000-deep array in an unknown field is fine.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "picomux-frame.h"

/* §14 wire bytes. */
static const uint8_t syn_wire[] = {
    0x01, 0x00, 0x0f, 0x00, 0x78, 0x56, 0x34, 0x12,
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63, 0x6f, 0x6d,
    0x3a, 0x34, 0x34, 0x33
};
static const char syn_json[] =
    "{\"protocol\":\"tcp\",\"host\":\"example.com:443\"}";
static const uint8_t syn_json_hdr[] = {
    0x01, 0x00, 0x2b, 0x00, 0x78, 0x56, 0x34, 0x12
};
static const uint8_t psh_wire[] = {
    0x01, 0x02, 0x05, 0x00, 0x78, 0x56, 0x34, 0x12,
    0x68, 0x65, 0x6c, 0x6c, 0x6f
};
static const uint8_t more1491_wire[] = {
    0x01, 0x04, 0x02, 0x00, 0x78, 0x56, 0x34, 0x12, 0xd3, 0x05
};
static const uint8_t more150_wire[] = {
    0x01, 0x04, 0x02, 0x00, 0x78, 0x56, 0x34, 0x12, 0x96, 0x00
};
static const uint8_t fin_wire[] = {
    0x01, 0x01, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12
};
static const uint8_t ping1800_wire[] = {
    0x01, 0xa0, 0x1b, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x7b, 0x22, 0x6e, 0x65, 0x78, 0x74, 0x5f, 0x70, 0x69, 0x6e, 0x67,
    0x5f, 0x69, 0x6e, 0x5f, 0x6d, 0x73, 0x22,
    0x3a, 0x31, 0x38, 0x30, 0x30, 0x30, 0x30, 0x30, 0x7d
};
static const uint8_t pong_wire[] = {
    0x01, 0xa1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00
};

#define EXAMPLE_ID 0x12345678u

/* Header + body into out; returns the frame length. */
static size_t build(uint8_t *out, uint8_t cmd, uint32_t id,
                    const void *body, size_t body_len)
{
    pm_hdr_encode(out, cmd, (uint16_t)body_len, id);
    if (body_len > 0)
        memcpy(out + PM_HDR_LEN, body, body_len);
    return PM_HDR_LEN + body_len;
}

/*
 * Splits `wire`, which must be exactly one frame, checks the view and
 * validates it.
 */
static void check_decode(const uint8_t *wire, size_t len, uint8_t cmd,
                         uint32_t id, struct pm_frame_info *info)
{
    struct pm_frame frame;
    size_t size = 0;

    CU_ASSERT_EQUAL(pm_frame_split(wire, len, &frame, &size),
                    PM_SPLIT_FRAME);
    CU_ASSERT_EQUAL(size, len);
    CU_ASSERT_EQUAL(frame.hdr.version, 1);
    CU_ASSERT_EQUAL(frame.hdr.cmd, cmd);
    CU_ASSERT_EQUAL(frame.hdr.body_len, len - PM_HDR_LEN);
    CU_ASSERT_EQUAL(frame.hdr.stream_id, id);
    CU_ASSERT_PTR_EQUAL(frame.body, wire + PM_HDR_LEN);
    CU_ASSERT_EQUAL(pm_frame_validate(&frame, info), PM_OK);
}

static void test_header_layout(void)
{
    static const uint8_t want[] = {
        0x01, 0x00, 0x0f, 0x00, 0x78, 0x56, 0x34, 0x12
    };
    static const uint8_t high[] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
    };
    uint8_t out[PM_HDR_LEN];
    struct pm_hdr hdr;

    /* §2.1: the rustc check, {1, 0, 15, 0x12345678} */
    pm_hdr_encode(out, PM_CMD_SYN, 15, EXAMPLE_ID);
    CU_ASSERT_EQUAL(memcmp(out, want, sizeof want), 0);
    pm_hdr_decode(want, &hdr);
    CU_ASSERT_EQUAL(hdr.version, 1);
    CU_ASSERT_EQUAL(hdr.cmd, PM_CMD_SYN);
    CU_ASSERT_EQUAL(hdr.body_len, 15);
    CU_ASSERT_EQUAL(hdr.stream_id, EXAMPLE_ID);

    /* high bits must not sign-extend or truncate */
    pm_hdr_decode(high, &hdr);
    CU_ASSERT_EQUAL(hdr.version, 0xff);
    CU_ASSERT_EQUAL(hdr.cmd, 0xff);
    CU_ASSERT_EQUAL(hdr.body_len, 0xffff);
    CU_ASSERT_EQUAL(hdr.stream_id, 0xffffffffu);
    pm_hdr_encode(out, 0xff, 0xffff, 0xffffffffu);
    CU_ASSERT_EQUAL(memcmp(out + 1, high + 1, 7), 0);
    CU_ASSERT_EQUAL(out[0], 1);

    pm_hdr_encode(out, PM_CMD_PSH, 0x0102, 0x0a0b0c0du);
    CU_ASSERT_EQUAL(out[2], 0x02);
    CU_ASSERT_EQUAL(out[3], 0x01);
    CU_ASSERT_EQUAL(out[4], 0x0d);
    CU_ASSERT_EQUAL(out[5], 0x0c);
    CU_ASSERT_EQUAL(out[6], 0x0b);
    CU_ASSERT_EQUAL(out[7], 0x0a);
}

static void test_example_syn(void)
{
    uint8_t out[64];
    size_t n = build(out, PM_CMD_SYN, EXAMPLE_ID, "example.com:443", 15);

    CU_ASSERT_EQUAL(n, sizeof syn_wire);
    CU_ASSERT_EQUAL(memcmp(out, syn_wire, sizeof syn_wire), 0);
    check_decode(syn_wire, sizeof syn_wire, PM_CMD_SYN, EXAMPLE_ID, NULL);
    CU_ASSERT_EQUAL(memcmp(syn_wire + PM_HDR_LEN, "example.com:443", 15), 0);
}

static void test_example_syn_json(void)
{
    uint8_t out[64];
    size_t n;

    CU_ASSERT_EQUAL(sizeof syn_json - 1, 43);
    n = build(out, PM_CMD_SYN, EXAMPLE_ID, syn_json, sizeof syn_json - 1);
    CU_ASSERT_EQUAL(n, PM_HDR_LEN + 43);
    CU_ASSERT_EQUAL(memcmp(out, syn_json_hdr, sizeof syn_json_hdr), 0);
    CU_ASSERT_EQUAL(memcmp(out + PM_HDR_LEN, syn_json, 43), 0);
    check_decode(out, n, PM_CMD_SYN, EXAMPLE_ID, NULL);
}

static void test_example_psh(void)
{
    uint8_t out[64];
    size_t n = build(out, PM_CMD_PSH, EXAMPLE_ID, "hello", 5);

    CU_ASSERT_EQUAL(n, sizeof psh_wire);
    CU_ASSERT_EQUAL(memcmp(out, psh_wire, sizeof psh_wire), 0);
    check_decode(psh_wire, sizeof psh_wire, PM_CMD_PSH, EXAMPLE_ID, NULL);
}

static void test_example_more(void)
{
    struct pm_frame_info info = { 0, 0 };
    uint8_t body[PM_MORE_BODY_LEN], out[64];
    size_t n;

    pm_more_encode(body, 1491);
    n = build(out, PM_CMD_MORE, EXAMPLE_ID, body, sizeof body);
    CU_ASSERT_EQUAL(n, sizeof more1491_wire);
    CU_ASSERT_EQUAL(memcmp(out, more1491_wire, sizeof more1491_wire), 0);
    check_decode(more1491_wire, sizeof more1491_wire, PM_CMD_MORE,
                 EXAMPLE_ID, &info);
    CU_ASSERT_EQUAL(info.more_incr, 1491);
    CU_ASSERT_EQUAL(info.ping_ms, 0);

    pm_more_encode(body, 150);
    n = build(out, PM_CMD_MORE, EXAMPLE_ID, body, sizeof body);
    CU_ASSERT_EQUAL(n, sizeof more150_wire);
    CU_ASSERT_EQUAL(memcmp(out, more150_wire, sizeof more150_wire), 0);
    check_decode(more150_wire, sizeof more150_wire, PM_CMD_MORE,
                 EXAMPLE_ID, &info);
    CU_ASSERT_EQUAL(info.more_incr, 150);
}

static void test_example_fin(void)
{
    uint8_t out[PM_HDR_LEN];

    CU_ASSERT_EQUAL(build(out, PM_CMD_FIN, EXAMPLE_ID, NULL, 0),
                    sizeof fin_wire);
    CU_ASSERT_EQUAL(memcmp(out, fin_wire, sizeof fin_wire), 0);
    check_decode(fin_wire, sizeof fin_wire, PM_CMD_FIN, EXAMPLE_ID, NULL);
}

static void test_example_ping(void)
{
    static const char body1200[] = "{\"next_ping_in_ms\":1200000}";
    struct pm_frame_info info = { 0, 0 };
    uint8_t body[PM_PING_BODY_MAX], out[64];
    size_t blen, n;

    blen = pm_ping_body_write(1800000, body);
    CU_ASSERT_EQUAL(blen, 0x1b);
    n = build(out, PM_CMD_PING, PM_PING_STREAM_ID, body, blen);
    CU_ASSERT_EQUAL(n, sizeof ping1800_wire);
    CU_ASSERT_EQUAL(memcmp(out, ping1800_wire, sizeof ping1800_wire), 0);
    check_decode(ping1800_wire, sizeof ping1800_wire, PM_CMD_PING, 0,
                 &info);
    CU_ASSERT_EQUAL(info.ping_ms, 1800000);
    CU_ASSERT_EQUAL(info.more_incr, 0);

    /* the Geph client's second PING: same length, other digits */
    blen = pm_ping_body_write(1200000, body);
    CU_ASSERT_EQUAL(blen, sizeof body1200 - 1);
    CU_ASSERT_EQUAL(memcmp(body, body1200, blen), 0);
    n = build(out, PM_CMD_PING, PM_PING_STREAM_ID, body, blen);
    CU_ASSERT_EQUAL(memcmp(out, ping1800_wire, PM_HDR_LEN), 0);
    check_decode(out, n, PM_CMD_PING, 0, &info);
    CU_ASSERT_EQUAL(info.ping_ms, 1200000);
}

static void test_example_pong(void)
{
    uint8_t out[PM_HDR_LEN];

    CU_ASSERT_EQUAL(build(out, PM_CMD_PONG, 0, NULL, 0), sizeof pong_wire);
    CU_ASSERT_EQUAL(memcmp(out, pong_wire, sizeof pong_wire), 0);
    check_decode(pong_wire, sizeof pong_wire, PM_CMD_PONG, 0, NULL);
}

/* All §14 frames back to back, split one at a time, every prefix tried. */
static void test_split_concatenation(void)
{
    static const struct {
        const uint8_t *wire;
        size_t len;
        uint8_t cmd;
    } ex[] = {
        { syn_wire, sizeof syn_wire, PM_CMD_SYN },
        { psh_wire, sizeof psh_wire, PM_CMD_PSH },
        { more1491_wire, sizeof more1491_wire, PM_CMD_MORE },
        { more150_wire, sizeof more150_wire, PM_CMD_MORE },
        { fin_wire, sizeof fin_wire, PM_CMD_FIN },
        { ping1800_wire, sizeof ping1800_wire, PM_CMD_PING },
        { pong_wire, sizeof pong_wire, PM_CMD_PONG },
    };
    uint8_t all[256];
    size_t total = 0, off = 0, k, cut, size;
    struct pm_frame frame;

    for (k = 0; k < sizeof ex / sizeof ex[0]; k++) {
        memcpy(all + total, ex[k].wire, ex[k].len);
        total += ex[k].len;
    }
    for (k = 0; k < sizeof ex / sizeof ex[0]; k++) {
        for (cut = 0; cut < ex[k].len; cut++) {
            memset(&frame, 0xaa, sizeof frame);
            size = 0;
            CU_ASSERT_EQUAL(pm_frame_split(all + off, cut, &frame, &size),
                            PM_SPLIT_NEED_MORE);
            CU_ASSERT_EQUAL(size, cut < PM_HDR_LEN ? PM_HDR_LEN : ex[k].len);
            CU_ASSERT(size > cut);
            CU_ASSERT_EQUAL(frame.hdr.cmd, 0xaa);   /* left untouched */
        }
        CU_ASSERT_EQUAL(pm_frame_split(all + off, total - off, &frame,
                                       &size), PM_SPLIT_FRAME);
        CU_ASSERT_EQUAL(size, ex[k].len);
        CU_ASSERT_EQUAL(frame.hdr.cmd, ex[k].cmd);
        CU_ASSERT_EQUAL(memcmp(all + off, ex[k].wire, size), 0);
        CU_ASSERT_EQUAL(pm_frame_validate(&frame, NULL), PM_OK);
        off += size;
    }
    CU_ASSERT_EQUAL(off, total);
    CU_ASSERT_EQUAL(pm_frame_split(all + off, 0, &frame, &size),
                    PM_SPLIT_NEED_MORE);
    CU_ASSERT_EQUAL(size, PM_HDR_LEN);
}

/* The largest frame: bounded by the 16-bit length, nothing beyond. */
static void test_split_largest(void)
{
    uint8_t *buf = calloc(1, PM_FRAME_MAX + 16);
    struct pm_frame frame;
    size_t size = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    pm_hdr_encode(buf, PM_CMD_PSH, 0xffff, 7);
    CU_ASSERT_EQUAL(pm_frame_split(buf, PM_HDR_LEN, &frame, &size),
                    PM_SPLIT_NEED_MORE);
    CU_ASSERT_EQUAL(size, PM_FRAME_MAX);
    CU_ASSERT_EQUAL(size, 65543);
    CU_ASSERT_EQUAL(pm_frame_split(buf, PM_FRAME_MAX - 1, &frame, &size),
                    PM_SPLIT_NEED_MORE);
    CU_ASSERT_EQUAL(size, PM_FRAME_MAX);
    CU_ASSERT_EQUAL(pm_frame_split(buf, PM_FRAME_MAX + 16, &frame, &size),
                    PM_SPLIT_FRAME);
    CU_ASSERT_EQUAL(size, PM_FRAME_MAX);
    CU_ASSERT_EQUAL(frame.hdr.body_len, 0xffff);
    /* §2.2: Rust accepts PSH bodies far above MSS */
    CU_ASSERT_EQUAL(pm_frame_validate(&frame, NULL), PM_OK);
    free(buf);
}

static void test_more_codec(void)
{
    static const uint16_t values[] = { 0, 1, 150, 1491, 0x1234, 0xffff };
    uint8_t body[PM_MORE_BODY_LEN];
    size_t k;

    for (k = 0; k < sizeof values / sizeof values[0]; k++) {
        pm_more_encode(body, values[k]);
        CU_ASSERT_EQUAL(body[0], values[k] & 0xff);
        CU_ASSERT_EQUAL(body[1], values[k] >> 8);
        CU_ASSERT_EQUAL(pm_more_decode(body), values[k]);
    }
}

/* §4.5: MORE body exactly 2 bytes, anything else kills the mux. */
static void test_more_length(void)
{
    uint8_t wire[PM_HDR_LEN + 8] = { 0 };
    struct pm_frame_info info = { 77, 77 };
    struct pm_frame frame;
    char msg[128];
    size_t len, size;

    for (len = 0; len <= 4; len++) {
        info.more_incr = 77;
        build(wire, PM_CMD_MORE, 1, "\x05\x00\x00\x00", len);
        CU_ASSERT_EQUAL(pm_frame_split(wire, PM_HDR_LEN + len, &frame,
                                       &size), PM_SPLIT_FRAME);
        if (len == 2) {
            CU_ASSERT_EQUAL(pm_frame_validate(&frame, &info), PM_OK);
            CU_ASSERT_EQUAL(info.more_incr, 5);
        } else {
            CU_ASSERT_EQUAL(pm_frame_validate(&frame, &info), PM_EMORELEN);
            CU_ASSERT_EQUAL(info.more_incr, 77);    /* untouched */
        }
    }
    build(wire, PM_CMD_MORE, 1, "abc", 3);
    pm_frame_split(wire, PM_HDR_LEN + 3, &frame, &size);
    CU_ASSERT_STRING_EQUAL(
        pm_frame_strerror(PM_EMORELEN, &frame.hdr, msg, sizeof msg),
        "picomux: corrupt window increase message (3 bytes)");
    build(wire, PM_CMD_MORE, 1, "a", 1);
    pm_frame_split(wire, PM_HDR_LEN + 1, &frame, &size);
    CU_ASSERT_STRING_EQUAL(
        pm_frame_strerror(PM_EMORELEN, &frame.hdr, msg, sizeof msg),
        "picomux: corrupt window increase message (1 byte)");
}

/* §3, §11: seven known command bytes; every other one is fatal. */
static void test_commands(void)
{
    uint8_t wire[PM_HDR_LEN + PM_PING_BODY_MAX];
    uint8_t body[PM_PING_BODY_MAX];
    struct pm_frame frame;
    size_t size, blen;
    char msg[128];
    unsigned cmd;
    int known, r;

    for (cmd = 0; cmd <= 0xff; cmd++) {
        known = cmd <= 0x04 || cmd == 0xa0 || cmd == 0xa1;
        if (cmd == PM_CMD_MORE) {
            pm_more_encode(body, 1);
            blen = 2;
        } else if (cmd == PM_CMD_PING) {
            blen = pm_ping_body_write(1, body);
        } else {
            blen = 0;
        }
        build(wire, (uint8_t)cmd, 0, body, blen);
        CU_ASSERT_EQUAL(pm_frame_split(wire, PM_HDR_LEN + blen, &frame,
                                       &size), PM_SPLIT_FRAME);
        r = pm_frame_validate(&frame, NULL);
        CU_ASSERT_EQUAL(r, known ? PM_OK : PM_EBADCMD);
        CU_ASSERT_EQUAL(pm_cmd_name((uint8_t)cmd) != NULL, known);
    }
    build(wire, 0x07, 0, NULL, 0);
    pm_frame_split(wire, PM_HDR_LEN, &frame, &size);
    CU_ASSERT_STRING_EQUAL(
        pm_frame_strerror(PM_EBADCMD, &frame.hdr, msg, sizeof msg),
        "picomux: invalid command 0x07");
    CU_ASSERT_STRING_EQUAL(pm_cmd_name(PM_CMD_PING), "PING");
}

/* §2, §15.2: the version byte is never checked. */
static void test_version_ignored(void)
{
    static const uint8_t v7[] = {
        0x07, 0x02, 0x05, 0x00, 0x78, 0x56, 0x34, 0x12,
        0x68, 0x65, 0x6c, 0x6c, 0x6f
    };
    uint8_t wire[sizeof v7];
    struct pm_frame frame;
    size_t size;
    unsigned v;

    CU_ASSERT_EQUAL(pm_frame_split(v7, sizeof v7, &frame, &size),
                    PM_SPLIT_FRAME);
    CU_ASSERT_EQUAL(frame.hdr.version, 7);
    CU_ASSERT_EQUAL(frame.hdr.cmd, PM_CMD_PSH);
    CU_ASSERT_EQUAL(pm_frame_validate(&frame, NULL), PM_OK);
    for (v = 0; v <= 0xff; v++) {
        memcpy(wire, v7, sizeof v7);
        wire[0] = (uint8_t)v;
        pm_frame_split(wire, sizeof wire, &frame, &size);
        CU_ASSERT_EQUAL(pm_frame_validate(&frame, NULL), PM_OK);
    }
}

/* §3, §4.4: FIN, NOP and PONG bodies are read and ignored. */
static void test_ignored_bodies(void)
{
    static const uint8_t cmds[] = { PM_CMD_FIN, PM_CMD_NOP, PM_CMD_PONG,
                                    PM_CMD_SYN, PM_CMD_PSH };
    uint8_t wire[PM_HDR_LEN + 4];
    struct pm_frame frame;
    size_t k, size;

    for (k = 0; k < sizeof cmds; k++) {
        build(wire, cmds[k], 0xffffffffu, "\xff{[\"", 4);
        pm_frame_split(wire, sizeof wire, &frame, &size);
        CU_ASSERT_EQUAL(pm_frame_validate(&frame, NULL), PM_OK);
    }
}

static void test_ping_write(void)
{
    static const struct {
        uint32_t ms;
        const char *want;
    } cases[] = {
        { 0, "{\"next_ping_in_ms\":0}" },
        { 7, "{\"next_ping_in_ms\":7}" },
        { 1000, "{\"next_ping_in_ms\":1000}" },
        { 1800000, "{\"next_ping_in_ms\":1800000}" },
        { 1200000, "{\"next_ping_in_ms\":1200000}" },
        { 4294967295u, "{\"next_ping_in_ms\":4294967295}" },
    };
    uint8_t body[PM_PING_BODY_MAX];
    uint32_t back;
    size_t k, n;

    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        n = pm_ping_body_write(cases[k].ms, body);
        CU_ASSERT_EQUAL(n, strlen(cases[k].want));
        CU_ASSERT_EQUAL(memcmp(body, cases[k].want, n), 0);
        CU_ASSERT(n <= PM_PING_BODY_MAX);
        back = 12345;
        CU_ASSERT_EQUAL(pm_ping_body_parse(body, n, &back), PM_OK);
        CU_ASSERT_EQUAL(back, cases[k].ms);
    }
    CU_ASSERT_EQUAL(pm_ping_body_write(4294967295u, body),
                    PM_PING_BODY_MAX);
}

struct ping_case {
    const char *body;
    size_t len;
    int want;           /* 0, or the PM_EPING_* expected */
    uint32_t value;     /* when accepted */
};

#define OK(s, v) { s, sizeof(s) - 1, PM_OK, v }
#define NO(s, e) { s, sizeof(s) - 1, e, 0 }
#define TAIL ",\"next_ping_in_ms\":5}"

/* §4.6 accepted forms, and what serde_json also accepts. */
static const struct ping_case ping_ok[] = {
    OK("{\"next_ping_in_ms\":1800000}", 1800000),
    OK("{\"next_ping_in_ms\":1200000}", 1200000),
    OK("{\"next_ping_in_ms\":0}", 0),
    OK("{\"next_ping_in_ms\":4294967295}", 4294967295u),
    OK("{\"next_ping_in_ms\":4294967294}", 4294967294u),
    /* whitespace: exactly space, tab, LF and CR, around every token */
    OK(" \t\r\n{ \t\r\n\"next_ping_in_ms\" \t\r\n: \t\r\n7 \t\r\n} \t\r\n",
       7),
    /* serde's sequence form of a struct */
    OK("[5]", 5),
    OK(" [ \n5\t] \r\n", 5),
    OK("[0]", 0),
    OK("[4294967295]", 4294967295u),
    /* unknown fields, any JSON value, before or after */
    OK("{\"a\":1,\"next_ping_in_ms\":5}", 5),
    OK("{\"next_ping_in_ms\":5,\"a\":null}", 5),
    OK("{\"t\":true,\"f\":false,\"n\":null" TAIL, 5),
    OK("{\"x\":{\"y\":[1,2,{\"z\":[]}],\"w\":{}}" TAIL, 5),
    OK("{\"x\":[[],[[]],{},{\"a\":{\"b\":[null]}}] , \"y\" : { } " TAIL, 5),
    OK("{\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"" TAIL,
       5),
    OK("{\"s\":\"\\u0000\"" TAIL, 5),
    OK("{\"s\":\"\"" TAIL, 5),
    OK("{\"s\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\x7f\"" TAIL, 5),
    OK("{\"n\":-0.5e+10,\"m\":1E400,\"k\":-0,\"j\":0.0,\"i\":0e-0,"
       "\"h\":123456789012345678901234567890" TAIL, 5),
    OK("{\"a\":1,\"a\":2" TAIL, 5),     /* unknown keys may repeat */
    /* the field name may be spelled with escapes: serde decodes keys */
    OK("{\"next\\u005fping_in_ms\":9}", 9),
    OK("{\"\\u006E\\u0065xt_ping_in_ms\":9}", 9),
    /* near misses are just unknown fields */
    OK("{\"next_ping_in_mss\":1,\"next_ping_in_m\":1,\"NEXT_PING_IN_MS\":1,"
       "\"next_ping_in_ms\\u0000\":1,\"\":1" TAIL, 5),
    /* keys are checked UTF-8; valid non-ASCII and paired escapes pass */
    OK("{\"\xc3\xa9\xef\xbf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80"
       "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\":1" TAIL, 5),
    OK("{\"\\ud83d\\ude00\":1,\"\\uDBFF\\uDFFF\":1" TAIL, 5),
    OK("{\"key with \\\" quote\":1" TAIL, 5),
    /*
     * serde skips unknown values without decoding their strings (see the
     * comment at the top): lone surrogates and invalid UTF-8 inside them
     * are accepted, also as keys of nested objects.
     */
    OK("{\"s\":\"\\ud800\"" TAIL, 5),
    OK("{\"s\":\"\\udc00\"" TAIL, 5),
    OK("{\"s\":\"\\ud800\\u0041\"" TAIL, 5),
    OK("{\"s\":\"\\uDBFF\\uDBFF\\ud800\"" TAIL, 5),
    OK("{\"a\":[\"\\udfff\"]" TAIL, 5),
    OK("{\"s\":\"\xff\xfe\xc0\xaf\xed\xa0\x80\xf5\x80\"" TAIL, 5),
    OK("{\"o\":{\"\\ud800\":1,\"\xff\":2}" TAIL, 5),
};

/* §4.6 rejected forms, and edges of serde's grammar. */
static const struct ping_case ping_bad[] = {
    NO("", PM_EPING_SYNTAX),
    NO(" \t\r\n", PM_EPING_SYNTAX),
    NO("hello", PM_EPING_SYNTAX),
    NO("null", PM_EPING_TYPE),
    NO("5", PM_EPING_TYPE),
    NO("\"x\"", PM_EPING_TYPE),
    NO("true", PM_EPING_TYPE),
    NO("\xef\xbb\xbf{\"next_ping_in_ms\":5}", PM_EPING_SYNTAX),   /* BOM */
    NO("\f{\"next_ping_in_ms\":5}", PM_EPING_SYNTAX),
    NO("\v{\"next_ping_in_ms\":5}", PM_EPING_SYNTAX),
    NO("\xc2\xa0{\"next_ping_in_ms\":5}", PM_EPING_SYNTAX),
    /* missing field */
    NO("{}", PM_EPING_MISSING),
    NO("{ \n}", PM_EPING_MISSING),
    NO("{\"a\":1}", PM_EPING_MISSING),
    NO("{\"next_ping_in_m\":1}", PM_EPING_MISSING),
    NO("[]", PM_EPING_MISSING),
    NO("[ ]", PM_EPING_MISSING),
    /* sequence form: one element only */
    NO("[5,6]", PM_EPING_TRAILING),
    NO("[5,]", PM_EPING_TRAILING),
    NO("[5 6]", PM_EPING_TRAILING),
    NO("[5", PM_EPING_SYNTAX),
    NO("[", PM_EPING_SYNTAX),
    NO("[-1]", PM_EPING_VALUE),
    NO("[ -0 ]", PM_EPING_VALUE),
    NO("[5.0]", PM_EPING_VALUE),
    NO("[\"5\"]", PM_EPING_VALUE),
    NO("[[5]]", PM_EPING_VALUE),
    NO("[01]", PM_EPING_SYNTAX),
    /* the field twice, also when spelled differently */
    NO("{\"next_ping_in_ms\":1,\"next_ping_in_ms\":1}", PM_EPING_DUPLICATE),
    NO("{\"next_ping_in_ms\":1,\"next\\u005fping_in_ms\":2}",
       PM_EPING_DUPLICATE),
    /* the value: u32 only, no sign, fraction, exponent or leading zero */
    NO("{\"next_ping_in_ms\":-1}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":-0}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":-4294967295}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":1000.0}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":1e3}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":1E3}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":0.0}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":0e0}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":1.}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":4294967296}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":10000000000}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":18446744073709551615}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":18446744073709551616}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":999999999999999999999999999999}",
       PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":01}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":00}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":+5}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":\"5\"}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":null}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":true}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":[5]}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":{}}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":}", PM_EPING_VALUE),
    NO("{\"next_ping_in_ms\":", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":5", PM_EPING_SYNTAX),
    /* trailing garbage */
    NO("{\"next_ping_in_ms\":5}x", PM_EPING_TRAILING),
    NO("{\"next_ping_in_ms\":5}{}", PM_EPING_TRAILING),
    NO("{\"next_ping_in_ms\":5} 0", PM_EPING_TRAILING),
    NO("{\"next_ping_in_ms\":5}\0", PM_EPING_TRAILING),
    NO("{\"next_ping_in_ms\":5}\f", PM_EPING_TRAILING),
    NO("[5]]", PM_EPING_TRAILING),
    /* object syntax */
    NO("{\"next_ping_in_ms\":5,}", PM_EPING_SYNTAX),
    NO("{,\"next_ping_in_ms\":5}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\" 5}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\"", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":5 \"a\":1}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":5;\"a\":1}", PM_EPING_SYNTAX),
    NO("{'next_ping_in_ms':5}", PM_EPING_SYNTAX),
    NO("{next_ping_in_ms:5}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":5/*c*/}", PM_EPING_SYNTAX),
    NO("{\"next_ping_in_ms\":5", PM_EPING_SYNTAX),
    NO("{", PM_EPING_SYNTAX),
    /* keys of PingInfo are decoded: UTF-8 and surrogates checked */
    NO("{\"\xff\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\x80\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xc0\xaf\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xc1\xbf\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xe0\x80\xaf\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xed\xa0\x80\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xf0\x80\x80\x80\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xf4\x90\x80\x80\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xf5\x80\x80\x80\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\xe2\x82\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\ud800\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\udc00\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\ud800\\u0041\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\ud800\\ud800\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\ud800x\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\ud800\\n\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\nb\":1" TAIL, PM_EPING_SYNTAX),
    NO("{\"\\x\":1" TAIL, PM_EPING_SYNTAX),
    /* strings in unknown values: control bytes and bad escapes */
    NO("{\"s\":\"a\nb\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"a\tb\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\x1f\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\0\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\\x\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\\U0041\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\\u12\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\\u12G4\"" TAIL, PM_EPING_SYNTAX),
    NO("{\"s\":\"\\u", PM_EPING_SYNTAX),
    NO("{\"s\":\"\\", PM_EPING_SYNTAX),
    NO("{\"s\":\"abc", PM_EPING_SYNTAX),
    NO("{\"s\":'a'" TAIL, PM_EPING_SYNTAX),
    /* unknown values: the JSON grammar still holds */
    NO("{\"a\":[1,]" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":[1 2]" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":[,1]" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":[\"x\"\"y\"]" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":{\"b\"}" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":{\"b\":1,}" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":{1:2}" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":{,}" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":tru" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":True" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":nulll" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":nul}", PM_EPING_SYNTAX),
    NO("{\"a\":.5" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":01" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":-" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":-a" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":1.e5" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":1e" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":1e+" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":+1" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":0x10" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":NaN" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":Infinity" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":[}" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":{]}" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":[1}]" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":" TAIL, PM_EPING_SYNTAX),
    NO("{\"a\":}", PM_EPING_SYNTAX),
    NO("{\"a\":[[[]]", PM_EPING_SYNTAX),
};

static void run_ping_cases(const struct ping_case *cases, size_t n)
{
    uint32_t v;
    size_t k;
    int r;

    for (k = 0; k < n; k++) {
        v = 0xdeadbeefu;
        r = pm_ping_body_parse((const uint8_t *)cases[k].body, cases[k].len,
                               &v);
        if (r != cases[k].want)
            fprintf(stderr, "\nPING case %zu: got %d, want %d: %.*s\n", k,
                    r, cases[k].want, (int)cases[k].len, cases[k].body);
        CU_ASSERT_EQUAL(r, cases[k].want);
        CU_ASSERT_EQUAL(v, cases[k].want == PM_OK ? cases[k].value
                                                  : 0xdeadbeefu);
    }
}

static void test_ping_accepted(void)
{
    run_ping_cases(ping_ok, sizeof ping_ok / sizeof ping_ok[0]);
}

static void test_ping_rejected(void)
{
    uint32_t v = 3;

    run_ping_cases(ping_bad, sizeof ping_bad / sizeof ping_bad[0]);
    CU_ASSERT_EQUAL(pm_ping_body_parse(NULL, 0, &v), PM_EPING_SYNTAX);
    CU_ASSERT_EQUAL(v, 3);
}

/* Wraps `depth` levels of open/close around nothing in an unknown field. */
static size_t nest(uint8_t *out, size_t depth, const char *open,
                   const char *close, const char *tail)
{
    size_t n = 0, k, lo = strlen(open), lc = strlen(close);

    memcpy(out, "{\"x\":", 5);
    n = 5;
    for (k = 0; k < depth; k++, n += lo)
        memcpy(out + n, open, lo);
    for (k = 0; k < depth; k++, n += lc)
        memcpy(out + n, close, lc);
    memcpy(out + n, tail, strlen(tail));
    return n + strlen(tail);
}

/*
 * serde's ignore_value has no depth limit, so neither do we; the parser
 * must still neither recurse nor read out of bounds.
 */
static void test_ping_deep(void)
{
    uint8_t *buf = malloc(PM_BODY_MAX + 2);
    uint32_t v = 0;
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    n = nest(buf, 30000, "[", "]", TAIL);
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, n, &v), PM_OK);
    CU_ASSERT_EQUAL(v, 5);
    /* one closer short, then one wrong closer: both refused */
    n = nest(buf, 30000, "[", "]", TAIL);
    buf[5 + 30000 + 29999] = ' ';
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, n, &v), PM_EPING_SYNTAX);
    buf[5 + 30000 + 29999] = '}';
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, n, &v), PM_EPING_SYNTAX);

    n = nest(buf, 5000, "{\"k\":[", "]}", TAIL);
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, n, &v), PM_OK);
    n = nest(buf, 5000, "{\"k\":[", "}]", TAIL);
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, n, &v), PM_EPING_SYNTAX);

    /* exactly 65535 bytes, almost all of it nesting */
    n = nest(buf, 32754, "[", "]", " ,\"next_ping_in_ms\":5}");
    CU_ASSERT_EQUAL(n, PM_BODY_MAX);
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, n, &v), PM_OK);
    /* never from the wire, but the API refuses it rather than guess */
    CU_ASSERT_EQUAL(pm_ping_body_parse(buf, PM_BODY_MAX + 1, &v),
                    PM_EPING_TOOLONG);
    free(buf);
}

/* A bad PING through the frame path, with its log line. */
static void test_ping_frame_errors(void)
{
    uint8_t wire[64];
    struct pm_frame_info info = { 0, 0 };
    struct pm_frame frame;
    size_t n, size;
    char msg[160];

    n = build(wire, PM_CMD_PING, 0, "[5]", 3);
    pm_frame_split(wire, n, &frame, &size);
    CU_ASSERT_EQUAL(pm_frame_validate(&frame, &info), PM_OK);
    CU_ASSERT_EQUAL(info.ping_ms, 5);

    n = build(wire, PM_CMD_PING, 0, "{}", 2);
    pm_frame_split(wire, n, &frame, &size);
    CU_ASSERT_EQUAL(pm_frame_validate(&frame, &info), PM_EPING_MISSING);
    CU_ASSERT_STRING_EQUAL(
        pm_frame_strerror(PM_EPING_MISSING, &frame.hdr, msg, sizeof msg),
        "picomux: invalid PING data (missing field next_ping_in_ms)");

    n = build(wire, PM_CMD_PING, 0, NULL, 0);
    pm_frame_split(wire, n, &frame, &size);
    CU_ASSERT_EQUAL(pm_frame_validate(&frame, &info), PM_EPING_SYNTAX);

    /* truncation is still NUL-terminated */
    CU_ASSERT_STRING_EQUAL(
        pm_frame_strerror(PM_EBADCMD, NULL, msg, 9), "picomux:");
    CU_ASSERT_STRING_EQUAL(pm_frame_strerror(-100, NULL, msg, sizeof msg),
                           "picomux: unknown error -100");
}

int main(void)
{
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        { "header layout (2.1)", test_header_layout },
        { "example SYN (14)", test_example_syn },
        { "example SYN JSON (14)", test_example_syn_json },
        { "example PSH (14)", test_example_psh },
        { "example MORE (14)", test_example_more },
        { "example FIN (14)", test_example_fin },
        { "example PING (14)", test_example_ping },
        { "example PONG (14)", test_example_pong },
        { "split concatenation", test_split_concatenation },
        { "split largest frame", test_split_largest },
        { "MORE codec", test_more_codec },
        { "MORE length (4.5)", test_more_length },
        { "commands (3, 11)", test_commands },
        { "version ignored (15.2)", test_version_ignored },
        { "ignored bodies (3, 4.4)", test_ignored_bodies },
        { "PING writer (4.6)", test_ping_write },
        { "PING accepted (4.6)", test_ping_accepted },
        { "PING rejected (4.6)", test_ping_rejected },
        { "PING deep nesting", test_ping_deep },
        { "PING frame errors", test_ping_frame_errors },
    };
    CU_pSuite suite;
    unsigned failed = 1;
    size_t k;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    suite = CU_add_suite("picomux-frame", NULL, NULL);
    if (suite == NULL)
        goto out;
    for (k = 0; k < sizeof tests / sizeof tests[0]; k++)
        if (CU_add_test(suite, tests[k].name, tests[k].fn) == NULL)
            goto out;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    if (CU_basic_run_tests() != CUE_SUCCESS)
        goto out;
    failed = CU_get_number_of_failures();
out:
    CU_cleanup_registry();
    return failed != 0;
}
