/*
 * xor.c - an example sillad plugin: a wrap layer that XORs every byte
 * with a keystream derived from its key= option.
 *
 * THIS IS NOT ENCRYPTION.  The keystream is a 64-bit xorshift* generator
 * seeded from an FNV-1a hash of the key: anyone who sees a few bytes of
 * known plaintext recovers it.  The layer exists to show a third party
 * how a wrap layer is built; copy its structure, not its cipher.
 *
 * In a stack:   tcp addr=192.0.2.1:7000 | xor key=example
 *
 * Shape.  wrap() has no handshake.  It takes the lower pipe's callbacks
 * at once (so that no event of it is lost), schedules the result for the
 * next loop turn (a callback never runs inside the call that armed it)
 * and returns.  The pipe it hands up is one end ("user") of a bufferevent
 * pair; the layer drives the other end ("mine"):
 *
 *   lower input  -> XOR rx -> mine.output -> (pair) -> user input
 *   user output  -> (pair) -> mine.input  -> XOR tx -> lower output
 *
 * A bufferevent_filter would be shorter, but libevent 2.1's filter can
 * pass the lower pipe's EOF up before data still waiting below; a pair
 * end behaves exactly like a tcp pipe.
 *
 * Bounds (backpressure is watermarks only): XORing into mine.output stops
 * at read_buffer bytes and resumes when the user has read half of them
 * (meanwhile the lower pipe holds at most read_buffer bytes for us);
 * XORing into the lower output stops at TX_QUEUE bytes and resumes when
 * half of them have left; the pair moves at most TX_PULL bytes of the
 * user's output to us at a time.
 *
 * Keystream.  seed = FNV-1a-64 over one direction byte ('c' for client to
 * server, 's' for server to client) followed by the key; a zero seed is
 * replaced by 1.  Each step of xorshift64* (shifts 12, 25, 27, multiplier
 * 0x2545F4914F6CDD1D) gives 8 keystream bytes, least significant first.
 * So the two directions use different streams and both ends agree.
 *
 * Build it against an installed sillad with the Makefile beside this
 * file, and test it with "make check" (sillad-conform).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sillad/plugin.h>

#define LAYER "xor"
#define CHUNK 16384               /* bytes XORed per copy */
#define TX_QUEUE (256 * 1024)     /* most we queue in the lower output */
#define TX_PULL (256 * 1024)      /* user bytes the pair moves to us */

/* ---- the keystream (an example, not security) --------------------------- */

struct keystream {
    uint64_t state;
    uint8_t block[8];
    unsigned used;                /* bytes of block consumed */
};

static uint64_t
fnv1a64(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

static uint64_t
seed_for(char direction, const char *key)
{
    uint64_t h = 0xcbf29ce484222325u;

    h = fnv1a64(h, &direction, 1);
    h = fnv1a64(h, key, strlen(key));
    return h != 0 ? h : 1;        /* xorshift never leaves 0 */
}

static void
ks_init(struct keystream *ks, uint64_t seed)
{
    ks->state = seed;
    ks->used = sizeof(ks->block);
}

static void
ks_xor(struct keystream *ks, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ks->used == sizeof(ks->block)) {
            uint64_t x = ks->state;

            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            ks->state = x;
            x *= 0x2545F4914F6CDD1Du;
            for (unsigned b = 0; b < 8; b++)
                ks->block[b] = (uint8_t)(x >> (8 * b));
            ks->used = 0;
        }
        p[i] ^= ks->block[ks->used++];
    }
}

/* memset before free may be optimised away; a volatile store may not.  A
 * real layer uses sodium_memzero() on its keys. */
static void
wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;

    while (n-- > 0)
        *v++ = 0;
}

/* ---- configuration ------------------------------------------------------- */

