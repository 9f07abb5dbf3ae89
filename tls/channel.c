/* SPDX-License-Identifier: MIT */
/*
 * The TLS channel: an mfd_channel that runs OpenSSL over any other channel.
 *
 * OpenSSL never touches the inner channel.  It reads ciphertext from one
 * byte queue and writes ciphertext to another (each behind a small BIO of
 * ours, below); this file moves the bytes between those queues and the
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
#include "tls/tls.h"

#if MFD_HAVE_TLS

#include <pthread.h>
#include <stdatomic.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define TLS_RECORD 16384			/* the largest TLS plaintext record */
#define TLS_WRITE_BATCH (4 * TLS_RECORD)	/* plaintext per SSL_write_ex() */
#define TLS_DRAIN_AT (16 * TLS_RECORD)		/* queued ciphertext that triggers a send */
#define TLS_IN_BUF (256 * 1024)			/* the most one inner read asks for */
#define TLS_OUT_BUF (512 * 1024)		/* initial capacity of a write queue */

/*
 * A byte queue: [head, tail) holds data, [tail, cap) is free.  OpenSSL sees
 * it through qbio_new()'s BIO; who may touch it when is said where the
 * queues live (struct tls_chan).
 */
struct byteq {
	uint8_t *buf;
	size_t cap, head, tail;
};

static size_t q_len(const struct byteq *q)
{
	return q->tail - q->head;
}

/* Room for @n more bytes at the tail; false when out of memory. */
static bool q_reserve(struct byteq *q, size_t n)
{
	if (q->head == q->tail)
		q->head = q->tail = 0;
	if (q->cap - q->tail >= n)
		return true;
	if (q->head) {	/* slide the data to the front first */
		memmove(q->buf, q->buf + q->head, q_len(q));
		q->tail -= q->head;
		q->head = 0;
		if (q->cap - q->tail >= n)
			return true;
	}
	size_t cap = q->cap ? q->cap : TLS_OUT_BUF;

	while (cap - q->tail < n)
		cap *= 2;
	uint8_t *b = realloc(q->buf, cap);

	if (!b)
		return false;
	q->buf = b;
	q->cap = cap;
	return true;
}

static void q_free(struct byteq *q)
{
	free(q->buf);	/* ciphertext only: nothing to wipe */
	memset(q, 0, sizeof(*q));
}

/*
 * The BIO over a byte queue.  OpenSSL writes records to the tail of the
 * write queue and reads from the head of the read queue; an empty read
 * queue asks it to retry, like an empty memory BIO, so SSL_read() reports
 * SSL_ERROR_WANT_READ and we feed it from the inner channel.
 */
static int qbio_write(BIO *b, const char *data, size_t len, size_t *written)
{
	struct byteq *q = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (!q_reserve(q, len))
		return 0;
	memcpy(q->buf + q->tail, data, len);
	q->tail += len;
	*written = len;
	return 1;
}

static int qbio_read(BIO *b, char *data, size_t len, size_t *readbytes)
{
	struct byteq *q = BIO_get_data(b);
	size_t n = MFD_MIN(len, q_len(q));

	BIO_clear_retry_flags(b);
	if (n == 0) {
		BIO_set_retry_read(b);
		return 0;
	}
	memcpy(data, q->buf + q->head, n);
	q->head += n;
	*readbytes = n;
	return 1;
}

static long qbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct byteq *q = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_PENDING:
		return (long)q_len(q);
	case BIO_CTRL_WPENDING:
		return 0;
	case BIO_CTRL_FLUSH:
	case BIO_CTRL_DUP:
		return 1;
	default:
		return 0;
	}
}

static int qbio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static BIO_METHOD *qbio_method;
static pthread_once_t qbio_once = PTHREAD_ONCE_INIT;

static void qbio_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mfd byte queue");

	if (m && BIO_meth_set_write_ex(m, qbio_write) && BIO_meth_set_read_ex(m, qbio_read) &&
	    BIO_meth_set_ctrl(m, qbio_ctrl) && BIO_meth_set_create(m, qbio_create)) {
		qbio_method = m;
		return;
	}
	BIO_meth_free(m);
}

/* A BIO over @q (which must outlive it), or NULL when out of memory. */
static BIO *qbio_new(struct byteq *q)
{
	BIO *b;

	pthread_once(&qbio_once, qbio_method_init);
	if (!qbio_method || !(b = BIO_new(qbio_method)))
		return NULL;
	BIO_set_data(b, q);
	return b;
}

struct tls_chan {
	/* Set at creation. */
	mfd_channel *inner;
	bool own_inner;
	mfd_tls_creds *creds;
	enum mfd_tls_role role;
	char peer_name[256];	/* client: the name the server certificate must carry */

