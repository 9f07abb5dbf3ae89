/* SPDX-License-Identifier: MIT */
/*
 * What the user sees while and after a migration runs: a live progress line
 * on a terminal, plain periodic lines in a log, JSON objects for scripts, and
 * the final table.  Progress goes to stderr, results to stdout, so
 * `multifd demo --json > stats.jsonl` keeps both readable.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define MIB (1024.0 * 1024.0)

void progress_init(struct progress *p, const char *side, bool quiet, bool json)
{
	memset(p, 0, sizeof(*p));
	p->side = side;
	p->quiet = quiet;
	p->json = json;
	p->tty = isatty(STDERR_FILENO);
	p->next_plain = p->next_json = now_s() + 1.0;
}

/* ram.mbps is query-migrate's megabits (10^6 bits) per second. */
static double mbps_to_mib(double mbps)
{
	return mbps * 1e6 / 8.0 / MIB;
}

/* The destination has no dirty rate or remaining bytes: it shows what came in. */
static void dest_line(char *line, size_t len, const struct progress *p,
		      const struct mfd_stats *st)
{
	if (st->status == MFD_STATE_SETUP && st->ram_transferred == 0)
		snprintf(line, len, "%s: %-10s waiting for the source  %5.1f s", p->side,
			 mfd_state_name(st->status), (double)st->total_time / 1e3);
	else
		snprintf(line, len, "%s: %-10s received %8.1f MiB  %7.1f MiB/s  %5.1f s", p->side,
			 mfd_state_name(st->status), (double)st->ram_transferred / MIB,
			 mbps_to_mib(st->ram_mbps), (double)st->total_time / 1e3);
}

static void source_line(char *line, size_t len, const struct progress *p,
			const struct mfd_stats *st)
{
	int n = snprintf(line, len,
			 "%s: %-10s iteration %-3" PRIu64 " remaining %8.1f MiB  %7.1f MiB/s  "
			 "dirty %6.1f MiB/s  %5.1f s",
			 p->side, mfd_state_name(st->status), st->iterations,
			 (double)st->ram_remaining / MIB, mbps_to_mib(st->ram_mbps),
			 (double)st->ram_dirty_pages_rate * GUEST_PAGE / MIB,
			 (double)st->total_time / 1e3);

	if (st->throttle_percent > 0 && n > 0 && (size_t)n < len)
		snprintf(line + n, len - (size_t)n, "  throttle %d%%", st->throttle_percent);
}

/*
 * On a terminal the source shows a bar: how far the current pass over RAM
 * got (what was left when the pass began against what is left now), the
 * rate in GiB/s, what remains dirty, and the pass number.
 */
static void source_bar(char *line, size_t len, struct progress *p, const struct mfd_stats *st)
{
	enum { WIDTH = 20 };
	char bar[WIDTH + 1];
	unsigned pct, fill;
	int n;

	if (st->iterations != p->pass || p->pass_start == 0 || st->ram_remaining > p->pass_start) {
		p->pass = st->iterations;
		/* The first pass starts with all of RAM dirty. */
		p->pass_start = st->iterations == 0 && st->ram_total ? st->ram_total
									: st->ram_remaining;
	}
	pct = p->pass_start ? (unsigned)(100.0 * (double)(p->pass_start - st->ram_remaining) /
					 (double)p->pass_start) : 100;
	pct = pct > 100 ? 100 : pct;
	fill = pct * WIDTH / 100;
	memset(bar, '#', fill);
	memset(bar + fill, '.', WIDTH - fill);
	bar[WIDTH] = '\0';
	n = snprintf(line, len, "%s: %-10s pass %-3" PRIu64 " [%s] %3u%%  %5.2f GiB/s  "
		     "remaining %8.1f MiB  dirty %6.1f MiB/s  %5.1f s", p->side,
		     mfd_state_name(st->status), st->iterations + 1, bar, pct,
		     mbps_to_mib(st->ram_mbps) / 1024.0, (double)st->ram_remaining / MIB,
		     (double)st->ram_dirty_pages_rate * GUEST_PAGE / MIB,
		     (double)st->total_time / 1e3);
	if (st->throttle_percent > 0 && n > 0 && (size_t)n < len)
		snprintf(line + n, len - (size_t)n, "  throttle %d%%", st->throttle_percent);
}

static void progress_line(struct progress *p, const struct mfd_stats *st)
{
	char line[320];

	if (!strcmp(p->side, "source") && p->tty)
		source_bar(line, sizeof(line), p, st);
	else if (!strcmp(p->side, "source"))
		source_line(line, sizeof(line), p, st);
	else
		dest_line(line, sizeof(line), p, st);
	if (p->tty) {
		/* \r and erase-to-end: one line that updates in place. */
		fprintf(stderr, "\r%s\033[K", line);
		p->line_open = true;
	} else {
		fprintf(stderr, "%s\n", line);
	}
}

