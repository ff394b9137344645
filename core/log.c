/* log.c - leveled logging to stderr and, on request, syslog. */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>

#include "sillad.h"

/* Process-wide by nature: one stderr, one syslog connection. */
static int log_level = SL_LOG_NOTICE;
static int log_syslog;
static char log_prefix[32];

void
sl_log_set_level(int prio)
{
    log_level = prio;
}

int
sl_log_get_level(void)
{
    return log_level;
}

int
sl_log_parse_level(const char *name)
{
    static const struct { const char *name; int prio; } names[] = {
        { "error", SL_LOG_ERR }, { "warning", SL_LOG_WARNING },
        { "notice", SL_LOG_NOTICE }, { "info", SL_LOG_INFO },
        { "debug", SL_LOG_DEBUG },
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(name, names[i].name) == 0)
            return names[i].prio;
    return -1;
}

void
sl_log_use_syslog(const char *ident)
{
    openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    log_syslog = 1;
}

void
sl_log_set_prefix(const char *prefix)
{
    snprintf(log_prefix, sizeof(log_prefix), "%s", prefix ? prefix : "");
}

void
sl_logv(int prio, const char *layer, const char *fmt, va_list ap)
{
    static const char *const tags[] = {
        "emerg", "alert", "crit", "error", "warning", "notice", "info",
        "debug",
    };
    char msg[1024];

    if (prio > log_level)
        return;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (log_syslog) {
        if (layer != NULL && layer[0] != '\0')
            syslog(prio, "%s: %s", layer, msg);
        else
            syslog(prio, "%s", msg);
    }
    fprintf(stderr, "%s%s%s: %s%s%s\n", log_prefix,
            log_prefix[0] != '\0' ? ": " : "",
            tags[prio >= 0 && prio <= 7 ? prio : 7],
            layer != NULL && layer[0] != '\0' ? layer : "",
            layer != NULL && layer[0] != '\0' ? ": " : "", msg);
}

void
sl_log(int prio, const char *layer, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sl_logv(prio, layer, fmt, ap);
    va_end(ap);
}
