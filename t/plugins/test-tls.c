/*
 * test-tls.c: the tls layer, both ends of it against each other and
 * against an OpenSSL peer driven here, over socketpairs and bufferevent
 * pairs (the openssl programs are tls-openssl.test's business):
 *
 *   - layer to layer: handshake (self-signed server, pinned or unverified
 *     client), data both ways, bytes sent right behind the handshake,
 *     half-close each way, the shared secret hidden;
 *   - against a plain OpenSSL peer: close_notify is what the layer sends
 *     on shutdown, and what it turns into EOF; an EOF without it is an
 *     EOF too; a corrupt record is an error with OpenSSL's reason;
 *   - handshake failures with their reasons: not TLS, closed, timed out,
 *     wrong pin; cancel on both sides; options.
 *
 * Every wait is bounded, and an alarm ends the program if the loop stops.
 */
#include "config.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "tls-cert.h"
#include "wrap-harness.h"

const struct sl_plugin *sl_plugin_tls_describe(void);

#define HARD_LIMIT_S 120

static int
raw_shut(void *layer_ctx, struct sl_pipe *p)
{
    return wh_raw_lower_shutdown(layer_ctx, p);
}

static const struct sl_pipe_ops raw_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = raw_shut,
};

/* Two connected lower pipes: a socketpair or a bufferevent pair. */
static void
lower_pair(enum wh_raw_kind kind, struct sl_pipe **a, struct sl_pipe **b)
{
    struct bufferevent *x, *y;

    if (kind == WH_RAW_FD) {
        int sv[2];

        CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        evutil_make_socket_nonblocking(sv[0]);
        evutil_make_socket_nonblocking(sv[1]);
        x = bufferevent_socket_new(wh_base, sv[0], BEV_OPT_CLOSE_ON_FREE);
        y = bufferevent_socket_new(wh_base, sv[1], BEV_OPT_CLOSE_ON_FREE);
    } else {
        struct bufferevent *pair[2];

        CU_ASSERT_FATAL(bufferevent_pair_new(wh_base, 0, pair) == 0);
        x = pair[0];
        y = pair[1];
    }
    *a = sl_pipe_new("raw", x, NULL, &raw_ops, NULL);
    *b = sl_pipe_new("raw", y, NULL, &raw_ops, NULL);
}

struct both {
    struct wh_wres c, s;
};

static bool
both_called(void *arg)
{
    struct both *b = arg;

    return b->c.calls > 0 && b->s.calls > 0;
}

/* Handshakes a client (options copts) with a self-signed server. */
static void
handshake(enum wh_raw_kind kind, void *ccfg, void *scfg, struct both *b)
{
    struct sl_pipe *a, *z;

    lower_pair(kind, &a, &z);
    wh_start_wrap(scfg, z, SL_ROLE_SERVER, &b->s, NULL);
    wh_start_wrap(ccfg, a, SL_ROLE_CLIENT, &b->c, NULL);
    CU_ASSERT(b->c.calls == 0 && b->s.calls == 0);
    CU_ASSERT_FATAL(wh_run_until(both_called, b, WH_WAIT_MS));
    CU_ASSERT(!b->c.inside && !b->s.inside);
}

