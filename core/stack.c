/* stack.c - the stack grammar, its JSON form, type-checking, configuring.
 *
 *   stack := layer ('|' layer)*
 *   layer := NAME (KEY '=' VALUE)*
 *   VALUE := bare | 'single quoted' | "double \"quoted\""
 *
 * A bare value runs to whitespace or one of | , ( ) so that stacks nest in
 * dialer expressions (dial.c); quote values that contain those.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sillad.h"
#include "stack-int.h"

#define MAX_VALUE 4096
#define MAX_TEXT (64 * 1024)

void
core_lex_skip_ws(const char *t, size_t *pos)
{
    while (t[*pos] != '\0' && isspace((unsigned char)t[*pos]))
        (*pos)++;
}

static int
is_special(char c)
{
    return c == '|' || c == ',' || c == '(' || c == ')';
}

/* Reads a name or key: [A-Za-z0-9_.-]+. Returns length (0 if none). */
size_t
core_lex_word(const char *t, size_t pos)
{
    size_t n = 0;

    while (isalnum((unsigned char)t[pos + n]) || t[pos + n] == '_' ||
           t[pos + n] == '-' || t[pos + n] == '.')
        n++;
    return n;
}

/* Reads a value at *pos into out (malloc'd). */
static int
lex_value(const char *t, size_t *pos, char **out, struct sl_error *e)
{
    char buf[MAX_VALUE + 1];
    size_t n = 0, start = *pos;
    char q = t[*pos];

    if (q == '\'' || q == '"') {
        (*pos)++;
        for (;;) {
            char c = t[*pos];

            if (c == '\0')
                return sl_error_set(e, SL_EINVAL, "", "stack: column %zu: "
                                    "unterminated %s quote", start + 1,
                                    q == '"' ? "double" : "single");
            (*pos)++;
            if (c == q)
                break;
            if (c == '\\' && q == '"') {
                c = t[(*pos)++];
                switch (c) {
                case '\\': case '"': break;
                case 'n': c = '\n'; break;
                case 't': c = '\t'; break;
                default:
                    return sl_error_set(e, SL_EINVAL, "",
                                        "stack: column %zu: unknown escape "
                                        "'\\%c' (use \\\\ \\\" \\n \\t)",
                                        *pos, c ? c : '0');
                }
            }
            if (n >= MAX_VALUE)
                return sl_error_set(e, SL_EINVAL, "", "stack: column %zu: "
                                    "value longer than %d bytes", start + 1,
                                    MAX_VALUE);
            buf[n++] = c;
        }
    } else {
        while (t[*pos] != '\0' && !isspace((unsigned char)t[*pos]) &&
               !is_special(t[*pos]) && t[*pos] != '\'' && t[*pos] != '"') {
            if (n >= MAX_VALUE)
                return sl_error_set(e, SL_EINVAL, "", "stack: column %zu: "
                                    "value longer than %d bytes", start + 1,
                                    MAX_VALUE);
            buf[n++] = t[(*pos)++];
        }
    }
    buf[n] = '\0';
    if ((*out = strdup(buf)) == NULL)
        return sl_error_set(e, SL_ENOMEM, "", "out of memory");
    return 0;
}

void
core_stack_spec_free(struct core_stack_spec *sp)
{
    for (size_t i = 0; i < sp->n; i++) {
        free(sp->name[i]);
        sl_opts_free(sp->opts[i]);
    }
    sp->n = 0;
}

int
core_stack_lex(const char *t, size_t *pos, struct core_stack_spec *sp,
               struct sl_error *e)
{
    int r;

