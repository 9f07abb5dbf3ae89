/* SPDX-License-Identifier: MIT */
/*
 * stream-bench: raw channel throughput over loopback TCP, plain or TLS.
 *
 *   stream-bench [--conns N] [--mib M] [--tls none|aes128|chacha20] [--json]
 *
 * N sender threads connect to a listener on 127.0.0.1 and each pushes M/N
 * MiB of incompressible data through an mfd_stream; N receiver threads read
 * it.  Prints the aggregate GiB/s from the first connect to the last byte
 * received.  This is the transport ceiling multifd channels sit on.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <multifd/multifd.h>

#define CHUNK (256u << 10)
#define MAX_CONNS 64

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct conn {
	mfd_channel *ch;	/* plain (or TLS-wrapped) channel */
	mfd_channel *inner;	/* the TCP channel under TLS */
	uint64_t bytes;
	uint8_t *buf;
	int result;
	mfd_error *err;
};

static const char *listen_uri;
static mfd_tls_creds *client_creds, *server_creds;

static int wrap_tls(struct conn *c, mfd_tls_creds *creds)
{
	if (!creds)
		return 0;
	c->inner = c->ch;
	c->ch = NULL;
	return mfd_channel_tls_wrap(c->inner, creds, "127.0.0.1", 0, &c->ch, &c->err);
}

static void *sender(void *arg)
{
	struct conn *c = arg;
	mfd_stream *s = NULL;
	uint64_t left = c->bytes;

	c->result = mfd_channel_connect(listen_uri, 0, &c->ch, &c->err);
	if (c->result == 0)
		c->result = wrap_tls(c, client_creds);
	if (c->result == 0)
		c->result = mfd_stream_new(c->ch, MFD_STREAM_WRITE, &s, &c->err);
	while (c->result == 0 && left) {
		size_t n = left < CHUNK ? (size_t)left : CHUNK;

		mfd_stream_put_buf_ref(s, c->buf, n);
		c->result = mfd_stream_flush(s);
		left -= n;
	}
	if (c->result < 0 && s)
		mfd_stream_error(s, &c->err);
	if (c->result == 0)
		c->result = mfd_channel_finish(c->ch, &c->err);
	mfd_stream_free(s);
	return NULL;
}

static void *receiver(void *arg)
{
	struct conn *c = arg;
	mfd_stream *s = NULL;
	uint64_t left = c->bytes;

	c->result = wrap_tls(c, server_creds);
	if (c->result == 0)
		c->result = mfd_stream_new(c->ch, MFD_STREAM_READ, &s, &c->err);
	while (c->result == 0 && left) {
		size_t n = left < CHUNK ? (size_t)left : CHUNK;

		c->result = mfd_stream_get_buf(s, c->buf, n);
		left -= n;
	}
	if (c->result < 0 && s)
		mfd_stream_error(s, &c->err);
	mfd_stream_free(s);
	return NULL;
}

