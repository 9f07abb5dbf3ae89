/* SPDX-License-Identifier: MIT */
/*
 * minivmm: a small KVM virtual machine monitor that live-migrates its guest
 * with libmultifd.  One vCPU, RAM in one or more memory slots, a PC-like
 * port contract (COM1 output, the A20 port, everything else open bus).
 *
 * This header is the example's own; it uses only the public libmultifd
 * header, as a VMM outside the tree would.
 */
#ifndef MINIVMM_VM_H
#define MINIVMM_VM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <multifd/multifd.h>

#define MIB (1ull << 20)
#define GIB (1ull << 30)

#define VM_RAM_MIN_MIB 64
#define VM_RAM_MAX_MIB 8192
#define VM_LOW_MAX (3 * GIB)		/* RAM above this goes above 4 GiB */
#define VM_HIGH_BASE (4 * GIB)
#define VM_SLOTS_MAX 32

/* The boot sector contract (examples/minivmm/guest.S). */
#define BOOT_ADDR 0x7c00
#define BOOT_SIZE 512
#define PARAM_OFFSET 480		/* in the image */
#define PARAM_MAGIC 0x504D564Du		/* "MVMP" */
#define STATUS_ADDR 0x9000		/* u64 laps, u64 running magic */
#define STATUS_MAGIC 0x534D564Dull	/* "MVMS" */
#define WS_START MIB

/* The guest's knobs, as they sit in its image (little-endian u32s). */
struct guest_params {
	uint32_t magic, version;
	uint32_t low_end_mib, high_end_mib, delay;
};

struct vm_slot {
	uint64_t gpa, size;
	uint8_t *host;
	int fd;			/* the memfd behind it (--memfd), or -1 */
	char name[32];
};

/* How KVM's dirty log is read: KVM_GET_DIRTY_LOG write-protects again as it
 * fetches (classic), or leaves that to KVM_CLEAR_DIRTY_LOG just before the
 * library reads a range (manual: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with
 * KVM_DIRTY_LOG_INITIALLY_SET, no write-protect pass over all of RAM when
 * logging starts). */
enum vm_dirty_mode { VM_DIRTY_AUTO, VM_DIRTY_CLASSIC, VM_DIRTY_MANUAL, VM_DIRTY_RING };

#define VM_RING_ENTRIES 4096	/* per vCPU, with --dirty-log ring */

enum vcpu_run_state { VCPU_RUNNING, VCPU_PAUSED, VCPU_HALTED, VCPU_FAILED };

struct vm {
	int kvm_fd, vm_fd, vcpu_fd;
	struct kvm_run *run;
	size_t run_size;
	struct kvm_cpuid2 *cpuid;

	uint64_t ram_size;
	unsigned nslots;
	struct vm_slot slots[VM_SLOTS_MAX];
	bool dirty_logging;
	enum vm_dirty_mode dirty_mode;	/* classic, manual or ring, never auto here */
	/* Ring mode: the vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING), reaped into
	 * mig with mfd_ram_mark_dirty() by the migration thread at each sync
	 * round and by the vCPU thread when the ring fills. */
	struct kvm_dirty_gfn *ring;
	uint32_t ring_next;		/* under ring_lock */
	pthread_mutex_t ring_lock;
	uint64_t ring_reaped, ring_full_exits;
	mfd_migration *mig;
	bool memfd;			/* slots are memfds */
	bool prealloc;			/* slots faulted in at creation */
	bool start_paused;		/* incoming --paused: vm_start leaves it stopped */
	uint64_t dirty_clears;		/* KVM_CLEAR_DIRTY_LOG calls */
	uint64_t *dirty_buf;		/* KVM_GET_DIRTY_LOG scratch, largest slot */

	/* The vCPU thread and what others ask of it. */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req;			/* under lock */
	bool quit_req;
	enum vcpu_run_state state;	/* under lock; what the thread does now */
	char fail_msg[160];
	atomic_int throttle_pct;
	atomic_bool throttle_kick;
	pthread_t ticker;
	bool ticker_started;

	/* Devices. */
	int serial_fd;			/* COM1 output (--serial), -1: stdout */
	atomic_ullong serial_bytes, serial_laps;
	uint8_t serial_last;		/* previous byte, to count "L\n" */
	uint64_t logged_ports[65536 / 64];
	uint64_t mmio_exits;
	bool verbose;
};

struct vm_config {
	uint64_t ram_mib;
	uint64_t slot_mib;		/* most MiB per memory slot; 0 = one per region */
	const char *serial_path;	/* NULL: stdout */
	bool verbose;
	bool memfd;			/* guest RAM in memfds (MAP_SHARED) */
	bool prealloc;			/* fault every page in first (QEMU's prealloc=on) */
	enum vm_dirty_mode dirty_mode;	/* auto: manual where KVM offers it */
};

int vm_create(struct vm *vm, const struct vm_config *cfg, mfd_error **errp);
void vm_destroy(struct vm *vm);
/* Copy a boot sector to 0x7c00 and point the vCPU at it (real mode). */
int vm_load_boot(struct vm *vm, const uint8_t *image, size_t len, mfd_error **errp);
/* Starts the vCPU thread, paused or running. */
int vm_start_vcpu(struct vm *vm, bool running, mfd_error **errp);
void vm_pause(struct vm *vm);
void vm_resume(struct vm *vm);
enum vcpu_run_state vm_state(struct vm *vm, char *msg, size_t len);
void vm_throttle(struct vm *vm, int percent);
/* Host address of guest physical @gpa with @len bytes in one slot, or NULL. */
void *vm_gpa(struct vm *vm, uint64_t gpa, uint64_t len);

/* Dirty logging on every slot. */
int vm_dirty_log(struct vm *vm, bool on, mfd_error **errp);
int vm_dirty_sync(struct vm *vm, unsigned slot, uint64_t *bitmap, uint64_t npages,
		  mfd_error **errp);
/* Guest-physical memory into @path as QEMU's pmemsave writes it: byte N of
 * the file is guest-physical address N, holes where nothing is (the PCI hole,
 * zero pages), the file as long as the highest RAM address. */
int vm_dump(struct vm *vm, const char *path, mfd_error **errp);
/* Ring mode: hand every dirty entry of the ring to mfd_ram_mark_dirty() and
 * let KVM re-protect them (KVM_RESET_DIRTY_RINGS).  Any thread. */
int vm_dirty_reap(struct vm *vm, mfd_error **errp);
/* Manual mode: write-protect again and clear the pages of @slot set in
 * @mask (@npages bits from page @first). */
int vm_dirty_clear(struct vm *vm, unsigned slot, uint64_t first, uint64_t npages,
		   const uint64_t *mask, mfd_error **errp);

/* vCPU state to and from a stream (the "cpu" section); vCPU paused. */
int vm_save_cpu(struct vm *vm, mfd_stream *s, mfd_error **errp);
int vm_load_cpu(struct vm *vm, mfd_stream *s, mfd_error **errp);

/* The a-b check of our guest's working set; vCPU paused.  0 when it holds. */
int vm_ab_check(struct vm *vm, char *msg, size_t len);
uint64_t vm_laps(struct vm *vm);

/* migrate.c: registration with libmultifd. */
/* Blocks, sections and hooks; @incoming: RAM is fresh (MFD_RAM_FRESH). */
int vm_register(struct vm *vm, mfd_migration *m, bool incoming, mfd_error **errp);

#endif
