/* SPDX-License-Identifier: MIT */
/*
 * minivmm: run a boot sector under KVM and live-migrate it with libmultifd.
 *
 *   minivmm run [--image FILE] [--ram MIB] [--ws MIB] [--delay N] ...
 *   minivmm incoming URI [--ram MIB] ...
 *   minivmm ctl SOCKET COMMAND [ARGS...]
 *   minivmm migrate SOCKET URI
 *   minivmm mkimage [--image FILE] [--ws MIB] [--delay N] -o FILE
 *
 * A running VMM answers one-line commands on its --control socket (a unix
 * socket): see usage() below.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "vm.h"

extern const unsigned char minivmm_guest[BOOT_SIZE];

#define MAX_PARAMS 64
#define LINE_MAX_LEN 4096
#define MAX_CLIENTS 32

struct vmm {
	struct vm vm;
	mfd_migration *m;
	bool incoming;
	bool own_guest;			/* the boot sector carries our parameter block */
	const char *control_path;
	int control_fd;
	pthread_t control_thread;
	bool control_started;
	pthread_t main_thread;
	pthread_mutex_t mig_lock;	/* serialises migration commands */
	atomic_int exit_status;

	/*
	 * Control clients, each served by a detached thread.  Shutdown waits
	 * for every one of them to finish before the migration and the VM are
	 * freed: a client may be inside a libmultifd call on vmm.m.
	 */
	pthread_mutex_t clients_lock;
	pthread_cond_t clients_cond;
	bool clients_closed;		/* under clients_lock: no new clients */
	int client_fds[MAX_CLIENTS];	/* under clients_lock; -1 = free */
};

static struct vmm vmm = {
	.control_fd = -1,
	.clients_lock = PTHREAD_MUTEX_INITIALIZER,
	.clients_cond = PTHREAD_COND_INITIALIZER,
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: minivmm run [OPTIONS]              boot a boot sector (ours by default)\n"
		"       minivmm incoming URI [OPTIONS]     wait for a migration on URI, then run\n"
		"       minivmm ctl SOCKET COMMAND...      send one command to a running minivmm\n"
		"       minivmm migrate SOCKET URI         migrate the VM behind SOCKET to URI, wait,\n"
		"                                          print the statistics (JSON)\n"
		"       minivmm mkimage [--image IN] [--ws MIB] [--delay N] -o OUT\n"
		"                                          write our guest with its knobs set\n"
		"options:\n"
		"  --image FILE      a 512-byte boot sector (default: minivmm's own guest)\n"
		"  --ram MIB         guest RAM, %d..%d MiB (default 256); above 3072 MiB the\n"
		"                    rest sits above 4 GiB, past a PCI hole as on a PC\n"
		"  --slot-mib MIB    at most this many MiB per KVM memory slot (default: one\n"
		"                    slot below and one above the hole)\n"
		"  --ws MIB          our guest: dirty RAM up to this offset (default: all RAM)\n"
		"  --delay N         our guest: spin N iterations after each page (default 0)\n"
		"  --memfd           guest RAM in memfds (MAP_SHARED), registered with their fd\n"
		"  --prealloc        fault all guest RAM in before anything runs (QEMU's\n"
		"                    prealloc=on): no first touch during a migration\n"
		"  --paused          incoming: leave the guest stopped once it arrived (QEMU's\n"
		"                    -S); `cont` starts it\n"
		"  --dirty-log MODE  auto|classic|manual|ring: how KVM reports written pages;\n"
		"                    manual is KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with\n"
		"                    INITIALLY_SET (pages re-protected by KVM_CLEAR_DIRTY_LOG\n"
		"                    just before they are sent), ring the per-vCPU dirty ring\n"
		"                    (KVM_CAP_DIRTY_LOG_RING, reaped into mfd_ram_mark_dirty);\n"
		"                    auto (default) is manual where KVM has it, else classic\n"
		"  --serial FILE     COM1 output (default: stdout)\n"
		"  --control PATH    answer commands on this unix socket\n"
		"  --param NAME=VAL  a libmultifd parameter (multifd-channels=4,\n"
		"                    multifd-compression=zstd, postcopy-ram=on, tls-psk-file=...)\n"
		"  -v, --verbose     log ports without a device and the library's messages\n"
		"control commands (one line each, one reply line):\n"
		"  migrate URI      start migrating (source)\n"
		"  wait [MS]        wait for the migration's end; print its statistics (JSON)\n"
		"  stats            the statistics now (JSON)\n"
		"  state            migration state and vCPU state\n"
		"  dirtylog         dirty-log mode, KVM_CLEAR_DIRTY_LOG calls, ring entries\n"
		"                   reaped and ring-full exits, RAM backing\n"
		"  uri              where an incoming VMM listens (tcp:HOST:0 picks a port)\n"
		"  set NAME VALUE   a libmultifd parameter (max-bandwidth, downtime-limit... any\n"
		"                   time; the others before migrate)\n"
		"  postcopy         switch the running migration to postcopy\n"
		"  recover URI      destination, postcopy paused by a network cut: listen on URI\n"
		"                   for the source (tcp:HOST:0 picks a port; `uri` tells it)\n"
		"  resume URI       source, postcopy paused: reconnect to the destination's\n"
		"                   recover URI; postcopy goes on from where it stopped\n"
		"  cancel           cancel it (the source guest keeps running)\n"
		"  stop | cont      pause or resume the vCPU\n"
		"  laps             our guest's lap counter and COM1 lap markers\n"
		"  check            the a-b check of our guest's RAM (vCPU stopped)\n"
		"  dump FILE        guest-physical memory into FILE, as QEMU's pmemsave: byte N\n"
		"                   is address N, holes where nothing is (vCPU stopped)\n"
		"  quit             exit\n",
		VM_RAM_MIN_MIB, VM_RAM_MAX_MIB);
}

