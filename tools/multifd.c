/* SPDX-License-Identifier: MIT */
/*
 * multifd - command-line front end of libmultifd.
 *
 *   multifd demo [--size MIB] [--chunk KIB] [--file PATH] [-q]
 *   multifd --version | --help
 *
 * `demo` runs a source and a destination in one process, joined by a
 * socketpair (or through a file with --file): a synthetic guest of zero,
 * text-like and random pages is saved as a live "ram" section plus a
 * non-live "cpu" device, loaded on the other side, and compared byte for
 * byte.  Until the multifd channels land, RAM travels on the main stream.
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

#define PAGE_SIZE 4096u

static bool quiet;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the synthetic guest ---------------------------------------------------- */

struct guest {
	uint8_t *ram;
	size_t size;
	size_t chunk;		/* bytes per PART */
	size_t sent;		/* source progress */
	size_t received;	/* destination progress */
	uint64_t zero_pages, sent_bytes;
	double last_report;
	struct cpu_state {
		uint64_t regs[16];
		uint64_t rip, rflags;
	} cpu;
};

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: fast, deterministic content for the demo */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

/* Half zero pages, a quarter text-like, a quarter random, as MISSION §7 describes. */
static void guest_fill(struct guest *g, uint64_t seed)
{
	static const char words[] = "the quick brown fox jumps over the lazy dog migrate page ";
	uint64_t s = seed | 1;

	for (size_t p = 0; p < g->size / PAGE_SIZE; p++) {
		uint8_t *page = g->ram + p * PAGE_SIZE;
		uint64_t kind = rng_next(&s) % 4;

		if (kind < 2) {
			memset(page, 0, PAGE_SIZE);
		} else if (kind == 2) {
			size_t off = rng_next(&s) % (sizeof(words) - 1);

			for (size_t i = 0; i < PAGE_SIZE; i++)
				page[i] = (uint8_t)words[(off + i) % (sizeof(words) - 1)];
		} else {
			for (size_t i = 0; i < PAGE_SIZE; i += 8) {
				uint64_t v = rng_next(&s);

				memcpy(page + i, &v, 8);
			}
		}
	}
	for (int i = 0; i < 16; i++)
		g->cpu.regs[i] = rng_next(&s);
	g->cpu.rip = 0x7c00;
	g->cpu.rflags = 0x202;
}

static bool page_is_zero(const uint8_t *p)
{
	static const uint8_t zero[PAGE_SIZE];

	return memcmp(p, zero, PAGE_SIZE) == 0;
}

static void progress(struct guest *g, const char *side, size_t done, bool force)
{
	double t = now();

	/* A live line only on a terminal; logs get the summary alone. */
	if (quiet || !isatty(STDERR_FILENO) || (!force && t - g->last_report < 0.2))
		return;
	g->last_report = t;
	fprintf(stderr, "\r%s: %6.1f%% of %zu MiB loaded", side,
		100.0 * (double)done / (double)g->size, g->size >> 20);
	if (force)
		fputc('\n', stderr);
}

/*
 * The RAM section's payload: be32 page count, then per page be64 page index
 * and one byte kind (0 = zero, 1 = data followed by the page).
 */
static int ram_save_setup(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	g->sent = 0;
	mfd_stream_put_be64(s, g->size);
	return mfd_stream_put_be32(s, PAGE_SIZE);
}

static int ram_send(mfd_stream *s, struct guest *g, size_t limit)
{
	size_t end = g->sent + limit < g->size ? g->sent + limit : g->size;
	uint32_t pages = (uint32_t)((end - g->sent) / PAGE_SIZE);

	mfd_stream_put_be32(s, pages);
	for (; g->sent < end; g->sent += PAGE_SIZE) {
		const uint8_t *page = g->ram + g->sent;

		mfd_stream_put_be64(s, g->sent / PAGE_SIZE);
		if (page_is_zero(page)) {
			mfd_stream_put_u8(s, 0);
			g->zero_pages++;
		} else {
			mfd_stream_put_u8(s, 1);
			mfd_stream_put_buf_ref(s, page, PAGE_SIZE);
			g->sent_bytes += PAGE_SIZE;
		}
	}
	return mfd_stream_flush(s);
}

static int ram_iterate(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;
	int r = ram_send(s, g, g->chunk);

	(void)errp;
	return r < 0 ? r : g->sent == g->size;
}

static int ram_complete(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	return ram_send(s, g, g->size);
}

static void ram_pending(void *opaque, uint64_t *must, uint64_t *can)
{
	struct guest *g = opaque;

	*must = g->size - g->sent;
	*can = 0;
}

