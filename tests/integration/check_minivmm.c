/* SPDX-License-Identifier: MIT */
/*
 * examples/minivmm end to end: a real KVM guest (our boot sector, in long
 * mode, dirtying its RAM from ring 3) live-migrated between two minivmm
 * processes over loopback, driven through their control sockets.  After
 * each migration the destination guest must keep running (its lap counter
 * grows) and, once stopped, its RAM must pass the a-b check: every page of
 * the working set holds v+1 or v, in one run each, v being the guest's own
 * lap count.
 *
 * Skipped with a message where /dev/kvm cannot be opened or minivmm was
 * not built (no <linux/kvm.h>).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

#define RAM_MIB "256"

static char vmm_bin[PATH_MAX];

static bool have_minivmm(void)
{
	const char *bd = getenv("MFD_BUILDDIR");
	int fd;

	snprintf(vmm_bin, sizeof(vmm_bin), "%s/examples/minivmm/minivmm", bd ? bd : ".");
	if (access(vmm_bin, X_OK) != 0) {
		test_skip("kvm", "minivmm: %s not built (no <linux/kvm.h>?)", vmm_bin);
		return false;
	}
	if (test_cap_disabled("kvm")) {
		test_skip("kvm", "minivmm: /dev/kvm disabled by MFD_TEST_DISABLE");
		return false;
	}
	fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		test_skip("kvm", "minivmm: /dev/kvm: %s", strerror(errno));
		return false;
	}
	close(fd);
	return true;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000l };

	nanosleep(&ts, NULL);
}

struct vmm_proc {
	pid_t pid;
	char sock[PATH_MAX];
	char log[PATH_MAX];
};

/* Starts minivmm with @args (NULL-terminated), its output in DIR/NAME.log. */
static void vmm_spawn(struct vmm_proc *p, const char *dir, const char *name, const char **args)
{
	const char *argv[48];
	char serial[PATH_MAX];
	int n = 0;

	snprintf(p->sock, sizeof(p->sock), "%s/%s.sock", dir, name);
	snprintf(p->log, sizeof(p->log), "%s/%s.log", dir, name);
	snprintf(serial, sizeof(serial), "%s/%s.serial", dir, name);
	argv[n++] = vmm_bin;
	for (; *args && n < 40; args++)
		argv[n++] = *args;
	argv[n++] = "--serial";
	argv[n++] = serial;
	argv[n++] = "--control";
	argv[n++] = p->sock;
	argv[n] = NULL;
	unlink(p->sock);
	p->pid = fork();
	ck_assert_int_ge(p->pid, 0);
	if (p->pid == 0) {
		int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(vmm_bin, (char **)argv);
		_exit(127);
	}
	/* Its control socket answers once it is up. */
	for (double end = now_s() + 20; access(p->sock, F_OK) != 0;) {
		int st;

		ck_assert_msg(waitpid(p->pid, &st, WNOHANG) == 0, "minivmm %s exited early (see %s)",
			      name, p->log);
		ck_assert_msg(now_s() < end, "minivmm %s: no control socket after 20 s", name);
		sleep_ms(20);
	}
}

/* One command; the reply line (without newline) in @out. */
static void ctl(const struct vmm_proc *p, char *out, size_t len, const char *fmt, ...)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char cmd[512];
	size_t got = 0;
	va_list ap;
	int fd, n;

	va_start(ap, fmt);
	n = vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
	va_end(ap);
	ck_assert(n > 0 && (size_t)n < sizeof(cmd) - 1);
	cmd[n++] = '\n';
	ck_assert(strlen(p->sock) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, p->sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect %s: %s",
		      p->sock, strerror(errno));
	ck_assert_int_eq(send(fd, cmd, (size_t)n, MSG_NOSIGNAL), n);
	for (;;) {
		ssize_t r = recv(fd, out + got, len - 1 - got, 0);

		if (r <= 0 || (got += (size_t)r) == len - 1)
			break;
	}
	close(fd);
	out[got] = '\0';
	while (got && out[got - 1] == '\n')
		out[--got] = '\0';
}

