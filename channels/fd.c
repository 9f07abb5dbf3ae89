/* SPDX-License-Identifier: MIT */
/*
 * Channels over a file descriptor: sockets, pipes, FIFOs and regular files.
 *
 * Cancellation: a socket is unblocked by shutdown(2).  Pipes and FIFOs have
 * no such call, so I/O on them waits in poll(2) together with an eventfd
 * that mfd_channel_shutdown() signals.  Regular files never block.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#include "core/channel.h"
#include "core/util.h"

enum fd_kind { FD_SOCKET, FD_FILE, FD_PIPE };

struct fd_chan {
	/* Set at creation. */
	int fd;
	bool own;
	enum fd_kind kind;
	int wake_fd;	/* eventfd signalled by shutdown, pipes only; else -1 */
};

static int fd_cancelled(mfd_channel *ch, mfd_error **errp)
{
	return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
}

/* Wait until fd is ready for `events` or the channel is shut down. */
static int fd_wait(mfd_channel *ch, struct fd_chan *fc, short events, mfd_error **errp)
{
	struct pollfd p[2] = {
		{ .fd = fc->fd, .events = events },
		{ .fd = fc->wake_fd, .events = POLLIN },
	};
	int n = fc->wake_fd >= 0 ? 2 : 1;

	for (;;) {
		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		int r = poll(p, (nfds_t)n, -1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return mfd_error_set_errno(errp, MFD_EIO, errno, "%s: poll", ch->name);
		if (n == 2 && p[1].revents)
			return fd_cancelled(ch, errp);
		if (p[0].revents)
			return 0;
	}
}

static ssize_t fd_readv(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;

	if (iovcnt > IOV_MAX)
		iovcnt = IOV_MAX;
	for (;;) {
		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (fc->kind == FD_PIPE) {
			int r = fd_wait(ch, fc, POLLIN, errp);

			if (r < 0)
				return r;
		}
		ssize_t n = readv(fc->fd, iov, iovcnt);

		if (n > 0)
			return n;
		if (n == 0)
			return mfd_channel_is_shut(ch) ? fd_cancelled(ch, errp) : 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int r = fd_wait(ch, fc, POLLIN, errp);

			if (r < 0)
				return r;
			continue;
		}
		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
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

static ssize_t fd_writev(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct fd_chan *fc = ch->priv;

	if (iovcnt > IOV_MAX)
		iovcnt = IOV_MAX;
	for (;;) {
		ssize_t n;
		int err;

		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (fc->kind == FD_SOCKET) {
			struct msghdr msg = { .msg_iov = (struct iovec *)iov,
					      .msg_iovlen = (size_t)iovcnt };

			n = sendmsg(fc->fd, &msg, MSG_NOSIGNAL);
			err = errno;
		} else if (fc->kind == FD_PIPE) {
			int r = fd_wait(ch, fc, POLLOUT, errp);

			if (r < 0)
				return r;
			n = pipe_writev(fc->fd, iov, iovcnt, &err);
		} else {
			n = writev(fc->fd, iov, iovcnt);
			err = errno;
		}
		if (n >= 0)
			return n;
		if (err == EINTR)
			continue;
		if (err == EAGAIN || err == EWOULDBLOCK) {
			int r = fd_wait(ch, fc, POLLOUT, errp);

			if (r < 0)
				return r;
			continue;
		}
		if (mfd_channel_is_shut(ch))
			return fd_cancelled(ch, errp);
		if (err == EPIPE || err == ECONNRESET)
			return mfd_error_set_errno(errp, MFD_EEOF, err, "%s: write: peer closed",
						   ch->name);
		return mfd_error_set_errno(errp, MFD_EIO, err, "%s: write", ch->name);
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
	.close = fd_close,
};

int mfd_channel_new_fd(int fd, unsigned flags, const char *name, mfd_channel **out,
		       mfd_error **errp)
{
	struct fd_chan *fc;
	char defname[32];
	struct stat st;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_new_fd: out is NULL");
	*out = NULL;
	if (flags & ~MFD_CHANNEL_OWN_FD)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_new_fd: unknown flags 0x%x",
				     flags & ~MFD_CHANNEL_OWN_FD);
	if (fd < 0 || fstat(fd, &st) < 0)
		return mfd_error_set_errno(errp, MFD_EINVAL, fd < 0 ? EBADF : errno,
					   "fd:%d is not an open file descriptor", fd);
	fc = calloc(1, sizeof(*fc));
	if (!fc)
		return mfd_error_set(errp, MFD_ENOMEM, "fd:%d: out of memory", fd);
	fc->fd = fd;
	fc->own = flags & MFD_CHANNEL_OWN_FD;
	fc->wake_fd = -1;
	if (S_ISSOCK(st.st_mode)) {
		fc->kind = FD_SOCKET;
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
	if (pipe2(fds, O_CLOEXEC) < 0)
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
