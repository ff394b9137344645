/* picomux.c - the picomux mux layer (Geph5's picomux, byte-compatible).
 *
 * The wire contract is doc/PROTOCOL.picomux (the clean-room spec; "§"
 * numbers refer to it); the codec is picomux-frame.c.  This file is the
 * session: stream table, flow control, liveness and scheduling.
 *
 * Shape.  A session owns its lower pipe and reads frames from that pipe's
 * bufferevent.  Every stream is a bufferevent pair: the user gets one end
 * as the stream pipe's bufferevent, the session keeps the other ("mine")
 * and drives it:
 *
 *   lower input --PSH body--> mine.output --(pair)--> user input
 *   user output --(pair)--> mine.input --PSH frame--> lower output
 *
 * Bytes are not copied on either path, as a rule: data moves as whole
 * chains, and frame bodies are reference slices (evbuffer_add_reference)
 * of refcounted blocks, each a chain moved whole out of an evbuffer
 * (struct pm_blk; the slice's cleanup drops its reference).
 *  - Sending: a chain of the user's that fits in the frame moves into
 *    the batch as it is; a longer one becomes the stream's tx block, cut
 *    into bodies of at most 8 KiB (PSH bodies never exceed Rust's MSS);
 *    headers are slices of a page of headers.  Small pieces are copied.
 *  - Receiving: when the lower input starts with a large chain (one read
 *    of the layer below) holding a whole frame, that chain becomes the
 *    receive block and frames are parsed in place; each PSH body of 2 KiB
 *    or more goes to the stream as a slice, through s->stage: the bodies
 *    of a run of frames of one stream reach mine.output in one move (one
 *    pair transfer, not one per frame).  A PSH that goes on in the
 *    next chain, when that is large too, is a slice of each (the next
 *    chain becomes the block); the block waits for the next read when
 *    the input is empty; else the end of the block (a frame's start) goes
 *    back to the front of the input as a copy, and the frames that
 *    straddle small chains are copied (body_copy).  A slice pins its
 *    whole block, so a stream may hold slices of at most 2 x lower_buffer
 *    bytes of blocks (struct pm_pin counts them per stream and block);
 *    beyond, its bodies are copied.  A reader that keeps up holds one or
 *    two blocks; a stalled one holds what it was sent plus that bound.
 *
 * Receiving.  A PSH body goes into mine.output (with the rest of its run
 * of frames of that stream, before any other frame is handled); the pair
 * moves it on while the user's input is below stream_buffer (its read
 * high watermark).  A frame counts as delivered once all of it has moved
 * to the user; mine's write callback fires on every move, and the
 * receiver policy of §7.3 runs per delivered frame, sending MORE.  So a
 * stalled reader stops only its own stream: its sender runs out of
 * credit after at most `window` frames, which wait in mine.output, while
 * every other stream and the session go on.
 *
 * Sending.  Streams with data and credit wait in a ring; the pump takes
 * one frame (at most 8 KiB, as Rust) from each in turn while the lower
 * output holds less than lower_buffer bytes, and goes on from the lower
 * pipe's write callback.  Control frames (SYN, FIN, MORE, PING, PONG) are
 * appended at once, so they wait behind at most lower_buffer bytes of data
 * plus what the layers below buffer.  Reading pauses while the lower output
 * holds more than twice lower_buffer (a peer that sends but never reads).
 *
 * Callbacks.  Pair callbacks are always deferred by libevent, so the user
 * never runs inside this file's calls and this file never runs inside the
 * user's, except on_stream and on_dead, which run from events of their own
 * with the session marked busy: session_free from inside them only marks
 * the session, and the outermost frame frees it.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "sillad/plugin.h"
#include "picomux-frame.h"

#define LAYER "picomux"
#define STREAM_PROTOCOL "sillad-stream"   /* as Rust's Stream says (§12) */
#define ID_TRIES 64
#define TABLE_MIN 64
#define TOMB_QUEUE_MIN 64
#define SLICE_MIN 512           /* smaller pieces of blocks are copied */
#define RX_SLICE_MIN 2048       /* smaller received bodies are copied */
#define RX_BLK_MIN 16384        /* smaller lower chains are not blocks */
#define TX_BLK_MIN 2048         /* smaller user chains are copied */
/* An open asks for a PING only when nothing has come from the peer for
 * this long: bytes that just arrived already show the session alive. */
#define OPEN_PING_QUIET_MS 1000
#define HDR_PAGE 4096           /* PSH headers sent, 512 to a page */

enum { SLOT_EMPTY = 0, SLOT_LIVE = 1, SLOT_TOMB = 2 };

/* Option values; a session copies them (unconfigure may run first). */
struct pm_params {
    int64_t ping_interval_ms;
    int64_t ping_timeout_ms;
    uint32_t max_streams;
    uint32_t accept_backlog;
    uint32_t window;
    uint64_t max_tombstones;
    size_t stream_buffer;
    size_t lower_buffer;
    int debloat;
};

struct pm_cfg {
    const struct sl_host *h;
    struct pm_params p;
    unsigned char *metadata;
    size_t metadata_len;
};

struct pm_stream;

/* A block: whole chains moved (never copied) out of an evbuffer, shared by
 * the reference slices (evbuffer_add_reference) cut from it; freed with
 * the last reference. */
struct pm_blk {
    struct evbuffer *buf;           /* owns the chains; NULL: headers */
    const uint8_t *data;            /* flat: one chain, so no copy */
    size_t len;
    size_t refs;
};

/* The slices of one receive block that one stream holds: the stream is
 * charged the whole block while it holds any of it. */
struct pm_pin {
    struct pm_blk *b;
    struct pm_stream *st;           /* NULL once the stream is gone */
    struct pm_pin *next, *prev;     /* st->pins, newest first */
    size_t slices;
};

/* One id of the stream table: live, or tombstoned until expiry_ms. */
struct pm_slot {
    uint32_t id;
    uint32_t state;
    union {
        struct pm_stream *st;
        int64_t expiry_ms;
    } u;
};

struct pm_tomb {
    uint32_t id;
    int64_t expiry_ms;
};

struct pm_session {
    const struct sl_host *h;
    struct event_base *base;
    struct pm_params p;
    unsigned char *metadata;        /* for opens with none */
    size_t metadata_len;
    struct sl_pipe *lower;          /* NULL once torn down */
    struct bufferevent *lbev;
    struct evbuffer *batch;         /* PSH frames of one pump turn */
    struct pm_blk *rx;              /* input being parsed in place */
    size_t rx_off;
    size_t pin_max;                 /* receive blocks a stream may hold */
    struct evbuffer *stage;         /* bodies for stage_st, in one run */
    struct pm_stream *stage_st;
    struct pm_blk *hp;              /* headers of PSH frames sent */
    size_t hp_off;
    sl_stream_fn *on_stream;
    sl_dead_fn *on_dead;
    void *arg;
    unsigned char hkey[crypto_shorthash_KEYBYTES];
    /* ids: open addressing (linear probing), keyed hash */
    struct pm_slot *slots;
    size_t cap, used;
    /* tombstones in expiry order (a ring) */
    struct pm_tomb *tq;
    size_t tq_cap, tq_head, tq_len;
    /* streams */
    struct pm_stream *streams;      /* every attached stream */
    struct pm_stream *ring_head, *ring_tail;  /* can send */
    struct pm_stream *acc_head, *acc_tail;    /* await on_stream */
    struct pm_stream *hot;          /* the live stream found last */
    size_t acc_len;
    size_t out_hard;                /* reading pauses above this output */
    /* liveness */
    struct event *ping_ev;          /* interval, or PONG deadline */
    int64_t ping_sent_ms;
    int64_t last_rtt_ms;
    struct event *deliver_ev;       /* runs on_stream */
    struct event *flush_ev;         /* sends SYNs left in the batch */
    uint32_t ids[16];               /* random stream ids, used from the end */
    unsigned ids_left;
    struct event *death_ev;         /* runs on_dead */
    /* stats */
    uint64_t streams_open, streams_total, bytes_sent, bytes_received;
    uint64_t streams_refused;       /* SYNs answered with a FIN */
    struct sl_error why;
    int busy;                       /* inside on_stream / on_dead */
    int64_t heard_ms;               /* when the lower pipe last had input */
    unsigned ping_outstanding : 1;
    unsigned ping_again : 1;        /* an open asked while one was out */
    unsigned dead : 1;
    unsigned free_pending : 1;
    unsigned in_read : 1, read_again : 1;
    unsigned in_pump : 1, pump_again : 1;
    unsigned read_paused : 1;
    unsigned lower_eof : 1;
};

struct pm_stream {
    const struct sl_host *h;
    struct pm_session *s;           /* NULL once detached */
    struct sl_pipe *pipe;           /* the user's; NULL once freed */
    struct bufferevent *mine;
    uint32_t id;
    uint64_t credits;               /* PSH frames we may still send */
    struct pm_blk *tx;              /* a chain of the user's being sent */
    size_t tx_off;
    struct pm_pin *pins;            /* receive blocks held toward the user */
    size_t pinned;                  /* bytes of those blocks */
    /* receive side, §7.3 */
    uint32_t remote_window, target;
    uint64_t granted, received;     /* frames */
    uint64_t pushed, moved, carry;  /* bytes into mine.output / moved on */
    uint16_t *fr;                   /* lengths of undelivered frames */
    uint32_t fr_cap, fr_head, fr_len;
    double bw, bw_t, bw_pending;    /* debloat estimator, §7.4 */
    unsigned char *meta;            /* until on_stream */
    size_t meta_len;
    struct event *linger_ev;        /* bounds the wait for the peer's FIN */
    struct pm_stream *prev, *next;      /* s->streams */
    struct pm_stream *rprev, *rnext;    /* s->ring */
    struct pm_stream *acc_next;
    unsigned open : 1;              /* live on the wire */
    unsigned in_ring : 1;
    unsigned queued : 1;            /* in the accept queue */
    unsigned delivering : 1;        /* inside on_stream */
    unsigned fin_wanted : 1;
    unsigned eof_given : 1;
    unsigned eof_pending : 1;
    unsigned epipe_given : 1;
    unsigned closing : 1;           /* our FIN is out; the peer's awaited */
};

