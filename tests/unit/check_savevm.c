/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/savevm.h"
#include "tests/lib/testlib.h"

struct vm {
	mfd_migration *m;
	struct fake_dev ram, gpu, cpu, serial;
};

/* Two live sections and two non-live ones, registered the same on both sides. */
static void vm_init(struct vm *vm, bool source)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_new(&vm->m, &err), err);
	fake_dev_init(&vm->ram, "ram", true, 1000, source ? 11 : 0);
	fake_dev_init(&vm->gpu, "gpu", true, 333, source ? 12 : 0);
	fake_dev_init(&vm->cpu, "cpu", false, 200, source ? 13 : 0);
	fake_dev_init(&vm->serial, "serial", false, 16, source ? 14 : 0);
	vm->gpu.chunk = 1000;	/* done after one round */
	fake_register(vm->m, &vm->ram, 0, 4);
	fake_register(vm->m, &vm->cpu, 0, 2);
	fake_register(vm->m, &vm->gpu, 0, 1);
	fake_register(vm->m, &vm->serial, 0, 1);
}

static void vm_assert_loaded(struct vm *src, struct vm *dst)
{
	fake_assert_same(&src->ram, &dst->ram);
	fake_assert_same(&src->gpu, &dst->gpu);
	fake_assert_same(&src->cpu, &dst->cpu);
	fake_assert_same(&src->serial, &dst->serial);
}

START_TEST(round_trip_through_memory)
{
	struct vm src, dst;
	mfd_error *err = NULL;
	size_t len;
	void *buf;

	vm_init(&src, true);
	vm_init(&dst, false);
	fake_log_reset();
	buf = save_to_mem(src.m, &len);
	/* Registration order, QEMU's phase order; ram needs 10 rounds of 100 bytes. */
	ck_assert_int_eq(src.ram.calls[FC_SAVE_ITERATE], 10);
	ck_assert_int_eq(src.gpu.calls[FC_SAVE_ITERATE], 10);
	ck_assert_int_eq(src.ram.calls[FC_SAVE_CLEANUP], 1);
	ck_assert_int_eq(src.cpu.calls[FC_SAVE_CLEANUP], 0);
	const char *head = "ram:save_prepare cpu:save_prepare gpu:save_prepare "
			   "serial:save_prepare ram:save_setup gpu:save_setup ram:iterate "
			   "gpu:iterate ";

	ck_assert_msg(strncmp(fake_log, head, strlen(head)) == 0, "order: %s", fake_log);
	ck_assert_ptr_nonnull(strstr(fake_log, "ram:complete_precopy gpu:complete_precopy "
					       "cpu:save_state serial:save_state ram:save_cleanup "
					       "gpu:save_cleanup"));
	ck_assert_ok(load_from_mem(dst.m, buf, len, &err), err);
	vm_assert_loaded(&src, &dst);
	ck_assert_int_eq(dst.ram.last_version, 4);
	ck_assert_int_eq(dst.cpu.last_version, 2);
	ck_assert_int_eq(dst.ram.calls[FC_LOAD_SETUP], 1);
	ck_assert_int_eq(dst.ram.calls[FC_LOAD_CLEANUP], 1);
	/* START + 10 PART + END */
	ck_assert_int_eq(dst.ram.calls[FC_LOAD_STATE], 12);
	ck_assert_int_eq(dst.cpu.calls[FC_LOAD_STATE], 1);
	free(buf);
	mfd_migration_free(src.m);
	mfd_migration_free(dst.m);
}
END_TEST

struct saver {
	mfd_migration *m;
	mfd_channel *ch;
	int result;
	mfd_error *err;
};

static void *save_thread(void *arg)
{
	struct saver *sv = arg;

	sv->result = mfd_savevm(sv->m, sv->ch, &sv->err);
	return NULL;
}

