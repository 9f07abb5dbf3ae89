/* SPDX-License-Identifier: MIT */
/*
 * The engine's state: the public state names, the legal moves, the first error,
 * and stopping every thread at once (cancel, fatal helper errors).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/internal.h"

static const char *const state_names[] = {
	"none", "setup", "active", "device", "completed", "failed", "cancelling", "cancelled",
	"postcopy-active", "postcopy-paused", "postcopy-recover",
};

const char *mfd_state_name(enum mfd_state s)
{
	return (unsigned)s < MFD_ARRAY_SIZE(state_names) ? state_names[s] : "unknown";
}

uint64_t engine_now_ns(void)
{
	return util_now_ns();
}

bool engine_cancelled(struct mfd_engine *e)
{
	return atomic_load_explicit(&e->cancel, memory_order_relaxed);
}

bool eng_terminal(enum mfd_state s)
{
	return s == MFD_STATE_COMPLETED || s == MFD_STATE_FAILED || s == MFD_STATE_CANCELLED;
}

/*
 * The legal moves of each side (docs/architecture.md, "States"): bit t of
 * moves[s] allows s -> t.  A failure or a cancel may end any live state;
 * once cancelling, only an end may follow (a completion the cancel came too
 * late for included); an end state is final until the next migration.
 */
#define TO(st) (1u << MFD_STATE_##st)

#define ENDING (TO(FAILED) | TO(CANCELLING))

static const uint32_t source_moves[] = {
	[MFD_STATE_NONE] = TO(SETUP),
	[MFD_STATE_SETUP] = TO(ACTIVE) | ENDING,
	[MFD_STATE_ACTIVE] = TO(DEVICE) | ENDING,
	/* the final round, or the postcopy package */
	[MFD_STATE_DEVICE] = TO(COMPLETED) | TO(POSTCOPY_ACTIVE) | ENDING,
	[MFD_STATE_POSTCOPY_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_POSTCOPY_PAUSED] = TO(POSTCOPY_RECOVER) | ENDING,
	[MFD_STATE_POSTCOPY_RECOVER] = TO(POSTCOPY_ACTIVE) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_CANCELLING] = TO(CANCELLED) | TO(FAILED) | TO(COMPLETED),
};

static const uint32_t dest_moves[] = {
	[MFD_STATE_NONE] = TO(SETUP),
	[MFD_STATE_SETUP] = TO(ACTIVE) | ENDING,
	/* loaded, or POSTCOPY_RUN */
	[MFD_STATE_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_ACTIVE) | ENDING,
	[MFD_STATE_POSTCOPY_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_POSTCOPY_PAUSED] = TO(POSTCOPY_RECOVER) | ENDING,
	/* POSTCOPY_RESUME makes it active; a failed attempt pauses again */
	[MFD_STATE_POSTCOPY_RECOVER] = TO(POSTCOPY_ACTIVE) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_CANCELLING] = TO(CANCELLED) | TO(FAILED) | TO(COMPLETED),
};

bool engine_legal_move(bool incoming, enum mfd_state from, enum mfd_state to)
{
	const uint32_t *moves = incoming ? dest_moves : source_moves;
	size_t n = incoming ? MFD_ARRAY_SIZE(dest_moves) : MFD_ARRAY_SIZE(source_moves);

	return (unsigned)from < n && (unsigned)to < 32 && (moves[from] & (1u << to));
}

/*
 * The one place the state changes.  A move to the same state, or out of an
 * end state or a cancel (a racing thread lost to it), is no move; any other
 * move the table does not list is a bug in the engine: it is refused, logged,
 * and recorded so that the migration ends failed instead of going on in a
 * state nobody expects.
 */
