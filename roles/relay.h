/*
 * relay.h - copies bytes both ways between two pipes.
 *
 * A relay joins two sl_pipes (a user's connection and a tunnel stream, a
 * tunnel stream and a destination): whatever one side reads is written to
 * the other.  Memory is bounded: while the bytes waiting to leave one side
 * (in the pipe's output, and those the pipe's layer took but has not sent
 * yet) reach the other side's window, the relay stops reading the other
 * side, and resumes once they are down to half of it.  Each direction's
 * window starts at RELAY_MIN and follows the rate the direction moves at,
 * about RELAY_PERIOD_MS worth of it, up to RELAY_HIGH: a tunnel that
 * carries bulk data gets room to keep its far end busy, while each of
 * many tunnels that share a slow link holds little, their backlog
 * waiting in the kernel's socket buffers.  The window also bounds what
 * the layer below the read side hands over at a time (the read high
 * watermark of its pipe).
 *
 * End of stream.  When side X ends its send direction (EOF), every byte it
 * sent is delivered to Y, then Y's write side is shut down.  When both
 * layers can end one direction alone (SL_LF_HALF_CLOSE, e.g. tcp), Y's
 * peer sees the EOF while the other direction goes on until Y ends too.
 * When either cannot (a picomux stream, where FIN closes the stream both
 * ways), the end of one direction is the end of the relay.  Then the relay
 * closes both pipes gracefully (what is buffered still goes out, bounded
 * by RELAY_CLOSE_MS) and calls done.  An error on one side frees that side
 * at once and closes the other gracefully; no byte moving either way for
 * idle_ms frees both; done is called either way.
 */
#ifndef SILLAD_ROLES_RELAY_H
#define SILLAD_ROLES_RELAY_H

#include <stdint.h>

#include <event2/event.h>

struct sl_pipe;

/* The smallest and largest window of a direction (bytes waiting towards
 * one side at which the other side stops being read), and the period
 * over which its rate is measured. */
#define RELAY_MIN (8 * 1024)
#define RELAY_HIGH (256 * 1024)
#define RELAY_PERIOD_MS 10
/* How long a graceful close may take to flush before the pipe is freed:
 * relay_close_pipe, and a relay's pipe whose peer already ended.  A
 * relay's other pipes wait for their peer's end as long as the relay's
 * idle timeout (RELAY_LINGER_MAX_MS without one): a slow reader may need
 * long for the last buffered bytes, and none may be lost. */
#define RELAY_CLOSE_MS 10000
#define RELAY_LINGER_MAX_MS 300000

struct relay;

struct relay_stats {
    uint64_t a_to_b, b_to_a;   /* bytes read from one side for the other */
};

/* Called exactly once, from the event loop (never inside relay_new), when
 * the relay has ended; the relay is already freed, and the pipes are
 * closed or closing.  why is a short static text: "done" (both ends
 * finished), "idle", or the first error as "a: <error>" / "b: <error>"
 * (valid only during the call).  st counts the bytes moved. */
typedef void relay_done_fn(void *arg, const struct relay_stats *st,
                           const char *why);

/* Consumes a and b (also on failure, when NULL is returned).  idle_ms <= 0
 * turns the idle timeout off.  Input already waiting on either pipe (left
 * by a handshake) is relayed first.  Returns NULL only out of memory. */
struct relay *relay_new(struct event_base *base, struct sl_pipe *a,
                        struct sl_pipe *b, int idle_ms, relay_done_fn *done,
                        void *arg);

/* Closes both pipes now (nothing more is flushed); done is not called.
 * NULL is ignored. */
void relay_free(struct relay *r);

/* The bytes moved so far. */
void relay_get_stats(const struct relay *r, struct relay_stats *st);

/* Consumes p: closes it gracefully.  A layer with half-close (tcp) whose
 * peer may still send (peer_ended is 0: its EOF was not seen) gets a
 * lingering close: everything written is sent, then FIN, and the pipe is
 * kept (its input read and dropped) until the peer ends its side too, or
 * RELAY_CLOSE_MS pass.  A socket closed while input is unread or still
 * arriving answers with a reset, which would throw away what the peer
 * has not read yet of our last bytes.  Otherwise the pipe gets
 * sl_pipe_close(): the layer sends what it accepted, then FIN, after the
 * pipe is freed.  Relays close their pipes this way (see RELAY_CLOSE_MS
 * for their bound); programs use it for their own replies (an error
 * answer). */
void relay_close_pipe(struct sl_pipe *p, int peer_ended);

/* Number of pipes in a graceful close started by relay_close_pipe (or a
 * relay) that have not been freed yet.  A program that wants to exit
 * without leaks runs its loop until this is 0 (each close ends within
 * RELAY_CLOSE_MS), or calls relay_closing_abort() to free the lingering
 * ones at once. */
long relay_closing(void);
void relay_closing_abort(void);

#endif /* SILLAD_ROLES_RELAY_H */
