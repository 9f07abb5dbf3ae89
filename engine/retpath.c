/* SPDX-License-Identifier: MIT */
/*
 * The return path: destination-to-source messages (one writer for all), and the
 * source's reader thread with its message table (length and legal states of each).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

/*
 * A channel error that a stream latched names only the transport
 * ("tcp:host:port: ..."): when @s failed, say which channel it was.  Refusals
 * already start with the label, so they are left alone.
 */
void eng_name_stream(mfd_stream *s, const char *label, mfd_error **errp)
{
	if (s && errp && *errp && mfd_stream_error(s, NULL) < 0 &&
	    !strstr(mfd_error_message(*errp), label))
		mfd_error_prefix(*errp, "%s", label);
}

/* The phase a return-path failure interrupted, for its message. */
static const char *phase_name(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	enum mfd_state st = e->state;

	pthread_mutex_unlock(&e->lock);
	switch (st) {
	case MFD_STATE_SETUP:
		return "setup";
	case MFD_STATE_ACTIVE:
		return "iteration";
	case MFD_STATE_DEVICE:
		return "switchover";
	case MFD_STATE_POSTCOPY_ACTIVE:
	case MFD_STATE_POSTCOPY_PAUSED:
	case MFD_STATE_POSTCOPY_RECOVER:
		return "postcopy";
	default:
		return mfd_state_name(st);
	}
}

/*
 * Destination: one message (be16 type, be16 length, payload, then @extra
 * pieces outside the length) to the source: on the main channel's return
 * path, or on the preempt channel.  The writer's lock (out_lock, pre_lock)
 * orders writers and keeps the channel alive: the channels are released only
 * under it (eng_release_channels, eng_drop_connection).
 */
static int msg_send(struct mfd_engine *e, bool preempt, uint16_t type, const void *payload,
		    uint16_t len, const struct iovec *extra, int nextra, mfd_error **errp)
{
	pthread_mutex_t *wlock = preempt ? &e->pre_lock : &e->out_lock;
	uint8_t hdr[4];
	struct iovec iov[2 + 4];
	int n = 1;
	mfd_channel *ch;
	int r;

	if (nextra > 4)
		return mfd_error_set(errp, MFD_EINVAL, "return path: too many pieces");
	store_be16(hdr, type);
	store_be16(hdr + 2, len);
	iov[0] = (struct iovec){ hdr, sizeof(hdr) };
	if (len)
		iov[n++] = (struct iovec){ (void *)payload, len };
	for (int i = 0; i < nextra; i++)
		iov[n++] = extra[i];
	pthread_mutex_lock(wlock);
	pthread_mutex_lock(&e->lock);
	ch = preempt ? e->pre_ch : e->main_ch;
	pthread_mutex_unlock(&e->lock);
	r = ch ? channel_writev_full(ch, iov, n, errp)
	       : mfd_error_set(errp, MFD_ESTATE, preempt ? "preempt channel: not connected"
							 : "return path: no main channel");
	pthread_mutex_unlock(wlock);
	return r;
}

int eng_rp_send(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		   mfd_error **errp)
{
	return msg_send(e, false, type, payload, len, NULL, 0, errp);
}

int engine_rp_send(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		   mfd_error **errp)
{
	return eng_rp_send(e, type, payload, len, errp);
}

int engine_rp_send_raw(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		       const struct iovec *extra, int nextra, mfd_error **errp)
{
	return msg_send(e, false, type, payload, len, extra, nextra, errp);
}

/*
 * Destination: one page request.  With postcopy-preempt it goes on the
 * preempt channel (whose other direction brings the page back), else on the
 * main channel's return path.
 */
int engine_send_page_request(struct mfd_engine *e, const uint8_t msg[RP_REQ_PAGES_LEN],
			     mfd_error **errp)
{
	return msg_send(e, e->preempt, RP_REQ_PAGES, msg, RP_REQ_PAGES_LEN, NULL, 0, errp);
}

