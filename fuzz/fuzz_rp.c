/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the source's return-path parser (rp_thread(),
 * rp_page_request(), rp_recv_bitmap() in engine/retpath.c).
 *
 * The parser is static and runs only in a source engine's return-path
 * thread, so this target drives a real one: each run starts mfd_migrate() on
 * a unix: socket (a return path needs tcp: or unix:; fd: and file: have
 * none) with one multifd channel and a 16-page guest, plays a destination
 * that accepts the main and the multifd connection and drains both, writes
 * the input on the main connection as return-path messages, and half-closes
 * it.  The run ends when the migration does: completed when the input holds
 * RESULT 0, failed otherwise (an error RESULT, a malformed message or the end
 * of the input without a result).
 *
 * This is heavier (a few hundred runs a second) and less deterministic than
 * the other targets: when a message arrives relative to the source's
 * progress varies.  The postcopy-only branches (page requests and received
 * bitmaps past their first checks) need a source in postcopy and are not
 * reached.
 *
 * Invariants: the migration always ends (bounded by channel-timeout-ms), in
 * COMPLETED only when the input reaches a RESULT 0 through messages a
 * precopy source accepts, and otherwise FAILED with an error whose code is
 * in enum mfd_errcode.
 *
 * MFD_FUZZ_SEEDS=DIR ./fuzz_rp writes message sequences into DIR and exits.
 * There is no public encoder of return-path messages (the engine's is
 * static), so the seeds are assembled here, field by field, as
 * docs/wire-format.md 7.3 gives them.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/channel.h"
#include "core/util.h"

#define PAGES 16
#define PAGE 4096u
#define TIMEOUT_MS 5000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mfd_migration *src;
static mfd_listener *listener;
static char uri[128];
static uint8_t ram[PAGES * PAGE] __attribute__((aligned(4096)));
static bool verbose;	/* MFD_FUZZ_VERBOSE: print each result, for triage */

static __attribute__((noreturn)) void die(const char *what, mfd_error *err)
{
	fprintf(stderr, "fuzz_rp: %s: %s\n", what, err ? mfd_error_message(err) : "?");
	abort();
}

/* ---- seeds -------------------------------------------------------------------- */

struct msg_buf {
	uint8_t b[8192];
	size_t len;
};

static void put_msg(struct msg_buf *m, uint16_t type, const void *payload, uint16_t len)
{
	store_be16(m->b + m->len, type);
	store_be16(m->b + m->len + 2, len);
	if (len)
		memcpy(m->b + m->len + 4, payload, len);
	m->len += 4u + len;
}

static void put_result(struct msg_buf *m, int32_t code, const char *text)
{
	uint8_t p[64];
	size_t n = strlen(text);

	store_be32(p, (uint32_t)code);
	memcpy(p + 4, text, n);
	put_msg(m, 2, p, (uint16_t)(4 + n));
}

static void save(const char *dir, const char *name, const struct msg_buf *m)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(m->b, 1, m->len, f) != m->len || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

static void gen_seeds(const char *dir)
{
	struct msg_buf m;
	uint8_t p[16];

	/* What a destination answers in a precopy migration. */
	m.len = 0;
	store_be32(p, 1);
	put_msg(&m, 1, p, 4);			/* PONG 1 */
	put_msg(&m, 3, NULL, 0);		/* SWITCHOVER_ACK */
	put_result(&m, 0, "loaded");
	save(dir, "precopy-ok", &m);

	m.len = 0;
	put_result(&m, -20, "main channel: SECTION_FULL at byte 23: unknown section");
	save(dir, "result-error", &m);

	/* Postcopy messages, refused by a source in precopy. */
	m.len = 0;
	memset(p, 0, sizeof(p));
	store_be32(p + 4, PAGE);
	store_be64(p + 8, 2 * PAGE);
	put_msg(&m, 4, p, 16);			/* REQ_PAGES block 0, 1 page at 8 KiB */
	save(dir, "req-pages", &m);

	m.len = 0;
	memset(p, 0, sizeof(p));
	store_be64(p + 8, 8);
	put_msg(&m, 5, p, 16);			/* RECV_BITMAP block 0, 8 bytes */
	save(dir, "recv-bitmap", &m);

	m.len = 0;
	store_be32(p, 1);
	put_msg(&m, 6, p, 4);			/* RESUME_ACK */
	put_result(&m, 0, "loaded");
	save(dir, "resume-ack", &m);

	m.len = 0;
	save(dir, "empty", &m);
}

/* ---- the destination's side --------------------------------------------------- */

/*
 * Whether the messages, read as a source in precopy reads them, reach a
 * RESULT 0 before anything that ends the return path: the only way a
 * migration may complete.
 */
