/* SPDX-License-Identifier: MIT */
/*
 * examples/embed/embed, the walk-through program of docs/api.md, migrates
 * its source VM to its destination VM and verifies the result; this suite
 * runs it and checks its exit status and success line.  It also checks that
 * docs/api.md and embed.c name the same steps ("Step N: title"), so the
 * walk-through cannot describe code that is not there.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

/* Runs @path with stdin from /dev/null; stdout and stderr into @out. */
static int run_program(const char *path, char *out, size_t len)
{
	int fds[2], status;
	size_t have = 0;
	ssize_t got;
	pid_t pid;

	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int nullfd = open("/dev/null", O_RDONLY);

		if (nullfd < 0 || dup2(nullfd, STDIN_FILENO) < 0 ||
		    dup2(fds[1], STDOUT_FILENO) < 0 || dup2(fds[1], STDERR_FILENO) < 0)
			_exit(126);
		close(fds[0]);
		execl(path, path, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	for (;;) {
		char sink[4096];

		/* Keep reading past a full buffer, so the child never blocks. */
		if (have + 1 < len)
			got = read(fds[0], out + have, len - 1 - have);
		else
			got = read(fds[0], sink, sizeof(sink));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		if (have + 1 < len)
			have += (size_t)got;
	}
	out[have] = '\0';
	close(fds[0]);
	while (waitpid(pid, &status, 0) < 0)
		ck_assert_msg(errno == EINTR, "waitpid: %s", strerror(errno));
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/*
 * Run the example @rel of the build directory; its exit status, its output
 * in @out.  -1 (after a visible skip) without MFD_BUILDDIR.
 */
static int run_example(const char *rel, char *out, size_t len)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char path[4096];

	if (!builddir || !*builddir) {
		test_skip("builddir", "embed: MFD_BUILDDIR is not set (run through `make check`)");
		return -1;
	}
	ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", builddir, rel), (int)sizeof(path));
	ck_assert_msg(access(path, X_OK) == 0, "%s: %s (make builds it)", path, strerror(errno));
	return run_program(path, out, len);
}

START_TEST(test_embed_runs)
{
	static char out[1 << 16];
	int status = run_example("examples/embed/embed", out, sizeof(out));

	if (status < 0)
		return;
	ck_assert_msg(status == 0, "embed exited with status %d; its output:\n%s", status, out);
	ck_assert_msg(strstr(out, "\nembed: ok: ") != NULL,
		      "embed exited 0 without its success line; its output:\n%s", out);
	ck_assert_msg(strstr(out, "FAIL") == NULL, "embed printed a failure:\n%s", out);
	ck_assert_msg(strstr(out, "embed: source: device -> completed") != NULL,
		      "the state_changed hook did not report the source's completion:\n%s", out);
}
END_TEST

/* examples/channels: the VMM's own connections, the destination a forked
 * process that only has file descriptors. */
START_TEST(test_channels_example_runs)
{
	static char out[1 << 16];
	int status = run_example("examples/channels/channels", out, sizeof(out));

	if (status < 0)
		return;
	ck_assert_msg(status == 0, "channels exited with status %d; its output:\n%s", status,
		      out);
	ck_assert_msg(strstr(out, "channels: ok: 16 MiB over a main channel and 3 multifd "
			     "channels") != NULL, "no success line:\n%s", out);
}
END_TEST

static char *read_source(const char *srcdir, const char *rel)
{
	char path[4096];
	char *buf;
	long len;
	FILE *f;

	ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", srcdir, rel), (int)sizeof(path));
	f = fopen(path, "r");
	ck_assert_msg(f, "cannot open %s: %s", path, strerror(errno));
	ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
	len = ftell(f);
	ck_assert_msg(len >= 0 && len < (1L << 24), "%s: size %ld", path, len);
	rewind(f);
	buf = malloc((size_t)len + 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_msg(fread(buf, 1, (size_t)len, f) == (size_t)len, "cannot read %s", path);
	buf[len] = '\0';
	fclose(f);
	return buf;
}

/*
 * The titles that follow each @marker ("Step N: ...") in @text, one per line
 * of @titles (NUL-separated, in order); returns how many.  A title ends at
 * the end of the line or at "*" (a closing comment).
 */
static int step_titles(const char *text, const char *marker, char titles[][128], int max)
{
	int n = 0;

	for (const char *p = text; (p = strstr(p, marker)) != NULL; p += strlen(marker)) {
		const char *t = p + strlen(marker);
		size_t len = strcspn(t, "\n*");

		while (len > 0 && t[len - 1] == ' ')
			len--;
		ck_assert_msg(n < max, "more than %d steps", max);
		ck_assert_msg(len > 0 && len < 128, "step title of %zu bytes at '%.40s'", len, p);
		/* Both spellings of one step (in several places of embed.c) count once. */
		int dup = 0;

		for (int i = 0; i < n; i++)
			dup |= strncmp(titles[i], t, len) == 0 && titles[i][len] == '\0';
		if (dup)
			continue;
		/* One number, one title: "Step 2: a" and "Step 2: b" disagree. */
		size_t num = strcspn(t, ":");

		for (int i = 0; i < n; i++)
			ck_assert_msg(strncmp(titles[i], t, num + 1) != 0,
				      "step %.*s has two titles: '%s' and '%.*s'", (int)num, t,
				      titles[i], (int)len, t);
		memcpy(titles[n], t, len);
		titles[n][len] = '\0';
		n++;
	}
	return n;
}

START_TEST(test_walkthrough_matches_code)
{
	const char *srcdir = getenv("MFD_SRCDIR");
	char doc_steps[32][128], code_steps[32][128];

	if (!srcdir || !*srcdir) {
		test_skip("builddir", "embed: MFD_SRCDIR is not set (run through `make check`)");
		return;
	}
	char *doc = read_source(srcdir, "docs/api.md");
	char *code = read_source(srcdir, "examples/embed/embed.c");
	int nd = step_titles(doc, "\n### Step ", doc_steps, 32);
	int nc = step_titles(code, "/* Step ", code_steps, 32);

	ck_assert_msg(nd >= 5, "docs/api.md has %d '### Step N: ...' headings", nd);
	for (int i = 0; i < nd; i++) {
		int found = 0;

		for (int j = 0; j < nc; j++)
			found |= strcmp(doc_steps[i], code_steps[j]) == 0;
		ck_assert_msg(found, "docs/api.md has step '%s', which embed.c does not mark "
			      "with a '/* Step %s */' comment", doc_steps[i], doc_steps[i]);
	}
	for (int j = 0; j < nc; j++) {
		int found = 0;

		for (int i = 0; i < nd; i++)
			found |= strcmp(doc_steps[i], code_steps[j]) == 0;
		ck_assert_msg(found, "embed.c marks step '%s', which docs/api.md does not describe",
			      code_steps[j]);
	}
	/* Every function of embed.c the text names (`name()`, not mfd_*) exists there. */
	const char *walk = strstr(doc, "\n## Walk-through");

	ck_assert_msg(walk, "docs/api.md has no '## Walk-through' section");
	for (const char *p = walk; (p = strchr(p, '`')) != NULL; p++) {
		size_t len = strspn(p + 1, "abcdefghijklmnopqrstuvwxyz0123456789_");
		char call[80];

		if (len == 0 || len > 64 || strncmp(p + 1 + len, "()`", 3) != 0 ||
		    strncmp(p + 1, "mfd_", 4) == 0)
			continue;
		memcpy(call, p + 1, len);
		strcpy(call + len, "(");
		ck_assert_msg(strstr(code, call) != NULL,
			      "docs/api.md refers to %.*s(), which embed.c does not have", (int)len,
			      p + 1);
	}
	free(doc);
	free(code);
}
END_TEST

/* examples/vmcreate: a destination that starts empty builds its VM (memfd
 * RAM with an unplugged hole, a device) from the source's description. */
START_TEST(test_vmcreate_example_runs)
{
	char out[16384];
	int status = run_example("examples/vmcreate/vmcreate", out, sizeof(out));

	if (status == -1)
		return;
	ck_assert_msg(status == 0, "vmcreate exited with status %d; its output:\n%s", status,
		      out);
	ck_assert_msg(strstr(out, "vmcreate: destination: source says 'machine=minimal "
			     "ram=memfd hole=1 device=1', 2 RAM blocks") != NULL,
		      "the hook did not run as expected:\n%s", out);
	ck_assert_msg(strstr(out, "vmcreate: ok: the destination built 2 blocks (memfd, 8 MiB "
			     "with a 1024 KiB hole; 4 MiB) and a device") != NULL,
		      "no success line:\n%s", out);
}
END_TEST

/* Whether config.mk of the build directory has "NAME = VALUE". */
static bool config_says(const char *builddir, const char *line)
{
	char path[4096], buf[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "%s/config.mk", builddir);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	while (!found && fgets(buf, sizeof(buf), f)) {
		buf[strcspn(buf, "\n")] = '\0';
		found = strcmp(buf, line) == 0;
	}
	fclose(f);
	return found;
}

/*
 * examples/rust: bindings bindgen generated from the header, a std-only Rust
 * program that migrates 8 MiB between two threads over socketpairs, with a
 * vm_stop hook written in Rust; and bindgen's layout tests.  Built when
 * configure found rustc and bindgen (a skip of capability "rust" otherwise),
 * never in a sanitizer build ("rust-sanitized": the Rust program is not
 * instrumented and cannot load a sanitized library).
 */
START_TEST(test_rust_example_runs)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char out[16384], path[4096];

	if (!builddir || !*builddir) {
		test_skip("builddir", "embed: MFD_BUILDDIR is not set (run through `make check`)");
		return;
	}
	if (!config_says(builddir, "HAVE_RUST = 1")) {
		if (!config_says(builddir, "SANITIZERS = "))
			test_skip("rust-sanitized", "embed: examples/rust is not built with "
				  "sanitizers (an uninstrumented program cannot load the library)");
		else
			test_skip("rust", "embed: examples/rust not built: configure found no "
				  "rustc and bindgen (scripts/install-deps installs them)");
		return;
	}
	snprintf(path, sizeof(path), "%s/examples/rust/rust-example", builddir);
	ck_assert_msg(access(path, X_OK) == 0, "%s: %s (make builds it)", path, strerror(errno));
	int status = run_example("examples/rust/rust-example", out, sizeof(out));

	ck_assert_msg(status == 0, "the Rust example exited with status %d; its output:\n%s",
		      status, out);
	ck_assert_msg(strstr(out, "rust: ok: 8 MiB over a main and 2 multifd channels, "
			     "libmultifd ") != NULL, "no success line:\n%s", out);
	status = run_example("examples/rust/layout-tests", out, sizeof(out));
	ck_assert_msg(status == 0, "bindgen's layout tests failed (status %d):\n%s", status, out);
	ck_assert_msg(strstr(out, "test result: ok.") != NULL && strstr(out, " 0 failed") != NULL,
		      "no passing layout-test summary:\n%s", out);
}
END_TEST

Suite *suite_embed(void);

Suite *suite_embed(void)
{
	Suite *s = suite_create("embed");
	TCase *tc = tcase_create("walkthrough");

	/* A real migration: slow under sanitizers. */
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_embed_runs);
	tcase_add_test(tc, test_walkthrough_matches_code);
	tcase_add_test(tc, test_channels_example_runs);
	tcase_add_test(tc, test_vmcreate_example_runs);
	tcase_add_test(tc, test_rust_example_runs);
	suite_add_tcase(s, tc);
	return s;
}
