/* SPDX-License-Identifier: MIT */
/*
 * What the other transports in channels/ need from the fd channel, plus
 * the deadline arithmetic they share.
 */
#ifndef MFD_CHANNELS_FD_H
#define MFD_CHANNELS_FD_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "core/channel.h"

/*
 * Wrap fd as a channel named name (copied; NULL gives "fd:N").  The kind
 * (socket, pipe, file) is read from fstat().  With own the fd is closed by
 * mfd_channel_free(); on failure it is never closed here.
 */
int fd_channel_new(int fd, bool own, const char *name, mfd_channel **out, mfd_error **errp);

/* True for an fd channel on a TCP socket (IPv4 or IPv6). */
bool fd_channel_is_tcp(const mfd_channel *ch);

/* The descriptor under an fd channel, -1 for any other channel. */
int fd_channel_fd(const mfd_channel *ch);

/* Milliseconds on CLOCK_MONOTONIC. */
static inline int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A deadline timeout_ms from now; -1 (none) for timeout_ms <= 0. */
static inline int64_t deadline_after(int timeout_ms)
{
	return timeout_ms > 0 ? mono_ms() + timeout_ms : -1;
}

/* The poll() timeout left until deadline: -1 for none, 0 once it passed. */
static inline int deadline_poll_ms(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - mono_ms();
	if (left <= 0)
		return 0;
	return left > INT_MAX ? INT_MAX : (int)left;
}

#endif /* MFD_CHANNELS_FD_H */
