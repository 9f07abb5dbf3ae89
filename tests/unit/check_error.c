/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/escape.h"
#include "core/params.h"
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
static void capture_len(int level, const char *msg, void *opaque)
{
	struct log_capture *c = opaque;

	c->level = level;
	c->count = (int)strlen(msg);
}

static void capture(int level, const char *msg, void *opaque)
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

static int set_through_va_list(mfd_error **errp, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = mfd_error_setv(errp, MFD_EIO, fmt, ap);
	va_end(ap);
	return r;
}

static void prefix_through_va_list(mfd_error *err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mfd_error_prefixv(err, fmt, ap);
	va_end(ap);
}

/* The forms for wrappers (va_list) and for bindings (plain text, where a
 * '%' is only a '%'). */
START_TEST(error_forms_without_variadics)
{
	mfd_error *err = NULL;

	ck_assert_int_eq(set_through_va_list(&err, "disk %d of %s", 3, "vm1"), MFD_EIO);
	ck_assert_str_eq(mfd_error_message(err), "disk 3 of vm1");
	mfd_error_prefix_text(err, "100% sure");
	prefix_through_va_list(err, "step %u", 7u);
	ck_assert_str_eq(mfd_error_message(err), "step 7: 100% sure: disk 3 of vm1");
	ck_assert_int_eq(mfd_error_code(err), MFD_EIO);
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(mfd_error_set_text(&err, MFD_EPROTO, "50% %s %d %n"), MFD_EPROTO);
	ck_assert_str_eq(mfd_error_message(err), "50% %s %d %n");
	/* First wins, as with mfd_error_set(). */
	ck_assert_int_eq(mfd_error_set_text(&err, MFD_EIO, "later"), MFD_EIO);
	ck_assert_str_eq(mfd_error_message(err), "50% %s %d %n");
	mfd_error_free(err);
	err = NULL;
	ck_assert_int_eq(mfd_error_set_text(NULL, MFD_EIO, "dropped"), MFD_EIO);
	ck_assert_int_eq(mfd_error_set_text(&err, MFD_EIO, NULL), MFD_EIO);
	ck_assert_str_eq(mfd_error_message(err), "");
	mfd_error_prefix_text(NULL, "nothing happens");
	mfd_error_free(err);
}
END_TEST

/* Every parameter, as mfd_param_next() enumerates it, agrees with what the
 * by-name calls say of a fresh object. */
START_TEST(parameters_enumerate)
{
	struct mfd_param_info pi = { .size = sizeof(pi) };
	struct {
		struct mfd_param_info pi;
		uint64_t after;
	} big = { .pi = { .size = sizeof(big) }, .after = 0x5a5a5a5a5a5a5a5aull };
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	char buf[512];
	int i = 0, n = 0, seen_choice = 0, seen_live = 0;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	while ((i = mfd_param_next(i, &pi)) > 0) {
		int64_t lo, hi, v;

		n++;
		ck_assert_ptr_nonnull(pi.name);
		ck_assert_ok(mfd_get_param(m, pi.name, buf, sizeof(buf), &err), err);
		ck_assert_msg(!strcmp(buf, pi.default_text), "%s: default '%s', enumerated '%s'",
			      pi.name, buf, pi.default_text);
		switch (pi.type) {
		case MFD_PARAM_INT:
			ck_assert_int_eq(mfd_param_bounds(pi.name, &lo, &hi), 0);
			ck_assert(lo == pi.min && hi == pi.max);
			ck_assert_ok(mfd_get_param_int(m, pi.name, &v, &err), err);
			ck_assert(v >= pi.min && v <= pi.max);
			break;
		case MFD_PARAM_BOOL:
			ck_assert(pi.min == 0 && pi.max == 1);
			break;
		case MFD_PARAM_CHOICE:
			seen_choice++;
			ck_assert_ptr_nonnull(pi.choices);
			ck_assert_int_eq(mfd_param_bounds(pi.name, &lo, &hi), 0);
			ck_assert_ptr_nonnull(pi.choices[hi]);
			ck_assert_ptr_null(pi.choices[hi + 1]);
			break;
		case MFD_PARAM_STRING:
			ck_assert_ptr_null(pi.choices);
			ck_assert_int_eq(mfd_param_bounds(pi.name, &lo, &hi), MFD_EINVAL);
			break;
		default:
			ck_abort_msg("%s: type %u", pi.name, pi.type);
		}
		seen_live += pi.live == 1;
	}
	ck_assert_int_eq(i, 0);
	ck_assert_int_eq(n, MFD_P__COUNT);	/* every one */
	ck_assert_int_ge(seen_choice, 2);
	ck_assert_int_ge(seen_live, 3);	/* max-bandwidth, downtime-limit, ... */
	ck_assert_int_eq(mfd_param_next(n, &pi), 0);
	ck_assert_int_eq(mfd_param_next(-1, &pi), 0);
	ck_assert_int_eq(mfd_param_next(0, NULL), MFD_EINVAL);
	pi.size = sizeof(pi) - 8;
	ck_assert_int_eq(mfd_param_next(0, &pi), MFD_EINVAL);
	/* A caller built with a larger struct: nothing written past ours. */
	ck_assert_int_eq(mfd_param_next(0, &big.pi), 1);
	ck_assert_uint_eq(big.after, 0x5a5a5a5a5a5a5a5aull);
	ck_assert_uint_eq(big.pi.size, sizeof(big));
	mfd_migration_free(m);
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
	tcase_add_test(tc, error_forms_without_variadics);
	tcase_add_test(tc, parameters_enumerate);
	suite_add_tcase(s, tc);
	return s;
}
