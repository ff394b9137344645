/* sillad-conform - the conformance suite every layer is run through.
 *
 *   sillad-conform [-p PLUGIN.so]... [--base STACK] [--quick] [--only NAME]
 *                  [--list] [-v] [LAYERS]
 *
 * Builds the listen stack "BASE | LAYERS" and the dial stack with the base's
 * addr= replaced by the address the listener bound, and runs every case with
 * both ends in this process, on one event_base, over 127.0.0.1.  A stack
 * that ends in a mux runs every case on streams.  Each case prints
 * "ok NAME (figures)" or "FAIL NAME: reason"; the last line is
 * "N passed, M failed" and the exit status is 0 only if nothing failed.
 *
 * Every wait is bounded: a per-case deadline fails the case instead of
 * hanging, and an alarm(2) ends the whole program if the loop itself stops
 * returning.  Data is a counter-mode pseudo-random stream that the reading
 * side regenerates, so any lost, duplicated or reordered byte is found with
 * its offset.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sillad.h"

/* glibc's heap statistics; under AddressSanitizer they miss its own
 * allocator, so they are not used there. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SL_ASAN 1
#endif
#if defined(__GLIBC__) && !defined(SL_ASAN) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#include <malloc.h>
#define HAVE_MALLINFO2 1
#endif

/* Writer backpressure: add data only while the output holds less than
 * HIGH_MARK; the write callback runs once it has drained to LOW_MARK. */
#define HIGH_MARK (1024 * 1024)
#define LOW_MARK (256 * 1024)
#define CHUNK 65536

/* Every connection starts with this header from the client, so the server
 * can pair it with its dialer even when a mux delivers streams late or out
 * of order: 4 magic bytes, then the pair index, big-endian. */
#define HDR_LEN 8
#define HDR_MAGIC "SLcf"

#define MAX_PAIRS 256
#define MANY_CONNS 200
#define MANY_FULL (64 * 1024)
#define MANY_QUICK (16 * 1024)
#define STREAMS_AT_ONCE 100
#define STREAMS_BYTES 1024
#define RESET_WITHIN_MS 5000
#define PAUSE_MS 2000
#define TEARDOWN_MS 3000
#define DRAIN_MS 20
#define SAMPLE_MS 10
#define TICK_MS 1
#define RAW_BYTES 16

#define DEFAULT_BASE "tcp addr=127.0.0.1:0"
#define DEFAULT_CASE_S 60
#define DEFAULT_MEM_BOUND (32 * 1024 * 1024)
#define BULK_FULL (64 * 1024 * 1024)
#define BULK_QUICK (8 * 1024 * 1024)
#define MIB (1024.0 * 1024.0)

/* ---- the pseudo-random stream -------------------------------------------- */

/* Counter mode (the splitmix64 finalizer over seed + word index), so the
 * reader regenerates any offset without keeping history. */
struct gen {
    uint64_t seed;
    uint64_t pos;      /* bytes produced so far */
};

