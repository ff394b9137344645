/* opts.c - option sets of stack layers, checked against a layer's table. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sillad.h"

/* Bounds: a stack line is short; these stop hostile configs early. */
#define OPTS_MAX 64

struct sl_opt {
    char *key;
    char *value;
    int given;          /* 1 if from the stack, 0 if a default */
    int type;
    int64_t num;        /* parsed INT/DURATION/SIZE/BOOL */
};

struct sl_opts {
    size_t n;
    struct sl_opt opt[OPTS_MAX];
};

struct sl_opts *
sl_opts_new(void)
{
    return calloc(1, sizeof(struct sl_opts));
}

void
sl_opts_free(struct sl_opts *o)
{
    if (o == NULL)
        return;
    for (size_t i = 0; i < o->n; i++) {
        free(o->opt[i].key);
        if (o->opt[i].value != NULL) {
            /* Values may be secrets (cookies); do not leave them around. */
            memset(o->opt[i].value, 0, strlen(o->opt[i].value));
            free(o->opt[i].value);
        }
    }
    free(o);
}

static struct sl_opt *
find(const struct sl_opts *o, const char *key)
{
    for (size_t i = 0; i < o->n; i++)
        if (strcmp(o->opt[i].key, key) == 0)
            return (struct sl_opt *)&o->opt[i];
    return NULL;
}

int
sl_opts_add(struct sl_opts *o, const char *key, const char *value,
            struct sl_error *e)
{
    struct sl_opt *op;

    if (find(o, key) != NULL)
        return sl_error_set(e, SL_EINVAL, "", "option '%s' given twice", key);
    if (o->n >= OPTS_MAX)
        return sl_error_set(e, SL_EINVAL, "", "more than %d options",
                            OPTS_MAX);
    op = &o->opt[o->n];
    op->key = strdup(key);
    op->value = strdup(value);
    if (op->key == NULL || op->value == NULL) {
        free(op->key);
        free(op->value);
        return sl_error_set(e, SL_ENOMEM, "", "out of memory");
    }
    op->given = 1;
    o->n++;
    return 0;
}

int
sl_parse_int(const char *s, int64_t *v)
{
    char *end;
    long long x;

    if (*s == '\0' || isspace((unsigned char)*s))
        return SL_EINVAL;
    errno = 0;
    x = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return SL_EINVAL;
    *v = x;
    return 0;
}

/* Parses "<digits><unit>" where units maps suffixes to multipliers. */
static int
parse_scaled(const char *s, const char *const *suffix, const int64_t *mult,
             size_t nsuffix, int64_t dflt_mult, int64_t *out)
{
    char *end;
    unsigned long long x;

    if (!isdigit((unsigned char)*s))
        return SL_EINVAL;
    errno = 0;
    x = strtoull(s, &end, 10);
    if (errno != 0)
        return SL_EINVAL;
    if (*end == '\0') {
        if (x > (unsigned long long)(INT64_MAX / dflt_mult))
            return SL_EINVAL;
        *out = (int64_t)x * dflt_mult;
        return 0;
    }
    for (size_t i = 0; i < nsuffix; i++) {
        if (strcmp(end, suffix[i]) == 0) {
            if (x > (unsigned long long)(INT64_MAX / mult[i]))
                return SL_EINVAL;
            *out = (int64_t)x * mult[i];
            return 0;
        }
    }
    return SL_EINVAL;
}

int
sl_parse_duration_ms(const char *s, int64_t *ms)
{
    static const char *const suffix[] = { "ms", "s", "m", "h" };
    static const int64_t mult[] = { 1, 1000, 60000, 3600000 };

    return parse_scaled(s, suffix, mult, 4, 1, ms);
}

int
sl_parse_size(const char *s, int64_t *bytes)
{
    static const char *const suffix[] = { "k", "K", "m", "M", "g", "G" };
    static const int64_t mult[] = { 1024, 1024, 1048576, 1048576,
                                    1073741824, 1073741824 };

    return parse_scaled(s, suffix, mult, 6, 1, bytes);
}

int
sl_parse_bool(const char *s, int *b)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *b = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *b = 0;
            return 0;
        }
    }
    return SL_EINVAL;
}

int
sl_parse_addr(const char *s, char *host, size_t hostlen, char *port,
              size_t portlen)
{
    const char *colon, *hs, *he;
    size_t n;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');

        if (close == NULL || close[1] != ':')
            return SL_EINVAL;
        hs = s + 1;
        he = close;
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return SL_EINVAL;
        /* An unbracketed IPv6 address is ambiguous. */
        if (memchr(s, ':', (size_t)(colon - s)) != NULL)
            return SL_EINVAL;
        hs = s;
        he = colon;
    }
    n = (size_t)(he - hs);
    if (n == 0 || n >= hostlen)
        return SL_EINVAL;
    for (const char *c = colon + 1; *c != '\0'; c++)
        if (!isdigit((unsigned char)*c))
            return SL_EINVAL;
    if (colon[1] == '\0' || strlen(colon + 1) >= portlen ||
        atol(colon + 1) > 65535)
        return SL_EINVAL;
    memcpy(host, hs, n);
    host[n] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    return 0;
}

const char *
sl_opt_type_name(int type)
{
    switch (type) {
    case SL_OPT_STR: return "string";
    case SL_OPT_INT: return "integer";
    case SL_OPT_BOOL: return "boolean";
    case SL_OPT_DURATION: return "duration";
    case SL_OPT_SIZE: return "size";
    case SL_OPT_ENUM: return "choice";
    case SL_OPT_ADDR: return "address";
    default: return "?";
    }
}

