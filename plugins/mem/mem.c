/* mem.c - the mem base layer: in-process pipes for tests.
 *
 * "mem addr=NAME:PORT" listens by registering NAME:PORT in a registry kept
 * in the plugin context (made by init, so it is per process and per loaded
 * plugin), and dials by looking the same name up on the same event_base.
 * A connection is one bufferevent pair: each end is the bufferevent of one
 * pipe.  This is test plumbing, not a transport: nothing leaves the process
 * and nothing is authenticated.  Listening on port 0 picks a free number,
 * which listener_query (SL_Q_LOCAL_ADDR) reads back as "NAME:N".
 *
 * A bufferevent pair tells one end nothing when the other is freed, so the
 * layer does: freeing an end passes what it had written on, then EOF; a
 * write to an end whose peer is gone fails with EPIPE, once, like a socket.
 * shutdown_write is a real half-close (the pair's BEV_FINISHED flush), and
 * each end's input is bounded by the "buffer" option: the pair stops moving
 * data above it and the writer's output backs up.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sillad/plugin.h"

#define LAYER "mem"
#define NAME_MAX_LEN 64
#define PORT_MAX 65535

struct mem_registry {
    struct mem_listener *listeners;
    unsigned next_port;          /* for port 0 */
    unsigned next_ephemeral;     /* local port of dialing ends */
};

struct mem_cfg {
    const struct sl_host *h;
    struct mem_registry *reg;
    char name[NAME_MAX_LEN + 1];
    unsigned port;
    size_t buffer;
};

struct mem_listener {
    struct mem_registry *reg;
    struct event_base *base;
    char name[NAME_MAX_LEN + 1];
    unsigned port;
    sl_pipe_fn *on_accept;
    void *arg;
    struct mem_listener *next;
};

struct mem_conn;

struct mem_end {
    const struct sl_host *h;
    struct mem_conn *conn;
    int side;                    /* 0 dialer, 1 listener */
    struct sl_pipe *pipe;
    struct bufferevent *bev;
    struct event *epipe_ev;      /* reports a write to a gone peer */
    struct evbuffer_cb_entry *orphan_cb;
    unsigned shut : 1;
    unsigned peer_gone : 1;
    unsigned epipe_done : 1;
    char local[NAME_MAX_LEN + 8];
    char remote[NAME_MAX_LEN + 8];
};

struct mem_conn {
    struct mem_end *end[2];
};

static void end_free_raw(struct mem_end *me);

struct mem_dial {
    struct mem_cfg *cfg;
    struct event_base *base;
    struct event *ev;
    sl_pipe_fn *done;
    void *arg;
    int canceled;
};

static const struct sl_opt_spec mem_opts[] = {
    { "addr", SL_OPT_STR, SL_OPT_REQUIRED, NULL,
      "NAME:PORT to dial, or to listen on (port 0 picks one)", NULL, 0, 0 },
    { "buffer", SL_OPT_SIZE, 0, "256k",
      "bytes each end's input holds before the writer backs up", NULL, 1024,
      1073741824 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/* ---- configuration ------------------------------------------------------ */

static int
parse_addr(const char *addr, char *name, unsigned *port)
{
    const char *colon = strrchr(addr, ':');
    size_t n;
    char *end;
    unsigned long v;

    if (colon == NULL)
        return -1;
    n = (size_t)(colon - addr);
    if (n == 0 || n > NAME_MAX_LEN || colon[1] == '\0')
        return -1;
    for (size_t i = 0; i < n; i++)
        if (addr[i] == ':' || addr[i] <= ' ')
            return -1;
    errno = 0;
    v = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || v > PORT_MAX || colon[1] == '-' ||
        colon[1] == '+')
        return -1;
    memcpy(name, addr, n);
    name[n] = '\0';
    *port = (unsigned)v;
    return 0;
}

static int
mem_configure(const struct sl_host *h, void *plugin_ctx,
              const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct mem_cfg *c;
    const char *addr = h->opt_str(o, "addr");

    if (plugin_ctx == NULL)
        return h->error_set(e, SL_EINVAL, LAYER, "plugin not initialised");
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    if (parse_addr(addr, c->name, &c->port) != 0) {
        free(c);
        return h->error_set(e, SL_EINVAL, LAYER, "address '%s' is not "
                            "NAME:PORT (a name of 1 to %d characters without "
                            "':' or blanks, a port 0 to %d)", addr,
                            NAME_MAX_LEN, PORT_MAX);
    }
    c->h = h;
    c->reg = plugin_ctx;
    c->buffer = (size_t)h->opt_int(o, "buffer");
    *out = c;
    return 0;
}

static void
mem_unconfigure(void *cfg)
{
    free(cfg);
}

/* ---- connections -------------------------------------------------------- */

static int
mem_query(void *layer_ctx, int what, void *out, size_t *len)
{
    struct mem_end *me = layer_ctx;
    const char *text;

    switch (what) {
    case SL_Q_REMOTE_ADDR:
        text = me->remote;
        break;
    case SL_Q_LOCAL_ADDR:
        text = me->local;
        break;
    case SL_Q_FD:
    case SL_Q_SHARED_SECRET:
        return SL_ENOENT;
    default:
        return SL_ENOTSUP;
    }
    return sl_query_answer_str(out, len, text);
}

static int
mem_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct mem_end *me = layer_ctx;

    (void)p;
    if (me->shut)
        return 0;
    me->shut = 1;
    /* Moves what is left to the peer and gives it EOF (deferred: pair
     * callbacks always are).  Without a peer there is nobody to tell. */
    if (!me->peer_gone)
        bufferevent_flush(me->bev, EV_WRITE, BEV_FINISHED);
    return 0;
}

