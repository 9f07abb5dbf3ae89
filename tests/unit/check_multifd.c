/* SPDX-License-Identifier: MIT */
/*
 * multifd: transfers over 1..16 channels with every codec, the ordering
 * invariant across syncs, and the receiver's refusal of malformed hellos
 * and packets.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/channel.h"
#include "core/migration.h"
#include "core/util.h"
#include "multifd/internal.h"
#include "tests/lib/testcodec.h"
#include "tests/lib/testlib.h"

#define PS 4096u

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Zero, text-like and random pages. */
static void fill_mixed(uint8_t *ram, size_t size, size_t page, uint64_t seed)
{
	uint64_t s = seed * 2654435761u + 1;

	for (size_t p = 0; p < size / page; p++) {
		uint8_t *pg = ram + p * page;
		unsigned kind = (unsigned)(rng(&s) % 4);

		if (kind < 2)
			memset(pg, 0, page);
		else if (kind == 2)
			for (size_t i = 0; i < page; i++)
				pg[i] = (uint8_t)("migration text "[(i + p) % 15]);
		else
			for (size_t i = 0; i < page; i += 8) {
				uint64_t v = rng(&s);

				memcpy(pg + i, &v, 8);
			}
	}
}

static void *map(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

/* A source and a destination with the same blocks: "ram" (4 KiB pages) and
 * "huge" (2 MiB pages). */
struct rig {
	struct mfd_multifd_config cfg;
	mfd_migration *src, *dst;
	uint8_t *sram, *dram, *shuge, *dhuge;
	size_t ram_size, huge_size;
	mfd_channel *a[256], *b[256];
	struct mfd_multifd_send *send;
	struct mfd_multifd_recv *recv;
};

static void rig_init(struct rig *g, unsigned channels, const char *codec, size_t ram_mib,
		     uint32_t packet_bytes)
{
	mfd_error *err = NULL;

	memset(g, 0, sizeof(*g));
	ck_assert_ok(multifd_config_init(&g->cfg, &err), err);
	g->cfg.channels = channels;
	g->cfg.packet_bytes = packet_bytes;
	if (codec && strcmp(codec, "none") != 0) {
		g->cfg.codec = mfd_compress_find(codec);
		ck_assert_ptr_nonnull(g->cfg.codec);
		g->cfg.level = g->cfg.codec->level_default;
	}
	g->ram_size = ram_mib << 20;
	g->huge_size = 4u << 21;
	g->sram = map(g->ram_size);
	g->dram = map(g->ram_size);
	g->shuge = map(g->huge_size);
	g->dhuge = map(g->huge_size);
	ck_assert_ok(mfd_migration_new(&g->src, &err), err);
	ck_assert_ok(mfd_migration_new(&g->dst, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->src, "ram", g->sram, g->ram_size, PS, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->src, "huge", g->shuge, g->huge_size, 2u << 20, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->dst, "ram", g->dram, g->ram_size, PS, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->dst, "huge", g->dhuge, g->huge_size, 2u << 20, &err), err);
	for (unsigned i = 0; i < channels; i++) {
		ck_assert_ok(mfd_channel_socketpair(&g->a[i], &g->b[i], &err), err);
		/* No test may hang CI: a stuck channel fails after 20 s. */
		mfd_channel_set_option(g->a[i], "timeout-ms", 20000, NULL);
		mfd_channel_set_option(g->b[i], "timeout-ms", 20000, NULL);
	}
}

/* Hellos out, identified in reverse order (ids, not arrival, pick the slots). */
static void rig_connect(struct rig *g)
{
	mfd_error *err = NULL;

	ck_assert_ok(multifd_send_new(&g->cfg, g->src->blocks, g->src->nblocks, g->a, &g->send,
					  &err), err);
	ck_assert_ok(multifd_recv_new(&g->cfg, g->dst->blocks, g->dst->nblocks, &g->recv, &err),
		     err);
	for (unsigned k = g->cfg.channels; k-- > 0;) {
		int id = multifd_recv_identify(g->b[k], g->recv, &err);

		ck_assert_msg(id == (int)k, "identify: %d: %s", id, mfd_error_message(err));
	}
	ck_assert_ok(multifd_recv_start(g->recv, &err), err);
}

static void rig_free(struct rig *g)
{
	multifd_send_free(g->send);
	multifd_recv_free(g->recv);
	for (unsigned i = 0; i < g->cfg.channels; i++) {
		mfd_channel_free(g->a[i]);
		mfd_channel_free(g->b[i]);
	}
	mfd_migration_free(g->src);
	mfd_migration_free(g->dst);
	munmap(g->sram, g->ram_size);
	munmap(g->dram, g->ram_size);
	munmap(g->shuge, g->huge_size);
	munmap(g->dhuge, g->huge_size);
}

/* The source side of a run: epochs of page sets, a sync after each. */
struct plan {
	struct rig *g;
	unsigned epochs;
	uint64_t seed;
	bool rewrite;		/* change the pages before each epoch */
	int result;
	mfd_error *err;
};

static void *source(void *arg)
{
	struct plan *p = arg;
	struct rig *g = p->g;
	uint64_t s = p->seed | 1;
	size_t npages = g->ram_size / PS;
	uint8_t *sent = calloc(npages, 1);

	for (unsigned e = 0; e < p->epochs && p->result == 0; e++) {
		memset(sent, 0, npages);
		/* A random subset, in random order: pages of one epoch land on any channel. */
		for (size_t k = 0; k < npages && p->result == 0; k++) {
			size_t pg = (size_t)(rng(&s) % npages);

			if (sent[pg] || (e > 0 && rng(&s) % 3))
				continue;
			sent[pg] = 1;
			if (p->rewrite)
				memset(g->sram + pg * PS, (int)(e * 37 + pg) | 1, 64);
			p->result = multifd_queue_page(g->send, 0, pg * PS, &p->err);
		}
		if (e == 0)
			for (uint64_t off = 0; off < g->huge_size && p->result == 0; off += 2u << 20)
				p->result = multifd_queue_page(g->send, 1, off, &p->err);
		if (p->result == 0)
			p->result = multifd_send_sync(g->send, &p->err);
	}
	/* Whatever was not sent in epoch 0 goes now, so the final images match. */
	for (size_t pg = 0; pg < npages && p->result == 0; pg++)
		if (!sent[pg])
			p->result = multifd_queue_page(g->send, 0, pg * PS, &p->err);
	if (p->result == 0)
		p->result = multifd_send_finish(g->send, &p->err);
	free(sent);
	return NULL;
}

static void run_transfer(struct rig *g, unsigned epochs, uint64_t seed, bool rewrite)
{
	struct plan p = { .g = g, .epochs = epochs, .seed = seed, .rewrite = rewrite };
	mfd_error *err = NULL;
	pthread_t t;

	rig_connect(g);
	ck_assert_int_eq(pthread_create(&t, NULL, source, &p), 0);
	/* The main-stream loader's part: one release per sync. */
	for (unsigned e = 0; e < epochs; e++) {
		int r = multifd_recv_sync(g->recv, &err);

		ck_assert_msg(r == 0, "sync %u: %s", e, mfd_error_message(err));
	}
	ck_assert_ok(multifd_recv_finish(g->recv, &err), err);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_ok(p.result, p.err);
}

static const char *const codecs[] = { "none", "zlib", "zstd", "lz4" };
static const unsigned channel_counts[] = { 1, 2, 4, 16 };

START_TEST(transfer_matrix)
{
	const char *codec = codecs[_i / 4];
	unsigned channels = channel_counts[_i % 4];
	struct rig g;
	struct mfd_multifd_stats st;
	uint64_t zero = 0, normal = 0;

	if (strcmp(codec, "none") != 0 && !mfd_compress_find(codec)) {
		test_skip("codec", "multifd transfer: codec %s not built in", codec);
		return;
	}
	rig_init(&g, channels, codec, 16, 512u << 10);
	fill_mixed(g.sram, g.ram_size, PS, 7 + (uint64_t)_i);
	fill_mixed(g.shuge, g.huge_size, 2u << 20, 99);
	run_transfer(&g, 1, 42 + (uint64_t)_i, false);
	ck_assert_msg(memcmp(g.sram, g.dram, g.ram_size) == 0, "%s x %u: RAM differs", codec,
		      channels);
	ck_assert_msg(memcmp(g.shuge, g.dhuge, g.huge_size) == 0, "%s x %u: huge block differs",
		      codec, channels);
	multifd_recv_stats(g.recv, &st);
	ck_assert_uint_eq(st.channels, channels);
	for (unsigned i = 0; i < channels; i++) {
		zero += st.ch[i].zero_pages;
		normal += st.ch[i].normal_pages;
	}
	ck_assert_uint_eq(zero + normal, g.ram_size / PS + g.huge_size / (2u << 20));
	ck_assert_uint_gt(zero, g.ram_size / PS / 4);	/* about half the pages are zero */
	multifd_send_stats(g.send, &st);
	ck_assert_uint_eq(st.syncs, 1);
	if (strcmp(codec, "none") != 0) {
		uint64_t wire = 0, page = 0;

		for (unsigned i = 0; i < channels; i++) {
			wire += st.ch[i].wire_bytes;
			page += st.ch[i].page_bytes;
		}
		ck_assert_msg(wire < page / 2, "%s: %llu wire bytes for %llu page bytes", codec,
			      (unsigned long long)wire, (unsigned long long)page);
	}
	rig_free(&g);
}
END_TEST

/*
 * Pages rewritten between syncs and re-sent on whatever channel is free: the
 * destination must end with the newest contents, never an older copy that
 * travelled on a slower channel.  One page per packet maximises interleaving.
 */
START_TEST(ordering_across_syncs)
{
	for (uint64_t seed = 1; seed <= 12; seed++) {
		struct rig g;

		rig_init(&g, 1 + (unsigned)(seed % 8), seed % 3 ? "none" : "lz4", 2, PS);
		if (g.cfg.codec == NULL && seed % 3 == 0) {
			rig_free(&g);
			continue;
		}
		fill_mixed(g.sram, g.ram_size, PS, seed);
		run_transfer(&g, 6, seed, true);
		ck_assert_msg(memcmp(g.sram, g.dram, g.ram_size) == 0,
			      "seed %llu: a stale page overwrote a newer one",
			      (unsigned long long)seed);
		rig_free(&g);
	}
}
END_TEST

START_TEST(zero_detection_off_sends_every_page)
{
	struct rig g;
	struct mfd_multifd_stats st;

	rig_init(&g, 2, "none", 4, 512u << 10);
	g.cfg.zero_detect = MFD_ZERO_NONE;
	memset(g.dram, 0xee, g.ram_size);	/* the destination must be overwritten */
	run_transfer(&g, 1, 3, false);
	ck_assert_int_eq(memcmp(g.sram, g.dram, g.ram_size), 0);
	multifd_send_stats(g.send, &st);
	ck_assert_uint_eq(st.ch[0].zero_pages + st.ch[1].zero_pages, 0);
	rig_free(&g);
}
END_TEST

START_TEST(zero_pages_overwrite_stale_destination_data)
{
	struct rig g;

	rig_init(&g, 3, "none", 4, 64u << 10);
	memset(g.dram, 0x5a, g.ram_size);	/* stale data where the source has zeros */
	run_transfer(&g, 1, 5, false);
	ck_assert_int_eq(memcmp(g.sram, g.dram, g.ram_size), 0);
	rig_free(&g);
}
END_TEST

START_TEST(zero_page_scan)
{
	static uint8_t page[2u << 20] __attribute__((aligned(64)));

	ck_assert(util_page_is_zero(page, sizeof(page)));
	ck_assert(util_page_is_zero(page, 4096));
	for (size_t pos = 0; pos < 4096; pos += 97) {
		page[pos] = 1;
		ck_assert_msg(!util_page_is_zero(page, 4096), "byte %zu missed", pos);
		page[pos] = 0;
	}
	page[4095] = 0x80;
	ck_assert(!util_page_is_zero(page, 4096));
	page[4095] = 0;
	page[(2u << 20) - 1] = 1;
	ck_assert(!util_page_is_zero(page, sizeof(page)));
	ck_assert(util_page_is_zero(page, 100));
	page[99] = 1;
	ck_assert(!util_page_is_zero(page, 100));
}
END_TEST

START_TEST(cancel_unblocks_both_sides)
{
	struct rig g;
	mfd_error *err = NULL;

	rig_init(&g, 4, "none", 4, 512u << 10);
	rig_connect(&g);
	/* Queue more than the sockets hold while nobody releases syncs. */
	ck_assert_ok(multifd_send_sync(g.send, &err), err);
	multifd_recv_cancel(g.recv);
	multifd_send_cancel(g.send);
	ck_assert_int_eq(multifd_queue_page(g.send, 0, 0, &err), MFD_ECANCELED);
	ck_assert_mfd_error(err, MFD_ECANCELED, "cancelled");
	ck_assert_int_eq(multifd_recv_finish(g.recv, &err), MFD_ECANCELED);
	mfd_error_free(err);
	rig_free(&g);
}
END_TEST

START_TEST(source_refuses_bad_pages)
{
	struct rig g;
	mfd_error *err = NULL;

	rig_init(&g, 1, "none", 1, 512u << 10);
	rig_connect(&g);
	ck_assert_int_eq(multifd_queue_page(g.send, 2, 0, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "block index 2, there are 2");
	ck_assert_int_eq(multifd_queue_page(g.send, 0, 100, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "offset 0x64 is not a page of block 'ram'");
	ck_assert_int_eq(multifd_queue_page(g.send, 0, g.ram_size, &err), MFD_EINVAL);
	mfd_error_free(err);
	multifd_send_cancel(g.send);
	multifd_recv_cancel(g.recv);
	rig_free(&g);
}
END_TEST


/* ---- a VMM's own codec ------------------------------------------------------------ */

/* Registers @ops once: test-rle under @name with @prep as its compressor. */
static void register_variant(mfd_compress_ops *ops, const char *name,
			     int (*prep)(void *, const void *, size_t, void *, size_t, size_t *,
					 mfd_error **))
{
	mfd_error *err = NULL;

	if (mfd_compress_find(name))
		return;
	*ops = test_rle_ops;
	ops->name = name;
	ops->send_prepare = prep;
	ck_assert_ok(mfd_compress_register(ops, &err), err);
}

/*
 * "test-count": test-rle, counting what the sender asks of it: whole packets
 * of incompressible input, and probes (inputs smaller than a packet).
 */
static atomic_uint count_full_random, count_probes;

static bool all_same(const uint8_t *p, size_t len)
{
	for (size_t i = 1; i < len; i++)
		if (p[i] != p[0])
			return false;
	return true;
}

static int count_send_prepare(void *ctx, const void *in, size_t in_len, void *out, size_t out_cap,
			      size_t *out_len, mfd_error **errp)
{
	if (in_len < (512u << 10))
		atomic_fetch_add(&count_probes, 1);
	else if (!all_same(in, in_len))
		atomic_fetch_add(&count_full_random, 1);
	return test_rle_ops.send_prepare(ctx, in, in_len, out, out_cap, out_len, errp);
}


struct in_order {
	struct rig *g;
	int result;
	mfd_error *err;
};

/* Every page of "ram" in ascending order, one sync, the end. */
static void *queue_in_order(void *arg)
{
	struct in_order *o = arg;

	for (uint64_t off = 0; off < o->g->ram_size && o->result == 0; off += PS)
		o->result = multifd_queue_page(o->g->send, 0, off, &o->err);
	if (o->result == 0)
		o->result = multifd_send_sync(o->g->send, &o->err);
	if (o->result == 0)
		o->result = multifd_send_finish(o->g->send, &o->err);
	return NULL;
}

/* Connects the rig, sends "ram" in order and checks that it arrived. */
static void transfer_in_order(struct rig *g)
{
	struct in_order o = { .g = g };
	mfd_error *err = NULL;
	pthread_t t;

	rig_connect(g);
	ck_assert_int_eq(pthread_create(&t, NULL, queue_in_order, &o), 0);
	ck_assert_ok(multifd_recv_sync(g->recv, &err), err);
	ck_assert_ok(multifd_recv_finish(g->recv, &err), err);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_ok(o.result, o.err);
	ck_assert_int_eq(memcmp(g->sram, g->dram, g->ram_size), 0);
}

/* "test-slow": test-rle taking 20 ms per call, a codec far slower than a
 * socketpair. */
static int slow_send_prepare(void *ctx, const void *in, size_t in_len, void *out, size_t out_cap,
			     size_t *out_len, mfd_error **errp)
{
	usleep(20 * 1000);
	return test_rle_ops.send_prepare(ctx, in, in_len, out, out_cap, out_len, errp);
}

/* A link of about @rate bytes/s between @from and @to, until @from ends. */
struct slow_link {
	mfd_channel *from, *to;
	double rate;
};

static void *relay(void *arg)
{
	struct slow_link *l = arg;
	size_t chunk = 64u << 10;
	uint8_t *buf = malloc(chunk);

	ck_assert_ptr_nonnull(buf);
	for (;;) {
		ssize_t n = channel_read_some(l->from, buf, chunk, NULL);
		struct iovec iov = { buf, (size_t)(n > 0 ? n : 0) };

		if (n <= 0 || channel_writev_full(l->to, &iov, 1, NULL) < 0)
			break;
		usleep((useconds_t)((double)n / l->rate * 1e6));
	}
	free(buf);
	return NULL;
}

/* 128 packets of constant (compressible) pages on one channel: the share of
 * packets compressed, with adaptive compression on or off, over a
 * socketpair or a link slowed down to @rate bytes/s (0 = not slowed). */
static double compressed_share(const char *codec, bool adaptive, double rate, size_t mib)
{
	struct rig g;
	struct mfd_multifd_stats st;
	struct slow_link link = { .rate = rate };
	mfd_channel *near = NULL;
	mfd_error *err = NULL;
	pthread_t lt;
	double share;

	rig_init(&g, 1, codec, mib, 512u << 10);
	g.cfg.adaptive_codec = adaptive;
	for (size_t p = 0; p < g.ram_size / PS; p++)
		memset(g.sram + p * PS, (int)(p % 200) + 1, PS);
	if (rate > 0) {
		/* source -> a[0] ~ link.from -> relay -> link.to ~ b[0] -> destination */
		link.from = g.b[0];
		ck_assert_ok(mfd_channel_socketpair(&link.to, &near, &err), err);
		mfd_channel_set_option(near, "timeout-ms", 20000, NULL);
		g.b[0] = near;
		ck_assert_int_eq(pthread_create(&lt, NULL, relay, &link), 0);
	}
	transfer_in_order(&g);
	multifd_send_stats(g.send, &st);
	share = (double)(st.ch[0].packets - st.ch[0].raw_packets) / (double)st.ch[0].packets;
	printf("multifd adaptive %s: %s, %s: %.2f of %llu packets compressed\n",
	       adaptive ? "on" : "off", codec, rate > 0 ? "slow link" : "socketpair", share,
	       (unsigned long long)st.ch[0].packets);
	if (rate > 0) {
		mfd_channel_shutdown(link.from);
		ck_assert_int_eq(pthread_join(lt, NULL), 0);
		mfd_channel_free(link.from);
		mfd_channel_free(link.to);
	}
	rig_free(&g);
	return share;
}

/* "test-failprobe": test-rle that fails on anything smaller than a packet,
 * that is on the probes the sender makes of incompressible memory. */
static int failprobe_send_prepare(void *ctx, const void *in, size_t in_len, void *out,
				  size_t out_cap, size_t *out_len, mfd_error **errp)
{
	if (in_len < (512u << 10))
		return mfd_error_set(errp, MFD_EIO, "test-failprobe: probe of %zu bytes refused",
				     in_len);
	return test_rle_ops.send_prepare(ctx, in, in_len, out, out_cap, out_len, errp);
}

/* A codec failing on a probe fails the channel with the codec's own message,
 * with adaptive compression on and off (each path has its probe). */
START_TEST(a_failing_probe_fails_the_sender)
{
	static mfd_compress_ops failprobe;
	uint64_t s = 5;

	register_variant(&failprobe, "test-failprobe", failprobe_send_prepare);
	for (int adaptive = 0; adaptive < 2; adaptive++) {
		struct rig g;
		struct in_order o;
		mfd_error *err = NULL;
		pthread_t t;

		rig_init(&g, 1, "test-failprobe", 16, 512u << 10);
		g.cfg.adaptive_codec = adaptive;
		o = (struct in_order){ .g = &g };
		/* Random pages: the first packet does not shrink, so the next
		 * attempts at the codec are probes (adaptive: after one raw packet
		 * to learn its cost, within 8 packets). */
		for (size_t i = 0; i < g.ram_size; i += 8) {
			uint64_t v = rng(&s);

			memcpy(g.sram + i, &v, 8);
		}
		rig_connect(&g);
		ck_assert_int_eq(pthread_create(&t, NULL, queue_in_order, &o), 0);
		(void)multifd_recv_sync(g.recv, &err);
		mfd_error_free(err);
		err = NULL;
		multifd_recv_cancel(g.recv);
		ck_assert_int_eq(pthread_join(t, NULL), 0);
		ck_assert_msg(o.result == MFD_EIO, "adaptive %d: sender result %d", adaptive,
			      o.result);
		ck_assert_msg(strstr(mfd_error_message(o.err), "multifd channel 0"), "%s",
			      mfd_error_message(o.err));
		ck_assert_mfd_error(o.err, MFD_EIO, "test-failprobe: probe of 16384 bytes refused");
		rig_free(&g);
	}
}
END_TEST

/*
 * Adaptive compression sends raw where the codec is slower than the link
 * (a 20 ms-per-packet codec on a socketpair) and compresses where the link
 * is slower than the codec (RLE at memory speed over an 8 MiB/s link).
 * Off, every packet that shrinks is compressed.
 */
START_TEST(adaptive_compression_follows_the_link)
{
	static mfd_compress_ops slow;
	double share;

	register_variant(&slow, "test-slow", slow_send_prepare);
	if (!mfd_compress_find("test-rle")) {
		mfd_error *err = NULL;

		ck_assert_ok(mfd_compress_register(&test_rle_ops, &err), err);
	}
	share = compressed_share("test-slow", false, 0, 16);
	ck_assert_msg(share == 1.0, "adaptive off: %.2f of the packets compressed", share);
	share = compressed_share("test-slow", true, 0, 64);
	ck_assert_msg(share < 0.25, "slow codec, fast link: %.2f of the packets compressed",
		      share);
	share = compressed_share("test-rle", true, 8 << 20, 32);
	ck_assert_msg(share > 0.75, "fast codec, 8 MiB/s link: only %.2f of the packets "
		      "compressed", share);
}
END_TEST

/*
 * 96 packets of random pages, then 32 of constant ones, on one channel with
 * a codec.  Random packets go raw; after the first one the codec only sees
 * small probes, never a whole random packet again; once the memory turns
 * compressible a probe notices and the packets are compressed again.
 */
START_TEST(incompressible_memory_costs_probes_only)
{
	struct rig g;
	struct mfd_multifd_stats st;
	uint64_t s = 77;
	size_t split = 96 * (512u << 10);

	static mfd_compress_ops counting;

	register_variant(&counting, "test-count", count_send_prepare);
	atomic_store(&count_full_random, 0);
	atomic_store(&count_probes, 0);
	rig_init(&g, 1, "test-count", 64, 512u << 10);
	for (size_t i = 0; i < split; i += 8) {
		uint64_t v = rng(&s);

		memcpy(g.sram + i, &v, 8);
	}
	memset(g.sram + split, 0x5a, g.ram_size - split);
	transfer_in_order(&g);

	multifd_send_stats(g.send, &st);
	ck_assert_uint_eq(st.ch[0].packets, 128);
	ck_assert_msg(atomic_load(&count_full_random) == 1,
		      "the codec compressed %u whole random packets; only the first should be",
		      atomic_load(&count_full_random));
	ck_assert_uint_ge(atomic_load(&count_probes), 4);
	ck_assert_uint_ge(st.ch[0].raw_packets, 96);
	ck_assert_msg(st.ch[0].packets - st.ch[0].raw_packets >= 16,
		      "only %llu of 32 compressible packets were compressed",
		      (unsigned long long)(st.ch[0].packets - st.ch[0].raw_packets));
	rig_free(&g);
}
END_TEST

START_TEST(custom_codec_migrates)
{
	struct rig g;
	struct mfd_multifd_stats st;
	mfd_error *err = NULL;
	uint64_t compressed_bytes = 0, page_bytes = 0;
	unsigned sends, recvs;

	if (!mfd_compress_find("test-rle"))
		ck_assert_ok(mfd_compress_register(&test_rle_ops, &err), err);
	sends = atomic_load(&test_rle_state.send_setups);
	recvs = atomic_load(&test_rle_state.recv_setups);
	rig_init(&g, 2, "test-rle", 4, 512u << 10);
	/* Constant non-zero pages shrink under RLE; a few random ones do not. */
	for (size_t p = 0; p < g.ram_size / PS; p++)
		memset(g.sram + p * PS, (int)(p % 251) + 1, PS);
	fill_mixed(g.sram, 64 * PS, PS, 5);
	run_transfer(&g, 2, 11, false);
	ck_assert_int_eq(memcmp(g.sram, g.dram, g.ram_size), 0);
	multifd_send_stats(g.send, &st);
	for (unsigned i = 0; i < 2; i++) {
		compressed_bytes += st.ch[i].wire_bytes;
		page_bytes += st.ch[i].page_bytes;
	}
	ck_assert_msg(compressed_bytes * 10 < page_bytes, "RLE did not shrink: %llu of %llu",
		      (unsigned long long)compressed_bytes, (unsigned long long)page_bytes);
	/* Each channel's contexts came from setups given the codec's opaque. */
	ck_assert_uint_ge(atomic_load(&test_rle_state.send_setups), sends + 2);
	ck_assert_uint_ge(atomic_load(&test_rle_state.recv_setups), recvs + 2);
	rig_free(&g);
}
END_TEST

/* ---- untrusted input: hellos -------------------------------------------------- */

struct bad_rig {
	struct mfd_multifd_config cfg;
	mfd_migration *m;
	uint8_t *ram;
	uint64_t digest;
};

static void bad_rig_init(struct bad_rig *br, unsigned channels, const char *codec)
{
	mfd_error *err = NULL;

	memset(br, 0, sizeof(*br));
	ck_assert_ok(multifd_config_init(&br->cfg, &err), err);
	br->cfg.channels = channels;
	if (codec)
		br->cfg.codec = mfd_compress_find(codec);
	br->ram = map(64 * PS);
	ck_assert_ok(mfd_migration_new(&br->m, &err), err);
	ck_assert_ok(mfd_ram_block_add(br->m, "ram", br->ram, 64 * PS, PS, &err), err);
	br->digest = ram_blocks_digest(br->m->blocks, br->m->nblocks);
}

static void bad_rig_free(struct bad_rig *br)
{
	mfd_migration_free(br->m);
	munmap(br->ram, 64 * PS);
}

enum hello_mut {
	HM_MAGIC, HM_VERSION0, HM_VERSION2, HM_FLAGS, HM_COUNT, HM_ID_EQ_COUNT, HM_ID_MAX,
	HM_PACKET, HM_RES20, HM_RES112, HM_RES127, HM_CODEC_LEN0, HM_CODEC_LEN32,
	HM_CODEC_LEN255, HM_CODEC_OTHER, HM_CODEC_TAIL, HM_CODEC_NUL, HM_UUID, HM_TOKEN_FIRST,
	HM_TOKEN_LAST, HM_DIGEST, HM_CUT0, HM_CUT1, HM_CUT64, HM_CUT127, HM_COUNT_ALL
};

static const struct {
	int code;
	const char *msg;
} hello_cases[HM_COUNT_ALL] = {
	[HM_MAGIC] = { MFD_EBADMAGIC, "magic 0x4d464449, expected 0x4d464448" },
	[HM_VERSION0] = { MFD_EBADVERSION, "version 0, this library speaks 1" },
	[HM_VERSION2] = { MFD_EBADVERSION, "version 2, this library speaks 1" },
	[HM_FLAGS] = { MFD_EPROTO, "unknown flags 0x00000100" },
	[HM_COUNT] = { MFD_EPROTO, "the source uses 5 channels, this side expects 4" },
	[HM_ID_EQ_COUNT] = { MFD_EPROTO, "channel id 4, valid ids are 0..3" },
	[HM_ID_MAX] = { MFD_EPROTO, "channel id 65535, valid ids are 0..3" },
	[HM_PACKET] = { MFD_EPROTO, "packet size 1048576, this side uses 524288" },
	[HM_RES20] = { MFD_EPROTO, "reserved bytes are not zero" },
	[HM_RES112] = { MFD_EPROTO, "reserved bytes are not zero" },
	[HM_RES127] = { MFD_EPROTO, "reserved bytes are not zero" },
	[HM_CODEC_LEN0] = { MFD_EPROTO, "codec name length 0 is outside 1..31" },
	[HM_CODEC_LEN32] = { MFD_EPROTO, "codec name length 32 is outside 1..31" },
	[HM_CODEC_LEN255] = { MFD_EPROTO, "codec name length 255" },
	[HM_CODEC_OTHER] = { MFD_EPROTO, "the source compresses with 'zstd', this side expects 'none'" },
	[HM_CODEC_TAIL] = { MFD_EPROTO, "bytes after the codec name are not zero" },
	[HM_CODEC_NUL] = { MFD_EPROTO, "the codec name contains a NUL byte" },
	[HM_UUID] = { MFD_EPROTO, "belongs to another migration (session UUID differs)" },
	[HM_TOKEN_FIRST] = { MFD_EPROTO, "presents a wrong session token" },
	[HM_TOKEN_LAST] = { MFD_EPROTO, "presents a wrong session token" },
	[HM_DIGEST] = { MFD_EPROTO, "the RAM block tables differ" },
	[HM_CUT0] = { MFD_EEOF, "end of data after 0 of 128 bytes" },
	[HM_CUT1] = { MFD_EEOF, "end of data after 1 of 128 bytes" },
	[HM_CUT64] = { MFD_EEOF, "end of data after 64 of 128 bytes" },
	[HM_CUT127] = { MFD_EEOF, "end of data after 127 of 128 bytes" },
};

START_TEST(bad_hello)
{
	struct bad_rig br;
	struct mfd_multifd_recv *r = NULL;
	uint8_t h[MFD_HELLO_SIZE];
	size_t len = sizeof(h);
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;

	bad_rig_init(&br, 4, NULL);
	multifd_hello_encode(h, &br.cfg, 1, br.digest);
	switch (_i) {
	case HM_MAGIC: h[3] ^= 1; break;
	case HM_VERSION0: store_be32(h + 4, 0); break;
	case HM_VERSION2: store_be32(h + 4, 2); break;
	case HM_FLAGS: store_be32(h + 8, 0x100); break;
	case HM_COUNT: store_be16(h + 14, 5); break;
	case HM_ID_EQ_COUNT: store_be16(h + 12, 4); break;
	case HM_ID_MAX: store_be16(h + 12, 0xffff); break;
	case HM_PACKET: store_be32(h + 16, 1u << 20); break;
	case HM_RES20: h[23] = 1; break;
	case HM_RES112: h[112] = 1; break;
	case HM_RES127: h[127] = 1; break;
	case HM_CODEC_LEN0: h[80] = 0; break;
	case HM_CODEC_LEN32: h[80] = 32; break;
	case HM_CODEC_LEN255: h[80] = 255; break;
	case HM_CODEC_OTHER: h[80] = 4; memcpy(h + 81, "zstd", 4); break;
	case HM_CODEC_TAIL: h[100] = 'x'; break;
	case HM_CODEC_NUL: h[80] = 5; break;	/* "none" + its NUL pad counted in */
	case HM_UUID: h[40] ^= 0x10; break;
	case HM_TOKEN_FIRST: h[48] ^= 1; break;
	case HM_TOKEN_LAST: h[79] ^= 0x80; break;
	case HM_DIGEST: h[31] ^= 1; break;
	case HM_CUT0: len = 0; break;
	case HM_CUT1: len = 1; break;
	case HM_CUT64: len = 64; break;
	case HM_CUT127: len = 127; break;
	}
	ck_assert_ok(multifd_recv_new(&br.cfg, br.m->blocks, br.m->nblocks, &r, &err), err);
	ck_assert_ok(mfd_channel_new_mem_reader(h, len, &ch, &err), err);
	int rc = multifd_recv_identify(ch, r, &err);

	ck_assert_msg(rc == hello_cases[_i].code, "case %d: got %d: %s", _i, rc,
		      mfd_error_message(err));
	ck_assert_mfd_error(err, hello_cases[_i].code, hello_cases[_i].msg);
	mfd_channel_free(ch);
	multifd_recv_free(r);
	bad_rig_free(&br);
}
END_TEST

START_TEST(duplicate_channel_id_and_early_start)
{
	struct bad_rig br;
	struct mfd_multifd_recv *r = NULL;
	uint8_t h[MFD_HELLO_SIZE];
	mfd_channel *c1 = NULL, *c2 = NULL;
	mfd_error *err = NULL;

	bad_rig_init(&br, 2, NULL);
	multifd_hello_encode(h, &br.cfg, 1, br.digest);
	ck_assert_ok(multifd_recv_new(&br.cfg, br.m->blocks, br.m->nblocks, &r, &err), err);
	ck_assert_ok(mfd_channel_new_mem_reader(h, sizeof(h), &c1, &err), err);
	ck_assert_ok(mfd_channel_new_mem_reader(h, sizeof(h), &c2, &err), err);
	ck_assert_int_eq(multifd_recv_identify(c1, r, &err), 1);
	ck_assert_int_eq(multifd_recv_identify(c2, r, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "channel id 1 is already connected");
	ck_assert_int_eq(multifd_recv_start(r, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "1 of 2 channels identified");
	multifd_recv_free(r);
	mfd_channel_free(c1);
	mfd_channel_free(c2);
	bad_rig_free(&br);
}
END_TEST

/* ---- untrusted input: packets ---------------------------------------------------- */

static void pkt(struct bytes *b, uint16_t flags, uint32_t block, uint32_t nn, uint32_t nz,
		uint32_t payload, uint64_t num)
{
	b_be32(b, MFD_PACKET_MAGIC);
	b_be16(b, MFD_PACKET_VERSION);
	b_be16(b, flags);
	b_be32(b, block);
	b_be32(b, nn);
	b_be32(b, nz);
	b_be32(b, payload);
	b_be64(b, num);
}

/* A valid data packet: pages at the given indexes, normal ones filled with `fill`. */
static void data_pkt(struct bytes *b, uint64_t num, const uint32_t *normal, uint32_t nn,
		     const uint32_t *zero, uint32_t nz, uint8_t fill)
{
	static uint8_t page[PS];

	pkt(b, 0, 0, nn, nz, nn * PS, num);
	for (uint32_t i = 0; i < nn; i++)
		b_be64(b, (uint64_t)normal[i] * PS);
	for (uint32_t i = 0; i < nz; i++)
		b_be64(b, (uint64_t)zero[i] * PS);
	memset(page, fill, sizeof(page));
	for (uint32_t i = 0; i < nn; i++)
		b_raw(b, page, PS);
}

/*
 * Run the receiver on one channel fed with hello + `b`.  The loader's part is
 * played by releasing every sync; returns the first error.
 */
static int feed(struct bad_rig *br, const struct bytes *b, mfd_error **errp)
{
	struct mfd_multifd_recv *r = NULL;
	mfd_channel *ch = NULL;
	struct bytes all = { 0 };
	uint8_t h[MFD_HELLO_SIZE];
	int rc;

	multifd_hello_encode(h, &br->cfg, 0, br->digest);
	b_raw(&all, h, sizeof(h));
	b_raw(&all, b->p, b->len);
	ck_assert_ok(multifd_recv_new(&br->cfg, br->m->blocks, br->m->nblocks, &r, errp), *errp);
	ck_assert_ok(mfd_channel_new_mem_reader(all.p, all.len, &ch, errp), *errp);
	ck_assert_int_eq(multifd_recv_identify(ch, r, errp), 0);
	ck_assert_ok(multifd_recv_start(r, errp), *errp);
	do
		rc = multifd_recv_sync(r, errp);
	while (rc == 0);
	mfd_error_free(*errp);
	*errp = NULL;
	rc = multifd_recv_finish(r, errp);
	multifd_recv_free(r);
	mfd_channel_free(ch);
	b_free(&all);
	return rc;
}

static const uint32_t one[] = { 3 };

struct pkt_case {
	const char *name;
	int code;
	const char *msg;
};

static const struct pkt_case pkt_cases[] = {
	/* 0 */ { "bad magic", MFD_EBADMAGIC, "packet after #0: magic 0x4d464451, expected 0x4d464450" },
	{ "version 0", MFD_EBADVERSION, "packet 1: version 0, this library reads 1" },
	{ "version 2", MFD_EBADVERSION, "packet 1: version 2" },
	{ "unknown flag 0x8", MFD_EPROTO, "packet 1: unknown flags 0x0008" },
	{ "unknown flag 0x8000", MFD_EPROTO, "unknown flags 0x8000" },
	/* 5 */ { "SYNC with pages", MFD_EPROTO, "packet 1: a SYNC packet carries pages or other flags" },
	{ "SYNC with payload", MFD_EPROTO, "a SYNC packet carries pages" },
	{ "SYNC with a block", MFD_EPROTO, "a SYNC packet carries pages" },
	{ "SYNC and END", MFD_EPROTO, "a SYNC packet carries pages or other flags" },
	{ "END with pages", MFD_EPROTO, "an END packet carries pages" },
	/* 10 */ { "SYNC compressed", MFD_EPROTO, "a SYNC packet carries pages or other flags" },
	{ "packet number 0", MFD_EPROTO, "packet number 0 after 0: numbers must increase" },
	{ "packet number repeated", MFD_EPROTO, "packet number 1 after 1" },
	{ "packet number decreasing", MFD_EPROTO, "packet number 4 after 9" },
	{ "block index = count", MFD_EPROTO, "packet 1: block index 1, there are 1 blocks" },
	/* 15 */ { "block index max", MFD_EPROTO, "block index 4294967295" },
	{ "normal > capacity", MFD_EPROTO, "129 normal + 0 zero pages, a packet of block 'ram' holds at most 128" },
	{ "zero > capacity", MFD_EPROTO, "0 normal + 129 zero pages" },
	{ "sum > capacity", MFD_EPROTO, "100 normal + 100 zero pages" },
	{ "normal count max", MFD_EPROTO, "4294967295 normal + 0 zero pages" },
	/* 20 */ { "zero count max wrapping the sum", MFD_EPROTO, "1 normal + 4294967295 zero pages" },
	{ "no pages", MFD_EPROTO, "packet 1: a data packet without pages" },
	{ "raw payload one short", MFD_EPROTO, "raw payload of 4095 bytes, 1 normal pages of 4096 bytes make 4096" },
	{ "raw payload one long", MFD_EPROTO, "raw payload of 4097 bytes" },
	{ "raw payload for zero pages", MFD_EPROTO, "raw payload of 4096 bytes, 0 normal pages" },
	/* 25 */ { "raw payload huge", MFD_EPROTO, "raw payload of 4294967295 bytes" },
	{ "compressed without a codec", MFD_EPROTO, "compressed, but this migration uses no codec" },
	{ "offset unaligned by 1", MFD_EPROTO, "normal page offset 0x3001 in block 'ram' is not aligned" },
	{ "offset unaligned by 2048", MFD_EPROTO, "offset 0x3800" },
	{ "zero offset unaligned", MFD_EPROTO, "zero page offset 0xfff" },
	/* 30 */ { "offset = block size", MFD_EPROTO, "normal page offset 0x40000 is beyond block 'ram' (262144 bytes)" },
	{ "offset far beyond", MFD_EPROTO, "offset 0x7ffffffffffff000 is beyond" },
	{ "offset max page", MFD_EPROTO, "offset 0xfffffffffffff000 is beyond" },
	{ "zero offset beyond", MFD_EPROTO, "zero page offset 0x41000 is beyond" },
	{ "normal offsets repeated", MFD_EPROTO, "normal page offsets are not strictly ascending (0x3000 after 0x3000)" },
	/* 35 */ { "normal offsets descending", MFD_EPROTO, "(0x1000 after 0x5000)" },
	{ "zero offsets repeated", MFD_EPROTO, "zero page offsets are not strictly ascending" },
	{ "page both normal and zero", MFD_EPROTO, "page 0x3000 is both a normal and a zero page" },
	{ "offsets cut", MFD_EEOF, "end of data after 8 of 16 bytes" },
	{ "payload cut", MFD_EEOF, "end of data after 100 of 4096 bytes" },
	/* 40 */ { "no END", MFD_EEOF, "end of data after 0 of 32 bytes" },
	{ "garbage after a good packet", MFD_EBADMAGIC, "packet after #1: magic 0x67617262" },
	{ "data after a SYNC then cut", MFD_EEOF, "end of data after 0 of 32 bytes" },
};

#define PKT_CASES ((int)(sizeof(pkt_cases) / sizeof(pkt_cases[0])))

static void build_pkt_case(int i, struct bytes *b)
{
	static const uint8_t page[PS];
	uint32_t two[2];

	switch (i) {
	case 0: b_be32(b, MFD_PACKET_MAGIC + 1); b_raw(b, page, 28); break;
	case 1: b_be32(b, MFD_PACKET_MAGIC); b_be16(b, 0); b_raw(b, page, 26); b->p[b->len - 1] = 1;
		/* packet number in the last byte */
		break;
	case 2: b_be32(b, MFD_PACKET_MAGIC); b_be16(b, 2); b_raw(b, page, 26); b->p[b->len - 1] = 1;
		break;
	case 3: pkt(b, 0x8, 0, 0, 0, 0, 1); break;
	case 4: pkt(b, 0x8000, 0, 0, 0, 0, 1); break;
	case 5: pkt(b, MFD_PACKET_SYNC, 0, 1, 0, 0, 1); break;
	case 6: pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 5, 1); break;
	case 7: pkt(b, MFD_PACKET_SYNC, 2, 0, 0, 0, 1); break;
	case 8: pkt(b, MFD_PACKET_SYNC | MFD_PACKET_END, 0, 0, 0, 0, 1); break;
	case 9: pkt(b, MFD_PACKET_END, 0, 0, 1, 0, 1); break;
	case 10: pkt(b, MFD_PACKET_SYNC | MFD_PACKET_COMPRESSED, 0, 0, 0, 0, 1); break;
	case 11: pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 0); break;
	case 12: pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 1); pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 1);
		break;
	case 13: data_pkt(b, 9, one, 1, NULL, 0, 1); pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 4); break;
	case 14: pkt(b, 0, 1, 1, 0, PS, 1); break;
	case 15: pkt(b, 0, 0xffffffff, 1, 0, PS, 1); break;
	case 16: pkt(b, 0, 0, 129, 0, 129 * PS, 1); break;
	case 17: pkt(b, 0, 0, 0, 129, 0, 1); break;
	case 18: pkt(b, 0, 0, 100, 100, 100 * PS, 1); break;
	case 19: pkt(b, 0, 0, 0xffffffff, 0, 0, 1); break;
	case 20: pkt(b, 0, 0, 1, 0xffffffff, PS, 1); break;
	case 21: pkt(b, 0, 0, 0, 0, 0, 1); break;
	case 22: pkt(b, 0, 0, 1, 0, PS - 1, 1); break;
	case 23: pkt(b, 0, 0, 1, 0, PS + 1, 1); break;
	case 24: pkt(b, 0, 0, 0, 1, PS, 1); break;
	case 25: pkt(b, 0, 0, 1, 0, 0xffffffff, 1); break;
	case 26: pkt(b, MFD_PACKET_COMPRESSED, 0, 1, 0, 100, 1); break;
	case 27: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0x3001); break;
	case 28: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0x3800); break;
	case 29: pkt(b, 0, 0, 0, 1, 0, 1); b_be64(b, 0xfff); break;
	case 30: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 64 * PS); break;
	case 31: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0x7ffffffffffff000ull); break;
	case 32: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0xfffffffffffff000ull); break;
	case 33: pkt(b, 0, 0, 0, 1, 0, 1); b_be64(b, 65 * PS); break;
	case 34: pkt(b, 0, 0, 2, 0, 2 * PS, 1); b_be64(b, 0x3000); b_be64(b, 0x3000); break;
	case 35: pkt(b, 0, 0, 2, 0, 2 * PS, 1); b_be64(b, 0x5000); b_be64(b, 0x1000); break;
	case 36: pkt(b, 0, 0, 0, 2, 0, 1); b_be64(b, 0x3000); b_be64(b, 0x3000); break;
	case 37: pkt(b, 0, 0, 1, 1, PS, 1); b_be64(b, 0x3000); b_be64(b, 0x3000); break;
	case 38: pkt(b, 0, 0, 2, 0, 2 * PS, 1); b_be64(b, 0x3000); break;
	case 39: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0x3000); b_raw(b, page, 100); break;
	case 40: two[0] = 1; two[1] = 2; data_pkt(b, 1, two, 2, NULL, 0, 7); break;
	case 41: data_pkt(b, 1, one, 1, NULL, 0, 7); b_raw(b, "garbage-garbage-garbage-garbage!", 32);
		break;
	case 42: pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 1); data_pkt(b, 2, one, 1, NULL, 0, 7); break;
	}
}

