/* sillad-bridge - relays clients' still-obfuscated connections to an
 * exit: every connection accepted on a forward's listen stack becomes one
 * picomux stream on a pool of connections to the exit's b2e port, the
 * stream's SYN carrying B2eMetadata that names the stack the client speaks
 * (sillad-and-stacks.md §4, §8.2).  The bridge never terminates that stack.
 *
 *   sillad-bridge -c FILE [--check] [-v] [--addr-file FILE]
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "exit-conf.h"
#include "relay.h"
#include "sillad.h"
#include "tunnel.h"

#define FORWARDS_MAX 64
#define POOL_MAX 256
#define QUEUE_MAX 100            /* clients waiting for a pool connection */
#define OPEN_TIMEOUT_MS 1000     /* how long one may wait (dial_pooled) */
#define RETRY_MS 1000            /* reconnect delay after a failure */
#define EXPIRY_S 86400           /* B2eMetadata expiry: now + 1 day */

struct fwd;

struct slot {
    struct fwd *f;
    struct sl_session *s;
    struct sl_dial_op *op;
    struct event *retry_ev;
    int reap_pending;
    int fails;                   /* consecutive failed dials */
};

struct waiter {
    struct fwd *f;
    struct sl_pipe *p;
    struct event *timer;
    struct waiter *prev, *next;
};

struct brelay {
    struct fwd *f;
    struct relay *r;
    char peer[64];
    int64_t start_ms;
    struct brelay *prev, *next;
};

struct fwd {
    struct app *app;
    size_t idx;
    struct sl_stack *lstack;
    struct sl_dialer *dialer;
    char *protocol;
    struct sl_listener *l;
    struct slot slots[POOL_MAX];
    size_t npool;
    struct waiter *queue, *queue_tail;
    size_t nqueue;
    struct brelay *relays;
    int64_t busy;                /* dials and reaps in flight */
    unsigned rr;
    int retired;
    struct fwd *next;
};

struct app {
    struct event_base *base;
    const char *cfg_path, *addr_file;
    struct sl_config *cfg;
    struct fwd *fwds;            /* the current configuration */
    struct fwd *retired;         /* old ones, until their clients leave */
    int64_t idle_ms;
    int stopping, exit_code;
    struct sl_signals *sig;
};

static void
usage(FILE *f)
{
    fprintf(f, "usage: sillad-bridge -c FILE [-v] [--addr-file FILE]\n"
               "       sillad-bridge -c FILE --check\n");
}

/* ---- forwards ------------------------------------------------------------- */

static void slot_dial(struct slot *sl);

/* Frees f once nothing refers to it any more; returns 1 if it did. */
static int
fwd_maybe_free(struct fwd *f)
{
    /* busy counts dials and queued reaps, which call back into f. */
    if (f->relays != NULL || f->busy > 0 || f->queue != NULL)
        return 0;
    for (size_t i = 0; i < f->npool; i++) {
        sl_session_free(f->slots[i].s);   /* never calls back */
        f->slots[i].s = NULL;
        if (f->slots[i].retry_ev != NULL)
            event_free(f->slots[i].retry_ev);
    }
    sl_listener_free(f->l);
    sl_stack_free(f->lstack);
    sl_dialer_free(f->dialer);
    free(f->protocol);
    free(f);
    return 1;
}

/* Drops f from the retired list if it can go. */
static void
retired_sweep(struct app *a)
{
    for (struct fwd **fp = &a->retired; *fp != NULL;) {
        struct fwd *f = *fp;

        *fp = f->next;
        if (!fwd_maybe_free(f)) {
            *fp = f;
            fp = &f->next;
        }
    }
}

static struct slot *
pick_slot(struct fwd *f)
{
    struct slot *best = NULL;
    uint64_t best_open = UINT64_MAX;

    /* Round-robin start, then the live session with fewest streams. */
    for (size_t k = 0; k < f->npool; k++) {
        struct slot *sl = &f->slots[(f->rr + k) % f->npool];
        struct sl_mux_stats st;

        if (sl->s == NULL || sl->reap_pending || sl_session_is_dead(sl->s))
            continue;
        memset(&st, 0, sizeof(st));
        st.struct_size = sizeof(st);
        if (sl_session_stats(sl->s, &st) != 0)
            st.streams_open = 0;
        if (st.streams_open < best_open) {
            best = sl;
            best_open = st.streams_open;
        }
    }
    f->rr++;
    return best;
}

