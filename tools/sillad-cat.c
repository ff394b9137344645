/* sillad-cat - connect stdin/stdout to a stack, or serve one.
 *
 *   sillad-cat [options] dial STACK
 *   sillad-cat [options] listen STACK [--echo]
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "sillad.h"

/* Backpressure bounds for every buffer this tool feeds. */
#define HIGH_MARK (1024 * 1024)
#define LOW_MARK (256 * 1024)
#define READ_CHUNK 65536

struct app {
    struct event_base *base;
    struct sl_config *cfg;
    const char *cfg_path;
    const char *stack_text;
    const char *metadata;
    const char *addr_file;
    int listening, echo, once;
    struct sl_dialer *dialer;
    struct sl_stack *lstack;
    struct sl_listener *listener;
    struct sl_dial_op *dial_op;
    struct sl_signals *sig;
    /* the stdio connection (dial, or listen without --echo) */
    struct sl_pipe *io_pipe;
    struct sl_session *io_sess;
    struct event *in_ev;
    int in_regular, in_eof, in_paused, peer_eof;
    int half_close;     /* the io pipe can end one direction only */
    int exit_code;
    long echo_conns;
    struct echo_conn *echoes;
    struct echo_sess *esessions;
};

struct echo_conn {
    struct app *app;
    struct sl_pipe *p;
    struct echo_conn *prev, *next;
};

struct echo_sess {
    struct app *app;
    struct sl_session *s;
    struct echo_sess *prev, *next;
};

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: sillad-cat [-c FILE] [-v] [-q] dial STACK [--metadata STR]\n"
        "       sillad-cat [-c FILE] [-v] [-q] listen STACK [--echo] "
        "[--once] [--addr-file FILE]\n"
        "STACK is a stack or dialer expression, e.g.\n"
        "  'tcp addr=127.0.0.1:9000 | sosistab3 cookie=s3cret | picomux'\n"
        "or @NAME for the entry NAME of \"stacks\" in the config file.\n");
}

static void
stop(struct app *a, int code)
{
    if (code > a->exit_code)
        a->exit_code = code;
    event_base_loopexit(a->base, NULL);
}

/* ---- stdio <-> pipe ------------------------------------------------------ */

static void
io_closed(void *arg)
{
    stop(arg, 0);
}

/* Both directions are done: flush what is left, then leave the loop. */
static void
io_maybe_done(struct app *a)
{
    struct sl_pipe *p = a->io_pipe;

    if (!a->in_eof || !a->peer_eof || p == NULL)
        return;
    a->io_pipe = NULL;
    sl_pipe_close(p, 30000, io_closed, a);
}

static void
in_read(evutil_socket_t fd, short what, void *arg)
{
    struct app *a = arg;
    struct evbuffer *out;
    int n;

    (void)what;
    if (a->io_pipe == NULL)
        return;
    out = bufferevent_get_output(sl_pipe_get0_bev(a->io_pipe));
    {
        /* read(2) straight into the pipe's output buffer: evbuffer_read
         * would size reads by FIONREAD, often a single page on a pipe. */
        struct evbuffer_iovec v;

        if (evbuffer_reserve_space(out, READ_CHUNK, &v, 1) < 1)
            return;
        n = (int)read(fd, v.iov_base, READ_CHUNK);
        v.iov_len = n > 0 ? (size_t)n : 0;
        evbuffer_commit_space(out, &v, 1);
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (n < 0)
            sl_log(SL_LOG_ERR, "", "stdin: %s", strerror(errno));
        a->in_eof = 1;
        event_del(a->in_ev);
        /* Half-close where the stack supports it: the reply keeps coming
         * until the peer closes.  A mux stream has no half-close: ending
         * it is a full close, which the dialing side wants (it has sent
         * everything) and the listening side does not (its empty stdin
         * would cut the stream before the data arrives). */
        if (a->half_close || !a->listening)
            sl_pipe_shutdown_write(a->io_pipe);
        io_maybe_done(a);
        return;
    }
    if (evbuffer_get_length(out) >= HIGH_MARK) {
        a->in_paused = 1;
        event_del(a->in_ev);
    } else if (a->in_regular) {
        event_active(a->in_ev, EV_READ, 0);
    }
}

