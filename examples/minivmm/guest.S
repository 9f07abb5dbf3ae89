/* SPDX-License-Identifier: MIT */
/*
 * guest.S - minivmm's guest: a raw 512-byte PC boot sector that switches to
 * 64-bit long mode and dirties its working set forever (the a-b workload).
 *
 * Build (GNU as through gcc's preprocessor, flat binary linked at 0x7c00):
 *   cc -c -o guest.o guest.S
 *   ld -m elf_x86_64 -Ttext=0x7c00 --oformat=binary -e start -o guest.bin guest.o
 * guest.bin is exactly 512 bytes and ends with 0x55 0xAA.
 *
 * Entry: 16-bit real mode at CS:IP = 0000:7c00, any other register content,
 * interrupts in any state.  No BIOS service is used.
 *
 * Parameter block at image offset 480 (PARAMS below), little-endian u32s,
 * read at run time from 0x7c00 + 480, patched by `minivmm mkimage`:
 *   +0  magic 0x504D564D ("MVMP")
 *   +4  version 1
 *   +8  low_end_mib    working set [1 MiB, low_end_mib MiB), at most 3072
 *   +12 high_end_mib   second range [4096 MiB, high_end_mib MiB) when > 4096
 *   +16 delay          spin-loop iterations after each page (0: full speed)
 *   +20..29 reserved, 0
 *
 * Status page at physical 0x9000: u64 0x9008 = 0x534D564D ("MVMS") once the
 * loop runs in ring 3; u64 0x9000 = completed laps, stored after every lap.
 * After each lap the guest writes "L\n" to COM1 (port 0x3f8).
 *
 * Why ring 3: under nested KVM the guest's real-mode and ring-0 code may be
 * emulated instruction by instruction while ring-3 code runs natively.  Ring
 * 0 therefore does only the minimum: zero two page-table pages, map the first
 * 2 MiB, enter long mode and iretq to CPL 3 with IOPL 3 (so `out`
 * works there) and IF = 0.  Ring 3 then maps the rest of the working set
 * itself, with 1 GiB pages above the first GiB when CPUID 0x80000001 EDX bit
 * 26 says so, 2 MiB pages otherwise (every entry has U/S, so ring 3 may write
 * the tables).  It only ever
 * fills entries that were not present, and a CPU caches no translation
 * through a not-present entry, so no TLB flush is needed.
 *
 * Memory used below 1 MiB: stack 0x7bd8-0x7c00 (ring 0) and 0x7ff8-0x8000
 * (ring 3), this sector, the status words 0x9000-0x900f, and page tables from
 * 0x10000: PML4 0x10000, PDPT 0x11000, with 2 MiB pages one page directory
 * per GiB from 0x12000.  Nothing above 1 MiB outside the working set.
 */

#define PARAMS		480
#define P_MAGIC		0x504D564D
#define STATUS		0x9000
#define S_MAGIC		0x534D564D
#define PML4		0x10000
#define PDPT		0x11000
#define PD0		0x12000
#define PTE_TABLE	0x07	/* present, writable, user */
#define PTE_LARGE	0xe7	/* present, writable, user, accessed, dirty, PS */
#define COM1		0x3f8
#define SEL_CODE0	0x08
#define SEL_CODE3	(0x18 | 3)
#define SEL_DATA3	(0x20 | 3)

	.text
	.globl	start

	.code16
start:
	cli
	cld
	xorw	%ax, %ax
	movw	%ax, %ds

	/* A20 through the system control port; never write bit 0 (reset). */
	inb	$0x92, %al
	orb	$2, %al
	andb	$0xfe, %al
	outb	%al, $0x92

	/*
	 * Zero PDPT and PD0 (ring 3 adds entries there without a TLB flush),
	 * then map the first 2 MiB: enough for this code, the stacks, the
	 * status page and the page tables.
	 */
	movw	$(PML4 >> 4), %ax
	movw	%ax, %es
	movw	$(PDPT - PML4), %di
	xorl	%eax, %eax
	movw	$(2 * 4096 / 4), %cx
	rep stosl
	movl	$(PDPT | PTE_TABLE), %es:0
	movl	$(PD0 | PTE_TABLE), %es:(PDPT - PML4)
	movl	$PTE_LARGE, %es:(PD0 - PML4)

	lgdtl	gdt
	movl	$0x20, %eax		/* CR4.PAE */
	movl	%eax, %cr4
	movl	$PML4, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx	/* EFER.LME */
	movl	$0x100, %eax
	xorl	%edx, %edx
	wrmsr
	movl	$0x80000001, %eax	/* CR0.PG | CR0.PE */
	movl	%eax, %cr0
	ljmp	$SEL_CODE0, $long64

	.code64
