/* SPDX-License-Identifier: MIT */
/*
 * multifd tune: which multifd-channels and multifd-compression to use on a
 * link.  It measures the link with 1..N parallel TCP streams against a
 * `multifd tune --listen` peer (a sink that counts what it gets), measures
 * every codec on a sample of the guest's memory, then models the migration
 * time of each (channels, codec) pair and prints them sorted.
 *
 * The model: zero pages cost nothing on the wire; a normal page costs its
 * compressed size (a packet that saves less than 1/32 is sent raw, as the
 * library does); the channels move data at the measured link rate for their
 * stream count, and compress and decompress on min(channels, CPUs) threads.
 * The slowest of the three sets the rate R; with the guest writing D MiB/s
 * the passes shrink by D/R each, so the time is about size / (R - D).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"

#define TUNE_MAGIC "MFDTUNE1"
#define TUNE_HELLO 16		/* magic, be32 stream index, be32 reserved */
#define CHUNK (256u << 10)
#define PACKET_BYTES (128u * GUEST_PAGE)	/* the default multifd-packet-size */
#define SAMPLE_MAX ((uint64_t)64 << 20)		/* page bytes each codec compresses */
#define MAX_STREAMS 64
#define GIB (1024.0 * 1024.0 * 1024.0)

/* ---- addresses ------------------------------------------------------------------ */

/* "tcp:HOST:PORT" (HOST may be [v6]) into getaddrinfo() results. */
static int tune_resolve(const char *uri, bool listen, struct addrinfo **res, mfd_error **errp)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = listen ? AI_PASSIVE : 0 };
	char host[256];
	const char *h, *port;
	size_t hl;
	int r;

	if (strncmp(uri, "tcp:", 4))
		return mfd_error_set(errp, MFD_EINVAL, "'%s': tune speaks tcp:HOST:PORT only", uri);
	h = uri + 4;
	if (*h == '[') {
		const char *end = strchr(h, ']');

		if (!end || end[1] != ':')
			return mfd_error_set(errp, MFD_EINVAL, "'%s': bad [IPv6]:PORT", uri);
		hl = (size_t)(end - h - 1);
		h++;
		port = end + 2;
	} else {
		port = strrchr(h, ':');
		if (!port)
			return mfd_error_set(errp, MFD_EINVAL, "'%s': no port", uri);
		hl = (size_t)(port - h);
		port++;
	}
	if (hl >= sizeof(host) || !*port)
		return mfd_error_set(errp, MFD_EINVAL, "'%s': bad host or port", uri);
	memcpy(host, h, hl);
	host[hl] = '\0';
	r = getaddrinfo(hl ? host : NULL, port, &hints, res);
	if (r)
		return mfd_error_set(errp, MFD_EIO, "'%s': %s", uri, gai_strerror(r));
	return 0;
}

/* ---- the sink (tune --listen) ---------------------------------------------------- */

/* One connection: the hello, then everything to EOF; answers the byte count. */
static void *sink_conn(void *arg)
{
	int fd = (int)(intptr_t)arg;
	uint8_t hello[TUNE_HELLO], *buf = malloc(CHUNK), reply[8];
	uint64_t total = 0;
	ssize_t n;

	if (buf && read_full(fd, hello, sizeof(hello)) == 0 &&
	    !memcmp(hello, TUNE_MAGIC, 8)) {
		while ((n = read(fd, buf, CHUNK)) > 0 || (n < 0 && errno == EINTR))
			total += n > 0 ? (uint64_t)n : 0;
		for (int i = 0; i < 8; i++)
			reply[i] = (uint8_t)(total >> (56 - 8 * i));
		write_full(fd, reply, sizeof(reply));
	}
	free(buf);
	close(fd);
	return NULL;
}