START_TEST(round_trip_through_socket_and_file)
{
	struct vm src, dst, dst2;
	struct saver sv = { 0 };
	mfd_channel *rd = NULL, *f = NULL;
	mfd_error *err = NULL;
	char path[] = "/tmp/mfd-savevm-XXXXXX";
	pthread_t t;
	int fd;

	vm_init(&src, true);
	vm_init(&dst, false);
	sv.m = src.m;
	ck_assert_ok(mfd_channel_socketpair(&sv.ch, &rd, &err), err);
	ck_assert_int_eq(pthread_create(&t, NULL, save_thread, &sv), 0);
	ck_assert_ok(mfd_loadvm(dst.m, rd, &err), err);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_ok(sv.result, sv.err);
	vm_assert_loaded(&src, &dst);
	mfd_channel_free(sv.ch);
	mfd_channel_free(rd);

	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_ok(mfd_channel_new_fd(fd, MFD_CHANNEL_OWN_FD, NULL, &f, &err), err);
	ck_assert_ok(mfd_savevm(src.m, f, &err), err);
	mfd_channel_free(f);
	vm_init(&dst2, false);
	ck_assert_ok(mfd_channel_open_file(path, MFD_CHANNEL_READ, &f, &err), err);
	ck_assert_ok(mfd_loadvm(dst2.m, f, &err), err);
	vm_assert_loaded(&src, &dst2);
	mfd_channel_free(f);
	unlink(path);
	mfd_migration_free(src.m);
	mfd_migration_free(dst.m);
	mfd_migration_free(dst2.m);
}
END_TEST

/* Phase helpers the engine will call, driven one by one. */
static mfd_stream *mem_stream(mfd_channel **ch)
{
	mfd_error *err = NULL;
	mfd_stream *s = NULL;

	ck_assert_ok(mfd_channel_new_mem_writer(0, ch, &err), err);
	ck_assert_ok(mfd_stream_new(*ch, MFD_STREAM_WRITE, &s, &err), err);
	return s;
}

START_TEST(golden_header)
{
	static const uint8_t golden[] = {
		0x51, 0x45, 0x56, 0x4d, 0x00, 0x00, 0x00, 0x03,		/* magic, version */
		0x07, 0x00, 0x00, 0x00, 0x08, 'm', 'i', 'n', 'i', 'v', 'm', 'm', '1',
	};
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	mfd_channel *ch;
	mfd_stream *s = mem_stream(&ch);
	const void *data;
	size_t len;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_migration_set_identity(m, "minivmm1", &err), err);
	ck_assert_int_eq(savevm_header(m, s), 0);
	ck_assert_int_eq(mfd_stream_flush(s), 0);
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);
	ck_assert_uint_eq(len, sizeof(golden));
	ck_assert_int_eq(memcmp(data, golden, len), 0);
	mfd_stream_free(s);
	mfd_channel_free(ch);
	mfd_migration_free(m);
}
END_TEST

static int four_bytes_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	return mfd_stream_put_be32(s, 0xcafef00d);
}

static int four_bytes_load(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	(void)errp;
	(void)version_id;
	return mfd_stream_get_be32(s, opaque);
}

START_TEST(golden_full_stream_bytes)
{
	static const uint8_t golden[] = {
		0x51, 0x45, 0x56, 0x4d, 0x00, 0x00, 0x00, 0x03,
		0x07, 0x00, 0x00, 0x00, 0x0a, 'l', 'i', 'b', 'm', 'u', 'l', 't', 'i', 'f', 'd',
		0x04, 0x00, 0x00, 0x00, 0x00,
		0x03, 'd', 'e', 'v', 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x01,
		0xca, 0xfe, 0xf0, 0x0d,
		0x7e, 0x00, 0x00, 0x00, 0x00,
		0x00,
	};
	const mfd_save_handlers ops = {
		.size = sizeof(mfd_save_handlers),
		.save_state = four_bytes_save,
		.load_state = four_bytes_load,
	};
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	uint32_t loaded = 0;
	size_t len;
	void *buf;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_register_live(m, "dev", 0, 1, &ops, &loaded, &err), err);
	buf = save_to_mem(m, &len);
	ck_assert_uint_eq(len, sizeof(golden));
	ck_assert_int_eq(memcmp(buf, golden, len), 0);
	ck_assert_ok(load_from_mem(m, golden, sizeof(golden), &err), err);
	ck_assert_uint_eq(loaded, 0xcafef00d);
	free(buf);
	mfd_migration_free(m);
}
END_TEST