static const struct sl_opt_spec xor_opts[] = {
    { "key", SL_OPT_STR, SL_OPT_REQUIRED | SL_OPT_SECRET, NULL,
      "text both ends share; the keystream is derived from it", NULL, 0, 0 },
    { "read_buffer", SL_OPT_SIZE, 0, "256k",
      "stop reading below while this much waits for the reader", NULL, 4096,
      1073741824 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/* Wraps copy what they need from here: unconfigure may run (on a reload)
 * while pipes made with it live. */
struct xor_cfg {
    const struct sl_host *h;
    uint64_t seed_c, seed_s;      /* client->server, server->client */
    size_t read_buffer;
};

static int
xor_configure(const struct sl_host *h, void *plugin_ctx,
              const struct sl_opts *o, void **cfg, struct sl_error *e)
{
    struct xor_cfg *c;
    const char *key = h->opt_str(o, "key");  /* required: never NULL */

    (void)plugin_ctx;
    if (key[0] == '\0')   /* name the fault, never the key's value */
        return h->error_set(e, SL_EINVAL, LAYER, "key= is empty");
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->h = h;
    c->seed_c = seed_for('c', key);
    c->seed_s = seed_for('s', key);
    c->read_buffer = (size_t)h->opt_int(o, "read_buffer");
    *cfg = c;
    return 0;
}

static void
xor_unconfigure(void *cfg)
{
    wipe(cfg, sizeof(struct xor_cfg));
    free(cfg);
}

/* ---- the data path ------------------------------------------------------- */

/* One connection: first a wrap in progress (the op that wrap() returns),
 * then, once handed up, the state of our pipe. */
struct xor_pipe {
    const struct sl_host *h;
    struct sl_pipe *pipe;         /* ours, once made */
    struct sl_pipe *lower;        /* ours until pipe_new, then the pipe's */
    struct bufferevent *lbev;     /* the lower pipe's bufferevent */
    struct bufferevent *mine;     /* our end of the pair */
    struct bufferevent *user;     /* its partner: the pipe's bufferevent */
    struct keystream tx, rx;
    size_t read_buffer;
    struct event *start_ev;       /* delivers the wrap's result */
    sl_pipe_fn *done;
    void *done_arg;
    int busy;                     /* our callbacks on the stack */
    short lower_err;              /* an error event from below, held */
    unsigned canceled : 1;
    unsigned started : 1;         /* the user has the pipe */
    unsigned dead : 1;            /* destroyed while busy: free on leave */
    unsigned failed : 1;          /* an error went up; nothing moves */
    unsigned lower_eof : 1;       /* the peer ended its send direction */
    unsigned eof_done : 1;        /* the user got EOF */
    unsigned shut_pending : 1, shut_done : 1;
};

static void
xp_free(struct xor_pipe *xp)
{
    if (xp->start_ev != NULL)
        event_free(xp->start_ev);
    if (xp->mine != NULL)
        bufferevent_free(xp->mine);
    wipe(xp, sizeof(*xp));
    free(xp);
}

/*
 * Every callback brackets its work with busy++ and leave(): code it calls
 * (a layer below, the core, the user's done) might free our pipe, and
 * destroy then only marks it dead.  Returns 1 when xp is gone.
 */
static int
leave(struct xor_pipe *xp)
{
    if (--xp->busy == 0 && xp->dead) {
        xp_free(xp);
        return 1;
    }
    return 0;
}

/*
 * XORs bytes from src into dst until src is empty or dst holds limit bytes
 * (0: no limit).  Bytes are committed to dst before they leave src, so a
 * shutdown that waits for src to empty never overtakes them.  Returns 0,
 * or -1 when no memory was left.
 */
static int
xor_move(struct keystream *ks, struct evbuffer *src, struct evbuffer *dst,
         size_t limit)
{
    size_t n;

    while ((n = evbuffer_get_length(src)) > 0 &&
           (limit == 0 || evbuffer_get_length(dst) < limit)) {
        struct evbuffer_iovec v;

        if (n > CHUNK)
            n = CHUNK;
        if (evbuffer_reserve_space(dst, (ev_ssize_t)n, &v, 1) < 1)
            return -1;
        evbuffer_copyout(src, v.iov_base, n);
        ks_xor(ks, v.iov_base, n);
        v.iov_len = n;
        if (evbuffer_commit_space(dst, &v, 1) != 0)
            return -1;
        evbuffer_drain(src, n);
    }
    return 0;
}

/* Records why the pipe failed and tells the user (its event callback). */
static void
xp_fail(struct xor_pipe *xp, short what)
{
    struct sl_error e;

    if (xp->failed)
        return;
    xp->failed = 1;
    memset(&e, 0, sizeof(e));
    xp->h->error_set(&e, SL_ENOMEM, LAYER, "out of memory");
    xp->h->pipe_set_error(xp->pipe, &e);
    bufferevent_trigger_event(xp->user, what | BEV_EVENT_ERROR, 0);
}

/* lower input -> mine.output; EOF once the peer's last byte is through.
 * Waits until the user has the pipe: an EOF sent earlier would reach a
 * bufferevent without an event callback, and libevent would drop it. */
static void
rx_pump(struct xor_pipe *xp)
{
    struct evbuffer *in = bufferevent_get_input(xp->lbev);

    if (!xp->started || xp->dead || xp->failed || xp->eof_done)
        return;
    /* After the peer's EOF nothing more arrives: move it all. */
    if (xor_move(&xp->rx, in, bufferevent_get_output(xp->mine),
                 xp->lower_eof ? 0 : xp->read_buffer) != 0) {
        xp_fail(xp, BEV_EVENT_READING);
        return;
    }
    if (xp->lower_eof && evbuffer_get_length(in) == 0) {
        xp->eof_done = 1;
        /* Hands mine.output on past the watermarks, then EOF to the user:
         * the same end of stream a tcp pipe gives. */
        bufferevent_flush(xp->mine, EV_WRITE, BEV_FINISHED);
    }
}

/* mine.input -> lower output; then the half-close, if one waits. */
static void
tx_pump(struct xor_pipe *xp)
{
    struct evbuffer *pending = bufferevent_get_input(xp->mine);

    if (!xp->started || xp->dead || xp->failed)
        return;
    if (xor_move(&xp->tx, pending, bufferevent_get_output(xp->lbev),
                 TX_QUEUE) != 0) {
        xp_fail(xp, BEV_EVENT_WRITING);
        return;
    }
    if (xp->shut_pending && !xp->shut_done && !xp->dead &&
        evbuffer_get_length(pending) == 0) {
        /* XOR has no end-of-stream marker of its own: pass it down. */
        xp->shut_done = 1;
        xp->h->pipe_shutdown_write(xp->lower);
    }
}

static void
lower_readcb(struct bufferevent *bev, void *arg)
{
    struct xor_pipe *xp = arg;

    (void)bev;
    xp->busy++;
    rx_pump(xp);
    leave(xp);
}

/* The lower output drained to TX_QUEUE / 2: XOR more. */
static void
lower_writecb(struct bufferevent *bev, void *arg)
{
    struct xor_pipe *xp = arg;

    (void)bev;
    xp->busy++;
    tx_pump(xp);
    leave(xp);
}

/* Passes an error event from below up, once.  The layer below recorded
 * why (pipe_set_error); the user sees that cause through the chain. */
static void
pass_error(struct xor_pipe *xp, short what)
{
    if (xp->failed)
        return;
    xp->failed = 1;
    bufferevent_trigger_event(xp->user, what, 0);
}

static void
lower_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct xor_pipe *xp = arg;

    (void)bev;
    xp->busy++;
    if (what & BEV_EVENT_EOF) {
        xp->lower_eof = 1;
        rx_pump(xp);
    } else if (what & BEV_EVENT_ERROR) {
        if (xp->started)
            pass_error(xp, what);
        else
            xp->lower_err = what;     /* for when the user is there */
    }
    leave(xp);
}

/* The user wrote: the pair moved it into mine.input. */
static void
mine_readcb(struct bufferevent *bev, void *arg)
{
    struct xor_pipe *xp = arg;

    (void)bev;
    xp->busy++;
    tx_pump(xp);
    leave(xp);
}

/* The user read: mine.output drained to read_buffer / 2. */
static void
mine_writecb(struct bufferevent *bev, void *arg)
{
    struct xor_pipe *xp = arg;

    (void)bev;
    xp->busy++;
    rx_pump(xp);
    leave(xp);
}

/* ---- pipe operations ----------------------------------------------------- */

static int
xor_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct xor_pipe *xp = layer_ctx;

    (void)p;
    /* The core calls this once the user's output is empty; bytes the pair
     * already moved to mine.input may still wait for room below, and
     * tx_pump shuts down after them. */
    xp->shut_pending = 1;
    xp->busy++;
    tx_pump(xp);
    leave(xp);
    return 0;
}

