/* sillad-exit - the far end of a Geph-style tunnel: accepts client
 * sessions on listen stacks (and bridged ones on a b2e port), and connects
 * each tunnel stream to the destination it names.
 *
 *   sillad-exit -c FILE [--check | --print-pubkey] [-v] [--addr-file F]
 *
 * Wire behaviour follows sillad-and-stacks.md §7 (streams of a session,
 * TCP and UDP tunnels) and §8.3 (the b2e port).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>
#include <sodium.h>

#include "e2e-key.h"
#include "exit-conf.h"
#include "exit-policy.h"
#include "relay.h"
#include "sillad.h"
#include "tunnel.h"

#define LISTEN_MAX 16
#define CACHE_MAX 64            /* b2e protocol handlers kept at once */
#define CACHE_IDLE_MS 1200000   /* 1200 s, as the Rust exit */
#define DIAL_ADDRS_MAX 4        /* resolved addresses tried in turn */
#define META_MAX 65536          /* session metadata kept */
#define FAIL_CLOSE_MS 5000      /* flushing a failure reply */
#define UDP_IDLE_MS 60000       /* a UDP tunnel's idle timeout (§7.5) */
#define UDP_OUT_MAX (1024 * 1024) /* datagrams queued towards the client */

struct xconf {
    struct sl_config *cfg;
    struct sl_stack *listen[LISTEN_MAX];
    size_t nlisten;
    struct sl_stack *b2e;           /* NULL without b2e_listen */
    const char *b2e_above;          /* borrowed from cfg */
    struct exit_policy *policy;
    int64_t connect_timeout_ms, idle_timeout_ms, max_streams;
};

struct xsess;
struct tunnel;
struct blink;
struct b2e_entry;

struct app {
    struct event_base *base;
    const char *cfg_path, *addr_file;
    int verbose;
    struct xconf *conf;
    struct sl_listener *listeners[LISTEN_MAX];
    size_t nlisteners;
    struct sl_listener *b2e_listener;
    struct b2e_entry *cache;
    size_t ncache;
    struct event *sweep_ev;
    struct xsess *sessions;
    struct blink *links;
    struct tunnel *tunnels;
    struct sl_signals *sig;
    unsigned long next_sess_id;
    int exit_code;
};

/* A client session (direct or through the b2e port). */
struct xsess {
    struct app *app;
    struct sl_session *s;           /* NULL once freed */
    unsigned long id;
    int have_meta;
    int reap_pending;               /* a deferred xs_reap is queued */
    int64_t ntunnels;
    json_t *meta;                   /* session metadata (§7.1), unused */
    struct xsess *prev, *next;
};

enum tstate { T_RESOLVE, T_CONNECT, T_RELAY, T_UDP };

struct tunnel {
    struct app *app;
    struct xsess *xs;
    struct sl_pipe *stream;         /* until the relay takes it */
    struct tun_cmd cmd;
    enum tstate state;
    void *resolve_req;
    struct sl_dialer *dialer;
    struct sl_dial_op *dial_op;
    struct relay *relay;
    int udp_fd;                     /* T_UDP: the connected socket */
    struct event *udp_ev, *udp_idle;
    uint64_t udp_up, udp_down, udp_dropped;
    int64_t udp_last_ms;
    int cancelled;
    int64_t start_ms, open_ms;
    char dest[300];                 /* host:port as asked */
    char resolved[64];
    struct tunnel *prev, *next;
};

/* A b2e link from a bridge: plain picomux whose streams each carry one
 * client's still-obfuscated connection. */
struct blink {
    struct app *app;
    struct sl_session *s;
    int reap_pending;
    struct blink *prev, *next;
};

/* The handler for one ObfsProtocol: its stack runs above b2e streams. */
struct b2e_entry {
    char *key;                      /* the stack text */
    struct sl_stack *stack;
    struct sl_listener *l;
    int64_t last_ms;
    struct b2e_entry *next;
};

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: sillad-exit -c FILE [-v] [--addr-file FILE]\n"
        "       sillad-exit -c FILE --check\n"
        "       sillad-exit -c FILE --print-pubkey\n");
}

/* ---- configuration --------------------------------------------------------- */

static void
conf_free(struct xconf *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nlisten; i++)
        sl_stack_free(c->listen[i]);
    sl_stack_free(c->b2e);
    exit_policy_free(c->policy);
    sl_config_free(c->cfg);
    free(c);
}

static int
need_session(struct sl_config *cfg, const char *ptr, struct sl_stack *s,
             struct sl_error *e)
{
    char where[512];

    if (sl_stack_produces(s) == SL_IO_SESSION)
        return 0;
    return sl_error_set(e, SL_EINVAL, "", "%s: the stack must end in a mux "
                        "layer such as picomux (clients open their tunnels "
                        "as streams)",
                        sl_config_where(cfg, ptr, where, sizeof(where)));
}

static int
policy_list(struct xconf *c, const char *key, int allow, struct sl_error *e)
{
    size_t n;
    int r;
    char ptr[64], where[512];

    if ((r = xc_array_len(c->cfg, key, 4096, &n, e)) != 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        const char *t = NULL;
        struct sl_error pe;

        snprintf(ptr, sizeof(ptr), "%s/%zu", key, i);
        if ((r = xc_string(c->cfg, ptr, &t, e)) != 0)
            return r;
        sl_error_clear(&pe);
        if (exit_policy_add(c->policy, allow, t, &pe) != 0)
            return sl_error_set(e, pe.code, "", "%s: %s",
                                sl_config_where(c->cfg, ptr, where,
                                                sizeof(where)), pe.text);
    }
    return 0;
}

