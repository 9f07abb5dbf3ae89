/* SPDX-License-Identifier: MIT */
/*
 * The "ram" section on the destination: checks the announced blocks against
 * its own, places main-stream pages, and releases the multifd channels at
 * each marker; in postcopy, places the records of the main and preempt
 * streams through userfaultfd (engine/postcopy.c).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "core/escape.h"
#include "core/stream.h"
#include "core/util.h"

/*
 * vm_create: read the source's whole table, hand it (with its VM
 * configuration) to the VMM, which may register blocks and sections now;
 * then the table is checked as always.  @s is left at the same place as the
 * check below expects it: after the list, which the table read consumed.
 */
struct offered {
	struct mfd_ram_block_offer *v;
	char (*names)[256];
	unsigned n, cap;
};

static void offered_free(struct offered *o)
{
	free(o->v);
	free(o->names);
}

static int read_offers(mfd_stream *s, uint64_t total, struct offered *o, mfd_error **errp)
{
	char esc[ESCAPE_BUF_SIZE];
	uint64_t sum = 0;
	int r;

	while (sum < total) {
		uint64_t size, ps;
		size_t len;

		if (o->n == o->cap) {
			unsigned cap = o->cap ? o->cap * 2 : 16;
			void *v = realloc(o->v, cap * sizeof(*o->v));

			if (v)
				o->v = v;
			void *nm = v ? realloc(o->names, cap * sizeof(*o->names)) : NULL;

			if (!v || !nm)
				return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the "
						     "source's block table");
			o->names = nm;
			o->cap = cap;
		}
		if (o->n >= MFD_RAM_BLOCKS_MAX)
			return mfd_error_set(errp, MFD_EPROTO, "ram: the source announces more than "
					     "%u blocks", MFD_RAM_BLOCKS_MAX);
		char *name = o->names[o->n];

		if ((r = mfd_stream_get_str(s, name, &len)) < 0 ||
		    (r = mfd_stream_get_be64(s, &size)) < 0 || (r = mfd_stream_get_be64(s, &ps)) < 0)
			return r;
		if (strlen(name) != len || len == 0)
			return mfd_error_set(errp, MFD_EPROTO, "ram: block name '%s' %s",
					     escape_bytes(esc, sizeof(esc), name, len),
					     len ? "contains a NUL byte" : "is empty");
		if (size == 0 || size > total - sum)
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: block '%s' of %llu bytes does not fit the %llu "
					     "announced", name, (unsigned long long)size,
					     (unsigned long long)total);
		o->v[o->n++] = (struct mfd_ram_block_offer){ name, size, ps };
		sum += size;
	}
	/* The names moved with the realloc: point at where they are now. */
	for (unsigned i = 0; i < o->n; i++)
		o->v[i].name = o->names[i];
	return 0;
}

static int vm_create(struct mfd_engine *e, mfd_stream *s, uint64_t total, mfd_error **errp)
{
	mfd_migration *m = e->m;
	struct offered o = { 0 };
	int r = read_offers(s, total, &o, errp);

	if (r == 0) {
		atomic_store(&m->vm_create_running, true);
		r = m->hooks.vm_create(m->hooks_opaque, e->dst.vm_config, e->dst.vm_config_len,
				       o.v, o.n, errp);
		atomic_store(&m->vm_create_running, false);
		if (r < 0) {
			if (errp && !*errp)
				mfd_error_set(errp, MFD_EHANDLER, "failed with code %d", r);
			mfd_error_prefix(errp ? *errp : NULL, "vm_create hook");
			r = errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
		}
	}
	eng_publish_table(e);
	if (r == 0)
		r = loadvm_setup_new(m, errp);
	/* The same checks as without the hook, against what it registered. */
	for (unsigned b = 0; r == 0 && b < o.n; b++) {
		if (b >= m->nblocks || strcmp(o.v[b].name, m->blocks[b].name) != 0)
			r = mfd_error_set(errp, MFD_EPROTO,
					  "ram: the source's block %u is '%s', this side has '%s' "
					  "after vm_create", b, o.v[b].name,
					  b < m->nblocks ? m->blocks[b].name : "(none)");
		else if (o.v[b].length != m->blocks[b].size ||
			 o.v[b].page_size != m->blocks[b].page_size)
			r = mfd_error_set(errp, MFD_EPROTO,
					  "ram: block '%s' is %llu bytes in %llu-byte pages on the "
					  "source, %llu in %llu-byte pages here", o.v[b].name,
					  (unsigned long long)o.v[b].length,
					  (unsigned long long)o.v[b].page_size,
					  (unsigned long long)m->blocks[b].size,
					  (unsigned long long)m->blocks[b].page_size);
	}
	if (r == 0 && o.n != m->nblocks)
		r = mfd_error_set(errp, MFD_EPROTO, "ram: the source announced %u blocks, this "
				  "side has %u after vm_create", o.n, m->nblocks);
	offered_free(&o);
	if (r == 0)
		e->dst.ram_started = true;
	return r < 0 ? r : eng_dest_ram_ready(e, errp);
}

