/*
 * sillad/plugin.h - the sillad plugin API.
 *
 * This is the only header a transport layer needs.  A plugin is a shared
 * object exporting one symbol, sl_plugin_describe(), which returns a
 * pure-data descriptor (struct sl_plugin) listing the layers it provides.
 * The core talks to a layer through its struct sl_layer_ops; the layer talks
 * to the core only through the upcall table struct sl_host handed to it, so a
 * plugin never links against the core and the whole ABI is this file.
 *
 * Data moves through libevent bufferevents: every pipe is one bufferevent,
 * and the control plane (dial, listen, wrap, mux) is these vtables.
 *
 * ABI rules (see sillad-plugin(7)):
 *   - SL_ABI_MAJOR changes when anything here changes incompatibly; the core
 *     refuses a plugin built for another major.
 *   - SL_ABI_MINOR grows when fields are appended to a struct that carries a
 *     struct_size, or when codes, query ids or flags are appended.  The core
 *     refuses a plugin whose minor is newer than its own, and reads only the
 *     fields that fit in a plugin's struct_size.
 *   - Numbers are never reused; retired ones stay as comments.
 *   - The static inline helpers near the end compile into each plugin and
 *     add no symbol or layout, so adding one needs no minor bump.
 *
 * Threading: every call into a layer, and every callback a layer makes, runs
 * on the thread of the event_base the object belongs to.  Layers keep no
 * global mutable state, so one event loop per core needs no locking.
 */
#ifndef SILLAD_PLUGIN_H
#define SILLAD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
struct bufferevent;
struct addrinfo;

#define SL_ABI_MAJOR 1
#define SL_ABI_MINOR 0

/* Printf-style format checking where the compiler offers it. */
#if defined(__GNUC__) || defined(__clang__)
#define SL_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define SL_PRINTF(fmt, args)
#endif

/* ------------------------------------------------------------------------
 * Errors
 *
 * Functions return 0 or a negative SL_E* code.  Detail goes into a
 * caller-provided struct sl_error: the first error set wins, so callers that
 * add context never overwrite the cause.
 */
enum sl_errcode {
    SL_OK = 0,
    SL_EINVAL = -1,     /* bad argument, option or configuration */
    SL_ENOMEM = -2,     /* out of memory */
    SL_ESYS = -3,       /* system call failed; sys_errno says why */
    SL_EPROTO = -4,     /* the peer broke the protocol */
    SL_ETIMEDOUT = -5,  /* a deadline passed */
    SL_ECANCELED = -6,  /* the operation was cancelled */
    SL_ENOTSUP = -7,    /* not supported by this layer */
    SL_ENOENT = -8,     /* no such thing (a query with no answer) */
    SL_ECLOSED = -9,    /* the peer or the session went away */
    SL_EAUTH = -10,     /* authentication failed */
    SL_ERESOLVE = -11,  /* host name resolution failed */
    SL_ELIMIT = -12,    /* a configured bound was reached */
    SL_EABI = -13       /* plugin ABI mismatch */
};

#define SL_ERROR_LAYER_MAX 16
#define SL_ERROR_TEXT_MAX 192

struct sl_error {
    int code;                         /* SL_E*, 0 while unset */
    int sys_errno;                    /* errno for SL_ESYS, else 0 */
    char layer[SL_ERROR_LAYER_MAX];   /* layer that found the fault */
    char text[SL_ERROR_TEXT_MAX];     /* one line, no trailing newline */
};

/* Log priorities (the syslog numbers). */
enum sl_log_prio {
    SL_LOG_ERR = 3,
    SL_LOG_WARNING = 4,
    SL_LOG_NOTICE = 5,
    SL_LOG_INFO = 6,
    SL_LOG_DEBUG = 7
};

/* ------------------------------------------------------------------------
 * Opaque core objects
 */
struct sl_pipe;      /* one bufferevent plus the chain of pipes below it */
struct sl_opts;      /* a validated option set for one layer of a stack */

enum sl_role {
    SL_ROLE_CLIENT = 1,  /* the side that dialed */
    SL_ROLE_SERVER = 2   /* the side that accepted */
};

