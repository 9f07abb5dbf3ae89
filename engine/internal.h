/* SPDX-License-Identifier: MIT */
/*
 * The migration engine's internals, shared by the files of engine/ and by
 * nothing below them (docs/architecture.md: layers).
 */
#ifndef MFD_ENGINE_INTERNAL_H
#define MFD_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "channels/connect.h"
#include "channels/listener.h"
#include "channels/uri.h"
#include "core/channel.h"
#include "core/migration.h"
#include "core/params.h"
#include "engine/policy.h"
#include "core/escape.h"
#include "core/json.h"
#include "core/savevm.h"
#include "core/stream.h"
#include "core/util.h"
#include "core/wire.h"
#include "multifd/internal.h"

#define PC_REQ_QUEUE 4096		/* source: page requests waiting (non-preempt) */
#define PC_PAGE_MAX (2u << 20)		/* largest page postcopy places (2 MiB) */

/*
 * Built-in dirty tracker (mfd_ram_mark_dirty()), published with an atomic
 * pointer while migrating.  It keeps its own copy of the block geometry,
 * sorted by host address for the lookup; blk[i].block is the index in the
 * block table, slot[b] the entry of block b.
 */
struct trk_block {
	_Atomic uint64_t *bits;
	uint64_t npages;
	const uint8_t *host;
	uint64_t size;
	unsigned shift;
	unsigned block;
};
struct mfd_tracker {
	unsigned nblocks;
	struct trk_block *blk;		/* by host address */
	unsigned *slot;			/* by block index */
	atomic_bool used;		/* mfd_ram_mark_dirty() was called: syncs read it */
};

/* Arrays of one entry per RAM block, allocated by the section's prepare
 * and freed by ramsec_free() at the end of the migration. */
struct ram_source {
	unsigned nblocks;
	uint64_t **bitmap;			/* pages still to send */
	uint64_t *npages;
	uint64_t dirty;				/* bits set in all bitmaps */
	uint64_t *dirty_b;			/* bits set per block */
	uint64_t **absent;			/* pages never sent (mfd_ram_discard()), or NULL */
	uint64_t **clear;			/* dirty_clear: granules reported, not cleared yet */
	uint64_t **clear_chunks;		/* the same, one bit per 2^18 granules */
	uint64_t *ngran;			/* the hooks' bits per block */
	uint64_t *scratch;			/* dirty_sync's bitmap, the largest block's size */
	uint64_t *scratch_pages;		/* the same, granules folded into pages */
	uint64_t sync_round;			/* dirty_sync_begin's count */
	unsigned cur_block;			/* where the pass resumes */
	uint64_t cur_page;
	bool pass_done;				/* a pass ended in the last iterate */
	int last_block;				/* main-stream CONTINUE tracking */
	uint64_t pass_start_ns, pass_bytes_start;
	uint64_t dirtied_last_pass;		/* pages the guest dirtied during the pass */
	uint64_t dirtied_bytes_last_pass;	/* the same in bytes (blocks differ in page size) */
	double tokens;				/* max-bandwidth token bucket, bytes */
	uint64_t tokens_ns;
	int pre_last_block;			/* preempt-stream CONTINUE tracking */
	uint64_t pc_cursor_block, pc_cursor_page;	/* postcopy background push */
	struct policy_state policy;		/* the default switchover policy's memory */
};

/*
 * The counters mfd_migration_stats() reports.  Each has the writers named,
 * which update it with STAT_ADD()/STAT_SET(); any thread reads it with
 * STAT_GET(): relaxed atomics, no lock, no published copy.
 */
