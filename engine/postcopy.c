/* SPDX-License-Identifier: MIT */
/*
 * Postcopy on the destination: the guest runs before all of its memory has
 * arrived.  Every RAM block is registered with userfaultfd in MISSING mode;
 * a fault thread reads the faults, asks the source for the page over the
 * return path and lets the faulting thread wait.  Pages (requested or pushed
 * in the background) are placed atomically with UFFDIO_COPY or
 * UFFDIO_ZEROPAGE, which wakes whoever waits on them.
 *
 * Two bitmaps per block, set and cleared with atomics because the incoming
 * thread, the preempt thread and the fault thread all use them:
 *   recv  the page is in place (kept from precopy, or placed here); its bit
 *         is set only after the page is really there, so a fault on a page
 *         whose bit is set can only be a precopy zero page that was never
 *         touched: the fault thread maps a zero page itself.
 *   reqd  the page was requested and the request is not answered yet; lets
 *         recovery re-send the requests a broken connection swallowed, and
 *         gives the fault latency (fault read -> page placed).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine/internal.h"
#include "core/util.h"

#define PENDING_MAX 1024	/* faults waiting for a page, with their time */
#define SAMPLES_MAX 65536	/* fault latencies kept for the percentiles */

struct pending_fault {
	uint16_t block;
	uint64_t page;
	uint64_t t_ns;
};

struct pc_dest {
	struct mfd_engine *e;
	int uffd;
	int stop_fd;			/* eventfd: the fault thread leaves */
	pthread_t thread;
	bool thread_started;
	bool registered;
	unsigned nblocks;		/* entries in the three arrays below */
	_Atomic uint64_t **recv;
	_Atomic uint64_t **reqd;
	uint64_t *npages;
	atomic_ullong missing;		/* pages not in place yet */
	uint8_t *zero;			/* a zero page for blocks without ZEROPAGE */
	bool can_zeropage;

	pthread_mutex_t lock;		/* what follows */
	struct pending_fault pending[PENDING_MAX];
	unsigned npending;
	uint32_t *samples;		/* fault latencies in microseconds, a ring */
	uint64_t nsamples;
	uint64_t faults, blocktime_ns, lat_max_ns;
};

static const struct mfd_ram_block *blk(struct pc_dest *d, unsigned b)
{
	return &d->e->m->blocks[b];
}

static bool test_bit(_Atomic uint64_t *bm, uint64_t page)
{
	return atomic_load_explicit(&bm[page / 64], memory_order_acquire) & (1ull << (page % 64));
}

/* Returns whether the bit was clear before. */
static bool set_bit(_Atomic uint64_t *bm, uint64_t page)
{
	uint64_t m = 1ull << (page % 64);

	return !(atomic_fetch_or_explicit(&bm[page / 64], m, memory_order_acq_rel) & m);
}

/* Returns whether the bit was set before. */
static bool clear_bit(_Atomic uint64_t *bm, uint64_t page)
{
	uint64_t m = 1ull << (page % 64);

	return atomic_fetch_and_explicit(&bm[page / 64], ~m, memory_order_acq_rel) & m;
}

static int open_uffd(int *out, uint64_t *ioctls, mfd_error **errp)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0) {
		int err = errno;

		return mfd_error_set(errp, MFD_ENOTSUP,
				     "postcopy-ram: userfaultfd is not available here (%s)%s",
				     strerror(err),
				     err == EPERM ? "; run as root (CAP_SYS_PTRACE) or set "
				     "vm.unprivileged_userfaultfd=1, or turn postcopy-ram off" : "");
	}
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int err = errno;

		close(fd);
		return mfd_error_set(errp, MFD_ENOTSUP, "postcopy-ram: UFFDIO_API failed (%s)",
				     strerror(err));
	}
	*ioctls = api.ioctls;
	*out = fd;
	return 0;
}

int pcd_new(struct mfd_engine *e, mfd_error **errp)
{
	struct pc_dest *d;
	uint64_t ioctls = 0;
	int r;

	if (e->dst.pcd)
		return mfd_error_set(errp, MFD_EPROTO, "postcopy: a second POSTCOPY_ADVISE");
	d = calloc(1, sizeof(*d));
	if (!d)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory");
	d->e = e;
	d->uffd = d->stop_fd = -1;
	pthread_mutex_init(&d->lock, NULL);
	e->dst.pcd = d;
	/* Refuse early, at setup, where the source can still fall back. */
	if ((r = open_uffd(&d->uffd, &ioctls, errp)) < 0)
		return r;
	if (!(ioctls & (1ull << _UFFDIO_REGISTER)))
		return mfd_error_set(errp, MFD_ENOTSUP, "postcopy-ram: userfaultfd cannot register "
				     "ranges on this kernel");
	d->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	d->samples = calloc(SAMPLES_MAX, sizeof(*d->samples));
	e->dst.pc_page = malloc(PC_PAGE_MAX);
	if (d->stop_fd < 0 || !d->samples || !e->dst.pc_page)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory");
	atomic_init(&d->missing, 0);
	/* With vm_create the blocks come later (eng_dest_ram_ready()). */
	return e->dst.ram_ready ? pcd_blocks(e, errp) : 0;
}

