/* SPDX-License-Identifier: MIT */
/*
 * minivmm's machine: a KVM VM with one vCPU and RAM in memory slots, run by
 * one thread.  Other threads (the migration thread, the control socket)
 * pause and resume it by setting a request, then kicking it out of KVM_RUN
 * with a signal and run->immediate_exit; the thread sleeps on a condition
 * variable while paused, and for the throttle's share of each 10 ms
 * period while auto-converge slows it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vm.h"

#define KICK_SIGNAL SIGUSR1
#define THROTTLE_PERIOD_NS 10000000ll

static int sys_error(mfd_error **errp, const char *what)
{
	int e = errno;

	return mfd_error_set(errp, e == ENOMEM ? MFD_ENOMEM : MFD_EIO, "minivmm: %s: %s", what,
			     strerror(e));
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23	/* Linux 5.14; older headers lack it */
#endif

static void kick_handler(int sig)
{
	(void)sig;
}

/* ---- creation ---------------------------------------------------------------- */

static int add_slot(struct vm *vm, uint64_t gpa, uint64_t size, mfd_error **errp)
{
	struct vm_slot *sl;
	struct kvm_userspace_memory_region reg;

	if (vm->nslots == VM_SLOTS_MAX)
		return mfd_error_set(errp, MFD_EINVAL,
				     "minivmm: more than %d memory slots; raise --slot-mib",
				     VM_SLOTS_MAX);
	sl = &vm->slots[vm->nslots];
	snprintf(sl->name, sizeof(sl->name), "pc.ram.%u", vm->nslots);
	sl->fd = -1;
	if (vm->memfd) {
		/* A file of its own per slot, as a VMM that hands RAM over (local
		 * update) or shares it with vhost-user backends maps it. */
		sl->fd = memfd_create(sl->name, MFD_CLOEXEC);
		if (sl->fd < 0)
			return sys_error(errp, "memfd_create");
		if (ftruncate(sl->fd, (off_t)size) < 0)
			return sys_error(errp, "cannot size the guest RAM memfd");
	}
	sl->host = mmap(NULL, size, PROT_READ | PROT_WRITE,
			vm->memfd ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			sl->fd, 0);
	if (sl->host == MAP_FAILED) {
		sl->host = NULL;
		return sys_error(errp, "cannot map guest RAM");
	}
	/* Huge pages where the host has them: fewer TLB misses for the guest,
	 * and 2 MiB faults on the destination (docs/api.md). */
	(void)madvise(sl->host, size, MADV_HUGEPAGE);
	/* --prealloc: no first touch of fresh memory once the migration runs
	 * (MADV_POPULATE_WRITE, Linux 5.14; else a write to every page). */
	if (vm->prealloc && madvise(sl->host, size, MADV_POPULATE_WRITE) < 0)
		for (uint64_t off = 0; off < size; off += 4096)
			((volatile uint8_t *)sl->host)[off] = 0;
	sl->gpa = gpa;
	sl->size = size;
	reg = (struct kvm_userspace_memory_region){
		.slot = vm->nslots,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uintptr_t)sl->host,
	};
	vm->nslots++;
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &reg) < 0)
		return sys_error(errp, "KVM_SET_USER_MEMORY_REGION");
	return 0;
}

/* [gpa, gpa + size) in slots of at most @chunk bytes (0: one slot). */
static int add_region(struct vm *vm, uint64_t gpa, uint64_t size, uint64_t chunk,
		      mfd_error **errp)
{
	while (size) {
		uint64_t n = chunk && chunk < size ? chunk : size;
		int r = add_slot(vm, gpa, n, errp);

		if (r < 0)
			return r;
		gpa += n;
		size -= n;
	}
	return 0;
}

static int setup_cpuid(struct vm *vm, mfd_error **errp)
{
	for (unsigned n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));

		if (!c)
			return mfd_error_set(errp, MFD_ENOMEM, "minivmm: out of memory");
		c->nent = n;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			vm->cpuid = c;
			if (ioctl(vm->vcpu_fd, KVM_SET_CPUID2, c) < 0)
				return sys_error(errp, "KVM_SET_CPUID2");
			return 0;
		}
		free(c);
		if (errno != E2BIG)
			return sys_error(errp, "KVM_GET_SUPPORTED_CPUID");
	}
	return mfd_error_set(errp, MFD_EIO, "minivmm: KVM reports too many CPUID entries");
}