/* Loads and checks everything; plugins are loaded on the first call. */
static struct xconf *
conf_load(const char *path, int first, struct sl_error *e)
{
    static const char *const keys[] = {
        "listen", "b2e_listen", "b2e_above", "allow_private", "allow",
        "deny", "max_streams_per_session", "connect_timeout", "idle_timeout",
        NULL,
    };
    struct xconf *c = calloc(1, sizeof(*c));
    size_t n;
    int allow_private = 0;
    char where[512];

    if (c == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    c->connect_timeout_ms = 5000;
    c->idle_timeout_ms = 1800000;
    c->max_streams = 1024;
    c->cfg = sl_config_load(path, e);
    if (c->cfg == NULL || sl_config_check_keys(c->cfg, keys, e) != 0 ||
        (first && sl_config_apply_common(c->cfg, "sillad-exit", e) != 0))
        goto fail;
    if (xc_bool(c->cfg, "/allow_private", &allow_private, e) != 0 ||
        xc_int(c->cfg, "/max_streams_per_session", 1, 1000000,
               &c->max_streams, e) != 0 ||
        xc_duration(c->cfg, "/connect_timeout", 1, 600000,
                    &c->connect_timeout_ms, e) != 0 ||
        xc_duration(c->cfg, "/idle_timeout", 1000, 86400000LL * 7,
                    &c->idle_timeout_ms, e) != 0)
        goto fail;
    c->policy = exit_policy_new(allow_private);
    if (c->policy == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        goto fail;
    }
    if (policy_list(c, "/allow", 1, e) != 0 ||
        policy_list(c, "/deny", 0, e) != 0)
        goto fail;
    if (sl_config_get(c->cfg, "/listen") != NULL &&
        json_is_string((json_t *)sl_config_get(c->cfg, "/listen"))) {
        /* One stack given as a plain string. */
        c->listen[0] = sl_config_stack(c->cfg, "/listen", e);
        if (c->listen[0] == NULL)
            goto fail;
        c->nlisten = 1;
        if (need_session(c->cfg, "/listen", c->listen[0], e) != 0)
            goto fail;
    } else {
        if (xc_array_len(c->cfg, "/listen", LISTEN_MAX, &n, e) != 0)
            goto fail;
        for (size_t i = 0; i < n; i++) {
            char ptr[32];

            snprintf(ptr, sizeof(ptr), "/listen/%zu", i);
            c->listen[i] = sl_config_stack(c->cfg, ptr, e);
            if (c->listen[i] == NULL)
                goto fail;
            c->nlisten = i + 1;
            if (need_session(c->cfg, ptr, c->listen[i], e) != 0)
                goto fail;
        }
    }
    if (sl_config_get(c->cfg, "/b2e_listen") != NULL) {
        struct sl_stack *above;
        struct sl_error pe;

        c->b2e = sl_config_stack(c->cfg, "/b2e_listen", e);
        if (c->b2e == NULL ||
            need_session(c->cfg, "/b2e_listen", c->b2e, e) != 0)
            goto fail;
        if (xc_string(c->cfg, "/b2e_above", &c->b2e_above, e) != 0)
            goto fail;
        if (c->b2e_above == NULL) {
            sl_error_set(e, SL_EINVAL, "", "%s: \"b2e_listen\" needs "
                         "\"b2e_above\", the layers above each bridged "
                         "client's obfuscation (e.g. \"e2e signing_key=FILE "
                         "| picomux\")", sl_config_where(c->cfg, "/b2e_listen",
                                                          where,
                                                          sizeof(where)));
            goto fail;
        }
        sl_error_clear(&pe);
        above = sl_stack_parse_above(c->b2e_above, &pe);
        if (above == NULL) {
            sl_error_set(e, pe.code, "", "%s: %s",
                         sl_config_where(c->cfg, "/b2e_above", where,
                                         sizeof(where)), pe.text);
            goto fail;
        }
        if (sl_stack_produces(above) != SL_IO_SESSION) {
            sl_stack_free(above);
            sl_error_set(e, SL_EINVAL, "", "%s: b2e_above must end in a mux "
                         "layer such as picomux",
                         sl_config_where(c->cfg, "/b2e_above", where,
                                         sizeof(where)));
            goto fail;
        }
        sl_stack_free(above);
    } else if (sl_config_get(c->cfg, "/b2e_above") != NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s: \"b2e_above\" without "
                     "\"b2e_listen\"", sl_config_where(c->cfg, "/b2e_above",
                                                       where, sizeof(where)));
        goto fail;
    }
    if (c->nlisten == 0 && c->b2e == NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s: nothing to listen on: give "
                     "\"listen\" (an array of stacks) or \"b2e_listen\"",
                     path);
        goto fail;
    }
    return c;
fail:
    conf_free(c);
    return NULL;
}

/* ---- sessions and tunnels -------------------------------------------------- */

static void tunnel_fail(struct tunnel *t, const char *text);

static void
xs_maybe_free(struct xsess *xs)
{
    if (xs->s != NULL || xs->ntunnels > 0 || xs->reap_pending)
        return;
    LIST_DEL(xs->app->sessions, xs);
    json_decref(xs->meta);
    free(xs);
}

static void
tunnel_free(struct tunnel *t)
{
    struct xsess *xs = t->xs;

    LIST_DEL(t->app->tunnels, t);
    relay_free(t->relay);
    if (t->udp_ev != NULL)
        event_free(t->udp_ev);
    if (t->udp_idle != NULL)
        event_free(t->udp_idle);
    if (t->udp_fd >= 0)
        close(t->udp_fd);
    sl_pipe_free(t->stream);
    sl_dialer_free(t->dialer);
    free(t);
    xs->ntunnels--;
    xs_maybe_free(xs);
}

