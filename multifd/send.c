/* SPDX-License-Identifier: MIT */
/*
 * multifd source: one thread per channel turns batches of pages into
 * packets.
 *
 * The producer (migration thread) fills a batch of page offsets of one block
 * without any locking; a full batch is swapped with the job slot of an idle
 * channel under the sender's lock (one lock round trip per packet, none per
 * page).  The channel thread classifies zero pages, compresses the normal
 * ones when a codec is configured, and writes header, offsets and payload
 * with one vectored write.  Uncompressed pages go straight from guest memory.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/channel.h"
#include "compress/compress.h"
#include "core/util.h"
#include "multifd/internal.h"

struct send_job {
	unsigned block;
	uint32_t npages;
	uint64_t offsets[];	/* capacity: the sender's max_pages */
};

struct send_channel {
	/* Set at creation. */
	struct mfd_multifd_send *s;
	unsigned id;
	mfd_channel *ch;
	pthread_t thread;
	bool thread_started;
	pthread_cond_t cond;	/* work arrived; waits on s->lock */

	/* Protected by s->lock. */
	struct send_job *job;	/* valid while has_job */
	bool has_job, want_sync, want_end;
	bool ended;

	/* Owned by the channel thread. */
	uint8_t header[MFD_PACKET_HEADER_SIZE];
	uint8_t *offsets;	/* be64 wire offsets */
	uint64_t *normal, *zero;
	struct iovec *iov;
	uint8_t *bounce;	/* pages copied out of guest memory for the codec */
	uint8_t *cbuf;		/* codec output */
	size_t cbuf_cap;
	void *cctx;
	unsigned raw_streak;	/* packets in a row that did not shrink */
	unsigned skip;		/* packets to send raw without trying the codec */
	/* What the adaptive choice knows (cfg.adaptive_codec): running
	 * averages of the time to compress a byte, of the codec's output/input
	 * ratio, and of the time a packet takes per byte of normal pages from
	 * its first to its last step, compressed and raw. */
	double compress_ns, ratio, cycle_c, cycle_r;
	unsigned since_look;	/* packets since the other choice was looked at */
	unsigned look_every;	/* packets between looks at raw while compressing */
	unsigned probe_every;	/* packets between probes of the codec while raw */
	bool learned;		/* both costs measured once */
	bool compressing;	/* the choice now */
	bool trying_raw;	/* this packet goes raw to measure raw again */
	struct mfd_multifd_channel_stats work;	/* counted as the thread goes */

	/* Protected by s->lock: a copy of work, published after each handoff. */
	struct mfd_multifd_channel_stats stats;
};

struct mfd_multifd_send {
	/* Set at creation. */
	struct mfd_multifd_config cfg;
	const struct mfd_ram_block *blocks;
	unsigned nblocks;
	uint32_t max_pages;	/* the most pages one packet of any block holds */
	unsigned n;
	struct send_channel *chans;

	/* Owned by the producer thread. */
	struct send_job *batch;
	unsigned next;		/* where the search for an idle channel starts */
	bool finished;

	/* Protected by lock. */
	pthread_mutex_t lock;
	pthread_cond_t idle;	/* a channel finished its work */
	mfd_error *err;
	uint64_t syncs, sync_ns_total, sync_ns_max;
	uint64_t sync_ns_last[SYNC_WINDOW];	/* the last rounds, by syncs % SYNC_WINDOW */

	/* Any thread. */
	atomic_bool failed;
	atomic_uint_fast64_t packet_num;
};

static uint32_t block_pages(const struct mfd_multifd_send *s, const struct mfd_ram_block *b)
{
	uint64_t n = s->cfg.packet_bytes / b->page_size;

	return n ? (uint32_t)n : 1;
}

