/* SPDX-License-Identifier: MIT */
/*
 * Size-versioned structs the caller fills and the library copies (docs/abi.md,
 * "Structures"): one rule for every such table, in one place.
 */
#include <string.h>

#include "core/util.h"

/* Above any table of callbacks there will ever be: an uninitialized size is
 * refused instead of scanned for zeros. */
#define UTIL_STRUCT_MAX 65536u

int util_struct_in(void *dst, size_t dst_size, const void *src, size_t first_size,
		   const char *fn, const char *what, mfd_error **errp)
{
	const unsigned char *p = src;
	uint32_t size;

	memset(dst, 0, dst_size);
	if (!src)
		return mfd_error_set(errp, MFD_EINVAL, "%s: NULL struct %s", fn, what);
	memcpy(&size, src, sizeof(size));
	if (size > UTIL_STRUCT_MAX)
		return mfd_error_set(errp, MFD_EINVAL,
				     "%s: struct %s of %u bytes is not a plausible size (at most "
				     "%u); set size = sizeof(struct %s)",
				     fn, what, size, UTIL_STRUCT_MAX, what);
	/* Members the caller's build lacks stay 0 (NULL). */
	memcpy(dst, src, MFD_MIN((size_t)size, dst_size));
	if (size < first_size)
		return mfd_error_set(errp, MFD_EINVAL,
				     "%s: struct %s of %u bytes is smaller than its first layout "
				     "(%zu bytes); set size = sizeof(struct %s) (%zu bytes in "
				     "this library)",
				     fn, what, size, first_size, what, dst_size);
	/* A newer program on an older library: fine as long as it leaves every
	 * member this library does not know at 0. */
	for (size_t off = dst_size; off < size; off++)
		if (p[off])
			return mfd_error_set(errp, MFD_ENOTSUP,
					     "%s: struct %s of %u bytes sets a member this "
					     "library does not know (non-zero byte at offset %zu; "
					     "this library knows %zu bytes): the program was "
					     "built for a newer libmultifd",
					     fn, what, size, off, dst_size);
	return 0;
}
