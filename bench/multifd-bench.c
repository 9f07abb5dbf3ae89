/* SPDX-License-Identifier: MIT */
/*
 * multifd-bench: GiB/s of guest RAM moved by multifd channels over loopback
 * TCP, and the limits to compare with, measured in the same process.
 *
 *   multifd-bench [--mib M] [--pages random|zero|mixed] [--channels N]
 *                 [--codec none|zlib|zstd|lz4] [--json]
 *   multifd-bench --limits [--mib M] [--json]
 *   (either with --image FILE: the first M MiB of FILE instead of generated
 *   pages, so that figures are measured on the bench data make bench uses)
 *
 * A run: a source image of M MiB is filled, a destination image of the same
 * size is prefaulted (so the figure is not capped by first-touch page faults,
 * ~1 GiB/s per thread here), N TCP connections on 127.0.0.1 are gathered,
 * every page is queued once, the sender finishes, the receiver finishes.
 * The time covers queueing to the last page placed, plus a verification
 * that is not timed.
 *
 * --limits prints memcpy bandwidth, first-touch bandwidth (writing fresh
 * anonymous memory: page faults and zeroing, what a destination that does
 * not prefault pays; also with MADV_HUGEPAGE) and each codec's single-thread compress and decompress
 * speed on mixed 512 KiB packets.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/migration.h"
#include "core/util.h"
#include "multifd/internal.h"

#define PS 4096u

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* random: every page random; zero: all zero; mixed: half zero, a quarter
 * text-like, a quarter random (MISSION §7's bench data). */
static void fill(uint8_t *ram, size_t size, const char *kind)
{
	static const char text[] = "the quick brown fox jumps over the lazy dog; migration ";
	uint64_t s = 0x9e3779b97f4a7c15ull;

	for (size_t p = 0; p < size / PS; p++) {
		uint8_t *pg = ram + p * PS;
		unsigned k = strcmp(kind, "random") == 0 ? 3 : strcmp(kind, "zero") == 0 ? 0
											 : (unsigned)(rng(&s) % 4);

		if (k < 2) {
			memset(pg, 0, PS);
		} else if (k == 2) {
			size_t o = rng(&s) % (sizeof(text) - 1);

			for (size_t i = 0; i < PS; i++)
				pg[i] = (uint8_t)text[(o + i) % (sizeof(text) - 1)];
		} else {
			for (size_t i = 0; i < PS; i += 8) {
				uint64_t v = rng(&s);

				memcpy(pg + i, &v, 8);
			}
		}
	}
}

/* The image the pages come from (--image), or NULL for generated pages. */
static const char *image_path;

/* Fill from the image file: exactly SIZE bytes of it, or fail. */
static void fill_from_image(uint8_t *ram, size_t size)
{
	int fd = open(image_path, O_RDONLY | O_CLOEXEC);
	size_t done = 0;

	if (fd < 0) {
		fprintf(stderr, "multifd-bench: %s: %s\n", image_path, strerror(errno));
		exit(1);
	}
	while (done < size) {
		ssize_t n = read(fd, ram + done, size - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "multifd-bench: %s: shorter than %zu MiB\n", image_path,
				size >> 20);
			exit(1);
		}
		done += (size_t)n;
	}
	close(fd);
}

static void fill_pages(uint8_t *ram, size_t size, const char *kind)
{
	if (image_path)
		fill_from_image(ram, size);
	else
		fill(ram, size, kind);
}

static void *map(size_t size, bool populate)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	/* Guest RAM as QEMU and the tools map it: transparent huge pages,
	 * advised before any page exists (on this machine class 4 KiB pages
	 * made the "data path alone" slower than the whole engine). */
	(void)madvise(p, size, MADV_HUGEPAGE);
	/* Prefaulted: every page written once (MAP_POPULATE alone still left
	 * a slow first write under some hypervisors, and came before the
	 * advice). */
	if (populate)
		for (size_t off = 0; off < size; off += 4096)
			((volatile uint8_t *)p)[off] = 0;
	return p;
}

struct source {
	struct mfd_multifd_send *send;
	size_t pages;
	int result;
	mfd_error *err;
};

