/* SPDX-License-Identifier: MIT */
/*
 * One runner for every Check suite, so `make check` ends with one summary
 * line.  Each suite lives in its own file (tests/unit/check_<module>.c or
 * tests/integration/check_<topic>.c) and exports suite_<name>().
 *
 * Usage: run-tests [SUITE...]   (no argument: all suites)
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/testlib.h"

#define SUITES(X)         \
	X(error)          \
	X(json)           \
	X(channel)        \
	X(uri)            \
	X(transport)      \
	X(tls)            \
	X(stream)         \
	X(registry)       \
	X(savevm)         \
	X(loadvm_bad)     \
	X(bad_input)      \
	X(compress)       \
	X(multifd)        \
	X(engine)         \
	X(postcopy)       \
	X(pcdest)         \
	X(faults)         \
	X(cli)            \
	X(dump)           \
	X(minivmm)        \
	X(symbols)        \
	X(embed)          \
	X(install)

#define DECLARE(name) Suite *suite_##name(void);
SUITES(DECLARE)

struct suite_entry {
	const char *name;
	Suite *(*make)(void);
};

#define ENTRY(name) { #name, suite_##name },
static const struct suite_entry all_suites[] = { SUITES(ENTRY) };

/* MFD_TEST_LOG=1..3 prints the library's log on stderr, for debugging a test. */
static void log_to_stderr(enum mfd_log_level level, const char *msg, void *opaque)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };

	(void)opaque;
	fprintf(stderr, "[%s] %s\n", names[level], msg);
}

int main(int argc, char **argv)
{
	SRunner *sr = NULL;
	const char *log = getenv("MFD_TEST_LOG");

	if (log && *log)
		mfd_log_set_handler(log_to_stderr, NULL, (enum mfd_log_level)atoi(log));
	size_t n = sizeof(all_suites) / sizeof(all_suites[0]);

	for (size_t i = 0; i < n; i++) {
		int wanted = argc < 2;

		for (int a = 1; a < argc; a++)
			if (strcmp(argv[a], all_suites[i].name) == 0)
				wanted = 1;
		if (!wanted)
			continue;
		if (!sr)
			sr = srunner_create(all_suites[i].make());
		else
			srunner_add_suite(sr, all_suites[i].make());
	}
	if (!sr) {
		fprintf(stderr, "run-tests: no suite matches; known suites:");
		for (size_t i = 0; i < n; i++)
			fprintf(stderr, " %s", all_suites[i].name);
		fprintf(stderr, "\n");
		return 2;
	}
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
