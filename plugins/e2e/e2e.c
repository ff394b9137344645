/* e2e.c - the e2e wrap layer: Geph's client/exit hello (spec
 * sillad-and-stacks.md §6) and the client<->exit crypt pipe (§6.4).
 *
 * Modes.  The client asks the pipe below for a shared secret
 * (SL_Q_SHARED_SECRET, e.g. sosistab3's).  With one it sends
 * SharedSecretChallenge(c) and requires SharedSecretResponse(KH(c, ss));
 * the pipe then passes bytes through unchanged.  Without one it sends its
 * ephemeral X25519 key, requires the exit's, and runs the crypt pipe with
 * keys KDF("c2e", dh) and KDF("e2c", dh).  The exit answers whichever the
 * client chose, and drops the connection (never sends Reject) when it
 * cannot: a challenge with no shared secret below, a malformed hello.
 *
 * Signature.  The exit signs stdcode(ClientHello) || stdcode(inner) with
 * its ed25519 key (signing_key=FILE) in both modes, re-encoding the
 * ClientHello it decoded.  Unlike Geph's client, which checks it only in
 * X25519 mode, this client checks it in both modes whenever it knows the
 * exit's key (pubkey=HEX); without pubkey it checks nothing, and in
 * X25519 mode the exit is then not authenticated at all.
 *
 * Credentials.  The client sends none (it has no broker); the exit
 * ignores whatever a client sends, as a Geph exit without a broker does.
 *
 * The crypt pipe.  Each direction is a sequence of messages: u32 BE
 * length, then ChaCha20-Poly1305 (IETF) of at most 8192 plaintext bytes,
 * nonce = u64 LE message counter || 4 zero bytes.  A message that fails
 * to authenticate, or announces a length above 100000 (or below the
 * 16-byte tag), ends the receive direction: the user reads EOF, as from a
 * Geph pipe, and the pipe records why.  No message is ever empty: when
 * the user ends its send direction (sl_pipe_shutdown_write), everything
 * written is sealed and then the send direction of the pipe below is
 * ended; the peer reads EOF.  (Geph's writer sends empty messages in a
 * loop after its application side ends, spec §11 note 6; there is no
 * such message here.)  A partial message at the peer's EOF is dropped.
 *
 * Data path: as in sosistab3.c, the pipe handed up is one end of a
 * bufferevent pair and this layer drives the other end ("mine"):
 *
 *   lower input  -> open messages -> mine.output -> (pair) -> user input
 *   user output  -> (pair) -> mine.input -> seal messages -> lower output
 *
 * In shared-secret mode the same path moves bytes unchanged.
 *
 * Bounds: hellos are at most 100000 bytes; opening stops while
 * mine.output holds read_buffer bytes, sealing while the lower output
 * holds TX_QUEUE bytes; the pair moves at most TX_PULL bytes at a time.
 *
 * Re-entrancy follows sosistab3.c (common/drivenpair.h): entry points
 * count themselves in, destroy inside one only marks the pipe dead, the
 * pumps guard against their own recursion.
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "drivenpair.h"
#include "e2e-key.h"
#include "e2e-wire.h"
#include "sillad/plugin.h"
#include "stdcode.h"
#ifdef E2E_TEST_HOOKS
#include "e2e-test.h"
#endif

#define LAYER "e2e"
#define TX_QUEUE (256 * 1024)     /* ciphertext waiting in the lower output */
#define TX_PULL (256 * 1024)      /* user bytes moved to us at a time */
/* Plaintext opened, and ciphertext sealed, per commit: a chain per
 * message would cost an allocation per message here and downstream. */
#define RX_BATCH (128 * 1024 - 512)
#define TX_BATCH (128 * 1024 - 512)
#define COMPACT_CHAINS 16         /* compact the lower input beyond this */
#define COMPACT_SMALL 4096        /* many chains of under this on average */
#define SS_MAX 256                /* largest shared secret used */
#define REASON_SHOWN 120          /* characters of a Reject reason shown */

/* ---- configuration ------------------------------------------------------- */

/* What a wrap and its pipe copy from the cfg (unconfigure may run while
 * they live). */
struct e2e_params {
    const struct sl_host *h;
    bool has_pubkey, has_key;
    uint8_t exit_pk[E2E_PK_LEN];                /* pubkey= (client) */
    uint8_t sign_sk[crypto_sign_SECRETKEYBYTES]; /* signing_key= (exit) */
    int64_t timeout_ms;
    size_t read_buffer;
};

struct e2e_cfg {
    struct e2e_params par;
};