/* ------------------------------------------------------------------------
 * Pipe properties (sl_pipe_ops.query, sl_host.pipe_query)
 *
 * A query fills out[0..*len) and sets *len to the length used.  A layer that
 * does not know the property returns SL_ENOTSUP and the core asks the pipe
 * below; a layer that knows the property is absent (a TLS layer hiding the
 * shared secret of what it wraps) returns SL_ENOENT, which stops the search.
 */
enum sl_query {
    SL_Q_PROTOCOL = 1,       /* NUL-terminated name of the top layer        */
    SL_Q_REMOTE_ADDR = 2,    /* NUL-terminated "ip:port" or "[ip6]:port"     */
    SL_Q_LOCAL_ADDR = 3,     /* same form, the local end                     */
    SL_Q_SHARED_SECRET = 4,  /* bytes equal on both ends iff the encryption
                                below is secure (sosistab3: 32 bytes)        */
    SL_Q_FD = 5              /* int: the socket at the bottom               */
};

/* ------------------------------------------------------------------------
 * Options
 *
 * Each layer declares its options; the core checks a stack's options against
 * the table before configure() runs, so a layer sees only declared keys with
 * values of the declared type (defaults filled in).
 */
enum sl_opt_type {
    SL_OPT_STR = 1,       /* any text */
    SL_OPT_INT = 2,       /* decimal integer, within [min, max] if set */
    SL_OPT_BOOL = 3,      /* true/false/yes/no/on/off/1/0 */
    SL_OPT_DURATION = 4,  /* "250ms", "5s", "2m", "1h", bare number = ms */
    SL_OPT_SIZE = 5,      /* "4096", "64k", "16M", "1G" (powers of 1024) */
    SL_OPT_ENUM = 6,      /* one of choices ("a|b|c") */
    SL_OPT_ADDR = 7       /* "host:port", "ip:port" or "[ip6]:port" */
};

enum sl_opt_flags {
    SL_OPT_REQUIRED = 1 << 0,  /* the stack must give this key */
    SL_OPT_SECRET = 1 << 1     /* value never appears in logs or errors */
};

/* The layout of this struct is frozen for ABI major 1 (arrays of it have no
 * per-element size); new facts about options go into flags. */
struct sl_opt_spec {
    const char *name;     /* key in the stack, e.g. "cookie" */
    int type;             /* enum sl_opt_type */
    int flags;            /* enum sl_opt_flags */
    const char *dflt;     /* default, written as a user would; NULL = none */
    const char *help;     /* one line for sillad-inspect */
    const char *choices;  /* SL_OPT_ENUM: "a|b|c"; else NULL */
    int64_t min, max;     /* INT, DURATION (ms), SIZE (bytes); min == max
                             means unbounded */
};

/* ------------------------------------------------------------------------
 * Callbacks
 *
 * Every completion fires exactly once and never inside the call that armed
 * it.  A pipe handed to a callback belongs to the receiver.  On failure the
 * pipe is NULL and err says why; err is only valid during the call.
 */
typedef void sl_pipe_fn(struct sl_pipe *p, const struct sl_error *err,
                        void *arg);

/* A stream the peer opened on a mux session, with the opener's metadata
 * (valid only during the call). */
typedef void sl_stream_fn(struct sl_pipe *stream, const void *meta,
                          size_t meta_len, void *arg);

/* A mux session died; every stream of it has seen (or will see) EOF. */
typedef void sl_dead_fn(const struct sl_error *why, void *arg);

/* Result of sl_host.resolve: err is 0 or SL_ERESOLVE/SL_ECANCELED; ai is
 * borrowed for the duration of the call (the core frees it after). */
typedef void sl_resolve_fn(int err, const char *why,
                           const struct addrinfo *ai, void *arg);

/* ------------------------------------------------------------------------
 * Per-pipe operations, given by a layer to sl_host.pipe_new
 */
struct sl_pipe_ops {
    uint32_t struct_size;  /* sizeof(struct sl_pipe_ops) */

