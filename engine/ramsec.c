/* SPDX-License-Identifier: MIT */
/*
 * The built-in "ram" live section: its handlers and registration, the
 * built-in dirty tracker, and the source's precopy.
 *
 * Source: START announces the blocks; each PART walks the dirty bitmap from
 * where the last one stopped, feeding pages to multifd (or writing them on
 * the main stream when there are no multifd channels) until a 50 ms budget
 * is spent or the pass ends.  At the end of a pass the dirty log is synced
 * into the bitmap and multifd is synced, with a MULTIFD_FLUSH marker on the
 * main stream so the destination can hold its channels at the same point.
 * END (VM stopped) sends everything left.
 *
 * After the switch to postcopy the source's PARTs and page requests are
 * engine/ramsec_pc.c; the destination's loading is engine/ramsec_load.c.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"
#include "core/stream.h"
#include "core/util.h"

static uint64_t words(uint64_t npages)
{
	return (npages + 63) / 64;
}

uint64_t ramsec_words(uint64_t npages)
{
	return words(npages);
}

uint64_t ramsec_total(const mfd_migration *m)
{
	uint64_t t = 0;

	for (unsigned i = 0; i < m->nblocks; i++)
		t += m->blocks[i].size;
	return t;
}

/* ---- built-in dirty tracker -------------------------------------------------- */

void mfd_ram_mark_dirty(mfd_migration *m, const void *addr, size_t len)
{
	struct mfd_tracker *t;
	const uint8_t *p = addr;
	unsigned lo = 0, hi;

	if (!m || !len)
		return;
	t = __atomic_load_n(&m->tracker, __ATOMIC_ACQUIRE);
	if (!t)
		return;
	/* The tracker's own copy of the block geometry (the block table may be
	 * changed between migrations while a VMM thread is in here), sorted by
	 * address: the last block starting at or below @p. */
	hi = t->nblocks;
	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;

		if (t->blk[mid].host <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return;
	const struct trk_block *tb = &t->blk[lo - 1];

	if (p >= tb->host + tb->size)
		return;
	uint64_t first = (uint64_t)(p - tb->host) >> tb->shift;
	uint64_t end = (uint64_t)(p - tb->host) + len;

	if (end > tb->size || end < len)
		end = tb->size;
	uint64_t last = (end - 1) >> tb->shift;

	for (uint64_t pg = first; pg <= last; pg++)
		atomic_fetch_or_explicit(&tb->bits[pg / 64], 1ull << (pg % 64), memory_order_relaxed);
	/* A load first: the flag's cache line stays shared once it is set. */
	if (!atomic_load_explicit(&t->used, memory_order_relaxed))
		atomic_store_explicit(&t->used, true, memory_order_release);
}

static void tracker_free(struct mfd_tracker *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->nblocks; i++)
		free((void *)t->blk[i].bits);
	free(t->blk);
	free(t->slot);
	free(t);
}

/* The tracker of an earlier migration serves again if the blocks are the same. */
static bool tracker_fits(const struct mfd_tracker *t, const mfd_migration *m)
{
	if (!t || t->nblocks != m->nblocks)
		return false;
	for (unsigned b = 0; b < m->nblocks; b++) {
		const struct trk_block *tb = &t->blk[t->slot[b]];

		if (tb->size != m->blocks[b].size || tb->host != m->blocks[b].host ||
		    tb->shift != m->blocks[b].page_shift)
			return false;
	}
	return true;
}

static int cmp_trk(const void *a, const void *b)
{
	const struct trk_block *x = a, *y = b;

	return x->host < y->host ? -1 : x->host > y->host;
}

