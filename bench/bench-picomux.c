/*
 * bench-picomux.c - what the picomux layer costs, against plain tcp
 * measured in the same run, both ends in this process over loopback.
 *
 *   bench-picomux [MIB [--one]]
 *
 * MIB (default $SL_BENCH_MIB, else 512) is the total of the bulk test;
 * --one measures only the throughput of one pipe.
 * 1. Throughput of one stream of a "tcp | picomux" session sending MIB
 *    to the other end, which discards it, and the aggregate of 100
 *    parallel streams of one session, each sending MIB/100; the
 *    baselines are one and 100 connections over "tcp" alone.
 * 2. Stream open to first byte: the opener calls sl_session_open, the
 *    acceptor writes one byte from its stream callback, the opener's clock
 *    stops when that byte arrives; 2000 streams, one after the other, on
 *    one session.  The baseline is dial to first byte over "tcp" alone
 *    (connect and accept instead of a SYN frame).
 * 3. Memory of idle streams: VmRSS (/proc/self/status) before and after
 *    opening 10,000 streams and accepting them, both sides in this
 *    process, divided by 2 x 10,000: bytes per stream per side.  The
 *    baseline is 1,000 idle "tcp" connections (fds: 2 per connection)
 *    measured the same way.  Each memory figure is taken in a child
 *    process of its own, so that memory freed by one test cannot hide the
 *    next one's.
 *
 * Plugins come from SILLAD_PLUGIN_PATH (bench/run-bench.sh sets it).  It
 * prints figures and asserts nothing about them; it exits non-zero only if
 * something does not work.
 */
#include "config.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sillad.h"

#define NSTREAMS 100
#define CHUNK (64 * 1024)
#define HIGH_MARK (256 * 1024)      /* per sending pipe */
#define NLAT 2000
#define NIDLE 10000
#define NIDLE_TCP 1000
#define IDLE_BATCH 500
#define TIME_LIMIT_S 300
#define MIB (1024.0 * 1024.0)

static uint8_t chunk[CHUNK];
static struct event_base *base;

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

/* MiB per CPU second of the last bulk(): both ends run in this process,
 * so this is what one core moves, whatever else the machine runs. */
static double bulk_per_cpu;
static long bulk_faults;    /* minor page faults of the last bulk() */

static long
minflt(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static void
die(const char *what, const struct sl_error *e)
{
    char buf[256];

    fprintf(stderr, "bench-picomux: %s%s%s\n", what, e ? ": " : "",
            e ? sl_error_str(e, buf, sizeof(buf)) : "");
    exit(1);
}

/* Resident set size in bytes, from /proc/self/status. */
static long
rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* ---- a server and a client over "tcp addr=... LAYERS" ------------------- */

struct end;

/* What a test does with each pipe the server gets. */
typedef void srv_pipe_fn(struct end *en, struct sl_pipe *p);

struct end {
    const char *layers;          /* "" or " | picomux ..." */
    struct sl_stack *lstack;
    struct sl_listener *l;
    struct sl_dialer *d;
    char addr[128];
    srv_pipe_fn *on_pipe;
    /* dialing */
    struct sl_pipe *dialed_p;
    struct sl_session *dialed_s;
    int dialed;
    /* server side */
    struct sl_pipe **srv;
    int nsrv, srv_cap;
    struct sl_session *srv_sess;
    /* per test */
    uint64_t received, expect;
    double t_first;
    int failed;
};

static void
srv_keep(struct end *en, struct sl_pipe *p)
{
    if (en->nsrv == en->srv_cap) {
        int cap = en->srv_cap ? en->srv_cap * 2 : 128;
        struct sl_pipe **a = realloc(en->srv, (size_t)cap * sizeof(*a));

        if (a == NULL)
            die("out of memory", NULL);
        en->srv = a;
        en->srv_cap = cap;
    }
    en->srv[en->nsrv++] = p;
}

static void
on_stream(struct sl_session *s, struct sl_pipe *p, const void *meta,
          size_t len, void *arg)
{
    (void)s;
    (void)meta;
    (void)len;
    ((struct end *)arg)->on_pipe(arg, p);
}

static void
on_dead(struct sl_session *s, const struct sl_error *why, void *arg)
{
    (void)s;
    (void)arg;
    die("session died", why);
}

static void
on_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
          void *arg)
{
    struct end *en = arg;

    if (s != NULL) {
        en->srv_sess = s;
        sl_session_setcb(s, on_stream, on_dead, en);
        return;
    }
    if (p == NULL)
        die("accept", e);
    en->on_pipe(en, p);
}