/* A write after the peer went away: drop it and say EPIPE once. */
static void
epipe_fire(evutil_socket_t fd, short what, void *arg)
{
    struct mem_end *me = arg;
    struct evbuffer *out = bufferevent_get_output(me->bev);
    struct sl_error err;

    (void)fd;
    (void)what;
    /* A pair's output is frozen at the front (only the pair drains it). */
    evbuffer_unfreeze(out, 1);
    evbuffer_drain(out, evbuffer_get_length(out));
    evbuffer_freeze(out, 1);
    if (me->epipe_done)
        return;
    me->epipe_done = 1;
    memset(&err, 0, sizeof(err));
    me->h->error_sys(&err, EPIPE, LAYER, "write to %s after it closed",
                     me->remote);
    me->h->pipe_set_error(me->pipe, &err);
    EVUTIL_SET_SOCKET_ERROR(EPIPE);
    bufferevent_trigger_event(me->bev, BEV_EVENT_ERROR | BEV_EVENT_WRITING,
                              BEV_TRIG_DEFER_CALLBACKS);
}

static void
orphan_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
              void *arg)
{
    struct mem_end *me = arg;

    (void)buf;
    /* Never drain inside the buffer's own callback: from the loop. */
    if (info->n_added > 0)
        event_active(me->epipe_ev, EV_TIMEOUT, 0);
}

/* The other end of me's connection was freed. */
static void
peer_gone(struct mem_end *me)
{
    me->peer_gone = 1;
    me->orphan_cb = evbuffer_add_cb(bufferevent_get_output(me->bev),
                                    orphan_out_cb, me);
    if (evbuffer_get_length(bufferevent_get_output(me->bev)) > 0)
        event_active(me->epipe_ev, EV_TIMEOUT, 0);
}

static void
mem_destroy(void *layer_ctx)
{
    struct mem_end *me = layer_ctx;
    struct mem_conn *conn = me->conn;
    struct mem_end *other = conn->end[1 - me->side];

    /* Like close(2): what we wrote goes on, then the peer sees EOF (a
     * FINISHED flush on a pair is both). */
    if (other != NULL) {
        if (!me->shut)
            bufferevent_flush(me->bev, EV_WRITE, BEV_FINISHED);
        peer_gone(other);
    }
    conn->end[me->side] = NULL;
    if (other == NULL)
        free(conn);
    /* The core frees me->bev after this. */
    end_free_raw(me);
}

static const struct sl_pipe_ops mem_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = mem_shutdown_write,
    .query = mem_query,
    .destroy = mem_destroy,
};

static struct mem_end *
end_new(const struct sl_host *h, struct mem_conn *conn, int side,
        struct bufferevent *bev, struct event_base *base)
{
    struct mem_end *me = calloc(1, sizeof(*me));

    if (me == NULL)
        return NULL;
    me->h = h;
    me->conn = conn;
    me->side = side;
    me->bev = bev;
    me->epipe_ev = event_new(base, -1, 0, epipe_fire, me);
    if (me->epipe_ev == NULL) {
        free(me);
        return NULL;
    }
    return me;
}

