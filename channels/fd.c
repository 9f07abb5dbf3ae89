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
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		int r = poll(p, (nfds_t)n, deadline_poll_ms(deadline));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return mfd_error_set_errno(errp, MFD_EIO, errno, "%s: poll", ch->name);
		if (r == 0) {
			if (deadline_poll_ms(deadline) != 0)
				continue;
			if (events == POLLIN)
				return mfd_error_set(errp, MFD_ETIMEDOUT,
						     "%s: no data arrived within %d ms (timeout-ms)",
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
	if (mfd_channel_is_shut(ch))
		return fd_cancelled(ch, errp);
	if (err == EPIPE || err == ECONNRESET)
		return mfd_error_set_errno(errp, MFD_EEOF, err, "%s: %s: peer closed", ch->name, op);
	/* The kernel gave up on the peer: keepalive or TCP_USER_TIMEOUT. */
	if (err == ETIMEDOUT)
		return mfd_error_set_errno(errp, MFD_ETIMEDOUT, err,
					   "%s: %s: the peer stopped answering (peer-timeout-ms)",
					   ch->name, op);
	return mfd_error_set_errno(errp, MFD_EIO, err, "%s: %s", ch->name, op);
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

		if (mfd_channel_is_shut(ch))
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
			return mfd_channel_is_shut(ch) ? fd_cancelled(ch, errp) : 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			r = fd_wait(ch, fc, POLLIN, deadline, timeout, errp);
			if (r < 0)
				return r;
			continue;
		}
		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (errno == ETIMEDOUT)
			return fd_io_error(ch, "read", errno, errp);
		return mfd_error_set_errno(errp, MFD_EIO, errno, "%s: read", ch->name);
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

		if (mfd_channel_is_shut(ch))
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
			r = fd_wait(ch, fc, POLLOUT, deadline, timeout, errp);
			if (r < 0)
				return r;
			continue;
		}
		return fd_io_error(ch, "write", err, errp);
	}
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
		return mfd_error_set_errno(errp, MFD_EIO, errno, "%s: cannot set %s to %d",
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
	bool tcp_only = strcmp(name, "peer-timeout-ms") == 0 || strcmp(name, "nodelay") == 0;
	bool socket_only = tcp_only || strcmp(name, "sndbuf") == 0 || strcmp(name, "rcvbuf") == 0;
	int64_t max = strcmp(name, "nodelay") == 0 ? 1 : INT_MAX;

	if (!socket_only && strcmp(name, "timeout-ms") != 0)
		return mfd_error_set(errp, MFD_EINVAL, "%s: unknown option '%s' (expected "
				     "timeout-ms, peer-timeout-ms, nodelay, sndbuf or rcvbuf)",
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
		return mfd_error_set_errno(errp, MFD_EINVAL, fd < 0 ? EBADF : errno,
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
			return mfd_error_set_errno(errp, MFD_EIO, err, "fd:%d: eventfd", fd);
		}
	}
	if (!name) {
		snprintf(defname, sizeof(defname), "fd:%d", fd);
		name = defname;
	}
	*out = mfd_channel_alloc(&fd_ops, name, fc);
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
		return mfd_error_set_errno(errp, MFD_EIO, errno, "socketpair");
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
		return mfd_error_set_errno(errp, MFD_EIO, errno, "pipe");
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
		return mfd_error_set_errno(errp, MFD_EIO, errno, "file:%s: cannot open for %s",
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
