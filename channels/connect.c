/* SPDX-License-Identifier: MIT */
/*
 * mfd_channel_connect(): the source side of the tcp:, unix:, fd: and file:
 * transports.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "channels/connect.h"
#include "channels/fd.h"
#include "channels/uri.h"
#include "core/util.h"

#define CONNECT_DEFAULT_MS 30000

/* Appends "<addr>: <why>" to the list of failed attempts shown in the error. */
static void note_attempt(char *buf, size_t size, const char *addr, int err)
{
	size_t used = strlen(buf);

	if (used + 1 < size)
		snprintf(buf + used, size - used, "%s%s: %s", used ? "; " : "", addr,
			 err == ETIMEDOUT ? "no answer before the deadline" : strerror(err));
}

/* Connect a non-blocking socket by the deadline, or until @cancel_fd is
 * readable (ECANCELED); returns 0 or an errno. */
static int connect_by(int fd, const struct sockaddr *sa, socklen_t len, int64_t deadline,
		      int cancel_fd)
{
	struct pollfd p[2] = {
		{ .fd = fd, .events = POLLOUT },
		{ .fd = cancel_fd, .events = POLLIN },	/* poll() skips a negative fd */
	};
	socklen_t elen = sizeof(int);
	int err = 0;

	if (connect(fd, sa, len) == 0)
		return 0;
	/* After EINTR the connection still proceeds in the background, as with EINPROGRESS. */
	if (errno != EINPROGRESS && errno != EINTR)
		return errno;
	for (;;) {
		int r = poll(p, 2, deadline_poll_ms(deadline));

		if (r > 0 && p[1].revents)
			return ECANCELED;
		if (r > 0)
			break;
		if (r < 0 && errno != EINTR)
			return errno;
		if (r == 0 && deadline_poll_ms(deadline) == 0)
			return ETIMEDOUT;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
		return errno;
	return err;
}

static int connect_tcp(const char *uri, const struct transport_uri *u, int timeout_ms,
		       int cancel_fd, mfd_channel **out, mfd_error **errp)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res, *ai;
	int64_t deadline = deadline_after(timeout_ms);
	char tried[512] = "", addr[SOCKADDR_TEXT_MAX];
	bool timed_out = false, cancelled = false;
	int gai, fd = -1, one = 1, fl, r;

	gai = getaddrinfo(u->host, u->port, &hints, &res);
	if (gai != 0)
		return mfd_error_set(errp, MFD_EIO, "%s: cannot resolve host '%s': %s", uri, u->host,
				     gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
	for (ai = res; ai && !timed_out && !cancelled; ai = ai->ai_next) {
		int err;

		sockaddr_text(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr));
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    ai->ai_protocol);
		err = fd < 0 ? errno : connect_by(fd, ai->ai_addr, ai->ai_addrlen, deadline,
						  cancel_fd);
		if (err == 0)
			break;
		note_attempt(tried, sizeof(tried), addr, err);
		timed_out = err == ETIMEDOUT;
		cancelled = err == ECANCELED;
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0 && cancelled)
		return mfd_error_set(errp, MFD_ECANCELED, "%s: connect cancelled", uri);
	if (fd < 0 && timed_out)
		return mfd_error_set(errp, MFD_ETIMEDOUT, "%s: no connection within %d ms (%s)", uri,
				     timeout_ms, tried);
	if (fd < 0)
		return mfd_error_set(errp, MFD_EIO, "%s: cannot connect: %s", uri, tried);
	/* The channel sleeps in the kernel unless a deadline is set on it. */
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
		int err = errno;

		close(fd);
		return error_set_errno(errp, MFD_EIO, err, "%s: cannot set up the socket to %s",
					   uri, addr);
	}
	r = fd_channel_new(fd, true, uri, out, errp);
	if (r < 0)
		close(fd);
	return r;
}

