/* SPDX-License-Identifier: MIT */
/*
 * Fault-injecting channel wrapper (tests/lib/fault.h): what a broken, slow
 * or cut network does to one channel, on demand and repeatable, so the
 * tests can check that the engine ends every such migration cleanly.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/fault.h"
#include "channels/fd.h"
#include "core/channel.h"
#include "engine/internal.h"
#include "core/util.h"
#include "core/wire.h"

#define HANDSHAKE_BYTES 128	/* a hello; under TLS, part of the first flight */
#define SHORT_MAX 16384		/* longest short operation */
#define SHORT_IOV 64		/* entries a shortened operation keeps */
#define STALL_SLICE_MS 5	/* how quickly a stall sees a shutdown */

struct fault_ctl {
	struct fault_spec spec;
	atomic_bool fired;
	atomic_bool sync_seen[2];	/* [incoming]: a multifd channel passed an active SYNC */
	atomic_uint wrapped, live;
};

struct fault_dirstate {
	/* Owned by the one thread doing I/O in this direction. */
	uint64_t total;		/* bytes moved */
	uint64_t phase_bytes;	/* bytes moved while the phase held */
	bool short_on;
	uint64_t rng;
	bool zerocopy;		/* this write goes with the transport's zero-copy send */
	bool answer;		/* this write starts a RESULT or a switchover confirmation */
};

struct fault_chan_priv {
	/* Set at creation. */
	struct fault_ctl *ctl;
	mfd_channel *inner;	/* the transport; owned */
	mfd_migration *m;
	bool incoming;
	enum fault_chan chan;
	unsigned index;
	bool target;		/* the spec names this channel */
	/* Any thread. */
	atomic_int timeout_ms, peer_timeout_ms;
	atomic_bool cut;
	struct fault_dirstate d[2];	/* [enum fault_dir] */
};

static const char *const phase_names[] = {
	"handshake", "setup", "iteration", "sync", "switchover", "postcopy", "result",
};
static const char *const kind_names[] = { "fail", "short", "stall", "close" };
static const char *const chan_names[] = { "main", "multifd", "preempt" };

const char *fault_phase_name(enum fault_phase p)
{
	return (unsigned)p < MFD_ARRAY_SIZE(phase_names) ? phase_names[p] : "?";
}

const char *fault_kind_name(enum fault_kind k)
{
	return (unsigned)k < MFD_ARRAY_SIZE(kind_names) ? kind_names[k] : "?";
}

const char *fault_chan_name(enum fault_chan c)
{
	return (unsigned)c < MFD_ARRAY_SIZE(chan_names) ? chan_names[c] : "?";
}

void fault_spec_describe(const struct fault_spec *s, char *buf, size_t len)
{
	char idx[16] = "";

	if (s->chan == FAULT_CH_MULTIFD)
		snprintf(idx, sizeof(idx), " %u", s->index);
	snprintf(buf, len, "%s %s%s %s %s %s after %llu%s", s->incoming ? "dst" : "src",
		 fault_chan_name(s->chan), idx, fault_phase_name(s->phase), fault_kind_name(s->kind),
		 s->dir == FAULT_DIR_READ ? "read" : "write", (unsigned long long)s->after,
		 s->kind == FAULT_STALL ? (s->stall_ms > 1000 ? " (long)" : " (short)") : "");
}

/* ---- the controller ---------------------------------------------------------------- */

int fault_ctl_new(const struct fault_spec *spec, struct fault_ctl **out, mfd_error **errp)
{
	struct fault_ctl *ctl;

	if (!spec || !out)
		return mfd_error_set(errp, MFD_EINVAL, "fault_ctl_new: NULL argument");
	if ((unsigned)spec->phase >= MFD_ARRAY_SIZE(phase_names) ||
	    (unsigned)spec->kind >= MFD_ARRAY_SIZE(kind_names) ||
	    (unsigned)spec->chan >= MFD_ARRAY_SIZE(chan_names) ||
	    (spec->dir != FAULT_DIR_WRITE && spec->dir != FAULT_DIR_READ))
		return mfd_error_set(errp, MFD_EINVAL, "fault spec: phase %d, kind %d, channel %d or "
				     "direction %d out of range", (int)spec->phase, (int)spec->kind,
				     (int)spec->chan, (int)spec->dir);
	if (spec->phase == FAULT_PH_HANDSHAKE && spec->after >= HANDSHAKE_BYTES)
		return mfd_error_set(errp, MFD_EINVAL, "fault spec: the handshake phase is the first "
				     "%d bytes; after=%llu is past it", HANDSHAKE_BYTES,
				     (unsigned long long)spec->after);
	ctl = calloc(1, sizeof(*ctl));
	if (!ctl)
		return mfd_error_set(errp, MFD_ENOMEM, "fault controller: out of memory");
	ctl->spec = *spec;
	*out = ctl;
	return 0;
}

