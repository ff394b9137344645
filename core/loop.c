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

void
sl_tune_malloc(void)
{
#ifdef __GLIBC__
    /* glibc gives freed memory back to the system eagerly and maps large
     * blocks afresh each time, so a byte pump that keeps freeing and
     * allocating 8 KiB to 1 MiB buffers pays a page fault per page. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
#endif
}
