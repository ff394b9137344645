/* loader.c - finds, checks and registers plugins; the sl_host table. */
#include "config.h"

#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sillad.h"

/* Sizes of the ABI 1.0 structs: a plugin may be newer (bigger) but never
 * smaller than these. */
#define SL_PLUGIN_SIZE_1_0                                                  \
    (offsetof(struct sl_plugin, teardown) + sizeof(void (*)(void *)))
#define SL_LAYER_SIZE_1_0                                                   \
    (offsetof(struct sl_layer_ops, mux) + sizeof(void *))
#define SL_MUX_SIZE_1_0                                                     \
    (offsetof(struct sl_mux_ops, session_free) + sizeof(void *))

#define MAX_DIRS 16
#define MAX_LAYERS 256

struct sl_plugin_rec {
    const struct sl_plugin *desc;
    char *path;
    void *ctx;
    int initialised;
    struct sl_plugin_rec *next;
};

struct sl_layer {
    const struct sl_layer_ops *ops;
    struct sl_plugin_rec *plugin;
};

struct report {
    char *path;
    struct sl_error err;
    struct report *next;
};

/* The registry is process-wide: plugins are loaded once, never unloaded. */
static struct sl_plugin_rec *plugins;
static struct sl_layer layers[MAX_LAYERS];
static size_t nlayers;
static char *dirs[MAX_DIRS];
static size_t ndirs;
static struct report *reports, **reports_tail = &reports;

static const struct sl_host host_table = {
    .abi_major = SL_ABI_MAJOR,
    .abi_minor = SL_ABI_MINOR,
    .struct_size = sizeof(struct sl_host),
    .libevent_version = 0,   /* filled by sl_host_get() */
    .log = sl_log,
    .error_set = sl_error_set,
    .error_sys = sl_error_sys,
    .pipe_new = sl_pipe_new,
    .pipe_get0_bev = sl_pipe_get0_bev,
    .pipe_get0_lower = sl_pipe_get0_lower,
    .pipe_free = sl_pipe_free,
    .pipe_shutdown_write = sl_pipe_shutdown_write,
    .pipe_query = sl_pipe_query,
    .pipe_set_error = sl_pipe_set_error,
    .opt_str = sl_opts_str,
    .opt_int = sl_opts_int,
    .opt_has = sl_opts_has,
    .resolve = core_resolve,
    .resolve_cancel = core_resolve_cancel,
};

const struct sl_host *
sl_host_get(void)
{
    static struct sl_host h;

    if (h.struct_size == 0) {
        h = host_table;
        h.libevent_version = event_get_version_number();
    }
    return &h;
}

void
sl_loader_add_dir(const char *dir)
{
    if (ndirs < MAX_DIRS)
        dirs[ndirs++] = strdup(dir);
}

void
sl_loader_clear_dirs(void)
{
    for (size_t i = 0; i < ndirs; i++)
        free(dirs[i]);
    ndirs = 0;
}

const char *
sl_loader_default_dir(void)
{
    return SL_PLUGINDIR;
}

static const char *
kind_name(int kind)
{
    switch (kind) {
    case SL_KIND_BASE: return "base";
    case SL_KIND_WRAP: return "wrap";
    case SL_KIND_MUX: return "mux";
    default: return "unknown";
    }
}

static int
valid_name(const char *n)
{
    if (n == NULL || *n == '\0' || strlen(n) >= SL_ERROR_LAYER_MAX)
        return 0;
    for (; *n; n++)
        if (!((*n >= 'a' && *n <= 'z') || (*n >= '0' && *n <= '9') ||
              *n == '_' || *n == '-'))
            return 0;
    return 1;
}

/* Checks one layer table; the sentence names the file and the field. */
static int
check_layer(const char *path, size_t idx, const struct sl_layer_ops *l,
            struct sl_error *e)
{
    static const uint8_t io[4][2] = {
        { 0, 0 },
        { SL_IO_NONE, SL_IO_PIPE },      /* base */
        { SL_IO_PIPE, SL_IO_PIPE },      /* wrap */
        { SL_IO_PIPE, SL_IO_SESSION },   /* mux */
    };