static uint64_t
gen_word(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + (i + 1) * UINT64_C(0x9e3779b97f4a7c15);

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void
gen_init(struct gen *g, uint64_t seed)
{
    g->seed = seed;
    g->pos = 0;
}

static void
gen_fill(struct gen *g, unsigned char *out, size_t n)
{
    while (n > 0) {
        uint64_t w = gen_word(g->seed, g->pos / 8);
        size_t off = (size_t)(g->pos % 8);
        size_t take = 8 - off < n ? 8 - off : n;

        /* Both ends run in this process: native byte order is fine. */
        memcpy(out, (const unsigned char *)&w + off, take);
        out += take;
        n -= take;
        g->pos += take;
    }
}

/* ---- suite, results, fixtures -------------------------------------------- */

typedef bool cond_fn(void *arg);

struct suite {
    struct event_base *base;
    struct event *wake;          /* ends a bounded wait */
    bool woke;
    struct event *tick;          /* checks the condition of a wait */
    cond_fn *cond;
    void *cond_arg;
    struct result *cond_r;
    int64_t deadline_ms;         /* of the running case */
    const char *base_text;
    const char *layers_text;
    char *listen_text;
    bool mux;                    /* the stack ends in a mux: use streams */
    bool mux_below;              /* a mux under the top layer */
    bool half_close;             /* every layer has SL_LF_HALF_CLOSE */
    bool quick, verbose;
    uint64_t bulk_bytes;         /* bulk-*, slow-reader */
    uint64_t many_bytes;         /* per connection of many */
    uint64_t mem_bound;
    int64_t case_ms;
    long pipes0;                 /* at start, for the leaks case */
    int fds0;
};

struct result {
    bool failed;
    char detail[256];
    char why[400];
};

struct fixture;

/* One end of a connection (or stream), driven by the case. */
struct end {
    struct fixture *fx;
    struct end *next;            /* the fixture's list */
    struct sl_pipe *p;           /* NULL once freed (peer-reset) */
    struct event *refill;        /* resumes end_fill next loop turn */
    bool filling, reading;       /* re-entry guards */
    bool server;
    bool sink;                   /* discard input, no header (cancel) */
    int idx;                     /* pair index; -1 until the header */
    size_t hdr_len;
    unsigned char hdr[HDR_LEN];
    /* writing */
    struct gen tx;
    uint64_t tx_total, tx_done;
    bool shut_when_sent, shut;
    /* reading */
    struct gen rx;
    bool rx_on, echo, paused;
    uint64_t rx_expect, rx_done, rx_bad_at, rx_at_eof;
    int64_t rx_done_us;          /* when rx_done reached rx_expect */
    /* endings */
    bool eof, error;
    int64_t closed_us;
    char errtext[200];
};

struct pair {
    struct end *c, *s;
};

struct dial_slot {
    struct fixture *fx;
    struct sl_dial_op *op;       /* valid while calls == 0 */
    struct sl_session *sess;     /* client session of a mux stack */
    int first, count;            /* pair indices it provides */
    int calls;                   /* times the callback ran */
    bool canceled, got;
    int err;
    char errtext[200];
};

struct srv_sess {
    struct sl_session *s;
    struct srv_sess *next;
};

struct fixture {
    struct suite *su;
    struct result *r;
    struct sl_stack *lstack;
    struct sl_listener *listener;
    struct sl_dialer *dialer;
    char addr[128];              /* the bound listen address */
    bool sink;                   /* server ends only discard (cancel) */
    struct end *ends;
    struct pair pairs[MAX_PAIRS];
    int npairs;
    struct dial_slot slots[MAX_PAIRS];
    int nslots;
    struct srv_sess *ssess;
    long accepts;                /* listener callbacks */
    struct event *sampler;       /* slow-reader memory samples */
    uint64_t peak;               /* bytes in the pipes' buffers */
    uint64_t heap0, heap_peak;   /* heap in use, at start and at most */
};

static unsigned char gen_buf[CHUNK];
static long npassed, nfailed;
static const char *volatile current_case = "setup";

static int64_t
now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
res_fail(struct result *r, const char *fmt, ...) SL_PRINTF(2, 3);

/* The first failure of a case is its reason; later ones are consequences. */
static void
res_fail(struct result *r, const char *fmt, ...)
{
    va_list ap;

    if (r->failed)
        return;
    r->failed = true;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
}

#define fx_fail(fx, ...) res_fail((fx)->r, __VA_ARGS__)

static const char *
fmt_size(uint64_t n, char *buf, size_t len)
{
    if (n >= 1024 * 1024 && n % (1024 * 1024) == 0)
        snprintf(buf, len, "%" PRIu64 " MiB", n / (1024 * 1024));
    else if (n >= 1024 * 1024)
        snprintf(buf, len, "%.1f MiB", (double)n / MIB);
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(buf, len, "%" PRIu64 " KiB", n / 1024);
    else if (n >= 1024)
        snprintf(buf, len, "%.1f KiB", (double)n / 1024.0);
    else
        snprintf(buf, len, "%" PRIu64 " B", n);
    return buf;
}

static void
vlog(const struct suite *su, const char *fmt, ...) SL_PRINTF(2, 3);

static void
vlog(const struct suite *su, const char *fmt, ...)
{
    va_list ap;

    if (!su->verbose)
        return;
    fprintf(stderr, "# %s: ", current_case);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---- bounded waiting ----------------------------------------------------- */

static void
wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct suite *su = arg;

    (void)fd;
    (void)what;
    su->woke = true;
    event_base_loopbreak(su->base);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct suite *su = arg;

    (void)fd;
    (void)what;
    if (su->cond(su->cond_arg) || (su->cond_r != NULL && su->cond_r->failed))
        event_base_loopbreak(su->base);
}

static void
arm_wake(struct suite *su, int64_t ms)
{
    struct timeval tv;

    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    su->woke = false;
    evtimer_add(su->wake, &tv);
}

/* Runs the loop until cond(arg) holds, r fails, or ms pass.  Returns
 * whether cond holds.  The condition is checked from a timer, not between
 * loop turns: data pumped through pairs with deferred callbacks always
 * leaves a callback pending, so EVLOOP_ONCE might never return, while
 * timers run on every turn. */
static bool
wait_until(struct suite *su, struct result *r, cond_fn *cond, void *arg,
           int64_t ms)
{
    static const struct timeval tick = { 0, TICK_MS * 1000 };
    bool ok;

    su->cond = cond;
    su->cond_arg = arg;
    su->cond_r = r;
    arm_wake(su, ms);
    evtimer_add(su->tick, &tick);
    while (!(ok = cond(arg)) && !(r != NULL && r->failed) && !su->woke)
        event_base_loop(su->base, 0);
    evtimer_del(su->tick);
    evtimer_del(su->wake);
    return ok;
}

static bool
never(void *arg)
{
    (void)arg;
    return false;
}

/* Lets the loop run for ms (timers, deferred frees). */
static void
loop_for(struct suite *su, int64_t ms)
{
    wait_until(su, NULL, never, NULL, ms);
}

/* Like wait_until, but within the case deadline, and a miss fails the case
 * with what it was waiting for. */
static bool
wait_for(struct fixture *fx, cond_fn *cond, void *arg, int64_t ms,
         const char *what)
{
    struct suite *su = fx->su;
    int64_t left = su->deadline_ms - sl_now_ms();

    if (ms <= 0 || ms > left)
        ms = left;
    if (wait_until(su, fx->r, cond, arg, ms))
        return true;
    if (!fx->r->failed)
        fx_fail(fx, "no progress within %.1f s waiting for %s",
                (double)ms / 1000.0, what);
    return false;
}

/* One loop turn (the loop blocks until something is active), bounded by
 * the case deadline (the wake timer breaks the loop). */
static void
loop_once(struct suite *su)
{
    arm_wake(su, su->deadline_ms - sl_now_ms());
    event_base_loop(su->base, EVLOOP_ONCE);
    evtimer_del(su->wake);
}

/* ---- ends: writing, reading, verifying ----------------------------------- */

static struct bufferevent *
end_bev(struct end *e)
{
    return sl_pipe_get0_bev(e->p);
}

/* Bytes in the output buffers of p and of every pipe under it, and in the
 * input buffers too if inputs is set. */
static uint64_t
chain_sum(struct sl_pipe *p, bool inputs)
{
    uint64_t n = 0;

    for (; p != NULL; p = sl_pipe_get0_lower(p)) {
        struct bufferevent *bev = sl_pipe_get0_bev(p);

        if (bev == NULL)
            continue;
        n += evbuffer_get_length(bufferevent_get_output(bev));
        if (inputs)
            n += evbuffer_get_length(bufferevent_get_input(bev));
    }
    return n;
}

static const char *
end_name(const struct end *e)
{
    return e->server ? "server" : "client";
}

/* What the layers under e took from e's output (bounded by HIGH_MARK) but
 * have not sent yet. */
static uint64_t
queued_below(struct end *e)
{
    return chain_sum(sl_pipe_get0_lower(e->p), false);
}

static uint64_t
fx_bytes(struct fixture *fx)
{
    uint64_t n = 0;

    /* The writer generates on demand and queues nothing of its own, so
     * the pipes' buffers are everything this process holds. */
    for (struct end *e = fx->ends; e != NULL; e = e->next)
        n += chain_sum(e->p, true);
    return n;
}

/* Heap in use by the whole process, or 0 where the C library cannot say.
 * It sees what a mux buffers inside its session, where no pipe of ours
 * reaches. */
static uint64_t
heap_in_use(void)
{
#ifdef HAVE_MALLINFO2
    struct mallinfo2 mi = mallinfo2();

    return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
#else
    return 0;
#endif
}

static void
fx_sample(struct fixture *fx)
{
    uint64_t n;

    if (fx->sampler == NULL)
        return;
    n = fx_bytes(fx);
    if (n > fx->peak)
        fx->peak = n;
}

static void
end_fill(struct end *e)
{
    struct evbuffer *out;
    size_t added = 0;

    /* A bufferevent without deferred callbacks (a filter, a pair) runs
     * our write callback from inside evbuffer_commit_space; the outer call
     * goes on, or the same bytes would be counted twice. */
    if (e->p == NULL || e->filling)
        return;
    e->filling = true;
    out = bufferevent_get_output(end_bev(e));
    while (e->tx_done < e->tx_total &&
           evbuffer_get_length(out) < HIGH_MARK && added < HIGH_MARK) {
        uint64_t left = e->tx_total - e->tx_done;
        size_t n = left < CHUNK ? (size_t)left : CHUNK;
        struct evbuffer_iovec v;

        /* Generated straight into the buffer: no copy of our own. */
        if (evbuffer_reserve_space(out, (ev_ssize_t)n, &v, 1) < 1) {
            fx_fail(e->fx, "evbuffer_reserve_space failed");
            break;
        }
        gen_fill(&e->tx, v.iov_base, n);
        v.iov_len = n;
        e->tx_done += n;
        added += n;
        evbuffer_commit_space(out, &v, 1);
    }
    e->filling = false;
    /* A layer that empties our output into the pipe below without minding
     * how full that one is gives no backpressure: fail, rather than queue
     * until the process runs out of memory. */
    if (added > 0 && queued_below(e) > e->fx->su->mem_bound) {
        char a[32];

        fx_fail(e->fx, "the pipes under the %s's hold %s not yet sent: a "
                "layer passes data down without backpressure", end_name(e),
                fmt_size(queued_below(e), a, sizeof(a)));
        e->tx_total = e->tx_done;
        return;
    }
    /* A pair may move the data on as fast as it is added, so the output
     * never fills: go on in the next loop turn.  A timer, because an event
     * activated from its own callback runs again in the same turn, and
     * I/O and deadlines would never get theirs. */
    if (added >= HIGH_MARK && e->tx_done < e->tx_total &&
        evbuffer_get_length(out) < HIGH_MARK) {
        static const struct timeval now = { 0, 0 };

        evtimer_add(e->refill, &now);
    }
    if (e->tx_done == e->tx_total && e->shut_when_sent && !e->shut) {
        e->shut = true;
        if (sl_pipe_shutdown_write(e->p) != 0)
            fx_fail(e->fx, "sl_pipe_shutdown_write failed");
    }
    fx_sample(e->fx);
}

static void
end_check(struct end *e, const unsigned char *data, size_t n)
{
    while (n > 0) {
        size_t k = n < CHUNK ? n : CHUNK;

        /* After the first difference only count: the offset is the news. */
        if (e->rx_bad_at == 0) {
            gen_fill(&e->rx, gen_buf, k);
            if (memcmp(gen_buf, data, k) != 0) {
                size_t i = 0;

                while (gen_buf[i] == data[i])
                    i++;
                e->rx_bad_at = e->rx_done + i + 1;
            }
        }
        e->rx_done += k;
        data += k;
        n -= k;
    }
    if (e->rx_done >= e->rx_expect && e->rx_done_us == 0)
        e->rx_done_us = now_us();
}

static bool read_header(struct end *e);

static void
end_read_some(struct end *e)
{
    struct bufferevent *bev = end_bev(e);
    struct evbuffer *in = bufferevent_get_input(bev);

    if (e->sink) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (e->server && e->idx < 0 && !read_header(e))
        return;
    if (e->echo) {
        struct evbuffer *out = bufferevent_get_output(bev);

        /* Loops: moving data out may let a filter pull more in. */
        while (evbuffer_get_length(in) > 0) {
            if (evbuffer_get_length(out) >= HIGH_MARK) {
                bufferevent_disable(bev, EV_READ);
                break;
            }
            e->rx_done += evbuffer_get_length(in);
            evbuffer_add_buffer(out, in);   /* moves chains, no copy */
        }
        return;
    }
    /* Until the case says what to expect, input waits in the buffer. */
    if (!e->rx_on || e->paused)
        return;
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v[16];
        int nv = evbuffer_peek(in, -1, NULL, v, 16);
        size_t used = 0;

        if (nv > 16)
            nv = 16;
        for (int i = 0; i < nv; i++) {
            end_check(e, v[i].iov_base, v[i].iov_len);
            used += v[i].iov_len;
        }
        evbuffer_drain(in, used);
    }
}

static void
end_read(struct end *e)
{
    /* Draining the input may make a filter deliver more and call us back
     * from inside: the outer call's loop takes that data, in order. */
    if (e->p == NULL || e->reading)
        return;
    e->reading = true;
    end_read_some(e);
    e->reading = false;
}

static void
end_readcb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    end_read(arg);
}

static void
end_writecb(struct bufferevent *bev, void *arg)
{
    struct end *e = arg;

    if (e->echo && !e->paused && !e->eof) {
        bufferevent_enable(bev, EV_READ);
        end_read(e);     /* what waited while the output was full */
    }
    end_fill(e);
}

static void
refill_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    end_fill(arg);
}

