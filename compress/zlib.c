/* SPDX-License-Identifier: MIT */
/*
 * "zlib": each packet is one complete zlib stream (RFC 1950: a 2-byte header,
 * deflate data, an Adler-32 of the pages).  Unlike QEMU's multifd-zlib, which
 * keeps one stream open per channel for the whole migration, packets are
 * independent, so a receiver never depends on an earlier packet and a
 * corrupted or reordered packet cannot poison the ones after it.  The
 * Adler-32 trailer makes corruption of the payload detectable.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>

#include "config.h"
#include "compress/compress.h"

#if MFD_HAVE_ZLIB

#define ZLIB_CONST
#include <zlib.h>

/* RFC 1950 default: a 32 KiB window, the most inflate will accept. */
#define ZLIB_WINDOW_BITS 15
#define ZLIB_MEM_LEVEL 8

static size_t zlib_bound(size_t in_len)
{
	/* compressBound() covers compress2() at every level, which uses the
	 * same stream parameters as zlib_send_setup(). */
	if (in_len > (uLong)-1 / 2)
		return SIZE_MAX;
	return compressBound((uLong)in_len);
}

static int zlib_send_setup(MFD_UNUSED void *opaque, void **ctx, int level, mfd_error **errp)
{
	z_stream *zs;
	int zr;

	*ctx = NULL;
	if (level < Z_NO_COMPRESSION || level > Z_BEST_COMPRESSION)
		return mfd_error_set(errp, MFD_EINVAL, "zlib: level %d is outside 0..9", level);
	zs = calloc(1, sizeof(*zs));
	if (!zs)
		return mfd_error_set(errp, MFD_ENOMEM, "zlib: out of memory for a compressor");
	zr = deflateInit2(zs, level, Z_DEFLATED, ZLIB_WINDOW_BITS, ZLIB_MEM_LEVEL,
			  Z_DEFAULT_STRATEGY);
	if (zr != Z_OK) {
		free(zs);
		return mfd_error_set(errp, zr == Z_MEM_ERROR ? MFD_ENOMEM : MFD_EINVAL,
				     "zlib: deflateInit2 failed (%d)", zr);
	}
	*ctx = zs;
	return 0;
}

static int zlib_send_prepare(void *ctx, const void *in, size_t in_len, void *out,
			     size_t out_cap, size_t *out_len, mfd_error **errp)
{
	z_stream *zs = ctx;
	int zr;

	if (in_len > UINT_MAX)
		return mfd_error_set(errp, MFD_ETOOBIG,
				     "zlib: packet of %zu bytes is beyond zlib's limit of %u",
				     in_len, UINT_MAX);
	zr = deflateReset(zs);
	if (zr != Z_OK)
		return mfd_error_set(errp, MFD_EINVAL, "zlib: deflateReset failed (%d)", zr);
	zs->next_in = in;
	zs->avail_in = (uInt)in_len;
	zs->next_out = out;
	zs->avail_out = (uInt)MFD_MIN(out_cap, (size_t)UINT_MAX);
	zr = deflate(zs, Z_FINISH);
	if (zr == Z_STREAM_END) {
		*out_len = zs->total_out;
		return 0;
	}
	if (zr == Z_OK || zr == Z_BUF_ERROR)
		return mfd_error_set(errp, MFD_EINVAL,
				     "zlib: %zu bytes of output space is not enough for %zu input "
				     "bytes (the bound is %zu)",
				     out_cap, in_len, zlib_bound(in_len));
	return mfd_error_set(errp, MFD_EINVAL, "zlib: deflate failed (%d): %s", zr,
			     zs->msg ? zs->msg : "no message");
}

static void zlib_send_cleanup(void *ctx)
{
	z_stream *zs = ctx;

	if (!zs)
		return;
	deflateEnd(zs);
	free(zs);
}

static int zlib_recv_setup(MFD_UNUSED void *opaque, void **ctx, mfd_error **errp)
{
	z_stream *zs = calloc(1, sizeof(*zs));
	int zr;

	*ctx = NULL;
	if (!zs)
		return mfd_error_set(errp, MFD_ENOMEM, "zlib: out of memory for a decompressor");
	/* Only the zlib format, with at most a 32 KiB window: inflate's memory
	 * is fixed whatever a stream header claims. */
	zr = inflateInit2(zs, ZLIB_WINDOW_BITS);
	if (zr != Z_OK) {
		free(zs);
		return mfd_error_set(errp, zr == Z_MEM_ERROR ? MFD_ENOMEM : MFD_EINVAL,
				     "zlib: inflateInit2 failed (%d)", zr);
	}
	*ctx = zs;
	return 0;
}

