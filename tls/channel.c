/* SPDX-License-Identifier: MIT */
/*
 * The TLS channel: an mfd_channel that runs OpenSSL over any other channel.
 *
 * OpenSSL never touches the inner channel.  It reads ciphertext from one
 * byte queue and writes ciphertext to another (each behind a small BIO of
 * ours, tls/bio.c); this file moves the bytes between those queues and the
 * inner channel, in place: the socket is written from the queue OpenSSL
 * filled and read into the queue OpenSSL reads, one copy each way between
 * OpenSSL's record buffer and the socket (memory BIOs took two).
 *
 * Keeping OpenSSL off the inner channel is what lets one thread block
 * reading it while another thread writes (the main channel carries the
 * stream one way and the return path the other way on one connection),
 * which an SSL on a socket BIO cannot do: an SSL* is not safe for
 * simultaneous use, so every SSL_* call is made under ssl_lock, and
 * ssl_lock is never held across blocking inner I/O.
 *
 * Ciphertext leaves in the order OpenSSL produced it because only the
 * holder of out_lock takes it from the write queue and writes it out (lock
 * order: out_lock, then ssl_lock).  SSL_read can produce ciphertext too (a
 * TLS 1.3 KeyUpdate answer); the reader never waits for out_lock, because a
 * writer blocked on a full socket would then stop us reading, and the peer,
 * built the same way, would stop reading too.  Instead a reader leaves its
 * output to any writer in progress (writers send everything pending before
 * they leave) and sends it itself only when no writer is active.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "core/channel.h"
#include "core/util.h"
#include "tls/internal.h"

#if MFD_HAVE_TLS

#include <pthread.h>
#include <stdatomic.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* Latch a fatal error (ssl_lock held) and return its code with a copy in errp. */
static int latch_fatal(struct tls_chan *tc, const char *name, const char *phase,
		       const struct ssl_fail *f, mfd_error **errp)
{
	if (!tc->fatal)
		tls_error(tc, name, phase, f, &tc->fatal);
	error_propagate(errp, error_copy(tc->fatal));
	return mfd_error_code(tc->fatal);
}

static int report_latched(const mfd_error *latched, mfd_error **errp)
{
	error_propagate(errp, error_copy(latched));
	return mfd_error_code(latched);
}

static size_t pending_out(struct tls_chan *tc)
{
	size_t n;

	pthread_mutex_lock(&tc->ssl_lock);
	n = BIO_ctrl_pending(tc->wbio);
	pthread_mutex_unlock(&tc->ssl_lock);
	return n;
}

/*
 * Send every queued ciphertext byte.  Caller holds out_lock.  The queue
 * OpenSSL filled is swapped for the empty one we sent last time, so the
 * bytes go to the inner channel from where OpenSSL put them.
 */
static int drain_locked(struct tls_chan *tc, mfd_error **errp)
{
	if (tc->out_err)
		return report_latched(tc->out_err, errp);
	for (;;) {
		struct byteq full;
		struct iovec iov;
		mfd_error *err = NULL;
		int r;

		pthread_mutex_lock(&tc->ssl_lock);
		if (tls_q_len(&tc->outq) == 0) {
			pthread_mutex_unlock(&tc->ssl_lock);
			return 0;
		}
		full = tc->outq;
		tc->outq = tc->sending;
		tc->outq.head = tc->outq.tail = 0;
		pthread_mutex_unlock(&tc->ssl_lock);
		tc->sending = full;
		iov.iov_base = full.buf + full.head;
		iov.iov_len = tls_q_len(&full);
		tc->sending.head = tc->sending.tail = 0;
		r = channel_writev_full(tc->inner, &iov, 1, &err);
		if (r < 0) {
			/* Part of a record may be out: nothing can follow it. */
			if (!err)
				mfd_error_set(&err, r, "%s: write failed", mfd_channel_name(tc->inner));
			tc->out_err = err;
			return report_latched(tc->out_err, errp);
		}
	}
}

/* Enter a write-side call: readers now leave their output to us. */
static void out_enter(struct tls_chan *tc)
{
	atomic_fetch_add(&tc->writers, 1);
	pthread_mutex_lock(&tc->out_lock);
}

