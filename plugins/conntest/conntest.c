/* conntest.c - the conntest wrap layer: Geph's echo pre-flight.
 *
 * Byte-compatible with Geph5's sillad-conntest (sillad-conntest(7),
 * sillad-and-stacks.md §2.5).  Right after the layers below are up, the
 * client runs ping_count rounds, each a big-endian u16 size n, uniform in
 * 1..999, and n random bytes that the server must echo exactly; then it
 * sends the terminator 00 00 and is done, without waiting for a reply.
 * The server echoes every round until the terminator, all within its
 * deadline of accept (30 s by default), and is done.
 *
 * After that the layer is transparent, and as in Rust it adds nothing: the
 * pipe handed up is the lower pipe itself, so its protocol, addresses and
 * shared secret are the lower's.  Bytes that came behind the terminator
 * stay in the lower pipe's input for the next reader (the core's
 * sl_pipe_setcb calls its read callback for them).
 *
 * The handshake owns the lower pipe's callbacks until the result is handed
 * up from the loop; an EOF or error that arrives after the terminator but
 * before the hand-over is raised again, deferred, for the new owner.
 *
 * Bounds: the client keeps at most one round (999 bytes) in flight; the
 * server stops reading while its echoes fill the lower output beyond
 * ECHO_QUEUE bytes (a peer that sends rounds but does not read), and a
 * round announces at most 65535 bytes, echoed as they arrive.
 */
#include "config.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "sillad/plugin.h"

#define LAYER "conntest"
#define ROUND_MAX 999            /* the client's largest round, as Rust */
#define ECHO_QUEUE (64 * 1024)   /* server: echoes waiting below */

struct ct_cfg {
    const struct sl_host *h;
    int ping_count;
    int64_t deadline_ms;
};