static int tune_listen(const char *uri, bool quiet)
{
	struct addrinfo *ai = NULL;
	mfd_error *err = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[128], port[16];
	int one = 1, fd = -1;

	if (tune_resolve(uri, true, &ai, &err) < 0)
		return report_error("tune", err);
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, MAX_STREAMS) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
	    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV)) {
		fprintf(stderr, "multifd tune: cannot listen on %s: %s\n", uri, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return EXIT_FAIL;
	}
	freeaddrinfo(ai);
	printf(strchr(host, ':') ? "listening on tcp:[%s]:%s\n" : "listening on tcp:%s:%s\n", host,
	       port);
	fflush(stdout);
	if (!quiet)
		fprintf(stderr, "multifd tune: a sink for 'multifd tune --to'; Ctrl-C ends it\n");
	while (!interrupted) {
		int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
		pthread_t t;

		if (c < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "multifd tune: accept: %s\n", strerror(errno));
			break;
		}
		if (pthread_create(&t, NULL, sink_conn, (void *)(intptr_t)c) != 0)
			close(c);
		else
			pthread_detach(t);
	}
	close(fd);
	return interrupted ? EXIT_OK : EXIT_FAIL;
}

/* ---- the link -------------------------------------------------------------------------- */

struct stream {
	const struct addrinfo *ai;
	unsigned index;
	double seconds;
	const uint8_t *data;	/* CHUNK bytes to send over and over */
	uint64_t acked;		/* what the sink counted */
	bool ok;
	pthread_t tid;
};

