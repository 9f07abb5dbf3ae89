/* SPDX-License-Identifier: MIT */
/*
 * The migration engine end to end, in one process over loopback: a source
 * and a destination mfd_migration, a synthetic guest whose threads keep
 * writing while it migrates, the a-b checker and a full compare at
 * switchover, cancel, failure reporting through the return path, and
 * auto-converge.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "engine/internal.h"
#include "tests/lib/certs.h"
#include "tests/lib/testlib.h"

#define PS 4096u

struct guest {
	mfd_migration *m;
	uint8_t *ram;
	size_t size;
	/* a-b workload: one thread walks the pages incrementing byte 0 */
	pthread_t writer;
	atomic_bool run, stop;
	atomic_int paused;	/* the writer acknowledged the stop */
	atomic_int throttle;
	atomic_int throttle_calls;
	uint8_t *snapshot;	/* the source's memory at switchover */
	uint64_t cpu_regs[4];	/* a small device */
	int vm_stops, vm_starts;
	bool slow_writer;
};

static void *writer_thread(void *arg)
{
	struct guest *g = arg;
	size_t pages = g->size / PS;

	while (atomic_load(&g->run)) {
		for (size_t p = 0; p < pages && atomic_load(&g->run); p++) {
			while (atomic_load(&g->stop)) {
				atomic_store(&g->paused, 1);
				if (!atomic_load(&g->run))
					return NULL;
				usleep(200);
			}
			atomic_store(&g->paused, 0);
			g->ram[p * PS]++;
			mfd_ram_mark_dirty(g->m, g->ram + p * PS, 1);
			if (g->slow_writer || (p % 64) == 0) {
				int t = atomic_load(&g->throttle);

				/* Throttled: sleep in proportion, as a slowed vCPU would. */
				if (t)
					usleep((useconds_t)(t * 2));
				else if (!g->slow_writer)
					usleep(200);	/* ~1 GiB/s of page writes at most */
			}
		}
	}
	return NULL;
}

static int vm_stop(void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	atomic_store(&g->stop, true);
	while (atomic_load(&g->run) && !atomic_load(&g->paused))
		usleep(100);
	g->vm_stops++;
	if (g->snapshot)
		memcpy(g->snapshot, g->ram, g->size);
	return 0;
}

static int vm_start(void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	g->vm_starts++;
	atomic_store(&g->stop, false);
	return 0;
}

static void throttle(void *opaque, int percent)
{
	struct guest *g = opaque;

	atomic_store(&g->throttle, percent);
	if (percent)
		atomic_fetch_add(&g->throttle_calls, 1);
}

static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	for (int i = 0; i < 4; i++)
		mfd_stream_put_be64(s, g->cpu_regs[i]);
	return mfd_stream_error(s, NULL);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t v, mfd_error **errp)
{
	struct guest *g = opaque;
	int r = 0;

	(void)v;
	(void)errp;
	for (int i = 0; i < 4 && r == 0; i++)
		r = mfd_stream_get_be64(s, &g->cpu_regs[i]);
	return r;
}

static const mfd_save_handlers cpu_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = cpu_save,
	.load_state = cpu_load,
};

static const mfd_vmm_hooks hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = vm_stop,
	.vm_start = vm_start,
	.throttle = throttle,
};

static void guest_init(struct guest *g, size_t mib, bool source, unsigned channels,
		       const char *codec)
{
	mfd_error *err = NULL;
	char v[16];

	memset(g, 0, sizeof(*g));
	g->size = mib << 20;
	g->ram = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(g->ram, MAP_FAILED);
	ck_assert_ok(mfd_migration_new(&g->m, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->m, "pc.ram", g->ram, g->size, PS, &err), err);
	ck_assert_ok(mfd_register_live(g->m, "cpu", 0, 1, &cpu_ops, g, &err), err);
	ck_assert_ok(mfd_migration_set_hooks(g->m, &hooks, g, &err), err);
	snprintf(v, sizeof(v), "%u", channels);
	ck_assert_ok(mfd_set_param(g->m, "multifd-channels", v, &err), err);
	ck_assert_ok(mfd_set_param(g->m, "multifd-compression", codec, &err), err);
	/* Loopback is faster than any codec: adaptive compression would send
	 * raw, and these runs are here to carry the codec's packets. */
	ck_assert_ok(mfd_set_param(g->m, "multifd-compression-adaptive", "off", &err), err);
	ck_assert_ok(mfd_set_param(g->m, "channel-timeout-ms", "20000", &err), err);
	if (source) {
		/* Half zero pages, the rest unique to each page (a page at the
		 * wrong offset shows); byte 0 of each page is the counter. */
		for (size_t p = 0; p < g->size / PS; p++) {
			if (p % 2)
				test_fill_page(g->ram + p * PS, PS, 0, p, 0);
			g->ram[p * PS] = 0;	/* the a-b counters start equal */
		}
		for (int i = 0; i < 4; i++)
			g->cpu_regs[i] = 0x1111111111111111ull * (uint64_t)(i + 1);
		g->snapshot = malloc(g->size);
		ck_assert_ptr_nonnull(g->snapshot);
	}
}

static void guest_start_writer(struct guest *g)
{
	atomic_store(&g->run, true);
	ck_assert_int_eq(pthread_create(&g->writer, NULL, writer_thread, g), 0);
}

static void guest_free(struct guest *g)
{
	if (atomic_load(&g->run)) {
		atomic_store(&g->run, false);
		pthread_join(g->writer, NULL);
	}
	mfd_migration_free(g->m);
	munmap(g->ram, g->size);
	free(g->snapshot);
}

/* The a-b checker: byte 0 of every page equals its predecessor or is one less,
 * with at most one step down (where the writer was when the VM stopped). */
static void start_pair(struct guest *src, struct guest *dst, const char *listen)
{
	mfd_error *err = NULL;
	char uri[256];

	ck_assert_ok(mfd_migrate_incoming(dst->m, listen, &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst->m, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate(src->m, uri, &err), err);
}

/* A live migration of a 32 MiB guest, checked byte for byte; @st gets the
 * source's statistics. */
static void migrate_live_stats(unsigned channels, const char *codec, const char *listen,
			       bool zero_copy, struct mfd_stats *out)
{
	struct guest src, dst;
	mfd_error *err = NULL;
	struct mfd_stats st = { .size = sizeof(st) };
	char *json;

	guest_init(&src, 32, true, channels, codec);
	guest_init(&dst, 32, false, channels, codec);
	/* Sanitizer builds run the codecs many times slower: give them room. */
	ck_assert_ok(mfd_set_param(src.m, "downtime-limit", "1000", &err), err);
	if (zero_copy)
		ck_assert_ok(mfd_set_param(src.m, "zero-copy-send", "on", &err), err);
	guest_start_writer(&src);
	start_pair(&src, &dst, listen);
	ck_assert_ok(mfd_migration_wait(src.m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 60000, &err), err);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(src.vm_stops, 1);
	ck_assert_int_eq(src.vm_starts, 0);
	ck_assert_int_eq(dst.vm_starts, 1);
	/* Byte for byte what the source held when it stopped. */
	ck_assert_pages_eq(src.snapshot, dst.ram, src.size, PS);
	ck_assert_ab(dst.ram, dst.size, PS);
	ck_assert_mem_eq(src.cpu_regs, dst.cpu_regs, sizeof(src.cpu_regs));
	ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
	ck_assert_int_eq(st.status, MFD_STATE_COMPLETED);
	ck_assert_uint_ge(st.ram_transferred, 1);
	ck_assert_uint_eq(st.ram_total, 32u << 20);
	ck_assert_uint_ge(st.iterations, 1);
	/* Both sides count the same bytes; the destination also each channel's
	 * 128-byte hello. */
	struct mfd_stats dst_st = { .size = sizeof(dst_st) };

	ck_assert_int_eq(mfd_migration_stats(dst.m, &dst_st), 0);
	ck_assert_uint_eq(st.ram_transferred + 128u * st.channels, dst_st.ram_transferred);
	json = mfd_migration_stats_json(src.m);
	ck_assert_ptr_nonnull(json);
	ck_assert_ptr_nonnull(strstr(json, "\"status\": \"completed\""));
	ck_assert_ptr_nonnull(strstr(json, "\"dirty-sync-count\""));
	ck_assert_ptr_nonnull(strstr(json, "\"dirty-sync-missed-zero-copy\": "));
	free(json);
	if (out)
		*out = st;
	guest_free(&src);
	guest_free(&dst);
}

static void migrate_live(unsigned channels, const char *codec, const char *listen)
{
	migrate_live_stats(channels, codec, listen, false, NULL);
}

/*
 * A destination whose RAM the VMM preloaded (firmware, a kernel: here 0xa5
 * everywhere) ends identical to the source whatever dest-ram-zeroed says:
 * a zero page for a page never written is checked before it is skipped.
 * Only a block declared MFD_RAM_FRESH is trusted to read zero; then (and
 * only then) the zero pages are not touched at all, which this test sees by
 * lying about it.
 */
static void migrate_onto_dirty_ram(bool zeroed, bool fresh)
{
	struct guest src, dst;
	mfd_error *err = NULL;

	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	if (fresh) {
		struct mfd_ram_block_desc d = {
			.size = sizeof(d), .flags = MFD_RAM_FRESH, .name = "pc.ram",
			.host = dst.ram, .length = dst.size, .page_size = PS, .fd = -1,
		};

		ck_assert_int_eq(mfd_ram_block_remove(dst.m, "pc.ram"), 0);
		ck_assert_int_eq(mfd_ram_block_register(dst.m, &d, &err), 0);
	}
	memset(dst.ram, 0xa5, dst.size);
	ck_assert_ok(mfd_set_param(dst.m, "dest-ram-zeroed", zeroed ? "on" : "off", &err), err);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_migration_wait(src.m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 60000, &err), err);
	size_t zero_pages = 0;

	for (size_t p = 0; p < src.size / PS; p++) {
		const uint8_t *sp = src.snapshot + p * PS, *dp = dst.ram + p * PS;
		bool zero = true;

		for (size_t i = 0; i < PS && zero; i++)
			zero = sp[i] == 0;
		zero_pages += zero;
		if (!zero || !zeroed || !fresh)
			ck_assert_msg(memcmp(sp, dp, PS) == 0, "page %zu differs (zeroed %d fresh %d)",
				      p, zeroed, fresh);
		else
			ck_assert_msg(dp[0] == 0xa5 && dp[PS - 1] == 0xa5,
				      "zero page %zu of a block declared fresh was written", p);
	}
	ck_assert_uint_gt(zero_pages, 0);
	guest_free(&src);
	guest_free(&dst);
}