static void
io_writecb(struct bufferevent *bev, void *arg)
{
    struct app *a = arg;

    (void)bev;
    if (a->in_paused && !a->in_eof) {
        a->in_paused = 0;
        if (a->in_regular)
            event_active(a->in_ev, EV_READ, 0);
        else
            event_add(a->in_ev, NULL);
    }
}

static int
write_all(int fd, struct evbuffer *buf)
{
    while (evbuffer_get_length(buf) > 0) {
        /* stdout is left blocking: a slow reader slows us down, which is
         * the backpressure we want for a cat-like tool. */
        int n = evbuffer_write(buf, fd);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
    }
    return 0;
}

static void
io_readcb(struct bufferevent *bev, void *arg)
{
    struct app *a = arg;

    if (write_all(STDOUT_FILENO, bufferevent_get_input(bev)) != 0) {
        sl_log(SL_LOG_ERR, "", "stdout: %s", strerror(errno));
        stop(a, 1);
    }
}

static void
io_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct app *a = arg;
    char buf[256];

    if (what & BEV_EVENT_ERROR) {
        const struct sl_error *e = sl_pipe_get0_error(a->io_pipe);
        int err = EVUTIL_SOCKET_ERROR();

        if (e != NULL)
            sl_log(SL_LOG_ERR, "", "%s", sl_error_str(e, buf, sizeof(buf)));
        else
            sl_log(SL_LOG_ERR, "", "connection error: %s",
                   err ? strerror(err) : "closed");
        stop(a, 1);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        /* The peer is done sending; we may still be. */
        io_readcb(bev, arg);
        a->peer_eof = 1;
        io_maybe_done(a);
    }
}

static int
start_io(struct app *a, struct sl_pipe *p)
{
    struct stat st;

    a->io_pipe = p;
    /* epoll cannot watch files or devices such as /dev/zero: pump them
     * from the loop instead, as fast as the pipe takes the bytes. */
    if (fstat(STDIN_FILENO, &st) == 0 &&
        (S_ISREG(st.st_mode) ||
         (S_ISCHR(st.st_mode) && !isatty(STDIN_FILENO))))
        a->in_regular = 1;
    else
        evutil_make_socket_nonblocking(STDIN_FILENO);
    a->in_ev = event_new(a->base, STDIN_FILENO,
                         a->in_regular ? 0 : EV_READ | EV_PERSIST, in_read, a);
    if (a->in_ev == NULL)
        return -1;
    if (a->in_regular)
        event_active(a->in_ev, EV_READ, 0);
    else
        event_add(a->in_ev, NULL);
    bufferevent_setwatermark(sl_pipe_get0_bev(p), EV_WRITE, LOW_MARK, 0);
    sl_pipe_setcb(p, io_readcb, io_writecb, io_eventcb, a);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
    return 0;
}

/* ---- echo server ---------------------------------------------------------- */

static void
echo_free(struct echo_conn *c, int graceful)
{
    struct app *a = c->app;

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->echoes = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    if (graceful)
        sl_pipe_close(c->p, 10000, NULL, NULL);
    else
        sl_pipe_free(c->p);
    free(c);
    if (a->once) {
        /* Stop listening; the loop ends once the close above has flushed
         * every byte, as nothing else is left to wait for. */
        sl_listener_free(a->listener);
        a->listener = NULL;
        sl_signals_free(a->sig);
        a->sig = NULL;
    }
}

static void
echo_readcb(struct bufferevent *bev, void *arg)
{
    struct evbuffer *out = bufferevent_get_output(bev);

    (void)arg;
    /* Moves chains, no copy. */
    evbuffer_add_buffer(out, bufferevent_get_input(bev));
    if (evbuffer_get_length(out) >= HIGH_MARK)
        bufferevent_disable(bev, EV_READ);
}

static void
echo_writecb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    bufferevent_enable(bev, EV_READ);
}

static void
echo_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct echo_conn *c = arg;

    if (what & BEV_EVENT_EOF) {
        echo_readcb(bev, arg);
        echo_free(c, 1);
    } else if (what & BEV_EVENT_ERROR) {
        echo_free(c, 0);
    }
}