/* Why inflate() stopped with @zr, which is neither Z_OK nor Z_STREAM_END. */
static int inflate_failure(const z_stream *zs, int zr, size_t written, size_t total,
			   mfd_error **errp)
{
	switch (zr) {
	case Z_NEED_DICT:
		return mfd_error_set(errp, MFD_EPROTO,
				     "zlib: stream asks for preset dictionary 0x%08lx; packets "
				     "never use one",
				     (unsigned long)zs->adler);
	case Z_DATA_ERROR:
		return mfd_error_set(errp, MFD_EPROTO,
				     "zlib: corrupt stream at input byte %lu (%zu of %zu output "
				     "bytes written): %s",
				     (unsigned long)zs->total_in, written, total,
				     zs->msg ? zs->msg : "no message");
	case Z_MEM_ERROR:
		return mfd_error_set(errp, MFD_ENOMEM, "zlib: out of memory while inflating");
	case Z_BUF_ERROR:
		if (zs->avail_in == 0)
			return mfd_error_set(errp, MFD_EPROTO,
					     "zlib: payload ended before the stream end (%zu of "
					     "%zu output bytes written)",
					     written, total);
		return mfd_error_set(errp, MFD_EPROTO, "zlib: inflate made no progress");
	default:
		return mfd_error_set(errp, MFD_EINVAL, "zlib: inflate failed (%d)", zr);
	}
}

static int zlib_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		     mfd_error **errp)
{
	z_stream *zs = ctx;
	size_t total, written = 0;
	bool ended = false;
	int zr, ret;

	ret = mfd_compress_recv_args("zlib", in, in_len, out, n, &total, errp);
	if (ret < 0)
		return ret;
	if (in_len > UINT_MAX)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zlib: payload of %zu bytes is beyond zlib's limit of %u",
				     in_len, UINT_MAX);
	zr = inflateReset(zs);
	if (zr != Z_OK)
		return mfd_error_set(errp, MFD_EINVAL, "zlib: inflateReset failed (%d)", zr);
	zs->next_in = in;
	zs->avail_in = (uInt)in_len;

	/* Straight into the pages, each buffer a limit inflate cannot pass. */
	for (int i = 0; i < n && !ended; i++) {
		uint8_t *p = out[i].iov_base;
		size_t left = out[i].iov_len;

		while (left > 0) {
			uInt chunk = (uInt)MFD_MIN(left, (size_t)UINT_MAX);
			size_t got;

			zs->next_out = p;
			zs->avail_out = chunk;
			zr = inflate(zs, Z_NO_FLUSH);
			got = chunk - zs->avail_out;
			p += got;
			left -= got;
			written += got;
			if (zr == Z_STREAM_END) {
				ended = true;
				break;
			}
			if (zr != Z_OK)
				return inflate_failure(zs, zr, written, total, errp);
		}
	}
	if (!ended) {
		/* The packet is full: what is left must be the end of the stream
		 * (the final block's end code and the Adler-32), with no output. */
		uint8_t sink[64];

		for (;;) {
			zs->next_out = sink;
			zs->avail_out = sizeof(sink);
			zr = inflate(zs, Z_NO_FLUSH);
			if (zs->avail_out != sizeof(sink))
				return mfd_error_set(errp, MFD_EPROTO,
						     "zlib: payload of %zu bytes expands beyond the "
						     "packet's %zu bytes",
						     in_len, total);
			if (zr == Z_STREAM_END)
				break;
			if (zr != Z_OK)
				return inflate_failure(zs, zr, written, total, errp);
		}
	}
	if (written != total)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zlib: payload decodes to %zu bytes, the packet holds %zu",
				     written, total);
	if (zs->avail_in)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zlib: %u bytes of trailing input after the end of the stream",
				     zs->avail_in);
	return 0;
}

static void zlib_recv_cleanup(void *ctx)
{
	z_stream *zs = ctx;

	if (!zs)
		return;
	inflateEnd(zs);
	free(zs);
}

const mfd_compress_ops codec_zlib = {
	.size = sizeof(mfd_compress_ops),
	.name = "zlib",
	.level_min = Z_NO_COMPRESSION,
	.level_max = Z_BEST_COMPRESSION,
	.level_default = 1,
	.bound = zlib_bound,
	.send_setup = zlib_send_setup,
	.send_prepare = zlib_send_prepare,
	.send_cleanup = zlib_send_cleanup,
	.recv_setup = zlib_recv_setup,
	.recv = zlib_recv,
	.recv_cleanup = zlib_recv_cleanup,
};

#endif /* MFD_HAVE_ZLIB */
