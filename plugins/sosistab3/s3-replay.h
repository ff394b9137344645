/*
 * s3-replay.h - the sosistab3 server's replay cache (spec §6).
 *
 * Remembers BLAKE3(HS_c) of every client handshake a listener accepted, so
 * that a recorded handshake sent again is refused.  One cache per
 * configured layer (cfg), shared by every connection it accepts, as Rust
 * keeps one per listener.  Pure: no I/O, no clock of its own (callers pass
 * a monotonic time in milliseconds), nothing calls back.
 *
 * Expiry follows Rust's Dedup: an entry is forgotten once it is older than
 * 600 s, but only at a clean-up, which runs on an insert that finds more
 * than twice the entries the previous clean-up kept (initially 1); a
 * lookup does not look at the age.  On top of that the cache has a hard
 * bound: an insert into a full cache first removes the expired entries
 * and then, if still full, the oldest entry (counted as an eviction).
 */
#ifndef SL_S3_REPLAY_H
#define SL_S3_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#define S3_REPLAY_KEY_LEN 32
#define S3_REPLAY_EXPIRY_MS 600000   /* WAIT_INTERVAL * 2 */

enum s3_replay_result {
    S3_REPLAY_NEW = 0,      /* not seen before; now remembered */
    S3_REPLAY_SEEN = 1,     /* a replay */
    S3_REPLAY_ENOMEM = -1   /* could not remember it */
};

struct s3_replay;

/* A cache of at most max_entries (>= 1) entries, with one reference.
 * Returns NULL when out of memory. */
struct s3_replay *s3_replay_new(size_t max_entries);

/* Another reference to r; returns r. */
struct s3_replay *s3_replay_ref(struct s3_replay *r);

/* Drops a reference; the last one frees the cache.  r may be NULL. */
void s3_replay_unref(struct s3_replay *r);

/*
 * Looks key up and, if absent, inserts it with time now_ms (a monotonic
 * clock; non-decreasing across calls).  Returns an enum s3_replay_result.
 * On S3_REPLAY_ENOMEM nothing was inserted.
 */
int s3_replay_check(struct s3_replay *r, const uint8_t key[S3_REPLAY_KEY_LEN],
                    uint64_t now_ms);

/* Entries held now. */
size_t s3_replay_size(const struct s3_replay *r);

/* Entries dropped by the hard bound before they expired. */
uint64_t s3_replay_evictions(const struct s3_replay *r);

#endif /* SL_S3_REPLAY_H */
