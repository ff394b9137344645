/* exit-policy.c - destination rules of sillad-exit (see exit-policy.h). */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "exit-policy.h"
#include "sillad.h"

#define POLICY_MAX 4096   /* entries per list */

struct net {
    int family;              /* AF_INET or AF_INET6 */
    unsigned char a[16];     /* network bytes (4 used for IPv4) */
    int bits;
};

struct plist {
    struct net *nets;
    size_t nnets;
    char **names;            /* lower case; leading '.' = suffix match */
    size_t nnames;
};

struct exit_policy {
    int allow_private;
    struct plist allow, deny;
};

struct exit_policy *
exit_policy_new(int allow_private)
{
    struct exit_policy *p = calloc(1, sizeof(*p));

    if (p != NULL)
        p->allow_private = allow_private;
    return p;
}

static void
plist_free(struct plist *l)
{
    for (size_t i = 0; i < l->nnames; i++)
        free(l->names[i]);
    free(l->names);
    free(l->nets);
}

void
exit_policy_free(struct exit_policy *p)
{
    if (p == NULL)
        return;
    plist_free(&p->allow);
    plist_free(&p->deny);
    free(p);
}

/* Parses "ADDR" or "ADDR/BITS" into n; 0 or -1. */
static int
parse_net(const char *text, struct net *n)
{
    char buf[64], *slash;
    long bits;

    if (strlen(text) >= sizeof(buf))
        return -1;
    strcpy(buf, text);
    slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    memset(n, 0, sizeof(*n));
    if (inet_pton(AF_INET, buf, n->a) == 1) {
        n->family = AF_INET;
        n->bits = 32;
    } else if (inet_pton(AF_INET6, buf, n->a) == 1) {
        n->family = AF_INET6;
        n->bits = 128;
    } else {
        return -1;
    }
    if (slash != NULL) {
        char *end;

        if (slash[1] < '0' || slash[1] > '9')
            return -1;
        bits = strtol(slash + 1, &end, 10);
        if (*end != '\0' || bits < 0 || bits > n->bits)
            return -1;
        n->bits = (int)bits;
    }
    return 0;
}

static int
valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 253)
        return 0;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || *c == '-' || *c == '.' ||
              *c == '_'))
            return 0;
    return s[n - 1] != '.' && !(s[0] == '.' && s[1] == '\0');
}

int
exit_policy_add(struct exit_policy *p, int allow, const char *text,
                struct sl_error *e)
{
    struct plist *l = allow ? &p->allow : &p->deny;
    struct net n;

    if (l->nnets + l->nnames >= POLICY_MAX)
        return sl_error_set(e, SL_EINVAL, "", "more than %d entries",
                            POLICY_MAX);
    if (parse_net(text, &n) == 0) {
        struct net *nn = realloc(l->nets, (l->nnets + 1) * sizeof(*nn));

        if (nn == NULL)
            return sl_error_set(e, SL_ENOMEM, "", "out of memory");
        l->nets = nn;
        l->nets[l->nnets++] = n;
        return 0;
    }
    if (strchr(text, '/') != NULL || strchr(text, ':') != NULL ||
        !valid_name(text))
        return sl_error_set(e, SL_EINVAL, "", "'%.80s' is neither an "
                            "address, a network ADDR/BITS, nor a host name "
                            "(or .domain)", text);
    {
        char **nn = realloc(l->names, (l->nnames + 1) * sizeof(*nn));
        char *copy = strdup(text);

        if (nn != NULL)
            l->names = nn;
        if (nn == NULL || copy == NULL) {
            free(copy);
            return sl_error_set(e, SL_ENOMEM, "", "out of memory");
        }
        for (char *c = copy; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c - 'A' + 'a');
        l->names[l->nnames++] = copy;
    }
    return 0;
}

/* Whether host matches an entry of l; *which gets the entry. */
static int
name_match(const struct plist *l, const char *host, const char **which)
{
    size_t hl = strlen(host);

    /* "example.com." is the same name as "example.com". */
    if (hl > 0 && host[hl - 1] == '.')
        hl--;
    for (size_t i = 0; i < l->nnames; i++) {
        const char *n = l->names[i];
        size_t nl = strlen(n);

        if (n[0] == '.') {
            /* ".example.com" matches example.com and x.example.com. */
            if ((hl == nl - 1 && strncasecmp(host, n + 1, hl) == 0) ||
                (hl > nl && strncasecmp(host + hl - nl, n, nl) == 0)) {
                *which = n;
                return 1;
            }
        } else if (hl == nl && strncasecmp(host, n, hl) == 0) {
            *which = n;
            return 1;
        }
    }
    return 0;
}