static void
brelay_done(void *arg, const struct relay_stats *st, const char *why)
{
    struct brelay *br = arg;
    struct fwd *f = br->f;
    int64_t ms = sl_now_ms() - br->start_ms;

    sl_log(SL_LOG_INFO, "", "forward %zu: client %s: %llu bytes up, %llu "
           "down, %lld.%03lld s, %s", f->idx, br->peer,
           (unsigned long long)st->a_to_b, (unsigned long long)st->b_to_a,
           (long long)(ms / 1000), (long long)(ms % 1000), why);
    LIST_DEL(f->relays, br);
    free(br);
    if (f->retired)
        retired_sweep(f->app);
}

/* Consumes p: opens its stream on sl and relays. */
static void
carry(struct fwd *f, struct slot *sl, struct sl_pipe *p)
{
    struct sc_enc meta;
    struct sl_error e;
    struct sl_pipe *stream = NULL;
    struct timespec now;
    struct brelay *br;
    char buf[256];

    clock_gettime(CLOCK_REALTIME, &now);
    sc_enc_init(&meta, 65535);
    sl_error_clear(&e);
    if (tun_b2e_meta(f->protocol, (uint64_t)now.tv_sec + EXPIRY_S,
                     (uint32_t)now.tv_nsec, &meta, &e) != 0 ||
        sl_session_open(sl->s, meta.buf, meta.len, &stream, &e) != 0) {
        sc_enc_free(&meta);
        sl_log(SL_LOG_INFO, "", "forward %zu: dropping a client: %s",
               f->idx, sl_error_str(&e, buf, sizeof(buf)));
        sl_pipe_free(p);
        return;
    }
    sc_enc_free(&meta);
    br = calloc(1, sizeof(*br));
    if (br == NULL) {
        sl_pipe_free(p);
        sl_pipe_free(stream);
        return;
    }
    br->f = f;
    br->start_ms = sl_now_ms();
    sl_pipe_remote_addr(p, br->peer, sizeof(br->peer));
    LIST_ADD(f->relays, br);
    br->r = relay_new(f->app->base, p, stream, (int)f->app->idle_ms,
                      brelay_done, br);
    if (br->r == NULL) {
        LIST_DEL(f->relays, br);
        free(br);
    }
}

static void
waiter_free(struct waiter *w)
{
    struct fwd *f = w->f;

    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        f->queue = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        f->queue_tail = w->prev;
    f->nqueue--;
    event_free(w->timer);
    sl_pipe_free(w->p);
    free(w);
}

static void
pump_queue(struct fwd *f)
{
    struct slot *sl;

    while (f->queue != NULL && (sl = pick_slot(f)) != NULL) {
        struct waiter *w = f->queue;
        struct sl_pipe *p = w->p;

        w->p = NULL;
        waiter_free(w);
        carry(f, sl, p);
    }
}

static void
waiter_expired(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;

    (void)fd;
    (void)what;
    sl_log(SL_LOG_INFO, "", "forward %zu: no connection to the exit within "
           "%d ms; dropping a client", w->f->idx, OPEN_TIMEOUT_MS);
    waiter_free(w);
}

static void
on_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct fwd *f = arg;
    struct slot *sl;
    struct waiter *w;
    struct timeval tv = { 0, OPEN_TIMEOUT_MS * 1000 };

    (void)err;
    sl_session_free(s);   /* listen stacks are checked to make pipes */
    if (p == NULL)
        return;
    if ((sl = pick_slot(f)) != NULL) {
        carry(f, sl, p);
        return;
    }
    if (f->nqueue >= QUEUE_MAX || (w = calloc(1, sizeof(*w))) == NULL) {
        sl_log(SL_LOG_INFO, "", "forward %zu: %d clients already wait for "
               "the exit; dropping one", f->idx, QUEUE_MAX);
        sl_pipe_free(p);
        return;
    }
    w->f = f;
    w->p = p;
    w->timer = evtimer_new(f->app->base, waiter_expired, w);
    if (w->timer == NULL) {
        sl_pipe_free(p);
        free(w);
        return;
    }
    evtimer_add(w->timer, &tv);
    w->prev = f->queue_tail;
    if (f->queue_tail != NULL)
        f->queue_tail->next = w;
    else
        f->queue = w;
    f->queue_tail = w;
    f->nqueue++;
}

