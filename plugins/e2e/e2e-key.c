/*
 * e2e-key.c: the exit's signing key file and hex public keys.  See
 * e2e-key.h.
 */
#include "config.h"

#include "e2e-key.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#define LAYER "e2e"

/* The core's error_set, redone here so that programs and the layer can
 * both link this file without the core's upcall table. */
static int SL_PRINTF(4, 5)
key_err(struct sl_error *e, int code, int sys_errno, const char *fmt, ...)
{
    va_list ap;

    if (e == NULL || e->code != 0)
        return code;
    e->code = code;
    e->sys_errno = sys_errno;
    snprintf(e->layer, sizeof(e->layer), "%s", LAYER);
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof(e->text), fmt, ap);
    va_end(ap);
    return code;
}

static int
derive(const uint8_t seed[E2E_SEED_LEN], uint8_t pk[E2E_PK_LEN],
       const char *path, struct sl_error *e)
{
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    uint8_t p[crypto_sign_PUBLICKEYBYTES];
    int r = crypto_sign_seed_keypair(p, sk, seed);

    sodium_memzero(sk, sizeof(sk));
    if (r != 0)
        return key_err(e, SL_EINVAL, 0, "signing key %s: cannot derive "
                       "the public key", path);
    memcpy(pk, p, E2E_PK_LEN);
    return 0;
}

int
e2e_key_load(const char *path, uint8_t seed[E2E_SEED_LEN],
             uint8_t pk[E2E_PK_LEN], struct sl_error *e)
{
    uint8_t buf[E2E_SEED_LEN + 1];
    struct stat st;
    ssize_t n;
    size_t got = 0;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            return key_err(e, SL_ENOENT, 0, "signing key %s does not "
                           "exist", path);
        return key_err(e, SL_ESYS, errno, "cannot open signing key %s",
                       path);
    }
    if (fstat(fd, &st) != 0) {
        r = key_err(e, SL_ESYS, errno, "cannot stat signing key %s", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = key_err(e, SL_EINVAL, 0, "signing key %s is not a regular "
                    "file", path);
        goto out;
    }
    if ((st.st_mode & 077) != 0) {
        r = key_err(e, SL_EINVAL, 0, "signing key %s has mode %04o: it "
                    "must not be accessible to group or others (chmod 600)",
                    path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    if (st.st_size != E2E_SEED_LEN) {
        r = key_err(e, SL_EINVAL, 0, "signing key %s is %lld bytes long; "
                    "it must hold exactly the 32-byte ed25519 seed", path,
                    (long long)st.st_size);
        goto out;
    }
    /* Read one byte more than needed: the file may change under us. */
    while (got < sizeof(buf)) {
        n = read(fd, buf + got, sizeof(buf) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = key_err(e, SL_ESYS, errno, "cannot read signing key %s",
                        path);
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got != E2E_SEED_LEN) {
        r = key_err(e, SL_EINVAL, 0, "signing key %s changed size while "
                    "being read", path);
        goto out;
    }
    if ((r = derive(buf, pk, path, e)) != 0)
        goto out;
    memcpy(seed, buf, E2E_SEED_LEN);
out:
    sodium_memzero(buf, sizeof(buf));
    close(fd);
    return r;
}

/* Writes a fresh seed to a new file.  Returns 0, SL_E*, or 1 when the file
 * exists already (another process just made it): the caller loads it. */
static int
create(const char *path, uint8_t seed[E2E_SEED_LEN], uint8_t pk[E2E_PK_LEN],
       struct sl_error *e)
{
    uint8_t buf[E2E_SEED_LEN];
    size_t put = 0;
    ssize_t n;
    int fd, r = 0;

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
                        O_NOCTTY, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return 1;
        return key_err(e, SL_ESYS, errno, "cannot create signing key %s",
                       path);
    }
    randombytes_buf(buf, sizeof(buf));
    while (put < sizeof(buf)) {
        n = write(fd, buf + put, sizeof(buf) - put);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = key_err(e, SL_ESYS, n < 0 ? errno : EIO, "cannot write "
                        "signing key %s", path);
            break;
        }
        put += (size_t)n;
    }
    if (r == 0 && fsync(fd) != 0)
        r = key_err(e, SL_ESYS, errno, "cannot write signing key %s", path);
    if (close(fd) != 0 && r == 0)
        r = key_err(e, SL_ESYS, errno, "cannot write signing key %s", path);
    if (r == 0)
        r = derive(buf, pk, path, e);
    if (r == 0)
        memcpy(seed, buf, E2E_SEED_LEN);
    else
        unlink(path);   /* never leave a short key behind */
    sodium_memzero(buf, sizeof(buf));
    return r;
}

int
e2e_key_open(const char *path, uint8_t seed[E2E_SEED_LEN],
             uint8_t pk[E2E_PK_LEN], int *created, struct sl_error *e)
{
    struct sl_error tmp;
    int r;

    memset(&tmp, 0, sizeof(tmp));
    r = e2e_key_load(path, seed, pk, &tmp);
    if (r == 0) {
        if (created != NULL)
            *created = 0;
        return 0;
    }
    if (r != SL_ENOENT)
        return key_err(e, tmp.code, tmp.sys_errno, "%s", tmp.text);
    r = create(path, seed, pk, e);
    if (r == 1)                  /* made meanwhile by someone else */
        return e2e_key_load(path, seed, pk, e);
    if (r == 0 && created != NULL)
        *created = 1;
    return r;
}

int
e2e_key_load_or_create(const char *path, uint8_t seed[E2E_SEED_LEN],
                       uint8_t pk[E2E_PK_LEN], struct sl_error *e)
{
    return e2e_key_open(path, seed, pk, NULL, e);
}

void
e2e_pk_to_hex(const uint8_t pk[E2E_PK_LEN], char hex[E2E_PK_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";

    for (int i = 0; i < E2E_PK_LEN; i++) {
        hex[2 * i] = digits[pk[i] >> 4];
        hex[2 * i + 1] = digits[pk[i] & 15];
    }
    hex[E2E_PK_HEX_LEN] = '\0';
}

static int
nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int
e2e_pk_from_hex(const char *hex, uint8_t pk[E2E_PK_LEN], struct sl_error *e)
{
    uint8_t out[E2E_PK_LEN];
    size_t n = strlen(hex);

    if (n != E2E_PK_HEX_LEN)
        return key_err(e, SL_EINVAL, 0, "pubkey must be 64 hex digits "
                       "(an ed25519 public key), not %zu characters", n);
    for (size_t i = 0; i < E2E_PK_LEN; i++) {
        int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return key_err(e, SL_EINVAL, 0, "pubkey: character %zu is not "
                           "a hex digit", hi < 0 ? 2 * i + 1 : 2 * i + 2);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(pk, out, E2E_PK_LEN);
    return 0;
}