struct eng_stats {
	_Atomic uint64_t iterations;		/* source thread: live iteration rounds done */
	_Atomic uint64_t dirty_syncs;		/* source thread: dirty-log syncs */
	_Atomic uint64_t dirty_rate_pages;	/* source thread: pages dirtied per s, last pass */
	_Atomic uint64_t dirty_rate_bytes;	/* source thread: the same in bytes */
	_Atomic uint64_t expected_downtime_ms;	/* source thread: the policy's last estimate */
	_Atomic uint64_t precopy_stalls;	/* source thread: times the no-progress guard fired */
	_Atomic uint64_t zero_pages;		/* main and preempt streams: zero pages sent or
						 * loaded (the source's push and request server) */
	_Atomic uint64_t normal_pages;		/* the same: pages sent or loaded with data */
	_Atomic uint64_t normal_bytes;		/* their bytes (blocks differ in page size) */
	_Atomic uint64_t main_bytes;		/* migration thread, at engine_publish(): main and
						 * preempt stream bytes, across recoveries */
	_Atomic uint64_t remaining;		/* source thread, at engine_publish(): bytes still
						 * to send */
	_Atomic uint64_t pc_requests;		/* source: well-formed page requests received
						 * (return path, preempt server); destination:
						 * requests sent (fault thread) */
	_Atomic uint64_t pauses;		/* migration thread: postcopy pauses */
};
#define STAT_ADD(e, f, n) atomic_fetch_add_explicit(&(e)->stats.f, (n), memory_order_relaxed)
#define STAT_SET(e, f, v) atomic_store_explicit(&(e)->stats.f, (v), memory_order_relaxed)
#define STAT_GET(e, f) atomic_load_explicit(&(e)->stats.f, memory_order_relaxed)

struct pc_req {
	uint16_t block;
	uint32_t len;
	uint64_t offset;
};

struct pc_dest;	/* engine/postcopy.c */

/*
 * Postcopy as each side goes through it (as QEMU's PostcopyState), one value
 * instead of a flag per step.  pc_move() is the only writer and knows the
 * legal moves:
 *   source       none -> running (the package with RUN is out)
 *   destination  none -> advised (ADVISE: userfaultfd is ready) -> listening
 *                (LISTEN: pages go through userfaultfd) -> running (RUN: the
 *                guest runs here)
 * A recovery changes nothing here: a paused postcopy is still running; the
 * public state (postcopy-paused, postcopy-recover) says where the connection
 * is.  Any thread may read it (pc_at()).
 */
enum pc_state {
	PC_NONE,
	PC_ADVISED,
	PC_LISTENING,
	PC_RUNNING,
};

/*
 * The postcopy connection, as the threads that share it see it (under
 * lock); it replaces three flags (rp_broken, pause_req, resume_req):
 *   up --(a helper thread lost a channel)--> lost   --\
 *   up --(mfd_migrate_cancel())-----------> pause  ---+--> down (dropped;
 *   up --(the migration thread's own error)---------/     postcopy-paused)
 *   down --(mfd_migrate_resume/recover())--> resume --(reconnected)--> up
 *                                                   --(failed)-------> down
 * Any other move is no move: a second loss or a cancel racing a loss pauses
 * once.  link_move() is the only writer.
 */
enum pc_link {
	LINK_UP,
	LINK_LOST,
	LINK_PAUSE,
	LINK_DOWN,
	LINK_RESUME,
};

/*
 * The switchover's commit protocol (docs/architecture.md, "Switchover"), one
 * machine per side; commit_move() is the only writer and refuses any move
 * its table does not list.  Any thread may read it (commit_at()).
 *
 * Source:
 *   open --(SWITCHOVER_ACK: the destination's devices consent)--> approved
 *   open|approved --(EOF on its way: the commit point)--> eof
 *   eof --(RESULT)--> answered             RESULT 0 is legal only here
 *   open|approved --(RESULT < 0)--> answered
 *   eof --(no RESULT: the destination may run the VM)--> unknown
 *   eof|approved --(postcopy reconnects: the push ends with EOF again)--> open
 * Destination:
 *   loading --(SWITCHOVER_ACK sent)--> acked
 *   loading|acked --(RESULT 0 went out whole: the VM may start here)--> answered
 */