    /* Ends the send direction.  The core calls it once, after everything
     * written to this pipe's bufferevent has left its output buffer.
     * NULL means "shut down the pipe below" (right for filters that pass
     * the end of stream through).  A layer without half-close (picomux)
     * closes its stream here.  Returns 0 or SL_E*; the core logs a
     * failure, the layer reports it to the user as a pipe error. */
    int (*shutdown_write)(void *layer_ctx, struct sl_pipe *p);

    /* Answers a property query (enum sl_query), or SL_ENOTSUP to pass it
     * to the pipe below, or SL_ENOENT to say it is absent.  May be NULL. */
    int (*query)(void *layer_ctx, int what, void *out, size_t *len);

    /* Frees layer_ctx.  Called by the core when the pipe is freed, before
     * it frees the pipe's bufferevent and then the pipe below.  Must not
     * call back.  May be NULL. */
    void (*destroy)(void *layer_ctx);
};

/* ------------------------------------------------------------------------
 * Core -> plugin upcalls, handed to init() and configure().
 * Later minors append fields; check struct_size / abi_minor before using
 * a field newer than 1.0.
 */
struct sl_host {
    uint16_t abi_major, abi_minor;
    uint32_t struct_size;
    uint32_t libevent_version;  /* event_get_version_number() of the core */

    /* Logging: never print, and never log keys. */
    void (*log)(int prio, const char *layer, const char *fmt, ...)
        SL_PRINTF(3, 4);

    /* Sets *e (unless it is already set) and returns code. */
    int (*error_set)(struct sl_error *e, int code, const char *layer,
                     const char *fmt, ...) SL_PRINTF(4, 5);

    /* Like error_set with SL_ESYS and the given errno. */
    int (*error_sys)(struct sl_error *e, int sys_errno, const char *layer,
                     const char *fmt, ...) SL_PRINTF(4, 5);

    /* Makes a pipe.  Consumes bev, lower (which may be NULL for a base
     * layer or a mux stream) and layer_ctx: the new pipe owns them, and on
     * failure (NULL) they are already freed, layer_ctx through
     * ops->destroy.  layer must be a static string.
     * ops and layer_ctx describe the layer; ops must outlive the pipe.
     * It names the layer for errors and SL_Q_PROTOCOL. */
    struct sl_pipe *(*pipe_new)(const char *layer, struct bufferevent *bev,
                                struct sl_pipe *lower,
                                const struct sl_pipe_ops *ops,
                                void *layer_ctx);

    /* Borrowed: the pipe's bufferevent, and the pipe below (or NULL). */
    struct bufferevent *(*pipe_get0_bev)(struct sl_pipe *p);
    struct sl_pipe *(*pipe_get0_lower)(struct sl_pipe *p);

    /* Frees a pipe at once, and the chain below it. */
    void (*pipe_free)(struct sl_pipe *p);

    /* Ends p's send direction once its output has drained (see
     * sl_pipe_ops.shutdown_write).  Never calls back. */
    int (*pipe_shutdown_write)(struct sl_pipe *p);

    /* Property query through the chain (enum sl_query). */
    int (*pipe_query)(struct sl_pipe *p, int what, void *out, size_t *len);

    /* Records why a pipe failed, for its user's sl_pipe_get0_error();
     * the first error recorded on a pipe wins, and the user is shown the
     * deepest one recorded in the chain (the most specific cause).
     * Does not call back: the layer then
     * reports BEV_EVENT_ERROR (or EOF) through the bufferevent. */
    void (*pipe_set_error)(struct sl_pipe *p, const struct sl_error *err);

    /* Option values.  The core has already checked them against the
     * layer's table, so these cannot fail: opt_str returns NULL for an
     * absent key without default; opt_int returns the number for INT,
     * milliseconds for DURATION, bytes for SIZE, 0/1 for BOOL, and 0 for
     * an absent key; opt_has says whether the stack gave the key. */
    const char *(*opt_str)(const struct sl_opts *o, const char *key);
    int64_t (*opt_int)(const struct sl_opts *o, const char *key);
    int (*opt_has)(const struct sl_opts *o, const char *key);

