/* signals.c - stop and reload signals through the event loop. */
#include "config.h"

#include <signal.h>
#include <stdlib.h>

#include "sillad.h"

struct sl_signals {
    struct event *ev_int, *ev_term, *ev_hup;
    sl_signal_fn *on_stop, *on_reload;
    void *arg;
};

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct sl_signals *s = arg;

    (void)what;
    if (sig == SIGHUP) {
        sl_log(SL_LOG_NOTICE, "", "SIGHUP: reloading configuration");
        if (s->on_reload != NULL)
            s->on_reload(s->arg);
        return;
    }
    sl_log(SL_LOG_NOTICE, "", "%s: shutting down",
           sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (s->on_stop != NULL)
        s->on_stop(s->arg);
}

struct sl_signals *
sl_signals_new(struct event_base *base, sl_signal_fn *on_stop,
               sl_signal_fn *on_reload, void *arg)
{
    struct sl_signals *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    /* A peer closing mid-write must be an error return, not death. */
    signal(SIGPIPE, SIG_IGN);
    s->on_stop = on_stop;
    s->on_reload = on_reload;
    s->arg = arg;
    s->ev_int = evsignal_new(base, SIGINT, on_signal, s);
    s->ev_term = evsignal_new(base, SIGTERM, on_signal, s);
    s->ev_hup = evsignal_new(base, SIGHUP, on_signal, s);
    if (s->ev_int == NULL || s->ev_term == NULL || s->ev_hup == NULL) {
        sl_signals_free(s);
        return NULL;
    }
    evsignal_add(s->ev_int, NULL);
    evsignal_add(s->ev_term, NULL);
    evsignal_add(s->ev_hup, NULL);
    return s;
}

void
sl_signals_free(struct sl_signals *s)
{
    if (s == NULL)
        return;
    if (s->ev_int != NULL)
        event_free(s->ev_int);
    if (s->ev_term != NULL)
        event_free(s->ev_term);
    if (s->ev_hup != NULL)
        event_free(s->ev_hup);
    free(s);
}
