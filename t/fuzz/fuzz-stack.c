/* fuzz-stack.c - libFuzzer target for the stack grammar, dialer
 * expressions, the JSON stack form and config files.  Layers come from the
 * in-process fake plugin of the unit tests, so no plugin file is needed.
 * Built and run by t/fuzz/run-fuzzers.sh. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    struct sl_error e;
    char *text;

    if (!ready) {
        sl_log_set_level(SL_LOG_ERR);
        fake_register();
        ready = 1;
    }
    if (size > 65536)
        return 0;
    text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    sl_error_clear(&e);
    sl_stack_free(sl_stack_parse(text, &e));
    sl_error_clear(&e);
    sl_dialer_free(sl_dialer_parse(text, &e));
    sl_error_clear(&e);
    sl_stack_free(sl_stack_from_json_text(text, &e));
    sl_error_clear(&e);
    {
        struct sl_config *c = sl_config_load_text(text, "fuzz", &e);

        if (c != NULL) {
            static const char *const keys[] = { "listen", NULL };
            char where[128];

            sl_config_check_keys(c, keys, &e);
            sl_config_where(c, "/stacks/a", where, sizeof(where));
            sl_dialer_free(sl_config_dialer(c, "/stacks/a", &e));
            sl_stack_free(sl_config_stack(c, "/listen", &e));
            sl_config_free(c);
        }
    }
    free(text);
    return 0;
}
