/*
 * test-stdcode.c: the stdcode encoder and decoder against spec §5.1 and
 * §10.1: varint boundaries, zigzag, the B2eMetadata worked example, and
 * the decoder's refusals (over-long varints, reserved tags, type bounds,
 * truncation at every byte, trailing bytes, the encoder's size bound).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cu.h"
#include "stdcode.h"

/* Encodes one varint and compares it with the expected bytes. */
static void
check_varint(uint64_t v, const char *hex)
{
    struct sc_enc e;
    char got[64] = "";
    size_t i;

    sc_enc_init(&e, 64);
    sc_put_varint(&e, v);
    CU_ASSERT_FALSE(e.failed);
    for (i = 0; i < e.len; i++)
        snprintf(got + 2 * i, sizeof got - 2 * i, "%02x", e.buf[i]);
    CU_ASSERT_TEXT(got, hex);

    /* And back. */
    {
        struct sc_dec d;
        uint64_t out = 0;

        sc_dec_init(&d, e.buf, e.len);
        CU_ASSERT_EQUAL(sc_get_varint(&d, UINT64_MAX, &out), 0);
        CU_ASSERT_EQUAL(sc_dec_finish(&d), 0);
        CU_ASSERT_EQUAL(out, v);
    }
    sc_enc_free(&e);
}

static void
test_varint_examples(void)
{
    check_varint(0, "00");
    check_varint(250, "fa");
    check_varint(251, "fbfb00");
    check_varint(300, "fb2c01");
    check_varint(65535, "fbffff");
    check_varint(65536, "fc00000100");
    check_varint(70000, "fc70110100");
    check_varint(UINT32_MAX, "fcffffffff");
    check_varint((uint64_t)UINT32_MAX + 1, "fd0000000001000000");
    check_varint(UINT64_MAX, "fdffffffffffffffff");
}

static void
check_zigzag(int64_t v, const char *hex)
{
    struct sc_enc e;
    struct sc_dec d;
    char got[64] = "";
    int64_t out = 0;
    size_t i;

    sc_enc_init(&e, 64);
    sc_put_zigzag(&e, v);
    for (i = 0; i < e.len; i++)
        snprintf(got + 2 * i, sizeof got - 2 * i, "%02x", e.buf[i]);
    CU_ASSERT_TEXT(got, hex);
    sc_dec_init(&d, e.buf, e.len);
    CU_ASSERT_EQUAL(sc_get_zigzag(&d, INT64_MIN, INT64_MAX, &out), 0);
    CU_ASSERT_EQUAL(sc_dec_finish(&d), 0);
    CU_ASSERT_EQUAL(out, v);
    sc_enc_free(&e);
}

static void
test_zigzag(void)
{
    check_zigzag(0, "00");
    check_zigzag(-1, "01");
    check_zigzag(1, "02");
    check_zigzag(-2, "03");
    check_zigzag(-125, "f9");
    check_zigzag(-126, "fbfb00");
    check_zigzag(125, "fa");
    check_zigzag(INT64_MAX, "fdfeffffffffffffff");
    check_zigzag(INT64_MIN, "fdffffffffffffffff");
}

/* §10.1: B2eMetadata{ConnTest(Sosistab3New(cookie, None)),
 * expiry 1700086400 s + 123456789 ns}, 46 bytes. */
static const unsigned char b2e_meta[46] = {
    0x02, 0x04, 0x20,
    '0', '0', '1', '1', '2', '2', '3', '3', '4', '4', '5', '5', '6', '6',
    '7', '7', '8', '8', '9', '9', 'a', 'a', 'b', 'b', 'c', 'c', 'd', 'd',
    'e', 'e', 'f', 'f',
    0x01,
    0xfc, 0x80, 0x42, 0x55, 0x65,
    0xfc, 0x15, 0xcd, 0x5b, 0x07,
};
static const char cookie[] = "00112233445566778899aabbccddeeff";