static int
xor_query(void *layer_ctx, int what, void *out, size_t *len)
{
    (void)layer_ctx;
    switch (what) {
    case SL_Q_PROTOCOL:
        /* What the core would answer for us anyway; a layer with protocol
         * versions would name the one it negotiated. */
        return sl_query_answer_str(out, len, LAYER);
    case SL_Q_SHARED_SECRET:
        /* The key is no secret worth the name: never offer it.  Asking on
         * goes to the layers below, whose answer stays true. */
    default:
        return SL_ENOTSUP;
    }
}

static void
xor_pipe_destroy(void *layer_ctx)
{
    struct xor_pipe *xp = layer_ctx;

    /* The core frees our bufferevent and the lower pipe right after this:
     * no callback of theirs may reach xp again. */
    bufferevent_setcb(xp->lbev, NULL, NULL, NULL, NULL);
    bufferevent_setcb(xp->mine, NULL, NULL, NULL, NULL);
    if (xp->busy > 0)
        xp->dead = 1;      /* freed by leave() */
    else
        xp_free(xp);
}

static const struct sl_pipe_ops xor_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = xor_shutdown_write,
    .query = xor_query,
    .destroy = xor_pipe_destroy,
};

/* ---- wrap and cancel ----------------------------------------------------- */

/* Runs from the loop, once: hands the pipe up, or reports why not. */
static void
wrap_finish(evutil_socket_t fd, short what, void *arg)
{
    struct xor_pipe *xp = arg;
    const struct sl_host *h = xp->h;
    sl_pipe_fn *done = xp->done;
    void *done_arg = xp->done_arg;
    struct sl_pipe *p;
    struct sl_error err;

    (void)fd;
    (void)what;
    memset(&err, 0, sizeof(err));
    event_free(xp->start_ev);
    xp->start_ev = NULL;
    if (xp->canceled) {
        /* Cancelled: free what we hold and still call back, once. */
        bufferevent_setcb(xp->lbev, NULL, NULL, NULL, NULL);
        h->pipe_free(xp->lower);
        bufferevent_free(xp->user);
        xp_free(xp);
        h->error_set(&err, SL_ECANCELED, LAYER, "wrap cancelled");
        done(NULL, &err, done_arg);
        return;
    }
    /* Consumes the user end and lower; on failure it has already run our
     * destroy, which freed xp. */
    p = h->pipe_new(LAYER, xp->user, xp->lower, &xor_pipe_ops, xp);
    if (p == NULL) {
        h->error_set(&err, SL_ENOMEM, LAYER, "out of memory");
        done(NULL, &err, done_arg);
        return;
    }
    xp->pipe = p;
    /* The pipe is the receiver's now: done may even free it. */
    xp->busy++;
    done(p, NULL, done_arg);
    if (!xp->dead) {
        /* The user has set its callbacks: what waited below may go up. */
        xp->started = 1;
        if (xp->lower_err != 0)
            pass_error(xp, xp->lower_err);
        rx_pump(xp);
    }
    leave(xp);
}