static int die(mfd_error *err)
{
	fprintf(stderr, "%s\n", mfd_error_message(err));
	mfd_error_free(err);
	return 1;
}

static int parse_u64(const char *opt, const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v > max) {
		fprintf(stderr, "minivmm: %s: '%s' is not a number from 0 to %" PRIu64 "\n", opt, s,
			max);
		return -1;
	}
	*out = v;
	return 0;
}

/* ---- the guest's knobs ----------------------------------------------------------- */

static bool image_is_ours(const uint8_t *img)
{
	uint32_t magic;

	memcpy(&magic, img + PARAM_OFFSET, 4);
	return magic == PARAM_MAGIC;
}

/* Working set up to @ws_mib of RAM offset, laid out like the guest's RAM. */
static void set_knobs(uint8_t *img, uint64_t ws_mib, uint64_t delay)
{
	struct guest_params p;
	uint64_t low_max = VM_LOW_MAX / MIB;

	memcpy(&p, img + PARAM_OFFSET, sizeof(p));
	p.low_end_mib = (uint32_t)(ws_mib < low_max ? ws_mib : low_max);
	p.high_end_mib = ws_mib > low_max ? (uint32_t)(VM_HIGH_BASE / MIB + ws_mib - low_max) : 0;
	p.delay = (uint32_t)delay;
	memcpy(img + PARAM_OFFSET, &p, sizeof(p));
}

static int read_image(const char *path, uint8_t img[BOOT_SIZE])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "minivmm: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (st.st_size != BOOT_SIZE) {
		fprintf(stderr, "minivmm: %s: %lld bytes; a boot sector image is exactly %d\n",
			path, (long long)st.st_size, BOOT_SIZE);
		close(fd);
		return -1;
	}
	n = read(fd, img, BOOT_SIZE);
	close(fd);
	if (n != BOOT_SIZE) {
		fprintf(stderr, "minivmm: %s: short read\n", path);
		return -1;
	}
	return 0;
}

/* ---- the control socket ----------------------------------------------------------- */

