/*
 * picomux-frame.h: the picomux wire codec.
 *
 * The contract is the clean-room spec picomux.md (doc/PROTOCOL.picomux);
 * section numbers below ("§4.6") refer to it.  Everything here is a pure
 * function over caller-owned bytes: no I/O, no libevent, no allocation,
 * no global mutable state.  Nothing here calls back, and every function
 * is safe to call from any thread on distinct arguments.
 *
 * Errors are 0 or a negative PM_E* code.  The mux layer maps every one
 * of them to SL_EPROTO ("the mux dies", §11) and puts the text of
 * pm_frame_strerror() into the caller's struct sl_error.
 */
#ifndef SILLAD_PICOMUX_FRAME_H
#define SILLAD_PICOMUX_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* Command bytes, §3 and §13.  Any other value kills the mux (§11). */
enum pm_cmd {
    PM_CMD_SYN  = 0x00,     /* open; body is opaque metadata (§4.1)       */
    PM_CMD_FIN  = 0x01,     /* full close; body ignored (§4.3)            */
    PM_CMD_PSH  = 0x02,     /* stream data (§4.2)                         */
    PM_CMD_NOP  = 0x03,     /* ignored, whatever id and body (§4.4)       */
    PM_CMD_MORE = 0x04,     /* window update, u16 LE body (§4.5)          */
    PM_CMD_PING = 0xa0,     /* liveness probe, JSON body (§4.6)           */
    PM_CMD_PONG = 0xa1      /* PING answer; body not parsed (§4.6)        */
};

/* Frame layout, §2. */
#define PM_HDR_LEN          8u      /* version, command, body_len, id     */
#define PM_VERSION          1u      /* always sent, never checked (§15.2) */
#define PM_BODY_MAX         65535u  /* body_len is 16 bits (§2.2)         */
#define PM_FRAME_MAX        (PM_HDR_LEN + PM_BODY_MAX)
#define PM_MORE_BODY_LEN    2u      /* exactly; anything else fatal (§4.5) */
#define PM_PING_STREAM_ID   0u      /* PING and PONG carry id 0 (§4.6)    */
/* strlen("{\"next_ping_in_ms\":4294967295}"), the longest PING we send */
#define PM_PING_BODY_MAX    30u

/* Flow control, §7.1 and §13.  Windows count PSH frames, not bytes. */
#define PM_MSS              8192u   /* largest PSH body we send           */
#define PM_INIT_WINDOW      10u     /* credits per stream, both sides     */
#define PM_MAX_WINDOW       1500u   /* largest target window granted      */
#define PM_QUEUE_DROP_LIMIT 3000u   /* 2 * MAX_WINDOW; Rust drops beyond  */
#define PM_MIN_QUANTUM_MAX  500u    /* min_quantum = clamp(t / 10, 1, 500) */

/* Buffers and queues of the Rust implementation, §13 (for parity). */
#define PM_APP_PIPE_SIZE    16384u  /* 2 * MSS, each direction            */
#define PM_READ_BUF_SIZE    32768u  /* 4 * MSS, underlying pipe reads     */
#define PM_ACCEPT_QUEUE     100u    /* streams awaiting accept()          */
#define PM_WRITER_QUEUE     10u     /* PSH producer waits below this      */

/* Timers, §5.2, §8 and §13. */
#define PM_TOMBSTONE_TTL_S   3600u  /* no id reuse within this (§5.1)     */
#define PM_TOMBSTONE_PRUNE_S 60u
#define PM_PING_INTERVAL_S   1800u  /* LivenessConfig::default            */
#define PM_PING_TIMEOUT_S    30u
#define PM_DEBLOAT_INIT_BPS  1000000u /* initial BwEstimate (§7.4)        */

/*
 * Results of pm_frame_validate() and pm_ping_body_parse().  Every one is
 * fatal to the whole mux (§11); the PING codes only refine the log line.
 */
enum pm_err {
    PM_OK              = 0,
    PM_EBADCMD         = -1,  /* unknown command byte                      */
    PM_EMORELEN        = -2,  /* MORE body not exactly 2 bytes             */
    PM_EPING_SYNTAX    = -3,  /* PING body is not JSON as serde reads it   */
    PM_EPING_TYPE      = -4,  /* JSON, but not an object or array          */
    PM_EPING_VALUE     = -5,  /* next_ping_in_ms not an integer 0..2^32-1  */
    PM_EPING_MISSING   = -6,  /* no next_ping_in_ms ({} or [])             */
    PM_EPING_DUPLICATE = -7,  /* next_ping_in_ms given twice               */
    PM_EPING_TRAILING  = -8,  /* non-whitespace after the value, or [5,6]  */
    PM_EPING_TOOLONG   = -9   /* over 65535 bytes: not from the wire       */
};