static void
echo_start(struct app *a, struct sl_pipe *p)
{
    struct echo_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        sl_pipe_free(p);
        return;
    }
    c->app = a;
    c->p = p;
    c->next = a->echoes;
    if (a->echoes != NULL)
        a->echoes->prev = c;
    a->echoes = c;
    a->echo_conns++;
    bufferevent_setwatermark(sl_pipe_get0_bev(p), EV_WRITE, LOW_MARK, 0);
    sl_pipe_setcb(p, echo_readcb, echo_writecb, echo_eventcb, c);
    bufferevent_enable(sl_pipe_get0_bev(p), EV_READ | EV_WRITE);
}

static void
esess_free(struct echo_sess *es)
{
    struct app *a = es->app;

    if (es->prev != NULL)
        es->prev->next = es->next;
    else
        a->esessions = es->next;
    if (es->next != NULL)
        es->next->prev = es->prev;
    sl_session_free(es->s);
    free(es);
}

static void
esess_free_deferred(void *arg)
{
    esess_free(arg);
}

static void
on_stream(struct sl_session *s, struct sl_pipe *stream, const void *meta,
          size_t len, void *arg)
{
    struct echo_sess *es = arg;
    struct app *a = es->app;

    (void)s;
    sl_log(SL_LOG_INFO, "", "stream opened, metadata %zu bytes: %.*s", len,
           (int)(len > 80 ? 80 : len), (const char *)meta);
    if (a->echo) {
        echo_start(a, stream);
        return;
    }
    if (a->io_pipe != NULL) {
        sl_pipe_free(stream);   /* stdio is busy with one stream */
        return;
    }
    a->half_close = 0;
    if (start_io(a, stream) != 0)
        stop(a, 1);
}

static void
on_sess_dead(struct sl_session *s, const struct sl_error *why, void *arg)
{
    char buf[256];

    (void)s;
    sl_log(SL_LOG_INFO, "", "session ended: %s",
           why ? sl_error_str(why, buf, sizeof(buf)) : "closed");
    sl_defer(((struct echo_sess *)arg)->app->base, esess_free_deferred, arg);
}

static void
on_accept(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct app *a = arg;
    char buf[128];

    (void)err;
    if (s != NULL) {
        struct echo_sess *es = calloc(1, sizeof(*es));

        if (es == NULL) {
            sl_session_free(s);
            return;
        }
        es->app = a;
        es->s = s;
        es->next = a->esessions;
        if (a->esessions)
            a->esessions->prev = es;
        a->esessions = es;
        sl_session_setcb(s, on_stream, on_sess_dead, es);
        return;
    }
    sl_log(SL_LOG_INFO, "", "accepted %s",
           sl_pipe_remote_addr(p, buf, sizeof(buf)));
    if (a->echo) {
        echo_start(a, p);
        return;
    }
    if (a->io_pipe != NULL) {
        sl_pipe_free(p);
        return;
    }
    a->half_close = 1;
    if (start_io(a, p) != 0)
        stop(a, 1);
}

/* ---- dialing -------------------------------------------------------------- */

static void
on_dialed(struct sl_pipe *p, struct sl_session *s, const struct sl_error *err,
          void *arg)
{
    struct app *a = arg;
    char buf[256];
    struct sl_error e;

    a->dial_op = NULL;
    if (err != NULL) {
        sl_log(SL_LOG_ERR, "", "dial: %s", sl_error_str(err, buf, sizeof(buf)));
        stop(a, 1);
        return;
    }
    if (s != NULL) {
        sl_error_clear(&e);
        a->io_sess = s;
        if (sl_session_open(s, a->metadata, strlen(a->metadata), &p, &e)
            != 0) {
            sl_log(SL_LOG_ERR, "", "open stream: %s",
                   sl_error_str(&e, buf, sizeof(buf)));
            stop(a, 1);
            return;
        }
    }
    a->half_close = s == NULL;
    if (start_io(a, p) != 0)
        stop(a, 1);
}

/* ---- setup ---------------------------------------------------------------- */

