/* relay.c - copies bytes both ways between two pipes (see relay.h).
 *
 * Each side is one pipe's bufferevent.  Reading side X moves X's input to
 * the output of the other side Y (evbuffer_add_buffer moves chains, no
 * copy).  X stops being read while Y's backlog (backlog()) is at X's
 * window, and is read again once the backlog is down to half of it: from
 * Y's write callback (Y's write low watermark is half the window) or from
 * a callback on the input of the layer's end of Y's pair, which drains
 * as the layer sends.  X's window follows the rate X's bytes move at
 * (rate_update), and bounds X's input too (its read high watermark), so
 * that the layer below X reads no more than the relay can pass on.
 *
 * The user end of every layer's pipe is one end of a bufferevent pair, and
 * a pair may report EOF before all of its data has moved: a flush with
 * BEV_FINISHED moves only what fits under the reader's high watermark and
 * the rest follows as the reader drains.  So a side counts as ended only
 * once its input is empty and nothing waits in its partner's output.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "relay.h"
#include "sillad.h"

struct side {
    struct relay *r;
    struct sl_pipe *p;
    struct bufferevent *bev;
    int idx;                    /* 0 = a, 1 = b */
    unsigned half_close : 1;    /* the layer can end one direction alone */
    unsigned paused : 1;        /* reading off: the other side is full */
    unsigned eof_seen : 1;      /* the pipe reported EOF */
    unsigned ended : 1;         /* ... and everything it sent has moved */
    unsigned shut : 1;          /* we asked for shutdown_write */
    /* Bytes read from this side may wait towards the other side up to
     * win (see backlog()); win follows the rate they move at. */
    size_t win;
    uint64_t period_bytes;      /* read since period_t0 */
    int64_t period_t0;
    /* This side's layer end of the pair (its input holds what we wrote
     * and the layer has not sent yet), and our callback on that input. */
    struct evbuffer *pin;
    struct evbuffer_cb_entry *pin_cb;
};

struct relay {
    struct event_base *base;
    struct side s[2];
    struct event *idle_ev;
    struct event *kick_ev;      /* relays input waiting at the start */
    int idle_ms;
    int64_t last_ms;            /* last time a byte moved */
    relay_done_fn *done;
    void *arg;
    struct relay_stats st;
};

/* Graceful closes in progress.  A layer with half-close (tcp) whose peer
 * may still send gets a lingering close: shutdown_write, which sends
 * everything then FIN, and the pipe is kept, its input read and dropped,
 * until the peer ends too or the bound passes.  Freeing it at once would
 * close the socket with input unread or still arriving, and the kernel
 * answers that with a reset, which throws away what the peer has not
 * read yet of our last bytes.  Otherwise (the peer has ended, or a layer
 * without half-close such as a picomux stream) sl_pipe_close is enough:
 * the layer sends what it accepted after the pipe is freed. */
struct lingering {
    struct sl_pipe *p;
    struct event *timer;
    struct lingering *prev, *next;
};

static struct lingering *lingers;
static long closing_count;

long
relay_closing(void)
{
    return closing_count;
}

static void
closed_cb(void *arg)
{
    (void)arg;
    closing_count--;
}

static void
linger_end(struct lingering *l)
{
    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        lingers = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    sl_pipe_free(l->p);
    event_free(l->timer);
    free(l);
    closing_count--;
}

static void
linger_readcb(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);

    (void)arg;
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void
linger_eventcb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        linger_end(arg);
}

static void
linger_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    linger_end(arg);
}

static int pipe_half_close(struct sl_pipe *p);
static void pin_detach(struct side *sd);

static void linger_start(struct sl_pipe *p, int peer_ended, int64_t ms);

void
relay_close_pipe(struct sl_pipe *p, int peer_ended)
{
    linger_start(p, peer_ended, RELAY_CLOSE_MS);
}

