/* SPDX-License-Identifier: MIT */
/*
 * The process-wide registry of compression codecs.  The built-ins are added
 * on first use; a VMM may add its own (e.g. a hardware codec) at any time.
 * A VMM's table is copied (it is size-versioned: reading it in place could
 * read past an older caller's struct).  Tables are never removed, so a
 * pointer handed out stays valid.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "compress/compress.h"

/* One static const table per file in compress/. */
extern const mfd_compress_ops codec_none;
#if MFD_HAVE_ZLIB
extern const mfd_compress_ops codec_zlib;
#endif
#if MFD_HAVE_ZSTD
extern const mfd_compress_ops codec_zstd;
#endif
#if MFD_HAVE_LZ4
extern const mfd_compress_ops codec_lz4;
#endif

static const mfd_compress_ops *const builtins[] = {
	&codec_none,
#if MFD_HAVE_ZLIB
	&codec_zlib,
#endif
#if MFD_HAVE_ZSTD
	&codec_zstd,
#endif
#if MFD_HAVE_LZ4
	&codec_lz4,
#endif
};

/* Room for the built-ins and a generous number of VMM codecs. */
#define REGISTRY_MAX 32

static pthread_once_t builtins_once = PTHREAD_ONCE_INIT;

/* Protected by registry_lock; entries are only ever appended. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static const mfd_compress_ops *registry[REGISTRY_MAX];
static int registry_len;

/* The copies of the VMM's tables and names that registry[] points to. */
static struct {
	mfd_compress_ops ops;
	char name[MFD_COMPRESS_NAME_MAX + 1];
} copies[REGISTRY_MAX];

/* The first layout of struct mfd_compress_ops ended with recv_cleanup;
 * opaque, appended in the same ABI, is NULL for a table without it. */
#define COMPRESS_OPS_FIRST_SIZE MFD_OFFSETOF_END(mfd_compress_ops, recv_cleanup)

static void register_builtins(void)
{
	pthread_mutex_lock(&registry_lock);
	for (size_t i = 0; i < MFD_ARRAY_SIZE(builtins); i++)
		registry[registry_len++] = builtins[i];
	pthread_mutex_unlock(&registry_lock);
}

/* Caller holds registry_lock. */
static const mfd_compress_ops *find_locked(const char *name)
{
	for (int i = 0; i < registry_len; i++)
		if (strcmp(registry[i]->name, name) == 0)
			return registry[i];
	return NULL;
}

static int valid_name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Copy the caller's table into @out (its own layout, missing members NULL)
 * and check the copy. */
static int copy_in(const mfd_compress_ops *caller, mfd_compress_ops *out, mfd_error **errp)
{
	const mfd_compress_ops *ops = out;
	const char *name;
	size_t len;
	int r;

	if (!caller)
		return mfd_error_set(errp, MFD_EINVAL, "compression codec: the ops table is NULL");
	r = util_struct_in(out, sizeof(*out), caller, COMPRESS_OPS_FIRST_SIZE,
			   "compression codec", "mfd_compress_ops", errp);
	if (r < 0)
		return r;
	out->size = sizeof(*out);
	name = ops->name;
	if (!name)
		return mfd_error_set(errp, MFD_EINVAL, "compression codec: name is NULL");
	len = strnlen(name, MFD_COMPRESS_NAME_MAX + 1);
	if (len == 0)
		return mfd_error_set(errp, MFD_EINVAL, "compression codec: name is empty");
	if (len > MFD_COMPRESS_NAME_MAX)
		return mfd_error_set(errp, MFD_EINVAL,
				     "compression codec name '%.*s...' is longer than %d bytes",
				     MFD_COMPRESS_NAME_MAX, name, MFD_COMPRESS_NAME_MAX);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (valid_name_char(c))
			continue;
		if (c >= 0x20 && c < 0x7f)
			return mfd_error_set(errp, MFD_EINVAL,
					     "compression codec name '%s': character '%c' at "
					     "offset %zu is not one of a-z 0-9 _ -",
					     name, c, i);
		return mfd_error_set(errp, MFD_EINVAL,
				     "compression codec name: byte 0x%02x at offset %zu is not "
				     "one of a-z 0-9 _ -",
				     c, i);
	}

#define REQUIRE(member)                                                              \
	do {                                                                         \
		if (!ops->member)                                                    \
			return mfd_error_set(errp, MFD_EINVAL,                       \
					     "compression codec '%s': " #member " is " \
					     "missing (NULL)",                       \
					     name);                                  \
	} while (0)
	REQUIRE(bound);
	REQUIRE(send_setup);
	REQUIRE(send_prepare);
	REQUIRE(send_cleanup);
	REQUIRE(recv_setup);
	REQUIRE(recv);
	REQUIRE(recv_cleanup);
#undef REQUIRE

	if (ops->level_min > ops->level_default || ops->level_default > ops->level_max)
		return mfd_error_set(errp, MFD_EINVAL,
				     "compression codec '%s': levels must satisfy level_min <= "
				     "level_default <= level_max, got %d, %d, %d",
				     name, ops->level_min, ops->level_default, ops->level_max);
	return 0;
}

int compress_validate(const mfd_compress_ops *ops, mfd_error **errp)
{
	mfd_compress_ops copy;

	return copy_in(ops, &copy, errp);
}

