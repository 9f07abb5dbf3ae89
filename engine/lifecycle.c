/* SPDX-License-Identifier: MIT */
/*
 * The engine's lifecycle and public entry points: start, the migration thread,
 * the end of a migration, wait, cancel, postcopy and recovery requests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/internal.h"

static void engine_teardown(mfd_migration *m);

static void finish(struct mfd_engine *e, int r, mfd_error *err)
{
	mfd_migration *m = e->m;
	enum mfd_state end = MFD_STATE_COMPLETED;

	if (r < 0) {
		if (!err)
			mfd_error_set(&err, r, "migration failed (%s)", mfd_strerror(r));
		if (pc_running(e))
			mfd_error_prefix(err, e->incoming ?
					 "postcopy failed; the guest runs here with incomplete memory "
					 "and must be stopped" :
					 "postcopy failed and the VM is lost (its memory is split "
					 "between the two hosts)");
		/* Not after a RESULT 0: the source may have handed the VM over. */
		if (e->incoming && commit_at(e) != DC_ANSWERED)
			eng_rp_send_result(e, mfd_error_code(err), mfd_error_message(err), NULL);
		if (!e->incoming && e->src.rp_started && !atomic_load(&e->user_cancel)) {
			mfd_error *why = eng_destination_reason(e);

			if (why) {
				/* It replaces whatever the broken connection caused here. */
				pthread_mutex_lock(&e->lock);
				mfd_error_free(e->err);
				e->err = why;
				commit_move(e, SC_ANSWERED);	/* it failed: the VM runs here */
				pthread_mutex_unlock(&e->lock);
			}
		}
		if (!e->incoming && commit_at(e) == SC_UNKNOWN) {
			/* Whatever broke on the way, the VMM must hear "unknown". */
			pthread_mutex_lock(&e->lock);
			mfd_error_free(e->err);
			e->err = err;
			err = NULL;
			pthread_mutex_unlock(&e->lock);
		}
		eng_record_error(e, err);
		pthread_mutex_lock(&e->lock);
		bool cancelled = mfd_error_code(e->err) == MFD_ECANCELED;

		pthread_mutex_unlock(&e->lock);
		end = !e->incoming && atomic_load(&e->user_cancel) && cancelled ? MFD_STATE_CANCELLED
										: MFD_STATE_FAILED;
		eng_shutdown_all(e);
	} else {
		mfd_error_free(err);
	}
	if (e->src.rp_started) {
		if (r < 0)
			mfd_channel_shutdown(e->main_ch);
		pthread_join(e->src.rp_thread, NULL);
		e->src.rp_started = false;
	}
	if (e->pre_started) {
		/* The source's request server reads until the channel closes. */
		if (r < 0 || !e->incoming || atomic_load(&e->dst.pre_abandoned))
			mfd_channel_shutdown(e->pre_ch);
		pthread_join(e->pre_thread, NULL);
		e->pre_started = false;
	}
	if (e->dst.pcd) {
		struct mfd_stats pst;

		memset(&pst, 0, sizeof(pst));
		pcd_stop(e);
		pcd_stats(e, &pst);
		pthread_mutex_lock(&e->lock);
		e->dst.pc_kept[0] = pst.postcopy_faults;
		e->dst.pc_kept[1] = pst.postcopy_fault_us_median;
		e->dst.pc_kept[2] = pst.postcopy_fault_us_p99;
		e->dst.pc_kept[3] = pst.postcopy_fault_us_max;
		e->dst.pc_kept[4] = pst.postcopy_blocktime_ms;
		pthread_mutex_unlock(&e->lock);
		pcd_free(e);
	}
	/* Leave the guest as we found it. */
	if (!e->incoming) {
		if (e->src.throttle && m->hooks.throttle)
			m->hooks.throttle(m->hooks_opaque, 0);
		e->src.throttle = 0;
		/* Not after postcopy began: the destination may run the guest. */
		/* Nor when the destination may run it: the VMM decides. */
		if (r < 0 && e->src.vm_stopped && !pc_running(e) &&
		    commit_at(e) != SC_UNKNOWN && m->hooks.vm_start)
			m->hooks.vm_start(m->hooks_opaque, NULL);
		savevm_cleanup(m);
	}
	engine_publish(e);
	/* Keep the multifd figures for mfd_migration_stats() after the end. */
	struct mfd_multifd_stats *ms = calloc(1, sizeof(*ms));

	if (ms && e->src.send)
		multifd_send_stats(e->src.send, ms);
	else if (ms && e->dst.recv)
		multifd_recv_stats(e->dst.recv, ms);
	pthread_mutex_lock(&e->lock);
	free(e->final_ms);
	e->final_ms = ms;
	pthread_mutex_unlock(&e->lock);
	eng_release_channels(e);
	/* Nothing connects any more: the descriptor goes with the channels.
	 * (eng_shutdown_all() writes it under lock.) */
	pthread_mutex_lock(&e->lock);
	if (e->cancel_fd >= 0)
		close(e->cancel_fd);
	e->cancel_fd = -1;
	pthread_mutex_unlock(&e->lock);
	m->busy = false;
	ramsec_unregister(e);
	vmconfig_unregister(e);
	ramsec_free(e);
	pthread_mutex_lock(&e->lock);
	e->t_end_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	eng_set_state(e, end);
	pthread_mutex_lock(&e->lock);
	e->ended = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	/* mfd_migration_wait() no longer blocks: say so.  (mfd_migration_free()
	 * joins this thread before it frees m.) */
	migration_notify(m);
}

