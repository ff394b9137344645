/* dial.c - running stacks: dialing (with combinators) and listening.
 *
 * Dialing a stack runs its layers bottom-up: the base layer dials, each
 * wrap layer wraps the pipe so far (client side), a mux layer starts a
 * session; a layer above a mux runs on a stream opened on that session,
 * which the stream then owns.  Listening runs the same steps server-side
 * for each accepted pipe, with a layer above a mux running on every stream
 * the peer opens.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sillad.h"
#include "stack-int.h"

#define DIAL_MAX_KIDS 16
#define DIAL_MAX_DEPTH 8

enum dtype { D_STACK, D_RACE, D_FALLBACK, D_TIMEOUT, D_DELAY };

struct sl_dialer {
    enum dtype type;
    struct sl_stack *stack;               /* D_STACK */
    struct sl_dialer *kid[DIAL_MAX_KIDS];
    size_t nkids;
    int64_t ms;                           /* D_TIMEOUT, D_DELAY */
    unsigned refs;              /* the owner's, and one per attempt of it */
};

struct sl_dial_op {
    struct sl_dialer *d;        /* holds a reference */
    struct event_base *base;
    sl_conn_fn *cb;
    void *arg;
    struct event *defer_ev;     /* delivers the result from the loop */
    struct event *timer_ev;     /* timeout / delay */
    unsigned canceled : 1;
    unsigned delivered : 1;
    unsigned timed_out : 1;
    /* result waiting for defer_ev */
    struct sl_pipe *rp;
    struct sl_session *rs;
    struct sl_error rerr;
    /* D_STACK state */
    size_t i;
    void *layer_op;
    const struct sl_layer_ops *layer_ops;
    struct sl_pipe *pipe;
    struct sl_session *sess;
    /* combinator state */
    struct sl_dial_op *kid[DIAL_MAX_KIDS];
    size_t pending;             /* kids that have not called back yet */
    size_t next;                /* fallback: next kid to try */
    struct sl_error kid_err;
};

static const char *const dtype_name[] = {
    "stack", "race", "fallback", "timeout", "delay",
};

/* ---- dialer trees -------------------------------------------------------- */

static struct sl_dialer *
dialer_new(void)
{
    struct sl_dialer *d = calloc(1, sizeof(*d));

    if (d != NULL)
        d->refs = 1;
    return d;
}

void
sl_dialer_free(struct sl_dialer *d)
{
    /* Attempts in progress (cancelled ones, race losers) keep using the
     * dialer, and its stack's layer configurations, until they are done. */
    if (d == NULL || --d->refs > 0)
        return;
    sl_stack_free(d->stack);
    for (size_t i = 0; i < d->nkids; i++)
        sl_dialer_free(d->kid[i]);
    free(d);
}

struct sl_dialer *
sl_dialer_from_stack(struct sl_stack *s)
{
    struct sl_dialer *d = dialer_new();

    if (d == NULL) {
        sl_stack_free(s);
        return NULL;
    }
    d->type = D_STACK;
    d->stack = s;
    return d;
}

int
sl_dialer_produces(const struct sl_dialer *d)
{
    if (d->type == D_STACK)
        return sl_stack_produces(d->stack);
    return sl_dialer_produces(d->kid[0]);
}

static int
check_kids_agree(struct sl_dialer *d, const char *where, struct sl_error *e)
{
    for (size_t i = 1; i < d->nkids; i++)
        if (sl_dialer_produces(d->kid[i]) != sl_dialer_produces(d->kid[0]))
            return sl_error_set(e, SL_EINVAL, "", "%s: %s(): alternative %zu "
                                "ends in a %s but alternative 1 in a %s",
                                where, dtype_name[d->type], i + 1,
                                sl_dialer_produces(d->kid[i]) ==
                                        SL_IO_SESSION ? "mux" : "pipe",
                                sl_dialer_produces(d->kid[0]) ==
                                        SL_IO_SESSION ? "mux" : "pipe");
    return 0;
}

