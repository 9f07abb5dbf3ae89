/* SPDX-License-Identifier: MIT */
/*
 * TLS channels: x509 and PSK handshakes over socketpairs, every refusal
 * (each before the refusing side delivers any application byte), two-way
 * traffic with forced key updates, large transfers, clean and truncated
 * ends, and interop with the openssl command-line tool.
 *
 * Certificates and keys are generated at run time (tests/lib/certs.c).
 * Every inner channel gets "timeout-ms", so a bug fails a test instead of
 * hanging it.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "core/channel.h"
#include "tests/lib/certs.h"
#include "tests/lib/testlib.h"
#include "tls/tls.h"

#if MFD_HAVE_TLS

#define IO_TIMEOUT_MS 20000

static struct test_pki pki;

static void pki_setup(void)
{
	ck_assert_msg(certs_create(&pki) == 0, "cannot create the test PKI (see stderr)");
}

static void pki_teardown(void)
{
	certs_destroy(&pki);
}

/* Bound every blocking call on ch, so that a bug fails instead of hanging. */
static void bound_ms(mfd_channel *ch, int64_t ms)
{
	mfd_error *err = NULL;
	int r = mfd_channel_set_option(ch, "timeout-ms", ms, &err);

	/* Transports without deadlines rely on Check's per-test timeout. */
	ck_assert_msg(r == 0 || r == MFD_ENOTSUP, "timeout-ms: %s", mfd_error_message(err));
	mfd_error_free(err);
}

static void bound(mfd_channel *ch)
{
	bound_ms(ch, IO_TIMEOUT_MS);
}

static const char *path_of(const char *name, const char *file, char *buf, size_t len)
{
	return certs_path(&pki, name, file, buf, len);
}

static mfd_tls_creds *x509(const char *name, enum mfd_tls_role role)
{
	char dir[256];
	mfd_tls_creds *c = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_tls_creds_new_x509(path_of(name, NULL, dir, sizeof(dir)), role, &c, &err),
		     err);
	return c;
}

static mfd_tls_creds *psk(const char *name, enum mfd_tls_role role)
{
	char file[256];
	mfd_tls_creds *c = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_tls_creds_new_psk(path_of(name, NULL, file, sizeof(file)), role, &c, &err),
		     err);
	return c;
}

static void set(mfd_tls_creds *c, const char *name, const char *value)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_tls_creds_set(c, name, value, &err), err);
}

/* One end of a TLS connection under test. */
struct side {
	mfd_tls_creds *creds;
	const char *hostname;
	mfd_channel *inner;
	mfd_channel *tls;
	mfd_error *err;
	int rc;
};

static void *wrap_thread(void *arg)
{
	struct side *s = arg;

	s->rc = mfd_channel_tls_wrap(s->inner, s->creds, s->hostname, 0, &s->tls, &s->err);
	/* A side that refused hangs up, as a real peer would. */
	if (s->rc < 0)
		mfd_channel_shutdown(s->inner);
	return NULL;
}

/* Client and server handshake over a socketpair, each in its own thread. */
static void connect_pair(struct side *cl, struct side *sv)
{
	mfd_error *err = NULL;
	pthread_t t;

	ck_assert_ok(mfd_channel_socketpair(&cl->inner, &sv->inner, &err), err);
	bound(cl->inner);
	bound(sv->inner);
	ck_assert_int_eq(pthread_create(&t, NULL, wrap_thread, sv), 0);
	wrap_thread(cl);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
}

static void side_free(struct side *s)
{
	mfd_channel_free(s->tls);
	mfd_channel_free(s->inner);
	mfd_error_free(s->err);
	mfd_tls_creds_free(s->creds);
	memset(s, 0, sizeof(*s));
}

static void assert_up(const struct side *s, const char *who)
{
	ck_assert_msg(s->rc == 0 && s->tls, "%s: wrap failed with %d: %s", who, s->rc,
		      mfd_error_message(s->err));
}

/* The side refused the handshake: it has no channel, so it delivered nothing. */
static void assert_refused(struct side *s, int code, const char *substr)
{
	ck_assert_ptr_null(s->tls);
	ck_assert_msg(s->rc == code, "expected %d, got %d: %s", code, s->rc,
		      mfd_error_message(s->err));
	ck_assert_mfd_error(s->err, code, substr);
}

static void send_str(mfd_channel *ch, const char *str)
{
	struct iovec iov = { .iov_base = (void *)str, .iov_len = strlen(str) };
	mfd_error *err = NULL;

	ck_assert_ok(channel_writev_full(ch, &iov, 1, &err), err);
}

static void expect_str(mfd_channel *ch, const char *str)
{
	char buf[256] = "";
	struct iovec iov = { .iov_base = buf, .iov_len = strlen(str) };
	mfd_error *err = NULL;

	ck_assert_uint_lt(strlen(str), sizeof(buf));
	ck_assert_ok(channel_readv_full(ch, &iov, 1, &err), err);
	ck_assert_str_eq(buf, str);
}

/* The next read reports the clean end of the data. */
static void expect_end(mfd_channel *ch)
{
	char c;
	mfd_error *err = NULL;
	ssize_t n = channel_read_some(ch, &c, 1, &err);

	ck_assert_msg(n == 0, "expected the end of data, got %zd: %s", n, mfd_error_message(err));
	mfd_error_free(err);
}

/* A refused client whose handshake completed (TLS 1.3 finishes on the
 * client first) hears about it on its first read; its data went nowhere. */
static void assert_client_told(struct side *cl, int code, const char *substr)
{
	char c;
	mfd_error *err = NULL;
	struct iovec iov = { .iov_base = "SECRET", .iov_len = 6 };

	if (!cl->tls) {
		assert_refused(cl, code, substr);
		return;
	}
	channel_writev_full(cl->tls, &iov, 1, NULL);
	ck_assert_int_eq(channel_read_some(cl->tls, &c, 1, &err), code);
	ck_assert_mfd_error(err, code, substr);
}

/* Both directions, then a clean end both ways. */
static void exchange(struct side *cl, struct side *sv)
{
	mfd_error *err = NULL;

	send_str(cl->tls, "hello from the source");
	expect_str(sv->tls, "hello from the source");
	send_str(sv->tls, "hello from the destination");
	expect_str(cl->tls, "hello from the destination");
	ck_assert_ok(mfd_channel_finish(cl->tls, &err), err);
	expect_end(sv->tls);
	expect_end(sv->tls);	/* and it stays ended */
	/* Half-closed: the server may still write. */
	send_str(sv->tls, "last words");
	ck_assert_ok(mfd_channel_finish(sv->tls, &err), err);
	expect_str(cl->tls, "last words");
	expect_end(cl->tls);
}

/* ------------------------------------------------------------------------ */
/* Must pass                                                                 */

static void x509_mutual(const char *hostname)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = hostname };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	set(sv.creds, "authz", "CN=someone else");
	set(sv.creds, "authz", CERTS_CLIENT1_DN);
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	ck_assert_str_eq(mfd_channel_name(cl.tls), "tls:socketpair:0");
	ck_assert_str_eq(tls_channel_version(cl.tls), "TLSv1.3");
	ck_assert_str_eq(tls_channel_cipher(sv.tls), "TLS_AES_128_GCM_SHA256");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}

START_TEST(x509_mutual_hostname)
{
	x509_mutual("localhost");
}
END_TEST

START_TEST(x509_mutual_ip_address)
{
	x509_mutual("127.0.0.1");
}
END_TEST

