/* SPDX-License-Identifier: MIT */
/*
 * The default precopy switchover policy as a pure function of its inputs,
 * so that it can be tested without a migration (tests/unit/check_policy.c).
 */
#ifndef MFD_CORE_POLICY_H
#define MFD_CORE_POLICY_H

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

/* What the policy remembers from one pass to the next. */
struct policy_state {
	uint64_t prev_pending;
};

/* The figures behind a verdict. */
struct policy_estimate {
	uint64_t switchover_cost_ms;	/* the fixed part of a final round */
	uint64_t expected_downtime_ms;
};

/*
 * The default verdict: 0 iterate, 1 stop the VM and complete,
 * MFD_POLICY_POSTCOPY switch to postcopy (only with in->postcopy).  Updates
 * @st; fills @est (may be NULL).
 */
int policy_decide(const struct policy_input *in, struct policy_state *st,
		  struct policy_estimate *est);

#endif