/* Record the first failure, then make every thread stop. */
static void send_fail(struct mfd_multifd_send *s, mfd_error *err)
{
	pthread_mutex_lock(&s->lock);
	if (!s->err)
		s->err = err;
	else
		mfd_error_free(err);
	atomic_store(&s->failed, true);
	for (unsigned i = 0; i < s->n; i++)
		pthread_cond_signal(&s->chans[i].cond);
	pthread_cond_broadcast(&s->idle);
	pthread_mutex_unlock(&s->lock);
	for (unsigned i = 0; i < s->n; i++)
		mfd_channel_shutdown(s->chans[i].ch);
}

static int send_error(struct mfd_multifd_send *s, mfd_error **errp)
{
	int code;

	pthread_mutex_lock(&s->lock);
	code = s->err ? mfd_error_code(s->err) : MFD_ECANCELED;
	if (errp && !*errp)
		*errp = s->err ? error_copy(s->err)
			       : NULL;
	pthread_mutex_unlock(&s->lock);
	if (errp && !*errp)
		mfd_error_set(errp, code, "multifd: the sender was cancelled");
	return code;
}

static void put_header(struct send_channel *c, uint16_t flags, uint32_t block, uint32_t normal,
		       uint32_t zero, uint32_t payload)
{
	uint8_t *h = c->header;

	store_be32(h, MFD_PACKET_MAGIC);
	store_be16(h + 4, MFD_PACKET_VERSION);
	store_be16(h + 6, flags);
	store_be32(h + 8, block);
	store_be32(h + 12, normal);
	store_be32(h + 16, zero);
	store_be32(h + 20, payload);
	store_be64(h + 24, atomic_fetch_add(&c->s->packet_num, 1) + 1);
}

static int write_control(struct send_channel *c, uint16_t flags, mfd_error **errp)
{
	struct iovec iov = { .iov_base = c->header, .iov_len = MFD_PACKET_HEADER_SIZE };

	put_header(c, flags, 0, 0, 0, 0);
	c->work.wire_bytes += MFD_PACKET_HEADER_SIZE;
	return channel_writev_full(c->ch, &iov, 1, errp);
}

/*
 * The wire wants each offset list strictly ascending (so the receiver finds a
 * repeated page in one pass).  Producers walk bitmaps in order, so insertion
 * sort is linear in practice; a page queued twice in one batch is sent once.
 */
static uint32_t sort_unique(uint64_t *v, uint32_t n)
{
	uint32_t out = 0;

	for (uint32_t i = 1; i < n; i++) {
		uint64_t x = v[i];
		uint32_t j = i;

		while (j > 0 && v[j - 1] > x) {
			v[j] = v[j - 1];
			j--;
		}
		v[j] = x;
	}
	for (uint32_t i = 0; i < n; i++)
		if (out == 0 || v[i] != v[out - 1])
			v[out++] = v[i];
	return out;
}

/* Pages a probe compresses before it tries a whole packet again. */
#define PROBE_PAGES 4

/* Compression is worth it only when it saves at least 1/32 of the bytes. */
static bool worth_it(size_t out_len, size_t in_len)
{
	return out_len > 0 && out_len < in_len - in_len / 32;
}

/* A packet went raw: skip the codec for the next 1, 3, 7 or 15 packets.  A
 * probe costs 1/32 of a packet, so probing often costs little and notices
 * soon when memory turns compressible again. */
static void note_raw(struct send_channel *c)
{
	if (c->raw_streak < 4)
		c->raw_streak++;
	c->skip = (1u << c->raw_streak) - 1;
}

/* Weight of a new sample in the averages of the adaptive choice. */
#define COST_WEIGHT 0.125
/* Packets between two looks at the choice not taken; each look that finds
 * the other choice slower doubles the wait, up to the most. */
#define COST_LOOK_EVERY 8
#define COST_LOOK_MOST 128
/* Packets with fewer bytes of normal pages say more about per-packet costs
 * than about the codec or the link: they are left out of the averages. */
#define COST_MIN_BYTES (32u << 10)

static void average_in(double *avg, double sample)
{
	*avg = *avg > 0 ? *avg + COST_WEIGHT * (sample - *avg) : sample;
}

/* Compress @len bytes from the bounce buffer, timing it for the adaptive
 * choice. */
