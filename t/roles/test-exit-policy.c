/* test-exit-policy.c - roles/exit-policy.c: special addresses, allow and
 * deny lists, names. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "../cu.h"
#include "exit-policy.h"
#include "sillad.h"

/* Checks address text under p; returns 0 (allowed) or SL_EINVAL, with why
 * in the buffer. */
static char why[200];

static int
check(const struct exit_policy *p, const char *host, const char *addr)
{
    struct sockaddr_storage ss;
    int name_allowed = 0, r;

    memset(&ss, 0, sizeof(ss));
    why[0] = '\0';
    if (host != NULL && (r = exit_policy_check_name(p, host, &name_allowed,
                                                    why, sizeof(why))) != 0)
        return r;
    if (inet_pton(AF_INET, addr, &((struct sockaddr_in *)&ss)->sin_addr)
        == 1) {
        ss.ss_family = AF_INET;
    } else {
        CU_ASSERT_FATAL(inet_pton(AF_INET6, addr,
                                  &((struct sockaddr_in6 *)&ss)->sin6_addr)
                        == 1);
        ss.ss_family = AF_INET6;
    }
    return exit_policy_check_addr(p, (struct sockaddr *)&ss, name_allowed,
                                  why, sizeof(why));
}

static void
test_special(void)
{
    struct exit_policy *p = exit_policy_new(0);
    static const char *const refused[] = {
        "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1",
        "172.31.255.255", "192.168.1.1", "169.254.169.254", "0.0.0.0",
        "224.0.0.1", "255.255.255.255", "100.64.0.1", "::", "::1",
        "fe80::1", "fd00::1", "ff02::1", "::ffff:127.0.0.1",
        "::ffff:10.0.0.1", "::127.0.0.1", NULL,
    };
    static const char *const allowed[] = {
        "93.184.215.14", "8.8.8.8", "172.32.0.1", "172.15.255.255",
        "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", NULL,
    };

    for (size_t i = 0; refused[i] != NULL; i++) {
        int r = check(p, NULL, refused[i]);

        if (r == 0)
            fprintf(stderr, "\n  %s was allowed\n", refused[i]);
        CU_ASSERT_EQUAL(r, SL_EINVAL);
    }
    for (size_t i = 0; allowed[i] != NULL; i++) {
        int r = check(p, NULL, allowed[i]);

        if (r != 0)
            fprintf(stderr, "\n  %s was refused: %s\n", allowed[i], why);
        CU_ASSERT_EQUAL(r, 0);
    }
    CU_ASSERT_EQUAL(check(p, NULL, "127.0.0.1"), SL_EINVAL);
    CU_ASSERT_TEXT(why, "127.0.0.1 is a loopback address");
    CU_ASSERT_EQUAL(check(p, NULL, "fd12::5"), SL_EINVAL);
    CU_ASSERT_TEXT(why, "fd12::5 is a private (unique local) address");
    exit_policy_free(p);

    p = exit_policy_new(1);
    for (size_t i = 0; refused[i] != NULL; i++)
        CU_ASSERT_EQUAL(check(p, NULL, refused[i]), 0);
    exit_policy_free(p);
}

static void
test_lists(void)
{
    struct exit_policy *p = exit_policy_new(0);
    struct sl_error e;

    sl_error_clear(&e);
    CU_ASSERT_EQUAL(exit_policy_add(p, 0, "93.184.0.0/16", &e), 0);
    CU_ASSERT_EQUAL(exit_policy_add(p, 0, "2001:db8::/32", &e), 0);
    CU_ASSERT_EQUAL(exit_policy_add(p, 0, "Blocked.Example", &e), 0);
    CU_ASSERT_EQUAL(exit_policy_add(p, 0, ".ads.example", &e), 0);
    CU_ASSERT_EQUAL(exit_policy_add(p, 1, "10.9.0.0/24", &e), 0);
    CU_ASSERT_EQUAL(check(p, NULL, "93.184.215.14"), SL_EINVAL);
    CU_ASSERT_TEXT(why, "93.184.215.14 is in a denied network");
    CU_ASSERT_EQUAL(check(p, NULL, "93.185.0.1"), SL_EINVAL);  /* not allowed */
    CU_ASSERT_TEXT(why, "93.185.0.1 is not in the allow list");
    CU_ASSERT_EQUAL(check(p, NULL, "2001:db8::7"), SL_EINVAL);
    CU_ASSERT_EQUAL(check(p, "blocked.example", "10.9.0.1"), SL_EINVAL);
    CU_ASSERT_TEXT(why, "name matches deny entry blocked.example");
    CU_ASSERT_EQUAL(check(p, "BLOCKED.example.", "10.9.0.1"), SL_EINVAL);
    CU_ASSERT_EQUAL(check(p, "x.ads.example", "10.9.0.1"), SL_EINVAL);
    CU_ASSERT_EQUAL(check(p, "ads.example", "10.9.0.1"), SL_EINVAL);
    CU_ASSERT_EQUAL(check(p, "badads.example", "10.9.0.1"), 0);
    /* An explicit allow network lets a private address through. */
    CU_ASSERT_EQUAL(check(p, NULL, "10.9.0.200"), 0);
    CU_ASSERT_EQUAL(check(p, NULL, "10.9.1.1"), SL_EINVAL);
    exit_policy_free(p);

    /* Allow names: the name passes rule 2, not rule 3. */
    p = exit_policy_new(0);
    CU_ASSERT_EQUAL(exit_policy_add(p, 1, ".example.org", &e), 0);
    CU_ASSERT_EQUAL(check(p, "www.example.org", "8.8.8.8"), 0);
    CU_ASSERT_EQUAL(check(p, "www.example.com", "8.8.8.8"), SL_EINVAL);
    CU_ASSERT_EQUAL(check(p, "www.example.org", "127.0.0.1"), SL_EINVAL);
    CU_ASSERT_EQUAL(check(p, NULL, "8.8.8.8"), SL_EINVAL);
    exit_policy_free(p);

    /* Bad entries. */
    p = exit_policy_new(0);
#define BAD(t)                                                               \
    do {                                                                     \
        sl_error_clear(&e);                                                  \
        CU_ASSERT_EQUAL(exit_policy_add(p, 1, t, &e), SL_EINVAL);            \
    } while (0)
    BAD("10.0.0.0/33");
    BAD("10.0.0.0/");
    BAD("10.0.0.0/-1");
    BAD("::1/129");
    BAD("host name");
    BAD("");
    BAD(".");
    BAD("a..b/8");
    BAD("1.2.3.4:80");
#undef BAD
    sl_error_clear(&e);
    exit_policy_add(p, 1, "x y", &e);
    CU_ASSERT_TEXT(e.text, "'x y' is neither an address, a network "
                           "ADDR/BITS, nor a host name (or .domain)");
    /* A prefix with host bits set still matches by its network bits. */
    CU_ASSERT_EQUAL(exit_policy_add(p, 1, "192.168.1.77/23", &e), 0);
    CU_ASSERT_EQUAL(check(p, NULL, "192.168.0.5"), 0);
    CU_ASSERT_EQUAL(check(p, NULL, "192.168.2.5"), SL_EINVAL);
    exit_policy_free(p);
}

int
main(void)
{
    static const struct cu_test tests[] = {
        { "special addresses", test_special },
        { "allow and deny lists", test_lists },
        { NULL, NULL },
    };

    return cu_run("exit-policy", tests);
}