static void *migration_thread(void *arg)
{
	struct mfd_engine *e = arg;
	mfd_error *err = NULL;
	int r;

	r = e->incoming ? eng_incoming_run(e, &err) : eng_source_run(e, &err);

	if (r < 0 && atomic_load(&e->user_cancel) && !e->incoming && commit_at(e) != SC_UNKNOWN) {
		/* Errors caused by our own shutdown are the cancel, not the cause. */
		pthread_mutex_lock(&e->lock);
		bool have = e->err != NULL;

		pthread_mutex_unlock(&e->lock);
		if (!have) {
			mfd_error_free(err);
			err = NULL;
			mfd_error_set(&err, MFD_ECANCELED, "migration cancelled");
			r = MFD_ECANCELED;
		}
	}
	finish(e, r, err);
	return NULL;
}

/* What one migration leaves in the engine once its thread is joined. */
static void engine_drop_state(struct mfd_engine *e)
{
	mfd_error_free(e->err);
	free(e->src.rp_message);
	free(e->final_ms);
	if (e->cancel_fd >= 0)
		close(e->cancel_fd);
	e->cancel_fd = -1;
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->out_lock);
	pthread_mutex_destroy(&e->pre_lock);
}

static int engine_reset(mfd_migration *m, bool incoming, const char *uri, mfd_error **errp)
{
	struct mfd_engine *e = m->engine;

	if (strlen(uri) >= sizeof(e->uri))
		return mfd_error_set(errp, MFD_EINVAL, "URI of %zu bytes is too long", strlen(uri));
	if (e->thread_started) {
		pthread_join(e->thread, NULL);
		e->thread_started = false;
	}
	engine_drop_state(e);
	memset(e, 0, sizeof(*e));
	e->m = m;
	e->incoming = incoming;
	strcpy(e->uri, uri);
	pthread_mutex_init(&e->lock, NULL);
	eng_cond_init(&e->cond);
	pthread_mutex_init(&e->out_lock, NULL);
	pthread_mutex_init(&e->pre_lock, NULL);
	atomic_init(&e->cancel, false);
	atomic_init(&e->src.pc_want, false);
	atomic_init(&e->pc, PC_NONE);
	atomic_init(&e->user_cancel, false);
	atomic_init(&e->state_pub, MFD_STATE_NONE);
	atomic_init(&e->src.commit, SC_OPEN);
	atomic_init(&e->dst.commit, DC_LOADING);
	e->src.rp_result = RP_NO_RESULT;
	e->dst.approvals_needed = -1;
	e->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (e->cancel_fd < 0)
		return error_set_errno(errp, MFD_EIO, errno, "cannot create the engine's eventfd");
	return 0;
}

