/* tunnel.c - tunnel commands, replies, length-prefixed messages and
 * B2eMetadata (sillad-and-stacks.md §3.1, §5.2, §7.3, §7.4, §8.2). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sillad.h"
#include "stack-int.h"
#include "tunnel.h"

#define LAYER "tunnel"

/* ---- helpers ------------------------------------------------------------- */

/* Strict UTF-8 (no overlong forms, no surrogates, nothing above
 * U+10FFFF), as Rust's str::from_utf8 requires. */
static int
utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Splits "name:port", "ip:port" or "[v6]:port" (at the last ':') into
 * c->host and c->port.  0 or SL_EINVAL with e set. */
static int
split_host(const char *s, size_t n, struct tun_cmd *c, struct sl_error *e)
{
    const char *colon = NULL, *h = s;
    size_t hl, pl;
    unsigned long port = 0;

    for (size_t i = 0; i < n; i++)
        if (s[i] == ':')
            colon = s + i;
    if (colon == NULL)
        return sl_error_set(e, SL_EINVAL, LAYER, "host '%.*s' has no ':port'",
                            (int)(n > 80 ? 80 : n), s);
    hl = (size_t)(colon - s);
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
        h = s + 1;
        hl -= 2;
    } else if (n > 0 && s[0] == '[') {
        return sl_error_set(e, SL_EINVAL, LAYER, "host '%.*s': '[' without "
                            "a matching ']' before the port",
                            (int)(n > 80 ? 80 : n), s);
    }
    if (hl == 0)
        return sl_error_set(e, SL_EINVAL, LAYER, "empty host name before "
                            "':port'");
    if (hl >= sizeof(c->host))
        return sl_error_set(e, SL_EINVAL, LAYER, "host name longer than %zu "
                            "bytes", sizeof(c->host) - 1);
    for (size_t i = 0; i < hl; i++) {
        unsigned char ch = (unsigned char)h[i];

        if (ch <= 0x20 || ch == 0x7f || ch == '[' || ch == ']' || ch == '/')
            return sl_error_set(e, SL_EINVAL, LAYER, "host name has a "
                                "forbidden character (0x%02x) at byte %zu",
                                ch, i + 1);
    }
    pl = n - hl - (size_t)(h != s ? 2 : 0) - 1;
    if (pl == 0 || pl > 5)
        return sl_error_set(e, SL_EINVAL, LAYER, "port '%.*s' is not a "
                            "number from 1 to 65535", (int)(pl > 8 ? 8 : pl),
                            colon + 1);
    for (size_t i = 0; i < pl; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9')
            return sl_error_set(e, SL_EINVAL, LAYER, "port '%.*s' is not a "
                                "number from 1 to 65535", (int)pl, colon + 1);
        port = port * 10 + (unsigned long)(colon[1 + i] - '0');
    }
    if (port == 0 || port > 65535)
        return sl_error_set(e, SL_EINVAL, LAYER, "port '%.*s' is not a "
                            "number from 1 to 65535", (int)pl, colon + 1);
    memcpy(c->host, h, hl);
    c->host[hl] = '\0';
    snprintf(c->port, sizeof(c->port), "%lu", port);
    return 0;
}

/* ---- length-prefixed messages ------------------------------------------- */

int
tun_msg_take(struct evbuffer *in, unsigned char **p, size_t *n,
             struct sl_error *e)
{
    unsigned char hdr[4];
    uint32_t len;
    unsigned char *buf;

    if (evbuffer_copyout(in, hdr, 4) < 4)
        return 0;
    len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
          (uint32_t)hdr[2] << 8 | hdr[3];
    if (len > TUN_MSG_MAX) {
        sl_error_set(e, SL_EPROTO, LAYER, "message length %lu is above the "
                     "limit of %d bytes", (unsigned long)len, TUN_MSG_MAX);
        return -1;
    }
    if (evbuffer_get_length(in) < 4 + (size_t)len)
        return 0;
    if ((buf = malloc(len ? len : 1)) == NULL) {
        sl_error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return -1;
    }
    evbuffer_drain(in, 4);
    evbuffer_remove(in, buf, len);
    *p = buf;
    *n = len;
    return 1;
}

