/* SPDX-License-Identifier: MIT */
/*
 * "none": the payload is the pages themselves.  The multifd core can send
 * such pages straight from guest memory without this codec's copy; the table
 * makes "none" a name like any other, usable through the same interface.
 */
#include "compress/compress.h"

/* There is no state; a non-NULL token keeps "ctx == NULL means not set up" usable. */
static char none_token;

static size_t none_bound(size_t in_len)
{
	return in_len;
}

static int none_setup(MFD_UNUSED void *opaque, void **ctx, mfd_error **errp)
{
	(void)errp;
	*ctx = &none_token;
	return 0;
}

static int none_send_setup(void *opaque, void **ctx, int level, mfd_error **errp)
{
	*ctx = NULL;
	if (level != 0)
		return mfd_error_set(errp, MFD_EINVAL, "none: level %d is outside 0..0", level);
	return none_setup(opaque, ctx, errp);
}

static int none_send_prepare(void *ctx, const void *in, size_t in_len, void *out,
			     size_t out_cap, size_t *out_len, mfd_error **errp)
{
	(void)ctx;
	if (out_cap < in_len)
		return mfd_error_set(errp, MFD_EINVAL,
				     "none: %zu bytes of output space for %zu input bytes", out_cap,
				     in_len);
	if (in_len)
		memcpy(out, in, in_len);
	*out_len = in_len;
	return 0;
}

static void none_cleanup(void *ctx)
{
	(void)ctx;
}

static int none_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		     mfd_error **errp)
{
	size_t total;
	int ret = mfd_compress_recv_args("none", in, in_len, out, n, &total, errp);

	(void)ctx;
	if (ret < 0)
		return ret;
	if (in_len != total)
		return mfd_error_set(errp, MFD_EPROTO, "none: payload of %zu bytes, the packet holds %zu",
				     in_len, total);
	mfd_compress_scatter(in, out, n);
	return 0;
}

const mfd_compress_ops codec_none = {
	.size = sizeof(mfd_compress_ops),
	.name = "none",
	.level_min = 0,
	.level_max = 0,
	.level_default = 0,
	.bound = none_bound,
	.send_setup = none_send_setup,
	.send_prepare = none_send_prepare,
	.send_cleanup = none_cleanup,
	.recv_setup = none_setup,
	.recv = none_recv,
	.recv_cleanup = none_cleanup,
};
