/* SPDX-License-Identifier: MIT */
/*
 * The multifd tool end to end: `multifd demo` migrates a small guest
 * between two processes (precopy, and postcopy with --postcopy) and verifies
 * it byte for byte; a bad option is a usage error (exit status 2); `multifd
 * tune` measures a link to a `tune --listen` peer and recommends settings,
 * and draws them as a PNG chart with --plot (through gnuplot).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
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

	if (!test_have_tool("cli") || !test_have_uffd("cli: postcopy"))
		return;
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "demo --postcopy failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "status           completed"));
	ck_assert_ptr_nonnull(strstr(out, "  postcopy "));
	ck_assert_ptr_nonnull(strstr(out, "iterations       2 "));
	ck_assert_ptr_nonnull(strstr(out, "verified: 16384 pages identical"));
	ck_assert_ptr_nonnull(strstr(out, "a-b check: every page"));
}
END_TEST

/*
 * postcopy-ram on and no postcopy start: a guest dirtying faster than
 * max-bandwidth moves never converges, so after the no-progress guard's
 * passes the source says why and switches to postcopy on its own.
 */
START_TEST(demo_not_converging_switches_to_postcopy)
{
	static const char *const args[] = { "demo", "--size", "8M", "--dirty-rate", "256",
					    "--param", "postcopy-ram=on",
					    "--param", "max-bandwidth=33554432",
					    "--param", "downtime-limit=10", "-v", NULL };

	if (!test_have_tool("cli") || !test_have_uffd("cli: postcopy"))
		return;
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "demo failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "status           completed"));
	ck_assert_msg(strstr(out, "precopy is not converging: 5 passes in a row"),
		      "no reason given for the switch to postcopy:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "switching to postcopy"));
	ck_assert_ptr_nonnull(strstr(out, "  precopy stalls   1"));
	ck_assert_ptr_nonnull(strstr(out, "  postcopy "));
	ck_assert_ptr_nonnull(strstr(out, "verified: 2048 pages identical"));
	ck_assert_ptr_nonnull(strstr(out, "a-b check: every page"));
}
END_TEST

/* zero-copy-send through the tool: the summary says what the kernel did. */
START_TEST(demo_with_zero_copy_send)
{
	static const char *const args[] = { "demo", "--size", "64M", "--dirty-rate", "32",
					    "--param", "zero-copy-send=on", NULL };

	if (!test_have_tool("cli"))
		return;
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "demo failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "status           completed"));
	ck_assert_ptr_nonnull(strstr(out, "  zero-copy        "));
	ck_assert_ptr_nonnull(strstr(out, "0 channels refused"));
	ck_assert_ptr_nonnull(strstr(out, "verified: 16384 pages identical"));
}
END_TEST

/* recv --prealloc: a stream saved to a file, received into preallocated RAM,
 * gives the same memory as into untouched RAM; send --image --load sends the
 * same bytes as the image mapped. */
START_TEST(recv_prealloc_and_send_load_keep_the_bytes)
{
	char img[64], a[64], b[64], to[80];
	const char *send[] = { "send", "--size", "16M", "--to", to, "-q", NULL };
	const char *recv_a[] = { "recv", "--size", "16M", "--listen", to, "--out", a, "-q", NULL };
	const char *recv_b[] = { "recv", "--size", "16M", "--listen", to, "--prealloc", "--out", b,
				 "-q", NULL };
	char cmp[256];

	if (!test_have_tool("cli"))
		return;
	snprintf(img, sizeof(img), "/tmp/mfd-cli-prealloc-%d.stream", (int)getpid());
	snprintf(a, sizeof(a), "/tmp/mfd-cli-prealloc-%d.a", (int)getpid());
	snprintf(b, sizeof(b), "/tmp/mfd-cli-prealloc-%d.b", (int)getpid());
	snprintf(to, sizeof(to), "file:%s", img);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, send) == 0, "send:\n%s", out);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, recv_a) == 0, "recv:\n%s", out);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, recv_b) == 0, "recv --prealloc:\n%s",
		      out);
	snprintf(cmp, sizeof(cmp), "cmp -s %s %s", a, b);
	ck_assert_msg(system(cmp) == 0, "%s and %s differ", a, b);

	/* send --image --load: the image copied into anonymous RAM migrates the
	 * same bytes as the image mapped. */
	const char *send_load[] = { "send", "--image", a, "--load", "--to", to, "-q", NULL };
	const char *recv_c[] = { "recv", "--size", "16M", "--listen", to, "--out", b, "-q", NULL };
	const char *load_alone[] = { "send", "--load", "--to", to, NULL };

	ck_assert_msg(test_run_tool(out, sizeof(out), true, send_load) == 0, "send --load:\n%s",
		      out);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, recv_c) == 0, "recv:\n%s", out);
	ck_assert_msg(system(cmp) == 0, "the image sent with --load arrived different");
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, load_alone), 2);
	ck_assert_ptr_nonnull(strstr(out, "--load needs --image FILE"));
	unlink(img);
	unlink(a);
	unlink(b);
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

