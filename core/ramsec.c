/* SPDX-License-Identifier: MIT */
/*
 * The built-in "ram" live section.
 *
 * Source: START announces the blocks; each PART walks the dirty bitmap from
 * where the last one stopped, feeding pages to multifd (or writing them on
 * the main stream when there are no multifd channels) until a 50 ms budget
 * is spent or the pass ends.  At the end of a pass the dirty log is synced
 * into the bitmap and multifd is synced, with a MULTIFD_FLUSH marker on the
 * main stream so the destination can hold its channels at the same point.
 * END (VM stopped) sends everything left.
 *
 * Destination: checks the announced blocks against its own, places
 * main-stream pages, and releases the multifd channels at each marker.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/engine.h"
#include "core/escape.h"
#include "core/savevm.h"
#include "core/stream.h"
#include "core/util.h"

#define ITERATE_BUDGET_NS (50ull * 1000 * 1000)

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

	if (!m || !len)
		return;
	t = __atomic_load_n(&m->tracker, __ATOMIC_ACQUIRE);
	if (!t)
		return;
	/* The tracker's own copy of the block geometry: the block table may be
	 * changed between migrations while a VMM thread is in here. */
	for (unsigned b = 0; b < t->nblocks; b++) {
		if (p < t->host[b] || p >= t->host[b] + t->size[b])
			continue;
		uint64_t first = (uint64_t)(p - t->host[b]) >> t->shift[b];
		uint64_t end = (uint64_t)(p - t->host[b]) + len;

		if (end > t->size[b])
			end = t->size[b];
		uint64_t last = (end - 1) >> t->shift[b];

		for (uint64_t pg = first; pg <= last; pg++)
			atomic_fetch_or_explicit(&t->bits[b][pg / 64], 1ull << (pg % 64),
						 memory_order_relaxed);
		return;
	}
}

static void tracker_free(struct mfd_tracker *t);

/* The tracker of an earlier migration serves again if the blocks are the same. */
static bool tracker_fits(const struct mfd_tracker *t, const mfd_migration *m,
			 const struct ram_source *rs)
{
	if (!t || t->nblocks != m->nblocks)
		return false;
	for (unsigned b = 0; b < m->nblocks; b++)
		if (t->npages[b] != rs->npages[b] || t->host[b] != m->blocks[b].host ||
		    t->shift[b] != m->blocks[b].page_shift)
			return false;
	return true;
}

static void tracker_free(struct mfd_tracker *t)
{
	if (!t)
		return;
	for (unsigned b = 0; b < t->nblocks; b++)
		free((void *)t->bits[b]);
	free(t);
}

/* ---- source ---------------------------------------------------------------------- */

static const struct mfd_ram_block *blk(struct mfd_engine *e, unsigned b)
{
	return &e->m->blocks[b];
}

/* Pull the guest's writes since the last sync into the send bitmap. */
static int dirty_sync(struct mfd_engine *e, mfd_error **errp)
{
	struct ram_source *rs = &e->ram;
	mfd_migration *m = e->m;
	uint64_t before = rs->dirty, added = 0;

	for (unsigned b = 0; b < m->nblocks; b++) {
		uint64_t nw = words(rs->npages[b]);

		if (m->hooks.dirty_sync) {
			uint64_t *tmp = calloc(nw, 8);
			int r;

			if (!tmp)
				return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for a bitmap");
			r = m->hooks.dirty_sync(m->hooks_opaque, b, tmp, rs->npages[b], errp);
			if (r < 0) {
				free(tmp);
				if (errp && !*errp)
					mfd_error_set(errp, MFD_EHANDLER, "dirty_sync hook failed (%d)", r);
				mfd_error_prefix(errp ? *errp : NULL, "ram: block '%s'", blk(e, b)->name);
				return errp && *errp ? mfd_error_normalize(*errp) : MFD_EHANDLER;
			}
			for (uint64_t w = 0; w < nw; w++) {
				uint64_t nb = tmp[w] & ~rs->bitmap[b][w];

				if (w == nw - 1 && rs->npages[b] % 64)
					nb &= (1ull << (rs->npages[b] % 64)) - 1;
				rs->bitmap[b][w] |= nb;
				added += (uint64_t)__builtin_popcountll(nb);
				rs->dirty_b[b] += (uint64_t)__builtin_popcountll(nb);
			}
			free(tmp);
		} else if (e->m->tracker) {
			for (uint64_t w = 0; w < nw; w++) {
				uint64_t bits = atomic_exchange_explicit(&e->m->tracker->bits[b][w], 0,
									 memory_order_relaxed);
				uint64_t nb = bits & ~rs->bitmap[b][w];

				rs->bitmap[b][w] |= nb;
				added += (uint64_t)__builtin_popcountll(nb);
				rs->dirty_b[b] += (uint64_t)__builtin_popcountll(nb);
			}
		}
	}
	rs->dirty = before + added;
	e->dirty_syncs++;
	return 0;
}

