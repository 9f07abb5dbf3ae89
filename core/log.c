/* SPDX-License-Identifier: MIT */
/*
 * Logging through a caller-installed callback; the library never prints.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
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

int log_enabled(enum mfd_log_level level)
{
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
	pthread_mutex_lock(&log_lock);
	if (log_fn && (int)level <= atomic_load(&log_max_level))
		log_fn(level, msg, log_opaque);
	pthread_mutex_unlock(&log_lock);
	free(big);
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