static void
end_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct end *e = arg;

    (void)bev;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    /* What arrived with the ending counts as before it. */
    if (!e->paused)
        end_read(e);
    if (e->closed_us == 0)
        e->closed_us = now_us();
    if ((what & BEV_EVENT_EOF) && !e->eof) {
        e->eof = true;
        e->rx_at_eof = e->rx_done;
        /* An echo passes the end of stream on, after the echoed data. */
        if (e->echo && !e->shut) {
            e->shut = true;
            sl_pipe_shutdown_write(e->p);
        }
    }
    if ((what & BEV_EVENT_ERROR) && !e->error) {
        const struct sl_error *se = sl_pipe_get0_error(e->p);
        int err = EVUTIL_SOCKET_ERROR();

        e->error = true;
        if (se != NULL)
            sl_error_str(se, e->errtext, sizeof(e->errtext));
        else
            snprintf(e->errtext, sizeof(e->errtext), "%s",
                     err != 0 ? strerror(err) : "error");
    }
}

static struct end *
end_new(struct fixture *fx, struct sl_pipe *p, bool server)
{
    struct end *e = calloc(1, sizeof(*e));
    struct bufferevent *bev = sl_pipe_get0_bev(p);

    if (e == NULL) {
        sl_pipe_free(p);
        fx_fail(fx, "out of memory");
        return NULL;
    }
    e->fx = fx;
    e->p = p;
    e->refill = evtimer_new(fx->su->base, refill_cb, e);
    if (e->refill == NULL) {
        free(e);
        sl_pipe_free(p);
        fx_fail(fx, "out of memory");
        return NULL;
    }
    e->server = server;
    e->sink = fx->sink;
    e->idx = -1;
    e->next = fx->ends;
    fx->ends = e;
    bufferevent_setwatermark(bev, EV_WRITE, LOW_MARK, 0);
    sl_pipe_setcb(p, end_readcb, end_writecb, end_eventcb, e);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return e;
}

static bool
read_header(struct end *e)
{
    struct fixture *fx = e->fx;
    struct evbuffer *in = bufferevent_get_input(end_bev(e));
    int n = evbuffer_remove(in, e->hdr + e->hdr_len, HDR_LEN - e->hdr_len);
    uint32_t idx;

    if (n > 0)
        e->hdr_len += (size_t)n;
    if (e->hdr_len < HDR_LEN)
        return false;
    idx = (uint32_t)e->hdr[4] << 24 | (uint32_t)e->hdr[5] << 16 |
          (uint32_t)e->hdr[6] << 8 | e->hdr[7];
    if (memcmp(e->hdr, HDR_MAGIC, 4) != 0 || idx >= (uint32_t)fx->npairs ||
        fx->pairs[idx].s != NULL) {
        /* Mark it read so a bad header is reported once. */
        e->idx = MAX_PAIRS;
        fx_fail(fx, "server got a wrong connection header (%02x%02x%02x%02x "
                "index %" PRIu32 "): bytes lost or reordered during setup",
                e->hdr[0], e->hdr[1], e->hdr[2], e->hdr[3], idx);
        return false;
    }
    e->idx = (int)idx;
    fx->pairs[idx].s = e;
    return true;
}

static void
client_end_new(struct fixture *fx, struct sl_pipe *p, int idx)
{
    unsigned char hdr[HDR_LEN];
    struct end *e = end_new(fx, p, false);

    if (e == NULL)
        return;
    e->idx = idx;
    fx->pairs[idx].c = e;
    memcpy(hdr, HDR_MAGIC, 4);
    hdr[4] = (unsigned char)(idx >> 24);
    hdr[5] = (unsigned char)(idx >> 16);
    hdr[6] = (unsigned char)(idx >> 8);
    hdr[7] = (unsigned char)idx;
    evbuffer_add(bufferevent_get_output(end_bev(e)), hdr, sizeof(hdr));
}

/* What e sends (tx) and expects (rx), as seeds of pseudo-random streams. */
static void
end_streams(struct end *e, uint64_t tx_seed, uint64_t rx_seed)
{
    gen_init(&e->tx, tx_seed);
    gen_init(&e->rx, rx_seed);
}

static void
end_send(struct end *e, uint64_t n)
{
    e->tx_total = n == UINT64_MAX ? UINT64_MAX : e->tx_total + n;
    end_fill(e);
}

static void
end_expect(struct end *e, uint64_t n)
{
    e->rx_on = true;
    e->rx_expect = n == UINT64_MAX ? UINT64_MAX : e->rx_expect + n;
    e->rx_done_us = 0;
    end_read(e);
}

static void
end_echo(struct end *e)
{
    e->echo = true;
    end_read(e);
}

static void
end_pause(struct end *e, bool pause)
{
    e->paused = pause;
    if (pause) {
        bufferevent_disable(end_bev(e), EV_READ);
    } else {
        bufferevent_enable(end_bev(e), EV_READ);
        end_read(e);
    }
}

static bool
end_rx_settled(void *arg)
{
    struct end *e = arg;

    return e->rx_done >= e->rx_expect || e->eof || e->error ||
           e->rx_bad_at != 0 || e->p == NULL;
}

static bool
end_closed(void *arg)
{
    struct end *e = arg;

    return e->eof || e->error;
}

/* Fails the case unless e got exactly what it expected, intact. */
static bool
end_verify(struct end *e)
{
    char a[32], b[32];

    if (e->rx_bad_at != 0) {
        fx_fail(e->fx, "%s of pair %d: byte %" PRIu64 " differs from what "
                "was sent", end_name(e), e->idx, e->rx_bad_at - 1);
        return false;
    }
    if (e->rx_done > e->rx_expect) {
        fx_fail(e->fx, "%s of pair %d: got %s, expected %s", end_name(e),
                e->idx, fmt_size(e->rx_done, a, sizeof(a)),
                fmt_size(e->rx_expect, b, sizeof(b)));
        return false;
    }
    if (e->rx_done < e->rx_expect) {
        fx_fail(e->fx, "%s of pair %d: %s after %s of %s%s%s",
                end_name(e), e->idx,
                e->error ? "error" : e->eof ? "EOF" : "stalled",
                fmt_size(e->rx_done, a, sizeof(a)),
                fmt_size(e->rx_expect, b, sizeof(b)),
                e->error ? ": " : "", e->error ? e->errtext : "");
        return false;
    }
    return true;
}

/* ---- fixtures: a listener, a dialer, connected pairs --------------------- */

static void
sess_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
            size_t len, void *arg)
{
    (void)s;
    (void)meta;
    (void)len;
    end_new(arg, stream, true);
}

static void
on_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct fixture *fx = arg;

    (void)err;
    fx->accepts++;
    if (s != NULL) {
        struct srv_sess *ss = calloc(1, sizeof(*ss));

        if (ss == NULL) {
            sl_session_free(s);
            fx_fail(fx, "out of memory");
            return;
        }
        ss->s = s;
        ss->next = fx->ssess;
        fx->ssess = ss;
        /* A dead session is freed at teardown, like a live one. */
        sl_session_setcb(s, sess_stream, NULL, fx);
    } else if (p != NULL) {
        end_new(fx, p, true);
    }
}

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct dial_slot *slot = arg;
    struct fixture *fx = slot->fx;
    struct sl_error e;
    char buf[256];

    slot->calls++;
    slot->op = NULL;
    if (slot->calls > 1) {
        fx_fail(fx, "a dial callback ran %d times", slot->calls);
        sl_pipe_free(p);
        sl_session_free(s);
        return;
    }
    if (p == NULL && s == NULL) {
        slot->err = err != NULL ? err->code : SL_EINVAL;
        if (err != NULL)
            sl_error_str(err, slot->errtext, sizeof(slot->errtext));
        else
            snprintf(slot->errtext, sizeof(slot->errtext),
                     "no pipe, no session and no error");
        if (!fx->sink)
            fx_fail(fx, "dial failed: %s", slot->errtext);
        return;
    }
    slot->got = true;
    if (fx->sink) {
        /* cancel: a dial that won the race is simply dropped. */
        sl_pipe_free(p);
        sl_session_free(s);
        return;
    }
    if (p != NULL) {
        client_end_new(fx, p, slot->first);
        return;
    }
    slot->sess = s;
    for (int i = 0; i < slot->count; i++) {
        struct sl_pipe *stream = NULL;

        sl_error_clear(&e);
        if (sl_session_open(s, "", 0, &stream, &e) != 0) {
            fx_fail(fx, "sl_session_open (stream %d): %s", i + 1,
                    sl_error_str(&e, buf, sizeof(buf)));
            return;
        }
        client_end_new(fx, stream, slot->first + i);
    }
}

/* base with the value of its addr= replaced by addr, then " | " and layers
 * (if any), in a new string; NULL if base has no addr= (or no memory). */