/* Manual protection where asked for (and, by default, where KVM offers it
 * with KVM_DIRTY_LOG_INITIALLY_SET); classic otherwise. */
static int setup_dirty_mode(struct vm *vm, enum vm_dirty_mode want, mfd_error **errp)
{
	const uint64_t flags = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
	int have = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);

	vm->dirty_mode = VM_DIRTY_CLASSIC;
	if (want == VM_DIRTY_CLASSIC)
		return 0;
	if (want == VM_DIRTY_RING) {
		/* Before any vCPU exists.  x86 orders stores: the plain ring (not
		 * the ACQ_REL one weakly ordered hosts need) is enough. */
		struct kvm_enable_cap ring = {
			.cap = KVM_CAP_DIRTY_LOG_RING,
			.args = { VM_RING_ENTRIES * sizeof(struct kvm_dirty_gfn) },
		};
		int max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);

		if (max <= 0 || (uint64_t)max < ring.args[0])
			return mfd_error_set(errp, MFD_ENOTSUP, "minivmm: --dirty-log ring: this KVM "
					     "has no dirty ring of %" PRIu64 " bytes (it offers %d)",
					     (uint64_t)ring.args[0], max);
		if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &ring) < 0)
			return sys_error(errp, "KVM_ENABLE_CAP(DIRTY_LOG_RING)");
		vm->dirty_mode = VM_DIRTY_RING;
		return 0;
	}
	if (have < 0 || ((uint64_t)have & flags) != flags) {
		if (want == VM_DIRTY_MANUAL)
			return mfd_error_set(errp, MFD_ENOTSUP, "minivmm: --dirty-log manual: this "
					     "KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with "
					     "KVM_DIRTY_LOG_INITIALLY_SET");
		return 0;
	}
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
		.args = { flags },
	};

	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) < 0)
		return sys_error(errp, "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)");
	vm->dirty_mode = VM_DIRTY_MANUAL;
	return 0;
}

int vm_create(struct vm *vm, const struct vm_config *cfg, mfd_error **errp)
{
	uint64_t ram = cfg->ram_mib * MIB, low, largest = 0;
	uint64_t ident = 0xfffbc000;
	int r, mmap_size;
	struct sigaction sa;

	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = vm->vcpu_fd = vm->serial_fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_mutex_init(&vm->ring_lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	vm->state = VCPU_PAUSED;
	vm->verbose = cfg->verbose;
	if (cfg->ram_mib < VM_RAM_MIN_MIB || cfg->ram_mib > VM_RAM_MAX_MIB)
		return mfd_error_set(errp, MFD_EINVAL, "minivmm: --ram %" PRIu64
				     " MiB is outside %d..%d MiB", cfg->ram_mib, VM_RAM_MIN_MIB,
				     VM_RAM_MAX_MIB);
	if (cfg->slot_mib && cfg->slot_mib % 2)
		return mfd_error_set(errp, MFD_EINVAL, "minivmm: --slot-mib must be even (2 MiB "
				     "units), not %" PRIu64, cfg->slot_mib);
	vm->ram_size = ram;

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		int e = errno;

		return mfd_error_set(errp, e == ENOENT ? MFD_ENOTSUP : MFD_EIO,
				     "minivmm: /dev/kvm: %s (KVM is needed: load kvm_intel or "
				     "kvm_amd, or run where virtualization is available)",
				     strerror(e));
	}
	r = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (r != KVM_API_VERSION)
		return mfd_error_set(errp, MFD_ENOTSUP, "minivmm: KVM API version %d, expected %d",
				     r, KVM_API_VERSION);
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return sys_error(errp, "KVM_CREATE_VM");
	/* Intel needs these for real mode; AMD accepts and ignores them. */
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0)
		return sys_error(errp, "KVM_SET_IDENTITY_MAP_ADDR");
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0)
		return sys_error(errp, "KVM_SET_TSS_ADDR");
	if ((r = setup_dirty_mode(vm, cfg->dirty_mode, errp)) < 0)
		return r;
	vm->memfd = cfg->memfd;
	vm->prealloc = cfg->prealloc;

	low = ram < VM_LOW_MAX ? ram : VM_LOW_MAX;
	r = add_region(vm, 0, low, cfg->slot_mib * MIB, errp);
	if (r == 0 && ram > low)
		r = add_region(vm, VM_HIGH_BASE, ram - low, cfg->slot_mib * MIB, errp);
	if (r < 0)
		return r;
	for (unsigned i = 0; i < vm->nslots; i++)
		if (vm->slots[i].size > largest)
			largest = vm->slots[i].size;
	vm->dirty_buf = calloc((largest / 4096 + 63) / 64, sizeof(uint64_t));
	if (!vm->dirty_buf)
		return mfd_error_set(errp, MFD_ENOMEM, "minivmm: out of memory");

	vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
	if (vm->vcpu_fd < 0)
		return sys_error(errp, "KVM_CREATE_VCPU");
	mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run))
		return sys_error(errp, "KVM_GET_VCPU_MMAP_SIZE");
	vm->run_size = (size_t)mmap_size;
	vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
	if (vm->run == MAP_FAILED) {
		vm->run = NULL;
		return sys_error(errp, "cannot map the vCPU's kvm_run");
	}
	if (vm->dirty_mode == VM_DIRTY_RING) {
		vm->ring = mmap(NULL, VM_RING_ENTRIES * sizeof(struct kvm_dirty_gfn),
				PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd,
				KVM_DIRTY_LOG_PAGE_OFFSET * sysconf(_SC_PAGESIZE));
		if (vm->ring == MAP_FAILED) {
			vm->ring = NULL;
			return sys_error(errp, "cannot map the vCPU's dirty ring");
		}
	}
	r = setup_cpuid(vm, errp);
	if (r < 0)
		return r;

	if (cfg->serial_path && strcmp(cfg->serial_path, "-") != 0) {
		vm->serial_fd = open(cfg->serial_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
				     0644);
		if (vm->serial_fd < 0)
			return sys_error(errp, cfg->serial_path);
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;	/* no SA_RESTART: KVM_RUN returns EINTR */
	sigemptyset(&sa.sa_mask);
	if (sigaction(KICK_SIGNAL, &sa, NULL) < 0)
		return sys_error(errp, "sigaction");
	return 0;
}

