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
 *
 * With --plot FILE, gnuplot draws the model as a PNG chart as well.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "core/json.h"

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
	if ((r = ops->send_setup(ops->opaque, &sctx, ops->level_default, errp)) < 0 ||
	    (r = ops->recv_setup(ops->opaque, &rctx, errp)) < 0)
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

static void model(struct candidate *c, double zero_frac, double scan_rate, uint64_t size,
		  double dirty, unsigned cpus)
{
	unsigned threads = c->channels < cpus ? c->channels : cpus;
	double normal = 1.0 - zero_frac;
	/* Guest bytes/s each stage can take. */
	double wire = normal > 0 ? c->link / (normal * c->codec->ratio) : 1e300;
	double comp = c->codec->compress > 0 && normal > 0
		      ? c->codec->compress * threads / normal : 1e300;
	double dec = c->codec->decompress > 0 && normal > 0
		     ? c->codec->decompress * threads / normal : 1e300;

	/* Every page is scanned for zeroes on the source, one thread a channel. */
	double scan = scan_rate > 0 ? scan_rate * threads : 1e300;

	c->rate = wire;
	c->limit = "link";
	if (scan < c->rate) {
		c->rate = scan;
		c->limit = "zero scan";
	}
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
	"                    [--plot FILE]\n" \
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
		"  --plot FILE            also draw the model as a PNG chart in FILE: time and\n"
		"                         guest GiB/s per channel count, a line per codec, the\n"
		"                         recommendation marked (runs gnuplot; exit status 1,\n"
		"                         after the table, when it cannot)\n"
		"  -q, --quiet            no progress lines\n"
		"  -h, --help             this text\n");
}

struct tune_opts {
	const char *to, *listen, *image, *plot;
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
		{ "plot", required_argument, NULL, 'p' },
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
		case 'p': o->plot = optarg; break;
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
	if (o->plot && o->listen)
		return usage_error("tune", "--plot draws what --to measures; the --listen peer "
				   "has nothing to plot");
	if (o->plot && !*o->plot)
		return usage_error("tune", "--plot needs a file name");
	return 0;
}

/* The sample: up to SAMPLE_MAX bytes of normal pages spread over the guest,
 * the fraction of zero pages in all of it, and how fast one thread tells
 * zero pages apart (bytes/s of guest RAM): every page costs the source that
 * much, zero or not. */