/* Ends a tunnel whose resolve or dial may still be pending: cancels it,
 * and its callback frees the tunnel. */
static void
tunnel_cancel(struct tunnel *t)
{
    t->cancelled = 1;
    sl_pipe_free(t->stream);
    t->stream = NULL;
    if (t->resolve_req != NULL)
        core_resolve_cancel(t->resolve_req);
    else if (t->dial_op != NULL)
        sl_dial_op_cancel(t->dial_op);
    else
        tunnel_free(t);
}

static void
relay_done(void *arg, const struct relay_stats *st, const char *why)
{
    struct tunnel *t = arg;
    int64_t ms = sl_now_ms() - t->start_ms;

    sl_log(SL_LOG_INFO, "", "session %lu: tunnel %s %s (%s): %llu bytes up, "
           "%llu down, %lld.%03lld s, %s", t->xs->id,
           t->cmd.proto == TUN_UDP ? "udp" : "tcp", t->dest, t->resolved,
           (unsigned long long)st->b_to_a, (unsigned long long)st->a_to_b,
           (long long)(ms / 1000), (long long)(ms % 1000), why);
    t->relay = NULL;
    tunnel_free(t);
}

static void
send_reply(struct tunnel *t, char *json)
{
    if (json == NULL)
        return;
    tun_msg_put(bufferevent_get_output(sl_pipe_get0_bev(t->stream)), json,
                strlen(json));
    free(json);
}

static void
tunnel_fail(struct tunnel *t, const char *text)
{
    sl_log(SL_LOG_INFO, "", "session %lu: tunnel %s %s refused: %s",
           t->xs->id, t->cmd.proto == TUN_UDP ? "udp" : "tcp", t->dest, text);
    if (t->stream != NULL) {
        if (t->cmd.rich) {
            /* The reply goes out, then the stream closes. */
            send_reply(t, tun_reply_fail(text));
            sl_pipe_close(t->stream, FAIL_CLOSE_MS, NULL, NULL);
        } else {
            sl_pipe_free(t->stream);
        }
        t->stream = NULL;
    }
    tunnel_free(t);
}

/* Maps a dial failure to the text a client can turn into a SOCKS5 code. */
static const char *
dial_fail_text(const struct sl_error *err)
{
    if (err->code == SL_ETIMEDOUT)
        return TUN_FAIL_TIMEOUT;
    if (err->code == SL_ESYS) {
        switch (err->sys_errno) {
        case ECONNREFUSED: return TUN_FAIL_REFUSED;
        case EHOSTUNREACH: return TUN_FAIL_UNREACH;
        case ENETUNREACH: return TUN_FAIL_NETUNR;
        case ETIMEDOUT: return TUN_FAIL_TIMEOUT;
        default: break;
        }
    }
    return "connection failed";
}

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct tunnel *t = arg;
    char text[400], buf[256];

    t->dial_op = NULL;
    sl_session_free(s);   /* a tcp stack makes pipes only */
    if (t->cancelled) {
        sl_pipe_free(p);
        tunnel_free(t);
        return;
    }
    if (p == NULL) {
        snprintf(text, sizeof(text), "%s: %s", dial_fail_text(err),
                 sl_error_str(err, buf, sizeof(buf)));
        tunnel_fail(t, text);
        return;
    }
    t->open_ms = sl_now_ms() - t->start_ms;
    sl_pipe_remote_addr(p, t->resolved, sizeof(t->resolved));
    if (t->cmd.rich)
        send_reply(t, tun_reply_ok(t->resolved, (long)t->open_ms));
    sl_log(SL_LOG_DEBUG, "", "session %lu: tunnel %s connected to %s in "
           "%lld ms", t->xs->id, t->dest, t->resolved, (long long)t->open_ms);
    t->state = T_RELAY;
    t->relay = relay_new(t->app->base, t->stream, p,
                         (int)t->app->conf->idle_timeout_ms, relay_done, t);
    t->stream = NULL;
    if (t->relay == NULL) {
        sl_log(SL_LOG_ERR, "", "out of memory");
        tunnel_free(t);
    }
}

/* ---- UDP and DNS tunnels (§7.5): datagrams framed as a little-endian
 * u16 length and the datagram, both ways, over a connected socket. ---- */

static void
udp_end(struct tunnel *t, const char *why)
{
    int64_t ms = sl_now_ms() - t->start_ms;

    sl_log(SL_LOG_INFO, "", "session %lu: tunnel udp %s (%s): %llu bytes "
           "up, %llu down, %llu datagrams dropped, %lld.%03lld s, %s",
           t->xs->id, t->dest, t->resolved,
           (unsigned long long)t->udp_up, (unsigned long long)t->udp_down,
           (unsigned long long)t->udp_dropped, (long long)(ms / 1000),
           (long long)(ms % 1000), why);
    if (t->stream != NULL) {
        sl_pipe_close(t->stream, FAIL_CLOSE_MS, NULL, NULL);
        t->stream = NULL;
    }
    tunnel_free(t);
}

