/* SPDX-License-Identifier: MIT */
/*
 * What the engine needs from the listener beyond the public API: a gather
 * that tells the source's connections from strays (a port scan, a health
 * check, junk, a failed TLS handshake, another session) and keeps waiting
 * through the strays.
 */
#ifndef MFD_CHANNELS_LISTENER_H
#define MFD_CHANNELS_LISTENER_H

#include <stdbool.h>

#include <multifd/multifd.h>

struct listener_screen {
	/*
	 * As mfd_identify_fn; on failure sets *stray when the connection never
	 * proved to be the source's (nothing, junk, a foreign hello or
	 * session, a failed handshake): it is then closed, logged and the
	 * gather goes on.  Any other failure fails the gather.
	 */
	int (*identify)(mfd_channel *ch, void *opaque, bool *stray, mfd_error **errp);
	void *opaque;
	/* Each connection's identification must end within this (> 0). */
	int hello_ms;
	/* Strays refused so far (the caller's counter, kept across gathers);
	 * the gather fails once it exceeds max_refused. */
	unsigned *refused;
	unsigned max_refused;
};

/*
 * Like mfd_listener_gather(), but strays are refused instead of failing it
 * (see struct listener_screen), and it neither stops listening nor frees
 * the slots on failure: the caller may have published them and frees them
 * itself once they are unpublished.  Connections are identified one at a
 * time, in arrival order; later ones wait in the listen backlog.
 */
int listener_gather_screened(mfd_listener *l, unsigned count, int timeout_ms,
			     const struct listener_screen *scr, mfd_channel **slots,
			     mfd_error **errp);

/*
 * A listener over @n channels the caller already has (the VMM's own, see
 * mfd_migrate_incoming_channels()), handed out in order.  It takes them:
 * those not handed out go with it.  Its screened gather fails on a channel
 * the screen refuses instead of waiting for another (these were vouched
 * for), and waits for an identification only as long as the gather's own
 * deadline (a VMM may start the destination long before the source).
 * @name names it in messages.  On failure the channels are freed.
 */
int listener_new_list(mfd_channel *const *chs, unsigned n, const char *name,
		      mfd_listener **out, mfd_error **errp);

/* Stop listening: later connections are refused, not queued. */
void listener_stop(mfd_listener *l);

#endif /* MFD_CHANNELS_LISTENER_H */
