/* SPDX-License-Identifier: MIT */
/*
 * Counted skips (testlib.h).  Check has no "skipped" result and runs each
 * test in a forked child, so a skip is one line appended to the file named
 * by $MFD_SKIP_LOG, which tests/main.c creates before the run and reads
 * after it.  One write(2) of a short line to an O_APPEND file is atomic.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

/* Every capability a test may skip for (testlib.h says what each means). */
static const char *const known_caps[] = {
	"uffd", "kvm", "root", "iproute2", "netns", "openssl", "builddir", "codec", "ipv6",
	"gnuplot", "timeout", "tls", "rust", "rust-sanitized",
};

static bool cap_known(const char *cap, size_t len)
{
	for (size_t i = 0; i < sizeof(known_caps) / sizeof(known_caps[0]); i++)
		if (strlen(known_caps[i]) == len && strncmp(known_caps[i], cap, len) == 0)
			return true;
	return false;
}

/* "a,b,c" contains @word as one of its items. */
static bool list_has(const char *list, const char *word)
{
	size_t n = strlen(word);

	while (list && *list) {
		size_t len = strcspn(list, ", ");

		if (len == n && strncmp(list, word, n) == 0)
			return true;
		list += len;
		list += strspn(list, ", ");
	}
	return false;
}

bool test_cap_disabled(const char *capability)
{
	return list_has(getenv("MFD_TEST_DISABLE"), capability);
}

void test_skip(const char *capability, const char *why, ...)
{
	const char *path = getenv("MFD_SKIP_LOG");
	char line[128];
	va_list ap;
	int fd, n;

	ck_assert_msg(cap_known(capability, strlen(capability)),
		      "test_skip: unknown capability '%s' (tests/lib/skip.c)", capability);
	va_start(ap, why);
	vprintf(why, ap);
	va_end(ap);
	printf("; skipped (%s)\n", capability);
	fflush(stdout);
	if (!path || !*path)
		return;
	n = snprintf(line, sizeof(line), "%s\n", capability);
	ck_assert_int_lt(n, (int)sizeof(line));
	fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
	ck_assert_int_eq(write(fd, line, (size_t)n), n);
	close(fd);
}

/* printf at @used into @msg of @len bytes; truncates, never overruns. */
__attribute__((format(printf, 4, 5)))
static void append(char *msg, size_t len, size_t *used, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (*used + 1 >= len)
		return;
	va_start(ap, fmt);
	n = vsnprintf(msg + *used, len - *used, fmt, ap);
	va_end(ap);
	if (n > 0)
		*used += (size_t)n < len - *used ? (size_t)n : len - *used - 1;
}

bool test_have_root_tool(const char *who, const char *capability, const char *probe)
{
	if (geteuid() != 0 || test_cap_disabled("root")) {
		test_skip("root", "%s needs root", who);
		return false;
	}
	if (test_cap_disabled(capability) || system(probe) != 0) {
		test_skip(capability, "%s: '%s' failed (missing or not permitted)", who, probe);
		return false;
	}
	return true;
}

struct skip_count {
	char cap[128];
	unsigned n;
};

int test_skips_report(const char *path, const char *required, char *msg, size_t len)
{
	struct skip_count caps[32];
	size_t ncaps = 0, used = 0;
	unsigned total = 0;
	char line[128];
	int missing = 0;
	FILE *f = fopen(path, "r");

	if (!f) {
		snprintf(msg, len, "skipped: cannot read %s: %s\n", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		size_t i;

		line[strcspn(line, "\n")] = '\0';
		for (i = 0; i < ncaps && strcmp(caps[i].cap, line) != 0; i++)
			;
		if (i == ncaps) {
			if (ncaps == sizeof(caps) / sizeof(caps[0]))
				i = ncaps - 1;	/* (never: a few capability names) */
			else
				snprintf(caps[ncaps++].cap, sizeof(caps[0].cap), "%s", line);
		}
		caps[i].n++;
		total++;
	}
	fclose(f);
#define ADD(...) append(msg, len, &used, __VA_ARGS__)
	ADD("skipped: %u", total);
	for (size_t i = 0; i < ncaps; i++)
		ADD("%s%s: %u", i ? ", " : " (", caps[i].cap, caps[i].n);
	ADD("%s\n", ncaps ? ")" : "");
	for (size_t i = 0; i < ncaps; i++) {
		if (!list_has(required, caps[i].cap))
			continue;
		ADD("run-tests: %u skipped for want of '%s', which MFD_REQUIRE_CAPS says this "
		    "machine provides\n", caps[i].n, caps[i].cap);
		missing++;
	}
	/* A misspelt name would never fail the run: refuse it. */
	while (required && *required) {
		size_t n = strcspn(required, ", ");

		if (n && !cap_known(required, n)) {
			ADD("run-tests: MFD_REQUIRE_CAPS names '%.*s', which no test skips for\n",
			    (int)n, required);
			missing++;
		}
		required += n;
		required += strspn(required, ", ");
	}
#undef ADD
	return missing;
}
