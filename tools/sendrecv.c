/* SPDX-License-Identifier: MIT */
/*
 * multifd send / multifd recv: the two ends of a migration of a synthetic
 * guest or a memory image, like iperf for migration.  The source and
 * destination helpers here are also what `multifd demo` runs.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define DEFAULT_SIZE ((uint64_t)1024 << 20)
#define DEFAULT_LISTEN "tcp:0.0.0.0:4444"
#define GUEST_SEED 0x6d756c7469666400ull

/* ---- source ------------------------------------------------------------------- */

static int source_vm_stop(void *opaque, mfd_error **errp)
{
	struct source *s = opaque;

	(void)errp;
	dirtier_pause(&s->dirtier);
	s->stopped_at = s->dirtier.stopped_at;
	return 0;
}

static int source_vm_start(void *opaque, mfd_error **errp)
{
	struct source *s = opaque;

	(void)errp;
	s->restarts++;
	dirtier_resume(&s->dirtier);
	return 0;
}

/* Auto-converge: the writer threads run @percent slower. */
static void source_throttle(void *opaque, int percent)
{
	struct source *s = opaque;

	s->throttled = percent > s->throttled ? percent : s->throttled;
	dirtier_throttle(&s->dirtier, percent);
}

/* --postcopy=N: precopy for N passes, then postcopy. */
static int source_policy(void *opaque, const struct mfd_policy_info *info)
{
	const struct source *s = opaque;

	return info->iteration >= s->postcopy_after ? MFD_POLICY_POSTCOPY : 0;
}

int source_setup(struct source *s, mfd_error **errp)
{
	static const mfd_vmm_hooks hooks = {
		.size = sizeof(mfd_vmm_hooks),
		.vm_stop = source_vm_stop,
		.vm_start = source_vm_start,
		.throttle = source_throttle,
	};
	static const mfd_vmm_hooks postcopy_hooks = {
		.size = sizeof(mfd_vmm_hooks),
		.vm_stop = source_vm_stop,
		.vm_start = source_vm_start,
		.throttle = source_throttle,
		.switchover_policy = source_policy,
	};
	int r = mfd_migration_new(&s->m, errp);

	if (r == 0)
		r = guest_register(&s->g, s->m, false, errp);
	if (r == 0)
		r = mfd_migration_set_hooks(s->m, s->postcopy_after ? &postcopy_hooks : &hooks, s,
					    errp);
	return r;
}

int source_run(struct source *s, const char *uri, double dirty_rate, struct progress *p,
	       struct recovery *rec, mfd_error **errp)
{
	int r;

	s->dirtier_started = true;
	if (dirtier_start(&s->dirtier, &s->g, s->m, dirty_rate) < 0)
		return mfd_error_set(errp, MFD_ENOMEM, "cannot start the dirtying threads");
	r = mfd_migrate(s->m, uri, errp);
	if (r == 0)
		r = wait_with_recovery(s->m, p, rec, errp);
	return r;
}

int source_failed(const struct source *s, const char *cmd, mfd_error *err)
{
	int r = report_error(cmd, err);

	/* The library's promise on failure: the source guest is running again. */
	if (s->restarts)
		fprintf(stderr, "multifd %s: the guest had been stopped for switchover; it runs "
			"again on the source\n", cmd);
	return r;
}

void print_throttle(const struct source *s, const struct progress *p)
{
	if (s->throttled > 0 && !p->json)
		printf("  %-16s up to %d%% (auto-converge)\n", "vCPU throttle", s->throttled);
}

void source_free(struct source *s)
{
	if (s->dirtier_started)
		dirtier_stop(&s->dirtier);
	s->dirtier_started = false;
	mfd_migration_free(s->m);
	s->m = NULL;
	guest_free(&s->g);
}

/* ---- destination -------------------------------------------------------------- */

static int dest_vm_start(void *opaque, mfd_error **errp)
{
	struct dest *d = opaque;

	(void)errp;
	d->started_at = now_s();
	return 0;
}

