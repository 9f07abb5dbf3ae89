/* SPDX-License-Identifier: MIT */
/*
 * The default precopy switchover policy (docs/architecture.md, "Switchover
 * policy").  Pure: the engine gathers the inputs and applies the verdict.
 */
#include "engine/policy.h"

#include <multifd/multifd.h>

static void estimate(const struct policy_input *in, struct policy_estimate *est)
{
	/*
	 * A sync is a round of every channel: the fixed part of a switchover.
	 * What a round costs now, not the slowest ever: a bulk pass's round
	 * waits for full queues, and would keep the budget negative for good.
	 */
	est->switchover_cost_ms = in->syncs ? (in->sync_ns_recent + 999999) / 1000000 : 0;
	est->expected_downtime_ms =
		in->bandwidth > 0 ? (uint64_t)((double)in->pending_bytes * 1000 / in->bandwidth) +
					    est->switchover_cost_ms
				  : 0;
}

/* The no-progress guard: passes in a row whose pending bytes did not go
 * below 90 % of the smallest figure seen since the last progress. */
static void guard(const struct policy_input *in, struct policy_state *st,
		  struct policy_estimate *est)
{
	uint64_t must = in->pending_bytes;

	if (!st->have_best || must < st->best_pending - st->best_pending / 10) {
		st->best_pending = must;
		st->have_best = true;
		st->stalled_passes = 0;
		st->stalled = false;
	} else if (st->stalled_passes < POLICY_STALL_PASSES) {
		st->stalled_passes++;
	}
	est->stalled_now = !st->stalled && st->stalled_passes >= POLICY_STALL_PASSES;
	if (est->stalled_now)
		st->stalled = true;
	est->stalled_passes = st->stalled_passes;
	est->best_pending = st->best_pending;
}

int policy_decide(const struct policy_input *in, struct policy_state *st,
		  struct policy_estimate *est)
{
	struct policy_estimate e = { 0 };
	uint64_t must = in->pending_bytes;

	estimate(in, &e);
	guard(in, st, &e);
	if (est)
		*est = e;
	if (in->bandwidth <= 0) {
		if (must == 0)
			return 1;
	} else if ((double)must * 1000 / in->bandwidth + (double)e.switchover_cost_ms <=
		   (double)in->downtime_limit_ms) {
		return 1;
	}
	return in->postcopy && st->stalled_passes >= POLICY_STALL_PASSES ? MFD_POLICY_POSTCOPY : 0;
}
