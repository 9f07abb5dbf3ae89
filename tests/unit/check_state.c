/* SPDX-License-Identifier: MIT */
/*
 * The engine's two state machines, white box: the table of legal moves of
 * each side's public state (engine_legal_move(), which set_state() obeys),
 * postcopy's steps (pc_move()), whose refusals name the command that came
 * out of order, and the postcopy connection's (link_move()).  The end-to-end suites show that every move a real
 * migration makes is in the table; these show the table refuses the rest.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "tests/lib/testlib.h"

#define S(x) MFD_STATE_##x

struct move_case {
	enum mfd_state from, to;
	bool legal;
};

static void check_moves(bool incoming, const struct move_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(engine_legal_move(incoming, cases[i].from, cases[i].to) ==
			      cases[i].legal, "%s %s -> %s should be %s",
			      incoming ? "destination" : "source", mfd_state_name(cases[i].from),
			      mfd_state_name(cases[i].to), cases[i].legal ? "legal" : "refused");
}

START_TEST(source_moves)
{
	static const struct move_case cases[] = {
		{ S(NONE), S(SETUP), true },
		{ S(SETUP), S(ACTIVE), true },
		{ S(ACTIVE), S(DEVICE), true },
		{ S(DEVICE), S(COMPLETED), true },
		{ S(DEVICE), S(POSTCOPY_ACTIVE), true },
		{ S(POSTCOPY_ACTIVE), S(POSTCOPY_PAUSED), true },
		{ S(POSTCOPY_PAUSED), S(POSTCOPY_RECOVER), true },
		{ S(POSTCOPY_RECOVER), S(POSTCOPY_PAUSED), true },
		{ S(POSTCOPY_RECOVER), S(POSTCOPY_ACTIVE), true },
		{ S(ACTIVE), S(CANCELLING), true },
		{ S(CANCELLING), S(CANCELLED), true },
		{ S(ACTIVE), S(FAILED), true },
		/* A source never completes without stopping the VM first. */
		{ S(ACTIVE), S(COMPLETED), false },
		{ S(SETUP), S(COMPLETED), false },
		/* Postcopy starts only from the stopped VM's device phase. */
		{ S(ACTIVE), S(POSTCOPY_ACTIVE), false },
		{ S(NONE), S(ACTIVE), false },
		{ S(POSTCOPY_PAUSED), S(POSTCOPY_ACTIVE), false },
		{ S(POSTCOPY_ACTIVE), S(ACTIVE), false },
		{ S(CANCELLING), S(ACTIVE), false },
	};

	check_moves(false, cases, sizeof(cases) / sizeof(cases[0]));
}
END_TEST

START_TEST(destination_moves)
{
	static const struct move_case cases[] = {
		{ S(NONE), S(SETUP), true },
		{ S(SETUP), S(ACTIVE), true },
		{ S(ACTIVE), S(COMPLETED), true },
		{ S(ACTIVE), S(POSTCOPY_ACTIVE), true },
		{ S(POSTCOPY_ACTIVE), S(COMPLETED), true },
		{ S(POSTCOPY_RECOVER), S(POSTCOPY_ACTIVE), true },
		{ S(SETUP), S(FAILED), true },
		/* The destination has no device phase: it never stops a VM. */
		{ S(ACTIVE), S(DEVICE), false },
		{ S(SETUP), S(POSTCOPY_ACTIVE), false },
		{ S(SETUP), S(COMPLETED), false },
		{ S(POSTCOPY_PAUSED), S(COMPLETED), false },
	};

	check_moves(true, cases, sizeof(cases) / sizeof(cases[0]));
}
END_TEST

/* No move leaves an end state, on either side. */
START_TEST(end_states_are_final)
{
	static const enum mfd_state ends[] = { S(COMPLETED), S(FAILED), S(CANCELLED) };

	for (int side = 0; side < 2; side++)
		for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++)
			for (int to = S(NONE); to <= S(POSTCOPY_RECOVER); to++)
				ck_assert_msg(!engine_legal_move(side, ends[i], (enum mfd_state)to),
					      "%s -> %s is legal", mfd_state_name(ends[i]),
					      mfd_state_name((enum mfd_state)to));
}
END_TEST

static struct mfd_engine *engine(bool incoming)
{
	struct mfd_engine *e = calloc(1, sizeof(*e));

	ck_assert_ptr_nonnull(e);
	e->incoming = incoming;
	atomic_init(&e->pc, PC_NONE);
	return e;
}