static struct sl_dialer *
parse_dialer(const char *t, size_t *pos, int depth, struct sl_error *e)
{
    static const char *const names[] = { "race", "fallback", "timeout",
                                         "delay" };
    struct sl_dialer *d;
    size_t n, save;

    core_lex_skip_ws(t, pos);
    n = core_lex_word(t, *pos);
    save = *pos + n;
    core_lex_skip_ws(t, &save);
    for (size_t k = 0; n > 0 && k < 4; k++) {
        if (strlen(names[k]) != n || strncmp(t + *pos, names[k], n) != 0 ||
            t[save] != '(')
            continue;
        if (depth >= DIAL_MAX_DEPTH) {
            sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: nested "
                         "deeper than %d", *pos + 1, DIAL_MAX_DEPTH);
            return NULL;
        }
        d = dialer_new();
        if (d == NULL) {
            sl_error_set(e, SL_ENOMEM, "", "out of memory");
            return NULL;
        }
        d->type = (enum dtype)(D_RACE + k);
        *pos = save + 1;
        if (d->type == D_TIMEOUT || d->type == D_DELAY) {
            char dur[32];
            size_t dl;

            core_lex_skip_ws(t, pos);
            dl = core_lex_word(t, *pos);
            if (dl == 0 || dl >= sizeof(dur)) {
                sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: %s() "
                             "needs a duration first, e.g. %s(5s, ...)",
                             *pos + 1, names[k], names[k]);
                goto fail;
            }
            memcpy(dur, t + *pos, dl);
            dur[dl] = '\0';
            if (sl_parse_duration_ms(dur, &d->ms) != 0) {
                sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: '%s' is "
                             "not a duration (e.g. 250ms, 5s)", *pos + 1,
                             dur);
                goto fail;
            }
            *pos += dl;
            core_lex_skip_ws(t, pos);
            if (t[*pos] != ',') {
                sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: "
                             "expected ',' after the duration", *pos + 1);
                goto fail;
            }
            (*pos)++;
        }
        for (;;) {
            if (d->nkids >= DIAL_MAX_KIDS) {
                sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: more "
                             "than %d alternatives", *pos + 1,
                             DIAL_MAX_KIDS);
                goto fail;
            }
            d->kid[d->nkids] = parse_dialer(t, pos, depth + 1, e);
            if (d->kid[d->nkids] == NULL)
                goto fail;
            d->nkids++;
            core_lex_skip_ws(t, pos);
            if (t[*pos] == ')') {
                (*pos)++;
                break;
            }
            if (t[*pos] != ',') {
                sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: "
                             "expected ',' or ')' in %s(...)", *pos + 1,
                             names[k]);
                goto fail;
            }
            (*pos)++;
        }
        if ((d->type == D_TIMEOUT || d->type == D_DELAY) && d->nkids != 1) {
            sl_error_set(e, SL_EINVAL, "", "dialer: %s() takes a duration "
                         "and exactly one dialer", names[k]);
            goto fail;
        }
        if (check_kids_agree(d, "dialer", e) != 0)
            goto fail;
        return d;
fail:
        sl_dialer_free(d);
        return NULL;
    }
    {
        struct core_stack_spec sp = { 0 };
        struct sl_stack *s;

        if (core_stack_lex(t, pos, &sp, e) != 0) {
            core_stack_spec_free(&sp);
            return NULL;
        }
        s = core_stack_build(&sp, e);
        if (s == NULL)
            return NULL;
        d = sl_dialer_from_stack(s);
        if (d == NULL)
            sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return d;
    }
}

struct sl_dialer *
sl_dialer_parse(const char *text, struct sl_error *e)
{
    size_t pos = 0;
    struct sl_dialer *d = parse_dialer(text, &pos, 0, e);

    if (d == NULL)
        return NULL;
    core_lex_skip_ws(text, &pos);
    if (text[pos] != '\0') {
        sl_error_set(e, SL_EINVAL, "", "dialer: column %zu: unexpected '%c' "
                     "(quote values containing | , ( or ))", pos + 1,
                     text[pos]);
        sl_dialer_free(d);
        return NULL;
    }
    return d;
}

