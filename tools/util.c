/* SPDX-License-Identifier: MIT */
/*
 * Small helpers of the multifd tool: clocks, error printing, option values,
 * library logging and Ctrl-C.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

volatile sig_atomic_t interrupted;

double now_s(void)
{
	struct timespec ts;

	/* CLOCK_MONOTONIC is shared by every process of the host, so the demo can
	 * compare the source's stop time with the destination's start time. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int report_error(const char *cmd, mfd_error *err)
{
	fprintf(stderr, "multifd %s: %s (%s)\n", cmd,
		err ? mfd_error_message(err) : "failed without a message",
		mfd_strerror(mfd_error_code(err)));
	mfd_error_free(err);
	return EXIT_FAIL;
}

int usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "multifd %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'multifd %s --help'.\n", cmd);
	return EXIT_USAGE;
}

int bad_option(const char *cmd, const char *synopsis, int c, char **argv)
{
	/* getopt_long() leaves optind past the offending word; optopt names a
	 * short option, and is 0 for a long one. */
	const char *word = argv[optind - 1];

	if (c == ':')
		fprintf(stderr, "multifd %s: option '%s' needs a value\n", cmd, word);
	else if (optopt && !(word[0] == '-' && word[1] == '-'))
		fprintf(stderr, "multifd %s: unknown option '-%c'\n", cmd, optopt);
	else
		fprintf(stderr, "multifd %s: unknown option '%s'\n", cmd, word);
	fprintf(stderr, "%sTry 'multifd %s --help'.\n", synopsis, cmd);
	return EXIT_USAGE;
}

int parse_u64(const char *cmd, const char *opt, const char *arg, uint64_t min, uint64_t max,
	      uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max) {
		usage_error(cmd, "%s '%s' is not a number from %" PRIu64 " to %" PRIu64, opt, arg,
			    min, max);
		return -1;
	}
	*out = v;
	return 0;
}

int parse_double(const char *cmd, const char *opt, const char *arg, double min, double max,
		 double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno || end == arg || *end || !(v >= min && v <= max)) {
		usage_error(cmd, "%s '%s' is not a number from %g to %g", opt, arg, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

int parse_guest_size(const char *cmd, const char *arg, uint64_t *bytes)
{
	char *end;
	unsigned long long v;
	unsigned shift = 20;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (!errno && end != arg && arg[0] != '-' && end[0] && !end[1]) {
		switch (end[0]) {
		case 'K': case 'k': shift = 10; end++; break;
		case 'M': case 'm': shift = 20; end++; break;
		case 'G': case 'g': shift = 30; end++; break;
		default: break;
		}
	}
	/* 1 TiB is far beyond any loopback demo but keeps the shift exact. */
	if (errno || end == arg || *end || v == 0 || v > (1ull << 40) >> shift ||
	    (v << shift) % GUEST_PAGE) {
		usage_error(cmd, "--size '%s' is not a size: N MiB, or N with a K, M or G "
			    "suffix, a multiple of 4 KiB up to 1 TiB", arg);
		return -1;
	}
	*bytes = (uint64_t)v << shift;
	return 0;
}

static void log_to_stderr(int level, const char *msg, void *opaque)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };

	(void)opaque;
	fprintf(stderr, "libmultifd %s: %s\n", names[level <= MFD_LOG_DEBUG ? level : 3], msg);
}

void log_setup(int verbosity)
{
	enum mfd_log_level max = verbosity >= 2 ? MFD_LOG_DEBUG
			       : verbosity == 1 ? MFD_LOG_INFO
			       : verbosity == 0 ? MFD_LOG_WARNING : MFD_LOG_ERROR;

	mfd_log_set_handler(log_to_stderr, NULL, max);
}

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

void signals_setup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	/* A peer that goes away must be an error from write(), not a silent exit. */
	signal(SIGPIPE, SIG_IGN);
}

int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = 0;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}
