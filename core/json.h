/* SPDX-License-Identifier: MIT */
/*
 * One small JSON writer for every JSON text the library and its tools print
 * (mfd_migration_stats_json(), `multifd dump --json`, `multifd tune --json`),
 * so that escaping and commas are written once.
 *
 * The text grows in a heap buffer.  Calls return nothing: an allocation that
 * fails, or a call that breaks the structure (an end without a begin, a key
 * outside an object, more than JSON_MAX_DEPTH levels), latches an error and
 * turns the later calls into no-ops; json_finish() checks it once, at the end.
 *
 * Strings: '"' and '\\' are escaped, \b \f \n \r \t take their short forms,
 * every other byte below 0x20 and DEL become \u00XX.  Valid UTF-8 passes
 * through.  A byte that does not start or continue a valid UTF-8 sequence
 * (overlong forms, surrogates and code points above U+10FFFF included)
 * becomes \u00XX too: the writer only escapes genuine characters below 0x80
 * that way, so in the text the escape still says which byte was on the wire
 * (a diagnostic tool must show that), where U+FFFD would lose it; the output
 * is valid JSON and valid UTF-8 whatever the input was.
 */
#ifndef MFD_CORE_JSON_H
#define MFD_CORE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deeper nesting latches the error. */
#define JSON_MAX_DEPTH 16

enum json_style {
	JSON_COMPACT,	/* {"a":1,"b":[2,3]} */
	JSON_SPACED,	/* {"a": 1, "b": [2, 3]} (query-migrate's style) */
};

/* Zero-initialise with json_init(); no field is meant to be read outside
 * core/json.c. */
struct json_writer {
	char *buf;		/* NUL-terminated text, or NULL before the first byte */
	size_t len, cap;
	bool failed;		/* out of memory or misuse: json_finish() gives NULL */
	bool spaced;
	bool after_key;		/* the next value belongs to the key just written */
	unsigned depth;		/* open objects and arrays */
	/* per open level: 'o' object or 'a' array, and whether it has an item */
	char kind[JSON_MAX_DEPTH];
	bool has_item[JSON_MAX_DEPTH];
	bool has_value;		/* a top-level value was written */
};

void json_init(struct json_writer *w, enum json_style style);

void json_begin_object(struct json_writer *w);
void json_end_object(struct json_writer *w);
void json_begin_array(struct json_writer *w);
void json_end_array(struct json_writer *w);

/* A member name inside an object, escaped like a string; the next call
 * writes its value. */
void json_key(struct json_writer *w, const char *key);

/* A NUL-terminated string (NULL writes null). */
void json_str(struct json_writer *w, const char *s);
/* @len bytes at @s, NUL bytes included (as \u0000). */
void json_strn(struct json_writer *w, const char *s, size_t len);
void json_u64(struct json_writer *w, uint64_t v);
void json_i64(struct json_writer *w, int64_t v);
/* @v with @decimals digits after the point (0..17, like printf's "%.*f"),
 * whatever the locale; a NaN or an infinity, which JSON cannot spell,
 * writes null. */
void json_double(struct json_writer *w, double v, int decimals);
void json_bool(struct json_writer *w, bool v);
void json_null(struct json_writer *w);

/* json_key() then the value: the members of an object, one call each. */
void json_key_str(struct json_writer *w, const char *key, const char *s);
void json_key_u64(struct json_writer *w, const char *key, uint64_t v);
void json_key_double(struct json_writer *w, const char *key, double v, int decimals);
void json_key_bool(struct json_writer *w, const char *key, bool v);

/*
 * The text, NUL-terminated, for the caller to free(); NULL when the error
 * latched, when no value or an unfinished one was written.  Either way the
 * writer holds nothing afterwards and may be initialised again.
 */
char *json_finish(struct json_writer *w);

#endif
