/* config.c - JSON configuration files with positions for every value.
 *
 * Jansson reports positions only for syntax errors, but an admin also
 * needs "file:line:column" for a value of the wrong type or an unknown
 * key, so after Jansson accepts the text we index where every value starts,
 * keyed by its JSON pointer.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sillad.h"

#define CONFIG_MAX_BYTES (1024 * 1024)
#define CONFIG_MAX_VALUES 65536
#define CONFIG_MAX_DEPTH 64

struct pos {
    char *pointer;
    size_t off;
};

struct sl_config {
    char *name;
    char *text;
    json_t *root;
    struct pos *pos;
    size_t npos, cappos;
};

static void
skip_ws(const char *t, size_t *i)
{
    while (t[*i] == ' ' || t[*i] == '\t' || t[*i] == '\n' || t[*i] == '\r')
        (*i)++;
}

static int
add_pos(struct sl_config *c, const char *pointer, size_t off)
{
    if (c->npos >= CONFIG_MAX_VALUES)
        return -1;
    if (c->npos == c->cappos) {
        size_t cap = c->cappos ? c->cappos * 2 : 64;
        struct pos *n = realloc(c->pos, cap * sizeof(*n));

        if (n == NULL)
            return -1;
        c->pos = n;
        c->cappos = cap;
    }
    c->pos[c->npos].pointer = strdup(pointer);
    if (c->pos[c->npos].pointer == NULL)
        return -1;
    c->pos[c->npos].off = off;
    c->npos++;
    return 0;
}

/* Skips a string at t[*i] == '"'; copies its raw text into key if given,
 * escaped for a JSON pointer (~0, ~1). */
static void
scan_string(const char *t, size_t *i, char *key, size_t keylen)
{
    size_t k = 0;

    (*i)++;
    while (t[*i] != '\0' && t[*i] != '"') {
        char ch = t[*i];

        if (ch == '\\' && t[*i + 1] != '\0') {
            (*i)++;
            ch = t[*i];
        }
        if (key != NULL && k + 3 < keylen) {
            if (ch == '~') {
                key[k++] = '~';
                key[k++] = '0';
            } else if (ch == '/') {
                key[k++] = '~';
                key[k++] = '1';
            } else {
                key[k++] = ch;
            }
        }
        (*i)++;
    }
    if (t[*i] == '"')
        (*i)++;
    if (key != NULL)
        key[k] = '\0';
}

static int
scan_value(struct sl_config *c, size_t *i, const char *pointer, int depth)
{
    const char *t = c->text;
    char sub[1024];

    skip_ws(t, i);
    if (add_pos(c, pointer, *i) != 0 || depth > CONFIG_MAX_DEPTH)
        return -1;
    if (t[*i] == '{' || t[*i] == '[') {
        char close = t[*i] == '{' ? '}' : ']';
        size_t idx = 0;

        (*i)++;
        for (;;) {
            skip_ws(t, i);
            if (t[*i] == close || t[*i] == '\0') {
                if (t[*i] != '\0')
                    (*i)++;
                return 0;
            }
            if (close == '}') {
                char key[512];

                scan_string(t, i, key, sizeof(key));
                skip_ws(t, i);
                if (t[*i] == ':')
                    (*i)++;
                snprintf(sub, sizeof(sub), "%s/%s", pointer, key);
            } else {
                snprintf(sub, sizeof(sub), "%s/%zu", pointer, idx++);
            }
            if (scan_value(c, i, sub, depth + 1) != 0)
                return -1;
            skip_ws(t, i);
            if (t[*i] == ',')
                (*i)++;
        }
    }
    if (t[*i] == '"') {
        scan_string(t, i, NULL, 0);
        return 0;
    }
    while (t[*i] != '\0' && t[*i] != ',' && t[*i] != '}' && t[*i] != ']' &&
           !isspace((unsigned char)t[*i]))
        (*i)++;
    return 0;
}

void
sl_config_free(struct sl_config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->npos; i++)
        free(c->pos[i].pointer);
    free(c->pos);
    free(c->text);
    free(c->name);
    json_decref(c->root);
    free(c);
}

