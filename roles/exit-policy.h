/*
 * exit-policy.h - which destinations sillad-exit connects to.
 *
 * A destination is a host as the client wrote it plus every address it
 * resolved to.  It is refused when
 *   1. its name or any of its addresses matches the deny list; or
 *   2. the allow list is not empty and neither the name matches it nor
 *      every address lies in one of its networks; or
 *   3. any address is special -- unspecified, loopback, private (RFC 1918,
 *      fc00::/7), shared (100.64.0.0/10), link-local, multicast, reserved
 *      (240.0.0.0/4, broadcast), or an IPv4-mapped/compatible IPv6 form of
 *      one -- unless allow_private is set or the address lies in an allow
 *      network written explicitly.
 * List entries are "ADDR", "ADDR/BITS" (IPv4 or IPv6), "name" (exactly
 * that name, any case) or ".name" (that name and every name under it).
 */
#ifndef SILLAD_ROLES_EXIT_POLICY_H
#define SILLAD_ROLES_EXIT_POLICY_H

#include <stddef.h>
#include <sys/socket.h>

#include "sillad/plugin.h"

struct exit_policy;

/* An empty policy (nothing allowed beyond public addresses). */
struct exit_policy *exit_policy_new(int allow_private);
void exit_policy_free(struct exit_policy *p);
/* Adds one entry to the allow (allow != 0) or deny list.  0, or SL_EINVAL
 * with e naming what is wrong with text, or SL_ENOMEM. */
int exit_policy_add(struct exit_policy *p, int allow, const char *text,
                    struct sl_error *e);

/* Checks the host name alone (deny names; allow names).  Returns 0 when
 * the name is not refused on its own, else SL_EINVAL with why (at most len
 * bytes) saying which rule refused it.  *name_allowed is set when an allow
 * name matched, which lets its addresses skip rule 2. */
int exit_policy_check_name(const struct exit_policy *p, const char *host,
                           int *name_allowed, char *why, size_t len);
/* Checks one resolved address under rules 1-3.  0 if allowed, else
 * SL_EINVAL with why filled. */
int exit_policy_check_addr(const struct exit_policy *p,
                           const struct sockaddr *sa, int name_allowed,
                           char *why, size_t len);

#endif /* SILLAD_ROLES_EXIT_POLICY_H */