static const struct sl_opt_spec pm_opts[] = {
    { "ping_interval", SL_OPT_DURATION, 0, "1800s",
      "send a PING this long after the last PONG (0: never send PINGs)",
      NULL, 0, 4294967295LL },
    { "ping_timeout", SL_OPT_DURATION, 0, "30s",
      "the session dies when a PONG takes longer than this", NULL, 1,
      86400000 },
    { "max_streams", SL_OPT_INT, 0, "65536",
      "streams open at once; beyond, open fails and a SYN gets a FIN",
      NULL, 1, 16777216 },
    { "accept_backlog", SL_OPT_INT, 0, "1024",
      "peer-opened streams waiting for on_stream; beyond, a SYN gets a FIN",
      NULL, 1, 65536 },
    { "window", SL_OPT_INT, 0, "1500",
      "largest receive window granted per stream, in frames", NULL, 1,
      PM_MAX_WINDOW },
    { "stream_buffer", SL_OPT_SIZE, 0, "64k",
      "bytes per stream held toward the user, and taken from it", NULL,
      4096, 67108864 },
    { "lower_buffer", SL_OPT_SIZE, 0, "256k",
      "stop queueing stream data while the lower output holds this much",
      NULL, 16384, 67108864 },
    { "debloat", SL_OPT_BOOL, 0, "false",
      "size each stream's window to its measured receive rate", NULL, 0, 0 },
    { "metadata", SL_OPT_STR, 0, "",
      "metadata of streams opened without any (e.g. for the layers above)",
      NULL, 0, 0 },
    { "max_tombstones", SL_OPT_INT, 0, "1048576",
      "closed ids kept for an hour; beyond, the oldest are forgotten", NULL,
      1024, 67108864 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static void die(struct pm_session *s, int code, const char *fmt, ...)
    SL_PRINTF(3, 4);
static void pump(struct pm_session *s);
static void process_input(struct pm_session *s);
static void st_close(struct pm_stream *st, int peer_fin);
static void st_free(struct pm_stream *st);
static void stage_flush(struct pm_session *s);

/* ---- time --------------------------------------------------------------- */

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
arm_ms(struct event *ev, int64_t ms)
{
    struct timeval tv;

    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    evtimer_add(ev, &tv);
}

/* ---- the id table ----------------------------------------------------------
 *
 * Ids come from the peer, so the hash is keyed (SipHash, a key per
 * session): a peer cannot choose ids that pile up in one probe run.
 * Deletion shifts the run back, so there are no deleted markers.
 */

static size_t
id_home(const struct pm_session *s, uint32_t id)
{
    unsigned char in[4], out[crypto_shorthash_BYTES];
    uint64_t h;

    in[0] = (unsigned char)id;
    in[1] = (unsigned char)(id >> 8);
    in[2] = (unsigned char)(id >> 16);
    in[3] = (unsigned char)(id >> 24);
    crypto_shorthash(out, in, sizeof(in), s->hkey);
    memcpy(&h, out, sizeof(h));
    return (size_t)h & (s->cap - 1);
}

static struct pm_slot *
slot_find(struct pm_session *s, uint32_t id)
{
    size_t i = id_home(s, id);

    while (s->slots[i].state != SLOT_EMPTY) {
        if (s->slots[i].id == id)
            return &s->slots[i];
        i = (i + 1) & (s->cap - 1);
    }
    return NULL;
}

static int
table_resize(struct pm_session *s, size_t cap)
{
    struct pm_slot *old = s->slots;
    size_t oldcap = s->cap;
    struct pm_slot *slots = calloc(cap, sizeof(*slots));

    if (slots == NULL)
        return -1;
    s->slots = slots;
    s->cap = cap;
    for (size_t j = 0; j < oldcap; j++) {
        size_t i;

        if (old[j].state == SLOT_EMPTY)
            continue;
        i = id_home(s, old[j].id);
        while (slots[i].state != SLOT_EMPTY)
            i = (i + 1) & (cap - 1);
        slots[i] = old[j];
    }
    free(old);
    return 0;
}

/* Adds id (absent) in state; returns its slot, or NULL out of memory. */
static struct pm_slot *
slot_add(struct pm_session *s, uint32_t id, uint32_t state)
{
    size_t i;

    /* At most 3/4 full: linear probing stays short. */
    if ((s->used + 1) * 4 > s->cap * 3 && table_resize(s, s->cap * 2) != 0)
        return NULL;
    i = id_home(s, id);
    while (s->slots[i].state != SLOT_EMPTY)
        i = (i + 1) & (s->cap - 1);
    s->slots[i].id = id;
    s->slots[i].state = state;
    s->used++;
    return &s->slots[i];
}

static void
slot_del(struct pm_session *s, struct pm_slot *sl)
{
    size_t mask = s->cap - 1;
    size_t i = (size_t)(sl - s->slots), j = i;

    s->slots[i].state = SLOT_EMPTY;
    s->used--;
    for (;;) {
        size_t k;

        j = (j + 1) & mask;
        if (s->slots[j].state == SLOT_EMPTY)
            break;
        k = id_home(s, s->slots[j].id);
        /* Move j back to the hole unless its home lies in (i, j]. */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        s->slots[i] = s->slots[j];
        s->slots[j].state = SLOT_EMPTY;
        i = j;
    }
}

static struct pm_stream *
live_stream(struct pm_session *s, uint32_t id)
{
    struct pm_slot *sl;

    /* Frames come in runs of one stream's: skip the keyed hash. */
    if (s->hot != NULL && s->hot->id == id)
        return s->hot;
    sl = slot_find(s, id);
    if (sl == NULL || sl->state != SLOT_LIVE)
        return NULL;
    s->hot = sl->u.st;
    return s->hot;
}

/* Forgets the oldest tombstone if it is still the one in the table. */
static void
tomb_pop(struct pm_session *s)
{
    struct pm_tomb t = s->tq[s->tq_head];
    struct pm_slot *sl = slot_find(s, t.id);

    if (sl != NULL && sl->state == SLOT_TOMB && sl->u.expiry_ms == t.expiry_ms)
        slot_del(s, sl);
    s->tq_head = (s->tq_head + 1) % s->tq_cap;
    s->tq_len--;
}

/* Tombstones expire in the order they were made: prune from the front. */
static void
tomb_prune(struct pm_session *s)
{
    int64_t now = now_ms();

    while (s->tq_len > 0 && s->tq[s->tq_head].expiry_ms <= now)
        tomb_pop(s);
}

static int
tomb_queue_grow(struct pm_session *s)
{
    size_t cap = s->tq_cap ? s->tq_cap * 2 : TOMB_QUEUE_MIN;
    struct pm_tomb *q;

    if (cap > s->p.max_tombstones)
        cap = (size_t)s->p.max_tombstones;
    q = malloc(cap * sizeof(*q));
    if (q == NULL)
        return -1;
    for (size_t i = 0; i < s->tq_len; i++)
        q[i] = s->tq[(s->tq_head + i) % s->tq_cap];
    free(s->tq);
    s->tq = q;
    s->tq_cap = cap;
    s->tq_head = 0;
    return 0;
}

/* Tombstones id for §5.2's hour: its slot (live or new) becomes a
 * tombstone.  At max_tombstones the oldest is forgotten early; out of
 * memory, the id is simply not remembered (both only raise the odds of a
 * reuse the peer would call a duplicate, never break this side). */
static void
tombstone(struct pm_session *s, uint32_t id)
{
    struct pm_slot *sl;
    int64_t expiry = now_ms() + (int64_t)PM_TOMBSTONE_TTL_S * 1000;

    if (s->hot != NULL && s->hot->id == id)
        s->hot = NULL;
    if (s->tq_len == s->tq_cap && s->tq_cap < s->p.max_tombstones)
        tomb_queue_grow(s);
    if (s->tq_len == s->tq_cap) {
        if (s->tq_cap == 0) {
            sl = slot_find(s, id);
            if (sl != NULL)
                slot_del(s, sl);
            return;
        }
        tomb_pop(s);
    }
    sl = slot_find(s, id);
    if (sl == NULL)
        sl = slot_add(s, id, SLOT_TOMB);
    if (sl == NULL)
        return;
    sl->state = SLOT_TOMB;
    sl->u.expiry_ms = expiry;
    s->tq[(s->tq_head + s->tq_len) % s->tq_cap].id = id;
    s->tq[(s->tq_head + s->tq_len) % s->tq_cap].expiry_ms = expiry;
    s->tq_len++;
}

/* Live or tombstoned ids may not be opened again (§5.1). */
static int
id_reserved(struct pm_session *s, uint32_t id)
{
    tomb_prune(s);
    return slot_find(s, id) != NULL;
}

/* ---- blocks ---------------------------------------------------------------
 *
 * Data moves through this file without a copy as whole chains: a chain
 * is moved (evbuffer_remove_buffer of exactly its length) into a block,
 * and frame bodies are reference slices of it (evbuffer_add_reference),
 * each holding a reference that its cleanup drops.
 */

static void
blk_unref(struct pm_blk *b)
{
    if (--b->refs == 0) {
        if (b->buf != NULL)
            evbuffer_free(b->buf);
        free(b);
    }
}

/* Moves the first chain of src, len bytes, into a new block holding one
 * reference (the caller's); NULL out of memory, with src unchanged. */
static struct pm_blk *
blk_take(struct evbuffer *src, size_t len)
{
    struct pm_blk *b = malloc(sizeof(*b));

    if (b == NULL)
        return NULL;
    b->buf = evbuffer_new();
    if (b->buf == NULL) {
        free(b);
        return NULL;
    }
    if (len > INT32_MAX ||
        evbuffer_remove_buffer(src, b->buf, len) != (int)len ||
        (b->data = evbuffer_pullup(b->buf, (ev_ssize_t)len)) == NULL) {
        evbuffer_prepend_buffer(src, b->buf);
        evbuffer_free(b->buf);
        free(b);
        return NULL;
    }
    b->len = len;
    b->refs = 1;
    return b;
}

static void
blk_slice_done(const void *data, size_t len, void *extra)
{
    (void)data;
    (void)len;
    blk_unref(extra);
}

/* Appends len bytes of b at p to out: a slice, or a copy when that is
 * cheaper (small) or there is no memory for a slice. */
static void
blk_append(struct evbuffer *out, struct pm_blk *b, const uint8_t *p,
           size_t len)
{
    if (len >= SLICE_MIN &&
        evbuffer_add_reference(out, p, len, blk_slice_done, b) == 0) {
        b->refs++;
        return;
    }
    evbuffer_add(out, p, len);
}

/* The last slice of a receive block that a stream held is gone. */
static void
pin_release(struct pm_pin *pin)
{
    struct pm_stream *st = pin->st;

    if (st != NULL) {
        if (pin->prev != NULL)
            pin->prev->next = pin->next;
        else
            st->pins = pin->next;
        if (pin->next != NULL)
            pin->next->prev = pin->prev;
        st->pinned -= pin->b->len;
    }
    blk_unref(pin->b);
    free(pin);
}

static void
pin_slice_done(const void *data, size_t len, void *extra)
{
    struct pm_pin *pin = extra;

    (void)data;
    (void)len;
    if (--pin->slices == 0)
        pin_release(pin);
}

/* A stream going away: its pins go with their last slices. */
static void
pins_forget(struct pm_stream *st)
{
    struct pm_pin *pin, *next;

    for (pin = st->pins; pin != NULL; pin = next) {
        next = pin->next;
        pin->st = NULL;
        pin->next = pin->prev = NULL;
    }
    st->pins = NULL;
    st->pinned = 0;
}

/* Appends a PSH body, len bytes of receive block b at p, to what st
 * holds toward its user (through s->stage): a slice while the blocks st
 * holds, b included, stay within pin_max bytes; a copy otherwise (a
 * reader that does not keep up), so that a stalled stream never holds
 * much more than what it was sent (see body_copy). */
static void
rx_append(struct pm_session *s, struct pm_stream *st, struct pm_blk *b,
          const uint8_t *p, size_t len)
{
    struct evbuffer *out = s->stage;
    struct pm_pin *pin = st->pins;

    if (s->stage_st != st) {
        stage_flush(s);
        s->stage_st = st;
    }
    if (len >= RX_SLICE_MIN) {
        if (pin == NULL || pin->b != b) {
            pin = NULL;
            if (st->pinned + b->len <= s->pin_max &&
                (pin = malloc(sizeof(*pin))) != NULL) {
                pin->b = b;
                b->refs++;
                pin->st = st;
                pin->slices = 0;
                pin->prev = NULL;
                pin->next = st->pins;
                if (st->pins != NULL)
                    st->pins->prev = pin;
                st->pins = pin;
                st->pinned += b->len;
            }
        }
        if (pin != NULL) {
            if (evbuffer_add_reference(out, p, len, pin_slice_done, pin) ==
                0) {
                pin->slices++;
                return;
            }
            if (pin->slices == 0)
                pin_release(pin);
        }
    }
    evbuffer_add(out, p, len);
}

/* ---- frames out --------------------------------------------------------- */

static struct evbuffer *
lower_out(struct pm_session *s)
{
    return bufferevent_get_output(s->lbev);
}

/* Hands the data frames the pump has built to the lower output in one
 * move: one transfer to the layer below (one pair hand-over, one wakeup)
 * per turn instead of two per frame. */
static void
batch_flush(struct pm_session *s)
{
    if (evbuffer_get_length(s->batch) > 0)
        evbuffer_add_buffer(lower_out(s), s->batch);
}

/* Appends one frame to to: a small one in one piece. */
static void
frame_add(struct evbuffer *to, uint8_t cmd, uint32_t id, const void *body,
          size_t len)
{
    uint8_t buf[PM_HDR_LEN + 64];

    pm_hdr_encode(buf, cmd, (uint16_t)len, id);
    if (len <= sizeof(buf) - PM_HDR_LEN) {
        if (len > 0)
            memcpy(buf + PM_HDR_LEN, body, len);
        evbuffer_add(to, buf, PM_HDR_LEN + len);
    } else {
        evbuffer_add(to, buf, PM_HDR_LEN);
        evbuffer_add(to, body, len);
    }
}

/* Appends one frame to the single outgoing FIFO, the lower output. */
static void
out_frame(struct pm_session *s, uint8_t cmd, uint32_t id, const void *body,
          size_t len)
{
    if (s->dead || s->lbev == NULL)
        return;
    batch_flush(s);     /* frames leave in the order they were made */
    frame_add(lower_out(s), cmd, id, body, len);
}

static void
out_more(struct pm_session *s, uint32_t id, uint64_t grant)
{
    while (grant > 0) {
        uint16_t n = grant > UINT16_MAX ? UINT16_MAX : (uint16_t)grant;
        uint8_t body[PM_MORE_BODY_LEN];

        pm_more_encode(body, n);
        out_frame(s, PM_CMD_MORE, id, body, sizeof(body));
        grant -= n;
    }
}

/* Puts a SYN in the batch, where data frames the user writes on the new
 * stream in the same turn of the loop join it: one hand-over to the layer
 * below, so one record and one write for a tunnel's command and its
 * first bytes.  A zero timer sends it at the end of the turn if nothing
 * else has. */
static void
syn_frame(struct pm_session *s, uint32_t id, const void *meta, size_t len)
{
    static const struct timeval now = { 0, 0 };

    if (s->dead || s->lbev == NULL)
        return;
    frame_add(s->batch, PM_CMD_SYN, id, meta, len);
    if (!evtimer_pending(s->flush_ev, NULL))
        evtimer_add(s->flush_ev, &now);
}

static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

/* ---- liveness (§8) ------------------------------------------------------ */

static void
ping_send(struct pm_session *s)
{
    uint8_t body[PM_PING_BODY_MAX];
    int64_t iv = s->p.ping_interval_ms;
    size_t n;

    if (iv == 0 || s->dead)
        return;
    n = pm_ping_body_write(iv > UINT32_MAX ? UINT32_MAX : (uint32_t)iv, body);
    out_frame(s, PM_CMD_PING, PM_PING_STREAM_ID, body, n);
    s->ping_outstanding = 1;
    s->ping_sent_ms = now_ms();
    arm_ms(s->ping_ev, s->p.ping_timeout_ms);
}

static void
ping_fire(evutil_socket_t fd, short what, void *arg)
{
    struct pm_session *s = arg;

    (void)fd;
    (void)what;
    if (s->dead)
        return;
    if (s->ping_outstanding) {
        die(s, SL_ETIMEDOUT, "ping-pong timed out: no PONG within %" PRId64
            " ms", s->p.ping_timeout_ms);
        return;
    }
    ping_send(s);
}

static void
on_pong(struct pm_session *s)
{
    /* Not matched to PINGs (§4.6): any PONG answers the one out.  One
     * with no PING out is dropped rather than banked for the next. */
    if (!s->ping_outstanding)
        return;
    s->ping_outstanding = 0;
    s->last_rtt_ms = now_ms() - s->ping_sent_ms;
    if (s->ping_again) {
        s->ping_again = 0;
        ping_send(s);
    } else {
        arm_ms(s->ping_ev, s->p.ping_interval_ms);
    }
}

/* An open forces a PING (§8), merged while one is out, unless the peer
 * was heard from within OPEN_PING_QUIET_MS. */
static void
ping_on_open(struct pm_session *s)
{
    if (s->p.ping_interval_ms == 0 ||
        now_ms() - s->heard_ms < OPEN_PING_QUIET_MS)
        return;
    if (s->ping_outstanding) {
        s->ping_again = 1;
        return;
    }
    event_del(s->ping_ev);
    ping_send(s);
}

/* ---- streams ------------------------------------------------------------ */

static void
ring_add(struct pm_session *s, struct pm_stream *st)
{
    st->in_ring = 1;
    st->rnext = NULL;
    st->rprev = s->ring_tail;
    if (s->ring_tail != NULL)
        s->ring_tail->rnext = st;
    else
        s->ring_head = st;
    s->ring_tail = st;
}

static void
ring_del(struct pm_session *s, struct pm_stream *st)
{
    if (!st->in_ring)
        return;
    st->in_ring = 0;
    if (st->rprev != NULL)
        st->rprev->rnext = st->rnext;
    else
        s->ring_head = st->rnext;
    if (st->rnext != NULL)
        st->rnext->rprev = st->rprev;
    else
        s->ring_tail = st->rprev;
    st->rprev = st->rnext = NULL;
}

/* Bytes st has taken from its user and not yet put in frames. */
static size_t
st_pending(struct pm_stream *st)
{
    return evbuffer_get_length(bufferevent_get_input(st->mine)) +
           (st->tx != NULL ? st->tx->len - st->tx_off : 0);
}

static void
tx_drop(struct pm_stream *st)
{
    if (st->tx != NULL) {
        blk_unref(st->tx);
        st->tx = NULL;
    }
}

/* Puts st in the ring if it has something the pump can send. */
static void
st_schedule(struct pm_stream *st)
{
    size_t n;

    if (st->s == NULL || !st->open || st->in_ring)
        return;
    n = st_pending(st);
    if ((n > 0 && st->credits > 0) || (n == 0 && st->fin_wanted))
        ring_add(st->s, st);
}

/* libevent calls a read callback again and again while the input stays
 * at its high watermark with reading enabled (bufferevent_inbuf_wm_check),
 * so mine stops reading while mine.input is full and the pump has not
 * taken from it: the pair then leaves the rest in the user's output. */
static void
mine_read_ctl(struct pm_stream *st)
{
    size_t n = st_pending(st);
    int on = (bufferevent_get_enabled(st->mine) & EV_READ) != 0;

    if (st->s != NULL && st->open && n >= st->s->p.stream_buffer) {
        if (on)
            bufferevent_disable(st->mine, EV_READ);
    } else if (!on) {
        bufferevent_enable(st->mine, EV_READ);
    }
}

/* Moves the bodies staged for a run of frames of one stream on to it:
 * one hand-over to the user (one pair transfer, one wakeup) per run
 * instead of one per frame. */
static void
stage_move(struct pm_session *s)
{
    struct pm_stream *st = s->stage_st;

    if (st == NULL)
        return;
    s->stage_st = NULL;
    evbuffer_add_buffer(bufferevent_get_output(st->mine), s->stage);
}

/* Unlinks st from its session, which then forgets it. */
static void
st_detach(struct pm_stream *st)
{
    struct pm_session *s = st->s;

    if (s == NULL)
        return;
    if (s->hot == st)
        s->hot = NULL;
    if (s->stage_st == st)
        stage_move(s);
    ring_del(s, st);
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    st->prev = st->next = NULL;
    if (st->open) {
        st->open = 0;
        s->streams_open--;
    }
    if (st->closing) {
        /* Its slot still points here: make it the tombstone it would
         * have become at the peer's FIN. */
        st->closing = 0;
        tombstone(s, st->id);
        event_del(st->linger_ev);
    }
    st->s = NULL;
    tx_drop(st);
    /* Writes from now on are refused (st_epipe), not left to back up. */
    mine_read_ctl(st);
}

static void
st_free(struct pm_stream *st)
{
    st_detach(st);
    if (st->linger_ev != NULL)
        event_free(st->linger_ev);
    pins_forget(st);
    bufferevent_free(st->mine);
    free(st->fr);
    free(st->meta);
    free(st);
}

/* The user's end sees EOF after everything already received (the
 * FINISHED flush moves all of mine.output over, then signals EOF). */
static void
give_eof(struct pm_stream *st)
{
    if (st->eof_given || st->pipe == NULL)
        return;
    if (st->queued) {
        /* Nobody has set callbacks yet: after on_stream. */
        st->eof_pending = 1;
        return;
    }
    st->eof_given = 1;
    bufferevent_flush(st->mine, EV_WRITE, BEV_FINISHED);
}

/* The peer's FIN for a stream we closed, or the wait for it is over:
 * the id becomes a tombstone and the user sees EOF. */
static void
st_closed(struct pm_stream *st)
{
    struct pm_session *s = st->s;

    if (st->closing && s != NULL) {
        st->closing = 0;
        tombstone(s, st->id);
    }
    if (st->linger_ev != NULL)
        event_del(st->linger_ev);
    give_eof(st);
    if (st->pipe == NULL && !st->queued && !st->delivering)
        st_free(st);
}

static void
linger_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    st_closed(arg);
}

/* Full close (§4.3): FIN, tombstone, EOF to the user; unsent data is
 * dropped.  Frees st when its user is gone.
 *
 * When we close first (the user shut its stream down) and the user still
 * holds the pipe, its EOF waits for the peer's FIN (the echo of ours, or
 * its own) for at most ping_timeout.  The echo comes after the peer has
 * read everything before our FIN, so a user who takes EOF as "done" and
 * exits (frees the session, and the lower pipe with its unsent bytes)
 * does not cut off the end of its own data.  Meanwhile the stream is
 * closed on the wire as Rust's would be: nothing is sent on it, and what
 * arrives is dropped. */
static void
st_close(struct pm_stream *st, int peer_fin)
{
    struct pm_session *s = st->s;
    struct evbuffer *in = bufferevent_get_input(st->mine);

    if (s != NULL && s->stage_st == st)
        stage_flush(s);         /* what came before is delivered first */
    if (s != NULL && st->open) {
        out_frame(s, PM_CMD_FIN, st->id, NULL, 0);
        st->open = 0;
        s->streams_open--;
        ring_del(s, st);
        if (!peer_fin && st->pipe != NULL && !s->dead) {
            if (st->linger_ev == NULL)
                st->linger_ev = evtimer_new(s->base, linger_cb, st);
            if (st->linger_ev != NULL) {
                st->closing = 1;
                arm_ms(st->linger_ev, s->p.ping_timeout_ms);
            }
        }
        if (!st->closing)
            tombstone(s, st->id);
    }
    evbuffer_drain(in, evbuffer_get_length(in));
    tx_drop(st);
    mine_read_ctl(st);
    if (!st->closing)
        st_closed(st);
}

/* The user freed its pipe (or never got it).  What it had handed over is
 * still sent, then the FIN; a stream already closed just goes. */
static void
st_release(struct pm_stream *st)
{
    struct pm_session *s = st->s;

    if (s == NULL || !st->open) {
        st_free(st);
        return;
    }
    if (st_pending(st) > 0) {
        st->fin_wanted = 1;
        st_schedule(st);
        pump(s);
        return;
    }
    st_close(st, 0);
}

/* A write on a stream that is closed: dropped, and an EPIPE error once
 * (writes fail with broken pipe after a close, §4.3, §10). */
static void
st_epipe(struct pm_stream *st)
{
    struct evbuffer *in = bufferevent_get_input(st->mine);
    struct bufferevent *user;
    struct sl_error err;

    /* A read callback deferred from before the close finds nothing. */
    if (evbuffer_get_length(in) == 0)
        return;
    evbuffer_drain(in, evbuffer_get_length(in));
    if (st->pipe == NULL || st->epipe_given)
        return;
    st->epipe_given = 1;
    memset(&err, 0, sizeof(err));
    st->h->error_sys(&err, EPIPE, LAYER, "write on stream %08" PRIx32
                     " after it closed", st->id);
    st->h->pipe_set_error(st->pipe, &err);
    user = bufferevent_pair_get_partner(st->mine);
    if (user != NULL) {
        EVUTIL_SET_SOCKET_ERROR(EPIPE);
        bufferevent_trigger_event(user, BEV_EVENT_ERROR | BEV_EVENT_WRITING,
                                  BEV_TRIG_DEFER_CALLBACKS);
    }
}

/* §7.4's estimator; dt <= 0 (a coarse clock) folds the bytes into the
 * next sample instead of dividing by zero (§15.9). */
static void
bw_sample(struct pm_stream *st, size_t len)
{
    double t = now_s(), dt = t - st->bw_t, decay;

    if (dt <= 0.0) {
        st->bw_pending += (double)len;
        return;
    }
    decay = exp2(-dt);
    st->bw = st->bw * decay +
             ((double)len + st->bw_pending) / dt * (1.0 - decay);
    st->bw_t = t;
    st->bw_pending = 0.0;
}

static uint32_t
min_quantum(const struct pm_stream *st)
{
    uint32_t q = st->target / 10;

    return q < 1 ? 1 : q > PM_MIN_QUANTUM_MAX ? PM_MIN_QUANTUM_MAX : q;
}

/* The first MORE of a stream waits while the peer still holds more than
 * half of its initial credits: it then rides with the next frame of data
 * we send on the stream (more_first), or goes when the peer is down to
 * half.  A short request and its answer then cost no MORE frame, and so
 * no extra write and wakeup on either side. */
static int
more_first_waits(const struct pm_stream *st, uint64_t grant)
{
    return st->granted + grant == PM_INIT_WINDOW &&
           st->remote_window > PM_INIT_WINDOW / 2;
}

/* Sends the first MORE if more_first_waits held it back. */
static void
more_first(struct pm_session *s, struct pm_stream *st)
{
    uint64_t grant;

    if (st->granted != PM_INIT_WINDOW || st->remote_window == PM_INIT_WINDOW ||
        (uint64_t)st->remote_window + min_quantum(st) > st->target)
        return;
    grant = st->target - st->remote_window;
    st->remote_window = st->target;
    st->granted += grant;
    out_more(s, st->id, grant);
}

/* Counts frames that have fully moved to the user and runs §7.3 for each:
 * MORE once the grant is worth a quantum. */
static void
rx_account(struct pm_stream *st)
{
    struct pm_session *s = st->s;
    uint64_t moved, grant = 0;

    if (s == NULL || !st->open)
        return;
    moved = st->pushed -
            evbuffer_get_length(bufferevent_get_output(st->mine)) -
            (s->stage_st == st ? evbuffer_get_length(s->stage) : 0);
    st->carry += moved - st->moved;
    st->moved = moved;
    while (st->fr_len > 0 && st->carry >= st->fr[st->fr_head]) {
        uint32_t len = st->fr[st->fr_head];
        uint32_t min_q = min_quantum(st);

        st->carry -= len;
        st->fr_head = (st->fr_head + 1) % st->fr_cap;
        st->fr_len--;
        if (s->p.debloat) {
            double t;

            bw_sample(st, len);
            t = floor(st->bw / (double)PM_MSS);
            if (!(t >= PM_INIT_WINDOW))     /* also NaN */
                t = PM_INIT_WINDOW;
            if (t > s->p.window)
                t = s->p.window;
            st->target = (uint32_t)t;
        }
        /* received <= granted keeps this above 0 (see on_psh). */
        st->remote_window--;
        if ((uint64_t)st->remote_window + min_q <= st->target &&
            !more_first_waits(st, grant)) {
            grant += st->target - st->remote_window;
            st->remote_window = st->target;
        }
    }
    if (grant > 0) {
        st->granted += grant;
        out_more(s, st->id, grant);
    }
}

/* The staged bodies go on to their stream, whose frames then count. */
static void
stage_flush(struct pm_session *s)
{
    struct pm_stream *st = s->stage_st;

    if (st == NULL)
        return;
    stage_move(s);
    rx_account(st);
}

/* Remembers the length of a frame put into mine.output. */
static int
fr_push(struct pm_stream *st, uint16_t len)
{
    if (st->fr_len == st->fr_cap) {
        uint32_t cap = st->fr_cap ? st->fr_cap * 2 : 16;
        uint16_t *fr = malloc(cap * sizeof(*fr));

        if (fr == NULL)
            return -1;
        for (uint32_t i = 0; i < st->fr_len; i++)
            fr[i] = st->fr[(st->fr_head + i) % st->fr_cap];
        free(st->fr);
        st->fr = fr;
        st->fr_cap = cap;
        st->fr_head = 0;
    }
    st->fr[(st->fr_head + st->fr_len) % st->fr_cap] = len;
    st->fr_len++;
    return 0;
}

/* mine.input got bytes from the user's output. */
static void
mine_readcb(struct bufferevent *bev, void *arg)
{
    struct pm_stream *st = arg;

    (void)bev;
    if (st->s == NULL || !st->open) {
        st_epipe(st);
        return;
    }
    st_schedule(st);
    mine_read_ctl(st);
    /* Last: the pump may free st (a stream whose user is gone). */
    pump(st->s);
}

/* Bytes moved from mine.output to the user (the write low watermark is
 * the maximum, so this runs after every move). */
static void
mine_writecb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    rx_account(arg);
}

