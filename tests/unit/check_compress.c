/* SPDX-License-Identifier: MIT */
/*
 * Compression plugins: round trips of realistic packets through every
 * built-in codec, the registry and its validation, and the receiving side
 * against untrusted payloads.  Every decode writes into buffers fenced by
 * guard bytes, and every test checks the guards afterwards.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "compress/compress.h"
#include "tests/lib/testcodec.h"
#include "tests/lib/testlib.h"

#if MFD_HAVE_ZLIB
#define ZLIB_CONST
#include <zlib.h>
#endif
#if MFD_HAVE_ZSTD
#include <zstd.h>
#endif
#if MFD_HAVE_LZ4
#include <lz4.h>
#endif

#define PAGE 4096
#define HUGE_PAGE (2u << 20)
#define GUARD 64
#define GUARD_BYTE 0xA5
#define POISON_BYTE 0xCC

/* ------------------------------------------------------------------------ */
/* Data                                                                      */
/* ------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: deterministic, good enough to look incompressible. */
	uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

enum kind { K_ZERO, K_TEXT, K_RANDOM, K_MIXED, K_COUNT };
static const char *const kind_names[K_COUNT] = { "zero", "text", "random", "mixed" };

static void fill_text(uint8_t *p, size_t len, uint64_t *rng)
{
	static const char *const words[] = {
		"the", "migration", "of", "page", "guest", "memory", "0x7f3a2c10", "kernel",
		"struct", "return", "dirty", "bitmap", "channel", "sync", "{", "}", "=", "int",
		"vcpu", "interrupt", "2024-05-17", "ERROR", "info:", "/usr/lib/x86_64",
	};
	size_t i = 0;

	while (i < len) {
		uint64_t r = rng_next(rng);
		const char *w = words[r % MFD_ARRAY_SIZE(words)];
		size_t wl = strlen(w);

		for (size_t k = 0; k < wl && i < len; k++)
			p[i++] = (uint8_t)w[k];
		if (i < len)
			p[i++] = (r >> 32) % 9 == 0 ? '\n' : ' ';
	}
}

static void fill_random(uint8_t *p, size_t len, uint64_t *rng)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t r = rng_next(rng);

		memcpy(p + i, &r, MFD_MIN((size_t)8, len - i));
	}
}

/* @len bytes of @kind; "mixed" is, per 4 KiB, half zero, a quarter text, a quarter random. */
static void fill(uint8_t *p, size_t len, enum kind k, uint64_t seed)
{
	uint64_t rng = seed * 0x100000001B3ull + 1;

	switch (k) {
	case K_ZERO:
		memset(p, 0, len);
		break;
	case K_TEXT:
		fill_text(p, len, &rng);
		break;
	case K_RANDOM:
		fill_random(p, len, &rng);
		break;
	default:
		for (size_t off = 0; off < len; off += PAGE) {
			size_t l = MFD_MIN((size_t)PAGE, len - off);
			unsigned pick = (unsigned)(rng_next(&rng) % 4);

			if (pick < 2)
				memset(p + off, 0, l);
			else if (pick == 2)
				fill_text(p + off, l, &rng);
			else
				fill_random(p + off, l, &rng);
		}
		break;
	}
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	ck_assert_ptr_nonnull(p);
	return p;
}

/* ------------------------------------------------------------------------ */
/* Output buffers fenced by guard bytes                                      */
/* ------------------------------------------------------------------------ */

struct outbuf {
	uint8_t *arena;
	size_t arena_len;
	struct iovec *iov;
	int n;
	size_t total;
};

/* @n buffers of @lens bytes, each between GUARD-byte fences; contents poisoned. */
static void outbuf_init(struct outbuf *o, const size_t *lens, int n)
{
	uint8_t *p;

	o->n = n;
	o->total = 0;
	o->arena_len = GUARD;
	for (int i = 0; i < n; i++) {
		o->total += lens[i];
		o->arena_len += lens[i] + GUARD;
	}
	o->arena = xmalloc(o->arena_len);
	o->iov = xmalloc(sizeof(*o->iov) * (size_t)(n ? n : 1));
	memset(o->arena, GUARD_BYTE, o->arena_len);
	p = o->arena + GUARD;
	for (int i = 0; i < n; i++) {
		o->iov[i] = (struct iovec){ p, lens[i] };
		memset(p, POISON_BYTE, lens[i]);
		p += lens[i] + GUARD;
	}
}

enum split { SPLIT_PAGES, SPLIT_ONE, SPLIT_RANDOM, SPLIT_COUNT };

/* A packet of @total bytes as buffers of @page bytes, one buffer, or random
 * sizes (including empty buffers). */
static void outbuf_split(struct outbuf *o, size_t total, size_t page, enum split how,
			 uint64_t seed)
{
	size_t cap = 16, n = 0, left = total, *lens = xmalloc(cap * sizeof(*lens));
	uint64_t rng = seed + 7;

	while (left > 0 || (how == SPLIT_ONE && n == 0)) {
		size_t l;

		if (how == SPLIT_ONE)
			l = left;
		else if (how == SPLIT_PAGES)
			l = MFD_MIN(page, left);
		else {
			uint64_t r = rng_next(&rng);

			l = r % 11 == 0 ? 0 : MFD_MIN(left, 1 + (size_t)(r >> 20) % (3 * PAGE));
		}
		if (n == cap) {
			cap *= 2;
			lens = realloc(lens, cap * sizeof(*lens));
			ck_assert_ptr_nonnull(lens);
		}
		lens[n++] = l;
		left -= l;
	}
	outbuf_init(o, lens, (int)n);
	free(lens);
}

static void outbuf_check_guards(const struct outbuf *o)
{
	const uint8_t *p = o->arena;

	for (int i = 0; i <= o->n; i++) {
		for (size_t k = 0; k < GUARD; k++)
			ck_assert_msg(p[k] == GUARD_BYTE,
				      "guard byte %zu before buffer %d of %d was overwritten", k, i,
				      o->n);
		if (i < o->n)
			p += GUARD + o->iov[i].iov_len;
	}
}

static int outbuf_equals(const struct outbuf *o, const uint8_t *data)
{
	size_t off = 0;

	for (int i = 0; i < o->n; i++) {
		if (o->iov[i].iov_len && memcmp(o->iov[i].iov_base, data + off, o->iov[i].iov_len))
			return 0;
		off += o->iov[i].iov_len;
	}
	return 1;
}

static void outbuf_free(struct outbuf *o)
{
	free(o->arena);
	free(o->iov);
	memset(o, 0, sizeof(*o));
}

/* ------------------------------------------------------------------------ */
/* Codec helpers                                                             */
/* ------------------------------------------------------------------------ */

static const struct codec_case {
	const char *name;
	bool built;
	int levels[4];
	int nlevels;
} codec_cases[] = {
	{ "none", true, { 0 }, 1 },
	{ "zlib", MFD_HAVE_ZLIB, { 0, 1, 6, 9 }, 4 },
	{ "zstd", MFD_HAVE_ZSTD, { 1, 3, 9, 20 }, 4 },
	{ "lz4", MFD_HAVE_LZ4, { 1, 8, 65537 }, 3 },
};
#define N_CODECS ((int)MFD_ARRAY_SIZE(codec_cases))

/* The codec of loop index @i, or NULL when this build lacks it (the skip is
 * counted here; the test returns). */
static const mfd_compress_ops *codec_for(int i)
{
	const mfd_compress_ops *ops = mfd_compress_find(codec_cases[i].name);

	ck_assert_msg((ops != NULL) == codec_cases[i].built, "codec %s: found %d, built %d",
		      codec_cases[i].name, ops != NULL, codec_cases[i].built);
	if (!ops)
		test_skip("codec", "compress: codec %s not built in", codec_cases[i].name);
	return ops;
}

static void *send_ctx(const mfd_compress_ops *ops, int level)
{
	mfd_error *err = NULL;
	void *ctx = NULL;

	ck_assert_ok(ops->send_setup(ops->opaque, &ctx, level, &err), err);
	return ctx;
}

static void *recv_ctx(const mfd_compress_ops *ops)
{
	mfd_error *err = NULL;
	void *ctx = NULL;

	ck_assert_ok(ops->recv_setup(ops->opaque, &ctx, &err), err);
	return ctx;
}

/* Compress @len bytes; returns a malloc'd payload and its size in *@clen. */
static uint8_t *compress_buf(const mfd_compress_ops *ops, void *cctx, const uint8_t *data,
			     size_t len, size_t *clen)
{
	size_t bound = ops->bound(len);
	uint8_t *out = xmalloc(bound);
	mfd_error *err = NULL;

	ck_assert_ok(compress_send(ops, cctx, data, len, out, bound, clen, &err), err);
	ck_assert_uint_le(*clen, bound);
	ck_assert_ok(compress_check_payload(ops, *clen, len, &err), err);
	return out;
}