static int tracker_make(mfd_migration *m, mfd_error **errp)
{
	struct mfd_tracker *t = calloc(1, sizeof(*t));

	if (!t)
		return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the tracker");
	t->blk = calloc(m->nblocks, sizeof(*t->blk));
	t->slot = calloc(m->nblocks, sizeof(*t->slot));
	if (!t->blk || !t->slot) {
		tracker_free(t);
		return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the tracker");
	}
	for (unsigned b = 0; b < m->nblocks; b++) {
		struct trk_block *tb = &t->blk[b];

		tb->npages = m->blocks[b].size >> m->blocks[b].page_shift;
		tb->host = m->blocks[b].host;
		tb->size = m->blocks[b].size;
		tb->shift = m->blocks[b].page_shift;
		tb->block = b;
		tb->bits = calloc(words(tb->npages), 8);
		t->nblocks = b + 1;
		if (!tb->bits) {
			tracker_free(t);
			return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the tracker");
		}
	}
	qsort(t->blk, t->nblocks, sizeof(*t->blk), cmp_trk);
	for (unsigned i = 0; i < t->nblocks; i++)
		t->slot[t->blk[i].block] = i;
	/* A VMM thread may still be inside mfd_ram_mark_dirty() with the old one:
	 * keep it until the object goes (a VMM that re-plugs its RAM more than
	 * eight times pays with the oldest trackers leaking until then). */
	if (m->tracker) {
		if (m->nretired == 8)
			log_warn("ram: more than 8 block tables in one migration object's life; "
				 "the old dirty trackers are kept until it is freed");
		struct mfd_tracker **r = realloc(m->retired, (m->nretired + 1) * sizeof(*r));

		if (!r) {
			tracker_free(t);
			return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the tracker");
		}
		m->retired = r;
		m->retired[m->nretired++] = m->tracker;
	}
	__atomic_store_n(&m->tracker, t, __ATOMIC_RELEASE);
	return 0;
}

/* ---- source ---------------------------------------------------------------------- */

const struct mfd_ram_block *ramsec_blk(struct mfd_engine *e, unsigned b)
{
	return &e->m->blocks[b];
}

#define CLEAR_CHUNK_SHIFT 18	/* dirty_clear ranges: 2^18 granules, QEMU's default */

/* OR the granule bitmap @g (@ngran bits) of block @b into the page bitmap @pg. */
static void granules_to_pages(const struct mfd_ram_block *bk, const uint64_t *g, uint64_t ngran,
			      uint64_t *pg, uint64_t npages)
{
	unsigned ps = bk->page_shift, ds = bk->dirty_shift;

	for (uint64_t w = 0; w < words(ngran); w++) {
		for (uint64_t bits = g[w]; bits; bits &= bits - 1) {
			uint64_t gi = w * 64 + (uint64_t)__builtin_ctzll(bits), p0, p1;

			if (gi >= ngran)
				break;
			if (ds <= ps) {
				p0 = gi >> (ps - ds);
				p1 = p0 + 1;
			} else {
				p0 = gi << (ds - ps);
				p1 = MFD_MIN(npages, (gi + 1) << (ds - ps));
			}
			for (uint64_t p = p0; p < p1; p++)
				pg[p / 64] |= 1ull << (p % 64);
		}
	}
}

/* OR @src into block @b's send bitmap (minus its absent pages), counting. */
static uint64_t add_dirty(struct ram_source *rs, unsigned b, const uint64_t *src)
{
	uint64_t nw = words(rs->npages[b]), added = 0;

	for (uint64_t w = 0; w < nw; w++) {
		uint64_t nb = src[w] & ~rs->bitmap[b][w];

		if (rs->absent[b])
			nb &= ~rs->absent[b][w];
		if (w == nw - 1 && rs->npages[b] % 64)
			nb &= (1ull << (rs->npages[b] % 64)) - 1;
		rs->bitmap[b][w] |= nb;
		added += (uint64_t)__builtin_popcountll(nb);
	}
	rs->dirty_b[b] += added;
	return added;
}

/* The hook's granules reported for block @b wait for their dirty_clear. */
static void note_clear(struct ram_source *rs, unsigned b, const uint64_t *g)
{
	uint64_t nw = words(rs->ngran[b]);

	for (uint64_t w = 0; w < nw; w++) {
		if (!g[w])
			continue;
		rs->clear[b][w] |= g[w];
		uint64_t c = (w * 64) >> CLEAR_CHUNK_SHIFT;

		rs->clear_chunks[b][c / 64] |= 1ull << (c % 64);
	}
	if (rs->ngran[b] % 64)
		rs->clear[b][nw - 1] &= (1ull << (rs->ngran[b] % 64)) - 1;
}

static int hook_failed(struct mfd_engine *e, const char *hook, unsigned b, int r,
		       mfd_error **errp)
{
	if (errp && !*errp)
		mfd_error_set(errp, MFD_EHANDLER, "%s hook failed (%d)", hook, r);
	if (b != ~0u)
		mfd_error_prefix(errp ? *errp : NULL, "ram: block '%s'", ramsec_blk(e, b)->name);
	else
		mfd_error_prefix(errp ? *errp : NULL, "ram");
	return errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
}