static int
choice_ok(const char *choices, const char *v)
{
    size_t vl = strlen(v);

    for (const char *c = choices; c != NULL && *c != '\0';) {
        const char *bar = strchr(c, '|');
        size_t n = bar ? (size_t)(bar - c) : strlen(c);

        if (n == vl && strncmp(c, v, n) == 0)
            return 1;
        c = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* Parses op->value by spec; fills op->num. */
static int
check_value(struct sl_opt *op, const struct sl_opt_spec *sp,
            const char *where, struct sl_error *e)
{
    const char *v = op->value;
    const char *shown = (sp->flags & SL_OPT_SECRET) ? "***" : v;
    char h[256], p[8];
    int b;

    op->type = sp->type;
    switch (sp->type) {
    case SL_OPT_STR:
        return 0;
    case SL_OPT_INT:
        if (sl_parse_int(v, &op->num) != 0)
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: option '%s': '%s' is not an integer",
                                where, sp->name, shown);
        break;
    case SL_OPT_BOOL:
        if (sl_parse_bool(v, &b) != 0)
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: option '%s': '%s' is not a boolean "
                                "(true or false)", where, sp->name, shown);
        op->num = b;
        return 0;
    case SL_OPT_DURATION:
        if (sl_parse_duration_ms(v, &op->num) != 0)
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: option '%s': '%s' is not a duration "
                                "(e.g. 250ms, 5s, 2m, 1h)", where, sp->name,
                                shown);
        break;
    case SL_OPT_SIZE:
        if (sl_parse_size(v, &op->num) != 0)
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: option '%s': '%s' is not a size "
                                "(e.g. 4096, 64k, 16M)", where, sp->name,
                                shown);
        break;
    case SL_OPT_ENUM:
        if (!choice_ok(sp->choices, v))
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: option '%s': '%s' is not one of %s",
                                where, sp->name, shown,
                                sp->choices ? sp->choices : "(none)");
        return 0;
    case SL_OPT_ADDR:
        if (sl_parse_addr(v, h, sizeof(h), p, sizeof(p)) != 0)
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: option '%s': '%s' is not an address "
                                "(host:port, ip:port or [ipv6]:port)", where,
                                sp->name, shown);
        return 0;
    default:
        return sl_error_set(e, SL_EINVAL, "",
                            "%s: option '%s' has unknown type %d", where,
                            sp->name, sp->type);
    }
    if (sp->min != sp->max && (op->num < sp->min || op->num > sp->max))
        return sl_error_set(e, SL_EINVAL, "",
                            "%s: option '%s': %s is out of range "
                            "[%lld, %lld]", where, sp->name, shown,
                            (long long)sp->min, (long long)sp->max);
    return 0;
}

int
sl_opts_check(struct sl_opts *o, const struct sl_opt_spec *spec,
              const char *where, struct sl_error *e)
{
    int r;

    /* Unknown keys first: a typo should be named as such, not reported as
     * a missing required key. */
    for (size_t i = 0; i < o->n; i++) {
        const struct sl_opt_spec *sp = NULL;

        for (const struct sl_opt_spec *s = spec; s && s->name; s++)
            if (strcmp(s->name, o->opt[i].key) == 0)
                sp = s;
        if (sp == NULL) {
            char known[160] = "";
            size_t k = 0;

            for (const struct sl_opt_spec *s = spec; s && s->name; s++)
                k += (size_t)snprintf(known + k,
                                      k < sizeof(known) ? sizeof(known) - k
                                                        : 0,
                                      "%s%s", k ? ", " : "", s->name);
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: unknown option '%s' (known: %s)", where,
                                o->opt[i].key, known[0] ? known : "none");
        }
        if ((r = check_value(&o->opt[i], sp, where, e)) != 0)
            return r;
    }
    for (const struct sl_opt_spec *s = spec; s && s->name; s++) {
        struct sl_opt *op = find(o, s->name);

        if (op != NULL)
            continue;
        if (s->flags & SL_OPT_REQUIRED)
            return sl_error_set(e, SL_EINVAL, "",
                                "%s: missing required option '%s' (%s)",
                                where, s->name, s->help ? s->help : "");
        if (s->dflt == NULL)
            continue;
        if ((r = sl_opts_add(o, s->name, s->dflt, e)) != 0)
            return r;
        op = &o->opt[o->n - 1];
        op->given = 0;
        if ((r = check_value(op, s, where, e)) != 0)
            return sl_error_set(e, r, "", "%s: bad default for '%s'", where,
                                s->name);
    }
    return 0;
}

const char *
sl_opts_str(const struct sl_opts *o, const char *key)
{
    struct sl_opt *op = find(o, key);

    return op ? op->value : NULL;
}

int64_t
sl_opts_int(const struct sl_opts *o, const char *key)
{
    struct sl_opt *op = find(o, key);

    return op ? op->num : 0;
}

int
sl_opts_has(const struct sl_opts *o, const char *key)
{
    struct sl_opt *op = find(o, key);

    return op != NULL && op->given;
}

size_t
sl_opts_count(const struct sl_opts *o)
{
    return o->n;
}

const char *
sl_opts_key_at(const struct sl_opts *o, size_t i)
{
    return i < o->n ? o->opt[i].key : NULL;
}
