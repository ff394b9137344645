/*
 * bench-sosistab3.c - what the sosistab3 layer costs, against the raw
 * cipher measured in the same run.
 *
 *   bench-sosistab3 [--layer-only] [MIB [RECORD_SIZE...]]
 *
 * MIB defaults to $SL_BENCH_MIB, else 512; the record sizes to 16k, 32k
 * (the layer's default) and 64k.
 * 1. Raw ChaCha20-Poly1305 seal speed of libsodium and of OpenSSL on
 *    buffers of each record size (one core).
 * 2. Bulk throughput of one pipe over loopback TCP: a forked server
 *    process listens on "tcp | sosistab3" and discards, this process dials
 *    and sends MIB MiB (default 512), so each end has a core of its own;
 *    the clock runs from the finished handshake until the server's
 *    one-byte acknowledgement of EOF.  The same with plain tcp first, as
 *    the transport's own ceiling.  Ratios are to the raw seal speeds.
 *    Then the layer alone: both ends on one core, joined by a bufferevent
 *    pair, every byte sealed and opened there; compared with half the
 *    raw OpenSSL seal speed (a seal and an open per byte).
 * 3. Handshakes per CPU second on one core, over in-memory bufferevent
 *    pairs (no TCP), one at a time: the server side answering client
 *    hellos prepared in advance; the client side against a scripted
 *    server that costs a few microseconds; and both layers together.
 *
 * Plugins come from SILLAD_PLUGIN_PATH (bench/run-bench.sh sets it).  It
 * prints figures and asserts nothing about them; it exits non-zero only if
 * something does not work.  MB is 10^6 bytes.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "blake3.h"
#include "s3-crypto.h"
#include "sillad.h"

#define COOKIE "bench-cookie"
/* Written as references to one 64 KiB buffer: whole chains of the size a
 * socket read gives move between buffers without a copy. */
#define CHUNK (64 * 1024)
#define HIGH_MARK (4 * 1024 * 1024)
#define LOWER_BOUND (256 * 1024)   /* tcp's default read_buffer */
#define HS_N 2000
#define RAW_SECONDS 0.3
#define TIME_LIMIT_S 120

static uint8_t chunk[CHUNK];

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double
cpu_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die(const char *what, const struct sl_error *e)
{
    char buf[256];

    fprintf(stderr, "bench-sosistab3: %s%s%s\n", what, e ? ": " : "",
            e ? sl_error_str(e, buf, sizeof(buf)) : "");
    exit(1);
}

/* ---- 1. the raw cipher --------------------------------------------------- */

static double
raw_sodium(size_t len)
{
    uint8_t key[32], nonce[12] = { 0 }, tag[16];
    uint8_t *buf = malloc(len);
    double t0 = now_s(), t;
    uint64_t bytes = 0;

    randombytes_buf(key, sizeof(key));
    memset(buf, 0x5a, len);
    do {
        for (int i = 0; i < 16; i++) {
            nonce[0]++;
            crypto_aead_chacha20poly1305_ietf_encrypt_detached(
                buf, tag, NULL, buf, len, NULL, 0, NULL, nonce, key);
            bytes += len;
        }
        t = now_s() - t0;
    } while (t < RAW_SECONDS);
    free(buf);
    return (double)bytes / t / 1e6;
}

static double
raw_openssl(size_t len)
{
    uint8_t key[32], nonce[12] = { 0 }, tag[16], fin[16];
    uint8_t *buf = malloc(len);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    double t0, t;
    uint64_t bytes = 0;
    int outl, finl;

    randombytes_buf(key, sizeof(key));
    memset(buf, 0x5a, len);
    if (c == NULL || EVP_EncryptInit_ex(c, EVP_chacha20_poly1305(), NULL, key,
                                        NULL) != 1)
        die("EVP_EncryptInit_ex failed", NULL);
    t0 = now_s();
    do {
        for (int i = 0; i < 16; i++) {
            nonce[0]++;
            if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) != 1 ||
                EVP_EncryptUpdate(c, buf, &outl, buf, (int)len) != 1 ||
                EVP_EncryptFinal_ex(c, fin, &finl) != 1 ||
                EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
                die("EVP seal failed", NULL);
            bytes += len;
        }
        t = now_s() - t0;
    } while (t < RAW_SECONDS);
    EVP_CIPHER_CTX_free(c);
    free(buf);
    return (double)bytes / t / 1e6;
}