/* Results of pm_frame_split(); neither is an error. */
enum pm_split {
    PM_SPLIT_NEED_MORE = 0,
    PM_SPLIT_FRAME     = 1
};

/* A decoded header, host byte order. */
struct pm_hdr {
    uint8_t  version;       /* as received; never checked (§2)            */
    uint8_t  cmd;           /* enum pm_cmd, or unknown                    */
    uint16_t body_len;
    uint32_t stream_id;
};

/* One frame seen in place inside a caller's buffer. */
struct pm_frame {
    struct pm_hdr hdr;
    const uint8_t *body;    /* hdr.body_len bytes, borrowed from the buffer */
};

/* What pm_frame_validate() extracts; fields of other commands are 0. */
struct pm_frame_info {
    uint16_t more_incr;     /* MORE: PSH credits granted (§4.5)           */
    uint32_t ping_ms;       /* PING: next_ping_in_ms, only for logs (§4.6) */
};

/*
 * Writes the 8-byte header for `cmd`, with version 1 and body_len and
 * stream_id little-endian whatever the host (§2.1).
 */
void pm_hdr_encode(uint8_t out[PM_HDR_LEN], uint8_t cmd, uint16_t body_len,
                   uint32_t stream_id);

/*
 * Reads an 8-byte header into *hdr.  Accepts any bytes: the version and
 * command are reported as they are and judged by pm_frame_validate().
 */
void pm_hdr_decode(const uint8_t in[PM_HDR_LEN], struct pm_hdr *hdr);

/* Writes a MORE body: `incr` as u16 little-endian (§4.5). */
void pm_more_encode(uint8_t out[PM_MORE_BODY_LEN], uint16_t incr);

/* Reads a 2-byte MORE body.  The length check is pm_frame_validate()'s. */
uint16_t pm_more_decode(const uint8_t in[PM_MORE_BODY_LEN]);

/*
 * Writes the PING body exactly as serde_json::to_vec(&PingInfo) does,
 * `{"next_ping_in_ms":N}` with no spaces (§4.6), and returns its length
 * (20 to PM_PING_BODY_MAX bytes).  No NUL is written.
 */
size_t pm_ping_body_write(uint32_t next_ping_in_ms,
                          uint8_t out[PM_PING_BODY_MAX]);

/*
 * Accepts `len` bytes at `body` exactly when the Rust peer's
 * serde_json::from_slice::<PingInfo> would (§4.6), and then stores the
 * value in *next_ping_in_ms.  Returns 0 or a PM_EPING_* code; on error
 * *next_ping_in_ms is untouched.  `body` may be NULL when `len` is 0.
 * Does not recurse or allocate; uses about 8 KiB of stack.
 */
int pm_ping_body_parse(const uint8_t *body, size_t len,
                       uint32_t *next_ping_in_ms);

/*
 * Finds the frame at the start of buf[0..len).
 *   PM_SPLIT_FRAME: *frame describes it (its body points into `buf`) and
 *     *size is the bytes it occupies, PM_HDR_LEN + body_len.
 *   PM_SPLIT_NEED_MORE: *frame is untouched and *size is the total the
 *     next frame needs (always more than `len`): PM_HDR_LEN until the
 *     header is complete, then PM_HDR_LEN + body_len.  Useful as a read
 *     low watermark.
 * *size never exceeds PM_FRAME_MAX, so a reader can bound its buffer.
 * Does not judge the frame; call pm_frame_validate() for that.
 */
int pm_frame_split(const uint8_t *buf, size_t len, struct pm_frame *frame,
                   size_t *size);

/*
 * Applies the receiver's rules of §4 and §11 to one frame: known command
 * (else PM_EBADCMD), MORE body exactly 2 bytes (else PM_EMORELEN), PING
 * body a valid PingInfo (else PM_EPING_*).  The version byte, the bodies
 * of FIN, NOP and PONG, and every stream id are not judged, as in Rust.
 * Stream state (duplicate SYN, unknown ids) is the mux's business.
 * On 0 and when `info` is not NULL, fills *info; otherwise leaves it.
 */
int pm_frame_validate(const struct pm_frame *frame,
                      struct pm_frame_info *info);

/*
 * Writes a one-line description of `err` into buf (always NUL-terminated
 * when buflen > 0) and returns buf: "picomux: invalid command 0x07",
 * "picomux: corrupt window increase message (3 bytes)", "picomux: invalid
 * PING data (duplicate field next_ping_in_ms)".  `hdr` adds the command
 * byte or the body length and may be NULL.
 */
const char *pm_frame_strerror(int err, const struct pm_hdr *hdr, char *buf,
                              size_t buflen);

/* "SYN", "FIN", ... for logs, or NULL for an unknown command byte. */
const char *pm_cmd_name(uint8_t cmd);

#endif /* SILLAD_PICOMUX_FRAME_H */
