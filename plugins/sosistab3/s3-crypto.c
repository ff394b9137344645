/*
 * s3-crypto.c: the pure crypto core of sosistab3 (see s3-crypto.h).
 */
#include "s3-crypto.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "blake3.h"

/*
 * Measured with bench/bench-aead on the development machine (x86-64 with
 * AVX-512, OpenSSL 3.0, libsodium 1.0.18): OpenSSL is ~3x faster on 16 KiB
 * records, libsodium ~25% faster below 128 bytes, so the default mixes
 * them by size (see s3-crypto.h).
 */
#define S3_AEAD_FASTEST S3_AEAD_HYBRID

#define OBFS_NAME_LENGTHS "obfs_lengths"
#define OBFS_NAME_TIMING "obfs_timing"

const uint8_t s3_empty_hash[S3_HASH_LEN] = {
    0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d,
    0xea, 0x36, 0xdc, 0xc9, 0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1,
    0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f, 0x32, 0x62,
};

struct s3_dir {
    enum s3_aead aead;
    enum s3_role role;
    uint64_t counter;
    int failed;               /* sticky fatal status, 0 while healthy */
    EVP_CIPHER_CTX *evp;      /* OpenSSL, HYBRID: keyed once, IV per use */
    uint8_t key[S3_KEY_LEN];  /* libsodium, HYBRID */
};

/* Which library handles an AEAD operation on len bytes. */
static bool
use_evp(const struct s3_dir *d, size_t len)
{
    return d->aead == S3_AEAD_OPENSSL ||
           (d->aead == S3_AEAD_HYBRID && len >= S3_HYBRID_EVP_MIN);
}

const char *
s3_strerror(int code)
{
    switch (code) {
    case S3_OK:
        return "success";
    case S3_EAGAIN:
        return "more input needed";
    case S3_ENOSPC:
        return "output buffer too small";
    case S3_EINVAL:
        return "invalid argument";
    case S3_ENOMEM:
        return "out of memory";
    case S3_ECRYPTO:
        return "AEAD backend failure";
    case S3_EHSAUTH:
        return "handshake MAC mismatch";
    case S3_EHSPADLEN:
        return "handshake padding too long";
    case S3_EHSPADHASH:
        return "handshake padding hash mismatch";
    case S3_EHSREPLY:
        return "handshake reply is not for our hello";
    case S3_EHSTIME:
        return "handshake timestamp out of window";
    case S3_ELOWORDER:
        return "peer key gives an all-zero shared secret";
    case S3_ELENAUTH:
        return "record length MAC mismatch";
    case S3_ETOOBIG:
        return "record longer than 1 MiB";
    case S3_EBODYAUTH:
        return "record body MAC mismatch";
    case S3_ENONCE:
        return "record counter exhausted";
    default:
        return "unknown error";
    }
}

static void
store32_le(uint8_t *p, uint32_t w)
{
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

static uint32_t
load32_le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void
store64_be(uint8_t *p, uint64_t w)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)w;
        w >>= 8;
    }
}

static uint64_t
load64_be(const uint8_t *p)
{
    uint64_t w = 0;

    for (int i = 0; i < 8; i++)
        w = w << 8 | p[i];
    return w;
}

/* ---- Cookie -------------------------------------------------------- */

static const char *
find_sep(const char *text, size_t len)
{
    for (size_t i = 0; i + 3 <= len; i++)
        if (text[i] == '-' && text[i + 1] == '-' && text[i + 2] == '-')
            return text + i;
    return NULL;
}

