/* inbound-socks5.c - SOCKS5 messages (RFC 1928, RFC 1929) over bytes. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>

#include "inbound-socks5.h"
#include "sillad.h"
#include "tunnel.h"

#define LAYER "socks5"

static int
bad(struct sl_error *e, const char *what)
{
    sl_error_set(e, SL_EPROTO, LAYER, "%s", what);
    return -1;
}

int
s5_greeting_parse(const void *buf, size_t n, int want_auth, uint8_t *method,
                  struct sl_error *e)
{
    const uint8_t *p = buf;
    size_t need;
    uint8_t want = want_auth ? S5_METHOD_USERPASS : S5_METHOD_NONE;

    if (n < 1)
        return 0;
    if (p[0] != S5_VERSION) {
        sl_error_set(e, SL_EPROTO, LAYER, "greeting: version %u, not 5",
                     p[0]);
        return -1;
    }
    if (n < 2)
        return 0;
    if (p[1] == 0)
        return bad(e, "greeting: no methods offered");
    need = 2 + (size_t)p[1];
    if (n < need)
        return 0;
    *method = S5_METHOD_REFUSED;
    for (size_t i = 2; i < need; i++)
        if (p[i] == want)
            *method = want;
    return (int)need;
}

int
s5_auth_parse(const void *buf, size_t n, struct s5_auth *a,
              struct sl_error *e)
{
    const uint8_t *p = buf;
    size_t ulen, plen;

    if (n < 1)
        return 0;
    if (p[0] != S5_AUTH_VERSION) {
        sl_error_set(e, SL_EPROTO, LAYER, "authentication: version %u, "
                     "not 1", p[0]);
        return -1;
    }
    if (n < 2)
        return 0;
    ulen = p[1];
    if (ulen == 0)
        return bad(e, "authentication: empty user name");
    if (n < 3 + ulen)
        return 0;
    plen = p[2 + ulen];
    if (n < 3 + ulen + plen)
        return 0;
    if (memchr(p + 2, 0, ulen) != NULL ||
        memchr(p + 3 + ulen, 0, plen) != NULL)
        return bad(e, "authentication: NUL in user name or password");
    memcpy(a->user, p + 2, ulen);
    a->user[ulen] = '\0';
    memcpy(a->pass, p + 3 + ulen, plen);
    a->pass[plen] = '\0';
    return (int)(3 + ulen + plen);
}

static int
name_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == ':' || s[i] == '[' ||
            s[i] == ']')
            return 0;
    return 1;
}

int
s5_request_parse(const void *buf, size_t n, struct s5_request *r,
                 uint8_t *rep, struct sl_error *e)
{
    const uint8_t *p = buf;
    size_t alen, need;
    char host[256];

    *rep = S5_REP_FAILURE;
    if (n < 1)
        return 0;
    if (p[0] != S5_VERSION) {
        sl_error_set(e, SL_EPROTO, LAYER, "request: version %u, not 5",
                     p[0]);
        return -1;
    }
    if (n < 2)
        return 0;
    if (p[1] != 1) {
        *rep = S5_REP_CMD;
        sl_error_set(e, SL_ENOTSUP, LAYER, "request: command %u is not "
                     "supported (only CONNECT)", p[1]);
        return -1;
    }
    if (n < 4)
        return 0;
    switch (p[3]) {
    case 1:
        alen = 4;
        need = 4 + alen + 2;
        break;
    case 4:
        alen = 16;
        need = 4 + alen + 2;
        break;
    case 3:
        if (n < 5)
            return 0;
        alen = p[4];
        if (alen == 0)
            return bad(e, "request: empty domain name");
        need = 5 + alen + 2;
        break;
    default:
        *rep = S5_REP_ATYP;
        sl_error_set(e, SL_ENOTSUP, LAYER, "request: address type %u is "
                     "not supported", p[3]);
        return -1;
    }
    if (n < need)
        return 0;
    if (p[3] == 1) {
        inet_ntop(AF_INET, p + 4, host, sizeof(host));
    } else if (p[3] == 4) {
        inet_ntop(AF_INET6, p + 4, host, sizeof(host));
    } else {
        if (!name_ok(p + 5, alen))
            return bad(e, "request: the domain name holds a byte that is "
                       "not printable ASCII, a blank, ':' or a bracket");
        memcpy(host, p + 5, alen);
        host[alen] = '\0';
    }
    if (p[need - 2] == 0 && p[need - 1] == 0)
        return bad(e, "request: port 0");
    r->atyp = p[3];
    memcpy(r->host, host, sizeof(host));
    r->port = (uint16_t)(p[need - 2] << 8 | p[need - 1]);
    *rep = S5_REP_OK;
    return (int)need;
}

size_t
s5_method_reply(uint8_t method, uint8_t out[2])
{
    out[0] = S5_VERSION;
    out[1] = method;
    return 2;
}

size_t
s5_auth_reply(int ok, uint8_t out[2])
{
    out[0] = S5_AUTH_VERSION;
    out[1] = ok ? 0 : 1;
    return 2;
}

size_t
s5_reply(uint8_t rep, uint8_t out[10])
{
    memset(out, 0, 10);
    out[0] = S5_VERSION;
    out[1] = rep;
    out[3] = 1;     /* IPv4 0.0.0.0:0: no meaningful bound address */
    return 10;
}

static int
starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

uint8_t
s5_rep_for_fail(const char *why)
{
    if (starts(why, TUN_FAIL_POLICY))
        return S5_REP_POLICY;
    if (starts(why, TUN_FAIL_REFUSED))
        return S5_REP_REFUSED;
    if (starts(why, TUN_FAIL_UNREACH) || starts(why, TUN_FAIL_DNS))
        return S5_REP_HOSTUNREACH;
    if (starts(why, TUN_FAIL_NETUNR))
        return S5_REP_NETUNREACH;
    if (starts(why, TUN_FAIL_TIMEOUT))
        return S5_REP_TTL;
    return S5_REP_FAILURE;
}