int
exit_policy_check_name(const struct exit_policy *p, const char *host,
                       int *name_allowed, char *why, size_t len)
{
    const char *which;

    *name_allowed = 0;
    if (name_match(&p->deny, host, &which)) {
        snprintf(why, len, "name matches deny entry %s", which);
        return SL_EINVAL;
    }
    if (name_match(&p->allow, host, &which))
        *name_allowed = 1;
    return 0;
}

static int
in_net(const struct net *n, int family, const unsigned char *a)
{
    int full = n->bits / 8, rest = n->bits % 8;

    if (n->family != family)
        return 0;
    if (memcmp(n->a, a, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    return ((n->a[full] ^ a[full]) & (0xff << (8 - rest)) & 0xff) == 0;
}

static int
list_net(const struct plist *l, int family, const unsigned char *a)
{
    for (size_t i = 0; i < l->nnets; i++)
        if (in_net(&l->nets[i], family, a))
            return 1;
    return 0;
}

/* The name of the special range a lies in, or NULL. */
static const char *
special(int family, const unsigned char *a)
{
    static const struct {
        const char *text, *what;
    } v4[] = {
        { "0.0.0.0/8", "unspecified" },
        { "10.0.0.0/8", "private" },
        { "100.64.0.0/10", "shared (carrier-grade NAT)" },
        { "127.0.0.0/8", "loopback" },
        { "169.254.0.0/16", "link-local" },
        { "172.16.0.0/12", "private" },
        { "192.0.0.0/24", "IETF protocol assignments" },
        { "192.168.0.0/16", "private" },
        { "198.18.0.0/15", "benchmarking" },
        { "224.0.0.0/4", "multicast" },
        { "240.0.0.0/4", "reserved or broadcast" },
    }, v6[] = {
        { "::/128", "unspecified" },
        { "::1/128", "loopback" },
        { "fc00::/7", "private (unique local)" },
        { "fe80::/10", "link-local" },
        { "fec0::/10", "site-local" },
        { "ff00::/8", "multicast" },
    };
    struct net n;

    if (family == AF_INET) {
        for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++)
            if (parse_net(v4[i].text, &n) == 0 && in_net(&n, family, a))
                return v4[i].what;
        return NULL;
    }
    for (size_t i = 0; i < sizeof(v6) / sizeof(v6[0]); i++)
        if (parse_net(v6[i].text, &n) == 0 && in_net(&n, family, a))
            return v6[i].what;
    /* ::ffff:a.b.c.d and the deprecated ::a.b.c.d carry an IPv4 address
     * that the kernel connects to. */
    {
        static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0,
                                                  0, 0, 0xff, 0xff };
        static const unsigned char zero[12] = { 0 };

        if (memcmp(a, mapped, 12) == 0 || memcmp(a, zero, 12) == 0)
            return special(AF_INET, a + 12);
    }
    return NULL;
}

int
exit_policy_check_addr(const struct exit_policy *p, const struct sockaddr *sa,
                       int name_allowed, char *why, size_t len)
{
    const unsigned char *a;
    char text[INET6_ADDRSTRLEN];
    const char *what;
    int family = sa->sa_family;

    if (family == AF_INET)
        a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
    else if (family == AF_INET6)
        a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    else {
        snprintf(why, len, "address family %d", family);
        return SL_EINVAL;
    }
    inet_ntop(family, a, text, sizeof(text));
    if (list_net(&p->deny, family, a)) {
        snprintf(why, len, "%s is in a denied network", text);
        return SL_EINVAL;
    }
    if (!name_allowed && (p->allow.nnets > 0 || p->allow.nnames > 0) &&
        !list_net(&p->allow, family, a)) {
        snprintf(why, len, "%s is not in the allow list", text);
        return SL_EINVAL;
    }
    what = special(family, a);
    if (what != NULL && !p->allow_private && !list_net(&p->allow, family, a)) {
        snprintf(why, len, "%s is a %s address", text, what);
        return SL_EINVAL;
    }
    return 0;
}