static struct fault_ctl *installed;

static int wrap_cb(void *opaque, mfd_channel *ch, mfd_migration *m, bool incoming,
		   enum engine_chan_kind kind, unsigned index, mfd_error **errp)
{
	enum fault_chan c = kind == ENGINE_CH_MULTIFD ? FAULT_CH_MULTIFD :
			    kind == ENGINE_CH_PREEMPT ? FAULT_CH_PREEMPT : FAULT_CH_MAIN;

	return fault_channel_interpose(opaque, ch, m, incoming, c, index, errp);
}

void fault_ctl_install(struct fault_ctl *ctl)
{
	installed = ctl;
	engine_set_channel_wrapper(ctl ? wrap_cb : NULL, ctl);
}

void fault_ctl_uninstall(void)
{
	fault_ctl_install(NULL);
}

void fault_ctl_free(struct fault_ctl *ctl)
{
	if (!ctl)
		return;
	if (installed == ctl)
		fault_ctl_uninstall();
	free(ctl);
}

bool fault_ctl_fired(const struct fault_ctl *ctl)
{
	return atomic_load(&ctl->fired);
}

unsigned fault_ctl_wrapped(const struct fault_ctl *ctl)
{
	return atomic_load(&ctl->wrapped);
}

unsigned fault_ctl_live(const struct fault_ctl *ctl)
{
	return atomic_load(&ctl->live);
}

/* ---- phase and trigger ------------------------------------------------------------- */

/* A multifd packet header with the SYNC flag at the start of @p. */
static bool is_sync_header(const uint8_t *p, size_t len)
{
	return len >= 8 && load_be32(p) == MFD_PACKET_MAGIC &&
	       load_be16(p + 4) == MFD_PACKET_VERSION &&
	       (load_be16(p + 6) & MFD_PACKET_SYNC);
}

/* Does the phase hold for an operation starting now?  @sync: the operation
 * carries a SYNC header (writes: known before; reads: after the data came). */
static bool phase_holds(struct fault_chan_priv *fc, enum fault_dir dir, bool sync)
{
	enum mfd_state st = mfd_migration_state(fc->m);

	switch (fc->ctl->spec.phase) {
	case FAULT_PH_HANDSHAKE:
		return fc->d[dir].total < HANDSHAKE_BYTES;
	case FAULT_PH_SETUP:
		return st == MFD_STATE_SETUP && fc->d[dir].total >= HANDSHAKE_BYTES;
	case FAULT_PH_ITERATION:
		return st == MFD_STATE_ACTIVE;
	case FAULT_PH_SYNC:
		if (st != MFD_STATE_ACTIVE)
			return false;
		return fc->chan == FAULT_CH_MULTIFD ? sync
						    : atomic_load(&fc->ctl->sync_seen[fc->incoming]);
	case FAULT_PH_SWITCHOVER:
		return st == MFD_STATE_DEVICE;
	case FAULT_PH_POSTCOPY:
		return st == MFD_STATE_POSTCOPY_ACTIVE;
	case FAULT_PH_RESULT:
		return dir == FAULT_DIR_WRITE && fc->chan == FAULT_CH_MAIN && fc->d[dir].answer;
	}
	return false;
}

/* A write on a main channel that starts the switchover's answer: the
 * destination's RESULT (a return-path message), or the source's
 * confirmation. */
static bool is_answer(const struct fault_chan_priv *fc, const struct iovec *iov, int iovcnt)
{
	if (fc->chan != FAULT_CH_MAIN || iovcnt < 1)
		return false;
	if (fc->incoming)
		return iov[0].iov_len >= 2 && load_be16(iov[0].iov_base) == RP_RESULT;
	return iov[0].iov_len >= 4 && load_be32(iov[0].iov_base) == SWITCHOVER_CONFIRM_MAGIC;
}