/*
 * Leave a write-side call.  A reader may have queued output after our last
 * drain, seen us active and left it: take it along before going.
 */
static void out_leave(struct tls_chan *tc)
{
	for (;;) {
		pthread_mutex_unlock(&tc->out_lock);
		atomic_fetch_sub(&tc->writers, 1);
		if (!pending_out(tc))
			return;
		out_enter(tc);
		if (drain_locked(tc, NULL) < 0) {
			pthread_mutex_unlock(&tc->out_lock);
			atomic_fetch_sub(&tc->writers, 1);
			return;
		}
	}
}

/* Reader side: send output our SSL_read produced, without waiting for a writer. */
static void reader_flush(struct tls_chan *tc)
{
	if (atomic_load(&tc->writers) > 0)
		return;
	if (pthread_mutex_trylock(&tc->out_lock) != 0)
		return;		/* a writer holds it and sends everything before leaving */
	/* A failure is latched in out_err for the writer; reading may go on. */
	drain_locked(tc, NULL);
	pthread_mutex_unlock(&tc->out_lock);
}

/* Read ciphertext from the inner channel into the read BIO. */
static int feed(struct tls_chan *tc, const char *name, bool handshake, mfd_error **errp)
{
	mfd_error *err = NULL;
	uint8_t *at;
	ssize_t n;
	bool room;

	pthread_mutex_lock(&tc->ssl_lock);
	room = tls_q_reserve(&tc->inq, TLS_IN_BUF);
	at = tc->inq.buf + tc->inq.tail;
	pthread_mutex_unlock(&tc->ssl_lock);
	if (!room)
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory buffering %d bytes",
				     name, TLS_IN_BUF);
	n = channel_read_some(tc->inner, at, TLS_IN_BUF, &err);

	if (n < 0) {
		if (handshake)
			mfd_error_prefix(err, "%s: TLS handshake", name);
		error_propagate(errp, err);
		return (int)n;
	}
	if (n == 0) {
		if (handshake)
			return mfd_error_set(errp, MFD_EEOF, "%s: TLS handshake: the %s closed the "
					     "connection (does it expect TLS? did it refuse us?)",
					     name, tls_peer_word(tc));
		return mfd_error_set(errp, MFD_EEOF, "%s: peer closed without TLS close_notify "
				     "(truncated)", name);
	}
	pthread_mutex_lock(&tc->ssl_lock);
	tc->inq.tail += (size_t)n;
	pthread_mutex_unlock(&tc->ssl_lock);
	return 0;
}

static int handshake(struct tls_chan *tc, const char *name, mfd_error **errp)
{
	for (;;) {
		struct ssl_fail f = { 0 };
		mfd_error *derr = NULL;
		int ret, dr;

		pthread_mutex_lock(&tc->ssl_lock);
		ERR_clear_error();
		ret = SSL_do_handshake(tc->ssl);
		if (ret != 1)
			tls_capture(tc->ssl, ret, &f);
		pthread_mutex_unlock(&tc->ssl_lock);
		/* Send what this step produced, alerts included: a refused peer learns why. */
		pthread_mutex_lock(&tc->out_lock);
		dr = drain_locked(tc, &derr);
		pthread_mutex_unlock(&tc->out_lock);
		if (ret == 1 || f.err == SSL_ERROR_WANT_READ) {
			if (dr < 0) {
				mfd_error_prefix(derr, "%s: TLS handshake", name);
				error_propagate(errp, derr);
				return dr;
			}
			if (ret == 1)
				return 0;
			if ((dr = feed(tc, name, true, errp)) < 0)
				return dr;
			continue;
		}
		mfd_error_free(derr);
		pthread_mutex_lock(&tc->ssl_lock);
		dr = tls_error(tc, name, "TLS handshake", &f, errp);
		pthread_mutex_unlock(&tc->ssl_lock);
		return dr;
	}
}

