/* SPDX-License-Identifier: MIT */
/*
 * multifd destination: one thread per channel validates packets and places
 * pages in guest memory.
 *
 * The source is untrusted.  Every count, offset, size and flag in a packet
 * is checked against local limits before it is used, and every buffer is
 * sized at setup from local configuration, never from the peer.
 *
 * Ordering: at a SYNC packet a channel parks until the main stream's loader
 * reaches the matching marker and calls multifd_recv_sync(), which waits
 * for every channel to park first.  So a page sent after a sync can never be
 * overwritten by an older copy still travelling on another channel.
 *
 * Every wait here ends: on a cancel or a failure (recv_fail broadcasts and
 * shuts the channels down), or after cfg.timeout_ms without progress of any
 * channel or of the loader (progress_ns).  Once the main stream ended
 * (multifd_recv_finish), a SYNC has no marker left to match it, so a
 * channel parked there, or parking later, fails the load at once.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/channel.h"
#include "core/escape.h"
#include "compress/compress.h"
#include "core/util.h"
#include "multifd/internal.h"

struct recv_channel {
	/* Set when identified. */
	struct mfd_multifd_recv *r;
	unsigned id;
	mfd_channel *ch;
	pthread_t thread;
	bool thread_started;

	/* Owned by the channel thread. */
	uint8_t header[MFD_PACKET_HEADER_SIZE];
	uint8_t *offsets_wire;
	struct iovec *iov;
	uint8_t *cbuf;
	size_t cbuf_cap;
	void *dctx;
	uint64_t last_packet;
	struct mfd_multifd_channel_stats work;

	/* Protected by r->lock. */
	struct mfd_multifd_channel_stats stats;
	bool ended;
	bool parked;	/* at a SYNC, not yet released */
	uint64_t hello_digest;	/* the block digest its hello named */
};

struct mfd_multifd_recv {
	/* Set at creation. */
	struct mfd_multifd_config cfg;
	const struct mfd_ram_block *blocks;	/* set at creation or by set_blocks */
	unsigned nblocks;
	uint64_t digest;
	bool deferred;		/* the table comes later (multifd_recv_set_blocks()) */
	uint32_t max_pages;
	size_t max_bytes;
	unsigned n;
	struct recv_channel *chans;

	/* Protected by lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned identified;
	unsigned parked;	/* channels waiting at their SYNC */
	uint64_t release;	/* bumped by recv_sync to let parked channels go */
	unsigned ended;
	bool started;
	mfd_error *err;
	uint64_t syncs, sync_ns_total, sync_ns_max;
	uint64_t progress_ns;	/* a packet placed, a channel parked, ended or released */
	bool finishing;		/* the main stream ended: no marker will come */
	bool syncing;		/* the loader is at a marker: it keeps the deadline */

	atomic_bool failed;
};

static uint32_t pages_per_packet(const struct mfd_multifd_recv *r, const struct mfd_ram_block *b)
{
	uint64_t n = r->cfg.packet_bytes / b->page_size;

	return n ? (uint32_t)n : 1;
}

static void recv_fail(struct mfd_multifd_recv *r, mfd_error *err)
{
	pthread_mutex_lock(&r->lock);
	if (!r->err)
		r->err = err;
	else
		mfd_error_free(err);
	atomic_store(&r->failed, true);
	pthread_cond_broadcast(&r->cond);
	/* Only started channels are ours to unblock.  Before the start, identify
	 * merely borrowed them: the caller's gather owns them and frees them when
	 * a later hello is refused, so touching them here would be a use after
	 * free (and nothing of ours reads them yet). */
	bool started = r->started;

	pthread_mutex_unlock(&r->lock);
	for (unsigned i = 0; started && i < r->n; i++)
		if (r->chans[i].ch)
			mfd_channel_shutdown(r->chans[i].ch);
}

static int recv_error(struct mfd_multifd_recv *r, mfd_error **errp)
{
	int code;

	pthread_mutex_lock(&r->lock);
	code = r->err ? mfd_error_code(r->err) : MFD_ECANCELED;
	if (errp && !*errp && r->err)
		*errp = error_copy(r->err);
	pthread_mutex_unlock(&r->lock);
	if (errp && !*errp)
		mfd_error_set(errp, code, "multifd: the receiver was cancelled");
	return code;
}