    if (l->struct_size < SL_LAYER_SIZE_1_0)
        return sl_error_set(e, SL_EABI, "loader",
                            "plugin %s: layer %zu struct_size is %u, "
                            "smaller than the %zu bytes of struct "
                            "sl_layer_ops in ABI 1.0", path, idx,
                            (unsigned)l->struct_size,
                            (size_t)SL_LAYER_SIZE_1_0);
    if (!valid_name(l->name))
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: layer %zu name is not [a-z0-9_-]{1,15}",
                            path, idx);
    if (l->kind < SL_KIND_BASE || l->kind > SL_KIND_MUX)
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: layer '%s' kind is %u, expected 1 "
                            "(base), 2 (wrap) or 3 (mux)", path, l->name,
                            (unsigned)l->kind);
    if (l->consumes != io[l->kind][0] || l->produces != io[l->kind][1])
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: layer '%s' is a %s layer but "
                            "consumes %u and produces %u, expected %u and %u",
                            path, l->name, kind_name(l->kind),
                            (unsigned)l->consumes, (unsigned)l->produces,
                            (unsigned)io[l->kind][0],
                            (unsigned)io[l->kind][1]);
    if (l->configure == NULL)
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: layer '%s' has no configure",
                            path, l->name);
    if (l->kind == SL_KIND_BASE &&
        (l->dial == NULL || l->listen == NULL || l->listener_free == NULL ||
         l->cancel == NULL))
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: base layer '%s' lacks dial, listen, "
                            "listener_free or cancel", path, l->name);
    if (l->kind == SL_KIND_WRAP && (l->wrap == NULL || l->cancel == NULL))
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: wrap layer '%s' lacks wrap or cancel",
                            path, l->name);
    if (l->kind == SL_KIND_MUX) {
        const struct sl_mux_ops *m = l->mux;

        if (m == NULL)
            return sl_error_set(e, SL_EINVAL, "loader",
                                "plugin %s: mux layer '%s' has no mux ops",
                                path, l->name);
        if (m->struct_size < SL_MUX_SIZE_1_0)
            return sl_error_set(e, SL_EABI, "loader",
                                "plugin %s: layer '%s' mux struct_size is %u, "
                                "smaller than the %zu bytes of struct "
                                "sl_mux_ops in ABI 1.0", path, l->name,
                                (unsigned)m->struct_size,
                                (size_t)SL_MUX_SIZE_1_0);
        if (m->session_new == NULL || m->open == NULL ||
            m->session_free == NULL)
            return sl_error_set(e, SL_EINVAL, "loader",
                                "plugin %s: mux layer '%s' lacks "
                                "session_new, open or session_free",
                                path, l->name);
    }
    for (const struct sl_opt_spec *s = l->opts; s && s->name; s++)
        if (s->type < SL_OPT_STR || s->type > SL_OPT_ADDR)
            return sl_error_set(e, SL_EINVAL, "loader",
                                "plugin %s: layer '%s' option '%s' type is "
                                "%d, expected 1..7", path, l->name, s->name,
                                s->type);
    return 0;
}

