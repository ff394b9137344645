/* error.c - struct sl_error helpers. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "sillad.h"

int
sl_error_setv(struct sl_error *e, int code, const char *layer,
              const char *fmt, va_list ap)
{
    /* The first fault wins: callers add context but never hide the cause. */
    if (e == NULL || e->code != 0)
        return code;
    e->code = code;
    e->sys_errno = 0;
    snprintf(e->layer, sizeof(e->layer), "%s", layer ? layer : "");
    if (fmt != NULL)
        vsnprintf(e->text, sizeof(e->text), fmt, ap);
    else
        snprintf(e->text, sizeof(e->text), "%s", sl_strerror(code));
    /* One line: a newline would break log parsing. */
    for (char *c = e->text; *c != '\0'; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    return code;
}

int
sl_error_set(struct sl_error *e, int code, const char *layer,
             const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sl_error_setv(e, code, layer, fmt, ap);
    va_end(ap);
    return code;
}

int
sl_error_sys(struct sl_error *e, int sys_errno, const char *layer,
             const char *fmt, ...)
{
    va_list ap;
    char what[SL_ERROR_TEXT_MAX];

    if (e == NULL || e->code != 0)
        return SL_ESYS;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    sl_error_set(e, SL_ESYS, layer, "%s: %s", what, strerror(sys_errno));
    e->sys_errno = sys_errno;
    return SL_ESYS;
}

void
sl_error_clear(struct sl_error *e)
{
    memset(e, 0, sizeof(*e));
}

const char *
sl_strerror(int code)
{
    switch (code) {
    case SL_OK: return "success";
    case SL_EINVAL: return "invalid argument";
    case SL_ENOMEM: return "out of memory";
    case SL_ESYS: return "system error";
    case SL_EPROTO: return "protocol error";
    case SL_ETIMEDOUT: return "timed out";
    case SL_ECANCELED: return "cancelled";
    case SL_ENOTSUP: return "not supported";
    case SL_ENOENT: return "not found";
    case SL_ECLOSED: return "connection closed";
    case SL_EAUTH: return "authentication failed";
    case SL_ERESOLVE: return "name resolution failed";
    case SL_ELIMIT: return "limit reached";
    case SL_EABI: return "plugin ABI mismatch";
    default: return "unknown error";
    }
}

const char *
sl_error_str(const struct sl_error *e, char *buf, size_t len)
{
    if (e == NULL || e->code == 0)
        snprintf(buf, len, "no error");
    else if (e->layer[0] != '\0')
        snprintf(buf, len, "%s: %s", e->layer, e->text);
    else
        snprintf(buf, len, "%s", e->text);
    return buf;
}
