/* sillad-inspect - list plugins and layers, or show one layer in full. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sillad.h"

static const char *
kind_name(int kind)
{
    return kind == SL_KIND_BASE ? "base"
           : kind == SL_KIND_WRAP ? "wrap"
           : kind == SL_KIND_MUX ? "mux" : "?";
}

static void
print_flags(uint32_t f)
{
    static const struct { uint32_t bit; const char *name; } names[] = {
        { SL_LF_ENCRYPTS, "encrypts" },
        { SL_LF_AUTHENTICATES, "authenticates" },
        { SL_LF_OBFUSCATES, "obfuscates" },
        { SL_LF_HALF_CLOSE, "half-close" },
        { SL_LF_SECRET, "shared-secret" },
    };
    int any = 0;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (f & names[i].bit) {
            printf("%s%s", any ? ", " : "", names[i].name);
            any = 1;
        }
    printf("%s\n", any ? "" : "none");
}

static void
list_plugin(const struct sl_plugin *pl, const char *path, void *arg)
{
    (void)arg;
    printf("%s %s (%s)\n  %s\n  file: %s\n  ABI %u.%u, license %s\n",
           pl->name, pl->version ? pl->version : "?",
           pl->origin ? pl->origin : "?",
           pl->description ? pl->description : "", path,
           (unsigned)pl->abi_major, (unsigned)pl->abi_minor,
           pl->license ? pl->license : "?");
    for (size_t i = 0; pl->layers[i] != NULL; i++)
        printf("  layer %-12s %-4s  %s\n", pl->layers[i]->name,
               kind_name(pl->layers[i]->kind),
               pl->layers[i]->summary ? pl->layers[i]->summary : "");
    printf("\n");
}

static int
show_layer(const char *name)
{
    const struct sl_layer *l = sl_layer_find(name);
    const struct sl_layer_ops *ops;
    const struct sl_plugin *pl;

    if (l == NULL) {
        fprintf(stderr, "sillad-inspect: no layer named '%s'\n", name);
        return 1;
    }
    ops = sl_layer_get0_ops(l);
    pl = sl_layer_get0_plugin(l);
    printf("Layer %s\n  %s\n\n", ops->name, ops->summary ? ops->summary : "");
    printf("  kind:      %s (%s -> %s)\n", kind_name(ops->kind),
           ops->consumes == SL_IO_NONE ? "nothing" : "pipe",
           ops->produces == SL_IO_SESSION ? "session of streams" : "pipe");
    printf("  flags:     ");
    print_flags(ops->flags);
    printf("  plugin:    %s %s, %s\n", pl->name, pl->version,
           sl_layer_get0_path(l));
    printf("  ABI:       %u.%u\n\n", (unsigned)pl->abi_major,
           (unsigned)pl->abi_minor);
    printf("Options\n");
    if (ops->opts == NULL || ops->opts[0].name == NULL)
        printf("  (none)\n");
    for (const struct sl_opt_spec *s = ops->opts; s && s->name; s++) {
        printf("  %s=<%s>", s->name,
               s->type == SL_OPT_ENUM && s->choices ? s->choices
                                                    : sl_opt_type_name(s->type));
        if (s->flags & SL_OPT_REQUIRED)
            printf("  (required)");
        else if (s->dflt != NULL)
            printf("  default %s", s->dflt);
        if (s->flags & SL_OPT_SECRET)
            printf("  secret");
        if (s->min != s->max)
            printf("  range %lld..%lld", (long long)s->min,
                   (long long)s->max);
        printf("\n      %s\n", s->help ? s->help : "");
    }
    return 0;
}

static void
report(const char *path, const struct sl_error *err, void *arg)
{
    int *bad = arg;

    if (err->code != 0) {
        printf("refused: %s\n", err->text);
        *bad = 1;
    }
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "plugin", required_argument, NULL, 'p' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *files[32];
    int nfiles = 0, ch, bad = 0;

    sl_log_set_level(SL_LOG_ERR);
    while ((ch = getopt_long(argc, argv, "p:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            if (nfiles < 32)
                files[nfiles++] = optarg;
            break;
        case 'h':
            printf("usage: sillad-inspect [-p PLUGIN.so]... [LAYER]\n");
            return 0;
        default:
            fprintf(stderr, "usage: sillad-inspect [-p PLUGIN.so]... "
                            "[LAYER]\n");
            return 2;
        }
    }
    if (argc - optind > 1) {
        fprintf(stderr, "usage: sillad-inspect [-p PLUGIN.so]... [LAYER]\n");
        return 2;
    }
    if (nfiles > 0) {
        for (int i = 0; i < nfiles; i++) {
            struct sl_error e;
            char path[4096];

            /* dlopen searches the library path for a bare name; a file
             * named on the command line means the file here. */
            snprintf(path, sizeof(path), "%s%s",
                     strchr(files[i], '/') ? "" : "./", files[i]);
            sl_error_clear(&e);
            if (sl_loader_load_file(path, &e) != 0) {
                fprintf(stderr, "sillad-inspect: %s\n", e.text);
                bad = 1;
            }
        }
    } else {
        sl_loader_load_all(NULL);
        sl_loader_foreach_report(report, &bad);
    }
    if (argc - optind == 1) {
        int r = show_layer(argv[optind]);

        sl_loader_unload_all();
        return r ? r : bad;
    }
    if (nfiles == 0) {
        const char *env = getenv("SILLAD_PLUGIN_PATH");

        printf("Plugin path: %s\n\n", env && *env ? env
                                               : sl_loader_default_dir());
    }
    sl_plugin_foreach(list_plugin, NULL);
    sl_loader_unload_all();
    return bad;
}