static void
udp_stream_read(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned char hdr[2], *dgram;
    size_t len;

    while (evbuffer_copyout(in, hdr, 2) == 2) {
        len = (size_t)hdr[0] | (size_t)hdr[1] << 8;
        if (evbuffer_get_length(in) < 2 + len)
            break;
        evbuffer_drain(in, 2);
        dgram = evbuffer_pullup(in, (ev_ssize_t)len);
        if (len == 0 || dgram != NULL) {
            /* A full socket buffer drops the datagram, as UDP may. */
            if (send(t->udp_fd, len ? dgram : hdr, len, 0) < 0)
                t->udp_dropped++;
            else
                t->udp_up += len;
        }
        evbuffer_drain(in, len);
        t->udp_last_ms = sl_now_ms();
    }
}

static void
udp_stream_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & BEV_EVENT_ERROR)
        udp_end(arg, "client stream failed");
    else if (what & BEV_EVENT_EOF)
        udp_end(arg, "done");
}

static void
udp_readable(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    struct evbuffer *out = bufferevent_get_output(sl_pipe_get0_bev(t->stream));
    unsigned char buf[65536];

    (void)what;
    /* A bounded number of datagrams per wakeup keeps the loop fair. */
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        unsigned char hdr[2];

        if (n < 0)
            break;   /* EAGAIN, or an ICMP error from an earlier send */
        if (n > 65535)
            n = 65535;
        t->udp_last_ms = sl_now_ms();
        if (evbuffer_get_length(out) > UDP_OUT_MAX) {
            t->udp_dropped++;
            continue;
        }
        hdr[0] = (unsigned char)(n & 0xff);
        hdr[1] = (unsigned char)(n >> 8);
        evbuffer_add(out, hdr, 2);
        evbuffer_add(out, buf, (size_t)n);
        t->udp_down += (uint64_t)n;
    }
}

static void
udp_idle_check(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    int64_t quiet = sl_now_ms() - t->udp_last_ms;
    struct timeval tv;

    (void)fd;
    (void)what;
    if (quiet >= UDP_IDLE_MS) {
        udp_end(t, "idle");
        return;
    }
    quiet = UDP_IDLE_MS - quiet;
    tv.tv_sec = (time_t)(quiet / 1000);
    tv.tv_usec = (suseconds_t)(quiet % 1000) * 1000;
    evtimer_add(t->udp_idle, &tv);
}

/* First IPv4 address only, as the Rust exit (§7.4). */
static void
udp_start(struct tunnel *t, const struct addrinfo *ai)
{
    struct app *a = t->app;
    const struct addrinfo *i;
    struct timeval tv = { UDP_IDLE_MS / 1000, 0 };
    char text[300];

    for (i = ai; i != NULL && i->ai_family != AF_INET; i = i->ai_next)
        ;
    if (i == NULL) {
        tunnel_fail(t, TUN_FAIL_DNS ": no IPv4 address for a udp tunnel");
        return;
    }
    if (((const struct sockaddr_in *)i->ai_addr)->sin_port == htons(443)) {
        tunnel_fail(t, "udp to port 443 (QUIC) refused");
        return;
    }
    xc_format_addr(i->ai_addr, t->resolved, sizeof(t->resolved));
    t->udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                       0);
    if (t->udp_fd < 0 || connect(t->udp_fd, i->ai_addr, i->ai_addrlen) != 0) {
        snprintf(text, sizeof(text), "%s: %s",
                 errno == ENETUNREACH ? TUN_FAIL_NETUNR : TUN_FAIL_UNREACH,
                 strerror(errno));
        tunnel_fail(t, text);
        return;
    }
    t->udp_ev = event_new(a->base, t->udp_fd, EV_READ | EV_PERSIST,
                          udp_readable, t);
    t->udp_idle = evtimer_new(a->base, udp_idle_check, t);
    if (t->udp_ev == NULL || t->udp_idle == NULL) {
        tunnel_fail(t, "out of memory");
        return;
    }
    t->state = T_UDP;
    t->udp_last_ms = sl_now_ms();
    if (t->cmd.rich)
        send_reply(t, tun_reply_ok(t->resolved, -1));
    event_add(t->udp_ev, NULL);
    evtimer_add(t->udp_idle, &tv);
    sl_pipe_setcb(t->stream, udp_stream_read, NULL, udp_stream_event, t);
    bufferevent_enable(sl_pipe_get0_bev(t->stream), EV_READ | EV_WRITE);
}

