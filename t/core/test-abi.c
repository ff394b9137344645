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
 * Offsets do not see a changed parameter or return type, so the type of
 * every function pointer and callback typedef is pinned too, and so is
 * the value of every constant (codes, ids, flags and limits are
 * append-only).  The inline helpers of the header are tested last: they
 * compile into each plugin, so their behaviour is part of the contract.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

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

/*
 * The type of every function pointer member and callback typedef of ABI
 * 1.0, spelled out (no typedef names, so that changing a typedef shows).
 * _Generic picks 1 only when the member's type is compatible with the
 * one written here.
 */
struct sig {
    const char *type, *member;
    int same;
};

#define SIG(s, m, t)                                                         \
    { #s, #m, _Generic(((struct s *)0)->m, t: 1, default: 0) }
#define TSIG(name, t)                                                        \
    { #name, NULL, _Generic((name *)0, t: 1, default: 0) }

static const struct sig sigs_1_0[] = {
    TSIG(sl_pipe_fn, void (*)(struct sl_pipe *, const struct sl_error *,
                              void *)),
    TSIG(sl_stream_fn, void (*)(struct sl_pipe *, const void *, size_t,
                                void *)),
    TSIG(sl_dead_fn, void (*)(const struct sl_error *, void *)),
    TSIG(sl_resolve_fn, void (*)(int, const char *, const struct addrinfo *,
                                 void *)),
    TSIG(sl_describe_fn, const struct sl_plugin *(*)(void)),
    SIG(sl_pipe_ops, shutdown_write, int (*)(void *, struct sl_pipe *)),
    SIG(sl_pipe_ops, query, int (*)(void *, int, void *, size_t *)),
    SIG(sl_pipe_ops, destroy, void (*)(void *)),
    SIG(sl_host, log, void (*)(int, const char *, const char *, ...)),
    SIG(sl_host, error_set,
        int (*)(struct sl_error *, int, const char *, const char *, ...)),
    SIG(sl_host, error_sys,
        int (*)(struct sl_error *, int, const char *, const char *, ...)),
    SIG(sl_host, pipe_new,
        struct sl_pipe *(*)(const char *, struct bufferevent *,
                            struct sl_pipe *, const struct sl_pipe_ops *,
                            void *)),
    SIG(sl_host, pipe_get0_bev, struct bufferevent *(*)(struct sl_pipe *)),
    SIG(sl_host, pipe_get0_lower, struct sl_pipe *(*)(struct sl_pipe *)),
    SIG(sl_host, pipe_free, void (*)(struct sl_pipe *)),
    SIG(sl_host, pipe_shutdown_write, int (*)(struct sl_pipe *)),
    SIG(sl_host, pipe_query,
        int (*)(struct sl_pipe *, int, void *, size_t *)),
    SIG(sl_host, pipe_set_error,
        void (*)(struct sl_pipe *, const struct sl_error *)),
    SIG(sl_host, opt_str,
        const char *(*)(const struct sl_opts *, const char *)),
    SIG(sl_host, opt_int, int64_t (*)(const struct sl_opts *, const char *)),
    SIG(sl_host, opt_has, int (*)(const struct sl_opts *, const char *)),
    SIG(sl_host, resolve,
        void *(*)(struct event_base *, const char *, const char *, int,
                  void (*)(int, const char *, const struct addrinfo *,
                           void *),
                  void *, struct sl_error *)),
    SIG(sl_host, resolve_cancel, void (*)(void *)),
    SIG(sl_mux_ops, session_new,
        int (*)(void *, struct event_base *, struct sl_pipe *, enum sl_role,
                void (*)(struct sl_pipe *, const void *, size_t, void *),
                void (*)(const struct sl_error *, void *), void *, void **,
                struct sl_error *)),
    SIG(sl_mux_ops, open,
        int (*)(void *, const void *, size_t, struct sl_pipe **,
                struct sl_error *)),
    SIG(sl_mux_ops, stats, int (*)(void *, struct sl_mux_stats *)),
    SIG(sl_mux_ops, session_free, void (*)(void *)),
    SIG(sl_layer_ops, configure,
        int (*)(const struct sl_host *, void *, const struct sl_opts *,
                void **, struct sl_error *)),
    SIG(sl_layer_ops, unconfigure, void (*)(void *)),
    SIG(sl_layer_ops, dial,
        int (*)(void *, struct event_base *,
                void (*)(struct sl_pipe *, const struct sl_error *, void *),
                void *, void **, struct sl_error *)),
    SIG(sl_layer_ops, listen,
        int (*)(void *, struct event_base *,
                void (*)(struct sl_pipe *, const struct sl_error *, void *),
                void *, void **, struct sl_error *)),
    SIG(sl_layer_ops, listener_query,
        int (*)(void *, int, void *, size_t *)),
    SIG(sl_layer_ops, listener_free, void (*)(void *)),
    SIG(sl_layer_ops, wrap,
        int (*)(void *, struct event_base *, struct sl_pipe *, enum sl_role,
                void (*)(struct sl_pipe *, const struct sl_error *, void *),
                void *, void **, struct sl_error *)),
    SIG(sl_layer_ops, cancel, void (*)(void *)),
    SIG(sl_layer_ops, mux, const struct sl_mux_ops *),
    SIG(sl_layer_ops, opts, const struct sl_opt_spec *),
    SIG(sl_plugin, layers, const struct sl_layer_ops *const *),
    SIG(sl_plugin, init,
        int (*)(const struct sl_host *, void **, struct sl_error *)),
    SIG(sl_plugin, teardown, void (*)(void *)),
};

/* Every constant of ABI 1.0 and its value. */
struct val {
    const char *name;
    long long now, pinned;
};

#define VAL(name, v) { #name, (long long)(name), (v) }

static const struct val vals_1_0[] = {
    VAL(SL_ABI_MAJOR, 1),
    VAL(SL_OK, 0), VAL(SL_EINVAL, -1), VAL(SL_ENOMEM, -2), VAL(SL_ESYS, -3),
    VAL(SL_EPROTO, -4), VAL(SL_ETIMEDOUT, -5), VAL(SL_ECANCELED, -6),
    VAL(SL_ENOTSUP, -7), VAL(SL_ENOENT, -8), VAL(SL_ECLOSED, -9),
    VAL(SL_EAUTH, -10), VAL(SL_ERESOLVE, -11), VAL(SL_ELIMIT, -12),
    VAL(SL_EABI, -13),
    VAL(SL_ERROR_LAYER_MAX, 16), VAL(SL_ERROR_TEXT_MAX, 192),
    VAL(SL_LOG_ERR, 3), VAL(SL_LOG_WARNING, 4), VAL(SL_LOG_NOTICE, 5),
    VAL(SL_LOG_INFO, 6), VAL(SL_LOG_DEBUG, 7),
    VAL(SL_ROLE_CLIENT, 1), VAL(SL_ROLE_SERVER, 2),
    VAL(SL_Q_PROTOCOL, 1), VAL(SL_Q_REMOTE_ADDR, 2), VAL(SL_Q_LOCAL_ADDR, 3),
    VAL(SL_Q_SHARED_SECRET, 4), VAL(SL_Q_FD, 5),
    VAL(SL_OPT_STR, 1), VAL(SL_OPT_INT, 2), VAL(SL_OPT_BOOL, 3),
    VAL(SL_OPT_DURATION, 4), VAL(SL_OPT_SIZE, 5), VAL(SL_OPT_ENUM, 6),
    VAL(SL_OPT_ADDR, 7),
    VAL(SL_OPT_REQUIRED, 1), VAL(SL_OPT_SECRET, 2),
    VAL(SL_KIND_BASE, 1), VAL(SL_KIND_WRAP, 2), VAL(SL_KIND_MUX, 3),
    VAL(SL_IO_NONE, 0), VAL(SL_IO_PIPE, 1), VAL(SL_IO_SESSION, 2),
    VAL(SL_LF_ENCRYPTS, 1), VAL(SL_LF_AUTHENTICATES, 2),
    VAL(SL_LF_OBFUSCATES, 4), VAL(SL_LF_HALF_CLOSE, 8), VAL(SL_LF_SECRET, 16),
    /* enum sl_role is a parameter type: it must stay the size of int. */
    { "sizeof(enum sl_role)", (long long)sizeof(enum sl_role),
      (long long)sizeof(int) },
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
test_signatures(void)
{
    for (size_t i = 0; i < sizeof(sigs_1_0) / sizeof(sigs_1_0[0]); i++) {
        if (!sigs_1_0[i].same)
            fprintf(stderr, "\n  %s%s%s: the type differs from ABI 1.0",
                    sigs_1_0[i].type, sigs_1_0[i].member ? "." : "",
                    sigs_1_0[i].member ? sigs_1_0[i].member : "");
        CU_ASSERT(sigs_1_0[i].same);
    }
}

static void
test_version(void)
{
    /* The tables above are for 1.0; a new minor needs new rows. */
    CU_ASSERT_EQUAL(SL_ABI_MAJOR, 1);
    CU_ASSERT_EQUAL(SL_ABI_MINOR, 0);
    /* Numbers are append-only: none may move. */
    for (size_t i = 0; i < sizeof(vals_1_0) / sizeof(vals_1_0[0]); i++) {
        if (vals_1_0[i].now != vals_1_0[i].pinned)
            fprintf(stderr, "\n  %s: ABI 1.0 has %lld, the header now "
                    "gives %lld", vals_1_0[i].name, vals_1_0[i].pinned,
                    vals_1_0[i].now);
        CU_ASSERT_EQUAL(vals_1_0[i].now, vals_1_0[i].pinned);
    }
    CU_ASSERT_STRING_EQUAL(SL_PLUGIN_ENTRY, "sl_plugin_describe");
}

/* ---- the inline helpers ------------------------------------------------- */

/* A host with just what the helpers use: error_set, first error wins. */
static int
stub_error_set(struct sl_error *e, int code, const char *layer,
               const char *fmt, ...)
{
    va_list ap;

    if (e->code != 0)
        return code;
    e->code = code;
    snprintf(e->layer, sizeof(e->layer), "%s", layer);
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof(e->text), fmt, ap);
    va_end(ap);
    return code;
}

static void
test_check_libevent(void)
{
    struct sl_host h;
    struct sl_error e;
    uint32_t built = LIBEVENT_VERSION_NUMBER;
    char want[SL_ERROR_TEXT_MAX];

    memset(&h, 0, sizeof(h));
    h.struct_size = sizeof(h);
    h.error_set = stub_error_set;
    memset(&e, 0, sizeof(e));

    /* Same major.minor, any patch level: accepted. */
    h.libevent_version = built;
    CU_ASSERT_EQUAL(sl_check_libevent(&h, "xor", &e), 0);
    h.libevent_version = (built & 0xffff0000u) | 0xff00u;
    CU_ASSERT_EQUAL(sl_check_libevent(&h, "xor", &e), 0);
    CU_ASSERT_EQUAL(e.code, 0);

    /* Another minor: refused, naming both versions. */
    h.libevent_version = built + 0x10000u;
    CU_ASSERT_EQUAL(sl_check_libevent(&h, "xor", &e), SL_EABI);
    CU_ASSERT_EQUAL(e.code, SL_EABI);
    CU_ASSERT_STRING_EQUAL(e.layer, "xor");
    snprintf(want, sizeof(want), "built for libevent %u.%u (%#x), but "
             "sillad runs %u.%u (%#x)", (unsigned)(built >> 24),
             (unsigned)((built >> 16) & 0xff), (unsigned)built,
             (unsigned)(built >> 24), (unsigned)((built >> 16) & 0xff) + 1,
             (unsigned)built + 0x10000u);
    CU_ASSERT_TEXT(e.text, want);

    /* Another major: refused too. */
    memset(&e, 0, sizeof(e));
    h.libevent_version = built + 0x1000000u;
    CU_ASSERT_EQUAL(sl_check_libevent(&h, "xor", &e), SL_EABI);
}

static void
test_query_answer(void)
{
    char buf[8];
    size_t len;
    int fd = 42, got = 0;

    /* Exactly enough room: the text and its NUL. */
    memset(buf, 'x', sizeof(buf));
    len = 4;
    CU_ASSERT_EQUAL(sl_query_answer_str(buf, &len, "tcp"), 0);
    CU_ASSERT_EQUAL(len, 4);
    CU_ASSERT_STRING_EQUAL(buf, "tcp");
    CU_ASSERT_EQUAL(buf[4], 'x');

    /* One byte short: SL_EINVAL, nothing written, len untouched. */
    memset(buf, 'x', sizeof(buf));
    len = 3;
    CU_ASSERT_EQUAL(sl_query_answer_str(buf, &len, "tcp"), SL_EINVAL);
    CU_ASSERT_EQUAL(len, 3);
    CU_ASSERT_EQUAL(buf[0], 'x');

    /* The empty text is one NUL byte. */
    len = sizeof(buf);
    CU_ASSERT_EQUAL(sl_query_answer_str(buf, &len, ""), 0);
    CU_ASSERT_EQUAL(len, 1);
    CU_ASSERT_EQUAL(buf[0], '\0');
    len = 0;
    CU_ASSERT_EQUAL(sl_query_answer_str(buf, &len, ""), SL_EINVAL);

    /* Bytes, e.g. SL_Q_FD's int, to a buffer of any alignment. */
    len = sizeof(buf) - 1;
    CU_ASSERT_EQUAL(sl_query_answer_bytes(buf + 1, &len, &fd, sizeof(fd)),
                    0);
    CU_ASSERT_EQUAL(len, sizeof(fd));
    memcpy(&got, buf + 1, sizeof(got));
    CU_ASSERT_EQUAL(got, 42);
    len = sizeof(fd) - 1;
    CU_ASSERT_EQUAL(sl_query_answer_bytes(buf, &len, &fd, sizeof(fd)),
                    SL_EINVAL);
    CU_ASSERT_EQUAL(len, sizeof(fd) - 1);

    /* Zero bytes fit anywhere, even with no buffer. */
    len = 0;
    CU_ASSERT_EQUAL(sl_query_answer_bytes(NULL, &len, NULL, 0), 0);
    CU_ASSERT_EQUAL(len, 0);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "struct layout of ABI 1.0", test_layout },
        { "function types of ABI 1.0", test_signatures },
        { "version and numbering", test_version },
        { "sl_check_libevent", test_check_libevent },
        { "sl_query_answer_str and _bytes", test_query_answer },
        { NULL, NULL },
    };

    return cu_run("abi", tests);
}