static void
end_open(struct end *en, const char *layers, srv_pipe_fn *on_pipe)
{
    char text[512];
    struct sl_error e;

    memset(en, 0, sizeof(*en));
    sl_error_clear(&e);
    en->layers = layers;
    en->on_pipe = on_pipe;
    snprintf(text, sizeof(text), "tcp addr=127.0.0.1:0 backlog=4096%s",
             layers);
    if ((en->lstack = sl_stack_parse(text, &e)) == NULL)
        die("listen stack", &e);
    if ((en->l = sl_listener_new(en->lstack, base, on_accept, en, &e)) ==
        NULL)
        die("listen", &e);
    if (sl_listener_local_addr(en->l, en->addr, sizeof(en->addr)) != 0)
        die("listener address", NULL);
    snprintf(text, sizeof(text), "tcp addr=%s%s", en->addr, layers);
    if ((en->d = sl_dialer_parse(text, &e)) == NULL)
        die("dial stack", &e);
}

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *e,
          void *arg)
{
    struct end *en = arg;

    if (p == NULL && s == NULL)
        die("dial", e);
    en->dialed_p = p;
    en->dialed_s = s;
    en->dialed = 1;
}

/* Runs the loop until *flag or the time limit. */
static void
run_until(const int *flag)
{
    double limit = now_s() + TIME_LIMIT_S;

    while (!*flag) {
        if (now_s() > limit)
            die("timed out", NULL);
        event_base_loop(base, EVLOOP_ONCE);
    }
}

/* A new pipe from the client side: a stream of the session (dialed on
 * first use) or, without a mux, a connection of its own. */
static struct sl_pipe *
client_pipe(struct end *en, const void *meta, size_t len)
{
    struct sl_error e;
    struct sl_pipe *p = NULL;

    sl_error_clear(&e);
    if (en->dialed_s == NULL || en->layers[0] == '\0') {
        en->dialed = 0;
        if (sl_dialer_dial(en->d, base, on_dialed, en, NULL, &e) != 0)
            die("dial", &e);
        run_until(&en->dialed);
        if (en->dialed_s == NULL) {
            p = en->dialed_p;
            en->dialed_p = NULL;
            return p;
        }
    }
    if (sl_session_open(en->dialed_s, meta, len, &p, &e) != 0)
        die("open", &e);
    return p;
}

static void
end_close(struct end *en)
{
    for (int i = 0; i < en->nsrv; i++)
        sl_pipe_free(en->srv[i]);
    free(en->srv);
    if (en->dialed_s != NULL)
        sl_session_free(en->dialed_s);
    if (en->srv_sess != NULL)
        sl_session_free(en->srv_sess);
    sl_listener_free(en->l);
    sl_stack_free(en->lstack);
    sl_dialer_free(en->d);
    /* Let the closes run. */
    event_base_loop(base, EVLOOP_NONBLOCK);
}

/* ---- 1. bulk over 100 parallel pipes ----------------------------------- */

struct sender {
    struct sl_pipe *p;
    uint64_t left;
};

static void
sink_read(struct bufferevent *bev, void *arg)
{
    struct end *en = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    en->received += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void
sink_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & BEV_EVENT_ERROR)
        ((struct end *)arg)->failed = 1;
}

static void
sink_pipe(struct end *en, struct sl_pipe *p)
{
    srv_keep(en, p);
    sl_pipe_setcb(p, sink_read, NULL, sink_event, en);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static void
sender_fill(struct bufferevent *bev, void *arg)
{
    struct sender *sd = arg;
    struct evbuffer *out = bufferevent_get_output(bev);

    while (sd->left > 0 && evbuffer_get_length(out) < HIGH_MARK) {
        size_t n = sd->left < CHUNK ? (size_t)sd->left : CHUNK;

        evbuffer_add_reference(out, chunk, n, NULL, NULL);
        sd->left -= n;
    }
}

static void
sender_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)arg;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF))
        die("a sending pipe ended", NULL);
}

