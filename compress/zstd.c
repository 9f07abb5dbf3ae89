/* SPDX-License-Identifier: MIT */
/*
 * "zstd": each packet is one zstd frame that declares its content size and
 * ends with a checksum of the pages.  Unlike QEMU's multifd-zstd (one endless
 * frame per channel), packets are independent.  Only the stable zstd API is
 * used, so the library works with any libzstd >= 1.4.0 it is linked with.
 *
 * Memory on the receiving side: the pages of a packet are scattered over
 * guest memory, so decoding streams through zstd's own window buffer, whose
 * size a frame header chooses.  The encoder never picks a window larger than
 * the content it compresses (zstd shrinks the window to the pledged source
 * size, which ZSTD_compress2() always knows), so the receiver accepts windows
 * up to the packet size rounded up to a power of two and nothing more: a
 * 512 KiB packet allows a 512 KiB window, a 4 MiB one 4 MiB.  A hostile frame
 * can thus make the receiver hold at most about twice the packet size, never
 * the 128 MiB zstd accepts by default (ZSTD_WINDOWLOG_LIMIT_DEFAULT).
 */
#include <stdbool.h>
#include <stdlib.h>

#include "config.h"
#include "compress/compress.h"

#if MFD_HAVE_ZSTD

#include <zstd.h>
#include <zstd_errors.h>

#define ZSTD_LEVEL_MIN 1
#define ZSTD_LEVEL_MAX 20

struct zstd_recv {
	ZSTD_DCtx *dctx;
	int wlog_min, wlog_max;	/* the library's bounds for ZSTD_d_windowLogMax */
};

static size_t zstd_bound(size_t in_len)
{
	size_t bound = ZSTD_compressBound(in_len);

	return ZSTD_isError(bound) ? SIZE_MAX : bound;
}

/* The codec's error code for a failed zstd call. */
static int zstd_code(size_t zr)
{
	return ZSTD_getErrorCode(zr) == ZSTD_error_memory_allocation ? MFD_ENOMEM : MFD_EINVAL;
}

static int zstd_send_setup(MFD_UNUSED void *opaque, void **ctx, int level, mfd_error **errp)
{
	ZSTD_CCtx *cctx;
	size_t zr;

	*ctx = NULL;
	if (level < ZSTD_LEVEL_MIN || level > ZSTD_LEVEL_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "zstd: level %d is outside %d..%d", level,
				     ZSTD_LEVEL_MIN, ZSTD_LEVEL_MAX);
	cctx = ZSTD_createCCtx();
	if (!cctx)
		return mfd_error_set(errp, MFD_ENOMEM, "zstd: out of memory for a compressor");
	/* The checksum costs 4 bytes a packet and far less time than the
	 * compression; it turns a corrupted payload into an error instead of
	 * wrong guest memory. */
	zr = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
	if (!ZSTD_isError(zr))
		zr = ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
	if (!ZSTD_isError(zr))
		zr = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
	if (ZSTD_isError(zr)) {
		ZSTD_freeCCtx(cctx);
		return mfd_error_set(errp, zstd_code(zr), "zstd: cannot set up level %d: %s", level,
				     ZSTD_getErrorName(zr));
	}
	*ctx = cctx;
	return 0;
}

static int zstd_send_prepare(void *ctx, const void *in, size_t in_len, void *out,
			     size_t out_cap, size_t *out_len, mfd_error **errp)
{
	size_t zr = ZSTD_compress2(ctx, out, out_cap, in, in_len);

	if (ZSTD_isError(zr)) {
		if (ZSTD_getErrorCode(zr) == ZSTD_error_dstSize_tooSmall)
			return mfd_error_set(errp, MFD_EINVAL,
					     "zstd: %zu bytes of output space is not enough for "
					     "%zu input bytes (the bound is %zu)",
					     out_cap, in_len, zstd_bound(in_len));
		return mfd_error_set(errp, zstd_code(zr), "zstd: compression of %zu bytes failed: %s",
				     in_len, ZSTD_getErrorName(zr));
	}
	*out_len = zr;
	return 0;
}

static void zstd_send_cleanup(void *ctx)
{
	ZSTD_freeCCtx(ctx);
}

static int zstd_recv_setup(MFD_UNUSED void *opaque, void **ctx, mfd_error **errp)
{
	ZSTD_bounds b = ZSTD_dParam_getBounds(ZSTD_d_windowLogMax);
	struct zstd_recv *z;

	*ctx = NULL;
	if (ZSTD_isError(b.error))
		return mfd_error_set(errp, MFD_EINVAL, "zstd: cannot query the window limits: %s",
				     ZSTD_getErrorName(b.error));
	z = calloc(1, sizeof(*z));
	if (!z)
		return mfd_error_set(errp, MFD_ENOMEM, "zstd: out of memory for a decompressor");
	z->dctx = ZSTD_createDCtx();
	if (!z->dctx) {
		free(z);
		return mfd_error_set(errp, MFD_ENOMEM, "zstd: out of memory for a decompressor");
	}
	z->wlog_min = b.lowerBound;
	z->wlog_max = b.upperBound;
	*ctx = z;
	return 0;
}

/* log2 of the window a packet of @total bytes may use (see the top of the file). */
static int window_log_for(const struct zstd_recv *z, size_t total)
{
	int wlog = 0;

	while (wlog < z->wlog_max && ((size_t)1 << wlog) < total)
		wlog++;
	return MFD_MAX(wlog, z->wlog_min);
}

