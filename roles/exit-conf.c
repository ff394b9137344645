/* exit-conf.c - config value helpers shared by sillad-exit and
 * sillad-bridge (see exit-conf.h). */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>

#include "exit-conf.h"

static int
bad(struct sl_config *c, const char *ptr, struct sl_error *e,
    const char *what)
{
    char where[512];

    return sl_error_set(e, SL_EINVAL, "", "%s: \"%s\" %s",
                        sl_config_where(c, ptr, where, sizeof(where)),
                        ptr + 1, what);
}

int
xc_bool(struct sl_config *c, const char *ptr, int *out, struct sl_error *e)
{
    json_t *v = sl_config_get(c, ptr);

    if (v == NULL)
        return 0;
    if (!json_is_boolean(v))
        return bad(c, ptr, e, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

int
xc_int(struct sl_config *c, const char *ptr, int64_t min, int64_t max,
       int64_t *out, struct sl_error *e)
{
    json_t *v = sl_config_get(c, ptr);
    char what[128];

    if (v == NULL)
        return 0;
    snprintf(what, sizeof(what), "must be an integer from %lld to %lld",
             (long long)min, (long long)max);
    if (!json_is_integer(v) || json_integer_value(v) < min ||
        json_integer_value(v) > max)
        return bad(c, ptr, e, what);
    *out = json_integer_value(v);
    return 0;
}

int
xc_duration(struct sl_config *c, const char *ptr, int64_t min_ms,
            int64_t max_ms, int64_t *out, struct sl_error *e)
{
    json_t *v = sl_config_get(c, ptr);
    int64_t ms = -1;
    char what[160];

    if (v == NULL)
        return 0;
    if (json_is_string(v)) {
        if (sl_parse_duration_ms(json_string_value(v), &ms) != 0)
            ms = -1;
    } else if (json_is_integer(v)) {
        ms = json_integer_value(v);
    }
    snprintf(what, sizeof(what), "must be a duration (\"5s\", \"250ms\", or "
             "milliseconds) from %lld ms to %lld ms", (long long)min_ms,
             (long long)max_ms);
    if (ms < min_ms || ms > max_ms)
        return bad(c, ptr, e, what);
    *out = ms;
    return 0;
}

int
xc_string(struct sl_config *c, const char *ptr, const char **out,
          struct sl_error *e)
{
    json_t *v = sl_config_get(c, ptr);

    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return bad(c, ptr, e, "must be a string");
    *out = json_string_value(v);
    return 0;
}

int
xc_array_len(struct sl_config *c, const char *ptr, size_t max, size_t *n,
             struct sl_error *e)
{
    json_t *v = sl_config_get(c, ptr);
    char what[96];

    *n = 0;
    if (v == NULL)
        return 0;
    snprintf(what, sizeof(what), "must be an array of at most %zu entries",
             max);
    if (!json_is_array(v) || json_array_size(v) > max)
        return bad(c, ptr, e, what);
    *n = json_array_size(v);
    return 0;
}

int
xc_write_file(const char *path, const char *text, struct sl_error *e)
{
    char tmp[4096];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0 ||
        rename(tmp, path) != 0)
        return sl_error_sys(e, errno, "", "%s: cannot write", path);
    return 0;
}

static void
drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

void
xc_drain(struct event_base *base, int (*done)(void *), void *arg, int ms)
{
    int64_t until = sl_now_ms() + ms;
    struct event *tick = event_new(base, -1, EV_PERSIST, drain_tick, NULL);
    struct timeval tv = { 0, 20000 };

    /* The tick bounds each pass of the loop. */
    if (tick != NULL)
        event_add(tick, &tv);
    while (!done(arg) && sl_now_ms() < until)
        event_base_loop(base, EVLOOP_ONCE);
    if (tick != NULL)
        event_free(tick);
    /* Freed bufferevents with deferred callbacks still queued are only
     * released once those run: give them a few passes. */
    for (int i = 0; i < 4; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

const char *
xc_format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        snprintf(buf, len, "?");
    }
    return buf;
}
