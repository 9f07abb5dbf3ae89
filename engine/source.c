/* SPDX-License-Identifier: MIT */
/*
 * The source's precopy: connect, setup, iterate until the switchover policy says
 * so (auto-converge meanwhile), the final round.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

static int policy_says_switch(struct mfd_engine *e)
{
	mfd_migration *m = e->m;
	uint64_t must = 0, can = 0;
	struct mfd_policy_info info = { 0 };
	struct policy_input in = { 0 };
	struct policy_estimate est;
	int verdict;
	double bw;

	if (e->use_rp && savevm_switchover_ack_needed(m)) {
		if (commit_at(e) != SC_APPROVED)
			return 0;	/* a destination device has not consented yet */
	}

	int64_t limit_ms = param_live(&m->params, MFD_P_DOWNTIME_LIMIT);
	int64_t avail = param_live(&m->params, MFD_P_AVAIL_SWITCHOVER_BANDWIDTH);

	savevm_pending_estimate(m, &must, &can);
	if (must <= (uint64_t)(e->src.bandwidth * (double)limit_ms / 1000.0))
		/* Close to the line: ask the sections for their exact figure. */
		savevm_pending_exact(m, &must, &can);
	bw = avail > 0 ? (double)avail : e->src.bandwidth;
	in.iteration = STAT_GET(e, iterations);
	in.pending_bytes = must;
	in.bandwidth = bw;
	in.downtime_limit_ms = (uint64_t)limit_ms;
	in.postcopy = e->postcopy;
	if (e->src.send) {
		struct mfd_multifd_stats *st = malloc(sizeof(*st));

		if (st) {
			multifd_send_stats(e->src.send, st);
			in.syncs = st->syncs;
			in.sync_ns_max = st->sync_ns_max;
			in.sync_ns_recent = st->sync_ns_recent;
			free(st);
		}
	}
	verdict = policy_decide(&in, &e->src.ram.policy, &est);
	if (est.stalled_now) {
		/* No event for it in the hooks: a warning with the reason, and a count. */
		pthread_mutex_lock(&e->lock);
		STAT_ADD(e, precopy_stalls, 1);
		pthread_mutex_unlock(&e->lock);
		log_warn("precopy is not converging: %u passes in a row left more than 90%% "
			     "of the smallest pending figure (%llu bytes; now %llu, expected "
			     "downtime %llu ms, downtime-limit %lld ms, %.1f MiB/s); %s",
			     est.stalled_passes, (unsigned long long)est.best_pending,
			     (unsigned long long)must, (unsigned long long)est.expected_downtime_ms,
			     (long long)limit_ms, bw / 1048576,
			     m->hooks.switchover_policy ? "the switchover_policy hook decides"
			     : e->postcopy ? "switching to postcopy"
			     : "iterating on (postcopy-ram is off)");
	}
	info.iteration = STAT_GET(e, iterations);
	info.pending_bytes = must;
	info.bandwidth = (uint64_t)bw;
	info.downtime_limit_ms = (uint64_t)limit_ms;
	info.dirty_rate = STAT_GET(e, dirty_rate_bytes);
	info.switchover_cost_ms = est.switchover_cost_ms;
	STAT_SET(e, expected_downtime_ms, est.expected_downtime_ms);
	if (m->hooks.switchover_policy) {
		int v = m->hooks.switchover_policy(m->hooks_opaque, &info);

		return v == MFD_POLICY_POSTCOPY ? (e->postcopy ? v : 0) : v > 0;
	}
	return verdict;
}

/* Auto-converge: when the guest dirties more than half of what the link moves,
 * it will not converge: ask the VMM to slow it, more at every pass. */
static void maybe_throttle(struct mfd_engine *e)
{
	mfd_migration *m = e->m;
	double dirty_bytes_rate = (double)STAT_GET(e, dirty_rate_bytes);
	int next;

	if (!m->params.i[MFD_P_AUTO_CONVERGE] || !m->hooks.throttle || STAT_GET(e, iterations) < 2 ||
	    e->src.bandwidth <= 0 || dirty_bytes_rate < 0.5 * e->src.bandwidth)
		return;
	next = e->src.throttle ? e->src.throttle + (int)m->params.i[MFD_P_CPU_THROTTLE_INCREMENT]
			   : (int)m->params.i[MFD_P_CPU_THROTTLE_INITIAL];
	if (next > m->params.i[MFD_P_MAX_CPU_THROTTLE])
		next = (int)m->params.i[MFD_P_MAX_CPU_THROTTLE];
	if (next != e->src.throttle) {
		pthread_mutex_lock(&e->lock);
		e->src.throttle = next;
		pthread_mutex_unlock(&e->lock);
		log_info("auto-converge: throttling the guest by %d%%", next);
		m->hooks.throttle(m->hooks_opaque, next);
	}
}