    /* Resolves host (a name or a numeric address) and port (numeric)
     * without blocking, with the core's per-event_base resolver.  family
     * is AF_UNSPEC, AF_INET or AF_INET6; only families configured on this
     * host are returned (AI_ADDRCONFIG).  cb runs exactly once, never inside
     * this call.  Returns a handle for resolve_cancel (valid until cb
     * runs), or NULL with *e set. */
    void *(*resolve)(struct event_base *base, const char *host,
                     const char *port, int family, sl_resolve_fn *cb,
                     void *arg, struct sl_error *e);
    /* Cancels a pending resolve: cb still runs once, with SL_ECANCELED. */
    void (*resolve_cancel)(void *req);
};

/* ------------------------------------------------------------------------
 * Multiplexers
 */
struct sl_mux_stats {
    uint32_t struct_size;
    uint64_t streams_open;       /* currently open */
    uint64_t streams_total;      /* opened or accepted since start */
    uint64_t bytes_sent;         /* stream payload sent to the peer */
    uint64_t bytes_received;     /* stream payload received */
    int64_t last_rtt_ms;         /* last liveness round trip, -1 if none */
};

struct sl_mux_ops {
    uint32_t struct_size;

    /* Starts a session over lower.  Consumes lower (also on failure).
     * on_stream runs for every stream the peer opens; on_dead runs once when
     * the session dies, never after session_free and never inside this
     * call.  Returns 0 with *session set, or SL_E*. */
    int (*session_new)(void *cfg, struct event_base *base,
                       struct sl_pipe *lower, enum sl_role role,
                       sl_stream_fn *on_stream, sl_dead_fn *on_dead,
                       void *arg, void **session, struct sl_error *e);

    /* Opens a stream carrying meta (opaque, may be empty).  The stream pipe
     * is usable at once; a mux without a round trip queues the open.
     * Returns 0 with *stream set, or SL_E* (e.g. a dead session). */
    int (*open)(void *session, const void *meta, size_t meta_len,
                struct sl_pipe **stream, struct sl_error *e);

    /* Fills *st (st->struct_size is set by the caller).  May be NULL. */
    int (*stats)(void *session, struct sl_mux_stats *st);

    /* Frees the session: its lower pipe is freed and every stream still
     * open sees EOF (its pipe stays valid until its owner frees it).
     * Never calls back. */
    void (*session_free)(void *session);
};

/* ------------------------------------------------------------------------
 * Layers
 */
enum sl_kind {
    SL_KIND_BASE = 1,  /* dials and listens: nothing -> pipe */
    SL_KIND_WRAP = 2,  /* pipe -> pipe, after an optional handshake */
    SL_KIND_MUX = 3    /* pipe -> session of stream pipes */
};

/* What a layer consumes and produces; the core type-checks stacks with it. */
enum sl_io {
    SL_IO_NONE = 0,
    SL_IO_PIPE = 1,
    SL_IO_SESSION = 2
};

/* Layer flags, informational (sillad-inspect, roles' policy checks). */
enum sl_layer_flags {
    SL_LF_ENCRYPTS = 1 << 0,      /* confidentiality against the path */
    SL_LF_AUTHENTICATES = 1 << 1, /* peers prove a shared secret */
    SL_LF_OBFUSCATES = 1 << 2,    /* bytes look random / innocuous */
    SL_LF_HALF_CLOSE = 1 << 3,    /* shutdown_write keeps reading */
    SL_LF_SECRET = 1 << 4         /* answers SL_Q_SHARED_SECRET */
};

struct sl_layer_ops {
    uint32_t struct_size;        /* sizeof(struct sl_layer_ops) */
    const char *name;            /* as written in stacks: [a-z0-9_-]{1,15} */
    const char *summary;         /* one line */
    uint8_t kind;                /* enum sl_kind */
    uint8_t consumes, produces;  /* enum sl_io, must agree with kind */
    uint32_t flags;              /* enum sl_layer_flags */
    const struct sl_opt_spec *opts;  /* terminated by {NULL}; may be NULL */

