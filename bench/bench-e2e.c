/*
 * bench-e2e.c - what the e2e layer costs, against the raw cipher measured
 * in the same run.
 *
 *   bench-e2e [MIB]
 *
 * MIB defaults to $SL_BENCH_MIB, else 256.
 * 1. Raw ChaCha20-Poly1305 (libsodium, IETF) sealing and then opening
 *    MIB MiB in 8192-byte messages, the crypt pipe's message size, on
 *    one core: the ceiling of the crypt pipe.
 * 2. The crypt pipe alone: a client and an exit e2e pipe in X25519 mode,
 *    both in this process, joined by a bufferevent pair; MIB MiB from
 *    client to exit, every byte sealed and opened here.  Printed with its
 *    ratio to (1).
 * 3. Hellos per CPU second: client and exit hellos (X25519 mode, ed25519
 *    signature made and checked) over bufferevent pairs, one at a time.
 *
 * The e2e plugin comes from SILLAD_PLUGIN_PATH (bench/run-bench.sh sets
 * it).  It prints figures and asserts nothing about them; it exits
 * non-zero only if something does not work.
 */
#include "config.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <sodium.h>

#include "e2e-wire.h"
#include "sillad.h"

#define CHUNK (64 * 1024)
#define HIGH_MARK (4 * 1024 * 1024)
#define HS_N 500
#define TIME_LIMIT_S 300

static uint8_t chunk[CHUNK];
static struct event_base *base;
static const struct sl_layer_ops *ops;
static void *plugin_ctx;
static void *cfg;

static double
cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double
wall_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die(const char *what)
{
    fprintf(stderr, "bench-e2e: %s\n", what);
    exit(1);
}

/* ---- 1. the raw cipher ---------------------------------------------------- */

static double
raw_speed(size_t total)
{
    uint8_t key[E2E_KEY_LEN], msg[4 + E2E_CHUNK_MAX + E2E_TAG_LEN];
    uint8_t out[E2E_CHUNK_MAX];
    uint64_t ctr = 0;
    size_t done = 0;
    double t0;

    randombytes_buf(key, sizeof(key));
    t0 = cpu_now();
    while (done < total) {
        if (e2e_crypt_seal(key, ctr, chunk, E2E_CHUNK_MAX, msg) != 0 ||
            e2e_crypt_open(key, ctr, msg + 4, E2E_CHUNK_MAX + E2E_TAG_LEN,
                           out) != 0)
            die("raw seal/open failed");
        ctr++;
        done += E2E_CHUNK_MAX;
    }
    return (double)done / 1048576.0 / (cpu_now() - t0);
}

/* ---- pipes ---------------------------------------------------------------- */

static int
lower_shutdown(void *layer_ctx, struct sl_pipe *p)
{
    (void)layer_ctx;
    bufferevent_flush(sl_pipe_get0_bev(p), EV_WRITE, BEV_FINISHED);
    return 0;
}

static const struct sl_pipe_ops lower_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = lower_shutdown,
};

struct wrapped {
    struct sl_pipe *p;
    int calls;
};

static void
wrapped_cb(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct wrapped *w = arg;

    w->calls++;
    w->p = p;
    if (p == NULL)
        fprintf(stderr, "bench-e2e: hello failed: %s\n", err->text);
}

/* A client and an exit pipe joined by a bufferevent pair. */
static void
hello_pair(struct sl_pipe **client, struct sl_pipe **exitp)
{
    struct bufferevent *pair[2];
    struct wrapped wc = { NULL, 0 }, ws = { NULL, 0 };
    struct sl_error e;
    void *op;

    if (bufferevent_pair_new(base, 0, pair) != 0)
        die("bufferevent_pair_new");
    sl_error_clear(&e);
    if (ops->wrap(cfg, base, sl_pipe_new("pair", pair[0], NULL, &lower_ops,
                                         NULL), SL_ROLE_CLIENT, wrapped_cb,
                  &wc, &op, &e) != 0 ||
        ops->wrap(cfg, base, sl_pipe_new("pair", pair[1], NULL, &lower_ops,
                                         NULL), SL_ROLE_SERVER, wrapped_cb,
                  &ws, &op, &e) != 0)
        die(e.text);
    while (wc.calls == 0 || ws.calls == 0)
        event_base_loop(base, EVLOOP_ONCE);
    if (wc.p == NULL || ws.p == NULL)
        die("hello failed");
    *client = wc.p;
    *exitp = ws.p;
}

/* ---- 2. the crypt pipe ---------------------------------------------------- */

