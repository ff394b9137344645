/* sillad-client - SOCKS5 and HTTP CONNECT proxy carrying each connection
 * as a tunnel stream of a pooled session to an exit.
 *
 *   sillad-client -c FILE [--check] [--addr-file FILE] [-v] [-q]
 *
 * Sessions (sillad-and-stacks.md §4, §7).  The client keeps `sessions`
 * slots; each dials one of the `exits` routes (slot i starts with route
 * i mod n and moves to the next route after a failed dial), opens the
 * session-metadata stream first (§7.1: SYN with the JSON of
 * session_metadata, then FIN) and then carries tunnels.  A new tunnel goes
 * to the live session with the fewest opens waiting for their reply,
 * starting from a rotating index.  A session that dies, or whose tunnel
 * reply times out or cannot be parsed (§7.4), is freed and redialed after
 * a back-off that starts at 0.5 s and doubles up to 30 s (reset by a
 * successful dial).
 *
 * Tunnels.  Each inbound connection speaks SOCKS5 or HTTP CONNECT to us
 * (parsers in inbound-socks5.c and inbound-http.c); we open a stream with
 * the rich tunnel command (§7.3), wait at most tunnel_timeout for the
 * length-prefixed reply, answer the client and relay bytes (relay.c).
 * With no live session a request waits (at most tunnel_timeout) while a
 * session is being dialed, and one waiting slot is dialed at once without
 * its back-off; when no dial is in progress it fails at once.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>

#include "exit-conf.h"
#include "inbound-http.h"
#include "inbound-socks5.h"
#include "relay.h"
#include "sillad.h"
#include "tunnel.h"

#define PROG "sillad-client"
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define HANDSHAKE_MS 30000      /* a client must name its destination */
#define MAX_SESSIONS 64
#define STOP_DRAIN_MS 2000

/* ---- settings ------------------------------------------------------------ */

struct settings {
    char *socks5_listen;        /* NULL: no SOCKS5 listener */
    char *http_listen;          /* NULL: no HTTP listener */
    int sessions;
    char *meta_json;            /* compact JSON of session_metadata */
    json_t *users;              /* socks5_users object, or NULL */
    int64_t tunnel_timeout_ms;
    int64_t idle_timeout_ms;
    char *pool_key;             /* exits + sessions + metadata, compared
                                   on reload */
    struct sl_dialer **routes;
    size_t nroutes;
};

static void
settings_free(struct settings *s)
{
    free(s->socks5_listen);
    free(s->http_listen);
    free(s->meta_json);
    free(s->pool_key);
    if (s->users != NULL)
        json_decref(s->users);
    for (size_t i = 0; i < s->nroutes; i++)
        sl_dialer_free(s->routes[i]);
    free(s->routes);
    memset(s, 0, sizeof(*s));
}

static const char *const client_keys[] = {
    "socks5_listen", "http_listen", "exits", "sessions", "session_metadata",
    "socks5_users", "tunnel_timeout", "idle_timeout", NULL,
};

static int
where_err(struct sl_config *cfg, const char *ptr, struct sl_error *e,
          const char *fmt, const char *key)
{
    char where[512], text[300];

    snprintf(text, sizeof(text), fmt, key);
    return sl_error_set(e, SL_EINVAL, "", "%s: %s",
                        sl_config_where(cfg, ptr, where, sizeof(where)),
                        text);
}

/* An address for a listener: a string "host:port". */
static int
get_listen(struct sl_config *cfg, const char *key, const char *dflt,
           char **out, struct sl_error *e)
{
    char ptr[64], host[256], port[16];
    json_t *v;
    const char *text;

    snprintf(ptr, sizeof(ptr), "/%s", key);
    v = sl_config_get(cfg, ptr);
    if (v == NULL || json_is_null(v)) {
        text = v == NULL ? dflt : NULL;
    } else if (json_is_string(v)) {
        text = json_string_value(v);
        if (text[0] == '\0')
            text = NULL;
    } else {
        return where_err(cfg, ptr, e, "\"%s\" must be an address "
                         "\"host:port\" or null", key);
    }
    if (text != NULL &&
        sl_parse_addr(text, host, sizeof(host), port, sizeof(port)) != 0)
        return where_err(cfg, ptr, e, "\"%s\" must be an address "
                         "\"host:port\" (\"[v6]:port\" for IPv6)", key);
    *out = text != NULL ? strdup(text) : NULL;
    if (text != NULL && *out == NULL)
        return sl_error_set(e, SL_ENOMEM, "", "out of memory");
    return 0;
}

static int
get_duration(struct sl_config *cfg, const char *key, int64_t dflt,
             int64_t *ms, struct sl_error *e)
{
    char ptr[64];
    json_t *v;

    snprintf(ptr, sizeof(ptr), "/%s", key);
    v = sl_config_get(cfg, ptr);
    *ms = dflt;
    if (v == NULL)
        return 0;
    if (json_is_integer(v) && json_integer_value(v) > 0)
        *ms = json_integer_value(v);
    else if (!json_is_string(v) ||
             sl_parse_duration_ms(json_string_value(v), ms) != 0 || *ms <= 0)
        return where_err(cfg, ptr, e, "\"%s\" must be a duration such as "
                         "\"10s\" or \"500ms\" (a bare number is "
                         "milliseconds), above 0", key);
    if (*ms > 86400000LL * 7)
        return where_err(cfg, ptr, e, "\"%s\" must be at most a week", key);
    return 0;
}

/* Reads every client key of cfg into *s; builds the exit dialers. */
static int
settings_load(struct sl_config *cfg, const char *name, struct settings *s,
              struct sl_error *e)
{
    json_t *v, *exits;
    char where[512];