START_TEST(iterate_reports_progress_and_pending)
{
	struct vm vm;
	mfd_channel *ch;
	mfd_stream *s = mem_stream(&ch);
	mfd_error *err = NULL;
	uint64_t must, can;

	vm_init(&vm, true);
	vm.ram.postcopy = true;
	ck_assert_ok(savevm_prepare(vm.m, &err), err);
	ck_assert_int_eq(savevm_header(vm.m, s), 0);
	ck_assert_ok(savevm_setup(vm.m, s, &err), err);
	savevm_pending_estimate(vm.m, &must, &can);
	ck_assert_uint_eq(must, 333);	/* gpu */
	ck_assert_uint_eq(can, 1000);	/* ram, postcopiable */
	savevm_pending_exact(vm.m, &must, &can);
	ck_assert_uint_eq(must, 333 + 2);	/* exact adds one per live section */
	ck_assert_int_eq(savevm_iterate(vm.m, s, false, &err), 0);	/* ram wants more */
	savevm_pending_estimate(vm.m, &must, &can);
	ck_assert_uint_eq(must, 0);
	ck_assert_uint_eq(can, 900);
	/* A section inactive for this round is skipped, not counted as busy. */
	vm.ram.iterate_active = false;
	ck_assert_int_eq(savevm_iterate(vm.m, s, false, &err), 1);
	ck_assert_int_eq(vm.ram.calls[FC_SAVE_ITERATE], 1);
	vm.ram.iterate_active = true;
	/* In postcopy only postcopiable sections iterate. */
	ck_assert_int_eq(savevm_iterate(vm.m, s, true, &err), 0);
	ck_assert_int_eq(vm.gpu.calls[FC_SAVE_ITERATE], 2);
	ck_assert_int_eq(vm.ram.calls[FC_SAVE_ITERATE], 2);
	savevm_cleanup(vm.m);
	ck_assert_int_eq(vm.ram.calls[FC_SAVE_CLEANUP], 1);
	ck_assert_int_eq(vm.cpu.calls[FC_SAVE_CLEANUP], 0);
	savevm_cleanup(vm.m);	/* idempotent */
	ck_assert_int_eq(vm.ram.calls[FC_SAVE_CLEANUP], 1);
	mfd_stream_free(s);
	mfd_channel_free(ch);
	mfd_migration_free(vm.m);
}
END_TEST

