/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the savevm v3 section-stream loader (core/loadvm.c).
 *
 * The input is a whole main stream (header, CONFIGURATION, records, EOF),
 * read through a memory reader channel by loadvm_begin/run/end with
 * loadvm hooks that accept every postcopy command, so the command parsers
 * and the PACKAGED nesting are reached, not only refused.  The hooks keep a
 * small postcopy state machine (advise -> listen -> run -> resume) and refuse
 * commands out of order, as a destination must.
 *
 * Destination sections:
 *   "dev"   instance 0, version 2, non-live: be32 value, (v2) be16 count <= 32
 *           and that many bytes, then subsections "dev/extra" (be32) and
 *           "dev/blob" (counted string); any other subsection is refused.
 *   "live"  instances 0 and 1, version 1: tagged records, tag 1 = be32 total
 *           size (<= 4096), tag 2 = be16 chunk length then the chunk, never
 *           past the announced total.
 *   "saveonly" instance 0: no load handler (the loader must refuse it).
 *
 * Invariants beyond the sanitizers: the result is 0 or a code of enum
 * mfd_errcode, an error always comes with a message, success never comes
 * with one, and every section that got load_setup gets load_cleanup.
 *
 * MFD_FUZZ_SEEDS=DIR ./fuzz_loadvm writes valid streams made by the library's
 * own writers (mfd_savevm, mfd_savevm_send_*) into DIR and exits.
 * MFD_FUZZ_VERBOSE=1 prints each input's result.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/migration.h"
#include "core/savevm.h"
#include "core/stream.h"

#define LIVE_MAX 4096
#define VARRAY_MAX 32
#define RAM_PAGES 64
#define PAGE 4096u

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- destination devices -------------------------------------------------- */

struct dev_state {
	uint32_t value, extra;
	uint8_t varray[VARRAY_MAX];
	char blob[256];
	int setups, cleanups;
};

struct live_state {
	uint32_t total, have;
	uint8_t data[LIVE_MAX];
	bool sized;
	int setups, cleanups;
};

static struct dev_state dev;
static struct live_state live[2];

static int dev_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct dev_state *d = opaque;
	char name[256];
	uint32_t sub_version;
	int r;

	if ((r = mfd_stream_get_be32(s, &d->value)) < 0)
		return r;
	if (version_id >= 2) {
		uint16_t n;

		if ((r = mfd_stream_get_be16(s, &n)) < 0)
			return r;
		/* A length from the stream is checked against the buffer before use. */
		if (n > VARRAY_MAX)
			return mfd_error_set(errp, MFD_EPROTO, "dev: %u array entries, at most %u",
					     n, VARRAY_MAX);
		if ((r = mfd_stream_get_buf(s, d->varray, n)) < 0)
			return r;
	}
	while ((r = mfd_subsection_next(s, "dev", name, &sub_version)) == 1) {
		if (strcmp(name, "dev/extra") == 0) {
			if (sub_version != 1)
				return mfd_error_set(errp, MFD_EBADVERSION,
						     "dev/extra: version %u", sub_version);
			r = mfd_stream_get_be32(s, &d->extra);
		} else if (strcmp(name, "dev/blob") == 0) {
			r = mfd_stream_get_str(s, d->blob, NULL);
		} else {
			/* The library leaves unknown subsections to the handler: refuse. */
			return mfd_error_set(errp, MFD_EPROTO, "dev: unknown subsection '%s'", name);
		}
		if (r < 0)
			return r;
	}
	return r;
}

static int dev_load_setup(void *opaque, mfd_error **errp)
{
	struct dev_state *d = opaque;

	(void)errp;
	d->setups++;
	return 0;
}

static void dev_load_cleanup(void *opaque)
{
	((struct dev_state *)opaque)->cleanups++;
}