    memset(s, 0, sizeof(*s));
    if (sl_config_check_keys(cfg, client_keys, e) != 0)
        goto fail;
    if (get_listen(cfg, "socks5_listen", "127.0.0.1:1080", &s->socks5_listen,
                   e) != 0 ||
        get_listen(cfg, "http_listen", NULL, &s->http_listen, e) != 0)
        goto fail;
    if (s->socks5_listen == NULL && s->http_listen == NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s: neither \"socks5_listen\" nor "
                     "\"http_listen\" is set: nothing to serve", name);
        goto fail;
    }
    s->sessions = 6;
    v = sl_config_get(cfg, "/sessions");
    if (v != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > MAX_SESSIONS) {
            where_err(cfg, "/sessions", e, "\"%s\" must be an integer from "
                      "1 to 64", "sessions");
            goto fail;
        }
        s->sessions = (int)json_integer_value(v);
    }
    v = sl_config_get(cfg, "/session_metadata");
    s->meta_json = json_dumps(v != NULL ? v : json_null(),
                              JSON_COMPACT | JSON_ENCODE_ANY);
    if (s->meta_json == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        goto fail;
    }
    if (strlen(s->meta_json) > 60000) {
        where_err(cfg, "/session_metadata", e, "\"%s\" is longer than "
                  "60000 bytes of JSON", "session_metadata");
        goto fail;
    }
    v = sl_config_get(cfg, "/socks5_users");
    if (v != NULL && !json_is_null(v)) {
        const char *user;
        json_t *pass;

        if (!json_is_object(v)) {
            where_err(cfg, "/socks5_users", e, "\"%s\" must be an object "
                      "{\"user\": \"password\", ...}", "socks5_users");
            goto fail;
        }
        json_object_foreach(v, user, pass) {
            if (!json_is_string(pass) || user[0] == '\0' ||
                strlen(user) > 255 || strlen(json_string_value(pass)) > 255) {
                where_err(cfg, "/socks5_users", e, "\"%s\": user names must "
                          "be 1 to 255 bytes and passwords strings of at "
                          "most 255 bytes", "socks5_users");
                goto fail;
            }
        }
        if (json_object_size(v) > 0)
            s->users = json_incref(v);
    }
    if (get_duration(cfg, "tunnel_timeout", 10000, &s->tunnel_timeout_ms, e)
        != 0 ||
        get_duration(cfg, "idle_timeout", 1800000, &s->idle_timeout_ms, e)
        != 0)
        goto fail;
    if (s->idle_timeout_ms > INT32_MAX)
        s->idle_timeout_ms = INT32_MAX;
    exits = sl_config_get(cfg, "/exits");
    if (exits == NULL || !json_is_array(exits) || json_array_size(exits) == 0)
    {
        sl_error_set(e, SL_EINVAL, "", "%s: \"exits\" must be a non-empty "
                     "array of stacks ending in a mux, e.g. [\"tcp "
                     "addr=203.0.113.5:9000 | sosistab3 cookie=... | e2e "
                     "pubkey=... | picomux\"]",
                     exits != NULL ? sl_config_where(cfg, "/exits", where,
                                                     sizeof(where))
                                   : name);
        goto fail;
    }
    s->nroutes = json_array_size(exits);
    s->routes = calloc(s->nroutes, sizeof(*s->routes));
    if (s->routes == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < s->nroutes; i++) {
        char ptr[64];

        snprintf(ptr, sizeof(ptr), "/exits/%zu", i);
        s->routes[i] = sl_config_dialer(cfg, ptr, e);
        if (s->routes[i] == NULL)
            goto fail;
        if (sl_dialer_produces(s->routes[i]) != SL_IO_SESSION) {
            sl_error_set(e, SL_EINVAL, "", "%s: exits[%zu] produces a pipe, "
                         "not a session: end it with a mux layer such as "
                         "\"| picomux\"",
                         sl_config_where(cfg, ptr, where, sizeof(where)), i);
            goto fail;
        }
    }
    {
        json_t *key = json_pack("{s:O,s:i,s:s}", "exits", exits, "sessions",
                                s->sessions, "meta", s->meta_json);

        s->pool_key = key != NULL ? json_dumps(key, JSON_COMPACT |
                                               JSON_SORT_KEYS)
                                  : NULL;
        json_decref(key);
        if (s->pool_key == NULL) {
            sl_error_set(e, SL_ENOMEM, "", "out of memory");
            goto fail;
        }
    }
    return 0;
fail:
    settings_free(s);
    return e->code != 0 ? e->code : SL_EINVAL;
}

/* ---- state --------------------------------------------------------------- */

enum slot_state { SLOT_WAIT, SLOT_DIALING, SLOT_LIVE };

struct client;
struct pool;

struct slot {
    struct client *c;
    struct pool *pool;
    int idx;
    enum slot_state state;
    size_t route;               /* route to dial next */
    struct sl_dial_op *op;
    struct sl_session *s;
    struct sl_session *dead_s;  /* freed from free_ev, not in its callback */
    unsigned gen;               /* bumped whenever s changes */
    int inflight;               /* opens waiting for their reply */
    int backoff_ms;
    struct event *retry_ev;
    struct event *free_ev;
    char last_err[256];
};

/* The sessions of one configuration.  A reload that changes them retires
 * the pool: its sessions are freed at once, but the slots stay until every
 * cancelled dial has called back (the slot is its callback's argument). */
struct pool {
    struct slot *slots;
    int n;
    int rr;                     /* where the next choice starts */
    int retired;
    struct pool *next;          /* in client.retired */
};

enum conn_kind { K_SOCKS5, K_HTTP };
enum conn_state {
    C_GREETING, C_AUTH, C_REQUEST,      /* SOCKS5 */
    C_HEAD,                             /* HTTP */
    C_WAIT_SESSION, C_OPENING, C_RELAY
};

struct conn {
    struct client *c;
    struct conn *prev, *next;
    enum conn_kind kind;
    enum conn_state st;
    struct sl_pipe *in;         /* the client's connection */
    struct sl_pipe *stream;     /* the tunnel stream, while opening */
    struct slot *slot;
    unsigned gen;
    struct event *timer;
    struct relay *relay;
    char host[256];
    char port[6];
    char peer[64];
    int64_t t0;
};

struct client {
    struct event_base *base;
    const char *cfg_path;
    const char *addr_file;
    struct sl_config *cfg;
    struct settings set;
    struct pool *pool;          /* never NULL once running */
    struct pool *retired;       /* replaced pools with dials to reap */
    struct sl_stack *s5_stack, *http_stack;
    struct sl_listener *s5_l, *http_l;
    struct conn *conns;
    struct sl_signals *sig;
    int stopping;
    int exit_code;
};

static void pool_serve_waiting(struct client *c);
static void pool_reap_retired(struct client *c);
static void slot_dial(struct slot *sl);

/* ---- helpers ------------------------------------------------------------- */