static void
test_b2e_metadata_encode(void)
{
    struct sc_enc e;

    sc_enc_init(&e, 1000);
    sc_put_varint(&e, 2);                 /* ObfsProtocol::ConnTest */
    sc_put_varint(&e, 4);                 /* ObfsProtocol::Sosistab3New */
    sc_put_bytes(&e, cookie, strlen(cookie));
    sc_put_varint(&e, 1);                 /* the unit variant None, index 1 */
    sc_put_varint(&e, 1700086400);
    sc_put_varint(&e, 123456789);
    CU_ASSERT_FALSE(e.failed);
    CU_ASSERT_EQUAL(e.len, sizeof b2e_meta);
    CU_ASSERT(e.len == sizeof b2e_meta &&
              memcmp(e.buf, b2e_meta, sizeof b2e_meta) == 0);
    sc_enc_free(&e);
}

/* Decodes b2e_meta's shape from (p, n); returns 0 and the fields, or -1
 * with d->err set. */
static int
decode_b2e(const void *p, size_t n, struct sc_dec *d, uint64_t *secs,
           uint64_t *nanos)
{
    const unsigned char *s;
    size_t slen;
    uint64_t v1, v2, none;

    sc_dec_init(d, p, n);
    sc_get_varint(d, UINT32_MAX, &v1);
    sc_get_varint(d, UINT32_MAX, &v2);
    sc_get_bytes(d, 1000, &s, &slen);
    sc_get_varint(d, UINT32_MAX, &none);
    sc_get_varint(d, UINT64_MAX, secs);
    sc_get_varint(d, UINT32_MAX, nanos);
    if (sc_dec_finish(d) != 0)
        return -1;
    CU_ASSERT_EQUAL(v1, 2);
    CU_ASSERT_EQUAL(v2, 4);
    CU_ASSERT_EQUAL(slen, 32);
    CU_ASSERT(slen == 32 && memcmp(s, cookie, 32) == 0);
    CU_ASSERT_EQUAL(none, 1);
    return 0;
}