    if (strlen(t) > MAX_TEXT)
        return sl_error_set(e, SL_EINVAL, "", "stack: longer than %d bytes",
                            MAX_TEXT);
    for (;;) {
        size_t n;
        struct sl_opts *o;

        core_lex_skip_ws(t, pos);
        n = core_lex_word(t, *pos);
        if (n == 0) {
            if (t[*pos] == '\0')
                return sl_error_set(e, SL_EINVAL, "",
                                    sp->n ? "stack: layer name expected "
                                            "after '|' at end of text"
                                          : "stack: empty");
            return sl_error_set(e, SL_EINVAL, "", "stack: column %zu: "
                                "layer name expected, found '%c'",
                                *pos + 1, t[*pos]);
        }
        if (sp->n >= SL_STACK_MAX)
            return sl_error_set(e, SL_EINVAL, "",
                                "stack: more than %d layers", SL_STACK_MAX);
        o = sl_opts_new();
        sp->name[sp->n] = strndup(t + *pos, n);
        if (o == NULL || sp->name[sp->n] == NULL) {
            free(sp->name[sp->n]);
            sl_opts_free(o);
            return sl_error_set(e, SL_ENOMEM, "", "out of memory");
        }
        sp->opts[sp->n] = o;
        sp->col[sp->n] = *pos + 1;
        sp->n++;
        *pos += n;
        for (;;) {
            size_t kstart;
            char key[128], *val = NULL;
            struct sl_error ae;

            core_lex_skip_ws(t, pos);
            kstart = *pos;
            n = core_lex_word(t, *pos);
            if (n == 0)
                break;
            if (t[*pos + n] != '=')
                return sl_error_set(e, SL_EINVAL, "",
                                    "stack layer %zu (%s): column %zu: "
                                    "expected KEY=VALUE, found '%.*s'",
                                    sp->n, sp->name[sp->n - 1], kstart + 1,
                                    (int)(n > 40 ? 40 : n), t + kstart);
            if (n >= sizeof(key))
                return sl_error_set(e, SL_EINVAL, "",
                                    "stack layer %zu (%s): column %zu: key "
                                    "too long", sp->n, sp->name[sp->n - 1],
                                    kstart + 1);
            memcpy(key, t + kstart, n);
            key[n] = '\0';
            *pos += n + 1;
            if ((r = lex_value(t, pos, &val, e)) != 0)
                return r;
            sl_error_clear(&ae);
            r = sl_opts_add(o, key, val, &ae);
            free(val);
            if (r != 0)
                return sl_error_set(e, r, "", "stack layer %zu (%s): "
                                    "column %zu: %s", sp->n,
                                    sp->name[sp->n - 1], kstart + 1,
                                    ae.text);
        }
        core_lex_skip_ws(t, pos);
        if (t[*pos] != '|')
            return 0;
        (*pos)++;
    }
}

/* Resolves names, checks options and placement, configures layers.
 * Takes the names and opts out of sp. */
struct sl_stack *
core_stack_build(struct core_stack_spec *sp, struct sl_error *e)
{
    return core_stack_build_ex(sp, 0, e);
}

struct sl_stack *
core_stack_build_ex(struct core_stack_spec *sp, int above, struct sl_error *e)
{
    struct sl_stack *s = calloc(1, sizeof(*s));
    int r;

    if (s == NULL) {
        sl_error_set(e, SL_ENOMEM, "", "out of memory");
        return NULL;
    }
    s->above = above;
    if (sp->n == 0) {
        sl_error_set(e, SL_EINVAL, "", "stack: empty");
        goto fail;
    }
    for (size_t i = 0; i < sp->n; i++) {
        const struct sl_layer *l = sl_layer_find(sp->name[i]);
        const struct sl_layer_ops *ops;
        char where[64];
        struct sl_error ce;

        snprintf(where, sizeof(where), "stack layer %zu (%s)", i + 1,
                 sp->name[i]);
        if (l == NULL) {
            sl_error_set(e, SL_EINVAL, "", "%s: no such layer (is its "
                         "plugin installed? see sillad-inspect)", where);
            goto fail;
        }
        ops = sl_layer_get0_ops(l);
        if (i == 0 && above && ops->consumes != SL_IO_PIPE) {
            sl_error_set(e, SL_EINVAL, "", "%s: this stack runs above an "
                         "existing pipe, so it must start with a wrap or mux "
                         "layer, but '%s' is a %s layer", where, ops->name,
                         ops->kind == SL_KIND_BASE ? "base" : "session-consuming");
            goto fail;
        }
        if (i == 0 && !above && ops->consumes != SL_IO_NONE) {
            sl_error_set(e, SL_EINVAL, "", "%s: a stack must start with a "
                         "base layer such as tcp, but '%s' is a %s layer",
                         where, ops->name,
                         ops->kind == SL_KIND_MUX ? "mux" : "wrap");
            goto fail;
        }
        if (i > 0 && ops->consumes == SL_IO_NONE) {
            sl_error_set(e, SL_EINVAL, "", "%s: a base layer can only come "
                         "first; it has nothing to run on here", where);
            goto fail;
        }
        if ((r = sl_opts_check(sp->opts[i], ops->opts, where, e)) != 0)
            goto fail;
        s->l[i].layer = l;
        s->l[i].ops = ops;
        s->l[i].opts = sp->opts[i];
        sp->opts[i] = NULL;
        s->n = i + 1;
        sl_error_clear(&ce);
        if (ops->configure(sl_host_get(), sl_layer_get0_plugin_ctx(l),
                           s->l[i].opts, &s->l[i].cfg, &ce) != 0) {
            char buf[256];

            if (ce.code == 0)
                sl_error_set(&ce, SL_EINVAL, ops->name, "configure failed");
            sl_error_set(e, ce.code, "", "%s: %s", where,
                         sl_error_str(&ce, buf, sizeof(buf)));
            s->l[i].configured = 0;
            goto fail;
        }
        s->l[i].configured = 1;
    }
    core_stack_spec_free(sp);
    return s;
fail:
    core_stack_spec_free(sp);
    sl_stack_free(s);
    return NULL;
}

