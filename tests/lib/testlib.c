/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

char fake_log[8192];
/* Source and destination may run on two threads at once. */
static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const call_names[FC_COUNT] = {
	"save_prepare", "save_setup", "iterate", "complete_precopy", "complete_postcopy",
	"postcopy_prepare", "save_state", "save_cleanup", "load_setup", "load_state",
	"load_cleanup", "resume_prepare",
};

void fake_log_reset(void)
{
	fake_log[0] = '\0';
}

/* Count and log a call; returns nonzero when this call must fail. */
static int note(struct fake_dev *d, enum fake_call c, mfd_error **errp)
{
	pthread_mutex_lock(&fake_lock);
	size_t len = strlen(fake_log);

	d->calls[c]++;
	snprintf(fake_log + len, sizeof(fake_log) - len, "%s%s:%s", len ? " " : "", d->name,
		 call_names[c]);
	pthread_mutex_unlock(&fake_lock);
	if (d->fail_call != (int)c)
		return 0;
	if (!d->fail_without_message)
		mfd_error_set(errp, MFD_EHANDLER, "%s refuses %s", d->name, call_names[c]);
	return 1;
}

void fake_dev_init(struct fake_dev *d, const char *name, bool live, size_t size, unsigned seed)
{
	memset(d, 0, sizeof(*d));
	snprintf(d->name, sizeof(d->name), "%s", name);
	d->live = live;
	d->size = size;
	d->chunk = 100;
	d->fail_call = -1;
	d->active = true;
	d->iterate_active = true;
	d->extra = 0xa5000000u | seed;
	for (size_t i = 0; i < size; i++)
		d->state[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

static int fake_save_prepare(void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	d->sent = 0;
	return note(d, FC_SAVE_PREPARE, errp) ? (d->fail_without_message ? -1 : MFD_EHANDLER) : 0;
}

#define FAIL_CODE(d) ((d)->fail_without_message ? -1 : MFD_EHANDLER)

static int fake_save_setup(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	if (note(d, FC_SAVE_SETUP, errp))
		return FAIL_CODE(d);
	return mfd_stream_put_be32(s, (uint32_t)d->size);
}

static int put_chunk(mfd_stream *s, struct fake_dev *d, size_t n)
{
	n = n < d->size - d->sent ? n : d->size - d->sent;
	mfd_stream_put_be16(s, (uint16_t)n);
	mfd_stream_put_buf(s, d->state + d->sent, n);
	d->sent += n;
	return mfd_stream_error(s, NULL);
}

static int fake_iterate(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	if (note(d, FC_SAVE_ITERATE, errp))
		return FAIL_CODE(d);
	int r = put_chunk(s, d, d->chunk);

	return r < 0 ? r : d->sent == d->size;
}

static int fake_complete_precopy(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	if (note(d, FC_SAVE_COMPLETE_PRECOPY, errp))
		return FAIL_CODE(d);
	return put_chunk(s, d, d->size);
}

static int fake_complete_postcopy(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	if (note(d, FC_SAVE_COMPLETE_POSTCOPY, errp))
		return FAIL_CODE(d);
	return put_chunk(s, d, d->size);
}

static int fake_postcopy_prepare(mfd_stream *s, void *opaque, bool *can_switchover,
				 mfd_error **errp)
{
	struct fake_dev *d = opaque;

	if (note(d, FC_SAVE_POSTCOPY_PREPARE, errp))
		return FAIL_CODE(d);
	if (d->hold_switchover)
		*can_switchover = false;
	return put_chunk(s, d, 0);
}

static void fake_pending(void *opaque, uint64_t *must, uint64_t *can)
{
	struct fake_dev *d = opaque;
	uint64_t left = d->size - d->sent;

	if (d->postcopy)
		*can = left;
	else
		*must = left;
}

static void fake_pending_exact(void *opaque, uint64_t *must, uint64_t *can)
{
	fake_pending(opaque, must, can);
	/* exact adds one byte of "dirty" state so tests can tell the two apart */
	*must += 1;
}

static bool fake_is_active(void *opaque)
{
	return ((struct fake_dev *)opaque)->active;
}

static bool fake_is_active_iterate(void *opaque)
{
	return ((struct fake_dev *)opaque)->iterate_active;
}

static bool fake_has_postcopy(void *opaque)
{
	return ((struct fake_dev *)opaque)->postcopy;
}

static bool fake_switchover_ack_needed(void *opaque)
{
	return ((struct fake_dev *)opaque)->switchover_ack;
}

static int fake_save_state(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;
	char sub[80];

	if (note(d, FC_SAVE_STATE, errp))
		return FAIL_CODE(d);
	mfd_stream_put_be32(s, (uint32_t)d->size);
	mfd_stream_put_buf(s, d->state, d->size);
	snprintf(sub, sizeof(sub), "%s/extra", d->name);
	mfd_subsection_begin(s, sub, 2);
	return mfd_stream_put_be32(s, d->extra);
}

static void fake_save_cleanup(void *opaque)
{
	note(opaque, FC_SAVE_CLEANUP, NULL);
}

static int fake_load_setup(void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	d->loaded_len = 0;
	d->load_started = false;
	return note(d, FC_LOAD_SETUP, errp) ? FAIL_CODE(d) : 0;
}

static void fake_load_cleanup(void *opaque)
{
	note(opaque, FC_LOAD_CLEANUP, NULL);
}

static int fake_resume_prepare(void *opaque, mfd_error **errp)
{
	struct fake_dev *d = opaque;

	return note(d, FC_RESUME_PREPARE, errp) ? FAIL_CODE(d) : 0;
}

static int fake_load_state(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct fake_dev *d = opaque;
	uint32_t len;
	uint16_t n;
	int r;

	if (note(d, FC_LOAD_STATE, errp))
		return FAIL_CODE(d);
	d->last_version = (int)version_id;
	if (!d->live) {
		char name[256];
		uint32_t ver;

		if ((r = mfd_stream_get_be32(s, &len)) < 0)
			return r;
		if (len > FAKE_STATE_MAX)
			return mfd_error_set(errp, MFD_ETOOBIG, "%s: state of %u bytes", d->name, len);
		if ((r = mfd_stream_get_buf(s, d->loaded, len)) < 0)
			return r;
		d->loaded_len = len;
		while ((r = mfd_subsection_next(s, d->name, name, &ver)) > 0) {
			if ((r = mfd_stream_get_be32(s, &d->loaded_extra)) < 0)
				return r;
		}
		return r;
	}
	/* Live: the first payload is START (the length), later ones are chunks. */
	if (!d->load_started) {
		d->load_started = true;
		if ((r = mfd_stream_get_be32(s, &len)) < 0)
			return r;
		if (len > FAKE_STATE_MAX)
			return mfd_error_set(errp, MFD_ETOOBIG, "%s: state of %u bytes", d->name, len);
		d->expect_len = len;
		return 0;
	}
	if ((r = mfd_stream_get_be16(s, &n)) < 0)
		return r;
	if (n > d->expect_len - d->loaded_len)
		return mfd_error_set(errp, MFD_EPROTO, "%s: chunk of %u bytes past the end", d->name,
				     n);
	if (d->skip_read && n > 0)
		n--;
	r = mfd_stream_get_buf(s, d->loaded + d->loaded_len, n);
	d->loaded_len += n;
	return r;
}

const mfd_save_handlers fake_live_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_prepare = fake_save_prepare,
	.save_setup = fake_save_setup,
	.save_cleanup = fake_save_cleanup,
	.save_live_iterate = fake_iterate,
	.save_live_complete_precopy = fake_complete_precopy,
	.save_live_complete_postcopy = fake_complete_postcopy,
	.save_postcopy_prepare = fake_postcopy_prepare,
	.state_pending_estimate = fake_pending,
	.state_pending_exact = fake_pending_exact,
	.is_active = fake_is_active,
	.is_active_iterate = fake_is_active_iterate,
	.has_postcopy = fake_has_postcopy,
	.load_state = fake_load_state,
	.load_setup = fake_load_setup,
	.load_cleanup = fake_load_cleanup,
	.resume_prepare = fake_resume_prepare,
	.switchover_ack_needed = fake_switchover_ack_needed,
};

const mfd_save_handlers fake_nonlive_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_prepare = fake_save_prepare,
	.save_state = fake_save_state,
	.is_active = fake_is_active,
	.load_state = fake_load_state,
	.load_setup = fake_load_setup,
	.load_cleanup = fake_load_cleanup,
	.switchover_ack_needed = fake_switchover_ack_needed,
};