    /* Turns validated options into a layer configuration.  h stays valid
     * for the life of the process; keep it in *cfg.  Returns 0 with *cfg
     * set, or SL_E* with e set.  unconfigure (may be NULL) can run while
     * pipes and sessions made with cfg are still alive (a reload): they
     * must copy what they need from it. */
    int (*configure)(const struct sl_host *h, void *plugin_ctx,
                     const struct sl_opts *o, void **cfg,
                     struct sl_error *e);
    void (*unconfigure)(void *cfg);

    /* BASE: connects; done gets the pipe.  *op identifies the attempt
     * for cancel() until done runs. */
    int (*dial)(void *cfg, struct event_base *base, sl_pipe_fn *done,
                void *arg, void **op, struct sl_error *e);

    /* BASE: listens; on_accept gets each pipe (or a non-fatal error to
     * log; accepting goes on).  Returns 0 with *listener set. */
    int (*listen)(void *cfg, struct event_base *base, sl_pipe_fn *on_accept,
                  void *arg, void **listener, struct sl_error *e);
    /* BASE: answers SL_Q_LOCAL_ADDR for a listener (port 0 read back). */
    int (*listener_query)(void *listener, int what, void *out, size_t *len);
    /* BASE: stops listening.  Never calls back. */
    void (*listener_free)(void *listener);

    /* WRAP: consumes lower (also on any failure, sync or async) and
     * runs the handshake for role; done gets the new pipe. */
    int (*wrap)(void *cfg, struct event_base *base, struct sl_pipe *lower,
                enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
                struct sl_error *e);

    /* Cancels a pending dial or wrap: its done callback still runs once,
     * later, with SL_ECANCELED, and any pipe it held is freed. */
    void (*cancel)(void *op);

    /* MUX: the session operations. */
    const struct sl_mux_ops *mux;
};

/* ------------------------------------------------------------------------
 * The plugin descriptor
 */
struct sl_plugin {
    uint16_t abi_major, abi_minor;
    uint32_t struct_size;
    const char *name;         /* plugin name, e.g. "tcp": [a-z0-9_-]{1,15} */
    const char *version;      /* plugin version text */
    const char *license;      /* SPDX identifier */
    const char *origin;       /* URL or author */
    const char *description;  /* one line */
    const struct sl_layer_ops *const *layers;  /* NULL-terminated */

    /* Called once after the ABI checks.  Checks h->abi_minor and the
     * libevent version it needs; may set *plugin_ctx.  May be NULL. */
    int (*init)(const struct sl_host *h, void **plugin_ctx,
                struct sl_error *e);
    /* Called at core shutdown.  May be NULL. */
    void (*teardown)(void *plugin_ctx);
};

/* ------------------------------------------------------------------------
 * Helpers for plugins (Since ABI 1.0)
 *
 * These are static inline functions and macros: they compile into the
 * plugin, add no symbol to either side and change no layout, so adding
 * them, or more like them, needs no ABI minor bump, and a plugin that
 * uses them runs on every core of major 1.  Names ending in "_" are
 * their internals; call the documented names.
 */

/*
 * sl_check_libevent(h, layer, e)
 *
 * For init(): returns 0 when the libevent the core runs with
 * (h->libevent_version) has the major and minor version of the
 * LIBEVENT_VERSION_NUMBER the plugin is compiled against; otherwise sets
 * *e (SL_EABI, naming layer and both versions) and returns SL_EABI.
 * Bufferevents cross the ABI, so the two must agree.  A macro so that
 * LIBEVENT_VERSION_NUMBER is read where the plugin calls it: include
 * <event2/event.h> first.  Never calls back.
 */
#define sl_check_libevent(h, layer, e)                                       \
    sl_check_libevent_version_((h), (layer),                                 \
                               (uint32_t)(LIBEVENT_VERSION_NUMBER), (e))