START_TEST(postcopy_phases)
{
	struct vm src, dst;
	mfd_channel *ch;
	mfd_stream *s = mem_stream(&ch);
	mfd_error *err = NULL;
	bool can_switch;
	const void *data;
	size_t len;

	vm_init(&src, true);
	vm_init(&dst, false);
	src.ram.postcopy = true;
	src.gpu.hold_switchover = true;
	ck_assert_int_eq(savevm_switchover_ack_needed(src.m), false);
	src.cpu.switchover_ack = true;
	ck_assert_int_eq(savevm_switchover_ack_needed(src.m), true);
	ck_assert_ok(savevm_prepare(src.m, &err), err);
	ck_assert_int_eq(savevm_header(src.m, s), 0);
	ck_assert_ok(savevm_setup(src.m, s, &err), err);
	ck_assert_int_eq(savevm_iterate(src.m, s, false, &err), 0);
	ck_assert_ok(savevm_postcopy_prepare(src.m, s, &can_switch, &err), err);
	ck_assert(!can_switch);
	src.gpu.hold_switchover = false;
	ck_assert_ok(savevm_postcopy_prepare(src.m, s, &can_switch, &err), err);
	ck_assert(can_switch);
	/* Precopy completion in postcopy: gpu ends, ram (postcopiable) does not,
	 * and non-live state is left to the package. */
	ck_assert_ok(savevm_complete_precopy(src.m, s, true, &err), err);
	ck_assert_int_eq(src.gpu.calls[FC_SAVE_COMPLETE_PRECOPY], 1);
	ck_assert_int_eq(src.ram.calls[FC_SAVE_COMPLETE_PRECOPY], 0);
	ck_assert_int_eq(src.cpu.calls[FC_SAVE_STATE], 0);
	ck_assert_ok(savevm_save_nonlive(src.m, s, &err), err);
	ck_assert_int_eq(savevm_iterate(src.m, s, true, &err), 0);
	ck_assert_ok(savevm_complete_postcopy(src.m, s, &err), err);
	ck_assert_int_eq(src.ram.calls[FC_SAVE_COMPLETE_POSTCOPY], 1);
	ck_assert_int_eq(src.gpu.calls[FC_SAVE_COMPLETE_POSTCOPY], 0);
	ck_assert_int_eq(savevm_eof(s), 0);
	ck_assert_int_eq(mfd_stream_flush(s), 0);
	savevm_cleanup(src.m);
	/* The destination loads the whole thing. */
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);
	ck_assert_ok(load_from_mem(dst.m, data, len, &err), err);
	vm_assert_loaded(&src, &dst);
	ck_assert_ok(savevm_resume_prepare(src.m, &err), err);
	ck_assert_int_eq(src.ram.calls[FC_RESUME_PREPARE], 1);
	mfd_stream_free(s);
	mfd_channel_free(ch);
	mfd_migration_free(src.m);
	mfd_migration_free(dst.m);
}
END_TEST

START_TEST(inactive_section_is_not_sent)
{
	struct vm src, dst;
	mfd_error *err = NULL;
	size_t len;
	void *buf;

	vm_init(&src, true);
	vm_init(&dst, false);
	src.gpu.active = false;
	src.serial.active = false;
	buf = save_to_mem(src.m, &len);
	ck_assert_int_eq(src.gpu.calls[FC_SAVE_SETUP], 0);
	ck_assert_int_eq(src.serial.calls[FC_SAVE_STATE], 0);
	ck_assert_ok(load_from_mem(dst.m, buf, len, &err), err);
	ck_assert_int_eq(dst.gpu.calls[FC_LOAD_STATE], 0);
	ck_assert_int_eq(dst.serial.calls[FC_LOAD_STATE], 0);
	fake_assert_same(&src.ram, &dst.ram);
	free(buf);
	mfd_migration_free(src.m);
	mfd_migration_free(dst.m);
}
END_TEST

START_TEST(save_handler_failures_name_section_and_phase)
{
	static const struct {
		enum fake_call call;
		const char *dev, *phase;
		bool silent;
	} cases[] = {
		{ FC_SAVE_PREPARE, "cpu", "save_prepare", false },
		{ FC_SAVE_SETUP, "gpu", "save_setup", false },
		{ FC_SAVE_ITERATE, "ram", "save_live_iterate", false },
		{ FC_SAVE_COMPLETE_PRECOPY, "gpu", "save_live_complete_precopy", false },
		{ FC_SAVE_STATE, "serial", "save_state", false },
		{ FC_SAVE_STATE, "cpu", "save_state", true },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct vm vm;
		struct fake_dev *d;
		mfd_channel *ch = NULL;
		mfd_error *err = NULL;
		char want[200];

		vm_init(&vm, true);
		d = !strcmp(cases[i].dev, "cpu")   ? &vm.cpu
		    : !strcmp(cases[i].dev, "gpu") ? &vm.gpu
		    : !strcmp(cases[i].dev, "ram") ? &vm.ram
						   : &vm.serial;
		d->fail_call = (int)cases[i].call;
		d->fail_without_message = cases[i].silent;
		ck_assert_ok(mfd_channel_new_mem_writer(0, &ch, &err), err);
		ck_assert_int_eq(mfd_savevm(vm.m, ch, &err), cases[i].silent ? -1 : MFD_EHANDLER);
		snprintf(want, sizeof(want), "section '%s' instance 0: %s: %s", cases[i].dev,
			 cases[i].phase,
			 cases[i].silent ? "failed with code -1" : cases[i].dev);
		ck_assert_mfd_error(err, cases[i].silent ? -1 : MFD_EHANDLER, want);
		/* Sections whose setup ran are always cleaned up. */
		ck_assert_int_eq(vm.ram.calls[FC_SAVE_CLEANUP],
				 cases[i].call == FC_SAVE_PREPARE ? 0 : 1);
		mfd_channel_free(ch);
		mfd_migration_free(vm.m);
	}
}
END_TEST

