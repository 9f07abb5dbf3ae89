/* SPDX-License-Identifier: MIT */
/*
 * multifd demo: a live migration between two processes on loopback, then a
 * byte-for-byte verification.
 *
 * The demo process is the source.  It starts the destination by running
 * itself again as `multifd recv --listen tcp:127.0.0.1:0 --report-fd 3`,
 * which reports its port, and at the end the checksum of every page it
 * received, through a pipe.  Two threads keep writing the source guest while
 * it migrates; at switchover they stop, and the source's memory must then be
 * exactly what the destination loaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

#define DEMO_SIZE ((uint64_t)1024 << 20)
#define DEMO_DIRTY_RATE 64.0
#define DEMO_SEED 0x6d756c7469666400ull
#define REPORT_FD 3
#define MAX_LISTED 8	/* differing pages named in a failure */

struct demo_opts {
	struct common_opts c;
	uint64_t size;
	double dirty_rate;
	bool tls_psk;
};

struct demo {
	struct demo_opts o;
	struct source src;
	pid_t child;
	FILE *report;		/* the destination's report pipe */
	char psk_dir[256], psk_file[300];
	char uri[512];
	uint8_t *first_bytes;	/* every page's first byte before the guest ran */
};

#define DEMO_SYNOPSIS \
	"usage: multifd demo [--size SIZE] [--dirty-rate MIB] [--channels N]\n" \
	"                    [--compression CODEC] [--tls psk] [--param NAME=VALUE]...\n" \
	"                    [--json] [-q] [-v]\n"

static void demo_usage(FILE *f)
{
	fprintf(f, DEMO_SYNOPSIS
		"\n"
		"Live-migrate a synthetic guest (about half zero pages, a quarter text-like, a\n"
		"quarter random) from this process to a destination process on loopback while\n"
		"two threads keep writing it, then verify that the destination holds exactly\n"
		"the source's memory and CPU state at the moment of switchover.\n"
		"\n"
		"  --size SIZE            guest RAM: N MiB, or N with a K, M or G suffix\n"
		"                         (default 1024 MiB)\n"
		"  --dirty-rate MIB       MiB/s the two guest threads write while it\n"
		"                         migrates (default 64; 0 = a stopped guest)\n"
		"  --tls psk              encrypt every channel with TLS 1.3 and a random\n"
		"                         pre-shared key made for this run ('none': off)\n"
		"%s%s"
		"\n"
		"Parameters apply to both sides.  Exit status: 0 verified, 1 failed or\n"
		"differs, 2 bad options.\n", params_help, output_help);
}

static int demo_parse(int argc, char **argv, struct demo_opts *o)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "dirty-rate", required_argument, NULL, 'd' },
		{ "tls", required_argument, NULL, 't' },
		PARAM_LONG_OPTIONS, OUTPUT_LONG_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	int c, r;

	while ((c = getopt_long(argc, argv, SHORT_OPTIONS, opts, NULL)) != -1) {
		if (c == 's') {
			if (parse_guest_size("demo", optarg, &o->size) < 0)
				return EXIT_USAGE;
		} else if (c == 'd') {
			if (parse_double("demo", "--dirty-rate", optarg, 0, 1e6, &o->dirty_rate) < 0)
				return EXIT_USAGE;
		} else if (c == 't') {
			if (strcmp(optarg, "psk") && strcmp(optarg, "none"))
				return usage_error("demo", "--tls '%s': use psk or none (x509: "
						   "--param tls-creds=DIR)", optarg);
			o->tls_psk = !strcmp(optarg, "psk");
		} else if (c == 'h') {
			demo_usage(stdout);
			return PARSE_HELP;
		} else if ((r = common_option(&o->c, "demo", c, optarg)) <= 0) {
			return r < 0 ? EXIT_USAGE : bad_option("demo", DEMO_SYNOPSIS, c, argv);
		}
	}
	if (optind != argc)
		return usage_error("demo", "unexpected argument '%s'", argv[optind]);
	return 0;
}

/* ---- a pre-shared key for this run only ------------------------------------------ */