static const struct sl_opt_spec e2e_opts[] = {
    { "pubkey", SL_OPT_STR, 0, NULL,
      "client: the exit's ed25519 public key (64 hex digits), checked in "
      "both modes", NULL, 0, 0 },
    { "signing_key", SL_OPT_STR, 0, NULL,
      "exit: file of the 32-byte ed25519 seed, created (mode 0600) if "
      "missing", NULL, 0, 0 },
    { "handshake_timeout", SL_OPT_DURATION, 0, "10s",
      "give up a hello not finished by then", NULL, 1, 3600000 },
    { "read_buffer", SL_OPT_SIZE, 0, "256k",
      "stop decrypting while this much waits for the reader", NULL, 16384,
      1073741824 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/* ---- test hooks (e2e-test.h; the module has none) ------------------------ */

#ifdef E2E_TEST_HOOKS
static const struct e2e_test_hooks *hooks;

void
e2e_test_set_hooks(const struct e2e_test_hooks *h)
{
    hooks = h;
}
#endif

static void
make_challenge(uint8_t c[E2E_KEY_LEN])
{
#ifdef E2E_TEST_HOOKS
    if (hooks != NULL && hooks->challenge != NULL) {
        hooks->challenge(hooks->arg, c);
        return;
    }
#endif
    randombytes_buf(c, E2E_KEY_LEN);
}

/* A fresh ephemeral X25519 key pair. */
static int
ephemeral(enum sl_role role, uint8_t sk[E2E_KEY_LEN],
          uint8_t pk[E2E_KEY_LEN])
{
#ifdef E2E_TEST_HOOKS
    if (hooks != NULL && hooks->secret != NULL) {
        hooks->secret(hooks->arg, role, sk);
        return crypto_scalarmult_base(pk, sk);
    }
#endif
    (void)role;
    randombytes_buf(sk, E2E_KEY_LEN);
    return crypto_scalarmult_base(pk, sk);
}

/* dh = X25519(sk, peer); -1 for a low-order peer key (all-zero output),
 * which only a malicious peer sends. */
static int
shared_dh(enum sl_role role, const uint8_t sk[E2E_KEY_LEN],
          const uint8_t peer[E2E_KEY_LEN], uint8_t dh[E2E_KEY_LEN])
{
    if (crypto_scalarmult(dh, sk, peer) != 0)
        return -1;
#ifdef E2E_TEST_HOOKS
    if (hooks != NULL && hooks->dh != NULL)
        hooks->dh(hooks->arg, role, dh);
#endif
    (void)role;
    return 0;
}

/* ---- the pipe ------------------------------------------------------------ */

struct e2e_pipe {
    const struct sl_host *h;
    struct sl_pipe *pipe;         /* ours, for pipe_set_error */
    struct sl_pipe *lower;        /* owned by pipe */
    struct bufferevent *lbev;     /* the lower pipe's */
    struct dp dp;                 /* the pair: mine, user; busy, dead */
    bool crypt;                   /* false: shared-secret mode, plain bytes */
    uint8_t tx_key[E2E_KEY_LEN], rx_key[E2E_KEY_LEN];
    uint64_t tx_ctr, rx_ctr;
    size_t read_buffer;
    struct dp_dir rx_run, tx_run; /* each direction's pump (dp_run) */
    unsigned lower_eof : 1;
    unsigned rx_ended : 1;        /* a bad message ended the receive side */
    unsigned tx_failed : 1;
    unsigned shut_pending : 1, shut_done : 1;
};

static void
ep_free(void *owner)
{
    struct e2e_pipe *ep = owner;

    dp_fini(&ep->dp);
    sodium_memzero(ep, sizeof(*ep));
    free(ep);
}

/* A bad message from the peer: the receive direction ends (EOF to the
 * user, §6.4), the send direction goes on. */
static void
rx_end(struct e2e_pipe *ep, const char *why)
{
    struct sl_error e;

    memset(&e, 0, sizeof(e));
    ep->rx_ended = 1;
    ep->h->error_set(&e, SL_EPROTO, LAYER, "%s; receive direction ended",
                     why);
    ep->h->pipe_set_error(ep->pipe, &e);
    ep->h->log(SL_LOG_INFO, LAYER, "%s", e.text);
    bufferevent_disable(ep->lbev, EV_READ);
    evbuffer_drain(bufferevent_get_input(ep->lbev),
                   evbuffer_get_length(bufferevent_get_input(ep->lbev)));
    dp_eof(&ep->dp);
}

/* Lets the lower input grow to hold n bytes. */
static void
make_room(struct bufferevent *bev, size_t n)
{
    size_t lo = 0, hi = 0;

    if (bufferevent_getwatermark(bev, EV_READ, &lo, &hi) == 0 && hi != 0 &&
        hi < n)
        bufferevent_setwatermark(bev, EV_READ, lo, n);
}

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

enum rx_result { RX_BLOCKED, RX_INCOMPLETE, RX_STOP };

/*
 * Opens the messages at the head of src into dst: as many as lie
 * complete in src's first chain (pulled up first when the first message
 * is split), straight into one stretch of room reserved in dst, handed on
 * in one commit.  Returns the number of messages consumed (check
 * ep->dp.dead after), 0 when the next one is not all here yet, or -1 after
 * rx_end.  A bad message behind good ones is left for the next call,
 * which reports it.
 */
static int
rx_batch(struct e2e_pipe *ep, struct evbuffer *src, struct evbuffer *dst)
{
    size_t have = evbuffer_get_length(src), inlen, cap, len;
    size_t in_off = 0, out_off = 0;
    struct evbuffer_iovec v, room;
    unsigned char *in;
    int n = 0;

    if (have < 4 || evbuffer_peek(src, -1, NULL, &v, 1) < 1)
        return 0;
    in = v.iov_base;
    inlen = v.iov_len;
    if (inlen < 4) {
        if ((in = evbuffer_pullup(src, 4)) == NULL)
            goto nomem;
        inlen = 4;
    }
    len = be32(in);
    if (len > E2E_MSG_MAX) {
        rx_end(ep, "crypt message longer than 100000 bytes");
        return -1;
    }
    if (len < E2E_TAG_LEN) {
        rx_end(ep, "crypt message shorter than its tag");
        return -1;
    }
    if (have < 4 + len) {
        make_room(ep->lbev, 4 + len);
        return 0;
    }
    if (inlen < 4 + len) {
        if ((in = evbuffer_pullup(src, (ev_ssize_t)(4 + len))) == NULL)
            goto nomem;
        inlen = 4 + len;
    }
    /* Plaintext never outgrows its messages. */
    cap = inlen < RX_BATCH ? inlen : RX_BATCH;
    if (cap < len)
        cap = len;
    if (evbuffer_reserve_space(dst, (ev_ssize_t)cap, &room, 1) < 1 ||
        room.iov_len < cap)
        goto nomem;
    while (inlen - in_off >= 4) {
        len = be32(in + in_off);
        if (len > E2E_MSG_MAX || len < E2E_TAG_LEN ||
            inlen - in_off - 4 < len || cap - out_off < len - E2E_TAG_LEN)
            break;
        if (ep->rx_ctr == UINT64_MAX ||
            e2e_crypt_open(ep->rx_key, ep->rx_ctr, in + in_off + 4, len,
                           (unsigned char *)room.iov_base + out_off) != 0) {
            if (n > 0)
                break;
            rx_end(ep, "crypt message authentication failed");
            return -1;
        }
        ep->rx_ctr++;
        in_off += 4 + len;
        out_off += len - E2E_TAG_LEN;
        n++;
    }
    /* Consume, then deliver; the drain may re-enter (guarded). */
    evbuffer_drain(src, in_off);
    if (out_off > 0) {
        room.iov_len = out_off;
        evbuffer_commit_space(dst, &room, 1);
    }
    return n;
nomem:
    rx_end(ep, "out of memory");
    return -1;
}

/*
 * Gathers what waits below into one chain when it lies in many small ones:
 * read in tiny pieces (a trickling peer, SL_DBG_RMAX), a waiting message
 * would cost a chain per piece, far more memory than its bytes.  Large
 * chains are left alone.  (As in sosistab3.c.)
 */
static void
compact(struct evbuffer *src)
{
    size_t have = evbuffer_get_length(src);
    int chains = evbuffer_peek(src, -1, NULL, NULL, 0);

    if (chains > COMPACT_CHAINS && have / (size_t)chains < COMPACT_SMALL)
        evbuffer_pullup(src, (ev_ssize_t)have);
}

/* Opens (or, plain, moves) what the lower input holds into mine.output. */
static dp_step_fn rx_messages;

static int
rx_messages(void *owner)
{
    struct e2e_pipe *ep = owner;
    struct evbuffer *src = bufferevent_get_input(ep->lbev);
    struct evbuffer *dst = bufferevent_get_output(ep->dp.mine);

    for (;;) {
        size_t have = evbuffer_get_length(src);
        size_t queued = evbuffer_get_length(dst);
        int r;

        /* After the peer's EOF nothing more arrives: open it all. */
        if (!ep->lower_eof && queued >= ep->read_buffer) {
            if (ep->crypt)
                compact(src);
            return RX_BLOCKED;
        }
        if (!ep->crypt) {
            size_t n = ep->lower_eof ? have : ep->read_buffer - queued;

            if (have == 0)
                return RX_INCOMPLETE;
            if (n > have)
                n = have;
            if (evbuffer_remove_buffer(src, dst, n) < 0)
                return RX_INCOMPLETE;
            if (ep->dp.dead)
                return RX_STOP;
            continue;
        }
        r = rx_batch(ep, src, dst);
        if (ep->dp.dead || r < 0)
            return RX_STOP;
        if (r == 0) {
            compact(src);
            return RX_INCOMPLETE;
        }
    }
}

static dp_pump_fn rx_pump;

static void
rx_pump(void *owner)
{
    struct e2e_pipe *ep = owner;

    if (ep->dp.dead || ep->rx_ended)
        return;
    /* A partial message at EOF is dropped, as Geph's reader does. */
    if (dp_run(&ep->dp, &ep->rx_run, rx_messages, ep, RX_STOP) ==
            RX_INCOMPLETE &&
        ep->lower_eof)
        dp_eof(&ep->dp);
}

static void
tx_fail(struct e2e_pipe *ep, const char *why)
{
    struct sl_error e;

    memset(&e, 0, sizeof(e));
    ep->tx_failed = 1;
    ep->h->error_set(&e, SL_ENOMEM, LAYER, "%s", why);
    ep->h->pipe_set_error(ep->pipe, &e);
    dp_error(&ep->dp, BEV_EVENT_WRITING | BEV_EVENT_ERROR);
}

/*
 * Seals what the user wrote, one message per 8192 bytes at most, back to
 * back into one stretch of room in the lower output (about TX_BATCH
 * bytes), committed together; a chunk lying in one chain is sealed
 * straight from it, else copied into place and sealed there.  Plain:
 * moves the bytes.  Returns false when ep died or failed.
 */
static dp_step_fn tx_messages;

static int
tx_messages(void *owner)
{
    struct e2e_pipe *ep = owner;
    struct evbuffer *src = bufferevent_get_input(ep->dp.mine);
    struct evbuffer *dst = bufferevent_get_output(ep->lbev);
    size_t len;

    while ((len = evbuffer_get_length(src)) > 0) {
        struct evbuffer_iovec room, chunk;
        struct evbuffer_ptr pos;
        size_t cap = 0, used = 0, taken = 0;
        unsigned char *out;

        if (evbuffer_get_length(dst) >= TX_QUEUE)
            return true;
        if (!ep->crypt) {
            /* Bytes reach the lower output before they leave mine.input,
             * so a shutdown waiting for the latter never overtakes them. */
            if (evbuffer_add_buffer(dst, src) != 0) {
                tx_fail(ep, "out of memory");
                return false;
            }
            return !ep->dp.dead;
        }
        while (taken < len && cap < TX_BATCH) {
            size_t n = len - taken < E2E_CHUNK_MAX ? len - taken
                                                   : E2E_CHUNK_MAX;

            cap += 4 + n + E2E_TAG_LEN;
            taken += n;
        }
        taken = 0;
        if (evbuffer_reserve_space(dst, (ev_ssize_t)cap, &room, 1) < 1 ||
            room.iov_len < cap) {
            tx_fail(ep, "out of memory");
            return false;
        }
        out = room.iov_base;
        while (taken < len) {
            size_t n = len - taken < E2E_CHUNK_MAX ? len - taken
                                                   : E2E_CHUNK_MAX;
            const unsigned char *data;

            if (used + 4 + n + E2E_TAG_LEN > cap)
                break;
            if (ep->tx_ctr == UINT64_MAX) {
                tx_fail(ep, "crypt message counter exhausted");
                return false;
            }
            evbuffer_ptr_set(src, &pos, taken, EVBUFFER_PTR_SET);
            if (evbuffer_peek(src, (ev_ssize_t)n, &pos, &chunk, 1) >= 1 &&
                chunk.iov_len >= n) {
                data = chunk.iov_base;
            } else {
                /* Sealed in place: the cipher allows it. */
                evbuffer_copyout_from(src, &pos, out + used + 4, n);
                data = out + used + 4;
            }
            if (e2e_crypt_seal(ep->tx_key, ep->tx_ctr, data, n,
                               out + used) != 0) {
                tx_fail(ep, "cannot seal a crypt message");
                return false;
            }
            ep->tx_ctr++;
            used += 4 + n + E2E_TAG_LEN;
            taken += n;
        }
        room.iov_len = used;
        evbuffer_commit_space(dst, &room, 1);
        if (ep->dp.dead || ep->tx_failed)
            return false;
        evbuffer_drain(src, taken);
        if (ep->dp.dead)
            return false;
    }
    return true;
}

static void
maybe_shutdown(struct e2e_pipe *ep)
{
    if (!ep->shut_pending || ep->shut_done || ep->dp.dead ||
        evbuffer_get_length(bufferevent_get_input(ep->dp.mine)) > 0)
        return;
    /* No close message exists: end the lower pipe's sending. */
    ep->shut_done = 1;
    ep->h->pipe_shutdown_write(ep->lower);
}

static dp_pump_fn tx_pump;

static void
tx_pump(void *owner)
{
    struct e2e_pipe *ep = owner;

    if (ep->dp.dead || ep->tx_failed)
        return;
    if (dp_run(&ep->dp, &ep->tx_run, tx_messages, ep, false) > 0)
        maybe_shutdown(ep);
}

static dp_event_fn lower_event;

static void
lower_event(void *owner, short what)
{
    struct e2e_pipe *ep = owner;

    if (what & BEV_EVENT_EOF) {
        ep->lower_eof = 1;
        if (ep->rx_ended)
            dp_eof(&ep->dp);
        else
            rx_pump(ep);
    } else if (what & BEV_EVENT_ERROR) {
        dp_error(&ep->dp, what);
    }
}

static int
e2e_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct e2e_pipe *ep = layer_ctx;

    (void)p;
    /* The user's output is empty; what the pair moved to us may still
     * wait for room below: tx_pump shuts down after it. */
    ep->shut_pending = 1;
    if (!ep->tx_run.busy)
        maybe_shutdown(ep);
    return 0;
}

static int
e2e_query(void *layer_ctx, int what, void *out, size_t *len)
{
    struct e2e_pipe *ep = layer_ctx;

    (void)out;
    (void)len;
    /* The crypt pipe is a new pipe with no shared secret of its own (as
     * Geph's); in shared-secret mode the pipe below answers, and the
     * protocol name is the core's default, the layer's name. */
    if (what == SL_Q_SHARED_SECRET && ep->crypt)
        return SL_ENOENT;
    return SL_ENOTSUP;
}

static void
e2e_pipe_destroy(void *layer_ctx)
{
    struct e2e_pipe *ep = layer_ctx;

    dp_destroy(&ep->dp, ep->lbev);
}

static const struct sl_pipe_ops e2e_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = e2e_shutdown_write,
    .query = e2e_query,
    .destroy = e2e_pipe_destroy,
};

