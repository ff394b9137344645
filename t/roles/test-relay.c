/* test-relay.c - roles/relay.c: bytes both ways, backpressure, half-close,
 * idle timeout, errors, and done called exactly once.
 *
 * The relay joins two pipes, "a" and "b".  The test holds the far end of
 * each: X talks to a, Y talks to b.  Three kinds of pipes:
 *
 *   sock     socketpair() ends wrapped with sl_pipe_new (socket
 *            bufferevents; shutdown_write is shutdown(2))
 *   tcp      connections through the tcp layer (bufferevent pairs driven
 *            by the layer, half-close)
 *   picomux  a is a tcp connection, b a picomux stream over tcp (no
 *            half-close: FIN closes the stream both ways)
 *
 * Every wait is bounded.  The tcp and picomux plugins come from
 * SILLAD_PLUGIN_PATH.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "../cu.h"
#include "relay.h"
#include "sillad.h"

#define WAIT_MS 10000
#define CHUNK 65536
#define WRITER_HIGH (256 * 1024)

static struct event_base *base;
static struct event *tick_ev;

/* ---- bounded loop ------------------------------------------------------- */

typedef bool cond_fn(void *arg);
static cond_fn *tick_cond;
static void *tick_arg;
static int64_t tick_deadline;

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if ((tick_cond != NULL && tick_cond(tick_arg)) ||
        sl_now_ms() >= tick_deadline)
        event_base_loopbreak(base);
}

/* Runs the loop until cond(arg) or ms pass; returns cond(arg).  Checked
 * from a timer: under steady pair flow EVLOOP_ONCE may never return. */
static bool
run_until(cond_fn *cond, void *arg, int64_t ms)
{
    static const struct timeval tv = { 0, 1000 };

    tick_cond = cond;
    tick_arg = arg;
    tick_deadline = sl_now_ms() + ms;
    evtimer_add(tick_ev, &tv);
    while (!(cond != NULL && cond(arg)) && sl_now_ms() < tick_deadline)
        event_base_loop(base, 0);
    evtimer_del(tick_ev);
    tick_cond = NULL;
    return cond != NULL && cond(arg);
}

static void
run_for(int64_t ms)
{
    run_until(NULL, NULL, ms);
}

/* ---- pipes -------------------------------------------------------------- */

enum mode { M_SOCK, M_TCP, M_PICOMUX };
static const char *const mode_name[] = { "sock", "tcp", "picomux" };

static int
sock_shutdown(void *layer_ctx, struct sl_pipe *p)
{
    (void)layer_ctx;
    if (shutdown(bufferevent_getfd(sl_pipe_get0_bev(p)), SHUT_WR) != 0)
        return SL_ESYS;
    return 0;
}

static const struct sl_pipe_ops sock_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = sock_shutdown,
};

static void
sock_pair(struct sl_pipe **mine, struct sl_pipe **theirs)
{
    int sv[2];

    CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    evutil_make_socket_nonblocking(sv[0]);
    evutil_make_socket_nonblocking(sv[1]);
    *mine = sl_pipe_new("sock", bufferevent_socket_new(base, sv[0],
                                                       BEV_OPT_CLOSE_ON_FREE),
                        NULL, &sock_ops, NULL);
    *theirs = sl_pipe_new("sock", bufferevent_socket_new(base, sv[1],
                                                         BEV_OPT_CLOSE_ON_FREE),
                          NULL, &sock_ops, NULL);
    CU_ASSERT_FATAL(*mine != NULL && *theirs != NULL);
}

/* What a listener or a dial handed us. */
struct got {
    struct sl_pipe *p;
    struct sl_session *s;
    struct sl_pipe *stream;     /* a stream the peer opened on s */
    int fails;
};

static void
got_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
           size_t len, void *arg)
{
    struct got *g = arg;

    (void)s;
    (void)meta;
    (void)len;
    if (g->stream != NULL) {
        sl_pipe_free(stream);
        return;
    }
    g->stream = stream;
}

static void
got_conn(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
         void *arg)
{
    struct got *g = arg;

    if (err != NULL) {
        g->fails++;
        return;
    }
    g->p = p;
    g->s = s;
    if (s != NULL)
        sl_session_setcb(s, got_stream, NULL, g);
}

static bool
got_pipe(void *arg)
{
    struct got *g = arg;

    return g->p != NULL || g->s != NULL || g->fails > 0;
}

static bool
got_both(void *arg)
{
    struct got *g = arg;

    return got_pipe(&g[0]) && got_pipe(&g[1]);
}

static bool
got_has_stream(void *arg)
{
    return ((struct got *)arg)->stream != NULL;
}

/* A connection through `stack` (tcp, or tcp|picomux): *dialed and
 * *accepted are its two ends; with a mux, a stream opened on the dialed
 * session and the accepted session stay in *sessions. */
