/* fake.c - in-process test layers: deterministic dials for the core's
 * combinator, grammar and option tests, without any network. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "fake.h"

int fake_completions;

struct fcfg {
    const struct sl_host *h;
    int64_t delay_ms;
    int fail;
    char name[64];
};

struct fdial {
    struct fcfg *c;
    struct event_base *base;
    struct event *ev;
    sl_pipe_fn *done;
    void *arg;
    int canceled;
    struct sl_pipe *lower;   /* wrap */
};

struct fpipe {
    char name[64];
    int peer_fd;
};

static const struct sl_opt_spec fbase_opts[] = {
    { "addr", SL_OPT_ADDR, 0, "127.0.0.1:1", "address", NULL, 0, 0 },
    { "d", SL_OPT_DURATION, 0, "0", "dial delay", NULL, 0, 0 },
    { "fail", SL_OPT_BOOL, 0, "false", "fail the dial", NULL, 0, 0 },
    { "name", SL_OPT_STR, 0, "fake", "remote address to report", NULL, 0,
      0 },
    { "n", SL_OPT_INT, 0, NULL, "a number", NULL, 1, 10 },
    { "sz", SL_OPT_SIZE, 0, NULL, "a size", NULL, 0, 0 },
    { "mode", SL_OPT_ENUM, 0, "a", "a choice", "a|b|c", 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static const struct sl_opt_spec fwrap_opts[] = {
    { "key", SL_OPT_STR, SL_OPT_REQUIRED | SL_OPT_SECRET, NULL, "a secret",
      NULL, 0, 0 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

static int
fconfigure(const struct sl_host *h, void *pctx, const struct sl_opts *o,
           void **out, struct sl_error *e)
{
    struct fcfg *c = calloc(1, sizeof(*c));

    (void)pctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, "fake", "oom");
    c->h = h;
    c->delay_ms = h->opt_int(o, "d");
    c->fail = (int)h->opt_int(o, "fail");
    if (h->opt_str(o, "name") != NULL)
        snprintf(c->name, sizeof(c->name), "%s", h->opt_str(o, "name"));
    if (h->opt_str(o, "key") != NULL &&
        strcmp(h->opt_str(o, "key"), "reject") == 0) {
        free(c);
        return h->error_set(e, SL_EINVAL, "fwrap", "key rejected");
    }
    *out = c;
    return 0;
}

static void
funconfigure(void *cfg)
{
    free(cfg);
}

static int
fquery(void *ctx, int what, void *out, size_t *len)
{
    struct fpipe *fp = ctx;

    if (what != SL_Q_REMOTE_ADDR)
        return SL_ENOTSUP;
    return sl_query_answer_str(out, len, fp->name);
}

static void
fdestroy(void *ctx)
{
    struct fpipe *fp = ctx;

    if (fp->peer_fd >= 0)
        close(fp->peer_fd);
    free(fp);
}

static const struct sl_pipe_ops fpipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .query = fquery,
    .destroy = fdestroy,
};

static void
fdial_fire(evutil_socket_t fd, short what, void *arg)
{
    struct fdial *d = arg;
    struct sl_error e;
    struct sl_pipe *p = NULL;
    int sv[2];

    (void)fd;
    (void)what;
    memset(&e, 0, sizeof(e));
    if (d->canceled) {
        d->c->h->error_set(&e, SL_ECANCELED, "fbase", "cancelled");
    } else if (d->c->fail) {
        d->c->h->error_set(&e, SL_ESYS, "fbase", "dial %s failed",
                           d->c->name);
    } else if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) {
        struct fpipe *fp = calloc(1, sizeof(*fp));
        struct bufferevent *bev;

        evutil_make_socket_nonblocking(sv[0]);
        snprintf(fp->name, sizeof(fp->name), "%s", d->c->name);
        fp->peer_fd = sv[1];
        bev = bufferevent_socket_new(d->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
        p = d->c->h->pipe_new("fbase", bev, NULL, &fpipe_ops, fp);
    }
    fake_completions++;
    event_free(d->ev);
    d->done(p, p ? NULL : &e, d->arg);
    free(d);
}

static int
fdial(void *cfg, struct event_base *base, sl_pipe_fn *done, void *arg,
      void **op, struct sl_error *e)
{
    struct fcfg *c = cfg;
    struct fdial *d = calloc(1, sizeof(*d));
    struct timeval tv;

    (void)e;
    d->c = c;
    d->base = base;
    d->done = done;
    d->arg = arg;
    d->ev = evtimer_new(base, fdial_fire, d);
    tv.tv_sec = c->delay_ms / 1000;
    tv.tv_usec = (c->delay_ms % 1000) * 1000;
    evtimer_add(d->ev, &tv);
    *op = d;
    return 0;
}

static void
fcancel(void *op)
{
    struct fdial *d = op;

    d->canceled = 1;
    event_active(d->ev, EV_TIMEOUT, 0);
}

static int
flisten(void *cfg, struct event_base *base, sl_pipe_fn *on_accept, void *arg,
        void **l, struct sl_error *e)
{
    struct fcfg *c = cfg;

    (void)base;
    (void)on_accept;
    (void)arg;
    (void)l;
    return c->h->error_set(e, SL_ENOTSUP, "fbase", "fake cannot listen");
}

static void
flistener_free(void *l)
{
    (void)l;
}

/* fwrap: hands the lower pipe up unchanged after d= ms (conntest-like). */
static void
fwrap_fire(evutil_socket_t fd, short what, void *arg)
{
    struct fdial *d = arg;
    struct sl_error e;

    (void)fd;
    (void)what;
    memset(&e, 0, sizeof(e));
    event_free(d->ev);
    fake_completions++;
    if (d->canceled) {
        d->c->h->pipe_free(d->lower);
        d->c->h->error_set(&e, SL_ECANCELED, "fwrap", "cancelled");
        d->done(NULL, &e, d->arg);
    } else {
        d->done(d->lower, NULL, d->arg);
    }
    free(d);
}

static int
fwrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
      enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
      struct sl_error *e)
{
    struct fdial *d = calloc(1, sizeof(*d));

    (void)role;
    (void)e;
    d->c = cfg;
    d->base = base;
    d->lower = lower;
    d->done = done;
    d->arg = arg;
    d->ev = event_new(base, -1, 0, fwrap_fire, d);
    event_active(d->ev, EV_TIMEOUT, 0);
    *op = d;
    return 0;
}

static int
fsession_new(void *cfg, struct event_base *base, struct sl_pipe *lower,
             enum sl_role role, sl_stream_fn *on_stream, sl_dead_fn *on_dead,
             void *arg, void **session, struct sl_error *e)
{
    (void)cfg;
    (void)base;
    (void)role;
    (void)on_stream;
    (void)on_dead;
    (void)arg;
    (void)session;
    sl_pipe_free(lower);
    return sl_error_set(e, SL_ENOTSUP, "fmux", "fake mux has no sessions");
}

static int
fopen_stream(void *s, const void *m, size_t l, struct sl_pipe **p,
             struct sl_error *e)
{
    (void)s;
    (void)m;
    (void)l;
    (void)p;
    return sl_error_set(e, SL_ENOTSUP, "fmux", "no");
}

static void
fsession_free(void *s)
{
    (void)s;
}

static const struct sl_mux_ops fmux_ops = {
    .struct_size = sizeof(struct sl_mux_ops),
    .session_new = fsession_new,
    .open = fopen_stream,
    .session_free = fsession_free,
};

static const struct sl_layer_ops fbase = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = "fbase", .summary = "fake base", .kind = SL_KIND_BASE,
    .consumes = SL_IO_NONE, .produces = SL_IO_PIPE, .opts = fbase_opts,
    .configure = fconfigure, .unconfigure = funconfigure, .dial = fdial,
    .listen = flisten, .listener_free = flistener_free, .cancel = fcancel,
};

