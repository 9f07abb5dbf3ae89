/* SPDX-License-Identifier: MIT */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/testlib.h"

static mfd_migration *new_migration(void)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	return m;
}

START_TEST(register_and_unregister)
{
	mfd_migration *m = new_migration();
	struct fake_dev a, b;
	mfd_error *err = NULL;
	uint32_t inst;

	fake_dev_init(&a, "cpu", false, 8, 1);
	fake_dev_init(&b, "cpu", false, 8, 2);
	fake_register(m, &a, 0, 1);
	ck_assert_int_eq(mfd_register_live(m, "cpu", 0, 1, &fake_nonlive_ops, &b, &err),
			 MFD_EEXIST);
	ck_assert_mfd_error(err, MFD_EEXIST, "section 'cpu' instance 0 is already registered");
	fake_register(m, &b, 1, 1);
	ck_assert_int_eq(mfd_section_instance(m, "cpu", 1, &inst), 0);
	ck_assert_uint_eq(inst, 1);
	ck_assert_int_eq(mfd_section_instance(m, "cpu", 2, &inst), MFD_ENOENT);
	ck_assert_int_eq(mfd_unregister(m, "cpu", 0), 0);
	ck_assert_int_eq(mfd_unregister(m, "cpu", 0), MFD_ENOENT);
	ck_assert_int_eq(mfd_section_instance(m, "cpu", 0, &inst), 0);
	ck_assert_uint_eq(inst, 1);
	/* The freed slot can be registered again. */
	fake_register(m, &a, 0, 1);
	mfd_migration_free(m);
	mfd_migration_free(NULL);
}
END_TEST

START_TEST(instance_any_picks_next_free)
{
	mfd_migration *m = new_migration();
	struct fake_dev d[3];
	uint32_t inst;

	for (int i = 0; i < 3; i++)
		fake_dev_init(&d[i], "virtio-net", false, 4, (unsigned)i);
	fake_register(m, &d[0], 5, 1);
	fake_register(m, &d[1], MFD_INSTANCE_ANY, 1);
	fake_register(m, &d[2], MFD_INSTANCE_ANY, 1);
	ck_assert_int_eq(mfd_section_instance(m, "virtio-net", 1, &inst), 0);
	ck_assert_uint_eq(inst, 6);
	ck_assert_int_eq(mfd_section_instance(m, "virtio-net", 2, &inst), 0);
	ck_assert_uint_eq(inst, 7);
	mfd_migration_free(m);
}
END_TEST