static void
stack_pair(const char *stack, struct sl_pipe **dialed, struct sl_pipe **accepted,
           struct sl_session **sessions)
{
    struct sl_error e;
    struct sl_stack *ls;
    struct sl_listener *l;
    struct sl_dialer *d;
    struct got g[2];
    char addr[128], text[256];

    memset(g, 0, sizeof(g));
    sl_error_clear(&e);
    snprintf(text, sizeof(text), "tcp addr=127.0.0.1:0%s", stack);
    ls = sl_stack_parse(text, &e);
    CU_ASSERT_FATAL(ls != NULL);
    l = sl_listener_new(ls, base, got_conn, &g[1], &e);
    CU_ASSERT_FATAL(l != NULL);
    CU_ASSERT_FATAL(sl_listener_local_addr(l, addr, sizeof(addr)) == 0);
    snprintf(text, sizeof(text), "tcp addr=%s%s", addr, stack);
    d = sl_dialer_parse(text, &e);
    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT_FATAL(sl_dialer_dial(d, base, got_conn, &g[0], NULL, &e) == 0);
    CU_ASSERT_FATAL(run_until(got_both, g, WAIT_MS));
    sl_listener_free(l);
    sl_stack_free(ls);
    sl_dialer_free(d);
    CU_ASSERT_FATAL(g[0].fails == 0 && g[1].fails == 0);
    if (g[0].s == NULL) {
        *dialed = g[0].p;
        *accepted = g[1].p;
        sessions[0] = sessions[1] = NULL;
        return;
    }
    sessions[0] = g[0].s;
    sessions[1] = g[1].s;
    CU_ASSERT_FATAL(sl_session_open(g[0].s, "t", 1, dialed, &e) == 0);
    /* The SYN goes out with the first data or at once; either way the
     * peer's on_stream runs. */
    bufferevent_enable(sl_pipe_get0_bev(*dialed), EV_READ | EV_WRITE);
    CU_ASSERT_FATAL(run_until(got_has_stream, &g[1], WAIT_MS));
    sl_session_setcb(g[1].s, NULL, NULL, NULL);
    *accepted = g[1].stream;
}

/* ---- the test's ends ---------------------------------------------------- */

/* One far end: writes a pattern, reads and checks one. */
struct end {
    struct sl_pipe *p;
    uint64_t to_send, sent;     /* bytes handed to the pipe */
    uint8_t send_seed, recv_seed;
    uint64_t received;
    bool bad_data;
    bool eof, error;
    bool stall;                 /* do not read */
    bool shut_when_sent;
};

static uint8_t
pattern(uint8_t seed, uint64_t off)
{
    return (uint8_t)((off * 131u + (off >> 11) + seed) & 0xff);
}

static void end_fill(struct end *x);

static void
end_readcb(struct bufferevent *bev, void *arg)
{
    struct end *x = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned char buf[CHUNK];
    int n;

    if (x->stall)
        return;
    while ((n = evbuffer_remove(in, buf, sizeof(buf))) > 0) {
        for (int i = 0; i < n; i++)
            if (buf[i] != pattern(x->recv_seed, x->received + (uint64_t)i))
                x->bad_data = true;
        x->received += (uint64_t)n;
    }
}

static void
end_writecb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    end_fill(arg);
}

static void
end_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct end *x = arg;

    if (what & BEV_EVENT_ERROR) {
        x->error = true;
        return;
    }
    if (what & BEV_EVENT_EOF) {
        end_readcb(bev, arg);
        x->eof = true;
    }
}

static void
end_fill(struct end *x)
{
    struct evbuffer *out;
    unsigned char buf[CHUNK];

    if (x->p == NULL || x->error)
        return;
    out = bufferevent_get_output(sl_pipe_get0_bev(x->p));
    while (x->sent < x->to_send && evbuffer_get_length(out) < WRITER_HIGH) {
        size_t n = x->to_send - x->sent < CHUNK ? x->to_send - x->sent
                                                : CHUNK;

        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(x->send_seed, x->sent + i);
        evbuffer_add(out, buf, n);
        x->sent += n;
    }
    if (x->sent == x->to_send && x->shut_when_sent &&
        !sl_pipe_write_shut(x->p))
        sl_pipe_shutdown_write(x->p);
}

