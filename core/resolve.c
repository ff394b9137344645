/* resolve.c - asynchronous name resolution, one evdns_base per event_base. */
#include "config.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <event2/util.h>

#include "sillad.h"

struct resolver {
    struct event_base *base;
    struct evdns_base *dns;
    struct resolver *next;
};

/* Owned by the core, not by any layer: one resolver per event loop. */
static struct resolver *resolvers;

struct resolve_req {
    struct event_base *base;
    struct evdns_getaddrinfo_request *dreq;
    struct event *ev;
    sl_resolve_fn *cb;
    void *arg;
    struct evutil_addrinfo *ai;
    int err;
    char why[160];
    char host[256];
    unsigned canceled : 1;
    unsigned pending_dns : 1;
    unsigned in_start : 1;
};

static struct evdns_base *
dns_for(struct event_base *base)
{
    struct resolver *r;

    for (r = resolvers; r != NULL; r = r->next)
        if (r->base == base)
            return r->dns;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    /* Reads resolv.conf and /etc/hosts once per loop. */
    r->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (r->dns == NULL) {
        free(r);
        return NULL;
    }
    r->base = base;
    r->next = resolvers;
    resolvers = r;
    return r->dns;
}

void
sl_resolver_release(struct event_base *base)
{
    for (struct resolver **rp = &resolvers; *rp != NULL;
         rp = &(*rp)->next) {
        struct resolver *r = *rp;

        if (r->base == base) {
            *rp = r->next;
            evdns_base_free(r->dns, 1);
            free(r);
            return;
        }
    }
}

static void
finish(evutil_socket_t fd, short what, void *arg)
{
    struct resolve_req *rq = arg;

    (void)fd;
    (void)what;
    if (rq->canceled)
        rq->cb(SL_ECANCELED, "resolution cancelled", NULL, rq->arg);
    else
        rq->cb(rq->err, rq->why, rq->err == 0 ? rq->ai : NULL, rq->arg);
    if (rq->ai != NULL)
        evutil_freeaddrinfo(rq->ai);
    event_free(rq->ev);
    free(rq);
}

static void
dns_done(int result, struct evutil_addrinfo *res, void *arg)
{
    struct resolve_req *rq = arg;

    rq->pending_dns = 0;
    rq->dreq = NULL;
    if (result == 0) {
        rq->ai = res;
    } else {
        rq->err = SL_ERESOLVE;
        snprintf(rq->why, sizeof(rq->why), "cannot resolve '%.100s': %s",
                 rq->host, evutil_gai_strerror(result));
        if (res != NULL)
            evutil_freeaddrinfo(res);
    }
    /* Deliver from the loop, never from inside sl_host.resolve. */
    event_active(rq->ev, EV_TIMEOUT, 0);
}

void *
core_resolve(struct event_base *base, const char *host, const char *port,
             int family, sl_resolve_fn *cb, void *arg, struct sl_error *e)
{
    struct resolve_req *rq;
    struct evutil_addrinfo hints;
    struct evdns_base *dns;

    rq = calloc(1, sizeof(*rq));
    if (rq == NULL) {
        sl_error_set(e, SL_ENOMEM, "core", "out of memory");
        return NULL;
    }
    rq->base = base;
    rq->cb = cb;
    rq->arg = arg;
    snprintf(rq->host, sizeof(rq->host), "%s", host);
    rq->ev = event_new(base, -1, 0, finish, rq);
    if (rq->ev == NULL) {
        free(rq);
        sl_error_set(e, SL_ENOMEM, "core", "out of memory");
        return NULL;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* Numeric addresses need no resolver.  No AI_ADDRCONFIG here: a
     * literal names one address whatever the interfaces, and glibc would
     * answer that flag with two netlink dumps on every call. */
    hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV;
    if (evutil_getaddrinfo(host, port, &hints, &rq->ai) == 0) {
        event_active(rq->ev, EV_TIMEOUT, 0);
        return rq;
    }
    rq->ai = NULL;
    dns = dns_for(base);
    if (dns == NULL) {
        rq->err = SL_ERESOLVE;
        snprintf(rq->why, sizeof(rq->why),
                 "cannot resolve '%.100s': no resolver", host);
        event_active(rq->ev, EV_TIMEOUT, 0);
        return rq;
    }
    hints.ai_flags = EVUTIL_AI_NUMERICSERV | EVUTIL_AI_ADDRCONFIG;
    rq->pending_dns = 1;
    rq->dreq = evdns_getaddrinfo(dns, host, port, &hints, dns_done, rq);
    /* dns_done may already have run (hosts file); it activated ev. */
    return rq;
}

void
core_resolve_cancel(void *req)
{
    struct resolve_req *rq = req;

    rq->canceled = 1;
    if (rq->pending_dns && rq->dreq != NULL)
        evdns_getaddrinfo_cancel(rq->dreq);   /* calls dns_done */
    else
        event_active(rq->ev, EV_TIMEOUT, 0);
}
