/* fuzz-tunnel.c - libFuzzer target for the role protocol parsers of
 * roles/tunnel.c: tunnel commands, replies, B2eMetadata and the
 * length-prefixed message reader.  B2eMetadata that decodes must encode
 * back (from its stack text) to a value that decodes to the same text. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "sillad.h"
#include "tunnel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sl_error e;
    struct tun_cmd c;
    struct tun_reply r;
    char st[2048], again[2048];
    struct evbuffer *b;
    unsigned char *p;
    size_t n;

    sl_error_clear(&e);
    if (tun_cmd_parse(data, size, &c, &e) == 0) {
        char *j = tun_cmd_rich(c.proto == TUN_UDP ? "udp" : "tcp", c.host,
                               c.port);
        struct tun_cmd c2;

        /* What parsed re-encodes to a rich command with the same parts. */
        if (j == NULL || tun_cmd_parse(j, strlen(j), &c2, &e) != 0 ||
            strcmp(c2.host, c.host) != 0 || strcmp(c2.port, c.port) != 0 ||
            c2.proto != c.proto)
            abort();
        free(j);
    }
    sl_error_clear(&e);
    tun_reply_parse(data, size, &r, &e);
    sl_error_clear(&e);
    if (tun_obfs_to_stack(data, size, st, sizeof(st), &e) == 0) {
        struct sc_enc enc;

        sc_enc_init(&enc, 1 << 20);
        if (tun_b2e_meta(st, 1, 2, &enc, &e) != 0 ||
            tun_obfs_to_stack(enc.buf, enc.len, again, sizeof(again),
                              &e) != 0 ||
            strcmp(st, again) != 0)
            abort();
        sc_enc_free(&enc);
    }
    /* The stream reader, fed in two pieces. */
    b = evbuffer_new();
    if (b == NULL)
        return 0;
    evbuffer_add(b, data, size / 2);
    while (tun_msg_take(b, &p, &n, &e) == 1)
        free(p);
    evbuffer_add(b, data + size / 2, size - size / 2);
    sl_error_clear(&e);
    while (tun_msg_take(b, &p, &n, &e) == 1) {
        if (n > TUN_MSG_MAX)
            abort();
        free(p);
    }
    evbuffer_free(b);
    return 0;
}