int dest_setup(struct dest *d, uint64_t size, mfd_error **errp)
{
	static const mfd_vmm_hooks hooks = {
		.size = sizeof(mfd_vmm_hooks),
		.vm_start = dest_vm_start,
	};
	int r = guest_alloc(&d->g, size, errp);

	if (r == 0)
		r = mfd_migration_new(&d->m, errp);
	if (r == 0)
		r = guest_register(&d->g, d->m, true, errp);
	if (r == 0)
		r = mfd_migration_set_hooks(d->m, &hooks, d, errp);
	return r;
}

int dest_listen(struct dest *d, const char *uri, mfd_error **errp)
{
	int r = mfd_migrate_incoming(d->m, uri, errp);

	if (r == 0 && mfd_migration_listen_uri(d->m, d->uri, sizeof(d->uri)) < 0)
		snprintf(d->uri, sizeof(d->uri), "%s", uri);
	return r;
}

void dest_free(struct dest *d)
{
	mfd_migration_free(d->m);
	d->m = NULL;
	guest_free(&d->g);
}

/* ---- shared option handling ---------------------------------------------------- */

/* Whether a string parameter is set, without caring how long it is. */
static bool param_is_set(mfd_migration *m, const char *name)
{
	char buf[2];
	int r = mfd_get_param(m, name, buf, sizeof(buf), NULL);

	return r == MFD_ETOOBIG || (r == 0 && buf[0]);
}

void print_params(const char *cmd, mfd_migration *m, const char *what, bool quiet)
{
	char channels[16] = "?", codec[64] = "?";

	if (quiet)
		return;
	mfd_get_param(m, "multifd-channels", channels, sizeof(channels), NULL);
	mfd_get_param(m, "multifd-compression", codec, sizeof(codec), NULL);
	fprintf(stderr, "multifd %s: %s, %s channels, compression %s, TLS %s\n", cmd, what,
		channels, codec, param_is_set(m, "tls-psk-file") ? "psk"
			       : param_is_set(m, "tls-creds") ? "x509" : "off");
}

/* ---- multifd send ------------------------------------------------------------- */

#define SEND_SYNOPSIS \
	"usage: multifd send --to URI [--size SIZE | --image FILE [--load]]\n" \
	"                    [--dirty-rate MIB] [--resume-to URI [--resume-attempts N]]\n" \
	"                    [--param NAME=VALUE]... [options]\n"

static void send_usage(FILE *f)
{
	fprintf(f, SEND_SYNOPSIS
		"\n"
		"Migrate a synthetic guest or a memory image to a 'multifd recv' listening at\n"
		"URI, then print the statistics.  Both ends must use the same size and the\n"
		"same multifd-channels, multifd-compression and TLS settings.\n"
		"\n"
		"  --to URI               where recv listens: tcp:HOST:PORT or unix:PATH\n"
		"                         (fd:N and file:PATH carry everything on one channel)\n"
		"  --size SIZE            synthetic guest RAM: N MiB, or N with a K, M or G\n"
		"                         suffix (default 1024 MiB)\n"
		"  --image FILE           migrate the contents of FILE instead (mapped\n"
		"                         copy-on-write, never modified; rounded up to whole\n"
		"                         MiB: give recv the --size this prints)\n"
		"  --load                 with --image: copy FILE into the guest's anonymous\n"
		"                         RAM (transparent huge pages, as a VMM's guest RAM)\n"
		"                         instead of mapping it from the page cache\n"
		"  --dirty-rate MIB       two threads keep writing the guest at MIB MiB/s\n"
		"                         while it migrates (default 0: a stopped guest)\n"
		"  --resume-to URI        postcopy: when the connection breaks (postcopy\n"
		"                         paused), reconnect to the recovery URI of the\n"
		"                         destination (recv --recover-listen), a second\n"
		"                         apart, until it resumes\n"
		"  --resume-attempts N    give up after N attempts per pause (1..1000,\n"
		"                         default 10): the guest, which runs on the\n"
		"                         destination, is then lost\n"
		"%s%s%s", params_help, tls_help, output_help);
}

struct send_opts {
	struct common_opts c;
	const char *to, *image, *resume_to;
	uint64_t size, resume_attempts;
	double dirty_rate;
	bool load, attempts_set;
};