static void
on_resolved(int err, const char *why, const struct addrinfo *ai, void *arg)
{
    struct tunnel *t = arg;
    struct app *a = t->app;
    /* DIAL_ADDRS_MAX clauses of at most 113 bytes each. */
    char text[600], alts[480], addr[64], refusal[160];
    size_t len = 0, n = 0;
    int name_allowed = 0;
    struct sl_error e;

    t->resolve_req = NULL;
    if (t->cancelled) {
        tunnel_free(t);
        return;
    }
    if (err != 0 || ai == NULL) {
        snprintf(text, sizeof(text), "%s: %s", TUN_FAIL_DNS,
                 why ? why : "no address");
        tunnel_fail(t, text);
        return;
    }
    exit_policy_check_name(a->conf->policy, t->cmd.host, &name_allowed,
                           refusal, sizeof(refusal));
    /* Every address must pass, so that a name cannot smuggle a private
     * address in next to a public one. */
    for (const struct addrinfo *i = ai; i != NULL; i = i->ai_next) {
        if (exit_policy_check_addr(a->conf->policy, i->ai_addr, name_allowed,
                                   refusal, sizeof(refusal)) != 0) {
            snprintf(text, sizeof(text), "%s: %s", TUN_FAIL_POLICY, refusal);
            tunnel_fail(t, text);
            return;
        }
    }
    if (t->cmd.proto == TUN_UDP) {
        udp_start(t, ai);
        return;
    }
    for (const struct addrinfo *i = ai; i != NULL && n < DIAL_ADDRS_MAX;
         i = i->ai_next) {
        if (i->ai_family != AF_INET && i->ai_family != AF_INET6)
            continue;
        xc_format_addr(i->ai_addr, addr, sizeof(addr));
        len += (size_t)snprintf(alts + len, sizeof(alts) - len,
                                "%stcp addr=%s connect_timeout=%lldms",
                                n ? ", " : "", addr,
                                (long long)a->conf->connect_timeout_ms);
        n++;
    }
    if (n == 0) {
        tunnel_fail(t, TUN_FAIL_DNS ": no IPv4 or IPv6 address");
        return;
    }
    /* One address: tcp's own connect timeout is the whole bound, and the
     * two combinators would only cost time on every tunnel. */
    if (n == 1)
        snprintf(text, sizeof(text), "%s", alts);
    else
        snprintf(text, sizeof(text), "timeout(%lldms, fallback(%s))",
                 (long long)a->conf->connect_timeout_ms, alts);
    sl_error_clear(&e);
    t->state = T_CONNECT;
    t->dialer = sl_dialer_parse(text, &e);
    if (t->dialer == NULL ||
        sl_dialer_dial(t->dialer, a->base, on_dialed, t, &t->dial_op,
                       &e) != 0) {
        char buf[256];

        t->dial_op = NULL;
        snprintf(text, sizeof(text), "connection failed: %s",
                 sl_error_str(&e, buf, sizeof(buf)));
        tunnel_fail(t, text);
    }
}

/* The client went away while its tunnel was being set up. */
static void
setup_event(struct bufferevent *bev, short what, void *arg)
{
    struct tunnel *t = arg;

    (void)bev;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    sl_log(SL_LOG_DEBUG, "", "session %lu: tunnel %s: client left during "
           "setup", t->xs->id, t->dest);
    tunnel_cancel(t);
}

static void
tunnel_start(struct xsess *xs, struct sl_pipe *stream,
             const struct tun_cmd *cmd, const char *refusal)
{
    struct app *a = xs->app;
    struct tunnel *t = calloc(1, sizeof(*t));
    struct sl_error e;
    char why[160];
    int name_allowed;

    if (t == NULL) {
        sl_pipe_free(stream);
        return;
    }
    t->app = a;
    t->xs = xs;
    t->stream = stream;
    t->cmd = *cmd;
    t->start_ms = sl_now_ms();
    t->open_ms = -1;
    t->udp_fd = -1;
    snprintf(t->dest, sizeof(t->dest), strchr(cmd->host, ':') ? "[%s]:%s"
             : "%s:%s", cmd->host, cmd->port);
    if (cmd->host[0] == '\0')
        snprintf(t->dest, sizeof(t->dest), "(bad command)");
    xs->ntunnels++;
    LIST_ADD(a->tunnels, t);
    sl_pipe_setcb(stream, NULL, NULL, setup_event, t);
    bufferevent_enable(sl_pipe_get0_bev(stream), EV_READ | EV_WRITE);
    if (refusal != NULL) {
        tunnel_fail(t, refusal);
        return;
    }
    if (xs->ntunnels > a->conf->max_streams) {
        tunnel_fail(t, "too many streams on this session");
        return;
    }
    if (exit_policy_check_name(a->conf->policy, cmd->host, &name_allowed,
                               why, sizeof(why)) != 0) {
        char text[300];

        snprintf(text, sizeof(text), "%s: %s", TUN_FAIL_POLICY, why);
        tunnel_fail(t, text);
        return;
    }
    sl_error_clear(&e);
    t->state = T_RESOLVE;
    t->resolve_req = core_resolve(a->base, cmd->host, cmd->port, AF_UNSPEC,
                                  on_resolved, t, &e);
    if (t->resolve_req == NULL) {
        char text[300], buf[256];

        snprintf(text, sizeof(text), "%s: %s", TUN_FAIL_DNS,
                 sl_error_str(&e, buf, sizeof(buf)));
        tunnel_fail(t, text);
    }
}

static void
xs_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
          size_t len, void *arg)
{
    struct xsess *xs = arg;
    struct tun_cmd cmd;
    struct sl_error e;
    int r;

    (void)s;
    if (!xs->have_meta && len > 0) {
        /* The first stream whose metadata is any JSON value carries the
         * session metadata (§7.1).  It is kept with the session; this
         * exit does no DNS filtering, the only use Geph makes of it. */
        json_error_t je;
        json_t *j = json_loadb(meta, len, JSON_DECODE_ANY, &je);

        if (j != NULL) {
            xs->have_meta = 1;
            xs->meta = j;
            sl_log(SL_LOG_DEBUG, "", "session %lu: metadata %.*s", xs->id,
                   (int)(len > 200 ? 200 : len), (const char *)meta);
            sl_pipe_free(stream);
            return;
        }
    }
    if (len > 0 && ((const char *)meta)[0] == '!') {
        sl_log(SL_LOG_INFO, "", "session %lu: closing stream '%.*s': not "
               "supported by this exit", xs->id, (int)(len > 40 ? 40 : len),
               (const char *)meta);
        sl_pipe_free(stream);
        return;
    }
    sl_error_clear(&e);
    memset(&cmd, 0, sizeof(cmd));
    r = tun_cmd_parse(meta, len, &cmd, &e);
    if (r == SL_ENOTSUP) {
        tunnel_start(xs, stream, &cmd, e.text);
        return;
    }
    if (r != 0) {
        sl_log(SL_LOG_INFO, "", "session %lu: dropping a stream: %s", xs->id,
               e.text);
        sl_pipe_free(stream);
        return;
    }
    tunnel_start(xs, stream, &cmd, NULL);
}

