/* pipe.c - the pipe chain: one bufferevent per layer, owned by the core. */
#include "config.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "sillad.h"

struct sl_pipe {
    const char *layer;             /* static string of the layer */
    struct bufferevent *bev;
    struct sl_pipe *lower;
    struct sl_pipe *upper;         /* back pointer, for close completion */
    const struct sl_pipe_ops *ops;
    void *layer_ctx;
    struct sl_error err;
    struct sl_session *owned_session;
    struct evbuffer_cb_entry *drain_cb;
    struct event *close_timer;     /* graceful close deadline */
    int close_ms;                  /* ... counted from the last progress */
    sl_closed_fn *closed_cb;       /* called after a graceful close */
    void *closed_arg;
    unsigned shut_requested : 1;
    unsigned shut_done : 1;
    unsigned closing : 1;          /* sl_pipe_close in progress (top) */
    unsigned free_scheduled : 1;
    short held_events;             /* came in under sl_pipe_hold */
    struct event *held_ev;         /* looks for the owner of held events */
    int held_ms;                   /* ... after this long, doubling */
};

/* How often a pipe with held events looks for an owner that set its
 * callbacks directly (bufferevent_setcb, as a layer above does). */
#define HELD_RETRY_MS 1
#define HELD_RETRY_MAX_MS 1000

/* Tests compare this before and after to find leaked pipes. */
static atomic_long pipe_count;

long
sl_pipe_count(void)
{
    return atomic_load(&pipe_count);
}

static void hold_eventcb(struct bufferevent *bev, short what, void *arg);

static bool
has_callbacks(struct bufferevent *bev)
{
    bufferevent_data_cb readcb = NULL, writecb = NULL;
    bufferevent_event_cb eventcb = NULL;

    bufferevent_getcb(bev, &readcb, &writecb, &eventcb, NULL);
    return readcb != NULL || writecb != NULL || eventcb != NULL;
}

struct sl_pipe *
sl_pipe_new(const char *layer, struct bufferevent *bev, struct sl_pipe *lower,
            const struct sl_pipe_ops *ops, void *layer_ctx)
{
    struct sl_pipe *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        /* Consumes bev and lower even on failure, as documented. */
        if (ops != NULL && ops->destroy != NULL)
            ops->destroy(layer_ctx);
        if (bev != NULL)
            bufferevent_free(bev);
        sl_pipe_free(lower);
        return NULL;
    }
    p->layer = layer != NULL ? layer : "?";
    p->bev = bev;
    p->lower = lower;
    p->ops = ops;
    p->layer_ctx = layer_ctx;
    if (lower != NULL)
        lower->upper = p;
    /* Nobody owns the new pipe's callbacks yet: keep what comes. */
    if (bev != NULL && !has_callbacks(bev))
        sl_pipe_hold(p);
    atomic_fetch_add(&pipe_count, 1);
    return p;
}

struct bufferevent *
sl_pipe_get0_bev(struct sl_pipe *p)
{
    return p->bev;
}

struct sl_pipe *
sl_pipe_get0_lower(struct sl_pipe *p)
{
    return p->lower;
}

const char *
sl_pipe_get0_layer(const struct sl_pipe *p)
{
    return p->layer;
}

const struct sl_error *
sl_pipe_get0_error(struct sl_pipe *p)
{
    /* The deepest recorded cause is the most specific one. */
    const struct sl_error *found = NULL;

    for (; p != NULL; p = p->lower)
        if (p->err.code != 0)
            found = &p->err;
    return found;
}

void
sl_pipe_set_error(struct sl_pipe *p, const struct sl_error *err)
{
    if (p->err.code == 0 && err != NULL && err->code != 0)
        p->err = *err;
}

/* Raises the held events for an owner that set its event callback without
 * sl_pipe_setcb; until one has, looks again later, backing off. */
static void
held_check(evutil_socket_t fd, short what, void *arg)
{
    struct sl_pipe *p = arg;
    bufferevent_event_cb eventcb = NULL;
    void *cbarg = NULL;
    struct timeval tv;

    (void)fd;
    (void)what;
    if (p->held_events == 0)
        return;
    bufferevent_getcb(p->bev, NULL, NULL, &eventcb, &cbarg);
    if (eventcb != NULL && !(eventcb == hold_eventcb && cbarg == p)) {
        short held = p->held_events;

        p->held_events = 0;
        p->held_ms = 0;
        bufferevent_trigger_event(p->bev, held, BEV_TRIG_DEFER_CALLBACKS);
        return;
    }
    p->held_ms = p->held_ms == 0 ? HELD_RETRY_MS : p->held_ms * 2;
    if (p->held_ms > HELD_RETRY_MAX_MS)
        p->held_ms = HELD_RETRY_MAX_MS;
    tv.tv_sec = p->held_ms / 1000;
    tv.tv_usec = (p->held_ms % 1000) * 1000;
    evtimer_add(p->held_ev, &tv);
}