static int compress_timed(struct send_channel *c, size_t len, size_t *clen, mfd_error **errp)
{
	const mfd_compress_ops *codec = c->s->cfg.codec;
	uint64_t t0 = util_now_ns();
	int r = compress_send(codec, c->cctx, c->bounce, len, c->cbuf, c->cbuf_cap, clen,
				  errp);

	if (r == 0 && len) {
		average_in(&c->compress_ns, (double)(util_now_ns() - t0) / (double)len);
		average_in(&c->ratio, MFD_MIN(1.0, (double)*clen / (double)len));
	}
	return r;
}

/*
 * A probe: compress the first PROBE_PAGES pages only.  Returns 1 when the
 * sample shrank (the whole packet is worth a try), 0 when not, or an error.
 */
static int probe_sample(struct send_channel *c, const struct mfd_ram_block *b, mfd_error **errp)
{
	size_t ps = (size_t)b->page_size, sample = (size_t)PROBE_PAGES * ps, clen = 0;
	int r;

	for (uint32_t i = 0; i < PROBE_PAGES; i++)
		memcpy(c->bounce + (size_t)i * ps, b->host + c->normal[i], ps);
	r = compress_timed(c, sample, &clen, errp);
	if (r < 0)
		return r;
	return worth_it(clen, sample);
}

/*
 * Adaptive compression: compress while a channel's packets go out sooner
 * compressed than raw.  What a packet costs is measured on the packets
 * themselves, from the zero-page scan to the end of the write, per byte of
 * normal pages: so it is the pace of whatever holds the channel back (the
 * codec, the link, the destination), compression and transmission
 * overlapping as they do through the socket's buffer.  The choice not taken
 * is looked at every COST_LOOK_EVERY packets: while raw, the codec is
 * measured on a sample, and compressed packets would go at the slower of
 * the codec and the wire (compress_ns against ratio x raw cost), less and
 * less often while raw wins by far (up to COST_LOOK_MOST); while
 * compressing with the codec setting the pace, one packet goes raw, less
 * and less often while raw keeps losing (a raw packet on a slow link costs
 * many compressed ones).  Compression must promise a clear gain (a quarter)
 * to be taken up and keeps it while it saves a tenth: raw leaves the CPU to
 * the other channels, and on one machine to the destination.  Returns 1 to
 * compress, 0 to send raw, or an error from a probe.
 */
static int adaptive_choice(struct send_channel *c, const struct mfd_ram_block *b, uint32_t nn,
			   mfd_error **errp)
{
	if (c->cycle_c <= 0)
		return 1;	/* first learn what a compressed packet costs */
	if (c->cycle_r <= 0)
		return 0;	/* then a raw one */
	if (!c->learned) {
		c->learned = true;
		c->compressing = c->cycle_c < 0.75 * c->cycle_r;
	} else if (c->compressing && c->cycle_c >= 0.9 * c->cycle_r) {
		c->compressing = false;
	}
	if (++c->since_look >= (c->compressing ? c->look_every : c->probe_every)) {
		c->since_look = 0;
		if (c->compressing && c->cycle_c < 1.5 * c->compress_ns) {
			c->trying_raw = true;
			return 0;
		}
		if (!c->compressing && nn > PROBE_PAGES) {
			int r = probe_sample(c, b, errp);
			double estimate;

			if (r < 0)
				return r;
			estimate = MFD_MAX(c->compress_ns, c->ratio * c->cycle_r);
			if (estimate < 0.75 * c->cycle_r) {
				c->compressing = true;
				c->cycle_c = estimate;
				c->probe_every = COST_LOOK_EVERY;
			} else if (estimate >= 2 * c->cycle_r) {
				/* A probe costs a slice of a packet: where raw wins by
				 * far (a link faster than the codec) that slice adds up,
				 * 2 % of the time on loopback at every 8th packet. */
				c->probe_every = MFD_MIN(2 * c->probe_every, COST_LOOK_MOST);
			} else {
				/* Close: a sample of 4 pages says little about the ratio,
				 * keep looking often (a slow link must not stay raw). */
				c->probe_every = COST_LOOK_EVERY;
			}
		}
	}
	return c->compressing;
}