/* What the handshake alone does not enforce. */
static int after_handshake(struct tls_chan *tc, const char *name, mfd_error **errp)
{
	long v = SSL_get_verify_result(tc->ssl);

	if (tc->creds->kind == TLS_PSK) {
		/* An external PSK shows up as a resumed session; anything else means
		 * the key was not used. */
		if (!SSL_session_reused(tc->ssl))
			return mfd_error_set(errp, MFD_EPROTO, "%s: TLS handshake: the %s did not "
					     "use the pre-shared key", name, tls_peer_word(tc));
		return 0;
	}
	if (v != X509_V_OK)
		return mfd_error_set(errp, MFD_EPROTO, "%s: TLS handshake: %s certificate "
				     "verification failed: %s", name, tls_peer_word(tc),
				     X509_verify_cert_error_string(v));
	if (!SSL_get0_peer_certificate(tc->ssl) &&
	    (tc->role == MFD_TLS_CLIENT || tc->creds->verify_peer))
		return mfd_error_set(errp, MFD_EPROTO, "%s: TLS handshake: peer sent no "
				     "certificate", name);
	return 0;
}

static ssize_t tls_readv(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct tls_chan *tc = ch->priv;

	for (;;) {
		struct ssl_fail f = { .err = SSL_ERROR_NONE };
		size_t got = 0, want = 0;
		bool out;
		int r;

		if (channel_is_shut(ch))
			return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
		pthread_mutex_lock(&tc->ssl_lock);
		if (tc->fatal) {
			r = report_latched(tc->fatal, errp);
			pthread_mutex_unlock(&tc->ssl_lock);
			return r;
		}
		ERR_clear_error();
		for (int i = 0; i < iovcnt && f.err == SSL_ERROR_NONE; i++) {
			size_t off = 0;

			want += iov[i].iov_len;
			while (off < iov[i].iov_len) {
				size_t n = 0;
				int ret = SSL_read_ex(tc->ssl, (uint8_t *)iov[i].iov_base + off,
						      iov[i].iov_len - off, &n);

				if (!ret) {
					tls_capture(tc->ssl, ret, &f);
					break;
				}
				off += n;
				got += n;
			}
		}
		if (f.err == SSL_ERROR_SSL || f.err == SSL_ERROR_SYSCALL)
			r = latch_fatal(tc, ch->name, "TLS read", &f, got ? NULL : errp);
		else
			r = 0;
		out = BIO_ctrl_pending(tc->wbio) > 0;
		pthread_mutex_unlock(&tc->ssl_lock);
		if (out)
			reader_flush(tc);
		if (got)
			return (ssize_t)got;	/* a latched error waits for the next call */
		if (r < 0)
			return r;
		if (want == 0 || f.err == SSL_ERROR_ZERO_RETURN)
			return 0;	/* close_notify: the clean end of the data */
		if (f.err != SSL_ERROR_WANT_READ)
			return mfd_error_set(errp, MFD_EIO, "%s: TLS read: unexpected SSL state %d",
					     ch->name, f.err);
		if ((r = feed(tc, ch->name, false, errp)) < 0)
			return r;
	}
}

/* Encrypt one piece (up to TLS_WRITE_BATCH bytes).  Caller holds out_lock. */
static int encrypt(struct tls_chan *tc, mfd_channel *ch, const void *p, size_t len,
		   mfd_error **errp)
{
	struct ssl_fail f;
	size_t written = 0, queued;
	int ret, r = 0;

	pthread_mutex_lock(&tc->ssl_lock);
	if (tc->fatal) {
		r = report_latched(tc->fatal, errp);
		pthread_mutex_unlock(&tc->ssl_lock);
		return r;
	}
	ERR_clear_error();
	/* The write BIO grows as needed, so the whole piece is taken at once. */
	ret = SSL_write_ex(tc->ssl, p, len, &written);
	if (!ret) {
		tls_capture(tc->ssl, ret, &f);
		r = latch_fatal(tc, ch->name, "TLS write", &f, errp);
	} else if (written != len) {
		/* Cannot happen with a memory BIO; if it did, bytes would be lost. */
		r = mfd_error_set(&tc->out_err, MFD_EIO, "%s: TLS write took %zu of %zu bytes",
				  ch->name, written, len);
		report_latched(tc->out_err, errp);
	}
	queued = BIO_ctrl_pending(tc->wbio);
	pthread_mutex_unlock(&tc->ssl_lock);
	if (r < 0)
		return r;
	return queued >= TLS_DRAIN_AT ? drain_locked(tc, errp) : 0;
}

