/* hex.c - the hex wrap layer: every byte travels as two ASCII hex digits.
 *
 * Byte-compatible with Geph5's sillad-hex (see sillad-hex(7)).  There is
 * no handshake and no framing, and the two directions are independent:
 *
 *   sending    each byte becomes two lowercase hex digits;
 *   receiving  digits of either case are decoded a pair at a time; an odd
 *              digit waits for its partner; any other character ends the
 *              receive direction (the reader sees EOF, sending goes on).
 *
 * It is also the smallest complete example of a wrap layer that changes
 * the bytes it carries, so it is commented for plugin authors.  The shape
 * (the same as sosistab3's record path, which explains the choice): the
 * pipe handed up is one end of a bufferevent pair, the "user" end; this
 * layer drives the other end, "mine":
 *
 *   lower input  -> decode -> mine.output -> (pair) -> user input
 *   user output  -> (pair) -> mine.input -> encode -> lower output
 *
 * Bounds: decoding stops while mine.output holds read_buffer bytes and
 * resumes from mine's write callback at half of that; encoding stops while
 * the lower output holds TX_QUEUE bytes and resumes from the lower's write
 * callback at half of that.
 *
 * Re-entrancy: pairs defer their callbacks, so the user never runs inside
 * this code, but a layer below may call back at once (an error from inside
 * a write).  Entry points count themselves in (dp_enter/dp_leave), a
 * destroy inside one only marks the pipe dead, and the pumps guard against
 * their own recursion.  The pair, that guard and the EOF and error reports
 * are common/drivenpair.h, shared with tls, sosistab3 and e2e.
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "drivenpair.h"
#include "hex-codec.h"
#include "sillad/plugin.h"

#define LAYER "hex"
#define TX_CHUNK 8192              /* bytes encoded at a time, as Rust */
#define TX_QUEUE (256 * 1024)      /* encoded bytes waiting below */
#define RX_BATCH (64 * 1024)       /* digits decoded at a time */

/* ---- the pipe ---------------------------------------------------------- */

struct hex_pipe {
    const struct sl_host *h;
    struct sl_pipe *pipe;         /* ours, for pipe_set_error */
    struct sl_pipe *lower;        /* owned by pipe */
    struct bufferevent *lbev;     /* the lower pipe's */
    struct dp dp;                 /* the pair: mine, user; busy, dead */
    size_t read_buffer;
    uint64_t received;            /* digits decoded, for error offsets */
    struct dp_dir rx_run, tx_run; /* each direction's pump (dp_run) */
    unsigned lower_eof : 1;       /* the peer ended its send direction */
    unsigned rx_ended : 1;        /* EOF or a bad character below */
    unsigned shut_pending : 1, shut_done : 1;
};

struct hex_cfg {
    const struct sl_host *h;
    size_t read_buffer;
};