START_TEST(zero_pages_and_dest_ram_zeroed)
{
	migrate_onto_dirty_ram(false, false);
	migrate_onto_dirty_ram(true, false);
	migrate_onto_dirty_ram(true, true);
	migrate_onto_dirty_ram(false, true);
}
END_TEST

static const unsigned live_channels[] = { 1, 2, 4 };
static const char *const live_codecs[] = { "none", "zstd" };

START_TEST(live_precopy_matrix)
{
	const char *codec = live_codecs[_i / 3];

	if (strcmp(codec, "none") && !mfd_compress_find(codec)) {
		test_skip("codec", "engine: %s not built in", codec);
		return;
	}
	migrate_live(live_channels[_i % 3], codec, "tcp:127.0.0.1:0");
}
END_TEST

START_TEST(live_precopy_over_unix)
{
	char path[64];

	snprintf(path, sizeof(path), "unix:/tmp/mfd-engine-%d.sock", (int)getpid());
	migrate_live(2, "none", path);
}
END_TEST

START_TEST(migrate_to_file_and_back)
{
	struct guest src, dst;
	mfd_error *err = NULL;
	char path[64], uri[80];

	snprintf(path, sizeof(path), "/tmp/mfd-engine-%d.img", (int)getpid());
	snprintf(uri, sizeof(uri), "file:%s", path);
	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	ck_assert_ok(mfd_migrate(src.m, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(src.m, 30000, &err), err);
	ck_assert_ok(mfd_migrate_incoming(dst.m, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 30000, &err), err);
	ck_assert_pages_eq(src.ram, dst.ram, src.size, PS);
	ck_assert_mem_eq(src.cpu_regs, dst.cpu_regs, sizeof(src.cpu_regs));
	unlink(path);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

/* True when a thread of this process carries @name (/proc/self/task/N/comm). */
static bool thread_named(const char *name)
{
	DIR *dir = opendir("/proc/self/task");
	struct dirent *de;
	bool found = false;

	ck_assert_ptr_nonnull(dir);
	while (!found && (de = readdir(dir)) != NULL) {
		char path[300], comm[32] = "";
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;	/* the thread ended meanwhile */
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
		found = strcmp(comm, name) == 0;
	}
	closedir(dir);
	return found;
}

START_TEST(cancel_then_retry)
{
	struct guest src, dst, dst2;
	mfd_error *err = NULL;

	guest_init(&src, 32, true, 2, "none");
	guest_init(&dst, 32, false, 2, "none");
	/* Slow enough that the cancel lands while iterating. */
	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "4000000", &err), err);
	guest_start_writer(&src);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	while (mfd_migration_state(src.m) != MFD_STATE_ACTIVE &&
	       mfd_migration_state(src.m) != MFD_STATE_FAILED)
		usleep(1000);
	usleep(100 * 1000);
	/* While it runs, each of the library's threads goes by its own name. */
	static const char *const names[] = { "mfd-migration", "mfd-incoming", "mfd-return-path",
					     "mfd-send/0", "mfd-send/1", "mfd-recv/0",
					     "mfd-recv/1" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		ck_assert_msg(thread_named(names[i]), "no thread named %s", names[i]);
	mfd_migrate_cancel(src.m);
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_ECANCELED);
	ck_assert_mfd_error(err, MFD_ECANCELED, "cancelled");
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_CANCELLED);
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_FAILED);
	/* The source VM never stopped. */
	ck_assert_int_eq(src.vm_stops, 0);
	ck_assert(!atomic_load(&src.stop));

	/* A new destination, the same source: it completes. */
	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "0", &err), err);
	guest_init(&dst2, 32, false, 2, "none");
	start_pair(&src, &dst2, "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_migration_wait(src.m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst2.m, 60000, &err), err);
	ck_assert_pages_eq(src.snapshot, dst2.ram, src.size, PS);
	ck_assert_ab(dst2.ram, dst2.size, PS);
	guest_free(&src);
	guest_free(&dst);
	guest_free(&dst2);
}
END_TEST

static int extra_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	return mfd_stream_put_be32(s, 7);
}

static const mfd_save_handlers extra_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = extra_save,
};

START_TEST(destination_refusal_reaches_the_source)
{
	struct guest src, dst;
	mfd_error *err = NULL;

	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	/* The source has a device the destination does not know. */
	ck_assert_ok(mfd_register_live(src.m, "virtio-gpu", 0, 1, &extra_ops, NULL, &err), err);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_int_eq(mfd_migration_wait(dst.m, 30000, &err), MFD_EBADSECTION);
	ck_assert_mfd_error(err, MFD_EBADSECTION, "unknown section 'virtio-gpu'");
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_EBADSECTION);
	ck_assert_mfd_error(err, MFD_EBADSECTION, "the destination failed");
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	/* It had stopped the VM for the device state: it must run again. */
	ck_assert_int_eq(src.vm_starts, src.vm_stops);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

START_TEST(mismatched_channels_fail_clearly)
{
	struct guest src, dst;
	mfd_error *err = NULL;

	guest_init(&src, 4, true, 2, "none");
	guest_init(&dst, 4, false, 3, "none");
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
	ck_assert_mfd_error(err, MFD_EPROTO, "the source uses 2 multifd channels, this side expects 3");
	ck_assert_int_ne(mfd_migration_wait(src.m, 30000, &err), 0);
	mfd_error_free(err);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

START_TEST(auto_converge_throttles_a_fast_writer)
{
	struct guest src, dst;
	mfd_error *err = NULL;

	guest_init(&src, 16, true, 1, "none");
	guest_init(&dst, 16, false, 1, "none");
	/* A link slower than the writer: it cannot converge without help. */
	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "20000000", &err), err);
	ck_assert_ok(mfd_set_param(src.m, "downtime-limit", "50", &err), err);
	ck_assert_ok(mfd_set_param(src.m, "auto-converge", "on", &err), err);
	ck_assert_ok(mfd_set_param(src.m, "cpu-throttle-initial", "50", &err), err);
	ck_assert_ok(mfd_set_param(src.m, "cpu-throttle-increment", "25", &err), err);
	src.slow_writer = true;
	guest_start_writer(&src);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_migration_wait(src.m, 90000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 30000, &err), err);
	ck_assert_int_ge(atomic_load(&src.throttle_calls), 1);
	ck_assert_int_eq(atomic_load(&src.throttle), 0);	/* released at the end */
	ck_assert_pages_eq(src.snapshot, dst.ram, src.size, PS);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST


/* ---- cancel at every state ------------------------------------------------------- */

static int vm_stop_then_cancel(void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;
	int r = vm_stop(opaque, errp);

	/* The switchover is under way: cancel now, from the migration thread. */
	mfd_migrate_cancel(g->m);
	return r;
}

static const mfd_vmm_hooks cancel_hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = vm_stop_then_cancel,
	.vm_start = vm_start,
};

enum when { AT_NONE, AT_SETUP, AT_ACTIVE, AT_DEVICE, AT_COMPLETED, AT_COUNT };