/*
 * Whole records go straight from the caller's memory; pieces smaller than a
 * record are gathered in the stage so that a run of headers and pages does
 * not become a run of tiny records.
 */
static ssize_t tls_writev(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	struct tls_chan *tc = ch->priv;
	size_t done = 0, staged = 0;
	int r = 0;

	if (channel_is_shut(ch))
		return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
	out_enter(tc);
	if (tc->finished) {
		r = mfd_error_set(errp, MFD_ESTATE, "%s: write after mfd_channel_finish() (close_notify "
				  "already sent)", ch->name);
		goto out;
	}
	if (tc->out_err) {
		r = report_latched(tc->out_err, errp);
		goto out;
	}
	for (int i = 0; i < iovcnt; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t len = iov[i].iov_len;

		while (len) {
			size_t n;

			if (staged == 0 && len >= TLS_RECORD) {
				n = MFD_MIN(len, (size_t)TLS_WRITE_BATCH);
				n -= n % TLS_RECORD;
				if ((r = encrypt(tc, ch, p, n, errp)) < 0)
					goto out;
				done += n;
			} else {
				n = MFD_MIN(len, TLS_RECORD - staged);
				memcpy(tc->stage + staged, p, n);
				staged += n;
				if (staged == TLS_RECORD) {
					if ((r = encrypt(tc, ch, tc->stage, staged, errp)) < 0)
						goto out;
					done += staged;
					staged = 0;
				}
			}
			p += n;
			len -= n;
		}
	}
	if (staged) {
		if ((r = encrypt(tc, ch, tc->stage, staged, errp)) < 0)
			goto out;
		done += staged;
	}
	r = drain_locked(tc, errp);
out:
	out_leave(tc);
	return r < 0 ? r : (ssize_t)done;
}

static int tls_finish(mfd_channel *ch, mfd_error **errp)
{
	struct tls_chan *tc = ch->priv;
	struct ssl_fail f;
	int ret, r = 0;

	out_enter(tc);
	if (tc->finished)
		goto out;
	if (tc->out_err) {
		r = report_latched(tc->out_err, errp);
		goto out;
	}
	pthread_mutex_lock(&tc->ssl_lock);
	if (tc->fatal) {
		r = report_latched(tc->fatal, errp);
	} else {
		ERR_clear_error();
		/* A KeyUpdate still to be sent (ours, or the answer to the peer's)
		 * counts as "in init", where SSL_shutdown() refuses: send it first. */
		if (SSL_in_init(tc->ssl) && (ret = SSL_do_handshake(tc->ssl)) != 1) {
			tls_capture(tc->ssl, ret, &f);
			r = tls_error(tc, ch->name, "TLS close", &f, errp);
		} else if ((ret = SSL_shutdown(tc->ssl)) < 0) {
			/* 0 = our close_notify is queued, 1 = the peer's came first. */
			tls_capture(tc->ssl, ret, &f);
			r = tls_error(tc, ch->name, "TLS close", &f, errp);
		}
	}
	pthread_mutex_unlock(&tc->ssl_lock);
	if (r == 0) {
		tc->finished = true;
		r = drain_locked(tc, errp);
	}
	/* Then the transport's own end of data (a socket's SHUT_WR). */
	if (r == 0)
		r = mfd_channel_finish(tc->inner, errp);
out:
	out_leave(tc);
	return r;
}

static int tls_set_option(mfd_channel *ch, const char *name, int64_t value, mfd_error **errp)
{
	struct tls_chan *tc = ch->priv;

	return mfd_channel_set_option(tc->inner, name, value, errp);
}

static void tls_shutdown(mfd_channel *ch)
{
	struct tls_chan *tc = ch->priv;

	mfd_channel_shutdown(tc->inner);
}

static void tls_chan_free(struct tls_chan *tc)
{
	if (!tc)
		return;
	SSL_free(tc->ssl);	/* frees both BIOs; no close_notify (see finish) */
	mfd_error_free(tc->fatal);
	mfd_error_free(tc->out_err);
	pthread_mutex_destroy(&tc->ssl_lock);
	pthread_mutex_destroy(&tc->out_lock);
	if (tc->stage)
		OPENSSL_cleanse(tc->stage, TLS_RECORD);
	free(tc->stage);
	tls_q_free(&tc->outq);
	tls_q_free(&tc->sending);
	tls_q_free(&tc->inq);
	free(tc);
}