static struct sl_dialer *
from_json(json_t *j, const char *where, int depth, struct sl_error *e)
{
    struct sl_dialer *d;
    json_t *v;
    const char *k;
    int type = -1;

    if (json_is_string(j)) {
        struct sl_error pe;

        sl_error_clear(&pe);
        d = sl_dialer_parse(json_string_value(j), &pe);
        if (d == NULL)
            sl_error_set(e, pe.code, "", "%s: %s", where, pe.text);
        return d;
    }
    if (json_is_array(j)) {
        struct core_stack_spec sp = { 0 };
        struct sl_stack *s = NULL;

        if (core_stack_spec_from_json(j, where, &sp, e) == 0)
            s = core_stack_build(&sp, e);
        core_stack_spec_free(&sp);
        return s ? sl_dialer_from_stack(s) : NULL;
    }
    if (!json_is_object(j) || depth >= DIAL_MAX_DEPTH) {
        sl_error_set(e, SL_EINVAL, "", "%s: expected a stack (string or "
                     "array) or a combinator object {\"race\":[...]}, "
                     "{\"fallback\":[...]}, {\"timeout\":\"5s\",\"dial\":..}"
                     " or {\"delay\":\"1s\",\"dial\":..}", where);
        return NULL;
    }
    json_object_foreach(j, k, v) {
        int t = -1;

        for (int i = D_RACE; i <= D_DELAY; i++)
            if (strcmp(k, dtype_name[i]) == 0)
                t = i;
        if (t < 0 && strcmp(k, "dial") != 0) {
            sl_error_set(e, SL_EINVAL, "", "%s: unknown key \"%s\" in a "
                         "dialer object", where, k);
            return NULL;
        }
        if (t >= 0 && type >= 0) {
            sl_error_set(e, SL_EINVAL, "", "%s: both \"%s\" and \"%s\" in "
                         "one dialer object", where, dtype_name[type], k);
            return NULL;
        }
        if (t >= 0)
            type = t;
    }
    if (type < 0) {
        sl_error_set(e, SL_EINVAL, "", "%s: dialer object needs one of "
                     "race, fallback, timeout, delay", where);
        return NULL;
    }
    d = dialer_new();
    if (d == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    d->type = (enum dtype)type;
    v = json_object_get(j, dtype_name[type]);
    if (type == D_RACE || type == D_FALLBACK) {
        size_t i;
        json_t *kid;

        if (json_object_get(j, "dial") != NULL || !json_is_array(v) ||
            json_array_size(v) == 0 ||
            json_array_size(v) > DIAL_MAX_KIDS) {
            sl_error_set(e, SL_EINVAL, "", "%s: \"%s\" takes an array of 1 "
                         "to %d dialers", where, dtype_name[type],
                         DIAL_MAX_KIDS);
            goto fail;
        }
        json_array_foreach(v, i, kid) {
            char w[160];

            snprintf(w, sizeof(w), "%s.%s[%zu]", where, dtype_name[type], i);
            d->kid[i] = from_json(kid, w, depth + 1, e);
            if (d->kid[i] == NULL)
                goto fail;
            d->nkids = i + 1;
        }
    } else {
        char w[160];
        json_t *dial = json_object_get(j, "dial");

        if (!(json_is_string(v) &&
              sl_parse_duration_ms(json_string_value(v), &d->ms) == 0) &&
            !(json_is_integer(v) && json_integer_value(v) >= 0 &&
              (d->ms = json_integer_value(v), 1))) {
            sl_error_set(e, SL_EINVAL, "", "%s: \"%s\" must be a duration "
                         "(\"5s\") or milliseconds", where, dtype_name[type]);
            goto fail;
        }
        if (dial == NULL) {
            sl_error_set(e, SL_EINVAL, "", "%s: \"%s\" needs \"dial\"", where,
                         dtype_name[type]);
            goto fail;
        }
        snprintf(w, sizeof(w), "%s.dial", where);
        d->kid[0] = from_json(dial, w, depth + 1, e);
        if (d->kid[0] == NULL)
            goto fail;
        d->nkids = 1;
    }
    if (check_kids_agree(d, where, e) != 0)
        goto fail;
    return d;
fail:
    sl_dialer_free(d);
    return NULL;
}

struct sl_dialer *
sl_dialer_from_json(const void *json, const char *where, struct sl_error *e)
{
    return from_json((json_t *)json, where, 0, e);
}

/* ---- dial operations ----------------------------------------------------- */

static void op_start(struct sl_dial_op *op);
static void kid_done(struct sl_pipe *p, struct sl_session *s,
                     const struct sl_error *err, void *arg);

static void
op_free(struct sl_dial_op *op)
{
    if (op->defer_ev != NULL)
        event_free(op->defer_ev);
    if (op->timer_ev != NULL)
        event_free(op->timer_ev);
    sl_pipe_free(op->rp);
    sl_session_free(op->rs);
    sl_dialer_free(op->d);
    free(op);
}

static void
deliver_ev(evutil_socket_t fd, short what, void *arg)
{
    struct sl_dial_op *op = arg;
    struct sl_pipe *p = op->rp;
    struct sl_session *s = op->rs;
    struct sl_error err = op->rerr;

    (void)fd;
    (void)what;
    op->rp = NULL;
    op->rs = NULL;
    if (op->canceled && err.code == 0) {
        /* Cancelled after success: the caller no longer wants it. */
        sl_pipe_free(p);
        sl_session_free(s);
        p = NULL;
        s = NULL;
        sl_error_set(&err, SL_ECANCELED, "", "dial cancelled");
    }
    op->delivered = 1;
    op->cb(p, s, err.code ? &err : NULL, op->arg);
    if (op->pending == 0)
        op_free(op);
}

/* Queues the result; the callback runs from the loop, exactly once. */
static void
finish(struct sl_dial_op *op, struct sl_pipe *p, struct sl_session *s,
       const struct sl_error *err)
{
    if (op->delivered || event_pending(op->defer_ev, EV_TIMEOUT, NULL) ||
        op->rp != NULL || op->rs != NULL || op->rerr.code != 0) {
        /* Already finishing (a late result from a race): drop it. */
        sl_pipe_free(p);
        sl_session_free(s);
        return;
    }
    if (op->timer_ev != NULL)
        evtimer_del(op->timer_ev);
    op->rp = p;
    op->rs = s;
    if (p != NULL)
        sl_pipe_hold(p);     /* events until the caller sets callbacks */
    if (err != NULL && err->code != 0)
        op->rerr = *err;
    else if (p == NULL && s == NULL)
        sl_error_set(&op->rerr, SL_ECANCELED, "", "dial cancelled");
    event_active(op->defer_ev, EV_TIMEOUT, 0);
}

static void stack_advance(struct sl_dial_op *op);

static void
layer_done(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct sl_dial_op *op = arg;
    struct sl_error e2;

    op->layer_op = NULL;
    core_pipe_handover(p);
    if (p == NULL) {
        sl_error_clear(&e2);
        if (err != NULL && err->code != 0)
            e2 = *err;
        else
            sl_error_set(&e2, SL_EPROTO, op->layer_ops->name,
                         "failed without a reason");
        finish(op, NULL, NULL, &e2);
        return;
    }
    op->pipe = p;
    if (op->canceled) {
        op->pipe = NULL;
        sl_pipe_free(p);
        finish(op, NULL, NULL, NULL);
        return;
    }
    op->i++;
    stack_advance(op);
}

static void
stack_advance(struct sl_dial_op *op)
{
    const struct sl_stack *st = op->d->stack;
    struct sl_error e;

    sl_error_clear(&e);
    while (op->i < st->n) {
        const struct sl_stack_layer *sl = &st->l[op->i];

        if (op->sess != NULL) {
            /* A layer above a mux runs on a fresh stream of it; the
             * stream owns the session, which dies with it. */
            struct sl_pipe *stream = NULL;

            if (sl_session_open(op->sess, "", 0, &stream, &e) != 0) {
                sl_session_free(op->sess);
                op->sess = NULL;
                finish(op, NULL, NULL, &e);
                return;
            }
            sl_pipe_attach_session(stream, op->sess);
            op->sess = NULL;
            op->pipe = stream;
        }
        op->layer_ops = sl->ops;
        if (sl->ops->kind == SL_KIND_MUX) {
            struct sl_pipe *lower = op->pipe;

            op->pipe = NULL;
            op->sess = core_session_new(sl->layer, sl->cfg, op->base, lower,
                                        SL_ROLE_CLIENT, &e);
            if (op->sess == NULL) {
                finish(op, NULL, NULL, &e);
                return;
            }
            op->i++;
            continue;
        }
        {
            struct sl_pipe *lower = op->pipe;

            op->pipe = NULL;
            if (sl->ops->wrap(sl->cfg, op->base, lower, SL_ROLE_CLIENT,
                              layer_done, op, &op->layer_op, &e) != 0) {
                op->layer_op = NULL;
                finish(op, NULL, NULL, &e);
            }
            return;
        }
    }
    {
        struct sl_pipe *p = op->pipe;
        struct sl_session *s = op->sess;

        op->pipe = NULL;
        op->sess = NULL;
        finish(op, p, s, NULL);
    }
}

static void
timer_fired(evutil_socket_t fd, short what, void *arg)
{
    struct sl_dial_op *op = arg;

    (void)fd;
    (void)what;
    if (op->d->type == D_DELAY) {
        op->pending = 0;
        if (op->canceled) {
            finish(op, NULL, NULL, NULL);
            return;
        }
        op->next = 1;
        op->pending = 1;
        op->kid[0] = NULL;
        {
            struct sl_error e;

            sl_error_clear(&e);
            if (sl_dialer_dial(op->d->kid[0], op->base, kid_done, op,
                               &op->kid[0], &e) != 0) {
                op->pending = 0;
                finish(op, NULL, NULL, &e);
            }
        }
        return;
    }
    /* D_TIMEOUT: cancel the attempt; its ECANCELED becomes ETIMEDOUT. */
    op->timed_out = 1;
    if (op->kid[0] != NULL && op->pending > 0)
        sl_dial_op_cancel(op->kid[0]);
}

static void
kid_done(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
         void *arg)
{
    struct sl_dial_op *op = arg;
    size_t idx;
    struct sl_error e;

    for (idx = 0; idx < op->d->nkids; idx++)
        if (op->kid[idx] != NULL && op->kid[idx]->arg == op &&
            op->kid[idx]->delivered)
            break;
    if (idx < op->d->nkids)
        op->kid[idx] = NULL;
    op->pending--;
    sl_error_clear(&e);
    if (p != NULL || s != NULL) {
        if (op->d->type == D_RACE) {
            /* First success wins; the others are cancelled. */
            for (size_t i = 0; i < op->d->nkids; i++)
                if (op->kid[i] != NULL)
                    sl_dial_op_cancel(op->kid[i]);
        }
        finish(op, p, s, NULL);
    } else {
        if (err != NULL && op->kid_err.code == 0)
            op->kid_err = *err;
        else if (err != NULL && err->code != SL_ECANCELED)
            op->kid_err = *err;   /* keep the latest real failure */
        if (op->d->type == D_FALLBACK && !op->canceled &&
            op->next < op->d->nkids) {
            size_t k = op->next++;

            op->pending++;
            if (sl_dialer_dial(op->d->kid[k], op->base, kid_done, op,
                               &op->kid[k], &e) != 0) {
                op->pending--;
                finish(op, NULL, NULL, &e);
            }
        } else if (op->pending == 0) {
            if (op->d->type == D_TIMEOUT && op->timed_out && !op->canceled) {
                sl_error_set(&e, SL_ETIMEDOUT, "", "dial timed out after "
                             "%lld ms", (long long)op->d->ms);
                finish(op, NULL, NULL, &e);
            } else if (op->canceled) {
                finish(op, NULL, NULL, NULL);
            } else {
                finish(op, NULL, NULL, &op->kid_err);
            }
        }
    }
    if (op->delivered && op->pending == 0 &&
        !event_pending(op->defer_ev, EV_TIMEOUT, NULL))
        op_free(op);
}

static void
op_start(struct sl_dial_op *op)
{
    struct sl_error e;
    const struct sl_dialer *d = op->d;
    struct timeval tv;

    sl_error_clear(&e);
    switch (d->type) {
    case D_STACK: {
        const struct sl_stack_layer *sl = &d->stack->l[0];

        op->layer_ops = sl->ops;
        if (d->stack->above) {
            sl_error_set(&e, SL_EINVAL, "", "a stack that runs above a pipe "
                         "cannot be dialed on its own");
            finish(op, NULL, NULL, &e);
            return;
        }
        if (sl->ops->dial(sl->cfg, op->base, layer_done, op, &op->layer_op,
                          &e) != 0) {
            op->layer_op = NULL;
            finish(op, NULL, NULL, &e);
        }
        return;
    }
    case D_RACE:
    case D_FALLBACK: {
        size_t n = d->type == D_RACE ? d->nkids : 1;

        op->next = n;
        for (size_t i = 0; i < n; i++) {
            op->pending++;
            if (sl_dialer_dial(d->kid[i], op->base, kid_done, op, &op->kid[i],
                               &e) != 0) {
                op->pending--;
                finish(op, NULL, NULL, &e);
                return;
            }
        }
        return;
    }
    case D_TIMEOUT:
    case D_DELAY:
        tv.tv_sec = d->ms / 1000;
        tv.tv_usec = (d->ms % 1000) * 1000;
        evtimer_add(op->timer_ev, &tv);
        if (d->type == D_DELAY) {
            op->pending = 1;   /* the timer counts as a pending kid */
            return;
        }
        op->pending = 1;
        if (sl_dialer_dial(d->kid[0], op->base, kid_done, op, &op->kid[0],
                           &e) != 0) {
            op->pending = 0;
            finish(op, NULL, NULL, &e);
        }
        return;
    }
}

int
sl_dialer_dial(struct sl_dialer *d, struct event_base *base, sl_conn_fn *cb,
               void *arg, struct sl_dial_op **opp, struct sl_error *e)
{
    struct sl_dial_op *op = calloc(1, sizeof(*op));

    if (op == NULL)
        return sl_error_set(e, SL_ENOMEM, "", "out of memory");
    op->d = d;
    d->refs++;
    op->base = base;
    op->cb = cb;
    op->arg = arg;
    op->defer_ev = event_new(base, -1, 0, deliver_ev, op);
    if (d->type == D_TIMEOUT || d->type == D_DELAY)
        op->timer_ev = evtimer_new(base, timer_fired, op);
    if (op->defer_ev == NULL ||
        ((d->type == D_TIMEOUT || d->type == D_DELAY) &&
         op->timer_ev == NULL)) {
        op_free(op);
        return sl_error_set(e, SL_ENOMEM, "", "out of memory");
    }
    if (opp != NULL)
        *opp = op;
    op_start(op);
    return 0;
}

void
sl_dial_op_cancel(struct sl_dial_op *op)
{
    if (op->canceled || op->delivered)
        return;
    op->canceled = 1;
    switch (op->d->type) {
    case D_STACK:
        if (op->layer_op != NULL)
            op->layer_ops->cancel(op->layer_op);
        break;
    case D_DELAY:
        if (op->kid[0] == NULL && evtimer_pending(op->timer_ev, NULL)) {
            evtimer_del(op->timer_ev);
            op->pending = 0;
            finish(op, NULL, NULL, NULL);
            break;
        }
        /* fall through */
    default:
        for (size_t i = 0; i < op->d->nkids; i++)
            if (op->kid[i] != NULL)
                sl_dial_op_cancel(op->kid[i]);
        break;
    }
}

/* ---- listening ----------------------------------------------------------- */

struct pending {
    struct sl_listener *l;     /* NULL once the listener is gone */
    size_t i;
    void *layer_op;
    const struct sl_layer_ops *layer_ops;
    char peer[64];
    struct pending *prev, *next;
};

struct lsess {
    struct sl_listener *l;
    struct sl_session *s;
    size_t next_i;
    int dying;                 /* a deferred lsess_free_deferred is queued */
    struct lsess *prev, *next;
};

struct sl_listener {
    struct sl_stack *stack;
    struct event_base *base;
    sl_conn_fn *cb;
    void *arg;
    void *base_listener;       /* NULL for a listener above pipes */
    struct pending *pend;
    struct lsess *sess;
};

static void pend_advance(struct pending *pd, struct sl_pipe *p);

static void
pend_unlink(struct pending *pd)
{
    if (pd->l == NULL)
        return;
    if (pd->prev != NULL)
        pd->prev->next = pd->next;
    else
        pd->l->pend = pd->next;
    if (pd->next != NULL)
        pd->next->prev = pd->prev;
    pd->l = NULL;
}

static void
pend_done(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct pending *pd = arg;
    char buf[256];

    pd->layer_op = NULL;
    core_pipe_handover(p);
    if (pd->l == NULL) {
        sl_pipe_free(p);
        free(pd);
        return;
    }
    if (p == NULL) {
        sl_log(SL_LOG_INFO, "", "stack layer %zu (%s): handshake with %s "
               "failed: %s", pd->i + 1, pd->layer_ops->name,
               pd->peer[0] ? pd->peer : "peer",
               err ? sl_error_str(err, buf, sizeof(buf)) : "no reason");
        pend_unlink(pd);
        free(pd);
        return;
    }
    pd->i++;
    pend_advance(pd, p);
}

static void
lsess_free(struct lsess *ls)
{
    if (ls->prev != NULL)
        ls->prev->next = ls->next;
    else
        ls->l->sess = ls->next;
    if (ls->next != NULL)
        ls->next->prev = ls->prev;
    sl_session_free(ls->s);
    free(ls);
}

static void
lsess_free_deferred(void *arg)
{
    struct lsess *ls = arg;

    if (ls->l != NULL)
        lsess_free(ls);
    else
        free(ls);
}

static void
lsess_dead(struct sl_session *s, const struct sl_error *why, void *arg)
{
    struct lsess *ls = arg;
    char buf[256];

    (void)s;
    sl_log(SL_LOG_INFO, "", "%s session ended: %s", sl_session_layer(s),
           why ? sl_error_str(why, buf, sizeof(buf)) : "closed");
    /* Not from inside the mux's own callback. */
    if (ls->dying)
        return;
    ls->dying = 1;
    if (sl_defer(ls->l->base, lsess_free_deferred, ls) != 0)
        lsess_free(ls);
}

static struct pending *
pend_new(struct sl_listener *l, size_t i, struct sl_pipe *p)
{
    struct pending *pd = calloc(1, sizeof(*pd));

    if (pd == NULL)
        return NULL;
    pd->l = l;
    pd->i = i;
    sl_pipe_remote_addr(p, pd->peer, sizeof(pd->peer));
    pd->next = l->pend;
    if (l->pend != NULL)
        l->pend->prev = pd;
    l->pend = pd;
    return pd;
}

static void
lsess_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
             size_t len, void *arg)
{
    struct lsess *ls = arg;
    struct pending *pd;

    (void)s;
    (void)meta;
    (void)len;
    pd = pend_new(ls->l, ls->next_i, stream);
    if (pd == NULL) {
        sl_pipe_free(stream);
        return;
    }
    pend_advance(pd, stream);
}