/* The channels of a struct mfd_channel_set, once the engine took them. */
struct given {
	mfd_channel *main, *pre;
	unsigned nmf;
	mfd_channel *mf[256];
};

static void given_free(struct given *g)
{
	mfd_channel_free(g->main);
	mfd_channel_free(g->pre);
	for (unsigned i = 0; i < g->nmf; i++)
		mfd_channel_free(g->mf[i]);
	memset(g, 0, sizeof(*g));
}

/* Take every channel of @set (the caller's no more, whatever happens), and
 * check its shape. */
static int given_take(const struct mfd_channel_set *set, const char *fn, struct given *g,
		      mfd_error **errp)
{
	struct mfd_channel_set in;
	int r;

	memset(g, 0, sizeof(*g));
	if (!set)
		return mfd_error_set(errp, MFD_EINVAL, "%s: NULL channel set", fn);
	/* Members past the caller's size are 0 (docs/abi.md); the channels are
	 * taken even from a set refused for its size. */
	r = util_struct_in(&in, sizeof(in), set, MFD_OFFSETOF_END(struct mfd_channel_set, multifd),
			   fn, "mfd_channel_set", errp);
	g->main = in.main;
	g->pre = in.preempt;
	if (in.multifd && in.nmultifd <= 256) {
		g->nmf = in.nmultifd;
		for (unsigned i = 0; i < g->nmf; i++)
			g->mf[i] = in.multifd[i];
	}
	if (r < 0)
		return r;
	if (!in.main)
		return mfd_error_set(errp, MFD_EINVAL, "%s: the set has no main channel", fn);
	if (in.nmultifd > 256)
		return mfd_error_set(errp, MFD_EINVAL, "%s: %u multifd channels; at most 256", fn,
				     in.nmultifd);
	if (in.nmultifd && !in.multifd)
		return mfd_error_set(errp, MFD_EINVAL, "%s: nmultifd is %u but multifd is NULL",
				     fn, in.nmultifd);
	for (unsigned i = 0; i < g->nmf; i++)
		if (!g->mf[i])
			return mfd_error_set(errp, MFD_EINVAL, "%s: multifd channel %u is NULL", fn,
					     i);
	return 0;
}

/* The set's shape against the parameters: one channel per multifd channel,
 * a preempt channel exactly when postcopy-preempt needs one. */
static int given_check(const struct given *g, mfd_migration *m, const char *fn,
		       mfd_error **errp)
{
	int64_t want = m->params.i[MFD_P_MULTIFD_CHANNELS];
	bool pre = m->params.i[MFD_P_POSTCOPY_RAM] && m->params.i[MFD_P_POSTCOPY_PREEMPT];

	if (g->nmf && (int64_t)g->nmf != want)
		return mfd_error_set(errp, MFD_EINVAL, "%s: the set has %u multifd channels but "
				     "multifd-channels is %lld: set it to %u (or pass none to carry "
				     "everything on the main channel)", fn, g->nmf,
				     (long long)want, g->nmf);
	if (pre && g->nmf && !g->pre)
		return mfd_error_set(errp, MFD_EINVAL, "%s: postcopy-preempt is on but the set has "
				     "no preempt channel", fn);
	if (g->pre && (!pre || !g->nmf))
		return mfd_error_set(errp, MFD_EINVAL, "%s: the set has a preempt channel but %s",
				     fn, g->nmf ? "postcopy-preempt is off"
						: "it carries everything on the main channel");
	return 0;
}

