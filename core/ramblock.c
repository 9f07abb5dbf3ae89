/* SPDX-License-Identifier: MIT */
/*
 * RAM block helpers below the section layer: the block table's digest (the
 * multifd hello carries it) and the destination's received-pages maps.
 */
#include <stdlib.h>
#include <string.h>

#include "core/ramblock.h"
#include "core/util.h"

/* FNV-1a over the table's identity: order, names, sizes, page sizes. */
uint64_t ram_blocks_digest(const struct mfd_ram_block *blocks, unsigned n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	uint8_t be[8];

#define MIX(p, len)                                           \
	for (size_t k__ = 0; k__ < (len); k__++) {            \
		h ^= ((const uint8_t *)(p))[k__];             \
		h *= 0x100000001b3ull;                        \
	}
	for (unsigned i = 0; i < n; i++) {
		MIX(blocks[i].name, strlen(blocks[i].name) + 1);
		store_be64(be, blocks[i].size);
		MIX(be, 8);
		store_be64(be, blocks[i].page_size);
		MIX(be, 8);
	}
#undef MIX
	return h;
}

int ram_recvmap_alloc(struct mfd_ram_block *blocks, unsigned n, mfd_error **errp)
{
	for (unsigned b = 0; b < n; b++) {
		uint64_t pages = blocks[b].size >> blocks[b].page_shift;

		blocks[b].recvmap = calloc((pages + 63) / 64, sizeof(uint64_t));
		if (!blocks[b].recvmap)
			return mfd_error_set(errp, MFD_ENOMEM,
					     "setup: out of memory for the received-pages map of "
					     "block '%s'", blocks[b].name);
	}
	return 0;
}

void ram_recvmap_free(struct mfd_ram_block *blocks, unsigned n)
{
	for (unsigned b = 0; b < n; b++) {
		free((void *)blocks[b].recvmap);
		blocks[b].recvmap = NULL;
	}
}
