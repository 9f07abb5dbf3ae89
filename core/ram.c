/* SPDX-License-Identifier: MIT */
/*
 * The guest RAM block table of a migration object: registration from a
 * descriptor, hot-plug between migrations, absent (discarded) ranges.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/migration.h"
#include "core/util.h"

#define PAGE_SIZE_MIN 4096ull
#define PAGE_SIZE_MAX (1ull << 30)

/* The first layout of struct mfd_ram_block_desc ends after @cookie. */
#define DESC_SIZE_V1 MFD_OFFSETOF_END(struct mfd_ram_block_desc, cookie)

static bool pow2_in(uint64_t v, uint64_t lo, uint64_t hi)
{
	return v >= lo && v <= hi && !(v & (v - 1));
}

int mfd_ram_block_register(mfd_migration *m, const struct mfd_ram_block_desc *desc,
			   mfd_error **errp)
{
	struct mfd_ram_block_desc d;
	struct mfd_ram_block *b;
	const char *name;
	size_t len;
	int r;

	if (!m || !desc)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_ram_block_register: NULL argument");
	if ((r = util_struct_in(&d, sizeof(d), desc, DESC_SIZE_V1, "mfd_ram_block_register",
				"mfd_ram_block_desc", errp)) < 0)
		return r;
	name = d.name;
	if (!name)
		return mfd_error_set(errp, MFD_EINVAL, "RAM block: the name is NULL");
	if (!migration_table_open(m))
		return mfd_error_set(errp, MFD_ESTATE, "RAM block '%s': a migration is running; "
				     "blocks are added and removed between migrations", name);
	len = strlen(name);
	if (len == 0 || len > 255)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block name must be 1 to 255 bytes, '%.40s%s' has %zu", name,
				     len > 40 ? "..." : "", len);
	if (d.flags & ~(uint32_t)(MFD_RAM_SHARED | MFD_RAM_FRESH))
		return mfd_error_set(errp, MFD_EINVAL, "RAM block '%s': unknown flags 0x%x", name,
				     d.flags & ~(uint32_t)(MFD_RAM_SHARED | MFD_RAM_FRESH));
	if (!d.host)
		return mfd_error_set(errp, MFD_EINVAL, "RAM block '%s': host pointer is NULL", name);
	if (!pow2_in(d.page_size, PAGE_SIZE_MIN, PAGE_SIZE_MAX))
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': page size %llu is not a power of two from "
				     "4096 to 1 GiB", name, (unsigned long long)d.page_size);
	if (d.length == 0 || d.length % d.page_size)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': length %llu is not a non-zero multiple of the "
				     "page size %llu", name, (unsigned long long)d.length,
				     (unsigned long long)d.page_size);
	if (d.dirty_granularity == 0)
		d.dirty_granularity = d.page_size;
	if (!pow2_in(d.dirty_granularity, PAGE_SIZE_MIN, PAGE_SIZE_MAX))
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': dirty granularity %llu is not 0 or a power of "
				     "two from 4096 to 1 GiB", name,
				     (unsigned long long)d.dirty_granularity);
	if ((uintptr_t)d.host % PAGE_SIZE_MIN)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': host address %p is not 4 KiB aligned", name,
				     d.host);
	if ((uintptr_t)d.host > UINTPTR_MAX - d.length)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': %p + %llu bytes wraps the address space", name,
				     d.host, (unsigned long long)d.length);
	if (d.fd < -1)
		return mfd_error_set(errp, MFD_EINVAL, "RAM block '%s': fd %d (use -1 for none)",
				     name, d.fd);
	if (d.fd >= 0 && d.fd_offset % d.page_size)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': fd offset %llu is not a multiple of the page "
				     "size %llu", name, (unsigned long long)d.fd_offset,
				     (unsigned long long)d.page_size);
	if (d.fd < 0 && d.fd_offset)
		return mfd_error_set(errp, MFD_EINVAL,
				     "RAM block '%s': an fd offset without an fd", name);
	for (unsigned i = 0; i < m->nblocks; i++) {
		const struct mfd_ram_block *o = &m->blocks[i];

		if (strcmp(o->name, name) == 0)
			return mfd_error_set(errp, MFD_EEXIST, "RAM block '%s' is already registered",
					     name);
		if ((uint8_t *)d.host < o->host + o->size && o->host < (uint8_t *)d.host + d.length)
			return mfd_error_set(errp, MFD_EINVAL,
					     "RAM block '%s' overlaps block '%s' in this process's "
					     "memory", name, o->name);
	}
	if (m->nblocks >= MFD_RAM_BLOCKS_MAX)
		return mfd_error_set(errp, MFD_ETOOBIG, "RAM block '%s': already %d blocks, the "
				     "limit", name, MFD_RAM_BLOCKS_MAX);
	b = realloc(m->blocks, (m->nblocks + 1) * sizeof(*b));
	if (!b)
		return mfd_error_set(errp, MFD_ENOMEM, "RAM block '%s': out of memory", name);
	m->blocks = b;
	b = &m->blocks[m->nblocks];
	memset(b, 0, sizeof(*b));
	memcpy(b->name, name, len + 1);
	b->host = d.host;
	b->size = d.length;
	b->page_size = d.page_size;
	b->page_shift = (unsigned)__builtin_ctzll(d.page_size);
	b->dirty_shift = (unsigned)__builtin_ctzll(d.dirty_granularity);
	b->flags = d.flags;
	b->fd = d.fd;
	b->fd_offset = d.fd_offset;
	b->cookie = d.cookie;
	return (int)m->nblocks++;
}