static int live_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct live_state *l = opaque;
	uint8_t tag;
	uint16_t n;
	int r;

	(void)version_id;
	if ((r = mfd_stream_get_u8(s, &tag)) < 0)
		return r;
	switch (tag) {
	case 1:
		if ((r = mfd_stream_get_be32(s, &l->total)) < 0)
			return r;
		if (l->total > LIVE_MAX)
			return mfd_error_set(errp, MFD_ETOOBIG, "live: %u bytes, at most %u",
					     l->total, LIVE_MAX);
		l->have = 0;
		l->sized = true;
		return 0;
	case 2:
		if ((r = mfd_stream_get_be16(s, &n)) < 0)
			return r;
		if (!l->sized || n > l->total - l->have)
			return mfd_error_set(errp, MFD_EPROTO, "live: chunk of %u bytes at %u of %u",
					     n, l->have, l->total);
		if ((r = mfd_stream_get_buf(s, l->data + l->have, n)) < 0)
			return r;
		l->have += n;
		return 0;
	default:
		return mfd_error_set(errp, MFD_EPROTO, "live: unknown tag %u", tag);
	}
}

static int live_load_setup(void *opaque, mfd_error **errp)
{
	struct live_state *l = opaque;

	(void)errp;
	l->setups++;
	return 0;
}

static void live_load_cleanup(void *opaque)
{
	((struct live_state *)opaque)->cleanups++;
}

/* ---- source devices (seed generation only) -------------------------------- */

struct src_live {
	uint32_t total, sent, chunk;
};

static int src_dev_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	static const uint8_t arr[5] = { 1, 2, 3, 4, 5 };

	(void)opaque;
	(void)errp;
	mfd_stream_put_be32(s, 0xdeadbeef);
	mfd_stream_put_be16(s, sizeof(arr));
	mfd_stream_put_buf(s, arr, sizeof(arr));
	mfd_subsection_begin(s, "dev/extra", 1);
	mfd_stream_put_be32(s, 0x01020304);
	mfd_subsection_begin(s, "dev/blob", 1);
	return mfd_stream_put_str(s, "blob contents");
}

static int src_live_setup(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct src_live *l = opaque;

	(void)errp;
	l->sent = 0;
	mfd_stream_put_u8(s, 1);
	return mfd_stream_put_be32(s, l->total);
}

static int src_live_chunk(mfd_stream *s, struct src_live *l, uint32_t max)
{
	uint8_t buf[LIVE_MAX];
	uint32_t n = l->total - l->sent < max ? l->total - l->sent : max;

	for (uint32_t i = 0; i < n; i++)
		buf[i] = (uint8_t)(l->sent + i);
	mfd_stream_put_u8(s, 2);
	mfd_stream_put_be16(s, (uint16_t)n);
	l->sent += n;
	return mfd_stream_put_buf(s, buf, n);
}

static int src_live_iterate(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct src_live *l = opaque;
	int r;

	(void)errp;
	r = src_live_chunk(s, l, l->chunk);
	return r < 0 ? r : l->sent == l->total;
}

static int src_live_complete(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)errp;
	return src_live_chunk(s, opaque, LIVE_MAX);
}

static const mfd_save_handlers dev_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = src_dev_save,
	.load_state = dev_load,
	.load_setup = dev_load_setup,
	.load_cleanup = dev_load_cleanup,
};

static const mfd_save_handlers live_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_setup = src_live_setup,
	.save_live_iterate = src_live_iterate,
	.save_live_complete_precopy = src_live_complete,
	.load_state = live_load,
	.load_setup = live_load_setup,
	.load_cleanup = live_load_cleanup,
};

static const mfd_save_handlers saveonly_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = src_dev_save,
};

/* ---- loadvm hooks: a simulated postcopy destination ------------------------ */

enum pc_phase { PC_NONE, PC_ADVISED, PC_LISTENING, PC_RUNNING };

struct hook_state {
	enum pc_phase phase;
	bool rp_open;
	unsigned pings, discards, bitmaps, resumes;
};

static struct hook_state hs;

