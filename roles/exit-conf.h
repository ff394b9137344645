/*
 * exit-conf.h - config values and small program helpers shared by the
 * role programs (sillad-exit and sillad-bridge; its address file also
 * sillad-client).
 *
 * Getters read the value at a JSON pointer of a loaded sl_config; an
 * absent value leaves *out at the caller's default.  Errors name the file,
 * line and column of the value ("exit.json:4:17: ...").
 */
#ifndef SILLAD_ROLES_EXIT_CONF_H
#define SILLAD_ROLES_EXIT_CONF_H

#include <stdint.h>

#include "sillad.h"

/* true or false.  0 or SL_EINVAL. */
int xc_bool(struct sl_config *c, const char *ptr, int *out,
            struct sl_error *e);
/* An integer in [min, max]. */
int xc_int(struct sl_config *c, const char *ptr, int64_t min, int64_t max,
           int64_t *out, struct sl_error *e);
/* A duration: a string such as "5s", "250ms", "30m", or a number of
 * milliseconds; within [min_ms, max_ms]. */
int xc_duration(struct sl_config *c, const char *ptr, int64_t min_ms,
                int64_t max_ms, int64_t *out, struct sl_error *e);
/* A string (borrowed from the config). */
int xc_string(struct sl_config *c, const char *ptr, const char **out,
              struct sl_error *e);
/* Number of elements of the array at ptr; SL_EINVAL if the value is not an
 * array (absent: 0 elements). */
int xc_array_len(struct sl_config *c, const char *ptr, size_t max,
                 size_t *n, struct sl_error *e);

/* Writes lines ("NAME ADDR\n") atomically to path (written, then
 * renamed).  0 or SL_ESYS. */
int xc_write_file(const char *path, const char *text, struct sl_error *e);

/* Runs the loop until done(arg) returns true or ms pass, whichever comes
 * first, then a few non-blocking passes (shutdown: lets cancelled
 * operations call back and freed bufferevents finish). */
void xc_drain(struct event_base *base, int (*done)(void *), void *arg,
              int ms);

/* Doubly linked lists through the members prev and next: x goes to the
 * front of, or out of, the list at head. */
#define LIST_ADD(head, x)                                                    \
    do {                                                                     \
        (x)->prev = NULL;                                                    \
        (x)->next = (head);                                                  \
        if ((head) != NULL)                                                  \
            (head)->prev = (x);                                              \
        (head) = (x);                                                        \
    } while (0)
#define LIST_DEL(head, x)                                                    \
    do {                                                                     \
        if ((x)->prev != NULL)                                               \
            (x)->prev->next = (x)->next;                                     \
        else                                                                 \
            (head) = (x)->next;                                              \
        if ((x)->next != NULL)                                               \
            (x)->next->prev = (x)->prev;                                     \
        (x)->prev = (x)->next = NULL;                                        \
    } while (0)

/* "ip:port" / "[ip6]:port" of a socket address into buf. */
const char *xc_format_addr(const struct sockaddr *sa, char *buf,
                           size_t len);

#endif /* SILLAD_ROLES_EXIT_CONF_H */