/* ms bounds the wait for the peer's end (RELAY_CLOSE_MS at least). */
static void
linger_start(struct sl_pipe *p, int peer_ended, int64_t ms)
{
    struct lingering *l = NULL;
    struct bufferevent *bev;
    struct timeval tv;

    if (p == NULL)
        return;
    closing_count++;
    bev = sl_pipe_get0_bev(p);
    /* Once the peer has ended, nothing more comes in: the layer sends
     * what it accepted, then FIN (tcp does so after the pipe is freed). */
    if (peer_ended || !pipe_half_close(p) ||
        (l = calloc(1, sizeof(*l))) == NULL ||
        (l->timer = evtimer_new(bufferevent_get_base(bev), linger_timer_cb,
                                l)) == NULL) {
        free(l);
        sl_pipe_close(p, RELAY_CLOSE_MS, closed_cb, NULL);
        return;
    }
    l->p = p;
    l->next = lingers;
    if (lingers != NULL)
        lingers->prev = l;
    lingers = l;
    sl_pipe_setcb(p, linger_readcb, NULL, linger_eventcb, l);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    if (!sl_pipe_write_shut(p))
        sl_pipe_shutdown_write(p);
    if (ms < RELAY_CLOSE_MS)
        ms = RELAY_CLOSE_MS;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    evtimer_add(l->timer, &tv);
}

void
relay_closing_abort(void)
{
    while (lingers != NULL)
        linger_end(lingers);
}

/* A relay's pipe: the peer may be slow to take the rest (a slow link),
 * so the wait for its end is bounded by the relay's idle timeout. */
static void
close_gracefully(struct sl_pipe *p, int peer_ended, int idle_ms)
{
    linger_start(p, peer_ended, idle_ms > 0 ? idle_ms : RELAY_LINGER_MAX_MS);
}

/* Whether p's layer ends its send direction alone.  A pipe made by the
 * program itself (no registered layer) is taken to: its shutdown_write
 * is the program's own. */
static int
pipe_half_close(struct sl_pipe *p)
{
    const struct sl_layer *l = sl_layer_find(sl_pipe_get0_layer(p));

    if (l == NULL)
        return 1;
    return (sl_layer_get0_ops(l)->flags & SL_LF_HALF_CLOSE) != 0;
}

/* Ends the relay: frees or closes both pipes, frees r, then calls done.
 * failed is the index of the side to free at once (-1: none; 2: both). */
static void
finish(struct relay *r, int failed, const char *why)
{
    relay_done_fn *done = r->done;
    void *arg = r->arg;
    struct relay_stats st = r->st;
    char why_copy[300];

    snprintf(why_copy, sizeof(why_copy), "%s", why);
    for (int i = 0; i < 2; i++)
        pin_detach(&r->s[i]);
    for (int i = 0; i < 2; i++) {
        if (failed == i || failed == 2)
            sl_pipe_free(r->s[i].p);
        else
            close_gracefully(r->s[i].p, r->s[i].eof_seen, r->idle_ms);
        r->s[i].p = NULL;
    }
    if (r->idle_ev != NULL)
        event_free(r->idle_ev);
    event_free(r->kick_ev);
    free(r);
    if (done != NULL)
        done(arg, &st, why_copy);
}

static void
fail(struct side *sd, const char *what)
{
    struct relay *r = sd->r;
    char why[300];

    snprintf(why, sizeof(why), "%s: %s", sd->idx == 0 ? "a" : "b", what);
    finish(r, sd->idx, why);
}

/* Bytes written towards side `to` that have not left yet: its output,
 * and what the layer took from there and still holds (the input of the
 * layer's end of the pair: a picomux stream's data not yet framed, what
 * a tcp socket has not accepted yet). */
static size_t
backlog(const struct side *to)
{
    struct bufferevent *partner = bufferevent_pair_get_partner(to->bev);
    size_t n = evbuffer_get_length(bufferevent_get_output(to->bev));

    if (partner != NULL)
        n += evbuffer_get_length(bufferevent_get_input(partner));
    return n;
}

/* Sets the window of the bytes read from sd. */
static void
set_win(struct side *sd, size_t win)
{
    struct side *to = &sd->r->s[!sd->idx];

    sd->win = win;
    /* The layer below sd hands over no more than this at a time (tcp
     * reads no more from its socket than fits), ... */
    bufferevent_setwatermark(sd->bev, EV_READ, 0, win);
    /* ... and to's write callback runs once its output is down to half. */
    bufferevent_setwatermark(to->bev, EV_WRITE, win / 2, 0);
}

/* Sizes sd's window to about RELAY_PERIOD_MS of the bytes it moves: a
 * tunnel that carries bulk data at speed gets up to RELAY_HIGH, so the
 * next bytes are there when the far end takes them; one of many that
 * share a slow session keeps RELAY_MIN, and the rest waits in the
 * kernel's socket buffers.  The window at most quadruples or halves per
 * period. */