START_TEST(bad_packet)
{
	struct bad_rig br;
	struct bytes b = { 0 };
	mfd_error *err = NULL;
	int rc;

	bad_rig_init(&br, 1, NULL);
	build_pkt_case(_i, &b);
	rc = feed(&br, &b, &err);
	ck_assert_msg(rc == pkt_cases[_i].code, "case %d '%s': got %d: %s", _i, pkt_cases[_i].name,
		      rc, mfd_error_message(err));
	ck_assert_msg(strstr(mfd_error_message(err), pkt_cases[_i].msg) != NULL,
		      "case %d '%s': message '%s' lacks '%s'", _i, pkt_cases[_i].name,
		      mfd_error_message(err), pkt_cases[_i].msg);
	ck_assert_msg(strstr(mfd_error_message(err), "multifd channel 0") != NULL,
		      "case %d: no channel in '%s'", _i, mfd_error_message(err));
	mfd_error_free(err);
	b_free(&b);
	bad_rig_free(&br);
}
END_TEST

START_TEST(bad_compressed_payloads)
{
	static const char *const names[] = { "zlib", "zstd", "lz4" };
	int tried = 0;

	for (size_t k = 0; k < 3; k++) {
		struct bad_rig br;
		mfd_error *err = NULL;

		bad_rig_init(&br, 1, names[k]);
		if (!br.cfg.codec) {
			bad_rig_free(&br);
			continue;
		}
		tried++;
		for (int c = 0; c < 4; c++) {
			struct bytes b = { 0 };
			uint32_t bound = (uint32_t)br.cfg.codec->bound(PS);
			int rc;

			if (c == 0) {	/* payload beyond the codec's bound */
				pkt(&b, MFD_PACKET_COMPRESSED, 0, 1, 0, bound + 1, 1);
			} else if (c == 1) {	/* empty payload */
				pkt(&b, MFD_PACKET_COMPRESSED, 0, 1, 0, 0, 1);
			} else if (c == 2) {	/* compressed but no normal pages */
				pkt(&b, MFD_PACKET_COMPRESSED, 0, 0, 1, 10, 1);
			} else {	/* garbage that is not the codec's format */
				pkt(&b, MFD_PACKET_COMPRESSED, 0, 1, 0, 64, 1);
				b_be64(&b, 0x3000);
				for (int i = 0; i < 64; i++)
					b_u8(&b, (uint8_t)(0xa5 ^ (i * 29)));
				pkt(&b, MFD_PACKET_END, 0, 0, 0, 0, 2);
			}
			rc = feed(&br, &b, &err);
			ck_assert_msg(rc == MFD_EPROTO, "%s case %d: %d %s", names[k], c, rc,
				      mfd_error_message(err));
			ck_assert_msg(strstr(mfd_error_message(err), c == 0   ? "exceeds the"
								   : c == 3 ? "packet 1"
									    : "compressed payload of"),
				      "%s case %d: %s", names[k], c, mfd_error_message(err));
			mfd_error_free(err);
			err = NULL;
			b_free(&b);
		}
		bad_rig_free(&br);
	}
	if (!tried)
		test_skip("codec", "multifd: no codec built in, compressed payload cases");
}
END_TEST


