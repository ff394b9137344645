/* tls-cert.c - the tls layer's throw-away server certificate. */
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "tls-cert.h"

#define SANS 10
#define DAYS 365

/* Adds one extension given in OpenSSL's configuration syntax. */
static int
add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    if ((ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value)) == NULL)
        return -1;
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

static int
add_name(X509_NAME *name, const char *field, const char *value)
{
    return X509_NAME_add_entry_by_txt(name, field, MBSTRING_ASC,
                                      (const unsigned char *)value, -1, -1,
                                      0) == 1
               ? 0
               : -1;
}

int
tls_selfsigned(X509 **cert, EVP_PKEY **key)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *serial = BN_new();
    unsigned char rnd[8 + 2 * SANS];
    char sans[SANS * 16];
    size_t off = 0;
    int r = -1;

    if (k == NULL || x == NULL || name == NULL || serial == NULL ||
        RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto out;
    rnd[0] &= 0x7f;   /* a positive serial, as DER wants */
    if (BN_bin2bn(rnd, 8, serial) == NULL ||
        BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) == NULL ||
        X509_set_version(x, X509_VERSION_3) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)DAYS * 86400) == NULL ||
        X509_set_pubkey(x, k) != 1)
        goto out;
    if (add_name(name, "C", "US") != 0 ||
        add_name(name, "ST", "California") != 0 ||
        add_name(name, "L", "San Francisco") != 0 ||
        add_name(name, "O", "Example Inc") != 0 ||
        add_name(name, "OU", "IT") != 0 ||
        add_name(name, "CN", "api.example.com") != 0 ||
        X509_set_subject_name(x, name) != 1 ||
        X509_set_issuer_name(x, name) != 1)
        goto out;
    for (int i = 0; i < SANS; i++)
        off += (size_t)snprintf(sans + off, sizeof(sans) - off, "%sDNS:%u.com",
                                i > 0 ? "," : "",
                                (unsigned)(rnd[8 + 2 * i] << 8 |
                                           rnd[9 + 2 * i]));
    if (add_ext(x, NID_subject_alt_name, sans) != 0 ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, NID_ext_key_usage, "serverAuth") != 0 ||
        X509_sign(x, k, EVP_sha256()) == 0)
        goto out;
    *cert = x;
    *key = k;
    x = NULL;
    k = NULL;
    r = 0;
out:
    X509_free(x);
    EVP_PKEY_free(k);
    X509_NAME_free(name);
    BN_free(serial);
    return r;
}