/* Compress, decompress into a split packet, compare.  Returns the payload size. */
static size_t round_trip(const mfd_compress_ops *ops, void *cctx, void *dctx, const uint8_t *data,
			 size_t len, size_t page, enum split how, uint64_t seed)
{
	size_t clen;
	uint8_t *payload = compress_buf(ops, cctx, data, len, &clen);
	mfd_error *err = NULL;
	struct outbuf o;

	outbuf_split(&o, len, page, how, seed);
	ck_assert_ok(compress_recv(ops, dctx, payload, clen, o.iov, o.n, &err), err);
	outbuf_check_guards(&o);
	ck_assert_msg(outbuf_equals(&o, data), "%s: %zu bytes came back different", ops->name, len);
	outbuf_free(&o);
	free(payload);
	return clen;
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                               */
/* ------------------------------------------------------------------------ */

START_TEST(round_trip_pages)
{
	static const size_t page_counts[] = { 1, 2, 7, 32, 128 };
	const mfd_compress_ops *ops = codec_for(_i);
	const struct codec_case *cc = &codec_cases[_i];
	uint8_t *data = xmalloc(128 * PAGE);

	if (!ops) {
		free(data);
		return;
	}
	for (int l = 0; l < cc->nlevels; l++) {
		int level = cc->levels[l];
		void *cctx = send_ctx(ops, level), *dctx = recv_ctx(ops);

		for (int k = 0; k < K_COUNT; k++) {
			for (size_t p = 0; p < MFD_ARRAY_SIZE(page_counts); p++) {
				size_t len = page_counts[p] * PAGE, clen;
				uint64_t seed = (uint64_t)(l * 1000 + k * 100 + (int)p);

				fill(data, len, (enum kind)k, seed);
				clen = round_trip(ops, cctx, dctx, data, len, PAGE,
						  (enum split)((k + p) % SPLIT_COUNT), seed);
				ck_assert_uint_le(clen, ops->bound(len));
				/* Compressible data shrinks, except where the level
				 * means "store" or "skip ahead". */
				if (strcmp(ops->name, "none") == 0 ||
				    (strcmp(ops->name, "zlib") == 0 && level == 0))
					continue;
				if (k == K_ZERO)
					ck_assert_msg(clen * 8 < len,
						      "%s level %d: %zu bytes of %s pages became %zu",
						      ops->name, level, len, kind_names[k], clen);
				if (k == K_TEXT && level == ops->level_default)
					ck_assert_msg(clen * 10 < len * 7,
						      "%s level %d: %zu bytes of text became %zu",
						      ops->name, level, len, clen);
			}
		}
		ops->send_cleanup(cctx);
		ops->recv_cleanup(dctx);
	}
	free(data);
}
END_TEST

/* Odd sizes and odd splits: empty packet, one byte, not a multiple of a page. */
START_TEST(round_trip_odd_sizes)
{
	static const size_t sizes[] = { 0, 1, 17, 4095, 4097, 12288, 100000, 524288 + 3 };
	const mfd_compress_ops *ops = codec_for(_i);
	uint8_t *data = xmalloc(524288 + 3);
	void *cctx, *dctx;

	if (!ops) {
		free(data);
		return;
	}
	cctx = send_ctx(ops, ops->level_default);
	dctx = recv_ctx(ops);
	for (size_t s = 0; s < MFD_ARRAY_SIZE(sizes); s++)
		for (int how = 0; how < SPLIT_COUNT; how++) {
			fill(data, sizes[s], K_MIXED, s);
			round_trip(ops, cctx, dctx, data, sizes[s], PAGE, (enum split)how, s + 50);
		}
	ops->send_cleanup(cctx);
	ops->recv_cleanup(dctx);
	free(data);
}
END_TEST

/* 2 MiB pages: packets of one and two huge pages, whole or as 4 KiB pieces. */
START_TEST(round_trip_huge_pages)
{
	const mfd_compress_ops *ops = codec_for(_i);
	const struct codec_case *cc = &codec_cases[_i];
	size_t len = 2 * (size_t)HUGE_PAGE;
	uint8_t *data = xmalloc(len);
	int levels[2] = { 0, 0 }, nlevels = 0;

	if (!ops) {
		free(data);
		return;
	}
	levels[nlevels++] = ops->level_default;
	/* The top level has the largest window: the receiver's window limit
	 * must still admit what the encoder picks for a 2 MiB packet. */
	if (cc->levels[cc->nlevels - 1] != ops->level_default)
		levels[nlevels++] = cc->levels[cc->nlevels - 1];
	fill(data, len, K_MIXED, 99);
	for (int l = 0; l < nlevels; l++) {
		void *cctx = send_ctx(ops, levels[l]), *dctx = recv_ctx(ops);
		size_t clen;

		clen = round_trip(ops, cctx, dctx, data, HUGE_PAGE, HUGE_PAGE, SPLIT_PAGES, 1);
		ck_assert_uint_le(clen, ops->bound(HUGE_PAGE));
		if (l == 0) {
			round_trip(ops, cctx, dctx, data, len, HUGE_PAGE, SPLIT_PAGES, 2);
			round_trip(ops, cctx, dctx, data, len, PAGE, SPLIT_PAGES, 3);
		}
		ops->send_cleanup(cctx);
		ops->recv_cleanup(dctx);
	}
	free(data);
}
END_TEST

/* Random data never grows past the bound, and shrinking data really shrinks. */
START_TEST(bound_holds_for_random_data)
{
	static const size_t sizes[] = { 0, 1, 100, PAGE, 64 * PAGE, 128 * PAGE, HUGE_PAGE };
	const mfd_compress_ops *ops = codec_for(_i);
	const struct codec_case *cc = &codec_cases[_i];
	uint8_t *data = xmalloc(HUGE_PAGE);

	if (!ops) {
		free(data);
		return;
	}
	for (int l = 0; l < cc->nlevels; l++) {
		void *cctx = send_ctx(ops, cc->levels[l]);

		/* Level 20 on 2 MiB of random data only costs time. */
		for (size_t s = 0; s < MFD_ARRAY_SIZE(sizes) - (cc->levels[l] > 9 ? 1 : 0); s++) {
			size_t clen;
			uint8_t *payload;

			fill(data, sizes[s], K_RANDOM, s);
			payload = compress_buf(ops, cctx, data, sizes[s], &clen);
			ck_assert_uint_le(clen, ops->bound(sizes[s]));
			/* Within 1 % + 64 bytes of the input: incompressible data
			 * costs little more than "none" (and the core sends such
			 * packets raw anyway). */
			ck_assert_uint_le(clen, sizes[s] + sizes[s] / 100 + 64);
			free(payload);
		}
		ops->send_cleanup(cctx);
	}
	free(data);
}
END_TEST

/* A too-small output buffer is the caller's mistake, reported, never overrun. */
START_TEST(send_output_too_small)
{
	const mfd_compress_ops *ops = codec_for(_i);
	uint8_t *data = xmalloc(8 * PAGE), *out;
	mfd_error *err = NULL;
	size_t cap = 100, clen = 0;
	void *cctx;

	if (!ops) {
		free(data);
		return;
	}
	fill(data, 8 * PAGE, K_RANDOM, 5);
	out = xmalloc(cap + GUARD);
	memset(out, GUARD_BYTE, cap + GUARD);
	cctx = send_ctx(ops, ops->level_default);
	ck_assert_int_eq(compress_send(ops, cctx, data, 8 * PAGE, out, cap, &clen, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "100 bytes of output space");
	for (size_t k = cap; k < cap + GUARD; k++)
		ck_assert_uint_eq(out[k], GUARD_BYTE);
	/* The context still works. */
	{
		void *dctx = recv_ctx(ops);

		round_trip(ops, cctx, dctx, data, 8 * PAGE, PAGE, SPLIT_PAGES, 5);
		ops->recv_cleanup(dctx);
	}
	ops->send_cleanup(cctx);
	free(out);
	free(data);
}
END_TEST

START_TEST(setup_rejects_bad_levels)
{
	const mfd_compress_ops *ops = codec_for(_i);
	mfd_error *err = NULL;
	void *ctx = (void *)1;
	char want[64];

	if (!ops)
		return;
	snprintf(want, sizeof(want), "%s: level %d is outside %d..%d", ops->name,
		 ops->level_max + 1, ops->level_min, ops->level_max);
	ck_assert_int_eq(ops->send_setup(ops->opaque, &ctx, ops->level_max + 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_ptr_null(ctx);
	ck_assert_int_eq(ops->send_setup(ops->opaque, &ctx, ops->level_min - 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "is outside");
	ck_assert_int_eq(compress_check_level(ops, ops->level_max + 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_int_eq(compress_check_level(ops, ops->level_default, &err), 0);
	/* Cleanup accepts NULL. */
	ops->send_cleanup(NULL);
	ops->recv_cleanup(NULL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Registry                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(builtins_are_listed)
{
	const char *names[8] = { 0 };
	const char *one[1] = { 0 };
	int n = mfd_compress_list(names, 8), want = 0, at = 0;
	mfd_error *err = NULL;

	for (int i = 0; i < N_CODECS; i++)
		want += codec_cases[i].built;
	ck_assert_int_eq(n, want);
	/* Built-ins in a fixed order: none, zlib, zstd, lz4 (as built). */
	for (int i = 0; i < N_CODECS; i++) {
		if (!codec_cases[i].built)
			continue;
		ck_assert_str_eq(names[at], codec_cases[i].name);
		ck_assert_ptr_eq(mfd_compress_find(codec_cases[i].name)->name, names[at]);
		ck_assert_int_eq(compress_validate(mfd_compress_find(names[at]), &err), 0);
		at++;
	}
	ck_assert_int_eq(mfd_compress_list(one, 1), want);
	ck_assert_str_eq(one[0], "none");
	ck_assert_int_eq(mfd_compress_list(NULL, 0), want);
	ck_assert_ptr_null(mfd_compress_find("ZSTD"));
	ck_assert_ptr_null(mfd_compress_find(""));
	ck_assert_ptr_null(mfd_compress_find(NULL));
	ck_assert_ptr_null(mfd_compress_find("lzo"));
	ck_assert_ptr_null(compress_lookup("lzo", &err));
	ck_assert_mfd_error(err, MFD_ENOENT, "unknown compression method 'lzo' (known: none");
	ck_assert_ptr_nonnull(compress_lookup("none", &err));
	ck_assert_ptr_null(err);
}
END_TEST

START_TEST(builtin_levels)
{
	const mfd_compress_ops *ops = mfd_compress_find("none");

	ck_assert_int_eq(ops->level_min, 0);
	ck_assert_int_eq(ops->level_max, 0);
#if MFD_HAVE_ZLIB
	ops = mfd_compress_find("zlib");
	ck_assert_int_eq(ops->level_min, 0);
	ck_assert_int_eq(ops->level_max, 9);
	ck_assert_int_eq(ops->level_default, 1);
#endif
#if MFD_HAVE_ZSTD
	ops = mfd_compress_find("zstd");
	ck_assert_int_eq(ops->level_min, 1);
	ck_assert_int_eq(ops->level_max, 20);
	ck_assert_int_eq(ops->level_default, 1);
#endif
#if MFD_HAVE_LZ4
	ops = mfd_compress_find("lz4");
	ck_assert_int_eq(ops->level_min, 1);
	ck_assert_int_eq(ops->level_max, 65537);
	ck_assert_int_eq(ops->level_default, 1);
#endif
}
END_TEST

START_TEST(register_custom_codec)
{
	const mfd_compress_ops *ops;
	const char *names[16];
	uint8_t *data = xmalloc(32 * PAGE);
	mfd_error *err = NULL;
	uint8_t bad[4] = { 0, 'x', 3, 'y' };
	struct outbuf o;
	int before = mfd_compress_list(NULL, 0);

	ck_assert_ptr_null(mfd_compress_find("test-rle"));
	ck_assert_ok(mfd_compress_register(&test_rle_ops, &err), err);
	ops = mfd_compress_find("test-rle");
	ck_assert_ptr_nonnull(ops);
	ck_assert_ptr_eq(ops->send_prepare, test_rle_ops.send_prepare);
	ck_assert_ptr_eq(ops->opaque, &test_rle_state);
	ck_assert_int_eq(mfd_compress_list(names, 16), before + 1);
	ck_assert_str_eq(names[before], "test-rle");

	/* Through the same paths as the built-ins. */
	for (int k = 0; k < K_COUNT; k++) {
		fill(data, 32 * PAGE, (enum kind)k, (uint64_t)k);
		round_trip(ops, NULL, NULL, data, 32 * PAGE, PAGE, (enum split)(k % SPLIT_COUNT),
			   (uint64_t)k);
	}
	outbuf_split(&o, 8, PAGE, SPLIT_ONE, 0);
	ck_assert_int_eq(compress_recv(ops, NULL, bad, sizeof(bad), o.iov, o.n, &err),
			 MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "test-rle: empty run at 0");
	outbuf_check_guards(&o);
	outbuf_free(&o);

	/* Twice: refused. */
	ck_assert_int_eq(mfd_compress_register(&test_rle_ops, &err), MFD_EEXIST);
	ck_assert_mfd_error(err, MFD_EEXIST, "compression codec 'test-rle' is already registered");
	free(data);
}
END_TEST

START_TEST(register_refuses_bad_tables)
{
	static const char long_name[] = "abcdefghijklmnopqrstuvwxyz012345"; /* 32 bytes */
	static const char max_name[] = "abcdefghijklmnopqrstuvwxyz01234";  /* 31 bytes */
	static mfd_compress_ops longest;	/* registered: lives as long as the process */
	mfd_compress_ops t;
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_compress_register(NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "the ops table is NULL");

	t = test_rle_ops;
	t.size = 16;
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "compression codec: struct mfd_compress_ops of 16 "
			    "bytes is smaller than its first layout");
	t.size = 0;
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "struct mfd_compress_ops of 0 bytes");

	t = test_rle_ops;
	t.name = NULL;
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "name is NULL");
	t.name = "";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "name is empty");
	t.name = "Zstd";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "character 'Z' at offset 0 is not one of a-z 0-9 _ -");
	t.name = "my codec";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "character ' ' at offset 2");
	t.name = "hw.qat";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "character '.' at offset 2");
	t.name = "tab\there";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "byte 0x09 at offset 3");
	t.name = "caf\xc3\xa9";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "byte 0xc3 at offset 3");
	t.name = long_name;
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "is longer than 31 bytes");

