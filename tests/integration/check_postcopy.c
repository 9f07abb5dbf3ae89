/* SPDX-License-Identifier: MIT */
/*
 * Postcopy end to end, in one process over loopback: the source's synthetic
 * guest dirties memory during precopy; at the switch the destination starts
 * its guest at once, whose threads touch pages at random (most not there
 * yet: each touch is a userfaultfd fault served over the return path) and
 * check every byte they see against what the source held when it stopped.
 * At the end the whole of RAM must equal the source's snapshot and pass the
 * a-b check.  Also: precopy pages racing the switch, the preempt channel, two
 * RAM blocks, a network cut (pause, recover, resume) and refusal without
 * userfaultfd (postcopy_refused_without_userfaultfd, which denies itself the
 * syscall and so runs everywhere).
 *
 * Needs userfaultfd (root, or vm.unprivileged_userfaultfd=1): the other tests
 * are skipped and counted otherwise (test_skip).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>

#include "tests/lib/certs.h"
#include "tests/lib/testlib.h"

#define PS 4096u
#define READERS 3

struct pguest {
	mfd_migration *m;
	uint8_t *ram;
	size_t size;
	bool source, preempt;
	/* source: an a-b writer; destination: readers started by vm_start */
	pthread_t writer, readers[READERS];
	atomic_bool run, stop, paused, readers_on;
	const uint8_t *expect;		/* destination readers compare with this */
	atomic_ullong touched, bad;
	uint8_t *snapshot;		/* source: RAM when the VM stopped */
	uint64_t regs[2];
	atomic_int vm_stops, vm_starts;
	atomic_bool started;		/* destination: the guest runs */
	unsigned touch_pause_us;	/* destination readers: pause between touches */
	bool idle;			/* destination: a guest that touches nothing */
};

#define NEED_UFFD()                                                                            \
	do {                                                                                   \
		if (!test_have_uffd("postcopy"))                                               \
			return;                                                                \
	} while (0)

static void *writer_thread(void *arg)
{
	struct pguest *g = arg;
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

/* Destination guest: touch random pages, check them against the source. */
static void *reader_thread(void *arg)
{
	struct pguest *g = arg;
	unsigned seed = (unsigned)(uintptr_t)pthread_self() ^ (unsigned)time(NULL);
	size_t pages = g->size / PS;

	while (atomic_load(&g->readers_on)) {
		size_t p = (size_t)rand_r(&seed) % pages;
		const volatile uint8_t *page = g->ram + p * PS;
		size_t off = (size_t)rand_r(&seed) % PS;

		/* Any byte: the first touch faults the whole page in. */
		if (page[off] != g->expect[p * PS + off] || page[0] != g->expect[p * PS])
			atomic_fetch_add(&g->bad, 1);
		/* Busy like a vCPU, but leave the two cores some room. */
		if (atomic_fetch_add(&g->touched, 1) % 64 == 0 || g->touch_pause_us)
			usleep(g->touch_pause_us ? g->touch_pause_us : 50);
	}
	return NULL;
}

static int vm_stop(void *opaque, mfd_error **errp)
{
	struct pguest *g = opaque;

	(void)errp;
	atomic_store(&g->stop, true);
	while (atomic_load(&g->run) && !atomic_load(&g->paused))
		usleep(100);
	atomic_fetch_add(&g->vm_stops, 1);
	/* The vCPU's last burst before it stops: every 8th page dirty, so postcopy
	 * always has pages the destination's guest must fault in. */
	for (size_t p = 0; p < g->size / PS; p += 8) {
		g->ram[p * PS + 1]++;
		mfd_ram_mark_dirty(g->m, g->ram + p * PS, 1);
	}
	memcpy(g->snapshot, g->ram, g->size);
	return 0;
}

static int vm_start(void *opaque, mfd_error **errp)
{
	struct pguest *g = opaque;

	(void)errp;
	atomic_fetch_add(&g->vm_starts, 1);
	if (!g->source && g->expect && !g->idle) {
		atomic_store(&g->readers_on, true);
		for (int i = 0; i < READERS; i++)
			ck_assert_int_eq(pthread_create(&g->readers[i], NULL, reader_thread, g), 0);
		atomic_store(&g->started, true);
	}
	atomic_store(&g->stop, false);
	return 0;
}

static int regs_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct pguest *g = opaque;

	(void)errp;
	mfd_stream_put_be64(s, g->regs[0]);
	return mfd_stream_put_be64(s, g->regs[1]);
}