START_TEST(cancel_at_every_state)
{
	struct guest src, dst, dst2;
	mfd_error *err = NULL;
	int r;

	guest_init(&src, 16, true, 2, "none");
	guest_init(&dst, 16, false, 2, "none");
	if (_i == AT_NONE) {
		mfd_migrate_cancel(src.m);	/* nothing runs: no-op */
		ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_NONE);
	} else {
		if (_i == AT_DEVICE)
			ck_assert_ok(mfd_migration_set_hooks(src.m, &cancel_hooks, &src, &err), err);
		if (_i == AT_ACTIVE)
			ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "2000000", &err), err);
		start_pair(&src, &dst, "tcp:127.0.0.1:0");
		if (_i == AT_SETUP)
			mfd_migrate_cancel(src.m);
		if (_i == AT_ACTIVE) {
			while (mfd_migration_state(src.m) == MFD_STATE_SETUP)
				usleep(500);
			mfd_migrate_cancel(src.m);
		}
		r = mfd_migration_wait(src.m, 30000, &err);
		if (_i == AT_COMPLETED) {
			ck_assert_ok(r, err);
			mfd_migrate_cancel(src.m);	/* after the end: no-op */
			ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_COMPLETED);
			ck_assert_ok(mfd_migration_wait(dst.m, 30000, &err), err);
		} else {
			ck_assert_int_eq(r, MFD_ECANCELED);
			ck_assert_mfd_error(err, MFD_ECANCELED, "cancelled");
			ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_CANCELLED);
			/* A source cancelled before it connected leaves the destination
			 * waiting for one (as it should): its operator cancels it. */
			if (mfd_migration_state(dst.m) == MFD_STATE_SETUP)
				mfd_migrate_cancel(dst.m);
			ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
			mfd_error_free(err);
			err = NULL;
			ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_FAILED);
			/* Whatever stopped the VM started it again. */
			ck_assert_int_eq(src.vm_starts, src.vm_stops);
		}
	}
	/* The same source migrates again, completely. */
	ck_assert_ok(mfd_migration_set_hooks(src.m, &hooks, &src, &err), err);
	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "0", &err), err);
	guest_init(&dst2, 16, false, 2, "none");
	start_pair(&src, &dst2, "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_migration_wait(src.m, 30000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst2.m, 30000, &err), err);
	ck_assert_pages_eq(src.ram, dst2.ram, src.size, PS);
	guest_free(&src);
	guest_free(&dst);
	guest_free(&dst2);
}
END_TEST

/* Open descriptors, leaving out what a sanitizer runtime opens for itself
 * (TSan's symbolizer pipes, its /proc reads). */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d))) {
		char path[300], target[256];
		ssize_t len;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len < 0)
			continue;
		target[len] = '\0';
		if (strncmp(target, "socket:", 7) == 0 || strncmp(target, "anon_inode:", 11) == 0)
			n++;	/* what channels, listeners and eventfds are made of */
	}
	closedir(d);
	return n;
}

/* The destination dies mid-iteration: the source fails with a clear error,
 * keeps its VM running, and a retry to a new destination succeeds. */
START_TEST(destination_dies_mid_iteration)
{
	struct guest src, dst, dst2;
	mfd_error *err = NULL;

	int fds_before = count_fds();

	guest_init(&src, 32, true, 4, "none");
	guest_init(&dst, 32, false, 4, "none");
	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "8000000", &err), err);
	guest_start_writer(&src);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	while (mfd_migration_state(src.m) != MFD_STATE_ACTIVE)
		usleep(1000);
	usleep(200 * 1000);
	mfd_migrate_cancel(dst.m);
	ck_assert_int_ne(mfd_migration_wait(src.m, 30000, &err), 0);
	ck_assert_msg(err && strstr(mfd_error_message(err), "destination"),
		      "the source's error does not name the destination: %s",
		      mfd_error_message(err));
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	ck_assert_int_eq(src.vm_stops, 0);
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
	mfd_error_free(err);
	err = NULL;
	/* Every channel and listener of the failed migration is closed. */
	ck_assert_int_eq(count_fds(), fds_before);

	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "0", &err), err);
	guest_init(&dst2, 32, false, 4, "none");
	start_pair(&src, &dst2, "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_migration_wait(src.m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst2.m, 60000, &err), err);
	ck_assert_pages_eq(src.snapshot, dst2.ram, src.size, PS);
	ck_assert_ab(dst2.ram, dst2.size, PS);
	guest_free(&src);
	guest_free(&dst);
	guest_free(&dst2);
}
END_TEST

/* Without auto-converge, a writer faster than the link never converges. */
START_TEST(no_convergence_without_auto_converge)
{
	struct guest src, dst;
	mfd_error *err = NULL;

	guest_init(&src, 16, true, 1, "none");
	guest_init(&dst, 16, false, 1, "none");
	ck_assert_ok(mfd_set_param(src.m, "max-bandwidth", "20000000", &err), err);
	ck_assert_ok(mfd_set_param(src.m, "downtime-limit", "50", &err), err);
	src.slow_writer = true;
	guest_start_writer(&src);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_int_eq(mfd_migration_wait(src.m, 4000, &err), MFD_ERUNNING);
	ck_assert_mfd_error(err, MFD_ERUNNING, "migration still active after 4000 ms");
	ck_assert_int_eq(src.vm_stops, 0);
	ck_assert_int_eq(atomic_load(&src.throttle_calls), 0);
	mfd_migrate_cancel(src.m);
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_ECANCELED);
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, &err), 0);
	mfd_error_free(err);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST


/* ---- switchover-ack ------------------------------------------------------------------ */

static bool needs_ack(void *opaque)
{
	(void)opaque;
	return true;
}

static const mfd_save_handlers acking_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = cpu_save,
	.load_state = cpu_load,
	.switchover_ack_needed = needs_ack,
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t stopped_at_ms;

static int vm_stop_timed(void *opaque, mfd_error **errp)
{
	stopped_at_ms = mono_ms();
	return vm_stop(opaque, errp);
}

static const mfd_vmm_hooks timed_hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = vm_stop_timed,
	.vm_start = vm_start,
};

START_TEST(switchover_waits_for_the_destination_ack)
{
	struct guest src, dst;
	mfd_error *err = NULL;
	uint64_t approved_at;

	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	ck_assert_ok(mfd_register_live(src.m, "vfio", 0, 1, &acking_ops, &src, &err), err);
	ck_assert_ok(mfd_register_live(dst.m, "vfio", 0, 1, &acking_ops, &dst, &err), err);
	ck_assert_ok(mfd_migration_set_hooks(src.m, &timed_hooks, &src, &err), err);
	ck_assert_int_eq(mfd_migration_approve_switchover(dst.m), MFD_ESTATE);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	usleep(400 * 1000);
	/* An 8 MiB idle guest converges at once: only the missing ack holds it. */
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_ACTIVE);
	ck_assert_int_eq(src.vm_stops, 0);
	approved_at = mono_ms();
	ck_assert_int_eq(mfd_migration_approve_switchover(dst.m), 0);
	ck_assert_ok(mfd_migration_wait(src.m, 30000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 30000, &err), err);
	ck_assert_uint_ge(stopped_at_ms, approved_at);
	ck_assert_pages_eq(src.ram, dst.ram, src.size, PS);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

