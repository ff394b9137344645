/* dummy.c - plugins built to be refused, one per DUMMY_MODE.  Each must be
 * refused by the loader with the exact sentence test-loader.c expects. */
#include "config.h"

#include <stddef.h>

#include "sillad/plugin.h"

/* Tripwire: a new major changes what "wrong" means for every case here. */
#if SL_ABI_MAJOR != 1
#error "ABI major changed: update t/dummy and t/core/test-loader.c"
#endif

/* Macros, not an enum: DUMMY_NO_SYMBOL is used in #if. */
#define DUMMY_GOOD 1
#define DUMMY_WRONG_MAJOR 2
#define DUMMY_FUTURE_MINOR 3
#define DUMMY_SHORT_STRUCT 4
#define DUMMY_FAILING_INIT 5
#define DUMMY_NO_SYMBOL 6
#define DUMMY_DUPLICATE 7
#define DUMMY_SHORT_LAYER 8

static int
dummy_configure(const struct sl_host *h, void *pctx, const struct sl_opts *o,
                void **cfg, struct sl_error *e)
{
    (void)h;
    (void)pctx;
    (void)o;
    (void)e;
    *cfg = NULL;
    return 0;
}

static int
dummy_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
           enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
           struct sl_error *e)
{
    (void)cfg;
    (void)base;
    (void)lower;
    (void)role;
    (void)done;
    (void)arg;
    (void)op;
    (void)e;
    return SL_ENOTSUP;
}

static void
dummy_cancel(void *op)
{
    (void)op;
}

static int
dummy_init(const struct sl_host *h, void **ctx, struct sl_error *e)
{
    (void)ctx;
    if (DUMMY_MODE == DUMMY_FAILING_INIT)
        return h->error_set(e, SL_EINVAL, "dummy",
                            "refusing to start (test)");
    return 0;
}

static const struct sl_layer_ops dummy_layer = {
    .struct_size = DUMMY_MODE == DUMMY_SHORT_LAYER
                       ? 24 : sizeof(struct sl_layer_ops),
    .name = "dummy",
    .summary = "refused on purpose",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    .configure = dummy_configure,
    .wrap = dummy_wrap,
    .cancel = dummy_cancel,
};

static const struct sl_layer_ops *const dummy_layers[] = {
    &dummy_layer, NULL,
};

static const struct sl_plugin dummy_plugin = {
    .abi_major = DUMMY_MODE == DUMMY_WRONG_MAJOR ? SL_ABI_MAJOR + 1
                                                 : SL_ABI_MAJOR,
    .abi_minor = DUMMY_MODE == DUMMY_FUTURE_MINOR ? SL_ABI_MINOR + 1
                                                  : SL_ABI_MINOR,
    .struct_size = DUMMY_MODE == DUMMY_SHORT_STRUCT
                       ? 16 : sizeof(struct sl_plugin),
    .name = DUMMY_MODE == DUMMY_DUPLICATE ? "dummydup" : "dummy",
    .version = "1",
    .license = "ISC",
    .origin = "sillad tests",
    .description = "a plugin the loader must refuse",
    .layers = dummy_layers,
    .init = dummy_init,
    .teardown = NULL,
};

#if DUMMY_MODE != DUMMY_NO_SYMBOL
SL_EXPORT const struct sl_plugin *sl_plugin_describe(void);

SL_EXPORT const struct sl_plugin *
sl_plugin_describe(void)
{
    return &dummy_plugin;
}
#else
/* Exported under the wrong name: the loader must not find it. */
SL_EXPORT const struct sl_plugin *sl_plugin_describe_typo(void);

SL_EXPORT const struct sl_plugin *
sl_plugin_describe_typo(void)
{
    return &dummy_plugin;
}
#endif