static int regs_load(mfd_stream *s, void *opaque, uint32_t v, mfd_error **errp)
{
	struct pguest *g = opaque;
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

/* Sources whose test switches to postcopy itself: precopy never ends alone. */
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
	.switchover_policy = never_switch,
};

static void set(mfd_migration *m, const char *name, const char *value)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_set_param(m, name, value, &err), err);
}

/* Register the guest's RAM as two blocks (the first three quarters, the last
 * quarter) instead of one: set by a test around its pair. */
static bool two_blocks;

static void pguest_init(struct pguest *g, size_t mib, bool source, unsigned channels,
			const char *codec, bool preempt)
{
	mfd_error *err = NULL;
	char v[16];

	memset(g, 0, sizeof(*g));
	g->size = mib << 20;
	g->source = source;
	g->preempt = preempt;
	g->ram = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(g->ram, MAP_FAILED);
	ck_assert_ok(mfd_migration_new(&g->m, &err), err);
	if (two_blocks) {
		size_t lo = g->size / 4 * 3;

		ck_assert_ok(mfd_ram_block_add(g->m, "pc.ram", g->ram, lo, PS, &err), err);
		ck_assert_ok(mfd_ram_block_add(g->m, "pc.ram.high", g->ram + lo, g->size - lo, PS,
					       &err), err);
	} else {
		ck_assert_ok(mfd_ram_block_add(g->m, "pc.ram", g->ram, g->size, PS, &err), err);
	}
	ck_assert_ok(mfd_register_live(g->m, "cpu", 0, 1, &regs_ops, g, &err), err);
	ck_assert_ok(mfd_migration_set_hooks(g->m, &hooks, g, &err), err);
	snprintf(v, sizeof(v), "%u", channels);
	set(g->m, "multifd-channels", v);
	set(g->m, "multifd-compression", codec);
	set(g->m, "multifd-compression-adaptive", "off");	/* carry the codec's packets */
	set(g->m, "channel-timeout-ms", "20000");
	set(g->m, "postcopy-ram", "on");
	set(g->m, "postcopy-preempt", preempt ? "on" : "off");
	if (source) {
		/* A quarter zero, the rest unique to each page (a page at the wrong
		 * offset shows); byte 0 of every page is the counter, byte 1 the
		 * vCPU's last burst (vm_stop). */
		for (size_t p = 0; p < g->size / PS; p++) {
			if (p % 4)
				test_fill_page(g->ram + p * PS, PS, 0, p, 0);
			g->ram[p * PS] = 0;
		}
		g->regs[0] = 0x0123456789abcdefull;
		g->regs[1] = 0xfedcba9876543210ull;
		g->snapshot = malloc(g->size);
		ck_assert_ptr_nonnull(g->snapshot);
		atomic_store(&g->run, true);
		ck_assert_int_eq(pthread_create(&g->writer, NULL, writer_thread, g), 0);
	}
}

static void pguest_free(struct pguest *g)
{
	if (atomic_load(&g->readers_on)) {
		atomic_store(&g->readers_on, false);
		for (int i = 0; i < READERS; i++)
			pthread_join(g->readers[i], NULL);
	}
	if (g->source && atomic_load(&g->run)) {
		atomic_store(&g->run, false);
		pthread_join(g->writer, NULL);
	}
	mfd_migration_free(g->m);
	munmap(g->ram, g->size);
	free(g->snapshot);
}

static bool terminal_state(enum mfd_state st)
{
	return st == MFD_STATE_COMPLETED || st == MFD_STATE_FAILED || st == MFD_STATE_CANCELLED;
}

/* Wait until @m reaches @want (or ends); returns the state seen. */
static enum mfd_state wait_state(mfd_migration *m, enum mfd_state want, int timeout_ms)
{
	uint64_t end = test_now_ms() + (uint64_t)timeout_ms;
	enum mfd_state st;

	while ((st = mfd_migration_state(m)) != want && test_now_ms() < end &&
	       st != MFD_STATE_COMPLETED && st != MFD_STATE_FAILED && st != MFD_STATE_CANCELLED)
		usleep(2000);
	return st;
}

/* start_pair() over socketpairs given with mfd_migrate_channels(). */
static bool vmm_channels;

