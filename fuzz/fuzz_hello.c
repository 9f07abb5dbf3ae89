/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the multifd channel hello check,
 * multifd_recv_identify() in multifd/recv.c.
 *
 * The channel table's state comes from the input too:
 *   byte 0  channel count, 1 + (b & 7)
 *   byte 1  bitmask of channel ids already connected (with valid hellos)
 *   byte 2  codec the destination expects (low two bits: none, zlib, zstd, lz4)
 *   byte 3  packet size, 4 KiB << (b % 14) (32 MiB is outside the receiver's
 *           range and refused at creation, as it must be)
 *   then    up to 8 hellos of 128 bytes, each on a channel of its own; the
 *           last may be short (a cut hello)
 * The session (UUID, token) and the RAM blocks are fixed.
 *
 * The main-channel hello (eng_main_hello_check() in engine/hello.c) is static and
 * only runs inside an incoming engine: fuzz_incoming covers it.
 *
 * Invariants: identify returns a valid, not yet connected id or a code of
 * enum mfd_errcode with a message; an id is never handed out twice.
 *
 * MFD_FUZZ_SEEDS=DIR ./fuzz_hello writes inputs built with multifd_hello_encode()
 * into DIR and exits.  MFD_FUZZ_VERBOSE=1 prints each hello's result.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/migration.h"
#include "multifd/internal.h"

#define MAX_HELLOS 8
#define PREFIX 4

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const codec_names[4] = { "none", "zlib", "zstd", "lz4" };
static mfd_migration *m;
static bool verbose;	/* MFD_FUZZ_VERBOSE: print each result, for triage */
static uint8_t ram[16 * 4096] __attribute__((aligned(4096)));
static uint8_t rom[4 * 4096] __attribute__((aligned(4096)));

static __attribute__((noreturn)) void die(const char *what, mfd_error *err)
{
	fprintf(stderr, "fuzz_hello: %s: %s\n", what, err ? mfd_error_message(err) : "?");
	abort();
}

/* The destination's configuration as the first bytes of the input say. */
static int config(struct mfd_multifd_config *cfg, const uint8_t p[PREFIX])
{
	mfd_error *err = NULL;

	if (multifd_config_init(cfg, &err) < 0)
		die("config", err);
	cfg->channels = 1 + (p[0] & 7u);
	cfg->packet_bytes = 4096u << (p[3] % 14);
	for (int i = 0; i < MFD_UUID_LEN; i++)
		cfg->uuid[i] = (uint8_t)(0x20 + i);
	for (int i = 0; i < MFD_TOKEN_LEN; i++)
		cfg->token[i] = (uint8_t)(0x5a ^ (i * 3));
	if (p[2] & 3) {
		cfg->codec = mfd_compress_find(codec_names[p[2] & 3]);
		if (!cfg->codec)
			return -1;
		cfg->level = cfg->codec->level_default;
	}
	return 0;
}

static void setup(void)
{
	mfd_error *err = NULL;

	if (mfd_migration_new(&m, &err) < 0 ||
	    mfd_ram_block_add(m, "pc.ram", ram, sizeof(ram), 4096, &err) < 0 ||
	    mfd_ram_block_add(m, "pc.rom", rom, sizeof(rom), 4096, &err) < 0)
		die("setup", err);
}

/* ---- seeds -------------------------------------------------------------------- */