/* 0 = neither, 1 = obfs_lengths, 2 = obfs_timing; <0 on failure. */
static int
field_of_key(const char *quoted, size_t len)
{
    json_error_t err;
    json_t *key;
    int field = 0;

    /* Jansson decodes escapes exactly as serde_json does for keys. */
    key = json_loadb(quoted, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (key == NULL)
        return json_error_code(&err) == json_error_out_of_memory ? S3_ENOMEM
                                                                 : S3_EINVAL;
    if (!json_is_string(key)) {
        field = S3_EINVAL;
    } else {
        const char *s = json_string_value(key);
        size_t n = json_string_length(key);
        if (n == strlen(OBFS_NAME_LENGTHS) &&
            memcmp(s, OBFS_NAME_LENGTHS, n) == 0)
            field = 1;
        else if (n == strlen(OBFS_NAME_TIMING) &&
                 memcmp(s, OBFS_NAME_TIMING, n) == 0)
            field = 2;
    }
    json_decref(key);
    return field;
}

/*
 * Jansson keeps the last of repeated keys where serde's derived struct
 * visitor fails with "duplicate field" (and so Rust falls back to the
 * defaults), while a repeated *unknown* key is fine for both.  Jansson's
 * JSON_REJECT_DUPLICATES would refuse the latter too, so instead count the
 * top-level keys ourselves.  This only runs on text Jansson has accepted
 * as one JSON object, so a small scanner that skips strings and tracks
 * nesting is enough.  Returns S3_OK with counts, S3_EINVAL, S3_ENOMEM.
 */
static int
count_fields(const char *s, size_t len, int *n_lengths, int *n_timing)
{
    int depth = 0;
    bool want_key = false;

    *n_lengths = *n_timing = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c == '"') {
            size_t j = i + 1;
            while (j < len && s[j] != '"')
                j += s[j] == '\\' ? 2 : 1;
            if (j >= len)
                return S3_EINVAL;
            if (depth == 1 && want_key) {
                int f = field_of_key(s + i, j - i + 1);
                if (f < 0)
                    return f;
                *n_lengths += f == 1;
                *n_timing += f == 2;
                want_key = false;
            }
            i = j;
            continue;
        }
        switch (c) {
        case '{':
        case '[':
            depth++;
            want_key = c == '{' && depth == 1;
            break;
        case '}':
        case ']':
            depth--;
            break;
        case ',':
            want_key = depth == 1;
            break;
        default:
            break;
        }
    }
    return S3_OK;
}

/*
 * serde_json's from_str::<ObfsParams>: S3_OK with the two values, S3_EINVAL
 * for anything serde would refuse (the caller then uses the defaults), or
 * S3_ENOMEM.  Accepted: an object with both fields as booleans, each
 * exactly once, unknown fields of any JSON type ignored; or an array of
 * exactly two booleans (serde's sequence form of a struct).
 *
 * Known differences, all confined to unknown fields, where Jansson is
 * stricter than serde_json's syntax-only skipping: numbers beyond the
 * double range (1e999, a 400-digit integer), lone UTF-16 surrogate escapes
 * (accepted by newer serde_json only), keys containing \u0000, nesting
 * deeper than 2048.  Such a cookie gets the defaults here but its params
 * in Rust; none of them is a plausible configuration.
 */
static int
parse_params(const char *json, size_t len, bool *lengths, bool *timing)
{
    json_error_t err;
    json_t *root;
    int r = S3_EINVAL;

    /* INT_AS_REAL: serde skips integers of any size, Jansson refuses
     * those beyond int64 unless it may read them as doubles. */
    root = json_loadb(json, len,
                      JSON_DECODE_ANY | JSON_ALLOW_NUL |
                          JSON_DECODE_INT_AS_REAL,
                      &err);
    if (root == NULL) {
        if (json_error_code(&err) == json_error_out_of_memory)
            r = S3_ENOMEM;
        goto out;
    }
    if (json_is_array(root)) {
        json_t *a = json_array_get(root, 0);
        json_t *b = json_array_get(root, 1);
        if (json_array_size(root) != 2 || !json_is_boolean(a) ||
            !json_is_boolean(b))
            goto out;
        *lengths = json_is_true(a);
        *timing = json_is_true(b);
        r = S3_OK;
    } else if (json_is_object(root)) {
        json_t *a = json_object_get(root, OBFS_NAME_LENGTHS);
        json_t *b = json_object_get(root, OBFS_NAME_TIMING);
        int n_lengths, n_timing;
        if (!json_is_boolean(a) || !json_is_boolean(b))
            goto out;
        if ((r = count_fields(json, len, &n_lengths, &n_timing)) != S3_OK)
            goto out;
        if (n_lengths != 1 || n_timing != 1) {
            r = S3_EINVAL;
            goto out;
        }
        *lengths = json_is_true(a);
        *timing = json_is_true(b);
    }
out:
    json_decref(root);
    return r;
}