static int engine_start_on(mfd_migration *m, bool incoming, const char *uri, struct given *g,
			   const char *fn, mfd_error **errp)
{
	struct mfd_engine *e;
	int r;

	if (!m || !uri)
		return mfd_error_set(errp, MFD_EINVAL, "%s: NULL argument", fn);
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "a migration or save/load is running");
	/* The last RAM pass and the device state must see a guest that no longer
	 * writes its memory: without vm_stop nothing stops it. */
	if (!incoming && m->nblocks && !m->hooks.vm_stop &&
	    !m->params.i[MFD_P_VM_STOPPED_EXTERNALLY])
		return mfd_error_set(errp, MFD_EINVAL, "%s: RAM blocks are registered but no vm_stop "
				     "hook is installed: the vCPUs would keep writing guest RAM "
				     "while its last pages are sent.  Install a vm_stop hook "
				     "(mfd_migration_set_hooks()), or set vm-stopped-externally "
				     "on if the guest cannot run during the migration", fn);
	if (!m->engine) {
		e = calloc(1, sizeof(*e));
		if (!e)
			return mfd_error_set(errp, MFD_ENOMEM, "out of memory for the engine");
		e->cancel_fd = -1;	/* engine_reset() makes it */
		pthread_mutex_init(&e->lock, NULL);
		eng_cond_init(&e->cond);
		pthread_mutex_init(&e->out_lock, NULL);
		pthread_mutex_init(&e->pre_lock, NULL);
		__atomic_store_n(&m->engine, e, __ATOMIC_RELEASE);
		m->teardown = engine_teardown;
	}
	/* A malformed URI fails here, before any thread starts. */
	struct transport_uri tu = { 0 };

	if (!g && (r = transport_uri_parse(uri, &tu, errp)) < 0) {
		transport_uri_clear(&tu);
		return r;
	}
	/* fd: and file: are one channel: no multifd, no return path; so is a
	 * set without multifd channels. */
	bool stream = g ? g->nmf == 0 : tu.scheme == URI_FD || tu.scheme == URI_FILE;
	bool unix_uri = !g && tu.scheme == URI_UNIX;

	if ((r = engine_reset(m, incoming, uri, errp)) < 0) {
		transport_uri_clear(&tu);
		return r;
	}
	e = m->engine;
	if (!g && tu.scheme == URI_TCP && tu.host && strlen(tu.host) < sizeof(e->tls_host))
		strcpy(e->tls_host, tu.host);
	transport_uri_clear(&tu);
	e->nchan = (unsigned)m->params.i[MFD_P_MULTIFD_CHANNELS];
	e->use_multifd = !stream;
	e->use_rp = m->params.i[MFD_P_RETURN_PATH] && !stream;
	e->postcopy = m->params.i[MFD_P_POSTCOPY_RAM];
	e->preempt = e->postcopy && m->params.i[MFD_P_POSTCOPY_PREEMPT];
	e->confirm = m->params.i[MFD_P_SWITCHOVER_CONFIRM];
	if (e->confirm && !e->use_rp)
		return mfd_error_set(errp, MFD_EINVAL, "switchover-confirm needs the return path: a "
				     "tcp: or unix: URI and return-path on");
	if (m->params.i[MFD_P_POSTCOPY_PREEMPT] && !e->postcopy)
		return mfd_error_set(errp, MFD_EINVAL, "postcopy-preempt needs postcopy-ram");
	if (e->postcopy && !e->use_rp)
		return mfd_error_set(errp, MFD_EINVAL, "postcopy-ram needs the return path: a tcp: "
				     "or unix: URI and return-path on (not %s)",
				     stream ? "fd: or file:" : "return-path off");
	if (!incoming && m->params.i[MFD_P_ZERO_COPY_SEND] &&
	    (r = eng_check_zero_copy(m, stream, unix_uri, errp)) < 0)
		return r;
	if ((r = eng_make_config(e, errp)) < 0 ||
	    (r = eng_make_creds(e, incoming ? MFD_TLS_SERVER : MFD_TLS_CLIENT, errp)) < 0) {
		mfd_tls_creds_free(e->creds);
		e->creds = NULL;
		return r;
	}
	if (incoming && g) {
		/* In the order the destination takes them: main, preempt, multifd. */
		mfd_channel *list[258];
		unsigned n = 0;

		list[n++] = g->main;
		if (g->pre)
			list[n++] = g->pre;
		for (unsigned i = 0; i < g->nmf; i++)
			list[n++] = g->mf[i];
		r = listener_new_list(list, n, "the VMM's channels", &e->dst.listener, errp);
		if (r == 0)
			memset(g, 0, sizeof(*g));	/* the listener's now */
	} else if (incoming) {
		r = mfd_listener_new(uri, &e->dst.listener, errp);
	}
	if (r < 0) {
		mfd_tls_creds_free(e->creds);
		e->creds = NULL;
		return r;
	}
	if (incoming && !g)
		snprintf(e->dst.listen_uri, sizeof(e->dst.listen_uri), "%s",
			 mfd_listener_uri(e->dst.listener));
	if (!incoming && g) {
		/* eng_open_out() takes them, slot by slot. */
		e->src.given_main = g->main;
		e->src.given_pre = g->pre;
		for (unsigned i = 0; i < g->nmf; i++)
			e->src.given_mf[i] = g->mf[i];
		memset(g, 0, sizeof(*g));
	}
	e->dst.lazy = incoming && m->hooks.vm_create;
	if ((r = ramsec_register(e, errp)) < 0 || (r = vmconfig_register(e, errp)) < 0) {
		ramsec_unregister(e);
		eng_release_channels(e);
		return r;
	}
	eng_publish_table(e);
	m->busy = true;
	e->t_start_ns = engine_now_ns();
	eng_set_state(e, MFD_STATE_SETUP);
	if (util_thread_start(&e->thread, migration_thread, e, "%s",
			      incoming ? "mfd-incoming" : "mfd-migration") != 0) {
		m->busy = false;
		ramsec_unregister(e);
		vmconfig_unregister(e);
		eng_release_channels(e);
		return mfd_error_set(errp, MFD_ENOMEM, "cannot start the migration thread");
	}
	pthread_mutex_lock(&e->lock);
	e->thread_started = true;
	pthread_mutex_unlock(&e->lock);
	return 0;
}