/* The destination's steps follow the source's commands, in order only. */
START_TEST(destination_postcopy_steps)
{
	struct mfd_engine *e = engine(true);
	mfd_error *err = NULL;

	ck_assert_int_eq(pc_move(e, PC_LISTENING, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "POSTCOPY_LISTEN without POSTCOPY_ADVISE");
	ck_assert_int_eq(pc_move(e, PC_RUNNING, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "POSTCOPY_RUN before POSTCOPY_LISTEN (postcopy is none)");
	ck_assert_int_eq(pc_move(e, PC_ADVISED, NULL), 0);
	ck_assert_int_eq(pc_move(e, PC_ADVISED, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "a second POSTCOPY_ADVISE");
	ck_assert_int_eq(pc_move(e, PC_RUNNING, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "POSTCOPY_RUN before POSTCOPY_LISTEN (postcopy is advised)");
	ck_assert_int_eq(pc_move(e, PC_LISTENING, NULL), 0);
	ck_assert_int_eq(pc_move(e, PC_LISTENING, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "a second POSTCOPY_LISTEN");
	ck_assert_int_eq(pc_move(e, PC_RUNNING, NULL), 0);
	ck_assert(pc_running(e));
	ck_assert_int_eq(pc_move(e, PC_RUNNING, &err), MFD_EPROTO);
	ck_assert_mfd_error(err, MFD_EPROTO, "a second POSTCOPY_RUN (postcopy is running)");
	ck_assert_int_eq(pc_at(e), PC_RUNNING);
	free(e);
}
END_TEST

/* The source has one step; asking for another is the engine's bug. */
START_TEST(source_postcopy_steps)
{
	struct mfd_engine *e = engine(false);
	mfd_error *err = NULL;

	ck_assert_int_eq(pc_move(e, PC_ADVISED, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "internal error");
	ck_assert_int_eq(pc_move(e, PC_LISTENING, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "internal error");
	ck_assert(!pc_running(e));
	ck_assert_int_eq(pc_move(e, PC_RUNNING, NULL), 0);
	ck_assert(pc_running(e));
	ck_assert_int_eq(pc_move(e, PC_RUNNING, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "postcopy started twice");
	free(e);
}
END_TEST

/* The postcopy connection: a loss or a cancel pauses once, a resume needs a
 * dropped link, and only one resume runs at a time. */
START_TEST(postcopy_link_moves)
{
	struct mfd_engine *e = engine(false);

	eng_cond_init(&e->cond);
	ck_assert_int_eq(e->link, LINK_UP);
	ck_assert(!link_move(e, LINK_RESUME));	/* nothing to resume */
	ck_assert(link_move(e, LINK_LOST));
	ck_assert(!link_move(e, LINK_PAUSE));	/* already pausing */
	ck_assert(!link_move(e, LINK_LOST));
	ck_assert_int_eq(e->link, LINK_LOST);
	ck_assert(link_move(e, LINK_DOWN));
	ck_assert(!link_move(e, LINK_UP));	/* only through a resume */
	ck_assert(link_move(e, LINK_RESUME));
	ck_assert(!link_move(e, LINK_RESUME));	/* a recovery is already under way */
	ck_assert(link_move(e, LINK_DOWN));	/* the attempt failed: paused again */
	ck_assert(link_move(e, LINK_RESUME));
	ck_assert(link_move(e, LINK_UP));
	ck_assert(link_move(e, LINK_PAUSE));	/* the user's cancel in postcopy */
	ck_assert(!link_move(e, LINK_LOST));
	ck_assert_int_eq(e->link, LINK_PAUSE);
	pthread_cond_destroy(&e->cond);
	free(e);
}
END_TEST

/* The switchover's commit protocol, each side's table (enum src_commit,
 * enum dst_commit): the moves the engine makes, and the ones it refuses. */
START_TEST(source_commit_moves)
{
	struct mfd_engine *e = engine(false);

	atomic_init(&e->src.commit, SC_OPEN);
	ck_assert(!commit_move(e, SC_UNKNOWN));	/* nothing went out to be unknown */
	ck_assert(commit_move(e, SC_APPROVED));
	ck_assert(!commit_move(e, SC_APPROVED));	/* once */
	ck_assert(commit_move(e, SC_EOF));
	ck_assert(!commit_move(e, SC_APPROVED));	/* a late ACK changes nothing */
	ck_assert(commit_move(e, SC_OPEN));		/* postcopy reconnected */
	ck_assert(commit_move(e, SC_EOF));
	ck_assert(commit_move(e, SC_UNKNOWN));		/* no RESULT came */
	ck_assert(!commit_move(e, SC_OPEN));
	ck_assert(!commit_move(e, SC_EOF));
	ck_assert(commit_move(e, SC_ANSWERED));	/* a late failure resolves it */
	ck_assert_int_eq(commit_at(e), SC_ANSWERED);
	for (int to = SC_OPEN; to <= SC_UNKNOWN; to++)
		ck_assert_msg(!commit_move(e, to), "answered -> %d", to);
	ck_assert(!commit_move(e, 99));

	/* A failure may answer before EOF: the VM never left. */
	atomic_store(&e->src.commit, SC_OPEN);
	ck_assert(commit_move(e, SC_ANSWERED));
	free(e);
}
END_TEST

START_TEST(destination_commit_moves)
{
	struct mfd_engine *e = engine(true);

	atomic_init(&e->dst.commit, DC_LOADING);
	ck_assert(commit_move(e, DC_ACKED));
	ck_assert(!commit_move(e, DC_ACKED));		/* one SWITCHOVER_ACK */
	ck_assert(!commit_move(e, DC_LOADING));
	ck_assert(commit_move(e, DC_ANSWERED));
	ck_assert(!commit_move(e, DC_ACKED));		/* no ACK after the RESULT */
	ck_assert_int_eq(commit_at(e), DC_ANSWERED);
	/* Postcopy: RESULT 0 without an ACK ever sent. */
	atomic_store(&e->dst.commit, DC_LOADING);
	ck_assert(commit_move(e, DC_ANSWERED));
	ck_assert(!commit_move(e, SC_UNKNOWN));	/* not a destination state */
	free(e);
}
END_TEST

Suite *suite_state(void)
{
	Suite *s = suite_create("state");
	TCase *tc = tcase_create("moves");

	tcase_add_test(tc, source_moves);
	tcase_add_test(tc, destination_moves);
	tcase_add_test(tc, end_states_are_final);
	tcase_add_test(tc, destination_postcopy_steps);
	tcase_add_test(tc, source_postcopy_steps);
	tcase_add_test(tc, postcopy_link_moves);
	tcase_add_test(tc, source_commit_moves);
	tcase_add_test(tc, destination_commit_moves);
	suite_add_tcase(s, tc);
	return s;
}
