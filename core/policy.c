/* SPDX-License-Identifier: MIT */
/*
 * The default precopy switchover policy (docs/architecture.md, "Switchover
 * policy").  Pure: the engine gathers the inputs and applies the verdict.
 */
#include "core/policy.h"

#include <multifd/multifd.h>

static void estimate(const struct policy_input *in, struct policy_estimate *est)
{
	/* A sync is a round of every channel: the fixed part of a switchover. */
	est->switchover_cost_ms = in->syncs ? in->sync_ns_max / 1000000 : 0;
	est->expected_downtime_ms =
		in->bandwidth > 0 ? (uint64_t)((double)in->pending_bytes * 1000 / in->bandwidth) : 0;
}

int policy_decide(const struct policy_input *in, struct policy_state *st,
		  struct policy_estimate *est)
{
	struct policy_estimate e;
	uint64_t must = in->pending_bytes;

	estimate(in, &e);
	if (est)
		*est = e;
	if (in->bandwidth <= 0)
		return must == 0;
	double budget = (double)in->downtime_limit_ms - (double)e.switchover_cost_ms;

	if (budget > 0 && (double)must <= in->bandwidth * budget / 1000.0)
		return 1;
	/* Precopy does not converge: the pending bytes did not shrink over a pass. */
	bool stuck = in->iteration >= 3 && st->prev_pending &&
		     must >= st->prev_pending - st->prev_pending / 10;

	st->prev_pending = must;
	return in->postcopy && stuck ? MFD_POLICY_POSTCOPY : 0;
}