int
tun_msg_put(struct evbuffer *out, const void *p, size_t n)
{
    unsigned char hdr[4];
    size_t before = evbuffer_get_length(out);

    if (n > TUN_MSG_MAX)
        return -1;
    hdr[0] = (unsigned char)(n >> 24);
    hdr[1] = (unsigned char)(n >> 16);
    hdr[2] = (unsigned char)(n >> 8);
    hdr[3] = (unsigned char)n;
    if (evbuffer_add(out, hdr, 4) != 0)
        return -1;
    if (n > 0 && evbuffer_add(out, p, n) != 0) {
        /* Take the header back off so out stays a sequence of messages. */
        size_t now = evbuffer_get_length(out);

        if (now > before) {
            struct evbuffer *keep = evbuffer_new();

            if (keep != NULL) {
                evbuffer_remove_buffer(out, keep, before);
                evbuffer_drain(out, now - before);
                evbuffer_add_buffer(out, keep);
                evbuffer_free(keep);
            }
        }
        return -1;
    }
    return 0;
}

/* ---- the common JSON shapes, without a JSON library ----------------------
 *
 * Every tunnel costs a command and a reply, each a small JSON object of a
 * fixed shape.  Written compact, in this key order, with strings of plain
 * printable ASCII, they read and write as text: the same bytes and values
 * Jansson makes and finds, at a small part of the cost.  Anything else
 * (escapes, spaces, other key orders, non-ASCII) goes through Jansson. */

/* True when s (n bytes) is a JSON string body that needs no escapes and
 * reads back as itself: printable ASCII without '"' and '\\'. */
static int
json_plain(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return 0;
    return 1;
}

/* Matches the literal lit at *p (bounded by end); advances past it. */
static int
lit(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);

    if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
        return 0;
    *p += n;
    return 1;
}

/* A plain string body up to the next '"' at *p: its start and length;
 * *p is left on the closing quote.  0 when it is not plain. */
static int
plain_str(const char **p, const char *end, const char **s, size_t *n)
{
    const char *q = *p;

    while (q < end && *q != '"')
        q++;
    if (q == end || !json_plain(*p, (size_t)(q - *p)))
        return 0;
    *s = *p;
    *n = (size_t)(q - *p);
    *p = q;
    return 1;
}

/* ---- tunnel commands ----------------------------------------------------- */

/* What a rich command's two fields say (both well-formed strings). */
static int
rich_fields(const char *proto, const char *host, size_t host_len,
            struct tun_cmd *c, struct sl_error *e)
{
    struct tun_cmd tmp;
    struct sl_error he;

    memset(&tmp, 0, sizeof(tmp));
    tmp.rich = 1;
    tmp.proto = TUN_TCP;
    /* The command is well-formed: what is wrong with its values is
     * answered with a failure, as the Rust exit does. */
    if (strcmp(proto, "udp") == 0) {
        tmp.proto = TUN_UDP;
    } else if (strcmp(proto, "tcp") != 0) {
        *c = tmp;
        return sl_error_set(e, SL_ENOTSUP, LAYER, "unknown protocol '%.40s' "
                            "(tcp or udp)", proto);
    }
    sl_error_clear(&he);
    if (split_host(host, host_len, &tmp, &he) != 0) {
        tmp.host[0] = '\0';
        tmp.port[0] = '\0';
        *c = tmp;
        return sl_error_set(e, SL_ENOTSUP, LAYER, "%s", he.text);
    }
    *c = tmp;
    return 0;
}

/* {"protocol":"P","host":"H"} with plain strings: 1 and the fields
 * handled, or 0 for the general parser. */
static int
rich_compact(const char *s, size_t n, struct tun_cmd *c, struct sl_error *e,
             int *r)
{
    const char *p = s, *end = s + n, *pv, *hv;
    size_t pn, hn;
    char proto[16];

    if (!lit(&p, end, "{\"protocol\":\"") || !plain_str(&p, end, &pv, &pn) ||
        !lit(&p, end, "\",\"host\":\"") || !plain_str(&p, end, &hv, &hn) ||
        !lit(&p, end, "\"}") || p != end || pn >= sizeof(proto))
        return 0;
    memcpy(proto, pv, pn);
    proto[pn] = '\0';
    *r = rich_fields(proto, hv, hn, c, e);
    return 1;
}