int
s3_cookie_parse(const char *text, size_t len, struct s3_cookie *out)
{
    struct s3_cookie c = {.obfs_lengths = false, .obfs_timing = false};
    const char *sep = find_sep(text, len);
    size_t secret_len = sep != NULL ? (size_t)(sep - text) : len;
    int r = S3_OK;

    blake3_derive_key(c.key, "cookie", text, secret_len);
    if (sep != NULL) {
        bool lengths = false, timing = false;
        r = parse_params(sep + 3, len - secret_len - 3, &lengths, &timing);
        if (r == S3_OK) {
            c.obfs_lengths = lengths;
            c.obfs_timing = timing;
        } else if (r == S3_EINVAL) {
            /* Rust: unparsable params silently mean the defaults. */
            r = S3_OK;
        } else {
            goto out;
        }
    }
    *out = c;
out:
    sodium_memzero(&c, sizeof c);
    return r;
}

void
s3_cookie_wipe(struct s3_cookie *cookie)
{
    sodium_memzero(cookie, sizeof *cookie);
}

void
s3_hs_key(const struct s3_cookie *cookie, enum s3_side sender,
          uint8_t key[S3_KEY_LEN])
{
    blake3_derive_key(key, sender == S3_SERVER ? "server" : "client",
                      cookie->key, sizeof cookie->key);
}

int
s3_shared_secret(const uint8_t sk[S3_KEY_LEN],
                 const uint8_t peer_pk[S3_KEY_LEN], uint8_t ss[S3_KEY_LEN])
{
    uint8_t tmp[S3_KEY_LEN];
    int r = S3_OK;

    if (crypto_scalarmult(tmp, sk, peer_pk) != 0) {
        r = S3_ELOWORDER;
        goto out;
    }
    memcpy(ss, tmp, sizeof tmp);
out:
    sodium_memzero(tmp, sizeof tmp);
    return r;
}

void
s3_session_keys(const uint8_t ss[S3_KEY_LEN], uint8_t key_up[S3_KEY_LEN],
                uint8_t key_dn[S3_KEY_LEN])
{
    blake3_derive_key(key_up, "up", ss, S3_KEY_LEN);
    blake3_derive_key(key_dn, "dn", ss, S3_KEY_LEN);
}

/* ---- Handshake ----------------------------------------------------- */

void
s3_hs_encode(const struct s3_hs *hs, uint8_t out[S3_HS_PLAIN_LEN])
{
    memcpy(out, hs->eph_pk, 32);
    store64_be(out + 32, hs->timestamp);
    store64_be(out + 40, hs->padding_len);
    memcpy(out + 48, hs->padding_hash, 32);
    memcpy(out + 80, hs->responding_to, 32);
}

void
s3_hs_decode(const uint8_t in[S3_HS_PLAIN_LEN], struct s3_hs *out)
{
    memcpy(out->eph_pk, in, 32);
    out->timestamp = load64_be(in + 32);
    out->padding_len = load64_be(in + 40);
    memcpy(out->padding_hash, in + 48, 32);
    memcpy(out->responding_to, in + 80, 32);
}

/*
 * Handshakes happen once per connection, so they use libsodium's one-shot
 * AEAD directly; the per-direction backends matter only for records.
 */