static const struct sl_opt_spec ct_opts[] = {
    { "ping_count", SL_OPT_INT, 0, "1",
      "client: echo rounds before the terminator", NULL, 0, 1000 },
    { "deadline", SL_OPT_DURATION, 0, "30s",
      "server: the whole exchange must end this soon after accept", NULL, 1,
      3600000 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

struct ct_wrap {
    const struct sl_host *h;
    enum sl_role role;
    struct sl_pipe *lower;       /* NULL once freed */
    struct bufferevent *lbev;
    size_t wlow, whigh;          /* the lower's write watermarks, restored */
    sl_pipe_fn *done;
    void *arg;
    struct event *done_ev;       /* delivers the result from the loop */
    struct event *deadline_ev;   /* server */
    int rounds, round;           /* client: how many, and the current one */
    size_t n, got;               /* the current round: size, bytes seen */
    uint8_t sent[ROUND_MAX];     /* client: the round's bytes */
    short late;                  /* events after the terminator */
    struct sl_error err;
    bool finished;               /* done_ev is active */
    bool ok;                     /* finished with success */
    bool canceled;
    bool in_step, again;         /* re-entrancy of step() */
};

static void
drop_lower(struct ct_wrap *w)
{
    if (w->lower == NULL)
        return;
    bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
    w->h->pipe_free(w->lower);
    w->lower = NULL;
    w->lbev = NULL;
}

static void
ct_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct ct_wrap *w = arg;
    sl_pipe_fn *done = w->done;
    void *done_arg = w->arg;
    struct sl_pipe *p = NULL;
    struct sl_error err = w->err;

    (void)fd;
    (void)what;
    if (w->canceled) {
        memset(&err, 0, sizeof(err));
        w->h->error_set(&err, SL_ECANCELED, LAYER, "connection test "
                        "cancelled");
    } else if (w->ok) {
        /* An EOF or error that came after the terminator is raised
         * again, deferred: libevent queues it only while an event
         * callback is set, but calls whichever is set when it runs: the
         * new owner's if it set one in done(), or else the core's hold,
         * which the core puts on every pipe a layer hands back bare and
         * which keeps the event for the next owner (sl_host(3),
         * pipe_new). */
        if (w->late != 0)
            bufferevent_trigger_event(w->lbev, w->late,
                                      BEV_TRIG_DEFER_CALLBACKS);
        /* Hand the lower pipe over as we found it. */
        bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
        bufferevent_setwatermark(w->lbev, EV_WRITE, w->wlow, w->whigh);
        p = w->lower;
        w->lower = NULL;
    }
    drop_lower(w);
    event_free(w->done_ev);
    if (w->deadline_ev != NULL)
        event_free(w->deadline_ev);
    free(w);
    done(p, p != NULL ? NULL : &err, done_arg);
}

static void
finish(struct ct_wrap *w, bool ok)
{
    if (w->finished)
        return;
    w->finished = true;
    w->ok = ok;
    if (w->deadline_ev != NULL)
        evtimer_del(w->deadline_ev);
    if (!ok) {
        /* The connection is useless now: stop everything on it. */
        bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
        bufferevent_disable(w->lbev, EV_READ | EV_WRITE);
    }
    event_active(w->done_ev, EV_TIMEOUT, 0);
}

static void fail(struct ct_wrap *w, int code, const char *fmt, ...)
    SL_PRINTF(3, 4);

static void
fail(struct ct_wrap *w, int code, const char *fmt, ...)
{
    char text[SL_ERROR_TEXT_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    w->h->error_set(&w->err, code, LAYER, "%s", text);
    finish(w, false);
}

/* Client: starts round w->round, or ends with the terminator. */
static void
client_send(struct ct_wrap *w)
{
    struct evbuffer *out = bufferevent_get_output(w->lbev);
    uint8_t hdr[2] = { 0, 0 };

    if (w->round == w->rounds) {
        /* Sent, and done: the next layer's bytes may follow at once. */
        evbuffer_add(out, hdr, 2);
        finish(w, true);
        return;
    }
    w->n = 1 + randombytes_uniform(ROUND_MAX);
    w->got = 0;
    randombytes_buf(w->sent, w->n);
    hdr[0] = (uint8_t)(w->n >> 8);
    hdr[1] = (uint8_t)w->n;
    if (evbuffer_add(out, hdr, 2) != 0 ||
        evbuffer_add(out, w->sent, w->n) != 0)
        fail(w, SL_ENOMEM, "out of memory");
}

/* Client: checks the echo as it arrives. */
static void
client_step(struct ct_wrap *w)
{
    struct evbuffer *in = bufferevent_get_input(w->lbev);

    while (!w->finished && evbuffer_get_length(in) > 0) {
        uint8_t buf[ROUND_MAX];
        size_t k = evbuffer_get_length(in), i;

        if (k > w->n - w->got)
            k = w->n - w->got;
        evbuffer_remove(in, buf, k);
        for (i = 0; i < k; i++)
            if (buf[i] != w->sent[w->got + i])
                break;
        if (i < k) {
            fail(w, SL_EPROTO, "round %d of %d: the echo differs from what "
                 "was sent at byte %zu of %zu", w->round + 1, w->rounds,
                 w->got + i, w->n);
            return;
        }
        w->got += k;
        if (w->got == w->n) {
            w->round++;
            client_send(w);
        }
    }
}

/* Server: echoes rounds until the terminator. */
static void
server_step(struct ct_wrap *w)
{
    struct evbuffer *in = bufferevent_get_input(w->lbev);
    struct evbuffer *out = bufferevent_get_output(w->lbev);

    while (!w->finished) {
        if (w->got == w->n) {
            uint8_t hdr[2];

            if (evbuffer_get_length(in) < 2)
                return;
            evbuffer_remove(in, hdr, 2);
            w->n = (size_t)hdr[0] << 8 | hdr[1];
            w->got = 0;
            if (w->n == 0) {
                /* The pipe is the client's now; what follows is its. */
                finish(w, true);
                return;
            }
            w->round++;
        }
        /* Echo what came, unless the peer does not read its echoes. */
        if (evbuffer_get_length(out) >= ECHO_QUEUE) {
            bufferevent_disable(w->lbev, EV_READ);
            return;   /* resumed from the write callback */
        }
        {
            size_t k = evbuffer_get_length(in);

            if (k == 0)
                return;
            if (k > w->n - w->got)
                k = w->n - w->got;
            if (evbuffer_remove_buffer(in, out, k) != (int)k) {
                fail(w, SL_ENOMEM, "out of memory");
                return;
            }
            w->got += k;
        }
    }
}

static void
step(struct ct_wrap *w)
{
    /* Taking from the lower input can make the layer below deliver more
     * and call us again: the outer pass goes on instead. */
    if (w->in_step) {
        w->again = true;
        return;
    }
    w->in_step = true;
    do {
        w->again = false;
        if (w->role == SL_ROLE_CLIENT)
            client_step(w);
        else
            server_step(w);
    } while (w->again && !w->finished);
    w->in_step = false;
}

static void
ct_readcb(struct bufferevent *bev, void *arg)
{
    struct ct_wrap *w = arg;

    (void)bev;
    if (!w->finished)
        step(w);
}

static void
ct_writecb(struct bufferevent *bev, void *arg)
{
    struct ct_wrap *w = arg;

    if (w->finished || w->role != SL_ROLE_SERVER)
        return;
    /* The echoes drained: read again. */
    bufferevent_enable(bev, EV_READ);
    step(w);
}

static void
ct_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct ct_wrap *w = arg;

    (void)bev;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    if (!w->finished)
        step(w);   /* the last bytes may finish the test */
    if (w->finished) {
        /* For whoever reads the pipe next. */
        if (w->ok)
            w->late |= what;
        return;
    }
    if (w->role == SL_ROLE_CLIENT)
        fail(w, SL_ECLOSED, "connection %s during round %d of %d (%zu of "
             "%zu bytes echoed)", (what & BEV_EVENT_EOF) ? "closed" : "failed",
             w->round + 1, w->rounds, w->got, w->n);
    else
        fail(w, SL_ECLOSED, "connection %s before the terminator (%d rounds "
             "seen)", (what & BEV_EVENT_EOF) ? "closed" : "failed", w->round);
}

static void
ct_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct ct_wrap *w = arg;

    (void)fd;
    (void)what;
    fail(w, SL_ETIMEDOUT, "no terminator within the deadline (%d rounds "
         "seen)", w->round);
}