/* Multifd channels tell the main channel of their side that a sync passed. */
static void note_sync(struct fault_chan_priv *fc, bool sync)
{
	if (sync && fc->chan == FAULT_CH_MULTIFD &&
	    mfd_migration_state(fc->m) == MFD_STATE_ACTIVE)
		atomic_store(&fc->ctl->sync_seen[fc->incoming], true);
}

/* Claim the one fault of the controller. */
static bool claim(struct fault_chan_priv *fc)
{
	return !atomic_exchange(&fc->ctl->fired, true);
}

/* Cut the connection as a network would: both directions, the peer sees
 * the end of data; our own I/O then fails in the transport. */
static void cut(struct fault_chan_priv *fc)
{
	int fd = fd_channel_fd(fc->inner);

	atomic_store(&fc->cut, true);
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
	else
		mfd_channel_shutdown(fc->inner);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* A silent peer for stall_ms, or until a deadline of the channel passes. */
static int stall(mfd_channel *ch, struct fault_chan_priv *fc, enum fault_dir dir,
		 mfd_error **errp)
{
	int t = atomic_load(&fc->timeout_ms), pt = atomic_load(&fc->peer_timeout_ms);
	int limit = t > 0 ? t : 0;
	const char *what = "timeout-ms";

	if (dir == FAULT_DIR_WRITE && pt > 0 && (limit == 0 || pt < limit)) {
		limit = pt;
		what = "peer-timeout-ms";
	}
	unsigned wait = fc->ctl->spec.stall_ms;
	bool times_out = limit > 0 && (unsigned)limit < wait;

	if (times_out)
		wait = (unsigned)limit;
	for (unsigned left = wait; left > 0;) {
		unsigned slice = left < STALL_SLICE_MS ? left : STALL_SLICE_MS;

		if (channel_is_shut(ch))
			return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
		sleep_ms(slice);
		left -= slice;
	}
	if (times_out)
		return mfd_error_set(errp, MFD_ETIMEDOUT, "%s: the peer stopped answering for %d ms "
				     "(%s; injected stall)", ch->name, limit, what);
	return 0;
}

static uint64_t next_rand(uint64_t *s)
{
	/* xorshift64*: cheap and repeatable from the seed. */
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Copy the first @n bytes of @iov into @tmp; returns the entries used. */
static int iov_prefix(const struct iovec *iov, int iovcnt, size_t n, struct iovec *tmp)
{
	int k = 0;

	for (int i = 0; i < iovcnt && n > 0 && k < SHORT_IOV; i++) {
		if (!iov[i].iov_len)
			continue;
		tmp[k] = iov[i];
		if (tmp[k].iov_len > n)
			tmp[k].iov_len = n;
		n -= tmp[k].iov_len;
		k++;
	}
	return k;
}

static size_t iov_len(const struct iovec *iov, int iovcnt)
{
	size_t n = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

static ssize_t inner_op(struct fault_chan_priv *fc, enum fault_dir dir, const struct iovec *iov,
			int iovcnt, mfd_error **errp)
{
	if (dir == FAULT_DIR_WRITE && fc->d[dir].zerocopy)
		return fc->inner->ops->writev_zerocopy(fc->inner, iov, iovcnt, errp);
	return dir == FAULT_DIR_WRITE ? fc->inner->ops->writev(fc->inner, iov, iovcnt, errp)
				      : fc->inner->ops->readv(fc->inner, iov, iovcnt, errp);
}

/* The bytes of an operation count toward the phase when it held. */
static void account(struct fault_chan_priv *fc, enum fault_dir dir, bool held, ssize_t n)
{
	if (n <= 0)
		return;
	fc->d[dir].total += (uint64_t)n;
	if (held)
		fc->d[dir].phase_bytes += (uint64_t)n;
}

static ssize_t fault_io(mfd_channel *ch, enum fault_dir dir, const struct iovec *iov,
			int iovcnt, mfd_error **errp)
{
	struct fault_chan_priv *fc = ch->priv;
	const struct fault_spec *sp = &fc->ctl->spec;
	struct fault_dirstate *ds = &fc->d[dir];
	struct iovec tmp[SHORT_IOV];
	size_t want = iov_len(iov, iovcnt);
	bool sync = false, held;
	ssize_t n;
	int r;

	if (channel_is_shut(ch))
		return mfd_error_set(errp, MFD_ECANCELED, "%s: channel shut down", ch->name);
	if (dir == FAULT_DIR_WRITE && iovcnt > 0)
		sync = is_sync_header(iov[0].iov_base, iov[0].iov_len);
	if (dir == FAULT_DIR_WRITE) {
		note_sync(fc, sync);
		ds->answer = is_answer(fc, iov, iovcnt);
	}
	bool mine = fc->target && sp->dir == dir && !atomic_load(&fc->cut);

	if (!mine) {
		n = inner_op(fc, dir, iov, iovcnt, errp);
		account(fc, dir, false, n);
		if (dir == FAULT_DIR_READ && n > 0)
			note_sync(fc, is_sync_header(iov[0].iov_base, MFD_MIN((size_t)n,
							 iov[0].iov_len)));
		return n;
	}
	if (ds->short_on) {
		size_t len = 1 + (size_t)(next_rand(&ds->rng) % MFD_MIN(want ? want : 1, SHORT_MAX));
		int k = iov_prefix(iov, iovcnt, len, tmp);

		n = inner_op(fc, dir, tmp, k, errp);
		account(fc, dir, true, n);
		return n;
	}
	/* Reads learn whether they carried a SYNC only once the data is in. */
	if (dir == FAULT_DIR_READ && sp->phase == FAULT_PH_SYNC && fc->chan == FAULT_CH_MULTIFD) {
		n = inner_op(fc, dir, iov, iovcnt, errp);
		if (n <= 0)
			return n;
		sync = is_sync_header(iov[0].iov_base, MFD_MIN((size_t)n, iov[0].iov_len));
		note_sync(fc, sync);
		held = phase_holds(fc, dir, sync);
		account(fc, dir, held, n);
		if (!held || ds->phase_bytes - (uint64_t)n < sp->after || atomic_load(&fc->ctl->fired))
			return n;
		if (!claim(fc))
			return n;
		switch (sp->kind) {
		case FAULT_FAIL:
			return mfd_error_set(errp, MFD_EIO, "%s: I/O error (injected fault)", ch->name);
		case FAULT_CLOSE:
			cut(fc);
			return 0;
		case FAULT_STALL:
			r = stall(ch, fc, dir, errp);
			return r < 0 ? r : n;
		case FAULT_SHORT:
			ds->short_on = true;
			ds->rng = sp->seed | 1;
			return n;
		}
		return n;
	}
	held = phase_holds(fc, dir, sync);
	if (!held || atomic_load(&fc->ctl->fired)) {
		n = inner_op(fc, dir, iov, iovcnt, errp);
		account(fc, dir, held, n);
		return n;
	}
	switch (sp->kind) {
	case FAULT_FAIL:
	case FAULT_STALL:
	case FAULT_SHORT:
		if (ds->phase_bytes < sp->after)
			break;
		if (!claim(fc))
			break;
		if (sp->kind == FAULT_FAIL)
			return mfd_error_set(errp, MFD_EIO, "%s: I/O error (injected fault)", ch->name);
		if (sp->kind == FAULT_SHORT) {
			ds->short_on = true;
			ds->rng = sp->seed | 1;
			return fault_io(ch, dir, iov, iovcnt, errp);
		}
		if ((r = stall(ch, fc, dir, errp)) < 0)
			return r;
		break;
	case FAULT_CLOSE:
		if (ds->phase_bytes + want <= sp->after)
			break;
		if (ds->phase_bytes < sp->after) {
			/* Up to the byte where the connection dies, then cut. */
			int k = iov_prefix(iov, iovcnt, (size_t)(sp->after - ds->phase_bytes), tmp);

			n = inner_op(fc, dir, tmp, k, errp);
			account(fc, dir, true, n);
			if (n > 0 && ds->phase_bytes >= sp->after && claim(fc))
				cut(fc);
			return n;
		}
		if (claim(fc))
			cut(fc);
		break;
	}
	n = inner_op(fc, dir, iov, iovcnt, errp);
	account(fc, dir, held, n);
	return n;
}

static ssize_t fault_readv(mfd_channel *ch, const struct iovec *iov, int iovcnt, mfd_error **errp)
{
	return fault_io(ch, FAULT_DIR_READ, iov, iovcnt, errp);
}

static ssize_t fault_writev(mfd_channel *ch, const struct iovec *iov, int iovcnt,
			    mfd_error **errp)
{
	return fault_io(ch, FAULT_DIR_WRITE, iov, iovcnt, errp);
}

/* Zero-copy writes meet the same faults as copied ones. */
static ssize_t fault_writev_zerocopy(mfd_channel *ch, const struct iovec *iov, int iovcnt,
				     mfd_error **errp)
{
	struct fault_chan_priv *fc = ch->priv;
	ssize_t n;

	if (!channel_has_zerocopy(fc->inner))
		return mfd_error_set(errp, MFD_ENOTSUP, "%s: a %s channel has no zero-copy send",
				     ch->name, fc->inner->ops->kind);
	fc->d[FAULT_DIR_WRITE].zerocopy = true;
	n = fault_io(ch, FAULT_DIR_WRITE, iov, iovcnt, errp);
	fc->d[FAULT_DIR_WRITE].zerocopy = false;
	return n;
}

static int fault_flush_zerocopy(mfd_channel *ch, struct mfd_zerocopy_report *rep,
				mfd_error **errp)
{
	struct fault_chan_priv *fc = ch->priv;

	return channel_flush_zerocopy(fc->inner, rep, errp);
}

static void fault_shutdown(mfd_channel *ch)
{
	struct fault_chan_priv *fc = ch->priv;

	mfd_channel_shutdown(fc->inner);
}

static int fault_finish(mfd_channel *ch, mfd_error **errp)
{
	struct fault_chan_priv *fc = ch->priv;

	return mfd_channel_finish(fc->inner, errp);
}

static int fault_set_option(mfd_channel *ch, const char *name, int64_t value, mfd_error **errp)
{
	struct fault_chan_priv *fc = ch->priv;
	int r = mfd_channel_set_option(fc->inner, name, value, errp);

	/* A stall honours the deadlines the transport was given. */
	if (r == 0 && strcmp(name, "timeout-ms") == 0)
		atomic_store(&fc->timeout_ms, (int)value);
	else if (r == 0 && strcmp(name, "peer-timeout-ms") == 0)
		atomic_store(&fc->peer_timeout_ms, (int)value);
	return r;
}

static void fault_close(mfd_channel *ch)
{
	struct fault_chan_priv *fc = ch->priv;

	atomic_fetch_sub(&fc->ctl->live, 1);
	mfd_channel_free(fc->inner);
	free(fc);
}

static const struct mfd_channel_ops fault_ops = {
	.kind = "fault",
	.readv = fault_readv,
	.writev = fault_writev,
	.shutdown = fault_shutdown,
	.finish = fault_finish,
	.set_option = fault_set_option,
	.close = fault_close,
	.writev_zerocopy = fault_writev_zerocopy,
	.flush_zerocopy = fault_flush_zerocopy,
};

int fault_channel_interpose(struct fault_ctl *ctl, mfd_channel *ch, mfd_migration *m,
			    bool incoming, enum fault_chan chan, unsigned index, mfd_error **errp)
{
	struct fault_chan_priv *fc;
	mfd_channel *inner;

	if (!ctl || !ch || !m)
		return mfd_error_set(errp, MFD_EINVAL, "fault_channel_interpose: NULL argument");
	fc = calloc(1, sizeof(*fc));
	if (!fc)
		return mfd_error_set(errp, MFD_ENOMEM, "%s: fault wrapper: out of memory", ch->name);
	inner = channel_alloc(ch->ops, ch->name, ch->priv);
	if (!inner) {
		free(fc);
		return mfd_error_set(errp, MFD_ENOMEM, "%s: fault wrapper: out of memory", ch->name);
	}
	atomic_store(&inner->shut, channel_is_shut(ch));
	fc->ctl = ctl;
	fc->inner = inner;
	fc->m = m;
	fc->incoming = incoming;
	fc->chan = chan;
	fc->index = index;
	fc->target = ctl->spec.incoming == incoming && ctl->spec.chan == chan &&
		     (chan != FAULT_CH_MULTIFD || ctl->spec.index == index);
	atomic_init(&fc->timeout_ms, 0);
	atomic_init(&fc->peer_timeout_ms, 0);
	atomic_init(&fc->cut, false);
	/* The transport now lives in inner; ch keeps its identity and owner. */
	ch->ops = &fault_ops;
	ch->priv = fc;
	atomic_fetch_add(&ctl->wrapped, 1);
	atomic_fetch_add(&ctl->live, 1);
	return 0;
}