static void *source_thread(void *arg)
{
	struct source *src = arg;

	for (size_t p = 0; p < src->pages && src->result == 0; p++)
		src->result = multifd_queue_page(src->send, 0, (uint64_t)p * PS, &src->err);
	if (src->result == 0)
		src->result = multifd_send_finish(src->send, &src->err);
	return NULL;
}

struct connector {
	const char *uri;
	unsigned n;
	mfd_channel **out;
	int result;
	mfd_error *err;
};

static void *connect_thread(void *arg)
{
	struct connector *c = arg;

	for (unsigned i = 0; i < c->n && c->result == 0; i++)
		c->result = mfd_channel_connect(c->uri, 10000, &c->out[i], &c->err);
	return NULL;
}

static int run(size_t mib, const char *pages, unsigned channels, const char *codec, bool json)
{
	size_t size = mib << 20;
	uint8_t *sram = map(size, false), *dram = map(size, true);
	struct mfd_multifd_config cfg;
	mfd_migration *msrc = NULL, *mdst = NULL;
	mfd_listener *l = NULL;
	mfd_channel *out[256] = { 0 }, *in[256] = { 0 };
	struct mfd_multifd_recv *recv = NULL;
	struct source src = { 0 };
	struct connector con = { 0 };
	struct mfd_multifd_stats st;
	mfd_error *err = NULL;
	pthread_t tc, ts;
	double t0, t1;
	uint64_t wire = 0;
	int r;

	fill_pages(sram, size, pages);
	if ((r = multifd_config_init(&cfg, &err)) < 0)
		goto out;
	cfg.channels = channels;
	if (strcmp(codec, "none") != 0) {
		cfg.codec = mfd_compress_find(codec);
		if (!cfg.codec) {
			r = mfd_error_set(&err, MFD_ENOTSUP, "codec '%s' is not built in", codec);
			goto out;
		}
		cfg.level = cfg.codec->level_default;
	}
	if ((r = mfd_migration_new(&msrc, &err)) < 0 || (r = mfd_migration_new(&mdst, &err)) < 0 ||
	    (r = mfd_ram_block_add(msrc, "ram", sram, size, PS, &err)) < 0 ||
	    (r = mfd_ram_block_register(mdst, &(struct mfd_ram_block_desc){
			.size = sizeof(struct mfd_ram_block_desc), .flags = MFD_RAM_FRESH,
			.name = "ram", .host = dram, .length = size, .page_size = PS,
			.fd = -1 }, &err)) < 0 ||
	    (r = mfd_listener_new("tcp:127.0.0.1:0", &l, &err)) < 0 ||
	    /* As the engine does by default (dest-ram-zeroed). */
	    (r = ram_recvmap_alloc(mdst->blocks, mdst->nblocks, &err)) < 0 ||
	    (r = multifd_recv_new(&cfg, mdst->blocks, mdst->nblocks, &recv, &err)) < 0)
		goto out;
	con = (struct connector){ .uri = mfd_listener_uri(l), .n = channels, .out = out };
	pthread_create(&tc, NULL, connect_thread, &con);
	r = mfd_listener_gather(l, channels, 10000, NULL, NULL, in, &err);
	pthread_join(tc, NULL);
	if (r == 0 && con.result < 0) {
		r = con.result;
		err = con.err;
		con.err = NULL;
	}
	if (r < 0)
		goto out;
	t0 = now();
	if ((r = multifd_send_new(&cfg, msrc->blocks, msrc->nblocks, out, &src.send, &err)) < 0)
		goto out;
	for (unsigned i = 0; i < channels && r >= 0; i++)
		r = multifd_recv_identify(in[i], recv, &err);
	if (r < 0 || (r = multifd_recv_start(recv, &err)) < 0)
		goto out;
	src.pages = size / PS;
	pthread_create(&ts, NULL, source_thread, &src);
	r = multifd_recv_finish(recv, &err);
	if (r < 0)
		multifd_send_cancel(src.send);
	pthread_join(ts, NULL);
	t1 = now();
	if (r == 0 && src.result < 0) {
		r = src.result;
		err = src.err;
		src.err = NULL;
	}
	if (r < 0)
		goto out;
	if (memcmp(sram, dram, size) != 0) {
		r = mfd_error_set(&err, MFD_EPROTO, "destination differs from the source");
		goto out;
	}
	multifd_send_stats(src.send, &st);
	for (unsigned i = 0; i < channels; i++)
		wire += st.ch[i].wire_bytes;
	double gibs = (double)size / (t1 - t0) / (1 << 30);

	if (json)
		printf("{\"pages\": \"%s\", \"channels\": %u, \"codec\": \"%s\", \"mib\": %zu, "
		       "\"seconds\": %.3f, \"gib_per_s\": %.3f, \"wire_ratio\": %.3f}\n",
		       pages, channels, codec, mib, t1 - t0, gibs, (double)wire / (double)size);
	else
		printf("multifd-bench: %s pages, %u channel(s), %s: %zu MiB in %.3f s = %.2f GiB/s "
		       "(wire %.1f%% of RAM)\n", pages, channels, codec, mib, t1 - t0, gibs,
		       100.0 * (double)wire / (double)size);
out:
	if (err) {
		fprintf(stderr, "multifd-bench: %s\n", mfd_error_message(err));
		mfd_error_free(err);
	}
	mfd_error_free(src.err);
	mfd_error_free(con.err);
	multifd_send_free(src.send);
	multifd_recv_free(recv);
	if (mdst)
		ram_recvmap_free(mdst->blocks, mdst->nblocks);
	for (unsigned i = 0; i < channels; i++) {
		mfd_channel_free(out[i]);
		mfd_channel_free(in[i]);
	}
	mfd_listener_free(l);
	mfd_migration_free(msrc);
	mfd_migration_free(mdst);
	munmap(sram, size);
	munmap(dram, size);
	return r < 0 ? 1 : 0;
}

