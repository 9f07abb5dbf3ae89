/* SPDX-License-Identifier: MIT */
/*
 * The transport URI parser: what it accepts, and the message it gives for
 * each way a URI can be wrong.
 */
#include <stdio.h>
#include <string.h>

#include "channels/uri.h"
#include "tests/lib/testlib.h"

struct good_uri {
	const char *uri;
	enum uri_scheme scheme;
	const char *host;	/* tcp */
	const char *port;	/* tcp */
	const char *path;	/* unix, file */
	int fd;			/* fd */
	uint64_t offset;	/* file */
};

static const struct good_uri good[] = {
	{ "tcp:127.0.0.1:5555", URI_TCP, "127.0.0.1", "5555", NULL, -1, 0 },
	{ "tcp:localhost:0", URI_TCP, "localhost", "0", NULL, -1, 0 },
	{ "tcp:[::1]:65535", URI_TCP, "::1", "65535", NULL, -1, 0 },
	{ "tcp:[::]:80", URI_TCP, "::", "80", NULL, -1, 0 },
	{ "tcp:[fe80::1%lo]:80", URI_TCP, "fe80::1%lo", "80", NULL, -1, 0 },
	{ "tcp:[::ffff:127.0.0.1]:1", URI_TCP, "::ffff:127.0.0.1", "1", NULL, -1, 0 },
	{ "tcp:0.0.0.0:4444", URI_TCP, "0.0.0.0", "4444", NULL, -1, 0 },
	{ "tcp:my-host.example_net:22", URI_TCP, "my-host.example_net", "22", NULL, -1, 0 },
	{ "tcp:h:0080", URI_TCP, "h", "80", NULL, -1, 0 },	/* leading zeros are decimal */
	{ "unix:/tmp/mig.sock", URI_UNIX, NULL, NULL, "/tmp/mig.sock", -1, 0 },
	{ "unix:relative/sock", URI_UNIX, NULL, NULL, "relative/sock", -1, 0 },
	{ "unix:/a b:c", URI_UNIX, NULL, NULL, "/a b:c", -1, 0 },
	{ "fd:0", URI_FD, NULL, NULL, NULL, 0, 0 },
	{ "fd:42", URI_FD, NULL, NULL, NULL, 42, 0 },
	{ "fd:2147483647", URI_FD, NULL, NULL, NULL, 2147483647, 0 },
	{ "file:/tmp/vm.img", URI_FILE, NULL, NULL, "/tmp/vm.img", -1, 0 },
	{ "file:/tmp/vm.img,offset=0", URI_FILE, NULL, NULL, "/tmp/vm.img", -1, 0 },
	{ "file:/tmp/vm.img,offset=4096", URI_FILE, NULL, NULL, "/tmp/vm.img", -1, 4096 },
	{ "file:rel:ative,offset=9223372036854775807", URI_FILE, NULL, NULL, "rel:ative", -1,
	  INT64_MAX },
};

START_TEST(good_uris_parse)
{
	const struct good_uri *g = &good[_i];
	struct transport_uri u;
	mfd_error *err = NULL;

	ck_assert_ok(transport_uri_parse(g->uri, &u, &err), err);
	ck_assert_int_eq(u.scheme, g->scheme);
	if (g->host) {
		ck_assert_str_eq(u.host, g->host);
		ck_assert_str_eq(u.port, g->port);
	} else {
		ck_assert_ptr_null(u.host);
	}
	if (g->path)
		ck_assert_str_eq(u.path, g->path);
	else
		ck_assert_ptr_null(u.path);
	ck_assert_int_eq(u.fd, g->fd);
	ck_assert_uint_eq(u.offset, g->offset);
	transport_uri_clear(&u);
}
END_TEST

struct bad_uri {
	const char *uri;
	const char *message;	/* the whole message */
};

/* 108 bytes: one more than sun_path holds with its NUL. */
#define LONG_PATH                                                                          \
	"/tmp/012345678901234567890123456789012345678901234567890123456789012345678901234" \
	"5678901234567890123456789012"

