/* SPDX-License-Identifier: MIT */
/*
 * Buffered, big-endian, one-direction streams over a channel.
 *
 * Writing: small items are copied into one buffer; large items given by
 * reference are queued as their own iovec entries, so a flush sends headers
 * and guest pages in one vectored write without copying the pages.
 *
 * Reading: a buffer absorbs small reads; large reads go straight to the
 * caller's memory.
 *
 * The first failure is latched: later calls return it at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/stream.h"
#include "core/util.h"

#define STREAM_BUF_SIZE (64 * 1024)
#define STREAM_IOV_MAX 64
/* Copies above this size are not worth it: flush and write through. */
#define STREAM_COPY_MAX (STREAM_BUF_SIZE / 4)

struct mfd_stream {
	/* Set at creation. */
	mfd_channel *ch;
	enum mfd_stream_mode mode;
	char *label;
	uint8_t *buf;

	/* Reading: unread bytes are buf[pos, end). */
	size_t pos, end;

	/* Writing: buf[0, used) holds copies; iov lists everything queued in order. */
	size_t used;
	struct iovec iov[STREAM_IOV_MAX];
	int iovcnt;

	uint64_t bytes;
	int err_code;
	mfd_error *err;
};

int mfd_stream_new(mfd_channel *ch, enum mfd_stream_mode mode, mfd_stream **out,
		   mfd_error **errp)
{
	mfd_stream *s;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_stream_new: out is NULL");
	*out = NULL;
	if (!ch)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_stream_new: channel is NULL");
	if (mode != MFD_STREAM_READ && mode != MFD_STREAM_WRITE)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_stream_new: mode %d is invalid",
				     (int)mode);
	s = calloc(1, sizeof(*s));
	if (!s || !(s->buf = malloc(STREAM_BUF_SIZE)) || !(s->label = strdup(ch->name))) {
		if (s)
			free(s->buf);
		free(s);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory for a stream", ch->name);
	}
	s->ch = ch;
	s->mode = mode;
	*out = s;
	return 0;
}

void mfd_stream_free(mfd_stream *s)
{
	if (!s)
		return;
	mfd_error_free(s->err);
	free(s->label);
	free(s->buf);
	free(s);
}

int stream_set_label(mfd_stream *s, const char *label)
{
	char *copy = strdup(label);

	if (!copy)
		return MFD_ENOMEM;
	free(s->label);
	s->label = copy;
	return 0;
}

const char *stream_label(const mfd_stream *s)
{
	return s->label;
}

mfd_channel *mfd_stream_channel(const mfd_stream *s)
{
	return s->ch;
}

uint64_t mfd_stream_bytes(const mfd_stream *s)
{
	return s->bytes;
}

const mfd_error *stream_last_error(const mfd_stream *s)
{
	return s->err;
}

int mfd_stream_error(const mfd_stream *s, mfd_error **errp)
{
	if (s->err_code && errp && !*errp)
		*errp = error_copy(s->err);
	return s->err_code;
}

/* Latch an error that already exists (from the channel). */
static int stream_latch(mfd_stream *s, mfd_error *err, int code)
{
	if (s->err_code) {
		mfd_error_free(err);
		return s->err_code;
	}
	s->err_code = code;
	s->err = err;
	return code;
}

static int stream_failv(mfd_stream *s, int code, const char *fmt, va_list ap)
{
	mfd_error *err = NULL;
	char *msg = NULL;

	if (s->err_code)
		return s->err_code;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	mfd_error_set(&err, code, "%s: %s", s->label, msg ? msg : "error");
	free(msg);
	return stream_latch(s, err, code);
}

int mfd_stream_set_error(mfd_stream *s, int code, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (code >= 0)
		code = MFD_EINVAL;
	va_start(ap, fmt);
	r = stream_failv(s, code, fmt, ap);
	va_end(ap);
	return r;
}

static int wrong_mode(mfd_stream *s, enum mfd_stream_mode want)
{
	return mfd_stream_set_error(s, MFD_EINVAL, "%s call on a %s stream",
				    want == MFD_STREAM_READ ? "read" : "write",
				    s->mode == MFD_STREAM_READ ? "read" : "write");
}

/* ---- writing ---------------------------------------------------------- */

int mfd_stream_flush(mfd_stream *s)
{
	mfd_error *err = NULL;
	int r;

	if (s->err_code)
		return s->err_code;
	if (s->mode != MFD_STREAM_WRITE)
		return wrong_mode(s, MFD_STREAM_WRITE);
	if (!s->iovcnt)
		return 0;
	r = channel_writev_full(s->ch, s->iov, s->iovcnt, &err);
	s->iovcnt = 0;
	s->used = 0;
	if (r < 0)
		return stream_latch(s, err, r);
	return 0;
}