int multifd_recv_root_cause(struct mfd_multifd_recv *r, mfd_error **errp)
{
	if (!atomic_load(&r->failed))
		return 0;
	pthread_mutex_lock(&r->lock);
	bool own = r->err != NULL;

	pthread_mutex_unlock(&r->lock);
	if (!own)
		return 0;	/* cancelled from outside: not a cause */
	if (errp) {
		mfd_error_free(*errp);
		*errp = NULL;
	}
	return recv_error(r, errp);
}

static void set_table(struct mfd_multifd_recv *r, const struct mfd_ram_block *blocks,
		      unsigned nblocks)
{
	r->blocks = blocks;
	r->nblocks = nblocks;
	r->digest = ram_blocks_digest(blocks, nblocks);
	r->max_pages = 1;
	r->max_bytes = 4096;
	for (unsigned i = 0; i < nblocks; i++) {
		uint32_t pages = pages_per_packet(r, &blocks[i]);

		r->max_pages = MFD_MAX(r->max_pages, pages);
		r->max_bytes = MFD_MAX(r->max_bytes, (size_t)pages * blocks[i].page_size);
	}
}

void multifd_recv_defer_blocks(struct mfd_multifd_recv *r)
{
	r->deferred = true;
}

int multifd_recv_set_blocks(struct mfd_multifd_recv *r, const struct mfd_ram_block *blocks,
			    unsigned nblocks, mfd_error **errp)
{
	pthread_mutex_lock(&r->lock);
	bool ok = r->deferred && !r->started;

	pthread_mutex_unlock(&r->lock);
	if (!ok)
		return mfd_error_set(errp, MFD_ESTATE, "multifd: the block table is set already");
	set_table(r, blocks, nblocks);
	r->deferred = false;
	/* The hellos came before the table: each must name this one. */
	for (unsigned i = 0; i < r->n; i++)
		if (r->chans[i].ch && r->chans[i].hello_digest != r->digest)
			return mfd_error_set(errp, MFD_EPROTO,
					     "multifd channel %u: the source's RAM block table "
					     "differs from the one it announced on the main channel",
					     i);
	return 0;
}

int multifd_recv_new(const struct mfd_multifd_config *cfg, const struct mfd_ram_block *blocks,
			 unsigned nblocks, struct mfd_multifd_recv **out, mfd_error **errp)
{
	struct mfd_multifd_recv *r;

	*out = NULL;
	if (cfg->channels < 1 || cfg->channels > 255)
		return mfd_error_set(errp, MFD_EINVAL, "multifd-channels %u is outside 1..255",
				     cfg->channels);
	if (cfg->packet_bytes < MFD_PACKET_BYTES_MIN || cfg->packet_bytes > MFD_PACKET_BYTES_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "multifd packet size %u is outside %u..%u",
				     cfg->packet_bytes, MFD_PACKET_BYTES_MIN, MFD_PACKET_BYTES_MAX);
	r = calloc(1, sizeof(*r));
	if (!r)
		return mfd_error_set(errp, MFD_ENOMEM, "multifd: out of memory");
	r->cfg = *cfg;
	r->n = cfg->channels;
	pthread_mutex_init(&r->lock, NULL);
	/* Deadlines are on the monotonic clock (util_now_ns), like progress_ns. */
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&r->failed, false);
	set_table(r, blocks, nblocks);
	r->chans = calloc(r->n, sizeof(*r->chans));
	if (!r->chans) {
		multifd_recv_free(r);
		return mfd_error_set(errp, MFD_ENOMEM, "multifd: out of memory");
	}
	*out = r;
	return 0;
}