int pcd_blocks(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	struct pc_dest *d = e->dst.pcd;

	for (unsigned b = 0; b < m->nblocks; b++)
		if (m->blocks[b].page_size > PC_PAGE_MAX)
			return mfd_error_set(errp, MFD_ENOTSUP,
					     "postcopy-ram: block '%s' has %llu-byte pages; postcopy "
					     "places pages of at most %u bytes", m->blocks[b].name,
					     (unsigned long long)m->blocks[b].page_size, PC_PAGE_MAX);
	d->recv = calloc(m->nblocks ? m->nblocks : 1, sizeof(*d->recv));
	d->reqd = calloc(m->nblocks ? m->nblocks : 1, sizeof(*d->reqd));
	d->npages = calloc(m->nblocks ? m->nblocks : 1, sizeof(*d->npages));
	if (!d->recv || !d->reqd || !d->npages)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory");
	d->nblocks = m->nblocks;
	for (unsigned b = 0; b < m->nblocks; b++) {
		uint64_t n = m->blocks[b].size >> m->blocks[b].page_shift, nw = ramsec_words(n);

		d->npages[b] = n;
		d->recv[b] = malloc(nw * 8);
		d->reqd[b] = calloc(nw, 8);
		if (!d->recv[b] || !d->reqd[b])
			return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory for bitmaps");
		/* Everything precopy delivered is in place; discards take pages back. */
		for (uint64_t w = 0; w < nw; w++)
			atomic_init(&d->recv[b][w], ~0ull);
	}
	return 0;
}

int pcd_discard(struct mfd_engine *e, unsigned b, uint64_t start, uint64_t len, mfd_error **errp)
{
	struct pc_dest *d = e->dst.pcd;
	const struct mfd_ram_block *bk = &e->m->blocks[b];
	uint64_t dropped = 0;

	if (!d || pc_at(e) >= PC_LISTENING)
		return mfd_error_set(errp, MFD_EPROTO, "postcopy: discard %s",
				     d ? "after LISTEN" : "without POSTCOPY_ADVISE");
	if ((start | len) & (bk->page_size - 1) || len == 0 || start >= bk->size ||
	    len > bk->size - start)
		return mfd_error_set(errp, MFD_EPROTO,
				     "postcopy: discard range 0x%llx+0x%llx is not whole pages of "
				     "block '%s' (%llu bytes)", (unsigned long long)start,
				     (unsigned long long)len, bk->name, (unsigned long long)bk->size);
	/* Shared memory keeps its pages in the page cache: MADV_DONTNEED alone would
	 * leave them present (and stale); private anonymous memory refuses
	 * MADV_REMOVE and is emptied by MADV_DONTNEED. */
	if (madvise(bk->host + start, len, MADV_REMOVE) < 0 &&
	    madvise(bk->host + start, len, MADV_DONTNEED) < 0)
		return mfd_error_set(errp, MFD_EIO, "postcopy: cannot drop pages of block '%s' (%s)",
				     bk->name, strerror(errno));
	for (uint64_t p = start >> bk->page_shift; p < (start + len) >> bk->page_shift; p++)
		if (clear_bit(d->recv[b], p))
			dropped++;
	atomic_fetch_add(&d->missing, dropped);
	return 0;
}

/* ---- fault thread ------------------------------------------------------------ */

static void record_latency(struct pc_dest *d, unsigned b, uint64_t page)
{
	uint64_t now = util_now_ns();

	pthread_mutex_lock(&d->lock);
	for (unsigned i = 0; i < d->npending; i++) {
		struct pending_fault *f = &d->pending[i];

		if (f->block != b || f->page != page)
			continue;
		uint64_t ns = now - f->t_ns;

		d->samples[d->nsamples++ % SAMPLES_MAX] = (uint32_t)MFD_MIN(ns / 1000, UINT32_MAX);
		d->blocktime_ns += ns;
		if (ns > d->lat_max_ns)
			d->lat_max_ns = ns;
		*f = d->pending[--d->npending];
		break;
	}
	pthread_mutex_unlock(&d->lock);
}

