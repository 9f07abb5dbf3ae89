/* SPDX-License-Identifier: MIT */
/*
 * The destination: gather the channels, load the stream, answer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

/*
 * Postcopy, the main stream ended: the preempt stream ends right after it
 * (the source writes its EOS next).  Whether it ended within
 * channel-timeout-ms; if not, its reader still runs.  A source that stays
 * connected and never writes it must not hold the destination forever: see
 * load_all().
 */
static bool drain_preempt(struct mfd_engine *e)
{
	struct timespec dl = eng_deadline_in(e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS]);
	int r = 0;

	pthread_mutex_lock(&e->lock);
	while (!e->dst.pre_reader_left && r == 0)
		r = pthread_cond_timedwait(&e->cond, &e->lock, &dl);
	bool left = e->dst.pre_reader_left;

	pthread_mutex_unlock(&e->lock);
	if (!left)
		return false;
	pthread_join(e->pre_thread, NULL);
	e->pre_started = false;
	return true;
}

static int lh_open_rp(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int need = 0;

	if (!e->use_rp)
		return mfd_error_set(errp, MFD_EPROTO, "OPEN_RETURN_PATH, but the hello said none");
	for_each_section(e->m, se)
		if (se->ops.switchover_ack_needed && se->ops.switchover_ack_needed(se->opaque))
			need++;
	pthread_mutex_lock(&e->lock);
	/* Approvals may come before this (from load_setup): count them too. */
	e->dst.approvals_needed = need - e->dst.approvals_early;
	bool send = e->dst.approvals_needed <= 0 && commit_move(e, DC_ACKED);

	pthread_mutex_unlock(&e->lock);
	return send ? eng_rp_send(e, RP_SWITCHOVER_ACK, NULL, 0, errp) : 0;
}

int mfd_migration_approve_switchover(mfd_migration *m)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	bool send;

	if (!e || !e->incoming)
		return MFD_ESTATE;
	pthread_mutex_lock(&e->lock);
	if (eng_terminal(e->state) || e->state == MFD_STATE_NONE) {
		pthread_mutex_unlock(&e->lock);
		return MFD_ESTATE;
	}
	if (e->dst.approvals_needed < 0)
		e->dst.approvals_early++;
	else
		e->dst.approvals_needed--;
	send = e->dst.approvals_needed == 0 && commit_move(e, DC_ACKED);
	pthread_mutex_unlock(&e->lock);
	if (send)
		eng_rp_send(e, RP_SWITCHOVER_ACK, NULL, 0, NULL);
	return 0;
}

static int lh_ping(void *opaque, uint32_t value, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t b[4];

	if (!e->use_rp)
		return mfd_error_set(errp, MFD_ENOTSUP, "PING without a return path");
	store_be32(b, value);
	return eng_rp_send(e, RP_PONG, b, 4, errp);
}

/* Destination: the whole stream, across postcopy pauses. */
static int load_all(struct mfd_engine *e, const struct mfd_loadvm_hooks *hooks, mfd_error **errp)
{
	mfd_migration *m = e->m;
	bool resumed = false;
	int r = loadvm_begin(m, e->in, hooks, errp);

	while (r == 0) {
		mfd_error *err = NULL;

		r = loadvm_run(m, e->in, hooks, resumed, &err);
		resumed = false;
		if (r == MFD_LOADVM_QUIT) {
			/* POSTCOPY_RUN: the guest runs; the rest of the RAM follows. */
			r = 0;
			continue;
		}
		if (r == 0 && pc_running(e) && e->pre_started && !drain_preempt(e)) {
			uint64_t left = pcd_missing(e);

			if (!left) {
				/* Every page is in: its end is a formality.  finish()
				 * closes it once RESULT 0 is out, so the source never
				 * sees the channel go before the answer. */
				log_warn("postcopy: the preempt stream did not end within %lld ms of "
					 "the main stream; every page is in, so it is closed",
					 (long long)m->params.i[MFD_P_CHANNEL_TIMEOUT_MS]);
				atomic_store(&e->dst.pre_abandoned, true);
			} else {
				/* Pages are still on their way on a silent channel: a
				 * stalled connection, which a recovery can cure. */
				r = mfd_error_set(&err, MFD_ETIMEDOUT, "postcopy: preempt channel: "
						  "nothing for %lld ms after the main stream ended, "
						  "with %llu pages still missing",
						  (long long)m->params.i[MFD_P_CHANNEL_TIMEOUT_MS],
						  (unsigned long long)left);
			}
		}
		if (r == 0)
			break;
		if (!eng_dest_pausable(e, r)) {
			error_propagate(errp, err);
			break;
		}
		r = eng_postcopy_pause(e, err, errp);
		resumed = true;
	}
	if (r == 0 && pc_running(e)) {
		uint64_t missing = pcd_missing(e);

		pthread_mutex_lock(&e->lock);
		if (e->err)
			r = mfd_error_code(e->err);
		pthread_mutex_unlock(&e->lock);
		if (r == 0 && missing)
			r = mfd_error_set(errp, MFD_EPROTO, "postcopy: the stream ended with %llu pages "
					  "still missing", (unsigned long long)missing);
		/* The preempt reader may still run (abandoned): finish() stops it,
		 * then the fault thread. */
		if (r == 0 && !e->pre_started)
			pcd_stop(e);
	}
	loadvm_end(m);
	return r;
}

