/*
 * tunnel.h - the bytes between a client, a bridge and an exit
 * (sillad-and-stacks.md Part B): length-prefixed messages (§5.2), tunnel
 * commands (§7.3), the exit's reply (§7.4), and B2eMetadata with its
 * ObfsProtocol (§3.1, §8.2) <-> sillad stack text.
 *
 * Nothing here does I/O beyond the evbuffers it is handed, keeps global
 * state or calls back.  Every parser bounds what it reads and reports the
 * fault in the caller's struct sl_error (layer "tunnel").
 */
#ifndef SILLAD_ROLES_TUNNEL_H
#define SILLAD_ROLES_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "sillad/plugin.h"
#include "stdcode.h"

/* Largest payload of a length-prefixed message (read_prepend_length). */
#define TUN_MSG_MAX 100000

/*
 * Takes one message (big-endian u32 length, then that many bytes) off the
 * front of in.  Returns 1 with the payload in *p (malloc'd, the caller
 * frees it; never NULL, even for an empty payload) and its length in *n;
 * 0 when the whole message has not arrived yet (in is untouched); -1 when
 * the length is above TUN_MSG_MAX (e set, in untouched) or memory ran out.
 */
int tun_msg_take(struct evbuffer *in, unsigned char **p, size_t *n,
                 struct sl_error *e);
/* Appends the u32 length and the payload to out.  0, or -1 when n is above
 * TUN_MSG_MAX or out cannot grow (out is then unchanged). */
int tun_msg_put(struct evbuffer *out, const void *p, size_t n);

enum tun_proto { TUN_TCP = 0, TUN_UDP = 1 };

/* A parsed tunnel command.  host is the name or address without brackets
 * ("example.com", "93.184.215.14", "2001:db8::1"); port is 1..65535 in
 * decimal.  rich is 1 for the JSON form, which gets a reply. */
struct tun_cmd {
    enum tun_proto proto;
    int rich;
    char host[256];
    char port[6];
};

/*
 * Parses the SYN metadata of a tunnel stream (§7.3):
 *   {"protocol":"tcp","host":"example.com:443"}   rich (starts with '{')
 *   udp$8.8.8.8:53                                 legacy, split at the first $
 *   example.com:443                                legacy bare, tcp
 * The host part is split at its last ':'; "[v6]:port" loses its brackets.
 * Returns 0 with *c filled; SL_ENOTSUP for a well-formed rich command
 * whose protocol is neither tcp nor udp (*c is then filled, with proto
 * TUN_TCP, so that the exit can answer with a failure); SL_EINVAL for
 * anything else, which the exit drops without a reply.  e gets the reason.
 * *c is untouched on SL_EINVAL.
 */
int tun_cmd_parse(const void *meta, size_t n, struct tun_cmd *c,
                  struct sl_error *e);

/* The rich command {"protocol":PROTO,"host":"HOST:PORT"} as compact JSON
 * (host in brackets when it contains a ':').  malloc'd; NULL when out of
 * memory or when host or port is empty or longer than its field. */
char *tun_cmd_rich(const char *proto, const char *host, const char *port);

/* The exit's reply (§7.4).  open_ms is -1 for null. */
struct tun_reply {
    int ok;
    char resolved_addr[64];
    long open_ms;
    char fail[512];
};

/* {"success":{"resolved_addr":ADDR,"open_ms":MS}} (MS null when
 * open_ms < 0) and {"fail":WHY}, compact JSON, malloc'd (NULL when out of
 * memory or a text is not UTF-8). */
char *tun_reply_ok(const char *resolved_addr, long open_ms);
char *tun_reply_fail(const char *why);
/* Parses a reply payload (the JSON inside the length prefix).  Unknown
 * fields are ignored and a missing open_ms is null, as serde does; texts
 * longer than the fields are truncated.  0, or SL_EINVAL with e set (the
 * client then treats the whole session as broken, §7.4). */
int tun_reply_parse(const void *p, size_t n, struct tun_reply *r,
                    struct sl_error *e);

/*
 * Failure texts the sillad exit sends, so that a sillad client can map
 * them to SOCKS5 reply codes (a Geph exit's other texts map to "general
 * failure").  The exit may append ": details" after the fixed text; the
 * client matches prefixes.
 */
#define TUN_FAIL_POLICY   "destination refused by exit policy"   /* 0x02 */
#define TUN_FAIL_REFUSED  "connection refused"                   /* 0x05 */
#define TUN_FAIL_UNREACH  "host unreachable"                     /* 0x04 */
#define TUN_FAIL_NETUNR   "network unreachable"                  /* 0x03 */
#define TUN_FAIL_TIMEOUT  "connection timed out"                 /* 0x06 */
#define TUN_FAIL_DNS      "name resolution failed"               /* 0x04 */

/* Bounds on what a B2eMetadata may carry. */
#define TUN_OBFS_DEPTH 16        /* nested ObfsProtocol values */
#define TUN_COOKIE_MAX 1024      /* bytes of one cookie string */

/*
 * Decodes a stdcode B2eMetadata{protocol, expiry} (§8.2, §10.1) and
 * writes its ObfsProtocol as the sillad stack that runs above the b2e
 * stream, bottom to top, without the tcp base the protocol implies:
 *   ConnTest(Sosistab3New("c", None))  ->  sosistab3 cookie="c" | conntest
 *   Sosistab3("c") (legacy leaf)       ->  sosistab3 cookie="c"
 *   PlainTls(x) -> x | tls     Hex(x) -> x | hex     None -> "" (empty)
 * Meeklike is refused (no layer implements it).  Cookies are written
 * double-quoted with \\ and \" escaped, so any UTF-8 text without NUL
 * survives the stack grammar.  The expiry is decoded (and so checked) but
 * not used, like the Rust exit.  Returns 0, or SL_EINVAL (bad encoding,
 * unknown variant, over TUN_OBFS_DEPTH, a cookie that is not UTF-8 or
 * holds NUL or is over TUN_COOKIE_MAX, trailing bytes) or SL_ELIMIT
 * (stack longer than len) with e set; stack is "" on failure.
 */
int tun_obfs_to_stack(const void *stdcode, size_t n, char *stack, size_t len,
                      struct sl_error *e);

/*
 * The reverse, for the bridge: stack_text is what the client speaks above
 * tcp ("sosistab3 cookie=X | conntest", "tls | sosistab3 cookie=X |
 * conntest", "" or "none" for raw tcp), layers bottom to top, each of
 * sosistab3 (exactly one option, cookie), conntest, tls or hex (no
 * options: the exit runs each with its defaults).  Appends the stdcode
 * B2eMetadata{protocol, expiry = secs + nanos} to out (sosistab3 becomes
 * Sosistab3New).  0, or SL_EINVAL with e naming the layer and fault
 * (or SL_ENOMEM when out failed).
 */
int tun_b2e_meta(const char *stack_text, uint64_t expiry_secs, uint32_t nanos,
                 struct sc_enc *out, struct sl_error *e);

#endif /* SILLAD_ROLES_TUNNEL_H */