/* The user flushed its end with BEV_FINISHED: the same as a shutdown. */
static void
mine_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct pm_stream *st = arg;

    (void)bev;
    if ((what & BEV_EVENT_EOF) && st->s != NULL && st->open) {
        st->fin_wanted = 1;
        st_schedule(st);
        pump(st->s);
    }
}

static int
stream_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct pm_stream *st = layer_ctx;

    (void)p;
    /* Called once the user's output has moved into mine.input: the FIN
     * follows those bytes.  No half-close (§4.3): it closes both ways. */
    if (st->s == NULL || !st->open)
        return 0;
    st->fin_wanted = 1;
    st_schedule(st);
    pump(st->s);
    return 0;
}

static int
stream_query(void *layer_ctx, int what, void *out, size_t *len)
{
    struct pm_stream *st = layer_ctx;

    switch (what) {
    case SL_Q_PROTOCOL:
        return sl_query_answer_str(out, len, STREAM_PROTOCOL);
    case SL_Q_REMOTE_ADDR:
    case SL_Q_LOCAL_ADDR:
        /* The session's ends: where the stream comes from. */
        if (st->s != NULL && st->s->lower != NULL)
            return st->h->pipe_query(st->s->lower, what, out, len);
        return SL_ENOENT;
    default:
        /* No socket of its own, no secret of its own (Rust: none). */
        return SL_ENOENT;
    }
}

