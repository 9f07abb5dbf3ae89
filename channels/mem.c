/* SPDX-License-Identifier: MIT */
/*
 * Memory channels: a reader over a caller's buffer and a bounded writer.
 * Used by tests, fuzzers and the nested (PACKAGED) loader.
 */
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/util.h"

#define MEM_WRITER_DEFAULT_MAX ((size_t)1 << 30)

struct mem_chan {
	/* Owned by the one thread doing I/O. */
	const uint8_t *rdata;	/* reader: borrowed */
	uint8_t *wdata;		/* writer: owned */
	size_t len;		/* reader: total; writer: bytes written */
	size_t pos;		/* reader: next byte */
	size_t cap;		/* writer: allocated */
	size_t max;		/* writer: limit */
};

static ssize_t mem_readv(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct mem_chan *mc = ch->priv;
	size_t moved = 0;

	if (channel_is_shut(ch))
		return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
	if (!mc->rdata)
		return mfd_error_set(errp, MFD_EINVAL, "%s: not readable", ch->name);
	for (int i = 0; i < iovcnt && mc->pos < mc->len; i++) {
		size_t n = MFD_MIN(iov[i].iov_len, mc->len - mc->pos);

		memcpy(iov[i].iov_base, mc->rdata + mc->pos, n);
		mc->pos += n;
		moved += n;
	}
	return (ssize_t)moved;
}

static ssize_t mem_writev(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct mem_chan *mc = ch->priv;
	size_t total = 0;

	if (channel_is_shut(ch))
		return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
	if (mc->rdata)
		return mfd_error_set(errp, MFD_EINVAL, "%s: a memory reader is not writable",
				     ch->name);
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total > mc->max - mc->len)
		return mfd_error_set(errp, MFD_ETOOBIG,
				     "%s: writing %zu bytes would pass the limit of %zu bytes "
				     "(%zu already written)", ch->name, total, mc->max, mc->len);
	if (mc->len + total > mc->cap) {
		size_t cap = mc->cap ? mc->cap : 4096;
		uint8_t *p;

		while (cap < mc->len + total)
			cap = cap > mc->max / 2 ? mc->max : cap * 2;
		p = realloc(mc->wdata, cap);
		if (!p)
			return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory growing to %zu bytes",
					     ch->name, cap);
		mc->wdata = p;
		mc->cap = cap;
	}
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len)
			memcpy(mc->wdata + mc->len, iov[i].iov_base, iov[i].iov_len);
		mc->len += iov[i].iov_len;
	}
	return (ssize_t)total;
}

static void mem_close(mfd_channel *ch)
{
	struct mem_chan *mc = ch->priv;

	free(mc->wdata);
	free(mc);
}

static const struct mfd_channel_ops mem_ops = {
	.kind = "mem",
	.readv = mem_readv,
	.writev = mem_writev,
	.close = mem_close,
};

static int mem_new(struct mem_chan *mc, const char *name, mfd_channel **out, mfd_error **errp)
{
	*out = channel_alloc(&mem_ops, name, mc);
	if (!*out) {
		free(mc);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", name);
	}
	return 0;
}

int mfd_channel_new_mem_reader(const void *data, size_t len, mfd_channel **out, mfd_error **errp)
{
	struct mem_chan *mc;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_new_mem_reader: out is NULL");
	*out = NULL;
	if (!data && len)
		return mfd_error_set(errp, MFD_EINVAL, "mem reader: NULL data with length %zu", len);
	mc = calloc(1, sizeof(*mc));
	if (!mc)
		return mfd_error_set(errp, MFD_ENOMEM, "mem reader: out of memory");
	mc->rdata = data ? data : (const uint8_t *)"";
	mc->len = len;
	return mem_new(mc, "mem:reader", out, errp);
}

int mfd_channel_new_mem_writer(size_t max_len, mfd_channel **out, mfd_error **errp)
{
	struct mem_chan *mc;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_new_mem_writer: out is NULL");
	*out = NULL;
	mc = calloc(1, sizeof(*mc));
	if (!mc)
		return mfd_error_set(errp, MFD_ENOMEM, "mem writer: out of memory");
	mc->max = max_len ? max_len : MEM_WRITER_DEFAULT_MAX;
	return mem_new(mc, "mem:writer", out, errp);
}

int mfd_channel_mem_contents(mfd_channel *ch, const void **data, size_t *len)
{
	struct mem_chan *mc;

	if (!ch || ch->ops != &mem_ops || !data || !len)
		return MFD_EINVAL;
	mc = ch->priv;
	if (mc->rdata)
		return MFD_EINVAL;
	*data = mc->wdata ? mc->wdata : (const void *)"";
	*len = mc->len;
	return 0;
}
