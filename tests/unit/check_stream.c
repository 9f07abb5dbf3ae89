/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/testlib.h"

static mfd_stream *writer(mfd_channel **ch, size_t max)
{
	mfd_stream *s = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_channel_new_mem_writer(max, ch, &err), err);
	ck_assert_ok(mfd_stream_new(*ch, MFD_STREAM_WRITE, &s, &err), err);
	return s;
}

static mfd_stream *reader(mfd_channel **ch, const void *data, size_t len)
{
	mfd_stream *s = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_channel_new_mem_reader(data, len, ch, &err), err);
	ck_assert_ok(mfd_stream_new(*ch, MFD_STREAM_READ, &s, &err), err);
	return s;
}

START_TEST(big_endian_layout_and_round_trip)
{
	static const uint8_t expect[] = {
		0xab, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
		0x05, 0x06, 0x07, 0x08, 0x03, 'r',  'a',  'm',  'x',  'y',
	};
	mfd_channel *ch, *rch;
	mfd_stream *s = writer(&ch, 0), *r;
	const void *data;
	size_t len;
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;
	char str[256], raw[2];

	ck_assert_int_eq(mfd_stream_put_u8(s, 0xab), 0);
	ck_assert_int_eq(mfd_stream_put_be16(s, 0x1234), 0);
	ck_assert_int_eq(mfd_stream_put_be32(s, 0xdeadbeef), 0);
	ck_assert_int_eq(mfd_stream_put_be64(s, 0x0102030405060708ull), 0);
	ck_assert_int_eq(mfd_stream_put_str(s, "ram"), 0);
	ck_assert_int_eq(mfd_stream_put_buf(s, "xy", 2), 0);
	ck_assert_uint_eq(mfd_stream_bytes(s), sizeof(expect));
	/* Nothing reaches the channel before the flush. */
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);
	ck_assert_uint_eq(len, 0);
	ck_assert_int_eq(mfd_stream_flush(s), 0);
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);
	ck_assert_uint_eq(len, sizeof(expect));
	ck_assert_int_eq(memcmp(data, expect, len), 0);

	r = reader(&rch, expect, sizeof(expect));
	ck_assert_int_eq(mfd_stream_peek_u8(r, &u8), 0);
	ck_assert_uint_eq(u8, 0xab);
	ck_assert_int_eq(mfd_stream_get_u8(r, &u8), 0);
	ck_assert_uint_eq(u8, 0xab);
	ck_assert_int_eq(mfd_stream_get_be16(r, &u16), 0);
	ck_assert_uint_eq(u16, 0x1234);
	ck_assert_int_eq(mfd_stream_get_be32(r, &u32), 0);
	ck_assert_uint_eq(u32, 0xdeadbeef);
	ck_assert_int_eq(mfd_stream_get_be64(r, &u64), 0);
	ck_assert(u64 == 0x0102030405060708ull);
	ck_assert_int_eq(mfd_stream_get_str(r, str, &len), 0);
	ck_assert_str_eq(str, "ram");
	ck_assert_uint_eq(len, 3);
	ck_assert_int_eq(mfd_stream_get_buf(r, raw, 2), 0);
	ck_assert_int_eq(memcmp(raw, "xy", 2), 0);
	ck_assert_uint_eq(mfd_stream_bytes(r), sizeof(expect));
	mfd_stream_free(r);
	mfd_channel_free(rch);
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