static void
test_b2e_metadata_decode(void)
{
    struct sc_dec d;
    uint64_t secs = 0, nanos = 0;
    unsigned char longer[sizeof b2e_meta + 1];

    CU_ASSERT_EQUAL(decode_b2e(b2e_meta, sizeof b2e_meta, &d, &secs,
                               &nanos), 0);
    CU_ASSERT_EQUAL(secs, 1700086400);
    CU_ASSERT_EQUAL(nanos, 123456789);

    /* Every truncation is refused as such. */
    for (size_t n = 0; n < sizeof b2e_meta; n++) {
        CU_ASSERT_EQUAL(decode_b2e(b2e_meta, n, &d, &secs, &nanos), -1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(d.err);
        CU_ASSERT_TEXT(d.err, "stdcode: truncated input");
    }
    /* One extra byte is refused as trailing. */
    memcpy(longer, b2e_meta, sizeof b2e_meta);
    longer[sizeof b2e_meta] = 0;
    CU_ASSERT_EQUAL(decode_b2e(longer, sizeof longer, &d, &secs, &nanos),
                    -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d.err);
    CU_ASSERT_TEXT(d.err, "stdcode: trailing bytes");
}

/* Decodes one varint from hex bytes and expects the given error. */
static void
expect_varint_error(const unsigned char *p, size_t n, uint64_t max,
                    const char *err)
{
    struct sc_dec d;
    uint64_t v = 12345;

    sc_dec_init(&d, p, n);
    CU_ASSERT_EQUAL(sc_get_varint(&d, max, &v), -1);
    CU_ASSERT_EQUAL(v, 12345);       /* untouched on failure */
    CU_ASSERT_EQUAL(d.off, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d.err);
    CU_ASSERT_TEXT(d.err, err);
    /* A failed decoder stays failed. */
    CU_ASSERT_EQUAL(sc_get_varint(&d, UINT64_MAX, &v), -1);
    CU_ASSERT_EQUAL(sc_dec_finish(&d), -1);
    CU_ASSERT_TEXT(d.err, err);
}

static void
test_varint_refusals(void)
{
    static const unsigned char long16[] = {0xfb, 0xfa, 0x00};
    static const unsigned char long32[] = {0xfc, 0xff, 0xff, 0x00, 0x00};
    static const unsigned char long64[] = {0xfd, 0xff, 0xff, 0xff, 0xff,
                                           0, 0, 0, 0};
    static const unsigned char zero16[] = {0xfb, 0x00, 0x00};
    static const unsigned char u128[] = {0xfe, 1, 0, 0, 0, 0, 0, 0, 0,
                                         0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char tag255[] = {0xff};
    static const unsigned char short16[] = {0xfb, 0x2c};
    static const unsigned char short64[] = {0xfd, 1, 2, 3, 4, 5, 6, 7};
    static const unsigned char big[] = {0xfc, 0x70, 0x11, 0x01, 0x00};
    static const unsigned char ok300[] = {0xfb, 0x2c, 0x01};
    struct sc_dec d;
    uint64_t v;

    expect_varint_error(long16, sizeof long16, UINT64_MAX,
                        "stdcode: over-long varint");
    expect_varint_error(long32, sizeof long32, UINT64_MAX,
                        "stdcode: over-long varint");
    expect_varint_error(long64, sizeof long64, UINT64_MAX,
                        "stdcode: over-long varint");
    expect_varint_error(zero16, sizeof zero16, UINT64_MAX,
                        "stdcode: over-long varint");
    expect_varint_error(u128, sizeof u128, UINT64_MAX,
                        "stdcode: 128-bit varint not supported");
    expect_varint_error(tag255, sizeof tag255, UINT64_MAX,
                        "stdcode: invalid varint tag 255");
    expect_varint_error(short16, sizeof short16, UINT64_MAX,
                        "stdcode: truncated input");
    expect_varint_error(short64, sizeof short64, UINT64_MAX,
                        "stdcode: truncated input");
    expect_varint_error(ok300, 0, UINT64_MAX, "stdcode: truncated input");
    /* 70000 does not fit a u16. */
    expect_varint_error(big, sizeof big, UINT16_MAX,
                        "stdcode: integer out of range");
    /* 300 fits a u16 but not a u8-bounded length. */
    expect_varint_error(ok300, sizeof ok300, 255,
                        "stdcode: integer out of range");
    sc_dec_init(&d, ok300, sizeof ok300);
    CU_ASSERT_EQUAL(sc_get_varint(&d, 300, &v), 0);
    CU_ASSERT_EQUAL(v, 300);
    CU_ASSERT_EQUAL(sc_dec_finish(&d), 0);
}

static void
test_bytes_bool_raw(void)
{
    static const unsigned char in[] = {0x03, 'a', 'b', 'c', 0x01, 0x00,
                                       0x02, 0xaa, 0xbb};
    static const unsigned char badlen[] = {0x05, 'a', 'b'};
    static const unsigned char badbool[] = {0x02};
    struct sc_dec d;
    const unsigned char *p = NULL;
    size_t n = 99;
    int b1 = -1, b2 = -1;
    unsigned char raw[3];

    sc_dec_init(&d, in, sizeof in);
    CU_ASSERT_EQUAL(sc_get_bytes(&d, 3, &p, &n), 0);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT(p == in + 1);
    CU_ASSERT_EQUAL(sc_get_bool(&d, &b1), 0);
    CU_ASSERT_EQUAL(sc_get_bool(&d, &b2), 0);
    CU_ASSERT_EQUAL(b1, 1);
    CU_ASSERT_EQUAL(b2, 0);
    CU_ASSERT_EQUAL(sc_get_raw(&d, raw, 3), 0);
    CU_ASSERT(memcmp(raw, "\x02\xaa\xbb", 3) == 0);
    CU_ASSERT_EQUAL(sc_dec_finish(&d), 0);

    /* A length above the caller's limit. */
    sc_dec_init(&d, in, sizeof in);
    CU_ASSERT_EQUAL(sc_get_bytes(&d, 2, &p, &n), -1);
    CU_ASSERT_TEXT(d.err, "stdcode: length exceeds limit");
    /* A length beyond the input. */
    sc_dec_init(&d, badlen, sizeof badlen);
    CU_ASSERT_EQUAL(sc_get_bytes(&d, 100, &p, &n), -1);
    CU_ASSERT_TEXT(d.err, "stdcode: truncated input");
    CU_ASSERT_EQUAL(d.off, 0);
    /* A bool that is not 0 or 1. */
    sc_dec_init(&d, badbool, sizeof badbool);
    CU_ASSERT_EQUAL(sc_get_bool(&d, &b1), -1);
    CU_ASSERT_TEXT(d.err, "stdcode: bool is neither 0 nor 1");
    /* Raw reads past the end. */
    sc_dec_init(&d, badlen, sizeof badlen);
    CU_ASSERT_EQUAL(sc_get_raw(&d, raw, 4), -1);
    CU_ASSERT_TEXT(d.err, "stdcode: truncated input");
    /* An empty input with NULL: finish succeeds, reads fail. */
    sc_dec_init(&d, NULL, 0);
    CU_ASSERT_EQUAL(sc_dec_finish(&d), 0);
    CU_ASSERT_EQUAL(sc_get_u8(&d, raw), -1);
    /* zigzag bounds */
    {
        static const unsigned char m1[] = {0x01};
        int64_t s = 7;

        sc_dec_init(&d, m1, 1);
        CU_ASSERT_EQUAL(sc_get_zigzag(&d, 0, 100, &s), -1);
        CU_ASSERT_EQUAL(s, 7);
        CU_ASSERT_TEXT(d.err, "stdcode: integer out of range");
    }
}

static void
test_encoder_bound(void)
{
    struct sc_enc e;
    unsigned char big[300];

    memset(big, 0x5a, sizeof big);
    /* Exactly at the bound. */
    sc_enc_init(&e, 303);
    sc_put_bytes(&e, big, 300);
    CU_ASSERT_FALSE(e.failed);
    CU_ASSERT_EQUAL(e.len, 303);
    CU_ASSERT(memcmp(e.buf, "\xfb\x2c\x01", 3) == 0);
    /* One byte more fails and sticks. */
    sc_put_u8(&e, 1);
    CU_ASSERT_TRUE(e.failed);
    CU_ASSERT_EQUAL(e.len, 303);
    sc_put_varint(&e, 0);
    CU_ASSERT_EQUAL(e.len, 303);
    sc_enc_free(&e);
    CU_ASSERT_PTR_NULL(e.buf);

    sc_enc_init(&e, 302);
    sc_put_bytes(&e, big, 300);
    CU_ASSERT_TRUE(e.failed);
    sc_enc_free(&e);

    /* Empty byte strings and bools. */
    sc_enc_init(&e, 10);
    sc_put_bytes(&e, NULL, 0);
    sc_put_bool(&e, 5);
    sc_put_bool(&e, 0);
    CU_ASSERT_FALSE(e.failed);
    CU_ASSERT_EQUAL(e.len, 3);
    CU_ASSERT(memcmp(e.buf, "\x00\x01\x00", 3) == 0);
    sc_enc_free(&e);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        {"varint examples and boundaries (§5.1)", test_varint_examples},
        {"zigzag (§5.1)", test_zigzag},
        {"B2eMetadata encode (§10.1)", test_b2e_metadata_encode},
        {"B2eMetadata decode, truncation, trailing", test_b2e_metadata_decode},
        {"varint refusals", test_varint_refusals},
        {"bytes, bool, raw", test_bytes_bool_raw},
        {"encoder bound", test_encoder_bound},
        {NULL, NULL},
    };

    return cu_run("stdcode", tests);
}