static void tls_close(mfd_channel *ch)
{
	struct tls_chan *tc = ch->priv;
	mfd_channel *inner = tc->inner;
	bool own = tc->own_inner;

	tls_chan_free(tc);
	if (own)
		mfd_channel_free(inner);
}

static const struct mfd_channel_ops tls_ops = {
	.kind = "tls",
	.readv = tls_readv,
	.writev = tls_writev,
	.shutdown = tls_shutdown,
	.finish = tls_finish,
	.set_option = tls_set_option,
	.close = tls_close,
};

/* Client: what the server certificate must match, and SNI for names. */
static int set_peer_name(struct tls_chan *tc, const char *name, const char *hostname,
			 mfd_error **errp)
{
	unsigned char addr[16];
	char host[256];
	size_t len = strlen(hostname);
	bool ok;

	/* "[::1]" as in URIs means the address ::1. */
	if (len >= 2 && hostname[0] == '[' && hostname[len - 1] == ']') {
		hostname++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(host))
		return mfd_error_set(errp, MFD_EINVAL, "%s: TLS hostname of %zu bytes", name, len);
	memcpy(host, hostname, len);
	host[len] = '\0';
	snprintf(tc->peer_name, sizeof(tc->peer_name), "%s", host);
	if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1) {
		/* OpenSSL 3.0's SSL_set1_host() takes DNS names only. */
		ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tc->ssl), host) == 1;
	} else {
		SSL_set_hostflags(tc->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		ok = SSL_set1_host(tc->ssl, host) == 1 && SSL_set_tlsext_host_name(tc->ssl, host) == 1;
	}
	ERR_clear_error();
	if (!ok)
		return mfd_error_set(errp, MFD_EINVAL, "%s: '%s' is not a usable TLS hostname",
				     name, host);
	return 0;
}

int mfd_channel_tls_wrap(mfd_channel *inner, mfd_tls_creds *creds, const char *hostname,
			 unsigned flags, mfd_channel **out, mfd_error **errp)
{
	struct tls_chan *tc;
	char *name = NULL;
	int r;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_tls_wrap: out is NULL");
	*out = NULL;
	if (!inner || !creds)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_tls_wrap: NULL %s",
				     inner ? "credentials" : "channel");
	if (flags & ~MFD_CHANNEL_OWN_INNER)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_channel_tls_wrap: unknown flags 0x%x",
				     flags & ~MFD_CHANNEL_OWN_INNER);
	if (asprintf(&name, "tls:%s", mfd_channel_name(inner)) < 0)
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", mfd_channel_name(inner));
	if (creds->kind == TLS_X509 && creds->role == MFD_TLS_CLIENT && (!hostname || !*hostname)) {
		r = mfd_error_set(errp, MFD_EINVAL, "%s: no hostname to verify the server certificate "
				  "against (give the name or IP address it was issued for)", name);
		free(name);
		return r;
	}
	if (creds->kind == TLS_X509 && creds->n_authz && !creds->verify_peer) {
		r = mfd_error_set(errp, MFD_EINVAL, "%s: authz needs client certificates, but "
				  "verify-peer is off", name);
		free(name);
		return r;
	}
	tc = calloc(1, sizeof(*tc));
	if (!tc) {
		free(name);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", mfd_channel_name(inner));
	}
	pthread_mutex_init(&tc->ssl_lock, NULL);
	pthread_mutex_init(&tc->out_lock, NULL);
	atomic_init(&tc->writers, 0);
	tc->inner = inner;
	tc->creds = creds;
	tc->role = creds->role;
	tc->stage = malloc(TLS_RECORD);
	ERR_clear_error();
	tc->ssl = SSL_new(creds->ctx);
	tc->rbio = tls_qbio_new(&tc->inq);
	tc->wbio = tls_qbio_new(&tc->outq);
	if (!tls_q_reserve(&tc->inq, TLS_IN_BUF) || !tls_q_reserve(&tc->outq, TLS_OUT_BUF) ||
	    !tls_q_reserve(&tc->sending, TLS_OUT_BUF) || !tc->stage || !tc->ssl || !tc->rbio ||
	    !tc->wbio) {
		/* Not attached to the SSL yet, so SSL_free() would not free them. */
		BIO_free(tc->rbio);
		BIO_free(tc->wbio);
		r = mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", name);
		goto fail;
	}
	SSL_set_bio(tc->ssl, tc->rbio, tc->wbio);
	SSL_set_app_data(tc->ssl, &tc->note);
	atomic_store(&creds->in_use, true);
	if (creds->role == MFD_TLS_CLIENT) {
		SSL_set_connect_state(tc->ssl);
		if (creds->kind == TLS_X509 && (r = set_peer_name(tc, name, hostname, errp)) < 0)
			goto fail;
	} else {
		SSL_set_accept_state(tc->ssl);
	}
	if ((r = handshake(tc, name, errp)) < 0 || (r = after_handshake(tc, name, errp)) < 0)
		goto fail;
	ERR_clear_error();
	tc->own_inner = flags & MFD_CHANNEL_OWN_INNER;
	*out = channel_alloc(&tls_ops, name, tc);
	if (!*out) {
		r = mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", name);
		goto fail;
	}
	if (log_enabled(MFD_LOG_DEBUG))
		log_debug("%s: %s %s, %s", name, SSL_get_version(tc->ssl),
			      SSL_get_cipher_name(tc->ssl),
			      creds->kind == TLS_PSK ? "pre-shared key" : "x509");
	free(name);
	return 0;
