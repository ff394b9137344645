/* fake.h - in-process test layers for the core's unit tests. */
#ifndef SILLAD_T_FAKE_H
#define SILLAD_T_FAKE_H

#include "sillad.h"

/* Registers plugin "fake" with layers fbase (base), fwrap (wrap) and fmux
 * (mux).  fbase dials by making a socketpair after d= (default 0) ms, or
 * fails when fail=true; the dialed pipe reports name= as its remote
 * address.  fwrap is an identity filter with a required key= option. */
void fake_register(void);
/* Number of fake dial/wrap completions delivered so far. */
extern int fake_completions;
/* Runs the loop until *flag is set or ms pass; returns *flag. */
int run_until(struct event_base *base, const int *flag, int ms);

#endif