static void forget_pending(struct pc_dest *d, unsigned b, uint64_t page)
{
	pthread_mutex_lock(&d->lock);
	for (unsigned i = 0; i < d->npending; i++)
		if (d->pending[i].block == b && d->pending[i].page == page) {
			d->pending[i] = d->pending[--d->npending];
			break;
		}
	pthread_mutex_unlock(&d->lock);
}

static int request(struct pc_dest *d, unsigned b, uint64_t page)
{
	uint8_t msg[RP_REQ_PAGES_LEN];
	const struct mfd_ram_block *bk = blk(d, b);

	store_be16(msg, (uint16_t)b);
	store_be16(msg + 2, 0);
	store_be32(msg + 4, (uint32_t)bk->page_size);
	store_be64(msg + 8, page << bk->page_shift);
	/* While paused this fails; recovery sends it again (reqd stays set). */
	return engine_send_page_request(d->e, msg, NULL);
}

static void wake(struct pc_dest *d, uint64_t addr, uint64_t len)
{
	struct uffdio_range rg = { .start = addr, .len = len };

	ioctl(d->uffd, UFFDIO_WAKE, &rg);
}

static void on_fault(struct pc_dest *d, uint64_t addr)
{
	mfd_migration *m = d->e->m;

	for (unsigned b = 0; b < m->nblocks; b++) {
		const struct mfd_ram_block *bk = &m->blocks[b];
		uint64_t base = (uint64_t)(uintptr_t)bk->host;

		if (addr < base || addr >= base + bk->size)
			continue;
		uint64_t page = (addr - base) >> bk->page_shift, at = base + (page << bk->page_shift);

		if (test_bit(d->recv[b], page)) {
			/* In place already (woken meanwhile), or a zero page precopy never
			 * touched: map zeros; EEXIST means it was there. */
			pcd_place(d->e, b, page << bk->page_shift, NULL, NULL);
			wake(d, at, bk->page_size);
			return;
		}
		pthread_mutex_lock(&d->lock);
		d->faults++;
		bool first = set_bit(d->reqd[b], page);

		if (first && d->npending < PENDING_MAX)
			d->pending[d->npending++] =
				(struct pending_fault){ (uint16_t)b, page, util_now_ns() };
		pthread_mutex_unlock(&d->lock);
		if (!first)
			return;	/* asked already; the page wakes every waiter */
		if (test_bit(d->recv[b], page)) {
			/* Placed between the two looks. */
			clear_bit(d->reqd[b], page);
			forget_pending(d, b, page);
			wake(d, at, bk->page_size);
			return;
		}
		pthread_mutex_lock(&d->e->lock);
		STAT_ADD(d->e, pc_requests, 1);
		pthread_mutex_unlock(&d->e->lock);
		request(d, b, page);
		return;
	}
	log_warn("postcopy: fault at 0x%llx outside every RAM block", (unsigned long long)addr);
}

static void *fault_thread(void *arg)
{
	struct pc_dest *d = arg;
	struct uffd_msg msgs[16];

	for (;;) {
		struct pollfd pfd[2] = { { d->uffd, POLLIN, 0 }, { d->stop_fd, POLLIN, 0 } };

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("postcopy: fault thread: poll failed (%s)", strerror(errno));
			break;
		}
		if (pfd[1].revents)
			break;
		ssize_t n = read(d->uffd, msgs, sizeof(msgs));

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			log_error("postcopy: fault thread: read failed (%s)", strerror(errno));
			break;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(d, msgs[i].arg.pagefault.address);
	}
	return NULL;
}