static int
parse_rich(const char *s, size_t n, struct tun_cmd *c, struct sl_error *e)
{
    json_error_t je;
    json_t *root, *proto, *host;
    int r = SL_EINVAL;

    if (rich_compact(s, n, c, e, &r))
        return r;
    root = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return sl_error_set(e, SL_EINVAL, LAYER, "rich tunnel command: "
                            "column %d: %s", je.column, je.text);
    proto = json_object_get(root, "protocol");
    host = json_object_get(root, "host");
    if (!json_is_object(root) || !json_is_string(proto) ||
        !json_is_string(host))
        sl_error_set(e, SL_EINVAL, LAYER, "rich tunnel command: expected an "
                     "object with string fields \"protocol\" and \"host\"");
    else
        r = rich_fields(json_string_value(proto), json_string_value(host),
                        json_string_length(host), c, e);
    json_decref(root);
    return r;
}

int
tun_cmd_parse(const void *meta, size_t n, struct tun_cmd *c,
              struct sl_error *e)
{
    const char *s = meta;
    const char *dollar;
    struct tun_cmd tmp;
    int r;

    if (n == 0)
        return sl_error_set(e, SL_EINVAL, LAYER, "empty tunnel command");
    if (n > TUN_MSG_MAX)
        return sl_error_set(e, SL_EINVAL, LAYER, "tunnel command longer "
                            "than %d bytes", TUN_MSG_MAX);
    if (!utf8_valid(meta, n) || memchr(meta, '\0', n) != NULL)
        return sl_error_set(e, SL_EINVAL, LAYER, "tunnel command is not "
                            "UTF-8 text");
    if (s[0] == '{')
        return parse_rich(s, n, c, e);
    memset(&tmp, 0, sizeof(tmp));
    tmp.proto = TUN_TCP;
    dollar = memchr(s, '$', n);
    if (dollar != NULL) {
        size_t pl = (size_t)(dollar - s);

        if (pl == 3 && memcmp(s, "udp", 3) == 0)
            tmp.proto = TUN_UDP;
        else if (!(pl == 3 && memcmp(s, "tcp", 3) == 0))
            return sl_error_set(e, SL_EINVAL, LAYER, "legacy tunnel command: "
                                "unknown protocol '%.*s' (tcp or udp)",
                                (int)(pl > 40 ? 40 : pl), s);
        n -= pl + 1;
        s = dollar + 1;
    }
    if ((r = split_host(s, n, &tmp, e)) != 0)
        return r;
    *c = tmp;
    return 0;
}

char *
tun_cmd_rich(const char *proto, const char *host, const char *port)
{
    char hp[300];
    json_t *j;
    char *out;
    size_t hl = strlen(host), pl = strlen(port);

    if (hl == 0 || hl > 255 || pl == 0 || pl > 5)
        return NULL;
    snprintf(hp, sizeof(hp), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host,
             port);
    if (json_plain(proto, strlen(proto)) && json_plain(hp, strlen(hp))) {
        size_t len = strlen(proto) + strlen(hp) + 32;

        if ((out = malloc(len)) != NULL)
            snprintf(out, len, "{\"protocol\":\"%s\",\"host\":\"%s\"}", proto,
                     hp);
        return out;
    }
    j = json_pack("{s:s,s:s}", "protocol", proto, "host", hp);
    if (j == NULL)
        return NULL;
    out = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return out;
}

/* ---- replies ------------------------------------------------------------- */

char *
tun_reply_ok(const char *resolved_addr, long open_ms)
{
    json_t *j;
    char *out;

    if (json_plain(resolved_addr, strlen(resolved_addr))) {
        size_t len = strlen(resolved_addr) + 64;

        if ((out = malloc(len)) == NULL)
            return NULL;
        if (open_ms < 0)
            snprintf(out, len, "{\"success\":{\"resolved_addr\":\"%s\","
                     "\"open_ms\":null}}", resolved_addr);
        else
            snprintf(out, len, "{\"success\":{\"resolved_addr\":\"%s\","
                     "\"open_ms\":%ld}}", resolved_addr, open_ms);
        return out;
    }
    j = json_pack("{s:{s:s,s:o}}", "success", "resolved_addr", resolved_addr,
                  "open_ms",
                  open_ms < 0 ? json_null() : json_integer(open_ms));
    if (j == NULL)
        return NULL;
    out = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return out;
}

