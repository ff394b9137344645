/*
 * fuzz-picomux-session.c: libFuzzer target for a whole picomux session.
 *
 * The input is what a hostile peer sends down the lower pipe.  It is fed
 * to a live session (the real plugin code, linked in, over a bufferevent
 * pair) in pieces of varying size, with the event loop run between
 * pieces; pieces of 16 KiB and more arrive as one chain each, as the
 * reads of tcp do, so frames are also parsed in place and passed on as
 * slices of those chains (20000 bytes stay within the slice bound of the
 * small lower_buffer below, 65536 exceed it).  The local user is busy
 * too: it opens a stream and writes to it, and treats streams the peer
 * opens in four ways by their order (read, echo, refuse, never read), so
 * the send path, credits, refusals and stalled streams all see hostile
 * input.  Besides "no crash, no UB,
 * no leak, no hang" it checks:
 *
 *  - memory: what the session buffers toward its user never exceeds
 *    what the peer sent, and what it sends back stays within a small
 *    multiple of the input (PONG, FIN echo, MORE, echoed data);
 *  - on_dead runs at most once, and nothing is called after
 *    session_free.
 *
 * Build and run (from the top of the tree, with a configured build in
 * BUILD for config.h, or any config.h defining PACKAGE_VERSION):
 *
 *   clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -fno-sanitize-recover=undefined -D_GNU_SOURCE \
 *       -Iplugin-api -Icore -Iplugins/picomux -IBUILD \
 *       t/fuzz/fuzz-picomux-session.c plugins/picomux/picomux.c \
 *       plugins/picomux/picomux-frame.c $(ls core/[a-z]*.c) \
 *       $(pkg-config --cflags --libs libevent jansson libsodium) -ldl -lm \
 *       -o fuzz-picomux-session
 *   ./fuzz-picomux-session -max_len=70000 -timeout=10 t/fuzz/corpus/picomux
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sillad.h"

/* abort() even under NDEBUG: a broken promise is a finding. */
#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

#define MAX_STREAMS 64
#define OUR_BYTES 4096

const struct sl_plugin *sl_plugin_picomux_describe(void);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static const struct sl_layer_ops *ops;
static void *cfg;

struct run {
    void *session;
    struct sl_pipe *streams[MAX_STREAMS];
    int nstreams, accepted, dead;
    int freed;                 /* session_free was called */
    size_t fed;
};

static void
stream_readcb(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);

    if (arg != NULL)    /* echo */
        evbuffer_add_buffer(bufferevent_get_output(bev), in);
    else
        evbuffer_drain(in, evbuffer_get_length(in));
}