static void reply(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(int fd, const char *fmt, ...)
{
	char buf[LINE_MAX_LEN];
	va_list ap;
	int n;
	size_t off = 0;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	while (off < (size_t)n) {
		ssize_t w = send(fd, buf + off, (size_t)n - off, MSG_NOSIGNAL);

		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

static void reply_long(int fd, const char *s)
{
	size_t len = strlen(s), off = 0;

	while (off < len) {
		ssize_t w = send(fd, s + off, len - off, MSG_NOSIGNAL);

		if (w <= 0)
			return;
		off += (size_t)w;
	}
	send(fd, "\n", 1, MSG_NOSIGNAL);
}

static void reply_err(int fd, mfd_error *err)
{
	reply(fd, "error: %s", err ? mfd_error_message(err) : "failed");
	mfd_error_free(err);
}

static const char *run_state_name(enum vcpu_run_state st)
{
	static const char *names[] = { "running", "paused", "halted", "failed" };

	return names[st];
}

static void cmd_stats(int fd)
{
	char *json = mfd_migration_stats_json(vmm.m);

	if (json)
		reply_long(fd, json);
	else
		reply(fd, "error: no statistics");
	free(json);
}

static void command(int fd, char *line)
{
	char *argv[8];
	int argc = 0;
	mfd_error *err = NULL;

	for (char *tok = strtok(line, " \t\r\n"); tok && argc < 8; tok = strtok(NULL, " \t\r\n"))
		argv[argc++] = tok;
	if (argc == 0) {
		reply(fd, "error: empty command");
		return;
	}
	const char *c = argv[0];

	if (strcmp(c, "migrate") == 0 && argc == 2) {
		if (vmm.incoming) {
			reply(fd, "error: this VM is a migration destination");
			return;
		}
		pthread_mutex_lock(&vmm.mig_lock);
		if (mfd_migrate(vmm.m, argv[1], &err) < 0)
			reply_err(fd, err);
		else
			reply(fd, "ok");
		pthread_mutex_unlock(&vmm.mig_lock);
	} else if (strcmp(c, "wait") == 0 && argc <= 2) {
		uint64_t ms = 0;

		if (argc == 2 && parse_u64("wait", argv[1], 86400000, &ms) < 0) {
			reply(fd, "error: wait [TIMEOUT-MS]");
			return;
		}
		int r = mfd_migration_wait(vmm.m, (int)ms, &err);

		if (r == MFD_ERUNNING) {
			mfd_error_free(err);
			reply(fd, "error: still %s", mfd_state_name(mfd_migration_state(vmm.m)));
		} else if (r < 0 && r != MFD_ESTATE) {
			reply_err(fd, err);
		} else {
			mfd_error_free(err);
			cmd_stats(fd);
		}
	} else if (strcmp(c, "uri") == 0 && argc == 1) {
		char where[256];

		if (!vmm.incoming || mfd_migration_listen_uri(vmm.m, where, sizeof(where)) < 0)
			reply(fd, "error: not listening for a migration");
		else
			reply(fd, "%s", where);
	} else if (strcmp(c, "stats") == 0 && argc == 1) {
		cmd_stats(fd);
	} else if (strcmp(c, "state") == 0 && argc == 1) {
		char msg[160];
		enum vcpu_run_state st = vm_state(&vmm.vm, msg, sizeof(msg));

		reply(fd, "migration=%s vcpu=%s%s%s", mfd_state_name(mfd_migration_state(vmm.m)),
		      run_state_name(st), msg[0] ? " reason=" : "", msg);
	} else if (strcmp(c, "dirtylog") == 0 && argc == 1) {
		reply(fd, "mode=%s clears=%" PRIu64 " reaped=%" PRIu64 " full=%" PRIu64 " ram=%s",
		      vmm.vm.dirty_mode == VM_DIRTY_MANUAL ? "manual" :
		      vmm.vm.dirty_mode == VM_DIRTY_RING ? "ring" : "classic",
		      vmm.vm.dirty_clears, vmm.vm.ring_reaped, vmm.vm.ring_full_exits,
		      vmm.vm.memfd ? "memfd" : "anonymous");
	} else if (strcmp(c, "set") == 0 && argc == 3) {
		if (mfd_set_param(vmm.m, argv[1], argv[2], &err) < 0)
			reply_err(fd, err);
		else
			reply(fd, "ok");
	} else if (strcmp(c, "postcopy") == 0 && argc == 1) {
		if (mfd_migrate_start_postcopy(vmm.m, &err) < 0)
			reply_err(fd, err);
		else
			reply(fd, "ok");
	} else if (strcmp(c, "cancel") == 0 && argc == 1) {
		mfd_migrate_cancel(vmm.m);
		reply(fd, "ok");
	} else if (strcmp(c, "stop") == 0 && argc == 1) {
		vm_pause(&vmm.vm);
		reply(fd, "ok");
	} else if (strcmp(c, "cont") == 0 && argc == 1) {
		enum mfd_state ms = mfd_migration_state(vmm.m);
		bool postcopy = ms == MFD_STATE_POSTCOPY_ACTIVE || ms == MFD_STATE_POSTCOPY_PAUSED ||
				ms == MFD_STATE_POSTCOPY_RECOVER;
		/* The guest runs on one side only: the source gave it away once the
		 * device state went out; the destination has it only from then on. */
		bool gone = !vmm.incoming && (ms == MFD_STATE_DEVICE || ms == MFD_STATE_COMPLETED ||
					      postcopy);
		bool not_yet = vmm.incoming && ms != MFD_STATE_COMPLETED && !postcopy;

		if (gone || not_yet) {
			reply(fd, "error: the migration is %s: the guest does not run here",
			      mfd_state_name(ms));
			return;
		}
		vm_resume(&vmm.vm);
		reply(fd, "ok");
	} else if (strcmp(c, "laps") == 0 && argc == 1) {
		reply(fd, "laps=%" PRIu64 " markers=%llu serial-bytes=%llu vcpu=%s",
		      vm_laps(&vmm.vm), (unsigned long long)atomic_load(&vmm.vm.serial_laps),
		      (unsigned long long)atomic_load(&vmm.vm.serial_bytes),
		      run_state_name(vm_state(&vmm.vm, NULL, 0)));
	} else if (strcmp(c, "check") == 0 && argc == 1) {
		char msg[256];

		if (vm_state(&vmm.vm, NULL, 0) == VCPU_RUNNING) {
			reply(fd, "fail: stop the guest first (stop)");
			return;
		}
		if (vm_ab_check(&vmm.vm, msg, sizeof(msg)) < 0)
			reply(fd, "fail: %s", msg);
		else
			reply(fd, "%s", msg);
	} else if (strcmp(c, "recover") == 0 && argc == 2 && vmm.incoming) {
		/* A paused postcopy: listen for the source to come back. */
		if (mfd_migrate_recover(vmm.m, argv[1], &err) < 0)
			reply_err(fd, err);
		else
			reply(fd, "ok");
	} else if (strcmp(c, "resume") == 0 && argc == 2 && !vmm.incoming) {
		/* A paused postcopy: reconnect to the destination's recover URI. */
		if (mfd_migrate_resume(vmm.m, argv[1], &err) < 0)
			reply_err(fd, err);
		else
			reply(fd, "ok");
	} else if ((strcmp(c, "recover") == 0 || strcmp(c, "resume") == 0) && argc == 2) {
		reply(fd, "error: %s is the %s's command", c,
		      strcmp(c, "recover") == 0 ? "destination" : "source");
	} else if (strcmp(c, "dump") == 0 && argc == 2) {
		if (vm_state(&vmm.vm, NULL, 0) == VCPU_RUNNING) {
			reply(fd, "fail: stop the guest first (stop)");
			return;
		}
		if (vm_dump(&vmm.vm, argv[1], &err) < 0)
			reply_err(fd, err);
		else
			reply(fd, "ok %s", argv[1]);
	} else if (strcmp(c, "quit") == 0 && argc == 1) {
		reply(fd, "ok");
		pthread_kill(vmm.main_thread, SIGTERM);
	} else {
		reply(fd, "error: unknown command or wrong arguments: '%s' (migrate URI | wait "
		      "[MS] | stats | state | uri | set NAME VALUE | postcopy | cancel | stop | "
		      "cont | laps | check | quit)", c);
	}
}

/* The slot holding @fd (-1: a free slot), or -1.  clients_lock held. */
static int client_slot(int fd)
{
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (vmm.client_fds[i] == fd)
			return i;
	return -1;
}

/* Takes a slot for a new client; false when shutting down or full. */
static bool client_add(int fd, const char **why)
{
	int i;

	pthread_mutex_lock(&vmm.clients_lock);
	i = vmm.clients_closed ? -1 : client_slot(-1);
	if (i >= 0)
		vmm.client_fds[i] = fd;
	else
		*why = vmm.clients_closed ? "minivmm is shutting down"
					  : "too many control clients at once";
	pthread_mutex_unlock(&vmm.clients_lock);
	return i >= 0;
}

/* Whether any client is still being served.  clients_lock held. */
static bool clients_left(void)
{
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (vmm.client_fds[i] >= 0)
			return true;
	return false;
}

/* The client on @fd is finished with vmm (its socket is closed next, so
 * the number is still its own here). */
static void client_done(int fd)
{
	pthread_mutex_lock(&vmm.clients_lock);
	vmm.client_fds[client_slot(fd)] = -1;
	pthread_cond_broadcast(&vmm.clients_cond);
	pthread_mutex_unlock(&vmm.clients_lock);
}

static void *client_thread(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char line[LINE_MAX_LEN];
	size_t len = 0;

	while (len < sizeof(line) - 1) {
		ssize_t n = recv(fd, line + len, sizeof(line) - 1 - len, 0);

		if (n <= 0)
			break;
		len += (size_t)n;
		if (memchr(line, '\n', len))
			break;
	}
	line[len] = '\0';
	if (len == sizeof(line) - 1 && !memchr(line, '\n', len))
		reply(fd, "error: command longer than %d bytes", LINE_MAX_LEN - 2);
	else if (len)
		command(fd, line);
	client_done(fd);	/* before close: the number may be reused at once */
	close(fd);
	return NULL;
}

static void *control_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept4(vmm.control_fd, NULL, NULL, SOCK_CLOEXEC);
		const char *why = NULL;
		pthread_t t;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break;	/* shut down by control_stop() */
		}
		if (!client_add(fd, &why)) {
			reply(fd, "error: %s", why);
			close(fd);
			continue;
		}
		if (pthread_create(&t, NULL, client_thread, (void *)(intptr_t)fd) != 0) {
			reply(fd, "error: out of threads");
			client_done(fd);
			close(fd);
			continue;
		}
		pthread_detach(t);
	}
	return NULL;
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path)) {
		fprintf(stderr, "minivmm: socket path '%s' is longer than %zu bytes\n", path,
			sizeof(sa->sun_path) - 1);
		return -1;
	}
	strcpy(sa->sun_path, path);
	return 0;
}