void *vm_gpa(struct vm *vm, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < vm->nslots; i++) {
		const struct vm_slot *sl = &vm->slots[i];

		if (gpa >= sl->gpa && gpa - sl->gpa < sl->size && len <= sl->size - (gpa - sl->gpa))
			return sl->host + (gpa - sl->gpa);
	}
	return NULL;
}

int vm_load_boot(struct vm *vm, const uint8_t *image, size_t len, mfd_error **errp)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	uint8_t *dst = vm_gpa(vm, BOOT_ADDR, BOOT_SIZE);

	if (len != BOOT_SIZE)
		return mfd_error_set(errp, MFD_EINVAL, "minivmm: a boot sector is %d bytes, the "
				     "image has %zu", BOOT_SIZE, len);
	if (image[510] != 0x55 || image[511] != 0xaa)
		return mfd_error_set(errp, MFD_EINVAL, "minivmm: the image lacks the boot "
				     "signature 55 aa at offset 510; it is not a boot sector");
	memcpy(dst, image, len);
	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return sys_error(errp, "KVM_GET_SREGS");
	/* Real mode, as a PC BIOS hands over: CS:IP = 0000:7c00, flat segments at 0. */
	struct kvm_segment *segs[] = { &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs,
				       &sregs.ss };
	for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
		segs[i]->base = 0;
		segs[i]->selector = 0;
		segs[i]->limit = 0xffff;
	}
	if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		return sys_error(errp, "KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = BOOT_ADDR;
	regs.rflags = 0x2;
	regs.rdx = 0x80;	/* the boot drive, as a BIOS leaves it */
	regs.rsp = 0x7000;
	if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return sys_error(errp, "KVM_SET_REGS");
	return 0;
}

/* ---- the vCPU thread ----------------------------------------------------------- */

static void set_final(struct vm *vm, enum vcpu_run_state st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_final(struct vm *vm, enum vcpu_run_state st, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&vm->lock);
	va_start(ap, fmt);
	vsnprintf(vm->fail_msg, sizeof(vm->fail_msg), fmt, ap);
	va_end(ap);
	vm->state = st;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	fprintf(stderr, "minivmm: %s\n", vm->fail_msg);
}