static int connect_unix(const char *uri, const struct transport_uri *u, int timeout_ms,
			mfd_channel **out, mfd_error **errp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	/* A full backlog makes connect() sleep; SO_SNDTIMEO bounds that sleep. */
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	const struct timeval forever = { 0, 0 };
	int fd, r, err;

	memcpy(sa.sun_path, u->path, strlen(u->path) + 1);	/* length checked by the parser */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: socket", uri);
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		err = errno;
		close(fd);
		return error_set_errno(errp, MFD_EIO, err, "%s: SO_SNDTIMEO", uri);
	}
	do
		r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	while (r < 0 && errno == EINTR);
	err = errno;
	if (r == 0 && setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &forever, sizeof(forever)) < 0) {
		r = -1;
		err = errno;
	}
	if (r < 0) {
		close(fd);
		if (err == EAGAIN)
			return mfd_error_set(errp, MFD_ETIMEDOUT, "%s: no connection within %d ms "
					     "(the listener's backlog stayed full)", uri, timeout_ms);
		return error_set_errno(errp, MFD_EIO, err, "%s: cannot connect", uri);
	}
	r = fd_channel_new(fd, true, uri, out, errp);
	if (r < 0)
		close(fd);
	return r;
}

static int connect_fd(const struct transport_uri *u, mfd_channel **out, mfd_error **errp)
{
	char name[32];

	snprintf(name, sizeof(name), "fd:%d", u->fd);
	/* Borrowed: the caller keeps the descriptor and closes it after the channel. */
	return fd_channel_new(u->fd, false, name, out, errp);
}

/*
 * The stream goes at the offset; what the caller put before it stays, and
 * a longer old file is cut there so no stale bytes follow the stream.
 */
static int connect_file(const char *uri, const struct transport_uri *u, mfd_channel **out,
			mfd_error **errp)
{
	char *name = NULL;
	struct stat st;
	int fd, r;

	fd = open(u->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot open for writing", uri);
	if (fstat(fd, &st) < 0 || (S_ISREG(st.st_mode) && ftruncate(fd, (off_t)u->offset) < 0) ||
	    lseek(fd, (off_t)u->offset, SEEK_SET) < 0) {
		int err = errno;

		close(fd);
		return error_set_errno(errp, MFD_EIO, err, "%s: cannot position at offset %llu",
					   uri, (unsigned long long)u->offset);
	}
	if (asprintf(&name, "file:%s", u->path) < 0) {
		close(fd);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	}
	r = fd_channel_new(fd, true, name, out, errp);
	if (r < 0)
		close(fd);
	free(name);
	return r;
}

int mfd_channel_connect(const char *uri, int timeout_ms, mfd_channel **out, mfd_error **errp)
{
	return channel_connect_cancellable(uri, timeout_ms, -1, out, errp);
}

int channel_connect_cancellable(const char *uri, int timeout_ms, int cancel_fd,
				mfd_channel **out, mfd_error **errp)
{
	struct transport_uri u;
	int r = MFD_EINVAL;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_connect: out is NULL");
	*out = NULL;
	if (timeout_ms < 0)
		return mfd_error_set(errp, MFD_EINVAL, "%s: timeout %d ms is negative (0 means "
				     "the default of %d ms)", uri ? uri : "(null)", timeout_ms,
				     CONNECT_DEFAULT_MS);
	if (timeout_ms == 0)
		timeout_ms = CONNECT_DEFAULT_MS;
	r = transport_uri_parse(uri, &u, errp);
	if (r < 0)
		return r;
	switch (u.scheme) {
	case URI_TCP:
		r = connect_tcp(uri, &u, timeout_ms, cancel_fd, out, errp);
		break;
	case URI_UNIX:
		r = connect_unix(uri, &u, timeout_ms, out, errp);
		break;
	case URI_FD:
		r = connect_fd(&u, out, errp);
		break;
	case URI_FILE:
		r = connect_file(uri, &u, out, errp);
		break;
	}
	transport_uri_clear(&u);
	return r;
}
