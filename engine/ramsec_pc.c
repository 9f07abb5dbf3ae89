/* SPDX-License-Identifier: MIT */
/*
 * The "ram" section on the source after the switch to postcopy: the
 * discards that tell the destination which pages are still to come, the
 * pages it asks for, the background push of the rest, and the received
 * bitmap a recovery resumes from.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "core/savevm.h"
#include "core/stream.h"

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
	const struct mfd_ram_block *bk = ramsec_blk(e, b);
	uint64_t off = page << bk->page_shift;
	const uint8_t *host = bk->host + off;
	unsigned cont = *last_block == (int)b ? RAM_FLAG_CONTINUE : 0;

	if (util_page_is_zero(host, bk->page_size)) {
		ramsec_put_word(s, off, RAM_FLAG_ZERO | cont);
		if (!cont)
			mfd_stream_put_str(s, bk->name);
		mfd_stream_put_u8(s, 0);
		STAT_ADD(e, zero_pages, 1);
	} else {
		ramsec_put_word(s, off, RAM_FLAG_PAGE | cont);
		if (!cont)
			mfd_stream_put_str(s, bk->name);
		/* The VM is stopped: the page does not change under the reference. */
		mfd_stream_put_buf_ref(s, host, bk->page_size);
		STAT_ADD(e, normal_pages, 1);
		STAT_ADD(e, normal_bytes, bk->page_size);
	}
	*last_block = (int)b;
	return mfd_stream_error(s, errp);
}

int ramsec_serve_request(struct mfd_engine *e, mfd_stream *s, int *last_block,
			 const struct pc_req *rq, mfd_error **errp)
{
	const struct mfd_ram_block *bk = ramsec_blk(e, rq->block);
	uint64_t first = rq->offset >> bk->page_shift, n = rq->len >> bk->page_shift;
	int r = 0;

	for (uint64_t p = first; p < first + n && r == 0; p++)
		if (take_page(&e->src.ram, rq->block, p))
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
		if (!e->src.req_count) {
			pthread_mutex_unlock(&e->lock);
			return 0;
		}
		rq = e->src.reqs[e->src.req_head];
		e->src.req_head = (e->src.req_head + 1) % PC_REQ_QUEUE;
		e->src.req_count--;
		pthread_mutex_unlock(&e->lock);
		int r = ramsec_serve_request(e, s, &e->src.ram.last_block, &rq, errp);

		if (r < 0)
			return r;
	}
}

/* Background push: pages in bitmap order from a cursor, requests first. */
int ramsec_pc_iterate(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
	uint64_t t0 = engine_now_ns(), n = 0;
	int64_t rate = param_live(&e->m->params, MFD_P_MAX_POSTCOPY_BANDWIDTH);
	int r;

	while (engine_now_ns() - t0 < RAMSEC_ITERATE_BUDGET_NS / 5 && !engine_cancelled(e)) {
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
						ramsec_rate_limit_at(e, rate, ramsec_blk(e, b)->page_size);
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
	ramsec_put_word(s, 0, RAM_FLAG_EOS);
	if ((r = mfd_stream_error(s, errp)) < 0)
		return r;
	return __atomic_load_n(&rs->dirty, __ATOMIC_RELAXED) == 0;
}

int ramsec_send_discards(struct mfd_engine *e, mfd_stream *s, mfd_error **errp)
{
	struct ram_source *rs = &e->src.ram;
	uint64_t *ranges;
	int r = 0;

	for (unsigned b = 0; b < e->m->nblocks && r == 0; b++) {
		const struct mfd_ram_block *bk = ramsec_blk(e, b);
		size_t max = savevm_discard_ranges_max(strlen(bk->name)), n = 0;

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
				r = savevm_send_postcopy_ram_discard(s, bk->name, ranges, n);
				n = 0;
			}
			p = q;
		}
		if (r == 0 && n)
			r = savevm_send_postcopy_ram_discard(s, bk->name, ranges, n);
		free(ranges);
	}
	return r < 0 ? mfd_stream_error(s, errp) : mfd_stream_error(s, errp);
}

void ramsec_apply_recv_bitmap(struct mfd_engine *e, unsigned b, const uint64_t *recv)
{
	struct ram_source *rs = &e->src.ram;
	uint64_t nw = ramsec_words(rs->npages[b]), count = 0;

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
