/*
 * inbound-socks5.h - the SOCKS5 server side as pure functions over bytes:
 * the greeting and method choice (RFC 1928 §3), username/password
 * authentication (RFC 1929) and the CONNECT request (RFC 1928 §4), plus
 * the replies.
 *
 * Every parser takes the bytes received so far and returns the number of
 * bytes that make up one complete message (> 0), 0 when more bytes are
 * needed (never more than S5_MSG_MAX in all), or -1 when the bytes cannot
 * be a valid message; then e says why (layer "socks5") and, for requests,
 * *rep is the reply code to send before closing.  Nothing is allocated,
 * nothing calls back, outputs are untouched unless the result is > 0.
 */
#ifndef SILLAD_ROLES_INBOUND_SOCKS5_H
#define SILLAD_ROLES_INBOUND_SOCKS5_H

#include <stddef.h>
#include <stdint.h>

#include "sillad/plugin.h"

/* Longest message of the exchange: an RFC 1929 request with a 255-byte
 * user name and a 255-byte password (a request with a 255-byte name is
 * 262). */
#define S5_MSG_MAX 513

#define S5_VERSION 5
#define S5_AUTH_VERSION 1

/* Methods (RFC 1928 §3). */
#define S5_METHOD_NONE 0x00
#define S5_METHOD_USERPASS 0x02
#define S5_METHOD_REFUSED 0xff

/* Reply codes (RFC 1928 §6). */
#define S5_REP_OK 0x00
#define S5_REP_FAILURE 0x01
#define S5_REP_POLICY 0x02
#define S5_REP_NETUNREACH 0x03
#define S5_REP_HOSTUNREACH 0x04
#define S5_REP_REFUSED 0x05
#define S5_REP_TTL 0x06
#define S5_REP_CMD 0x07
#define S5_REP_ATYP 0x08

/*
 * The greeting: VER NMETHODS METHODS.  want_auth says whether the server
 * requires username/password; *method gets the method to answer with
 * (S5_METHOD_REFUSED when the client offers none that fits, which is not
 * a parse error: the server answers it, then closes).
 */
int s5_greeting_parse(const void *buf, size_t n, int want_auth,
                      uint8_t *method, struct sl_error *e);

/* RFC 1929: VER(1) ULEN UNAME PLEN PASSWD.  user and pass get the texts,
 * NUL-terminated (a NUL inside either is refused). */
struct s5_auth {
    char user[256];
    char pass[256];
};
int s5_auth_parse(const void *buf, size_t n, struct s5_auth *a,
                  struct sl_error *e);

/* The request: VER CMD RSV ATYP DST.ADDR DST.PORT.  Only CONNECT is
 * accepted.  host is the text form: dotted IPv4, IPv6 without brackets
 * ("2001:db8::1"), or the domain name (printable ASCII without blanks,
 * ':', '[' or ']'); port is 1..65535.  atyp keeps the address type. */
struct s5_request {
    uint8_t atyp;           /* 1 IPv4, 3 name, 4 IPv6 */
    char host[256];
    uint16_t port;
};
int s5_request_parse(const void *buf, size_t n, struct s5_request *r,
                     uint8_t *rep, struct sl_error *e);

/* The 2-byte method answer, the 2-byte RFC 1929 status (0 = success) and
 * the 10-byte reply (bound address 0.0.0.0:0).  Return the length. */
size_t s5_method_reply(uint8_t method, uint8_t out[2]);
size_t s5_auth_reply(int ok, uint8_t out[2]);
size_t s5_reply(uint8_t rep, uint8_t out[10]);

/* The reply code for an exit's failure text (the TUN_FAIL_* prefixes of
 * tunnel.h; any other text is a general failure). */
uint8_t s5_rep_for_fail(const char *why);

#endif /* SILLAD_ROLES_INBOUND_SOCKS5_H */