	/* Protected by ssl_lock: the SSL object, its BIOs, the note its
	 * callbacks fill, the latched fatal error, the write queue, and the
	 * data part [head, tail) of the read queue. */
	pthread_mutex_t ssl_lock;
	SSL *ssl;
	BIO *rbio;		/* over inq: ciphertext from the peer */
	BIO *wbio;		/* over outq: ciphertext for the peer */
	struct tls_hs_note note;
	mfd_error *fatal;	/* the session is dead; every call reports this */
	struct byteq outq;	/* swapped with sending by the drainer */
	/* The free part [tail, cap) of inq is the reading thread's (the
	 * handshake's before that): it reads the inner channel straight into
	 * it without the lock, then publishes the bytes by moving tail. */
	struct byteq inq;

	/* Protected by out_lock: the ciphertext stream on the inner channel, and
	 * the write side's buffers. */
	pthread_mutex_t out_lock;
	struct byteq sending;	/* ciphertext taken from outq, going out now */
	uint8_t *stage;		/* small writes are gathered into one record */
	mfd_error *out_err;	/* an inner write failed: the record stream is cut */
	bool finished;		/* close_notify is out */

	/* Any thread: threads inside a write-side call, which send everything
	 * pending before they leave. */
	atomic_int writers;
};

/* What one failed SSL call left behind, taken right after the call. */
struct ssl_fail {
	int err;		/* SSL_get_error() */
	unsigned long code;	/* the first OpenSSL error queued, 0 if none */
	char text[256];		/* its full text */
};

static void capture(SSL *ssl, int ret, struct ssl_fail *f)
{
	unsigned long e;

	f->err = SSL_get_error(ssl, ret);
	f->code = 0;
	f->text[0] = '\0';
	/* The oldest libssl error names the cause; later ones are consequences. */
	while ((e = ERR_get_error()) != 0) {
		if (!f->code || (ERR_GET_LIB(f->code) != ERR_LIB_SSL && ERR_GET_LIB(e) == ERR_LIB_SSL))
			f->code = e;
	}
	if (f->code)
		ERR_error_string_n(f->code, f->text, sizeof(f->text));
	ERR_clear_error();
}

static const char *peer_word(const struct tls_chan *tc)
{
	return tc->role == MFD_TLS_CLIENT ? "server" : "client";
}

static bool is_alert(unsigned long code)
{
	return ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) >= SSL_AD_REASON_OFFSET;
}

/*
 * The error for a failed SSL call, as specific as we can make it.  Called
 * with ssl_lock held (it reads the note and the SSL).  @phase is "TLS
 * handshake", "TLS read"...
 */