/* ---- 2. bulk over loopback TCP ------------------------------------------- */

struct bulk {
    struct event_base *base;
    struct sl_pipe *p;
    uint64_t total, sent;
    double t0, t1;           /* wall clock, client */
    double c0, c1;           /* CPU of this process over the transfer */
    int done, failed;
};

/* One transfer's figures. */
struct bulk_result {
    double mbs;              /* MB/s, wall clock */
    double cpu_client, cpu_server;
};

/* Server side (child): count, then acknowledge EOF with one byte. */
static void
srv_read(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);

    (void)arg;
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void
srv_closed(void *arg)
{
    event_base_loopbreak(arg);
}

static void
srv_event(struct bufferevent *bev, short what, void *arg)
{
    struct bulk *b = arg;

    (void)bev;
    if (what & BEV_EVENT_EOF) {
        b->c1 = cpu_s();
        bufferevent_write(sl_pipe_get0_bev(b->p), "k", 1);
        sl_pipe_close(b->p, 5000, srv_closed, b->base);
        b->p = NULL;
    } else if (what & BEV_EVENT_ERROR) {
        exit(3);
    }
}

static void
srv_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
           void *arg)
{
    struct bulk *b = arg;

    (void)s;
    if (p == NULL)
        die("accept", e);
    b->p = p;
    b->c0 = cpu_s();
    sl_pipe_setcb(p, srv_read, NULL, srv_event, b);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

/* Client side: keep the output topped up from one static chunk. */
static void
cli_fill(struct bulk *b)
{
    struct bufferevent *bev = sl_pipe_get0_bev(b->p);
    struct evbuffer *out = bufferevent_get_output(bev);

    while (b->sent < b->total && evbuffer_get_length(out) < HIGH_MARK) {
        uint64_t n = b->total - b->sent < CHUNK ? b->total - b->sent : CHUNK;

        evbuffer_add_reference(out, chunk, (size_t)n, NULL, NULL);
        b->sent += n;
    }
    if (b->sent == b->total && b->sent != 0) {
        b->sent++;   /* once */
        sl_pipe_shutdown_write(b->p);
    }
}

static void
cli_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    cli_fill(arg);
}

static void
cli_read(struct bufferevent *bev, void *arg)
{
    struct bulk *b = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (evbuffer_get_length(in) > 0) {
        b->t1 = now_s();
        b->c1 = cpu_s();
        b->done = 1;
        event_base_loopbreak(b->base);
    }
}

static void
cli_event(struct bufferevent *bev, short what, void *arg)
{
    struct bulk *b = arg;

    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        b->failed = 1;
        event_base_loopbreak(b->base);
    }
}

static void
cli_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
           void *arg)
{
    struct bulk *b = arg;
    struct bufferevent *bev;

    (void)s;
    if (p == NULL)
        die("dial", e);
    b->p = p;
    bev = sl_pipe_get0_bev(p);
    bufferevent_setwatermark(bev, EV_WRITE, HIGH_MARK / 2, 0);
    sl_pipe_setcb(p, cli_read, cli_write, cli_event, b);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    b->t0 = now_s();
    b->c0 = cpu_s();
    cli_fill(b);
}