/* Pull the guest's writes since the last sync into the send bitmap: the
 * VMM's dirty_sync hook and the built-in tracker, both. */
static int dirty_sync(struct mfd_engine *e, mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
	mfd_migration *m = e->m;
	struct mfd_tracker *t = m->tracker;
	uint64_t added = 0, round = ++rs->sync_round;
	int r;

	if (m->hooks.dirty_sync_begin &&
	    (r = m->hooks.dirty_sync_begin(m->hooks_opaque, round, errp)) < 0)
		return hook_failed(e, "dirty_sync_begin", ~0u, r, errp);
	for (unsigned b = 0; b < m->nblocks; b++) {
		const struct mfd_ram_block *bk = ramsec_blk(e, b);

		if (m->hooks.dirty_sync) {
			uint64_t *g = rs->scratch, ng = rs->ngran[b];

			memset(g, 0, words(ng) * 8);
			r = m->hooks.dirty_sync(m->hooks_opaque, b, bk->cookie, g, ng, errp);
			if (r < 0)
				return hook_failed(e, "dirty_sync", b, r, errp);
			if (rs->clear)
				note_clear(rs, b, g);
			if (bk->dirty_shift != bk->page_shift) {
				uint64_t *pg = rs->scratch_pages;

				memset(pg, 0, words(rs->npages[b]) * 8);
				granules_to_pages(bk, g, ng, pg, rs->npages[b]);
				added += add_dirty(rs, b, pg);
			} else {
				added += add_dirty(rs, b, g);
			}
		}
		if (t && atomic_load_explicit(&t->used, memory_order_acquire)) {
			const struct trk_block *tb = &t->blk[t->slot[b]];
			uint64_t *g = rs->scratch;

			for (uint64_t w = 0; w < words(rs->npages[b]); w++)
				g[w] = atomic_exchange_explicit(&tb->bits[w], 0, memory_order_relaxed);
			added += add_dirty(rs, b, g);
		}
	}
	if (m->hooks.dirty_sync_end && (r = m->hooks.dirty_sync_end(m->hooks_opaque, round, errp)) < 0)
		return hook_failed(e, "dirty_sync_end", ~0u, r, errp);
	rs->dirty += added;
	STAT_ADD(e, dirty_syncs, 1);
	return 0;
}

/* Manual protection: before page @page of block @b is read, the VMM
 * re-protects what the last sync reported around it (dirty_clear). */
static int clear_before_send(struct mfd_engine *e, unsigned b, uint64_t page, mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
	const struct mfd_ram_block *bk = ramsec_blk(e, b);
	uint64_t g = (page << bk->page_shift) >> bk->dirty_shift;
	uint64_t c = g >> CLEAR_CHUNK_SHIFT;
	mfd_migration *m = e->m;

	if (!(rs->clear_chunks[b][c / 64] & (1ull << (c % 64))))
		return 0;
	rs->clear_chunks[b][c / 64] &= ~(1ull << (c % 64));
	uint64_t first = c << CLEAR_CHUNK_SHIFT;
	uint64_t n = MFD_MIN(rs->ngran[b] - first, 1ull << CLEAR_CHUNK_SHIFT);
	uint64_t *mask = &rs->clear[b][first / 64];
	int r = m->hooks.dirty_clear(m->hooks_opaque, b, bk->cookie, first, n, mask, errp);

	if (r < 0)
		return hook_failed(e, "dirty_clear", b, r, errp);
	memset(mask, 0, words(n) * 8);
	return 0;
}

static void source_arrays_free(struct ram_source *rs)
{
	for (unsigned b = 0; b < rs->nblocks; b++) {
		free(rs->bitmap[b]);
		if (rs->absent)
			free(rs->absent[b]);
		if (rs->clear) {
			free(rs->clear[b]);
			free(rs->clear_chunks[b]);
		}
	}
	free(rs->bitmap);
	free(rs->npages);
	free(rs->dirty_b);
	free(rs->absent);
	free(rs->clear);
	free(rs->clear_chunks);
	free(rs->ngran);
	free(rs->scratch);
	free(rs->scratch_pages);
	rs->bitmap = NULL;
	rs->npages = rs->dirty_b = rs->ngran = rs->scratch = rs->scratch_pages = NULL;
	rs->absent = rs->clear = rs->clear_chunks = NULL;
	rs->nblocks = 0;
}

