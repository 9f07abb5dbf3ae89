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

struct mfd_ram_block {
	/* Set at registration; read-only while a migration runs. */
	char name[256];
	uint8_t *host;
	uint64_t size;
	uint64_t page_size;
	unsigned page_shift;

	/* Destination, while an incoming migration loads (NULL otherwise, and
	 * when dest-ram-zeroed is off): one bit per page, set once a page was
	 * placed.  A zero page for a page never placed needs no write at all.
	 * Bits are set with atomics by the channel threads and the incoming
	 * thread; the pointer is set before they start and cleared after. */
	_Atomic uint64_t *recvmap;
};

struct mfd_migration {
	/* Changed only while no save or load runs (busy == false), except the
	 * parameters marked live (core/params.c), read with mfd_param_live(). */
	char identity[256];
	struct mfd_section *sections;	/* registration order */
	uint32_t next_section_id;
	struct mfd_ram_block *blocks;	/* registration order */
	unsigned nblocks;
	struct mfd_params params;
	mfd_vmm_hooks hooks;
	void *hooks_opaque;
	atomic_bool busy;

	/* The engine (core/engine.c); NULL until a migration starts. */
	struct mfd_engine *engine;

	/* The built-in dirty tracker; published atomically, read by any thread in
	 * mfd_ram_mark_dirty(), freed only with the object. */
	struct mfd_tracker *tracker;
	struct mfd_tracker *retired[8];	/* trackers of earlier block tables */
	unsigned nretired;
};

/* A digest of the block table (names, sizes, page sizes, order), carried in the
 * multifd hello so both sides prove they index the same blocks. */
uint64_t mfd_ram_blocks_digest(const struct mfd_ram_block *blocks, unsigned n);

/* Destination: an empty recvmap for each of the @n blocks (dest-ram-zeroed),
 * before any page can arrive; MFD_ENOMEM naming the block.  Free them (also
 * after a failure) with mfd_ram_recvmap_free() once no thread places pages. */
int mfd_ram_recvmap_alloc(struct mfd_ram_block *blocks, unsigned n, mfd_error **errp);
void mfd_ram_recvmap_free(struct mfd_ram_block *blocks, unsigned n);

struct mfd_section *mfd_section_find(mfd_migration *m, const char *idstr, uint32_t instance_id);
void mfd_engine_free(mfd_migration *m);

#define mfd_for_each_section(m, se) for (struct mfd_section *se = (m)->sections; se; se = se->next)

#endif /* MFD_CORE_MIGRATION_H */
