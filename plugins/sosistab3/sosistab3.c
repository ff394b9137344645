/* sosistab3.c - the sosistab3 wrap layer: Geph's obfuscating transport.
 *
 * Byte-compatible with the Rust crate sillad-sosistab3 0.3.0; the contract
 * is doc/PROTOCOL.sosistab3, which points at the full specification.  The
 * crypto (cookie, keys, handshake messages, records) is s3-crypto.c; this
 * file is the handshake state machine and the record path over libevent.
 *
 * Handshake.  The client writes HS_c || padding in one go from wrap() and
 * reads HS_s || padding; any failure ends the wrap at once.  The server
 * arms a deadline of uniform 10-20 s at wrap() (its accept), reads HS_c
 * and streams its padding through BLAKE3, checks time and the replay cache
 * of its cfg, and only then answers.  On any failure it stops reading and
 * writing, says nothing, and ends the wrap with the error when the
 * deadline fires; a handshake not finished by then ends the same way.
 *
 * Records.  The pipe handed up is one end of a bufferevent pair; this
 * layer drives the other end ("mine"), as tcp.c does with its socket:
 *
 *   lower input  -> open records -> mine.output -> (pair) -> user input
 *   user output  -> (pair) -> mine.input -> seal records -> lower output
 *
 * A bufferevent_filter over the lower pipe would save the pair hop (which
 * moves chains, not bytes), but libevent 2.1's filter ignores the input
 * filter's BEV_ERROR, passes the lower's EOF up before the records still
 * waiting below are decrypted, and does not resume decrypting data left
 * below when its reader re-enables EV_READ; the pair end has none of these
 * problems and gives users exactly the semantics of a tcp pipe.
 *
 * Bounds: decrypting stops while mine.output holds read_buffer bytes (the
 * pair moves them on up to the user's own read high watermark, also
 * read_buffer by default), sealing stops while the lower output holds
 * TX_QUEUE bytes, and the pair moves at most TX_PULL bytes of the user's
 * output to us at a time.  The lower's read high watermark is raised only
 * when a record announces more than it would ever let through.  Records
 * are sealed and opened in batches of up to 128 KiB per reservation and
 * commit: a chain per record would cost an allocation per record here and
 * in every buffer downstream.
 *
 * Re-entrancy: libevent 2.1 pairs always defer their callbacks, so the
 * user never runs inside this code; but a layer below may call back at
 * once (an error from inside a write), and draining a lower input may
 * make it deliver more.  Entry points count themselves in
 * (common/drivenpair.h); destroy inside one only marks the pipe dead;
 * steps that can call out are followed by a dead check; rx_pump and
 * tx_pump are guarded against their own recursion and loop again when
 * re-entered (dp_run).
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "blake3.h"
#include "drivenpair.h"
#include "s3-crypto.h"
#include "s3-replay.h"
#include "sillad/plugin.h"
#ifdef S3_TEST_HOOKS
#include "s3-test.h"
#endif

#define LAYER "sosistab3"
#define TX_QUEUE (256 * 1024)     /* ciphertext waiting in the lower output */
#define TX_PULL (256 * 1024)      /* user bytes moved to us at a time */
/* Plaintext opened, and ciphertext sealed, per commit; with libevent's
 * chain header it fills a 128 KiB allocation.  Of 16, 32, 64 and 128 KiB,
 * 128 KiB gave the most throughput over TCP (bench/bench-sosistab3). */
#define RX_BATCH (128 * 1024 - 512)
#define TX_BATCH (128 * 1024 - 512)
#define COMPACT_CHAINS 16         /* compact the lower input beyond this */
#define COMPACT_SMALL 4096        /* many chains of under this on average */
#define DEADLINE_MIN_US 10000000  /* server handshake: 10 s ... */
#define DEADLINE_SPAN_US 10000000 /* ... plus up to 10 s */
#define WAIT_ENV "SOSISTAB3_WAIT" /* set: wait WAIT_DEFAULT_MS at start */
#define WAIT_DEFAULT_MS 300000    /* WAIT_INTERVAL, the timestamp window */

/* ---- configuration ------------------------------------------------------- */

/* What a wrap and the pipe it makes copy from the cfg: unconfigure may run
 * while they live. */
struct s3_params {
    const struct sl_host *h;
    uint8_t key_c[S3_KEY_LEN];   /* hs_key_c: seals the client's message */
    uint8_t key_s[S3_KEY_LEN];   /* hs_key_s: seals the server's message */
    bool obfs_lengths;
    enum s3_aead aead;
    size_t record_size;
    size_t read_buffer;
};

/* What the server wraps of one cfg (one listener) share; a wrap holds a
 * reference, so it outlives an unconfigure. */
struct s3_listen {
    unsigned refs;
    uint64_t open_ms;            /* mono_ms() when handshakes may start */
    size_t queue_max;            /* accept_queue */
    size_t queued;               /* made, not yet handed to done */
    size_t waiting;              /* held until open_ms */
};

struct s3_cfg {
    struct s3_params par;
    struct s3_replay *replay;    /* this listener's, shared by its wraps */
    struct s3_listen *listen;
};

