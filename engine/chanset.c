/* SPDX-License-Identifier: MIT */
/*
 * The channel set: every connection of a migration, opened (source), published
 * so that a cancel can reach it, and released.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

/* Test hook (engine.h): wraps each channel as it is created.  Set only while
 * no migration runs, so the threads that read it were created after it. */
static engine_wrap_fn chan_wrap_fn;

static void *chan_wrap_opaque;

void engine_set_channel_wrapper(engine_wrap_fn fn, void *opaque)
{
	chan_wrap_fn = fn;
	chan_wrap_opaque = opaque;
}

int eng_wrap_channel(struct mfd_engine *e, mfd_channel *ch, enum engine_chan_kind kind,
			unsigned index, mfd_error **errp)
{
	return chan_wrap_fn ? chan_wrap_fn(chan_wrap_opaque, ch, e->m, e->incoming, kind, index,
					   errp) : 0;
}

/*
 * Once connected, a channel may stay quiet as long as the guest is: the main
 * channel's return path between messages, a multifd channel between passes,
 * the preempt channel while the guest does not fault (postcopy can push for
 * minutes without one request).  Each side clears the deadline here, on the
 * first connection as after a recovery.
 */
void eng_relax_timeouts(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mfd_channel_set_option(e->main_ch, "timeout-ms", 0, NULL);
	if (e->pre_ch)
		mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	for (unsigned i = 0; i < 256; i++)
		if (e->mf[i])
			mfd_channel_set_option(e->mf[i], "timeout-ms", 0, NULL);
	pthread_mutex_unlock(&e->lock);
}

static int tune_channel(struct mfd_engine *e, mfd_channel *ch)
{
	int64_t t = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];

	/* Stalled I/O becomes an error instead of a hang; not every transport
	 * has a peer timeout. */
	mfd_channel_set_option(ch, "timeout-ms", t, NULL);
	mfd_channel_set_option(ch, "peer-timeout-ms", t, NULL);
	return 0;
}

/*
 * Connect one channel of the source, with TLS when configured.  slot -1 is the
 * main channel, else a multifd channel; both ends are published before the
 * handshake so a cancel can interrupt it.
 */
int eng_open_out(struct mfd_engine *e, int slot, mfd_error **errp)
{
	int64_t t = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	mfd_channel *raw = NULL, *ch = NULL;
	int r;

	if (engine_cancelled(e))
		return mfd_error_set(errp, MFD_ECANCELED, "migration cancelled");
	/* The VMM's own channel for this slot, once; else connect (always after
	 * a recovery, which reconnects by URI). */
	pthread_mutex_lock(&e->lock);
	mfd_channel **given = slot == -2 ? &e->src.given_pre : slot < 0 ? &e->src.given_main
			      : &e->src.given_mf[slot];

	raw = *given;
	*given = NULL;
	pthread_mutex_unlock(&e->lock);
	if (!raw && (r = channel_connect_cancellable(e->uri, (int)t, e->cancel_fd, &raw, errp)) < 0)
		return r;
	if ((r = eng_wrap_channel(e, raw, slot == -2 ? ENGINE_CH_PREEMPT : slot < 0 ? ENGINE_CH_MAIN
				: ENGINE_CH_MULTIFD, slot < 0 ? 0 : (unsigned)slot, errp)) < 0) {
		mfd_channel_free(raw);
		return r;
	}
	tune_channel(e, raw);
	if (slot >= 0 && e->mcfg.zero_copy &&
	    (r = mfd_channel_set_option(raw, "zero-copy", 1, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "zero-copy-send");
		mfd_channel_free(raw);
		return r;
	}
	if (slot == -2)
		PUBLISH(e, pre_raw, raw);
	else if (slot < 0)
		PUBLISH(e, main_raw, raw);
	else
		PUBLISH(e, mf_raw[slot], raw);
	if (!e->creds) {
		ch = raw;
	} else {
		const char *name = e->m->params.s[MFD_P_TLS_HOSTNAME];

		if (!*name)
			name = e->tls_host;
		if ((r = mfd_channel_tls_wrap(raw, e->creds, name, 0, &ch, errp)) < 0)
			return r;
	}
	pthread_mutex_lock(&e->lock);
	if (slot == -2) {
		e->pre_ch = ch;
		if (ch == raw)
			e->pre_raw = NULL;
	} else if (slot < 0) {
		e->main_ch = ch;
		if (ch == raw)
			e->main_raw = NULL;
	} else {
		e->mf[slot] = ch;
		if (ch == raw)
			e->mf_raw[slot] = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Postcopy lost a connection: every thread on it must notice. */
void eng_break_connections(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mfd_channel_shutdown(e->main_ch);
	mfd_channel_shutdown(e->main_raw);
	mfd_channel_shutdown(e->pre_ch);
	mfd_channel_shutdown(e->pre_raw);
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

void eng_release_channels(struct mfd_engine *e)
{
	/* Lock order everywhere: pre_lock, out_lock, lock. */
	pthread_mutex_lock(&e->pre_lock);
	pthread_mutex_lock(&e->out_lock);
	pthread_mutex_lock(&e->lock);
	mfd_stream_free(e->out);
	mfd_stream_free(e->in);
	mfd_stream_free(e->dst.pre_in);
	e->out = e->in = e->dst.pre_in = NULL;
	mfd_stream_free(e->src.pre_out);
	e->src.pre_out = NULL;
	mfd_channel_free(e->pre_ch);
	mfd_channel_free(e->pre_raw);
	e->pre_ch = e->pre_raw = NULL;
	multifd_send_free(e->src.send);
	multifd_recv_free(e->dst.recv);
	e->src.send = NULL;
	e->dst.recv = NULL;
	if (e->incoming)	/* every thread that places pages is gone */
		ram_recvmap_free(e->m->blocks, e->m->nblocks);
	/* TLS wrappers go before the channels they wrap. */
	mfd_channel_free(e->main_ch);
	mfd_channel_free(e->main_raw);
	e->main_ch = e->main_raw = NULL;
	for (unsigned i = 0; i < 256; i++) {
		mfd_channel_free(e->mf[i]);
		mfd_channel_free(e->mf_raw[i]);
		e->mf[i] = e->mf_raw[i] = NULL;
	}
	mfd_listener_free(e->dst.listener);
	e->dst.listener = NULL;
	mfd_channel_free(e->src.given_main);
	mfd_channel_free(e->src.given_pre);
	e->src.given_main = e->src.given_pre = NULL;
	for (unsigned i = 0; i < 256; i++) {
		mfd_channel_free(e->src.given_mf[i]);
		e->src.given_mf[i] = NULL;
	}
	mfd_tls_creds_free(e->creds);
	e->creds = NULL;
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&e->out_lock);
	pthread_mutex_unlock(&e->pre_lock);
}
