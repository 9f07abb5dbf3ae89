/* SPDX-License-Identifier: MIT */
/*
 * Fault injection (reliability-anchors.md §4): a matrix of faults on one
 * channel (main, multifd i, preempt) of one side in one phase (handshake,
 * setup, iteration, sync, switchover, postcopy), of each kind (fail, short
 * I/O, stall, cut after N bytes), precopy and postcopy, plain and TLS-PSK,
 * through the in-process wrapper of tests/lib/fault.h.  Each scenario checks
 * the outcome the fault calls for:
 *   fail   the source ends failed with one error naming the channel and the
 *          phase; its VM runs again (vm_start after every vm_stop) and its
 *          memory and vCPU state are as the guest left them; the destination
 *          never started the guest; then a retry over fresh connections
 *          completes and passes the a-b check;
 *   ok     short I/O and short stalls are not failures: it completes;
 *   pause  a network fault after the postcopy switch pauses both sides; a
 *          recovery over fresh connections completes; the source VM never
 *          runs again.
 * Always: no fd and no thread outlives the scenario.
 *
 * Then faults from outside the process (root and iproute2 only, skipped
 * with a message otherwise): `ss -K` on live connections, a `tc tbf` rate
 * limit inside a network namespace of our own, and a destination process
 * (`multifd recv`) killed with SIGKILL.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/fault.h"
#include "tests/lib/certs.h"
#include "tests/lib/testlib.h"

#define PS 4096u
#define GUEST_MIB 8

/* ---- a small guest ------------------------------------------------------------------ */

struct fguest {
	mfd_migration *m;
	uint8_t *ram;
	size_t size;
	bool source;
	pthread_t writer, reader;
	atomic_bool run, stop, paused, reader_on;
	uint8_t *snapshot;		/* source: RAM when the VM stopped */
	uint64_t regs[2];
	atomic_int vm_stops, vm_starts;
};

static const uint64_t REG0 = 0x0123456789abcdefull, REG1 = 0xfedcba9876543210ull;

/* The a-b writer: byte 0 of each page in turn, the dirty tracker told. */
static void *writer_thread(void *arg)
{
	struct fguest *g = arg;
	size_t pages = g->size / PS;

	while (atomic_load(&g->run)) {
		for (size_t p = 0; p < pages && atomic_load(&g->run); p++) {
			while (atomic_load(&g->stop)) {
				atomic_store(&g->paused, true);
				if (!atomic_load(&g->run))
					return NULL;
				usleep(200);
			}
			atomic_store(&g->paused, false);
			g->ram[p * PS]++;
			mfd_ram_mark_dirty(g->m, g->ram + p * PS, 1);
			if (p % 64 == 0)
				usleep(300);
		}
	}
	return NULL;
}

/* Destination in postcopy: a vCPU touching pages, so requests flow. */
static void *reader_thread(void *arg)
{
	struct fguest *g = arg;
	unsigned seed = 12345;
	size_t pages = g->size / PS;
	volatile uint8_t sink = 0;

	while (atomic_load(&g->reader_on)) {
		sink ^= g->ram[((size_t)rand_r(&seed) % pages) * PS];
		usleep(500);
	}
	(void)sink;
	return NULL;
}

static int vm_stop(void *opaque, mfd_error **errp)
{
	struct fguest *g = opaque;

	(void)errp;
	atomic_store(&g->stop, true);
	while (atomic_load(&g->run) && !atomic_load(&g->paused))
		usleep(100);
	atomic_fetch_add(&g->vm_stops, 1);
	if (g->snapshot)
		memcpy(g->snapshot, g->ram, g->size);
	return 0;
}

static int vm_start(void *opaque, mfd_error **errp)
{
	struct fguest *g = opaque;

	(void)errp;
	atomic_fetch_add(&g->vm_starts, 1);
	if (!g->source && !atomic_load(&g->reader_on)) {
		atomic_store(&g->reader_on, true);
		if (pthread_create(&g->reader, NULL, reader_thread, g) != 0)
			atomic_store(&g->reader_on, false);
	}
	atomic_store(&g->stop, false);
	return 0;
}

static int regs_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct fguest *g = opaque;

	(void)errp;
	mfd_stream_put_be64(s, g->regs[0]);
	return mfd_stream_put_be64(s, g->regs[1]);
}

static int regs_load(mfd_stream *s, void *opaque, uint32_t v, mfd_error **errp)
{
	struct fguest *g = opaque;
	int r;

	(void)v;
	(void)errp;
	if ((r = mfd_stream_get_be64(s, &g->regs[0])) < 0)
		return r;
	return mfd_stream_get_be64(s, &g->regs[1]);
}

static const mfd_save_handlers regs_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = regs_save,
	.load_state = regs_load,
};

/* Postcopy scenarios switch themselves: precopy alone never ends. */
static int never_switch(void *opaque, const struct mfd_policy_info *info)
{
	(void)opaque;
	(void)info;
	return 0;
}

static const mfd_vmm_hooks hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = vm_stop,
	.vm_start = vm_start,
};

/* Postcopy: the vCPU's last burst before it stops dirties every other page,
 * so the push after the switch always has enough bytes for a fault placed
 * "N bytes into postcopy" to fire (byte 1: the a-b counter is byte 0). */
static int vm_stop_pc(void *opaque, mfd_error **errp)
{
	struct fguest *g = opaque;
	int r = vm_stop(opaque, errp);

	for (size_t p = 0; p < g->size / PS; p += 2) {
		g->ram[p * PS + 1]++;
		mfd_ram_mark_dirty(g->m, g->ram + p * PS, 1);
	}
	if (g->snapshot)
		memcpy(g->snapshot, g->ram, g->size);
	return r;
}

static const mfd_vmm_hooks pc_hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = vm_stop_pc,
	.vm_start = vm_start,
	.switchover_policy = never_switch,
};

static void set(mfd_migration *m, const char *name, const char *value)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_set_param(m, name, value, &err), err);
}

struct setup {
	unsigned channels;
	bool postcopy, preempt;
	const char *psk_file;		/* TLS-PSK when set */
	unsigned timeout_ms;		/* channel-timeout-ms */
	bool zero_copy;			/* zero-copy-send on the source */
};

static void guest_init(struct fguest *g, size_t mib, bool source, const struct setup *su)
{
	mfd_error *err = NULL;
	char v[16];

	memset(g, 0, sizeof(*g));
	g->size = mib << 20;
	g->source = source;
	g->ram = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(g->ram, MAP_FAILED);
	ck_assert_ok(mfd_migration_new(&g->m, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->m, "pc.ram", g->ram, g->size, PS, &err), err);
	ck_assert_ok(mfd_register_live(g->m, "cpu", 0, 1, &regs_ops, g, &err), err);
	ck_assert_ok(mfd_migration_set_hooks(g->m, su->postcopy ? &pc_hooks : &hooks, g, &err),
		     err);
	snprintf(v, sizeof(v), "%u", su->channels);
	set(g->m, "multifd-channels", v);
	snprintf(v, sizeof(v), "%u", su->timeout_ms);
	set(g->m, "channel-timeout-ms", v);
	/* Sanitizer builds are slow; the policy must still converge. */
	set(g->m, "downtime-limit", "1000");
	if (su->postcopy) {
		set(g->m, "postcopy-ram", "on");
		set(g->m, "postcopy-preempt", su->preempt ? "on" : "off");
	}
	if (su->psk_file)
		set(g->m, "tls-psk-file", su->psk_file);
	if (su->zero_copy && source)
		set(g->m, "zero-copy-send", "on");
	if (source) {
		for (size_t p = 0; p < g->size / PS; p++) {
			if (p % 2)	/* unique to the page: a wrong offset shows */
				test_fill_page(g->ram + p * PS, PS, 0, p, 0);
			g->ram[p * PS] = 0;	/* the a-b counters start equal */
		}
		g->regs[0] = REG0;
		g->regs[1] = REG1;
		g->snapshot = malloc(g->size);
		ck_assert_ptr_nonnull(g->snapshot);
		atomic_store(&g->run, true);
		ck_assert_int_eq(pthread_create(&g->writer, NULL, writer_thread, g), 0);
	}
}

