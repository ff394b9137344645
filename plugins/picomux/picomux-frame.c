/*
 * picomux-frame.c: the picomux wire codec (see picomux-frame.h).
 *
 * Most of this file is the PING body parser.  The Rust peer kills the
 * whole mux when serde_json::from_slice::<PingInfo> fails (§4.6, §11), so
 * being stricter than serde would kill muxes Rust keeps alive, and being
 * laxer would keep muxes alive on bodies Rust peers treat as fatal.  The
 * parser therefore follows what serde_json (1.0.140, the version Geph5
 * locks) does for `struct PingInfo { next_ping_in_ms: u32 }` with
 * #[derive(Deserialize)], step by step:
 *
 *  - from_slice parses one value, then allows only ' ', '\t', '\n', '\r'
 *    until the end ("trailing characters").  No BOM, no comments.
 *  - deserialize_struct takes '{' (visit_map) or '[' (visit_seq); any
 *    other value is an "invalid type".
 *  - visit_seq reads exactly one u32 element; `[]` is "invalid length 0"
 *    and end_seq then demands ']', so `[5,6]` and `[5,]` fail.
 *  - visit_map loops over keys.  Keys go through parse_str, which checks
 *    escapes strictly (\u surrogates must pair) and the whole decoded key
 *    as UTF-8; the decoded key is compared to "next_ping_in_ms", so an
 *    escaped spelling of the name is the field.  The field twice is
 *    "duplicate field", never at all "missing field".
 *  - The field's value goes through deserialize_number: a '-' sign gives
 *    i64 (out of u32 range) or, for "-0", the float -0.0; '.', 'e' or
 *    'E' gives a float; both are refused by u32, and so are integers
 *    above 4294967295.  "01" is a syntax error.
 *  - Any other key's value is skipped by ignore_value, which checks the
 *    JSON grammar but (a) keeps its own stack instead of recursing, so it
 *    has NO depth limit (the 128-level limit only guards recursion), and
 *    (b) skips strings with ignore_str, which rejects control characters
 *    and bad escape letters and wants four hex digits after \u, but does
 *    not check UTF-8 or surrogate pairing.  Keys of objects nested in an
 *    ignored value are skipped the same lax way.
 */
#include "picomux-frame.h"

#include <stdio.h>
#include <string.h>

void pm_hdr_encode(uint8_t out[PM_HDR_LEN], uint8_t cmd, uint16_t body_len,
                   uint32_t stream_id)
{
    /*
     * Rust memcpys a #[repr(C)] struct, i.e. host order; every peer that
     * matters is little-endian, so we spell little-endian out (§2.1).
     */
    out[0] = PM_VERSION;
    out[1] = cmd;
    out[2] = (uint8_t)(body_len & 0xffu);
    out[3] = (uint8_t)(body_len >> 8);
    out[4] = (uint8_t)(stream_id & 0xffu);
    out[5] = (uint8_t)((stream_id >> 8) & 0xffu);
    out[6] = (uint8_t)((stream_id >> 16) & 0xffu);
    out[7] = (uint8_t)(stream_id >> 24);
}

void pm_hdr_decode(const uint8_t in[PM_HDR_LEN], struct pm_hdr *hdr)
{
    hdr->version = in[0];
    hdr->cmd = in[1];
    hdr->body_len = (uint16_t)(in[2] | (unsigned)in[3] << 8);
    hdr->stream_id = (uint32_t)in[4] | (uint32_t)in[5] << 8 |
                     (uint32_t)in[6] << 16 | (uint32_t)in[7] << 24;
}

void pm_more_encode(uint8_t out[PM_MORE_BODY_LEN], uint16_t incr)
{
    out[0] = (uint8_t)(incr & 0xffu);
    out[1] = (uint8_t)(incr >> 8);
}

uint16_t pm_more_decode(const uint8_t in[PM_MORE_BODY_LEN])
{
    return (uint16_t)(in[0] | (unsigned)in[1] << 8);
}