static void gen_seed(const char *dir, const uint8_t p[PREFIX], const uint16_t *ids, int n,
		     int cut)
{
	struct mfd_multifd_config cfg;
	uint8_t buf[PREFIX + MAX_HELLOS * MFD_HELLO_SIZE];
	size_t len = PREFIX;
	char path[4096];
	FILE *f;

	if (config(&cfg, p) < 0)
		return;
	memcpy(buf, p, PREFIX);
	for (int i = 0; i < n; i++) {
		multifd_hello_encode(buf + len, &cfg, ids[i],
				 ram_blocks_digest(m->blocks, m->nblocks));
		len += MFD_HELLO_SIZE;
	}
	len -= (size_t)cut;
	snprintf(path, sizeof(path), "%s/n%u-pre%02x-%s-ps%u-%d%s", dir, cfg.channels, p[1],
		 codec_names[p[2] & 3], cfg.packet_bytes, n, cut ? "-cut" : "");
	f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

static void gen_seeds(const char *dir)
{
	static const uint16_t ids[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
	static const uint16_t rev[4] = { 3, 2, 1, 0 };
	static const uint16_t dup[2] = { 1, 1 };

	for (uint8_t c = 0; c < 4; c++) {
		gen_seed(dir, (const uint8_t[PREFIX]){ 0, 0, c, 7 }, ids, 1, 0);
		gen_seed(dir, (const uint8_t[PREFIX]){ 3, 0, c, 7 }, rev, 4, 0);
	}
	gen_seed(dir, (const uint8_t[PREFIX]){ 7, 0, 2, 0 }, ids, 8, 0);
	gen_seed(dir, (const uint8_t[PREFIX]){ 3, 0x05, 1, 7 }, ids + 1, 1, 0);
	gen_seed(dir, (const uint8_t[PREFIX]){ 3, 0x02, 0, 7 }, dup, 2, 0);
	gen_seed(dir, (const uint8_t[PREFIX]){ 1, 0, 3, 12 }, ids, 2, 40);
}

/* ---- the target -------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *seeds = getenv("MFD_FUZZ_SEEDS");

	(void)argc;
	(void)argv;
	setup();
	verbose = getenv("MFD_FUZZ_VERBOSE") != NULL;
	if (seeds) {
		gen_seeds(seeds);
		exit(0);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mfd_multifd_config cfg;
	struct mfd_multifd_recv *recv = NULL;
	mfd_channel *chans[2 * MAX_HELLOS] = { 0 };
	uint8_t good[MAX_HELLOS][MFD_HELLO_SIZE];
	bool taken[MAX_HELLOS] = { false };
	unsigned nch = 0;
	uint64_t digest;
	mfd_error *err = NULL;

	if (size < PREFIX || config(&cfg, data) < 0)
		return 0;
	if (multifd_recv_new(&cfg, m->blocks, m->nblocks, &recv, &err) < 0) {
		/* Only the packet size can be out of range here. */
		if (cfg.packet_bytes >= MFD_PACKET_BYTES_MIN &&
		    cfg.packet_bytes <= MFD_PACKET_BYTES_MAX)
			die("receiver", err);
		mfd_error_free(err);
		return 0;
	}
	digest = ram_blocks_digest(m->blocks, m->nblocks);

	/* The channels that are already there, with hellos of our own. */
	for (unsigned id = 0; id < cfg.channels; id++) {
		if (!(data[1] & (1u << id)))
			continue;
		multifd_hello_encode(good[id], &cfg, (uint16_t)id, digest);
		if (mfd_channel_new_mem_reader(good[id], MFD_HELLO_SIZE, &chans[nch], &err) < 0 ||
		    multifd_recv_identify(chans[nch], recv, &err) != (int)id)
			die("valid hello refused", err);
		nch++;
		taken[id] = true;
	}

	data += PREFIX;
	size -= PREFIX;
	for (int i = 0; i < MAX_HELLOS && size > 0; i++) {
		size_t len = size < MFD_HELLO_SIZE ? size : MFD_HELLO_SIZE;
		int r;

		if (mfd_channel_new_mem_reader(data, len, &chans[nch], &err) < 0)
			die("reader", err);
		r = multifd_recv_identify(chans[nch++], recv, &err);
		if (verbose)
			fprintf(stderr, "hello %d: %d %s\n", i, r,
				err ? mfd_error_message(err) : "");
		if (r >= 0) {
			if (r >= (int)cfg.channels || taken[r] || err) {
				fprintf(stderr, "identify gave id %d (taken %d)\n", r,
					r < MAX_HELLOS ? taken[r] : -1);
				abort();
			}
			taken[r] = true;
		} else if (r < MFD_ERRCODE_MIN || !err || mfd_error_code(err) != r ||
			   !mfd_error_message(err)) {
			fprintf(stderr, "identify: %d with error '%s'\n", r,
				err ? mfd_error_message(err) : "(none)");
			abort();
		}
		mfd_error_free(err);
		err = NULL;
		data += len;
		size -= len;
	}
	multifd_recv_free(recv);
	for (unsigned i = 0; i < nch; i++)
		mfd_channel_free(chans[i]);
	return 0;
}