long64:
	movl	$0x7c00, %esp		/* ring-0 stack, 40 bytes used */
	pushq	$SEL_DATA3
	pushq	$0x8000			/* ring-3 stack (unused but for calls) */
	pushq	$0x3002			/* IOPL 3, IF 0 */
	pushq	$SEL_CODE3
	pushq	$ring3
	iretq

	/* ---- CPL 3 from here on ---- */
ring3:
	movl	$0x80000001, %eax	/* EDX bit 26: 1 GiB pages */
	cpuid
	movl	$(start + PARAMS), %ebp
	movl	8(%rbp), %r8d		/* low_end_mib */
	movl	12(%rbp), %r9d		/* high_end_mib */
	movl	16(%rbp), %r10d		/* delay */
	cmpl	$4096, %r9d
	ja	1f
	xorl	%r9d, %r9d		/* no high range */
1:
	/* ESI = GiB to map: ceil(max(low_end, high_end) / 1024), at least 1. */
	movl	%r8d, %esi
	cmpl	%r9d, %esi
	cmovbl	%r9d, %esi
	addl	$1023, %esi
	shrl	$10, %esi
	jnz	1f
	incl	%esi
1:
	/*
	 * 2 MiB pages: PD entries [1, 512 * gib), PDPT[j] -> PD0 + 4096 j.
	 * 1 GiB pages: PD0 entries [1, 512), PDPT[j] = j GiB.
	 */
	movl	$(PD0 | PTE_TABLE), %r11d
	movb	$12, %cl
	movl	%esi, %ebx
	shll	$9, %ebx
	btl	$26, %edx
	jnc	1f
	movl	$PTE_LARGE, %r11d
	movb	$30, %cl
	movl	$512, %ebx
1:	movl	$1, %edi
2:	movq	%rdi, %rax
	shlq	$21, %rax
	orb	$PTE_LARGE, %al
	movq	%rax, PD0(,%rdi,8)
	incl	%edi
	cmpl	%ebx, %edi
	jb	2b
	movl	$1, %edi
3:	cmpl	%esi, %edi
	jae	4f
	movq	%rdi, %rax
	shlq	%cl, %rax
	addq	%r11, %rax
	movq	%rax, PDPT(,%rdi,8)
	incl	%edi
	jmp	3b
4:
	shlq	$20, %r8		/* ends in bytes */
	shlq	$20, %r9
	movl	$STATUS, %ebp
	andq	$0, (%rbp)
	movq	$S_MAGIC, 8(%rbp)
	movw	$COM1, %dx

lap:
	movl	$0x100000, %edi
	movq	%r8, %rbx
	call	sweep
	testq	%r9, %r9
	jz	1f
	xorl	%edi, %edi
	btsq	$32, %rdi
	movq	%r9, %rbx
	call	sweep
1:	incq	(%rbp)
	movb	$'L', %al
	outb	%al, %dx
	movb	$'\n', %al
	outb	%al, %dx
	jmp	lap

	/* Pages [RDI, RBX): +1 at offset 0, then `delay` spins. */
sweep:
	cmpq	%rbx, %rdi
	jae	3f
1:	incq	(%rdi)
	movl	%r10d, %ecx
	testl	%ecx, %ecx
	jz	2f
4:	decl	%ecx
	jnz	4b
2:	addq	$4096, %rdi
	cmpq	%rbx, %rdi
	jb	1b
3:	ret

	/* The GDTR (limit, base) sits in the null descriptor's slot. */
	.p2align 3
gdt:
	.word	gdt_end - gdt - 1
	.long	gdt
	.word	0
	.quad	0x00af9a000000ffff	/* 0x08 64-bit code, ring 0 */
	.quad	0x00cf92000000ffff	/* 0x10 data, ring 0 */
	.quad	0x00affa000000ffff	/* 0x18 64-bit code, ring 3 */
	.quad	0x00cff2000000ffff	/* 0x20 data, ring 3 */
gdt_end:

	.org	PARAMS
params:
	.long	P_MAGIC
	.long	1		/* version */
	.long	256		/* low_end_mib */
	.long	0		/* high_end_mib */
	.long	0		/* delay */
	.fill	10, 1, 0	/* reserved */
	.org	510
	.byte	0x55, 0xaa