static void ctl_ok(const struct vmm_proc *p, const char *fmt, const char *arg)
{
	char out[4096];

	ctl(p, out, sizeof(out), fmt, arg);
	ck_assert_msg(strcmp(out, "ok") == 0, "'%s %s': %s", fmt, arg ? arg : "", out);
}

static uint64_t laps(const struct vmm_proc *p)
{
	char out[512];
	unsigned long long v;

	ctl(p, out, sizeof(out), "laps");
	ck_assert_msg(sscanf(out, "laps=%llu", &v) == 1, "laps: %s", out);
	return v;
}

/* The guest's lap counter passes @min within @secs. */
static uint64_t wait_laps(const struct vmm_proc *p, uint64_t min, double secs)
{
	double end = now_s() + secs;
	uint64_t v;

	while ((v = laps(p)) < min) {
		ck_assert_msg(now_s() < end, "the guest made %" PRIu64 " laps, not %" PRIu64
			      " in %.0f s", v, min, secs);
		sleep_ms(20);
	}
	return v;
}

static uint64_t json_u64(const char *json, const char *key)
{
	char pat[96];
	const char *at;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	at = strstr(json, pat);
	ck_assert_msg(at, "no %s in %s", key, json);
	return strtoull(at + strlen(pat), NULL, 10);
}

static int vmm_wait_exit(struct vmm_proc *p, double secs)
{
	double end = now_s() + secs;
	int st;

	for (;;) {
		pid_t r = waitpid(p->pid, &st, WNOHANG);

		if (r == p->pid)
			break;
		if (now_s() > end) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &st, 0);
			p->pid = 0;
			ck_abort_msg("minivmm did not exit within %.0f s (see %s)", secs, p->log);
		}
		sleep_ms(20);
	}
	p->pid = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void vmm_quit(struct vmm_proc *p)
{
	ctl_ok(p, "quit", NULL);
	ck_assert_int_eq(vmm_wait_exit(p, 20), 0);
}

static void make_dir(char *dir, size_t len)
{
	snprintf(dir, len, "/tmp/mfd-minivmm-XXXXXX");
	ck_assert(mkdtemp(dir) != NULL);
}