static void
rate_update(struct side *sd, size_t n, int64_t now)
{
    int64_t dt;
    uint64_t want;
    size_t w;

    sd->period_bytes += n;
    dt = now - sd->period_t0;
    if (dt < RELAY_PERIOD_MS)
        return;
    want = sd->period_bytes * RELAY_PERIOD_MS / (uint64_t)dt;
    for (w = RELAY_MIN; w < want && w < RELAY_HIGH; w *= 2)
        ;
    if (w > sd->win * 4)
        w = sd->win * 4;
    if (w < sd->win / 2)
        w = sd->win / 2;
    if (w < RELAY_MIN)
        w = RELAY_MIN;
    if (w > RELAY_HIGH)
        w = RELAY_HIGH;
    if (w != sd->win)
        set_win(sd, w);
    sd->period_bytes = 0;
    sd->period_t0 = now;
}

static void
resume(struct side *from)
{
    from->paused = 0;
    bufferevent_enable(from->bev, EV_READ);
}

/* The layer of side `to` took bytes out of its end of the pair: read the
 * other side again if to's backlog is down to half its window.  Runs
 * inside the layer's code: it only turns reading on (the pair moves what
 * waits; the read callback comes later, deferred). */
static void
pin_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct side *to = arg;
    struct side *from = &to->r->s[!to->idx];

    (void)buf;
    if (info->n_deleted == 0 || !from->paused || from->ended)
        return;
    if (backlog(to) <= from->win / 2)
        resume(from);
}

/* Removes our callback from the layer's end of sd's pair, if that still
 * exists (a layer may free it before its pipe is freed). */
static void
pin_detach(struct side *sd)
{
    struct bufferevent *partner;

    if (sd->pin_cb == NULL)
        return;
    partner = bufferevent_pair_get_partner(sd->bev);
    if (partner != NULL && bufferevent_get_input(partner) == sd->pin)
        evbuffer_remove_cb_entry(sd->pin, sd->pin_cb);
    sd->pin_cb = NULL;
    sd->pin = NULL;
}

/* Moves what sd has read to the other side; pauses sd if that side's
 * backlog is at sd's window. */
static void
pump(struct side *sd)
{
    struct relay *r = sd->r;
    struct side *to = &r->s[!sd->idx];
    struct evbuffer *in = bufferevent_get_input(sd->bev);
    struct evbuffer *out = bufferevent_get_output(to->bev);
    size_t n = evbuffer_get_length(in);

    if (n == 0)
        return;
    if (to->shut) {
        /* Cannot happen (to is shut only after sd ended); drop. */
        evbuffer_drain(in, n);
        return;
    }
    evbuffer_add_buffer(out, in);
    if (sd->idx == 0)
        r->st.a_to_b += n;
    else
        r->st.b_to_a += n;
    r->last_ms = sl_now_ms();
    rate_update(sd, n, r->last_ms);
    if (!sd->paused && backlog(to) >= sd->win) {
        sd->paused = 1;
        bufferevent_disable(sd->bev, EV_READ);
    }
}

/* Returns 1 if the relay was finished (r is freed). */
static int
check_ended(struct side *sd)
{
    struct relay *r = sd->r;
    struct side *to = &r->s[!sd->idx];
    struct bufferevent *partner;

    if (!sd->eof_seen || sd->ended)
        return 0;
    if (evbuffer_get_length(bufferevent_get_input(sd->bev)) > 0)
        return 0;
    partner = bufferevent_pair_get_partner(sd->bev);
    if (partner != NULL &&
        evbuffer_get_length(bufferevent_get_output(partner)) > 0)
        return 0;
    sd->ended = 1;
    bufferevent_disable(sd->bev, EV_READ);
    if (!to->shut) {
        /* After what is already queued for it. */
        to->shut = 1;
        sl_pipe_shutdown_write(to->p);
    }
    /* Without half-close on either side, the end of one direction is the
     * end of both: a stream that got or sent FIN takes no more bytes. */
    if (!sd->half_close || !to->half_close || to->ended) {
        finish(r, -1, "done");
        return 1;
    }
    return 0;
}

static void
readcb(struct bufferevent *bev, void *arg)
{
    struct side *sd = arg;

    (void)bev;
    pump(sd);
    check_ended(sd);
}

/* sd's output is down to half the other side's window: read that side
 * again, unless the layer still holds too much (then pin_cb will). */
static void
writecb(struct bufferevent *bev, void *arg)
{
    struct side *sd = arg;
    struct side *from = &sd->r->s[!sd->idx];

    (void)bev;
    sd->r->last_ms = sl_now_ms();
    if (from->paused && !from->ended && backlog(sd) <= from->win / 2)
        resume(from);
}

