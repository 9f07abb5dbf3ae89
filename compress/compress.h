/* SPDX-License-Identifier: MIT */
/*
 * Compression plugins: what the multifd core uses of the codec registry, and
 * the small helpers every codec file shares.  The core works with codecs only
 * through struct mfd_compress_ops found by name; it never names a backend.
 */
#ifndef MFD_COMPRESS_COMPRESS_H
#define MFD_COMPRESS_COMPRESS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include "core/util.h"

/*
 * The codec called @name, or NULL with MFD_ENOENT naming the codecs this
 * process has ("unknown compression method 'lzo' (known: none, zlib, ...)").
 */
const mfd_compress_ops *compress_lookup(const char *name, mfd_error **errp);

/* Check @ops as mfd_compress_register() does; MFD_EINVAL says what is wrong. */
int compress_validate(const mfd_compress_ops *ops, mfd_error **errp);

/* MFD_EINVAL unless level_min <= @level <= level_max ("zstd: level 25 is outside 1..20"). */
int compress_check_level(const mfd_compress_ops *ops, int level, mfd_error **errp);

/*
 * The receiver's check before it reads a payload: MFD_EPROTO when
 * @payload_len is beyond what @ops may produce for a @packet_len-byte packet.
 */
int compress_check_payload(const mfd_compress_ops *ops, size_t payload_len,
			       size_t packet_len, mfd_error **errp);

/*
 * Call ops->send_prepare / ops->recv and hold the codec to its contract, since
 * a registered codec is the VMM's code: a failure always comes back as a code
 * of enum mfd_errcode (MFD_EHANDLER for anything else) with a message, and a
 * send that claims more output than @out_cap fails with MFD_EHANDLER instead
 * of letting the caller transmit bytes past its buffer.
 */
int compress_send(const mfd_compress_ops *ops, void *ctx, const void *in, size_t in_len,
		      void *out, size_t out_cap, size_t *out_len, mfd_error **errp);
int compress_recv(const mfd_compress_ops *ops, void *ctx, const void *in, size_t in_len,
		      const struct iovec *out, int n, mfd_error **errp);

/* ------------------------------------------------------------------------ */
/* For codec files                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Check the arguments of a recv call and sum the output buffers into *@total.
 * MFD_EINVAL for the caller's mistakes, MFD_ETOOBIG when the sum overflows.
 */
static inline int mfd_compress_recv_args(const char *codec, const void *in, size_t in_len,
					 const struct iovec *out, int n, size_t *total,
					 mfd_error **errp)
{
	size_t sum = 0;

	*total = 0;
	if (!in && in_len)
		return mfd_error_set(errp, MFD_EINVAL, "%s: payload of %zu bytes at NULL", codec,
				     in_len);
	if (n < 0 || (n > 0 && !out))
		return mfd_error_set(errp, MFD_EINVAL, "%s: invalid output vector (%d buffers at %p)",
				     codec, n, (const void *)out);
	for (int i = 0; i < n; i++) {
		if (!out[i].iov_base && out[i].iov_len)
			return mfd_error_set(errp, MFD_EINVAL,
					     "%s: output buffer %d of %zu bytes is NULL", codec, i,
					     out[i].iov_len);
		if (out[i].iov_len > SIZE_MAX - sum)
			return mfd_error_set(errp, MFD_ETOOBIG,
					     "%s: the output buffers add up to more than SIZE_MAX",
					     codec);
		sum += out[i].iov_len;
	}
	*total = sum;
	return 0;
}

/* Copy @src, the whole packet, into the @n buffers of @out in order. */
static inline void mfd_compress_scatter(const uint8_t *src, const struct iovec *out, int n)
{
	for (int i = 0; i < n; i++) {
		if (!out[i].iov_len)
			continue;
		memcpy(out[i].iov_base, src, out[i].iov_len);
		src += out[i].iov_len;
	}
}

#endif /* MFD_COMPRESS_COMPRESS_H */