static void write_all(mfd_channel *ch, const void *p, size_t len)
{
	mfd_stream *s = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_stream_new(ch, MFD_STREAM_WRITE, &s, &err), err);
	ck_assert_int_eq(mfd_stream_put_buf(s, p, len), 0);
	ck_assert_int_eq(mfd_stream_flush(s), 0);
	mfd_stream_free(s);
}

/*
 * The receiver's half of the ordering invariant, made deterministic: channel
 * 1 brings the new copy of page 3 right after its SYNC, channel 0 brings the
 * old copy before its SYNC but only 100 ms later.  Parking must hold channel 1
 * at its SYNC until channel 0 reached its own, so the new copy wins.
 */
START_TEST(receiver_holds_channels_at_sync)
{
	struct bad_rig br;
	struct mfd_multifd_recv *r = NULL;
	mfd_channel *rd[2], *wr[2];
	struct bytes h0 = { 0 }, h1 = { 0 }, rest0 = { 0 };
	uint8_t h[MFD_HELLO_SIZE];
	mfd_error *err = NULL;

	bad_rig_init(&br, 2, NULL);
	for (int i = 0; i < 2; i++) {
		ck_assert_ok(mfd_channel_pipe(&rd[i], &wr[i], &err), err);
		mfd_channel_set_option(rd[i], "timeout-ms", 10000, NULL);
	}
	multifd_hello_encode(h, &br.cfg, 0, br.digest);
	b_raw(&h0, h, sizeof(h));
	multifd_hello_encode(h, &br.cfg, 1, br.digest);
	b_raw(&h1, h, sizeof(h));
	pkt(&h1, MFD_PACKET_SYNC, 0, 0, 0, 0, 2);
	data_pkt(&h1, 3, one, 1, NULL, 0, 0xbb);	/* new copy */
	pkt(&h1, MFD_PACKET_END, 0, 0, 0, 0, 5);
	data_pkt(&rest0, 1, one, 1, NULL, 0, 0xaa);	/* old copy */
	pkt(&rest0, MFD_PACKET_SYNC, 0, 0, 0, 0, 4);
	pkt(&rest0, MFD_PACKET_END, 0, 0, 0, 0, 6);

	ck_assert_ok(multifd_recv_new(&br.cfg, br.m->blocks, br.m->nblocks, &r, &err), err);
	write_all(wr[0], h0.p, h0.len);
	write_all(wr[1], h1.p, h1.len);
	ck_assert_int_eq(multifd_recv_identify(rd[0], r, &err), 0);
	ck_assert_int_eq(multifd_recv_identify(rd[1], r, &err), 1);
	ck_assert_ok(multifd_recv_start(r, &err), err);
	usleep(100 * 1000);	/* a broken receiver writes the new copy now */
	ck_assert_uint_eq(br.ram[3 * PS], 0);
	write_all(wr[0], rest0.p, rest0.len);
	ck_assert_ok(multifd_recv_sync(r, &err), err);
	ck_assert_ok(multifd_recv_finish(r, &err), err);
	ck_assert_uint_eq(br.ram[3 * PS], 0xbb);
	ck_assert_uint_eq(br.ram[4 * PS - 1], 0xbb);
	multifd_recv_free(r);
	for (int i = 0; i < 2; i++) {
		mfd_channel_free(rd[i]);
		mfd_channel_free(wr[i]);
	}
	b_free(&h0);
	b_free(&h1);
	b_free(&rest0);
	bad_rig_free(&br);
}
END_TEST

