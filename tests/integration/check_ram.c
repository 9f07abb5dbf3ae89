/* SPDX-License-Identifier: MIT */
/*
 * RAM as a VMM registers it: block descriptors, absent (discarded) ranges,
 * hot-plug between migrations, more blocks than the old fixed table held,
 * and dirty tracking the KVM way: a model of KVM's manual-protect dirty log
 * (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with KVM_DIRTY_LOG_INITIALLY_SET)
 * behind the dirty_sync / dirty_clear hooks, beside a device that reports
 * its DMA through mfd_ram_mark_dirty().  Every migration is checked byte for
 * byte against the source's memory when its VM stopped.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

#define PS 4096u

static void *map_ram(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

/* @channels multifd channels over TCP; 0: through a file, one stream (the
 * pages go as main-stream records). */
static mfd_migration *new_side(unsigned channels)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	char v[16];

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	snprintf(v, sizeof(v), "%u", channels ? channels : 1);
	ck_assert_ok(mfd_set_param(m, "multifd-channels", v, &err), err);
	ck_assert_ok(mfd_set_param(m, "channel-timeout-ms", "20000", &err), err);
	/* Nothing runs in these guests unless a test installs a vm_stop. */
	ck_assert_ok(mfd_set_param(m, "vm-stopped-externally", "on", &err), err);
	return m;
}

static void migrate_file(mfd_migration *src, mfd_migration *dst)
{
	mfd_error *err = NULL;
	char uri[256];

	snprintf(uri, sizeof(uri), "file:/tmp/mfd-check-ram-%d", (int)getpid());
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(src, 60000, &err), err);
	ck_assert_ok(mfd_migrate_incoming(dst, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(dst, 60000, &err), err);
	unlink(uri + 5);
}