static int load_blocks(struct mfd_engine *e, mfd_stream *s, uint64_t total, mfd_error **errp)
{
	mfd_migration *m = e->m;
	uint64_t sum = 0;
	unsigned b = 0;

	if (e->dst.lazy)
		return vm_create(e, s, total, errp);
	if (total != ramsec_total(m))
		return mfd_error_set(errp, MFD_EPROTO,
				     "ram: the source has %llu bytes of RAM, this side %llu",
				     (unsigned long long)total, (unsigned long long)ramsec_total(m));
	while (sum < total) {
		char name[256], esc[ESCAPE_BUF_SIZE];
		uint64_t size, ps;
		int r;

		size_t len;

		if ((r = mfd_stream_get_str(s, name, &len)) < 0 ||
		    (r = mfd_stream_get_be64(s, &size)) < 0 || (r = mfd_stream_get_be64(s, &ps)) < 0)
			return r;
		/* strcmp() would stop at an inner NUL: "pc.ram\0x" must not pass. */
		if (strlen(name) != len)
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: block name '%s' contains a NUL byte",
					     escape_bytes(esc, sizeof(esc), name, len));
		if (b >= m->nblocks || strcmp(name, m->blocks[b].name) != 0)
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: the source's block %u is '%s', this side has '%s'", b,
					     escape_bytes(esc, sizeof(esc), name, len),
					     b < m->nblocks ? m->blocks[b].name : "(none)");
		if (size != m->blocks[b].size || ps != m->blocks[b].page_size)
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: block '%s' is %llu bytes in %llu-byte pages on the "
					     "source, %llu in %llu-byte pages here", name,
					     (unsigned long long)size, (unsigned long long)ps,
					     (unsigned long long)m->blocks[b].size,
					     (unsigned long long)m->blocks[b].page_size);
		sum += size;
		b++;
	}
	if (b != m->nblocks)
		return mfd_error_set(errp, MFD_EPROTO, "ram: the source announced %u blocks, this "
				     "side has %u", b, m->nblocks);
	e->dst.ram_started = true;
	return 0;
}

/* The block a page record is for: named, or the previous one (CONTINUE); and
 * its offset checked against it.  Returns the block index or an error. */