static inline int
sl_check_libevent_version_(const struct sl_host *h, const char *layer,
                           uint32_t built, struct sl_error *e)
{
    uint32_t running = h->libevent_version;

    /* 0xMMmmpp00: major, minor, patch; the patch level may differ. */
    if ((running >> 16) == (built >> 16))
        return 0;
    return h->error_set(e, SL_EABI, layer, "built for libevent %u.%u "
                        "(%#x), but sillad runs %u.%u (%#x)",
                        (unsigned)(built >> 24),
                        (unsigned)((built >> 16) & 0xff), (unsigned)built,
                        (unsigned)(running >> 24),
                        (unsigned)((running >> 16) & 0xff),
                        (unsigned)running);
}

/*
 * sl_query_answer_bytes(out, len, data, n)
 * sl_query_answer_str(out, len, text)
 *
 * Answer a property query (sl_pipe_ops.query, sl_layer_ops.listener_query)
 * with the n bytes at data, or with text and its terminating NUL: copy the
 * answer into out and set *len to its length, and return 0; or return
 * SL_EINVAL, leaving out and *len untouched, when *len (the room in out)
 * is smaller than the answer.  data and text are only read during the
 * call.  Never call back.
 */
static inline int
sl_query_answer_bytes(void *out, size_t *len, const void *data, size_t n)
{
    if (*len < n)
        return SL_EINVAL;
    if (n > 0)
        memcpy(out, data, n);
    *len = n;
    return 0;
}

static inline int
sl_query_answer_str(void *out, size_t *len, const char *text)
{
    return sl_query_answer_bytes(out, len, text, strlen(text) + 1);
}

typedef const struct sl_plugin *sl_describe_fn(void);

/* The symbol the loader looks up in a module. */
#define SL_PLUGIN_ENTRY "sl_plugin_describe"

#if defined(__GNUC__) || defined(__clang__)
#define SL_EXPORT __attribute__((visibility("default")))
#else
#define SL_EXPORT
#endif

/*
 * SL_PLUGIN_DEFINE(plugin_id, description, version, license, origin, layers,
 *                  init, teardown)
 *
 * Defines the descriptor of plugin `plugin_id` (an identifier, which is
 * also its name) and exports sl_plugin_<plugin_id>_describe() (for tests
 * and static builds); with -DSL_PLUGIN_MODULE it also exports the entry
 * point sl_plugin_describe(), the one symbol the loader looks up.
 * layers is a NULL-terminated array of
 * const struct sl_layer_ops pointers.  describe() has no side effects.
 */
#ifdef SL_PLUGIN_MODULE
#define SL_PLUGIN_ENTRY_DEFINE_(plugin_id)                                   \
    SL_EXPORT const struct sl_plugin *sl_plugin_describe(void);              \
    SL_EXPORT const struct sl_plugin *sl_plugin_describe(void)               \
    {                                                                        \
        return sl_plugin_##plugin_id##_describe();                           \
    }
#else
#define SL_PLUGIN_ENTRY_DEFINE_(plugin_id)
#endif

#define SL_PLUGIN_DEFINE(plugin_id, desc, ver, lic, orig, layer_list, init_fn, \
                         teardown_fn)                                        \
    static const struct sl_plugin sl_plugin_##plugin_id##_desc_ = {          \
        .abi_major = SL_ABI_MAJOR,                                           \
        .abi_minor = SL_ABI_MINOR,                                           \
        .struct_size = sizeof(struct sl_plugin),                             \
        .name = #plugin_id,                                                  \
        .version = (ver),                                                    \
        .license = (lic),                                                    \
        .origin = (orig),                                                    \
        .description = (desc),                                               \
        .layers = (layer_list),                                              \
        .init = (init_fn),                                                   \
        .teardown = (teardown_fn),                                           \
    };                                                                       \
    SL_EXPORT const struct sl_plugin *sl_plugin_##plugin_id##_describe(void); \
    SL_EXPORT const struct sl_plugin *sl_plugin_##plugin_id##_describe(void) \
    {                                                                        \
        return &sl_plugin_##plugin_id##_desc_;                               \
    }                                                                        \
    SL_PLUGIN_ENTRY_DEFINE_(plugin_id)

#ifdef __cplusplus
}
#endif

#endif /* SILLAD_PLUGIN_H */