static uint8_t *take_sample(const struct guest *g, size_t *bytes, double *zero_frac,
			    double *scan_rate)
{
	uint64_t n = guest_pages(g), zero = 0, want = SAMPLE_MAX / GUEST_PAGE, taken = 0;
	uint64_t nonzero = 0;
	double t0 = now_s(), t;
	uint8_t *s;

	for (uint64_t p = 0; p < n; p++)
		zero += page_is_zero(g->ram + p * GUEST_PAGE);
	t = now_s() - t0;
	*scan_rate = t > 0 ? (double)(n * GUEST_PAGE) / t : 0;
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

/* What was measured and modelled: what the table, the JSON and the chart show. */
struct tune_model {
	const double *links;	/* bytes/s with 1, 2, 4 ... streams */
	unsigned nlinks;
	const struct codec_result *codecs;
	int ncodecs;
	const struct candidate *cand;	/* best first */
	unsigned ncand;
	double zero_frac;
	double scan_rate;	/* one thread's zero-page scan, guest bytes/s */
	uint64_t size;
	unsigned cpus;
};

/* The model as one JSON object on standard output; -1 if out of memory. */
static int print_json(const struct tune_opts *o, const struct tune_model *m,
		       const struct candidate *rec)
{
	struct json_writer w;
	char *text;

	json_init(&w, JSON_COMPACT);
	json_begin_object(&w);
	json_key_u64(&w, "size", m->size);
	json_key_double(&w, "zero-fraction", m->zero_frac, 4);
	json_key_double(&w, "zero-scan-bytes-per-second", m->scan_rate, 0);
	json_key_u64(&w, "cpus", m->cpus);
	json_key_double(&w, "dirty-rate", o->dirty, 1);
	json_key(&w, "link");
	json_begin_array(&w);
	for (unsigned i = 0; i < m->nlinks; i++) {
		json_begin_object(&w);
		json_key_u64(&w, "streams", 1u << i);
		json_key_double(&w, "bytes-per-second", m->links[i], 0);
		json_end_object(&w);
	}
	json_end_array(&w);
	json_key(&w, "codecs");
	json_begin_array(&w);
	for (int i = 0; i < m->ncodecs; i++) {
		json_begin_object(&w);
		json_key_str(&w, "name", m->codecs[i].name);
		json_key_double(&w, "ratio", m->codecs[i].ratio, 4);
		json_key_double(&w, "compress-bytes-per-second", m->codecs[i].compress, 0);
		json_key_double(&w, "decompress-bytes-per-second", m->codecs[i].decompress, 0);
		json_end_object(&w);
	}
	json_end_array(&w);
	json_key(&w, "candidates");
	json_begin_array(&w);
	for (unsigned i = 0; i < m->ncand; i++) {
		json_begin_object(&w);
		json_key_u64(&w, "multifd-channels", m->cand[i].channels);
		json_key_str(&w, "multifd-compression", m->cand[i].codec->name);
		json_key_double(&w, "guest-bytes-per-second", m->cand[i].rate, 0);
		json_key_str(&w, "limit", m->cand[i].limit);
		json_key_double(&w, "seconds", m->cand[i].seconds, 3);
		json_end_object(&w);
	}
	json_end_array(&w);
	json_key(&w, "recommendation");
	json_begin_object(&w);
	json_key_u64(&w, "multifd-channels", rec->channels);
	json_key_str(&w, "multifd-compression", rec->codec->name);
	json_key_double(&w, "seconds", rec->seconds, 3);
	json_end_object(&w);
	json_end_object(&w);
	text = json_finish(&w);
	if (!text) {
		fprintf(stderr, "multifd tune: out of memory\n");
		return -1;
	}
	printf("%s\n", text);
	free(text);
	return 0;
}

/* The table, or the JSON; -1 if it could not be printed. */
static int print_results(const struct tune_opts *o, const struct tune_model *m)
{
	const struct codec_result *codecs = m->codecs;
	const struct candidate *cand = m->cand;
	const struct candidate *rec = recommend(cand, m->ncand);

	if (o->json)
		return print_json(o, m, rec);
	printf("link\n");
	for (unsigned i = 0; i < m->nlinks; i++)
		printf("  %2u stream%s %8.3f GiB/s\n", 1u << i, i ? "s" : " ", m->links[i] / GIB);
	printf("zero-page scan (one thread, every page of the guest) %7.3f GiB/s\n",
	       m->scan_rate / GIB);
	printf("codecs (one thread, on a sample of the guest's normal pages; %.0f%% zero pages)\n",
	       m->zero_frac * 100);
	for (int i = 0; i < m->ncodecs; i++) {
		if (codecs[i].compress > 0)
			printf("  %-8s ratio %.3f  compress %7.3f GiB/s  decompress %7.3f GiB/s\n",
			       codecs[i].name, codecs[i].ratio, codecs[i].compress / GIB,
			       codecs[i].decompress / GIB);
		else
			printf("  %-8s ratio %.3f  (no CPU cost modelled)\n", codecs[i].name,
			       codecs[i].ratio);
	}
	printf("model (%" PRIu64 " MiB guest, %u CPUs, dirty rate %.1f MiB/s), best first\n",
	       m->size >> 20, m->cpus, o->dirty);
	printf("  %-8s %-8s %14s %-10s %10s\n", "channels", "codec", "guest GiB/s", "limit",
	       "time");
	for (unsigned i = 0; i < m->ncand; i++) {
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
	return 0;
}

/* ---- the chart (--plot) ---------------------------------------------------------- */

/*
 * gnuplot draws it.  Its data and script go to a private temporary directory
 * and it runs there, so no path is ever quoted into the script; it writes the
 * PNG on its standard output into FILE.XXXXXX beside FILE, renamed over FILE
 * once complete: a failed run never leaves half a chart behind.
 */
struct plot {
	const char *path;	/* FILE */
	char tmp[4096];		/* FILE.XXXXXX until it is complete */
	int fd;			/* open on tmp, or -1 */
};

/* Create FILE.XXXXXX now, so that a path we cannot write fails before the
 * measurements rather than after them.  0, or -1 after saying why. */
static int plot_prepare(struct plot *p, const char *path)
{
	struct stat st;
	mode_t mask;

	*p = (struct plot){ .path = path, .fd = -1 };
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		fprintf(stderr, "multifd tune: --plot %s: exists and is not a regular file\n",
			path);
		return -1;
	}
	if (snprintf(p->tmp, sizeof(p->tmp), "%s.XXXXXX", path) >= (int)sizeof(p->tmp)) {
		fprintf(stderr, "multifd tune: --plot %s: the path is too long\n", path);
		return -1;
	}
	p->fd = mkostemp(p->tmp, O_CLOEXEC);
	if (p->fd < 0) {
		fprintf(stderr, "multifd tune: --plot %s: cannot create the chart there: %s\n",
			path, strerror(errno));
		return -1;
	}
	/* mkostemp() makes it 0600; the chart gets what a new file would get. */
	mask = umask(0);
	umask(mask);
	if (fchmod(p->fd, 0666 & ~mask) < 0) {
		fprintf(stderr, "multifd tune: --plot %s: %s\n", p->tmp, strerror(errno));
		return -1;
	}
	return 0;
}

/* Drop FILE.XXXXXX (after a failure, or when the chart was never drawn). */
static void plot_discard(struct plot *p)
{
	if (p->fd < 0)
		return;
	close(p->fd);
	unlink(p->tmp);
	p->fd = -1;
}

/* @s as a gnuplot single-quoted string: only the quote is special, doubled. */
static void gp_string(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputc('\'', f);
		if ((unsigned char)*s >= ' ')
			fputc(*s, f);
	}
	fputc('\'', f);
}