int
s3_hs_seal(const uint8_t key[S3_KEY_LEN], const uint8_t eph_pk[S3_KEY_LEN],
           uint64_t timestamp, const uint8_t *padding, size_t padding_len,
           const uint8_t responding_to[S3_HASH_LEN],
           const uint8_t nonce[S3_NONCE_LEN], uint8_t out[S3_HS_LEN])
{
    struct s3_hs hs;
    uint8_t plain[S3_HS_PLAIN_LEN];
    unsigned long long clen;

    if (padding == NULL && padding_len > 0)
        return S3_EINVAL;
    memcpy(hs.eph_pk, eph_pk, sizeof hs.eph_pk);
    hs.timestamp = timestamp;
    hs.padding_len = padding_len;
    blake3_hash(hs.padding_hash, padding, padding_len);
    memcpy(hs.responding_to, responding_to, sizeof hs.responding_to);
    s3_hs_encode(&hs, plain);
    memmove(out, nonce, S3_NONCE_LEN);
    crypto_aead_chacha20poly1305_ietf_encrypt(out + S3_NONCE_LEN, &clen,
                                              plain, sizeof plain, NULL, 0,
                                              NULL, out, key);
    sodium_memzero(plain, sizeof plain);
    return S3_OK;
}

int
s3_hs_open(const uint8_t key[S3_KEY_LEN], const uint8_t in[S3_HS_LEN],
           struct s3_hs *out)
{
    uint8_t plain[S3_HS_PLAIN_LEN];
    unsigned long long plen;
    struct s3_hs hs;
    int r = S3_OK;

    if (crypto_aead_chacha20poly1305_ietf_decrypt(
            plain, &plen, NULL, in + S3_NONCE_LEN, S3_HS_LEN - S3_NONCE_LEN,
            NULL, 0, in, key) != 0) {
        r = S3_EHSAUTH;
        goto out;
    }
    s3_hs_decode(plain, &hs);
    if (hs.padding_len > S3_HS_PAD_RECV_MAX) {
        r = S3_EHSPADLEN;
        goto out;
    }
    *out = hs;
out:
    sodium_memzero(plain, sizeof plain);
    return r;
}

int
s3_hs_check_padding(const struct s3_hs *hs, const uint8_t *padding,
                    size_t len)
{
    uint8_t h[S3_HASH_LEN];

    if (len != hs->padding_len || (padding == NULL && len > 0))
        return S3_EHSPADHASH;
    blake3_hash(h, padding, len);
    return sodium_memcmp(h, hs->padding_hash, sizeof h) == 0 ? S3_OK
                                                             : S3_EHSPADHASH;
}

int
s3_hs_check_reply(const struct s3_hs *hs_s, const uint8_t hs_c[S3_HS_LEN])
{
    uint8_t h[S3_HASH_LEN];

    blake3_hash(h, hs_c, S3_HS_LEN);
    return sodium_memcmp(h, hs_s->responding_to, sizeof h) == 0
               ? S3_OK
               : S3_EHSREPLY;
}

int
s3_hs_check_time(uint64_t timestamp, uint64_t now)
{
    uint64_t skew = timestamp > now ? timestamp - now : now - timestamp;

    return skew <= S3_HS_TIME_SKEW ? S3_OK : S3_EHSTIME;
}

/* ---- Randomness ---------------------------------------------------- */

int
s3_keypair(uint8_t sk[S3_KEY_LEN], uint8_t pk[S3_KEY_LEN])
{
    uint8_t s[S3_KEY_LEN];
    int r = S3_OK;

    randombytes_buf(s, sizeof s);
    /* Fails only for a scalar that clamps to zero, which cannot happen. */
    if (crypto_scalarmult_base(pk, s) != 0) {
        r = S3_ECRYPTO;
        goto out;
    }
    memcpy(sk, s, sizeof s);
out:
    sodium_memzero(s, sizeof s);
    return r;
}