static void
eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct side *sd = arg;

    if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        const struct sl_error *e = sl_pipe_get0_error(sd->p);
        int err = EVUTIL_SOCKET_ERROR();
        char buf[256];

        if (e != NULL)
            sl_error_str(e, buf, sizeof(buf));
        else if (what & BEV_EVENT_TIMEOUT)
            snprintf(buf, sizeof(buf), "timed out");
        else
            snprintf(buf, sizeof(buf), "%s",
                     err != 0 ? evutil_socket_error_to_string(err)
                              : "connection error");
        fail(sd, buf);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        sd->eof_seen = 1;
        pump(sd);
        if (check_ended(sd))
            return;
        /* Data still in the pair's other end follows once we drain. */
        if (!sd->ended && !sd->paused)
            bufferevent_enable(bev, EV_READ);
    }
}

static void
idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct relay *r = arg;
    int64_t quiet = sl_now_ms() - r->last_ms;
    struct timeval tv;

    (void)fd;
    (void)what;
    if (quiet >= r->idle_ms) {
        finish(r, 2, "idle");
        return;
    }
    quiet = r->idle_ms - quiet;
    tv.tv_sec = (time_t)(quiet / 1000);
    tv.tv_usec = (suseconds_t)(quiet % 1000) * 1000;
    evtimer_add(r->idle_ev, &tv);
}

/* Input left by a handshake gets no new read callback from every kind of
 * bufferevent (a socket one without deferred callbacks): move it from an
 * event of our own. */
static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct relay *r = arg;

    (void)fd;
    (void)what;
    for (int i = 0; i < 2; i++) {
        if (r->s[i].paused)
            continue;
        pump(&r->s[i]);
        if (check_ended(&r->s[i]))
            return;
    }
}

struct relay *
relay_new(struct event_base *base, struct sl_pipe *a, struct sl_pipe *b,
          int idle_ms, relay_done_fn *done, void *arg)
{
    struct relay *r = calloc(1, sizeof(*r));
    struct sl_pipe *p[2] = { a, b };

    if (r == NULL)
        goto fail;
    r->base = base;
    r->idle_ms = idle_ms;
    r->done = done;
    r->arg = arg;
    r->last_ms = sl_now_ms();
    r->kick_ev = event_new(base, -1, 0, kick_cb, r);
    if (r->kick_ev == NULL)
        goto fail;
    if (idle_ms > 0) {
        struct timeval tv = { idle_ms / 1000, (idle_ms % 1000) * 1000 };

        r->idle_ev = evtimer_new(base, idle_cb, r);
        if (r->idle_ev == NULL)
            goto fail;
        evtimer_add(r->idle_ev, &tv);
    }
    for (int i = 0; i < 2; i++) {
        struct side *sd = &r->s[i];

        sd->r = r;
        sd->idx = i;
        sd->p = p[i];
        sd->bev = sl_pipe_get0_bev(p[i]);
        sd->half_close = pipe_half_close(p[i]) != 0;
        sd->period_t0 = r->last_ms;
    }
    for (int i = 0; i < 2; i++) {
        struct side *sd = &r->s[i];
        struct bufferevent *partner = bufferevent_pair_get_partner(sd->bev);

        set_win(sd, RELAY_MIN);
        if (partner != NULL) {
            sd->pin = bufferevent_get_input(partner);
            sd->pin_cb = evbuffer_add_cb(sd->pin, pin_cb, sd);
            if (sd->pin_cb == NULL) {
                pin_detach(&r->s[0]);
                goto fail;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        struct side *sd = &r->s[i];

        sl_pipe_setcb(sd->p, readcb, writecb, eventcb, sd);
        bufferevent_enable(sd->bev, EV_READ | EV_WRITE);
    }
    event_active(r->kick_ev, EV_TIMEOUT, 0);
    return r;
fail:
    if (r != NULL && r->idle_ev != NULL)
        event_free(r->idle_ev);
    if (r != NULL && r->kick_ev != NULL)
        event_free(r->kick_ev);
    free(r);
    sl_pipe_free(a);
    sl_pipe_free(b);
    return NULL;
}

void
relay_free(struct relay *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < 2; i++)
        pin_detach(&r->s[i]);
    for (int i = 0; i < 2; i++)
        sl_pipe_free(r->s[i].p);
    if (r->idle_ev != NULL)
        event_free(r->idle_ev);
    event_free(r->kick_ev);
    free(r);
}

void
relay_get_stats(const struct relay *r, struct relay_stats *st)
{
    *st = r->st;
}