START_TEST(save_to_full_channel_reports_channel_error)
{
	struct vm vm;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;

	vm_init(&vm, true);
	ck_assert_ok(mfd_channel_new_mem_writer(100, &ch, &err), err);
	ck_assert_int_eq(mfd_savevm(vm.m, ch, &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "limit of 100 bytes");
	ck_assert_int_eq(vm.ram.calls[FC_SAVE_CLEANUP], 1);
	mfd_channel_free(ch);
	mfd_migration_free(vm.m);
}
END_TEST

START_TEST(load_handler_failures)
{
	struct vm src;
	size_t len;
	void *buf;

	vm_init(&src, true);
	buf = save_to_mem(src.m, &len);
	for (int c = 0; c < 3; c++) {
		struct vm dst;
		mfd_error *err = NULL;

		vm_init(&dst, false);
		if (c == 0) {
			dst.serial.fail_call = FC_LOAD_SETUP;
			ck_assert_int_eq(load_from_mem(dst.m, buf, len, &err), MFD_EHANDLER);
			ck_assert_mfd_error(err, MFD_EHANDLER,
					    "section 'serial' instance 0: load_setup: serial");
			/* Earlier sections were set up, so they are cleaned up. */
			ck_assert_int_eq(dst.ram.calls[FC_LOAD_CLEANUP], 1);
			ck_assert_int_eq(dst.serial.calls[FC_LOAD_CLEANUP], 1);
		} else if (c == 1) {
			dst.cpu.fail_call = FC_LOAD_STATE;
			ck_assert_int_eq(load_from_mem(dst.m, buf, len, &err), MFD_EHANDLER);
			ck_assert_mfd_error(err, MFD_EHANDLER,
					    "section 'cpu' instance 0 (SECTION_FULL, version 2): "
					    "cpu refuses load_state");
			ck_assert_int_eq(dst.cpu.calls[FC_LOAD_CLEANUP], 1);
		} else {
			/* A handler that reads one byte too few is caught by the footer. */
			dst.gpu.skip_read = true;
			ck_assert_int_eq(load_from_mem(dst.m, buf, len, &err), MFD_EBADFOOTER);
			ck_assert_mfd_error(err, MFD_EBADFOOTER,
					    "section 'gpu' (id 2): expected footer 0x7e");
		}
		mfd_migration_free(dst.m);
	}
	free(buf);
	mfd_migration_free(src.m);
}
END_TEST

START_TEST(older_section_version_is_accepted)
{
	struct vm src, dst;
	mfd_error *err = NULL;
	mfd_migration *m = NULL;
	size_t len;
	void *buf;

	vm_init(&src, true);
	/* The destination knows a newer cpu format (3) than the source writes (2). */
	ck_assert_ok(mfd_migration_new(&m, &err), err);
	fake_dev_init(&dst.ram, "ram", true, 0, 0);
	fake_dev_init(&dst.cpu, "cpu", false, 0, 0);
	fake_dev_init(&dst.gpu, "gpu", true, 0, 0);
	fake_dev_init(&dst.serial, "serial", false, 0, 0);
	fake_register(m, &dst.ram, 0, 4);
	fake_register(m, &dst.cpu, 0, 3);
	fake_register(m, &dst.gpu, 0, 1);
	fake_register(m, &dst.serial, 0, 1);
	buf = save_to_mem(src.m, &len);
	ck_assert_ok(load_from_mem(m, buf, len, &err), err);
	ck_assert_int_eq(dst.cpu.last_version, 2);
	free(buf);
	mfd_migration_free(m);
	mfd_migration_free(src.m);
}
END_TEST

static int errno_style_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)s;
	(void)opaque;
	(void)errp;
	return -22;	/* a handler returning -EINVAL instead of an mfd code */
}