static char *
dial_text(const char *base, const char *addr, const char *layers)
{
    size_t i = 0, vs, ve, len;
    char q = 0, *out;

    for (;; i++) {
        char ch = base[i];

        if (ch == '\0' || (q == 0 && ch == '|'))
            return NULL;
        if (q != 0) {
            if (ch == '\\' && q == '"' && base[i + 1] != '\0')
                i++;
            else if (ch == q)
                q = 0;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            q = ch;
            continue;
        }
        if (i > 0 && isspace((unsigned char)base[i - 1]) &&
            strncmp(base + i, "addr=", 5) == 0)
            break;
    }
    vs = ve = i + 5;
    q = base[ve];
    if (q == '\'' || q == '"') {
        for (ve++; base[ve] != '\0' && base[ve] != q; ve++)
            if (base[ve] == '\\' && q == '"' && base[ve + 1] != '\0')
                ve++;
        if (base[ve] == q)
            ve++;
    } else {
        while (base[ve] != '\0' && !isspace((unsigned char)base[ve]) &&
               strchr("|,()'\"", base[ve]) == NULL)
            ve++;
    }
    len = strlen(base) + strlen(addr) + strlen(layers) + 4;
    out = malloc(len);
    if (out != NULL)
        snprintf(out, len, "%.*s%s%s%s%s", (int)vs, base, addr, base + ve,
                 layers[0] != '\0' ? " | " : "", layers);
    return out;
}

static bool
fx_dials_done(void *arg)
{
    struct fixture *fx = arg;

    for (int i = 0; i < fx->nslots; i++)
        if (fx->slots[i].calls == 0)
            return false;
    return true;
}

/* A listener and a dialer for one case.  Returns NULL with r failed. */
static struct fixture *
fx_new(struct suite *su, struct result *r)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    struct sl_error e;
    char buf[256], *text = NULL;

    if (fx == NULL) {
        res_fail(r, "out of memory");
        return NULL;
    }
    fx->su = su;
    fx->r = r;
    sl_error_clear(&e);
    fx->lstack = sl_stack_parse(su->listen_text, &e);
    if (fx->lstack == NULL) {
        fx_fail(fx, "listen stack: %s", sl_error_str(&e, buf, sizeof(buf)));
        goto out;
    }
    fx->listener = sl_listener_new(fx->lstack, su->base, on_accept, fx, &e);
    if (fx->listener == NULL) {
        fx_fail(fx, "listen: %s", sl_error_str(&e, buf, sizeof(buf)));
        goto out;
    }
    if (sl_listener_local_addr(fx->listener, fx->addr, sizeof(fx->addr))
        != 0) {
        fx_fail(fx, "sl_listener_local_addr: the base layer cannot say "
                "which address it bound");
        goto out;
    }
    text = dial_text(su->base_text, fx->addr, su->layers_text);
    if (text == NULL) {
        fx_fail(fx, "out of memory");
        goto out;
    }
    fx->dialer = sl_dialer_parse(text, &e);
    if (fx->dialer == NULL)
        fx_fail(fx, "dial stack: %s", sl_error_str(&e, buf, sizeof(buf)));
out:
    free(text);
    return fx;
}

static bool
fx_established(void *arg)
{
    struct fixture *fx = arg;

    for (struct end *e = fx->ends; e != NULL; e = e->next)
        if (e->eof || e->error)
            return true;     /* fx_connect says which */
    for (int i = 0; i < fx->npairs; i++)
        if (fx->pairs[i].c == NULL || fx->pairs[i].s == NULL)
            return false;
    return true;
}

/* Dials n connected pairs; on a mux stack, per_session streams share one
 * session.  Returns whether every pair is up. */
static bool
fx_connect(struct fixture *fx, int n, int per_session)
{
    struct suite *su = fx->su;
    struct sl_error e;
    char buf[256];
    int per = su->mux ? per_session : 1;

    if (fx->r->failed)
        return false;
    fx->npairs = n;
    for (int i = 0; i < n; i += per) {
        struct dial_slot *slot = &fx->slots[fx->nslots];

        slot->fx = fx;
        slot->first = i;
        slot->count = n - i < per ? n - i : per;
        sl_error_clear(&e);
        if (sl_dialer_dial(fx->dialer, su->base, on_dialed, slot, &slot->op,
                           &e) != 0) {
            fx_fail(fx, "dial: %s", sl_error_str(&e, buf, sizeof(buf)));
            return false;
        }
        fx->nslots++;
    }
    if (!wait_for(fx, fx_established, fx, 0, "connections to be set up"))
        return false;
    for (struct end *c = fx->ends; c != NULL; c = c->next)
        if (c->eof || c->error) {
            fx_fail(fx, "a %s end saw %s during setup%s%s", end_name(c),
                    c->error ? "an error" : "EOF", c->error ? ": " : "",
                    c->errtext);
            return false;
        }
    vlog(su, "%d %s up", n, su->mux ? "streams" : "connections");
    return true;
}

static void
fx_free(struct fixture *fx)
{
    struct suite *su;
    bool stuck;

    if (fx == NULL)
        return;
    su = fx->su;
    /* Dials still in flight are cancelled and waited for, so that no
     * callback reaches a freed fixture. */
    for (int i = 0; i < fx->nslots; i++) {
        struct dial_slot *slot = &fx->slots[i];

        if (slot->calls == 0 && !slot->canceled) {
            slot->canceled = true;
            sl_dial_op_cancel(slot->op);
        }
    }
    stuck = !wait_until(su, NULL, fx_dials_done, fx, TEARDOWN_MS);
    if (stuck)
        fx_fail(fx, "a dial callback never ran after sl_dial_op_cancel");
    if (fx->sampler != NULL)
        event_free(fx->sampler);
    for (struct end *e = fx->ends; e != NULL; e = e->next) {
        sl_pipe_free(e->p);
        e->p = NULL;
    }
    for (int i = 0; i < fx->nslots; i++)
        sl_session_free(fx->slots[i].sess);
    for (struct srv_sess *ss = fx->ssess; ss != NULL; ss = ss->next)
        sl_session_free(ss->s);
    sl_listener_free(fx->listener);
    sl_stack_free(fx->lstack);
    if (stuck) {
        /* The layer may still call back into the dialer and the fixture:
         * leaking them is the only safe thing (the leaks case will say). */
        return;
    }
    sl_dialer_free(fx->dialer);
    loop_for(su, DRAIN_MS);
    while (fx->ends != NULL) {
        struct end *e = fx->ends;

        fx->ends = e->next;
        event_free(e->refill);
        free(e);
    }
    while (fx->ssess != NULL) {
        struct srv_sess *ss = fx->ssess;

        fx->ssess = ss->next;
        free(ss);
    }
    free(fx);
}

/* A fixture with n pairs up, or NULL with r failed. */
static struct fixture *
fx_open(struct suite *su, struct result *r, int n, int per_session)
{
    struct fixture *fx = fx_new(su, r);

    if (fx != NULL && !r->failed && fx_connect(fx, n, per_session))
        return fx;
    fx_free(fx);
    return NULL;
}

static uint64_t
seed_for(int pair, int dir)
{
    return UINT64_C(0x5111ad00) + (uint64_t)pair * 4 + (uint64_t)dir;
}

static double
mib_per_s(uint64_t bytes, int64_t us)
{
    return us > 0 ? (double)bytes / MIB / ((double)us / 1e6) : 0.0;
}

/* ---- the cases ----------------------------------------------------------- */

static void
case_echo(struct suite *su, struct result *r)
{
    static const size_t sizes[] = { 1, 1024, 100 * 1024 };
    struct fixture *fx = fx_open(su, r, 1, 1);
    struct end *c, *s;
    double rtt_ms = 0.0;

    if (fx == NULL)
        return;
    c = fx->pairs[0].c;
    s = fx->pairs[0].s;
    end_echo(s);
    end_streams(c, seed_for(0, 0), seed_for(0, 0));
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        int64_t t0 = now_us();
        char what[64], sz[32];

        snprintf(what, sizeof(what), "the echo of %s",
                 fmt_size(sizes[i], sz, sizeof(sz)));
        end_expect(c, sizes[i]);
        end_send(c, sizes[i]);
        if (!wait_for(fx, end_rx_settled, c, 0, what) || !end_verify(c))
            goto out;
        if (i == 0)
            rtt_ms = (double)(c->rx_done_us - t0) / 1000.0;
    }
    snprintf(r->detail, sizeof(r->detail), "1 B, 1 KiB, 100 KiB intact; "
             "1-byte round trip %.2f ms", rtt_ms);
out:
    fx_free(fx);
}

static bool
bulk_done(void *arg)
{
    struct end **ends = arg;

    return (ends[0] == NULL || end_rx_settled(ends[0])) &&
           (ends[1] == NULL || end_rx_settled(ends[1]));
}