static int
ct_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
        enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
        struct sl_error *e)
{
    struct ct_cfg *c = cfg;
    const struct sl_host *h = c->h;
    struct ct_wrap *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        h->pipe_free(lower);
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    w->h = h;
    w->role = role;
    w->lower = lower;
    w->lbev = h->pipe_get0_bev(lower);
    w->done = done;
    w->arg = arg;
    w->rounds = c->ping_count;
    w->done_ev = event_new(base, -1, 0, ct_deliver, w);
    if (w->done_ev == NULL)
        goto nomem;
    if (role == SL_ROLE_SERVER) {
        struct timeval tv = { (time_t)(c->deadline_ms / 1000),
                              (suseconds_t)(c->deadline_ms % 1000 * 1000) };

        if ((w->deadline_ev = evtimer_new(base, ct_deadline, w)) == NULL)
            goto nomem;
        evtimer_add(w->deadline_ev, &tv);
    }
    bufferevent_getwatermark(w->lbev, EV_WRITE, &w->wlow, &w->whigh);
    bufferevent_setwatermark(w->lbev, EV_WRITE, ECHO_QUEUE / 2, 0);
    bufferevent_setcb(w->lbev, ct_readcb, ct_writecb, ct_eventcb, w);
    bufferevent_enable(w->lbev, EV_READ | EV_WRITE);
    if (role == SL_ROLE_CLIENT)
        client_send(w);   /* may finish at once (no rounds): deferred */
    /* The layer below may already hold the peer's bytes. */
    if (evbuffer_get_length(bufferevent_get_input(w->lbev)) > 0)
        bufferevent_trigger(w->lbev, EV_READ,
                            BEV_TRIG_IGNORE_WATERMARKS |
                                BEV_TRIG_DEFER_CALLBACKS);
    *op = w;
    return 0;
nomem:
    drop_lower(w);
    if (w->done_ev != NULL)
        event_free(w->done_ev);
    free(w);
    return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
}

static void
ct_cancel(void *op)
{
    struct ct_wrap *w = op;

    if (w->canceled)
        return;
    w->canceled = true;
    /* A result on its way is turned into ECANCELED by ct_deliver. */
    if (!w->finished) {
        drop_lower(w);
        w->finished = true;
        if (w->deadline_ev != NULL)
            evtimer_del(w->deadline_ev);
        event_active(w->done_ev, EV_TIMEOUT, 0);
    }
}

/* ---- configuration and plugin ------------------------------------------ */

static int
ct_configure(const struct sl_host *h, void *plugin_ctx,
             const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct ct_cfg *c = calloc(1, sizeof(*c));

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->h = h;
    c->ping_count = (int)h->opt_int(o, "ping_count");
    c->deadline_ms = h->opt_int(o, "deadline");
    *out = c;
    return 0;
}

static void
ct_unconfigure(void *cfg)
{
    free(cfg);   /* wraps copied what they need */
}

static int
ct_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    if (sl_check_libevent(h, LAYER, e) != 0)
        return SL_EABI;
    if (sodium_init() < 0)
        return h->error_set(e, SL_EINVAL, LAYER, "libsodium failed to "
                            "initialise");
    return 0;
}

static const struct sl_layer_ops ct_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "echo rounds before use, then transparent (Geph's conntest)",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    /* The pipe is the lower one: it half-closes if that one does. */
    .flags = SL_LF_HALF_CLOSE,
    .opts = ct_opts,
    .configure = ct_configure,
    .unconfigure = ct_unconfigure,
    .wrap = ct_wrap,
    .cancel = ct_cancel,
};

static const struct sl_layer_ops *const ct_layers[] = { &ct_layer, NULL };

SL_PLUGIN_DEFINE(conntest, "conntest echo pre-flight", PACKAGE_VERSION,
                 "ISC", "sillad", ct_layers, ct_init, NULL)