struct sl_stack *
sl_stack_parse(const char *text, struct sl_error *e)
{
    struct core_stack_spec sp = { 0 };
    size_t pos = 0;

    if (core_stack_lex(text, &pos, &sp, e) != 0) {
        core_stack_spec_free(&sp);
        return NULL;
    }
    core_lex_skip_ws(text, &pos);
    if (text[pos] != '\0') {
        sl_error_set(e, SL_EINVAL, "", "stack: column %zu: unexpected '%c' "
                     "(quote values containing | , ( or ))", pos + 1,
                     text[pos]);
        core_stack_spec_free(&sp);
        return NULL;
    }
    return core_stack_build(&sp, e);
}

struct sl_stack *
sl_stack_parse_above(const char *text, struct sl_error *e)
{
    struct core_stack_spec sp = { 0 };
    size_t pos = 0;

    if (core_stack_lex(text, &pos, &sp, e) != 0) {
        core_stack_spec_free(&sp);
        return NULL;
    }
    core_lex_skip_ws(text, &pos);
    if (text[pos] != '\0') {
        sl_error_set(e, SL_EINVAL, "", "stack: column %zu: unexpected '%c' "
                     "(quote values containing | , ( or ))", pos + 1,
                     text[pos]);
        core_stack_spec_free(&sp);
        return NULL;
    }
    return core_stack_build_ex(&sp, 1, e);
}

/* JSON scalar to option text; 0 or SL_EINVAL. */
static int
json_opt_text(json_t *v, char *buf, size_t len)
{
    if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_true(v))
        snprintf(buf, len, "true");
    else if (json_is_false(v))
        snprintf(buf, len, "false");
    else
        return SL_EINVAL;
    return 0;
}

int
core_stack_spec_from_json(json_t *arr, const char *where,
                          struct core_stack_spec *sp, struct sl_error *e)
{
    size_t i;
    json_t *obj;

    if (!json_is_array(arr))
        return sl_error_set(e, SL_EINVAL, "", "%s: a stack must be an array "
                            "of layer objects or a stack string", where);
    if (json_array_size(arr) > SL_STACK_MAX)
        return sl_error_set(e, SL_EINVAL, "", "%s: more than %d layers",
                            where, SL_STACK_MAX);
    json_array_foreach(arr, i, obj) {
        const char *key;
        json_t *v, *name = json_object_get(obj, "layer");
        struct sl_opts *o;

        if (!json_is_object(obj) || !json_is_string(name))
            return sl_error_set(e, SL_EINVAL, "", "%s: layer %zu: expected "
                                "an object with a \"layer\" string", where,
                                i + 1);
        o = sl_opts_new();
        sp->name[sp->n] = strdup(json_string_value(name));
        if (o == NULL || sp->name[sp->n] == NULL) {
            free(sp->name[sp->n]);
            sl_opts_free(o);
            return sl_error_set(e, SL_ENOMEM, "", "out of memory");
        }
        sp->opts[sp->n] = o;
        sp->col[sp->n] = 0;
        sp->n++;
        json_object_foreach(obj, key, v) {
            char buf[MAX_VALUE + 1];
            struct sl_error ae;

            if (strcmp(key, "layer") == 0)
                continue;
            if (strcmp(key, "optional") == 0) {
                /* Keys newer plugins understand and older ones may skip. */
                const struct sl_layer *l =
                    sl_layer_find(json_string_value(name));
                const char *ok;
                json_t *ov;

                if (!json_is_object(v))
                    return sl_error_set(e, SL_EINVAL, "", "%s: layer %zu "
                                        "(%s): \"optional\" must be an "
                                        "object", where, i + 1,
                                        json_string_value(name));
                json_object_foreach(v, ok, ov) {
                    int known = 0;

                    if (l != NULL)
                        for (const struct sl_opt_spec *s =
                                 sl_layer_get0_ops(l)->opts;
                             s && s->name; s++)
                            known |= strcmp(s->name, ok) == 0;
                    if (!known) {
                        sl_log(SL_LOG_INFO, "", "%s: layer %zu (%s): "
                               "ignoring optional key '%s'", where, i + 1,
                               json_string_value(name), ok);
                        continue;
                    }
                    if (json_opt_text(ov, buf, sizeof(buf)) != 0)
                        return sl_error_set(e, SL_EINVAL, "", "%s: layer %zu "
                                            "(%s): option '%s' must be a "
                                            "string, integer or boolean",
                                            where, i + 1,
                                            json_string_value(name), ok);
                    sl_error_clear(&ae);
                    if (sl_opts_add(o, ok, buf, &ae) != 0)
                        return sl_error_set(e, SL_EINVAL, "", "%s: layer %zu:"
                                            " %s", where, i + 1, ae.text);
                }
                continue;
            }
            if (json_opt_text(v, buf, sizeof(buf)) != 0)
                return sl_error_set(e, SL_EINVAL, "", "%s: layer %zu (%s): "
                                    "option '%s' must be a string, integer "
                                    "or boolean", where, i + 1,
                                    json_string_value(name), key);
            sl_error_clear(&ae);
            if (sl_opts_add(o, key, buf, &ae) != 0)
                return sl_error_set(e, SL_EINVAL, "", "%s: layer %zu: %s",
                                    where, i + 1, ae.text);
        }
    }
    return 0;
}

