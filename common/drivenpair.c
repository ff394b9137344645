/* drivenpair.c: the bufferevent pair a wrap layer drives (drivenpair.h). */
#include "config.h"

#include <event2/bufferevent.h>

#include "drivenpair.h"

int
dp_init(struct dp *d, struct event_base *base, dp_free_fn *free_fn,
        void *owner)
{
    struct bufferevent *pair[2] = { NULL, NULL };

    d->free_fn = free_fn;
    d->owner = owner;
    d->mine = NULL;
    d->user = NULL;
    if (bufferevent_pair_new(base, 0, pair) != 0)
        return -1;
    d->mine = pair[0];
    d->user = pair[1];
    return 0;
}

static void
rx_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    dp_rx(arg);
}

static void
tx_cb(struct bufferevent *bev, void *arg)
{
    struct dp *d = arg;

    (void)bev;
    d->busy++;
    d->tx(d->owner);
    dp_leave(d);
}

static void
lower_eventcb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    dp_lower_event(arg, what);
}

void
dp_lower_event(struct dp *d, short what)
{
    d->busy++;
    d->lower_event(d->owner, what);
    dp_leave(d);
}

void
dp_rx(struct dp *d)
{
    d->busy++;
    d->rx(d->owner);
    dp_leave(d);
}

void
dp_wire(struct dp *d, struct bufferevent *lbev, const struct dp_wiring *w)
{
    d->rx = w->rx;
    d->tx = w->tx;
    d->lower_event = w->lower_event;
    /* Mine's read: the user wrote; its write: the user took some. */
    bufferevent_setcb(d->mine, tx_cb, rx_cb, NULL, d);
    bufferevent_setwatermark(d->mine, EV_READ, 0, w->take);
    bufferevent_setwatermark(d->mine, EV_WRITE, w->read_buffer / 2, 0);
    bufferevent_enable(d->mine, EV_READ | EV_WRITE);
    bufferevent_setwatermark(d->user, EV_READ, 0, w->read_buffer);
    bufferevent_setcb(lbev, rx_cb, tx_cb, lower_eventcb, d);
    if (w->lower_high != 0)
        bufferevent_setwatermark(lbev, EV_READ, 0, w->lower_high);
    bufferevent_setwatermark(lbev, EV_WRITE, w->queue / 2, 0);
    bufferevent_enable(lbev, EV_READ | EV_WRITE);
}

void
dp_fini(struct dp *d)
{
    if (d->mine != NULL)
        bufferevent_free(d->mine);
    d->mine = NULL;
}

bool
dp_leave(struct dp *d)
{
    if (--d->busy == 0 && d->dead) {
        d->free_fn(d->owner);
        return true;
    }
    return false;
}

int
dp_run(struct dp *d, struct dp_dir *dir, dp_step_fn *step, void *owner,
       int stop)
{
    int r;

    if (dir->busy) {
        dir->again = 1;
        return DP_BUSY;
    }
    dir->busy = 1;
    do {
        dir->again = 0;
        r = step(owner);
    } while (r != stop && dir->again);
    if (d->dead)
        return DP_DEAD;
    dir->busy = 0;
    return r;
}

void
dp_destroy(struct dp *d, struct bufferevent *lbev)
{
    if (!d->dead) {
        bufferevent_setcb(lbev, NULL, NULL, NULL, NULL);
        bufferevent_setcb(d->mine, NULL, NULL, NULL, NULL);
    }
    d->dead = 1;
    if (d->busy == 0)
        d->free_fn(d->owner);
}

void
dp_eof(struct dp *d)
{
    if (d->eof_done)
        return;
    d->eof_done = 1;
    /* The pair moves mine.output on and then reports EOF to the user,
     * exactly as tcp hands up its socket's EOF. */
    bufferevent_flush(d->mine, EV_WRITE, BEV_FINISHED);
}

void
dp_error(struct dp *d, short what)
{
    if (d->err_done)
        return;
    d->err_done = 1;
    bufferevent_trigger_event(d->user, what, 0);
}
