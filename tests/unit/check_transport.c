/* SPDX-License-Identifier: MIT */
/*
 * Transports over real sockets, pipes and files: connect, listen, accept,
 * gather, options, deadlines and cancellation.
 *
 * Network tests use only 127.0.0.1, ::1 and unix sockets in a fresh
 * temporary directory, always with port 0; every wait is bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "channels/fd.h"
#include "tests/lib/testlib.h"

/* Generous: only a broken implementation waits this long. */
#define WAIT_MS 10000
/* The bound for a cancel to take effect; three times that where a
 * sanitizer slows the unwinding thread (a 64 MiB write under TSan once took
 * 117 ms on a loaded machine). */
#define CANCEL_BOUND_MS (TEST_SANITIZED ? 300 : 100)

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

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int sockopt_int(int fd, int level, int opt)
{
	socklen_t len = sizeof(int);
	int v = -1;

	ck_assert_int_eq(getsockopt(fd, level, opt, &v, &len), 0);
	return v;
}

static bool fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

/* The port of "tcp:HOST:PORT". */
static int uri_port(const char *uri)
{
	const char *colon = strrchr(uri, ':');

	ck_assert_ptr_nonnull(colon);
	return atoi(colon + 1);
}

/* A fresh temporary directory; path receives it. */
static void make_tmpdir(char path[64])
{
	snprintf(path, 64, "/tmp/mfd-transport-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(path));
}

/* ---------------------------------------------------------------------- */
/* Moving data                                                             */

struct writer_job {
	mfd_channel *ch;
	const uint8_t *data;
	size_t len;
	bool finish;
	int result;
	mfd_error *err;
	double returned_ms;
};

static void *writer_thread(void *arg)
{
	struct writer_job *w = arg;

	w->result = write_exact(w->ch, w->data, w->len, &w->err);
	if (w->result == 0 && w->finish)
		w->result = mfd_channel_finish(w->ch, &w->err);
	w->returned_ms = now_ms();
	return NULL;
}

static uint8_t *pattern(size_t len, unsigned seed)
{
	uint8_t *p = malloc(len);

	ck_assert_ptr_nonnull(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((i * 31u + seed) ^ (i >> 9));
	return p;
}

/* len bytes from src to dst while a thread writes, then the end of data. */
static void send_and_check(mfd_channel *src, mfd_channel *dst, size_t len, unsigned seed)
{
	uint8_t *data = pattern(len, seed), *got = malloc(len), extra;
	struct writer_job w = { .ch = src, .data = data, .len = len, .finish = true };
	mfd_error *err = NULL;
	pthread_t t;

	ck_assert_ptr_nonnull(got);
	ck_assert_int_eq(pthread_create(&t, NULL, writer_thread, &w), 0);
	ck_assert_ok(read_exact(dst, got, len, &err), err);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_msg(w.result == 0, "%s: %s", mfd_channel_name(src), mfd_error_message(w.err));
	ck_assert_int_eq(memcmp(got, data, len), 0);
	/* finish() ended the direction cleanly: the reader sees the end of data. */
	ck_assert_int_eq(read_exact(dst, &extra, 1, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "end of data after 0 of 1 bytes");
	free(data);
	free(got);
}

/* Both directions of a connected pair, each closed with finish(). */
static void check_duplex(mfd_channel *a, mfd_channel *b)
{
	send_and_check(a, b, 4u << 20, 1);
	send_and_check(b, a, 1u << 20, 2);
}

/* Listen on uri, connect to what the listener reports, accept. */
static void open_pair(const char *uri, mfd_listener **l, mfd_channel **client,
		      mfd_channel **server)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_listener_new(uri, l, &err), err);
	ck_assert_ok(mfd_channel_connect(mfd_listener_uri(*l), WAIT_MS, client, &err), err);
	ck_assert_ok(mfd_listener_accept(*l, WAIT_MS, server, &err), err);
}

static void check_tcp_pair(mfd_listener *l, mfd_channel *client, mfd_channel *server,
			   const char *addr_prefix)
{
	char want[128];

	ck_assert_str_eq(mfd_channel_name(client), mfd_listener_uri(l));
	snprintf(want, sizeof(want), "%s<-%s", mfd_listener_uri(l), addr_prefix);
	ck_assert_msg(strncmp(mfd_channel_name(server), want, strlen(want)) == 0,
		      "accepted channel '%s' should start with '%s'", mfd_channel_name(server),
		      want);
	ck_assert(fd_channel_is_tcp(client));
	ck_assert(fd_channel_is_tcp(server));
	ck_assert_int_eq(sockopt_int(fd_channel_fd(client), IPPROTO_TCP, TCP_NODELAY), 1);
	ck_assert_int_eq(sockopt_int(fd_channel_fd(server), IPPROTO_TCP, TCP_NODELAY), 1);
	check_duplex(client, server);
}

START_TEST(tcp_ipv4_transfer)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;

	open_pair("tcp:127.0.0.1:0", &l, &c, &s);
	ck_assert_msg(strncmp(mfd_listener_uri(l), "tcp:127.0.0.1:", 14) == 0, "%s",
		      mfd_listener_uri(l));
	ck_assert_int_gt(uri_port(mfd_listener_uri(l)), 0);
	check_tcp_pair(l, c, s, "127.0.0.1:");
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
}
END_TEST

/* Whether ::1 can be bound here; why not, in reason. */
static bool ipv6_loopback_available(char *reason, size_t size)
{
	struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;

	if (!ok)
		snprintf(reason, size, "%s", strerror(errno));
	if (fd >= 0)
		close(fd);
	return ok;
}

START_TEST(tcp_ipv6_transfer)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;
	char reason[128];

	if (!ipv6_loopback_available(reason, sizeof(reason))) {
		test_skip("ipv6", "transport: tcp_ipv6_transfer: cannot bind [::1] (%s)", reason);
		return;
	}
	open_pair("tcp:[::1]:0", &l, &c, &s);
	ck_assert_msg(strncmp(mfd_listener_uri(l), "tcp:[::1]:", 10) == 0, "%s",
		      mfd_listener_uri(l));
	ck_assert_int_gt(uri_port(mfd_listener_uri(l)), 0);
	check_tcp_pair(l, c, s, "[::1]:");
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
}
END_TEST

/* A name goes through the resolver; every address it gives is tried in turn. */
START_TEST(tcp_by_host_name)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;
	mfd_error *err = NULL;
	char uri[64];

	ck_assert_ok(mfd_listener_new("tcp:localhost:0", &l, &err), err);
	snprintf(uri, sizeof(uri), "tcp:localhost:%d", uri_port(mfd_listener_uri(l)));
	ck_assert_ok(mfd_channel_connect(uri, WAIT_MS, &c, &err), err);
	ck_assert_ok(mfd_listener_accept(l, WAIT_MS, &s, &err), err);
	ck_assert_str_eq(mfd_channel_name(c), uri);
	check_duplex(c, s);
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
}
END_TEST

