/* SPDX-License-Identifier: MIT */
/*
 * The migration engine's internals, shared by core/engine.c (state machine,
 * threads, channels, return path) and core/ramsec.c (the built-in "ram"
 * section).
 */
#ifndef MFD_CORE_ENGINE_H
#define MFD_CORE_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/migration.h"
#include "core/params.h"
#include "multifd/internal.h"

/* RAM record flags in the low bits of a be64 (offset | flags) word, QEMU's values. */
#define RAM_FLAG_ZERO 0x002u
#define RAM_FLAG_MEM_SIZE 0x004u
#define RAM_FLAG_PAGE 0x008u
#define RAM_FLAG_EOS 0x010u
#define RAM_FLAG_CONTINUE 0x020u
#define RAM_FLAG_MULTIFD_FLUSH 0x200u
#define RAM_FLAGS_MASK 0xfffu	/* offsets are multiples of >= 4 KiB pages */
#define RAM_SECTION_VERSION 1u

/* Main-channel hello, 128 bytes, sent before the savevm stream. */
#define MAIN_HELLO_MAGIC 0x4d46444du	/* "MFDM" */
#define MAIN_HELLO_VERSION 1u
#define MAIN_HELLO_SIZE 128
#define MAIN_HELLO_RETURN_PATH 0x1u

/* Return-path messages: be16 type, be16 length, payload. */
enum rp_type {
	RP_PONG = 1,		/* be32 value */
	RP_RESULT = 2,		/* be32 code (0 = loaded), then the message bytes */
	RP_SWITCHOVER_ACK = 3,	/* nothing: the destination consents to switchover */
};
#define RP_MSG_MAX 4096

/* Built-in dirty tracker, published with an atomic pointer while migrating. */
struct mfd_tracker {
	unsigned nblocks;
	_Atomic uint64_t *bits[MFD_RAM_BLOCKS_MAX];
	uint64_t npages[MFD_RAM_BLOCKS_MAX];
	const uint8_t *host[MFD_RAM_BLOCKS_MAX];
	uint64_t size[MFD_RAM_BLOCKS_MAX];
	unsigned shift[MFD_RAM_BLOCKS_MAX];
};

struct ram_source {
	uint64_t *bitmap[MFD_RAM_BLOCKS_MAX];	/* pages still to send */
	uint64_t npages[MFD_RAM_BLOCKS_MAX];
	uint64_t dirty;				/* bits set in all bitmaps */
	uint64_t dirty_b[MFD_RAM_BLOCKS_MAX];	/* bits set per block */
	unsigned cur_block;			/* where the pass resumes */
	uint64_t cur_page;
	bool pass_done;				/* a pass ended in the last iterate */
	int last_block;				/* main-stream CONTINUE tracking */
	uint64_t pass_start_ns, pass_bytes_start;
	uint64_t dirtied_last_pass;		/* pages the guest dirtied during the pass */
	uint64_t dirtied_bytes_last_pass;	/* the same in bytes (blocks differ in page size) */
	double tokens;				/* max-bandwidth token bucket, bytes */
	uint64_t tokens_ns;
	uint64_t zero_pages, normal_pages;	/* main-stream mode counts */
	uint64_t normal_bytes;
};

struct mfd_engine {
	/* Set at start. */
	mfd_migration *m;
	bool incoming;
	bool use_multifd;
	bool use_rp;
	unsigned nchan;
	char uri[512];
	char tls_host[256];		/* tcp: URI's host, the default TLS name */

	/* Protected by lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum mfd_state state;
	mfd_error *err;
	bool ended;
	bool rp_result_seen;
	bool rp_done;			/* the return-path thread is leaving */
	bool switchover_acked;		/* source: SWITCHOVER_ACK arrived */
	int approvals_needed;		/* destination: -1 until the return path opens */
	int approvals_early;		/* approvals that came before the count */
	bool ack_sent;
	int rp_result;
	char *rp_message;
	char listen_uri[512];

	/* Any thread. */
	atomic_bool cancel;		/* stop everything (user cancel or a fatal error) */
	atomic_bool user_cancel;	/* mfd_migrate_cancel() asked for it */
	atomic_int state_pub;

	/* Owned by the migration (or incoming) thread. */
	pthread_t thread;
	bool thread_started;
	pthread_t rp_thread;
	bool rp_started;
	mfd_listener *listener;
	mfd_tls_creds *creds;
	mfd_channel *main_ch, *main_raw;
	mfd_channel *mf[256], *mf_raw[256];
	mfd_stream *out, *in;
	pthread_mutex_t out_lock;	/* destination: return-path writes */
	struct mfd_multifd_config mcfg;
	struct mfd_multifd_send *send;
	struct mfd_multifd_recv *recv;
	struct mfd_section *ram_se;
	struct ram_source ram;
	int recv_last_block;		/* destination main-stream CONTINUE tracking */
	bool ram_started;		/* destination got the RAM START */
	bool vm_stopped;
	bool log_started;
	int throttle;

	/* Statistics: written by the owning thread under lock, read by anyone. */
	uint64_t t_start_ns, t_setup_ns, t_end_ns, t_stop_ns, downtime_ns;
	uint64_t iterations, dirty_syncs, dirty_rate_pages, dirty_rate_bytes;
	uint64_t expected_downtime_ms;
	double bandwidth;		/* bytes/s, smoothed */
	uint64_t main_bytes_pub, remaining_pub, zero_pub, normal_pub, normal_bytes_pub;
	uint64_t iterations_pub, dirty_syncs_pub, dirty_rate_pub, expected_downtime_pub;
	struct mfd_multifd_stats *final_ms;	/* multifd figures kept at the end */
};

/* core/ramsec.c */
int ramsec_register(struct mfd_engine *e, mfd_error **errp);
void ramsec_unregister(struct mfd_engine *e);
void ramsec_free(struct mfd_engine *e);
void ramsec_free_trackers(mfd_migration *m);
/* Bytes of RAM the source still has to send. */
uint64_t ramsec_remaining(struct mfd_engine *e);
uint64_t ramsec_total(const mfd_migration *m);

/* core/engine.c */
uint64_t engine_now_ns(void);
bool engine_cancelled(struct mfd_engine *e);
uint64_t engine_bytes_sent(struct mfd_engine *e);
void engine_publish(struct mfd_engine *e);
void mfd_engine_free(mfd_migration *m);

#endif /* MFD_CORE_ENGINE_H */