static void
end_start(struct end *x, struct sl_pipe *p, uint8_t send_seed,
          uint8_t recv_seed)
{
    memset(x, 0, sizeof(*x));
    x->p = p;
    x->send_seed = send_seed;
    x->recv_seed = recv_seed;
    bufferevent_setwatermark(sl_pipe_get0_bev(p), EV_WRITE, WRITER_HIGH / 2,
                             0);
    sl_pipe_setcb(p, end_readcb, end_writecb, end_eventcb, x);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static void
end_send(struct end *x, uint64_t n, bool then_shut)
{
    x->to_send += n;
    x->shut_when_sent = then_shut;
    end_fill(x);
}

/* ---- a relay under test ------------------------------------------------- */

struct fixture {
    enum mode mode;
    struct sl_pipe *a, *b;          /* handed to the relay */
    struct sl_session *sess[4];
    struct end x, y;                /* x talks to a, y to b */
    struct relay *r;
    int done_calls;
    char why[256];
    struct relay_stats st;
    long pipes_before;
};

static void
on_done(void *arg, const struct relay_stats *st, const char *why)
{
    struct fixture *f = arg;

    f->done_calls++;
    f->st = *st;
    snprintf(f->why, sizeof(f->why), "%s", why);
    f->r = NULL;
}

static void
fixture_pipes(struct fixture *f, enum mode m)
{
    struct sl_pipe *xp = NULL, *yp = NULL;

    memset(f, 0, sizeof(*f));
    f->mode = m;
    f->pipes_before = sl_pipe_count();
    switch (m) {
    case M_SOCK:
        sock_pair(&f->a, &xp);
        sock_pair(&f->b, &yp);
        break;
    case M_TCP:
        stack_pair("", &xp, &f->a, f->sess);
        stack_pair("", &yp, &f->b, f->sess + 2);
        break;
    case M_PICOMUX:
        stack_pair("", &xp, &f->a, f->sess);
        stack_pair(" | picomux", &yp, &f->b, f->sess + 2);
        break;
    }
    end_start(&f->x, xp, 1, 2);
    end_start(&f->y, yp, 2, 1);
}

static void
fixture_start(struct fixture *f, enum mode m, int idle_ms)
{
    fixture_pipes(f, m);
    f->r = relay_new(base, f->a, f->b, idle_ms, on_done, f);
    CU_ASSERT_FATAL(f->r != NULL);
}

static bool
fixture_done(void *arg)
{
    return ((struct fixture *)arg)->done_calls > 0;
}

static bool
fixture_closed(void *arg)
{
    (void)arg;
    return relay_closing() == 0;
}

/* Frees everything and checks that no pipe leaked. */
static void
fixture_end(struct fixture *f)
{
    relay_free(f->r);
    f->r = NULL;
    /* Our ends go first: a lingering close ends with its peer's end. */
    sl_pipe_free(f->x.p);
    sl_pipe_free(f->y.p);
    f->x.p = f->y.p = NULL;
    CU_ASSERT(run_until(fixture_closed, NULL, WAIT_MS));
    for (int i = 0; i < 4; i++)
        sl_session_free(f->sess[i]);
    run_for(5);
    CU_ASSERT_EQUAL(sl_pipe_count(), f->pipes_before);
}

/* ---- tests -------------------------------------------------------------- */

struct both {
    struct fixture *f;
    uint64_t n;
};

static bool
both_received(void *arg)
{
    struct both *b = arg;

    return b->f->x.received >= b->n && b->f->y.received >= b->n;
}

static void
both_ways(enum mode m)
{
    struct fixture f;
    struct both b = { &f, 4u << 20 };

    fixture_start(&f, m, 0);
    end_send(&f.x, b.n, false);
    end_send(&f.y, b.n, false);
    CU_ASSERT(run_until(both_received, &b, WAIT_MS));
    CU_ASSERT_EQUAL(f.x.received, b.n);
    CU_ASSERT_EQUAL(f.y.received, b.n);
    CU_ASSERT(!f.x.bad_data && !f.y.bad_data);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    /* Both end their send direction: the relay finishes. */
    sl_pipe_shutdown_write(f.x.p);
    sl_pipe_shutdown_write(f.y.p);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT_EQUAL(f.done_calls, 1);
    CU_ASSERT_STRING_EQUAL(f.why, "done");
    CU_ASSERT_EQUAL(f.st.a_to_b, b.n);
    CU_ASSERT_EQUAL(f.st.b_to_a, b.n);
    run_for(50);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fixture_end(&f);
}

static void test_both_ways_sock(void) { both_ways(M_SOCK); }
static void test_both_ways_tcp(void) { both_ways(M_TCP); }
static void test_both_ways_picomux(void) { both_ways(M_PICOMUX); }

struct progress {
    struct end *x;
    uint64_t last;
    int64_t since;
};

/* True once x has sent nothing new for 300 ms. */
static bool
stalled(void *arg)
{
    struct progress *pr = arg;
    uint64_t left = pr->x->sent - evbuffer_get_length(bufferevent_get_output(
                                      sl_pipe_get0_bev(pr->x->p)));

    if (left != pr->last) {
        pr->last = left;
        pr->since = sl_now_ms();
        return false;
    }
    return sl_now_ms() - pr->since >= 300;
}

static bool
y_has_all(void *arg)
{
    struct fixture *f = arg;

    return f->y.received >= f->x.to_send || f->y.error || f->y.eof;
}

/* Bytes the tunnel holds in user space between x and y: a's input and
 * b's output, and the layers' ends of their pairs (what a's layer read
 * and has not handed over, what b's layer took and has not sent). */
static size_t
tunnel_held(struct fixture *f)
{
    struct bufferevent *a = sl_pipe_get0_bev(f->a);
    struct bufferevent *b = sl_pipe_get0_bev(f->b);
    struct bufferevent *pa = bufferevent_pair_get_partner(a);
    struct bufferevent *pb = bufferevent_pair_get_partner(b);
    size_t n = evbuffer_get_length(bufferevent_get_input(a)) +
               evbuffer_get_length(bufferevent_get_output(b));

    if (pa != NULL)
        n += evbuffer_get_length(bufferevent_get_output(pa));
    if (pb != NULL)
        n += evbuffer_get_length(bufferevent_get_input(pb));
    return n;
}

/* A reader that stops: the relay stops reading its other side, so what
 * sits in the relay's buffers stays bounded; then everything arrives. */
static void
backpressure(enum mode m)
{
    struct fixture f;
    struct progress pr;
    size_t queued;

    fixture_start(&f, m, 0);
    f.y.stall = true;
    bufferevent_disable(sl_pipe_get0_bev(f.y.p), EV_READ);
    end_send(&f.x, 64u << 20, false);
    memset(&pr, 0, sizeof(pr));
    pr.x = &f.x;
    pr.since = sl_now_ms();
    CU_ASSERT(run_until(stalled, &pr, WAIT_MS));
    /* The relay's own buffer towards b is bounded by RELAY_HIGH plus one
     * read's worth. */
    queued = evbuffer_get_length(bufferevent_get_output(sl_pipe_get0_bev(f.b)));
    CU_ASSERT(queued <= RELAY_HIGH + 1024 * 1024);
    /* And so is all the tunnel holds in user space, the layers' ends of
     * the pairs included: the rest waits in the kernel (a window towards
     * b, a window in a's input just moved, one staged read). */
    queued = tunnel_held(&f);
    CU_ASSERT(queued <= 2 * RELAY_HIGH + 64 * 1024);
    if (queued > 2 * RELAY_HIGH + 64 * 1024)
        fprintf(stderr, "\n  %s: the tunnel holds %zu bytes while stalled\n",
                mode_name[m], queued);
    /* And the writer is held back: far from all 64 MiB left it. */
    CU_ASSERT(pr.last < 16u << 20);
    if (pr.last >= 16u << 20)
        fprintf(stderr, "\n  %s: %llu bytes left the writer while stalled\n",
                mode_name[m], (unsigned long long)pr.last);
    f.y.stall = false;
    bufferevent_enable(sl_pipe_get0_bev(f.y.p), EV_READ);
    end_readcb(sl_pipe_get0_bev(f.y.p), &f.y);
    CU_ASSERT(run_until(y_has_all, &f, 4 * WAIT_MS));
    CU_ASSERT_EQUAL(f.y.received, 64u << 20);
    CU_ASSERT(!f.y.bad_data);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    fixture_end(&f);
    CU_ASSERT_EQUAL(f.done_calls, 0);   /* relay_free does not call it */
}

static void test_backpressure_sock(void) { backpressure(M_SOCK); }
static void test_backpressure_tcp(void) { backpressure(M_TCP); }
static void test_backpressure_picomux(void) { backpressure(M_PICOMUX); }

/* ---- a slow reader ---- */

#define SLOW_TICK_MS 10
#define SLOW_BYTES 4096      /* per tick: 400 KB/s */

struct slowr {
    struct fixture *f;
    int64_t measure_from;
    size_t max_held;
    uint64_t ticks;
};

/* y takes at most SLOW_BYTES per tick; after the warm-up, the most the
 * tunnel held is noted. */
static void
slowr_tick(evutil_socket_t fd, short what, void *arg)
{
    struct slowr *sw = arg;
    struct end *y = &sw->f->y;
    struct evbuffer *in = bufferevent_get_input(sl_pipe_get0_bev(y->p));
    unsigned char buf[SLOW_BYTES];
    int n;

    (void)fd;
    (void)what;
    n = evbuffer_remove(in, buf, sizeof(buf));
    for (int i = 0; i < n; i++)
        if (buf[i] != pattern(y->recv_seed, y->received + (uint64_t)i))
            y->bad_data = true;
    if (n > 0)
        y->received += (uint64_t)n;
    sw->ticks++;
    if (sl_now_ms() >= sw->measure_from) {
        size_t held = tunnel_held(sw->f);

        if (held > sw->max_held)
            sw->max_held = held;
    }
}

static void
small_socket_buffer(struct sl_pipe *p, int opt)
{
    int fd, size = 4096;
    size_t len = sizeof(fd);

    CU_ASSERT_FATAL(sl_pipe_query(p, SL_Q_FD, &fd, &len) == 0);
    CU_ASSERT(setsockopt(fd, SOL_SOCKET, opt, &size, sizeof(size)) == 0);
}

/* A tunnel whose reader is slow holds little: its window falls to
 * RELAY_MIN once the kernel's buffers are full, although its writer
 * could go much faster. */
static void
test_slow_reader_small_window(void)
{
    struct fixture f;
    struct slowr sw;
    struct event *ev;
    struct timeval tv = { 0, SLOW_TICK_MS * 1000 };
    struct bufferevent *ybev;

    fixture_start(&f, M_TCP, 0);
    small_socket_buffer(f.b, SO_SNDBUF);
    small_socket_buffer(f.y.p, SO_RCVBUF);
    ybev = sl_pipe_get0_bev(f.y.p);
    /* y's reads come from the timer alone; its input stays small. */
    f.y.stall = true;
    bufferevent_setwatermark(ybev, EV_READ, 0, SLOW_BYTES);
    memset(&sw, 0, sizeof(sw));
    sw.f = &f;
    sw.measure_from = sl_now_ms() + 1500;
    ev = event_new(base, -1, EV_PERSIST, slowr_tick, &sw);
    CU_ASSERT_FATAL(ev != NULL);
    event_add(ev, &tv);
    end_send(&f.x, 64u << 20, false);
    run_for(2500);
    event_free(ev);
    CU_ASSERT(sw.ticks > 0);
    CU_ASSERT(f.y.received > 0);
    CU_ASSERT(!f.y.bad_data);
    /* A window towards b, one just moved from a's input, a staged read. */
    CU_ASSERT(sw.max_held <= 2 * RELAY_MIN + 16 * 1024);
    if (sw.max_held > 2 * RELAY_MIN + 16 * 1024)
        fprintf(stderr, "\n  slow reader: the tunnel held up to %zu bytes\n",
                sw.max_held);
    /* Far from all 64 MiB left the writer. */
    CU_ASSERT(f.x.sent - evbuffer_get_length(bufferevent_get_output(
                             sl_pipe_get0_bev(f.x.p))) < 16u << 20);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    fixture_end(&f);
}

static bool
y_eof(void *arg)
{
    struct fixture *f = arg;

    return f->y.eof || f->y.error;
}

static bool
x_eof(void *arg)
{
    struct fixture *f = arg;

    return f->x.eof || f->x.error;
}

/* X sends and ends; Y sees the data then EOF, then answers after the EOF
 * and X gets the answer (half-close carried through). */
static void
half_close(enum mode m)
{
    struct fixture f;

    fixture_start(&f, m, 0);
    end_send(&f.x, 300000, true);
    CU_ASSERT(run_until(y_eof, &f, WAIT_MS));
    CU_ASSERT(f.y.eof && !f.y.error);
    CU_ASSERT_EQUAL(f.y.received, 300000);
    CU_ASSERT(!f.y.bad_data);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    end_send(&f.y, 200000, true);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    CU_ASSERT_EQUAL(f.x.received, 200000);
    CU_ASSERT(!f.x.bad_data && !f.x.error);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    CU_ASSERT_STRING_EQUAL(f.why, "done");
    CU_ASSERT_EQUAL(f.st.a_to_b, 300000);
    CU_ASSERT_EQUAL(f.st.b_to_a, 200000);
    fixture_end(&f);
}

static void test_half_close_sock(void) { half_close(M_SOCK); }
static void test_half_close_tcp(void) { half_close(M_TCP); }

/* b is a picomux stream: no half-close.  X's end (after its data) ends
 * the relay; Y gets the data, then EOF; X gets EOF too. */
static void
test_no_half_close_picomux(void)
{
    struct fixture f;

    fixture_start(&f, M_PICOMUX, 0);
    end_send(&f.x, 300000, true);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT(run_until(y_eof, &f, WAIT_MS));
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    CU_ASSERT_EQUAL(f.y.received, 300000);
    CU_ASSERT(!f.y.bad_data);
    CU_ASSERT_STRING_EQUAL(f.why, "done");
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fixture_end(&f);
}

/* The stream's end (FIN from Y's side) ends the relay the other way. */
static void
test_no_half_close_picomux_reverse(void)
{
    struct fixture f;

    fixture_start(&f, M_PICOMUX, 0);
    end_send(&f.y, 300000, true);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    CU_ASSERT_EQUAL(f.x.received, 300000);
    CU_ASSERT(!f.x.bad_data);
    CU_ASSERT_STRING_EQUAL(f.why, "done");
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fixture_end(&f);
}

/* The stream ends while X is still sending: the relay is done and closes
 * a, yet X gets every byte and a clean EOF.  A socket closed with unread
 * input answers with a reset, which would throw away what X had not read
 * yet: the close keeps reading (and dropping) until X ends too. */
static void
test_close_while_peer_sends(void)
{
    struct fixture f;

    fixture_start(&f, M_PICOMUX, 0);
    end_send(&f.x, 1u << 30, false);
    end_send(&f.y, 4u << 20, true);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    CU_ASSERT(!f.x.error);
    CU_ASSERT_EQUAL(f.x.received, 4u << 20);
    CU_ASSERT(!f.x.bad_data);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    /* X stops sending and ends: the lingering close ends with it. */
    f.x.to_send = f.x.sent;
    sl_pipe_shutdown_write(f.x.p);
    CU_ASSERT(run_until(fixture_closed, NULL, WAIT_MS));
    fixture_end(&f);
}

/* Reads at most max bytes of x's input, checking them. */
static void
end_read_some(struct end *x, size_t max)
{
    struct evbuffer *in = bufferevent_get_input(sl_pipe_get0_bev(x->p));
    unsigned char buf[CHUNK];
    int n;

    if (max > sizeof(buf))
        max = sizeof(buf);
    n = evbuffer_remove(in, buf, max);
    for (int i = 0; i < n; i++)
        if (buf[i] != pattern(x->recv_seed, x->received + (uint64_t)i))
            x->bad_data = true;
    if (n > 0)
        x->received += (uint64_t)n;
}

/* The stream side ends while the tcp side's reader is slow: the relay is
 * done while much is still on its way, and every byte still reaches X
 * before its EOF (the close of the tcp pipe lingers until the layer has
 * sent everything, not just until the pipe's own buffer is empty). */
static void
test_close_delivers_everything(void)
{
    struct fixture f;
    int64_t deadline = sl_now_ms() + 4 * WAIT_MS;
    uint64_t total = 1u << 20, at_done = 0;

    fixture_start(&f, M_PICOMUX, 0);
    /* Small socket buffers, so that the tail waits in the layer, not in
     * the kernel (which would send it even after close). */
    {
        int fd = -1, small = 16384;
        size_t len = sizeof(fd);

        CU_ASSERT_FATAL(sl_pipe_query(f.a, SL_Q_FD, &fd, &len) == 0);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
        len = sizeof(fd);
        CU_ASSERT_FATAL(sl_pipe_query(f.x.p, SL_Q_FD, &fd, &len) == 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    }
    f.x.stall = true;           /* read by hand below, slowly */
    end_send(&f.y, total, true);
    while (sl_now_ms() < deadline &&
           !(f.x.received >= total && (f.x.eof || f.x.error))) {
        run_for(2);
        end_read_some(&f.x, 16384);
        if (f.done_calls > 0 && at_done == 0)
            at_done = f.x.received + 1;
    }
    if (f.done_calls != 1 || f.x.received != total)
        fprintf(stderr, "\n  done %d (%s), X got %llu of %llu, eof %d, "
                "error %d, Y sent %llu, Y error %d\n", f.done_calls, f.why,
                (unsigned long long)f.x.received, (unsigned long long)total,
                f.x.eof, f.x.error, (unsigned long long)f.y.sent, f.y.error);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    CU_ASSERT_STRING_EQUAL(f.why, "done");
    CU_ASSERT_EQUAL(f.st.b_to_a, total);
    /* The relay was done well before X had everything. */
    CU_ASSERT(at_done > 0 && at_done < total);
    CU_ASSERT_EQUAL(f.x.received, total);
    CU_ASSERT(f.x.eof && !f.x.error && !f.x.bad_data);
    /* X's own end finishes the lingering close. */
    sl_pipe_shutdown_write(f.x.p);
    CU_ASSERT(run_until(fixture_closed, NULL, WAIT_MS));
    fixture_end(&f);
}

/* relay_closing_abort frees lingering pipes at once. */
static void
test_closing_abort(void)
{
    struct fixture f;

    fixture_start(&f, M_PICOMUX, 0);
    end_send(&f.y, 1000, true);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    run_for(50);
    CU_ASSERT(relay_closing() > 0);     /* X has not ended its side */
    relay_closing_abort();
    CU_ASSERT_EQUAL(relay_closing(), 0);
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    fixture_end(&f);
}

/* Nothing moves: done("idle") after about idle_ms, both far ends see the
 * connection end. */
static void
idle(enum mode m)
{
    struct fixture f;
    int64_t t0;

    fixture_start(&f, m, 300);
    end_send(&f.x, 1000, false);
    t0 = sl_now_ms();
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT(sl_now_ms() - t0 >= 250);
    CU_ASSERT_STRING_EQUAL(f.why, "idle");
    CU_ASSERT_EQUAL(f.y.received, 1000);
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    CU_ASSERT(run_until(y_eof, &f, WAIT_MS));
    run_for(50);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fixture_end(&f);
}

static void test_idle_sock(void) { idle(M_SOCK); }
static void test_idle_tcp(void) { idle(M_TCP); }

/* Traffic keeps an idle timer from firing. */
static void
test_idle_not_while_busy(void)
{
    struct fixture f;

    fixture_start(&f, M_TCP, 300);
    for (int i = 0; i < 10; i++) {
        end_send(&f.x, 100, false);
        run_for(100);
    }
    CU_ASSERT_EQUAL(f.done_calls, 0);
    CU_ASSERT_EQUAL(f.y.received, 1000);
    fixture_end(&f);
}

/* Y's connection is reset: the relay reports b's error, closes a, and
 * calls done once. */
static void
test_error_closes_both(void)
{
    struct fixture f;
    struct linger lg = { 1, 0 };
    int fd = -1;
    size_t len = sizeof(fd);

    fixture_start(&f, M_TCP, 0);
    end_send(&f.x, 1000, false);
    end_send(&f.y, 1000, false);
    run_for(100);
    CU_ASSERT_EQUAL(f.y.received, 1000);
    /* A reset: SO_LINGER 0, then close. */
    CU_ASSERT_FATAL(sl_pipe_query(f.y.p, SL_Q_FD, &fd, &len) == 0);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    sl_pipe_free(f.y.p);
    f.y.p = NULL;
    /* Writing towards the reset connection brings the error out. */
    end_send(&f.x, 1u << 20, false);
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    CU_ASSERT(strncmp(f.why, "b: ", 3) == 0);
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    run_for(50);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fixture_end(&f);
}

/* An error on one side while the other is stalled still ends it all. */
static void
test_error_while_stalled(void)
{
    struct fixture f;

    fixture_start(&f, M_SOCK, 0);
    f.y.stall = true;
    bufferevent_disable(sl_pipe_get0_bev(f.y.p), EV_READ);
    end_send(&f.x, 8u << 20, false);
    run_for(200);
    /* Y vanishes without reading: a's writes to b fail or b sees EOF;
     * either way the relay ends once. */
    sl_pipe_free(f.y.p);
    f.y.p = NULL;
    CU_ASSERT(run_until(fixture_done, &f, WAIT_MS));
    run_for(50);
    CU_ASSERT_EQUAL(f.done_calls, 1);
    fixture_end(&f);
}

/* relay_free closes both at once and never calls done. */
static void
test_free_no_done(void)
{
    struct fixture f;

    fixture_start(&f, M_TCP, 100);
    end_send(&f.x, 5000, false);
    run_for(20);
    relay_free(f.r);
    f.r = NULL;
    CU_ASSERT(run_until(x_eof, &f, WAIT_MS));
    CU_ASSERT(run_until(y_eof, &f, WAIT_MS));
    run_for(300);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    fixture_end(&f);
}

/* Bytes already in a's input when the relay starts are relayed (a
 * handshake can leave some; no new read callback announces them). */
static bool
a_has_input(void *arg)
{
    struct fixture *f = arg;

    return evbuffer_get_length(bufferevent_get_input(
               sl_pipe_get0_bev(f->a))) == 1000;
}

static bool
y_has_1000(void *arg)
{
    return ((struct fixture *)arg)->y.received >= 1000;
}

static void
test_waiting_input(void)
{
    struct fixture f;

    fixture_pipes(&f, M_TCP);
    end_send(&f.x, 1000, false);
    bufferevent_enable(sl_pipe_get0_bev(f.a), EV_READ);
    CU_ASSERT(run_until(a_has_input, &f, WAIT_MS));
    f.r = relay_new(base, f.a, f.b, 0, on_done, &f);
    CU_ASSERT_FATAL(f.r != NULL);
    CU_ASSERT(run_until(y_has_1000, &f, WAIT_MS));
    CU_ASSERT_EQUAL(f.y.received, 1000);
    CU_ASSERT(!f.y.bad_data);
    CU_ASSERT_EQUAL(f.done_calls, 0);
    fixture_end(&f);
}

/* ---- graceful close of a slowly drained backlog -------------------------
 *
 * The relay ends by closing each side gracefully (sl_pipe_close, bounded
 * by RELAY_CLOSE_MS).  Over a mux the backlog of one stream may drain far
 * slower than that bound while it still moves (many streams share the
 * bandwidth); the bound must cut off only a close that stopped moving.
 * Here a pair's far end takes SLOW_STEP bytes every SLOW_TICK_MS: the
 * whole backlog needs ~10 times the close timeout, every step well
 * within it. */

#define SLOW_TOTAL (128 * 1024)
#define SLOW_STEP 4096
#define SLOW_CLOSE_MS 40

struct slow {
    struct bufferevent *far;
    struct event *tick;
    size_t received;
    bool bad_data;
    bool closed;
};

static void
slow_tick(evutil_socket_t fd, short what, void *arg)
{
    struct slow *s = arg;
    struct evbuffer *in = bufferevent_get_input(s->far);
    unsigned char buf[SLOW_STEP];
    size_t n = evbuffer_remove(in, buf, sizeof(buf));

    (void)fd;
    (void)what;
    for (size_t i = 0; i < n; i++)
        if (buf[i] != (unsigned char)((s->received + i) % 251))
            s->bad_data = true;
    s->received += n;
}

static void
slow_closed(void *arg)
{
    ((struct slow *)arg)->closed = true;
}

static bool
slow_finished(void *arg)
{
    struct slow *s = arg;

    return s->closed && evbuffer_get_length(
                            bufferevent_get_input(s->far)) == 0;
}

static void
test_close_slow_backlog(void)
{
    static const struct timeval tv = { 0, SLOW_TICK_MS * 1000 };
    struct bufferevent *pair[2];
    struct sl_pipe *p;
    struct slow s;
    unsigned char *data = malloc(SLOW_TOTAL);
    long pipes = sl_pipe_count();

    CU_ASSERT_FATAL(data != NULL);
    memset(&s, 0, sizeof(s));
    for (size_t i = 0; i < SLOW_TOTAL; i++)
        data[i] = (unsigned char)(i % 251);
    CU_ASSERT_FATAL(bufferevent_pair_new(base, 0, pair) == 0);
    s.far = pair[1];
    /* The far end holds at most one step: the rest waits in p's output. */
    bufferevent_setwatermark(s.far, EV_READ, 0, SLOW_STEP);
    bufferevent_enable(s.far, EV_READ | EV_WRITE);
    p = sl_pipe_new("test", pair[0], NULL, NULL, NULL);
    CU_ASSERT_FATAL(p != NULL);
    bufferevent_enable(pair[0], EV_READ | EV_WRITE);
    bufferevent_write(pair[0], data, SLOW_TOTAL);
    free(data);
    s.tick = event_new(base, -1, EV_PERSIST, slow_tick, &s);
    CU_ASSERT_FATAL(s.tick != NULL);
    evtimer_add(s.tick, &tv);
    sl_pipe_close(p, SLOW_CLOSE_MS, slow_closed, &s);
    /* Bounded: the backlog needs ~320 ms at this pace. */
    CU_ASSERT(run_until(slow_finished, &s, WAIT_MS));
    slow_tick(-1, 0, &s);
    CU_ASSERT_EQUAL(s.received, SLOW_TOTAL);
    CU_ASSERT(!s.bad_data);
    CU_ASSERT(s.closed);
    CU_ASSERT_EQUAL(sl_pipe_count(), pipes);
    event_free(s.tick);
    bufferevent_free(s.far);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "both ways over socketpairs", test_both_ways_sock },
        { "both ways over tcp", test_both_ways_tcp },
        { "both ways between tcp and a picomux stream",
          test_both_ways_picomux },
        { "stalled reader bounds memory (socketpairs)",
          test_backpressure_sock },
        { "stalled reader bounds memory (tcp)", test_backpressure_tcp },
        { "stalled reader bounds memory (picomux stream)",
          test_backpressure_picomux },
        { "a slow reader keeps the tunnel's window small",
          test_slow_reader_small_window },
        { "half-close carried through (socketpairs)", test_half_close_sock },
        { "half-close carried through (tcp)", test_half_close_tcp },
        { "no half-close: end of tcp side ends the stream",
          test_no_half_close_picomux },
        { "no half-close: end of the stream ends the tcp side",
          test_no_half_close_picomux_reverse },
        { "closing while the peer still sends: no reset, every byte",
          test_close_while_peer_sends },
        { "a finished relay still delivers every byte",
          test_close_delivers_everything },
        { "relay_closing_abort frees lingering closes", test_closing_abort },
        { "idle timeout (socketpairs)", test_idle_sock },
        { "idle timeout (tcp)", test_idle_tcp },
        { "traffic keeps the idle timer off", test_idle_not_while_busy },
        { "reset on one side closes both, done once",
          test_error_closes_both },
        { "peer gone while stalled ends the relay once",
          test_error_while_stalled },
        { "relay_free never calls done", test_free_no_done },
        { "input waiting at start is relayed", test_waiting_input },
        { "graceful close delivers a backlog slower than its deadline",
          test_close_slow_backlog },
        { NULL, NULL },
    };
    int refused = 0, rc;

    sl_log_set_level(getenv("RELAY_TEST_VERBOSE") ? SL_LOG_DEBUG
                                                  : SL_LOG_ERR);
    signal(SIGPIPE, SIG_IGN);
    sl_loader_load_all(&refused);
    if (sl_layer_find("tcp") == NULL || sl_layer_find("picomux") == NULL) {
        fprintf(stderr, "test-relay: the tcp and picomux plugins must be "
                "in SILLAD_PLUGIN_PATH\n");
        return 99;
    }
    base = event_base_new();
    tick_ev = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    rc = cu_run("relay", tests);
    event_free(tick_ev);
    sl_resolver_release(base);
    event_base_free(base);
    sl_loader_unload_all();
    return rc;
}