static void
retry_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    slot_dial(arg);
}

static void
slot_retry(struct slot *sl)
{
    struct timeval tv = { RETRY_MS / 1000, (RETRY_MS % 1000) * 1000 };

    if (sl->f->retired || sl->f->app->stopping)
        return;
    if (sl->retry_ev == NULL)
        sl->retry_ev = evtimer_new(sl->f->app->base, retry_fired, sl);
    if (sl->retry_ev != NULL)
        evtimer_add(sl->retry_ev, &tv);
}

static void
slot_reap(void *arg)
{
    struct slot *sl = arg;
    struct fwd *f = sl->f;

    sl->reap_pending = 0;
    f->busy--;
    sl_session_free(sl->s);
    sl->s = NULL;
    if (f->retired || f->app->stopping) {
        if (f->retired)
            retired_sweep(f->app);
        return;
    }
    slot_retry(sl);
}

static void
slot_dead(struct sl_session *s, const struct sl_error *why, void *arg)
{
    struct slot *sl = arg;
    char buf[256];

    (void)s;
    sl_log(SL_LOG_NOTICE, "", "forward %zu: connection %zu to the exit "
           "ended: %s", sl->f->idx, (size_t)(sl - sl->f->slots),
           why ? sl_error_str(why, buf, sizeof(buf)) : "closed");
    if (sl->reap_pending)
        return;
    sl->reap_pending = 1;
    sl->f->busy++;
    if (sl_defer(sl->f->app->base, slot_reap, sl) != 0)
        slot_reap(sl);
}

static void
slot_dialed(struct sl_pipe *p, struct sl_session *s,
            const struct sl_error *err, void *arg)
{
    struct slot *sl = arg;
    struct fwd *f = sl->f;
    char buf[256];

    sl->op = NULL;
    f->busy--;
    sl_pipe_free(p);
    if (f->retired || f->app->stopping) {
        sl_session_free(s);
        if (f->retired)
            retired_sweep(f->app);
        return;
    }
    if (s == NULL) {
        /* Say it once per outage, not once a second. */
        sl_log(sl->fails++ == 0 ? SL_LOG_WARNING : SL_LOG_DEBUG, "",
               "forward %zu: cannot reach the exit: %s", f->idx,
               err ? sl_error_str(err, buf, sizeof(buf)) : "no session");
        slot_retry(sl);
        return;
    }
    if (sl->fails > 0 || sl == &f->slots[0])
        sl_log(SL_LOG_INFO, "", "forward %zu: connection %zu to the exit "
               "is up", f->idx, (size_t)(sl - f->slots));
    sl->fails = 0;
    sl->s = s;
    /* The exit never opens streams on a b2e link (§4). */
    sl_session_setcb(s, NULL, slot_dead, sl);
    pump_queue(f);
}

static void
slot_dial(struct slot *sl)
{
    struct fwd *f = sl->f;
    struct sl_error e;
    char buf[256];

    sl_error_clear(&e);
    f->busy++;
    if (sl_dialer_dial(f->dialer, f->app->base, slot_dialed, sl, &sl->op,
                       &e) != 0) {
        f->busy--;
        sl->op = NULL;
        sl_log(SL_LOG_WARNING, "", "forward %zu: cannot dial the exit: %s",
               f->idx, sl_error_str(&e, buf, sizeof(buf)));
        slot_retry(sl);
    }
}

/* ---- configuration ---------------------------------------------------------- */

static void
fwds_free_now(struct fwd *list)
{
    while (list != NULL) {
        struct fwd *f = list;

        list = f->next;
        sl_listener_free(f->l);
        sl_stack_free(f->lstack);
        sl_dialer_free(f->dialer);
        free(f->protocol);
        free(f);
    }
}