static void
on_stream(struct sl_pipe *p, const void *meta, size_t len, void *arg)
{
    struct run *r = arg;
    struct bufferevent *bev = sl_pipe_get0_bev(p);
    int kind = r->accepted++ % 4;

    CHECK(!r->freed && !r->dead);
    CHECK(len <= 65535 && (len == 0 || meta != NULL));
    if (kind == 2 || r->nstreams == MAX_STREAMS) {
        sl_pipe_free(p);           /* refused: FIN */
        return;
    }
    r->streams[r->nstreams++] = p;
    if (kind == 3)
        return;                    /* never read: a stalled stream */
    bufferevent_setcb(bev, stream_readcb, NULL, NULL,
                      kind == 1 ? (void *)r : NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void
on_dead(const struct sl_error *why, void *arg)
{
    struct run *r = arg;

    CHECK(!r->freed);
    CHECK(why != NULL && why->code != 0);
    r->dead++;
    CHECK(r->dead == 1);
}

/* Runs the loop until nothing is pending (bounded: a hang is a finding
 * for libFuzzer's -timeout). */
static void
settle(void)
{
    for (int i = 0; i < 64; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static size_t
held(struct run *r)
{
    size_t n = 0;

    for (int i = 0; i < r->nstreams; i++) {
        struct bufferevent *bev = sl_pipe_get0_bev(r->streams[i]);
        struct bufferevent *mine = bufferevent_pair_get_partner(bev);

        n += evbuffer_get_length(bufferevent_get_input(bev));
        if (mine != NULL)
            n += evbuffer_get_length(bufferevent_get_output(mine));
    }
    return n;
}

static void
setup(void)
{
    const struct sl_plugin *pl = sl_plugin_picomux_describe();
    const struct sl_layer *layer;
    struct sl_opts *o;
    struct sl_error e;

    /* The session logs every death it is made to die: silence. */
    sl_log_set_level(0);
    base = event_base_new();
    sl_error_clear(&e);
    CHECK(base != NULL);
    CHECK(sl_loader_register(pl, "fuzz", &e) == 0);
    layer = sl_layer_find("picomux");
    CHECK(layer != NULL);
    ops = sl_layer_get0_ops(layer);
    o = sl_opts_new();
    /* Small bounds so that the fuzzer reaches them. */
    sl_opts_add(o, "window", "40", &e);
    sl_opts_add(o, "stream_buffer", "4k", &e);
    sl_opts_add(o, "lower_buffer", "16k", &e);
    sl_opts_add(o, "max_streams", "16", &e);
    sl_opts_add(o, "accept_backlog", "3", &e);
    sl_opts_add(o, "max_tombstones", "1024", &e);
    sl_opts_add(o, "debloat", "true", &e);
    CHECK(sl_opts_check(o, ops->opts, "fuzz", &e) == 0);
    CHECK(ops->configure(sl_host_get(), sl_layer_get0_plugin_ctx(layer), o,
                         &cfg, &e) == 0);
    sl_opts_free(o);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunk[] = { 1, 7, 64, 3, 4096, 13, 20000, 65536 };
    struct bufferevent *pair[2];
    struct sl_pipe *lower, *ours = NULL;
    struct sl_error e;
    struct run r;
    size_t off = 0, sent_back = 0, k = 0;

    if (base == NULL)
        setup();
    memset(&r, 0, sizeof(r));
    sl_error_clear(&e);
    CHECK(bufferevent_pair_new(base, 0, pair) == 0);
    lower = sl_pipe_new("fuzz", pair[0], NULL, NULL, NULL);
    CHECK(lower != NULL);
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    CHECK(ops->mux->session_new(cfg, base, lower, SL_ROLE_SERVER, on_stream,
                                on_dead, &r, &r.session, &e) == 0);
    if (ops->mux->open(r.session, "fuzz", 4, &ours, &e) == 0) {
        static unsigned char junk[OUR_BYTES];

        bufferevent_enable(sl_pipe_get0_bev(ours), EV_READ | EV_WRITE);
        evbuffer_add(bufferevent_get_output(sl_pipe_get0_bev(ours)), junk,
                     sizeof(junk));
    }
    while (off < size) {
        size_t n = chunk[k++ % (sizeof(chunk) / sizeof(chunk[0]))];
        struct evbuffer *back = bufferevent_get_input(pair[1]);

        if (n > size - off)
            n = size - off;
        evbuffer_add(bufferevent_get_output(pair[1]), data + off, n);
        off += n;
        r.fed += n;
        settle();
        sent_back += evbuffer_get_length(back);
        evbuffer_drain(back, evbuffer_get_length(back));
        /* Nothing amplifies the peer's data on its way to the user. */
        CHECK(held(&r) <= r.fed);
        /* PONG per PING, FIN per FIN, MORE per PSH, echoed data: never
         * much more than came in, plus the first PING and our stream. */
        CHECK(sent_back <= 4 * r.fed + OUR_BYTES + 4096);
        if (r.dead)
            break;
    }
    /* The user frees some streams first, the session later (streams stay
     * valid after session_free), then the rest. */
    for (int i = 0; i < r.nstreams; i += 2)
        sl_pipe_free(r.streams[i]);
    sl_pipe_free(ours);
    settle();
    ops->mux->session_free(r.session);
    r.freed = 1;
    settle();
    for (int i = 1; i < r.nstreams; i += 2) {
        struct bufferevent *bev = sl_pipe_get0_bev(r.streams[i]);

        evbuffer_add(bufferevent_get_output(bev), "x", 1);
        settle();
        sl_pipe_free(r.streams[i]);
    }
    settle();
    bufferevent_free(pair[1]);
    settle();
    CHECK(sl_pipe_count() == 0);
    return 0;
}