static int make_psk_creds(const char *suite, mfd_error **errp)
{
	char path[] = "/tmp/mfd-bench-psk-XXXXXX";
	int fd = mkstemp(path), r;
	FILE *f;

	if (fd < 0)
		return mfd_error_set(errp, MFD_EIO, "mkstemp: %s", strerror(errno));
	f = fdopen(fd, "w");
	fprintf(f, "bench:");
	for (int i = 0; i < 32; i++)
		fprintf(f, "%02x", (unsigned)(rand() & 0xff));
	fprintf(f, "\n");
	fclose(f);
	r = mfd_tls_creds_new_psk(path, MFD_TLS_CLIENT, &client_creds, errp);
	if (r == 0)
		r = mfd_tls_creds_new_psk(path, MFD_TLS_SERVER, &server_creds, errp);
	if (r == 0)
		r = mfd_tls_creds_set(client_creds, "ciphersuites", suite, errp);
	if (r == 0)
		r = mfd_tls_creds_set(server_creds, "ciphersuites", suite, errp);
	unlink(path);
	return r;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: stream-bench [--conns N] [--mib M] [--tls none|aes128|chacha20] "
		   "[--json]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "conns", required_argument, NULL, 'c' },
		{ "mib", required_argument, NULL, 'm' },
		{ "tls", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct conn snd[MAX_CONNS], rcv[MAX_CONNS];
	mfd_channel *slots[MAX_CONNS];
	pthread_t ts[MAX_CONNS], tr[MAX_CONNS];
	mfd_listener *l = NULL;
	mfd_error *err = NULL;
	const char *tls = "none";
	long conns = 1, mib = 4096;
	bool json = false;
	uint8_t *data;
	double t0, t1;
	int c, status = 1;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': conns = strtol(optarg, NULL, 10); break;
		case 'm': mib = strtol(optarg, NULL, 10); break;
		case 't': tls = optarg; break;
		case 'j': json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (conns < 1 || conns > MAX_CONNS || mib < 1) {
		fprintf(stderr, "stream-bench: --conns must be 1..%d and --mib positive\n",
			MAX_CONNS);
		return 2;
	}
	if (strcmp(tls, "aes128") == 0) {
		if (make_psk_creds("TLS_AES_128_GCM_SHA256", &err) < 0)
			goto out;
	} else if (strcmp(tls, "chacha20") == 0) {
		if (make_psk_creds("TLS_CHACHA20_POLY1305_SHA256", &err) < 0)
			goto out;
	} else if (strcmp(tls, "none") != 0) {
		usage(stderr);
		return 2;
	}
	data = malloc(CHUNK);
	for (size_t i = 0; i < CHUNK; i++)
		data[i] = (uint8_t)(rand() >> 7);
	if (mfd_listener_new("tcp:127.0.0.1:0", &l, &err) < 0)
		goto out;
	listen_uri = mfd_listener_uri(l);
	memset(snd, 0, sizeof(snd));
	memset(rcv, 0, sizeof(rcv));
	t0 = now();
	for (long i = 0; i < conns; i++) {
		snd[i].bytes = ((uint64_t)mib << 20) / (uint64_t)conns;
		snd[i].buf = data;
		pthread_create(&ts[i], NULL, sender, &snd[i]);
	}
	if (mfd_listener_gather(l, (unsigned)conns, 30000, NULL, NULL, slots, &err) < 0)
		goto out;
	for (long i = 0; i < conns; i++) {
		rcv[i].ch = slots[i];
		rcv[i].bytes = snd[i].bytes;
		rcv[i].buf = malloc(CHUNK);
		pthread_create(&tr[i], NULL, receiver, &rcv[i]);
	}
	for (long i = 0; i < conns; i++) {
		pthread_join(tr[i], NULL);
		pthread_join(ts[i], NULL);
	}
	t1 = now();
	status = 0;
	for (long i = 0; i < conns; i++) {
		struct conn *bad = snd[i].result < 0 ? &snd[i] : rcv[i].result < 0 ? &rcv[i] : NULL;

		if (bad) {
			fprintf(stderr, "stream-bench: connection %ld: %s\n", i,
				mfd_error_message(bad->err));
			status = 1;
		}
	}
	if (status == 0) {
		double gibs = (double)((uint64_t)mib << 20) / (t1 - t0) / (1 << 30);

		if (json)
			printf("{\"conns\": %ld, \"tls\": \"%s\", \"mib\": %ld, \"seconds\": %.3f, "
			       "\"gib_per_s\": %.3f}\n", conns, tls, mib, t1 - t0, gibs);
		else
			printf("stream-bench: %ld conn(s), tls=%s, %ld MiB in %.3f s: %.2f GiB/s\n",
			       conns, tls, mib, t1 - t0, gibs);
	}
	for (long i = 0; i < conns; i++) {
		mfd_channel_free(snd[i].ch);
		mfd_channel_free(snd[i].inner);
		mfd_channel_free(rcv[i].ch);
		mfd_channel_free(rcv[i].inner);
		mfd_error_free(snd[i].err);
		mfd_error_free(rcv[i].err);
		free(rcv[i].buf);
	}
	free(data);
out:
	if (err) {
		fprintf(stderr, "stream-bench: %s\n", mfd_error_message(err));
		mfd_error_free(err);
		status = 1;
	}
	mfd_listener_free(l);
	mfd_tls_creds_free(client_creds);
	mfd_tls_creds_free(server_creds);
	return status;
}