START_TEST(bad_registrations)
{
	mfd_migration *m = new_migration();
	mfd_error *err = NULL;
	mfd_save_handlers ops = fake_nonlive_ops;
	char longname[300];

	ck_assert_int_eq(mfd_register_live(m, "", 0, 1, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "1 to 255 bytes, '' has 0");
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	ck_assert_int_eq(mfd_register_live(m, longname, 0, 1, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "has 299");
	ops.size = 4;
	ck_assert_int_eq(mfd_register_live(m, "dev", 0, 1, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "section 'dev': struct mfd_save_handlers of 4 bytes "
			    "is smaller than its first layout");
	memset(&ops, 0, sizeof(ops));
	ops.size = sizeof(mfd_save_handlers);
	ck_assert_int_eq(mfd_register_live(m, "dev", 0, 1, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "neither save_state");
	ops = fake_live_ops;
	ops.save_setup = NULL;
	ck_assert_int_eq(mfd_register_live(m, "ram", 0, 4, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "needs save_setup");
	ck_assert_int_eq(mfd_register_live(NULL, "x", 0, 1, &fake_nonlive_ops, NULL, &err),
			 MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL argument");
	mfd_migration_free(m);
}
END_TEST

/*
 * The size-versioned tables (docs/abi.md): an older program's smaller table
 * is read up to its size, a newer program's larger one is accepted while it
 * leaves what this library does not know at zero.
 */
START_TEST(size_versioned_tables)
{
	/* The layout of ABI 1's first release: one byte past switchover_ack_needed. */
	const size_t handlers_first = offsetof(mfd_save_handlers, switchover_ack_needed) +
				      sizeof(void (*)(void));
	const size_t hooks_first = offsetof(mfd_vmm_hooks, state_changed) + sizeof(void (*)(void));
	struct {
		mfd_save_handlers ops;
		uint64_t newer[2];
	} big_ops = { .ops = fake_nonlive_ops };
	struct {
		mfd_vmm_hooks hooks;
		uint64_t newer[2];
	} big_hooks = { .hooks = { .size = sizeof(big_hooks) } };
	mfd_vmm_hooks hooks = { .size = sizeof(hooks) };
	mfd_migration *m = new_migration();
	mfd_save_handlers ops = fake_nonlive_ops;
	mfd_error *err = NULL;
	char want[200];

	/* The first layout's size is enough. */
	ops.size = (uint32_t)handlers_first;
	ck_assert_ok(mfd_register_live(m, "old", 0, 1, &ops, NULL, &err), err);
	/* Below it: refused, naming both sizes. */
	ops.size = (uint32_t)handlers_first - 8;
	ck_assert_int_eq(mfd_register_live(m, "short", 0, 1, &ops, NULL, &err), MFD_EINVAL);
	snprintf(want, sizeof(want), "struct mfd_save_handlers of %zu bytes is smaller than its "
		 "first layout (%zu bytes)", handlers_first - 8, handlers_first);
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_int_eq(mfd_unregister(m, "short", 0), MFD_ENOENT);

	/* Larger, zero past the library's struct: a newer program not using its
	 * new members. */
	big_ops.ops.size = sizeof(big_ops);
	ck_assert_ok(mfd_register_live(m, "newer", 0, 1, &big_ops.ops, NULL, &err), err);
	/* Larger with a member set: refused, naming the first non-zero byte. */
	big_ops.newer[1] = 1;
	ck_assert_int_eq(mfd_register_live(m, "newest", 0, 1, &big_ops.ops, NULL, &err),
			 MFD_ENOTSUP);
	snprintf(want, sizeof(want), "non-zero byte at offset %zu",
		 offsetof(__typeof__(big_ops), newer[1]));
	ck_assert_mfd_error(err, MFD_ENOTSUP, want);
	/* An uninitialized size is not scanned. */
	ops.size = 0xdeadbeef;
	ck_assert_int_eq(mfd_register_live(m, "garbage", 0, 1, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "not a plausible size");

	/* The same rule for the VMM's hooks. */
	ck_assert_ok(mfd_migration_set_hooks(m, &hooks, NULL, &err), err);
	hooks.size = (uint32_t)hooks_first;
	ck_assert_ok(mfd_migration_set_hooks(m, &hooks, NULL, &err), err);
	hooks.size = 8;
	ck_assert_int_eq(mfd_migration_set_hooks(m, &hooks, NULL, &err), MFD_EINVAL);
	snprintf(want, sizeof(want), "mfd_migration_set_hooks: struct mfd_vmm_hooks of 8 bytes "
		 "is smaller than its first layout (%zu bytes); set size = sizeof(struct "
		 "mfd_vmm_hooks) (%zu bytes in this library)", hooks_first, sizeof(hooks));
	ck_assert_mfd_error(err, MFD_EINVAL, want);
	ck_assert_ok(mfd_migration_set_hooks(m, &big_hooks.hooks, NULL, &err), err);
	big_hooks.newer[0] = 0x100;
	ck_assert_int_eq(mfd_migration_set_hooks(m, &big_hooks.hooks, NULL, &err), MFD_ENOTSUP);
	snprintf(want, sizeof(want), "non-zero byte at offset %zu",
		 offsetof(__typeof__(big_hooks), newer[0]) + 1);
	ck_assert_mfd_error(err, MFD_ENOTSUP, want);
	ck_assert_int_eq(mfd_migration_set_hooks(m, NULL, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "NULL argument");
	mfd_migration_free(m);
}
END_TEST

START_TEST(identity_bounds)
{
	mfd_migration *m = new_migration();
	mfd_error *err = NULL;
	char longid[300];

	ck_assert_ok(mfd_migration_set_identity(m, "minivmm-pc-1", &err), err);
	ck_assert_int_eq(mfd_migration_set_identity(m, "", &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "identity must be 1 to 255 bytes");
	memset(longid, 'i', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	ck_assert_int_eq(mfd_migration_set_identity(m, longid, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "has 299");
	mfd_migration_free(m);
}
END_TEST

Suite *suite_registry(void)
{
	Suite *s = suite_create("registry");
	TCase *tc = tcase_create("sections");

	tcase_add_test(tc, register_and_unregister);
	tcase_add_test(tc, instance_any_picks_next_free);
	tcase_add_test(tc, bad_registrations);
	tcase_add_test(tc, identity_bounds);
	tcase_add_test(tc, size_versioned_tables);
	suite_add_tcase(s, tc);
	return s;
}
