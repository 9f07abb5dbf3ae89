/* SPDX-License-Identifier: MIT */
/*
 * "lz4": each packet is one LZ4 block (the raw block format, no frame).  The
 * "level" is LZ4's acceleration: 1 compresses best, larger values trade
 * ratio for speed.  A block carries no sizes and no checksum; the receiver
 * knows the decoded size (the packet's pages) and LZ4_decompress_safe()
 * never writes past the capacity it is given.  Corruption that keeps the
 * block well formed and its size right goes undetected, as with "none".
 */
#include <limits.h>
#include <stdlib.h>

#include "config.h"
#include "compress/compress.h"

#if MFD_HAVE_LZ4

#include <lz4.h>

/* lz4.h: accelerations above this are treated as this (LZ4_ACCELERATION_MAX in lz4.c). */
#define LZ4_LEVEL_MAX 65537

struct lz4_send {
	void *state;		/* LZ4_sizeofState() bytes */
	int acceleration;
};

/* The one contiguous buffer a block decodes into when the packet is scattered. */
struct lz4_recv {
	char *scratch;
	size_t cap;
};

static size_t lz4_bound(size_t in_len)
{
	if (in_len > LZ4_MAX_INPUT_SIZE)
		return SIZE_MAX;
	return (size_t)LZ4_compressBound((int)in_len);
}

static int lz4_send_setup(MFD_UNUSED void *opaque, void **ctx, int level, mfd_error **errp)
{
	struct lz4_send *c;

	*ctx = NULL;
	if (level < 1 || level > LZ4_LEVEL_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "lz4: level %d is outside 1..%d", level,
				     LZ4_LEVEL_MAX);
	c = calloc(1, sizeof(*c));
	if (c)
		c->state = malloc((size_t)LZ4_sizeofState());
	if (!c || !c->state) {
		free(c);
		return mfd_error_set(errp, MFD_ENOMEM, "lz4: out of memory for a compressor");
	}
	c->acceleration = level;
	*ctx = c;
	return 0;
}

static int lz4_send_prepare(void *ctx, const void *in, size_t in_len, void *out,
			    size_t out_cap, size_t *out_len, mfd_error **errp)
{
	struct lz4_send *c = ctx;
	int cap = (int)MFD_MIN(out_cap, (size_t)INT_MAX);
	int r;

	if (in_len > LZ4_MAX_INPUT_SIZE)
		return mfd_error_set(errp, MFD_ETOOBIG,
				     "lz4: packet of %zu bytes is beyond lz4's limit of %d", in_len,
				     LZ4_MAX_INPUT_SIZE);
	r = LZ4_compress_fast_extState(c->state, in_len ? in : "", out, (int)in_len, cap,
				       c->acceleration);
	if (r <= 0)
		return mfd_error_set(errp, MFD_EINVAL,
				     "lz4: %zu bytes of output space is not enough for %zu input "
				     "bytes (the bound is %zu)",
				     out_cap, in_len, lz4_bound(in_len));
	*out_len = (size_t)r;
	return 0;
}

static void lz4_send_cleanup(void *ctx)
{
	struct lz4_send *c = ctx;

	if (!c)
		return;
	free(c->state);
	free(c);
}

static int lz4_recv_setup(MFD_UNUSED void *opaque, void **ctx, mfd_error **errp)
{
	*ctx = calloc(1, sizeof(struct lz4_recv));
	if (!*ctx)
		return mfd_error_set(errp, MFD_ENOMEM, "lz4: out of memory for a decompressor");
	return 0;
}

static int lz4_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		    mfd_error **errp)
{
	struct lz4_recv *c = ctx;
	char empty = 0, *dst;
	size_t total;
	int r, ret;

	ret = mfd_compress_recv_args("lz4", in, in_len, out, n, &total, errp);
	if (ret < 0)
		return ret;
	if (total > INT_MAX)
		return mfd_error_set(errp, MFD_ETOOBIG,
				     "lz4: packet of %zu bytes is beyond lz4's limit of %d", total,
				     INT_MAX);
	if (in_len > INT_MAX)
		return mfd_error_set(errp, MFD_EPROTO,
				     "lz4: payload of %zu bytes is beyond lz4's limit of %d", in_len,
				     INT_MAX);

	if (in_len == 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "lz4: empty payload; a block has at least 1 byte (packet of "
				     "%zu bytes)",
				     total);

	/* Decode in place when the packet is one buffer; otherwise into the
	 * scratch buffer, sized by the packet (never by the payload) and kept
	 * for the next packets. */
	if (total == 0) {
		dst = &empty;
	} else if (n == 1) {
		dst = out[0].iov_base;
	} else {
		if (c->cap < total) {
			/* Zeroed: lz4 accepts a match offset of 0, which copies
			 * bytes not yet written, and those must never be stale
			 * heap contents landing in guest memory. */
			char *p = calloc(1, total);

			if (!p)
				return mfd_error_set(errp, MFD_ENOMEM,
						     "lz4: out of memory for a %zu-byte decode buffer",
						     total);
			free(c->scratch);
			c->scratch = p;
			c->cap = total;
		}
		dst = c->scratch;
	}
	r = LZ4_decompress_safe(in, dst, (int)in_len, (int)total);
	if (r < 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "lz4: payload of %zu bytes is corrupt or expands beyond the "
				     "packet's %zu bytes",
				     in_len, total);
	if ((size_t)r != total)
		return mfd_error_set(errp, MFD_EPROTO,
				     "lz4: payload decodes to %d bytes, the packet holds %zu", r,
				     total);
	if (dst == c->scratch)
		mfd_compress_scatter((const uint8_t *)dst, out, n);
	return 0;
}

static void lz4_recv_cleanup(void *ctx)
{
	struct lz4_recv *c = ctx;

	if (!c)
		return;
	free(c->scratch);
	free(c);
}

const mfd_compress_ops codec_lz4 = {
	.size = sizeof(mfd_compress_ops),
	.name = "lz4",
	.level_min = 1,
	.level_max = LZ4_LEVEL_MAX,
	.level_default = 1,
	.bound = lz4_bound,
	.send_setup = lz4_send_setup,
	.send_prepare = lz4_send_prepare,
	.send_cleanup = lz4_send_cleanup,
	.recv_setup = lz4_recv_setup,
	.recv = lz4_recv,
	.recv_cleanup = lz4_recv_cleanup,
};

#endif /* MFD_HAVE_LZ4 */