/* Block @b's absent ranges as a page bitmap (NULL without ranges). */
static uint64_t *absent_map(const struct mfd_ram_block *bk, uint64_t npages)
{
	uint64_t *a = calloc(words(npages), 8);

	if (!a)
		return NULL;
	for (unsigned i = 0; i < bk->nabsent; i++) {
		uint64_t p0 = bk->absent[i].start >> bk->page_shift;
		uint64_t p1 = (bk->absent[i].start + bk->absent[i].len) >> bk->page_shift;

		for (uint64_t p = p0; p < p1; p++)
			a[p / 64] |= 1ull << (p % 64);
	}
	return a;
}

static int prepare(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct ram_source *rs = &e->src.ram;
	mfd_migration *m = e->m;
	unsigned n = m->nblocks;
	uint64_t scratch_words = 0;
	bool manual = m->hooks.dirty_clear != NULL;

	source_arrays_free(rs);
	memset(rs, 0, sizeof(*rs));
	rs->last_block = -1;
	rs->pre_last_block = -1;
	rs->bitmap = calloc(n ? n : 1, sizeof(*rs->bitmap));
	rs->npages = calloc(n ? n : 1, sizeof(*rs->npages));
	rs->dirty_b = calloc(n ? n : 1, sizeof(*rs->dirty_b));
	rs->absent = calloc(n ? n : 1, sizeof(*rs->absent));
	rs->ngran = calloc(n ? n : 1, sizeof(*rs->ngran));
	if (manual) {
		rs->clear = calloc(n ? n : 1, sizeof(*rs->clear));
		rs->clear_chunks = calloc(n ? n : 1, sizeof(*rs->clear_chunks));
	}
	rs->nblocks = n;
	if (!rs->bitmap || !rs->npages || !rs->dirty_b || !rs->absent || !rs->ngran ||
	    (manual && (!rs->clear || !rs->clear_chunks)))
		return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the block table");
	for (unsigned b = 0; b < n; b++) {
		const struct mfd_ram_block *bk = ramsec_blk(e, b);
		uint64_t np = bk->size >> bk->page_shift, ng;

		ng = (bk->size + (1ull << bk->dirty_shift) - 1) >> bk->dirty_shift;
		rs->npages[b] = np;
		rs->ngran[b] = ng;
		scratch_words = MFD_MAX(scratch_words, MFD_MAX(words(np), words(ng)));
		rs->bitmap[b] = malloc(words(np) * 8);
		if (!rs->bitmap[b])
			return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the bitmap of "
					     "block '%s'", bk->name);
		if (bk->nabsent && !(rs->absent[b] = absent_map(bk, np)))
			return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the bitmap of "
					     "block '%s'", bk->name);
		/* The first pass sends every page that is present. */
		memset(rs->bitmap[b], 0xff, words(np) * 8);
		if (np % 64)
			rs->bitmap[b][words(np) - 1] = (1ull << (np % 64)) - 1;
		uint64_t cnt = np;

		if (rs->absent[b])
			for (uint64_t w = 0; w < words(np); w++) {
				cnt -= (uint64_t)__builtin_popcountll(rs->bitmap[b][w] & rs->absent[b][w]);
				rs->bitmap[b][w] &= ~rs->absent[b][w];
			}
		rs->dirty += cnt;
		rs->dirty_b[b] = cnt;
		if (manual) {
			uint64_t nch = (ng + (1ull << CLEAR_CHUNK_SHIFT) - 1) >> CLEAR_CHUNK_SHIFT;

			/* The first pass clears every range before it reads it: with
			 * KVM_DIRTY_LOG_INITIALLY_SET nothing is protected yet. */
			rs->clear[b] = malloc(words(ng) * 8);
			rs->clear_chunks[b] = malloc(words(nch) * 8);
			if (!rs->clear[b] || !rs->clear_chunks[b])
				return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the "
						     "clear bitmap of block '%s'", bk->name);
			memset(rs->clear[b], 0xff, words(ng) * 8);
			if (ng % 64)
				rs->clear[b][words(ng) - 1] = (1ull << (ng % 64)) - 1;
			memset(rs->clear_chunks[b], 0xff, words(nch) * 8);
			if (nch % 64)
				rs->clear_chunks[b][words(nch) - 1] = (1ull << (nch % 64)) - 1;
		}
	}
	rs->scratch = malloc(MFD_MAX(scratch_words, 1) * 8);
	/* A page bitmap for blocks whose dirty granule is not their page. */
	rs->scratch_pages = malloc(MFD_MAX(scratch_words, 1) * 8);
	if (!rs->scratch || !rs->scratch_pages)
		return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for a bitmap");
	if (!tracker_fits(m->tracker, m)) {
		int r = tracker_make(m, errp);

		if (r < 0)
			return r;
	} else {
		/* Writes before this migration began are covered by the full first pass. */
		struct mfd_tracker *t = m->tracker;

		for (unsigned i = 0; i < t->nblocks; i++)
			for (uint64_t w = 0; w < words(t->blk[i].npages); w++)
				atomic_store_explicit(&t->blk[i].bits[w], 0, memory_order_relaxed);
	}
	rs->pass_start_ns = engine_now_ns();
	return 0;
}