/* The one field of PingInfo, as serde names it in JSON. */
static const char ping_field[] = "next_ping_in_ms";
#define PING_FIELD_LEN (sizeof ping_field - 1)

size_t pm_ping_body_write(uint32_t next_ping_in_ms,
                          uint8_t out[PM_PING_BODY_MAX])
{
    char digits[10];
    size_t ndigits = 0, len = 0;

    /* Byte for byte what serde_json's compact serializer emits. */
    out[len++] = '{';
    out[len++] = '"';
    memcpy(out + len, ping_field, PING_FIELD_LEN);
    len += PING_FIELD_LEN;
    out[len++] = '"';
    out[len++] = ':';
    do {
        digits[ndigits++] = (char)('0' + next_ping_in_ms % 10);
        next_ping_in_ms /= 10;
    } while (next_ping_in_ms != 0);
    while (ndigits > 0)
        out[len++] = (uint8_t)digits[--ndigits];
    out[len++] = '}';
    return len;
}

/*
 * A read cursor over a PING body.  Every access is checked against len,
 * so nothing past the body is ever read.
 */
struct jcur {
    const uint8_t *p;
    size_t len;
    size_t i;
};

/* The next byte, or -1 at the end; like serde's peek. */
static int jpeek(const struct jcur *c)
{
    return c->i < c->len ? c->p[c->i] : -1;
}

static int jisdigit(int ch)
{
    return ch >= '0' && ch <= '9';
}