enum src_commit {
	SC_OPEN,
	SC_APPROVED,
	SC_EOF,
	SC_ANSWERED,
	SC_UNKNOWN,
};

enum dst_commit {
	DC_LOADING,
	DC_ACKED,
	DC_ANSWERED,
};

/*
 * The source's recovery handshake, after it reconnected (under lock):
 * hello --(a RECV_BITMAP per block)--> bitmaps --(RESUME_ACK)--> acked.
 */
enum resume_step {
	RS_HELLO,
	RS_BITMAPS,
	RS_ACKED,
};

/* What only the source uses. */
struct eng_source {
	_Atomic int commit;		/* enum src_commit: commit_move() only */
	/* The return path's reader, and what it learnt (under lock). */
	pthread_t rp_thread;
	bool rp_started;		/* migration thread: rp_thread is to be joined */
	bool rp_done;			/* the return-path thread is leaving */
	int rp_result;			/* the destination's RESULT, or RP_NO_RESULT */
	char *rp_message;
	struct mfd_multifd_send *send;
	/* mfd_migrate_channels(): the VMM's channels until eng_open_out() takes
	 * each (under lock; eng_release_channels() frees what is left). */
	mfd_channel *given_main, *given_pre, *given_mf[256];
	struct ram_source ram;
	double bandwidth;		/* migration thread: bytes/s, smoothed */
	int throttle;
	bool log_started;
	bool vm_stopped;
	atomic_bool pc_want;		/* mfd_migrate_start_postcopy() asked */
	mfd_stream *pre_out;		/* written by the preempt thread */
	_Atomic uint64_t pre_bytes;	/* the preempt stream's bytes (pre_lock writes) */
	atomic_bool pre_eos_sent;	/* the preempt stream's end is out */
	struct pc_req reqs[PC_REQ_QUEUE];	/* requests for the pusher, under lock */
	unsigned req_head, req_count;
	uint64_t pc_requests_dropped;	/* requests the full queue let the push carry */
	/* Recovery, under lock. */
	enum resume_step resume;
	unsigned bitmaps_got;
	uint64_t bitmaps_from[(MFD_RAM_BLOCKS_MAX + 63) / 64];	/* blocks whose bitmap came */
};

/* What only the destination uses. */
struct eng_dest {
	_Atomic int commit;		/* enum dst_commit: commit_move() only */
	int approvals_needed;		/* under lock: -1 until the return path opens */
	int approvals_early;		/* approvals that came before the count */
	mfd_listener *listener;
	unsigned strays;		/* incoming thread: refused in this setup or recovery */
	char listen_uri[512];
	struct mfd_multifd_recv *recv;
	int recv_last_block;		/* main-stream CONTINUE tracking */
	bool ram_started;		/* got the RAM START */
	bool lazy;			/* vm_create: the block table comes from the source */
	bool ram_ready;			/* the table is final: maps, channels started */
	uint8_t *vm_config;		/* the source's VM configuration, if it sent one */
	size_t vm_config_len;
	bool vm_config_seen;
	uint64_t pc_summary;		/* POSTCOPY_ADVISE's page sizes, to check once */
	bool pc_summary_due;		/* ... the table is final (vm_create) */
	mfd_stream *pre_in;		/* read by the preempt thread */
	bool pre_reader_left;		/* under lock: the preempt reader is leaving */
	atomic_bool pre_abandoned;	/* its end never came, every page is in: finish()
					 * closes it, and its reader leaves quietly */
	struct pc_dest *pcd;		/* userfaultfd state */
	uint64_t pc_kept[5];		/* its figures once it is gone (see pcd_stats) */
	uint8_t *pc_page;		/* main-stream bounce page */
};

struct mfd_engine {
	/* Set at start. */
	mfd_migration *m;
	bool incoming;
	bool use_multifd;
	bool use_rp;
	bool confirm;			/* switchover-confirm on both sides */
	unsigned nchan;
	char uri[512];
	char tls_host[256];		/* tcp: URI's host, the default TLS name */