static void guest_free(struct fguest *g)
{
	if (atomic_load(&g->reader_on)) {
		atomic_store(&g->reader_on, false);
		pthread_join(g->reader, NULL);
	}
	if (g->source && atomic_load(&g->run)) {
		atomic_store(&g->run, false);
		pthread_join(g->writer, NULL);
	}
	mfd_migration_free(g->m);
	munmap(g->ram, g->size);
	free(g->snapshot);
}

/* The source's own memory still holds the a-b invariant and its registers:
 * nothing but the guest wrote them.  The writer is paused meanwhile. */
static void assert_source_intact(struct fguest *g)
{
	atomic_store(&g->stop, true);
	while (!atomic_load(&g->paused))
		usleep(100);
	ck_assert_ab(g->ram, g->size, PS);
	ck_assert_uint_eq(g->regs[0], REG0);
	ck_assert_uint_eq(g->regs[1], REG1);
	atomic_store(&g->stop, false);
}

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n - 1;	/* the DIR's own fd, for /proc/self/fd; harmless elsewhere */
}

/* TSan's runtime opens pipes to its symbolizer at unpredictable times (it
 * symbolizes to match suppressions): under TSan pipes are not counted.  The
 * engine here opens sockets, eventfds and userfaultfds, never pipes. */
#if defined(__SANITIZE_THREAD__)
#define FAULTS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FAULTS_TSAN 1
#endif
#endif

static int count_fds(void)
{
#ifdef FAULTS_TSAN
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	char link[64], path[300];
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d))) {
		ssize_t len;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		len = readlink(path, link, sizeof(link) - 1);
		link[len > 0 ? len : 0] = '\0';
		n += strncmp(link, "pipe:", 5) != 0;
	}
	closedir(d);
	return n - 1;
#else
	return count_dir("/proc/self/fd");
#endif
}

static int count_threads(void)
{
	return count_dir("/proc/self/task");
}

/* Threads leave /proc a little after pthread_join returns: wait for it. */
static void assert_no_leaks(int fds, int threads)
{
	uint64_t end = test_now_ms() + 5000;

	while ((count_fds() != fds || count_threads() != threads) && test_now_ms() < end)
		usleep(2000);
	if (count_fds() != fds) {
		/* Say what is open, to tell a leak from a runtime's own files. */
		DIR *d = opendir("/proc/self/fd");
		struct dirent *de;
		char link[256], path[300];

		while (d && (de = readdir(d))) {
			ssize_t n;

			snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
			n = readlink(path, link, sizeof(link) - 1);
			link[n > 0 ? n : 0] = '\0';
			printf("faults: open fd %s -> %s\n", de->d_name, link);
		}
		if (d)
			closedir(d);
	}
	ck_assert_int_eq(count_fds(), fds);
	ck_assert_int_eq(count_threads(), threads);
}

static void *noop_thread(void *arg)
{
	return arg;
}

/* Runtimes start helpers with the first thread (TSan's background thread):
 * have them before the baseline is counted. */
/* Also waits until the warm-up thread has left /proc (it does a little after
 * pthread_join returns), so that the caller's baseline is exact. */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif

/*
 * Threads the runtime starts lazily must exist before a test counts
 * threads: TSan starts its background thread at a process's first
 * pthread_create() (a forked test process has none yet) and keeps it.  The
 * warm-up thread itself must be gone; only that runtime thread may remain.
 */
static void warm_up(void)
{
	int before = count_threads();
	uint64_t end = test_now_ms() + 5000;
	pthread_t t;

	ck_assert_int_eq(pthread_create(&t, NULL, noop_thread, NULL), 0);
	pthread_join(t, NULL);
#ifdef UNDER_TSAN
	while (count_threads() > before + 1 && test_now_ms() < end)
		usleep(1000);
	ck_assert_int_le(count_threads(), before + 1);
#else
	while (count_threads() != before && test_now_ms() < end)
		usleep(1000);
	ck_assert_int_eq(count_threads(), before);
#endif
}

static enum mfd_state wait_state(mfd_migration *m, enum mfd_state want, int timeout_ms)
{
	uint64_t end = test_now_ms() + (uint64_t)timeout_ms;
	enum mfd_state st;

	while ((st = mfd_migration_state(m)) != want && test_now_ms() < end &&
	       st != MFD_STATE_COMPLETED && st != MFD_STATE_FAILED && st != MFD_STATE_CANCELLED)
		usleep(1000);
	return st;
}