/* Connect to 127.0.0.1:@port; the socket, connected. */
static int connect_loopback(const char *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	a.sin_port = htons((uint16_t)atoi(port));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_msg(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to port %s: %s",
		      port, strerror(errno));
	return fd;
}

/*
 * Issue 19, defect 1, as a user meets it: `multifd recv --listen`, then a
 * health check that connects and closes, a scanner that sends junk and one
 * that connects and says nothing, then the real `multifd send`.  The
 * destination refuses the three with a line each and takes the migration.
 */
START_TEST(recv_survives_port_probes)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char tool[4096], line[256] = "", uri[256], errlog[128], img[128];
	const char *send[] = { "send", "--size", "16M", "--to", uri, "-q", NULL };
	char junk[200];
	int rep[2], status, silent;
	size_t got = 0;
	pid_t pid;

	if (!test_have_tool("cli"))
		return;
	ck_assert_int_lt(snprintf(tool, sizeof(tool), "%s/tools/multifd", builddir),
			 (int)sizeof(tool));
	snprintf(errlog, sizeof(errlog), "/tmp/mfd-cli-probes-%d.log", (int)getpid());
	snprintf(img, sizeof(img), "/tmp/mfd-cli-probes-%d.img", (int)getpid());
	ck_assert_int_eq(pipe(rep), 0);
	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int efd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		alarm(120);	/* bounded even if it never completes */
		if (efd < 0 || dup2(efd, STDERR_FILENO) < 0 || dup2(rep[1], 3) != 3)
			_exit(126);
		execl(tool, "multifd", "recv", "--listen", "tcp:127.0.0.1:0", "--size", "16M",
		      "--report-fd", "3", "--out", img, "-q", (char *)NULL);
		_exit(127);
	}
	close(rep[1]);
	/* "listen tcp:127.0.0.1:PORT\n" */
	while (got + 1 < sizeof(line) && read(rep[0], line + got, 1) == 1 && line[got] != '\n')
		got++;
	line[got] = '\0';
	ck_assert_msg(strncmp(line, "listen tcp:127.0.0.1:", 21) == 0, "recv said '%s'", line);
	snprintf(uri, sizeof(uri), "%s", line + 7);
	const char *port = uri + 14;

	/* A health check, a scanner's junk, and a connection that stays silent. */
	close(connect_loopback(port));
	int fd = connect_loopback(port);

	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (char)(i * 37 + 11);
	ck_assert_int_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	silent = connect_loopback(port);
	usleep(100 * 1000);

	int rs = test_run_tool(out, sizeof(out), true, send);

	close(silent);
	/* Drain the destination's report so it never blocks on the pipe. */
	char drain[4096];

	while (read(rep[0], drain, sizeof(drain)) > 0)
		;
	close(rep[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	FILE *f = fopen(errlog, "r");
	char log[8192] = "";

	ck_assert_ptr_nonnull(f);
	log[fread(log, 1, sizeof(log) - 1, f)] = '\0';
	fclose(f);
	unlink(errlog);
	unlink(img);
	ck_assert_msg(rs == 0, "send failed after the probes:\n%s\nrecv's stderr:\n%s", out, log);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "recv ended with status 0x%x:\n%s", status, log);
	/* The two that closed are refused and said; the silent one may still
	 * have been waiting for its hello when the session's channels were in. */
	const char *first = strstr(log, "refused a connection (1 of at most");

	ck_assert_msg(first && strstr(first, "refused a connection (2 of at most"),
		      "recv's stderr:\n%s", log);
}
END_TEST

/* Read a whole (small) file into @buf. */
static void read_text(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;

	buf[0] = '\0';
	if (!f)
		return;
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
}

