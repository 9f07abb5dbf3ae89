/* SPDX-License-Identifier: MIT */
/*
 * Escaping of peer-provided bytes for error messages and logs.
 */
#include <string.h>

#include "core/escape.h"

/* The escape of @c into @tmp; returns its length (1, 2 or 4). */
static size_t escape_one(unsigned char c, char tmp[4])
{
	static const char hex[] = "0123456789abcdef";

	tmp[0] = '\\';
	switch (c) {
	case '\\': tmp[1] = '\\'; return 2;
	case '\n': tmp[1] = 'n'; return 2;
	case '\r': tmp[1] = 'r'; return 2;
	case '\t': tmp[1] = 't'; return 2;
	}
	if (c >= 0x20 && c < 0x7f) {
		tmp[0] = (char)c;
		return 1;
	}
	tmp[1] = 'x';
	tmp[2] = hex[c >> 4];
	tmp[3] = hex[c & 15];
	return 4;
}

const char *escape_bytes(char *out, size_t size, const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t o = 0, need = 0;
	char tmp[4];

	if (!size)
		return out;
	if (size < 4) {
		out[0] = '\0';
		return out;
	}
	for (size_t i = 0; i < len && need < size; i++)
		need += escape_one(p[i], tmp);
	/* Whole if it fits; else as much as leaves room for "..." and the NUL. */
	size_t room = need < size ? size - 1 : size - 4;

	for (size_t i = 0; i < len; i++) {
		size_t n = escape_one(p[i], tmp);

		if (o + n > room) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(out + o, tmp, n);
		o += n;
	}
	out[o] = '\0';
	return out;
}

const char *escape_str(char *out, size_t size, const char *s)
{
	if (!s)
		s = "(null)";
	return escape_bytes(out, size, s, strlen(s));
}