START_TEST(parameters)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	char buf[64];
	int64_t v, lo, hi;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_get_param(m, "multifd-channels", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "2");
	ck_assert_ok(mfd_get_param(m, "downtime-limit", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "300");
	ck_assert_ok(mfd_get_param(m, "zero-page-detection", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "multifd");
	ck_assert_ok(mfd_set_param(m, "multifd-channels", "16", &err), err);
	ck_assert_ok(mfd_get_param_int(m, "multifd-channels", &v, &err), err);
	ck_assert_int_eq(v, 16);
	ck_assert_int_eq(mfd_set_param(m, "multifd-channels", "256", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "multifd-channels 256 is outside 1..255");
	ck_assert_int_eq(mfd_set_param(m, "multifd-channels", "many", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "'many' is not an integer");
	ck_assert_int_eq(mfd_set_param(m, "no-such-thing", "1", &err), MFD_ENOENT);
	ck_assert_mfd_error(err, MFD_ENOENT, "unknown parameter 'no-such-thing'");
	ck_assert_int_eq(mfd_set_param(m, "multifd-compression", "lzo", &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "'lzo' is not a registered codec");
	ck_assert_int_eq(mfd_set_param(m, "zero-page-detection", "fast", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not one of none, legacy, multifd");
	ck_assert_ok(mfd_set_param(m, "auto-converge", "yes", &err), err);
	ck_assert_ok(mfd_get_param(m, "auto-converge", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "on");
	ck_assert_int_eq(mfd_set_param(m, "auto-converge", "maybe", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "is not a boolean");
	ck_assert_ok(mfd_set_param(m, "postcopy-ram", "on", &err), err);
	ck_assert_ok(mfd_get_param(m, "postcopy-ram", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "on");
	ck_assert_int_eq(mfd_get_param(m, "multifd-compression", buf, 3, &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "needs 5 bytes");
	ck_assert_int_eq(mfd_param_bounds("downtime-limit", &lo, &hi), 0);
	ck_assert_int_eq(lo, 1);
	ck_assert_int_eq(hi, 2000000);
	ck_assert_int_eq(mfd_param_bounds("tls-creds", &lo, &hi), MFD_EINVAL);
	ck_assert_int_eq(mfd_param_bounds("nope", &lo, &hi), MFD_ENOENT);
	ck_assert_str_eq(mfd_state_name(MFD_STATE_CANCELLING), "cancelling");
	ck_assert_int_eq(mfd_migration_wait(m, 10, &err), MFD_ESTATE);
	mfd_error_free(err);
	err = NULL;
	/* A malformed URI fails at once, nothing started. */
	ck_assert_int_eq(mfd_migrate(m, "tcp:127.0.0.1:99999", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "port 99999");
	ck_assert_int_eq(mfd_migrate_incoming(m, "udp:1.2.3.4:5", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "unknown scheme 'udp'");
	ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_NONE);
	mfd_migration_free(m);
}
END_TEST

/*
 * zero-copy-send: the guest keeps writing pages the kernel may not have
 * read yet; dirty tracking sends them again and the final pass runs with
 * the guest stopped, so the destination still ends byte for byte equal.
 */
START_TEST(zero_copy_send_live)
{
	struct mfd_stats st;

	migrate_live_stats(4, "none", "tcp:127.0.0.1:0", true, &st);
	ck_assert_uint_gt(st.zero_copy_bytes, 0);
	ck_assert_uint_le(st.zero_copy_bytes, st.ram_normal_bytes);
	ck_assert_uint_ge(st.zero_copy_sends, 1);
	ck_assert_uint_le(st.zero_copy_copied, st.zero_copy_sends);
	/* Loopback copies at delivery: then syncs count as missed. */
	ck_assert(st.zero_copy_copied == 0 || st.dirty_sync_missed_zero_copy >= 1);
	ck_assert_uint_le(st.dirty_sync_missed_zero_copy, (uint64_t)st.multifd_syncs * 4);
	ck_assert_uint_eq(st.zero_copy_refused_channels, 0);

	migrate_live_stats(2, "none", "tcp:127.0.0.1:0", false, &st);
	ck_assert_uint_eq(st.zero_copy_bytes, 0);
	ck_assert_uint_eq(st.zero_copy_sends, 0);
}
END_TEST

/* What zero-copy-send cannot be combined with fails mfd_migrate() at once. */
START_TEST(zero_copy_send_refusals)
{
	static const struct {
		const char *uri, *param, *value, *msg;
	} cases[] = {
		{ "unix:/tmp/mfd-zc.sock", NULL, NULL, "zero-copy-send needs a tcp: URI" },
		{ "file:/tmp/mfd-zc.img", NULL, NULL, "it needs a tcp: URI, not fd: or file:" },
		{ "tcp:127.0.0.1:1", "multifd-compression", "zlib",
		  "it needs multifd-compression none, not zlib" },
		{ "tcp:127.0.0.1:1", "tls-psk-file", "/nonexistent",
		  "zero-copy-send cannot be used with TLS" },
	};
	mfd_error *err = NULL;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		mfd_migration *m = NULL;

		ck_assert_ok(mfd_migration_new(&m, &err), err);
		ck_assert_ok(mfd_set_param(m, "zero-copy-send", "on", &err), err);
		if (cases[i].param)
			ck_assert_ok(mfd_set_param(m, cases[i].param, cases[i].value, &err), err);
		ck_assert_int_eq(mfd_migrate(m, cases[i].uri, &err), MFD_EINVAL);
		ck_assert_mfd_error(err, MFD_EINVAL, cases[i].msg);
		ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_NONE);
		mfd_migration_free(m);
	}
}
END_TEST

/* With no locked memory to pin pages, every channel falls back to copying,
 * says so in the log, and the migration completes. */
START_TEST(zero_copy_send_without_locked_memory)
{
	struct test_memlock ml;
	struct mfd_stats st;
	const char *log;

	test_memlock_limit(&ml, 0);
	test_log_capture_start();
	migrate_live_stats(2, "none", "tcp:127.0.0.1:0", true, &st);
	log = test_log_capture_stop();
	test_memlock_restore(&ml);
	ck_assert_uint_eq(st.zero_copy_refused_channels, 2);
	ck_assert_uint_eq(st.zero_copy_sends, 0);
	ck_assert_uint_eq(st.zero_copy_bytes, 0);
	ck_assert_msg(strstr(log, "zero-copy-send: the kernel refused to pin"), "log: %s", log);
}
END_TEST

#if MFD_HAVE_TLS
/* tls-authz with tls-psk-file: the destination accepts only the PSK
 * identities listed (QEMU applies authz to the PSK username). */
START_TEST(tls_psk_authz)
{
	struct test_pki pki;
	struct guest src, dst;
	mfd_error *err = NULL;
	char file[256];

	ck_assert_msg(certs_create(&pki) == 0, "cannot create the test PKI (see stderr)");
	certs_path(&pki, "psk-main", NULL, file, sizeof(file));

	/* The source presents "qemu", the first identity of the file. */
	guest_init(&src, 4, true, 2, "none");
	guest_init(&dst, 4, false, 2, "none");
	ck_assert_ok(mfd_set_param(src.m, "tls-psk-file", file, &err), err);
	ck_assert_ok(mfd_set_param(dst.m, "tls-psk-file", file, &err), err);
	ck_assert_ok(mfd_set_param(dst.m, "tls-authz", "spare|someone", &err), err);
	/* An unlisted client is a stray to the destination (defect 1 of issue
	 * 19): refused with the reason logged, and the wait goes on. */
	test_log_capture_start();
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_int_ne(mfd_migration_wait(src.m, 30000, &err), 0);
	ck_assert_mfd_error(err, MFD_EPROTO, "the server refused the connection");
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	ck_assert_int_eq(mfd_migration_wait(dst.m, 2000, NULL), MFD_ERUNNING);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_SETUP);
	const char *log = test_log_capture_stop();

	ck_assert_msg(strstr(log, "PSK identity 'qemu' is not in the authz allow-list (tls-authz)"),
		      "log: %s", log);
	mfd_migrate_cancel(dst.m);
	ck_assert_int_ne(mfd_migration_wait(dst.m, 30000, NULL), 0);
	ck_assert_int_eq(dst.vm_starts, 0);
	guest_free(&src);
	guest_free(&dst);

	/* Listed: the migration completes. */
	guest_init(&src, 4, true, 2, "none");
	guest_init(&dst, 4, false, 2, "none");
	ck_assert_ok(mfd_set_param(src.m, "tls-psk-file", file, &err), err);
	ck_assert_ok(mfd_set_param(dst.m, "tls-psk-file", file, &err), err);
	ck_assert_ok(mfd_set_param(dst.m, "tls-authz", "spare|qemu", &err), err);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_migration_wait(src.m, 30000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst.m, 30000, &err), err);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(memcmp(src.snapshot, dst.ram, src.size), 0);
	guest_free(&src);
	guest_free(&dst);
	certs_destroy(&pki);
}
END_TEST

/* A TLS parameter that would have no effect is refused, never ignored. */
START_TEST(tls_knobs_are_never_ignored)
{
	static const struct {
		bool incoming;
		const char *uri;
		const char *p1, *v1, *p2, *v2;
		const char *msg;
	} cases[] = {
		{ false, "tcp:127.0.0.1:1", "tls-psk-file", "psk-main", "tls-authz", "qemu",
		  "tls-authz applies to the destination" },
		{ false, "tcp:127.0.0.1:1", "tls-psk-file", "psk-main", "tls-hostname", "localhost",
		  "tls-hostname applies to x509 (tls-creds)" },
		{ true, "tcp:127.0.0.1:0", "tls-creds", "server", "tls-hostname", "localhost",
		  "tls-hostname applies to the source" },
		{ false, "tcp:127.0.0.1:1", "tls-authz", "CN=x", NULL, NULL,
		  "tls-authz needs TLS (tls-creds or tls-psk-file)" },
		{ false, "tcp:127.0.0.1:1", "tls-hostname", "localhost", NULL, NULL,
		  "tls-hostname needs TLS (tls-creds or tls-psk-file)" },
		{ true, "tcp:127.0.0.1:0", "tls-min-version", "1.3", NULL, NULL,
		  "tls-min-version needs TLS (tls-creds or tls-psk-file)" },
	};
	struct test_pki pki;
	mfd_error *err = NULL;
	char path[256], buf[16];
	mfd_migration *m = NULL;

	ck_assert_msg(certs_create(&pki) == 0, "cannot create the test PKI (see stderr)");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *v1 = cases[i].v1;
		int r;

		ck_assert_ok(mfd_migration_new(&m, &err), err);
		if (!strncmp(cases[i].p1, "tls-creds", 9) || !strcmp(cases[i].p1, "tls-psk-file"))
			v1 = certs_path(&pki, v1, NULL, path, sizeof(path));
		ck_assert_ok(mfd_set_param(m, cases[i].p1, v1, &err), err);
		if (cases[i].p2)
			ck_assert_ok(mfd_set_param(m, cases[i].p2, cases[i].v2, &err), err);
		r = cases[i].incoming ? mfd_migrate_incoming(m, cases[i].uri, &err)
				      : mfd_migrate(m, cases[i].uri, &err);
		ck_assert_msg(r == MFD_EINVAL, "case %zu: %d: %s", i, r, mfd_error_message(err));
		ck_assert_mfd_error(err, MFD_EINVAL, cases[i].msg);
		ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_NONE);
		mfd_migration_free(m);
	}
	/* tls-min-version: "1.2" (the default) or "1.3", nothing else. */
	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_get_param(m, "tls-min-version", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "1.2");
	ck_assert_ok(mfd_set_param(m, "tls-min-version", "1.3", &err), err);
	ck_assert_ok(mfd_get_param(m, "tls-min-version", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "1.3");
	ck_assert_int_eq(mfd_set_param(m, "tls-min-version", "1.1", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "tls-min-version '1.1' is not one of 1.2, 1.3");
	ck_assert_int_eq(mfd_set_param(m, "tls-min-version", "tls1.3", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "tls-min-version 'tls1.3' is not one of 1.2, 1.3");
	ck_assert_ok(mfd_get_param(m, "tls-min-version", buf, sizeof(buf), &err), err);
	ck_assert_str_eq(buf, "1.3");
	mfd_migration_free(m);
	certs_destroy(&pki);
}
END_TEST
#endif

/*
 * bench/soak, short: back-to-back migrations with random channels, codecs,
 * TLS, destination RAM modes and cancels, each completed one verified byte
 * for byte, fds and RSS watched.  Under TSan any report fails it too.
 */
START_TEST(soak_of_back_to_back_migrations)
{
	static char out[16384];
	const char *args[] = { "--count", "16", "--seed", "3", "--mib", "16", NULL };
	int status;

	if (!test_have_tool("engine"))
		return;
	status = test_run_program("bench/soak", out, sizeof(out), true, args);
	ck_assert_msg(status == 0 && strstr(out, "soak: PASS"), "soak exited %d:\n%s", status,
		      out);
}
END_TEST

/* ---- stray connections ------------------------------------------------------------ */

/* A TCP connection to "tcp:127.0.0.1:PORT", as a port scanner or a health
 * check would open it. */
static int probe_connect(const char *uri)
{
	const char *colon = strrchr(uri, ':');
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_nonnull(colon);
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect %s: %s", uri,
		      strerror(errno));
	return fd;
}

/* Connects, sends @junk bytes (0: none) and closes. */
static void probe(const char *uri, size_t junk)
{
	uint8_t buf[512];
	int fd = probe_connect(uri);

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 37 + 11);
	ck_assert_uint_le(junk, sizeof(buf));
	if (junk)
		ck_assert_int_eq(write(fd, buf, junk), (ssize_t)junk);
	close(fd);
}

/* The destination keeps listening through strays; the real source then
 * migrates as if they had not been there. */
static void migrate_after_strays(struct guest *src, struct guest *dst, const char *uri)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migrate(src->m, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(src->m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst->m, 60000, &err), err);
	ck_assert_int_eq(mfd_migration_state(dst->m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(memcmp(src->snapshot, dst->ram, src->size), 0);
}

START_TEST(stray_connections_do_not_fail_an_incoming_migration)
{
	struct guest src, dst;
	mfd_error *err = NULL;
	char uri[256];
	const char *log;

	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	test_log_capture_start();
	ck_assert_ok(mfd_migrate_incoming(dst.m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst.m, uri, sizeof(uri)), 0);
	probe(uri, 0);		/* a port scan: connect, close */
	probe(uri, 200);	/* junk */
	usleep(200 * 1000);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_SETUP);
	/* A silent one stays open while the source connects. */
	int silent = probe_connect(uri);

	migrate_after_strays(&src, &dst, uri);
	close(silent);
	log = test_log_capture_stop();
	ck_assert_msg(strstr(log, "refused a connection") != NULL, "no warning in:\n%s", log);
	ck_assert_msg(strstr(log, "magic 0x") != NULL, "the junk was not named:\n%s", log);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

START_TEST(stray_connections_under_tls_psk)
{
	struct guest src, dst;
	struct test_pki pki;
	mfd_error *err = NULL;
	mfd_tls_creds *wrong = NULL;
	mfd_channel *raw = NULL, *tls = NULL;
	char uri[256], path[512];

	ck_assert_msg(certs_create(&pki) == 0, "cannot create the test PKI");
	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	certs_path(&pki, "psk-main", NULL, path, sizeof(path));
	ck_assert_ok(mfd_set_param(src.m, "tls-psk-file", path, &err), err);
	ck_assert_ok(mfd_set_param(dst.m, "tls-psk-file", path, &err), err);
	ck_assert_ok(mfd_migrate_incoming(dst.m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_ok(mfd_migration_listen_uri(dst.m, uri, sizeof(uri)), err);
	probe(uri, 0);
	probe(uri, 200);	/* plaintext */
	/* A TLS client with another key: its handshake fails. */
	certs_path(&pki, "psk-otherkey", NULL, path, sizeof(path));
	ck_assert_ok(mfd_tls_creds_new_psk(path, MFD_TLS_CLIENT, &wrong, &err), err);
	ck_assert_ok(mfd_channel_connect(uri, 5000, &raw, &err), err);
	mfd_channel_set_option(raw, "timeout-ms", 5000, NULL);
	ck_assert_int_lt(mfd_channel_tls_wrap(raw, wrong, NULL, 0, &tls, &err), 0);
	mfd_error_free(err);
	err = NULL;
	mfd_channel_free(raw);
	mfd_tls_creds_free(wrong);
	usleep(200 * 1000);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_SETUP);
	migrate_after_strays(&src, &dst, uri);
	guest_free(&src);
	guest_free(&dst);
	certs_destroy(&pki);
}
END_TEST

START_TEST(too_many_stray_connections_fail_clearly)
{
	struct guest dst;
	mfd_error *err = NULL;
	char uri[256];

	guest_init(&dst, 4, false, 2, "none");
	ck_assert_ok(mfd_migrate_incoming(dst.m, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst.m, uri, sizeof(uri)), 0);
	for (int i = 0; i < 80 && mfd_migration_state(dst.m) == MFD_STATE_SETUP; i++) {
		int fd = probe_connect(uri);

		close(fd);
		usleep(5000);
	}
	ck_assert_int_eq(mfd_migration_wait(dst.m, 20000, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "refused more than 64 connections");
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_FAILED);
	guest_free(&dst);
}
END_TEST

/* ---- a cancel racing a failing gather ---------------------------------------------- */

static atomic_bool gather_failing;

/* Fails the destination's third multifd channel, after the first two were
 * identified and published, and gives the cancels time to pile up. */
static int fail_third_channel(void *opaque, mfd_channel *ch, mfd_migration *m, bool incoming,
			      enum engine_chan_kind kind, unsigned index, mfd_error **errp)
{
	(void)opaque;
	(void)ch;
	(void)m;
	if (!incoming || kind != ENGINE_CH_MULTIFD || index != 2)
		return 0;
	atomic_store(&gather_failing, true);
	usleep(2000);
	return mfd_error_set(errp, MFD_EIO, "test: multifd channel 2 fails");
}

struct canceller {
	mfd_migration *m;
	pthread_t thread;
	atomic_bool stop;
};

static void *cancel_loop(void *arg)
{
	struct canceller *c = arg;

	while (!atomic_load(&gather_failing) && !atomic_load(&c->stop))
		sched_yield();
	while (!atomic_load(&c->stop))
		mfd_migrate_cancel(c->m);
	return NULL;
}

START_TEST(cancel_races_a_failing_gather)
{
	for (int round = 0; round < 10; round++) {
		struct guest src, dst;
		struct canceller c = { 0 };
		mfd_error *err = NULL;

		guest_init(&src, 4, true, 4, "none");
		guest_init(&dst, 4, false, 4, "none");
		atomic_store(&gather_failing, false);
		engine_set_channel_wrapper(fail_third_channel, NULL);
		c.m = dst.m;
		ck_assert_int_eq(pthread_create(&c.thread, NULL, cancel_loop, &c), 0);
		start_pair(&src, &dst, "tcp:127.0.0.1:0");
		ck_assert_int_lt(mfd_migration_wait(dst.m, 20000, &err), 0);
		mfd_error_free(err);
		err = NULL;
		atomic_store(&c.stop, true);
		pthread_join(c.thread, NULL);
		ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_FAILED);
		ck_assert_int_lt(mfd_migration_wait(src.m, 20000, &err), 0);
		mfd_error_free(err);
		engine_set_channel_wrapper(NULL, NULL);
		guest_free(&src);
		guest_free(&dst);
	}
}
END_TEST


/* ---- the VMM's own channels (mfd_migrate_channels) ----------------------------------- */

/* @n connected pairs: src[i] to dst[i]. */
static void channel_pairs(mfd_channel **src, mfd_channel **dst, unsigned n)
{
	mfd_error *err = NULL;

	for (unsigned i = 0; i < n; i++)
		ck_assert_ok(mfd_channel_socketpair(&src[i], &dst[i], &err), err);
}

/* Both sides end completed, the destination with the source's RAM. */
static void assert_pair_completed(struct guest *src, struct guest *dst)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_wait(src->m, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst->m, 60000, &err), err);
	ck_assert_pages_eq(src->snapshot, dst->ram, src->size, PS);
}

/*
 * A VMM that opened the connections itself (a jailer passed the fds): a main
 * channel and three multifd channels, given to the destination in another
 * order than the source's (each says which it is in its hello), with a live
 * writer; the destination also starts well before the source, longer than a
 * listener would wait for a hello.
 */
START_TEST(vmm_channels_live_precopy)
{
	struct guest src, dst;
	mfd_channel *a[4], *b[4], *dmf[3];
	struct mfd_channel_set ss = { .size = sizeof(ss) }, ds = { .size = sizeof(ds) };
	struct mfd_stats st = { .size = sizeof(st) };
	mfd_error *err = NULL;
	char buf[64];

	guest_init(&src, 16, true, 3, "none");
	guest_init(&dst, 16, false, 3, "none");
	/* hello_ms is half of it: 500 ms; the source starts 1.2 s later. */
	ck_assert_ok(mfd_set_param(dst.m, "channel-timeout-ms", "1000", &err), err);
	channel_pairs(a, b, 4);
	dmf[0] = b[3];
	dmf[1] = b[1];
	dmf[2] = b[2];
	ds.main = b[0];
	ds.nmultifd = 3;
	ds.multifd = dmf;
	ck_assert_ok(mfd_migrate_incoming_channels(dst.m, &ds, &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst.m, buf, sizeof(buf)), MFD_ESTATE);
	usleep(1200 * 1000);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_SETUP);
	guest_start_writer(&src);
	ss.main = a[0];
	ss.nmultifd = 3;
	ss.multifd = &a[1];
	ck_assert_ok(mfd_migrate_channels(src.m, &ss, &err), err);
	assert_pair_completed(&src, &dst);
	ck_assert_int_eq(dst.vm_starts, 1);
	ck_assert_int_eq(src.vm_starts, 0);
	ck_assert_ab(dst.ram, dst.size, PS);
	ck_assert_mem_eq(src.cpu_regs, dst.cpu_regs, sizeof(src.cpu_regs));
	ck_assert_int_eq(mfd_migration_stats(src.m, &st), 0);
	ck_assert_uint_eq(st.channels, 3);
	ck_assert_uint_gt(st.ram_multifd_bytes, 0);
	/* The migration object can migrate again, by URI this time. */
	guest_free(&dst);
	guest_init(&dst, 16, false, 3, "none");
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	assert_pair_completed(&src, &dst);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

/* No multifd channel in the set: everything on the main channel, as fd:. */
START_TEST(vmm_channels_main_only)
{
	struct guest src, dst;
	mfd_channel *a, *b;
	struct mfd_channel_set ss = { .size = sizeof(ss) }, ds = { .size = sizeof(ds) };
	mfd_error *err = NULL;

	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	channel_pairs(&a, &b, 1);
	ds.main = b;
	ss.main = a;
	ck_assert_ok(mfd_migrate_incoming_channels(dst.m, &ds, &err), err);
	ck_assert_ok(mfd_migrate_channels(src.m, &ss, &err), err);
	assert_pair_completed(&src, &dst);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

/* A malformed set is refused with what to fix, and its channels are not
 * leaked: the call took them. */
START_TEST(vmm_channels_bad_sets)
{
	struct guest g;
	mfd_channel *a[3], *b[3];
	struct mfd_channel_set set;
	mfd_error *err = NULL;
	int fds;

	guest_init(&g, 4, true, 2, "none");
	ck_assert_int_eq(mfd_migrate_channels(g.m, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "mfd_migrate_channels: NULL channel set");
	set = (struct mfd_channel_set){ .size = 8 };
	ck_assert_int_eq(mfd_migrate_incoming_channels(g.m, &set, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "mfd_migrate_incoming_channels: struct "
			    "mfd_channel_set of 8 bytes is smaller than its first layout (32 bytes)");
	set = (struct mfd_channel_set){ .size = sizeof(set) };
	ck_assert_int_eq(mfd_migrate_channels(g.m, &set, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "the set has no main channel");

	fds = count_fds();
	/* Shapes no count of channels can mend; the main channel goes too. */
	static const struct {
		uint32_t n;
		bool array;
		const char *says;
	} shapes[] = {
		{ 300, false, "300 multifd channels; at most 256" },
		{ 2, false, "nmultifd is 2 but multifd is NULL" },
		{ 1, true, "multifd channel 0 is NULL" },
	};
	for (size_t i = 0; i < MFD_ARRAY_SIZE(shapes); i++) {
		mfd_channel *none[1] = { NULL };

		channel_pairs(a, b, 1);
		set = (struct mfd_channel_set){ .size = sizeof(set), .main = a[0],
						.nmultifd = shapes[i].n,
						.multifd = shapes[i].array ? none : NULL };
		ck_assert_int_eq(mfd_migrate_channels(g.m, &set, &err), MFD_EINVAL);
		ck_assert_mfd_error(err, MFD_EINVAL, shapes[i].says);
		mfd_channel_free(b[0]);
	}
	ck_assert_int_eq(count_fds(), fds);
	channel_pairs(a, b, 3);
	set = (struct mfd_channel_set){ .size = sizeof(set), .main = a[0], .nmultifd = 1,
					.multifd = &a[1] };
	ck_assert_int_eq(mfd_migrate_channels(g.m, &set, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "the set has 1 multifd channels but "
			    "multifd-channels is 2: set it to 1");
	set = (struct mfd_channel_set){ .size = sizeof(set), .main = b[0], .nmultifd = 2,
					.multifd = &b[1], .preempt = a[2] };
	ck_assert_int_eq(mfd_migrate_incoming_channels(g.m, &set, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "the set has a preempt channel but "
			    "postcopy-preempt is off");
	/* Both calls took and freed their channels. */
	ck_assert_int_eq(count_fds(), fds);
	ck_assert_int_eq(mfd_migration_state(g.m), MFD_STATE_NONE);

	channel_pairs(a, b, 2);
	ck_assert_ok(mfd_set_param(g.m, "postcopy-ram", "on", &err), err);
	ck_assert_ok(mfd_set_param(g.m, "postcopy-preempt", "on", &err), err);
	set = (struct mfd_channel_set){ .size = sizeof(set), .main = a[0], .nmultifd = 2,
					.multifd = (mfd_channel *[]){ a[1], b[1] } };
	ck_assert_int_eq(mfd_migrate_channels(g.m, &set, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "postcopy-preempt is on but the set has no preempt "
			    "channel");
	mfd_channel_free(b[0]);
	ck_assert_int_eq(count_fds(), fds);
	guest_free(&g);
}
END_TEST

/*
 * The destination's channels given in the wrong places: what the VMM vouched
 * for is not waited past as a stray, the migration fails at once saying which
 * channel and why.
 */
START_TEST(vmm_channels_misplaced_on_the_destination)
{
	struct guest src, dst;
	mfd_channel *a[3], *b[3];
	struct mfd_channel_set ss = { .size = sizeof(ss) }, ds = { .size = sizeof(ds) };
	mfd_error *err = NULL;
	uint64_t t0;

	guest_init(&src, 4, true, 2, "none");
	guest_init(&dst, 4, false, 2, "none");
	channel_pairs(a, b, 3);
	ss.main = a[0];
	ss.nmultifd = 2;
	ss.multifd = &a[1];
	/* A multifd channel where the main one belongs. */
	ds.main = b[1];
	ds.nmultifd = 2;
	ds.multifd = (mfd_channel *[]){ b[0], b[2] };
	ck_assert_ok(mfd_migrate_incoming_channels(dst.m, &ds, &err), err);
	ck_assert_ok(mfd_migrate_channels(src.m, &ss, &err), err);
	t0 = mono_ms();
	ck_assert_int_lt(mfd_migration_wait(dst.m, 30000, &err), 0);
	printf("engine: misplaced: destination: %s\n", mfd_error_message(err));
	ck_assert_msg(strstr(mfd_error_message(err), "the VMM's channels: identifying channel"),
		      "%s", mfd_error_message(err));
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_lt(mfd_migration_wait(src.m, 30000, &err), 0);
	mfd_error_free(err);
	/* Not after a stray's hello deadline or the channel timeout. */
	ck_assert_msg(mono_ms() - t0 < 15000, "took %llu ms",
		      (unsigned long long)(mono_ms() - t0));
	ck_assert_int_eq(src.vm_starts, src.vm_stops);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

/* ---- event loops (mfd_migration_event_fd) --------------------------------------------- */

static bool terminal(enum mfd_state st)
{
	return st == MFD_STATE_COMPLETED || st == MFD_STATE_FAILED || st == MFD_STATE_CANCELLED;
}

/*
 * A VMM built around poll(): both sides' descriptors wake it as the
 * migration moves, and a last wake comes once mfd_migration_wait() no longer
 * blocks, so the loop never has to block in the library.
 */
START_TEST(event_fd_drives_an_event_loop)
{
	struct guest src, dst;
	mfd_error *err = NULL;
	struct pollfd p[2];
	unsigned wakes[2] = { 0, 0 };
	bool done[2] = { false, false };
	uint64_t n;
	int fds = count_fds();

	ck_assert_int_eq(mfd_migration_event_fd(NULL), MFD_EINVAL);
	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	p[0] = (struct pollfd){ .fd = mfd_migration_event_fd(src.m), .events = POLLIN };
	p[1] = (struct pollfd){ .fd = mfd_migration_event_fd(dst.m), .events = POLLIN };
	ck_assert_int_ge(p[0].fd, 0);
	ck_assert_int_ge(p[1].fd, 0);
	ck_assert_int_eq(mfd_migration_event_fd(src.m), p[0].fd);	/* one per object */
	ck_assert(fcntl(p[0].fd, F_GETFL) & O_NONBLOCK);
	ck_assert(fcntl(p[0].fd, F_GETFD) & FD_CLOEXEC);
	/* Nothing moved yet. */
	ck_assert_int_eq(poll(p, 2, 0), 0);
	guest_start_writer(&src);
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	while (!done[0] || !done[1]) {
		int r = poll(p, 2, 30000);

		ck_assert_msg(r > 0, "no wake within 30 s (source %s, destination %s)",
			      mfd_state_name(mfd_migration_state(src.m)),
			      mfd_state_name(mfd_migration_state(dst.m)));
		for (int i = 0; i < 2; i++) {
			mfd_migration *m = i ? dst.m : src.m;

			if (!(p[i].revents & POLLIN))
				continue;
			ck_assert_int_eq(read(p[i].fd, &n, sizeof(n)), (ssize_t)sizeof(n));
			ck_assert_uint_ge(n, 1);
			wakes[i]++;
			/* At the end, the result without blocking (1 ms at most). */
			if (terminal(mfd_migration_state(m)) &&
			    mfd_migration_wait(m, 1, NULL) != MFD_ERUNNING) {
				ck_assert_ok(mfd_migration_wait(m, 1, &err), err);
				done[i] = true;
			}
			if (done[i])
				p[i].events = 0;
		}
	}
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_COMPLETED);
	ck_assert_int_eq(mfd_migration_state(dst.m), MFD_STATE_COMPLETED);
	/* setup, active, device, completed and the end: often fewer wakes. */
	ck_assert_uint_ge(wakes[0], 1);
	ck_assert_uint_ge(wakes[1], 1);
	ck_assert_pages_eq(src.snapshot, dst.ram, src.size, PS);
	guest_free(&src);
	guest_free(&dst);
	/* mfd_migration_free() closed them. */
	ck_assert_int_eq(count_fds(), fds);
}
END_TEST

/* ---- thread hooks (mfd_thread_hooks_set) ---------------------------------------------- */

static pthread_mutex_t th_lock = PTHREAD_MUTEX_INITIALIZER;
static char th_names[64][16];
static int th_starts[64], th_exits[64];
static unsigned th_n;
static atomic_int th_misnamed, th_opaque_bad;

static unsigned th_slot(const char *name)
{
	unsigned i;

	for (i = 0; i < th_n; i++)
		if (!strcmp(th_names[i], name))
			return i;
	ck_assert_uint_lt(th_n, 64);
	snprintf(th_names[th_n], sizeof(th_names[0]), "%s", name);
	return th_n++;
}

static void th_start(void *opaque, const char *name)
{
	char self[16] = "";

	/* On the new thread, already named. */
	pthread_getname_np(pthread_self(), self, sizeof(self));
	if (strcmp(self, name))
		atomic_fetch_add(&th_misnamed, 1);
	if (opaque != &th_lock)
		atomic_fetch_add(&th_opaque_bad, 1);
	pthread_mutex_lock(&th_lock);
	th_starts[th_slot(name)]++;
	pthread_mutex_unlock(&th_lock);
}

static void th_exit(void *opaque, const char *name)
{
	(void)opaque;
	pthread_mutex_lock(&th_lock);
	th_exits[th_slot(name)]++;
	pthread_mutex_unlock(&th_lock);
}

static int th_count(const char *name, bool exits)
{
	int n = -1;

	pthread_mutex_lock(&th_lock);
	for (unsigned i = 0; i < th_n; i++)
		if (!strcmp(th_names[i], name))
			n = exits ? th_exits[i] : th_starts[i];
	pthread_mutex_unlock(&th_lock);
	return n < 0 ? 0 : n;
}

/* Every thread of a migration runs the VMM's hooks once at its start, named,
 * and once at its exit; removing the hooks stops the calls. */
START_TEST(thread_hooks_see_every_library_thread)
{
	const struct mfd_thread_hooks hooks = { .size = sizeof(hooks), .thread_start = th_start,
						.thread_exit = th_exit };
	const struct mfd_thread_hooks tiny = { .size = 4 };
	static const char *const names[] = { "mfd-migration", "mfd-incoming", "mfd-return-path",
					     "mfd-send/0", "mfd-send/1", "mfd-recv/0",
					     "mfd-recv/1" };
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_thread_hooks_set(&tiny, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "struct mfd_thread_hooks of 4 bytes");
	ck_assert_ok(mfd_thread_hooks_set(&hooks, &th_lock, &err), err);
	migrate_live(2, "none", "tcp:127.0.0.1:0");
	ck_assert_ok(mfd_thread_hooks_set(NULL, NULL, &err), err);
	for (size_t i = 0; i < MFD_ARRAY_SIZE(names); i++) {
		ck_assert_msg(th_count(names[i], false) == 1, "%s started %d times", names[i],
			      th_count(names[i], false));
		ck_assert_msg(th_count(names[i], true) == 1, "%s exited %d times", names[i],
			      th_count(names[i], true));
	}
	ck_assert_int_eq(atomic_load(&th_misnamed), 0);
	ck_assert_int_eq(atomic_load(&th_opaque_bad), 0);
	/* Removed: nothing more. */
	unsigned before = th_n;
	int starts = th_count("mfd-migration", false);

	migrate_live(1, "none", "tcp:127.0.0.1:0");
	ck_assert_uint_eq(th_n, before);
	ck_assert_int_eq(th_count("mfd-migration", false), starts);
}
END_TEST

/*
 * A loopback listener whose accept queue is full and which nobody accepts
 * from: a connect to it hangs (its SYNs go unanswered), as to a host that has
 * gone away.  Returns the listener; its URI in @uri, the queue's sockets in
 * @fill.
 */
static int silent_listener(char *uri, size_t len, int fill[4])
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	int l;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(l, 0);
	ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(l, 0), 0);
	ck_assert_int_eq(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	for (int i = 0; i < 4; i++) {
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		ck_assert_int_ge(fill[i], 0);
		ck_assert(connect(fill[i], (struct sockaddr *)&a, sizeof(a)) == 0 ||
			  errno == EINPROGRESS);
	}
	usleep(100 * 1000);
	snprintf(uri, len, "tcp:127.0.0.1:%u", ntohs(a.sin_port));
	return l;
}

static void silent_listener_close(int l, const int fill[4])
{
	for (int i = 0; i < 4; i++)
		close(fill[i]);
	close(l);
}

/*
 * A cancel while the source is still connecting ends the connect at once,
 * not at channel-timeout-ms: the destination's accept queue is full, so
 * its SYNs go unanswered, as with a host that has gone away.
 */
START_TEST(cancel_ends_a_hanging_connect)
{
	struct guest src;
	mfd_error *err = NULL;
	int l, fill[4], r;
	char uri[64];
	uint64_t t0;

	l = silent_listener(uri, sizeof(uri), fill);
	guest_init(&src, 4, true, 2, "none");
	ck_assert_ok(mfd_set_param(src.m, "channel-timeout-ms", "60000", &err), err);
	ck_assert_ok(mfd_migrate(src.m, uri, &err), err);
	usleep(300 * 1000);
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_SETUP);
	t0 = mono_ms();
	mfd_migrate_cancel(src.m);
	r = mfd_migration_wait(src.m, 10000, &err);
	ck_assert_msg(r != MFD_ERUNNING, "the cancel did not end the connect within 10 s");
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_CANCELLED);
	printf("engine: cancelled connect: %s (%llu ms)\n", mfd_error_message(err),
	       (unsigned long long)(mono_ms() - t0));
	mfd_error_free(err);
	silent_listener_close(l, fill);
	guest_free(&src);
}
END_TEST

/*
 * mfd_migration_wait() tells "still running" (MFD_ERUNNING) from a migration
 * that failed on a deadline (MFD_ETIMEDOUT): a source whose destination
 * never accepts its main channel is still in setup after 100 ms, and fails
 * once channel-timeout-ms passes.
 */
START_TEST(wait_tells_running_from_timed_out)
{
	struct guest src;
	mfd_error *err = NULL;
	int l, fill[4];
	char uri[64];

	l = silent_listener(uri, sizeof(uri), fill);
	guest_init(&src, 4, true, 2, "none");
	ck_assert_ok(mfd_set_param(src.m, "channel-timeout-ms", "1500", &err), err);
	ck_assert_ok(mfd_migrate(src.m, uri, &err), err);

	/* Running: the wait's own timeout, not a failure. */
	ck_assert_int_eq(mfd_migration_wait(src.m, 100, &err), MFD_ERUNNING);
	ck_assert_mfd_error(err, MFD_ERUNNING, "migration still setup after 100 ms");
	ck_assert_str_eq(mfd_strerror(MFD_ERUNNING), "still running");
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_SETUP);

	/* Failed on channel-timeout-ms: the migration's own MFD_ETIMEDOUT. */
	ck_assert_int_eq(mfd_migration_wait(src.m, 30000, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "1500 ms");
	ck_assert_int_eq(mfd_migration_state(src.m), MFD_STATE_FAILED);
	/* Again, even with a short timeout: the same result, never "running". */
	ck_assert_int_eq(mfd_migration_wait(src.m, 1, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "1500 ms");
	silent_listener_close(l, fill);
	guest_free(&src);
}
END_TEST

/*
 * A source with RAM needs a vm_stop hook, or vm-stopped-externally on:
 * otherwise the vCPUs would write the RAM its last pass sends.  Refused at
 * start, by every source entry point, with what to do; a destination, or a
 * source without RAM, needs neither.
 */
static int only_vm_stop(void *opaque, mfd_error **errp)
{
	(void)opaque, (void)errp;
	return 0;
}

/* Started: the migration then fails to connect, which is not our concern. */
static void assert_started(mfd_migration *m, const char *uri)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migrate(m, uri, &err), err);
	ck_assert_int_lt(mfd_migration_wait(m, 30000, &err), 0);
	ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_FAILED);
	mfd_error_free(err);
}

START_TEST(vm_stop_required_with_ram)
{
	const mfd_vmm_hooks stop_hooks = { .size = sizeof(stop_hooks), .vm_stop = only_vm_stop };
	const mfd_vmm_hooks no_stop = { .size = sizeof(no_stop) };
	uint8_t *ram = mmap(NULL, 16 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	mfd_channel *a, *b;
	struct mfd_channel_set set = { .size = sizeof(set) };
	char uri[64];
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	int fds;

	ck_assert_ptr_ne(ram, MAP_FAILED);
	snprintf(uri, sizeof(uri), "unix:/tmp/mfd-no-such-%d.sock", (int)getpid());
	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_ram_block_add(m, "pc.ram", ram, 16 * PS, PS, &err), err);

	/* Neither hook nor parameter: refused, nothing started. */
	ck_assert_int_eq(mfd_migrate(m, uri, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "mfd_migrate: RAM blocks are registered but no "
			    "vm_stop hook is installed");
	ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_NONE);
	/* Hooks without vm_stop are no better. */
	ck_assert_ok(mfd_migration_set_hooks(m, &no_stop, NULL, &err), err);
	ck_assert_int_eq(mfd_migrate(m, uri, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "set vm-stopped-externally on");
	/* The same from mfd_migrate_channels(), which still takes the channels. */
	fds = count_fds();
	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	set.main = a;
	ck_assert_int_eq(mfd_set_param(m, "multifd-channels", "1", &err), 0);
	ck_assert_int_eq(mfd_migrate_channels(m, &set, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "mfd_migrate_channels: RAM blocks are registered "
			    "but no vm_stop hook");
	mfd_channel_free(b);
	ck_assert_int_eq(count_fds(), fds);
	ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_NONE);

	/* A destination needs no vm_stop. */
	ck_assert_ok(mfd_migrate_incoming(m, "tcp:127.0.0.1:0", &err), err);
	mfd_migrate_cancel(m);
	ck_assert_int_lt(mfd_migration_wait(m, 30000, &err), 0);
	mfd_error_free(err);
	err = NULL;

	/* Accepted with a vm_stop hook... */
	ck_assert_ok(mfd_migration_set_hooks(m, &stop_hooks, NULL, &err), err);
	assert_started(m, uri);
	/* ... or with the parameter. */
	ck_assert_ok(mfd_migration_set_hooks(m, &no_stop, NULL, &err), err);
	ck_assert_ok(mfd_set_param(m, "vm-stopped-externally", "on", &err), err);
	assert_started(m, uri);
	mfd_migration_free(m);

	/* No RAM: nothing for vCPUs to dirty behind the library's back. */
	ck_assert_ok(mfd_migration_new(&m, &err), err);
	assert_started(m, uri);
	mfd_migration_free(m);
	munmap(ram, 16 * PS);
}
END_TEST

/* ---- a log per migration object (mfd_migration_set_log_handler) ---------------------- */

struct logbuf {
	pthread_mutex_t lock;
	mfd_migration *m;
	atomic_int wrong_object;
	size_t len;
	char text[65536];
};

static void object_log(mfd_migration *m, int level, const char *msg, void *opaque)
{
	struct logbuf *b = opaque;

	(void)level;
	if (m != b->m)
		atomic_fetch_add(&b->wrong_object, 1);
	pthread_mutex_lock(&b->lock);
	b->len += (size_t)snprintf(b->text + b->len, sizeof(b->text) - b->len, "%s\n", msg);
	if (b->len >= sizeof(b->text))
		b->len = sizeof(b->text) - 1;
	pthread_mutex_unlock(&b->lock);
}

/* Two VMs in one process: each object's messages, from every thread that
 * works for it, reach its own handler and no other; the process-wide
 * handler gets none of them. */
START_TEST(log_handler_per_migration)
{
	static struct logbuf ls, ld;
	struct guest src, dst;
	const char *global;

	guest_init(&src, 8, true, 2, "none");
	guest_init(&dst, 8, false, 2, "none");
	memset(&ls, 0, sizeof(ls));
	memset(&ld, 0, sizeof(ld));
	pthread_mutex_init(&ls.lock, NULL);
	pthread_mutex_init(&ld.lock, NULL);
	ls.m = src.m;
	ld.m = dst.m;
	ck_assert_int_eq(mfd_migration_set_log_handler(NULL, object_log, &ls, MFD_LOG_INFO),
			 MFD_EINVAL);
	ck_assert_int_eq(mfd_migration_set_log_handler(src.m, object_log, &ls, 9), MFD_EINVAL);
	ck_assert_int_eq(mfd_migration_set_log_handler(src.m, object_log, &ls, MFD_LOG_INFO), 0);
	ck_assert_int_eq(mfd_migration_set_log_handler(dst.m, object_log, &ld, MFD_LOG_INFO), 0);
	test_log_capture_start();
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	assert_pair_completed(&src, &dst);
	global = test_log_capture_stop();
	ck_assert_msg(strstr(ls.text, "migration outgoing: none -> setup") &&
		      strstr(ls.text, "migration outgoing: device -> completed") &&
		      !strstr(ls.text, "migration incoming"), "source's log:\n%s", ls.text);
	ck_assert_msg(strstr(ld.text, "migration incoming: none -> setup") &&
		      strstr(ld.text, "-> completed") && !strstr(ld.text, "migration outgoing"),
		      "destination's log:\n%s", ld.text);
	ck_assert_msg(!strstr(global, "migration outgoing") && !strstr(global, "migration incoming"),
		      "the process-wide handler got:\n%s", global);
	ck_assert_int_eq(atomic_load(&ls.wrong_object), 0);
	ck_assert_int_eq(atomic_load(&ld.wrong_object), 0);

	/* Removed: the source's messages go to the process-wide handler again. */
	ck_assert_int_eq(mfd_migration_set_log_handler(src.m, NULL, NULL, 0), 0);
	size_t before = ls.len;

	guest_free(&dst);
	guest_init(&dst, 8, false, 2, "none");
	test_log_capture_start();
	start_pair(&src, &dst, "tcp:127.0.0.1:0");
	assert_pair_completed(&src, &dst);
	global = test_log_capture_stop();
	ck_assert_msg(strstr(global, "migration outgoing: none -> setup") != NULL, "global:\n%s",
		      global);
	ck_assert_uint_eq(ls.len, before);
	guest_free(&src);
	guest_free(&dst);
}
END_TEST

Suite *suite_engine(void)
{
	Suite *s = suite_create("engine");
	TCase *tc = tcase_create("precopy");

	tcase_add_test(tc, parameters);
	tcase_add_loop_test(tc, live_precopy_matrix, 0, 6);
	tcase_add_test(tc, live_precopy_over_unix);
	tcase_add_test(tc, zero_pages_and_dest_ram_zeroed);
	tcase_add_test(tc, migrate_to_file_and_back);
	tcase_add_test(tc, cancel_then_retry);
	tcase_add_test(tc, destination_refusal_reaches_the_source);
	tcase_add_test(tc, mismatched_channels_fail_clearly);
	tcase_add_test(tc, auto_converge_throttles_a_fast_writer);
	tcase_add_loop_test(tc, cancel_at_every_state, AT_NONE, AT_COUNT);
	tcase_add_test(tc, destination_dies_mid_iteration);
	tcase_add_test(tc, no_convergence_without_auto_converge);
	tcase_add_test(tc, switchover_waits_for_the_destination_ack);
	tcase_add_test(tc, zero_copy_send_live);
	tcase_add_test(tc, zero_copy_send_refusals);
	tcase_add_test(tc, zero_copy_send_without_locked_memory);
	tcase_add_test(tc, soak_of_back_to_back_migrations);
#if MFD_HAVE_TLS
	tcase_add_test(tc, tls_psk_authz);
	tcase_add_test(tc, tls_knobs_are_never_ignored);
#endif
	tcase_set_timeout(tc, 180);
	suite_add_tcase(s, tc);

	/* Connections that are not the source's, and a cancel racing setup. */
	tc = tcase_create("strays");
	tcase_add_test(tc, stray_connections_do_not_fail_an_incoming_migration);
	tcase_add_test(tc, stray_connections_under_tls_psk);
	tcase_add_test(tc, too_many_stray_connections_fail_clearly);
	tcase_add_test(tc, cancel_races_a_failing_gather);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);

	/* What embedding VMMs need (issue 20). */
	tc = tcase_create("vmm-channels");
	tcase_add_test(tc, vmm_channels_live_precopy);
	tcase_add_test(tc, vmm_channels_main_only);
	tcase_add_test(tc, vmm_channels_bad_sets);
	tcase_add_test(tc, vmm_channels_misplaced_on_the_destination);
	tcase_add_test(tc, event_fd_drives_an_event_loop);
	tcase_add_test(tc, thread_hooks_see_every_library_thread);
	tcase_add_test(tc, cancel_ends_a_hanging_connect);
	tcase_add_test(tc, wait_tells_running_from_timed_out);
	tcase_add_test(tc, vm_stop_required_with_ram);
	tcase_add_test(tc, log_handler_per_migration);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}