static int prepare(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct ram_source *rs = &e->ram;
	mfd_migration *m = e->m;

	memset(rs, 0, sizeof(*rs));
	rs->last_block = -1;
	rs->pre_last_block = -1;
	for (unsigned b = 0; b < m->nblocks; b++) {
		uint64_t n = blk(e, b)->size >> blk(e, b)->page_shift;

		rs->npages[b] = n;
		rs->bitmap[b] = malloc(words(n) * 8);
		if (!rs->bitmap[b])
			return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for a bitmap");
		/* The first pass sends every page. */
		memset(rs->bitmap[b], 0xff, words(n) * 8);
		if (n % 64)
			rs->bitmap[b][words(n) - 1] = (1ull << (n % 64)) - 1;
		rs->dirty += n;
		rs->dirty_b[b] = n;
	}
	if (!m->hooks.dirty_sync && !tracker_fits(e->m->tracker, m, rs)) {
		struct mfd_tracker *t = calloc(1, sizeof(*t));

		if (!t)
			return mfd_error_set(errp, MFD_ENOMEM, "ram: out of memory for the tracker");
		t->nblocks = m->nblocks;
		for (unsigned b = 0; b < m->nblocks; b++) {
			t->npages[b] = rs->npages[b];
			t->host[b] = blk(e, b)->host;
			t->size[b] = blk(e, b)->size;
			t->shift[b] = blk(e, b)->page_shift;
			t->bits[b] = calloc(words(rs->npages[b]), 8);
			if (!t->bits[b]) {
				t->nblocks = b;
				tracker_free(t);
				return mfd_error_set(errp, MFD_ENOMEM,
						     "ram: out of memory for the tracker");
			}
		}
		/* A VMM thread may still be inside mfd_ram_mark_dirty() with the old
		 * one: keep it until the engine goes. */
		if (e->m->tracker && e->m->nretired < 8)
			e->m->retired[e->m->nretired++] = e->m->tracker;
		__atomic_store_n(&e->m->tracker, t, __ATOMIC_RELEASE);
	} else if (e->m->tracker) {
		/* Writes before this migration began are covered by the full first pass. */
		for (unsigned b = 0; b < e->m->tracker->nblocks; b++)
			for (uint64_t w = 0; w < words(e->m->tracker->npages[b]); w++)
				atomic_store_explicit(&e->m->tracker->bits[b][w], 0, memory_order_relaxed);
	}
	rs->pass_start_ns = engine_now_ns();
	return 0;
}

static void put_word(mfd_stream *s, uint64_t offset, unsigned flags)
{
	mfd_stream_put_be64(s, offset | flags);
}