static void
bulk(struct suite *su, struct result *r, bool up, bool down)
{
    struct fixture *fx = fx_open(su, r, 1, 1);
    struct end *c, *s, *readers[2];
    uint64_t n = su->bulk_bytes;
    int64_t t0, up_us, down_us;
    char sz[32];

    if (fx == NULL)
        return;
    c = fx->pairs[0].c;
    s = fx->pairs[0].s;
    end_streams(c, seed_for(0, 0), seed_for(0, 1));
    end_streams(s, seed_for(0, 1), seed_for(0, 0));
    readers[0] = up ? s : NULL;
    readers[1] = down ? c : NULL;
    if (up)
        end_expect(s, n);
    if (down)
        end_expect(c, n);
    t0 = now_us();
    if (up)
        end_send(c, n);
    if (down)
        end_send(s, n);
    if (!wait_for(fx, bulk_done, readers, 0, "the transfer to finish") ||
        (up && !end_verify(s)) || (down && !end_verify(c)))
        goto out;
    up_us = s->rx_done_us - t0;
    down_us = c->rx_done_us - t0;
    fmt_size(n, sz, sizeof(sz));
    if (up && down)
        snprintf(r->detail, sizeof(r->detail), "2 x %s in %.2f s, up "
                 "%.1f MiB/s, down %.1f MiB/s", sz,
                 (double)(up_us > down_us ? up_us : down_us) / 1e6,
                 mib_per_s(n, up_us), mib_per_s(n, down_us));
    else
        snprintf(r->detail, sizeof(r->detail), "%s in %.2f s, %.1f MiB/s",
                 sz, (double)(up ? up_us : down_us) / 1e6,
                 mib_per_s(n, up ? up_us : down_us));
out:
    fx_free(fx);
}

static void
case_bulk_up(struct suite *su, struct result *r)
{
    bulk(su, r, true, false);
}

static void
case_bulk_down(struct suite *su, struct result *r)
{
    bulk(su, r, false, true);
}

static void
case_bulk_both(struct suite *su, struct result *r)
{
    bulk(su, r, true, true);
}

/* The first side sends, then sl_pipe_shutdown_write; the peer must see all
 * of it, then EOF, and (with half-close) still get a reply through. */
static void
half_close(struct suite *su, struct result *r, bool client_first)
{
    const uint64_t first_n = 256 * 1024 + 1, reply_n = 128 * 1024 + 3;
    struct fixture *fx = fx_open(su, r, 1, 1);
    struct end *a, *b;

    if (fx == NULL)
        return;
    a = client_first ? fx->pairs[0].c : fx->pairs[0].s;
    b = client_first ? fx->pairs[0].s : fx->pairs[0].c;
    end_streams(a, seed_for(0, 0), seed_for(0, 1));
    end_streams(b, seed_for(0, 1), seed_for(0, 0));
    end_expect(b, first_n);
    a->shut_when_sent = true;
    end_send(a, first_n);
    if (!wait_for(fx, end_closed, b, 0, "EOF after sl_pipe_shutdown_write"))
        goto out;
    if (b->error) {
        fx_fail(fx, "the %s got an error instead of EOF: %s", end_name(b),
                b->errtext);
        goto out;
    }
    if (!end_verify(b))
        goto out;
    if (b->rx_at_eof != first_n) {
        fx_fail(fx, "the %s saw EOF after %" PRIu64 " of %" PRIu64
                " bytes", end_name(b), b->rx_at_eof, first_n);
        goto out;
    }
    if (!su->half_close) {
        snprintf(r->detail, sizeof(r->detail),
                 "no half-close: full close checked");
        goto out;
    }
    if (a->eof || a->error) {
        fx_fail(fx, "sl_pipe_shutdown_write on the %s also ended its "
                "reading side (%s)", end_name(a),
                a->error ? a->errtext : "EOF");
        goto out;
    }
    end_expect(a, reply_n);
    b->shut_when_sent = true;
    end_send(b, reply_n);
    if (!wait_for(fx, end_closed, a, 0, "the reply after EOF"))
        goto out;
    if (!end_verify(a))
        goto out;
    if (a->error || a->rx_at_eof != reply_n) {
        fx_fail(fx, "the %s's reply ended with %s after %" PRIu64 " of %"
                PRIu64 " bytes", end_name(b), a->error ? "an error" : "EOF",
                a->rx_at_eof, reply_n);
        goto out;
    }
    snprintf(r->detail, sizeof(r->detail), "%s sent 256 KiB + 1 then shut "
             "down; %s saw EOF after all of it and replied 128 KiB + 3",
             end_name(a), end_name(b));
out:
    fx_free(fx);
}

static void
case_half_close_client(struct suite *su, struct result *r)
{
    half_close(su, r, true);
}

static void
case_half_close_server(struct suite *su, struct result *r)
{
    half_close(su, r, false);
}

static void
format_sa(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    /* The form sl_listener_local_addr gives for tcp. */
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)ss;

        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const void *)ss;

        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    } else {
        snprintf(buf, len, "?");
    }
}

/* Resolves a numeric "ip:port" (as a tcp base binds) without blocking;
 * false for anything else, such as the name an in-process base gives. */
static bool
ip_addr(const char *addr, struct addrinfo **ai)
{
    char host[128], port[16];
    struct addrinfo hints;

    if (sl_parse_addr(addr, host, sizeof(host), port, sizeof(port)) != 0)
        return false;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    return getaddrinfo(host, port, &hints, ai) == 0;
}

/* The connected TCP socket of this process whose local (server) or peer
 * (client) address is addr, or -1.  Used where SL_Q_FD has no answer: a
 * mux stream is a bufferevent pair with no socket under it. */
static int
find_socket(const char *addr, bool server)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int found = -1;

    if (d == NULL)
        return -1;
    while (found < 0 && (de = readdir(d)) != NULL) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char local[80], peer[80];
        int fd, type;
        socklen_t tl = sizeof(type);

        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        fd = atoi(de->d_name);
        if (fd == dirfd(d) ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 ||
            type != SOCK_STREAM ||
            getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
            continue;
        format_sa(&ss, local, sizeof(local));
        sl = sizeof(ss);
        if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
            continue;
        format_sa(&ss, peer, sizeof(peer));
        if (strcmp(server ? local : peer, addr) == 0)
            found = fd;
    }
    closedir(d);
    return found;
}

/* Resets the socket under e: SO_LINGER {1, 0}, then frees everything that
 * holds it open on e's side, so close(2) sends an RST.  Returns 1 when
 * done, 0 when the base has no socket at all (not an IP address), -1 with
 * the case failed. */
static int
reset_end(struct fixture *fx, struct end *e)
{
    struct linger lg = { 1, 0 };
    struct addrinfo *ai = NULL;
    int fd = -1;
    size_t len = sizeof(fd);

    if (sl_pipe_query(e->p, SL_Q_FD, &fd, &len) != 0 || fd < 0)
        fd = find_socket(fx->addr, e->server);
    if (fd < 0) {
        if (!ip_addr(fx->addr, &ai))
            return 0;
        freeaddrinfo(ai);
        fx_fail(fx, "cannot find the %s's socket: SL_Q_FD has no answer "
                "and no TCP socket has %s as its %s address", end_name(e),
                fx->addr, e->server ? "local" : "peer");
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) != 0) {
        fx_fail(fx, "SO_LINGER on the %s's socket: %s", end_name(e),
                strerror(errno));
        return -1;
    }
    sl_pipe_free(e->p);
    e->p = NULL;
    if (!e->server) {
        /* A stream of a mux stack: the session holds the socket. */
        for (int i = 0; i < fx->nslots; i++) {
            sl_session_free(fx->slots[i].sess);
            fx->slots[i].sess = NULL;
        }
    } else if (fx->su->mux) {
        for (struct srv_sess *ss = fx->ssess; ss != NULL; ss = ss->next) {
            sl_session_free(ss->s);
            ss->s = NULL;
        }
    } else if (fx->su->mux_below) {
        /* The listener owns the session under the stream. */
        sl_listener_free(fx->listener);
        fx->listener = NULL;
    }
    return 1;
}

static bool
got_some(void *arg)
{
    struct end *e = arg;

    return e->rx_done >= 64 * 1024 || e->eof || e->error;
}

static void
case_peer_reset(struct suite *su, struct result *r)
{
    static const struct {
        bool server_resets, writing;
        const char *what;
    } runs[] = {
        { true, true, "server reset, client writing" },
        { true, false, "server reset, client idle" },
        { false, true, "client reset, server writing" },
        { false, false, "client reset, server idle" },
    };
    double worst_ms = 0.0;
    int errors = 0, eofs = 0;

    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        struct fixture *fx = fx_open(su, r, 1, 1);
        struct end *victim, *obs;
        int64_t t0;
        double ms;
        char what[96];
        int reset;

        if (fx == NULL)
            return;
        victim = runs[i].server_resets ? fx->pairs[0].s : fx->pairs[0].c;
        obs = runs[i].server_resets ? fx->pairs[0].c : fx->pairs[0].s;
        if (runs[i].writing) {
            /* Data really flowing when the reset comes. */
            end_streams(obs, seed_for(0, 0), 0);
            end_streams(victim, 0, seed_for(0, 0));
            end_expect(victim, UINT64_MAX);
            end_send(obs, UINT64_MAX);
            if (!wait_for(fx, got_some, victim, 0, "data before the reset"))
                goto next;
        }
        reset = reset_end(fx, victim);
        if (reset == 0) {
            snprintf(r->detail, sizeof(r->detail), "skipped: no socket "
                     "under the pipes, and the base listens on %s, not an "
                     "IP address", fx->addr);
            fx_free(fx);
            return;
        }
        if (reset < 0)
            goto next;
        t0 = now_us();
        snprintf(what, sizeof(what), "EOF or error (%s)", runs[i].what);
        if (!wait_for(fx, end_closed, obs, RESET_WITHIN_MS, what))
            goto next;
        ms = (double)(obs->closed_us - t0) / 1000.0;
        if (ms > worst_ms)
            worst_ms = ms;
        if (obs->error)
            errors++;
        else
            eofs++;
        vlog(su, "%s: %s after %.2f ms", runs[i].what,
             obs->error ? "error" : "EOF", ms);
next:
        fx_free(fx);
        if (r->failed)
            return;
    }
    snprintf(r->detail, sizeof(r->detail), "4 resets (each side, peer "
             "writing or idle): %d errors, %d EOFs, slowest %.2f ms", errors,
             eofs, worst_ms);
}