static int tls_error(struct tls_chan *tc, const char *name, const char *phase,
		     const struct ssl_fail *f, mfd_error **errp)
{
	const struct tls_hs_note *n = &tc->note;
	int reason = f->code ? ERR_GET_REASON(f->code) : 0;
	const char *peer = peer_word(tc);
	bool psk = tc->creds->kind == TLS_PSK;

	if (n->psk_unknown)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: unknown PSK identity '%s' (not in "
				     "the PSK file %s)", name, phase, n->psk_identity,
				     tc->creds->source);
	if (n->authz_denied && psk)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: PSK identity '%s' is not in the "
				     "authz allow-list (tls-authz)", name, phase, n->psk_identity);
	if (n->authz_denied)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: client certificate subject '%s' "
				     "is not in the authz allow-list", name, phase, n->peer_dn);
	if (psk && tc->role == MFD_TLS_CLIENT && (n->verify_err || reason == SSL_R_CERTIFICATE_VERIFY_FAILED))
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the server ignored our pre-shared key "
				     "and sent a certificate instead (is it set up for x509?)", name,
				     phase);
	if (n->verify_err || (ERR_GET_LIB(f->code) == ERR_LIB_SSL &&
			      reason == SSL_R_CERTIFICATE_VERIFY_FAILED)) {
		long v = n->verify_err ? n->verify_err : SSL_get_verify_result(tc->ssl);
		const char *hint = "";
		char extra[400] = "";

		if (v == X509_V_ERR_CERT_REVOKED)
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the peer's certificate is "
					     "revoked (ca-crl.pem): the %s certificate '%s' (depth %d) "
					     "is listed in %s/ca-crl.pem", name, phase, peer,
					     n->peer_dn[0] ? n->peer_dn : "?", n->verify_depth,
					     tc->creds->source);
		if (v == X509_V_ERR_UNABLE_TO_GET_CRL || v == X509_V_ERR_CRL_HAS_EXPIRED ||
		    v == X509_V_ERR_CRL_NOT_YET_VALID || v == X509_V_ERR_CRL_SIGNATURE_FAILURE ||
		    v == X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER) {
			snprintf(extra, sizeof(extra), "; revocation is checked against %s/ca-crl.pem, "
				 "which needs a current CRL from the CA that issued this certificate",
				 tc->creds->source);
			hint = extra;
		} else if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
			snprintf(extra, sizeof(extra), "; the certificate was not issued for '%s'",
				 tc->peer_name);
			hint = extra;
		} else if (v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
			   v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
			   v == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
			   v == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN) {
			snprintf(extra, sizeof(extra), "; it is not signed by the CA in %s/ca-cert.pem",
				 tc->creds->source);
			hint = extra;
		}
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: %s certificate verification failed: "
				     "%s (depth %d, subject '%s')%s", name, phase, peer,
				     X509_verify_cert_error_string(v), n->verify_depth,
				     n->peer_dn[0] ? n->peer_dn : "?", hint);
	}
	if (ERR_GET_LIB(f->code) == ERR_LIB_SSL) {
		switch (reason) {
		case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: peer sent no certificate (this "
					     "server requires one; verify-peer=off accepts anonymous "
					     "clients)", name, phase);
		case SSL_R_BINDER_DOES_NOT_VERIFY:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: PSK key mismatch: the client's "
					     "key for identity '%s' is not the one in %s (binder does "
					     "not verify)", name, phase, n->psk_identity,
					     tc->creds->source);
		case SSL_R_WRONG_VERSION_NUMBER:
		case SSL_R_HTTP_REQUEST:
		case SSL_R_HTTPS_PROXY_REQUEST:
		case SSL_R_UNKNOWN_PROTOCOL:
		case SSL_R_PACKET_LENGTH_TOO_LONG:
#ifdef SSL_R_RECORD_LAYER_FAILURE
		case SSL_R_RECORD_LAYER_FAILURE:
#endif
		case SSL_R_WRONG_SSL_VERSION:
			if (!SSL_is_init_finished(tc->ssl))
				return mfd_error_set(errp, MFD_EPROTO, "%s: %s: peer did not speak TLS "
						     "(plaintext?): %s", name, phase,
						     ERR_reason_error_string(f->code));
			break;
		case SSL_R_UNSUPPORTED_PROTOCOL:
		case SSL_R_NO_PROTOCOLS_AVAILABLE:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: no TLS version acceptable to "
					     "both sides (see min-version): %s", name, phase,
					     ERR_reason_error_string(f->code));
		case SSL_R_NO_SHARED_CIPHER:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: no cipher suite in common with "
					     "the %s", name, phase, peer);
		default:
			break;
		}
	}
	if (is_alert(f->code)) {
		int alert = reason - SSL_AD_REASON_OFFSET;
		const char *hint = "";

		if (psk && (alert == SSL_AD_DECRYPT_ERROR || alert == SSL_AD_ILLEGAL_PARAMETER))
			hint = " (PSK key mismatch?)";
		else if (psk && alert == SSL_AD_HANDSHAKE_FAILURE)
			hint = " (unknown PSK identity, key mismatch or authz refusal?)";
		else if (alert == SSL_AD_UNKNOWN_CA || alert == SSL_AD_BAD_CERTIFICATE ||
			 alert == SSL_AD_CERTIFICATE_EXPIRED || alert == SSL_AD_CERTIFICATE_REVOKED ||
			 alert == SSL_AD_UNSUPPORTED_CERTIFICATE || alert == SSL_AD_CERTIFICATE_UNKNOWN)
			hint = " (it rejected our certificate)";
		else if (alert == TLS13_AD_CERTIFICATE_REQUIRED)
			hint = " (it requires a client certificate)";
		else if (alert == SSL_AD_PROTOCOL_VERSION)
			hint = " (no TLS version in common; see min-version)";
		else if (tc->role == MFD_TLS_CLIENT && alert == SSL_AD_HANDSHAKE_FAILURE)
			hint = " (it refused our certificate or its authz, or expects other "
			       "credentials)";
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the %s refused the connection: %s%s",
				     name, phase, peer, ERR_reason_error_string(f->code), hint);
	}
	if (f->err == SSL_ERROR_SSL && psk && tc->note.psk_identity[0] == '\0' &&
	    tc->role == MFD_TLS_SERVER && !SSL_is_init_finished(tc->ssl))
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the client offered no pre-shared key "
				     "(is it set up for x509?): %s", name, phase,
				     f->text[0] ? f->text : "handshake failure");
	if (f->code)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s failed: %s", name, phase, f->text);
	return mfd_error_set(errp, MFD_EIO, "%s: %s failed (SSL error %d, no detail from OpenSSL)",
			     name, phase, f->err);
}