static void log_port_once(struct vm *vm, unsigned port, bool out)
{
	uint64_t bit = 1ull << (port % 64);

	if (vm->logged_ports[port / 64] & bit)
		return;
	vm->logged_ports[port / 64] |= bit;
	if (vm->verbose)
		fprintf(stderr, "minivmm: guest %s port 0x%x: no device there (%s)\n",
			out ? "wrote" : "read", port, out ? "ignored" : "reads as all ones");
}

/* COM1 as a UART: every byte leaves at once (one write each, no stdio
 * buffer), so whoever reads the file or the terminal sees what the guest
 * wrote up to the instant it stopped. */
static void serial_out(struct vm *vm, uint8_t b)
{
	int fd = vm->serial_fd >= 0 ? vm->serial_fd : STDOUT_FILENO;

	while (write(fd, &b, 1) < 0 && errno == EINTR)
		;
	if (b == '\n' && vm->serial_last == 'L')
		atomic_fetch_add(&vm->serial_laps, 1);
	vm->serial_last = b;
	atomic_fetch_add(&vm->serial_bytes, 1);
}

static void handle_io(struct vm *vm)
{
	struct kvm_run *run = vm->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	unsigned size = run->io.size, port = run->io.port;

	for (uint32_t i = 0; i < run->io.count; i++, data += size) {
		if (run->io.direction == KVM_EXIT_IO_OUT) {
			if (port == 0x3f8)
				serial_out(vm, data[0]);
			else if (port != 0x92)
				log_port_once(vm, port, true);
		} else if (port == 0x92) {
			memset(data, 0, size);
		} else {
			memset(data, 0xff, size);
			log_port_once(vm, port, false);
		}
	}
}

/* Returns false when the vCPU cannot go on. */
static bool handle_exit(struct vm *vm)
{
	struct kvm_run *run = vm->run;

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		handle_io(vm);
		return true;
	case KVM_EXIT_MMIO:
		/* No device memory: reads see all ones, writes vanish. */
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
		if (vm->mmio_exits++ == 0 && vm->verbose)
			fprintf(stderr, "minivmm: guest touched unbacked memory at 0x%llx\n",
				(unsigned long long)run->mmio.phys_addr);
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_DIRTY_RING_FULL: {
		/* KVM will not enter the guest again before the ring is reaped. */
		mfd_error *err = NULL;

		vm->ring_full_exits++;
		if (vm_dirty_reap(vm, &err) < 0) {
			set_final(vm, VCPU_FAILED, "%s", mfd_error_message(err));
			mfd_error_free(err);
			return false;
		}
		return true;
	}
	case KVM_EXIT_HLT:
		set_final(vm, VCPU_HALTED, "the guest halted (HLT with no interrupt source)");
		return false;
	case KVM_EXIT_SHUTDOWN:
		set_final(vm, VCPU_FAILED, "the guest shut down (triple fault)");
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		set_final(vm, VCPU_FAILED, "KVM could not enter the guest (hardware reason 0x%llx)",
			  (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		set_final(vm, VCPU_FAILED, "KVM internal error (suberror %u)",
			  run->internal.suberror);
		return false;
	default:
		set_final(vm, VCPU_FAILED, "unexpected KVM exit reason %u", run->exit_reason);
		return false;
	}
}

/* Waits while paused or throttled; returns false on quit.  Lock held. */
static bool gate(struct vm *vm)
{
	for (;;) {
		if (vm->quit_req)
			return false;
		if (vm->pause_req || vm->state == VCPU_HALTED || vm->state == VCPU_FAILED) {
			if (vm->state == VCPU_RUNNING) {
				vm->state = VCPU_PAUSED;
				pthread_cond_broadcast(&vm->cond);
			}
			pthread_cond_wait(&vm->cond, &vm->lock);
			continue;
		}
		if (atomic_exchange(&vm->throttle_kick, false)) {
			int pct = atomic_load(&vm->throttle_pct);

			if (pct > 0 && pct < 100) {
				/* Sleep pct/(100-pct) of a period: the vCPU runs (100-pct)%. */
				long long ns = THROTTLE_PERIOD_NS * pct / (100 - pct);
				struct timespec ts;

				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_sec += ns / 1000000000ll;
				ts.tv_nsec += ns % 1000000000ll;
				if (ts.tv_nsec >= 1000000000l) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000l;
				}
				vm->state = VCPU_PAUSED;
				pthread_cond_broadcast(&vm->cond);
				while (!vm->quit_req && !vm->pause_req &&
				       pthread_cond_timedwait(&vm->cond, &vm->lock, &ts) == 0)
					;
				continue;
			}
		}
		vm->state = VCPU_RUNNING;
		return true;
	}
}