	/* Protected by lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum mfd_state state;
	mfd_error *err;
	bool ended;

	/* Any thread. */
	atomic_bool cancel;		/* stop everything (user cancel or a fatal error) */
	int cancel_fd;			/* eventfd written by eng_shutdown_all(): ends a connect */
	atomic_bool user_cancel;	/* mfd_migrate_cancel() asked for it */
	atomic_int state_pub;

	/* Owned by the migration (or incoming) thread. */
	pthread_t thread;
	bool thread_started;
	bool joining;			/* a waiter is joining the thread (under lock) */
	mfd_tls_creds *creds;
	mfd_channel *main_ch, *main_raw;
	mfd_channel *mf[256], *mf_raw[256];
	mfd_stream *out, *in;
	pthread_mutex_t out_lock;	/* destination: return-path writes */
	struct mfd_multifd_config mcfg;
	struct mfd_section *ram_se;
	struct mfd_section *vmconfig_se;	/* "vm-config" (engine/vmconfig.c) */

	/* Timestamps: written by the owning thread under lock, read by anyone. */
	uint64_t t_start_ns, t_setup_ns, t_end_ns, t_stop_ns, downtime_ns;
	/* The migration's block table as the statistics report it (under lock:
	 * the destination's vm_create hook changes the table while a VMM thread
	 * may ask; eng_publish_table()). */
	uint64_t ram_total, ram_page_size;
	/* Owned by the migration thread. */
	uint64_t main_bytes_dropped;	/* main and preempt bytes of connections postcopy lost */
	struct eng_stats stats;		/* the counters; see struct eng_stats */
	struct mfd_multifd_stats *final_ms;	/* multifd figures kept at the end (under lock) */

	/* Postcopy. */
	bool postcopy;			/* postcopy-ram on this migration */
	bool preempt;			/* postcopy-preempt: a channel for requested pages */
	_Atomic int pc;			/* enum pc_state: only pc_move() changes it */
	mfd_channel *pre_ch, *pre_raw;	/* the preempt channel (published under lock) */
	pthread_mutex_t pre_lock;	/* source: pre_out writers; destination: pre_ch writers */
	pthread_t pre_thread;		/* source: serves requests; destination: places pages */
	bool pre_started;
	uint64_t t_pc_ns, t_pc_end_ns;	/* switch to postcopy, end of it */
	/* Recovery, under lock. */
	enum pc_link link;		/* the postcopy connection; link_move() only */
	char resume_uri[512];

	struct eng_source src;		/* !incoming */
	struct eng_dest dst;		/* incoming */
};

/* engine/ramsec.c: the section's handlers, the dirty tracker, the source's precopy */
int ramsec_register(struct mfd_engine *e, mfd_error **errp);
void ramsec_unregister(struct mfd_engine *e);
void ramsec_free(struct mfd_engine *e);
/* Move the section registered last to the head of the list; returns it. */
struct mfd_section *eng_section_to_head(mfd_migration *m);
int vmconfig_register(struct mfd_engine *e, mfd_error **errp);
void vmconfig_unregister(struct mfd_engine *e);
/* Destination: the block table is final (at once, or after vm_create):
 * received-pages maps, postcopy bitmaps, the multifd channels' table and
 * their threads. */