static void
stream_destroy(void *layer_ctx)
{
    struct pm_stream *st = layer_ctx;

    st->pipe = NULL;
    /* Inside on_stream (refused by the user): deliver_cb goes on. */
    if (st->delivering)
        return;
    st_release(st);
}

static const struct sl_pipe_ops stream_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = stream_shutdown_write,
    .query = stream_query,
    .destroy = stream_destroy,
};

/* A new open stream with id (not reserved); NULL out of memory. */
static struct pm_stream *
st_new(struct pm_session *s, uint32_t id)
{
    const struct sl_host *h = s->h;
    struct pm_stream *st = calloc(1, sizeof(*st));
    struct bufferevent *pair[2];
    struct sl_pipe *p;
    struct pm_slot *sl;

    if (st == NULL)
        return NULL;
    if (bufferevent_pair_new(s->base, 0, pair) != 0) {
        free(st);
        return NULL;
    }
    st->h = h;
    st->id = id;
    st->mine = pair[0];
    st->credits = PM_INIT_WINDOW;
    st->remote_window = PM_INIT_WINDOW;
    st->granted = PM_INIT_WINDOW;
    st->target = s->p.window;
    st->bw = PM_DEBLOAT_INIT_BPS;
    st->bw_t = now_s();
    /* The user's input and what we take from its output are bounded by
     * stream_buffer; mine's write callback runs on every move. */
    bufferevent_setwatermark(pair[1], EV_READ, 0, s->p.stream_buffer);
    bufferevent_setwatermark(pair[0], EV_READ, 0, s->p.stream_buffer);
    bufferevent_setwatermark(pair[0], EV_WRITE, SIZE_MAX, 0);
    bufferevent_setcb(pair[0], mine_readcb, mine_writecb, mine_eventcb, st);
    bufferevent_enable(pair[0], EV_READ | EV_WRITE);
    /* On failure pipe_new runs stream_destroy, which frees st (st->s is
     * still NULL). */
    p = h->pipe_new(LAYER, pair[1], NULL, &stream_ops, st);
    if (p == NULL)
        return NULL;
    st->pipe = p;
    sl = slot_add(s, id, SLOT_LIVE);
    if (sl == NULL) {
        h->pipe_free(p);
        return NULL;
    }
    sl->u.st = st;
    st->s = s;
    st->open = 1;
    st->next = s->streams;
    if (s->streams != NULL)
        s->streams->prev = st;
    s->streams = st;
    s->streams_open++;
    s->streams_total++;
    return st;
}

