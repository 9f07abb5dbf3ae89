/* SPDX-License-Identifier: MIT */
/*
 * The destination's connections: each accepted connection is screened (its hello
 * read within a deadline, checked against the session) and taken as the main,
 * preempt or a multifd channel, or refused as a stray while the wait goes on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

static int wrap_in(struct mfd_engine *e, mfd_channel *raw, mfd_channel **out, mfd_error **errp)
{
	/* timeout-ms is the gather's (time left before its deadline): keep it. */
	mfd_channel_set_option(raw, "peer-timeout-ms", e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS],
			       NULL);
	if (!e->creds) {
		*out = raw;
		return 0;
	}
	return mfd_channel_tls_wrap(raw, e->creds, NULL, 0, out, errp);
}

/*
 * Stray connections (a port scan, a health check, junk, a failed TLS
 * handshake, another session) are refused and logged, and the destination
 * keeps waiting for its source: up to MAX_STRAYS of them per setup or
 * recovery, then it fails.  Connections are identified one at a time in
 * arrival order (a multifd hello can only be checked after the main one),
 * each within hello_ms(): a silent one holds up the source's behind it, which
 * wait in the listen backlog, for that long at most.
 */
#define MAX_STRAYS 64

#define HELLO_MS 5000

/* HELLO_MS, or half the channel timeout when that is shorter. */
static int hello_ms(struct mfd_engine *e)
{
	int64_t t = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];

	return t > 0 && t / 2 < HELLO_MS ? (t > 1 ? (int)(t / 2) : 1) : HELLO_MS;
}

int eng_gather(struct mfd_engine *e, unsigned count, int timeout_ms,
		  int (*screen)(mfd_channel *, void *, bool *, mfd_error **), mfd_channel **slots,
		  mfd_error **errp)
{
	const struct listener_screen scr = {
		.identify = screen, .opaque = e, .hello_ms = hello_ms(e),
		.refused = &e->dst.strays, .max_refused = MAX_STRAYS,
	};

	return listener_gather_screened(e->dst.listener, count, timeout_ms, &scr, slots, errp);
}


/* The end of a main channel's screening (@r its result): refused, its TLS
 * wrapper goes (the raw channel is the listener's to close); accepted, it is
 * published so that a cancel can reach it. */
static int take_main(struct mfd_engine *e, mfd_channel *raw, mfd_channel *ch, int r)
{
	if (r < 0) {
		if (ch != raw)
			mfd_channel_free(ch);
		return r;
	}
	pthread_mutex_lock(&e->lock);
	e->main_ch = ch;
	e->main_raw = ch != raw ? raw : NULL;
	pthread_mutex_unlock(&e->lock);
	if (engine_cancelled(e))
		eng_shutdown_all(e);
	return 0;
}
/* The main channel: fixes the session.  Published only once it is ours. */
int eng_screen_main(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct mfd_multifd_recv *recv = NULL;
	mfd_channel *ch = NULL;
	int r;

	if ((r = eng_wrap_channel(e, raw, ENGINE_CH_MAIN, 0, errp)) < 0)
		return r;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0) {
		*stray = true;	/* a failed TLS handshake */
		return r;
	}
	r = eng_main_hello_check(e, ch, stray, errp);
	if (r == 0 && e->use_multifd)
		r = multifd_recv_new(&e->mcfg, e->m->blocks, e->m->nblocks, &recv, errp);
	if (r == 0 && recv && e->dst.lazy)
		multifd_recv_defer_blocks(recv);
	if ((r = take_main(e, raw, ch, r)) == 0)
		PUBLISH(e, dst.recv, recv);
	return r;
}

/* A multifd channel: its slot is its id. */
int eng_screen_mf(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	mfd_channel *ch = NULL;
	int r;

	/* The test hook's index is the arrival order, which is the channel id:
	 * the source connects them in order, one hello at a time. */
	unsigned arrived = 0;

	for (unsigned i = 0; i < e->nchan; i++)
		arrived += e->mf[i] != NULL;
	if ((r = eng_wrap_channel(e, raw, ENGINE_CH_MULTIFD, arrived, errp)) < 0)
		return r;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0) {
		*stray = true;
		return r;
	}
	r = multifd_recv_identify_screened(ch, e->dst.recv, stray, errp);
	if (r < 0) {
		if (ch != raw)
			mfd_channel_free(ch);
		return r;
	}
	/* Unpublished by eng_incoming_run() before anything frees it. */
	pthread_mutex_lock(&e->lock);
	e->mf[r] = ch;
	if (ch != raw)
		e->mf_raw[r] = raw;
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* The preempt channel (the connection after the main one): belongs to the
 * session the main hello fixed. */