static void start_pair_on_channels(struct pguest *src, struct pguest *dst)
{
	struct mfd_channel_set ss = { .size = sizeof(ss) }, ds = { .size = sizeof(ds) };
	mfd_channel *a[258], *b[258];
	mfd_error *err = NULL;
	int64_t n = 0;

	ck_assert_ok(mfd_get_param_int(src->m, "multifd-channels", &n, &err), err);
	for (int64_t i = 0; i < n + 2; i++)
		ck_assert_ok(mfd_channel_socketpair(&a[i], &b[i], &err), err);
	ss.main = a[0];
	ds.main = b[0];
	if (src->preempt) {
		ss.preempt = a[1];
		ds.preempt = b[1];
	} else {
		mfd_channel_free(a[1]);
		mfd_channel_free(b[1]);
	}
	ss.nmultifd = ds.nmultifd = (uint32_t)n;
	ss.multifd = &a[2];
	ds.multifd = &b[2];
	ck_assert_ok(mfd_migrate_incoming_channels(dst->m, &ds, &err), err);
	ck_assert_ok(mfd_migrate_channels(src->m, &ss, &err), err);
}

static void start_pair(struct pguest *src, struct pguest *dst)
{
	mfd_error *err = NULL;
	char uri[256];

	/* The destination's readers check against the source's stopped memory. */
	dst->expect = src->snapshot;
	if (vmm_channels) {
		start_pair_on_channels(src, dst);
		return;
	}
	ck_assert_ok(mfd_migrate_incoming(dst->m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst->m, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate(src->m, uri, &err), err);
}

static void finish_pair(struct pguest *src, struct pguest *dst, bool expect_faults)
{
	mfd_error *err = NULL;
	struct mfd_stats st = { .size = sizeof(st) }, sst = { .size = sizeof(st) };
	char *json;

	ck_assert_ok(mfd_migration_wait(src->m, 120000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst->m, 120000, &err), err);
	ck_assert_int_eq(mfd_migration_state(src->m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(mfd_migration_state(dst->m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(atomic_load(&src->vm_stops), 1);
	ck_assert_int_eq(atomic_load(&src->vm_starts), 0);
	ck_assert_int_eq(atomic_load(&dst->vm_starts), 1);
	/* Let the readers touch a little more, now that every page is there. */
	usleep(20000);
	atomic_store(&dst->readers_on, false);
	for (int i = 0; i < READERS; i++)
		pthread_join(dst->readers[i], NULL);
	ck_assert_uint_gt(atomic_load(&dst->touched), 0);
	ck_assert_msg(atomic_load(&dst->bad) == 0, "%llu reads saw wrong bytes",
		      (unsigned long long)atomic_load(&dst->bad));
	ck_assert_pages_eq(src->snapshot, dst->ram, src->size, PS);
	ck_assert_ab(dst->ram, dst->size, PS);
	ck_assert_mem_eq(src->regs, dst->regs, sizeof(src->regs));
	ck_assert_int_eq(mfd_migration_stats(dst->m, &st), 0);
	ck_assert_int_eq(mfd_migration_stats(src->m, &sst), 0);
	if (expect_faults) {
		ck_assert_uint_gt(st.postcopy_faults, 0);
		ck_assert_uint_gt(sst.ram_postcopy_requests, 0);
		ck_assert_uint_ge(st.postcopy_fault_us_max, st.postcopy_fault_us_median);
	}
	printf("postcopy: %llu faults, latency median %llu us p99 %llu us max %llu us, "
	       "%llu requests served, downtime %llu ms, postcopy %llu ms\n",
	       (unsigned long long)st.postcopy_faults,
	       (unsigned long long)st.postcopy_fault_us_median,
	       (unsigned long long)st.postcopy_fault_us_p99,
	       (unsigned long long)st.postcopy_fault_us_max,
	       (unsigned long long)sst.ram_postcopy_requests, (unsigned long long)sst.downtime,
	       (unsigned long long)sst.postcopy_time_ms);
	/* Both sides count the same main stream; the destination also counts
	 * each channel's 128-byte hello, the source the preempt channel's bytes
	 * (its end-of-stream at least). */
	if (sst.postcopy_pauses == 0) {
		uint64_t src_bytes = sst.ram_transferred + 128u * sst.channels;

		if (src->preempt)
			ck_assert_uint_gt(src_bytes, st.ram_transferred);
		else
			ck_assert_uint_eq(src_bytes, st.ram_transferred);
	}
	json = mfd_migration_stats_json(dst->m);
	ck_assert_ptr_nonnull(strstr(json, "\"postcopy\": {\"requests\""));
	free(json);
}

/* TLS on both sides of a pair: "psk" or "x509" (every channel, the preempt
 * one included), with a fresh PKI in @pki that the caller destroys. */
static void use_tls(struct pguest *src, struct pguest *dst, const char *kind,
		    struct test_pki *pki)
{
	char path[512];

	ck_assert_msg(certs_create(pki) == 0, "cannot create the test PKI (see stderr)");
	if (strcmp(kind, "psk") == 0) {
		certs_path(pki, "psk-main", NULL, path, sizeof(path));
		set(src->m, "tls-psk-file", path);
		set(dst->m, "tls-psk-file", path);
	} else {
		set(src->m, "tls-creds", certs_path(pki, "client", NULL, path, sizeof(path)));
		set(dst->m, "tls-creds", certs_path(pki, "server", NULL, path, sizeof(path)));
	}
}

/* Postcopy after @passes precopy passes (0: as soon as some pages are in
 * flight on multifd, so they race the switch); @tls NULL, "psk" or "x509". */
static void run_postcopy_tls(unsigned channels, const char *codec, bool preempt,
			     unsigned passes, const char *tls)
{
	struct pguest src, dst;
	mfd_error *err = NULL;
	struct mfd_stats st = { .size = sizeof(st) };
	struct test_pki pki;
	uint64_t end = test_now_ms() + 60000;

	pguest_init(&src, 32, true, channels, codec, preempt);
	pguest_init(&dst, 32, false, channels, codec, preempt);
	if (tls)
		use_tls(&src, &dst, tls, &pki);
	/* Slow enough that the guest runs well before the last page arrives. */
	set(src.m, "max-postcopy-bandwidth", "40000000");
	start_pair(&src, &dst);
	for (;;) {
		ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
		if (passes ? st.iterations >= passes : st.ram_multifd_bytes > (2u << 20))
			break;
		ck_assert_msg(test_now_ms() < end, "precopy made no progress: %llu passes",
			      (unsigned long long)st.iterations);
		usleep(1000);
	}
	ck_assert_ok(mfd_migrate_start_postcopy(src.m, &err), err);
	/* Only once. */
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_POSTCOPY_ACTIVE, 30000),
			 MFD_STATE_POSTCOPY_ACTIVE);
	finish_pair(&src, &dst, true);
	pguest_free(&src);
	pguest_free(&dst);
	if (tls)
		certs_destroy(&pki);
}

static void run_postcopy(unsigned channels, const char *codec, bool preempt, unsigned passes)
{
	run_postcopy_tls(channels, codec, preempt, passes, NULL);
}

START_TEST(postcopy_after_precopy_passes)
{
	static const unsigned chans[] = { 1, 4 };
	static const char *const codecs[] = { "none", "zstd" };
	const char *codec = codecs[_i / 2];

	NEED_UFFD();
	if (strcmp(codec, "none") && !mfd_compress_find(codec)) {
		test_skip("codec", "postcopy: %s not built in", codec);
		return;
	}
	run_postcopy(chans[_i % 2], codec, false, 2);
}
END_TEST

START_TEST(postcopy_with_preempt)
{
	NEED_UFFD();
	run_postcopy(_i ? 4 : 1, _i ? "lz4" : "none", true, 1);
}
END_TEST

/* Two RAM blocks: the push crosses from one to the other (the destination's
 * runs of pushed pages end at the block), requests name either. */
START_TEST(postcopy_two_blocks)
{
	NEED_UFFD();
	two_blocks = true;
	run_postcopy(2, "none", _i, 1);
	two_blocks = false;
}
END_TEST

/* Postcopy with preempt over the VMM's own channels (socketpairs), TLS-PSK
 * set up on them by the library. */
START_TEST(postcopy_over_vmm_channels)
{
	NEED_UFFD();
	vmm_channels = true;
	run_postcopy_tls(2, "none", true, 1, _i ? "psk" : NULL);
	vmm_channels = false;
}
END_TEST

/* Requested pages on a TLS preempt channel, pushed pages on a TLS main one. */
START_TEST(postcopy_over_tls)
{
	NEED_UFFD();
	run_postcopy_tls(2, "none", true, 1, _i ? "x509" : "psk");
}
END_TEST

START_TEST(precopy_pages_race_the_switch)
{
	NEED_UFFD();
	run_postcopy(_i ? 4 : 1, "none", _i, 0);
}
END_TEST

/* The policy switches by itself when precopy does not converge. */
static int always_postcopy(void *opaque, const struct mfd_policy_info *info)
{
	(void)opaque;
	return info->iteration >= 1 ? MFD_POLICY_POSTCOPY : 0;
}

static const mfd_vmm_hooks policy_hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = vm_stop,
	.vm_start = vm_start,
	.switchover_policy = always_postcopy,
};

START_TEST(policy_can_choose_postcopy)
{
	struct pguest src, dst;
	mfd_error *err = NULL;

	NEED_UFFD();
	pguest_init(&src, 16, true, 2, "none", false);
	pguest_init(&dst, 16, false, 2, "none", false);
	ck_assert_ok(mfd_migration_set_hooks(src.m, &policy_hooks, &src, &err), err);
	start_pair(&src, &dst);
	finish_pair(&src, &dst, false);
	struct mfd_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
	ck_assert_uint_gt(st.postcopy_time_ms, 0);	/* it did switch */
	ck_assert_uint_ge(st.iterations, 1);
	pguest_free(&src);
	pguest_free(&dst);
}
END_TEST

/* Wait (20 s at most) until the source reports less than @left to push. */
static void wait_remaining_below(mfd_migration *m, uint64_t left, struct mfd_stats *st)
{
	uint64_t end = test_now_ms() + 20000;

	for (;;) {
		ck_assert_int_eq(mfd_migration_stats(m, st), 0);
		if (st->ram_remaining < left)
			return;
		ck_assert_msg(test_now_ms() < end, "ram_remaining stays at %llu during postcopy",
			      (unsigned long long)st->ram_remaining);
		usleep(5000);
	}
}

/* Cut the connection during postcopy: both pause, then recover. */
/* Connects to "tcp:127.0.0.1:PORT", sends @junk bytes and closes, unless
 * @keep: then the connection stays open and is returned. */
static int stray_probe(const char *uri, size_t junk, bool keep)
{
	const char *colon = strrchr(uri, ':');
	struct sockaddr_in sa = { .sin_family = AF_INET };
	uint8_t buf[256];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_nonnull(colon);
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	memset(buf, 0x5a, sizeof(buf));
	ck_assert_uint_le(junk, sizeof(buf));
	if (junk)
		ck_assert_int_eq(write(fd, buf, junk), (ssize_t)junk);
	if (keep)
		return fd;
	close(fd);
	return -1;
}

static void cut_and_recover_probed(bool preempt, bool use_ss, bool probes);

static void cut_and_recover(bool preempt, bool use_ss)
{
	cut_and_recover_probed(preempt, use_ss, false);
}

/* With @probes, stray connections reach the recovery listener before the
 * source does. */
static void cut_and_recover_probed(bool preempt, bool use_ss, bool probes)
{
	int silent = -1;
	struct pguest src, dst;
	mfd_error *err = NULL;
	char uri[256], cmd[512];
	struct mfd_stats st = { .size = sizeof(st) };

	pguest_init(&src, 32, true, 2, "none", preempt);
	pguest_init(&dst, 32, false, 2, "none", preempt);
	/* Seconds of postcopy: a slow push, and a guest that touches few pages. */
	set(src.m, "max-postcopy-bandwidth", "4000000");
	dst.touch_pause_us = 2000;
	start_pair(&src, &dst);
	ck_assert_int_eq(mfd_migration_listen_uri(dst.m, uri, sizeof(uri)), 0);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 30000), MFD_STATE_ACTIVE);
	/* The guest rewrites all of its memory now: whatever precopy sent, the
	 * switch finds 32 MiB to push, 8 s at this bandwidth. */
	mfd_ram_mark_dirty(src.m, src.ram, src.size);
	ck_assert_ok(mfd_migrate_start_postcopy(src.m, &err), err);
	ck_assert_int_eq(wait_state(dst.m, MFD_STATE_POSTCOPY_ACTIVE, 30000),
			 MFD_STATE_POSTCOPY_ACTIVE);
	usleep(300000);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_POSTCOPY_ACTIVE);
	/* The figures move during postcopy: what is left to push shrinks. */
	ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
	uint64_t left = st.ram_remaining;

	ck_assert_uint_gt(left, 0);
	ck_assert_uint_lt(left, src.size);
	wait_remaining_below(src.m, left, &st);
	if (use_ss) {
		/* From outside, as an operator's network would: kill the sockets. */
		const char *port = strrchr(uri, ':') + 1;

		snprintf(cmd, sizeof(cmd), "ss -K -t dst 127.0.0.1:%s >/dev/null 2>&1", port);
		ck_assert_int_eq(system(cmd), 0);
	} else {
		/* In-process: cancel during postcopy pauses (migrate-pause). */
		mfd_migrate_cancel(src.m);
	}
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_POSTCOPY_PAUSED, 30000),
			 MFD_STATE_POSTCOPY_PAUSED);
	ck_assert_int_eq(wait_state(dst.m, MFD_STATE_POSTCOPY_PAUSED, 30000),
			 MFD_STATE_POSTCOPY_PAUSED);
	/* Paused, not lost: the guest keeps its pages; it is not finished. */
	ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
	ck_assert_uint_gt(st.ram_remaining, 0);
	uint64_t sent_before = st.ram_transferred;
	left = st.ram_remaining;
	/* Resume before recover is refused only by state; recover first. */
	ck_assert_int_eq(mfd_migrate_recover(src.m, "tcp:127.0.0.1:0", &err), MFD_ESTATE);
	mfd_error_free(err);
	err = NULL;
	ck_assert_ok(mfd_migrate_recover(dst.m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst.m, uri, sizeof(uri)), 0);
	if (probes) {
		stray_probe(uri, 0, false);
		stray_probe(uri, 200, false);
		usleep(200 * 1000);
		silent = stray_probe(uri, 0, true);
	}
	ck_assert_ok(mfd_migrate_resume(src.m, uri, &err), err);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_POSTCOPY_ACTIVE, 30000),
			 MFD_STATE_POSTCOPY_ACTIVE);
	/* Rounds on the new connection: its bytes add to the lost one's. */
	wait_remaining_below(src.m, left, &st);
	ck_assert_uint_gt(st.ram_transferred, sent_before);
	set(src.m, "max-postcopy-bandwidth", "0");
	finish_pair(&src, &dst, false);
	ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
	ck_assert_uint_eq(st.postcopy_pauses, 1);
	ck_assert_uint_eq(st.ram_remaining, 0);
	ck_assert_int_eq(mfd_migration_stats(dst.m, &st), 0);
	ck_assert_uint_eq(st.postcopy_pauses, 1);
	if (silent >= 0)
		close(silent);
	pguest_free(&src);
	pguest_free(&dst);
}

