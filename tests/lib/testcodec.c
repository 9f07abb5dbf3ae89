/* SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <string.h>

#include "compress/compress.h"
#include "tests/lib/testcodec.h"

/*
 * "test-rle": a toy codec as a VMM would register one.  The payload is runs
 * of (count 1..255, byte).
 */
static size_t rle_bound(size_t in_len)
{
	return in_len > SIZE_MAX / 2 ? SIZE_MAX : 2 * in_len;
}

struct test_rle_state test_rle_state;

static int rle_send_setup(void *opaque, void **ctx, int level, mfd_error **errp)
{
	struct test_rle_state *st = opaque;

	(void)level;
	(void)errp;
	if (st)
		atomic_fetch_add(&st->send_setups, 1);
	*ctx = NULL;
	return 0;
}

static int rle_send_prepare(void *ctx, const void *in, size_t in_len, void *out, size_t out_cap,
			    size_t *out_len, mfd_error **errp)
{
	const uint8_t *p = in;
	uint8_t *o = out;
	size_t w = 0;

	(void)ctx;
	for (size_t i = 0; i < in_len;) {
		size_t run = 1;

		while (i + run < in_len && run < 255 && p[i + run] == p[i])
			run++;
		if (out_cap - w < 2)
			return mfd_error_set(errp, MFD_EINVAL, "test-rle: output full");
		o[w++] = (uint8_t)run;
		o[w++] = p[i];
		i += run;
	}
	*out_len = w;
	return 0;
}

static void rle_cleanup(void *ctx)
{
	(void)ctx;
}

static int rle_recv_setup(void *opaque, void **ctx, mfd_error **errp)
{
	struct test_rle_state *st = opaque;

	(void)errp;
	if (st)
		atomic_fetch_add(&st->recv_setups, 1);
	*ctx = NULL;
	return 0;
}

static int rle_recv(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		    mfd_error **errp)
{
	const uint8_t *p = in;
	size_t total, written = 0, off = 0;
	int i = 0, ret;

	(void)ctx;
	ret = mfd_compress_recv_args("test-rle", in, in_len, out, n, &total, errp);
	if (ret < 0)
		return ret;
	if (in_len % 2)
		return mfd_error_set(errp, MFD_EPROTO, "test-rle: odd payload of %zu bytes", in_len);
	for (size_t r = 0; r < in_len; r += 2) {
		size_t run = p[r];

		if (run == 0)
			return mfd_error_set(errp, MFD_EPROTO, "test-rle: empty run at %zu", r);
		if (run > total - written)
			return mfd_error_set(errp, MFD_EPROTO,
					     "test-rle: payload expands beyond the packet's %zu bytes",
					     total);
		written += run;
		while (run) {
			size_t l;

			while (off == out[i].iov_len) {
				i++;
				off = 0;
			}
			l = MFD_MIN(run, out[i].iov_len - off);
			memset((uint8_t *)out[i].iov_base + off, p[r + 1], l);
			off += l;
			run -= l;
		}
	}
	if (written != total)
		return mfd_error_set(errp, MFD_EPROTO,
				     "test-rle: payload decodes to %zu bytes, the packet holds %zu",
				     written, total);
	return 0;
}

const mfd_compress_ops test_rle_ops = {
	.size = sizeof(mfd_compress_ops),
	.name = "test-rle",
	.level_min = 0,
	.level_max = 3,
	.level_default = 0,
	.bound = rle_bound,
	.send_setup = rle_send_setup,
	.send_prepare = rle_send_prepare,
	.send_cleanup = rle_cleanup,
	.recv_setup = rle_recv_setup,
	.opaque = &test_rle_state,
	.recv = rle_recv,
	.recv_cleanup = rle_cleanup,
};