/* Frees an end that never became a pipe (or whose pipe_new failed). */
static void
end_free_raw(struct mem_end *me)
{
    if (me == NULL)
        return;
    if (me->orphan_cb != NULL)
        evbuffer_remove_cb_entry(bufferevent_get_output(me->bev),
                                 me->orphan_cb);
    event_free(me->epipe_ev);
    free(me);
}

/* Makes both pipes of a connection to l; 0, or SL_E* with nothing left. */
static int
conn_new(struct mem_cfg *c, struct mem_listener *l, struct event_base *base,
         struct sl_pipe **client, struct sl_pipe **server, struct sl_error *e)
{
    const struct sl_host *h = c->h;
    struct mem_conn *conn = calloc(1, sizeof(*conn));
    struct bufferevent *pair[2] = { NULL, NULL };
    struct mem_end *me[2] = { NULL, NULL };
    struct sl_pipe *p0, *p1;
    unsigned eph;

    if (conn == NULL)
        goto nomem;
    if (bufferevent_pair_new(base, 0, pair) != 0) {
        free(conn);
        goto nomem;
    }
    for (int i = 0; i < 2; i++) {
        me[i] = end_new(h, conn, i, pair[i], base);
        if (me[i] == NULL) {
            end_free_raw(me[0]);
            bufferevent_free(pair[0]);
            bufferevent_free(pair[1]);
            free(conn);
            goto nomem;
        }
        /* Bounds what this end holds unread; the pair stops above it. */
        bufferevent_setwatermark(pair[i], EV_READ, 0, c->buffer);
        conn->end[i] = me[i];
    }
    eph = 1 + (l->reg->next_ephemeral++ % PORT_MAX);
    snprintf(me[0]->remote, sizeof(me[0]->remote), "%s:%u", l->name,
             l->port);
    snprintf(me[0]->local, sizeof(me[0]->local), "%s:%u", l->name, eph);
    snprintf(me[1]->local, sizeof(me[1]->local), "%s", me[0]->remote);
    snprintf(me[1]->remote, sizeof(me[1]->remote), "%s", me[0]->local);
    /* pipe_new consumes the bufferevent; on failure it runs our destroy,
     * which unlinks that end from conn and tells the other. */
    p0 = h->pipe_new(LAYER, pair[0], NULL, &mem_pipe_ops, me[0]);
    if (p0 == NULL) {
        end_free_raw(me[1]);
        bufferevent_free(pair[1]);
        free(conn);
        goto nomem;
    }
    me[0]->pipe = p0;
    p1 = h->pipe_new(LAYER, pair[1], NULL, &mem_pipe_ops, me[1]);
    if (p1 == NULL) {
        h->pipe_free(p0);         /* the last end: frees conn */
        goto nomem;
    }
    me[1]->pipe = p1;
    *client = p0;
    *server = p1;
    return 0;
nomem:
    return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
}

/* ---- dialing and listening ---------------------------------------------- */

static struct mem_listener *
find_listener(struct mem_registry *reg, const char *name, unsigned port)
{
    for (struct mem_listener *l = reg->listeners; l != NULL; l = l->next)
        if (l->port == port && strcmp(l->name, name) == 0)
            return l;
    return NULL;
}

/* Runs from the loop: connects (or fails) and calls back once each. */
static void
dial_fire(evutil_socket_t fd, short what, void *arg)
{
    struct mem_dial *d = arg;
    struct mem_cfg *c = d->cfg;
    const struct sl_host *h = c->h;
    sl_pipe_fn *done = d->done;
    void *done_arg = d->arg;
    struct sl_pipe *client = NULL, *server = NULL;
    struct mem_listener *l;
    struct sl_error err;

    (void)fd;
    (void)what;
    memset(&err, 0, sizeof(err));
    l = find_listener(c->reg, c->name, c->port);
    if (d->canceled)
        h->error_set(&err, SL_ECANCELED, LAYER, "dial cancelled");
    else if (l == NULL)
        h->error_sys(&err, ECONNREFUSED, LAYER, "nothing listens on %s:%u",
                     c->name, c->port);
    else if (l->base != d->base)
        h->error_set(&err, SL_EINVAL, LAYER, "%s:%u listens on another "
                     "event_base", c->name, c->port);
    else
        conn_new(c, l, d->base, &client, &server, &err);
    event_free(d->ev);
    free(d);
    /* The listener first: by the time the dialer writes, someone is
     * there.  It may free the listener; l is not used after. */
    if (server != NULL)
        l->on_accept(server, NULL, l->arg);
    done(client, client != NULL ? NULL : &err, done_arg);
}

