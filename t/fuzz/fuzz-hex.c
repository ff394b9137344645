/*
 * fuzz-hex.c: libFuzzer target for the hex layer's decoder, driven as the
 * layer drives it: the input is text off the wire, cut into reads at
 * points taken from its first byte, each read decoded a whole pair at a
 * time with an odd digit carried over.
 *
 *   clang -fsanitize=fuzzer,address,undefined -Iplugins/hex \
 *       t/fuzz/fuzz-hex.c plugins/hex/hex-codec.c
 *   ./a.out t/fuzz/corpus/hex
 *
 * Besides "no crash" we check the codec's promises against a one-shot
 * reference: the same bytes come out however the text is cut, decoding
 * stops exactly at the first non-digit, and what decodes re-encodes to the
 * same digits in lowercase.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hex-codec.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The first index of a non-digit in t[0..n), or n. */
static size_t
first_bad(const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)t[i]))
            return i;
    return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text;
    size_t n, bad_ref, stop, got = 0, pos = 0, carry = 0, step;
    uint8_t *ref, *out;
    char *win, *again;

    if (size < 1)
        return 0;
    step = (size_t)data[0] % 17 + 1;
    text = (const char *)data + 1;
    n = size - 1;
    ref = malloc(n / 2 + 1);
    out = malloc(n / 2 + 1);
    win = malloc(n + 1);
    again = malloc(n + 1);
    CHECK(ref && out && win && again);

    /* One shot. */
    bad_ref = first_bad(text, n);
    {
        size_t bad, k = hex_decode(text, n, ref, &bad);

        CHECK(bad == bad_ref);
        CHECK(k == (bad < n ? bad / 2 : n / 2));
        stop = 2 * k;
    }
    /* In reads of step bytes, as the layer does: the window is what waits
     * below (an odd digit plus the new read). */
    while (pos < n) {
        size_t take = n - pos < step ? n - pos : step, w, bad, k;
        size_t start = pos - carry;   /* where the window begins */

        memcpy(win, text + start, carry + take);
        w = carry + take;
        k = hex_decode(win, w, out + got, &bad);
        CHECK(2 * k <= w);
        got += k;
        pos += take;
        carry = w - 2 * k;
        if (bad < w) {
            CHECK(start + bad == bad_ref);
            break;
        }
        CHECK(carry <= 1);
    }
    CHECK(got == stop / 2);
    CHECK(memcmp(out, ref, got) == 0);
    /* Re-encoding gives the same digits, lowercased. */
    hex_encode(ref, got, again);
    for (size_t i = 0; i < 2 * got; i++)
        CHECK(again[i] == tolower((unsigned char)text[i]));
    free(ref);
    free(out);
    free(win);
    free(again);
    return 0;
}