int eng_dest_ram_ready(struct mfd_engine *e, mfd_error **errp);
/* Record the block table's size for mfd_migration_stats(), under lock. */
void eng_publish_table(struct mfd_engine *e);
void ramsec_free_trackers(mfd_migration *m);
/* Bytes of RAM the source still has to send. */
uint64_t ramsec_remaining(struct mfd_engine *e);
uint64_t ramsec_total(const mfd_migration *m);
uint64_t ramsec_words(uint64_t npages);
bool ramsec_has_postcopy(void *opaque);
/* Source, VM stopped: pull the last dirty pages into the send bitmap. */
int ramsec_final_sync(struct mfd_engine *e, mfd_error **errp);
/* How long one PART may walk the bitmap; a postcopy PART gets a fifth. */
#define RAMSEC_ITERATE_BUDGET_NS (50ull * 1000 * 1000)
const struct mfd_ram_block *ramsec_blk(struct mfd_engine *e, unsigned b);
/* The be64 word that starts a RAM record: @offset | @flags. */
void ramsec_put_word(mfd_stream *s, uint64_t offset, unsigned flags);
/* Wait until @rate (bytes/s, <= 0: unlimited) allows @bytes more. */
void ramsec_rate_limit_at(struct mfd_engine *e, int64_t rate, uint64_t bytes);

/* engine/ramsec_pc.c: the source after the switch to postcopy */
/* A PART in postcopy: requests first, then the background push; EOS at the end. */
int ramsec_pc_iterate(struct mfd_engine *e, mfd_stream *s, mfd_error **errp);
/* Source: send discard commands for every page still to send. */
int ramsec_send_discards(struct mfd_engine *e, mfd_stream *s, mfd_error **errp);
/* Source: send the pages of one request on @s (preempt stream or main). */
int ramsec_serve_request(struct mfd_engine *e, mfd_stream *s, int *last_block,
			 const struct pc_req *rq, mfd_error **errp);
/* Source: replace the send bitmap of block @b by the pages the destination lacks. */
void ramsec_apply_recv_bitmap(struct mfd_engine *e, unsigned b, const uint64_t *recv);

/* engine/ramsec_load.c: the destination */
/* The section's load_state handler. */
int ramsec_load_state(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp);
/* Destination: read one RAM record body (after the word) and place it in postcopy. */
int ramsec_load_pc_record(struct mfd_engine *e, mfd_stream *s, uint64_t word, int *last_block,
			  uint8_t *bounce, mfd_error **errp);

/* engine/postcopy.c: destination userfaultfd machinery. */
int pcd_new(struct mfd_engine *e, mfd_error **errp);
/* The per-block bitmaps, once the block table is final (eng_dest_ram_ready()). */
int pcd_blocks(struct mfd_engine *e, mfd_error **errp);
int pcd_discard(struct mfd_engine *e, unsigned b, uint64_t start, uint64_t len, mfd_error **errp);
int pcd_listen(struct mfd_engine *e, mfd_error **errp);
/* Place @n contiguous pages from @offset, their bytes at @data; pages already
 * there are left alone. */
int pcd_place_run(struct mfd_engine *e, unsigned b, uint64_t offset, const uint8_t *data,
		  uint32_t n, mfd_error **errp);
/* Place a page (data NULL: a zero page); a page already there is left alone. */
int pcd_place(struct mfd_engine *e, unsigned b, uint64_t offset, const void *data,
	      mfd_error **errp);
uint64_t pcd_missing(struct mfd_engine *e);
int pcd_send_bitmap(struct mfd_engine *e, unsigned b, mfd_error **errp);
void pcd_resend_requests(struct mfd_engine *e);
void pcd_stop(struct mfd_engine *e);
void pcd_free(struct mfd_engine *e);
void pcd_stats(struct mfd_engine *e, struct mfd_stats *st);

/* engine/: the return path, the clock, the cancel flag, statistics */
int engine_rp_send(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		   mfd_error **errp);
/* Destination: a message followed by raw bytes, under the return path's lock. */
int engine_rp_send_raw(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		       const struct iovec *extra, int nextra, mfd_error **errp);
/* Destination: a REQ_PAGES message on the channel that carries them. */
int engine_send_page_request(struct mfd_engine *e, const uint8_t msg[RP_REQ_PAGES_LEN],
			     mfd_error **errp);
uint64_t engine_now_ns(void);
bool engine_cancelled(struct mfd_engine *e);
uint64_t engine_bytes_sent(struct mfd_engine *e);
void engine_publish(struct mfd_engine *e);

