/* SPDX-License-Identifier: MIT */
/*
 * Fault injection for tests: a channel wrapper that fails, shortens, stalls
 * or cuts the I/O of one chosen channel (main, multifd i, preempt) of one
 * side in one phase of a migration.  Part of the test library, never of
 * libmultifd: the tests install it through the engine's channel hook
 * (engine_set_channel_wrapper(), engine/internal.h).
 *
 * The wrapper sits right above the transport, below TLS, where a real
 * network fault would hit.  It wraps in place: the mfd_channel pointer the
 * engine holds keeps its identity and ownership, and the transport moves
 * into an inner channel that the wrapper owns.
 *
 * Phases are read from the owning migration's state and the channel's own
 * traffic:
 *   handshake   an operation that starts in the first 128 bytes the channel
 *               moves in the faulted direction (the hello, or the TLS
 *               handshake under TLS);
 *   setup       the state is setup and 128 bytes have gone by;
 *   iteration   the state is active;
 *   sync        active, and a multifd SYNC packet header is written or read
 *               (plain channels only: under TLS the wrapper sees records);
 *               on the main channel: once a multifd channel of the same side
 *               passed an active SYNC;
 *   switchover  the state is device (the source's VM is stopped);
 *   postcopy    the state is postcopy-active.
 *   result      a write on the main channel that starts the switchover's
 *               answer: the destination's RESULT, or the source's
 *               switchover confirmation (plain channels only: under TLS the
 *               wrapper sees records).
 * One fault fires once per controller, whatever the number of channels; the
 * controller keeps counting bytes so a test can tell whether it fired.
 */
#ifndef MFD_TESTS_FAULT_H
#define MFD_TESTS_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <multifd/multifd.h>

enum fault_chan { FAULT_CH_MAIN, FAULT_CH_MULTIFD, FAULT_CH_PREEMPT };

enum fault_phase {
	FAULT_PH_HANDSHAKE,
	FAULT_PH_SETUP,
	FAULT_PH_ITERATION,
	FAULT_PH_SYNC,
	FAULT_PH_SWITCHOVER,
	FAULT_PH_POSTCOPY,
	FAULT_PH_RESULT,
};

enum fault_kind {
	FAULT_FAIL,	/* the operation fails with MFD_EIO; the socket stays up */
	FAULT_SHORT,	/* from then on every operation moves a random, shorter length */
	FAULT_STALL,	/* the operation waits stall_ms first (see below) */
	FAULT_CLOSE,	/* after `after` bytes the connection is cut (shutdown(2)) */
};

enum fault_dir { FAULT_DIR_WRITE, FAULT_DIR_READ };

struct fault_spec {
	bool incoming;		/* fault the destination's end, else the source's */
	enum fault_chan chan;
	unsigned index;		/* multifd channel id */
	enum fault_phase phase;
	enum fault_kind kind;
	enum fault_dir dir;
	uint64_t after;		/* bytes moved within the phase before the fault */
	unsigned stall_ms;	/* FAULT_STALL */
	uint64_t seed;		/* FAULT_SHORT lengths */
};

/*
 * A stall behaves like a silent peer: it ends in MFD_ETIMEDOUT when the
 * channel's timeout-ms (either direction) or, for writes, peer-timeout-ms
 * (TCP_USER_TIMEOUT: unacknowledged data) is set and shorter; else the
 * operation goes on after stall_ms.  Any stall ends at once on shutdown.
 */

struct fault_ctl;

int fault_ctl_new(const struct fault_spec *spec, struct fault_ctl **out, mfd_error **errp);
/* Uninstalls it first when installed.  Every channel it wrapped must be gone. */
void fault_ctl_free(struct fault_ctl *ctl);
/* Wrap every channel engines create from now on (only while none migrates). */
void fault_ctl_install(struct fault_ctl *ctl);
void fault_ctl_uninstall(void);
/* The fault happened (an operation was failed, cut, stalled or shortened). */
bool fault_ctl_fired(const struct fault_ctl *ctl);
/* Channels wrapped so far and channels wrapped and not yet freed. */
unsigned fault_ctl_wrapped(const struct fault_ctl *ctl);
unsigned fault_ctl_live(const struct fault_ctl *ctl);

/* "src multifd 1 iteration close write after 65536": for test names. */
void fault_spec_describe(const struct fault_spec *spec, char *buf, size_t len);
const char *fault_phase_name(enum fault_phase p);
const char *fault_kind_name(enum fault_kind k);
const char *fault_chan_name(enum fault_chan c);

/*
 * Wrap @ch in place for @ctl: @ch becomes the fault channel and its
 * transport moves into an inner channel it owns.  @m, @incoming, @chan and
 * @index say whose channel it is.  Must run before any other thread can
 * reach @ch.
 */
int fault_channel_interpose(struct fault_ctl *ctl, mfd_channel *ch, mfd_migration *m,
			    bool incoming, enum fault_chan chan, unsigned index, mfd_error **errp);

#endif /* MFD_TESTS_FAULT_H */