START_TEST(errors_latch_and_fail_fast)
{
	mfd_channel *ch;
	mfd_stream *s = writer(&ch, 0);
	mfd_error *err = NULL;
	char longstr[300];

	memset(longstr, 'a', sizeof(longstr) - 1);
	longstr[sizeof(longstr) - 1] = '\0';
	ck_assert_int_eq(mfd_stream_put_str(s, longstr), MFD_ETOOBIG);
	/* Every later call returns the first error, even a different kind of call. */
	ck_assert_int_eq(mfd_stream_put_u8(s, 1), MFD_ETOOBIG);
	ck_assert_int_eq(mfd_stream_flush(s), MFD_ETOOBIG);
	ck_assert_int_eq(mfd_stream_set_error(s, MFD_EIO, "later"), MFD_ETOOBIG);
	ck_assert_int_eq(mfd_stream_error(s, &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "mem:writer: string of 299 bytes does not fit");
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

START_TEST(truncated_read_names_offset)
{
	static const uint8_t data[] = { 1, 2, 3, 4, 5, 6 };
	mfd_channel *ch;
	mfd_stream *s = reader(&ch, data, sizeof(data));
	mfd_error *err = NULL;
	uint32_t v;

	ck_assert_int_eq(mfd_stream_get_be32(s, &v), 0);
	ck_assert_int_eq(mfd_stream_get_be32(s, &v), MFD_EEOF);
	ck_assert_int_eq(mfd_stream_get_u8(s, (uint8_t *)&v), MFD_EEOF);
	ck_assert_int_eq(mfd_stream_error(s, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "mem:reader: unexpected end of data at byte 6 (needed 2 more)");
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

START_TEST(wrong_direction_is_refused)
{
	mfd_channel *ch;
	mfd_stream *s = reader(&ch, "x", 1);
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_stream_put_u8(s, 1), MFD_EINVAL);
	ck_assert_int_eq(mfd_stream_error(s, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "write call on a read stream");
	mfd_stream_free(s);
	mfd_channel_free(ch);
	ck_assert_int_eq(mfd_stream_new(NULL, MFD_STREAM_READ, &s, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "channel is NULL");
}
END_TEST

START_TEST(skip_and_empty_reads)
{
	uint8_t data[10000];
	mfd_channel *ch;
	mfd_stream *s;
	uint8_t v;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)i;
	s = reader(&ch, data, sizeof(data));
	ck_assert_int_eq(mfd_stream_get_buf(s, NULL, 0), 0);
	ck_assert_int_eq(mfd_stream_skip(s, 9000), 0);
	ck_assert_int_eq(mfd_stream_get_u8(s, &v), 0);
	ck_assert_uint_eq(v, (uint8_t)9000);
	ck_assert_int_eq(mfd_stream_skip(s, 1000), MFD_EEOF);
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

/* Mixed small items, copied buffers and zero-copy references, across a real socket. */
#define BIG (3u << 20)

struct pump {
	mfd_channel *ch;
	uint8_t *big;
	int result;
};

static void *pump_writer(void *arg)
{
	struct pump *p = arg;
	mfd_stream *s = NULL;

	p->result = mfd_stream_new(p->ch, MFD_STREAM_WRITE, &s, NULL);
	if (p->result < 0)
		return NULL;
	for (unsigned i = 0; i < 200; i++) {
		mfd_stream_put_be32(s, i);
		/* 4 KiB "pages" by reference, like guest memory */
		mfd_stream_put_buf_ref(s, p->big + (size_t)i * 4096, 4096);
		mfd_stream_put_u8(s, (uint8_t)~i);
	}
	mfd_stream_put_buf(s, p->big, BIG);	/* large copy: written through */
	mfd_stream_put_be64(s, 0x1122334455667788ull);
	p->result = mfd_stream_flush(s);
	mfd_stream_free(s);
	return NULL;
}

START_TEST(socket_round_trip_with_references)
{
	struct pump p = { 0 };
	mfd_channel *rd = NULL;
	mfd_error *err = NULL;
	mfd_stream *s = NULL;
	uint8_t *got = malloc(BIG), page[4096], v8;
	uint32_t v32;
	uint64_t v64;
	pthread_t t;

	p.big = malloc(BIG);
	ck_assert_ptr_nonnull(p.big);
	ck_assert_ptr_nonnull(got);
	for (size_t i = 0; i < BIG; i++)
		p.big[i] = (uint8_t)(i * 2654435761u >> 13);
	ck_assert_ok(mfd_channel_socketpair(&p.ch, &rd, &err), err);
	ck_assert_int_eq(pthread_create(&t, NULL, pump_writer, &p), 0);
	ck_assert_ok(mfd_stream_new(rd, MFD_STREAM_READ, &s, &err), err);
	for (unsigned i = 0; i < 200; i++) {
		ck_assert_int_eq(mfd_stream_get_be32(s, &v32), 0);
		ck_assert_uint_eq(v32, i);
		ck_assert_int_eq(mfd_stream_get_buf(s, page, sizeof(page)), 0);
		ck_assert_int_eq(memcmp(page, p.big + (size_t)i * 4096, 4096), 0);
		ck_assert_int_eq(mfd_stream_get_u8(s, &v8), 0);
		ck_assert_uint_eq(v8, (uint8_t)~i);
	}
	ck_assert_int_eq(mfd_stream_get_buf(s, got, BIG), 0);
	ck_assert_int_eq(memcmp(got, p.big, BIG), 0);
	ck_assert_int_eq(mfd_stream_get_be64(s, &v64), 0);
	ck_assert(v64 == 0x1122334455667788ull);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(p.result, 0);
	ck_assert_uint_eq(mfd_stream_bytes(s), 200u * 4101u + BIG + 8);
	mfd_stream_free(s);
	mfd_channel_free(rd);
	mfd_channel_free(p.ch);
	free(p.big);
	free(got);
}
END_TEST

START_TEST(many_references_force_intermediate_flushes)
{
	/* More queued items than one vectored write holds must still arrive in order. */
	static uint8_t pages[300][128];
	mfd_channel *ch;
	mfd_stream *s = writer(&ch, 0);
	const void *data;
	size_t len;

	for (int i = 0; i < 300; i++) {
		memset(pages[i], i, sizeof(pages[i]));
		ck_assert_int_eq(mfd_stream_put_buf_ref(s, pages[i], sizeof(pages[i])), 0);
		ck_assert_int_eq(mfd_stream_put_be16(s, (uint16_t)i), 0);
	}
	ck_assert_int_eq(mfd_stream_flush(s), 0);
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);
	ck_assert_uint_eq(len, 300 * 130);
	for (int i = 0; i < 300; i++) {
		const uint8_t *p = (const uint8_t *)data + i * 130;

		ck_assert_uint_eq(p[0], (uint8_t)i);
		ck_assert_uint_eq(p[127], (uint8_t)i);
		ck_assert_uint_eq((p[128] << 8) | p[129], i);
	}
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

START_TEST(channel_failure_is_latched_with_channel_message)
{
	mfd_channel *ch;
	mfd_stream *s = writer(&ch, 16);
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_stream_put_buf(s, "0123456789abcdefXYZ", 19), 0);
	ck_assert_int_eq(mfd_stream_flush(s), MFD_ETOOBIG);
	ck_assert_int_eq(mfd_stream_put_u8(s, 0), MFD_ETOOBIG);
	ck_assert_int_eq(mfd_stream_error(s, &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "limit of 16 bytes");
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

Suite *suite_stream(void)
{
	Suite *s = suite_create("stream");
	TCase *tc = tcase_create("buffered");

	tcase_add_test(tc, big_endian_layout_and_round_trip);
	tcase_add_test(tc, errors_latch_and_fail_fast);
	tcase_add_test(tc, truncated_read_names_offset);
	tcase_add_test(tc, wrong_direction_is_refused);
	tcase_add_test(tc, skip_and_empty_reads);
	tcase_add_test(tc, socket_round_trip_with_references);
	tcase_add_test(tc, many_references_force_intermediate_flushes);
	tcase_add_test(tc, channel_failure_is_latched_with_channel_message);
	suite_add_tcase(s, tc);
	return s;
}