size_t
s3_random_padding_len(void)
{
    return randombytes_uniform(S3_HS_PAD_SEND_MAX + 1);
}

unsigned
s3_random_jitter(void)
{
    return randombytes_uniform(S3_OBFS_JITTER_MAX + 1);
}

void
s3_random_nonce(uint8_t nonce[S3_NONCE_LEN])
{
    randombytes_buf(nonce, S3_NONCE_LEN);
}

int
s3_hs_seal_random(const uint8_t key[S3_KEY_LEN],
                  const uint8_t eph_pk[S3_KEY_LEN], uint64_t timestamp,
                  const uint8_t responding_to[S3_HASH_LEN], uint8_t *out,
                  size_t *out_len)
{
    uint8_t nonce[S3_NONCE_LEN];
    size_t pad = s3_random_padding_len();
    int r;

    s3_random_nonce(nonce);
    randombytes_buf(out + S3_HS_LEN, pad);
    r = s3_hs_seal(key, eph_pk, timestamp, out + S3_HS_LEN, pad,
                   responding_to, nonce, out);
    if (r == S3_OK)
        *out_len = S3_HS_LEN + pad;
    return r;
}

/* ---- AEAD backends -------------------------------------------------- */

static void
record_nonce(uint8_t nonce[S3_NONCE_LEN], uint64_t n)
{
    for (int i = 0; i < 8; i++)
        nonce[i] = (uint8_t)(n >> (8 * i));
    memset(nonce + 8, 0, 4);
}

/* Encrypt len bytes (in may equal out) and write the tag. */
static int
aead_seal(struct s3_dir *d, uint64_t n, const uint8_t *in, size_t len,
          uint8_t *out, uint8_t tag[S3_TAG_LEN])
{
    uint8_t nonce[S3_NONCE_LEN];
    uint8_t final[S3_TAG_LEN];
    int outl = 0, finl = 0;

    record_nonce(nonce, n);
    if (!use_evp(d, len)) {
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(
            out, tag, NULL, in, len, NULL, 0, NULL, nonce, d->key);
        return S3_OK;
    }
    /* Only the IV changes; the key schedule from s3_dir_new stays. */
    if (EVP_CipherInit_ex(d->evp, NULL, NULL, NULL, nonce, -1) != 1)
        return S3_ECRYPTO;
    if (len > 0 && EVP_CipherUpdate(d->evp, out, &outl, in, (int)len) != 1)
        return S3_ECRYPTO;
    if (EVP_CipherFinal_ex(d->evp, final, &finl) != 1)
        return S3_ECRYPTO;
    if (EVP_CIPHER_CTX_ctrl(d->evp, EVP_CTRL_AEAD_GET_TAG, S3_TAG_LEN,
                            tag) != 1)
        return S3_ECRYPTO;
    return S3_OK;
}

/*
 * Verify and decrypt len bytes into out (in may equal out).  out == NULL
 * verifies only, for padding bodies that are discarded anyway.  Returns
 * S3_OK, S3_EBODYAUTH for a bad tag (the caller picks the precise code),
 * or S3_ECRYPTO.  On a bad tag nothing decrypted is left in out.
 */