/* Consumes lower (also on failure); done gets our pipe next loop turn. */
static int
xor_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
         enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
         struct sl_error *e)
{
    struct xor_cfg *c = cfg;
    const struct sl_host *h = c->h;
    struct xor_pipe *xp = calloc(1, sizeof(*xp));
    struct bufferevent *pair[2] = { NULL, NULL };

    if (xp == NULL || bufferevent_pair_new(base, 0, pair) != 0 ||
        (xp->start_ev = event_new(base, -1, 0, wrap_finish, xp)) == NULL) {
        if (pair[0] != NULL) {
            bufferevent_free(pair[0]);
            bufferevent_free(pair[1]);
        }
        free(xp);
        h->pipe_free(lower);
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    xp->h = h;
    xp->lower = lower;
    xp->lbev = h->pipe_get0_bev(lower);
    xp->mine = pair[0];
    xp->user = pair[1];
    xp->read_buffer = c->read_buffer;
    xp->done = done;
    xp->done_arg = arg;
    ks_init(&xp->tx, role == SL_ROLE_CLIENT ? c->seed_c : c->seed_s);
    ks_init(&xp->rx, role == SL_ROLE_CLIENT ? c->seed_s : c->seed_c);

    bufferevent_setcb(xp->mine, mine_readcb, mine_writecb, NULL, xp);
    bufferevent_setwatermark(xp->mine, EV_READ, 0, TX_PULL);
    bufferevent_setwatermark(xp->mine, EV_WRITE, xp->read_buffer / 2, 0);
    bufferevent_enable(xp->mine, EV_READ | EV_WRITE);
    /* The user's input is bounded too; its owner may raise the bound. */
    bufferevent_setwatermark(xp->user, EV_READ, 0, xp->read_buffer);

    /* The lower pipe's bufferevent is ours to drive from now on; taking
     * its callbacks at once means no EOF or error of it is lost. */
    bufferevent_setcb(xp->lbev, lower_readcb, lower_writecb, lower_eventcb,
                      xp);
    /* As its user we bound what it holds for us while we wait, too. */
    bufferevent_setwatermark(xp->lbev, EV_READ, 0, xp->read_buffer);
    bufferevent_setwatermark(xp->lbev, EV_WRITE, TX_QUEUE / 2, 0);
    bufferevent_enable(xp->lbev, EV_READ | EV_WRITE);

    /* Never call back inside wrap(): from the loop, next turn. */
    event_active(xp->start_ev, EV_TIMEOUT, 0);
    *op = xp;
    return 0;
}

static void
xor_cancel(void *op)
{
    struct xor_pipe *xp = op;

    /* wrap_finish is already due; it reports SL_ECANCELED. */
    xp->canceled = 1;
}

/* ---- the plugin ---------------------------------------------------------- */

static int
xor_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;             /* no global state: nothing to set up */
    /* Bufferevents cross the ABI: refuse another libevent major.minor. */
    return sl_check_libevent(h, LAYER, e);
}

static const struct sl_layer_ops xor_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "XOR with a keystream from key= (an example, not security)",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    /* Not SL_LF_ENCRYPTS: XOR with a guessable stream hides nothing. */
    .flags = SL_LF_HALF_CLOSE,
    .opts = xor_opts,
    .configure = xor_configure,
    .unconfigure = xor_unconfigure,
    .wrap = xor_wrap,
    .cancel = xor_cancel,
};

static const struct sl_layer_ops *const xor_layers[] = { &xor_layer, NULL };

SL_PLUGIN_DEFINE(xor, "example wrap layer: XOR with a keystream", "1.0",
                 "ISC", "sillad examples/plugin-xor", xor_layers, xor_init,
                 NULL)
