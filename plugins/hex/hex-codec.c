/* hex-codec.c - the hex layer's codec (see hex-codec.h). */
#include "hex-codec.h"

void
hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

/* The value of a hex digit, or -1. */
static int
digit(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t
hex_decode(const char *in, size_t n, uint8_t *out, size_t *bad)
{
    size_t i;

    *bad = n;
    for (i = 0; i + 1 < n; i += 2) {
        int hi = digit((uint8_t)in[i]), lo = digit((uint8_t)in[i + 1]);

        if (hi < 0 || lo < 0) {
            *bad = hi < 0 ? i : i + 1;
            return i / 2;
        }
        out[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    if (i < n && digit((uint8_t)in[i]) < 0)
        *bad = i;
    return i / 2;
}
