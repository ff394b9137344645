/*
 * sillad.h - the core API used by roles, tools and tests.
 *
 * Not installed: plugins see only <sillad/plugin.h>.  Functions here are the
 * core's implementations of the sl_host upcalls plus what programs need to
 * load plugins, parse stacks and configs, and dial or listen through them.
 */
#ifndef SILLAD_CORE_H
#define SILLAD_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sillad/plugin.h"

/* ---- errors (error.c) --------------------------------------------------- */

/* Sets *e unless already set; returns code.  e may be NULL. */
int sl_error_set(struct sl_error *e, int code, const char *layer,
                 const char *fmt, ...) SL_PRINTF(4, 5);
int sl_error_setv(struct sl_error *e, int code, const char *layer,
                  const char *fmt, va_list ap);
int sl_error_sys(struct sl_error *e, int sys_errno, const char *layer,
                 const char *fmt, ...) SL_PRINTF(4, 5);
void sl_error_clear(struct sl_error *e);
/* Short text for a code ("connection closed"). */
const char *sl_strerror(int code);
/* "layer: text" (or the code's text) into buf; returns buf. */
const char *sl_error_str(const struct sl_error *e, char *buf, size_t len);

/* ---- logging (log.c) ---------------------------------------------------- */

void sl_log_set_level(int prio);       /* show prio and more severe */
int sl_log_get_level(void);
int sl_log_parse_level(const char *name);  /* "debug" -> 7, -1 if bad */
void sl_log_use_syslog(const char *ident); /* also send to syslog */
void sl_log_set_prefix(const char *prefix);
void sl_log(int prio, const char *layer, const char *fmt, ...)
    SL_PRINTF(3, 4);
void sl_logv(int prio, const char *layer, const char *fmt, va_list ap);

/* ---- pipes (pipe.c) ----------------------------------------------------- */

struct sl_session;

struct sl_pipe *sl_pipe_new(const char *layer, struct bufferevent *bev,
                            struct sl_pipe *lower,
                            const struct sl_pipe_ops *ops, void *layer_ctx);
struct bufferevent *sl_pipe_get0_bev(struct sl_pipe *p);
struct sl_pipe *sl_pipe_get0_lower(struct sl_pipe *p);
const char *sl_pipe_get0_layer(const struct sl_pipe *p);
/* The first error recorded on p or any pipe below it, or NULL. */
const struct sl_error *sl_pipe_get0_error(struct sl_pipe *p);
void sl_pipe_set_error(struct sl_pipe *p, const struct sl_error *err);
/* Keeps the EOF or error events that reach p until its next owner sets
 * callbacks, and raises them again (deferred, once) for that owner: at
 * once when it uses sl_pipe_setcb; within a moment (a timer that backs
 * off from 1 ms to 1 s) when it sets an event callback with
 * bufferevent_setcb, as a layer above does.  Replaces p's callbacks.
 * sl_pipe_new holds every pipe whose bufferevent has no callbacks yet, so
 * nothing a layer reports before its owner is ready is lost; the core
 * holds again each pipe that a layer hands over without callbacks
 * (core_pipe_handover).  Never calls back. */
void sl_pipe_hold(struct sl_pipe *p);
/* A layer handed p to the core: holds it (sl_pipe_hold) unless someone
 * has set callbacks on it. */
void core_pipe_handover(struct sl_pipe *p);
/* Sets the bufferevent callbacks and, if input is already waiting (left by
 * a handshake), schedules the read callback so it is not missed; events
 * held by sl_pipe_hold are raised again. */
void sl_pipe_setcb(struct sl_pipe *p, bufferevent_data_cb readcb,
                   bufferevent_data_cb writecb, bufferevent_event_cb eventcb,
                   void *arg);
int sl_pipe_query(struct sl_pipe *p, int what, void *out, size_t *len);
/* Convenience: text properties into buf ("" when absent); returns buf. */
const char *sl_pipe_protocol(struct sl_pipe *p, char *buf, size_t len);
const char *sl_pipe_remote_addr(struct sl_pipe *p, char *buf, size_t len);
int sl_pipe_shutdown_write(struct sl_pipe *p);
/* True once shutdown_write has been asked for. */
bool sl_pipe_write_shut(const struct sl_pipe *p);
void sl_pipe_free(struct sl_pipe *p);
/* Graceful close: stops calling the user back, lets every byte already
 * written drain through the chain, ends the send direction, then frees the
 * pipe and calls done(arg) if given, always from the loop, never inside
 * this call.  It gives up (frees the pipe with what is left) once
 * timeout_ms pass with no byte leaving the output: a slow but moving
 * drain is never cut off. */