/* One transfer of mib MiB over "tcp | layers" (layers may be ""). */
static struct bulk_result
bulk_run(const char *layers, uint64_t mib)
{
    struct bulk_result res;
    char text[512], addr[128];
    struct sl_error e;
    struct sl_stack *st;
    struct sl_dialer *d;
    struct bulk b;
    int fds[2], status;
    pid_t pid;
    ssize_t n;

    sl_error_clear(&e);
    if (pipe(fds) != 0)
        die("pipe", NULL);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("fork", NULL);
    if (pid == 0) {
        struct sl_listener *l;

        close(fds[0]);
        memset(&b, 0, sizeof(b));
        b.c0 = b.c1 = 0;
        b.base = event_base_new();
        snprintf(text, sizeof(text), "tcp addr=127.0.0.1:0%s%s",
                 layers[0] ? " | " : "", layers);
        if ((st = sl_stack_parse(text, &e)) == NULL)
            die("listen stack", &e);
        if ((l = sl_listener_new(st, b.base, srv_accept, &b, &e)) == NULL)
            die("listen", &e);
        if (sl_listener_local_addr(l, addr, sizeof(addr)) != 0)
            die("listener address", NULL);
        if (write(fds[1], addr, strlen(addr) + 1) < 0)
            die("write", NULL);
        alarm(TIME_LIMIT_S);
        event_base_dispatch(b.base);
        /* The server's CPU over the transfer, for the parent. */
        snprintf(text, sizeof(text), "%.6f", b.c1 - b.c0);
        if (write(fds[1], text, strlen(text) + 1) < 0)
            die("write", NULL);
        close(fds[1]);
        sl_listener_free(l);
        sl_stack_free(st);
        sl_resolver_release(b.base);
        event_base_free(b.base);
        _exit(0);
    }
    close(fds[1]);
    n = read(fds[0], addr, sizeof(addr) - 1);
    if (n <= 0 || addr[n - 1] != '\0')
        die("the server did not start", NULL);
    memset(&b, 0, sizeof(b));
    b.base = event_base_new();
    b.total = mib * 1024 * 1024;
    snprintf(text, sizeof(text), "tcp addr=%s%s%s", addr,
             layers[0] ? " | " : "", layers);
    if ((d = sl_dialer_parse(text, &e)) == NULL)
        die("dial stack", &e);
    if (sl_dialer_dial(d, b.base, cli_dialed, &b, NULL, &e) != 0)
        die("dial", &e);
    event_base_dispatch(b.base);
    if (!b.done || b.failed)
        die("the transfer failed", NULL);
    sl_pipe_free(b.p);
    sl_dialer_free(d);
    sl_resolver_release(b.base);
    event_base_free(b.base);
    n = read(fds[0], text, sizeof(text) - 1);
    close(fds[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0 || n <= 0)
        die("the server failed", NULL);
    text[n] = '\0';
    res.mbs = (double)b.total / (b.t1 - b.t0) / 1e6;
    res.cpu_client = b.c1 - b.c0;
    res.cpu_server = strtod(text, NULL);
    return res;
}

/* MB/s that one core sustains on the busier side. */
static double
per_core(const struct bulk_result *r, uint64_t mib)
{
    double cpu = r->cpu_client > r->cpu_server ? r->cpu_client
                                               : r->cpu_server;

    return (double)mib * 1048576.0 / cpu / 1e6;
}

static void
print_bulk(const char *what, const struct bulk_result *r, uint64_t mib)
{
    printf("  %-36s %8.1f MB/s wall, CPU client %.2f s server %.2f s, "
           "%.1f MB/s per core\n", what, r->mbs, r->cpu_client,
           r->cpu_server, per_core(r, mib));
}

/* ---- 3. handshakes ------------------------------------------------------- */

struct hs {
    int pending;
    int failed;
};

static void
hs_done(struct sl_pipe *p, const struct sl_error *e, void *arg)
{
    struct hs *h = arg;

    if (p == NULL) {
        char buf[256];

        fprintf(stderr, "bench-sosistab3: handshake: %s\n",
                sl_error_str(e, buf, sizeof(buf)));
        h->failed = 1;
    }
    sl_pipe_free(p);
    h->pending--;
}

static const struct sl_layer_ops *
layer_ops_rs(void **cfg, const char *record_size)
{
    const struct sl_layer *l = sl_layer_find("sosistab3");
    const struct sl_layer_ops *ops;
    struct sl_opts *o = sl_opts_new();
    struct sl_error e;

    sl_error_clear(&e);
    if (l == NULL || o == NULL)
        die("no sosistab3 layer (is SILLAD_PLUGIN_PATH right?)", NULL);
    ops = sl_layer_get0_ops(l);
    if (sl_opts_add(o, "cookie", COOKIE, &e) != 0 ||
        (record_size != NULL &&
         sl_opts_add(o, "record_size", record_size, &e) != 0) ||
        sl_opts_check(o, ops->opts, "sosistab3", &e) != 0 ||
        ops->configure(sl_host_get(), sl_layer_get0_plugin_ctx(l), o, cfg,
                       &e) != 0)
        die("configure", &e);
    sl_opts_free(o);
    return ops;
}

static const struct sl_layer_ops *
layer_ops(void **cfg)
{
    return layer_ops_rs(cfg, NULL);
}

/* A lower pipe over one end of an in-memory pair; the other end in *peer. */
static struct sl_pipe *
mem_pipe(struct event_base *base, struct bufferevent **peer)
{
    struct bufferevent *pair[2];

    if (bufferevent_pair_new(base, 0, pair) != 0)
        die("bufferevent_pair_new", NULL);
    *peer = pair[1];
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    return sl_pipe_new("mem", pair[0], NULL, NULL, NULL);
}

/* Server handshakes per CPU second, one at a time, each answering a
 * client hello prepared in advance (not timed). */
static double
hs_server(void)
{
    struct event_base *base = event_base_new();
    void *cfg = NULL;
    const struct sl_layer_ops *ops = layer_ops(&cfg);
    uint8_t key_c[S3_KEY_LEN], sk[32], pk[32];
    uint8_t (*msg)[S3_HS_LEN + S3_HS_PAD_SEND_MAX];
    size_t *len;
    struct s3_cookie ck;
    struct sl_error e;
    struct hs h = { 0, 0 };
    double t0;

    msg = malloc(HS_N * sizeof(*msg));
    len = malloc(HS_N * sizeof(*len));
    if (msg == NULL || len == NULL)
        die("out of memory", NULL);
    if (s3_cookie_parse(COOKIE, strlen(COOKIE), &ck) != S3_OK)
        die("cookie", NULL);
    s3_hs_key(&ck, S3_CLIENT, key_c);
    s3_cookie_wipe(&ck);
    for (int i = 0; i < HS_N; i++)
        if (s3_keypair(sk, pk) != S3_OK ||
            s3_hs_seal_random(key_c, pk, (uint64_t)time(NULL), s3_empty_hash,
                              msg[i], &len[i]) != S3_OK)
            die("preparing client hellos", NULL);
    t0 = cpu_s();
    for (int i = 0; i < HS_N; i++) {
        struct bufferevent *peer;
        struct sl_pipe *lower = mem_pipe(base, &peer);
        void *op;

        sl_error_clear(&e);
        h.pending++;
        if (ops->wrap(cfg, base, lower, SL_ROLE_SERVER, hs_done, &h, &op,
                      &e) != 0)
            die("wrap", &e);
        bufferevent_write(peer, msg[i], len[i]);
        while (h.pending > 0 && !h.failed)
            event_base_loop(base, EVLOOP_ONCE);
        bufferevent_free(peer);
        if (h.failed)
            die("server handshakes failed", NULL);
    }
    t0 = cpu_s() - t0;
    ops->unconfigure(cfg);
    event_base_free(base);
    free(msg);
    free(len);
    return HS_N / t0;
}

/* A scripted server for the client benchmark: one fixed key pair, no
 * padding, no replay cache; it costs an AEAD open, a BLAKE3 and an AEAD
 * seal per handshake, a few microseconds, included in the client's
 * figure. */
struct responder {
    uint8_t key_c[S3_KEY_LEN], key_s[S3_KEY_LEN], pk[S3_KEY_LEN];
};

static void
responder_read(struct bufferevent *bev, void *arg)
{
    struct responder *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    uint8_t *msg, reply[S3_HS_LEN], h[S3_HASH_LEN], nonce[S3_NONCE_LEN];
    struct s3_hs hs;

    if (evbuffer_get_length(in) < S3_HS_LEN)
        return;
    msg = evbuffer_pullup(in, S3_HS_LEN);
    if (s3_hs_open(r->key_c, msg, &hs) != S3_OK)
        die("scripted server: bad client hello", NULL);
    if (evbuffer_get_length(in) < S3_HS_LEN + hs.padding_len)
        return;
    blake3_hash(h, msg, S3_HS_LEN);
    s3_random_nonce(nonce);
    if (s3_hs_seal(r->key_s, r->pk, (uint64_t)time(NULL), NULL, 0, h, nonce,
                   reply) != S3_OK)
        die("scripted server: seal", NULL);
    evbuffer_drain(in, S3_HS_LEN + hs.padding_len);
    bufferevent_write(bev, reply, sizeof(reply));
}

/* Client handshakes per CPU second, against the scripted server. */
static double
hs_client(void)
{
    struct event_base *base = event_base_new();
    void *cfg = NULL;
    const struct sl_layer_ops *ops = layer_ops(&cfg);
    struct responder r;
    struct s3_cookie ck;
    struct sl_error e;
    struct hs h = { 0, 0 };
    uint8_t sk[S3_KEY_LEN];
    double t0;

    if (s3_cookie_parse(COOKIE, strlen(COOKIE), &ck) != S3_OK ||
        s3_keypair(sk, r.pk) != S3_OK)
        die("cookie", NULL);
    s3_hs_key(&ck, S3_CLIENT, r.key_c);
    s3_hs_key(&ck, S3_SERVER, r.key_s);
    s3_cookie_wipe(&ck);
    t0 = cpu_s();
    for (int i = 0; i < HS_N; i++) {
        struct bufferevent *peer;
        struct sl_pipe *lower = mem_pipe(base, &peer);
        void *op;

        bufferevent_setcb(peer, responder_read, NULL, NULL, &r);
        sl_error_clear(&e);
        h.pending++;
        if (ops->wrap(cfg, base, lower, SL_ROLE_CLIENT, hs_done, &h, &op,
                      &e) != 0)
            die("wrap", &e);
        while (h.pending > 0 && !h.failed)
            event_base_loop(base, EVLOOP_ONCE);
        bufferevent_free(peer);
        if (h.failed)
            die("client handshakes failed", NULL);
    }
    t0 = cpu_s() - t0;
    ops->unconfigure(cfg);
    event_base_free(base);
    return HS_N / t0;
}

/* Client and server together, one pair at a time. */
static double
hs_pairs(void)
{
    struct event_base *base = event_base_new();
    void *cfg = NULL;
    const struct sl_layer_ops *ops = layer_ops(&cfg);
    struct hs h = { 0, 0 };
    struct sl_error e;
    double t0 = cpu_s();

    for (int i = 0; i < HS_N; i++) {
        struct bufferevent *pair[2];
        struct sl_pipe *a, *b;
        void *op;

        if (bufferevent_pair_new(base, 0, pair) != 0)
            die("bufferevent_pair_new", NULL);
        a = sl_pipe_new("mem", pair[0], NULL, NULL, NULL);
        b = sl_pipe_new("mem", pair[1], NULL, NULL, NULL);
        sl_error_clear(&e);
        h.pending += 2;
        if (ops->wrap(cfg, base, a, SL_ROLE_SERVER, hs_done, &h, &op, &e) ||
            ops->wrap(cfg, base, b, SL_ROLE_CLIENT, hs_done, &h, &op, &e))
            die("wrap", &e);
        while (h.pending > 0 && !h.failed)
            event_base_loop(base, EVLOOP_ONCE);
        if (h.failed)
            die("handshakes failed", NULL);
    }
    t0 = cpu_s() - t0;
    ops->unconfigure(cfg);
    event_base_free(base);
    return HS_N / t0;
}

/* ---- 4. the layer alone: both ends in memory, on one core ---------------- */

struct mem_bulk {
    struct event_base *base;
    struct sl_pipe *c, *s;
    uint64_t total, sent, got;
    int pending;
};

static void
mem_done(struct sl_pipe *p, const struct sl_error *e, void *arg)
{
    struct sl_pipe **slot = arg;

    if (p == NULL)
        die("in-memory handshake", e);
    *slot = p;
}

static void
mem_fill(struct bufferevent *bev, void *arg)
{
    struct mem_bulk *m = arg;
    struct evbuffer *out = bufferevent_get_output(bev);

    while (m->sent < m->total && evbuffer_get_length(out) < HIGH_MARK) {
        evbuffer_add_reference(out, chunk, CHUNK, NULL, NULL);
        m->sent += CHUNK;
    }
}

static void
mem_read(struct bufferevent *bev, void *arg)
{
    struct mem_bulk *m = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    m->got += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (m->got >= m->total)
        event_base_loopbreak(m->base);
}

/* MB/s per CPU second through a client and a server pipe joined by a
 * bufferevent pair: every byte sealed and opened on this one core. */
static double
mem_run(const char *record_size, uint64_t mib)
{
    struct mem_bulk m;
    void *cfg = NULL;
    const struct sl_layer_ops *ops = layer_ops_rs(&cfg, record_size);
    struct bufferevent *pair[2];
    struct sl_error e;
    void *op;
    double t0;

    memset(&m, 0, sizeof(m));
    m.base = event_base_new();
    m.total = mib * 1024 * 1024;
    if (bufferevent_pair_new(m.base, 0, pair) != 0)
        die("bufferevent_pair_new", NULL);
    /* Bounded like a tcp pipe's input, or the writer would run ahead. */
    bufferevent_setwatermark(pair[0], EV_READ, 0, LOWER_BOUND);
    bufferevent_setwatermark(pair[1], EV_READ, 0, LOWER_BOUND);
    sl_error_clear(&e);
    if (ops->wrap(cfg, m.base, sl_pipe_new("mem", pair[0], NULL, NULL, NULL),
                  SL_ROLE_SERVER, mem_done, &m.s, &op, &e) != 0 ||
        ops->wrap(cfg, m.base, sl_pipe_new("mem", pair[1], NULL, NULL, NULL),
                  SL_ROLE_CLIENT, mem_done, &m.c, &op, &e) != 0)
        die("wrap", &e);
    while (m.c == NULL || m.s == NULL)
        event_base_loop(m.base, EVLOOP_ONCE);
    bufferevent_setwatermark(sl_pipe_get0_bev(m.c), EV_WRITE, HIGH_MARK / 2,
                             0);
    sl_pipe_setcb(m.c, NULL, mem_fill, NULL, &m);
    sl_pipe_setcb(m.s, mem_read, NULL, NULL, &m);
    bufferevent_enable(sl_pipe_get0_bev(m.c), EV_READ | EV_WRITE);
    bufferevent_enable(sl_pipe_get0_bev(m.s), EV_READ | EV_WRITE);
    t0 = cpu_s();
    mem_fill(sl_pipe_get0_bev(m.c), &m);
    event_base_dispatch(m.base);
    t0 = cpu_s() - t0;
    sl_pipe_free(m.c);
    sl_pipe_free(m.s);
    ops->unconfigure(cfg);
    event_base_free(m.base);
    return (double)m.total / t0 / 1e6;
}

int
main(int argc, char **argv)
{
    const char *env = getenv("SL_BENCH_MIB");
    int layer_only = argc > 1 && strcmp(argv[1], "--layer-only") == 0;
    static const char *const dflt_sizes[] = { "16k", "32k", "64k", NULL };
    const char *const *sizes;
    uint64_t mib;
    struct bulk_result tcp;
    double srv, cli, pair;
    int loaded, refused = 0;

    if (layer_only) {
        argc--;
        argv++;
    }
    mib = argc > 1     ? strtoull(argv[1], NULL, 10)
          : env != NULL ? strtoull(env, NULL, 10)
                        : 512;
    sizes = argc > 2 ? (const char *const *)argv + 2 : dflt_sizes;
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        die("sodium_init failed", NULL);
    loaded = sl_loader_load_all(&refused);
    if (loaded <= 0 || sl_layer_find("tcp") == NULL ||
        sl_layer_find("sosistab3") == NULL)
        die("cannot load the tcp and sosistab3 plugins (SILLAD_PLUGIN_PATH)",
            NULL);
    sl_log_set_level(SL_LOG_WARNING);
    memset(chunk, 0x5a, sizeof(chunk));
    if (mib == 0)
        mib = 1;

    printf("sosistab3: one pipe, %llu MiB over loopback TCP, client and "
           "server in two processes;\nMB = 10^6 bytes; \"per core\" is "
           "bytes / CPU time of the busier side\n",
           (unsigned long long)mib);
    if (layer_only) {
        for (size_t i = 0; sizes[i] != NULL; i++)
            printf("record_size=%s: layer alone, both ends in memory: "
                   "%.1f MB/s per core\n", sizes[i], mem_run(sizes[i], mib));
        sl_loader_unload_all();
        return 0;
    }
    tcp = bulk_run("", mib);
    print_bulk("tcp alone (transport ceiling)", &tcp, mib);
    for (size_t i = 0; sizes[i] != NULL; i++) {
        int64_t rs;
        double so, os, pc;
        char layers[128], what[64];
        struct bulk_result s3;

        if (sl_parse_size(sizes[i], &rs) != 0 || rs < 1 || rs > 1048576)
            die("record sizes are 1 to 1M", NULL);
        so = raw_sodium((size_t)rs);
        os = raw_openssl((size_t)rs);
        snprintf(layers, sizeof(layers), "sosistab3 cookie=%s record_size=%s",
                 COOKIE, sizes[i]);
        s3 = bulk_run(layers, mib);
        pc = per_core(&s3, mib);
        printf("record_size=%s:\n", sizes[i]);
        printf("  %-36s %8.1f MB/s\n", "raw seal, libsodium", so);
        printf("  %-36s %8.1f MB/s\n", "raw seal, OpenSSL", os);
        snprintf(what, sizeof(what), "tcp | sosistab3");
        print_bulk(what, &s3, mib);
        printf("  ratios, per core: to raw libsodium %.2f, to raw OpenSSL "
               "%.2f, to tcp alone %.2f\n", pc / so, pc / os,
               pc / per_core(&tcp, mib));
        printf("  ratios, wall:     to raw libsodium %.2f, to raw OpenSSL "
               "%.2f, to tcp alone %.2f\n", s3.mbs / so, s3.mbs / os,
               s3.mbs / tcp.mbs);
        pc = mem_run(sizes[i], mib);
        printf("  %-36s %8.1f MB/s per core, %.2f of raw OpenSSL "
               "seal+open\n", "layer alone, both ends in memory", pc,
               pc / (os / 2));
    }
    srv = hs_server();
    cli = hs_client();
    pair = hs_pairs();
    printf("handshakes per CPU second on one core, over in-memory pairs "
           "(no TCP), %d each:\n", HS_N);
    printf("  %-36s %8.0f /s\n", "server side", srv);
    printf("  %-36s %8.0f /s\n", "client side (scripted server)", cli);
    printf("  %-36s %8.0f /s\n", "client and server together", pair);
    sl_loader_unload_all();
    return 0;
}
