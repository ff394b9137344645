/* loop.c - small event loop helpers. */
#include "config.h"

#include <stdlib.h>
#include <time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "sillad.h"

struct deferred {
    struct event *ev;
    void (*fn)(void *);
    void *arg;
};

static void
deferred_run(evutil_socket_t fd, short what, void *arg)
{
    struct deferred *d = arg;
    void (*fn)(void *) = d->fn;
    void *fn_arg = d->arg;

    (void)fd;
    (void)what;
    event_free(d->ev);
    free(d);
    fn(fn_arg);
}

int
sl_defer(struct event_base *base, void (*fn)(void *), void *arg)
{
    struct deferred *d = calloc(1, sizeof(*d));

    if (d == NULL)
        return SL_ENOMEM;
    d->fn = fn;
    d->arg = arg;
    d->ev = event_new(base, -1, 0, deferred_run, d);
    if (d->ev == NULL) {
        free(d);
        return SL_ENOMEM;
    }
    event_active(d->ev, EV_TIMEOUT, 0);
    return 0;
}

int64_t
sl_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#ifdef __GLIBC__
/* libevent allocates every small buffer chain, and every chain of a
 * reference (evbuffer_add_reference), as one block of CHAIN_MIN bytes;
 * a mux makes and frees them in bursts of hundreds per write, past
 * glibc's per-size cache of 7, so each went through malloc's bins
 * (measured: about 5% of a tcp|picomux transfer's CPU).  Freed blocks of
 * that size wait here instead, at most CHAIN_KEEP of them (1 MiB).
 * Single-threaded, as every sillad program is (libevent is used by one
 * thread only). */
#define CHAIN_MIN 1024          /* libevent 2.1's MIN_BUFFER_SIZE, 64 bit */
#define CHAIN_KEEP 1024

static void *chain_free[CHAIN_KEEP];
static size_t chain_nfree, chain_usable;

static void *
ev_malloc(size_t n)
{
    if (n == CHAIN_MIN && chain_nfree > 0)
        return chain_free[--chain_nfree];
    return malloc(n);
}

static void *
ev_realloc(void *p, size_t n)
{
    return realloc(p, n);
}

static void
ev_free(void *p)
{
    /* Any block this large serves a CHAIN_MIN request. */
    if (p != NULL && chain_nfree < CHAIN_KEEP &&
        malloc_usable_size(p) == chain_usable) {
        chain_free[chain_nfree++] = p;
        return;
    }
    free(p);
}
#endif

void
sl_tune_malloc(void)
{
#ifdef __GLIBC__
    static int done;
    void *probe;

    /* glibc gives freed memory back to the system eagerly and maps large
     * blocks afresh each time, so a byte pump that keeps freeing and
     * allocating 8 KiB to 1 MiB buffers pays a page fault per page. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    /* The functions are malloc's with a cache in front, so blocks that
     * libevent took before this call may be freed through them. */
    if (done++ || (probe = malloc(CHAIN_MIN)) == NULL)
        return;
    chain_usable = malloc_usable_size(probe);
    free(probe);
    event_set_mem_functions(ev_malloc, ev_realloc, ev_free);
#endif
}
