/* SPDX-License-Identifier: MIT */
/*
 * `make install` into a scratch DESTDIR yields a library that an outside
 * program can build against with pkg-config and run, with the man pages
 * (multifd.1 and the generated man3 pages); `make uninstall` removes it
 * again.  The same holds with LIBDIR, BINDIR, MANDIR and INCLUDEDIR given on
 * the make command line.  The work is done by install-test.sh; this test
 * runs it and shows its output when it fails.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

/* Copies the file behind @fd to stderr, from its start. */
static void dump_output(int fd)
{
	char buf[4096];
	ssize_t n;

	if (lseek(fd, 0, SEEK_SET) != 0)
		return;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (fwrite(buf, 1, (size_t)n, stderr) != (size_t)n)
			break;
}

START_TEST(test_install_uninstall)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	const char *srcdir = getenv("MFD_SRCDIR");
	char script[4096];
	FILE *out;
	int logfd, status;
	pid_t pid;

	if (!builddir || !*builddir || !srcdir || !*srcdir) {
		test_skip("builddir", "install: MFD_BUILDDIR and MFD_SRCDIR are not set (run through "
			  "`make check`)");
		return;
	}
	ck_assert_int_lt(snprintf(script, sizeof(script), "%s/tests/integration/install-test.sh", srcdir),
			 (int)sizeof(script));
	out = tmpfile();
	ck_assert_msg(out, "tmpfile: %s", strerror(errno));
	logfd = fileno(out);

	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int nullfd = open("/dev/null", O_RDONLY);

		if (nullfd < 0 || dup2(nullfd, STDIN_FILENO) < 0 || dup2(logfd, STDOUT_FILENO) < 0 ||
		    dup2(logfd, STDERR_FILENO) < 0)
			_exit(126);
		execlp("sh", "sh", script, builddir, srcdir, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		ck_assert_msg(errno == EINTR, "waitpid: %s", strerror(errno));

	int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;

	if (!ok) {
		fprintf(stderr, "---- output of %s ----\n", script);
		dump_output(logfd);
		fprintf(stderr, "---- end of output ----\n");
	}
	fclose(out);
	ck_assert_msg(ok, "install-test.sh failed (%s %d); its output is above",
		      WIFEXITED(status) ? "exit status" : "signal",
		      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}
END_TEST

Suite *suite_install(void);

Suite *suite_install(void)
{
	Suite *s = suite_create("install");
	TCase *tc = tcase_create("destdir");

	/* Installs with make and compiles a program: slow under sanitizers. */
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_install_uninstall);
	suite_add_tcase(s, tc);
	return s;
}
