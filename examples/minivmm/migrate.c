/* SPDX-License-Identifier: MIT */
/*
 * minivmm and libmultifd: each memory slot is one RAM block ("pc.ram.N"),
 * the vCPU is the "cpu" section and COM1 the "serial" section, and the VMM
 * hooks map onto the vCPU thread (stop, start, throttle) and KVM's dirty
 * log (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG).
 */
#include <string.h>

#include "vm.h"

/* ---- sections ------------------------------------------------------------------ */

static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	return vm_save_cpu(opaque, s, errp);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	(void)version_id;
	return vm_load_cpu(opaque, s, errp);
}

/* serial, version 1: be64 bytes written so far, be64 "L\n" markers, u8 last byte. */
static int serial_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct vm *vm = opaque;
	int r;

	(void)errp;
	r = mfd_stream_put_be64(s, atomic_load(&vm->serial_bytes));
	if (r == 0)
		r = mfd_stream_put_be64(s, atomic_load(&vm->serial_laps));
	if (r == 0)
		r = mfd_stream_put_u8(s, vm->serial_last);
	return r;
}

static int serial_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct vm *vm = opaque;
	uint64_t bytes, laps;
	int r;

	(void)version_id;
	(void)errp;
	r = mfd_stream_get_be64(s, &bytes);
	if (r == 0)
		r = mfd_stream_get_be64(s, &laps);
	if (r == 0)
		r = mfd_stream_get_u8(s, &vm->serial_last);
	if (r == 0) {
		atomic_store(&vm->serial_bytes, bytes);
		atomic_store(&vm->serial_laps, laps);
	}
	return r;
}

/* ---- hooks ---------------------------------------------------------------------- */

static int hook_vm_stop(void *opaque, mfd_error **errp)
{
	(void)errp;
	vm_pause(opaque);
	return 0;
}

static int hook_vm_start(void *opaque, mfd_error **errp)
{
	struct vm *vm = opaque;

	(void)errp;
	/* incoming --paused (QEMU's -S): the state is in place, the guest waits
	 * for `cont`, so it can be inspected (dump) exactly as it arrived. */
	if (!vm->start_paused)
		vm_resume(vm);
	return 0;
}

static int hook_log_start(void *opaque, mfd_error **errp)
{
	return vm_dirty_log(opaque, true, errp);
}

static void hook_log_stop(void *opaque)
{
	mfd_error *err = NULL;

	if (vm_dirty_log(opaque, false, &err) < 0) {
		fprintf(stderr, "%s\n", mfd_error_message(err));
		mfd_error_free(err);
	}
}

static int hook_dirty_sync(void *opaque, unsigned block, void *cookie, uint64_t *bitmap,
			   uint64_t npages, mfd_error **errp)
{
	(void)cookie;
	return vm_dirty_sync(opaque, block, bitmap, npages, errp);
}

/* Manual protection: KVM_CLEAR_DIRTY_LOG just before the library reads the
 * range; the library never asks for it once the vCPU is stopped. */
static int hook_dirty_clear(void *opaque, unsigned block, void *cookie, uint64_t first,
			    uint64_t npages, const uint64_t *mask, mfd_error **errp)
{
	(void)cookie;
	return vm_dirty_clear(opaque, block, first, npages, mask, errp);
}

/* Ring mode: each sync round starts by collecting the ring into the
 * library's tracker (mfd_ram_mark_dirty()); there is no bitmap to fetch. */
static int hook_ring_reap(void *opaque, uint64_t round, mfd_error **errp)
{
	(void)round;
	return vm_dirty_reap(opaque, errp);
}

static void hook_throttle(void *opaque, int percent)
{
	vm_throttle(opaque, percent);
}

int vm_register(struct vm *vm, mfd_migration *m, bool incoming, mfd_error **errp)
{
	static const mfd_save_handlers cpu_ops = {
		.size = sizeof(mfd_save_handlers),
		.save_state = cpu_save,
		.load_state = cpu_load,
	};
	static const mfd_save_handlers serial_ops = {
		.size = sizeof(mfd_save_handlers),
		.save_state = serial_save,
		.load_state = serial_load,
	};
	mfd_vmm_hooks hooks = {
		.size = sizeof(mfd_vmm_hooks),
		.vm_stop = hook_vm_stop,
		.vm_start = hook_vm_start,
		.dirty_log_start = hook_log_start,
		.dirty_log_stop = hook_log_stop,
		.dirty_sync = vm->dirty_mode == VM_DIRTY_RING ? NULL : hook_dirty_sync,
		.throttle = hook_throttle,
		.dirty_sync_begin = vm->dirty_mode == VM_DIRTY_RING ? hook_ring_reap : NULL,
		.dirty_clear = vm->dirty_mode == VM_DIRTY_MANUAL ? hook_dirty_clear : NULL,
	};
	int r = mfd_migration_set_identity(m, "minivmm-pc-1", errp);

	vm->mig = m;	/* where the ring's entries go */

	/* Block i is slot i: the hooks' block index is the KVM slot number.  The
	 * destination's RAM was just mapped and nothing wrote it: fresh. */
	for (unsigned i = 0; r == 0 && i < vm->nslots; i++) {
		const struct vm_slot *sl = &vm->slots[i];
		struct mfd_ram_block_desc d = {
			.size = sizeof(d),
			.flags = (sl->fd >= 0 ? MFD_RAM_SHARED : 0) | (incoming ? MFD_RAM_FRESH : 0),
			.name = sl->name,
			.host = sl->host,
			.length = sl->size,
			.page_size = 4096,
			.fd = sl->fd,
			.cookie = (void *)sl,
		};

		r = mfd_ram_block_register(m, &d, errp);
		if (r > 0)
			r = 0;
	}
	if (r == 0)
		r = mfd_register_live(m, "cpu", 0, 1, &cpu_ops, vm, errp);
	if (r == 0)
		r = mfd_register_live(m, "serial", 0, 1, &serial_ops, vm, errp);
	if (r == 0)
		r = mfd_migration_set_hooks(m, &hooks, vm, errp);
	return r;
}