static int
aead_open(struct s3_dir *d, uint64_t n, const uint8_t *in, size_t len,
          const uint8_t tag[S3_TAG_LEN], uint8_t *out)
{
    uint8_t nonce[S3_NONCE_LEN];
    uint8_t tagbuf[S3_TAG_LEN];
    uint8_t scratch[4096];
    int outl = 0;
    int r = S3_OK;

    record_nonce(nonce, n);
    if (!use_evp(d, len)) {
        /* libsodium verifies first and decrypts only on success. */
        if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                out, NULL, in, len, tag, NULL, 0, nonce, d->key) != 0)
            return S3_EBODYAUTH;
        return S3_OK;
    }
    memcpy(tagbuf, tag, sizeof tagbuf);
    if (EVP_CipherInit_ex(d->evp, NULL, NULL, NULL, nonce, -1) != 1 ||
        EVP_CIPHER_CTX_ctrl(d->evp, EVP_CTRL_AEAD_SET_TAG, S3_TAG_LEN,
                            tagbuf) != 1) {
        r = S3_ECRYPTO;
        goto out;
    }
    if (out != NULL) {
        if (len > 0 &&
            EVP_CipherUpdate(d->evp, out, &outl, in, (int)len) != 1) {
            r = S3_ECRYPTO;
            goto out;
        }
    } else {
        /* EVP treats a NULL output as AAD, so decrypt into scratch. */
        for (size_t off = 0; off < len; off += sizeof scratch) {
            size_t k = len - off < sizeof scratch ? len - off
                                                  : sizeof scratch;
            if (EVP_CipherUpdate(d->evp, scratch, &outl, in + off,
                                 (int)k) != 1) {
                r = S3_ECRYPTO;
                goto out;
            }
        }
    }
    /* OpenSSL compares the tag in constant time here. */
    if (EVP_CipherFinal_ex(d->evp, scratch, &outl) != 1)
        r = S3_EBODYAUTH;
out:
    /* EVP decrypts before it verifies: drop unauthenticated plaintext. */
    if (r != S3_OK && out != NULL)
        sodium_memzero(out, len);
    sodium_memzero(scratch, sizeof scratch);
    return r;
}

/* ---- Record layer -------------------------------------------------- */

const char *
s3_aead_name(enum s3_aead aead)
{
    switch (aead == S3_AEAD_DEFAULT ? S3_AEAD_FASTEST : aead) {
    case S3_AEAD_OPENSSL:
        return "openssl";
    case S3_AEAD_SODIUM:
        return "libsodium";
    case S3_AEAD_HYBRID:
        return "hybrid";
    default:
        return "unknown";
    }
}

int
s3_dir_new(const uint8_t key[S3_KEY_LEN], enum s3_role role,
           enum s3_aead aead, struct s3_dir **out)
{
    struct s3_dir *d = NULL;
    int r = S3_OK;

    if (aead == S3_AEAD_DEFAULT)
        aead = S3_AEAD_FASTEST;
    if ((aead != S3_AEAD_OPENSSL && aead != S3_AEAD_SODIUM &&
         aead != S3_AEAD_HYBRID) ||
        (role != S3_SEAL && role != S3_OPEN)) {
        r = S3_EINVAL;
        goto out;
    }
    if ((d = calloc(1, sizeof *d)) == NULL) {
        r = S3_ENOMEM;
        goto out;
    }
    d->aead = aead;
    d->role = role;
    if (aead != S3_AEAD_OPENSSL)
        memcpy(d->key, key, S3_KEY_LEN);
    if (aead != S3_AEAD_SODIUM) {
        if ((d->evp = EVP_CIPHER_CTX_new()) == NULL) {
            r = S3_ENOMEM;
            goto out;
        }
        if (EVP_CipherInit_ex(d->evp, EVP_chacha20_poly1305(), NULL, key,
                              NULL, role == S3_SEAL) != 1) {
            r = S3_ECRYPTO;
            goto out;
        }
    }
    *out = d;
    d = NULL;
out:
    s3_dir_free(d);
    return r;
}

void
s3_dir_free(struct s3_dir *dir)
{
    if (dir == NULL)
        return;
    /* EVP_CIPHER_CTX_free cleanses the key schedule it holds. */
    EVP_CIPHER_CTX_free(dir->evp);
    sodium_memzero(dir, sizeof *dir);
    free(dir);
}

enum s3_aead
s3_dir_aead(const struct s3_dir *dir)
{
    return dir->aead;
}

uint64_t
s3_dir_counter(const struct s3_dir *dir)
{
    return dir->counter;
}