/* Build and write one packet from a job. */
static int send_job(struct send_channel *c, const struct send_job *job, mfd_error **errp)
{
	struct mfd_multifd_send *s = c->s;
	const struct mfd_ram_block *b = &s->blocks[job->block];
	const mfd_compress_ops *codec = s->cfg.codec;
	size_t ps = (size_t)b->page_size;
	uint32_t nn = 0, nz = 0, payload = 0;
	uint16_t flags = 0;
	/* The adaptive choice times whole packets; nothing else needs the clock. */
	uint64_t t_start = codec && s->cfg.adaptive_codec ? util_now_ns() : 0;
	int iovcnt = 2, r;

	for (uint32_t i = 0; i < job->npages; i++) {
		uint64_t off = job->offsets[i];

		if (s->cfg.zero_detect == MFD_ZERO_MULTIFD && util_page_is_zero(b->host + off, ps))
			c->zero[nz++] = off;
		else
			c->normal[nn++] = off;
	}
	nn = sort_unique(c->normal, nn);
	nz = sort_unique(c->zero, nz);
	for (uint32_t i = 0; i < nn; i++)
		store_be64(c->offsets + 8 * i, c->normal[i]);
	for (uint32_t i = 0; i < nz; i++)
		store_be64(c->offsets + 8 * (nn + i), c->zero[i]);
	c->iov[0] = (struct iovec){ c->header, MFD_PACKET_HEADER_SIZE };
	c->iov[1] = (struct iovec){ c->offsets, 8 * (size_t)(nn + nz) };

	/*
	 * Memory that does not compress (encrypted or already compressed data)
	 * would cost codec time for nothing: after packets that did not shrink,
	 * skip the codec for exponentially more packets, probing again now and
	 * then, so incompressible memory moves at nocomp speed.  A probe first
	 * compresses a sample of the packet: with a slow codec a whole packet
	 * costs as much as dozens of raw ones.
	 */
	bool try_codec = codec && nn && c->skip == 0;

	if (codec && nn && c->skip > 0)
		c->skip--;
	if (try_codec && s->cfg.adaptive_codec) {
		r = adaptive_choice(c, b, nn, errp);
		if (r < 0)
			return r;
		try_codec = r == 1;
	} else if (try_codec && c->raw_streak > 0 && nn > PROBE_PAGES) {
		r = probe_sample(c, b, errp);
		if (r < 0)
			return r;
		if (r == 0) {
			try_codec = false;
			note_raw(c);
		}
	}
	if (try_codec) {
		size_t in_len = (size_t)nn * ps, clen = 0;

		/* A stable copy: the guest may write these pages while we compress. */
		for (uint32_t i = 0; i < nn; i++)
			memcpy(c->bounce + (size_t)i * ps, b->host + c->normal[i], ps);
		r = compress_timed(c, in_len, &clen, errp);
		if (r < 0)
			return r;
		if (worth_it(clen, in_len)) {
			flags |= MFD_PACKET_COMPRESSED;
			c->iov[iovcnt++] = (struct iovec){ c->cbuf, clen };
			payload = (uint32_t)clen;
			c->raw_streak = 0;
		} else {
			c->work.raw_packets++;
			c->iov[iovcnt++] = (struct iovec){ c->bounce, in_len };
			payload = (uint32_t)in_len;
			note_raw(c);
		}
	} else {
		if (codec && nn)
			c->work.raw_packets++;
		/* Straight from guest memory; neighbouring pages share one entry. */
		for (uint32_t i = 0; i < nn; i++) {
			uint8_t *p = b->host + c->normal[i];
			struct iovec *last = &c->iov[iovcnt - 1];

			if (iovcnt > 2 && (uint8_t *)last->iov_base + last->iov_len == p)
				last->iov_len += ps;
			else
				c->iov[iovcnt++] = (struct iovec){ p, ps };
		}
		payload = (uint32_t)(nn * ps);
	}
	put_header(c, flags, job->block, nn, nz, payload);
	if (s->cfg.zero_copy && nn) {
		/* Header and offsets are this thread's reused buffers: copied.
		 * Guest pages go as they are; a page the guest writes before the
		 * kernel reads it is dirty and goes again. */
		r = channel_writev_full(c->ch, c->iov, 2, errp);
		if (r == 0)
			r = channel_writev_zerocopy_full(c->ch, c->iov + 2, iovcnt - 2, errp);
		if (r == 0)
			c->work.zc_bytes += (uint64_t)nn * ps;
	} else {
		r = channel_writev_full(c->ch, c->iov, iovcnt, errp);
	}
	if (r < 0)
		return r;
	if (codec && s->cfg.adaptive_codec && nn * ps >= COST_MIN_BYTES) {
		double cost = (double)(util_now_ns() - t_start) / (double)(nn * ps);

		/* A look at raw now and then replaces what raw cost long ago. */
		if (c->trying_raw)
			c->cycle_r = cost;
		else
			average_in(try_codec ? &c->cycle_c : &c->cycle_r, cost);
	}
	if (c->trying_raw) {
		c->trying_raw = false;
		c->look_every = c->cycle_c < 0.9 * c->cycle_r
				? MFD_MIN(2 * c->look_every, COST_LOOK_MOST) : COST_LOOK_EVERY;
	}
	c->work.packets++;
	c->work.normal_pages += nn;
	c->work.zero_pages += nz;
	c->work.page_bytes += (uint64_t)(nn + nz) * ps;
	c->work.normal_bytes += (uint64_t)nn * ps;
	c->work.wire_bytes += MFD_PACKET_HEADER_SIZE + 8ull * (nn + nz) + payload;
	return 0;
}