static const struct sl_opt_spec s3_opts[] = {
    { "cookie", SL_OPT_STR, SL_OPT_REQUIRED | SL_OPT_SECRET, NULL,
      "shared secret, optionally followed by ---{ObfsParams JSON}", NULL, 0,
      0 },
    { "aead", SL_OPT_ENUM, 0, "auto",
      "ChaCha20-Poly1305 implementation for records", "auto|openssl|libsodium",
      0, 0 },
    { "record_size", SL_OPT_SIZE, 0, "32k",
      "largest plaintext of one data record sent", NULL, 1, S3_REC_MAX_BODY },
    { "replay_cache", SL_OPT_INT, 0, "1000000",
      "most client handshakes a listener remembers", NULL, 1, 1000000000 },
    { "read_buffer", SL_OPT_SIZE, 0, "256k",
      "stop decrypting while this much waits for the reader", NULL, 4096,
      1073741824 },
    { "start_wait", SL_OPT_DURATION, 0, NULL,
      "server: hold connections this long after start before any "
      "handshake (default 300s if SOSISTAB3_WAIT is set, else 0)", NULL, 0,
      86400000 },
    { "accept_queue", SL_OPT_INT, 0, "1000",
      "server: finished handshakes not yet taken; beyond, the new pipe "
      "is dropped", NULL, 1, 1000000 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/* ---- test hooks ------------------------------------------------------------
 *
 * Compiled in only for the test program (s3-test.h); the module has none.
 */
#ifdef S3_TEST_HOOKS
static const struct s3_test_hooks *hooks;

void
s3_test_set_hooks(const struct s3_test_hooks *h)
{
    hooks = h;
}
#endif

static uint64_t
unix_now(enum sl_role role)
{
#ifdef S3_TEST_HOOKS
    if (hooks != NULL && hooks->unix_time != NULL)
        return hooks->unix_time(hooks->arg, role);
#endif
    (void)role;
    return (uint64_t)time(NULL);
}

static uint64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A fresh ephemeral key pair. */
static int
ephemeral(enum sl_role role, uint8_t sk[S3_KEY_LEN], uint8_t pk[S3_KEY_LEN])
{
#ifdef S3_TEST_HOOKS
    if (hooks != NULL && hooks->secret != NULL) {
        hooks->secret(hooks->arg, role, sk);
        return crypto_scalarmult_base(pk, sk) == 0 ? S3_OK : S3_ECRYPTO;
    }
#endif
    (void)role;
    return s3_keypair(sk, pk);
}

/* HS || padding into out (S3_HS_LEN + S3_HS_PAD_SEND_MAX bytes). */
static int
hello(enum sl_role role, const uint8_t key[S3_KEY_LEN],
      const uint8_t pk[S3_KEY_LEN], uint64_t timestamp,
      const uint8_t responding_to[S3_HASH_LEN], uint8_t *out, size_t *len)
{
#ifdef S3_TEST_HOOKS
    if (hooks != NULL && hooks->hs_random != NULL) {
        uint8_t nonce[S3_NONCE_LEN];
        size_t pad = hooks->hs_random(hooks->arg, role, nonce,
                                      out + S3_HS_LEN);
        int r;

        if (pad > S3_HS_PAD_SEND_MAX)
            return S3_EINVAL;
        r = s3_hs_seal(key, pk, timestamp, out + S3_HS_LEN, pad,
                       responding_to, nonce, out);
        if (r == S3_OK)
            *len = S3_HS_LEN + pad;
        return r;
    }
#endif
    (void)role;
    return s3_hs_seal_random(key, pk, timestamp, responding_to, out, len);
}

/* Microseconds from accept to the server's handshake deadline. */
static int64_t
deadline_us(void)
{
#ifdef S3_TEST_HOOKS
    if (hooks != NULL && hooks->deadline_ms > 0)
        return hooks->deadline_ms * 1000;
#endif
    /* listen_loop: 10 s plus a uniformly random fraction of 10 s. */
    return DEADLINE_MIN_US + (int64_t)randombytes_uniform(DEADLINE_SPAN_US + 1);
}

static bool
obfs_for(bool configured, enum sl_role role)
{
#ifdef S3_TEST_HOOKS
    if (hooks != NULL && hooks->obfs != NULL) {
        int v = hooks->obfs(hooks->arg, role);

        if (v >= 0)
            return v != 0;
    }
#endif
    (void)role;
    return configured;
}

static unsigned
jitter(void)
{
#ifdef S3_TEST_HOOKS
    if (hooks != NULL && hooks->jitter != NULL)
        return hooks->jitter(hooks->arg);
#endif
    return s3_random_jitter();
}

/* ---- the record path ----------------------------------------------------- */

struct s3_pipe {
    const struct sl_host *h;
    enum sl_role role;
    struct sl_pipe *pipe;         /* ours, for pipe_set_error */
    struct sl_pipe *lower;        /* owned by pipe */
    struct bufferevent *lbev;     /* the lower pipe's */
    struct dp dp;                 /* the pair: mine, user; busy, dead */
    struct s3_dir *tx, *rx;
    uint8_t ss[S3_KEY_LEN];
    size_t record_size, read_buffer;
    size_t need;                  /* input the next record needs, or 0 */
    bool obfs_lengths;
    struct dp_dir rx_run, tx_run; /* each direction's pump (dp_run) */
    unsigned lower_eof : 1;       /* the peer ended its send direction */
    unsigned rx_failed : 1, tx_failed : 1;
    unsigned shut_pending : 1, shut_done : 1;
};

enum rx_result { RX_BLOCKED, RX_INCOMPLETE, RX_STOP };

static void
sp_free(void *owner)
{
    struct s3_pipe *sp = owner;

    dp_fini(&sp->dp);
    s3_dir_free(sp->tx);
    s3_dir_free(sp->rx);
    sodium_memzero(sp, sizeof(*sp));
    free(sp);
}

static void
rx_fail(struct s3_pipe *sp, int r)
{
    struct sl_error e;

    memset(&e, 0, sizeof(e));
    sp->rx_failed = 1;
    if (r == S3_ELENAUTH || r == S3_EBODYAUTH)
        sp->h->error_set(&e, SL_EAUTH, LAYER, "record authentication failed");
    else if (r == S3_ETOOBIG)
        sp->h->error_set(&e, SL_EPROTO, LAYER, "record longer than 1 MiB");
    else if (r == S3_ENOMEM)
        sp->h->error_set(&e, SL_ENOMEM, LAYER, "out of memory");
    else
        sp->h->error_set(&e, SL_EPROTO, LAYER, "opening a record: %s",
                         s3_strerror(r));
    sp->h->pipe_set_error(sp->pipe, &e);
    /* Nothing more is read; the user learns why and closes. */
    bufferevent_disable(sp->lbev, EV_READ);
    dp_error(&sp->dp, BEV_EVENT_READING | BEV_EVENT_ERROR);
}

/* Lets the lower input grow to hold a record of rec_len bytes. */
static void
make_room(struct s3_pipe *sp, size_t rec_len)
{
    size_t lo = 0, hi = 0;

    if (bufferevent_getwatermark(sp->lbev, EV_READ, &lo, &hi) == 0 &&
        hi != 0 && hi < rec_len)
        bufferevent_setwatermark(sp->lbev, EV_READ, lo, rec_len);
}

/*
 * Opens the records at the head of src into dst, as many as lie complete
 * in src's first chain (the usual case: records arrive in the chains the
 * layer below read), straight into one stretch of room reserved in dst,
 * and hands them on in one commit; a record split over chains is pulled
 * up first.  The header of a record is decrypted once, except when the
 * record is split or does not fit the batch.
 *
 * Returns the number of records consumed (check sp->dp.dead after), 0 when
 * the next one is not all here yet, or a negative s3 status.  A failure
 * after some records still delivers those; the next call reports it.
 */
static int
rx_batch(struct s3_pipe *sp, struct evbuffer *src, struct evbuffer *dst)
{
    size_t have = evbuffer_get_length(src), inlen, cap, want = 0;
    size_t in_off = 0, out_off = 0, rec_len = 0;
    struct evbuffer_iovec v, room;
    uint8_t *in;
    int32_t L = 0;
    int r = S3_OK, n = 0;

    /* Known to be short: the header gives the same answer until then. */
    if (have < S3_REC_MIN_BUFFERED || have < sp->need)
        return 0;
    if (evbuffer_peek(src, -1, NULL, &v, 1) < 1)
        return 0;
    in = v.iov_base;
    inlen = v.iov_len;
    if (inlen < S3_REC_MIN_BUFFERED) {
        if ((in = evbuffer_pullup(src, S3_REC_MIN_BUFFERED)) == NULL)
            return S3_ENOMEM;
        inlen = S3_REC_MIN_BUFFERED;
    }
    for (;;) {
        /* Plaintext never outgrows its records: room for what the chain
         * holds (up to a batch) is room for every record in it. */
        cap = inlen < RX_BATCH ? inlen : RX_BATCH;
        if (cap < want)
            cap = want;
        if (evbuffer_reserve_space(dst, (ev_ssize_t)cap, &room, 1) < 1 ||
            room.iov_len < cap)
            return S3_ENOMEM;
        while (in_off < inlen) {
            r = s3_rec_open(sp->rx, in + in_off, inlen - in_off,
                            (uint8_t *)room.iov_base + out_off,
                            cap - out_off, &rec_len, &L);
            if (r != S3_OK)
                break;
            in_off += rec_len;
            if (L > 0)
                out_off += (size_t)L;
            n++;
        }
        if (n > 0)
            break;
        if (r == S3_ENOSPC) {
            want = (size_t)L;            /* a record larger than a batch */
        } else if (r != S3_EAGAIN) {
            return r;                    /* fatal */
        } else if (rec_len > have) {
            sp->need = rec_len;          /* not all here yet */
            make_room(sp, rec_len);
            return 0;
        } else {
            /* All here, but split over chains. */
            if ((in = evbuffer_pullup(src, (ev_ssize_t)rec_len)) == NULL)
                return S3_ENOMEM;
            inlen = rec_len;
        }
    }
    /* A failure after some records: they are good, deliver them; the
     * state stays failed and the next call reports it. */
    sp->need = 0;
    /* Consume, then deliver, so that the user, who may run in the commit,
     * sees a consistent state.  The drain may re-enter rx_pump (guarded). */
    evbuffer_drain(src, in_off);
    if (out_off > 0) {
        room.iov_len = out_off;
        evbuffer_commit_space(dst, &room, 1);
    }
    return n;
}

/*
 * Gathers what waits below into one chain when it lies in many small ones.
 * Each read of the layer below may arrive as a chain of its own; read in
 * tiny pieces (a trickling peer, SL_DBG_RMAX), a waiting record would cost
 * a chain per piece, far more memory than its bytes.  Large chains (the
 * usual case) are left alone: copying them would cost, not save.  The
 * first chain grows by doubling, so a byte is copied a bounded number of
 * times.
 */
static void
compact(struct evbuffer *src)
{
    size_t have = evbuffer_get_length(src);
    int chains = evbuffer_peek(src, -1, NULL, NULL, 0);

    if (chains > COMPACT_CHAINS && have / (size_t)chains < COMPACT_SMALL)
        evbuffer_pullup(src, (ev_ssize_t)have);
}

static dp_step_fn rx_records;

static int
rx_records(void *owner)
{
    struct s3_pipe *sp = owner;
    struct evbuffer *src = bufferevent_get_input(sp->lbev);
    struct evbuffer *dst = bufferevent_get_output(sp->dp.mine);
    int r;

    for (;;) {
        /* After the peer's EOF nothing more arrives: open it all. */
        if (!sp->lower_eof && evbuffer_get_length(dst) >= sp->read_buffer) {
            compact(src);
            return RX_BLOCKED;
        }
        r = rx_batch(sp, src, dst);
        if (sp->dp.dead)
            return RX_STOP;
        if (r == 0) {
            compact(src);
            return RX_INCOMPLETE;
        }
        if (r < 0) {
            rx_fail(sp, r);
            return RX_STOP;
        }
    }
}

/* Opens what the lower input holds; may run the user's callbacks. */
static dp_pump_fn rx_pump;

static void
rx_pump(void *owner)
{
    struct s3_pipe *sp = owner;

    if (sp->dp.dead || sp->rx_failed)
        return;
    /* A partial record at EOF is dropped silently (spec §7.3). */
    if (dp_run(&sp->dp, &sp->rx_run, rx_records, sp, RX_STOP) ==
            RX_INCOMPLETE &&
        sp->lower_eof)
        dp_eof(&sp->dp);
}

static void
tx_fail(struct s3_pipe *sp, int r)
{
    struct sl_error e;

    memset(&e, 0, sizeof(e));
    sp->tx_failed = 1;
    sp->h->error_set(&e, r == S3_ENOMEM ? SL_ENOMEM : SL_EPROTO, LAYER,
                     "sealing a record: %s", s3_strerror(r));
    sp->h->pipe_set_error(sp->pipe, &e);
    dp_error(&sp->dp, BEV_EVENT_WRITING | BEV_EVENT_ERROR);
}

/*
 * Seals what the user wrote: one data record per chunk of at most
 * record_size bytes taken from mine.input (plus a padding record with
 * obfs_lengths).  A chunk lying in one chain is sealed straight from it,
 * else it is copied once into place.  Records are sealed back to back
 * into one stretch of room in the lower output, about TX_BATCH bytes at
 * most, and committed together.
 * Returns false when sp died or failed.
 */
static dp_step_fn tx_records;

static int
tx_records(void *owner)
{
    struct s3_pipe *sp = owner;
    struct evbuffer *src = bufferevent_get_input(sp->dp.mine);
    struct evbuffer *dst = bufferevent_get_output(sp->lbev);
    size_t len;

    while ((len = evbuffer_get_length(src)) > 0) {
        size_t cap = 0, used = 0, taken = 0;
        struct evbuffer_iovec room;
        struct evbuffer_ptr pos;
        uint8_t *out;

        if (evbuffer_get_length(dst) >= TX_QUEUE)
            return true;
        /* Room for what waits, up to a batch, with padding allowed for:
         * never more, or small writes would each pin a large chain. */
        while (taken < len && cap < TX_BATCH) {
            size_t n = len - taken < sp->record_size ? len - taken
                                                     : sp->record_size;

            cap += s3_write_size(n, true, S3_OBFS_JITTER_MAX);
            taken += n;
        }
        taken = 0;
        if (evbuffer_reserve_space(dst, (ev_ssize_t)cap, &room, 1) < 1 ||
            room.iov_len < cap) {
            tx_fail(sp, S3_ENOMEM);
            return false;
        }
        out = room.iov_base;
        while (taken < len) {
            size_t n = len - taken < sp->record_size ? len - taken
                                                     : sp->record_size;
            bool obfs = obfs_for(sp->obfs_lengths, sp->role);
            unsigned r = obfs ? jitter() : 0;
            size_t wire = s3_write_size(n, obfs, r), p;
            struct evbuffer_iovec chunk;
            const uint8_t *data;
            int rc;

            if (used + wire > cap)
                break;
            evbuffer_ptr_set(src, &pos, taken, EVBUFFER_PTR_SET);
            if (evbuffer_peek(src, (ev_ssize_t)n, &pos, &chunk, 1) >= 1 &&
                chunk.iov_len >= n) {
                data = chunk.iov_base;
            } else {
                evbuffer_copyout_from(src, &pos, out + used + S3_REC_HDR_LEN,
                                      n);
                data = out + used + S3_REC_HDR_LEN;
            }
            rc = s3_rec_seal(sp->tx, data, n, out + used, cap - used);
            if (rc == S3_OK && obfs && s3_obfs_pad_len(n, r, &p))
                rc = s3_rec_seal_padding(sp->tx, p,
                                         out + used + n + S3_REC_OVERHEAD,
                                         cap - used - n - S3_REC_OVERHEAD);
            if (rc != S3_OK) {
                tx_fail(sp, rc);
                return false;
            }
            used += wire;
            taken += n;
        }
        /* Records reach the lower output before the user's bytes leave
         * mine.input, so a shutdown that waits for the latter never
         * overtakes them.  Either step may run the user's callbacks (an
         * error from below, the user's write callback). */
        room.iov_len = used;
        evbuffer_commit_space(dst, &room, 1);
        if (sp->dp.dead || sp->tx_failed)
            return false;
        evbuffer_drain(src, taken);
        if (sp->dp.dead)
            return false;
    }
    return true;
}

static void
maybe_shutdown(struct s3_pipe *sp)
{
    if (!sp->shut_pending || sp->shut_done || sp->dp.dead ||
        evbuffer_get_length(bufferevent_get_input(sp->dp.mine)) > 0)
        return;
    /* sosistab3 has no close record: end the lower pipe's sending. */
    sp->shut_done = 1;
    sp->h->pipe_shutdown_write(sp->lower);
}

static dp_pump_fn tx_pump;

static void
tx_pump(void *owner)
{
    struct s3_pipe *sp = owner;

    if (sp->dp.dead || sp->tx_failed)
        return;
    if (dp_run(&sp->dp, &sp->tx_run, tx_records, sp, false) > 0)
        maybe_shutdown(sp);
}

static dp_event_fn lower_event;

static void
lower_event(void *owner, short what)
{
    struct s3_pipe *sp = owner;

    if (what & BEV_EVENT_EOF) {
        sp->lower_eof = 1;
        rx_pump(sp);
    } else if (what & BEV_EVENT_ERROR) {
        /* The layer below recorded why (pipe_set_error). */
        dp_error(&sp->dp, what);
    }
}


static int
s3_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct s3_pipe *sp = layer_ctx;

    (void)p;
    /* The user's output is empty; what the pair moved to us may still
     * wait for room below: tx_pump shuts down after it. */
    sp->shut_pending = 1;
    if (!sp->tx_run.busy)
        maybe_shutdown(sp);
    return 0;
}

static int
s3_query(void *layer_ctx, int what, void *out, size_t *len)
{
    struct s3_pipe *sp = layer_ctx;

    if (what != SL_Q_SHARED_SECRET)
        return SL_ENOTSUP;   /* the protocol name and addresses pass on */
    return sl_query_answer_bytes(out, len, sp->ss, S3_KEY_LEN);
}

static void
s3_pipe_destroy(void *layer_ctx)
{
    struct s3_pipe *sp = layer_ctx;

    /* The core frees the lower pipe right after: detach from it now. */
    dp_destroy(&sp->dp, sp->lbev);
}

static const struct sl_pipe_ops s3_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = s3_shutdown_write,
    .query = s3_query,
    .destroy = s3_pipe_destroy,
};