/* Start `ip netns exec NS multifd ARGS...` with stdout and stderr into @log. */
static pid_t spawn_in_ns(const char *ns, const char *tool, const char *log, const char **args)
{
	const char *argv[40] = { "ip", "netns", "exec", ns, tool };
	unsigned n = 5;
	pid_t pid;

	for (unsigned i = 0; args[i] && n < 39; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		alarm(180);	/* bounded even if it never ends */
		if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0)
			_exit(126);
		execvp("ip", (char *const *)argv);
		_exit(127);
	}
	return pid;
}

/*
 * Postcopy recovery a user drives with the tool (issue 21): in a network
 * namespace of its own, `multifd recv --recover-listen` and `multifd send
 * --resume-to`; the connections are cut with ss -K during the postcopy push;
 * both sides pause, the destination listens again, the source reconnects,
 * and the migration completes.  (That the pages are right after a recovery
 * is the postcopy suite's network_cut_with_ss_then_recover.)
 */
START_TEST(send_recv_recover_a_cut_postcopy)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char tool[4096], ns[64], cmd[512], slog[128], rlog[128], text[65536];
	const char *recv[] = { "recv", "--listen", "tcp:127.0.0.1:47001", "--size", "64M",
			       "--postcopy", "--recover-listen", "tcp:127.0.0.1:47002", NULL };
	/* 64 MiB rewritten at 64 MiB/s while precopy moves 32 MiB/s: the switch
	 * after the first pass finds most of it dirty, pushed at 8 MiB/s: seconds
	 * of postcopy to cut into. */
	const char *send[] = { "send", "--size", "64M", "--to", "tcp:127.0.0.1:47001",
			       "--dirty-rate", "64", "--postcopy=1",
			       "--param", "max-bandwidth=33554432",
			       "--param", "max-postcopy-bandwidth=8388608",
			       "--resume-to", "tcp:127.0.0.1:47002", "--resume-attempts", "20",
			       NULL };
	int sst, rst;
	pid_t sp, rp;

	if (!test_have_tool("cli") || !test_have_uffd("cli: postcopy recovery") ||
	    !test_have_root_tool("cli: recovery in a netns with ss -K", "netns",
				 "ip netns list >/dev/null 2>&1 && ss -h >/dev/null 2>&1"))
		return;
	ck_assert_int_lt(snprintf(tool, sizeof(tool), "%s/tools/multifd", builddir),
			 (int)sizeof(tool));
	snprintf(ns, sizeof(ns), "mfd-cli-rec-%d", (int)getpid());
	snprintf(slog, sizeof(slog), "/tmp/%s-send.log", ns);
	snprintf(rlog, sizeof(rlog), "/tmp/%s-recv.log", ns);
	snprintf(cmd, sizeof(cmd), "ip netns add %s && ip netns exec %s ip link set lo up", ns,
		 ns);
	ck_assert_int_eq(system(cmd), 0);
	rp = spawn_in_ns(ns, tool, rlog, recv);
	usleep(300 * 1000);	/* recv listening before send connects */
	sp = spawn_in_ns(ns, tool, slog, send);
	/* The source's progress lines name the state: cut once it is postcopy. */
	double end = (double)test_now_ms() / 1e3 + 90;

	for (;;) {
		read_text(slog, text, sizeof(text));
		if (strstr(text, "postcopy-active"))
			break;
		ck_assert_msg(!strstr(text, "completed") && (double)test_now_ms() / 1e3 < end,
			      "the source never was seen in postcopy:\n%s", text);
		usleep(50 * 1000);
	}
	snprintf(cmd, sizeof(cmd), "ip netns exec %s ss -K -t dst 127.0.0.1:47001 >/dev/null",
		 ns);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(waitpid(sp, &sst, 0), sp);
	ck_assert_int_eq(waitpid(rp, &rst, 0), rp);
	snprintf(cmd, sizeof(cmd), "ip netns del %s", ns);
	ck_assert_int_eq(system(cmd), 0);
	read_text(slog, text, sizeof(text));
	ck_assert_msg(WIFEXITED(sst) && WEXITSTATUS(sst) == 0, "send ended 0x%x:\n%s", sst, text);
	ck_assert_msg(strstr(text, "postcopy paused (the connection broke); resuming to "
			     "tcp:127.0.0.1:47002 (attempt 1 of 20)"), "send:\n%s", text);
	ck_assert_msg(strstr(text, "multifd send: postcopy resumed after a pause"), "send:\n%s",
		      text);
	ck_assert_msg(strstr(text, ", 1 pauses"), "send's summary:\n%s", text);
	read_text(rlog, text, sizeof(text));
	ck_assert_msg(WIFEXITED(rst) && WEXITSTATUS(rst) == 0, "recv ended 0x%x:\n%s", rst, text);
	ck_assert_msg(strstr(text, "waiting for the source to resume on tcp:127.0.0.1:47002"),
		      "recv:\n%s", text);
	unlink(slog);
	unlink(rlog);
}
END_TEST