#define MISSING(member)                                                                   \
	do {                                                                              \
		t = test_rle_ops;                                                              \
		t.member = NULL;                                                          \
		ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);            \
		ck_assert_mfd_error(err, MFD_EINVAL,                                      \
				    "compression codec 'test-rle': " #member " is missing"); \
	} while (0)
	MISSING(bound);
	MISSING(send_setup);
	MISSING(send_prepare);
	MISSING(send_cleanup);
	MISSING(recv_setup);
	MISSING(recv);
	MISSING(recv_cleanup);
#undef MISSING

	t = test_rle_ops;
	t.level_min = 4;
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL,
			    "levels must satisfy level_min <= level_default <= level_max, got 4, 0, 3");
	t = test_rle_ops;
	t.level_default = 9;
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "got 0, 9, 3");

	/* A built-in's name is taken. */
	t = test_rle_ops;
	t.name = "none";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EEXIST);
	ck_assert_mfd_error(err, MFD_EEXIST, "compression codec 'none' is already registered");
#if MFD_HAVE_ZSTD
	t.name = "zstd";
	ck_assert_int_eq(mfd_compress_register(&t, &err), MFD_EEXIST);
	ck_assert_mfd_error(err, MFD_EEXIST, "'zstd' is already registered");
#endif
	/* Nothing refused got in; the longest name does. */
	ck_assert_ptr_null(mfd_compress_find("test-rle"));
	longest = test_rle_ops;
	longest.name = max_name;
	ck_assert_ok(mfd_compress_register(&longest, &err), err);
	/* The registry keeps a copy of the table and of its name. */
	ck_assert_ptr_nonnull(mfd_compress_find(max_name));
	ck_assert_ptr_ne(mfd_compress_find(max_name), &longest);
	ck_assert_ptr_ne(mfd_compress_find(max_name)->name, max_name);
	ck_assert_ptr_eq(mfd_compress_find(max_name)->recv, test_rle_ops.recv);
	ck_assert_uint_eq(mfd_compress_find(max_name)->size, sizeof(mfd_compress_ops));
	/* Without errp, the code alone. */
	ck_assert_int_eq(mfd_compress_register(&longest, NULL), MFD_EEXIST);
}
END_TEST

/*
 * A codec built before @opaque was appended (its size ends at recv_cleanup)
 * gets NULL there, whatever its memory holds past its size; a codec with
 * @opaque gets it back in send_setup and recv_setup.
 */