static void print_json(mfd_migration *m)
{
	char *json = mfd_migration_stats_json(m);

	if (json) {
		printf("%s\n", json);
		fflush(stdout);
	}
	free(json);
}

static void progress_tick(mfd_migration *m, struct progress *p)
{
	struct mfd_stats st = { .size = sizeof(st) };
	double t = now_s();

	if (p->json) {
		if (t >= p->next_json) {
			p->next_json = t + 1.0;
			print_json(m);
		}
		return;
	}
	if (p->quiet || (!p->tty && t < p->next_plain))
		return;
	p->next_plain = t + 1.0;
	if (mfd_migration_stats(m, &st) == 0)
		progress_line(p, &st);
}

static void progress_close(struct progress *p)
{
	if (p->line_open)
		fputc('\n', stderr);
	p->line_open = false;
}

/* One 200 ms wait: MFD_ERUNNING only while the migration still runs. */
static int wait_step(mfd_migration *m, mfd_error **errp, bool *ended)
{
	mfd_error *err = NULL;
	int r = mfd_migration_wait(m, 200, &err);

	*ended = r != MFD_ERUNNING;
	if (*ended && errp && !*errp)
		*errp = err;
	else
		mfd_error_free(err);
	return r;
}

/* One look at a postcopy pause: listen again, or try to reconnect. */
static void recovery_step(mfd_migration *m, struct progress *p, struct recovery *rec)
{
	int st = mfd_migration_state(m);
	mfd_error *err = NULL;
	char where[512];

	if (st == MFD_STATE_POSTCOPY_ACTIVE && (rec->listening || rec->tried)) {
		/* Back in business: the next pause starts afresh. */
		progress_close(p);
		fprintf(stderr, "multifd %s: postcopy resumed after a pause\n", rec->cmd);
		rec->listening = false;
		rec->recovering = false;
		rec->tried = 0;
		rec->recoveries++;
		return;
	}
	/* A recovery that broke off returns to paused: its listener is gone. */
	if (st == MFD_STATE_POSTCOPY_RECOVER)
		rec->recovering = true;
	if (st != MFD_STATE_POSTCOPY_PAUSED)
		return;
	if (rec->recovering) {
		rec->recovering = false;
		rec->listening = false;
	}
	if (rec->listen && !rec->listening && now_s() >= rec->next_try) {
		progress_close(p);
		rec->next_try = now_s() + 1.0;
		if (mfd_migrate_recover(m, rec->listen, &err) < 0) {
			fprintf(stderr, "multifd %s: postcopy paused; cannot listen on %s (%s); "
				"trying again\n", rec->cmd, rec->listen, mfd_error_message(err));
			mfd_error_free(err);
			return;
		}
		rec->listening = true;
		if (mfd_migration_listen_uri(m, where, sizeof(where)) < 0)
			snprintf(where, sizeof(where), "%s", rec->listen);
		fprintf(stderr, "multifd %s: postcopy paused (the connection broke); waiting for "
			"the source to resume on %s\n", rec->cmd, where);
	}
	if (rec->resume_to && now_s() >= rec->next_try) {
		progress_close(p);
		rec->next_try = now_s() + 1.0;
		if (rec->tried == rec->attempts) {
			fprintf(stderr, "multifd %s: postcopy paused; %u attempts to resume to %s "
				"failed, giving up: the guest ran on the destination and is lost\n",
				rec->cmd, rec->attempts, rec->resume_to);
			rec->tried++;
			mfd_migrate_cancel(m);
			return;
		}
		if (rec->tried > rec->attempts)
			return;
		rec->tried++;
		fprintf(stderr, "multifd %s: postcopy paused (the connection broke); resuming to "
			"%s (attempt %u of %u)\n", rec->cmd, rec->resume_to, rec->tried,
			rec->attempts);
		if (mfd_migrate_resume(m, rec->resume_to, &err) < 0) {
			fprintf(stderr, "multifd %s: resume: %s\n", rec->cmd, mfd_error_message(err));
			mfd_error_free(err);
		}
	}
}

int wait_with_progress(mfd_migration *m, struct progress *p, mfd_error **errp)
{
	return wait_with_recovery(m, p, NULL, errp);
}

int wait_with_recovery(mfd_migration *m, struct progress *p, struct recovery *rec,
		       mfd_error **errp)
{
	bool cancelled = false, ended = false;
	int r = 0;

	while (!ended) {
		if (interrupted && !cancelled) {
			progress_close(p);
			if (!p->quiet)
				fprintf(stderr, "multifd: interrupted, cancelling the migration\n");
			mfd_migrate_cancel(m);
			cancelled = true;
		}
		r = wait_step(m, errp, &ended);
		if (!ended && rec && !cancelled)
			recovery_step(m, p, rec);
		if (!ended)
			progress_tick(m, p);
	}
	progress_close(p);
	/* Scripts see how it ended either way; a success gets its object from
	 * print_summary(). */
	if (r < 0 && p->json)
		print_json(m);
	return r;
}

