/* SPDX-License-Identifier: MIT */
/*
 * The guest the tool migrates: RAM (synthetic or a memory image), a small
 * "cpu" device, an "image" record of the content length, and the per-page
 * checksums that prove both sides hold the same bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: fast and deterministic, so every run has the same guest. */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

static void cpu_reset(struct guest *g)
{
	memset(&g->cpu, 0, sizeof(g->cpu));
	for (unsigned t = 0; t < DIRTY_THREADS; t++) {
		uint64_t first, end;

		dirty_range(g, t, &first, &end);
		g->cpu.regs[2 * t] = first;
	}
	g->cpu.rip = 0xfff0;	/* where an x86 CPU starts */
	g->cpu.rflags = 0x2;
}

int guest_alloc(struct guest *g, uint64_t size, mfd_error **errp)
{
	/* Anonymous memory reads as zero without being touched: a zero region
	 * of the synthetic guest or of the destination costs no RSS. */
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return mfd_error_set(errp, MFD_ENOMEM, "cannot map %" PRIu64 " MiB of guest RAM: %s",
				     size >> 20, strerror(errno));
	/* As QEMU does for guest RAM: transparent huge pages, so a destination
	 * filling its RAM takes one fault per 2 MiB instead of one per page
	 * (first touch, not the network, caps a destination otherwise; see
	 * docs/api.md).  Advice only: without THP nothing changes. */
	(void)madvise(p, size, MADV_HUGEPAGE);
	g->ram = p;
	g->size = size;
	g->content_len = size;
	cpu_reset(g);
	return 0;
}

/*
 * Open an image and allocate a guest for it: whole MiB, so the destination
 * can be given the same --size (the "image" section carries the exact
 * length for recv --out).  Returns the open descriptor, or an error.
 */
static int image_open(struct guest *g, const char *path, struct stat *st, mfd_error **errp)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int r;

	if (fd < 0)
		return mfd_error_set(errp, MFD_EIO, "%s: %s", path, strerror(errno));
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode) || st->st_size == 0) {
		close(fd);
		return mfd_error_set(errp, MFD_EINVAL, "%s: not a non-empty regular file", path);
	}
	r = guest_alloc(g, ((uint64_t)st->st_size + (1u << 20) - 1) &
			   ~(uint64_t)((1u << 20) - 1), errp);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

int guest_load_image(struct guest *g, const char *path, mfd_error **errp)
{
	struct stat st;
	uint64_t done = 0;
	int fd = image_open(g, path, &st, errp);
	int r = 0;

	if (fd < 0)
		return fd;
	/* Read into place: the guest's anonymous (huge-page) RAM ends up
	 * holding the image, resident, as a running VMM's RAM would. */
	while (r == 0 && done < (uint64_t)st.st_size) {
		uint64_t want = (uint64_t)st.st_size - done;
		ssize_t n = read(fd, g->ram + done, (size_t)(want < (1u << 30) ? want : 1u << 30));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = mfd_error_set(errp, MFD_EIO, "%s: read: %s", path,
					  n < 0 ? strerror(errno) : "shorter than its size");
			guest_free(g);
			break;
		}
		done += (uint64_t)n;
	}
	if (r == 0)
		g->content_len = (uint64_t)st.st_size;
	close(fd);
	return r;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23	/* Linux 5.14; older headers lack it */
#endif

int guest_prealloc(struct guest *g, mfd_error **errp)
{
	/* MADV_POPULATE_WRITE (Linux 5.14): the kernel faults every page in
	 * writable at once; older kernels say EINVAL and get one write per
	 * page, of the zero the page already reads as. */
	if (madvise(g->ram, g->size, MADV_POPULATE_WRITE) == 0)
		return 0;
	if (errno != EINVAL)
		return mfd_error_set(errp, MFD_ENOMEM, "cannot preallocate %" PRIu64
				     " MiB of guest RAM: %s", g->size >> 20, strerror(errno));
	for (uint64_t off = 0; off < g->size; off += GUEST_PAGE)
		((volatile uint8_t *)g->ram)[off] = 0;
	return 0;
}

void guest_free(struct guest *g)
{
	if (g->ram)
		munmap(g->ram, g->size);
	g->ram = NULL;
}

/* Text drawn word by word compresses like text (2-4x), unlike a repeated
 * phrase that any codec shrinks to nothing. */