typedef void sl_closed_fn(void *arg);
void sl_pipe_close(struct sl_pipe *p, int timeout_ms, sl_closed_fn *done,
                   void *arg);
/* Makes p own session s: freed with p (a stream of a per-dial session). */
void sl_pipe_attach_session(struct sl_pipe *p, struct sl_session *s);
/* Number of pipe nodes alive in this process (tests look for leaks). */
long sl_pipe_count(void);

/* ---- plugin loader and registry (loader.c) ------------------------------ */

struct sl_layer;     /* a layer provided by a loaded plugin */
struct sl_plugin_rec;

/* Plugin directories: SILLAD_PLUGIN_PATH (colon-separated) if set, else the
 * ones added here, else the installed default. */
void sl_loader_add_dir(const char *dir);
void sl_loader_clear_dirs(void);
const char *sl_loader_default_dir(void);
/* Loads one plugin file; on refusal returns SL_EABI/SL_EINVAL with the
 * loader's sentence in e->text. */
int sl_loader_load_file(const char *path, struct sl_error *e);
/* Loads every *.so of every plugin directory.  Refused files are logged
 * (and counted in *refused) and skipped.  Returns the number loaded. */
int sl_loader_load_all(int *refused);
/* Per-file report of the last load_all: callback per file with the error
 * (code 0 = loaded). */
typedef void sl_loader_report_fn(const char *path,
                                 const struct sl_error *err, void *arg);
void sl_loader_foreach_report(sl_loader_report_fn *fn, void *arg);
/* Registers a plugin descriptor linked into the program (tests). */
int sl_loader_register(const struct sl_plugin *pl, const char *origin,
                       struct sl_error *e);
void sl_loader_unload_all(void);   /* teardown() and forget (not dlclose) */

const struct sl_layer *sl_layer_find(const char *name);
const struct sl_layer_ops *sl_layer_get0_ops(const struct sl_layer *l);
const struct sl_plugin *sl_layer_get0_plugin(const struct sl_layer *l);
const char *sl_layer_get0_path(const struct sl_layer *l);
void *sl_layer_get0_plugin_ctx(const struct sl_layer *l);
typedef void sl_plugin_visit_fn(const struct sl_plugin *pl, const char *path,
                                void *arg);
void sl_plugin_foreach(sl_plugin_visit_fn *fn, void *arg);

/* The upcall table handed to plugins. */
const struct sl_host *sl_host_get(void);

/* ---- options (opts.c) --------------------------------------------------- */

struct sl_opts *sl_opts_new(void);
void sl_opts_free(struct sl_opts *o);
/* Adds key=value (both copied); returns SL_EINVAL on duplicate key. */
int sl_opts_add(struct sl_opts *o, const char *key, const char *value,
                struct sl_error *e);
/* Checks o against spec: unknown keys, missing required keys, bad values.
 * Fills defaults.  where prefixes messages ("stack layer 2 (tcp)"). */
int sl_opts_check(struct sl_opts *o, const struct sl_opt_spec *spec,
                  const char *where, struct sl_error *e);
const char *sl_opts_str(const struct sl_opts *o, const char *key);
int64_t sl_opts_int(const struct sl_opts *o, const char *key);
int sl_opts_has(const struct sl_opts *o, const char *key);
size_t sl_opts_count(const struct sl_opts *o);
const char *sl_opts_key_at(const struct sl_opts *o, size_t i);
/* Value parsers shared with the config code; 0 or SL_EINVAL. */
int sl_parse_duration_ms(const char *s, int64_t *ms);
int sl_parse_size(const char *s, int64_t *bytes);
int sl_parse_bool(const char *s, int *b);
int sl_parse_int(const char *s, int64_t *v);
/* Splits "host:port", "[v6]:port" into parts; 0 or SL_EINVAL. */
int sl_parse_addr(const char *s, char *host, size_t hostlen, char *port,
                  size_t portlen);
const char *sl_opt_type_name(int type);

/* ---- stacks (stack.c) --------------------------------------------------- */

struct sl_stack;

/* Parses "tcp addr=1.2.3.4:80 | sosistab3 cookie='x y' | picomux".
 * Resolves layer names against the registry, checks options and types, and
 * configures every layer.  Errors name the layer position and key. */