static void *vcpu_thread(void *arg)
{
	struct vm *vm = arg;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	for (;;) {
		bool go;

		__atomic_store_n(&vm->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
		pthread_mutex_lock(&vm->lock);
		go = gate(vm);
		pthread_mutex_unlock(&vm->lock);
		if (!go)
			break;
		if (ioctl(vm->vcpu_fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			set_final(vm, VCPU_FAILED, "KVM_RUN: %s", strerror(errno));
			continue;
		}
		if (!handle_exit(vm))
			continue;
	}
	pthread_mutex_lock(&vm->lock);
	vm->state = VCPU_PAUSED;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

/* Out of KVM_RUN now, or before entering it. */
static void kick(struct vm *vm)
{
	__atomic_store_n(&vm->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (vm->thread_started)
		pthread_kill(vm->thread, KICK_SIGNAL);
}

static void *ticker_thread(void *arg)
{
	struct vm *vm = arg;
	struct timespec ts = { 0, THROTTLE_PERIOD_NS };

	for (;;) {
		bool quit;

		nanosleep(&ts, NULL);
		pthread_mutex_lock(&vm->lock);
		quit = vm->quit_req;
		pthread_mutex_unlock(&vm->lock);
		if (quit)
			break;
		if (atomic_load(&vm->throttle_pct) > 0) {
			atomic_store(&vm->throttle_kick, true);
			kick(vm);
		}
	}
	return NULL;
}

int vm_start_vcpu(struct vm *vm, bool running, mfd_error **errp)
{
	vm->pause_req = !running;
	if (pthread_create(&vm->thread, NULL, vcpu_thread, vm) != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "minivmm: cannot start the vCPU thread");
	vm->thread_started = true;
	if (pthread_create(&vm->ticker, NULL, ticker_thread, vm) != 0)
		return mfd_error_set(errp, MFD_ENOMEM, "minivmm: cannot start the throttle thread");
	vm->ticker_started = true;
	return 0;
}

void vm_pause(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->pause_req = true;
	pthread_cond_broadcast(&vm->cond);
	while (vm->thread_started && vm->state == VCPU_RUNNING) {
		kick(vm);
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 1000000;
		if (ts.tv_nsec >= 1000000000l) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000l;
		}
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
	}
	pthread_mutex_unlock(&vm->lock);
}

void vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->pause_req = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

enum vcpu_run_state vm_state(struct vm *vm, char *msg, size_t len)
{
	enum vcpu_run_state st;

	pthread_mutex_lock(&vm->lock);
	st = vm->state;
	if (st == VCPU_PAUSED && !vm->pause_req)
		st = VCPU_RUNNING;	/* only throttled for a moment */
	if (msg && len)
		snprintf(msg, len, "%s", vm->fail_msg);
	pthread_mutex_unlock(&vm->lock);
	return st;
}

void vm_throttle(struct vm *vm, int percent)
{
	atomic_store(&vm->throttle_pct, percent < 0 ? 0 : percent > 99 ? 99 : percent);
}

void vm_destroy(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->quit_req = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	/* The ticker first: it kicks the vCPU thread, which must still exist. */
	if (vm->ticker_started)
		pthread_join(vm->ticker, NULL);
	if (vm->thread_started) {
		kick(vm);
		pthread_join(vm->thread, NULL);
	}
	if (vm->serial_fd >= 0)
		close(vm->serial_fd);
	if (vm->run)
		munmap(vm->run, vm->run_size);
	if (vm->ring)
		munmap(vm->ring, VM_RING_ENTRIES * sizeof(struct kvm_dirty_gfn));
	if (vm->vcpu_fd >= 0)
		close(vm->vcpu_fd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	for (unsigned i = 0; i < vm->nslots; i++) {
		if (vm->slots[i].host)
			munmap(vm->slots[i].host, vm->slots[i].size);
		if (vm->slots[i].fd >= 0)
			close(vm->slots[i].fd);
	}
	free(vm->dirty_buf);
	free(vm->cpuid);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->ring_lock);
	pthread_mutex_destroy(&vm->lock);
}

/* ---- dirty logging ----------------------------------------------------------- */

int vm_dirty_log(struct vm *vm, bool on, mfd_error **errp)
{
	for (unsigned i = 0; i < vm->nslots; i++) {
		const struct vm_slot *sl = &vm->slots[i];
		struct kvm_userspace_memory_region reg = {
			.slot = i,
			.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
			.guest_phys_addr = sl->gpa,
			.memory_size = sl->size,
			.userspace_addr = (uintptr_t)sl->host,
		};

		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &reg) < 0)
			return sys_error(errp, on ? "cannot start KVM dirty logging"
						  : "cannot stop KVM dirty logging");
	}
	vm->dirty_logging = on;
	return 0;
}

int vm_dirty_sync(struct vm *vm, unsigned slot, uint64_t *bitmap, uint64_t npages,
		  mfd_error **errp)
{
	struct kvm_dirty_log log = { .slot = slot };
	uint64_t words;

	if (slot >= vm->nslots || npages != vm->slots[slot].size / 4096)
		return mfd_error_set(errp, MFD_EINVAL, "minivmm: dirty sync of block %u with %"
				     PRIu64 " pages does not match slot layout", slot, npages);
	if (!vm->dirty_logging)
		return 0;
	words = (npages + 63) / 64;
	memset(vm->dirty_buf, 0, words * sizeof(uint64_t));
	log.dirty_bitmap = vm->dirty_buf;
	/* Classic: fetches the slot's log and write-protects it again, atomically.
	 * Manual: only fetches; vm_dirty_clear() protects, range by range. */
	if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0)
		return sys_error(errp, "KVM_GET_DIRTY_LOG");
	for (uint64_t w = 0; w < words; w++)
		bitmap[w] |= vm->dirty_buf[w];
	return 0;
}