static void make_text(uint8_t *buf, size_t len, uint64_t *s)
{
	static const char *const words[] = {
		"the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was",
		"on", "be", "by", "this", "page", "memory", "migration", "kernel", "return",
		"struct", "int", "void", "const", "static", "if", "else", "while", "channel",
		"guest", "host", "dirty", "bitmap", "socket", "buffer", "0x7f3a", "=", "{", "};",
	};
	size_t n = sizeof(words) / sizeof(words[0]), off = 0;

	while (off < len) {
		uint64_t r = rng_next(s);
		const char *w = words[r % n];
		size_t wlen = strlen(w);

		if (wlen > len - off)
			wlen = len - off;
		memcpy(buf + off, w, wlen);
		off += wlen;
		if (off < len)
			buf[off++] = (r >> 32) % 9 == 0 ? '\n' : ' ';
	}
}

/* Text pages are cut at random offsets from a pool much larger than a
 * multifd packet, so a codec finds no more repetition across the pages of a
 * packet than real text would have, at memcpy speed. */
#define TEXT_POOL (4u << 20)

static void fill_text(uint8_t *page, const uint8_t *pool, uint64_t *s)
{
	memcpy(page, pool + rng_next(s) % (TEXT_POOL - GUEST_PAGE), GUEST_PAGE);
}

static void fill_random(uint8_t *page, uint64_t *s)
{
	for (size_t i = 0; i < GUEST_PAGE; i += 8) {
		uint64_t v = rng_next(s);

		memcpy(page + i, &v, 8);
	}
}

int guest_fill(struct guest *g, uint64_t seed, mfd_error **errp)
{
	uint8_t *pool = malloc(TEXT_POOL);
	uint64_t s = seed | 1;

	if (!pool)
		return mfd_error_set(errp, MFD_ENOMEM, "no memory for the guest's text");
	make_text(pool, TEXT_POOL, &s);
	/* About half zero pages (left untouched), a quarter text, a quarter random. */
	for (uint64_t p = 0; p < guest_pages(g); p++) {
		uint64_t kind = rng_next(&s) % 4;

		if (kind == 2)
			fill_text(g->ram + p * GUEST_PAGE, pool, &s);
		else if (kind == 3)
			fill_random(g->ram + p * GUEST_PAGE, &s);
	}
	free(pool);
	for (unsigned i = 2 * DIRTY_THREADS; i < 16; i++)
		g->cpu.regs[i] = rng_next(&s);
	return 0;
}

int guest_map_image(struct guest *g, const char *path, mfd_error **errp)
{
	struct stat st;
	int fd = image_open(g, path, &st, errp);
	int r = 0;

	if (fd < 0)
		return fd;
	/* A private file mapping over the front: pages come in from the page
	 * cache as the migration reads them, and the dirtying threads' writes
	 * never reach the file. */
	if (r == 0 && mmap(g->ram, (size_t)st.st_size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED) {
		r = mfd_error_set(errp, MFD_EIO, "%s: cannot map it: %s", path, strerror(errno));
		guest_free(g);
	}
	/* A running guest's RAM is resident and has been accessed: read a byte
	 * of every page now, so that mapping the image (a page fault per page,
	 * far dearer under some hypervisors than reading the page) is paid
	 * before the migration, not during it.  Read only: no copy is made. */
	if (r == 0) {
		volatile const uint8_t *p = g->ram;
		uint8_t sum = 0;

		for (uint64_t off = 0; off < (uint64_t)st.st_size; off += GUEST_PAGE)
			sum |= p[off];
		(void)sum;
	}
	if (r == 0)
		g->content_len = (uint64_t)st.st_size;
	close(fd);
	return r;
}

bool page_is_zero(const uint8_t *p)
{
	uint64_t acc = 0;

	for (size_t i = 0; i < GUEST_PAGE; i += 8) {
		uint64_t v;

		memcpy(&v, p + i, 8);
		acc |= v;
	}
	return acc == 0;
}

static int write_all(int fd, const uint8_t *p, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

int guest_write_image(const struct guest *g, const char *path, mfd_error **errp)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int r = 0;

	if (fd < 0)
		return mfd_error_set(errp, MFD_EIO, "%s: %s", path, strerror(errno));
	/* Zero pages become holes: a mostly empty guest makes a small file. */
	for (uint64_t off = 0; off < g->content_len && r == 0; off += GUEST_PAGE) {
		size_t len = g->content_len - off < GUEST_PAGE ? g->content_len - off : GUEST_PAGE;

		if (!page_is_zero(g->ram + off) && write_all(fd, g->ram + off, len, (off_t)off) < 0)
			r = -1;
	}
	if (r == 0 && ftruncate(fd, (off_t)g->content_len) < 0)
		r = -1;
	if (close(fd) < 0)
		r = -1;
	if (r < 0)
		return mfd_error_set(errp, MFD_EIO, "%s: cannot write it: %s", path, strerror(errno));
	return 0;
}

/* ---- device sections ------------------------------------------------------------ */

static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	for (int i = 0; i < 16; i++)
		mfd_stream_put_be64(s, g->cpu.regs[i]);
	mfd_stream_put_be64(s, g->cpu.rip);
	return mfd_stream_put_be64(s, g->cpu.rflags);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct guest *g = opaque;
	int r = 0;

	(void)version_id;
	(void)errp;
	for (int i = 0; i < 16 && r == 0; i++)
		r = mfd_stream_get_be64(s, &g->cpu.regs[i]);
	if (r == 0)
		r = mfd_stream_get_be64(s, &g->cpu.rip);
	if (r == 0)
		r = mfd_stream_get_be64(s, &g->cpu.rflags);
	return r;
}

