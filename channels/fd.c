/* SPDX-License-Identifier: MIT */
/*
 * Channels over a file descriptor: sockets, pipes, FIFOs and regular files.
 *
 * Cancellation: a socket is unblocked by shutdown(2), which also wakes a
 * poll(2) on it.  Pipes and FIFOs have no such call, so I/O on them waits in
 * poll(2) together with an eventfd that mfd_channel_shutdown() signals.
 * Regular files never block.
 *
 * Deadlines ("timeout-ms"): a socket then moves data with MSG_DONTWAIT and
 * sleeps only in poll(2).  The descriptor's own flags are never changed: a
 * borrowed fd shares them with its owner.
 *
 * Zero-copy send ("zero-copy" option, TCP only): writev_zerocopy passes
 * MSG_ZEROCOPY, so the kernel pins the caller's pages instead of copying
 * them, and reports on the socket's error queue when it is done with each
 * send (a range of send numbers, marked "copied" when it had to copy after
 * all, as loopback does).  flush_zerocopy waits for every report.  When
 * the kernel refuses to pin (ENOBUFS: the locked-memory limit) with
 * nothing in flight to wait for, the channel copies from then on and says
 * so once in the log and in the next report.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "channels/fd.h"
#include "core/util.h"

enum fd_kind { FD_SOCKET, FD_FILE, FD_PIPE };

struct fd_chan {
	/* Set at creation. */
	int fd;
	bool own;
	enum fd_kind kind;
	int domain;		/* sockets: AF_*; else -1 */
	bool tcp;		/* an AF_INET or AF_INET6 TCP socket */
	bool nonblock;		/* O_NONBLOCK was set when the channel was made */
	int wake_fd;		/* eventfd signalled by shutdown, pipes only; else -1 */
	/* Any thread: one thread may set it while another reads or writes. */
	atomic_int timeout_ms;	/* "timeout-ms"; 0 waits forever */
	/* Zero-copy send: set before the writing thread starts, then owned by it. */
	struct {
		bool on;		/* SO_ZEROCOPY is set */
		bool refused;		/* the kernel would not pin pages: copying */
		uint64_t queued;	/* zero-copy sendmsg calls that moved bytes */
		uint64_t done;		/* of which the kernel reported the end */
		uint64_t sends, copied, copy_bytes;	/* since the last report */
	} zc;
};

static const struct mfd_channel_ops fd_ops;

static const char *fd_kind_text(const struct fd_chan *fc)
{
	switch (fc->kind) {
	case FD_SOCKET:
		if (fc->tcp)
			return "TCP socket";
		return fc->domain == AF_UNIX ? "unix socket" : "non-TCP socket";
	case FD_FILE:
		return "file";
	case FD_PIPE:
		break;
	}
	return "pipe";
}

static int fd_cancelled(mfd_channel *ch, mfd_error **errp)
{
	return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
}

/*
 * Wait until fd is ready for `events`, the channel is shut down or the
 * deadline (-1: none) passes; timeout_ms is only for the message.
 */