START_TEST(pause_and_recover_in_process)
{
	NEED_UFFD();
	cut_and_recover(_i, false);
}
END_TEST

/* Strays at the recovery listener (a scan, junk, a silent connection) do not
 * fail the recovery: the source resumes through them. */
START_TEST(recover_through_stray_connections)
{
	NEED_UFFD();
	cut_and_recover_probed(true, false, true);
}
END_TEST

START_TEST(network_cut_with_ss_then_recover)
{
	NEED_UFFD();
	if (!test_have_root_tool("postcopy: ss -K", "iproute2", "ss -h >/dev/null 2>&1"))
		return;
	cut_and_recover(_i, true);
}
END_TEST

START_TEST(cancel_while_paused_loses_the_vm_clearly)
{
	struct pguest src, dst;
	mfd_error *err = NULL;

	NEED_UFFD();
	pguest_init(&src, 16, true, 1, "none", false);
	pguest_init(&dst, 16, false, 1, "none", false);
	set(src.m, "max-postcopy-bandwidth", "2000000");
	dst.touch_pause_us = 2000;
	start_pair(&src, &dst);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 30000), MFD_STATE_ACTIVE);
	/* All of RAM to push after the switch (8 s): the cancel finds postcopy. */
	mfd_ram_mark_dirty(src.m, src.ram, src.size);
	ck_assert_ok(mfd_migrate_start_postcopy(src.m, &err), err);
	ck_assert_int_eq(wait_state(dst.m, MFD_STATE_POSTCOPY_ACTIVE, 30000),
			 MFD_STATE_POSTCOPY_ACTIVE);
	mfd_migrate_cancel(src.m);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_POSTCOPY_PAUSED, 30000),
			 MFD_STATE_POSTCOPY_PAUSED);
	ck_assert_int_eq(wait_state(dst.m, MFD_STATE_POSTCOPY_PAUSED, 30000),
			 MFD_STATE_POSTCOPY_PAUSED);
	mfd_migrate_cancel(src.m);
	mfd_migrate_cancel(dst.m);
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_ECANCELED);
	ck_assert_mfd_error(err, MFD_ECANCELED, "the VM is lost");
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
	ck_assert_mfd_error(err, MFD_ECANCELED, "must be stopped");
	/* The source never restarts a VM the destination may have run. */
	ck_assert_int_eq(atomic_load(&src.vm_starts), 0);
	/* The destination's readers compare with the source's snapshot: stop
	 * them before it goes. */
	pguest_free(&dst);
	pguest_free(&src);
}
END_TEST