static void start_pair(struct fguest *src, struct fguest *dst)
{
	mfd_error *err = NULL;
	char uri[256];

	ck_assert_ok(mfd_migrate_incoming(dst->m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst->m, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate(src->m, uri, &err), err);
}

/* Both completed; the destination holds what the source held at the stop. */
static void assert_completed(struct fguest *src, struct fguest *dst)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_wait(src->m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst->m, 60000, &err), err);
	ck_assert_int_eq(mfd_migration_state(src->m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(mfd_migration_state(dst->m), MFD_STATE_COMPLETED);
	ck_assert_int_ge(atomic_load(&dst->vm_starts), 1);
	ck_assert_pages_eq(src->snapshot, dst->ram, src->size, PS);
	ck_assert_ab(dst->ram, dst->size, PS);
	ck_assert_uint_eq(dst->regs[0], REG0);
	ck_assert_uint_eq(dst->regs[1], REG1);
}

/* ---- the matrix --------------------------------------------------------------------- */

enum expect { EX_FAIL, EX_OK, EX_PAUSE };

struct scenario {
	struct fault_spec f;
	bool postcopy, preempt, tls;
	enum expect ex;
	int code;		/* EX_FAIL: the code of the source's error */
	const char *phase_txt;	/* EX_FAIL: what the message says of the phase */
	bool zero_copy;		/* zero-copy-send on the source */
};

#define SRC false
#define DST true
#define W FAULT_DIR_WRITE
#define R FAULT_DIR_READ
#define LONG_STALL 30000u
#define SHORT_STALL 150u

#define SC(side_, ch_, idx_, ph_, kind_, dir_, aft_, stall_, pc_, pre_, tls_, ex_, code_, txt_) \
	{ { .incoming = side_, .chan = FAULT_CH_##ch_, .index = idx_, .phase = FAULT_PH_##ph_,  \
	    .kind = FAULT_##kind_, .dir = dir_, .after = aft_, .stall_ms = stall_,             \
	    .seed = 0x5eed }, pc_, pre_, tls_, ex_, code_, txt_, false }
/* Precopy, plain, source side. */
#define P(ch_, idx_, ph_, kind_, aft_, stall_, ex_, code_, txt_) \
	SC(SRC, ch_, idx_, ph_, kind_, W, aft_, stall_, false, false, false, ex_, code_, txt_)
/* Precopy, zero-copy-send, either side. */
#define Z(side_, ch_, idx_, ph_, kind_, dir_, aft_, stall_, ex_, code_, txt_)                  \
	{ { .incoming = side_, .chan = FAULT_CH_##ch_, .index = idx_, .phase = FAULT_PH_##ph_,  \
	    .kind = FAULT_##kind_, .dir = dir_, .after = aft_, .stall_ms = stall_,             \
	    .seed = 0x5eed }, false, false, false, ex_, code_, txt_, true }
/* Precopy, TLS-PSK, source side. */
#define T(ch_, idx_, ph_, kind_, aft_, stall_, ex_, code_, txt_) \
	SC(SRC, ch_, idx_, ph_, kind_, W, aft_, stall_, false, false, true, ex_, code_, txt_)

static const struct scenario scenarios[] = {
	/* handshake: the hello (plain) or the first TLS flight */
	P(MAIN, 0, HANDSHAKE, FAIL, 0, 0, EX_FAIL, MFD_EIO, "setup: main channel"),
	P(MAIN, 0, HANDSHAKE, CLOSE, 64, 0, EX_FAIL, 0, "setup: main channel"),
	P(MAIN, 0, HANDSHAKE, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "setup: main channel"),
	P(MAIN, 0, HANDSHAKE, SHORT, 0, 0, EX_OK, 0, NULL),
	P(MULTIFD, 1, HANDSHAKE, FAIL, 0, 0, EX_FAIL, MFD_EIO, "setup: multifd channel 1"),
	P(MULTIFD, 1, HANDSHAKE, CLOSE, 64, 0, EX_FAIL, 0, "setup: multifd channel 1"),
	P(MULTIFD, 0, HANDSHAKE, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT,
	  "setup: multifd channel 0"),
	T(MAIN, 0, HANDSHAKE, FAIL, 0, 0, EX_FAIL, MFD_EIO, "setup: main channel"),
	T(MAIN, 0, HANDSHAKE, CLOSE, 64, 0, EX_FAIL, 0, "setup: main channel"),
	T(MAIN, 0, HANDSHAKE, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "setup: main channel"),
	T(MAIN, 0, HANDSHAKE, SHORT, 0, 0, EX_OK, 0, NULL),
	T(MULTIFD, 1, HANDSHAKE, FAIL, 0, 0, EX_FAIL, MFD_EIO, "setup: multifd channel 1"),
	T(MULTIFD, 1, HANDSHAKE, CLOSE, 64, 0, EX_FAIL, 0, "setup: multifd channel 1"),
	T(MULTIFD, 1, HANDSHAKE, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT,
	  "setup: multifd channel 1"),
	/* setup: after the hello, before active */
	P(MAIN, 0, SETUP, FAIL, 0, 0, EX_FAIL, MFD_EIO, "setup"),
	P(MAIN, 0, SETUP, CLOSE, 16, 0, EX_FAIL, 0, "setup"),
	P(MAIN, 0, SETUP, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "setup"),
	P(MAIN, 0, SETUP, SHORT, 0, 0, EX_OK, 0, NULL),
	P(MULTIFD, 1, SETUP, FAIL, 0, 0, EX_FAIL, MFD_EIO, "setup"),
	P(MULTIFD, 1, SETUP, CLOSE, 8, 0, EX_FAIL, 0, "setup"),
	P(MULTIFD, 1, SETUP, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "setup"),
	P(MULTIFD, 1, SETUP, SHORT, 0, 0, EX_OK, 0, NULL),
	/* iteration: active, timeouts cleared; long stalls meet peer-timeout-ms */
	P(MAIN, 0, ITERATION, FAIL, 0, 0, EX_FAIL, MFD_EIO, "iteration"),
	P(MAIN, 0, ITERATION, CLOSE, 0, 0, EX_FAIL, 0, "iteration"),
	P(MAIN, 0, ITERATION, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "iteration"),
	P(MAIN, 0, ITERATION, STALL, 0, SHORT_STALL, EX_OK, 0, NULL),
	P(MAIN, 0, ITERATION, SHORT, 0, 0, EX_OK, 0, NULL),
	P(MULTIFD, 0, ITERATION, FAIL, 65536, 0, EX_FAIL, MFD_EIO, "multifd channel 0"),
	P(MULTIFD, 0, ITERATION, CLOSE, 100000, 0, EX_FAIL, 0, "multifd channel"),
	P(MULTIFD, 1, ITERATION, FAIL, 65536, 0, EX_FAIL, MFD_EIO, "multifd channel 1"),
	P(MULTIFD, 1, ITERATION, CLOSE, 100001, 0, EX_FAIL, 0, "multifd channel"),
	P(MULTIFD, 1, ITERATION, STALL, 65536, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT,
	  "multifd channel 1"),
	P(MULTIFD, 1, ITERATION, STALL, 65536, SHORT_STALL, EX_OK, 0, NULL),
	P(MULTIFD, 1, ITERATION, SHORT, 4096, 0, EX_OK, 0, NULL),
	T(MAIN, 0, ITERATION, FAIL, 0, 0, EX_FAIL, MFD_EIO, "iteration"),
	T(MAIN, 0, ITERATION, CLOSE, 0, 0, EX_FAIL, 0, "iteration"),
	T(MULTIFD, 1, ITERATION, FAIL, 65536, 0, EX_FAIL, MFD_EIO, "multifd channel 1"),
	T(MULTIFD, 1, ITERATION, CLOSE, 100003, 0, EX_FAIL, 0, "multifd channel"),
	T(MULTIFD, 0, ITERATION, SHORT, 0, 0, EX_OK, 0, NULL),
	/* sync: a multifd SYNC packet in active (the end of a pass) */
	P(MULTIFD, 1, SYNC, FAIL, 0, 0, EX_FAIL, MFD_EIO, "multifd channel 1"),
	P(MULTIFD, 1, SYNC, CLOSE, 16, 0, EX_FAIL, 0, "multifd channel"),
	P(MULTIFD, 0, SYNC, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "multifd channel 0"),
	P(MULTIFD, 0, SYNC, STALL, 0, SHORT_STALL, EX_OK, 0, NULL),
	P(MAIN, 0, SYNC, FAIL, 0, 0, EX_FAIL, MFD_EIO, "iteration"),
	P(MAIN, 0, SYNC, CLOSE, 0, 0, EX_FAIL, 0, "iteration"),
	/* switchover: the VM is stopped; it must run again */
	P(MAIN, 0, SWITCHOVER, FAIL, 0, 0, EX_FAIL, MFD_EIO, "switchover"),
	P(MAIN, 0, SWITCHOVER, CLOSE, 0, 0, EX_FAIL, 0, "switchover"),
	P(MAIN, 0, SWITCHOVER, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "switchover"),
	P(MAIN, 0, SWITCHOVER, SHORT, 0, 0, EX_OK, 0, NULL),
	P(MULTIFD, 1, SWITCHOVER, FAIL, 0, 0, EX_FAIL, MFD_EIO, "switchover"),
	P(MULTIFD, 1, SWITCHOVER, CLOSE, 0, 0, EX_FAIL, 0, "switchover"),
	P(MULTIFD, 0, SWITCHOVER, STALL, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT, "switchover"),
	T(MAIN, 0, SWITCHOVER, CLOSE, 0, 0, EX_FAIL, 0, "switchover"),
	T(MULTIFD, 1, SWITCHOVER, FAIL, 0, 0, EX_FAIL, MFD_EIO, "switchover"),
	/* the destination's end: the source learns of it on whichever of its
	 * channels breaks first, in whatever phase it has reached by then */
	SC(DST, MAIN, 0, HANDSHAKE, FAIL, R, 0, 0, false, false, false, EX_FAIL, 0, "channel"),
	SC(DST, MAIN, 0, ITERATION, FAIL, R, 0, 0, false, false, false, EX_FAIL, 0, "main channel"),
	SC(DST, MULTIFD, 0, ITERATION, FAIL, R, 65536, 0, false, false, false, EX_FAIL, 0,
	   "channel"),
	SC(DST, MULTIFD, 1, SYNC, CLOSE, R, 0, 0, false, false, false, EX_FAIL, 0, "channel"),
	SC(DST, MULTIFD, 1, ITERATION, STALL, R, 4096, SHORT_STALL, false, false, false, EX_OK, 0,
	   NULL),
	SC(DST, MULTIFD, 0, ITERATION, SHORT, R, 0, 0, false, false, false, EX_OK, 0, NULL),
	SC(DST, MAIN, 0, ITERATION, FAIL, W, 0, 0, false, false, false, EX_FAIL, 0, "main channel"),
	/* postcopy: a network fault after the switch pauses, a recovery finishes */
	SC(SRC, MAIN, 0, POSTCOPY, FAIL, W, 4096, 0, true, false, false, EX_PAUSE, 0, NULL),
	SC(SRC, MAIN, 0, POSTCOPY, CLOSE, W, 100000, 0, true, false, false, EX_PAUSE, 0, NULL),
	SC(SRC, MAIN, 0, POSTCOPY, STALL, W, 0, LONG_STALL, true, false, false, EX_PAUSE, 0, NULL),
	SC(SRC, MAIN, 0, POSTCOPY, SHORT, W, 0, 0, true, false, false, EX_OK, 0, NULL),
	SC(SRC, MAIN, 0, POSTCOPY, FAIL, R, 0, 0, true, false, false, EX_PAUSE, 0, NULL),
	SC(SRC, PREEMPT, 0, POSTCOPY, FAIL, W, 0, 0, true, true, false, EX_PAUSE, 0, NULL),
	SC(SRC, PREEMPT, 0, POSTCOPY, CLOSE, W, 1000, 0, true, true, false, EX_PAUSE, 0, NULL),
	SC(SRC, PREEMPT, 0, HANDSHAKE, FAIL, W, 0, 0, true, true, false, EX_FAIL, MFD_EIO,
	   "preempt channel"),
	/* A requested page stuck "forever" on the preempt channel (the
	 * destination's reader faults at once, so the first preempt write is a
	 * page): the main stream ends without it, and the destination, which
	 * waited for the preempt stream's end without a deadline, now pauses
	 * after channel-timeout-ms and the recovery completes. */
	SC(SRC, PREEMPT, 0, POSTCOPY, STALL, W, 0, 600000, true, true, false, EX_PAUSE, 0, NULL),
	SC(DST, MAIN, 0, POSTCOPY, CLOSE, R, 0, 0, true, false, false, EX_PAUSE, 0, NULL),
	SC(SRC, MULTIFD, 1, SWITCHOVER, FAIL, W, 0, 0, true, false, false, EX_FAIL, MFD_EIO,
	   "postcopy"),
	SC(SRC, MAIN, 0, POSTCOPY, CLOSE, W, 50000, 0, true, false, true, EX_PAUSE, 0, NULL),
	SC(SRC, PREEMPT, 0, POSTCOPY, FAIL, W, 0, 0, true, true, true, EX_PAUSE, 0, NULL),
	/* zero-copy-send: a broken channel while pages are in flight, and a
	 * SYNC whose flush waits for them */
	Z(SRC, MULTIFD, 1, ITERATION, FAIL, W, 65536, 0, EX_FAIL, MFD_EIO, "multifd channel 1"),
	Z(SRC, MULTIFD, 0, ITERATION, CLOSE, W, 100000, 0, EX_FAIL, 0, "multifd channel"),
	Z(SRC, MULTIFD, 1, ITERATION, SHORT, W, 4096, 0, EX_OK, 0, NULL),
	Z(SRC, MULTIFD, 0, SYNC, STALL, W, 0, LONG_STALL, EX_FAIL, MFD_ETIMEDOUT,
	  "multifd channel 0"),
	Z(DST, MULTIFD, 1, SYNC, CLOSE, R, 0, 0, EX_FAIL, 0, "channel"),
	Z(DST, MULTIFD, 1, ITERATION, STALL, R, 4096, SHORT_STALL, EX_OK, 0, NULL),
};

#define N_SCENARIOS ((int)(sizeof(scenarios) / sizeof(scenarios[0])))

static struct test_pki pki;
static bool pki_ok;

/* Postcopy: switch as soon as precopy runs, and push slowly enough that the
 * guest faults pages in while the fault lands. */
static void switch_to_postcopy(struct fguest *src)
{
	mfd_error *err = NULL;

	set(src->m, "max-postcopy-bandwidth", "16000000");
	ck_assert_int_eq(wait_state(src->m, MFD_STATE_ACTIVE, 30000), MFD_STATE_ACTIVE);
	ck_assert_ok(mfd_migrate_start_postcopy(src->m, &err), err);
}

static void check_failed(const struct scenario *sc, struct fguest *src, struct fguest *dst,
			 const char *chan_txt)
{
	mfd_error *err = NULL;
	int r = mfd_migration_wait(src->m, 60000, &err);

	ck_assert_msg(r < 0, "the source did not fail (%d)", r);
	ck_assert_int_eq(mfd_migration_state(src->m), MFD_STATE_FAILED);
	ck_assert_ptr_nonnull(err);
	printf("faults:   source: %s\n", mfd_error_message(err));
	if (sc->code)
		ck_assert_msg(mfd_error_code(err) == sc->code, "code %d, expected %d: %s",
			      mfd_error_code(err), sc->code, mfd_error_message(err));
	else
		ck_assert_msg(mfd_error_code(err) == MFD_EIO || mfd_error_code(err) == MFD_EEOF ||
			      mfd_error_code(err) == MFD_ETIMEDOUT,
			      "not a network error: %s", mfd_error_message(err));
	/* One error, naming the phase and the channel. */
	ck_assert_msg(strstr(mfd_error_message(err), sc->phase_txt), "message '%s' lacks '%s'",
		      mfd_error_message(err), sc->phase_txt);
	ck_assert_mfd_error(err, r, chan_txt);
	if (sc->f.chan == FAULT_CH_MAIN && sc->f.phase == FAULT_PH_HANDSHAKE) {
		/* A main channel broken before its hello is a stray to the
		 * destination (a scan looks the same): refused, and it waits on
		 * for its source until cancelled. */
		ck_assert_int_eq(mfd_migration_wait(dst->m, 200, &err), MFD_ERUNNING);
		mfd_error_free(err);
		err = NULL;
		ck_assert_int_eq(mfd_migration_state(dst->m), MFD_STATE_SETUP);
		mfd_migrate_cancel(dst->m);
	}
	/* The destination fails too, and never ran the guest. */
	ck_assert_int_lt(mfd_migration_wait(dst->m, 60000, &err), 0);
	ck_assert_ptr_nonnull(err);
	printf("faults:   destination: %s\n", mfd_error_message(err));
	mfd_error_free(err);
	if (sc->f.chan == FAULT_CH_MAIN && sc->f.phase == FAULT_PH_HANDSHAKE)
		ck_assert_int_ne(mfd_migration_state(dst->m), MFD_STATE_COMPLETED);
	else
		ck_assert_int_eq(mfd_migration_state(dst->m), MFD_STATE_FAILED);
	ck_assert_int_eq(atomic_load(&dst->vm_starts), 0);
	/* The source runs: restarted if it was stopped, never stopped otherwise. */
	ck_assert_int_eq(atomic_load(&src->vm_starts), atomic_load(&src->vm_stops));
	ck_assert(!atomic_load(&src->stop));
	assert_source_intact(src);
}

static void check_paused_then_recover(struct fguest *src, struct fguest *dst)
{
	mfd_error *err = NULL;
	char uri[256];
	struct mfd_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(wait_state(src->m, MFD_STATE_POSTCOPY_PAUSED, 30000),
			 MFD_STATE_POSTCOPY_PAUSED);
	ck_assert_int_eq(wait_state(dst->m, MFD_STATE_POSTCOPY_PAUSED, 30000),
			 MFD_STATE_POSTCOPY_PAUSED);
	ck_assert_ok(mfd_migrate_recover(dst->m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst->m, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate_resume(src->m, uri, &err), err);
	set(src->m, "max-postcopy-bandwidth", "0");
	assert_completed(src, dst);
	ck_assert_int_eq(mfd_migration_stats(src->m, &st), 0);
	ck_assert_uint_ge(st.postcopy_pauses, 1);
}

START_TEST(fault_matrix)
{
	const struct scenario *sc = &scenarios[_i];
	struct setup su = { .channels = 2, .postcopy = sc->postcopy, .preempt = sc->preempt,
			    .timeout_ms = sc->f.kind == FAULT_STALL ? 1000 : 5000,
			    .zero_copy = sc->zero_copy };
	struct fguest src, dst, dst2;
	struct fault_ctl *ctl = NULL;
	mfd_error *err = NULL;
	char desc[128], chan_txt[64], psk[256];
	uint64_t t0 = test_now_ms();

	fault_spec_describe(&sc->f, desc, sizeof(desc));
	if (sc->zero_copy)
		snprintf(desc + strlen(desc), sizeof(desc) - strlen(desc), ", zero-copy-send");
	if (sc->postcopy) {
		char who[sizeof(desc) + 32];

		snprintf(who, sizeof(who), "faults: #%d %s", _i, desc);
		if (!test_have_uffd(who))
			return;
	}
	if (sc->tls) {
		ck_assert_msg(pki_ok, "test PKI not created");
		su.psk_file = certs_path(&pki, "psk-main", NULL, psk, sizeof(psk));
	}
	/*
	 * A fault the peer sees (a cut connection, or one on the destination)
	 * makes the destination fail and close every channel, so which of the
	 * source's channels reports first is a real race: its own faulted
	 * channel, another multifd channel the destination closed, or the
	 * destination's reason read on the return path, which names its own
	 * multifd channel.  Always true: a multifd channel is named.
	 */
	if (sc->f.chan == FAULT_CH_MULTIFD && (sc->f.incoming || sc->f.kind == FAULT_CLOSE))
		snprintf(chan_txt, sizeof(chan_txt), "multifd channel");
	else if (sc->f.chan == FAULT_CH_MULTIFD)
		snprintf(chan_txt, sizeof(chan_txt), "multifd channel %u", sc->f.index);
	else
		snprintf(chan_txt, sizeof(chan_txt), "%s channel",
			 sc->f.chan == FAULT_CH_MAIN ? "main" : "preempt");
	/* The destination's main channel fails there: the source reports the
	 * destination's reason, or during the handshake (no return path yet)
	 * the channel of its own that the refusal broke. */
	if (sc->f.incoming && sc->f.chan == FAULT_CH_MAIN)
		snprintf(chan_txt, sizeof(chan_txt), "%s",
			 sc->f.phase == FAULT_PH_HANDSHAKE ? "channel" : "the destination failed");

	warm_up();
	int fds = count_fds(), threads = count_threads();

	ck_assert_ok(fault_ctl_new(&sc->f, &ctl, &err), err);
	fault_ctl_install(ctl);
	guest_init(&src, GUEST_MIB, true, &su);
	guest_init(&dst, GUEST_MIB, false, &su);
	start_pair(&src, &dst);
	if (sc->postcopy && sc->f.phase != FAULT_PH_HANDSHAKE)
		switch_to_postcopy(&src);
	switch (sc->ex) {
	case EX_FAIL:
		check_failed(sc, &src, &dst, chan_txt);
		break;
	case EX_OK:
		assert_completed(&src, &dst);
		ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
		break;
	case EX_PAUSE:
		check_paused_then_recover(&src, &dst);
		ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
		break;
	}
	ck_assert_msg(fault_ctl_fired(ctl), "%s: the fault never fired", desc);
	guest_free(&dst);
	ck_assert_uint_gt(fault_ctl_wrapped(ctl), 0);
	ck_assert_uint_eq(fault_ctl_live(ctl), 0);
	fault_ctl_free(ctl);

	if (sc->ex == EX_FAIL) {
		/* Fresh connections, a fresh destination, no fault: it completes. */
		guest_init(&dst2, GUEST_MIB, false, &su);
		start_pair(&src, &dst2);
		if (sc->postcopy)
			switch_to_postcopy(&src);
		if (sc->postcopy)
			set(src.m, "max-postcopy-bandwidth", "0");
		assert_completed(&src, &dst2);
		guest_free(&dst2);
	}
	guest_free(&src);
	assert_no_leaks(fds, threads);
	printf("faults: #%d %s: ok (%llu ms)\n", _i, desc,
	       (unsigned long long)(test_now_ms() - t0));
	fflush(stdout);
}
END_TEST

static void pki_setup(void)
{
	pki_ok = certs_create(&pki) == 0;
}

static void pki_teardown(void)
{
	if (pki_ok)
		certs_destroy(&pki);
	pki_ok = false;
}

/* ---- switchover: a commit protocol --------------------------------------------------- */

/*
 * At every instant exactly one side runs the VM, or the VMM is told the
 * outcome is unknown.  The source VM runs unless stopped and not restarted;
 * the destination's runs once its vm_start succeeded (it never stops it).
 */
static int running(struct fguest *src, struct fguest *dst)
{
	return 1 - atomic_load(&src->vm_stops) + atomic_load(&src->vm_starts) +
	       atomic_load(&dst->vm_starts);
}

/* Wait for both ends; check the one-VM rule; return the two errors. */
static void wait_both(struct fguest *src, struct fguest *dst, int *rs, mfd_error **es, int *rd,
		      mfd_error **ed)
{
	*rs = mfd_migration_wait(src->m, 30000, es);
	*rd = mfd_migration_wait(dst->m, 30000, ed);
	printf("faults:   source: %d %s\n", *rs, mfd_error_message(*es));
	printf("faults:   destination: %d %s\n", *rd, mfd_error_message(*ed));
	ck_assert_int_ne(mfd_migration_state(src->m), MFD_STATE_CANCELLING);
	ck_assert_int_ne(mfd_migration_state(dst->m), MFD_STATE_CANCELLING);
	int n = running(src, dst);

	ck_assert_msg(n <= 1, "%d VMs run (source stops %d starts %d, destination starts %d)", n,
		      atomic_load(&src->vm_stops), atomic_load(&src->vm_starts),
		      atomic_load(&dst->vm_starts));
	if (n == 0)
		ck_assert_msg(mfd_error_code(*es) == MFD_EUNKNOWN ||
			      mfd_error_code(*ed) == MFD_EUNKNOWN ||
			      strstr(mfd_error_message(*ed), "runs nowhere"),
			      "the VM runs nowhere and neither side says so: source '%s', "
			      "destination '%s'", mfd_error_message(*es), mfd_error_message(*ed));
}

/* The destination's RESULT never reaches the source (its write fails, or
 * the connection is cut as it goes): the source cannot know whether the
 * destination runs the VM, so it must not restart its own. */
static void result_lost(enum fault_kind kind)
{
	struct fault_spec f = { .incoming = true, .chan = FAULT_CH_MAIN, .phase = FAULT_PH_RESULT,
				.kind = kind, .dir = FAULT_DIR_WRITE, .seed = 1 };
	struct setup su = { .channels = 2, .timeout_ms = 1000 };
	struct fguest src, dst;
	struct fault_ctl *ctl = NULL;
	mfd_error *err = NULL, *es = NULL, *ed = NULL;
	int rs, rd;

	ck_assert_ok(fault_ctl_new(&f, &ctl, &err), err);
	fault_ctl_install(ctl);
	guest_init(&src, GUEST_MIB, true, &su);
	guest_init(&dst, GUEST_MIB, false, &su);
	start_pair(&src, &dst);
	wait_both(&src, &dst, &rs, &es, &rd, &ed);
	ck_assert_msg(fault_ctl_fired(ctl), "the fault never fired");
	ck_assert_int_eq(rs, MFD_EUNKNOWN);
	ck_assert_mfd_error(es, MFD_EUNKNOWN, "the destination may be running the VM");
	ck_assert_int_eq(atomic_load(&src.vm_stops), 1);
	ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
	/* The destination could not say it took over: it does not run it. */
	ck_assert_int_lt(rd, 0);
	ck_assert_int_eq(atomic_load(&dst.vm_starts), 0);
	ck_assert_msg(strstr(mfd_error_message(ed), "RESULT"), "unclear: %s",
		      mfd_error_message(ed));
	mfd_error_free(ed);
	guest_free(&dst);
	guest_free(&src);
	fault_ctl_free(ctl);
}

START_TEST(switchover_result_write_fails)
{
	result_lost(FAULT_FAIL);
}
END_TEST

START_TEST(switchover_result_cut)
{
	result_lost(FAULT_CLOSE);
}
END_TEST

/* A device whose load takes longer than channel-timeout-ms on the destination. */
static atomic_int slow_load_ms;

static int slow_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	return mfd_stream_put_be32(s, 0x51040);
}

static int slow_load(mfd_stream *s, void *opaque, uint32_t v, mfd_error **errp)
{
	uint32_t x;

	(void)opaque;
	(void)v;
	(void)errp;
	usleep((useconds_t)atomic_load(&slow_load_ms) * 1000);
	return mfd_stream_get_be32(s, &x);
}

static const mfd_save_handlers slow_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = slow_save,
	.load_state = slow_load,
};