/* Bad recovery options are usage errors, said as such. */
START_TEST(recovery_options_are_checked)
{
	static const char *const attempts[] = { "send", "--to", "tcp:127.0.0.1:1",
						"--resume-attempts", "3", NULL };
	static const char *const zero[] = { "send", "--to", "tcp:127.0.0.1:1", "--resume-to",
					    "tcp:127.0.0.1:2", "--resume-attempts", "0", NULL };

	if (!test_have_tool("cli"))
		return;
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, attempts), 2);
	ck_assert_msg(strstr(out, "--resume-attempts needs --resume-to URI"), "%s", out);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, zero), 2);
	ck_assert_msg(strstr(out, "--resume-attempts"), "%s", out);
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
	ck_assert_ptr_nonnull(strstr(out, "zero-page scan (one thread, every page of the guest)"));
	ck_assert_ptr_nonnull(strstr(out, "model (16 MiB guest"));
	ck_assert_ptr_nonnull(strstr(out, "recommendation: --channels "));
	ck_assert_msg(test_run_tool(out, sizeof(out), true, json) == 0, "tune --json failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "{\"size\":16777216,\"zero-fraction\":0.5"));
	ck_assert_ptr_nonnull(strstr(out, ",\"zero-scan-bytes-per-second\":"));
	ck_assert_ptr_nonnull(strstr(out, "\"recommendation\":{\"multifd-channels\":1,"));
	/* A guest of zero pages only: the scan, not an unbounded rate, limits it. */
	char zimg[] = "/tmp/mfd-tune-zero.XXXXXX";
	int zfd = mkstemp(zimg);

	ck_assert_int_ge(zfd, 0);
	ck_assert_int_eq(ftruncate(zfd, 16 << 20), 0);
	close(zfd);
	const char *zero[] = { "tune", "--to", uri, "--image", zimg, "--seconds", "0.1",
			       "--max-channels", "1", "-q", NULL };

	ck_assert_msg(test_run_tool(out, sizeof(out), true, zero) == 0, "tune failed:\n%s", out);
	unlink(zimg);
	ck_assert_ptr_nonnull(strstr(out, "100% zero pages"));
	ck_assert_msg(strstr(out, " zero scan ") != NULL, "no zero-scan limit:\n%s", out);
	ck_assert_msg(strstr(out, "recommendation: --channels 1 ") != NULL, "%s", out);
	ck_assert_int_eq(kill(peer, SIGTERM), 0);
	ck_assert_int_eq(waitpid(peer, &status, 0), peer);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "peer status %d", status);
	/* Nobody listens any more: a clear failure. */
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, dead), 1);
	ck_assert_ptr_nonnull(strstr(out, "the link measurement failed"));
}
END_TEST

/* A fresh directory under $TMPDIR (or /tmp) in @dir. */
static void make_tmpdir(char *dir, size_t len, const char *what)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, len, "%s/mfd-%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", what);
	ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
}