static void
xs_reap(void *arg)
{
    struct xsess *xs = arg;

    xs->reap_pending = 0;
    sl_session_free(xs->s);
    xs->s = NULL;
    xs_maybe_free(xs);
}

static void
xs_dead(struct sl_session *s, const struct sl_error *why, void *arg)
{
    struct xsess *xs = arg;
    char buf[256];

    (void)s;
    sl_log(SL_LOG_INFO, "", "session %lu ended: %s", xs->id,
           why ? sl_error_str(why, buf, sizeof(buf)) : "closed");
    if (xs->reap_pending)
        return;
    /* Not from inside the mux's own callback. */
    xs->reap_pending = 1;
    if (sl_defer(xs->app->base, xs_reap, xs) != 0)
        xs_reap(xs);
}

static void
session_new(struct app *a, struct sl_session *s, const char *via)
{
    struct xsess *xs = calloc(1, sizeof(*xs));

    if (xs == NULL) {
        sl_session_free(s);
        return;
    }
    xs->app = a;
    xs->s = s;
    xs->id = ++a->next_sess_id;
    LIST_ADD(a->sessions, xs);
    sl_log(SL_LOG_INFO, "", "session %lu: new %s session via %s", xs->id,
           sl_session_layer(s), via);
    sl_session_setcb(s, xs_stream, xs_dead, xs);
}

static void
on_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    (void)err;
    sl_pipe_free(p);   /* config checks make every stack end in a mux */
    if (s != NULL)
        session_new(arg, s, "a listen stack");
}

static void
on_b2e_client(struct sl_pipe *p, struct sl_session *s,
              const struct sl_error *err, void *arg)
{
    (void)err;
    sl_pipe_free(p);
    if (s != NULL)
        session_new(arg, s, "a bridge");
}

/* ---- b2e ----------------------------------------------------------------- */

static void
cache_entry_free(struct b2e_entry *b)
{
    sl_listener_free(b->l);
    sl_stack_free(b->stack);
    free(b->key);
    free(b);
}

static void
cache_clear(struct app *a)
{
    while (a->cache != NULL) {
        struct b2e_entry *b = a->cache;

        a->cache = b->next;
        cache_entry_free(b);
    }
    a->ncache = 0;
}

/* Drops handlers idle for CACHE_IDLE_MS, or the least recently used one
 * when room is needed. */
static void
cache_evict(struct app *a, int need_room)
{
    int64_t now = sl_now_ms();
    struct b2e_entry **lru = NULL;

    for (struct b2e_entry **bp = &a->cache; *bp != NULL;) {
        struct b2e_entry *b = *bp;

        if (now - b->last_ms > CACHE_IDLE_MS) {
            *bp = b->next;
            cache_entry_free(b);
            a->ncache--;
            continue;
        }
        if (lru == NULL || b->last_ms < (*lru)->last_ms)
            lru = bp;
        bp = &b->next;
    }
    if (need_room && a->ncache >= CACHE_MAX && lru != NULL) {
        struct b2e_entry *b = *lru;

        *lru = b->next;
        cache_entry_free(b);
        a->ncache--;
    }
}

static void
sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cache_evict(arg, 0);
}

static struct b2e_entry *
cache_get(struct app *a, const char *key, struct sl_error *e)
{
    struct b2e_entry *b;

    for (b = a->cache; b != NULL; b = b->next)
        if (strcmp(b->key, key) == 0)
            return b;
    cache_evict(a, 1);
    b = calloc(1, sizeof(*b));
    if (b == NULL || (b->key = strdup(key)) == NULL) {
        free(b);
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    b->stack = sl_stack_parse_above(key, e);
    if (b->stack == NULL ||
        (b->l = sl_listener_new_above(b->stack, a->base, on_b2e_client, a,
                                      e)) == NULL) {
        sl_stack_free(b->stack);
        free(b->key);
        free(b);
        return NULL;
    }
    b->next = a->cache;
    a->cache = b;
    a->ncache++;
    return b;
}

static void
blink_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
             size_t len, void *arg)
{
    struct blink *bl = arg;
    struct app *a = bl->app;
    char proto[4096], *full;
    struct sl_error e;
    struct b2e_entry *b;
    size_t fl;

    (void)s;
    sl_error_clear(&e);
    /* A bad B2eMetadata drops this stream only; the Rust exit drops the
     * whole link and every client on it (§11 note 4). */
    if (tun_obfs_to_stack(meta, len, proto, sizeof(proto), &e) != 0) {
        sl_log(SL_LOG_INFO, "", "b2e: dropping a stream: %s", e.text);
        sl_pipe_free(stream);
        return;
    }
    fl = strlen(proto) + strlen(a->conf->b2e_above) + 4;
    full = malloc(fl);
    if (full == NULL) {
        sl_pipe_free(stream);
        return;
    }
    snprintf(full, fl, "%s%s%s", proto, proto[0] ? " | " : "",
             a->conf->b2e_above);
    b = cache_get(a, full, &e);
    free(full);
    if (b == NULL) {
        char buf[256];

        sl_log(SL_LOG_INFO, "", "b2e: dropping a stream: its protocol has "
               "no handler: %s", sl_error_str(&e, buf, sizeof(buf)));
        sl_pipe_free(stream);
        return;
    }
    b->last_ms = sl_now_ms();
    sl_listener_feed(b->l, stream);
}