int pcd_listen(struct mfd_engine *e, mfd_error **errp)
{
	struct pc_dest *d = e->dst.pcd;
	mfd_migration *m = e->m;

	if (!d || pc_at(e) != PC_ADVISED)
		return pc_move(e, PC_LISTENING, errp);	/* says why not */
	d->can_zeropage = true;
	for (unsigned b = 0; b < m->nblocks; b++) {
		struct uffdio_register reg = {
			.range = { (uint64_t)(uintptr_t)m->blocks[b].host, m->blocks[b].size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (ioctl(d->uffd, UFFDIO_REGISTER, &reg) < 0)
			return mfd_error_set(errp, MFD_ENOTSUP,
					     "postcopy: userfaultfd cannot register block '%s' (%s); "
					     "postcopy needs anonymous, shmem or hugetlbfs memory",
					     m->blocks[b].name, strerror(errno));
		d->registered = true;
		if (!(reg.ioctls & (1ull << _UFFDIO_COPY)))
			return mfd_error_set(errp, MFD_ENOTSUP,
					     "postcopy: block '%s' does not support UFFDIO_COPY",
					     m->blocks[b].name);
		if (!(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE)))
			d->can_zeropage = false;
	}
	if (!d->can_zeropage) {
		d->zero = calloc(1, PC_PAGE_MAX);
		if (!d->zero)
			return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory");
	}
	if (util_thread_start(&d->thread, fault_thread, d, "mfd-pc-faults") != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: cannot start the fault thread");
	d->thread_started = true;
	return pc_move(e, PC_LISTENING, errp);
}

/* Page @page of block @b is in place: count it, and time its fault if any. */
static void placed(struct pc_dest *d, unsigned b, uint64_t page)
{
	if (set_bit(d->recv[b], page))
		atomic_fetch_sub(&d->missing, 1);
	if (clear_bit(d->reqd[b], page))
		record_latency(d, b, page);
}

/*
 * @n contiguous pages of block @b from @offset, their bytes at @data: placed
 * with as few UFFDIO_COPY calls as the pages already in place allow (one per
 * run of missing pages; a page placed meanwhile by the preempt channel makes
 * the kernel stop there, and the rest follows).  Each call wakes the threads
 * waiting on its pages.
 */
int pcd_place_run(struct mfd_engine *e, unsigned b, uint64_t offset, const uint8_t *data,
		  uint32_t n, mfd_error **errp)
{
	struct pc_dest *d = e->dst.pcd;
	const struct mfd_ram_block *bk = &e->m->blocks[b];
	uint64_t first = offset >> bk->page_shift, ps = bk->page_size;
	uint32_t i = 0;

	while (i < n) {
		uint32_t j = i, done;

		if (test_bit(d->recv[b], first + i)) {
			i++;	/* placed already: never twice */
			continue;
		}
		while (j < n && !test_bit(d->recv[b], first + j))
			j++;
		struct uffdio_copy c = {
			.dst = (uint64_t)(uintptr_t)(bk->host + offset + i * ps),
			.src = (uint64_t)(uintptr_t)(data + i * ps),
			.len = (j - i) * ps,
		};

		if (ioctl(d->uffd, UFFDIO_COPY, &c) == 0) {
			done = j - i;
		} else if (errno == EAGAIN) {
			/* Stopped at a page in place (the next call says EEXIST for
			 * it), or nothing copied while the mappings changed: again. */
			done = c.copy > 0 ? (uint32_t)((uint64_t)c.copy / ps) : 0;
		} else if (errno == EEXIST) {
			done = 1;	/* this one was there */
		} else {
			return mfd_error_set(errp, MFD_EIO, "postcopy: cannot place pages 0x%llx+%llu "
					     "of block '%s' (%s)",
					     (unsigned long long)(offset + i * ps),
					     (unsigned long long)((j - i) * ps), bk->name,
					     strerror(errno));
		}
		for (uint32_t k = i; k < i + done; k++)
			placed(d, b, first + k);
		i += done;
	}
	return 0;
}

int pcd_place(struct mfd_engine *e, unsigned b, uint64_t offset, const void *data,
	      mfd_error **errp)
{
	struct pc_dest *d = e->dst.pcd;
	const struct mfd_ram_block *bk = &e->m->blocks[b];
	uint64_t dst = (uint64_t)(uintptr_t)(bk->host + offset);
	int r;

	if (data)
		return pcd_place_run(e, b, offset, data, 1, errp);
	/* A zero page: the kernel's shared zero page where the block allows. */
	do {
		if (d->can_zeropage) {
			struct uffdio_zeropage z = { .range = { dst, bk->page_size } };

			r = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
		} else {
			struct uffdio_copy c = {
				.dst = dst, .src = (uint64_t)(uintptr_t)d->zero, .len = bk->page_size,
			};

			r = ioctl(d->uffd, UFFDIO_COPY, &c);
		}
	} while (r < 0 && errno == EAGAIN);	/* the mappings changed meanwhile: again */
	if (r < 0 && errno != EEXIST)
		return mfd_error_set(errp, MFD_EIO,
				     "postcopy: cannot place zero page 0x%llx of block '%s' (%s)",
				     (unsigned long long)offset, bk->name, strerror(errno));
	placed(d, b, offset >> bk->page_shift);
	return 0;
}

uint64_t pcd_missing(struct mfd_engine *e)
{
	return e->dst.pcd ? atomic_load(&e->dst.pcd->missing) : 0;
}

int pcd_send_bitmap(struct mfd_engine *e, unsigned b, mfd_error **errp)
{
	struct pc_dest *d = e->dst.pcd;
	uint64_t nw = ramsec_words(d->npages[b]);
	uint8_t msg[RP_RECV_BITMAP_LEN], end[8];
	uint64_t *le = malloc(nw * 8);
	int r;

	if (!le)
		return mfd_error_set(errp, MFD_ENOMEM, "postcopy: out of memory for a bitmap");
	/* Little-endian words, as QEMU sends them. */
	for (uint64_t w = 0; w < nw; w++) {
		uint64_t v = atomic_load(&d->recv[b][w]);
		uint8_t *p = (uint8_t *)&le[w];

		for (int i = 0; i < 8; i++)
			p[i] = (uint8_t)(v >> (8 * i));
	}
	store_be16(msg, (uint16_t)b);
	store_be16(msg + 2, 0);
	store_be32(msg + 4, 0);
	store_be64(msg + 8, nw * 8);
	store_be64(end, RECV_BITMAP_END);
	struct iovec extra[2] = { { le, nw * 8 }, { end, 8 } };

	r = engine_rp_send_raw(e, RP_RECV_BITMAP, msg, sizeof(msg), extra, 2, errp);
	free(le);
	return r;
}

void pcd_resend_requests(struct mfd_engine *e)
{
	struct pc_dest *d = e->dst.pcd;
	mfd_migration *m = e->m;

	if (!d)
		return;
	for (unsigned b = 0; b < m->nblocks; b++)
		for (uint64_t w = 0; w < ramsec_words(d->npages[b]); w++) {
			uint64_t bits = atomic_load(&d->reqd[b][w]) & ~atomic_load(&d->recv[b][w]);

			while (bits) {
				uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(bits);

				bits &= bits - 1;
				request(d, b, page);
			}
		}
}

void pcd_stop(struct mfd_engine *e)
{
	struct pc_dest *d = e->dst.pcd;
	mfd_migration *m = e->m;
	uint64_t one = 1;

	if (!d)
		return;
	if (d->thread_started) {
		if (write(d->stop_fd, &one, sizeof(one)) < 0)
			log_warn("postcopy: cannot stop the fault thread (%s)", strerror(errno));
		pthread_join(d->thread, NULL);
		d->thread_started = false;
	}
	if (d->registered) {
		/* Waiting threads are woken by the unregister and fault normally. */
		for (unsigned b = 0; b < m->nblocks; b++) {
			struct uffdio_range rg = { (uint64_t)(uintptr_t)m->blocks[b].host,
						   m->blocks[b].size };

			ioctl(d->uffd, UFFDIO_UNREGISTER, &rg);
		}
		d->registered = false;
	}
}

void pcd_free(struct mfd_engine *e)
{
	struct pc_dest *d = e->dst.pcd;

	if (!d)
		return;
	pcd_stop(e);
	/* mfd_migration_stats() reads it under the engine's lock. */
	pthread_mutex_lock(&e->lock);
	e->dst.pcd = NULL;
	pthread_mutex_unlock(&e->lock);
	if (d->uffd >= 0)
		close(d->uffd);
	if (d->stop_fd >= 0)
		close(d->stop_fd);
	for (unsigned b = 0; b < d->nblocks; b++) {
		free((void *)d->recv[b]);
		free((void *)d->reqd[b]);
	}
	free(d->recv);
	free(d->reqd);
	free(d->npages);
	free(d->zero);
	free(d->samples);
	pthread_mutex_destroy(&d->lock);
	free(d);
	free(e->dst.pc_page);
	e->dst.pc_page = NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

void pcd_stats(struct mfd_engine *e, struct mfd_stats *st)
{
	struct pc_dest *d = e->dst.pcd;
	uint32_t *copy;
	size_t n;

	if (!d)
		return;
	pthread_mutex_lock(&d->lock);
	n = (size_t)MFD_MIN(d->nsamples, (uint64_t)SAMPLES_MAX);
	st->postcopy_faults = d->faults;
	st->postcopy_blocktime_ms = d->blocktime_ns / 1000000;
	st->postcopy_fault_us_max = d->lat_max_ns / 1000;
	copy = n ? malloc(n * sizeof(*copy)) : NULL;
	if (copy)
		memcpy(copy, d->samples, n * sizeof(*copy));
	pthread_mutex_unlock(&d->lock);
	if (!copy)
		return;
	qsort(copy, n, sizeof(*copy), cmp_u32);
	st->postcopy_fault_us_median = copy[n / 2];
	st->postcopy_fault_us_p99 = copy[MFD_MIN(n - 1, n * 99 / 100)];
	free(copy);
}
