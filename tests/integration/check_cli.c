/* SPDX-License-Identifier: MIT */
/*
 * The multifd tool end to end: `multifd demo` migrates a small guest
 * between two processes (precopy, and postcopy with --postcopy) and verifies
 * it byte for byte; a bad option is a usage error (exit status 2).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs the tool with @args (NULL-terminated); its output into @out. */
static int run_tool(char *out, size_t len, const char *const *args)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char tool[4096];
	const char *argv[32];
	int fds[2], status, n = 0;
	size_t have = 0;
	ssize_t got;
	pid_t pid;

	ck_assert_int_lt(snprintf(tool, sizeof(tool), "%s/tools/multifd", builddir),
			 (int)sizeof(tool));
	argv[n++] = tool;
	while (*args && n < 31)
		argv[n++] = *args++;
	argv[n] = NULL;
	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int nullfd = open("/dev/null", O_RDONLY);

		if (nullfd < 0 || dup2(nullfd, STDIN_FILENO) < 0 || dup2(fds[1], STDOUT_FILENO) < 0 ||
		    dup2(fds[1], STDERR_FILENO) < 0)
			_exit(126);
		close(fds[0]);
		execv(tool, (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	while (have + 1 < len && (got = read(fds[0], out + have, len - 1 - have)) > 0)
		have += (size_t)got;
	out[have] = '\0';
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static bool have_tool(void)
{
	const char *builddir = getenv("MFD_BUILDDIR");

	if (!builddir || !*builddir) {
		printf("cli: skipped, MFD_BUILDDIR is not set (run through `make check`)\n");
		return false;
	}
	return true;
}

static char out[65536];

START_TEST(demo_precopy_verifies)
{
	static const char *const args[] = { "demo", "--size", "64M", "--dirty-rate", "32",
					    "--channels", "2", NULL };

	if (!have_tool())
		return;
	ck_assert_msg(run_tool(out, sizeof(out), args) == 0, "demo failed:\n%s", out);
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

	if (!have_tool())
		return;
	if (fd < 0) {
		printf("cli: postcopy skipped, userfaultfd unavailable (%s): run as root or set "
		       "vm.unprivileged_userfaultfd=1\n", strerror(errno));
		return;
	}
	close(fd);
	ck_assert_msg(run_tool(out, sizeof(out), args) == 0, "demo --postcopy failed:\n%s", out);
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

	if (!have_tool())
		return;
	ck_assert_int_eq(run_tool(out, sizeof(out), zero), 2);
	ck_assert_ptr_nonnull(strstr(out, "--postcopy '0' is not a number from 1 to 1000000"));
	ck_assert_int_eq(run_tool(out, sizeof(out), unknown), 2);
	ck_assert_ptr_nonnull(strstr(out, "no-such-option"));
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
	suite_add_tcase(s, tc);
	return s;
}
