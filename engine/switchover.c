/* SPDX-License-Identifier: MIT */
/*
 * The switchover as a commit protocol (docs/architecture.md, "Switchover"): the
 * source waits for RESULT (and confirms in switchover-confirm mode), the
 * destination answers and starts the VM only once its answer went out.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

int eng_wait_result(struct mfd_engine *e, int64_t timeout, mfd_error **errp)
{
	struct timespec dl = eng_deadline_in(timeout);
	int r = 0;

	pthread_mutex_lock(&e->lock);
	while (commit_at(e) != SC_ANSWERED && !e->err && !engine_cancelled(e) && !e->src.rp_done &&
	       r == 0)
		r = pthread_cond_timedwait(&e->cond, &e->lock, &dl);
	bool seen = commit_at(e) == SC_ANSWERED;
	int code = e->src.rp_result;

	pthread_mutex_unlock(&e->lock);
	if (seen && code == 0)
		return 0;
	if (r == ETIMEDOUT)
		return mfd_error_set(errp, MFD_ETIMEDOUT,
				     "switchover: no answer from the destination within %lld ms",
				     (long long)timeout);
	return mfd_error_set(errp, MFD_ECANCELED, "switchover: the destination did not confirm");
}

/*
 * Source, precopy, EOF out: learn whether the destination took the VM over.
 * RESULT 0: it did (with switchover-confirm, once our confirmation went
 * out).  RESULT < 0: it failed, the VM runs here again.  No RESULT: without
 * switchover-confirm the destination may be running the VM, and the VM
 * stays stopped here with MFD_EUNKNOWN for the VMM to resolve; with it, the
 * destination starts nothing without our confirmation, so the VM runs here
 * again.
 */
int eng_switchover_commit(struct mfd_engine *e, mfd_error **errp)
{
	mfd_error *err = NULL;
	int r = eng_wait_result(e, e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS], &err);

	if (r == 0 && e->confirm) {
		uint8_t c[SWITCHOVER_CONFIRM_LEN];

		store_be32(c, SWITCHOVER_CONFIRM_MAGIC);
		store_be32(c + 4, 1);
		/* A failed write did not deliver it whole: the destination will not
		 * start the VM, so it may run here again. */
		if (mfd_stream_put_buf(e->out, c, sizeof(c)) < 0 || mfd_stream_flush(e->out) < 0) {
			r = mfd_stream_error(e->out, errp);
			eng_name_stream(e->out, "main channel", errp);
			mfd_error_prefix(errp ? *errp : NULL, "switchover: sending the confirmation "
					 "(the destination will not start the VM)");
		}
		mfd_error_free(err);
		return r;
	}
	if (r == 0)
		return 0;
	pthread_mutex_lock(&e->lock);
	bool theirs = commit_at(e) == SC_ANSWERED && e->src.rp_result < 0;

	pthread_mutex_unlock(&e->lock);
	if (theirs) {
		/* The destination failed and said so: its reason is the error. */
		error_propagate(errp, err);
		return r;
	}
	if (e->confirm) {
		/* It waits in vain for our confirmation: the VM may run here again.
		 * This replaces whatever the return path recorded. */
		mfd_error *mine = NULL;

		pthread_mutex_lock(&e->lock);
		const char *why = mfd_error_message(e->err ? e->err : err);

		r = mfd_error_set(&mine, mfd_error_code(e->err ? e->err : err), "switchover: no "
				  "result from the destination (%s); no confirmation was sent, so "
				  "the destination will not start the VM and it runs here again", why);
		mfd_error_set(errp, r, "%s", mfd_error_message(mine));
		mfd_error_free(e->err);
		e->err = mine;
		pthread_mutex_unlock(&e->lock);
		mfd_error_free(err);
		return r;
	}
	pthread_mutex_lock(&e->lock);
	commit_move(e, SC_UNKNOWN);
	mfd_error *cause = e->err;

	r = mfd_error_set(errp, MFD_EUNKNOWN, "switchover: the end of the stream went out but "
			  "no result came back (%s): the destination may be running the VM; the "
			  "VM stays stopped here until the VMM learns whether it runs there",
			  mfd_error_message(cause ? cause : err));
	pthread_mutex_unlock(&e->lock);
	mfd_error_free(err);
	return r;
}

/*
 * Destination, everything loaded: tell the source, and learn whether the VM
 * may start here.  RESULT 0 must have gone out whole before the VM starts:
 * a source that never gets it keeps its VM stopped and reports the outcome
 * unknown, so starting here would be a guess.  With switchover-confirm the
 * source's confirmation must come back within channel-timeout-ms too.
 */
int eng_switchover_answer(struct mfd_engine *e, mfd_error **errp)
{
	int64_t timeout = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	mfd_error *err = NULL;
	uint32_t magic = 0, one = 0;
	int r;

	if (!e->use_rp)
		return 0;
	if ((r = eng_rp_send_result(e, 0, "loaded", &err)) < 0) {
		/* Nothing more on that channel: a partial message is there. */
		mfd_channel_shutdown(e->main_ch);
		if (pc_running(e)) {
			/* The guest runs here since POSTCOPY_RUN: nothing to undo. */
			log_warn("postcopy: RESULT not sent: %s", mfd_error_message(err));
			mfd_error_free(err);
			return 0;
		}
		mfd_error_prefix(err, "switchover: sending RESULT 0 on the main channel (return "
				 "path) failed, so the VM is not started here (the source reports "
				 "the outcome unknown)");
		error_propagate(errp, err);
		return r;
	}
	commit_move(e, DC_ANSWERED);
	if (!e->confirm || pc_running(e))
		return 0;
	mfd_channel_set_option(e->main_ch, "timeout-ms", timeout, NULL);
	if (mfd_stream_get_be32(e->in, &magic) < 0 || mfd_stream_get_be32(e->in, &one) < 0) {
		mfd_stream_error(e->in, &err);
		r = mfd_error_set(errp, MFD_EUNKNOWN, "switchover-confirm: no confirmation from the "
				  "source within %lld ms (%s): the source may still own the VM, so it "
				  "is not started here", (long long)timeout, mfd_error_message(err));
		mfd_error_free(err);
		return r;
	}
	if (magic != SWITCHOVER_CONFIRM_MAGIC || one != 1)
		return mfd_error_set(errp, MFD_EPROTO, "switchover-confirm: main channel: 0x%08x "
				     "0x%08x after EOF, expected the confirmation 0x%08x 0x00000001; "
				     "the VM is not started here", magic, one, SWITCHOVER_CONFIRM_MAGIC);
	return 0;
}
