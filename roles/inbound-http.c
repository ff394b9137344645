/* inbound-http.c - the head of an HTTP/1.x proxy request over bytes. */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "inbound-http.h"
#include "sillad.h"

#define LAYER "http"

static int
fail(struct sl_error *e, int *status, int code, const char *what)
{
    *status = code;
    sl_error_set(e, SL_EPROTO, LAYER, "%s", what);
    return -1;
}

/* RFC 9110 §5.6.2 tchar. */
static int
is_tchar(unsigned char c)
{
    return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int
b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes standard base64 (padding optional) into out as a C string;
 * -1 on a bad character, a NUL in the result or no room. */
static int
b64_decode(const char *s, size_t n, char *out, size_t outlen)
{
    unsigned acc = 0;
    int bits = 0;
    size_t k = 0;

    while (n > 0 && s[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++) {
        int v = b64_val((unsigned char)s[i]);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (k + 1 >= outlen)
                return -1;
            out[k] = (char)((acc >> bits) & 0xff);
            if (out[k] == '\0')
                return -1;
            k++;
        }
    }
    out[k] = '\0';
    return 0;
}

/* Splits a CONNECT authority "host:port" / "[v6]:port". */
static int
parse_authority(const char *t, size_t n, struct http_req *r)
{
    const char *colon, *h = t;
    size_t hl;
    unsigned long port = 0;

    if (n == 0)
        return -1;
    if (t[0] == '[') {
        const char *close = memchr(t, ']', n);

        if (close == NULL || close + 1 >= t + n || close[1] != ':')
            return -1;
        h = t + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
        for (size_t i = 0; i < hl; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
                return -1;
        if (hl < 2)
            return -1;
    } else {
        colon = NULL;
        for (const char *c = t; c < t + n; c++)
            if (*c == ':')
                colon = c;
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - t);
        for (size_t i = 0; i < hl; i++) {
            unsigned char c = (unsigned char)h[i];

            if (c <= 0x20 || c >= 0x7f || strchr(":[]/@?#\\", c) != NULL)
                return -1;
        }
    }
    if (hl == 0 || hl >= sizeof(r->host))
        return -1;
    {
        const char *p = colon + 1;
        size_t pl = (size_t)(t + n - p);

        if (pl == 0 || pl > 5)
            return -1;
        for (size_t i = 0; i < pl; i++) {
            if (!isdigit((unsigned char)p[i]))
                return -1;
            port = port * 10 + (unsigned long)(p[i] - '0');
        }
        if (port == 0 || port > 65535)
            return -1;
        memcpy(r->host, h, hl);
        r->host[hl] = '\0';
        snprintf(r->port, sizeof(r->port), "%lu", port);
    }
    return 0;
}

/* The length of the line at s (without its CRLF or LF), or -1 when no
 * line end is in [s, end). *next gets the start of the next line. */
static long
line_len(const char *s, const char *end, const char **next)
{
    const char *nl = memchr(s, '\n', (size_t)(end - s));

    if (nl == NULL)
        return -1;
    *next = nl + 1;
    if (nl > s && nl[-1] == '\r')
        nl--;
    return (long)(nl - s);
}

int
http_head_parse(const void *buf, size_t n, struct http_req *r, int *status,
                struct sl_error *e)
{
    const char *s = buf, *end, *p, *next = NULL, *sp1, *sp2;
    size_t lim = n < HTTP_HEAD_MAX ? n : HTTP_HEAD_MAX;
    struct http_req q;
    long len;

    *status = 400;
    memset(&q, 0, sizeof(q));
    /* Tolerate empty lines before the request line (RFC 9112 §2.2). */
    p = s;
    while (p < s + lim && (*p == '\r' || *p == '\n'))
        p++;
    /* Refuse what cannot be a request early, before 8 KiB arrive. */
    for (const char *c = p; c < s + lim && *c != ' '; c++)
        if (!is_tchar((unsigned char)*c))
            return fail(e, status, 400, "request line: the method is not "
                        "a token");
    /* Find the empty line that ends the head. */
    end = NULL;
    for (const char *c = p; c < s + lim; c++) {
        if (*c != '\n')
            continue;
        if (c + 1 < s + lim && c[1] == '\n') {
            end = c + 2;
            break;
        }
        if (c + 2 < s + lim && c[1] == '\r' && c[2] == '\n') {
            end = c + 3;
            break;
        }
    }
    if (end == NULL) {
        if (n >= HTTP_HEAD_MAX)
            return fail(e, status, 431, "request head longer than 8192 "
                        "bytes");
        return 0;
    }
    /* Request line: METHOD SP TARGET SP HTTP/1.x */
    len = line_len(p, end, &next);
    sp1 = memchr(p, ' ', (size_t)len);
    if (sp1 == NULL || sp1 == p)
        return fail(e, status, 400, "request line: no method");
    if ((size_t)(sp1 - p) >= sizeof(q.method))
        return fail(e, status, 400, "request line: method too long");
    memcpy(q.method, p, (size_t)(sp1 - p));
    sp2 = memchr(sp1 + 1, ' ', (size_t)(p + len - sp1 - 1));
    if (sp2 == NULL || sp2 == sp1 + 1)
        return fail(e, status, 400, "request line: no target");
    for (const char *c = sp1 + 1; c < sp2; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
            return fail(e, status, 400, "request line: bad byte in the "
                        "target");
    snprintf(q.target, sizeof(q.target), "%.*s", (int)(sp2 - sp1 - 1),
             sp1 + 1);
    if (p + len - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        !isdigit((unsigned char)sp2[8])) {
        if (p + len - sp2 - 1 >= 5 && memcmp(sp2 + 1, "HTTP/", 5) == 0)
            return fail(e, status, 505, "request line: only HTTP/1.0 and "
                        "HTTP/1.1 are supported");
        return fail(e, status, 400, "request line: no HTTP version");
    }
    q.minor = sp2[8] - '0';
    if (q.minor > 1)
        return fail(e, status, 505, "request line: only HTTP/1.0 and "
                    "HTTP/1.1 are supported");
    q.is_connect = strcmp(q.method, "CONNECT") == 0;
    if (q.is_connect &&
        parse_authority(sp1 + 1, (size_t)(sp2 - sp1 - 1), &q) != 0)
        return fail(e, status, 400, "CONNECT target is not host:port with "
                    "a port from 1 to 65535");
    /* Header fields. */
    for (p = next; p < end; p = next) {
        const char *colon, *v;
        size_t vl;

        len = line_len(p, end, &next);
        if (len == 0)
            break;
        if (*p == ' ' || *p == '\t')
            return fail(e, status, 400, "header: obsolete line folding");
        colon = memchr(p, ':', (size_t)len);
        if (colon == NULL || colon == p)
            return fail(e, status, 400, "header: no field name");
        for (const char *c = p; c < colon; c++)
            if (!is_tchar((unsigned char)*c))
                return fail(e, status, 400, "header: bad field name");
        v = colon + 1;
        while (v < p + len && (*v == ' ' || *v == '\t'))
            v++;
        vl = (size_t)(p + len - v);
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        if (colon - p == 19 && strncasecmp(p, "Proxy-Authorization", 19) == 0
            && vl > 6 && strncasecmp(v, "Basic ", 6) == 0) {
            const char *b = v + 6;
            size_t bl = vl - 6;

            while (bl > 0 && *b == ' ') {
                b++;
                bl--;
            }
            if (b64_decode(b, bl, q.basic, sizeof(q.basic)) != 0)
                return fail(e, status, 400, "header: Proxy-Authorization "
                            "is not valid base64");
        }
    }
    *r = q;
    *status = 0;
    return (int)(end - s);
}

const char *
http_reason(int status)
{
    switch (status) {
    case 200: return "Connection established";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 405: return "Method Not Allowed";
    case 407: return "Proxy Authentication Required";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}
