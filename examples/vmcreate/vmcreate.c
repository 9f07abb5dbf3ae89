/* SPDX-License-Identifier: MIT */
/*
 * The destination builds its VM from the source's description, and guest
 * RAM is registered the way a VMM maps it.
 *
 * The source VMM has two RAM blocks: "pc.ram", in a memfd (MAP_SHARED,
 * registered with its fd), with a 1 MiB hole the VMM unplugged (mapped
 * PROT_NONE, marked absent with mfd_ram_discard()), and "dimm0", anonymous.
 * It describes its VM in its own format (a line of text) with
 * mfd_migration_set_vm_config().  The destination VMM starts with nothing
 * registered: its vm_create hook reads the configuration and the block table,
 * maps each block (in a memfd where the configuration says so), unplugs the
 * same hole, and registers the blocks and the device section; then RAM and
 * the device load into what it built.  The destination waits in a poll()
 * loop on mfd_migration_event_fd(), as an epoll-driven VMM would.  Every
 * present page is checked; "vmcreate: ok ..." and exit 0 only when all match.
 *
 * Built against the public header only:
 *   cc -o vmcreate vmcreate.c $(pkg-config --cflags --libs multifd)
 * docs/api.md, "The destination builds the VM", walks through it.
 */
#define _GNU_SOURCE
#include <multifd/multifd.h>

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define RAM_MIB 8u
#define DIMM_MIB 4u
#define HOLE_OFF (2u << 20)	/* the unplugged range of pc.ram */
#define HOLE_LEN (1u << 20)

struct block {
	char name[32];
	uint8_t *host;
	uint64_t size;
	int fd;
};

struct vmm {
	const char *role;
	mfd_migration *m;
	struct block blocks[4];
	unsigned nblocks;
	uint64_t device;	/* a device register */
	bool memfd;		/* "pc.ram" lives in a memfd */
};

static int fail(const char *what, mfd_error *err)
{
	fprintf(stderr, "vmcreate: %s: %s\n", what, err ? mfd_error_message(err) : "failed");
	mfd_error_free(err);
	return 1;
}

/* Map @size bytes for block @name: a memfd (shared) or anonymous memory. */
static int map_block(struct vmm *v, const char *name, uint64_t size, bool memfd)
{
	struct block *b = &v->blocks[v->nblocks];

	snprintf(b->name, sizeof(b->name), "%s", name);
	b->size = size;
	b->fd = -1;
	if (memfd) {
		b->fd = memfd_create(name, MFD_CLOEXEC);
		if (b->fd < 0 || ftruncate(b->fd, (off_t)size) < 0)
			return -1;
	}
	b->host = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       memfd ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS, b->fd, 0);
	if (b->host == MAP_FAILED)
		return -1;
	v->nblocks++;
	return 0;
}

/* Register block @i as mapped; @fresh on the destination (nothing wrote it). */
static int register_block(struct vmm *v, unsigned i, bool fresh, mfd_error **errp)
{
	const struct block *b = &v->blocks[i];
	struct mfd_ram_block_desc d = {
		.size = sizeof(d),
		.flags = (b->fd >= 0 ? MFD_RAM_SHARED : 0) | (fresh ? MFD_RAM_FRESH : 0),
		.name = b->name,
		.host = b->host,
		.length = b->size,
		.page_size = PAGE_SIZE,
		.fd = b->fd,
		.cookie = (void *)b,	/* handed back to every hook naming the block */
	};
	int r = mfd_ram_block_register(v->m, &d, errp);

	return r < 0 ? r : 0;
}

/* Unplug the hole: no access any more, and the library skips it. */
static int unplug_hole(struct vmm *v, mfd_error **errp)
{
	if (mprotect(v->blocks[0].host + HOLE_OFF, HOLE_LEN, PROT_NONE) < 0)
		return mfd_error_set(errp, MFD_EIO, "mprotect failed");
	return mfd_ram_discard(v->m, "pc.ram", HOLE_OFF, HOLE_LEN, errp);
}

/* ---- a device ---------------------------------------------------------------- */

static int dev_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct vmm *v = opaque;

	mfd_stream_put_be64(s, v->device);
	return mfd_stream_error(s, errp);
}