START_TEST(switchover_slow_destination)
{
	struct setup su = { .channels = 2, .timeout_ms = 500 };
	struct fguest src, dst;
	mfd_error *err = NULL, *es = NULL, *ed = NULL;
	int rs, rd;

	atomic_store(&slow_load_ms, 2000);
	guest_init(&src, GUEST_MIB, true, &su);
	guest_init(&dst, GUEST_MIB, false, &su);
	ck_assert_ok(mfd_register_live(src.m, "slow", 0, 1, &slow_ops, NULL, &err), err);
	ck_assert_ok(mfd_register_live(dst.m, "slow", 0, 1, &slow_ops, NULL, &err), err);
	start_pair(&src, &dst);
	wait_both(&src, &dst, &rs, &es, &rd, &ed);
	ck_assert_int_eq(rs, MFD_EUNKNOWN);
	ck_assert_mfd_error(es, MFD_EUNKNOWN, "500 ms");
	ck_assert_int_eq(atomic_load(&src.vm_stops), 1);
	ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
	mfd_error_free(ed);
	guest_free(&dst);
	guest_free(&src);
}
END_TEST

/* The destination's vm_start fails after its RESULT 0 went out: the source
 * handed the VM over and completed; the destination says the VM runs
 * nowhere. */
static atomic_int failed_starts;
static enum mfd_state dst_last_state;