int mfd_ram_block_add(mfd_migration *m, const char *name, void *host, uint64_t size,
		      uint64_t page_size, mfd_error **errp)
{
	struct mfd_ram_block_desc d = {
		.size = sizeof(d), .name = name, .host = host, .length = size,
		.page_size = page_size, .fd = -1,
	};

	if (!name)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_ram_block_add: NULL argument");
	int r = mfd_ram_block_register(m, &d, errp);

	return r < 0 ? r : 0;
}

int mfd_ram_block_remove(mfd_migration *m, const char *name)
{
	if (!m || !name)
		return MFD_EINVAL;
	if (!migration_table_open(m))
		return MFD_ESTATE;
	for (unsigned i = 0; i < m->nblocks; i++) {
		if (strcmp(m->blocks[i].name, name) != 0)
			continue;
		free(m->blocks[i].absent);
		memmove(&m->blocks[i], &m->blocks[i + 1],
			(m->nblocks - i - 1) * sizeof(m->blocks[0]));
		m->nblocks--;
		return 0;
	}
	return MFD_ENOENT;
}

void ram_blocks_free(mfd_migration *m)
{
	for (unsigned i = 0; i < m->nblocks; i++)
		free(m->blocks[i].absent);
	free(m->blocks);
	m->blocks = NULL;
	m->nblocks = 0;
}

/* ---- absent ranges ------------------------------------------------------------ */

static int range_args(mfd_migration *m, const char *name, uint64_t off, uint64_t len,
		      const char *fn, struct mfd_ram_block **out, mfd_error **errp)
{
	if (!m || !name)
		return mfd_error_set(errp, MFD_EINVAL, "%s: NULL argument", fn);
	if (!migration_table_open(m))
		return mfd_error_set(errp, MFD_ESTATE, "%s: block '%s': a migration is running",
				     fn, name);
	for (unsigned i = 0; i < m->nblocks; i++) {
		struct mfd_ram_block *b = &m->blocks[i];

		if (strcmp(b->name, name) != 0)
			continue;
		if ((off | len) & (b->page_size - 1) || len == 0 || off >= b->size ||
		    len > b->size - off)
			return mfd_error_set(errp, MFD_EINVAL,
					     "%s: 0x%llx+0x%llx is not whole %llu-byte pages inside "
					     "block '%s' (%llu bytes)", fn, (unsigned long long)off,
					     (unsigned long long)len,
					     (unsigned long long)b->page_size, name,
					     (unsigned long long)b->size);
		*out = b;
		return 0;
	}
	return mfd_error_set(errp, MFD_ENOENT, "%s: no RAM block '%s'", fn, name);
}

/* Set [@off, @off + @len) of @b absent (@absent) or present, keeping the
 * ranges sorted, disjoint and merged. */
