/*
 * fuzz-e2e-hello.c: libFuzzer target for stdcode and the e2e wire codec
 * (ClientHello, ExitHello, crypt messages).
 *
 *   clang -fsanitize=fuzzer,address,undefined -Icommon -Iplugins/e2e \
 *       t/fuzz/fuzz-e2e-hello.c plugins/e2e/e2e-wire.c common/stdcode.c \
 *       common/blake3.c $(pkg-config --cflags --libs libsodium)
 *   ./a.out t/fuzz/corpus/e2e-hello
 *
 * The whole input is offered to each decoder, as a hello payload after
 * its length prefix.  Besides "no crash" (the sanitizers catch overruns,
 * UB and leaks) we check the codec's promises: stdcode is strict, so
 * whatever decodes re-encodes to exactly the input (no second encoding
 * of a value is accepted); a varint stream decodes item by item to the
 * bytes it came from; a crypt message opens only to what was sealed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "e2e-wire.h"
#include "stdcode.h"

/* abort() even under NDEBUG: a broken promise is a finding. */
#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
client_hello(const uint8_t *data, size_t size)
{
    struct e2e_client_hello ch;
    struct sc_enc e;
    const char *why = NULL;

    if (e2e_client_hello_get(data, size, &ch, &why) != 0) {
        CHECK(why != NULL);
        return;
    }
    CHECK(ch.kind == E2E_CH_CHALLENGE || ch.kind == E2E_CH_X25519);
    CHECK(ch.cred_len <= size);
    sc_enc_init(&e, E2E_MSG_MAX + 100);
    e2e_client_hello_put(&e, &ch);
    CHECK(!e.failed && e.len == size && memcmp(e.buf, data, size) == 0);
    sc_enc_free(&e);
}

static void
exit_hello(const uint8_t *data, size_t size)
{
    struct e2e_exit_inner in;
    uint8_t sig[E2E_SIG_LEN];
    struct sc_enc e;
    const char *why = NULL;

    if (e2e_exit_hello_get(data, size, &in, sig, &why) != 0) {
        CHECK(why != NULL);
        return;
    }
    CHECK(in.kind <= E2E_EH_X25519);
    sc_enc_init(&e, E2E_MSG_MAX + 100);
    e2e_exit_inner_put(&e, &in);
    sc_put_raw(&e, sig, E2E_SIG_LEN);
    CHECK(!e.failed && e.len == size && memcmp(e.buf, data, size) == 0);
    sc_enc_free(&e);
}

/* The input as a stream of varints, then of byte strings: each item that
 * decodes re-encodes to the bytes it used. */
static void
stdcode_stream(const uint8_t *data, size_t size)
{
    struct sc_dec d;
    struct sc_enc e;
    uint64_t v;
    int64_t s;

    sc_dec_init(&d, data, size);
    for (;;) {
        size_t at = d.off;

        if (sc_get_varint(&d, UINT64_MAX, &v) != 0) {
            CHECK(d.err != NULL && d.off == at);
            break;
        }
        sc_enc_init(&e, SC_VARINT_MAX);
        sc_put_varint(&e, v);
        CHECK(!e.failed && e.len == d.off - at &&
              memcmp(e.buf, data + at, e.len) == 0);
        sc_enc_free(&e);
    }
    sc_dec_init(&d, data, size);
    for (;;) {
        const unsigned char *p;
        size_t n, at = d.off;

        if (sc_get_bytes(&d, 1000, &p, &n) != 0) {
            CHECK(d.err != NULL && d.off == at);
            break;
        }
        CHECK(n <= 1000 && p >= data && p + n <= data + size);
        sc_enc_init(&e, 2000);
        sc_put_bytes(&e, p, n);
        CHECK(!e.failed && e.len == d.off - at &&
              memcmp(e.buf, data + at, e.len) == 0);
        sc_enc_free(&e);
    }
    sc_dec_init(&d, data, size);
    while (sc_get_zigzag(&d, INT32_MIN, INT32_MAX, &s) == 0)
        CHECK(s >= INT32_MIN && s <= INT32_MAX);
    sc_dec_finish(&d);
}

/* A crypt message: opening the input fails (it was not sealed with this
 * key) or, for inputs we sealed, gives back the plaintext. */
static void
crypt_message(const uint8_t *data, size_t size)
{
    static const uint8_t key[E2E_KEY_LEN] = { 1, 2, 3 };
    uint8_t *buf, *out;
    size_t n = size > 4000 ? 4000 : size;

    buf = malloc(4 + n + E2E_TAG_LEN);
    out = malloc(n + E2E_TAG_LEN + 1);
    CHECK(buf != NULL && out != NULL);
    if (size >= E2E_TAG_LEN)
        e2e_crypt_open(key, 0, data, size > E2E_MSG_MAX ? E2E_MSG_MAX : size,
                       out);
    CHECK(e2e_crypt_seal(key, size, data, n, buf) == 0);
    CHECK(e2e_crypt_open(key, size, buf + 4, n + E2E_TAG_LEN, out) == 0);
    CHECK(memcmp(out, data, n) == 0);
    if (n > 0) {
        buf[4 + n / 2] ^= 0x40;
        CHECK(e2e_crypt_open(key, size, buf + 4, n + E2E_TAG_LEN, out) != 0);
    }
    free(buf);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;

    if (!ready) {
        CHECK(sodium_init() >= 0);
        ready = 1;
    }
    client_hello(data, size);
    exit_hello(data, size);
    stdcode_stream(data, size);
    crypt_message(data, size);
    return 0;
}
