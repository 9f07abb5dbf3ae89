/* SPDX-License-Identifier: MIT */
/*
 * One runner for every Check suite, so `make check` ends with one summary
 * line.  Each suite lives in its own file (tests/unit/check_<module>.c or
 * tests/integration/check_<topic>.c) and exports suite_<name>().
 *
 * Usage: run-tests [SUITE...]   (no argument: all suites)
 *
 * Check has no "skipped" result, so tests/lib/skip.c counts skips in a file
 * ($MFD_SKIP_LOG, made here: every test runs in a forked child).  The line
 * "skipped: N (capability: count, ...)" comes right before Check's summary,
 * which stays the last line a passing run prints (the CI log parser reads
 * it).  The run fails when a capability listed in $MFD_REQUIRE_CAPS
 * (comma-separated; .ci/run sets it from what its machine has) was skipped.
 * $MFD_TEST_DISABLE (same form) makes the tests treat capabilities as absent.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
	X(ram)            \
	X(state)          \
	X(policy)         \
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
static void log_to_stderr(int level, const char *msg, void *opaque)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };

	(void)opaque;
	fprintf(stderr, "[%s] %s\n", names[level], msg);
}

/* Check's own CK_VERBOSITY, as srunner_run_all(CK_ENV) would read it. */
static enum print_output verbosity(void)
{
	const char *v = getenv("CK_VERBOSITY");

	if (!v || !*v)
		return CK_NORMAL;
	if (strcmp(v, "silent") == 0)
		return CK_SILENT;
	if (strcmp(v, "minimal") == 0)
		return CK_MINIMAL;
	if (strcmp(v, "verbose") == 0)
		return CK_VERBOSE;
	return CK_NORMAL;
}

int main(int argc, char **argv)
{
	SRunner *sr = NULL;
	const char *log = getenv("MFD_TEST_LOG");

	if (log && *log)
		mfd_log_set_handler(log_to_stderr, NULL, (enum mfd_log_level)atoi(log));
	size_t n = sizeof(all_suites) / sizeof(all_suites[0]);
	bool chosen[sizeof(all_suites) / sizeof(all_suites[0])] = { false };

	for (size_t i = 0; i < n; i++) {
		int wanted = argc < 2;

		for (int a = 1; a < argc; a++)
			if (strcmp(argv[a], all_suites[i].name) == 0)
				wanted = 1;
		if (!wanted)
			continue;
		chosen[i] = true;
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
	const char *tmp = getenv("TMPDIR");
	char skip_log[4096], report[4096];
	enum print_output mode = verbosity();
	int fd;

	snprintf(skip_log, sizeof(skip_log), "%s/mfd-skips-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	fd = mkstemp(skip_log);
	if (fd < 0) {
		perror("run-tests: mkstemp");
		return 2;
	}
	close(fd);
	setenv("MFD_SKIP_LOG", skip_log, 1);
	/* Check prints the header and summary itself only when it prints
	 * both, so it runs silent and the two are printed here. */
	if (mode > CK_SILENT) {
		printf("Running suite(s):");
		for (size_t i = 0; i < n; i++)
			if (chosen[i])
				printf(" %s\n", all_suites[i].name);
	}
	fflush(stdout);
	srunner_run_all(sr, CK_SILENT);
	int failed = srunner_ntests_failed(sr);
	int missing = test_skips_report(skip_log, getenv("MFD_REQUIRE_CAPS"), report,
					sizeof(report));

	unlink(skip_log);
	fputs(report, stdout);
	srunner_print(sr, mode);
	fflush(stdout);
	srunner_free(sr);
	return failed || missing ? EXIT_FAILURE : EXIT_SUCCESS;
}
