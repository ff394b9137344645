/* session.c - the core's handle on a mux layer's session. */
#include "config.h"

#include <stdlib.h>

#include "sillad.h"

struct sl_session {
    const struct sl_layer *layer;
    const struct sl_mux_ops *mux;
    void *ctx;
    sl_session_stream_fn *on_stream;
    sl_session_dead_fn *on_dead;
    void *arg;
    int dead;
    struct sl_error why;
};

static void
tramp_stream(struct sl_pipe *stream, const void *meta, size_t len, void *arg)
{
    struct sl_session *s = arg;

    if (s->on_stream == NULL) {
        sl_pipe_free(stream);
        return;
    }
    s->on_stream(s, stream, meta, len, s->arg);
}

static void
tramp_dead(const struct sl_error *why, void *arg)
{
    struct sl_session *s = arg;

    s->dead = 1;
    if (why != NULL)
        s->why = *why;
    if (s->on_dead != NULL)
        s->on_dead(s, why, s->arg);
}

struct sl_session *
core_session_new(const struct sl_layer *l, void *cfg, struct event_base *base,
                 struct sl_pipe *lower, enum sl_role role, struct sl_error *e)
{
    const struct sl_layer_ops *ops = sl_layer_get0_ops(l);
    struct sl_session *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        sl_pipe_free(lower);
        sl_error_set(e, SL_ENOMEM, ops->name, "out of memory");
        return NULL;
    }
    s->layer = l;
    s->mux = ops->mux;
    if (s->mux->session_new(cfg, base, lower, role, tramp_stream, tramp_dead,
                            s, &s->ctx, e) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

void
sl_session_setcb(struct sl_session *s, sl_session_stream_fn *on_stream,
                 sl_session_dead_fn *on_dead, void *arg)
{
    s->on_stream = on_stream;
    s->on_dead = on_dead;
    s->arg = arg;
}

int
sl_session_open(struct sl_session *s, const void *meta, size_t len,
                struct sl_pipe **stream, struct sl_error *e)
{
    if (s->dead)
        return sl_error_set(e, SL_ECLOSED, sl_session_layer(s),
                            "session is dead: %s",
                            s->why.code ? s->why.text : "closed");
    return s->mux->open(s->ctx, meta, len, stream, e);
}

int
sl_session_stats(struct sl_session *s, struct sl_mux_stats *st)
{
    if (s->mux->stats == NULL)
        return SL_ENOTSUP;
    return s->mux->stats(s->ctx, st);
}

bool
sl_session_is_dead(const struct sl_session *s)
{
    return s->dead != 0;
}

const char *
sl_session_layer(const struct sl_session *s)
{
    return sl_layer_get0_ops(s->layer)->name;
}

void
sl_session_free(struct sl_session *s)
{
    if (s == NULL)
        return;
    s->mux->session_free(s->ctx);
    free(s);
}
