/* SPDX-License-Identifier: MIT */
/*
 * The guest's vCPUs: threads writing guest RAM at a set rate while it
 * migrates, and telling the library's built-in dirty tracker about it.
 *
 * Each thread owns one slice of RAM and increments the first byte of its
 * pages in order, wrapping around (QEMU's "a-b" test workload).  Its next
 * page and pass count live in the "cpu" device state, so at switchover the
 * destination must hold, for every page, exactly the byte that position
 * implies: RAM and device state have to be consistent, not just complete.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "cli.h"

void dirty_range(const struct guest *g, unsigned t, uint64_t *first, uint64_t *end)
{
	uint64_t n = guest_pages(g);

	*first = n * t / DIRTY_THREADS;
	*end = n * (t + 1) / DIRTY_THREADS;
}

enum { RUN, RESUMED, QUIT };

/* Between two page writes: the only place a thread may stop, so a paused
 * guest never has a page written but not yet marked dirty. */
static int dirty_checkpoint(struct dirtier *d)
{
	int ret = RUN;

	if (!__atomic_load_n(&d->pause_req, __ATOMIC_ACQUIRE) &&
	    !__atomic_load_n(&d->quit, __ATOMIC_ACQUIRE))
		return RUN;
	pthread_mutex_lock(&d->lock);
	if (d->pause_req && !d->quit) {
		d->npaused++;
		pthread_cond_broadcast(&d->cond);
		while (d->pause_req && !d->quit)
			pthread_cond_wait(&d->cond, &d->lock);
		d->npaused--;
		ret = RESUMED;
	}
	if (d->quit)
		ret = QUIT;
	pthread_mutex_unlock(&d->lock);
	return ret;
}

static void dirty_one(struct dirty_thread *t)
{
	struct dirtier *d = t->d;
	uint64_t *pos = &d->g->cpu.regs[2 * t->index];
	uint64_t *pass = &d->g->cpu.regs[2 * t->index + 1];
	uint8_t *page = d->g->ram + *pos * GUEST_PAGE;

	/* Relaxed atomics: the library's sender threads read these pages
	 * concurrently, which is what live migration is about. */
	__atomic_store_n(page, (uint8_t)(__atomic_load_n(page, __ATOMIC_RELAXED) + 1),
			 __ATOMIC_RELAXED);
	mfd_ram_mark_dirty(d->m, page, 1);
	if (++*pos == t->end) {
		*pos = t->first;
		++*pass;
	}
}

static void *dirty_main(void *arg)
{
	struct dirty_thread *t = arg;
	struct dirtier *d = t->d;
	const struct timespec tick = { 0, 1000000 };
	double base = now_s();
	uint64_t done = 0;
	int throttle = 0;

	for (;;) {
		int state = dirty_checkpoint(d);
		int pct = __atomic_load_n(&d->throttle, __ATOMIC_RELAXED);
		uint64_t due;

		if (state == QUIT)
			break;
		if (state == RESUMED || pct != throttle) {
			/* Paced from the resume or the new speed on: no burst to catch up. */
			base = now_s();
			done = 0;
			throttle = pct;
		}
		due = (uint64_t)((now_s() - base) * d->pages_per_s * (100 - throttle) / 100);
		if (due <= done) {
			nanosleep(&tick, NULL);
			continue;
		}
		/* At most 256 pages between checkpoints keeps vm_stop quick. */
		for (uint64_t i = 0; i < due - done && i < 256; i++)
			dirty_one(t);
		done += due - done < 256 ? due - done : 256;
	}
	return NULL;
}

int dirtier_start(struct dirtier *d, struct guest *g, mfd_migration *m, double mib_per_s)
{
	memset(d, 0, sizeof(*d));
	d->g = g;
	d->m = m;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	if (mib_per_s <= 0)
		return 0;
	d->pages_per_s = mib_per_s * (1 << 20) / GUEST_PAGE / DIRTY_THREADS;
	for (unsigned i = 0; i < DIRTY_THREADS; i++) {
		struct dirty_thread *t = &d->t[i];

		t->d = d;
		t->index = i;
		dirty_range(g, i, &t->first, &t->end);
		if (t->first == t->end)
			continue;	/* a guest of one page */
		/* On failure the caller's dirtier_stop() ends those already running. */
		if (pthread_create(&t->tid, NULL, dirty_main, t) != 0)
			return -EAGAIN;
		t->running = true;
		d->nthreads++;
	}
	return 0;
}

void dirtier_pause(struct dirtier *d)
{
	pthread_mutex_lock(&d->lock);
	__atomic_store_n(&d->pause_req, true, __ATOMIC_RELEASE);
	while (d->npaused < d->nthreads && !d->quit)
		pthread_cond_wait(&d->cond, &d->lock);
	d->stopped_at = now_s();
	pthread_mutex_unlock(&d->lock);
}

void dirtier_resume(struct dirtier *d)
{
	pthread_mutex_lock(&d->lock);
	__atomic_store_n(&d->pause_req, false, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

void dirtier_stop(struct dirtier *d)
{
	pthread_mutex_lock(&d->lock);
	__atomic_store_n(&d->quit, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	for (unsigned i = 0; i < DIRTY_THREADS; i++)
		if (d->t[i].running)
			pthread_join(d->t[i].tid, NULL);
	d->nthreads = 0;
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
}

void dirtier_throttle(struct dirtier *d, int percent)
{
	if (percent < 0)
		percent = 0;
	if (percent > 99)
		percent = 99;
	__atomic_store_n(&d->throttle, percent, __ATOMIC_RELAXED);
}