/* The sender's half: on each channel, pages queued before a sync precede its SYNC. */
START_TEST(sender_puts_pages_before_sync)
{
	struct rig g;
	mfd_error *err = NULL;
	mfd_stream *in = NULL;

	for (int round = 0; round < 20; round++) {
		uint8_t hdr[MFD_PACKET_HEADER_SIZE];
		bool seen_data = false;

		rig_init(&g, 1, "none", 1, 512u << 10);
		ck_assert_ok(multifd_send_new(&g.cfg, g.src->blocks, g.src->nblocks, g.a, &g.send,
						  &err), err);
		ck_assert_ok(mfd_stream_new(g.b[0], MFD_STREAM_READ, &in, &err), err);
		ck_assert_int_eq(mfd_stream_skip(in, MFD_HELLO_SIZE), 0);
		ck_assert_ok(multifd_queue_page(g.send, 0, 5 * PS, &err), err);
		ck_assert_ok(multifd_send_sync(g.send, &err), err);
		for (;;) {
			ck_assert_int_eq(mfd_stream_get_buf(in, hdr, sizeof(hdr)), 0);
			uint16_t flags = load_be16(hdr + 6);

			if (flags & MFD_PACKET_SYNC)
				break;
			seen_data = true;
			ck_assert_int_eq(mfd_stream_skip(in, 8ull * (load_be32(hdr + 12) +
								    load_be32(hdr + 16)) +
							    load_be32(hdr + 20)), 0);
		}
		ck_assert_msg(seen_data, "round %d: SYNC overtook the page queued before it", round);
		mfd_stream_free(in);
		multifd_send_cancel(g.send);
		rig_free(&g);
	}
}
END_TEST