static int
check_plugin(const char *path, const struct sl_plugin *pl, struct sl_error *e)
{
    size_t n = 0;

    /* The first 8 bytes are the same in every ABI: read them first. */
    if (pl->abi_major != SL_ABI_MAJOR)
        return sl_error_set(e, SL_EABI, "loader",
                            "plugin %s: abi_major is %u, but this sillad "
                            "supports only %u", path,
                            (unsigned)pl->abi_major, (unsigned)SL_ABI_MAJOR);
    if (pl->abi_minor > SL_ABI_MINOR)
        return sl_error_set(e, SL_EABI, "loader",
                            "plugin %s: abi_minor is %u, newer than this "
                            "sillad's %u", path, (unsigned)pl->abi_minor,
                            (unsigned)SL_ABI_MINOR);
    if (pl->struct_size < SL_PLUGIN_SIZE_1_0)
        return sl_error_set(e, SL_EABI, "loader",
                            "plugin %s: struct_size is %u, smaller than the "
                            "%zu bytes of struct sl_plugin in ABI 1.0",
                            path, (unsigned)pl->struct_size,
                            (size_t)SL_PLUGIN_SIZE_1_0);
    if (!valid_name(pl->name))
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: name is not [a-z0-9_-]{1,15}", path);
    if (pl->layers == NULL || pl->layers[0] == NULL)
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: layers is empty", path);
    for (n = 0; pl->layers[n] != NULL; n++) {
        int r = check_layer(path, n, pl->layers[n], e);

        if (r != 0)
            return r;
        if (n >= 64)
            return sl_error_set(e, SL_EINVAL, "loader",
                                "plugin %s: more than 64 layers", path);
        for (size_t i = 0; i < nlayers; i++)
            if (strcmp(layers[i].ops->name, pl->layers[n]->name) == 0)
                return sl_error_set(e, SL_EINVAL, "loader",
                                    "plugin %s: layer '%s' is already "
                                    "provided by %s", path,
                                    pl->layers[n]->name,
                                    layers[i].plugin->path);
        for (size_t i = 0; i < n; i++)
            if (strcmp(pl->layers[i]->name, pl->layers[n]->name) == 0)
                return sl_error_set(e, SL_EINVAL, "loader",
                                    "plugin %s: layer '%s' is listed twice",
                                    path, pl->layers[n]->name);
    }
    if (nlayers + n > MAX_LAYERS)
        return sl_error_set(e, SL_ELIMIT, "loader",
                            "plugin %s: more than %d layers in all", path,
                            MAX_LAYERS);
    return 0;
}

int
sl_loader_register(const struct sl_plugin *pl, const char *origin,
                   struct sl_error *e)
{
    struct sl_plugin_rec *rec;
    struct sl_error ie;
    int r;

    if ((r = check_plugin(origin, pl, e)) != 0)
        return r;
    rec = calloc(1, sizeof(*rec));
    if (rec == NULL || (rec->path = strdup(origin)) == NULL) {
        free(rec);
        return sl_error_set(e, SL_ENOMEM, "loader", "out of memory");
    }
    rec->desc = pl;
    if (pl->init != NULL) {
        sl_error_clear(&ie);
        if (pl->init(sl_host_get(), &rec->ctx, &ie) != 0) {
            char buf[256];

            if (ie.code == 0)
                sl_error_set(&ie, SL_EINVAL, pl->name, "no reason given");
            sl_error_set(e, SL_EINVAL, "loader", "plugin %s: init failed: %s",
                         origin, sl_error_str(&ie, buf, sizeof(buf)));
            free(rec->path);
            free(rec);
            return SL_EINVAL;
        }
    }
    rec->initialised = 1;
    rec->next = plugins;
    plugins = rec;
    for (size_t i = 0; pl->layers[i] != NULL; i++) {
        layers[nlayers].ops = pl->layers[i];
        layers[nlayers].plugin = rec;
        nlayers++;
    }
    return 0;
}

int
sl_loader_load_file(const char *path, struct sl_error *e)
{
    void *dl;
    sl_describe_fn *describe;
    const struct sl_plugin *pl;

    for (struct sl_plugin_rec *r = plugins; r != NULL; r = r->next)
        if (strcmp(r->path, path) == 0)
            return 0;   /* already loaded */
    /* RTLD_LOCAL: plugins cannot see each other's symbols. */
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL)
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: cannot load: %s", path, dlerror());
    *(void **)&describe = dlsym(dl, SL_PLUGIN_ENTRY);
    if (describe == NULL)
        /* Never dlclose: a half-initialised library may have run
         * constructors that registered atexit handlers. */
        return sl_error_set(e, SL_EABI, "loader",
                            "plugin %s: no symbol %s (not a sillad plugin)",
                            path, SL_PLUGIN_ENTRY);
    pl = describe();
    if (pl == NULL)
        return sl_error_set(e, SL_EINVAL, "loader",
                            "plugin %s: %s returned NULL", path,
                            SL_PLUGIN_ENTRY);
    return sl_loader_register(pl, path, e);
}

