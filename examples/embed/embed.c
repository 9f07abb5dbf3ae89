/* SPDX-License-Identifier: MIT */
/*
 * Embedding libmultifd: the walk-through of docs/api.md as one program.
 *
 * A tiny "VMM" runs two virtual machines in one process: the source, whose
 * vCPU thread keeps writing its RAM, and the destination, which starts out
 * empty.  The source is migrated live to the destination over a unix socket
 * (a main channel plus two multifd channels): 8 MiB of RAM and one device,
 * a counter with a small FIFO.  At the end the destination's RAM and device
 * must equal the source's at switchover; the program then prints
 * "embed: ok ..." and exits 0, otherwise it prints why and exits 1.
 *
 * Built against the public header only:
 *   cc -o embed embed.c $(pkg-config --cflags --libs multifd)
 *
 * The "Step N:" comments are the steps of docs/api.md, in its order.
 */
#include <multifd/multifd.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE (8u << 20)
#define PAGE_SIZE 4096u
#define NPAGES (RAM_SIZE / PAGE_SIZE)
#define BITMAP_WORDS ((NPAGES + 63) / 64)
#define DEV_VERSION 2	/* the device's state format; version 2 added the FIFO */
#define FIFO_LEN 16

/* The device: a counter the guest bumps, and a FIFO of bytes it queued. */
struct counter_dev {
	uint64_t count;
	uint32_t ctrl;
	uint8_t fifo[FIFO_LEN];
	uint8_t fifo_len;
};

/* One virtual machine of the example. */
struct vm {
	const char *name;	/* "source" or "destination", for messages */
	mfd_migration *m;
	uint8_t *ram;
	struct counter_dev dev;

	/* The vCPU thread (source only): writes RAM until vm_stop. */
	pthread_t vcpu;
	atomic_bool vcpu_running;
	atomic_bool stop_request;
	atomic_uint_fast64_t dirty[BITMAP_WORDS];	/* written since the last sync */
	atomic_bool dirty_logging;

	bool source;
	/* Filled in by the hooks. */
	atomic_int stops, starts, syncs;
	atomic_int last_state;
};

static void log_message(int level, const char *msg, void *opaque)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };

	(void)opaque;
	fprintf(stderr, "embed: libmultifd %s: %s\n", names[level], msg);
}

/* ------------------------------------------------------------------------ */
/* The guest: a vCPU that writes pages and bumps the device's counter        */
/* ------------------------------------------------------------------------ */

static void mark_dirty(struct vm *vm, size_t page)
{
	if (atomic_load_explicit(&vm->dirty_logging, memory_order_acquire))
		atomic_fetch_or(&vm->dirty[page / 64], UINT64_C(1) << (page % 64));
}

static void *vcpu_thread(void *opaque)
{
	struct vm *vm = opaque;
	uint64_t x = 88172645463325252ull;	/* xorshift: which page, which byte */
	const struct timespec pause = { 0, 1000000 };

	while (!atomic_load(&vm->stop_request)) {
		for (int i = 0; i < 4; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			size_t page = (size_t)(x % NPAGES);

			/* Write the page, then mark it: a page read before the
			 * write is marked again and sent again. */
			memset(vm->ram + page * PAGE_SIZE + (x >> 40) % 64, (int)(x >> 56), 64);
			mark_dirty(vm, page);
		}
		vm->dev.count++;
		nanosleep(&pause, NULL);
	}
	return NULL;
}

static int vcpu_start(struct vm *vm, mfd_error **errp)
{
	atomic_store(&vm->stop_request, false);
	int r = pthread_create(&vm->vcpu, NULL, vcpu_thread, vm);

	if (r != 0)
		return mfd_error_set(errp, MFD_EIO, "%s: cannot start the vCPU thread: %s",
				     vm->name, strerror(r));
	atomic_store(&vm->vcpu_running, true);
	return 0;
}

static void vcpu_stop(struct vm *vm)
{
	if (!atomic_load(&vm->vcpu_running))
		return;
	atomic_store(&vm->stop_request, true);
	pthread_join(vm->vcpu, NULL);
	atomic_store(&vm->vcpu_running, false);
}

/* ------------------------------------------------------------------------ */
/* Step 2: register a device section and its handlers                        */
/* ------------------------------------------------------------------------ */

/*
 * Saved once, with the VM stopped (a non-live section: save_state only).
 * The FIFO travels in a subsection, so an older destination that knows only
 * version 1 fails cleanly on it instead of misreading it.
 */
static int dev_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct vm *vm = opaque;

	(void)errp;
	mfd_stream_put_be64(s, vm->dev.count);
	mfd_stream_put_be32(s, vm->dev.ctrl);
	if (vm->dev.fifo_len > 0) {
		mfd_subsection_begin(s, "embed-counter/fifo", 1);
		mfd_stream_put_u8(s, vm->dev.fifo_len);
		mfd_stream_put_buf(s, vm->dev.fifo, vm->dev.fifo_len);
	}
	/* Stream errors are latched: one check at the end is enough. */
	return mfd_stream_error(s, NULL);
}