/* A data value, or NaN (a gap in its line) when there is none: the time of a
 * pair that never converges, the unbounded rate of a guest of zero pages. */
static void gp_value(FILE *f, double v, bool known)
{
	if (known)
		fprintf(f, " %.6g", v);
	else
		fputs(" NaN", f);
}

/*
 * tune.dat: block k (gnuplot's "index k") is codec k, a row per channel
 * count: channels, seconds, guest GiB/s.  Block ncodecs is the link: streams,
 * GiB/s.  Block ncodecs + 1 is the recommended pair, like a codec's rows.
 */
static void write_data(FILE *f, const struct tune_model *m, const struct candidate *rec)
{
	fprintf(f, "# multifd tune: channels, seconds, guest GiB/s per codec; then the link\n");
	for (int k = 0; k < m->ncodecs; k++) {
		fprintf(f, "# %s\n", m->codecs[k].name);
		/* By channel count: m->cand is sorted by time. */
		for (unsigned l = 0; l < m->nlinks; l++)
			for (unsigned i = 0; i < m->ncand; i++) {
				const struct candidate *c = &m->cand[i];

				if (c->codec != &m->codecs[k] || c->channels != 1u << l)
					continue;
				fprintf(f, "%u", c->channels);
				gp_value(f, c->seconds, c->seconds >= 0);
				gp_value(f, c->rate / GIB, c->rate < 1e300);
				fputc('\n', f);
			}
		fprintf(f, "\n\n");
	}
	fprintf(f, "# link\n");
	for (unsigned i = 0; i < m->nlinks; i++)
		fprintf(f, "%u %.6g\n", 1u << i, m->links[i] / GIB);
	fprintf(f, "\n\n# recommended\n%u", rec->channels);
	gp_value(f, rec->seconds, rec->seconds >= 0);
	gp_value(f, rec->rate / GIB, rec->rate < 1e300);
	fputc('\n', f);
}

/* One panel: a line per codec of column @col, the link when @link, the dirty
 * rate as a level when @dirty > 0, and the recommended pair when @mark. */
