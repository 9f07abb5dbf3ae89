/* SPDX-License-Identifier: MIT */
/*
 * The vCPU's state as the "cpu" section (version 1), field by field in big
 * endian so the format does not depend on struct layout:
 *
 *   u8   run state: 0 runnable, 1 halted
 *   regs      18 x be64: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
 *   sregs     8 segments (cs ds es fs gs ss tr ldt): be64 base, be32 limit,
 *             be16 selector, u8 type present dpl db s l g avl unusable;
 *             gdt, idt: be64 base, be16 limit; be64 cr0 cr2 cr3 cr4 cr8
 *             efer apic_base; 4 x be64 interrupt bitmap
 *   fpu       u8 kind (1 = XSAVE area, 2 = legacy FPU), be32 length, bytes
 *             (the architectural XSAVE layout, or struct kvm_fpu)
 *   xcrs      be32 count (<= 16), then be32 index, be64 value each
 *   msrs      be32 count (<= MSRS_MAX), then be32 index, be64 value each
 *   events    exception: u8 injected nr has_error_code pending, be32 code;
 *             interrupt: u8 injected nr soft shadow; nmi: u8 injected
 *             pending masked; be32 sipi_vector; be32 flags; smi: u8 smm
 *             pending inside_nmi latched_init; u8 triple_fault pending;
 *             u8 exception_has_payload; be64 exception_payload
 *   debug     be64 db0..db3 dr6 dr7
 *
 * Every count and length is checked before use; the kernel validates the
 * values themselves when they are set.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vm.h"

#define FPU_XSAVE 1
#define FPU_LEGACY 2

/* The MSRs a long-mode guest may depend on, those KVM can read first. */
static const uint32_t msr_list[] = {
	0x00000010,	/* TSC */
	0x00000174,	/* SYSENTER_CS */
	0x00000175,	/* SYSENTER_ESP */
	0x00000176,	/* SYSENTER_EIP */
	0x00000277,	/* PAT */
	0xc0000081,	/* STAR */
	0xc0000082,	/* LSTAR */
	0xc0000083,	/* CSTAR */
	0xc0000084,	/* FMASK */
	0xc0000102,	/* KERNEL_GS_BASE */
	0xc0000103,	/* TSC_AUX */
};
#define MSRS_MAX (sizeof(msr_list) / sizeof(msr_list[0]))

/* struct kvm_msrs ends in a flexible array: stack room for MSRS_MAX entries. */
#define MSR_SPACE (sizeof(struct kvm_msrs) + MSRS_MAX * sizeof(struct kvm_msr_entry))

static int kvm_fail(mfd_error **errp, const char *what)
{
	return mfd_error_set(errp, MFD_EIO, "minivmm: %s: %s", what, strerror(errno));
}

#define PUT(expr)                     \
	do {                          \
		int r_ = (expr);      \
		if (r_ < 0)           \
			return r_;    \
	} while (0)

/* The kernel's __u64 is not always uint64_t's type: read through these. */
static int g64(mfd_stream *s, __u64 *dst)
{
	uint64_t v;
	int r = mfd_stream_get_be64(s, &v);

	*dst = r < 0 ? 0 : v;
	return r;
}

static int g32(mfd_stream *s, __u32 *dst)
{
	uint32_t v;
	int r = mfd_stream_get_be32(s, &v);

	*dst = r < 0 ? 0 : v;
	return r;
}

static int g16(mfd_stream *s, __u16 *dst)
{
	uint16_t v;
	int r = mfd_stream_get_be16(s, &v);

	*dst = r < 0 ? 0 : v;
	return r;
}

static int put_seg(mfd_stream *s, const struct kvm_segment *g)
{
	const uint8_t b[] = { g->type, g->present, g->dpl, g->db, g->s, g->l, g->g, g->avl,
			      g->unusable };

	PUT(mfd_stream_put_be64(s, g->base));
	PUT(mfd_stream_put_be32(s, g->limit));
	PUT(mfd_stream_put_be16(s, g->selector));
	return mfd_stream_put_buf(s, b, sizeof(b));
}

static int get_seg(mfd_stream *s, struct kvm_segment *g)
{
	uint8_t b[9];

	PUT(g64(s, &g->base));
	PUT(g32(s, &g->limit));
	PUT(g16(s, &g->selector));
	PUT(mfd_stream_get_buf(s, b, sizeof(b)));
	g->type = b[0];
	g->present = b[1];
	g->dpl = b[2];
	g->db = b[3];
	g->s = b[4];
	g->l = b[5];
	g->g = b[6];
	g->avl = b[7];
	g->unusable = b[8];
	return 0;
}