struct flow {
    struct bufferevent *tx, *rx;
    size_t total, sent, got;
};

static void
fill(struct flow *f)
{
    struct evbuffer *out = bufferevent_get_output(f->tx);

    while (f->sent < f->total && evbuffer_get_length(out) < HIGH_MARK) {
        size_t n = f->total - f->sent < CHUNK ? f->total - f->sent : CHUNK;

        evbuffer_add_reference(out, chunk, n, NULL, NULL);
        f->sent += n;
    }
}

static void
tx_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    fill(arg);
}

static void
rx_read(struct bufferevent *bev, void *arg)
{
    struct flow *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    f->got += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static double
pipe_speed(size_t total)
{
    struct sl_pipe *c, *s;
    struct flow f;
    double t0;

    hello_pair(&c, &s);
    memset(&f, 0, sizeof(f));
    f.total = total;
    f.tx = sl_pipe_get0_bev(c);
    f.rx = sl_pipe_get0_bev(s);
    sl_pipe_setcb(c, NULL, tx_write, NULL, &f);
    bufferevent_setwatermark(f.tx, EV_WRITE, HIGH_MARK / 2, 0);
    bufferevent_enable(f.tx, EV_WRITE);
    sl_pipe_setcb(s, rx_read, NULL, NULL, &f);
    bufferevent_enable(f.rx, EV_READ);
    t0 = cpu_now();
    fill(&f);
    while (f.got < total)
        event_base_loop(base, EVLOOP_ONCE);
    t0 = cpu_now() - t0;
    sl_pipe_free(c);
    sl_pipe_free(s);
    return (double)total / 1048576.0 / t0;
}

/* ---- 3. hellos ------------------------------------------------------------ */

static double
hellos_per_second(void)
{
    double t0 = cpu_now();

    for (int i = 0; i < HS_N; i++) {
        struct sl_pipe *c, *s;

        hello_pair(&c, &s);
        sl_pipe_free(c);
        sl_pipe_free(s);
    }
    return HS_N / (cpu_now() - t0);
}

int
main(int argc, char **argv)
{
    const char *env = getenv("SL_BENCH_MIB");
    const char *path = getenv("SILLAD_PLUGIN_PATH");
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10)
                 : env != NULL ? strtoul(env, NULL, 10) : 256;
    char dir[] = "/tmp/bench-e2e.XXXXXX", key[64], file[4096];
    struct sl_opts *o;
    struct sl_error e;
    const struct sl_layer *l;
    double raw, pipe, hs, w0;

    alarm(TIME_LIMIT_S);
    if (mib == 0)
        mib = 256;
    if (sodium_init() < 0 || path == NULL)
        die("needs libsodium and SILLAD_PLUGIN_PATH");
    sl_log_set_level(SL_LOG_ERR);
    snprintf(file, sizeof(file), "%.*s/e2e.so", (int)strcspn(path, ":"),
             path);
    sl_error_clear(&e);
    if (sl_loader_load_file(file, &e) != 0)
        die(e.text);
    l = sl_layer_find("e2e");
    ops = sl_layer_get0_ops(l);
    plugin_ctx = sl_layer_get0_plugin_ctx(l);
    if (mkdtemp(dir) == NULL)
        die("mkdtemp");
    snprintf(key, sizeof(key), "%s/exit.key", dir);
    o = sl_opts_new();
    if (sl_opts_add(o, "signing_key", key, &e) != 0 ||
        sl_opts_check(o, ops->opts, "e2e", &e) != 0 ||
        ops->configure(sl_host_get(), plugin_ctx, o, &cfg, &e) != 0)
        die(e.text);
    sl_opts_free(o);
    base = event_base_new();
    randombytes_buf(chunk, sizeof(chunk));

    printf("e2e bench: %zu MiB, X25519 mode (crypt pipe), one core\n", mib);
    raw = raw_speed(mib * 1048576);
    printf("%-44s %10.1f MiB/s\n",
           "baseline: raw seal + open, 8 KiB messages", raw);
    w0 = wall_now();
    pipe = pipe_speed(mib * 1048576);
    printf("%-44s %10.1f MiB/s   ratio %.2f   (%.1f s)\n",
           "e2e crypt pipe, both ends, bufferevent pair", pipe, pipe / raw,
           wall_now() - w0);
    hs = hellos_per_second();
    printf("%-44s %10.0f /s\n", "hellos (client and exit, signed)", hs);

    ops->unconfigure(cfg);
    event_base_free(base);
    sl_loader_unload_all();
    unlink(key);
    rmdir(dir);
    return 0;
}