int vm_dump(struct vm *vm, const char *path, mfd_error **errp)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	uint64_t end = 0;
	int r = 0;

	if (fd < 0)
		return sys_error(errp, path);
	/* Each slot at its guest-physical address; zero pages stay holes. */
	for (unsigned i = 0; i < vm->nslots && r == 0; i++) {
		const struct vm_slot *sl = &vm->slots[i];

		for (uint64_t off = 0; off < sl->size && r == 0; off += 4096) {
			const uint8_t *p = sl->host + off;
			bool zero = p[0] == 0 && memcmp(p, p + 1, 4095) == 0;

			if (zero)
				continue;
			for (size_t done = 0; done < 4096;) {
				ssize_t n = pwrite(fd, p + done, 4096 - done,
						   (off_t)(sl->gpa + off + done));

				if (n < 0 && errno == EINTR)
					continue;
				if (n <= 0) {
					r = sys_error(errp, path);
					break;
				}
				done += (size_t)n;
			}
		}
		if (sl->gpa + sl->size > end)
			end = sl->gpa + sl->size;
	}
	if (r == 0 && ftruncate(fd, (off_t)end) < 0)
		r = sys_error(errp, path);
	if (close(fd) < 0 && r == 0)
		r = sys_error(errp, path);
	return r;
}

int vm_dirty_reap(struct vm *vm, mfd_error **errp)
{
	uint64_t n = 0;
	int r = 0;

	if (vm->dirty_mode != VM_DIRTY_RING)
		return 0;
	pthread_mutex_lock(&vm->ring_lock);
	for (;;) {
		struct kvm_dirty_gfn *e = &vm->ring[vm->ring_next % VM_RING_ENTRIES];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);
		unsigned slot = e->slot & 0xffff;	/* address space 0 only */

		if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
			break;
		if (slot < vm->nslots && e->offset < vm->slots[slot].size / 4096 && vm->mig)
			mfd_ram_mark_dirty(vm->mig, vm->slots[slot].host + e->offset * 4096, 4096);
		/* Collected: KVM may re-protect the page and reuse the entry. */
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		vm->ring_next++;
		n++;
	}
	if (n && ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0)
		r = sys_error(errp, "KVM_RESET_DIRTY_RINGS");
	vm->ring_reaped += n;
	pthread_mutex_unlock(&vm->ring_lock);
	return r;
}