static void
hold_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct sl_pipe *p = arg;

    p->held_events |= what;
    if (p->held_ev == NULL)
        p->held_ev = evtimer_new(bufferevent_get_base(bev), held_check, p);
    /* Without memory for the timer only sl_pipe_setcb raises them. */
    if (p->held_ev != NULL && !evtimer_pending(p->held_ev, NULL))
        held_check(-1, 0, p);
}

void
sl_pipe_hold(struct sl_pipe *p)
{
    bufferevent_setcb(p->bev, NULL, NULL, hold_eventcb, p);
}

void
core_pipe_handover(struct sl_pipe *p)
{
    if (p != NULL && p->bev != NULL && !has_callbacks(p->bev))
        sl_pipe_hold(p);
}

void
sl_pipe_setcb(struct sl_pipe *p, bufferevent_data_cb readcb,
              bufferevent_data_cb writecb, bufferevent_event_cb eventcb,
              void *arg)
{
    short held = p->held_events;

    p->held_events = 0;
    p->held_ms = 0;
    if (p->held_ev != NULL)
        evtimer_del(p->held_ev);
    bufferevent_setcb(p->bev, readcb, writecb, eventcb, arg);
    /* An EOF or error that came while the pipe waited for its owner. */
    if (held != 0 && eventcb != NULL)
        bufferevent_trigger_event(p->bev, held, BEV_TRIG_DEFER_CALLBACKS);
    /* A handshake may have left bytes in the input; libevent only calls a
     * read callback for new data, so ask for one now (deferred). */
    if (readcb != NULL &&
        evbuffer_get_length(bufferevent_get_input(p->bev)) > 0)
        bufferevent_trigger(p->bev, EV_READ,
                            BEV_TRIG_IGNORE_WATERMARKS |
                                BEV_TRIG_DEFER_CALLBACKS);
}

int
sl_pipe_query(struct sl_pipe *p, int what, void *out, size_t *len)
{
    for (struct sl_pipe *q = p; q != NULL; q = q->lower) {
        if (q->ops != NULL && q->ops->query != NULL) {
            int r = q->ops->query(q->layer_ctx, what, out, len);

            if (r != SL_ENOTSUP)
                return r;
        }
        if (what == SL_Q_PROTOCOL && q == p) {
            /* Default: the protocol is the top layer's name. */
            size_t n = strlen(q->layer) + 1;

            if (*len < n)
                return SL_EINVAL;
            memcpy(out, q->layer, n);
            *len = n;
            return 0;
        }
        if (what == SL_Q_FD && q->lower == NULL && q->bev != NULL) {
            evutil_socket_t fd = bufferevent_getfd(q->bev);

            if (fd < 0 || *len < sizeof(int))
                return SL_ENOENT;
            *(int *)out = (int)fd;
            *len = sizeof(int);
            return 0;
        }
    }
    return SL_ENOENT;
}

static const char *
query_text(struct sl_pipe *p, int what, char *buf, size_t len)
{
    size_t n = len;

    if (len == 0)
        return buf;
    if (sl_pipe_query(p, what, buf, &n) != 0)
        buf[0] = '\0';
    buf[len - 1] = '\0';
    return buf;
}

const char *
sl_pipe_protocol(struct sl_pipe *p, char *buf, size_t len)
{
    return query_text(p, SL_Q_PROTOCOL, buf, len);
}

const char *
sl_pipe_remote_addr(struct sl_pipe *p, char *buf, size_t len)
{
    return query_text(p, SL_Q_REMOTE_ADDR, buf, len);
}

static void close_done(struct sl_pipe *top);

static void
do_shutdown(struct sl_pipe *p)
{
    struct sl_pipe *top;

    if (p->shut_done)
        return;
    p->shut_done = 1;
    if (p->drain_cb != NULL) {
        evbuffer_remove_cb_entry(bufferevent_get_output(p->bev), p->drain_cb);
        p->drain_cb = NULL;
    }
    if (p->ops != NULL && p->ops->shutdown_write != NULL) {
        int r = p->ops->shutdown_write(p->layer_ctx, p);

        if (r != 0)
            sl_log(SL_LOG_DEBUG, p->layer, "shutdown_write: %s",
                   sl_strerror(r));
    }
    else if (p->lower != NULL)
        sl_pipe_shutdown_write(p->lower);
    if (p->lower != NULL)
        return;
    /* The bottom of the chain has ended its send direction: if the top is
     * closing gracefully, everything has been handed to the system. */
    for (top = p; top->upper != NULL; top = top->upper)
        ;
    if (top->closing)
        close_done(top);
}