static void reg_ptrs(struct kvm_regs *r, __u64 **p)
{
	__u64 *list[] = { &r->rax, &r->rbx, &r->rcx, &r->rdx, &r->rsi, &r->rdi, &r->rsp,
			     &r->rbp, &r->r8, &r->r9, &r->r10, &r->r11, &r->r12, &r->r13,
			     &r->r14, &r->r15, &r->rip, &r->rflags };

	memcpy(p, list, sizeof(list));
}

#define NREGS 18

int vm_save_cpu(struct vm *vm, mfd_stream *s, mfd_error **errp)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dbg;
	_Alignas(struct kvm_msrs) unsigned char msr_space[MSR_SPACE];
	struct kvm_msrs *msrs = (struct kvm_msrs *)msr_space;
	__u64 *rp[NREGS];
	int n, r;
	bool halted;

	if (ioctl(vm->vcpu_fd, KVM_GET_REGS, &regs) < 0)
		return kvm_fail(errp, "KVM_GET_REGS");
	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return kvm_fail(errp, "KVM_GET_SREGS");
	pthread_mutex_lock(&vm->lock);
	halted = vm->state == VCPU_HALTED;
	pthread_mutex_unlock(&vm->lock);
	PUT(mfd_stream_put_u8(s, halted));

	reg_ptrs(&regs, rp);
	for (int i = 0; i < NREGS; i++)
		PUT(mfd_stream_put_be64(s, *rp[i]));

	const struct kvm_segment *segs[] = { &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs,
					     &sregs.gs, &sregs.ss, &sregs.tr, &sregs.ldt };
	for (int i = 0; i < 8; i++)
		PUT(put_seg(s, segs[i]));
	PUT(mfd_stream_put_be64(s, sregs.gdt.base));
	PUT(mfd_stream_put_be16(s, sregs.gdt.limit));
	PUT(mfd_stream_put_be64(s, sregs.idt.base));
	PUT(mfd_stream_put_be16(s, sregs.idt.limit));
	const uint64_t cr[] = { sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8,
				sregs.efer, sregs.apic_base };
	for (size_t i = 0; i < sizeof(cr) / sizeof(cr[0]); i++)
		PUT(mfd_stream_put_be64(s, cr[i]));
	for (int i = 0; i < 4; i++)
		PUT(mfd_stream_put_be64(s, sregs.interrupt_bitmap[i]));

	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0) {
		struct kvm_xsave xs;

		if (ioctl(vm->vcpu_fd, KVM_GET_XSAVE, &xs) < 0)
			return kvm_fail(errp, "KVM_GET_XSAVE");
		PUT(mfd_stream_put_u8(s, FPU_XSAVE));
		PUT(mfd_stream_put_be32(s, sizeof(xs.region)));
		PUT(mfd_stream_put_buf(s, xs.region, sizeof(xs.region)));
	} else {
		struct kvm_fpu fpu;

		if (ioctl(vm->vcpu_fd, KVM_GET_FPU, &fpu) < 0)
			return kvm_fail(errp, "KVM_GET_FPU");
		PUT(mfd_stream_put_u8(s, FPU_LEGACY));
		PUT(mfd_stream_put_be32(s, sizeof(fpu)));
		PUT(mfd_stream_put_buf(s, &fpu, sizeof(fpu)));
	}

	memset(&xcrs, 0, sizeof(xcrs));
	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0 &&
	    ioctl(vm->vcpu_fd, KVM_GET_XCRS, &xcrs) < 0)
		return kvm_fail(errp, "KVM_GET_XCRS");
	if (xcrs.nr_xcrs > KVM_MAX_XCRS)
		xcrs.nr_xcrs = KVM_MAX_XCRS;
	PUT(mfd_stream_put_be32(s, xcrs.nr_xcrs));
	for (uint32_t i = 0; i < xcrs.nr_xcrs; i++) {
		PUT(mfd_stream_put_be32(s, xcrs.xcrs[i].xcr));
		PUT(mfd_stream_put_be64(s, xcrs.xcrs[i].value));
	}

	memset(msr_space, 0, sizeof(msr_space));
	msrs->nmsrs = MSRS_MAX;
	for (size_t i = 0; i < MSRS_MAX; i++)
		msrs->entries[i].index = msr_list[i];
	n = ioctl(vm->vcpu_fd, KVM_GET_MSRS, msrs);	/* stops at the first it cannot read */
	if (n < 0)
		return kvm_fail(errp, "KVM_GET_MSRS");
	PUT(mfd_stream_put_be32(s, (uint32_t)n));
	for (int i = 0; i < n; i++) {
		PUT(mfd_stream_put_be32(s, msrs->entries[i].index));
		PUT(mfd_stream_put_be64(s, msrs->entries[i].data));
	}

	if (ioctl(vm->vcpu_fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
		return kvm_fail(errp, "KVM_GET_VCPU_EVENTS");
	const uint8_t e1[] = { ev.exception.injected, ev.exception.nr,
			       ev.exception.has_error_code, ev.exception.pending };
	PUT(mfd_stream_put_buf(s, e1, sizeof(e1)));
	PUT(mfd_stream_put_be32(s, ev.exception.error_code));
	const uint8_t e2[] = { ev.interrupt.injected, ev.interrupt.nr, ev.interrupt.soft,
			       ev.interrupt.shadow, ev.nmi.injected, ev.nmi.pending,
			       ev.nmi.masked };
	PUT(mfd_stream_put_buf(s, e2, sizeof(e2)));
	PUT(mfd_stream_put_be32(s, ev.sipi_vector));
	PUT(mfd_stream_put_be32(s, ev.flags));
	const uint8_t e3[] = { ev.smi.smm, ev.smi.pending, ev.smi.smm_inside_nmi,
			       ev.smi.latched_init, ev.triple_fault.pending,
			       ev.exception_has_payload };
	PUT(mfd_stream_put_buf(s, e3, sizeof(e3)));
	PUT(mfd_stream_put_be64(s, ev.exception_payload));

	if (ioctl(vm->vcpu_fd, KVM_GET_DEBUGREGS, &dbg) < 0)
		return kvm_fail(errp, "KVM_GET_DEBUGREGS");
	for (int i = 0; i < 4; i++)
		PUT(mfd_stream_put_be64(s, dbg.db[i]));
	PUT(mfd_stream_put_be64(s, dbg.dr6));
	r = mfd_stream_put_be64(s, dbg.dr7);
	return r < 0 ? r : 0;
}

static int bad(mfd_error **errp, const char *fmt, unsigned long long v)
{
	char msg[160];

	snprintf(msg, sizeof(msg), fmt, v);
	return mfd_error_set(errp, MFD_EPROTO, "minivmm: cpu section: %s", msg);
}

int vm_load_cpu(struct vm *vm, mfd_stream *s, mfd_error **errp)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_vcpu_events ev;
	struct kvm_debugregs dbg;
	_Alignas(struct kvm_msrs) unsigned char msr_space[MSR_SPACE];
	struct kvm_msrs *msrs = (struct kvm_msrs *)msr_space;
	__u64 *rp[NREGS];
	uint8_t halted, kind;
	uint32_t len, n;
	int r;

	/* Start from what KVM has, so fields this format leaves out stay valid. */
	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return kvm_fail(errp, "KVM_GET_SREGS");
	memset(&regs, 0, sizeof(regs));
	PUT(mfd_stream_get_u8(s, &halted));
	if (halted > 1)
		return bad(errp, "run state %llu is not 0 or 1", halted);
	reg_ptrs(&regs, rp);
	for (int i = 0; i < NREGS; i++)
		PUT(g64(s, rp[i]));

	struct kvm_segment *segs[] = { &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs,
				       &sregs.ss, &sregs.tr, &sregs.ldt };
	for (int i = 0; i < 8; i++)
		PUT(get_seg(s, segs[i]));
	PUT(g64(s, &sregs.gdt.base));
	PUT(g16(s, &sregs.gdt.limit));
	PUT(g64(s, &sregs.idt.base));
	PUT(g16(s, &sregs.idt.limit));
	__u64 *cr[] = { &sregs.cr0, &sregs.cr2, &sregs.cr3, &sregs.cr4, &sregs.cr8,
			   &sregs.efer, &sregs.apic_base };
	for (size_t i = 0; i < sizeof(cr) / sizeof(cr[0]); i++)
		PUT(g64(s, cr[i]));
	for (int i = 0; i < 4; i++)
		PUT(g64(s, &sregs.interrupt_bitmap[i]));

	PUT(mfd_stream_get_u8(s, &kind));
	PUT(mfd_stream_get_be32(s, &len));
	if (kind == FPU_XSAVE) {
		struct kvm_xsave xs;

		if (len != sizeof(xs.region))
			return bad(errp, "XSAVE area of %llu bytes, expected 4096", len);
		memset(&xs, 0, sizeof(xs));
		PUT(mfd_stream_get_buf(s, xs.region, len));
		/* The XCRs come next in the stream but must be set first: keep it. */
		PUT(mfd_stream_get_be32(s, &n));
		if (n > KVM_MAX_XCRS)
			return bad(errp, "%llu XCRs, at most 16", n);
		memset(&xcrs, 0, sizeof(xcrs));
		xcrs.nr_xcrs = n;
		for (uint32_t i = 0; i < n; i++) {
			PUT(g32(s, &xcrs.xcrs[i].xcr));
			PUT(g64(s, &xcrs.xcrs[i].value));
		}
		if (n && ioctl(vm->vcpu_fd, KVM_SET_XCRS, &xcrs) < 0)
			return kvm_fail(errp, "KVM_SET_XCRS");
		if (ioctl(vm->vcpu_fd, KVM_SET_XSAVE, &xs) < 0)
			return kvm_fail(errp, "KVM_SET_XSAVE");
	} else if (kind == FPU_LEGACY) {
		struct kvm_fpu fpu;

		if (len != sizeof(fpu))
			return bad(errp, "FPU state of %llu bytes does not match this host", len);
		PUT(mfd_stream_get_buf(s, &fpu, len));
		if (ioctl(vm->vcpu_fd, KVM_SET_FPU, &fpu) < 0)
			return kvm_fail(errp, "KVM_SET_FPU");
		PUT(mfd_stream_get_be32(s, &n));
		if (n > KVM_MAX_XCRS)
			return bad(errp, "%llu XCRs, at most 16", n);
		memset(&xcrs, 0, sizeof(xcrs));
		xcrs.nr_xcrs = n;
		for (uint32_t i = 0; i < n; i++) {
			PUT(g32(s, &xcrs.xcrs[i].xcr));
			PUT(g64(s, &xcrs.xcrs[i].value));
		}
		if (n && ioctl(vm->vcpu_fd, KVM_SET_XCRS, &xcrs) < 0)
			return kvm_fail(errp, "KVM_SET_XCRS");
	} else {
		return bad(errp, "FPU state kind %llu is unknown", kind);
	}

	PUT(mfd_stream_get_be32(s, &n));
	if (n > MSRS_MAX)
		return bad(errp, "%llu MSRs, more than this VMM saves", n);
	memset(msr_space, 0, sizeof(msr_space));
	msrs->nmsrs = n;
	for (uint32_t i = 0; i < n; i++) {
		PUT(g32(s, &msrs->entries[i].index));
		PUT(g64(s, &msrs->entries[i].data));
		bool known = false;

		for (size_t k = 0; k < MSRS_MAX; k++)
			known |= msrs->entries[i].index == msr_list[k];
		if (!known)
			return bad(errp, "MSR 0x%llx is not one this VMM migrates",
				   msrs->entries[i].index);
	}

	memset(&ev, 0, sizeof(ev));
	uint8_t e1[4], e2[7], e3[6];

	PUT(mfd_stream_get_buf(s, e1, sizeof(e1)));
	PUT(g32(s, &ev.exception.error_code));
	PUT(mfd_stream_get_buf(s, e2, sizeof(e2)));
	PUT(g32(s, &ev.sipi_vector));
	PUT(g32(s, &ev.flags));
	PUT(mfd_stream_get_buf(s, e3, sizeof(e3)));
	PUT(g64(s, &ev.exception_payload));
	ev.exception.injected = e1[0];
	ev.exception.nr = e1[1];
	ev.exception.has_error_code = e1[2];
	ev.exception.pending = e1[3];
	ev.interrupt.injected = e2[0];
	ev.interrupt.nr = e2[1];
	ev.interrupt.soft = e2[2];
	ev.interrupt.shadow = e2[3];
	ev.nmi.injected = e2[4];
	ev.nmi.pending = e2[5];
	ev.nmi.masked = e2[6];
	ev.smi.smm = e3[0];
	ev.smi.pending = e3[1];
	ev.smi.smm_inside_nmi = e3[2];
	ev.smi.latched_init = e3[3];
	ev.triple_fault.pending = e3[4];
	ev.exception_has_payload = e3[5];
	/* Only the flags for fields this format carries, and never SMM. */
	ev.flags &= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
		    KVM_VCPUEVENT_VALID_SHADOW;

	memset(&dbg, 0, sizeof(dbg));
	for (int i = 0; i < 4; i++)
		PUT(g64(s, &dbg.db[i]));
	PUT(g64(s, &dbg.dr6));
	r = g64(s, &dbg.dr7);
	if (r < 0)
		return r;

	if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		return kvm_fail(errp, "KVM_SET_SREGS");
	if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return kvm_fail(errp, "KVM_SET_REGS");
	if (n) {
		r = ioctl(vm->vcpu_fd, KVM_SET_MSRS, msrs);
		if (r < 0)
			return kvm_fail(errp, "KVM_SET_MSRS");
		if (r != (int)n)
			return mfd_error_set(errp, MFD_EIO, "minivmm: KVM refused MSR 0x%x",
					     msrs->entries[r].index);
	}
	if (ioctl(vm->vcpu_fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
		return kvm_fail(errp, "KVM_SET_VCPU_EVENTS");
	if (ioctl(vm->vcpu_fd, KVM_SET_DEBUGREGS, &dbg) < 0)
		return kvm_fail(errp, "KVM_SET_DEBUGREGS");
	pthread_mutex_lock(&vm->lock);
	if (halted) {
		vm->state = VCPU_HALTED;
		snprintf(vm->fail_msg, sizeof(vm->fail_msg), "the guest had halted on the source");
	}
	pthread_mutex_unlock(&vm->lock);
	return 0;
}