static int psk_create(struct demo *d, mfd_error **errp)
{
	const char *tmp = getenv("TMPDIR");
	uint8_t key[32];
	char line[128];
	int fd, n;

	snprintf(d->psk_dir, sizeof(d->psk_dir), "%s/multifd-demo-XXXXXX",
		 tmp && tmp[0] ? tmp : "/tmp");
	/* mkdtemp makes the directory 0700: only this user can read the key. */
	if (!mkdtemp(d->psk_dir)) {
		d->psk_dir[0] = 0;
		return mfd_error_set(errp, MFD_EIO, "cannot create a private directory for "
				     "the PSK: %s", strerror(errno));
	}
	if (getrandom(key, sizeof(key), 0) != (ssize_t)sizeof(key))
		return mfd_error_set(errp, MFD_EIO, "getrandom: %s", strerror(errno));
	n = snprintf(line, sizeof(line), "multifd-demo:");
	for (size_t i = 0; i < sizeof(key); i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, "%02x", key[i]);
	line[n++] = '\n';
	snprintf(d->psk_file, sizeof(d->psk_file), "%s/psk.txt", d->psk_dir);
	fd = open(d->psk_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, line, (size_t)n) != n || close(fd) < 0)
		return mfd_error_set(errp, MFD_EIO, "%s: %s", d->psk_file, strerror(errno));
	return param_add(&d->o.c.params, "demo", "tls-psk-file", d->psk_file) < 0 ? MFD_EINVAL : 0;
}

static void psk_remove(struct demo *d)
{
	if (d->psk_file[0])
		unlink(d->psk_file);
	if (d->psk_dir[0])
		rmdir(d->psk_dir);
}

/* ---- the destination process ----------------------------------------------------- */

static void free_argv(char **argv, size_t n)
{
	for (size_t i = 0; argv && i < n; i++)
		free(argv[i]);
	free(argv);
}

/* argv for `multifd recv`, built before fork: the child may only exec. */
static char **dest_argv(const struct demo *d, size_t *count)
{
	const struct param_list *p = &d->o.c.params;
	size_t max = 16 + (size_t)p->n, n = 0;
	char **argv = calloc(max, sizeof(*argv));
	char size[32], fd[32];
	bool ok = true;

	if (!argv)
		return NULL;
	snprintf(size, sizeof(size), "--size=%" PRIu64 "K", d->o.size >> 10);
	snprintf(fd, sizeof(fd), "--report-fd=%d", REPORT_FD);
	argv[n++] = strdup("multifd");
	argv[n++] = strdup("recv");
	argv[n++] = strdup("--listen=tcp:127.0.0.1:0");
	argv[n++] = strdup(size);
	argv[n++] = strdup(fd);
	argv[n++] = strdup("--quiet");
	for (int v = 0; v < d->o.c.verbose && v < 2; v++)
		argv[n++] = strdup("--verbose");
	for (unsigned i = 0; i < p->n; i++)
		if (asprintf(&argv[n++], "--param=%s=%s", p->name[i], p->value[i]) < 0)
			argv[n - 1] = NULL;
	for (size_t i = 0; i < n; i++)
		ok = ok && argv[i];
	*count = n;
	if (!ok) {
		free_argv(argv, n);
		return NULL;
	}
	return argv;
}