static void
blink_maybe_free(struct blink *bl)
{
    if (bl->s != NULL || bl->reap_pending)
        return;
    LIST_DEL(bl->app->links, bl);
    free(bl);
}

static void
blink_reap(void *arg)
{
    struct blink *bl = arg;

    bl->reap_pending = 0;
    sl_session_free(bl->s);
    bl->s = NULL;
    blink_maybe_free(bl);
}

static void
blink_dead(struct sl_session *s, const struct sl_error *why, void *arg)
{
    struct blink *bl = arg;
    char buf[256];

    (void)s;
    sl_log(SL_LOG_INFO, "", "b2e link ended: %s",
           why ? sl_error_str(why, buf, sizeof(buf)) : "closed");
    if (bl->reap_pending)
        return;
    bl->reap_pending = 1;
    if (sl_defer(bl->app->base, blink_reap, bl) != 0)
        blink_reap(bl);
}

static void
on_b2e_link(struct sl_pipe *p, struct sl_session *s,
            const struct sl_error *err, void *arg)
{
    struct app *a = arg;
    struct blink *bl;

    (void)err;
    sl_pipe_free(p);
    if (s == NULL)
        return;
    bl = calloc(1, sizeof(*bl));
    if (bl == NULL) {
        sl_session_free(s);
        return;
    }
    bl->app = a;
    bl->s = s;
    LIST_ADD(a->links, bl);
    sl_log(SL_LOG_INFO, "", "b2e link from a bridge");
    sl_session_setcb(s, blink_stream, blink_dead, bl);
}

/* ---- listening, reload, stop --------------------------------------------- */

static void
stop_listeners(struct app *a)
{
    for (size_t i = 0; i < a->nlisteners; i++)
        sl_listener_free(a->listeners[i]);
    a->nlisteners = 0;
    sl_listener_free(a->b2e_listener);
    a->b2e_listener = NULL;
}

static int
start_listeners(struct app *a, struct xconf *c, struct sl_error *e)
{
    char addrs[4096], addr[128];
    size_t len = 0;

    addrs[0] = '\0';
    for (size_t i = 0; i < c->nlisten; i++) {
        char *text;

        a->listeners[i] = sl_listener_new(c->listen[i], a->base, on_accept,
                                          a, e);
        if (a->listeners[i] == NULL)
            goto fail;
        a->nlisteners = i + 1;
        if (sl_listener_local_addr(a->listeners[i], addr, sizeof(addr)) != 0)
            snprintf(addr, sizeof(addr), "-");
        text = sl_stack_to_string(c->listen[i]);
        sl_log(SL_LOG_NOTICE, "", "listening on %s (%s)", addr,
               text ? text : "?");
        free(text);
        len += (size_t)snprintf(addrs + len, sizeof(addrs) - len,
                                "listen %s\n", addr);
        if (len >= sizeof(addrs))
            len = sizeof(addrs) - 1;
    }
    if (c->b2e != NULL) {
        a->b2e_listener = sl_listener_new(c->b2e, a->base, on_b2e_link, a, e);
        if (a->b2e_listener == NULL)
            goto fail;
        if (sl_listener_local_addr(a->b2e_listener, addr, sizeof(addr)) != 0)
            snprintf(addr, sizeof(addr), "-");
        sl_log(SL_LOG_NOTICE, "", "listening for bridges on %s", addr);
        snprintf(addrs + len, sizeof(addrs) - len, "b2e %s\n", addr);
    }
    if (a->addr_file != NULL && xc_write_file(a->addr_file, addrs, e) != 0)
        goto fail;
    return 0;
fail:
    stop_listeners(a);
    return e->code;
}

static void
on_stop(void *arg)
{
    struct app *a = arg;

    sl_log(SL_LOG_NOTICE, "", "stopping");
    event_base_loopexit(a->base, NULL);
}

static void
on_reload(void *arg)
{
    struct app *a = arg;
    struct sl_error e, e2;
    struct xconf *c;
    char buf[512];

    sl_error_clear(&e);
    c = conf_load(a->cfg_path, 0, &e);
    if (c == NULL) {
        sl_log(SL_LOG_ERR, "", "reload failed, keeping the old "
               "configuration: %s", sl_error_str(&e, buf, sizeof(buf)));
        return;
    }
    /* The new stacks usually listen on the same addresses: release them
     * first, and go back to the old ones if the new cannot listen.
     * Sessions and tunnels already running are not touched. */
    stop_listeners(a);
    if (start_listeners(a, c, &e) != 0) {
        sl_log(SL_LOG_ERR, "", "reload failed, keeping the old "
               "configuration: %s", sl_error_str(&e, buf, sizeof(buf)));
        conf_free(c);
        sl_error_clear(&e2);
        if (start_listeners(a, a->conf, &e2) != 0) {
            sl_log(SL_LOG_ERR, "", "cannot listen again with the old "
                   "configuration: %s", sl_error_str(&e2, buf, sizeof(buf)));
            a->exit_code = 1;
            event_base_loopexit(a->base, NULL);
        }
        return;
    }
    /* b2e handlers were built with the old b2e_above. */
    cache_clear(a);
    conf_free(a->conf);
    a->conf = c;
    sl_log(SL_LOG_NOTICE, "", "configuration reloaded");
}

static int
no_wait(void *arg)
{
    (void)arg;
    return 1;
}

static int
all_gone(void *arg)
{
    struct app *a = arg;

    /* Sessions freed with frames still queued close their lower pipes
     * gracefully; those count in sl_pipe_count() until they are gone. */
    return a->tunnels == NULL && a->sessions == NULL && a->links == NULL &&
           relay_closing() == 0 && sl_pipe_count() == 0;
}

