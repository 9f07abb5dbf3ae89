/* SPDX-License-Identifier: MIT */
/*
 * The migration engine: the state machine, the migration (source) and
 * incoming (destination) threads, channel setup with optional TLS, the
 * return path, the precopy policy, and statistics.
 *
 * Source, on the migration thread: connect the main channel and send its
 * hello, connect the multifd channels (their hellos carry the session
 * token), then the savevm stream: header, OPEN_RETURN_PATH, setup (START
 * sections, RAM first), PART rounds until the policy says switch over, stop
 * the VM, END/FULL sections, EOF, END packets on every multifd channel, and
 * wait for the destination's RESULT on the return path.
 *
 * Destination, on the incoming thread: gather main + N channels (main
 * first: its hello says what the channels must present), load the stream,
 * then answer RESULT and start the VM.
 *
 * Any failure or cancel: every channel is shut down (which unblocks every
 * thread), the VM is restarted if it was stopped, threads are joined, and
 * the migration ends failed or cancelled with one error naming the phase.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/channel.h"
#include "core/engine.h"
#include "core/escape.h"
#include "core/json.h"
#include "core/savevm.h"
#include "core/stream.h"
#include "channels/listener.h"
#include "channels/uri.h"
#include "core/util.h"

static const char *const state_names[] = {
	"none", "setup", "active", "device", "completed", "failed", "cancelling", "cancelled",
	"postcopy-active", "postcopy-paused", "postcopy-recover",
};

const char *mfd_state_name(enum mfd_state s)
{
	return (unsigned)s < MFD_ARRAY_SIZE(state_names) ? state_names[s] : "unknown";
}

uint64_t engine_now_ns(void)
{
	return mfd_now_ns();
}

bool engine_cancelled(struct mfd_engine *e)
{
	return atomic_load_explicit(&e->cancel, memory_order_relaxed);
}

static bool terminal(enum mfd_state s)
{
	return s == MFD_STATE_COMPLETED || s == MFD_STATE_FAILED || s == MFD_STATE_CANCELLED;
}

/*
 * The legal moves of each side (docs/architecture.md, "States"): bit t of
 * moves[s] allows s -> t.  A failure or a cancel may end any live state;
 * once cancelling, only an end may follow (a completion the cancel came too
 * late for included); an end state is final until the next migration.
 */
#define TO(st) (1u << MFD_STATE_##st)
#define ENDING (TO(FAILED) | TO(CANCELLING))
static const uint32_t source_moves[] = {
	[MFD_STATE_NONE] = TO(SETUP),
	[MFD_STATE_SETUP] = TO(ACTIVE) | ENDING,
	[MFD_STATE_ACTIVE] = TO(DEVICE) | ENDING,
	/* the final round, or the postcopy package */
	[MFD_STATE_DEVICE] = TO(COMPLETED) | TO(POSTCOPY_ACTIVE) | ENDING,
	[MFD_STATE_POSTCOPY_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_POSTCOPY_PAUSED] = TO(POSTCOPY_RECOVER) | ENDING,
	[MFD_STATE_POSTCOPY_RECOVER] = TO(POSTCOPY_ACTIVE) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_CANCELLING] = TO(CANCELLED) | TO(FAILED) | TO(COMPLETED),
};
static const uint32_t dest_moves[] = {
	[MFD_STATE_NONE] = TO(SETUP),
	[MFD_STATE_SETUP] = TO(ACTIVE) | ENDING,
	/* loaded, or POSTCOPY_RUN */
	[MFD_STATE_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_ACTIVE) | ENDING,
	[MFD_STATE_POSTCOPY_ACTIVE] = TO(COMPLETED) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_POSTCOPY_PAUSED] = TO(POSTCOPY_RECOVER) | ENDING,
	/* POSTCOPY_RESUME makes it active; a failed attempt pauses again */
	[MFD_STATE_POSTCOPY_RECOVER] = TO(POSTCOPY_ACTIVE) | TO(POSTCOPY_PAUSED) | ENDING,
	[MFD_STATE_CANCELLING] = TO(CANCELLED) | TO(FAILED) | TO(COMPLETED),
};

static void fail_all(struct mfd_engine *e, mfd_error *err);

static bool legal_move(bool incoming, enum mfd_state from, enum mfd_state to)
{
	const uint32_t *moves = incoming ? dest_moves : source_moves;
	size_t n = incoming ? MFD_ARRAY_SIZE(dest_moves) : MFD_ARRAY_SIZE(source_moves);

	return (unsigned)from < n && (unsigned)to < 32 && (moves[from] & (1u << to));
}

/*
 * The one place the state changes.  A move to the same state, or out of an
 * end state or a cancel (a racing thread lost to it), is no move; any other
 * move the table does not list is a bug in the engine: it is refused, logged,
 * and recorded so that the migration ends failed instead of going on in a
 * state nobody expects.
 */
static void set_state(struct mfd_engine *e, enum mfd_state to)
{
	mfd_migration *m = e->m;
	enum mfd_state from;

	pthread_mutex_lock(&e->lock);
	from = e->state;
	if (from == to || terminal(from) || (from == MFD_STATE_CANCELLING && !terminal(to))) {
		pthread_mutex_unlock(&e->lock);
		return;
	}
	if (!legal_move(e->incoming, from, to)) {
		mfd_error *err = NULL;

		pthread_mutex_unlock(&e->lock);
		mfd_error_set(&err, MFD_ESTATE, "internal error: the %s side may not move from %s "
			      "to %s (a bug; please report it)", e->incoming ? "incoming" : "outgoing",
			      mfd_state_name(from), mfd_state_name(to));
		mfd_log_error("migration: %s", mfd_error_message(err));
		fail_all(e, err);
		return;
	}
	e->state = to;
	atomic_store(&e->state_pub, (int)to);
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	mfd_log_info("migration %s: %s -> %s", e->incoming ? "incoming" : "outgoing",
		     mfd_state_name(from), mfd_state_name(to));
	if (m->hooks.state_changed)
		m->hooks.state_changed(m->hooks_opaque, from, to);
}

/* First error wins; later ones are logged only. */
static void record_error(struct mfd_engine *e, mfd_error *err)
{
	pthread_mutex_lock(&e->lock);
	if (!e->err) {
		e->err = err;
		err = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	if (err) {
		mfd_log_debug("also: %s", mfd_error_message(err));
		mfd_error_free(err);
	}
}

/* Unblock every thread: shut down every channel we have.  The owning thread
 * publishes and releases these pointers under the lock, so any thread may call
 * this. */
static void shutdown_all(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mfd_channel_shutdown(e->main_ch);
	mfd_channel_shutdown(e->main_raw);
	mfd_channel_shutdown(e->pre_ch);
	mfd_channel_shutdown(e->pre_raw);
	for (unsigned i = 0; i < 256; i++) {
		mfd_channel_shutdown(e->mf[i]);
		mfd_channel_shutdown(e->mf_raw[i]);
	}
	mfd_listener_shutdown(e->listener);
	if (e->send)
		mfd_multifd_send_cancel(e->send);
	if (e->recv)
		mfd_multifd_recv_cancel(e->recv);
	pthread_mutex_unlock(&e->lock);
}

/* A helper thread met an error no reconnection cures: record it (taking
 * @err) and stop every thread. */
static void fail_all(struct mfd_engine *e, mfd_error *err)
{
	record_error(e, err);
	atomic_store(&e->cancel, true);
	shutdown_all(e);
}

/* Test hook (engine.h): wraps each channel as it is created.  Set only while
 * no migration runs, so the threads that read it were created after it. */
static engine_wrap_fn chan_wrap_fn;
static void *chan_wrap_opaque;

void engine_set_channel_wrapper(engine_wrap_fn fn, void *opaque)
{
	chan_wrap_fn = fn;
	chan_wrap_opaque = opaque;
}

static int wrap_channel(struct mfd_engine *e, mfd_channel *ch, enum engine_chan_kind kind,
			unsigned index, mfd_error **errp)
{
	return chan_wrap_fn ? chan_wrap_fn(chan_wrap_opaque, ch, e->m, e->incoming, kind, index,
					   errp) : 0;
}

/* Publish a channel (or other object) so that cancel can reach it. */
#define PUBLISH(e, field, value)                         \
	do {                                             \
		pthread_mutex_lock(&(e)->lock);          \
		(e)->field = (value);                    \
		pthread_mutex_unlock(&(e)->lock);        \
		if (engine_cancelled(e))                 \
			shutdown_all(e);                 \
	} while (0)

uint64_t engine_bytes_sent(struct mfd_engine *e)
{
	uint64_t bytes = e->out ? mfd_stream_bytes(e->out) : 0;

	if (e->send) {
		struct mfd_multifd_stats *st = malloc(sizeof(*st));

		if (st) {
			mfd_multifd_send_stats(e->send, st);
			for (unsigned i = 0; i < st->channels; i++)
				bytes += st->ch[i].wire_bytes;
			free(st);
		}
	}
	return bytes;
}

/* Bytes of this connection's main stream: written (source) or read (destination). */
static uint64_t main_stream_bytes(struct mfd_engine *e)
{
	return e->out ? mfd_stream_bytes(e->out) : e->in ? mfd_stream_bytes(e->in) : 0;
}

/* Refresh the figures other threads read through mfd_migration_stats(). */
void engine_publish(struct mfd_engine *e)
{
	uint64_t main_bytes = e->main_bytes_dropped + atomic_load(&e->pre_bytes) +
			      main_stream_bytes(e);
	uint64_t remaining = e->incoming ? 0 : ramsec_remaining(e);

	pthread_mutex_lock(&e->lock);
	e->main_bytes_pub = main_bytes;
	e->remaining_pub = remaining;
	e->zero_pub = __atomic_load_n(&e->ram.zero_pages, __ATOMIC_RELAXED);
	e->normal_pub = __atomic_load_n(&e->ram.normal_pages, __ATOMIC_RELAXED);
	e->normal_bytes_pub = __atomic_load_n(&e->ram.normal_bytes, __ATOMIC_RELAXED);
	e->iterations_pub = e->iterations;
	e->dirty_syncs_pub = e->dirty_syncs;
	e->dirty_rate_pub = e->dirty_rate_pages;
	e->expected_downtime_pub = e->expected_downtime_ms;
	pthread_mutex_unlock(&e->lock);
}

/* ---- configuration --------------------------------------------------------------- */

static int level_param(mfd_migration *m, const char *codec)
{
	if (strcmp(codec, "zlib") == 0)
		return (int)m->params.i[MFD_P_MULTIFD_ZLIB_LEVEL];
	if (strcmp(codec, "zstd") == 0)
		return (int)m->params.i[MFD_P_MULTIFD_ZSTD_LEVEL];
	if (strcmp(codec, "lz4") == 0)
		return (int)m->params.i[MFD_P_MULTIFD_LZ4_LEVEL];
	return mfd_compress_find(codec)->level_default;
}

/* zero-copy-send hands guest pages to the kernel's TCP zero-copy send
 * (MSG_ZEROCOPY), QEMU's conditions: multifd, no codec, no TLS. */
static int check_zero_copy(mfd_migration *m, bool stream, bool unix_uri, mfd_error **errp)
{
	const char *codec = m->params.s[MFD_P_MULTIFD_COMPRESSION];

	if (stream)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send works on multifd channels: "
				     "it needs a tcp: URI, not fd: or file:");
	if (unix_uri)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send needs a tcp: URI: the "
				     "kernel's zero-copy send (MSG_ZEROCOPY) is for TCP, not unix "
				     "sockets");
	if (strcmp(codec, "none") != 0)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send sends guest pages as they "
				     "are: it needs multifd-compression none, not %s", codec);
	if (*m->params.s[MFD_P_TLS_CREDS] || *m->params.s[MFD_P_TLS_PSK_FILE])
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send cannot be used with TLS "
				     "(tls-creds or tls-psk-file): encryption writes every page "
				     "into a new buffer anyway");
	return 0;
}

static int make_config(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	const char *codec = m->params.s[MFD_P_MULTIFD_COMPRESSION];
	int r = mfd_multifd_config_init(&e->mcfg, errp);

	if (r < 0)
		return r;
	e->mcfg.channels = (unsigned)m->params.i[MFD_P_MULTIFD_CHANNELS];
	e->mcfg.packet_bytes = (uint32_t)(m->params.i[MFD_P_MULTIFD_PACKET_SIZE] * 4096);
	e->mcfg.zero_detect = (enum mfd_zero_detect)m->params.i[MFD_P_ZERO_PAGE_DETECTION];
	e->mcfg.adaptive_codec = m->params.i[MFD_P_MULTIFD_COMPRESSION_ADAPTIVE] != 0;
	e->mcfg.zero_copy = !e->incoming && m->params.i[MFD_P_ZERO_COPY_SEND] != 0;
	e->mcfg.timeout_ms = m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	if (strcmp(codec, "none") != 0) {
		e->mcfg.codec = mfd_compress_find(codec);
		if (!e->mcfg.codec)
			return mfd_error_set(errp, MFD_ENOTSUP, "multifd-compression '%s' is unknown",
					     codec);
		e->mcfg.level = level_param(m, codec);
	}
	return 0;
}

static int make_creds(struct mfd_engine *e, enum mfd_tls_role role, mfd_error **errp)
{
	mfd_migration *m = e->m;
	const char *x509 = m->params.s[MFD_P_TLS_CREDS], *psk = m->params.s[MFD_P_TLS_PSK_FILE];
	const char *authz = m->params.s[MFD_P_TLS_AUTHZ];
	const char *host = m->params.s[MFD_P_TLS_HOSTNAME];
	int64_t minv = m->params.i[MFD_P_TLS_MIN_VERSION];
	int r;

	/* A TLS option that would have no effect is refused, never ignored. */
	if (!*x509 && !*psk) {
		const char *knob = *authz ? "tls-authz" : *host ? "tls-hostname"
				 : minv ? "tls-min-version" : NULL;

		if (knob)
			return mfd_error_set(errp, MFD_EINVAL, "%s needs TLS (tls-creds or "
					     "tls-psk-file): without it the migration is not "
					     "encrypted and %s would do nothing", knob, knob);
		return 0;
	}
	if (*x509 && *psk)
		return mfd_error_set(errp, MFD_EINVAL, "tls-creds and tls-psk-file are both set; "
				     "choose x509 or PSK");
	if (*authz && role != MFD_TLS_SERVER)
		return mfd_error_set(errp, MFD_EINVAL, "tls-authz applies to the destination (it "
				     "lists the client certificate DNs or PSK identities it "
				     "accepts); unset it on the source");
	if (*host && *psk)
		return mfd_error_set(errp, MFD_EINVAL, "tls-hostname applies to x509 (tls-creds): "
				     "a PSK connection verifies no server name; unset it");
	if (*host && role == MFD_TLS_SERVER)
		return mfd_error_set(errp, MFD_EINVAL, "tls-hostname applies to the source (the "
				     "name it checks the server certificate against); unset it on "
				     "the destination");
	r = *x509 ? mfd_tls_creds_new_x509(x509, role, &e->creds, errp)
		  : mfd_tls_creds_new_psk(psk, role, &e->creds, errp);
	if (r == 0 && (r = mfd_tls_creds_set(e->creds, "min-version", minv ? "1.3" : "1.2",
					      errp)) < 0)
		mfd_error_prefix(errp ? *errp : NULL, "tls-min-version");
	if (r < 0 || !*authz)
		return r;
	/* One DN (x509) or PSK identity per '|'-separated entry. */
	char *list = strdup(authz), *save = NULL;

	if (!list)
		return mfd_error_set(errp, MFD_ENOMEM, "tls-authz: out of memory");
	unsigned n = 0;

	for (char *dn = strtok_r(list, "|", &save); dn && r == 0; dn = strtok_r(NULL, "|", &save), n++)
		r = mfd_tls_creds_set(e->creds, "authz", dn, errp);
	free(list);
	if (r == 0 && n == 0)
		r = mfd_error_set(errp, MFD_EINVAL, "tls-authz lists no DN or PSK identity (only "
				  "'|' separators)");
	return r;
}

/*
 * Once connected, a channel may stay quiet as long as the guest is: the main
 * channel's return path between messages, a multifd channel between passes,
 * the preempt channel while the guest does not fault (postcopy can push for
 * minutes without one request).  Each side clears the deadline here, on the
 * first connection as after a recovery.
 */