static int dev_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct vm *vm = opaque;
	char name[256];
	uint32_t sub_version;
	int r;

	if ((r = mfd_stream_get_be64(s, &vm->dev.count)) < 0 ||
	    (r = mfd_stream_get_be32(s, &vm->dev.ctrl)) < 0)
		return r;
	vm->dev.fifo_len = 0;
	if (version_id < 2)
		return 0;
	while ((r = mfd_subsection_next(s, "embed-counter", name, &sub_version)) == 1) {
		if (strcmp(name, "embed-counter/fifo") != 0 || sub_version != 1)
			return mfd_error_set(errp, MFD_EBADVERSION,
					     "embed-counter: unknown subsection %s version %" PRIu32,
					     name, sub_version);
		if ((r = mfd_stream_get_u8(s, &vm->dev.fifo_len)) < 0)
			return r;
		/* Peer data: check the length before using it. */
		if (vm->dev.fifo_len > FIFO_LEN)
			return mfd_error_set(errp, MFD_ETOOBIG,
					     "embed-counter: FIFO of %u bytes, limit is %u",
					     vm->dev.fifo_len, FIFO_LEN);
		if ((r = mfd_stream_get_buf(s, vm->dev.fifo, vm->dev.fifo_len)) < 0)
			return r;
	}
	return r;
}

static const mfd_save_handlers dev_handlers = {
	.size = sizeof(mfd_save_handlers),
	.save_state = dev_save,
	.load_state = dev_load,
};

/* ------------------------------------------------------------------------ */
/* Step 4: install the VMM hooks                                             */
/* ------------------------------------------------------------------------ */

static int hook_vm_stop(void *opaque, mfd_error **errp)
{
	struct vm *vm = opaque;

	(void)errp;
	vcpu_stop(vm);
	atomic_fetch_add(&vm->stops, 1);
	return 0;
}

/* Source: the migration failed or was cancelled after the stop; destination:
 * the state is in place. */
static int hook_vm_start(void *opaque, mfd_error **errp)
{
	struct vm *vm = opaque;

	atomic_fetch_add(&vm->starts, 1);
	if (vm->source)
		return vcpu_start(vm, errp);
	return 0;
}

static int hook_dirty_log_start(void *opaque, mfd_error **errp)
{
	struct vm *vm = opaque;

	(void)errp;
	for (size_t w = 0; w < BITMAP_WORDS; w++)
		atomic_store(&vm->dirty[w], 0);
	atomic_store_explicit(&vm->dirty_logging, true, memory_order_release);
	return 0;
}

static void hook_dirty_log_stop(void *opaque)
{
	struct vm *vm = opaque;

	atomic_store(&vm->dirty_logging, false);
}

/* KVM_GET_DIRTY_LOG's shape: hand over the bits and restart the log. */
static int hook_dirty_sync(void *opaque, unsigned block, void *cookie, uint64_t *bitmap,
			   uint64_t npages, mfd_error **errp)
{
	struct vm *vm = opaque;

	(void)cookie;
	if (block != 0 || npages != NPAGES)
		return mfd_error_set(errp, MFD_EINVAL, "%s: dirty sync for block %u of %" PRIu64
				     " pages, the VM has one block of %u", vm->name, block,
				     npages, NPAGES);
	for (size_t w = 0; w < BITMAP_WORDS; w++)
		bitmap[w] |= atomic_exchange(&vm->dirty[w], 0);
	atomic_fetch_add(&vm->syncs, 1);
	return 0;
}

/* Called on the thread that changed the state; only query functions allowed. */
static void hook_state_changed(void *opaque, int from, int to)
{
	struct vm *vm = opaque;

	atomic_store(&vm->last_state, (int)to);
	printf("embed: %s: %s -> %s\n", vm->name, mfd_state_name(from), mfd_state_name(to));
	fflush(stdout);
}

static const mfd_vmm_hooks vm_hooks = {
	.size = sizeof(mfd_vmm_hooks),
	.vm_stop = hook_vm_stop,
	.vm_start = hook_vm_start,
	.dirty_log_start = hook_dirty_log_start,
	.dirty_log_stop = hook_dirty_log_stop,
	.dirty_sync = hook_dirty_sync,
	.state_changed = hook_state_changed,
};

/* ------------------------------------------------------------------------ */
/* Both sides are set up the same way                                        */
/* ------------------------------------------------------------------------ */