static int ram_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct guest *g = opaque;
	uint32_t pages, page_size;
	uint64_t size;
	int r;

	(void)version_id;
	if (g->received == 0 && g->size == 0) {
		/* START: the layout. */
		if ((r = mfd_stream_get_be64(s, &size)) < 0 ||
		    (r = mfd_stream_get_be32(s, &page_size)) < 0)
			return r;
		if (page_size != PAGE_SIZE || size % PAGE_SIZE || size > ((uint64_t)64 << 30))
			return mfd_error_set(errp, MFD_EPROTO,
					     "guest of %" PRIu64 " bytes in %u-byte pages is not "
					     "loadable here", size, page_size);
		g->ram = calloc(1, size ? size : 1);
		if (!g->ram)
			return mfd_error_set(errp, MFD_ENOMEM, "no memory for a %" PRIu64
					     "-byte guest", size);
		g->size = size;
		return 0;
	}
	if ((r = mfd_stream_get_be32(s, &pages)) < 0)
		return r;
	for (uint32_t i = 0; i < pages; i++) {
		uint64_t index;
		uint8_t kind;

		if ((r = mfd_stream_get_be64(s, &index)) < 0 || (r = mfd_stream_get_u8(s, &kind)) < 0)
			return r;
		if (index >= g->size / PAGE_SIZE || kind > 1)
			return mfd_error_set(errp, MFD_EPROTO, "page %" PRIu64 " kind %u is invalid",
					     index, kind);
		if (kind == 0)
			memset(g->ram + index * PAGE_SIZE, 0, PAGE_SIZE);
		else if ((r = mfd_stream_get_buf(s, g->ram + index * PAGE_SIZE, PAGE_SIZE)) < 0)
			return r;
		g->received += PAGE_SIZE;
	}
	progress(g, "destination", g->received, false);
	return 0;
}

static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct guest *g = opaque;

	(void)errp;
	for (int i = 0; i < 16; i++)
		mfd_stream_put_be64(s, g->cpu.regs[i]);
	mfd_stream_put_be64(s, g->cpu.rip);
	return mfd_stream_put_be64(s, g->cpu.rflags);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct guest *g = opaque;
	int r = 0;

	(void)version_id;
	(void)errp;
	for (int i = 0; i < 16 && r == 0; i++)
		r = mfd_stream_get_be64(s, &g->cpu.regs[i]);
	if (r == 0)
		r = mfd_stream_get_be64(s, &g->cpu.rip);
	if (r == 0)
		r = mfd_stream_get_be64(s, &g->cpu.rflags);
	return r;
}

static const mfd_save_handlers ram_ops = {
	.abi_version = MFD_SAVE_HANDLERS_ABI,
	.save_setup = ram_save_setup,
	.save_live_iterate = ram_iterate,
	.save_live_complete_precopy = ram_complete,
	.state_pending_estimate = ram_pending,
	.state_pending_exact = ram_pending,
	.load_state = ram_load,
};

static const mfd_save_handlers cpu_ops = {
	.abi_version = MFD_SAVE_HANDLERS_ABI,
	.save_state = cpu_save,
	.load_state = cpu_load,
};

static int side_new(mfd_migration **m, struct guest *g, mfd_error **errp)
{
	int r = mfd_migration_new(m, errp);

	if (r == 0)
		r = mfd_migration_set_identity(*m, "multifd-demo-1", errp);
	if (r == 0)
		r = mfd_register_live(*m, "ram", 0, 1, &ram_ops, g, errp);
	if (r == 0)
		r = mfd_register_live(*m, "cpu", 0, 1, &cpu_ops, g, errp);
	return r;
}

struct source_job {
	mfd_migration *m;
	mfd_channel *ch;
	int result;
	mfd_error *err;
};

static void *source_thread(void *arg)
{
	struct source_job *job = arg;

	job->result = mfd_savevm(job->m, job->ch, &job->err);
	/* Tell the destination there is nothing more, whatever happened. */
	mfd_channel_shutdown(job->ch);
	return NULL;
}

static void demo_usage(FILE *f)
{
	fprintf(f,
		"usage: multifd demo [--size MIB] [--chunk KIB] [--file PATH] [-q]\n"
		"\n"
		"Saves a synthetic guest (half zero, a quarter text, a quarter random\n"
		"pages) as a live RAM section plus a CPU device, loads it on the other\n"
		"side of a socketpair (or through PATH), and verifies it byte for byte.\n"
		"\n"
		"  --size MIB    guest RAM size in MiB (default 256)\n"
		"  --chunk KIB   RAM bytes per iteration, in KiB (default 8192)\n"
		"  --file PATH   save to PATH, then load from it, instead of a socketpair\n"
		"  -q, --quiet   no progress line\n");
}

static int parse_size(const char *arg, const char *what, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || v == 0 || v > max) {
		fprintf(stderr, "multifd demo: %s '%s' is not a number from 1 to %" PRIu64 "\n",
			what, arg, max);
		return -1;
	}
	*out = v;
	return 0;
}