static int control_start(const char *path)
{
	struct sockaddr_un sa;

	if (unix_addr(path, &sa) < 0)
		return -1;
	unlink(path);
	vmm.control_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (vmm.control_fd < 0 || bind(vmm.control_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(vmm.control_fd, 16) < 0) {
		fprintf(stderr, "minivmm: control socket %s: %s\n", path, strerror(errno));
		return -1;
	}
	vmm.control_path = path;
	if (pthread_create(&vmm.control_thread, NULL, control_thread, NULL) != 0) {
		fprintf(stderr, "minivmm: cannot start the control thread\n");
		return -1;
	}
	vmm.control_started = true;
	return 0;
}

/*
 * Stops accepting commands and waits until every client thread has
 * finished.  Called after the migration was cancelled, so that a client
 * waiting for it returns; a client still reading its command line is cut
 * off by shutting its socket down.
 */
static void control_stop(void)
{
	if (vmm.control_path)
		unlink(vmm.control_path);
	pthread_mutex_lock(&vmm.clients_lock);
	vmm.clients_closed = true;
	for (unsigned i = 0; i < MAX_CLIENTS; i++)
		if (vmm.client_fds[i] >= 0)
			shutdown(vmm.client_fds[i], SHUT_RD);
	pthread_mutex_unlock(&vmm.clients_lock);
	if (vmm.control_fd >= 0)
		shutdown(vmm.control_fd, SHUT_RDWR);	/* accept() returns EINVAL */
	if (vmm.control_started)
		pthread_join(vmm.control_thread, NULL);
	pthread_mutex_lock(&vmm.clients_lock);
	while (clients_left())
		pthread_cond_wait(&vmm.clients_cond, &vmm.clients_lock);
	pthread_mutex_unlock(&vmm.clients_lock);
	if (vmm.control_fd >= 0)
		close(vmm.control_fd);
	vmm.control_fd = -1;
}

/* ---- the control client ----------------------------------------------------------- */

/* Sends one command; the reply goes to @out (or stdout).  Returns 0 for a
 * reply that is not "error:" or "fail:", 1 otherwise, 2 when unreachable. */
static int ctl_send(const char *path, int argc, char **argv, char *out, size_t outlen)
{
	struct sockaddr_un sa;
	char cmd[LINE_MAX_LEN], buf[65536];
	size_t len = 0, got = 0;
	int fd;

	if (unix_addr(path, &sa) < 0)
		return 2;
	for (int i = 0; i < argc; i++) {
		int n = snprintf(cmd + len, sizeof(cmd) - len, "%s%s", i ? " " : "", argv[i]);

		if (n < 0 || (size_t)n >= sizeof(cmd) - len - 1) {
			fprintf(stderr, "minivmm ctl: command too long\n");
			return 2;
		}
		len += (size_t)n;
	}
	cmd[len++] = '\n';
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "minivmm ctl: %s: %s (is minivmm running with --control?)\n", path,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return 2;
	}
	if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len) {
		fprintf(stderr, "minivmm ctl: %s: %s\n", path, strerror(errno));
		close(fd);
		return 2;
	}
	for (;;) {
		ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);

		if (n <= 0 || (got += (size_t)n) == sizeof(buf) - 1)
			break;
	}
	close(fd);
	buf[got] = '\0';
	if (got == 0) {
		fprintf(stderr, "minivmm ctl: %s: no reply (the VMM exited?)\n", path);
		return 2;
	}
	if (out)
		snprintf(out, outlen, "%s", buf);
	else
		fputs(buf, stdout);
	return strncmp(buf, "error:", 6) == 0 || strncmp(buf, "fail:", 5) == 0;
}

