/* SPDX-License-Identifier: MIT */
/*
 * What the engine needs from connect beyond the public API: a connect that a
 * cancel from another thread ends at once.
 */
#ifndef MFD_CHANNELS_CONNECT_H
#define MFD_CHANNELS_CONNECT_H

#include <multifd/multifd.h>

/*
 * mfd_channel_connect(), whose wait for a TCP connection also ends, with
 * MFD_ECANCELED, as soon as @cancel_fd (an eventfd, or -1 for none) is
 * readable.  A unix: connect waits only on a full listen backlog, bounded
 * by @timeout_ms.
 */
int channel_connect_cancellable(const char *uri, int timeout_ms, int cancel_fd,
				mfd_channel **out, mfd_error **errp);

#endif /* MFD_CHANNELS_CONNECT_H */
