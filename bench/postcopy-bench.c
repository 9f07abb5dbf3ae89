/* SPDX-License-Identifier: MIT */
/*
 * postcopy-bench: page-fault latency of postcopy over loopback, measured by
 * the library on the destination (fault read -> page placed), with a busy
 * background push, with and without the preempt channel.
 *
 *   postcopy-bench [--mib M] [--channels N] [--preempt on|off]
 *                  [--push-mbps R] [--no-vcpu] [--json]
 *
 * One process, two migration objects on 127.0.0.1.  The source guest is
 * random (every page costs the link its full size); the source switches to
 * postcopy at once (mfd_migrate_start_postcopy() right after mfd_migrate()),
 * so all of RAM is still to push.  On the destination one "vCPU" thread touches random pages one at a
 * time; each touch of a missing page is a userfaultfd fault, requested over
 * the return path.  --push-mbps limits the background push
 * (max-postcopy-bandwidth; 0 = as fast as the link, the busy case);
 * --no-vcpu leaves the destination guest idle (the push alone).
 *
 * Prints median, p99 and max fault latency, fault count, the time postcopy
 * took, and with --json one object.  Needs userfaultfd (root): exits 77 with
 * a message otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <multifd/multifd.h>

#define PS 4096u

struct side {
	mfd_migration *m;
	uint8_t *ram;
	size_t size;
	pthread_t vcpu;
	atomic_bool run;
	atomic_ullong touches;
};

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *vcpu_thread(void *arg)
{
	struct side *d = arg;
	uint64_t seed = 0x2545f4914f6cdd1dull;
	size_t pages = d->size / PS;
	unsigned sum = 0;

	while (atomic_load(&d->run)) {
		sum += ((volatile uint8_t *)d->ram)[(rng(&seed) % pages) * PS];
		atomic_fetch_add(&d->touches, 1);
	}
	return (void *)(uintptr_t)sum;
}

static int dst_start(void *opaque, mfd_error **errp)
{
	struct side *d = opaque;

	(void)errp;
	atomic_store(&d->run, true);
	return pthread_create(&d->vcpu, NULL, vcpu_thread, d) ? MFD_ENOMEM : 0;
}

static void die(const char *what, mfd_error *err)
{
	fprintf(stderr, "postcopy-bench: %s: %s\n", what, err ? mfd_error_message(err) : "failed");
	exit(1);
}

static void set(mfd_migration *m, const char *name, const char *value)
{
	mfd_error *err = NULL;

	if (mfd_set_param(m, name, value, &err) < 0)
		die(name, err);
}

static void side_init(struct side *s, size_t size, const char *channels, const char *preempt)
{
	mfd_error *err = NULL;

	memset(s, 0, sizeof(*s));
	s->size = size;
	s->ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->ram == MAP_FAILED) {
		fprintf(stderr, "postcopy-bench: mmap %zu bytes: %s\n", size, strerror(errno));
		exit(1);
	}
	/* As a VMM does for guest RAM (QEMU for every block): huge pages where the
	 * kernel has them.  userfaultfd still places the destination's 4 KiB at a time. */
	(void)madvise(s->ram, size, MADV_HUGEPAGE);
	if (mfd_migration_new(&s->m, &err) < 0 ||
	    mfd_ram_block_add(s->m, "pc.ram", s->ram, size, PS, &err) < 0)
		die("setup", err);
	set(s->m, "multifd-channels", channels);
	set(s->m, "postcopy-ram", "on");
	set(s->m, "postcopy-preempt", preempt);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "channels", required_argument, NULL, 'c' },
		{ "preempt", required_argument, NULL, 'p' },
		{ "push-mbps", required_argument, NULL, 'b' },
		{ "no-vcpu", no_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	const char *channels = "2", *preempt = "off";
	size_t mib = 512;
	double push_mbps = 0;
	bool json = false, no_vcpu = false;
	struct side src, dst;
	mfd_error *err = NULL;
	char uri[256], rate[32];
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'm')
			mib = strtoul(optarg, NULL, 10);
		else if (c == 'c')
			channels = optarg;
		else if (c == 'p')
			preempt = optarg;
		else if (c == 'b')
			push_mbps = strtod(optarg, NULL);
		else if (c == 'n')
			no_vcpu = true;
		else if (c == 'j')
			json = true;
		else
			return 2;
	}
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);

	if (fd < 0) {
		fprintf(stderr, "postcopy-bench: userfaultfd unavailable (%s): run as root; "
			"skipped\n", strerror(errno));
		return 77;
	}
	close(fd);
	if (mib < 16 || mib > 65536) {
		fprintf(stderr, "postcopy-bench: --mib %zu outside 16..65536\n", mib);
		return 2;
	}

	side_init(&src, mib << 20, channels, preempt);
	side_init(&dst, mib << 20, channels, preempt);
	uint64_t seed = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < src.size / 8; i++)
		((uint64_t *)src.ram)[i] = rng(&seed);
	snprintf(rate, sizeof(rate), "%.0f", push_mbps * 1e6 / 8);
	set(src.m, "max-postcopy-bandwidth", rate);
	/* The source has no vCPU (only the destination runs one): nothing to stop. */
	set(src.m, "vm-stopped-externally", "on");
	mfd_vmm_hooks dh = { .size = sizeof(mfd_vmm_hooks),
			     .vm_start = no_vcpu ? NULL : dst_start };

	if (mfd_migration_set_hooks(dst.m, &dh, &dst, &err) < 0)
		die("hooks", err);
	/* Postcopy before the first precopy page: all of RAM is still to push. */
	if (mfd_migrate_incoming(dst.m, "tcp:127.0.0.1:0", &err) < 0 ||
	    mfd_migration_listen_uri(dst.m, uri, sizeof(uri)) < 0 ||
	    mfd_migrate(src.m, uri, &err) < 0 || mfd_migrate_start_postcopy(src.m, &err) < 0)
		die("start", err);
	if (mfd_migration_wait(src.m, 600000, &err) < 0)
		die("source", err);
	if (mfd_migration_wait(dst.m, 600000, &err) < 0)
		die("destination", err);
	if (atomic_load(&dst.run)) {
		atomic_store(&dst.run, false);
		pthread_join(dst.vcpu, NULL);
	}

	struct mfd_stats ds = { .size = sizeof(ds) }, ss = { .size = sizeof(ss) };

	mfd_migration_stats(dst.m, &ds);
	mfd_migration_stats(src.m, &ss);
	if (memcmp(src.ram, dst.ram, src.size) != 0) {
		fprintf(stderr, "postcopy-bench: destination RAM differs from the source\n");
		return 1;
	}
	if (json)
		printf("{\"mib\": %zu, \"channels\": %s, \"preempt\": \"%s\", \"push_mbps\": %.0f, "
		       "\"faults\": %llu, \"median_us\": %llu, \"p99_us\": %llu, \"max_us\": %llu, "
		       "\"postcopy_ms\": %llu, \"downtime_ms\": %llu}\n",
		       mib, channels, preempt, push_mbps, (unsigned long long)ds.postcopy_faults,
		       (unsigned long long)ds.postcopy_fault_us_median,
		       (unsigned long long)ds.postcopy_fault_us_p99,
		       (unsigned long long)ds.postcopy_fault_us_max,
		       (unsigned long long)ss.postcopy_time_ms, (unsigned long long)ss.downtime);
	else
		printf("postcopy %zu MiB, %s channels, preempt %s, push %s: %llu faults, latency "
		       "median %llu us, p99 %llu us, max %llu us; postcopy %llu ms\n",
		       mib, channels, preempt, push_mbps > 0 ? rate : "unlimited",
		       (unsigned long long)ds.postcopy_faults,
		       (unsigned long long)ds.postcopy_fault_us_median,
		       (unsigned long long)ds.postcopy_fault_us_p99,
		       (unsigned long long)ds.postcopy_fault_us_max,
		       (unsigned long long)ss.postcopy_time_ms);
	mfd_migration_free(src.m);
	mfd_migration_free(dst.m);
	munmap(src.ram, src.size);
	munmap(dst.ram, dst.size);
	return 0;
}