/* Buffers of one channel, sized from local configuration only. */
static int channel_setup(struct mfd_multifd_recv *r, struct recv_channel *c, mfd_error **errp)
{
	c->offsets_wire = malloc(8 * (size_t)r->max_pages);
	c->iov = malloc(sizeof(struct iovec) * r->max_pages);
	if (!c->offsets_wire || !c->iov)
		return mfd_error_set(errp, MFD_ENOMEM, "multifd channel %u: out of memory", c->id);
	if (r->cfg.codec) {
		int rc;

		c->cbuf_cap = r->cfg.codec->bound(r->max_bytes);
		c->cbuf = malloc(c->cbuf_cap);
		if (!c->cbuf)
			return mfd_error_set(errp, MFD_ENOMEM,
					     "multifd channel %u: out of memory for the codec", c->id);
		rc = r->cfg.codec->recv_setup(r->cfg.codec->opaque, &c->dctx, errp);
		if (rc < 0) {
			c->dctx = NULL;
			return rc;
		}
	}
	return 0;
}

int multifd_recv_identify(mfd_channel *ch, void *opaque, mfd_error **errp)
{
	bool stray;

	return multifd_recv_identify_screened(ch, opaque, &stray, errp);
}

int multifd_recv_identify_screened(mfd_channel *ch, void *opaque, bool *stray,
				   mfd_error **errp)
{
	struct mfd_multifd_recv *r = opaque;
	uint8_t h[MFD_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	const char *want_codec = r->cfg.codec ? r->cfg.codec->name : "none";
	const char *who = mfd_channel_name(ch);
	char codec[MFD_HELLO_CODEC_MAX + 1], esc[ESCAPE_BUF_SIZE];
	uint32_t v;
	uint16_t id, count;
	int rc;

	*stray = true;	/* until the session's UUID and token are seen */
	rc = channel_readv_full(ch, &iov, 1, errp);
	if (rc < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "multifd hello from %s", who);
		return rc;
	}
	if ((v = load_be32(h)) != MFD_HELLO_MAGIC)
		return mfd_error_set(errp, MFD_EBADMAGIC,
				     "multifd hello from %s: magic 0x%08x, expected 0x%08x", who, v,
				     MFD_HELLO_MAGIC);
	if ((v = load_be32(h + 4)) != MFD_HELLO_VERSION)
		return mfd_error_set(errp, MFD_EBADVERSION,
				     "multifd hello from %s: version %u, this library speaks %u", who,
				     v, MFD_HELLO_VERSION);
	if ((v = load_be32(h + 8)) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: unknown flags 0x%08x", who, v);
	id = load_be16(h + 12);
	count = load_be16(h + 14);
	if (count != r->n)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: the source uses %u channels, this side "
				     "expects %u (set multifd-channels alike)", who, count, r->n);
	if (id >= r->n)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: channel id %u, valid ids are 0..%u", who,
				     id, r->n - 1);
	if ((v = load_be32(h + 16)) != r->cfg.packet_bytes)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: packet size %u, this side uses %u", who, v,
				     r->cfg.packet_bytes);
	if (load_be32(h + 20) != 0 || h[112] || memcmp(h + 112, h + 113, 15) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: reserved bytes are not zero", who);
	if (h[80] == 0 || h[80] > MFD_HELLO_CODEC_MAX)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: codec name length %u is outside 1..%d",
				     who, h[80], MFD_HELLO_CODEC_MAX);
	memcpy(codec, h + 81, h[80]);
	codec[h[80]] = '\0';
	for (unsigned i = h[80]; i < MFD_HELLO_CODEC_MAX; i++)
		if (h[81 + i])
			return mfd_error_set(errp, MFD_EPROTO,
					     "multifd hello from %s: bytes after the codec name are "
					     "not zero", who);
	if (strlen(codec) != h[80])
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: the codec name contains a NUL byte: '%s'",
				     who, escape_bytes(esc, sizeof(esc), h + 81, h[80]));
	if (strcmp(codec, want_codec) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: the source compresses with '%s', this "
				     "side expects '%s' (set multifd-compression alike)", who,
				     escape_bytes(esc, sizeof(esc), codec, h[80]), want_codec);
	if (memcmp(h + 32, r->cfg.uuid, MFD_UUID_LEN) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: channel %u belongs to another migration "
				     "(session UUID differs)", who, id);
	if (util_consttime_memcmp(h + 48, r->cfg.token, MFD_TOKEN_LEN) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: channel %u presents a wrong session "
				     "token", who, id);
	*stray = false;
	if (!r->deferred && load_be64(h + 24) != r->digest)
		return mfd_error_set(errp, MFD_EPROTO,
				     "multifd hello from %s: the RAM block tables differ (register the "
				     "same blocks, sizes and page sizes in the same order)", who);

	struct recv_channel *c = &r->chans[id];

	pthread_mutex_lock(&r->lock);
	if (c->ch || r->started) {
		pthread_mutex_unlock(&r->lock);
		return mfd_error_set(errp, MFD_EPROTO, "multifd hello from %s: channel id %u %s",
				     who, id, r->started ? "arrived after the start" :
				     "is already connected");
	}
	c->ch = ch;
	c->r = r;
	c->id = id;
	c->hello_digest = load_be64(h + 24);
	r->identified++;
	pthread_mutex_unlock(&r->lock);
	c->work.wire_bytes = MFD_HELLO_SIZE;
	return id;
}