/* Wait until the transport is done with the pages given to zero-copy
 * sends, so that none is still in flight past a SYNC or END. */
static int flush_zerocopy(struct send_channel *c, bool at_sync, mfd_error **errp)
{
	struct mfd_zerocopy_report rep;
	int r = channel_flush_zerocopy(c->ch, &rep, errp);

	if (r < 0)
		return r;
	c->work.zc_sends += rep.sends;
	c->work.zc_copied += rep.copied;
	c->work.zc_copy_bytes += rep.copy_bytes;
	c->work.zc_refused = rep.refused;
	if (at_sync && rep.copied)
		c->work.zc_missed_syncs++;
	return 0;
}

static void *send_thread(void *arg)
{
	struct send_channel *c = arg;
	struct mfd_multifd_send *s = c->s;

	for (;;) {
		bool job, sync, end;
		mfd_error *err = NULL;
		uint64_t t0;
		int r = 0;

		pthread_mutex_lock(&s->lock);
		while (!c->has_job && !c->want_sync && !c->want_end && !atomic_load(&s->failed))
			pthread_cond_wait(&c->cond, &s->lock);
		job = c->has_job;
		sync = c->want_sync;
		end = c->want_end;
		pthread_mutex_unlock(&s->lock);
		if (atomic_load(&s->failed))
			break;

		t0 = util_now_ns();
		/* Order matters: pages queued before a sync go out before its SYNC packet. */
		if (job)
			r = send_job(c, c->job, &err);
		if (r == 0 && sync) {
			r = write_control(c, MFD_PACKET_SYNC, &err);
			c->work.sync_packets++;
			if (r == 0 && s->cfg.zero_copy)
				r = flush_zerocopy(c, true, &err);
		}
		if (r == 0 && end)
			r = write_control(c, MFD_PACKET_END, &err);
		if (r == 0 && end && s->cfg.zero_copy)
			r = flush_zerocopy(c, false, &err);
		c->work.busy_ns += util_now_ns() - t0;
		if (r < 0) {
			mfd_error_prefix(err, "multifd channel %u", c->id);
			send_fail(s, err);
			break;
		}
		pthread_mutex_lock(&s->lock);
		c->stats = c->work;
		if (job)
			c->has_job = false;
		if (sync)
			c->want_sync = false;
		if (end)
			c->ended = true;
		pthread_cond_broadcast(&s->idle);
		pthread_mutex_unlock(&s->lock);
		if (end)
			break;
	}
	return NULL;
}

