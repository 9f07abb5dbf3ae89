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

const struct mfd_ram_block *ramsec_blk(struct mfd_engine *e, unsigned b)
{
	return &e->m->blocks[b];
}

/* Pull the guest's writes since the last sync into the send bitmap. */
static int dirty_sync(struct mfd_engine *e, mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
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
				mfd_error_prefix(errp ? *errp : NULL, "ram: block '%s'", ramsec_blk(e, b)->name);
				return errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
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
	STAT_ADD(e, dirty_syncs, 1);
	return 0;
}

static int prepare(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct ram_source *rs = &e->src.ram;
	mfd_migration *m = e->m;

	memset(rs, 0, sizeof(*rs));
	rs->last_block = -1;
	rs->pre_last_block = -1;
	for (unsigned b = 0; b < m->nblocks; b++) {
		uint64_t n = ramsec_blk(e, b)->size >> ramsec_blk(e, b)->page_shift;

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
			t->host[b] = ramsec_blk(e, b)->host;
			t->size[b] = ramsec_blk(e, b)->size;
			t->shift[b] = ramsec_blk(e, b)->page_shift;
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

	for (unsigned b = 0; b < e->m->nblocks; b++)
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
	struct mfd_section *se;

	if (m->nblocks == 0)
		return 0;
	if (section_find(m, "ram", 0))
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
	e->dst.recv_last_block = -1;
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
		free(e->src.ram.bitmap[b]);
		e->src.ram.bitmap[b] = NULL;
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
