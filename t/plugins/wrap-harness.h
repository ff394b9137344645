/* wrap-harness.h - what the unit tests of wrap layers (hex, conntest, tls,
 * e2e, sosistab3) share: a bounded event loop, a configured layer, a wrap
 * and its result, a pipe's user, and a raw peer on the far side of the
 * lower pipe (a socketpair or a bufferevent pair).
 *
 * Include it once, from one test program (which may define WH_WAIT_MS, the
 * longest wait for bytes, first); the test sets wh_ops and wh_plugin_ctx
 * to the layer under test and creates wh_base.
 */
#ifndef SILLAD_T_WRAP_HARNESS_H
#define SILLAD_T_WRAP_HARNESS_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "../cu.h"
#include "sillad.h"

#ifndef WH_WAIT_MS
#define WH_WAIT_MS 3000
#endif

static struct event_base *wh_base;
static const struct sl_layer_ops *wh_ops;
static void *wh_plugin_ctx;

/* ---- the loop ---------------------------------------------------------- */

typedef bool wh_cond_fn(void *arg);

/* Runs the loop in 2 ms slices until cond holds or ms pass. */
static inline bool
wh_run_until(wh_cond_fn *cond, void *arg, int ms)
{
    int64_t end = sl_now_ms() + ms;
    struct timeval tv = { 0, 2000 };

    while (!cond(arg)) {
        if (sl_now_ms() >= end)
            return false;
        event_base_loopexit(wh_base, &tv);
        event_base_dispatch(wh_base);
    }
    return true;
}

static inline bool
wh_never(void *arg)
{
    (void)arg;
    return false;
}

static inline void
wh_run_for(int ms)
{
    wh_run_until(wh_never, NULL, ms);
}

/* ---- the layer --------------------------------------------------------- */

/* A configured layer from "key", "value" pairs (NULL-terminated); NULL,
 * with *e set, when the options or configure refuse them. */
static inline void *
wh_cfg_v(struct sl_error *e, va_list ap)
{
    struct sl_opts *o = sl_opts_new();
    const char *k;
    void *cfg = NULL;
    int r = 0;

    sl_error_clear(e);
    CU_ASSERT_FATAL(o != NULL);
    while (r == 0 && (k = va_arg(ap, const char *)) != NULL)
        r = sl_opts_add(o, k, va_arg(ap, const char *), e);
    if (r == 0)
        r = sl_opts_check(o, wh_ops->opts, wh_ops->name, e);
    if (r == 0)
        r = wh_ops->configure(sl_host_get(), wh_plugin_ctx, o, &cfg, e);
    sl_opts_free(o);
    return r == 0 ? cfg : NULL;
}

static inline void *
wh_cfg_try(struct sl_error *e, ...)
{
    va_list ap;
    void *cfg;

    va_start(ap, e);
    cfg = wh_cfg_v(e, ap);
    va_end(ap);
    return cfg;
}