/* ---- packet processing ---------------------------------------------------- */

static int check_offsets(const struct mfd_ram_block *b, const uint64_t *offs, uint32_t n,
			 const char *what, uint64_t pkt, mfd_error **errp)
{
	for (uint32_t i = 0; i < n; i++) {
		uint64_t off = offs[i];

		if (off & (b->page_size - 1))
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: %s page offset 0x%llx in block '%s' is not aligned to "
				     "its %llu-byte pages", (unsigned long long)pkt, what,
				     (unsigned long long)off, b->name, (unsigned long long)b->page_size);
		if (off > b->size - b->page_size)
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: %s page offset 0x%llx is beyond block '%s' "
				     "(%llu bytes)", (unsigned long long)pkt, what, (unsigned long long)off,
				     b->name, (unsigned long long)b->size);
		if (ram_range_absent(b, off, b->page_size))
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: %s page 0x%llx of block '%s' is in a range this "
				     "side marked absent (mfd_ram_discard())", (unsigned long long)pkt,
				     what, (unsigned long long)off, b->name);
		if (i && off <= offs[i - 1])
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: %s page offsets are not strictly ascending (0x%llx "
				     "after 0x%llx)", (unsigned long long)pkt, what,
				     (unsigned long long)off, (unsigned long long)offs[i - 1]);
	}
	return 0;
}

/* Both lists are ascending: a page in both is found by one merge pass. */
static int check_disjoint(const uint64_t *a, uint32_t na, const uint64_t *b, uint32_t nb,
			  uint64_t pkt, mfd_error **errp)
{
	uint32_t i = 0, j = 0;

	while (i < na && j < nb) {
		if (a[i] == b[j])
			return mfd_error_set(errp, MFD_EPROTO,
					     "packet %llu: page 0x%llx is both a normal and a zero page",
					     (unsigned long long)pkt, (unsigned long long)a[i]);
		if (a[i] < b[j])
			i++;
		else
			j++;
	}
	return 0;
}