int eng_incoming_run(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	unsigned count = e->use_multifd ? 1 + e->nchan : 1;
	mfd_channel *slots[257] = { 0 };
	const struct mfd_loadvm_hooks hooks = {
		.opaque = e,
		.open_return_path = lh_open_rp,
		.ping = lh_ping,
		.postcopy_advise = eng_lh_advise,
		.postcopy_listen = eng_lh_listen,
		.postcopy_run = eng_lh_run,
		.postcopy_ram_discard = eng_lh_discard,
		.recv_bitmap = eng_lh_recv_bitmap,
		.postcopy_resume = eng_lh_resume,
	};
	mfd_channel *first = NULL;
	/* Wait as long as it takes for a source; once one connected, its other
	 * channels must follow within channel-timeout-ms. */
	int r;

	e->dst.strays = 0;
	r = eng_gather(e, 1, 0, eng_screen_main, &first, errp);
	if (r == 0 && e->preempt)
		r = eng_accept_preempt(e, errp);
	if (r == 0 && count > 1) {
		r = eng_gather(e, count - 1, (int)m->params.i[MFD_P_CHANNEL_TIMEOUT_MS], eng_screen_mf, slots,
			   errp);
		if (r < 0) {
			/* Unpublish the multifd channels before they go: a cancel
			 * may be shutting them down right now.  TLS wrappers go
			 * before the channels they wrap. */
			pthread_mutex_lock(&e->lock);
			for (unsigned i = 0; i < 256; i++)
				if (e->mf_raw[i])
					mfd_channel_free(e->mf[i]);
			memset(e->mf, 0, sizeof(e->mf));
			memset(e->mf_raw, 0, sizeof(e->mf_raw));
			pthread_mutex_unlock(&e->lock);
			for (unsigned i = 0; i < count - 1; i++)
				mfd_channel_free(slots[i]);
		}
	}
	if (r < 0) {
		/* The main channel is ours and goes with the rest. */
		mfd_error_prefix(errp ? *errp : NULL, "setup: gathering %u channels", count);
		return r;
	}
	listener_stop(e->dst.listener);

	/* The raw channels are ours now; identify recorded each of them. */
	eng_relax_timeouts(e);
	/* With vm_create the table is final only once the source's RAM section
	 * started (ramsec_load.c); the channels wait until then. */
	if (!e->dst.lazy && (r = eng_dest_ram_ready(e, errp)) < 0)
		return r;
	eng_set_state(e, MFD_STATE_ACTIVE);
	pthread_mutex_lock(&e->lock);
	e->t_setup_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_READ, &e->in, errp)) < 0)
		return r;
	stream_set_label(e->in, "main channel");
	r = load_all(e, &hooks, errp);
	if (r < 0)
		eng_name_stream(e->in, "main channel", errp);
	/* The source hangs up when a channel breaks: the main stream's end is
	 * then a consequence; report the cause. */
	if ((r == MFD_EEOF || r == MFD_EIO) && e->dst.recv) {
		int cause = multifd_recv_root_cause(e->dst.recv, errp);

		if (cause < 0)
			r = cause;
	}
	/* A stream without a RAM section never made the table final. */
	if (r == 0 && !e->dst.ram_ready)
		r = eng_dest_ram_ready(e, errp);
	if (r == 0 && e->dst.recv && pc_at(e) < PC_LISTENING)
		r = multifd_recv_finish(e->dst.recv, errp);
	if (r < 0)
		return r;
	engine_publish(e);
	if ((r = eng_switchover_answer(e, errp)) < 0)
		return r;
	if (pc_running(e)) {
		pthread_mutex_lock(&e->lock);
		e->t_pc_end_ns = engine_now_ns();
		pthread_mutex_unlock(&e->lock);
		/* The guest runs since POSTCOPY_RUN. */
		mfd_channel_finish(e->main_ch, NULL);
		return 0;
	}
	if (m->hooks.vm_start && (r = m->hooks.vm_start(m->hooks_opaque, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "switchover: the source handed the VM over "
				 "(RESULT 0 sent) but the vm_start hook failed, so the VM runs "
				 "nowhere; start it here, or on the source");
		return errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
	}
	mfd_channel_finish(e->main_ch, NULL);
	return 0;
}

int eng_dest_ram_ready(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	int r;

	if (e->dst.ram_ready)
		return 0;
	e->dst.ram_ready = true;
	if (m->params.i[MFD_P_DEST_RAM_ZEROED] &&
	    (r = ram_recvmap_alloc(m->blocks, m->nblocks, errp)) < 0)
		return r;
	if (e->dst.pc_summary_due) {
		uint64_t mine = 0;

		for (unsigned b = 0; b < m->nblocks; b++)
			mine |= m->blocks[b].page_size;
		if (mine != e->dst.pc_summary)
			return mfd_error_set(errp, MFD_EPROTO,
					     "POSTCOPY_ADVISE: the source's page sizes (mask 0x%llx) "
					     "differ from this side's after vm_create (0x%llx)",
					     (unsigned long long)e->dst.pc_summary,
					     (unsigned long long)mine);
	}
	if (e->dst.pcd && (r = pcd_blocks(e, errp)) < 0)
		return r;
	if (e->dst.recv && e->dst.lazy &&
	    (r = multifd_recv_set_blocks(e->dst.recv, m->blocks, m->nblocks, errp)) < 0)
		return r;
	if (e->dst.recv && (r = multifd_recv_start(e->dst.recv, errp)) < 0)
		return r;
	return 0;
}