static int dest_spawn(struct demo *d, mfd_error **errp)
{
	size_t argc = 0;
	char **argv = dest_argv(d, &argc);
	pid_t parent = getpid();
	int fds[2];

	if (!argv || pipe2(fds, O_CLOEXEC) < 0) {
		free_argv(argv, argc);
		return mfd_error_set(errp, MFD_ENOMEM, "cannot prepare the destination process");
	}
	d->child = fork();
	if (d->child == 0) {
		/* The destination must not outlive an interrupted demo, even one
		 * that died before the request took effect. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() == parent && dup2(fds[1], REPORT_FD) == REPORT_FD)
			execv("/proc/self/exe", argv);
		_exit(127);
	}
	free_argv(argv, argc);
	close(fds[1]);
	if (d->child < 0) {
		close(fds[0]);
		return mfd_error_set(errp, MFD_EIO, "fork: %s", strerror(errno));
	}
	d->report = fdopen(fds[0], "r");
	if (!d->report) {
		close(fds[0]);
		return mfd_error_set(errp, MFD_ENOMEM, "fdopen: %s", strerror(errno));
	}
	return 0;
}

static const char *child_status(pid_t pid, char *buf, size_t len)
{
	int status;

	if (waitpid(pid, &status, 0) < 0)
		snprintf(buf, len, "was lost (%s)", strerror(errno));
	else if (WIFEXITED(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else
		snprintf(buf, len, "was killed by signal %d", WTERMSIG(status));
	return buf;
}

static int dest_wait_listening(struct demo *d, mfd_error **errp)
{
	char line[600], status[64];
	size_t len;

	if (!fgets(line, sizeof(line), d->report) || strncmp(line, "listen ", 7)) {
		child_status(d->child, status, sizeof(status));
		d->child = 0;
		return mfd_error_set(errp, MFD_EIO, "the destination process %s before "
				     "listening", status);
	}
	len = strcspn(line + 7, "\n");
	snprintf(d->uri, sizeof(d->uri), "%.*s", (int)len, line + 7);
	return 0;
}

/* After a failure: the destination cancels on SIGTERM, and a closed pipe
 * ends a report it may be blocked writing. */
static void dest_stop(struct demo *d)
{
	char status[64];

	if (d->child > 0)
		kill(d->child, SIGTERM);
	if (d->report)
		fclose(d->report);
	d->report = NULL;
	if (d->child > 0)
		child_status(d->child, status, sizeof(status));
	d->child = 0;
}

/* After its report: the destination must end cleanly too. */
static int dest_finish(struct demo *d)
{
	char status[64];
	pid_t pid = d->child;

	d->child = 0;
	child_status(pid, status, sizeof(status));
	if (strcmp(status, "exited with status 0")) {
		fprintf(stderr, "multifd demo: the destination process %s\n", status);
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* ---- verification ------------------------------------------------------------------ */

struct dest_result {
	struct report_header h;
	uint64_t *sums;
	uint8_t *first;
};

static int dest_read_result(struct demo *d, struct dest_result *res, mfd_error **errp)
{
	uint64_t n = guest_pages(&d->src.g);
	char status[64];

	if (fread(&res->h, sizeof(res->h), 1, d->report) != 1 || res->h.magic != REPORT_MAGIC) {
		child_status(d->child, status, sizeof(status));
		d->child = 0;
		return mfd_error_set(errp, MFD_EIO, "the destination process %s without a "
				     "report", status);
	}
	res->h.message[sizeof(res->h.message) - 1] = 0;
	if (res->h.result < 0)
		return mfd_error_set(errp, res->h.result, "destination: %s", res->h.message);
	if (res->h.npages != n)
		return mfd_error_set(errp, MFD_EPROTO, "the destination has %" PRIu64 " pages, the "
				     "source %" PRIu64, res->h.npages, n);
	res->sums = malloc(n * sizeof(*res->sums));
	res->first = malloc(n);
	if (!res->sums || !res->first)
		return mfd_error_set(errp, MFD_ENOMEM, "no memory for the destination's report");
	if (fread(res->sums, sizeof(*res->sums), n, d->report) != n ||
	    fread(res->first, 1, n, d->report) != n)
		return mfd_error_set(errp, MFD_EEOF, "the destination's report is truncated");
	return 0;
}

/* Pages whose checksum differs; names the first few. */
static uint64_t compare_pages(const uint64_t *src, const uint64_t *dst, uint64_t n,
			      char *list, size_t len)
{
	uint64_t bad = 0;
	size_t off = 0;

	list[0] = 0;
	for (uint64_t p = 0; p < n; p++) {
		if (src[p] == dst[p])
			continue;
		if (bad++ < MAX_LISTED && off < len)
			off += (size_t)snprintf(list + off, len - off, "%s%" PRIu64 " (offset 0x%"
						PRIx64 ")", bad > 1 ? ", " : "", p, p * GUEST_PAGE);
	}
	return bad;
}

/* The a-b invariant: each thread's pages before its position were written
 * once more than those after it, relative to the guest's initial bytes, as
 * the destination's own copy of the CPU state says. */
static uint64_t check_ab(const struct demo *d, const struct dest_result *res)
{
	uint64_t bad = 0;

	for (unsigned t = 0; t < DIRTY_THREADS; t++) {
		uint64_t first, end, pos = res->h.cpu.regs[2 * t], pass = res->h.cpu.regs[2 * t + 1];

		dirty_range(&d->src.g, t, &first, &end);
		for (uint64_t p = first; p < end; p++) {
			uint8_t want = (uint8_t)(d->first_bytes[p] + pass + (p < pos));

			bad += res->first[p] != want;
		}
	}
	return bad;
}

static void print_ab(const struct dest_result *res)
{
	printf("a-b check: every page's first byte matches the vCPU positions in the\n"
	       "           migrated CPU state (");
	for (unsigned t = 0; t < DIRTY_THREADS; t++)
		printf("%sthread %u: pass %" PRIu64 ", page %" PRIu64, t ? "; " : "", t,
		       res->h.cpu.regs[2 * t + 1], res->h.cpu.regs[2 * t]);
	printf(")\n");
}

static int verify(struct demo *d, const struct dest_result *res)
{
	uint64_t n = guest_pages(&d->src.g);
	uint64_t *sums = malloc(n * sizeof(*sums));
	uint64_t bad, ab;
	bool cpu_ok;
	double downtime = (res->h.started_at - d->src.stopped_at) * 1e3;
	char list[512];

	if (!sums) {
		fprintf(stderr, "multifd demo: no memory to verify\n");
		return EXIT_FAIL;
	}
	/* The source guest is still stopped: its memory is the switchover image. */
	guest_checksums(&d->src.g, sums);
	bad = compare_pages(sums, res->sums, n, list, sizeof(list));
	free(sums);
	cpu_ok = !memcmp(&res->h.cpu, &d->src.g.cpu, sizeof(res->h.cpu));
	ab = check_ab(d, res);
	if (d->o.c.json) {
		printf("{\"demo\": {\"result\": \"%s\", \"pages\": %" PRIu64 ", \"differing-pages\": %"
		       PRIu64 ", \"cpu-state\": \"%s\", \"ab-violations\": %" PRIu64
		       ", \"stop-to-start-ms\": %.1f}}\n", bad || !cpu_ok || ab ? "failed" : "verified",
		       n, bad, cpu_ok ? "identical" : "different", ab, downtime);
	} else {
		printf("  %-16s %.1f ms (source vCPUs stopped -> destination running)\n",
		       "stop to start", downtime);
		if (bad == 0)
			printf("verified: %" PRIu64 " pages identical (%" PRIu64 " MiB)\n", n,
			       d->src.g.size >> 20);
		if (cpu_ok)
			printf("verified: CPU state identical\n");
		if (ab == 0)
			print_ab(res);
	}
	if (bad)
		fprintf(stderr, "multifd demo: VERIFY FAILED: %" PRIu64 " of %" PRIu64 " pages differ: "
			"%s%s\n", bad, n, list, bad > MAX_LISTED ? ", ..." : "");
	if (!cpu_ok)
		fprintf(stderr, "multifd demo: VERIFY FAILED: the CPU state differs\n");
	if (ab)
		fprintf(stderr, "multifd demo: VERIFY FAILED: a-b invariant broken on %" PRIu64
			" page%s\n", ab, ab == 1 ? "" : "s");
	return bad || !cpu_ok || ab ? EXIT_FAIL : EXIT_OK;
}

/* ---- the run --------------------------------------------------------------------- */

static int demo_prepare(struct demo *d, mfd_error **errp)
{
	struct source *s = &d->src;
	int r;

	if (d->o.tls_psk && (r = psk_create(d, errp)) < 0)
		return r;
	s->postcopy_after = d->o.c.postcopy_after;
	if ((r = guest_alloc(&s->g, d->o.size, errp)) < 0 || (r = source_setup(s, errp)) < 0)
		return r;
	/* Parameters are checked here, before a second process repeats the
	 * complaint. */
	if ((r = params_apply(&d->o.c.params, s->m, errp)) < 0)
		return EXIT_USAGE;
	if ((r = dest_spawn(d, errp)) < 0)
		return r;
	/* The destination starts while the source guest is being filled. */
	if ((r = guest_fill(&s->g, DEMO_SEED, errp)) < 0)
		return r;
	d->first_bytes = malloc(guest_pages(&s->g));
	if (!d->first_bytes)
		return mfd_error_set(errp, MFD_ENOMEM, "no memory for the a-b check");
	for (uint64_t p = 0; p < guest_pages(&s->g); p++)
		d->first_bytes[p] = s->g.ram[p * GUEST_PAGE];
	return dest_wait_listening(d, errp);
}

static int demo_run(struct demo *d)
{
	struct dest_result res = { 0 };
	struct progress p;
	mfd_error *err = NULL;
	char what[768];
	int r;

	if ((r = demo_prepare(d, &err)) != 0)
		return r == EXIT_USAGE ? (report_error("demo", err), EXIT_USAGE)
				       : report_error("demo", err);
	snprintf(what, sizeof(what), "%" PRIu64 " MiB guest written at %g MiB/s, destination "
		 "pid %d at %s", d->o.size >> 20, d->o.dirty_rate, (int)d->child, d->uri);
	print_params("demo", d->src.m, what, d->o.c.quiet || d->o.c.json);
	progress_init(&p, "source", d->o.c.quiet, d->o.c.json);
	if (source_run(&d->src, d->uri, d->o.dirty_rate, &p, NULL, &err) < 0)
		return source_failed(&d->src, "demo", err);
	print_summary(d->src.m, &p, stdout);
	print_throttle(&d->src, &p);
	if (dest_read_result(d, &res, &err) < 0)
		r = report_error("demo", err);
	else if ((r = verify(d, &res)) == EXIT_OK)
		r = dest_finish(d);
	free(res.sums);
	free(res.first);
	return r;
}

int cmd_demo(int argc, char **argv)
{
	struct demo d = { .o = { .size = DEMO_SIZE, .dirty_rate = DEMO_DIRTY_RATE } };
	int r = demo_parse(argc, argv, &d.o);

	if (r != 0) {
		params_free(&d.o.c.params);
		return r == PARSE_HELP ? EXIT_OK : r;
	}
	log_setup(log_verbosity(d.o.c.quiet, d.o.c.verbose));
	signals_setup();
	r = demo_run(&d);
	dest_stop(&d);
	source_free(&d.src);
	psk_remove(&d);
	free(d.first_bytes);
	params_free(&d.o.c.params);
	return r;
}