struct sl_config *
sl_config_load_text(const char *text, const char *name, struct sl_error *e)
{
    struct sl_config *c;
    json_error_t je;
    size_t i = 0;

    if (strlen(text) > CONFIG_MAX_BYTES) {
        sl_error_set(e, SL_EINVAL, "", "%s: larger than %d bytes", name,
                     CONFIG_MAX_BYTES);
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->text = strdup(text)) == NULL ||
        (c->name = strdup(name)) == NULL) {
        sl_config_free(c);
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    c->root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (c->root == NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s:%d:%d: %s", name, je.line,
                     je.column, je.text);
        sl_config_free(c);
        return NULL;
    }
    if (!json_is_object(c->root)) {
        sl_error_set(e, SL_EINVAL, "", "%s:1:1: the configuration must be "
                     "a JSON object", name);
        sl_config_free(c);
        return NULL;
    }
    if (scan_value(c, &i, "", 0) != 0) {
        sl_error_set(e, SL_EINVAL, "", "%s: more than %d values or nested "
                     "deeper than %d", name, CONFIG_MAX_VALUES,
                     CONFIG_MAX_DEPTH);
        sl_config_free(c);
        return NULL;
    }
    return c;
}

struct sl_config *
sl_config_load(const char *path, struct sl_error *e)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;
    struct sl_config *c;

    if (f == NULL) {
        sl_error_sys(e, errno, "", "%s: cannot open", path);
        return NULL;
    }
    buf = malloc(CONFIG_MAX_BYTES + 2);
    if (buf == NULL) {
        fclose(f);
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    n = fread(buf, 1, CONFIG_MAX_BYTES + 1, f);
    if (ferror(f)) {
        sl_error_sys(e, errno, "", "%s: cannot read", path);
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    if (n > CONFIG_MAX_BYTES) {
        sl_error_set(e, SL_EINVAL, "", "%s: larger than %d bytes", path,
                     CONFIG_MAX_BYTES);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s: contains a NUL byte", path);
        free(buf);
        return NULL;
    }
    c = sl_config_load_text(buf, path, e);
    free(buf);
    return c;
}

void *
sl_config_root(struct sl_config *c)
{
    return c->root;
}

void *
sl_config_get(struct sl_config *c, const char *pointer)
{
    json_t *v = c->root;
    const char *p = pointer;

    while (v != NULL && *p == '/') {
        char tok[512];
        size_t k = 0;

        p++;
        while (*p != '\0' && *p != '/' && k + 1 < sizeof(tok)) {
            if (p[0] == '~' && p[1] == '0') {
                tok[k++] = '~';
                p += 2;
            } else if (p[0] == '~' && p[1] == '1') {
                tok[k++] = '/';
                p += 2;
            } else {
                tok[k++] = *p++;
            }
        }
        tok[k] = '\0';
        if (json_is_object(v))
            v = json_object_get(v, tok);
        else if (json_is_array(v))
            v = json_array_get(v, (size_t)strtoul(tok, NULL, 10));
        else
            v = NULL;
    }
    return v;
}

const char *
sl_config_where(struct sl_config *c, const char *pointer, char *buf,
                size_t len)
{
    for (size_t i = 0; i < c->npos; i++) {
        if (strcmp(c->pos[i].pointer, pointer) == 0) {
            size_t line = 1, col = 1;

            for (size_t k = 0; k < c->pos[i].off; k++) {
                if (c->text[k] == '\n') {
                    line++;
                    col = 1;
                } else {
                    col++;
                }
            }
            snprintf(buf, len, "%s:%zu:%zu", c->name, line, col);
            return buf;
        }
    }
    snprintf(buf, len, "%s", c->name);
    return buf;
}

static const char *const common_keys[] = {
    "plugin_dirs", "log_level", "syslog", "stacks", NULL,
};

int
sl_config_check_keys(struct sl_config *c, const char *const *allowed,
                     struct sl_error *e)
{
    const char *key;
    json_t *v;

    json_object_foreach(c->root, key, v) {
        int ok = 0;
        char where[512], ptr[600];

        for (size_t i = 0; common_keys[i] != NULL; i++)
            ok |= strcmp(common_keys[i], key) == 0;
        for (size_t i = 0; allowed != NULL && allowed[i] != NULL; i++)
            ok |= strcmp(allowed[i], key) == 0;
        if (ok)
            continue;
        snprintf(ptr, sizeof(ptr), "/%s", key);
        return sl_error_set(e, SL_EINVAL, "", "%s: unknown key \"%s\"",
                            sl_config_where(c, ptr, where, sizeof(where)),
                            key);
    }
    return 0;
}

int
sl_config_apply_common(struct sl_config *c, const char *ident,
                       struct sl_error *e)
{
    json_t *v;
    char where[512];
    int refused = 0;

    v = json_object_get(c->root, "log_level");
    if (v != NULL) {
        int lvl = json_is_string(v) ? sl_log_parse_level(json_string_value(v))
                                    : -1;

        if (lvl < 0)
            return sl_error_set(e, SL_EINVAL, "", "%s: \"log_level\" must be "
                                "one of error, warning, notice, info, debug",
                                sl_config_where(c, "/log_level", where,
                                                sizeof(where)));
        sl_log_set_level(lvl);
    }
    v = json_object_get(c->root, "syslog");
    if (v != NULL) {
        if (!json_is_boolean(v))
            return sl_error_set(e, SL_EINVAL, "", "%s: \"syslog\" must be "
                                "true or false",
                                sl_config_where(c, "/syslog", where,
                                                sizeof(where)));
        if (json_is_true(v))
            sl_log_use_syslog(ident);
    }
    v = json_object_get(c->root, "plugin_dirs");
    if (v != NULL) {
        size_t i;
        json_t *d;

        if (!json_is_array(v))
            return sl_error_set(e, SL_EINVAL, "", "%s: \"plugin_dirs\" must "
                                "be an array of directory names",
                                sl_config_where(c, "/plugin_dirs", where,
                                                sizeof(where)));
        json_array_foreach(v, i, d) {
            char ptr[64];

            if (!json_is_string(d)) {
                snprintf(ptr, sizeof(ptr), "/plugin_dirs/%zu", i);
                return sl_error_set(e, SL_EINVAL, "", "%s: a plugin "
                                    "directory must be a string",
                                    sl_config_where(c, ptr, where,
                                                    sizeof(where)));
            }
            sl_loader_add_dir(json_string_value(d));
        }
    }
    sl_loader_load_all(&refused);
    return 0;
}

static int
prefix_error(struct sl_config *c, const char *pointer, struct sl_error *in,
             struct sl_error *e)
{
    char where[512];

    return sl_error_set(e, in->code, "", "%s: %s",
                        sl_config_where(c, pointer, where, sizeof(where)),
                        in->text);
}

struct sl_dialer *
sl_config_dialer(struct sl_config *c, const char *pointer, struct sl_error *e)
{
    json_t *v = sl_config_get(c, pointer);
    struct sl_error in;
    struct sl_dialer *d;

    sl_error_clear(&in);
    if (v == NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s: no value at %s", c->name,
                     pointer);
        return NULL;
    }
    d = sl_dialer_from_json(v, pointer, &in);
    if (d == NULL)
        prefix_error(c, pointer, &in, e);
    return d;
}

struct sl_stack *
sl_config_stack(struct sl_config *c, const char *pointer, struct sl_error *e)
{
    json_t *v = sl_config_get(c, pointer);
    struct sl_error in;
    struct sl_stack *s = NULL;

    sl_error_clear(&in);
    if (v == NULL) {
        sl_error_set(e, SL_EINVAL, "", "%s: no value at %s", c->name,
                     pointer);
        return NULL;
    }
    if (json_is_string(v)) {
        s = sl_stack_parse(json_string_value(v), &in);
    } else if (json_is_array(v)) {
        char *text = json_dumps(v, JSON_COMPACT);

        if (text != NULL)
            s = sl_stack_from_json_text(text, &in);
        free(text);
    } else {
        sl_error_set(&in, SL_EINVAL, "", "a listening stack must be a "
                     "string or an array of layer objects");
    }
    if (s == NULL)
        prefix_error(c, pointer, &in, e);
    return s;
}
