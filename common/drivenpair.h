/*
 * drivenpair.h: the bufferevent pair a wrap layer drives (hex, tls,
 * sosistab3, e2e).
 *
 * The pipe a wrap layer hands up is one end of a bufferevent pair, the
 * "user" end; the layer drives the other end, "mine":
 *
 *   lower input  -> open  -> mine.output -> (pair) -> user input
 *   user output  -> (pair) -> mine.input -> seal  -> lower output
 *
 * This is what every such layer needs around its own codec:
 *
 *   - the pair itself (dp_init, dp_fini);
 *   - EOF and error reports to the user, each at most once (dp_eof,
 *     dp_error).  The core holds the pipe's events until its owner has set
 *     callbacks (sl_pipe_hold, which pipe_new arranges), so a report made
 *     before the hand-over is kept for the owner, never dropped;
 *   - a pump per direction that reruns when re-entered (dp_run);
 *   - a re-entrancy guard.  Pairs defer their callbacks, so the user never
 *     runs inside the layer, but the layer below may call back at once (an
 *     error from inside a write).  Entry points bracket themselves with
 *     dp_enter and dp_leave; the pipe's destroy (dp_destroy) under an
 *     entry point only marks the pair dead, and the last dp_leave frees
 *     the layer's state through the free function given to dp_init.
 *
 * Nothing here allocates besides the pair, keeps global state or calls
 * back inside a call, except dp_leave and dp_destroy, which call the free
 * function.
 */
#ifndef SL_DRIVENPAIR_H
#define SL_DRIVENPAIR_H

#include <stdbool.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

typedef void dp_free_fn(void *owner);
/* A direction's pump: moves what it can (see dp_run). */
typedef void dp_pump_fn(void *owner);
/* An event from the lower bufferevent. */
typedef void dp_event_fn(void *owner, short what);

struct dp {
    struct bufferevent *mine;   /* the layer's end */
    struct bufferevent *user;   /* its partner, the pipe's bufferevent */
    dp_free_fn *free_fn;        /* frees the layer's state, owner */
    dp_pump_fn *rx, *tx;        /* the layer's pumps (dp_wire) */
    dp_event_fn *lower_event;
    void *owner;
    int busy;                   /* entry points on the stack */
    unsigned dead : 1;          /* destroyed while busy */
    unsigned eof_done : 1;      /* the user got EOF */
    unsigned err_done : 1;      /* the user got an error */
};

/* Makes the pair on base with no callbacks; free_fn(owner) frees the
 * layer's state once it is destroyed and no entry point runs.  Returns 0,
 * or -1 (out of memory) with d->mine NULL.  The user end becomes the
 * pipe's bufferevent: pipe_new consumes it; dp_fini frees only mine. */
int dp_init(struct dp *d, struct event_base *base, dp_free_fn *free_fn,
            void *owner);
/* One direction's guard against its own recursion (see dp_run). */
struct dp_dir {
    unsigned busy : 1;          /* dp_run is on the stack */
    unsigned again : 1;         /* re-entered meanwhile: run once more */
};

/* One pass of a direction: moves what it can and returns a value of the
 * layer's own (never negative); stop (given to dp_run) ends the pass. */
typedef int dp_step_fn(void *owner);

#define DP_BUSY (-1)            /* dp_run: already running, will rerun */
#define DP_DEAD (-2)            /* dp_run: the pipe was destroyed */

/* Runs step(owner), again for as long as it did not return stop and was
 * asked to (a callback re-entered this direction meanwhile: the re-entry
 * only asks).  Returns step's last value, DP_BUSY for a re-entry, or
 * DP_DEAD when the pipe was destroyed meanwhile (the owner is still
 * there: the caller runs inside an entry point). */
int dp_run(struct dp *d, struct dp_dir *dir, dp_step_fn *step, void *owner,
           int stop);

/* How dp_wire connects the layer: its pumps and its bounds. */
struct dp_wiring {
    dp_pump_fn *rx;       /* lower input -> mine.output */
    dp_pump_fn *tx;       /* mine.input -> lower output */
    dp_event_fn *lower_event;
    size_t take;          /* of the user's output taken at a time */
    size_t read_buffer;   /* stop filling the user's input at this */
    size_t lower_high;    /* the lower input's bound, or 0 for none */
    size_t queue;         /* the layer's bound on the lower output */
};

/* Connects mine and lbev to the layer's pumps and bounds them, then
 * enables them.  Each callback is an entry point (dp_enter .. dp_leave)
 * that runs a pump with the owner: rx when the lower pipe has input or the
 * user has taken some of its own (mine's write callback), tx when the
 * user wrote (mine's read callback) or the lower output has room;
 * lower_event for the lower pipe's events.  mine takes at most take of the user's output at a time and
 * calls mine_write once the user has taken its input down to half of
 * read_buffer; the user's input stops at read_buffer (the user may raise
 * it); lbev reads up to lower_high (if not 0) and calls lower_write once
 * its output is down to half of queue.  Never calls back inside. */
void dp_wire(struct dp *d, struct bufferevent *lbev,
             const struct dp_wiring *w);

/* Runs the rx pump as an entry point: for input that came with the
 * handshake, before the pipe is handed up.  May free the owner. */
void dp_rx(struct dp *d);
/* Runs lower_event as an entry point: for an event that reached a
 * handshake's callback after the pipe took over.  May free the owner. */
void dp_lower_event(struct dp *d, short what);

/* Frees mine (if any).  For the layer's free function. */
void dp_fini(struct dp *d);

static inline void
dp_enter(struct dp *d)
{
    d->busy++;
}

/* Ends an entry point; frees the owner if it was destroyed meanwhile.
 * Returns true when the owner is gone. */
bool dp_leave(struct dp *d);

/* The pipe's destroy: detaches from lbev (the lower pipe's, which the
 * core frees right after) and from mine, then frees the owner now, or at
 * the last dp_leave. */
void dp_destroy(struct dp *d, struct bufferevent *lbev);

/* EOF to the user, after every byte already in mine.output (moved on
 * regardless of watermarks); once. */
void dp_eof(struct dp *d);
/* The event what (BEV_EVENT_ERROR and a direction) to the user; once. */
void dp_error(struct dp *d, short what);

#endif