static int flush_marker(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	if (!e->use_multifd)
		return 0;
	int r = mfd_multifd_send_sync(e->send, errp);

	if (r < 0)
		return r;
	put_word(s, 0, RAM_FLAG_MULTIFD_FLUSH);
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
	e->log_started = true;

	put_word(s, ramsec_total(m), RAM_FLAG_MEM_SIZE);
	for (unsigned b = 0; b < m->nblocks; b++) {
		mfd_stream_put_str(s, blk(e, b)->name);
		mfd_stream_put_be64(s, blk(e, b)->size);
		mfd_stream_put_be64(s, blk(e, b)->page_size);
	}
	int r = flush_marker(e, s, errp);

	if (r < 0)
		return r;
	put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

/* max-bandwidth: a token bucket fed by the clock, drained per page. */
static void rate_limit_at(struct mfd_engine *e, int64_t rate, uint64_t bytes)
{
	struct ram_source *rs = &e->ram;

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
	rate_limit_at(e, mfd_param_live(&e->m->params, MFD_P_MAX_BANDWIDTH), bytes);
}

/* Send one page: to multifd, or as a main-stream record. */
static int send_page(struct mfd_engine *e, mfd_stream *s, unsigned b, uint64_t page,
		     mfd_error **errp)
{
	const struct mfd_ram_block *bk = blk(e, b);
	uint64_t off = page << bk->page_shift;
	const uint8_t *host = bk->host + off;
	int zd = (int)e->m->params.i[MFD_P_ZERO_PAGE_DETECTION];
	unsigned cont = e->ram.last_block == (int)b ? RAM_FLAG_CONTINUE : 0;

	if (e->use_multifd && zd != MFD_ZERO_LEGACY)
		return mfd_multifd_queue_page(e->send, b, off, errp);
	if (zd != MFD_ZERO_NONE && mfd_page_is_zero(host, bk->page_size)) {
		put_word(s, off, RAM_FLAG_ZERO | cont);
		if (!cont)
			mfd_stream_put_str(s, bk->name);
		mfd_stream_put_u8(s, 0);
		e->ram.last_block = (int)b;
		e->ram.zero_pages++;
		return mfd_stream_error(s, errp);
	}
	if (e->use_multifd)
		return mfd_multifd_queue_page(e->send, b, off, errp);
	put_word(s, off, RAM_FLAG_PAGE | cont);
	if (!cont)
		mfd_stream_put_str(s, bk->name);
	mfd_stream_put_buf_ref(s, host, bk->page_size);
	e->ram.last_block = (int)b;
	e->ram.normal_pages++;
	e->ram.normal_bytes += bk->page_size;
	/* References stay valid only until the next flush; flush often enough
	 * that the stream never queues too many. */
	if (e->ram.normal_pages % 16 == 0)
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
	struct ram_source *rs = &e->ram;
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
			bm[rs->cur_page / 64] &= ~(1ull << (rs->cur_page % 64));
			rs->dirty--;
			rs->dirty_b[b]--;
			if (limit)
				rate_limit(e, blk(e, b)->page_size);
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
	struct ram_source *rs = &e->ram;
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

		e->bandwidth = e->bandwidth > 0 ? 0.5 * e->bandwidth + 0.5 * bw : bw;
		e->dirty_rate_pages = (uint64_t)((double)rs->dirtied_last_pass / secs);
		e->dirty_rate_bytes = (uint64_t)((double)rs->dirtied_bytes_last_pass / secs);
	}
	rs->pass_start_ns = engine_now_ns();
	rs->pass_bytes_start = engine_bytes_sent(e);
	rs->cur_block = 0;
	rs->cur_page = 0;
	rs->pass_done = true;
	e->iterations++;
	return 0;
}

/* ---- source, postcopy ------------------------------------------------------------- */

/*
 * After the switch the preempt thread (serving requests from the preempt
 * channel) and the migration thread (background push) both take pages out
 * of the send bitmap: a page is sent by whoever clears its bit.
 */
static bool take_page(struct ram_source *rs, unsigned b, uint64_t page)
{
	uint64_t m = 1ull << (page % 64);

	if (!(__atomic_fetch_and(&rs->bitmap[b][page / 64], ~m, __ATOMIC_ACQ_REL) & m))
		return false;
	__atomic_fetch_sub(&rs->dirty, 1, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&rs->dirty_b[b], 1, __ATOMIC_RELAXED);
	return true;
}

/* One RAM record on @s (main stream inside a PART, or the preempt stream). */
static int pc_send_page(struct mfd_engine *e, mfd_stream *s, int *last_block, unsigned b,
			uint64_t page, mfd_error **errp)
{
	const struct mfd_ram_block *bk = blk(e, b);
	uint64_t off = page << bk->page_shift;
	const uint8_t *host = bk->host + off;
	unsigned cont = *last_block == (int)b ? RAM_FLAG_CONTINUE : 0;

	if (mfd_page_is_zero(host, bk->page_size)) {
		put_word(s, off, RAM_FLAG_ZERO | cont);
		if (!cont)
			mfd_stream_put_str(s, bk->name);
		mfd_stream_put_u8(s, 0);
		__atomic_fetch_add(&e->ram.zero_pages, 1, __ATOMIC_RELAXED);
	} else {
		put_word(s, off, RAM_FLAG_PAGE | cont);
		if (!cont)
			mfd_stream_put_str(s, bk->name);
		/* The VM is stopped: the page does not change under the reference. */
		mfd_stream_put_buf_ref(s, host, bk->page_size);
		__atomic_fetch_add(&e->ram.normal_pages, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&e->ram.normal_bytes, bk->page_size, __ATOMIC_RELAXED);
	}
	*last_block = (int)b;
	return mfd_stream_error(s, errp);
}