START_TEST(unix_transfer_replaces_stale_socket_and_cleans_up)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[64], uri[128], want[160];
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;
	mfd_error *err = NULL;
	struct stat st;
	int fd;

	make_tmpdir(dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/mig.sock", dir);
	snprintf(uri, sizeof(uri), "unix:%s", sa.sun_path);
	/* A socket file left behind by a process that died. */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	ck_assert_int_eq(stat(sa.sun_path, &st), 0);

	open_pair(uri, &l, &c, &s);
	ck_assert_str_eq(mfd_listener_uri(l), uri);
	ck_assert_str_eq(mfd_channel_name(c), uri);
	snprintf(want, sizeof(want), "%s<-pid %d", uri, (int)getpid());
	ck_assert_str_eq(mfd_channel_name(s), want);
	ck_assert(!fd_channel_is_tcp(c));
	check_duplex(c, s);
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
	/* The listener removed its socket file. */
	ck_assert_int_eq(stat(sa.sun_path, &st), -1);
	ck_assert_int_eq(errno, ENOENT);

	/* Something that is not a socket is never replaced. */
	fd = open(sa.sun_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(mfd_listener_new(uri, &l, &err), MFD_EINVAL);
	ck_assert_ptr_null(l);
	ck_assert_mfd_error(err, MFD_EINVAL, "exists and is not a socket; refusing to replace it");
	ck_assert_int_eq(stat(sa.sun_path, &st), 0);
	unlink(sa.sun_path);

	/* Nobody listening. */
	ck_assert_int_eq(mfd_channel_connect(uri, WAIT_MS, &c, &err), MFD_EIO);
	ck_assert_ptr_null(c);
	ck_assert_mfd_error(err, MFD_EIO, ": cannot connect: No such file or directory");
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* fd: and file:                                                           */

START_TEST(fd_connect_is_borrowed)
{
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	char uri[32], buf[5];
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	snprintf(uri, sizeof(uri), "fd:%d", sv[0]);
	ck_assert_ok(mfd_channel_connect(uri, 0, &ch, &err), err);
	ck_assert_str_eq(mfd_channel_name(ch), uri);
	ck_assert_ok(write_exact(ch, "hello", 5, &err), err);
	ck_assert_int_eq(read(sv[1], buf, 5), 5);
	ck_assert_int_eq(memcmp(buf, "hello", 5), 0);
	mfd_channel_free(ch);
	ck_assert(fd_is_open(sv[0]));
	close(sv[0]);
	/* sv[0] is closed now: refused, not wrapped. */
	ck_assert_int_eq(mfd_channel_connect(uri, 0, &ch, &err), MFD_EINVAL);
	ck_assert_ptr_null(ch);
	ck_assert_mfd_error(err, MFD_EINVAL, "is not an open file descriptor: Bad file descriptor");
	close(sv[1]);
}
END_TEST

START_TEST(fd_listener_accepts_on_a_borrowed_listening_socket)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL, *slot = NULL;
	mfd_error *err = NULL;
	char uri[32], target[64], want[64];
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 4), 0);
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
	snprintf(uri, sizeof(uri), "fd:%d", lfd);
	snprintf(target, sizeof(target), "tcp:127.0.0.1:%d", ntohs(sa.sin_port));

	ck_assert_ok(mfd_listener_new(uri, &l, &err), err);
	ck_assert_str_eq(mfd_listener_uri(l), uri);
	ck_assert_ok(mfd_channel_connect(target, WAIT_MS, &c, &err), err);
	ck_assert_ok(mfd_listener_accept(l, WAIT_MS, &s, &err), err);
	snprintf(want, sizeof(want), "%s<-127.0.0.1:", uri);
	ck_assert_msg(strncmp(mfd_channel_name(s), want, strlen(want)) == 0, "%s",
		      mfd_channel_name(s));
	ck_assert_int_eq(sockopt_int(fd_channel_fd(s), IPPROTO_TCP, TCP_NODELAY), 1);
	check_duplex(c, s);
	mfd_channel_free(c);
	mfd_channel_free(s);

	/* Gathering stops accepting but leaves the caller's socket alone. */
	ck_assert_ok(mfd_channel_connect(target, WAIT_MS, &c, &err), err);
	ck_assert_ok(mfd_listener_gather(l, 1, WAIT_MS, NULL, NULL, &slot, &err), err);
	ck_assert_int_eq(mfd_listener_accept(l, 10, &s, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "no longer listening");
	mfd_channel_free(slot);
	mfd_channel_free(c);
	mfd_listener_free(l);
	ck_assert(fd_is_open(lfd));
	ck_assert_int_eq(sockopt_int(lfd, SOL_SOCKET, SO_ACCEPTCONN), 1);
	close(lfd);
}
END_TEST