static void relax_timeouts(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mfd_channel_set_option(e->main_ch, "timeout-ms", 0, NULL);
	if (e->pre_ch)
		mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	for (unsigned i = 0; i < 256; i++)
		if (e->mf[i])
			mfd_channel_set_option(e->mf[i], "timeout-ms", 0, NULL);
	pthread_mutex_unlock(&e->lock);
}

static int tune_channel(struct mfd_engine *e, mfd_channel *ch)
{
	int64_t t = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];

	/* Stalled I/O becomes an error instead of a hang; not every transport
	 * has a peer timeout. */
	mfd_channel_set_option(ch, "timeout-ms", t, NULL);
	mfd_channel_set_option(ch, "peer-timeout-ms", t, NULL);
	return 0;
}

/*
 * Connect one channel of the source, with TLS when configured.  slot -1 is the
 * main channel, else a multifd channel; both ends are published before the
 * handshake so a cancel can interrupt it.
 */
static int open_out(struct mfd_engine *e, int slot, mfd_error **errp)
{
	int64_t t = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	mfd_channel *raw = NULL, *ch = NULL;
	int r;

	if (engine_cancelled(e))
		return mfd_error_set(errp, MFD_ECANCELED, "migration cancelled");
	if ((r = mfd_channel_connect(e->uri, (int)t, &raw, errp)) < 0)
		return r;
	if ((r = wrap_channel(e, raw, slot == -2 ? ENGINE_CH_PREEMPT : slot < 0 ? ENGINE_CH_MAIN
				: ENGINE_CH_MULTIFD, slot < 0 ? 0 : (unsigned)slot, errp)) < 0) {
		mfd_channel_free(raw);
		return r;
	}
	tune_channel(e, raw);
	if (slot >= 0 && e->mcfg.zero_copy &&
	    (r = mfd_channel_set_option(raw, "zero-copy", 1, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "zero-copy-send");
		mfd_channel_free(raw);
		return r;
	}
	if (slot == -2)
		PUBLISH(e, pre_raw, raw);
	else if (slot < 0)
		PUBLISH(e, main_raw, raw);
	else
		PUBLISH(e, mf_raw[slot], raw);
	if (!e->creds) {
		ch = raw;
	} else {
		const char *name = e->m->params.s[MFD_P_TLS_HOSTNAME];

		if (!*name)
			name = e->tls_host;
		if ((r = mfd_channel_tls_wrap(raw, e->creds, name, 0, &ch, errp)) < 0)
			return r;
	}
	pthread_mutex_lock(&e->lock);
	if (slot == -2) {
		e->pre_ch = ch;
		if (ch == raw)
			e->pre_raw = NULL;
	} else if (slot < 0) {
		e->main_ch = ch;
		if (ch == raw)
			e->main_raw = NULL;
	} else {
		e->mf[slot] = ch;
		if (ch == raw)
			e->mf_raw[slot] = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* ---- main-channel hello -------------------------------------------------------------- */

/* Reserved bytes are zero on the wire; a peer that sets them speaks something
 * we do not know.  Returns the offset of the first non-zero byte or -1. */
static int first_nonzero(const uint8_t *h, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		if (h[i])
			return (int)i;
	return -1;
}

static void main_hello_encode(struct mfd_engine *e, uint8_t h[MAIN_HELLO_SIZE], bool resume)
{
	const char *codec = e->mcfg.codec ? e->mcfg.codec->name : "none";
	uint32_t flags = (e->use_rp ? MAIN_HELLO_RETURN_PATH : 0) |
			 (e->postcopy ? MAIN_HELLO_POSTCOPY : 0) | (e->preempt ? MAIN_HELLO_PREEMPT : 0) |
			 (resume ? MAIN_HELLO_RESUME : 0) | (e->confirm ? MAIN_HELLO_CONFIRM : 0);

	memset(h, 0, MAIN_HELLO_SIZE);
	mfd_store_be32(h, MAIN_HELLO_MAGIC);
	mfd_store_be32(h + 4, MAIN_HELLO_VERSION);
	mfd_store_be32(h + 8, flags);
	mfd_store_be16(h + 12, (uint16_t)(e->use_multifd ? e->nchan : 0));
	mfd_store_be32(h + 16, e->mcfg.packet_bytes);
	memcpy(h + 32, e->mcfg.uuid, MFD_UUID_LEN);
	memcpy(h + 48, e->mcfg.token, MFD_TOKEN_LEN);
	h[80] = (uint8_t)strlen(codec);
	memcpy(h + 81, codec, strlen(codec));
}

/* Destination: the main hello fixes the session; the multifd hellos are checked
 * against it. */
static int main_hello_check(struct mfd_engine *e, mfd_channel *ch, bool *stray,
			    mfd_error **errp)
{
	uint8_t h[MAIN_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	const char *want = e->mcfg.codec ? e->mcfg.codec->name : "none";
	char codec[32], esc[ESCAPE_BUF_SIZE];
	unsigned n;
	int r = mfd_channel_readv_full(ch, &iov, 1, errp);

	/* Nothing, junk or someone else's hello: not a source of ours. */
	*stray = true;
	if (r < 0)
		return r;
	if (mfd_load_be32(h) == MFD_HELLO_MAGIC)
		return mfd_error_set(errp, MFD_EPROTO,
				     "a multifd channel arrived before the main channel");
	if (mfd_load_be32(h) != MAIN_HELLO_MAGIC)
		return mfd_error_set(errp, MFD_EBADMAGIC,
				     "main channel: magic 0x%08x, expected 0x%08x (not a libmultifd "
				     "source?)", mfd_load_be32(h), MAIN_HELLO_MAGIC);
	if (mfd_load_be32(h + 4) != MAIN_HELLO_VERSION)
		return mfd_error_set(errp, MFD_EBADVERSION, "main channel: hello version %u, this "
				     "library speaks %u", mfd_load_be32(h + 4), MAIN_HELLO_VERSION);
	/* A libmultifd source: what does not match is a configuration error. */
	*stray = false;
	uint32_t flags = mfd_load_be32(h + 8);

	if (flags & ~MAIN_HELLO_FLAGS)
		return mfd_error_set(errp, MFD_EPROTO, "main channel: unknown hello flags 0x%x",
				     flags);
	if (flags & MAIN_HELLO_RESUME)
		return mfd_error_set(errp, MFD_ESTATE, "main channel: the source resumes a paused "
				     "postcopy migration, but this side starts a new one (use "
				     "mfd_migrate_recover() on the paused destination)");
	if (!!(flags & MAIN_HELLO_POSTCOPY) != e->postcopy ||
	    !!(flags & MAIN_HELLO_PREEMPT) != e->preempt)
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source has postcopy-ram %s and postcopy-preempt %s, this side "
				     "%s and %s (set them alike on both sides)",
				     flags & MAIN_HELLO_POSTCOPY ? "on" : "off",
				     flags & MAIN_HELLO_PREEMPT ? "on" : "off", e->postcopy ? "on" : "off",
				     e->preempt ? "on" : "off");
	if (e->postcopy && !(flags & MAIN_HELLO_RETURN_PATH))
		return mfd_error_set(errp, MFD_EPROTO, "postcopy-ram needs the return path, which "
				     "the source turned off");
	if (!!(flags & MAIN_HELLO_CONFIRM) != e->confirm)
		return mfd_error_set(errp, MFD_EPROTO, "the source has switchover-confirm %s, this "
				     "side %s (set it alike on both sides)",
				     flags & MAIN_HELLO_CONFIRM ? "on" : "off", e->confirm ? "on" : "off");
	n = mfd_load_be16(h + 12);
	if (n != (e->use_multifd ? e->nchan : 0))
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source uses %u multifd channels, this side expects %u (set "
				     "multifd-channels alike)", n, e->use_multifd ? e->nchan : 0);
	if (mfd_load_be32(h + 16) != e->mcfg.packet_bytes)
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source's packets hold %u bytes, this side's %u (set "
				     "multifd-packet-size alike)", mfd_load_be32(h + 16),
				     e->mcfg.packet_bytes);
	if (h[80] == 0 || h[80] > 31)
		return mfd_error_set(errp, MFD_EPROTO, "main channel: codec name length %u", h[80]);
	memcpy(codec, h + 81, h[80]);
	codec[h[80]] = '\0';
	if (strlen(codec) != h[80])
		return mfd_error_set(errp, MFD_EPROTO, "main channel: codec name of %u bytes "
				     "contains a NUL byte: '%s'", h[80],
				     escape_bytes(esc, sizeof(esc), h + 81, h[80]));
	if (strcmp(codec, want) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source compresses with '%s', this side expects '%s' (set "
				     "multifd-compression alike)",
				     escape_bytes(esc, sizeof(esc), codec, h[80]), want);
	int bad = first_nonzero(h, 14, 16);

	if (bad < 0)
		bad = first_nonzero(h, 20, 32);
	if (bad < 0)
		bad = first_nonzero(h, 81 + (size_t)h[80], MAIN_HELLO_SIZE);
	if (bad >= 0)
		return mfd_error_set(errp, MFD_EPROTO, "main channel: reserved hello byte %d is "
				     "0x%02x, not 0", bad, h[bad]);
	e->use_rp = flags & MAIN_HELLO_RETURN_PATH;
	memcpy(e->mcfg.uuid, h + 32, MFD_UUID_LEN);
	memcpy(e->mcfg.token, h + 48, MFD_TOKEN_LEN);
	return 0;
}

/* ---- return path ------------------------------------------------------------------- */

/*
 * A channel error that a stream latched names only the transport
 * ("tcp:host:port: ..."): when @s failed, say which channel it was.  Refusals
 * already start with the label, so they are left alone.
 */
static void name_stream(mfd_stream *s, const char *label, mfd_error **errp)
{
	if (s && errp && *errp && mfd_stream_error(s, NULL) < 0 &&
	    !strstr(mfd_error_message(*errp), label))
		mfd_error_prefix(*errp, "%s", label);
}

/* The phase a return-path failure interrupted, for its message. */
static const char *phase_name(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	enum mfd_state st = e->state;

	pthread_mutex_unlock(&e->lock);
	switch (st) {
	case MFD_STATE_SETUP:
		return "setup";
	case MFD_STATE_ACTIVE:
		return "iteration";
	case MFD_STATE_DEVICE:
		return "switchover";
	case MFD_STATE_POSTCOPY_ACTIVE:
	case MFD_STATE_POSTCOPY_PAUSED:
	case MFD_STATE_POSTCOPY_RECOVER:
		return "postcopy";
	default:
		return mfd_state_name(st);
	}
}


/*
 * Destination: one message (be16 type, be16 length, payload, then @extra
 * pieces outside the length) to the source: on the main channel's return
 * path, or on the preempt channel.  The writer's lock (out_lock, pre_lock)
 * orders writers and keeps the channel alive: the channels are released only
 * under it (release_channels, drop_connection).
 */
static int msg_send(struct mfd_engine *e, bool preempt, uint16_t type, const void *payload,
		    uint16_t len, const struct iovec *extra, int nextra, mfd_error **errp)
{
	pthread_mutex_t *wlock = preempt ? &e->pre_lock : &e->out_lock;
	uint8_t hdr[4];
	struct iovec iov[2 + 4];
	int n = 1;
	mfd_channel *ch;
	int r;

	if (nextra > 4)
		return mfd_error_set(errp, MFD_EINVAL, "return path: too many pieces");
	mfd_store_be16(hdr, type);
	mfd_store_be16(hdr + 2, len);
	iov[0] = (struct iovec){ hdr, sizeof(hdr) };
	if (len)
		iov[n++] = (struct iovec){ (void *)payload, len };
	for (int i = 0; i < nextra; i++)
		iov[n++] = extra[i];
	pthread_mutex_lock(wlock);
	pthread_mutex_lock(&e->lock);
	ch = preempt ? e->pre_ch : e->main_ch;
	pthread_mutex_unlock(&e->lock);
	r = ch ? mfd_channel_writev_full(ch, iov, n, errp)
	       : mfd_error_set(errp, MFD_ESTATE, preempt ? "preempt channel: not connected"
							 : "return path: no main channel");
	pthread_mutex_unlock(wlock);
	return r;
}

static int rp_send(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		   mfd_error **errp)
{
	return msg_send(e, false, type, payload, len, NULL, 0, errp);
}

int engine_rp_send(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		   mfd_error **errp)
{
	return rp_send(e, type, payload, len, errp);
}

int engine_rp_send_raw(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		       const struct iovec *extra, int nextra, mfd_error **errp)
{
	return msg_send(e, false, type, payload, len, extra, nextra, errp);
}

/*
 * Destination: one page request.  With postcopy-preempt it goes on the
 * preempt channel (whose other direction brings the page back), else on the
 * main channel's return path.
 */
int engine_send_page_request(struct mfd_engine *e, const uint8_t msg[RP_REQ_PAGES_LEN],
			     mfd_error **errp)
{
	return msg_send(e, e->preempt, RP_REQ_PAGES, msg, RP_REQ_PAGES_LEN, NULL, 0, errp);
}

static int rp_send_result(struct mfd_engine *e, int code, const char *msg, mfd_error **errp)
{
	uint8_t buf[4 + RP_MSG_MAX];
	size_t len = msg ? strlen(msg) : 0;

	if (!e->use_rp)
		return 0;
	if (len > RP_MSG_MAX)
		len = RP_MSG_MAX;	/* the full message stays in the destination's error */
	mfd_store_be32(buf, (uint32_t)code);
	if (len)
		memcpy(buf + 4, msg, len);
	return rp_send(e, RP_RESULT, buf, (uint16_t)(4 + len), errp);
}

/* An error that a reconnection can cure: the connection broke or stalled. */
static bool network_error(struct mfd_engine *e, int code)
{
	if (atomic_load(&e->user_cancel))
		return false;
	return code == MFD_EIO || code == MFD_EEOF || code == MFD_ETIMEDOUT || code == MFD_ECANCELED;
}

/* Postcopy lost a connection: every thread on it must notice. */
static void break_connections(struct mfd_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mfd_channel_shutdown(e->main_ch);
	mfd_channel_shutdown(e->main_raw);
	mfd_channel_shutdown(e->pre_ch);
	mfd_channel_shutdown(e->pre_raw);
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

/* Source: check a page request from the destination (which we do not trust);
 * @where names the channel it came on. */
static int page_request_parse(struct mfd_engine *e, const char *where, const uint8_t *buf,
			      uint16_t len, struct pc_req *rq, mfd_error **errp)
{
	mfd_migration *m = e->m;

	if (len != RP_REQ_PAGES_LEN)
		return mfd_error_set(errp, MFD_EPROTO, "%s: page request of %u bytes, "
				     "expected %u", where, len, RP_REQ_PAGES_LEN);
	rq->block = mfd_load_be16(buf);
	rq->len = mfd_load_be32(buf + 4);
	rq->offset = mfd_load_be64(buf + 8);
	if (!e->postcopy || !atomic_load(&e->in_postcopy))
		return mfd_error_set(errp, MFD_EPROTO, "%s: page request outside postcopy", where);
	if (rq->block >= m->nblocks)
		return mfd_error_set(errp, MFD_EPROTO, "%s: page request for block %u of %u",
				     where, rq->block, m->nblocks);
	const struct mfd_ram_block *bk = &m->blocks[rq->block];

	if (mfd_load_be16(buf + 2) || rq->len == 0 || rq->len > RP_REQ_MAX_BYTES ||
	    ((rq->offset | rq->len) & (bk->page_size - 1)) || rq->offset >= bk->size ||
	    rq->len > bk->size - rq->offset)
		return mfd_error_set(errp, MFD_EPROTO,
				     "%s: page request 0x%llx+%u is not whole pages of block "
				     "'%s' (%llu bytes)", where, (unsigned long long)rq->offset,
				     rq->len, bk->name, (unsigned long long)bk->size);
	pthread_mutex_lock(&e->lock);
	e->pc_requests++;
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Source: a page request on the main channel's return path (no preempt
 * channel): queued for the migration thread, which sends it before the next
 * pushed page. */
static int rp_page_request(struct mfd_engine *e, const uint8_t *buf, uint16_t len,
			   mfd_error **errp)
{
	struct pc_req rq;
	int r;

	if (e->preempt)
		return mfd_error_set(errp, MFD_EPROTO, "return path: page request on the main "
				     "channel; with postcopy-preempt requests travel on the preempt "
				     "channel");
	if ((r = page_request_parse(e, "return path", buf, len, &rq, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	if (e->req_count < PC_REQ_QUEUE) {
		e->reqs[(e->req_head + e->req_count++) % PC_REQ_QUEUE] = rq;
	} else {
		/* The background push delivers it anyway, only later. */
		e->pc_requests_dropped++;
	}
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/*
 * Source, postcopy-preempt: the destination writes its page requests on the
 * preempt channel, the other way from the pages; this thread reads each and
 * answers it at once on the same channel.  Neither direction shares a socket
 * with the bulk push (on the main socket a request took up to milliseconds
 * to reach the source's reader while the push kept that socket busy).
 */
static void *pre_server(void *arg)
{
	struct mfd_engine *e = arg;
	mfd_stream *s = NULL;
	mfd_error *err = NULL;
	mfd_channel *ch;
	int r;

	mfd_thread_name("mfd-preempt");
	pthread_mutex_lock(&e->lock);
	ch = e->pre_ch;
	pthread_mutex_unlock(&e->lock);
	r = ch ? mfd_stream_new(ch, MFD_STREAM_READ, &s, &err)
	       : mfd_error_set(&err, MFD_EEOF, "not connected");
	if (r == 0)
		mfd_stream_set_label(s, "preempt channel");
	while (r == 0) {
		uint16_t type, len;
		uint8_t buf[RP_REQ_PAGES_LEN];
		struct pc_req rq;

		if ((r = mfd_stream_get_be16(s, &type)) < 0 || (r = mfd_stream_get_be16(s, &len)) < 0)
			break;
		if (type != RP_REQ_PAGES) {
			r = mfd_error_set(&err, MFD_EPROTO, "preempt channel: message type %u (%u "
					  "bytes) from the destination; only REQ_PAGES (%u) travels "
					  "this way", type, len, RP_REQ_PAGES);
			break;
		}
		/* (A request of another length is refused before its body is read.) */
		if ((len == RP_REQ_PAGES_LEN && (r = mfd_stream_get_buf(s, buf, len)) < 0) ||
		    (r = page_request_parse(e, "preempt channel", buf, len, &rq, &err)) < 0)
			break;
		pthread_mutex_lock(&e->pre_lock);
		r = e->pre_out ? ramsec_serve_request(e, e->pre_out, &e->ram.pre_last_block, &rq, &err)
			       : mfd_error_set(&err, MFD_EEOF, "not connected");
		if (e->pre_out)
			atomic_store(&e->pre_bytes, mfd_stream_bytes(e->pre_out));
		pthread_mutex_unlock(&e->pre_lock);
	}
	if (!err)
		mfd_stream_error(s, &err);
	int code = mfd_error_code(err);
	bool net = network_error(e, code), done;

	pthread_mutex_lock(&e->lock);
	done = e->rp_result_seen;
	pthread_mutex_unlock(&e->lock);
	/* Once the end of the preempt stream is out, the pages are all sent and
	 * the return path tells how the migration ended: a lost channel is news
	 * only before that. */
	if (done || engine_cancelled(e) || (net && atomic_load(&e->pre_eos_sent))) {
		/* over: nothing to add */
	} else if (net && atomic_load(&e->in_postcopy)) {
		/* Postcopy survives this: the migration thread pauses. */
		mfd_log_warn("postcopy: preempt channel lost: %s", mfd_error_message(err));
		pthread_mutex_lock(&e->lock);
		e->rp_broken = true;
		pthread_mutex_unlock(&e->lock);
		break_connections(e);
	} else {
		mfd_error_prefix(err, "postcopy");
		fail_all(e, err);
		err = NULL;
	}
	mfd_error_free(err);
	mfd_stream_free(s);
	return NULL;
}

/* Source: serve requests from the preempt channel from now on (after the
 * switch, and after a recovery). */
static int start_pre_server(struct mfd_engine *e, mfd_error **errp)
{
	if (!e->preempt || e->pre_started)
		return 0;
	/* Idle while the guest does not fault: no read deadline. */
	mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	if (pthread_create(&e->pre_thread, NULL, pre_server, e) != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: cannot start the preempt thread");
	e->pre_started = true;
	return 0;
}

/* Source, recovery: the destination's received-pages bitmap of one block. */
static int rp_recv_bitmap(struct mfd_engine *e, mfd_stream *s, const uint8_t *buf, uint16_t len,
			  mfd_error **errp)
{
	mfd_migration *m = e->m;
	unsigned b;
	uint64_t bytes, end, *bm;
	int r;

	(void)len;	/* RP_RECV_BITMAP_LEN, and in recovery: rp_check() saw to both */
	b = mfd_load_be16(buf);
	bytes = mfd_load_be64(buf + 8);
	if (b >= m->nblocks)
		return mfd_error_set(errp, MFD_EPROTO, "return path: RECV_BITMAP for block %u "
				     "(%u blocks)", b, m->nblocks);
	uint64_t want = ramsec_words(e->ram.npages[b]) * 8;

	if (bytes != want)
		return mfd_error_set(errp, MFD_EPROTO, "return path: RECV_BITMAP of block '%s' has "
				     "%llu bytes, expected %llu", m->blocks[b].name,
				     (unsigned long long)bytes, (unsigned long long)want);
	bm = malloc(want);
	if (!bm)
		return mfd_error_set(errp, MFD_ENOMEM, "recovery: out of memory for a bitmap");
	if ((r = mfd_stream_get_buf(s, bm, want)) < 0 || (r = mfd_stream_get_be64(s, &end)) < 0) {
		free(bm);
		return mfd_stream_error(s, errp);
	}
	if (end != RECV_BITMAP_END) {
		free(bm);
		return mfd_error_set(errp, MFD_EPROTO, "return path: RECV_BITMAP of block '%s' ends "
				     "with 0x%016llx, expected 0x%016llx", m->blocks[b].name,
				     (unsigned long long)end, (unsigned long long)RECV_BITMAP_END);
	}
	for (uint64_t w = 0; w < want / 8; w++) {
		const uint8_t *p = (const uint8_t *)&bm[w];
		uint64_t v = 0;

		for (int i = 7; i >= 0; i--)
			v = v << 8 | p[i];
		bm[w] = v;
	}
	ramsec_apply_recv_bitmap(e, b, bm);
	free(bm);
	pthread_mutex_lock(&e->lock);
	e->bitmaps_got++;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* Source states (enum mfd_state) as a bitmask, for rp_specs[].phases. */
#define RP_IN(st) (1u << (st))
#define RP_IN_ANY UINT32_MAX

/*
 * What the source accepts on the return path, by message type: the payload's
 * length (fixed when min == max) and the source states that expect the
 * message.  rp_check() applies it to every message before its handler runs;
 * a type without a name here is unknown.
 */
static const struct rp_spec {
	const char *name;	/* as errors give it */
	uint16_t min, max;	/* payload bytes */
	uint32_t phases;	/* RP_IN() of each state in which it is legal */
	const char *legal;	/* those states, in words */
} rp_specs[] = {
	/* PING 1 at setup, PING 3/4 with the postcopy package: any time. */
	[RP_PONG] = { "PONG", 4, 4, RP_IN_ANY, "any state" },
	/* A failure may come in any state; "loaded" (code 0) only after EOF went
	 * out, which is a fact of the stream, not a state: the handler checks
	 * eof_sent (docs/architecture.md, "Switchover"). */
	[RP_RESULT] = { "RESULT", 4, 4 + RP_MSG_MAX, RP_IN_ANY, "any state" },
	/* Sent at OPEN_RETURN_PATH or when the VMM approves, which may be late:
	 * any state, as for RESULT. */
	[RP_SWITCHOVER_ACK] = { "SWITCHOVER_ACK", 0, 0, RP_IN_ANY, "any state" },
	/* From the postcopy package (sent in device) on, and again after a
	 * recovery's RESUME_ACK; the handler also wants in_postcopy. */
	[RP_REQ_PAGES] = { "page request", RP_REQ_PAGES_LEN, RP_REQ_PAGES_LEN,
			   RP_IN(MFD_STATE_DEVICE) | RP_IN(MFD_STATE_POSTCOPY_ACTIVE) |
			   RP_IN(MFD_STATE_POSTCOPY_RECOVER), "postcopy" },
	/* Recovery only: it rewrites the map of pages still to push. */
	[RP_RECV_BITMAP] = { "RECV_BITMAP", RP_RECV_BITMAP_LEN, RP_RECV_BITMAP_LEN,
			     RP_IN(MFD_STATE_POSTCOPY_RECOVER), "postcopy recovery" },
	[RP_RESUME_ACK] = { "RESUME_ACK", 4, 4, RP_IN(MFD_STATE_POSTCOPY_RECOVER),
			    "postcopy recovery" },
};

/* Source: is a return-path message of @type and @len legal now? */
static int rp_check(struct mfd_engine *e, uint16_t type, uint16_t len, mfd_error **errp)
{
	const struct rp_spec *sp = type < MFD_ARRAY_SIZE(rp_specs) ? &rp_specs[type] : NULL;
	enum mfd_state st = (enum mfd_state)atomic_load(&e->state_pub);

	if (!sp || !sp->name)
		return mfd_error_set(errp, MFD_EPROTO, "return path: unknown message type %u "
				     "(%u bytes)", type, len);
	if (len < sp->min || len > sp->max)
		return sp->min == sp->max
		       ? mfd_error_set(errp, MFD_EPROTO, "return path: %s of %u bytes, expected %u",
				       sp->name, len, sp->min)
		       : mfd_error_set(errp, MFD_EPROTO, "return path: %s of %u bytes, expected at "
				       "least %u and at most %u", sp->name, len, sp->min, sp->max);
	if ((unsigned)st >= 32 || !(sp->phases & RP_IN(st)))
		return mfd_error_set(errp, MFD_EPROTO, "return path: %s outside %s (the source is "
				     "%s)", sp->name, sp->legal, mfd_state_name(st));
	return 0;
}

/* Source: read what the destination says until its RESULT. */
static void *rp_thread(void *arg)
{
	struct mfd_engine *e = arg;
	mfd_stream *s = NULL;
	mfd_error *err = NULL;
	bool theirs = false;	/* err is the destination's RESULT */
	int r;

	mfd_thread_name("mfd-return-path");
	r = mfd_stream_new(e->main_ch, MFD_STREAM_READ, &s, &err);

	if (r == 0)
		mfd_stream_set_label(s, "return path");
	while (r == 0) {
		uint16_t type, len;
		uint8_t buf[4 + RP_MSG_MAX + 1];

		if ((r = mfd_stream_get_be16(s, &type)) < 0 || (r = mfd_stream_get_be16(s, &len)) < 0)
			break;
		if (len > sizeof(buf) - 1) {
			r = mfd_error_set(&err, MFD_EPROTO, "return path: message of %u bytes", len);
			break;
		}
		if ((r = mfd_stream_get_buf(s, buf, len)) < 0 || (r = rp_check(e, type, len, &err)) < 0)
			break;
		if (type == RP_PONG) {
			/* PING 4 follows the postcopy package: the destination runs the guest. */
			if (mfd_load_be32(buf) == 4 && atomic_load(&e->in_postcopy)) {
				pthread_mutex_lock(&e->lock);
				if (!e->downtime_ns)
					e->downtime_ns = engine_now_ns() - e->t_stop_ns;
				pthread_mutex_unlock(&e->lock);
			}
			continue;
		} else if (type == RP_SWITCHOVER_ACK) {
			pthread_mutex_lock(&e->lock);
			e->switchover_acked = true;
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			continue;
		} else if (type == RP_REQ_PAGES) {
			if ((r = rp_page_request(e, buf, len, &err)) < 0)
				break;
			continue;
		} else if (type == RP_RECV_BITMAP) {
			if ((r = rp_recv_bitmap(e, s, buf, len, &err)) < 0)
				break;
			continue;
		} else if (type == RP_RESUME_ACK) {
			if (mfd_load_be32(buf) != 1) {
				r = mfd_error_set(&err, MFD_EPROTO, "return path: RESUME_ACK with "
						  "value %u, expected 1", mfd_load_be32(buf));
				break;
			}
			pthread_mutex_lock(&e->lock);
			e->resume_acked = true;
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			continue;
		} else if (type == RP_RESULT) {
			int code = (int32_t)mfd_load_be32(buf);

			if (code > 0) {
				/* Not a result at all: no waiter may take it for one. */
				r = mfd_error_set(&err, MFD_EPROTO, "return path: RESULT with code %d "
						  "(neither 0 nor an error code)", code);
				break;
			}
			/* "Loaded" is legal only once the stream ended; a failure at any time. */
			if (code == 0 && !atomic_load(&e->eof_sent)) {
				r = mfd_error_set(&err, MFD_EPROTO, "return path: the destination "
						  "reported a result before the end of the stream "
						  "(RESULT 0 before EOF was sent)");
				break;
			}
			/* The destination's words are peer bytes: kept escaped, whole. */
			size_t tlen = 4 * (size_t)(len - 4) + 1;
			char *text = malloc(tlen);

			if (text)
				escape_bytes(text, tlen, buf + 4, len - 4u);
			pthread_mutex_lock(&e->lock);
			e->rp_result_seen = true;
			e->rp_result = code < MFD_ERRCODE_MIN ? MFD_EPROTO : code;
			free(e->rp_message);
			e->rp_message = text;	/* only this thread replaces it */
			pthread_cond_broadcast(&e->cond);
			pthread_mutex_unlock(&e->lock);
			if (code < 0) {
				mfd_error_set(&err, e->rp_result, "the destination failed: %s",
					      text ? text : "(no memory for its message)");
				r = e->rp_result;
				theirs = true;
			}
			break;
		}
	}
	if (r < 0) {
		/* The destination's RESULT carries its own context; anything else
		 * broke here, on the main channel, in the phase under way. */
		if (!err)
			mfd_stream_error(s, &err);
		pthread_mutex_lock(&e->lock);
		bool done = e->rp_result_seen && e->rp_result == 0;

		pthread_mutex_unlock(&e->lock);
		if (!done && atomic_load(&e->in_postcopy) && !e->rp_result_seen &&
		    network_error(e, mfd_error_code(err))) {
			/* Postcopy survives this: the migration thread pauses. */
			mfd_log_warn("postcopy: return path lost: %s", mfd_error_message(err));
			pthread_mutex_lock(&e->lock);
			e->rp_broken = true;
			pthread_mutex_unlock(&e->lock);
			break_connections(e);
		} else {
			if (mfd_error_code(err) == MFD_EEOF) {
				mfd_error_free(err);
				err = NULL;
				mfd_error_set(&err, MFD_EEOF, "the destination closed the connection "
					      "without a result (it failed, was cancelled or died)");
			}
			if (!theirs)
				mfd_error_prefix(err, "%s: main channel (return path)", phase_name(e));
			if (!done && !engine_cancelled(e)) {
				/* The destination gave up: stop sending now. */
				fail_all(e, err);
				err = NULL;
			}
		}
	}
	mfd_error_free(err);
	mfd_stream_free(s);
	pthread_mutex_lock(&e->lock);
	e->rp_done = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

/*
 * A source that failed while the destination was refusing the stream mostly
 * fails on the broken connection first; the destination's own reason is the
 * useful one, and it is usually already on its way: wait for it briefly.
 */
static mfd_error *destination_reason(struct mfd_engine *e)
{
	struct timespec dl;
	mfd_error *err = NULL;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 1;
	pthread_mutex_lock(&e->lock);
	while (!e->rp_result_seen && !e->rp_done)
		if (pthread_cond_timedwait(&e->cond, &e->lock, &dl) != 0)
			break;
	if (e->rp_result_seen && e->rp_result < 0)
		mfd_error_set(&err, e->rp_result, "the destination failed: %s",
			      e->rp_message ? e->rp_message : "");
	pthread_mutex_unlock(&e->lock);
	return err;
}

/* ---- source -------------------------------------------------------------------------- */

static int policy_says_switch(struct mfd_engine *e)
{
	mfd_migration *m = e->m;
	uint64_t must = 0, can = 0;
	struct mfd_policy_info info = { 0 };
	struct policy_input in = { 0 };
	struct policy_estimate est;
	int verdict;
	double bw;

	if (e->use_rp && mfd_savevm_switchover_ack_needed(m)) {
		pthread_mutex_lock(&e->lock);
		bool acked = e->switchover_acked;

		pthread_mutex_unlock(&e->lock);
		if (!acked)
			return 0;	/* a destination device has not consented yet */
	}

	int64_t limit_ms = mfd_param_live(&m->params, MFD_P_DOWNTIME_LIMIT);
	int64_t avail = mfd_param_live(&m->params, MFD_P_AVAIL_SWITCHOVER_BANDWIDTH);

	mfd_savevm_pending_estimate(m, &must, &can);
	if (must <= (uint64_t)(e->bandwidth * (double)limit_ms / 1000.0))
		/* Close to the line: ask the sections for their exact figure. */
		mfd_savevm_pending_exact(m, &must, &can);
	bw = avail > 0 ? (double)avail : e->bandwidth;
	in.iteration = e->iterations;
	in.pending_bytes = must;
	in.bandwidth = bw;
	in.downtime_limit_ms = (uint64_t)limit_ms;
	in.postcopy = e->postcopy;
	if (e->send) {
		struct mfd_multifd_stats *st = malloc(sizeof(*st));

		if (st) {
			mfd_multifd_send_stats(e->send, st);
			in.syncs = st->syncs;
			in.sync_ns_max = st->sync_ns_max;
			in.sync_ns_recent = st->sync_ns_recent;
			free(st);
		}
	}
	verdict = policy_decide(&in, &e->ram.policy, &est);
	if (est.stalled_now) {
		/* No event for it in the hooks: a warning with the reason, and a count. */
		pthread_mutex_lock(&e->lock);
		e->precopy_stalls++;
		pthread_mutex_unlock(&e->lock);
		mfd_log_warn("precopy is not converging: %u passes in a row left more than 90%% "
			     "of the smallest pending figure (%llu bytes; now %llu, expected "
			     "downtime %llu ms, downtime-limit %lld ms, %.1f MiB/s); %s",
			     est.stalled_passes, (unsigned long long)est.best_pending,
			     (unsigned long long)must, (unsigned long long)est.expected_downtime_ms,
			     (long long)limit_ms, bw / 1048576,
			     m->hooks.switchover_policy ? "the switchover_policy hook decides"
			     : e->postcopy ? "switching to postcopy"
			     : "iterating on (postcopy-ram is off)");
	}
	info.iteration = e->iterations;
	info.pending_bytes = must;
	info.bandwidth = (uint64_t)bw;
	info.downtime_limit_ms = (uint64_t)limit_ms;
	info.dirty_rate = e->dirty_rate_bytes;
	info.switchover_cost_ms = est.switchover_cost_ms;
	e->expected_downtime_ms = est.expected_downtime_ms;
	if (m->hooks.switchover_policy) {
		int v = m->hooks.switchover_policy(m->hooks_opaque, &info);

		return v == MFD_POLICY_POSTCOPY ? (e->postcopy ? v : 0) : v > 0;
	}
	return verdict;
}

/* Auto-converge: when the guest dirties more than half of what the link moves,
 * it will not converge: ask the VMM to slow it, more at every pass. */
static void maybe_throttle(struct mfd_engine *e)
{
	mfd_migration *m = e->m;
	double dirty_bytes_rate = (double)e->dirty_rate_bytes;
	int next;

	if (!m->params.i[MFD_P_AUTO_CONVERGE] || !m->hooks.throttle || e->iterations < 2 ||
	    e->bandwidth <= 0 || dirty_bytes_rate < 0.5 * e->bandwidth)
		return;
	next = e->throttle ? e->throttle + (int)m->params.i[MFD_P_CPU_THROTTLE_INCREMENT]
			   : (int)m->params.i[MFD_P_CPU_THROTTLE_INITIAL];
	if (next > m->params.i[MFD_P_MAX_CPU_THROTTLE])
		next = (int)m->params.i[MFD_P_MAX_CPU_THROTTLE];
	if (next != e->throttle) {
		pthread_mutex_lock(&e->lock);
		e->throttle = next;
		pthread_mutex_unlock(&e->lock);
		mfd_log_info("auto-converge: throttling the guest by %d%%", next);
		m->hooks.throttle(m->hooks_opaque, next);
	}
}

static void preempt_hello_encode(struct mfd_engine *e, uint8_t h[PREEMPT_HELLO_SIZE])
{
	memset(h, 0, PREEMPT_HELLO_SIZE);
	mfd_store_be32(h, PREEMPT_HELLO_MAGIC);
	mfd_store_be32(h + 4, PREEMPT_HELLO_VERSION);
	memcpy(h + 32, e->mcfg.uuid, MFD_UUID_LEN);
	memcpy(h + 48, e->mcfg.token, MFD_TOKEN_LEN);
}

/* Source: the preempt channel, right after the main channel (the destination
 * takes the next connection for it). */
static int open_preempt(struct mfd_engine *e, mfd_error **errp)
{
	uint8_t h[PREEMPT_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	mfd_stream *out = NULL;
	int r = open_out(e, -2, errp);

	if (r == 0) {
		preempt_hello_encode(e, h);
		r = mfd_channel_writev_full(e->pre_ch, &iov, 1, errp);
	}
	if (r == 0 && (r = mfd_stream_new(e->pre_ch, MFD_STREAM_WRITE, &out, errp)) == 0) {
		mfd_stream_set_label(out, "preempt channel");
		pthread_mutex_lock(&e->pre_lock);
		e->pre_out = out;
		e->ram.pre_last_block = -1;
		pthread_mutex_unlock(&e->pre_lock);
	}
	if (r < 0)
		mfd_error_prefix(errp ? *errp : NULL, "preempt channel");
	return r;
}

static int source_connect(struct mfd_engine *e, mfd_error **errp)
{
	uint8_t hello[MAIN_HELLO_SIZE];
	struct iovec iov = { hello, sizeof(hello) };
	struct mfd_multifd_send *send = NULL;
	int r = open_out(e, -1, errp);

	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup: main channel");
		return r;
	}
	main_hello_encode(e, hello, false);
	if ((r = mfd_channel_writev_full(e->main_ch, &iov, 1, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup: main channel: hello");
		return r;
	}
	if (e->preempt && (r = open_preempt(e, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup");
		return r;
	}
	if (!e->use_multifd)
		return 0;
	/* Each hello right after its channel opens: the destination identifies
	 * channels one by one, reading each hello before accepting the next. */
	uint64_t digest = mfd_ram_blocks_digest(e->m->blocks, e->m->nblocks);

	for (unsigned i = 0; i < e->nchan; i++) {
		uint8_t h[MFD_HELLO_SIZE];
		struct iovec hv = { h, sizeof(h) };

		r = open_out(e, (int)i, errp);
		if (r == 0) {
			mfd_hello_encode(h, &e->mcfg, (uint16_t)i, digest);
			r = mfd_channel_writev_full(e->mf[i], &hv, 1, errp);
		}
		if (r < 0) {
			mfd_error_prefix(errp ? *errp : NULL, "setup: multifd channel %u", i);
			return r;
		}
	}
	e->mcfg.hellos_sent = true;
	r = mfd_multifd_send_new(&e->mcfg, e->m->blocks, e->m->nblocks, e->mf, &send, errp);
	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "setup");
		return r;
	}
	PUBLISH(e, send, send);
	return 0;
}

/* A pthread_cond_timedwait() deadline @ms from now (CLOCK_REALTIME). */
static struct timespec deadline_in(int64_t ms)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += ms / 1000;
	dl.tv_nsec += (long)(ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	return dl;
}

static int wait_result(struct mfd_engine *e, mfd_error **errp)
{
	int64_t timeout = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	struct timespec dl = deadline_in(timeout);
	int r = 0;

	pthread_mutex_lock(&e->lock);
	while (!e->rp_result_seen && !e->err && !engine_cancelled(e) && !e->rp_done && r == 0)
		r = pthread_cond_timedwait(&e->cond, &e->lock, &dl);
	bool seen = e->rp_result_seen;
	int code = e->rp_result;

	pthread_mutex_unlock(&e->lock);
	if (seen && code == 0)
		return 0;
	if (r == ETIMEDOUT)
		return mfd_error_set(errp, MFD_ETIMEDOUT,
				     "switchover: no answer from the destination within %lld ms",
				     (long long)timeout);
	return mfd_error_set(errp, MFD_ECANCELED, "switchover: the destination did not confirm");
}

/*
 * Source, precopy, EOF out: learn whether the destination took the VM over.
 * RESULT 0: it did (with switchover-confirm, once our confirmation went
 * out).  RESULT < 0: it failed, the VM runs here again.  No RESULT: without
 * switchover-confirm the destination may be running the VM, and the VM
 * stays stopped here with MFD_EUNKNOWN for the VMM to resolve; with it, the
 * destination starts nothing without our confirmation, so the VM runs here
 * again.
 */
static int switchover_commit(struct mfd_engine *e, mfd_error **errp)
{
	mfd_error *err = NULL;
	int r = wait_result(e, &err);

	if (r == 0 && e->confirm) {
		uint8_t c[SWITCHOVER_CONFIRM_LEN];

		mfd_store_be32(c, SWITCHOVER_CONFIRM_MAGIC);
		mfd_store_be32(c + 4, 1);
		/* A failed write did not deliver it whole: the destination will not
		 * start the VM, so it may run here again. */
		if (mfd_stream_put_buf(e->out, c, sizeof(c)) < 0 || mfd_stream_flush(e->out) < 0) {
			r = mfd_stream_error(e->out, errp);
			name_stream(e->out, "main channel", errp);
			mfd_error_prefix(errp ? *errp : NULL, "switchover: sending the confirmation "
					 "(the destination will not start the VM)");
		}
		mfd_error_free(err);
		return r;
	}
	if (r == 0)
		return 0;
	pthread_mutex_lock(&e->lock);
	bool theirs = e->rp_result_seen && e->rp_result < 0;

	pthread_mutex_unlock(&e->lock);
	if (theirs) {
		/* The destination failed and said so: its reason is the error. */
		mfd_error_propagate(errp, err);
		return r;
	}
	if (e->confirm) {
		/* It waits in vain for our confirmation: the VM may run here again.
		 * This replaces whatever the return path recorded. */
		mfd_error *mine = NULL;

		pthread_mutex_lock(&e->lock);
		const char *why = mfd_error_message(e->err ? e->err : err);

		r = mfd_error_set(&mine, mfd_error_code(e->err ? e->err : err), "switchover: no "
				  "result from the destination (%s); no confirmation was sent, so "
				  "the destination will not start the VM and it runs here again", why);
		mfd_error_set(errp, r, "%s", mfd_error_message(mine));
		mfd_error_free(e->err);
		e->err = mine;
		pthread_mutex_unlock(&e->lock);
		mfd_error_free(err);
		return r;
	}
	pthread_mutex_lock(&e->lock);
	e->outcome_unknown = true;
	mfd_error *cause = e->err;

	r = mfd_error_set(errp, MFD_EUNKNOWN, "switchover: the end of the stream went out but "
			  "no result came back (%s): the destination may be running the VM; the "
			  "VM stays stopped here until the VMM learns whether it runs there",
			  mfd_error_message(cause ? cause : err));
	pthread_mutex_unlock(&e->lock);
	mfd_error_free(err);
	return r;
}

/* ---- source, postcopy ------------------------------------------------------------ */

static int flush_out(mfd_stream *s, mfd_error **errp)
{
	return mfd_stream_flush(s) < 0 ? mfd_stream_error(s, errp) : 0;
}

/* Stop the VM, hand the destination what it needs to run the guest. */
static int postcopy_start(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	mfd_channel *mw = NULL;
	mfd_stream *pkg = NULL;
	const void *blob;
	size_t len;
	bool ok;
	int r;

	/* RAM flushes and syncs multifd: no precopy page can land after postcopy
	 * placed a newer copy. */
	r = mfd_savevm_postcopy_prepare(m, e->out, &ok, errp);
	if (r == 0)
		r = flush_out(e->out, errp);
	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: save_postcopy_prepare");
		return r;
	}
	set_state(e, MFD_STATE_DEVICE);
	pthread_mutex_lock(&e->lock);
	e->t_stop_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	if (m->hooks.vm_stop && (r = m->hooks.vm_stop(m->hooks_opaque, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: vm_stop hook");
		return errp && *errp ? mfd_error_normalize(*errp) : MFD_EHANDLER;
	}
	e->vm_stopped = true;
	/* The last dirty pages; multifd has nothing more to carry. */
	if ((r = ramsec_final_sync(e, errp)) < 0 ||
	    (e->send && (r = mfd_multifd_send_finish(e->send, errp)) < 0) ||
	    (r = ramsec_send_discards(e, e->out, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: start");
		return r;
	}
	/* LISTEN, the device state that cannot follow later, RUN: one package, so
	 * the destination reads it whole before it listens on the main channel. */
	if ((r = mfd_channel_new_mem_writer(MFD_PACKAGED_MAX_DEFAULT, &mw, errp)) < 0)
		return r;
	if ((r = mfd_stream_new(mw, MFD_STREAM_WRITE, &pkg, errp)) == 0) {
		mfd_savevm_send_postcopy_listen(pkg);
		r = mfd_savevm_complete_precopy(m, pkg, true, errp);
		if (r == 0)
			r = mfd_savevm_save_nonlive(m, pkg, errp);
		if (r == 0) {
			mfd_savevm_send_ping(pkg, 3);
			mfd_savevm_send_postcopy_run(pkg);
			r = flush_out(pkg, errp);
		}
		if (r == 0 && (r = mfd_channel_mem_contents(mw, &blob, &len)) == 0) {
			atomic_store(&e->in_postcopy, true);
			mfd_savevm_send_packaged(e->out, blob, (uint32_t)len);
			mfd_savevm_send_ping(e->out, 4);
			r = flush_out(e->out, errp);
		}
	}
	mfd_stream_free(pkg);
	mfd_channel_free(mw);
	if (r < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: device state");
		return r;
	}
	if ((r = start_pre_server(e, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	e->t_pc_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	engine_publish(e);
	set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
	mfd_log_info("postcopy: the destination runs the guest; %llu bytes to push",
		     (unsigned long long)ramsec_remaining(e));
	return 0;
}

/* Close the main and preempt channels of a broken postcopy connection. */
static void drop_connection(struct mfd_engine *e)
{
	break_connections(e);
	if (e->rp_started) {
		pthread_join(e->rp_thread, NULL);
		e->rp_started = false;
	}
	if (e->pre_started) {
		pthread_join(e->pre_thread, NULL);
		e->pre_started = false;
	}
	/* pre_lock: the destination's fault thread may be writing a request. */
	pthread_mutex_lock(&e->pre_lock);
	pthread_mutex_lock(&e->out_lock);
	pthread_mutex_lock(&e->lock);
	/* The next connection's stream counts from 0: keep what this one carried. */
	e->main_bytes_dropped += main_stream_bytes(e) + atomic_exchange(&e->pre_bytes, 0);
	mfd_stream_free(e->pre_out);
	e->pre_out = NULL;
	mfd_stream_free(e->out);
	mfd_stream_free(e->in);
	mfd_stream_free(e->pre_in);
	e->out = e->in = e->pre_in = NULL;
	mfd_channel_free(e->main_ch);
	mfd_channel_free(e->main_raw);
	mfd_channel_free(e->pre_ch);
	mfd_channel_free(e->pre_raw);
	e->main_ch = e->main_raw = e->pre_ch = e->pre_raw = NULL;
	e->rp_broken = e->rp_done = e->pause_req = false;
	e->req_count = e->req_head = 0;
	atomic_store(&e->pre_eos_sent, false);
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&e->out_lock);
	pthread_mutex_unlock(&e->pre_lock);
}

/* Wait for mfd_migrate_resume()/mfd_migrate_recover() or a cancel. */
static int wait_resume(struct mfd_engine *e, mfd_error **errp)
{
	pthread_mutex_lock(&e->lock);
	while (!e->resume_req && !atomic_load(&e->user_cancel))
		pthread_cond_wait(&e->cond, &e->lock);
	bool go = e->resume_req && !atomic_load(&e->user_cancel);

	e->resume_req = false;
	pthread_mutex_unlock(&e->lock);
	if (!go)
		return mfd_error_set(errp, MFD_ECANCELED,
				     "postcopy cancelled while paused: the guest's memory is split "
				     "between the source and the destination, and the VM is lost");
	return 0;
}

static int wait_flag(struct mfd_engine *e, bool *flag, unsigned *count, unsigned want,
		     const char *what, mfd_error **errp)
{
	struct timespec dl = deadline_in(e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS]);
	int r = 0;

	pthread_mutex_lock(&e->lock);
	while (!(flag ? *flag : *count >= want) && !e->rp_done && !atomic_load(&e->user_cancel) &&
	       r == 0)
		r = pthread_cond_timedwait(&e->cond, &e->lock, &dl);
	bool ok = flag ? *flag : *count >= want;

	pthread_mutex_unlock(&e->lock);
	if (ok)
		return 0;
	return mfd_error_set(errp, r == ETIMEDOUT ? MFD_ETIMEDOUT : MFD_EEOF,
			     "recovery: no %s from the destination", what);
}

/* Source: reconnect, learn what the destination has, continue. */
static int source_reconnect(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	uint8_t hello[MAIN_HELLO_SIZE];
	struct iovec iov = { hello, sizeof(hello) };
	int r;

	if ((r = open_out(e, -1, errp)) < 0)
		return r;
	main_hello_encode(e, hello, true);
	if ((r = mfd_channel_writev_full(e->main_ch, &iov, 1, errp)) < 0)
		return r;
	if (e->preempt && (r = open_preempt(e, errp)) < 0)
		return r;
	relax_timeouts(e);
	mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_WRITE, &e->out, errp)) < 0)
		return r;
	mfd_stream_set_label(e->out, "main channel");
	e->ram.last_block = -1;
	pthread_mutex_lock(&e->lock);
	e->bitmaps_got = 0;
	e->resume_acked = false;
	e->rp_done = false;
	atomic_store(&e->eof_sent, false);	/* sent again once the push ends */
	pthread_mutex_unlock(&e->lock);
	if (pthread_create(&e->rp_thread, NULL, rp_thread, e) != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "recovery: cannot start the return path");
	e->rp_started = true;
	mfd_savevm_header(m, e->out);
	for (unsigned b = 0; b < m->nblocks; b++)
		mfd_savevm_send_recv_bitmap(e->out, m->blocks[b].name);
	if ((r = flush_out(e->out, errp)) < 0 ||
	    (r = wait_flag(e, NULL, &e->bitmaps_got, m->nblocks, "received-pages bitmap",
			   errp)) < 0 ||
	    (r = mfd_savevm_resume_prepare(m, errp)) < 0)
		return r;
	mfd_savevm_send_postcopy_resume(e->out);
	if ((r = flush_out(e->out, errp)) < 0 ||
	    (r = wait_flag(e, &e->resume_acked, NULL, 0, "RESUME_ACK", errp)) < 0 ||
	    (r = start_pre_server(e, errp)) < 0)
		return r;
	mfd_log_info("postcopy: resumed; %llu bytes still to push",
		     (unsigned long long)ramsec_remaining(e));
	return 0;
}

static int postcopy_pause(struct mfd_engine *e, mfd_error *cause, mfd_error **errp);

static bool pausable(struct mfd_engine *e, int r)
{
	bool broken;

	pthread_mutex_lock(&e->lock);
	broken = !e->rp_result_seen && (e->rp_broken || e->pause_req);
	bool seen = e->rp_result_seen;
	/* An error recorded by the return-path thread (a malformed request, say)
	 * is no network loss: reconnecting would not cure it. */
	bool failed = e->err != NULL;
	pthread_mutex_unlock(&e->lock);
	return !seen && !failed && (broken || network_error(e, r));
}

/* Source: everything from the switch to the destination's RESULT. */
static int postcopy_run(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	int r;

	if ((r = postcopy_start(e, errp)) < 0)
		return r;
	for (;;) {
		mfd_error *err = NULL;

		r = mfd_savevm_iterate(m, e->out, true, &err);
		if (r >= 0 && flush_out(e->out, &err) < 0)
			r = mfd_error_code(err);
		engine_publish(e);
		if (r == 1) {
			/* Everything pushed: END, EOF, and the end of the preempt stream. */
			r = mfd_savevm_complete_postcopy(m, e->out, &err);
			if (r == 0)
				atomic_store(&e->eof_sent, true);
			if (r == 0 && (r = mfd_savevm_eof(e->out)) == 0)
				r = flush_out(e->out, &err);
			if (r == 0 && e->preempt) {
				pthread_mutex_lock(&e->pre_lock);
				mfd_stream_put_be64(e->pre_out, RAM_FLAG_EOS);
				r = flush_out(e->pre_out, &err);
				atomic_store(&e->pre_bytes, mfd_stream_bytes(e->pre_out));
				atomic_store(&e->pre_eos_sent, r == 0);
				pthread_mutex_unlock(&e->pre_lock);
			}
			if (r == 0)
				r = wait_result(e, &err);
			if (r == 0) {
				pthread_mutex_lock(&e->lock);
				e->rp_result_seen = true;	/* (it is: wait_result saw it) */
				pthread_mutex_unlock(&e->lock);
			}
		}
		if (r < 0) {
			if (!pausable(e, r)) {
				name_stream(e->out, "main channel", &err);
				mfd_error_prefix(err, "postcopy");
				mfd_error_propagate(errp, err);
				return r;
			}
			if ((r = postcopy_pause(e, err, errp)) < 0)
				return r;
			continue;
		}
		mfd_error_free(err);
		if (r == 0 && e->rp_result_seen)
			break;
	}
	pthread_mutex_lock(&e->lock);
	e->t_pc_end_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	mfd_channel_finish(e->main_ch, NULL);
	if (e->pre_ch)
		mfd_channel_finish(e->pre_ch, NULL);
	for (unsigned i = 0; i < e->nchan && e->use_multifd; i++)
		mfd_channel_finish(e->mf[i], NULL);
	return 0;
}

static int source_run(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	int r;

	if ((r = source_connect(e, errp)) < 0)
		return r;
	relax_timeouts(e);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_WRITE, &e->out, errp)) < 0)
		return r;
	mfd_stream_set_label(e->out, "main channel");
	if ((r = mfd_savevm_prepare(m, errp)) < 0)
		return r;
	mfd_savevm_header(m, e->out);
	if (e->use_rp) {
		mfd_savevm_send_open_return_path(e->out);
		mfd_savevm_send_ping(e->out, 1);
		if (e->postcopy) {
			uint64_t summary = 0;

			for (unsigned b = 0; b < m->nblocks; b++)
				summary |= m->blocks[b].page_size;
			mfd_savevm_send_postcopy_advise(e->out, summary, 4096);
		}
		if (pthread_create(&e->rp_thread, NULL, rp_thread, e) != 0)
			return mfd_error_set(errp, MFD_ENOMEM, "setup: cannot start the return path");
		e->rp_started = true;
	}
	if ((r = mfd_savevm_setup(m, e->out, errp)) < 0 ||
	    (r = mfd_stream_flush(e->out) < 0 ? mfd_stream_error(e->out, errp) : 0) < 0) {
		name_stream(e->out, "main channel", errp);
		mfd_error_prefix(errp ? *errp : NULL, "setup");
		return r;
	}
	pthread_mutex_lock(&e->lock);
	e->t_setup_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	set_state(e, MFD_STATE_ACTIVE);

	for (;;) {
		if (engine_cancelled(e))
			return mfd_error_set(errp, MFD_ECANCELED, "migration cancelled");
		if (e->postcopy && atomic_load(&e->pc_want))
			return postcopy_run(e, errp);
		e->ram.pass_done = false;
		r = mfd_savevm_iterate(m, e->out, false, errp);
		if (r >= 0 && mfd_stream_flush(e->out) < 0)
			r = mfd_stream_error(e->out, errp);
		if (r < 0) {
			name_stream(e->out, "main channel", errp);
			mfd_error_prefix(errp ? *errp : NULL, "iteration %llu",
					 (unsigned long long)e->iterations + 1);
			return r;
		}
		engine_publish(e);
		/* Decide at pass boundaries, where the dirty figures are fresh; a VM
		 * without RAM decides when its live sections are done. */
		if ((e->ram_se && e->ram.pass_done) || (!e->ram_se && r == 1)) {
			int verdict = policy_says_switch(e);

			if (verdict == MFD_POLICY_POSTCOPY) {
				mfd_log_info("postcopy: the policy switches to postcopy after %llu "
					     "passes", (unsigned long long)e->iterations);
				return postcopy_run(e, errp);
			}
			if (verdict)
				break;
			maybe_throttle(e);
		}
	}

	set_state(e, MFD_STATE_DEVICE);
	e->t_stop_ns = engine_now_ns();
	if (m->hooks.vm_stop) {
		if ((r = m->hooks.vm_stop(m->hooks_opaque, errp)) < 0) {
			mfd_error_prefix(errp ? *errp : NULL, "switchover: vm_stop hook");
			return errp && *errp ? mfd_error_normalize(*errp) : MFD_EHANDLER;
		}
	}
	e->vm_stopped = true;
	/* EOF goes last, once everything else is out: it is the commit point.
	 * Before it the destination cannot complete, and any failure restarts
	 * the VM here; after it only the destination's word decides. */
	r = mfd_savevm_complete_precopy(m, e->out, false, errp);
	if (r == 0 && mfd_stream_flush(e->out) < 0)
		r = mfd_stream_error(e->out, errp);
	if (r == 0 && e->send)
		r = mfd_multifd_send_finish(e->send, errp);
	if (r == 0) {
		atomic_store(&e->eof_sent, true);
		r = mfd_savevm_eof(e->out);
	}
	if (r == 0 && mfd_stream_flush(e->out) < 0)
		r = mfd_stream_error(e->out, errp);
	if (r < 0) {
		name_stream(e->out, "main channel", errp);
		mfd_error_prefix(errp ? *errp : NULL, "switchover");
		return r;
	}
	engine_publish(e);
	if (e->use_rp && (r = switchover_commit(e, errp)) < 0)
		return r;
	e->downtime_ns = engine_now_ns() - e->t_stop_ns;
	/* A clean end for TLS peers; reading is done by then. */
	mfd_channel_finish(e->main_ch, NULL);
	for (unsigned i = 0; i < e->nchan && e->use_multifd; i++)
		mfd_channel_finish(e->mf[i], NULL);
	return 0;
}

/* ---- destination --------------------------------------------------------------------- */

static int wrap_in(struct mfd_engine *e, mfd_channel *raw, mfd_channel **out, mfd_error **errp)
{
	/* timeout-ms is the gather's (time left before its deadline): keep it. */
	mfd_channel_set_option(raw, "peer-timeout-ms", e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS],
			       NULL);
	if (!e->creds) {
		*out = raw;
		return 0;
	}
	return mfd_channel_tls_wrap(raw, e->creds, NULL, 0, out, errp);
}

/*
 * Stray connections (a port scan, a health check, junk, a failed TLS
 * handshake, another session) are refused and logged, and the destination
 * keeps waiting for its source: up to MAX_STRAYS of them per setup or
 * recovery, then it fails.  Connections are identified one at a time in
 * arrival order (a multifd hello can only be checked after the main one),
 * each within hello_ms(): a silent one holds up the source's behind it, which
 * wait in the listen backlog, for that long at most.
 */
#define MAX_STRAYS 64
#define HELLO_MS 5000

/* HELLO_MS, or half the channel timeout when that is shorter. */
static int hello_ms(struct mfd_engine *e)
{
	int64_t t = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];

	return t > 0 && t / 2 < HELLO_MS ? (t > 1 ? (int)(t / 2) : 1) : HELLO_MS;
}

static int gather(struct mfd_engine *e, unsigned count, int timeout_ms,
		  int (*screen)(mfd_channel *, void *, bool *, mfd_error **), mfd_channel **slots,
		  mfd_error **errp)
{
	const struct listener_screen scr = {
		.identify = screen, .opaque = e, .hello_ms = hello_ms(e),
		.refused = &e->strays, .max_refused = MAX_STRAYS,
	};

	return listener_gather_screened(e->listener, count, timeout_ms, &scr, slots, errp);
}

/* The main channel: fixes the session.  Published only once it is ours. */
static int screen_main(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	struct mfd_multifd_recv *recv = NULL;
	mfd_channel *ch = NULL;
	int r;

	if ((r = wrap_channel(e, raw, ENGINE_CH_MAIN, 0, errp)) < 0)
		return r;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0) {
		*stray = true;	/* a failed TLS handshake */
		return r;
	}
	r = main_hello_check(e, ch, stray, errp);
	if (r == 0 && e->use_multifd)
		r = mfd_multifd_recv_new(&e->mcfg, e->m->blocks, e->m->nblocks, &recv, errp);
	if (r < 0) {
		if (ch != raw)
			mfd_channel_free(ch);
		return r;
	}
	pthread_mutex_lock(&e->lock);
	e->main_ch = ch;
	e->main_raw = ch != raw ? raw : NULL;
	pthread_mutex_unlock(&e->lock);
	PUBLISH(e, recv, recv);
	return 0;
}

/* A multifd channel: its slot is its id. */
static int screen_mf(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	mfd_channel *ch = NULL;
	int r;

	/* The test hook's index is the arrival order, which is the channel id:
	 * the source connects them in order, one hello at a time. */
	unsigned arrived = 0;

	for (unsigned i = 0; i < e->nchan; i++)
		arrived += e->mf[i] != NULL;
	if ((r = wrap_channel(e, raw, ENGINE_CH_MULTIFD, arrived, errp)) < 0)
		return r;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0) {
		*stray = true;
		return r;
	}
	r = multifd_recv_identify_screened(ch, e->recv, stray, errp);
	if (r < 0) {
		if (ch != raw)
			mfd_channel_free(ch);
		return r;
	}
	/* Unpublished by incoming_run() before anything frees it. */
	pthread_mutex_lock(&e->lock);
	e->mf[r] = ch;
	if (ch != raw)
		e->mf_raw[r] = raw;
	pthread_mutex_unlock(&e->lock);
	return r;
}

static int lh_open_rp(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int need = 0;

	if (!e->use_rp)
		return mfd_error_set(errp, MFD_EPROTO, "OPEN_RETURN_PATH, but the hello said none");
	mfd_for_each_section(e->m, se)
		if (se->ops.switchover_ack_needed && se->ops.switchover_ack_needed(se->opaque))
			need++;
	pthread_mutex_lock(&e->lock);
	/* Approvals may come before this (from load_setup): count them too. */
	e->approvals_needed = need - e->approvals_early;
	bool send = e->approvals_needed <= 0 && !e->ack_sent;

	e->ack_sent |= send;
	pthread_mutex_unlock(&e->lock);
	return send ? rp_send(e, RP_SWITCHOVER_ACK, NULL, 0, errp) : 0;
}

int mfd_migration_approve_switchover(mfd_migration *m)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	bool send;

	if (!e || !e->incoming)
		return MFD_ESTATE;
	pthread_mutex_lock(&e->lock);
	if (terminal(e->state) || e->state == MFD_STATE_NONE) {
		pthread_mutex_unlock(&e->lock);
		return MFD_ESTATE;
	}
	if (e->approvals_needed < 0)
		e->approvals_early++;
	else
		e->approvals_needed--;
	send = e->approvals_needed == 0 && !e->ack_sent;
	e->ack_sent |= send;
	pthread_mutex_unlock(&e->lock);
	if (send)
		rp_send(e, RP_SWITCHOVER_ACK, NULL, 0, NULL);
	return 0;
}

static int lh_ping(void *opaque, uint32_t value, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t b[4];

	if (!e->use_rp)
		return mfd_error_set(errp, MFD_ENOTSUP, "PING without a return path");
	mfd_store_be32(b, value);
	return rp_send(e, RP_PONG, b, 4, errp);
}

/* ---- destination, postcopy ------------------------------------------------------- */

static int find_block(mfd_migration *m, const char *name)
{
	for (unsigned b = 0; b < m->nblocks; b++)
		if (strcmp(m->blocks[b].name, name) == 0)
			return (int)b;
	return -1;
}

static int lh_advise(void *opaque, bool has_summary, uint64_t summary, uint64_t target,
		     mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint64_t mine = 0;

	if (!e->postcopy)
		return mfd_error_set(errp, MFD_ENOTSUP, "the source advises postcopy, but "
				     "postcopy-ram is off on this side");
	for (unsigned b = 0; b < e->m->nblocks; b++)
		mine |= e->m->blocks[b].page_size;
	if (has_summary && (summary != mine || target != 4096))
		return mfd_error_set(errp, MFD_EPROTO,
				     "POSTCOPY_ADVISE: the source's page sizes (mask 0x%llx, target "
				     "%llu) differ from this side's (0x%llx, 4096)",
				     (unsigned long long)summary, (unsigned long long)target,
				     (unsigned long long)mine);
	return pcd_new(e, errp);
}

/* Destination: requested pages arriving on the preempt channel. */
static void *pre_reader(void *arg)
{
	struct mfd_engine *e = arg;
	uint8_t *bounce = malloc(PC_PAGE_MAX);
	mfd_error *err = NULL;
	int last = -1, r = bounce ? 0 : mfd_error_set(&err, MFD_ENOMEM, "preempt: out of memory");

	mfd_thread_name("mfd-preempt");

	while (r == 0) {
		uint64_t word;

		if ((r = mfd_stream_get_be64(e->pre_in, &word)) < 0) {
			mfd_stream_error(e->pre_in, &err);
			break;
		}
		if ((word & RAM_FLAGS_MASK) == RAM_FLAG_EOS)
			break;
		r = ramsec_load_pc_record(e, e->pre_in, word, &last, bounce, &err);
		if (r < 0 && !err)
			mfd_stream_error(e->pre_in, &err);
	}
	free(bounce);
	if (r < 0 && network_error(e, r)) {
		/* The loader pauses; we are restarted after recovery. */
		mfd_log_warn("postcopy: preempt channel lost: %s", mfd_error_message(err));
		break_connections(e);
	} else if (r < 0) {
		mfd_error_prefix(err, "postcopy: preempt channel");
		fail_all(e, err);
		err = NULL;
	}
	mfd_error_free(err);
	return NULL;
}

static int start_pre_reader(struct mfd_engine *e, mfd_error **errp)
{
	if (!e->preempt || e->pre_started || !e->pc_listening)
		return 0;
	if (pthread_create(&e->pre_thread, NULL, pre_reader, e) != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: cannot start the preempt thread");
	e->pre_started = true;
	return 0;
}

static int lh_listen(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int r;

	if (!e->pcd)
		return mfd_error_set(errp, MFD_EPROTO, "POSTCOPY_LISTEN without POSTCOPY_ADVISE");
	/* Every precopy page is in place (the prepare section synced multifd); the
	 * channels carry nothing more. */
	if (e->recv && (r = mfd_multifd_recv_finish(e->recv, errp)) < 0)
		return r;
	if ((r = pcd_listen(e, errp)) < 0)
		return r;
	return start_pre_reader(e, errp);
}

static int lh_run(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	mfd_migration *m = e->m;
	int r;

	if (!e->pc_listening)
		return mfd_error_set(errp, MFD_EPROTO, "POSTCOPY_RUN before POSTCOPY_LISTEN");
	if (atomic_load(&e->in_postcopy))
		return mfd_error_set(errp, MFD_EPROTO, "a second POSTCOPY_RUN");
	atomic_store(&e->in_postcopy, true);
	pthread_mutex_lock(&e->lock);
	e->t_pc_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	if (m->hooks.vm_start && (r = m->hooks.vm_start(m->hooks_opaque, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: vm_start hook");
		return errp && *errp ? mfd_error_normalize(*errp) : MFD_EHANDLER;
	}
	set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
	/* The package ends here; the loader goes on with the main stream. */
	return MFD_LOADVM_QUIT;
}

static int lh_discard(void *opaque, const char *block, const uint64_t *ranges, size_t n,
		      mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int b = find_block(e->m, block), r = 0;
	char esc[ESCAPE_BUF_SIZE];

	if (b < 0)
		return mfd_error_set(errp, MFD_EPROTO, "POSTCOPY_RAM_DISCARD: unknown block '%s'",
				     escape_str(esc, sizeof(esc), block));
	for (size_t i = 0; i < n && r == 0; i++)
		r = pcd_discard(e, (unsigned)b, ranges[2 * i], ranges[2 * i + 1], errp);
	return r;
}

static int lh_recv_bitmap(void *opaque, const char *block, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int b = find_block(e->m, block);
	char esc[ESCAPE_BUF_SIZE];

	if (!e->pc_resumed || !e->pcd)
		return mfd_error_set(errp, MFD_EPROTO, "RECV_BITMAP outside postcopy recovery");
	if (b < 0)
		return mfd_error_set(errp, MFD_EPROTO, "RECV_BITMAP: unknown block '%s'",
				     escape_str(esc, sizeof(esc), block));
	return pcd_send_bitmap(e, (unsigned)b, errp);
}

static int lh_resume(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t one[4];
	int r;

	if (!e->pc_resumed)
		return mfd_error_set(errp, MFD_EPROTO, "POSTCOPY_RESUME outside postcopy recovery");
	mfd_store_be32(one, 1);
	if ((r = rp_send(e, RP_RESUME_ACK, one, 4, errp)) < 0)
		return r;
	set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
	/* Requests the broken connection swallowed. */
	pcd_resend_requests(e);
	return 0;
}

/* The preempt channel (the connection after the main one): belongs to the
 * session the main hello fixed. */
static int screen_preempt(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t h[PREEMPT_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	mfd_channel *ch = NULL;
	mfd_stream *in = NULL;
	int bad, r;

	if ((r = wrap_channel(e, raw, ENGINE_CH_PREEMPT, 0, errp)) < 0)
		return r;
	*stray = true;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0)
		return r;
	if ((r = mfd_channel_readv_full(ch, &iov, 1, errp)) < 0)
		goto out;
	if (mfd_load_be32(h) != PREEMPT_HELLO_MAGIC || mfd_load_be32(h + 4) != PREEMPT_HELLO_VERSION)
		r = mfd_error_set(errp, MFD_EBADMAGIC,
				  "preempt channel: hello 0x%08x version %u, expected 0x%08x version "
				  "%u (the source must connect it right after the main channel)",
				  mfd_load_be32(h), mfd_load_be32(h + 4), PREEMPT_HELLO_MAGIC,
				  PREEMPT_HELLO_VERSION);
	else if (memcmp(h + 32, e->mcfg.uuid, MFD_UUID_LEN) != 0 ||
		 mfd_consttime_memcmp(h + 48, e->mcfg.token, MFD_TOKEN_LEN) != 0)
		r = mfd_error_set(errp, MFD_EPROTO,
				  "preempt channel: it belongs to another session (UUID or token)");
	else if ((*stray = false, bad = first_nonzero(h, 8, 32)) >= 0 ||
		 (bad = first_nonzero(h, 80, PREEMPT_HELLO_SIZE)) >= 0)
		r = mfd_error_set(errp, MFD_EPROTO, "preempt channel: reserved hello byte %d is "
				  "0x%02x, not 0", bad, h[bad]);
	if (r == 0 && (r = mfd_stream_new(ch, MFD_STREAM_READ, &in, errp)) == 0) {
		mfd_stream_set_label(in, "preempt channel");
		pthread_mutex_lock(&e->lock);
		e->pre_ch = ch;
		e->pre_raw = ch != raw ? raw : NULL;
		e->pre_in = in;
		pthread_mutex_unlock(&e->lock);
		if (engine_cancelled(e))
			shutdown_all(e);
	}
out:
	if (r < 0 && ch != raw)
		mfd_channel_free(ch);
	return r;
}

/* Destination: take the preempt channel. */
static int accept_preempt(struct mfd_engine *e, mfd_error **errp)
{
	mfd_channel *raw = NULL;
	int r = gather(e, 1, (int)e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS], screen_preempt, &raw,
		       errp);

	if (r < 0)
		mfd_error_prefix(errp ? *errp : NULL, "preempt channel");
	return r;
}

/* Recovery: the source that reconnects must be this migration's. */
static int screen_resume(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t h[MAIN_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	mfd_channel *ch = NULL;
	int r;

	if ((r = wrap_channel(e, raw, ENGINE_CH_MAIN, 0, errp)) < 0)
		return r;
	*stray = true;
	if ((r = wrap_in(e, raw, &ch, errp)) < 0)
		return r;
	if ((r = mfd_channel_readv_full(ch, &iov, 1, errp)) < 0)
		;
	else if (mfd_load_be32(h) != MAIN_HELLO_MAGIC || mfd_load_be32(h + 4) != MAIN_HELLO_VERSION ||
		 !(mfd_load_be32(h + 8) & MAIN_HELLO_RESUME))
		r = mfd_error_set(errp, MFD_EPROTO, "recovery: the connection is not a libmultifd "
				  "source resuming postcopy (magic 0x%08x, flags 0x%x)",
				  mfd_load_be32(h), mfd_load_be32(h + 8));
	else if (memcmp(h + 32, e->mcfg.uuid, MFD_UUID_LEN) != 0 ||
		 mfd_consttime_memcmp(h + 48, e->mcfg.token, MFD_TOKEN_LEN) != 0)
		r = mfd_error_set(errp, MFD_EPROTO, "recovery: the source belongs to another "
				  "migration (session UUID or token differs)");
	if (r < 0) {
		if (ch != raw)
			mfd_channel_free(ch);
		return r;
	}
	pthread_mutex_lock(&e->lock);
	e->main_ch = ch;
	e->main_raw = ch != raw ? raw : NULL;
	pthread_mutex_unlock(&e->lock);
	if (engine_cancelled(e))
		shutdown_all(e);
	return 0;
}

/* Destination, recovery: the source reconnects to the new listener. */
static int dest_reconnect(struct mfd_engine *e, mfd_error **errp)
{
	mfd_channel *raw = NULL;
	int r;

	e->strays = 0;
	if ((r = gather(e, 1, 0, screen_resume, &raw, errp)) < 0)
		return r;
	if (e->preempt && (r = accept_preempt(e, errp)) < 0)
		return r;
	listener_stop(e->listener);
	relax_timeouts(e);
	mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_READ, &e->in, errp)) < 0)
		return r;
	mfd_stream_set_label(e->in, "main channel");
	e->pc_resumed = true;
	return start_pre_reader(e, errp);
}

static bool dest_pausable(struct mfd_engine *e, int r)
{
	pthread_mutex_lock(&e->lock);
	bool failed = e->err != NULL, asked = e->pause_req;

	pthread_mutex_unlock(&e->lock);
	return atomic_load(&e->in_postcopy) && !failed && (asked || network_error(e, r));
}

/* Either side: the connection broke during postcopy.  Waits, paused, for
 * mfd_migrate_resume()/mfd_migrate_recover() and reconnects; a failed attempt
 * pauses again.  Returns 0 once reconnected, an error once cancelled. */
static int postcopy_pause(struct mfd_engine *e, mfd_error *cause, mfd_error **errp)
{
	mfd_log_warn("postcopy paused: %s", cause ? mfd_error_message(cause) : "connection lost");
	mfd_error_free(cause);
	engine_publish(e);	/* what is left, as the pause finds it */
	pthread_mutex_lock(&e->lock);
	e->pauses++;
	pthread_mutex_unlock(&e->lock);
	for (;;) {
		drop_connection(e);
		set_state(e, MFD_STATE_POSTCOPY_PAUSED);
		int r = wait_resume(e, errp);

		if (r < 0)
			return r;
		set_state(e, MFD_STATE_POSTCOPY_RECOVER);
		mfd_error *err = NULL;

		/* The destination goes active at POSTCOPY_RESUME (lh_resume). */
		r = e->incoming ? dest_reconnect(e, &err) : source_reconnect(e, &err);
		if (r == 0) {
			if (!e->incoming)
				set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
			return 0;
		}
		if (atomic_load(&e->user_cancel)) {
			mfd_error_propagate(errp, err);
			return r;
		}
		mfd_log_warn("postcopy: %s failed, still paused: %s",
			     e->incoming ? "recovery" : "resume", mfd_error_message(err));
		mfd_error_free(err);
	}
}

/* Destination: the whole stream, across postcopy pauses. */
static int load_all(struct mfd_engine *e, const struct mfd_loadvm_hooks *hooks, mfd_error **errp)
{
	mfd_migration *m = e->m;
	bool resumed = false;
	int r = mfd_loadvm_begin(m, e->in, hooks, errp);

	while (r == 0) {
		mfd_error *err = NULL;

		r = mfd_loadvm_run(m, e->in, hooks, resumed, &err);
		resumed = false;
		if (r == MFD_LOADVM_QUIT) {
			/* POSTCOPY_RUN: the guest runs; the rest of the RAM follows. */
			r = 0;
			continue;
		}
		if (r == 0)
			break;
		if (!dest_pausable(e, r)) {
			mfd_error_propagate(errp, err);
			break;
		}
		r = postcopy_pause(e, err, errp);
		resumed = true;
	}
	if (r == 0 && atomic_load(&e->in_postcopy)) {
		/* The preempt stream ends after the main one: drain it. */
		if (e->pre_started) {
			pthread_join(e->pre_thread, NULL);
			e->pre_started = false;
		}
		uint64_t missing = pcd_missing(e);

		pthread_mutex_lock(&e->lock);
		if (e->err)
			r = mfd_error_code(e->err);
		pthread_mutex_unlock(&e->lock);
		if (r == 0 && missing)
			r = mfd_error_set(errp, MFD_EPROTO, "postcopy: the stream ended with %llu pages "
					  "still missing", (unsigned long long)missing);
		if (r == 0)
			pcd_stop(e);
	}
	mfd_loadvm_end(m);
	return r;
}

/*
 * Destination, everything loaded: tell the source, and learn whether the VM
 * may start here.  RESULT 0 must have gone out whole before the VM starts:
 * a source that never gets it keeps its VM stopped and reports the outcome
 * unknown, so starting here would be a guess.  With switchover-confirm the
 * source's confirmation must come back within channel-timeout-ms too.
 */
static int switchover_answer(struct mfd_engine *e, mfd_error **errp)
{
	int64_t timeout = e->m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	mfd_error *err = NULL;
	uint32_t magic = 0, one = 0;
	int r;

	if (!e->use_rp)
		return 0;
	if ((r = rp_send_result(e, 0, "loaded", &err)) < 0) {
		/* Nothing more on that channel: a partial message is there. */
		mfd_channel_shutdown(e->main_ch);
		if (atomic_load(&e->in_postcopy)) {
			/* The guest runs here since POSTCOPY_RUN: nothing to undo. */
			mfd_log_warn("postcopy: RESULT not sent: %s", mfd_error_message(err));
			mfd_error_free(err);
			return 0;
		}
		mfd_error_prefix(err, "switchover: sending RESULT 0 on the main channel (return "
				 "path) failed, so the VM is not started here (the source reports "
				 "the outcome unknown)");
		mfd_error_propagate(errp, err);
		return r;
	}
	atomic_store(&e->result_sent, true);
	if (!e->confirm || atomic_load(&e->in_postcopy))
		return 0;
	mfd_channel_set_option(e->main_ch, "timeout-ms", timeout, NULL);
	if (mfd_stream_get_be32(e->in, &magic) < 0 || mfd_stream_get_be32(e->in, &one) < 0) {
		mfd_stream_error(e->in, &err);
		r = mfd_error_set(errp, MFD_EUNKNOWN, "switchover-confirm: no confirmation from the "
				  "source within %lld ms (%s): the source may still own the VM, so it "
				  "is not started here", (long long)timeout, mfd_error_message(err));
		mfd_error_free(err);
		return r;
	}
	if (magic != SWITCHOVER_CONFIRM_MAGIC || one != 1)
		return mfd_error_set(errp, MFD_EPROTO, "switchover-confirm: main channel: 0x%08x "
				     "0x%08x after EOF, expected the confirmation 0x%08x 0x00000001; "
				     "the VM is not started here", magic, one, SWITCHOVER_CONFIRM_MAGIC);
	return 0;
}

static int incoming_run(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	unsigned count = e->use_multifd ? 1 + e->nchan : 1;
	mfd_channel *slots[257] = { 0 };
	const struct mfd_loadvm_hooks hooks = {
		.opaque = e,
		.open_return_path = lh_open_rp,
		.ping = lh_ping,
		.postcopy_advise = lh_advise,
		.postcopy_listen = lh_listen,
		.postcopy_run = lh_run,
		.postcopy_ram_discard = lh_discard,
		.recv_bitmap = lh_recv_bitmap,
		.postcopy_resume = lh_resume,
	};
	mfd_channel *first = NULL;
	/* Wait as long as it takes for a source; once one connected, its other
	 * channels must follow within channel-timeout-ms. */
	int r;

	e->strays = 0;
	r = gather(e, 1, 0, screen_main, &first, errp);
	if (r == 0 && e->preempt)
		r = accept_preempt(e, errp);
	if (r == 0 && count > 1) {
		r = gather(e, count - 1, (int)m->params.i[MFD_P_CHANNEL_TIMEOUT_MS], screen_mf, slots,
			   errp);
		if (r < 0) {
			/* Unpublish the multifd channels before they go: a cancel
			 * may be shutting them down right now.  TLS wrappers go
			 * before the channels they wrap. */
			pthread_mutex_lock(&e->lock);
			for (unsigned i = 0; i < 256; i++)
				if (e->mf_raw[i])
					mfd_channel_free(e->mf[i]);
			memset(e->mf, 0, sizeof(e->mf));
			memset(e->mf_raw, 0, sizeof(e->mf_raw));
			pthread_mutex_unlock(&e->lock);
			for (unsigned i = 0; i < count - 1; i++)
				mfd_channel_free(slots[i]);
		}
	}
	if (r < 0) {
		/* The main channel is ours and goes with the rest. */
		mfd_error_prefix(errp ? *errp : NULL, "setup: gathering %u channels", count);
		return r;
	}
	listener_stop(e->listener);

	/* The raw channels are ours now; identify recorded each of them. */
	relax_timeouts(e);
	if (m->params.i[MFD_P_DEST_RAM_ZEROED] &&
	    (r = mfd_ram_recvmap_alloc(m->blocks, m->nblocks, errp)) < 0)
		return r;
	if (e->recv && (r = mfd_multifd_recv_start(e->recv, errp)) < 0)
		return r;
	set_state(e, MFD_STATE_ACTIVE);
	pthread_mutex_lock(&e->lock);
	e->t_setup_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_READ, &e->in, errp)) < 0)
		return r;
	mfd_stream_set_label(e->in, "main channel");
	r = load_all(e, &hooks, errp);
	if (r < 0)
		name_stream(e->in, "main channel", errp);
	if (r == 0 && e->recv && !e->pc_listening)
		r = mfd_multifd_recv_finish(e->recv, errp);
	if (r < 0)
		return r;
	engine_publish(e);
	if ((r = switchover_answer(e, errp)) < 0)
		return r;
	if (atomic_load(&e->in_postcopy)) {
		pthread_mutex_lock(&e->lock);
		e->t_pc_end_ns = engine_now_ns();
		pthread_mutex_unlock(&e->lock);
		/* The guest runs since POSTCOPY_RUN. */
		mfd_channel_finish(e->main_ch, NULL);
		return 0;
	}
	if (m->hooks.vm_start && (r = m->hooks.vm_start(m->hooks_opaque, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "switchover: the source handed the VM over "
				 "(RESULT 0 sent) but the vm_start hook failed, so the VM runs "
				 "nowhere; start it here, or on the source");
		return errp && *errp ? mfd_error_normalize(*errp) : MFD_EHANDLER;
	}
	mfd_channel_finish(e->main_ch, NULL);
	return 0;
}

/* ---- threads and teardown ------------------------------------------------------------ */

static void release_channels(struct mfd_engine *e)
{
	/* Lock order everywhere: pre_lock, out_lock, lock. */
	pthread_mutex_lock(&e->pre_lock);
	pthread_mutex_lock(&e->out_lock);
	pthread_mutex_lock(&e->lock);
	mfd_stream_free(e->out);
	mfd_stream_free(e->in);
	mfd_stream_free(e->pre_in);
	e->out = e->in = e->pre_in = NULL;
	mfd_stream_free(e->pre_out);
	e->pre_out = NULL;
	mfd_channel_free(e->pre_ch);
	mfd_channel_free(e->pre_raw);
	e->pre_ch = e->pre_raw = NULL;
	mfd_multifd_send_free(e->send);
	mfd_multifd_recv_free(e->recv);
	e->send = NULL;
	e->recv = NULL;
	if (e->incoming)	/* every thread that places pages is gone */
		mfd_ram_recvmap_free(e->m->blocks, e->m->nblocks);
	/* TLS wrappers go before the channels they wrap. */
	mfd_channel_free(e->main_ch);
	mfd_channel_free(e->main_raw);
	e->main_ch = e->main_raw = NULL;
	for (unsigned i = 0; i < 256; i++) {
		mfd_channel_free(e->mf[i]);
		mfd_channel_free(e->mf_raw[i]);
		e->mf[i] = e->mf_raw[i] = NULL;
	}
	mfd_listener_free(e->listener);
	e->listener = NULL;
	mfd_tls_creds_free(e->creds);
	e->creds = NULL;
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&e->out_lock);
	pthread_mutex_unlock(&e->pre_lock);
}

static void finish(struct mfd_engine *e, int r, mfd_error *err)
{
	mfd_migration *m = e->m;
	enum mfd_state end = MFD_STATE_COMPLETED;

	if (r < 0) {
		if (!err)
			mfd_error_set(&err, r, "migration failed (%s)", mfd_strerror(r));
		if (atomic_load(&e->in_postcopy))
			mfd_error_prefix(err, e->incoming ?
					 "postcopy failed; the guest runs here with incomplete memory "
					 "and must be stopped" :
					 "postcopy failed and the VM is lost (its memory is split "
					 "between the two hosts)");
		/* Not after a RESULT 0: the source may have handed the VM over. */
		if (e->incoming && !atomic_load(&e->result_sent))
			rp_send_result(e, mfd_error_code(err), mfd_error_message(err), NULL);
		if (!e->incoming && e->rp_started && !atomic_load(&e->user_cancel)) {
			mfd_error *why = destination_reason(e);

			if (why) {
				/* It replaces whatever the broken connection caused here. */
				pthread_mutex_lock(&e->lock);
				mfd_error_free(e->err);
				e->err = why;
				e->outcome_unknown = false;	/* it failed: the VM runs here */
				pthread_mutex_unlock(&e->lock);
			}
		}
		if (e->outcome_unknown) {
			/* Whatever broke on the way, the VMM must hear "unknown". */
			pthread_mutex_lock(&e->lock);
			mfd_error_free(e->err);
			e->err = err;
			err = NULL;
			pthread_mutex_unlock(&e->lock);
		}
		record_error(e, err);
		pthread_mutex_lock(&e->lock);
		bool cancelled = mfd_error_code(e->err) == MFD_ECANCELED;

		pthread_mutex_unlock(&e->lock);
		end = !e->incoming && atomic_load(&e->user_cancel) && cancelled ? MFD_STATE_CANCELLED
										: MFD_STATE_FAILED;
		shutdown_all(e);
	} else {
		mfd_error_free(err);
	}
	if (e->rp_started) {
		if (r < 0)
			mfd_channel_shutdown(e->main_ch);
		pthread_join(e->rp_thread, NULL);
		e->rp_started = false;
	}
	if (e->pre_started) {
		/* The source's request server reads until the channel closes. */
		if (r < 0 || !e->incoming)
			mfd_channel_shutdown(e->pre_ch);
		pthread_join(e->pre_thread, NULL);
		e->pre_started = false;
	}
	if (e->pcd) {
		struct mfd_stats pst;

		memset(&pst, 0, sizeof(pst));
		pcd_stop(e);
		pcd_stats(e, &pst);
		pthread_mutex_lock(&e->lock);
		e->pc_kept[0] = pst.postcopy_faults;
		e->pc_kept[1] = pst.postcopy_fault_us_median;
		e->pc_kept[2] = pst.postcopy_fault_us_p99;
		e->pc_kept[3] = pst.postcopy_fault_us_max;
		e->pc_kept[4] = pst.postcopy_blocktime_ms;
		pthread_mutex_unlock(&e->lock);
		pcd_free(e);
	}
	/* Leave the guest as we found it. */
	if (!e->incoming) {
		if (e->throttle && m->hooks.throttle)
			m->hooks.throttle(m->hooks_opaque, 0);
		e->throttle = 0;
		/* Not after postcopy began: the destination may run the guest. */
		/* Nor when the destination may run it: the VMM decides. */
		if (r < 0 && e->vm_stopped && !atomic_load(&e->in_postcopy) &&
		    !e->outcome_unknown && m->hooks.vm_start)
			m->hooks.vm_start(m->hooks_opaque, NULL);
		mfd_savevm_cleanup(m);
	}
	engine_publish(e);
	/* Keep the multifd figures for mfd_migration_stats() after the end. */
	struct mfd_multifd_stats *ms = calloc(1, sizeof(*ms));

	if (ms && e->send)
		mfd_multifd_send_stats(e->send, ms);
	else if (ms && e->recv)
		mfd_multifd_recv_stats(e->recv, ms);
	pthread_mutex_lock(&e->lock);
	free(e->final_ms);
	e->final_ms = ms;
	pthread_mutex_unlock(&e->lock);
	release_channels(e);
	m->busy = false;
	ramsec_unregister(e);
	ramsec_free(e);
	pthread_mutex_lock(&e->lock);
	e->t_end_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	set_state(e, end);
	pthread_mutex_lock(&e->lock);
	e->ended = true;
	pthread_cond_broadcast(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

static void *migration_thread(void *arg)
{
	struct mfd_engine *e = arg;
	mfd_error *err = NULL;
	int r;

	mfd_thread_name(e->incoming ? "mfd-incoming" : "mfd-migration");
	r = e->incoming ? incoming_run(e, &err) : source_run(e, &err);

	if (r < 0 && atomic_load(&e->user_cancel) && !e->incoming && !e->outcome_unknown) {
		/* Errors caused by our own shutdown are the cancel, not the cause. */
		pthread_mutex_lock(&e->lock);
		bool have = e->err != NULL;

		pthread_mutex_unlock(&e->lock);
		if (!have) {
			mfd_error_free(err);
			err = NULL;
			mfd_error_set(&err, MFD_ECANCELED, "migration cancelled");
			r = MFD_ECANCELED;
		}
	}
	finish(e, r, err);
	return NULL;
}

/* What one migration leaves in the engine once its thread is joined. */
static void engine_drop_state(struct mfd_engine *e)
{
	mfd_error_free(e->err);
	free(e->rp_message);
	free(e->final_ms);
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->out_lock);
	pthread_mutex_destroy(&e->pre_lock);
}

static void engine_teardown(mfd_migration *m);

static int engine_reset(mfd_migration *m, bool incoming, const char *uri, mfd_error **errp)
{
	struct mfd_engine *e = m->engine;

	if (strlen(uri) >= sizeof(e->uri))
		return mfd_error_set(errp, MFD_EINVAL, "URI of %zu bytes is too long", strlen(uri));
	if (e->thread_started) {
		pthread_join(e->thread, NULL);
		e->thread_started = false;
	}
	engine_drop_state(e);
	memset(e, 0, sizeof(*e));
	e->m = m;
	e->incoming = incoming;
	strcpy(e->uri, uri);
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	pthread_mutex_init(&e->out_lock, NULL);
	pthread_mutex_init(&e->pre_lock, NULL);
	atomic_init(&e->cancel, false);
	atomic_init(&e->pc_want, false);
	atomic_init(&e->in_postcopy, false);
	atomic_init(&e->user_cancel, false);
	atomic_init(&e->state_pub, MFD_STATE_NONE);
	e->approvals_needed = -1;
	return 0;
}

static int engine_start(mfd_migration *m, bool incoming, const char *uri, mfd_error **errp)
{
	struct mfd_engine *e;
	int r;

	if (!m || !uri)
		return mfd_error_set(errp, MFD_EINVAL, "%s: NULL argument",
				     incoming ? "mfd_migrate_incoming" : "mfd_migrate");
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "a migration or save/load is running");
	if (!m->engine) {
		e = calloc(1, sizeof(*e));
		if (!e)
			return mfd_error_set(errp, MFD_ENOMEM, "out of memory for the engine");
		pthread_mutex_init(&e->lock, NULL);
		pthread_cond_init(&e->cond, NULL);
		pthread_mutex_init(&e->out_lock, NULL);
		pthread_mutex_init(&e->pre_lock, NULL);
		__atomic_store_n(&m->engine, e, __ATOMIC_RELEASE);
		m->teardown = engine_teardown;
	}
	/* A malformed URI fails here, before any thread starts. */
	struct transport_uri tu;

	if ((r = transport_uri_parse(uri, &tu, errp)) < 0) {
		transport_uri_clear(&tu);
		return r;
	}
	/* fd: and file: are one channel: no multifd, no return path. */
	bool stream = tu.scheme == URI_FD || tu.scheme == URI_FILE;
	bool unix_uri = tu.scheme == URI_UNIX;

	if ((r = engine_reset(m, incoming, uri, errp)) < 0) {
		transport_uri_clear(&tu);
		return r;
	}
	e = m->engine;
	if (tu.scheme == URI_TCP && tu.host && strlen(tu.host) < sizeof(e->tls_host))
		strcpy(e->tls_host, tu.host);
	transport_uri_clear(&tu);
	e->nchan = (unsigned)m->params.i[MFD_P_MULTIFD_CHANNELS];
	e->use_multifd = !stream;
	e->use_rp = m->params.i[MFD_P_RETURN_PATH] && !stream;
	e->postcopy = m->params.i[MFD_P_POSTCOPY_RAM];
	e->preempt = e->postcopy && m->params.i[MFD_P_POSTCOPY_PREEMPT];
	e->confirm = m->params.i[MFD_P_SWITCHOVER_CONFIRM];
	if (e->confirm && !e->use_rp)
		return mfd_error_set(errp, MFD_EINVAL, "switchover-confirm needs the return path: a "
				     "tcp: or unix: URI and return-path on");
	if (m->params.i[MFD_P_POSTCOPY_PREEMPT] && !e->postcopy)
		return mfd_error_set(errp, MFD_EINVAL, "postcopy-preempt needs postcopy-ram");
	if (e->postcopy && !e->use_rp)
		return mfd_error_set(errp, MFD_EINVAL, "postcopy-ram needs the return path: a tcp: "
				     "or unix: URI and return-path on (not %s)",
				     stream ? "fd: or file:" : "return-path off");
	if (!incoming && m->params.i[MFD_P_ZERO_COPY_SEND] &&
	    (r = check_zero_copy(m, stream, unix_uri, errp)) < 0)
		return r;
	if ((r = make_config(e, errp)) < 0 ||
	    (r = make_creds(e, incoming ? MFD_TLS_SERVER : MFD_TLS_CLIENT, errp)) < 0) {
		mfd_tls_creds_free(e->creds);
		e->creds = NULL;
		return r;
	}
	if (incoming && (r = mfd_listener_new(uri, &e->listener, errp)) < 0) {
		mfd_tls_creds_free(e->creds);
		e->creds = NULL;
		return r;
	}
	if (incoming)
		snprintf(e->listen_uri, sizeof(e->listen_uri), "%s", mfd_listener_uri(e->listener));
	if ((r = ramsec_register(e, errp)) < 0) {
		release_channels(e);
		return r;
	}
	m->busy = true;
	e->t_start_ns = engine_now_ns();
	set_state(e, MFD_STATE_SETUP);
	if (pthread_create(&e->thread, NULL, migration_thread, e) != 0) {
		m->busy = false;
		ramsec_unregister(e);
		release_channels(e);
		return mfd_error_set(errp, MFD_ENOMEM, "cannot start the migration thread");
	}
	pthread_mutex_lock(&e->lock);
	e->thread_started = true;
	pthread_mutex_unlock(&e->lock);
	return 0;
}

int mfd_migrate(mfd_migration *m, const char *uri, mfd_error **errp)
{
	return engine_start(m, false, uri, errp);
}

int mfd_migrate_incoming(mfd_migration *m, const char *uri, mfd_error **errp)
{
	return engine_start(m, true, uri, errp);
}

int mfd_migration_listen_uri(mfd_migration *m, char *buf, size_t len)
{
	struct mfd_engine *e = m ? m->engine : NULL;
	int r = 0;

	if (!e || !e->incoming || !buf)
		return MFD_ESTATE;
	pthread_mutex_lock(&e->lock);
	if (!e->listen_uri[0])
		r = MFD_ESTATE;
	else if (strlen(e->listen_uri) >= len)
		r = MFD_ETOOBIG;
	else
		strcpy(buf, e->listen_uri);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int mfd_migration_wait(mfd_migration *m, int timeout_ms, mfd_error **errp)
{
	struct mfd_engine *e = m ? m->engine : NULL;
	struct timespec dl;
	int r = 0;

	if (!e || atomic_load(&e->state_pub) == MFD_STATE_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "no migration was started");
	dl = deadline_in(timeout_ms);
	pthread_mutex_lock(&e->lock);
	while (!e->ended && r == 0)
		r = timeout_ms > 0 ? pthread_cond_timedwait(&e->cond, &e->lock, &dl)
				   : pthread_cond_wait(&e->cond, &e->lock);
	bool ended = e->ended;
	enum mfd_state st = e->state;
	int code = e->err ? mfd_error_code(e->err) : 0;

	if (ended && e->err && errp && !*errp)
		*errp = mfd_error_copy(e->err);
	pthread_mutex_unlock(&e->lock);
	if (!ended)
		return mfd_error_set(errp, MFD_ETIMEDOUT, "migration still %s after %d ms",
				     mfd_state_name(st), timeout_ms);
	/* Several threads may wait: one joins, the others wait for the join. */
	pthread_mutex_lock(&e->lock);
	if (e->thread_started && !e->joining) {
		e->joining = true;
		pthread_mutex_unlock(&e->lock);
		pthread_join(e->thread, NULL);
		pthread_mutex_lock(&e->lock);
		e->thread_started = false;
		e->joining = false;
		pthread_cond_broadcast(&e->cond);
	}
	while (e->thread_started)
		pthread_cond_wait(&e->cond, &e->lock);
	pthread_mutex_unlock(&e->lock);
	if (st == MFD_STATE_COMPLETED)
		return 0;
	return code ? code : MFD_ECANCELED;
}

void mfd_migrate_cancel(mfd_migration *m)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;

	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	bool running = e->state != MFD_STATE_NONE && !terminal(e->state) && !e->ended;

	enum mfd_state st = e->state;

	if (running && atomic_load(&e->in_postcopy) && st != MFD_STATE_POSTCOPY_PAUSED &&
	    st != MFD_STATE_POSTCOPY_RECOVER) {
		/* Ending postcopy would lose the VM (its memory is split between the
		 * hosts): cancel pauses it instead, as QEMU's migrate-pause. */
		e->pause_req = true;
		pthread_mutex_unlock(&e->lock);
		mfd_log_warn("postcopy: cancel pauses the migration; cancel again to abandon it");
		break_connections(e);
		return;
	}
	pthread_mutex_unlock(&e->lock);
	if (!running)
		return;
	atomic_store(&e->user_cancel, true);
	atomic_store(&e->cancel, true);
	if (!e->incoming)
		set_state(e, MFD_STATE_CANCELLING);
	else if (e->use_rp && !atomic_load(&e->result_sent))
		/* Best effort, so the source can say why. */
		rp_send_result(e, MFD_ECANCELED, "migration cancelled on the destination", NULL);
	shutdown_all(e);
	pthread_mutex_lock(&e->lock);
	pthread_cond_broadcast(&e->cond);	/* a paused postcopy waits on it */
	pthread_mutex_unlock(&e->lock);
}

int mfd_migrate_start_postcopy(mfd_migration *m, mfd_error **errp)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	int r = 0;

	if (!e || e->incoming || atomic_load(&e->state_pub) == MFD_STATE_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "mfd_migrate_start_postcopy: no outgoing "
				     "migration");
	pthread_mutex_lock(&e->lock);
	if (!e->postcopy)
		r = mfd_error_set(errp, MFD_ESTATE, "postcopy-ram was off when the migration "
				  "started");
	else if (e->state != MFD_STATE_SETUP && e->state != MFD_STATE_ACTIVE)
		r = mfd_error_set(errp, MFD_ESTATE, "postcopy can start only during precopy (the "
				  "migration is %s)", mfd_state_name(e->state));
	else
		atomic_store(&e->pc_want, true);
	pthread_mutex_unlock(&e->lock);
	return r;
}

static int request_resume(mfd_migration *m, bool incoming, const char *uri, mfd_error **errp)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	const char *fn = incoming ? "mfd_migrate_recover" : "mfd_migrate_resume";
	mfd_listener *l = NULL, *old = NULL;
	int r = 0;

	if (!e || !uri || e->incoming != incoming ||
	    atomic_load(&e->state_pub) == MFD_STATE_NONE)
		return mfd_error_set(errp, MFD_ESTATE, "%s: no %s migration", fn,
				     incoming ? "incoming" : "outgoing");
	if (strlen(uri) >= sizeof(e->resume_uri))
		return mfd_error_set(errp, MFD_EINVAL, "%s: URI too long", fn);
	if (atomic_load(&e->state_pub) != MFD_STATE_POSTCOPY_PAUSED)
		return mfd_error_set(errp, MFD_ESTATE, "%s: the migration is %s, not postcopy-paused",
				     fn, mfd_state_name((enum mfd_state)atomic_load(&e->state_pub)));
	if (incoming && (r = mfd_listener_new(uri, &l, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	if (e->state != MFD_STATE_POSTCOPY_PAUSED || e->resume_req) {
		r = mfd_error_set(errp, MFD_ESTATE, "%s: a recovery is already under way", fn);
	} else {
		if (incoming) {
			old = e->listener;
			e->listener = l;
			l = NULL;
			snprintf(e->listen_uri, sizeof(e->listen_uri), "%s",
				 mfd_listener_uri(e->listener));
		} else {
			strcpy(e->uri, uri);
		}
		strcpy(e->resume_uri, uri);
		e->resume_req = true;
		pthread_cond_broadcast(&e->cond);
	}
	pthread_mutex_unlock(&e->lock);
	mfd_listener_free(old);
	mfd_listener_free(l);
	return r;
}

int mfd_migrate_recover(mfd_migration *m, const char *uri, mfd_error **errp)
{
	return request_resume(m, true, uri, errp);
}

int mfd_migrate_resume(mfd_migration *m, const char *uri, mfd_error **errp)
{
	return request_resume(m, false, uri, errp);
}

enum mfd_state mfd_migration_state(mfd_migration *m)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;

	return e ? (enum mfd_state)atomic_load(&e->state_pub) : MFD_STATE_NONE;
}

int mfd_migration_set_hooks(mfd_migration *m, const mfd_vmm_hooks *hooks, void *opaque,
			    mfd_error **errp)
{
	if (!m || !hooks)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_migration_set_hooks: NULL argument");
	if (hooks->abi_version != MFD_VMM_HOOKS_ABI)
		return mfd_error_set(errp, MFD_EINVAL, "hooks abi_version %u, this library knows %u",
				     hooks->abi_version, MFD_VMM_HOOKS_ABI);
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "hooks cannot change while migrating");
	m->hooks = *hooks;
	m->hooks_opaque = opaque;
	return 0;
}

static void engine_free(mfd_migration *m)
{
	struct mfd_engine *e = m->engine;

	if (!e)
		return;
	if (e->thread_started) {
		mfd_migrate_cancel(m);
		pthread_join(e->thread, NULL);
	}
	engine_drop_state(e);
	free(e);
	m->engine = NULL;
}

/* mfd_migration_free() calls this through m->teardown: the engine and the
 * dirty trackers its migrations left. */
static void engine_teardown(mfd_migration *m)
{
	engine_free(m);
	ramsec_free_trackers(m);
}

/* ---- statistics ------------------------------------------------------------------------ */

int mfd_migration_stats(mfd_migration *m, struct mfd_stats *out)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	struct mfd_stats st;
	struct mfd_multifd_stats *ms = calloc(1, sizeof(*ms));
	uint64_t now = engine_now_ns(), page_bytes = 0, wire = 0;

	if (!out || out->size == 0) {
		free(ms);
		return MFD_EINVAL;
	}
	memset(&st, 0, sizeof(st));
	st.size = out->size;
	if (!e || !ms) {
		free(ms);
		memcpy(out, &st, MFD_MIN((size_t)out->size, sizeof(st)));
		return e ? MFD_ENOMEM : 0;
	}
	pthread_mutex_lock(&e->lock);
	st.status = e->state;
	uint64_t end = e->t_end_ns ? e->t_end_ns : now;

	st.total_time = e->t_start_ns ? (end - e->t_start_ns) / 1000000 : 0;
	st.setup_time = e->t_setup_ns ? (e->t_setup_ns - e->t_start_ns) / 1000000 : 0;
	st.downtime = e->downtime_ns / 1000000;
	st.expected_downtime = e->expected_downtime_pub;
	st.ram_transferred = e->main_bytes_pub;
	st.ram_remaining = e->remaining_pub;
	st.ram_total = ramsec_total(m);
	st.ram_duplicate = e->zero_pub;
	st.ram_normal = e->normal_pub;
	st.ram_normal_bytes = e->normal_bytes_pub;
	st.ram_dirty_sync_count = e->dirty_syncs_pub;
	st.ram_dirty_pages_rate = e->dirty_rate_pub;
	st.iterations = e->iterations_pub;
	st.throttle_percent = e->throttle;
	st.channels = e->use_multifd ? e->nchan : 0;
	if (e->send)
		mfd_multifd_send_stats(e->send, ms);
	else if (e->recv)
		mfd_multifd_recv_stats(e->recv, ms);
	else if (e->final_ms)
		*ms = *e->final_ms;
	pthread_mutex_unlock(&e->lock);
	for (unsigned i = 0; i < ms->channels; i++) {
		st.ram_multifd_bytes += ms->ch[i].wire_bytes;
		st.ram_duplicate += ms->ch[i].zero_pages;
		st.ram_normal += ms->ch[i].normal_pages;
		st.channel_bytes[i] = ms->ch[i].wire_bytes;
		st.channel_packets[i] = ms->ch[i].packets;
		st.channel_busy_ms[i] = ms->ch[i].busy_ns / 1000000;
		page_bytes += ms->ch[i].normal_bytes;
		wire += ms->ch[i].wire_bytes;
		/* Bytes a channel copied since pinning was refused went to the
		 * zero-copy write too: not zero-copy. */
		st.zero_copy_bytes += ms->ch[i].zc_bytes - ms->ch[i].zc_copy_bytes;
		st.zero_copy_sends += ms->ch[i].zc_sends;
		st.zero_copy_copied += ms->ch[i].zc_copied;
		st.dirty_sync_missed_zero_copy += ms->ch[i].zc_missed_syncs;
		st.zero_copy_refused_channels += ms->ch[i].zc_refused;
	}
	pthread_mutex_lock(&e->lock);
	st.ram_postcopy_requests = e->pc_requests;
	st.postcopy_pauses = e->pauses;
	st.precopy_stalls = e->precopy_stalls;
	if (e->t_pc_ns)
		/* Rounded up: a postcopy that happened never reads as 0 ms. */
		st.postcopy_time_ms =
			((e->t_pc_end_ns ? e->t_pc_end_ns : now) - e->t_pc_ns + 999999) / 1000000;
	if (e->pcd) {
		pcd_stats(e, &st);
	} else {
		st.postcopy_faults = e->pc_kept[0];
		st.postcopy_fault_us_median = e->pc_kept[1];
		st.postcopy_fault_us_p99 = e->pc_kept[2];
		st.postcopy_fault_us_max = e->pc_kept[3];
		st.postcopy_blocktime_ms = e->pc_kept[4];
	}
	pthread_mutex_unlock(&e->lock);
	st.multifd_syncs = ms->syncs;
	st.multifd_sync_ms_max = ms->sync_ns_max / 1000000;
	st.ram_transferred += st.ram_multifd_bytes;
	st.ram_normal_bytes += page_bytes;
	st.compression_ratio = page_bytes ? (double)wire / (double)page_bytes : 1.0;
	if (st.total_time > 0) {
		st.ram_mbps = (double)st.ram_transferred * 8 / 1e6 / ((double)st.total_time / 1000);
		st.ram_pages_per_second =
			(st.ram_duplicate + st.ram_normal) * 1000 / st.total_time;
	}
	free(ms);
	memcpy(out, &st, MFD_MIN((size_t)out->size, sizeof(st)));
	return 0;
}

char *mfd_migration_stats_json(mfd_migration *m)
{
	struct mfd_stats st = { .size = sizeof(st) };
	struct json_writer w;

	if (!m || mfd_migration_stats(m, &st) < 0)
		return NULL;
	json_init(&w, JSON_SPACED);
	json_begin_object(&w);
	json_key_str(&w, "status", mfd_state_name(st.status));
	json_key_u64(&w, "total-time", st.total_time);
	json_key_u64(&w, "setup-time", st.setup_time);
	json_key_u64(&w, "downtime", st.downtime);
	json_key_u64(&w, "expected-downtime", st.expected_downtime);
	json_key(&w, "cpu-throttle-percentage");
	json_i64(&w, st.throttle_percent);
	json_key_u64(&w, "precopy-stalls", st.precopy_stalls);

	json_key(&w, "ram");
	json_begin_object(&w);
	json_key_u64(&w, "transferred", st.ram_transferred);
	json_key_u64(&w, "remaining", st.ram_remaining);
	json_key_u64(&w, "total", st.ram_total);
	json_key_u64(&w, "duplicate", st.ram_duplicate);
	json_key_u64(&w, "normal", st.ram_normal);
	json_key_u64(&w, "normal-bytes", st.ram_normal_bytes);
	json_key_u64(&w, "dirty-sync-count", st.ram_dirty_sync_count);
	json_key_u64(&w, "dirty-pages-rate", st.ram_dirty_pages_rate);
	json_key_double(&w, "mbps", st.ram_mbps, 3);
	json_key_u64(&w, "pages-per-second", st.ram_pages_per_second);
	json_key_u64(&w, "multifd-bytes", st.ram_multifd_bytes);
	json_key_u64(&w, "postcopy-requests", st.ram_postcopy_requests);
	json_key_u64(&w, "page-size", m->nblocks ? m->blocks[0].page_size : 4096);
	json_key_u64(&w, "dirty-sync-missed-zero-copy", st.dirty_sync_missed_zero_copy);
	json_end_object(&w);

	json_key(&w, "multifd");
	json_begin_object(&w);
	json_key_u64(&w, "channels", st.channels);
	json_key_u64(&w, "iterations", st.iterations);
	json_key_u64(&w, "syncs", st.multifd_syncs);
	json_key_u64(&w, "sync-ms-max", st.multifd_sync_ms_max);
	json_key_double(&w, "compression-ratio", st.compression_ratio, 4);
	json_key(&w, "zero-copy");
	json_begin_object(&w);
	json_key_u64(&w, "bytes", st.zero_copy_bytes);
	json_key_u64(&w, "sends", st.zero_copy_sends);
	json_key_u64(&w, "copied", st.zero_copy_copied);
	json_key_u64(&w, "refused-channels", st.zero_copy_refused_channels);
	json_end_object(&w);
	json_key(&w, "per-channel");
	json_begin_array(&w);
	for (unsigned i = 0; i < st.channels; i++) {
		json_begin_object(&w);
		json_key_u64(&w, "id", i);
		json_key_u64(&w, "bytes", st.channel_bytes[i]);
		json_key_u64(&w, "packets", st.channel_packets[i]);
		json_key_u64(&w, "busy-ms", st.channel_busy_ms[i]);
		json_end_object(&w);
	}
	json_end_array(&w);
	json_end_object(&w);

	json_key(&w, "postcopy");
	json_begin_object(&w);
	json_key_u64(&w, "requests", st.ram_postcopy_requests);
	json_key_u64(&w, "faults", st.postcopy_faults);
	json_key_u64(&w, "fault-us-median", st.postcopy_fault_us_median);
	json_key_u64(&w, "fault-us-p99", st.postcopy_fault_us_p99);
	json_key_u64(&w, "fault-us-max", st.postcopy_fault_us_max);
	json_key_u64(&w, "blocktime-ms", st.postcopy_blocktime_ms);
	json_key_u64(&w, "pauses", st.postcopy_pauses);
	json_key_u64(&w, "time-ms", st.postcopy_time_ms);
	json_end_object(&w);
	json_end_object(&w);
	return json_finish(&w);
}