static int dev_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct vmm *v = opaque;

	(void)version_id;
	(void)errp;
	return mfd_stream_get_be64(s, &v->device);
}

static const mfd_save_handlers dev_handlers = {
	.size = sizeof(mfd_save_handlers),
	.save_state = dev_save,
	.load_state = dev_load,
};

/* ---- the destination's hook ---------------------------------------------------- */

/*
 * The source's description arrived: build the VM.  The configuration is this
 * VMM's own format; the block table says what RAM to map.  Blocks and
 * sections registered here are what the load then fills.
 */
static int build_vm(void *opaque, const void *config, size_t len,
		    const struct mfd_ram_block_offer *blocks, unsigned n, mfd_error **errp)
{
	struct vmm *v = opaque;
	char cfg[128];

	if (len >= sizeof(cfg) || n > 4)
		return mfd_error_set(errp, MFD_EINVAL, "unexpected VM description (%zu bytes, %u "
				     "blocks)", len, n);
	memcpy(cfg, config, len);
	cfg[len] = '\0';
	printf("vmcreate: destination: source says '%s', %u RAM blocks\n", cfg, n);
	v->memfd = strstr(cfg, "ram=memfd") != NULL;
	for (unsigned i = 0; i < n; i++) {
		int r;

		if (blocks[i].page_size != PAGE_SIZE)
			return mfd_error_set(errp, MFD_ENOTSUP, "block '%s': %" PRIu64 "-byte pages",
					     blocks[i].name, blocks[i].page_size);
		if (map_block(v, blocks[i].name, blocks[i].length, v->memfd && i == 0) < 0)
			return mfd_error_set(errp, MFD_ENOMEM, "cannot map block '%s'",
					     blocks[i].name);
		if ((r = register_block(v, i, true, errp)) < 0)
			return r;
	}
	if (strstr(cfg, "hole=1")) {
		int r = unplug_hole(v, errp);

		if (r < 0)
			return r;
	}
	return mfd_register_live(v->m, "device", 0, 1, &dev_handlers, v, errp);
}

static int stop_vcpus(void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;	/* this source's guest runs nothing: nothing to stop */
	return 0;
}

/* ---- the check ------------------------------------------------------------------- */

static uint8_t pattern(unsigned block, uint64_t page)
{
	return (uint8_t)(block * 31 + page * 7 + 1);
}

static void fill(struct vmm *v)
{
	for (unsigned b = 0; b < v->nblocks; b++)
		for (uint64_t p = 0; p < v->blocks[b].size / PAGE_SIZE; p++) {
			uint64_t off = p * PAGE_SIZE;

			if (b == 0 && off >= HOLE_OFF && off < HOLE_OFF + HOLE_LEN)
				continue;
			if (p % 5 == 4)
				continue;	/* zero pages */
			memset(v->blocks[b].host + off, pattern(b, p), 64);
			v->blocks[b].host[off + PAGE_SIZE - 1] = (uint8_t)p;
		}
}

static uint64_t differences(const struct vmm *src, const struct vmm *dst)
{
	uint64_t bad = 0;

	for (unsigned b = 0; b < src->nblocks; b++)
		for (uint64_t p = 0; p < src->blocks[b].size / PAGE_SIZE; p++) {
			uint64_t off = p * PAGE_SIZE;

			if (b == 0 && off >= HOLE_OFF && off < HOLE_OFF + HOLE_LEN)
				continue;	/* unplugged on both sides: never read */
			bad += memcmp(src->blocks[b].host + off, dst->blocks[b].host + off,
				      PAGE_SIZE) != 0;
		}
	return bad;
}