static void
pend_advance(struct pending *pd, struct sl_pipe *p)
{
    struct sl_listener *l = pd->l;
    const struct sl_stack *st = l->stack;
    struct sl_error e;
    char buf[256];

    sl_error_clear(&e);
    while (pd->i < st->n) {
        const struct sl_stack_layer *sl = &st->l[pd->i];

        pd->layer_ops = sl->ops;
        if (sl->ops->kind == SL_KIND_MUX) {
            struct sl_session *s = core_session_new(sl->layer, sl->cfg,
                                                    l->base, p,
                                                    SL_ROLE_SERVER, &e);
            struct lsess *ls;

            p = NULL;
            if (s == NULL)
                goto fail;
            if (pd->i + 1 == st->n) {
                pend_unlink(pd);
                free(pd);
                l->cb(NULL, s, NULL, l->arg);
                return;
            }
            ls = calloc(1, sizeof(*ls));
            if (ls == NULL) {
                sl_session_free(s);
                sl_error_set(&e, SL_ENOMEM, "", "out of memory");
                goto fail;
            }
            ls->l = l;
            ls->s = s;
            ls->next_i = pd->i + 1;
            ls->next = l->sess;
            if (l->sess != NULL)
                l->sess->prev = ls;
            l->sess = ls;
            sl_session_setcb(s, lsess_stream, lsess_dead, ls);
            pend_unlink(pd);
            free(pd);
            return;
        }
        if (sl->ops->wrap(sl->cfg, l->base, p, SL_ROLE_SERVER, pend_done, pd,
                          &pd->layer_op, &e) != 0) {
            pd->layer_op = NULL;
            p = NULL;
            goto fail;
        }
        return;
    }
    pend_unlink(pd);
    free(pd);
    l->cb(p, NULL, NULL, l->arg);
    return;
fail:
    sl_log(SL_LOG_INFO, "", "stack layer %zu (%s): %s", pd->i + 1,
           pd->layer_ops->name, sl_error_str(&e, buf, sizeof(buf)));
    sl_pipe_free(p);
    pend_unlink(pd);
    free(pd);
}