void ramsec_put_word(mfd_stream *s, uint64_t offset, unsigned flags)
{
	mfd_stream_put_be64(s, offset | flags);
}

static int flush_marker(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	if (!e->use_multifd)
		return 0;
	int r = multifd_send_sync(e->src.send, errp);

	if (r < 0)
		return r;
	ramsec_put_word(s, 0, RAM_FLAG_MULTIFD_FLUSH);
	return mfd_stream_error(s, errp);
}

static int save_setup(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	mfd_migration *m = e->m;

	/* Here rather than in prepare: save_cleanup, which stops the log, runs
	 * for every section whose save_setup ran. */
	if (m->hooks.dirty_log_start) {
		int r = m->hooks.dirty_log_start(m->hooks_opaque, errp);

		if (r < 0)
			return r;
	}
	e->src.log_started = true;

	ramsec_put_word(s, ramsec_total(m), RAM_FLAG_MEM_SIZE);
	for (unsigned b = 0; b < m->nblocks; b++) {
		mfd_stream_put_str(s, ramsec_blk(e, b)->name);
		mfd_stream_put_be64(s, ramsec_blk(e, b)->size);
		mfd_stream_put_be64(s, ramsec_blk(e, b)->page_size);
	}
	int r = flush_marker(e, s, errp);

	if (r < 0)
		return r;
	ramsec_put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

/* max-bandwidth: a token bucket fed by the clock, drained per page. */
void ramsec_rate_limit_at(struct mfd_engine *e, int64_t rate, uint64_t bytes)
{
	struct ram_source *rs = &e->src.ram;

	if (rate <= 0)
		return;
	for (;;) {
		uint64_t now = engine_now_ns();

		if (rs->tokens_ns == 0) {
			rs->tokens_ns = now;
			rs->tokens = (double)bytes;
		}
		rs->tokens += (double)(now - rs->tokens_ns) * (double)rate / 1e9;
		rs->tokens_ns = now;
		/* At most 100 ms worth of burst, but always room for one page. */
		double cap = MFD_MAX((double)rate / 10, (double)bytes);

		if (rs->tokens > cap)
			rs->tokens = cap;
		if (rs->tokens >= (double)bytes || engine_cancelled(e)) {
			rs->tokens -= (double)bytes;
			return;
		}
		double wait_ns = ((double)bytes - rs->tokens) * 1e9 / (double)rate;
		struct timespec ts = { 0, (long)(wait_ns > 1e8 ? 1e8 : wait_ns) };

		nanosleep(&ts, NULL);
	}
}

static void rate_limit(struct mfd_engine *e, uint64_t bytes)
{
	ramsec_rate_limit_at(e, param_live(&e->m->params, MFD_P_MAX_BANDWIDTH), bytes);
}

/* Send one page: to multifd, or as a main-stream record. */
static int send_page(struct mfd_engine *e, mfd_stream *s, unsigned b, uint64_t page,
		     mfd_error **errp)
{
	const struct mfd_ram_block *bk = ramsec_blk(e, b);
	uint64_t off = page << bk->page_shift;
	const uint8_t *host = bk->host + off;
	int zd = (int)e->m->params.i[MFD_P_ZERO_PAGE_DETECTION];
	unsigned cont = e->src.ram.last_block == (int)b ? RAM_FLAG_CONTINUE : 0;

	if (e->use_multifd && zd != MFD_ZERO_LEGACY)
		return multifd_queue_page(e->src.send, b, off, errp);
	if (zd != MFD_ZERO_NONE && util_page_is_zero(host, bk->page_size)) {
		ramsec_put_word(s, off, RAM_FLAG_ZERO | cont);
		if (!cont)
			mfd_stream_put_str(s, bk->name);
		mfd_stream_put_u8(s, 0);
		e->src.ram.last_block = (int)b;
		STAT_ADD(e, zero_pages, 1);
		return mfd_stream_error(s, errp);
	}
	if (e->use_multifd)
		return multifd_queue_page(e->src.send, b, off, errp);
	ramsec_put_word(s, off, RAM_FLAG_PAGE | cont);
	if (!cont)
		mfd_stream_put_str(s, bk->name);
	mfd_stream_put_buf_ref(s, host, bk->page_size);
	e->src.ram.last_block = (int)b;
	STAT_ADD(e, normal_bytes, bk->page_size);
	/* References stay valid only until the next flush; flush often enough
	 * that the stream never queues too many. */
	if (STAT_ADD(e, normal_pages, 1) % 16 == 15)
		mfd_stream_flush(s);
	return mfd_stream_error(s, errp);
}

/*
 * Walk the bitmap from the cursor.  Returns 1 when the pass reached the end,
 * 0 when the budget ran out first, negative on error.
 */
static int walk(struct mfd_engine *e, mfd_stream *s, uint64_t budget_ns, bool limit,
		mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
	uint64_t t0 = engine_now_ns(), n = 0;

	for (; rs->cur_block < e->m->nblocks; rs->cur_block++, rs->cur_page = 0) {
		unsigned b = rs->cur_block;
		uint64_t *bm = rs->bitmap[b];

		while (rs->cur_page < rs->npages[b]) {
			uint64_t w = rs->cur_page / 64, bits = bm[w] >> (rs->cur_page % 64);

			if (!bits) {
				rs->cur_page = (w + 1) * 64;
				continue;
			}
			rs->cur_page += (uint64_t)__builtin_ctzll(bits);
			if (rs->clear && !e->src.vm_stopped) {
				int r = clear_before_send(e, b, rs->cur_page, errp);

				if (r < 0)
					return r;
			}
			bm[rs->cur_page / 64] &= ~(1ull << (rs->cur_page % 64));
			rs->dirty--;
			rs->dirty_b[b]--;
			if (limit)
				rate_limit(e, ramsec_blk(e, b)->page_size);
			int r = send_page(e, s, b, rs->cur_page, errp);

			if (r < 0)
				return r;
			rs->cur_page++;
			if (budget_ns && (++n % 64) == 0 &&
			    (engine_now_ns() - t0 > budget_ns || engine_cancelled(e)))
				return 0;
		}
	}
	return 1;
}

/* End of a pass: measure, pull the new dirty pages, sync multifd. */
static int end_of_pass(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
	uint64_t now = engine_now_ns(), before = rs->dirty, sent = engine_bytes_sent(e);
	uint64_t bytes_before = ramsec_remaining(e);
	double secs = (double)(now - rs->pass_start_ns) / 1e9;
	int r = dirty_sync(e, errp);

	if (r < 0)
		return r;
	rs->dirtied_last_pass = rs->dirty - before;
	rs->dirtied_bytes_last_pass = ramsec_remaining(e) - bytes_before;
	r = flush_marker(e, s, errp);
	if (r < 0)
		return r;
	if (secs > 0) {
		double bw = (double)(sent - rs->pass_bytes_start) / secs;

		e->src.bandwidth = e->src.bandwidth > 0 ? 0.5 * e->src.bandwidth + 0.5 * bw : bw;
		STAT_SET(e, dirty_rate_pages, (uint64_t)((double)rs->dirtied_last_pass / secs));
		STAT_SET(e, dirty_rate_bytes,
			 (uint64_t)((double)rs->dirtied_bytes_last_pass / secs));
	}
	rs->pass_start_ns = engine_now_ns();
	rs->pass_bytes_start = engine_bytes_sent(e);
	rs->cur_block = 0;
	rs->cur_page = 0;
	rs->pass_done = true;
	STAT_ADD(e, iterations, 1);
	return 0;
}

int ramsec_final_sync(struct mfd_engine *e, mfd_error **errp)
{
	return dirty_sync(e, errp);
}

/* ---- the section's handlers ------------------------------------------------------- */

bool ramsec_has_postcopy(void *opaque)
{
	struct mfd_engine *e = opaque;

	return e->postcopy;
}

/* Before postcopy: every page queued in multifd must be on the destination
 * before any postcopy command is processed there. */
static int save_postcopy_prepare(mfd_stream *s, void *opaque, bool *can_switchover,
				 mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int r;

	*can_switchover = true;
	if ((r = flush_marker(e, s, errp)) < 0)
		return r;
	ramsec_put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

static int save_complete_postcopy(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	ramsec_put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

static int save_iterate(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;

	if (pc_running(e))
		return ramsec_pc_iterate(e, s, errp);

	int r = walk(e, s, RAMSEC_ITERATE_BUDGET_NS, true, errp);

	if (r == 1)
		r = end_of_pass(e, s, errp);
	if (r < 0)
		return r;
	ramsec_put_word(s, 0, RAM_FLAG_EOS);
	r = mfd_stream_error(s, errp);
	return r < 0 ? r : e->src.ram.dirty == 0;
}

static int save_complete(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int r = dirty_sync(e, errp);

	if (r == 0) {
		e->src.ram.cur_block = 0;
		e->src.ram.cur_page = 0;
		r = walk(e, s, 0, false, errp);
	}
	if (r >= 0)
		r = flush_marker(e, s, errp);
	if (r < 0)
		return r;
	ramsec_put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

static void pending(void *opaque, uint64_t *must, uint64_t *can)
{
	struct mfd_engine *e = opaque;

	*must = ramsec_remaining(e);
	*can = 0;
}

static void save_cleanup(void *opaque)
{
	struct mfd_engine *e = opaque;
	mfd_migration *m = e->m;

	if (e->src.log_started && m->hooks.dirty_log_stop)
		m->hooks.dirty_log_stop(m->hooks_opaque);
	e->src.log_started = false;
}

uint64_t ramsec_remaining(struct mfd_engine *e)
{
	uint64_t bytes = 0;

	for (unsigned b = 0; b < e->src.ram.nblocks; b++)
		bytes += __atomic_load_n(&e->src.ram.dirty_b[b], __ATOMIC_RELAXED) * ramsec_blk(e, b)->page_size;
	return bytes;
}

static const mfd_save_handlers ram_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_prepare = prepare,
	.save_setup = save_setup,
	.save_cleanup = save_cleanup,
	.save_live_iterate = save_iterate,
	.save_live_complete_precopy = save_complete,
	.save_live_complete_postcopy = save_complete_postcopy,
	.save_postcopy_prepare = save_postcopy_prepare,
	.has_postcopy = ramsec_has_postcopy,
	.state_pending_estimate = pending,
	.state_pending_exact = pending,
	.load_state = ramsec_load_state,
};

/* The RAM section goes first, as in QEMU: device state loads after RAM. */
int ramsec_register(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;

	/* Without blocks the section still announces an empty table when the
	 * destination builds its VM from it (vm_create). */
	if (m->nblocks == 0 && !(e->incoming ? e->dst.lazy : m->vm_config_len > 0))
		return 0;
	if (section_find(m, "ram", 0))
		return mfd_error_set(errp, MFD_EEXIST,
				     "section 'ram' instance 0 is reserved for the guest RAM blocks");
	int r = mfd_register_live(m, "ram", 0, RAM_SECTION_VERSION, &ram_ops, e, errp);

	if (r < 0)
		return r;
	e->ram_se = eng_section_to_head(m);
	e->dst.recv_last_block = -1;
	return 0;
}

struct mfd_section *eng_section_to_head(mfd_migration *m)
{
	for (struct mfd_section **p = &m->sections; *p; p = &(*p)->next)
		if ((*p)->next == NULL && *p != m->sections) {
			struct mfd_section *se = *p;

			*p = NULL;
			se->next = m->sections;
			m->sections = se;
			break;
		}
	return m->sections;
}

void ramsec_unregister(struct mfd_engine *e)
{
	if (e->ram_se)
		mfd_unregister(e->m, "ram", 0);
	e->ram_se = NULL;
}

void ramsec_free(struct mfd_engine *e)
{
	source_arrays_free(&e->src.ram);
}

/* When the engine itself goes: no migration runs, and the VMM promised no
 * more mfd_ram_mark_dirty() calls (mfd_migration_free()). */
void ramsec_free_trackers(mfd_migration *m)
{
	tracker_free(m->tracker);
	m->tracker = NULL;
	for (unsigned i = 0; i < m->nretired; i++)
		tracker_free(m->retired[i]);
	free(m->retired);
	m->retired = NULL;
	m->nretired = 0;
}