int ramsec_serve_request(struct mfd_engine *e, mfd_stream *s, int *last_block,
			 const struct pc_req *rq, mfd_error **errp)
{
	const struct mfd_ram_block *bk = blk(e, rq->block);
	uint64_t first = rq->offset >> bk->page_shift, n = rq->len >> bk->page_shift;
	int r = 0;

	for (uint64_t p = first; p < first + n && r == 0; p++)
		if (take_page(&e->ram, rq->block, p))
			r = pc_send_page(e, s, last_block, rq->block, p, errp);
	/* Urgent: out now, not when a buffer fills. */
	if (r == 0 && mfd_stream_flush(s) < 0)
		r = mfd_stream_error(s, errp);
	return r;
}

/* Requests queued by the return-path thread (no preempt channel). */
static int serve_queue(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	for (;;) {
		struct pc_req rq;

		pthread_mutex_lock(&e->lock);
		if (!e->req_count) {
			pthread_mutex_unlock(&e->lock);
			return 0;
		}
		rq = e->reqs[e->req_head];
		e->req_head = (e->req_head + 1) % PC_REQ_QUEUE;
		e->req_count--;
		pthread_mutex_unlock(&e->lock);
		int r = ramsec_serve_request(e, s, &e->ram.last_block, &rq, errp);

		if (r < 0)
			return r;
	}
}

/* Background push: pages in bitmap order from a cursor, requests first. */
static int pc_iterate(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	struct ram_source *rs = &e->ram;
	uint64_t t0 = engine_now_ns(), n = 0;
	int64_t rate = mfd_param_live(&e->m->params, MFD_P_MAX_POSTCOPY_BANDWIDTH);
	int r;

	while (engine_now_ns() - t0 < ITERATE_BUDGET_NS / 5 && !engine_cancelled(e)) {
		if ((r = serve_queue(e, s, errp)) < 0)
			return r;
		if (__atomic_load_n(&rs->dirty, __ATOMIC_RELAXED) == 0)
			break;
		/* Next set bit from the cursor, wrapping once over all blocks. */
		bool found = false;

		for (unsigned tries = 0; tries <= e->m->nblocks && !found; tries++) {
			unsigned b = (unsigned)rs->pc_cursor_block;

			if (b >= e->m->nblocks) {
				rs->pc_cursor_block = 0;
				rs->pc_cursor_page = 0;
				continue;
			}
			while (rs->pc_cursor_page < rs->npages[b]) {
				uint64_t p = rs->pc_cursor_page, w = p / 64;
				uint64_t bits = __atomic_load_n(&rs->bitmap[b][w], __ATOMIC_ACQUIRE) >>
						(p % 64);

				if (!bits) {
					rs->pc_cursor_page = (w + 1) * 64;
					continue;
				}
				p += (uint64_t)__builtin_ctzll(bits);
				rs->pc_cursor_page = p + 1;
				if (take_page(rs, b, p)) {
					found = true;
					if (rate > 0)
						rate_limit_at(e, rate, blk(e, b)->page_size);
					if ((r = pc_send_page(e, s, &rs->last_block, b, p, errp)) < 0)
						return r;
					break;
				}
			}
			if (!found) {
				rs->pc_cursor_block++;
				rs->pc_cursor_page = 0;
			}
		}
		if (!found)
			break;
		if (++n % 16 == 0 && mfd_stream_flush(s) < 0)
			return mfd_stream_error(s, errp);
	}
	put_word(s, 0, RAM_FLAG_EOS);
	if ((r = mfd_stream_error(s, errp)) < 0)
		return r;
	return __atomic_load_n(&rs->dirty, __ATOMIC_RELAXED) == 0;
}

int ramsec_final_sync(struct mfd_engine *e, mfd_error **errp)
{
	return dirty_sync(e, errp);
}

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
	put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