static int engine_start(mfd_migration *m, bool incoming, const char *uri, bool byo,
			const struct mfd_channel_set *set, mfd_error **errp)
{
	const char *fn = byo ? (incoming ? "mfd_migrate_incoming_channels" : "mfd_migrate_channels")
			     : (incoming ? "mfd_migrate_incoming" : "mfd_migrate");
	struct given g;
	int r;

	if (!byo)
		return engine_start_on(m, incoming, uri, NULL, fn, errp);
	/* Taken at once: whatever the engine does not take is freed below. */
	r = given_take(set, fn, &g, errp);
	if (r == 0 && m)
		r = given_check(&g, m, fn, errp);
	if (r == 0)
		r = engine_start_on(m, incoming, "the VMM's channels", &g, fn, errp);
	given_free(&g);
	return r;
}

/* The public entry points run with @m's log route on the calling thread
 * (the threads they start inherit it); route_leave() gives the old one back. */
static struct log_route *route_enter(mfd_migration *m)
{
	return log_route_enter(m ? &m->log_route : NULL);
}

#define route_leave(prev) log_route_enter(prev)

static int engine_start_routed(mfd_migration *m, bool incoming, const char *uri, bool byo,
			       const struct mfd_channel_set *set, mfd_error **errp)
{
	struct log_route *prev = route_enter(m);
	int r = engine_start(m, incoming, uri, byo, set, errp);

	route_leave(prev);
	return r;
}

int mfd_migrate(mfd_migration *m, const char *uri, mfd_error **errp)
{
	return engine_start_routed(m, false, uri, false, NULL, errp);
}

int mfd_migrate_incoming(mfd_migration *m, const char *uri, mfd_error **errp)
{
	return engine_start_routed(m, true, uri, false, NULL, errp);
}

int mfd_migrate_channels(mfd_migration *m, const struct mfd_channel_set *set, mfd_error **errp)
{
	return engine_start_routed(m, false, NULL, true, set, errp);
}

int mfd_migrate_incoming_channels(mfd_migration *m, const struct mfd_channel_set *set,
				  mfd_error **errp)
{
	return engine_start_routed(m, true, NULL, true, set, errp);
}