static const struct sl_layer_ops fwrapl = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = "fwrap", .summary = "fake wrap", .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE, .produces = SL_IO_PIPE, .opts = fwrap_opts,
    .configure = fconfigure, .unconfigure = funconfigure, .wrap = fwrap,
    .cancel = fcancel,
};

static const struct sl_layer_ops fmux = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = "fmux", .summary = "fake mux", .kind = SL_KIND_MUX,
    .consumes = SL_IO_PIPE, .produces = SL_IO_SESSION,
    .configure = fconfigure, .unconfigure = funconfigure, .mux = &fmux_ops,
};

/* Refuses to run with another libevent major.minor, as every plugin
 * must; the tests run this through the loader's init path too. */
static int
finit(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    return sl_check_libevent(h, "fake", e);
}

static const struct sl_layer_ops *const fake_layers[] = {
    &fbase, &fwrapl, &fmux, NULL,
};

SL_PLUGIN_DEFINE(fake, "test layers", "1", "ISC", "tests", fake_layers,
                 finit, NULL)

void
fake_register(void)
{
    struct sl_error e;

    memset(&e, 0, sizeof(e));
    /* No CUnit assertion here: the fuzz target shares this file. */
    if (sl_layer_find("fbase") == NULL &&
        sl_loader_register(sl_plugin_fake_describe(), "fake", &e) != 0) {
        fprintf(stderr, "fake plugin refused: %s\n", e.text);
        abort();
    }
}

static void
flag_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

int
run_until(struct event_base *base, const int *flag, int ms)
{
    int expired = 0;
    struct event *t = evtimer_new(base, flag_timeout, &expired);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

    evtimer_add(t, &tv);
    while (!*flag && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *flag;
}