/* Common checks before using a state; counter n and n + 1 must exist. */
static int
dir_usable(const struct s3_dir *d, enum s3_role role)
{
    if (d->role != role)
        return S3_EINVAL;
    if (d->failed != 0)
        return d->failed;
    if (d->counter > UINT64_MAX - 2)
        return S3_ENONCE;
    return S3_OK;
}

/*
 * enc_len || tag_len || enc_body || tag_body with nonces n and n + 1.
 * body is len bytes and may be exactly out + 20.
 */
static int
seal_record(struct s3_dir *d, int32_t L, const uint8_t *body, size_t len,
            uint8_t *out)
{
    uint8_t hdr[4];
    int r;

    store32_le(hdr, (uint32_t)L);
    if ((r = aead_seal(d, d->counter, hdr, sizeof hdr, out, out + 4)) != 0)
        goto out;
    if ((r = aead_seal(d, d->counter + 1, body, len, out + S3_REC_HDR_LEN,
                       out + S3_REC_HDR_LEN + len)) != 0)
        goto out;
    d->counter += 2;
out:
    if (r != S3_OK)
        d->failed = r;
    return r;
}

int
s3_rec_seal(struct s3_dir *dir, const uint8_t *data, size_t len,
            uint8_t *out, size_t outcap)
{
    int r;

    if ((r = dir_usable(dir, S3_SEAL)) != S3_OK)
        return r;
    if (len > S3_REC_MAX_BODY || outcap < len + S3_REC_OVERHEAD ||
        (data == NULL && len > 0))
        return S3_EINVAL;
    /* Empty record: point at out, which is valid, so no NULL reaches the
     * backends; nothing is read from it. */
    return seal_record(dir, (int32_t)len,
                       len > 0 ? data : out + S3_REC_HDR_LEN, len, out);
}

int
s3_rec_seal_padding(struct s3_dir *dir, size_t p, uint8_t *out,
                    size_t outcap)
{
    int r;

    if ((r = dir_usable(dir, S3_SEAL)) != S3_OK)
        return r;
    if (p > S3_REC_MAX_BODY || outcap < p + S3_REC_OVERHEAD)
        return S3_EINVAL;
    /* The Rust sender pads with zero bytes; encrypt them in place. */
    memset(out + S3_REC_HDR_LEN, 0, p);
    return seal_record(dir, -(int32_t)p, out + S3_REC_HDR_LEN, p, out);
}

bool
s3_obfs_pad_len(size_t len, unsigned r, size_t *p)
{
    size_t orig, desired, pow2 = 1;

    if (len >= S3_OBFS_THRESHOLD - S3_REC_OVERHEAD)
        return false;
    orig = len + S3_REC_OVERHEAD;
    while (pow2 < orig + S3_REC_OVERHEAD)
        pow2 <<= 1;
    desired = pow2 + r;
    *p = desired - orig - S3_REC_OVERHEAD;
    return true;
}

size_t
s3_write_size(size_t len, bool obfs_lengths, unsigned r)
{
    size_t records = len == 0 ? 1 : (len - 1) / S3_REC_MAX_BODY + 1;
    size_t total, p;

    if (r > S3_OBFS_JITTER_MAX || len > SIZE_MAX / 2)
        return 0;
    total = len + records * S3_REC_OVERHEAD;
    if (obfs_lengths && s3_obfs_pad_len(len, r, &p))
        total += p + S3_REC_OVERHEAD;
    return total;
}