static int record_block(struct mfd_engine *e, mfd_stream *s, uint64_t word, unsigned flags,
			int *last_block, mfd_error **errp)
{
	mfd_migration *m = e->m;
	const struct mfd_ram_block *bk;
	uint64_t off = word & ~(uint64_t)RAM_FLAGS_MASK;
	int r;

	if (!(flags & RAM_FLAG_CONTINUE)) {
		char name[256], esc[ESCAPE_BUF_SIZE];
		size_t len;

		if ((r = mfd_stream_get_str(s, name, &len)) < 0)
			return r;
		*last_block = -1;
		/* As in the block list: a name with an inner NUL names no block. */
		if (strlen(name) != len)
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: block name '%s' contains a NUL byte",
					     escape_bytes(esc, sizeof(esc), name, len));
		for (unsigned b = 0; b < m->nblocks; b++)
			if (strcmp(name, m->blocks[b].name) == 0)
				*last_block = (int)b;
		if (*last_block < 0)
			return mfd_error_set(errp, MFD_EPROTO, "ram: page of unknown block '%s'",
					     escape_bytes(esc, sizeof(esc), name, len));
	} else if (*last_block < 0) {
		return mfd_error_set(errp, MFD_EPROTO,
				     "ram: CONTINUE record with no block named before");
	}
	bk = &m->blocks[*last_block];
	if ((off & (bk->page_size - 1)) || off > bk->size - bk->page_size)
		return mfd_error_set(errp, MFD_EPROTO,
				     "ram: page offset 0x%llx is not a page of block '%s' (%llu bytes)",
				     (unsigned long long)off, bk->name, (unsigned long long)bk->size);
	if (ram_range_absent(bk, off, bk->page_size))
		return mfd_error_set(errp, MFD_EPROTO,
				     "ram: page 0x%llx of block '%s' is in a range this side marked "
				     "absent (mfd_ram_discard()); both sides must mark the same "
				     "ranges", (unsigned long long)off, bk->name);
	return *last_block;
}

static int get_zero_fill(mfd_stream *s, mfd_error **errp)
{
	uint8_t fill;
	int r = mfd_stream_get_u8(s, &fill);

	if (r < 0)
		return r;
	if (fill != 0)
		return mfd_error_set(errp, MFD_EPROTO, "ram: ZERO record with fill byte 0x%02x", fill);
	return 0;
}

static int load_page(struct mfd_engine *e, mfd_stream *s, uint64_t word, unsigned flags,
		     mfd_error **errp)
{
	uint64_t off = word & ~(uint64_t)RAM_FLAGS_MASK;
	int b = record_block(e, s, word, flags, &e->dst.recv_last_block, errp), r;

	if (b < 0)
		return b;
	const struct mfd_ram_block *bk = &e->m->blocks[b];

	if (flags & RAM_FLAG_ZERO) {
		if ((r = get_zero_fill(s, errp)) < 0)
			return r;
		mfd_page_place_zero(bk, off);
		return 0;
	}
	mfd_page_placed(bk, off);
	return mfd_stream_get_buf(s, bk->host + off, bk->page_size);
}

int ramsec_load_pc_record(struct mfd_engine *e, mfd_stream *s, uint64_t word, int *last_block,
			  uint8_t *bounce, mfd_error **errp)
{
	unsigned flags = (unsigned)(word & RAM_FLAGS_MASK);
	uint64_t off = word & ~(uint64_t)RAM_FLAGS_MASK;
	int b, r;

	if ((flags & ~RAM_FLAG_CONTINUE) != RAM_FLAG_PAGE &&
	    (flags & ~RAM_FLAG_CONTINUE) != RAM_FLAG_ZERO)
		return mfd_error_set(errp, MFD_EPROTO,
				     "ram: record flags 0x%x are not a page in postcopy", flags);
	if ((b = record_block(e, s, word, flags, last_block, errp)) < 0)
		return b;
	if (flags & RAM_FLAG_ZERO) {
		if ((r = get_zero_fill(s, errp)) < 0)
			return r;
		return pcd_place(e, (unsigned)b, off, NULL, errp);
	}
	/* UFFDIO_COPY places a whole page at once: the guest never sees half. */
	if ((r = mfd_stream_get_buf(s, bounce, e->m->blocks[b].page_size)) < 0)
		return r;
	return pcd_place(e, (unsigned)b, off, bounce, errp);
}

/*
 * Destination, postcopy, main stream: the push sends pages in address order,
 * so neighbours are gathered into a run and placed with one UFFDIO_COPY (a
 * call per 4 KiB page cost the receiving thread a third of its time).  A run
 * goes out when it is full, when the next record does not extend it, and
 * before the thread would wait for the network: a page that arrived is never
 * held back for one that has not.
 */
#define PC_RUN_BYTES (64u << 10)