static int vm_setup(struct vm *vm, const char *name, const char *codec, mfd_error **errp)
{
	int r;

	memset(vm, 0, sizeof(*vm));
	vm->name = name;
	vm->source = strcmp(name, "source") == 0;
	vm->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (vm->ram == MAP_FAILED) {
		vm->ram = NULL;
		return mfd_error_set(errp, MFD_ENOMEM, "%s: cannot map %u bytes of RAM: %s",
				     name, RAM_SIZE, strerror(errno));
	}
	if ((r = mfd_migration_new(&vm->m, errp)) < 0)
		return r;

	/* Step 1: register the guest RAM */
	if ((r = mfd_ram_block_add(vm->m, "pc.ram", vm->ram, RAM_SIZE, PAGE_SIZE, errp)) < 0)
		return r;

	/* Step 2: register a device section and its handlers */
	/* (the same idstr, instance id and order on both sides) */
	if ((r = mfd_register_live(vm->m, "embed-counter", 0, DEV_VERSION, &dev_handlers, vm,
				   errp)) < 0)
		return r;

	/* Step 3: set the parameters */
	/* (both sides must agree on the channels and the codec) */
	if ((r = mfd_set_param_int(vm->m, "multifd-channels", 2, errp)) < 0 ||
	    (r = mfd_set_param(vm->m, "multifd-compression", codec, errp)) < 0 ||
	    (r = mfd_set_param(vm->m, "downtime-limit", "500", errp)) < 0 ||
	    (r = mfd_set_param_int(vm->m, "channel-timeout-ms", 30000, errp)) < 0 ||
	    (r = mfd_migration_set_identity(vm->m, "embed-example-1", errp)) < 0)
		return r;

	/* Step 4: install the VMM hooks */
	return mfd_migration_set_hooks(vm->m, &vm_hooks, vm, errp);
}

static void vm_teardown(struct vm *vm)
{
	vcpu_stop(vm);
	mfd_migration_free(vm->m);	/* NULL is fine */
	if (vm->ram)
		munmap(vm->ram, RAM_SIZE);
}

/* The source guest's initial contents: a third zero pages, the rest noise. */
static void fill_ram(uint8_t *ram)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (size_t p = 0; p < NPAGES; p++) {
		if (p % 3 == 0)
			continue;
		for (size_t i = 0; i < PAGE_SIZE; i += 8) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			memcpy(ram + p * PAGE_SIZE + i, &x, 8);
		}
	}
}

/* Step 7: read the statistics */
static void print_stats(struct vm *vm)
{
	struct mfd_stats st = { .size = sizeof(st) };

	if (mfd_migration_stats(vm->m, &st) < 0)
		return;
	printf("embed: %s: %s, %" PRIu64 " ms total, %" PRIu64 " ms downtime, %" PRIu64
	       " bytes of RAM sent in %" PRIu64 " passes, %u channels, %.1f MB/s\n",
	       vm->name, mfd_state_name(st.status), st.total_time, st.downtime,
	       st.ram_transferred, st.ram_dirty_sync_count, st.channels, st.ram_mbps);
	char *json = mfd_migration_stats_json(vm->m);

	if (json) {
		printf("embed: %s: query-migrate: %.100s...\n", vm->name, json);
		free(json);
	}
}

/* Step 6: wait for the end, reporting progress */
static int wait_for_end(struct vm *src, mfd_error **errp)
{
	for (int waited = 0;; waited += 250) {
		int r = mfd_migration_wait(src->m, 250, NULL);

		/* MFD_ERUNNING: still running after 250 ms; anything else is the end. */
		if (r != MFD_ERUNNING)
			return mfd_migration_wait(src->m, 0, errp);	/* ended: at once */
		if (waited >= 120000) {
			/* Any thread may cancel; the source VM runs again. */
			mfd_migrate_cancel(src->m);
			mfd_migration_wait(src->m, 0, NULL);
			return mfd_error_set(errp, MFD_ETIMEDOUT,
					     "the migration did not end within 120 s");
		}
		struct mfd_stats st = { .size = sizeof(st) };

		if (mfd_migration_stats(src->m, &st) == 0)
			printf("embed: source: %s, pass %" PRIu64 ", %" PRIu64 " bytes remaining\n",
			       mfd_state_name(st.status), st.ram_dirty_sync_count, st.ram_remaining);
	}
}