static int vm_start_fails(void *opaque, mfd_error **errp)
{
	(void)opaque;
	atomic_fetch_add(&failed_starts, 1);
	return mfd_error_set(errp, MFD_EHANDLER, "KVM_RUN: no vCPU (test)");
}

static void dst_state(void *opaque, int from, int to)
{
	(void)opaque;
	(void)from;
	dst_last_state = to;
}

START_TEST(switchover_destination_start_fails)
{
	struct setup su = { .channels = 2, .timeout_ms = 5000 };
	struct fguest src, dst;
	mfd_error *err = NULL, *es = NULL, *ed = NULL;
	const mfd_vmm_hooks bad = { .size = sizeof(mfd_vmm_hooks), .vm_start = vm_start_fails,
				    .state_changed = dst_state };
	int rs, rd;

	atomic_store(&failed_starts, 0);
	dst_last_state = MFD_STATE_NONE;
	guest_init(&src, GUEST_MIB, true, &su);
	guest_init(&dst, GUEST_MIB, false, &su);
	ck_assert_ok(mfd_migration_set_hooks(dst.m, &bad, &dst, &err), err);
	start_pair(&src, &dst);
	wait_both(&src, &dst, &rs, &es, &rd, &ed);
	ck_assert_int_eq(atomic_load(&failed_starts), 1);
	/* The source handed the VM over: completed, stopped for good. */
	ck_assert_ok(rs, es);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
	/* The destination says so, with an event. */
	ck_assert_int_eq(rd, MFD_EHANDLER);
	ck_assert_int_eq(dst_last_state, MFD_STATE_FAILED);
	ck_assert_mfd_error(ed, MFD_EHANDLER, "the VM runs nowhere");
	guest_free(&dst);
	guest_free(&src);
}
END_TEST

