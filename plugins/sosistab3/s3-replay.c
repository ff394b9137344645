/*
 * s3-replay.c - the replay cache (see s3-replay.h).
 *
 * Entries sit in a FIFO in insertion order, which is time order because
 * the clock is monotonic, so expiry and eviction only ever remove the
 * head; a chained hash table finds them.  Buckets are chosen with SipHash
 * under a random key: the keys are BLAKE3 outputs, but a peer holding the
 * cookie can choose its handshakes, and must not be able to aim them all
 * at one bucket.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "s3-replay.h"

#define MIN_BUCKETS 64

struct entry {
    uint8_t key[S3_REPLAY_KEY_LEN];
    uint64_t t;              /* insertion time, ms */
    struct entry *newer;     /* FIFO towards the tail */
    struct entry *chain;     /* next in the bucket */
};

struct s3_replay {
    long refs;
    size_t max, count;
    size_t kept;             /* entries left by the last clean-up */
    uint64_t evictions;
    struct entry *oldest, *newest;
    struct entry **bucket;
    size_t nbuckets;         /* a power of two */
    uint8_t hkey[crypto_shorthash_KEYBYTES];
};

static size_t
bucket_of(const struct s3_replay *r, const uint8_t *key)
{
    uint8_t h[crypto_shorthash_BYTES];
    uint64_t v = 0;

    crypto_shorthash(h, key, S3_REPLAY_KEY_LEN, r->hkey);
    for (size_t i = 0; i < sizeof(h) && i < sizeof(v); i++)
        v = v << 8 | h[i];
    return (size_t)(v & (r->nbuckets - 1));
}

struct s3_replay *
s3_replay_new(size_t max_entries)
{
    struct s3_replay *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->refs = 1;
    r->max = max_entries > 0 ? max_entries : 1;
    r->kept = 1;
    r->nbuckets = MIN_BUCKETS;
    r->bucket = calloc(r->nbuckets, sizeof(*r->bucket));
    if (r->bucket == NULL) {
        free(r);
        return NULL;
    }
    crypto_shorthash_keygen(r->hkey);
    return r;
}

struct s3_replay *
s3_replay_ref(struct s3_replay *r)
{
    r->refs++;
    return r;
}

void
s3_replay_unref(struct s3_replay *r)
{
    struct entry *e;

    if (r == NULL || --r->refs > 0)
        return;
    while ((e = r->oldest) != NULL) {
        r->oldest = e->newer;
        free(e);
    }
    free(r->bucket);
    sodium_memzero(r->hkey, sizeof(r->hkey));
    free(r);
}

size_t
s3_replay_size(const struct s3_replay *r)
{
    return r->count;
}

uint64_t
s3_replay_evictions(const struct s3_replay *r)
{
    return r->evictions;
}

/* Removes the oldest entry. */
static void
drop_oldest(struct s3_replay *r)
{
    struct entry *e = r->oldest;
    struct entry **pp = &r->bucket[bucket_of(r, e->key)];

    while (*pp != e)
        pp = &(*pp)->chain;
    *pp = e->chain;
    r->oldest = e->newer;
    if (r->oldest == NULL)
        r->newest = NULL;
    r->count--;
    free(e);
}

/* Removes every entry older than the expiry (Dedup::cleanup). */
static void
cleanup(struct s3_replay *r, uint64_t now_ms)
{
    while (r->oldest != NULL && now_ms >= r->oldest->t &&
           now_ms - r->oldest->t > S3_REPLAY_EXPIRY_MS)
        drop_oldest(r);
}

/* Doubles the bucket array; on failure the table just stays denser. */
static void
grow(struct s3_replay *r)
{
    size_t n = r->nbuckets * 2;
    struct entry **b = calloc(n, sizeof(*b));

    if (b == NULL)
        return;
    free(r->bucket);
    r->bucket = b;
    r->nbuckets = n;
    for (struct entry *e = r->oldest; e != NULL; e = e->newer) {
        size_t i = bucket_of(r, e->key);

        e->chain = b[i];
        b[i] = e;
    }
}

int
s3_replay_check(struct s3_replay *r, const uint8_t key[S3_REPLAY_KEY_LEN],
                uint64_t now_ms)
{
    size_t i = bucket_of(r, key);
    struct entry *e;

    /* Like Dedup::contains: age does not matter here. */
    for (e = r->bucket[i]; e != NULL; e = e->chain)
        if (sodium_memcmp(e->key, key, S3_REPLAY_KEY_LEN) == 0)
            return S3_REPLAY_SEEN;
    if (r->count >= r->max) {
        cleanup(r, now_ms);
        if (r->count >= r->max) {
            drop_oldest(r);
            r->evictions++;
        }
        i = bucket_of(r, key);
    }
    e = malloc(sizeof(*e));
    if (e == NULL)
        return S3_REPLAY_ENOMEM;
    memcpy(e->key, key, S3_REPLAY_KEY_LEN);
    e->t = now_ms;
    e->newer = NULL;
    e->chain = r->bucket[i];
    r->bucket[i] = e;
    if (r->newest != NULL)
        r->newest->newer = e;
    else
        r->oldest = e;
    r->newest = e;
    r->count++;
    /* Dedup::insert: clean up once the cache has doubled since. */
    if (r->count > 2 * r->kept) {
        cleanup(r, now_ms);
        r->kept = r->count > 0 ? r->count : 1;
    }
    if (r->count > r->nbuckets)
        grow(r);
    return S3_REPLAY_NEW;
}