static void write_panel(FILE *f, const struct tune_model *m, int col, bool link, double dirty,
			bool mark)
{
	static const char next[] = ", \\\n     ";

	fprintf(f, "plot ");
	for (int k = 0; k < m->ncodecs; k++) {
		fprintf(f, "%s'tune.dat' index %d using 1:%d with linespoints lw 2 pt 7 title ",
			k ? next : "", k, col);
		gp_string(f, m->codecs[k].name);
	}
	if (link)
		fprintf(f, "%s'tune.dat' index %d using 1:2 with linespoints dt 2 lw 2 pt 4 "
			"lc rgb 'gray40' title 'link (wire bytes)'", next, m->ncodecs);
	if (dirty > 0)
		fprintf(f, "%s%.6g with lines dt 3 lw 2 lc rgb 'red' title 'dirty rate'", next,
			dirty);
	if (mark)
		fprintf(f, "%s'tune.dat' index %d using 1:%d with points pt 6 ps 4 lw 3 "
			"lc rgb 'black' title 'recommended'", next, m->ncodecs + 1, col);
	fputc('\n', f);
}

static void write_script(FILE *f, const struct tune_opts *o, const struct tune_model *m,
			 const struct candidate *rec)
{
	/* A panel needs one defined point or gnuplot fails: times exist when the
	 * best converges, rates unless every page is zero (then all converge). */
	bool times = rec->seconds >= 0, rates = m->zero_frac < 1;
	char line[1024];
	size_t n;

	fprintf(f, "# multifd tune --plot\n"
		"set datafile missing 'NaN'\n"
		"if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
		"\tset terminal pngcairo size %d,720 noenhanced font ',10'\n"
		"} else {\n"
		"\tset terminal png size %d,720 noenhanced\n"
		"}\n"
		"set output\n", times && rates ? 1600 : 900, times && rates ? 1600 : 900);

	/* The title: what was modelled, the link as measured, the verdict. */
	fprintf(f, "set multiplot layout 1,%d title ", times && rates ? 2 : 1);
	snprintf(line, sizeof(line), "multifd tune --to %s: %" PRIu64 " MiB guest, %.0f%% zero "
		 "pages, %u CPUs, dirty rate %.1f MiB/s", o->to, m->size >> 20,
		 m->zero_frac * 100, m->cpus, o->dirty);
	gp_string(f, line);
	n = (size_t)snprintf(line, sizeof(line), "link measured: %.3f GiB/s (1 stream)",
			     m->links[0] / GIB);
	for (unsigned i = 1; i < m->nlinks && n < sizeof(line); i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, ", %.3f (%u)",
				      m->links[i] / GIB, 1u << i);
	fprintf(f, ".\"\\n\".");
	gp_string(f, line);
	if (rec->seconds < 0)
		snprintf(line, sizeof(line), "no pair converges at this dirty rate: use postcopy "
			 "or auto-converge");
	else
		snprintf(line, sizeof(line), "recommended: %u channel%s, %s, about %.2f s",
			 rec->channels, rec->channels > 1 ? "s" : "", rec->codec->name,
			 rec->seconds);
	fprintf(f, ".\"\\n\".");
	gp_string(f, line);
	fprintf(f, " font ',12'\n");

	/* Channels double: a log2 axis spaces them evenly. */
	fprintf(f, "set logscale x 2\nset xrange [0.7:%g]\nset xtics (",
		(1u << (m->nlinks - 1)) * 1.4);
	for (unsigned i = 0; i < m->nlinks; i++)
		fprintf(f, "%s%u", i ? ", " : "", 1u << i);
	fprintf(f, ")\nset xlabel 'multifd-channels'\nset grid\nset yrange [0:*]\n"
		"set key outside right top vertical\n");
	if (times) {
		fprintf(f, "set title 'estimated migration time (lower is better)'\n"
			"set ylabel 'seconds'\n");
		write_panel(f, m, 2, false, 0, true);
	}
	if (rates) {
		fprintf(f, "set title 'guest RAM moved per second (higher is better)'\n"
			"set ylabel 'GiB/s'\n");
		write_panel(f, m, 3, true, o->dirty / 1024, times);
	}
	fprintf(f, "unset multiplot\n");
}