char *
tun_reply_fail(const char *why)
{
    json_t *j = json_pack("{s:s}", "fail", why);
    char *out;

    if (j == NULL)
        return NULL;
    out = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    return out;
}

/* {"success":{"resolved_addr":"A","open_ms":N|null}} with a plain
 * string and N without leading zeros: 1 and r filled, or 0. */
static int
reply_compact(const char *s, size_t n, struct tun_reply *r)
{
    const char *p = s, *end = s + n, *av;
    size_t an;
    long long ms = -1;

    if (!lit(&p, end, "{\"success\":{\"resolved_addr\":\"") ||
        !plain_str(&p, end, &av, &an) || an >= sizeof(r->resolved_addr) ||
        !lit(&p, end, "\",\"open_ms\":"))
        return 0;
    if (!lit(&p, end, "null")) {
        const char *d = p;

        ms = 0;
        while (p < end && *p >= '0' && *p <= '9' && p - d < 18)
            ms = ms * 10 + (*p++ - '0');
        if (p == d || (*d == '0' && p - d > 1))
            return 0;
    }
    if (!lit(&p, end, "}}") || p != end)
        return 0;
    memset(r, 0, sizeof(*r));
    r->ok = 1;
    memcpy(r->resolved_addr, av, an);
    r->open_ms = ms > 0x7fffffffL ? 0x7fffffffL : (long)ms;
    return 1;
}

int
tun_reply_parse(const void *p, size_t n, struct tun_reply *r,
                struct sl_error *e)
{
    json_error_t je;
    json_t *root, *v, *addr, *ms;
    struct tun_reply tmp;
    int rc = SL_EINVAL;

    if (reply_compact(p, n, r))
        return 0;
    root = json_loadb(p, n, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return sl_error_set(e, SL_EINVAL, LAYER, "tunnel reply: column %d: "
                            "%s", je.column, je.text);
    memset(&tmp, 0, sizeof(tmp));
    tmp.open_ms = -1;
    if (!json_is_object(root) || json_object_size(root) != 1) {
        sl_error_set(e, SL_EINVAL, LAYER, "tunnel reply: expected an object "
                     "with one key, \"success\" or \"fail\"");
        goto out;
    }
    if ((v = json_object_get(root, "fail")) != NULL) {
        if (!json_is_string(v)) {
            sl_error_set(e, SL_EINVAL, LAYER, "tunnel reply: \"fail\" must "
                         "be a string");
            goto out;
        }
        snprintf(tmp.fail, sizeof(tmp.fail), "%s", json_string_value(v));
    } else if ((v = json_object_get(root, "success")) != NULL) {
        addr = json_object_get(v, "resolved_addr");
        ms = json_object_get(v, "open_ms");
        if (!json_is_object(v) || !json_is_string(addr)) {
            sl_error_set(e, SL_EINVAL, LAYER, "tunnel reply: \"success\" "
                         "needs a string \"resolved_addr\"");
            goto out;
        }
        if (ms != NULL && !json_is_null(ms) &&
            !(json_is_integer(ms) && json_integer_value(ms) >= 0)) {
            sl_error_set(e, SL_EINVAL, LAYER, "tunnel reply: \"open_ms\" "
                         "must be a non-negative integer or null");
            goto out;
        }
        tmp.ok = 1;
        snprintf(tmp.resolved_addr, sizeof(tmp.resolved_addr), "%s",
                 json_string_value(addr));
        if (json_is_integer(ms))
            tmp.open_ms = json_integer_value(ms) > 0x7fffffffL
                              ? 0x7fffffffL : (long)json_integer_value(ms);
    } else {
        sl_error_set(e, SL_EINVAL, LAYER, "tunnel reply: expected key "
                     "\"success\" or \"fail\"");
        goto out;
    }
    *r = tmp;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- B2eMetadata and ObfsProtocol --------------------------------------- */

enum obfs_variant {
    OBFS_SOSISTAB3 = 0,
    OBFS_NONE = 1,
    OBFS_CONNTEST = 2,
    OBFS_PLAINTLS = 3,
    OBFS_SOSISTAB3NEW = 4,
    OBFS_HEX = 5,
    OBFS_MEEKLIKE = 6
};

struct obfs_layer {
    const char *name;
    const unsigned char *cookie;   /* sosistab3 only */
    size_t cookie_len;
};

/* Appends text to stack; SL_ELIMIT when it does not fit. */
static int
put_text(char *stack, size_t len, size_t *pos, const char *t, size_t n,
         struct sl_error *e)
{
    if (*pos + n >= len)
        return sl_error_set(e, SL_ELIMIT, LAYER, "B2eMetadata: stack text "
                            "longer than %zu bytes", len ? len - 1 : 0);
    memcpy(stack + *pos, t, n);
    *pos += n;
    stack[*pos] = '\0';
    return 0;
}

static int
get_cookie(struct sc_dec *d, struct obfs_layer *ol, struct sl_error *e)
{
    if (sc_get_bytes(d, TUN_COOKIE_MAX, &ol->cookie, &ol->cookie_len) != 0)
        return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: sosistab3 "
                            "cookie at byte %zu: %s", d->off, d->err);
    if (!utf8_valid(ol->cookie, ol->cookie_len) ||
        memchr(ol->cookie, '\0', ol->cookie_len) != NULL)
        return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: sosistab3 "
                            "cookie is not UTF-8 text without NUL");
    return 0;
}