START_TEST(foreign_handler_codes_become_ehandler)
{
	const mfd_save_handlers ops = {
		.size = sizeof(mfd_save_handlers),
		.save_state = errno_style_save,
	};
	mfd_migration *m = NULL;
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_register_live(m, "odd", 0, 1, &ops, NULL, &err), err);
	ck_assert_ok(mfd_channel_new_mem_writer(0, &ch, &err), err);
	ck_assert_int_eq(mfd_savevm(m, ch, &err), MFD_EHANDLER);
	ck_assert_mfd_error(err, MFD_EHANDLER,
			    "section 'odd' instance 0: save_state: failed with code -22");
	mfd_channel_free(ch);
	mfd_migration_free(m);
}
END_TEST

START_TEST(live_parts_get_the_version_of_their_start)
{
	struct vm src;
	struct fake_dev d_ram, d_cpu, d_gpu, d_serial;
	mfd_migration *m = NULL;
	mfd_error *err = NULL;
	size_t len;
	void *buf;

	vm_init(&src, true);
	ck_assert_ok(mfd_migration_new(&m, &err), err);
	fake_dev_init(&d_ram, "ram", true, 0, 0);
	fake_dev_init(&d_cpu, "cpu", false, 0, 0);
	fake_dev_init(&d_gpu, "gpu", true, 0, 0);
	fake_dev_init(&d_serial, "serial", false, 0, 0);
	fake_register(m, &d_ram, 0, 9);	/* newer than the source's 4 */
	fake_register(m, &d_cpu, 0, 2);
	fake_register(m, &d_gpu, 0, 1);
	fake_register(m, &d_serial, 0, 1);
	buf = save_to_mem(src.m, &len);
	ck_assert_ok(load_from_mem(m, buf, len, &err), err);
	/* The last payload seen was END; it must carry the START's version. */
	ck_assert_int_eq(d_ram.last_version, 4);
	fake_assert_same(&src.ram, &d_ram);
	free(buf);
	mfd_migration_free(m);
	mfd_migration_free(src.m);
}
END_TEST

/* ---- commands through the loader's hooks ---------------------------------- */

struct hook_log {
	int open_rp, listen, run, resume, colo, switchover;
	uint32_t ping;
	bool advise_has_summary;
	uint64_t summary, target_page;
	char discard_block[256];
	uint64_t ranges[8];
	size_t nranges;
	char bitmap_block[256];
	int fail_ping;
};

static int h_open_rp(void *o, mfd_error **errp)
{
	(void)errp;
	((struct hook_log *)o)->open_rp++;
	return 0;
}

static int h_ping(void *o, uint32_t v, mfd_error **errp)
{
	struct hook_log *h = o;

	if (h->fail_ping)
		return mfd_error_set(errp, MFD_EIO, "return path is broken");
	h->ping = v;
	return 1;	/* a positive value from any hook but RUN must not end the load */
}

static int h_advise(void *o, bool has, uint64_t summary, uint64_t tps, mfd_error **errp)
{
	struct hook_log *h = o;

	(void)errp;
	h->advise_has_summary = has;
	h->summary = summary;
	h->target_page = tps;
	return 0;
}

static int h_listen(void *o, mfd_error **errp)
{
	(void)errp;
	((struct hook_log *)o)->listen++;
	return 0;
}

static int h_run(void *o, mfd_error **errp)
{
	(void)errp;
	((struct hook_log *)o)->run++;
	return MFD_LOADVM_QUIT;
}

static int h_discard(void *o, const char *block, const uint64_t *ranges, size_t n,
		     mfd_error **errp)
{
	struct hook_log *h = o;

	(void)errp;
	snprintf(h->discard_block, sizeof(h->discard_block), "%s", block);
	h->nranges = n;
	memcpy(h->ranges, ranges, (n < 4 ? n : 4) * 2 * sizeof(uint64_t));
	return 0;
}

