/* SPDX-License-Identifier: MIT */
/*
 * The JSON writer (core/json.c): escaping of every byte that needs it,
 * commas and nesting, number formats, and the error latch that
 * json_finish() reports.
 */
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "tests/lib/testlib.h"

/* json_finish() of @w must be exactly @want. */
static void expect(struct json_writer *w, const char *want)
{
	char *got = json_finish(w);

	ck_assert_msg(got != NULL, "json_finish() failed, wanted %s", want);
	ck_assert_str_eq(got, want);
	free(got);
}

/* @len bytes as one JSON string. */
static char *string_of(const char *s, size_t len)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	json_strn(&w, s, len);
	return json_finish(&w);
}

static void expect_string(const char *s, size_t len, const char *want)
{
	char *got = string_of(s, len);

	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, want);
	free(got);
}

START_TEST(quotes_and_backslashes)
{
	expect_string("a\"b\\c/d", 7, "\"a\\\"b\\\\c/d\"");
	expect_string("", 0, "\"\"");
	expect_string("plain text 0-9 ~", 16, "\"plain text 0-9 ~\"");
}
END_TEST

/* Each byte below 0x20, and DEL: a short form or \u00XX, nothing raw. */
START_TEST(every_control_byte)
{
	static const char *const shorts[] = { ['\b'] = "\\b", ['\f'] = "\\f", ['\n'] = "\\n",
					      ['\r'] = "\\r", ['\t'] = "\\t" };

	for (unsigned c = 0; c <= 0x7f; c++) {
		char in[3] = { 'x', (char)c, 'y' }, want[16];

		if (c >= 0x20 && c < 0x7f)
			continue;
		if (c < sizeof(shorts) / sizeof(shorts[0]) && shorts[c])
			snprintf(want, sizeof(want), "\"x%sy\"", shorts[c]);
		else
			snprintf(want, sizeof(want), "\"x\\u%04xy\"", c);
		expect_string(in, sizeof(in), want);
	}
}
END_TEST

/* json_strn() writes a NUL byte, json_str() stops at it, NULL is null. */
START_TEST(nul_byte_and_null)
{
	struct json_writer w;

	expect_string("a\0b", 3, "\"a\\u0000b\"");
	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);
	json_str(&w, "a\0b");
	json_str(&w, NULL);
	json_end_array(&w);
	expect(&w, "[\"a\",null]");
}
END_TEST

START_TEST(valid_utf8_passes_through)
{
	/* é, €, U+10FFFF, U+E000 (after the surrogates), U+0080 */
	static const char s[] = "\xc3\xa9 \xe2\x82\xac \xf4\x8f\xbf\xbf \xee\x80\x80 \xc2\x80";
	char want[64];

	snprintf(want, sizeof(want), "\"%s\"", s);
	expect_string(s, sizeof(s) - 1, want);
}
END_TEST

/* Each byte that is not part of a valid sequence becomes \u00XX; the rest
 * of the string is still read from the next byte. */
START_TEST(invalid_utf8_escaped_byte_by_byte)
{
	static const struct {
		const char *in, *want;
	} cases[] = {
		{ "\xff", "\"\\u00ff\"" },				/* never in UTF-8 */
		{ "\x80z", "\"\\u0080z\"" },				/* lone continuation */
		{ "\xc3", "\"\\u00c3\"" },				/* cut at the end */
		{ "\xc3z", "\"\\u00c3z\"" },				/* cut before ASCII */
		{ "\xc0\xaf", "\"\\u00c0\\u00af\"" },			/* overlong '/' */
		{ "\xe0\x80\xaf", "\"\\u00e0\\u0080\\u00af\"" },	/* overlong, 3 bytes */
		{ "\xed\xa0\x80", "\"\\u00ed\\u00a0\\u0080\"" },	/* surrogate U+D800 */
		{ "\xf4\x90\x80\x80", "\"\\u00f4\\u0090\\u0080\\u0080\"" },	/* > U+10FFFF */
		{ "\xf5\x80\x80\x80", "\"\\u00f5\\u0080\\u0080\\u0080\"" },
		{ "\xe2\x82", "\"\\u00e2\\u0082\"" },			/* 2 of 3 bytes */
		{ "\xc3\xa9\xff\xc3\xa9", "\"\xc3\xa9\\u00ff\xc3\xa9\"" },	/* between valid ones */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_string(cases[i].in, strlen(cases[i].in), cases[i].want);
}
END_TEST

/* Keys are escaped like strings. */
START_TEST(keys_are_escaped)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	json_begin_object(&w);
	json_key_u64(&w, "a\"\n", 1);
	json_end_object(&w);
	expect(&w, "{\"a\\\"\\n\":1}");
}
END_TEST

