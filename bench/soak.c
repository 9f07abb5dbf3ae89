/* SPDX-License-Identifier: MIT */
/*
 * soak: many back-to-back migrations in one process over loopback, to find
 * what one migration never shows: leaked fds, threads or memory, state left
 * behind by a cancel, a rare wrong page.
 *
 * Each migration draws its channel count (1..8), codec (none, zlib, zstd,
 * lz4: those built in), TLS PSK on or off, and maybe a cancel of the source
 * or the destination after a random delay.  Every completed migration is
 * compared byte for byte (RAM and a device).  At the end: the outcome
 * counts, and the fd count and RSS at the start, after 10% and at the end.
 * Exit status 1 on any verification failure, on an uncancelled migration
 * that failed, or when the fd count grew.
 *
 *   soak [--count N] [--seed S] [--mib M]     (defaults 200, time-based, 8)
 *
 * Public API only (<multifd/multifd.h>).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <multifd/multifd.h>

#define PAGE 4096u
#define WAIT_MS 60000	/* a migration that takes longer is stuck */

static uint64_t rng_state;

/* xorshift64*: reproducible from --seed, independent of libc's rand(). */
static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static unsigned rnd_below(unsigned n)
{
	return (unsigned)(rnd() % n);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* the directory's own fd */
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, res = 0;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &res) != 2)
		res = -1;
	fclose(f);
	return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* A small device: its state must arrive intact too. */
struct cpu {
	uint64_t regs[8];
};

static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct cpu *c = opaque;

	(void)errp;
	for (int i = 0; i < 8; i++)
		mfd_stream_put_be64(s, c->regs[i]);
	return mfd_stream_error(s, NULL);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t version, mfd_error **errp)
{
	struct cpu *c = opaque;
	int r = 0;

	(void)version;
	(void)errp;
	for (int i = 0; i < 8 && r == 0; i++)
		r = mfd_stream_get_be64(s, &c->regs[i]);
	return r;
}

static const mfd_save_handlers cpu_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = cpu_save,
	.load_state = cpu_load,
};

/* Guest RAM: zero, text-like and random pages, redrawn every migration so a
 * stale page from the previous one cannot pass the compare. */
static void fill_guest(uint8_t *ram, size_t size)
{
	for (size_t p = 0; p < size / PAGE; p++) {
		uint8_t *pg = ram + p * PAGE;
		unsigned kind = rnd_below(4);

		if (kind == 0) {
			memset(pg, 0, PAGE);
		} else if (kind == 1) {
			uint8_t base = (uint8_t)rnd();

			for (size_t i = 0; i < PAGE; i++)
				pg[i] = (uint8_t)("live migration soak "[(i + base) % 20]);
		} else {
			for (size_t i = 0; i < PAGE; i += 8) {
				uint64_t v = rnd();

				memcpy(pg + i, &v, 8);
			}
		}
	}
}

static int psk_file_create(char *dir, size_t dlen, char *file, size_t flen)
{
	char line[128];
	int fd, n;

	snprintf(dir, dlen, "/tmp/mfd-soak-XXXXXX");
	if (!mkdtemp(dir))	/* 0700: only we read the key */
		return -1;
	n = snprintf(line, sizeof(line), "soak:");
	for (int i = 0; i < 32; i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "%02x", (unsigned)(rnd() & 0xff));
	line[n++] = '\n';
	snprintf(file, flen, "%s/psk.txt", dir);
	fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (write(fd, line, (size_t)n) != n) {
		close(fd);
		return -1;
	}
	return close(fd);
}

struct side {
	mfd_migration *m;
	struct cpu cpu;
};

static int side_new(struct side *s, uint8_t *ram, size_t size, unsigned channels,
		    const char *codec, const char *psk, mfd_error **errp)
{
	char v[16];
	int r;

	snprintf(v, sizeof(v), "%u", channels);
	if ((r = mfd_migration_new(&s->m, errp)) < 0 ||
	    (r = mfd_ram_block_add(s->m, "pc.ram", ram, size, PAGE, errp)) < 0 ||
	    (r = mfd_register_live(s->m, "cpu", 0, 1, &cpu_ops, &s->cpu, errp)) < 0 ||
	    (r = mfd_set_param(s->m, "multifd-channels", v, errp)) < 0 ||
	    (r = mfd_set_param(s->m, "multifd-compression", codec, errp)) < 0 ||
	    (r = mfd_set_param(s->m, "channel-timeout-ms", "10000", errp)) < 0)
		return r;
	if (psk && (r = mfd_set_param(s->m, "tls-psk-file", psk, errp)) < 0)
		return r;
	return 0;
}