static int
all_received(struct end *en)
{
    return en->received >= en->expect || en->failed;
}

static void
bulk_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    if (all_received(arg))
        event_base_loopbreak(base);
}

/* MiB/s of npipes pipes moving mib MiB in all. */
static double
bulk(const char *layers, int npipes, uint64_t mib)
{
    struct end en;
    struct sender sd[NSTREAMS];
    static const struct timeval tick = { 0, 1000 };
    struct event *ev;
    double t0, t1, c0;
    int started = 0;

    end_open(&en, layers, sink_pipe);
    en.expect = mib * 1024 * 1024 / (uint64_t)npipes * (uint64_t)npipes;
    for (int i = 0; i < npipes; i++) {
        sd[i].p = client_pipe(&en, "", 0);
        sd[i].left = en.expect / (uint64_t)npipes;
    }
    /* Every pipe is up (streams: opened) before the clock starts. */
    t0 = now_s();
    c0 = cpu_s();
    bulk_faults = minflt();
    for (int i = 0; i < npipes; i++) {
        struct bufferevent *bev = sl_pipe_get0_bev(sd[i].p);

        bufferevent_setwatermark(bev, EV_WRITE, HIGH_MARK / 2, 0);
        sl_pipe_setcb(sd[i].p, NULL, sender_fill, sender_event, &sd[i]);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
        sender_fill(bev, &sd[i]);
        started++;
    }
    ev = event_new(base, -1, EV_PERSIST, bulk_tick, &en);
    event_add(ev, &tick);
    while (!all_received(&en)) {
        if (now_s() - t0 > TIME_LIMIT_S)
            die("the bulk transfer timed out", NULL);
        event_base_dispatch(base);
    }
    t1 = now_s();
    bulk_per_cpu = (double)en.expect / MIB / (cpu_s() - c0);
    bulk_faults = minflt() - bulk_faults;
    event_free(ev);
    if (en.failed || en.received != en.expect)
        die("the bulk transfer lost bytes", NULL);
    for (int i = 0; i < started; i++)
        sl_pipe_free(sd[i].p);
    end_close(&en);
    return (double)en.expect / MIB / (t1 - t0);
}

/* ---- 2. open to first byte --------------------------------------------- */

struct first {
    struct end *en;
    int got;
};

static struct first first_st;

static void
hello_pipe(struct end *en, struct sl_pipe *p)
{
    srv_keep(en, p);
    sl_pipe_setcb(p, NULL, NULL, sink_event, en);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
    bufferevent_write(sl_pipe_get0_bev(p), "x", 1);
}

