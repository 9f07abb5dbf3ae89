/* SPDX-License-Identifier: MIT */
/*
 * The postcopy destination's page placement, white box: pcd_place_run()
 * places a run of pushed pages with as few UFFDIO_COPY calls as it can, and
 * a page already in place inside the run must neither stop the run nor be
 * overwritten.  Two ways a page can be there: the received bitmap knows it
 * (placed by pcd_place(), as the preempt channel does), or only the kernel
 * does (the preempt channel placed it between the bitmap look and the ioctl:
 * UFFDIO_COPY then stops there with EAGAIN and reports the page with
 * EEXIST).  The end-to-end suite cannot time the second; here the page is
 * made present before the range is registered, behind the bitmap's back.
 *
 * Needs userfaultfd: skipped with a message otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/internal.h"
#include "core/migration.h"
#include "tests/lib/testlib.h"

#define PS 4096u
#define PAGES 16u

struct pcfix {
	mfd_migration *m;
	struct mfd_engine *e;
	uint8_t *ram, *data;
};

/*
 * A destination of one 16-page block, every page discarded (missing); the
 * pages in @present (a bit per page) then made present behind the bitmap's
 * back (0xee bytes), and the block registered.  False (the test skips)
 * without userfaultfd.
 */
static bool pcfix_init(struct pcfix *f, uint32_t present)
{
	mfd_error *err = NULL;

	if (!test_have_uffd("pcdest"))
		return false;
	f->ram = mmap(NULL, PAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(f->ram, MAP_FAILED);
	f->data = malloc(PAGES * PS);
	ck_assert_ptr_nonnull(f->data);
	for (unsigned p = 0; p < PAGES; p++)
		memset(f->data + p * PS, (int)(p + 1), PS);
	ck_assert_ok(mfd_migration_new(&f->m, &err), err);
	ck_assert_ok(mfd_ram_block_add(f->m, "pc.ram", f->ram, PAGES * PS, PS, &err), err);
	f->e = calloc(1, sizeof(*f->e));
	ck_assert_ptr_nonnull(f->e);
	f->e->m = f->m;
	f->e->incoming = true;
	f->e->dst.ram_ready = true;	/* the table is final (no vm_create) */
	atomic_init(&f->e->pc, PC_NONE);
	pthread_mutex_init(&f->e->lock, NULL);
	/* As POSTCOPY_ADVISE does (eng_lh_advise): userfaultfd, then the step. */
	ck_assert_ok(pcd_new(f->e, &err), err);
	ck_assert_ok(pc_move(f->e, PC_ADVISED, &err), err);
	ck_assert_ok(pcd_discard(f->e, 0, 0, PAGES * PS, &err), err);
	ck_assert_uint_eq(pcd_missing(f->e), PAGES);
	for (unsigned p = 0; p < PAGES; p++)
		if (present & (1u << p))
			memset(f->ram + p * PS, 0xee, PS);
	ck_assert_ok(pcd_listen(f->e, &err), err);
	return true;
}

static void pcfix_free(struct pcfix *f)
{
	pcd_free(f->e);
	pthread_mutex_destroy(&f->e->lock);
	free(f->e);
	mfd_migration_free(f->m);
	munmap(f->ram, PAGES * PS);
	free(f->data);
}

START_TEST(run_around_pages_in_place)
{
	struct pcfix f;
	mfd_error *err = NULL;

	/* Pages 5 and 11 present, unknown to the bitmap: the kernel refuses them. */
	if (!pcfix_init(&f, 1u << 5 | 1u << 11))
		return;
	/* Known to the bitmap: the run splits around it. */
	ck_assert_ok(pcd_place(f.e, 0, 8 * PS, f.data + 8 * PS, &err), err);
	ck_assert_uint_eq(pcd_missing(f.e), PAGES - 1);

	ck_assert_ok(pcd_place_run(f.e, 0, 0, f.data, PAGES, &err), err);
	/* Every page counted in place (reading a missing one would fault). */
	ck_assert_uint_eq(pcd_missing(f.e), 0);
	for (unsigned p = 0; p < PAGES; p++) {
		const uint8_t *want = f.data + p * PS;
		uint8_t there[PS];

		if (p == 5 || p == 11) {
			memset(there, 0xee, PS);
			want = there;
		}
		ck_assert_msg(memcmp(f.ram + p * PS, want, PS) == 0, "page %u differs", p);
	}
	/* A second push of the same run places nothing and changes nothing. */
	memset(f.data, 0x55, PAGES * PS);
	ck_assert_ok(pcd_place_run(f.e, 0, 0, f.data, PAGES, &err), err);
	ck_assert_uint_eq(f.ram[0], 1);
	ck_assert_uint_eq(f.ram[5 * PS], 0xee);
	pcfix_free(&f);
}
END_TEST

/* A run that starts and ends on pages in place, and one of a single page. */
START_TEST(run_edges)
{
	struct pcfix f;
	mfd_error *err = NULL;

	/* Pages 2 and 9 present: the first and the last of the run below. */
	if (!pcfix_init(&f, 1u << 2 | 1u << 9))
		return;
	ck_assert_ok(pcd_place_run(f.e, 0, 2 * PS, f.data + 2 * PS, 8, &err), err);
	ck_assert_uint_eq(pcd_missing(f.e), PAGES - 8);
	ck_assert_ok(pcd_place_run(f.e, 0, 15 * PS, f.data + 15 * PS, 1, &err), err);
	ck_assert_uint_eq(pcd_missing(f.e), PAGES - 9);
	ck_assert_uint_eq(f.ram[2 * PS], 0xee);
	ck_assert_uint_eq(f.ram[9 * PS], 0xee);
	for (unsigned p = 3; p < 9; p++)
		ck_assert_msg(memcmp(f.ram + p * PS, f.data + p * PS, PS) == 0, "page %u", p);
	ck_assert_int_eq(memcmp(f.ram + 15 * PS, f.data + 15 * PS, PS), 0);
	/* The rest is still missing: place it so the fault thread has nothing
	 * to ask for when the pages are read or unmapped. */
	ck_assert_ok(pcd_place_run(f.e, 0, 0, f.data, PAGES, &err), err);
	ck_assert_uint_eq(pcd_missing(f.e), 0);
	pcfix_free(&f);
}
END_TEST

/* Zero pages (the kernel's zero page) and single pages go through the same
 * rules: a page in place is left alone, each page counts once. */
START_TEST(single_and_zero_pages)
{
	struct pcfix f;
	mfd_error *err = NULL;

	if (!pcfix_init(&f, 1u << 3))
		return;
	ck_assert_ok(pcd_place(f.e, 0, 3 * PS, NULL, &err), err);	/* present: kept */
	ck_assert_ok(pcd_place(f.e, 0, 4 * PS, NULL, &err), err);
	ck_assert_ok(pcd_place(f.e, 0, 5 * PS, f.data + 5 * PS, &err), err);
	ck_assert_ok(pcd_place(f.e, 0, 5 * PS, f.data + 6 * PS, &err), err);	/* twice: kept */
	ck_assert_uint_eq(pcd_missing(f.e), PAGES - 3);
	ck_assert_uint_eq(f.ram[3 * PS], 0xee);
	for (unsigned i = 0; i < PS; i++)
		ck_assert_uint_eq(f.ram[4 * PS + i], 0);
	ck_assert_int_eq(memcmp(f.ram + 5 * PS, f.data + 5 * PS, PS), 0);
	ck_assert_ok(pcd_place_run(f.e, 0, 0, f.data, PAGES, &err), err);
	ck_assert_uint_eq(pcd_missing(f.e), 0);
	ck_assert_uint_eq(f.ram[4 * PS], 0);
	pcfix_free(&f);
}
END_TEST

/* The kernel refuses a copy for a reason other than a page in place (here:
 * the range is no longer registered): a clear error, nothing counted. */
START_TEST(run_refused_is_an_error)
{
	struct pcfix f;
	mfd_error *err = NULL;

	if (!pcfix_init(&f, 0))
		return;
	pcd_stop(f.e);
	ck_assert_int_eq(pcd_place_run(f.e, 0, 4 * PS, f.data + 4 * PS, 3, &err), MFD_EIO);
	ck_assert_mfd_error(err, MFD_EIO, "postcopy: cannot place pages 0x4000+12288 of block "
			    "'pc.ram'");
	ck_assert_uint_eq(pcd_missing(f.e), PAGES);
	pcfix_free(&f);
}
END_TEST

Suite *suite_pcdest(void)
{
	Suite *s = suite_create("pcdest");
	TCase *tc = tcase_create("pcdest");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, run_around_pages_in_place);
	tcase_add_test(tc, run_edges);
	tcase_add_test(tc, single_and_zero_pages);
	tcase_add_test(tc, run_refused_is_an_error);
	suite_add_tcase(s, tc);
	return s;
}