static int cmd_demo(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "chunk", required_argument, NULL, 'c' },
		{ "file", required_argument, NULL, 'f' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t size_mib = 256, chunk_kib = 8192;
	const char *file = NULL;
	struct guest src = { 0 }, dst = { 0 };
	mfd_migration *msrc = NULL, *mdst = NULL;
	mfd_channel *a = NULL, *b = NULL;
	mfd_error *err = NULL;
	struct source_job job = { 0 };
	pthread_t t;
	double t0, t1;
	int c, r, status = 1;

	while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (parse_size(optarg, "--size", 65536, &size_mib) < 0)
				return 2;
			break;
		case 'c':
			if (parse_size(optarg, "--chunk", 1 << 20, &chunk_kib) < 0)
				return 2;
			break;
		case 'f':
			file = optarg;
			break;
		case 'q':
			quiet = true;
			break;
		case 'h':
			demo_usage(stdout);
			return 0;
		default:
			demo_usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "multifd demo: unexpected argument '%s'\n", argv[optind]);
		demo_usage(stderr);
		return 2;
	}
	src.size = (size_t)size_mib << 20;
	src.chunk = (size_t)chunk_kib << 10;
	src.chunk -= src.chunk % PAGE_SIZE;
	if (src.chunk == 0)
		src.chunk = PAGE_SIZE;
	src.ram = malloc(src.size);
	if (!src.ram) {
		fprintf(stderr, "multifd demo: cannot allocate %" PRIu64 " MiB\n", size_mib);
		return 1;
	}
	guest_fill(&src, 0x6d756c7469666400ull);
	if (side_new(&msrc, &src, &err) < 0 || side_new(&mdst, &dst, &err) < 0)
		goto out;

	printf("libmultifd %s demo: %" PRIu64 " MiB guest, %zu KiB per iteration, %s\n",
	       mfd_version_string(), size_mib, src.chunk >> 10,
	       file ? "through a file" : "over a socketpair");
	t0 = now();
	if (file) {
		if (mfd_channel_open_file(file, MFD_CHANNEL_WRITE, &a, &err) < 0 ||
		    mfd_savevm(msrc, a, &err) < 0)
			goto out;
		mfd_channel_free(a);
		a = NULL;
		if (mfd_channel_open_file(file, MFD_CHANNEL_READ, &b, &err) < 0 ||
		    mfd_loadvm(mdst, b, &err) < 0)
			goto out;
	} else {
		if (mfd_channel_socketpair(&a, &b, &err) < 0)
			goto out;
		job.m = msrc;
		job.ch = a;
		if (pthread_create(&t, NULL, source_thread, &job) != 0) {
			fprintf(stderr, "multifd demo: cannot start the source thread\n");
			goto out;
		}
		r = mfd_loadvm(mdst, b, &err);
		if (r < 0)
			mfd_channel_shutdown(b);	/* unblock a source stuck writing */
		pthread_join(t, NULL);
		if (job.result < 0) {
			mfd_error_free(err);
			err = job.err;
			job.err = NULL;
			goto out;
		}
		if (r < 0)
			goto out;
	}
	t1 = now();
	progress(&dst, "destination", dst.received, true);

	if (dst.size != src.size || memcmp(dst.ram, src.ram, src.size) != 0 ||
	    memcmp(&dst.cpu, &src.cpu, sizeof(src.cpu)) != 0) {
		size_t first = 0;

		while (first < src.size && dst.size == src.size && dst.ram[first] == src.ram[first])
			first++;
		fprintf(stderr, "multifd demo: VERIFY FAILED: destination differs from source "
				"(first differing byte %zu)\n", first);
		goto out;
	}
	printf("migrated %" PRIu64 " MiB in %.3f s: %.2f GiB/s of guest RAM; %" PRIu64
	       " zero pages (%.0f%%), %.1f MiB of page data\n",
	       size_mib, t1 - t0, (double)src.size / (t1 - t0) / (1 << 30), src.zero_pages,
	       100.0 * (double)src.zero_pages / (double)(src.size / PAGE_SIZE),
	       (double)src.sent_bytes / (1 << 20));
	printf("verified: destination RAM and CPU state are identical to the source\n");
	status = 0;
out:
	if (err) {
		fprintf(stderr, "multifd demo: %s (%s)\n", mfd_error_message(err),
			mfd_strerror(mfd_error_code(err)));
		mfd_error_free(err);
	}
	mfd_error_free(job.err);
	mfd_channel_free(a);
	mfd_channel_free(b);
	mfd_migration_free(msrc);
	mfd_migration_free(mdst);
	free(src.ram);
	free(dst.ram);
	if (file)
		unlink(file);
	return status;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: multifd COMMAND [OPTIONS]\n"
		"\n"
		"Commands:\n"
		"  demo       migrate a synthetic guest in-process and verify it\n"
		"  version    print the library version\n"
		"  help       this text\n"
		"\n"
		"Run 'multifd COMMAND --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "demo"))
		return cmd_demo(argc - 1, argv + 1);
	if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
		printf("multifd %s (library %s)\n", MFD_VERSION_STRING, mfd_version_string());
		return 0;
	}
	if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "multifd: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