struct sl_stack *sl_stack_parse(const char *text, struct sl_error *e);
/* Same from a JSON array text [{"layer":"tcp","addr":"..."}, ...]. */
struct sl_stack *sl_stack_from_json_text(const char *json,
                                         struct sl_error *e);
/* Parses a stack that runs above an existing pipe (a mux stream, say):
 * its first layer must consume a pipe (a wrap or a mux layer), never a
 * base layer.  Such a stack is only for sl_listener_new_above; dialing
 * it fails. */
struct sl_stack *sl_stack_parse_above(const char *text, struct sl_error *e);
void sl_stack_free(struct sl_stack *s);
size_t sl_stack_len(const struct sl_stack *s);
/* SL_IO_PIPE or SL_IO_SESSION: what the whole stack produces. */
int sl_stack_produces(const struct sl_stack *s);
/* Canonical one-line text (secret values shown as "***"). */
char *sl_stack_to_string(const struct sl_stack *s);
const struct sl_layer *sl_stack_layer_at(const struct sl_stack *s, size_t i);
/* The checked options of layer i (defaults filled in; sl_opts_has tells
 * what the text gave), or NULL past the end.  Borrowed from s. */
const struct sl_opts *sl_stack_opts_at(const struct sl_stack *s, size_t i);

/* ---- sessions (session.c) ----------------------------------------------- */

typedef void sl_session_dead_fn(struct sl_session *s,
                                const struct sl_error *why, void *arg);
typedef void sl_session_stream_fn(struct sl_session *s,
                                  struct sl_pipe *stream, const void *meta,
                                  size_t meta_len, void *arg);

/* Wraps a mux layer's session. Streams the peer opens before a callback is
 * set are refused (freed). */
void sl_session_setcb(struct sl_session *s, sl_session_stream_fn *on_stream,
                      sl_session_dead_fn *on_dead, void *arg);
int sl_session_open(struct sl_session *s, const void *meta, size_t len,
                    struct sl_pipe **stream, struct sl_error *e);
int sl_session_stats(struct sl_session *s, struct sl_mux_stats *st);
bool sl_session_is_dead(const struct sl_session *s);
const char *sl_session_layer(const struct sl_session *s);
void sl_session_free(struct sl_session *s);
/* Core internal: starts a session of layer l (cfg) over lower. */
struct sl_session *core_session_new(const struct sl_layer *l, void *cfg,
                                    struct event_base *base,
                                    struct sl_pipe *lower, enum sl_role role,
                                    struct sl_error *e);

/* ---- dialing and listening (dial.c) ------------------------------------- */

struct sl_dialer;    /* a stack or a combinator tree of stacks */
struct sl_dial_op;
struct sl_listener;

/* Result of a dial or an accept: exactly one of p and s is set on
 * success; both NULL and err set on failure. */
typedef void sl_conn_fn(struct sl_pipe *p, struct sl_session *s,
                        const struct sl_error *err, void *arg);

/* Parses a dialer expression: a stack, or race(D, D...), fallback(D, D...),
 * timeout(DURATION, D), delay(DURATION, D). */
struct sl_dialer *sl_dialer_parse(const char *text, struct sl_error *e);
/* The JSON form: an array (a stack) or {"race":[...]}, {"fallback":[...]},
 * {"timeout":"5s","dial":D}, {"delay":"250ms","dial":D}.  json is a
 * json_t * (kept out of this header so users need not include Jansson). */
struct sl_dialer *sl_dialer_from_json(const void *json, const char *where,
                                      struct sl_error *e);
struct sl_dialer *sl_dialer_from_stack(struct sl_stack *s); /* consumes s */
/* Drops the caller's dialer.  May be called while dials of it are in
 * progress or cancelled (from their callback, say): each holds the dialer
 * until it has finished. */
void sl_dialer_free(struct sl_dialer *d);
int sl_dialer_produces(const struct sl_dialer *d);
/* Starts a dial; cb runs exactly once, never inside this call. *op (may be
 * NULL) is valid until cb runs. */
int sl_dialer_dial(struct sl_dialer *d, struct event_base *base,
                   sl_conn_fn *cb, void *arg, struct sl_dial_op **op,
                   struct sl_error *e);
/* cb still runs, later, with SL_ECANCELED. */
void sl_dial_op_cancel(struct sl_dial_op *op);

/* Listens on a stack; cb gets each finished pipe or session (errors of one
 * connection are logged, not reported).  The stack must outlive it. */
