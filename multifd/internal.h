/* SPDX-License-Identifier: MIT */
/*
 * The multifd core, as the migration engine uses it.
 *
 * Source: multifd_send_new() takes N connected channels, sends each its
 * hello unless the caller already did (the engine writes each hello as its
 * channel opens: cfg.hellos_sent) and starts one thread per channel.  The producer (the migration
 * thread) queues pages; full batches go to an idle channel.  sync flushes
 * every channel and puts a SYNC packet on each; finish ends the channels.
 *
 * Destination: multifd_recv_new(), then each incoming channel goes
 * through multifd_recv_identify() (reads and checks its hello; usable as
 * an mfd_listener_gather() callback), then multifd_recv_start().  Each
 * channel thread places pages and parks at every SYNC packet until the main
 * stream's loader calls multifd_recv_sync() at the matching marker.
 */
#ifndef MFD_MULTIFD_INTERNAL_H
#define MFD_MULTIFD_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <multifd/multifd.h>

#include "core/ramblock.h"
#include "core/wire.h"

enum mfd_zero_detect {
	MFD_ZERO_NONE = 0,	/* every page is sent as data */
	MFD_ZERO_LEGACY = 1,	/* the migration thread tests pages (main stream) */
	MFD_ZERO_MULTIFD = 2,	/* channel threads test pages (default) */
};

struct mfd_multifd_config {
	unsigned channels;			/* 1..255 */
	const mfd_compress_ops *codec;		/* NULL means "none" */
	int level;
	uint32_t packet_bytes;			/* page data per packet */
	enum mfd_zero_detect zero_detect;
	/* With a codec: each channel compresses only while that moves its
	 * pages sooner than sending them raw (send.c, codec_pays()). */
	bool adaptive_codec;
	/* zero-copy-send: pages leave with the transport's zero-copy send (no
	 * codec); header and offsets are copied; every SYNC and END waits for
	 * the transport to release the pages. */
	bool zero_copy;
	uint8_t uuid[MFD_UUID_LEN];
	uint8_t token[MFD_TOKEN_LEN];
	/* Destination: how long a channel parked at a SYNC waits for the main
	 * stream's marker, and the loader for the channels at a sync or at the
	 * end, while no channel makes progress; 0 waits until a cancel. */
	int64_t timeout_ms;
	/* The caller already wrote each channel's hello (multifd_hello_encode), e.g.
	 * right after its TLS handshake so the destination can identify it. */
	bool hellos_sent;
};

struct mfd_multifd_channel_stats {
	uint64_t packets, sync_packets;
	uint64_t normal_pages, zero_pages;
	uint64_t page_bytes;	/* bytes of page data the packets stand for */
	uint64_t normal_bytes;	/* of which normal (non-zero) pages */
	uint64_t wire_bytes;	/* bytes written or read, headers included */
	uint64_t raw_packets;	/* compressed codec, but sent raw (did not shrink) */
	uint64_t busy_ns;	/* time spent working (not waiting) */
	/* zero-copy-send (source). */
	uint64_t zc_bytes;	/* page bytes given to the zero-copy write */
	uint64_t zc_sends;	/* zero-copy sends the kernel completed */
	uint64_t zc_copied;	/* of which it copied after all */
	uint64_t zc_missed_syncs;	/* syncs that found a send copied */
	uint64_t zc_copy_bytes;	/* bytes copied since the kernel refused to pin */
	bool zc_refused;	/* the kernel refused to pin: this channel copies */
};

/* Sync rounds the source remembers for the switchover cost: the bulk
 * pass's slow rounds are gone after this many. */
#define SYNC_WINDOW 8

struct mfd_multifd_stats {
	unsigned channels;
	struct mfd_multifd_channel_stats ch[256];
	uint64_t syncs;
	uint64_t sync_ns_total, sync_ns_max;
	uint64_t sync_ns_recent;	/* source: the slowest of the last SYNC_WINDOW rounds */
};

/* Fill defaults: 2 channels, no codec, 512 KiB packets, multifd zero detection,
 * a 30 s wait timeout, a random UUID and token. */
int multifd_config_init(struct mfd_multifd_config *cfg, mfd_error **errp);

/* ---- source ------------------------------------------------------------ */

struct mfd_multifd_send;

/* Takes ownership of nothing: the channels stay the caller's and must outlive
 * the object.  Sends the hellos. */
int multifd_send_new(const struct mfd_multifd_config *cfg, const struct mfd_ram_block *blocks,
			 unsigned nblocks, mfd_channel **channels,
			 struct mfd_multifd_send **out, mfd_error **errp);
/* Queue one page (byte offset inside the block, page aligned). Producer thread only. */
int multifd_queue_page(struct mfd_multifd_send *s, unsigned block, uint64_t offset,
			   mfd_error **errp);
/* Send the pending batch, then a SYNC packet on every channel; returns once
 * every channel has written its SYNC. */
int multifd_send_sync(struct mfd_multifd_send *s, mfd_error **errp);
/* Send the pending batch, then an END packet on every channel (no SYNC: sync
 * first where the main stream needs a marker); joins the threads. */
