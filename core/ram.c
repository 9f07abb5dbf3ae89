/* SPDX-License-Identifier: MIT */
/*
 * The guest RAM block table of a migration object.
 */
#include <stdlib.h>
#include <string.h>

#include "core/migration.h"
#include "core/util.h"

#define PAGE_SIZE_MIN 4096ull
#define PAGE_SIZE_MAX (1ull << 30)

int mfd_ram_block_add(mfd_migration *m, const char *name, void *host, uint64_t size,
		      uint64_t page_size, mfd_error **errp)
{
	struct mfd_ram_block *b;
	size_t len;

	if (!m || !name)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_ram_block_add: NULL argument");
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "RAM block '%s': a migration is running",
				     name);
	len = strlen(name);
	if (len == 0 || len > 255)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block name must be 1 to 255 bytes, '%.40s%s' has %zu", name,
				     len > 40 ? "..." : "", len);
	if (!host)
		return mfd_error_set(errp, MFD_EINVAL, "RAM block '%s': host pointer is NULL", name);
	if (page_size < PAGE_SIZE_MIN || page_size > PAGE_SIZE_MAX ||
	    (page_size & (page_size - 1)))
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': page size %llu is not a power of two from "
				     "4096 to 1 GiB", name, (unsigned long long)page_size);
	if (size == 0 || size % page_size)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': size %llu is not a non-zero multiple of the "
				     "page size %llu", name, (unsigned long long)size,
				     (unsigned long long)page_size);
	if ((uintptr_t)host % PAGE_SIZE_MIN)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': host address %p is not 4 KiB aligned", name,
				     host);
	for (unsigned i = 0; i < m->nblocks; i++)
		if (strcmp(m->blocks[i].name, name) == 0)
			return mfd_error_set(errp, MFD_EEXIST, "RAM block '%s' is already registered",
					     name);
	if (m->nblocks >= MFD_RAM_BLOCKS_MAX)
		return mfd_error_set(errp, MFD_ETOOBIG, "RAM block '%s': already %d blocks, the "
				     "limit", name, MFD_RAM_BLOCKS_MAX);
	b = realloc(m->blocks, (m->nblocks + 1) * sizeof(*b));
	if (!b)
		return mfd_error_set(errp, MFD_ENOMEM, "RAM block '%s': out of memory", name);
	m->blocks = b;
	b = &m->blocks[m->nblocks++];
	memset(b, 0, sizeof(*b));
	memcpy(b->name, name, len + 1);
	b->host = host;
	b->size = size;
	b->page_size = page_size;
	b->page_shift = (unsigned)__builtin_ctzll(page_size);
	return 0;
}

int mfd_ram_block_remove(mfd_migration *m, const char *name)
{
	if (!m || !name)
		return MFD_EINVAL;
	if (m->busy)
		return MFD_ESTATE;
	for (unsigned i = 0; i < m->nblocks; i++) {
		if (strcmp(m->blocks[i].name, name) != 0)
			continue;
		memmove(&m->blocks[i], &m->blocks[i + 1],
			(m->nblocks - i - 1) * sizeof(m->blocks[0]));
		m->nblocks--;
		return 0;
	}
	return MFD_ENOENT;
}