/*
 * Test hook (fault injection, tests/integration/check_faults.c): when set,
 * @fn sees every channel the engine connects or accepts, right after it
 * exists and before TLS, and may wrap it in place (tests/lib/fault.h).  Not
 * exported; set it only while no migration runs.  A non-zero return fails
 * the channel's setup with that error.
 */
enum engine_chan_kind { ENGINE_CH_MAIN, ENGINE_CH_MULTIFD, ENGINE_CH_PREEMPT };
typedef int (*engine_wrap_fn)(void *opaque, mfd_channel *ch, mfd_migration *m, bool incoming,
			      enum engine_chan_kind kind, unsigned index, mfd_error **errp);
void engine_set_channel_wrapper(engine_wrap_fn fn, void *opaque);

/* Shared between the engine's files (each defined in the file named above it). */
/* engine/state.c */
bool eng_terminal(enum mfd_state s);
void eng_set_state(struct mfd_engine *e, enum mfd_state to);
void eng_record_error(struct mfd_engine *e, mfd_error *err);
void eng_shutdown_all(struct mfd_engine *e);
void eng_fail_all(struct mfd_engine *e, mfd_error *err);
void eng_cond_init(pthread_cond_t *cond);
struct timespec eng_deadline_in(int64_t ms);

/* engine/chanset.c */
int eng_wrap_channel(struct mfd_engine *e, mfd_channel *ch, enum engine_chan_kind kind,
		unsigned index, mfd_error **errp);
/* Publish a channel (or other object) so that cancel can reach it. */
#define PUBLISH(e, field, value)                         \
	do {                                             \
		pthread_mutex_lock(&(e)->lock);          \
		(e)->field = (value);                    \
		pthread_mutex_unlock(&(e)->lock);        \
		if (engine_cancelled(e))                 \
			eng_shutdown_all(e);                 \
	} while (0)
void eng_relax_timeouts(struct mfd_engine *e);
int eng_open_out(struct mfd_engine *e, int slot, mfd_error **errp);
void eng_break_connections(struct mfd_engine *e);
void eng_release_channels(struct mfd_engine *e);

/* engine/accept.c */
int eng_gather(struct mfd_engine *e, unsigned count, int timeout_ms, int (*screen)(mfd_channel *,
		void *, bool *, mfd_error **), mfd_channel **slots, mfd_error **errp);
int eng_screen_main(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp);
int eng_screen_mf(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp);
int eng_accept_preempt(struct mfd_engine *e, mfd_error **errp);
int eng_screen_resume(mfd_channel *raw, void *opaque, bool *stray, mfd_error **errp);

/* engine/options.c */
int eng_check_zero_copy(mfd_migration *m, bool stream, bool unix_uri, mfd_error **errp);
int eng_make_config(struct mfd_engine *e, mfd_error **errp);
int eng_make_creds(struct mfd_engine *e, enum mfd_tls_role role, mfd_error **errp);

/* engine/hello.c */
int eng_first_nonzero(const uint8_t *h, size_t from, size_t to);
void eng_main_hello_encode(struct mfd_engine *e, uint8_t h[MAIN_HELLO_SIZE], bool resume);
int eng_main_hello_check(struct mfd_engine *e, mfd_channel *ch, bool *stray, mfd_error **errp);
void eng_preempt_hello_encode(struct mfd_engine *e, uint8_t h[PREEMPT_HELLO_SIZE]);

/* engine/retpath.c */
void eng_name_stream(mfd_stream *s, const char *label, mfd_error **errp);
int eng_rp_send(struct mfd_engine *e, uint16_t type, const void *payload, uint16_t len,
		mfd_error **errp);
int eng_rp_send_result(struct mfd_engine *e, int code, const char *msg, mfd_error **errp);
bool eng_network_error(struct mfd_engine *e, int code);
int eng_page_request_parse(struct mfd_engine *e, const char *where, const uint8_t *buf,
		uint16_t len, struct pc_req *rq, mfd_error **errp);