static int fd_wait(mfd_channel *ch, struct fd_chan *fc, short events, int64_t deadline,
		   int timeout_ms, mfd_error **errp)
{
	struct pollfd p[2] = {
		{ .fd = fc->fd, .events = events },
		{ .fd = fc->wake_fd, .events = POLLIN },
	};
	int n = fc->wake_fd >= 0 ? 2 : 1;

	for (;;) {
		if (channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		int r = poll(p, (nfds_t)n, deadline_poll_ms(deadline));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return error_set_errno(errp, MFD_EIO, errno, "%s: poll", ch->name);
		if (r == 0) {
			if (deadline_poll_ms(deadline) != 0)
				continue;
			if (events == POLLIN)
				return mfd_error_set(errp, MFD_ETIMEDOUT,
						     "%s: no data arrived within %d ms (timeout-ms)",
						     ch->name, timeout_ms);
			if (events == 0)
				return mfd_error_set(errp, MFD_ETIMEDOUT,
						     "%s: zero-copy sends still in flight after %d ms, "
						     "the peer is not reading (timeout-ms)",
						     ch->name, timeout_ms);
			return mfd_error_set(errp, MFD_ETIMEDOUT,
					     "%s: could not write for %d ms, the peer is not "
					     "reading (timeout-ms)", ch->name, timeout_ms);
		}
		if (n == 2 && p[1].revents)
			return fd_cancelled(ch, errp);
		if (p[0].revents)
			return 0;
	}
}

/* A system error on an established channel, as an mfd code and message. */
static int fd_io_error(mfd_channel *ch, const char *op, int err, mfd_error **errp)
{
	if (channel_is_shut(ch))
		return fd_cancelled(ch, errp);
	if (err == EPIPE || err == ECONNRESET)
		return error_set_errno(errp, MFD_EEOF, err, "%s: %s: peer closed", ch->name, op);
	/* The kernel gave up on the peer: keepalive or TCP_USER_TIMEOUT. */
	if (err == ETIMEDOUT)
		return error_set_errno(errp, MFD_ETIMEDOUT, err,
					   "%s: %s: the peer stopped answering (peer-timeout-ms)",
					   ch->name, op);
	return error_set_errno(errp, MFD_EIO, err, "%s: %s", ch->name, op);
}

static size_t iov_bytes(const struct iovec *iov, int iovcnt)
{
	size_t n = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

/*
 * Read every zero-copy completion waiting on the error queue, without
 * blocking.  The kernel numbers zero-copy sends from 0 and reports ranges
 * [ee_info, ee_data] (32-bit, wrapping) of sends it is done with.  Returns
 * the number of error-queue messages read, or an error.
 */
static int zc_reap(mfd_channel *ch, struct fd_chan *fc, mfd_error **errp)
{
	for (int read = 0;; read++) {
		union {
			char buf[CMSG_SPACE(sizeof(struct sock_extended_err)) + 64];
			struct cmsghdr align;
		} control;
		struct msghdr msg = { .msg_control = control.buf,
				      .msg_controllen = sizeof(control.buf) };
		ssize_t n = recvmsg(fc->fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return read;
		if (n < 0)
			return fd_io_error(ch, "reading zero-copy completions", errno, errp);
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
			struct sock_extended_err ee;

			if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
			      (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)) ||
			    cm->cmsg_len < CMSG_LEN(sizeof(ee)))
				continue;
			memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
			if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY) {
				if (ee.ee_errno)
					return fd_io_error(ch, "write", (int)ee.ee_errno, errp);
				continue;
			}
			uint32_t count = ee.ee_data - ee.ee_info + 1;

			if (count > fc->zc.queued - fc->zc.done)
				return mfd_error_set(errp, MFD_EIO, "%s: the kernel reported %u "
						     "zero-copy sends done, only %llu were pending",
						     ch->name, count,
						     (unsigned long long)(fc->zc.queued -
									  fc->zc.done));
			fc->zc.done += count;
			fc->zc.sends += count;
			if (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED)
				fc->zc.copied += count;
		}
	}
}

/*
 * Sleep until the kernel reports zero-copy sends done (or the deadline).
 * With no events asked, poll() reports POLLERR (a non-empty error queue)
 * and hang-ups only; a wake-up that read nothing and left no socket error
 * is a hang-up, after which no completion comes.
 */