static void *stream_run(void *arg)
{
	struct stream *s = arg;
	uint8_t hello[TUNE_HELLO] = TUNE_MAGIC, reply[8];
	int fd = socket(s->ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	double end;

	hello[8] = (uint8_t)(s->index >> 24);
	hello[9] = (uint8_t)(s->index >> 16);
	hello[10] = (uint8_t)(s->index >> 8);
	hello[11] = (uint8_t)s->index;
	if (fd < 0 || connect(fd, s->ai->ai_addr, s->ai->ai_addrlen) < 0 ||
	    write_full(fd, hello, sizeof(hello)) < 0)
		goto out;
	end = now_s() + s->seconds;
	while (now_s() < end && !interrupted)
		if (write_full(fd, s->data, CHUNK) < 0)
			goto out;
	/* What arrived, not what sits in the socket buffers. */
	if (shutdown(fd, SHUT_WR) < 0 || read_full(fd, reply, sizeof(reply)) < 0)
		goto out;
	for (int i = 0; i < 8; i++)
		s->acked = s->acked << 8 | reply[i];
	s->ok = true;
out:
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* Bytes per second over @n parallel streams for @seconds; < 0 on failure. */
static double link_rate(const struct addrinfo *ai, unsigned n, double seconds,
			const uint8_t *data)
{
	struct stream st[MAX_STREAMS];
	uint64_t total = 0;
	double t0 = now_s(), t;
	bool ok = true;

	for (unsigned i = 0; i < n; i++) {
		st[i] = (struct stream){ .ai = ai, .index = i, .seconds = seconds, .data = data };
		if (pthread_create(&st[i].tid, NULL, stream_run, &st[i]) != 0)
			return -1;
	}
	for (unsigned i = 0; i < n; i++) {
		pthread_join(st[i].tid, NULL);
		ok = ok && st[i].ok;
		total += st[i].acked;
	}
	t = now_s() - t0;
	return ok && t > 0 ? (double)total / t : -1;
}

/* ---- the codecs ---------------------------------------------------------------------- */

struct codec_result {
	const char *name;
	double ratio;		/* wire bytes / normal page bytes */
	double compress;	/* input bytes/s on one thread (0: free) */
	double decompress;	/* output bytes/s on one thread (0: free) */
};

/* Compress and decompress the sample's normal pages in packets. */
static int codec_measure(const char *name, const uint8_t *pages, size_t bytes,
			 struct codec_result *res, mfd_error **errp)
{
	const mfd_compress_ops *ops = mfd_compress_find(name);
	void *sctx = NULL, *rctx = NULL;
	uint8_t *out = NULL, *back = NULL;
	double tc = 0, td = 0;
	uint64_t wire = 0;
	size_t cap;
	int r;

	res->name = name;
	if (!ops)
		return mfd_error_set(errp, MFD_EINVAL, "no codec '%s'", name);
	if (!strcmp(name, "none")) {
		*res = (struct codec_result){ .name = name, .ratio = 1.0 };
		return 0;
	}
	cap = ops->bound(PACKET_BYTES);
	out = malloc(cap);
	back = malloc(PACKET_BYTES);
	if (!out || !back) {
		r = mfd_error_set(errp, MFD_ENOMEM, "no memory to measure %s", name);
		goto done;
	}
	if ((r = ops->send_setup(&sctx, ops->level_default, errp)) < 0 ||
	    (r = ops->recv_setup(&rctx, errp)) < 0)
		goto done;
	for (size_t off = 0; off < bytes; off += PACKET_BYTES) {
		size_t in = bytes - off < PACKET_BYTES ? bytes - off : PACKET_BYTES, olen = 0;
		struct iovec iov = { .iov_base = back, .iov_len = in };
		double t = now_s();

		if ((r = ops->send_prepare(sctx, pages + off, in, out, cap, &olen, errp)) < 0)
			goto done;
		tc += now_s() - t;
		if (olen > in - in / 32) {
			wire += in;	/* sent raw */
			continue;
		}
		wire += olen;
		t = now_s();
		if ((r = ops->recv(rctx, out, olen, &iov, 1, errp)) < 0)
			goto done;
		td += now_s() - t;
	}
	res->ratio = bytes ? (double)wire / (double)bytes : 1.0;
	res->compress = tc > 0 ? (double)bytes / tc : 0;
	res->decompress = td > 0 ? (double)bytes / td : 0;
	r = 0;
done:
	if (sctx)
		ops->send_cleanup(sctx);
	if (rctx)
		ops->recv_cleanup(rctx);
	free(out);
	free(back);
	return r;
}

/* ---- the model ---------------------------------------------------------------------- */

struct candidate {
	unsigned channels;
	const struct codec_result *codec;
	double link;		/* wire bytes/s with this many streams */
	double rate;		/* guest bytes/s */
	double seconds;		/* estimated migration time; < 0: does not converge */
	const char *limit;	/* what bounds the rate */
};

static int cand_cmp(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;
	double tx = x->seconds < 0 ? 1e300 : x->seconds, ty = y->seconds < 0 ? 1e300 : y->seconds;

	if (tx != ty)
		return tx < ty ? -1 : 1;
	return x->channels < y->channels ? -1 : x->channels > y->channels;
}

static void model(struct candidate *c, double zero_frac, uint64_t size, double dirty,
		  unsigned cpus)
{
	unsigned threads = c->channels < cpus ? c->channels : cpus;
	double normal = 1.0 - zero_frac;
	/* Guest bytes/s each stage can take. */
	double wire = normal > 0 ? c->link / (normal * c->codec->ratio) : 1e300;
	double comp = c->codec->compress > 0 && normal > 0
		      ? c->codec->compress * threads / normal : 1e300;
	double dec = c->codec->decompress > 0 && normal > 0
		     ? c->codec->decompress * threads / normal : 1e300;

	c->rate = wire;
	c->limit = "link";
	if (comp < c->rate) {
		c->rate = comp;
		c->limit = "compress";
	}
	if (dec < c->rate) {
		c->rate = dec;
		c->limit = "decompress";
	}
	c->seconds = c->rate > dirty ? (double)size / (c->rate - dirty) : -1;
}

/* ---- the command -------------------------------------------------------------------- */

#define TUNE_SYNOPSIS \
	"usage: multifd tune --to tcp:HOST:PORT [--size SIZE | --image FILE]\n" \
	"                    [--max-channels N] [--seconds S] [--dirty-rate MIB] [--json]\n" \
	"       multifd tune --listen tcp:HOST:PORT\n"

static void tune_usage(FILE *f)
{
	fprintf(f, TUNE_SYNOPSIS
		"\n"
		"Recommend multifd-channels and multifd-compression for a link: measure it\n"
		"with 1, 2, 4 ... N parallel TCP streams against a 'multifd tune --listen'\n"
		"peer, measure every codec on a sample of the guest's memory, model the\n"
		"migration time of each pair and print them sorted, best first.\n"
		"\n"
		"  --to URI               the peer, tcp:HOST:PORT\n"
		"  --listen URI           be the peer: count what arrives (PORT 0 picks one;\n"
		"                         prints \"listening on URI\"), until Ctrl-C\n"
		"  --size SIZE            the synthetic guest to model (default 1024 MiB)\n"
		"  --image FILE           model this memory image instead\n"
		"  --max-channels N       the most channels to try, 1..64 (default 8)\n"
		"  --seconds S            how long each link measurement runs (default 1)\n"
		"  --dirty-rate MIB       the guest writes MIB MiB/s while it migrates\n"
		"  --json                 one JSON object instead of the table\n"
		"  -q, --quiet            no progress lines\n"
		"  -h, --help             this text\n");
}

struct tune_opts {
	const char *to, *listen, *image;
	uint64_t size, max_channels;
	double seconds, dirty;
	bool json, quiet;
};

static int tune_parse(int argc, char **argv, struct tune_opts *o)
{
	static const struct option opts[] = {
		{ "to", required_argument, NULL, 't' },
		{ "listen", required_argument, NULL, 'l' },
		{ "size", required_argument, NULL, 's' },
		{ "image", required_argument, NULL, 'i' },
		{ "max-channels", required_argument, NULL, 'c' },
		{ "seconds", required_argument, NULL, 'S' },
		{ "dirty-rate", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, SHORT_OPTIONS, opts, NULL)) != -1) {
		switch (c) {
		case 't': o->to = optarg; break;
		case 'l': o->listen = optarg; break;
		case 'i': o->image = optarg; break;
		case 'j': o->json = true; break;
		case 'q': o->quiet = true; break;
		case 'v': break;
		case 's':
			if (parse_guest_size("tune", optarg, &o->size) < 0)
				return EXIT_USAGE;
			break;
		case 'c':
			if (parse_u64("tune", "--max-channels", optarg, 1, MAX_STREAMS,
				      &o->max_channels) < 0)
				return EXIT_USAGE;
			break;
		case 'S':
			if (parse_double("tune", "--seconds", optarg, 0.05, 60, &o->seconds) < 0)
				return EXIT_USAGE;
			break;
		case 'd':
			if (parse_double("tune", "--dirty-rate", optarg, 0, 1e6, &o->dirty) < 0)
				return EXIT_USAGE;
			break;
		case 'h':
			tune_usage(stdout);
			return PARSE_HELP;
		default:
			return bad_option("tune", TUNE_SYNOPSIS, c, argv);
		}
	}
	if (optind != argc)
		return usage_error("tune", "unexpected argument '%s'", argv[optind]);
	if (!o->to == !o->listen)
		return usage_error("tune", "give exactly one of --to URI and --listen URI");
	return 0;
}

/* The sample: up to SAMPLE_MAX bytes of normal pages spread over the guest,
 * and the fraction of zero pages in all of it. */
static uint8_t *take_sample(const struct guest *g, size_t *bytes, double *zero_frac)
{
	uint64_t n = guest_pages(g), zero = 0, want = SAMPLE_MAX / GUEST_PAGE, taken = 0;
	uint64_t nonzero = 0;
	uint8_t *s;

	for (uint64_t p = 0; p < n; p++)
		zero += page_is_zero(g->ram + p * GUEST_PAGE);
	nonzero = n - zero;
	*zero_frac = n ? (double)zero / (double)n : 0;
	want = want < nonzero ? want : nonzero;
	s = malloc(want ? want * GUEST_PAGE : 1);
	if (!s)
		return NULL;
	/* Every k-th normal page, so the sample spans the whole guest. */
	for (uint64_t p = 0, seen = 0; p < n && taken < want; p++) {
		if (page_is_zero(g->ram + p * GUEST_PAGE))
			continue;
		if (seen++ % (nonzero / want ? nonzero / want : 1) == 0)
			memcpy(s + taken++ * GUEST_PAGE, g->ram + p * GUEST_PAGE, GUEST_PAGE);
	}
	*bytes = taken * GUEST_PAGE;
	return s;
}

/* The best, or one with fewer channels within 5% of its time. */
static const struct candidate *recommend(const struct candidate *cand, unsigned ncand)
{
	const struct candidate *best = &cand[0];

	for (unsigned i = 1; i < ncand && cand[0].seconds >= 0; i++)
		if (cand[i].seconds >= 0 && cand[i].seconds <= cand[0].seconds * 1.05 &&
		    cand[i].channels < best->channels)
			best = &cand[i];
	return best;
}

static void print_results(const struct tune_opts *o, const double *links, unsigned nlinks,
			  const struct codec_result *codecs, int ncodecs, struct candidate *cand,
			  unsigned ncand, double zero_frac, uint64_t size, unsigned cpus)
{
	const struct candidate *rec = recommend(cand, ncand);

	if (o->json) {
		printf("{\"size\":%" PRIu64 ",\"zero-fraction\":%.4f,\"cpus\":%u,\"dirty-rate\":%.1f,"
		       "\"link\":[", size, zero_frac, cpus, o->dirty);
		for (unsigned i = 0; i < nlinks; i++)
			printf("%s{\"streams\":%u,\"bytes-per-second\":%.0f}", i ? "," : "", 1u << i,
			       links[i]);
		printf("],\"codecs\":[");
		for (int i = 0; i < ncodecs; i++)
			printf("%s{\"name\":\"%s\",\"ratio\":%.4f,\"compress-bytes-per-second\":%.0f,"
			       "\"decompress-bytes-per-second\":%.0f}", i ? "," : "", codecs[i].name,
			       codecs[i].ratio, codecs[i].compress, codecs[i].decompress);
		printf("],\"candidates\":[");
		for (unsigned i = 0; i < ncand; i++)
			printf("%s{\"multifd-channels\":%u,\"multifd-compression\":\"%s\","
			       "\"guest-bytes-per-second\":%.0f,\"limit\":\"%s\",\"seconds\":%.3f}",
			       i ? "," : "", cand[i].channels, cand[i].codec->name, cand[i].rate,
			       cand[i].limit, cand[i].seconds);
		printf("],\"recommendation\":{\"multifd-channels\":%u,\"multifd-compression\":"
		       "\"%s\",\"seconds\":%.3f}}\n", rec->channels, rec->codec->name,
		       rec->seconds);
		return;
	}
	printf("link\n");
	for (unsigned i = 0; i < nlinks; i++)
		printf("  %2u stream%s %8.3f GiB/s\n", 1u << i, i ? "s" : " ", links[i] / GIB);
	printf("codecs (one thread, on a sample of the guest's normal pages; %.0f%% zero pages)\n",
	       zero_frac * 100);
	for (int i = 0; i < ncodecs; i++) {
		if (codecs[i].compress > 0)
			printf("  %-8s ratio %.3f  compress %7.3f GiB/s  decompress %7.3f GiB/s\n",
			       codecs[i].name, codecs[i].ratio, codecs[i].compress / GIB,
			       codecs[i].decompress / GIB);
		else
			printf("  %-8s ratio %.3f  (no CPU cost modelled)\n", codecs[i].name,
			       codecs[i].ratio);
	}
	printf("model (%" PRIu64 " MiB guest, %u CPUs, dirty rate %.1f MiB/s), best first\n",
	       size >> 20, cpus, o->dirty);
	printf("  %-8s %-8s %14s %-10s %10s\n", "channels", "codec", "guest GiB/s", "limit",
	       "time");
	for (unsigned i = 0; i < ncand; i++) {
		char t[32];

		if (cand[i].seconds < 0)
			snprintf(t, sizeof(t), "never");
		else
			snprintf(t, sizeof(t), "%.2f s", cand[i].seconds);
		printf("  %-8u %-8s %14.3f %-10s %10s\n", cand[i].channels, cand[i].codec->name,
		       cand[i].rate / GIB, cand[i].limit, t);
	}
	if (rec->seconds < 0)
		printf("recommendation: none converges at this dirty rate; use postcopy or "
		       "auto-converge\n");
	else
		printf("recommendation: --channels %u --compression %s (about %.2f s)\n",
		       rec->channels, rec->codec->name, rec->seconds);
}

static int tune_run(const struct tune_opts *o)
{
	const char *names[32];
	int ncodecs = mfd_compress_list(names, 32);
	struct codec_result codecs[32];
	struct candidate cand[32 * 8];
	double links[8], zero_frac = 0;
	unsigned nlinks = 0, ncand = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned cpus = ncpu > 0 ? (unsigned)ncpu : 1;
	struct addrinfo *ai = NULL;
	struct guest g = { 0 };
	mfd_error *err = NULL;
	uint8_t *sample = NULL, *chunk = NULL;
	size_t sample_len = 0;
	int r = EXIT_FAIL;

	ncodecs = ncodecs > 32 ? 32 : ncodecs;
	if (tune_resolve(o->to, false, &ai, &err) < 0)
		return report_error("tune", err);
	chunk = malloc(CHUNK);
	if (!chunk) {
		fprintf(stderr, "multifd tune: out of memory\n");
		goto out;
	}
	/* The link sees incompressible bytes: a compressing link would lie. */
	for (uint64_t i = 0, x = 0x9e3779b9; i < CHUNK; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		chunk[i] = (uint8_t)(x >> 56);
	}
	for (unsigned n = 1; n <= o->max_channels && nlinks < 8; n *= 2) {
		if (!o->quiet && !o->json)
			fprintf(stderr, "multifd tune: link, %u stream%s ...\n", n, n > 1 ? "s" : "");
		links[nlinks] = link_rate(ai, n, o->seconds, chunk);
		if (links[nlinks] < 0) {
			fprintf(stderr, "multifd tune: %s: the link measurement failed (is 'multifd "
				"tune --listen' running there?)\n", o->to);
			goto out;
		}
		nlinks++;
	}
	/* Then the guest, once the peer is known to be there. */
	if ((o->image ? guest_map_image(&g, o->image, &err) : guest_alloc(&g, o->size, &err)) < 0 ||
	    (!o->image && guest_fill(&g, 0x74756e6500000001ull, &err) < 0)) {
		r = report_error("tune", err);
		goto out;
	}
	sample = take_sample(&g, &sample_len, &zero_frac);
	if (!sample) {
		fprintf(stderr, "multifd tune: out of memory\n");
		goto out;
	}	for (int i = 0; i < ncodecs; i++) {
		if (!o->quiet && !o->json)
			fprintf(stderr, "multifd tune: codec %s ...\n", names[i]);
		if (codec_measure(names[i], sample, sample_len, &codecs[i], &err) < 0) {
			r = report_error("tune", err);
			goto out;
		}
	}
	for (unsigned l = 0; l < nlinks; l++)
		for (int k = 0; k < ncodecs; k++) {
			cand[ncand] = (struct candidate){ .channels = 1u << l, .codec = &codecs[k],
							  .link = links[l] };
			model(&cand[ncand], zero_frac, g.size, o->dirty * 1024 * 1024, cpus);
			ncand++;
		}
	qsort(cand, ncand, sizeof(cand[0]), cand_cmp);
	print_results(o, links, nlinks, codecs, ncodecs, cand, ncand, zero_frac, g.size, cpus);
	r = EXIT_OK;
out:
	free(sample);
	free(chunk);
	guest_free(&g);
	freeaddrinfo(ai);
	return r;
}

int cmd_tune(int argc, char **argv)
{
	struct tune_opts o = { .size = (uint64_t)1024 << 20, .max_channels = 8, .seconds = 1 };
	int r = tune_parse(argc, argv, &o);

	if (r != 0)
		return r == PARSE_HELP ? EXIT_OK : r;
	signals_setup();
	log_setup(o.quiet ? -1 : 0);
	return o.listen ? tune_listen(o.listen, o.quiet) : tune_run(&o);
}