/* The destination's event loop: poll the event fd until the migration ends. */
static int wait_in_loop(mfd_migration *m, mfd_error **errp)
{
	int efd = mfd_migration_event_fd(m);

	if (efd < 0)
		return mfd_error_set(errp, efd, "no event fd");
	for (;;) {
		struct pollfd pfd = { .fd = efd, .events = POLLIN };
		uint64_t n;

		if (poll(&pfd, 1, 30000) <= 0)
			return mfd_error_set(errp, MFD_ETIMEDOUT, "no state change in 30 s");
		if (read(efd, &n, sizeof(n)) != (ssize_t)sizeof(n))
			continue;
		int st = mfd_migration_state(m);

		printf("vmcreate: destination: %s\n", mfd_state_name(st));
		/* Ended?  Then ask again for the result with its message. */
		if (mfd_migration_wait(m, 1, NULL) != MFD_ERUNNING)
			return mfd_migration_wait(m, 1, errp);
	}
}

static void teardown(struct vmm *v)
{
	mfd_migration_free(v->m);
	for (unsigned i = 0; i < v->nblocks; i++) {
		munmap(v->blocks[i].host, v->blocks[i].size);
		if (v->blocks[i].fd >= 0)
			close(v->blocks[i].fd);
	}
}

int main(void)
{
	static const char config[] = "machine=minimal ram=memfd hole=1 device=1";
	struct vmm src = { .role = "source", .memfd = true };
	struct vmm dst = { .role = "destination" };
	mfd_error *err = NULL;
	char path[64], uri[128];
	int r;

	if (mfd_migration_new(&src.m, &err) < 0 || mfd_migration_new(&dst.m, &err) < 0)
		return fail("new", err);

	/* The source: its VM as it runs. */
	if (map_block(&src, "pc.ram", (uint64_t)RAM_MIB << 20, true) < 0 ||
	    map_block(&src, "dimm0", (uint64_t)DIMM_MIB << 20, false) < 0) {
		perror("vmcreate: source RAM");
		return 1;
	}
	fill(&src);
	src.device = 0xfeedfacecafebeefull;
	mfd_vmm_hooks src_hooks = { .size = sizeof(src_hooks), .vm_stop = stop_vcpus };

	if (register_block(&src, 0, false, &err) < 0 || register_block(&src, 1, false, &err) < 0 ||
	    unplug_hole(&src, &err) < 0 ||
	    mfd_register_live(src.m, "device", 0, 1, &dev_handlers, &src, &err) < 0 ||
	    mfd_migration_set_vm_config(src.m, config, sizeof(config) - 1, &err) < 0 ||
	    mfd_migration_set_hooks(src.m, &src_hooks, &src, &err) < 0)
		return fail("source setup", err);

	/* The destination: nothing but the hook that builds the VM. */
	mfd_vmm_hooks dst_hooks = { .size = sizeof(dst_hooks), .vm_create = build_vm };

	if (mfd_migration_set_hooks(dst.m, &dst_hooks, &dst, &err) < 0)
		return fail("destination setup", err);
	for (unsigned i = 0; i < 2; i++) {
		mfd_migration *m = i ? dst.m : src.m;

		if (mfd_set_param(m, "multifd-channels", "2", &err) < 0)
			return fail("parameters", err);
	}

	snprintf(path, sizeof(path), "/tmp/mfd-vmcreate-%d.sock", (int)getpid());
	snprintf(uri, sizeof(uri), "unix:%s", path);
	if (mfd_migrate_incoming(dst.m, uri, &err) < 0)
		return fail("incoming", err);
	if (mfd_migrate(src.m, uri, &err) < 0)
		return fail("migrate", err);
	r = wait_in_loop(dst.m, &err);
	unlink(path);
	if (r < 0)
		return fail("destination", err);
	if ((r = mfd_migration_wait(src.m, 30000, &err)) < 0)
		return fail("source", err);

	uint64_t bad = differences(&src, &dst);

	if (dst.nblocks != 2 || bad || dst.device != src.device) {
		fprintf(stderr, "vmcreate: %u blocks built, %" PRIu64 " pages differ, device "
			"0x%" PRIx64 "\n", dst.nblocks, bad, dst.device);
		return 1;
	}
	printf("vmcreate: ok: the destination built %u blocks (%s, %u MiB with a %u KiB hole; "
	       "%u MiB) and a device from the source's description\n", dst.nblocks,
	       dst.memfd ? "memfd" : "anonymous", RAM_MIB, HOLE_LEN >> 10, DIMM_MIB);
	teardown(&src);
	teardown(&dst);
	return 0;
}
