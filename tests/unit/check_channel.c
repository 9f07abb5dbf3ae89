/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/channel.h"
#include "tests/lib/testlib.h"

static int read_exact(mfd_channel *ch, void *buf, size_t len, mfd_error **errp)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };

	return channel_readv_full(ch, &iov, 1, errp);
}

static int write_exact(mfd_channel *ch, const void *buf, size_t len, mfd_error **errp)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

	return channel_writev_full(ch, &iov, 1, errp);
}

START_TEST(socketpair_both_directions)
{
	mfd_channel *a = NULL, *b = NULL;
	mfd_error *err = NULL;
	char buf[6];

	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	ck_assert_ok(write_exact(a, "hello", 5, &err), err);
	ck_assert_ok(read_exact(b, buf, 5, &err), err);
	ck_assert_int_eq(memcmp(buf, "hello", 5), 0);
	ck_assert_ok(write_exact(b, "back", 4, &err), err);
	ck_assert_ok(read_exact(a, buf, 4, &err), err);
	ck_assert_int_eq(memcmp(buf, "back", 4), 0);
	ck_assert_str_eq(mfd_channel_name(a), "socketpair:0");
	mfd_channel_free(a);
	/* The peer is gone: reading reports the end of data with the byte count. */
	ck_assert_int_eq(read_exact(b, buf, 3, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "socketpair:1: end of data after 0 of 3 bytes");
	mfd_channel_free(b);
}
END_TEST

START_TEST(pipe_write_after_reader_closed_is_an_error_not_a_signal)
{
	mfd_channel *rd = NULL, *wr = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_channel_pipe(&rd, &wr, &err), err);
	mfd_channel_free(rd);
	/* With SIGPIPE at its default disposition this would kill the test. */
	ck_assert_int_eq(write_exact(wr, "x", 1, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "pipe:write: write: peer closed");
	mfd_channel_free(wr);
}
END_TEST

START_TEST(file_round_trip_and_missing_file)
{
	char path[] = "/tmp/mfd-chan-XXXXXX";
	int fd = mkstemp(path);
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	char buf[8];

	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_ok(mfd_channel_open_file(path, MFD_CHANNEL_WRITE, &ch, &err), err);
	ck_assert_ok(write_exact(ch, "snapshot", 8, &err), err);
	mfd_channel_free(ch);
	ck_assert_ok(mfd_channel_open_file(path, MFD_CHANNEL_READ, &ch, &err), err);
	ck_assert_ok(read_exact(ch, buf, 8, &err), err);
	ck_assert_int_eq(memcmp(buf, "snapshot", 8), 0);
	ck_assert_int_eq(read_exact(ch, buf, 1, &err), MFD_EEOF);
	mfd_error_free(err);
	err = NULL;
	mfd_channel_free(ch);
	unlink(path);

	ck_assert_int_eq(mfd_channel_open_file("/nonexistent/dir/f", MFD_CHANNEL_READ, &ch, &err),
			 MFD_EIO);
	ck_assert_ptr_null(ch);
	ck_assert_mfd_error(err, MFD_EIO,
			    "file:/nonexistent/dir/f: cannot open for reading: No such file");
	ck_assert_int_eq(mfd_channel_open_file(path, 7, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "neither read nor write");
	ck_assert_int_eq(mfd_channel_open_file("", MFD_CHANNEL_READ, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "empty path");
}
END_TEST

START_TEST(fd_ownership)
{
	int sv[2];
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_ok(mfd_channel_new_fd(sv[0], 0, NULL, &ch, &err), err);
	char want[32];

	snprintf(want, sizeof(want), "fd:%d", sv[0]);
	ck_assert_str_eq(mfd_channel_name(ch), want);
	mfd_channel_free(ch);
	/* Not owned: still open. */
	ck_assert_int_ne(fcntl(sv[0], F_GETFD), -1);
	ck_assert_ok(mfd_channel_new_fd(sv[0], MFD_CHANNEL_OWN_FD, "mine", &ch, &err), err);
	ck_assert_str_eq(mfd_channel_name(ch), "mine");
	mfd_channel_free(ch);
	ck_assert_int_eq(fcntl(sv[0], F_GETFD), -1);
	ck_assert_int_eq(errno, EBADF);
	close(sv[1]);

	ck_assert_int_eq(mfd_channel_new_fd(-1, 0, NULL, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "fd:-1 is not an open file descriptor");
	ck_assert_int_eq(mfd_channel_new_fd(0, 0x80, NULL, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "unknown flags 0x80");
}
END_TEST

START_TEST(mem_writer_limit_is_an_error)
{
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	const void *data;
	size_t len;

	ck_assert_ok(mfd_channel_new_mem_writer(10, &ch, &err), err);
	ck_assert_ok(write_exact(ch, "0123456", 7, &err), err);
	ck_assert_int_eq(write_exact(ch, "7890", 4, &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "would pass the limit of 10 bytes (7 already");
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);
	ck_assert_uint_eq(len, 7);
	ck_assert_int_eq(memcmp(data, "0123456", 7), 0);
	/* A writer is not readable. */
	char c;
	ck_assert_int_eq(read_exact(ch, &c, 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not readable");
	mfd_channel_free(ch);
}
END_TEST

START_TEST(mem_reader_ends)
{
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	char buf[4];
	const void *data;
	size_t len;

	ck_assert_ok(mfd_channel_new_mem_reader("abc", 3, &ch, &err), err);
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), MFD_EINVAL);
	ck_assert_int_eq(read_exact(ch, buf, 4, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "end of data after 3 of 4 bytes");
	ck_assert_int_eq(write_exact(ch, "x", 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not writable");
	mfd_channel_free(ch);
	ck_assert_int_eq(mfd_channel_new_mem_reader(NULL, 5, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL data with length 5");
}
END_TEST

struct blocked_reader {
	mfd_channel *ch;
	int result;
	mfd_error *err;
};

static void *block_in_read(void *arg)
{
	struct blocked_reader *br = arg;
	char c;

	br->result = read_exact(br->ch, &c, 1, &br->err);
	return NULL;
}

static void check_shutdown_unblocks(mfd_channel *reader, mfd_channel *other)
{
	struct blocked_reader br = { .ch = reader };
	pthread_t t;

	ck_assert_int_eq(pthread_create(&t, NULL, block_in_read, &br), 0);
	usleep(50 * 1000);	/* let it block; the assertion does not depend on timing */
	mfd_channel_shutdown(reader);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(br.result, MFD_ECANCELED);
	ck_assert_mfd_error(br.err, MFD_ECANCELED, "channel shut down");
	/* Later I/O fails the same way. */
	ck_assert_int_eq(write_exact(reader, "x", 1, &br.err), MFD_ECANCELED);
	mfd_error_free(br.err);
	mfd_channel_free(reader);
	mfd_channel_free(other);
}

START_TEST(shutdown_unblocks_socket_reader)
{
	mfd_channel *a = NULL, *b = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	check_shutdown_unblocks(a, b);
}
END_TEST

START_TEST(shutdown_unblocks_pipe_reader)
{
	mfd_channel *rd = NULL, *wr = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_channel_pipe(&rd, &wr, &err), err);
	check_shutdown_unblocks(rd, wr);
}
END_TEST

START_TEST(shutdown_and_free_accept_null)
{
	mfd_channel_shutdown(NULL);
	mfd_channel_free(NULL);
	ck_assert_str_eq(mfd_channel_name(NULL), "(null)");
}
END_TEST

Suite *suite_channel(void)
{
	Suite *s = suite_create("channel");
	TCase *tc = tcase_create("transports");

	tcase_add_test(tc, socketpair_both_directions);
	tcase_add_test(tc, pipe_write_after_reader_closed_is_an_error_not_a_signal);
	tcase_add_test(tc, file_round_trip_and_missing_file);
	tcase_add_test(tc, fd_ownership);
	tcase_add_test(tc, mem_writer_limit_is_an_error);
	tcase_add_test(tc, mem_reader_ends);
	tcase_add_test(tc, shutdown_unblocks_socket_reader);
	tcase_add_test(tc, shutdown_unblocks_pipe_reader);
	tcase_add_test(tc, shutdown_and_free_accept_null);
	suite_add_tcase(s, tc);
	return s;
}