static void
sample_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fixture *fx = arg;
    uint64_t heap = heap_in_use();

    (void)fd;
    (void)what;
    fx_sample(fx);
    /* Here only: walking the heap costs more than walking two chains. */
    if (heap > fx->heap_peak)
        fx->heap_peak = heap;
}

static void
case_slow_reader(struct suite *su, struct result *r)
{
    struct fixture *fx = fx_open(su, r, 1, 1);
    struct timeval tv = { 0, SAMPLE_MS * 1000 };
    struct end *c, *s;
    uint64_t n = su->bulk_bytes, held, grew;
    char a[32], b[32], d[32], t[32], h[48] = "";

    if (fx == NULL)
        return;
    c = fx->pairs[0].c;
    s = fx->pairs[0].s;
    fx->heap0 = fx->heap_peak = heap_in_use();
    fx->sampler = event_new(su->base, -1, EV_PERSIST, sample_cb, fx);
    if (fx->sampler == NULL || event_add(fx->sampler, &tv) != 0) {
        fx_fail(fx, "cannot start the memory sampler");
        goto out;
    }
    end_streams(c, seed_for(0, 0), 0);
    end_streams(s, 0, seed_for(0, 0));
    end_expect(s, n);
    end_pause(s, true);
    end_send(c, n);
    wait_until(su, r, never, NULL, PAUSE_MS);
    if (r->failed)
        goto out;
    held = c->tx_done;
    vlog(su, "writer held at %" PRIu64 " bytes, peak %" PRIu64, held,
         fx->peak);
    end_pause(s, false);
    if (!wait_for(fx, end_rx_settled, s, 0, "the data after the pause") ||
        !end_verify(s))
        goto out;
    if (fx->peak > su->mem_bound) {
        fx_fail(fx, "%s buffered in the pipes at peak, above the bound of "
                "%s", fmt_size(fx->peak, a, sizeof(a)),
                fmt_size(su->mem_bound, b, sizeof(b)));
        goto out;
    }
    grew = fx->heap_peak - fx->heap0;
    if (grew > su->mem_bound) {
        fx_fail(fx, "the heap grew by %s at peak, above the bound of %s "
                "(buffers outside the pipes, e.g. in a mux session)",
                fmt_size(grew, a, sizeof(a)),
                fmt_size(su->mem_bound, b, sizeof(b)));
        goto out;
    }
    if (fx->heap0 != 0)
        snprintf(h, sizeof(h), ", heap +%s", fmt_size(grew, a, sizeof(a)));
    snprintf(r->detail, sizeof(r->detail), "peak %s buffered%s (bound %s), "
             "writer held at %s during the %d s pause, %s intact",
             fmt_size(fx->peak, t, sizeof(t)), h,
             fmt_size(su->mem_bound, b, sizeof(b)),
             fmt_size(held, d, sizeof(d)), PAUSE_MS / 1000,
             fmt_size(n, a, sizeof(a)));
out:
    fx_free(fx);
}

static bool
slot_called(void *arg)
{
    return ((struct dial_slot *)arg)->calls > 0;
}

/* -1 is one loop turn (EVLOOP_ONCE), 0 at once, else milliseconds. */
static const char *
point_name(int point_ms, char *buf, size_t len)
{
    if (point_ms < 0)
        return "after one loop turn";
    if (point_ms == 0)
        return "at once";
    snprintf(buf, len, "after %d ms", point_ms);
    return buf;
}

/* Dials and cancels at one point; false with r failed on a violation. */
static bool
cancel_dial_at(struct fixture *fx, int point_ms, int *ncancel, int *nwon)
{
    struct suite *su = fx->su;
    struct dial_slot *slot = &fx->slots[fx->nslots];
    struct sl_error e;
    char buf[256];

    slot->fx = fx;
    sl_error_clear(&e);
    if (sl_dialer_dial(fx->dialer, su->base, on_dialed, slot, &slot->op, &e)
        != 0) {
        fx_fail(fx, "dial: %s", sl_error_str(&e, buf, sizeof(buf)));
        return false;
    }
    fx->nslots++;
    if (point_ms == -1)
        loop_once(su);
    else if (point_ms > 0)
        loop_for(su, point_ms);
    if (slot->calls > 0 && !slot->got) {
        fx_fail(fx, "dial failed before the cancel %s: %s",
                point_name(point_ms, buf, sizeof(buf)), slot->errtext);
        return false;
    }
    /* *op is valid only until the callback ran: too late to cancel. */
    if (slot->calls == 0) {
        slot->canceled = true;
        sl_dial_op_cancel(slot->op);
        (*ncancel)++;
    } else {
        (*nwon)++;
    }
    if (!wait_for(fx, slot_called, slot, 0, "the callback after cancel"))
        return false;
    /* Long enough for a second (wrong) callback to show up. */
    loop_for(su, DRAIN_MS);
    if (slot->calls != 1) {
        fx_fail(fx, "the dial callback ran %d times", slot->calls);
        return false;
    }
    if (slot->canceled && slot->err != SL_ECANCELED) {
        fx_fail(fx, "cancel %s: the callback got %s instead of "
                "SL_ECANCELED%s%s", point_name(point_ms, buf, sizeof(buf)),
                slot->got ? "a connection" : sl_strerror(slot->err),
                slot->got ? "" : ": ", slot->got ? "" : slot->errtext);
        return false;
    }
    return true;
}

/* A client under the stack, to leave a handshake half done: a raw TCP
 * socket when the base listens on an IP address, else a dial of the base
 * layer alone (an in-process base has no socket). */
struct raw_client {
    int fd;
    struct sl_dialer *dialer;
    struct sl_pipe *p;
    bool called;
    char errtext[200];
};

static void
raw_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
           void *arg)
{
    struct raw_client *rc = arg;

    rc->called = true;
    rc->p = p;
    sl_session_free(s);   /* a base layer makes pipes; never a session */
    if (err != NULL)
        sl_error_str(err, rc->errtext, sizeof(rc->errtext));
}

static bool
raw_called(void *arg)
{
    return ((struct raw_client *)arg)->called;
}

/* Connects rc to fx's listener and sends junk; false with the case
 * failed. */