/* Wait for the end; a migration still running after WAIT_MS is stuck: cancel
 * it and wait again, so it can be freed. */
static int wait_or_kill(mfd_migration *m, mfd_error **errp, bool *stuck)
{
	int r = mfd_migration_wait(m, WAIT_MS, errp);

	if (r == MFD_ERUNNING) {
		*stuck = true;
		mfd_error_free(*errp);
		*errp = NULL;
		mfd_migrate_cancel(m);
		r = mfd_migration_wait(m, WAIT_MS, errp);
	}
	return r;
}

static void usage(void)
{
	fprintf(stderr, "usage: soak [--count N] [--seed S] [--mib M]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "count", required_argument, NULL, 'n' },
		{ "seed", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const all_codecs[] = { "none", "zlib", "zstd", "lz4" };
	const char *codecs[4];
	unsigned ncodecs = 0, count = 200, mib = 8;
	uint64_t seed = (uint64_t)time(NULL);
	unsigned completed = 0, cancelled = 0, failed = 0, bad = 0;
	char psk_dir[64], psk[128];
	int c;

	while ((c = getopt_long(argc, argv, "n:s:m:h", opts, NULL)) != -1) {
		char *end = NULL;
		unsigned long long v = strtoull(optarg ? optarg : "", &end, 0);

		if (c == 'h' || c == '?' || !end || *end)
			usage();
		if (c == 'n')
			count = (unsigned)v;
		else if (c == 's')
			seed = v;
		else if (c == 'm')
			mib = (unsigned)v;
	}
	if (count == 0 || mib == 0 || mib > 4096)
		usage();
	rng_state = seed * 0x9e3779b97f4a7c15ull + 1;
	for (unsigned i = 0; i < 4; i++)
		if (i == 0 || mfd_compress_find(all_codecs[i]))
			codecs[ncodecs++] = all_codecs[i];

	size_t size = (size_t)mib << 20;
	uint8_t *sram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *dram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (sram == MAP_FAILED || dram == MAP_FAILED || psk_file_create(psk_dir, sizeof(psk_dir), psk,
									 sizeof(psk)) < 0) {
		perror("soak: setup");
		return 1;
	}
	int fd0 = count_fds(), fd10 = -1;
	long rss0 = rss_kib(), rss10 = -1;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	printf("soak: %u migrations of %u MiB, seed %llu, codecs:", count, mib,
	       (unsigned long long)seed);
	for (unsigned i = 0; i < ncodecs; i++)
		printf(" %s", codecs[i]);
	printf("\n");
	for (unsigned it = 0; it < count; it++) {
		unsigned channels = 1 + rnd_below(8);
		const char *codec = codecs[rnd_below(ncodecs)];
		bool tls = rnd_below(3) == 0;
		/* A quarter are cancelled: half on each side, 0..40 ms in (some
		 * before the connection, some mid-transfer, some too late). */
		int cancel = rnd_below(4) == 0 ? 1 + (int)rnd_below(2) : 0;
		unsigned delay_us = rnd_below(40000);
		struct side src = { 0 }, dst = { 0 };
		mfd_error *err = NULL, *serr = NULL, *derr = NULL;
		char uri[128];
		bool stuck = false;
		int rs, rd;

		/* Half the destinations start from fresh zero memory, as
		 * dest-ram-zeroed (the default) assumes; the other half from
		 * garbage with it off, so that every page must be written. */
		bool zeroed = rnd_below(2) == 0;

		fill_guest(sram, size);
		if (zeroed)
			madvise(dram, size, MADV_DONTNEED);
		else
			memset(dram, 0xee, size);
		for (int i = 0; i < 8; i++)
			src.cpu.regs[i] = rnd();
		if (side_new(&src, sram, size, channels, codec, tls ? psk : NULL, &err) < 0 ||
		    side_new(&dst, dram, size, channels, codec, tls ? psk : NULL, &err) < 0 ||
		    mfd_set_param(dst.m, "dest-ram-zeroed", zeroed ? "on" : "off", &err) < 0 ||
		    /* Nothing writes the guest RAM while it migrates. */
		    mfd_set_param(src.m, "vm-stopped-externally", "on", &err) < 0 ||
		    mfd_migrate_incoming(dst.m, "tcp:127.0.0.1:0", &err) < 0 ||
		    mfd_migration_listen_uri(dst.m, uri, sizeof(uri)) < 0 ||
		    mfd_migrate(src.m, uri, &err) < 0) {
			fprintf(stderr, "soak: migration %u: setup: %s\n", it, mfd_error_message(err));
			mfd_error_free(err);
			mfd_migrate_cancel(dst.m);
			mfd_migration_wait(dst.m, WAIT_MS, NULL);
			mfd_migration_free(src.m);
			mfd_migration_free(dst.m);
			failed++;
			continue;
		}
		if (cancel) {
			usleep(delay_us);
			mfd_migrate_cancel(cancel == 1 ? src.m : dst.m);
		}
		rs = wait_or_kill(src.m, &serr, &stuck);
		rd = wait_or_kill(dst.m, &derr, &stuck);
		if (stuck) {
			fprintf(stderr, "soak: migration %u (%u channels, %s%s) was stuck for %d s\n",
				it, channels, codec, tls ? ", tls" : "", WAIT_MS / 1000);
			failed++;
		} else if (rs == 0 && rd == 0) {
			completed++;
			if (memcmp(sram, dram, size) != 0 ||
			    memcmp(src.cpu.regs, dst.cpu.regs, sizeof(src.cpu.regs)) != 0) {
				size_t p = 0;

				while (p < size / PAGE &&
				       memcmp(sram + p * PAGE, dram + p * PAGE, PAGE) == 0)
					p++;
				fprintf(stderr, "soak: migration %u (%u channels, %s%s%s): "
					"VERIFICATION FAILED at page %zu\n", it, channels, codec,
					tls ? ", tls" : "", zeroed ? "" : ", dest-ram-zeroed off", p);
				bad++;
			}
		} else if (rs == 0 && rd != 0) {
			/* The source completes only after the destination said "loaded". */
			fprintf(stderr, "soak: migration %u: source completed, destination "
				"failed: %s\n", it, mfd_error_message(derr));
			bad++;
		} else if (cancel) {
			cancelled++;
		} else {
			fprintf(stderr, "soak: migration %u (%u channels, %s%s) failed: %s / %s\n",
				it, channels, codec, tls ? ", tls" : "", mfd_error_message(serr),
				mfd_error_message(derr));
			failed++;
		}
		mfd_error_free(serr);
		mfd_error_free(derr);
		mfd_migration_free(src.m);
		mfd_migration_free(dst.m);
		if (it + 1 == (count + 9) / 10) {
			fd10 = count_fds();
			rss10 = rss_kib();
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);

	int fd1 = count_fds();
	long rss1 = rss_kib();
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	/* RSS settles after the first migrations (allocator arenas, codec
	 * contexts); growth after the 10% mark beyond a few MiB is a trend. */
	bool rss_grew = rss10 > 0 && rss1 > rss10 + 8192 && rss1 > rss10 + rss10 / 4;

	printf("soak: %u migrations in %.1f s: %u completed (verified byte for byte), "
	       "%u cancelled, %u failed, %u verification failures\n", count, secs, completed,
	       cancelled, failed, bad);
	printf("soak: fds  start %d, after 10%% %d, end %d\n", fd0, fd10, fd1);
	printf("soak: RSS  start %ld KiB, after 10%% %ld KiB, end %ld KiB (%s)\n", rss0, rss10,
	       rss1, rss_grew ? "GROWING" : "stable");
	unlink(psk);
	rmdir(psk_dir);
	munmap(sram, size);
	munmap(dram, size);
	if (bad || failed || fd1 > fd0) {
		printf("soak: FAIL%s%s%s\n", bad ? " (verification)" : "",
		       failed ? " (uncancelled failures)" : "", fd1 > fd0 ? " (fd growth)" : "");
		return 1;
	}
	printf("soak: PASS\n");
	return 0;
}