static void
first_read(struct bufferevent *bev, void *arg)
{
    struct first *f = arg;

    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        f->got = 1;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Microseconds from open (or dial) to the first byte: p50 and p99. */
static void
first_byte(const char *layers, int n, double *p50, double *p99)
{
    struct end en;
    double *us = calloc((size_t)n, sizeof(*us));

    if (us == NULL)
        die("out of memory", NULL);
    end_open(&en, layers, hello_pipe);
    if (layers[0] != '\0') {
        /* The session is up first: streams are what is measured. */
        struct sl_pipe *p = client_pipe(&en, "", 0);

        sl_pipe_free(p);
    }
    for (int i = 0; i < n; i++) {
        double t0 = now_s();
        struct sl_pipe *p = client_pipe(&en, "", 0);

        first_st.en = &en;
        first_st.got = 0;
        sl_pipe_setcb(p, first_read, NULL, sink_event, &first_st);
        bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
        run_until(&first_st.got);
        us[i] = (now_s() - t0) * 1e6;
        sl_pipe_free(p);
        /* The server's end goes too: no pile-up of closed streams. */
        for (int k = 0; k < en.nsrv; k++)
            sl_pipe_free(en.srv[k]);
        en.nsrv = 0;
    }
    qsort(us, (size_t)n, sizeof(*us), cmp_double);
    *p50 = us[n / 2];
    *p99 = us[(n * 99) / 100];
    free(us);
    end_close(&en);
}

/* ---- 3. idle streams ---------------------------------------------------- */

static void
idle_pipe(struct end *en, struct sl_pipe *p)
{
    srv_keep(en, p);
    sl_pipe_setcb(p, NULL, NULL, sink_event, en);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static int idle_want;
static struct end *idle_en;

static void
idle_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (idle_en->nsrv >= idle_want)
        event_base_loopbreak(base);
}

/* Bytes of RSS per idle pipe per side, in this (child) process. */
static double
idle_rss(const char *layers, int n)
{
    struct end en;
    struct sl_pipe **c = calloc((size_t)n, sizeof(*c));
    static const struct timeval tick = { 0, 5000 };
    struct event *ev;
    long r0, r1;
    double limit;

    if (c == NULL)
        die("out of memory", NULL);
    end_open(&en, layers, idle_pipe);
    ev = event_new(base, -1, EV_PERSIST, idle_tick, NULL);
    event_add(ev, &tick);
    idle_en = &en;
    limit = now_s() + TIME_LIMIT_S;
    if (layers[0] != '\0') {
        /* The session itself is not what is measured. */
        c[0] = client_pipe(&en, "", 0);
        idle_want = 1;
        while (en.nsrv < idle_want)
            event_base_dispatch(base);
        sl_pipe_free(c[0]);
        sl_pipe_free(en.srv[0]);
        en.nsrv = 0;
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    r0 = rss_bytes();
    /* In batches that the accept backlog takes (a SYN beyond it is
     * refused, as Rust does). */
    for (int i = 0; i < n; i += IDLE_BATCH) {
        int m = n - i < IDLE_BATCH ? n - i : IDLE_BATCH;

        for (int k = i; k < i + m; k++) {
            c[k] = client_pipe(&en, "", 0);
            sl_pipe_setcb(c[k], NULL, NULL, sink_event, &en);
            bufferevent_enable(sl_pipe_get0_bev(c[k]), EV_READ | EV_WRITE);
        }
        idle_want = i + m;
        while (en.nsrv < idle_want) {
            if (now_s() > limit)
                die("idle pipes were not all accepted", NULL);
            event_base_dispatch(base);
        }
    }
    event_free(ev);
    /* Settle: PINGs, MOREs and whatever else the opens caused. */
    for (int i = 0; i < 50; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    r1 = rss_bytes();
    if (r0 < 0 || r1 < 0)
        die("cannot read VmRSS from /proc/self/status", NULL);
    for (int i = 0; i < n; i++)
        sl_pipe_free(c[i]);
    free(c);
    end_close(&en);
    return (double)(r1 - r0) / (2.0 * n);
}

/* idle_rss in a child process of its own. */
static double
idle_rss_child(const char *layers, int n)
{
    int fds[2], status;
    char buf[64];
    ssize_t k;
    pid_t pid;

    if (pipe(fds) != 0)
        die("pipe", NULL);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("fork", NULL);
    if (pid == 0) {
        close(fds[0]);
        event_base_free(base);
        base = event_base_new();
        if (base == NULL)
            die("event_base_new", NULL);
        snprintf(buf, sizeof(buf), "%.1f", idle_rss(layers, n));
        if (write(fds[1], buf, strlen(buf) + 1) < 0)
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    k = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0 || k <= 0)
        die("the memory test failed", NULL);
    buf[k] = '\0';
    return strtod(buf, NULL);
}

int
main(int argc, char **argv)
{
    const char *env = getenv("SL_BENCH_MIB");
    const char *pm = " | picomux";
    uint64_t mib;
    double tcp1, pm1, tcp1c, pm1c, tcpc, pmc, tcp_bulk, pm_bulk;
    double t50, t99, p50, p99, tcp_idle, pm_idle;
    int loaded, refused = 0;

    mib = argc > 1     ? strtoull(argv[1], NULL, 10)
          : env != NULL ? strtoull(env, NULL, 10)
                        : 512;
    if (mib < 1)
        mib = 1;
    signal(SIGPIPE, SIG_IGN);
    sl_tune_malloc();   /* as every sillad program does */
    alarm(4 * TIME_LIMIT_S);
    loaded = sl_loader_load_all(&refused);
    if (loaded <= 0 || sl_layer_find("tcp") == NULL ||
        sl_layer_find("picomux") == NULL)
        die("cannot load the tcp and picomux plugins (SILLAD_PLUGIN_PATH)",
            NULL);
    sl_log_set_level(SL_LOG_WARNING);
    memset(chunk, 0x5a, sizeof(chunk));
    base = event_base_new();
    if (base == NULL)
        die("event_base_new", NULL);

    if (argc > 2 && strcmp(argv[2], "--one") == 0) {
        /* Only the one-pipe figures (for quick comparisons). */
        double tc, pc;
        long tf;

        tcp1 = bulk("", 1, mib);
        tc = bulk_per_cpu;
        tf = bulk_faults;
        pm1 = bulk(pm, 1, mib);
        pc = bulk_per_cpu;
        printf("one pipe, %llu MiB: tcp %.1f MiB/s (%.1f per CPU s, %ld "
               "page faults), tcp | picomux %.1f MiB/s (%.1f per CPU s, %ld "
               "page faults), ratio %.2f (per CPU %.2f)\n",
               (unsigned long long)mib, tcp1, tc, tf, pm1, pc, bulk_faults,
               pm1 / tcp1, pc / tc);
        return 0;
    }
    printf("picomux: both ends in this process over loopback TCP; the "
           "baseline is tcp alone, measured in the same run\n");
    tcp_idle = idle_rss_child("", NIDLE_TCP);
    pm_idle = idle_rss_child(pm, NIDLE);
    tcp1 = bulk("", 1, mib);
    tcp1c = bulk_per_cpu;
    pm1 = bulk(pm, 1, mib);
    pm1c = bulk_per_cpu;
    tcp_bulk = bulk("", NSTREAMS, mib);
    tcpc = bulk_per_cpu;
    pm_bulk = bulk(pm, NSTREAMS, mib);
    pmc = bulk_per_cpu;
    first_byte("", NLAT, &t50, &t99);
    first_byte(pm, NLAT, &p50, &p99);

    printf("one pipe, %llu MiB (both ends on one core):\n",
           (unsigned long long)mib);
    printf("  %-38s %8.1f MiB/s, %.1f per CPU s\n",
           "tcp, 1 connection (baseline)", tcp1, tcp1c);
    printf("  %-38s %8.1f MiB/s, %.1f per CPU s   ratio %.2f, per CPU "
           "%.2f\n", "tcp | picomux, 1 stream", pm1, pm1c, pm1 / tcp1,
           pm1c / tcp1c);
    printf("%d parallel pipes, %llu MiB in all:\n", NSTREAMS,
           (unsigned long long)mib);
    printf("  %-38s %8.1f MiB/s, %.1f per CPU s\n",
           "tcp, 100 connections (baseline)", tcp_bulk, tcpc);
    printf("  %-38s %8.1f MiB/s, %.1f per CPU s   ratio %.2f, per CPU "
           "%.2f\n", "tcp | picomux, 100 streams", pm_bulk, pmc,
           pm_bulk / tcp_bulk, pmc / tcpc);
    printf("open to first byte, %d one after the other (p50 / p99):\n",
           NLAT);
    printf("  %-38s %8.0f / %.0f us\n", "tcp, dial to first byte (baseline)",
           t50, t99);
    printf("  %-38s %8.0f / %.0f us   ratio %.2f / %.2f\n",
           "picomux stream, open to first byte", p50, p99, p50 / t50,
           p99 / t99);
    printf("idle pipes, resident memory per pipe per side (VmRSS):\n");
    printf("  %-38s %8.0f bytes\n", "tcp, 1,000 connections (baseline)",
           tcp_idle);
    printf("  %-38s %8.0f bytes   ratio %.2f; target < 4096: %s\n",
           "picomux, 10,000 streams", pm_idle, pm_idle / tcp_idle,
           pm_idle < 4096 ? "met" : "NOT met");
    sl_resolver_release(base);
    event_base_free(base);
    sl_loader_unload_all();
    return 0;
}
