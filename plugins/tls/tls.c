/* tls.c - the tls wrap layer: standard TLS through OpenSSL.
 *
 * Interoperates with Geph5's sillad-native-tls (sillad-tls(7),
 * sillad-and-stacks.md §2.3) and with any TLS peer: after the handshake,
 * the pipe's bytes are TLS application data, with no framing of ours.
 *
 * OpenSSL runs on memory BIOs and this layer moves bytes between them and
 * the pipe below itself, instead of using bufferevent_openssl: in filter
 * mode over another bufferevent that has the same problems as
 * bufferevent_filter (EOF and errors overtaking data), and it offers no
 * way to send close_notify while still reading.  The shape is that of
 * sosistab3's and hex's data path: the pipe handed up is the "user" end of
 * a bufferevent pair and this layer drives the other end, "mine":
 *
 *   lower input -> rbio -> SSL_read -> mine.output -> (pair) -> user input
 *   user output -> (pair) -> mine.input -> SSL_write -> wbio -> lower output
 *
 * Handshake: wrap() makes the SSL object; every time bytes arrive below it
 * feeds them to OpenSSL, runs SSL_do_handshake and sends what that wrote.
 * Bytes that came behind the handshake stay in rbio for the first
 * SSL_read.  A handshake that fails ends the wrap with OpenSSL's reason
 * (and the certificate check's, when that was it); one that does not end
 * within handshake_timeout ends it with SL_ETIMEDOUT.
 *
 * Bounds: decrypting stops while mine.output holds read_buffer bytes; the
 * lower input is fed to OpenSSL 64 KiB at a time, only when it wants more;
 * encrypting stops while the lower output holds TX_QUEUE bytes.
 *
 * Re-entrancy is handled as in hex.c (common/drivenpair.h): entry points
 * count themselves in, destroy inside one only marks the pipe dead, and
 * the pumps guard against their own recursion.
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "sillad/plugin.h"
#include "drivenpair.h"
#include "tls-cert.h"

#define LAYER "tls"
#define TX_CHUNK 16384             /* one TLS record of plaintext */
#define TX_QUEUE (256 * 1024)      /* ciphertext waiting below */
#define RX_FEED (64 * 1024)        /* ciphertext given to OpenSSL at once */
#define RX_CHUNK 16384             /* plaintext taken per SSL_read */

enum verify_mode { V_NONE, V_SYSTEM, V_CAFILE, V_PIN };

/* ---- configuration ----------------------------------------------------- */

struct tls_cfg {
    const struct sl_host *h;
    SSL_CTX *client;             /* made at configure */
    SSL_CTX *server;             /* made at the first server wrap */
    char sni[256];               /* empty: no SNI */
    bool sni_is_ip;
    enum verify_mode verify;
    uint8_t pin[32];
    unsigned char *alpn;         /* wire format, or NULL */
    size_t alpn_len;
    int min_version, max_version;   /* 0: OpenSSL's default */
    char *cert, *key;            /* server files, or NULL: self-signed */
    int64_t handshake_ms;
    size_t read_buffer;
};

static const struct sl_opt_spec tls_opts[] = {
    { "sni", SL_OPT_STR, 0, NULL,
      "client: server name sent and checked (none if absent)", NULL, 0, 0 },
    { "verify", SL_OPT_STR, 0, "system",
      "client: system | none | sha256:FINGERPRINT | CA file", NULL, 0, 0 },
    { "alpn", SL_OPT_STR, 0, NULL,
      "protocols offered (client) or accepted (server), comma-separated",
      NULL, 0, 0 },
    { "min_version", SL_OPT_ENUM, 0, "default", "oldest TLS version allowed",
      "default|1.0|1.1|1.2|1.3", 0, 0 },
    { "max_version", SL_OPT_ENUM, 0, "default", "newest TLS version allowed",
      "default|1.0|1.1|1.2|1.3", 0, 0 },
    { "cert", SL_OPT_STR, 0, NULL,
      "server: certificate chain, PEM (self-signed if absent)", NULL, 0, 0 },
    { "key", SL_OPT_STR, 0, NULL, "server: private key of cert, PEM", NULL,
      0, 0 },
    { "handshake_timeout", SL_OPT_DURATION, 0, "30s",
      "the handshake must end this soon", NULL, 1, 3600000 },
    { "read_buffer", SL_OPT_SIZE, 0, "256k",
      "stop decrypting while this much waits for the reader", NULL, 4096,
      1073741824 },
    { NULL, 0, 0, NULL, NULL, NULL, 0, 0 },
};

/*
 * Why OpenSSL failed, in one line: its last queued reason ("sslv3 alert
 * handshake failure", "wrong version number"), or the certificate check's
 * ("certificate has expired").  Empties the thread's error queue.
 */