/* ---- frames in ---------------------------------------------------------- */

/* A SYN we will not serve: FIN at once, as Rust does for a full accept
 * queue (§4.1), and tombstone the id as for any closed stream. */
static void
refuse(struct pm_session *s, uint32_t id, const char *why)
{
    s->streams_refused++;
    s->h->log(SL_LOG_INFO, LAYER, "refusing stream %08" PRIx32 ": %s (%"
              PRIu64 " refused so far)", id, why, s->streams_refused);
    out_frame(s, PM_CMD_FIN, id, NULL, 0);
    tombstone(s, id);
}

static void
on_syn(struct pm_session *s, uint32_t id, const uint8_t *body, size_t len)
{
    struct pm_stream *st;

    if (id_reserved(s, id)) {
        die(s, SL_EPROTO, "duplicate SYN for stream %08" PRIx32, id);
        return;
    }
    if (s->streams_open >= s->p.max_streams) {
        refuse(s, id, "max_streams reached");
        return;
    }
    /* A full backlog refuses the stream, never the session (§4.1: Rust
     * drops it and the peer gets a FIN), and never stops the reading of
     * the frames of the streams already open. */
    if (s->acc_len >= s->p.accept_backlog) {
        refuse(s, id, "accept backlog full");
        return;
    }
    st = st_new(s, id);
    if (st == NULL) {
        refuse(s, id, "out of memory");
        return;
    }
    if (len > 0) {
        st->meta = malloc(len);
        if (st->meta == NULL) {
            s->h->log(SL_LOG_INFO, LAYER, "stream %08" PRIx32 ": out of "
                      "memory for its metadata", id);
            st->h->pipe_free(st->pipe);   /* FIN via st_release */
            return;
        }
        memcpy(st->meta, body, len);
        st->meta_len = len;
    }
    st->queued = 1;
    if (s->acc_tail != NULL)
        s->acc_tail->acc_next = st;
    else
        s->acc_head = st;
    s->acc_tail = st;
    s->acc_len++;
    event_active(s->deliver_ev, EV_TIMEOUT, 0);
}

/* Moves len bytes from the front of in to the end of out, copying each
 * once.  Not evbuffer_remove_buffer: it hands over whole chains of the
 * layer below, each as big as that layer's read (up to 256 KiB here for
 * tcp), so a peer sending one tiny PSH per read would pin a read buffer
 * per byte for as long as the reader stalls.  evbuffer_add packs bytes
 * into the last chain, so a stalled stream holds what it was sent.  (The
 * receive block gives slices of reads without that risk: rx_append.) */
static void
body_copy(struct evbuffer *in, struct evbuffer *out, size_t len)
{
    struct evbuffer_iovec v[8];
    size_t left = len;

    while (left > 0) {
        int n = evbuffer_peek(in, (ev_ssize_t)left, NULL, v, 8);
        size_t got = 0;

        if (n > 8)
            n = 8;
        for (int i = 0; i < n && got < left; i++) {
            size_t k = v[i].iov_len < left - got ? v[i].iov_len : left - got;

            evbuffer_add(out, v[i].iov_base, k);
            got += k;
        }
        if (got == 0)
            break;          /* cannot happen: the frame is complete */
        evbuffer_drain(in, got);
        left -= got;
    }
}

/* The stream a PSH body goes to, its frame counted; NULL when the body
 * is dropped. */
