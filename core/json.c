/* SPDX-License-Identifier: MIT */
/*
 * The JSON writer (core/json.h): a growable buffer, a stack of open levels
 * for the commas, and string escaping.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"

void json_init(struct json_writer *w, enum json_style style)
{
	*w = (struct json_writer){ .spaced = style == JSON_SPACED };
}

static void fail(struct json_writer *w)
{
	free(w->buf);
	w->buf = NULL;
	w->len = w->cap = 0;
	w->failed = true;
}

/* Room for @n more bytes and the NUL; false (and the error latched) if not. */
static bool reserve(struct json_writer *w, size_t n)
{
	size_t cap = w->cap ? w->cap : 256;
	char *p;

	if (w->failed)
		return false;
	if (n < w->cap - w->len)
		return true;
	if (n > SIZE_MAX / 2 - w->len) {
		fail(w);
		return false;
	}
	while (cap - w->len <= n)
		cap *= 2;
	p = realloc(w->buf, cap);
	if (!p) {
		fail(w);
		return false;
	}
	w->buf = p;
	w->cap = cap;
	return true;
}

static void put(struct json_writer *w, const char *s, size_t n)
{
	if (!reserve(w, n))
		return;
	memcpy(w->buf + w->len, s, n);
	w->len += n;
	w->buf[w->len] = '\0';
}

static void put_str(struct json_writer *w, const char *s)
{
	put(w, s, strlen(s));
}

/* Before any value: the comma after the previous item, or nothing after a
 * key; false if a value is not allowed here. */
static bool value_begins(struct json_writer *w)
{
	if (w->failed)
		return false;
	if (w->after_key) {
		w->after_key = false;
		return true;
	}
	if (w->depth == 0) {
		if (w->has_value) {
			fail(w);	/* a second top-level value */
			return false;
		}
		w->has_value = true;
		return true;
	}
	if (w->kind[w->depth - 1] != 'a') {
		fail(w);		/* a value in an object without its key */
		return false;
	}
	if (w->has_item[w->depth - 1])
		put_str(w, w->spaced ? ", " : ",");
	w->has_item[w->depth - 1] = true;
	return !w->failed;
}

static void open_level(struct json_writer *w, char kind)
{
	if (!value_begins(w))
		return;
	if (w->depth == JSON_MAX_DEPTH) {
		fail(w);
		return;
	}
	w->kind[w->depth] = kind;
	w->has_item[w->depth] = false;
	w->depth++;
	put(w, kind == 'o' ? "{" : "[", 1);
}

static void close_level(struct json_writer *w, char kind)
{
	if (w->failed)
		return;
	if (w->depth == 0 || w->kind[w->depth - 1] != kind || w->after_key) {
		fail(w);
		return;
	}
	w->depth--;
	put(w, kind == 'o' ? "}" : "]", 1);
}

void json_begin_object(struct json_writer *w)
{
	open_level(w, 'o');
}

void json_end_object(struct json_writer *w)
{
	close_level(w, 'o');
}

void json_begin_array(struct json_writer *w)
{
	open_level(w, 'a');
}

void json_end_array(struct json_writer *w)
{
	close_level(w, 'a');
}

/* The length of the valid UTF-8 sequence at @p (@n bytes left, p[0] >= 0x80),
 * or 0 if it is not one (RFC 3629: no overlong form, no surrogate, nothing
 * above U+10FFFF). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len;

	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		len = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		len = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		len = 4;
	else
		return 0;
	if (n < len)
		return 0;
	/* The second byte's range rules out overlongs, surrogates and > U+10FFFF. */
	if (p[0] == 0xe0)
		lo = 0xa0;
	else if (p[0] == 0xed)
		hi = 0x9f;
	else if (p[0] == 0xf0)
		lo = 0x90;
	else if (p[0] == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return len;
}

