/* test-abi.c - the layout of <sillad/plugin.h> for each ABI version.
 *
 * A plugin built against ABI 1.N must keep working with a core of ABI 1.M
 * (M >= N), so a struct may only grow at its end, and only together with a
 * minor bump.  This test pins every size and offset of ABI 1.0 (x86-64 and
 * other LP64 targets).  When it fails:
 *   - you inserted, removed, resized or reordered a field: that breaks
 *     every plugin; undo it, or bump SL_ABI_MAJOR and start a new table;
 *   - you appended a field to a struct with struct_size: bump SL_ABI_MINOR,
 *     keep the 1.0 rows as they are (offsets must not move), add rows for
 *     the new fields under the new minor, and update the size rows.
 */
#include "config.h"

#include <stddef.h>
#include <string.h>

#include "../cu.h"
#include "sillad/plugin.h"

struct row {
    const char *type, *member;   /* member NULL: the row is sizeof */
    size_t value;
};

/* ABI 1.0, LP64. */
static const struct row abi_1_0[] = {
    { "sl_error", NULL, 216 },
    { "sl_error", "code", 0 },
    { "sl_error", "sys_errno", 4 },
    { "sl_error", "layer", 8 },
    { "sl_error", "text", 24 },
    { "sl_opt_spec", NULL, 56 },
    { "sl_opt_spec", "name", 0 },
    { "sl_opt_spec", "type", 8 },
    { "sl_opt_spec", "flags", 12 },
    { "sl_opt_spec", "dflt", 16 },
    { "sl_opt_spec", "help", 24 },
    { "sl_opt_spec", "choices", 32 },
    { "sl_opt_spec", "min", 40 },
    { "sl_opt_spec", "max", 48 },
    { "sl_pipe_ops", NULL, 32 },
    { "sl_pipe_ops", "struct_size", 0 },
    { "sl_pipe_ops", "shutdown_write", 8 },
    { "sl_pipe_ops", "query", 16 },
    { "sl_pipe_ops", "destroy", 24 },
    { "sl_host", NULL, 136 },
    { "sl_host", "abi_major", 0 },
    { "sl_host", "abi_minor", 2 },
    { "sl_host", "struct_size", 4 },
    { "sl_host", "libevent_version", 8 },
    { "sl_host", "log", 16 },
    { "sl_host", "error_set", 24 },
    { "sl_host", "error_sys", 32 },
    { "sl_host", "pipe_new", 40 },
    { "sl_host", "pipe_get0_bev", 48 },
    { "sl_host", "pipe_get0_lower", 56 },
    { "sl_host", "pipe_free", 64 },
    { "sl_host", "pipe_shutdown_write", 72 },
    { "sl_host", "pipe_query", 80 },
    { "sl_host", "pipe_set_error", 88 },
    { "sl_host", "opt_str", 96 },
    { "sl_host", "opt_int", 104 },
    { "sl_host", "opt_has", 112 },
    { "sl_host", "resolve", 120 },
    { "sl_host", "resolve_cancel", 128 },
    { "sl_mux_stats", NULL, 48 },
    { "sl_mux_stats", "struct_size", 0 },
    { "sl_mux_stats", "streams_open", 8 },
    { "sl_mux_stats", "streams_total", 16 },
    { "sl_mux_stats", "bytes_sent", 24 },
    { "sl_mux_stats", "bytes_received", 32 },
    { "sl_mux_stats", "last_rtt_ms", 40 },
    { "sl_mux_ops", NULL, 40 },
    { "sl_mux_ops", "struct_size", 0 },
    { "sl_mux_ops", "session_new", 8 },
    { "sl_mux_ops", "open", 16 },
    { "sl_mux_ops", "stats", 24 },
    { "sl_mux_ops", "session_free", 32 },
    { "sl_layer_ops", NULL, 112 },
    { "sl_layer_ops", "struct_size", 0 },
    { "sl_layer_ops", "name", 8 },
    { "sl_layer_ops", "summary", 16 },
    { "sl_layer_ops", "kind", 24 },
    { "sl_layer_ops", "consumes", 25 },
    { "sl_layer_ops", "produces", 26 },
    { "sl_layer_ops", "flags", 28 },
    { "sl_layer_ops", "opts", 32 },
    { "sl_layer_ops", "configure", 40 },
    { "sl_layer_ops", "unconfigure", 48 },
    { "sl_layer_ops", "dial", 56 },
    { "sl_layer_ops", "listen", 64 },
    { "sl_layer_ops", "listener_query", 72 },
    { "sl_layer_ops", "listener_free", 80 },
    { "sl_layer_ops", "wrap", 88 },
    { "sl_layer_ops", "cancel", 96 },
    { "sl_layer_ops", "mux", 104 },
    { "sl_plugin", NULL, 72 },
    { "sl_plugin", "abi_major", 0 },
    { "sl_plugin", "abi_minor", 2 },
    { "sl_plugin", "struct_size", 4 },
    { "sl_plugin", "name", 8 },
    { "sl_plugin", "version", 16 },
    { "sl_plugin", "license", 24 },
    { "sl_plugin", "origin", 32 },
    { "sl_plugin", "description", 40 },
    { "sl_plugin", "layers", 48 },
    { "sl_plugin", "init", 56 },
    { "sl_plugin", "teardown", 64 },
};

#define ROW(s, m) { #s, #m, offsetof(struct s, m) }
#define SIZE(s) { #s, NULL, sizeof(struct s) }

