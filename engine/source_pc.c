/* SPDX-License-Identifier: MIT */
/*
 * The source's postcopy: the switch, the push, pausing on a lost connection and
 * recovering.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

/* Stop the VM, hand the destination what it needs to run the guest. */
static int postcopy_start(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	mfd_channel *mw = NULL;
	mfd_stream *pkg = NULL;
	const void *blob;
	size_t len;
	bool ok;
	int r;

	/* RAM flushes and syncs multifd: no precopy page can land after postcopy
	 * placed a newer copy. */
	r = savevm_postcopy_prepare(m, e->out, &ok, errp);
	if (r == 0)
		r = eng_flush_out(e->out, errp);
	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: save_postcopy_prepare");
		return r;
	}
	eng_set_state(e, MFD_STATE_DEVICE);
	pthread_mutex_lock(&e->lock);
	e->t_stop_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	if (m->hooks.vm_stop && (r = m->hooks.vm_stop(m->hooks_opaque, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: vm_stop hook");
		return errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
	}
	e->src.vm_stopped = true;
	/* The last dirty pages; multifd has nothing more to carry. */
	if ((r = ramsec_final_sync(e, errp)) < 0 ||
	    (e->src.send && (r = multifd_send_finish(e->src.send, errp)) < 0) ||
	    (r = ramsec_send_discards(e, e->out, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: start");
		return r;
	}
	/* LISTEN, the device state that cannot follow later, RUN: one package, so
	 * the destination reads it whole before it listens on the main channel. */
	if ((r = mfd_channel_new_mem_writer(MFD_PACKAGED_MAX_DEFAULT, &mw, errp)) < 0)
		return r;
	if ((r = mfd_stream_new(mw, MFD_STREAM_WRITE, &pkg, errp)) == 0) {
		savevm_send_postcopy_listen(pkg);
		r = savevm_complete_precopy(m, pkg, true, errp);
		if (r == 0)
			r = savevm_save_nonlive(m, pkg, errp);
		if (r == 0) {
			savevm_send_ping(pkg, 3);
			savevm_send_postcopy_run(pkg);
			r = eng_flush_out(pkg, errp);
		}
		if (r == 0 && (r = mfd_channel_mem_contents(mw, &blob, &len)) == 0 &&
		    (r = pc_move(e, PC_RUNNING, errp)) == 0) {
			savevm_send_packaged(e->out, blob, (uint32_t)len);
			savevm_send_ping(e->out, 4);
			r = eng_flush_out(e->out, errp);
		}
	}
	mfd_stream_free(pkg);
	mfd_channel_free(mw);
	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: device state");
		return r;
	}
	if ((r = eng_start_pre_server(e, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	e->t_pc_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	engine_publish(e);
	eng_set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
	log_info("postcopy: the destination runs the guest; %llu bytes to push",
		     (unsigned long long)ramsec_remaining(e));
	return 0;
}

/* Close the main and preempt channels of a broken postcopy connection. */
void eng_drop_connection(struct mfd_engine *e)
{
	eng_break_connections(e);
	if (e->src.rp_started) {
		pthread_join(e->src.rp_thread, NULL);
		e->src.rp_started = false;
	}
	if (e->pre_started) {
		pthread_join(e->pre_thread, NULL);
		e->pre_started = false;
	}
	/* pre_lock: the destination's fault thread may be writing a request. */
	pthread_mutex_lock(&e->pre_lock);
	pthread_mutex_lock(&e->out_lock);
	pthread_mutex_lock(&e->lock);
	/* The next connection's stream counts from 0: keep what this one carried. */
	e->main_bytes_dropped += eng_main_stream_bytes(e) + atomic_exchange(&e->src.pre_bytes, 0);
	mfd_stream_free(e->src.pre_out);
	e->src.pre_out = NULL;
	mfd_stream_free(e->out);
	mfd_stream_free(e->in);
	mfd_stream_free(e->dst.pre_in);
	e->out = e->in = e->dst.pre_in = NULL;
	mfd_channel_free(e->main_ch);
	mfd_channel_free(e->main_raw);
	mfd_channel_free(e->pre_ch);
	mfd_channel_free(e->pre_raw);
	e->main_ch = e->main_raw = e->pre_ch = e->pre_raw = NULL;
	e->src.rp_done = false;
	link_move(e, LINK_DOWN);
	e->src.req_count = e->src.req_head = 0;
	atomic_store(&e->src.pre_eos_sent, false);
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&e->out_lock);
	pthread_mutex_unlock(&e->pre_lock);
}

/* Wait for mfd_migrate_resume()/mfd_migrate_recover() or a cancel. */
static int wait_resume(struct mfd_engine *e, mfd_error **errp)
{
	pthread_mutex_lock(&e->lock);
	while (e->link != LINK_RESUME && !atomic_load(&e->user_cancel))
		pthread_cond_wait(&e->cond, &e->lock);
	bool go = e->link == LINK_RESUME && !atomic_load(&e->user_cancel);

	pthread_mutex_unlock(&e->lock);
	if (!go)
		return mfd_error_set(errp, MFD_ECANCELED,
				     "postcopy cancelled while paused: the guest's memory is split "
				     "between the source and the destination, and the VM is lost");
	return 0;
}

/* Wait for the recovery handshake to reach @want (the return-path thread
 * moves it), for channel-timeout-ms at most. */
static int wait_resume_step(struct mfd_engine *e, enum resume_step want, const char *what,
			    mfd_error **errp)
{
	struct timespec dl = eng_deadline_in(e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS]);
	int r = 0;

	pthread_mutex_lock(&e->lock);
	while (e->src.resume < want && !e->src.rp_done && !atomic_load(&e->user_cancel) && r == 0)
		r = pthread_cond_timedwait(&e->cond, &e->lock, &dl);
	bool ok = e->src.resume >= want;

	pthread_mutex_unlock(&e->lock);
	if (ok)
		return 0;
	return mfd_error_set(errp, r == ETIMEDOUT ? MFD_ETIMEDOUT : MFD_EEOF,
			     "recovery: no %s from the destination", what);
}

/* Source: reconnect, learn what the destination has, continue. */
static int source_reconnect(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	uint8_t hello[MAIN_HELLO_SIZE];
	struct iovec iov = { hello, sizeof(hello) };
	int r;

	if ((r = eng_open_out(e, -1, errp)) < 0)
		return r;
	eng_main_hello_encode(e, hello, true);
	if ((r = channel_writev_full(e->main_ch, &iov, 1, errp)) < 0)
		return r;
	if (e->preempt && (r = eng_open_preempt(e, errp)) < 0)
		return r;
	eng_relax_timeouts(e);
	mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_WRITE, &e->out, errp)) < 0)
		return r;
	stream_set_label(e->out, "main channel");
	e->src.ram.last_block = -1;
	pthread_mutex_lock(&e->lock);
	e->src.bitmaps_got = 0;
	memset(e->src.bitmaps_from, 0, sizeof(e->src.bitmaps_from));
	e->src.resume = m->nblocks ? RS_HELLO : RS_BITMAPS;
	e->src.rp_done = false;
	commit_move(e, SC_OPEN);	/* EOF goes out again once the push ends */
	pthread_mutex_unlock(&e->lock);
	if (util_thread_start(&e->src.rp_thread, eng_rp_thread, e, "mfd-return-path") != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "recovery: cannot start the return path");
	e->src.rp_started = true;
	savevm_header(m, e->out);
	for (unsigned b = 0; b < m->nblocks; b++)
		savevm_send_recv_bitmap(e->out, m->blocks[b].name);
	if ((r = eng_flush_out(e->out, errp)) < 0 ||
	    (r = wait_resume_step(e, RS_BITMAPS, "received-pages bitmap", errp)) < 0 ||
	    (r = savevm_resume_prepare(m, errp)) < 0)
		return r;
	savevm_send_postcopy_resume(e->out);
	if ((r = eng_flush_out(e->out, errp)) < 0 ||
	    (r = wait_resume_step(e, RS_ACKED, "RESUME_ACK", errp)) < 0 ||
	    (r = eng_start_pre_server(e, errp)) < 0)
		return r;
	log_info("postcopy: resumed; %llu bytes still to push",
		     (unsigned long long)ramsec_remaining(e));
	return 0;
}