static void
base_accept(struct sl_pipe *p, const struct sl_error *err, void *arg)
{
    struct sl_listener *l = arg;
    struct pending *pd;
    char buf[256];

    if (p == NULL) {
        sl_log(SL_LOG_WARNING, "", "accept: %s",
               err ? sl_error_str(err, buf, sizeof(buf)) : "failed");
        return;
    }
    core_pipe_handover(p);
    pd = pend_new(l, 1, p);
    if (pd == NULL) {
        sl_pipe_free(p);
        return;
    }
    pend_advance(pd, p);
}

struct sl_listener *
sl_listener_new(struct sl_stack *s, struct event_base *base, sl_conn_fn *cb,
                void *arg, struct sl_error *e)
{
    struct sl_listener *l;
    const struct sl_stack_layer *b = &s->l[0];

    if (s->above) {
        sl_error_set(e, SL_EINVAL, "", "a stack that runs above a pipe "
                     "has no base layer to listen with (use "
                     "sl_listener_new_above)");
        return NULL;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    l->stack = s;
    l->base = base;
    l->cb = cb;
    l->arg = arg;
    if (b->ops->listen(b->cfg, base, base_accept, l, &l->base_listener, e)
        != 0) {
        free(l);
        return NULL;
    }
    return l;
}

struct sl_listener *
sl_listener_new_above(struct sl_stack *s, struct event_base *base,
                      sl_conn_fn *cb, void *arg, struct sl_error *e)
{
    struct sl_listener *l;

    if (!s->above) {
        sl_error_set(e, SL_EINVAL, "", "this stack starts with a base "
                     "layer; parse it with sl_stack_parse_above to run it "
                     "above pipes");
        return NULL;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    l->stack = s;
    l->base = base;
    l->cb = cb;
    l->arg = arg;
    return l;
}

int
sl_listener_feed(struct sl_listener *l, struct sl_pipe *p)
{
    struct pending *pd;

    if (l->base_listener != NULL || !l->stack->above) {
        sl_pipe_free(p);
        return SL_EINVAL;
    }
    pd = pend_new(l, 0, p);
    if (pd == NULL) {
        sl_pipe_free(p);
        return SL_ENOMEM;
    }
    pend_advance(pd, p);
    return 0;
}

int
sl_listener_local_addr(struct sl_listener *l, char *buf, size_t len)
{
    const struct sl_layer_ops *ops = l->stack->l[0].ops;

    if (l->base_listener == NULL || ops->listener_query == NULL)
        return SL_ENOTSUP;
    return ops->listener_query(l->base_listener, SL_Q_LOCAL_ADDR, buf, &len);
}

void
sl_listener_free(struct sl_listener *l)
{
    if (l == NULL)
        return;
    if (l->base_listener != NULL)
        l->stack->l[0].ops->listener_free(l->base_listener);
    while (l->pend != NULL) {
        struct pending *pd = l->pend;

        pend_unlink(pd);
        /* The layer calls pend_done later with ECANCELED; pd->l is NULL
         * so it only frees. */
        if (pd->layer_op != NULL)
            pd->layer_ops->cancel(pd->layer_op);
        else
            free(pd);
    }
    while (l->sess != NULL) {
        struct lsess *ls = l->sess;

        l->sess = ls->next;
        sl_session_free(ls->s);
        ls->s = NULL;
        /* A queued lsess_free_deferred frees ls itself. */
        if (ls->dying)
            ls->l = NULL;
        else
            free(ls);
    }
    free(l);
}