START_TEST(codec_opaque_reaches_setup)
{
	static mfd_compress_ops old_table, with_opaque;
	const mfd_compress_ops *ops;
	unsigned sends = atomic_load(&test_rle_state.send_setups);
	unsigned recvs = atomic_load(&test_rle_state.recv_setups);
	mfd_error *err = NULL;
	void *ctx = NULL;

	old_table = test_rle_ops;
	old_table.name = "test-old-layout";
	old_table.size = offsetof(mfd_compress_ops, opaque);
	ck_assert_ptr_nonnull(old_table.opaque);	/* beyond its size: not read */
	ck_assert_ok(mfd_compress_register(&old_table, &err), err);
	ops = mfd_compress_find("test-old-layout");
	ck_assert_ptr_nonnull(ops);
	ck_assert_ptr_null(ops->opaque);
	ck_assert_uint_eq(ops->size, sizeof(mfd_compress_ops));

	with_opaque = test_rle_ops;
	with_opaque.name = "test-opaque";
	ck_assert_ok(mfd_compress_register(&with_opaque, &err), err);
	ops = mfd_compress_find("test-opaque");
	ck_assert_ptr_eq(ops->opaque, &test_rle_state);
	ck_assert_ok(ops->send_setup(ops->opaque, &ctx, ops->level_default, &err), err);
	ops->send_cleanup(ctx);
	ck_assert_ok(ops->recv_setup(ops->opaque, &ctx, &err), err);
	ops->recv_cleanup(ctx);
	ck_assert_uint_eq(atomic_load(&test_rle_state.send_setups), sends + 1);
	ck_assert_uint_eq(atomic_load(&test_rle_state.recv_setups), recvs + 1);
}
END_TEST

START_TEST(registry_fills_up)
{
	static mfd_compress_ops tables[40];
	static char names[40][16];
	mfd_error *err = NULL;
	int i, r = 0;

	/* Needs a fresh process: other tests' registrations would stay. */
	if (getenv("CK_FORK") && strcmp(getenv("CK_FORK"), "no") == 0)
		return;
	for (i = 0; i < 40; i++) {
		tables[i] = test_rle_ops;
		snprintf(names[i], sizeof(names[i]), "fill-%d", i);
		tables[i].name = names[i];
		r = mfd_compress_register(&tables[i], &err);
		if (r < 0)
			break;
	}
	ck_assert_int_eq(r, MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "the registry is full (32 codecs)");
	ck_assert_int_eq(mfd_compress_list(NULL, 0), 32);
	ck_assert_ptr_nonnull(mfd_compress_find("fill-0"));
	ck_assert_str_eq(mfd_compress_find("fill-0")->name, "fill-0");
	ck_assert_ptr_null(mfd_compress_find(names[i]));
}
END_TEST

#define CONC_THREADS 4
#define CONC_PER_THREAD 3

static mfd_compress_ops conc_tables[CONC_THREADS][CONC_PER_THREAD];
static char conc_names[CONC_THREADS][CONC_PER_THREAD][24];

static void *conc_worker(void *arg)
{
	int t = (int)(intptr_t)arg;
	long fails = 0;

	for (int k = 0; k < CONC_PER_THREAD; k++) {
		const char *seen[40];

		if (mfd_compress_register(&conc_tables[t][k], NULL) != 0)
			fails++;
		for (int j = 0; j < 50; j++) {
			int n = mfd_compress_list(seen, 40);

			for (int s = 0; s < n && s < 40; s++)
				if (!mfd_compress_find(seen[s]))
					fails++;
		}
		const mfd_compress_ops *found = mfd_compress_find(conc_names[t][k]);

		if (!found || strcmp(found->name, conc_names[t][k]) != 0)
			fails++;
	}
	return (void *)fails;
}

START_TEST(registry_is_thread_safe)
{
	pthread_t th[CONC_THREADS];
	int before = mfd_compress_list(NULL, 0);

	if (before + CONC_THREADS * CONC_PER_THREAD > 32)
		return;	/* not in a fresh process (CK_FORK=no) */
	for (int t = 0; t < CONC_THREADS; t++)
		for (int k = 0; k < CONC_PER_THREAD; k++) {
			conc_tables[t][k] = test_rle_ops;
			snprintf(conc_names[t][k], sizeof(conc_names[t][k]), "conc-%d-%d", t, k);
			conc_tables[t][k].name = conc_names[t][k];
		}
	for (int t = 0; t < CONC_THREADS; t++)
		ck_assert_int_eq(pthread_create(&th[t], NULL, conc_worker, (void *)(intptr_t)t), 0);
	for (int t = 0; t < CONC_THREADS; t++) {
		void *fails;

		ck_assert_int_eq(pthread_join(th[t], &fails), 0);
		ck_assert_ptr_null(fails);
	}
	ck_assert_int_eq(mfd_compress_list(NULL, 0), before + CONC_THREADS * CONC_PER_THREAD);
}
END_TEST

/* The wrappers hold a registered codec to the contract. */
static int liar_send_prepare(void *ctx, const void *in, size_t in_len, void *out, size_t out_cap,
			     size_t *out_len, mfd_error **errp)
{
	(void)ctx, (void)in, (void)in_len, (void)out, (void)errp;
	*out_len = out_cap + 1;
	return 0;
}

static int silent_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		       mfd_error **errp)
{
	(void)ctx, (void)in, (void)in_len, (void)out, (void)n, (void)errp;
	return -1000;
}

static int errno_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		      mfd_error **errp)
{
	(void)ctx, (void)in, (void)in_len, (void)out, (void)n;
	return mfd_error_set(errp, -22, "hw-codec: device said EINVAL");
}

static int proto_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		      mfd_error **errp)
{
	(void)ctx, (void)in, (void)out, (void)n;
	mfd_error_set(errp, MFD_EPROTO, "hw-codec: bad payload of %zu bytes", in_len);
	return 1;	/* positive: still a failure */
}