struct sl_listener *sl_listener_new(struct sl_stack *s,
                                    struct event_base *base, sl_conn_fn *cb,
                                    void *arg, struct sl_error *e);
int sl_listener_local_addr(struct sl_listener *l, char *buf, size_t len);
/* A listener for a stack from sl_stack_parse_above: it listens on nothing
 * and runs the server side of the stack on each pipe handed to
 * sl_listener_feed, giving cb each finished pipe or session as
 * sl_listener_new does (handshakes of several pipes run at once, and one
 * that fails is logged and freed).  The stack must outlive it.
 * sl_listener_local_addr answers SL_ENOTSUP. */
struct sl_listener *sl_listener_new_above(struct sl_stack *s,
                                          struct event_base *base,
                                          sl_conn_fn *cb, void *arg,
                                          struct sl_error *e);
/* Consumes p (also on failure) and starts the stack on it, server side.
 * cb may run before this returns (a stack of only a mux layer finishes at
 * once).  0, or SL_EINVAL (not a listener above pipes) or SL_ENOMEM. */
int sl_listener_feed(struct sl_listener *l, struct sl_pipe *p);
/* Stops listening, cancels handshakes in progress.  Never calls back. */
void sl_listener_free(struct sl_listener *l);

/* ---- configuration (config.c) ------------------------------------------ */

struct sl_config;

/* Parses a JSON config file (at most 1 MiB); errors give "file:line:column:
 * what".  Values are reached by JSON pointer ("/stacks/local"). */
struct sl_config *sl_config_load(const char *path, struct sl_error *e);
/* Same from text; name is used in messages. */
struct sl_config *sl_config_load_text(const char *text, const char *name,
                                      struct sl_error *e);
void sl_config_free(struct sl_config *c);
/* The json_t * root (void * keeps Jansson out of this header). */
void *sl_config_root(struct sl_config *c);
/* The value at pointer or NULL. */
void *sl_config_get(struct sl_config *c, const char *pointer);
/* "file:line:column" of the value at pointer (or "file"). */
const char *sl_config_where(struct sl_config *c, const char *pointer,
                            char *buf, size_t len);
/* Refuses top-level keys not in allowed (NULL-terminated), naming the
 * key and its position.  The common keys are always allowed. */
int sl_config_check_keys(struct sl_config *c, const char *const *allowed,
                         struct sl_error *e);
/* Applies the common keys ("plugin_dirs", "log_level", "syslog") and
 * loads the plugins.  ident names the program for syslog. */
int sl_config_apply_common(struct sl_config *c, const char *ident,
                           struct sl_error *e);
/* The dialer or listen stack at pointer, errors prefixed with its place. */
struct sl_dialer *sl_config_dialer(struct sl_config *c, const char *pointer,
                                   struct sl_error *e);
struct sl_stack *sl_config_stack(struct sl_config *c, const char *pointer,
                                 struct sl_error *e);

/* ---- signals (signals.c) ------------------------------------------------ */

struct sl_signals;
typedef void sl_signal_fn(void *arg);
/* SIGINT/SIGTERM call on_stop, SIGHUP calls on_reload; SIGPIPE ignored. */
struct sl_signals *sl_signals_new(struct event_base *base,
                                  sl_signal_fn *on_stop,
                                  sl_signal_fn *on_reload, void *arg);
void sl_signals_free(struct sl_signals *s);

/* ---- event loop helpers (loop.c) ---------------------------------------- */

/* Runs fn(arg) once on the next loop iteration. */
int sl_defer(struct event_base *base, void (*fn)(void *), void *arg);
/* Keeps freed memory for reuse instead of returning and refaulting it,
 * and gives libevent an allocator that keeps up to 1024 freed 1 KiB
 * blocks, its smallest buffer chain (glibc; elsewhere nothing).  Programs
 * call it first thing; a plugin must not, since it changes the whole
 * process.  Calling it again does nothing more. */
void sl_tune_malloc(void);
/* Monotonic milliseconds. */
int64_t sl_now_ms(void);
/* Frees the resolver the core keeps for base; call before
 * event_base_free(). */
void sl_resolver_release(struct event_base *base);
/* Core internal: the sl_host.resolve upcall and its cancel. */
void *core_resolve(struct event_base *base, const char *host,
                   const char *port, int family, sl_resolve_fn *cb,
                   void *arg, struct sl_error *e);
void core_resolve_cancel(void *req);

#endif /* SILLAD_CORE_H */