static struct pm_stream *
psh_target(struct pm_session *s, const struct pm_hdr *hdr)
{
    struct pm_stream *st = live_stream(s, hdr->stream_id);
    size_t len = hdr->body_len;

    s->bytes_received += len;
    /* Unknown or closed ids are ignored (§4.2); so is data for a stream
     * whose user is gone (it only waits to send its last bytes). */
    if (st == NULL || st->pipe == NULL || !st->open)
        return NULL;
    if (++st->received > st->granted) {
        /* Rust never does this (§7.2); Rust would queue it silently.  We
         * keep memory bounded and close just this stream. */
        s->h->log(SL_LOG_WARNING, LAYER, "stream %08" PRIx32 ": the peer "
                  "sent beyond the %" PRIu64 " frames granted; closing it",
                  st->id, st->granted);
        st_close(st, 0);
        return NULL;
    }
    if (fr_push(st, (uint16_t)len) != 0) {
        st_close(st, 0);
        return NULL;
    }
    st->pushed += len;
    return st;
}

/* A PSH at the front of the lower input (header and body there). */
static void
on_psh(struct pm_session *s, const struct pm_hdr *hdr, struct evbuffer *in)
{
    struct pm_stream *st;
    size_t len = hdr->body_len;

    stage_flush(s);
    evbuffer_drain(in, PM_HDR_LEN);
    st = psh_target(s, hdr);
    if (st == NULL) {
        evbuffer_drain(in, len);
        return;
    }
    if (len > 0)
        body_copy(in, bufferevent_get_output(st->mine), len);
    rx_account(st);
}

/* A PSH in the receive block, its body at body. */
static void
on_psh_blk(struct pm_session *s, const struct pm_hdr *hdr,
           const uint8_t *body)
{
    struct pm_stream *st = psh_target(s, hdr);

    if (st == NULL)
        return;
    if (hdr->body_len > 0)
        rx_append(s, st, s->rx, body, hdr->body_len);
    else
        stage_flush(s);     /* counts at once, as in on_psh */
    if (s->stage_st != st)
        rx_account(st);
}

static void
on_fin(struct pm_session *s, uint32_t id)
{
    struct pm_stream *st = live_stream(s, id);

    /* Unknown: the echo of our own FIN after the wait for it ended. */
    if (st == NULL)
        return;
    if (st->closing) {
        /* The echo of ours (or the peer's own FIN, crossing ours). */
        st_closed(st);
        return;
    }
    /* What was received is delivered before EOF; the echo goes out. */
    st_close(st, 1);
}

static void
on_more(struct pm_session *s, uint32_t id, uint16_t incr)
{
    struct pm_stream *st = live_stream(s, id);

    if (st == NULL)
        return;
    /* 64 bits and saturating: a peer cannot overflow it (§15.6). */
    st->credits = st->credits > UINT64_MAX - incr ? UINT64_MAX
                                                  : st->credits + incr;
    st_schedule(st);
}

/* Whether reading has to wait: the peer sends but does not read. */
static int
input_blocked(struct pm_session *s)
{
    return evbuffer_get_length(lower_out(s)) >= s->out_hard;
}

/* Handles a frame other than PSH, need bytes at flat; -1 if the session
 * died. */
static int
on_ctl(struct pm_session *s, const struct pm_hdr *hdr, const uint8_t *flat,
       size_t need)
{
    struct pm_frame frame;
    struct pm_frame_info info;
    char why[128];
    int r;

    stage_flush(s);
    pm_frame_split(flat, need, &frame, &need);
    r = pm_frame_validate(&frame, &info);
    if (r != PM_OK) {
        pm_frame_strerror(r, hdr, why, sizeof(why));
        /* "picomux: ..." - the layer is named by the error. */
        die(s, SL_EPROTO, "%s",
            strncmp(why, LAYER ": ", sizeof(LAYER ": ") - 1) == 0
                ? why + sizeof(LAYER ": ") - 1
                : why);
        return -1;
    }
    switch (hdr->cmd) {
    case PM_CMD_SYN:
        on_syn(s, hdr->stream_id, frame.body, hdr->body_len);
        break;
    case PM_CMD_FIN:
        on_fin(s, hdr->stream_id);
        break;
    case PM_CMD_MORE:
        on_more(s, hdr->stream_id, info.more_incr);
        break;
    case PM_CMD_PING:
        out_frame(s, PM_CMD_PONG, PM_PING_STREAM_ID, NULL, 0);
        break;
    case PM_CMD_PONG:
        on_pong(s);
        break;
    default:    /* NOP */
        break;
    }
    return s->dead ? -1 : 0;
}

/* Ends parsing in the receive block: what is left of it (the start of a
 * frame) goes back to the front of the lower input, as a copy. */
static void
rx_end(struct pm_session *s, struct evbuffer *in)
{
    struct pm_blk *b = s->rx;

    if (b == NULL)
        return;
    s->rx = NULL;
    if (b->len > s->rx_off &&
        evbuffer_prepend(in, b->data + s->rx_off, b->len - s->rx_off) != 0)
        die(s, SL_ENOMEM, "out of memory");
    blk_unref(b);
}

/* A PSH that starts in the receive block and ends in the next chain of
 * the input, when that chain is large too: it becomes the receive block,
 * and the body goes on as a slice (or copy) of each.  -1 if not so. */
static int
rx_straddle(struct pm_session *s, struct evbuffer *in)
{
    struct pm_blk *b1 = s->rx, *b2;
    const uint8_t *p1 = b1->data + s->rx_off;
    size_t a = b1->len - s->rx_off, need, skip;
    uint8_t hb[PM_HDR_LEN];
    struct evbuffer_iovec v;
    struct pm_hdr hdr;
    struct pm_stream *st;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len < RX_BLK_MIN ||
        a + v.iov_len < PM_HDR_LEN)
        return -1;
    if (a >= PM_HDR_LEN) {
        memcpy(hb, p1, PM_HDR_LEN);
    } else {
        memcpy(hb, p1, a);
        memcpy(hb + a, v.iov_base, PM_HDR_LEN - a);
    }
    pm_hdr_decode(hb, &hdr);
    need = PM_HDR_LEN + (size_t)hdr.body_len;
    if (hdr.cmd != PM_CMD_PSH || a + v.iov_len < need)
        return -1;
    b2 = blk_take(in, v.iov_len);
    if (b2 == NULL)
        return -1;
    s->rx = b2;
    s->rx_off = need - a;
    skip = a < PM_HDR_LEN ? PM_HDR_LEN - a : 0;  /* header bytes in b2 */
    st = psh_target(s, &hdr);
    if (st != NULL) {
        if (a > PM_HDR_LEN)
            rx_append(s, st, b1, p1 + PM_HDR_LEN, a - PM_HDR_LEN);
        if (need - a > skip)
            rx_append(s, st, b2, b2->data + skip, need - a - skip);
        if (s->stage_st != st)
            rx_account(st);
    }
    blk_unref(b1);
    return 0;
}

/* Starts parsing in place when the lower input begins with a chain long
 * enough to be worth it that holds a whole frame: the chain moves into
 * s->rx, and bodies become slices of it (rx_append). */
static void
rx_begin(struct pm_session *s, struct evbuffer *in)
{
    struct evbuffer_iovec v;
    struct pm_hdr hdr;

    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len < RX_BLK_MIN)
        return;
    pm_hdr_decode(v.iov_base, &hdr);
    if (PM_HDR_LEN + (size_t)hdr.body_len > v.iov_len)
        return;
    s->rx = blk_take(in, v.iov_len);
    s->rx_off = 0;
}

/* Handles every complete frame in the lower input.  Frames are parsed in
 * place in the receive block while there is one, else from the input. */
static void
process_input(struct pm_session *s)
{
    struct evbuffer *in;

    if (s->dead || s->lbev == NULL)
        return;
    if (s->in_read) {
        s->read_again = 1;
        return;
    }
    s->in_read = 1;
    in = bufferevent_get_input(s->lbev);
    do {
        s->read_again = 0;
        while (!s->dead) {
            uint8_t hb[PM_HDR_LEN];
            struct pm_hdr hdr;
            size_t len, need = 0;
            const uint8_t *flat;

            s->read_paused = input_blocked(s) ? 1 : 0;
            if (s->read_paused)
                break;
            if (s->rx == NULL)
                rx_begin(s, in);
            if (s->rx != NULL && s->rx->len == s->rx_off) {
                blk_unref(s->rx);       /* all parsed */
                s->rx = NULL;
                continue;
            }
            if (s->rx != NULL) {
                len = s->rx->len - s->rx_off;
                flat = s->rx->data + s->rx_off;
                if (len >= PM_HDR_LEN) {
                    pm_hdr_decode(flat, &hdr);
                    need = PM_HDR_LEN + (size_t)hdr.body_len;
                }
                if (len < PM_HDR_LEN || len < need) {
                    /* The frame goes on in the next chain: on as a slice
                     * of it too, or, when the input is empty, wait with
                     * the block, else the rest from the input. */
                    if (rx_straddle(s, in) != 0) {
                        if (evbuffer_get_length(in) == 0)
                            break;
                        rx_end(s, in);
                    }
                    continue;
                }
                s->rx_off += need;
                if (hdr.cmd == PM_CMD_PSH)
                    on_psh_blk(s, &hdr, flat + PM_HDR_LEN);
                else if (on_ctl(s, &hdr, flat, need) != 0)
                    break;
                continue;
            }
            len = evbuffer_get_length(in);
            if (len < PM_HDR_LEN)
                break;
            evbuffer_copyout(in, hb, PM_HDR_LEN);
            pm_hdr_decode(hb, &hdr);
            need = PM_HDR_LEN + (size_t)hdr.body_len;
            if (len < need)
                break;
            if (hdr.cmd == PM_CMD_PSH) {
                on_psh(s, &hdr, in);
                continue;
            }
            /* Bodies of control frames are small or rare: flatten. */
            flat = evbuffer_pullup(in, (ev_ssize_t)need);
            if (flat == NULL) {
                die(s, SL_ENOMEM, "out of memory");
                break;
            }
            if (on_ctl(s, &hdr, flat, need) != 0)
                break;
            evbuffer_drain(in, need);
        }
    } while (s->read_again && !s->dead);
    if (!s->dead)
        stage_flush(s);
    s->in_read = 0;
    if (s->dead)
        return;
    /* Paused, the input may sit at its high watermark; with reading on,
     * libevent would call lower_readcb again and again. */
    if (s->read_paused)
        bufferevent_disable(s->lbev, EV_READ);
    else if (!(bufferevent_get_enabled(s->lbev) & EV_READ))
        bufferevent_enable(s->lbev, EV_READ);
    if (s->lower_eof && !s->read_paused) {
        size_t left = evbuffer_get_length(in) +
                      (s->rx != NULL ? s->rx->len - s->rx_off : 0);

        if (left > 0)
            die(s, SL_ECLOSED, "the lower pipe ended inside a frame (%zu "
                "bytes left)", left);
        else
            die(s, SL_ECLOSED, "the lower pipe ended");
        return;
    }
    pump(s);
}

