/* SPDX-License-Identifier: MIT */
/*
 * The postcopy-preempt channel: the source's request server and the destination's
 * page reader, and the source's end of its setup.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

/*
 * Source, postcopy-preempt: the destination writes its page requests on the
 * preempt channel, the other way from the pages; this thread reads each and
 * answers it at once on the same channel.  Neither direction shares a socket
 * with the bulk push (on the main socket a request took up to milliseconds
 * to reach the source's reader while the push kept that socket busy).
 */
static void *pre_server(void *arg)
{
	struct mfd_engine *e = arg;
	mfd_stream *s = NULL;
	mfd_error *err = NULL;
	mfd_channel *ch;
	int r;

	pthread_mutex_lock(&e->lock);
	ch = e->pre_ch;
	pthread_mutex_unlock(&e->lock);
	r = ch ? mfd_stream_new(ch, MFD_STREAM_READ, &s, &err)
	       : mfd_error_set(&err, MFD_EEOF, "not connected");
	if (r == 0)
		stream_set_label(s, "preempt channel");
	while (r == 0) {
		uint16_t type, len;
		uint8_t buf[RP_REQ_PAGES_LEN];
		struct pc_req rq;

		if ((r = mfd_stream_get_be16(s, &type)) < 0 || (r = mfd_stream_get_be16(s, &len)) < 0)
			break;
		if (type != RP_REQ_PAGES) {
			r = mfd_error_set(&err, MFD_EPROTO, "preempt channel: message type %u (%u "
					  "bytes) from the destination; only REQ_PAGES (%u) travels "
					  "this way", type, len, RP_REQ_PAGES);
			break;
		}
		/* (A request of another length is refused before its body is read.) */
		if ((len == RP_REQ_PAGES_LEN && (r = mfd_stream_get_buf(s, buf, len)) < 0) ||
		    (r = eng_page_request_parse(e, "preempt channel", buf, len, &rq, &err)) < 0)
			break;
		pthread_mutex_lock(&e->pre_lock);
		r = e->src.pre_out ? ramsec_serve_request(e, e->src.pre_out, &e->src.ram.pre_last_block, &rq, &err)
			       : mfd_error_set(&err, MFD_EEOF, "not connected");
		if (e->src.pre_out)
			atomic_store(&e->src.pre_bytes, mfd_stream_bytes(e->src.pre_out));
		pthread_mutex_unlock(&e->pre_lock);
	}
	if (!err)
		mfd_stream_error(s, &err);
	int code = mfd_error_code(err);
	bool net = eng_network_error(e, code), done;

	done = commit_at(e) == SC_ANSWERED;
	/* Once EOF is out on the main stream, the pages are all sent and the
	 * return path tells how the migration ended: a lost preempt channel is
	 * news only before that (a destination with every page closes a silent
	 * one itself, and a real cut shows on the return path too). */
	if (done || engine_cancelled(e) ||
	    (net && (atomic_load(&e->src.pre_eos_sent) || commit_at(e) == SC_EOF))) {
		/* over: nothing to add */
	} else if (net && pc_running(e)) {
		/* Postcopy survives this: the migration thread pauses. */
		log_warn("postcopy: preempt channel lost: %s", mfd_error_message(err));
		pthread_mutex_lock(&e->lock);
		link_move(e, LINK_LOST);
		pthread_mutex_unlock(&e->lock);
		eng_break_connections(e);
	} else {
		mfd_error_prefix(err, "postcopy");
		eng_fail_all(e, err);
		err = NULL;
	}
	mfd_error_free(err);
	mfd_stream_free(s);
	return NULL;
}

/* Source: serve requests from the preempt channel from now on (after the
 * switch, and after a recovery). */
int eng_start_pre_server(struct mfd_engine *e, mfd_error **errp)
{
	if (!e->preempt || e->pre_started)
		return 0;
	/* Idle while the guest does not fault: no read deadline. */
	mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	if (util_thread_start(&e->pre_thread, pre_server, e, "mfd-preempt") != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: cannot start the preempt thread");
	e->pre_started = true;
	return 0;
}

/* Source: the preempt channel, right after the main channel (the destination
 * takes the next connection for it). */
int eng_open_preempt(struct mfd_engine *e, mfd_error **errp)
{
	uint8_t h[PREEMPT_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	mfd_stream *out = NULL;
	int r = eng_open_out(e, -2, errp);

	if (r == 0) {
		eng_preempt_hello_encode(e, h);
		r = channel_writev_full(e->pre_ch, &iov, 1, errp);
	}
	if (r == 0 && (r = mfd_stream_new(e->pre_ch, MFD_STREAM_WRITE, &out, errp)) == 0) {
		stream_set_label(out, "preempt channel");
		pthread_mutex_lock(&e->pre_lock);
		e->src.pre_out = out;
		e->src.ram.pre_last_block = -1;
		pthread_mutex_unlock(&e->pre_lock);
	}
	if (r < 0)
		mfd_error_prefix(errp ? *errp : NULL, "preempt channel");
	return r;
}

/* Destination: requested pages arriving on the preempt channel. */
static void *pre_reader(void *arg)
{
	struct mfd_engine *e = arg;
	uint8_t *bounce = malloc(PC_PAGE_MAX);
	mfd_error *err = NULL;
	int last = -1, r = bounce ? 0 : mfd_error_set(&err, MFD_ENOMEM, "preempt: out of memory");


	while (r == 0) {
		uint64_t word;

		if ((r = mfd_stream_get_be64(e->dst.pre_in, &word)) < 0) {
			mfd_stream_error(e->dst.pre_in, &err);
			break;
		}
		if ((word & RAM_FLAGS_MASK) == RAM_FLAG_EOS)
			break;
		r = ramsec_load_pc_record(e, e->dst.pre_in, word, &last, bounce, &err);
		if (r < 0 && !err)
			mfd_stream_error(e->dst.pre_in, &err);
	}
	free(bounce);
	if (r < 0 && atomic_load(&e->dst.pre_abandoned)) {
		/* Closed on purpose after the main stream: the loader decides. */
	} else if (r < 0 && eng_network_error(e, r)) {
		/* The loader pauses; we are restarted after recovery. */
		log_warn("postcopy: preempt channel lost: %s", mfd_error_message(err));
		eng_break_connections(e);
	} else if (r < 0) {
		mfd_error_prefix(err, "postcopy: preempt channel");
		eng_fail_all(e, err);
		err = NULL;
	}
	mfd_error_free(err);
	pthread_mutex_lock(&e->lock);
	e->dst.pre_reader_left = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

int eng_start_pre_reader(struct mfd_engine *e, mfd_error **errp)
{
	if (!e->preempt || e->pre_started || pc_at(e) < PC_LISTENING)
		return 0;
	pthread_mutex_lock(&e->lock);
	e->dst.pre_reader_left = false;
	pthread_mutex_unlock(&e->lock);
	if (util_thread_start(&e->pre_thread, pre_reader, e, "mfd-preempt") != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: cannot start the preempt thread");
	e->pre_started = true;
	return 0;
}