static int zc_wait(mfd_channel *ch, struct fd_chan *fc, int64_t deadline, int timeout_ms,
		   mfd_error **errp)
{
	int r, soerr = 0;
	socklen_t len = sizeof(soerr);

	if ((r = fd_wait(ch, fc, 0, deadline, timeout_ms, errp)) < 0 ||
	    (r = zc_reap(ch, fc, errp)) < 0)
		return r;
	if (r > 0)
		return 0;
	if (getsockopt(fc->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr)
		return fd_io_error(ch, "write", soerr, errp);
	if (channel_is_shut(ch))
		return fd_cancelled(ch, errp);
	return mfd_error_set(errp, MFD_EEOF, "%s: connection closed with %llu zero-copy sends "
			     "in flight", ch->name,
			     (unsigned long long)(fc->zc.queued - fc->zc.done));
}

static ssize_t fd_readv(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;
	int timeout = atomic_load_explicit(&fc->timeout_ms, memory_order_relaxed);
	int64_t deadline = deadline_after(timeout);
	bool dontwait = fc->kind == FD_SOCKET && timeout > 0;

	if (iovcnt > IOV_MAX)
		iovcnt = IOV_MAX;
	for (;;) {
		ssize_t n;
		int r;

		if (channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (fc->kind == FD_PIPE) {
			r = fd_wait(ch, fc, POLLIN, deadline, timeout, errp);
			if (r < 0)
				return r;
		}
		if (dontwait) {
			struct msghdr msg = { .msg_iov = (struct iovec *)iov,
					      .msg_iovlen = (size_t)iovcnt };

			n = recvmsg(fc->fd, &msg, MSG_DONTWAIT);
		} else {
			n = readv(fc->fd, iov, iovcnt);
		}
		if (n > 0)
			return n;
		if (n == 0)
			return channel_is_shut(ch) ? fd_cancelled(ch, errp) : 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			r = fd_wait(ch, fc, POLLIN, deadline, timeout, errp);
			if (r < 0)
				return r;
			continue;
		}
		if (channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (errno == ETIMEDOUT)
			return fd_io_error(ch, "read", errno, errp);
		return error_set_errno(errp, MFD_EIO, errno, "%s: read", ch->name);
	}
}

/*
 * Writing to a pipe whose reader is gone raises SIGPIPE, which would kill a
 * VMM that kept the default disposition.  A library must not change the
 * process-wide disposition, so block the signal in this thread around the
 * write and swallow the one our write produced.
 */
static ssize_t pipe_writev(int fd, const struct iovec *iov, int iovcnt, int *err)
{
	sigset_t pipe_set, old_set, pending;
	bool was_pending;
	ssize_t n;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
	sigpending(&pending);
	was_pending = sigismember(&pending, SIGPIPE);
	n = writev(fd, iov, iovcnt);
	*err = errno;
	if (n < 0 && *err == EPIPE && !was_pending) {
		const struct timespec zero = { 0, 0 };

		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old_set, NULL);
	return n;
}

#define PIPE_CLIP_IOV 64

/*
 * A blocking write to a pipe sleeps until all of it fits, where neither the
 * eventfd nor a deadline can reach it.  poll() reporting POLLOUT guarantees
 * room for PIPE_BUF bytes, so a pipe we must not make non-blocking gets at
 * most that much per write.
 */
static int pipe_clip(const struct iovec *iov, int iovcnt, struct iovec *clip)
{
	size_t room = PIPE_BUF;
	int n = 0;

	for (int i = 0; i < iovcnt && n < PIPE_CLIP_IOV && room; i++) {
		if (!iov[i].iov_len)
			continue;
		clip[n] = iov[i];
		clip[n].iov_len = MFD_MIN(iov[i].iov_len, room);
		room -= clip[n].iov_len;
		n++;
	}
	return n;
}

static ssize_t fd_writev(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;
	int timeout = atomic_load_explicit(&fc->timeout_ms, memory_order_relaxed);
	int64_t deadline = deadline_after(timeout);
	int sock_flags = MSG_NOSIGNAL | (timeout > 0 ? MSG_DONTWAIT : 0);

	if (iovcnt > IOV_MAX)
		iovcnt = IOV_MAX;
	for (;;) {
		ssize_t n;
		int err, r;

		if (channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (fc->kind == FD_SOCKET) {
			struct msghdr msg = { .msg_iov = (struct iovec *)iov,
					      .msg_iovlen = (size_t)iovcnt };

			n = sendmsg(fc->fd, &msg, sock_flags);
			err = errno;
		} else if (fc->kind == FD_PIPE) {
			struct iovec clip[PIPE_CLIP_IOV];

			r = fd_wait(ch, fc, POLLOUT, deadline, timeout, errp);
			if (r < 0)
				return r;
			if (fc->nonblock)
				n = pipe_writev(fc->fd, iov, iovcnt, &err);
			else
				n = pipe_writev(fc->fd, clip, pipe_clip(iov, iovcnt, clip), &err);
		} else {
			n = writev(fc->fd, iov, iovcnt);
			err = errno;
		}
		if (n >= 0)
			return n;
		if (err == EINTR)
			continue;
		if (err == EAGAIN || err == EWOULDBLOCK) {
			/* A pending completion makes poll() report POLLERR at
			 * once: read them, or the wait would spin. */
			if (fc->zc.queued != fc->zc.done && (r = zc_reap(ch, fc, errp)) < 0)
				return r;
			r = fd_wait(ch, fc, POLLOUT, deadline, timeout, errp);
			if (r < 0)
				return r;
			continue;
		}
		return fd_io_error(ch, "write", err, errp);
	}
}

static ssize_t fd_writev_zerocopy(mfd_channel *ch, const struct iovec *iov, int iovcnt,
				  mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;
	int timeout = atomic_load_explicit(&fc->timeout_ms, memory_order_relaxed);
	int64_t deadline = deadline_after(timeout);
	int flags = MSG_NOSIGNAL | MSG_ZEROCOPY | (timeout > 0 ? MSG_DONTWAIT : 0);
	struct msghdr msg = { .msg_iov = (struct iovec *)iov,
			      .msg_iovlen = (size_t)MFD_MIN(iovcnt, IOV_MAX) };

	if (!fc->zc.on || fc->zc.refused) {
		ssize_t n = fd_writev(ch, iov, iovcnt, errp);

		if (n > 0 && fc->zc.on)
			fc->zc.copy_bytes += (uint64_t)n;
		return n;
	}
	for (;;) {
		ssize_t n;
		int err, r;

		if (channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		n = sendmsg(fc->fd, &msg, flags);
		err = errno;
		if (n >= 0) {
			if (n > 0)
				fc->zc.queued++;
			return n;
		}
		if (err == EINTR)
			continue;
		if (err == EAGAIN || err == EWOULDBLOCK) {
			if ((r = zc_reap(ch, fc, errp)) < 0 ||
			    (r = fd_wait(ch, fc, POLLOUT, deadline, timeout, errp)) < 0)
				return r;
			continue;
		}
		if (err != ENOBUFS)
			return fd_io_error(ch, "write", err, errp);
		/* Pinned pages are charged to the locked-memory limit (unless
		 * CAP_IPC_LOCK): wait for sends in flight to release theirs. */
		if ((r = zc_reap(ch, fc, errp)) < 0)
			return r;
		if (fc->zc.queued != fc->zc.done) {
			if ((r = zc_wait(ch, fc, deadline, timeout, errp)) < 0)
				return r;
			continue;
		}
		struct rlimit rl = { 0, 0 };
		char lim[32] = "unlimited";

		getrlimit(RLIMIT_MEMLOCK, &rl);
		if (rl.rlim_cur != RLIM_INFINITY)
			snprintf(lim, sizeof(lim), "%llu KiB", (unsigned long long)rl.rlim_cur >> 10);
		log_warn("%s: zero-copy-send: the kernel refused to pin %zu bytes with "
			     "nothing in flight (ENOBUFS; locked-memory limit %s): this channel "
			     "sends by copy from now on; raise RLIMIT_MEMLOCK (ulimit -l) or "
			     "grant CAP_IPC_LOCK for zero-copy", ch->name,
			     iov_bytes(msg.msg_iov, (int)msg.msg_iovlen), lim);
		fc->zc.refused = true;
		return fd_writev_zerocopy(ch, iov, iovcnt, errp);
	}
}

static int fd_flush_zerocopy(mfd_channel *ch, struct mfd_zerocopy_report *rep,
			     mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;
	int timeout = atomic_load_explicit(&fc->timeout_ms, memory_order_relaxed);
	int64_t deadline = deadline_after(timeout);
	int r;

	while (fc->zc.done != fc->zc.queued) {
		if ((r = zc_reap(ch, fc, errp)) < 0)
			return r;
		if (fc->zc.done != fc->zc.queued && (r = zc_wait(ch, fc, deadline, timeout, errp)) < 0)
			return r;
	}
	rep->sends = fc->zc.sends;
	rep->copied = fc->zc.copied;
	rep->copy_bytes = fc->zc.copy_bytes;
	rep->refused = fc->zc.refused;
	fc->zc.sends = fc->zc.copied = fc->zc.copy_bytes = 0;
	return 0;
}

static int set_zerocopy(mfd_channel *ch, struct fd_chan *fc, int64_t value, mfd_error **errp)
{
	int v = (int)value;

	if (setsockopt(fc->fd, SOL_SOCKET, SO_ZEROCOPY, &v, sizeof(v)) < 0) {
		if (errno == ENOPROTOOPT || errno == EOPNOTSUPP)
			return error_set_errno(errp, MFD_ENOTSUP, errno,
						   "%s: this kernel has no zero-copy send "
						   "(SO_ZEROCOPY, Linux 4.14 or later)", ch->name);
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot set SO_ZEROCOPY",
					   ch->name);
	}
	fc->zc.on = v != 0;
	return 0;
}

static void fd_shutdown(mfd_channel *ch)
{
	struct fd_chan *fc = ch->priv;

	if (fc->kind == FD_SOCKET)
		shutdown(fc->fd, SHUT_RDWR);
	if (fc->wake_fd >= 0) {
		uint64_t one = 1;

		if (write(fc->wake_fd, &one, sizeof(one)) < 0) {
			/* The counter cannot overflow with one write per shutdown. */
		}
	}
}

static int fd_finish(mfd_channel *ch, mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;

	if (fc->kind != FD_SOCKET)
		return 0;
	if (shutdown(fc->fd, SHUT_WR) < 0)
		return fd_io_error(ch, "finish (shutdown of the write side)", errno, errp);
	return 0;
}

static int set_int_opt(mfd_channel *ch, int level, int opt, const char *what, int value,
		       mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;

	if (setsockopt(fc->fd, level, opt, &value, sizeof(value)) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot set %s to %d",
					   ch->name, what, value);
	return 0;
}

static int clamp_int(int64_t v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : (int)v;
}

/*
 * Keepalive covers an idle connection, TCP_USER_TIMEOUT one with unacked
 * data (and, once set, also decides when keepalive gives up).  Probing
 * starts after half the time and three probes share the other half, so a
 * vanished peer is noticed after about value ms in both cases.
 */
static int set_peer_timeout(mfd_channel *ch, int64_t value, mfd_error **errp)
{
	/* The kernel's limits for TCP_KEEPIDLE/TCP_KEEPINTVL (seconds). */
	const int keep_max = 32767, probes = 3;
	int r;

	r = set_int_opt(ch, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE", value > 0, errp);
	if (r == 0 && value > 0) {
		r = set_int_opt(ch, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE",
				clamp_int(value / 2000, 1, keep_max), errp);
		if (r == 0)
			r = set_int_opt(ch, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL",
					clamp_int(value / (2000 * probes), 1, keep_max), errp);
		if (r == 0)
			r = set_int_opt(ch, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT", probes, errp);
	}
	if (r == 0)
		r = set_int_opt(ch, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", (int)value,
				errp);
	return r;
}

static int fd_set_option(mfd_channel *ch, const char *name, int64_t value, mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;
	bool tcp_only = strcmp(name, "peer-timeout-ms") == 0 || strcmp(name, "nodelay") == 0 ||
			strcmp(name, "zero-copy") == 0;
	bool socket_only = tcp_only || strcmp(name, "sndbuf") == 0 || strcmp(name, "rcvbuf") == 0;
	int64_t max = strcmp(name, "nodelay") == 0 || strcmp(name, "zero-copy") == 0 ? 1 : INT_MAX;

	if (!socket_only && strcmp(name, "timeout-ms") != 0)
		return mfd_error_set(errp, MFD_EINVAL, "%s: unknown option '%s' (expected "
				     "timeout-ms, peer-timeout-ms, nodelay, zero-copy, sndbuf or "
				     "rcvbuf)",
				     ch->name, name);
	if (value < 0 || value > max)
		return mfd_error_set(errp, MFD_EINVAL, "%s: %s %lld is out of range 0..%lld",
				     ch->name, name, (long long)value, (long long)max);
	if ((tcp_only && !fc->tcp) || (socket_only && fc->kind != FD_SOCKET))
		return mfd_error_set(errp, MFD_ENOTSUP, "%s: option '%s' needs a %s, this is a %s",
				     ch->name, name, tcp_only ? "TCP socket" : "socket",
				     fd_kind_text(fc));
	if (strcmp(name, "timeout-ms") == 0) {
		atomic_store_explicit(&fc->timeout_ms, (int)value, memory_order_relaxed);
		return 0;
	}
	if (strcmp(name, "peer-timeout-ms") == 0)
		return set_peer_timeout(ch, value, errp);
	if (strcmp(name, "nodelay") == 0)
		return set_int_opt(ch, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY", (int)value, errp);
	if (strcmp(name, "zero-copy") == 0)
		return set_zerocopy(ch, fc, value, errp);
	/* Setting a size switches autotuning off for good, so 0 must not touch it. */
	if (value == 0)
		return 0;
	if (strcmp(name, "sndbuf") == 0)
		return set_int_opt(ch, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", (int)value, errp);
	return set_int_opt(ch, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF", (int)value, errp);
}

static void fd_close(mfd_channel *ch)
{
	struct fd_chan *fc = ch->priv;

	if (fc->own)
		close(fc->fd);
	if (fc->wake_fd >= 0)
		close(fc->wake_fd);
	free(fc);
}

static const struct mfd_channel_ops fd_ops = {
	.kind = "fd",
	.readv = fd_readv,
	.writev = fd_writev,
	.shutdown = fd_shutdown,
	.finish = fd_finish,
	.set_option = fd_set_option,
	.close = fd_close,
	.writev_zerocopy = fd_writev_zerocopy,
	.flush_zerocopy = fd_flush_zerocopy,
};

static int sock_int(int fd, int opt)
{
	socklen_t len = sizeof(int);
	int v = -1;

	if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) < 0)
		return -1;
	return v;
}

int fd_channel_new(int fd, bool own, const char *name, mfd_channel **out, mfd_error **errp)
{
	struct fd_chan *fc;
	char defname[32];
	struct stat st;
	int fl;

	*out = NULL;
	if (fd < 0 || fstat(fd, &st) < 0)
		return error_set_errno(errp, MFD_EINVAL, fd < 0 ? EBADF : errno,
					   "fd:%d is not an open file descriptor", fd);
	fc = calloc(1, sizeof(*fc));
	if (!fc)
		return mfd_error_set(errp, MFD_ENOMEM, "fd:%d: out of memory", fd);
	fc->fd = fd;
	fc->own = own;
	fc->wake_fd = -1;
	fc->domain = -1;
	fl = fcntl(fd, F_GETFL);
	fc->nonblock = fl >= 0 && (fl & O_NONBLOCK);
	atomic_init(&fc->timeout_ms, 0);
	if (S_ISSOCK(st.st_mode)) {
		fc->kind = FD_SOCKET;
		fc->domain = sock_int(fd, SO_DOMAIN);
		fc->tcp = (fc->domain == AF_INET || fc->domain == AF_INET6) &&
			  sock_int(fd, SO_TYPE) == SOCK_STREAM &&
			  sock_int(fd, SO_PROTOCOL) == IPPROTO_TCP;
	} else if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
		fc->kind = FD_FILE;
	} else {
		fc->kind = FD_PIPE;
		fc->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fc->wake_fd < 0) {
			int err = errno;

			free(fc);
			return error_set_errno(errp, MFD_EIO, err, "fd:%d: eventfd", fd);
		}
	}
	if (!name) {
		snprintf(defname, sizeof(defname), "fd:%d", fd);
		name = defname;
	}
	*out = channel_alloc(&fd_ops, name, fc);
	if (!*out) {
		if (fc->wake_fd >= 0)
			close(fc->wake_fd);
		free(fc);
		return mfd_error_set(errp, MFD_ENOMEM, "fd:%d: out of memory", fd);
	}
	return 0;
}

bool fd_channel_is_tcp(const mfd_channel *ch)
{
	return ch && ch->ops == &fd_ops && ((const struct fd_chan *)ch->priv)->tcp;
}

int fd_channel_fd(const mfd_channel *ch)
{
	return ch && ch->ops == &fd_ops ? ((const struct fd_chan *)ch->priv)->fd : -1;
}

int mfd_channel_new_fd(int fd, unsigned flags, const char *name, mfd_channel **out,
		       mfd_error **errp)
{
	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_new_fd: out is NULL");
	*out = NULL;
	if (flags & ~MFD_CHANNEL_OWN_FD)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_new_fd: unknown flags 0x%x",
				     flags & ~MFD_CHANNEL_OWN_FD);
	return fd_channel_new(fd, flags & MFD_CHANNEL_OWN_FD, name, out, errp);
}

/* Wrap two fresh descriptors; on failure both are closed. */
static int wrap_pair(int fds[2], const char *name0, const char *name1, mfd_channel **a,
		     mfd_channel **b, mfd_error **errp)
{
	int r = mfd_channel_new_fd(fds[0], MFD_CHANNEL_OWN_FD, name0, a, errp);

	if (r < 0) {
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	r = mfd_channel_new_fd(fds[1], MFD_CHANNEL_OWN_FD, name1, b, errp);
	if (r < 0) {
		mfd_channel_free(*a);
		*a = NULL;
		close(fds[1]);
		return r;
	}
	return 0;
}

int mfd_channel_socketpair(mfd_channel **a, mfd_channel **b, mfd_error **errp)
{
	int fds[2];

	if (!a || !b)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_socketpair: NULL argument");
	*a = *b = NULL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "socketpair");
	return wrap_pair(fds, "socketpair:0", "socketpair:1", a, b, errp);
}

int mfd_channel_pipe(mfd_channel **rd, mfd_channel **wr, mfd_error **errp)
{
	int fds[2];

	if (!rd || !wr)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_pipe: NULL argument");
	*rd = *wr = NULL;
	/* Non-blocking: these ends are ours alone, so full-size writes stay cancellable. */
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "pipe");
	return wrap_pair(fds, "pipe:read", "pipe:write", rd, wr, errp);
}

int mfd_channel_open_file(const char *path, enum mfd_channel_mode mode, mfd_channel **out,
			  mfd_error **errp)
{
	char *name = NULL;
	int fd, flags, r;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_open_file: out is NULL");
	*out = NULL;
	if (!path || !*path)
		return mfd_error_set(errp, MFD_EINVAL, "file channel: empty path");
	if (mode == MFD_CHANNEL_READ)
		flags = O_RDONLY;
	else if (mode == MFD_CHANNEL_WRITE)
		flags = O_WRONLY | O_CREAT | O_TRUNC;
	else
		return mfd_error_set(errp, MFD_EINVAL, "file:%s: mode %d is neither read nor write",
				     path, (int)mode);
	fd = open(path, flags | O_CLOEXEC, 0600);
	if (fd < 0)
		return error_set_errno(errp, MFD_EIO, errno, "file:%s: cannot open for %s",
					   path, mode == MFD_CHANNEL_READ ? "reading" : "writing");
	if (asprintf(&name, "file:%s", path) < 0) {
		close(fd);
		return mfd_error_set(errp, MFD_ENOMEM, "file:%s: out of memory", path);
	}
	r = mfd_channel_new_fd(fd, MFD_CHANNEL_OWN_FD, name, out, errp);
	if (r < 0)
		close(fd);
	free(name);
	return r;
}