int vm_dirty_clear(struct vm *vm, unsigned slot, uint64_t first, uint64_t npages,
		   const uint64_t *mask, mfd_error **errp)
{
	struct kvm_clear_dirty_log clr = {
		.slot = slot,
		.num_pages = (uint32_t)npages,
		.first_page = first,
		.dirty_bitmap = (void *)mask,
	};

	if (vm->dirty_mode != VM_DIRTY_MANUAL || slot >= vm->nslots ||
	    first + npages > vm->slots[slot].size / 4096 || npages > UINT32_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "minivmm: dirty clear of pages %" PRIu64
				     "+%" PRIu64 " of slot %u does not fit", first, npages, slot);
	if (!vm->dirty_logging)
		return 0;
	if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr) < 0)
		return sys_error(errp, "KVM_CLEAR_DIRTY_LOG");
	vm->dirty_clears++;
	return 0;
}

/* ---- the a-b check ------------------------------------------------------------ */

uint64_t vm_laps(struct vm *vm)
{
	uint64_t *st = vm_gpa(vm, STATUS_ADDR, 16);

	return st ? __atomic_load_n(&st[0], __ATOMIC_RELAXED) : 0;
}

static int read_params(struct vm *vm, struct guest_params *p, char *msg, size_t len)
{
	const uint8_t *b = vm_gpa(vm, BOOT_ADDR + PARAM_OFFSET, sizeof(*p));

	if (!b)
		return snprintf(msg, len, "no RAM at the boot sector"), -1;
	memcpy(p, b, sizeof(*p));
	if (p->magic != PARAM_MAGIC)
		return snprintf(msg, len, "not minivmm's guest: no parameter block at 0x%x",
				BOOT_ADDR + PARAM_OFFSET), -1;
	return 0;
}

/*
 * Our guest adds 1 to the first u64 of every page of its working set in
 * ascending order, lap after lap, and stores the number of finished laps at
 * 0x9000 after each.  Stopped anywhere, a prefix holds L+1 and the rest L,
 * where L is the stored lap count (or all pages hold L+1 in the moment
 * between the last page and the store).
 */
int vm_ab_check(struct vm *vm, char *msg, size_t len)
{
	struct guest_params p;
	uint64_t laps = vm_laps(vm), first = 0, npages = 0, boundary = 0, prev = 0;
	uint64_t ranges[2][2];
	unsigned nr = 0;
	bool have_boundary = false;
	const uint64_t *magic = vm_gpa(vm, STATUS_ADDR + 8, 8);

	if (read_params(vm, &p, msg, len) < 0)
		return -1;
	if (!magic || *magic != STATUS_MAGIC)
		return snprintf(msg, len, "the guest never reached its loop (no status magic)"), -1;
	ranges[nr][0] = WS_START;
	ranges[nr++][1] = (uint64_t)p.low_end_mib * MIB;
	if ((uint64_t)p.high_end_mib * MIB > VM_HIGH_BASE) {
		ranges[nr][0] = VM_HIGH_BASE;
		ranges[nr++][1] = (uint64_t)p.high_end_mib * MIB;
	}
	for (unsigned r = 0; r < nr; r++) {
		for (uint64_t gpa = ranges[r][0]; gpa < ranges[r][1]; gpa += 4096) {
			const uint64_t *v = vm_gpa(vm, gpa, 8);

			if (!v)
				return snprintf(msg, len, "working set page 0x%" PRIx64
						" is outside the guest's RAM", gpa), -1;
			if (npages == 0) {
				first = prev = *v;
			} else if (*v != prev) {
				if (have_boundary || *v + 1 != prev)
					return snprintf(msg, len, "page 0x%" PRIx64 " holds %" PRIu64
							" after %" PRIu64 " (boundary %s)", gpa, *v,
							prev, have_boundary ? "already seen" :
							"is not a step of one"), -1;
				have_boundary = true;
				boundary = gpa;
				prev = *v;
			}
			npages++;
		}
	}
	if (npages == 0)
		return snprintf(msg, len, "empty working set"), -1;
	/* prev is the last page's value: L, or L+1 when no boundary was seen. */
	if (!(prev == laps || (!have_boundary && prev == laps + 1)))
		return snprintf(msg, len, "pages hold %" PRIu64 "..%" PRIu64 " but the guest "
				"counted %" PRIu64 " laps", prev, first, laps), -1;
	if (have_boundary)
		snprintf(msg, len, "ok pages=%" PRIu64 " laps=%" PRIu64 " values=%" PRIu64 "/%"
			 PRIu64 " boundary=0x%" PRIx64, npages, laps, first, prev, boundary);
	else
		snprintf(msg, len, "ok pages=%" PRIu64 " laps=%" PRIu64 " values=%" PRIu64
			 " boundary=none", npages, laps, first);
	return 0;
}