static void
layer_to_layer(enum wh_raw_kind kind)
{
    void *ccfg = wh_cfg("verify", "none", "sni", "example.com", NULL);
    void *scfg = wh_cfg(NULL);
    long pipes0 = sl_pipe_count();
    struct wh_user cu, su;
    struct both b;
    char buf[64];
    size_t len;

    memset(&b, 0, sizeof(b));
    handshake(kind, ccfg, scfg, &b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b.c.p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b.s.p);
    /* Written at once: the first record may travel with the handshake's
     * last flight. */
    bufferevent_write(sl_pipe_get0_bev(b.c.p), "hello", 5);
    wh_user_attach(&cu, b.c.p);
    wh_user_attach(&su, b.s.p);
    wh_user_expect(&su, "hello", 5);
    bufferevent_write(sl_pipe_get0_bev(b.s.p), "world", 5);
    wh_user_expect(&cu, "world", 5);
    CU_ASSERT_STRING_EQUAL(sl_pipe_protocol(b.c.p, buf, sizeof(buf)), "tls");
    len = sizeof(buf);
    CU_ASSERT(sl_pipe_query(b.s.p, SL_Q_SHARED_SECRET, buf, &len) ==
              SL_ENOENT);
    /* Half-close, client first: the server sees EOF, then replies. */
    bufferevent_write(sl_pipe_get0_bev(b.c.p), "bye", 3);
    CU_ASSERT(sl_pipe_shutdown_write(b.c.p) == 0);
    wh_user_expect(&su, "bye", 3);
    CU_ASSERT(wh_run_until(wh_user_ended, &su, WH_WAIT_MS));
    CU_ASSERT(su.eof && !su.error);
    CU_ASSERT(!cu.eof && !cu.error);
    bufferevent_write(sl_pipe_get0_bev(b.s.p), "later", 5);
    CU_ASSERT(sl_pipe_shutdown_write(b.s.p) == 0);
    wh_user_expect(&cu, "later", 5);
    CU_ASSERT(wh_run_until(wh_user_ended, &cu, WH_WAIT_MS));
    CU_ASSERT(cu.eof && !cu.error);
    sl_pipe_free(b.c.p);
    sl_pipe_free(b.s.p);
    wh_user_free(&cu);
    wh_user_free(&su);
    wh_ops->unconfigure(ccfg);
    wh_ops->unconfigure(scfg);
    CU_ASSERT(sl_pipe_count() == pipes0);
}

static void
test_layers_socketpair(void)
{
    layer_to_layer(WH_RAW_FD);
}

static void
test_layers_bevpair(void)
{
    layer_to_layer(WH_RAW_BEV);
}

