/*
 * fuzz-picomux-frame.c: libFuzzer target for the picomux wire codec.
 *
 *   clang -fsanitize=fuzzer,address,undefined -Iplugins/picomux \
 *       t/fuzz/fuzz-picomux-frame.c plugins/picomux/picomux-frame.c
 *   ./a.out t/fuzz/corpus/picomux
 *
 * The input is read as a byte stream off the wire: split into frames and
 * each frame validated, as the mux's read path does.  The whole input is
 * also fed to the PING parser directly, since its JSON skipper is the
 * part most exposed to hostile bytes.  Besides "no crash" (the sanitizers
 * catch overruns, UB and leaks) we check the codec's promises: the
 * splitter never claims more than it was given nor more than one 16-bit
 * frame, validation is total, and what parses re-encodes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "picomux-frame.h"

/* abort() even under NDEBUG: a broken promise is a finding. */
#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_strerror(int err, const struct pm_hdr *hdr)
{
    char msg[128];
    size_t n;

    pm_frame_strerror(err, hdr, msg, sizeof msg);
    n = strlen(msg);
    CHECK(n > 9 && n < sizeof msg);
    CHECK(memcmp(msg, "picomux: ", 9) == 0);
}

/* What parses must print back to a body that parses to the same value. */
static void check_ping_value(uint32_t ms)
{
    uint8_t body[PM_PING_BODY_MAX];
    uint32_t again = ~ms;
    size_t n = pm_ping_body_write(ms, body);

    CHECK(n >= 20 && n <= PM_PING_BODY_MAX);
    CHECK(pm_ping_body_parse(body, n, &again) == PM_OK && again == ms);
}

static void check_frame(const uint8_t *at, const struct pm_frame *frame)
{
    struct pm_frame_info info;
    uint8_t hdr[PM_HDR_LEN], more[PM_MORE_BODY_LEN];
    int r;

    /* the header re-encodes to the same bytes, version apart */
    pm_hdr_encode(hdr, frame->hdr.cmd, frame->hdr.body_len,
                  frame->hdr.stream_id);
    CHECK(memcmp(hdr + 1, at + 1, PM_HDR_LEN - 1) == 0);
    CHECK(frame->hdr.version == at[0]);

    memset(&info, 0x5a, sizeof info);
    r = pm_frame_validate(frame, &info);
    CHECK(r <= 0);
    if (r != PM_OK) {
        CHECK(pm_cmd_name(frame->hdr.cmd) == NULL ? r == PM_EBADCMD
                                                  : r != PM_EBADCMD);
        check_strerror(r, &frame->hdr);
        return;
    }
    CHECK(pm_cmd_name(frame->hdr.cmd) != NULL);
    if (frame->hdr.cmd == PM_CMD_MORE) {
        CHECK(frame->hdr.body_len == PM_MORE_BODY_LEN);
        pm_more_encode(more, info.more_incr);
        CHECK(memcmp(more, frame->body, sizeof more) == 0);
    } else if (frame->hdr.cmd == PM_CMD_PING) {
        check_ping_value(info.ping_ms);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pm_frame frame;
    size_t off = 0, used = 0, frames = 0;
    uint8_t *wrapped;
    uint32_t ms = 0, ms2 = 0;
    int r, r2;

    while (pm_frame_split(data + off, size - off, &frame, &used) ==
           PM_SPLIT_FRAME) {
        CHECK(used == PM_HDR_LEN + (size_t)frame.hdr.body_len);
        CHECK(used <= size - off && used <= PM_FRAME_MAX);
        CHECK(frame.body == data + off + PM_HDR_LEN);
        check_frame(data + off, &frame);
        off += used;
        frames++;
    }
    /* the loop ends on NEED_MORE, asking for more than is left */
    CHECK(used > size - off && used <= PM_FRAME_MAX);
    CHECK(used == PM_HDR_LEN || size - off >= PM_HDR_LEN);
    CHECK(frames <= size / PM_HDR_LEN);

    /* The input as a bare PING body. */
    r = pm_ping_body_parse(data, size, &ms);
    CHECK(r <= 0);
    if (size > PM_BODY_MAX) {
        CHECK(r == PM_EPING_TOOLONG);
        return 0;
    }
    if (r == PM_OK)
        check_ping_value(ms);
    else
        check_strerror(r, NULL);

    /*
     * serde skips JSON whitespace around the value, so wrapping the body
     * in it must not change the verdict or the value.
     */
    if (size + 2 <= PM_BODY_MAX) {
        wrapped = malloc(size + 2);
        CHECK(wrapped != NULL);
        wrapped[0] = '\n';
        if (size > 0)
            memcpy(wrapped + 1, data, size);
        wrapped[size + 1] = '\t';
        r2 = pm_ping_body_parse(wrapped, size + 2, &ms2);
        CHECK((r == PM_OK) == (r2 == PM_OK));
        CHECK(r != PM_OK || ms == ms2);
        free(wrapped);
    }
    return 0;
}