/* A valid channel stream cut at every byte ends in a clean error, never a hang. */
START_TEST(channel_truncated_at_every_offset)
{
	struct bad_rig br;
	struct bytes b = { 0 };
	const uint32_t normal[] = { 1, 2, 9 }, zero[] = { 4, 5 };

	bad_rig_init(&br, 1, NULL);
	data_pkt(&b, 1, normal, 3, zero, 2, 0x11);
	pkt(&b, MFD_PACKET_SYNC, 0, 0, 0, 0, 2);
	data_pkt(&b, 3, one, 1, NULL, 0, 0x22);
	pkt(&b, MFD_PACKET_END, 0, 0, 0, 0, 4);
	{
		mfd_error *err = NULL;

		ck_assert_ok(feed(&br, &b, &err), err);
		ck_assert_uint_eq(br.ram[3 * PS], 0x22);
		ck_assert_uint_eq(br.ram[9 * PS + 5], 0x11);
	}
	for (size_t cut = 0; cut < b.len; cut += (cut < 200 ? 1 : 509)) {
		struct bytes part = { 0 };
		mfd_error *err = NULL;

		b_raw(&part, b.p, cut);
		ck_assert_int_eq(feed(&br, &part, &err), MFD_EEOF);
		ck_assert_msg(strstr(mfd_error_message(err), "end of data"), "cut %zu: %s", cut,
			      mfd_error_message(err));
		mfd_error_free(err);
		b_free(&part);
	}
	b_free(&b);
	bad_rig_free(&br);
}
END_TEST

