/* SPDX-License-Identifier: MIT */
/*
 * What the files of the multifd tool share.  Everything here is private to
 * the tool: it uses the library through <multifd/multifd.h> only, like any
 * VMM would.
 */
#ifndef MULTIFD_TOOL_CLI_H
#define MULTIFD_TOOL_CLI_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <multifd/multifd.h>

/* The synthetic guest and images are migrated in 4 KiB pages. */
#define GUEST_PAGE 4096u
#define GUEST_RAM_NAME "pc.ram"
/* The guest's CONFIGURATION identity: what its "cpu" and "image" sections mean. */
#define GUEST_IDENTITY "multifd-tool-guest-1"

/* Exit statuses, documented in multifd(1). */
enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,	/* the migration failed or did not verify */
	EXIT_USAGE = 2,	/* bad command line */
	PARSE_HELP = -1,	/* an option parser printed --help: exit 0 */
};

/* ---- util.c: time, errors, option values ----------------------------------- */

double now_s(void);

/* Print "multifd CMD: message (strerror)" for @err, free it; returns EXIT_FAIL. */
int report_error(const char *cmd, mfd_error *err);

/* Print "multifd CMD: message" plus a hint to --help; returns EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) MFD_PRINTF(2, 3);

/* getopt_long() (optstring starting with ':', so opterr is off) returned
 * '?' or ':' as @c: say which word is wrong, show @synopsis; EXIT_USAGE. */
int bad_option(const char *cmd, const char *synopsis, int c, char **argv);

/* Every command parses with this optstring: -q -v -h, and ':' so that a
 * missing value is reported by bad_option(), not by getopt itself. */
#define SHORT_OPTIONS ":qvh"

int parse_u64(const char *cmd, const char *opt, const char *arg, uint64_t min, uint64_t max,
	      uint64_t *out);
int parse_double(const char *cmd, const char *opt, const char *arg, double min, double max,
		 double *out);

/* "N[K|M|G]" (plain N is MiB), a non-zero multiple of GUEST_PAGE. */
int parse_guest_size(const char *cmd, const char *arg, uint64_t *bytes);

/* Library log messages to stderr, one line each with its level: -1 = errors
 * only (-q), 0 = warnings and errors, 1 = info (-v), 2+ = debug (-vv). */
void log_setup(int verbosity);

/* The log_setup() level of -q and -v: -v wins over -q. */
static inline int log_verbosity(bool quiet, int verbose)
{
	return verbose ? verbose : quiet ? -1 : 0;
}

/* Ctrl-C asks for a cancel; the wait loop notices it. */
extern volatile sig_atomic_t interrupted;
void signals_setup(void);
/* All @len bytes to / from @fd (retrying after EINTR and short transfers);
 * 0, or -1 with errno set (or 0 at an early end of file). */
int write_full(int fd, const void *buf, size_t len);
int read_full(int fd, void *buf, size_t len);

/* ---- params.c: --param NAME=VALUE and its shortcuts ------------------------- */

#define MAX_PARAMS 64

struct param_list {
	unsigned n;
	const char *name[MAX_PARAMS];
	const char *value[MAX_PARAMS];
	char *owned[MAX_PARAMS];	/* "NAME" copies split from NAME=VALUE */
};

/* The long options every migrating command takes (getopt codes >= 0x100). */
enum {
	OPT_PARAM = 0x100,
	OPT_CHANNELS,
	OPT_COMPRESSION,
	OPT_TLS_PSK_FILE,
	OPT_TLS_CREDS,
	OPT_JSON,
	OPT_POSTCOPY,
	/* send / recv only: postcopy recovery */
	OPT_RESUME_TO,
	OPT_RESUME_ATTEMPTS,
	OPT_RECOVER_LISTEN,
};

/* getopt_long entries of the shared options. */
#define PARAM_LONG_OPTIONS \
	{ "param", required_argument, NULL, OPT_PARAM }, \
	{ "channels", required_argument, NULL, OPT_CHANNELS }, \
	{ "compression", required_argument, NULL, OPT_COMPRESSION }
#define TLS_LONG_OPTIONS \
	{ "tls-psk-file", required_argument, NULL, OPT_TLS_PSK_FILE }, \
	{ "tls-creds", required_argument, NULL, OPT_TLS_CREDS }
#define OUTPUT_LONG_OPTIONS \
	{ "postcopy", optional_argument, NULL, OPT_POSTCOPY }, \
	{ "json", no_argument, NULL, OPT_JSON }, \
	{ "verbose", no_argument, NULL, 'v' }, \
	{ "quiet", no_argument, NULL, 'q' }, \
	{ "help", no_argument, NULL, 'h' }

