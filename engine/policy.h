/* SPDX-License-Identifier: MIT */
/*
 * The default precopy switchover policy as a pure function of its inputs,
 * so that it can be tested without a migration (tests/unit/check_policy.c).
 */
#ifndef MFD_ENGINE_POLICY_H
#define MFD_ENGINE_POLICY_H

#include <stdbool.h>
#include <stdint.h>

/* What the policy reads at the end of a pass. */
struct policy_input {
	uint64_t iteration;		/* completed passes over RAM */
	uint64_t pending_bytes;		/* bytes to send before the VM may stop */
	double bandwidth;		/* bytes/s (avail-switchover-bandwidth when set) */
	uint64_t downtime_limit_ms;
	uint64_t syncs;			/* multifd SYNC rounds so far (0: no multifd) */
	uint64_t sync_ns_max;		/* the slowest round ever */
	uint64_t sync_ns_recent;	/* the slowest of the last rounds */
	bool postcopy;			/* postcopy-ram on */
};

/*
 * The no-progress guard: precopy is stalled after this many passes in a row
 * that did not bring the pending bytes below 90 % of their smallest figure
 * since the last such progress.  Five passes: enough for a guest whose
 * working set shrinks in steps, short enough that a guest dirtying faster
 * than the link moves reaches postcopy within seconds.
 */
#define POLICY_STALL_PASSES 5

/* What the policy remembers from one pass to the next (zeroed at start). */
struct policy_state {
	uint64_t best_pending;		/* smallest pending bytes since the last progress */
	bool have_best;
	unsigned stalled_passes;	/* passes in a row without progress (capped) */
	bool stalled;			/* the guard fired since the last progress */
};

/* The figures behind a verdict. */
struct policy_estimate {
	uint64_t switchover_cost_ms;	/* the fixed part of a final round: recent rounds */
	uint64_t expected_downtime_ms;	/* pending / bandwidth + switchover cost */
	bool stalled_now;		/* the guard fired at this pass (once per stall) */
	unsigned stalled_passes;
	uint64_t best_pending;
};

/*
 * The default verdict: 1 (stop the VM and complete) when pending / bandwidth
 * plus the recent SYNC rounds' cost fits in downtime-limit;
 * MFD_POLICY_POSTCOPY when in->postcopy and precopy is stalled; otherwise 0
 * (iterate).  Updates the guard in @st at every call; fills @est (may be
 * NULL).
 */
int policy_decide(const struct policy_input *in, struct policy_state *st,
		  struct policy_estimate *est);

#endif