static bool
raw_open(struct fixture *fx, struct raw_client *rc, const unsigned char *junk,
         size_t n)
{
    struct addrinfo *ai = NULL;
    struct sl_error e;
    char *text;
    char buf[256];

    if (ip_addr(fx->addr, &ai)) {
        rc->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (rc->fd < 0 || connect(rc->fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
            send(rc->fd, junk, n, MSG_NOSIGNAL) != (ssize_t)n) {
            fx_fail(fx, "raw TCP client to %s: %s", fx->addr,
                    strerror(errno));
            freeaddrinfo(ai);
            return false;
        }
        freeaddrinfo(ai);
        return true;
    }
    text = dial_text(fx->su->base_text, fx->addr, "");
    sl_error_clear(&e);
    rc->dialer = text != NULL ? sl_dialer_parse(text, &e) : NULL;
    free(text);
    if (rc->dialer != NULL &&
        sl_dialer_dial(rc->dialer, fx->su->base, raw_dialed, rc, NULL, &e)
            != 0) {
        sl_dialer_free(rc->dialer);   /* no callback will come */
        rc->dialer = NULL;
    }
    if (rc->dialer == NULL) {
        fx_fail(fx, "dialing the base layer alone: %s",
                sl_error_str(&e, buf, sizeof(buf)));
        return false;
    }
    if (!wait_for(fx, raw_called, rc, 0, "the base layer's dial"))
        return false;
    if (rc->p == NULL) {
        fx_fail(fx, "dialing the base layer alone: %s", rc->errtext);
        return false;
    }
    evbuffer_add(bufferevent_get_output(sl_pipe_get0_bev(rc->p)), junk, n);
    bufferevent_enable(sl_pipe_get0_bev(rc->p), EV_READ | EV_WRITE);
    return true;
}

static void
raw_close(struct suite *su, struct raw_client *rc)
{
    if (rc->fd >= 0)
        close(rc->fd);
    /* A dial still in flight is waited for: it calls back into rc. */
    if (rc->dialer != NULL && !rc->called)
        wait_until(su, NULL, raw_called, rc, TEARDOWN_MS);
    sl_pipe_free(rc->p);
    if (rc->called)
        sl_dialer_free(rc->dialer);
}

/* A raw client sends a few random bytes (a partial handshake); the
 * listener is freed while it waits, and must not call back after. */
static bool
cancel_listener_at(struct suite *su, struct result *r, int point_ms)
{
    struct fixture *fx = fx_new(su, r);
    struct raw_client rc = { .fd = -1 };
    unsigned char junk[RAW_BYTES];
    struct gen g;
    long before;
    bool ok = false;

    if (fx == NULL || r->failed)
        goto out;
    fx->sink = true;
    gen_init(&g, (uint64_t)point_ms + 7);
    gen_fill(&g, junk, sizeof(junk));
    if (!raw_open(fx, &rc, junk, sizeof(junk)))
        goto out;
    if (point_ms == -1)
        loop_once(su);
    else if (point_ms > 0)
        loop_for(su, point_ms);
    before = fx->accepts;
    sl_listener_free(fx->listener);
    fx->listener = NULL;
    loop_for(su, 5 * DRAIN_MS);
    if (fx->accepts != before) {
        char buf[32];

        fx_fail(fx, "the listener called back %ld times after "
                "sl_listener_free (freed %s)", fx->accepts - before,
                point_name(point_ms, buf, sizeof(buf)));
        goto out;
    }
    ok = true;
out:
    raw_close(su, &rc);
    fx_free(fx);
    return ok;
}

static void
case_cancel(struct suite *su, struct result *r)
{
    /* As point_name reads them. */
    static const int dial_points[] = { 0, -1, 1, 5, 20, 100 };
    static const int listen_points[] = { 0, -1, 5, 50 };
    const int ndial = sizeof(dial_points) / sizeof(dial_points[0]);
    const int nlisten = sizeof(listen_points) / sizeof(listen_points[0]);
    struct fixture *fx = fx_new(su, r);
    int ncancel = 0, nwon = 0;

    if (fx == NULL)
        return;
    fx->sink = true;
    for (int i = 0; i < ndial && !r->failed; i++)
        if (!cancel_dial_at(fx, dial_points[i], &ncancel, &nwon))
            break;
    fx_free(fx);
    for (int i = 0; i < nlisten && !r->failed; i++)
        cancel_listener_at(su, r, listen_points[i]);
    snprintf(r->detail, sizeof(r->detail), "dial: %d points, %d cancelled, "
             "%d completed first, one callback each; listener freed "
             "mid-handshake %d times, no late callback", ndial, ncancel,
             nwon, nlisten);
}

static bool
all_clients_settled(void *arg)
{
    struct fixture *fx = arg;

    for (int i = 0; i < fx->npairs; i++)
        if (!end_rx_settled(fx->pairs[i].c))
            return false;
    return true;
}

/* Every pair of fx echoes bytes at once; *us is how long it took. */
static bool
echo_all(struct fixture *fx, uint64_t bytes, int64_t *us)
{
    int64_t t0 = now_us();

    for (int i = 0; i < fx->npairs; i++) {
        struct end *c = fx->pairs[i].c;

        end_echo(fx->pairs[i].s);
        end_streams(c, seed_for(i, 0), seed_for(i, 0));
        end_expect(c, bytes);
        end_send(c, bytes);
    }
    if (!wait_for(fx, all_clients_settled, fx, 0, "every echo"))
        return false;
    for (int i = 0; i < fx->npairs; i++)
        if (!end_verify(fx->pairs[i].c))
            return false;
    *us = now_us() - t0;
    return true;
}

static void
case_many(struct suite *su, struct result *r)
{
    /* On a mux stack, all of them are streams of one session. */
    struct fixture *fx = fx_open(su, r, MANY_CONNS, MANY_CONNS);
    int64_t us = 0;
    char sz[32];

    if (fx == NULL)
        return;
    if (echo_all(fx, su->many_bytes, &us))
        snprintf(r->detail, sizeof(r->detail), "%d %s x %s echoed in %.2f s",
                 MANY_CONNS,
                 su->mux ? "streams on one session" : "connections",
                 fmt_size(su->many_bytes, sz, sizeof(sz)), (double)us / 1e6);
    fx_free(fx);
}

static bool
all_servers_closed(void *arg)
{
    struct fixture *fx = arg;

    for (int i = 0; i < fx->npairs; i++)
        if (!end_closed(fx->pairs[i].s))
            return false;
    return true;
}

static void
case_streams(struct suite *su, struct result *r)
{
    struct fixture *fx = fx_open(su, r, STREAMS_AT_ONCE, STREAMS_AT_ONCE);
    int64_t us = 0;

    if (fx == NULL)
        return;
    if (!echo_all(fx, STREAMS_BYTES, &us))
        goto out;
    for (int i = 0; i < fx->npairs; i++)
        sl_pipe_shutdown_write(fx->pairs[i].c->p);
    if (!wait_for(fx, all_servers_closed, fx, 0, "every stream's end"))
        goto out;
    snprintf(r->detail, sizeof(r->detail), "%d streams opened at once, "
             "1 KiB echoed on each in %.2f s, all ended", STREAMS_AT_ONCE,
             (double)us / 1e6);
out:
    fx_free(fx);
}

static int
count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (isdigit((unsigned char)de->d_name[0]))
            n++;
    closedir(d);
    return n - 1;    /* the directory's own */
}

/* Lets deferred frees run and drops the resolver, so counts compare. */
static void
drain(struct suite *su)
{
    loop_for(su, DRAIN_MS);
    sl_resolver_release(su->base);
}

static void
case_leaks(struct suite *su, struct result *r)
{
    long pipes;
    int fds;

    drain(su);
    pipes = sl_pipe_count();
    fds = count_fds();
    if (pipes != su->pipes0)
        res_fail(r, "%ld pipes alive at the end, %ld at the start", pipes,
                 su->pipes0);
    else if (fds != su->fds0)
        res_fail(r, "%d file descriptors open at the end, %d at the start",
                 fds, su->fds0);
    else
        snprintf(r->detail, sizeof(r->detail), "pipes %ld -> %ld, fds %d -> "
                 "%d", su->pipes0, pipes, su->fds0, fds);
}

/* ---- driver -------------------------------------------------------------- */

typedef void case_fn(struct suite *su, struct result *r);

struct conform_case {
    const char *name;
    case_fn *fn;
    bool mux_only;
    const char *help;
};

static const struct conform_case cases[] = {
    { "echo", case_echo, false,
      "1 B, 1 KiB and 100 KiB round-trip intact" },
    { "bulk-up", case_bulk_up, false,
      "64 MiB client to server, backpressure only" },
    { "bulk-down", case_bulk_down, false,
      "64 MiB server to client" },
    { "bulk-both", case_bulk_both, false,
      "64 MiB each way at the same time" },
    { "half-close-client", case_half_close_client, false,
      "client shuts down writing; EOF after the data, reply still flows" },
    { "half-close-server", case_half_close_server, false,
      "the same with the server shutting down first" },
    { "peer-reset", case_peer_reset, false,
      "RST from either side seen within 5 s by a writing or idle peer" },
    { "slow-reader", case_slow_reader, false,
      "reader pauses 2 s; bytes buffered stay under --mem-bound" },
    { "cancel", case_cancel, false,
      "dials cancelled at 6 points; listener freed mid-handshake" },
    { "many", case_many, false,
      "200 connections (streams) at once, 64 KiB echoed on each" },
    { "streams", case_streams, true,
      "100 streams opened at once on one session (mux stacks only)" },
    { "leaks", case_leaks, false,
      "pipes and file descriptors back to where they started" },
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

static size_t
put_str(char *buf, size_t n, size_t cap, const char *s)
{
    while (*s != '\0' && n < cap)
        buf[n++] = *s++;
    return n;
}

static size_t
put_num(char *buf, size_t n, size_t cap, long v)
{
    char digits[24];
    size_t k = 0;

    do {
        digits[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 && k < sizeof(digits));
    while (k > 0 && n < cap)
        buf[n++] = digits[--k];
    return n;
}

/* The loop itself stopped returning: report and leave.  Only
 * async-signal-safe calls here. */
static void
on_alarm(int sig)
{
    char buf[256];
    size_t n = 0;

    (void)sig;
    n = put_str(buf, n, sizeof(buf), "FAIL ");
    n = put_str(buf, n, sizeof(buf), current_case);
    n = put_str(buf, n, sizeof(buf), ": hard time limit reached\n");
    n = put_num(buf, n, sizeof(buf), npassed);
    n = put_str(buf, n, sizeof(buf), " passed, ");
    n = put_num(buf, n, sizeof(buf), nfailed + 1);
    n = put_str(buf, n, sizeof(buf), " failed\n");
    if (write(STDOUT_FILENO, buf, n) < 0)
        _exit(2);
    _exit(1);
}

static void
run_case(struct suite *su, const struct conform_case *c)
{
    struct result r;
    long pipes = sl_pipe_count();
    int fds;

    drain(su);
    fds = count_fds();
    memset(&r, 0, sizeof(r));
    current_case = c->name;
    su->deadline_ms = sl_now_ms() + su->case_ms;
    c->fn(su, &r);
    if (c->fn != case_leaks && !r.failed) {
        /* Each case cleans up after itself: a leak is its failure. */
        drain(su);
        if (sl_pipe_count() != pipes)
            res_fail(&r, "%ld pipes leaked", sl_pipe_count() - pipes);
        else if (count_fds() != fds)
            res_fail(&r, "%d file descriptors leaked", count_fds() - fds);
    }
    if (r.failed) {
        printf("FAIL %s: %s\n", c->name, r.why);
        nfailed++;
    } else {
        printf("ok %s (%s)\n", c->name, r.detail);
        npassed++;
    }
    current_case = "between cases";
}

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: sillad-conform [-p PLUGIN.so]... [--base STACK] [--quick]\n"
        "                      [--only NAME]... [--list] [--mem-bound SIZE]\n"
        "                      [--timeout SECONDS] [-v] [LAYERS]\n"
        "LAYERS is the stack above the base, e.g. "
        "'sosistab3 cookie=x | picomux';\n"
        "the base defaults to '" DEFAULT_BASE "'.\n");
}