static int h_open_rp(void *opaque, mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (h->rp_open)
		return mfd_error_set(errp, MFD_ESTATE, "return path opened twice");
	h->rp_open = true;
	return 0;
}

static int h_ping(void *opaque, uint32_t value, mfd_error **errp)
{
	struct hook_state *h = opaque;

	(void)value;
	if (!h->rp_open)
		return mfd_error_set(errp, MFD_ESTATE, "PING before OPEN_RETURN_PATH");
	h->pings++;
	return 0;
}

static int h_advise(void *opaque, bool has_summary, uint64_t summary, uint64_t target,
		    mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (h->phase != PC_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "ADVISE in phase %d", h->phase);
	if (has_summary && (target != PAGE || (summary & (PAGE - 1)) || !summary))
		return mfd_error_set(errp, MFD_EPROTO, "ADVISE: page sizes 0x%llx / %llu",
				     (unsigned long long)summary, (unsigned long long)target);
	h->phase = PC_ADVISED;
	return 0;
}

static int h_listen(void *opaque, mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (h->phase != PC_ADVISED)
		return mfd_error_set(errp, MFD_ESTATE, "LISTEN in phase %d", h->phase);
	h->phase = PC_LISTENING;
	return 0;
}

static int h_run(void *opaque, mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (h->phase != PC_LISTENING)
		return mfd_error_set(errp, MFD_ESTATE, "RUN in phase %d", h->phase);
	h->phase = PC_RUNNING;
	/* As the engine does: the load thread hands over after RUN. */
	return MFD_LOADVM_QUIT;
}

static int h_discard(void *opaque, const char *block, const uint64_t *ranges, size_t n,
		     mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (h->phase != PC_ADVISED)
		return mfd_error_set(errp, MFD_ESTATE, "DISCARD in phase %d", h->phase);
	if (strcmp(block, "pc.ram") != 0)
		return mfd_error_set(errp, MFD_EPROTO, "DISCARD: unknown block '%s'", block);
	if (n == 0)
		abort();	/* the loader promised at least one range */
	for (size_t i = 0; i < n; i++) {
		uint64_t start = ranges[2 * i], len = ranges[2 * i + 1];

		if (start > RAM_PAGES * PAGE || len > RAM_PAGES * PAGE - start)
			return mfd_error_set(errp, MFD_EPROTO, "DISCARD: range 0x%llx+0x%llx",
					     (unsigned long long)start, (unsigned long long)len);
	}
	h->discards++;
	return 0;
}

static int h_recv_bitmap(void *opaque, const char *block, mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (!h->rp_open || strcmp(block, "pc.ram") != 0)
		return mfd_error_set(errp, MFD_EPROTO, "RECV_BITMAP of '%s'", block);
	h->bitmaps++;
	return 0;
}

static int h_resume(void *opaque, mfd_error **errp)
{
	struct hook_state *h = opaque;

	if (h->phase != PC_RUNNING)
		return mfd_error_set(errp, MFD_ESTATE, "RESUME in phase %d", h->phase);
	h->resumes++;
	return 0;
}

static int h_switchover_start(void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	return 0;
}

static const struct mfd_loadvm_hooks hooks = {
	.opaque = &hs,
	.open_return_path = h_open_rp,
	.ping = h_ping,
	.postcopy_advise = h_advise,
	.postcopy_listen = h_listen,
	.postcopy_run = h_run,
	.postcopy_ram_discard = h_discard,
	.postcopy_resume = h_resume,
	.recv_bitmap = h_recv_bitmap,
	.switchover_start = h_switchover_start,
	/* ENABLE_COLO stays NULL: the refusal path. Small packages keep runs fast. */
	.packaged_max = 1u << 16,
};

/* ---- setup ------------------------------------------------------------------ */

static mfd_migration *dst;
static bool verbose;	/* MFD_FUZZ_VERBOSE: print each result, for triage */
static struct src_live src_live_state[2] = { { 300, 0, 100 }, { 17, 0, 5 } };

