/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: a whole incoming migration over fd: -- the main-channel
 * hello (eng_main_hello_check() in engine/hello.c), the engine's loadvm hooks,
 * and the destination's RAM section parser (engine/ramsec_load.c), none of which
 * can be reached without an engine.
 *
 * Each run gives the input to mfd_migrate_incoming("fd:N") on one end of a
 * socketpair, half-closed after the input so the destination sees the end
 * of data, and waits for the migration to end.  fd: has no multifd channels,
 * so the RAM pages travel as PAGE/ZERO records on the main stream.  A hello
 * may still ask for a return path (flag bit 0): the destination's messages
 * then land in the socketpair, whose buffer holds more than any input of
 * -max_len=65536 can make the destination write.
 *
 * Destination: "pc.ram", 64 pages of 4 KiB, and one non-live section "cpu"
 * (version 1, be32 + 8 bytes).  postcopy-ram is off (it needs a return path,
 * which fd: does not have), so the postcopy hooks refuse.
 *
 * Invariants: the migration always ends, COMPLETED with no error or FAILED
 * with a code of enum mfd_errcode and a message.
 *
 * MFD_FUZZ_SEEDS=DIR ./fuzz_incoming runs real source migrations over fd:
 * into a socketpair and writes what they send into DIR.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <multifd/multifd.h>

#define PAGES 64
#define PAGE 4096u

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mfd_migration *dst;
static uint8_t dram[PAGES * PAGE] __attribute__((aligned(4096)));
static uint8_t cpu_state[12];
static bool verbose;	/* MFD_FUZZ_VERBOSE: print each result, for triage */

static __attribute__((noreturn)) void die(const char *what, mfd_error *err)
{
	fprintf(stderr, "fuzz_incoming: %s: %s\n", what, err ? mfd_error_message(err) : "?");
	abort();
}

static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)errp;
	mfd_stream_put_be32(s, 0x43505530);
	return mfd_stream_put_buf(s, (const uint8_t *)opaque + 4, 8);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	uint32_t magic;
	int r;

	(void)version_id;
	if ((r = mfd_stream_get_be32(s, &magic)) < 0)
		return r;
	if (magic != 0x43505530)
		return mfd_error_set(errp, MFD_EPROTO, "cpu: magic 0x%08x", magic);
	return mfd_stream_get_buf(s, (uint8_t *)opaque + 4, 8);
}

static const mfd_save_handlers cpu_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = cpu_save,
	.load_state = cpu_load,
};

static mfd_migration *make_side(uint8_t *ram)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;

	if (mfd_migration_new(&m, &err) < 0 ||
	    mfd_ram_block_add(m, "pc.ram", ram, PAGES * PAGE, PAGE, &err) < 0 ||
	    mfd_register_live(m, "cpu", 0, 1, &cpu_ops, cpu_state, &err) < 0 ||
	    mfd_set_param_int(m, "channel-timeout-ms", 5000, &err) < 0 ||
	    /* No vCPU writes this RAM (the source of the seeds). */
	    mfd_set_param_int(m, "vm-stopped-externally", 1, &err) < 0)
		die("setup", err);
	return m;
}

/* ---- seeds -------------------------------------------------------------------- */

struct capture {
	int fd;
	uint8_t *buf;
	size_t len, cap;
};

static void *capture_thread(void *arg)
{
	struct capture *c = arg;
	ssize_t n;

	for (;;) {
		if (c->len == c->cap) {
			c->cap = c->cap ? 2 * c->cap : 65536;
			c->buf = realloc(c->buf, c->cap);
			if (!c->buf)
				die("out of memory", NULL);
		}
		n = read(c->fd, c->buf + c->len, c->cap - c->len);
		if (n <= 0)
			break;
		c->len += (size_t)n;
	}
	return NULL;
}

/*
 * Source RAM of @kind: all zero, or a few text-like or random pages (or both)
 * among zero pages.  Pages travel raw on fd:, so only a few may be non-zero
 * for a seed to fit -max_len.
 */