static void
shutdown_all(struct app *a)
{
    stop_listeners(a);
    cache_clear(a);
    for (struct tunnel *t = a->tunnels, *next; t != NULL; t = next) {
        next = t->next;
        if (t->relay != NULL) {
            relay_free(t->relay);
            t->relay = NULL;
            tunnel_free(t);
        } else {
            tunnel_cancel(t);
        }
    }
    for (struct xsess *xs = a->sessions, *next; xs != NULL; xs = next) {
        next = xs->next;
        sl_session_free(xs->s);
        xs->s = NULL;
        xs_maybe_free(xs);
    }
    for (struct blink *bl = a->links, *next; bl != NULL; bl = next) {
        next = bl->next;
        sl_session_free(bl->s);
        bl->s = NULL;
        blink_maybe_free(bl);
    }
    /* Cancelled resolves and dials call back from the loop; failure
     * replies finish flushing. */
    xc_drain(a->base, all_gone, a, FAIL_CLOSE_MS + 1000);
    /* Lingering closes that outlived the bound are cut short. */
    relay_closing_abort();
    xc_drain(a->base, no_wait, NULL, 0);
}

/* ---- --print-pubkey ---------------------------------------------------------- */

static const char *
e2e_key_path(const struct sl_stack *s)
{
    for (size_t i = 0; s != NULL && i < sl_stack_len(s); i++) {
        const struct sl_opts *o = sl_stack_opts_at(s, i);

        if (strcmp(sl_layer_get0_ops(sl_stack_layer_at(s, i))->name,
                   "e2e") == 0 && sl_opts_has(o, "signing_key"))
            return sl_opts_str(o, "signing_key");
    }
    return NULL;
}

static int
print_pubkey(struct xconf *c, struct sl_error *e)
{
    const char *path = NULL;
    struct sl_stack *above = NULL;
    uint8_t seed[E2E_SEED_LEN], pk[E2E_PK_LEN];
    char hex[E2E_PK_HEX_LEN + 1];
    int r;

    for (size_t i = 0; path == NULL && i < c->nlisten; i++)
        path = e2e_key_path(c->listen[i]);
    if (path == NULL && c->b2e_above != NULL) {
        above = sl_stack_parse_above(c->b2e_above, e);
        path = e2e_key_path(above);
    }
    if (path == NULL) {
        sl_stack_free(above);
        return sl_error_set(e, SL_EINVAL, "", "no e2e layer with "
                            "signing_key=FILE in \"listen\" or "
                            "\"b2e_above\"");
    }
    if (sodium_init() < 0) {
        sl_stack_free(above);
        return sl_error_set(e, SL_ESYS, "", "libsodium failed to start");
    }
    r = e2e_key_load_or_create(path, seed, pk, e);
    sl_stack_free(above);
    sodium_memzero(seed, sizeof(seed));
    if (r != 0)
        return r;
    e2e_pk_to_hex(pk, hex);
    printf("%s\n", hex);
    return 0;
}

/* ---- main ------------------------------------------------------------------ */

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check", no_argument, NULL, 'k' },
        { "print-pubkey", no_argument, NULL, 'p' },
        { "addr-file", required_argument, NULL, 'a' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct app a;
    struct sl_error e;
    char buf[512];
    int ch, check = 0, pubkey = 0;

    sl_tune_malloc();
    memset(&a, 0, sizeof(a));
    sl_log_set_prefix("sillad-exit");
    while ((ch = getopt_long(argc, argv, "c:kpa:vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': a.cfg_path = optarg; break;
        case 'k': check = 1; break;
        case 'p': pubkey = 1; break;
        case 'a': a.addr_file = optarg; break;
        case 'v': a.verbose++; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || a.cfg_path == NULL || (check && pubkey)) {
        usage(stderr);
        return 2;
    }
    sl_error_clear(&e);
    a.conf = conf_load(a.cfg_path, 1, &e);
    if (a.conf == NULL)
        goto fail;
    if (a.verbose > 0)
        sl_log_set_level(a.verbose > 1 ? SL_LOG_DEBUG : SL_LOG_INFO);
    if (check) {
        printf("%s: configuration OK\n", a.cfg_path);
        goto out;
    }
    if (pubkey) {
        if (print_pubkey(a.conf, &e) != 0)
            goto fail;
        goto out;
    }
    a.base = event_base_new();
    if (a.base == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "cannot create event loop");
        goto fail;
    }
    /* Before the address file tells that we are up: a signal sent as
     * soon as it appears must reach our handlers, not kill us. */
    a.sig = sl_signals_new(a.base, on_stop, on_reload, &a);
    if (start_listeners(&a, a.conf, &e) != 0)
        goto fail;
    a.sweep_ev = event_new(a.base, -1, EV_PERSIST, sweep, &a);
    if (a.sweep_ev != NULL) {
        struct timeval tv = { 60, 0 };

        event_add(a.sweep_ev, &tv);
    }
    event_base_dispatch(a.base);
    goto out;
fail:
    fprintf(stderr, "sillad-exit: %s\n", sl_error_str(&e, buf, sizeof(buf)));
    a.exit_code = 1;
out:
    if (a.base != NULL)
        shutdown_all(&a);
    if (a.sweep_ev != NULL)
        event_free(a.sweep_ev);
    sl_signals_free(a.sig);
    conf_free(a.conf);
    if (a.base != NULL) {
        sl_resolver_release(a.base);
        event_base_free(a.base);
    }
    sl_loader_unload_all();
    return a.exit_code;
}