/* The quoted, escaped string, without the comma logic. */
static void put_quoted(struct json_writer *w, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	/* The worst case up front: every byte as \u00XX, and the quotes. */
	if (len > (SIZE_MAX / 2 - 2) / 6 || !reserve(w, 6 * len + 2)) {
		if (!w->failed)
			fail(w);
		return;
	}
	put(w, "\"", 1);
	while (i < len) {
		size_t run = i, n;
		char esc[6] = { '\\', 'u', '0', '0' };

		/* Bytes that need nothing go out as one run. */
		while (run < len && p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' &&
		       p[run] != '\\')
			run++;
		put(w, s + i, run - i);
		i = run;
		if (i == len)
			break;
		if (p[i] >= 0x80 && (n = utf8_len(p + i, len - i)) > 0) {
			put(w, s + i, n);
			i += n;
			continue;
		}
		switch (p[i]) {
		case '"': put(w, "\\\"", 2); break;
		case '\\': put(w, "\\\\", 2); break;
		case '\b': put(w, "\\b", 2); break;
		case '\f': put(w, "\\f", 2); break;
		case '\n': put(w, "\\n", 2); break;
		case '\r': put(w, "\\r", 2); break;
		case '\t': put(w, "\\t", 2); break;
		default:
			esc[4] = hex[p[i] >> 4];
			esc[5] = hex[p[i] & 15];
			put(w, esc, sizeof(esc));
		}
		i++;
	}
	put(w, "\"", 1);
}

void json_key(struct json_writer *w, const char *key)
{
	if (w->failed)
		return;
	if (w->depth == 0 || w->kind[w->depth - 1] != 'o' || w->after_key || !key) {
		fail(w);
		return;
	}
	if (w->has_item[w->depth - 1])
		put_str(w, w->spaced ? ", " : ",");
	w->has_item[w->depth - 1] = true;
	put_quoted(w, key, strlen(key));
	put_str(w, w->spaced ? ": " : ":");
	w->after_key = true;
}

void json_strn(struct json_writer *w, const char *s, size_t len)
{
	if (value_begins(w))
		put_quoted(w, s, len);
}

void json_str(struct json_writer *w, const char *s)
{
	if (s)
		json_strn(w, s, strlen(s));
	else
		json_null(w);
}

void json_u64(struct json_writer *w, uint64_t v)
{
	char num[24];

	if (value_begins(w))
		put(w, num, (size_t)snprintf(num, sizeof(num), "%" PRIu64, v));
}

void json_i64(struct json_writer *w, int64_t v)
{
	char num[24];

	if (value_begins(w))
		put(w, num, (size_t)snprintf(num, sizeof(num), "%" PRId64, v));
}

void json_double(struct json_writer *w, double v, int decimals)
{
	char num[400];
	size_t i = 0, n;

	if (!isfinite(v)) {
		json_null(w);
		return;
	}
	if (decimals < 0 || decimals > 17) {
		fail(w);
		return;
	}
	if (!value_begins(w))
		return;
	/* %f of a finite double: a sign, digits, then the locale's decimal
	 * point (perhaps not "." nor one byte) and digits.  JSON wants ".". */
	n = (size_t)snprintf(num, sizeof(num), "%.*f", decimals, v);
	if (n >= sizeof(num)) {
		fail(w);
		return;
	}
	if (num[0] == '-')
		i++;
	while (i < n && num[i] >= '0' && num[i] <= '9')
		i++;
	put(w, num, i);
	if (i < n) {
		put(w, ".", 1);
		while (i < n && (num[i] < '0' || num[i] > '9'))
			i++;
		put(w, num + i, n - i);
	}
}

void json_bool(struct json_writer *w, bool v)
{
	if (value_begins(w))
		put_str(w, v ? "true" : "false");
}

void json_null(struct json_writer *w)
{
	if (value_begins(w))
		put(w, "null", 4);
}

void json_key_str(struct json_writer *w, const char *key, const char *s)
{
	json_key(w, key);
	json_str(w, s);
}

void json_key_u64(struct json_writer *w, const char *key, uint64_t v)
{
	json_key(w, key);
	json_u64(w, v);
}

void json_key_double(struct json_writer *w, const char *key, double v, int decimals)
{
	json_key(w, key);
	json_double(w, v, decimals);
}

void json_key_bool(struct json_writer *w, const char *key, bool v)
{
	json_key(w, key);
	json_bool(w, v);
}

char *json_finish(struct json_writer *w)
{
	char *text = w->buf;

	if (w->failed || w->depth || w->after_key || !w->has_value) {
		free(w->buf);
		text = NULL;
	}
	w->buf = NULL;
	w->len = w->cap = 0;
	w->failed = true;	/* until json_init() again */
	return text;
}