/* Why ZSTD_decompressStream() failed with @zr. */
static int decode_failure(size_t zr, size_t consumed, size_t written, size_t total,
			  size_t window, mfd_error **errp)
{
	switch (ZSTD_getErrorCode(zr)) {
	case ZSTD_error_frameParameter_windowTooLarge:
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: frame asks for a window beyond the %zu-byte limit for a "
				     "%zu-byte packet",
				     window, total);
	case ZSTD_error_dictionary_wrong:
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: frame needs a dictionary; packets never use one");
	case ZSTD_error_checksum_wrong:
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: checksum mismatch: the decoded pages are not the ones "
				     "compressed");
	case ZSTD_error_memory_allocation:
		return mfd_error_set(errp, MFD_ENOMEM, "zstd: out of memory while decoding");
	default:
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: corrupt frame at input byte %zu (%zu of %zu output bytes "
				     "written): %s",
				     consumed, written, total, ZSTD_getErrorName(zr));
	}
}

static int zstd_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		     mfd_error **errp)
{
	struct zstd_recv *z = ctx;
	ZSTD_inBuffer src = { in, in_len, 0 };
	size_t total, written = 0, zr = 1, window;
	unsigned long long content;
	uint32_t magic;
	int wlog, ret;

	ret = mfd_compress_recv_args("zstd", in, in_len, out, n, &total, errp);
	if (ret < 0)
		return ret;

	/* Only a regular frame: no skippable frame, no legacy format. */
	if (in_len < sizeof(magic))
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: payload ended before the frame end (%zu bytes, inside "
				     "the frame header)",
				     in_len);
	magic = (uint32_t)((const uint8_t *)in)[0] | (uint32_t)((const uint8_t *)in)[1] << 8 |
		(uint32_t)((const uint8_t *)in)[2] << 16 | (uint32_t)((const uint8_t *)in)[3] << 24;
	if (magic != ZSTD_MAGICNUMBER)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: payload does not start with a zstd frame (magic "
				     "0x%08x)",
				     magic);
	content = ZSTD_getFrameContentSize(in, in_len);
	if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != ZSTD_CONTENTSIZE_ERROR &&
	    content != total)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: frame declares %llu bytes of content, the packet holds "
				     "%zu",
				     content, total);

	wlog = window_log_for(z, total);
	window = (size_t)1 << wlog;
	zr = ZSTD_DCtx_reset(z->dctx, ZSTD_reset_session_only);
	if (!ZSTD_isError(zr))
		zr = ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax, wlog);
	if (ZSTD_isError(zr))
		return mfd_error_set(errp, MFD_EINVAL, "zstd: cannot reset the decompressor: %s",
				     ZSTD_getErrorName(zr));

	/* zr stays nonzero until the frame is complete and fully flushed. */
	zr = 1;
	for (int i = 0; i < n && zr != 0; i++) {
		ZSTD_outBuffer dst = { out[i].iov_base, out[i].iov_len, 0 };

		while (dst.pos < dst.size) {
			size_t in_before = src.pos, out_before = dst.pos;

			zr = ZSTD_decompressStream(z->dctx, &dst, &src);
			written += dst.pos - out_before;
			if (ZSTD_isError(zr))
				return decode_failure(zr, src.pos, written, total, window, errp);
			if (zr == 0)
				break;
			if (src.pos == in_before && dst.pos == out_before)
				return mfd_error_set(errp, MFD_EPROTO,
						     "zstd: payload ended before the frame end (%zu "
						     "of %zu output bytes written)",
						     written, total);
		}
	}
	/* The packet is full: the frame must end here, with no more output. */
	while (zr != 0) {
		uint8_t sink[64];
		ZSTD_outBuffer dst = { sink, sizeof(sink), 0 };
		size_t in_before = src.pos;

		zr = ZSTD_decompressStream(z->dctx, &dst, &src);
		if (ZSTD_isError(zr))
			return decode_failure(zr, src.pos, written, total, window, errp);
		if (dst.pos)
			return mfd_error_set(errp, MFD_EPROTO,
					     "zstd: payload of %zu bytes expands beyond the packet's "
					     "%zu bytes",
					     in_len, total);
		if (zr != 0 && src.pos == in_before)
			return mfd_error_set(errp, MFD_EPROTO,
					     "zstd: payload ended before the frame end (%zu of %zu "
					     "output bytes written)",
					     written, total);
	}
	if (written != total)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: payload decodes to %zu bytes, the packet holds %zu",
				     written, total);
	if (src.pos != in_len)
		return mfd_error_set(errp, MFD_EPROTO,
				     "zstd: %zu bytes of trailing input after the end of the frame",
				     in_len - src.pos);
	return 0;
}

static void zstd_recv_cleanup(void *ctx)
{
	struct zstd_recv *z = ctx;

	if (!z)
		return;
	ZSTD_freeDCtx(z->dctx);
	free(z);
}

const mfd_compress_ops codec_zstd = {
	.size = sizeof(mfd_compress_ops),
	.name = "zstd",
	.level_min = ZSTD_LEVEL_MIN,
	.level_max = ZSTD_LEVEL_MAX,
	.level_default = 1,
	.bound = zstd_bound,
	.send_setup = zstd_send_setup,
	.send_prepare = zstd_send_prepare,
	.send_cleanup = zstd_send_cleanup,
	.recv_setup = zstd_recv_setup,
	.recv = zstd_recv,
	.recv_cleanup = zstd_recv_cleanup,
};

#endif /* MFD_HAVE_ZSTD */