static const struct conform_case *
find_case(const char *name)
{
    for (size_t i = 0; i < NCASES; i++)
        if (strcmp(cases[i].name, name) == 0)
            return &cases[i];
    return NULL;
}

/* Joins argv[from..argc) with spaces, so LAYERS may be one word or many. */
static char *
join_args(int argc, char **argv, int from)
{
    size_t len = 1;
    char *out;

    for (int i = from; i < argc; i++)
        len += strlen(argv[i]) + 1;
    out = malloc(len);
    if (out == NULL)
        return NULL;
    out[0] = '\0';
    for (int i = from; i < argc; i++) {
        if (i > from)
            strcat(out, " ");
        strcat(out, argv[i]);
    }
    return out;
}

/* Parses the listen stack once to learn its shape. */
static int
probe_stack(struct suite *su, struct sl_error *e)
{
    struct sl_stack *s = sl_stack_parse(su->listen_text, e);
    size_t n;

    if (s == NULL)
        return e->code;
    n = sl_stack_len(s);
    su->mux = sl_stack_produces(s) == SL_IO_SESSION;
    su->half_close = true;
    for (size_t i = 0; i < n; i++) {
        const struct sl_layer_ops *ops =
            sl_layer_get0_ops(sl_stack_layer_at(s, i));

        if (!(ops->flags & SL_LF_HALF_CLOSE))
            su->half_close = false;
        if (ops->kind == SL_KIND_MUX && i + 1 < n)
            su->mux_below = true;
    }
    sl_stack_free(s);
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "plugin", required_argument, NULL, 'p' },
        { "base", required_argument, NULL, 'b' },
        { "quick", no_argument, NULL, 'q' },
        { "only", required_argument, NULL, 'o' },
        { "list", no_argument, NULL, 'l' },
        { "mem-bound", required_argument, NULL, 'm' },
        { "timeout", required_argument, NULL, 't' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct suite su;
    struct sl_error e;
    const char *plugins[64];
    const char *only[NCASES];
    const struct conform_case *run[NCASES];
    size_t nplugins = 0, nonly = 0, nrun = 0;
    char *layers = NULL, *probe, buf[512];
    int ch, verbose = 0, list = 0, code = 2;
    int64_t v;

    memset(&su, 0, sizeof(su));
    su.base_text = DEFAULT_BASE;
    su.mem_bound = DEFAULT_MEM_BOUND;
    su.case_ms = DEFAULT_CASE_S * 1000;
    sl_log_set_prefix("sillad-conform");
    while ((ch = getopt_long(argc, argv, "p:vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            if (nplugins == sizeof(plugins) / sizeof(plugins[0])) {
                fprintf(stderr, "sillad-conform: too many -p\n");
                return 2;
            }
            plugins[nplugins++] = optarg;
            break;
        case 'b': su.base_text = optarg; break;
        case 'q': su.quick = true; break;
        case 'o':
            if (find_case(optarg) == NULL) {
                fprintf(stderr, "sillad-conform: no case '%s' (see "
                        "--list)\n", optarg);
                return 2;
            }
            if (nonly < NCASES)
                only[nonly++] = optarg;
            break;
        case 'l': list = 1; break;
        case 'm':
            if (sl_parse_size(optarg, &v) != 0 || v <= 0) {
                fprintf(stderr, "sillad-conform: --mem-bound: '%s' is not "
                        "a size (e.g. 32M)\n", optarg);
                return 2;
            }
            su.mem_bound = (uint64_t)v;
            break;
        case 't':
            if (sl_parse_int(optarg, &v) != 0 || v < 1 || v > 3600) {
                fprintf(stderr, "sillad-conform: --timeout: '%s' is not "
                        "1..3600 seconds\n", optarg);
                return 2;
            }
            su.case_ms = v * 1000;
            break;
        case 'v': verbose++; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (list) {
        for (size_t i = 0; i < NCASES; i++)
            printf("%-18s %s\n", cases[i].name, cases[i].help);
        return 0;
    }
    su.verbose = verbose > 0;
    su.bulk_bytes = su.quick ? BULK_QUICK : BULK_FULL;
    su.many_bytes = su.quick ? MANY_QUICK : MANY_FULL;
    /* Lines reach a pipe in order, also before an alarm's _exit. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    sl_error_clear(&e);
    layers = join_args(argc, argv, optind);
    if (layers == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "out of memory");
        goto fail;
    }
    su.layers_text = layers;
    su.listen_text = malloc(strlen(su.base_text) + strlen(layers) + 4);
    if (su.listen_text == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "out of memory");
        goto fail;
    }
    sprintf(su.listen_text, "%s%s%s", su.base_text, layers[0] ? " | " : "",
            layers);
    /* Checked once here, so the cases can take it for granted. */
    probe = dial_text(su.base_text, "127.0.0.1:1", "");
    if (probe == NULL) {
        sl_error_set(&e, SL_EINVAL, "", "--base '%s': one base layer with "
                     "an addr= option is needed", su.base_text);
        goto fail;
    }
    free(probe);
    for (size_t i = 0; i < nplugins; i++)
        if (sl_loader_load_file(plugins[i], &e) != 0)
            goto fail;
    /* A -p plugin wins over its twin in the path, which is then refused:
     * that is expected, so the refusals are shown only with -v. */
    sl_log_set_level(verbose > 0 ? SL_LOG_WARNING : SL_LOG_ERR);
    sl_loader_load_all(NULL);
    sl_log_set_level(verbose > 1 ? SL_LOG_DEBUG
                     : verbose > 0 ? SL_LOG_INFO : SL_LOG_WARNING);
    if (probe_stack(&su, &e) != 0)
        goto fail;
    su.base = event_base_new();
    if (su.base != NULL) {
        su.wake = evtimer_new(su.base, wake_cb, &su);
        su.tick = event_new(su.base, -1, EV_PERSIST, tick_cb, &su);
    }
    if (su.wake == NULL || su.tick == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "cannot create the event loop");
        goto fail;
    }
    printf("# sillad-conform: %s (%s, %s)\n", su.listen_text,
           su.mux ? "mux: cases run on streams" : "pipe",
           su.half_close ? "half-close" : "no half-close");
    for (size_t i = 0; i < NCASES; i++) {
        bool picked = nonly == 0;

        for (size_t k = 0; k < nonly; k++)
            if (strcmp(only[k], cases[i].name) == 0)
                picked = true;
        if (picked && (!cases[i].mux_only || su.mux))
            run[nrun++] = &cases[i];
        else if (picked && nonly > 0)
            fprintf(stderr, "sillad-conform: %s needs a stack that ends "
                    "in a mux; skipped\n", cases[i].name);
    }
    /* The hard limit: every case's own deadline, plus room to tear down. */
    alarm((unsigned)(nrun * (size_t)(su.case_ms / 1000 + 5) + 30));
    su.pipes0 = sl_pipe_count();
    su.fds0 = count_fds();
    for (size_t i = 0; i < nrun; i++)
        run_case(&su, run[i]);
    alarm(0);
    printf("%ld passed, %ld failed\n", npassed, nfailed);
    code = nfailed == 0 ? 0 : 1;
    goto out;
fail:
    /* Setup failures still end in the summary line harnesses look for. */
    printf("FAIL setup: %s\n0 passed, 1 failed\n",
           sl_error_str(&e, buf, sizeof(buf)));
    code = 1;
out:
    if (su.wake != NULL)
        event_free(su.wake);
    if (su.tick != NULL)
        event_free(su.tick);
    if (su.base != NULL) {
        sl_resolver_release(su.base);
        event_base_free(su.base);
    }
    free(su.listen_text);
    free(layers);
    sl_loader_unload_all();
    return code;
}