int mfd_migration_listen_uri(mfd_migration *m, char *buf, size_t len)
{
	struct mfd_engine *e = m ? m->engine : NULL;
	int r = 0;

	if (!e || !e->incoming || !buf)
		return MFD_ESTATE;
	pthread_mutex_lock(&e->lock);
	if (!e->dst.listen_uri[0])
		r = MFD_ESTATE;
	else if (strlen(e->dst.listen_uri) >= len)
		r = MFD_ETOOBIG;
	else
		strcpy(buf, e->dst.listen_uri);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int mfd_migration_wait(mfd_migration *m, int timeout_ms, mfd_error **errp)
{
	struct mfd_engine *e = m ? m->engine : NULL;
	struct timespec dl;
	int r = 0;

	if (!e || atomic_load(&e->state_pub) == MFD_STATE_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "no migration was started");
	dl = eng_deadline_in(timeout_ms);
	pthread_mutex_lock(&e->lock);
	while (!e->ended && r == 0)
		r = timeout_ms > 0 ? pthread_cond_timedwait(&e->cond, &e->lock, &dl)
				   : pthread_cond_wait(&e->cond, &e->lock);
	bool ended = e->ended;
	enum mfd_state st = e->state;
	int code = e->err ? mfd_error_code(e->err) : 0;

	if (ended && e->err && errp && !*errp)
		*errp = error_copy(e->err);
	pthread_mutex_unlock(&e->lock);
	if (!ended)
		return mfd_error_set(errp, MFD_ERUNNING, "migration still %s after %d ms",
				     mfd_state_name(st), timeout_ms);
	/* Several threads may wait: one joins, the others wait for the join. */
	pthread_mutex_lock(&e->lock);
	if (e->thread_started && !e->joining) {
		e->joining = true;
		pthread_mutex_unlock(&e->lock);
		pthread_join(e->thread, NULL);
		pthread_mutex_lock(&e->lock);
		e->thread_started = false;
		e->joining = false;
		pthread_cond_broadcast(&e->cond);
	}
	while (e->thread_started)
		pthread_cond_wait(&e->cond, &e->lock);
	pthread_mutex_unlock(&e->lock);
	if (st == MFD_STATE_COMPLETED)
		return 0;
	return code ? code : MFD_ECANCELED;
}

static void migrate_cancel(mfd_migration *m)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;

	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	bool running = e->state != MFD_STATE_NONE && !eng_terminal(e->state) && !e->ended;

	enum mfd_state st = e->state;

	if (running && pc_running(e) && st != MFD_STATE_POSTCOPY_PAUSED &&
	    st != MFD_STATE_POSTCOPY_RECOVER) {
		/* Ending postcopy would lose the VM (its memory is split between the
		 * hosts): cancel pauses it instead, as QEMU's migrate-pause. */
		link_move(e, LINK_PAUSE);
		pthread_mutex_unlock(&e->lock);
		log_warn("postcopy: cancel pauses the migration; cancel again to abandon it");
		eng_break_connections(e);
		return;
	}
	pthread_mutex_unlock(&e->lock);
	if (!running)
		return;
	atomic_store(&e->user_cancel, true);
	atomic_store(&e->cancel, true);
	if (!e->incoming)
		eng_set_state(e, MFD_STATE_CANCELLING);
	else if (e->use_rp && commit_at(e) != DC_ANSWERED)
		/* Best effort, so the source can say why. */
		eng_rp_send_result(e, MFD_ECANCELED, "migration cancelled on the destination", NULL);
	eng_shutdown_all(e);
	pthread_mutex_lock(&e->lock);
	pthread_cond_broadcast(&e->cond);	/* a paused postcopy waits on it */
	pthread_mutex_unlock(&e->lock);
}

static int migrate_start_postcopy(mfd_migration *m, mfd_error **errp)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	int r = 0;

	if (!e || e->incoming || atomic_load(&e->state_pub) == MFD_STATE_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "mfd_migrate_start_postcopy: no outgoing "
				     "migration");
	pthread_mutex_lock(&e->lock);
	if (!e->postcopy)
		r = mfd_error_set(errp, MFD_ESTATE, "postcopy-ram was off when the migration "
				  "started");
	else if (e->state != MFD_STATE_SETUP && e->state != MFD_STATE_ACTIVE)
		r = mfd_error_set(errp, MFD_ESTATE, "postcopy can start only during precopy (the "
				  "migration is %s)", mfd_state_name(e->state));
	else
		atomic_store(&e->src.pc_want, true);
	pthread_mutex_unlock(&e->lock);
	return r;
}