/* 0 to run, PARSE_HELP after --help, EXIT_USAGE on an error. */
static int send_parse(int argc, char **argv, struct send_opts *o)
{
	static const struct option opts[] = {
		{ "to", required_argument, NULL, 't' },
		{ "size", required_argument, NULL, 's' },
		{ "image", required_argument, NULL, 'i' },
		{ "dirty-rate", required_argument, NULL, 'd' },
		{ "load", no_argument, NULL, 'L' },
		{ "resume-to", required_argument, NULL, OPT_RESUME_TO },
		{ "resume-attempts", required_argument, NULL, OPT_RESUME_ATTEMPTS },
		PARAM_LONG_OPTIONS, TLS_LONG_OPTIONS, OUTPUT_LONG_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	bool size_set = false;
	int c, r;

	while ((c = getopt_long(argc, argv, SHORT_OPTIONS, opts, NULL)) != -1) {
		if (c == 't') {
			o->to = optarg;
		} else if (c == 's') {
			if (parse_guest_size("send", optarg, &o->size) < 0)
				return EXIT_USAGE;
			size_set = true;
		} else if (c == 'i') {
			o->image = optarg;
		} else if (c == 'L') {
			o->load = true;
		} else if (c == 'd') {
			if (parse_double("send", "--dirty-rate", optarg, 0, 1e6, &o->dirty_rate) < 0)
				return EXIT_USAGE;
		} else if (c == OPT_RESUME_TO) {
			o->resume_to = optarg;
		} else if (c == OPT_RESUME_ATTEMPTS) {
			if (parse_u64("send", "--resume-attempts", optarg, 1, 1000,
				      &o->resume_attempts) < 0)
				return EXIT_USAGE;
			o->attempts_set = true;
		} else if (c == 'h') {
			send_usage(stdout);
			return PARSE_HELP;
		} else if ((r = common_option(&o->c, "send", c, optarg)) <= 0) {
			return r < 0 ? EXIT_USAGE : bad_option("send", SEND_SYNOPSIS, c, argv);
		}
	}
	if (optind != argc)
		return usage_error("send", "unexpected argument '%s'", argv[optind]);
	if (!o->to)
		return usage_error("send", "--to URI is required");
	if (o->image && size_set)
		return usage_error("send", "--size and --image exclude each other");
	if (o->load && !o->image)
		return usage_error("send", "--load needs --image FILE");
	if (o->attempts_set && !o->resume_to)
		return usage_error("send", "--resume-attempts needs --resume-to URI");
	if (!o->attempts_set)
		o->resume_attempts = 10;
	return 0;
}

/* Map or allocate the guest, register it, apply the parameters; the
 * synthetic content is written only once all of that was accepted. */
static int send_prepare(struct source *s, const struct send_opts *o)
{
	mfd_error *err = NULL;
	char what[600];
	int r = o->image && o->load ? guest_load_image(&s->g, o->image, &err)
		: o->image ? guest_map_image(&s->g, o->image, &err)
		: guest_alloc(&s->g, o->size, &err);

	s->postcopy_after = o->c.postcopy_after;
	if (r < 0 || source_setup(s, &err) < 0)
		return report_error("send", err);
	if (params_apply(&o->c.params, s->m, &err) < 0) {
		report_error("send", err);
		return EXIT_USAGE;
	}
	if (o->image) {
		snprintf(what, sizeof(what), "image %s (%" PRIu64 " bytes) as a %" PRIu64
			 " MiB guest (recv --size %" PRIu64 ") to %s", o->image, s->g.content_len,
			 s->g.size >> 20, s->g.size >> 20, o->to);
	} else {
		if (guest_fill(&s->g, GUEST_SEED, &err) < 0)
			return report_error("send", err);
		snprintf(what, sizeof(what), "%" PRIu64 " MiB synthetic guest to %s",
			 o->size >> 20, o->to);
	}
	print_params("send", s->m, what, o->c.quiet || o->c.json);
	return 0;
}

int cmd_send(int argc, char **argv)
{
	struct send_opts o = { .size = DEFAULT_SIZE };
	struct source s = { 0 };
	struct progress p;
	mfd_error *err = NULL;
	int r = send_parse(argc, argv, &o);

	if (r != 0) {
		r = r == PARSE_HELP ? EXIT_OK : r;
		goto out;
	}
	log_setup(log_verbosity(o.c.quiet, o.c.verbose));
	signals_setup();
	if ((r = send_prepare(&s, &o)) != 0)
		goto out;
	progress_init(&p, "source", o.c.quiet, o.c.json);
	struct recovery rec = { .cmd = "send", .resume_to = o.resume_to,
				.attempts = (unsigned)o.resume_attempts };

	if (source_run(&s, o.to, o.dirty_rate, &p, o.resume_to ? &rec : NULL, &err) < 0) {
		r = source_failed(&s, "send", err);
		goto out;
	}
	print_summary(s.m, &p, stdout);
	print_throttle(&s, &p);
	r = EXIT_OK;
out:
	source_free(&s);
	params_free(&o.c.params);
	return r;
}

/* ---- multifd recv ------------------------------------------------------------- */

#define RECV_SYNOPSIS \
	"usage: multifd recv [--listen URI] [--size SIZE] [--prealloc] [--out FILE]\n" \
	"                    [--recover-listen URI]\n" \
	"                    [--param NAME=VALUE]... [options]\n"

static void recv_usage(FILE *f)
{
	fprintf(f, RECV_SYNOPSIS
		"\n"
		"Wait for one 'multifd send' (or any libmultifd source migrating a RAM block\n"
		"\"" GUEST_RAM_NAME "\" and the tool's devices), receive the guest, print the\n"
		"statistics, and optionally write the received memory to a file.\n"
		"\n"
		"  --listen URI           where to listen: tcp:HOST:PORT (PORT 0 picks one),\n"
		"                         unix:PATH, fd:N, file:PATH (default " DEFAULT_LISTEN ")\n"
		"  --size SIZE            guest RAM: N MiB, or N with a K, M or G suffix;\n"
		"                         must match the sender's (default 1024 MiB)\n"
		"  --prealloc             fault all guest RAM in before listening (QEMU's\n"
		"                         prealloc=on); default: pages are touched as they\n"
		"                         arrive, and zero pages never\n"
		"  --out FILE             write the received memory to FILE (mode 0600, zero\n"
		"                         pages as holes; an image's exact length)\n"
		"  --recover-listen URI   postcopy: when the connection breaks (postcopy\n"
		"                         paused), listen on URI for the source to resume\n"
		"                         (send --resume-to); the guest keeps running on\n"
		"                         the pages it has meanwhile\n"
		"  --report-fd FD         for 'multifd demo': write \"listen URI\" and, at the\n"
		"                         end, a binary report with page checksums to FD\n"
		"%s%s%s", params_help, tls_help, output_help);
}

struct recv_opts {
	struct common_opts c;
	const char *listen, *out, *recover_listen;
	uint64_t size;
	int report_fd;
	bool prealloc;
};

static int recv_parse(int argc, char **argv, struct recv_opts *o)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "size", required_argument, NULL, 's' },
		{ "out", required_argument, NULL, 'o' },
		{ "report-fd", required_argument, NULL, 'r' },
		{ "prealloc", no_argument, NULL, 'P' },
		{ "recover-listen", required_argument, NULL, OPT_RECOVER_LISTEN },
		PARAM_LONG_OPTIONS, TLS_LONG_OPTIONS, OUTPUT_LONG_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	uint64_t fd;
	int c, r;

	while ((c = getopt_long(argc, argv, SHORT_OPTIONS, opts, NULL)) != -1) {
		if (c == 'l') {
			o->listen = optarg;
		} else if (c == 's') {
			if (parse_guest_size("recv", optarg, &o->size) < 0)
				return EXIT_USAGE;
		} else if (c == 'o') {
			o->out = optarg;
		} else if (c == 'P') {
			o->prealloc = true;
		} else if (c == OPT_RECOVER_LISTEN) {
			o->recover_listen = optarg;
		} else if (c == 'r') {
			if (parse_u64("recv", "--report-fd", optarg, 0, 1 << 20, &fd) < 0)
				return EXIT_USAGE;
			o->report_fd = (int)fd;
		} else if (c == 'h') {
			recv_usage(stdout);
			return PARSE_HELP;
		} else if ((r = common_option(&o->c, "recv", c, optarg)) <= 0) {
			return r < 0 ? EXIT_USAGE : bad_option("recv", RECV_SYNOPSIS, c, argv);
		}
	}
	if (optind != argc)
		return usage_error("recv", "unexpected argument '%s'", argv[optind]);
	return 0;
}