static bool pausable(struct mfd_engine *e, int r)
{
	bool broken;

	pthread_mutex_lock(&e->lock);
	bool seen = commit_at(e) == SC_ANSWERED;

	broken = !seen && (e->link == LINK_LOST || e->link == LINK_PAUSE);
	/* An error recorded by the return-path thread (a malformed request, say)
	 * is no network loss: reconnecting would not cure it. */
	bool failed = e->err != NULL;
	pthread_mutex_unlock(&e->lock);
	return !seen && !failed && (broken || eng_network_error(e, r));
}

/*
 * The push ended and EOF is out on the main stream: end the preempt stream.
 * Its failure decides nothing: the main stream ended whole, so the
 * destination answers either way (it gives up on a silent preempt channel
 * itself when every page is in, and pauses when some are missing), and a
 * broken connection shows on the return path too.  A write stuck here ends
 * when RESULT 0 arrives (eng_rp_thread() shuts the channel).
 */
static void send_preempt_eos(struct mfd_engine *e)
{
	mfd_error *err = NULL;
	int r;

	pthread_mutex_lock(&e->pre_lock);
	mfd_stream_put_be64(e->src.pre_out, RAM_FLAG_EOS);
	r = eng_flush_out(e->src.pre_out, &err);
	atomic_store(&e->src.pre_bytes, mfd_stream_bytes(e->src.pre_out));
	atomic_store(&e->src.pre_eos_sent, r == 0);
	pthread_mutex_unlock(&e->pre_lock);
	if (r < 0 && commit_at(e) != SC_ANSWERED)
		log_warn("postcopy: the preempt stream's end did not go out (%s); the "
			 "destination's answer decides", mfd_error_message(err));
	mfd_error_free(err);
}