int
tun_obfs_to_stack(const void *stdcode, size_t n, char *stack, size_t len,
                  struct sl_error *e)
{
    struct sc_dec d;
    struct obfs_layer ol[TUN_OBFS_DEPTH];
    size_t nl = 0, pos = 0;
    uint64_t v, secs;
    int r, leaf = 0;

    if (len > 0)
        stack[0] = '\0';
    sc_dec_init(&d, stdcode, n);
    /* Each variant has at most one inner value, its last field, so the
     * nesting is a list read top layer first. */
    while (!leaf) {
        size_t at = d.off;

        if (sc_get_varint(&d, UINT32_MAX, &v) != 0)
            return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: protocol "
                                "at byte %zu: %s", d.off, d.err);
        if (v == OBFS_NONE)
            break;
        if (nl >= TUN_OBFS_DEPTH)
            return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: protocol "
                                "nested deeper than %d layers",
                                TUN_OBFS_DEPTH);
        memset(&ol[nl], 0, sizeof(ol[nl]));
        switch (v) {
        case OBFS_SOSISTAB3:
            leaf = 1;
            /* fall through */
        case OBFS_SOSISTAB3NEW:
            ol[nl].name = "sosistab3";
            if ((r = get_cookie(&d, &ol[nl], e)) != 0)
                return r;
            break;
        case OBFS_CONNTEST:
            ol[nl].name = "conntest";
            break;
        case OBFS_PLAINTLS:
            ol[nl].name = "tls";
            break;
        case OBFS_HEX:
            ol[nl].name = "hex";
            break;
        case OBFS_MEEKLIKE:
            return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: protocol "
                                "Meeklike (byte %zu) is not supported", at);
        default:
            return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: unknown "
                                "protocol variant %llu at byte %zu",
                                (unsigned long long)v, at);
        }
        nl++;
    }
    if (sc_get_varint(&d, UINT64_MAX, &secs) != 0 ||
        sc_get_varint(&d, UINT32_MAX, &v) != 0)
        return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: expiry at "
                            "byte %zu: %s", d.off, d.err);
    if (sc_dec_finish(&d) != 0)
        return sl_error_set(e, SL_EINVAL, LAYER, "B2eMetadata: %s after "
                            "byte %zu", d.err, d.off);
    /* Written bottom layer first. */
    for (size_t i = nl; i-- > 0;) {
        const char *sep = i + 1 < nl ? " | " : "";

        if ((r = put_text(stack, len, &pos, sep, strlen(sep), e)) != 0 ||
            (r = put_text(stack, len, &pos, ol[i].name, strlen(ol[i].name),
                          e)) != 0)
            goto fail;
        if (ol[i].cookie == NULL)
            continue;
        if ((r = put_text(stack, len, &pos, " cookie=\"", 9, e)) != 0)
            goto fail;
        for (size_t k = 0; k < ol[i].cookie_len; k++) {
            char ch = (char)ol[i].cookie[k];

            if ((ch == '"' || ch == '\\') &&
                (r = put_text(stack, len, &pos, "\\", 1, e)) != 0)
                goto fail;
            if ((r = put_text(stack, len, &pos, &ch, 1, e)) != 0)
                goto fail;
        }
        if ((r = put_text(stack, len, &pos, "\"", 1, e)) != 0)
            goto fail;
    }
    return 0;