/*
 * A guest that does not fault during a push that outlasts channel-timeout-ms:
 * with postcopy-preempt nothing travels on the preempt channel either way
 * (no request, so no requested page), and neither side may take that quiet
 * for a stalled connection.  Both must complete without a pause.
 */
START_TEST(idle_guest_with_preempt_does_not_pause)
{
	struct pguest src, dst;
	mfd_error *err = NULL;
	struct mfd_stats sst = { .size = sizeof(sst) }, dst_st = { .size = sizeof(dst_st) };
	enum mfd_state ss, ds;
	uint64_t end;

	NEED_UFFD();
	pguest_init(&src, 16, true, 2, "none", true);
	pguest_init(&dst, 16, false, 2, "none", true);
	dst.idle = true;
	set(src.m, "channel-timeout-ms", "1000");
	set(dst.m, "channel-timeout-ms", "1000");
	/* 12 MiB of non-zero pages at 4 MB/s: a push of about 3 s. */
	set(src.m, "max-postcopy-bandwidth", "4000000");
	start_pair(&src, &dst);
	ck_assert_int_eq(wait_state(src.m, MFD_STATE_ACTIVE, 30000), MFD_STATE_ACTIVE);
	mfd_ram_mark_dirty(src.m, src.ram, src.size);
	ck_assert_ok(mfd_migrate_start_postcopy(src.m, &err), err);
	end = test_now_ms() + 20000;
	for (;;) {
		ss = mfd_migration_state(src.m);
		ds = mfd_migration_state(dst.m);
		if ((terminal_state(ss) && terminal_state(ds)) ||
		    ss == MFD_STATE_POSTCOPY_PAUSED || ds == MFD_STATE_POSTCOPY_PAUSED ||
		    test_now_ms() >= end)
			break;
		usleep(5000);
	}
	if (ss != MFD_STATE_COMPLETED || ds != MFD_STATE_COMPLETED) {
		/* Paused (or stuck): end both before failing. */
		mfd_migrate_cancel(src.m);
		mfd_migrate_cancel(dst.m);
		mfd_migration_wait(src.m, 30000, NULL);
		mfd_migration_wait(dst.m, 30000, NULL);
	}
	ck_assert_msg(ss == MFD_STATE_COMPLETED && ds == MFD_STATE_COMPLETED,
		      "an idle postcopy with preempt ended with the source %s and the "
		      "destination %s", mfd_state_name(ss), mfd_state_name(ds));
	ck_assert_ok(mfd_migration_wait(src.m, 1000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 1000, &err), err);
	ck_assert_int_eq(mfd_migration_stats(src.m, &sst), 0);
	ck_assert_int_eq(mfd_migration_stats(dst.m, &dst_st), 0);
	ck_assert_uint_eq(sst.postcopy_pauses, 0);
	ck_assert_uint_eq(dst_st.postcopy_pauses, 0);
	ck_assert_uint_eq(dst_st.postcopy_faults, 0);
	/* The quiet lasted longer than the deadline it must not trip. */
	ck_assert_msg(sst.postcopy_time_ms > 2000, "postcopy took only %llu ms",
		      (unsigned long long)sst.postcopy_time_ms);
	ck_assert_msg(memcmp(src.snapshot, dst.ram, src.size) == 0, "RAM differs");
	pguest_free(&src);
	pguest_free(&dst);
}
END_TEST