START_TEST(nesting_and_commas)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	json_begin_object(&w);
	json_key(&w, "a");
	json_begin_array(&w);
	json_end_array(&w);
	json_key(&w, "b");
	json_begin_object(&w);
	json_end_object(&w);
	json_key(&w, "c");
	json_begin_array(&w);
	json_u64(&w, 1);
	json_begin_array(&w);
	json_bool(&w, true);
	json_bool(&w, false);
	json_end_array(&w);
	json_begin_object(&w);
	json_key(&w, "d");
	json_null(&w);
	json_end_object(&w);
	json_str(&w, "e");
	json_end_array(&w);
	json_key_str(&w, "f", "g");
	json_end_object(&w);
	expect(&w, "{\"a\":[],\"b\":{},\"c\":[1,[true,false],{\"d\":null},\"e\"],\"f\":\"g\"}");

	json_init(&w, JSON_SPACED);
	json_begin_object(&w);
	json_key_u64(&w, "a", 1);
	json_key(&w, "b");
	json_begin_array(&w);
	json_u64(&w, 2);
	json_u64(&w, 3);
	json_end_array(&w);
	json_end_object(&w);
	expect(&w, "{\"a\": 1, \"b\": [2, 3]}");

	/* A scalar alone is a document too. */
	json_init(&w, JSON_COMPACT);
	json_u64(&w, 7);
	expect(&w, "7");
}
END_TEST

START_TEST(integers)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);
	json_u64(&w, 0);
	json_u64(&w, UINT64_MAX);
	json_i64(&w, 0);
	json_i64(&w, -1);
	json_i64(&w, INT64_MIN);
	json_i64(&w, INT64_MAX);
	json_end_array(&w);
	expect(&w, "[0,18446744073709551615,0,-1,-9223372036854775808,9223372036854775807]");
}
END_TEST

START_TEST(doubles)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);
	json_double(&w, 0, 3);
	json_double(&w, 2330.8344, 3);
	json_double(&w, 1.0, 4);
	json_double(&w, -1, 3);
	json_double(&w, 7507054580.4, 0);
	json_double(&w, 0.5, 1);
	json_double(&w, NAN, 3);
	json_double(&w, INFINITY, 0);
	json_double(&w, -INFINITY, 2);
	json_double(&w, DBL_MAX, 0);
	json_end_array(&w);
	{
		char want[512];

		/* DBL_MAX: 309 digits, no point, no exponent. */
		snprintf(want, sizeof(want),
			 "[0.000,2330.834,1.0000,-1.000,7507054580,0.5,null,null,null,%.0f]",
			 DBL_MAX);
		expect(&w, want);
	}
}
END_TEST

