/* hex-codec.h - the hex layer's codec, shared with its test and fuzzer. */
#ifndef SILLAD_HEX_CODEC_H
#define SILLAD_HEX_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* Writes the 2n lowercase hex digits of in[0..n) to out (no NUL). */
void hex_encode(const uint8_t *in, size_t n, char *out);

/*
 * Decodes the whole pairs at the head of in[0..n) (either case) into out,
 * which has room for n / 2 bytes, stopping at the first pair holding a
 * non-digit.  Returns the number of bytes decoded, and sets *bad to the
 * index of the first non-digit in in[0..n), or to n when there is none
 * (an odd last digit is checked too, but not decoded).
 */
size_t hex_decode(const char *in, size_t n, uint8_t *out, size_t *bad);

#endif