/* Makes the pipe.  Consumes lower (also on failure).  tx_key and rx_key
 * are NULL in shared-secret mode. */
static struct sl_pipe *
pipe_make(const struct e2e_params *par, struct event_base *base,
          struct sl_pipe *lower, const uint8_t *tx_key,
          const uint8_t *rx_key, struct e2e_pipe **epp, struct sl_error *e)
{
    const struct sl_host *h = par->h;
    struct e2e_pipe *ep = calloc(1, sizeof(*ep));
    struct sl_pipe *p;

    if (ep == NULL) {
        h->pipe_free(lower);
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    ep->h = h;
    ep->crypt = tx_key != NULL;
    if (ep->crypt) {
        memcpy(ep->tx_key, tx_key, E2E_KEY_LEN);
        memcpy(ep->rx_key, rx_key, E2E_KEY_LEN);
    }
    ep->read_buffer = par->read_buffer;
    ep->lower = lower;
    ep->lbev = h->pipe_get0_bev(lower);
    if (dp_init(&ep->dp, base, ep_free, ep) != 0) {
        ep_free(ep);
        h->pipe_free(lower);
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    dp_wire(&ep->dp, ep->lbev, &(const struct dp_wiring){
                .rx = rx_pump, .tx = tx_pump, .lower_event = lower_event,
                .take = TX_PULL, .read_buffer = ep->read_buffer,
                .queue = TX_QUEUE });
    p = h->pipe_new(LAYER, ep->dp.user, lower, &e2e_pipe_ops, ep);
    if (p == NULL) {
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    ep->pipe = p;
    *epp = ep;
    return p;
}

/* Handles what arrived right behind the hello.  The user has no
 * callbacks yet, so nothing calls back here. */
static void
pipe_start(struct e2e_pipe *ep)
{
    dp_rx(&ep->dp);
}

/* ---- the hello ----------------------------------------------------------- */

enum hs_state { HS_WAIT, HS_DONE, HS_FAILED };

struct e2e_wrap {
    struct e2e_params par;
    struct event_base *base;
    struct sl_pipe *lower;       /* until the pipe owns it */
    struct bufferevent *lbev;
    enum sl_role role;
    sl_pipe_fn *done;
    void *arg;
    struct event *done_ev;       /* delivers the result from the loop */
    struct event *timer_ev;      /* handshake_timeout */
    enum hs_state state;
    bool challenge;              /* client: shared-secret mode */
    uint8_t ss[SS_MAX];          /* client: the shared secret below */
    size_t ss_len;
    struct e2e_client_hello sent;  /* client: the hello sent (no creds) */
    uint8_t sk[E2E_KEY_LEN];     /* client: ephemeral X25519 secret */
    struct e2e_pipe *ep;         /* the pipe's state, once made */
    struct sl_pipe *result;
    struct sl_error err;
    bool canceled;
    bool finished;               /* done_ev is active */
    bool in_step, again;
};

static void
wrap_free(struct e2e_wrap *w)
{
    if (w->done_ev != NULL)
        event_free(w->done_ev);
    if (w->timer_ev != NULL)
        event_free(w->timer_ev);
    sodium_memzero(w, sizeof(*w));
    free(w);
}

static void
drop_lower(struct e2e_wrap *w)
{
    if (w->lower == NULL)
        return;
    bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
    w->par.h->pipe_free(w->lower);
    w->lower = NULL;
    w->lbev = NULL;
}

static void
wrap_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct e2e_wrap *w = arg;
    const struct sl_host *h = w->par.h;
    sl_pipe_fn *done = w->done;
    void *done_arg = w->arg;
    struct sl_pipe *p = w->result;
    struct sl_error err = w->err;

    (void)fd;
    (void)what;
    w->result = NULL;
    if (w->canceled) {
        if (p != NULL)
            h->pipe_free(p);
        p = NULL;
        memset(&err, 0, sizeof(err));
        h->error_set(&err, SL_ECANCELED, LAYER, "hello cancelled");
    } else if (p == NULL && err.code == 0) {
        h->error_set(&err, SL_EPROTO, LAYER, "hello failed");
    }
    drop_lower(w);
    wrap_free(w);
    done(p, p != NULL ? NULL : &err, done_arg);
}

static void
finish(struct e2e_wrap *w)
{
    w->finished = true;
    if (w->timer_ev != NULL)
        evtimer_del(w->timer_ev);
    event_active(w->done_ev, EV_TIMEOUT, 0);
}

/* The hello failed: the connection is dropped (the exit never answers
 * with Reject), and the wrap ends from the loop. */
static void
hs_fail(struct e2e_wrap *w, int code, const char *fmt, const char *arg)
{
    if (w->finished || w->state != HS_WAIT)
        return;
    w->par.h->error_set(&w->err, code, LAYER, fmt, arg);
    w->state = HS_FAILED;
    if (w->role == SL_ROLE_SERVER)
        w->par.h->log(SL_LOG_DEBUG, LAYER, "dropping a client: %s",
                      w->err.text);
    /* Quiet now; the pipe below is freed from the loop (wrap_deliver),
     * never inside its own callback. */
    bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
    bufferevent_disable(w->lbev, EV_READ | EV_WRITE);
    finish(w);
}

/* Appends u32 BE length || payload to the lower output. */
static int
send_msg(struct e2e_wrap *w, const struct sc_enc *enc)
{
    struct evbuffer *out = bufferevent_get_output(w->lbev);
    unsigned char hdr[4];

    hdr[0] = (unsigned char)(enc->len >> 24);
    hdr[1] = (unsigned char)(enc->len >> 16);
    hdr[2] = (unsigned char)(enc->len >> 8);
    hdr[3] = (unsigned char)enc->len;
    if (evbuffer_expand(out, 4 + enc->len) != 0 ||
        evbuffer_add(out, hdr, 4) != 0 ||
        evbuffer_add(out, enc->buf, enc->len) != 0)
        return -1;
    return 0;
}

/* Makes the pipe and finishes.  Consumes the wrap's lower. */
static void
hs_done(struct e2e_wrap *w, const uint8_t *tx_key, const uint8_t *rx_key)
{
    struct sl_pipe *lower = w->lower;
    struct sl_error e;

    memset(&e, 0, sizeof(e));
    w->state = HS_DONE;
    w->lower = NULL;
    bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
    w->result = pipe_make(&w->par, w->base, lower, tx_key, rx_key, &w->ep,
                          &e);
    w->lbev = NULL;
    if (w->result == NULL) {
        w->err = e;
        finish(w);
        return;
    }
    finish(w);
    pipe_start(w->ep);
}

/* Makes a Reject reason printable for an error text. */
static void
show_reason(const struct e2e_exit_inner *in, char *out, size_t cap)
{
    size_t n = in->reason_len < REASON_SHOWN ? in->reason_len : REASON_SHOWN;
    size_t i;

    if (cap == 0)
        return;
    if (n > cap - 1)
        n = cap - 1;
    for (i = 0; i < n; i++) {
        unsigned char c = in->reason[i];

        out[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[i] = '\0';
    if (in->reason_len > n && cap > 4 && i >= 3)
        memcpy(out + i - 3, "...", 3);
}

/* Client: the ExitHello payload. */
static void
client_got(struct e2e_wrap *w, const unsigned char *msg, size_t len)
{
    struct e2e_exit_inner in;
    uint8_t sig[E2E_SIG_LEN], dh[E2E_KEY_LEN], mac[E2E_KEY_LEN];
    uint8_t c2e[E2E_KEY_LEN], e2c[E2E_KEY_LEN];
    char reason[REASON_SHOWN + 1];
    const char *why = NULL;
    struct sc_enc enc;
    int ok;

    if (e2e_exit_hello_get(msg, len, &in, sig, &why) != 0) {
        hs_fail(w, SL_EPROTO, "malformed ExitHello: %s", why);
        return;
    }
    if (w->par.has_pubkey) {
        sc_enc_init(&enc, 2 * E2E_MSG_MAX);
        e2e_signed_message(&enc, &w->sent, &in);
        ok = !enc.failed &&
             crypto_sign_verify_detached(sig, enc.buf, enc.len,
                                         w->par.exit_pk) == 0;
        sc_enc_free(&enc);
        if (!ok) {
            hs_fail(w, SL_EAUTH, "%s", "the exit's signature does not "
                    "verify with pubkey (wrong exit or wrong key)");
            return;
        }
    }
    if (in.kind == E2E_EH_REJECT) {
        show_reason(&in, reason, sizeof(reason));
        hs_fail(w, SL_EAUTH, "the exit refused the session: %s", reason);
        return;
    }
    if (w->challenge) {
        if (in.kind != E2E_EH_RESPONSE) {
            hs_fail(w, SL_EPROTO, "%s", "the exit answered a shared-secret "
                    "challenge with an X25519 key");
            return;
        }
        e2e_challenge_mac(mac, w->sent.key, w->ss, w->ss_len);
        ok = sodium_memcmp(mac, in.key, E2E_KEY_LEN) == 0;
        sodium_memzero(mac, sizeof(mac));
        if (!ok) {
            hs_fail(w, SL_EAUTH, "%s", "the exit's answer to the challenge "
                    "is wrong: it does not hold the shared secret below");
            return;
        }
        hs_done(w, NULL, NULL);
        return;
    }
    if (in.kind != E2E_EH_X25519) {
        hs_fail(w, SL_EPROTO, "%s", "the exit answered an X25519 hello "
                "with a shared-secret response");
        return;
    }
    if (shared_dh(w->role, w->sk, in.key, dh) != 0) {
        hs_fail(w, SL_EAUTH, "%s", "the exit's X25519 key is of low order");
        return;
    }
    e2e_crypt_keys(dh, c2e, e2c);
    hs_done(w, c2e, e2c);
    sodium_memzero(dh, sizeof(dh));
    sodium_memzero(c2e, sizeof(c2e));
    sodium_memzero(e2c, sizeof(e2c));
}

/* Exit: the ClientHello payload. */
static void
server_got(struct e2e_wrap *w, const unsigned char *msg, size_t len)
{
    struct e2e_client_hello ch;
    struct e2e_exit_inner in;
    uint8_t ss[SS_MAX], sk[E2E_KEY_LEN], dh[E2E_KEY_LEN];
    uint8_t c2e[E2E_KEY_LEN], e2c[E2E_KEY_LEN], sig[E2E_SIG_LEN];
    size_t ss_len = sizeof(ss);
    const char *why = NULL;
    struct sc_enc enc;
    bool x25519 = false;

    memset(&in, 0, sizeof(in));
    if (e2e_client_hello_get(msg, len, &ch, &why) != 0) {
        hs_fail(w, SL_EPROTO, "malformed ClientHello: %s", why);
        return;
    }
    /* Credentials are ignored: this exit has no broker (§6.2 step 3). */
    if (ch.kind == E2E_CH_CHALLENGE) {
        if (w->par.h->pipe_query(w->lower, SL_Q_SHARED_SECRET, ss,
                                 &ss_len) != 0 || ss_len == 0) {
            hs_fail(w, SL_EPROTO, "%s", "the client sent a shared-secret "
                    "challenge but the pipe below has no shared secret");
            return;
        }
        in.kind = E2E_EH_RESPONSE;
        e2e_challenge_mac(in.key, ch.key, ss, ss_len);
        sodium_memzero(ss, sizeof(ss));
    } else {
        in.kind = E2E_EH_X25519;
        if (ephemeral(w->role, sk, in.key) != 0 ||
            shared_dh(w->role, sk, ch.key, dh) != 0) {
            sodium_memzero(sk, sizeof(sk));
            hs_fail(w, SL_EAUTH, "%s", "the client's X25519 key is of low "
                    "order");
            return;
        }
        sodium_memzero(sk, sizeof(sk));
        e2e_crypt_keys(dh, c2e, e2c);
        sodium_memzero(dh, sizeof(dh));
        x25519 = true;
    }
    /* Signed over a re-encoding of the hello, as Geph's exit does. */
    sc_enc_init(&enc, 2 * E2E_MSG_MAX);
    e2e_signed_message(&enc, &ch, &in);
    if (enc.failed ||
        crypto_sign_detached(sig, NULL, enc.buf, enc.len,
                             w->par.sign_sk) != 0) {
        sc_enc_free(&enc);
        hs_fail(w, SL_ENOMEM, "%s", "cannot sign the ExitHello");
        goto out;
    }
    sc_enc_free(&enc);
    sc_enc_init(&enc, E2E_MSG_MAX);
    e2e_exit_inner_put(&enc, &in);
    sc_put_raw(&enc, sig, E2E_SIG_LEN);
    if (enc.failed || send_msg(w, &enc) != 0) {
        sc_enc_free(&enc);
        hs_fail(w, SL_ENOMEM, "%s", "out of memory");
        goto out;
    }
    sc_enc_free(&enc);
    /* The exit reads with c2e and writes with e2c. */
    hs_done(w, x25519 ? e2c : NULL, x25519 ? c2e : NULL);
out:
    sodium_memzero(c2e, sizeof(c2e));
    sodium_memzero(e2c, sizeof(e2c));
}

/* One pass over the lower input: the peer's hello, once complete. */
static void
hs_step(struct e2e_wrap *w)
{
    struct evbuffer *in = bufferevent_get_input(w->lbev);
    unsigned char hdr[4], *msg;
    size_t have = evbuffer_get_length(in), len;
    unsigned char *copy;

    if (w->state != HS_WAIT || have < 4)
        return;
    evbuffer_copyout(in, hdr, 4);
    len = be32(hdr);
    if (len > E2E_MSG_MAX) {
        char n[16];

        snprintf(n, sizeof(n), "%zu", len);
        hs_fail(w, SL_EPROTO, w->role == SL_ROLE_CLIENT
                ? "ExitHello length %s exceeds 100000"
                : "ClientHello length %s exceeds 100000", n);
        return;
    }
    if (have < 4 + len) {
        make_room(w->lbev, 4 + len);
        return;
    }
    if ((msg = evbuffer_pullup(in, (ev_ssize_t)(4 + len))) == NULL) {
        hs_fail(w, SL_ENOMEM, "%s", "out of memory");
        return;
    }
    /* The hello leaves the input before anything is handed up, so that
     * the bytes behind it are the pipe's. */
    if ((copy = malloc(len > 0 ? len : 1)) == NULL) {
        hs_fail(w, SL_ENOMEM, "%s", "out of memory");
        return;
    }
    memcpy(copy, msg + 4, len);
    evbuffer_drain(in, 4 + len);
    if (w->state == HS_WAIT) {
        if (w->role == SL_ROLE_CLIENT)
            client_got(w, copy, len);
        else
            server_got(w, copy, len);
    }
    free(copy);
}

static void
hs_process(struct e2e_wrap *w)
{
    if (w->in_step) {
        w->again = true;
        return;
    }
    w->in_step = true;
    do {
        w->again = false;
        hs_step(w);
    } while (w->again && w->state == HS_WAIT);
    w->in_step = false;
}

static void
hs_readcb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    hs_process(arg);
}

static void
hs_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct e2e_wrap *w = arg;

    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    hs_process(w);
    if (w->state == HS_DONE && w->ep != NULL) {
        /* Finished with the last bytes: the event is the pipe's. */
        dp_lower_event(&w->ep->dp, what);
        return;
    }
    if (what & BEV_EVENT_EOF)
        hs_fail(w, SL_ECLOSED, "%s", "connection closed during the hello");
    else
        hs_fail(w, SL_ECLOSED, "%s", "lower pipe failed during the hello");
}

static void
hs_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct e2e_wrap *w = arg;
    char ms[24];

    (void)fd;
    (void)what;
    snprintf(ms, sizeof(ms), "%lld", (long long)w->par.timeout_ms);
    hs_fail(w, SL_ETIMEDOUT, w->role == SL_ROLE_CLIENT
            ? "no ExitHello within %s ms" : "no ClientHello within %s ms",
            ms);
}

/* Client: the ClientHello, in one write. */
static int
client_hello(struct e2e_wrap *w, struct sl_error *e)
{
    const struct sl_host *h = w->par.h;
    struct sc_enc enc;
    size_t ss_len = sizeof(w->ss);
    int r = 0;

    memset(&w->sent, 0, sizeof(w->sent));
    if (h->pipe_query(w->lower, SL_Q_SHARED_SECRET, w->ss, &ss_len) == 0 &&
        ss_len > 0) {
        w->challenge = true;
        w->ss_len = ss_len;
        w->sent.kind = E2E_CH_CHALLENGE;
        make_challenge(w->sent.key);
    } else {
        w->sent.kind = E2E_CH_X25519;
        if (ephemeral(w->role, w->sk, w->sent.key) != 0)
            return h->error_set(e, SL_EPROTO, LAYER, "cannot make an "
                                "X25519 key");
    }
    /* No credentials: this client has no broker. */
    sc_enc_init(&enc, E2E_MSG_MAX);
    e2e_client_hello_put(&enc, &w->sent);
    if (enc.failed || send_msg(w, &enc) != 0)
        r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    sc_enc_free(&enc);
    return r;
}

static int
e2e_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
         enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
         struct sl_error *e)
{
    struct e2e_cfg *c = cfg;
    const struct sl_host *h = c->par.h;
    struct e2e_wrap *w;
    struct timeval tv;
    int r;