static int recv_data(struct recv_channel *c, uint16_t flags, uint32_t block, uint32_t nn,
		     uint32_t nz, uint32_t payload, uint64_t pkt, uint64_t *offs, mfd_error **errp)
{
	struct mfd_multifd_recv *r = c->r;
	const mfd_compress_ops *codec = r->cfg.codec;
	const struct mfd_ram_block *b;
	uint32_t cap;
	size_t ps, total;
	struct iovec iov;
	int rc, iovcnt = 0;

	if (block >= r->nblocks)
		return mfd_error_set(errp, MFD_EPROTO, "packet %llu: block index %u, there are %u blocks",
			     (unsigned long long)pkt, block, r->nblocks);
	b = &r->blocks[block];
	ps = (size_t)b->page_size;
	cap = pages_per_packet(r, b);
	if (nn > cap || nz > cap - nn)
		return mfd_error_set(errp, MFD_EPROTO,
			     "packet %llu: %u normal + %u zero pages, a packet of block '%s' holds "
			     "at most %u", (unsigned long long)pkt, nn, nz, b->name, cap);
	if (nn + nz == 0)
		return mfd_error_set(errp, MFD_EPROTO, "packet %llu: a data packet without pages",
			     (unsigned long long)pkt);
	total = (size_t)nn * ps;
	if (flags & MFD_PACKET_COMPRESSED) {
		if (!codec)
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: compressed, but this migration uses no codec",
				     (unsigned long long)pkt);
		if (nn == 0 || payload == 0)
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: compressed payload of %u bytes for %u normal pages",
				     (unsigned long long)pkt, payload, nn);
		if (payload > codec->bound(total) || payload > c->cbuf_cap)
			return mfd_error_set(errp, MFD_EPROTO,
				     "packet %llu: compressed payload of %u bytes exceeds the %s bound "
				     "of %zu for %u pages", (unsigned long long)pkt, payload,
				     codec->name, codec->bound(total), nn);
	} else if (payload != total) {
		return mfd_error_set(errp, MFD_EPROTO,
			     "packet %llu: raw payload of %u bytes, %u normal pages of %zu bytes "
			     "make %zu", (unsigned long long)pkt, payload, nn, ps, total);
	}
	/* Offsets: read all, check all, before any page is touched. */
	iov = (struct iovec){ c->offsets_wire, 8 * (size_t)(nn + nz) };
	rc = channel_readv_full(c->ch, &iov, 1, errp);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < nn + nz; i++)
		offs[i] = load_be64(c->offsets_wire + 8 * i);
	if ((rc = check_offsets(b, offs, nn, "normal", pkt, errp)) < 0 ||
	    (rc = check_offsets(b, offs + nn, nz, "zero", pkt, errp)) < 0 ||
	    (rc = check_disjoint(offs, nn, offs + nn, nz, pkt, errp)) < 0)
		return rc;

	for (uint32_t i = 0; i < nn; i++) {
		uint8_t *p = b->host + offs[i];

		mfd_page_placed(b, offs[i]);
		if (iovcnt && (uint8_t *)c->iov[iovcnt - 1].iov_base + c->iov[iovcnt - 1].iov_len == p)
			c->iov[iovcnt - 1].iov_len += ps;
		else
			c->iov[iovcnt++] = (struct iovec){ p, ps };
	}
	if (flags & MFD_PACKET_COMPRESSED) {
		iov = (struct iovec){ c->cbuf, payload };
		rc = channel_readv_full(c->ch, &iov, 1, errp);
		if (rc == 0)
			rc = compress_recv(codec, c->dctx, c->cbuf, payload, c->iov, iovcnt, errp);
		if (rc < 0) {
			mfd_error_prefix(errp ? *errp : NULL, "packet %llu", (unsigned long long)pkt);
			return rc;
		}
	} else if (nn) {
		/* Raw pages land in guest memory directly. */
		rc = channel_readv_full(c->ch, c->iov, iovcnt, errp);
		if (rc < 0)
			return rc;
	}
	/* Untouched memory stays untouched (and unallocated). */
	for (uint32_t i = 0; i < nz; i++)
		mfd_page_place_zero(b, offs[nn + i]);
	c->work.packets++;
	c->work.normal_pages += nn;
	c->work.zero_pages += nz;
	c->work.page_bytes += (uint64_t)(nn + nz) * ps;
	c->work.normal_bytes += (uint64_t)nn * ps;
	c->work.wire_bytes += MFD_PACKET_HEADER_SIZE + 8ull * (nn + nz) + payload;
	/* One lock per packet keeps live statistics current. */
	pthread_mutex_lock(&r->lock);
	c->stats = c->work;
	r->progress_ns = util_now_ns();
	pthread_mutex_unlock(&r->lock);
	return 0;
}

/*
 * One wait on r->cond (lock held), bounded by cfg.timeout_ms after the
 * receiver's last progress; false once that passed without any.  Callers
 * loop on their own condition, so wakeups and timeouts are alike here.
 */