static __attribute__((noreturn)) void die(const char *what, mfd_error *err)
{
	fprintf(stderr, "fuzz_loadvm: %s: %s\n", what, err ? mfd_error_message(err) : "?");
	abort();
}

/* Register the same sections on either side: load handlers on dst, save on src. */
static mfd_migration *make_side(bool source)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;

	if (mfd_migration_new(&m, &err) < 0 ||
	    mfd_register_live(m, "dev", 0, 2, &dev_ops, &dev, &err) < 0 ||
	    mfd_register_live(m, "live", 0, 1, &live_ops,
			      source ? (void *)&src_live_state[0] : (void *)&live[0], &err) < 0 ||
	    mfd_register_live(m, "live", 1, 1, &live_ops,
			      source ? (void *)&src_live_state[1] : (void *)&live[1], &err) < 0)
		die("setup", err);
	/* Only the destination has it, so the package seed stays loadable. */
	if (!source && mfd_register_live(m, "saveonly", 0, 1, &saveonly_ops, NULL, &err) < 0)
		die("setup", err);
	return m;
}

/* ---- seeds -------------------------------------------------------------------- */

static void write_seed(const char *dir, const char *name, const void *data, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

/* A stream writer over a memory channel; the caller adds records. */
struct seed_out {
	mfd_channel *ch;
	mfd_stream *s;
};

static void seed_begin(struct seed_out *o, mfd_migration *m, bool header)
{
	mfd_error *err = NULL;

	if (mfd_channel_new_mem_writer(0, &o->ch, &err) < 0 ||
	    mfd_stream_new(o->ch, MFD_STREAM_WRITE, &o->s, &err) < 0)
		die("seed writer", err);
	if (header && savevm_header(m, o->s) < 0)
		die("seed header", NULL);
}

static void seed_end(struct seed_out *o, const char *dir, const char *name, bool eof)
{
	const void *data;
	size_t len;

	if ((eof && savevm_eof(o->s) < 0) || mfd_stream_flush(o->s) < 0 ||
	    mfd_channel_mem_contents(o->ch, &data, &len) < 0)
		die("seed flush", NULL);
	if (dir)
		write_seed(dir, name, data, len);
	mfd_stream_free(o->s);
	mfd_channel_free(o->ch);
}

/* The bytes of one finished seed, copied (for a PACKAGED body). */
static uint8_t *seed_take(struct seed_out *o, size_t *len)
{
	const void *data;
	uint8_t *copy;

	if (mfd_stream_flush(o->s) < 0 || mfd_channel_mem_contents(o->ch, &data, len) < 0 ||
	    !(copy = malloc(*len ? *len : 1)))
		die("seed take", NULL);
	memcpy(copy, data, *len);
	mfd_stream_free(o->s);
	mfd_channel_free(o->ch);
	return copy;
}

static void gen_seeds(const char *dir)
{
	mfd_migration *src = make_side(true);
	static const uint64_t ranges[4] = { 0, PAGE, 8 * PAGE, 4 * PAGE };
	struct seed_out o;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	const void *data;
	uint8_t *blob;
	size_t len;

	/* 1: a whole precopy save, as mfd_savevm() writes it. */
	if (mfd_channel_new_mem_writer(0, &ch, &err) < 0 || mfd_savevm(src, ch, &err) < 0 ||
	    mfd_channel_mem_contents(ch, &data, &len) < 0)
		die("mfd_savevm", err);
	write_seed(dir, "savevm-full", data, len);
	mfd_channel_free(ch);

	/* 2: header and EOF only. */
	seed_begin(&o, src, true);
	seed_end(&o, dir, "empty", true);

	/* 3: the return-path commands and informational ones. */
	seed_begin(&o, src, true);
	savevm_send_open_return_path(o.s);
	savevm_send_ping(o.s, 1);
	savevm_send_switchover_start(o.s);
	savevm_send_recv_bitmap(o.s, "pc.ram");
	savevm_send_ping(o.s, 2);
	seed_end(&o, dir, "commands", true);

	/* 4: a postcopy switch: advise, discard, then a package holding
	 * listen, the device state and run, as the engine sends it. */
	seed_begin(&o, src, false);
	savevm_send_postcopy_listen(o.s);
	savevm_save_nonlive(src, o.s, &err);
	savevm_send_postcopy_run(o.s);
	blob = seed_take(&o, &len);
	seed_begin(&o, src, true);
	savevm_send_open_return_path(o.s);
	savevm_send_postcopy_advise(o.s, PAGE, PAGE);
	savevm_send_postcopy_ram_discard(o.s, "pc.ram", ranges, 2);
	savevm_send_packaged(o.s, blob, (uint32_t)len);
	savevm_send_postcopy_resume(o.s);
	savevm_send_ping(o.s, 4);
	seed_end(&o, dir, "postcopy", true);
	free(blob);

	/* 5: the 0-byte advise and the COLO refusal. */
	seed_begin(&o, src, true);
	savevm_send_command(o.s, MFD_CMD_POSTCOPY_ADVISE, 0, NULL);
	savevm_send_enable_colo(o.s);
	seed_end(&o, dir, "advise0-colo", true);

	/* 6: live sections in three phases, with non-live state between. */
	seed_begin(&o, src, true);
	if (savevm_prepare(src, &err) < 0 || savevm_setup(src, o.s, &err) < 0 ||
	    savevm_iterate(src, o.s, false, &err) < 0 ||
	    savevm_complete_precopy(src, o.s, false, &err) < 0)
		die("live seed", err);
	savevm_cleanup(src);
	seed_end(&o, dir, "live-phases", true);

	mfd_migration_free(src);
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
	dst = make_side(false);
	verbose = getenv("MFD_FUZZ_VERBOSE") != NULL;
	return 0;
}

static void check_result(int r, mfd_error *err)
{
	if (r > 0 || r < MFD_ERRCODE_MIN) {
		fprintf(stderr, "loadvm returned %d\n", r);
		abort();
	}
	if (r < 0 && (!err || !mfd_error_message(err) || mfd_error_code(err) != r)) {
		fprintf(stderr, "loadvm returned %d with error %d '%s'\n", r, mfd_error_code(err),
			err ? mfd_error_message(err) : "(none)");
		abort();
	}
	if (r == 0 && err) {
		fprintf(stderr, "loadvm succeeded with an error: %s\n", mfd_error_message(err));
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mfd_channel *ch = NULL;
	mfd_stream *s = NULL;
	mfd_error *err = NULL;
	int r;

	memset(&dev, 0, sizeof(dev));
	memset(live, 0, sizeof(live));
	memset(&hs, 0, sizeof(hs));
	if (mfd_channel_new_mem_reader(data, size, &ch, &err) < 0 ||
	    mfd_stream_new(ch, MFD_STREAM_READ, &s, &err) < 0)
		die("reader", err);
	stream_set_label(s, "fuzz");

	/* The engine's shape (load_all): after POSTCOPY_RUN the load goes on. */
	r = loadvm_begin(dst, s, &hooks, &err);
	while (r == 0) {
		r = loadvm_run(dst, s, &hooks, false, &err);
		if (r != MFD_LOADVM_QUIT)
			break;
		r = 0;
	}
	loadvm_end(dst);
	if (verbose)
		fprintf(stderr, "loadvm: %d %s\n", r, err ? mfd_error_message(err) : "ok");
	check_result(r, err);

	/* load_setup ran for every section or for none (a refused header). */
	if (dev.setups != dev.cleanups || live[0].setups != live[0].cleanups ||
	    live[1].setups != live[1].cleanups || dev.setups > 1) {
		fprintf(stderr, "load_setup/load_cleanup unbalanced\n");
		abort();
	}
	mfd_error_free(err);
	mfd_stream_free(s);
	mfd_channel_free(ch);
	return 0;
}