static int image_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	const struct guest *g = opaque;

	(void)errp;
	return mfd_stream_put_be64(s, g->content_len);
}

static int image_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct guest *g = opaque;
	uint64_t len;
	int r = mfd_stream_get_be64(s, &len);

	(void)version_id;
	if (r < 0)
		return r;
	if (len == 0 || len > g->size)
		return mfd_error_set(errp, MFD_EPROTO, "image of %" PRIu64 " bytes does not fit "
				     "a guest of %" PRIu64 " bytes", len, g->size);
	g->content_len = len;
	return 0;
}

int guest_register(struct guest *g, mfd_migration *m, bool fresh, mfd_error **errp)
{
	struct mfd_ram_block_desc d = {
		.size = sizeof(d),
		.flags = fresh ? MFD_RAM_FRESH : 0,
		.name = GUEST_RAM_NAME,
		.host = g->ram,
		.length = g->size,
		.page_size = GUEST_PAGE,
		.fd = -1,
	};
	static const mfd_save_handlers cpu_ops = {
		.size = sizeof(mfd_save_handlers),
		.save_state = cpu_save,
		.load_state = cpu_load,
	};
	static const mfd_save_handlers image_ops = {
		.size = sizeof(mfd_save_handlers),
		.save_state = image_save,
		.load_state = image_load,
	};
	int r = mfd_migration_set_identity(m, GUEST_IDENTITY, errp);

	if (r == 0 && (r = mfd_ram_block_register(m, &d, errp)) > 0)
		r = 0;
	if (r == 0)
		r = mfd_register_live(m, "cpu", 0, 1, &cpu_ops, g, errp);
	if (r == 0)
		r = mfd_register_live(m, "image", 0, 1, &image_ops, g, errp);
	return r;
}

/* ---- checksums ------------------------------------------------------------------ */

static inline uint64_t rotl64(uint64_t v, int r)
{
	return (v << r) | (v >> (64 - r));
}

#define H1 0x9e3779b185ebca87ull
#define H2 0xc2b2ae3d27d4eb4full
#define H3 0x165667b19e3779f9ull

uint64_t page_hash(const uint8_t *page)
{
	/* Four independent multiply-rotate lanes (the xxHash64 round), so the
	 * CPU overlaps them: several GB/s, far below the migration's cost. */
	uint64_t a = H1 + H2, b = H2, c = 0, d = -H1;

	for (size_t i = 0; i < GUEST_PAGE; i += 32) {
		uint64_t w[4];

		memcpy(w, page + i, 32);
		a = rotl64(a + w[0] * H2, 31) * H1;
		b = rotl64(b + w[1] * H2, 31) * H1;
		c = rotl64(c + w[2] * H2, 31) * H1;
		d = rotl64(d + w[3] * H2, 31) * H1;
	}
	a = rotl64(a, 1) + rotl64(b, 7) + rotl64(c, 12) + rotl64(d, 18);
	a ^= a >> 33;
	a *= H2;
	a ^= a >> 29;
	a *= H3;
	return a ^ (a >> 32);
}

void guest_checksums(const struct guest *g, uint64_t *sums)
{
	for (uint64_t p = 0; p < guest_pages(g); p++)
		sums[p] = page_hash(g->ram + p * GUEST_PAGE);
}
