/* SPDX-License-Identifier: MIT */
/*
 * Internal helpers shared by every module: logging, allocation, byte order.
 */
#ifndef MFD_CORE_UTIL_H
#define MFD_CORE_UTIL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <multifd/multifd.h>

#define MFD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MFD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MFD_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MFD_UNUSED __attribute__((unused))
#define MFD_LIKELY(x) __builtin_expect(!!(x), 1)
#define MFD_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Name the calling thread (at most 15 characters are kept), so that top -H,
 * perf and gdb tell the library's threads apart inside the VMM. */
void util_thread_name(const char *fmt, ...) MFD_PRINTF(1, 2);

/* pthread_create() for every thread of the library: the thread is named
 * @name (15 characters kept) and runs the VMM's thread hooks
 * (mfd_thread_hooks_set()) around @fn.  Returns 0 or an errno value. */
int util_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *fmt, ...)
	MFD_PRINTF(4, 5);

/*
 * One migration object's log route (mfd_migration_set_log_handler()).  A
 * thread works for at most one object: it carries a pointer to the route
 * (thread-local), inherited by the threads it starts (util_thread_start()),
 * so the migration thread and everything it starts log to its object's
 * handler.  The route must outlive those threads.
 */
struct log_route {
	pthread_mutex_t lock;		/* serializes the calls, guards fn/opaque */
	mfd_migration_log_fn fn;
	void *opaque;
	_Atomic int max_level;		/* -1: no handler here, the process-wide one */
	mfd_migration *m;
};
void log_route_init(struct log_route *r, mfd_migration *m);
void log_route_destroy(struct log_route *r);
int log_route_set(struct log_route *r, mfd_migration_log_fn fn, void *opaque, int max_level);
/* The calling thread works for @r's object from now on (NULL: for none);
 * returns the route it had, to give back to log_route_enter() after. */
struct log_route *log_route_enter(struct log_route *r);

/* Log through the calling thread's route, else the handler installed with
 * mfd_log_set_handler(). */
void log_emit(enum mfd_log_level level, const char *fmt, ...) MFD_PRINTF(2, 3);
/* True when a message at this level would reach a handler. */
int log_enabled(enum mfd_log_level level);

#define log_error(...) log_emit(MFD_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_emit(MFD_LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_emit(MFD_LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_emit(MFD_LOG_DEBUG, __VA_ARGS__)

int error_setv(mfd_error **errp, int code, const char *fmt, va_list ap);
/* Like mfd_error_set() with ": <strerror(errnum)>" appended. */
int error_set_errno(mfd_error **errp, int code, int errnum, const char *fmt, ...)
	MFD_PRINTF(4, 5);
/* Move *src into *dst (first error wins), leaving *src NULL. */
void error_propagate(mfd_error **dst, mfd_error *src);
mfd_error *error_copy(const mfd_error *err);
/* Map a code outside enum mfd_errcode (e.g. a handler's -errno) to
 * MFD_EHANDLER, keeping the message; returns the resulting code. */
int error_normalize(mfd_error *err);

/* A failure code a handler, a codec or the peer may report: negative, in
 * enum mfd_errcode, and not MFD_ERUNNING, which only mfd_migration_wait()
 * returns (and which a handler's -EINVAL would otherwise pass for). */
static inline int error_code_is_failure(int code)
{
	return code < 0 && code >= MFD_ERRCODE_MIN && code != MFD_ERUNNING;
}

char *util_strdup(const char *s);

/* The offset just past @member: a struct's size when @member was its last. */
#define MFD_OFFSETOF_END(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

/*
 * Copy a size-versioned struct of the caller (its first member the uint32_t
 * size it was built with) into the library's own @dst of @dst_size bytes,
 * the rule of docs/abi.md for every such struct: @dst is zeroed and gets
 * min(size, @dst_size) bytes, so members the caller's layout lacks read as
 * 0/NULL.  A size below @first_size (the struct's first layout) is
 * MFD_EINVAL naming both sizes; a size beyond @dst_size (a newer program) is
 * accepted only when every byte past @dst_size is zero, else MFD_ENOTSUP
 * with the offset of the first non-zero one.  @fn and @what (the struct's
 * name without "struct ") prefix the messages.  @dst holds the copy even
 * when the check fails, for a caller that must take what the struct holds.
 */
int util_struct_in(void *dst, size_t dst_size, const void *src, size_t first_size,
		   const char *fn, const char *what, mfd_error **errp);

/* Monotonic nanoseconds, for durations and rates. */
static inline uint64_t util_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint16_t load_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t load_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t load_be64(const uint8_t *p)
{
	return ((uint64_t)load_be32(p) << 32) | load_be32(p + 4);
}

static inline void store_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
	store_be32(p, (uint32_t)(v >> 32));
	store_be32(p + 4, (uint32_t)v);
}

#endif /* MFD_CORE_UTIL_H */