static int channel_init(struct mfd_multifd_send *s, struct send_channel *c, unsigned id,
			mfd_channel *ch, mfd_error **errp)
{
	size_t max_bytes = (size_t)s->max_pages * 4096;

	/* Bytes of the largest packet: max_pages pages of the largest page size. */
	for (unsigned i = 0; i < s->nblocks; i++) {
		size_t bytes = (size_t)block_pages(s, &s->blocks[i]) * s->blocks[i].page_size;

		if (bytes > max_bytes)
			max_bytes = bytes;
	}
	c->s = s;
	c->id = id;
	c->ch = ch;
	pthread_cond_init(&c->cond, NULL);
	c->look_every = COST_LOOK_EVERY;
	c->probe_every = COST_LOOK_EVERY;
	c->job = malloc(sizeof(struct send_job) + s->max_pages * sizeof(uint64_t));
	c->offsets = malloc(8 * (size_t)s->max_pages);
	c->normal = malloc(sizeof(uint64_t) * s->max_pages);
	c->zero = malloc(sizeof(uint64_t) * s->max_pages);
	c->iov = malloc(sizeof(struct iovec) * (s->max_pages + 3));
	if (!c->job || !c->offsets || !c->normal || !c->zero || !c->iov)
		return mfd_error_set(errp, MFD_ENOMEM, "multifd channel %u: out of memory", id);
	if (s->cfg.codec) {
		int r;

		c->bounce = malloc(max_bytes);
		c->cbuf_cap = s->cfg.codec->bound(max_bytes);
		c->cbuf = malloc(c->cbuf_cap);
		if (!c->bounce || !c->cbuf)
			return mfd_error_set(errp, MFD_ENOMEM,
					     "multifd channel %u: out of memory for codec buffers", id);
		r = s->cfg.codec->send_setup(s->cfg.codec->opaque, &c->cctx, s->cfg.level, errp);
		if (r < 0) {
			c->cctx = NULL;
			mfd_error_prefix(errp ? *errp : NULL, "multifd channel %u: %s", id,
					 s->cfg.codec->name);
			return r;
		}
	}
	return 0;
}

void multifd_send_free(struct mfd_multifd_send *s)
{
	if (!s)
		return;
	if (!s->finished)
		multifd_send_cancel(s);
	/* Every thread first: a failing one signals every channel's condition. */
	for (unsigned i = 0; s->chans && i < s->n; i++)
		if (s->chans[i].thread_started) {
			pthread_join(s->chans[i].thread, NULL);
			s->chans[i].thread_started = false;
		}
	for (unsigned i = 0; s->chans && i < s->n; i++) {
		struct send_channel *c = &s->chans[i];

		if (s->cfg.codec && c->cctx)
			s->cfg.codec->send_cleanup(c->cctx);
		pthread_cond_destroy(&c->cond);
		free(c->job);
		free(c->offsets);
		free(c->normal);
		free(c->zero);
		free(c->iov);
		free(c->bounce);
		free(c->cbuf);
	}
	free(s->chans);
	free(s->batch);
	mfd_error_free(s->err);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->idle);
	free(s);
}