static void
ssl_reason(SSL *ssl, int ret, char *buf, size_t len)
{
    unsigned long e, last = 0;
    int err = ssl != NULL ? SSL_get_error(ssl, ret) : SSL_ERROR_SSL;
    long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;

    while ((e = ERR_get_error()) != 0)
        last = e;
    if (vr != X509_V_OK && ERR_GET_REASON(last) ==
                               SSL_R_CERTIFICATE_VERIFY_FAILED) {
        snprintf(buf, len, "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    } else if (last != 0) {
        const char *r = ERR_reason_error_string(last);

        if (r != NULL)
            snprintf(buf, len, "%s", r);
        else
            ERR_error_string_n(last, buf, len);
    } else if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN) {
        snprintf(buf, len, "connection closed by the peer");
    } else {
        snprintf(buf, len, "OpenSSL error %d", err);
    }
}

static int
version_of(const char *v)
{
    return strcmp(v, "1.0") == 0   ? TLS1_VERSION
           : strcmp(v, "1.1") == 0 ? TLS1_1_VERSION
           : strcmp(v, "1.2") == 0 ? TLS1_2_VERSION
           : strcmp(v, "1.3") == 0 ? TLS1_3_VERSION
                                   : 0;
}

/* "h2,http/1.1" -> "\x02h2\x08http/1.1". */
static int
alpn_wire(const struct sl_host *h, const char *list, unsigned char **out,
          size_t *out_len, struct sl_error *e)
{
    size_t n = strlen(list), o = 0;
    unsigned char *w = malloc(n + 1);
    const char *p = list;

    if (w == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    while (*p != '\0') {
        const char *c = strchr(p, ',');
        size_t k = c != NULL ? (size_t)(c - p) : strlen(p);

        if (k == 0 || k > 255 || o + 1 + k > 65535) {
            free(w);
            return h->error_set(e, SL_EINVAL, LAYER, "alpn=%s: each "
                                "protocol must be 1 to 255 bytes, and all "
                                "under 64 KiB", list);
        }
        w[o++] = (unsigned char)k;
        memcpy(w + o, p, k);
        o += k;
        p += k;
        if (*p == ',')
            p++;
    }
    if (o == 0) {
        free(w);
        return h->error_set(e, SL_EINVAL, LAYER, "alpn= is empty");
    }
    *out = w;
    *out_len = o;
    return 0;
}

/*
 * The server's ALPN list lives with its SSL_CTX, which handshakes in
 * progress keep alive after unconfigure: stored as ex_data, freed with the
 * context.  The index is taken once, in init.
 */
static int alpn_index = -1;

static void
alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
          void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

static int
alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
            const unsigned char *in, unsigned int inlen, void *arg)
{
    /* A length (two bytes, big-endian) then the list in wire format. */
    const unsigned char *list =
        SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), alpn_index);
    unsigned char *sel = NULL;

    (void)arg;
    if (list == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    /* The server's order wins; no common protocol is not an error. */
    if (SSL_select_next_proto(&sel, outlen, list + 2,
                              (unsigned)(list[0] << 8 | list[1]), in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int
ctx_versions(struct tls_cfg *c, SSL_CTX *ctx, struct sl_error *e)
{
    if ((c->min_version != 0 &&
         !SSL_CTX_set_min_proto_version(ctx, c->min_version)) ||
        (c->max_version != 0 &&
         !SSL_CTX_set_max_proto_version(ctx, c->max_version)))
        return c->h->error_set(e, SL_EINVAL, LAYER, "this OpenSSL refuses "
                               "the TLS versions asked for");
    /* OpenSSL 3 allows TLS 1.0 and 1.1 only at security level 0. */
    if (c->min_version != 0 && c->min_version < TLS1_2_VERSION)
        SSL_CTX_set_security_level(ctx, 0);
    return 0;
}

static int
hex_nibble(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* "sha256:" then 64 hex digits, optionally in colon-separated pairs. */
static int
parse_pin(const char *s, uint8_t pin[32])
{
    size_t n = 0;

    while (*s != '\0') {
        int hi, lo;

        if (*s == ':') {
            s++;
            continue;
        }
        hi = hex_nibble(s[0]);
        lo = hi < 0 ? -1 : hex_nibble(s[1]);
        if (hi < 0 || lo < 0 || n == 32)
            return -1;
        pin[n++] = (uint8_t)(hi << 4 | lo);
        s += 2;
    }
    return n == 32 ? 0 : -1;
}

static int
client_ctx(struct tls_cfg *c, const char *verify, struct sl_error *e)
{
    const struct sl_host *h = c->h;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int r;

    if (ctx == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "cannot make an OpenSSL "
                            "context");
    c->client = ctx;
    if ((r = ctx_versions(c, ctx, e)) != 0)
        return r;
    if (c->alpn != NULL &&
        SSL_CTX_set_alpn_protos(ctx, c->alpn, (unsigned)c->alpn_len) != 0)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (c->verify == V_SYSTEM) {
        if (SSL_CTX_set_default_verify_paths(ctx) != 1)
            return h->error_set(e, SL_EINVAL, LAYER, "verify=system: cannot "
                                "load the system's CA certificates");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else if (c->verify == V_CAFILE) {
        ERR_clear_error();
        if (SSL_CTX_load_verify_locations(ctx, verify, NULL) != 1) {
            char why[128];

            ssl_reason(NULL, 0, why, sizeof(why));
            return h->error_set(e, SL_EINVAL, LAYER, "verify=%s: cannot "
                                "load CA certificates: %s", verify, why);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return 0;
}

static int
server_ctx_from_files(struct tls_cfg *c, SSL_CTX *ctx, struct sl_error *e)
{
    char why[128];

    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        ssl_reason(NULL, 0, why, sizeof(why));
        return c->h->error_set(e, SL_EINVAL, LAYER, "cert=%s: %s", c->cert,
                               why);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(NULL, 0, why, sizeof(why));
        return c->h->error_set(e, SL_EINVAL, LAYER, "key=%s: %s", c->key,
                               why);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        return c->h->error_set(e, SL_EINVAL, LAYER, "key=%s does not match "
                               "cert=%s", c->key, c->cert);
    }
    return 0;
}

/* The server context: from cert= and key=, or with a throw-away
 * self-signed certificate, made once per configuration. */
static int
server_ctx(struct tls_cfg *c, struct sl_error *e)
{
    SSL_CTX *ctx;
    int r;

    if (c->server != NULL)
        return 0;
    if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL)
        return c->h->error_set(e, SL_ENOMEM, LAYER, "cannot make an OpenSSL "
                               "context");
    if ((r = ctx_versions(c, ctx, e)) != 0)
        goto fail;
    if (c->cert != NULL) {
        r = server_ctx_from_files(c, ctx, e);
    } else {
        X509 *x = NULL;
        EVP_PKEY *k = NULL;

        if (tls_selfsigned(&x, &k) != 0) {
            ERR_clear_error();
            r = c->h->error_set(e, SL_ENOMEM, LAYER, "cannot make a "
                                "self-signed certificate");
        } else if (SSL_CTX_use_certificate(ctx, x) != 1 ||
                   SSL_CTX_use_PrivateKey(ctx, k) != 1) {
            ERR_clear_error();
            r = c->h->error_set(e, SL_ENOMEM, LAYER, "cannot use the "
                                "self-signed certificate");
        }
        X509_free(x);
        EVP_PKEY_free(k);
    }
    if (r != 0)
        goto fail;
    if (c->alpn != NULL) {
        unsigned char *list = malloc(c->alpn_len + 2);

        if (list == NULL) {
            r = c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
            goto fail;
        }
        list[0] = (unsigned char)(c->alpn_len >> 8);
        list[1] = (unsigned char)c->alpn_len;
        memcpy(list + 2, c->alpn, c->alpn_len);
        if (SSL_CTX_set_ex_data(ctx, alpn_index, list) != 1) {
            free(list);
            r = c->h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
            goto fail;
        }
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    }
    c->server = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return r;
}

static void
tls_unconfigure(void *cfg)
{
    struct tls_cfg *c = cfg;

    /* Every SSL made from a context holds a reference to it. */
    SSL_CTX_free(c->client);
    SSL_CTX_free(c->server);
    free(c->alpn);
    free(c->cert);
    free(c->key);
    free(c);
}

static int
tls_configure(const struct sl_host *h, void *plugin_ctx,
              const struct sl_opts *o, void **out, struct sl_error *e)
{
    struct tls_cfg *c = calloc(1, sizeof(*c));
    const char *sni = h->opt_str(o, "sni");
    const char *verify = h->opt_str(o, "verify");
    const char *alpn = h->opt_str(o, "alpn");
    const char *cert = h->opt_str(o, "cert"), *key = h->opt_str(o, "key");
    struct in6_addr a6;
    int r;

    (void)plugin_ctx;
    if (c == NULL)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    c->h = h;
    c->handshake_ms = h->opt_int(o, "handshake_timeout");
    c->read_buffer = (size_t)h->opt_int(o, "read_buffer");
    c->min_version = version_of(h->opt_str(o, "min_version"));
    c->max_version = version_of(h->opt_str(o, "max_version"));
    if (c->min_version != 0 && c->max_version != 0 &&
        c->min_version > c->max_version) {
        r = h->error_set(e, SL_EINVAL, LAYER, "min_version=%s is newer than "
                         "max_version=%s", h->opt_str(o, "min_version"),
                         h->opt_str(o, "max_version"));
        goto fail;
    }
    if (sni != NULL) {
        if (strlen(sni) == 0 || strlen(sni) >= sizeof(c->sni)) {
            r = h->error_set(e, SL_EINVAL, LAYER, "sni= must be 1 to 255 "
                             "bytes");
            goto fail;
        }
        strcpy(c->sni, sni);
        /* An address is checked against the certificate but, per RFC
         * 6066, not sent as SNI. */
        c->sni_is_ip = inet_pton(AF_INET, sni, &a6) == 1 ||
                       inet_pton(AF_INET6, sni, &a6) == 1;
    }
    if (strcmp(verify, "none") == 0) {
        c->verify = V_NONE;
    } else if (strcmp(verify, "system") == 0) {
        c->verify = V_SYSTEM;
    } else if (strncmp(verify, "sha256:", 7) == 0) {
        c->verify = V_PIN;
        if (parse_pin(verify + 7, c->pin) != 0) {
            r = h->error_set(e, SL_EINVAL, LAYER, "verify=%s: a SHA-256 "
                             "fingerprint is 64 hex digits", verify);
            goto fail;
        }
    } else {
        c->verify = V_CAFILE;
    }
    if (alpn != NULL && (r = alpn_wire(h, alpn, &c->alpn, &c->alpn_len, e))
                            != 0)
        goto fail;
    if ((cert == NULL) != (key == NULL)) {
        r = h->error_set(e, SL_EINVAL, LAYER, "cert= and key= go together");
        goto fail;
    }
    if (cert != NULL &&
        ((c->cert = strdup(cert)) == NULL || (c->key = strdup(key)) == NULL)) {
        r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        goto fail;
    }
    if ((r = client_ctx(c, verify, e)) != 0)
        goto fail;
    /* Files are checked now, so that a bad one fails at --check; the
     * self-signed certificate waits for the first accept. */
    if (c->cert != NULL && (r = server_ctx(c, e)) != 0)
        goto fail;
    *out = c;
    return 0;
fail:
    tls_unconfigure(c);
    return r;
}

/* ---- the data path ----------------------------------------------------- */

struct tls_pipe {
    const struct sl_host *h;
    struct sl_pipe *pipe;
    struct sl_pipe *lower;
    struct bufferevent *lbev;
    struct dp dp;                /* the pair: mine, user; busy, dead */
    SSL *ssl;
    BIO *rbio, *wbio;            /* owned by ssl */
    size_t read_buffer;
    struct dp_dir rx_run, tx_run; /* each direction's pump (dp_run) */
    unsigned lower_eof : 1, rx_ended : 1, tx_failed : 1;
    unsigned shut_pending : 1, shut_done : 1;
};

/* Moves what OpenSSL wrote into out.  Returns 0 or -1 (out of memory). */
static int
flush_wbio(BIO *wbio, struct evbuffer *out)
{
    size_t n;

    while ((n = BIO_ctrl_pending(wbio)) > 0) {
        struct evbuffer_iovec v;
        int k;

        if (evbuffer_reserve_space(out, (ev_ssize_t)n, &v, 1) < 1)
            return -1;
        k = BIO_read(wbio, v.iov_base, (int)(n < v.iov_len ? n : v.iov_len));
        if (k <= 0)
            return -1;
        v.iov_len = (size_t)k;
        evbuffer_commit_space(out, &v, 1);
    }
    return 0;
}

/* Gives OpenSSL up to max bytes of src.  Returns the number given. */
static size_t
feed_rbio(BIO *rbio, struct evbuffer *src, size_t max)
{
    size_t given = 0;

    while (given < max && evbuffer_get_length(src) > 0) {
        struct evbuffer_iovec v;
        size_t n;

        if (evbuffer_peek(src, -1, NULL, &v, 1) < 1)
            break;
        n = v.iov_len < max - given ? v.iov_len : max - given;
        if (BIO_write(rbio, v.iov_base, (int)n) != (int)n)
            break;
        evbuffer_drain(src, n);
        given += n;
    }
    return given;
}

static void
tp_free(void *owner)
{
    struct tls_pipe *tp = owner;

    dp_fini(&tp->dp);
    SSL_free(tp->ssl);
    free(tp);
}

/* The pipe failed: records why and tells the user. */
static void
tp_fail(struct tls_pipe *tp, short what, int code, const char *fmt, ...)
    SL_PRINTF(4, 5);

static void
tp_fail(struct tls_pipe *tp, short what, int code, const char *fmt, ...)
{
    char text[SL_ERROR_TEXT_MAX];
    struct sl_error e;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    memset(&e, 0, sizeof(e));
    tp->h->error_set(&e, code, LAYER, "%s", text);
    tp->h->pipe_set_error(tp->pipe, &e);
    tp->rx_ended = 1;
    tp->tx_failed = 1;
    bufferevent_disable(tp->lbev, EV_READ);
    dp_error(&tp->dp, what | BEV_EVENT_ERROR);
}

/* Decrypts into mine.output.  Returns false once receiving has ended. */
static dp_step_fn rx_decrypt;

static int
rx_decrypt(void *owner)
{
    struct tls_pipe *tp = owner;
    struct evbuffer *src = bufferevent_get_input(tp->lbev);
    struct evbuffer *dst = bufferevent_get_output(tp->dp.mine);

    for (;;) {
        struct evbuffer_iovec room;
        size_t n = 0;
        int r, err;

        if (!tp->lower_eof && evbuffer_get_length(dst) >= tp->read_buffer)
            return true;
        if (evbuffer_reserve_space(dst, RX_CHUNK, &room, 1) < 1) {
            tp_fail(tp, BEV_EVENT_READING, SL_ENOMEM, "out of memory");
            return false;
        }
        ERR_clear_error();
        r = SSL_read_ex(tp->ssl, room.iov_base,
                        room.iov_len < RX_CHUNK ? room.iov_len : RX_CHUNK,
                        &n);
        err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(tp->ssl, r);
        /* Reading may have written (a key update answered). */
        if (flush_wbio(tp->wbio, bufferevent_get_output(tp->lbev)) != 0) {
            tp_fail(tp, BEV_EVENT_READING, SL_ENOMEM, "out of memory");
            return false;
        }
        if (tp->dp.dead)
            return false;
        if (r == 1) {
            room.iov_len = n;
            evbuffer_commit_space(dst, &room, 1);
            if (tp->dp.dead)
                return false;
            continue;
        }
        if (err == SSL_ERROR_WANT_READ) {
            if (feed_rbio(tp->rbio, src, RX_FEED) > 0)
                continue;
            if (!tp->lower_eof)
                return true;
            /* The peer ended its sending without close_notify: an end of
             * file all the same, as for most TLS programs. */
            tp->h->log(SL_LOG_INFO, LAYER, "connection closed without "
                       "close_notify");
            tp->rx_ended = 1;
            dp_eof(&tp->dp);
            return false;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            /* close_notify: the peer ended its sending. */
            tp->rx_ended = 1;
            dp_eof(&tp->dp);
            return false;
        }
        {
            char why[160];

            ssl_reason(tp->ssl, r, why, sizeof(why));
            tp_fail(tp, BEV_EVENT_READING, SL_EPROTO, "reading: %s", why);
        }
        return false;
    }
}

static dp_pump_fn rx_pump;

static void
rx_pump(void *owner)
{
    struct tls_pipe *tp = owner;

    if (tp->dp.dead || tp->rx_ended)
        return;
    dp_run(&tp->dp, &tp->rx_run, rx_decrypt, tp, false);
}

/* After the user shut down and everything it wrote is encrypted: send
 * close_notify, then shut down the pipe below. */
static void
maybe_shutdown(struct tls_pipe *tp)
{
    if (!tp->shut_pending || tp->shut_done || tp->dp.dead || tp->tx_failed ||
        evbuffer_get_length(bufferevent_get_input(tp->dp.mine)) > 0)
        return;
    tp->shut_done = 1;
    ERR_clear_error();
    SSL_shutdown(tp->ssl);   /* 0: sent, the peer's still to come */
    ERR_clear_error();
    if (flush_wbio(tp->wbio, bufferevent_get_output(tp->lbev)) != 0) {
        tp_fail(tp, BEV_EVENT_WRITING, SL_ENOMEM, "out of memory");
        return;
    }
    if (!tp->dp.dead)
        tp->h->pipe_shutdown_write(tp->lower);
}

static dp_step_fn tx_encrypt;

static int
tx_encrypt(void *owner)
{
    struct tls_pipe *tp = owner;
    struct evbuffer *src = bufferevent_get_input(tp->dp.mine);
    struct evbuffer *dst = bufferevent_get_output(tp->lbev);
    size_t len;

    while ((len = evbuffer_get_length(src)) > 0 &&
           evbuffer_get_length(dst) < TX_QUEUE) {
        size_t n = len < TX_CHUNK ? len : TX_CHUNK, done = 0;
        const uint8_t *bytes = evbuffer_pullup(src, (ev_ssize_t)n);
        int r;

        if (bytes == NULL) {
            tp_fail(tp, BEV_EVENT_WRITING, SL_ENOMEM, "out of memory");
            return false;
        }
        ERR_clear_error();
        r = SSL_write_ex(tp->ssl, bytes, n, &done);
        if (r != 1) {
            char why[160];

            ssl_reason(tp->ssl, r, why, sizeof(why));
            tp_fail(tp, BEV_EVENT_WRITING, SL_EPROTO, "writing: %s", why);
            return false;
        }
        /* Records reach the lower output before the user's bytes leave
         * mine.input, so a shutdown waiting for the latter never
         * overtakes them.  Either step may call back. */
        if (flush_wbio(tp->wbio, dst) != 0) {
            tp_fail(tp, BEV_EVENT_WRITING, SL_ENOMEM, "out of memory");
            return false;
        }
        if (tp->dp.dead)
            return false;
        evbuffer_drain(src, done);
        if (tp->dp.dead)
            return false;
    }
    return true;
}

static dp_pump_fn tx_pump;

static void
tx_pump(void *owner)
{
    struct tls_pipe *tp = owner;

    if (tp->dp.dead || tp->tx_failed)
        return;
    if (dp_run(&tp->dp, &tp->tx_run, tx_encrypt, tp, false) > 0)
        maybe_shutdown(tp);
}

static dp_event_fn lower_event;

static void
lower_event(void *owner, short what)
{
    struct tls_pipe *tp = owner;

    if (what & BEV_EVENT_EOF) {
        tp->lower_eof = 1;
        rx_pump(tp);
    } else if (what & BEV_EVENT_ERROR) {
        dp_error(&tp->dp, what);   /* the layer below recorded why */
    }
}

static int
tls_shutdown_write(void *layer_ctx, struct sl_pipe *p)
{
    struct tls_pipe *tp = layer_ctx;

    (void)p;
    tp->shut_pending = 1;
    if (!tp->tx_run.busy)
        maybe_shutdown(tp);
    return 0;
}

static int
tls_query(void *layer_ctx, int what, void *out, size_t *len)
{
    (void)layer_ctx;
    (void)out;
    (void)len;
    /* A new pipe type: it hides any shared secret below, as Rust's
     * TlsPipe; protocol "tls" is the core's default. */
    return what == SL_Q_SHARED_SECRET ? SL_ENOENT : SL_ENOTSUP;
}

static void
tls_destroy(void *layer_ctx)
{
    struct tls_pipe *tp = layer_ctx;

    dp_destroy(&tp->dp, tp->lbev);
}

static const struct sl_pipe_ops tls_pipe_ops = {
    .struct_size = sizeof(struct sl_pipe_ops),
    .shutdown_write = tls_shutdown_write,
    .query = tls_query,
    .destroy = tls_destroy,
};

/* Makes the pipe.  Consumes lower and ssl (also on failure). */
static struct sl_pipe *
pipe_make(const struct sl_host *h, size_t read_buffer,
          struct event_base *base, struct sl_pipe *lower, SSL *ssl,
          struct tls_pipe **tpp, struct sl_error *e)
{
    struct tls_pipe *tp = calloc(1, sizeof(*tp));
    struct sl_pipe *p;

    if (tp == NULL || dp_init(&tp->dp, base, tp_free, tp) != 0) {
        if (tp != NULL)
            tp_free(tp);
        SSL_free(ssl);
        h->pipe_free(lower);
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    tp->h = h;
    tp->ssl = ssl;
    tp->rbio = SSL_get_rbio(ssl);
    tp->wbio = SSL_get_wbio(ssl);
    tp->read_buffer = read_buffer;
    tp->lower = lower;
    tp->lbev = h->pipe_get0_bev(lower);
    dp_wire(&tp->dp, tp->lbev, &(const struct dp_wiring){
                .rx = rx_pump, .tx = tx_pump, .lower_event = lower_event,
                .take = TX_QUEUE, .read_buffer = read_buffer,
                .queue = TX_QUEUE });
    p = h->pipe_new(LAYER, tp->dp.user, lower, &tls_pipe_ops, tp);
    if (p == NULL) {
        h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        return NULL;
    }
    tp->pipe = p;
    *tpp = tp;
    return p;
}

/* ---- the handshake ----------------------------------------------------- */

struct tls_wrap {
    const struct sl_host *h;
    struct event_base *base;
    enum sl_role role;
    struct sl_pipe *lower;       /* until the pipe owns it */
    struct bufferevent *lbev;
    SSL *ssl;                    /* until the pipe owns it */
    size_t read_buffer;
    bool pin_set;
    uint8_t pin[32];
    sl_pipe_fn *done;
    void *arg;
    struct event *done_ev;
    struct event *deadline_ev;
    struct tls_pipe *tp;
    struct sl_pipe *result;
    struct sl_error err;
    bool finished, canceled;
    bool in_step, again;
};

static void
drop_lower(struct tls_wrap *w)
{
    if (w->lower == NULL)
        return;
    bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
    w->h->pipe_free(w->lower);
    w->lower = NULL;
    w->lbev = NULL;
}

static void
wrap_free(struct tls_wrap *w)
{
    if (w->done_ev != NULL)
        event_free(w->done_ev);
    if (w->deadline_ev != NULL)
        event_free(w->deadline_ev);
    SSL_free(w->ssl);
    free(w);
}

static void
wrap_deliver(evutil_socket_t fd, short what, void *arg)
{
    struct tls_wrap *w = arg;
    const struct sl_host *h = w->h;
    sl_pipe_fn *done = w->done;
    void *done_arg = w->arg;
    struct sl_pipe *p = w->result;
    struct sl_error err = w->err;

    (void)fd;
    (void)what;
    w->result = NULL;
    if (w->canceled) {
        h->pipe_free(p);
        p = NULL;
        memset(&err, 0, sizeof(err));
        h->error_set(&err, SL_ECANCELED, LAYER, "handshake cancelled");
    } else if (p == NULL && err.code == 0) {
        h->error_set(&err, SL_EPROTO, LAYER, "handshake failed");
    } else if (p != NULL) {
        /* Records that came right behind the handshake are decrypted
         * now; the user has no callbacks yet, so nothing calls back. */
        dp_rx(&w->tp->dp);
    }
    drop_lower(w);
    wrap_free(w);
    done(p, p != NULL ? NULL : &err, done_arg);
}

static void
finish(struct tls_wrap *w)
{
    w->finished = true;
    if (w->deadline_ev != NULL)
        evtimer_del(w->deadline_ev);
    event_active(w->done_ev, EV_TIMEOUT, 0);
}

static void hs_fail(struct tls_wrap *w, int code, const char *fmt, ...)
    SL_PRINTF(3, 4);

static void
hs_fail(struct tls_wrap *w, int code, const char *fmt, ...)
{
    char text[SL_ERROR_TEXT_MAX];
    va_list ap;

    if (w->finished)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    w->h->error_set(&w->err, code, LAYER, "%s", text);
    /* What OpenSSL wrote (an alert) goes out before the close. */
    if (w->lbev != NULL) {
        flush_wbio(SSL_get_wbio(w->ssl), bufferevent_get_output(w->lbev));
        bufferevent_setcb(w->lbev, NULL, NULL, NULL, NULL);
        bufferevent_disable(w->lbev, EV_READ);
    }
    finish(w);
}

/* verify=sha256:…: the peer's certificate must have that digest. */
static bool
pin_matches(struct tls_wrap *w, char *got, size_t got_len)
{
    X509 *x = SSL_get1_peer_certificate(w->ssl);
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    bool ok;

    if (x == NULL) {
        snprintf(got, got_len, "no certificate");
        return false;
    }
    ok = X509_digest(x, EVP_sha256(), md, &mdlen) == 1 && mdlen == 32 &&
         CRYPTO_memcmp(md, w->pin, 32) == 0;
    X509_free(x);
    got[0] = '\0';
    for (unsigned i = 0; i < mdlen && (size_t)(2 * i + 3) <= got_len; i++)
        snprintf(got + 2 * i, 3, "%02x", md[i]);
    return ok;
}

static void
hs_done(struct tls_wrap *w)
{
    struct sl_error e;
    struct sl_pipe *lower;
    SSL *ssl;
    char got[80];

    if (w->pin_set && !pin_matches(w, got, sizeof(got))) {
        hs_fail(w, SL_EAUTH, "certificate fingerprint mismatch (the peer's "
                "is sha256:%s)", got);
        return;
    }
    memset(&e, 0, sizeof(e));
    lower = w->lower;
    ssl = w->ssl;
    w->lower = NULL;
    w->ssl = NULL;
    w->result = pipe_make(w->h, w->read_buffer, w->base, lower, ssl, &w->tp,
                          &e);
    if (w->result == NULL) {
        w->lbev = NULL;
        w->err = e;
    }
    finish(w);
}

static void
hs_step(struct tls_wrap *w)
{
    struct evbuffer *in = bufferevent_get_input(w->lbev);
    int r, err;

    /* All of it: OpenSSL keeps what follows the handshake for SSL_read. */
    feed_rbio(SSL_get_rbio(w->ssl), in, evbuffer_get_length(in));
    ERR_clear_error();
    r = SSL_do_handshake(w->ssl);
    err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(w->ssl, r);
    if (flush_wbio(SSL_get_wbio(w->ssl), bufferevent_get_output(w->lbev)) !=
        0) {
        hs_fail(w, SL_ENOMEM, "out of memory");
        return;
    }
    if (w->finished)
        return;   /* the flush called back: the lower failed */
    if (r == 1) {
        hs_done(w);
    } else if (err != SSL_ERROR_WANT_READ) {
        char why[160];

        ssl_reason(w->ssl, r, why, sizeof(why));
        hs_fail(w, SL_EPROTO, "handshake failed: %s", why);
    }
}

static void
hs_process(struct tls_wrap *w)
{
    if (w->in_step) {
        w->again = true;
        return;
    }
    w->in_step = true;
    do {
        w->again = false;
        hs_step(w);
    } while (w->again && !w->finished);
    w->in_step = false;
}

static void
hs_readcb(struct bufferevent *bev, void *arg)
{
    struct tls_wrap *w = arg;

    (void)bev;
    if (!w->finished)
        hs_process(w);
}

static void
hs_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct tls_wrap *w = arg;

    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    if (!w->finished)
        hs_process(w);
    if (w->tp != NULL) {
        /* Done with the last bytes: the event is the pipe's. */
        dp_lower_event(&w->tp->dp, what);
        return;
    }
    hs_fail(w, SL_ECLOSED, "connection %s during the handshake",
            (what & BEV_EVENT_EOF) ? "closed" : "failed");
}

static void
hs_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct tls_wrap *w = arg;

    (void)fd;
    (void)what;
    hs_fail(w, SL_ETIMEDOUT, "handshake not finished within "
            "handshake_timeout");
}

static int
tls_wrap(void *cfg, struct event_base *base, struct sl_pipe *lower,
         enum sl_role role, sl_pipe_fn *done, void *arg, void **op,
         struct sl_error *e)
{
    struct tls_cfg *c = cfg;
    const struct sl_host *h = c->h;
    struct tls_wrap *w = calloc(1, sizeof(*w));
    struct timeval tv = { (time_t)(c->handshake_ms / 1000),
                          (suseconds_t)(c->handshake_ms % 1000 * 1000) };
    BIO *rbio = NULL, *wbio = NULL;
    int r;

    if (w == NULL) {
        h->pipe_free(lower);
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    }
    w->h = h;
    w->base = base;
    w->role = role;
    w->lower = lower;
    w->lbev = h->pipe_get0_bev(lower);
    w->done = done;
    w->arg = arg;
    w->read_buffer = c->read_buffer;
    if (role == SL_ROLE_SERVER && (r = server_ctx(c, e)) != 0)
        goto fail;
    w->done_ev = event_new(base, -1, 0, wrap_deliver, w);
    w->deadline_ev = evtimer_new(base, hs_deadline, w);
    w->ssl = SSL_new(role == SL_ROLE_SERVER ? c->server : c->client);
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (w->done_ev == NULL || w->deadline_ev == NULL || w->ssl == NULL ||
        rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        r = h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
        goto fail;
    }
    /* An empty rbio means "want more", not end of file. */
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(w->ssl, rbio, wbio);
    if (role == SL_ROLE_CLIENT) {
        /* Checked here, not in configure: a listener has no use for
         * sni= and takes the same options. */
        if ((c->verify == V_SYSTEM || c->verify == V_CAFILE) &&
            c->sni[0] == '\0') {
            r = h->error_set(e, SL_EINVAL, LAYER, "verify=%s needs sni= "
                             "(the name the certificate must carry); "
                             "verify=none skips the check, as Geph does",
                             c->verify == V_SYSTEM ? "system" : "FILE");
            goto fail;
        }
        SSL_set_connect_state(w->ssl);
        if (c->sni[0] != '\0' && !c->sni_is_ip &&
            SSL_set_tlsext_host_name(w->ssl, c->sni) != 1) {
            r = h->error_set(e, SL_EINVAL, LAYER, "sni=%s refused by "
                             "OpenSSL", c->sni);
            goto fail;
        }
        if (c->verify == V_SYSTEM || c->verify == V_CAFILE) {
            X509_VERIFY_PARAM *vp = SSL_get0_param(w->ssl);

            if ((c->sni_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, c->sni)
                              : SSL_set1_host(w->ssl, c->sni)) != 1) {
                r = h->error_set(e, SL_EINVAL, LAYER, "sni=%s: cannot check "
                                 "certificates for it", c->sni);
                goto fail;
            }
        }
        if (c->verify == V_PIN) {
            w->pin_set = true;
            memcpy(w->pin, c->pin, 32);
        }
    } else {
        SSL_set_accept_state(w->ssl);
    }
    ERR_clear_error();
    evtimer_add(w->deadline_ev, &tv);
    bufferevent_setcb(w->lbev, hs_readcb, NULL, hs_eventcb, w);
    bufferevent_enable(w->lbev, EV_READ | EV_WRITE);
    if (role == SL_ROLE_CLIENT)
        hs_process(w);   /* writes the ClientHello; cannot finish here */
    if (evbuffer_get_length(bufferevent_get_input(w->lbev)) > 0)
        bufferevent_trigger(w->lbev, EV_READ,
                            BEV_TRIG_IGNORE_WATERMARKS |
                                BEV_TRIG_DEFER_CALLBACKS);
    *op = w;
    return 0;
fail:
    drop_lower(w);
    wrap_free(w);
    return r;
}

static void
tls_cancel(void *op)
{
    struct tls_wrap *w = op;

    if (w->canceled)
        return;
    w->canceled = true;
    if (w->finished)
        return;   /* wrap_deliver turns the result into ECANCELED */
    drop_lower(w);
    finish(w);
}

static int
tls_init(const struct sl_host *h, void **plugin_ctx, struct sl_error *e)
{
    (void)plugin_ctx;
    if (sl_check_libevent(h, LAYER, e) != 0)
        return SL_EABI;
    if (OPENSSL_init_ssl(0, NULL) != 1)
        return h->error_set(e, SL_EINVAL, LAYER, "OpenSSL failed to "
                            "initialise");
    if (alpn_index < 0)
        alpn_index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0,
                                             NULL, NULL, NULL, alpn_free);
    if (alpn_index < 0)
        return h->error_set(e, SL_ENOMEM, LAYER, "out of memory");
    return 0;
}

static const struct sl_layer_ops tls_layer = {
    .struct_size = sizeof(struct sl_layer_ops),
    .name = LAYER,
    .summary = "standard TLS over OpenSSL (Geph's sillad-native-tls)",
    .kind = SL_KIND_WRAP,
    .consumes = SL_IO_PIPE,
    .produces = SL_IO_PIPE,
    .flags = SL_LF_ENCRYPTS | SL_LF_HALF_CLOSE,
    .opts = tls_opts,
    .configure = tls_configure,
    .unconfigure = tls_unconfigure,
    .wrap = tls_wrap,
    .cancel = tls_cancel,
};

static const struct sl_layer_ops *const tls_layers[] = { &tls_layer, NULL };

SL_PLUGIN_DEFINE(tls, "TLS wrap over OpenSSL", PACKAGE_VERSION, "ISC",
                 "sillad", tls_layers, tls_init, NULL)