static int h_resume(void *o, mfd_error **errp)
{
	(void)errp;
	((struct hook_log *)o)->resume++;
	return 0;
}

static int h_colo(void *o, mfd_error **errp)
{
	(void)errp;
	((struct hook_log *)o)->colo++;
	return 0;
}

static int h_bitmap(void *o, const char *block, mfd_error **errp)
{
	(void)errp;
	snprintf(((struct hook_log *)o)->bitmap_block, 256, "%s", block);
	return 0;
}

static int h_switchover(void *o, mfd_error **errp)
{
	(void)errp;
	((struct hook_log *)o)->switchover++;
	return 0;
}

static int load_with_hooks(mfd_migration *m, const void *data, size_t len,
			   struct hook_log *log, mfd_error **errp)
{
	const struct mfd_loadvm_hooks hooks = {
		.opaque = log,
		.open_return_path = h_open_rp,
		.ping = h_ping,
		.postcopy_advise = h_advise,
		.postcopy_listen = h_listen,
		.postcopy_run = h_run,
		.postcopy_ram_discard = h_discard,
		.enable_colo = h_colo,
		.postcopy_resume = h_resume,
		.recv_bitmap = h_bitmap,
		.switchover_start = h_switchover,
	};
	mfd_channel *ch = NULL;
	mfd_stream *s = NULL;
	int r;

	ck_assert_ok(mfd_channel_new_mem_reader(data, len, &ch, errp), *errp);
	ck_assert_ok(mfd_stream_new(ch, MFD_STREAM_READ, &s, errp), *errp);
	r = loadvm_state(m, s, &hooks, errp);
	mfd_stream_free(s);
	mfd_channel_free(ch);
	return r;
}

START_TEST(every_command_round_trips)
{
	struct vm src, dst;
	mfd_channel *ch, *pch;
	mfd_stream *s = mem_stream(&ch), *ps = mem_stream(&pch);
	mfd_error *err = NULL;
	struct hook_log log = { 0 };
	const uint64_t ranges[] = { 0x1000, 0x2000, 0x100000, 0x3000 };
	const void *data, *pdata;
	size_t len, plen;

	vm_init(&src, true);
	vm_init(&dst, false);
	src.ram.postcopy = true;
	ck_assert_ok(savevm_prepare(src.m, &err), err);
	ck_assert_int_eq(savevm_header(src.m, s), 0);
	ck_assert_int_eq(savevm_send_open_return_path(s), 0);
	ck_assert_int_eq(savevm_send_ping(s, 1), 0);
	ck_assert_int_eq(savevm_send_postcopy_advise(s, 0x201000, 4096), 0);
	ck_assert_int_eq(savevm_send_enable_colo(s), 0);
	ck_assert_ok(savevm_setup(src.m, s, &err), err);
	ck_assert_int_eq(savevm_iterate(src.m, s, false, &err), 0);
	ck_assert_int_eq(savevm_send_switchover_start(s), 0);
	ck_assert_int_eq(savevm_send_recv_bitmap(s, "pc.ram"), 0);
	ck_assert_int_eq(savevm_send_postcopy_resume(s), 0);
	ck_assert_int_eq(savevm_send_postcopy_ram_discard(s, "pc.ram", ranges, 2), 0);
	ck_assert_ok(savevm_complete_precopy(src.m, s, true, &err), err);
	/* The package: device state, LISTEN, RUN. */
	ck_assert_ok(savevm_save_nonlive(src.m, ps, &err), err);
	ck_assert_int_eq(savevm_send_postcopy_listen(ps), 0);
	ck_assert_int_eq(savevm_send_postcopy_run(ps), 0);
	ck_assert_int_eq(mfd_stream_flush(ps), 0);
	ck_assert_int_eq(mfd_channel_mem_contents(pch, &pdata, &plen), 0);
	ck_assert_int_eq(savevm_send_packaged(s, pdata, (uint32_t)plen), 0);
	ck_assert_int_eq(mfd_stream_flush(s), 0);
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, &len), 0);

	ck_assert_ok(load_with_hooks(dst.m, data, len, &log, &err), err);
	ck_assert_int_eq(log.open_rp, 1);
	ck_assert_uint_eq(log.ping, 1);
	ck_assert(log.advise_has_summary);
	ck_assert_uint_eq(log.summary, 0x201000);
	ck_assert_uint_eq(log.target_page, 4096);
	ck_assert_int_eq(log.colo, 1);
	ck_assert_int_eq(log.switchover, 1);
	ck_assert_str_eq(log.bitmap_block, "pc.ram");
	ck_assert_int_eq(log.resume, 1);
	ck_assert_str_eq(log.discard_block, "pc.ram");
	ck_assert_uint_eq(log.nranges, 2);
	ck_assert_uint_eq(log.ranges[2], 0x100000);
	ck_assert_uint_eq(log.ranges[3], 0x3000);
	ck_assert_int_eq(log.listen, 1);
	ck_assert_int_eq(log.run, 1);
	fake_assert_same(&src.cpu, &dst.cpu);
	fake_assert_same(&src.serial, &dst.serial);
	ck_assert_int_eq(dst.gpu.calls[FC_LOAD_STATE], 3);	/* START, PART, END */

	/* A failing hook keeps its own words, prefixed with the command. */
	log.fail_ping = 1;
	ck_assert_int_eq(load_with_hooks(dst.m, data, len, &log, &err), MFD_EIO);
	ck_assert_mfd_error(err, MFD_EIO, "command PING at byte 28: return path is broken");
	savevm_cleanup(src.m);
	mfd_stream_free(s);
	mfd_stream_free(ps);
	mfd_channel_free(ch);
	mfd_channel_free(pch);
	mfd_migration_free(src.m);
	mfd_migration_free(dst.m);
}
END_TEST