static bool wait_progress(struct mfd_multifd_recv *r)
{
	if (r->cfg.timeout_ms <= 0) {
		pthread_cond_wait(&r->cond, &r->lock);
		return true;
	}
	uint64_t dl = r->progress_ns + (uint64_t)r->cfg.timeout_ms * 1000000u;

	if (util_now_ns() >= dl)
		return false;
	struct timespec ts = { .tv_sec = (time_t)(dl / 1000000000u),
			       .tv_nsec = (long)(dl % 1000000000u) };

	pthread_cond_timedwait(&r->cond, &r->lock, &ts);
	return true;
}

/* Park at a SYNC packet until the loader reaches the marker. */
static int park(struct recv_channel *c, mfd_error **errp)
{
	struct mfd_multifd_recv *r = c->r;
	uint64_t n = c->work.sync_packets;
	bool expired = false;

	pthread_mutex_lock(&r->lock);
	uint64_t gen = r->release;

	c->stats = c->work;
	c->parked = true;
	r->parked++;
	r->progress_ns = util_now_ns();
	pthread_cond_broadcast(&r->cond);
	while (r->release == gen && !atomic_load(&r->failed) && !r->finishing && !expired) {
		if (r->syncing)
			pthread_cond_wait(&r->cond, &r->lock);
		else
			expired = !wait_progress(r);
	}
	bool released = r->release != gen, finishing = r->finishing;
	uint64_t syncs = r->syncs;

	if (!released) {
		c->parked = false;
		r->parked--;
	}
	pthread_mutex_unlock(&r->lock);
	if (atomic_load(&r->failed))
		return MFD_ECANCELED;
	if (released)
		return 0;
	if (finishing)
		return mfd_error_set(errp, MFD_EPROTO,
				     "SYNC %llu was never matched by the main stream (it ended after "
				     "%llu syncs)", (unsigned long long)n, (unsigned long long)syncs);
	return mfd_error_set(errp, MFD_ETIMEDOUT,
			     "SYNC %llu: the main stream did not reach its marker within %lld ms "
			     "(channel-timeout-ms) and no channel made progress",
			     (unsigned long long)n, (long long)r->cfg.timeout_ms);
}