static const struct sl_opt_spec hex_opts[] = {
    { "read_buffer", SL_OPT_SIZE, 0, "256k",
      "stop decoding while this much waits for the reader", NULL, 4096,
      1073741824 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static void
hp_free(void *owner)
{
    struct hex_pipe *hp = owner;

    dp_fini(&hp->dp);
    free(hp);
}

/*
 * Decodes what the lower input holds into mine.output.  Returns false when
 * the receive direction has ended (or the pipe died).
 */
static dp_step_fn rx_decode;

static int
rx_decode(void *owner)
{
    struct hex_pipe *hp = owner;
    struct evbuffer *src = bufferevent_get_input(hp->lbev);
    struct evbuffer *dst = bufferevent_get_output(hp->dp.mine);
    struct sl_error e;
    uint8_t badc;

    for (;;) {
        size_t have = evbuffer_get_length(src), take, bad, n;
        struct evbuffer_iovec room;
        const char *digits;

        /* After the peer's EOF nothing more comes: decode it all (the
         * lower's read watermark bounded it). */
        if (!hp->lower_eof && evbuffer_get_length(dst) >= hp->read_buffer)
            return true;              /* mine_writecb resumes */
        if (have == 0)
            return true;
        /* Whole pairs only; an odd last digit waits for its partner (but
         * is still checked, so that a bad one ends things now). */
        take = have < RX_BATCH ? have : RX_BATCH;
        if ((digits = (const char *)evbuffer_pullup(src, (ev_ssize_t)take))
            == NULL ||
            evbuffer_reserve_space(dst, (ev_ssize_t)(take / 2 + 1), &room,
                                   1) < 1)
            goto nomem;
        n = hex_decode(digits, take, room.iov_base, &bad);
        badc = bad < take ? (uint8_t)digits[bad] : 0;
        room.iov_len = n;
        /* Consume, then deliver: the commit may run callbacks below. */
        evbuffer_drain(src, 2 * n);
        hp->received += 2 * n;
        evbuffer_commit_space(dst, &room, 1);
        if (hp->dp.dead)
            return false;
        if (bad < take)
            break;
        if (take < 2)
            return true;
    }
    /* As in Rust, the receive direction just ends: the peer is told
     * nothing, the reader sees EOF after the bytes before the bad one, and
     * the log says why. */
    hp->h->log(SL_LOG_INFO, LAYER, "byte 0x%02x after %llu hex digits is not "
               "a hex digit; receive direction ended", badc,
               (unsigned long long)hp->received);
    hp->rx_ended = 1;
    bufferevent_disable(hp->lbev, EV_READ);
    dp_eof(&hp->dp);
    return false;
nomem:
    memset(&e, 0, sizeof(e));
    hp->h->error_set(&e, SL_ENOMEM, LAYER, "out of memory decoding");
    hp->h->pipe_set_error(hp->pipe, &e);
    hp->rx_ended = 1;
    bufferevent_disable(hp->lbev, EV_READ);
    dp_error(&hp->dp, BEV_EVENT_READING | BEV_EVENT_ERROR);
    return false;
}

/* Decodes what waits below; loops again when re-entered. */
static dp_pump_fn rx_pump;

static void
rx_pump(void *owner)
{
    struct hex_pipe *hp = owner;

    if (hp->dp.dead || hp->rx_ended)
        return;
    if (dp_run(&hp->dp, &hp->rx_run, rx_decode, hp, false) > 0 &&
        hp->lower_eof) {
        /* An odd digit left at EOF never gets its partner: dropped. */
        hp->rx_ended = 1;
        dp_eof(&hp->dp);
    }
}

/* After the user shut down and everything it wrote is encoded: shut down
 * the pipe below (Rust never does, which a Rust peer cannot tell from a
 * close of the whole connection). */
static void
maybe_shutdown(struct hex_pipe *hp)
{
    if (!hp->shut_pending || hp->shut_done || hp->dp.dead ||
        evbuffer_get_length(bufferevent_get_input(hp->dp.mine)) > 0)
        return;
    hp->shut_done = 1;
    hp->h->pipe_shutdown_write(hp->lower);
}

/* Encodes what the user wrote into the lower output, TX_CHUNK at a time,
 * while the lower output has room.  Returns false if the pipe died. */
static dp_step_fn tx_encode;

static int
tx_encode(void *owner)
{
    struct hex_pipe *hp = owner;
    struct evbuffer *src = bufferevent_get_input(hp->dp.mine);
    struct evbuffer *dst = bufferevent_get_output(hp->lbev);
    size_t len;

    while ((len = evbuffer_get_length(src)) > 0 &&
           evbuffer_get_length(dst) < TX_QUEUE) {
        size_t n = len < TX_CHUNK ? len : TX_CHUNK;
        struct evbuffer_iovec room;
        const uint8_t *bytes = evbuffer_pullup(src, (ev_ssize_t)n);

        if (bytes == NULL ||
            evbuffer_reserve_space(dst, (ev_ssize_t)(2 * n), &room, 1) < 1) {
            struct sl_error e;

            memset(&e, 0, sizeof(e));
            hp->h->error_set(&e, SL_ENOMEM, LAYER, "out of memory encoding");
            hp->h->pipe_set_error(hp->pipe, &e);
            dp_error(&hp->dp, BEV_EVENT_WRITING | BEV_EVENT_ERROR);
            return false;
        }
        hex_encode(bytes, n, room.iov_base);
        room.iov_len = 2 * n;
        /* Encoded bytes reach the lower output before the user's leave
         * mine.input, so a shutdown waiting for the latter never
         * overtakes them.  Either step may call back. */
        evbuffer_commit_space(dst, &room, 1);
        if (hp->dp.dead)
            return false;
        evbuffer_drain(src, n);
        if (hp->dp.dead)
            return false;
    }
    return true;
}

static dp_pump_fn tx_pump;

static void
tx_pump(void *owner)
{
    struct hex_pipe *hp = owner;

    if (hp->dp.dead || hp->dp.err_done)
        return;
    if (dp_run(&hp->dp, &hp->tx_run, tx_encode, hp, false) > 0)
        maybe_shutdown(hp);
}

static dp_event_fn lower_event;

static void
lower_event(void *owner, short what)
{
    struct hex_pipe *hp = owner;

    if (what & BEV_EVENT_EOF) {
        hp->lower_eof = 1;
        rx_pump(hp);
    }
    else if (what & BEV_EVENT_ERROR)
        dp_error(&hp->dp, what);   /* the layer below recorded why */
}

/* The pipe's operations. */
static int
hex_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct hex_pipe *hp = layer_ctx;

    (void)p;
    /* The user's output is empty, but what the pair moved to mine.input
     * may still wait for room below: tx_pump shuts down after it. */
    hp->shut_pending = 1;
    if (!hp->tx_run.busy)
        maybe_shutdown(hp);
    return 0;
}

static int
hex_query(void *layer_ctx, int what, void *out, size_t *len)
{
    (void)layer_ctx;
    (void)out;
    (void)len;
    /* A new pipe type: it hides any shared secret below (as Rust's
     * HexPipe); the protocol ("hex", the core's default) and the
     * addresses are the lower pipe's business. */
    return what == SL_Q_SHARED_SECRET ? SL_ENOENT : SL_ENOTSUP;
}

static void
hex_destroy(void *layer_ctx)
{
    struct hex_pipe *hp = layer_ctx;

    /* The core frees the lower pipe right after: detach from it now. */
    dp_destroy(&hp->dp, hp->lbev);
}

static const struct sl_pipe_ops hex_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = hex_shutdown_write,
    .query = hex_query,
    .destroy = hex_destroy,
};