static void migrate_pair(mfd_migration *src, mfd_migration *dst)
{
	mfd_error *err = NULL;
	char uri[256];

	ck_assert_ok(mfd_migrate_incoming(dst, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(src, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(dst, 60000, &err), err);
}

static void fill(uint8_t *p, size_t size, uint32_t block)
{
	for (size_t pg = 0; pg < size / PS; pg++)
		if (pg % 3)	/* every third page stays zero */
			test_fill_page(p + pg * PS, PS, block, pg, 0);
}

static int stop_ok(void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	return 0;
}

/* ---- descriptors ---------------------------------------------------------------- */

START_TEST(register_checks_every_member)
{
	mfd_migration *m = new_side(1);
	mfd_error *err = NULL;
	uint8_t *ram = map_ram(1 << 20);
	int cookie;
	struct mfd_ram_block_desc d, good = {
		.size = sizeof(d), .flags = MFD_RAM_SHARED, .name = "a", .host = ram,
		.length = 256 << 10, .page_size = PS, .dirty_granularity = 0, .fd = -1,
		.cookie = &cookie,
	};

#define BAD(field, value, code, text)                                       \
	do {                                                                \
		d = good;                                                   \
		d.field = value;                                            \
		ck_assert_int_eq(mfd_ram_block_register(m, &d, &err), code); \
		ck_assert_mfd_error(err, code, text);                       \
	} while (0)
	BAD(size, 40, MFD_EINVAL, "struct mfd_ram_block_desc of 40 bytes is smaller");
	BAD(name, NULL, MFD_EINVAL, "name is NULL");
	BAD(name, "", MFD_EINVAL, "1 to 255 bytes");
	BAD(flags, 0x80, MFD_EINVAL, "unknown flags 0x80");
	BAD(host, NULL, MFD_EINVAL, "host pointer is NULL");
	BAD(host, ram + 100, MFD_EINVAL, "not 4 KiB aligned");
	BAD(page_size, 6000, MFD_EINVAL, "page size 6000");
	BAD(page_size, 2048, MFD_EINVAL, "page size 2048");
	BAD(length, 0, MFD_EINVAL, "length 0");
	BAD(length, PS + 1, MFD_EINVAL, "length 4097");
	BAD(dirty_granularity, 3 * PS, MFD_EINVAL, "dirty granularity 12288");
	BAD(fd, -2, MFD_EINVAL, "fd -2");
	BAD(fd_offset, PS, MFD_EINVAL, "fd offset without an fd");
#undef BAD
	d = good;
	d.fd = 0;
	d.fd_offset = 100;
	ck_assert_int_eq(mfd_ram_block_register(m, &d, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "fd offset 100");

	/* A newer caller's bigger struct: fine while its extra bytes are 0. */
	struct {
		struct mfd_ram_block_desc d;
		uint64_t future;
	} big = { .d = good };

	big.d.size = sizeof(big);
	big.future = 1;
	ck_assert_int_eq(mfd_ram_block_register(m, &big.d, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "does not know");
	big.future = 0;
	ck_assert_int_eq(mfd_ram_block_register(m, &big.d, &err), 0);	/* index 0 */

	d = good;
	d.name = "b";
	ck_assert_int_eq(mfd_ram_block_register(m, &d, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "overlaps block 'a'");
	d.name = "a";
	d.host = ram + (512 << 10);
	ck_assert_int_eq(mfd_ram_block_register(m, &d, &err), MFD_EEXIST);
	ck_assert_mfd_error(err, MFD_EEXIST, "'a' is already registered");
	d.name = "b";
	d.flags = MFD_RAM_FRESH;
	d.dirty_granularity = 2 * PS;
	ck_assert_int_eq(mfd_ram_block_register(m, &d, &err), 1);
	ck_assert_int_eq(mfd_ram_block_add(m, "c", ram + (768 << 10), 64 << 10, PS, &err), 0);

	/* What the library kept. */
	struct mfd_ram_block_desc out = { .size = sizeof(out) };
	uint64_t absent = 99;

	ck_assert_int_eq(mfd_ram_block_info(m, 0, &out, &absent), 0);
	ck_assert_str_eq(out.name, "a");
	ck_assert_ptr_eq(out.cookie, &cookie);
	ck_assert_uint_eq(out.flags, MFD_RAM_SHARED);
	ck_assert_uint_eq(out.dirty_granularity, PS);
	ck_assert_int_eq(out.fd, -1);
	ck_assert_uint_eq(absent, 0);
	ck_assert_int_eq(mfd_ram_block_info(m, 1, &out, NULL), 0);
	ck_assert_str_eq(out.name, "b");
	ck_assert_uint_eq(out.flags, MFD_RAM_FRESH);
	ck_assert_uint_eq(out.dirty_granularity, 2 * PS);
	ck_assert_int_eq(mfd_ram_block_info(m, 2, &out, NULL), 0);
	ck_assert_str_eq(out.name, "c");
	ck_assert_ptr_null(out.cookie);
	ck_assert_int_eq(mfd_ram_block_info(m, 3, &out, NULL), MFD_ENOENT);
	out.size = 16;
	ck_assert_int_eq(mfd_ram_block_info(m, 0, &out, NULL), MFD_EINVAL);
	/* Removing one moves the later ones down. */
	ck_assert_int_eq(mfd_ram_block_remove(m, "a"), 0);
	out.size = sizeof(out);
	ck_assert_int_eq(mfd_ram_block_info(m, 0, &out, NULL), 0);
	ck_assert_str_eq(out.name, "b");
	mfd_migration_free(m);
	munmap(ram, 1 << 20);
}
END_TEST

START_TEST(absent_ranges_merge_and_split)
{
	mfd_migration *m = new_side(1);
	mfd_error *err = NULL;
	uint8_t *ram = map_ram(64 * PS);
	struct mfd_ram_block_desc out = { .size = sizeof(out) };
	uint64_t absent;

	ck_assert_int_eq(mfd_ram_block_add(m, "r", ram, 64 * PS, PS, &err), 0);
#define ABSENT(want)                                                      \
	do {                                                              \
		ck_assert_int_eq(mfd_ram_block_info(m, 0, &out, &absent), 0); \
		ck_assert_uint_eq(absent, (uint64_t)(want) * PS);         \
	} while (0)
	ck_assert_ok(mfd_ram_discard(m, "r", 0, PS, &err), err);
	ck_assert_ok(mfd_ram_discard(m, "r", 2 * PS, PS, &err), err);
	ABSENT(2);
	ck_assert_ok(mfd_ram_discard(m, "r", PS, PS, &err), err);	/* joins both */
	ABSENT(3);
	ck_assert_ok(mfd_ram_discard(m, "r", 0, 2 * PS, &err), err);	/* inside */
	ABSENT(3);
	ck_assert_ok(mfd_ram_discard(m, "r", 10 * PS, 10 * PS, &err), err);
	ABSENT(13);
	ck_assert_ok(mfd_ram_populate(m, "r", 12 * PS, 2 * PS, &err), err);	/* a hole */
	ABSENT(11);
	ck_assert_ok(mfd_ram_populate(m, "r", 0, 64 * PS, &err), err);
	ABSENT(0);
#undef ABSENT
	ck_assert_int_eq(mfd_ram_discard(m, "r", 100, PS, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not whole 4096-byte pages");
	ck_assert_int_eq(mfd_ram_discard(m, "r", 60 * PS, 8 * PS, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "inside block 'r'");
	ck_assert_int_eq(mfd_ram_discard(m, "r", 0, 0, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not whole");
	ck_assert_int_eq(mfd_ram_populate(m, "nope", 0, PS, &err), MFD_ENOENT);
	ck_assert_mfd_error(err, MFD_ENOENT, "no RAM block 'nope'");
	mfd_migration_free(m);
	munmap(ram, 64 * PS);
}
END_TEST

/* ---- migrations ------------------------------------------------------------------ */

/* 300 blocks: more than the 256 the table held before. */
START_TEST(more_blocks_than_the_old_table)
{
	enum { N = 300, BS = 4 * PS };
	mfd_migration *src = new_side(2), *dst = new_side(2);
	mfd_error *err = NULL;
	uint8_t *a = map_ram((size_t)N * BS), *b = map_ram((size_t)N * BS);
	char name[32];

	for (unsigned i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "dimm%u", i);
		/* Registered in reverse address order: the tracker sorts them. */
		ck_assert_int_eq(mfd_ram_block_add(src, name, a + (size_t)(N - 1 - i) * BS, BS, PS,
						   &err), 0);
		ck_assert_int_eq(mfd_ram_block_add(dst, name, b + (size_t)(N - 1 - i) * BS, BS, PS,
						   &err), 0);
	}
	fill(a, (size_t)N * BS, 7);
	mfd_ram_mark_dirty(src, a, 1);		/* no tracker yet: ignored */
	migrate_pair(src, dst);
	ck_assert_pages_eq(a, b, (size_t)N * BS, PS);
	mfd_migration_free(src);
	mfd_migration_free(dst);
	munmap(a, (size_t)N * BS);
	munmap(b, (size_t)N * BS);
}
END_TEST

/*
 * A range marked absent on both sides is mapped PROT_NONE there, as an
 * unplugged virtio-mem range: the source must never read it (it would die
 * of SIGSEGV) and nothing is written into it; the rest arrives.  With and
 * without multifd channels (the pages then go on the main stream).
 */
static void migrate_with_hole(unsigned channels)
{
	enum { SIZE = 256 * PS, HOLE = 64 * PS, HOLE_LEN = 32 * PS };
	mfd_migration *src = new_side(channels), *dst = new_side(channels);
	mfd_error *err = NULL;
	uint8_t *a = map_ram(SIZE), *b = map_ram(SIZE);

	ck_assert_int_eq(mfd_ram_block_add(src, "ram", a, SIZE, PS, &err), 0);
	ck_assert_int_eq(mfd_ram_block_add(dst, "ram", b, SIZE, PS, &err), 0);
	fill(a, SIZE, 3);
	ck_assert_ok(mfd_ram_discard(src, "ram", HOLE, HOLE_LEN, &err), err);
	ck_assert_ok(mfd_ram_discard(dst, "ram", HOLE, HOLE_LEN, &err), err);
	ck_assert_int_eq(mprotect(a + HOLE, HOLE_LEN, PROT_NONE), 0);
	ck_assert_int_eq(mprotect(b + HOLE, HOLE_LEN, PROT_NONE), 0);
	if (channels)
		migrate_pair(src, dst);
	else
		migrate_file(src, dst);
	ck_assert_pages_eq(a, b, HOLE, PS);
	ck_assert_pages_eq(a + HOLE + HOLE_LEN, b + HOLE + HOLE_LEN, SIZE - HOLE - HOLE_LEN, PS);

	struct mfd_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(mfd_migration_stats(src, &st), 0);
	ck_assert_uint_eq(st.ram_total, SIZE);
	mfd_migration_free(src);
	mfd_migration_free(dst);
	munmap(a, SIZE);
	munmap(b, SIZE);
}

START_TEST(absent_ranges_are_never_read)
{
	migrate_with_hole(2);
	migrate_with_hole(0);
}
END_TEST

/* A destination that marked a range absent refuses a page the source sends
 * there, naming it, instead of writing into memory the VMM unmapped. */
START_TEST(absent_range_mismatch_is_refused)
{
	for (unsigned channels = 0; channels <= 2; channels += 2) {
		mfd_migration *src = new_side(channels), *dst = new_side(channels);
		mfd_error *err = NULL;
		uint8_t *a = map_ram(64 * PS), *b = map_ram(64 * PS);
		char uri[256];

		ck_assert_int_eq(mfd_ram_block_add(src, "ram", a, 64 * PS, PS, &err), 0);
		ck_assert_int_eq(mfd_ram_block_add(dst, "ram", b, 64 * PS, PS, &err), 0);
		fill(a, 64 * PS, 1);
		memset(a + 8 * PS, 0x11, 4 * PS);	/* data pages in the range */
		ck_assert_ok(mfd_ram_discard(dst, "ram", 8 * PS, 4 * PS, &err), err);
		ck_assert_int_eq(mprotect(b + 8 * PS, 4 * PS, PROT_NONE), 0);
		if (channels) {
			ck_assert_ok(mfd_migrate_incoming(dst, "tcp:127.0.0.1:0", &err), err);
			ck_assert_int_eq(mfd_migration_listen_uri(dst, uri, sizeof(uri)), 0);
			ck_assert_ok(mfd_migrate(src, uri, &err), err);
		} else {
			snprintf(uri, sizeof(uri), "file:/tmp/mfd-check-ram-%d", (int)getpid());
			ck_assert_ok(mfd_migrate(src, uri, &err), err);
			ck_assert_ok(mfd_migration_wait(src, 60000, &err), err);
			ck_assert_ok(mfd_migrate_incoming(dst, uri, &err), err);
		}
		ck_assert_int_lt(mfd_migration_wait(dst, 60000, &err), 0);
		ck_assert_mfd_error(err, MFD_EPROTO, "marked absent");
		if (channels)
			ck_assert_int_lt(mfd_migration_wait(src, 60000, &err), 0);
		else
			unlink(uri + 5);
		mfd_error_free(err);
		err = NULL;
		mfd_migration_free(src);
		mfd_migration_free(dst);
		munmap(a, 64 * PS);
		munmap(b, 64 * PS);
	}
}
END_TEST

/* A DIMM plugged between two migrations travels with the second; the table
 * cannot change during one. */
START_TEST(hotplug_between_migrations)
{
	mfd_migration *src = new_side(2), *d1 = new_side(2), *d2 = new_side(2), *d3 = new_side(2);
	mfd_error *err = NULL;
	uint8_t *a = map_ram(64 * PS), *x = map_ram(32 * PS);
	uint8_t *b1 = map_ram(64 * PS), *b2 = map_ram(64 * PS), *y2 = map_ram(32 * PS);
	uint8_t *b3 = map_ram(64 * PS);
	char uri[256];

	ck_assert_int_eq(mfd_ram_block_add(src, "pc.ram", a, 64 * PS, PS, &err), 0);
	ck_assert_int_eq(mfd_ram_block_add(d1, "pc.ram", b1, 64 * PS, PS, &err), 0);
	fill(a, 64 * PS, 1);
	migrate_pair(src, d1);
	ck_assert_pages_eq(a, b1, 64 * PS, PS);

	/* Plug a DIMM, migrate again: both blocks arrive. */
	ck_assert_int_eq(mfd_ram_block_add(src, "dimm0", x, 32 * PS, PS, &err), 0);
	fill(x, 32 * PS, 2);
	ck_assert_int_eq(mfd_ram_block_add(d2, "pc.ram", b2, 64 * PS, PS, &err), 0);
	ck_assert_int_eq(mfd_ram_block_add(d2, "dimm0", y2, 32 * PS, PS, &err), 0);
	ck_assert_ok(mfd_migrate_incoming(d2, "tcp:127.0.0.1:0", &err), err);
	/* During a migration: refused, and said why. */
	struct mfd_ram_block_desc d = {
		.size = sizeof(d), .name = "dimm1", .host = y2 + 16 * PS, .length = PS,
		.page_size = PS, .fd = -1,
	};

	ck_assert_int_eq(mfd_ram_block_register(d2, &d, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "between migrations");
	ck_assert_int_eq(mfd_ram_block_remove(d2, "dimm0"), MFD_ESTATE);
	ck_assert_int_eq(mfd_ram_discard(d2, "dimm0", 0, PS, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "a migration is running");
	ck_assert_int_eq(mfd_migration_listen_uri(d2, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(src, 60000, &err), err);
	ck_assert_ok(mfd_migration_wait(d2, 60000, &err), err);
	ck_assert_pages_eq(a, b2, 64 * PS, PS);
	ck_assert_pages_eq(x, y2, 32 * PS, PS);

	/* Unplug it again: the third migration has one block. */
	ck_assert_int_eq(mfd_ram_block_remove(src, "dimm0"), 0);
	ck_assert_int_eq(mfd_ram_block_add(d3, "pc.ram", b3, 64 * PS, PS, &err), 0);
	a[5 * PS] ^= 0xff;
	migrate_pair(src, d3);
	ck_assert_pages_eq(a, b3, 64 * PS, PS);
	mfd_migration_free(src);
	mfd_migration_free(d1);
	mfd_migration_free(d2);
	mfd_migration_free(d3);
	munmap(a, 64 * PS);
	munmap(x, 32 * PS);
	munmap(b1, 64 * PS);
	munmap(b2, 64 * PS);
	munmap(y2, 32 * PS);
	munmap(b3, 64 * PS);
}
END_TEST

/* ---- dirty tracking the KVM way ----------------------------------------------- */

/*
 * A model of KVM's dirty log for one block, per granule: a write to a
 * write-protected granule faults, sets its dirty bit and unprotects it; a
 * write to an unprotected one is not seen.  Manual protection
 * (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): GET copies the bits and changes
 * nothing, CLEAR drops the bits it is given and protects those granules
 * again; with KVM_DIRTY_LOG_INITIALLY_SET logging starts with every bit set
 * and nothing protected.  Without it GET also clears and protects, as
 * KVM_GET_DIRTY_LOG always did.  A per-granule spinlock makes the fault and
 * the write one step, as the hardware does.
 */
struct kvm_model {
	uint8_t *ram;
	size_t size;
	uint64_t page_size, gran;
	size_t ngran;
	bool manual;
	atomic_flag *lock;
	bool *prot, *dirty;
	atomic_bool logging;

	/* The vCPU and the device. */
	pthread_t vcpu, dma;
	atomic_bool run, stop;
	atomic_int parked;
	size_t dma_from;	/* the device writes [dma_from, size) */
	uint8_t *snapshot;

	/* What the hooks saw. */
	atomic_int begins, ends, syncs, clears, bad_clears;
	uint64_t last_round;
	bool round_order_ok;
	uint64_t cleared_granules;
};

static void g_lock(struct kvm_model *k, size_t g)
{
	while (atomic_flag_test_and_set_explicit(&k->lock[g], memory_order_acquire))
		;
}

static void g_unlock(struct kvm_model *k, size_t g)
{
	atomic_flag_clear_explicit(&k->lock[g], memory_order_release);
}

static void vcpu_write(struct kvm_model *k, size_t off, uint8_t v)
{
	size_t g = off / k->gran;

	g_lock(k, g);
	if (atomic_load(&k->logging) && k->prot[g]) {
		k->dirty[g] = true;
		k->prot[g] = false;
	}
	k->ram[off] = v;
	g_unlock(k, g);
}

static bool park(struct kvm_model *k)
{
	if (!atomic_load(&k->stop))
		return atomic_load(&k->run);
	atomic_fetch_add(&k->parked, 1);
	while (atomic_load(&k->stop) && atomic_load(&k->run))
		usleep(100);
	atomic_fetch_sub(&k->parked, 1);
	return atomic_load(&k->run);
}

static void *vcpu_thread(void *arg)
{
	struct kvm_model *k = arg;
	uint64_t n = 0;

	while (park(k)) {
		/* Strides that cross granules and pages in every order. */
		size_t off = (size_t)((n * 7919 * 64 + n) % k->dma_from);

		vcpu_write(k, off, (uint8_t)(n * 13 + 1));
		if (++n % 256 == 0)
			usleep(300);
	}
	return NULL;
}

/* A device writing by DMA: KVM sees nothing; it reports with
 * mfd_ram_mark_dirty(), as a VFIO or vhost-user log merged in would. */
struct dma_arg {
	struct kvm_model *k;
	mfd_migration *m;
};

static void *dma_thread(void *arg)
{
	struct dma_arg *d = arg;
	struct kvm_model *k = d->k;
	uint64_t n = 0;

	while (park(k)) {
		size_t off = k->dma_from + (size_t)((n * 4099) % (k->size - k->dma_from));

		k->ram[off] = (uint8_t)(n * 5 + 3);
		mfd_ram_mark_dirty(d->m, k->ram + off, 1);
		if (++n % 128 == 0)
			usleep(300);
	}
	return NULL;
}

static int km_vm_stop(void *opaque, mfd_error **errp)
{
	struct kvm_model *k = opaque;

	(void)errp;
	atomic_store(&k->stop, true);
	while (atomic_load(&k->parked) < 2)
		usleep(100);
	memcpy(k->snapshot, k->ram, k->size);
	return 0;
}

static int km_vm_start(void *opaque, mfd_error **errp)
{
	struct kvm_model *k = opaque;

	(void)errp;
	atomic_store(&k->stop, false);
	return 0;
}

static int km_log_start(void *opaque, mfd_error **errp)
{
	struct kvm_model *k = opaque;

	(void)errp;
	for (size_t g = 0; g < k->ngran; g++) {
		g_lock(k, g);
		k->dirty[g] = k->manual;	/* INITIALLY_SET */
		k->prot[g] = !k->manual;
		g_unlock(k, g);
	}
	atomic_store(&k->logging, true);
	return 0;
}

static void km_log_stop(void *opaque)
{
	struct kvm_model *k = opaque;

	atomic_store(&k->logging, false);
}

static int km_sync(void *opaque, unsigned block, void *cookie, uint64_t *bitmap, uint64_t nbits,
		   mfd_error **errp)
{
	struct kvm_model *k = opaque;

	if (block != 0 || cookie != k || nbits != k->ngran)
		return mfd_error_set(errp, MFD_EINVAL, "sync of block %u (cookie %p), %llu bits",
				     block, cookie, (unsigned long long)nbits);
	atomic_fetch_add(&k->syncs, 1);
	for (size_t g = 0; g < k->ngran; g++) {
		g_lock(k, g);
		if (k->dirty[g])
			bitmap[g / 64] |= 1ull << (g % 64);
		if (!k->manual) {
			k->dirty[g] = false;
			k->prot[g] = true;
		}
		g_unlock(k, g);
	}
	return 0;
}

static int km_clear(void *opaque, unsigned block, void *cookie, uint64_t first, uint64_t nbits,
		    const uint64_t *mask, mfd_error **errp)
{
	struct kvm_model *k = opaque;

	(void)errp;
	atomic_fetch_add(&k->clears, 1);
	if (block != 0 || cookie != k || first % 64 || first + nbits > k->ngran ||
	    nbits > (1u << 18) || !k->manual) {
		atomic_fetch_add(&k->bad_clears, 1);
		return 0;
	}
	for (uint64_t i = 0; i < nbits; i++) {
		if (!(mask[i / 64] >> (i % 64) & 1))
			continue;
		size_t g = (size_t)(first + i);

		g_lock(k, g);
		/* The contract: only granules the log reported dirty. */
		if (!k->dirty[g])
			atomic_fetch_add(&k->bad_clears, 1);
		k->dirty[g] = false;
		k->prot[g] = true;
		g_unlock(k, g);
		k->cleared_granules++;
	}
	return 0;
}

static int km_begin(void *opaque, uint64_t round, mfd_error **errp)
{
	struct kvm_model *k = opaque;

	(void)errp;
	if (round != k->last_round + 1 || atomic_load(&k->begins) != atomic_load(&k->ends))
		k->round_order_ok = false;
	k->last_round = round;
	atomic_fetch_add(&k->begins, 1);
	return 0;
}

static int km_end(void *opaque, uint64_t round, mfd_error **errp)
{
	struct kvm_model *k = opaque;

	(void)errp;
	if (round != k->last_round)
		k->round_order_ok = false;
	atomic_fetch_add(&k->ends, 1);
	return 0;
}

static void dirty_log_case(uint64_t page_size, uint64_t gran, bool manual)
{
	enum { SIZE = 8 << 20 };
	static struct kvm_model k;
	mfd_migration *src = new_side(2), *dst = new_side(2);
	mfd_error *err = NULL;
	uint8_t *b = map_ram(SIZE);
	struct dma_arg da = { &k, src };
	mfd_vmm_hooks h = {
		.size = sizeof(mfd_vmm_hooks),
		.vm_stop = km_vm_stop,
		.vm_start = km_vm_start,
		.dirty_log_start = km_log_start,
		.dirty_log_stop = km_log_stop,
		.dirty_sync = km_sync,
		.dirty_sync_begin = km_begin,
		.dirty_sync_end = km_end,
		.dirty_clear = manual ? km_clear : NULL,
	};

	memset(&k, 0, sizeof(k));
	k.ram = map_ram(SIZE);
	k.size = SIZE;
	k.page_size = page_size;
	k.gran = gran;
	k.ngran = SIZE / gran;
	k.manual = manual;
	k.dma_from = SIZE - SIZE / 8;
	k.round_order_ok = true;
	k.lock = calloc(k.ngran, sizeof(*k.lock));
	k.prot = calloc(k.ngran, 1);
	k.dirty = calloc(k.ngran, 1);
	k.snapshot = malloc(SIZE);
	ck_assert(k.lock && k.prot && k.dirty && k.snapshot);
	fill(k.ram, SIZE, 9);

	struct mfd_ram_block_desc d = {
		.size = sizeof(d), .name = "pc.ram", .host = k.ram, .length = SIZE,
		.page_size = page_size, .dirty_granularity = gran, .fd = -1, .cookie = &k,
	};

	ck_assert_int_eq(mfd_ram_block_register(src, &d, &err), 0);
	d.host = b;
	d.flags = MFD_RAM_FRESH;
	ck_assert_int_eq(mfd_ram_block_register(dst, &d, &err), 0);
	ck_assert_ok(mfd_migration_set_hooks(src, &h, &k, &err), err);
	ck_assert_ok(mfd_set_param(src, "downtime-limit", "1000", &err), err);
	ck_assert_ok(mfd_set_param(src, "max-bandwidth", "200000000", &err), err);
	atomic_store(&k.run, true);
	ck_assert_int_eq(pthread_create(&k.vcpu, NULL, vcpu_thread, &k), 0);
	ck_assert_int_eq(pthread_create(&k.dma, NULL, dma_thread, &da), 0);
	migrate_pair(src, dst);
	atomic_store(&k.run, false);
	pthread_join(k.vcpu, NULL);
	pthread_join(k.dma, NULL);

	/* What the destination holds is the source at the stop, to the byte. */
	ck_assert_pages_eq(k.snapshot, b, SIZE, page_size);

	struct mfd_stats st = { .size = sizeof(st) };

	ck_assert_int_eq(mfd_migration_stats(src, &st), 0);
	ck_assert_int_gt(atomic_load(&k.syncs), 1);
	ck_assert_int_eq(atomic_load(&k.begins), atomic_load(&k.ends));
	ck_assert_uint_eq((uint64_t)atomic_load(&k.begins), st.ram_dirty_sync_count);
	ck_assert(k.round_order_ok);
	ck_assert_int_eq(atomic_load(&k.bad_clears), 0);
	if (manual) {
		/* The first pass re-protected all of RAM, range by range. */
		ck_assert_int_gt(atomic_load(&k.clears), 0);
		ck_assert_uint_ge(k.cleared_granules, k.ngran);
	} else {
		ck_assert_int_eq(atomic_load(&k.clears), 0);
	}
	mfd_migration_free(src);
	mfd_migration_free(dst);
	munmap(k.ram, SIZE);
	munmap(b, SIZE);
	free(k.lock);
	free(k.prot);
	free(k.dirty);
	free(k.snapshot);
}

START_TEST(manual_protect_dirty_log)
{
	dirty_log_case(PS, PS, true);
}
END_TEST

START_TEST(manual_protect_granules_smaller_than_pages)
{
	dirty_log_case(4 * PS, PS, true);
}
END_TEST

START_TEST(manual_protect_granules_larger_than_pages)
{
	dirty_log_case(PS, 4 * PS, true);
}
END_TEST

START_TEST(classic_dirty_log_with_mark_dirty)
{
	dirty_log_case(PS, PS, false);
}
END_TEST

/* A failing dirty_clear fails the migration, named, and the VM runs on. */
static int clear_fails(void *opaque, unsigned block, void *cookie, uint64_t first,
		       uint64_t nbits, const uint64_t *mask, mfd_error **errp)
{
	(void)opaque;
	(void)block;
	(void)cookie;
	(void)first;
	(void)nbits;
	(void)mask;
	return mfd_error_set(errp, MFD_EIO, "KVM_CLEAR_DIRTY_LOG: Bad address");
}

START_TEST(dirty_clear_failure_fails_the_migration)
{
	mfd_migration *src = new_side(1), *dst = new_side(1);
	mfd_error *err = NULL;
	uint8_t *a = map_ram(64 * PS), *b = map_ram(64 * PS);
	mfd_vmm_hooks h = {
		.size = sizeof(mfd_vmm_hooks),
		.vm_stop = stop_ok,
		.dirty_clear = clear_fails,
	};
	char uri[256];

	ck_assert_int_eq(mfd_ram_block_add(src, "ram", a, 64 * PS, PS, &err), 0);
	ck_assert_int_eq(mfd_ram_block_add(dst, "ram", b, 64 * PS, PS, &err), 0);
	ck_assert_ok(mfd_migration_set_hooks(src, &h, NULL, &err), err);
	ck_assert_ok(mfd_migrate_incoming(dst, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst, uri, sizeof(uri)), 0);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_int_eq(mfd_migration_wait(src, 60000, &err), MFD_EIO);
	ck_assert_mfd_error(err, MFD_EIO, "block 'ram'");
	ck_assert_int_eq(mfd_migration_state(src), MFD_STATE_FAILED);
	ck_assert_int_lt(mfd_migration_wait(dst, 60000, &err), 0);
	mfd_error_free(err);
	mfd_migration_free(src);
	mfd_migration_free(dst);
	munmap(a, 64 * PS);
	munmap(b, 64 * PS);
}
END_TEST

/* ---- the destination builds its VM from the source's description ----------------- */

/* A VMM's destination that starts empty: vm_create maps and registers what
 * the source announced, and the device it learns of from the config. */
struct builder {
	char config[64];
	size_t config_len;
	unsigned nblocks;
	uint8_t *host[4];
	uint64_t len[4];
	bool register_dev;
	uint64_t wrong_size;	/* register the first block with this size instead */
	int fail;		/* the hook fails with this code */
	int dev_setups;		/* load_setup calls of the device */
	uint64_t dev_value;
	int calls;
};

static int dev_load_setup(void *opaque, mfd_error **errp)
{
	struct builder *bd = opaque;

	(void)errp;
	bd->dev_setups++;
	return 0;
}

static int dev_load(mfd_stream *s, void *opaque, uint32_t v, mfd_error **errp)
{
	struct builder *bd = opaque;

	(void)v;
	(void)errp;
	return mfd_stream_get_be64(s, &bd->dev_value);
}

static int dev_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	mfd_stream_put_be64(s, 0x1234567890abcdefull);
	return mfd_stream_error(s, errp);
}

static const mfd_save_handlers dev_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = dev_save,
	.load_setup = dev_load_setup,
	.load_state = dev_load,
};

static mfd_migration *building_m;
static atomic_bool saw_postcopy;

static void note_state(void *opaque, int from, int to)
{
	(void)opaque;
	(void)from;
	if (to == MFD_STATE_POSTCOPY_ACTIVE)
		atomic_store(&saw_postcopy, true);
}

static int build_vm(void *opaque, const void *config, size_t config_len,
		    const struct mfd_ram_block_offer *blocks, unsigned n, mfd_error **errp)
{
	struct builder *bd = opaque;

	bd->calls++;
	if (bd->fail)
		return mfd_error_set(errp, bd->fail, "cannot create the VM: no such machine type");
	if (config_len >= sizeof(bd->config) || n > 4)
		return mfd_error_set(errp, MFD_EINVAL, "unexpected description");
	if (config_len)
		memcpy(bd->config, config, config_len);
	bd->config_len = config_len;
	bd->nblocks = n;
	for (unsigned i = 0; i < n; i++) {
		struct mfd_ram_block_desc d = {
			.size = sizeof(d), .flags = MFD_RAM_FRESH, .name = blocks[i].name,
			.length = i == 0 && bd->wrong_size ? bd->wrong_size : blocks[i].length,
			.page_size = blocks[i].page_size, .fd = -1, .cookie = bd,
		};
		int r;

		bd->len[i] = d.length;
		bd->host[i] = mmap(NULL, d.length, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (bd->host[i] == MAP_FAILED)
			return mfd_error_set(errp, MFD_ENOMEM, "mmap failed");
		d.host = bd->host[i];
		if ((r = mfd_ram_block_register(building_m, &d, errp)) < 0)
			return r;
	}
	if (bd->register_dev)
		return mfd_register_live(building_m, "dev", 0, 1, &dev_ops, bd, errp);
	return 0;
}

static void builder_free(struct builder *bd)
{
	for (unsigned i = 0; i < bd->nblocks; i++)
		if (bd->host[i] && bd->host[i] != MAP_FAILED)
			munmap(bd->host[i], bd->len[i]);
}

enum create_how { CREATE_TCP, CREATE_FILE, CREATE_POSTCOPY };

static void create_case(enum create_how how)
{
	enum { A = 96 * PS, B = 32 * PS };
	unsigned ch = how == CREATE_FILE ? 0 : 2;
	mfd_migration *src = new_side(ch), *dst = new_side(ch);
	mfd_error *err = NULL;
	uint8_t *a = map_ram(A), *b = map_ram(B);
	struct builder bd = { .register_dev = true };
	mfd_vmm_hooks h = { .size = sizeof(mfd_vmm_hooks), .vm_create = build_vm };
	static const char cfg[] = "machine=q35,dimms=1";

	ck_assert_int_eq(mfd_ram_block_add(src, "pc.ram", a, A, PS, &err), 0);
	ck_assert_int_eq(mfd_ram_block_add(src, "dimm0", b, B, PS, &err), 0);
	ck_assert_ok(mfd_register_live(src, "dev", 0, 1, &dev_ops, NULL, &err), err);
	ck_assert_ok(mfd_migration_set_vm_config(src, cfg, sizeof(cfg) - 1, &err), err);
	fill(a, A, 1);
	fill(b, B, 2);
	mfd_vmm_hooks sh = {
		.size = sizeof(mfd_vmm_hooks), .vm_stop = stop_ok, .state_changed = note_state,
	};

	atomic_store(&saw_postcopy, false);
	ck_assert_ok(mfd_migration_set_hooks(src, &sh, NULL, &err), err);
	ck_assert_ok(mfd_migration_set_hooks(dst, &h, &bd, &err), err);
	building_m = dst;
	if (how == CREATE_FILE) {
		migrate_file(src, dst);
	} else if (how == CREATE_TCP) {
		migrate_pair(src, dst);
	} else {
		char uri[256];

		ck_assert_ok(mfd_set_param(src, "postcopy-ram", "on", &err), err);
		ck_assert_ok(mfd_set_param(dst, "postcopy-ram", "on", &err), err);
		/* A slow first pass: the switch comes before it ends. */
		ck_assert_ok(mfd_set_param(src, "max-bandwidth", "1000000", &err), err);
		ck_assert_ok(mfd_migrate_incoming(dst, "tcp:127.0.0.1:0", &err), err);
		ck_assert_int_eq(mfd_migration_listen_uri(dst, uri, sizeof(uri)), 0);
		ck_assert_ok(mfd_migrate(src, uri, &err), err);
		ck_assert_ok(mfd_migrate_start_postcopy(src, &err), err);
		ck_assert_ok(mfd_migration_wait(src, 60000, &err), err);
		ck_assert_ok(mfd_migration_wait(dst, 60000, &err), err);

		ck_assert_msg(atomic_load(&saw_postcopy), "the source never entered postcopy");
	}
	ck_assert_int_eq(bd.calls, 1);
	ck_assert_uint_eq(bd.config_len, sizeof(cfg) - 1);
	ck_assert_str_eq(bd.config, cfg);
	ck_assert_uint_eq(bd.nblocks, 2);
	ck_assert_pages_eq(a, bd.host[0], A, PS);
	ck_assert_pages_eq(b, bd.host[1], B, PS);
	ck_assert_int_eq(bd.dev_setups, 1);
	ck_assert_uint_eq(bd.dev_value, 0x1234567890abcdefull);
	/* The blocks stay registered, with the cookie the hook gave. */
	struct mfd_ram_block_desc out = { .size = sizeof(out) };

	ck_assert_int_eq(mfd_ram_block_info(dst, 1, &out, NULL), 0);
	ck_assert_str_eq(out.name, "dimm0");
	ck_assert_ptr_eq(out.cookie, &bd);
	mfd_migration_free(src);
	mfd_migration_free(dst);
	builder_free(&bd);
	munmap(a, A);
	munmap(b, B);
}

START_TEST(destination_built_from_the_source)
{
	create_case(CREATE_TCP);
	create_case(CREATE_FILE);
}
END_TEST

START_TEST(destination_built_from_the_source_postcopy)
{
	if (!test_have_uffd("ram: postcopy"))
		return;
	create_case(CREATE_POSTCOPY);
}
END_TEST

/* What the hook did not get right fails the load, named; so does the hook. */
START_TEST(vm_create_mistakes_are_refused)
{
	for (int round = 0; round < 3; round++) {
		mfd_migration *src = new_side(2), *dst = new_side(2);
		mfd_error *err = NULL;
		uint8_t *a = map_ram(64 * PS);
		struct builder bd = { 0 };
		mfd_vmm_hooks h = { .size = sizeof(mfd_vmm_hooks), .vm_create = build_vm };
		char uri[256];

		if (round == 0)
			bd.wrong_size = 32 * PS;
		else if (round == 1)
			bd.fail = MFD_ENOTSUP;
		/* round 2: the source has a device the hook does not register */
		ck_assert_int_eq(mfd_ram_block_add(src, "pc.ram", a, 64 * PS, PS, &err), 0);
		if (round == 2)
			ck_assert_ok(mfd_register_live(src, "dev", 0, 1, &dev_ops, NULL, &err), err);
		ck_assert_ok(mfd_migration_set_hooks(dst, &h, &bd, &err), err);
		building_m = dst;
		ck_assert_ok(mfd_migrate_incoming(dst, "tcp:127.0.0.1:0", &err), err);
		ck_assert_int_eq(mfd_migration_listen_uri(dst, uri, sizeof(uri)), 0);
		ck_assert_ok(mfd_migrate(src, uri, &err), err);
		ck_assert_int_lt(mfd_migration_wait(dst, 60000, &err), 0);
		if (round == 0)
			ck_assert_mfd_error(err, MFD_EPROTO, "131072 in 4096-byte pages here");
		else if (round == 1)
			ck_assert_mfd_error(err, MFD_ENOTSUP, "vm_create hook: cannot create the VM");
		else
			ck_assert_mfd_error(err, MFD_EBADSECTION, "unknown section 'dev'");
		ck_assert_int_lt(mfd_migration_wait(src, 60000, &err), 0);
		mfd_error_free(err);
		mfd_migration_free(src);
		mfd_migration_free(dst);
		builder_free(&bd);
		munmap(a, 64 * PS);
	}
}
END_TEST

/* A VM configuration reaches only a destination that asked for one; a source
 * without RAM still describes its VM (an empty table). */
START_TEST(vm_config_needs_a_vm_create_hook)
{
	mfd_migration *src = new_side(1), *dst = new_side(1);
	mfd_error *err = NULL;
	static char big[MFD_VM_CONFIG_MAX + 1];
	char uri[256];

	ck_assert_int_eq(mfd_migration_set_vm_config(src, big, sizeof(big), &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "at most 1048576");
	ck_assert_int_eq(mfd_migration_set_vm_config(src, NULL, 4, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL configuration");
	ck_assert_ok(mfd_migration_set_vm_config(src, "cfg", 3, &err), err);
	ck_assert_ok(mfd_migrate_incoming(dst, "tcp:127.0.0.1:0", &err), err);
	ck_assert_int_eq(mfd_migration_listen_uri(dst, uri, sizeof(uri)), 0);
	ck_assert_int_eq(mfd_migration_set_vm_config(dst, "x", 1, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "a migration is running");
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_int_lt(mfd_migration_wait(dst, 60000, &err), 0);
	ck_assert_mfd_error(err, MFD_EBADSECTION, "unknown section 'vm-config'");
	ck_assert_int_lt(mfd_migration_wait(src, 60000, &err), 0);
	mfd_error_free(err);
	mfd_migration_free(dst);

	/* With the hook: the configuration and an empty table. */
	struct builder bd = { 0 };
	mfd_vmm_hooks h = { .size = sizeof(mfd_vmm_hooks), .vm_create = build_vm };

	dst = new_side(1);
	ck_assert_ok(mfd_migration_set_hooks(dst, &h, &bd, &err), err);
	building_m = dst;
	migrate_pair(src, dst);
	ck_assert_int_eq(bd.calls, 1);
	ck_assert_uint_eq(bd.nblocks, 0);
	ck_assert_uint_eq(bd.config_len, 3);
	ck_assert_int_eq(memcmp(bd.config, "cfg", 3), 0);
	mfd_migration_free(src);
	mfd_migration_free(dst);
}
END_TEST

Suite *suite_ram(void)
{
	Suite *s = suite_create("ram");
	TCase *tc = tcase_create("blocks");

	tcase_add_test(tc, register_checks_every_member);
	tcase_add_test(tc, absent_ranges_merge_and_split);
	tcase_add_test(tc, more_blocks_than_the_old_table);
	tcase_add_test(tc, absent_ranges_are_never_read);
	tcase_add_test(tc, absent_range_mismatch_is_refused);
	tcase_add_test(tc, hotplug_between_migrations);
	suite_add_tcase(s, tc);
	tc = tcase_create("dirty");
	tcase_add_test(tc, manual_protect_dirty_log);
	tcase_add_test(tc, manual_protect_granules_smaller_than_pages);
	tcase_add_test(tc, manual_protect_granules_larger_than_pages);
	tcase_add_test(tc, classic_dirty_log_with_mark_dirty);
	tcase_add_test(tc, dirty_clear_failure_fails_the_migration);
	suite_add_tcase(s, tc);
	tc = tcase_create("create");
	tcase_add_test(tc, destination_built_from_the_source);
	tcase_add_test(tc, destination_built_from_the_source_postcopy);
	tcase_add_test(tc, vm_create_mistakes_are_refused);
	tcase_add_test(tc, vm_config_needs_a_vm_create_hook);
	suite_add_tcase(s, tc);
	return s;
}