/* Source: everything from the switch to the destination's RESULT. */
int eng_postcopy_run(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	int r;

	if ((r = postcopy_start(e, errp)) < 0)
		return r;
	for (;;) {
		mfd_error *err = NULL;

		r = savevm_iterate(m, e->out, true, &err);
		if (r >= 0 && eng_flush_out(e->out, &err) < 0)
			r = mfd_error_code(err);
		engine_publish(e);
		if (r == 1) {
			/* Everything pushed: END, EOF, and the end of the preempt stream. */
			r = savevm_complete_postcopy(m, e->out, &err);
			if (r == 0)
				commit_move(e, SC_EOF);
			if (r == 0 && (r = savevm_eof(e->out)) == 0)
				r = eng_flush_out(e->out, &err);
			if (r == 0 && e->preempt)
				send_preempt_eos(e);
			/* The destination answers once the preempt stream ended, or
			 * after channel-timeout-ms without its end: allow for both. */
			if (r == 0)
				r = eng_wait_result(e, 2 * m->params.i[MFD_P_CHANNEL_TIMEOUT_MS], &err);
		}
		if (r < 0) {
			if (!pausable(e, r)) {
				eng_name_stream(e->out, "main channel", &err);
				mfd_error_prefix(err, "postcopy");
				error_propagate(errp, err);
				return r;
			}
			if ((r = eng_postcopy_pause(e, err, errp)) < 0)
				return r;
			continue;
		}
		mfd_error_free(err);
		if (r == 0 && commit_at(e) == SC_ANSWERED)
			break;
	}
	pthread_mutex_lock(&e->lock);
	e->t_pc_end_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	mfd_channel_finish(e->main_ch, NULL);
	if (e->pre_ch)
		mfd_channel_finish(e->pre_ch, NULL);
	for (unsigned i = 0; i < e->nchan && e->use_multifd; i++)
		mfd_channel_finish(e->mf[i], NULL);
	return 0;
}

/* Either side: the connection broke during postcopy.  Waits, paused, for
 * mfd_migrate_resume()/mfd_migrate_recover() and reconnects; a failed attempt
 * pauses again.  Returns 0 once reconnected, an error once cancelled. */
int eng_postcopy_pause(struct mfd_engine *e, mfd_error *cause, mfd_error **errp)
{
	log_warn("postcopy paused: %s", cause ? mfd_error_message(cause) : "connection lost");
	mfd_error_free(cause);
	engine_publish(e);	/* what is left, as the pause finds it */
	STAT_ADD(e, pauses, 1);
	for (;;) {
		eng_drop_connection(e);
		eng_set_state(e, MFD_STATE_POSTCOPY_PAUSED);
		int r = wait_resume(e, errp);

		if (r < 0)
			return r;
		eng_set_state(e, MFD_STATE_POSTCOPY_RECOVER);
		mfd_error *err = NULL;

		/* The destination goes active at POSTCOPY_RESUME (eng_lh_resume). */
		r = e->incoming ? eng_dest_reconnect(e, &err) : source_reconnect(e, &err);
		if (r == 0) {
			pthread_mutex_lock(&e->lock);
			link_move(e, LINK_UP);
			pthread_mutex_unlock(&e->lock);
			if (!e->incoming)
				eng_set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
			return 0;
		}
		if (atomic_load(&e->user_cancel)) {
			error_propagate(errp, err);
			return r;
		}
		log_warn("postcopy: %s failed, still paused: %s",
			     e->incoming ? "recovery" : "resume", mfd_error_message(err));
		mfd_error_free(err);
	}
}