static int cmd_ctl(int argc, char **argv)
{
	if (argc < 3) {
		usage(stderr);
		return 2;
	}
	return ctl_send(argv[1], argc - 2, argv + 2, NULL, 0);
}

static int cmd_migrate(int argc, char **argv)
{
	char *mig[] = { "migrate", NULL }, *wait[] = { "wait" };
	char out[65536];
	int r;

	if (argc != 3) {
		fprintf(stderr, "usage: minivmm migrate SOCKET URI\n");
		return 2;
	}
	mig[1] = argv[2];
	r = ctl_send(argv[1], 2, mig, out, sizeof(out));
	if (r) {
		fputs(out, stderr);
		return r;
	}
	r = ctl_send(argv[1], 1, wait, out, sizeof(out));
	fputs(out, r ? stderr : stdout);
	if (r == 0 && !strstr(out, "\"status\": \"completed\""))
		r = 1;
	return r;
}

/* ---- run, incoming, mkimage ------------------------------------------------------------ */

struct opts {
	const char *image, *serial, *control, *out;
	uint64_t ram_mib, slot_mib, ws_mib, delay;
	bool ws_set, delay_set, verbose, memfd, paused, prealloc;
	enum vm_dirty_mode dirty_mode;
	const char *params[MAX_PARAMS];
	unsigned nparams;
};

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "ram", required_argument, NULL, 'm' },
		{ "slot-mib", required_argument, NULL, 'S' },
		{ "ws", required_argument, NULL, 'w' },
		{ "delay", required_argument, NULL, 'd' },
		{ "serial", required_argument, NULL, 's' },
		{ "control", required_argument, NULL, 'c' },
		{ "param", required_argument, NULL, 'p' },
		{ "output", required_argument, NULL, 'o' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "memfd", no_argument, NULL, 'F' },
		{ "paused", no_argument, NULL, 'P' },
		{ "prealloc", no_argument, NULL, 'A' },
		{ "dirty-log", required_argument, NULL, 'D' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	o->ram_mib = 256;
	optind = 1;
	while ((c = getopt_long(argc, argv, "o:vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': o->image = optarg; break;
		case 's': o->serial = optarg; break;
		case 'c': o->control = optarg; break;
		case 'o': o->out = optarg; break;
		case 'v': o->verbose = true; break;
		case 'F': o->memfd = true; break;
		case 'P': o->paused = true; break;
		case 'A': o->prealloc = true; break;
		case 'D':
			if (strcmp(optarg, "auto") == 0) {
				o->dirty_mode = VM_DIRTY_AUTO;
			} else if (strcmp(optarg, "classic") == 0) {
				o->dirty_mode = VM_DIRTY_CLASSIC;
			} else if (strcmp(optarg, "manual") == 0) {
				o->dirty_mode = VM_DIRTY_MANUAL;
			} else if (strcmp(optarg, "ring") == 0) {
				o->dirty_mode = VM_DIRTY_RING;
			} else {
				fprintf(stderr, "minivmm: --dirty-log auto|classic|manual|ring, not '%s'\n",
					optarg);
				return -1;
			}
			break;
		case 'm':
			if (parse_u64("--ram", optarg, VM_RAM_MAX_MIB, &o->ram_mib) < 0)
				return -1;
			break;
		case 'S':
			if (parse_u64("--slot-mib", optarg, VM_RAM_MAX_MIB, &o->slot_mib) < 0)
				return -1;
			break;
		case 'w':
			if (parse_u64("--ws", optarg, VM_RAM_MAX_MIB, &o->ws_mib) < 0)
				return -1;
			o->ws_set = true;
			break;
		case 'd':
			if (parse_u64("--delay", optarg, UINT32_MAX, &o->delay) < 0)
				return -1;
			o->delay_set = true;
			break;
		case 'p':
			if (o->nparams == MAX_PARAMS || !strchr(optarg, '=')) {
				fprintf(stderr, "minivmm: --param NAME=VALUE (at most %d), not '%s'\n",
					MAX_PARAMS, optarg);
				return -1;
			}
			o->params[o->nparams++] = optarg;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (o->ws_set && (o->ws_mib < 2 || o->ws_mib > o->ram_mib)) {
		fprintf(stderr, "minivmm: --ws %" PRIu64 " MiB must be from 2 to the RAM size (%"
			PRIu64 " MiB)\n", o->ws_mib, o->ram_mib);
		return -1;
	}
	return 0;
}

static int cmd_mkimage(int argc, char **argv)
{
	struct opts o = { 0 };
	uint8_t img[BOOT_SIZE];
	FILE *f;

	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	if (!o.out || optind != argc) {
		fprintf(stderr, "usage: minivmm mkimage [--image IN] [--ws MIB] [--delay N] -o OUT\n");
		return 2;
	}
	if (o.image) {
		if (read_image(o.image, img) < 0)
			return 1;
	} else {
		memcpy(img, minivmm_guest, BOOT_SIZE);
	}
	if (!image_is_ours(img)) {
		fprintf(stderr, "minivmm: %s has no minivmm parameter block to set\n", o.image);
		return 1;
	}
	set_knobs(img, o.ws_set ? o.ws_mib : 256, o.delay);
	f = fopen(o.out, "wb");
	if (!f || fwrite(img, 1, BOOT_SIZE, f) != BOOT_SIZE || fclose(f) != 0) {
		fprintf(stderr, "minivmm: %s: %s\n", o.out, strerror(errno));
		return 1;
	}
	return 0;
}

static void log_handler(int level, const char *msg, void *opaque)
{
	(void)level;
	(void)opaque;
	fprintf(stderr, "libmultifd: %s\n", msg);
}

static bool migration_over(enum mfd_state st)
{
	return st == MFD_STATE_NONE || st == MFD_STATE_COMPLETED || st == MFD_STATE_FAILED ||
	       st == MFD_STATE_CANCELLED;
}

/*
 * Quitting ends any migration.  In postcopy a first cancel only pauses it
 * (the guest's memory is split between the hosts): quitting loses the guest
 * anyway, so cancel again until it is over, for ten seconds at most.
 */
static void migration_end(void)
{
	if (!vmm.m)
		return;
	for (int i = 0; i < 100 && !migration_over(mfd_migration_state(vmm.m)); i++) {
		mfd_migrate_cancel(vmm.m);
		mfd_migration_wait(vmm.m, 100, NULL);
	}
}

/* The incoming migration's outcome, reported from a thread of its own. */
static void *incoming_waiter(void *arg)
{
	mfd_error *err = NULL;

	(void)arg;
	if (mfd_migration_wait(vmm.m, 0, &err) < 0) {
		fprintf(stderr, "minivmm: incoming migration failed: %s\n",
			err ? mfd_error_message(err) : "unknown error");
		mfd_error_free(err);
		atomic_store(&vmm.exit_status, 1);
		pthread_kill(vmm.main_thread, SIGTERM);
	} else {
		fprintf(stderr, "minivmm: incoming migration completed; %s\n",
			vmm.vm.start_paused ? "the guest waits for cont (--paused)" : "the guest runs");
	}
	return NULL;
}

static int cmd_run(int argc, char **argv, bool incoming)
{
	struct opts o = { 0 };
	struct vm_config cfg = { 0 };
	mfd_error *err = NULL;
	sigset_t set;
	uint8_t img[BOOT_SIZE];
	const char *uri = NULL;
	pthread_t waiter;
	bool waiter_started = false;
	int sig, r;

	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	if (incoming) {
		if (optind != argc - 1) {
			fprintf(stderr, "usage: minivmm incoming URI [OPTIONS]\n");
			return 2;
		}
		uri = argv[optind];
		if (o.image || o.ws_set || o.delay_set) {
			fprintf(stderr, "minivmm incoming: --image, --ws and --delay belong to the "
				"source; the guest arrives with the migration\n");
			return 2;
		}
	} else if (optind != argc) {
		fprintf(stderr, "minivmm run: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!incoming) {
		if (o.image) {
			if (read_image(o.image, img) < 0)
				return 1;
		} else {
			memcpy(img, minivmm_guest, BOOT_SIZE);
		}
		vmm.own_guest = image_is_ours(img);
		if ((o.ws_set || o.delay_set) && !vmm.own_guest) {
			fprintf(stderr, "minivmm: --ws and --delay need minivmm's guest; %s has no "
				"parameter block\n", o.image);
			return 2;
		}
		if (vmm.own_guest)
			set_knobs(img, o.ws_set ? o.ws_mib : o.ram_mib, o.delay);
	}

	/* Signals for the main thread only; every thread inherits the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	vmm.main_thread = pthread_self();
	pthread_mutex_init(&vmm.mig_lock, NULL);
	for (unsigned i = 0; i < MAX_CLIENTS; i++)
		vmm.client_fds[i] = -1;
	vmm.incoming = incoming;
	if (o.verbose)
		mfd_log_set_handler(log_handler, NULL, MFD_LOG_INFO);

	cfg.ram_mib = o.ram_mib;
	cfg.slot_mib = o.slot_mib;
	cfg.serial_path = o.serial;
	cfg.verbose = o.verbose;
	cfg.memfd = o.memfd;
	cfg.prealloc = o.prealloc;
	cfg.dirty_mode = o.dirty_mode;
	if (o.paused && !incoming) {
		fprintf(stderr, "minivmm run: --paused is for incoming (a guest that arrives by "
			"migration); run starts its guest at once\n");
		return 2;
	}
	r = vm_create(&vmm.vm, &cfg, &err);
	vmm.vm.start_paused = o.paused;
	if (r == 0 && !incoming)
		r = vm_load_boot(&vmm.vm, img, BOOT_SIZE, &err);
	if (r == 0)
		r = mfd_migration_new(&vmm.m, &err);
	if (r == 0)
		r = vm_register(&vmm.vm, vmm.m, incoming, &err);
	if (r == 0 && o.verbose)
		fprintf(stderr, "minivmm: guest RAM %s, dirty log %s\n",
			o.memfd ? "in memfds" : "anonymous",
			vmm.vm.dirty_mode == VM_DIRTY_MANUAL ? "manual (KVM_CLEAR_DIRTY_LOG)" :
			vmm.vm.dirty_mode == VM_DIRTY_RING ? "ring (KVM_CAP_DIRTY_LOG_RING)" :
							     "classic");
	for (unsigned i = 0; r == 0 && i < o.nparams; i++) {
		char name[128];
		const char *eq = strchr(o.params[i], '=');
		size_t n = (size_t)(eq - o.params[i]);

		if (n >= sizeof(name)) {
			r = mfd_error_set(&err, MFD_EINVAL, "minivmm: parameter name too long");
			break;
		}
		memcpy(name, o.params[i], n);
		name[n] = '\0';
		r = mfd_set_param(vmm.m, name, eq + 1, &err);
	}
	if (r == 0)
		r = vm_start_vcpu(&vmm.vm, !incoming, &err);
	if (r == 0 && incoming)
		r = mfd_migrate_incoming(vmm.m, uri, &err);
	if (r < 0) {
		r = die(err);
		goto out;
	}
	if (o.control && control_start(o.control) < 0) {
		r = 1;
		goto out;
	}
	if (incoming) {
		char where[256] = "";

		mfd_migration_listen_uri(vmm.m, where, sizeof(where));
		fprintf(stderr, "minivmm: waiting for a migration on %s\n", where[0] ? where : uri);
		if (pthread_create(&waiter, NULL, incoming_waiter, NULL) == 0)
			waiter_started = true;
	}
	do {
		r = sigwait(&set, &sig);
	} while (r != 0);
	r = 0;
out:
	/* Nothing may touch vmm.m or the VM once they are freed: end the
	 * migration, then every thread that might still call into either. */
	migration_end();
	control_stop();
	if (waiter_started)
		pthread_join(waiter, NULL);
	if (r == 0)
		r = atomic_load(&vmm.exit_status);
	vm_pause(&vmm.vm);
	mfd_migration_free(vmm.m);
	vm_destroy(&vmm.vm);
	return r;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "run") == 0)
		return cmd_run(argc - 1, argv + 1, false);
	if (strcmp(argv[1], "incoming") == 0)
		return cmd_run(argc - 1, argv + 1, true);
	if (strcmp(argv[1], "ctl") == 0)
		return cmd_ctl(argc - 1, argv + 1);
	if (strcmp(argv[1], "migrate") == 0)
		return cmd_migrate(argc - 1, argv + 1);
	if (strcmp(argv[1], "mkimage") == 0)
		return cmd_mkimage(argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "minivmm: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
