/*
 * fuzz-conntest.c: libFuzzer target for the conntest layer (the real
 * plugin code, linked in with the core, over a bufferevent pair).
 *
 * The first byte picks the side and how the rest is cut into writes.
 * Server side: the rest is what a hostile client sends; it is fed in
 * pieces with the loop run between them, then the client's end is shut
 * down.  Client side (ping_count=2): the rest is what a hostile server
 * sends back.  Besides "no crash, no UB, no leak, no hang" it checks,
 * against a reference reading of the same bytes:
 *
 *  - server: the echo is exactly the rounds' bytes up to where the input
 *    ends or the terminator is; the wrap succeeds if and only if the input
 *    holds a terminator, and then the pipe is the lower one and holds
 *    exactly the bytes behind it;
 *  - client: the wrap never succeeds on bytes that are not the echo (the
 *    rounds are random, so a fuzzer cannot guess them), and it sends a
 *    well-formed round first;
 *  - done runs exactly once.
 *
 * Build and run (from the top of the tree, with a configured build in
 * BUILD for config.h):
 *
 *   clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -fno-sanitize-recover=undefined -D_GNU_SOURCE \
 *       -Iplugin-api -Icore -IBUILD t/fuzz/fuzz-conntest.c \
 *       plugins/conntest/conntest.c $(ls core/[a-z]*.c) \
 *       $(pkg-config --cflags --libs libevent jansson libsodium) -ldl -lm
 *   ./a.out t/fuzz/corpus/conntest
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

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

const struct sl_plugin *sl_plugin_conntest_describe(void);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static const struct sl_layer_ops *ops;
static void *cfg;

struct res {
    int calls;
    struct sl_pipe *p;
    int code;
};

static void
done(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct res *r = arg;

    r->calls++;
    r->p = p;
    r->code = err != NULL ? err->code : 0;
}

static void
run_once(void)
{
    struct timeval tv = { 0, 0 };

    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void
setup(void)
{
    const struct sl_layer *layer;
    struct sl_opts *o;
    struct sl_error e;

    sl_log_set_level(0);
    base = event_base_new();
    sl_error_clear(&e);
    CHECK(base != NULL);
    CHECK(sl_loader_register(sl_plugin_conntest_describe(), "fuzz", &e) ==
          0);
    layer = sl_layer_find("conntest");
    CHECK(layer != NULL);
    ops = sl_layer_get0_ops(layer);
    o = sl_opts_new();
    sl_opts_add(o, "ping_count", "2", &e);
    CHECK(sl_opts_check(o, ops->opts, "fuzz", &e) == 0);
    CHECK(ops->configure(sl_host_get(), sl_layer_get0_plugin_ctx(layer), o,
                         &cfg, &e) == 0);
    sl_opts_free(o);
}

/* The reference: the echo the server owes for in[0..n), and where the
 * bytes behind the terminator start (n + 1 if there is none). */
static size_t
reference(const uint8_t *in, size_t n, struct evbuffer *echo)
{
    size_t off = 0;

    while (off + 2 <= n) {
        size_t k = (size_t)in[off] << 8 | in[off + 1];

        off += 2;
        if (k == 0)
            return off;
        if (k > n - off)
            k = n - off;
        evbuffer_add(echo, in + off, k);
        off += k;
    }
    return n + 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunks[] = { 1, 2, 3, 7, 64, 999, 4096, 65536 };
    struct bufferevent *pair[2];
    struct sl_pipe *lower;
    struct sl_error e;
    struct res r;
    enum sl_role role;
    size_t off = 0, chunk, after = 0;
    struct evbuffer *echo, *got;
    void *op;

    if (base == NULL)
        setup();
    if (size < 1)
        return 0;
    role = (data[0] & 1) ? SL_ROLE_CLIENT : SL_ROLE_SERVER;
    chunk = chunks[(data[0] >> 1) % 8];
    data++;
    size--;
    memset(&r, 0, sizeof(r));
    echo = evbuffer_new();
    got = evbuffer_new();
    CHECK(bufferevent_pair_new(base, 0, pair) == 0);
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    lower = sl_pipe_new("raw", pair[0], NULL, NULL, NULL);
    CHECK(lower != NULL);
    sl_error_clear(&e);
    CHECK(ops->wrap(cfg, base, lower, role, done, &r, &op, &e) == 0);
    if (role == SL_ROLE_SERVER)
        after = reference(data, size, echo);
    while (off < size && r.calls == 0) {
        size_t k = size - off < chunk ? size - off : chunk;

        bufferevent_write(pair[1], data + off, k);
        off += k;
        run_once();
        run_once();
        evbuffer_add_buffer(got, bufferevent_get_input(pair[1]));
    }
    if (r.calls == 0)
        bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED);
    for (int i = 0; i < 8 && r.calls == 0; i++)
        run_once();
    evbuffer_add_buffer(got, bufferevent_get_input(pair[1]));
    CHECK(r.calls == 1);
    if (role == SL_ROLE_SERVER) {
        size_t n = evbuffer_get_length(echo);

        CHECK((r.p != NULL) == (after <= size));
        /* Writes stop once the result is in: the echo is a prefix. */
        CHECK(evbuffer_get_length(got) <= n);
        CHECK(evbuffer_get_length(got) == 0 ||
              memcmp(evbuffer_pullup(got, -1), evbuffer_pullup(echo, -1),
                     evbuffer_get_length(got)) == 0);
        if (r.p != NULL) {
            struct evbuffer *in = bufferevent_get_input(sl_pipe_get0_bev(r.p));

            CHECK(r.p == lower);
            CHECK(evbuffer_get_length(got) == n);
            CHECK(evbuffer_get_length(in) == off - after);
            CHECK(off == after ||
                  memcmp(evbuffer_pullup(in, -1), data + after,
                         off - after) == 0);
        }
    } else {
        const uint8_t *h = evbuffer_pullup(got, 2);
        size_t n;

        CHECK(r.p == NULL);
        CHECK(h != NULL);
        n = (size_t)h[0] << 8 | h[1];
        CHECK(n >= 1 && n <= 999);
    }
    sl_pipe_free(r.p);
    bufferevent_free(pair[1]);
    run_once();
    evbuffer_free(echo);
    evbuffer_free(got);
    return 0;
}