/* A zero page leaves a page never placed alone (recvmap) in a block
 * declared fresh, and clears one placed before; in a block not declared
 * fresh, or without a recvmap, it clears what is not zero (RAM the VMM
 * preloaded is not trusted to be zero). */
START_TEST(zero_page_placement)
{
	static uint8_t ram[4 * PS];
	_Atomic uint64_t map[1] = { 0 };
	struct mfd_ram_block b = { .name = "ram", .host = ram, .size = sizeof(ram),
				   .page_size = PS, .page_shift = 12, .recvmap = map,
				   .flags = MFD_RAM_FRESH };

	memset(ram, 0x5a, sizeof(ram));
	mfd_page_place_zero(&b, 0);		/* fresh, never placed: untouched */
	ck_assert_uint_eq(ram[0], 0x5a);
	mfd_page_place_zero(&b, 0);		/* now it was: cleared */
	ck_assert(util_page_is_zero(ram, PS));
	b.flags = 0;				/* not declared fresh: checked */
	mfd_page_place_zero(&b, 3 * PS);	/* never placed, holds 0x5a */
	ck_assert(util_page_is_zero(ram + 3 * PS, PS));
	memset(ram + 3 * PS, 0x5a, PS);
	atomic_store(&map[0], 1);		/* page 0 only */
	b.flags = MFD_RAM_FRESH;
	mfd_page_placed(&b, PS);
	mfd_page_place_zero(&b, PS);
	ck_assert(util_page_is_zero(ram + PS, PS));
	ck_assert_uint_eq(atomic_load(&map[0]), 3);
	ck_assert_uint_eq(ram[2 * PS], 0x5a);
	b.recvmap = NULL;
	mfd_page_place_zero(&b, 3 * PS);
	ck_assert(util_page_is_zero(ram + 3 * PS, PS));
	ck_assert_uint_eq(ram[2 * PS + PS - 1], 0x5a);
}
END_TEST