static struct fwd *
fwds_load(struct sl_config *cfg, struct app *a, struct sl_error *e)
{
    static const char *const keys[] = { "listen", "protocol", "exit_b2e",
                                        NULL };
    struct fwd *list = NULL, **tail = &list;
    size_t n;
    int64_t pool = 16;
    char where[512];

    if (xc_int(cfg, "/pool", 1, POOL_MAX, &pool, e) != 0 ||
        xc_array_len(cfg, "/forwards", FORWARDS_MAX, &n, e) != 0)
        return NULL;
    if (n == 0) {
        sl_error_set(e, SL_EINVAL, "", "%s: \"forwards\" must list at least "
                     "one forward", sl_config_where(cfg, "/forwards", where,
                                                    sizeof(where)));
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        char ptr[64];
        const char *proto = NULL, *key;
        json_t *obj, *v;
        struct fwd *f;
        struct sc_enc scratch;
        struct sl_error pe;

        snprintf(ptr, sizeof(ptr), "/forwards/%zu", i);
        obj = sl_config_get(cfg, ptr);
        if (!json_is_object(obj)) {
            sl_error_set(e, SL_EINVAL, "", "%s: a forward is an object "
                         "{\"listen\": STACK, \"protocol\": TEXT, "
                         "\"exit_b2e\": DIALER}",
                         sl_config_where(cfg, ptr, where, sizeof(where)));
            goto fail;
        }
        json_object_foreach(obj, key, v) {
            int ok = 0;

            for (size_t k = 0; keys[k] != NULL; k++)
                ok |= strcmp(keys[k], key) == 0;
            if (!ok) {
                char kp[128];

                snprintf(kp, sizeof(kp), "%s/%s", ptr, key);
                sl_error_set(e, SL_EINVAL, "", "%s: unknown key \"%s\" in a "
                             "forward", sl_config_where(cfg, kp, where,
                                                        sizeof(where)), key);
                goto fail;
            }
        }
        for (size_t k = 0; keys[k] != NULL; k++) {
            if (json_object_get(obj, keys[k]) == NULL) {
                sl_error_set(e, SL_EINVAL, "", "%s: the forward needs "
                             "\"%s\"", sl_config_where(cfg, ptr, where,
                                                       sizeof(where)),
                             keys[k]);
                goto fail;
            }
        }
        f = calloc(1, sizeof(*f));
        if (f == NULL) {
            sl_error_set(e, SL_ENOMEM, "", "out of memory");
            goto fail;
        }
        *tail = f;
        tail = &f->next;
        f->app = a;
        f->idx = i;
        f->npool = (size_t)pool;
        for (size_t k = 0; k < f->npool; k++)
            f->slots[k].f = f;
        snprintf(ptr, sizeof(ptr), "/forwards/%zu/protocol", i);
        if (xc_string(cfg, ptr, &proto, e) != 0)
            goto fail;
        sc_enc_init(&scratch, 65535);
        sl_error_clear(&pe);
        if (tun_b2e_meta(proto, 0, 0, &scratch, &pe) != 0) {
            sc_enc_free(&scratch);
            sl_error_set(e, pe.code, "", "%s: %s",
                         sl_config_where(cfg, ptr, where, sizeof(where)),
                         pe.text);
            goto fail;
        }
        sc_enc_free(&scratch);
        if ((f->protocol = strdup(proto)) == NULL) {
            sl_error_set(e, SL_ENOMEM, "", "out of memory");
            goto fail;
        }
        snprintf(ptr, sizeof(ptr), "/forwards/%zu/listen", i);
        if ((f->lstack = sl_config_stack(cfg, ptr, e)) == NULL)
            goto fail;
        if (sl_stack_produces(f->lstack) != SL_IO_PIPE) {
            sl_error_set(e, SL_EINVAL, "", "%s: a forward listens for plain "
                         "connections: its stack must not end in a mux",
                         sl_config_where(cfg, ptr, where, sizeof(where)));
            goto fail;
        }
        snprintf(ptr, sizeof(ptr), "/forwards/%zu/exit_b2e", i);
        if ((f->dialer = sl_config_dialer(cfg, ptr, e)) == NULL)
            goto fail;
        if (sl_dialer_produces(f->dialer) != SL_IO_SESSION) {
            sl_error_set(e, SL_EINVAL, "", "%s: exit_b2e must end in a mux "
                         "layer (e.g. \"tcp addr=EXIT:PORT | picomux\")",
                         sl_config_where(cfg, ptr, where, sizeof(where)));
            goto fail;
        }
    }
    return list;
fail:
    fwds_free_now(list);
    return NULL;
}