int
s3_write_seal(struct s3_dir *dir, const uint8_t *data, size_t len,
              bool obfs_lengths, unsigned r, uint8_t *out, size_t outcap,
              size_t *out_len)
{
    size_t total = s3_write_size(len, obfs_lengths, r);
    size_t off = 0, used = 0, p;
    int rc;

    if (total == 0 || (data == NULL && len > 0))
        return S3_EINVAL;
    if (outcap < total)
        return S3_ENOSPC;
    /* Split so that no body exceeds 1 MiB; at least one record. */
    do {
        size_t n = len - off < S3_REC_MAX_BODY ? len - off : S3_REC_MAX_BODY;
        rc = s3_rec_seal(dir, n > 0 ? data + off : NULL, n, out + used,
                         outcap - used);
        if (rc != S3_OK)
            return rc;
        off += n;
        used += n + S3_REC_OVERHEAD;
    } while (off < len);
    if (obfs_lengths && s3_obfs_pad_len(len, r, &p)) {
        rc = s3_rec_seal_padding(dir, p, out + used, outcap - used);
        if (rc != S3_OK)
            return rc;
        used += p + S3_REC_OVERHEAD;
    }
    *out_len = used;
    return S3_OK;
}

/*
 * Decrypt the header of the record at the current counter.  S3_EAGAIN
 * below 24 buffered bytes (State::decrypt's threshold), S3_ELENAUTH,
 * S3_ETOOBIG, or S3_OK with *L and *mag = |L|.
 */
static int
open_header(struct s3_dir *d, const uint8_t *in, size_t inlen, int32_t *L,
            size_t *mag)
{
    uint8_t hdr[4];
    int32_t len;
    int64_t m;
    int r;

    if (inlen < S3_REC_MIN_BUFFERED)
        return S3_EAGAIN;
    r = aead_open(d, d->counter, in, sizeof hdr, in + 4, hdr);
    if (r != S3_OK)
        return r == S3_EBODYAUTH ? S3_ELENAUTH : r;
    len = (int32_t)load32_le(hdr);
    m = len < 0 ? -(int64_t)len : (int64_t)len;
    if (m > S3_REC_MAX_BODY)
        return S3_ETOOBIG;
    *L = len;
    *mag = (size_t)m;
    return S3_OK;
}

int
s3_rec_peek(struct s3_dir *dir, const uint8_t *in, size_t inlen,
            size_t *rec_len, int32_t *L)
{
    int32_t len;
    size_t mag;
    int r;

    if ((r = dir_usable(dir, S3_OPEN)) != S3_OK)
        return r;
    r = open_header(dir, in, inlen, &len, &mag);
    if (r == S3_OK) {
        *rec_len = mag + S3_REC_OVERHEAD;
        *L = len;
    } else if (r != S3_EAGAIN) {
        dir->failed = r;
    }
    return r;
}

int
s3_rec_open(struct s3_dir *dir, const uint8_t *in, size_t inlen,
            uint8_t *out, size_t outcap, size_t *rec_len, int32_t *L)
{
    int32_t len;
    size_t mag;
    int r;

    if ((r = dir_usable(dir, S3_OPEN)) != S3_OK)
        return r;
    /*
     * No length is cached between calls: it is decrypted again, exactly
     * as State::decrypt does, so the result depends only on the bytes
     * passed now.  S3_EAGAIN tells the caller how much to wait for, so a
     * filter pays at most one extra header decryption per record.
     */
    r = open_header(dir, in, inlen, &len, &mag);
    if (r == S3_EAGAIN) {
        *rec_len = S3_REC_MIN_BUFFERED;
        *L = 0;
        return r;
    }
    if (r != S3_OK)
        goto fail;
    if (inlen < mag + S3_REC_OVERHEAD || (len > 0 && outcap < mag)) {
        *rec_len = mag + S3_REC_OVERHEAD;
        *L = len;
        return inlen < mag + S3_REC_OVERHEAD ? S3_EAGAIN : S3_ENOSPC;
    }
    r = aead_open(dir, dir->counter + 1, in + S3_REC_HDR_LEN, mag,
                  in + S3_REC_HDR_LEN + mag, len > 0 ? out : NULL);
    if (r != S3_OK)
        goto fail;
    dir->counter += 2;
    *rec_len = mag + S3_REC_OVERHEAD;
    *L = len;
    return S3_OK;
fail:
    dir->failed = r;
    return r;
}