int multifd_send_new(const struct mfd_multifd_config *cfg, const struct mfd_ram_block *blocks,
			 unsigned nblocks, mfd_channel **channels, struct mfd_multifd_send **out,
			 mfd_error **errp)
{
	struct mfd_multifd_send *s;
	uint64_t digest = ram_blocks_digest(blocks, nblocks);
	int r = 0;

	*out = NULL;
	if (cfg->channels < 1 || cfg->channels > 255)
		return mfd_error_set(errp, MFD_EINVAL, "multifd-channels %u is outside 1..255",
				     cfg->channels);
	if (cfg->packet_bytes < MFD_PACKET_BYTES_MIN || cfg->packet_bytes > MFD_PACKET_BYTES_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "multifd packet size %u is outside %u..%u",
				     cfg->packet_bytes, MFD_PACKET_BYTES_MIN, MFD_PACKET_BYTES_MAX);
	if (cfg->codec && compress_check_level(cfg->codec, cfg->level, errp) < 0)
		return MFD_EINVAL;
	if (cfg->zero_copy && cfg->codec)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send sends guest pages as they "
				     "are: it needs multifd-compression none, not %s",
				     cfg->codec->name);
	for (unsigned i = 0; cfg->zero_copy && i < cfg->channels; i++)
		if (!channel_has_zerocopy(channels[i]))
			return mfd_error_set(errp, MFD_ENOTSUP, "zero-copy-send: multifd channel %u "
					     "(%s, a %s channel) has no zero-copy send", i,
					     channels[i]->name, channels[i]->ops->kind);
	s = calloc(1, sizeof(*s));
	if (!s)
		return mfd_error_set(errp, MFD_ENOMEM, "multifd: out of memory");
	s->cfg = *cfg;
	s->blocks = blocks;
	s->nblocks = nblocks;
	s->n = cfg->channels;
	s->finished = false;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->idle, NULL);
	atomic_init(&s->failed, false);
	atomic_init(&s->packet_num, 0);
	s->max_pages = 1;
	for (unsigned i = 0; i < nblocks; i++)
		s->max_pages = MFD_MAX(s->max_pages, block_pages(s, &blocks[i]));
	s->chans = calloc(s->n, sizeof(*s->chans));
	s->batch = malloc(sizeof(struct send_job) + s->max_pages * sizeof(uint64_t));
	if (!s->chans || !s->batch) {
		free(s->chans);
		s->chans = NULL;
		s->finished = true;
		multifd_send_free(s);
		return mfd_error_set(errp, MFD_ENOMEM, "multifd: out of memory");
	}
	s->batch->npages = 0;
	for (unsigned i = 0; i < s->n && r == 0; i++)
		r = channel_init(s, &s->chans[i], i, channels[i], errp);
	/* Hellos go out before any thread starts, so each channel begins with one. */
	for (unsigned i = 0; i < s->n && r == 0 && !cfg->hellos_sent; i++) {
		uint8_t hello[MFD_HELLO_SIZE];
		struct iovec iov = { hello, sizeof(hello) };

		multifd_hello_encode(hello, cfg, (uint16_t)i, digest);
		r = channel_writev_full(channels[i], &iov, 1, errp);
		if (r < 0)
			mfd_error_prefix(errp ? *errp : NULL, "multifd channel %u: hello", i);
		s->chans[i].work.wire_bytes += MFD_HELLO_SIZE;
		s->chans[i].stats = s->chans[i].work;
	}
	for (unsigned i = 0; i < s->n && r == 0; i++) {
		if (util_thread_start(&s->chans[i].thread, send_thread, &s->chans[i], "mfd-send/%u",
				      s->chans[i].id) != 0)
			r = mfd_error_set(errp, MFD_ENOMEM, "multifd channel %u: cannot start a thread",
					  i);
		else
			s->chans[i].thread_started = true;
	}
	if (r < 0) {
		multifd_send_free(s);
		return r;
	}
	*out = s;
	return 0;
}

/* Hand the producer's batch to an idle channel (swapping buffers). */
static int hand_over(struct mfd_multifd_send *s, mfd_error **errp)
{
	struct send_channel *c = NULL;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		if (atomic_load(&s->failed)) {
			pthread_mutex_unlock(&s->lock);
			return send_error(s, errp);
		}
		for (unsigned k = 0; k < s->n; k++) {
			struct send_channel *cand = &s->chans[(s->next + k) % s->n];

			if (!cand->has_job && !cand->want_sync) {
				c = cand;
				s->next = (s->next + k + 1) % s->n;
				break;
			}
		}
		if (c)
			break;
		pthread_cond_wait(&s->idle, &s->lock);
	}
	struct send_job *spare = c->job;

	c->job = s->batch;
	c->has_job = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&s->lock);
	s->batch = spare;
	s->batch->npages = 0;
	return 0;
}