/* The same rows computed from the header being built. */
static const struct row now[] = {
    SIZE(sl_error),
    ROW(sl_error, code),
    ROW(sl_error, sys_errno),
    ROW(sl_error, layer),
    ROW(sl_error, text),
    SIZE(sl_opt_spec),
    ROW(sl_opt_spec, name),
    ROW(sl_opt_spec, type),
    ROW(sl_opt_spec, flags),
    ROW(sl_opt_spec, dflt),
    ROW(sl_opt_spec, help),
    ROW(sl_opt_spec, choices),
    ROW(sl_opt_spec, min),
    ROW(sl_opt_spec, max),
    SIZE(sl_pipe_ops),
    ROW(sl_pipe_ops, struct_size),
    ROW(sl_pipe_ops, shutdown_write),
    ROW(sl_pipe_ops, query),
    ROW(sl_pipe_ops, destroy),
    SIZE(sl_host),
    ROW(sl_host, abi_major),
    ROW(sl_host, abi_minor),
    ROW(sl_host, struct_size),
    ROW(sl_host, libevent_version),
    ROW(sl_host, log),
    ROW(sl_host, error_set),
    ROW(sl_host, error_sys),
    ROW(sl_host, pipe_new),
    ROW(sl_host, pipe_get0_bev),
    ROW(sl_host, pipe_get0_lower),
    ROW(sl_host, pipe_free),
    ROW(sl_host, pipe_shutdown_write),
    ROW(sl_host, pipe_query),
    ROW(sl_host, pipe_set_error),
    ROW(sl_host, opt_str),
    ROW(sl_host, opt_int),
    ROW(sl_host, opt_has),
    ROW(sl_host, resolve),
    ROW(sl_host, resolve_cancel),
    SIZE(sl_mux_stats),
    ROW(sl_mux_stats, struct_size),
    ROW(sl_mux_stats, streams_open),
    ROW(sl_mux_stats, streams_total),
    ROW(sl_mux_stats, bytes_sent),
    ROW(sl_mux_stats, bytes_received),
    ROW(sl_mux_stats, last_rtt_ms),
    SIZE(sl_mux_ops),
    ROW(sl_mux_ops, struct_size),
    ROW(sl_mux_ops, session_new),
    ROW(sl_mux_ops, open),
    ROW(sl_mux_ops, stats),
    ROW(sl_mux_ops, session_free),
    SIZE(sl_layer_ops),
    ROW(sl_layer_ops, struct_size),
    ROW(sl_layer_ops, name),
    ROW(sl_layer_ops, summary),
    ROW(sl_layer_ops, kind),
    ROW(sl_layer_ops, consumes),
    ROW(sl_layer_ops, produces),
    ROW(sl_layer_ops, flags),
    ROW(sl_layer_ops, opts),
    ROW(sl_layer_ops, configure),
    ROW(sl_layer_ops, unconfigure),
    ROW(sl_layer_ops, dial),
    ROW(sl_layer_ops, listen),
    ROW(sl_layer_ops, listener_query),
    ROW(sl_layer_ops, listener_free),
    ROW(sl_layer_ops, wrap),
    ROW(sl_layer_ops, cancel),
    ROW(sl_layer_ops, mux),
    SIZE(sl_plugin),
    ROW(sl_plugin, abi_major),
    ROW(sl_plugin, abi_minor),
    ROW(sl_plugin, struct_size),
    ROW(sl_plugin, name),
    ROW(sl_plugin, version),
    ROW(sl_plugin, license),
    ROW(sl_plugin, origin),
    ROW(sl_plugin, description),
    ROW(sl_plugin, layers),
    ROW(sl_plugin, init),
    ROW(sl_plugin, teardown),
};

static void
test_layout(void)
{
    size_t n = sizeof(abi_1_0) / sizeof(abi_1_0[0]);

    CU_ASSERT_EQUAL_FATAL(n, sizeof(now) / sizeof(now[0]));
    if (sizeof(void *) != 8) {
        fprintf(stderr, "\n  (layout table is for LP64; not checked)\n");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_STRING_EQUAL(abi_1_0[i].type, now[i].type);
        if (abi_1_0[i].value != now[i].value)
            fprintf(stderr, "\n  struct %s%s%s: ABI 1.0 has %zu, the header "
                    "now gives %zu", abi_1_0[i].type,
                    abi_1_0[i].member ? "." : "",
                    abi_1_0[i].member ? abi_1_0[i].member : " size",
                    abi_1_0[i].value, now[i].value);
        CU_ASSERT_EQUAL(abi_1_0[i].value, now[i].value);
    }
}

static void
test_version(void)
{
    /* The table above is for 1.0; a new minor needs new rows. */
    CU_ASSERT_EQUAL(SL_ABI_MAJOR, 1);
    CU_ASSERT_EQUAL(SL_ABI_MINOR, 0);
    /* Numbers are append-only: spot-check that none moved. */
    CU_ASSERT_EQUAL(SL_EABI, -13);
    CU_ASSERT_EQUAL(SL_Q_FD, 5);
    CU_ASSERT_EQUAL(SL_OPT_ADDR, 7);
    CU_ASSERT_EQUAL(SL_LF_SECRET, 1 << 4);
    CU_ASSERT_EQUAL(SL_KIND_MUX, 3);
    CU_ASSERT_STRING_EQUAL(SL_PLUGIN_ENTRY, "sl_plugin_describe");
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "struct layout of ABI 1.0", test_layout },
        { "version and numbering", test_version },
        { NULL, NULL },
    };

    return cu_run("abi", tests);
}