/*
 * Makes the pipe, with its state in *spp.  Consumes lower, tx and rx (also
 * on failure).  What it decrypts waits in mine.output until the user
 * enables reading.
 */
static struct sl_pipe *
pipe_make(const struct s3_params *par, enum sl_role role,
          struct event_base *base, struct sl_pipe *lower,
          const uint8_t ss[S3_KEY_LEN], struct s3_dir *tx, struct s3_dir *rx,
          struct s3_pipe **spp, struct sl_error *e)
{
    const struct sl_host *h = par->h;
    struct s3_pipe *sp = calloc(1, sizeof(*sp));
    struct sl_pipe *p;

    if (sp == NULL) {
        s3_dir_free(tx);
        s3_dir_free(rx);
        h->pipe_free(lower);
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    sp->h = h;
    sp->role = role;
    sp->tx = tx;
    sp->rx = rx;
    memcpy(sp->ss, ss, S3_KEY_LEN);
    sp->record_size = par->record_size;
    sp->read_buffer = par->read_buffer;
    sp->obfs_lengths = par->obfs_lengths;
    sp->lower = lower;
    sp->lbev = h->pipe_get0_bev(lower);
    if (dp_init(&sp->dp, base, sp_free, sp) != 0) {
        sp_free(sp);
        h->pipe_free(lower);
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    /* Decrypt more once the user has taken half of the backlog; seal
     * more once the layer below has sent half of its. */
    dp_wire(&sp->dp, sp->lbev, &(const struct dp_wiring){
                .rx = rx_pump, .tx = tx_pump, .lower_event = lower_event,
                .take = TX_PULL, .read_buffer = sp->read_buffer,
                .queue = TX_QUEUE });
    /* Consumes the user end and lower, and destroys sp on failure. */
    p = h->pipe_new(LAYER, sp->dp.user, lower, &s3_pipe_ops, sp);
    if (p == NULL) {
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    sp->pipe = p;
    *spp = sp;
    return p;
}

/* Opens records that arrived right behind the handshake.  The user has
 * no callbacks yet, so nothing can call back here. */
static void
pipe_start(struct s3_pipe *sp)
{
    dp_rx(&sp->dp);
}

/* ---- the handshake ------------------------------------------------------- */

enum hs_state {
    HS_MSG,      /* reading the peer's 140-byte message */
    HS_PAD,      /* reading (and hashing) its padding */
    HS_DONE,     /* the pipe is made */
    HS_FAILED    /* server: silent until the deadline */
};

struct s3_wrap {
    struct s3_params par;
    struct event_base *base;
    struct sl_pipe *lower;       /* until the pipe owns it */
    struct bufferevent *lbev;
    enum sl_role role;
    sl_pipe_fn *done;
    void *arg;
    struct event *done_ev;       /* delivers the result from the loop */
    struct event *deadline_ev;   /* server */
    struct event *wait_ev;       /* server: the start-up wait */
    struct s3_replay *replay;    /* server */
    struct s3_listen *listen;    /* server */
    enum hs_state state;
    uint8_t sk[S3_KEY_LEN];      /* our ephemeral secret */
    uint8_t sent[S3_HS_LEN];     /* client: HS_c as sent */
    uint8_t h[S3_HASH_LEN];      /* server: BLAKE3(HS_c) */
    struct s3_hs peer;           /* the peer's message */
    struct blake3_hasher pad;    /* over the peer's padding */
    uint64_t pad_left;
    uint64_t now;                /* server: Unix time at accept */
    struct s3_pipe *sp;          /* the pipe's state, once made */
    struct sl_pipe *result;
    struct sl_error err;
    bool canceled;
    bool finished;               /* done_ev is active */
    bool in_step, again;         /* re-entrancy of hs_process */
    bool queued;                 /* counted in listen->queued */
    bool waiting;                /* counted in listen->waiting */
};

static struct s3_listen *
listen_ref(struct s3_listen *l)
{
    l->refs++;
    return l;
}

static void
listen_unref(struct s3_listen *l)
{
    if (l != NULL && --l->refs == 0)
        free(l);
}

static void
wrap_free(struct s3_wrap *w)
{
    if (w->done_ev != NULL)
        event_free(w->done_ev);
    if (w->deadline_ev != NULL)
        event_free(w->deadline_ev);
    if (w->wait_ev != NULL)
        event_free(w->wait_ev);
    if (w->listen != NULL) {
        if (w->queued)
            w->listen->queued--;
        if (w->waiting)
            w->listen->waiting--;
        listen_unref(w->listen);
    }
    s3_replay_unref(w->replay);
    sodium_memzero(w, sizeof(*w));
    free(w);
}

static void
drop_lower(struct s3_wrap *w)
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
    struct s3_wrap *w = arg;
    const struct sl_host *h = w->par.h;
    sl_pipe_fn *done = w->done;
    void *done_arg = w->arg;
    struct sl_pipe *p = w->result;
    struct sl_error err = w->err;

    (void)fd;
    (void)what;
    w->result = NULL;
    if (w->queued) {
        /* Taken by the next layer now. */
        w->queued = false;
        w->listen->queued--;
    }
    if (w->canceled) {
        if (p != NULL)
            h->pipe_free(p);
        p = NULL;
        memset(&err, 0, sizeof(err));
        h->error_set(&err, SL_ECANCELED, LAYER, "handshake cancelled");
    } else if (p == NULL && err.code == 0) {
        h->error_set(&err, SL_EPROTO, LAYER, "handshake failed");
    }
    drop_lower(w);
    wrap_free(w);
    done(p, p != NULL ? NULL : &err, done_arg);
}

static void
finish(struct s3_wrap *w)
{
    w->finished = true;
    if (w->deadline_ev != NULL)
        evtimer_del(w->deadline_ev);
    event_active(w->done_ev, EV_TIMEOUT, 0);
}

/*
 * A handshake failed.  The client gives up at once.  The server stops
 * reading and writing and says nothing: the wrap ends with the error when
 * the deadline fires, so a prober learns nothing from timing either.
 */
static void
hs_fail(struct s3_wrap *w, int code, const char *why)
{
    if (w->finished || w->state == HS_FAILED)
        return;
    w->par.h->error_set(&w->err, code, LAYER, "%s", why);
    bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
    bufferevent_disable(w->lbev, EV_READ | EV_WRITE);
    if (w->role == SL_ROLE_CLIENT) {
        /* Dropped from the loop, not inside the lower's callback. */
        finish(w);
        return;
    }
    w->state = HS_FAILED;
    w->par.h->log(SL_LOG_DEBUG, LAYER, "handshake failed (%s); silent until "
                  "the deadline", w->err.text);
}

/* Both messages are good: keys, the reply (server) and the pipe. */
static void
hs_finish(struct s3_wrap *w)
{
    uint8_t pk[S3_KEY_LEN], ss[S3_KEY_LEN], up[S3_KEY_LEN], dn[S3_KEY_LEN];
    uint8_t reply[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t reply_len = 0;
    struct s3_dir *tx = NULL, *rx = NULL;
    struct sl_pipe *lower;
    struct sl_error e;
    int r;

    memset(&e, 0, sizeof(e));
    if (w->role == SL_ROLE_SERVER) {
        /* Spec §5.2 steps 6 and 7, in that order. */
        if (s3_hs_check_time(w->peer.timestamp, w->now) != S3_OK) {
            hs_fail(w, SL_EAUTH, s3_strerror(S3_EHSTIME));
            goto out;
        }
        r = s3_replay_check(w->replay, w->h, mono_ms());
        if (r != S3_REPLAY_NEW) {
            hs_fail(w, r == S3_REPLAY_SEEN ? SL_EAUTH : SL_ENOMEM,
                    r == S3_REPLAY_SEEN ? "handshake already seen"
                                        : "out of memory");
            goto out;
        }
        if (ephemeral(w->role, w->sk, pk) != S3_OK ||
            hello(w->role, w->par.key_s, pk, w->now, w->h, reply,
                  &reply_len) != S3_OK) {
            hs_fail(w, SL_EPROTO, "cannot build the reply");
            goto out;
        }
    }
    /* An all-zero secret comes only from a malicious peer's low-order
     * key; Rust would accept it, we refuse (and, server, stay silent). */
    r = s3_shared_secret(w->sk, w->peer.eph_pk, ss);
    if (r != S3_OK) {
        hs_fail(w, SL_EAUTH, s3_strerror(r));
        goto out;
    }
    s3_session_keys(ss, up, dn);
    /* The client sends with key_up, the server with key_dn (§3). */
    if (s3_dir_new(w->role == SL_ROLE_CLIENT ? up : dn, S3_SEAL, w->par.aead,
                   &tx) != S3_OK ||
        s3_dir_new(w->role == SL_ROLE_CLIENT ? dn : up, S3_OPEN, w->par.aead,
                   &rx) != S3_OK) {
        s3_dir_free(tx);
        s3_dir_free(rx);
        hs_fail(w, SL_ENOMEM, "out of memory");
        goto out;
    }
    w->state = HS_DONE;
    lower = w->lower;
    w->lower = NULL;
    w->result = pipe_make(&w->par, w->role, w->base, lower, ss, tx, rx,
                          &w->sp, &e);
    if (w->result == NULL) {
        /* The lower pipe is gone with it. */
        w->lbev = NULL;
        w->err = e;
        finish(w);
        goto out;
    }
    if (w->role == SL_ROLE_SERVER) {
        evbuffer_add(bufferevent_get_output(w->lbev), reply, reply_len);
        if (w->listen->queued >= w->listen->queue_max) {
            /* §5.2 step 9: Rust's try_send fails and the finished pipe
             * is dropped, its reply sent. */
            w->par.h->error_set(&w->err, SL_ELIMIT, LAYER, "accept queue "
                                "full (%zu finished handshakes not yet "
                                "taken); pipe dropped",
                                w->listen->queue_max);
            w->par.h->log(SL_LOG_INFO, LAYER, "%s", w->err.text);
            w->par.h->pipe_free(w->result);
            w->result = NULL;
            w->sp = NULL;
            w->lbev = NULL;
            finish(w);
            goto out;
        }
        w->listen->queued++;
        w->queued = true;
    }
    finish(w);
    pipe_start(w->sp);
out:
    sodium_memzero(w->sk, sizeof(w->sk));
    sodium_memzero(ss, sizeof(ss));
    sodium_memzero(up, sizeof(up));
    sodium_memzero(dn, sizeof(dn));
    sodium_memzero(reply, sizeof(reply));
}

/* One pass over what the lower input holds. */
static void
hs_step(struct s3_wrap *w)
{
    struct evbuffer *in = bufferevent_get_input(w->lbev);
    uint8_t msg[S3_HS_LEN], got[S3_HASH_LEN];
    int r;

    if (w->state == HS_MSG) {
        if (evbuffer_get_length(in) < S3_HS_LEN)
            return;
        evbuffer_remove(in, msg, S3_HS_LEN);
        r = s3_hs_open(w->role == SL_ROLE_CLIENT ? w->par.key_s
                                                 : w->par.key_c,
                       msg, &w->peer);
        if (r == S3_OK && w->role == SL_ROLE_CLIENT)
            r = s3_hs_check_reply(&w->peer, w->sent);
        if (r != S3_OK) {
            hs_fail(w, SL_EAUTH, s3_strerror(r));
            return;
        }
        if (w->role == SL_ROLE_SERVER)
            blake3_hash(w->h, msg, S3_HS_LEN);
        w->pad_left = w->peer.padding_len;
        w->state = HS_PAD;
    }
    if (w->state != HS_PAD)
        return;
    /* Hashed as it streams in: up to 100000 bytes need no buffer. */
    while (w->pad_left > 0 && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        size_t n;

        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        n = v.iov_len < w->pad_left ? v.iov_len : (size_t)w->pad_left;
        blake3_hasher_update(&w->pad, v.iov_base, n);
        w->pad_left -= n;
        evbuffer_drain(in, n);
        if (w->state != HS_PAD)
            return;   /* a nested pass took over */
    }
    if (w->pad_left > 0)
        return;
    blake3_hasher_finalize(&w->pad, got, sizeof(got));
    if (sodium_memcmp(got, w->peer.padding_hash, sizeof(got)) != 0) {
        hs_fail(w, SL_EAUTH, s3_strerror(S3_EHSPADHASH));
        return;
    }
    hs_finish(w);
}

static void
hs_process(struct s3_wrap *w)
{
    /* Draining the lower input can make the layer below deliver more and
     * call us again: the outer pass goes on instead. */
    if (w->in_step) {
        w->again = true;
        return;
    }
    w->in_step = true;
    do {
        w->again = false;
        hs_step(w);
    } while (w->again && (w->state == HS_MSG || w->state == HS_PAD));
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
    struct s3_wrap *w = arg;

    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    hs_process(w);
    if (w->state == HS_DONE && w->sp != NULL) {
        /* Finished with the last bytes: the event is the pipe's. */
        dp_lower_event(&w->sp->dp, what);
        return;
    }
    if (what & BEV_EVENT_EOF)
        hs_fail(w, SL_ECLOSED, "connection closed during the handshake");
    else
        hs_fail(w, SL_ECLOSED, "lower pipe failed during the handshake");
}

static void
hs_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct s3_wrap *w = arg;

    (void)fd;
    (void)what;
    if (w->state != HS_FAILED)
        w->par.h->error_set(&w->err, SL_ETIMEDOUT, LAYER,
                            "handshake not finished by the deadline");
    /* The connection closes now, in silence. */
    drop_lower(w);
    w->finished = true;
    wrap_deliver(-1, 0, w);
}

/* Client: HS_c || padding, in one write. */
static int
client_hello(struct s3_wrap *w, struct sl_error *e)
{
    uint8_t pk[S3_KEY_LEN];
    uint8_t msg[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t len = 0;

    if (ephemeral(w->role, w->sk, pk) != S3_OK ||
        hello(w->role, w->par.key_c, pk, unix_now(w->role), s3_empty_hash,
              msg, &len) != S3_OK)
        return w->par.h->error_set(e, SL_EPROTO, LAYER,
                                   "cannot build the handshake");
    memcpy(w->sent, msg, S3_HS_LEN);
    if (evbuffer_add(bufferevent_get_output(w->lbev), msg, len) != 0)
        return w->par.h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    return 0;
}

static void
start_reading(struct s3_wrap *w)
{
    bufferevent_enable(w->lbev, EV_READ | EV_WRITE);
    /* The layer below may already hold the peer's bytes. */
    if (evbuffer_get_length(bufferevent_get_input(w->lbev)) > 0)
        bufferevent_trigger(w->lbev, EV_READ,
                            BEV_TRIG_IGNORE_WATERMARKS |
                                BEV_TRIG_DEFER_CALLBACKS);
}

/* Server: the handshake starts (at accept, or when the wait ends). */
static void
server_begin(struct s3_wrap *w)
{
    int64_t us = deadline_us();
    struct timeval tv = { (time_t)(us / 1000000),
                          (suseconds_t)(us % 1000000) };

    if (w->waiting) {
        w->waiting = false;
        w->listen->waiting--;
    }
    /* Captured before anything is read (§5.2 step 1). */
    w->now = unix_now(w->role);
    evtimer_add(w->deadline_ev, &tv);
    bufferevent_setcb(w->lbev, hs_readcb, NULL, hs_eventcb, w);
    start_reading(w);
}

/* Arms the wait for what is left of it; false when none is. */
static bool
wait_more(struct s3_wrap *w)
{
    uint64_t now = mono_ms(), ms;
    struct timeval tv;

    if (now >= w->listen->open_ms)
        return false;
    /* Timers count from the loop's cached time, which may be behind:
     * the callback checks the clock and waits again if it fired early. */
    ms = w->listen->open_ms - now;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    evtimer_add(w->wait_ev, &tv);
    return true;
}

static void
server_begin_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    if (!wait_more(arg))
        server_begin(arg);
}

static int
s3_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
        enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
        struct sl_error *e)
{
    struct s3_cfg *c = cfg;
    const struct sl_host *h = c->par.h;
    struct s3_wrap *w = calloc(1, sizeof(*w));
    int r;