START_TEST(psk_handshake)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	ck_assert_str_eq(tls_channel_version(sv.tls), "TLSv1.3");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);

	/* The client may pick another identity of its file (a 16-byte key). */
	cl = (struct side){ .creds = psk("psk-main", MFD_TLS_CLIENT) };
	sv = (struct side){ .creds = psk("psk-main", MFD_TLS_SERVER) };
	set(cl.creds, "psk-identity", "spare");
	set(cl.creds, "min-version", "1.2");	/* accepted, PSK stays TLS 1.3 */
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(min_version_1_3)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	set(cl.creds, "min-version", "1.3");
	set(sv.creds, "min-version", "1.3");
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	ck_assert_str_eq(tls_channel_version(cl.tls), "TLSv1.3");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(tls_1_2_when_the_server_caps_it)
{
	/* No option caps the version, so reach into the server's context: a
	 * TLS 1.2 server is accepted by default (min-version 1.2), with the
	 * cipher chosen through "cipher-list". */
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	SSL_CTX_set_max_proto_version(sv.creds->ctx, TLS1_2_VERSION);
	set(sv.creds, "cipher-list", "ECDHE-ECDSA-AES128-GCM-SHA256");
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	ck_assert_str_eq(tls_channel_version(cl.tls), "TLSv1.2");
	ck_assert_str_eq(tls_channel_cipher(cl.tls), "ECDHE-ECDSA-AES128-GCM-SHA256");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(verify_peer_off_accepts_anonymous_client)
{
	struct side cl = { .creds = x509("client-anon", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	set(sv.creds, "verify-peer", "off");
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* One channel pair of many sharing credentials: handshake, a line each way. */
struct shared_pair {
	struct side cl, sv;
	char failure[512];
};

static void *shared_pair_thread(void *arg)
{
	struct shared_pair *p = arg;
	char buf[8] = "";
	struct iovec out = { .iov_base = "ping", .iov_len = 4 }, in = { .iov_base = buf, .iov_len = 4 };
	mfd_error *err = NULL;
	pthread_t t;

	if (pthread_create(&t, NULL, wrap_thread, &p->sv) != 0) {
		snprintf(p->failure, sizeof(p->failure), "pthread_create failed");
		return NULL;
	}
	wrap_thread(&p->cl);
	pthread_join(t, NULL);
	if (p->cl.rc < 0 || p->sv.rc < 0) {
		snprintf(p->failure, sizeof(p->failure), "handshake: %s / %s",
			 mfd_error_message(p->cl.err), mfd_error_message(p->sv.err));
		return NULL;
	}
	if (channel_writev_full(p->cl.tls, &out, 1, &err) < 0 ||
	    channel_readv_full(p->sv.tls, &in, 1, &err) < 0 || strcmp(buf, "ping") != 0)
		snprintf(p->failure, sizeof(p->failure), "exchange: '%s' %s", buf,
			 mfd_error_message(err));
	mfd_error_free(err);
	return NULL;
}

START_TEST(many_channels_share_credentials)
{
	enum { PAIRS = 8 };
	mfd_tls_creds *cc = x509("client", MFD_TLS_CLIENT), *sc = x509("server", MFD_TLS_SERVER);
	mfd_tls_creds *pc = psk("psk-main", MFD_TLS_CLIENT), *ps = psk("psk-main", MFD_TLS_SERVER);
	struct shared_pair p[PAIRS];
	pthread_t t[PAIRS];
	mfd_error *err = NULL;

	set(sc, "authz", CERTS_CLIENT1_DN);
	/* Half x509, half PSK, all at once: the multifd channels of a migration. */
	memset(p, 0, sizeof(p));
	for (int i = 0; i < PAIRS; i++) {
		p[i].cl.creds = i % 2 ? pc : cc;
		p[i].cl.hostname = "localhost";
		p[i].sv.creds = i % 2 ? ps : sc;
		ck_assert_ok(mfd_channel_socketpair(&p[i].cl.inner, &p[i].sv.inner, &err), err);
		bound(p[i].cl.inner);
		bound(p[i].sv.inner);
	}
	for (int i = 0; i < PAIRS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, shared_pair_thread, &p[i]), 0);
	for (int i = 0; i < PAIRS; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	for (int i = 0; i < PAIRS; i++) {
		ck_assert_msg(!p[i].failure[0], "pair %d: %s", i, p[i].failure);
		/* The credentials are shared: free them once, below. */
		p[i].cl.creds = p[i].sv.creds = NULL;
		side_free(&p[i].cl);
		side_free(&p[i].sv);
	}
	mfd_tls_creds_free(cc);
	mfd_tls_creds_free(sc);
	mfd_tls_creds_free(pc);
	mfd_tls_creds_free(ps);
}
END_TEST

/* A deterministic pseudo-random pattern the streams are cut from. */
#define PAT_LEN ((1u << 20) - 3)	/* not a power of two: records never line up */
static uint8_t *pat;

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void pattern_setup(void)
{
	uint64_t s = 0x9e3779b97f4a7c15ull;

	pat = malloc(PAT_LEN);
	ck_assert_ptr_nonnull(pat);
	for (size_t i = 0; i < PAT_LEN; i++)
		pat[i] = (uint8_t)(xorshift(&s) >> 32);
}

static void pattern_teardown(void)
{
	free(pat);
	pat = NULL;
}

/* One direction of traffic; failures are recorded and asserted by the test thread. */
struct flow {
	mfd_channel *ch;
	size_t total;		/* bytes to move */
	size_t start;		/* where in the pattern the stream begins */
	size_t max_write;	/* largest single write */
	unsigned key_update_every;	/* writes between forced key updates; 0 = none */
	uint64_t rng;
	size_t moved;
	unsigned key_updates;
	char failure[512];
};

static void *writer_thread(void *arg)
{
	static const size_t sizes[] = { 1, 7, 100, 4096, 4099, 16384, 16385, 65536, 100000, 200000 };
	struct flow *f = arg;
	unsigned writes = 0;
	mfd_error *err = NULL;

	while (f->moved < f->total) {
		size_t chunk = f->max_write ? f->max_write : sizes[xorshift(&f->rng) % 10];
		size_t pos = (f->start + f->moved) % PAT_LEN, first, cut;
		struct iovec iov[3];
		int n = 0;

		chunk = chunk < f->total - f->moved ? chunk : f->total - f->moved;
		first = chunk < PAT_LEN - pos ? chunk : PAT_LEN - pos;
		/* Split the first piece somewhere, so writes carry several entries. */
		cut = first > 1 ? (size_t)(xorshift(&f->rng) % first) : 0;
		if (cut)
			iov[n++] = (struct iovec){ .iov_base = pat + pos, .iov_len = cut };
		iov[n++] = (struct iovec){ .iov_base = pat + pos + cut, .iov_len = first - cut };
		if (chunk > first)
			iov[n++] = (struct iovec){ .iov_base = pat, .iov_len = chunk - first };
		if (channel_writev_full(f->ch, iov, n, &err) < 0)
			goto fail;
		f->moved += chunk;
		if (f->key_update_every && ++writes % f->key_update_every == 0) {
			if (tls_request_key_update(f->ch, &err) < 0)
				goto fail;
			f->key_updates++;
		}
	}
	if (mfd_channel_finish(f->ch, &err) < 0)
		goto fail;
	return NULL;
fail:
	snprintf(f->failure, sizeof(f->failure), "writer at byte %zu: %s", f->moved,
		 mfd_error_message(err));
	mfd_error_free(err);
	return NULL;
}

static void *reader_thread(void *arg)
{
	static const size_t sizes[] = { 1, 1000, 16384, 70000, 262144 };
	struct flow *f = arg;
	size_t cap = 262144;
	uint8_t *buf = malloc(cap);
	mfd_error *err = NULL;

	if (!buf) {
		snprintf(f->failure, sizeof(f->failure), "reader: out of memory");
		return NULL;
	}
	for (;;) {
		ssize_t n = channel_read_some(f->ch, buf, sizes[xorshift(&f->rng) % 5], &err);

		if (n < 0) {
			snprintf(f->failure, sizeof(f->failure), "reader at byte %zu: %s", f->moved,
				 mfd_error_message(err));
			mfd_error_free(err);
			break;
		}
		if (n == 0) {
			if (f->moved != f->total)
				snprintf(f->failure, sizeof(f->failure), "reader: clean end after %zu "
					 "of %zu bytes", f->moved, f->total);
			break;
		}
		for (size_t done = 0; done < (size_t)n;) {
			size_t pos = (f->start + f->moved + done) % PAT_LEN;
			size_t len = (size_t)n - done < PAT_LEN - pos ? (size_t)n - done : PAT_LEN - pos;

			if (memcmp(buf + done, pat + pos, len) != 0) {
				snprintf(f->failure, sizeof(f->failure), "reader: data differs within "
					 "bytes %zu..%zu", f->moved + done, f->moved + done + len);
				free(buf);
				return NULL;
			}
			done += len;
		}
		f->moved += (size_t)n;
		if (f->moved > f->total) {
			snprintf(f->failure, sizeof(f->failure), "reader: %zu bytes, more than the "
				 "%zu sent", f->moved, f->total);
			break;
		}
	}
	free(buf);
	return NULL;
}

/* Sanitizer builds run the same tests on less data. */

START_TEST(both_directions_at_once_with_key_updates)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	size_t total = (TEST_SANITIZED ? 8u : 32u) << 20;
	struct flow up_w, up_r, down_w, down_r;
	pthread_t t[4];

	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	/* On each end one thread writes while another reads the same channel;
	 * both writers force a KeyUpdate (which the peer's reader must answer)
	 * every 8 writes. */
	up_w = (struct flow){ .ch = cl.tls, .total = total, .start = 0, .key_update_every = 8,
			      .rng = 1 };
	up_r = (struct flow){ .ch = sv.tls, .total = total, .start = 0, .rng = 2 };
	down_w = (struct flow){ .ch = sv.tls, .total = total, .start = 4242, .key_update_every = 8,
				.rng = 3 };
	down_r = (struct flow){ .ch = cl.tls, .total = total, .start = 4242, .rng = 4 };
	ck_assert_int_eq(pthread_create(&t[0], NULL, writer_thread, &up_w), 0);
	ck_assert_int_eq(pthread_create(&t[1], NULL, reader_thread, &up_r), 0);
	ck_assert_int_eq(pthread_create(&t[2], NULL, writer_thread, &down_w), 0);
	ck_assert_int_eq(pthread_create(&t[3], NULL, reader_thread, &down_r), 0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	ck_assert_msg(!up_w.failure[0], "%s", up_w.failure);
	ck_assert_msg(!up_r.failure[0], "%s", up_r.failure);
	ck_assert_msg(!down_w.failure[0], "%s", down_w.failure);
	ck_assert_msg(!down_r.failure[0], "%s", down_r.failure);
	ck_assert_uint_eq(up_r.moved, total);
	ck_assert_uint_eq(down_r.moved, total);
	ck_assert_uint_gt(up_w.key_updates, 10);
	ck_assert_uint_gt(down_w.key_updates, 10);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(large_transfer_intact)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };
	struct flow w, r;
	pthread_t t;

	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	w = (struct flow){ .ch = cl.tls, .total = 64u << 20, .start = 99, .max_write = 1u << 20,
			   .rng = 5 };
	r = (struct flow){ .ch = sv.tls, .total = 64u << 20, .start = 99, .rng = 6 };
	ck_assert_int_eq(pthread_create(&t, NULL, writer_thread, &w), 0);
	reader_thread(&r);	/* reads to the clean end (the writer finishes) */
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_msg(!w.failure[0], "%s", w.failure);
	ck_assert_msg(!r.failure[0], "%s", r.failure);
	ck_assert_uint_eq(r.moved, 64u << 20);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(truncation_without_close_notify)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	mfd_error *err = NULL;
	char c;

	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	send_str(cl.tls, "partial");
	/* The writer's connection ends without mfd_channel_finish(): freeing
	 * does not block and sends nothing. */
	mfd_channel_free(cl.tls);
	cl.tls = NULL;
	mfd_channel_free(cl.inner);
	cl.inner = NULL;
	expect_str(sv.tls, "partial");
	ck_assert_int_eq(channel_read_some(sv.tls, &c, 1, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "peer closed without TLS close_notify (truncated)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

struct blocked_read {
	mfd_channel *ch;
	int rc;
	mfd_error *err;
};

static void *blocked_reader(void *arg)
{
	struct blocked_read *b = arg;
	char c;

	b->rc = (int)channel_read_some(b->ch, &c, 1, &b->err);
	return NULL;
}

START_TEST(shutdown_unblocks_a_reader)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	struct blocked_read b = { 0 };
	struct timespec delay = { 0, 50 * 1000 * 1000 };
	mfd_error *err = NULL;
	pthread_t t;

	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	b.ch = sv.tls;
	ck_assert_int_eq(pthread_create(&t, NULL, blocked_reader, &b), 0);
	nanosleep(&delay, NULL);
	mfd_channel_shutdown(sv.tls);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(b.rc, MFD_ECANCELED);
	ck_assert_mfd_error(b.err, MFD_ECANCELED, "shut down");
	ck_assert_int_eq(mfd_channel_finish(sv.tls, &err), MFD_ECANCELED);
	ck_assert_mfd_error(err, MFD_ECANCELED, "shut down");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(options_reach_the_inner_channel)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	mfd_error *err = NULL;
	int r;

	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	/* Whatever the transport says about an option, the TLS channel says too. */
	r = mfd_channel_set_option(cl.tls, "no-such-option", 1, &err);
	ck_assert_int_lt(r, 0);
	ck_assert_msg(strstr(mfd_error_message(err), "socketpair:0"), "%s", mfd_error_message(err));
	mfd_error_free(err);
	err = NULL;
	/* After finish, writing is an error; reading still works. */
	ck_assert_ok(mfd_channel_finish(cl.tls, &err), err);
	ck_assert_ok(mfd_channel_finish(cl.tls, &err), err);	/* twice is harmless */
	ck_assert_int_eq(channel_writev_full(cl.tls, &(struct iovec){ "x", 1 }, 1, &err),
			 MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "write after mfd_channel_finish()");
	send_str(sv.tls, "still readable");
	expect_str(cl.tls, "still readable");
	expect_end(sv.tls);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(owned_inner_is_freed_with_the_channel)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	mfd_channel *a = NULL, *b = NULL, *tls = NULL;
	mfd_error *err = NULL;
	pthread_t t;

	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	bound(a);
	bound(b);
	sv.inner = b;
	ck_assert_int_eq(pthread_create(&t, NULL, wrap_thread, &sv), 0);
	ck_assert_ok(mfd_channel_tls_wrap(a, cl.creds, NULL, MFD_CHANNEL_OWN_INNER, &tls, &err), err);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	assert_up(&sv, "server");
	send_str(tls, "owned");
	expect_str(sv.tls, "owned");
	mfd_channel_free(tls);	/* frees a as well (ASan would see the leak) */
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Must fail, each before the refusing side delivers an application byte    */

START_TEST(psk_key_mismatch)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-otherkey", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "PSK key mismatch: the client's key for identity 'qemu'");
	assert_client_told(&cl, MFD_EPROTO, "the server refused the connection: ");
	/* (the alert is "illegal parameter" or "decrypt error", by OpenSSL version) */
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(psk_unknown_identity)
{
	struct side cl = { .creds = psk("psk-stranger", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "unknown PSK identity 'stranger'");
	assert_client_told(&cl, MFD_EPROTO, "the server refused the connection");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* A hostile client's identity (a newline, an ANSI colour, printf directives;
 * case 1 a NUL too) shows escaped in the server's refusal, like every other
 * peer string, and the message holds no control character.  The PSK file
 * cannot hold such an identity: the client's entry is altered in place. */
START_TEST(psk_identity_escaped)
{
	static const char evil[] = "a\n[error] x\x1b[31m%s%n\0z";
	size_t n = _i ? sizeof(evil) - 1 : strlen(evil);
	struct side cl = { .creds = psk("psk-stranger", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	struct tls_psk *id = &cl.creds->psk[cl.creds->psk_client];

	free(id->identity);
	id->identity = malloc(n + 1);
	ck_assert_ptr_nonnull(id->identity);
	memcpy(id->identity, evil, n);
	id->identity[n] = '\0';
	id->identity_len = n;
	connect_pair(&cl, &sv);
	ck_assert_ptr_null(sv.tls);
	ck_assert_int_eq(sv.rc, MFD_EPROTO);

	const char *msg = mfd_error_message(sv.err);

	for (const char *c = msg; *c; c++)
		ck_assert_msg((unsigned char)*c >= 0x20 && *c != 0x7f,
			      "control byte 0x%02x at %zu in the message: %s", (unsigned char)*c,
			      (size_t)(c - msg), msg);
	ck_assert_msg(strstr(msg, _i ? "unknown PSK identity 'a\\n[error] x\\x1b[31m%s%n\\x00z'"
				     : "unknown PSK identity 'a\\n[error] x\\x1b[31m%s%n'"),
		      "message lacks the escaped identity: %s", msg);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(wrong_ca)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server-otherca", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "server certificate verification failed: unable to get "
		       "local issuer certificate (depth 0, subject 'CN=localhost,O=libmultifd test')"
		       "; it is not signed by the CA in");
	assert_refused(&sv, MFD_EPROTO, "the client refused the connection: tlsv1 alert unknown ca");
	side_free(&cl);
	side_free(&sv);

	/* The other way round: a client certificate from a CA the server does not trust. */
	cl = (struct side){ .creds = x509("client-otherca", MFD_TLS_CLIENT), .hostname = "localhost" };
	sv = (struct side){ .creds = x509("server", MFD_TLS_SERVER) };
	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "client certificate verification failed: unable to get "
		       "local issuer certificate (depth 0, subject 'CN=client1,O=libmultifd test')");
	assert_client_told(&cl, MFD_EPROTO, "tlsv1 alert unknown ca (it rejected our certificate)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(hostname_mismatch)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server-wronghost", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "server certificate verification failed: hostname mismatch "
		       "(depth 0, subject 'CN=wrong.example,O=libmultifd test'); the certificate "
		       "was not issued for 'localhost'");
	assert_refused(&sv, MFD_EPROTO, "the client refused the connection");
	side_free(&cl);
	side_free(&sv);

	cl = (struct side){ .creds = x509("client", MFD_TLS_CLIENT), .hostname = "127.0.0.1" };
	sv = (struct side){ .creds = x509("server-wronghost", MFD_TLS_SERVER) };
	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "IP address mismatch (depth 0, subject "
		       "'CN=wrong.example,O=libmultifd test'); the certificate was not issued for "
		       "'127.0.0.1'");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(no_hostname)
{
	mfd_tls_creds *c = x509("client", MFD_TLS_CLIENT);
	mfd_channel *a = NULL, *b = NULL, *tls = NULL;
	mfd_error *err = NULL;
	char byte;

	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	ck_assert_int_eq(mfd_channel_tls_wrap(a, c, NULL, 0, &tls, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "tls:socketpair:0: no hostname to verify the server "
			    "certificate against");
	ck_assert_int_eq(mfd_channel_tls_wrap(a, c, "", 0, &tls, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "no hostname to verify the server certificate against");
	ck_assert_ptr_null(tls);
	/* Refused before any I/O: not even a ClientHello went out. */
	mfd_channel_free(a);
	ck_assert_int_eq(channel_read_some(b, &byte, 1, &err), 0);
	mfd_channel_free(b);
	mfd_tls_creds_free(c);
}
END_TEST

START_TEST(authz_denial)
{
	struct side cl = { .creds = x509("client2", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	set(sv.creds, "authz", CERTS_CLIENT1_DN);
	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "client certificate subject '" CERTS_CLIENT2_DN "' is not "
		       "in the authz allow-list");
	assert_client_told(&cl, MFD_EPROTO, "the server refused the connection");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(authz_needs_verify_peer)
{
	struct side cl = { 0 };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };
	mfd_error *err = NULL;

	set(sv.creds, "authz", CERTS_CLIENT1_DN);
	set(sv.creds, "verify-peer", "off");
	ck_assert_ok(mfd_channel_socketpair(&cl.inner, &sv.inner, &err), err);
	ck_assert_int_eq(mfd_channel_tls_wrap(sv.inner, sv.creds, NULL, 0, &sv.tls, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "authz needs client certificates, but verify-peer is off");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(anonymous_client_refused)
{
	struct side cl = { .creds = x509("client-anon", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "peer sent no certificate");
	assert_client_told(&cl, MFD_EPROTO, "certificate required (it requires a client certificate)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(expired_certificate)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server-expired", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "server certificate verification failed: certificate has "
		       "expired (depth 0, subject 'CN=localhost,O=libmultifd test')");
	assert_refused(&sv, MFD_EPROTO, "the client refused the connection: sslv3 alert "
		       "certificate expired (it rejected our certificate)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(not_yet_valid_certificate)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server-notyet", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "server certificate verification failed: certificate is "
		       "not yet valid");
	assert_refused(&sv, MFD_EPROTO, "the client refused the connection");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* With PSK, authz lists the client identities the server accepts (QEMU
 * applies tls-authz to the PSK username). */
START_TEST(psk_authz)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = psk("psk-main", MFD_TLS_SERVER) };

	/* The client's identity "qemu" is in the file but not in the list. */
	set(sv.creds, "authz", "spare");
	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "tls:socketpair:1: TLS handshake: PSK identity 'qemu' is "
		       "not in the authz allow-list");
	assert_client_told(&cl, MFD_EPROTO, "the server refused the connection");
	side_free(&cl);
	side_free(&sv);

	/* Listed: accepted. */
	cl = (struct side){ .creds = psk("psk-main", MFD_TLS_CLIENT) };
	sv = (struct side){ .creds = psk("psk-main", MFD_TLS_SERVER) };
	set(sv.creds, "authz", "spare");
	set(sv.creds, "authz", "qemu");
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* ca-crl.pem (QEMU's name, next to ca-cert.pem) revokes certificates. */
START_TEST(crl_revoked_client_refused)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server-crl", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "TLS handshake: the peer's certificate is revoked "
		       "(ca-crl.pem): the client certificate 'CN=client1,O=libmultifd test' "
		       "(depth 0) is listed in ");
	assert_client_told(&cl, MFD_EPROTO, "certificate revoked (it rejected our certificate)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(crl_revoked_server_refused)
{
	struct side cl = { .creds = x509("client-crl", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "TLS handshake: the peer's certificate is revoked "
		       "(ca-crl.pem): the server certificate 'CN=localhost,O=libmultifd test' "
		       "(depth 0) is listed in ");
	assert_refused(&sv, MFD_EPROTO, "the client refused the connection: sslv3 alert "
		       "certificate revoked (it rejected our certificate)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* Both sides check a CRL that revokes neither: the connection works. */
START_TEST(crl_not_revoking_works)
{
	struct side cl = { .creds = x509("client2-crl", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct side sv = { .creds = x509("server-crl", MFD_TLS_SERVER) };

	/* Revocation is checked (on the peer's own certificate) on both sides... */
	ck_assert(X509_VERIFY_PARAM_get_flags(SSL_CTX_get0_param(cl.creds->ctx)) &
		  X509_V_FLAG_CRL_CHECK);
	ck_assert(X509_VERIFY_PARAM_get_flags(SSL_CTX_get0_param(sv.creds->ctx)) &
		  X509_V_FLAG_CRL_CHECK);
	/* ...and passes. */
	connect_pair(&cl, &sv);
	assert_up(&cl, "client");
	assert_up(&sv, "server");
	exchange(&cl, &sv);
	side_free(&cl);
	side_free(&sv);
}
END_TEST

START_TEST(mixed_credential_kinds)
{
	struct side cl = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };

	/* A PSK client never accepts a certificate in place of its key. */
	connect_pair(&cl, &sv);
	assert_refused(&cl, MFD_EPROTO, "tls:socketpair:0: TLS handshake: the server ignored our "
		       "pre-shared key and sent a certificate instead");
	assert_refused(&sv, MFD_EPROTO, "the client refused the connection");
	side_free(&cl);
	side_free(&sv);

	cl = (struct side){ .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	sv = (struct side){ .creds = psk("psk-main", MFD_TLS_SERVER) };
	/* An x509 client offers no key to a PSK server. */
	connect_pair(&cl, &sv);
	assert_refused(&sv, MFD_EPROTO, "tls:socketpair:1: TLS handshake: the client offered no "
		       "pre-shared key (is it set up for x509?)");
	assert_refused(&cl, MFD_EPROTO, "the server refused the connection: sslv3 alert handshake "
		       "failure (it refused our certificate or its authz, or expects other credentials)");
	side_free(&cl);
	side_free(&sv);
}
END_TEST

/* A plaintext peer on a raw descriptor. */
struct plain_peer {
	int fd;
	const char *say;	/* sent after reading what the TLS side sent; NULL: silent */
	bool hang_up;		/* close after reading instead of waiting */
	uint8_t got[16];
	ssize_t ngot;
};

static void *plain_peer_thread(void *arg)
{
	struct plain_peer *p = arg;
	struct pollfd pfd = { .fd = p->fd, .events = POLLIN };

	if (poll(&pfd, 1, IO_TIMEOUT_MS) == 1)
		p->ngot = read(p->fd, p->got, sizeof(p->got));
	if (p->say && write(p->fd, p->say, strlen(p->say)) < 0)
		p->ngot = -1;
	if (p->hang_up)
		shutdown(p->fd, SHUT_RDWR);
	return NULL;
}

START_TEST(plaintext_client_to_tls_server)
{
	struct side sv = { .creds = x509("server", MFD_TLS_SERVER) };
	mfd_error *err = NULL;
	char reply[64];
	int fds[2];
	ssize_t n;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
	ck_assert_ok(mfd_channel_new_fd(fds[1], MFD_CHANNEL_OWN_FD, "plain-listener", &sv.inner,
					&err), err);
	bound(sv.inner);
	ck_assert_int_eq(write(fds[0], "MIGRATE please\n", 15), 15);
	wrap_thread(&sv);
	assert_refused(&sv, MFD_EPROTO, "tls:plain-listener: TLS handshake: peer did not speak TLS "
		       "(plaintext?)");
	/* What the plaintext side gets back is no answer it could take for data. */
	n = read(fds[0], reply, sizeof(reply));
	ck_assert_int_ge(n, 0);
	if (n > 0)
		ck_assert_int_eq(reply[0], 0x15);	/* a TLS alert record */
	close(fds[0]);
	side_free(&sv);
}
END_TEST

START_TEST(tls_client_to_plaintext_server)
{
	struct side cl = { .creds = x509("client", MFD_TLS_CLIENT), .hostname = "localhost" };
	struct plain_peer p = { .say = "220 plaintext service ready\r\n" };
	mfd_error *err = NULL;
	pthread_t t;
	int fds[2];

	/* The plaintext server answers in text: refused as not TLS. */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
	ck_assert_ok(mfd_channel_new_fd(fds[0], MFD_CHANNEL_OWN_FD, "plain", &cl.inner, &err), err);
	bound(cl.inner);
	p.fd = fds[1];
	ck_assert_int_eq(pthread_create(&t, NULL, plain_peer_thread, &p), 0);
	wrap_thread(&cl);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	assert_refused(&cl, MFD_EPROTO, "tls:plain: TLS handshake: peer did not speak TLS (plaintext?)");
	/* The plaintext side saw a binary TLS handshake record, not text. */
	ck_assert_int_gt(p.ngot, 0);
	ck_assert_int_eq(p.got[0], 0x16);
	close(fds[1]);
	mfd_channel_free(cl.inner);
	cl.inner = NULL;

	/* A plaintext server that hangs up: a clean EOF error. */
	p = (struct plain_peer){ .hang_up = true };
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
	ck_assert_ok(mfd_channel_new_fd(fds[0], MFD_CHANNEL_OWN_FD, "plain", &cl.inner, &err), err);
	bound(cl.inner);
	p.fd = fds[1];
	ck_assert_int_eq(pthread_create(&t, NULL, plain_peer_thread, &p), 0);
	wrap_thread(&cl);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	assert_refused(&cl, MFD_EEOF, "TLS handshake: the server closed the connection");
	close(fds[1]);
	mfd_channel_free(cl.inner);
	cl.inner = NULL;

	/* A plaintext server that says nothing: the inner deadline ends the wait. */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
	ck_assert_ok(mfd_channel_new_fd(fds[0], MFD_CHANNEL_OWN_FD, "plain", &cl.inner, &err), err);
	if (mfd_channel_set_option(cl.inner, "timeout-ms", 300, &err) == 0) {
		wrap_thread(&cl);
		assert_refused(&cl, MFD_ETIMEDOUT, "TLS handshake");
	} else {
		test_skip("timeout", "tls: silent plaintext server case: %s",
			  mfd_error_message(err));
		mfd_error_free(err);
		err = NULL;
	}
	close(fds[1]);
	side_free(&cl);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Credentials                                                               */

static void write_file(const char *name, const char *text)
{
	char path[256];
	FILE *f = fopen(path_of(name, NULL, path, sizeof(path)), "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

static void psk_file_refused(const char *text, const char *substr)
{
	char path[256];
	mfd_tls_creds *c = NULL;
	mfd_error *err = NULL;

	write_file("psk-bad", text);
	ck_assert_int_eq(mfd_tls_creds_new_psk(path_of("psk-bad", NULL, path, sizeof(path)),
					       MFD_TLS_SERVER, &c, &err), MFD_EINVAL);
	ck_assert_ptr_null(c);
	ck_assert_mfd_error(err, MFD_EINVAL, substr);
}

START_TEST(psk_file_errors_name_file_and_line)
{
	char path[256], want[512];
	mfd_tls_creds *c = NULL;
	mfd_error *err = NULL;

	path_of("psk-bad", NULL, path, sizeof(path));
	snprintf(want, sizeof(want), "PSK file %s:2: empty identity", path);
	psk_file_refused("a:00112233445566778899aabbccddeeff\n:00112233445566778899aabbccddeeff\n",
			 want);
	psk_file_refused("\n\nnocolon\n", "psk-bad:3: expected identity:hexkey, found no ':'");
	psk_file_refused("a:0011223344556677889\n", "psk-bad:1: the key has an odd number of hex "
			 "digits (19)");
	psk_file_refused("a:00112233445566778899aabbccddeezz\n",
			 "psk-bad:1: the key has a non-hex character at column 33");
	psk_file_refused("a:00112233445566778899aabbccddee\n",
			 "psk-bad:1: the key is 15 bytes, it must be 16 to 64");
	psk_file_refused("a:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
			 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00\n",
			 "psk-bad:1: the key is 65 bytes, it must be 16 to 64");
	psk_file_refused("a:00112233445566778899aabbccddeeff\r\na:00112233445566778899aabbccddeeff\n",
			 "psk-bad:2: identity 'a' is listed twice");
	psk_file_refused("\n\n", "no identity:hexkey line");
	ck_assert_int_eq(mfd_tls_creds_new_psk("/nonexistent/psk", MFD_TLS_CLIENT, &c, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "PSK file /nonexistent/psk: cannot open: No such file");
	/* Identities may hold ':' (the key is after the last one); CRLF is fine. */
	write_file("psk-bad", "host:port:00112233445566778899aabbccddeeff\r\n");
	ck_assert_ok(mfd_tls_creds_new_psk(path, MFD_TLS_CLIENT, &c, &err), err);
	ck_assert_ok(mfd_tls_creds_set(c, "psk-identity", "host:port", &err), err);
	ck_assert_int_eq(mfd_tls_creds_set(c, "psk-identity", "host", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "psk-identity: 'host' is not in the PSK file");
	mfd_tls_creds_free(c);
}
END_TEST

START_TEST(x509_files_are_checked)
{
	char dir[256], want[512];
	mfd_tls_creds *c = NULL;
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_tls_creds_new_x509("/nonexistent", MFD_TLS_CLIENT, &c, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "cannot read /nonexistent/ca-cert.pem: No such file");
	/* A client directory has no server certificate. */
	snprintf(want, sizeof(want), "cannot read %s/server-cert.pem",
		 path_of("client", NULL, dir, sizeof(dir)));
	ck_assert_int_eq(mfd_tls_creds_new_x509(dir, MFD_TLS_SERVER, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_int_eq(mfd_tls_creds_new_x509(path_of("server-badkey", NULL, dir, sizeof(dir)),
						MFD_TLS_SERVER, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "server-key.pem does not match the certificate in");
	/* A CA file that is not PEM. */
	ck_assert_int_eq(mkdir(path_of("garbage", NULL, dir, sizeof(dir)), 0700), 0);
	write_file("garbage/ca-cert.pem", "not a certificate\n");
	ck_assert_int_eq(mfd_tls_creds_new_x509(dir, MFD_TLS_CLIENT, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "ca-cert.pem holds no usable PEM CA certificate");
	ck_assert_int_eq(mfd_tls_creds_new_x509(dir, 7, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "role 7 is neither");
	ck_assert_int_eq(mfd_tls_creds_new_x509(NULL, MFD_TLS_CLIENT, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "no directory given");
	ck_assert_ptr_null(c);
	mfd_tls_creds_free(NULL);
}
END_TEST

/* A ca-crl.pem that is present but unusable fails the credentials, both roles. */
START_TEST(crl_malformed_refused_at_load)
{
	char dir[256], want[512];
	mfd_tls_creds *c = NULL;
	mfd_error *err = NULL;

	snprintf(want, sizeof(want), "x509 credentials: %s/ca-crl.pem holds no usable PEM CRL",
		 path_of("server-badcrl", NULL, dir, sizeof(dir)));
	ck_assert_int_eq(mfd_tls_creds_new_x509(dir, MFD_TLS_SERVER, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_ptr_null(c);
	ck_assert_int_eq(mfd_tls_creds_new_x509(dir, MFD_TLS_CLIENT, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_ptr_null(c);
	/* An empty file is no CRL either. */
	write_file("server-badcrl/ca-crl.pem", "");
	ck_assert_int_eq(mfd_tls_creds_new_x509(dir, MFD_TLS_SERVER, &c, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_ptr_null(c);
}
END_TEST

START_TEST(creds_options)
{
	mfd_tls_creds *cl = x509("client", MFD_TLS_CLIENT), *sv = x509("server", MFD_TLS_SERVER);
	mfd_tls_creds *pc = psk("psk-main", MFD_TLS_CLIENT);
	struct side a = { .creds = psk("psk-main", MFD_TLS_CLIENT) };
	struct side b = { .creds = psk("psk-main", MFD_TLS_SERVER) };
	mfd_channel *tls = (mfd_channel *)&b;
	mfd_error *err = NULL;

	ck_assert_int_eq(mfd_tls_creds_set(sv, "max-version", "1.3", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "TLS option 'max-version' is unknown");
	ck_assert_int_eq(mfd_tls_creds_set(sv, "min-version", "1.1", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "min-version: '1.1' is neither '1.2' nor '1.3'");
	ck_assert_int_eq(mfd_tls_creds_set(sv, "verify-peer", "maybe", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "verify-peer: 'maybe' is neither 'on' nor 'off'");
	ck_assert_int_eq(mfd_tls_creds_set(cl, "verify-peer", "off", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "clients always verify");
	ck_assert_int_eq(mfd_tls_creds_set(cl, "authz", "CN=x", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "authz applies to server credentials only");
	ck_assert_int_eq(mfd_tls_creds_set(pc, "authz", "qemu", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "authz applies to server credentials only");
	ck_assert_int_eq(mfd_tls_creds_set(sv, "authz", "", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "authz: empty DN");
	ck_assert_int_eq(mfd_tls_creds_set(sv, "psk-identity", "qemu", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "psk-identity applies to PSK client credentials only");
	ck_assert_int_eq(mfd_tls_creds_set(sv, "ciphersuites", "TLS_NOPE", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "ciphersuites: 'TLS_NOPE' names no usable TLS 1.3 suite");
	ck_assert_int_eq(mfd_tls_creds_set(sv, "cipher-list", "NOPE", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "cipher-list: 'NOPE' names no usable cipher");
	ck_assert_ok(mfd_tls_creds_set(sv, "ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", &err), err);
	ck_assert_int_eq(mfd_tls_creds_set(NULL, "authz", "x", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL argument");

	/* Once a channel used them, the credentials are frozen. */
	connect_pair(&a, &b);
	assert_up(&a, "client");
	ck_assert_int_eq(mfd_tls_creds_set(a.creds, "psk-identity", "spare", &err), MFD_ESTATE);
	ck_assert_mfd_error(err, MFD_ESTATE, "set after a channel used them");

	/* Wrap's own argument checks. */
	ck_assert_int_eq(mfd_channel_tls_wrap(a.inner, pc, NULL, 0x80, &tls, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "unknown flags 0x80");
	ck_assert_ptr_null(tls);
	ck_assert_int_eq(mfd_channel_tls_wrap(a.inner, NULL, NULL, 0, &tls, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL credentials");
	ck_assert_int_eq(mfd_channel_tls_wrap(a.inner, pc, NULL, 0, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "out is NULL");
	ck_assert_int_eq(tls_request_key_update(a.inner, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not a TLS channel");
	ck_assert_ptr_null(tls_channel_version(a.inner));
	side_free(&a);
	side_free(&b);
	mfd_tls_creds_free(cl);
	mfd_tls_creds_free(sv);
	mfd_tls_creds_free(pc);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Interop with the openssl command-line tool                                */

static char openssl_path[512];

static bool have_openssl(const char *test)
{
	const char *path = getenv("PATH");

	if (!path || !*path)
		path = "/usr/bin:/bin";
	while (*path && !test_cap_disabled("openssl")) {
		size_t len = strcspn(path, ":");

		snprintf(openssl_path, sizeof(openssl_path), "%.*s/openssl", (int)len, path);
		if (len && access(openssl_path, X_OK) == 0)
			return true;
		path += len + (path[len] == ':');
	}
	test_skip("openssl", "tls: %s: no openssl binary in PATH", test);
	return false;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An openssl child with its stdin and stdout on pipes, stderr in a file. */
struct proc {
	pid_t pid;
	int in, out;
	char errfile[300];
	char seen[8192];	/* stdout so far */
	size_t nseen;
};

static void proc_start(struct proc *p, const char *const argv[])
{
	pid_t parent = getpid();
	int in[2], out[2], efd;

	memset(p, 0, sizeof(*p));
	snprintf(p->errfile, sizeof(p->errfile), "%s/openssl-stderr-XXXXXX", pki.root);
	efd = mkostemp(p->errfile, O_CLOEXEC);
	ck_assert_int_ge(efd, 0);
	ck_assert_int_eq(pipe2(in, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
	p->pid = fork();
	ck_assert_int_ge(p->pid, 0);
	if (p->pid == 0) {
		/* Only async-signal-safe calls here.  If the test dies (a failed
		 * assertion ends its process), the child dies with it. */
		if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(efd, 2) < 0 ||
		    prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(126);
		execv(openssl_path, (char *const *)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	close(efd);
	p->in = in[1];
	p->out = out[0];
}

/* Wait until the child's stdout holds needle; false on EOF or timeout. */
static bool proc_wait_for(struct proc *p, const char *needle, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;

	for (;;) {
		struct pollfd pfd = { .fd = p->out, .events = POLLIN };
		int64_t left = deadline - now_ms();
		ssize_t n;

		p->seen[p->nseen] = '\0';
		if (strstr(p->seen, needle))
			return true;
		if (left <= 0 || p->nseen + 1 >= sizeof(p->seen) || poll(&pfd, 1, (int)left) <= 0)
			return false;
		n = read(p->out, p->seen + p->nseen, sizeof(p->seen) - 1 - p->nseen);
		if (n <= 0)
			return false;
		p->nseen += (size_t)n;
	}
}

static const char *proc_stderr(struct proc *p, char *buf, size_t len)
{
	FILE *f = fopen(p->errfile, "r");
	size_t n = f ? fread(buf, 1, len - 1, f) : 0;

	if (f)
		fclose(f);
	buf[n] = '\0';
	return buf;
}

/* Let the child exit on its own for a while, then kill it; always reaped. */
static int proc_end(struct proc *p, int grace_ms)
{
	int64_t deadline = now_ms() + grace_ms;
	int status = 0;

	if (p->in >= 0)
		close(p->in);
	close(p->out);
	for (;;) {
		pid_t r = waitpid(p->pid, &status, WNOHANG);

		if (r == p->pid)
			break;
		if (now_ms() >= deadline) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &status, 0);
			status = -1;
			break;
		}
		nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
	}
	unlink(p->errfile);
	return status;
}

static int tcp_connect(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect to port %d: %s",
		      port, strerror(errno));
	return fd;
}

/* A listening socket on 127.0.0.1 and a port the kernel chose. */
static int tcp_listen(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 4), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* Start "openssl s_server ... -accept 127.0.0.1:PORT" on a free port. */
static int start_s_server(struct proc *p, const char **argv, int port_arg)
{
	char accept[32], err[2048];

	for (int attempt = 0; attempt < 5; attempt++) {
		/* Learn a free port by binding 0; another process may take it before
		 * s_server does, hence the retries. */
		int port, fd = tcp_listen(&port);

		close(fd);
		snprintf(accept, sizeof(accept), "127.0.0.1:%d", port);
		argv[port_arg] = accept;
		proc_start(p, argv);
		if (proc_wait_for(p, "ACCEPT", 10000))
			return port;
		printf("tls: s_server on port %d did not start (%s), retrying\n", port,
		       proc_stderr(p, err, sizeof(err)));
		proc_end(p, 0);
	}
	ck_abort_msg("openssl s_server did not start");
	return -1;
}

/* Our client against s_server -rev (it answers each line reversed). */
static void client_against_s_server(mfd_tls_creds *creds, const char **argv, int port_arg)
{
	struct proc p;
	mfd_channel *inner = NULL, *tls = NULL;
	mfd_error *err = NULL;
	char buf[2048];
	int port;

	signal(SIGPIPE, SIG_IGN);
	port = start_s_server(&p, argv, port_arg);
	ck_assert_ok(mfd_channel_new_fd(tcp_connect(port), MFD_CHANNEL_OWN_FD, "tcp:s_server",
					&inner, &err), err);
	bound(inner);
	ck_assert_msg(mfd_channel_tls_wrap(inner, creds, "localhost", 0, &tls, &err) == 0,
		      "wrap: %s; s_server said: %s", mfd_error_message(err),
		      proc_stderr(&p, buf, sizeof(buf)));
	send_str(tls, "hello from libmultifd\n");
	expect_str(tls, "dfitlumbil morf olleh\n");
	/* s_server closes with close_notify: a clean end for us. */
	send_str(tls, "CLOSE\n");
	expect_end(tls);
	mfd_channel_finish(tls, NULL);
	mfd_channel_free(tls);
	mfd_channel_free(inner);
	proc_end(&p, 5000);
}

START_TEST(interop_client_x509_with_s_server)
{
	char cert[256], key[256], ca[256];
	const char *argv[] = { "openssl", "s_server", "-accept", NULL, "-naccept", "1", "-rev",
			       "-cert", path_of("server", "server-cert.pem", cert, sizeof(cert)),
			       "-key", path_of("server", "server-key.pem", key, sizeof(key)),
			       "-CAfile", path_of("server", "ca-cert.pem", ca, sizeof(ca)),
			       "-Verify", "1", "-verify_return_error", NULL };
	mfd_tls_creds *c;

	if (!have_openssl("x509 client interop"))
		return;
	c = x509("client", MFD_TLS_CLIENT);
	client_against_s_server(c, argv, 3);
	mfd_tls_creds_free(c);
}
END_TEST

START_TEST(interop_client_psk_with_s_server)
{
	const char *argv[] = { "openssl", "s_server", "-accept", NULL, "-naccept", "1", "-rev",
			       "-nocert", "-tls1_3", "-psk_identity", "qemu", "-psk", pki.psk_hex,
			       NULL };
	mfd_tls_creds *c;

	if (!have_openssl("PSK client interop"))
		return;
	c = psk("psk-main", MFD_TLS_CLIENT);
	client_against_s_server(c, argv, 3);
	mfd_tls_creds_free(c);
}
END_TEST

/* The tls-min-version parameter reaches the source's credentials: 1.3
 * against a destination that speaks TLS 1.2 only is refused. */
START_TEST(interop_min_version_parameter_vs_tls_1_2_server)
{
	char cert[256], key[256], ca[256], dir[256], uri[64], buf[2048];
	const char *argv[] = { "openssl", "s_server", "-accept", NULL, "-naccept", "1", "-tls1_2",
			       "-cert", path_of("server", "server-cert.pem", cert, sizeof(cert)),
			       "-key", path_of("server", "server-key.pem", key, sizeof(key)),
			       "-CAfile", path_of("server", "ca-cert.pem", ca, sizeof(ca)), NULL };
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	struct proc p;
	int port;

	if (!have_openssl("tls-min-version interop"))
		return;
	signal(SIGPIPE, SIG_IGN);
	port = start_s_server(&p, argv, 3);
	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_set_param(m, "tls-creds", path_of("client", NULL, dir, sizeof(dir)), &err),
		     err);
	ck_assert_ok(mfd_set_param(m, "tls-min-version", "1.3", &err), err);
	ck_assert_ok(mfd_set_param(m, "multifd-channels", "1", &err), err);
	ck_assert_ok(mfd_set_param(m, "channel-timeout-ms", "10000", &err), err);
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", port);
	ck_assert_ok(mfd_migrate(m, uri, &err), err);
	ck_assert_msg(mfd_migration_wait(m, 20000, &err) == MFD_EPROTO, "%s; s_server said: %s",
		      mfd_error_message(err), proc_stderr(&p, buf, sizeof(buf)));
	ck_assert_mfd_error(err, MFD_EPROTO, "no TLS version in common; see min-version");
	ck_assert_int_eq(mfd_migration_state(m), MFD_STATE_FAILED);
	mfd_migration_free(m);
	proc_end(&p, 5000);
}
END_TEST

/*
 * s_client against our server: s_client sends a line from its stdin, we
 * answer and finish; s_client prints the answer and, at our close_notify,
 * closes too.  @expect_fail: the substring of our server's error instead.
 */
static void s_client_against_server(mfd_tls_creds *creds, const char **argv, int connect_arg,
				    const char *expect_fail)
{
	struct pollfd pfd;
	struct proc p;
	mfd_channel *inner = NULL, *tls = NULL;
	mfd_error *err = NULL;
	char target[32], buf[2048];
	int port, lfd, fd;

	signal(SIGPIPE, SIG_IGN);
	lfd = tcp_listen(&port);
	snprintf(target, sizeof(target), "127.0.0.1:%d", port);
	argv[connect_arg] = target;
	proc_start(&p, argv);
	pfd = (struct pollfd){ .fd = lfd, .events = POLLIN };
	ck_assert_msg(poll(&pfd, 1, 10000) == 1, "s_client did not connect: %s",
		      proc_stderr(&p, buf, sizeof(buf)));
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	close(lfd);
	ck_assert_ok(mfd_channel_new_fd(fd, MFD_CHANNEL_OWN_FD, "tcp:s_client", &inner, &err), err);
	bound(inner);
	if (expect_fail) {
		ck_assert_int_eq(mfd_channel_tls_wrap(inner, creds, NULL, 0, &tls, &err), MFD_EPROTO);
		ck_assert_mfd_error(err, MFD_EPROTO, expect_fail);
		mfd_channel_free(inner);
		proc_end(&p, 5000);
		return;
	}
	ck_assert_msg(mfd_channel_tls_wrap(inner, creds, NULL, 0, &tls, &err) == 0,
		      "wrap: %s; s_client said: %s", mfd_error_message(err),
		      proc_stderr(&p, buf, sizeof(buf)));
	ck_assert_int_eq(write(p.in, "ping from s_client\n", 19), 19);
	expect_str(tls, "ping from s_client\n");
	send_str(tls, "pong from libmultifd\n");
	ck_assert_ok(mfd_channel_finish(tls, &err), err);
	ck_assert_msg(proc_wait_for(&p, "pong from libmultifd\n", 10000),
		      "s_client printed '%s'; stderr: %s", p.seen, proc_stderr(&p, buf, sizeof(buf)));
	/* It answers our close_notify with its own and exits. */
	expect_end(tls);
	ck_assert_int_eq(proc_end(&p, 5000), 0);
	mfd_channel_free(tls);
	mfd_channel_free(inner);
}

START_TEST(interop_s_client_x509_with_server)
{
	char cert[256], key[256], ca[256];
	const char *argv[] = { "openssl", "s_client", "-connect", NULL, "-quiet",
			       "-cert", path_of("client", "client-cert.pem", cert, sizeof(cert)),
			       "-key", path_of("client", "client-key.pem", key, sizeof(key)),
			       "-CAfile", path_of("client", "ca-cert.pem", ca, sizeof(ca)),
			       "-verify", "2", "-verify_return_error", "-verify_hostname",
			       "localhost", "-servername", "localhost", NULL };
	mfd_tls_creds *c;

	if (!have_openssl("x509 server interop"))
		return;
	c = x509("server", MFD_TLS_SERVER);
	set(c, "authz", CERTS_CLIENT1_DN);
	s_client_against_server(c, argv, 3, NULL);
	mfd_tls_creds_free(c);
}
END_TEST

START_TEST(interop_s_client_psk_with_server)
{
	const char *argv[] = { "openssl", "s_client", "-connect", NULL, "-quiet", "-tls1_3",
			       "-psk_identity", "qemu", "-psk", pki.psk_hex, NULL };
	mfd_tls_creds *c;

	if (!have_openssl("PSK server interop"))
		return;
	c = psk("psk-main", MFD_TLS_SERVER);
	s_client_against_server(c, argv, 3, NULL);
	mfd_tls_creds_free(c);
}
END_TEST

START_TEST(interop_s_client_tls_1_2)
{
	char cert[256], key[256], ca[256];
	const char *argv[] = { "openssl", "s_client", "-connect", NULL, "-quiet", "-tls1_2",
			       "-cert", path_of("client", "client-cert.pem", cert, sizeof(cert)),
			       "-key", path_of("client", "client-key.pem", key, sizeof(key)),
			       "-CAfile", path_of("client", "ca-cert.pem", ca, sizeof(ca)),
			       "-verify", "2", "-verify_return_error", "-verify_hostname",
			       "localhost", NULL };
	mfd_tls_creds *c;

	if (!have_openssl("TLS 1.2 interop"))
		return;
	/* TLS 1.2 works by default... */
	c = x509("server", MFD_TLS_SERVER);
	s_client_against_server(c, argv, 3, NULL);
	mfd_tls_creds_free(c);
	/* ...and is refused by a 1.3-only server. */
	c = x509("server", MFD_TLS_SERVER);
	set(c, "min-version", "1.3");
	s_client_against_server(c, argv, 3, "no TLS version acceptable to both sides");
	mfd_tls_creds_free(c);
}
END_TEST

START_TEST(interop_s_client_wrong_psk)
{
	const char *argv[] = { "openssl", "s_client", "-connect", NULL, "-quiet", "-tls1_3",
			       "-psk_identity", "qemu", "-psk", pki.psk_other_hex, NULL };
	mfd_tls_creds *c;

	if (!have_openssl("wrong PSK interop"))
		return;
	c = psk("psk-main", MFD_TLS_SERVER);
	s_client_against_server(c, argv, 3, "PSK key mismatch");
	mfd_tls_creds_free(c);
}
END_TEST

Suite *suite_tls(void);

Suite *suite_tls(void)
{
	Suite *s = suite_create("tls");
	TCase *pass = tcase_create("pass");
	TCase *refuse = tcase_create("refuse");
	TCase *creds = tcase_create("creds");
	TCase *interop = tcase_create("interop");
	TCase *all[] = { pass, refuse, creds, interop };

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		tcase_add_unchecked_fixture(all[i], pki_setup, pki_teardown);
		tcase_set_timeout(all[i], 120);
		suite_add_tcase(s, all[i]);
	}
	tcase_add_checked_fixture(pass, pattern_setup, pattern_teardown);
	tcase_add_test(pass, x509_mutual_hostname);
	tcase_add_test(pass, x509_mutual_ip_address);
	tcase_add_test(pass, psk_handshake);
	tcase_add_test(pass, min_version_1_3);
	tcase_add_test(pass, tls_1_2_when_the_server_caps_it);
	tcase_add_test(pass, verify_peer_off_accepts_anonymous_client);
	tcase_add_test(pass, many_channels_share_credentials);
	tcase_add_test(pass, both_directions_at_once_with_key_updates);
	tcase_add_test(pass, large_transfer_intact);
	tcase_add_test(pass, truncation_without_close_notify);
	tcase_add_test(pass, shutdown_unblocks_a_reader);
	tcase_add_test(pass, options_reach_the_inner_channel);
	tcase_add_test(pass, owned_inner_is_freed_with_the_channel);
	tcase_add_test(pass, crl_not_revoking_works);

	tcase_add_test(refuse, psk_key_mismatch);
	tcase_add_test(refuse, psk_unknown_identity);
	tcase_add_loop_test(refuse, psk_identity_escaped, 0, 2);
	tcase_add_test(refuse, wrong_ca);
	tcase_add_test(refuse, hostname_mismatch);
	tcase_add_test(refuse, no_hostname);
	tcase_add_test(refuse, authz_denial);
	tcase_add_test(refuse, authz_needs_verify_peer);
	tcase_add_test(refuse, anonymous_client_refused);
	tcase_add_test(refuse, expired_certificate);
	tcase_add_test(refuse, not_yet_valid_certificate);
	tcase_add_test(refuse, mixed_credential_kinds);
	tcase_add_test(refuse, crl_revoked_client_refused);
	tcase_add_test(refuse, psk_authz);
	tcase_add_test(refuse, crl_revoked_server_refused);
	tcase_add_test(refuse, plaintext_client_to_tls_server);
	tcase_add_test(refuse, tls_client_to_plaintext_server);

	tcase_add_test(creds, psk_file_errors_name_file_and_line);
	tcase_add_test(creds, x509_files_are_checked);
	tcase_add_test(creds, creds_options);
	tcase_add_test(creds, crl_malformed_refused_at_load);

	tcase_add_test(interop, interop_client_x509_with_s_server);
	tcase_add_test(interop, interop_client_psk_with_s_server);
	tcase_add_test(interop, interop_s_client_x509_with_server);
	tcase_add_test(interop, interop_s_client_psk_with_server);
	tcase_add_test(interop, interop_s_client_tls_1_2);
	tcase_add_test(interop, interop_s_client_wrong_psk);
	tcase_add_test(interop, interop_min_version_parameter_vs_tls_1_2_server);
	return s;
}

#else /* !MFD_HAVE_TLS */

START_TEST(built_without_tls)
{
	mfd_tls_creds *c = (mfd_tls_creds *)1;
	mfd_channel *a = NULL, *b = NULL, *tls = (mfd_channel *)1;
	mfd_error *err = NULL;

	/* Counted as a skip: the TLS cases do not run; only the ENOTSUP paths do. */
	test_skip("tls", "tls: built without TLS (configure --disable-tls): the TLS cases");
	ck_assert_int_eq(mfd_tls_creds_new_x509("/tmp", MFD_TLS_CLIENT, &c, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "built without TLS");
	ck_assert_ptr_null(c);
	ck_assert_int_eq(mfd_tls_creds_new_psk("/tmp/psk", MFD_TLS_SERVER, &c, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "built without TLS");
	ck_assert_int_eq(mfd_tls_creds_set(NULL, "authz", "CN=x", &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "built without TLS");
	ck_assert_ok(mfd_channel_socketpair(&a, &b, &err), err);
	ck_assert_int_eq(mfd_channel_tls_wrap(a, NULL, "localhost", 0, &tls, &err), MFD_ENOTSUP);
	ck_assert_mfd_error(err, MFD_ENOTSUP, "built without TLS");
	ck_assert_ptr_null(tls);
	mfd_tls_creds_free(NULL);
	mfd_channel_free(a);
	mfd_channel_free(b);
}
END_TEST

Suite *suite_tls(void);

Suite *suite_tls(void)
{
	Suite *s = suite_create("tls");
	TCase *tc = tcase_create("disabled");

	tcase_add_test(tc, built_without_tls);
	suite_add_tcase(s, tc);
	return s;
}

#endif /* MFD_HAVE_TLS */