int multifd_queue_page(struct mfd_multifd_send *s, unsigned block, uint64_t offset,
			   mfd_error **errp)
{
	struct send_job *b = s->batch;

	if (MFD_UNLIKELY(block >= s->nblocks))
		return mfd_error_set(errp, MFD_EINVAL, "multifd: block index %u, there are %u",
				     block, s->nblocks);
	const struct mfd_ram_block *blk = &s->blocks[block];

	if (MFD_UNLIKELY((offset & (blk->page_size - 1)) || offset >= blk->size))
		return mfd_error_set(errp, MFD_EINVAL,
				     "multifd: offset 0x%llx is not a page of block '%s'",
				     (unsigned long long)offset, blk->name);
	if (MFD_UNLIKELY(atomic_load_explicit(&s->failed, memory_order_relaxed)))
		return send_error(s, errp);
	/* A packet carries pages of one block. */
	if (b->npages && b->block != block) {
		int r = hand_over(s, errp);

		if (r < 0)
			return r;
		b = s->batch;
	}
	b->block = block;
	b->offsets[b->npages++] = offset;
	if (b->npages == block_pages(s, blk))
		return hand_over(s, errp);
	return 0;
}

int multifd_send_sync(struct mfd_multifd_send *s, mfd_error **errp)
{
	uint64_t t0 = util_now_ns(), dt;
	int r = 0;

	if (s->batch->npages)
		r = hand_over(s, errp);
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->n; i++) {
		s->chans[i].want_sync = true;
		pthread_cond_signal(&s->chans[i].cond);
	}
	for (;;) {
		bool pending = false;

		if (atomic_load(&s->failed))
			break;
		for (unsigned i = 0; i < s->n; i++)
			pending |= s->chans[i].want_sync;
		if (!pending)
			break;
		pthread_cond_wait(&s->idle, &s->lock);
	}
	dt = util_now_ns() - t0;
	s->syncs++;
	s->sync_ns_total += dt;
	if (dt > s->sync_ns_max)
		s->sync_ns_max = dt;
	s->sync_ns_last[s->syncs % SYNC_WINDOW] = dt;
	pthread_mutex_unlock(&s->lock);
	if (atomic_load(&s->failed))
		return send_error(s, errp);
	return 0;
}

int multifd_send_finish(struct mfd_multifd_send *s, mfd_error **errp)
{
	int r = s->batch->npages ? hand_over(s, errp) : 0;

	if (r < 0)
		return r;
	/* No SYNC here: the caller synced where the main stream has its marker;
	 * each channel's END comes after everything it was handed. */
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < s->n; i++) {
		s->chans[i].want_end = true;
		pthread_cond_signal(&s->chans[i].cond);
	}
	pthread_mutex_unlock(&s->lock);
	for (unsigned i = 0; i < s->n; i++) {
		pthread_join(s->chans[i].thread, NULL);
		s->chans[i].thread_started = false;
	}
	s->finished = true;
	if (atomic_load(&s->failed))
		return send_error(s, errp);
	return 0;
}

void multifd_send_cancel(struct mfd_multifd_send *s)
{
	mfd_error *err = NULL;

	if (!s)
		return;
	mfd_error_set(&err, MFD_ECANCELED, "multifd: migration cancelled");
	send_fail(s, err);
}

void multifd_send_stats(struct mfd_multifd_send *s, struct mfd_multifd_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&s->lock);
	st->channels = s->n;
	for (unsigned i = 0; i < s->n; i++)
		st->ch[i] = s->chans[i].stats;
	st->syncs = s->syncs;
	st->sync_ns_total = s->sync_ns_total;
	st->sync_ns_max = s->sync_ns_max;
	for (unsigned i = 0; i < SYNC_WINDOW; i++)
		st->sync_ns_recent = MFD_MAX(st->sync_ns_recent, s->sync_ns_last[i]);
	pthread_mutex_unlock(&s->lock);
}