/* Flushes what p has to send, then frees it. */
static void
close_pipe(struct client *c, struct sl_pipe *p)
{
    (void)c;
    relay_close_pipe(p, 0);
}

static void
timer_set(struct event *ev, int64_t ms)
{
    struct timeval tv;

    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    evtimer_add(ev, &tv);
}

/* ---- session slots ------------------------------------------------------- */

static void
slot_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    slot_dial(arg);
}

static void
slot_free_cb(evutil_socket_t fd, short what, void *arg)
{
    struct slot *sl = arg;

    (void)fd;
    (void)what;
    sl_session_free(sl->dead_s);
    sl->dead_s = NULL;
}

/* The next attempt after the back-off, which then doubles. */
static void
slot_wait(struct slot *sl)
{
    sl->state = SLOT_WAIT;
    if (sl->c->stopping)
        return;
    timer_set(sl->retry_ev, sl->backoff_ms);
    sl->backoff_ms = sl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                         : sl->backoff_ms * 2;
}

static int
pool_dialing(struct client *c)
{
    for (int i = 0; i < c->pool->n; i++)
        if (c->pool->slots[i].state == SLOT_DIALING)
            return 1;
    return 0;
}

static void conn_fail(struct conn *cn, uint8_t rep, int status,
                      const char *why);

/* Requests waiting for a session when no dial is left in progress. */
static void
pool_fail_waiting(struct client *c, const char *why)
{
    struct conn *cn, *next;

    for (cn = c->conns; cn != NULL; cn = next) {
        next = cn->next;
        if (cn->st == C_WAIT_SESSION)
            conn_fail(cn, S5_REP_FAILURE, 502, why);
    }
}

/* Ends the current session of sl (dead, or broken by a bad reply) and
 * schedules its replacement.  in_cb: we are inside the session's own
 * callback, so it is freed from the loop. */
static void
slot_kill(struct slot *sl, const char *why, int in_cb)
{
    if (sl->s == NULL)
        return;
    sl_log(SL_LOG_WARNING, "", "session %d: %s; replacing it in %d ms",
           sl->idx, why, sl->backoff_ms);
    snprintf(sl->last_err, sizeof(sl->last_err), "%s", why);
    if (in_cb) {
        sl_session_free(sl->dead_s);
        sl->dead_s = sl->s;
        event_active(sl->free_ev, EV_TIMEOUT, 0);
    } else {
        sl_session_free(sl->s);
    }
    sl->s = NULL;
    sl->gen++;
    sl->inflight = 0;
    slot_wait(sl);
}

static void
slot_dead_cb(struct sl_session *s, const struct sl_error *why, void *arg)
{
    struct slot *sl = arg;
    char buf[256];

    (void)s;
    slot_kill(sl, why != NULL ? sl_error_str(why, buf, sizeof(buf))
                              : "session closed", 1);
}

static void
slot_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
            void *arg)
{
    struct slot *sl = arg;
    struct client *c = sl->c;
    struct sl_pipe *meta = NULL;
    struct sl_error e;
    char buf[256];

    sl->op = NULL;
    if (c->stopping || sl->pool->retired) {
        /* A cancelled dial (or one that won the race with the cancel). */
        sl_pipe_free(p);
        sl_session_free(s);
        sl->state = SLOT_WAIT;
        if (sl->pool->retired)
            pool_reap_retired(c);   /* may free sl */
        return;
    }
    sl_error_clear(&e);
    if (err != NULL) {
        sl_error_str(err, buf, sizeof(buf));
    } else if (s == NULL) {
        sl_pipe_free(p);
        snprintf(buf, sizeof(buf), "the route gave a pipe, not a session");
    } else if (sl_session_open(s, c->set.meta_json, strlen(c->set.meta_json),
                               &meta, &e) != 0) {
        /* §7.1: the metadata stream goes first; without it, no tunnel. */
        sl_session_free(s);
        s = NULL;
        snprintf(buf, sizeof(buf), "metadata stream: %s",
                 sl_error_str(&e, buf, sizeof(buf)));
    }
    if (s == NULL) {
        snprintf(sl->last_err, sizeof(sl->last_err), "%s", buf);
        sl_log(SL_LOG_WARNING, "", "session %d: exits[%zu]: %s; retrying "
               "in %d ms", sl->idx, sl->route, buf, sl->backoff_ms);
        sl->route = (sl->route + 1) % c->set.nroutes;
        slot_wait(sl);
        if (!pool_dialing(c))
            pool_fail_waiting(c, buf);
        return;
    }
    /* SYN with the metadata, then FIN. */
    close_pipe(c, meta);
    sl->s = s;
    sl->gen++;
    sl->inflight = 0;
    sl->state = SLOT_LIVE;
    sl->backoff_ms = BACKOFF_MIN_MS;
    sl_session_setcb(s, NULL, slot_dead_cb, sl);
    sl_log(SL_LOG_INFO, "", "session %d: up over exits[%zu]", sl->idx,
           sl->route);
    pool_serve_waiting(c);
}

static void
slot_dial(struct slot *sl)
{
    struct client *c = sl->c;
    struct sl_error e;
    char buf[256];

    if (c->stopping || sl->pool->retired || sl->state == SLOT_DIALING ||
        sl->state == SLOT_LIVE)
        return;
    evtimer_del(sl->retry_ev);
    sl_error_clear(&e);
    sl->state = SLOT_DIALING;
    if (sl_dialer_dial(c->set.routes[sl->route], c->base, slot_dialed, sl,
                       &sl->op, &e) != 0) {
        sl->op = NULL;
        sl_log(SL_LOG_WARNING, "", "session %d: exits[%zu]: %s", sl->idx,
               sl->route, sl_error_str(&e, buf, sizeof(buf)));
        sl->route = (sl->route + 1) % c->set.nroutes;
        slot_wait(sl);
    }
}

static void pool_free(struct pool *pl);

/* A pool of n idle slots over nroutes routes (c->set.routes, once they
 * dial), or NULL when out of memory. */