START_TEST(discard_command_limits)
{
	mfd_channel *ch;
	mfd_stream *s = mem_stream(&ch);
	mfd_error *err = NULL;
	uint64_t r[2] = { 0, 4096 };
	char name[300];

	memset(name, 'b', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	ck_assert_uint_eq(savevm_discard_ranges_max(6), (65535 - 9) / 16);
	ck_assert_int_eq(savevm_send_postcopy_ram_discard(s, "pc.ram", r, 0), MFD_ETOOBIG);
	ck_assert_int_eq(mfd_stream_error(s, &err), MFD_ETOOBIG);
	ck_assert_mfd_error(err, MFD_ETOOBIG, "0 ranges for block 'pc.ram'");
	mfd_stream_free(s);
	mfd_channel_free(ch);
	s = mem_stream(&ch);
	ck_assert_int_eq(savevm_send_recv_bitmap(s, name), MFD_EINVAL);
	mfd_stream_free(s);
	mfd_channel_free(ch);
}
END_TEST

Suite *suite_savevm(void)
{
	Suite *s = suite_create("savevm");
	TCase *tc = tcase_create("section-stream");

	tcase_add_test(tc, round_trip_through_memory);
	tcase_add_test(tc, round_trip_through_socket_and_file);
	tcase_add_test(tc, golden_header);
	tcase_add_test(tc, golden_full_stream_bytes);
	tcase_add_test(tc, iterate_reports_progress_and_pending);
	tcase_add_test(tc, postcopy_phases);
	tcase_add_test(tc, inactive_section_is_not_sent);
	tcase_add_test(tc, save_handler_failures_name_section_and_phase);
	tcase_add_test(tc, save_to_full_channel_reports_channel_error);
	tcase_add_test(tc, load_handler_failures);
	tcase_add_test(tc, older_section_version_is_accepted);
	tcase_add_test(tc, every_command_round_trips);
	tcase_add_test(tc, foreign_handler_codes_become_ehandler);
	tcase_add_test(tc, live_parts_get_the_version_of_their_start);
	tcase_add_test(tc, discard_command_limits);
	suite_add_tcase(s, tc);
	return s;
}