/* Handle one of the shared options; returns 1 when @code was one, 0 when not,
 * -1 after printing a usage error. */
int param_option(struct param_list *p, const char *cmd, int code, const char *arg);
int param_add(struct param_list *p, const char *cmd, const char *name, const char *value);
int params_apply(const struct param_list *p, mfd_migration *m, mfd_error **errp);
void params_free(struct param_list *p);

/* What every migrating command accepts besides its own options. */
struct common_opts {
	struct param_list params;
	bool quiet, json;
	int verbose;
	unsigned postcopy_after;	/* --postcopy: switch after this many passes (0: off) */
};

/* Like param_option(), for the parameters plus --json, -q and -v. */
int common_option(struct common_opts *o, const char *cmd, int c, const char *arg);

/* The --help lines of the shared options. */
extern const char params_help[], tls_help[], output_help[];

/* ---- guest.c: guest RAM, its device sections, checksums ---------------------- */

/* The "cpu" device: non-live state saved once the vCPUs are stopped.  The
 * dirtying threads keep their position in it, so RAM and device state must
 * arrive consistent with each other (the a-b check). */
#define DIRTY_THREADS 2

struct cpu_state {
	uint64_t regs[16];	/* regs[2t] = thread t's next page, regs[2t+1] = its passes */
	uint64_t rip, rflags;
};

struct guest {
	uint8_t *ram;
	uint64_t size;		/* bytes registered, a multiple of GUEST_PAGE */
	uint64_t content_len;	/* bytes that matter (an image's length) */
	struct cpu_state cpu;
};

int guest_alloc(struct guest *g, uint64_t size, mfd_error **errp);
/* Fault every page of the RAM in now (writable), as QEMU's prealloc=on. */
int guest_prealloc(struct guest *g, mfd_error **errp);
int guest_fill(struct guest *g, uint64_t seed, mfd_error **errp);
int guest_map_image(struct guest *g, const char *path, mfd_error **errp);
/* Copy FILE into freshly allocated guest RAM instead of mapping it. */
int guest_load_image(struct guest *g, const char *path, mfd_error **errp);
int guest_write_image(const struct guest *g, const char *path, mfd_error **errp);
void guest_free(struct guest *g);

/* Register the RAM block and the "cpu" and "image" sections (both sides). */
/* The guest's RAM block and sections; @fresh: its RAM was just mapped and
 * nothing wrote it (a destination), so zero pages need not be read there. */
int guest_register(struct guest *g, mfd_migration *m, bool fresh, mfd_error **errp);

static inline uint64_t guest_pages(const struct guest *g)
{
	return g->size / GUEST_PAGE;
}

uint64_t page_hash(const uint8_t *page);
/* All GUEST_PAGE bytes at @p are zero. */
bool page_is_zero(const uint8_t *p);
void guest_checksums(const struct guest *g, uint64_t *sums);

/* ---- dirty.c: the guest's vCPUs ------------------------------------------------ */

/* The guest's "vCPUs": threads that increment the first byte of each page in
 * order (each owns one half of RAM) at a set rate, and tell the built-in
 * dirty tracker.  vm_stop pauses them; vm_start resumes them. */
struct dirty_thread {
	struct dirtier *d;
	pthread_t tid;
	unsigned index;
	bool running;
	uint64_t first, end;	/* its pages */
};

struct dirtier {
	/* Set at start. */
	struct guest *g;
	mfd_migration *m;
	double pages_per_s;	/* per thread */
	unsigned nthreads;
	struct dirty_thread t[DIRTY_THREADS];

	/* Auto-converge: percent of the time the vCPUs are held back (atomic). */
	int throttle;

	/* Protected by lock; the threads also peek at pause_req and quit
	 * atomically without it, between two pages. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req, quit;
	unsigned npaused;
	double stopped_at;	/* when the last pause took effect */
};

/* dirtier_stop() must follow every dirtier_start(), even a failed one. */
int dirtier_start(struct dirtier *d, struct guest *g, mfd_migration *m, double mib_per_s);
void dirtier_pause(struct dirtier *d);
void dirtier_resume(struct dirtier *d);
void dirtier_stop(struct dirtier *d);
void dirtier_throttle(struct dirtier *d, int percent);

/* Where each thread's pages lie; the same on both sides. */
void dirty_range(const struct guest *g, unsigned t, uint64_t *first, uint64_t *end);

/* ---- report.c: progress, JSON, summary -------------------------------------- */