/* fopen(@path, "w"); NULL after saying why. */
static FILE *tmp_create(const char *path)
{
	FILE *f = fopen(path, "we");

	if (!f)
		fprintf(stderr, "multifd tune: --plot: cannot create %s: %s\n", path,
			strerror(errno));
	return f;
}

/* fclose() what tmp_create() opened, once written; 0, or -1 after saying why. */
static int tmp_close(FILE *f, const char *path)
{
	bool bad = ferror(f);

	if (fclose(f) == 0 && !bad)
		return 0;
	fprintf(stderr, "multifd tune: --plot: cannot write %s: %s\n", path, strerror(errno));
	return -1;
}

/* gnuplot's messages after a failure, indented (its caret lines stay aligned). */
static void show_messages(const char *path)
{
	FILE *f = fopen(path, "re");
	char buf[512];

	if (!f)
		return;
	for (unsigned n = 0; n < 40 && fgets(buf, sizeof(buf), f); n++)
		fprintf(stderr, "    %s%s", buf, strchr(buf, '\n') ? "" : "\n");
	fclose(f);
}

/*
 * gnuplot tune.gp in @dir: its standard output (the PNG) into @out_fd, its
 * messages into @errpath.  0, or -1 after saying why.  The child tells the
 * parent through a close-on-exec pipe when it could not exec, so a missing
 * gnuplot is told apart from a failing one.
 */