/*
 * memcpy bandwidth, and each codec's single-thread speed on the mixed data
 * as multifd feeds it: per 512 KiB packet, the zero pages are left out and
 * the normal ones compressed together.  Speeds are in bytes of guest RAM per
 * second, so they compare directly with the migration figures.
 */
static int limits(size_t mib, bool json)
{
	size_t size = mib << 20, pkt = 512u << 10, npk = size / pkt;
	uint8_t *a = map(size, true), *b = map(size, true), *packed = map(size, true);
	size_t *plen = calloc(npk, sizeof(size_t));
	static const char *const names[] = { "zlib", "zstd", "lz4" };
	double t0, t1;
	const char *sep = "";

	fill_pages(a, size, "mixed");
	memcpy(b, a, size);	/* warm */
	t0 = now();
	for (int rep = 0; rep < 4; rep++)
		memcpy(b, a, size);
	t1 = now();
	double memcpy_gibs = 4.0 * (double)size / (t1 - t0) / (1 << 30);

	/* First touch: one write per page of fresh memory (fault + zeroing),
	 * with 4 KiB pages and with transparent huge pages asked for; best of
	 * two fresh mappings each (the first may also pay the host's faults
	 * when this machine is itself a VM). */
	double touch_gibs = 0, touch_thp_gibs = 0;

	for (int rep = 0; rep < 4; rep++) {
		uint8_t *fresh = map(size, false);
		double g;

		if (rep >= 2)
			madvise(fresh, size, MADV_HUGEPAGE);
		t0 = now();
		for (size_t p = 0; p < size; p += PS)
			fresh[p] = 1;
		t1 = now();
		g = (double)size / (t1 - t0) / (1 << 30);
		if (rep < 2 && g > touch_gibs)
			touch_gibs = g;
		if (rep >= 2 && g > touch_thp_gibs)
			touch_thp_gibs = g;
		munmap(fresh, size);
	}

	/* Packet i's normal pages, packed at packed + i * pkt. */
	for (size_t i = 0; i < npk; i++)
		for (size_t p = 0; p < pkt / PS; p++) {
			const uint8_t *pg = a + i * pkt + p * PS;

			if (!util_page_is_zero(pg, PS)) {
				memcpy(packed + i * pkt + plen[i], pg, PS);
				plen[i] += PS;
			}
		}
	if (json)
		printf("{\"memcpy_gib_per_s\": %.3f, \"first_touch_gib_per_s\": %.3f, "
		       "\"first_touch_thp_gib_per_s\": %.3f, \"codecs\": [", memcpy_gibs,
		       touch_gibs, touch_thp_gibs);
	else
		printf("limits: memcpy %.2f GiB/s, first touch %.2f GiB/s (%.2f with "
		       "MADV_HUGEPAGE) (one thread)\n", memcpy_gibs, touch_gibs, touch_thp_gibs);
	for (size_t k = 0; k < 3; k++) {
		const mfd_compress_ops *c = mfd_compress_find(names[k]);
		void *cctx = NULL, *dctx = NULL;
		size_t cap = c ? c->bound(pkt) : 0, total_c = 0, total_in = 0;
		uint8_t *cbuf;
		size_t *lens;

		if (!c)
			continue;
		cbuf = malloc(cap * npk);
		lens = malloc(sizeof(size_t) * npk);
		if (c->send_setup(c->opaque, &cctx, c->level_default, NULL) < 0 ||
		    c->recv_setup(c->opaque, &dctx, NULL) < 0)
			return 1;
		t0 = now();
		for (size_t i = 0; i < npk; i++) {
			if (plen[i] && c->send_prepare(cctx, packed + i * pkt, plen[i], cbuf + i * cap,
						       cap, &lens[i], NULL) < 0)
				return 1;
			total_c += plen[i] ? lens[i] : 0;
			total_in += plen[i];
		}
		t1 = now();
		double comp = (double)size / (t1 - t0) / (1 << 30);

		t0 = now();
		for (size_t i = 0; i < npk; i++) {
			struct iovec iov = { b + i * pkt, plen[i] };

			if (plen[i] && c->recv(dctx, cbuf + i * cap, lens[i], &iov, 1, NULL) < 0)
				return 1;
		}
		t1 = now();
		double dec = (double)size / (t1 - t0) / (1 << 30);

		for (size_t i = 0; i < npk; i++)
			if (memcmp(b + i * pkt, packed + i * pkt, plen[i]) != 0) {
				fprintf(stderr, "limits: %s round trip differs\n", c->name);
				return 1;
			}
		if (json)
			printf("%s{\"codec\": \"%s\", \"level\": %d, \"compress_gib_per_s\": %.3f, "
			       "\"decompress_gib_per_s\": %.3f, \"ratio\": %.3f}", sep, c->name,
			       c->level_default, comp, dec, (double)total_c / (double)total_in);
		else
			printf("limits: %-4s level %d: compress %.2f GiB/s, decompress %.2f GiB/s of "
			       "guest RAM, ratio %.3f on the normal pages (one thread)\n", c->name,
			       c->level_default, comp, dec, (double)total_c / (double)total_in);
		sep = ", ";
		c->send_cleanup(cctx);
		c->recv_cleanup(dctx);
		free(cbuf);
		free(lens);
	}
	if (json)
		printf("]}\n");
	free(plen);
	munmap(a, size);
	munmap(b, size);
	munmap(packed, size);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "pages", required_argument, NULL, 'p' },
		{ "channels", required_argument, NULL, 'c' },
		{ "codec", required_argument, NULL, 'z' },
		{ "limits", no_argument, NULL, 'l' },
		{ "image", required_argument, NULL, 'i' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	size_t mib = 1024;
	const char *pages = "mixed", *codec = "none";
	unsigned channels = 2;
	bool json = false, lim = false;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': mib = strtoul(optarg, NULL, 10); break;
		case 'p': pages = optarg; break;
		case 'c': channels = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'z': codec = optarg; break;
		case 'l': lim = true; break;
		case 'i': image_path = optarg; break;
		case 'j': json = true; break;
		default:
			fprintf(c == 'h' ? stdout : stderr,
				"usage: multifd-bench [--mib M] [--pages random|zero|mixed] "
				"[--channels N] [--codec NAME] [--image FILE] [--json] | --limits\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (mib < 1 || channels < 1 || channels > 255 ||
	    (strcmp(pages, "random") && strcmp(pages, "zero") && strcmp(pages, "mixed"))) {
		fprintf(stderr, "multifd-bench: bad --mib, --channels or --pages\n");
		return 2;
	}
	return lim ? limits(mib, json) : run(mib, pages, channels, codec, json);
}