/* ---- waits: every wait of the receiver ends ------------------------------------ */

/* A receiver on @n pipes; channel i is fed hello i + @bytes[i] (NULL: only the
 * hello, then silence).  Pipe reads have no deadline of their own. */
struct pipe_rig {
	struct bad_rig br;
	struct mfd_multifd_recv *r;
	mfd_channel *rd[2], *wr[2];
	unsigned n;
};

static void pipe_rig_start(struct pipe_rig *pr, unsigned n, int64_t timeout_ms,
			   const struct bytes *const *bytes)
{
	mfd_error *err = NULL;
	uint8_t h[MFD_HELLO_SIZE];

	memset(pr, 0, sizeof(*pr));
	pr->n = n;
	bad_rig_init(&pr->br, n, NULL);
	pr->br.cfg.timeout_ms = timeout_ms;
	ck_assert_ok(multifd_recv_new(&pr->br.cfg, pr->br.m->blocks, pr->br.m->nblocks, &pr->r,
					  &err), err);
	for (unsigned i = 0; i < n; i++) {
		ck_assert_ok(mfd_channel_pipe(&pr->rd[i], &pr->wr[i], &err), err);
		multifd_hello_encode(h, &pr->br.cfg, (uint16_t)i, pr->br.digest);
		write_all(pr->wr[i], h, sizeof(h));
		if (bytes[i])
			write_all(pr->wr[i], bytes[i]->p, bytes[i]->len);
		ck_assert_int_eq(multifd_recv_identify(pr->rd[i], pr->r, &err), (int)i);
	}
	ck_assert_ok(multifd_recv_start(pr->r, &err), err);
}