/* The demo's verification data: checksums and first bytes of every page. */
static void recv_report(struct dest *d, int fd, int result, const mfd_error *err)
{
	struct report_header h = { .magic = REPORT_MAGIC, .result = result };
	uint64_t n = guest_pages(&d->g);
	uint64_t *sums = NULL;
	uint8_t *first = NULL;

	if (result == 0) {
		sums = malloc(n * sizeof(*sums));
		first = malloc(n);
		if (!sums || !first) {
			h.result = MFD_ENOMEM;
			snprintf(h.message, sizeof(h.message), "no memory for %" PRIu64
				 " page checksums", n);
		}
	} else {
		snprintf(h.message, sizeof(h.message), "%s", mfd_error_message(err));
	}
	if (h.result == 0) {
		h.npages = n;
		h.started_at = d->started_at;
		h.cpu = d->g.cpu;
		guest_checksums(&d->g, sums);
		for (uint64_t p = 0; p < n; p++)
			first[p] = d->g.ram[p * GUEST_PAGE];
	}
	/* The demo reads until it has everything; a write error means it is gone. */
	if (write_full(fd, &h, sizeof(h)) == 0 && h.result == 0 &&
	    write_full(fd, sums, n * sizeof(*sums)) == 0)
		write_full(fd, first, n);
	free(sums);
	free(first);
}