    if (role == SL_ROLE_SERVER && !c->par.has_key) {
        h->pipe_free(lower);
        return h->error_set(e, SL_EINVAL, LAYER, "accepting needs "
                            "signing_key=FILE (the exit's ed25519 key)");
    }
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        h->pipe_free(lower);
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    w->par = c->par;
    w->base = base;
    w->lower = lower;
    w->lbev = h->pipe_get0_bev(lower);
    w->role = role;
    w->done = done;
    w->arg = arg;
    w->state = HS_WAIT;
    w->done_ev = event_new(base, -1, 0, wrap_deliver, w);
    w->timer_ev = evtimer_new(base, hs_timeout, w);
    if (w->done_ev == NULL || w->timer_ev == NULL) {
        r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        goto fail;
    }
    bufferevent_setcb(w->lbev, hs_readcb, NULL, hs_eventcb, w);
    if (role == SL_ROLE_CLIENT && (r = client_hello(w, e)) != 0)
        goto fail;
    tv.tv_sec = (time_t)(w->par.timeout_ms / 1000);
    tv.tv_usec = (suseconds_t)(w->par.timeout_ms % 1000) * 1000;
    evtimer_add(w->timer_ev, &tv);
    bufferevent_enable(w->lbev, EV_READ | EV_WRITE);
    /* The layer below may already hold the peer's bytes. */
    if (evbuffer_get_length(bufferevent_get_input(w->lbev)) > 0)
        bufferevent_trigger(w->lbev, EV_READ,
                            BEV_TRIG_IGNORE_WATERMARKS |
                                BEV_TRIG_DEFER_CALLBACKS);
    *op = w;
    return 0;
fail:
    drop_lower(w);
    wrap_free(w);
    return r;
}

