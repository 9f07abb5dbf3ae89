/* SPDX-License-Identifier: MIT */
/*
 * mfd_listener: the destination side of the transports.
 *
 * tcp: and unix: listen on a socket of their own; fd:N accepts on a
 * listening socket the caller opened, or hands out the caller's connected
 * socket, pipe or file once; file: hands out one reading channel.
 *
 * Cancellation goes through an eventfd polled beside the listening socket,
 * never through shutdown() on it: gather closes that socket, and a shutdown
 * from another thread must not reach a descriptor number reused meanwhile.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "channels/fd.h"
#include "channels/listener.h"
#include "channels/uri.h"
#include "core/escape.h"
#include "core/util.h"

/* Enough for a main channel and a few multifd channels arriving at once;
 * gather raises it to the number of channels it waits for. */
#define LISTEN_BACKLOG 16
/* How many missing slots an error message lists. */
#define MISSING_SHOWN 16

enum listener_mode {
	LISTEN_ACCEPT,	/* a listening socket: accept connections */
	LISTEN_ONCE,	/* one connected socket, pipe or file: hand it out once */
	LISTEN_LIST,	/* channels the caller already has: hand them out in order */
};

struct mfd_listener {
	/* Set at creation. */
	char *uri;		/* as reported by mfd_listener_uri() */
	char *chan_name;	/* LISTEN_ONCE: the name of the one channel */
	enum listener_mode mode;
	bool own_fd;		/* false for fd:N, which is the caller's */
	int wake_fd;		/* eventfd written by mfd_listener_shutdown() */
	char *unix_path;	/* unix: the socket file we made, removed on free */
	dev_t unix_dev;
	ino_t unix_ino;

	/* Owned by the thread accepting or gathering. */
	int fd;			/* listening socket or the one channel's fd; -1 once closed */
	bool done;		/* stopped listening, or the one channel was handed out */

	/* Any thread. */
	atomic_bool shut;
	pthread_mutex_t lock;
	mfd_channel *identifying;	/* under lock: the channel gather's identify reads */

	/* LISTEN_LIST, owned by the gathering thread. */
	mfd_channel **list;
	unsigned nlist, next;
};

static int listen_tcp(mfd_listener *l, const char *uri, const struct transport_uri *u,
		      mfd_error **errp)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res, *ai;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char addr[SOCKADDR_TEXT_MAX], tried[512] = "";
	int gai, one = 1;

	gai = getaddrinfo(u->host, u->port, &hints, &res);
	if (gai != 0)
		return mfd_error_set(errp, MFD_EIO, "%s: cannot resolve host '%s': %s", uri, u->host,
				     gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
	/* The first address that works: port 0 on several would give several ports. */
	for (ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
				ai->ai_protocol);
		size_t used = strlen(tried);

		if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
		    bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0) {
			l->fd = fd;
			break;
		}
		snprintf(tried + used, sizeof(tried) - used, "%s%s: %s", used ? "; " : "",
			 sockaddr_text(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr)),
			 strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	freeaddrinfo(res);
	if (l->fd < 0)
		return mfd_error_set(errp, MFD_EIO, "%s: cannot listen: %s", uri, tried);
	if (getsockname(l->fd, (struct sockaddr *)&ss, &len) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: getsockname", uri);
	if (asprintf(&l->uri, "tcp:%s",
		     sockaddr_text((struct sockaddr *)&ss, len, addr, sizeof(addr))) < 0) {
		l->uri = NULL;
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	}
	return 0;
}

