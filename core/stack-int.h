/* stack-int.h - stack internals shared by stack.c and dial.c. */
#ifndef SILLAD_STACK_INT_H
#define SILLAD_STACK_INT_H

#include <jansson.h>

#include "sillad.h"

#define SL_STACK_MAX 16

struct sl_stack_layer {
    const struct sl_layer *layer;
    const struct sl_layer_ops *ops;
    struct sl_opts *opts;
    void *cfg;
    int configured;
};

struct sl_stack {
    size_t n;
    int above;      /* starts above a pipe (sl_stack_parse_above) */
    struct sl_stack_layer l[SL_STACK_MAX];
};

/* A parsed but not yet checked stack. */
struct core_stack_spec {
    size_t n;
    char *name[SL_STACK_MAX];
    struct sl_opts *opts[SL_STACK_MAX];
    size_t col[SL_STACK_MAX];
};

void core_lex_skip_ws(const char *t, size_t *pos);
size_t core_lex_word(const char *t, size_t pos);
int core_stack_lex(const char *t, size_t *pos, struct core_stack_spec *sp,
                   struct sl_error *e);
int core_stack_spec_from_json(json_t *arr, const char *where,
                              struct core_stack_spec *sp,
                              struct sl_error *e);
void core_stack_spec_free(struct core_stack_spec *sp);
struct sl_stack *core_stack_build(struct core_stack_spec *sp,
                                  struct sl_error *e);
/* Same; with above set the first layer must consume a pipe instead of
 * being a base layer. */
struct sl_stack *core_stack_build_ex(struct core_stack_spec *sp, int above,
                                     struct sl_error *e);

#endif
