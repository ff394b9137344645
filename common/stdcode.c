/*
 * stdcode.c: Geph's stdcode encoding (bincode varint), canonical on
 * output and strict on input.  See stdcode.h.
 */
#include "stdcode.h"

#include <stdlib.h>
#include <string.h>

/* ---- encoder ------------------------------------------------------------ */

void
sc_enc_init(struct sc_enc *e, size_t max)
{
    e->buf = NULL;
    e->len = 0;
    e->cap = 0;
    e->max = max;
    e->failed = 0;
}

void
sc_enc_free(struct sc_enc *e)
{
    free(e->buf);
    e->buf = NULL;
    e->len = 0;
    e->cap = 0;
}

/* Makes room for n more bytes; on failure marks *e failed. */
static int
reserve(struct sc_enc *e, size_t n)
{
    size_t want, cap;
    unsigned char *nb;

    if (e->failed)
        return -1;
    if (n > e->max || e->len > e->max - n) {
        e->failed = 1;
        return -1;
    }
    want = e->len + n;
    if (want <= e->cap)
        return 0;
    cap = e->cap ? e->cap : 64;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    if (cap > e->max)
        cap = e->max;
    nb = realloc(e->buf, cap);
    if (nb == NULL) {
        e->failed = 1;
        return -1;
    }
    e->buf = nb;
    e->cap = cap;
    return 0;
}

void
sc_put_raw(struct sc_enc *e, const void *p, size_t n)
{
    if (n == 0 || reserve(e, n) != 0)
        return;
    memcpy(e->buf + e->len, p, n);
    e->len += n;
}

void
sc_put_u8(struct sc_enc *e, uint8_t v)
{
    sc_put_raw(e, &v, 1);
}

void
sc_put_bool(struct sc_enc *e, int v)
{
    sc_put_u8(e, v ? 1 : 0);
}

void
sc_put_varint(struct sc_enc *e, uint64_t v)
{
    unsigned char b[SC_VARINT_MAX];
    size_t n, width;

    if (v < 251) {
        b[0] = (unsigned char)v;
        sc_put_raw(e, b, 1);
        return;
    }
    if (v <= UINT16_MAX) {
        b[0] = 251;
        width = 2;
    } else if (v <= UINT32_MAX) {
        b[0] = 252;
        width = 4;
    } else {
        b[0] = 253;
        width = 8;
    }
    for (n = 0; n < width; n++)
        b[1 + n] = (unsigned char)(v >> (8 * n));
    sc_put_raw(e, b, 1 + width);
}

void
sc_put_zigzag(struct sc_enc *e, int64_t v)
{
    /* Computed on unsigned values: shifting a negative int is not C11. */
    uint64_t u = (uint64_t)v;

    sc_put_varint(e, (u << 1) ^ (v < 0 ? UINT64_MAX : 0));
}

void
sc_put_bytes(struct sc_enc *e, const void *p, size_t n)
{
    sc_put_varint(e, n);
    sc_put_raw(e, p, n);
}

/* ---- decoder ------------------------------------------------------------ */

void
sc_dec_init(struct sc_dec *d, const void *p, size_t len)
{
    /* A zero-length input may come with p == NULL; keep pointers valid. */
    static const unsigned char empty[1];

    d->p = p != NULL ? p : empty;
    d->len = p != NULL ? len : 0;
    d->off = 0;
    d->err = NULL;
}

static int
fail(struct sc_dec *d, const char *why)
{
    if (d->err == NULL)
        d->err = why;
    return -1;
}

static int
need(struct sc_dec *d, size_t n)
{
    if (d->err != NULL)
        return -1;
    if (n > d->len - d->off)
        return fail(d, "stdcode: truncated input");
    return 0;
}

int
sc_get_raw(struct sc_dec *d, void *out, size_t n)
{
    if (need(d, n) != 0)
        return -1;
    if (n > 0)
        memcpy(out, d->p + d->off, n);
    d->off += n;
    return 0;
}

int
sc_get_u8(struct sc_dec *d, uint8_t *v)
{
    return sc_get_raw(d, v, 1);
}

int
sc_get_bool(struct sc_dec *d, int *v)
{
    if (need(d, 1) != 0)
        return -1;
    if (d->p[d->off] > 1)
        return fail(d, "stdcode: bool is neither 0 nor 1");
    *v = d->p[d->off++];
    return 0;
}

int
sc_get_varint(struct sc_dec *d, uint64_t max, uint64_t *v)
{
    const unsigned char *q;
    uint64_t val = 0, min;
    size_t width, i;

    if (need(d, 1) != 0)
        return -1;
    q = d->p + d->off;
    switch (q[0]) {
    case 251:
        width = 2;
        min = 251;
        break;
    case 252:
        width = 4;
        min = (uint64_t)UINT16_MAX + 1;
        break;
    case 253:
        width = 8;
        min = (uint64_t)UINT32_MAX + 1;
        break;
    case 254:
        return fail(d, "stdcode: 128-bit varint not supported");
    case 255:
        return fail(d, "stdcode: invalid varint tag 255");
    default:
        width = 0;
        min = 0;
        val = q[0];
        break;
    }
    if (width > 0) {
        if (d->len - d->off < 1 + width)
            return fail(d, "stdcode: truncated input");
        for (i = 0; i < width; i++)
            val |= (uint64_t)q[1 + i] << (8 * i);
        if (val < min)
            return fail(d, "stdcode: over-long varint");
    }
    if (val > max)
        return fail(d, "stdcode: integer out of range");
    d->off += 1 + width;
    *v = val;
    return 0;
}

int
sc_get_zigzag(struct sc_dec *d, int64_t min, int64_t max, int64_t *v)
{
    size_t off = d->off;
    uint64_t u;
    int64_t s;

    if (sc_get_varint(d, UINT64_MAX, &u) != 0)
        return -1;
    /* Undo zigzag without signed overflow: odd u is -(u >> 1) - 1. */
    if (u & 1)
        s = -(int64_t)(u >> 1) - 1;
    else
        s = (int64_t)(u >> 1);
    if (s < min || s > max) {
        d->off = off;
        return fail(d, "stdcode: integer out of range");
    }
    *v = s;
    return 0;
}

int
sc_get_bytes(struct sc_dec *d, size_t max, const unsigned char **p,
             size_t *n)
{
    size_t off = d->off;
    uint64_t len;

    if (d->err != NULL)
        return -1;
    if (sc_get_varint(d, UINT64_MAX, &len) != 0)
        return -1;
    if (len > max) {
        d->off = off;
        return fail(d, "stdcode: length exceeds limit");
    }
    if (len > d->len - d->off) {
        d->off = off;
        return fail(d, "stdcode: truncated input");
    }
    *p = d->p + d->off;
    *n = (size_t)len;
    d->off += (size_t)len;
    return 0;
}

int
sc_dec_finish(struct sc_dec *d)
{
    if (d->err != NULL)
        return -1;
    if (d->off != d->len)
        return fail(d, "stdcode: trailing bytes");
    return 0;
}