    if (w == NULL) {
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
    w->state = HS_MSG;
    blake3_hasher_init(&w->pad);
    w->done_ev = event_new(base, -1, 0, wrap_deliver, w);
    if (w->done_ev == NULL) {
        r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        goto fail;
    }
    if (role == SL_ROLE_SERVER) {
        uint64_t now = mono_ms();
        struct s3_listen *l = c->listen;

        w->replay = s3_replay_ref(c->replay);
        w->listen = listen_ref(l);
        w->deadline_ev = evtimer_new(base, hs_deadline, w);
        if (w->deadline_ev == NULL) {
            r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
            goto fail;
        }
        if (now < l->open_ms) {
            /* SOSISTAB3_WAIT (§6): Rust's listener accepts nothing for
             * its first 300 s, so that handshakes recorded before a
             * restart (and its empty replay cache) are outside the
             * timestamp window by the time any is read.  The connection
             * is held unread; its handshake, deadline and "now" start
             * when the wait ends.  At most accept_queue are held. */
            if (l->waiting >= l->queue_max) {
                r = h->error_set(e, SL_ELIMIT, LAYER, "%zu connections "
                                 "already wait for the start-up wait "
                                 "(start_wait) to end", l->waiting);
                goto fail;
            }
            w->wait_ev = evtimer_new(base, server_begin_cb, w);
            if (w->wait_ev == NULL) {
                r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
                goto fail;
            }
            l->waiting++;
            w->waiting = true;
            bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
            bufferevent_disable(w->lbev, EV_READ);
            if (!wait_more(w))
                server_begin(w);
        } else {
            server_begin(w);
        }
    } else {
        bufferevent_setcb(w->lbev, hs_readcb, NULL, hs_eventcb, w);
        if ((r = client_hello(w, e)) != 0)
            goto fail;
        start_reading(w);
    }
    *op = w;
    return 0;
fail:
    drop_lower(w);
    wrap_free(w);
    return r;
}

static void
s3_cancel(void *op)
{
    struct s3_wrap *w = op;

    if (w->canceled)
        return;
    w->canceled = true;
    if (w->finished)
        return;   /* wrap_deliver turns the result into ECANCELED */
    if (w->wait_ev != NULL)
        evtimer_del(w->wait_ev);
    drop_lower(w);
    finish(w);
}

/* ---- configuration and plugin -------------------------------------------- */

static int
s3_configure(const struct sl_host *h, void *plugin_ctx,
             const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct s3_cfg *c = calloc(1, sizeof(*c));
    const char *cookie = h->opt_str(o, "cookie");
    const char *aead = h->opt_str(o, "aead");
    struct s3_cookie ck;
    int64_t wait_ms = 0;

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->par.h = h;
    if (s3_cookie_parse(cookie, strlen(cookie), &ck) != S3_OK) {
        free(c);
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    s3_hs_key(&ck, S3_CLIENT, c->par.key_c);
    s3_hs_key(&ck, S3_SERVER, c->par.key_s);
    c->par.obfs_lengths = ck.obfs_lengths;
    s3_cookie_wipe(&ck);
    c->par.aead = strcmp(aead, "openssl") == 0     ? S3_AEAD_OPENSSL
                  : strcmp(aead, "libsodium") == 0 ? S3_AEAD_SODIUM
                                                   : S3_AEAD_DEFAULT;
    c->par.record_size = (size_t)h->opt_int(o, "record_size");
    c->par.read_buffer = (size_t)h->opt_int(o, "read_buffer");
    c->replay = s3_replay_new((size_t)h->opt_int(o, "replay_cache"));
    c->listen = calloc(1, sizeof(*c->listen));
    if (c->replay == NULL || c->listen == NULL) {
        s3_replay_unref(c->replay);
        free(c->listen);
        sodium_memzero(c, sizeof(*c));
        free(c);
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    c->listen->refs = 1;
    c->listen->queue_max = (size_t)h->opt_int(o, "accept_queue");
    /* The cfg is the listener: its replay cache starts empty here, so the
     * wait (if any) counts from here too. */
    if (h->opt_has(o, "start_wait"))
        wait_ms = h->opt_int(o, "start_wait");
    else if (getenv(WAIT_ENV) != NULL)
        wait_ms = WAIT_DEFAULT_MS;
    c->listen->open_ms = mono_ms() + (uint64_t)wait_ms;
    *out = c;
    return 0;
}

static void
s3_unconfigure(void *cfg)
{
    struct s3_cfg *c = cfg;

    /* Handshakes still running hold their own references. */
    s3_replay_unref(c->replay);
    listen_unref(c->listen);
    sodium_memzero(c, sizeof(*c));
    free(c);
}

static int
s3_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    if (sl_check_libevent(h, LAYER, e) != 0)
        return SL_EABI;
    if (sodium_init() < 0)
        return h->error_set(e, SL_EINVAL, LAYER, "libsodium failed to "
                            "initialise");
    return 0;
}

static const struct sl_layer_ops s3_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "Geph's obfuscating encrypted transport (sosistab3)",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    .flags = SL_LF_ENCRYPTS | SL_LF_AUTHENTICATES | SL_LF_OBFUSCATES |
             SL_LF_HALF_CLOSE | SL_LF_SECRET,
    .opts = s3_opts,
    .configure = s3_configure,
    .unconfigure = s3_unconfigure,
    .wrap = s3_wrap,
    .cancel = s3_cancel,
};

static const struct sl_layer_ops *const s3_layers[] = { &s3_layer, NULL };

SL_PLUGIN_DEFINE(sosistab3, "sosistab3 obfuscating wrap", PACKAGE_VERSION,
                 "ISC", "sillad", s3_layers, s3_init, NULL)