START_TEST(fd_listener_hands_out_a_connected_descriptor_once)
{
	mfd_listener *l = NULL;
	mfd_channel *ch = NULL, *again = NULL;
	mfd_error *err = NULL;
	char uri[32], buf[4];
	int sv[2], pfd[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	snprintf(uri, sizeof(uri), "fd:%d", sv[0]);
	ck_assert_ok(mfd_listener_new(uri, &l, &err), err);
	ck_assert_ok(mfd_listener_accept(l, 0, &ch, &err), err);
	ck_assert_str_eq(mfd_channel_name(ch), uri);
	ck_assert_int_eq(mfd_listener_accept(l, 0, &again, &err), MFD_ESTATE);
	ck_assert_ptr_null(again);
	ck_assert_mfd_error(err, MFD_ESTATE, "the only channel of this listener was already "
			    "handed out");
	ck_assert_int_eq(write(sv[1], "abc", 3), 3);
	ck_assert_ok(read_exact(ch, buf, 3, &err), err);
	ck_assert_int_eq(memcmp(buf, "abc", 3), 0);
	mfd_channel_free(ch);
	mfd_listener_free(l);
	ck_assert(fd_is_open(sv[0]));
	close(sv[0]);
	close(sv[1]);

	/* A pipe the caller opened, through gather. */
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	snprintf(uri, sizeof(uri), "fd:%d", pfd[0]);
	ck_assert_ok(mfd_listener_new(uri, &l, &err), err);
	ck_assert_ok(mfd_listener_gather(l, 1, WAIT_MS, NULL, NULL, &ch, &err), err);
	ck_assert_int_eq(write(pfd[1], "xyz", 3), 3);
	ck_assert_ok(read_exact(ch, buf, 3, &err), err);
	ck_assert_int_eq(memcmp(buf, "xyz", 3), 0);
	mfd_channel_free(ch);
	mfd_listener_free(l);
	ck_assert(fd_is_open(pfd[0]));
	close(pfd[0]);
	close(pfd[1]);

	/* A closed descriptor is refused at once. */
	ck_assert_int_eq(mfd_listener_new(uri, &l, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, ": not an open file descriptor: Bad file descriptor");
}
END_TEST

START_TEST(file_with_offset_keeps_what_comes_before)
{
	static const char stream[] = "STREAM-DATA";
	char dir[64], path[128], uri[160], name[160], buf[128];
	mfd_listener *l = NULL;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	int fd;

	make_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/vm.img", dir);
	snprintf(uri, sizeof(uri), "file:%s,offset=64", path);
	snprintf(name, sizeof(name), "file:%s", path);
	/* 100 bytes of the VMM's own header; the tail past the offset is stale. */
	memset(buf, 'H', 100);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_eq(write(fd, buf, 100), 100);
	close(fd);

	ck_assert_ok(mfd_channel_connect(uri, 0, &ch, &err), err);
	ck_assert_str_eq(mfd_channel_name(ch), name);
	ck_assert_ok(write_exact(ch, stream, sizeof(stream) - 1, &err), err);
	ck_assert_ok(mfd_channel_finish(ch, &err), err);
	mfd_channel_free(ch);

	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(read(fd, buf, sizeof(buf)), 64 + (int)sizeof(stream) - 1);
	close(fd);
	for (int i = 0; i < 64; i++)
		ck_assert_int_eq(buf[i], 'H');
	ck_assert_int_eq(memcmp(buf + 64, stream, sizeof(stream) - 1), 0);

	/* The destination reads from the same offset. */
	ck_assert_ok(mfd_listener_new(uri, &l, &err), err);
	ck_assert_str_eq(mfd_listener_uri(l), uri);
	ck_assert_ok(mfd_listener_accept(l, 0, &ch, &err), err);
	ck_assert_str_eq(mfd_channel_name(ch), name);
	ck_assert_ok(read_exact(ch, buf, sizeof(stream) - 1, &err), err);
	ck_assert_int_eq(memcmp(buf, stream, sizeof(stream) - 1), 0);
	ck_assert_int_eq(read_exact(ch, buf, 1, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "end of data after 0 of 1 bytes");
	mfd_channel_free(ch);
	ck_assert_int_eq(mfd_listener_accept(l, 0, &ch, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "already handed out");
	mfd_listener_free(l);
	unlink(path);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(file_without_offset_is_created)
{
	char dir[64], path[128], uri[160];
	mfd_listener *l = NULL;
	mfd_channel *src = NULL, *dst = NULL;
	mfd_error *err = NULL;
	size_t len = 1u << 20;
	uint8_t *data = pattern(len, 7), *got = malloc(len);
	struct stat st;

	make_tmpdir(dir);
	snprintf(path, sizeof(path), "%s/snap", dir);
	snprintf(uri, sizeof(uri), "file:%s", path);
	ck_assert_ok(mfd_channel_connect(uri, 0, &src, &err), err);
	ck_assert_ok(write_exact(src, data, len, &err), err);
	mfd_channel_free(src);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert_int_eq(st.st_size, (off_t)len);

	ck_assert_ok(mfd_listener_new(uri, &l, &err), err);
	ck_assert_ok(mfd_listener_accept(l, 0, &dst, &err), err);
	ck_assert_ok(read_exact(dst, got, len, &err), err);
	ck_assert_int_eq(memcmp(got, data, len), 0);
	mfd_channel_free(dst);
	mfd_listener_free(l);
	unlink(path);

	/* Errors name the URI and the system's reason. */
	ck_assert_int_eq(mfd_listener_new(uri, &l, &err), MFD_EIO);
	ck_assert_mfd_error(err, MFD_EIO, ": cannot open for reading: No such file or directory");
	snprintf(uri, sizeof(uri), "file:%s/no/such/dir", dir);
	ck_assert_int_eq(mfd_channel_connect(uri, 0, &src, &err), MFD_EIO);
	ck_assert_mfd_error(err, MFD_EIO, "/no/such/dir: cannot open for writing: No such file");
	ck_assert_int_eq(rmdir(dir), 0);
	free(data);
	free(got);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Connection failures                                                     */

/* A TCP socket bound to a loopback port nobody listens on. */
static int bound_not_listening(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

START_TEST(connect_to_a_closed_port_is_refused)
{
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	char uri[64], want[128];
	int port, fd = bound_not_listening(&port);

	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", port);
	snprintf(want, sizeof(want), "%s: cannot connect: 127.0.0.1:%d: Connection refused", uri,
		 port);
	ck_assert_int_eq(mfd_channel_connect(uri, WAIT_MS, &ch, &err), MFD_EIO);
	ck_assert_ptr_null(ch);
	ck_assert_mfd_error(err, MFD_EIO, want);
	close(fd);
}
END_TEST

/*
 * Linux drops SYNs while a listener's accept queue is full, so a connect to
 * it hangs until our deadline: a connect timeout that stays on loopback.
 */
START_TEST(connect_timeout_against_a_full_backlog)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	char uri[64];
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), filler;
	double t0, elapsed;

	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 0), 0);
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
	filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(connect(filler, (struct sockaddr *)&sa, sizeof(sa)), 0);
	usleep(20 * 1000);	/* the server side files the filler in its accept queue */
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", ntohs(sa.sin_port));

	t0 = now_ms();
	ck_assert_int_eq(mfd_channel_connect(uri, 300, &ch, &err), MFD_ETIMEDOUT);
	elapsed = now_ms() - t0;
	ck_assert_ptr_null(ch);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "no connection within 300 ms (127.0.0.1:");
	ck_assert_msg(elapsed >= 290 && elapsed < WAIT_MS, "timed out after %.0f ms", elapsed);
	close(filler);
	close(lfd);
}
END_TEST

START_TEST(unix_connect_timeout_against_a_full_backlog)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	char dir[64], uri[128];
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), filler[2];
	double t0, elapsed;

	make_tmpdir(dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s", dir);
	snprintf(uri, sizeof(uri), "unix:%s", sa.sun_path);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 0), 0);
	/* Backlog 0 holds one pending connection; the next connect() waits. */
	for (int i = 0; i < 2; i++) {
		filler[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (connect(filler[i], (struct sockaddr *)&sa, sizeof(sa)) < 0)
			ck_assert_int_eq(errno, EAGAIN);
	}
	t0 = now_ms();
	ck_assert_int_eq(mfd_channel_connect(uri, 200, &ch, &err), MFD_ETIMEDOUT);
	elapsed = now_ms() - t0;
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "no connection within 200 ms");
	ck_assert_msg(elapsed >= 190 && elapsed < WAIT_MS, "timed out after %.0f ms", elapsed);
	close(filler[0]);
	close(filler[1]);
	close(lfd);
	unlink(sa.sun_path);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(bad_uris_and_arguments)
{
	mfd_listener *l = NULL;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_channel_connect("udp:x", 0, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "unknown scheme 'udp' in 'udp:x'");
	ck_assert_int_eq(mfd_listener_new("tcp:127.0.0.1:99999", &l, &err), MFD_EINVAL);
	ck_assert_ptr_null(l);
	ck_assert_mfd_error(err, MFD_EINVAL, "port 99999 is out of range 0..65535");
	ck_assert_int_eq(mfd_channel_connect("tcp:127.0.0.1:1", -5, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "tcp:127.0.0.1:1: timeout -5 ms is negative");
	ck_assert_int_eq(mfd_channel_connect("tcp:127.0.0.1:1", 0, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "out is NULL");
	ck_assert_int_eq(mfd_listener_new(NULL, &l, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "URI is NULL");
	ck_assert_int_eq(mfd_listener_accept(NULL, 0, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL argument");
	ck_assert_int_eq(mfd_listener_gather(NULL, 1, 0, NULL, NULL, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL argument");
	ck_assert_str_eq(mfd_listener_uri(NULL), "(null)");
	mfd_listener_shutdown(NULL);
	mfd_listener_free(NULL);

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	ck_assert_int_eq(mfd_listener_accept(l, -1, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "accept timeout -1 ms is negative");
	ck_assert_int_eq(mfd_listener_gather(l, 0, 0, NULL, NULL, &ch, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "count must be 1..");
	mfd_listener_free(l);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Options and deadlines                                                   */

static void tcp_pair(mfd_listener **l, mfd_channel **c, mfd_channel **s)
{
	open_pair("tcp:127.0.0.1:0", l, c, s);
}

START_TEST(read_timeout_on_a_silent_peer)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL, *rd = NULL, *wr = NULL;
	mfd_error *err = NULL;
	char want[160], byte;
	double t0, elapsed;

	tcp_pair(&l, &c, &s);
	ck_assert_ok(mfd_channel_set_option(s, "timeout-ms", 100, &err), err);
	t0 = now_ms();
	ck_assert_int_eq(read_exact(s, &byte, 1, &err), MFD_ETIMEDOUT);
	elapsed = now_ms() - t0;
	snprintf(want, sizeof(want), "%s: no data arrived within 100 ms (timeout-ms)",
		 mfd_channel_name(s));
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, want);
	ck_assert_msg(elapsed >= 95 && elapsed < WAIT_MS, "timed out after %.0f ms", elapsed);
	/* The channel is still usable: the deadline bounds one wait, nothing more. */
	ck_assert_ok(write_exact(c, "z", 1, &err), err);
	ck_assert_ok(read_exact(s, &byte, 1, &err), err);
	ck_assert_int_eq(byte, 'z');
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);

	/* Pipes wait in poll() too. */
	ck_assert_ok(mfd_channel_pipe(&rd, &wr, &err), err);
	ck_assert_ok(mfd_channel_set_option(rd, "timeout-ms", 50, &err), err);
	ck_assert_int_eq(read_exact(rd, &byte, 1, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "pipe:read: no data arrived within 50 ms");
	mfd_channel_free(rd);
	mfd_channel_free(wr);
}
END_TEST

/* The writer's peer never reads: with a deadline the write gives up. */
START_TEST(write_timeout_when_the_peer_does_not_read)
{
	size_t len = 64u << 20;
	uint8_t *data = calloc(1, len);
	mfd_channel *a = NULL, *b = NULL, *ch = NULL;
	mfd_error *err = NULL;
	char name[32];
	int pfd[2];

	ck_assert_ptr_nonnull(data);
	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	ck_assert_ok(mfd_channel_set_option(a, "timeout-ms", 100, &err), err);
	ck_assert_int_eq(write_exact(a, data, len, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT,
			    "socketpair:0: could not write for 100 ms, the peer is not reading");
	mfd_channel_free(a);
	mfd_channel_free(b);

	/* A borrowed blocking pipe: a full-size write would sleep in the kernel. */
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	snprintf(name, sizeof(name), "fd:%d", pfd[1]);
	ck_assert_ok(mfd_channel_connect(name, 0, &ch, &err), err);
	ck_assert_ok(mfd_channel_set_option(ch, "timeout-ms", 100, &err), err);
	ck_assert_int_eq(write_exact(ch, data, len, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "could not write for 100 ms");
	mfd_channel_free(ch);
	ck_assert_int_eq(fcntl(pfd[1], F_GETFL) & O_NONBLOCK, 0);	/* flags untouched */
	close(pfd[0]);
	close(pfd[1]);
	free(data);
}
END_TEST

START_TEST(socket_options)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL, *a = NULL, *b = NULL, *m = NULL;
	mfd_error *err = NULL;
	char dir[64], path[128];
	int fd;

	tcp_pair(&l, &c, &s);
	fd = fd_channel_fd(c);
	ck_assert_ok(mfd_channel_set_option(c, "peer-timeout-ms", 5000, &err), err);
	ck_assert_int_eq(sockopt_int(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 5000);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_KEEPIDLE), 2);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_KEEPINTVL), 1);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_KEEPCNT), 3);
	ck_assert_ok(mfd_channel_set_option(c, "peer-timeout-ms", 600000, &err), err);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_KEEPIDLE), 300);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_KEEPINTVL), 100);
	ck_assert_ok(mfd_channel_set_option(c, "peer-timeout-ms", 0, &err), err);
	ck_assert_int_eq(sockopt_int(fd, SOL_SOCKET, SO_KEEPALIVE), 0);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 0);
	ck_assert_int_eq(mfd_channel_set_option(c, "peer-timeout-ms", -1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, ": peer-timeout-ms -1 is out of range 0..2147483647");

	ck_assert_ok(mfd_channel_set_option(c, "nodelay", 0, &err), err);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_NODELAY), 0);
	ck_assert_ok(mfd_channel_set_option(c, "nodelay", 1, &err), err);
	ck_assert_int_eq(sockopt_int(fd, IPPROTO_TCP, TCP_NODELAY), 1);
	ck_assert_int_eq(mfd_channel_set_option(c, "nodelay", 2, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "nodelay 2 is out of range 0..1");

	ck_assert_ok(mfd_channel_set_option(c, "sndbuf", 1 << 20, &err), err);
	ck_assert_int_ge(sockopt_int(fd, SOL_SOCKET, SO_SNDBUF), 1 << 12);
	ck_assert_ok(mfd_channel_set_option(c, "rcvbuf", 1 << 16, &err), err);
	ck_assert_ok(mfd_channel_set_option(c, "sndbuf", 0, &err), err);
	ck_assert_int_eq(mfd_channel_set_option(c, "timeout-ms", 1LL << 40, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "timeout-ms 1099511627776 is out of range");
	ck_assert_int_eq(mfd_channel_set_option(c, "linger", 1, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "unknown option 'linger' (expected timeout-ms, "
			    "peer-timeout-ms, nodelay, zero-copy, sndbuf or rcvbuf)");
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);

	/* TCP-only options on a unix socket. */
	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	ck_assert_int_eq(mfd_channel_set_option(a, "peer-timeout-ms", 1000, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "socketpair:0: option 'peer-timeout-ms' needs a "
			    "TCP socket, this is a unix socket");
	ck_assert_int_eq(mfd_channel_set_option(a, "nodelay", 1, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "needs a TCP socket");
	ck_assert_ok(mfd_channel_set_option(a, "sndbuf", 1 << 16, &err), err);
	ck_assert_ok(mfd_channel_set_option(a, "timeout-ms", 10, &err), err);
	mfd_channel_free(a);
	mfd_channel_free(b);

	/* Socket options on a file; a memory channel has none at all. */
	make_tmpdir(dir);
	snprintf(path, sizeof(path), "file:%s/f", dir);
	ck_assert_ok(mfd_channel_connect(path, 0, &a, &err), err);
	ck_assert_int_eq(mfd_channel_set_option(a, "rcvbuf", 4096, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "option 'rcvbuf' needs a socket, this is a file");
	ck_assert_ok(mfd_channel_set_option(a, "timeout-ms", 10, &err), err);
	mfd_channel_free(a);
	unlink(path + 5);
	ck_assert_int_eq(rmdir(dir), 0);
	ck_assert_ok(mfd_channel_new_mem_writer(0, &m, &err), err);
	ck_assert_int_eq(mfd_channel_set_option(m, "timeout-ms", 10, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "mem:writer: option 'timeout-ms' does not apply");
	mfd_channel_free(m);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Zero-copy send                                                          */

struct zc_job {
	mfd_channel *ch;
	const uint8_t *data;
	size_t len, chunk;
	int result;
	mfd_error *err;
	struct mfd_zerocopy_report rep;
};

/* Zero-copy writes of @chunk bytes each, then a flush. */
static void *zc_writer(void *arg)
{
	struct zc_job *z = arg;

	for (size_t off = 0; off < z->len && z->result == 0; off += z->chunk) {
		size_t n = z->len - off < z->chunk ? z->len - off : z->chunk;
		struct iovec iov = { (void *)(z->data + off), n };

		z->result = channel_writev_zerocopy_full(z->ch, &iov, 1, &z->err);
	}
	if (z->result == 0)
		z->result = channel_flush_zerocopy(z->ch, &z->rep, &z->err);
	return NULL;
}

/* @len bytes through zero-copy sends from c to s; returns the report. */
static struct mfd_zerocopy_report zc_transfer(mfd_channel *c, mfd_channel *s, size_t len)
{
	uint8_t *data = pattern(len, 7), *got = malloc(len);
	struct zc_job z = { .ch = c, .data = data, .len = len, .chunk = 512u << 10 };
	mfd_error *err = NULL;
	pthread_t t;

	ck_assert_ptr_nonnull(got);
	ck_assert_int_eq(pthread_create(&t, NULL, zc_writer, &z), 0);
	ck_assert_ok(read_exact(s, got, len, &err), err);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_msg(z.result == 0, "zero-copy writer: %s", mfd_error_message(z.err));
	ck_assert_int_eq(memcmp(got, data, len), 0);
	free(data);
	free(got);
	return z.rep;
}

START_TEST(zero_copy_send_and_flush)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL, *a = NULL, *b = NULL, *m = NULL;
	struct mfd_zerocopy_report rep;
	mfd_error *err = NULL;
	struct iovec iov = { "x", 1 };

	tcp_pair(&l, &c, &s);
	ck_assert_ok(mfd_channel_set_option(c, "zero-copy", 1, &err), err);
	ck_assert_int_eq(sockopt_int(fd_channel_fd(c), SOL_SOCKET, SO_ZEROCOPY), 1);
	rep = zc_transfer(c, s, 16u << 20);
	/* 32 calls, each at least one sendmsg; the flush waited for them all. */
	ck_assert_uint_ge(rep.sends, 32);
	ck_assert_uint_le(rep.copied, rep.sends);
	ck_assert(!rep.refused);
	ck_assert_uint_eq(rep.copy_bytes, 0);
	/* A report covers what happened since the last one. */
	ck_assert_ok(channel_flush_zerocopy(c, &rep, &err), err);
	ck_assert_uint_eq(rep.sends, 0);
	ck_assert_int_eq(mfd_channel_set_option(c, "zero-copy", 2, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "zero-copy 2 is out of range 0..1");
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);

	/* MSG_ZEROCOPY is for TCP; other transports have no zero-copy send. */
	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	ck_assert_int_eq(mfd_channel_set_option(a, "zero-copy", 1, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "option 'zero-copy' needs a TCP socket, this is a "
			    "unix socket");
	mfd_channel_free(a);
	mfd_channel_free(b);
	ck_assert_ok(mfd_channel_new_mem_writer(0, &m, &err), err);
	ck_assert_int_eq(channel_writev_zerocopy_full(m, &iov, 1, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "channel has no zero-copy send");
	ck_assert_int_eq(channel_flush_zerocopy(m, &rep, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "channel has no zero-copy send");
	mfd_channel_free(m);
}
END_TEST

static double thread_cpu_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

struct zc_flush_job {
	mfd_channel *ch;
	int result;
	mfd_error *err;
};

static void *zc_flusher(void *arg)
{
	struct zc_flush_job *f = arg;
	struct mfd_zerocopy_report rep;

	f->result = channel_flush_zerocopy(f->ch, &rep, &f->err);
	return NULL;
}

/*
 * The peer stops reading: a zero-copy write and then a flush run into the
 * deadline, sleeping (completions waiting on the error queue make poll()
 * return at once, so a wait that did not read them would spin), and a
 * flush with no deadline ends at a cancel.
 */
START_TEST(zero_copy_deadlines_and_cancel)
{
	size_t len = 64u << 20;
	uint8_t *data = calloc(1, len);
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;
	struct mfd_zerocopy_report rep;
	struct zc_flush_job f = { 0 };
	mfd_error *err = NULL;
	struct iovec iov;
	double cpu0, cpu;
	pthread_t t;

	ck_assert_ptr_nonnull(data);
	tcp_pair(&l, &c, &s);
	ck_assert_ok(mfd_channel_set_option(c, "zero-copy", 1, &err), err);
	ck_assert_ok(mfd_channel_set_option(c, "timeout-ms", 200, &err), err);
	iov = (struct iovec){ data, len };
	cpu0 = thread_cpu_ms();
	ck_assert_int_eq(channel_writev_zerocopy_full(c, &iov, 1, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "could not write for 200 ms, the peer is not reading");
	ck_assert_int_eq(channel_flush_zerocopy(c, &rep, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "zero-copy sends still in flight after 200 ms");
	cpu = thread_cpu_ms() - cpu0;
	ck_assert_msg(cpu < 200, "waiting 400 ms took %.0f ms of CPU: a busy wait", cpu);

	ck_assert_ok(mfd_channel_set_option(c, "timeout-ms", 0, &err), err);
	f.ch = c;
	ck_assert_int_eq(pthread_create(&t, NULL, zc_flusher, &f), 0);
	usleep(50 * 1000);
	mfd_channel_shutdown(c);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(f.result, MFD_ECANCELED);
	ck_assert_mfd_error(f.err, MFD_ECANCELED, "channel shut down");
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
	free(data);
}
END_TEST

/*
 * Pinned pages count against RLIMIT_MEMLOCK.  A limit smaller than what is
 * in flight makes sends wait for completions; a limit too small for one
 * send makes the channel copy from then on, saying so once in the log.
 */
START_TEST(zero_copy_under_a_locked_memory_limit)
{
	struct test_memlock ml;
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;
	struct mfd_zerocopy_report rep;
	mfd_error *err = NULL;
	const char *log;

	/* 1 MiB: two 512 KiB sends in flight at most. */
	test_memlock_limit(&ml, 1u << 20);
	tcp_pair(&l, &c, &s);
	ck_assert_ok(mfd_channel_set_option(c, "zero-copy", 1, &err), err);
	test_log_capture_start();
	rep = zc_transfer(c, s, 16u << 20);
	log = test_log_capture_stop();
	ck_assert_msg(!rep.refused && rep.copy_bytes == 0, "refused with 1 MiB: %s", log);
	ck_assert_uint_ge(rep.sends, 32);
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
	test_memlock_restore(&ml);

	test_memlock_limit(&ml, 0);
	tcp_pair(&l, &c, &s);
	ck_assert_ok(mfd_channel_set_option(c, "zero-copy", 1, &err), err);
	test_log_capture_start();
	rep = zc_transfer(c, s, 4u << 20);
	log = test_log_capture_stop();
	test_memlock_restore(&ml);
	ck_assert(rep.refused);
	ck_assert_uint_eq(rep.copy_bytes, 4u << 20);
	ck_assert_uint_eq(rep.sends, 0);
	ck_assert_msg(strstr(log, "zero-copy-send: the kernel refused to pin 524288 bytes") &&
		      strstr(log, "locked-memory limit 0 KiB") && strstr(log, "by copy from now on"),
		      "log: %s", log);
	/* Said once, not per write. */
	ck_assert_ptr_null(strstr(strstr(log, "refused to pin") + 1, "refused to pin"));
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
}
END_TEST

START_TEST(finish_ends_one_direction_only)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL;
	mfd_error *err = NULL;
	char buf[8];

	tcp_pair(&l, &c, &s);
	ck_assert_ok(write_exact(c, "req", 3, &err), err);
	ck_assert_ok(mfd_channel_finish(c, &err), err);
	ck_assert_ok(read_exact(s, buf, 3, &err), err);
	ck_assert_int_eq(read_exact(s, buf, 1, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "end of data after 0 of 1 bytes");
	/* The other direction still flows. */
	ck_assert_ok(write_exact(s, "resp", 4, &err), err);
	ck_assert_ok(read_exact(c, buf, 4, &err), err);
	ck_assert_int_eq(memcmp(buf, "resp", 4), 0);
	mfd_channel_shutdown(c);
	ck_assert_int_eq(mfd_channel_finish(c, &err), MFD_ECANCELED);
	ck_assert_mfd_error(err, MFD_ECANCELED, "channel shut down");
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Cancellation                                                            */

struct blocked_io {
	mfd_channel *ch;
	bool write;
	int result;
	mfd_error *err;
	double returned_ms;
};

static void *block_in_io(void *arg)
{
	struct blocked_io *b = arg;
	size_t len = b->write ? 64u << 20 : 1;
	uint8_t *buf = calloc(1, len);

	if (b->write)
		b->result = write_exact(b->ch, buf, len, &b->err);
	else
		b->result = read_exact(b->ch, buf, len, &b->err);
	b->returned_ms = now_ms();
	free(buf);
	return NULL;
}

/* A thread blocked on ch returns MFD_ECANCELED within the bound. */
static void check_cancel_latency(mfd_channel *ch, bool write)
{
	struct blocked_io b = { .ch = ch, .write = write };
	pthread_t t;
	double t0;

	ck_assert_int_eq(pthread_create(&t, NULL, block_in_io, &b), 0);
	usleep(50 * 1000);	/* let it block; the assertion does not depend on it */
	t0 = now_ms();
	mfd_channel_shutdown(ch);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_msg(b.result == MFD_ECANCELED, "%s: %s instead of a cancel: %s",
		      mfd_channel_name(ch), mfd_strerror(b.result), mfd_error_message(b.err));
	ck_assert_mfd_error(b.err, MFD_ECANCELED, "channel shut down");
	ck_assert_msg(b.returned_ms - t0 < CANCEL_BOUND_MS,
		      "%s: %s returned %.1f ms after the shutdown", mfd_channel_name(ch),
		      write ? "writer" : "reader", b.returned_ms - t0);
}

START_TEST(cancel_of_a_blocked_reader_is_prompt)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL, *a = NULL, *b = NULL;
	mfd_error *err = NULL;
	char uri[32];
	int pfd[2];

	/* TCP, sleeping in the kernel (no deadline) and in poll() (deadline). */
	for (int deadline = 0; deadline < 2; deadline++) {
		tcp_pair(&l, &c, &s);
		if (deadline)
			ck_assert_ok(mfd_channel_set_option(s, "timeout-ms", WAIT_MS, &err), err);
		check_cancel_latency(s, false);
		mfd_channel_free(c);
		mfd_channel_free(s);
		mfd_listener_free(l);
	}

	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	check_cancel_latency(a, false);
	mfd_channel_free(a);
	mfd_channel_free(b);

	ck_assert_ok(mfd_channel_pipe(&a, &b, &err), err);
	check_cancel_latency(a, false);
	mfd_channel_free(a);
	mfd_channel_free(b);

	/* A borrowed blocking pipe: its flags are never changed, the eventfd wakes it. */
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	snprintf(uri, sizeof(uri), "fd:%d", pfd[0]);
	ck_assert_ok(mfd_channel_connect(uri, 0, &a, &err), err);
	check_cancel_latency(a, false);
	mfd_channel_free(a);
	ck_assert(fd_is_open(pfd[0]));
	close(pfd[0]);
	close(pfd[1]);
}
END_TEST

START_TEST(cancel_of_a_blocked_writer_is_prompt)
{
	mfd_listener *l = NULL;
	mfd_channel *c = NULL, *s = NULL, *a = NULL, *b = NULL;
	mfd_error *err = NULL;
	char uri[32];
	int pfd[2];

	tcp_pair(&l, &c, &s);
	check_cancel_latency(c, true);
	mfd_channel_free(c);
	mfd_channel_free(s);
	mfd_listener_free(l);

	ck_assert_ok(mfd_channel_pipe(&a, &b, &err), err);
	check_cancel_latency(b, true);
	mfd_channel_free(a);
	mfd_channel_free(b);

	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	snprintf(uri, sizeof(uri), "fd:%d", pfd[1]);
	ck_assert_ok(mfd_channel_connect(uri, 0, &b, &err), err);
	check_cancel_latency(b, true);
	mfd_channel_free(b);
	close(pfd[0]);
	close(pfd[1]);
}
END_TEST

struct blocked_accept {
	mfd_listener *l;
	mfd_channel *ch;
	int result;
	mfd_error *err;
	double returned_ms;
};

static void *block_in_accept(void *arg)
{
	struct blocked_accept *b = arg;

	b->result = mfd_listener_accept(b->l, 0, &b->ch, &b->err);
	b->returned_ms = now_ms();
	return NULL;
}

static void check_accept_cancel(const char *uri)
{
	struct blocked_accept b = { 0 };
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	pthread_t t;
	double t0;

	ck_assert_ok(mfd_listener_new(uri, &b.l, &err), err);
	ck_assert_int_eq(pthread_create(&t, NULL, block_in_accept, &b), 0);
	usleep(50 * 1000);
	t0 = now_ms();
	mfd_listener_shutdown(b.l);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(b.result, MFD_ECANCELED);
	ck_assert_ptr_null(b.ch);
	ck_assert_mfd_error(b.err, MFD_ECANCELED, ": listener shut down");
	ck_assert_msg(b.returned_ms - t0 < CANCEL_BOUND_MS, "accept returned %.1f ms after the "
		      "shutdown", b.returned_ms - t0);
	/* Later calls fail the same way at once. */
	ck_assert_int_eq(mfd_listener_accept(b.l, 0, &ch, &err), MFD_ECANCELED);
	ck_assert_mfd_error(err, MFD_ECANCELED, "listener shut down");
	mfd_listener_free(b.l);
}

START_TEST(listener_shutdown_cancels_a_blocked_accept)
{
	char dir[64], uri[128];

	check_accept_cancel("tcp:127.0.0.1:0");
	make_tmpdir(dir);
	snprintf(uri, sizeof(uri), "unix:%s/l.sock", dir);
	check_accept_cancel(uri);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(accept_timeout)
{
	mfd_listener *l = NULL;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	double t0, elapsed;

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	t0 = now_ms();
	ck_assert_int_eq(mfd_listener_accept(l, 100, &ch, &err), MFD_ETIMEDOUT);
	elapsed = now_ms() - t0;
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, ": no connection within 100 ms");
	ck_assert_msg(elapsed >= 95 && elapsed < WAIT_MS, "timed out after %.0f ms", elapsed);
	mfd_listener_free(l);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Gathering a migration's channels                                        */

/* The hello of these tests: one byte, the slot. */
static int identify_by_first_byte(mfd_channel *ch, void *opaque, mfd_error **errp)
{
	uint8_t id;
	int r;

	(void)opaque;
	r = read_exact(ch, &id, 1, errp);
	if (r < 0)
		return r;
	if (id == 0xff)
		return mfd_error_set(errp, MFD_EPROTO, "bad hello 0x%02x", id);
	if (id == 0xfe)
		return -22;	/* a refusal without a message, and not an MFD code */
	return id;
}

/* Connect one client per entry of ids; each sends its id, then id + 100. */
static void connect_clients(const char *uri, const uint8_t *ids, unsigned n,
			    mfd_channel **clients)
{
	mfd_error *err = NULL;

	for (unsigned i = 0; i < n; i++) {
		uint8_t hello[2] = { ids[i], (uint8_t)(ids[i] + 100) };

		ck_assert_ok(mfd_channel_connect(uri, WAIT_MS, &clients[i], &err), err);
		ck_assert_ok(write_exact(clients[i], hello, 2, &err), err);
	}
}

static void free_channels(mfd_channel **chs, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		mfd_channel_free(chs[i]);
		chs[i] = NULL;
	}
}

static void assert_all_null(mfd_channel **slots, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		ck_assert_msg(slots[i] == NULL, "slot %u kept a channel after a failure", i);
}

START_TEST(gather_main_plus_four_by_hello)
{
	static const uint8_t ids[5] = { 3, 0, 4, 1, 2 };
	mfd_listener *l = NULL;
	mfd_channel *clients[5], *slots[5], *late = NULL, *ch = NULL;
	mfd_error *err = NULL;
	char uri[64];

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	snprintf(uri, sizeof(uri), "%s", mfd_listener_uri(l));
	connect_clients(uri, ids, 5, clients);
	ck_assert_ok(mfd_listener_gather(l, 5, WAIT_MS, identify_by_first_byte, NULL, slots, &err),
		     err);
	for (unsigned i = 0; i < 5; i++) {
		uint8_t second;

		ck_assert_ptr_nonnull(slots[i]);
		ck_assert_ok(read_exact(slots[i], &second, 1, &err), err);
		ck_assert_int_eq(second, i + 100);
		ck_assert_int_eq(sockopt_int(fd_channel_fd(slots[i]), IPPROTO_TCP, TCP_NODELAY), 1);
	}
	/* Done gathering: the port is closed, a late channel is refused, not queued. */
	ck_assert_int_eq(mfd_channel_connect(uri, WAIT_MS, &late, &err), MFD_EIO);
	ck_assert_ptr_null(late);
	ck_assert_mfd_error(err, MFD_EIO, "Connection refused");
	ck_assert_int_eq(mfd_listener_accept(l, 10, &ch, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "no longer listening (all channels were gathered)");
	ck_assert_int_eq(mfd_listener_gather(l, 1, 10, NULL, NULL, &ch, &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "no longer listening");
	free_channels(slots, 5);
	free_channels(clients, 5);
	mfd_listener_free(l);
}
END_TEST

START_TEST(gather_in_arrival_order_over_unix)
{
	static const uint8_t ids[3] = { 0, 1, 2 };
	mfd_listener *l = NULL;
	mfd_channel *clients[3], *slots[3], *late = NULL;
	mfd_error *err = NULL;
	char dir[64], uri[128];

	make_tmpdir(dir);
	snprintf(uri, sizeof(uri), "unix:%s/g.sock", dir);
	ck_assert_ok(mfd_listener_new(uri, &l, &err), err);
	connect_clients(uri, ids, 3, clients);
	ck_assert_ok(mfd_listener_gather(l, 3, WAIT_MS, NULL, NULL, slots, &err), err);
	for (unsigned i = 0; i < 3; i++) {
		uint8_t hello[2];

		ck_assert_ok(read_exact(slots[i], hello, 2, &err), err);
		ck_assert_int_eq(hello[0], i);
	}
	ck_assert_int_eq(mfd_channel_connect(uri, WAIT_MS, &late, &err), MFD_EIO);
	ck_assert_mfd_error(err, MFD_EIO, "Connection refused");
	free_channels(slots, 3);
	free_channels(clients, 3);
	mfd_listener_free(l);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* Gather with these hellos must fail with code and a message containing want. */
static void check_gather_refused(const uint8_t *ids, unsigned n, unsigned count, int code,
				 const char *want)
{
	mfd_listener *l = NULL;
	mfd_channel *clients[8], *slots[8];
	mfd_error *err = NULL;

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	connect_clients(mfd_listener_uri(l), ids, n, clients);
	memset(slots, 0x5a, sizeof(slots));	/* gather must clear them */
	ck_assert_int_eq(mfd_listener_gather(l, count, WAIT_MS, identify_by_first_byte, NULL,
					     slots, &err), code);
	ck_assert_mfd_error(err, code, want);
	assert_all_null(slots, count);
	free_channels(clients, n);
	mfd_listener_free(l);
}

START_TEST(gather_refuses_a_duplicate_slot)
{
	static const uint8_t ids[3] = { 0, 1, 1 };

	check_gather_refused(ids, 3, 3, MFD_EPROTO, ": slot 1 filled twice (by tcp:127.0.0.1:");
}
END_TEST

START_TEST(gather_refuses_a_slot_out_of_range)
{
	static const uint8_t ids[2] = { 0, 3 };

	check_gather_refused(ids, 2, 3, MFD_EPROTO, "claims slot 3, but only slots 0..2 exist");
}
END_TEST

START_TEST(gather_passes_on_the_identify_error)
{
	static const uint8_t bad_hello[2] = { 1, 0xff }, no_message[1] = { 0xfe };

	check_gather_refused(bad_hello, 2, 3, MFD_EPROTO, ": identifying channel tcp:127.0.0.1:");
	check_gather_refused(bad_hello, 2, 3, MFD_EPROTO, ": bad hello 0xff");
	check_gather_refused(no_message, 1, 2, MFD_EHANDLER, ": identify refused channel tcp:");
}
END_TEST

START_TEST(gather_deadline_names_the_missing_slots)
{
	static const uint8_t ids[2] = { 1, 3 };
	mfd_listener *l = NULL;
	mfd_channel *clients[2], *slots[5];
	mfd_error *err = NULL;
	double t0, elapsed;

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	connect_clients(mfd_listener_uri(l), ids, 2, clients);
	t0 = now_ms();
	ck_assert_int_eq(mfd_listener_gather(l, 5, 200, identify_by_first_byte, NULL, slots, &err),
			 MFD_ETIMEDOUT);
	elapsed = now_ms() - t0;
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, ": 2 of 5 channels ready within 200 ms; "
			    "missing slots 0, 2, 4");
	ck_assert_msg(elapsed >= 190 && elapsed < WAIT_MS, "gave up after %.0f ms", elapsed);
	assert_all_null(slots, 5);
	free_channels(clients, 2);
	mfd_listener_free(l);

	/* In arrival order the missing ones are the last. */
	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	connect_clients(mfd_listener_uri(l), ids, 1, clients);
	ck_assert_int_eq(mfd_listener_gather(l, 3, 100, NULL, NULL, slots, &err), MFD_ETIMEDOUT);
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "1 of 3 channels ready within 100 ms; missing "
			    "slots 1, 2");
	assert_all_null(slots, 3);
	free_channels(clients, 1);
	mfd_listener_free(l);
}
END_TEST

/* A peer that connects and never says hello cannot hold gather past its deadline. */
START_TEST(gather_deadline_covers_a_silent_hello)
{
	mfd_listener *l = NULL;
	mfd_channel *client = NULL, *slots[2];
	mfd_error *err = NULL;
	double t0, elapsed;

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &l, &err), err);
	ck_assert_ok(mfd_channel_connect(mfd_listener_uri(l), WAIT_MS, &client, &err), err);
	t0 = now_ms();
	ck_assert_int_eq(mfd_listener_gather(l, 2, 200, identify_by_first_byte, NULL, slots, &err),
			 MFD_ETIMEDOUT);
	elapsed = now_ms() - t0;
	/* Both the gather's view and the channel's own reason. */
	ck_assert_msg(strstr(mfd_error_message(err), ": 0 of 2 channels ready within 200 ms; "
			     "missing slots 0, 1: ") != NULL, "%s", mfd_error_message(err));
	ck_assert_mfd_error(err, MFD_ETIMEDOUT, "no data arrived within");
	ck_assert_msg(elapsed >= 190 && elapsed < WAIT_MS, "gave up after %.0f ms", elapsed);
	assert_all_null(slots, 2);
	mfd_channel_free(client);
	mfd_listener_free(l);
}
END_TEST

static atomic_int identify_calls;

static int identify_counting(mfd_channel *ch, void *opaque, mfd_error **errp)
{
	atomic_fetch_add(&identify_calls, 1);
	return identify_by_first_byte(ch, opaque, errp);
}

struct blocked_gather {
	mfd_listener *l;
	mfd_channel *slots[2];
	int result;
	mfd_error *err;
	double returned_ms;
};

static void *block_in_gather(void *arg)
{
	struct blocked_gather *g = arg;

	g->result = mfd_listener_gather(g->l, 2, 0, identify_counting, NULL, g->slots, &g->err);
	g->returned_ms = now_ms();
	return NULL;
}

/* The cancel reaches gather while it waits for a connection and while identify reads. */
START_TEST(listener_shutdown_cancels_gather)
{
	static const uint8_t ids[1] = { 0 };
	struct blocked_gather g = { 0 };
	mfd_channel *clients[2];
	mfd_error *err = NULL;
	pthread_t t;
	double t0;

	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &g.l, &err), err);
	connect_clients(mfd_listener_uri(g.l), ids, 1, clients);
	/* The second client connects and stays silent: identify blocks reading its hello. */
	ck_assert_ok(mfd_channel_connect(mfd_listener_uri(g.l), WAIT_MS, &clients[1], &err), err);
	atomic_store(&identify_calls, 0);
	ck_assert_int_eq(pthread_create(&t, NULL, block_in_gather, &g), 0);
	for (int i = 0; i < WAIT_MS && atomic_load(&identify_calls) < 2; i++)
		usleep(1000);
	usleep(20 * 1000);	/* let identify block in its read */
	t0 = now_ms();
	mfd_listener_shutdown(g.l);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(g.result, MFD_ECANCELED);
	ck_assert_mfd_error(g.err, MFD_ECANCELED, "channel shut down");
	ck_assert_msg(g.returned_ms - t0 < CANCEL_BOUND_MS, "gather returned %.1f ms after the "
		      "shutdown", g.returned_ms - t0);
	assert_all_null(g.slots, 2);
	free_channels(clients, 2);
	mfd_listener_free(g.l);

	/* Waiting for a connection that never comes. */
	memset(&g, 0, sizeof(g));
	ck_assert_ok(mfd_listener_new("tcp:127.0.0.1:0", &g.l, &err), err);
	ck_assert_int_eq(pthread_create(&t, NULL, block_in_gather, &g), 0);
	usleep(50 * 1000);
	t0 = now_ms();
	mfd_listener_shutdown(g.l);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(g.result, MFD_ECANCELED);
	ck_assert_mfd_error(g.err, MFD_ECANCELED, "listener shut down");
	ck_assert_msg(g.returned_ms - t0 < CANCEL_BOUND_MS, "gather returned %.1f ms after the "
		      "shutdown", g.returned_ms - t0);
	mfd_listener_free(g.l);
}
END_TEST

Suite *suite_transport(void)
{
	Suite *s = suite_create("transport");
	TCase *data = tcase_create("data");
	TCase *fail = tcase_create("failures");
	TCase *opts = tcase_create("options");
	TCase *cancel = tcase_create("cancel");
	TCase *gather = tcase_create("gather");

	tcase_add_test(data, tcp_ipv4_transfer);
	tcase_add_test(data, tcp_ipv6_transfer);
	tcase_add_test(data, tcp_by_host_name);
	tcase_add_test(data, unix_transfer_replaces_stale_socket_and_cleans_up);
	tcase_add_test(data, fd_connect_is_borrowed);
	tcase_add_test(data, fd_listener_accepts_on_a_borrowed_listening_socket);
	tcase_add_test(data, fd_listener_hands_out_a_connected_descriptor_once);
	tcase_add_test(data, file_with_offset_keeps_what_comes_before);
	tcase_add_test(data, file_without_offset_is_created);
	suite_add_tcase(s, data);

	tcase_add_test(fail, connect_to_a_closed_port_is_refused);
	tcase_add_test(fail, connect_timeout_against_a_full_backlog);
	tcase_add_test(fail, unix_connect_timeout_against_a_full_backlog);
	tcase_add_test(fail, bad_uris_and_arguments);
	suite_add_tcase(s, fail);

	tcase_add_test(opts, read_timeout_on_a_silent_peer);
	tcase_add_test(opts, write_timeout_when_the_peer_does_not_read);
	tcase_add_test(opts, socket_options);
	tcase_add_test(opts, finish_ends_one_direction_only);
	tcase_add_test(opts, zero_copy_send_and_flush);
	tcase_add_test(opts, zero_copy_deadlines_and_cancel);
	tcase_add_test(opts, zero_copy_under_a_locked_memory_limit);
	suite_add_tcase(s, opts);

	tcase_add_test(cancel, cancel_of_a_blocked_reader_is_prompt);
	tcase_add_test(cancel, cancel_of_a_blocked_writer_is_prompt);
	tcase_add_test(cancel, listener_shutdown_cancels_a_blocked_accept);
	tcase_add_test(cancel, accept_timeout);
	suite_add_tcase(s, cancel);

	tcase_add_test(gather, gather_main_plus_four_by_hello);
	tcase_add_test(gather, gather_in_arrival_order_over_unix);
	tcase_add_test(gather, gather_refuses_a_duplicate_slot);
	tcase_add_test(gather, gather_refuses_a_slot_out_of_range);
	tcase_add_test(gather, gather_passes_on_the_identify_error);
	tcase_add_test(gather, gather_deadline_names_the_missing_slots);
	tcase_add_test(gather, gather_deadline_covers_a_silent_hello);
	tcase_add_test(gather, listener_shutdown_cancels_gather);
	suite_add_tcase(s, gather);
	return s;
}
