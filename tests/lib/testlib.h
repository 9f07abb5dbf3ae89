/* SPDX-License-Identifier: MIT */
/*
 * Shared test helpers: error assertions and fake device sections whose
 * state round-trips through save and load.
 */
#ifndef MFD_TESTLIB_H
#define MFD_TESTLIB_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sys/resource.h>

#include <multifd/multifd.h>

/* TEST_SANITIZED: 1 in an ASan or TSan build, where every syscall wrapper
 * and memory access is slower: tests move less data and allow more time. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define TEST_SANITIZED 1
#endif
#endif
#ifndef TEST_SANITIZED
#define TEST_SANITIZED 0
#endif

/* Assert the error variable err has this code and a message containing substr;
 * frees it and sets the variable back to NULL for the next call. */
#define ck_assert_mfd_error(err, code, substr)                                              \
	do {                                                                                \
		mfd_error *e__ = (err);                                                     \
		(err) = NULL;                                                               \
		ck_assert_msg(e__ != NULL, "expected an error with code %d", (int)(code));  \
		ck_assert_msg(mfd_error_code(e__) == (code),                               \
			      "expected code %d (%s), got %d (%s): %s", (int)(code),        \
			      mfd_strerror(code), mfd_error_code(e__),                      \
			      mfd_strerror(mfd_error_code(e__)), mfd_error_message(e__));   \
		ck_assert_msg(strstr(mfd_error_message(e__), (substr)) != NULL,              \
			      "message '%s' lacks '%s'", mfd_error_message(e__), (substr)); \
		mfd_error_free(e__);                                                        \
	} while (0)

#define ck_assert_ok(expr, err)                                                             \
	do {                                                                                \
		int r__ = (expr);                                                           \
		ck_assert_msg(r__ == 0, "%s failed with %d: %s", #expr, r__,               \
			      mfd_error_message(err));                                      \
	} while (0)

enum fake_call {
	FC_SAVE_PREPARE,
	FC_SAVE_SETUP,
	FC_SAVE_ITERATE,
	FC_SAVE_COMPLETE_PRECOPY,
	FC_SAVE_COMPLETE_POSTCOPY,
	FC_SAVE_POSTCOPY_PREPARE,
	FC_SAVE_STATE,
	FC_SAVE_CLEANUP,
	FC_LOAD_SETUP,
	FC_LOAD_STATE,
	FC_LOAD_CLEANUP,
	FC_RESUME_PREPARE,
	FC_COUNT
};

#define FAKE_STATE_MAX 4096

/*
 * A device whose state is `size` bytes.  A live one sends its length at
 * START, `chunk` bytes per PART, the rest at END; a non-live one sends all
 * at FULL plus a subsection "<name>/extra" with a 32-bit value.
 */
struct fake_dev {
	char name[64];
	bool live;
	bool postcopy;		/* has_postcopy returns true */
	size_t size, chunk;
	uint8_t state[FAKE_STATE_MAX];
	uint32_t extra;

	/* source progress */
	size_t sent;
	/* destination result */
	uint8_t loaded[FAKE_STATE_MAX];
	size_t loaded_len;
	size_t expect_len;
	uint32_t loaded_extra;
	int last_version;
	bool load_started;	/* the live section's START arrived */

	int calls[FC_COUNT];
	int fail_call;		/* one of fake_call, or -1 */
	bool fail_without_message;
	bool active;		/* is_active */
	bool iterate_active;	/* is_active_iterate */
	bool switchover_ack;
	bool hold_switchover;	/* save_postcopy_prepare sets can_switchover = false */
	bool skip_read;		/* load_state consumes one byte too few */
};

/* Order of calls across devices: "name:CALL" entries separated by ' '. */
extern char fake_log[8192];
void fake_log_reset(void);

void fake_dev_init(struct fake_dev *d, const char *name, bool live, size_t size,
		   unsigned seed);
extern const mfd_save_handlers fake_live_ops;
extern const mfd_save_handlers fake_nonlive_ops;
/* Register on m with fake_live_ops or fake_nonlive_ops by d->live. */
void fake_register(mfd_migration *m, struct fake_dev *d, uint32_t instance, uint32_t version);
/* The destination got exactly the source's state. */
void fake_assert_same(const struct fake_dev *src, const struct fake_dev *dst);

/* Save m to a memory buffer (malloc'd, caller frees). */
void *save_to_mem(mfd_migration *m, size_t *len);

/* Load a buffer with m; returns the code, *errp gets the error. */
int load_from_mem(mfd_migration *m, const void *buf, size_t len, mfd_error **errp);

/* Growable byte builder for hand-made streams. */
struct bytes {
	uint8_t *p;
	size_t len, cap;
};
void b_u8(struct bytes *b, uint8_t v);
void b_be16(struct bytes *b, uint16_t v);
void b_be32(struct bytes *b, uint32_t v);
void b_be64(struct bytes *b, uint64_t v);
void b_raw(struct bytes *b, const void *p, size_t n);
void b_str(struct bytes *b, const char *s);	/* u8 length + bytes */
/* magic, version 3, CONFIGURATION "libmultifd" */
void b_header(struct bytes *b);
void b_free(struct bytes *b);

/* The a-b checker over RAM of @page-byte pages: byte 0 of every page equals
 * its predecessor or is one less, with at most one step down (where the
 * writer was when the VM stopped).  Fails the test otherwise. */