void eng_set_state(struct mfd_engine *e, enum mfd_state to)
{
	mfd_migration *m = e->m;
	enum mfd_state from;

	pthread_mutex_lock(&e->lock);
	from = e->state;
	if (from == to || eng_terminal(from) || (from == MFD_STATE_CANCELLING && !eng_terminal(to))) {
		pthread_mutex_unlock(&e->lock);
		return;
	}
	if (!engine_legal_move(e->incoming, from, to)) {
		mfd_error *err = NULL;

		pthread_mutex_unlock(&e->lock);
		mfd_error_set(&err, MFD_ESTATE, "internal error: the %s side may not move from %s "
			      "to %s (a bug; please report it)", e->incoming ? "incoming" : "outgoing",
			      mfd_state_name(from), mfd_state_name(to));
		log_error("migration: %s", mfd_error_message(err));
		eng_fail_all(e, err);
		return;
	}
	e->state = to;
	atomic_store(&e->state_pub, (int)to);
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	log_info("migration %s: %s -> %s", e->incoming ? "incoming" : "outgoing",
		     mfd_state_name(from), mfd_state_name(to));
	if (m->hooks.state_changed)
		m->hooks.state_changed(m->hooks_opaque, (int)from, (int)to);
	migration_notify(m);
}

/* First error wins; later ones are logged only. */
void eng_record_error(struct mfd_engine *e, mfd_error *err)
{
	pthread_mutex_lock(&e->lock);
	if (!e->err) {
		e->err = err;
		err = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	if (err) {
		log_debug("also: %s", mfd_error_message(err));
		mfd_error_free(err);
	}
}

/* Unblock every thread: shut down every channel we have.  The owning thread
 * publishes and releases these pointers under the lock, so any thread may call
 * this. */
void eng_shutdown_all(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mfd_channel_shutdown(e->main_ch);
	mfd_channel_shutdown(e->main_raw);
	mfd_channel_shutdown(e->pre_ch);
	mfd_channel_shutdown(e->pre_raw);
	for (unsigned i = 0; i < 256; i++) {
		mfd_channel_shutdown(e->mf[i]);
		mfd_channel_shutdown(e->mf_raw[i]);
	}
	mfd_listener_shutdown(e->dst.listener);
	if (e->cancel_fd >= 0) {
		uint64_t one = 1;

		if (write(e->cancel_fd, &one, sizeof(one)) < 0) {
			/* EAGAIN: it is readable already. */
		}
	}
	if (e->src.send)
		multifd_send_cancel(e->src.send);
	if (e->dst.recv)
		multifd_recv_cancel(e->dst.recv);
	pthread_mutex_unlock(&e->lock);
}

/* A helper thread met an error no reconnection cures: record it (taking
 * @err) and stop every thread. */
void eng_fail_all(struct mfd_engine *e, mfd_error *err)
{
	eng_record_error(e, err);
	atomic_store(&e->cancel, true);
	eng_shutdown_all(e);
}

/*
 * The engine's condition variable measures its deadlines on the monotonic
 * clock: a wall-clock step (NTP, an operator) must neither cut a wait short
 * nor stretch it.
 */
void eng_cond_init(pthread_cond_t *cond)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

/* A pthread_cond_timedwait() deadline @ms from now, for a condition made by
 * eng_cond_init() (CLOCK_MONOTONIC). */
struct timespec eng_deadline_in(int64_t ms)
{
	struct timespec dl;

	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += ms / 1000;
	dl.tv_nsec += (long)(ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	return dl;
}

static const char *const pc_names[] = { "none", "advised", "listening", "running" };

const char *pc_state_name(enum pc_state s)
{
	return (unsigned)s < MFD_ARRAY_SIZE(pc_names) ? pc_names[s] : "unknown";
}

/*
 * Each step has one legal predecessor on each side, and a name for the
 * refusal: the destination's steps are the source's commands, so an illegal
 * one is the peer's error and says which command came out of order.
 */
static const struct pc_step {
	enum pc_state from;		/* the one state it may follow */
	const char *early, *again;	/* refusals: out of order, repeated */
} dest_steps[] = {
	[PC_ADVISED] = { PC_NONE, NULL, "a second POSTCOPY_ADVISE" },
	[PC_LISTENING] = { PC_ADVISED, "POSTCOPY_LISTEN without POSTCOPY_ADVISE",
			   "a second POSTCOPY_LISTEN" },
	[PC_RUNNING] = { PC_LISTENING, "POSTCOPY_RUN before POSTCOPY_LISTEN",
			 "a second POSTCOPY_RUN" },
}, source_steps[] = {
	[PC_RUNNING] = { PC_NONE, NULL, "internal error: postcopy started twice" },
};

int pc_move(struct mfd_engine *e, enum pc_state to, mfd_error **errp)
{
	const struct pc_step *steps = e->incoming ? dest_steps : source_steps;
	size_t n = e->incoming ? MFD_ARRAY_SIZE(dest_steps) : MFD_ARRAY_SIZE(source_steps);
	const struct pc_step *st = (unsigned)to < n ? &steps[to] : NULL;
	int from = st ? (int)st->from : -1;

	if (st && (st->early || st->again) &&
	    atomic_compare_exchange_strong(&e->pc, &from, (int)to))
		return 0;
	if (!st || !(st->early || st->again))
		return mfd_error_set(errp, MFD_ESTATE, "internal error: postcopy cannot move to "
				     "'%s' on the %s side", pc_state_name(to),
				     e->incoming ? "incoming" : "outgoing");
	/* from now holds the state we found. */
	return mfd_error_set(errp, e->incoming ? MFD_EPROTO : MFD_ESTATE, "%s (postcopy is %s)",
			     from > (int)st->from && st->again ? st->again
			     : st->early ? st->early : st->again,
			     pc_state_name((enum pc_state)from));
}

/* The postcopy connection's legal moves (enum pc_link): bit t of
 * link_moves[s] allows s -> t. */
#define L(x) (1u << LINK_##x)
static const unsigned link_moves[] = {
	[LINK_UP] = L(LOST) | L(PAUSE) | L(DOWN),
	[LINK_LOST] = L(DOWN),
	[LINK_PAUSE] = L(DOWN),
	[LINK_DOWN] = L(RESUME),
	[LINK_RESUME] = L(UP) | L(DOWN),
};

bool link_move(struct mfd_engine *e, enum pc_link to)
{
	if ((unsigned)e->link >= MFD_ARRAY_SIZE(link_moves) || !(link_moves[e->link] & (1u << to)))
		return false;
	e->link = to;
	pthread_cond_broadcast(&e->cond);
	return true;
}

/* The switchover's commit protocol (enum src_commit, enum dst_commit): bit t
 * of row s allows s -> t.  The comment above enum src_commit draws it. */
#define SC(x) (1u << SC_##x)
#define DC(x) (1u << DC_##x)
static const unsigned src_commit_moves[] = {
	[SC_OPEN] = SC(APPROVED) | SC(EOF) | SC(ANSWERED),
	[SC_APPROVED] = SC(EOF) | SC(ANSWERED) | SC(OPEN),
	[SC_EOF] = SC(ANSWERED) | SC(UNKNOWN) | SC(OPEN),
	[SC_ANSWERED] = 0,
	[SC_UNKNOWN] = SC(ANSWERED),
};
static const unsigned dst_commit_moves[] = {
	[DC_LOADING] = DC(ACKED) | DC(ANSWERED),
	[DC_ACKED] = DC(ANSWERED),
	[DC_ANSWERED] = 0,
};

bool commit_move(struct mfd_engine *e, int to)
{
	_Atomic int *at = e->incoming ? &e->dst.commit : &e->src.commit;
	const unsigned *moves = e->incoming ? dst_commit_moves : src_commit_moves;
	size_t n = e->incoming ? MFD_ARRAY_SIZE(dst_commit_moves)
			       : MFD_ARRAY_SIZE(src_commit_moves);
	int from = atomic_load(at);

	do {
		if ((unsigned)from >= n || (unsigned)to >= n || !(moves[from] & (1u << to)))
			return false;
	} while (!atomic_compare_exchange_weak(at, &from, to));
	return true;
}
