/* SPDX-License-Identifier: MIT */
/*
 * The multifd tool end to end: `multifd demo` migrates a small guest
 * between two processes (precopy, and postcopy with --postcopy) and verifies
 * it byte for byte; a bad option is a usage error (exit status 2); `multifd
 * tune` measures a link to a `tune --listen` peer and recommends settings.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

static char out[65536];

START_TEST(demo_precopy_verifies)
{
	static const char *const args[] = { "demo", "--size", "64M", "--dirty-rate", "32",
					    "--channels", "2", NULL };

	if (!test_have_tool("cli"))
		return;
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "demo failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "status           completed"));
	ck_assert_ptr_nonnull(strstr(out, "verified: 16384 pages identical"));
	ck_assert_ptr_nonnull(strstr(out, "a-b check: every page"));
	ck_assert_ptr_null(strstr(out, "  postcopy "));
}
END_TEST

START_TEST(demo_postcopy_verifies)
{
	static const char *const args[] = { "demo", "--size", "64M", "--dirty-rate", "32",
					    "--postcopy=2", "--compression", "lz4", NULL };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);

	if (!test_have_tool("cli"))
		return;
	if (fd < 0) {
		printf("cli: postcopy skipped, userfaultfd unavailable (%s): run as root or set "
		       "vm.unprivileged_userfaultfd=1\n", strerror(errno));
		return;
	}
	close(fd);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "demo --postcopy failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "status           completed"));
	ck_assert_ptr_nonnull(strstr(out, "  postcopy "));
	ck_assert_ptr_nonnull(strstr(out, "iterations       2 "));
	ck_assert_ptr_nonnull(strstr(out, "verified: 16384 pages identical"));
	ck_assert_ptr_nonnull(strstr(out, "a-b check: every page"));
}
END_TEST

START_TEST(bad_options_are_usage_errors)
{
	static const char *const zero[] = { "demo", "--postcopy=0", NULL };
	static const char *const unknown[] = { "demo", "--no-such-option", NULL };

	if (!test_have_tool("cli"))
		return;
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, zero), 2);
	ck_assert_ptr_nonnull(strstr(out, "--postcopy '0' is not a number from 1 to 1000000"));
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, unknown), 2);
	ck_assert_ptr_nonnull(strstr(out, "no-such-option"));
}
END_TEST

/* A `tune --listen` peer on a free loopback port: its pid, its URI in @uri. */
static pid_t start_tune_peer(char *uri, size_t len)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char tool[4096], line[256];
	int fds[2];
	size_t have = 0;
	pid_t pid;

	ck_assert_int_lt(snprintf(tool, sizeof(tool), "%s/tools/multifd", builddir),
			 (int)sizeof(tool));
	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (dup2(fds[1], STDOUT_FILENO) < 0)
			_exit(126);
		close(fds[0]);
		execl(tool, tool, "tune", "--listen", "tcp:127.0.0.1:0", "-q", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	/* Its first line: "listening on tcp:127.0.0.1:PORT". */
	while (have + 1 < sizeof(line) && read(fds[0], line + have, 1) == 1 && line[have] != '\n')
		have++;
	line[have] = '\0';
	close(fds[0]);
	ck_assert_msg(strncmp(line, "listening on tcp:127.0.0.1:", 27) == 0, "peer said '%s'", line);
	snprintf(uri, len, "%s", line + 13);
	return pid;
}

START_TEST(tune_recommends_channels_and_codec)
{
	char uri[256];
	const char *args[] = { "tune", "--to", uri, "--size", "16M", "--seconds", "0.1",
			       "--max-channels", "2", NULL };
	const char *json[] = { "tune", "--to", uri, "--size", "16M", "--seconds", "0.1",
			       "--max-channels", "1", "--json", NULL };
	const char *dead[] = { "tune", "--to", uri, "--seconds", "0.1", "-q", NULL };
	int status;
	pid_t peer;

	if (!test_have_tool("cli"))
		return;
	peer = start_tune_peer(uri, sizeof(uri));
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "tune failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "   1 stream "));
	ck_assert_ptr_nonnull(strstr(out, "   2 streams "));
	ck_assert_ptr_nonnull(strstr(out, "  none     ratio 1.000"));
	/* Half the synthetic guest is zero pages; every codec shows up twice
	 * (1 and 2 channels) in the model. */
	ck_assert_ptr_nonnull(strstr(out, "50% zero pages"));
	ck_assert_ptr_nonnull(strstr(out, "model (16 MiB guest"));
	ck_assert_ptr_nonnull(strstr(out, "recommendation: --channels "));
	ck_assert_msg(test_run_tool(out, sizeof(out), true, json) == 0, "tune --json failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "{\"size\":16777216,"));
	ck_assert_ptr_nonnull(strstr(out, "\"recommendation\":{\"multifd-channels\":1,"));
	ck_assert_int_eq(kill(peer, SIGTERM), 0);
	ck_assert_int_eq(waitpid(peer, &status, 0), peer);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "peer status %d", status);
	/* Nobody listens any more: a clear failure. */
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, dead), 1);
	ck_assert_ptr_nonnull(strstr(out, "the link measurement failed"));
}
END_TEST

Suite *suite_cli(void)
{
	Suite *s = suite_create("cli");
	TCase *tc = tcase_create("demo");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, demo_precopy_verifies);
	tcase_add_test(tc, demo_postcopy_verifies);
	tcase_add_test(tc, bad_options_are_usage_errors);
	tcase_add_test(tc, tune_recommends_channels_and_codec);
	suite_add_tcase(s, tc);
	return s;
}