static int listen_unix(mfd_listener *l, const char *uri, const struct transport_uri *u,
		       mfd_error **errp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;

	memcpy(sa.sun_path, u->path, strlen(u->path) + 1);	/* length checked by the parser */
	if (lstat(u->path, &st) == 0) {
		/* Replace a stale socket, but never a file that is something else. */
		if (!S_ISSOCK(st.st_mode))
			return mfd_error_set(errp, MFD_EINVAL, "%s: '%s' exists and is not a socket; "
					     "refusing to replace it", uri, u->path);
		if (unlink(u->path) < 0)
			return error_set_errno(errp, MFD_EIO, errno,
						   "%s: cannot remove the old socket file", uri);
	}
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (l->fd < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: socket", uri);
	if (bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot bind", uri);
	l->unix_path = strdup(u->path);
	if (!l->unix_path)
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	if (lstat(u->path, &st) == 0) {
		l->unix_dev = st.st_dev;
		l->unix_ino = st.st_ino;
	}
	if (listen(l->fd, LISTEN_BACKLOG) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot listen", uri);
	l->uri = strdup(uri);
	return l->uri ? 0 : mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
}

static int listen_fd(mfd_listener *l, const char *uri, const struct transport_uri *u,
		     mfd_error **errp)
{
	struct stat st;
	socklen_t len = sizeof(int);
	int acceptconn = 0;

	if (fstat(u->fd, &st) < 0)
		return error_set_errno(errp, MFD_EINVAL, errno,
					   "%s: not an open file descriptor", uri);
	l->fd = u->fd;
	l->own_fd = false;
	if (S_ISSOCK(st.st_mode) &&
	    getsockopt(u->fd, SOL_SOCKET, SO_ACCEPTCONN, &acceptconn, &len) == 0 && acceptconn)
		l->mode = LISTEN_ACCEPT;
	else
		l->mode = LISTEN_ONCE;
	if (asprintf(&l->uri, "fd:%d", u->fd) < 0) {
		l->uri = NULL;
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	}
	l->chan_name = strdup(l->uri);
	return l->chan_name ? 0 : mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
}

static int listen_file(mfd_listener *l, const char *uri, const struct transport_uri *u,
		       mfd_error **errp)
{
	l->mode = LISTEN_ONCE;
	l->fd = open(u->path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot open for reading", uri);
	if (lseek(l->fd, (off_t)u->offset, SEEK_SET) < 0)
		return error_set_errno(errp, MFD_EIO, errno, "%s: cannot seek to offset %llu",
					   uri, (unsigned long long)u->offset);
	l->uri = strdup(uri);
	if (!l->uri || asprintf(&l->chan_name, "file:%s", u->path) < 0) {
		l->chan_name = NULL;
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	}
	return 0;
}

int mfd_listener_new(const char *uri, mfd_listener **out, mfd_error **errp)
{
	struct transport_uri u;
	mfd_listener *l;
	int r = MFD_EINVAL;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_listener_new: out is NULL");
	*out = NULL;
	r = transport_uri_parse(uri, &u, errp);
	if (r < 0)
		return r;
	l = calloc(1, sizeof(*l));
	if (!l) {
		transport_uri_clear(&u);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	}
	l->fd = -1;
	l->own_fd = true;
	l->mode = LISTEN_ACCEPT;
	atomic_init(&l->shut, false);
	pthread_mutex_init(&l->lock, NULL);
	l->wake_fd = -1;
	switch (u.scheme) {
	case URI_TCP:
		r = listen_tcp(l, uri, &u, errp);
		break;
	case URI_UNIX:
		r = listen_unix(l, uri, &u, errp);
		break;
	case URI_FD:
		r = listen_fd(l, uri, &u, errp);
		break;
	case URI_FILE:
		r = listen_file(l, uri, &u, errp);
		break;
	}
	/* Only now: a new descriptor could take the number fd:N names when N is closed. */
	if (r == 0) {
		l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (l->wake_fd < 0)
			r = error_set_errno(errp, MFD_EIO, errno, "%s: eventfd", uri);
	}
	transport_uri_clear(&u);
	if (r < 0) {
		mfd_listener_free(l);
		return r;
	}
	*out = l;
	return 0;
}

const char *mfd_listener_uri(const mfd_listener *l)
{
	return l ? l->uri : "(null)";
}

/* Who is on the other end, for the channel's name. */
static const char *peer_text(int fd, const struct sockaddr *sa, socklen_t len, char *buf,
			     size_t size)
{
	if (sa->sa_family == AF_UNIX) {
		struct ucred cred;
		socklen_t clen = sizeof(cred);

		/* Unix clients rarely bind a name; their process is what identifies them. */
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
			snprintf(buf, size, "pid %d", (int)cred.pid);
			return buf;
		}
	}
	return sockaddr_text(sa, len, buf, size);
}

/* accept(2) errors that concern one connection, not the listener (see its man page). */
static bool accept_error_is_transient(int err)
{
	switch (err) {
	case EINTR: case EAGAIN: case ECONNABORTED: case EPROTO: case ENETDOWN:
	case ENOPROTOOPT: case EHOSTDOWN: case ENONET: case EHOSTUNREACH: case EOPNOTSUPP:
	case ENETUNREACH:
		return true;
	default:
		return false;
	}
}

static int wrap_accepted(mfd_listener *l, int fd, const struct sockaddr *sa, socklen_t len,
			 mfd_channel **out, mfd_error **errp)
{
	char peer[SOCKADDR_TEXT_MAX], *name = NULL;
	int one = 1, r;

	if ((sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
		r = error_set_errno(errp, MFD_EIO, errno, "%s: TCP_NODELAY on a new connection",
					l->uri);
		close(fd);
		return r;
	}
	if (asprintf(&name, "%s<-%s", l->uri, peer_text(fd, sa, len, peer, sizeof(peer))) < 0) {
		close(fd);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", l->uri);
	}
	r = fd_channel_new(fd, true, name, out, errp);
	if (r < 0)
		close(fd);
	free(name);
	return r;
}

static int hand_out_once(mfd_listener *l, mfd_channel **out, mfd_error **errp)
{
	int r;

	if (l->done)
		return mfd_error_set(errp, MFD_ESTATE,
				     "%s: the only channel of this listener was already handed out",
				     l->uri);
	r = fd_channel_new(l->fd, l->own_fd, l->chan_name, out, errp);
	if (r < 0)
		return r;
	l->done = true;
	if (l->own_fd)
		l->fd = -1;	/* the channel closes it now */
	return 0;
}

static int hand_out_next(mfd_listener *l, mfd_channel **out, mfd_error **errp)
{
	if (l->next >= l->nlist)
		return mfd_error_set(errp, MFD_EPROTO, "%s: all %u channels were handed out, and "
				     "more were needed", l->uri, l->nlist);
	*out = l->list[l->next];
	l->list[l->next++] = NULL;
	return 0;
}

int listener_new_list(mfd_channel *const *chs, unsigned n, const char *name,
		      mfd_listener **out, mfd_error **errp)
{
	mfd_listener *l = calloc(1, sizeof(*l));

	*out = NULL;
	if (l) {
		l->list = calloc(n ? n : 1, sizeof(*l->list));
		l->uri = strdup(name);
	}
	if (!l || !l->list || !l->uri) {
		for (unsigned i = 0; i < n; i++)
			mfd_channel_free(chs[i]);
		if (l) {
			free(l->list);
			free(l->uri);
			free(l);
		}
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", name);
	}
	memcpy(l->list, chs, n * sizeof(*chs));
	l->nlist = n;
	l->fd = -1;
	l->wake_fd = -1;
	l->mode = LISTEN_LIST;
	atomic_init(&l->shut, false);
	pthread_mutex_init(&l->lock, NULL);
	*out = l;
	return 0;
}

static int listener_accept(mfd_listener *l, int64_t deadline, int timeout_ms,
			   mfd_channel **out, mfd_error **errp)
{
	struct pollfd p[2] = {
		{ .fd = l->fd, .events = POLLIN },
		{ .fd = l->wake_fd, .events = POLLIN },
	};

	*out = NULL;
	if (atomic_load(&l->shut))
		return mfd_error_set(errp, MFD_ECANCELED, "%s: listener shut down", l->uri);
	if (l->mode == LISTEN_ONCE)
		return hand_out_once(l, out, errp);
	if (l->mode == LISTEN_LIST)
		return hand_out_next(l, out, errp);
	if (l->done)
		return mfd_error_set(errp, MFD_ESTATE,
				     "%s: no longer listening (all channels were gathered)", l->uri);
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int r = poll(p, 2, deadline_poll_ms(deadline)), fd;

		if (r < 0 && errno != EINTR)
			return error_set_errno(errp, MFD_EIO, errno, "%s: poll", l->uri);
		if (r == 0 && deadline_poll_ms(deadline) == 0)
			return mfd_error_set(errp, MFD_ETIMEDOUT, "%s: no connection within %d ms",
					     l->uri, timeout_ms);
		if (p[1].revents || atomic_load(&l->shut))
			return mfd_error_set(errp, MFD_ECANCELED, "%s: listener shut down", l->uri);
		if (r <= 0 || !p[0].revents)
			continue;
		fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
		if (fd >= 0)
			return wrap_accepted(l, fd, (struct sockaddr *)&ss, len, out, errp);
		if (!accept_error_is_transient(errno))
			return error_set_errno(errp, MFD_EIO, errno, "%s: accept", l->uri);
	}
}

int mfd_listener_accept(mfd_listener *l, int timeout_ms, mfd_channel **out, mfd_error **errp)
{
	if (!l || !out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_listener_accept: NULL argument");
	*out = NULL;
	if (timeout_ms < 0)
		return mfd_error_set(errp, MFD_EINVAL, "%s: accept timeout %d ms is negative "
				     "(0 waits forever)", l->uri, timeout_ms);
	return listener_accept(l, deadline_after(timeout_ms), timeout_ms, out, errp);
}

/* "1, 3, 4" for the empty slots. */
static void missing_slots(mfd_channel *const *slots, unsigned count, char *buf, size_t size)
{
	unsigned shown = 0;
	size_t used = 0;

	buf[0] = '\0';
	for (unsigned i = 0; i < count && used + 1 < size; i++) {
		if (slots[i])
			continue;
		if (shown++ == MISSING_SHOWN) {
			snprintf(buf + used, size - used, ", ...");
			break;
		}
		used += (size_t)snprintf(buf + used, size - used, "%s%u", shown > 1 ? ", " : "", i);
	}
}

static int gather_timed_out(const mfd_listener *l, mfd_channel *const *slots, unsigned count,
			    unsigned filled, int timeout_ms, mfd_error **errp)
{
	char missing[256];

	missing_slots(slots, count, missing, sizeof(missing));
	return mfd_error_set(errp, MFD_ETIMEDOUT, "%s: %u of %u channels ready within %d ms; "
			     "missing slot%s %s", l->uri, filled, count, timeout_ms,
			     count - filled > 1 ? "s" : "", missing);
}

/*
 * Ask identify which slot ch fills.  Its reads share the gather deadline,
 * and mfd_listener_shutdown() reaches ch while identify waits on it.
 * errp is gather's own error, empty on entry.
 */
static int identify_channel(mfd_listener *l, mfd_channel *ch, int64_t deadline,
			    mfd_identify_fn identify, const struct listener_screen *scr,
			    void *opaque, bool *stray, mfd_error **errp)
{
	int slot;

	if (deadline >= 0) {
		int left = deadline_poll_ms(deadline);

		mfd_channel_set_option(ch, "timeout-ms", left > 0 ? left : 1, NULL);
	}
	pthread_mutex_lock(&l->lock);
	if (atomic_load(&l->shut)) {
		pthread_mutex_unlock(&l->lock);
		return mfd_error_set(errp, MFD_ECANCELED, "%s: listener shut down", l->uri);
	}
	l->identifying = ch;
	pthread_mutex_unlock(&l->lock);

	slot = scr ? scr->identify(ch, opaque, stray, errp) : identify(ch, opaque, errp);

	pthread_mutex_lock(&l->lock);
	l->identifying = NULL;
	pthread_mutex_unlock(&l->lock);
	if (deadline >= 0)
		mfd_channel_set_option(ch, "timeout-ms", 0, NULL);
	if (slot >= 0) {
		/* A message without a refusal would become a later failure's message. */
		mfd_error_free(*errp);
		*errp = NULL;
		return slot;
	}
	if (*errp) {
		mfd_error_prefix(*errp, "%s: identifying channel %s", l->uri, ch->name);
		return error_normalize(*errp);
	}
	if (!error_code_is_failure(slot))
		slot = MFD_EHANDLER;
	return mfd_error_set(errp, slot, "%s: identify refused channel %s (%s)", l->uri,
			     ch->name, mfd_strerror(slot));
}

/* Stop listening so that later connections are refused, not queued. */
static void stop_listening(mfd_listener *l)
{
	l->done = true;
	if (l->mode == LISTEN_ACCEPT && l->own_fd && l->fd >= 0) {
		close(l->fd);
		l->fd = -1;
	}
}

/*
 * Accept until @count slots are filled, each connection identified by
 * @identify (or placed in arrival order without one) or, with @scr, screened:
 * a stray is closed, logged and counted, and the wait goes on.  On failure the
 * slots filled so far are left to the caller.
 */
static int gather(mfd_listener *l, unsigned count, int timeout_ms, mfd_identify_fn identify,
		  const struct listener_screen *scr, void *opaque, mfd_channel **slots,
		  mfd_error **errp)
{
	int64_t deadline;
	unsigned filled = 0;
	mfd_error *err = NULL;
	int r = 0;

	for (unsigned i = 0; i < count; i++)
		slots[i] = NULL;
	deadline = deadline_after(timeout_ms);
	/* Every channel may connect at once: make room so none waits for a SYN retry. */
	if (l->mode == LISTEN_ACCEPT && l->own_fd && l->fd >= 0 && count > LISTEN_BACKLOG)
		listen(l->fd, count < SOMAXCONN ? (int)count : SOMAXCONN);
	while (filled < count) {
		mfd_channel *ch = NULL;
		bool stray = false;
		int slot;

		r = listener_accept(l, deadline, timeout_ms, &ch, &err);
		if (r == MFD_ETIMEDOUT) {
			/* The missing slots say more than the accept's own message. */
			mfd_error_free(err);
			err = NULL;
			r = gather_timed_out(l, slots, count, filled, timeout_ms, &err);
		}
		if (r < 0)
			break;
		if (scr && l->mode == LISTEN_LIST) {
			/* Vouched for: as long as the gather waits. */
			slot = identify_channel(l, ch, deadline, NULL, scr, opaque, &stray, &err);
		} else if (scr) {
			/* A silent peer holds up the ones behind it for hello_ms at most. */
			int64_t hello = mono_ms() + scr->hello_ms;

			slot = identify_channel(l, ch, deadline >= 0 && deadline < hello ? deadline
							: hello, NULL, scr, opaque, &stray, &err);
		} else {
			slot = identify ? identify_channel(l, ch, deadline, identify, NULL, opaque,
							   NULL, &err)
					: (int)filled;
		}
		/* A listener of one channel (file:, a connected fd:) has nothing to wait for. */
		if (slot < 0 && stray && l->mode == LISTEN_ACCEPT && !atomic_load(&l->shut)) {
			char why[512];

			escape_str(why, sizeof(why), mfd_error_message(err));
			mfd_channel_free(ch);
			mfd_error_free(err);
			err = NULL;
			if (++*scr->refused > scr->max_refused) {
				r = mfd_error_set(&err, MFD_EPROTO,
						  "%s: refused more than %u connections that were not "
						  "this migration's source; the last: %s", l->uri,
						  scr->max_refused, why);
				break;
			}
			log_warn("%s: refused a connection (%u of at most %u): %s", l->uri,
				 *scr->refused, scr->max_refused, why);
			continue;
		}
		if (slot == MFD_ETIMEDOUT && deadline >= 0 && deadline_poll_ms(deadline) == 0) {
			mfd_error *why = err;

			err = NULL;
			gather_timed_out(l, slots, count, filled, timeout_ms, &err);
			mfd_error_prefix(why, "%s", mfd_error_message(err));
			mfd_error_free(err);
			err = why;
		}
		if (slot >= 0 && (unsigned)slot >= count)
			slot = mfd_error_set(&err, MFD_EPROTO, "%s: channel %s claims slot %d, but "
					     "only slots 0..%u exist", l->uri, ch->name, slot,
					     count - 1);
		else if (slot >= 0 && slots[slot])
			slot = mfd_error_set(&err, MFD_EPROTO, "%s: slot %d filled twice (by %s, then "
					     "by %s)", l->uri, slot, slots[slot]->name, ch->name);
		if (slot < 0) {
			mfd_channel_free(ch);
			r = slot;
			break;
		}
		slots[slot] = ch;
		filled++;
	}
	if (r < 0)
		error_propagate(errp, err);
	return r;
}

int mfd_listener_gather(mfd_listener *l, unsigned count, int timeout_ms,
			mfd_identify_fn identify, void *opaque, mfd_channel **slots,
			mfd_error **errp)
{
	int r;

	if (!l || !slots || count == 0 || count > INT_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_listener_gather: %s",
				     !l || !slots ? "NULL argument" : "count must be 1..INT_MAX");
	for (unsigned i = 0; i < count; i++)
		slots[i] = NULL;
	if (timeout_ms < 0)
		return mfd_error_set(errp, MFD_EINVAL, "%s: gather timeout %d ms is negative "
				     "(0 waits forever)", l->uri, timeout_ms);
	r = gather(l, count, timeout_ms, identify, NULL, opaque, slots, errp);
	if (r < 0) {
		for (unsigned i = 0; i < count; i++) {
			mfd_channel_free(slots[i]);
			slots[i] = NULL;
		}
		return r;
	}
	stop_listening(l);
	return 0;
}

void listener_stop(mfd_listener *l)
{
	if (l)
		stop_listening(l);
}

int listener_gather_screened(mfd_listener *l, unsigned count, int timeout_ms,
			     const struct listener_screen *scr, mfd_channel **slots,
			     mfd_error **errp)
{
	return gather(l, count, timeout_ms, NULL, scr, scr->opaque, slots, errp);
}

void mfd_listener_shutdown(mfd_listener *l)
{
	uint64_t one = 1;

	if (!l)
		return;
	atomic_store(&l->shut, true);
	if (l->wake_fd >= 0 && write(l->wake_fd, &one, sizeof(one)) < 0) {
		/* The counter cannot overflow with one write per shutdown. */
	}
	pthread_mutex_lock(&l->lock);
	if (l->identifying)
		mfd_channel_shutdown(l->identifying);
	pthread_mutex_unlock(&l->lock);
}

void mfd_listener_free(mfd_listener *l)
{
	struct stat st;

	if (!l)
		return;
	if (l->own_fd && l->fd >= 0)
		close(l->fd);
	/* Remove the socket file only while it is still the one we bound. */
	if (l->unix_path && lstat(l->unix_path, &st) == 0 && st.st_dev == l->unix_dev &&
	    st.st_ino == l->unix_ino)
		unlink(l->unix_path);
	if (l->wake_fd >= 0)
		close(l->wake_fd);
	for (unsigned i = l->next; i < l->nlist; i++)
		mfd_channel_free(l->list[i]);
	free(l->list);
	pthread_mutex_destroy(&l->lock);
	free(l->unix_path);
	free(l->chan_name);
	free(l->uri);
	free(l);
}