START_TEST(configuration_errors)
{
	mfd_migration *m;
	mfd_error *err = NULL;
	uint8_t *ram = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_ram_block_add(m, "pc.ram", ram, 1 << 20, PS, &err), err);
	set(m, "vm-stopped-externally", "on");	/* no vCPU; the errors below come first */
	set(m, "postcopy-preempt", "on");
	ck_assert_int_eq(mfd_migrate(m, "tcp:127.0.0.1:9", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "postcopy-preempt needs postcopy-ram");
	set(m, "postcopy-ram", "on");
	ck_assert_int_eq(mfd_migrate(m, "file:/dev/null", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "postcopy-ram needs the return path");
	ck_assert_int_eq(mfd_migrate_start_postcopy(m, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "no outgoing migration");
	ck_assert_int_eq(mfd_migrate_resume(m, "tcp:127.0.0.1:9", &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "no outgoing migration");
	ck_assert_str_eq(mfd_state_name(MFD_STATE_POSTCOPY_PAUSED), "postcopy-paused");
	ck_assert_str_eq(mfd_state_name(MFD_STATE_POSTCOPY_ACTIVE), "postcopy-active");
	ck_assert_str_eq(mfd_state_name(MFD_STATE_POSTCOPY_RECOVER), "postcopy-recover");
	mfd_migration_free(m);
	munmap(ram, 1 << 20);
}
END_TEST

/* One side with postcopy-ram, the other without: refused at setup, both ways. */
START_TEST(mismatched_postcopy_refused_at_setup)
{
	struct pguest src, dst;
	mfd_error *err = NULL;

	pguest_init(&src, 4, true, 1, "none", false);
	pguest_init(&dst, 4, false, 1, "none", false);
	set(_i ? src.m : dst.m, "postcopy-ram", "off");
	start_pair(&src, &dst);
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
	ck_assert_mfd_error(err, MFD_EPROTO, "set them alike on both sides");
	ck_assert_int_ne(mfd_migration_wait(src.m, 30000, &err), 0);
	mfd_error_free(err);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	/* Precopy had not stopped the VM: nothing to restart, nothing lost. */
	ck_assert_int_eq(atomic_load(&src.vm_stops), 0);
	pguest_free(&src);
	pguest_free(&dst);
}
END_TEST

/* userfaultfd(2) fails with EPERM in this process from now on (seccomp). */
static void deny_userfaultfd(void)
{
	struct sock_filter insns[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(insns) / sizeof(insns[0]), .filter = insns };

	ck_assert_int_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
	ck_assert_msg(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) == 0,
		      "seccomp: %s", strerror(errno));
	ck_assert_int_lt(syscall(SYS_userfaultfd, O_CLOEXEC), 0);
	ck_assert_int_eq(errno, EPERM);
}

/*
 * A destination without userfaultfd (as without root): postcopy-ram is
 * refused at POSTCOPY_ADVISE, during setup, with a message that says why,
 * before the source stops its VM.  Runs with or without userfaultfd here: a
 * child process denies itself the syscall (the filter cannot be undone, so
 * not in the test's own process, which runs the next tests under CK_FORK=no).
 */
START_TEST(postcopy_refused_without_userfaultfd)
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct pguest src, dst;
		mfd_error *err = NULL;

		alarm(60);	/* bounded even if the refusal hangs */
		deny_userfaultfd();
		pguest_init(&src, 4, true, 2, "none", false);
		pguest_init(&dst, 4, false, 2, "none", false);
		start_pair(&src, &dst);
		ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
		printf("postcopy: without userfaultfd: destination: %s\n", mfd_error_message(err));
		ck_assert_mfd_error(err, MFD_ENOTSUP, "postcopy-ram: userfaultfd is not available "
				    "here (Operation not permitted); run as root");
		ck_assert_int_ne(mfd_migration_wait(src.m, 30000, &err), 0);
		printf("postcopy: without userfaultfd: source: %s\n", mfd_error_message(err));
		ck_assert_ptr_nonnull(strstr(mfd_error_message(err), "POSTCOPY_ADVISE"));
		ck_assert_ptr_nonnull(strstr(mfd_error_message(err), "userfaultfd is not available"));
		mfd_error_free(err);
		ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
		ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_FAILED);
		/* Refused during setup: the source's VM never stopped. */
		ck_assert_int_eq(atomic_load(&src.vm_stops), 0);
		ck_assert_int_eq(atomic_load(&dst.vm_starts), 0);
		pguest_free(&src);
		pguest_free(&dst);
		fflush(stdout);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "the child without userfaultfd failed (status 0x%x)", status);
}
END_TEST