static struct pool *
pool_new(struct client *c, int n, size_t nroutes)
{
    struct pool *pl = calloc(1, sizeof(*pl));

    if (pl == NULL)
        return NULL;
    pl->slots = calloc((size_t)n, sizeof(*pl->slots));
    if (pl->slots == NULL) {
        free(pl);
        return NULL;
    }
    pl->n = n;
    for (int i = 0; i < pl->n; i++) {
        struct slot *sl = &pl->slots[i];

        sl->c = c;
        sl->pool = pl;
        sl->idx = i;
        sl->route = (size_t)i % nroutes;
        sl->backoff_ms = BACKOFF_MIN_MS;
        sl->state = SLOT_WAIT;
        sl->retry_ev = evtimer_new(c->base, slot_retry_cb, sl);
        sl->free_ev = evtimer_new(c->base, slot_free_cb, sl);
        if (sl->retry_ev == NULL || sl->free_ev == NULL) {
            pool_free(pl);
            return NULL;
        }
    }
    return pl;
}

static void
pool_start(struct pool *pl)
{
    for (int i = 0; i < pl->n; i++)
        slot_dial(&pl->slots[i]);
}

/* Frees every session.  Dials in progress are cancelled; their callbacks
 * run from the loop, so the slots stay until they have (pool_busy). */
static void
pool_stop(struct pool *pl)
{
    if (pl == NULL)
        return;
    for (int i = 0; i < pl->n; i++) {
        struct slot *sl = &pl->slots[i];

        if (sl->op != NULL)
            sl_dial_op_cancel(sl->op);
        sl_session_free(sl->s);
        sl->s = NULL;
        sl_session_free(sl->dead_s);
        sl->dead_s = NULL;
        if (sl->retry_ev != NULL)
            evtimer_del(sl->retry_ev);
    }
}

static int
pool_busy(const struct pool *pl)
{
    if (pl == NULL)
        return 0;
    for (int i = 0; i < pl->n; i++)
        if (pl->slots[i].op != NULL)
            return 1;
    return 0;
}

static void
pool_free(struct pool *pl)
{
    if (pl == NULL)
        return;
    for (int i = 0; i < pl->n; i++) {
        if (pl->slots[i].retry_ev != NULL)
            event_free(pl->slots[i].retry_ev);
        if (pl->slots[i].free_ev != NULL)
            event_free(pl->slots[i].free_ev);
    }
    free(pl->slots);
    free(pl);
}

/* Ends the sessions of c's pool and puts it aside until its cancelled
 * dials have called back.  The tunnels of those sessions end with them
 * and must not point at its slots any more. */
static void
pool_retire(struct client *c)
{
    struct pool *pl = c->pool;

    c->pool = NULL;
    pl->retired = 1;
    pool_stop(pl);
    pl->next = c->retired;
    c->retired = pl;
    pool_reap_retired(c);
}

/* Frees the retired pools with no dial left. */
static void
pool_reap_retired(struct client *c)
{
    struct pool **pp = &c->retired;

    while (*pp != NULL) {
        struct pool *pl = *pp;

        if (pool_busy(pl)) {
            pp = &pl->next;
            continue;
        }
        *pp = pl->next;
        pool_free(pl);
    }
}

/* The live slot with the fewest opens in flight, from the rotating start. */
static struct slot *
pool_pick(struct client *c)
{
    struct pool *pl = c->pool;
    struct slot *best = NULL;

    for (int k = 0; k < pl->n; k++) {
        struct slot *sl = &pl->slots[(pl->rr + k) % pl->n];

        if (sl->state == SLOT_LIVE &&
            (best == NULL || sl->inflight < best->inflight))
            best = sl;
    }
    if (pl->n > 0)
        pl->rr = (pl->rr + 1) % pl->n;
    return best;
}

/* ---- inbound connections ------------------------------------------------- */

static void
conn_free(struct conn *cn)
{
    struct client *c = cn->c;

    if (cn->prev != NULL)
        cn->prev->next = cn->next;
    else
        c->conns = cn->next;
    if (cn->next != NULL)
        cn->next->prev = cn->prev;
    if (cn->stream != NULL && cn->slot != NULL && cn->gen == cn->slot->gen &&
        cn->slot->inflight > 0)
        cn->slot->inflight--;
    sl_pipe_free(cn->stream);
    sl_pipe_free(cn->in);
    relay_free(cn->relay);
    if (cn->timer != NULL)
        event_free(cn->timer);
    free(cn);
}

/* Answers the client with the error of its protocol, then closes it. */
static void
conn_fail(struct conn *cn, uint8_t rep, int status, const char *why)
{
    struct client *c = cn->c;
    struct evbuffer *out;

    sl_log(SL_LOG_INFO, "", "%s: %s%s%s%s%s: %s", cn->peer,
           cn->kind == K_SOCKS5 ? "socks5" : "http",
           cn->host[0] ? " to " : "", cn->host, cn->host[0] ? ":" : "",
           cn->port, why);
    if (cn->in != NULL) {
        out = bufferevent_get_output(sl_pipe_get0_bev(cn->in));
        if (cn->kind == K_SOCKS5 && rep != 0xff) {
            uint8_t r[10];

            evbuffer_add(out, r, s5_reply(rep, r));
        } else if (cn->kind == K_HTTP && status != 0) {
            char body[400];
            int n = snprintf(body, sizeof(body), "%s\n", why);

            if (n < 0 || (size_t)n >= sizeof(body))
                n = (int)strlen(body);
            evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n"
                                "Content-Type: text/plain\r\n"
                                "Content-Length: %d\r\n"
                                "%s"
                                "Connection: close\r\n\r\n%s",
                                status, http_reason(status), n,
                                status == 407 ? "Proxy-Authenticate: Basic "
                                "realm=\"sillad\"\r\n" : "", body);
        }
        close_pipe(c, cn->in);
        cn->in = NULL;
    }
    conn_free(cn);
}

static void
relay_done(void *arg, const struct relay_stats *st, const char *why)
{
    struct conn *cn = arg;

    sl_log(SL_LOG_INFO, "", "%s: tunnel to %s:%s ended (%s): %" PRIu64
           " bytes up, %" PRIu64 " down", cn->peer, cn->host, cn->port, why,
           st->a_to_b, st->b_to_a);
    cn->relay = NULL;
    conn_free(cn);
}

/* The exit answered: success starts the relay (1); a failure is answered
 * and cn freed (-1). */