static int request_resume(mfd_migration *m, bool incoming, const char *uri, mfd_error **errp)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	const char *fn = incoming ? "mfd_migrate_recover" : "mfd_migrate_resume";
	mfd_listener *l = NULL, *old = NULL;
	int r = 0;

	if (!e || !uri || e->incoming != incoming ||
	    atomic_load(&e->state_pub) == MFD_STATE_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "%s: no %s migration", fn,
				     incoming ? "incoming" : "outgoing");
	if (strlen(uri) >= sizeof(e->resume_uri))
		return mfd_error_set(errp, MFD_EINVAL, "%s: URI too long", fn);
	if (atomic_load(&e->state_pub) != MFD_STATE_POSTCOPY_PAUSED)
		return mfd_error_set(errp, MFD_ESTATE, "%s: the migration is %s, not postcopy-paused",
				     fn, mfd_state_name((enum mfd_state)atomic_load(&e->state_pub)));
	if (incoming && (r = mfd_listener_new(uri, &l, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	if (e->state != MFD_STATE_POSTCOPY_PAUSED || !link_move(e, LINK_RESUME)) {
		r = mfd_error_set(errp, MFD_ESTATE, "%s: a recovery is already under way", fn);
	} else {
		if (incoming) {
			old = e->dst.listener;
			e->dst.listener = l;
			l = NULL;
			snprintf(e->dst.listen_uri, sizeof(e->dst.listen_uri), "%s",
				 mfd_listener_uri(e->dst.listener));
		} else {
			strcpy(e->uri, uri);
		}
		strcpy(e->resume_uri, uri);
	}
	pthread_mutex_unlock(&e->lock);
	mfd_listener_free(old);
	mfd_listener_free(l);
	return r;
}

int mfd_migrate_recover(mfd_migration *m, const char *uri, mfd_error **errp)
{
	struct log_route *prev = route_enter(m);
	int r = request_resume(m, true, uri, errp);

	route_leave(prev);
	return r;
}

int mfd_migrate_resume(mfd_migration *m, const char *uri, mfd_error **errp)
{
	struct log_route *prev = route_enter(m);
	int r = request_resume(m, false, uri, errp);

	route_leave(prev);
	return r;
}

void mfd_migrate_cancel(mfd_migration *m)
{
	struct log_route *prev = route_enter(m);

	migrate_cancel(m);
	route_leave(prev);
}

int mfd_migrate_start_postcopy(mfd_migration *m, mfd_error **errp)
{
	struct log_route *prev = route_enter(m);
	int r = migrate_start_postcopy(m, errp);

	route_leave(prev);
	return r;
}

enum mfd_state mfd_migration_state(mfd_migration *m)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;

	return e ? (enum mfd_state)atomic_load(&e->state_pub) : MFD_STATE_NONE;
}

/* The first layout of struct mfd_vmm_hooks ended with this member; members
 * appended since are NULL for a program built with that layout. */
#define VMM_HOOKS_FIRST_SIZE MFD_OFFSETOF_END(mfd_vmm_hooks, state_changed)

int mfd_migration_set_hooks(mfd_migration *m, const mfd_vmm_hooks *hooks, void *opaque,
			    mfd_error **errp)
{
	mfd_vmm_hooks in;
	int r;

	if (!m || !hooks)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_migration_set_hooks: NULL argument");
	r = util_struct_in(&in, sizeof(in), hooks, VMM_HOOKS_FIRST_SIZE,
			   "mfd_migration_set_hooks", "mfd_vmm_hooks", errp);
	if (r < 0)
		return r;
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "hooks cannot change while migrating");
	m->hooks = in;
	m->hooks_opaque = opaque;
	return 0;
}

static void engine_free(mfd_migration *m)
{
	struct mfd_engine *e = m->engine;

	if (!e)
		return;
	if (e->thread_started) {
		mfd_migrate_cancel(m);
		pthread_join(e->thread, NULL);
	}
	engine_drop_state(e);
	free(e);
	m->engine = NULL;
}

/* mfd_migration_free() calls this through m->teardown: the engine and the
 * dirty trackers its migrations left. */
static void engine_teardown(mfd_migration *m)
{
	engine_free(m);
	ramsec_free_trackers(m);
}