/* verify=sha256: the server's certificate, from cert= and key= files. */
static void
test_pin(void)
{
    char dir[] = "/tmp/test-tls-XXXXXX", cert[64], key[64], pin[80];
    uint8_t md[32];
    unsigned mdlen = 0;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    FILE *f;
    void *scfg, *good, *wrong;
    struct both b;

    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    CU_ASSERT_FATAL(tls_selfsigned(&x, &k) == 0);
    CU_ASSERT_FATAL((f = fopen(cert, "w")) != NULL);
    PEM_write_X509(f, x);
    fclose(f);
    CU_ASSERT_FATAL((f = fopen(key, "w")) != NULL);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_digest(x, EVP_sha256(), md, &mdlen);
    strcpy(pin, "sha256:");
    for (unsigned i = 0; i < 32; i++)
        sprintf(pin + 7 + 2 * i, "%02X", md[i]);
    scfg = wh_cfg("cert", cert, "key", key, NULL);
    good = wh_cfg("verify", pin, NULL);
    pin[7] = pin[7] == '0' ? '1' : '0';
    wrong = wh_cfg("verify", pin, NULL);
    memset(&b, 0, sizeof(b));
    handshake(WH_RAW_FD, good, scfg, &b);
    CU_ASSERT(b.c.p != NULL && b.s.p != NULL);
    sl_pipe_free(b.c.p);
    sl_pipe_free(b.s.p);
    memset(&b, 0, sizeof(b));
    handshake(WH_RAW_BEV, wrong, scfg, &b);
    CU_ASSERT(b.c.p == NULL);
    CU_ASSERT(b.c.err.code == SL_EAUTH);
    CU_ASSERT(strstr(b.c.err.text, "certificate fingerprint mismatch (the "
                                   "peer's is sha256:") != NULL);
    sl_pipe_free(b.s.p);
    wh_ops->unconfigure(scfg);
    wh_ops->unconfigure(good);
    wh_ops->unconfigure(wrong);
    X509_free(x);
    EVP_PKEY_free(k);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

/* ---- against a plain OpenSSL peer on a socket ---------------------------- */

struct peer {
    SSL_CTX *ctx;
    SSL *ssl;
    struct wh_raw raw;
};

static bool
peer_handshaken(void *arg)
{
    struct peer *pe = arg;
    int r = SSL_do_handshake(pe->ssl);

    if (r == 1)
        return true;
    r = SSL_get_error(pe->ssl, r);
    CU_ASSERT_FATAL(r == SSL_ERROR_WANT_READ || r == SSL_ERROR_WANT_WRITE);
    return false;
}

/* A client peer and the layer's server over a socketpair. */
static struct sl_pipe *
peer_start(struct peer *pe, void *scfg)
{
    struct wh_wres w;
    struct sl_pipe *lower = wh_raw_new(&pe->raw, WH_RAW_FD);

    pe->ctx = SSL_CTX_new(TLS_client_method());
    pe->ssl = SSL_new(pe->ctx);
    SSL_set_fd(pe->ssl, pe->raw.fd);
    SSL_set_connect_state(pe->ssl);
    wh_start_wrap(scfg, lower, SL_ROLE_SERVER, &w, NULL);
    CU_ASSERT_FATAL(wh_run_until(peer_handshaken, pe, WH_WAIT_MS));
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT_PTR_NOT_NULL_FATAL(w.p);
    return w.p;
}

static void
peer_write(struct peer *pe, const char *s)
{
    CU_ASSERT_FATAL(SSL_write(pe->ssl, s, (int)strlen(s)) == (int)strlen(s));
}

struct peer_read {
    struct peer *pe;
    char buf[256];
    int n, err;
};

static bool
peer_readable(void *arg)
{
    struct peer_read *pr = arg;
    int r = SSL_read(pr->pe->ssl, pr->buf + pr->n,
                     (int)sizeof(pr->buf) - 1 - pr->n);

    if (r > 0) {
        pr->n += r;
        return true;
    }
    pr->err = SSL_get_error(pr->pe->ssl, r);
    return pr->err != SSL_ERROR_WANT_READ;
}

static void
peer_free(struct peer *pe)
{
    SSL_free(pe->ssl);
    SSL_CTX_free(pe->ctx);
    wh_raw_free(&pe->raw);
}

/* The layer's shutdown is a close_notify; the peer's close_notify is the
 * layer's EOF; reading goes on after each. */
static void
test_close_notify(void)
{
    void *scfg = wh_cfg(NULL);
    struct peer pe;
    struct peer_read pr;
    struct wh_user u;
    struct sl_pipe *p;

    memset(&pe, 0, sizeof(pe));
    p = peer_start(&pe, scfg);
    wh_user_attach(&u, p);
    bufferevent_write(sl_pipe_get0_bev(p), "abc", 3);
    CU_ASSERT(sl_pipe_shutdown_write(p) == 0);
    memset(&pr, 0, sizeof(pr));
    pr.pe = &pe;
    CU_ASSERT(wh_run_until(peer_readable, &pr, WH_WAIT_MS));
    CU_ASSERT(pr.n == 3 && memcmp(pr.buf, "abc", 3) == 0);
    pr.n = 0;
    CU_ASSERT(wh_run_until(peer_readable, &pr, WH_WAIT_MS));
    CU_ASSERT(pr.n == 0 && pr.err == SSL_ERROR_ZERO_RETURN);
    /* The other way still works, and ends with the peer's close_notify,
     * before the socket itself ends. */
    peer_write(&pe, "def");
    wh_user_expect(&u, "def", 3);
    CU_ASSERT(SSL_shutdown(pe.ssl) == 1);   /* both close_notify done */
    CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
    CU_ASSERT(u.eof && !u.error);
    sl_pipe_free(p);
    wh_user_free(&u);
    peer_free(&pe);
    wh_ops->unconfigure(scfg);
}

/* A socket that ends without close_notify ends reading all the same. */
static void
test_eof_without_close_notify(void)
{
    void *scfg = wh_cfg(NULL);
    struct peer pe;
    struct wh_user u;
    struct sl_pipe *p;

    memset(&pe, 0, sizeof(pe));
    p = peer_start(&pe, scfg);
    wh_user_attach(&u, p);
    peer_write(&pe, "xyz");
    shutdown(pe.raw.fd, SHUT_WR);
    wh_user_expect(&u, "xyz", 3);
    CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
    CU_ASSERT(u.eof && !u.error);
    sl_pipe_free(p);
    wh_user_free(&u);
    peer_free(&pe);
    wh_ops->unconfigure(scfg);
}

/* A corrupt record: an error, with OpenSSL's reason on the pipe. */
static void
test_bad_record(void)
{
    static const uint8_t junk[] = { 0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4,
                                    5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                    16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                                    26, 27, 28, 29, 30, 31, 32 };
    void *scfg = wh_cfg(NULL);
    struct peer pe;
    struct wh_user u;
    struct sl_pipe *p;
    const struct sl_error *err;

    memset(&pe, 0, sizeof(pe));
    p = peer_start(&pe, scfg);
    wh_user_attach(&u, p);
    peer_write(&pe, "ok");
    wh_user_expect(&u, "ok", 2);
    wh_raw_write(&pe.raw, junk, sizeof(junk));
    CU_ASSERT(wh_run_until(wh_user_ended, &u, WH_WAIT_MS));
    CU_ASSERT(u.error);
    err = sl_pipe_get0_error(p);
    CU_ASSERT_FATAL(err != NULL);
    CU_ASSERT(err->code == SL_EPROTO);
    CU_ASSERT_STRING_EQUAL(err->layer, "tls");
    if (strstr(err->text, "reading: ") != err->text)
        fprintf(stderr, "\n  got: %s\n", err->text);
    CU_ASSERT(strstr(err->text, "reading: ") == err->text);
    sl_pipe_free(p);
    wh_user_free(&u);
    peer_free(&pe);
    wh_ops->unconfigure(scfg);
}

/* ---- handshake failures -------------------------------------------------- */

static void
hs_fails(enum sl_role role, const char *send, bool shut, const char *tmo,
         int want_code, const char *want_text)
{
    void *cfg = role == SL_ROLE_CLIENT
                    ? wh_cfg("verify", "none", "handshake_timeout", tmo, NULL)
                    : wh_cfg("handshake_timeout", tmo, NULL);
    struct wh_raw raw;
    struct wh_wres w;
    long pipes0 = sl_pipe_count();

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), role, &w, NULL);
    if (send != NULL)
        wh_raw_writes(&raw, send);
    if (shut)
        wh_raw_shutdown(&raw);
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.p == NULL && !w.inside);
    CU_ASSERT(w.err.code == want_code);
    if (strstr(w.err.text, want_text) == NULL)
        fprintf(stderr, "\n  got: %s\n", w.err.text);
    CU_ASSERT(strstr(w.err.text, want_text) != NULL);
    CU_ASSERT(sl_pipe_count() == pipes0);
    CU_ASSERT(wh_run_until(wh_raw_closed, &raw, WH_WAIT_MS));
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