/* Resolves STACK: literal text, or @NAME from the config's "stacks". */
static int
build(struct app *a, struct sl_config *cfg, struct sl_dialer **dialer,
      struct sl_stack **lstack, struct sl_error *e)
{
    const char *t = a->stack_text;

    if (t[0] == '@') {
        char ptr[300];

        if (cfg == NULL)
            return sl_error_set(e, SL_EINVAL, "", "%s: a named stack needs "
                                "-c FILE", t);
        snprintf(ptr, sizeof(ptr), "/stacks/%s", t + 1);
        if (sl_config_get(cfg, ptr) == NULL)
            return sl_error_set(e, SL_EINVAL, "", "%s: no stack \"%s\" in "
                                "\"stacks\"", a->cfg_path, t + 1);
        if (a->listening)
            *lstack = sl_config_stack(cfg, ptr, e);
        else
            *dialer = sl_config_dialer(cfg, ptr, e);
    } else if (a->listening) {
        *lstack = sl_stack_parse(t, e);
    } else {
        *dialer = sl_dialer_parse(t, e);
    }
    return (*dialer != NULL || *lstack != NULL) ? 0 : e->code;
}

static int
start_listener(struct app *a, struct sl_stack *s, struct sl_error *e)
{
    char addr[128];
    struct sl_listener *l = sl_listener_new(s, a->base, on_accept, a, e);

    if (l == NULL)
        return e->code;
    if (sl_listener_local_addr(l, addr, sizeof(addr)) == 0) {
        sl_log(SL_LOG_NOTICE, "", "listening on %s", addr);
        if (a->addr_file != NULL) {
            /* Written then renamed, so a reader never sees half. */
            char tmp[4096];
            FILE *f;

            snprintf(tmp, sizeof(tmp), "%s.tmp", a->addr_file);
            f = fopen(tmp, "w");
            if (f == NULL || fprintf(f, "%s\n", addr) < 0 || fclose(f) != 0 ||
                rename(tmp, a->addr_file) != 0) {
                sl_listener_free(l);
                return sl_error_sys(e, errno, "", "%s: cannot write",
                                    a->addr_file);
            }
        }
    }
    sl_listener_free(a->listener);
    sl_stack_free(a->lstack);
    a->listener = l;
    a->lstack = s;
    return 0;
}

static void
on_stop(void *arg)
{
    stop(arg, 0);
}