void ck_assert_ab(const uint8_t *ram, size_t size, size_t page);
/* Fill the @page_size bytes at @p with content no other page has, so that a
 * page placed at the wrong offset shows: a byte pattern drawn from a hash of
 * (@block, @page, @pass), compressible, and every 64 bytes from byte 8 a
 * 16-byte stamp naming @block, @pass and @page.  Bytes 0..7 are left for the
 * a-b counter (byte 0) and a test's own marks; @page_size >= 64. */
void test_fill_page(uint8_t *p, size_t page_size, uint32_t block, uint64_t page, uint32_t pass);
/* @got equals @want, compared page by page over @size bytes; a page that
 * differs is named, with the page its stamp (test_fill_page) says it holds. */
void ck_assert_pages_eq(const uint8_t *want, const uint8_t *got, size_t size, size_t page_size);
/* CLOCK_MONOTONIC in milliseconds. */
uint64_t test_now_ms(void);

/*
 * Skips.  Check has no "skipped" result: a test that cannot run here calls
 * test_skip() and returns, and tests/main.c prints "skipped: N (capability:
 * count, ...)" before Check's summary; it exits non-zero when a capability
 * named in $MFD_REQUIRE_CAPS (comma-separated, set by .ci/run from what its
 * machine has) was skipped.  @capability is one short word:
 *   uffd      userfaultfd (root, or vm.unprivileged_userfaultfd=1)
 *   kvm       /dev/kvm, and examples/minivmm built
 *   root      a test that needs root (ss -K, netns, memlock)
 *   iproute2  ss -K (iproute2, and a kernel with SOCK_DESTROY)
 *   netns     ip netns and tc tbf (iproute2, sch_tbf)
 *   openssl   the openssl command-line tool
 *   builddir  MFD_BUILDDIR/MFD_SRCDIR, set by `make check`
 *   codec     a compression codec this build lacks (configure)
 *   ipv6      an IPv6 loopback
 *   gnuplot   the gnuplot program
 *   timeout   the timeout-ms option on an fd channel
 *   tls       TLS built in (configure found OpenSSL 3)
 *   rust      examples/rust built (configure found rustc and bindgen)
 *   rust-sanitized  examples/rust in a sanitizer build (never built there;
 *             not a machine capability, never required)
 * (tests/lib/skip.c lists them; another name fails the test)
 * @why (printf format) says what was skipped and why; it is printed with
 * "; skipped (@capability)" appended.
 */
__attribute__((format(printf, 2, 3)))
void test_skip(const char *capability, const char *why, ...);
/* True when $MFD_TEST_DISABLE (comma-separated) names @capability: the
 * capability checks then say "absent", to show that a skip is counted and
 * that MFD_REQUIRE_CAPS fails the run. */
bool test_cap_disabled(const char *capability);
/* tests/main.c: reads the skip file @path and writes into @msg the line
 * "skipped: N (cap: n, ...)\n" and one line per capability of @required that
 * was skipped.  Returns how many of @required were skipped, -1 when @path
 * cannot be read. */
int test_skips_report(const char *path, const char *required, char *msg, size_t len);

/* userfaultfd can be opened here (postcopy's destination needs it); otherwise
 * skips (capability "uffd", message from @who) and returns false. */
bool test_have_uffd(const char *who);

/* Root, and the shell command @probe succeeds (a tool such as ss or ip is
 * there and permitted); otherwise skips (capability "root", or
 * @capability when @probe fails) and returns false.  @who names the test. */
bool test_have_root_tool(const char *who, const char *capability, const char *probe);

/* The build's tools/multifd can be run (MFD_BUILDDIR set, as `make check`
 * does); otherwise skips (capability "builddir") and returns false. */
bool test_have_tool(const char *suite);
/* Runs tools/multifd with @args (NULL-terminated, at most 30), stdin from
 * /dev/null; its stdout, and its stderr when @with_stderr, into @out (NUL-
 * terminated, truncated to @len - 1).  Returns the exit status, or 128 plus
 * the signal that ended it. */
int test_run_tool(char *out, size_t len, bool with_stderr, const char *const *args);
/* The same for @prog, a path under the build directory ("bench/soak"). */
int test_run_program(const char *prog, char *out, size_t len, bool with_stderr,
		     const char *const *args);

/*
 * Put the calling thread, and the threads it starts from then on, under a
 * locked-memory limit of @bytes (RLIMIT_MEMLOCK, process-wide) by dropping
 * CAP_IPC_LOCK from the thread's effective capabilities (root ignores the
 * limit otherwise).  As root, the thread also takes a real and effective
 * uid no other process uses, since the kernel counts pinned pages per
 * (real) user.
 * test_memlock_restore() undoes all of it.
 */
struct test_memlock {
	struct rlimit old;
	bool cap_dropped;
	bool uid_moved;
};
void test_memlock_limit(struct test_memlock *st, rlim_t bytes);
void test_memlock_restore(struct test_memlock *st);

/* Collects the library's log lines (mfd_log_set_handler) while installed. */
void test_log_capture_start(void);
/* Stops collecting; returns what was collected (valid until the next start). */
const char *test_log_capture_stop(void);

#endif /* MFD_TESTLIB_H */