int eng_rp_send_result(struct mfd_engine *e, int code, const char *msg, mfd_error **errp)
{
	uint8_t buf[4 + RP_MSG_MAX];
	size_t len = msg ? strlen(msg) : 0;

	if (!e->use_rp)
		return 0;
	if (len > RP_MSG_MAX)
		len = RP_MSG_MAX;	/* the full message stays in the destination's error */
	store_be32(buf, (uint32_t)code);
	if (len)
		memcpy(buf + 4, msg, len);
	return eng_rp_send(e, RP_RESULT, buf, (uint16_t)(4 + len), errp);
}

/* An error that a reconnection can cure: the connection broke or stalled. */
bool eng_network_error(struct mfd_engine *e, int code)
{
	if (atomic_load(&e->user_cancel))
		return false;
	return code == MFD_EIO || code == MFD_EEOF || code == MFD_ETIMEDOUT || code == MFD_ECANCELED;
}

/* Source: check a page request from the destination (which we do not trust);
 * @where names the channel it came on. */
int eng_page_request_parse(struct mfd_engine *e, const char *where, const uint8_t *buf,
			      uint16_t len, struct pc_req *rq, mfd_error **errp)
{
	mfd_migration *m = e->m;

	if (len != RP_REQ_PAGES_LEN)
		return mfd_error_set(errp, MFD_EPROTO, "%s: page request of %u bytes, "
				     "expected %u", where, len, RP_REQ_PAGES_LEN);
	rq->block = load_be16(buf);
	rq->len = load_be32(buf + 4);
	rq->offset = load_be64(buf + 8);
	if (!e->postcopy || !pc_running(e))
		return mfd_error_set(errp, MFD_EPROTO, "%s: page request outside postcopy", where);
	if (rq->block >= m->nblocks)
		return mfd_error_set(errp, MFD_EPROTO, "%s: page request for block %u of %u",
				     where, rq->block, m->nblocks);
	const struct mfd_ram_block *bk = &m->blocks[rq->block];

	if (load_be16(buf + 2) || rq->len == 0 || rq->len > RP_REQ_MAX_BYTES ||
	    ((rq->offset | rq->len) & (bk->page_size - 1)) || rq->offset >= bk->size ||
	    rq->len > bk->size - rq->offset)
		return mfd_error_set(errp, MFD_EPROTO,
				     "%s: page request 0x%llx+%u is not whole pages of block "
				     "'%s' (%llu bytes)", where, (unsigned long long)rq->offset,
				     rq->len, bk->name, (unsigned long long)bk->size);
	pthread_mutex_lock(&e->lock);
	STAT_ADD(e, pc_requests, 1);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Source: a page request on the main channel's return path (no preempt
 * channel): queued for the migration thread, which sends it before the next
 * pushed page. */