int multifd_send_finish(struct mfd_multifd_send *s, mfd_error **errp);
/* Any thread: fail the sender (channels shut down, threads unblock). */
void multifd_send_cancel(struct mfd_multifd_send *s);
void multifd_send_stats(struct mfd_multifd_send *s, struct mfd_multifd_stats *st);
void multifd_send_free(struct mfd_multifd_send *s);

/* ---- destination -------------------------------------------------------- */

struct mfd_multifd_recv;

int multifd_recv_new(const struct mfd_multifd_config *cfg, const struct mfd_ram_block *blocks,
			 unsigned nblocks, struct mfd_multifd_recv **out, mfd_error **errp);
/* A receiver deferred (right after multifd_recv_new(), before any hello)
 * takes hellos of any block digest and gets its table from
 * multifd_recv_set_blocks(), before multifd_recv_start(): the destination
 * learns it from the source's RAM section.  set_blocks: MFD_EPROTO when a
 * hello named another table, MFD_ESTATE when not deferred or set already. */
void multifd_recv_defer_blocks(struct mfd_multifd_recv *r);
int multifd_recv_set_blocks(struct mfd_multifd_recv *r, const struct mfd_ram_block *blocks,
			    unsigned nblocks, mfd_error **errp);
/* Read and check a channel's hello; returns its channel id (>= 0) and keeps the
 * channel in that slot (still owned by the caller), or a negative code. */
int multifd_recv_identify(mfd_channel *ch, void *recv, mfd_error **errp);
/* The same; on failure *stray tells a connection that never showed this
 * session's UUID and token (nothing, junk, a foreign hello) from one of the
 * session's channels that failed. */
int multifd_recv_identify_screened(mfd_channel *ch, void *recv, bool *stray,
				   mfd_error **errp);
/* Start the threads once every channel was identified. */
int multifd_recv_start(struct mfd_multifd_recv *r, mfd_error **errp);
/* At the main stream's sync marker: wait until every channel parked at its SYNC
 * packet (every page sent before the sync is in place), then release them.
 * MFD_ETIMEDOUT after cfg.timeout_ms without progress (naming the channel). */
int multifd_recv_sync(struct mfd_multifd_recv *r, mfd_error **errp);
/* The main stream ended: wait until every channel received its END packet;
 * joins the threads.  A channel at a SYNC no marker released, or reaching one
 * now, is MFD_EPROTO ("multifd channel N (...): SYNC K was never matched by
 * the main stream"); cfg.timeout_ms without progress is MFD_ETIMEDOUT. */
int multifd_recv_finish(struct mfd_multifd_recv *r, mfd_error **errp);
/* When a channel failed on its own (bad peer data, a broken channel), that
 * failure, replacing *@errp: the cause of what the main stream saw after it
 * (the source hangs up once its channel breaks).  0 when none failed. */
int multifd_recv_root_cause(struct mfd_multifd_recv *r, mfd_error **errp);
void multifd_recv_cancel(struct mfd_multifd_recv *r);
void multifd_recv_stats(struct mfd_multifd_recv *r, struct mfd_multifd_stats *st);
void multifd_recv_free(struct mfd_multifd_recv *r);

/* ---- shared helpers ----------------------------------------------------- */

bool util_page_is_zero(const void *page, size_t len);

/* Destination: marks page @off of @b placed in its recvmap (there must be
 * one); returns whether it was placed before. */
static inline bool mfd_recvmap_test_and_set(const struct mfd_ram_block *b, uint64_t off)
{
	uint64_t p = off >> b->page_shift, bit = 1ull << (p % 64);

	return atomic_fetch_or_explicit(&b->recvmap[p / 64], bit, memory_order_relaxed) & bit;
}

/* Destination: page @off of @b was placed. */
static inline void mfd_page_placed(const struct mfd_ram_block *b, uint64_t off)
{
	if (b->recvmap)
		(void)mfd_recvmap_test_and_set(b, off);
}

/*
 * Destination: page @off of @b is a zero page.  One placed before during this
 * load is cleared.  One never placed (recvmap, dest-ram-zeroed) in a block
 * the VMM declared fresh (MFD_RAM_FRESH) still holds its initial zeroes and
 * is left alone, neither read nor allocated; in any other block (or without
 * a recvmap) it may hold what the VMM loaded there (firmware, a kernel), so
 * it is read and cleared only where it is not zero.
 */
static inline void mfd_page_place_zero(const struct mfd_ram_block *b, uint64_t off)
{
	uint8_t *host = b->host + off;
	bool clear;

	if (b->recvmap && mfd_recvmap_test_and_set(b, off))
		clear = true;
	else if (b->recvmap && (b->flags & MFD_RAM_FRESH))
		clear = false;
	else
		clear = !util_page_is_zero(host, b->page_size);
	if (clear)
		memset(host, 0, b->page_size);
}
/* Constant-time comparison: 0 when equal. */
int util_consttime_memcmp(const void *a, const void *b, size_t len);
void multifd_hello_encode(uint8_t out[MFD_HELLO_SIZE], const struct mfd_multifd_config *cfg,
		      uint16_t channel_id, uint64_t block_digest);

#endif /* MFD_MULTIFD_INTERNAL_H */