static int
conn_replied(struct conn *cn, const struct tun_reply *rep)
{
    struct client *c = cn->c;
    struct evbuffer *out = bufferevent_get_output(sl_pipe_get0_bev(cn->in));
    struct sl_pipe *in = cn->in, *stream = cn->stream;

    if (cn->slot->gen == cn->gen && cn->slot->inflight > 0)
        cn->slot->inflight--;
    cn->slot = NULL;
    if (!rep->ok) {
        int status = s5_rep_for_fail(rep->fail) == S5_REP_POLICY ? 403 : 502;
        char why[600];

        snprintf(why, sizeof(why), "exit: %s", rep->fail);
        sl_pipe_free(cn->stream);
        cn->stream = NULL;
        conn_fail(cn, s5_rep_for_fail(rep->fail), status, why);
        return -1;
    }
    if (cn->kind == K_SOCKS5) {
        uint8_t r[10];

        evbuffer_add(out, r, s5_reply(S5_REP_OK, r));
    } else {
        evbuffer_add_printf(out, "HTTP/1.1 200 Connection established\r\n\r\n");
    }
    sl_log(SL_LOG_INFO, "", "%s: tunnel to %s:%s open (%s, %ld ms)", cn->peer,
           cn->host, cn->port, rep->resolved_addr, rep->open_ms);
    evtimer_del(cn->timer);
    cn->in = cn->stream = NULL;
    cn->st = C_RELAY;
    cn->relay = relay_new(c->base, in, stream, (int)c->set.idle_timeout_ms,
                          relay_done, cn);
    if (cn->relay == NULL) {
        conn_free(cn);
        return -1;
    }
    return 1;
}

/* The stream broke before a good reply: the session is broken too. */
static void
conn_session_broken(struct conn *cn, const char *why, int timeout)
{
    struct slot *sl = cn->slot;
    char text[300];

    if (sl != NULL && sl->gen == cn->gen)
        slot_kill(sl, why, 0);
    cn->slot = NULL;
    snprintf(text, sizeof(text), "tunnel reply: %s", why);
    conn_fail(cn, S5_REP_FAILURE, timeout ? 504 : 502, text);
}

/* Takes the exit's reply off the stream if it is all there.  Returns 1
 * when the relay has started, 0 while the reply is incomplete, -1 when cn
 * is gone (a failure answered, or out of memory). */
static int
stream_take_reply(struct conn *cn, struct bufferevent *bev)
{
    unsigned char *p = NULL;
    size_t n = 0;
    struct sl_error e;
    struct tun_reply rep;
    char buf[256];
    int r;

    sl_error_clear(&e);
    r = tun_msg_take(bufferevent_get_input(bev), &p, &n, &e);
    if (r == 0)
        return 0;
    if (r < 0) {
        conn_session_broken(cn, sl_error_str(&e, buf, sizeof(buf)), 0);
        return -1;
    }
    memset(&rep, 0, sizeof(rep));
    r = tun_reply_parse(p, n, &rep, &e);
    free(p);
    if (r != 0) {
        conn_session_broken(cn, sl_error_str(&e, buf, sizeof(buf)), 0);
        return -1;
    }
    return conn_replied(cn, &rep);
}

static void
stream_readcb(struct bufferevent *bev, void *arg)
{
    stream_take_reply(arg, bev);
}

static void
stream_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *cn = arg;
    const struct sl_error *err;
    char buf[256];

    if (what & BEV_EVENT_EOF) {
        /* The reply and the end may come together: take the reply, and
         * hand the end on to the relay, which has the stream now. */
        int r = stream_take_reply(cn, bev);

        if (r == 1)
            bufferevent_trigger_event(bev, BEV_EVENT_EOF | BEV_EVENT_READING,
                                      BEV_TRIG_DEFER_CALLBACKS);
        else if (r == 0)
            conn_session_broken(cn, "the exit closed the stream without a "
                                "reply", 0);
        return;
    }
    err = sl_pipe_get0_error(cn->stream);
    conn_session_broken(cn, err != NULL ? sl_error_str(err, buf, sizeof(buf))
                                        : "stream error", 0);
}

static void
conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *cn = arg;

    (void)fd;
    (void)what;
    switch (cn->st) {
    case C_OPENING:
        conn_session_broken(cn, "no reply in time", 1);
        break;
    case C_WAIT_SESSION:
        conn_fail(cn, S5_REP_FAILURE, 504, "no exit session came up in "
                  "time");
        break;
    default:
        conn_fail(cn, 0xff, 0, "handshake timed out");
        break;
    }
}

/* Opens the tunnel stream on sl. */
static void
conn_open(struct conn *cn, struct slot *sl)
{
    struct client *c = cn->c;
    char *cmd = tun_cmd_rich("tcp", cn->host, cn->port);
    struct sl_error e;
    char buf[256];

    sl_error_clear(&e);
    if (cmd == NULL) {
        conn_fail(cn, S5_REP_FAILURE, 502, "cannot form the tunnel command");
        return;
    }
    if (sl_session_open(sl->s, cmd, strlen(cmd), &cn->stream, &e) != 0) {
        free(cmd);
        sl_error_str(&e, buf, sizeof(buf));
        slot_kill(sl, buf, 0);
        conn_fail(cn, S5_REP_FAILURE, 502, buf);
        return;
    }
    free(cmd);
    /* What the client sent after its request (early data: a pipelining
     * SOCKS client's first bytes) follows the SYN at once, so the exit
     * can pass it on as soon as it has connected, instead of a round
     * trip later.  The exit holds it until then; a refused tunnel drops
     * it with the stream. */
    evbuffer_add_buffer(bufferevent_get_output(sl_pipe_get0_bev(cn->stream)),
                        bufferevent_get_input(sl_pipe_get0_bev(cn->in)));
    cn->slot = sl;
    cn->gen = sl->gen;
    sl->inflight++;
    cn->st = C_OPENING;
    sl_pipe_setcb(cn->stream, stream_readcb, NULL, stream_eventcb, cn);
    bufferevent_enable(sl_pipe_get0_bev(cn->stream), EV_READ | EV_WRITE);
    timer_set(cn->timer, c->set.tunnel_timeout_ms);
}