/* How many entries @dir holds besides . and .. */
static unsigned dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	unsigned n = 0;

	ck_assert_msg(d != NULL, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

START_TEST(tune_plot_draws_a_png)
{
	static const unsigned char png[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
	char uri[256], dir[4096], tmp[4200], chart[4200], nochart[4200];
	const char *args[] = { "tune", "--to", uri, "--size", "16M", "--seconds", "0.1",
			       "--max-channels", "2", "-q", "--plot", chart, NULL };
	const char *missing[] = { "tune", "--to", uri, "--size", "16M", "--seconds", "0.1",
				  "--max-channels", "1", "-q", "--plot", nochart, NULL };
	const char *path = getenv("PATH");
	char *saved_path = path ? strdup(path) : NULL;
	unsigned char head[8];
	struct stat st;
	int status;
	pid_t peer;
	FILE *f;

	if (!test_have_tool("cli"))
		return;
	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		test_skip("gnuplot", "cli: tune --plot: gnuplot is not installed (scripts/install-deps "
			  "installs gnuplot-nox)");
		return;
	}
	make_tmpdir(dir, sizeof(dir), "plot");
	snprintf(chart, sizeof(chart), "%s/tune.png", dir);
	snprintf(nochart, sizeof(nochart), "%s/none.png", dir);
	/* gnuplot's data and script go to TMPDIR: they must be gone afterwards. */
	snprintf(tmp, sizeof(tmp), "%s/tmp", dir);
	ck_assert_int_eq(mkdir(tmp, 0700), 0);
	ck_assert_int_eq(setenv("TMPDIR", tmp, 1), 0);
	peer = start_tune_peer(uri, sizeof(uri));

	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "tune --plot failed:\n%s",
		      out);
	ck_assert_ptr_nonnull(strstr(out, "recommendation: --channels "));
	f = fopen(chart, "rb");
	ck_assert_msg(f != NULL, "no chart at %s: %s\n%s", chart, strerror(errno), out);
	ck_assert_int_eq(fread(head, 1, sizeof(head), f), sizeof(head));
	fclose(f);
	ck_assert_msg(memcmp(head, png, sizeof(png)) == 0, "%s is not a PNG", chart);
	ck_assert_int_eq(stat(chart, &st), 0);
	ck_assert_int_gt(st.st_size, 1000);
	/* Nothing else left: not the temporary chart beside it, not gnuplot's files. */
	ck_assert_uint_eq(dir_entries(dir), 2);
	ck_assert_uint_eq(dir_entries(tmp), 0);

	/* Without gnuplot: the table still, then a clear failure, and no file. */
	ck_assert_int_eq(setenv("PATH", "/nonexistent", 1), 0);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, missing), 1);
	if (saved_path)
		setenv("PATH", saved_path, 1);
	free(saved_path);
	ck_assert_ptr_nonnull(strstr(out, "recommendation: --channels "));
	ck_assert_msg(strstr(out, "gnuplot is not installed") != NULL, "tune said:\n%s", out);
	ck_assert_int_eq(access(nochart, F_OK), -1);
	ck_assert_uint_eq(dir_entries(dir), 2);
	ck_assert_uint_eq(dir_entries(tmp), 0);

	ck_assert_int_eq(kill(peer, SIGTERM), 0);
	ck_assert_int_eq(waitpid(peer, &status, 0), peer);
	unlink(chart);
	rmdir(tmp);
	rmdir(dir);
}
END_TEST

START_TEST(tune_plot_refuses_a_path_it_cannot_write)
{
	char dir[4096], chart[4200];
	/* Nothing listens on port 1: the path must fail first, before any measurement. */
	const char *args[] = { "tune", "--to", "tcp:127.0.0.1:1", "--seconds", "0.1", "-q",
			       "--plot", chart, NULL };
	const char *listen[] = { "tune", "--listen", "tcp:127.0.0.1:0", "--plot", "x.png", NULL };

	if (!test_have_tool("cli"))
		return;
	make_tmpdir(dir, sizeof(dir), "plot");
	snprintf(chart, sizeof(chart), "%s/no-such-dir/tune.png", dir);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, args), 1);
	ck_assert_msg(strstr(out, "cannot create the chart there: No such file or directory"),
		      "tune said:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, chart));
	ck_assert_ptr_null(strstr(out, "the link measurement failed"));
	/* A directory is no chart either. */
	snprintf(chart, sizeof(chart), "%s", dir);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, args), 1);
	ck_assert_msg(strstr(out, "exists and is not a regular file"), "tune said:\n%s", out);
	ck_assert_uint_eq(dir_entries(dir), 0);
	rmdir(dir);
	/* The peer has nothing to draw. */
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, listen), 2);
	ck_assert_ptr_nonnull(strstr(out, "--plot draws what --to measures"));
}
END_TEST

Suite *suite_cli(void)
{
	Suite *s = suite_create("cli");
	TCase *tc = tcase_create("demo");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, demo_precopy_verifies);
	tcase_add_test(tc, demo_postcopy_verifies);
	tcase_add_test(tc, send_recv_recover_a_cut_postcopy);
	tcase_add_test(tc, recovery_options_are_checked);
	tcase_add_test(tc, demo_not_converging_switches_to_postcopy);
	tcase_add_test(tc, demo_with_zero_copy_send);
	tcase_add_test(tc, recv_prealloc_and_send_load_keep_the_bytes);
	tcase_add_test(tc, recv_survives_port_probes);
	tcase_add_test(tc, bad_options_are_usage_errors);
	tcase_add_test(tc, tune_recommends_channels_and_codec);
	tcase_add_test(tc, tune_plot_draws_a_png);
	tcase_add_test(tc, tune_plot_refuses_a_path_it_cannot_write);
	suite_add_tcase(s, tc);
	return s;
}
