/* SPDX-License-Identifier: MIT */
/*
 * The default precopy switchover policy (engine/policy.c), fed the figures a
 * migration would give it, pass after pass.
 */
#include <stdio.h>
#include <string.h>

#include <multifd/multifd.h>

#include "engine/policy.h"
#include "tests/lib/testlib.h"

#define MS 1000000ull

/*
 * The hang of issue 19: a 2 GiB guest whose bulk pass had one 319 ms SYNC
 * round, then rounds of 2 ms, 20 KiB pending, 13 ms expected downtime, and a
 * 300 ms downtime-limit.  The source made 395,686 passes and never switched.
 */
START_TEST(one_old_slow_sync_round_does_not_block_switchover)
{
	struct policy_state st;
	struct policy_estimate est;
	struct policy_input in = {
		.iteration = 1,
		.pending_bytes = 1ull << 30,
		.bandwidth = 90e6,
		.downtime_limit_ms = 300,
		.syncs = 1,
		.sync_ns_max = 319 * MS,
		.sync_ns_recent = 319 * MS,
	};
	uint64_t pass;
	int v = 0;

	memset(&st, 0, sizeof(st));
	ck_assert_int_eq(policy_decide(&in, &st, &est), 0);
	/* Then every pass is small and its round fast; the window forgets the
	 * slow round after SYNC_WINDOW more rounds (multifd/send.c). */
	for (pass = 2; pass <= 100 && !v; pass++) {
		in.iteration = pass;
		in.pending_bytes = 20 << 10;
		in.syncs = pass;
		in.sync_ns_recent = pass <= 8 ? 319 * MS : 2 * MS;
		v = policy_decide(&in, &st, &est);
	}
	ck_assert_msg(v == 1, "after 100 passes with 20 KiB pending at 90 MB/s, 2 ms sync rounds "
		      "and a 319 ms round in the bulk pass, the policy still says %d "
		      "(switchover cost %llu ms, limit 300 ms)", v,
		      (unsigned long long)est.switchover_cost_ms);
	ck_assert_uint_le(pass, 12);
	/* The final round's cost now: 20 KiB at 90 MB/s, plus a 2 ms round. */
	ck_assert_uint_le(est.switchover_cost_ms, 3);
	ck_assert_uint_le(est.expected_downtime_ms, 3);
	ck_assert_uint_ge(est.expected_downtime_ms, 2);
}
END_TEST

/* Rounds that are slow now are the cost of a switchover now. */
START_TEST(recent_slow_sync_rounds_count)
{
	struct policy_state st;
	struct policy_estimate est;
	struct policy_input in = {
		.pending_bytes = 20 << 10,
		.bandwidth = 90e6,
		.downtime_limit_ms = 300,
		.sync_ns_max = 400 * MS,
		.sync_ns_recent = 310 * MS,
	};

	memset(&st, 0, sizeof(st));
	for (uint64_t pass = 1; pass <= 20; pass++) {
		in.iteration = pass;
		in.syncs = pass;
		ck_assert_int_eq(policy_decide(&in, &st, &est), 0);
	}
	ck_assert_uint_ge(est.expected_downtime_ms, 310);
	/* The same migration with the rounds back to 250 ms fits. */
	in.sync_ns_recent = 250 * MS;
	ck_assert_int_eq(policy_decide(&in, &st, &est), 1);
}
END_TEST

/* Without multifd there is no round: pending / bandwidth alone. */
START_TEST(without_multifd_pending_over_bandwidth_decides)
{
	struct policy_state st;
	struct policy_estimate est;
	struct policy_input in = {
		.iteration = 2,
		.pending_bytes = 30000000,	/* 300 ms at 100 MB/s */
		.bandwidth = 100e6,
		.downtime_limit_ms = 299,
	};

	memset(&st, 0, sizeof(st));
	ck_assert_int_eq(policy_decide(&in, &st, &est), 0);
	ck_assert_uint_eq(est.expected_downtime_ms, 300);
	in.downtime_limit_ms = 300;
	ck_assert_int_eq(policy_decide(&in, &st, &est), 1);
	/* No bandwidth figure yet: only nothing pending switches. */
	in.bandwidth = 0;
	ck_assert_int_eq(policy_decide(&in, &st, &est), 0);
	in.pending_bytes = 0;
	ck_assert_int_eq(policy_decide(&in, &st, &est), 1);
}
END_TEST

/*
 * The no-progress guard: POLICY_STALL_PASSES passes in a row without the
 * pending bytes going below 90 % of their best fire it once; with
 * postcopy-ram it switches to postcopy, without it precopy goes on.
 */
START_TEST(no_progress_guard_fires_once_and_switches_with_postcopy)
{
	struct policy_state st;
	struct policy_estimate est;
	struct policy_input in = {
		.pending_bytes = 64 << 20,
		.bandwidth = 30e6,
		.downtime_limit_ms = 10,
		.postcopy = _i == 1,
	};
	unsigned fired = 0;
	uint64_t pass;

	memset(&st, 0, sizeof(st));
	/* Shrinking passes are progress: 64, 48, 36 MiB... */
	for (pass = 1; pass <= 4; pass++) {
		in.iteration = pass;
		in.pending_bytes = pass > 1 ? in.pending_bytes / 4 * 3 : in.pending_bytes;
		ck_assert_int_eq(policy_decide(&in, &st, &est), 0);
		ck_assert(!est.stalled_now);
		ck_assert_uint_eq(est.stalled_passes, 0);
	}
	/* Then the same figure, or 5 % less, is no progress. */
	for (unsigned i = 1; i <= POLICY_STALL_PASSES; i++, pass++) {
		int v;

		in.iteration = pass;
		in.pending_bytes -= i == 3 ? in.pending_bytes / 20 : 0;
		v = policy_decide(&in, &st, &est);
		fired += est.stalled_now;
		ck_assert_uint_eq(est.stalled_passes, i);
		ck_assert_int_eq(v, i == POLICY_STALL_PASSES && in.postcopy ? MFD_POLICY_POSTCOPY : 0);
	}
	ck_assert_uint_eq(fired, 1);
	/* Without postcopy it iterates on and does not fire again... */
	for (unsigned i = 0; i < 3 * POLICY_STALL_PASSES; i++, pass++) {
		in.iteration = pass;
		ck_assert_int_eq(policy_decide(&in, &st, &est), in.postcopy ? MFD_POLICY_POSTCOPY : 0);
		ck_assert(!est.stalled_now);
	}
	/* ...until progress re-arms it; and a figure that fits still switches. */
	in.pending_bytes /= 2;
	ck_assert_int_eq(policy_decide(&in, &st, &est), 0);
	ck_assert_uint_eq(est.stalled_passes, 0);
	in.pending_bytes = 100000;	/* 3.3 ms at 30 MB/s */
	ck_assert_int_eq(policy_decide(&in, &st, &est), 1);
}
END_TEST

Suite *suite_policy(void)
{
	Suite *s = suite_create("policy");
	TCase *tc = tcase_create("switchover");

	tcase_add_test(tc, one_old_slow_sync_round_does_not_block_switchover);
	tcase_add_test(tc, recent_slow_sync_rounds_count);
	tcase_add_test(tc, without_multifd_pending_over_bandwidth_decides);
	tcase_add_loop_test(tc, no_progress_guard_fires_once_and_switches_with_postcopy, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}