struct progress {
	const char *side;	/* "source" or "destination" */
	bool quiet, json, tty;
	double next_plain, next_json;
	bool line_open;		/* a \r line is on the terminal */
	/* The terminal bar's pass: its number and what was left when it began. */
	uint64_t pass, pass_start;
};

void progress_init(struct progress *p, const char *side, bool quiet, bool json);

/* Wait for the migration to end, showing progress; cancels on Ctrl-C.
 * Returns mfd_migration_wait()'s result. */
int wait_with_progress(mfd_migration *m, struct progress *p, mfd_error **errp);

/*
 * What a side does when a postcopy pause (a network cut) stops its migration:
 * the destination listens again (recv --recover-listen), the source
 * reconnects there (send --resume-to), at most @attempts times per pause, a
 * second apart, then gives up (the guest is then lost: it ran on the
 * destination).  Messages go to stderr as "multifd CMD: ...".
 */
struct recovery {
	const char *cmd;		/* "send" or "recv", for the messages */
	const char *listen;		/* destination: where to listen again */
	const char *resume_to;		/* source: the destination's recovery URI */
	unsigned attempts;		/* source: per pause */
	/* State, for wait_with_recovery(). */
	bool listening;			/* this pause's listener is up */
	bool recovering;		/* postcopy-recover was seen since */
	unsigned tried;			/* this pause's attempts */
	double next_try;
	unsigned recoveries;		/* pauses recovered from */
};

/* wait_with_progress() that acts on postcopy pauses as @rec says. */
int wait_with_recovery(mfd_migration *m, struct progress *p, struct recovery *rec,
		       mfd_error **errp);

/* The final table on @f (or the final JSON object on stdout in JSON mode). */
void print_summary(mfd_migration *m, const struct progress *p, FILE *f);

/* ---- sendrecv.c: the two sides, shared by send, recv and demo --------------- */

struct source {
	struct guest g;
	struct dirtier dirtier;
	mfd_migration *m;
	bool dirtier_started;
	/* Written by the hooks on the migration thread, read after it was joined. */
	double stopped_at;	/* the guest's vCPUs stopped for switchover */
	unsigned restarts;	/* vm_start after a failed or cancelled switchover */
	int throttled;		/* the highest auto-converge throttle asked for */
	unsigned postcopy_after;	/* set before source_setup(): postcopy after N passes */
};

/* Create the migration object for a prepared s->g: RAM, sections, hooks.
 * The caller applies the parameters (their errors are usage errors). */
int source_setup(struct source *s, mfd_error **errp);
/* Start the dirtying threads, migrate, wait.  Returns the migration's result. */
int source_run(struct source *s, const char *uri, double dirty_rate, struct progress *p,
	       struct recovery *rec, mfd_error **errp);
void source_free(struct source *s);
/* Report a failed source_run() (and whether the guest was resumed); EXIT_FAIL. */
int source_failed(const struct source *s, const char *cmd, mfd_error *err);
/* A summary row when auto-converge slowed the guest down. */
void print_throttle(const struct source *s, const struct progress *p);

struct dest {
	struct guest g;
	mfd_migration *m;
	char uri[512];		/* where it listens */
	double started_at;	/* vm_start: the guest runs here */
};

int dest_setup(struct dest *d, uint64_t size, mfd_error **errp);
int dest_listen(struct dest *d, const char *uri, mfd_error **errp);
void dest_free(struct dest *d);

/* "multifd CMD: WHAT, N channels, compression C, TLS T" on stderr, unless @quiet. */
void print_params(const char *cmd, mfd_migration *m, const char *what, bool quiet);

/*
 * recv --report-fd: what the destination tells the demo, in host byte order
 * (both ends are the same program on the same host).  First a text line
 * "listen URI\n"; at the end this header, then, when result is 0, npages
 * 64-bit page checksums and npages first bytes.
 */
#define REPORT_MAGIC 0x4d46445245503031ull	/* "MFDREP01" */

struct report_header {
	uint64_t magic;
	int32_t result;		/* 0 or the migration's error code */
	uint32_t reserved;
	uint64_t npages;
	double started_at;	/* the destination's vm_start, CLOCK_MONOTONIC */
	struct cpu_state cpu;
	char message[512];	/* the error message when result < 0 */
};

/* ---- the commands ------------------------------------------------------------ */

int cmd_demo(int argc, char **argv);
int cmd_send(int argc, char **argv);
int cmd_recv(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_tune(int argc, char **argv);

#endif /* MULTIFD_TOOL_CLI_H */