/* The same digits as printf's "%.*f", and "." whatever LC_NUMERIC says. */
START_TEST(doubles_match_printf_in_any_locale)
{
	static const double values[] = { 0.00005, 0.5, 1.25, 2.675, 1e-7, 123456.789,
					 -0.0004, 1e15 + 0.3 };
	const char *locales[] = { "de_DE.UTF-8", "fr_FR.UTF-8", "ps_AF.UTF-8" };
	struct json_writer w;

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++)
		for (int d = 0; d <= 6; d++) {
			char want[64];

			snprintf(want, sizeof(want), "%.*f", d, values[i]);
			json_init(&w, JSON_COMPACT);
			json_double(&w, values[i], d);
			expect(&w, want);
		}
	/* Locales that are not installed are skipped; C.UTF-8 has ".". */
	for (size_t l = 0; l < sizeof(locales) / sizeof(locales[0]); l++) {
		if (!setlocale(LC_NUMERIC, locales[l]))
			continue;
		json_init(&w, JSON_COMPACT);
		json_double(&w, 1.5, 2);
		expect(&w, "1.50");
	}
	setlocale(LC_NUMERIC, "C");
}
END_TEST

/* Misuse latches the error like a failed allocation: NULL at the end. */
START_TEST(misuse_gives_null)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	ck_assert_ptr_null(json_finish(&w));	/* nothing written */

	json_init(&w, JSON_COMPACT);
	json_end_object(&w);			/* end without begin */
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	json_begin_object(&w);
	json_end_array(&w);			/* the wrong end */
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);			/* never closed */
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	json_begin_object(&w);
	json_u64(&w, 1);			/* a value without its key */
	json_end_object(&w);
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	json_begin_object(&w);
	json_key(&w, "a");			/* a key without its value */
	json_end_object(&w);
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);
	json_key(&w, "a");			/* a key in an array */
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	json_u64(&w, 1);
	json_u64(&w, 2);			/* two documents */
	ck_assert_ptr_null(json_finish(&w));

	json_init(&w, JSON_COMPACT);
	for (int i = 0; i <= JSON_MAX_DEPTH; i++)
		json_begin_array(&w);
	for (int i = 0; i <= JSON_MAX_DEPTH; i++)
		json_end_array(&w);
	ck_assert_ptr_null(json_finish(&w));
}
END_TEST

/*
 * The latch: a string whose escaped size cannot be represented fails the
 * way an allocation would, before a byte of it is read; every later call
 * is a no-op and json_finish() gives NULL, having freed what was there.
 */
START_TEST(allocation_failure_latches)
{
	struct json_writer w;

	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);
	json_str(&w, "before");
	json_strn(&w, "x", SIZE_MAX / 4);
	json_str(&w, "after");
	json_end_array(&w);
	ck_assert(w.failed);
	ck_assert_ptr_null(w.buf);
	ck_assert_ptr_null(json_finish(&w));
}
END_TEST

/* The buffer grows past its first allocation. */
START_TEST(long_text)
{
	enum { N = 5000 };
	struct json_writer w;
	char *s, *got;

	s = malloc(N);
	ck_assert_ptr_nonnull(s);
	memset(s, '\n', N);
	json_init(&w, JSON_COMPACT);
	json_begin_array(&w);
	json_strn(&w, s, N);
	json_strn(&w, s, N);
	json_end_array(&w);
	got = json_finish(&w);
	ck_assert_ptr_nonnull(got);
	ck_assert_uint_eq(strlen(got), 2 + 2 * (2 + 2 * N) + 1);
	free(got);
	free(s);
}
END_TEST

Suite *suite_json(void)
{
	Suite *s = suite_create("json");
	TCase *tc = tcase_create("writer");

	tcase_add_test(tc, quotes_and_backslashes);
	tcase_add_test(tc, every_control_byte);
	tcase_add_test(tc, nul_byte_and_null);
	tcase_add_test(tc, valid_utf8_passes_through);
	tcase_add_test(tc, invalid_utf8_escaped_byte_by_byte);
	tcase_add_test(tc, keys_are_escaped);
	tcase_add_test(tc, nesting_and_commas);
	tcase_add_test(tc, integers);
	tcase_add_test(tc, doubles);
	tcase_add_test(tc, doubles_match_printf_in_any_locale);
	tcase_add_test(tc, misuse_gives_null);
	tcase_add_test(tc, allocation_failure_latches);
	tcase_add_test(tc, long_text);
	suite_add_tcase(s, tc);
	return s;
}
