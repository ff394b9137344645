/*
 * inbound-http.h - the head of an HTTP/1.x proxy request as a pure
 * function over bytes, for the CONNECT method (RFC 9110 §9.3.6).
 *
 * The head is the request line and the header fields up to the empty
 * line.  It is bounded by HTTP_HEAD_MAX bytes; lines may end in CRLF or a
 * bare LF (RFC 9112 §2.2).  Nothing is allocated, nothing calls back.
 */
#ifndef SILLAD_ROLES_INBOUND_HTTP_H
#define SILLAD_ROLES_INBOUND_HTTP_H

#include <stddef.h>

#include "sillad/plugin.h"

#define HTTP_HEAD_MAX 8192

struct http_req {
    char method[24];
    /* CONNECT: the authority "host:port" split; host without brackets. */
    char host[256];
    char port[6];
    char target[512];           /* the request target as sent (truncated) */
    int minor;                  /* HTTP/1.<minor> */
    int is_connect;
    /* "Proxy-Authorization: Basic <b64>": the decoded "user:pass", or ""
     * when absent or not Basic. */
    char basic[512];
};

/*
 * Parses the head at the start of buf.  Returns the length of the head
 * (> 0, up to and including the empty line) with *r filled; 0 when the
 * head is not complete yet and n < HTTP_HEAD_MAX; -1 with e set (layer
 * "http") and *status the status to answer with: 400 for a malformed
 * head, 431 for one longer than HTTP_HEAD_MAX, 505 for a version other
 * than HTTP/1.0 or 1.1.  For a method other than CONNECT the head still
 * parses (is_connect = 0, host and port empty): the caller answers 405.
 * A CONNECT whose target is not "host:port" with a port 1..65535 is -1
 * with 400.
 */
int http_head_parse(const void *buf, size_t n, struct http_req *r,
                    int *status, struct sl_error *e);

/* The reason phrase for the statuses the proxy sends. */
const char *http_reason(int status);

#endif /* SILLAD_ROLES_INBOUND_HTTP_H */