/* The same, asserting that it works. */
static inline void *
wh_cfg(const char *first, ...)
{
    struct sl_error e;
    va_list ap;
    void *cfg;

    /* first is a key or NULL; put it back in front of the rest. */
    if (first == NULL)
        return wh_cfg_try(&e, NULL);
    va_start(ap, first);
    {
        const char *v = va_arg(ap, const char *);
        struct sl_opts *o = sl_opts_new();
        const char *k;
        int r;

        sl_error_clear(&e);
        CU_ASSERT_FATAL(o != NULL);
        r = sl_opts_add(o, first, v, &e);
        while (r == 0 && (k = va_arg(ap, const char *)) != NULL)
            r = sl_opts_add(o, k, va_arg(ap, const char *), &e);
        if (r == 0)
            r = sl_opts_check(o, wh_ops->opts, wh_ops->name, &e);
        cfg = NULL;
        if (r == 0)
            r = wh_ops->configure(sl_host_get(), wh_plugin_ctx, o, &cfg, &e);
        sl_opts_free(o);
        if (r != 0)
            cfg = NULL;
    }
    va_end(ap);
    if (cfg == NULL)
        fprintf(stderr, "\n  configure: %s\n", e.text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    return cfg;
}

/* Result of a wrap. */
struct wh_wres {
    int calls;
    bool in_call;            /* inside wrap() or cancel() */
    bool inside;             /* done ran inside one of them */
    struct sl_pipe *p;
    struct sl_error err;
    int64_t at;              /* when done ran (sl_now_ms) */
};

static inline void
wh_wrap_done(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct wh_wres *w = arg;

    w->calls++;
    w->inside |= w->in_call;
    w->at = sl_now_ms();
    if (p != NULL && w->p == NULL)
        w->p = p;
    else
        sl_pipe_free(p);
    if (err != NULL)
        w->err = *err;
}

static inline bool
wh_wres_called(void *arg)
{
    return ((struct wh_wres *)arg)->calls > 0;
}

static inline void
wh_start_wrap(void *cfg, struct sl_pipe *lower, enum sl_role role,
              struct wh_wres *w, void **op)
{
    struct sl_error e;
    void *dummy;

    sl_error_clear(&e);
    memset(w, 0, sizeof(*w));
    w->in_call = true;
    CU_ASSERT_FATAL(wh_ops->wrap(cfg, wh_base, lower, role, wh_wrap_done, w,
                                 op != NULL ? op : &dummy, &e) == 0);
    w->in_call = false;
}

/* ---- a pipe's user ----------------------------------------------------- */

struct wh_user {
    struct evbuffer *in;
    bool eof, error;
};

static inline void
wh_user_read(struct bufferevent *bev, void *arg)
{
    struct wh_user *u = arg;

    evbuffer_add_buffer(u->in, bufferevent_get_input(bev));
}

static inline void
wh_user_event(struct bufferevent *bev, short what, void *arg)
{
    struct wh_user *u = arg;

    wh_user_read(bev, arg);
    if (what & BEV_EVENT_EOF)
        u->eof = true;
    if (what & BEV_EVENT_ERROR)
        u->error = true;
}

static inline void
wh_user_attach(struct wh_user *u, struct sl_pipe *p)
{
    memset(u, 0, sizeof(*u));
    u->in = evbuffer_new();
    sl_pipe_setcb(p, wh_user_read, NULL, wh_user_event, u);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static inline void
wh_user_free(struct wh_user *u)
{
    evbuffer_free(u->in);
    u->in = NULL;
}

struct wh_want {
    struct wh_user *u;
    size_t n;
};

static inline bool
wh_user_has(void *arg)
{
    struct wh_want *w = arg;

    return evbuffer_get_length(w->u->in) >= w->n || w->u->error ||
           w->u->eof;
}

static inline bool
wh_user_ended(void *arg)
{
    struct wh_user *u = arg;

    return u->eof || u->error;
}

/* Waits for n bytes from the pipe and checks they equal want. */
static inline void
wh_user_expect(struct wh_user *u, const void *want, size_t n)
{
    struct wh_want w = { u, n };
    uint8_t *got;

    wh_run_until(wh_user_has, &w, WH_WAIT_MS);
    CU_ASSERT_FATAL(evbuffer_get_length(u->in) >= n);
    got = evbuffer_pullup(u->in, (ev_ssize_t)n);
    CU_ASSERT(n == 0 || memcmp(got, want, n) == 0);
    evbuffer_drain(u->in, n);
}

/* ---- the raw peer ------------------------------------------------------ */

enum wh_raw_kind { WH_RAW_FD, WH_RAW_BEV };

struct wh_raw {
    enum wh_raw_kind kind;
    int fd;
    struct bufferevent *bev;
    struct evbuffer *acc;    /* everything received */
    bool eof, reset;
    int64_t closed_at;       /* when eof was seen (sl_now_ms) */
    uint8_t ss[64];          /* what the lower pipe says it shares */
    size_t ss_len;           /* 0: it shares nothing (SL_ENOENT) */
};

static inline void
wh_raw_bev_event(struct bufferevent *bev, short what, void *arg)
{
    struct wh_raw *r = arg;

    (void)bev;
    if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) && !r->eof) {
        r->eof = true;
        r->closed_at = sl_now_ms();
    }
}

static inline void
wh_raw_pump(struct wh_raw *r)
{
    if (r->kind == WH_RAW_BEV) {
        evbuffer_add_buffer(r->acc, bufferevent_get_input(r->bev));
        return;
    }
    while (!r->eof) {
        char buf[4096];
        ssize_t n = recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n > 0) {
            evbuffer_add(r->acc, buf, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        r->eof = true;
        r->reset = n < 0;
        r->closed_at = sl_now_ms();
    }
}

/* The lower pipe's end of its send direction, as tcp would do it. */
static inline int
wh_raw_lower_shutdown(void *layer_ctx, struct sl_pipe *p)
{
    struct bufferevent *bev = sl_pipe_get0_bev(p);

    (void)layer_ctx;
    if (bufferevent_getfd(bev) >= 0)
        shutdown(bufferevent_getfd(bev), SHUT_WR);
    else
        bufferevent_flush(bev, EV_WRITE, BEV_FINISHED);
    return 0;
}

/* The lower pipe answers SL_Q_SHARED_SECRET with the raw peer's ss. */
static inline int
wh_raw_lower_query(void *layer_ctx, int what, void *out, size_t *len)
{
    struct wh_raw *r = layer_ctx;

    if (what != SL_Q_SHARED_SECRET)
        return SL_ENOTSUP;
    if (r->ss_len == 0)
        return SL_ENOENT;
    if (*len < r->ss_len)
        return SL_EINVAL;
    memcpy(out, r->ss, r->ss_len);
    *len = r->ss_len;
    return 0;
}

static const struct sl_pipe_ops wh_raw_lower_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = wh_raw_lower_shutdown,
    .query = wh_raw_lower_query,
};