/* serde_json's parse_whitespace: exactly these four bytes. */
static void jskip_ws(struct jcur *c)
{
    int ch;

    while ((ch = jpeek(c)) == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
        c->i++;
}

/* Four hex digits of a \u escape, either case. */
static int jhex4(struct jcur *c, uint32_t *out)
{
    uint32_t n = 0;
    size_t k;
    int r = PM_EPING_SYNTAX;

    if (c->len - c->i < 4)
        goto out;
    for (k = 0; k < 4; k++) {
        uint8_t b = c->p[c->i++];

        if (b >= '0' && b <= '9')
            n = n << 4 | (uint32_t)(b - '0');
        else if (b >= 'a' && b <= 'f')
            n = n << 4 | (uint32_t)(b - 'a' + 10);
        else if (b >= 'A' && b <= 'F')
            n = n << 4 | (uint32_t)(b - 'A' + 10);
        else
            goto out;
    }
    *out = n;
    r = 0;
out:
    return r;
}

/*
 * One escape, the backslash already consumed; *cp gets the code point.
 * strict != 0 is serde's parse_escape for strings it decodes (our keys):
 * a \u surrogate must be a high one directly followed by \u and a low
 * one.  strict == 0 is its ignore_escape for skipped strings: any four
 * hex digits do, and *cp is then meaningless.
 */
static int jescape(struct jcur *c, int strict, uint32_t *cp)
{
    uint32_t n = 0, low = 0;
    int r = PM_EPING_SYNTAX;

    if (c->i >= c->len)
        goto out;
    switch (c->p[c->i++]) {
    case '"':
        n = '"';
        break;
    case '\\':
        n = '\\';
        break;
    case '/':
        n = '/';
        break;
    case 'b':
        n = 0x08;
        break;
    case 'f':
        n = 0x0c;
        break;
    case 'n':
        n = 0x0a;
        break;
    case 'r':
        n = 0x0d;
        break;
    case 't':
        n = 0x09;
        break;
    case 'u':
        if (jhex4(c, &n) != 0)
            goto out;
        if (!strict)
            break;
        if (n >= 0xdc00 && n <= 0xdfff)
            goto out;
        if (n >= 0xd800 && n <= 0xdbff) {
            if (c->len - c->i < 2 || c->p[c->i] != '\\' ||
                c->p[c->i + 1] != 'u')
                goto out;
            c->i += 2;
            if (jhex4(c, &low) != 0 || low < 0xdc00 || low > 0xdfff)
                goto out;
            n = 0x10000 + ((n - 0xd800) << 10 | (low - 0xdc00));
        }
        break;
    default:
        goto out;
    }
    *cp = n;
    r = 0;
out:
    return r;
}

/*
 * One UTF-8 sequence starting at a byte >= 0x80, judged like Rust's
 * str::from_utf8: no overlong forms, no surrogates, nothing above
 * U+10FFFF, no truncation.
 */
static int jutf8(struct jcur *c)
{
    uint8_t lead = c->p[c->i], lo = 0x80, hi = 0xbf;
    size_t ncont, k;
    int r = PM_EPING_SYNTAX;

    if (lead >= 0xc2 && lead <= 0xdf) {
        ncont = 1;
    } else if (lead >= 0xe0 && lead <= 0xef) {
        ncont = 2;
        if (lead == 0xe0)
            lo = 0xa0;
        else if (lead == 0xed)
            hi = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        ncont = 3;
        if (lead == 0xf0)
            lo = 0x90;
        else if (lead == 0xf4)
            hi = 0x8f;
    } else {
        goto out;
    }
    if (c->len - c->i - 1 < ncont)
        goto out;
    for (k = 1; k <= ncont; k++) {
        uint8_t b = c->p[c->i + k];

        if (b < lo || b > hi)
            goto out;
        lo = 0x80;
        hi = 0xbf;
    }
    c->i += ncont + 1;
    r = 0;
out:
    return r;
}

/*
 * A key of the PingInfo object itself, after its opening quote: serde's
 * parse_str (strict escapes, UTF-8 checked, no raw control bytes), then
 * the derived field visitor's comparison of the decoded text.
 */
static int jkey(struct jcur *c, int *is_field)
{
    size_t matched = 0;
    uint32_t cp = 0;
    int same = 1, r = PM_EPING_SYNTAX;

    for (;;) {
        int ch = jpeek(c);

        if (ch < 0x20)      /* the end (-1), or a raw control byte */
            goto out;
        if (ch == '"') {
            c->i++;
            break;
        }
        if (ch == '\\') {
            c->i++;
            if (jescape(c, 1, &cp) != 0)
                goto out;
        } else if (ch < 0x80) {
            c->i++;
            cp = (uint32_t)ch;
        } else {
            if (jutf8(c) != 0)
                goto out;
            cp = 0x80;      /* any non-ASCII character: not our field */
        }
        if (same && matched < PING_FIELD_LEN &&
            cp == (uint8_t)ping_field[matched])
            matched++;
        else
            same = 0;
    }
    *is_field = same && matched == PING_FIELD_LEN;
    r = 0;
out:
    return r;
}

/*
 * A string inside an ignored value, after its opening quote: serde's
 * ignore_str.  Raw bytes >= 0x80 are not checked, nor are surrogates.
 */
static int jskip_str(struct jcur *c)
{
    uint32_t cp;
    int r = PM_EPING_SYNTAX;

    for (;;) {
        int ch = jpeek(c);

        if (ch < 0x20)      /* the end (-1), or a raw control byte */
            goto out;
        c->i++;
        if (ch == '"')
            break;
        if (ch == '\\' && jescape(c, 0, &cp) != 0)
            goto out;
    }
    r = 0;
out:
    return r;
}

/* A number inside an ignored value: the JSON grammar, any magnitude. */
static int jskip_num(struct jcur *c)
{
    int r = PM_EPING_SYNTAX;

    if (jpeek(c) == '-')
        c->i++;
    if (jpeek(c) == '0') {
        c->i++;
        if (jisdigit(jpeek(c)))
            goto out;
    } else if (jisdigit(jpeek(c))) {
        while (jisdigit(jpeek(c)))
            c->i++;
    } else {
        goto out;
    }
    if (jpeek(c) == '.') {
        c->i++;
        if (!jisdigit(jpeek(c)))
            goto out;
        while (jisdigit(jpeek(c)))
            c->i++;
    }
    if (jpeek(c) == 'e' || jpeek(c) == 'E') {
        c->i++;
        if (jpeek(c) == '+' || jpeek(c) == '-')
            c->i++;
        if (!jisdigit(jpeek(c)))
            goto out;
        while (jisdigit(jpeek(c)))
            c->i++;
    }
    r = 0;
out:
    return r;
}

/* true, false or null, spelled exactly. */
static int jskip_word(struct jcur *c, const char *word)
{
    size_t n = strlen(word);
    int r = PM_EPING_SYNTAX;

    if (c->len - c->i >= n && memcmp(c->p + c->i, word, n) == 0) {
        c->i += n;
        r = 0;
    }
    return r;
}

/* `"key" :` of an object inside an ignored value, whitespace allowed. */
static int jskip_member_key(struct jcur *c)
{
    int r = PM_EPING_SYNTAX;

    jskip_ws(c);
    if (jpeek(c) != '"')
        goto out;
    c->i++;
    if (jskip_str(c) != 0)
        goto out;
    jskip_ws(c);
    if (jpeek(c) != ':')
        goto out;
    c->i++;
    r = 0;
out:
    return r;
}

/*
 * One value of a field PingInfo does not know, skipped like serde's
 * ignore_value: full grammar, no depth limit.  Instead of recursing we
 * keep one bit per open container in `kinds` (1 = object), which has
 * room for `kinds_bits` levels; the caller sizes it for the body, which
 * cannot open more containers than it has bytes.
 */
static int jskip_value(struct jcur *c, uint8_t *kinds, size_t kinds_bits)
{
    size_t depth = 0;
    int r = PM_EPING_SYNTAX, ch, closed;

    for (;;) {
        /* A value starts here. */
        jskip_ws(c);
        ch = jpeek(c);
        closed = 1;
        if (ch == '[' || ch == '{') {
            if (depth >= kinds_bits)
                goto out;
            c->i++;
            if (ch == '{')
                kinds[depth / 8] |= (uint8_t)(1u << depth % 8);
            else
                kinds[depth / 8] &= (uint8_t)~(1u << depth % 8);
            depth++;
            jskip_ws(c);
            if (jpeek(c) == (ch == '{' ? '}' : ']')) {
                c->i++;
                depth--;
            } else {
                closed = 0;     /* its first element comes next */
                if (ch == '{' && jskip_member_key(c) != 0)
                    goto out;
            }
        } else if (ch == '"') {
            c->i++;
            if (jskip_str(c) != 0)
                goto out;
        } else if (ch == '-' || jisdigit(ch)) {
            if (jskip_num(c) != 0)
                goto out;
        } else if (ch == 't' || ch == 'f' || ch == 'n') {
            if (jskip_word(c, ch == 't' ? "true" :
                              ch == 'f' ? "false" : "null") != 0)
                goto out;
        } else {
            goto out;
        }
        if (!closed)
            continue;

        /* A value ended: close containers until one wants more. */
        for (;;) {
            int is_obj;

            if (depth == 0) {
                r = 0;
                goto out;
            }
            is_obj = kinds[(depth - 1) / 8] >> (depth - 1) % 8 & 1;
            jskip_ws(c);
            ch = jpeek(c);
            if (ch == (is_obj ? '}' : ']')) {
                c->i++;
                depth--;
                continue;
            }
            if (ch != ',')
                goto out;
            c->i++;
            if (is_obj && jskip_member_key(c) != 0)
                goto out;
            break;
        }
    }
out:
    return r;
}

/*
 * The value of next_ping_in_ms, whitespace already skipped: what serde's
 * deserialize_u32 accepts, an unsigned integer without fraction or
 * exponent, no leading zero, at most 4294967295.
 */
static int jnum_u32(struct jcur *c, uint32_t *out)
{
    uint64_t v;
    int r = PM_EPING_VALUE, ch = jpeek(c);

    if (ch < 0) {
        r = PM_EPING_SYNTAX;
        goto out;
    }
    /* '-' too: serde makes negatives i64 and "-0" the float -0.0 */
    if (!jisdigit(ch))
        goto out;
    c->i++;
    v = (uint64_t)(ch - '0');
    if (ch == '0' && jisdigit(jpeek(c))) {
        r = PM_EPING_SYNTAX;
        goto out;
    }
    while (jisdigit(ch = jpeek(c))) {
        c->i++;
        /* stop accumulating once out of range: no overflow, still refused */
        if (v <= UINT32_MAX)
            v = v * 10 + (uint64_t)(ch - '0');
    }
    if (ch == '.' || ch == 'e' || ch == 'E' || v > UINT32_MAX)
        goto out;
    *out = (uint32_t)v;
    r = 0;
out:
    return r;
}

/* The map form {"next_ping_in_ms":N, ...}, at its '{'. */
static int jping_object(struct jcur *c, uint8_t *kinds, size_t kinds_bits,
                        uint32_t *out)
{
    uint32_t v = 0;
    int r, have = 0, is_field = 0;

    c->i++;
    jskip_ws(c);
    if (jpeek(c) == '}') {
        c->i++;
        r = PM_EPING_MISSING;
        goto out;
    }
    for (;;) {
        if (jpeek(c) != '"') {
            r = PM_EPING_SYNTAX;    /* serde: "key must be a string" */
            goto out;
        }
        c->i++;
        if ((r = jkey(c, &is_field)) != 0)
            goto out;
        jskip_ws(c);
        if (jpeek(c) != ':') {
            r = PM_EPING_SYNTAX;
            goto out;
        }
        c->i++;
        if (is_field) {
            if (have) {
                r = PM_EPING_DUPLICATE;
                goto out;
            }
            jskip_ws(c);
            if ((r = jnum_u32(c, &v)) != 0)
                goto out;
            have = 1;
        } else if ((r = jskip_value(c, kinds, kinds_bits)) != 0) {
            goto out;
        }
        jskip_ws(c);
        if (jpeek(c) == '}') {
            c->i++;
            break;
        }
        if (jpeek(c) != ',') {
            r = PM_EPING_SYNTAX;
            goto out;
        }
        c->i++;
        jskip_ws(c);        /* a '}' here is serde's "trailing comma" */
    }
    r = have ? 0 : PM_EPING_MISSING;
    if (r == 0)
        *out = v;
out:
    return r;
}

/* The sequence form [N], at its '['. */
static int jping_array(struct jcur *c, uint32_t *out)
{
    uint32_t v = 0;
    int r, ch;

    c->i++;
    jskip_ws(c);
    ch = jpeek(c);
    if (ch == ']') {
        r = PM_EPING_MISSING;       /* serde: "invalid length 0" */
        goto out;
    }
    if ((r = jnum_u32(c, &v)) != 0)
        goto out;
    jskip_ws(c);
    ch = jpeek(c);
    if (ch == ']') {
        c->i++;
        *out = v;
    } else {
        /* end_seq: EOF is a syntax error, "," or more a trailing one */
        r = ch < 0 ? PM_EPING_SYNTAX : PM_EPING_TRAILING;
    }
out:
    return r;
}

int pm_ping_body_parse(const uint8_t *body, size_t len,
                       uint32_t *next_ping_in_ms)
{
    /* One bit per container level an ignored value could open. */
    uint8_t kinds[PM_BODY_MAX / 8 + 1];
    struct jcur c = { body, len, 0 };
    uint32_t v = 0;
    int r, ch;

    if (len > PM_BODY_MAX) {
        r = PM_EPING_TOOLONG;
        goto out;
    }
    jskip_ws(&c);
    ch = jpeek(&c);
    if (ch == '{')
        r = jping_object(&c, kinds, sizeof kinds * 8, &v);
    else if (ch == '[')
        r = jping_array(&c, &v);
    else if (ch == '"' || ch == '-' || jisdigit(ch) || ch == 't' ||
             ch == 'f' || ch == 'n')
        r = PM_EPING_TYPE;          /* a scalar, not a struct */
    else
        r = PM_EPING_SYNTAX;        /* empty, BOM, anything else */
    if (r != 0)
        goto out;
    jskip_ws(&c);
    if (c.i != c.len) {
        r = PM_EPING_TRAILING;
        goto out;
    }
    *next_ping_in_ms = v;
out:
    return r;
}

int pm_frame_split(const uint8_t *buf, size_t len, struct pm_frame *frame,
                   size_t *size)
{
    struct pm_hdr hdr;
    size_t need = PM_HDR_LEN;
    int r = PM_SPLIT_NEED_MORE;

    if (len >= PM_HDR_LEN) {
        pm_hdr_decode(buf, &hdr);
        need = PM_HDR_LEN + (size_t)hdr.body_len;
        if (len >= need) {
            frame->hdr = hdr;
            frame->body = buf + PM_HDR_LEN;
            r = PM_SPLIT_FRAME;
        }
    }
    *size = need;
    return r;
}

int pm_frame_validate(const struct pm_frame *frame,
                      struct pm_frame_info *info)
{
    struct pm_frame_info got = { 0, 0 };
    int r = 0;

    switch (frame->hdr.cmd) {
    case PM_CMD_SYN:
    case PM_CMD_FIN:
    case PM_CMD_PSH:
    case PM_CMD_NOP:
    case PM_CMD_PONG:
        /* Rust reads and ignores FIN, NOP and PONG bodies (§3). */
        break;
    case PM_CMD_MORE:
        if (frame->hdr.body_len != PM_MORE_BODY_LEN)
            r = PM_EMORELEN;
        else
            got.more_incr = pm_more_decode(frame->body);
        break;
    case PM_CMD_PING:
        r = pm_ping_body_parse(frame->body, frame->hdr.body_len,
                               &got.ping_ms);
        break;
    default:
        r = PM_EBADCMD;
        break;
    }
    if (r == 0 && info != NULL)
        *info = got;
    return r;
}

/* Why a PING body was refused, or NULL for a code that is not PING's. */
static const char *ping_reason(int err)
{
    switch (err) {
    case PM_EPING_SYNTAX:
        return "not valid JSON";
    case PM_EPING_TYPE:
        return "not a JSON object or array";
    case PM_EPING_VALUE:
        return "next_ping_in_ms is not an integer in 0..=4294967295";
    case PM_EPING_MISSING:
        return "missing field next_ping_in_ms";
    case PM_EPING_DUPLICATE:
        return "duplicate field next_ping_in_ms";
    case PM_EPING_TRAILING:
        return "trailing characters";
    case PM_EPING_TOOLONG:
        return "longer than 65535 bytes";
    default:
        return NULL;
    }
}

const char *pm_frame_strerror(int err, const struct pm_hdr *hdr, char *buf,
                              size_t buflen)
{
    const char *why = ping_reason(err);

    if (buflen == 0)
        goto out;
    if (err == PM_OK)
        snprintf(buf, buflen, "picomux: no error");
    else if (err == PM_EBADCMD && hdr != NULL)
        snprintf(buf, buflen, "picomux: invalid command 0x%02x",
                 (unsigned)hdr->cmd);
    else if (err == PM_EBADCMD)
        snprintf(buf, buflen, "picomux: invalid command");
    else if (err == PM_EMORELEN && hdr != NULL)
        snprintf(buf, buflen,
                 "picomux: corrupt window increase message (%u byte%s)",
                 (unsigned)hdr->body_len, hdr->body_len == 1 ? "" : "s");
    else if (err == PM_EMORELEN)
        snprintf(buf, buflen, "picomux: corrupt window increase message");
    else if (why != NULL)
        snprintf(buf, buflen, "picomux: invalid PING data (%s)", why);
    else
        snprintf(buf, buflen, "picomux: unknown error %d", err);
out:
    return buf;
}

const char *pm_cmd_name(uint8_t cmd)
{
    switch (cmd) {
    case PM_CMD_SYN:
        return "SYN";
    case PM_CMD_FIN:
        return "FIN";
    case PM_CMD_PSH:
        return "PSH";
    case PM_CMD_NOP:
        return "NOP";
    case PM_CMD_MORE:
        return "MORE";
    case PM_CMD_PING:
        return "PING";
    case PM_CMD_PONG:
        return "PONG";
    default:
        return NULL;
    }
}