static int range_update(struct mfd_ram_block *b, uint64_t off, uint64_t len, bool absent,
			mfd_error **errp)
{
	uint64_t end = off + len;
	/* At most one more range than now: a hole punched in one range. */
	struct ram_range *n = malloc((b->nabsent + 1) * sizeof(*n));
	unsigned k = 0;
	bool placed = false;

	if (!n)
		return mfd_error_set(errp, MFD_ENOMEM, "RAM block '%s': out of memory for ranges",
				     b->name);
	for (unsigned i = 0; i < b->nabsent; i++) {
		struct ram_range r = b->absent[i];
		uint64_t rend = r.start + r.len;

		if (absent) {
			if (rend < off || r.start > end) {	/* apart, not even touching */
				if (!placed && r.start > end) {
					n[k++] = (struct ram_range){ off, end - off };
					placed = true;
				}
				n[k++] = r;
			} else {			/* merge into the new range */
				off = MFD_MIN(off, r.start);
				end = MFD_MAX(end, rend);
			}
		} else {
			if (rend <= off || r.start >= end) {
				n[k++] = r;
				continue;
			}
			if (r.start < off)
				n[k++] = (struct ram_range){ r.start, off - r.start };
			if (rend > end)
				n[k++] = (struct ram_range){ end, rend - end };
		}
	}
	if (absent && !placed)
		n[k++] = (struct ram_range){ off, end - off };
	free(b->absent);
	b->absent = n;
	b->nabsent = k;
	return 0;
}

int mfd_ram_discard(mfd_migration *m, const char *name, uint64_t offset, uint64_t length,
		    mfd_error **errp)
{
	struct mfd_ram_block *b;
	int r = range_args(m, name, offset, length, "mfd_ram_discard", &b, errp);

	return r < 0 ? r : range_update(b, offset, length, true, errp);
}

int mfd_ram_populate(mfd_migration *m, const char *name, uint64_t offset, uint64_t length,
		     mfd_error **errp)
{
	struct mfd_ram_block *b;
	int r = range_args(m, name, offset, length, "mfd_ram_populate", &b, errp);

	return r < 0 ? r : range_update(b, offset, length, false, errp);
}

int mfd_ram_block_info(mfd_migration *m, unsigned index, struct mfd_ram_block_desc *desc,
		       uint64_t *absent_bytes)
{
	struct mfd_ram_block_desc d;

	if (!m || !desc || desc->size < DESC_SIZE_V1)
		return MFD_EINVAL;
	if (index >= m->nblocks)
		return MFD_ENOENT;
	const struct mfd_ram_block *b = &m->blocks[index];

	memset(&d, 0, sizeof(d));
	d.size = desc->size;
	d.flags = b->flags;
	d.name = b->name;
	d.host = b->host;
	d.length = b->size;
	d.page_size = b->page_size;
	d.dirty_granularity = 1ull << b->dirty_shift;
	d.fd = b->fd;
	d.fd_offset = b->fd_offset;
	d.cookie = b->cookie;
	memcpy(desc, &d, MFD_MIN((size_t)desc->size, sizeof(d)));
	if (absent_bytes) {
		*absent_bytes = 0;
		for (unsigned i = 0; i < b->nabsent; i++)
			*absent_bytes += b->absent[i].len;
	}
	return 0;
}

int mfd_migration_set_vm_config(mfd_migration *m, const void *config, size_t len,
				mfd_error **errp)
{
	void *copy = NULL;

	if (!m || (!config && len))
		return mfd_error_set(errp, MFD_EINVAL, "mfd_migration_set_vm_config: %s",
				     m ? "NULL configuration with a length" : "NULL object");
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE,
				     "mfd_migration_set_vm_config: a migration is running");
	if (len > MFD_VM_CONFIG_MAX)
		return mfd_error_set(errp, MFD_ETOOBIG, "VM configuration of %zu bytes, at most %u",
				     len, MFD_VM_CONFIG_MAX);
	if (len && !(copy = malloc(len)))
		return mfd_error_set(errp, MFD_ENOMEM, "VM configuration: out of memory");
	if (len)
		memcpy(copy, config, len);
	free(m->vm_config);
	m->vm_config = copy;
	m->vm_config_len = len;
	return 0;
}