/* Latch a fatal error (ssl_lock held) and return its code with a copy in errp. */
static int latch_fatal(struct tls_chan *tc, const char *name, const char *phase,
		       const struct ssl_fail *f, mfd_error **errp)
{
	if (!tc->fatal)
		tls_error(tc, name, phase, f, &tc->fatal);
	mfd_error_propagate(errp, mfd_error_copy(tc->fatal));
	return mfd_error_code(tc->fatal);
}

static int report_latched(const mfd_error *latched, mfd_error **errp)
{
	mfd_error_propagate(errp, mfd_error_copy(latched));
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
		if (q_len(&tc->outq) == 0) {
			pthread_mutex_unlock(&tc->ssl_lock);
			return 0;
		}
		full = tc->outq;
		tc->outq = tc->sending;
		tc->outq.head = tc->outq.tail = 0;
		pthread_mutex_unlock(&tc->ssl_lock);
		tc->sending = full;
		iov.iov_base = full.buf + full.head;
		iov.iov_len = q_len(&full);
		tc->sending.head = tc->sending.tail = 0;
		r = mfd_channel_writev_full(tc->inner, &iov, 1, &err);
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
	room = q_reserve(&tc->inq, TLS_IN_BUF);
	at = tc->inq.buf + tc->inq.tail;
	pthread_mutex_unlock(&tc->ssl_lock);
	if (!room)
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory buffering %d bytes",
				     name, TLS_IN_BUF);
	n = mfd_channel_read_some(tc->inner, at, TLS_IN_BUF, &err);

	if (n < 0) {
		if (handshake)
			mfd_error_prefix(err, "%s: TLS handshake", name);
		mfd_error_propagate(errp, err);
		return (int)n;
	}
	if (n == 0) {
		if (handshake)
			return mfd_error_set(errp, MFD_EEOF, "%s: TLS handshake: the %s closed the "
					     "connection (does it expect TLS? did it refuse us?)",
					     name, peer_word(tc));
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
			capture(tc->ssl, ret, &f);
		pthread_mutex_unlock(&tc->ssl_lock);
		/* Send what this step produced, alerts included: a refused peer learns why. */
		pthread_mutex_lock(&tc->out_lock);
		dr = drain_locked(tc, &derr);
		pthread_mutex_unlock(&tc->out_lock);
		if (ret == 1 || f.err == SSL_ERROR_WANT_READ) {
			if (dr < 0) {
				mfd_error_prefix(derr, "%s: TLS handshake", name);
				mfd_error_propagate(errp, derr);
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
					     "use the pre-shared key", name, peer_word(tc));
		return 0;
	}
	if (v != X509_V_OK)
		return mfd_error_set(errp, MFD_EPROTO, "%s: TLS handshake: %s certificate "
				     "verification failed: %s", name, peer_word(tc),
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

		if (mfd_channel_is_shut(ch))
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
					capture(tc->ssl, ret, &f);
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
		capture(tc->ssl, ret, &f);
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

	if (mfd_channel_is_shut(ch))
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
			capture(tc->ssl, ret, &f);
			r = tls_error(tc, ch->name, "TLS close", &f, errp);
		} else if ((ret = SSL_shutdown(tc->ssl)) < 0) {
			/* 0 = our close_notify is queued, 1 = the peer's came first. */
			capture(tc->ssl, ret, &f);
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
	q_free(&tc->outq);
	q_free(&tc->sending);
	q_free(&tc->inq);
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
	tc->rbio = qbio_new(&tc->inq);
	tc->wbio = qbio_new(&tc->outq);
	if (!q_reserve(&tc->inq, TLS_IN_BUF) || !q_reserve(&tc->outq, TLS_OUT_BUF) ||
	    !q_reserve(&tc->sending, TLS_OUT_BUF) || !tc->stage || !tc->ssl || !tc->rbio ||
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
	*out = mfd_channel_alloc(&tls_ops, name, tc);
	if (!*out) {
		r = mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", name);
		goto fail;
	}
	if (mfd_log_enabled(MFD_LOG_DEBUG))
		mfd_log_debug("%s: %s %s, %s", name, SSL_get_version(tc->ssl),
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

int mfd_tls_request_key_update(mfd_channel *ch, mfd_error **errp)
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

const char *mfd_tls_channel_version(mfd_channel *ch)
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

const char *mfd_tls_channel_cipher(mfd_channel *ch)
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

int mfd_tls_request_key_update(mfd_channel *ch, mfd_error **errp)
{
	(void)ch;
	return mfd_error_set(errp, MFD_ENOTSUP, "TLS: built without TLS");
}

const char *mfd_tls_channel_version(mfd_channel *ch)
{
	(void)ch;
	return NULL;
}

const char *mfd_tls_channel_cipher(mfd_channel *ch)
{
	(void)ch;
	return NULL;
}

#endif /* MFD_HAVE_TLS */