/* Makes the pipe over lower, consuming it (also on failure). */
static struct sl_pipe *
pipe_make(const struct hex_cfg *c, struct event_base *base,
          struct sl_pipe *lower, struct hex_pipe **hpp, struct sl_error *e)
{
    const struct sl_host *h = c->h;
    struct hex_pipe *hp = calloc(1, sizeof(*hp));
    struct sl_pipe *p;

    if (hp == NULL || dp_init(&hp->dp, base, hp_free, hp) != 0) {
        if (hp != NULL)
            hp_free(hp);
        h->pipe_free(lower);
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    hp->h = h;
    hp->read_buffer = c->read_buffer;
    hp->lower = lower;
    hp->lbev = h->pipe_get0_bev(lower);
    /* Take at most a queue's worth of the user's output at a time.  Two
     * digits per byte: never take more than read_buffer digits' worth of
     * the lower's input ahead of the reader. */
    dp_wire(&hp->dp, hp->lbev, &(const struct dp_wiring){
                .rx = rx_pump, .tx = tx_pump, .lower_event = lower_event,
                .take = TX_QUEUE, .read_buffer = hp->read_buffer,
                .lower_high = 2 * hp->read_buffer, .queue = TX_QUEUE });
    /* Consumes the user end, lower and hp (destroyed on failure). */
    p = h->pipe_new(LAYER, hp->dp.user, lower, &hex_pipe_ops, hp);
    if (p == NULL) {
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    hp->pipe = p;
    *hpp = hp;
    return p;
}

/* ---- wrap: no handshake, but the result is still delivered from the loop */

struct hex_wrap {
    const struct sl_host *h;
    struct sl_pipe *result;
    struct hex_pipe *hp;
    struct event *done_ev;
    sl_pipe_fn *done;
    void *arg;
    bool canceled;
};

static void
wrap_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct hex_wrap *w = arg;
    struct sl_pipe *p = w->result;
    sl_pipe_fn *done = w->done;
    void *done_arg = w->arg;
    struct sl_error err;

    (void)fd;
    (void)what;
    memset(&err, 0, sizeof(err));
    if (w->canceled) {
        w->h->pipe_free(p);
        p = NULL;
        w->h->error_set(&err, SL_ECANCELED, LAYER, "wrap cancelled");
    } else {
        /* Digits that came with the layers below are decoded now; the
         * user has no callbacks yet, so nothing calls back. */
        dp_rx(&w->hp->dp);
    }
    event_free(w->done_ev);
    free(w);
    done(p, p != NULL ? NULL : &err, done_arg);
}

static int
hex_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
         enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
         struct sl_error *e)
{
    struct hex_cfg *c = cfg;
    struct hex_wrap *w = calloc(1, sizeof(*w));

    (void)role;   /* both ends do the same */
    if (w == NULL || (w->done_ev = event_new(base, -1, 0, wrap_deliver, w))
                         == NULL) {
        free(w);
        c->h->pipe_free(lower);
        return c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    w->h = c->h;
    w->done = done;
    w->arg = arg;
    if ((w->result = pipe_make(c, base, lower, &w->hp, e)) == NULL) {
        event_free(w->done_ev);
        free(w);
        return e->code;
    }
    event_active(w->done_ev, EV_TIMEOUT, 0);
    *op = w;
    return 0;
}

static void
hex_cancel(void *op)
{
    struct hex_wrap *w = op;

    /* wrap_deliver, already on its way, frees the pipe. */
    w->canceled = true;
}

/* ---- configuration and plugin ------------------------------------------ */

static int
hex_configure(const struct sl_host *h, void *plugin_ctx,
              const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct hex_cfg *c = calloc(1, sizeof(*c));

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->h = h;
    c->read_buffer = (size_t)h->opt_int(o, "read_buffer");
    *out = c;
    return 0;
}

static void
hex_unconfigure(void *cfg)
{
    free(cfg);   /* pipes copied what they need */
}

static int
hex_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    return sl_check_libevent(h, LAYER, e);
}

static const struct sl_layer_ops hex_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "bytes as ASCII hex digits (Geph's sillad-hex)",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    .flags = SL_LF_HALF_CLOSE,
    .opts = hex_opts,
    .configure = hex_configure,
    .unconfigure = hex_unconfigure,
    .wrap = hex_wrap,
    .cancel = hex_cancel,
};

static const struct sl_layer_ops *const hex_layers[] = { &hex_layer, NULL };

SL_PLUGIN_DEFINE(hex, "hex re-encoding wrap", PACKAGE_VERSION, "ISC",
                 "sillad", hex_layers, hex_init, NULL)