static int source_connect(struct mfd_engine *e, mfd_error **errp)
{
	uint8_t hello[MAIN_HELLO_SIZE];
	struct iovec iov = { hello, sizeof(hello) };
	struct mfd_multifd_send *send = NULL;
	int r = eng_open_out(e, -1, errp);

	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup: main channel");
		return r;
	}
	eng_main_hello_encode(e, hello, false);
	if ((r = channel_writev_full(e->main_ch, &iov, 1, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup: main channel: hello");
		return r;
	}
	if (e->preempt && (r = eng_open_preempt(e, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup");
		return r;
	}
	if (!e->use_multifd)
		return 0;
	/* Each hello right after its channel opens: the destination identifies
	 * channels one by one, reading each hello before accepting the next. */
	uint64_t digest = ram_blocks_digest(e->m->blocks, e->m->nblocks);

	for (unsigned i = 0; i < e->nchan; i++) {
		uint8_t h[MFD_HELLO_SIZE];
		struct iovec hv = { h, sizeof(h) };

		r = eng_open_out(e, (int)i, errp);
		if (r == 0) {
			multifd_hello_encode(h, &e->mcfg, (uint16_t)i, digest);
			r = channel_writev_full(e->mf[i], &hv, 1, errp);
		}
		if (r < 0) {
			mfd_error_prefix(errp ? *errp : NULL, "setup: multifd channel %u", i);
			return r;
		}
	}
	e->mcfg.hellos_sent = true;
	r = multifd_send_new(&e->mcfg, e->m->blocks, e->m->nblocks, e->mf, &send, errp);
	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup");
		return r;
	}
	PUBLISH(e, src.send, send);
	return 0;
}

int eng_flush_out(mfd_stream *s, mfd_error **errp)
{
	return mfd_stream_flush(s) < 0 ? mfd_stream_error(s, errp) : 0;
}

int eng_source_run(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	int r;

	if ((r = source_connect(e, errp)) < 0)
		return r;
	eng_relax_timeouts(e);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_WRITE, &e->out, errp)) < 0)
		return r;
	stream_set_label(e->out, "main channel");
	if ((r = savevm_prepare(m, errp)) < 0)
		return r;
	savevm_header(m, e->out);
	if (e->use_rp) {
		savevm_send_open_return_path(e->out);
		savevm_send_ping(e->out, 1);
		if (e->postcopy) {
			uint64_t summary = 0;

			for (unsigned b = 0; b < m->nblocks; b++)
				summary |= m->blocks[b].page_size;
			savevm_send_postcopy_advise(e->out, summary, 4096);
		}
		if (util_thread_start(&e->src.rp_thread, eng_rp_thread, e, "mfd-return-path") != 0)
			return mfd_error_set(errp, MFD_ENOMEM, "setup: cannot start the return path");
		e->src.rp_started = true;
	}
	if ((r = savevm_setup(m, e->out, errp)) < 0 ||
	    (r = mfd_stream_flush(e->out) < 0 ? mfd_stream_error(e->out, errp) : 0) < 0) {
		eng_name_stream(e->out, "main channel", errp);
		mfd_error_prefix(errp ? *errp : NULL, "setup");
		return r;
	}
	pthread_mutex_lock(&e->lock);
	e->t_setup_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	eng_set_state(e, MFD_STATE_ACTIVE);

	for (;;) {
		if (engine_cancelled(e))
			return mfd_error_set(errp, MFD_ECANCELED, "migration cancelled");
		if (e->postcopy && atomic_load(&e->src.pc_want))
			return eng_postcopy_run(e, errp);
		e->src.ram.pass_done = false;
		r = savevm_iterate(m, e->out, false, errp);
		if (r >= 0 && mfd_stream_flush(e->out) < 0)
			r = mfd_stream_error(e->out, errp);
		if (r < 0) {
			eng_name_stream(e->out, "main channel", errp);
			mfd_error_prefix(errp ? *errp : NULL, "iteration %llu",
					 (unsigned long long)STAT_GET(e, iterations) + 1);
			return r;
		}
		engine_publish(e);
		/* Decide at pass boundaries, where the dirty figures are fresh; a VM
		 * without RAM decides when its live sections are done. */
		if ((e->ram_se && e->src.ram.pass_done) || (!e->ram_se && r == 1)) {
			int verdict = policy_says_switch(e);

			if (verdict == MFD_POLICY_POSTCOPY) {
				log_info("postcopy: the policy switches to postcopy after %llu "
					     "passes", (unsigned long long)STAT_GET(e, iterations));
				return eng_postcopy_run(e, errp);
			}
			if (verdict)
				break;
			maybe_throttle(e);
		}
	}

	eng_set_state(e, MFD_STATE_DEVICE);
	e->t_stop_ns = engine_now_ns();
	if (m->hooks.vm_stop) {
		if ((r = m->hooks.vm_stop(m->hooks_opaque, errp)) < 0) {
			mfd_error_prefix(errp ? *errp : NULL, "switchover: vm_stop hook");
			return errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
		}
	}
	e->src.vm_stopped = true;
	/* EOF goes last, once everything else is out: it is the commit point.
	 * Before it the destination cannot complete, and any failure restarts
	 * the VM here; after it only the destination's word decides. */
	r = savevm_complete_precopy(m, e->out, false, errp);
	if (r == 0 && mfd_stream_flush(e->out) < 0)
		r = mfd_stream_error(e->out, errp);
	if (r == 0 && e->src.send)
		r = multifd_send_finish(e->src.send, errp);
	if (r == 0) {
		commit_move(e, SC_EOF);
		r = savevm_eof(e->out);
	}
	if (r == 0 && mfd_stream_flush(e->out) < 0)
		r = mfd_stream_error(e->out, errp);
	if (r < 0) {
		eng_name_stream(e->out, "main channel", errp);
		mfd_error_prefix(errp ? *errp : NULL, "switchover");
		return r;
	}
	engine_publish(e);
	if (e->use_rp && (r = eng_switchover_commit(e, errp)) < 0)
		return r;
	e->downtime_ns = engine_now_ns() - e->t_stop_ns;
	/* A clean end for TLS peers; reading is done by then. */
	mfd_channel_finish(e->main_ch, NULL);
	for (unsigned i = 0; i < e->nchan && e->use_multifd; i++)
		mfd_channel_finish(e->mf[i], NULL);
	return 0;
}