static bool says_loaded(const uint8_t *p, size_t n)
{
	while (n >= 4) {
		uint16_t type = load_be16(p), len = load_be16(p + 2);

		if (len > n - 4)
			return false;
		if (type == 2)
			return len >= 4 && load_be32(p + 4) == 0;
		if (!(type == 1 && len == 4) && !(type == 3 && len == 0) &&
		    !(type == 6 && len == 4 && load_be32(p + 4) == 1))
			return false;	/* refused: the return path ends */
		p += 4u + len;
		n -= 4u + len;
	}
	return false;
}

static void *drain(void *arg)
{
	mfd_channel *ch = arg;
	uint8_t buf[65536];

	while (channel_read_some(ch, buf, sizeof(buf), NULL) > 0)
		;
	return NULL;
}

/* libFuzzer leaves through exit(): do not leave the socket file behind. */
static void remove_socket(void)
{
	unlink(uri + strlen("unix:"));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *seeds = getenv("MFD_FUZZ_SEEDS");
	mfd_error *err = NULL;

	(void)argc;
	(void)argv;
	if (seeds) {
		gen_seeds(seeds);
		exit(0);
	}
	verbose = getenv("MFD_FUZZ_VERBOSE") != NULL;
	/* A peer that closes first must not kill the fuzzer. */
	signal(SIGPIPE, SIG_IGN);
	snprintf(uri, sizeof(uri), "unix:/tmp/mfd-fuzz-rp-%ld.sock", (long)getpid());
	unlink(uri + strlen("unix:"));
	atexit(remove_socket);
	for (size_t i = 0; i < sizeof(ram); i += 64)
		ram[i] = (uint8_t)(i / PAGE + 1);
	if (mfd_migration_new(&src, &err) < 0 ||
	    mfd_ram_block_add(src, "pc.ram", ram, sizeof(ram), PAGE, &err) < 0 ||
	    mfd_set_param_int(src, "multifd-channels", 1, &err) < 0 ||
	    mfd_set_param_int(src, "channel-timeout-ms", TIMEOUT_MS, &err) < 0 ||
	    /* No vCPU writes this RAM: nothing for a vm_stop hook to stop. */
	    mfd_set_param_int(src, "vm-stopped-externally", 1, &err) < 0 ||
	    mfd_listener_new(uri, &listener, &err) < 0)
		die("setup", err);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mfd_channel *main_ch = NULL, *mf = NULL;
	pthread_t t_main, t_mf;
	bool d_main = false, d_mf = false;
	struct iovec iov = { (void *)data, size };
	mfd_error *err = NULL;
	int r;

	if (mfd_migrate(src, uri, &err) < 0)
		die("mfd_migrate", err);
	if (mfd_listener_accept(listener, TIMEOUT_MS, &main_ch, &err) == 0 &&
	    mfd_listener_accept(listener, TIMEOUT_MS, &mf, &err) == 0) {
		d_mf = pthread_create(&t_mf, NULL, drain, mf) == 0;
		d_main = pthread_create(&t_main, NULL, drain, main_ch) == 0;
		/* The source may already have given up: a failed write is fine. */
		if (channel_writev_full(main_ch, &iov, 1, NULL) == 0)
			mfd_channel_finish(main_ch, NULL);
	}
	mfd_error_free(err);
	err = NULL;
	r = mfd_migration_wait(src, 4 * TIMEOUT_MS, &err);
	enum mfd_state st = mfd_migration_state(src);

	if (st != MFD_STATE_COMPLETED && st != MFD_STATE_FAILED) {
		fprintf(stderr, "fuzz_rp: the migration did not end (state %s)\n",
			mfd_state_name(st));
		abort();
	}
	if (r > 0 || r < MFD_ERRCODE_MIN || (r < 0 && !err) ||
	    (r == 0) != (st == MFD_STATE_COMPLETED) || (r == 0 && !says_loaded(data, size))) {
		fprintf(stderr, "fuzz_rp: wait returned %d in state %s (%s)\n", r,
			mfd_state_name(st), err ? mfd_error_message(err) : "no error");
		abort();
	}
	if (verbose)
		fprintf(stderr, "rp: %d %s\n", r, err ? mfd_error_message(err) : "ok");
	mfd_error_free(err);
	/* The source closed its ends: the drains see the end of data. */
	if (main_ch)
		mfd_channel_shutdown(main_ch);
	if (mf)
		mfd_channel_shutdown(mf);
	if (d_main)
		pthread_join(t_main, NULL);
	if (d_mf)
		pthread_join(t_mf, NULL);
	mfd_channel_free(main_ch);
	mfd_channel_free(mf);
	return 0;
}