void fake_register(mfd_migration *m, struct fake_dev *d, uint32_t instance, uint32_t version)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_register_live(m, d->name, instance, version,
				       d->live ? &fake_live_ops : &fake_nonlive_ops, d, &err),
		     err);
}

void fake_assert_same(const struct fake_dev *src, const struct fake_dev *dst)
{
	ck_assert_uint_eq(dst->loaded_len, src->size);
	ck_assert_msg(memcmp(src->state, dst->loaded, src->size) == 0, "%s: state differs",
		      src->name);
	if (!src->live)
		ck_assert_uint_eq(dst->loaded_extra, src->extra);
}

void *save_to_mem(mfd_migration *m, size_t *len)
{
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;
	const void *data;
	void *copy;

	ck_assert_ok(mfd_channel_new_mem_writer(0, &ch, &err), err);
	ck_assert_ok(mfd_savevm(m, ch, &err), err);
	ck_assert_int_eq(mfd_channel_mem_contents(ch, &data, len), 0);
	copy = malloc(*len ? *len : 1);
	ck_assert_ptr_nonnull(copy);
	memcpy(copy, data, *len);
	mfd_channel_free(ch);
	return copy;
}

int load_from_mem(mfd_migration *m, const void *buf, size_t len, mfd_error **errp)
{
	mfd_channel *ch = NULL;
	int r = mfd_channel_new_mem_reader(buf, len, &ch, errp);

	if (r == 0)
		r = mfd_loadvm(m, ch, errp);
	mfd_channel_free(ch);
	return r;
}