static int run_gnuplot(const char *dir, const char *errpath, int out_fd)
{
	static char gnuplot[] = "gnuplot", script[] = "tune.gp";
	char *argv[] = { gnuplot, script, NULL };
	int pfd[2], status, why[2] = { 0, 0 };	/* the step that failed, errno */
	ssize_t n;
	pid_t pid;

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		fprintf(stderr, "multifd tune: --plot: pipe: %s\n", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
		int err = open(errpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

		why[0] = 1;
		if (in >= 0 && err >= 0 && chdir(dir) == 0 && dup2(in, STDIN_FILENO) >= 0 &&
		    dup2(out_fd, STDOUT_FILENO) >= 0 && dup2(err, STDERR_FILENO) >= 0) {
			why[0] = 2;
			execvp(gnuplot, argv);
		}
		why[1] = errno;
		if (write(pfd[1], why, sizeof(why)) < 0)
			_exit(126);
		_exit(127);
	}
	close(pfd[1]);
	if (pid < 0) {
		close(pfd[0]);
		fprintf(stderr, "multifd tune: --plot: fork: %s\n", strerror(errno));
		return -1;
	}
	while ((n = read(pfd[0], why, sizeof(why))) < 0 && errno == EINTR)
		;
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			fprintf(stderr, "multifd tune: --plot: waitpid: %s\n", strerror(errno));
			return -1;
		}
	if (n == (ssize_t)sizeof(why)) {
		if (why[0] == 2 && why[1] == ENOENT)
			fprintf(stderr, "multifd tune: --plot: gnuplot is not installed (no "
				"'gnuplot' in PATH); install it (Debian: apt-get install "
				"gnuplot-nox) or leave out --plot\n");
		else
			fprintf(stderr, "multifd tune: --plot: cannot %s: %s\n",
				why[0] == 2 ? "run gnuplot" : "prepare gnuplot's files",
				strerror(why[1]));
		return -1;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (WIFEXITED(status))
		fprintf(stderr, "multifd tune: --plot: gnuplot failed with exit status %d:\n",
			WEXITSTATUS(status));
	else
		fprintf(stderr, "multifd tune: --plot: gnuplot was killed by signal %d:\n",
			WTERMSIG(status));
	show_messages(errpath);
	return -1;
}

/* Draw the chart into FILE.  0, or -1 after saying why; FILE.XXXXXX is then
 * left to plot_discard(), and FILE is untouched. */
static int plot_draw(struct plot *p, const struct tune_opts *o, const struct tune_model *m)
{
	static const uint8_t png_signature[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
	const struct candidate *rec = recommend(m->cand, m->ncand);
	const char *tmpdir = getenv("TMPDIR");
	char dir[4096], data[4200], script[4200], errpath[4200];
	uint8_t head[sizeof(png_signature)];
	FILE *f;
	int r = -1;

	if (!tmpdir || !*tmpdir)
		tmpdir = "/tmp";
	if (snprintf(dir, sizeof(dir), "%s/multifd-tune.XXXXXX", tmpdir) >= (int)sizeof(dir)) {
		fprintf(stderr, "multifd tune: --plot: TMPDIR %s: the path is too long\n", tmpdir);
		return -1;
	}
	if (!mkdtemp(dir)) {
		fprintf(stderr, "multifd tune: --plot: cannot make a temporary directory in %s: "
			"%s\n", tmpdir, strerror(errno));
		return -1;
	}
	snprintf(data, sizeof(data), "%s/tune.dat", dir);
	snprintf(script, sizeof(script), "%s/tune.gp", dir);
	snprintf(errpath, sizeof(errpath), "%s/gnuplot.err", dir);
	f = tmp_create(data);
	if (!f)
		goto out;
	write_data(f, m, rec);
	if (tmp_close(f, data) < 0)
		goto out;
	f = tmp_create(script);
	if (!f)
		goto out;
	write_script(f, o, m, rec);
	if (tmp_close(f, script) < 0 || run_gnuplot(dir, errpath, p->fd) < 0)
		goto out;
	/* Exit status 0 is not enough: a script that never drew leaves nothing. */
	if (pread(p->fd, head, sizeof(head), 0) != (ssize_t)sizeof(head) ||
	    memcmp(head, png_signature, sizeof(head))) {
		fprintf(stderr, "multifd tune: --plot: gnuplot exited 0 but wrote no PNG\n");
		show_messages(errpath);
		goto out;
	}
	if (rename(p->tmp, p->path) < 0) {
		fprintf(stderr, "multifd tune: --plot: cannot rename %s to %s: %s\n", p->tmp,
			p->path, strerror(errno));
		goto out;
	}
	close(p->fd);
	p->fd = -1;
	r = 0;
out:
	unlink(data);
	unlink(script);
	unlink(errpath);
	rmdir(dir);
	return r;
}

static int tune_run(const struct tune_opts *o)
{
	const char *names[32];
	int ncodecs = mfd_compress_list(names, 32);
	struct codec_result codecs[32];
	struct candidate cand[32 * 8];
	double links[8], zero_frac = 0, scan_rate = 0;
	unsigned nlinks = 0, ncand = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned cpus = ncpu > 0 ? (unsigned)ncpu : 1;
	struct addrinfo *ai = NULL;
	struct guest g = { 0 };
	struct plot plot = { .fd = -1 };
	struct tune_model m;
	mfd_error *err = NULL;
	uint8_t *sample = NULL, *chunk = NULL;
	size_t sample_len = 0;
	int r = EXIT_FAIL;

	ncodecs = ncodecs > 32 ? 32 : ncodecs;
	if (tune_resolve(o->to, false, &ai, &err) < 0)
		return report_error("tune", err);
	if (o->plot && plot_prepare(&plot, o->plot) < 0)
		goto out;
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
	sample = take_sample(&g, &sample_len, &zero_frac, &scan_rate);
	if (!sample) {
		fprintf(stderr, "multifd tune: out of memory\n");
		goto out;
	}
	for (int i = 0; i < ncodecs; i++) {
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
			model(&cand[ncand], zero_frac, scan_rate, g.size, o->dirty * 1024 * 1024,
			      cpus);
			ncand++;
		}
	qsort(cand, ncand, sizeof(cand[0]), cand_cmp);
	m = (struct tune_model){ .links = links, .nlinks = nlinks, .codecs = codecs,
				 .ncodecs = ncodecs, .cand = cand, .ncand = ncand, .scan_rate = scan_rate,
				 .zero_frac = zero_frac, .size = g.size, .cpus = cpus };
	r = print_results(o, &m) < 0 ? EXIT_FAIL : EXIT_OK;
	/* The table stands even when the chart fails. */
	fflush(stdout);
	if (o->plot) {
		if (!o->quiet && !o->json)
			fprintf(stderr, "multifd tune: drawing %s ...\n", o->plot);
		if (plot_draw(&plot, o, &m) < 0)
			r = EXIT_FAIL;
	}
out:
	plot_discard(&plot);
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