static void *recv_thread(void *arg)
{
	struct recv_channel *c = arg;
	struct mfd_multifd_recv *r = c->r;
	uint64_t *offs = malloc(sizeof(uint64_t) * r->max_pages);
	mfd_error *err = NULL;
	int rc = offs ? 0 : mfd_error_set(&err, MFD_ENOMEM, "out of memory");


	while (rc == 0) {
		struct iovec iov = { c->header, MFD_PACKET_HEADER_SIZE };
		const uint8_t *h = c->header;
		uint32_t magic, block, nn, nz, payload;
		uint16_t version, flags;
		uint64_t pkt;

		rc = channel_readv_full(c->ch, &iov, 1, &err);
		if (rc < 0)
			break;
		uint64_t t0 = util_now_ns();

		magic = load_be32(h);
		version = load_be16(h + 4);
		flags = load_be16(h + 6);
		block = load_be32(h + 8);
		nn = load_be32(h + 12);
		nz = load_be32(h + 16);
		payload = load_be32(h + 20);
		pkt = load_be64(h + 24);
		if (magic != MFD_PACKET_MAGIC) {
			rc = mfd_error_set(&err, MFD_EBADMAGIC,
					   "packet after #%llu: magic 0x%08x, expected 0x%08x",
					   (unsigned long long)c->last_packet, magic, MFD_PACKET_MAGIC);
			break;
		}
		if (version != MFD_PACKET_VERSION) {
			rc = mfd_error_set(&err, MFD_EBADVERSION,
					   "packet %llu: version %u, this library reads %u",
					   (unsigned long long)pkt, version, MFD_PACKET_VERSION);
			break;
		}
		if (flags & ~MFD_PACKET_FLAGS_KNOWN) {
			rc = mfd_error_set(&err, MFD_EPROTO, "packet %llu: unknown flags 0x%04x",
					   (unsigned long long)pkt, flags & ~MFD_PACKET_FLAGS_KNOWN);
			break;
		}
		if (pkt <= c->last_packet) {
			rc = mfd_error_set(&err, MFD_EPROTO,
					   "packet number %llu after %llu: numbers must increase",
					   (unsigned long long)pkt, (unsigned long long)c->last_packet);
			break;
		}
		c->last_packet = pkt;
		if (flags & (MFD_PACKET_SYNC | MFD_PACKET_END)) {
			if (block || nn || nz || payload || (flags & MFD_PACKET_COMPRESSED) ||
			    (flags & MFD_PACKET_SYNC && flags & MFD_PACKET_END)) {
				rc = mfd_error_set(&err, MFD_EPROTO,
						   "packet %llu: %s packet carries pages or other flags",
						   (unsigned long long)pkt,
						   flags & MFD_PACKET_SYNC ? "a SYNC" : "an END");
				break;
			}
			c->work.wire_bytes += MFD_PACKET_HEADER_SIZE;
			c->work.busy_ns += util_now_ns() - t0;
			if (flags & MFD_PACKET_END)
				break;
			c->work.sync_packets++;
			rc = park(c, &err);
			continue;
		}
		rc = recv_data(c, flags, block, nn, nz, payload, pkt, offs, &err);
		c->work.busy_ns += util_now_ns() - t0;
	}
	free(offs);
	pthread_mutex_lock(&r->lock);
	c->stats = c->work;
	if (rc == 0) {
		c->ended = true;
		r->ended++;
		r->progress_ns = util_now_ns();
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	if (rc < 0) {
		mfd_error_prefix(err, "multifd channel %u (%s)", c->id, mfd_channel_name(c->ch));
		recv_fail(r, err);
	}
	return NULL;
}

int multifd_recv_start(struct mfd_multifd_recv *r, mfd_error **errp)
{
	int rc = 0;

	pthread_mutex_lock(&r->lock);
	if (r->identified != r->n || r->started) {
		unsigned have = r->identified;

		pthread_mutex_unlock(&r->lock);
		return mfd_error_set(errp, MFD_ESTATE,
				     r->started ? "multifd: receiver already started"
						: "multifd: %u of %u channels identified", have, r->n);
	}
	r->started = true;
	r->progress_ns = util_now_ns();
	pthread_mutex_unlock(&r->lock);
	for (unsigned i = 0; i < r->n && rc == 0; i++)
		rc = channel_setup(r, &r->chans[i], errp);
	for (unsigned i = 0; i < r->n && rc == 0; i++) {
		if (util_thread_start(&r->chans[i].thread, recv_thread, &r->chans[i], "mfd-recv/%u",
				      r->chans[i].id) != 0)
			rc = mfd_error_set(errp, MFD_ENOMEM, "multifd channel %u: cannot start a thread",
					   i);
		else
			r->chans[i].thread_started = true;
	}
	if (rc < 0) {
		mfd_error *err = NULL;

		mfd_error_set(&err, rc, "multifd: receiver setup failed");
		recv_fail(r, err);
	}
	return rc;
}

/*
 * The loader waited cfg.timeout_ms without progress for channel @id (lock
 * held, released here): fail the receiver, so its threads stop, and report.
 */
static int loader_timed_out(struct mfd_multifd_recv *r, unsigned id, const char *what,
			    mfd_error **errp)
{
	mfd_error *err = NULL;
	int64_t ms = r->cfg.timeout_ms;

	pthread_mutex_unlock(&r->lock);
	mfd_error_set(&err, MFD_ETIMEDOUT, "multifd: channel %u %s within %lld ms "
		      "(channel-timeout-ms) and no channel made progress", id, what, (long long)ms);
	if (errp && !*errp)
		*errp = error_copy(err);
	recv_fail(r, err);
	return MFD_ETIMEDOUT;
}

int multifd_recv_sync(struct mfd_multifd_recv *r, mfd_error **errp)
{
	uint64_t t0 = util_now_ns(), dt;
	bool expired = false;

	pthread_mutex_lock(&r->lock);
	r->syncing = true;
	while (r->parked < r->n && !atomic_load(&r->failed) && r->ended == 0 && !expired)
		expired = !wait_progress(r);
	r->syncing = false;
	pthread_cond_broadcast(&r->cond);	/* parked channels take the deadline back */
	if (expired && r->parked < r->n && !atomic_load(&r->failed) && r->ended == 0) {
		unsigned id = 0;
		char what[64];

		while (id < r->n - 1 && r->chans[id].parked)
			id++;
		snprintf(what, sizeof(what), "did not reach SYNC %llu",
			 (unsigned long long)r->syncs + 1);
		return loader_timed_out(r, id, what, errp);
	}
	if (atomic_load(&r->failed) || r->parked < r->n) {
		bool early_end = !atomic_load(&r->failed);

		pthread_mutex_unlock(&r->lock);
		if (early_end)
			return mfd_error_set(errp, MFD_EPROTO,
					     "multifd: a channel ended before the sync the main stream "
					     "announced");
		return recv_error(r, errp);
	}
	r->parked = 0;
	for (unsigned i = 0; i < r->n; i++)
		r->chans[i].parked = false;
	r->release++;
	r->progress_ns = util_now_ns();
	pthread_cond_broadcast(&r->cond);
	dt = util_now_ns() - t0;
	r->syncs++;
	r->sync_ns_total += dt;
	if (dt > r->sync_ns_max)
		r->sync_ns_max = dt;
	pthread_mutex_unlock(&r->lock);
	return 0;
}

int multifd_recv_finish(struct mfd_multifd_recv *r, mfd_error **errp)
{
	bool expired = false;

	pthread_mutex_lock(&r->lock);
	/* The main stream ended: a channel at a SYNC now waits for nothing. */
	r->finishing = true;
	r->progress_ns = util_now_ns();
	pthread_cond_broadcast(&r->cond);
	while (r->ended < r->n && !atomic_load(&r->failed) && !expired)
		expired = !wait_progress(r);
	if (expired && r->ended < r->n && !atomic_load(&r->failed)) {
		unsigned id = 0;

		while (id < r->n - 1 && r->chans[id].ended)
			id++;
		/* Unlocks; the joins below see the failure. */
		loader_timed_out(r, id, "sent no END", NULL);
	} else {
		pthread_mutex_unlock(&r->lock);
	}
	for (unsigned i = 0; i < r->n; i++) {
		if (r->chans[i].thread_started)
			pthread_join(r->chans[i].thread, NULL);
		r->chans[i].thread_started = false;
	}
	if (atomic_load(&r->failed))
		return recv_error(r, errp);
	return 0;
}

void multifd_recv_cancel(struct mfd_multifd_recv *r)
{
	mfd_error *err = NULL;

	if (!r)
		return;
	mfd_error_set(&err, MFD_ECANCELED, "multifd: migration cancelled");
	recv_fail(r, err);
}

void multifd_recv_stats(struct mfd_multifd_recv *r, struct mfd_multifd_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&r->lock);
	st->channels = r->n;
	for (unsigned i = 0; i < r->n; i++)
		st->ch[i] = r->chans[i].stats;
	st->syncs = r->syncs;
	st->sync_ns_total = r->sync_ns_total;
	st->sync_ns_max = r->sync_ns_max;
	pthread_mutex_unlock(&r->lock);
}

void multifd_recv_free(struct mfd_multifd_recv *r)
{
	if (!r)
		return;
	bool running = false;

	for (unsigned i = 0; r->chans && i < r->n; i++)
		running |= r->chans[i].thread_started;
	if (running)
		multifd_recv_cancel(r);
	for (unsigned i = 0; r->chans && i < r->n; i++)
		if (r->chans[i].thread_started) {
			pthread_join(r->chans[i].thread, NULL);
			r->chans[i].thread_started = false;
		}
	for (unsigned i = 0; r->chans && i < r->n; i++) {
		struct recv_channel *c = &r->chans[i];

		if (r->cfg.codec && c->dctx)
			r->cfg.codec->recv_cleanup(c->dctx);
		free(c->offsets_wire);
		free(c->iov);
		free(c->cbuf);
	}
	free(r->chans);
	mfd_error_free(r->err);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
}