static int save_complete_postcopy(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	put_word(s, 0, RAM_FLAG_EOS);
	return mfd_stream_error(s, errp);
}

int ramsec_send_discards(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	struct ram_source *rs = &e->ram;
	uint64_t *ranges;
	int r = 0;

	for (unsigned b = 0; b < e->m->nblocks && r == 0; b++) {
		const struct mfd_ram_block *bk = blk(e, b);
		size_t max = mfd_savevm_discard_ranges_max(strlen(bk->name)), n = 0;

		ranges = malloc(max * 2 * sizeof(*ranges));
		if (!ranges)
			return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory");
		for (uint64_t p = 0; p < rs->npages[b] && r == 0;) {
			uint64_t w = p / 64, bits = rs->bitmap[b][w] >> (p % 64);

			if (!bits) {
				p = (w + 1) * 64;
				continue;
			}
			p += (uint64_t)__builtin_ctzll(bits);
			uint64_t q = p + 1;

			while (q < rs->npages[b] && (rs->bitmap[b][q / 64] & (1ull << (q % 64))))
				q++;
			ranges[2 * n] = p << bk->page_shift;
			ranges[2 * n + 1] = (q - p) << bk->page_shift;
			if (++n == max) {
				r = mfd_savevm_send_postcopy_ram_discard(s, bk->name, ranges, n);
				n = 0;
			}
			p = q;
		}
		if (r == 0 && n)
			r = mfd_savevm_send_postcopy_ram_discard(s, bk->name, ranges, n);
		free(ranges);
	}
	return r < 0 ? mfd_stream_error(s, errp) : mfd_stream_error(s, errp);
}

void ramsec_apply_recv_bitmap(struct mfd_engine *e, unsigned b, const uint64_t *recv)
{
	struct ram_source *rs = &e->ram;
	uint64_t nw = words(rs->npages[b]), count = 0;

	for (uint64_t w = 0; w < nw; w++) {
		uint64_t v = ~recv[w];

		if (w == nw - 1 && rs->npages[b] % 64)
			v &= (1ull << (rs->npages[b] % 64)) - 1;
		__atomic_store_n(&rs->bitmap[b][w], v, __ATOMIC_RELEASE);
		count += (uint64_t)__builtin_popcountll(v);
	}
	uint64_t old = __atomic_exchange_n(&rs->dirty_b[b], count, __ATOMIC_RELAXED);

	__atomic_fetch_add(&rs->dirty, count - old, __ATOMIC_RELAXED);
}

static int save_iterate(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;

	if (atomic_load(&e->in_postcopy))
		return pc_iterate(e, s, errp);

	int r = walk(e, s, ITERATE_BUDGET_NS, true, errp);

	if (r == 1)
		r = end_of_pass(e, s, errp);
	if (r < 0)
		return r;
	put_word(s, 0, RAM_FLAG_EOS);
	r = mfd_stream_error(s, errp);
	return r < 0 ? r : e->ram.dirty == 0;
}

static int save_complete(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int r = dirty_sync(e, errp);

	if (r == 0) {
		e->ram.cur_block = 0;
		e->ram.cur_page = 0;
		r = walk(e, s, 0, false, errp);
	}
	if (r >= 0)
		r = flush_marker(e, s, errp);
	if (r < 0)
		return r;
	put_word(s, 0, RAM_FLAG_EOS);
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

	if (e->log_started && m->hooks.dirty_log_stop)
		m->hooks.dirty_log_stop(m->hooks_opaque);
	e->log_started = false;
}

uint64_t ramsec_remaining(struct mfd_engine *e)
{
	uint64_t bytes = 0;

	for (unsigned b = 0; b < e->m->nblocks; b++)
		bytes += __atomic_load_n(&e->ram.dirty_b[b], __ATOMIC_RELAXED) * blk(e, b)->page_size;
	return bytes;
}

/* ---- destination ------------------------------------------------------------------ */

