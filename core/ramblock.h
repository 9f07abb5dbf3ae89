/* SPDX-License-Identifier: MIT */
/*
 * A guest RAM block as every layer sees it (the multifd channels place pages
 * into it, the RAM section walks it), and the helpers that need nothing else.
 */
#ifndef MFD_CORE_RAMBLOCK_H
#define MFD_CORE_RAMBLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <multifd/multifd.h>

struct mfd_ram_block {
	/* Set at registration; read-only while a migration runs. */
	char name[256];
	uint8_t *host;
	uint64_t size;
	uint64_t page_size;
	unsigned page_shift;
	unsigned dirty_shift;	/* log2 of the hooks' bytes per dirty bit */
	uint32_t flags;		/* MFD_RAM_SHARED, MFD_RAM_FRESH */
	int fd;			/* -1 when not fd-backed */
	uint64_t fd_offset;
	void *cookie;

	/* mfd_ram_discard(): absent ranges, sorted by start, disjoint and not
	 * touching (merged), in bytes; changed only between migrations. */
	struct ram_range *absent;
	unsigned nabsent;

	/* Destination, while an incoming migration loads (NULL otherwise, and
	 * when dest-ram-zeroed is off): one bit per page, set once a page was
	 * placed.  A zero page for a page never placed needs no write at all.
	 * Bits are set with atomics by the channel threads and the incoming
	 * thread; the pointer is set before they start and cleared after. */
	_Atomic uint64_t *recvmap;
};

struct ram_range {
	uint64_t start, len;
};

/* Whether [@off, @off + @len) of @b meets an absent range: a binary search,
 * nothing at all for a block without ranges. */
static inline bool ram_range_absent(const struct mfd_ram_block *b, uint64_t off, uint64_t len)
{
	unsigned lo = 0, hi = b->nabsent;

	while (lo < hi) {
		unsigned mid = (lo + hi) / 2;
		const struct ram_range *r = &b->absent[mid];

		if (r->start + r->len <= off)
			lo = mid + 1;
		else if (r->start >= off + len)
			hi = mid;
		else
			return true;
	}
	return false;
}

/* A digest of the block table (names, sizes, page sizes, order), carried in the
 * multifd hello so both sides prove they index the same blocks. */
uint64_t ram_blocks_digest(const struct mfd_ram_block *blocks, unsigned n);

/* Destination: an empty recvmap for each of the @n blocks (dest-ram-zeroed),
 * before any page can arrive; MFD_ENOMEM naming the block.  Free them (also
 * after a failure) with ram_recvmap_free() once no thread places pages. */
int ram_recvmap_alloc(struct mfd_ram_block *blocks, unsigned n, mfd_error **errp);
void ram_recvmap_free(struct mfd_ram_block *blocks, unsigned n);

#endif /* MFD_CORE_RAMBLOCK_H */
