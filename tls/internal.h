/* SPDX-License-Identifier: MIT */
/*
 * What the three files of the TLS channel share: the byte queues and their
 * BIO (tls/bio.c), the channel's state (tls/channel.c), and the messages for
 * failed SSL calls (tls/error.c).  Not for the tests: their hooks are in
 * tls/tls.h.
 */
#ifndef MFD_TLS_INTERNAL_H
#define MFD_TLS_INTERNAL_H

#include "tls/tls.h"

#if MFD_HAVE_TLS

#include <pthread.h>
#include <stdatomic.h>

#include <openssl/ssl.h>

#define TLS_RECORD 16384			/* the largest TLS plaintext record */
#define TLS_WRITE_BATCH (4 * TLS_RECORD)	/* plaintext per SSL_write_ex() */
#define TLS_DRAIN_AT (16 * TLS_RECORD)		/* queued ciphertext that triggers a send */
#define TLS_IN_BUF (256 * 1024)			/* the most one inner read asks for */
#define TLS_OUT_BUF (512 * 1024)		/* initial capacity of a write queue */

/*
 * A byte queue: [head, tail) holds data, [tail, cap) is free.  OpenSSL sees
 * it through tls_qbio_new()'s BIO; who may touch it when is said where the
 * queues live (struct tls_chan).
 */
struct byteq {
	uint8_t *buf;
	size_t cap, head, tail;
};

static inline size_t tls_q_len(const struct byteq *q)
{
	return q->tail - q->head;
}

/* Room for @n more bytes at the tail; false when out of memory. */
bool tls_q_reserve(struct byteq *q, size_t n);
void tls_q_free(struct byteq *q);

/* A BIO over @q (which must outlive it), or NULL when out of memory. */
BIO *tls_qbio_new(struct byteq *q);

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

/* Fill @f from the SSL call that returned @ret; clears the OpenSSL error queue. */
void tls_capture(SSL *ssl, int ret, struct ssl_fail *f);

/* "server" or "client": the other end, for messages. */
const char *tls_peer_word(const struct tls_chan *tc);

/*
 * The error for a failed SSL call, as specific as we can make it.  Called
 * with ssl_lock held (it reads the note and the SSL).  @phase is "TLS
 * handshake", "TLS read"...
 */
int tls_error(struct tls_chan *tc, const char *name, const char *phase,
	      const struct ssl_fail *f, mfd_error **errp);

#endif /* MFD_HAVE_TLS */

#endif /* MFD_TLS_INTERNAL_H */