static void
e2e_cancel(void *op)
{
    struct e2e_wrap *w = op;

    if (w->canceled)
        return;
    w->canceled = true;
    if (w->finished)
        return;   /* wrap_deliver turns the result into ECANCELED */
    drop_lower(w);
    finish(w);
}

/* ---- configuration and plugin -------------------------------------------- */

static int
e2e_configure(const struct sl_host *h, void *plugin_ctx,
              const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct e2e_cfg *c = calloc(1, sizeof(*c));
    const char *pubkey = h->opt_str(o, "pubkey");
    const char *keyfile = h->opt_str(o, "signing_key");
    uint8_t seed[E2E_SEED_LEN], pk[E2E_PK_LEN];
    char hex[E2E_PK_HEX_LEN + 1];
    int created = 0, r;

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->par.h = h;
    c->par.timeout_ms = h->opt_int(o, "handshake_timeout");
    c->par.read_buffer = (size_t)h->opt_int(o, "read_buffer");
    if (pubkey != NULL) {
        if ((r = e2e_pk_from_hex(pubkey, c->par.exit_pk, e)) != 0)
            goto fail;
        c->par.has_pubkey = true;
    }
    if (keyfile != NULL) {
        if (*keyfile == '\0') {
            r = h->error_set(e, SL_EINVAL, LAYER, "signing_key is empty");
            goto fail;
        }
        if ((r = e2e_key_open(keyfile, seed, pk, &created, e)) != 0)
            goto fail;
        r = crypto_sign_seed_keypair(pk, c->par.sign_sk, seed);
        sodium_memzero(seed, sizeof(seed));
        if (r != 0) {
            r = h->error_set(e, SL_EINVAL, LAYER, "signing key %s: cannot "
                             "derive the key pair", keyfile);
            goto fail;
        }
        c->par.has_key = true;
        e2e_pk_to_hex(pk, hex);
        h->log(SL_LOG_INFO, LAYER, "%s signing key %s; exit public key %s",
               created ? "created" : "loaded", keyfile, hex);
    }
    *out = c;
    return 0;
fail:
    sodium_memzero(c, sizeof(*c));
    free(c);
    return r;
}

static void
e2e_unconfigure(void *cfg)
{
    struct e2e_cfg *c = cfg;

    sodium_memzero(c, sizeof(*c));
    free(c);
}

static int
e2e_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    if (sl_check_libevent(h, LAYER, e) != 0)
        return SL_EABI;
    if (sodium_init() < 0)
        return h->error_set(e, SL_EINVAL, LAYER, "libsodium failed to "
                            "initialise");
    return 0;
}

static const struct sl_layer_ops e2e_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "Geph's client/exit hello, signed by the exit, with the "
               "client/exit crypt pipe",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    .flags = SL_LF_ENCRYPTS | SL_LF_AUTHENTICATES | SL_LF_HALF_CLOSE,
    .opts = e2e_opts,
    .configure = e2e_configure,
    .unconfigure = e2e_unconfigure,
    .wrap = e2e_wrap,
    .cancel = e2e_cancel,
};

static const struct sl_layer_ops *const e2e_layers[] = { &e2e_layer, NULL };

SL_PLUGIN_DEFINE(e2e, "Geph client/exit hello and crypt pipe",
                 PACKAGE_VERSION, "ISC", "sillad", e2e_layers, e2e_init,
                 NULL)