static int screen_preempt(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t h[PREEMPT_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	mfd_channel *ch = NULL;
	mfd_stream *in = NULL;
	int bad, r;

	if ((r = eng_wrap_channel(e, raw, ENGINE_CH_PREEMPT, 0, errp)) < 0)
		return r;
	*stray = true;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0)
		return r;
	if ((r = channel_readv_full(ch, &iov, 1, errp)) < 0)
		goto out;
	if (load_be32(h) != PREEMPT_HELLO_MAGIC || load_be32(h + 4) != PREEMPT_HELLO_VERSION)
		r = mfd_error_set(errp, MFD_EBADMAGIC,
				  "preempt channel: hello 0x%08x version %u, expected 0x%08x version "
				  "%u (the source must connect it right after the main channel)",
				  load_be32(h), load_be32(h + 4), PREEMPT_HELLO_MAGIC,
				  PREEMPT_HELLO_VERSION);
	else if (memcmp(h + 32, e->mcfg.uuid, MFD_UUID_LEN) != 0 ||
		 util_consttime_memcmp(h + 48, e->mcfg.token, MFD_TOKEN_LEN) != 0)
		r = mfd_error_set(errp, MFD_EPROTO,
				  "preempt channel: it belongs to another session (UUID or token)");
	else if ((*stray = false, bad = eng_first_nonzero(h, 8, 32)) >= 0 ||
		 (bad = eng_first_nonzero(h, 80, PREEMPT_HELLO_SIZE)) >= 0)
		r = mfd_error_set(errp, MFD_EPROTO, "preempt channel: reserved hello byte %d is "
				  "0x%02x, not 0", bad, h[bad]);
	if (r == 0 && (r = mfd_stream_new(ch, MFD_STREAM_READ, &in, errp)) == 0) {
		stream_set_label(in, "preempt channel");
		pthread_mutex_lock(&e->lock);
		e->pre_ch = ch;
		e->pre_raw = ch != raw ? raw : NULL;
		e->dst.pre_in = in;
		pthread_mutex_unlock(&e->lock);
		if (engine_cancelled(e))
			eng_shutdown_all(e);
	}
out:
	if (r < 0 && ch != raw)
		mfd_channel_free(ch);
	return r;
}

/* Destination: take the preempt channel. */
int eng_accept_preempt(struct mfd_engine *e, mfd_error **errp)
{
	mfd_channel *raw = NULL;
	int r = eng_gather(e, 1, (int)e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS], screen_preempt, &raw,
		       errp);

	if (r < 0)
		mfd_error_prefix(errp ? *errp : NULL, "preempt channel");
	return r;
}

/* Recovery: the source that reconnects must be this migration's. */
int eng_screen_resume(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t h[MAIN_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	mfd_channel *ch = NULL;
	int r;

	if ((r = eng_wrap_channel(e, raw, ENGINE_CH_MAIN, 0, errp)) < 0)
		return r;
	*stray = true;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0)
		return r;
	if ((r = channel_readv_full(ch, &iov, 1, errp)) < 0)
		;
	else if (load_be32(h) != MAIN_HELLO_MAGIC || load_be32(h + 4) != MAIN_HELLO_VERSION ||
		 !(load_be32(h + 8) & MAIN_HELLO_RESUME))
		r = mfd_error_set(errp, MFD_EPROTO, "recovery: the connection is not a libmultifd "
				  "source resuming postcopy (magic 0x%08x, flags 0x%x)",
				  load_be32(h), load_be32(h + 8));
	else if (memcmp(h + 32, e->mcfg.uuid, MFD_UUID_LEN) != 0 ||
		 util_consttime_memcmp(h + 48, e->mcfg.token, MFD_TOKEN_LEN) != 0)
		r = mfd_error_set(errp, MFD_EPROTO, "recovery: the source belongs to another "
				  "migration (session UUID or token differs)");
	return take_main(e, raw, ch, r);
}