static void b_grow(struct bytes *b, size_t n)
{
	if (b->len + n <= b->cap)
		return;
	b->cap = (b->len + n) * 2 + 64;
	b->p = realloc(b->p, b->cap);
	ck_assert_ptr_nonnull(b->p);
}

void b_raw(struct bytes *b, const void *p, size_t n)
{
	b_grow(b, n);
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

void b_u8(struct bytes *b, uint8_t v)
{
	b_raw(b, &v, 1);
}

void b_be16(struct bytes *b, uint16_t v)
{
	uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };

	b_raw(b, x, 2);
}

void b_be32(struct bytes *b, uint32_t v)
{
	b_be16(b, (uint16_t)(v >> 16));
	b_be16(b, (uint16_t)v);
}

void b_be64(struct bytes *b, uint64_t v)
{
	b_be32(b, (uint32_t)(v >> 32));
	b_be32(b, (uint32_t)v);
}

void b_str(struct bytes *b, const char *s)
{
	b_u8(b, (uint8_t)strlen(s));
	b_raw(b, s, strlen(s));
}

void b_header(struct bytes *b)
{
	b_be32(b, 0x5145564d);
	b_be32(b, 3);
	b_u8(b, 0x07);
	b_be32(b, 10);
	b_raw(b, "libmultifd", 10);
}