static int load_blocks(struct mfd_engine *e, mfd_stream *s, uint64_t total, mfd_error **errp)
{
	mfd_migration *m = e->m;
	uint64_t sum = 0;
	unsigned b = 0;

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
	e->ram_started = true;
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
	int b = record_block(e, s, word, flags, &e->recv_last_block, errp), r;

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
	uint8_t *buf;		/* e->pc_page (PC_PAGE_MAX bytes) */
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
		return ramsec_load_pc_record(e, s, word, &e->recv_last_block, run->buf, errp);
	}
	/* A named record starts another block (and its name may not be here yet). */
	if (!(flags & RAM_FLAG_CONTINUE) && (r = run_flush(e, run, errp)) < 0)
		return r;
	if ((b = record_block(e, s, word, flags, &e->recv_last_block, errp)) < 0)
		return b;
	uint64_t ps = e->m->blocks[b].page_size;
	uint32_t cap = (uint32_t)MFD_MAX(1, MFD_MIN(PC_RUN_BYTES, PC_PAGE_MAX) / ps);

	if (run->n && (run->block != (unsigned)b || off != run->offset + run->n * ps ||
		       run->n == cap || mfd_stream_buffered(s) < ps) &&
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

static int load_state(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct pc_run run = { .buf = e->pc_page };

	if (version_id != RAM_SECTION_VERSION)
		return mfd_error_set(errp, MFD_EBADVERSION, "ram: section version %u, expected %u",
				     version_id, RAM_SECTION_VERSION);
	for (;;) {
		uint64_t word;
		unsigned flags;
		int r = 0;

		if (run.n && mfd_stream_buffered(s) < sizeof(word))
			r = run_flush(e, &run, errp);
		if (r < 0 || (r = mfd_stream_get_be64(s, &word)) < 0)
			return r;
		flags = (unsigned)(word & RAM_FLAGS_MASK);
		if (flags == RAM_FLAG_EOS)
			return run_flush(e, &run, errp);
		if (flags == RAM_FLAG_MEM_SIZE) {
			if (e->ram_started)
				return mfd_error_set(errp, MFD_EPROTO, "ram: second block list");
			r = load_blocks(e, s, word & ~(uint64_t)RAM_FLAGS_MASK, errp);
		} else if (!e->ram_started) {
			return mfd_error_set(errp, MFD_EPROTO,
					     "ram: record 0x%x before the block list", flags);
		} else if (e->pc_listening) {
			r = load_pc_main(e, s, word, &run, errp);
		} else if (flags == RAM_FLAG_MULTIFD_FLUSH) {
			if (!e->recv)
				return mfd_error_set(errp, MFD_EPROTO,
						     "ram: multifd flush marker without multifd channels");
			r = mfd_multifd_recv_sync(e->recv, errp);
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

static const mfd_save_handlers ram_ops = {
	.abi_version = MFD_SAVE_HANDLERS_ABI,
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
	.load_state = load_state,
};

/* The RAM section goes first, as in QEMU: device state loads after RAM. */
int ramsec_register(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	struct mfd_section *se;

	if (m->nblocks == 0)
		return 0;
	if (mfd_section_find(m, "ram", 0))
		return mfd_error_set(errp, MFD_EEXIST,
				     "section 'ram' instance 0 is reserved for the guest RAM blocks");
	int r = mfd_register_live(m, "ram", 0, RAM_SECTION_VERSION, &ram_ops, e, errp);

	if (r < 0)
		return r;
	/* Move it from the tail to the head. */
	for (struct mfd_section **p = &m->sections; *p; p = &(*p)->next)
		if ((*p)->next == NULL && *p != m->sections) {
			se = *p;
			*p = NULL;
			se->next = m->sections;
			m->sections = se;
			break;
		}
	e->ram_se = m->sections;
	e->recv_last_block = -1;
	return 0;
}

void ramsec_unregister(struct mfd_engine *e)
{
	if (e->ram_se)
		mfd_unregister(e->m, "ram", 0);
	e->ram_se = NULL;
}

void ramsec_free(struct mfd_engine *e)
{
	for (unsigned b = 0; b < MFD_RAM_BLOCKS_MAX; b++) {
		free(e->ram.bitmap[b]);
		e->ram.bitmap[b] = NULL;
	}
}

/* When the engine itself goes: no migration runs, and the VMM promised no
 * more mfd_ram_mark_dirty() calls (mfd_migration_free()). */
void ramsec_free_trackers(mfd_migration *m)
{
	tracker_free(m->tracker);
	m->tracker = NULL;
	for (unsigned i = 0; i < m->nretired; i++)
		tracker_free(m->retired[i]);
	m->nretired = 0;
}
