/* SPDX-License-Identifier: MIT */
/*
 * The savevm v3 section stream: constants, the source-side phase helpers the
 * migration engine calls, command writers, and the loader.
 * docs/wire-format.md describes every byte.
 */
#ifndef MFD_CORE_SAVEVM_H
#define MFD_CORE_SAVEVM_H

#include <stdbool.h>
#include <stdint.h>

#include <multifd/multifd.h>

#include "core/wire.h"

/* Limits the loader enforces on peer data. */
#define MFD_PACKAGED_MAX_DEFAULT (256u << 20)	/* bytes in one PACKAGED blob */
#define MFD_LOADVM_MAX_DEPTH 1			/* a package may not hold a package */

const char *vm_cmd_name(unsigned cmd);
const char *vm_record_name(unsigned type);

/* ---- source side: phases, in the order the engine calls them --------- */

int savevm_prepare(mfd_migration *m, mfd_error **errp);
int savevm_header(mfd_migration *m, mfd_stream *s);
int savevm_setup(mfd_migration *m, mfd_stream *s, mfd_error **errp);
/* 1 when every active live section reported done, 0 when more rounds are wanted.
 * In postcopy only sections with has_postcopy are iterated. */
int savevm_iterate(mfd_migration *m, mfd_stream *s, bool postcopy, mfd_error **errp);
int savevm_postcopy_prepare(mfd_migration *m, mfd_stream *s, bool *can_switchover,
				mfd_error **errp);
/* END for every active live section (those with has_postcopy skipped when
 * in_postcopy), then, unless in_postcopy, FULL for every non-live section. */
int savevm_complete_precopy(mfd_migration *m, mfd_stream *s, bool in_postcopy,
				mfd_error **errp);
/* FULL for every non-live section (the engine packages these in postcopy). */
int savevm_save_nonlive(mfd_migration *m, mfd_stream *s, mfd_error **errp);
int savevm_complete_postcopy(mfd_migration *m, mfd_stream *s, mfd_error **errp);
int savevm_eof(mfd_stream *s);
void savevm_pending_estimate(mfd_migration *m, uint64_t *must_precopy, uint64_t *can_postcopy);
void savevm_pending_exact(mfd_migration *m, uint64_t *must_precopy, uint64_t *can_postcopy);
bool savevm_switchover_ack_needed(mfd_migration *m);
int savevm_resume_prepare(mfd_migration *m, mfd_error **errp);
/* save_cleanup for every section whose save_setup succeeded. */
void savevm_cleanup(mfd_migration *m);

/* ---- commands (source side) ------------------------------------------- */

int savevm_send_command(mfd_stream *s, enum mfd_vm_cmd cmd, uint16_t len,
			    const void *payload);
int savevm_send_open_return_path(mfd_stream *s);
int savevm_send_ping(mfd_stream *s, uint32_t value);
int savevm_send_postcopy_advise(mfd_stream *s, uint64_t page_size_summary,
				    uint64_t target_page_size);
int savevm_send_postcopy_listen(mfd_stream *s);
int savevm_send_postcopy_run(mfd_stream *s);
/* ranges: n pairs (start, length) in bytes within the block. */
int savevm_send_postcopy_ram_discard(mfd_stream *s, const char *block,
					 const uint64_t *ranges, size_t n);
int savevm_send_packaged(mfd_stream *s, const void *blob, uint32_t len);
int savevm_send_enable_colo(mfd_stream *s);
int savevm_send_postcopy_resume(mfd_stream *s);
int savevm_send_recv_bitmap(mfd_stream *s, const char *block);
int savevm_send_switchover_start(mfd_stream *s);
/* How many discard ranges fit one command for a block name of this length. */
size_t savevm_discard_ranges_max(size_t name_len);

/* ---- destination side ------------------------------------------------- */

/*
 * What the engine does for each command.  A NULL member means the command is
 * refused in this context (MFD_ENOTSUP), except SWITCHOVER_START, which is
 * informational.  PACKAGED is handled by the loader itself.  Members return
 * 0, a negative code, or (postcopy_run only) MFD_LOADVM_QUIT to end the
 * current (nested) load loop.
 */
#define MFD_LOADVM_QUIT 1

struct mfd_loadvm_hooks {
	void *opaque;
	int (*open_return_path)(void *opaque, mfd_error **errp);
	int (*ping)(void *opaque, uint32_t value, mfd_error **errp);
	/* has_summary false: the 0-byte form (no RAM postcopy). */
	int (*postcopy_advise)(void *opaque, bool has_summary, uint64_t page_size_summary,
			       uint64_t target_page_size, mfd_error **errp);
	int (*postcopy_listen)(void *opaque, mfd_error **errp);
	int (*postcopy_run)(void *opaque, mfd_error **errp);
	int (*postcopy_ram_discard)(void *opaque, const char *block, const uint64_t *ranges,
				    size_t n, mfd_error **errp);
	int (*enable_colo)(void *opaque, mfd_error **errp);
	int (*postcopy_resume)(void *opaque, mfd_error **errp);
	int (*recv_bitmap)(void *opaque, const char *block, mfd_error **errp);
	int (*switchover_start)(void *opaque, mfd_error **errp);
	/* Most bytes accepted in one PACKAGED command; 0 = MFD_PACKAGED_MAX_DEFAULT. */
	uint32_t packaged_max;
};

/* Whole stream: header, configuration, records until EOF; load_setup before,
 * load_cleanup after. Returns 0 at EOF (or after a QUIT), negative on error. */
int loadvm_state(mfd_migration *m, mfd_stream *s, const struct mfd_loadvm_hooks *hooks,
		     mfd_error **errp);
/* The same in three steps, for postcopy recovery, where one load continues on
 * a new stream: begin (header, load_setup), run (records until EOF, or
 * MFD_LOADVM_QUIT after POSTCOPY_RUN, where the caller goes on reading the
 * same stream; with @header, a resumed stream's header first), end
 * (load_cleanup). */
int loadvm_begin(mfd_migration *m, mfd_stream *s, const struct mfd_loadvm_hooks *hooks,
		     mfd_error **errp);
int loadvm_run(mfd_migration *m, mfd_stream *s, const struct mfd_loadvm_hooks *hooks,
		   bool header, mfd_error **errp);
/* load_setup for the sections registered since loadvm_begin() (by the
 * destination's vm_create hook). */
int loadvm_setup_new(mfd_migration *m, mfd_error **errp);
void loadvm_end(mfd_migration *m);

#endif /* MFD_CORE_SAVEVM_H */