struct sl_stack *
sl_stack_from_json_text(const char *text, struct sl_error *e)
{
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    struct core_stack_spec sp = { 0 };
    struct sl_stack *s = NULL;

    if (root == NULL) {
        sl_error_set(e, SL_EINVAL, "", "stack JSON: line %d column %d: %s",
                     je.line, je.column, je.text);
        return NULL;
    }
    if (core_stack_spec_from_json(root, "stack", &sp, e) == 0)
        s = core_stack_build(&sp, e);
    core_stack_spec_free(&sp);
    json_decref(root);
    return s;
}

void
sl_stack_free(struct sl_stack *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++) {
        if (s->l[i].configured && s->l[i].ops->unconfigure != NULL)
            s->l[i].ops->unconfigure(s->l[i].cfg);
        sl_opts_free(s->l[i].opts);
    }
    free(s);
}

size_t
sl_stack_len(const struct sl_stack *s)
{
    return s->n;
}

int
sl_stack_produces(const struct sl_stack *s)
{
    return s->l[s->n - 1].ops->produces;
}

const struct sl_layer *
sl_stack_layer_at(const struct sl_stack *s, size_t i)
{
    return i < s->n ? s->l[i].layer : NULL;
}

const struct sl_opts *
sl_stack_opts_at(const struct sl_stack *s, size_t i)
{
    return i < s->n ? s->l[i].opts : NULL;
}

char *
sl_stack_to_string(const struct sl_stack *s)
{
    size_t cap = 256, len = 0;
    char *out = malloc(cap);

    if (out == NULL)
        return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < s->n; i++) {
        const struct sl_opts *o = s->l[i].opts;
        char piece[MAX_VALUE * 2 + 160];
        size_t pl;

        pl = (size_t)snprintf(piece, sizeof(piece), "%s%s",
                              i ? " | " : "", s->l[i].ops->name);
        for (size_t k = 0; k < sl_opts_count(o); k++) {
            const char *key = sl_opts_key_at(o, k);
            const char *val = sl_opts_str(o, key);
            int secret = 0, bare = 1;

            if (!sl_opts_has(o, key))
                continue;   /* defaults are not part of the text */
            for (const struct sl_opt_spec *sp = s->l[i].ops->opts;
                 sp && sp->name; sp++)
                if (strcmp(sp->name, key) == 0 &&
                    (sp->flags & SL_OPT_SECRET))
                    secret = 1;
            if (secret)
                val = "***";
            for (const char *c = val; *c; c++)
                if (isspace((unsigned char)*c) || is_special(*c) ||
                    *c == '\'' || *c == '"')
                    bare = 0;
            if (*val == '\0')
                bare = 0;
            if (bare || strchr(val, '\'') != NULL) {
                /* Quote with "" and escape when needed. */
                pl += (size_t)snprintf(piece + pl, sizeof(piece) - pl,
                                       " %s=%s", key, bare ? val : "\"");
                if (!bare) {
                    for (const char *c = val; *c && pl + 4 < sizeof(piece);
                         c++) {
                        if (*c == '"' || *c == '\\')
                            piece[pl++] = '\\';
                        piece[pl++] = *c;
                    }
                    piece[pl++] = '"';
                    piece[pl] = '\0';
                }
            } else {
                pl += (size_t)snprintf(piece + pl, sizeof(piece) - pl,
                                       " %s='%s'", key, val);
            }
            if (pl >= sizeof(piece))
                pl = sizeof(piece) - 1;
        }
        if (len + pl + 1 > cap) {
            char *n;

            cap = (len + pl + 1) * 2;
            n = realloc(out, cap);
            if (n == NULL) {
                free(out);
                return NULL;
            }
            out = n;
        }
        memcpy(out + len, piece, pl + 1);
        len += pl;
    }
    return out;
}