static const struct bad_uri bad[] = {
	{ "", "empty URI (expected tcp:, unix:, fd: or file:)" },
	{ "localhost", "no scheme in 'localhost' (expected tcp:, unix:, fd: or file:)" },
	{ "udp:x", "unknown scheme 'udp' in 'udp:x' (expected tcp:, unix:, fd: or file:)" },
	{ "TCP:h:1", "unknown scheme 'TCP' in 'TCP:h:1' (expected tcp:, unix:, fd: or file:)" },
	{ ":1", "unknown scheme '' in ':1' (expected tcp:, unix:, fd: or file:)" },
	{ "exec:cat", "unknown scheme 'exec' in 'exec:cat' (expected tcp:, unix:, fd: or file:)" },
	{ "tcp:host:99999", "tcp:host:99999: port 99999 is out of range 0..65535" },
	{ "tcp:host:65536", "tcp:host:65536: port 65536 is out of range 0..65535" },
	{ "tcp:host:18446744073709551616",
	  "tcp:host:18446744073709551616: port 18446744073709551616 is out of range 0..65535" },
	{ "tcp:host:http", "tcp:host:http: port 'http' is not a decimal number" },
	{ "tcp:host:-1", "tcp:host:-1: port '-1' is not a decimal number" },
	{ "tcp:host:+80", "tcp:host:+80: port '+80' is not a decimal number" },
	{ "tcp:host: 80", "tcp:host: 80: port ' 80' is not a decimal number" },
	{ "tcp:host:80x", "tcp:host:80x: port '80x' is not a decimal number" },
	{ "tcp:host:", "tcp:host:: missing port after ':'" },
	{ "tcp:host", "tcp:host: missing ':PORT'" },
	{ "tcp:", "tcp:: missing ':PORT'" },
	{ "tcp::80", "tcp::80: missing host (use 0.0.0.0 or [::] to listen on every address)" },
	{ "tcp:::1:80", "tcp:::1:80: too many ':' (an IPv6 address goes in brackets, "
			"e.g. tcp:[::1]:PORT)" },
	{ "tcp:[::1:80", "tcp:[::1:80: missing ']'" },
	{ "tcp:[::1]80", "tcp:[::1]80: expected ':' after ']', found '8'" },
	{ "tcp:[::1]", "tcp:[::1]: missing ':PORT' after ']'" },
	{ "tcp:[]:80", "tcp:[]:80: empty IPv6 address between '[' and ']'" },
	{ "tcp:[127.0.0.1]:80", "tcp:[127.0.0.1]:80: '127.0.0.1' is not an IPv6 address" },
	{ "tcp:[::1]:", "tcp:[::1]:: missing port after ':'" },
	{ "tcp:[::1]:70000", "tcp:[::1]:70000: port 70000 is out of range 0..65535" },
	{ "tcp:ho st:80", "tcp:ho st:80: host 'ho st' contains ' '" },
	{ "tcp:user@host:80", "tcp:user@host:80: host 'user@host' contains '@'" },
	{ "tcp:a/b:80", "tcp:a/b:80: host 'a/b' contains '/'" },
	{ "unix:", "unix:: missing path" },
	{ "unix:" LONG_PATH, "unix:" LONG_PATH ": path is 108 bytes long, a unix socket path "
			     "holds at most 107" },
	{ "fd:", "fd:: missing descriptor number" },
	{ "fd:-1", "fd:-1: descriptor '-1' is not a decimal number >= 0" },
	{ "fd:3x", "fd:3x: descriptor '3x' is not a decimal number >= 0" },
	{ "fd:stdin", "fd:stdin: descriptor 'stdin' is not a decimal number >= 0" },
	{ "fd:2147483648", "fd:2147483648: descriptor 2147483648 is out of range 0..2147483647" },
	{ "file:", "file:: missing path" },
	{ "file:,offset=1", "file:,offset=1: missing path" },
	{ "file:/x,", "file:/x,: empty option after ','" },
	{ "file:/x,ofset=5", "file:/x,ofset=5: unknown option 'ofset=5' (expected offset=N)" },
	{ "file:/x,offset", "file:/x,offset: unknown option 'offset' (expected offset=N)" },
	{ "file:/x,offset=", "file:/x,offset=: missing value after offset=" },
	{ "file:/x,offset=1k", "file:/x,offset=1k: offset '1k' is not a decimal number of bytes" },
	{ "file:/x,offset=-4", "file:/x,offset=-4: offset '-4' is not a decimal number of bytes" },
	{ "file:/x,offset=9223372036854775808",
	  "file:/x,offset=9223372036854775808: offset 9223372036854775808 is out of range "
	  "0..9223372036854775807" },
	{ "file:/x,offset=1,offset=2", "file:/x,offset=1,offset=2: offset given twice" },
	{ "file:/x,offset=1,", "file:/x,offset=1,: empty option after ','" },
};

START_TEST(bad_uris_are_refused_with_the_part_named)
{
	const struct bad_uri *b = &bad[_i];
	struct transport_uri u;
	mfd_error *err = NULL;

	ck_assert_int_eq(transport_uri_parse(b->uri, &u, &err), MFD_EINVAL);
	ck_assert_ptr_nonnull(err);
	ck_assert_msg(strcmp(mfd_error_message(err), b->message) == 0,
		      "'%s': got message '%s', expected '%s'", b->uri, mfd_error_message(err),
		      b->message);
	mfd_error_free(err);
	/* Nothing is left allocated after a failure. */
	ck_assert_ptr_null(u.host);
	ck_assert_ptr_null(u.path);
	transport_uri_clear(&u);
}
END_TEST

START_TEST(null_uri_and_null_errp)
{
	struct transport_uri u;
	mfd_error *err = NULL;

	ck_assert_int_eq(transport_uri_parse(NULL, &u, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "URI is NULL");
	/* Callers that do not want the message still get the code. */
	ck_assert_int_eq(transport_uri_parse("tcp:h:99999", &u, NULL), MFD_EINVAL);
}
END_TEST

START_TEST(longest_unix_path_fits)
{
	char uri[5 + 108];
	struct transport_uri u;
	mfd_error *err = NULL;

	memcpy(uri, "unix:", 5);
	memset(uri + 5, 'p', 107);
	uri[5 + 107] = '\0';
	ck_assert_ok(transport_uri_parse(uri, &u, &err), err);
	ck_assert_uint_eq(strlen(u.path), 107);
	transport_uri_clear(&u);
}
END_TEST

Suite *suite_uri(void)
{
	Suite *s = suite_create("uri");
	TCase *tc = tcase_create("parse");

	tcase_add_loop_test(tc, good_uris_parse, 0, (int)(sizeof(good) / sizeof(good[0])));
	tcase_add_loop_test(tc, bad_uris_are_refused_with_the_part_named, 0,
			    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, null_uri_and_null_errp);
	tcase_add_test(tc, longest_unix_path_fits);
	suite_add_tcase(s, tc);
	return s;
}