int mfd_compress_register(const mfd_compress_ops *caller, mfd_error **errp)
{
	mfd_compress_ops ops;
	int ret;

	ret = copy_in(caller, &ops, errp);
	if (ret < 0)
		return ret;
	pthread_once(&builtins_once, register_builtins);
	pthread_mutex_lock(&registry_lock);
	if (find_locked(ops.name)) {
		ret = mfd_error_set(errp, MFD_EEXIST, "compression codec '%s' is already registered",
				    ops.name);
	} else if (registry_len == REGISTRY_MAX) {
		ret = mfd_error_set(errp, MFD_ETOOBIG,
				    "compression codec '%s': the registry is full (%d codecs)",
				    ops.name, REGISTRY_MAX);
	} else {
		/* copy_in() checked the name's length. */
		strcpy(copies[registry_len].name, ops.name);
		ops.name = copies[registry_len].name;
		copies[registry_len].ops = ops;
		registry[registry_len] = &copies[registry_len].ops;
		registry_len++;
	}
	pthread_mutex_unlock(&registry_lock);
	if (ret == 0)
		log_debug("compression codec '%s' registered (levels %d..%d, default %d)",
			      ops.name, ops.level_min, ops.level_max, ops.level_default);
	return ret;
}

const mfd_compress_ops *mfd_compress_find(const char *name)
{
	const mfd_compress_ops *ops;

	if (!name)
		return NULL;
	pthread_once(&builtins_once, register_builtins);
	pthread_mutex_lock(&registry_lock);
	ops = find_locked(name);
	pthread_mutex_unlock(&registry_lock);
	return ops;
}

int mfd_compress_list(const char **names, int max)
{
	int count;

	pthread_once(&builtins_once, register_builtins);
	pthread_mutex_lock(&registry_lock);
	count = registry_len;
	for (int i = 0; names && i < count && i < max; i++)
		names[i] = registry[i]->name;
	pthread_mutex_unlock(&registry_lock);
	return count;
}

const mfd_compress_ops *compress_lookup(const char *name, mfd_error **errp)
{
	const mfd_compress_ops *ops = mfd_compress_find(name);
	char known[REGISTRY_MAX * (MFD_COMPRESS_NAME_MAX + 2)] = "";
	size_t used = 0;

	if (ops)
		return ops;
	pthread_once(&builtins_once, register_builtins);
	pthread_mutex_lock(&registry_lock);
	for (int i = 0; i < registry_len; i++) {
		int w = snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
				 registry[i]->name);

		if (w > 0)
			used += MFD_MIN((size_t)w, sizeof(known) - 1 - used);
	}
	pthread_mutex_unlock(&registry_lock);
	mfd_error_set(errp, MFD_ENOENT, "unknown compression method '%.64s' (known: %s)",
		      name ? name : "(null)", known);
	return NULL;
}

int compress_check_level(const mfd_compress_ops *ops, int level, mfd_error **errp)
{
	if (level < ops->level_min || level > ops->level_max)
		return mfd_error_set(errp, MFD_EINVAL, "%s: level %d is outside %d..%d", ops->name,
				     level, ops->level_min, ops->level_max);
	return 0;
}

int compress_check_payload(const mfd_compress_ops *ops, size_t payload_len,
			       size_t packet_len, mfd_error **errp)
{
	size_t bound = ops->bound(packet_len);

	if (payload_len > bound)
		return mfd_error_set(errp, MFD_EPROTO,
				     "%s: payload of %zu bytes is beyond the codec's bound of %zu "
				     "bytes for a %zu-byte packet",
				     ops->name, payload_len, bound, packet_len);
	return 0;
}

/*
 * Turn a codec's failure into one the library can pass on: a code of enum
 * mfd_errcode and a message, whatever the codec returned or forgot to set.
 */
static int codec_failure(const mfd_compress_ops *ops, const char *what, int ret,
			 mfd_error *err, mfd_error **errp)
{
	int code;

	if (!err)
		mfd_error_set(&err, MFD_EHANDLER, "%s: %s failed with code %d and no message",
			      ops->name, what, ret);
	code = error_normalize(err);
	error_propagate(errp, err);
	return code;
}

int compress_send(const mfd_compress_ops *ops, void *ctx, const void *in, size_t in_len,
		      void *out, size_t out_cap, size_t *out_len, mfd_error **errp)
{
	mfd_error *err = NULL;
	size_t len = 0;
	int ret = ops->send_prepare(ctx, in, in_len, out, out_cap, &len, &err);

	if (ret != 0)
		return codec_failure(ops, "send_prepare", ret, err, errp);
	mfd_error_free(err);
	if (len > out_cap)
		return mfd_error_set(errp, MFD_EHANDLER,
				     "%s: send_prepare reported %zu bytes of output in a %zu-byte "
				     "buffer",
				     ops->name, len, out_cap);
	*out_len = len;
	return 0;
}

int compress_recv(const mfd_compress_ops *ops, void *ctx, const void *in, size_t in_len,
		      const struct iovec *out, int n, mfd_error **errp)
{
	mfd_error *err = NULL;
	int ret = ops->recv(ctx, in, in_len, out, n, &err);

	if (ret != 0)
		return codec_failure(ops, "recv", ret, err, errp);
	mfd_error_free(err);
	return 0;
}