static int queue_iov(mfd_stream *s, const void *p, size_t len)
{
	if (s->iovcnt == STREAM_IOV_MAX) {
		int r = mfd_stream_flush(s);

		if (r < 0)
			return r;
	}
	s->iov[s->iovcnt].iov_base = (void *)p;
	s->iov[s->iovcnt].iov_len = len;
	s->iovcnt++;
	return 0;
}

/* Copy into the buffer, growing the last iovec entry when it is the buffer's tail. */
static int put_copy(mfd_stream *s, const void *p, size_t len)
{
	if (len > STREAM_BUF_SIZE - s->used) {
		int r = mfd_stream_flush(s);

		if (r < 0)
			return r;
	}
	uint8_t *dst = s->buf + s->used;

	memcpy(dst, p, len);
	s->used += len;
	s->bytes += len;
	if (s->iovcnt) {
		struct iovec *last = &s->iov[s->iovcnt - 1];

		if ((uint8_t *)last->iov_base + last->iov_len == dst) {
			last->iov_len += len;
			return 0;
		}
	}
	int r = queue_iov(s, dst, len);

	if (r < 0)
		return r;
	/* queue_iov may have flushed, which emptied the buffer under dst. */
	if (s->used == 0) {
		memmove(s->buf, dst, len);
		s->used = len;
		s->iov[s->iovcnt - 1].iov_base = s->buf;
	}
	return 0;
}

static inline int put_small(mfd_stream *s, const void *p, size_t len)
{
	if (MFD_UNLIKELY(s->err_code))
		return s->err_code;
	if (MFD_UNLIKELY(s->mode != MFD_STREAM_WRITE))
		return wrong_mode(s, MFD_STREAM_WRITE);
	return put_copy(s, p, len);
}

int mfd_stream_put_u8(mfd_stream *s, uint8_t v)
{
	return put_small(s, &v, 1);
}

int mfd_stream_put_be16(mfd_stream *s, uint16_t v)
{
	uint8_t b[2];

	store_be16(b, v);
	return put_small(s, b, sizeof(b));
}

int mfd_stream_put_be32(mfd_stream *s, uint32_t v)
{
	uint8_t b[4];

	store_be32(b, v);
	return put_small(s, b, sizeof(b));
}

int mfd_stream_put_be64(mfd_stream *s, uint64_t v)
{
	uint8_t b[8];

	store_be64(b, v);
	return put_small(s, b, sizeof(b));
}

int mfd_stream_put_buf(mfd_stream *s, const void *buf, size_t len)
{
	if (s->err_code)
		return s->err_code;
	if (s->mode != MFD_STREAM_WRITE)
		return wrong_mode(s, MFD_STREAM_WRITE);
	if (len == 0)
		return 0;
	if (!buf)
		return mfd_stream_set_error(s, MFD_EINVAL, "put_buf: NULL buffer of %zu bytes",
					    len);
	if (len <= STREAM_COPY_MAX)
		return put_copy(s, buf, len);
	/* Large: the caller's memory may change after we return, so send it now. */
	int r = queue_iov(s, buf, len);

	if (r < 0)
		return r;
	s->bytes += len;
	return mfd_stream_flush(s);
}

int mfd_stream_put_buf_ref(mfd_stream *s, const void *buf, size_t len)
{
	if (s->err_code)
		return s->err_code;
	if (s->mode != MFD_STREAM_WRITE)
		return wrong_mode(s, MFD_STREAM_WRITE);
	if (len == 0)
		return 0;
	if (!buf)
		return mfd_stream_set_error(s, MFD_EINVAL,
					    "put_buf_ref: NULL buffer of %zu bytes", len);
	if (len <= 64)
		return put_copy(s, buf, len);
	int r = queue_iov(s, buf, len);

	if (r == 0)
		s->bytes += len;
	return r;
}

int mfd_stream_put_str(mfd_stream *s, const char *str)
{
	size_t len;

	if (s->err_code)
		return s->err_code;
	if (!str)
		return mfd_stream_set_error(s, MFD_EINVAL, "put_str: NULL string");
	len = strlen(str);
	if (len > 255)
		return mfd_stream_set_error(s, MFD_ETOOBIG,
					    "string of %zu bytes does not fit a counted string "
					    "(at most 255)", len);
	int r = mfd_stream_put_u8(s, (uint8_t)len);

	return r < 0 ? r : mfd_stream_put_buf(s, str, len);
}

/* ---- reading ---------------------------------------------------------- */