static void remove_dir(const char *dir)
{
	char cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Wait until `ctl state` on @p says @want (or fail after @secs). */
static void wait_ctl_state(const struct vmm_proc *p, const char *want, double secs)
{
	char out[512];

	for (double end = now_s() + secs;;) {
		ctl(p, out, sizeof(out), "state");
		if (strncmp(out, want, strlen(want)) == 0)
			return;
		ck_assert_msg(strstr(out, "completed") == NULL || strstr(want, "completed"),
			      "%s: completed before '%s' was seen", p->log, want);
		ck_assert_msg(now_s() < end, "%s: '%s', waited %.0f s for '%s'", p->log, out, secs,
			      want);
		sleep_ms(5);
	}
}

/* The destination's guest runs, and stopped, passes the a-b check. */
static void assert_dest_guest(const struct vmm_proc *dst, uint64_t src_laps)
{
	char out[512];
	uint64_t l0;

	/* The source completes on the destination's result; the destination's
	 * own state follows a moment later. */
	wait_ctl_state(dst, "migration=completed vcpu=running", 20);
	l0 = laps(dst);
	ck_assert_msg(l0 >= src_laps, "dest guest at lap %" PRIu64 ", the source had %" PRIu64,
		      l0, src_laps);
	wait_laps(dst, l0 + 2, 30);
	ctl_ok(dst, "stop", NULL);
	ctl(dst, out, sizeof(out), "check");
	ck_assert_msg(strncmp(out, "ok ", 3) == 0, "a-b check on the destination: %s", out);
	printf("minivmm: destination %s\n", out);
}

/* Precopy with @channels and @codec; @dirty: the --dirty-log mode (NULL:
 * the default), @memfd: guest RAM in memfds. */
static void precopy_case_as(const char *channels, const char *codec, const char *dirty,
			    bool memfd)
{
	char dir[64], out[8192], chp[64], cop[64], uri[256];
	struct vmm_proc src, dst;
	uint64_t src_laps;

	if (!have_minivmm())
		return;
	make_dir(dir, sizeof(dir));
	snprintf(chp, sizeof(chp), "multifd-channels=%s", channels);
	snprintf(cop, sizeof(cop), "multifd-compression=%s", codec);
	const char *sargs[16] = { "run", "--ram", RAM_MIB, "--param", chp, "--param", cop,
				  "--param", "auto-converge=on", NULL };
	const char *dargs[16] = { "incoming", "tcp:127.0.0.1:0", "--ram", RAM_MIB, "--param",
				  chp, "--param", cop, NULL };
	unsigned ns = 9, nd = 8;

	if (dirty) {
		sargs[ns++] = "--dirty-log";
		sargs[ns++] = dirty;
	}
	if (memfd) {
		sargs[ns++] = "--memfd";
		dargs[nd++] = "--memfd";
	}

	vmm_spawn(&src, dir, "src", sargs);
	wait_laps(&src, 2, 60);
	vmm_spawn(&dst, dir, "dst", dargs);
	ctl(&dst, uri, sizeof(uri), "uri");
	ck_assert_msg(strncmp(uri, "tcp:", 4) == 0, "dest uri: %s", uri);

	ctl_ok(&src, "migrate %s", uri);
	ctl(&src, out, sizeof(out), "wait");
	ck_assert_msg(strstr(out, "\"status\": \"completed\""), "migration: %s", out);
	printf("minivmm: %s channel(s), %s: total %" PRIu64 " ms, downtime %" PRIu64 " ms, %"
	       PRIu64 " bytes, %" PRIu64 " passes\n", channels, codec,
	       json_u64(out, "total-time"), json_u64(out, "downtime"),
	       json_u64(out, "transferred"), json_u64(out, "dirty-sync-count"));
	ck_assert_uint_ge(json_u64(out, "dirty-sync-count"), 1);
	if (dirty || memfd) {
		char dl[256], want[64];

		ctl(&src, dl, sizeof(dl), "dirtylog");
		printf("minivmm: source %s\n", dl);
		snprintf(want, sizeof(want), "mode=%s ", dirty ? dirty : "classic");
		ck_assert_msg(strncmp(dl, want, strlen(want)) == 0, "dirtylog: %s", dl);
		/* Manual: the first pass re-protected RAM range by range. */
		if (dirty && strcmp(dirty, "manual") == 0)
			ck_assert_msg(!strstr(dl, "clears=0 "), "no KVM_CLEAR_DIRTY_LOG: %s", dl);
		else
			ck_assert_msg(strstr(dl, "clears=0 "), "%s mode cleared: %s", dirty, dl);
		/* Ring: the guest's writes came through the ring. */
		if (dirty && strcmp(dirty, "ring") == 0)
			ck_assert_msg(!strstr(dl, "reaped=0 "), "nothing reaped from the ring: %s",
				      dl);
		else
			ck_assert_msg(strstr(dl, "reaped=0 "), "%s mode reaped a ring: %s", dirty, dl);
		ck_assert_msg(strstr(dl, memfd ? "ram=memfd" : "ram=anonymous"), "%s", dl);
	}

	/* The source guest stays stopped: it lives on the destination now. */
	ctl(&src, out, sizeof(out), "state");
	ck_assert_msg(strcmp(out, "migration=completed vcpu=paused") == 0, "source: %s", out);
	src_laps = laps(&src);
	sleep_ms(100);
	ck_assert_uint_eq(laps(&src), src_laps);
	ctl(&src, out, sizeof(out), "cont");
	ck_assert_msg(strncmp(out, "error:", 6) == 0, "cont on a migrated-away source: %s", out);

	assert_dest_guest(&dst, src_laps);
	vmm_quit(&src);
	vmm_quit(&dst);
	remove_dir(dir);
}

static void precopy_case(const char *channels, const char *codec)
{
	precopy_case_as(channels, codec, NULL, false);
}

START_TEST(precopy_1ch_none) { precopy_case("1", "none"); }
END_TEST
START_TEST(precopy_4ch_none) { precopy_case("4", "none"); }
END_TEST
START_TEST(precopy_1ch_zstd) { precopy_case("1", "zstd"); }
END_TEST
START_TEST(precopy_4ch_zstd) { precopy_case("4", "zstd"); }
END_TEST
/* KVM's manual protection with fd-backed RAM, and the classic log, by name. */
START_TEST(precopy_manual_dirty_log_memfd) { precopy_case_as("2", "none", "manual", true); }
END_TEST
START_TEST(precopy_classic_dirty_log) { precopy_case_as("2", "none", "classic", false); }
END_TEST
START_TEST(precopy_dirty_ring) { precopy_case_as("2", "none", "ring", false); }
END_TEST

/*
 * Postcopy recovery as an operator drives it: the network drops the
 * connections during the postcopy push (ss -K on the destination's port);
 * both sides pause with the guest alive on the destination; `recover URI`
 * on the destination and `resume URI` on the source carry postcopy to its
 * end, and the destination's guest passes the a-b check.
 */
START_TEST(postcopy_cut_then_recover_by_ctl)
{
	char dir[64], out[8192], uri[256], cmd[512];
	struct vmm_proc src, dst;

	if (!have_minivmm())
		return;
	if (!test_have_uffd("minivmm: postcopy recovery") ||
	    !test_have_root_tool("minivmm: ss -K", "iproute2", "ss -h >/dev/null 2>&1"))
		return;
	make_dir(dir, sizeof(dir));
	/* 128 MiB that the guest keeps rewriting, pushed at 16 MiB/s: the push
	 * lasts seconds, time enough to cut it. */
	const char *sargs[] = { "run", "--ram", "128", "--param", "postcopy-ram=on", "--param",
				"multifd-channels=2", "--param", "max-bandwidth=67108864",
				"--param", "max-postcopy-bandwidth=16777216", NULL };
	const char *dargs[] = { "incoming", "tcp:127.0.0.1:0", "--ram", "128", "--param",
				"postcopy-ram=on", "--param", "multifd-channels=2", NULL };

	vmm_spawn(&src, dir, "src", sargs);
	wait_laps(&src, 2, 60);
	vmm_spawn(&dst, dir, "dst", dargs);
	ctl(&dst, uri, sizeof(uri), "uri");
	ctl_ok(&src, "migrate %s", uri);
	sleep_ms(300);
	ctl_ok(&src, "postcopy", NULL);
	wait_ctl_state(&dst, "migration=postcopy-active", 30);
	/* The cut, from outside: every socket to the destination's port. */
	snprintf(cmd, sizeof(cmd), "ss -K -t dst 127.0.0.1:%s >/dev/null 2>&1",
		 strrchr(uri, ':') + 1);
	ck_assert_int_eq(system(cmd), 0);
	wait_ctl_state(&src, "migration=postcopy-paused", 30);
	wait_ctl_state(&dst, "migration=postcopy-paused", 30);
	/* The wrong side's command says whose it is. */
	ctl(&src, out, sizeof(out), "recover tcp:127.0.0.1:0");
	ck_assert_msg(strstr(out, "the destination's command"), "recover on the source: %s", out);
	ctl_ok(&dst, "recover %s", "tcp:127.0.0.1:0");
	ctl(&dst, uri, sizeof(uri), "uri");
	ck_assert_msg(strncmp(uri, "tcp:", 4) == 0, "recover uri: %s", uri);
	ctl_ok(&src, "resume %s", uri);
	ctl_ok(&src, "set max-postcopy-bandwidth %s", "0");
	ctl(&src, out, sizeof(out), "wait");
	ck_assert_msg(strstr(out, "\"status\": \"completed\""), "migration: %s", out);
	ck_assert_uint_eq(json_u64(out, "pauses"), 1);
	printf("minivmm: postcopy cut by ss -K, recovered by ctl: %" PRIu64 " ms in all\n",
	       json_u64(out, "total-time"));
	assert_dest_guest(&dst, 0);
	vmm_quit(&src);
	vmm_quit(&dst);
	remove_dir(dir);
}
END_TEST

/* Two files hold the same bytes (a dump's holes read as zeros). */
static void assert_files_equal(const char *a, const char *b)
{
	FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
	static char ba[1 << 16], bb[1 << 16];
	uint64_t off = 0;

	ck_assert_msg(fa && fb, "cannot open %s or %s", a, b);
	for (;;) {
		size_t na = fread(ba, 1, sizeof(ba), fa), nb = fread(bb, 1, sizeof(bb), fb);

		ck_assert_msg(na == nb, "%s and %s differ in length (at %" PRIu64 ")", a, b, off);
		if (na == 0)
			break;
		if (memcmp(ba, bb, na) != 0) {
			size_t i = 0;

			while (ba[i] == bb[i])
				i++;
			ck_abort_msg("%s and %s differ at guest-physical 0x%" PRIx64, a, b, off + i);
		}
		off += na;
	}
	ck_assert_uint_gt(off, 0);
	fclose(fa);
	fclose(fb);
}

/*
 * Checked from outside: the destination arrives paused (--paused, QEMU's -S),
 * and its guest-physical memory, dumped as QEMU's pmemsave does (ctl dump),
 * is byte for byte the source's at completion; then `cont` runs it on.  With
 * KVM's manual-protect log and memfd RAM on both sides.
 */
START_TEST(dump_equals_the_source)
{
	char dir[64], out[8192], uri[256], a[128], b[128];
	struct vmm_proc src, dst;

	if (!have_minivmm())
		return;
	make_dir(dir, sizeof(dir));
	const char *sargs[] = { "run", "--ram", RAM_MIB, "--memfd", "--dirty-log", "manual",
				"--param", "multifd-channels=2", NULL };
	const char *dargs[] = { "incoming", "tcp:127.0.0.1:0", "--ram", RAM_MIB, "--memfd",
				"--paused", "--param", "multifd-channels=2", NULL };

	vmm_spawn(&src, dir, "src", sargs);
	wait_laps(&src, 2, 60);
	vmm_spawn(&dst, dir, "dst", dargs);
	ctl(&dst, uri, sizeof(uri), "uri");
	ctl_ok(&src, "migrate %s", uri);
	ctl(&src, out, sizeof(out), "wait");
	ck_assert_msg(strstr(out, "\"status\": \"completed\""), "migration: %s", out);
	wait_ctl_state(&dst, "migration=completed vcpu=paused", 20);
	snprintf(a, sizeof(a), "%s/src.mem", dir);
	snprintf(b, sizeof(b), "%s/dst.mem", dir);
	ctl(&src, out, sizeof(out), "dump %s", a);
	ck_assert_msg(strncmp(out, "ok ", 3) == 0, "src dump: %s", out);
	ctl(&dst, out, sizeof(out), "dump %s", b);
	ck_assert_msg(strncmp(out, "ok ", 3) == 0, "dst dump: %s", out);
	assert_files_equal(a, b);
	/* Paused as it arrived: the lap counter has not moved; cont runs it. */
	uint64_t l0 = laps(&dst);

	ck_assert_uint_eq(laps(&src), l0);
	ctl(&dst, out, sizeof(out), "cont");
	ck_assert_msg(strcmp(out, "ok") == 0, "cont: %s", out);
	wait_laps(&dst, l0 + 2, 30);
	ctl_ok(&dst, "stop", NULL);
	ctl(&dst, out, sizeof(out), "check");
	ck_assert_msg(strncmp(out, "ok ", 3) == 0, "a-b check on the destination: %s", out);
	printf("minivmm: dumps of source and paused destination equal; then %s\n", out);
	vmm_quit(&src);
	vmm_quit(&dst);
	remove_dir(dir);
}
END_TEST

/* Postcopy: the destination guest runs before its RAM has arrived, and
 * its faults on missing pages are served by the library. */
START_TEST(postcopy)
{
	char dir[64], out[8192], uri[256];
	struct vmm_proc src, dst;
	uint64_t faults;

	if (!have_minivmm())
		return;
	make_dir(dir, sizeof(dir));
	/* 256 MiB at 64 MiB/s: precopy cannot finish before the switch. */
	const char *sargs[] = { "run", "--ram", RAM_MIB, "--param", "postcopy-ram=on", "--param",
				"multifd-channels=2", "--param", "max-bandwidth=67108864",
				"--param", "max-postcopy-bandwidth=67108864", NULL };
	const char *dargs[] = { "incoming", "tcp:127.0.0.1:0", "--ram", RAM_MIB, "--param",
				"postcopy-ram=on", "--param", "multifd-channels=2", NULL };

	vmm_spawn(&src, dir, "src", sargs);
	wait_laps(&src, 2, 60);
	vmm_spawn(&dst, dir, "dst", dargs);
	ctl(&dst, uri, sizeof(uri), "uri");
	ctl_ok(&src, "migrate %s", uri);
	sleep_ms(300);
	ctl_ok(&src, "postcopy", NULL);
	/* The guest runs on the destination while pages still arrive. */
	for (double end = now_s() + 30;;) {
		ctl(&dst, out, sizeof(out), "state");
		if (strcmp(out, "migration=postcopy-active vcpu=running") == 0)
			break;
		ck_assert_msg(strstr(out, "completed") == NULL,
			      "postcopy completed before the destination was seen running in "
			      "it: %s", out);
		ck_assert_msg(now_s() < end, "destination: %s", out);
		sleep_ms(5);
	}
	ctl(&src, out, sizeof(out), "wait");
	ck_assert_msg(strstr(out, "\"status\": \"completed\""), "migration: %s", out);
	ck_assert_uint_gt(json_u64(out, "time-ms"), 0);
	ctl(&dst, out, sizeof(out), "wait");
	ck_assert_msg(strstr(out, "\"status\": \"completed\""), "destination: %s", out);
	faults = json_u64(out, "faults");
	printf("minivmm: postcopy: %" PRIu64 " guest faults served, median %" PRIu64 " us\n",
	       faults, json_u64(out, "fault-us-median"));
	ck_assert_msg(faults > 0, "the destination guest never waited for a page: %s", out);
	assert_dest_guest(&dst, 0);
	vmm_quit(&src);
	vmm_quit(&dst);
	remove_dir(dir);
}
END_TEST

/* Cancel mid-migration: the source guest keeps running; a retry succeeds. */
START_TEST(cancel_and_retry)
{
	char dir[64], out[8192], uri[256];
	struct vmm_proc src, dst, dst2;
	uint64_t l;

	if (!have_minivmm())
		return;
	make_dir(dir, sizeof(dir));
	const char *sargs[] = { "run", "--ram", RAM_MIB, "--param", "max-bandwidth=16777216",
				NULL };
	const char *dargs[] = { "incoming", "tcp:127.0.0.1:0", "--ram", RAM_MIB, NULL };

	vmm_spawn(&src, dir, "src", sargs);
	wait_laps(&src, 2, 60);
	vmm_spawn(&dst, dir, "dst", dargs);
	ctl(&dst, uri, sizeof(uri), "uri");
	ctl_ok(&src, "migrate %s", uri);
	sleep_ms(500);
	ctl(&src, out, sizeof(out), "state");
	ck_assert_msg(strcmp(out, "migration=active vcpu=running") == 0, "source: %s", out);
	ctl_ok(&src, "cancel", NULL);
	ctl(&src, out, sizeof(out), "wait");
	ck_assert_msg(strncmp(out, "error:", 6) == 0 && strstr(out, "cancel"), "wait: %s", out);
	ctl(&src, out, sizeof(out), "state");
	ck_assert_msg(strcmp(out, "migration=cancelled vcpu=running") == 0, "source: %s", out);
	l = laps(&src);
	wait_laps(&src, l + 2, 30);
	/* The destination gives up: its incoming migration failed. */
	ck_assert_int_eq(vmm_wait_exit(&dst, 30), 1);

	vmm_spawn(&dst2, dir, "dst2", dargs);
	ctl(&dst2, uri, sizeof(uri), "uri");
	ctl_ok(&src, "set max-bandwidth %s", "0");
	ctl_ok(&src, "migrate %s", uri);
	ctl(&src, out, sizeof(out), "wait");
	ck_assert_msg(strstr(out, "\"status\": \"completed\""), "retry: %s", out);
	assert_dest_guest(&dst2, l);
	vmm_quit(&src);
	vmm_quit(&dst2);
	remove_dir(dir);
}
END_TEST

/* Bad input to the VMM's command line and control socket gets a message. */
START_TEST(bad_input)
{
	char dir[64], out[1024];
	struct vmm_proc src;
	char cmd[PATH_MAX + 128];
	FILE *f;

	if (!have_minivmm())
		return;
	make_dir(dir, sizeof(dir));
	snprintf(cmd, sizeof(cmd), "%s run --ram 32 2>&1", vmm_bin);
	f = popen(cmd, "r");
	ck_assert(f);
	size_t n = fread(out, 1, sizeof(out) - 1, f);

	out[n] = '\0';
	ck_assert_int_ne(pclose(f), 0);
	ck_assert_msg(strstr(out, "outside 64..8192"), "--ram 32: %s", out);

	const char *sargs[] = { "run", "--ram", "64", NULL };

	vmm_spawn(&src, dir, "src", sargs);
	ctl(&src, out, sizeof(out), "frobnicate");
	ck_assert_msg(strncmp(out, "error: unknown command", 22) == 0, "%s", out);
	ctl(&src, out, sizeof(out), "check");
	ck_assert_msg(strncmp(out, "fail: stop the guest", 20) == 0, "%s", out);
	ctl(&src, out, sizeof(out), "set multifd-channels 0");
	ck_assert_msg(strncmp(out, "error:", 6) == 0, "%s", out);
	ctl(&src, out, sizeof(out), "migrate tcp:127.0.0.1:1");
	if (strcmp(out, "ok") == 0) {	/* fails in the migration thread */
		ctl(&src, out, sizeof(out), "wait");
		ck_assert_msg(strncmp(out, "error:", 6) == 0, "%s", out);
	}
	ctl(&src, out, sizeof(out), "state");
	ck_assert_msg(strstr(out, "vcpu=running"), "after a failed migration: %s", out);
	vmm_quit(&src);
	remove_dir(dir);
}
END_TEST

Suite *suite_minivmm(void)
{
	Suite *s = suite_create("minivmm");
	TCase *tc = tcase_create("kvm");

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, bad_input);
	tcase_add_test(tc, precopy_1ch_none);
	tcase_add_test(tc, precopy_4ch_none);
	tcase_add_test(tc, precopy_1ch_zstd);
	tcase_add_test(tc, precopy_4ch_zstd);
	tcase_add_test(tc, precopy_manual_dirty_log_memfd);
	tcase_add_test(tc, precopy_classic_dirty_log);
	tcase_add_test(tc, precopy_dirty_ring);
	tcase_add_test(tc, dump_equals_the_source);
	tcase_add_test(tc, postcopy_cut_then_recover_by_ctl);
	tcase_add_test(tc, postcopy);
	tcase_add_test(tc, cancel_and_retry);
	suite_add_tcase(s, tc);
	return s;
}