static void
conn_start_tunnel(struct conn *cn)
{
    struct client *c = cn->c;
    struct slot *sl;

    /* Keep what the client sent after its request (early data) for the
     * relay; stop reading meanwhile. */
    bufferevent_disable(sl_pipe_get0_bev(cn->in), EV_READ);
    sl = pool_pick(c);
    if (sl != NULL) {
        conn_open(cn, sl);
        return;
    }
    if (!pool_dialing(c)) {
        /* Skip one slot's back-off: a request is waiting. */
        for (int i = 0; i < c->pool->n; i++) {
            if (c->pool->slots[i].state == SLOT_WAIT) {
                slot_dial(&c->pool->slots[i]);
                break;
            }
        }
    }
    if (!pool_dialing(c)) {
        char why[300];

        snprintf(why, sizeof(why), "no exit session available");
        for (int i = 0; i < c->pool->n; i++)
            if (c->pool->slots[i].last_err[0] != '\0') {
                snprintf(why, sizeof(why), "no exit session available: %s",
                         c->pool->slots[i].last_err);
                break;
            }
        conn_fail(cn, S5_REP_FAILURE, 502, why);
        return;
    }
    cn->st = C_WAIT_SESSION;
    timer_set(cn->timer, c->set.tunnel_timeout_ms);
}

static void
pool_serve_waiting(struct client *c)
{
    struct conn *cn, *next;

    for (cn = c->conns; cn != NULL; cn = next) {
        next = cn->next;
        if (cn->st == C_WAIT_SESSION) {
            struct slot *sl = pool_pick(c);

            if (sl == NULL)
                return;
            evtimer_del(cn->timer);
            conn_open(cn, sl);
        }
    }
}

static int
users_check(struct client *c, const char *user, const char *pass)
{
    json_t *v = json_object_get(c->set.users, user);

    return v != NULL && json_is_string(v) &&
           strcmp(json_string_value(v), pass) == 0;
}

/* One step of SOCKS5 on the bytes in `in`; 1 = go on, 0 = wait, -1 =
 * cn is gone. */
static int
socks5_step(struct conn *cn, struct evbuffer *in)
{
    struct client *c = cn->c;
    struct evbuffer *out = bufferevent_get_output(sl_pipe_get0_bev(cn->in));
    size_t n = evbuffer_get_length(in);
    const unsigned char *p;
    struct sl_error e;
    char buf[256];
    uint8_t r[2], rep;
    int k;

    if (n == 0)
        return 0;
    if (n > S5_MSG_MAX)
        n = S5_MSG_MAX;
    p = evbuffer_pullup(in, (ev_ssize_t)n);
    sl_error_clear(&e);
    switch (cn->st) {
    case C_GREETING: {
        uint8_t method;

        k = s5_greeting_parse(p, n, c->set.users != NULL, &method, &e);
        if (k <= 0)
            break;
        evbuffer_drain(in, (size_t)k);
        evbuffer_add(out, r, s5_method_reply(method, r));
        if (method == S5_METHOD_REFUSED) {
            conn_fail(cn, 0xff, 0, c->set.users != NULL
                      ? "the client offered no username/password method"
                      : "the client offered no method without "
                        "authentication");
            return -1;
        }
        cn->st = method == S5_METHOD_USERPASS ? C_AUTH : C_REQUEST;
        return 1;
    }
    case C_AUTH: {
        struct s5_auth a;
        int ok;

        k = s5_auth_parse(p, n, &a, &e);
        if (k <= 0)
            break;
        evbuffer_drain(in, (size_t)k);
        ok = users_check(c, a.user, a.pass);
        evbuffer_add(out, r, s5_auth_reply(ok, r));
        if (!ok) {
            conn_fail(cn, 0xff, 0, "wrong user name or password");
            return -1;
        }
        cn->st = C_REQUEST;
        return 1;
    }
    case C_REQUEST: {
        struct s5_request q;

        k = s5_request_parse(p, n, &q, &rep, &e);
        if (k < 0) {
            conn_fail(cn, rep, 0, sl_error_str(&e, buf, sizeof(buf)));
            return -1;
        }
        if (k == 0)
            return 0;
        evbuffer_drain(in, (size_t)k);
        snprintf(cn->host, sizeof(cn->host), "%s", q.host);
        snprintf(cn->port, sizeof(cn->port), "%u", q.port);
        conn_start_tunnel(cn);
        return 0;
    }
    default:
        return 0;
    }
    if (k < 0) {
        conn_fail(cn, 0xff, 0, sl_error_str(&e, buf, sizeof(buf)));
        return -1;
    }
    return 0;
}

/* The HTTP head; 0 = wait or done, -1 = cn is gone. */
static int
http_step(struct conn *cn, struct evbuffer *in)
{
    struct client *c = cn->c;
    size_t n = evbuffer_get_length(in);
    const unsigned char *p;
    struct http_req q;
    struct sl_error e;
    char buf[300];
    int k, status;

    if (n > HTTP_HEAD_MAX)
        n = HTTP_HEAD_MAX;
    p = evbuffer_pullup(in, (ev_ssize_t)n);
    sl_error_clear(&e);
    k = http_head_parse(p, n, &q, &status, &e);
    if (k == 0)
        return 0;
    if (k < 0) {
        conn_fail(cn, 0xff, status, sl_error_str(&e, buf, sizeof(buf)));
        return -1;
    }
    evbuffer_drain(in, (size_t)k);
    if (!q.is_connect) {
        snprintf(buf, sizeof(buf), "This proxy only tunnels with CONNECT; "
                 "%s is not supported.", q.method);
        conn_fail(cn, 0xff, 405, buf);
        return -1;
    }
    if (c->set.users != NULL) {
        char *colon = strchr(q.basic, ':');

        if (colon == NULL) {
            conn_fail(cn, 0xff, 407, "Proxy authentication required.");
            return -1;
        }
        *colon = '\0';
        if (!users_check(c, q.basic, colon + 1)) {
            conn_fail(cn, 0xff, 407, "Wrong user name or password.");
            return -1;
        }
    }
    snprintf(cn->host, sizeof(cn->host), "%s", q.host);
    snprintf(cn->port, sizeof(cn->port), "%s", q.port);
    conn_start_tunnel(cn);
    return 0;
}

static void
in_readcb(struct bufferevent *bev, void *arg)
{
    struct conn *cn = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (cn->kind == K_HTTP) {
        if (cn->st == C_HEAD)
            http_step(cn, in);
        return;
    }
    while (cn->st == C_GREETING || cn->st == C_AUTH || cn->st == C_REQUEST)
        if (socks5_step(cn, in) != 1)
            return;
}

