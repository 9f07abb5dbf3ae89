/* SPDX-License-Identifier: MIT */
/*
 * The channel interface every transport implements (channels/).
 *
 * A transport fills an ops table; the core never names a transport.  The
 * ops move "some" bytes; the helpers here loop until all are moved.
 */
#ifndef MFD_CORE_CHANNEL_H
#define MFD_CORE_CHANNEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <multifd/multifd.h>

struct mfd_zerocopy_report;

struct mfd_channel_ops {
	const char *kind;
	/*
	 * Move at least one byte unless at end of data.  Return the number of
	 * bytes moved, 0 for end of data (readv only), or a negative code with
	 * *errp set.  Must return MFD_ECANCELED once the channel is shut down.
	 */
	ssize_t (*readv)(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp);
	ssize_t (*writev)(mfd_channel *ch, const struct iovec *iov, int iovcnt,
			  mfd_error **errp);
	/* Make blocked and future I/O fail; any thread. */
	void (*shutdown)(mfd_channel *ch);
	/* Optional: clean end of the write direction (TLS close_notify, SHUT_WR). */
	int (*finish)(mfd_channel *ch, mfd_error **errp);
	/* Optional: mfd_channel_set_option(); NULL means no option applies. */
	int (*set_option)(mfd_channel *ch, const char *name, int64_t value, mfd_error **errp);
	/* Release transport resources (the struct itself is freed by the core). */
	void (*close)(mfd_channel *ch);
	/*
	 * Optional, zero-copy send (set_option "zero-copy" 1 succeeded): like
	 * writev, but the transport may go on reading the buffers after the
	 * call returns, until flush_zerocopy() has returned.  A transport that
	 * cannot pin the buffers (locked-memory limit) may copy instead; it
	 * says so in the next report.
	 */
	ssize_t (*writev_zerocopy)(mfd_channel *ch, const struct iovec *iov, int iovcnt,
				   mfd_error **errp);
	/* Wait until the transport is done with every writev_zerocopy buffer
	 * and report what happened since the last flush. */
	int (*flush_zerocopy)(mfd_channel *ch, struct mfd_zerocopy_report *rep,
			      mfd_error **errp);
};

/* What zero-copy sends did between two flushes. */
struct mfd_zerocopy_report {
	uint64_t sends;		/* zero-copy sends the kernel completed */
	uint64_t copied;	/* of which it had copied after all (loopback, no SG) */
	uint64_t copy_bytes;	/* bytes sent by copy since pinning was refused */
	bool refused;		/* the kernel refused to pin pages: copying from now on */
};

struct mfd_channel {
	/* Set at creation. */
	const struct mfd_channel_ops *ops;
	char *name;
	void *priv;
	/* Any thread. */
	atomic_bool shut;
};

/* Allocate a channel; takes a copy of name. NULL on out of memory. */
mfd_channel *channel_alloc(const struct mfd_channel_ops *ops, const char *name, void *priv);

/* Read exactly the iovec's bytes; a short read ends in MFD_EEOF. The iovec is consumed. */
int channel_readv_full(mfd_channel *ch, struct iovec *iov, int iovcnt, mfd_error **errp);
/* Write all of the iovec's bytes. The iovec is consumed. */
int channel_writev_full(mfd_channel *ch, struct iovec *iov, int iovcnt, mfd_error **errp);
/*
 * Write all of the iovec's bytes with writev_zerocopy: the buffers must stay
 * unchanged (or may change only where a later send repairs it, like guest
 * pages that dirty tracking resends) until channel_flush_zerocopy().
 * MFD_ENOTSUP when the transport has no zero-copy send.
 */
int channel_writev_zerocopy_full(mfd_channel *ch, struct iovec *iov, int iovcnt,
				     mfd_error **errp);
/* Wait for the transport to release every zero-copy buffer; fills @rep. */
int channel_flush_zerocopy(mfd_channel *ch, struct mfd_zerocopy_report *rep,
			       mfd_error **errp);
/* Whether the transport has zero-copy send at all. */
static inline bool channel_has_zerocopy(const mfd_channel *ch)
{
	return ch->ops->writev_zerocopy && ch->ops->flush_zerocopy;
}
/* Read up to len bytes (at least one unless at end of data): >0, 0 = end, <0 = error. */
ssize_t channel_read_some(mfd_channel *ch, void *buf, size_t len, mfd_error **errp);

static inline bool channel_is_shut(const mfd_channel *ch)
{
	return atomic_load_explicit(&ch->shut, memory_order_acquire);
}

/* Drop n bytes from the front of an iovec array; returns the new start. */
struct iovec *util_iov_advance(struct iovec *iov, int *iovcnt, size_t n);

#endif /* MFD_CORE_CHANNEL_H */