static int
mem_dial(void *cfg, struct event_base *base, sl_pipe_fn *done, void *arg,
         void **op, struct sl_error *e)
{
    struct mem_cfg *c = cfg;
    struct mem_dial *d = calloc(1, sizeof(*d));

    if (d == NULL)
        return c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    d->cfg = c;
    d->base = base;
    d->done = done;
    d->arg = arg;
    d->ev = event_new(base, -1, 0, dial_fire, d);
    if (d->ev == NULL) {
        free(d);
        return c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    event_active(d->ev, EV_TIMEOUT, 0);
    *op = d;
    return 0;
}

static void
mem_cancel(void *op)
{
    struct mem_dial *d = op;

    /* dial_fire is already due; it reports SL_ECANCELED. */
    d->canceled = 1;
}

static int
mem_listen(void *cfg, struct event_base *base, sl_pipe_fn *on_accept,
           void *arg, void **out, struct sl_error *e)
{
    struct mem_cfg *c = cfg;
    struct mem_registry *reg = c->reg;
    struct mem_listener *l;
    unsigned port = c->port;

    if (port == 0) {
        /* The next number nobody uses under this name. */
        for (unsigned tries = 0; tries < PORT_MAX; tries++) {
            unsigned cand = 1 + (reg->next_port++ % PORT_MAX);

            if (find_listener(reg, c->name, cand) == NULL) {
                port = cand;
                break;
            }
        }
        if (port == 0)
            return c->h->error_set(e, SL_ELIMIT, LAYER, "no free port "
                                   "under the name %s", c->name);
    } else if (find_listener(reg, c->name, port) != NULL) {
        return c->h->error_sys(e, EADDRINUSE, LAYER, "listen on %s:%u",
                               c->name, port);
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    l->reg = reg;
    l->base = base;
    snprintf(l->name, sizeof(l->name), "%s", c->name);
    l->port = port;
    l->on_accept = on_accept;
    l->arg = arg;
    l->next = reg->listeners;
    reg->listeners = l;
    *out = l;
    return 0;
}

static int
mem_listener_query(void *listener, int what, void *out, size_t *len)
{
    struct mem_listener *l = listener;
    char buf[NAME_MAX_LEN + 8];

    if (what != SL_Q_LOCAL_ADDR)
        return SL_ENOTSUP;
    snprintf(buf, sizeof(buf), "%s:%u", l->name, l->port);
    return sl_query_answer_str(out, len, buf);
}

static void
mem_listener_free(void *listener)
{
    struct mem_listener *l = listener;
    struct mem_listener **pp;

    for (pp = &l->reg->listeners; *pp != NULL; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    free(l);
}

/* ---- the plugin --------------------------------------------------------- */

static int
mem_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    struct mem_registry *reg;
    int r;

    if ((r = sl_check_libevent(h, LAYER, e)) != 0)
        return r;
    reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    *plugin_ctx = reg;
    return 0;
}

static void
mem_teardown(void *plugin_ctx)
{
    struct mem_registry *reg = plugin_ctx;

    /* Listeners belong to their owners, who free them before shutdown;
     * forget any left so that none is reached through a freed registry. */
    while (reg != NULL && reg->listeners != NULL) {
        struct mem_listener *l = reg->listeners;

        reg->listeners = l->next;
        l->next = NULL;
    }
    free(reg);
}

static const struct sl_layer_ops mem_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "in-process pipes (test plumbing, same event_base only)",
    .kind = SL_KIND_BASE,
    .consumes = SL_IO_NONE,
    .produces = SL_IO_PIPE,
    .flags = SL_LF_HALF_CLOSE,
    .opts = mem_opts,
    .configure = mem_configure,
    .unconfigure = mem_unconfigure,
    .dial = mem_dial,
    .listen = mem_listen,
    .listener_query = mem_listener_query,
    .listener_free = mem_listener_free,
    .cancel = mem_cancel,
};

static const struct sl_layer_ops *const mem_layers[] = { &mem_layer, NULL };

SL_PLUGIN_DEFINE(mem, "in-process base layer for tests", PACKAGE_VERSION,
                 "ISC", "sillad", mem_layers, mem_init, mem_teardown)