static struct sl_config *
conf_load(struct app *a, const char *path, int first, struct fwd **fwds,
          int64_t *idle_ms, struct sl_error *e)
{
    static const char *const keys[] = { "forwards", "pool", "idle_timeout",
                                        NULL };
    struct sl_config *cfg = sl_config_load(path, e);

    *fwds = NULL;
    *idle_ms = 1800000;
    if (cfg == NULL || sl_config_check_keys(cfg, keys, e) != 0 ||
        (first && sl_config_apply_common(cfg, "sillad-bridge", e) != 0) ||
        xc_duration(cfg, "/idle_timeout", 1000, 86400000LL * 7, idle_ms,
                    e) != 0 ||
        (*fwds = fwds_load(cfg, a, e)) == NULL) {
        sl_config_free(cfg);
        return NULL;
    }
    return cfg;
}

/* ---- listening, reload, stop -------------------------------------------- */

static void
stop_listening(struct fwd *list)
{
    for (struct fwd *f = list; f != NULL; f = f->next) {
        sl_listener_free(f->l);
        f->l = NULL;
    }
}

static int
start_listening(struct app *a, struct fwd *list, struct sl_error *e)
{
    char text[4096], addr[128];
    size_t len = 0;

    text[0] = '\0';
    for (struct fwd *f = list; f != NULL; f = f->next) {
        f->l = sl_listener_new(f->lstack, a->base, on_accept, f, e);
        if (f->l == NULL) {
            stop_listening(list);
            return e->code;
        }
        if (sl_listener_local_addr(f->l, addr, sizeof(addr)) != 0)
            snprintf(addr, sizeof(addr), "-");
        sl_log(SL_LOG_NOTICE, "", "forward %zu: listening on %s", f->idx,
               addr);
        len += (size_t)snprintf(text + len, sizeof(text) - len,
                                "forward %s\n", addr);
        if (len >= sizeof(text))
            len = sizeof(text) - 1;
    }
    if (a->addr_file != NULL && xc_write_file(a->addr_file, text, e) != 0) {
        stop_listening(list);
        return e->code;
    }
    return 0;
}

static void
start_pools(struct fwd *list)
{
    for (struct fwd *f = list; f != NULL; f = f->next)
        for (size_t i = 0; i < f->npool; i++)
            slot_dial(&f->slots[i]);
}

/* Takes f out of service: no new clients, no reconnects; its clients
 * keep their streams until they leave. */
static void
retire(struct app *a, struct fwd *f)
{
    f->retired = 1;
    sl_listener_free(f->l);
    f->l = NULL;
    while (f->queue != NULL)
        waiter_free(f->queue);
    for (size_t i = 0; i < f->npool; i++) {
        struct slot *sl = &f->slots[i];

        if (sl->retry_ev != NULL)
            evtimer_del(sl->retry_ev);
        if (sl->op != NULL)
            sl_dial_op_cancel(sl->op);
    }
    f->next = a->retired;
    a->retired = f;
}

static void
on_stop(void *arg)
{
    struct app *a = arg;

    sl_log(SL_LOG_NOTICE, "", "stopping");
    event_base_loopexit(a->base, NULL);
}

static void
on_reload(void *arg)
{
    struct app *a = arg;
    struct sl_error e, e2;
    struct sl_config *cfg;
    struct fwd *fwds;
    int64_t idle;
    char buf[512];

    sl_error_clear(&e);
    cfg = conf_load(a, a->cfg_path, 0, &fwds, &idle, &e);
    if (cfg == NULL) {
        sl_log(SL_LOG_ERR, "", "reload failed, keeping the old "
               "configuration: %s", sl_error_str(&e, buf, sizeof(buf)));
        return;
    }
    stop_listening(a->fwds);
    if (start_listening(a, fwds, &e) != 0) {
        sl_log(SL_LOG_ERR, "", "reload failed, keeping the old "
               "configuration: %s", sl_error_str(&e, buf, sizeof(buf)));
        fwds_free_now(fwds);
        sl_config_free(cfg);
        sl_error_clear(&e2);
        if (start_listening(a, a->fwds, &e2) != 0) {
            sl_log(SL_LOG_ERR, "", "cannot listen again with the old "
                   "configuration: %s", sl_error_str(&e2, buf, sizeof(buf)));
            a->exit_code = 1;
            event_base_loopexit(a->base, NULL);
        }
        return;
    }
    while (a->fwds != NULL) {
        struct fwd *f = a->fwds;

        a->fwds = f->next;
        retire(a, f);
    }
    retired_sweep(a);
    a->fwds = fwds;
    a->idle_ms = idle;
    sl_config_free(a->cfg);
    a->cfg = cfg;
    start_pools(fwds);
    sl_log(SL_LOG_NOTICE, "", "configuration reloaded");
}