static void pipe_rig_free(struct pipe_rig *pr)
{
	multifd_recv_free(pr->r);
	for (unsigned i = 0; i < pr->n; i++) {
		mfd_channel_free(pr->rd[i]);
		mfd_channel_free(pr->wr[i]);
	}
	bad_rig_free(&pr->br);
}

/*
 * Channel 1 carries one SYNC more than the main stream releases.  At the end
 * of the load the receiver says so, at once, instead of waiting forever for a
 * marker that will never come.
 */
START_TEST(unmatched_sync_fails_the_load)
{
	struct pipe_rig pr;
	struct bytes c0 = { 0 }, c1 = { 0 };
	const struct bytes *feed2[2] = { &c0, &c1 };
	mfd_error *err = NULL;
	uint64_t t0;

	pkt(&c0, MFD_PACKET_SYNC, 0, 0, 0, 0, 1);
	pkt(&c0, MFD_PACKET_END, 0, 0, 0, 0, 2);
	pkt(&c1, MFD_PACKET_SYNC, 0, 0, 0, 0, 1);
	data_pkt(&c1, 2, one, 1, NULL, 0, 0x33);
	pkt(&c1, MFD_PACKET_SYNC, 0, 0, 0, 0, 3);	/* the main stream has no marker for it */
	pkt(&c1, MFD_PACKET_END, 0, 0, 0, 0, 4);
	pipe_rig_start(&pr, 2, 0, feed2);	/* no deadline: only the end can tell */
	ck_assert_ok(multifd_recv_sync(pr.r, &err), err);
	t0 = util_now_ns();
	ck_assert_int_eq(multifd_recv_finish(pr.r, &err), MFD_EPROTO);
	ck_assert_msg(util_now_ns() - t0 < 2000000000ull, "the refusal took %llu ms",
		      (unsigned long long)((util_now_ns() - t0) / 1000000));
	ck_assert_msg(strstr(mfd_error_message(err), "multifd channel 1"), "%s",
		      mfd_error_message(err));
	ck_assert_mfd_error(err, MFD_EPROTO, "SYNC 2 was never matched by the main stream");
	pipe_rig_free(&pr);
	b_free(&c0);
	b_free(&c1);
}
END_TEST

/* The same through the sender's API: a source that syncs twice while the
 * destination's main stream has one marker. */
static void *sync_twice(void *arg)
{
	struct plan *p = arg;
	struct rig *g = p->g;

	for (unsigned pg = 0; pg < 8 && p->result == 0; pg++)
		p->result = multifd_queue_page(g->send, 0, pg * PS, &p->err);
	if (p->result == 0)
		p->result = multifd_send_sync(g->send, &p->err);
	if (p->result == 0)
		p->result = multifd_queue_page(g->send, 0, 9 * PS, &p->err);
	if (p->result == 0)
		p->result = multifd_send_sync(g->send, &p->err);
	if (p->result == 0)
		p->result = multifd_send_finish(g->send, &p->err);
	return NULL;
}

START_TEST(extra_sync_from_the_source_fails_the_load)
{
	struct rig g;
	struct plan p = { .g = &g };
	mfd_error *err = NULL;
	pthread_t t;

	rig_init(&g, 2, "none", 1, 512u << 10);
	memset(g.sram, 0x44, 16 * PS);
	rig_connect(&g);
	ck_assert_int_eq(pthread_create(&t, NULL, sync_twice, &p), 0);
	ck_assert_ok(multifd_recv_sync(g.recv, &err), err);
	/* The source is done (its last packets fit the socket buffers) before
	 * the load ends, whose failure would cut the channels under it. */
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_ok(p.result, p.err);
	ck_assert_int_eq(multifd_recv_finish(g.recv, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "SYNC 2 was never matched by the main stream");
	rig_free(&g);
}
END_TEST

/* A channel parked at its SYNC while the main stream never reaches the marker
 * (and nothing else moves) gives up after timeout_ms. */
START_TEST(parked_channel_gives_up_after_the_deadline)
{
	struct pipe_rig pr;
	struct bytes c0 = { 0 };
	const struct bytes *feed1[1] = { &c0 };
	mfd_error *err = NULL;

	pkt(&c0, MFD_PACKET_SYNC, 0, 0, 0, 0, 1);
	pkt(&c0, MFD_PACKET_END, 0, 0, 0, 0, 2);
	pipe_rig_start(&pr, 1, 200, feed1);
	usleep(700 * 1000);	/* the loader is stuck elsewhere */
	ck_assert_int_eq(multifd_recv_sync(pr.r, &err), MFD_ETIMEDOUT);
	ck_assert_msg(strstr(mfd_error_message(err), "multifd channel 0"), "%s",
		      mfd_error_message(err));
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "SYNC 1: the main stream did not reach its marker");
	pipe_rig_free(&pr);
	b_free(&c0);
}
END_TEST

/* The loader at a marker while channel 1 stays silent (its read has no
 * deadline): the sync gives up after timeout_ms and names the channel. */
START_TEST(sync_gives_up_on_a_silent_channel)
{
	struct pipe_rig pr;
	struct bytes c0 = { 0 };
	const struct bytes *feed2[2] = { &c0, NULL };
	mfd_error *err = NULL;

	pkt(&c0, MFD_PACKET_SYNC, 0, 0, 0, 0, 1);
	pkt(&c0, MFD_PACKET_END, 0, 0, 0, 0, 2);
	pipe_rig_start(&pr, 2, 300, feed2);
	ck_assert_int_eq(multifd_recv_sync(pr.r, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "channel 1 did not reach SYNC 1 within 300 ms");
	pipe_rig_free(&pr);
	b_free(&c0);
}
END_TEST

/* The end of the load while channel 1 stays silent before its END. */
START_TEST(finish_gives_up_on_a_silent_channel)
{
	struct pipe_rig pr;
	struct bytes c0 = { 0 };
	const struct bytes *feed2[2] = { &c0, NULL };
	mfd_error *err = NULL;

	pkt(&c0, MFD_PACKET_END, 0, 0, 0, 0, 1);
	pipe_rig_start(&pr, 2, 300, feed2);
	ck_assert_int_eq(multifd_recv_finish(pr.r, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "channel 1 sent no END within 300 ms");
	pipe_rig_free(&pr);
	b_free(&c0);
}
END_TEST

Suite *suite_multifd(void)
{
	Suite *s = suite_create("multifd");
	TCase *tc = tcase_create("transfer");
	TCase *bad = tcase_create("untrusted");

	tcase_add_loop_test(tc, transfer_matrix, 0, 16);
	tcase_add_test(tc, ordering_across_syncs);
	tcase_add_test(tc, zero_detection_off_sends_every_page);
	tcase_add_test(tc, zero_pages_overwrite_stale_destination_data);
	tcase_add_test(tc, zero_page_scan);
	tcase_add_test(tc, cancel_unblocks_both_sides);
	tcase_add_test(tc, source_refuses_bad_pages);
	tcase_add_test(tc, custom_codec_migrates);
	tcase_add_test(tc, incompressible_memory_costs_probes_only);
	tcase_add_test(tc, adaptive_compression_follows_the_link);
	tcase_add_test(tc, a_failing_probe_fails_the_sender);
	tcase_set_timeout(tc, 240);
	tcase_add_loop_test(bad, bad_hello, 0, HM_COUNT_ALL);
	tcase_add_test(bad, duplicate_channel_id_and_early_start);
	tcase_add_loop_test(bad, bad_packet, 0, PKT_CASES);
	tcase_add_test(bad, bad_compressed_payloads);
	tcase_add_test(bad, channel_truncated_at_every_offset);
	tcase_add_test(tc, receiver_holds_channels_at_sync);
	tcase_add_test(tc, zero_page_placement);
	tcase_add_test(tc, sender_puts_pages_before_sync);
	tcase_set_timeout(bad, 120);
	/* Short: a wait that never ends fails here rather than hanging the suite. */
	TCase *waits = tcase_create("waits");

	tcase_add_test(waits, unmatched_sync_fails_the_load);
	tcase_add_test(waits, extra_sync_from_the_source_fails_the_load);
	tcase_add_test(waits, parked_channel_gives_up_after_the_deadline);
	tcase_add_test(waits, sync_gives_up_on_a_silent_channel);
	tcase_add_test(waits, finish_gives_up_on_a_silent_channel);
	tcase_set_timeout(waits, 15);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, bad);
	suite_add_tcase(s, waits);
	return s;
}