static void arm_close_timer(struct sl_pipe *p);

static void
drain_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
         void *arg)
{
    struct sl_pipe *p = arg;

    if (evbuffer_get_length(buf) == 0) {
        do_shutdown(p);
        return;
    }
    /* A graceful close gives up only when the bytes stop leaving: a
     * layer below that shares its bandwidth with many others (a mux) may
     * take far longer than the deadline to take a large backlog, and
     * giving up then would drop data the peer is still receiving. */
    if (info->n_deleted > 0 && p->closing)
        arm_close_timer(p);
}

int
sl_pipe_shutdown_write(struct sl_pipe *p)
{
    struct evbuffer *out;

    if (p->shut_requested)
        return 0;
    p->shut_requested = 1;
    out = bufferevent_get_output(p->bev);
    if (evbuffer_get_length(out) == 0) {
        do_shutdown(p);
        return 0;
    }
    p->drain_cb = evbuffer_add_cb(out, drain_cb, p);
    if (p->drain_cb == NULL)
        return SL_ENOMEM;
    return 0;
}

bool
sl_pipe_write_shut(const struct sl_pipe *p)
{
    return p->shut_requested;
}

void
sl_pipe_attach_session(struct sl_pipe *p, struct sl_session *s)
{
    p->owned_session = s;
}

static void
free_one(struct sl_pipe *p)
{
    if (p->close_timer != NULL)
        event_free(p->close_timer);
    if (p->held_ev != NULL)
        event_free(p->held_ev);
    if (p->drain_cb != NULL)
        evbuffer_remove_cb_entry(bufferevent_get_output(p->bev), p->drain_cb);
    if (p->ops != NULL && p->ops->destroy != NULL)
        p->ops->destroy(p->layer_ctx);
    if (p->bev != NULL)
        bufferevent_free(p->bev);
    if (p->owned_session != NULL)
        sl_session_free(p->owned_session);
    atomic_fetch_sub(&pipe_count, 1);
    free(p);
}

void
sl_pipe_free(struct sl_pipe *p)
{
    while (p != NULL) {
        struct sl_pipe *lower = p->lower;

        if (lower != NULL)
            lower->upper = NULL;
        free_one(p);
        p = lower;
    }
}

static void
close_free_deferred(void *arg)
{
    struct sl_pipe *p = arg;
    sl_closed_fn *cb = p->closed_cb;
    void *cb_arg = p->closed_arg;

    sl_pipe_free(p);
    if (cb != NULL)
        cb(cb_arg);
}

static void
close_done(struct sl_pipe *top)
{
    if (top->free_scheduled)
        return;
    top->free_scheduled = 1;
    /* We may be inside a callback of a bufferevent of this chain. */
    if (sl_defer(bufferevent_get_base(top->bev), close_free_deferred, top))
        close_free_deferred(top);
}

static void
arm_close_timer(struct sl_pipe *p)
{
    struct timeval tv;

    if (p->close_timer == NULL)
        return;
    tv.tv_sec = p->close_ms / 1000;
    tv.tv_usec = (p->close_ms % 1000) * 1000;
    evtimer_add(p->close_timer, &tv);
}

static void
close_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    close_done(arg);
}

static void
close_readcb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    /* Keep reading and discarding so the peer is never stalled. */
    evbuffer_drain(bufferevent_get_input(bev),
                   evbuffer_get_length(bufferevent_get_input(bev)));
}

static void
close_eventcb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & BEV_EVENT_ERROR)
        close_done(arg);
}

void
sl_pipe_close(struct sl_pipe *p, int timeout_ms, sl_closed_fn *done,
              void *arg)
{
    if (p == NULL || p->closing)
        return;
    p->closing = 1;
    p->close_ms = timeout_ms;
    p->closed_cb = done;
    p->closed_arg = arg;
    bufferevent_setcb(p->bev, close_readcb, NULL, close_eventcb, p);
    bufferevent_enable(p->bev, EV_READ | EV_WRITE);
    p->close_timer = evtimer_new(bufferevent_get_base(p->bev), close_timeout,
                                 p);
    if (p->close_timer == NULL) {
        close_done(p);
        return;
    }
    arm_close_timer(p);
    if (p->shut_requested) {
        /* Find whether the chain already finished its shutdown. */
        struct sl_pipe *q = p;

        while (q->lower != NULL)
            q = q->lower;
        if (q->shut_done)
            close_done(p);
        return;
    }
    sl_pipe_shutdown_write(p);
}