fail:
    if (len > 0)
        stack[0] = '\0';
    return r;
}

int
tun_b2e_meta(const char *stack_text, uint64_t expiry_secs, uint32_t nanos,
             struct sc_enc *out, struct sl_error *e)
{
    struct core_stack_spec sp = { 0 };
    size_t pos = 0;
    int r = 0;
    const char *t = stack_text;

    while (*t == ' ' || *t == '\t')
        t++;
    /* "none" (prototest's word) or nothing: raw tcp. */
    if (strncmp(t, "none", 4) == 0 && strspn(t + 4, " \t") == strlen(t + 4))
        t += strlen(t);
    if (*t != '\0') {
        if ((r = core_stack_lex(t, &pos, &sp, e)) != 0)
            goto out;
        core_lex_skip_ws(t, &pos);
        if (t[pos] != '\0') {
            r = sl_error_set(e, SL_EINVAL, "", "protocol stack: column %zu: "
                             "unexpected '%c'", pos + 1, t[pos]);
            goto out;
        }
    }
    for (size_t i = 0; i < sp.n; i++) {
        const char *nm = sp.name[i];
        size_t nopt = sl_opts_count(sp.opts[i]);

        if (strcmp(nm, "sosistab3") == 0) {
            const char *cookie = sl_opts_str(sp.opts[i], "cookie");

            if (cookie == NULL || nopt != 1) {
                r = sl_error_set(e, SL_EINVAL, "", "protocol stack layer %zu "
                                 "(sosistab3): give exactly one option, "
                                 "cookie=...", i + 1);
                goto out;
            }
            if (strlen(cookie) > TUN_COOKIE_MAX ||
                !utf8_valid((const unsigned char *)cookie, strlen(cookie))) {
                r = sl_error_set(e, SL_EINVAL, "", "protocol stack layer %zu "
                                 "(sosistab3): the cookie must be UTF-8 of "
                                 "at most %d bytes", i + 1, TUN_COOKIE_MAX);
                goto out;
            }
        } else if (strcmp(nm, "conntest") == 0 || strcmp(nm, "tls") == 0 ||
                   strcmp(nm, "hex") == 0) {
            if (nopt != 0) {
                r = sl_error_set(e, SL_EINVAL, "", "protocol stack layer %zu "
                                 "(%s): option '%s' cannot be carried in "
                                 "B2eMetadata; the exit runs %s with its "
                                 "defaults", i + 1, nm,
                                 sl_opts_key_at(sp.opts[i], 0), nm);
                goto out;
            }
        } else if (strcmp(nm, "tcp") == 0) {
            r = sl_error_set(e, SL_EINVAL, "", "protocol stack layer %zu "
                             "(tcp): leave tcp out; the protocol is what "
                             "the client runs above tcp", i + 1);
            goto out;
        } else {
            r = sl_error_set(e, SL_EINVAL, "", "protocol stack layer %zu "
                             "(%s): not expressible as a Geph ObfsProtocol "
                             "(sosistab3, conntest, tls and hex are)", i + 1,
                             nm);
            goto out;
        }
    }
    for (size_t i = sp.n; i-- > 0;) {
        const char *nm = sp.name[i];

        if (strcmp(nm, "sosistab3") == 0) {
            const char *cookie = sl_opts_str(sp.opts[i], "cookie");

            sc_put_varint(out, OBFS_SOSISTAB3NEW);
            sc_put_bytes(out, cookie, strlen(cookie));
        } else if (strcmp(nm, "conntest") == 0) {
            sc_put_varint(out, OBFS_CONNTEST);
        } else if (strcmp(nm, "tls") == 0) {
            sc_put_varint(out, OBFS_PLAINTLS);
        } else {
            sc_put_varint(out, OBFS_HEX);
        }
    }
    sc_put_varint(out, OBFS_NONE);
    sc_put_varint(out, expiry_secs);
    sc_put_varint(out, nanos);
    if (out->failed)
        r = sl_error_set(e, SL_ENOMEM, LAYER, "B2eMetadata: encoding failed "
                         "(out of memory or over the encoder's bound)");
out:
    core_stack_spec_free(&sp);
    return r;
}