/* ---- sending ------------------------------------------------------------ */

/* Appends a PSH header to the batch: a slice of a page of headers.  It
 * needs a chain of its own either way (the body before it is a slice);
 * libevent allocates 1 KiB for a slice as for a small chain, yet this
 * measured a few per cent faster than copying the header (bench). */
static void
tx_hdr(struct pm_session *s, const uint8_t hdr[PM_HDR_LEN])
{
    struct pm_blk *hp = s->hp;

    if (hp == NULL || s->hp_off + PM_HDR_LEN > hp->len) {
        if (hp != NULL)
            blk_unref(hp);
        s->hp = hp = malloc(sizeof(*hp) + HDR_PAGE);
        if (hp == NULL) {
            evbuffer_add(s->batch, hdr, PM_HDR_LEN);
            return;
        }
        hp->buf = NULL;
        hp->data = (const uint8_t *)(hp + 1);
        hp->len = HDR_PAGE;
        hp->refs = 1;
        s->hp_off = 0;
    }
    memcpy((uint8_t *)(hp + 1) + s->hp_off, hdr, PM_HDR_LEN);
    if (evbuffer_add_reference(s->batch, hp->data + s->hp_off, PM_HDR_LEN,
                               blk_slice_done, hp) == 0)
        hp->refs++;
    else
        evbuffer_add(s->batch, hdr, PM_HDR_LEN);
    s->hp_off += PM_HDR_LEN;
}

/* Appends a PSH frame of take (<= st_pending) bytes of st's to the
 * batch.  Chains of the user's that fit move whole; longer ones become
 * st->tx, cut into slices (Rust's frames are at most PM_MSS, §4.2).
 * Moving from mine.input may move more of the user's output in; that
 * never calls back (pair callbacks are deferred). */
static void
tx_frame(struct pm_session *s, struct pm_stream *st, size_t take)
{
    struct evbuffer *in = bufferevent_get_input(st->mine);
    uint8_t hdr[PM_HDR_LEN];

    pm_hdr_encode(hdr, PM_CMD_PSH, (uint16_t)take, st->id);
    tx_hdr(s, hdr);
    while (take > 0) {
        struct pm_blk *b = st->tx;
        size_t k;

        if (b == NULL) {
            struct evbuffer_iovec v;
            int n = evbuffer_peek(in, -1, NULL, &v, 1);

            if (n >= 1 && v.iov_len > 0 && v.iov_len <= take) {
                evbuffer_remove_buffer(in, s->batch, v.iov_len);
                take -= v.iov_len;
                continue;
            }
            if (n < 1 || v.iov_len < TX_BLK_MIN ||
                (b = blk_take(in, v.iov_len)) == NULL) {
                /* Small, or out of memory: copied. */
                evbuffer_remove_buffer(in, s->batch, take);
                return;
            }
            st->tx = b;
            st->tx_off = 0;
        }
        k = b->len - st->tx_off;
        if (k > take)
            k = take;
        blk_append(s->batch, b, b->data + st->tx_off, k);
        st->tx_off += k;
        take -= k;
        if (st->tx_off == b->len)
            tx_drop(st);
    }
}

/* One frame per stream in turn while the lower output has room. */
static void
pump(struct pm_session *s)
{
    if (s->in_pump) {
        s->pump_again = 1;
        return;
    }
    s->in_pump = 1;
    do {
        s->pump_again = 0;
        while (!s->dead && s->lbev != NULL && s->ring_head != NULL &&
               evbuffer_get_length(lower_out(s)) +
                       evbuffer_get_length(s->batch) <
                   s->p.lower_buffer) {
            struct pm_stream *st = s->ring_head;
            size_t n = st_pending(st);

            ring_del(s, st);
            if (n > 0 && st->credits > 0) {
                size_t take = n < PM_MSS ? n : PM_MSS;

                more_first(s, st);
                tx_frame(s, st, take);
                st->credits--;
                s->bytes_sent += take;
                mine_read_ctl(st);      /* may take more from the user */
                n = st_pending(st);
            }
            if (n == 0 && st->fin_wanted)
                st_close(st, 0);     /* may free st; flushes the batch */
            else
                st_schedule(st);
        }
        if (!s->dead && s->lbev != NULL)
            batch_flush(s);
    } while (s->pump_again && !s->dead);
    if (s->lbev == NULL || s->dead)
        evbuffer_drain(s->batch, evbuffer_get_length(s->batch));
    /* Any SYN went with the batch: no turn of the loop for flush_cb. */
    if (evtimer_pending(s->flush_ev, NULL))
        event_del(s->flush_ev);
    s->in_pump = 0;
}

/* ---- the session -------------------------------------------------------- */

/* Ends every stream: queued ones are dropped, the others see EOF after
 * what they hold (and why, if the session died).  Frees the lower pipe. */
static void
teardown(struct pm_session *s, const struct sl_error *why)
{
    while (s->acc_head != NULL) {
        struct pm_stream *st = s->acc_head;

        s->acc_head = st->acc_next;
        st->queued = 0;
        st_detach(st);
        /* Never handed out: ours to free (stream_destroy frees st). */
        s->h->pipe_free(st->pipe);
    }
    s->acc_tail = NULL;
    s->acc_len = 0;
    while (s->streams != NULL) {
        struct pm_stream *st = s->streams;

        st_detach(st);
        if (st->pipe == NULL) {
            st_free(st);
            continue;
        }
        if (why != NULL && why->code != 0)
            s->h->pipe_set_error(st->pipe, why);
        give_eof(st);
    }
    if (s->rx != NULL) {
        blk_unref(s->rx);
        s->rx = NULL;
    }
    if (s->lower != NULL) {
        s->h->pipe_free(s->lower);
        s->lower = NULL;
        s->lbev = NULL;
    }
    event_del(s->ping_ev);
}

static void
do_free(struct pm_session *s)
{
    s->dead = 1;
    teardown(s, NULL);
    event_free(s->ping_ev);
    event_free(s->deliver_ev);
    event_free(s->death_ev);
    event_free(s->flush_ev);
    evbuffer_free(s->batch);
    evbuffer_free(s->stage);
    if (s->hp != NULL)
        blk_unref(s->hp);
    free(s->slots);
    free(s->tq);
    free(s->metadata);
    free(s);
}

static void
leave(struct pm_session *s)
{
    if (--s->busy == 0 && s->free_pending)
        do_free(s);
}

/* The session dies (§11): logged here, reported from the loop. */
static void
die(struct pm_session *s, int code, const char *fmt, ...)
{
    char text[SL_ERROR_TEXT_MAX];
    va_list ap;

    if (s->dead)
        return;
    s->dead = 1;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    s->h->error_set(&s->why, code, LAYER, "%s", text);
    s->h->log(code == SL_EPROTO ? SL_LOG_WARNING : SL_LOG_INFO, LAYER,
              "session died: %s", text);
    event_del(s->ping_ev);
    event_active(s->death_ev, EV_TIMEOUT, 0);
}

static void
death_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pm_session *s = arg;

    (void)fd;
    (void)what;
    s->busy++;
    teardown(s, &s->why);
    if (s->on_dead != NULL && !s->free_pending)
        s->on_dead(&s->why, s->arg);
    leave(s);
}

/* Hands queued streams to on_stream, from the loop. */
static void
deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pm_session *s = arg;

    (void)fd;
    (void)what;
    s->busy++;
    while (s->acc_head != NULL && !s->dead && !s->free_pending) {
        struct pm_stream *st = s->acc_head;
        unsigned char *meta = st->meta;
        size_t len = st->meta_len;

        s->acc_head = st->acc_next;
        if (s->acc_head == NULL)
            s->acc_tail = NULL;
        s->acc_len--;
        st->acc_next = NULL;
        st->queued = 0;
        st->meta = NULL;
        st->delivering = 1;
        if (s->on_stream != NULL)
            s->on_stream(st->pipe, meta != NULL ? meta : (const void *)"",
                         len, s->arg);
        else
            s->h->pipe_free(st->pipe);
        free(meta);
        st->delivering = 0;
        if (st->pipe == NULL) {
            /* Refused (freed) inside on_stream: FIN now. */
            st_release(st);
        } else if (st->eof_pending) {
            st->eof_pending = 0;
            give_eof(st);
        }
    }
    if (!s->dead && !s->free_pending && s->read_paused)
        process_input(s);
    leave(s);
}

static void
lower_readcb(struct bufferevent *bev, void *arg)
{
    struct pm_session *s = arg;

    (void)bev;
    s->heard_ms = now_ms();
    process_input(s);
}

static void
lower_writecb(struct bufferevent *bev, void *arg)
{
    struct pm_session *s = arg;

    (void)bev;
    if (s->dead)
        return;
    if (s->read_paused)
        process_input(s);
    pump(s);
}

