/* SPDX-License-Identifier: MIT */
/*
 * Logging through a caller-installed callback; the library never prints.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "core/util.h"

/* The handler triple changes rarely and is read on every message: a lock
 * keeps the triple consistent, the atomic level lets disabled messages skip
 * the lock and the formatting entirely. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static mfd_log_fn log_fn;
static void *log_opaque;
static _Atomic int log_max_level = -1;

void mfd_log_set_handler(mfd_log_fn fn, void *opaque, enum mfd_log_level max_level)
{
	pthread_mutex_lock(&log_lock);
	log_fn = fn;
	log_opaque = opaque;
	atomic_store(&log_max_level, fn ? (int)max_level : -1);
	pthread_mutex_unlock(&log_lock);
}

static _Thread_local struct log_route *thread_route;

void log_route_init(struct log_route *r, mfd_migration *m)
{
	pthread_mutex_init(&r->lock, NULL);
	r->fn = NULL;
	r->opaque = NULL;
	atomic_init(&r->max_level, -1);
	r->m = m;
}

void log_route_destroy(struct log_route *r)
{
	pthread_mutex_destroy(&r->lock);
}

int log_route_set(struct log_route *r, mfd_migration_log_fn fn, void *opaque, int max_level)
{
	if (fn && (max_level < MFD_LOG_ERROR || max_level > MFD_LOG_DEBUG))
		return MFD_EINVAL;
	pthread_mutex_lock(&r->lock);
	r->fn = fn;
	r->opaque = opaque;
	atomic_store(&r->max_level, fn ? max_level : -1);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

struct log_route *log_route_enter(struct log_route *r)
{
	struct log_route *prev = thread_route;

	thread_route = r;
	return prev;
}

/* The route a message of the calling thread takes, or NULL for the
 * process-wide handler. */
static struct log_route *route_now(void)
{
	struct log_route *r = thread_route;

	return r && atomic_load_explicit(&r->max_level, memory_order_relaxed) >= 0 ? r : NULL;
}

int log_enabled(enum mfd_log_level level)
{
	struct log_route *r = route_now();

	if (r)
		return (int)level <= atomic_load_explicit(&r->max_level, memory_order_relaxed);
	return (int)level <= atomic_load_explicit(&log_max_level, memory_order_relaxed);
}

void log_emit(enum mfd_log_level level, const char *fmt, ...)
{
	char buf[512], *msg = buf, *big = NULL;
	va_list ap;
	int n;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf)) {
		/* Long messages are rare; format them again, whole. */
		va_start(ap, fmt);
		if (vasprintf(&big, fmt, ap) >= 0)
			msg = big;
		else
			big = NULL;
		va_end(ap);
	}
	struct log_route *r = route_now();

	if (r) {
		pthread_mutex_lock(&r->lock);
		if (r->fn && (int)level <= atomic_load(&r->max_level))
			r->fn(r->m, (int)level, msg, r->opaque);
		pthread_mutex_unlock(&r->lock);
		free(big);
		return;
	}
	pthread_mutex_lock(&log_lock);
	if (log_fn && (int)level <= atomic_load(&log_max_level))
		log_fn(level, msg, log_opaque);
	pthread_mutex_unlock(&log_lock);
	free(big);
}

/* mfd_thread_hooks_set(): a copy, taken by each thread as it starts. */
static pthread_mutex_t thread_hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mfd_thread_hooks thread_hooks;
static void *thread_hooks_opaque;

int mfd_thread_hooks_set(const struct mfd_thread_hooks *hooks, void *opaque, mfd_error **errp)
{
	struct mfd_thread_hooks h = { 0 };
	int r;

	if (hooks) {
		r = util_struct_in(&h, sizeof(h), hooks,
				   MFD_OFFSETOF_END(struct mfd_thread_hooks, thread_start),
				   "mfd_thread_hooks_set", "mfd_thread_hooks", errp);
		if (r < 0)
			return r;
	}
	h.size = sizeof(h);
	pthread_mutex_lock(&thread_hooks_lock);
	thread_hooks = h;
	thread_hooks_opaque = hooks ? opaque : NULL;
	pthread_mutex_unlock(&thread_hooks_lock);
	return 0;
}

struct thread_start {
	void *(*fn)(void *);
	void *arg;
	struct log_route *route;	/* the creator's */
	char name[16];
};

static void *thread_trampoline(void *p)
{
	struct thread_start ts = *(struct thread_start *)p;
	struct mfd_thread_hooks h;
	void *opaque, *r;

	free(p);
	thread_route = ts.route;
	(void)prctl(PR_SET_NAME, ts.name, 0, 0, 0);	/* a courtesy: ignore failure */
	pthread_mutex_lock(&thread_hooks_lock);
	h = thread_hooks;
	opaque = thread_hooks_opaque;
	pthread_mutex_unlock(&thread_hooks_lock);
	if (h.thread_start)
		h.thread_start(opaque, ts.name);
	r = ts.fn(ts.arg);
	if (h.thread_exit)
		h.thread_exit(opaque, ts.name);
	return r;
}

int util_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *fmt, ...)
{
	struct thread_start *ts = malloc(sizeof(*ts));
	va_list ap;
	int r;

	if (!ts)
		return ENOMEM;
	ts->fn = fn;
	ts->arg = arg;
	ts->route = thread_route;
	va_start(ap, fmt);
	vsnprintf(ts->name, sizeof(ts->name), fmt, ap);
	va_end(ap);
	r = pthread_create(t, NULL, thread_trampoline, ts);
	if (r != 0)
		free(ts);
	return r;
}

void util_thread_name(const char *fmt, ...)
{
	char name[16];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	(void)prctl(PR_SET_NAME, name, 0, 0, 0);	/* a name is a courtesy: ignore failure */
}