/* A lower pipe for the layer, and the raw end facing it.  r must outlive
 * the pipe (it answers the pipe's queries). */
static inline struct sl_pipe *
wh_raw_new(struct wh_raw *r, enum wh_raw_kind kind)
{
    struct bufferevent *bev;

    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->fd = -1;
    r->acc = evbuffer_new();
    if (kind == WH_RAW_FD) {
        int sv[2];

        CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        evutil_make_socket_nonblocking(sv[0]);
        evutil_make_socket_nonblocking(sv[1]);
        r->fd = sv[1];
        bev = bufferevent_socket_new(wh_base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    } else {
        struct bufferevent *pair[2];

        CU_ASSERT_FATAL(bufferevent_pair_new(wh_base, 0, pair) == 0);
        bev = pair[0];
        r->bev = pair[1];
        bufferevent_setcb(r->bev, NULL, NULL, wh_raw_bev_event, r);
        bufferevent_enable(r->bev, EV_READ | EV_WRITE);
    }
    CU_ASSERT_FATAL(bev != NULL);
    return sl_pipe_new("raw", bev, NULL, &wh_raw_lower_ops, r);
}

static inline void
wh_raw_free(struct wh_raw *r)
{
    if (r->fd >= 0)
        close(r->fd);
    if (r->bev != NULL)
        bufferevent_free(r->bev);
    evbuffer_free(r->acc);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}

static inline void
wh_raw_write(struct wh_raw *r, const void *data, size_t n)
{
    if (r->kind == WH_RAW_BEV) {
        bufferevent_write(r->bev, data, n);
        return;
    }
    while (n > 0) {
        ssize_t k = send(r->fd, data, n, MSG_NOSIGNAL);

        if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
            wh_run_for(1);
            continue;
        }
        CU_ASSERT_FATAL(k > 0);
        data = (const uint8_t *)data + k;
        n -= (size_t)k;
    }
}

static inline void
wh_raw_writes(struct wh_raw *r, const char *s)
{
    wh_raw_write(r, s, strlen(s));
}

static inline void
wh_raw_shutdown(struct wh_raw *r)
{
    if (r->kind == WH_RAW_BEV)
        bufferevent_flush(r->bev, EV_WRITE, BEV_FINISHED);
    else
        shutdown(r->fd, SHUT_WR);
}

struct wh_raw_want {
    struct wh_raw *r;
    size_t n;
};

static inline bool
wh_raw_has(void *arg)
{
    struct wh_raw_want *w = arg;

    wh_raw_pump(w->r);
    return evbuffer_get_length(w->r->acc) >= w->n || w->r->eof;
}

static inline bool
wh_raw_closed(void *arg)
{
    struct wh_raw *r = arg;

    wh_raw_pump(r);
    return r->eof;
}

/* Waits for n bytes and takes them into out; false if they never came. */
static inline bool
wh_raw_read(struct wh_raw *r, void *out, size_t n)
{
    struct wh_raw_want w = { r, n };

    wh_run_until(wh_raw_has, &w, WH_WAIT_MS);
    if (evbuffer_get_length(r->acc) < n)
        return false;
    evbuffer_remove(r->acc, out, n);
    return true;
}

/* Waits for the text want (exactly, and nothing more for a moment). */
static inline void
wh_raw_expect(struct wh_raw *r, const char *want)
{
    size_t n = strlen(want);
    char got[4096];

    CU_ASSERT_FATAL(n < sizeof(got));
    memset(got, 0, sizeof(got));
    CU_ASSERT_FATAL(wh_raw_read(r, got, n));
    if (memcmp(got, want, n) != 0)
        fprintf(stderr, "\n  want %s\n  got  %.*s\n", want, (int)n, got);
    CU_ASSERT(memcmp(got, want, n) == 0);
}

#endif