void *eng_rp_thread(void *arg);
mfd_error *eng_destination_reason(struct mfd_engine *e);

/* engine/preempt.c */
int eng_start_pre_server(struct mfd_engine *e, mfd_error **errp);
int eng_open_preempt(struct mfd_engine *e, mfd_error **errp);
int eng_start_pre_reader(struct mfd_engine *e, mfd_error **errp);

/* engine/switchover.c */
/* Source: wait up to @timeout ms for the destination's RESULT; 0 if it said
 * "loaded". */
int eng_wait_result(struct mfd_engine *e, int64_t timeout, mfd_error **errp);
int eng_switchover_commit(struct mfd_engine *e, mfd_error **errp);
int eng_switchover_answer(struct mfd_engine *e, mfd_error **errp);

/* engine/source.c */
int eng_flush_out(mfd_stream *s, mfd_error **errp);
int eng_source_run(struct mfd_engine *e, mfd_error **errp);

/* engine/source_pc.c */
void eng_drop_connection(struct mfd_engine *e);
int eng_postcopy_run(struct mfd_engine *e, mfd_error **errp);
int eng_postcopy_pause(struct mfd_engine *e, mfd_error *cause, mfd_error **errp);

/* engine/dest.c */
int eng_incoming_run(struct mfd_engine *e, mfd_error **errp);

/* engine/dest_pc.c */
int eng_lh_advise(void *opaque, bool has_summary, uint64_t summary, uint64_t target,
		mfd_error **errp);
int eng_lh_listen(void *opaque, mfd_error **errp);
int eng_lh_run(void *opaque, mfd_error **errp);
int eng_lh_discard(void *opaque, const char *block, const uint64_t *ranges, size_t n,
		mfd_error **errp);
int eng_lh_recv_bitmap(void *opaque, const char *block, mfd_error **errp);
int eng_lh_resume(void *opaque, mfd_error **errp);
int eng_dest_reconnect(struct mfd_engine *e, mfd_error **errp);
bool eng_dest_pausable(struct mfd_engine *e, int r);

/* engine/stats.c */
uint64_t eng_main_stream_bytes(struct mfd_engine *e);

/* engine/state.c: may a side move from @from to @to (the table of legal
 * moves; set_state() refuses any other)? */
bool engine_legal_move(bool incoming, enum mfd_state from, enum mfd_state to);

/* engine/state.c: postcopy's steps (enum pc_state). */
const char *pc_state_name(enum pc_state s);
/* Move to @to, or refuse with MFD_EPROTO naming @what (the command or event
 * that asked for it, e.g. "POSTCOPY_RUN"): a step out of order is the
 * peer's doing on the destination, a bug on the source. */
int pc_move(struct mfd_engine *e, enum pc_state to, mfd_error **errp);

/* Call with lock held: move the link to @to if the table allows it from
 * where it is; returns whether it moved. */
bool link_move(struct mfd_engine *e, enum pc_link to);

/* Move this side's commit protocol to @to (enum src_commit on the source,
 * enum dst_commit on the destination) if its table allows it from where it
 * is; returns whether it moved.  Callers that pair it with other fields
 * (rp_result) hold lock. */
bool commit_move(struct mfd_engine *e, int to);

static inline int commit_at(struct mfd_engine *e)
{
	return atomic_load(e->incoming ? &e->dst.commit : &e->src.commit);
}

/* Source: rp_result until the destination's RESULT arrived (its codes are
 * 0 or negative). */
#define RP_NO_RESULT 1

static inline enum pc_state pc_at(struct mfd_engine *e)
{
	return (enum pc_state)atomic_load(&e->pc);
}

/* The switch happened: the destination runs (or may run) the guest. */
static inline bool pc_running(struct mfd_engine *e)
{
	return pc_at(e) == PC_RUNNING;
}

#endif /* MFD_ENGINE_INTERNAL_H */