int main(void)
{
	struct vm src, dst;
	mfd_error *err = NULL;
	char dir[] = "/tmp/mfd-embed.XXXXXX";
	char sock[64], uri[128], listen_uri[4200];
	struct counter_dev dev_at_stop;
	int r, ok = 0;

	memset(&src, 0, sizeof(src));
	memset(&dst, 0, sizeof(dst));
	/* The library never prints; route its warnings and errors to stderr. */
	mfd_log_set_handler(log_message, NULL, MFD_LOG_WARNING);
	printf("embed: libmultifd %s (built with %s)\n", mfd_version_string(), MFD_VERSION_STRING);

	/* A registered codec of this build: zstd when built in, else none. */
	const char *codec = mfd_compress_find("zstd") ? "zstd" : "none";

	if (!mkdtemp(dir)) {
		fprintf(stderr, "embed: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	snprintf(sock, sizeof(sock), "%s/migrate.sock", dir);
	snprintf(uri, sizeof(uri), "unix:%s", sock);

	if ((r = vm_setup(&src, "source", codec, &err)) < 0 ||
	    (r = vm_setup(&dst, "destination", codec, &err)) < 0)
		goto out;

	/* The source guest is running. */
	fill_ram(src.ram);
	src.dev.ctrl = 0x5a5a;
	memcpy(src.dev.fifo, "hello", 5);
	src.dev.fifo_len = 5;
	if ((r = vcpu_start(&src, &err)) < 0)
		goto out;

	/* Step 5: start the destination, then migrate the source to it */
	if ((r = mfd_migrate_incoming(dst.m, uri, &err)) < 0)
		goto out;
	if ((r = mfd_migration_listen_uri(dst.m, listen_uri, sizeof(listen_uri))) < 0) {
		mfd_error_set(&err, r, "mfd_migration_listen_uri: %s", mfd_strerror(r));
		goto out;
	}
	if ((r = mfd_migrate(src.m, listen_uri, &err)) < 0)
		goto out;

	/* Step 6: wait for the end, reporting progress */
	if ((r = wait_for_end(&src, &err)) < 0) {
		mfd_error_prefix(err, "source");
		mfd_migrate_cancel(dst.m);
		mfd_migration_wait(dst.m, 0, NULL);
		goto out;
	}
	/* The destination ends once it has loaded everything. */
	if ((r = mfd_migration_wait(dst.m, 60000, &err)) < 0) {
		mfd_error_prefix(err, "destination");
		goto out;
	}

	/* Step 7: read the statistics */
	print_stats(&src);
	print_stats(&dst);

	/* Step 8: check that the destination has the source's state */
	dev_at_stop = src.dev;	/* the source's vCPU has been stopped since vm_stop */
	if (mfd_migration_state(src.m) != MFD_STATE_COMPLETED ||
	    mfd_migration_state(dst.m) != MFD_STATE_COMPLETED) {
		mfd_error_set(&err, MFD_ESTATE, "states: source %s, destination %s",
			      mfd_state_name(mfd_migration_state(src.m)),
			      mfd_state_name(mfd_migration_state(dst.m)));
		goto out;
	}
	if (atomic_load(&src.stops) != 1 || atomic_load(&dst.starts) != 1 ||
	    atomic_load(&src.syncs) < 1) {
		mfd_error_set(&err, MFD_ESTATE, "hooks: %d vm_stop on the source, %d vm_start "
			      "on the destination, %d dirty syncs",
			      atomic_load(&src.stops), atomic_load(&dst.starts),
			      atomic_load(&src.syncs));
		goto out;
	}
	for (size_t p = 0; p < NPAGES; p++)
		if (memcmp(src.ram + p * PAGE_SIZE, dst.ram + p * PAGE_SIZE, PAGE_SIZE) != 0) {
			mfd_error_set(&err, MFD_EPROTO, "page %zu of the destination differs", p);
			goto out;
		}
	if (dst.dev.count != dev_at_stop.count || dst.dev.ctrl != dev_at_stop.ctrl ||
	    dst.dev.fifo_len != dev_at_stop.fifo_len ||
	    memcmp(dst.dev.fifo, dev_at_stop.fifo, dev_at_stop.fifo_len) != 0) {
		mfd_error_set(&err, MFD_EPROTO, "device: destination count %" PRIu64 " ctrl %#x "
			      "fifo %u bytes, source count %" PRIu64 " ctrl %#x fifo %u bytes",
			      dst.dev.count, dst.dev.ctrl, dst.dev.fifo_len, dev_at_stop.count,
			      dev_at_stop.ctrl, dev_at_stop.fifo_len);
		goto out;
	}
	printf("embed: ok: %u MiB of RAM and the device migrated, the destination equals the "
	       "source (%s, %" PRIu64 " vCPU rounds before the stop)\n",
	       RAM_SIZE >> 20, codec, dev_at_stop.count);
	ok = 1;
out:
	if (!ok)
		fprintf(stderr, "embed: FAIL: %s (%s)\n",
			err ? mfd_error_message(err) : "unknown error",
			mfd_strerror(err ? mfd_error_code(err) : r));
	mfd_error_free(err);
	vm_teardown(&src);
	vm_teardown(&dst);
	unlink(sock);	/* normally gone already: the listener removes it */
	rmdir(dir);
	return ok ? 0 : 1;
}
