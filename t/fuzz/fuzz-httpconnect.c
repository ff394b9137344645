/* fuzz-httpconnect.c - libFuzzer target for sillad-client's HTTP proxy
 * request head parser (roles/inbound-http.c).
 *
 * Checked: the head length is never more than the input or HTTP_HEAD_MAX;
 * "need more" only below HTTP_HEAD_MAX; a complete head is complete at
 * exactly its own length too (and needs more one byte short of it); a
 * failure names a status and a reason; a CONNECT names a host and a port
 * from 1 to 65535.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "inbound-http.h"
#include "sillad.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_req q, q2;
    struct sl_error e;
    int st = 0, r, r2;

    if (size > HTTP_HEAD_MAX + 1024)
        return 0;
    sl_error_clear(&e);
    r = http_head_parse(data, size, &q, &st, &e);
    if (r > (int)size || r > HTTP_HEAD_MAX)
        abort();
    if (r == 0 && size >= HTTP_HEAD_MAX)
        abort();
    if (r < 0 && (st < 400 || e.code == 0))
        abort();
    if (r <= 0)
        return 0;
    if (q.is_connect) {
        long port = strtol(q.port, NULL, 10);

        if (q.host[0] == '\0' || port < 1 || port > 65535)
            abort();
    }
    sl_error_clear(&e);
    r2 = http_head_parse(data, (size_t)r, &q2, &st, &e);
    if (r2 != r || memcmp(&q, &q2, sizeof(q)) != 0)
        abort();
    sl_error_clear(&e);
    r2 = http_head_parse(data, (size_t)r - 1, &q2, &st, &e);
    if (r2 > 0)
        abort();
    return 0;
}