/* A destination that only drains what the source sends, and says RESULT
 * when the test wants: a peer that breaks the protocol. */
struct fake_dst {
	int lfd;
	atomic_int main_fd;
	int fds[16];
	int nfds;
	atomic_bool stop;
	pthread_t t;
	char uri[64];
};

static void *fake_dst_thread(void *arg)
{
	struct fake_dst *f = arg;
	static char sink[65536];

	while (!atomic_load(&f->stop)) {
		struct pollfd p[17];
		int n = 0;

		p[n++] = (struct pollfd){ .fd = f->lfd, .events = POLLIN };
		for (int i = 0; i < f->nfds; i++)
			p[n++] = (struct pollfd){ .fd = f->fds[i], .events = POLLIN };
		if (poll(p, (nfds_t)n, 50) <= 0)
			continue;
		if ((p[0].revents & POLLIN) && f->nfds < 16) {
			int c = accept(f->lfd, NULL, NULL);

			if (c >= 0) {
				f->fds[f->nfds++] = c;
				if (f->nfds == 1)
					atomic_store(&f->main_fd, c);
			}
		}
		for (int i = 1; i < n; i++)
			if (p[i].revents & (POLLIN | POLLHUP | POLLERR))
				(void)!read(p[i].fd, sink, sizeof(sink));
	}
	return NULL;
}

static void fake_dst_start(struct fake_dst *f)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);

	memset(f, 0, sizeof(*f));
	atomic_store(&f->main_fd, -1);
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(f->lfd, 0);
	ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(f->lfd, 16), 0);
	ck_assert_int_eq(getsockname(f->lfd, (struct sockaddr *)&a, &len), 0);
	snprintf(f->uri, sizeof(f->uri), "tcp:127.0.0.1:%u", ntohs(a.sin_port));
	ck_assert_int_eq(pthread_create(&f->t, NULL, fake_dst_thread, f), 0);
}

/* RESULT 0 ("loaded") on the return path, now. */
static void fake_dst_result0(struct fake_dst *f)
{
	static const uint8_t msg[] = { 0, 2, 0, 6, 0, 0, 0, 0, 'l', 'o' };

	ck_assert_int_ge(atomic_load(&f->main_fd), 0);
	ck_assert_int_eq(write(atomic_load(&f->main_fd), msg, sizeof(msg)), (ssize_t)sizeof(msg));
}

static void fake_dst_stop(struct fake_dst *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->t, NULL);
	for (int i = 0; i < f->nfds; i++)
		close(f->fds[i]);
	close(f->lfd);
}

START_TEST(switchover_result_before_eof)
{
	struct setup su = { .channels = 2, .timeout_ms = 5000 };
	struct fguest src;
	struct fake_dst f;
	mfd_error *err = NULL;

	guest_init(&src, GUEST_MIB, true, &su);
	/* Slow enough to be iterating when the early RESULT comes. */
	set(src.m, "max-bandwidth", "4000000");
	fake_dst_start(&f);
	ck_assert_ok(mfd_migrate(src.m, f.uri, &err), err);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 10000), MFD_STATE_ACTIVE);
	usleep(100000);
	fake_dst_result0(&f);
	set(src.m, "max-bandwidth", "0");
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_EPROTO);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	ck_assert_mfd_error(err, MFD_EPROTO, "before the end of the stream");
	/* Nothing was handed over: the source VM runs. */
	ck_assert_int_eq(atomic_load(&src.vm_starts), atomic_load(&src.vm_stops));
	fake_dst_stop(&f);
	guest_free(&src);
}
END_TEST

START_TEST(switchover_result_during_postcopy)
{
	struct setup su = { .channels = 2, .timeout_ms = 5000, .postcopy = true };
	struct fguest src;
	struct fake_dst f;
	mfd_error *err = NULL;

	guest_init(&src, GUEST_MIB, true, &su);
	/* 8 MiB at 1 MB/s: the push is far from done when the RESULT comes. */
	set(src.m, "max-postcopy-bandwidth", "1000000");
	fake_dst_start(&f);
	ck_assert_ok(mfd_migrate(src.m, f.uri, &err), err);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 10000), MFD_STATE_ACTIVE);
	ck_assert_ok(mfd_migrate_start_postcopy(src.m, &err), err);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_POSTCOPY_ACTIVE, 10000),
			 MFD_STATE_POSTCOPY_ACTIVE);
	usleep(100000);
	fake_dst_result0(&f);
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_EPROTO);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	ck_assert_mfd_error(err, MFD_EPROTO, "before the end of the stream");
	/* Postcopy committed at RUN: the source never runs it again. */
	ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
	fake_dst_stop(&f);
	guest_free(&src);
}
END_TEST