fail:
	ERR_clear_error();
	tc->own_inner = false;	/* on failure the caller keeps the inner channel */
	tls_chan_free(tc);
	free(name);
	return r;
}

static struct tls_chan *tls_of(mfd_channel *ch)
{
	return ch && ch->ops == &tls_ops ? ch->priv : NULL;
}

int tls_request_key_update(mfd_channel *ch, mfd_error **errp)
{
	struct tls_chan *tc = tls_of(ch);
	int ok;

	if (!tc)
		return mfd_error_set(errp, MFD_EINVAL, "%s: not a TLS channel", mfd_channel_name(ch));
	pthread_mutex_lock(&tc->ssl_lock);
	ERR_clear_error();
	ok = SSL_key_update(tc->ssl, SSL_KEY_UPDATE_REQUESTED);
	ERR_clear_error();
	pthread_mutex_unlock(&tc->ssl_lock);
	if (!ok)
		return mfd_error_set(errp, MFD_ESTATE, "%s: no key update possible (TLS 1.3 only, "
				     "after the handshake)", ch->name);
	return 0;
}

const char *tls_channel_version(mfd_channel *ch)
{
	struct tls_chan *tc = tls_of(ch);
	const char *v;

	if (!tc)
		return NULL;
	pthread_mutex_lock(&tc->ssl_lock);
	v = SSL_get_version(tc->ssl);
	pthread_mutex_unlock(&tc->ssl_lock);
	return v;
}

const char *tls_channel_cipher(mfd_channel *ch)
{
	struct tls_chan *tc = tls_of(ch);
	const char *c;

	if (!tc)
		return NULL;
	pthread_mutex_lock(&tc->ssl_lock);
	c = SSL_get_cipher_name(tc->ssl);
	pthread_mutex_unlock(&tc->ssl_lock);
	return c;
}

#else /* !MFD_HAVE_TLS */

int mfd_channel_tls_wrap(mfd_channel *inner, mfd_tls_creds *creds, const char *hostname,
			 unsigned flags, mfd_channel **out, mfd_error **errp)
{
	(void)inner;
	(void)creds;
	(void)hostname;
	(void)flags;
	if (out)
		*out = NULL;
	return mfd_error_set(errp, MFD_ENOTSUP, "TLS channel: libmultifd was built without TLS "
			     "(configure --disable-tls)");
}

int tls_request_key_update(mfd_channel *ch, mfd_error **errp)
{
	(void)ch;
	return mfd_error_set(errp, MFD_ENOTSUP, "TLS: built without TLS");
}

const char *tls_channel_version(mfd_channel *ch)
{
	(void)ch;
	return NULL;
}

const char *tls_channel_cipher(mfd_channel *ch)
{
	(void)ch;
	return NULL;
}

#endif /* MFD_HAVE_TLS */
