/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the multifd receiver (multifd/recv.c) and the codecs'
 * decoders behind it (compress/).
 *
 * Input: byte 0 picks the codec (0 none, 1 zlib, 2 zstd, 3 lz4; the low two
 * bits) and how many markers the main stream has (the high six bits: 0 for
 * one per SYNC, k for k - 1), the rest is what one channel carries on the
 * wire: the 128-byte hello, then packets.  It is fed through a memory reader
 * channel to the real receiver: multifd_recv_identify() checks the
 * hello, then multifd_recv_start() runs the channel thread, and this
 * thread plays the main-stream loader, releasing the channel with
 * multifd_recv_sync() until the channel ends (END packet, end of data or
 * a refusal) or the markers run out, then ends the load with
 * multifd_recv_finish().  So a SYNC the main stream never matches is
 * reachable.  Every run is bounded: the reader ends at the input's end, and a
 * channel parked at an unmatched SYNC fails at the finish.
 *
 * Guest RAM, fixed: "ram" 64 pages and "rom" 8 pages of 4 KiB, "huge" one
 * 2 MiB page; each mapping has PROT_NONE guard pages on both sides, so a
 * stray write faults even where ASan does not look (guest RAM is mmap'ed,
 * not malloc'ed).  Packets hold 64 KiB (16 small pages, or one huge page).
 *
 * Invariants beyond the sanitizers: every failure is a code of enum
 * mfd_errcode with a message, a channel that ended cleanly leaves no error
 * behind, and a load that finished cleanly had every SYNC matched.
 *
 * MFD_FUZZ_SEEDS=DIR ./fuzz_multifd_recv writes, for each codec, streams made
 * by the real sender (mfd_multifd_send_*) into DIR and exits.
 * MFD_FUZZ_VERBOSE=1 prints each input's result.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/channel.h"
#include "core/migration.h"
#include "multifd/internal.h"

#define SMALL 4096u
#define HUGE (2u << 20)
#define PACKET_BYTES (64u << 10)
#define NBLOCKS 3

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const codec_names[4] = { "none", "zlib", "zstd", "lz4" };

static const struct {
	const char *name;
	uint64_t size, page;
} layout[NBLOCKS] = {
	{ "ram", 64 * SMALL, SMALL },
	{ "rom", 8 * SMALL, SMALL },
	{ "huge", HUGE, HUGE },
};

struct side {
	mfd_migration *m;
	uint8_t *host[NBLOCKS];
};

static struct side dst;
static bool verbose;	/* MFD_FUZZ_VERBOSE: print each result, for triage */

static __attribute__((noreturn)) void die(const char *what, mfd_error *err)
{
	fprintf(stderr, "fuzz_multifd_recv: %s: %s\n", what, err ? mfd_error_message(err) : "?");
	abort();
}

/* @size bytes between two inaccessible guard pages (of the largest page size,
 * so the data stays aligned to it). */
static uint8_t *map_guarded(uint64_t size, uint64_t guard)
{
	uint8_t *p = mmap(NULL, size + 2 * guard, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		die("mmap", NULL);
	if (mprotect(p, guard, PROT_NONE) < 0 || mprotect(p + guard + size, guard, PROT_NONE) < 0)
		die("mprotect", NULL);
	return p + guard;
}

static void side_init(struct side *sd)
{
	mfd_error *err = NULL;

	if (mfd_migration_new(&sd->m, &err) < 0)
		die("migration", err);
	for (int i = 0; i < NBLOCKS; i++) {
		sd->host[i] = map_guarded(layout[i].size, SMALL);
		if (mfd_ram_block_add(sd->m, layout[i].name, sd->host[i], layout[i].size,
				      layout[i].page, &err) < 0)
			die("ram block", err);
	}
}

/* Both sides of every run use one fixed session, so seeds stay valid. */
static int config(struct mfd_multifd_config *cfg, unsigned codec)
{
	mfd_error *err = NULL;

	if (multifd_config_init(cfg, &err) < 0)
		die("config", err);
	cfg->channels = 1;
	cfg->packet_bytes = PACKET_BYTES;
	for (int i = 0; i < MFD_UUID_LEN; i++)
		cfg->uuid[i] = (uint8_t)(0x10 + i);
	for (int i = 0; i < MFD_TOKEN_LEN; i++)
		cfg->token[i] = (uint8_t)(0xc0 ^ i);
	if (codec) {
		cfg->codec = mfd_compress_find(codec_names[codec]);
		if (!cfg->codec)
			return -1;	/* not in this build */
		cfg->level = cfg->codec->level_default;
	}
	return 0;
}

/* ---- seeds -------------------------------------------------------------------- */

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Page p of a block: zero, text-like or random, by @kind. */
static void fill_page(uint8_t *pg, size_t len, unsigned kind, uint64_t *s)
{
	if (kind == 0) {
		memset(pg, 0, len);
	} else if (kind == 1) {
		for (size_t i = 0; i < len; i++)
			pg[i] = (uint8_t)("guest memory text "[i % 18]);
	} else {
		for (size_t i = 0; i < len; i += 8) {
			uint64_t v = rng(s);

			memcpy(pg + i, &v, 8);
		}
	}
}

/* Seeds stay small (raw pages are 4 KiB each), so mutations stay fast. */
struct plan {
	const char *name;
	int kind;		/* -1 mixed, else every page of this kind */
	unsigned syncs;		/* epochs, each followed by a SYNC */
	unsigned step, count;	/* every step-th "ram" page, at most count per epoch */
	bool huge;		/* also send the (text) huge page; not raw */
};

static const struct plan plans[] = {
	{ "text", 1, 1, 3, 8, false },
	{ "zero", 0, 1, 1, 40, false },
	{ "random", 2, 1, 9, 4, false },
	{ "mixed-syncs", -1, 3, 5, 6, false },
	{ "full-packet", 1, 1, 1, 17, false },
	{ "huge", 1, 1, 7, 2, true },
	{ "end-only", -1, 0, 1, 0, false },
};

static void gen_one(const char *dir, unsigned codec, const struct plan *p, struct side *src)
{
	struct mfd_multifd_config cfg;
	struct mfd_multifd_send *send = NULL;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	uint64_t s = 0x9e3779b97f4a7c15ull;
	const void *data;
	size_t len;
	char path[4096];
	FILE *f;

	if (config(&cfg, codec) < 0 || (p->huge && !codec))
		return;	/* a raw 2 MiB page is too big a seed */
	for (int b = 0; b < NBLOCKS; b++)
		for (uint64_t off = 0; off < layout[b].size; off += layout[b].page) {
			unsigned kind = p->kind >= 0 ? (unsigned)p->kind : (unsigned)(rng(&s) % 3);

			if (b == 2)
				kind = 1;	/* the huge page compresses well */

			fill_page(src->host[b] + off, layout[b].page, kind, &s);
		}
	if (mfd_channel_new_mem_writer(0, &ch, &err) < 0 ||
	    multifd_send_new(&cfg, src->m->blocks, src->m->nblocks, &ch, &send, &err) < 0)
		die("sender", err);
	for (unsigned e = 0; e < p->syncs; e++) {
		unsigned n = 0;

		for (uint64_t pg = e; pg < 64 && n < p->count; pg += p->step, n++)
			if (multifd_queue_page(send, 0, pg * SMALL, &err) < 0)
				die("queue", err);
		if (e == 0 && multifd_queue_page(send, 1, 2 * SMALL, &err) < 0)
			die("queue", err);
		if (p->huge && e == 0 && multifd_queue_page(send, 2, 0, &err) < 0)
			die("queue", err);
		if (multifd_send_sync(send, &err) < 0)
			die("sync", err);
	}
	if (multifd_send_finish(send, &err) < 0 ||
	    mfd_channel_mem_contents(ch, &data, &len) < 0)
		die("finish", err);
	/* With several SYNCs, also a main stream one marker short of them. */
	for (unsigned short_ = 0; short_ < (p->syncs > 1 ? 2u : 1u); short_++) {
		snprintf(path, sizeof(path), "%s/%s-%s%s", dir, codec_names[codec], p->name,
			 short_ ? "-unmatched" : "");
		f = fopen(path, "wb");
		if (!f || fputc((int)(codec | (short_ ? p->syncs << 2 : 0)), f) == EOF ||
		    fwrite(data, 1, len, f) != len || fclose(f)) {
			perror(path);
			exit(1);
		}
	}
	multifd_send_free(send);
	mfd_channel_free(ch);
}

static void gen_seeds(const char *dir)
{
	struct side src;

	side_init(&src);
	for (unsigned c = 0; c < 4; c++)
		for (size_t i = 0; i < sizeof(plans) / sizeof(plans[0]); i++)
			gen_one(dir, c, &plans[i], &src);
	mfd_migration_free(src.m);
}

/* ---- the target -------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *seeds = getenv("MFD_FUZZ_SEEDS");

	(void)argc;
	(void)argv;
	if (seeds) {
		gen_seeds(seeds);
		exit(0);
	}
	side_init(&dst);
	verbose = getenv("MFD_FUZZ_VERBOSE") != NULL;
	return 0;
}

static void check_error(const char *where, int r, mfd_error *err)
{
	if (r < MFD_ERRCODE_MIN || (r < 0 && (!err || !mfd_error_message(err)))) {
		fprintf(stderr, "%s: code %d, error '%s'\n", where, r,
			err ? mfd_error_message(err) : "(none)");
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mfd_multifd_config cfg;
	struct mfd_multifd_recv *recv = NULL;
	struct mfd_multifd_stats *st;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	unsigned markers = size ? data[0] >> 2 : 0;	/* 0: one per SYNC, else markers - 1 */
	uint64_t released = 0;
	int r;

	if (size < 1 || config(&cfg, data[0] & 3) < 0)
		return 0;
	/* Fresh guest memory each run: dropping the pages makes them read as zero. */
	for (int b = 0; b < NBLOCKS; b++)
		madvise(dst.host[b], layout[b].size, MADV_DONTNEED);
	if (mfd_channel_new_mem_reader(data + 1, size - 1, &ch, &err) < 0 ||
	    multifd_recv_new(&cfg, dst.m->blocks, dst.m->nblocks, &recv, &err) < 0)
		die("receiver", err);
	r = multifd_recv_identify(ch, recv, &err);
	check_error("identify", r, err);
	if (verbose && r < 0)
		fprintf(stderr, "hello: %d %s\n", r, mfd_error_message(err));
	if (r >= 0) {
		if (r != 0)
			abort();	/* one channel: the only valid id */
		if (multifd_recv_start(recv, &err) < 0)
			die("start", err);
		/* The loader's part: one release per marker, until the channel stops
		 * or the main stream has no marker left. */
		r = 0;
		while ((markers == 0 || released < markers - 1) &&
		       (r = multifd_recv_sync(recv, &err)) == 0)
			released++;
		check_error("sync", r, err);
		mfd_error_free(err);
		err = NULL;
		r = multifd_recv_finish(recv, &err);
		check_error("finish", r, err);
		if (verbose)
			fprintf(stderr, "multifd: %d %s\n", r, err ? mfd_error_message(err) : "ok");
		if (r == 0 && err)
			abort();
		st = malloc(sizeof(*st));
		if (st) {
			multifd_recv_stats(recv, st);
			if (r == 0 && st->ch[0].sync_packets != released) {
				fprintf(stderr, "finish: clean, but %llu SYNCs, %llu released\n",
					(unsigned long long)st->ch[0].sync_packets,
					(unsigned long long)released);
				abort();
			}
			free(st);
		}
	}
	mfd_error_free(err);
	multifd_recv_free(recv);
	mfd_channel_free(ch);
	return 0;
}