static int recv_run(struct dest *d, const struct recv_opts *o, struct progress *p)
{
	mfd_error *err = NULL;
	char what[700];
	int r;

	if (dest_listen(d, o->listen, &err) < 0)
		goto fail;
	if (o->report_fd >= 0)
		dprintf(o->report_fd, "listen %s\n", d->uri);
	snprintf(what, sizeof(what), "listening on %s for a %" PRIu64 " MiB guest", d->uri,
		 d->g.size >> 20);
	print_params("recv", d->m, what, o->c.quiet || o->c.json);
	struct recovery rec = { .cmd = "recv", .listen = o->recover_listen };

	if (wait_with_recovery(d->m, p, o->recover_listen ? &rec : NULL, &err) < 0)
		goto fail;
	if (o->report_fd >= 0)
		recv_report(d, o->report_fd, 0, NULL);
	else
		print_summary(d->m, p, stdout);
	if (o->out && guest_write_image(&d->g, o->out, &err) < 0)
		return report_error("recv", err);
	if (o->out && !o->c.quiet && !o->c.json)
		fprintf(stderr, "multifd recv: wrote %" PRIu64 " bytes to %s\n", d->g.content_len,
			o->out);
	return EXIT_OK;
fail:
	r = mfd_error_code(err);
	if (o->report_fd < 0)
		return report_error("recv", err);
	recv_report(d, o->report_fd, r ? r : MFD_EIO, err);
	/* Stopped by the demo after its own failure, which it reported. */
	if (interrupted) {
		mfd_error_free(err);
		return EXIT_FAIL;
	}
	return report_error("recv", err);
}

int cmd_recv(int argc, char **argv)
{
	struct recv_opts o = { .listen = DEFAULT_LISTEN, .size = DEFAULT_SIZE, .report_fd = -1 };
	struct dest d = { 0 };
	struct progress p;
	mfd_error *err = NULL;
	int r = recv_parse(argc, argv, &o);

	if (r != 0) {
		r = r == PARSE_HELP ? EXIT_OK : r;
		goto out;
	}
	/* The demo's destination runs --quiet; its warnings still show. */
	log_setup(o.report_fd >= 0 ? o.c.verbose : log_verbosity(o.c.quiet, o.c.verbose));
	signals_setup();
	if (dest_setup(&d, o.size, &err) < 0 || (o.prealloc && guest_prealloc(&d.g, &err) < 0)) {
		r = report_error("recv", err);
		goto out;
	}
	if (params_apply(&o.c.params, d.m, &err) < 0) {
		report_error("recv", err);
		r = EXIT_USAGE;
		goto out;
	}
	progress_init(&p, "destination", o.c.quiet, o.c.json);
	r = recv_run(&d, &o, &p);
out:
	dest_free(&d);
	params_free(&o.c.params);
	return r;
}
