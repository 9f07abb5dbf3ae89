/* SPDX-License-Identifier: MIT */
/*
 * Bring your own channels: a VMM whose connections were opened by someone
 * else (a jailer, an orchestrator, a helper that picks the NICs) migrates
 * over them with mfd_migrate_channels() / mfd_migrate_incoming_channels().
 *
 * The "orchestrator" here makes the connections (socketpairs: a main
 * channel and CHANNELS multifd channels) and forks: the child is the
 * destination VMM, which gets its ends as plain file descriptors and
 * knows nothing of addresses; the parent is the source VMM with the other
 * ends.  To show that the destination tells the multifd channels apart by
 * their hellos, the child lists them in reverse.  The destination checks
 * every page against the pattern the source wrote and exits 0 when all
 * match; the parent prints "channels: ok ..." and exits 0 only then.
 *
 * Built against the public header only:
 *   cc -o channels channels.c $(pkg-config --cflags --libs multifd)
 * docs/api.md, "Bring your own channels", walks through it.
 */
#include <multifd/multifd.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define RAM_SIZE (16u << 20)
#define PAGE_SIZE 4096u
#define CHANNELS 3

/* What page @p holds: a word that depends on the page and the offset. */
static uint64_t pattern(uint64_t page, uint64_t word)
{
	return (page * 0x9e3779b97f4a7c15ull) ^ (word * 0xbf58476d1ce4e5b9ull) ^ 0x5a5a;
}

static void fill(uint8_t *ram)
{
	for (uint64_t p = 0; p < RAM_SIZE / PAGE_SIZE; p++) {
		uint64_t *w = (uint64_t *)(ram + p * PAGE_SIZE);

		/* Every fourth page stays zero: the library sends those as such. */
		if (p % 4 == 3)
			continue;
		for (uint64_t i = 0; i < PAGE_SIZE / 8; i++)
			w[i] = pattern(p, i);
	}
}

static uint64_t bad_pages(const uint8_t *ram)
{
	uint64_t bad = 0;

	for (uint64_t p = 0; p < RAM_SIZE / PAGE_SIZE; p++) {
		const uint64_t *w = (const uint64_t *)(ram + p * PAGE_SIZE);

		for (uint64_t i = 0; i < PAGE_SIZE / 8; i++) {
			if (w[i] != (p % 4 == 3 ? 0 : pattern(p, i))) {
				bad++;
				break;
			}
		}
	}
	return bad;
}

static int fail(const char *who, const char *what, mfd_error *err)
{
	fprintf(stderr, "channels: %s: %s: %s\n", who, what, mfd_error_message(err));
	mfd_error_free(err);
	return 1;
}

/* A VM's RAM and the migration object around it. */
static int vm_new(const char *channels, mfd_migration **m, uint8_t **ram, mfd_error **errp)
{
	int r;

	*ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (*ram == MAP_FAILED)
		return mfd_error_set(errp, MFD_ENOMEM, "cannot map the guest RAM");
	if ((r = mfd_migration_new(m, errp)) < 0 ||
	    (r = mfd_ram_block_add(*m, "pc.ram", *ram, RAM_SIZE, PAGE_SIZE, errp)) < 0 ||
	    /* The set's multifd count must be multifd-channels. */
	    (r = mfd_set_param(*m, "multifd-channels", channels, errp)) < 0)
		return r;
	return 0;
}

/* A channel set over descriptors, each wrapped with mfd_channel_new_fd(): the
 * migration closes them (MFD_CHANNEL_OWN_FD).  @mf receives the multifd
 * channels, in the order of @mf_fds. */
static int set_of_fds(int main_fd, const int *mf_fds, mfd_channel **mf,
		      struct mfd_channel_set *set, mfd_error **errp)
{
	mfd_channel *main_ch = NULL;
	char name[32];
	int r;

