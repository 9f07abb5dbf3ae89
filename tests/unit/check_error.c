/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "core/escape.h"
#include "core/util.h"
#include "tests/lib/testlib.h"

START_TEST(strerror_covers_every_code)
{
	for (int c = 0; c >= MFD_ERRCODE_MIN; c--) {
		const char *t = mfd_strerror(c);

		ck_assert_ptr_nonnull(t);
		ck_assert_str_ne(t, "unknown error");
	}
	ck_assert_str_eq(mfd_strerror(MFD_ERRCODE_MIN - 1), "unknown error");
	ck_assert_str_eq(mfd_strerror(7), "unknown error");
	ck_assert_str_eq(mfd_strerror(MFD_EEOF), "unexpected end of data");
}
END_TEST

START_TEST(error_set_and_first_wins)
{
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_error_set(&err, MFD_EPROTO, "channel %d: bad %s", 3, "packet"),
			 MFD_EPROTO);
	ck_assert_int_eq(mfd_error_set(&err, MFD_EIO, "second"), MFD_EIO);
	ck_assert_int_eq(mfd_error_code(err), MFD_EPROTO);
	ck_assert_str_eq(mfd_error_message(err), "channel 3: bad packet");
	mfd_error_prefix(err, "phase %s", "setup");
	ck_assert_mfd_error(err, MFD_EPROTO, "phase setup: channel 3: bad packet");
}
END_TEST

START_TEST(error_null_arguments)
{
	ck_assert_int_eq(mfd_error_set(NULL, MFD_EIO, "dropped"), MFD_EIO);
	ck_assert_int_eq(mfd_error_code(NULL), 0);
	ck_assert_str_eq(mfd_error_message(NULL), "");
	mfd_error_prefix(NULL, "x");
	mfd_error_free(NULL);
}
END_TEST

START_TEST(error_positive_code_becomes_einval)
{
	mfd_error *err = NULL;

	mfd_error_set(&err, 5, "odd");
	ck_assert_mfd_error(err, MFD_EINVAL, "odd");
}
END_TEST

START_TEST(version_matches_header)
{
	ck_assert_int_eq(mfd_version(), MFD_VERSION_NUMBER);
	ck_assert_str_eq(mfd_version_string(), MFD_VERSION_STRING);
}
END_TEST

struct log_capture {
	int count;
	enum mfd_log_level level;
	char last[128];
};

/* Records the length of the message in count. */
static void capture_len(enum mfd_log_level level, const char *msg, void *opaque)
{
	struct log_capture *c = opaque;

	c->level = level;
	c->count = (int)strlen(msg);
}

static void capture(enum mfd_log_level level, const char *msg, void *opaque)
{
	struct log_capture *c = opaque;

	c->count++;
	c->level = level;
	strncpy(c->last, msg, sizeof(c->last) - 1);
}

START_TEST(log_handler_filters_by_level)
{
	struct log_capture c = { 0 };
	char big[2000];

	log_emit(MFD_LOG_ERROR, "before any handler");
	mfd_log_set_handler(capture, &c, MFD_LOG_WARNING);
	log_emit(MFD_LOG_DEBUG, "too verbose %d", 1);
	log_emit(MFD_LOG_INFO, "too verbose %d", 2);
	ck_assert_int_eq(c.count, 0);
	log_emit(MFD_LOG_WARNING, "channel %d stalled", 4);
	ck_assert_int_eq(c.count, 1);
	ck_assert_int_eq(c.level, MFD_LOG_WARNING);
	ck_assert_str_eq(c.last, "channel 4 stalled");
	/* Long messages arrive whole, not cut at an internal buffer size. */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	mfd_log_set_handler(capture_len, &c, MFD_LOG_DEBUG);
	log_emit(MFD_LOG_ERROR, "%s!", big);
	ck_assert_int_eq(c.count, (int)sizeof(big));
	mfd_log_set_handler(NULL, NULL, MFD_LOG_DEBUG);
	log_emit(MFD_LOG_ERROR, "after removal");
	ck_assert_int_eq(c.count, (int)sizeof(big));
}
END_TEST

/* The one escaping of peer bytes: its forms, and a cut never splits one. */
START_TEST(escape_forms_and_cuts)
{
	char out[ESCAPE_BUF_SIZE], small[8];
	uint8_t all[256];

	ck_assert_str_eq(escape_bytes(out, sizeof(out), "a\\b\n\r\t\x1b\x7f\0\xff", 10),
			 "a\\\\b\\n\\r\\t\\x1b\\x7f\\x00\\xff");
	ck_assert_str_eq(escape_str(out, sizeof(out), "pc.ram %s"), "pc.ram %s");
	ck_assert_str_eq(escape_str(out, sizeof(out), NULL), "(null)");
	/* 7 characters and the NUL fit; more is cut with "...". */
	ck_assert_str_eq(escape_bytes(small, sizeof(small), "1234567", 7), "1234567");
	ck_assert_str_eq(escape_bytes(small, sizeof(small), "12345678", 8), "1234...");
	ck_assert_str_eq(escape_bytes(small, sizeof(small), "123\n5678", 8), "123...");
	ck_assert_str_eq(escape_bytes(small, 3, "abc", 3), "");
	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	escape_bytes(out, sizeof(out), all, sizeof(all));
	ck_assert_uint_lt(strlen(out), sizeof(out));
	ck_assert_str_eq(out + strlen(out) - 3, "...");
	for (const char *c = out; *c; c++)
		ck_assert(*c >= 0x20 && *c < 0x7f);
}
END_TEST

Suite *suite_error(void)
{
	Suite *s = suite_create("error");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, strerror_covers_every_code);
	tcase_add_test(tc, error_set_and_first_wins);
	tcase_add_test(tc, error_null_arguments);
	tcase_add_test(tc, error_positive_code_becomes_einval);
	tcase_add_test(tc, version_matches_header);
	tcase_add_test(tc, escape_forms_and_cuts);
	tcase_add_test(tc, log_handler_filters_by_level);
	suite_add_tcase(s, tc);
	return s;
}