static void
test_hs_failures(void)
{
    hs_fails(SL_ROLE_CLIENT, "HTTP/1.1 400 Bad Request\r\n\r\n", false,
             "5s", SL_EPROTO, "handshake failed: wrong version number");
    hs_fails(SL_ROLE_SERVER, "GET / HTTP/1.1\r\n\r\n", false, "5s",
             SL_EPROTO, "handshake failed: ");
    hs_fails(SL_ROLE_CLIENT, NULL, true, "5s", SL_ECLOSED,
             "connection closed during the handshake");
    hs_fails(SL_ROLE_SERVER, "\x16\x03\x01", true, "5s", SL_ECLOSED,
             "connection closed during the handshake");
    hs_fails(SL_ROLE_SERVER, NULL, false, "100ms", SL_ETIMEDOUT,
             "handshake not finished within handshake_timeout");
}

static void
cancel(enum sl_role role)
{
    void *cfg = wh_cfg("verify", "none", NULL), *op = NULL;
    struct wh_raw raw;
    struct wh_wres w;
    long pipes0 = sl_pipe_count();

    wh_start_wrap(cfg, wh_raw_new(&raw, WH_RAW_FD), role, &w, &op);
    wh_run_for(5);
    w.in_call = true;
    wh_ops->cancel(op);
    w.in_call = false;
    CU_ASSERT_FATAL(wh_run_until(wh_wres_called, &w, WH_WAIT_MS));
    CU_ASSERT(w.calls == 1 && w.p == NULL && !w.inside);
    CU_ASSERT(w.err.code == SL_ECANCELED);
    wh_run_for(10);
    CU_ASSERT(w.calls == 1);
    CU_ASSERT(sl_pipe_count() == pipes0);
    CU_ASSERT(wh_run_until(wh_raw_closed, &raw, WH_WAIT_MS));
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

static void
test_cancel(void)
{
    cancel(SL_ROLE_CLIENT);
    cancel(SL_ROLE_SERVER);
}

static void
refused(const char *want, ...)
{
    struct sl_error e;
    va_list ap;
    void *cfg;

    va_start(ap, want);
    cfg = wh_cfg_v(&e, ap);
    va_end(ap);
    CU_ASSERT(cfg == NULL);
    if (cfg == NULL && strstr(e.text, want) == NULL)
        fprintf(stderr, "\n  want: %s\n  got:  %s\n", want, e.text);
    CU_ASSERT(cfg == NULL && strstr(e.text, want) != NULL);
    if (cfg != NULL)
        wh_ops->unconfigure(cfg);
}

static void
test_options(void)
{
    void *cfg = wh_cfg(NULL);
    struct wh_raw raw;
    struct sl_error e;
    void *op;

    refused("a SHA-256 fingerprint is 64 hex digits", "verify", "sha256:ab",
            NULL);
    refused("cannot load CA certificates", "verify", "/nonexistent/ca.pem",
            "sni", "x", NULL);
    refused("min_version=1.3 is newer than max_version=1.2", "min_version",
            "1.3", "max_version", "1.2", NULL);
    refused("cert= and key= go together", "cert", "/x.pem", NULL);
    refused("cert=/nonexistent.pem: ", "cert", "/nonexistent.pem", "key",
            "/nonexistent.key", NULL);
    refused("each protocol must be 1 to 255 bytes", "alpn", "a,,b", NULL);
    refused("min_version", "min_version", "1.4", NULL);
    /* The default verify=system needs a name to check: refused at dial. */
    sl_error_clear(&e);
    CU_ASSERT(wh_ops->wrap(cfg, wh_base, wh_raw_new(&raw, WH_RAW_FD),
                           SL_ROLE_CLIENT, wh_wrap_done, NULL, &op, &e) ==
              SL_EINVAL);
    CU_ASSERT(strstr(e.text, "verify=system needs sni=") != NULL);
    wh_raw_free(&raw);
    wh_ops->unconfigure(cfg);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "layer to layer, socketpair", test_layers_socketpair },
        { "layer to layer, bufferevent pair", test_layers_bevpair },
        { "pinned certificate from files", test_pin },
        { "close_notify both ways", test_close_notify },
        { "EOF without close_notify", test_eof_without_close_notify },
        { "corrupt record", test_bad_record },
        { "handshake failures", test_hs_failures },
        { "cancel", test_cancel },
        { "options", test_options },
        { NULL, NULL },
    };
    const struct sl_layer *l;
    struct sl_error e;
    int rc;

    alarm(HARD_LIMIT_S);
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TLS_TEST_VERBOSE") == NULL)
        sl_log_set_level(SL_LOG_ERR);
    sl_error_clear(&e);
    if (sl_loader_register(sl_plugin_tls_describe(), "test-tls", &e) != 0) {
        fprintf(stderr, "test-tls: %s\n", e.text);
        return 2;
    }
    l = sl_layer_find("tls");
    wh_ops = sl_layer_get0_ops(l);
    wh_plugin_ctx = sl_layer_get0_plugin_ctx(l);
    wh_base = event_base_new();
    rc = cu_run("tls", tests);
    event_base_free(wh_base);
    sl_loader_unload_all();
    return rc;
}