	if ((r = mfd_channel_new_fd(main_fd, MFD_CHANNEL_OWN_FD, "main", &main_ch, errp)) < 0)
		return r;
	for (unsigned i = 0; i < CHANNELS; i++) {
		snprintf(name, sizeof(name), "multifd-fd-%d", mf_fds[i]);
		if ((r = mfd_channel_new_fd(mf_fds[i], MFD_CHANNEL_OWN_FD, name, &mf[i], errp)) < 0)
			return r;
	}
	*set = (struct mfd_channel_set){ .size = sizeof(*set), .main = main_ch,
					 .nmultifd = CHANNELS, .multifd = mf };
	return 0;
}

/* The destination VMM: it only has file descriptors. */
static int destination(int main_fd, const int *mf_fds)
{
	mfd_channel *mf[CHANNELS];
	struct mfd_channel_set set;
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	int reversed[CHANNELS];
	uint64_t bad;
	uint8_t *ram;

	if (vm_new("3", &m, &ram, &err) < 0)
		return fail("destination", "setup", err);
	/* In reverse: the hellos, not this order, say which is which. */
	for (unsigned i = 0; i < CHANNELS; i++)
		reversed[i] = mf_fds[CHANNELS - 1 - i];
	if (set_of_fds(main_fd, reversed, mf, &set, &err) < 0)
		return fail("destination", "channels", err);
	if (mfd_migrate_incoming_channels(m, &set, &err) < 0)
		return fail("destination", "mfd_migrate_incoming_channels", err);
	if (mfd_migration_wait(m, 0, &err) < 0)
		return fail("destination", "migration", err);
	bad = bad_pages(ram);
	if (bad)
		fprintf(stderr, "channels: destination: %" PRIu64 " pages differ\n", bad);
	mfd_migration_free(m);
	munmap(ram, RAM_SIZE);
	return bad ? 1 : 0;
}

int main(void)
{
	int sv[CHANNELS + 1][2], mf_fds[CHANNELS], status = 0;
	mfd_channel *mf[CHANNELS];
	struct mfd_channel_set set;
	struct mfd_stats st = { .size = sizeof(st) };
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	uint8_t *ram;
	pid_t pid;

	/* The orchestrator's part: the connections, before any thread exists. */
	for (unsigned i = 0; i <= CHANNELS; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[i]) < 0) {
			perror("channels: socketpair");
			return 1;
		}
	}
	pid = fork();
	if (pid < 0) {
		perror("channels: fork");
		return 1;
	}
	if (pid == 0) {
		for (unsigned i = 0; i <= CHANNELS; i++)
			close(sv[i][0]);
		for (unsigned i = 0; i < CHANNELS; i++)
			mf_fds[i] = sv[i + 1][1];
		_exit(destination(sv[0][1], mf_fds));
	}
	for (unsigned i = 0; i <= CHANNELS; i++)
		close(sv[i][1]);

	/* The source VMM. */
	if (vm_new("3", &m, &ram, &err) < 0)
		return fail("source", "setup", err);
	fill(ram);
	/* No vCPU runs in this example: nothing writes the RAM, so there is no
	 * vm_stop hook, and the library is told so. */
	if (mfd_set_param(m, "vm-stopped-externally", "on", &err) < 0)
		return fail("source", "vm-stopped-externally", err);
	for (unsigned i = 0; i < CHANNELS; i++)
		mf_fds[i] = sv[i + 1][0];
	if (set_of_fds(sv[0][0], mf_fds, mf, &set, &err) < 0)
		return fail("source", "channels", err);
	if (mfd_migrate_channels(m, &set, &err) < 0)
		return fail("source", "mfd_migrate_channels", err);
	if (mfd_migration_wait(m, 0, &err) < 0)
		return fail("source", "migration", err);
	mfd_migration_stats(m, &st);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "channels: the destination failed (status 0x%x)\n", status);
		return 1;
	}
	printf("channels: ok: %u MiB over a main channel and %u multifd channels the VMM "
	       "opened itself, %" PRIu64 " bytes on the multifd channels; every page "
	       "checked on the destination\n", RAM_SIZE >> 20, st.channels,
	       st.ram_multifd_bytes);
	mfd_migration_free(m);
	munmap(ram, RAM_SIZE);
	return 0;
}