/* switchover-confirm: the destination starts the VM only once the source
 * confirmed it got RESULT 0; so a source that got nothing may restart. */
static void confirm_case(bool on_src, bool on_dst, const struct fault_spec *f, int *rs,
			 mfd_error **es, int *rd, mfd_error **ed, int *src_starts, int *dst_starts)
{
	struct setup su = { .channels = 2, .timeout_ms = 1000 };
	struct fguest src, dst;
	struct fault_ctl *ctl = NULL;
	mfd_error *err = NULL;

	if (f) {
		ck_assert_ok(fault_ctl_new(f, &ctl, &err), err);
		fault_ctl_install(ctl);
	}
	guest_init(&src, GUEST_MIB, true, &su);
	guest_init(&dst, GUEST_MIB, false, &su);
	set(src.m, "switchover-confirm", on_src ? "on" : "off");
	set(dst.m, "switchover-confirm", on_dst ? "on" : "off");
	start_pair(&src, &dst);
	wait_both(&src, &dst, rs, es, rd, ed);
	if (f)
		ck_assert_msg(fault_ctl_fired(ctl), "the fault never fired");
	*src_starts = atomic_load(&src.vm_starts);
	*dst_starts = atomic_load(&dst.vm_starts);
	if (*rs == 0)
		ck_assert_msg(memcmp(src.snapshot, dst.ram, src.size) == 0, "RAM differs");
	guest_free(&dst);
	guest_free(&src);
	fault_ctl_free(ctl);
}

START_TEST(switchover_confirm_completes)
{
	mfd_error *es = NULL, *ed = NULL;
	int rs, rd, ss, ds;

	confirm_case(true, true, NULL, &rs, &es, &rd, &ed, &ss, &ds);
	ck_assert_ok(rs, es);
	ck_assert_ok(rd, ed);
	ck_assert_int_eq(ss, 0);
	ck_assert_int_eq(ds, 1);
}
END_TEST

START_TEST(switchover_confirm_mismatch)
{
	mfd_error *es = NULL, *ed = NULL;
	int rs, rd, ss, ds;

	confirm_case(true, false, NULL, &rs, &es, &rd, &ed, &ss, &ds);
	ck_assert_int_lt(rs, 0);
	ck_assert_mfd_error(ed, MFD_EPROTO, "switchover-confirm");
	mfd_error_free(es);
	ck_assert_int_eq(ds, 0);
}
END_TEST

/* RESULT lost: the destination never got to confirm-waiting; the source
 * never confirmed, so its VM runs again (and only it). */
START_TEST(switchover_confirm_result_lost)
{
	struct fault_spec f = { .incoming = true, .chan = FAULT_CH_MAIN, .phase = FAULT_PH_RESULT,
				.kind = FAULT_FAIL, .dir = FAULT_DIR_WRITE, .seed = 1 };
	mfd_error *es = NULL, *ed = NULL;
	int rs, rd, ss, ds;

	confirm_case(true, true, &f, &rs, &es, &rd, &ed, &ss, &ds);
	ck_assert_int_lt(rs, 0);
	ck_assert_int_ne(rs, MFD_EUNKNOWN);
	ck_assert_msg(strstr(mfd_error_message(es), "will not start the VM"), "unclear: %s",
		      mfd_error_message(es));
	ck_assert_int_eq(ss, 1);
	ck_assert_int_lt(rd, 0);
	ck_assert_int_eq(ds, 0);
	mfd_error_free(es);
	mfd_error_free(ed);
}
END_TEST

/* The confirmation lost: the source's write failed, so it restarts; the
 * destination waits in vain, starts nothing and says the source may own
 * the VM. */
START_TEST(switchover_confirm_lost)
{
	struct fault_spec f = { .incoming = false, .chan = FAULT_CH_MAIN, .phase = FAULT_PH_RESULT,
				.kind = FAULT_FAIL, .dir = FAULT_DIR_WRITE, .seed = 1 };
	mfd_error *es = NULL, *ed = NULL;
	int rs, rd, ss, ds;

	confirm_case(true, true, &f, &rs, &es, &rd, &ed, &ss, &ds);
	ck_assert_int_lt(rs, 0);
	ck_assert_int_eq(ss, 1);
	ck_assert_int_eq(ds, 0);
	ck_assert_mfd_error(ed, MFD_EUNKNOWN, "the source may still own the VM");
	mfd_error_free(es);
}
END_TEST

/* ---- out-of-process faults ---------------------------------------------------------- */

/* Kill the source's live connections from outside (SOCK_DESTROY). */
START_TEST(ss_kill_during_precopy)
{
	struct setup su = { .channels = 2, .timeout_ms = 5000 };
	struct fguest src, dst, dst2;
	mfd_error *err = NULL;
	char uri[256], cmd[256];

	if (!test_have_root_tool("faults: ss -K", "iproute2", "ss -h >/dev/null 2>&1"))
		return;
	warm_up();
	int fds = count_fds(), threads = count_threads();

	guest_init(&src, 16, true, &su);
	guest_init(&dst, 16, false, &su);
	/* Slow enough to be mid-precopy when the sockets die. */
	set(src.m, "max-bandwidth", "8000000");
	start_pair(&src, &dst);
	ck_assert_int_eq(mfd_migration_listen_uri(dst.m, uri, sizeof(uri)), 0);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 30000), MFD_STATE_ACTIVE);
	usleep(200000);
	snprintf(cmd, sizeof(cmd), "ss -K -t dst 127.0.0.1:%s >/dev/null 2>&1",
		 strrchr(uri, ':') + 1);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_lt(mfd_migration_wait(src.m, 30000, &err), 0);
	printf("faults: ss -K: source: %s\n", mfd_error_message(err));
	ck_assert_msg(strstr(mfd_error_message(err), "channel") &&
		      (strstr(mfd_error_message(err), "iteration") ||
		       strstr(mfd_error_message(err), "destination")),
		      "unclear: %s", mfd_error_message(err));
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	ck_assert_int_lt(mfd_migration_wait(dst.m, 30000, &err), 0);
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(atomic_load(&dst.vm_starts), 0);
	ck_assert_int_eq(atomic_load(&src.vm_starts), atomic_load(&src.vm_stops));
	assert_source_intact(&src);
	guest_free(&dst);
	set(src.m, "max-bandwidth", "0");
	guest_init(&dst2, 16, false, &su);
	start_pair(&src, &dst2);
	assert_completed(&src, &dst2);
	guest_free(&dst2);
	guest_free(&src);
	assert_no_leaks(fds, threads);
}
END_TEST

/*
 * In a network namespace of our own, rate-limited with tbf on its lo: a
 * slow link still migrates correctly; a crawling one is cancelled cleanly
 * and the retry, once the limit is lifted, completes.  Runs in a child
 * that entered the namespace (setns), so this process's network is never
 * touched; the child reports by exit status.
 */