/* Read more into the buffer; at least one byte or an error. */
static int fill(mfd_stream *s, size_t needed)
{
	mfd_error *err = NULL;
	ssize_t n;

	if (s->pos == s->end)
		s->pos = s->end = 0;
	else if (s->pos > 0 && STREAM_BUF_SIZE - s->end < needed) {
		memmove(s->buf, s->buf + s->pos, s->end - s->pos);
		s->end -= s->pos;
		s->pos = 0;
	}
	n = channel_read_some(s->ch, s->buf + s->end, STREAM_BUF_SIZE - s->end, &err);
	if (n < 0)
		return stream_latch(s, err, (int)n);
	if (n == 0)
		return mfd_stream_set_error(s, MFD_EEOF,
					    "unexpected end of data at byte %llu (needed %zu more)",
					    (unsigned long long)(s->bytes + (s->end - s->pos)),
					    needed - (s->end - s->pos));
	s->end += (size_t)n;
	return 0;
}

static int get_bytes(mfd_stream *s, void *dst, size_t len)
{
	uint8_t *out = dst;

	if (MFD_UNLIKELY(s->err_code))
		return s->err_code;
	if (MFD_UNLIKELY(s->mode != MFD_STREAM_READ))
		return wrong_mode(s, MFD_STREAM_READ);
	if (MFD_LIKELY(s->end - s->pos >= len)) {
		memcpy(out, s->buf + s->pos, len);
		s->pos += len;
		s->bytes += len;
		return 0;
	}
	/* Drain what is buffered, then read the rest directly when large. */
	size_t have = s->end - s->pos;

	memcpy(out, s->buf + s->pos, have);
	s->pos = s->end = 0;
	s->bytes += have;
	out += have;
	len -= have;
	while (len >= STREAM_COPY_MAX) {
		mfd_error *err = NULL;
		ssize_t n = channel_read_some(s->ch, out, len, &err);

		if (n < 0)
			return stream_latch(s, err, (int)n);
		if (n == 0)
			return mfd_stream_set_error(s, MFD_EEOF,
						    "unexpected end of data at byte %llu "
						    "(needed %zu more)",
						    (unsigned long long)s->bytes, len);
		out += n;
		len -= (size_t)n;
		s->bytes += (uint64_t)n;
	}
	while (s->end - s->pos < len) {
		int r = fill(s, len);

		if (r < 0)
			return r;
	}
	memcpy(out, s->buf + s->pos, len);
	s->pos += len;
	s->bytes += len;
	return 0;
}

int mfd_stream_get_u8(mfd_stream *s, uint8_t *v)
{
	return get_bytes(s, v, 1);
}

int mfd_stream_get_be16(mfd_stream *s, uint16_t *v)
{
	uint8_t b[2];
	int r = get_bytes(s, b, sizeof(b));

	if (r == 0)
		*v = load_be16(b);
	return r;
}

int mfd_stream_get_be32(mfd_stream *s, uint32_t *v)
{
	uint8_t b[4];
	int r = get_bytes(s, b, sizeof(b));

	if (r == 0)
		*v = load_be32(b);
	return r;
}

int mfd_stream_get_be64(mfd_stream *s, uint64_t *v)
{
	uint8_t b[8];
	int r = get_bytes(s, b, sizeof(b));

	if (r == 0)
		*v = load_be64(b);
	return r;
}

size_t stream_buffered(const mfd_stream *s)
{
	return s && s->mode == MFD_STREAM_READ && !s->err_code ? s->end - s->pos : 0;
}

int mfd_stream_get_buf(mfd_stream *s, void *buf, size_t len)
{
	if (len && !buf)
		return mfd_stream_set_error(s, MFD_EINVAL, "get_buf: NULL buffer of %zu bytes",
					    len);
	return len ? get_bytes(s, buf, len) : s->err_code;
}

int mfd_stream_get_str(mfd_stream *s, char buf[256], size_t *lenp)
{
	uint8_t len;
	int r = mfd_stream_get_u8(s, &len);

	if (r == 0)
		r = get_bytes(s, buf, len);
	if (r < 0)
		return r;
	buf[len] = '\0';
	if (lenp)
		*lenp = len;
	return 0;
}

int mfd_stream_peek_u8(mfd_stream *s, uint8_t *v)
{
	if (s->err_code)
		return s->err_code;
	if (s->mode != MFD_STREAM_READ)
		return wrong_mode(s, MFD_STREAM_READ);
	if (s->pos == s->end) {
		int r = fill(s, 1);

		if (r < 0)
			return r;
	}
	*v = s->buf[s->pos];
	return 0;
}

int mfd_stream_skip(mfd_stream *s, uint64_t len)
{
	uint8_t scratch[4096];

	while (len) {
		size_t n = (size_t)MFD_MIN(len, (uint64_t)sizeof(scratch));
		int r = get_bytes(s, scratch, n);

		if (r < 0)
			return r;
		len -= n;
	}
	return s->err_code;
}