Suite *suite_postcopy(void)
{
	Suite *s = suite_create("postcopy");
	TCase *tc = tcase_create("postcopy");

	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, postcopy_after_precopy_passes, 0, 4);
	tcase_add_loop_test(tc, postcopy_with_preempt, 0, 2);
	tcase_add_loop_test(tc, postcopy_two_blocks, 0, 2);
	tcase_add_loop_test(tc, precopy_pages_race_the_switch, 0, 2);
	tcase_add_loop_test(tc, postcopy_over_tls, 0, 2);
	tcase_add_loop_test(tc, postcopy_over_vmm_channels, 0, 2);
	tcase_add_test(tc, policy_can_choose_postcopy);
	tcase_add_loop_test(tc, pause_and_recover_in_process, 0, 2);
	tcase_add_loop_test(tc, network_cut_with_ss_then_recover, 0, 2);
	tcase_add_test(tc, cancel_while_paused_loses_the_vm_clearly);
	tcase_add_test(tc, idle_guest_with_preempt_does_not_pause);
	tcase_add_test(tc, configuration_errors);
	tcase_add_loop_test(tc, mismatched_postcopy_refused_at_setup, 0, 2);
	tcase_add_test(tc, postcopy_refused_without_userfaultfd);
	suite_add_tcase(s, tc);
	tc = tcase_create("strays");
	tcase_add_test(tc, recover_through_stray_connections);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}