struct pc_run {
	uint8_t *buf;		/* e->dst.pc_page (PC_PAGE_MAX bytes) */
	unsigned block;
	uint64_t offset;
	uint32_t n;		/* pages gathered */
};

static int run_flush(struct mfd_engine *e, struct pc_run *run, mfd_error **errp)
{
	uint32_t n = run->n;

	run->n = 0;
	return n ? pcd_place_run(e, run->block, run->offset, run->buf, n, errp) : 0;
}

static int load_pc_main(struct mfd_engine *e, mfd_stream *s, uint64_t word, struct pc_run *run,
			mfd_error **errp)
{
	unsigned flags = (unsigned)(word & RAM_FLAGS_MASK);
	uint64_t off = word & ~(uint64_t)RAM_FLAGS_MASK;
	int b, r;

	if ((flags & ~RAM_FLAG_CONTINUE) != RAM_FLAG_PAGE) {
		/* Zero pages and refusals as on the preempt stream. */
		if ((r = run_flush(e, run, errp)) < 0)
			return r;
		return ramsec_load_pc_record(e, s, word, &e->dst.recv_last_block, run->buf, errp);
	}
	/* A named record starts another block (and its name may not be here yet). */
	if (!(flags & RAM_FLAG_CONTINUE) && (r = run_flush(e, run, errp)) < 0)
		return r;
	if ((b = record_block(e, s, word, flags, &e->dst.recv_last_block, errp)) < 0)
		return b;
	uint64_t ps = e->m->blocks[b].page_size;
	uint32_t cap = (uint32_t)MFD_MAX(1, MFD_MIN(PC_RUN_BYTES, PC_PAGE_MAX) / ps);

	if (run->n && (run->block != (unsigned)b || off != run->offset + run->n * ps ||
		       run->n == cap || stream_buffered(s) < ps) &&
	    (r = run_flush(e, run, errp)) < 0)
		return r;
	if (run->n == 0) {
		run->block = (unsigned)b;
		run->offset = off;
	}
	/* UFFDIO_COPY places whole pages: the guest never sees half of one. */
	if ((r = mfd_stream_get_buf(s, run->buf + run->n * ps, ps)) < 0)
		return r;
	run->n++;
	return 0;
}

int ramsec_load_state(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct pc_run run = { .buf = e->dst.pc_page };

	if (version_id != RAM_SECTION_VERSION)
		return mfd_error_set(errp, MFD_EBADVERSION, "ram: section version %u, expected %u",
				     version_id, RAM_SECTION_VERSION);
	for (;;) {
		uint64_t word;
		unsigned flags;
		int r = 0;

		if (run.n && stream_buffered(s) < sizeof(word))
			r = run_flush(e, &run, errp);
		if (r < 0 || (r = mfd_stream_get_be64(s, &word)) < 0)
			return r;
		flags = (unsigned)(word & RAM_FLAGS_MASK);
		if (flags == RAM_FLAG_EOS)
			return run_flush(e, &run, errp);
		if (flags == RAM_FLAG_MEM_SIZE) {
			if (e->dst.ram_started)
				return mfd_error_set(errp, MFD_EPROTO, "ram: second block list");
			r = load_blocks(e, s, word & ~(uint64_t)RAM_FLAGS_MASK, errp);
		} else if (!e->dst.ram_started) {
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: record 0x%x before the block list", flags);
		} else if (pc_at(e) >= PC_LISTENING) {
			r = load_pc_main(e, s, word, &run, errp);
		} else if (flags == RAM_FLAG_MULTIFD_FLUSH) {
			if (!e->dst.recv)
				return mfd_error_set(errp, MFD_EPROTO,
						     "ram: multifd flush marker without multifd channels");
			r = multifd_recv_sync(e->dst.recv, errp);
		} else if ((flags & ~RAM_FLAG_CONTINUE) == RAM_FLAG_PAGE ||
			   (flags & ~RAM_FLAG_CONTINUE) == RAM_FLAG_ZERO) {
			r = load_page(e, s, word, flags, errp);
		} else {
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: unknown combination of record flags 0x%x", flags);
		}
		if (r < 0)
			return r;
	}
}