static void
report_add(const char *path, const struct sl_error *err)
{
    struct report *r = calloc(1, sizeof(*r));

    if (r == NULL || (r->path = strdup(path)) == NULL) {
        free(r);
        return;
    }
    if (err != NULL)
        r->err = *err;
    *reports_tail = r;
    reports_tail = &r->next;
}

static int
ends_with_so(const char *name)
{
    size_t n = strlen(name);

    return n > 3 && strcmp(name + n - 3, ".so") == 0;
}

static int
name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
load_dir(const char *dir, int *refused)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char *names[256];
    size_t n = 0;
    int loaded = 0;

    if (d == NULL) {
        sl_log(SL_LOG_DEBUG, "loader", "plugin directory %s: cannot open",
               dir);
        return 0;
    }
    while ((de = readdir(d)) != NULL && n < 256)
        if (ends_with_so(de->d_name))
            names[n++] = strdup(de->d_name);
    closedir(d);
    /* Sorted, so that which file wins a duplicate is reproducible. */
    qsort(names, n, sizeof(names[0]), name_cmp);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct sl_error e;

        if (names[i] == NULL)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        free(names[i]);
        sl_error_clear(&e);
        if (sl_loader_load_file(path, &e) != 0) {
            sl_log(SL_LOG_WARNING, "loader", "%s", e.text);
            if (refused != NULL)
                (*refused)++;
        } else {
            loaded++;
        }
        report_add(path, &e);
    }
    return loaded;
}

int
sl_loader_load_all(int *refused)
{
    const char *env = getenv("SILLAD_PLUGIN_PATH");
    int loaded = 0;

    if (refused != NULL)
        *refused = 0;
    if (env != NULL && *env != '\0') {
        char *copy = strdup(env), *save = NULL;

        for (char *t = strtok_r(copy, ":", &save); t != NULL;
             t = strtok_r(NULL, ":", &save))
            loaded += load_dir(t, refused);
        free(copy);
    } else if (ndirs > 0) {
        for (size_t i = 0; i < ndirs; i++)
            loaded += load_dir(dirs[i], refused);
    } else {
        loaded += load_dir(SL_PLUGINDIR, refused);
    }
    return loaded;
}

void
sl_loader_foreach_report(sl_loader_report_fn *fn, void *arg)
{
    for (struct report *r = reports; r != NULL; r = r->next)
        fn(r->path, &r->err, arg);
}

void
sl_loader_unload_all(void)
{
    while (plugins != NULL) {
        struct sl_plugin_rec *r = plugins;

        plugins = r->next;
        if (r->initialised && r->desc->teardown != NULL)
            r->desc->teardown(r->ctx);
        free(r->path);
        free(r);
    }
    nlayers = 0;
    while (reports != NULL) {
        struct report *r = reports;

        reports = r->next;
        free(r->path);
        free(r);
    }
    reports_tail = &reports;
    sl_loader_clear_dirs();
}

const struct sl_layer *
sl_layer_find(const char *name)
{
    for (size_t i = 0; i < nlayers; i++)
        if (strcmp(layers[i].ops->name, name) == 0)
            return &layers[i];
    return NULL;
}

const struct sl_layer_ops *
sl_layer_get0_ops(const struct sl_layer *l)
{
    return l->ops;
}

const struct sl_plugin *
sl_layer_get0_plugin(const struct sl_layer *l)
{
    return l->plugin->desc;
}

const char *
sl_layer_get0_path(const struct sl_layer *l)
{
    return l->plugin->path;
}

void *
sl_layer_get0_plugin_ctx(const struct sl_layer *l)
{
    return l->plugin->ctx;
}

void
sl_plugin_foreach(sl_plugin_visit_fn *fn, void *arg)
{
    /* Oldest first, the order they were loaded. */
    struct sl_plugin_rec *v[256];
    size_t n = 0;

    for (struct sl_plugin_rec *r = plugins; r != NULL && n < 256; r = r->next)
        v[n++] = r;
    while (n-- > 0)
        fn(v[n]->desc, v[n]->path, arg);
}
