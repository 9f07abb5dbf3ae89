/* SPDX-License-Identifier: MIT */
/*
 * The byte queues that hold the TLS channel's ciphertext, and the BIO
 * through which OpenSSL reads and writes them.  Which thread may touch a
 * queue when is said where the queues live (struct tls_chan, tls/internal.h);
 * the channel (tls/channel.c) moves the bytes between them and the inner
 * channel.
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "core/util.h"
#include "tls/internal.h"

#if MFD_HAVE_TLS

bool tls_q_reserve(struct byteq *q, size_t n)
{
	if (q->head == q->tail)
		q->head = q->tail = 0;
	if (q->cap - q->tail >= n)
		return true;
	if (q->head) {	/* slide the data to the front first */
		memmove(q->buf, q->buf + q->head, tls_q_len(q));
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

void tls_q_free(struct byteq *q)
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
	if (!tls_q_reserve(q, len))
		return 0;
	memcpy(q->buf + q->tail, data, len);
	q->tail += len;
	*written = len;
	return 1;
}

static int qbio_read(BIO *b, char *data, size_t len, size_t *readbytes)
{
	struct byteq *q = BIO_get_data(b);
	size_t n = MFD_MIN(len, tls_q_len(q));

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
		return (long)tls_q_len(q);
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

BIO *tls_qbio_new(struct byteq *q)
{
	BIO *b;

	pthread_once(&qbio_once, qbio_method_init);
	if (!qbio_method || !(b = BIO_new(qbio_method)))
		return NULL;
	BIO_set_data(b, q);
	return b;
}

#endif /* MFD_HAVE_TLS */