static void
in_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *cn = arg;

    (void)bev;
    (void)what;
    /* The client left before its tunnel was up. */
    sl_log(SL_LOG_DEBUG, "", "%s: closed before the tunnel was open",
           cn->peer);
    conn_free(cn);
}

static void
on_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg, enum conn_kind kind)
{
    struct client *c = arg;
    struct conn *cn;

    (void)err;
    if (s != NULL) {
        sl_session_free(s);
        return;
    }
    if (p == NULL)
        return;
    cn = calloc(1, sizeof(*cn));
    if (cn == NULL || (cn->timer = evtimer_new(c->base, conn_timer_cb, cn))
                      == NULL) {
        free(cn);
        sl_pipe_free(p);
        return;
    }
    cn->c = c;
    cn->kind = kind;
    cn->st = kind == K_SOCKS5 ? C_GREETING : C_HEAD;
    cn->in = p;
    cn->t0 = sl_now_ms();
    sl_pipe_remote_addr(p, cn->peer, sizeof(cn->peer));
    cn->next = c->conns;
    if (c->conns != NULL)
        c->conns->prev = cn;
    c->conns = cn;
    timer_set(cn->timer, HANDSHAKE_MS);
    sl_pipe_setcb(p, in_readcb, NULL, in_eventcb, cn);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static void
on_accept_socks5(struct sl_pipe *p, struct sl_session *s,
                 const struct sl_error *err, void *arg)
{
    on_accept(p, s, err, arg, K_SOCKS5);
}

static void
on_accept_http(struct sl_pipe *p, struct sl_session *s,
               const struct sl_error *err, void *arg)
{
    on_accept(p, s, err, arg, K_HTTP);
}

/* ---- listeners ----------------------------------------------------------- */

/* A listener on "tcp addr=ADDR" into *l and *stack. */
static int
listen_on(struct client *c, const char *addr, sl_conn_fn *cb,
          struct sl_stack **stack, struct sl_listener **l, struct sl_error *e)
{
    char text[300];

    *stack = NULL;
    *l = NULL;
    if (addr == NULL)
        return 0;
    snprintf(text, sizeof(text), "tcp addr=%s", addr);
    *stack = sl_stack_parse(text, e);
    if (*stack == NULL)
        return e->code;
    *l = sl_listener_new(*stack, c->base, cb, c, e);
    if (*l == NULL) {
        sl_stack_free(*stack);
        *stack = NULL;
        return e->code != 0 ? e->code : SL_EINVAL;
    }
    return 0;
}

static int
write_addr_file(struct client *c, struct sl_error *e)
{
    char text[300], addr[128];
    size_t n = 0;

    if (c->addr_file == NULL)
        return 0;
    text[0] = '\0';
    if (c->s5_l != NULL &&
        sl_listener_local_addr(c->s5_l, addr, sizeof(addr)) == 0)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "socks5 %s\n",
                              addr);
    if (c->http_l != NULL &&
        sl_listener_local_addr(c->http_l, addr, sizeof(addr)) == 0)
        snprintf(text + n, sizeof(text) - n, "http %s\n", addr);
    return xc_write_file(c->addr_file, text, e);
}

static void
log_listening(struct client *c)
{
    char addr[128];

    if (c->s5_l != NULL &&
        sl_listener_local_addr(c->s5_l, addr, sizeof(addr)) == 0)
        sl_log(SL_LOG_NOTICE, "", "SOCKS5 on %s", addr);
    if (c->http_l != NULL &&
        sl_listener_local_addr(c->http_l, addr, sizeof(addr)) == 0)
        sl_log(SL_LOG_NOTICE, "", "HTTP CONNECT on %s", addr);
}

static int
same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) ||
           (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* ---- signals ------------------------------------------------------------- */

static void
on_stop(void *arg)
{
    struct client *c = arg;

    sl_log(SL_LOG_NOTICE, "", "stopping");
    event_base_loopexit(c->base, NULL);
}

static void
on_reload(void *arg)
{
    struct client *c = arg;
    struct sl_error e;
    struct sl_config *cfg;
    struct settings ns;
    struct sl_stack *s5s = NULL, *hs = NULL;
    struct sl_listener *s5l = NULL, *hl = NULL;
    struct pool *np = NULL;
    int new_s5, new_http;
    char buf[512];

    sl_error_clear(&e);
    cfg = sl_config_load(c->cfg_path, &e);
    if (cfg == NULL || settings_load(cfg, c->cfg_path, &ns, &e) != 0)
        goto fail;
    if (strcmp(ns.pool_key, c->set.pool_key) != 0 &&
        (np = pool_new(c, ns.sessions, ns.nroutes)) == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "out of memory for the sessions");
        settings_free(&ns);
        goto fail;
    }
    /* Listeners whose address changed are opened before the old ones
     * close, so that a bad address keeps the old configuration. */
    new_s5 = !same(ns.socks5_listen, c->set.socks5_listen);
    new_http = !same(ns.http_listen, c->set.http_listen);
    if ((new_s5 && listen_on(c, ns.socks5_listen, on_accept_socks5, &s5s,
                             &s5l, &e) != 0) ||
        (new_http && listen_on(c, ns.http_listen, on_accept_http, &hs, &hl,
                               &e) != 0)) {
        sl_listener_free(s5l);
        sl_stack_free(s5s);
        pool_free(np);
        settings_free(&ns);
        goto fail;
    }
    {
        /* The log level may have changed; plugins are not reloaded. */
        json_t *lv = sl_config_get(cfg, "/log_level");

        if (lv != NULL && json_is_string(lv) &&
            sl_log_parse_level(json_string_value(lv)) >= 0)
            sl_log_set_level(sl_log_parse_level(json_string_value(lv)));
    }
    if (new_s5) {
        sl_listener_free(c->s5_l);
        sl_stack_free(c->s5_stack);
        c->s5_l = s5l;
        c->s5_stack = s5s;
    }
    if (new_http) {
        sl_listener_free(c->http_l);
        sl_stack_free(c->http_stack);
        c->http_l = hl;
        c->http_stack = hs;
    }
    if (np != NULL) {
        /* New exits: the sessions are replaced, and the tunnels on the
         * old ones end.  This runs inside a callback of the loop, which
         * cannot be run from here: the old pool's cancelled dials call
         * back later, and the old routes stay until they have (a dialer
         * lives as long as its dials). */
        struct conn *cn, *next;

        for (cn = c->conns; cn != NULL; cn = next) {
            next = cn->next;
            if (cn->st == C_OPENING)
                conn_fail(cn, S5_REP_FAILURE, 502, "configuration reloaded");
            else if (cn->slot != NULL)
                cn->slot = NULL;
        }
        pool_retire(c);
        {
            struct settings tmp = c->set;

            c->set = ns;
            settings_free(&tmp);
        }
        c->pool = np;
        pool_start(np);
    } else {
        /* Same sessions: keep them, take the rest. */
        struct settings tmp = c->set;
        struct sl_dialer **routes = tmp.routes;
        size_t nroutes = tmp.nroutes;

        tmp.routes = ns.routes;
        tmp.nroutes = ns.nroutes;
        ns.routes = routes;
        ns.nroutes = nroutes;
        c->set = ns;
        settings_free(&tmp);
    }
    sl_config_free(c->cfg);
    c->cfg = cfg;
    if (write_addr_file(c, &e) != 0)
        sl_log(SL_LOG_ERR, "", "%s", sl_error_str(&e, buf, sizeof(buf)));
    log_listening(c);
    sl_log(SL_LOG_NOTICE, "", "configuration reloaded");
    return;
fail:
    sl_log(SL_LOG_ERR, "", "reload failed, keeping the old configuration: %s",
           sl_error_str(&e, buf, sizeof(buf)));
    sl_config_free(cfg);
}

