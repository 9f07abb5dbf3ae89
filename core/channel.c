/* SPDX-License-Identifier: MIT */
/*
 * Transport-independent channel code: full-length I/O loops, naming,
 * shutdown and release.
 */
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/util.h"

mfd_channel *channel_alloc(const struct mfd_channel_ops *ops, const char *name, void *priv)
{
	mfd_channel *ch = calloc(1, sizeof(*ch));

	if (!ch)
		return NULL;
	ch->name = strdup(name ? name : ops->kind);
	if (!ch->name) {
		free(ch);
		return NULL;
	}
	ch->ops = ops;
	ch->priv = priv;
	atomic_init(&ch->shut, false);
	return ch;
}

struct iovec *util_iov_advance(struct iovec *iov, int *iovcnt, size_t n)
{
	while (*iovcnt > 0 && n >= iov->iov_len) {
		n -= iov->iov_len;
		iov++;
		(*iovcnt)--;
	}
	if (*iovcnt > 0 && n) {
		iov->iov_base = (char *)iov->iov_base + n;
		iov->iov_len -= n;
	}
	return iov;
}

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
	size_t total = 0;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	return total;
}

int channel_readv_full(mfd_channel *ch, struct iovec *iov, int iovcnt, mfd_error **errp)
{
	size_t want = iov_total(iov, iovcnt), got = 0;

	/* Skip leading empty entries so a zero-length request never reads. */
	iov = util_iov_advance(iov, &iovcnt, 0);
	while (iovcnt > 0) {
		ssize_t n = ch->ops->readv(ch, iov, iovcnt, errp);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return mfd_error_set(errp, MFD_EEOF,
					     "%s: end of data after %zu of %zu bytes",
					     ch->name, got, want);
		got += (size_t)n;
		iov = util_iov_advance(iov, &iovcnt, (size_t)n);
	}
	return 0;
}

/* Loop @op (writev or writev_zerocopy) until the iovec is consumed. */
static int write_all(mfd_channel *ch,
		     ssize_t (*op)(mfd_channel *, const struct iovec *, int, mfd_error **),
		     struct iovec *iov, int iovcnt, mfd_error **errp)
{
	iov = util_iov_advance(iov, &iovcnt, 0);
	while (iovcnt > 0) {
		ssize_t n = op(ch, iov, iovcnt, errp);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return mfd_error_set(errp, MFD_EIO, "%s: write made no progress", ch->name);
		iov = util_iov_advance(iov, &iovcnt, (size_t)n);
	}
	return 0;
}

int channel_writev_full(mfd_channel *ch, struct iovec *iov, int iovcnt, mfd_error **errp)
{
	return write_all(ch, ch->ops->writev, iov, iovcnt, errp);
}

int channel_writev_zerocopy_full(mfd_channel *ch, struct iovec *iov, int iovcnt,
				     mfd_error **errp)
{
	if (!channel_has_zerocopy(ch))
		return mfd_error_set(errp, MFD_ENOTSUP, "%s: a %s channel has no zero-copy send",
				     ch->name, ch->ops->kind);
	return write_all(ch, ch->ops->writev_zerocopy, iov, iovcnt, errp);
}

int channel_flush_zerocopy(mfd_channel *ch, struct mfd_zerocopy_report *rep,
			       mfd_error **errp)
{
	*rep = (struct mfd_zerocopy_report){ 0 };
	if (!channel_has_zerocopy(ch))
		return mfd_error_set(errp, MFD_ENOTSUP, "%s: a %s channel has no zero-copy send",
				     ch->name, ch->ops->kind);
	return ch->ops->flush_zerocopy(ch, rep, errp);
}

ssize_t channel_read_some(mfd_channel *ch, void *buf, size_t len, mfd_error **errp)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };

	if (len == 0)
		return 0;
	return ch->ops->readv(ch, &iov, 1, errp);
}

const char *mfd_channel_name(const mfd_channel *ch)
{
	return ch ? ch->name : "(null)";
}

int mfd_channel_finish(mfd_channel *ch, mfd_error **errp)
{
	if (!ch)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_finish: channel is NULL");
	if (channel_is_shut(ch))
		return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
	return ch->ops->finish ? ch->ops->finish(ch, errp) : 0;
}

int mfd_channel_set_option(mfd_channel *ch, const char *name, int64_t value, mfd_error **errp)
{
	if (!ch || !name)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_set_option: NULL argument");
	if (!ch->ops->set_option)
		return mfd_error_set(errp, MFD_ENOTSUP, "%s: option '%s' does not apply to a %s "
				     "channel", ch->name, name, ch->ops->kind);
	return ch->ops->set_option(ch, name, value, errp);
}

void mfd_channel_shutdown(mfd_channel *ch)
{
	if (!ch)
		return;
	atomic_store_explicit(&ch->shut, true, memory_order_release);
	if (ch->ops->shutdown)
		ch->ops->shutdown(ch);
}

void mfd_channel_free(mfd_channel *ch)
{
	if (!ch)
		return;
	if (ch->ops->close)
		ch->ops->close(ch);
	free(ch->name);
	free(ch);
}