START_TEST(wrappers_enforce_the_contract)
{
	mfd_compress_ops t = test_rle_ops;
	uint8_t in[16] = { 0 }, out[16];
	struct iovec iov = { out, sizeof(out) };
	mfd_error *err = NULL;
	size_t clen = 7;

	t.name = "hw-codec";
	t.send_prepare = liar_send_prepare;
	ck_assert_int_eq(compress_send(&t, NULL, in, 16, out, 16, &clen, &err), MFD_EHANDLER);
	ck_assert_mfd_error(err, MFD_EHANDLER,
			    "hw-codec: send_prepare reported 17 bytes of output in a 16-byte buffer");
	ck_assert_uint_eq(clen, 7);
	t.recv = silent_recv;
	ck_assert_int_eq(compress_recv(&t, NULL, in, 2, &iov, 1, &err), MFD_EHANDLER);
	ck_assert_mfd_error(err, MFD_EHANDLER, "hw-codec: recv failed with code -1000 and no message");
	t.recv = errno_recv;
	ck_assert_int_eq(compress_recv(&t, NULL, in, 2, &iov, 1, &err), MFD_EHANDLER);
	ck_assert_mfd_error(err, MFD_EHANDLER, "device said EINVAL");
	t.recv = proto_recv;
	ck_assert_int_eq(compress_recv(&t, NULL, in, 2, &iov, 1, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "hw-codec: bad payload of 2 bytes");
	/* NULL errp: the code still comes back. */
	ck_assert_int_eq(compress_recv(&t, NULL, in, 2, &iov, 1, NULL), MFD_EPROTO);
	/* The receiver's bound check before reading a payload. */
	ck_assert_int_eq(compress_check_payload(&t, 2 * PAGE + 1, PAGE, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO,
			    "hw-codec: payload of 8193 bytes is beyond the codec's bound of 8192 "
			    "bytes for a 4096-byte packet");
	ck_assert_int_eq(compress_check_payload(&t, 2 * PAGE, PAGE, &err), 0);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Untrusted input                                                           */
/* ------------------------------------------------------------------------ */

#define BAD_PAGES 8
#define BAD_LEN (BAD_PAGES * PAGE)

/* What each codec says about the common kinds of bad payload. */
struct bad_text {
	const char *empty;		/* no bytes for a full packet */
	const char *to_fewer;		/* a valid payload for one page less */
	const char *to_more;		/* a valid payload for one page more */
	const char *no_output;		/* a valid payload for a packet of no bytes */
	const char *trailing;		/* valid + 12 bytes */
	const char *twice;		/* two valid payloads back to back */
	const char *truncated[3];	/* alternatives for a cut payload */
	const char *garbage[4];		/* alternatives for random bytes */
	int flips;			/* 0: refused or decoded right; 1: may decode wrong; 2: accepted */
};

static const struct bad_text none_text = {
	.empty = "none: payload of 0 bytes, the packet holds 32768",
	.to_fewer = "none: payload of 32768 bytes, the packet holds 28672",
	.to_more = "none: payload of 32768 bytes, the packet holds 36864",
	.no_output = "none: payload of 32768 bytes, the packet holds 0",
	.trailing = "none: payload of 32780 bytes, the packet holds 32768",
	.twice = "none: payload of 65536 bytes, the packet holds 32768",
	.truncated = { "none: payload of " },
	.garbage = { "none: payload of " },
	.flips = 2,
};

static const struct bad_text zlib_text = {
	.empty = "zlib: payload ended before the stream end (0 of 32768 output bytes written)",
	.to_fewer = "expands beyond the packet's 28672 bytes",
	.to_more = "zlib: payload decodes to 32768 bytes, the packet holds 36864",
	.no_output = "expands beyond the packet's 0 bytes",
	.trailing = "zlib: 12 bytes of trailing input after the end of the stream",
	.twice = "bytes of trailing input after the end of the stream",
	.truncated = { "zlib: payload ended before the stream end" },
	.garbage = { "zlib: corrupt stream at input byte", "zlib: stream asks for preset dictionary",
		     "zlib: payload ended before the stream end" },
	.flips = 0,
};

static const struct bad_text zstd_text = {
	.empty = "zstd: payload ended before the frame end (0 bytes, inside the frame header)",
	.to_fewer = "zstd: frame declares 32768 bytes of content, the packet holds 28672",
	.to_more = "zstd: frame declares 32768 bytes of content, the packet holds 36864",
	.no_output = "zstd: frame declares 32768 bytes of content, the packet holds 0",
	.trailing = "zstd: 12 bytes of trailing input after the end of the frame",
	.twice = "bytes of trailing input after the end of the frame",
	.truncated = { "zstd: payload ended before the frame end" },
	.garbage = { "zstd: payload does not start with a zstd frame",
		     "zstd: payload ended before the frame end" },
	.flips = 0,
};

static const struct bad_text lz4_text = {
	.empty = "lz4: empty payload; a block has at least 1 byte (packet of 32768 bytes)",
	.to_fewer = "is corrupt or expands beyond the packet's 28672 bytes",
	.to_more = "lz4: payload decodes to 32768 bytes, the packet holds 36864",
	.no_output = "is corrupt or expands beyond the packet's 0 bytes",
	.trailing = "lz4: payload",
	.twice = "lz4: payload",
	.truncated = { "is corrupt or expands beyond the packet's 32768 bytes",
		       "lz4: payload decodes to " },
	.garbage = { "is corrupt or expands beyond the packet's", "lz4: payload decodes to " },
	.flips = 1,
};

struct fixture {
	const char *label;		/* for the case count (MFD_TEST_VERBOSE=1) */
	const mfd_compress_ops *ops;
	const struct bad_text *text;
	void *cctx, *dctx;
	uint8_t data[BAD_LEN + PAGE];	/* the packet's pages, and one page more */
	uint8_t *valid;			/* payload of the BAD_PAGES pages */
	size_t valid_len;
	int cases;			/* bad payloads tried */
	int wrong_accepted;		/* bit flips decoded to different pages */
};

static struct fixture *fixture_new(const mfd_compress_ops *ops, const char *label)
{
	struct fixture *f = calloc(1, sizeof(*f));
	static const struct {
		const char *name;
		const struct bad_text *text;
	} texts[] = { { "none", &none_text }, { "zlib", &zlib_text }, { "zstd", &zstd_text },
		      { "lz4", &lz4_text } };

	ck_assert_ptr_nonnull(f);
	f->label = label;
	f->ops = ops;
	for (size_t i = 0; i < MFD_ARRAY_SIZE(texts); i++)
		if (strcmp(texts[i].name, ops->name) == 0)
			f->text = texts[i].text;
	ck_assert_ptr_nonnull(f->text);
	f->cctx = send_ctx(ops, ops->level_default);
	f->dctx = recv_ctx(ops);
	fill(f->data, sizeof(f->data), K_MIXED, 4242);
	/* At least one text page, so that every codec has real matches. */
	fill(f->data + PAGE, PAGE, K_TEXT, 1);
	f->valid = compress_buf(ops, f->cctx, f->data, BAD_LEN, &f->valid_len);
	return f;
}

static void fixture_free(struct fixture *f)
{
	if (getenv("MFD_TEST_VERBOSE"))
		printf("compress: %s %s: %d bad payloads refused or safely handled; %d bit flips "
		       "decoded to different pages\n",
		       f->ops->name, f->label, f->cases, f->wrong_accepted);
	f->ops->send_cleanup(f->cctx);
	f->ops->recv_cleanup(f->dctx);
	free(f->valid);
	free(f);
}

/* Decode into a fresh packet of @total bytes split as @how; guards checked. */
static int decode(struct fixture *f, const void *in, size_t in_len, size_t total, enum split how,
		  mfd_error **errp, bool *same)
{
	struct outbuf o;
	int r;

	outbuf_split(&o, total, PAGE, how, in_len);
	r = compress_recv(f->ops, f->dctx, in, in_len, o.iov, o.n, errp);
	outbuf_check_guards(&o);
	if (same)
		*same = total <= sizeof(f->data) && outbuf_equals(&o, f->data);
	outbuf_free(&o);
	return r;
}

/* After any refusal the context must decode the next good packet. */
static void still_works(struct fixture *f)
{
	mfd_error *err = NULL;
	bool same = false;

	ck_assert_ok(decode(f, f->valid, f->valid_len, BAD_LEN, SPLIT_PAGES, &err, &same), err);
	ck_assert(same);
}

static bool has_any(const char *msg, const char *const *alts, int nalts)
{
	for (int i = 0; i < nalts && alts[i]; i++)
		if (strstr(msg, alts[i]))
			return true;
	return false;
}

/* A bad payload: refused with @code and a message holding one of @alts. */
static void expect_bad_any(struct fixture *f, const void *in, size_t in_len, size_t total,
			   enum split how, int code, const char *const *alts, int nalts)
{
	mfd_error *err = NULL;
	int r = decode(f, in, in_len, total, how, &err, NULL);

	ck_assert_msg(r == code, "%s: %zu-byte payload into %zu bytes: expected %d, got %d (%s)",
		      f->ops->name, in_len, total, code, r, mfd_error_message(err));
	ck_assert_int_eq(mfd_error_code(err), code);
	ck_assert_msg(has_any(mfd_error_message(err), alts, nalts),
		      "%s: unexpected message '%s' (wanted '%s'...)", f->ops->name,
		      mfd_error_message(err), alts[0]);
	mfd_error_free(err);
	f->cases++;
	still_works(f);
}

static void expect_bad(struct fixture *f, const void *in, size_t in_len, size_t total, int code,
		       const char *substr)
{
	expect_bad_any(f, in, in_len, total, SPLIT_PAGES, code, &substr, 1);
}

static void expect_accepted(struct fixture *f, const void *in, size_t in_len, size_t total)
{
	mfd_error *err = NULL;

	ck_assert_ok(decode(f, in, in_len, total, SPLIT_PAGES, &err, NULL), err);
	f->cases++;
}

/* The kinds of bad payload every codec must refuse. */
static void common_bad_cases(struct fixture *f)
{
	const struct bad_text *t = f->text;
	bool accepting = t->flips == 2;
	size_t vlen = f->valid_len, clen;
	uint8_t *buf = xmalloc(2 * vlen + 128 * 1024), *fewer, *more;
	uint64_t rng = 77;
	mfd_error *err = NULL;
	uint8_t one = 0;
	struct iovec iov;

	expect_bad(f, f->valid, 0, BAD_LEN, MFD_EPROTO, t->empty);
	expect_bad(f, "", 0, BAD_LEN, MFD_EPROTO, t->empty);
	expect_bad(f, f->valid, vlen, BAD_LEN - PAGE, MFD_EPROTO, t->to_fewer);
	expect_bad(f, f->valid, vlen, BAD_LEN + PAGE, MFD_EPROTO, t->to_more);
	expect_bad(f, f->valid, vlen, 0, MFD_EPROTO, t->no_output);

	/* The same mismatches from payloads made for another size. */
	fewer = compress_buf(f->ops, f->cctx, f->data, BAD_LEN - PAGE, &clen);
	expect_bad(f, fewer, clen, BAD_LEN, MFD_EPROTO,
		   strcmp(f->ops->name, "none") == 0 ? "none: payload of 28672 bytes" :
		   strcmp(f->ops->name, "zstd") == 0 ? "frame declares 28672 bytes" :
		   "decodes to 28672 bytes, the packet holds 32768");
	free(fewer);
	more = compress_buf(f->ops, f->cctx, f->data, BAD_LEN + PAGE, &clen);
	expect_bad(f, more, clen, BAD_LEN, MFD_EPROTO,
		   strcmp(f->ops->name, "none") == 0 ? "none: payload of 36864 bytes" :
		   strcmp(f->ops->name, "zstd") == 0 ? "frame declares 36864 bytes" :
		   strcmp(f->ops->name, "lz4") == 0 ? "expands beyond the packet's 32768" :
		   "zlib: payload of");
	free(more);

	/* Trailing garbage, and the payload twice. */
	memcpy(buf, f->valid, vlen);
	memcpy(buf + vlen, "garbage!1234", 12);
	expect_bad(f, buf, vlen + 12, BAD_LEN, MFD_EPROTO, t->trailing);
	memcpy(buf + vlen, f->valid, vlen);
	expect_bad(f, buf, 2 * vlen, BAD_LEN, MFD_EPROTO, t->twice);
	if (!accepting) {
		buf[vlen] = 0;
		expect_bad_any(f, buf, vlen + 1, BAD_LEN, SPLIT_ONE, MFD_EPROTO,
			       (const char *const[]){ "1 bytes of trailing input", "lz4: payload" },
			       2);
	}

	/* Cut at many places, with each output layout. */
	for (size_t cut = 1; cut < vlen;) {
		expect_bad_any(f, f->valid, cut, BAD_LEN, (enum split)(cut % SPLIT_COUNT),
			       MFD_EPROTO, t->truncated, 3);
		cut += cut < 24 || cut + 24 >= vlen ? 1 : MFD_MAX(vlen / 29, (size_t)1);
	}

	/* Random bytes of various lengths (for "none", the right length is fine). */
	for (int s = 0; s < 12; s++) {
		static const size_t lens[] = { 1, 2, 3, 4, 5, 9, 18, 100, 1000, 4096, 20000, 70000 };
		size_t len = lens[s];

		fill_random(buf, len, &rng);
		expect_bad_any(f, buf, len, BAD_LEN, (enum split)(s % SPLIT_COUNT), MFD_EPROTO,
			       t->garbage, 4);
	}
	fill_random(buf, BAD_LEN, &rng);
	if (accepting)
		expect_accepted(f, buf, BAD_LEN, BAD_LEN);
	/* All zeros, all ones, at the valid length. */
	memset(buf, 0, vlen);
	if (accepting)
		expect_accepted(f, buf, vlen, BAD_LEN);
	else
		expect_bad_any(f, buf, vlen, BAD_LEN, SPLIT_PAGES, MFD_EPROTO, t->garbage, 4);
	memset(buf, 0xff, vlen);
	if (accepting)
		expect_accepted(f, buf, vlen, BAD_LEN);
	else
		expect_bad_any(f, buf, vlen, BAD_LEN, SPLIT_PAGES, MFD_EPROTO, t->garbage, 4);

	/* Caller mistakes are MFD_EINVAL, before any byte is read. */
	iov = (struct iovec){ &one, 1 };
	ck_assert_int_eq(compress_recv(f->ops, f->dctx, f->valid, vlen, &iov, -1, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "invalid output vector (-1 buffers");
	ck_assert_int_eq(compress_recv(f->ops, f->dctx, f->valid, vlen, NULL, 3, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "invalid output vector (3 buffers");
	ck_assert_int_eq(compress_recv(f->ops, f->dctx, NULL, 10, &iov, 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "payload of 10 bytes at NULL");
	iov = (struct iovec){ NULL, 100 };
	ck_assert_int_eq(compress_recv(f->ops, f->dctx, f->valid, vlen, &iov, 1, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "output buffer 0 of 100 bytes is NULL");
	{
		struct iovec two[2] = { { &one, SIZE_MAX }, { &one, 2 } };

		ck_assert_int_eq(compress_recv(f->ops, f->dctx, f->valid, vlen, two, 2, &err),
				 MFD_ETOOBIG);
		ck_assert_mfd_error(err, MFD_ETOOBIG, "add up to more than SIZE_MAX");
	}
	f->cases += 5;
	still_works(f);
	free(buf);
}

/* Bit flips all over a valid payload: never a crash, never a write outside
 * the packet; checksummed codecs never hand back wrong pages. */
static void bit_flip_cases(struct fixture *f)
{
	uint8_t *buf = xmalloc(f->valid_len);
	uint64_t rng = 99;
	int flips = 0;

	for (int round = 0; round < 400; round++) {
		size_t pos;
		unsigned bit;
		mfd_error *err = NULL;
		bool same = false;
		int r;

		if (round < 256) {	/* every bit of the first and last 16 bytes */
			size_t b = (size_t)round / 8;

			pos = b < 16 ? b : f->valid_len - 32 + b;
			bit = (unsigned)round % 8;
		} else {
			uint64_t x = rng_next(&rng);

			pos = (size_t)(x % f->valid_len);
			bit = (unsigned)(x >> 40) % 8;
		}
		if (pos >= f->valid_len)
			continue;
		memcpy(buf, f->valid, f->valid_len);
		buf[pos] ^= (uint8_t)(1u << bit);
		r = decode(f, buf, f->valid_len, BAD_LEN, (enum split)(round % SPLIT_COUNT), &err,
			   &same);
		flips++;
		if (r == 0) {
			ck_assert_msg(f->text->flips > 0 || same,
				      "%s: flipping bit %u of byte %zu gave wrong pages, accepted",
				      f->ops->name, bit, pos);
			ck_assert_msg(f->text->flips < 2 || !same, "none: the flip vanished");
			if (!same)
				f->wrong_accepted++;
		} else {
			ck_assert_msg(f->text->flips < 2, "none refused a flipped payload: %s",
				      mfd_error_message(err));
			ck_assert_int_eq(r, MFD_EPROTO);
			ck_assert_int_eq(mfd_error_code(err), MFD_EPROTO);
			ck_assert(strncmp(mfd_error_message(err), f->ops->name,
					  strlen(f->ops->name)) == 0);
		}
		mfd_error_free(err);
	}
	f->cases += flips;
	still_works(f);
	free(buf);
}

START_TEST(untrusted_common)
{
	const mfd_compress_ops *ops = codec_for(_i);
	struct fixture *f;

	if (!ops)
		return;
	f = fixture_new(ops, "common");
	common_bad_cases(f);
	bit_flip_cases(f);
	ck_assert_int_ge(f->cases, 60);
	fixture_free(f);
}
END_TEST

#if MFD_HAVE_ZLIB
/* A zlib header: CMF, FLG with FCHECK making the pair a multiple of 31. */
static void zlib_header(uint8_t *p, uint8_t cmf, uint8_t flg)
{
	flg &= 0xe0;
	flg |= (uint8_t)((31 - (cmf * 256 + flg) % 31) % 31);
	p[0] = cmf;
	p[1] = flg;
}

/* @len zero bytes as one zlib stream, compressed without holding them. */
static uint8_t *zlib_bomb(size_t len, size_t *out_len)
{
	static const uint8_t zeros[65536];
	size_t cap = len / 500 + 1024;
	uint8_t *out = xmalloc(cap);
	z_stream zs;

	memset(&zs, 0, sizeof(zs));
	ck_assert_int_eq(deflateInit(&zs, 9), Z_OK);
	zs.next_out = out;
	zs.avail_out = (uInt)cap;
	for (size_t done = 0; done < len;) {
		size_t chunk = MFD_MIN(sizeof(zeros), len - done);

		done += chunk;
		zs.next_in = zeros;
		zs.avail_in = (uInt)chunk;
		ck_assert_int_eq(deflate(&zs, done == len ? Z_FINISH : Z_NO_FLUSH),
				 done == len ? Z_STREAM_END : Z_OK);
	}
	*out_len = zs.total_out;
	deflateEnd(&zs);
	return out;
}

START_TEST(untrusted_zlib)
{
	struct fixture *f = fixture_new(mfd_compress_find("zlib"), "crafted");
	uint8_t b[64];
	size_t len;
	uint8_t *bomb;

	/* A preset dictionary request (FDICT), dictionary id 0x12345678. */
	zlib_header(b, 0x78, 0x20);
	memcpy(b + 2, "\x12\x34\x56\x78\x03\x00\x00\x00\x00\x01", 10);
	expect_bad(f, b, 12, BAD_LEN, MFD_EPROTO,
		   "zlib: stream asks for preset dictionary 0x12345678; packets never use one");
	/* Header check wrong; gzip; raw deflate; method not deflate; window too large. */
	expect_bad(f, "\x78\x00\x03\x00", 4, BAD_LEN, MFD_EPROTO, "incorrect header check");
	expect_bad(f, "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10, BAD_LEN, MFD_EPROTO,
		   "incorrect header check");
	zlib_header(b, 0x77, 0);
	expect_bad(f, b, 2, BAD_LEN, MFD_EPROTO, "unknown compression method");
	zlib_header(b, 0x88, 0);
	expect_bad(f, b, 2, BAD_LEN, MFD_EPROTO, "invalid window size");
	/* Block type 3 (reserved). */
	expect_bad(f, "\x78\x01\x07\x00", 4, BAD_LEN, MFD_EPROTO,
		   "corrupt stream at input byte 3 (0 of 32768 output bytes written): invalid block type");
	/* A stored block whose length and its complement disagree. */
	expect_bad(f, "\x78\x01\x01\x10\x00\x00\x00", 7, BAD_LEN, MFD_EPROTO,
		   "invalid stored block lengths");
	/* A match reaching before the start of the output (fixed Huffman:
	 * length 3, distance 1, at position 0). */
	expect_bad(f, "\x78\x01\x03\x02\x00\x00\x00\x00\x01", 9, BAD_LEN, MFD_EPROTO,
		   "invalid distance too far back");
	/* The Adler-32 of other data. */
	{
		uint8_t *c = xmalloc(f->valid_len);

		memcpy(c, f->valid, f->valid_len);
		c[f->valid_len - 1] ^= 0x40;
		expect_bad(f, c, f->valid_len, BAD_LEN, MFD_EPROTO, "incorrect data check");
		/* The stream minus its Adler-32 trailer. */
		expect_bad(f, c, f->valid_len - 4, BAD_LEN, MFD_EPROTO,
			   "zlib: payload ended before the stream end (32768 of 32768 output bytes written)");
		free(c);
	}
	/* A raw deflate stream (no zlib wrapper). */
	{
		z_stream zs;
		uint8_t out[1024];

		memset(&zs, 0, sizeof(zs));
		ck_assert_int_eq(deflateInit2(&zs, 1, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
		zs.next_in = (const Bytef *)"hello hello hello hello";
		zs.avail_in = 23;
		zs.next_out = out;
		zs.avail_out = sizeof(out);
		ck_assert_int_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
		expect_bad_any(f, out, zs.total_out, 23, SPLIT_ONE, MFD_EPROTO,
			       (const char *const[]){ "zlib: corrupt stream" }, 1);
		deflateEnd(&zs);
	}
	/* 64 MiB of zeros (a 64 KiB payload) for a 32 KiB packet. */
	bomb = zlib_bomb(64u << 20, &len);
	ck_assert_uint_lt(len, 128 * 1024);
	expect_bad(f, bomb, len, BAD_LEN, MFD_EPROTO, "expands beyond the packet's 32768 bytes");
	expect_bad_any(f, bomb, len, BAD_LEN, SPLIT_ONE, MFD_EPROTO,
		       (const char *const[]){ "expands beyond the packet's 32768 bytes" }, 1);
	free(bomb);
	/* Payload beyond zlib's 32-bit lengths: refused before reading. */
	{
		uint8_t page[16];
		struct iovec iov = { page, sizeof(page) };
		mfd_error *err = NULL;

		ck_assert_int_eq(compress_recv(f->ops, f->dctx, b, (size_t)UINT32_MAX + 1, &iov,
						   1, &err),
				 MFD_EPROTO);
		ck_assert_mfd_error(err, MFD_EPROTO, "zlib: payload of 4294967296 bytes");
		f->cases++;
	}
	ck_assert_int_ge(f->cases, 13);
	fixture_free(f);
}
END_TEST
#endif

#if MFD_HAVE_ZSTD
static void le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* @len zero bytes as a frame with a 1 KiB window and no content size. */
static uint8_t *zstd_small_window_bomb(size_t len, size_t *out_len)
{
	static const uint8_t zeros[65536];
	size_t cap = ZSTD_compressBound(len);
	uint8_t *out = xmalloc(cap);
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	ZSTD_outBuffer o = { out, cap, 0 };

	ck_assert_ptr_nonnull(cctx);
	ck_assert(!ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, 10)));
	ck_assert(!ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0)));
	for (size_t done = 0; done < len;) {
		ZSTD_inBuffer i = { zeros, MFD_MIN(sizeof(zeros), len - done), 0 };
		bool last = done + i.size == len;
		size_t r;

		done += i.size;
		do {
			r = ZSTD_compressStream2(cctx, &o, &i, last ? ZSTD_e_end : ZSTD_e_continue);
			ck_assert(!ZSTD_isError(r));
		} while (i.pos < i.size || (last && r != 0));
	}
	ZSTD_freeCCtx(cctx);
	*out_len = o.pos;
	return out;
}

/* The fixture's pages as a frame with a 1 MiB window and no content size. */
static uint8_t *zstd_big_window(const uint8_t *data, size_t len, size_t *out_len)
{
	size_t cap = ZSTD_compressBound(len), r;
	uint8_t *out = xmalloc(cap);
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	ZSTD_outBuffer o = { out, cap, 0 };
	ZSTD_inBuffer a = { data, len / 2, 0 }, b = { data + len / 2, len - len / 2, 0 };

	ck_assert(!ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, 20)));
	/* Two calls, so the encoder never learns the size and keeps the window. */
	ck_assert(!ZSTD_isError(ZSTD_compressStream2(cctx, &o, &a, ZSTD_e_continue)));
	do {
		r = ZSTD_compressStream2(cctx, &o, &b, ZSTD_e_end);
		ck_assert(!ZSTD_isError(r));
	} while (r != 0);
	ZSTD_freeCCtx(cctx);
	*out_len = o.pos;
	return out;
}

START_TEST(untrusted_zstd)
{
	struct fixture *f = fixture_new(mfd_compress_find("zstd"), "crafted");
	uint8_t b[64], *p, *c;
	size_t len;

	/* A content size of 1 TiB in the header. */
	le32(b, ZSTD_MAGICNUMBER);
	memcpy(b + 4, "\xe0\x00\x00\x00\x00\x00\x01\x00\x00\x09\x00\x00\x41", 13);
	expect_bad(f, b, 17, BAD_LEN, MFD_EPROTO,
		   "zstd: frame declares 1099511627776 bytes of content, the packet holds 32768");
	/* A content size of 0 for a full packet. */
	memcpy(b + 4, "\x20\x00\x01\x00\x00", 5);
	expect_bad(f, b, 9, BAD_LEN, MFD_EPROTO, "zstd: frame declares 0 bytes of content");
	/* Windows of 128 MiB (zstd's default limit) and 512 KiB, no content size. */
	memcpy(b + 4, "\x00\x88\x09\x00\x00\x41", 6);
	expect_bad(f, b, 10, BAD_LEN, MFD_EPROTO,
		   "zstd: frame asks for a window beyond the 32768-byte limit for a 32768-byte packet");
	b[5] = 0x48;
	expect_bad(f, b, 10, BAD_LEN, MFD_EPROTO, "window beyond the 32768-byte limit");
	/* A real frame for these pages, made with a 1 MiB window. */
	p = zstd_big_window(f->data, BAD_LEN, &len);
	expect_bad(f, p, len, BAD_LEN, MFD_EPROTO, "window beyond the 32768-byte limit");
	/* ... which the same context accepts for a packet that large. */
	{
		uint8_t *big = xmalloc(1u << 20);
		size_t blen;
		uint8_t *bp;
		struct outbuf o;
		mfd_error *err = NULL;

		fill(big, 1u << 20, K_MIXED, 3);
		bp = zstd_big_window(big, 1u << 20, &blen);
		outbuf_split(&o, 1u << 20, PAGE, SPLIT_PAGES, 0);
		ck_assert_ok(compress_recv(f->ops, f->dctx, bp, blen, o.iov, o.n, &err), err);
		ck_assert(outbuf_equals(&o, big));
		outbuf_check_guards(&o);
		outbuf_free(&o);
		free(bp);
		free(big);
	}
	free(p);
	/* A skippable frame; a legacy (v0.7) frame; a reserved header bit. */
	le32(b, ZSTD_MAGIC_SKIPPABLE_START);
	memcpy(b + 4, "\x04\x00\x00\x00\xde\xad\xbe\xef", 8);
	expect_bad(f, b, 12, BAD_LEN, MFD_EPROTO,
		   "zstd: payload does not start with a zstd frame (magic 0x184d2a50)");
	le32(b, 0xFD2FB527);
	expect_bad(f, b, 12, BAD_LEN, MFD_EPROTO, "(magic 0xfd2fb527)");
	le32(b, ZSTD_MAGICNUMBER);
	memcpy(b + 4, "\x28\x00\x01\x00\x00", 5);
	expect_bad(f, b, 9, BAD_LEN, MFD_EPROTO, "zstd: corrupt frame at input byte");
	/* Shorter than a magic number. */
	expect_bad(f, f->valid, 3, BAD_LEN, MFD_EPROTO,
		   "zstd: payload ended before the frame end (3 bytes, inside the frame header)");
	/* Content checksum of other pages. */
	c = xmalloc(f->valid_len);
	memcpy(c, f->valid, f->valid_len);
	c[f->valid_len - 2] ^= 0x10;
	expect_bad(f, c, f->valid_len, BAD_LEN, MFD_EPROTO,
		   "zstd: checksum mismatch: the decoded pages are not the ones compressed");
	/* The frame without its checksum. */
	expect_bad(f, c, f->valid_len - 4, BAD_LEN, MFD_EPROTO,
		   "zstd: payload ended before the frame end (32768 of 32768 output bytes written)");
	free(c);
	/* 64 MiB of zeros in a 1 KiB-window frame without a content size. */
	p = zstd_small_window_bomb(64u << 20, &len);
	expect_bad(f, p, len, BAD_LEN, MFD_EPROTO,
		   "expands beyond the packet's 32768 bytes");
	expect_bad_any(f, p, len, BAD_LEN, SPLIT_RANDOM, MFD_EPROTO,
		       (const char *const[]){ "expands beyond the packet's 32768 bytes" }, 1);
	free(p);
	/* The same kind of frame, but holding fewer bytes than the packet. */
	p = zstd_small_window_bomb(BAD_LEN - 100, &len);
	expect_bad(f, p, len, BAD_LEN, MFD_EPROTO,
		   "zstd: payload decodes to 32668 bytes, the packet holds 32768");
	free(p);
	ck_assert_int_ge(f->cases, 14);
	fixture_free(f);
}
END_TEST
#endif

#if MFD_HAVE_LZ4
START_TEST(untrusted_lz4)
{
	struct fixture *f = fixture_new(mfd_compress_find("lz4"), "crafted");
	uint8_t b[600], *p;
	int len;
	size_t zlen = 16u << 20;

	/* A literal run whose length never ends. */
	b[0] = 0xf0;
	memset(b + 1, 0xff, sizeof(b) - 1);
	expect_bad(f, b, sizeof(b), BAD_LEN, MFD_EPROTO, "lz4: payload of 600 bytes is corrupt");
	/* Offset 0 (lz4 1.9 copies the bytes being written; later versions
	 * refuse it), and an offset before the start of the output. */
	expect_bad_any(f, "\x10" "a" "\x00\x00" "\x50" "bbbbb", 10, BAD_LEN, SPLIT_PAGES,
		       MFD_EPROTO,
		       (const char *const[]){ "lz4: payload of 10 bytes is corrupt",
					      "lz4: payload decodes to 10 bytes, the packet holds 32768" },
		       2);
	expect_bad(f, "\x10" "a" "\x00\x01" "\x50" "bbbbb", 10, BAD_LEN, MFD_EPROTO,
		   "lz4: payload of 10 bytes is corrupt");
	/* A valid block of 5 bytes. */
	expect_bad(f, "\x50" "hello", 6, BAD_LEN, MFD_EPROTO,
		   "lz4: payload decodes to 5 bytes, the packet holds 32768");
	expect_bad_any(f, "\x50" "hello", 6, 4, SPLIT_ONE, MFD_EPROTO,
		       (const char *const[]){ "expands beyond the packet's 4 bytes" }, 1);
	/* 16 MiB of zeros (a 64 KiB block), whole packet in one buffer and split. */
	{
		char *zeros = calloc(1, zlen);
		int cap = LZ4_compressBound((int)zlen);

		ck_assert_ptr_nonnull(zeros);
		p = xmalloc((size_t)cap);
		len = LZ4_compress_default(zeros, (char *)p, (int)zlen, cap);
		ck_assert_int_gt(len, 0);
		free(zeros);
	}
	expect_bad(f, p, (size_t)len, BAD_LEN, MFD_EPROTO,
		   "is corrupt or expands beyond the packet's 32768 bytes");
	expect_bad_any(f, p, (size_t)len, BAD_LEN, SPLIT_ONE, MFD_EPROTO,
		       (const char *const[]){ "expands beyond the packet's 32768 bytes" }, 1);
	free(p);
	/* Sizes beyond lz4's int lengths: refused before reading or writing. */
	{
		uint8_t page[16];
		struct iovec iov = { page, sizeof(page) }, huge[2] = { { page, 1u << 30 },
								       { page, 1u << 30 } };
		mfd_error *err = NULL;

		ck_assert_int_eq(compress_recv(f->ops, f->dctx, b, (size_t)INT32_MAX + 1, &iov,
						   1, &err),
				 MFD_EPROTO);
		ck_assert_mfd_error(err, MFD_EPROTO, "lz4: payload of 2147483648 bytes is beyond");
		ck_assert_int_eq(compress_recv(f->ops, f->dctx, b, 10, huge, 2, &err),
				 MFD_ETOOBIG);
		ck_assert_mfd_error(err, MFD_ETOOBIG, "lz4: packet of 2147483648 bytes is beyond");
		f->cases += 2;
	}
	ck_assert_int_ge(f->cases, 9);
	fixture_free(f);
}
END_TEST
#endif

/* none: every byte matters, only the length is checked. */
START_TEST(untrusted_none)
{
	struct fixture *f = fixture_new(mfd_compress_find("none"), "crafted");

	expect_bad(f, f->valid, BAD_LEN - 1, BAD_LEN, MFD_EPROTO,
		   "none: payload of 32767 bytes, the packet holds 32768");
	expect_bad(f, "x", 1, 0, MFD_EPROTO, "none: payload of 1 bytes, the packet holds 0");
	expect_accepted(f, "", 0, 0);
	fixture_free(f);
}
END_TEST

/* An empty packet is one valid payload per codec, and nothing else. */
START_TEST(empty_packet)
{
	const mfd_compress_ops *ops = codec_for(_i);
	mfd_error *err = NULL;
	uint8_t payload[128];
	size_t clen;
	void *cctx, *dctx;
	struct outbuf o;
	char want[64];

	if (!ops)
		return;
	cctx = send_ctx(ops, ops->level_default);
	dctx = recv_ctx(ops);
	ck_assert_uint_le(ops->bound(0), sizeof(payload));
	ck_assert_ok(compress_send(ops, cctx, NULL, 0, payload, ops->bound(0), &clen, &err),
		     err);
	outbuf_init(&o, NULL, 0);
	ck_assert_ok(compress_recv(ops, dctx, payload, clen, NULL, 0, &err), err);
	ck_assert_ok(compress_recv(ops, dctx, payload, clen, o.iov, 0, &err), err);
	if (clen > 0) {
		payload[clen] = 0x55;
		ck_assert_int_eq(compress_recv(ops, dctx, payload, clen + 1, NULL, 0, &err),
				 MFD_EPROTO);
		snprintf(want, sizeof(want), "%s: ", ops->name);
		ck_assert_mfd_error(err, MFD_EPROTO, want);
		ck_assert_int_eq(compress_recv(ops, dctx, payload, clen - 1, NULL, 0, &err),
				 MFD_EPROTO);
		ck_assert_mfd_error(err, MFD_EPROTO, want);
	}
	outbuf_free(&o);
	ops->send_cleanup(cctx);
	ops->recv_cleanup(dctx);
}
END_TEST

Suite *suite_compress(void)
{
	Suite *s = suite_create("compress");
	TCase *tc = tcase_create("codecs");
	TCase *reg = tcase_create("registry");
	TCase *bad = tcase_create("untrusted");

	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, round_trip_pages, 0, N_CODECS);
	tcase_add_loop_test(tc, round_trip_odd_sizes, 0, N_CODECS);
	tcase_add_loop_test(tc, round_trip_huge_pages, 0, N_CODECS);
	tcase_add_loop_test(tc, bound_holds_for_random_data, 0, N_CODECS);
	tcase_add_loop_test(tc, send_output_too_small, 0, N_CODECS);
	tcase_add_loop_test(tc, setup_rejects_bad_levels, 0, N_CODECS);
	tcase_add_loop_test(tc, empty_packet, 0, N_CODECS);
	suite_add_tcase(s, tc);

	tcase_add_test(reg, builtins_are_listed);
	tcase_add_test(reg, builtin_levels);
	tcase_add_test(reg, register_custom_codec);
	tcase_add_test(reg, register_refuses_bad_tables);
	tcase_add_test(reg, codec_opaque_reaches_setup);
	tcase_add_test(reg, registry_fills_up);
	tcase_add_test(reg, registry_is_thread_safe);
	tcase_add_test(reg, wrappers_enforce_the_contract);
	suite_add_tcase(s, reg);

	tcase_set_timeout(bad, 300);
	tcase_add_loop_test(bad, untrusted_common, 0, N_CODECS);
	tcase_add_test(bad, untrusted_none);
#if MFD_HAVE_ZLIB
	tcase_add_test(bad, untrusted_zlib);
#endif
#if MFD_HAVE_ZSTD
	tcase_add_test(bad, untrusted_zstd);
#endif
#if MFD_HAVE_LZ4
	tcase_add_test(bad, untrusted_lz4);
#endif
	suite_add_tcase(s, bad);
	return s;
}
