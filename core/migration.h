/* SPDX-License-Identifier: MIT */
/*
 * The migration object as the core sees it: the section registry.
 */
#ifndef MFD_CORE_MIGRATION_H
#define MFD_CORE_MIGRATION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <multifd/multifd.h>

#include "core/params.h"
#include "core/ramblock.h"
#include "core/util.h"

struct mfd_section {
	/* Set at registration. */
	char idstr[MFD_IDSTR_MAX + 1];
	uint32_t instance_id;
	uint32_t version_id;
	uint32_t section_id;	/* written in START/PART/END/FULL headers */
	mfd_save_handlers ops;
	void *opaque;
	bool live;		/* has save_setup or save_live_iterate */

	/* Source-side run state, owned by the thread running the save. */
	bool save_setup_done;
	bool iterate_done;

	/* Destination-side run state, owned by the loading thread. */
	bool load_setup_done;
	bool load_seen;		/* a START or FULL mapped load_section_id */
	uint32_t load_section_id;
	uint32_t load_version_id;	/* the version the START/FULL announced */

	struct mfd_section *next;
};

struct mfd_migration {
	/* Changed only while no save or load runs (busy == false), except the
	 * parameters marked live (core/params.c), read with param_live(). */
	char identity[256];
	struct mfd_section *sections;	/* registration order */
	uint32_t next_section_id;
	struct mfd_ram_block *blocks;	/* registration order */
	unsigned nblocks;
	struct mfd_params params;
	mfd_vmm_hooks hooks;
	void *hooks_opaque;
	atomic_bool busy;
	/* The destination's vm_create hook runs (incoming thread): block and
	 * section registration are open despite busy. */
	atomic_bool vm_create_running;
	void *vm_config;		/* mfd_migration_set_vm_config() */
	size_t vm_config_len;

	/* The engine (engine/); NULL until a migration starts.  The engine sets
	 * teardown when it first attaches its state, and mfd_migration_free()
	 * calls it: this layer never calls up into the engine by name. */
	struct mfd_engine *engine;
	void (*teardown)(mfd_migration *m);

	/* The built-in dirty tracker; published atomically, read by any thread in
	 * mfd_ram_mark_dirty(), freed only with the object. */
	struct mfd_tracker *tracker;
	struct mfd_tracker **retired;	/* trackers of earlier block tables */
	unsigned nretired;

	/* mfd_migration_event_fd(): an eventfd made on the first call (-1 until
	 * then), written by migration_notify(); any thread. */
	_Atomic int event_fd;

	/* mfd_migration_set_log_handler(); the threads working for this object
	 * carry a pointer to it (log_route_enter()). */
	struct log_route log_route;
};

/* Wake mfd_migration_event_fd()'s readers: the state changed or the
 * migration ended.  Any thread; never blocks. */
void migration_notify(mfd_migration *m);

/* Whether the block table and the sections may change now: no migration
 * runs, or the destination's vm_create hook does. */
static inline bool migration_table_open(const mfd_migration *m)
{
	return !m->busy || atomic_load(&m->vm_create_running);
}

/* Free the block table (and each block's absent ranges). */
void ram_blocks_free(mfd_migration *m);

struct mfd_section *section_find(mfd_migration *m, const char *idstr, uint32_t instance_id);

#define for_each_section(m, se) for (struct mfd_section *se = (m)->sections; se; se = se->next)

#endif /* MFD_CORE_MIGRATION_H */