static void
on_reload(void *arg)
{
    struct app *a = arg;
    struct sl_error e, e2;
    struct sl_config *cfg;
    struct sl_stack *s = NULL, *old_stack;
    struct sl_dialer *d = NULL;
    char buf[512];

    if (a->cfg_path == NULL || !a->listening || a->stack_text[0] != '@') {
        sl_log(SL_LOG_NOTICE, "", "nothing to reload");
        return;
    }
    sl_error_clear(&e);
    cfg = sl_config_load(a->cfg_path, &e);
    if (cfg == NULL || sl_config_check_keys(cfg, NULL, &e) != 0 ||
        build(a, cfg, &d, &s, &e) != 0) {
        sl_log(SL_LOG_ERR, "", "reload failed, keeping the old "
               "configuration: %s", sl_error_str(&e, buf, sizeof(buf)));
        sl_stack_free(s);
        sl_config_free(cfg);
        return;
    }
    /* The new stack usually listens on the same address: release it
     * first, and go back to the old stack if the new one cannot listen.
     * Connections already accepted are not touched either way. */
    old_stack = a->lstack;
    a->lstack = NULL;
    sl_listener_free(a->listener);
    a->listener = NULL;
    if (start_listener(a, s, &e) != 0) {
        sl_log(SL_LOG_ERR, "", "reload failed, keeping the old "
               "configuration: %s", sl_error_str(&e, buf, sizeof(buf)));
        sl_stack_free(s);
        sl_config_free(cfg);
        sl_error_clear(&e2);
        if (start_listener(a, old_stack, &e2) != 0) {
            sl_log(SL_LOG_ERR, "", "cannot listen again with the old "
                   "configuration: %s",
                   sl_error_str(&e2, buf, sizeof(buf)));
            sl_stack_free(old_stack);
            stop(a, 1);
        }
        return;
    }
    sl_stack_free(old_stack);
    sl_config_free(a->cfg);
    a->cfg = cfg;
    sl_log(SL_LOG_NOTICE, "", "configuration reloaded");
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'c' },
        { "verbose", no_argument, NULL, 'v' },
        { "quiet", no_argument, NULL, 'q' },
        { "echo", no_argument, NULL, 'e' },
        { "once", no_argument, NULL, '1' },
        { "metadata", required_argument, NULL, 'm' },
        { "addr-file", required_argument, NULL, 'a' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct app a;
    struct sl_error e;
    char buf[512];
    int ch, verbose = 0;

    sl_tune_malloc();
    memset(&a, 0, sizeof(a));
    a.metadata = "";
    sl_log_set_prefix("sillad-cat");
    /* "+" would stop at the first operand; allow options after them. */
    while ((ch = getopt_long(argc, argv, "c:vqe1m:a:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': a.cfg_path = optarg; break;
        case 'v': verbose++; break;
        case 'q': verbose = -1; break;
        case 'e': a.echo = 1; break;
        case '1': a.once = 1; break;
        case 'm': a.metadata = optarg; break;
        case 'a': a.addr_file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (argc - optind != 2 ||
        (strcmp(argv[optind], "dial") != 0 &&
         strcmp(argv[optind], "listen") != 0)) {
        usage(stderr);
        return 2;
    }
    a.listening = strcmp(argv[optind], "listen") == 0;
    a.stack_text = argv[optind + 1];
    if (a.listening && !a.echo)
        a.once = 1;
    sl_log_set_level(verbose < 0 ? SL_LOG_ERR
                     : verbose == 0 ? SL_LOG_WARNING
                     : verbose == 1 ? SL_LOG_INFO : SL_LOG_DEBUG);
    sl_error_clear(&e);
    if (a.cfg_path != NULL) {
        a.cfg = sl_config_load(a.cfg_path, &e);
        if (a.cfg == NULL ||
            sl_config_check_keys(a.cfg, NULL, &e) != 0 ||
            sl_config_apply_common(a.cfg, "sillad-cat", &e) != 0)
            goto fail;
    } else {
        sl_loader_load_all(NULL);
    }
    a.base = event_base_new();
    if (a.base == NULL) {
        sl_error_set(&e, SL_ENOMEM, "", "cannot create event loop");
        goto fail;
    }
    {
        struct sl_stack *s = NULL;

        if (build(&a, a.cfg, &a.dialer, &s, &e) != 0)
            goto fail;
        if (a.listening && start_listener(&a, s, &e) != 0) {
            sl_stack_free(s);
            goto fail;
        }
    }
    if (!a.listening &&
        sl_dialer_dial(a.dialer, a.base, on_dialed, &a, &a.dial_op, &e) != 0)
        goto fail;
    a.sig = sl_signals_new(a.base, on_stop, on_reload, &a);
    event_base_dispatch(a.base);
    goto out;
fail:
    fprintf(stderr, "sillad-cat: %s\n", sl_error_str(&e, buf, sizeof(buf)));
    a.exit_code = 1;
out:
    if (a.dial_op != NULL) {
        sl_dial_op_cancel(a.dial_op);
        event_base_loop(a.base, EVLOOP_NONBLOCK);
    }
    while (a.echoes != NULL) {
        struct echo_conn *c = a.echoes;

        a.echoes = c->next;
        sl_pipe_free(c->p);
        free(c);
    }
    while (a.esessions != NULL) {
        struct echo_sess *es = a.esessions;

        a.esessions = es->next;
        sl_session_free(es->s);
        free(es);
    }
    sl_pipe_free(a.io_pipe);
    sl_session_free(a.io_sess);
    if (a.in_ev != NULL)
        event_free(a.in_ev);
    sl_listener_free(a.listener);
    sl_stack_free(a.lstack);
    sl_dialer_free(a.dialer);
    sl_signals_free(a.sig);
    sl_config_free(a.cfg);
    if (a.base != NULL) {
        sl_resolver_release(a.base);
        event_base_free(a.base);
    }
    sl_loader_unload_all();
    return a.exit_code;
}