static void fill(uint8_t *ram, unsigned kind)
{
	uint64_t s = 88172645463325252ull;

	memset(ram, 0, PAGES * PAGE);
	for (unsigned p = 0; p < PAGES; p++) {
		uint8_t *pg = ram + (size_t)p * PAGE;
		bool text = (kind == 1 || kind == 3) && p % 9 == 1;
		bool rnd = (kind == 2 || kind == 3) && p % 17 == 5;

		for (size_t i = 0; i < PAGE && (text || rnd); i++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			pg[i] = text ? (uint8_t)("page text "[i % 10]) : (uint8_t)s;
		}
	}
}

static void gen_seeds(const char *dir)
{
	static const char *const names[] = { "zero", "text", "random", "mixed" };
	static uint8_t sram[PAGES * PAGE] __attribute__((aligned(4096)));

	for (unsigned kind = 0; kind < 4; kind++) {
		mfd_migration *src = make_side(sram);
		struct capture c = { 0 };
		pthread_t t;
		int sv[2];
		char uri[32], path[4096];
		mfd_error *err = NULL;
		FILE *f;

		fill(sram, kind);
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
			die("socketpair", NULL);
		c.fd = sv[1];
		if (pthread_create(&t, NULL, capture_thread, &c) != 0)
			die("thread", NULL);
		snprintf(uri, sizeof(uri), "fd:%d", sv[0]);
		if (mfd_migrate(src, uri, &err) < 0 || mfd_migration_wait(src, 0, &err) < 0)
			die("source", err);
		shutdown(sv[0], SHUT_WR);
		pthread_join(t, NULL);
		snprintf(path, sizeof(path), "%s/%s", dir, names[kind]);
		f = fopen(path, "wb");
		if (!f || fwrite(c.buf, 1, c.len, f) != c.len || fclose(f) != 0) {
			perror(path);
			exit(1);
		}
		free(c.buf);
		close(sv[0]);
		close(sv[1]);
		mfd_migration_free(src);
	}
}

/* ---- the target -------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *seeds = getenv("MFD_FUZZ_SEEDS");

	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	if (seeds) {
		gen_seeds(seeds);
		exit(0);
	}
	verbose = getenv("MFD_FUZZ_VERBOSE") != NULL;
	dst = make_side(dram);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mfd_error *err = NULL;
	char uri[32];
	int sv[2], r;
	enum mfd_state st;

	if (size > 65536)
		return 0;	/* more could fill the socket buffer before anyone reads */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair", NULL);
	for (size_t done = 0; done < size;) {
		ssize_t n = write(sv[1], data + done, size - done);

		if (n <= 0)
			die("write", NULL);
		done += (size_t)n;
	}
	shutdown(sv[1], SHUT_WR);
	snprintf(uri, sizeof(uri), "fd:%d", sv[0]);
	if (mfd_migrate_incoming(dst, uri, &err) < 0)
		die("mfd_migrate_incoming", err);
	r = mfd_migration_wait(dst, 20000, &err);
	st = mfd_migration_state(dst);
	if (st != MFD_STATE_COMPLETED && st != MFD_STATE_FAILED) {
		fprintf(stderr, "fuzz_incoming: the migration did not end (state %s)\n",
			mfd_state_name(st));
		abort();
	}
	if (r > 0 || r < MFD_ERRCODE_MIN || (r < 0 && (!err || !mfd_error_message(err))) ||
	    (r == 0) != (st == MFD_STATE_COMPLETED)) {
		fprintf(stderr, "fuzz_incoming: wait returned %d in state %s (%s)\n", r,
			mfd_state_name(st), err ? mfd_error_message(err) : "no error");
		abort();
	}
	if (verbose)
		fprintf(stderr, "incoming: %d %s\n", r, err ? mfd_error_message(err) : "ok");
	mfd_error_free(err);
	close(sv[0]);
	close(sv[1]);
	return 0;
}