static int netns_child(const char *ns)
{
	char path[128];
	struct setup su = { .channels = 2, .timeout_ms = 5000 };
	struct fguest src, dst, dst2;
	mfd_error *err = NULL;
	struct mfd_stats st = { .size = sizeof(st) };
	char cmd[256];

	snprintf(path, sizeof(path), "/run/netns/%s", ns);
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) {
		fprintf(stderr, "faults: setns %s: %s\n", path, strerror(errno));
		return 2;
	}
	close(fd);
	/* A crawling link (2 Mbit/s): 16 MiB of data would take a minute, far
	 * more than the socket buffers hold; cancel after 1 s. */
	guest_init(&src, 32, true, &su);
	guest_init(&dst, 32, false, &su);
	start_pair(&src, &dst);
	usleep(1000000);
	if (mfd_migration_state(src.m) != MFD_STATE_ACTIVE &&
	    mfd_migration_state(src.m) != MFD_STATE_DEVICE) {
		fprintf(stderr, "faults: tbf: expected active at 1 s, got %s\n",
			mfd_state_name(mfd_migration_state(src.m)));
		return 3;
	}
	mfd_migrate_cancel(src.m);
	if (mfd_migration_wait(src.m, 20000, &err) != MFD_ECANCELED ||
	    mfd_migration_state(src.m) != MFD_STATE_CANCELLED) {
		fprintf(stderr, "faults: tbf: cancel: %s\n", mfd_error_message(err));
		return 4;
	}
	mfd_error_free(err);
	err = NULL;
	mfd_migration_wait(dst.m, 20000, &err);
	mfd_error_free(err);
	err = NULL;
	if (atomic_load(&src.vm_stops) != atomic_load(&src.vm_starts) ||
	    atomic_load(&dst.vm_starts) != 0)
		return 5;
	guest_free(&dst);
	/* Lift to 1 Gbit/s: the retry completes, at no more than the limit. */
	snprintf(cmd, sizeof(cmd), "ip netns exec %s tc qdisc change dev lo root tbf rate 1gbit "
		 "burst 1mb latency 100ms", ns);
	if (system(cmd) != 0)
		return 6;
	guest_init(&dst2, 32, false, &su);
	uint64_t t0 = test_now_ms();

	start_pair(&src, &dst2);
	if (mfd_migration_wait(src.m, 30000, &err) < 0 || mfd_migration_wait(dst2.m, 30000, &err) < 0) {
		fprintf(stderr, "faults: tbf: retry: %s\n", mfd_error_message(err));
		return 7;
	}
	uint64_t ms = test_now_ms() - t0;

	mfd_migration_stats(src.m, &st);
	if (memcmp(src.snapshot, dst2.ram, src.size) != 0)
		return 8;
	/* 1 Gbit/s is 125 MB/s: the bytes cannot have moved faster (the
	 * socket buffers and the burst aside). */
	if (st.ram_transferred > (uint64_t)(ms + 100) * 125000 + (32u << 20)) {
		fprintf(stderr, "faults: tbf: %llu bytes in %llu ms: the limit did not apply\n",
			(unsigned long long)st.ram_transferred, (unsigned long long)ms);
		return 9;
	}
	guest_free(&dst2);
	guest_free(&src);
	return 0;
}

START_TEST(tbf_rate_limit_in_netns)
{
	char ns[64], cmd[512];
	pid_t pid;
	int status = 0;

	if (!test_have_root_tool("faults: tc tbf in a netns", "netns",
				 "ip netns list >/dev/null 2>&1 && tc -V >/dev/null 2>&1"))
		return;
	snprintf(ns, sizeof(ns), "mfd-faults-%d", (int)getpid());
	snprintf(cmd, sizeof(cmd), "ip netns add %s && ip netns exec %s ip link set lo up && "
		 "ip netns exec %s tc qdisc add dev lo root tbf rate 2mbit burst 16kb latency "
		 "400ms", ns, ns, ns);
	if (system(cmd) != 0) {
		snprintf(cmd, sizeof(cmd), "ip netns del %s >/dev/null 2>&1", ns);
		ck_assert_int_ge(system(cmd), 0);
		test_skip("netns", "faults: cannot create a rate-limited namespace (tbf missing?)");
		return;
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		alarm(60);	/* bounded even if the migration hangs */
		_exit(netns_child(ns));
	}
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	snprintf(cmd, sizeof(cmd), "ip netns del %s", ns);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "the namespace child failed (status 0x%x; see stderr)", status);
}
END_TEST

/* A destination process killed mid-migration (SIGKILL, no RESULT, no FIN
 * from the application). */
START_TEST(destination_process_killed)
{
	struct setup su = { .channels = 2, .timeout_ms = 5000 };
	struct fguest src, dst2;
	mfd_error *err = NULL;
	const char *bdir = getenv("MFD_BUILDDIR");
	char tool[4096], line[512] = "", *uri;
	int pfd[2];
	pid_t pid;
	int status;

	if (!test_have_tool("faults: destination_process_killed"))
		return;
	snprintf(tool, sizeof(tool), "%s/tools/multifd", bdir);
	ck_assert_msg(access(tool, X_OK) == 0, "%s: %s (make builds it)", tool, strerror(errno));
	warm_up();
	int fds = count_fds(), threads = count_threads();

	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	pid = fork();
	if (pid == 0) {
		if (dup2(pfd[1], 3) == 3)
			execl(tool, "multifd", "recv", "--listen=tcp:127.0.0.1:0", "--size=16",
			      "--report-fd=3", "--quiet", "--param=multifd-channels=2", (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	/* "listen tcp:127.0.0.1:PORT\n" */
	size_t got = 0;

	while (got < sizeof(line) - 1 && !strchr(line, '\n')) {
		ssize_t n = read(pfd[0], line + got, sizeof(line) - 1 - got);

		if (n <= 0)
			break;
		got += (size_t)n;
		line[got] = '\0';
	}
	ck_assert_msg(strncmp(line, "listen ", 7) == 0, "recv said '%s'", line);
	uri = line + 7;
	uri[strcspn(uri, "\n")] = '\0';
	guest_init(&src, 16, true, &su);
	/* The tool's guest says who it is; its sections are never reached. */
	ck_assert_ok(mfd_migration_set_identity(src.m, "multifd-tool-guest-1", &err), err);
	set(src.m, "max-bandwidth", "8000000");
	ck_assert_ok(mfd_migrate(src.m, uri, &err), err);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 30000), MFD_STATE_ACTIVE);
	usleep(200000);
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	close(pfd[0]);
	ck_assert_int_lt(mfd_migration_wait(src.m, 30000, &err), 0);
	printf("faults: SIGKILL: source: %s\n", mfd_error_message(err));
	ck_assert_msg(strstr(mfd_error_message(err), "destination") ||
		      strstr(mfd_error_message(err), "channel"), "unclear: %s",
		      mfd_error_message(err));
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	ck_assert_int_eq(atomic_load(&src.vm_starts), atomic_load(&src.vm_stops));
	assert_source_intact(&src);
	set(src.m, "max-bandwidth", "0");
	guest_init(&dst2, 16, false, &su);
	ck_assert_ok(mfd_migration_set_identity(dst2.m, "multifd-tool-guest-1", &err), err);
	start_pair(&src, &dst2);
	assert_completed(&src, &dst2);
	guest_free(&dst2);
	guest_free(&src);
	assert_no_leaks(fds, threads);
}
END_TEST

Suite *suite_faults(void)
{
	Suite *s = suite_create("faults");
	TCase *tc = tcase_create("matrix");
	TCase *ext = tcase_create("external");

	tcase_add_unchecked_fixture(tc, pki_setup, pki_teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, fault_matrix, 0, N_SCENARIOS);
	suite_add_tcase(s, tc);
	TCase *sw = tcase_create("switchover");

	tcase_set_timeout(sw, 60);
	tcase_add_test(sw, switchover_result_write_fails);
	tcase_add_test(sw, switchover_result_cut);
	tcase_add_test(sw, switchover_slow_destination);
	tcase_add_test(sw, switchover_destination_start_fails);
	tcase_add_test(sw, switchover_result_before_eof);
	tcase_add_test(sw, switchover_result_during_postcopy);
	tcase_add_test(sw, switchover_confirm_completes);
	tcase_add_test(sw, switchover_confirm_mismatch);
	tcase_add_test(sw, switchover_confirm_result_lost);
	tcase_add_test(sw, switchover_confirm_lost);
	suite_add_tcase(s, sw);
	tcase_set_timeout(ext, 120);
	tcase_add_test(ext, ss_kill_during_precopy);
	tcase_add_test(ext, tbf_rate_limit_in_netns);
	tcase_add_test(ext, destination_process_killed);
	suite_add_tcase(s, ext);
	return s;
}