static void
lower_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct pm_session *s = arg;
    int err = EVUTIL_SOCKET_ERROR();

    (void)bev;
    if (s->dead)
        return;
    if (what & BEV_EVENT_ERROR) {
        die(s, SL_ECLOSED, "the lower pipe failed: %s",
            err != 0 ? strerror(err) : "error");
        return;
    }
    if (what & BEV_EVENT_EOF) {
        /* Frames that came before the end are handled first. */
        s->lower_eof = 1;
        process_input(s);
    }
}

static int
pm_session_new(void *cfg, struct event_base *base, struct sl_pipe *lower,
               enum sl_role role, sl_stream_fn *on_stream,
               sl_dead_fn *on_dead, void *arg, void **out,
               struct sl_error *e)
{
    struct pm_cfg *c = cfg;
    const struct sl_host *h = c->h;
    struct pm_session *s = calloc(1, sizeof(*s));
    size_t rhi;

    (void)role;   /* symmetric: both ends run the same machine (§1) */
    if (s == NULL)
        goto nomem;
    s->h = h;
    s->base = base;
    s->p = c->p;
    s->on_stream = on_stream;
    s->on_dead = on_dead;
    s->arg = arg;
    s->last_rtt_ms = -1;
    if (c->metadata_len > 0) {
        s->metadata = malloc(c->metadata_len);
        if (s->metadata == NULL)
            goto nomem;
        memcpy(s->metadata, c->metadata, c->metadata_len);
        s->metadata_len = c->metadata_len;
    }
    randombytes_buf(s->hkey, sizeof(s->hkey));
    s->cap = TABLE_MIN;
    s->slots = calloc(s->cap, sizeof(*s->slots));
    s->ping_ev = evtimer_new(base, ping_fire, s);
    s->deliver_ev = event_new(base, -1, 0, deliver_cb, s);
    s->death_ev = event_new(base, -1, 0, death_cb, s);
    s->flush_ev = evtimer_new(base, flush_cb, s);
    s->batch = evbuffer_new();
    s->stage = evbuffer_new();
    if (s->stage == NULL || s->slots == NULL || s->ping_ev == NULL ||
        s->deliver_ev == NULL || s->death_ev == NULL || s->batch == NULL ||
        s->flush_ev == NULL)
        goto nomem;
    s->lower = lower;
    s->lbev = h->pipe_get0_bev(lower);
    s->out_hard = 2 * s->p.lower_buffer;
    s->pin_max = 2 * s->p.lower_buffer;
    /* Room for whole frames in the input, whatever the layer below set. */
    rhi = s->p.lower_buffer > 2 * PM_FRAME_MAX ? s->p.lower_buffer
                                                : 2 * PM_FRAME_MAX;
    bufferevent_setcb(s->lbev, lower_readcb, lower_writecb, lower_eventcb, s);
    bufferevent_setwatermark(s->lbev, EV_READ, 0, rhi);
    bufferevent_setwatermark(s->lbev, EV_WRITE, s->p.lower_buffer / 2, 0);
    bufferevent_enable(s->lbev, EV_READ | EV_WRITE);
    /* The first frame is a PING (§8). */
    ping_send(s);
    /* A handshake below may have left frames in the input. */
    if (evbuffer_get_length(bufferevent_get_input(s->lbev)) > 0)
        bufferevent_trigger(s->lbev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS |
                                                  BEV_TRIG_DEFER_CALLBACKS);
    *out = s;
    return 0;
nomem:
    if (s != NULL) {
        if (s->ping_ev != NULL)
            event_free(s->ping_ev);
        if (s->deliver_ev != NULL)
            event_free(s->deliver_ev);
        if (s->death_ev != NULL)
            event_free(s->death_ev);
        if (s->flush_ev != NULL)
            event_free(s->flush_ev);
        if (s->batch != NULL)
            evbuffer_free(s->batch);
        if (s->stage != NULL)
            evbuffer_free(s->stage);
        free(s->slots);
        free(s->metadata);
        free(s);
    }
    h->pipe_free(lower);
    return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
}

static int
pm_open(void *session, const void *meta, size_t meta_len,
        struct sl_pipe **stream, struct sl_error *e)
{
    struct pm_session *s = session;
    const struct sl_host *h = s->h;
    struct pm_stream *st;
    uint32_t id = 0;
    int tries;

    if (s->dead || s->free_pending)
        return h->error_set(e, SL_ECLOSED, LAYER, "session is dead%s%s",
                            s->why.code ? ": " : "",
                            s->why.code ? s->why.text : "");
    if (meta_len == 0 && s->metadata_len > 0) {
        meta = s->metadata;
        meta_len = s->metadata_len;
    }
    /* Rust would truncate the length and desync the pipe (§4.1). */
    if (meta_len > PM_BODY_MAX)
        return h->error_set(e, SL_EINVAL, LAYER, "metadata of %zu bytes is "
                            "longer than %u", meta_len, PM_BODY_MAX);
    if (s->streams_open >= s->p.max_streams)
        return h->error_set(e, SL_ELIMIT, LAYER, "%" PRIu32 " streams "
                            "open, the max_streams bound",
                            s->p.max_streams);
    for (tries = 0; tries < ID_TRIES; tries++) {
        /* Sixteen ids to a draw from the system's generator. */
        if (s->ids_left == 0) {
            randombytes_buf(s->ids, sizeof(s->ids));
            s->ids_left = sizeof(s->ids) / sizeof(s->ids[0]);
        }
        id = s->ids[--s->ids_left];
        if (!id_reserved(s, id))
            break;
    }
    if (tries == ID_TRIES)
        return h->error_set(e, SL_ELIMIT, LAYER, "no free stream id");
    st = st_new(s, id);
    if (st == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    /* State first, then the SYN, in one step (§4.1). */
    syn_frame(s, id, meta, meta_len);
    ping_on_open(s);
    *stream = st->pipe;
    return 0;
}

static int
pm_stats(void *session, struct sl_mux_stats *out)
{
    struct pm_session *s = session;
    struct sl_mux_stats st;
    size_t n = out->struct_size < sizeof(st) ? out->struct_size : sizeof(st);

    memset(&st, 0, sizeof(st));
    st.struct_size = out->struct_size;
    st.streams_open = s->streams_open;
    st.streams_total = s->streams_total;
    st.bytes_sent = s->bytes_sent;
    st.bytes_received = s->bytes_received;
    st.last_rtt_ms = s->last_rtt_ms;
    memcpy(out, &st, n);
    return 0;
}

static void
pm_session_free(void *session)
{
    struct pm_session *s = session;

    if (s->busy > 0) {
        /* Inside on_stream/on_dead: the outermost frame frees it. */
        s->free_pending = 1;
        s->on_stream = NULL;
        s->on_dead = NULL;
        return;
    }
    do_free(s);
}

/* ---- configuration ------------------------------------------------------ */

static int
pm_configure(const struct sl_host *h, void *plugin_ctx,
             const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct pm_cfg *c = calloc(1, sizeof(*c));
    const char *meta = h->opt_str(o, "metadata");
    size_t mlen = meta != NULL ? strlen(meta) : 0;

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->h = h;
    c->p.ping_interval_ms = h->opt_int(o, "ping_interval");
    c->p.ping_timeout_ms = h->opt_int(o, "ping_timeout");
    c->p.max_streams = (uint32_t)h->opt_int(o, "max_streams");
    c->p.accept_backlog = (uint32_t)h->opt_int(o, "accept_backlog");
    c->p.window = (uint32_t)h->opt_int(o, "window");
    c->p.stream_buffer = (size_t)h->opt_int(o, "stream_buffer");
    c->p.lower_buffer = (size_t)h->opt_int(o, "lower_buffer");
    c->p.debloat = h->opt_int(o, "debloat") != 0;
    c->p.max_tombstones = (uint64_t)h->opt_int(o, "max_tombstones");
    if (mlen > PM_BODY_MAX) {
        free(c);
        return h->error_set(e, SL_EINVAL, LAYER, "option 'metadata': %zu "
                            "bytes, longer than %u", mlen, PM_BODY_MAX);
    }
    if (mlen > 0) {
        c->metadata = malloc(mlen);
        if (c->metadata == NULL) {
            free(c);
            return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        }
        memcpy(c->metadata, meta, mlen);
        c->metadata_len = mlen;
    }
    *out = c;
    return 0;
}

static void
pm_unconfigure(void *cfg)
{
    struct pm_cfg *c = cfg;

    if (c == NULL)
        return;
    free(c->metadata);
    free(c);
}

static int
pm_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    if (sl_check_libevent(h, LAYER, e) != 0)
        return SL_EABI;
    if (sodium_init() < 0)
        return h->error_set(e, SL_EINVAL, LAYER, "libsodium failed to "
                            "initialise");
    return 0;
}

static const struct sl_mux_ops pm_mux = {
    .struct_size = sizeof(struct sl_mux_ops),
    .session_new = pm_session_new,
    .open = pm_open,
    .stats = pm_stats,
    .session_free = pm_session_free,
};

static const struct sl_layer_ops pm_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "Geph5 picomux: many streams over one pipe",
    .kind = SL_KIND_MUX,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_SESSION,
    .flags = 0,
    .opts = pm_opts,
    .configure = pm_configure,
    .unconfigure = pm_unconfigure,
    .mux = &pm_mux,
};

static const struct sl_layer_ops *const pm_layers[] = { &pm_layer, NULL };

SL_PLUGIN_DEFINE(picomux, "picomux stream multiplexer (Geph5)",
                 PACKAGE_VERSION, "ISC", "sillad", pm_layers, pm_init, NULL)