static int rp_page_request(struct mfd_engine *e, const uint8_t *buf, uint16_t len,
			   mfd_error **errp)
{
	struct pc_req rq;
	int r;

	if (e->preempt)
		return mfd_error_set(errp, MFD_EPROTO, "return path: page request on the main "
				     "channel; with postcopy-preempt requests travel on the preempt "
				     "channel");
	if ((r = eng_page_request_parse(e, "return path", buf, len, &rq, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	if (e->src.req_count < PC_REQ_QUEUE) {
		e->src.reqs[(e->src.req_head + e->src.req_count++) % PC_REQ_QUEUE] = rq;
	} else {
		/* The background push delivers it anyway, only later. */
		e->src.pc_requests_dropped++;
	}
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Source, recovery: the destination's received-pages bitmap of one block. */
static int rp_recv_bitmap(struct mfd_engine *e, mfd_stream *s, const uint8_t *buf, uint16_t len,
			  mfd_error **errp)
{
	mfd_migration *m = e->m;
	unsigned b;
	uint64_t bytes, end, *bm;
	int r;

	(void)len;	/* RP_RECV_BITMAP_LEN, and in recovery: rp_check() saw to both */
	b = load_be16(buf);
	bytes = load_be64(buf + 8);
	if (b >= m->nblocks)
		return mfd_error_set(errp, MFD_EPROTO, "return path: RECV_BITMAP for block %u "
				     "(%u blocks)", b, m->nblocks);
	pthread_mutex_lock(&e->lock);
	bool again = e->src.resume != RS_HELLO || (e->src.bitmaps_from[b / 64] >> (b % 64) & 1);

	pthread_mutex_unlock(&e->lock);
	if (again)
		return mfd_error_set(errp, MFD_EPROTO, "return path: a second RECV_BITMAP for "
				     "block '%s'", m->blocks[b].name);
	uint64_t want = ramsec_words(e->src.ram.npages[b]) * 8;

	if (bytes != want)
		return mfd_error_set(errp, MFD_EPROTO, "return path: RECV_BITMAP of block '%s' has "
				     "%llu bytes, expected %llu", m->blocks[b].name,
				     (unsigned long long)bytes, (unsigned long long)want);
	bm = malloc(want);
	if (!bm)
		return mfd_error_set(errp, MFD_ENOMEM, "recovery: out of memory for a bitmap");
	if ((r = mfd_stream_get_buf(s, bm, want)) < 0 || (r = mfd_stream_get_be64(s, &end)) < 0) {
		free(bm);
		return mfd_stream_error(s, errp);
	}
	if (end != RECV_BITMAP_END) {
		free(bm);
		return mfd_error_set(errp, MFD_EPROTO, "return path: RECV_BITMAP of block '%s' ends "
				     "with 0x%016llx, expected 0x%016llx", m->blocks[b].name,
				     (unsigned long long)end, (unsigned long long)RECV_BITMAP_END);
	}
	for (uint64_t w = 0; w < want / 8; w++) {
		const uint8_t *p = (const uint8_t *)&bm[w];
		uint64_t v = 0;

		for (int i = 7; i >= 0; i--)
			v = v << 8 | p[i];
		bm[w] = v;
	}
	ramsec_apply_recv_bitmap(e, b, bm);
	free(bm);
	pthread_mutex_lock(&e->lock);
	e->src.bitmaps_from[b / 64] |= 1ull << (b % 64);
	if (++e->src.bitmaps_got == m->nblocks)
		e->src.resume = RS_BITMAPS;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Source states (enum mfd_state) as a bitmask, for rp_specs[].phases. */
#define RP_IN(st) (1u << (st))

#define RP_IN_ANY UINT32_MAX

/*
 * What the source accepts on the return path, by message type: the payload's
 * length (fixed when min == max) and the source states that expect the
 * message.  rp_check() applies it to every message before its handler runs;
 * a type without a name here is unknown.
 */
static const struct rp_spec {
	const char *name;	/* as errors give it */
	uint16_t min, max;	/* payload bytes */
	uint32_t phases;	/* RP_IN() of each state in which it is legal */
	const char *legal;	/* those states, in words */
} rp_specs[] = {
	/* PING 1 at setup, PING 3/4 with the postcopy package: any time. */
	[RP_PONG] = { "PONG", 4, 4, RP_IN_ANY, "any state" },
	/* A failure may come in any state; "loaded" (code 0) only after EOF went
	 * out, which the commit protocol says, not the public state: the
	 * handler checks it (enum src_commit). */
	[RP_RESULT] = { "RESULT", 4, 4 + RP_MSG_MAX, RP_IN_ANY, "any state" },
	/* Sent at OPEN_RETURN_PATH or when the VMM approves, which may be late:
	 * any state; it moves the commit protocol only from open. */
	[RP_SWITCHOVER_ACK] = { "SWITCHOVER_ACK", 0, 0, RP_IN_ANY, "any state" },
	/* From the postcopy package (sent in device) on, and again after a
	 * recovery's RESUME_ACK; the handler also wants postcopy running. */
	[RP_REQ_PAGES] = { "page request", RP_REQ_PAGES_LEN, RP_REQ_PAGES_LEN,
			   RP_IN(MFD_STATE_DEVICE) | RP_IN(MFD_STATE_POSTCOPY_ACTIVE) |
			   RP_IN(MFD_STATE_POSTCOPY_RECOVER), "postcopy" },
	/* Recovery only: it rewrites the map of pages still to push. */
	[RP_RECV_BITMAP] = { "RECV_BITMAP", RP_RECV_BITMAP_LEN, RP_RECV_BITMAP_LEN,
			     RP_IN(MFD_STATE_POSTCOPY_RECOVER), "postcopy recovery" },
	[RP_RESUME_ACK] = { "RESUME_ACK", 4, 4, RP_IN(MFD_STATE_POSTCOPY_RECOVER),
			    "postcopy recovery" },
};

/* Source: is a return-path message of @type and @len legal now? */
static int rp_check(struct mfd_engine *e, uint16_t type, uint16_t len, mfd_error **errp)
{
	const struct rp_spec *sp = type < MFD_ARRAY_SIZE(rp_specs) ? &rp_specs[type] : NULL;
	enum mfd_state st = (enum mfd_state)atomic_load(&e->state_pub);

	if (!sp || !sp->name)
		return mfd_error_set(errp, MFD_EPROTO, "return path: unknown message type %u "
				     "(%u bytes)", type, len);
	if (len < sp->min || len > sp->max)
		return sp->min == sp->max
		       ? mfd_error_set(errp, MFD_EPROTO, "return path: %s of %u bytes, expected %u",
				       sp->name, len, sp->min)
		       : mfd_error_set(errp, MFD_EPROTO, "return path: %s of %u bytes, expected at "
				       "least %u and at most %u", sp->name, len, sp->min, sp->max);
	if ((unsigned)st >= 32 || !(sp->phases & RP_IN(st)))
		return mfd_error_set(errp, MFD_EPROTO, "return path: %s outside %s (the source is "
				     "%s)", sp->name, sp->legal, mfd_state_name(st));
	return 0;
}

/* Source: read what the destination says until its RESULT. */
void *eng_rp_thread(void *arg)
{
	struct mfd_engine *e = arg;
	mfd_stream *s = NULL;
	mfd_error *err = NULL;
	bool theirs = false;	/* err is the destination's RESULT */
	int r;

	r = mfd_stream_new(e->main_ch, MFD_STREAM_READ, &s, &err);

	if (r == 0)
		stream_set_label(s, "return path");
	while (r == 0) {
		uint16_t type, len;
		uint8_t buf[4 + RP_MSG_MAX + 1];

		if ((r = mfd_stream_get_be16(s, &type)) < 0 || (r = mfd_stream_get_be16(s, &len)) < 0)
			break;
		if (len > sizeof(buf) - 1) {
			r = mfd_error_set(&err, MFD_EPROTO, "return path: message of %u bytes", len);
			break;
		}
		if ((r = mfd_stream_get_buf(s, buf, len)) < 0 || (r = rp_check(e, type, len, &err)) < 0)
			break;
		if (type == RP_PONG) {
			/* PING 4 follows the postcopy package: the destination runs the guest. */
			if (load_be32(buf) == 4 && pc_running(e)) {
				pthread_mutex_lock(&e->lock);
				if (!e->downtime_ns)
					e->downtime_ns = engine_now_ns() - e->t_stop_ns;
				pthread_mutex_unlock(&e->lock);
			}
			continue;
		} else if (type == RP_SWITCHOVER_ACK) {
			pthread_mutex_lock(&e->lock);
			commit_move(e, SC_APPROVED);
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			continue;
		} else if (type == RP_REQ_PAGES) {
			if ((r = rp_page_request(e, buf, len, &err)) < 0)
				break;
			continue;
		} else if (type == RP_RECV_BITMAP) {
			if ((r = rp_recv_bitmap(e, s, buf, len, &err)) < 0)
				break;
			continue;
		} else if (type == RP_RESUME_ACK) {
			if (load_be32(buf) != 1) {
				r = mfd_error_set(&err, MFD_EPROTO, "return path: RESUME_ACK with "
						  "value %u, expected 1", load_be32(buf));
				break;
			}
			pthread_mutex_lock(&e->lock);
			bool early = e->src.resume != RS_BITMAPS;

			if (!early)
				e->src.resume = RS_ACKED;
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			if (early) {
				r = mfd_error_set(&err, MFD_EPROTO, "return path: RESUME_ACK before "
						  "the received-pages bitmaps were all in");
				break;
			}
			continue;
		} else if (type == RP_RESULT) {
			int code = (int32_t)load_be32(buf);

			if (code > 0) {
				/* Not a result at all: no waiter may take it for one. */
				r = mfd_error_set(&err, MFD_EPROTO, "return path: RESULT with code %d "
						  "(neither 0 nor an error code)", code);
				break;
			}
			/* "Loaded" is legal only once the stream ended; a failure at any time. */
			int at = commit_at(e);

			if (code == 0 && at != SC_EOF && at != SC_UNKNOWN) {
				r = mfd_error_set(&err, MFD_EPROTO, "return path: the destination "
						  "reported a result before the end of the stream "
						  "(RESULT 0 before EOF was sent)");
				break;
			}
			/* The destination's words are peer bytes: kept escaped, whole. */
			size_t tlen = 4 * (size_t)(len - 4) + 1;
			char *text = malloc(tlen);

			if (text)
				escape_bytes(text, tlen, buf + 4, len - 4u);
			pthread_mutex_lock(&e->lock);
			/* Past unknown, the migration thread decides what it means. */
			if (at != SC_UNKNOWN)
				commit_move(e, SC_ANSWERED);
			e->src.rp_result = code == 0 || error_code_is_failure(code) ? code
										    : MFD_EPROTO;
			free(e->src.rp_message);
			e->src.rp_message = text;	/* only this thread replaces it */
			/* Loaded after postcopy: every page is there, so the preempt
			 * channel has nothing left to carry; a write stuck on it (its
			 * EOS) ends now instead of holding the source. */
			if (code == 0 && pc_running(e) && e->pre_ch)
				mfd_channel_shutdown(e->pre_ch);
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			if (code < 0) {
				mfd_error_set(&err, e->src.rp_result, "the destination failed: %s",
					      text ? text : "(no memory for its message)");
				r = e->src.rp_result;
				theirs = true;
			}
			break;
		}
	}
	if (r < 0) {
		/* The destination's RESULT carries its own context; anything else
		 * broke here, on the main channel, in the phase under way. */
		if (!err)
			mfd_stream_error(s, &err);
		pthread_mutex_lock(&e->lock);
		bool done = e->src.rp_result == 0, seen = e->src.rp_result != RP_NO_RESULT;

		pthread_mutex_unlock(&e->lock);
		if (!done && pc_running(e) && !seen &&
		    eng_network_error(e, mfd_error_code(err))) {
			/* Postcopy survives this: the migration thread pauses. */
			log_warn("postcopy: return path lost: %s", mfd_error_message(err));
			pthread_mutex_lock(&e->lock);
			link_move(e, LINK_LOST);
			pthread_mutex_unlock(&e->lock);
			eng_break_connections(e);
		} else {
			if (mfd_error_code(err) == MFD_EEOF) {
				mfd_error_free(err);
				err = NULL;
				mfd_error_set(&err, MFD_EEOF, "the destination closed the connection "
					      "without a result (it failed, was cancelled or died)");
			}
			if (!theirs)
				mfd_error_prefix(err, "%s: main channel (return path)", phase_name(e));
			if (!done && !engine_cancelled(e)) {
				/* The destination gave up: stop sending now. */
				eng_fail_all(e, err);
				err = NULL;
			}
		}
	}
	mfd_error_free(err);
	mfd_stream_free(s);
	pthread_mutex_lock(&e->lock);
	e->src.rp_done = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

/*
 * A source that failed while the destination was refusing the stream mostly
 * fails on the broken connection first; the destination's own reason is the
 * useful one, and it is usually already on its way: wait for it briefly.
 */
mfd_error *eng_destination_reason(struct mfd_engine *e)
{
	struct timespec dl;
	mfd_error *err = NULL;

	dl = eng_deadline_in(1000);
	pthread_mutex_lock(&e->lock);
	while (e->src.rp_result == RP_NO_RESULT && !e->src.rp_done)
		if (pthread_cond_timedwait(&e->cond, &e->lock, &dl) != 0)
			break;
	if (e->src.rp_result < 0)
		mfd_error_set(&err, e->src.rp_result, "the destination failed: %s",
			      e->src.rp_message ? e->src.rp_message : "");
	pthread_mutex_unlock(&e->lock);
	return err;
}
