/* SPDX-License-Identifier: MIT */
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
	ops.abi_version = 99;
	ck_assert_int_eq(mfd_register_live(m, "dev", 0, 1, &ops, NULL, &err), MFD_EINVAL);
	ck_assert_mfd_error(err, MFD_EINVAL, "abi_version 99");
	memset(&ops, 0, sizeof(ops));
	ops.abi_version = MFD_SAVE_HANDLERS_ABI;
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
	suite_add_tcase(s, tc);
	return s;
}