static int
no_wait(void *arg)
{
    (void)arg;
    return 1;
}

static int
all_gone(void *arg)
{
    struct app *a = arg;

    retired_sweep(a);
    /* Sessions freed with frames still queued close their lower pipes
     * gracefully; those count in sl_pipe_count() until they are gone. */
    return a->retired == NULL && relay_closing() == 0 &&
           sl_pipe_count() == 0;
}

static void
shutdown_all(struct app *a)
{
    a->stopping = 1;
    while (a->fwds != NULL) {
        struct fwd *f = a->fwds;

        a->fwds = f->next;
        retire(a, f);
    }
    for (struct fwd *f = a->retired; f != NULL; f = f->next) {
        while (f->relays != NULL) {
            struct brelay *br = f->relays;

            LIST_DEL(f->relays, br);
            relay_free(br->r);
            free(br);
        }
        for (size_t i = 0; i < f->npool; i++) {
            struct slot *sl = &f->slots[i];

            /* A queued slot_reap frees its session itself. */
            if (!sl->reap_pending) {
                sl_session_free(sl->s);
                sl->s = NULL;
            }
        }
    }
    xc_drain(a->base, all_gone, a, 5000);
    /* Lingering closes that outlived the bound are cut short. */
    relay_closing_abort();
    xc_drain(a->base, no_wait, NULL, 0);
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check", no_argument, NULL, 'k' },
        { "addr-file", required_argument, NULL, 'a' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct app a;
    struct sl_error e;
    char buf[512];
    int ch, check = 0, verbose = 0;

    sl_tune_malloc();
    memset(&a, 0, sizeof(a));
    sl_log_set_prefix("sillad-bridge");
    while ((ch = getopt_long(argc, argv, "c:ka:vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': a.cfg_path = optarg; break;
        case 'k': check = 1; break;
        case 'a': a.addr_file = optarg; break;
        case 'v': verbose++; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || a.cfg_path == NULL) {
        usage(stderr);
        return 2;
    }
    sl_error_clear(&e);
    a.cfg = conf_load(&a, a.cfg_path, 1, &a.fwds, &a.idle_ms, &e);
    if (a.cfg == NULL)
        goto fail;
    if (verbose > 0)
        sl_log_set_level(verbose > 1 ? SL_LOG_DEBUG : SL_LOG_INFO);
    if (check) {
        printf("%s: configuration OK\n", a.cfg_path);
        goto out;
    }
    a.base = event_base_new();
    if (a.base == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "cannot create event loop");
        goto fail;
    }
    /* Before the address file tells that we are up: a signal sent as
     * soon as it appears must reach our handlers, not kill us. */
    a.sig = sl_signals_new(a.base, on_stop, on_reload, &a);
    if (start_listening(&a, a.fwds, &e) != 0)
        goto fail;
    start_pools(a.fwds);
    event_base_dispatch(a.base);
    goto out;
fail:
    fprintf(stderr, "sillad-bridge: %s\n",
            sl_error_str(&e, buf, sizeof(buf)));
    a.exit_code = 1;
out:
    if (a.base != NULL)
        shutdown_all(&a);
    else
        fwds_free_now(a.fwds);
    /* Anything still referenced after the drain is freed regardless. */
    while (a.retired != NULL) {
        struct fwd *f = a.retired;

        a.retired = f->next;
        for (size_t i = 0; i < f->npool; i++)
            if (f->slots[i].retry_ev != NULL)
                event_free(f->slots[i].retry_ev);
        f->next = NULL;
        fwds_free_now(f);
    }
    sl_signals_free(a.sig);
    sl_config_free(a.cfg);
    if (a.base != NULL) {
        sl_resolver_release(a.base);
        event_base_free(a.base);
    }
    sl_loader_unload_all();
    return a.exit_code;
}