static void print_row(FILE *f, const char *name, const char *fmt, ...) MFD_PRINTF(3, 4);

static void print_row(FILE *f, const char *name, const char *fmt, ...)
{
	va_list ap;

	fprintf(f, "  %-16s ", name);
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
}

static void print_channels(FILE *f, const struct mfd_stats *st)
{
	unsigned n = st->channels < 256 ? st->channels : 256;

	for (unsigned i = 0; i < n; i++) {
		char name[32];

		snprintf(name, sizeof(name), "channel %u", i);
		print_row(f, name, "%.1f MiB in %" PRIu64 " packets, busy %.3f s",
			  (double)st->channel_bytes[i] / MIB, st->channel_packets[i],
			  (double)st->channel_busy_ms[i] / 1e3);
	}
}

static void print_ram(FILE *f, const struct progress *p, const struct mfd_stats *st)
{
	double secs = st->total_time ? (double)st->total_time / 1e3 : 1e-3;

	print_row(f, "transferred", "%.1f MiB", (double)st->ram_transferred / MIB);
	/* The destination's clock starts before the source connects. */
	if (!strcmp(p->side, "source"))
		print_row(f, "guest RAM", "%.1f MiB, %.2f GiB/s over the total time",
			  (double)st->ram_total / MIB, (double)st->ram_total / MIB / 1024 / secs);
	else
		print_row(f, "guest RAM", "%.1f MiB", (double)st->ram_total / MIB);
	print_row(f, "zero pages", "%" PRIu64, st->ram_duplicate);
	print_row(f, "normal pages", "%" PRIu64 " (%.1f MiB)", st->ram_normal,
		  (double)st->ram_normal_bytes / MIB);
	print_row(f, "pages/s", "%" PRIu64, st->ram_pages_per_second);
	print_row(f, "iterations", "%" PRIu64 " (%" PRIu64 " dirty syncs)", st->iterations,
		  st->ram_dirty_sync_count);
	print_row(f, "throughput", "%.1f MiB/s (%.0f Mbit/s)", mbps_to_mib(st->ram_mbps),
		  st->ram_mbps);
}

static void print_multifd(FILE *f, const struct mfd_stats *st)
{
	if (st->compression_ratio > 0 && st->compression_ratio != 1.0)
		print_row(f, "compression", "%.3f (wire bytes / page bytes)", st->compression_ratio);
	if (st->multifd_syncs)
		print_row(f, "multifd syncs", "%" PRIu64 ", slowest %" PRIu64 " ms",
			  st->multifd_syncs, st->multifd_sync_ms_max);
	if (st->zero_copy_bytes || st->zero_copy_refused_channels)
		print_row(f, "zero-copy", "%.1f MiB in %" PRIu64 " sends, %" PRIu64 " copied by "
			  "the kernel after all, %" PRIu64 " syncs missed, %u channels refused",
			  (double)st->zero_copy_bytes / (1 << 20), st->zero_copy_sends,
			  st->zero_copy_copied, st->dirty_sync_missed_zero_copy,
			  st->zero_copy_refused_channels);
	print_channels(f, st);
}

void print_summary(mfd_migration *m, const struct progress *p, FILE *f)
{
	struct mfd_stats st = { .size = sizeof(st) };

	if (p->json) {
		print_json(m);
		return;
	}
	if (mfd_migration_stats(m, &st) < 0)
		return;
	fprintf(f, "%s summary\n", p->side);
	print_row(f, "status", "%s", mfd_state_name(st.status));
	print_row(f, "total time", "%.3f s", (double)st.total_time / 1e3);
	print_row(f, "setup time", "%" PRIu64 " ms", st.setup_time);
	print_row(f, "downtime", "%" PRIu64 " ms", st.downtime);
	print_ram(f, p, &st);
	print_multifd(f, &st);
	if (st.precopy_stalls)
		print_row(f, "precopy stalls", "%" PRIu64 " (5 passes in a row without progress)",
			  st.precopy_stalls);
	if (st.postcopy_time_ms || st.postcopy_faults || st.ram_postcopy_requests)
		print_row(f, "postcopy", "%.3f s, %" PRIu64 " page requests, %" PRIu64 " pauses",
			  (double)st.postcopy_time_ms / 1e3, st.ram_postcopy_requests,
			  st.postcopy_pauses);
	if (st.postcopy_faults)
		print_row(f, "page faults", "%" PRIu64 ", latency median %" PRIu64 " us, p99 %"
			  PRIu64 " us, max %" PRIu64 " us, blocktime %" PRIu64 " ms",
			  st.postcopy_faults, st.postcopy_fault_us_median, st.postcopy_fault_us_p99,
			  st.postcopy_fault_us_max, st.postcopy_blocktime_ms);
	fflush(f);
}
