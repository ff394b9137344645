/*
 * e2e-wire.c: hello messages and crypt-pipe messages.  See e2e-wire.h.
 */
#include "e2e-wire.h"

#include <string.h>

#include <sodium.h>

#include "blake3.h"

void
e2e_client_hello_put(struct sc_enc *enc, const struct e2e_client_hello *ch)
{
    sc_put_bytes(enc, ch->cred, ch->cred_len);
    sc_put_varint(enc, (uint64_t)ch->kind);
    sc_put_raw(enc, ch->key, E2E_KEY_LEN);
}

void
e2e_exit_inner_put(struct sc_enc *enc, const struct e2e_exit_inner *in)
{
    sc_put_varint(enc, (uint64_t)in->kind);
    if (in->kind == E2E_EH_REJECT)
        sc_put_bytes(enc, in->reason, in->reason_len);
    else
        sc_put_raw(enc, in->key, E2E_KEY_LEN);
}

int
e2e_client_hello_get(const void *p, size_t n, struct e2e_client_hello *ch,
                     const char **why)
{
    struct sc_dec d;
    struct e2e_client_hello out;
    uint64_t kind = 0;

    memset(&out, 0, sizeof(out));
    sc_dec_init(&d, p, n);
    sc_get_bytes(&d, E2E_MSG_MAX, &out.cred, &out.cred_len);
    if (sc_get_varint(&d, UINT32_MAX, &kind) == 0 && kind > E2E_CH_X25519) {
        *why = "ClientHello: unknown ClientCryptHello variant";
        return -1;
    }
    sc_get_raw(&d, out.key, E2E_KEY_LEN);
    if (sc_dec_finish(&d) != 0) {
        *why = d.err;
        return -1;
    }
    out.kind = (enum e2e_client_kind)kind;
    *ch = out;
    return 0;
}

int
e2e_exit_hello_get(const void *p, size_t n, struct e2e_exit_inner *in,
                   uint8_t sig[E2E_SIG_LEN], const char **why)
{
    struct sc_dec d;
    struct e2e_exit_inner out;
    uint8_t s[E2E_SIG_LEN];
    uint64_t kind = 0;

    memset(&out, 0, sizeof(out));
    sc_dec_init(&d, p, n);
    if (sc_get_varint(&d, UINT32_MAX, &kind) == 0 && kind > E2E_EH_X25519) {
        *why = "ExitHello: unknown ExitHelloInner variant";
        return -1;
    }
    if (kind == E2E_EH_REJECT)
        sc_get_bytes(&d, E2E_MSG_MAX, &out.reason, &out.reason_len);
    else
        sc_get_raw(&d, out.key, E2E_KEY_LEN);
    sc_get_raw(&d, s, E2E_SIG_LEN);
    if (sc_dec_finish(&d) != 0) {
        *why = d.err;
        return -1;
    }
    out.kind = (enum e2e_exit_kind)kind;
    *in = out;
    memcpy(sig, s, E2E_SIG_LEN);
    return 0;
}

void
e2e_signed_message(struct sc_enc *enc, const struct e2e_client_hello *ch,
                   const struct e2e_exit_inner *in)
{
    /* stdcode of the 2-tuple (ClientHello, inner) is the concatenation. */
    e2e_client_hello_put(enc, ch);
    e2e_exit_inner_put(enc, in);
}

void
e2e_challenge_mac(uint8_t out[E2E_KEY_LEN], const uint8_t c[E2E_KEY_LEN],
                  const void *ss, size_t ss_len)
{
    blake3_keyed_hash(out, c, ss, ss_len);
}

void
e2e_crypt_keys(const uint8_t dh[E2E_KEY_LEN], uint8_t c2e[E2E_KEY_LEN],
               uint8_t e2c[E2E_KEY_LEN])
{
    blake3_derive_key(c2e, "c2e", dh, E2E_KEY_LEN);
    blake3_derive_key(e2c, "e2c", dh, E2E_KEY_LEN);
}

void
e2e_nonce(uint64_t counter, uint8_t nonce[E2E_NONCE_LEN])
{
    for (int i = 0; i < 8; i++)
        nonce[i] = (uint8_t)(counter >> (8 * i));
    memset(nonce + 8, 0, 4);
}

int
e2e_crypt_seal(const uint8_t key[E2E_KEY_LEN], uint64_t counter,
               const void *pt, size_t n, unsigned char *out)
{
    uint8_t nonce[E2E_NONCE_LEN];
    unsigned long long clen = 0;
    size_t len = n + E2E_TAG_LEN;

    if (n > E2E_MSG_MAX - E2E_TAG_LEN)
        return -1;
    out[0] = (unsigned char)(len >> 24);
    out[1] = (unsigned char)(len >> 16);
    out[2] = (unsigned char)(len >> 8);
    out[3] = (unsigned char)len;
    e2e_nonce(counter, nonce);
    if (crypto_aead_chacha20poly1305_ietf_encrypt(out + 4, &clen, pt, n,
                                                  NULL, 0, NULL, nonce,
                                                  key) != 0 ||
        clen != len)
        return -1;
    return 0;
}

int
e2e_crypt_open(const uint8_t key[E2E_KEY_LEN], uint64_t counter,
               const void *ct, size_t n, unsigned char *out)
{
    uint8_t nonce[E2E_NONCE_LEN];
    unsigned long long plen = 0;

    if (n < E2E_TAG_LEN || n > E2E_MSG_MAX)
        return -1;
    e2e_nonce(counter, nonce);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &plen, NULL, ct, n,
                                                  NULL, 0, nonce, key) != 0)
        return -1;
    return 0;
}
