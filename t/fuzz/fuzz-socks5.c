/* fuzz-socks5.c - libFuzzer target for sillad-client's SOCKS5 parsers
 * (roles/inbound-socks5.c).
 *
 * The first byte chooses whether the server asks for username/password;
 * the rest is fed through the exchange the way sillad-client does:
 * greeting, then (if chosen) authentication, then the request, each parser
 * called on every prefix of what is left.  Checked: a parser never takes
 * more than it was given or more than S5_MSG_MAX, a prefix of a complete
 * message is never complete or bad, results are NUL-terminated, a
 * request's port is never 0 and a failed request names a reply code.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "inbound-socks5.h"
#include "sillad.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Calls parse on every prefix of p[0..n); returns the result for n and
 * checks that shorter prefixes only ever said "need more". */
#define ALL_PREFIXES(res, n, call)                                         \
    do {                                                                   \
        for (size_t k_ = 0; k_ <= (n); k_++) {                             \
            size_t len_ = k_;                                              \
            int r_;                                                        \
            sl_error_clear(&e);                                            \
            r_ = call;                                                     \
            if (r_ > (int)len_ || r_ > S5_MSG_MAX)                         \
                abort();                                                   \
            if (r_ != 0) {                                                 \
                (res) = r_;                                                \
                break;                                                     \
            }                                                              \
            (res) = 0;                                                     \
        }                                                                  \
    } while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sl_error e;
    struct s5_auth a;
    struct s5_request q;
    uint8_t method = 0, rep = 0;
    int want_auth, r = 0;
    const uint8_t *p;
    size_t n;

    if (size < 1 || size > 4 * S5_MSG_MAX)
        return 0;
    want_auth = data[0] & 1;
    p = data + 1;
    n = size - 1;

    ALL_PREFIXES(r, n, s5_greeting_parse(p, len_, want_auth, &method, &e));
    if (r <= 0)
        return 0;
    if (method != S5_METHOD_REFUSED &&
        method != (want_auth ? S5_METHOD_USERPASS : S5_METHOD_NONE))
        abort();
    if (method == S5_METHOD_REFUSED)
        return 0;
    p += r;
    n -= (size_t)r;
    if (want_auth) {
        ALL_PREFIXES(r, n, s5_auth_parse(p, len_, &a, &e));
        if (r <= 0)
            return 0;
        if (strlen(a.user) == 0 || strlen(a.user) > 255 ||
            strlen(a.pass) > 255)
            abort();
        p += r;
        n -= (size_t)r;
    }
    ALL_PREFIXES(r, n, s5_request_parse(p, len_, &q, &rep, &e));
    if (r > 0) {
        if (rep != S5_REP_OK || q.port == 0 || strlen(q.host) == 0 ||
            strlen(q.host) > 255)
            abort();
    } else if (r < 0) {
        if (rep == S5_REP_OK || e.code == 0)
            abort();
    }
    return 0;
}