void b_free(struct bytes *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void ck_assert_ab(const uint8_t *ram, size_t size, size_t page)
{
	int edges = 0;

	for (size_t p = 1; p < size / page; p++) {
		uint8_t prev = ram[(p - 1) * page], cur = ram[p * page];

		if (cur == prev)
			continue;
		ck_assert_msg((uint8_t)(cur + 1) == prev, "page %zu: %u after %u", p, cur, prev);
		edges++;
	}
	ck_assert_int_le(edges, 1);
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

#define STAMP_AT 8
#define STAMP_EVERY 64

void test_fill_page(uint8_t *p, size_t page_size, uint32_t block, uint64_t page, uint32_t pass)
{
	uint64_t h = mix64(page ^ mix64(((uint64_t)block << 32 | pass) + 1));
	uint8_t stamp[16];

	/* A non-zero byte, so that no stamped page is a zero page. */
	memset(p, (int)(h % 255 + 1), page_size);
	memcpy(stamp, &page, 8);
	memcpy(stamp + 8, &block, 4);
	memcpy(stamp + 12, &pass, 4);
	for (size_t off = STAMP_AT; off + sizeof(stamp) <= page_size; off += STAMP_EVERY)
		memcpy(p + off, stamp, sizeof(stamp));
}

void ck_assert_pages_eq(const uint8_t *want, const uint8_t *got, size_t size, size_t page_size)
{
	for (size_t off = 0; off < size; off += page_size) {
		size_t len = size - off < page_size ? size - off : page_size;
		uint64_t held;

		if (memcmp(want + off, got + off, len) == 0)
			continue;
		if (len < STAMP_AT + 8) {
			ck_abort_msg("page %zu differs", off / page_size);
			return;
		}
		memcpy(&held, got + off + STAMP_AT, 8);
		ck_abort_msg("page %zu differs (its stamp names page %llu, byte 0 is %u, "
			     "expected %u)", off / page_size, (unsigned long long)held, got[off],
			     want[off]);
	}
}

uint64_t test_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool test_have_uffd(const char *who)
{
	const char *why = "disabled by MFD_TEST_DISABLE";
	int fd = -1;

	if (!test_cap_disabled("uffd")) {
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
		why = strerror(errno);
	}
	if (fd < 0) {
		test_skip("uffd", "%s: userfaultfd unavailable (%s): run as root or set "
			  "vm.unprivileged_userfaultfd=1", who, why);
		return false;
	}
	close(fd);
	return true;
}

int test_run_tool(char *out, size_t len, bool with_stderr, const char *const *args)
{
	return test_run_program("tools/multifd", out, len, with_stderr, args);
}

int test_run_program(const char *prog, char *out, size_t len, bool with_stderr,
		     const char *const *args)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char tool[4096];
	const char *argv[32];
	int fds[2], status, n = 0;
	size_t have = 0;
	ssize_t got;
	pid_t pid;

	ck_assert_int_lt(snprintf(tool, sizeof(tool), "%s/%s", builddir, prog), (int)sizeof(tool));
	argv[n++] = tool;
	while (*args && n < 31)
		argv[n++] = *args++;
	argv[n] = NULL;
	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int nullfd = open("/dev/null", O_RDWR);

		if (nullfd < 0 || dup2(nullfd, STDIN_FILENO) < 0 || dup2(fds[1], STDOUT_FILENO) < 0 ||
		    dup2(with_stderr ? fds[1] : nullfd, STDERR_FILENO) < 0)
			_exit(126);
		close(fds[0]);
		execv(tool, (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	while (have + 1 < len && (got = read(fds[0], out + have, len - 1 - have)) > 0)
		have += (size_t)got;
	out[have] = '\0';
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool test_have_tool(const char *suite)
{
	const char *builddir = getenv("MFD_BUILDDIR");

	if (!builddir || !*builddir || test_cap_disabled("builddir")) {
		test_skip("builddir", "%s: MFD_BUILDDIR is not set (run through `make check`)",
			  suite);
		return false;
	}
	return true;
}

void test_memlock_limit(struct test_memlock *st, rlim_t bytes)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];
	struct rlimit rl;

	memset(st, 0, sizeof(*st));
	ck_assert_int_eq(getrlimit(RLIMIT_MEMLOCK, &st->old), 0);
	rl = st->old;
	rl.rlim_cur = bytes;
	ck_assert_msg(setrlimit(RLIMIT_MEMLOCK, &rl) == 0, "setrlimit(RLIMIT_MEMLOCK): %s",
		      strerror(errno));
	/*
	 * The kernel charges pinned pages to the user (every process of that
	 * uid on the machine), not to this process: as root, anything else
	 * root runs (perf buffers, io_uring) eats into the limit, and a test
	 * that expects 1 MiB of room finds less (a `perf record -a` takes
	 * 1 MiB on two CPUs).  The count belongs to the real uid: moving this
	 * thread's real and effective uids to one no one else uses starts it
	 * at zero.  The raw system call changes this thread only (glibc's
	 * wrapper would change them all); the saved uid stays 0, so the way
	 * back is open.  Leaving uid 0 also empties the effective set.
	 */
	if (geteuid() == 0) {
		uid_t uid = 0x60000000u + ((uid_t)getpid() & 0xffffffu);

		ck_assert_msg(syscall(SYS_setresuid, uid, uid, (uid_t)-1) == 0,
			      "setresuid: %s", strerror(errno));
		st->uid_moved = true;
	}
	ck_assert_int_eq(syscall(SYS_capget, &hdr, data), 0);
	if (data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK)) {
		data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
		ck_assert_msg(syscall(SYS_capset, &hdr, data) == 0, "capset: %s", strerror(errno));
		st->cap_dropped = true;
	}
}

void test_memlock_restore(struct test_memlock *st)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];

	if (st->uid_moved) {
		/* Back to euid 0: the kernel restores the effective set. */
		ck_assert_msg(syscall(SYS_setresuid, (uid_t)0, (uid_t)0, (uid_t)-1) == 0,
			      "setresuid back to 0: %s", strerror(errno));
		st->uid_moved = false;
	}
	if (st->cap_dropped) {
		/* Still permitted: taking it back needs no privilege. */
		ck_assert_int_eq(syscall(SYS_capget, &hdr, data), 0);
		data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective |= CAP_TO_MASK(CAP_IPC_LOCK);
		ck_assert_int_eq(syscall(SYS_capset, &hdr, data), 0);
		st->cap_dropped = false;
	}
	ck_assert_int_eq(setrlimit(RLIMIT_MEMLOCK, &st->old), 0);
}

static pthread_mutex_t capture_lock = PTHREAD_MUTEX_INITIALIZER;
static char capture_buf[16384];

static void capture_line(int level, const char *msg, void *opaque)
{
	(void)level;
	(void)opaque;
	pthread_mutex_lock(&capture_lock);
	size_t len = strlen(capture_buf);

	snprintf(capture_buf + len, sizeof(capture_buf) - len, "%s\n", msg);
	pthread_mutex_unlock(&capture_lock);
}

void test_log_capture_start(void)
{
	pthread_mutex_lock(&capture_lock);
	capture_buf[0] = '\0';
	pthread_mutex_unlock(&capture_lock);
	mfd_log_set_handler(capture_line, NULL, MFD_LOG_DEBUG);
}

const char *test_log_capture_stop(void)
{
	mfd_log_set_handler(NULL, NULL, MFD_LOG_WARNING);
	return capture_buf;
}