/* ---- main ---------------------------------------------------------------- */

static void
usage(FILE *f)
{
    fprintf(f, "usage: " PROG " -c FILE [--check] [--addr-file FILE] "
            "[-v] [-q]\n");
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check", no_argument, NULL, 'n' },
        { "addr-file", required_argument, NULL, 'a' },
        { "verbose", no_argument, NULL, 'v' },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct client c;
    struct sl_error e;
    char buf[512];
    int ch, check = 0, verbose = 0;

    sl_tune_malloc();
    memset(&c, 0, sizeof(c));
    sl_log_set_prefix(PROG);
    while ((ch = getopt_long(argc, argv, "c:na:vqh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': c.cfg_path = optarg; break;
        case 'n': check = 1; break;
        case 'a': c.addr_file = optarg; break;
        case 'v': verbose++; break;
        case 'q': verbose = -1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (c.cfg_path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    sl_log_set_level(verbose < 0 ? SL_LOG_ERR
                     : verbose == 0 ? SL_LOG_NOTICE
                     : verbose == 1 ? SL_LOG_INFO : SL_LOG_DEBUG);
    sl_error_clear(&e);
    c.cfg = sl_config_load(c.cfg_path, &e);
    if (c.cfg == NULL || sl_config_check_keys(c.cfg, client_keys, &e) != 0 ||
        sl_config_apply_common(c.cfg, PROG, &e) != 0 ||
        settings_load(c.cfg, c.cfg_path, &c.set, &e) != 0)
        goto fail;
    if (verbose != 0)
        sl_log_set_level(verbose < 0 ? SL_LOG_ERR
                         : verbose == 1 ? SL_LOG_INFO : SL_LOG_DEBUG);
    if (check) {
        /* The listening stacks parse too (they are not opened). */
        struct sl_stack *s;
        char text[300];
        const char *addrs[2] = { c.set.socks5_listen, c.set.http_listen };

        for (int i = 0; i < 2; i++) {
            if (addrs[i] == NULL)
                continue;
            snprintf(text, sizeof(text), "tcp addr=%s", addrs[i]);
            s = sl_stack_parse(text, &e);
            if (s == NULL)
                goto fail;
            sl_stack_free(s);
        }
        printf("%s: configuration OK\n", c.cfg_path);
        goto out;
    }
    c.base = event_base_new();
    if (c.base == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "cannot create the event loop");
        goto fail;
    }
    /* Before the address file tells that we are up: a signal sent as
     * soon as it appears must reach our handlers, not kill us. */
    c.sig = sl_signals_new(c.base, on_stop, on_reload, &c);
    if (listen_on(&c, c.set.socks5_listen, on_accept_socks5, &c.s5_stack,
                  &c.s5_l, &e) != 0 ||
        listen_on(&c, c.set.http_listen, on_accept_http, &c.http_stack,
                  &c.http_l, &e) != 0 ||
        write_addr_file(&c, &e) != 0)
        goto fail;
    c.pool = pool_new(&c, c.set.sessions, c.set.nroutes);
    if (c.pool == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "out of memory");
        goto fail;
    }
    pool_start(c.pool);
    log_listening(&c);
    event_base_dispatch(c.base);
    goto out;
fail:
    fprintf(stderr, PROG ": %s\n", sl_error_str(&e, buf, sizeof(buf)));
    c.exit_code = 1;
out:
    /* Clean stop: no new connections, every tunnel closed, dials
     * cancelled, then the graceful closes are given a moment. */
    c.stopping = 1;
    sl_listener_free(c.s5_l);
    sl_listener_free(c.http_l);
    sl_stack_free(c.s5_stack);
    sl_stack_free(c.http_stack);
    while (c.conns != NULL)
        conn_free(c.conns);
    pool_stop(c.pool);
    if (c.base != NULL) {
        int64_t t0 = sl_now_ms();

        while ((pool_busy(c.pool) || c.retired != NULL ||
                relay_closing() > 0) &&
               sl_now_ms() - t0 < STOP_DRAIN_MS)
            event_base_loop(c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        relay_closing_abort();
        /* Deferred frees of the closes above. */
        event_base_loop(c.base, EVLOOP_NONBLOCK);
    }
    pool_free(c.pool);
    while (c.retired != NULL) {
        struct pool *pl = c.retired;

        c.retired = pl->next;
        pool_free(pl);
    }
    sl_signals_free(c.sig);
    settings_free(&c.set);
    sl_config_free(c.cfg);
    if (c.base != NULL) {
        sl_resolver_release(c.base);
        event_base_free(c.base);
    }
    sl_loader_unload_all();
    return c.exit_code;
}
