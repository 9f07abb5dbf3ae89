/* SPDX-License-Identifier: MIT */
/*
 * The malformed-input corpus, part two (part one is check_loadvm_bad.c and the
 * untrusted-input cases of check_multifd.c).  Every case is a hand-built input
 * for one check of docs/wire-format.md; each asserts its own error code and a
 * distinctive part of its message.  The layers:
 *
 *   stream   - the savevm main stream fed to mfd_loadvm (sections 3 and 4)
 *   hello    - multifd channel hellos fed to multifd_recv_identify (8.1)
 *   packet   - multifd packets after a good hello, every codec (8.2, 8.4)
 *   engine   - a real destination engine fed by a raw peer: the main hello
 *              (7.1) and multifd/preempt hellos over TCP, the RAM section (7.2)
 *              and the engine's commands through a file: URI
 *   rpath    - a real source engine talking to a fake destination that
 *              answers crafted return-path messages (7.3)
 *   trunc    - a valid multifd channel and a valid engine main stream cut at
 *              every byte offset
 *
 * Nothing may hang: memory channels cannot block, every socket and engine wait
 * has a deadline, and the tcase timeout backs them up.  Leaks show under the
 * sanitizer build (LSan runs at each forked test's exit).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/internal.h"
#include "core/migration.h"
#include "core/util.h"
#include "multifd/internal.h"
#include "tests/lib/testlib.h"

#define PS 4096u

static const uint8_t zeros[65536];

/* A case of a table: build(b, arg) writes the input; code and msg are expected. */
struct bcase {
	const char *name;
	void (*build)(struct bytes *b, uint64_t arg);
	uint64_t arg;
	int code;
	const char *msg;
};

#define NCASES(t) ((int)(sizeof(t) / sizeof((t)[0])))

static void check_result(const struct bcase *c, int idx, int r, mfd_error *err,
			 const char *must_also)
{
	/* BAD_INPUT_SHOW=1 prints what each case got, for writing new cases. */
	if (getenv("BAD_INPUT_SHOW"))
		printf("case %d '%s': %d %s\n", idx, c->name, r, mfd_error_message(err));
	ck_assert_msg(r == c->code, "case %d '%s': expected %d (%s), got %d: %s", idx, c->name,
		      c->code, mfd_strerror(c->code), r, mfd_error_message(err));
	ck_assert_msg(err != NULL, "case %d '%s': no error object", idx, c->name);
	ck_assert_int_eq(mfd_error_code(err), c->code);
	ck_assert_msg(strstr(mfd_error_message(err), c->msg) != NULL,
		      "case %d '%s': message '%s' lacks '%s'", idx, c->name, mfd_error_message(err),
		      c->msg);
	if (must_also)
		ck_assert_msg(strstr(mfd_error_message(err), must_also) != NULL,
			      "case %d '%s': message '%s' lacks '%s'", idx, c->name,
			      mfd_error_message(err), must_also);
}

/* =========================================================================
 * stream: the savevm main stream
 * ========================================================================= */

static int load4(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	(void)version_id;
	(void)errp;
	return mfd_stream_get_be32(s, opaque);
}

/* Reads a be32 then every subsection (each holding a be32). */
static int load_sub(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	char name[256];
	uint32_t v;
	int r;

	(void)version_id;
	(void)errp;
	if ((r = mfd_stream_get_be32(s, opaque)) < 0)
		return r;
	while ((r = mfd_subsection_next(s, "sub", name, &v)) == 1)
		if ((r = mfd_stream_get_be32(s, opaque)) < 0)
			return r;
	return r;
}

/* A handler that fails with a code outside enum mfd_errcode and no message. */
static int load_einval(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	(void)s;
	(void)opaque;
	(void)version_id;
	(void)errp;
	return -22;
}

/* A handler that fails with its own code and words. */
static int load_nospace(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	(void)s;
	(void)opaque;
	(void)version_id;
	return mfd_error_set(errp, MFD_ENOENT, "the backing file is gone");
}

static const mfd_save_handlers ops4 = {
	.size = sizeof(mfd_save_handlers),
	.load_state = load4,
};
static const mfd_save_handlers ops_sub = {
	.size = sizeof(mfd_save_handlers),
	.load_state = load_sub,
};
static const mfd_save_handlers ops_einval = {
	.size = sizeof(mfd_save_handlers),
	.load_state = load_einval,
};
static const mfd_save_handlers ops_nospace = {
	.size = sizeof(mfd_save_handlers),
	.load_state = load_nospace,
};
static int save_nothing(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)s;
	(void)opaque;
	(void)errp;
	return 0;
}

static const mfd_save_handlers ops_saveonly = {
	.size = sizeof(mfd_save_handlers),
	.save_state = save_nothing,
};

static uint32_t sink;

static mfd_migration *stream_dest(void)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_register_live(m, "dev", 0, 2, &ops4, &sink, &err), err);
	ck_assert_ok(mfd_register_live(m, "live", 0, 1, &ops4, &sink, &err), err);
	ck_assert_ok(mfd_register_live(m, "sub", 0, 1, &ops_sub, &sink, &err), err);
	ck_assert_ok(mfd_register_live(m, "einval", 0, 1, &ops_einval, &sink, &err), err);
	ck_assert_ok(mfd_register_live(m, "nospace", 0, 1, &ops_nospace, &sink, &err), err);
	ck_assert_ok(mfd_register_live(m, "saveonly", 0, 1, &ops_saveonly, &sink, &err), err);
	return m;
}

static void sec_hdr(struct bytes *b, uint8_t type, uint32_t id, const char *idstr, uint32_t inst,
		    uint32_t ver)
{
	b_u8(b, type);
	b_be32(b, id);
	b_str(b, idstr);
	b_be32(b, inst);
	b_be32(b, ver);
}

static void footer(struct bytes *b, uint32_t id)
{
	b_u8(b, 0x7e);
	b_be32(b, id);
}

static void good_dev(struct bytes *b, uint32_t id)
{
	sec_hdr(b, 0x04, id, "dev", 0, 2);
	b_be32(b, 0x11223344);
	footer(b, id);
}

static void cmd(struct bytes *b, uint16_t c, uint16_t len, const void *payload)
{
	b_u8(b, 0x08);
	b_be16(b, c);
	b_be16(b, len);
	b_raw(b, payload, len);
}

static void packaged(struct bytes *b, const struct bytes *in)
{
	uint8_t q[4];

	store_be32(q, (uint32_t)in->len);
	cmd(b, 7, 4, q);
	b_raw(b, in->p, in->len);
}

static void s_magic(struct bytes *b, uint64_t v)
{
	b_be32(b, (uint32_t)v);
	b_be32(b, 3);
}

static void s_version(struct bytes *b, uint64_t v)
{
	b_be32(b, 0x5145564d);
	b_be32(b, (uint32_t)v);
}

static void s_cfg_type(struct bytes *b, uint64_t v)
{
	s_version(b, 3);
	b_u8(b, (uint8_t)v);
}

static void s_cfg_len(struct bytes *b, uint64_t v)
{
	s_cfg_type(b, 0x07);
	b_be32(b, (uint32_t)v);
	if (v <= sizeof(zeros))
		b_raw(b, zeros, (size_t)v);
}

static void s_cfg_cut(struct bytes *b, uint64_t v)
{
	s_cfg_type(b, 0x07);
	b_be32(b, (uint32_t)v);
}

static const char *const identities[] = {
	"LIBMULTIFD", "libmultifd ", "libmultife", "qemu", "x", "libmultifdlibmultifd",
};

static void s_identity(struct bytes *b, uint64_t i)
{
	const char *id = identities[i];

	s_cfg_type(b, 0x07);
	b_be32(b, (uint32_t)strlen(id));
	b_raw(b, id, strlen(id));
	b_u8(b, 0);
}

static void s_record(struct bytes *b, uint64_t v)
{
	b_header(b);
	b_u8(b, (uint8_t)v);
}

/* A command with a payload of zeros: arg = cmd << 16 | len. */
static void s_cmd(struct bytes *b, uint64_t arg)
{
	b_header(b);
	cmd(b, (uint16_t)(arg >> 16), (uint16_t)arg, zeros);
}

/* A command with this payload: arg indexes payloads[]. */
static const struct {
	uint16_t cmd, len;
	const char *p;
} payloads[] = {
	/* 0 */ { 10, 2, "\x00" "x" },			/* RECV_BITMAP name length 0 */
	{ 10, 3, "\xff" "xy" },				/* name length 255 in 3 bytes */
	{ 10, 5, "\x03" "abc" },				/* name length 3 in 5 bytes */
	{ 10, 4, "\x03\0bc" },				/* NUL first */
	{ 10, 4, "\x03" "ab\0" },				/* NUL last */
	/* 5 */ { 10, 4, "\x03pc." },			/* fine, but no hook */
	{ 6, 20, "\x02\x04pc.r\0" "0123456789abcdef" },	/* DISCARD version 2 */
	{ 6, 20, "\xff\x04pc.r\0" "0123456789abcdef" },	/* version 255 */
	{ 6, 20, "\x00\x12pc.ram-with-a-long" },	/* name 18 bytes in 20 */
	{ 6, 20, "\x00\xffpc.ram-with-a-long" },	/* name 255 bytes in 20 */
	/* 10 */ { 6, 20, "\x00\x11pc.ram-with-a-lon" },/* name 17 bytes: fits, no ranges */
	{ 6, 20, "\x00\x04p\0.r\0" "0123456789abcdef" },/* NUL inside the name */
	{ 6, 20, "\x00\x04pc.rX" "0123456789abcdef" },	/* no NUL after the name */
	{ 6, 24, "\x00\x04pc.r\0" "0123456789abcdef0123" },	/* 20 range bytes */
	{ 6, 38, "\x00\x04pc.r\0" "0123456789abcdef0123456789abcde" },	/* 31 range bytes */
	/* 15 */ { 6, 23, "\x00\x04pc.r\0" "0123456789abcdef" },	/* good, no hook */
	{ 6, 55, "\x00\x04pc.r\0" "0123456789abcdef0123456789abcdef0123456789abcdef" },
};

static void s_payload(struct bytes *b, uint64_t i)
{
	b_header(b);
	cmd(b, payloads[i].cmd, payloads[i].len, payloads[i].p);
}

static void s_pkg_len(struct bytes *b, uint64_t v)
{
	uint8_t q[4];

	b_header(b);
	store_be32(q, (uint32_t)v);
	cmd(b, 7, 4, q);
}

/* Irregular inputs, by number. */
static void s_misc(struct bytes *b, uint64_t i)
{
	struct bytes in = { 0 };

	b_header(b);
	switch (i) {
	case 0: /* START idstr cut */
		b_u8(b, 0x01); b_be32(b, 0); b_u8(b, 10); b_raw(b, "live", 4); break;
	case 1: /* live section from a newer source */
		sec_hdr(b, 0x01, 0, "live", 0, 2); break;
	case 2: sec_hdr(b, 0x04, 0, "DEV", 0, 2); break;
	case 3: sec_hdr(b, 0x04, 0, "de", 0, 2); break;
	case 4: sec_hdr(b, 0x04, 0, "devX", 0, 2); break;
	case 5: sec_hdr(b, 0x04, 0, "dev", 0xffffffff, 2); break;
	case 6: b_u8(b, 0x02); b_be32(b, 0xffffffff); break;
	case 7: b_u8(b, 0x03); b_be32(b, 1000); break;
	case 8: case 9: case 10: /* footer type byte */
		sec_hdr(b, 0x04, 0, "dev", 0, 2); b_be32(b, 1);
		b_u8(b, i == 8 ? 0x7d : i == 9 ? 0xff : 0x05); b_be32(b, 0); break;
	case 11: case 12: /* footer id */
		sec_hdr(b, 0x04, 3, "dev", 0, 2); b_be32(b, 1);
		footer(b, i == 11 ? 4 : 0xffffffff); break;
	case 13: /* START/PART/END all for a section without a load handler */
		sec_hdr(b, 0x01, 0, "saveonly", 0, 1); break;
	case 14: /* PART of a section bound by FULL, then a bad footer */
		good_dev(b, 2); b_u8(b, 0x02); b_be32(b, 2); b_be32(b, 5); footer(b, 3); break;
	case 15: /* END after a good PART of another id */
		sec_hdr(b, 0x01, 1, "live", 0, 1); b_be32(b, 1); footer(b, 1);
		b_u8(b, 0x03); b_be32(b, 2); break;
	case 16: /* subsection name with a NUL */
		sec_hdr(b, 0x04, 0, "sub", 0, 1); b_be32(b, 1);
		b_u8(b, 0x05); b_u8(b, 5); b_raw(b, "sub/\0", 5); b_be32(b, 1); break;
	case 17: /* subsection of another device */
		sec_hdr(b, 0x04, 0, "sub", 0, 1); b_be32(b, 1);
		b_u8(b, 0x05); b_str(b, "dev/x"); b_be32(b, 1); break;
	case 18: /* subsection named like the parent, without '/' */
		sec_hdr(b, 0x04, 0, "sub", 0, 1); b_be32(b, 1);
		b_u8(b, 0x05); b_str(b, "subx"); b_be32(b, 1); break;
	case 19: /* nothing after the '/' */
		sec_hdr(b, 0x04, 0, "sub", 0, 1); b_be32(b, 1);
		b_u8(b, 0x05); b_str(b, "sub/"); b_be32(b, 1); break;
	case 20: /* subsection header cut */
		sec_hdr(b, 0x04, 0, "sub", 0, 1); b_be32(b, 1);
		b_u8(b, 0x05); b_u8(b, 9); b_raw(b, "sub/", 4); break;
	case 21: sec_hdr(b, 0x04, 0, "einval", 0, 1); break;
	case 22: sec_hdr(b, 0x04, 0, "nospace", 0, 1); break;
	case 23: /* a package holding a PING (no return path in a package either) */
		cmd(&in, 2, 4, "\0\0\0\1"); b_u8(&in, 0); packaged(b, &in); break;
	case 24: /* a package holding a CONFIGURATION */
		b_u8(&in, 0x07); b_be32(&in, 10); b_raw(&in, "libmultifd", 10); b_u8(&in, 0);
		packaged(b, &in); break;
	case 25: /* a package holding a PART of an unknown id */
		b_u8(&in, 0x02); b_be32(&in, 77); b_u8(&in, 0); packaged(b, &in); break;
	case 26: /* one byte left over */
		good_dev(&in, 0); b_u8(&in, 0); b_u8(&in, 0); packaged(b, &in); break;
	case 27: /* a package cut inside its section */
		good_dev(&in, 0); in.len -= 3; packaged(b, &in); break;
	case 28: /* a second package nested after a good one */
		good_dev(&in, 0); b_u8(&in, 0); packaged(b, &in);
		b_free(&in); cmd(&in, 7, 4, "\0\0\0\0"); packaged(b, &in); break;
	case 29: /* a package whose section has a bad footer */
		sec_hdr(&in, 0x04, 0, "dev", 0, 2); b_be32(&in, 1); footer(&in, 1); b_u8(&in, 0);
		packaged(b, &in); break;
	case 30: /* header record type inside a package */
		b_u8(&in, 0x7e); b_be32(&in, 0); packaged(b, &in); break;
	case 31: /* a package holding a DISCARD with a bad version */
		cmd(&in, 6, 20, payloads[6].p); b_u8(&in, 0); packaged(b, &in); break;
	case 32: /* idstr of 255 bytes, unknown */
		b_u8(b, 0x04); b_be32(b, 0); b_u8(b, 255);
		for (int k = 0; k < 255; k++)
			b_u8(b, 'a');
		b_be32(b, 0); b_be32(b, 1); break;
	case 33: /* section id reused by FULL of another section */
		good_dev(b, 9); sec_hdr(b, 0x04, 9, "live", 0, 1); break;
	case 34: /* START then a PART cut inside its payload */
		sec_hdr(b, 0x01, 1, "live", 0, 1); b_be32(b, 1); footer(b, 1);
		b_u8(b, 0x02); b_be32(b, 1); b_be16(b, 7); break;
	case 35: /* two EOF-less sections then garbage */
		good_dev(b, 0); good_dev(b, 0); b_u8(b, 0x99); break;
	}
	b_free(&in);
}

static const struct bcase stream_cases[] = {
	/* header: magic */
	{ "magic 0", s_magic, 0, MFD_EBADMAGIC, "magic 0x00000000 at byte 0, expected 0x5145564d" },
	{ "magic all ones", s_magic, 0xffffffff, MFD_EBADMAGIC, "magic 0xffffffff at byte 0" },
	{ "engine hello magic", s_magic, 0x4d46444d, MFD_EBADMAGIC, "magic 0x4d46444d at byte 0" },
	{ "multifd hello magic", s_magic, 0x4d464448, MFD_EBADMAGIC, "magic 0x4d464448 at byte 0" },
	{ "magic one less", s_magic, 0x5145564c, MFD_EBADMAGIC, "magic 0x5145564c at byte 0" },
	{ "magic low byte 0", s_magic, 0x51455600, MFD_EBADMAGIC, "magic 0x51455600 at byte 0" },
	{ "ELF file", s_magic, 0x7f454c46, MFD_EBADMAGIC, "not a migration stream: magic 0x7f454c46" },
	{ "magic byte-swapped", s_magic, 0x4d564551, MFD_EBADMAGIC, "magic 0x4d564551" },
	/* header: version */
	{ "version 1", s_version, 1, MFD_EBADVERSION, "unsupported stream version 1; this library reads version 3" },
	{ "version 5", s_version, 5, MFD_EBADVERSION, "unsupported stream version 5" },
	{ "version 0x100", s_version, 0x100, MFD_EBADVERSION, "unsupported stream version 256" },
	{ "version byte-swapped", s_version, 0x03000000, MFD_EBADVERSION, "unsupported stream version 50331648" },
	{ "version high bit", s_version, 0x80000003, MFD_EBADVERSION, "unsupported stream version 2147483651" },
	/* CONFIGURATION type byte */
	{ "START first", s_cfg_type, 0x01, MFD_EBADCONFIG, "CONFIGURATION record (0x07) at byte 8, found 0x01" },
	{ "PART first", s_cfg_type, 0x02, MFD_EBADCONFIG, "at byte 8, found 0x02" },
	{ "END first", s_cfg_type, 0x03, MFD_EBADCONFIG, "at byte 8, found 0x03" },
	{ "SUBSECTION first", s_cfg_type, 0x05, MFD_EBADCONFIG, "at byte 8, found 0x05" },
	{ "VMDESCRIPTION first", s_cfg_type, 0x06, MFD_EBADCONFIG, "at byte 8, found 0x06" },
	{ "COMMAND first", s_cfg_type, 0x08, MFD_EBADCONFIG, "at byte 8, found 0x08" },
	{ "FOOTER first", s_cfg_type, 0x7e, MFD_EBADCONFIG, "at byte 8, found 0x7e" },
	{ "0xff first", s_cfg_type, 0xff, MFD_EBADCONFIG, "at byte 8, found 0xff" },
	/* CONFIGURATION length */
	{ "identity length 257", s_cfg_len, 257, MFD_EBADCONFIG, "identity length 257 at byte 9 is outside 1..255" },
	{ "identity length 64 KiB", s_cfg_len, 0x10000, MFD_EBADCONFIG, "identity length 65536" },
	{ "identity length 2 GiB", s_cfg_len, 0x80000000, MFD_EBADCONFIG, "identity length 2147483648" },
	{ "identity cut", s_cfg_cut, 15, MFD_EEOF, "unexpected end of data at byte 13 (needed 15 more)" },
	/* identity */
	{ "identity upper case", s_identity, 0, MFD_EBADCONFIG, "the source's identity is 'LIBMULTIFD', this destination is 'libmultifd'" },
	{ "identity trailing space", s_identity, 1, MFD_EBADCONFIG, "identity is 'libmultifd '" },
	{ "identity last byte", s_identity, 2, MFD_EBADCONFIG, "identity is 'libmultife'" },
	{ "identity qemu", s_identity, 3, MFD_EBADCONFIG, "identity is 'qemu'" },
	{ "identity one byte", s_identity, 4, MFD_EBADCONFIG, "identity is 'x'" },
	{ "identity doubled", s_identity, 5, MFD_EBADCONFIG, "identity is 'libmultifdlibmultifd'" },
	/* record types */
	{ "record 0x0a", s_record, 0x0a, MFD_EBADRECORD, "unknown record type 0x0a at byte 23" },
	{ "record 0x10", s_record, 0x10, MFD_EBADRECORD, "unknown record type 0x10 at byte 23" },
	{ "record 0x20", s_record, 0x20, MFD_EBADRECORD, "unknown record type 0x20 at byte 23" },
	{ "record 0x40", s_record, 0x40, MFD_EBADRECORD, "unknown record type 0x40 at byte 23" },
	{ "record 0x7d", s_record, 0x7d, MFD_EBADRECORD, "unknown record type 0x7d at byte 23" },
	{ "record 0x7f", s_record, 0x7f, MFD_EBADRECORD, "unknown record type 0x7f at byte 23" },
	{ "record 0x80", s_record, 0x80, MFD_EBADRECORD, "unknown record type 0x80 at byte 23" },
	{ "record 0xfe", s_record, 0xfe, MFD_EBADRECORD, "unknown record type 0xfe at byte 23" },
	/* commands: numbers */
	{ "command 13", s_cmd, 13ull << 16, MFD_EBADCMD, "unknown command 13 at byte 23" },
	{ "command 100", s_cmd, 100ull << 16, MFD_EBADCMD, "unknown command 100 at byte 23" },
	{ "command 256", s_cmd, 256ull << 16, MFD_EBADCMD, "unknown command 256 at byte 23" },
	{ "command 0x8000", s_cmd, 0x8000ull << 16, MFD_EBADCMD, "unknown command 32768 at byte 23" },
	{ "command 0xfffe", s_cmd, 0xfffeull << 16, MFD_EBADCMD, "unknown command 65534 at byte 23" },
	/* commands: fixed lengths */
	{ "OPEN_RETURN_PATH of 4", s_cmd, 1ull << 16 | 4, MFD_EBADCMD, "command OPEN_RETURN_PATH at byte 23 has length 4, it must be 0" },
	{ "OPEN_RETURN_PATH of 65535", s_cmd, 1ull << 16 | 0xffff, MFD_EBADCMD, "OPEN_RETURN_PATH at byte 23 has length 65535, it must be 0" },
	{ "PING of 0", s_cmd, 2ull << 16, MFD_EBADCMD, "command PING at byte 23 has length 0, it must be 4" },
	{ "PING of 5", s_cmd, 2ull << 16 | 5, MFD_EBADCMD, "PING at byte 23 has length 5, it must be 4" },
	{ "PING of 8", s_cmd, 2ull << 16 | 8, MFD_EBADCMD, "PING at byte 23 has length 8" },
	{ "LISTEN of 1", s_cmd, 4ull << 16 | 1, MFD_EBADCMD, "POSTCOPY_LISTEN at byte 23 has length 1, it must be 0" },
	{ "RUN of 4", s_cmd, 5ull << 16 | 4, MFD_EBADCMD, "POSTCOPY_RUN at byte 23 has length 4, it must be 0" },
	{ "PACKAGED of 0", s_cmd, 7ull << 16, MFD_EBADCMD, "PACKAGED at byte 23 has length 0, it must be 4" },
	{ "PACKAGED of 3", s_cmd, 7ull << 16 | 3, MFD_EBADCMD, "PACKAGED at byte 23 has length 3, it must be 4" },
	{ "PACKAGED of 8", s_cmd, 7ull << 16 | 8, MFD_EBADCMD, "PACKAGED at byte 23 has length 8, it must be 4" },
	{ "ENABLE_COLO of 4", s_cmd, 8ull << 16 | 4, MFD_EBADCMD, "ENABLE_COLO at byte 23 has length 4, it must be 0" },
	{ "RESUME of 1", s_cmd, 9ull << 16 | 1, MFD_EBADCMD, "POSTCOPY_RESUME at byte 23 has length 1, it must be 0" },
	{ "SWITCHOVER_START of 4", s_cmd, 11ull << 16 | 4, MFD_EBADCMD, "SWITCHOVER_START at byte 23 has length 4, it must be 0" },
	/* commands: variable lengths */
	{ "ADVISE of 1", s_cmd, 3ull << 16 | 1, MFD_EBADCMD, "POSTCOPY_ADVISE at byte 23 has length 1, it must be 0 or 16" },
	{ "ADVISE of 4", s_cmd, 3ull << 16 | 4, MFD_EBADCMD, "has length 4, it must be 0 or 16" },
	{ "ADVISE of 15", s_cmd, 3ull << 16 | 15, MFD_EBADCMD, "has length 15, it must be 0 or 16" },
	{ "ADVISE of 32", s_cmd, 3ull << 16 | 32, MFD_EBADCMD, "POSTCOPY_ADVISE at byte 23 has length 32, allowed 0..16" },
	{ "ADVISE of 65535", s_cmd, 3ull << 16 | 0xffff, MFD_EBADCMD, "has length 65535, allowed 0..16" },
	{ "ADVISE of 16 without postcopy", s_cmd, 3ull << 16 | 16, MFD_ENOTSUP, "command POSTCOPY_ADVISE at byte 23 refused" },
	{ "DISCARD of 0", s_cmd, 6ull << 16, MFD_EBADCMD, "POSTCOPY_RAM_DISCARD at byte 23 has length 0, allowed 20..65535" },
	{ "DISCARD of 1", s_cmd, 6ull << 16 | 1, MFD_EBADCMD, "has length 1, allowed 20..65535" },
	{ "DISCARD of 10", s_cmd, 6ull << 16 | 10, MFD_EBADCMD, "has length 10, allowed 20..65535" },
	{ "RECV_BITMAP of 0", s_cmd, 10ull << 16, MFD_EBADCMD, "RECV_BITMAP at byte 23 has length 0, allowed 2..256" },
	{ "RECV_BITMAP of 257", s_cmd, 10ull << 16 | 257, MFD_EBADCMD, "has length 257, allowed 2..256" },
	{ "RECV_BITMAP of 65535", s_cmd, 10ull << 16 | 0xffff, MFD_EBADCMD, "has length 65535, allowed 2..256" },
	/* command payloads */
	{ "RECV_BITMAP name length 0", s_payload, 0, MFD_EBADCMD, "RECV_BITMAP at byte 23: name length 0 in a 2-byte command" },
	{ "RECV_BITMAP name length 255", s_payload, 1, MFD_EBADCMD, "name length 255 in a 3-byte command" },
	{ "RECV_BITMAP name short", s_payload, 2, MFD_EBADCMD, "name length 3 in a 5-byte command" },
	{ "RECV_BITMAP NUL first", s_payload, 3, MFD_EBADCMD, "RECV_BITMAP at byte 23: block name contains a NUL byte" },
	{ "RECV_BITMAP NUL last", s_payload, 4, MFD_EBADCMD, "block name contains a NUL byte" },
	{ "RECV_BITMAP without hook", s_payload, 5, MFD_ENOTSUP, "command RECV_BITMAP at byte 23 refused: it needs a return path" },
	{ "DISCARD version 2", s_payload, 6, MFD_EBADVERSION, "POSTCOPY_RAM_DISCARD at byte 23: version 2, expected 0" },
	{ "DISCARD version 255", s_payload, 7, MFD_EBADVERSION, "version 255, expected 0" },
	{ "DISCARD name 18 in 20", s_payload, 8, MFD_EBADCMD, "block name length 18 does not fit the 20-byte command" },
	{ "DISCARD name 255 in 20", s_payload, 9, MFD_EBADCMD, "block name length 255 does not fit the 20-byte command" },
	{ "DISCARD no range bytes", s_payload, 10, MFD_EBADCMD, "0 bytes of ranges, expected a non-zero multiple of 16" },
	{ "DISCARD NUL in the name", s_payload, 11, MFD_EBADCMD, "block name is not a NUL-terminated string of 4 bytes" },
	{ "DISCARD no NUL after the name", s_payload, 12, MFD_EBADCMD, "not a NUL-terminated string of 4 bytes" },
	{ "DISCARD 17 range bytes", s_payload, 13, MFD_EBADCMD, "17 bytes of ranges" },
	{ "DISCARD 31 range bytes", s_payload, 14, MFD_EBADCMD, "31 bytes of ranges" },
	{ "DISCARD good without hook", s_payload, 15, MFD_ENOTSUP, "POSTCOPY_RAM_DISCARD at byte 23: postcopy is not enabled here" },
	{ "DISCARD three ranges without hook", s_payload, 16, MFD_ENOTSUP, "postcopy is not enabled here" },
	/* PACKAGED lengths */
	{ "PACKAGED limit + 1", s_pkg_len, 268435457, MFD_ETOOBIG, "PACKAGED command at byte 23 announces 268435457 bytes, the limit is 268435456" },
	{ "PACKAGED 2 GiB", s_pkg_len, 0x80000000, MFD_ETOOBIG, "announces 2147483648 bytes" },
	{ "PACKAGED 1 byte missing", s_pkg_len, 1, MFD_EEOF, "unexpected end of data at byte 32" },
	{ "PACKAGED at the limit, empty", s_pkg_len, 268435456, MFD_EEOF, "unexpected end of data at byte 32" },
	/* sections, subsections, handlers, packages */
	{ "START idstr cut", s_misc, 0, MFD_EEOF, "unexpected end of data at byte 33 (needed 6 more)" },
	{ "START of a newer live section", s_misc, 1, MFD_EBADVERSION, "section 'live' instance 0: the stream has version 2, this side loads up to version 1" },
	{ "idstr upper case", s_misc, 2, MFD_EBADSECTION, "unknown section 'DEV' instance 0" },
	{ "idstr prefix", s_misc, 3, MFD_EBADSECTION, "unknown section 'de' instance 0" },
	{ "idstr longer", s_misc, 4, MFD_EBADSECTION, "unknown section 'devX' instance 0" },
	{ "instance max", s_misc, 5, MFD_EBADSECTION, "unknown section 'dev' instance 4294967295" },
	{ "PART id max", s_misc, 6, MFD_EBADSECTION, "SECTION_PART at byte 23: unknown section id 4294967295" },
	{ "END id 1000", s_misc, 7, MFD_EBADSECTION, "SECTION_END at byte 23: unknown section id 1000" },
	{ "footer 0x7d", s_misc, 8, MFD_EBADFOOTER, "expected footer 0x7e at byte 44, found 0x7d" },
	{ "footer 0xff", s_misc, 9, MFD_EBADFOOTER, "expected footer 0x7e at byte 44, found 0xff" },
	{ "footer is a subsection", s_misc, 10, MFD_EBADFOOTER, "expected footer 0x7e at byte 44, found 0x05" },
	{ "footer id + 1", s_misc, 11, MFD_EBADFOOTER, "footer at byte 44 names section id 4" },
	{ "footer id max", s_misc, 12, MFD_EBADFOOTER, "names section id 4294967295" },
	{ "START without a load handler", s_misc, 13, MFD_ENOTSUP, "section 'saveonly' instance 0 has no load handler" },
	{ "PART with a bad footer", s_misc, 14, MFD_EBADFOOTER, "names section id 3" },
	{ "END of another id", s_misc, 15, MFD_EBADSECTION, "SECTION_END at byte 50: unknown section id 2 (no START or FULL introduced it)" },
	{ "subsection name NUL", s_misc, 16, MFD_EPROTO, "subsection name contains a NUL byte" },
	{ "subsection of another device", s_misc, 17, MFD_EPROTO, "subsection 'dev/x' does not belong to 'sub'" },
	{ "subsection without '/'", s_misc, 18, MFD_EPROTO, "subsection 'subx' does not belong to 'sub'" },
	{ "subsection name only a prefix", s_misc, 19, MFD_EPROTO, "subsection 'sub/' does not belong to 'sub'" },
	{ "subsection header cut", s_misc, 20, MFD_EEOF, "unexpected end of data" },
	{ "handler returns -22", s_misc, 21, MFD_EHANDLER, "section 'einval' instance 0 (SECTION_FULL, version 1)" },
	{ "handler fails with its code", s_misc, 22, MFD_ENOENT, "section 'nospace' instance 0 (SECTION_FULL, version 1): the backing file is gone" },
	{ "package holding a PING", s_misc, 23, MFD_ENOTSUP, "package at byte 32: command PING at byte 0 refused" },
	{ "package holding a CONFIGURATION", s_misc, 24, MFD_EBADRECORD, "package at byte 32: record CONFIGURATION (0x07) at byte 0" },
	{ "package holding a PART", s_misc, 25, MFD_EBADSECTION, "package at byte 32: SECTION_PART at byte 0: unknown section id 77" },
	{ "package with 1 byte over", s_misc, 26, MFD_EPROTO, "package at byte 32: 1 unread bytes after the end of the package" },
	{ "package cut in its section", s_misc, 27, MFD_EEOF, "package at byte 32: unexpected end of data" },
	{ "package in a package, second level", s_misc, 28, MFD_EBADCMD, "inside a package (nesting limit 1)" },
	{ "package with a bad footer", s_misc, 29, MFD_EBADFOOTER, "package at byte 32: section 'dev' (id 0): footer at byte 21 names section id 1" },
	{ "package holding a footer", s_misc, 30, MFD_EBADRECORD, "package at byte 32: record SECTION_FOOTER (0x7e) at byte 0" },
	{ "package holding a bad DISCARD", s_misc, 31, MFD_EBADVERSION, "package at byte 32: POSTCOPY_RAM_DISCARD at byte 0: version 2" },
	{ "idstr of 255 bytes unknown", s_misc, 32, MFD_EBADSECTION, "unknown section 'aaaaaaaa" },
	{ "id reused by FULL", s_misc, 33, MFD_EBADSECTION, "section id 9 of 'live' is already used by 'dev' instance 0" },
	{ "PART payload cut", s_misc, 34, MFD_EEOF, "unexpected end of data" },
	{ "garbage after sections", s_misc, 35, MFD_EBADRECORD, "unknown record type 0x99 at byte 75" },
};

START_TEST(bad_stream)
{
	const struct bcase *c = &stream_cases[_i];
	struct bytes b = { 0 };
	mfd_migration *m = stream_dest();
	mfd_error *err = NULL;

	c->build(&b, c->arg);
	int r = load_from_mem(m, b.p, b.len, &err);

	check_result(c, _i, r, err, NULL);
	mfd_error_free(err);
	b_free(&b);
	mfd_migration_free(m);
}
END_TEST

/* =========================================================================
 * hello: multifd channel hellos
 * ========================================================================= */

/* A destination's multifd receive side over "ram" (64 pages) and "huge" (two
 * 2 MiB pages, so a packet of it holds one page). */
struct mrig {
	struct mfd_multifd_config cfg;
	mfd_migration *m;
	uint8_t *ram, *huge;
	uint64_t digest;
};

#define RAM_BYTES (64 * PS)
#define HUGE_PS (2u << 20)
#define HUGE_BYTES (2 * HUGE_PS)

static void mrig_init(struct mrig *g, unsigned channels, const char *codec)
{
	mfd_error *err = NULL;

	memset(g, 0, sizeof(*g));
	ck_assert_ok(multifd_config_init(&g->cfg, &err), err);
	g->cfg.channels = channels;
	if (codec) {
		g->cfg.codec = mfd_compress_find(codec);
		ck_assert_ptr_nonnull(g->cfg.codec);
		g->cfg.level = g->cfg.codec->level_default;
	}
	g->ram = mmap(NULL, RAM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	g->huge = mmap(NULL, HUGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(g->ram, MAP_FAILED);
	ck_assert_ptr_ne(g->huge, MAP_FAILED);
	ck_assert_ok(mfd_migration_new(&g->m, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->m, "ram", g->ram, RAM_BYTES, PS, &err), err);
	ck_assert_ok(mfd_ram_block_add(g->m, "huge", g->huge, HUGE_BYTES, HUGE_PS, &err), err);
	g->digest = ram_blocks_digest(g->m->blocks, g->m->nblocks);
}

static void mrig_free(struct mrig *g)
{
	mfd_migration_free(g->m);
	munmap(g->ram, RAM_BYTES);
	munmap(g->huge, HUGE_BYTES);
}

/* How to spoil a good hello of channel 1 of 4: set `len` bytes at `off` to
 * `val` (big-endian), or cut it to `cut` bytes (cut < 128). */
struct hcase {
	const char *name;
	unsigned off, len;
	uint64_t val;
	unsigned cut;
	const char *codec;	/* the destination's codec, NULL = none */
	bool flip;		/* XOR val in instead (random fields: never equal by chance) */
	int code;
	const char *msg;
};

#define HSET(n, o, l, v, c, m) { n, o, l, v, 128, NULL, false, c, m }
#define HFLIP(n, o, v, c, m) { n, o, 1, v, 128, NULL, true, c, m }
#define HCUT(n, k) { n, 0, 0, 0, k, NULL, false, MFD_EEOF, "end of data after " #k " of 128 bytes" }

static const struct hcase hello_cases[] = {
	HSET("main hello magic", 0, 4, 0x4d46444d, MFD_EBADMAGIC, "magic 0x4d46444d, expected 0x4d464448"),
	HSET("packet magic", 0, 4, 0x4d464450, MFD_EBADMAGIC, "magic 0x4d464450, expected 0x4d464448"),
	HSET("savevm magic", 0, 4, 0x5145564d, MFD_EBADMAGIC, "magic 0x5145564d"),
	HSET("magic 0", 0, 4, 0, MFD_EBADMAGIC, "magic 0x00000000"),
	HSET("magic all ones", 0, 4, 0xffffffff, MFD_EBADMAGIC, "magic 0xffffffff"),
	HSET("version 3", 4, 4, 3, MFD_EBADVERSION, "version 3, this library speaks 1"),
	HSET("version max", 4, 4, 0xffffffff, MFD_EBADVERSION, "version 4294967295, this library speaks 1"),
	HSET("version 0x100", 4, 4, 0x100, MFD_EBADVERSION, "version 256"),
	HSET("flag bit 0", 8, 4, 1, MFD_EPROTO, "unknown flags 0x00000001"),
	HSET("flag bit 1", 8, 4, 2, MFD_EPROTO, "unknown flags 0x00000002"),
	HSET("flag bit 16", 8, 4, 0x10000, MFD_EPROTO, "unknown flags 0x00010000"),
	HSET("flag bit 31", 8, 4, 0x80000000, MFD_EPROTO, "unknown flags 0x80000000"),
	HSET("count 0", 14, 2, 0, MFD_EPROTO, "the source uses 0 channels, this side expects 4"),
	HSET("count 3", 14, 2, 3, MFD_EPROTO, "the source uses 3 channels, this side expects 4"),
	HSET("count 255", 14, 2, 255, MFD_EPROTO, "the source uses 255 channels"),
	HSET("count max", 14, 2, 0xffff, MFD_EPROTO, "the source uses 65535 channels"),
	HSET("id 5", 12, 2, 5, MFD_EPROTO, "channel id 5, valid ids are 0..3"),
	HSET("id 256", 12, 2, 256, MFD_EPROTO, "channel id 256, valid ids are 0..3"),
	HSET("id 0x8000", 12, 2, 0x8000, MFD_EPROTO, "channel id 32768"),
	HSET("packet 0", 16, 4, 0, MFD_EPROTO, "packet size 0, this side uses 524288"),
	HSET("packet - 1", 16, 4, 524287, MFD_EPROTO, "packet size 524287, this side uses 524288"),
	HSET("packet + 1", 16, 4, 524289, MFD_EPROTO, "packet size 524289"),
	HSET("packet max", 16, 4, 0xffffffff, MFD_EPROTO, "packet size 4294967295"),
	HSET("packet 4 KiB", 16, 4, 4096, MFD_EPROTO, "packet size 4096"),
	HSET("reserved 20", 20, 1, 1, MFD_EPROTO, "reserved bytes are not zero"),
	HSET("reserved 21", 21, 1, 0x80, MFD_EPROTO, "reserved bytes are not zero"),
	HSET("reserved 22", 22, 1, 0xff, MFD_EPROTO, "reserved bytes are not zero"),
	HSET("reserved 113", 113, 1, 1, MFD_EPROTO, "reserved bytes are not zero"),
	HSET("reserved 120", 120, 1, 0x40, MFD_EPROTO, "reserved bytes are not zero"),
	HSET("reserved 126", 126, 1, 2, MFD_EPROTO, "reserved bytes are not zero"),
	HSET("codec length 33", 80, 1, 33, MFD_EPROTO, "codec name length 33 is outside 1..31"),
	HSET("codec length 100", 80, 1, 100, MFD_EPROTO, "codec name length 100 is outside 1..31"),
	HSET("codec length 128", 80, 1, 128, MFD_EPROTO, "codec name length 128"),
	HSET("codec byte after name", 85, 1, 'x', MFD_EPROTO, "bytes after the codec name are not zero"),
	HSET("codec last byte", 111, 1, 1, MFD_EPROTO, "bytes after the codec name are not zero"),
	HSET("codec 'nonE'", 84, 1, 'E', MFD_EPROTO, "the source compresses with 'nonE', this side expects 'none'"),
	HSET("codec 'non'", 80, 1, 3, MFD_EPROTO, "bytes after the codec name are not zero"),
	HSET("codec NUL first", 81, 1, 0, MFD_EPROTO, "the codec name contains a NUL byte"),
	HSET("codec 'zone'", 81, 1, 'z', MFD_EPROTO, "the source compresses with 'zone'"),
	HFLIP("uuid first byte", 32, 0x5a, MFD_EPROTO, "channel 1 belongs to another migration"),
	HFLIP("uuid last byte", 47, 0x5a, MFD_EPROTO, "belongs to another migration (session UUID differs)"),
	HSET("token zeroed", 48, 8, 0, MFD_EPROTO, "channel 1 presents a wrong session token"),
	HFLIP("token middle", 64, 0x33, MFD_EPROTO, "presents a wrong session token"),
	HSET("digest zeroed", 24, 8, 0, MFD_EPROTO, "the RAM block tables differ"),
	HFLIP("digest first byte", 24, 0x77, MFD_EPROTO, "the RAM block tables differ"),
	HCUT("cut at 2", 2),
	HCUT("cut at 4", 4),
	HCUT("cut at 8", 8),
	HCUT("cut at 16", 16),
	HCUT("cut at 32", 32),
	HCUT("cut at 80", 80),
	HCUT("cut at 100", 100),
	HCUT("cut at 126", 126),
	{ "none to a zstd side", 0, 0, 0, 128, "zstd", false, MFD_EPROTO, "the source compresses with 'none', this side expects 'zstd'" },
	{ "none to a zlib side", 0, 0, 0, 128, "zlib", false, MFD_EPROTO, "this side expects 'zlib'" },
	{ "none to an lz4 side", 0, 0, 0, 128, "lz4", false, MFD_EPROTO, "this side expects 'lz4'" },
};

START_TEST(bad_hello)
{
	const struct hcase *c = &hello_cases[_i];
	struct mrig g, src;
	struct mfd_multifd_recv *r = NULL;
	uint8_t h[MFD_HELLO_SIZE];
	mfd_channel *ch = NULL;
	mfd_error *err = NULL;

	if (c->codec && !mfd_compress_find(c->codec)) {
		test_skip("codec", "bad_input: %s not built in, case '%s'", c->codec, c->name);
		return;
	}
	mrig_init(&g, 4, c->codec);
	/* The source's hello: same session, its own codec (none). */
	src = g;
	src.cfg.codec = NULL;
	multifd_hello_encode(h, &src.cfg, 1, g.digest);
	for (unsigned k = 0; k < c->len; k++) {
		uint8_t v = (uint8_t)(c->val >> (8 * (c->len - 1 - k)));

		h[c->off + k] = c->flip ? h[c->off + k] ^ v : v;
	}
	ck_assert_ok(multifd_recv_new(&g.cfg, g.m->blocks, g.m->nblocks, &r, &err), err);
	ck_assert_ok(mfd_channel_new_mem_reader(h, c->cut, &ch, &err), err);
	int rc = multifd_recv_identify(ch, r, &err);
	struct bcase bc = { c->name, NULL, 0, c->code, c->msg };

	check_result(&bc, _i, rc, err, "multifd hello from");
	mfd_error_free(err);
	mfd_channel_free(ch);
	multifd_recv_free(r);
	mrig_free(&g);
}
END_TEST

/* =========================================================================
 * packet: multifd packets after a good hello
 * ========================================================================= */

static void pkt(struct bytes *b, uint16_t flags, uint32_t block, uint32_t nn, uint32_t nz,
		uint32_t payload, uint64_t num)
{
	b_be32(b, MFD_PACKET_MAGIC);
	b_be16(b, MFD_PACKET_VERSION);
	b_be16(b, flags);
	b_be32(b, block);
	b_be32(b, nn);
	b_be32(b, nz);
	b_be32(b, payload);
	b_be64(b, num);
}

/* Run one channel's receiver on hello + b, releasing every sync as the loader
 * would; the first error. */
static int feed(struct mrig *g, const struct bytes *b, mfd_error **errp)
{
	struct mfd_multifd_recv *r = NULL;
	mfd_channel *ch = NULL;
	struct bytes all = { 0 };
	uint8_t h[MFD_HELLO_SIZE];
	int rc;

	multifd_hello_encode(h, &g->cfg, 0, g->digest);
	b_raw(&all, h, sizeof(h));
	b_raw(&all, b->p, b->len);
	ck_assert_ok(multifd_recv_new(&g->cfg, g->m->blocks, g->m->nblocks, &r, errp), *errp);
	ck_assert_ok(mfd_channel_new_mem_reader(all.p, all.len, &ch, errp), *errp);
	ck_assert_int_eq(multifd_recv_identify(ch, r, errp), 0);
	ck_assert_ok(multifd_recv_start(r, errp), *errp);
	do
		rc = multifd_recv_sync(r, errp);
	while (rc == 0);
	mfd_error_free(*errp);
	*errp = NULL;
	rc = multifd_recv_finish(r, errp);
	multifd_recv_free(r);
	mfd_channel_free(ch);
	b_free(&all);
	return rc;
}

static void offsets(struct bytes *b, const uint64_t *o, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		b_be64(b, o[i]);
}

/* Packets on the uncompressed channel, by number. */
static void p_build(struct bytes *b, uint64_t i)
{
	static const uint8_t page[PS];
	const uint64_t o3[3] = { 0x1000, 0x3000, 0x2000 };

	switch (i) {
	case 0: b_be32(b, MFD_HELLO_MAGIC); b_raw(b, zeros, 28); break;
	case 1: b_be32(b, 0); b_raw(b, zeros, 28); break;
	case 2: b_be32(b, 0xffffffff); b_raw(b, zeros, 28); break;
	case 3: b_be32(b, MFD_PACKET_MAGIC); b_be16(b, 3); b_raw(b, zeros, 25); b_u8(b, 1); break;
	case 4: b_be32(b, MFD_PACKET_MAGIC); b_be16(b, 0xffff); b_raw(b, zeros, 25); b_u8(b, 1);
		break;
	case 5: pkt(b, 0x10, 0, 0, 0, 0, 1); break;
	case 6: pkt(b, 0x20, 0, 0, 0, 0, 1); break;
	case 7: pkt(b, 0x100, 0, 0, 0, 0, 1); break;
	case 8: pkt(b, 0x4000 | MFD_PACKET_SYNC, 0, 0, 0, 0, 1); break;
	case 9: pkt(b, MFD_PACKET_END, 0, 0, 0, 4096, 1); break;
	case 10: pkt(b, MFD_PACKET_END, 1, 0, 0, 0, 1); break;
	case 11: pkt(b, MFD_PACKET_END | MFD_PACKET_COMPRESSED, 0, 0, 0, 0, 1); break;
	case 12: pkt(b, MFD_PACKET_END, 0, 0, 1, 0, 1); break;
	case 13: pkt(b, MFD_PACKET_SYNC, 0, 0, 3, 0, 1); break;
	case 14: pkt(b, 0, 2, 1, 0, PS, 1); break;
	case 15: pkt(b, 0, 0x80000000, 1, 0, PS, 1); break;
	case 16: pkt(b, 0, 0, 128, 1, 128 * PS, 1); break;
	case 17: pkt(b, 0, 0, 0, 0x80000000, 0, 1); break;
	case 18: pkt(b, 0, 0, 0x80000000, 0x80000000, 0, 1); break;
	case 19: pkt(b, 0, 0, 2, 0, PS, 1); break;
	case 20: pkt(b, 0, 0, 1, 0, 0, 1); break;
	case 21: pkt(b, 0, 0, 128, 0, 127 * PS, 1); break;
	case 22: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 1); break;
	case 23: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0x1001); break;
	case 24: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 63 * PS + 1); break;
	case 25: pkt(b, 0, 0, 0, 1, 0, 1); b_be64(b, 64 * PS); break;
	case 26: pkt(b, 0, 0, 0, 1, 0, 1); b_be64(b, 0xffffffffffffffffull); break;
	case 27: pkt(b, 0, 0, 3, 0, 3 * PS, 1); offsets(b, o3, 3); break;
	case 28: pkt(b, 0, 0, 0, 3, 0, 1); offsets(b, o3, 3); break;
	case 29: { const uint64_t o[4] = { 0x1000, 0x5000, 0x2000, 0x5000 };
		pkt(b, 0, 0, 2, 2, 2 * PS, 1); offsets(b, o, 4); break; }
	case 30: data:
		pkt(b, 0, 0, 1, 0, PS, 5); b_be64(b, 0x3000); b_raw(b, page, PS);
		pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 5); break;
	case 31: pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 0xffffffffffffffffull);
		pkt(b, MFD_PACKET_END, 0, 0, 0, 0, 1); break;
	case 32: pkt(b, 0, 1, 2, 0, 2 * HUGE_PS, 1); break;
	case 33: pkt(b, 0, 1, 1, 1, HUGE_PS, 1); break;
	case 34: pkt(b, 0, 1, 0, 1, 0, 1); b_be64(b, 0x1000); break;
	case 35: pkt(b, 0, 1, 0, 1, 0, 1); b_be64(b, HUGE_BYTES); break;
	case 36: pkt(b, 0, 1, 1, 0, PS, 1); break;
	case 37: pkt(b, MFD_PACKET_COMPRESSED, 0, 2, 0, 10, 1); break;
	case 38: pkt(b, 0, 0, 1, 0, PS, 1); b_be64(b, 0x3000); b_raw(b, page, PS - 1); break;
	case 39: pkt(b, 0, 0, 0, 2, 0, 1); b_be64(b, 0x1000); break;
	case 40: pkt(b, 0, 0, 0, 1, 0, 1); b_be64(b, 0x1000); b_raw(b, zeros, 10); break;
	case 41: pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 2); pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 2);
		break;
	case 42: /* the stream of case 30, its last SYNC one byte short */
		goto data;
	}
	if (i == 42)
		b->len -= 1;
}

static const struct bcase pkt_cases[] = {
	{ "hello magic again", p_build, 0, MFD_EBADMAGIC, "packet after #0: magic 0x4d464448, expected 0x4d464450" },
	{ "magic 0", p_build, 1, MFD_EBADMAGIC, "packet after #0: magic 0x00000000" },
	{ "magic all ones", p_build, 2, MFD_EBADMAGIC, "magic 0xffffffff" },
	{ "version 3", p_build, 3, MFD_EBADVERSION, "packet 1: version 3, this library reads 1" },
	{ "version max", p_build, 4, MFD_EBADVERSION, "packet 1: version 65535" },
	{ "flag 0x10", p_build, 5, MFD_EPROTO, "packet 1: unknown flags 0x0010" },
	{ "flag 0x20", p_build, 6, MFD_EPROTO, "packet 1: unknown flags 0x0020" },
	{ "flag 0x100", p_build, 7, MFD_EPROTO, "packet 1: unknown flags 0x0100" },
	{ "flag 0x4000 with SYNC", p_build, 8, MFD_EPROTO, "packet 1: unknown flags 0x4000" },
	{ "END with payload", p_build, 9, MFD_EPROTO, "packet 1: an END packet carries pages or other flags" },
	{ "END with a block", p_build, 10, MFD_EPROTO, "an END packet carries pages" },
	{ "END compressed", p_build, 11, MFD_EPROTO, "an END packet carries pages or other flags" },
	{ "END with a zero page", p_build, 12, MFD_EPROTO, "an END packet carries pages" },
	{ "SYNC with zero pages", p_build, 13, MFD_EPROTO, "packet 1: a SYNC packet carries pages" },
	{ "block 2 of 2", p_build, 14, MFD_EPROTO, "packet 1: block index 2, there are 2 blocks" },
	{ "block 2^31", p_build, 15, MFD_EPROTO, "block index 2147483648, there are 2 blocks" },
	{ "128 + 1 pages", p_build, 16, MFD_EPROTO, "128 normal + 1 zero pages, a packet of block 'ram' holds at most 128" },
	{ "2^31 zero pages", p_build, 17, MFD_EPROTO, "0 normal + 2147483648 zero pages" },
	{ "counts summing to 2^32", p_build, 18, MFD_EPROTO, "2147483648 normal + 2147483648 zero pages" },
	{ "2 pages, 1 page of payload", p_build, 19, MFD_EPROTO, "raw payload of 4096 bytes, 2 normal pages of 4096 bytes make 8192" },
	{ "1 page, no payload", p_build, 20, MFD_EPROTO, "raw payload of 0 bytes, 1 normal pages" },
	{ "128 pages, 127 of payload", p_build, 21, MFD_EPROTO, "raw payload of 520192 bytes, 128 normal pages" },
	{ "offset 1", p_build, 22, MFD_EPROTO, "normal page offset 0x1 in block 'ram' is not aligned to its 4096-byte pages" },
	{ "offset 0x1001", p_build, 23, MFD_EPROTO, "normal page offset 0x1001 in block 'ram' is not aligned" },
	{ "last page + 1", p_build, 24, MFD_EPROTO, "normal page offset 0x3f001" },
	{ "zero offset = size", p_build, 25, MFD_EPROTO, "zero page offset 0x40000 is beyond block 'ram' (262144 bytes)" },
	{ "zero offset max", p_build, 26, MFD_EPROTO, "zero page offset 0xffffffffffffffff in block 'ram' is not aligned" },
	{ "normal offsets out of order", p_build, 27, MFD_EPROTO, "normal page offsets are not strictly ascending (0x2000 after 0x3000)" },
	{ "zero offsets out of order", p_build, 28, MFD_EPROTO, "zero page offsets are not strictly ascending (0x2000 after 0x3000)" },
	{ "second page in both lists", p_build, 29, MFD_EPROTO, "page 0x5000 is both a normal and a zero page" },
	{ "SYNC reusing a data packet's number", p_build, 30, MFD_EPROTO, "packet number 5 after 5: numbers must increase" },
	{ "number after the maximum", p_build, 31, MFD_EPROTO, "packet number 1 after 18446744073709551615" },
	{ "2 pages of a 2 MiB block", p_build, 32, MFD_EPROTO, "2 normal + 0 zero pages, a packet of block 'huge' holds at most 1" },
	{ "1 + 1 pages of a 2 MiB block", p_build, 33, MFD_EPROTO, "1 normal + 1 zero pages, a packet of block 'huge' holds at most 1" },
	{ "4 KiB offset in a 2 MiB block", p_build, 34, MFD_EPROTO, "zero page offset 0x1000 in block 'huge' is not aligned to its 2097152-byte pages" },
	{ "offset beyond a 2 MiB block", p_build, 35, MFD_EPROTO, "zero page offset 0x400000 is beyond block 'huge' (4194304 bytes)" },
	{ "4 KiB payload for a 2 MiB page", p_build, 36, MFD_EPROTO, "raw payload of 4096 bytes, 1 normal pages of 2097152 bytes make 2097152" },
	{ "compressed on a raw channel", p_build, 37, MFD_EPROTO, "packet 1: compressed, but this migration uses no codec" },
	{ "page cut by one byte", p_build, 38, MFD_EEOF, "end of data after 4095 of 4096 bytes" },
	{ "offset list cut", p_build, 39, MFD_EEOF, "end of data after 8 of 16 bytes" },
	{ "zero page then garbage", p_build, 40, MFD_EEOF, "end of data after 10 of 32 bytes" },
	{ "two SYNCs with one number", p_build, 41, MFD_EPROTO, "packet number 2 after 2" },
	{ "SYNC cut by one byte", p_build, 42, MFD_EEOF, "end of data after 31 of 32 bytes" },
};

START_TEST(bad_packet)
{
	const struct bcase *c = &pkt_cases[_i];
	struct mrig g;
	struct bytes b = { 0 };
	mfd_error *err = NULL;

	mrig_init(&g, 1, NULL);
	c->build(&b, c->arg);
	int rc = feed(&g, &b, &err);

	check_result(c, _i, rc, err, "multifd channel 0");
	mfd_error_free(err);
	b_free(&b);
	mrig_free(&g);
}
END_TEST

/* ---- every codec: compressed payloads that lie ---------------------------------- */

static const char *const codec_names[] = { "none", "zlib", "zstd", "lz4" };

/* Compress `len` bytes of a text-like pattern with `codec`. */
static void compress_pattern(const mfd_compress_ops *codec, size_t len, struct bytes *out)
{
	uint8_t *in = malloc(len), *buf;
	size_t cap = codec->bound(len), n = 0;
	void *ctx = NULL;
	mfd_error *err = NULL;

	ck_assert_ptr_nonnull(in);
	for (size_t i = 0; i < len; i++)
		in[i] = (uint8_t)("compressible page text "[i % 23]);
	buf = malloc(cap);
	ck_assert_ptr_nonnull(buf);
	ck_assert_ok(codec->send_setup(codec->opaque, &ctx, codec->level_default, &err), err);
	ck_assert_ok(codec->send_prepare(ctx, in, len, buf, cap, &n, &err), err);
	codec->send_cleanup(ctx);
	b_raw(out, buf, n);
	free(buf);
	free(in);
}

enum ccase {
	CC_BOUND_PLUS_1,	/* payload one past the codec's bound, 2 pages */
	CC_ONE_BYTE,		/* 1 byte of payload */
	CC_ZEROS,		/* 64 zero bytes */
	CC_GARBAGE,		/* 200 bytes of noise */
	CC_HALF_PAGE,		/* a valid encoding of half a page, for 1 page */
	CC_TWO_PAGES,		/* a valid encoding of 2 pages, for 1 page */
	CC_TRAILING,		/* a valid encoding of 1 page, then 1 extra byte */
	CC_CUT,			/* a valid encoding of 1 page, its last 2 bytes missing */
	CC_CUT_HALF,		/* the first half of a valid encoding */
	CC_OTHER_CODEC,		/* a valid encoding by the next codec */
	CC_ZERO_PAGE_ONLY,	/* compressed flag with only a zero page */
	CC_COUNT
};

static const char *const ccase_names[CC_COUNT] = {
	"payload beyond the bound", "1-byte payload", "64 zero bytes", "noise",
	"half a page for one page", "two pages for one page", "a trailing byte",
	"cut by 2 bytes", "first half only", "another codec's encoding", "zero pages only",
};

static bool codec_case_applies(int codec, int cc)
{
	/* none is a plain copy: it has no encoding to corrupt, only a size. */
	if (codec == 0)
		return cc == CC_BOUND_PLUS_1 || cc == CC_ONE_BYTE || cc == CC_HALF_PAGE ||
		       cc == CC_TWO_PAGES || cc == CC_TRAILING || cc == CC_ZERO_PAGE_ONLY;
	return true;
}

/* What each codec says: the distinctive words of its message (NULL: not applicable). */
static const char *const codec_msg[4][CC_COUNT] = {
	[0] = {
		[CC_BOUND_PLUS_1] = "exceeds the none bound",
		[CC_ONE_BYTE] = "none: payload of 1 bytes, the packet holds 4096",
		[CC_HALF_PAGE] = "none: payload of 2048 bytes, the packet holds 4096",
		[CC_TWO_PAGES] = "exceeds the none bound",
		[CC_TRAILING] = "exceeds the none bound",
		[CC_ZERO_PAGE_ONLY] = "compressed payload of 10 bytes for 0 normal pages",
	},
	[1] = {
		[CC_BOUND_PLUS_1] = "exceeds the zlib bound",
		[CC_ONE_BYTE] = "zlib: payload ended before the stream end (0 of 4096",
		[CC_ZEROS] = "zlib: corrupt stream at input byte 2",
		[CC_GARBAGE] = "zlib: corrupt stream at input byte 2 (0 of 4096 output bytes written): incorrect header check",
		[CC_HALF_PAGE] = "zlib: payload decodes to 2048 bytes, the packet holds 4096",
		[CC_TWO_PAGES] = "expands beyond the packet's 4096 bytes",
		[CC_TRAILING] = "zlib: 1 bytes of trailing input after the end of the stream",
		[CC_CUT] = "zlib: payload ended before the stream end (4096 of 4096",
		[CC_CUT_HALF] = "zlib: payload ended before the stream end",
		[CC_OTHER_CODEC] = "zlib: corrupt stream at input byte 2",
		[CC_ZERO_PAGE_ONLY] = "compressed payload of 10 bytes for 0 normal pages",
	},
	[2] = {
		[CC_BOUND_PLUS_1] = "exceeds the zstd bound",
		[CC_ONE_BYTE] = "zstd: payload ended before the frame end (1 bytes",
		[CC_ZEROS] = "zstd: payload does not start with a zstd frame (magic 0x00000000)",
		[CC_GARBAGE] = "zstd: payload does not start with a zstd frame",
		[CC_HALF_PAGE] = "zstd: frame declares 2048 bytes of content, the packet holds 4096",
		[CC_TWO_PAGES] = "zstd: frame declares 8192 bytes of content, the packet holds 4096",
		[CC_TRAILING] = "zstd: 1 bytes of trailing input after the end of the frame",
		[CC_CUT] = "zstd: payload ended before the frame end (4096 of 4096",
		[CC_CUT_HALF] = "zstd: payload ended before the frame end (0 of 4096",
		[CC_OTHER_CODEC] = "zstd: payload does not start with a zstd frame",
		[CC_ZERO_PAGE_ONLY] = "compressed payload of 10 bytes for 0 normal pages",
	},
	[3] = {
		[CC_BOUND_PLUS_1] = "exceeds the lz4 bound",
		[CC_ONE_BYTE] = "lz4: payload of 1 bytes is corrupt or expands beyond",
		[CC_ZEROS] = "lz4: payload of 64 bytes is corrupt",
		[CC_GARBAGE] = "lz4: payload of 200 bytes is corrupt",
		[CC_HALF_PAGE] = "lz4: payload decodes to 2048 bytes, the packet holds 4096",
		[CC_TWO_PAGES] = "bytes is corrupt or expands beyond the packet's 4096 bytes",
		[CC_TRAILING] = "bytes is corrupt or expands beyond the packet's 4096 bytes",
		[CC_CUT] = "bytes is corrupt or expands beyond the packet's 4096 bytes",
		[CC_CUT_HALF] = "bytes is corrupt or expands beyond the packet's 4096 bytes",
		[CC_OTHER_CODEC] = "bytes is corrupt or expands beyond the packet's 4096 bytes",
		[CC_ZERO_PAGE_ONLY] = "compressed payload of 10 bytes for 0 normal pages",
	},
};

START_TEST(bad_compressed)
{
	int codec = _i / CC_COUNT, cc = _i % CC_COUNT;
	const mfd_compress_ops *ops = mfd_compress_find(codec_names[codec]);
	struct mrig g;
	struct bytes b = { 0 }, enc = { 0 };
	mfd_error *err = NULL;
	uint32_t nn = 1;

	if (!codec_case_applies(codec, cc))
		return;
	if (!ops) {
		test_skip("codec", "bad_input: codec %s not built in", codec_names[codec]);
		return;
	}
	mrig_init(&g, 1, codec_names[codec]);
	switch (cc) {
	case CC_BOUND_PLUS_1:
		nn = 2;
		pkt(&b, MFD_PACKET_COMPRESSED, 0, 2, 0, (uint32_t)ops->bound(2 * PS) + 1, 1);
		break;
	case CC_ONE_BYTE: b_u8(&enc, 0x78); break;
	case CC_ZEROS: b_raw(&enc, zeros, 64); break;
	case CC_GARBAGE:
		for (int k = 0; k < 200; k++)
			b_u8(&enc, (uint8_t)(k * 131 + 7));
		break;
	case CC_HALF_PAGE: compress_pattern(ops, PS / 2, &enc); break;
	case CC_TWO_PAGES: compress_pattern(ops, 2 * PS, &enc); break;
	case CC_TRAILING: compress_pattern(ops, PS, &enc); b_u8(&enc, 0); break;
	case CC_CUT: compress_pattern(ops, PS, &enc); enc.len -= 2; break;
	case CC_CUT_HALF: compress_pattern(ops, PS, &enc); enc.len /= 2; break;
	case CC_OTHER_CODEC: {
		const mfd_compress_ops *other = NULL;

		for (int k = 1; k < 4 && !other; k++) {
			int o = 1 + (codec - 1 + k) % 3;

			if (o != codec)
				other = mfd_compress_find(codec_names[o]);
		}
		if (!other) {
			mrig_free(&g);
			return;
		}
		compress_pattern(other, PS, &enc);
		break;
	}
	case CC_ZERO_PAGE_ONLY:
		pkt(&b, MFD_PACKET_COMPRESSED, 0, 0, 1, 10, 1);
		break;
	}
	if (b.len == 0) {
		pkt(&b, MFD_PACKET_COMPRESSED, 0, nn, 0, (uint32_t)enc.len, 1);
		b_be64(&b, 0x3000);
		b_raw(&b, enc.p, enc.len);
		pkt(&b, MFD_PACKET_END, 0, 0, 0, 0, 2);
	}
	int rc = feed(&g, &b, &err);
	struct bcase bc = { ccase_names[cc], NULL, 0, MFD_EPROTO, codec_msg[codec][cc] };

	check_result(&bc, _i, rc, err, "packet 1");
	mfd_error_free(err);
	b_free(&enc);
	b_free(&b);
	mrig_free(&g);
}
END_TEST

/* A valid channel (hello, raw and zero pages, a 2 MiB page, SYNC, END) cut at
 * every byte offset ends in a clean end-of-data error; one codec too. */
static void channel_bytes(struct mrig *g, bool compressed, struct bytes *b)
{
	static uint8_t page[PS];
	uint8_t h[MFD_HELLO_SIZE];

	memset(page, 0x5c, sizeof(page));
	multifd_hello_encode(h, &g->cfg, 0, g->digest);
	b_raw(b, h, sizeof(h));
	if (compressed) {
		struct bytes enc = { 0 };

		compress_pattern(g->cfg.codec, 2 * PS, &enc);
		pkt(b, MFD_PACKET_COMPRESSED, 0, 2, 1, (uint32_t)enc.len, 1);
		b_be64(b, 0x1000);
		b_be64(b, 0x2000);
		b_be64(b, 0x5000);
		b_raw(b, enc.p, enc.len);
		b_free(&enc);
	} else {
		pkt(b, 0, 0, 2, 1, 2 * PS, 1);
		b_be64(b, 0x1000);
		b_be64(b, 0x2000);
		b_be64(b, 0x5000);
		b_raw(b, page, PS);
		b_raw(b, page, PS);
	}
	pkt(b, MFD_PACKET_SYNC, 0, 0, 0, 0, 2);
	pkt(b, 0, 1, 0, 1, 0, 3);
	b_be64(b, HUGE_PS);
	pkt(b, MFD_PACKET_END, 0, 0, 0, 0, 4);
}

static int feed_raw(struct mrig *g, const void *p, size_t len, mfd_error **errp)
{
	struct mfd_multifd_recv *r = NULL;
	mfd_channel *ch = NULL;
	int rc;

	ck_assert_ok(multifd_recv_new(&g->cfg, g->m->blocks, g->m->nblocks, &r, errp), *errp);
	ck_assert_ok(mfd_channel_new_mem_reader(p, len, &ch, errp), *errp);
	rc = multifd_recv_identify(ch, r, errp);
	if (rc == 0 && (rc = multifd_recv_start(r, errp)) == 0) {
		do
			rc = multifd_recv_sync(r, errp);
		while (rc == 0);
		mfd_error_free(*errp);
		*errp = NULL;
		rc = multifd_recv_finish(r, errp);
	}
	multifd_recv_free(r);
	mfd_channel_free(ch);
	return rc;
}

START_TEST(channel_cut_at_every_byte)
{
	const char *codec = _i == 0 ? NULL : "zstd";
	struct mrig g;
	struct bytes b = { 0 };
	mfd_error *err = NULL;

	if (codec && !mfd_compress_find(codec))
		codec = mfd_compress_find("zlib") ? "zlib" : NULL;
	if (_i == 1 && !codec) {
		test_skip("codec", "bad_input: no compressing codec built in");
		return;
	}
	mrig_init(&g, 1, codec);
	channel_bytes(&g, codec != NULL, &b);
	ck_assert_ok(feed_raw(&g, b.p, b.len, &err), err);
	ck_assert_uint_eq(g.ram[0x1000], codec ? 'c' : 0x5c);
	for (size_t cut = 0; cut < b.len; cut++) {
		int rc = feed_raw(&g, b.p, cut, &err);

		ck_assert_msg(rc == MFD_EEOF, "cut at %zu of %zu: %d %s", cut, b.len, rc,
			      mfd_error_message(err));
		ck_assert_msg(strstr(mfd_error_message(err), "end of data"), "cut %zu: %s", cut,
			      mfd_error_message(err));
		mfd_error_free(err);
		err = NULL;
	}
	if (_i == 0)
		printf("bad_input: multifd channel of %zu bytes cut at every offset\n", b.len);
	b_free(&b);
	mrig_free(&g);
}
END_TEST

/* =========================================================================
 * engine: a real destination engine, a raw peer
 * ========================================================================= */

#define ENG_PAGES 64
#define ENG_TIMEOUT_MS 3000	/* channel-timeout-ms: a missing peer fails fast */
#define WAIT_MS 20000		/* no case may take longer than this */
#define PACKET_BYTES (128u * 4096u)

struct probe_dest {
	mfd_migration *m;
	uint8_t *ram, *huge;
};

static void set(mfd_migration *m, const char *name, const char *value)
{
	mfd_error *err = NULL;

	ck_assert_ok(mfd_set_param(m, name, value, &err), err);
}

/* params: "name=value,name=value" on top of channel-timeout-ms and 2 channels. */
static void probe_dest_init(struct probe_dest *d, const char *params, bool huge)
{
	mfd_error *err = NULL;
	char buf[256], *save = NULL;

	memset(d, 0, sizeof(*d));
	d->ram = mmap(NULL, ENG_PAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	ck_assert_ptr_ne(d->ram, MAP_FAILED);
	ck_assert_ok(mfd_migration_new(&d->m, &err), err);
	ck_assert_ok(mfd_ram_block_add(d->m, "pc.ram", d->ram, ENG_PAGES * PS, PS, &err), err);
	if (huge) {
		d->huge = mmap(NULL, HUGE_BYTES, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert_ptr_ne(d->huge, MAP_FAILED);
		ck_assert_ok(mfd_ram_block_add(d->m, "huge", d->huge, HUGE_BYTES, HUGE_PS, &err),
			     err);
	}
	set(d->m, "channel-timeout-ms", "3000");
	set(d->m, "multifd-channels", "2");
	snprintf(buf, sizeof(buf), "%s", params ? params : "");
	for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');

		ck_assert_ptr_nonnull(eq);
		*eq = '\0';
		set(d->m, kv, eq + 1);
	}
}

static void probe_dest_free(struct probe_dest *d)
{
	mfd_migration_free(d->m);
	munmap(d->ram, ENG_PAGES * PS);
	if (d->huge)
		munmap(d->huge, HUGE_BYTES);
}

static int tcp_connect_uri(const char *uri)
{
	const char *colon = strrchr(uri, ':');
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_nonnull(colon);
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		/* The destination refused an earlier connection and closed its
		 * listener: its error is what the case checks. */
		close(fd);
		return -1;
	}
	return fd;
}

static void write_all_fd(int fd, const void *p, size_t len)
{
	const uint8_t *q = p;

	while (len) {
		ssize_t n = send(fd, q, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;	/* the peer gave up first: its error is what we check */
		q += n;
		len -= (size_t)n;
	}
}

static const uint8_t session_uuid[16] = "uuid-of-the-test";
static const uint8_t session_token[32] = "token-of-the-test-session-0123!";

/* A main hello the default destination accepts. */
static void main_hello(uint8_t h[128], uint32_t flags, uint16_t nchan, const char *codec)
{
	memset(h, 0, 128);
	store_be32(h, 0x4d46444d);
	store_be32(h + 4, 1);
	store_be32(h + 8, flags);
	store_be16(h + 12, nchan);
	store_be32(h + 16, PACKET_BYTES);
	memcpy(h + 32, session_uuid, 16);
	memcpy(h + 48, session_token, 32);
	h[80] = (uint8_t)strlen(codec);
	memcpy(h + 81, codec, strlen(codec));
}

static void preempt_hello(uint8_t h[128])
{
	memset(h, 0, 128);
	store_be32(h, 0x4d464451);
	store_be32(h + 4, 2);
	memcpy(h + 32, session_uuid, 16);
	memcpy(h + 48, session_token, 32);
}

static void mf_hello(uint8_t h[MFD_HELLO_SIZE], struct probe_dest *d, uint16_t id, uint16_t n)
{
	struct mfd_multifd_config cfg;
	mfd_error *err = NULL;

	ck_assert_ok(multifd_config_init(&cfg, &err), err);
	cfg.channels = n;
	memcpy(cfg.uuid, session_uuid, 16);
	memcpy(cfg.token, session_token, 32);
	multifd_hello_encode(h, &cfg, id, ram_blocks_digest(d->m->blocks, d->m->nblocks));
}

/* One engine case: a spoiled byte range in one of the connections' first bytes. */
enum conn { C_MAIN, C_PREEMPT, C_MF0, C_MF1 };

struct ecase {
	const char *name;
	const char *params;	/* the destination's */
	uint32_t flags;		/* the main hello's */
	uint16_t nchan;
	enum conn which;	/* the connection to spoil */
	unsigned off, len;	/* set len bytes at off to val ... */
	uint64_t val;
	int cut;		/* ... or, >= 0, send only cut bytes of it and close */
	int code;
	const char *msg;
};

#define MH(n, o, l, v, c, m) { n, NULL, 1, 2, C_MAIN, o, l, v, -1, c, m }
#define MHP(n, p, f, c, m) { n, p, f, 2, C_MAIN, 0, 0, 0, -1, c, m }
#define MHCUT(n, k) { n, NULL, 1, 2, C_MAIN, 0, 0, 0, k, MFD_EEOF, "end of data" }
#define PRE "postcopy-ram=on,postcopy-preempt=on"

static const struct ecase eng_cases[] = {
	/* main hello: magic and version */
	MH("main magic 0", 0, 4, 0, MFD_EBADMAGIC, "main channel: magic 0x00000000, expected 0x4d46444d (not a libmultifd source?)"),
	MH("main magic QEVM", 0, 4, 0x5145564d, MFD_EBADMAGIC, "main channel: magic 0x5145564d"),
	MH("main magic MFDQ", 0, 4, 0x4d464451, MFD_EBADMAGIC, "main channel: magic 0x4d464451"),
	MH("main magic HTTP", 0, 4, 0x47455420, MFD_EBADMAGIC, "main channel: magic 0x47455420"),
	MH("main magic off by one", 0, 4, 0x4d46444c, MFD_EBADMAGIC, "magic 0x4d46444c, expected 0x4d46444d"),
	MH("multifd hello first", 0, 4, 0x4d464448, MFD_EPROTO, "a multifd channel arrived before the main channel"),
	MH("main version 0", 4, 4, 0, MFD_EBADVERSION, "main channel: hello version 0, this library speaks 1"),
	MH("main version 2", 4, 4, 2, MFD_EBADVERSION, "hello version 2, this library speaks 1"),
	MH("main version max", 4, 4, 0xffffffff, MFD_EBADVERSION, "hello version 4294967295"),
	/* flags */
	MH("flag 0x20", 8, 4, 0x21, MFD_EPROTO, "main channel: unknown hello flags 0x21"),
	MH("switchover-confirm to a side without it", 8, 4, 0x11, MFD_EPROTO, "the source has switchover-confirm on, this side off"),
	MH("flag 0x100", 8, 4, 0x101, MFD_EPROTO, "unknown hello flags 0x101"),
	MH("flag bit 31", 8, 4, 0x80000001, MFD_EPROTO, "unknown hello flags 0x80000001"),
	MH("resume to a new destination", 8, 4, 0x5, MFD_ESTATE, "the source resumes a paused postcopy migration, but this side starts a new one"),
	MHP("postcopy to a precopy side", NULL, 0x9, MFD_EPROTO, "the source has postcopy-ram on and postcopy-preempt off, this side off and off"),
	MHP("preempt to a precopy side", NULL, 0x3, MFD_EPROTO, "postcopy-preempt on, this side off and off"),
	MHP("precopy to a postcopy side", "postcopy-ram=on", 0x1, MFD_EPROTO, "the source has postcopy-ram off and postcopy-preempt off, this side on and off"),
	MHP("no preempt to a preempt side", PRE, 0x9, MFD_EPROTO, "postcopy-ram on and postcopy-preempt off, this side on and on"),
	MHP("postcopy without return path", "postcopy-ram=on", 0x8, MFD_EPROTO, "postcopy-ram needs the return path, which the source turned off"),
	MHP("preempt + postcopy without RP", PRE, 0xa, MFD_EPROTO, "postcopy-ram needs the return path"),
	/* counts and sizes */
	MH("0 channels", 12, 2, 0, MFD_EPROTO, "the source uses 0 multifd channels, this side expects 2 (set multifd-channels alike)"),
	MH("1 channel", 12, 2, 1, MFD_EPROTO, "the source uses 1 multifd channels, this side expects 2"),
	MH("3 channels", 12, 2, 3, MFD_EPROTO, "the source uses 3 multifd channels"),
	MH("65535 channels", 12, 2, 0xffff, MFD_EPROTO, "the source uses 65535 multifd channels"),
	MH("packet 0", 16, 4, 0, MFD_EPROTO, "the source's packets hold 0 bytes, this side's 524288 (set multifd-packet-size alike)"),
	MH("packet 4 KiB", 16, 4, 4096, MFD_EPROTO, "the source's packets hold 4096 bytes"),
	MH("packet + 1", 16, 4, PACKET_BYTES + 1, MFD_EPROTO, "the source's packets hold 524289 bytes"),
	MH("packet max", 16, 4, 0xffffffff, MFD_EPROTO, "the source's packets hold 4294967295 bytes"),
	/* codec */
	MH("codec length 0", 80, 1, 0, MFD_EPROTO, "main channel: codec name length 0"),
	MH("codec length 32", 80, 1, 32, MFD_EPROTO, "main channel: codec name length 32"),
	MH("codec length 255", 80, 1, 255, MFD_EPROTO, "main channel: codec name length 255"),
	MH("codec zstd", 81, 4, 0x7a737464, MFD_EPROTO, "the source compresses with 'zstd', this side expects 'none' (set multifd-compression alike)"),
	MH("codec NONE", 81, 4, 0x4e4f4e45, MFD_EPROTO, "the source compresses with 'NONE'"),
	MH("codec 'non'", 80, 1, 3, MFD_EPROTO, "the source compresses with 'non', this side expects 'none'"),
	MH("codec 'none\\0' of 5 bytes", 80, 1, 5, MFD_EPROTO, "main channel: codec name of 5 bytes contains a NUL byte"),
	/* reserved bytes */
	MH("reserved byte 14", 14, 1, 1, MFD_EPROTO, "main channel: reserved hello byte 14 is 0x01, not 0"),
	MH("reserved byte 15", 15, 1, 0x80, MFD_EPROTO, "reserved hello byte 15 is 0x80"),
	MH("reserved byte 20", 20, 1, 0xff, MFD_EPROTO, "reserved hello byte 20 is 0xff"),
	MH("reserved byte 31", 31, 1, 2, MFD_EPROTO, "reserved hello byte 31 is 0x02"),
	MH("byte after the codec name", 85, 1, 0x41, MFD_EPROTO, "reserved hello byte 85 is 0x41"),
	MH("reserved byte 127", 127, 1, 1, MFD_EPROTO, "reserved hello byte 127 is 0x01"),
	{ "codec none to a zlib side", "multifd-compression=zlib", 1, 2, C_MAIN, 0, 0, 0, -1, MFD_EPROTO, "the source compresses with 'none', this side expects 'zlib'" },
	/* cut */
	MHCUT("main hello empty", 0),
	MHCUT("main hello cut at 1", 1),
	MHCUT("main hello cut at 64", 64),
	MHCUT("main hello cut at 127", 127),
	/* multifd hellos through the engine: bound to the main hello's session */
	{ "multifd token", NULL, 1, 2, C_MF0, 60, 1, 0, -1, MFD_EPROTO, "presents a wrong session token" },
	{ "multifd uuid", NULL, 1, 2, C_MF0, 40, 1, 0, -1, MFD_EPROTO, "belongs to another migration (session UUID differs)" },
	{ "multifd digest", NULL, 1, 2, C_MF1, 24, 8, 0, -1, MFD_EPROTO, "the RAM block tables differ" },
	{ "multifd id 2 of 2", NULL, 1, 2, C_MF1, 12, 2, 2, -1, MFD_EPROTO, "channel id 2, valid ids are 0..1" },
	{ "multifd duplicate id", NULL, 1, 2, C_MF1, 12, 2, 0, -1, MFD_EPROTO, "channel id 0 is already connected" },
	{ "multifd count", NULL, 1, 2, C_MF0, 14, 2, 3, -1, MFD_EPROTO, "the source uses 3 channels, this side expects 2" },
	{ "multifd codec", NULL, 1, 2, C_MF0, 81, 4, 0x7a6c6962, -1, MFD_EPROTO, "the source compresses with 'zlib', this side expects 'none'" },
	{ "multifd magic", NULL, 1, 2, C_MF0, 0, 4, 0x4d46444d, -1, MFD_EBADMAGIC, "magic 0x4d46444d, expected 0x4d464448" },
	{ "multifd hello cut", NULL, 1, 2, C_MF1, 0, 0, 0, 50, MFD_EEOF, "end of data" },
	/* preempt hello */
	{ "preempt magic", PRE, 0xb, 2, C_PREEMPT, 0, 4, 0x4d464448, -1, MFD_EBADMAGIC, "preempt channel: hello 0x4d464448 version 2, expected 0x4d464451 version 2" },
	{ "preempt version", PRE, 0xb, 2, C_PREEMPT, 4, 4, 1, -1, MFD_EBADMAGIC, "preempt channel: hello 0x4d464451 version 1, expected 0x4d464451 version 2" },
	{ "preempt uuid", PRE, 0xb, 2, C_PREEMPT, 33, 1, 0, -1, MFD_EPROTO, "preempt channel: it belongs to another session (UUID or token)" },
	{ "preempt token", PRE, 0xb, 2, C_PREEMPT, 79, 1, 0x55, -1, MFD_EPROTO, "preempt channel: it belongs to another session" },
	{ "preempt cut", PRE, 0xb, 2, C_PREEMPT, 0, 0, 0, 100, MFD_EEOF, "end of data" },
	{ "preempt main hello", PRE, 0xb, 2, C_PREEMPT, 0, 4, 0x4d46444d, -1, MFD_EBADMAGIC, "preempt channel: hello 0x4d46444d" },
	{ "preempt reserved 8", PRE, 0xb, 2, C_PREEMPT, 8, 1, 1, -1, MFD_EPROTO, "preempt channel: reserved hello byte 8 is 0x01, not 0" },
	{ "preempt reserved 31", PRE, 0xb, 2, C_PREEMPT, 31, 1, 7, -1, MFD_EPROTO, "preempt channel: reserved hello byte 31 is 0x07" },
	{ "preempt reserved 127", PRE, 0xb, 2, C_PREEMPT, 127, 1, 9, -1, MFD_EPROTO, "preempt channel: reserved hello byte 127 is 0x09" },
};

/* A connection that never showed the session's UUID and token (nothing,
 * junk, a foreign or cut hello, another session): the destination refuses it
 * and keeps waiting for its source. */
static bool is_stray(const struct ecase *c)
{
	static const char *const before_token[] = {
		"arrived before the main channel", "belongs to another", "wrong session token",
		"valid ids are", "the source uses 3 channels", "compresses with 'zlib'",
	};

	if (c->code == MFD_EBADMAGIC || c->code == MFD_EBADVERSION || c->code == MFD_EEOF)
		return true;
	for (size_t i = 0; i < sizeof(before_token) / sizeof(before_token[0]); i++)
		if (strstr(c->msg, before_token[i]) && (c->which != C_MAIN || i == 0))
			return true;
	return false;
}

static void spoil(uint8_t *h, const struct ecase *c)
{
	for (unsigned k = 0; k < c->len; k++)
		h[c->off + k] = (uint8_t)(c->val >> (8 * (c->len - 1 - k)));
}

static void send_conn(const char *uri, const uint8_t *h, size_t len, int cut, int *fdp)
{
	*fdp = tcp_connect_uri(uri);
	if (*fdp < 0)
		return;
	write_all_fd(*fdp, h, cut >= 0 ? (size_t)cut : len);
	if (cut >= 0)
		shutdown(*fdp, SHUT_WR);
}

/* Open the session as a source would, spoiling one connection.  Returns the
 * destination's result. */
static int run_engine(struct probe_dest *d, const struct ecase *c, int wait_ms, mfd_error **errp)
{
	char uri[128];
	uint8_t h[128];
	int fds[4] = { -1, -1, -1, -1 }, r;
	unsigned nmf = 2;

	ck_assert_ok(mfd_migrate_incoming(d->m, "tcp:127.0.0.1:0", errp), *errp);
	ck_assert_int_eq(mfd_migration_listen_uri(d->m, uri, sizeof(uri)), 0);
	main_hello(h, c->flags, c->nchan, "none");
	if (c->which == C_MAIN)
		spoil(h, c);
	send_conn(uri, h, 128, c->which == C_MAIN ? c->cut : -1, &fds[0]);
	ck_assert_int_ge(fds[0], 0);
	if (c->which != C_MAIN) {
		if (c->flags & 0x2) {
			preempt_hello(h);
			if (c->which == C_PREEMPT)
				spoil(h, c);
			send_conn(uri, h, 128, c->which == C_PREEMPT ? c->cut : -1, &fds[1]);
		}
		for (unsigned i = 0; i < nmf && c->which != C_PREEMPT; i++) {
			mf_hello(h, d, (uint16_t)i, 2);
			if ((int)c->which == C_MF0 + (int)i)
				spoil(h, c);
			send_conn(uri, h, MFD_HELLO_SIZE, (int)c->which == C_MF0 + (int)i ? c->cut : -1,
				  &fds[2 + i]);
		}
	}
	r = mfd_migration_wait(d->m, wait_ms, errp);
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return r;
}

START_TEST(bad_engine_hello)
{
	const struct ecase *c = &eng_cases[_i];
	struct probe_dest d;
	mfd_error *err = NULL;

	if (strstr(c->params ? c->params : "", "zlib") && !mfd_compress_find("zlib")) {
		test_skip("codec", "bad_input: zlib not built in, engine case %d", _i);
		return;
	}
	probe_dest_init(&d, c->params, false);
	if (is_stray(c)) {
		/* Refused and logged; the destination keeps waiting for its source. */
		test_log_capture_start();
		int r = run_engine(&d, c, 1000, &err);
		const char *log = test_log_capture_stop();

		ck_assert_msg(r == MFD_ERUNNING, "case %d '%s': got %d: %s", _i, c->name, r,
			      mfd_error_message(err));
		ck_assert_msg(strstr(log, "refused a connection") && strstr(log, c->msg),
			      "case %d '%s': the log lacks the refusal '%s':\n%s", _i, c->name,
			      c->msg, log);
		mfd_error_free(err);
		mfd_migrate_cancel(d.m);
		probe_dest_free(&d);
		return;
	}
	int r = run_engine(&d, c, WAIT_MS, &err);
	struct bcase bc = { c->name, NULL, 0, c->code, c->msg };

	check_result(&bc, _i, r, err, NULL);
	mfd_error_free(err);
	probe_dest_free(&d);
}
END_TEST

/* ---- the RAM section and the engine's commands, through file: ------------------ */

#define W(off, flags) b_be64(b, (uint64_t)(off) | (flags))

static void blocks(struct bytes *b, uint64_t total)
{
	W(total, RAM_FLAG_MEM_SIZE);
}

static void block_list(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_str(b, "pc.ram");
	b_be64(b, ENG_PAGES * PS);
	b_be64(b, PS);
	b_str(b, "huge");
	b_be64(b, HUGE_BYTES);
	b_be64(b, HUGE_PS);
}

static void named(struct bytes *b, uint64_t off, unsigned flags, const char *name)
{
	W(off, flags);
	b_str(b, name);
}

/* START: the block list and EOS, unless `start` writes something else. */
static void ram_start(struct bytes *b, uint32_t version, void (*payload)(struct bytes *))
{
	sec_hdr(b, 0x01, 0, "ram", 0, version);
	if (payload) {
		payload(b);
	} else {
		block_list(b);
		W(0, RAM_FLAG_EOS);
	}
	footer(b, 0);
}

static void r_part(struct bytes *b, uint64_t i);

/* The whole file: main hello (no multifd, no return path), header, START, one
 * PART whose records are `part` (its own EOS included), EOF. */
static void ram_file(struct bytes *b, uint32_t version, void (*start)(struct bytes *),
		     void (*part)(struct bytes *, uint64_t), uint64_t arg)
{
	uint8_t h[128];

	main_hello(h, 0, 0, "none");
	b_raw(b, h, 128);
	b_header(b);
	ram_start(b, version, start);
	if (part) {
		b_u8(b, 0x02);
		b_be32(b, 0);
		part(b, arg);
		/* The cut cases end the file right there. */
		if (part == r_part && arg >= 20 && arg <= 22)
			return;
		footer(b, 0);
	}
	b_u8(b, 0);
}

static const char *const bad_names[] = { "nope", "", "PC.RAM", "pc.ra", "pc.ram.x", "huge2" };

/* PART records by number. */
static void r_part(struct bytes *b, uint64_t i)
{
	static const uint8_t page[PS];

	switch (i) {
	case 0: block_list(b); break;			/* second block list */
	case 1: W(0, RAM_FLAG_MULTIFD_FLUSH); break;	/* no multifd on file: */
	case 2: W(0, RAM_FLAG_PAGE | RAM_FLAG_CONTINUE); break;
	case 3: W(0, RAM_FLAG_ZERO | RAM_FLAG_CONTINUE); break;
	case 4: case 5: case 6: case 7: case 8: case 9:
		named(b, 0, RAM_FLAG_ZERO, bad_names[i - 4]); break;
	case 10: named(b, ENG_PAGES * PS, RAM_FLAG_ZERO, "pc.ram"); b_u8(b, 0); break;
	case 11: named(b, 0xfffffffffffff000ull, RAM_FLAG_PAGE, "pc.ram"); break;
	case 12: named(b, 0x1000, RAM_FLAG_ZERO, "huge"); b_u8(b, 0); break;
	case 13: named(b, HUGE_BYTES, RAM_FLAG_ZERO, "huge"); b_u8(b, 0); break;
	case 14: named(b, HUGE_PS + PS, RAM_FLAG_PAGE, "huge"); break;
	case 15: /* CONTINUE keeps the block: beyond it */
		named(b, 0, RAM_FLAG_ZERO, "pc.ram"); b_u8(b, 0);
		W(ENG_PAGES * PS, RAM_FLAG_ZERO | RAM_FLAG_CONTINUE); b_u8(b, 0); break;
	case 16: case 17: case 18:
		named(b, 0x2000, RAM_FLAG_ZERO, "pc.ram");
		b_u8(b, i == 16 ? 1 : i == 17 ? 0xff : 0x80); break;
	case 19: W(0x2000, RAM_FLAG_ZERO | RAM_FLAG_CONTINUE); break;	/* see 20 */
	case 20: named(b, 0x2000, RAM_FLAG_PAGE, "pc.ram"); b_raw(b, page, 100);
		break;
	case 21: b_be32(b, 0); break;				/* word cut */
	case 22: W(0x2000, RAM_FLAG_PAGE); b_u8(b, 6); b_raw(b, "pc.", 3); break;	/* name cut */
	case 23: named(b, 0x2000, RAM_FLAG_ZERO, "pc.ram"); b_u8(b, 0); break;	/* no EOS */
	case 24: named(b, 0x2000, RAM_FLAG_PAGE, "pc.ram"); b_raw(b, page, PS);
		W(0, 0x040); break;				/* good page then junk flags */
	case 25: /* NUL in a block name */
		W(0x2000, RAM_FLAG_ZERO); b_u8(b, 8); b_raw(b, "pc.ram\0x", 8); b_u8(b, 0); break;
	}
	if (i == 19) {
		/* a CONTINUE after a good record of "huge": its offsets are 2 MiB pages */
		b->len -= 8;
		named(b, 0, RAM_FLAG_ZERO, "huge"); b_u8(b, 0);
		W(0x2000, RAM_FLAG_ZERO | RAM_FLAG_CONTINUE); b_u8(b, 0);
	}
	if (i != 20 && i != 21 && i != 22 && i != 23)
		W(0, RAM_FLAG_EOS);
}

/* PART with one word of these flags. */
static void r_flags(struct bytes *b, uint64_t flags)
{
	W(0x3000, flags);
	W(0, RAM_FLAG_EOS);
}

/* START payloads. */
static void s_total_plus(struct bytes *b) { blocks(b, ENG_PAGES * PS + HUGE_BYTES + PS); }
static void s_total_zero(struct bytes *b) { blocks(b, 0); W(0, RAM_FLAG_EOS); }
static void s_renamed(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_str(b, "pc.rom");
	b_be64(b, ENG_PAGES * PS);
	b_be64(b, PS);
}
static void s_swapped(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_str(b, "huge");
	b_be64(b, HUGE_BYTES);
	b_be64(b, HUGE_PS);
}
static void s_resized(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_str(b, "pc.ram");
	b_be64(b, ENG_PAGES * PS + HUGE_PS);
	b_be64(b, PS);
}
static void s_page_size(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_str(b, "pc.ram");
	b_be64(b, ENG_PAGES * PS);
	b_be64(b, 8192);
}
static void s_list_cut(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_str(b, "pc.ram");
	b_be32(b, 0);
}
static void s_page_first(struct bytes *b) { W(0, RAM_FLAG_PAGE); }
static void s_nul_name(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_u8(b, 8);
	b_raw(b, "pc.ram\0x", 8);
	b_be64(b, ENG_PAGES * PS);
	b_be64(b, PS);
}
static void s_eos_only(struct bytes *b) { W(0, RAM_FLAG_EOS); W(0, RAM_FLAG_EOS); }

/* Engine commands in the main stream (file:, so no return path, no postcopy). */
static void r_cmd(struct bytes *b, uint64_t i)
{
	uint8_t adv[16] = { 0 };

	store_be64(adv, 0x201000);
	store_be64(adv + 8, 4096);
	switch (i) {
	case 0: cmd(b, 1, 0, NULL); break;
	case 1: cmd(b, 2, 4, "\0\0\0\1"); break;
	case 2: cmd(b, 3, 16, adv); break;
	case 3: cmd(b, 3, 0, NULL); break;
	case 4: cmd(b, 4, 0, NULL); break;
	case 5: cmd(b, 5, 0, NULL); break;
	case 6: cmd(b, 6, 25, "\0\x06pc.rom\0" "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x10\0"); break;
	case 7: cmd(b, 10, 7, "\x06pc.ram"); break;
	case 8: cmd(b, 9, 0, NULL); break;
	case 9: cmd(b, 8, 0, NULL); break;
	}
}

/* A file with the header, START and then a command. */
static void cmd_file(struct bytes *b, uint64_t i)
{
	uint8_t h[128];

	main_hello(h, 0, 0, "none");
	b_raw(b, h, 128);
	b_header(b);
	ram_start(b, 1, NULL);
	r_cmd(b, i);
	b_u8(b, 0);
}

struct fcase {
	const char *name;
	uint32_t version;
	void (*start)(struct bytes *);
	void (*part)(struct bytes *, uint64_t);
	uint64_t arg;
	bool whole;		/* arg indexes cmd_file instead */
	int code;
	const char *msg;
};

#define RP_(n, a, c, m) { n, 1, NULL, r_part, a, false, c, m }
#define RF(n, f) { n, 1, NULL, r_flags, f, false, MFD_EPROTO, "ram: unknown combination of record flags " #f }
#define RS(n, s, c, m) { n, 1, s, NULL, 0, false, c, m }
#define RC(n, a, c, m) { n, 1, NULL, NULL, a, true, c, m }

static const struct fcase file_cases[] = {
	{ "RAM section version 0", 0, NULL, NULL, 0, false, MFD_EBADVERSION, "ram: section version 0, expected 1" },
	{ "RAM section version 2", 2, NULL, NULL, 0, false, MFD_EBADVERSION, "section 'ram' instance 0: the stream has version 2, this side loads up to version 1" },
	RS("RAM total + 1 page", s_total_plus, MFD_EPROTO, "ram: the source has 4460544 bytes of RAM, this side 4456448"),
	RS("RAM total 0", s_total_zero, MFD_EPROTO, "ram: the source has 0 bytes of RAM, this side 4456448"),
	RS("block renamed", s_renamed, MFD_EPROTO, "ram: the source's block 0 is 'pc.rom', this side has 'pc.ram'"),
	RS("blocks swapped", s_swapped, MFD_EPROTO, "ram: the source's block 0 is 'huge', this side has 'pc.ram'"),
	RS("block resized", s_resized, MFD_EPROTO, "ram: block 'pc.ram' is 2359296 bytes in 4096-byte pages on the source, 262144 in 4096-byte pages here"),
	RS("block page size", s_page_size, MFD_EPROTO, "block 'pc.ram' is 262144 bytes in 8192-byte pages on the source"),
	RS("block list cut", s_list_cut, MFD_EEOF, "unexpected end of data"),
	RS("page before the block list", s_page_first, MFD_EPROTO, "ram: record 0x8 before the block list"),
	RS("NUL in a listed block name", s_nul_name, MFD_EPROTO, "ram: block name 'pc.ram\\x00x' contains a NUL byte"),
	RS("EOS then a stray word", s_eos_only, MFD_EBADFOOTER, "section 'ram' (id 0): expected footer 0x7e"),
	RP_("second block list", 0, MFD_EPROTO, "ram: second block list"),
	RP_("flush without multifd", 1, MFD_EPROTO, "ram: multifd flush marker without multifd channels"),
	RP_("PAGE CONTINUE first", 2, MFD_EPROTO, "ram: CONTINUE record with no block named before"),
	RP_("ZERO CONTINUE first", 3, MFD_EPROTO, "ram: CONTINUE record with no block named before"),
	RP_("unknown block", 4, MFD_EPROTO, "ram: page of unknown block 'nope'"),
	RP_("empty block name", 5, MFD_EPROTO, "ram: page of unknown block ''"),
	RP_("block name case", 6, MFD_EPROTO, "ram: page of unknown block 'PC.RAM'"),
	RP_("block name prefix", 7, MFD_EPROTO, "ram: page of unknown block 'pc.ra'"),
	RP_("block name longer", 8, MFD_EPROTO, "ram: page of unknown block 'pc.ram.x'"),
	RP_("block name near", 9, MFD_EPROTO, "ram: page of unknown block 'huge2'"),
	RP_("offset = block size", 10, MFD_EPROTO, "ram: page offset 0x40000 is not a page of block 'pc.ram' (262144 bytes)"),
	RP_("offset max", 11, MFD_EPROTO, "ram: page offset 0xfffffffffffff000 is not a page of block 'pc.ram'"),
	RP_("4 KiB into a 2 MiB page", 12, MFD_EPROTO, "ram: page offset 0x1000 is not a page of block 'huge' (4194304 bytes)"),
	RP_("offset = 2 MiB block size", 13, MFD_EPROTO, "ram: page offset 0x400000 is not a page of block 'huge'"),
	RP_("2 MiB page + 4 KiB", 14, MFD_EPROTO, "ram: page offset 0x201000 is not a page of block 'huge'"),
	RP_("CONTINUE beyond its block", 15, MFD_EPROTO, "ram: page offset 0x40000 is not a page of block 'pc.ram'"),
	RP_("ZERO fill 0x01", 16, MFD_EPROTO, "ram: ZERO record with fill byte 0x01"),
	RP_("ZERO fill 0xff", 17, MFD_EPROTO, "ram: ZERO record with fill byte 0xff"),
	RP_("ZERO fill 0x80", 18, MFD_EPROTO, "ram: ZERO record with fill byte 0x80"),
	RP_("CONTINUE into a 2 MiB block", 19, MFD_EPROTO, "ram: page offset 0x2000 is not a page of block 'huge'"),
	RP_("page data cut", 20, MFD_EEOF, "unexpected end of data"),
	RP_("record word cut", 21, MFD_EEOF, "unexpected end of data"),
	RP_("block name cut", 22, MFD_EEOF, "unexpected end of data"),
	RP_("no EOS", 23, MFD_EEOF, "unexpected end of data"),
	RP_("junk after a good page", 24, MFD_EPROTO, "ram: unknown combination of record flags 0x40"),
	RP_("NUL in a record's block name", 25, MFD_EPROTO, "ram: block name 'pc.ram\\x00x' contains a NUL byte"),
	RF("flags 0", 0x0),
	RF("flags 0x1", 0x1),
	RF("ZERO|MEM_SIZE", 0x6),
	RF("ZERO|PAGE", 0xa),
	RF("PAGE|EOS", 0x18),
	RF("CONTINUE alone", 0x20),
	RF("EOS|CONTINUE", 0x30),
	RF("flags 0x80", 0x80),
	RF("flags 0x100", 0x100),
	RF("FLUSH|CONTINUE", 0x220),
	RF("flags 0x400", 0x400),
	RF("flags 0x800", 0x800),
	RF("all flags", 0xfff),
	RF("MEM_SIZE|CONTINUE", 0x24),
	RC("OPEN_RETURN_PATH on file:", 0, MFD_EPROTO, "command OPEN_RETURN_PATH at byte 105: OPEN_RETURN_PATH, but the hello said none"),
	RC("PING on file:", 1, MFD_ENOTSUP, "command PING at byte 105: PING without a return path"),
	RC("ADVISE to a precopy side", 2, MFD_ENOTSUP, "command POSTCOPY_ADVISE at byte 105: the source advises postcopy, but postcopy-ram is off on this side"),
	RC("ADVISE 0 to a precopy side", 3, MFD_ENOTSUP, "the source advises postcopy, but postcopy-ram is off on this side"),
	RC("LISTEN without ADVISE", 4, MFD_EPROTO, "POSTCOPY_LISTEN without POSTCOPY_ADVISE"),
	RC("RUN before LISTEN", 5, MFD_EPROTO, "POSTCOPY_RUN before POSTCOPY_LISTEN"),
	RC("DISCARD of an unknown block", 6, MFD_EPROTO, "POSTCOPY_RAM_DISCARD: unknown block 'pc.rom'"),
	RC("RECV_BITMAP outside recovery", 7, MFD_EPROTO, "RECV_BITMAP outside postcopy recovery"),
	RC("RESUME outside recovery", 8, MFD_EPROTO, "POSTCOPY_RESUME outside postcopy recovery"),
	RC("COLO", 9, MFD_ENOTSUP, "command ENABLE_COLO at byte 105 refused"),
};

static int run_file(struct probe_dest *d, const void *p, size_t len, mfd_error **errp)
{
	char path[] = "/tmp/mfd-bad-input-XXXXXX", uri[64];
	int fd = mkstemp(path), r;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, p, len), (ssize_t)len);
	close(fd);
	snprintf(uri, sizeof(uri), "file:%s", path);
	r = mfd_migrate_incoming(d->m, uri, errp);
	if (r == 0)
		r = mfd_migration_wait(d->m, WAIT_MS, errp);
	unlink(path);
	return r;
}

START_TEST(bad_ram_and_commands)
{
	const struct fcase *c = &file_cases[_i];
	struct probe_dest d;
	struct bytes b = { 0 };
	mfd_error *err = NULL;

	probe_dest_init(&d, NULL, true);
	if (c->whole)
		cmd_file(&b, c->arg);
	else
		ram_file(&b, c->version, c->start, c->part, c->arg);
	int r = run_file(&d, b.p, b.len, &err);
	struct bcase bc = { c->name, NULL, 0, c->code, c->msg };

	check_result(&bc, _i, r, err, NULL);
	mfd_error_free(err);
	b_free(&b);
	probe_dest_free(&d);
}
END_TEST

/* =========================================================================
 * escape: peer strings reach messages as printable ASCII only
 * ========================================================================= */

/* A name a peer could send to forge a log line: a newline, an ANSI colour,
 * printf directives and, in the NUL variant, a 0 byte. */
#define EVIL "a\n[error] x\x1b[31m%s%n"
#define EVIL_NUL EVIL "\0z"
#define EVIL_ESC "'a\\n[error] x\\x1b[31m%s%n'"
#define EVIL_NUL_ESC "'a\\n[error] x\\x1b[31m%s%n\\x00z'"

enum esc_kind {
	ESC_IDENTITY, ESC_IDSTR, ESC_SUBSECTION, ESC_RECV_BITMAP, ESC_DISCARD_NAME,
	ESC_DISCARD_BLOCK, ESC_RAM_LIST, ESC_RAM_PAGE, ESC_MAIN_CODEC, ESC_MF_CODEC,
	ESC_KINDS
};

static const char *const esc_kind_name[ESC_KINDS] = {
	"CONFIGURATION identity", "section idstr", "subsection name", "RECV_BITMAP block name",
	"DISCARD block name", "DISCARD of an unknown block", "RAM block list name",
	"RAM page block name", "main hello codec", "multifd hello codec",
};

static const char *esc_str;	/* the peer string of the case at hand */
static size_t esc_len;

static void b_evil(struct bytes *b)
{
	b_u8(b, (uint8_t)esc_len);
	b_raw(b, esc_str, esc_len);
}

static void esc_ram_list(struct bytes *b)
{
	blocks(b, ENG_PAGES * PS + HUGE_BYTES);
	b_evil(b);
	b_be64(b, ENG_PAGES * PS);
	b_be64(b, PS);
}

static void esc_ram_page(struct bytes *b, uint64_t i)
{
	(void)i;
	W(0x2000, RAM_FLAG_PAGE);
	b_evil(b);
	b_raw(b, zeros, PS);
	W(0, RAM_FLAG_EOS);
}

/* The main hello with the peer string as its codec name. */
static void esc_hello(uint8_t h[128])
{
	main_hello(h, 0, 0, "none");
	memset(h + 80, 0, 48);
	h[80] = (uint8_t)esc_len;
	memcpy(h + 81, esc_str, esc_len);
}

static void esc_stream(struct bytes *b, enum esc_kind k)
{
	uint8_t p[300];
	size_t n = 0;

	if (k == ESC_IDENTITY) {
		b_be32(b, 0x5145564d);
		b_be32(b, 3);
		b_u8(b, 0x07);
		b_be32(b, (uint32_t)esc_len);
		b_raw(b, esc_str, esc_len);
		return;
	}
	b_header(b);
	switch (k) {
	case ESC_IDSTR:
		b_u8(b, 0x04);
		b_be32(b, 0);
		b_evil(b);
		b_be32(b, 0);
		b_be32(b, 1);
		break;
	case ESC_SUBSECTION:
		sec_hdr(b, 0x04, 0, "sub", 0, 1);
		b_be32(b, 1);
		b_u8(b, 0x05);
		b_evil(b);
		b_be32(b, 1);
		break;
	case ESC_RECV_BITMAP:
		p[n++] = (uint8_t)esc_len;
		memcpy(p + n, esc_str, esc_len);
		cmd(b, 10, (uint16_t)(n + esc_len), p);
		break;
	default:	/* ESC_DISCARD_NAME */
		p[n++] = 0;
		p[n++] = (uint8_t)esc_len;
		memcpy(p + n, esc_str, esc_len);
		n += esc_len;
		p[n++] = 0;
		memset(p + n, 0, 16);
		cmd(b, 6, (uint16_t)(n + 16), p);
		break;
	}
	b_u8(b, 0);
}

/* Through the engine, from a file: main hello, header, START of "ram", then
 * what the kind needs. */
static void esc_file(struct bytes *b, enum esc_kind k)
{
	uint8_t h[128], p[300];
	size_t n = 0;

	if (k == ESC_RAM_LIST) {
		ram_file(b, 1, esc_ram_list, NULL, 0);
		return;
	}
	if (k == ESC_RAM_PAGE) {
		ram_file(b, 1, NULL, esc_ram_page, 0);
		return;
	}
	if (k == ESC_MAIN_CODEC)
		esc_hello(h);
	else
		main_hello(h, 0, 0, "none");
	b_raw(b, h, 128);
	b_header(b);
	ram_start(b, 1, NULL);
	/* ESC_DISCARD_BLOCK: a well-formed DISCARD of a block nobody has. */
	p[n++] = 0;
	p[n++] = (uint8_t)esc_len;
	memcpy(p + n, esc_str, esc_len);
	n += esc_len;
	p[n++] = 0;
	memset(p + n, 0, 16);
	p[n + 14] = 0x10;
	cmd(b, 6, (uint16_t)(n + 16), p);
	b_u8(b, 0);
}

static int esc_mf_hello(mfd_error **errp)
{
	struct mrig g, src;
	struct mfd_multifd_recv *r = NULL;
	uint8_t h[MFD_HELLO_SIZE];
	mfd_channel *ch = NULL;
	int rc;

	mrig_init(&g, 4, NULL);
	src = g;
	multifd_hello_encode(h, &src.cfg, 1, g.digest);
	memset(h + 80, 0, 32);
	h[80] = (uint8_t)esc_len;
	memcpy(h + 81, esc_str, esc_len);
	ck_assert_ok(multifd_recv_new(&g.cfg, g.m->blocks, g.m->nblocks, &r, errp), *errp);
	ck_assert_ok(mfd_channel_new_mem_reader(h, sizeof(h), &ch, errp), *errp);
	rc = multifd_recv_identify(ch, r, errp);
	mfd_channel_free(ch);
	multifd_recv_free(r);
	mrig_free(&g);
	return rc;
}

/* Case i: kind i / 2, the NUL variant when i is odd.  Every kind of peer
 * string, refused, must show in the message escaped and whole (the NUL as
 * \x00), and the message must hold no control character at all. */
START_TEST(peer_strings_escaped)
{
	enum esc_kind k = (enum esc_kind)(_i / 2);
	bool nul = _i % 2;
	const char *want = nul ? EVIL_NUL_ESC : EVIL_ESC;
	struct bytes b = { 0 };
	mfd_error *err = NULL;
	int r;

	/* Without a NUL these reach no message that names them: a hook refuses
	 * RECV_BITMAP first, and a DISCARD name is only checked for its NUL. */
	if (!nul && (k == ESC_RECV_BITMAP || k == ESC_DISCARD_NAME))
		return;
	/* With a NUL the stream's own check refuses the DISCARD first. */
	if (nul && k == ESC_DISCARD_BLOCK)
		return;
	esc_str = nul ? EVIL_NUL : EVIL;
	esc_len = nul ? sizeof(EVIL_NUL) - 1 : sizeof(EVIL) - 1;
	if (k <= ESC_DISCARD_NAME) {
		mfd_migration *m = stream_dest();

		esc_stream(&b, k);
		r = load_from_mem(m, b.p, b.len, &err);
		mfd_migration_free(m);
	} else if (k == ESC_MF_CODEC) {
		r = esc_mf_hello(&err);
	} else {
		struct probe_dest d;

		probe_dest_init(&d, NULL, true);
		esc_file(&b, k);
		r = run_file(&d, b.p, b.len, &err);
		probe_dest_free(&d);
	}
	b_free(&b);

	const char *msg = mfd_error_message(err);

	if (getenv("BAD_INPUT_SHOW"))
		printf("escape case %d '%s'%s: %d %s\n", _i, esc_kind_name[k], nul ? " (NUL)" : "",
		       r, msg);
	ck_assert_msg(r < 0 && err, "%s%s: accepted (%d)", esc_kind_name[k], nul ? " (NUL)" : "",
		      r);
	for (const char *c = msg; *c; c++)
		ck_assert_msg((unsigned char)*c >= 0x20 && *c != 0x7f,
			      "%s%s: control byte 0x%02x at %zu in the message: %s",
			      esc_kind_name[k], nul ? " (NUL)" : "", (unsigned char)*c,
			      (size_t)(c - msg), msg);
	ck_assert_msg(strstr(msg, want), "%s%s: message lacks %s: %s", esc_kind_name[k],
		      nul ? " (NUL)" : "", want, msg);
	mfd_error_free(err);
}
END_TEST

/* The builders are right: the same pieces, well formed, load (and place pages). */
START_TEST(valid_file_loads)
{
	struct probe_dest d;
	struct bytes b = { 0 };
	mfd_error *err = NULL;
	uint8_t h[128];
	static uint8_t page[PS];

	probe_dest_init(&d, NULL, true);
	memset(page, 0xab, sizeof(page));
	main_hello(h, 0, 0, "none");
	b_raw(&b, h, 128);
	b_header(&b);
	ram_start(&b, 1, NULL);
	b_u8(&b, 0x02);
	b_be32(&b, 0);
	named(&b, 0x2000, RAM_FLAG_PAGE, "pc.ram");
	b_raw(&b, page, PS);
	b_be64(&b, 0x3000 | RAM_FLAG_ZERO | RAM_FLAG_CONTINUE);
	b_u8(&b, 0);
	b_be64(&b, RAM_FLAG_EOS);
	footer(&b, 0);
	cmd(&b, 11, 0, NULL);
	b_u8(&b, 0);
	ck_assert_ok(run_file(&d, b.p, b.len, &err), err);
	ck_assert_uint_eq(d.ram[0x2000], 0xab);
	ck_assert_uint_eq(d.ram[0x2fff], 0xab);
	b_free(&b);
	probe_dest_free(&d);
}
END_TEST

/* A real source's main stream (hello, RAM and a device) to file:, then cut at
 * every byte: each cut ends in a clean end-of-data error. */
static int cpu_save(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	return mfd_stream_put_be64(s, 0x0123456789abcdefull);
}

static int cpu_load(mfd_stream *s, void *opaque, uint32_t v, mfd_error **errp)
{
	uint64_t x;

	(void)opaque;
	(void)v;
	(void)errp;
	return mfd_stream_get_be64(s, &x);
}

static const mfd_save_handlers cpu_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = cpu_save,
	.load_state = cpu_load,
};

START_TEST(engine_stream_cut_at_every_byte)
{
	enum { PAGES = 4 };
	mfd_migration *src = NULL, *dst = NULL;
	uint8_t *sram = mmap(NULL, PAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
	uint8_t *dram = mmap(NULL, PAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
	char path[] = "/tmp/mfd-bad-input-XXXXXX", uri[64];
	mfd_error *err = NULL;
	uint8_t *buf;
	size_t len;
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	close(fd);
	snprintf(uri, sizeof(uri), "file:%s", path);
	memset(sram + PS, 0x42, PS);	/* one data page, three zero pages */
	ck_assert_ok(mfd_migration_new(&src, &err), err);
	ck_assert_ok(mfd_ram_block_add(src, "pc.ram", sram, PAGES * PS, PS, &err), err);
	ck_assert_ok(mfd_register_live(src, "cpu", 0, 1, &cpu_ops, NULL, &err), err);
	/* No vCPU writes this RAM: nothing for a vm_stop hook to stop. */
	ck_assert_ok(mfd_set_param(src, "vm-stopped-externally", "on", &err), err);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_ok(mfd_migration_wait(src, WAIT_MS, &err), err);
	mfd_migration_free(src);
	{
		FILE *f = fopen(path, "rb");

		ck_assert_ptr_nonnull(f);
		fseek(f, 0, SEEK_END);
		len = (size_t)ftell(f);
		fseek(f, 0, SEEK_SET);
		buf = malloc(len);
		ck_assert_uint_eq(fread(buf, 1, len, f), len);
		fclose(f);
	}
	unlink(path);
	ck_assert_ok(mfd_migration_new(&dst, &err), err);
	ck_assert_ok(mfd_ram_block_add(dst, "pc.ram", dram, PAGES * PS, PS, &err), err);
	ck_assert_ok(mfd_register_live(dst, "cpu", 0, 1, &cpu_ops, NULL, &err), err);
	{
		struct probe_dest d = { .m = dst };

		ck_assert_ok(run_file(&d, buf, len, &err), err);
		ck_assert_uint_eq(dram[PS + 7], 0x42);
		for (size_t cut = 0; cut < len; cut++) {
			int r = run_file(&d, buf, cut, &err);

			ck_assert_msg(r == MFD_EEOF, "cut at %zu of %zu: %d %s", cut, len, r,
				      mfd_error_message(err));
			ck_assert_msg(strstr(mfd_error_message(err), "end of data"),
				      "cut at %zu: %s", cut, mfd_error_message(err));
			mfd_error_free(err);
			err = NULL;
		}
	}
	printf("bad_input: engine main stream of %zu bytes cut at every offset\n", len);
	free(buf);
	mfd_migration_free(dst);
	munmap(sram, PAGES * PS);
	munmap(dram, PAGES * PS);
}
END_TEST

/* =========================================================================
 * rpath: a real source, a fake destination answering crafted return-path
 * messages
 * ========================================================================= */

struct fake_dest {
	int lfd;
	int fds[8];
	int nfds;
	pthread_t accepter, drainers[8];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_bool stop;		/* the threads leave */
};

struct drainer {
	struct fake_dest *f;
	int fd;
};

/* Read and drop what the source sends, so it never blocks on a full socket. */
static void *drain(void *arg)
{
	struct drainer *d = arg;
	char buf[65536];

	for (;;) {
		struct pollfd p = { d->fd, POLLIN, 0 };
		int n = poll(&p, 1, 100);

		if (atomic_load(&d->f->stop))
			break;
		if (n <= 0)
			continue;
		ssize_t got = recv(d->fd, buf, sizeof(buf), 0);

		if (got <= 0)
			break;
	}
	free(d);
	return NULL;
}

static void *accepter(void *arg)
{
	struct fake_dest *f = arg;

	while (!atomic_load(&f->stop) && f->nfds < 8) {
		struct pollfd p = { f->lfd, POLLIN, 0 };

		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0)
			continue;
		struct drainer *d = malloc(sizeof(*d));

		ck_assert_ptr_nonnull(d);
		d->f = f;
		d->fd = fd;
		pthread_mutex_lock(&f->lock);
		f->fds[f->nfds] = fd;
		ck_assert_int_eq(pthread_create(&f->drainers[f->nfds], NULL, drain, d), 0);
		f->nfds++;
		pthread_cond_broadcast(&f->cond);
		pthread_mutex_unlock(&f->lock);
	}
	return NULL;
}

static void fake_dest_start(struct fake_dest *f, char *uri, size_t len)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);

	memset(f, 0, sizeof(*f));
	atomic_init(&f->stop, false);
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(f->lfd, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(f->lfd, 16), 0);
	ck_assert_int_eq(getsockname(f->lfd, (struct sockaddr *)&sa, &sl), 0);
	snprintf(uri, len, "tcp:127.0.0.1:%u", ntohs(sa.sin_port));
	ck_assert_int_eq(pthread_create(&f->accepter, NULL, accepter, f), 0);
}

/* The main connection (the first), waiting at most WAIT_MS for it. */
static int fake_dest_main(struct fake_dest *f)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += WAIT_MS / 1000;
	pthread_mutex_lock(&f->lock);
	while (f->nfds == 0)
		if (pthread_cond_timedwait(&f->cond, &f->lock, &dl) != 0)
			break;
	int fd = f->nfds ? f->fds[0] : -1;

	pthread_mutex_unlock(&f->lock);
	ck_assert_int_ge(fd, 0);
	return fd;
}

static void fake_dest_stop(struct fake_dest *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->accepter, NULL);
	for (int i = 0; i < f->nfds; i++) {
		shutdown(f->fds[i], SHUT_RDWR);
		pthread_join(f->drainers[i], NULL);
		close(f->fds[i]);
	}
	close(f->lfd);
	pthread_mutex_destroy(&f->lock);
	pthread_cond_destroy(&f->cond);
}

static void rp_msg(struct bytes *b, uint16_t type, uint16_t len, const void *p)
{
	b_be16(b, type);
	b_be16(b, len);
	b_raw(b, p, len);
}

static void req(struct bytes *b, uint16_t block, uint16_t rsvd, uint32_t len, uint64_t off)
{
	uint8_t p[16];

	store_be16(p, block);
	store_be16(p + 2, rsvd);
	store_be32(p + 4, len);
	store_be64(p + 8, off);
	rp_msg(b, RP_REQ_PAGES, 16, p);
}

static void bitmap_hdr(struct bytes *b, uint16_t block, uint64_t bytes)
{
	uint8_t p[16] = { 0 };

	store_be16(p, block);
	store_be64(p + 8, bytes);
	rp_msg(b, RP_RECV_BITMAP, 16, p);
}

static void result(struct bytes *b, int32_t code, const char *msg)
{
	uint8_t p[64];
	size_t n = strlen(msg);

	store_be32(p, (uint32_t)code);
	memcpy(p + 4, msg, n);
	rp_msg(b, RP_RESULT, (uint16_t)(4 + n), p);
}

/* Return-path bytes by number (the source is in precopy). */
static void rp_build(struct bytes *b, uint64_t i)
{
	uint8_t one[8] = { 0, 0, 0, 1, 0, 0, 0, 0 };

	switch (i) {
	case 0: b_be16(b, RP_PONG); b_be16(b, 4101); break;
	case 1: b_be16(b, RP_RESULT); b_be16(b, 0xffff); break;
	case 2: rp_msg(b, 0, 0, NULL); break;
	case 3: rp_msg(b, 7, 4, zeros); break;
	case 4: rp_msg(b, 0xffff, 0, NULL); break;
	case 5: rp_msg(b, 100, 100, zeros); break;
	case 6: rp_msg(b, RP_REQ_PAGES, 15, zeros); break;
	case 7: rp_msg(b, RP_REQ_PAGES, 0, NULL); break;
	case 8: rp_msg(b, RP_REQ_PAGES, 17, zeros); break;
	case 9: req(b, 0, 0, PS, 0); break;
	case 10: rp_msg(b, RP_RECV_BITMAP, 15, zeros); break;
	case 11: rp_msg(b, RP_RECV_BITMAP, 0, NULL); break;
	case 12: bitmap_hdr(b, 0, 8); b_raw(b, zeros, 8); b_be64(b, RECV_BITMAP_END); break;
	case 13: rp_msg(b, RP_RESUME_ACK, 0, NULL); break;
	case 14: rp_msg(b, RP_RESUME_ACK, 8, one); break;
	case 15: rp_msg(b, RP_RESUME_ACK, 4, zeros); break;
	case 16: { uint8_t two[4] = { 0, 0, 0, 2 }; rp_msg(b, RP_RESUME_ACK, 4, two); break; }
	case 17: result(b, MFD_ENOENT, "disk image gone"); break;
	case 18: result(b, -9999, "an odd code"); break;
	case 19: result(b, MFD_EBADMAGIC, "not a migration stream"); break;
	case 20: result(b, MFD_EPROTO, ""); break;
	case 21: b_be16(b, RP_PONG); break;			/* header cut */
	case 22: break;						/* nothing at all */
	case 23: b_be16(b, RP_REQ_PAGES); b_be16(b, 16); b_raw(b, zeros, 5); break;
	case 24: rp_msg(b, RP_PONG, 3, zeros); break;
	case 25: rp_msg(b, RP_SWITCHOVER_ACK, 1, zeros); break;
	case 26: rp_msg(b, RP_RESULT, 2, zeros); break;
	case 27: result(b, 5, "a positive code"); break;
	case 28: rp_msg(b, RP_RESUME_ACK, 4, one); break;
	}
}

static const struct bcase rp_cases[] = {
	{ "message of 4101 bytes", rp_build, 0, MFD_EPROTO, "return path: message of 4101 bytes" },
	{ "message of 65535 bytes", rp_build, 1, MFD_EPROTO, "return path: message of 65535 bytes" },
	{ "type 0", rp_build, 2, MFD_EPROTO, "return path: unknown message type 0 (0 bytes)" },
	{ "type 7", rp_build, 3, MFD_EPROTO, "return path: unknown message type 7 (4 bytes)" },
	{ "type 65535", rp_build, 4, MFD_EPROTO, "return path: unknown message type 65535 (0 bytes)" },
	{ "type 100", rp_build, 5, MFD_EPROTO, "return path: unknown message type 100 (100 bytes)" },
	{ "REQ_PAGES of 15", rp_build, 6, MFD_EPROTO, "return path: page request of 15 bytes, expected 16" },
	{ "REQ_PAGES of 0", rp_build, 7, MFD_EPROTO, "return path: page request of 0 bytes, expected 16" },
	{ "REQ_PAGES of 17", rp_build, 8, MFD_EPROTO, "return path: page request of 17 bytes" },
	{ "REQ_PAGES in precopy", rp_build, 9, MFD_EPROTO, "return path: page request outside postcopy" },
	{ "RECV_BITMAP of 15", rp_build, 10, MFD_EPROTO, "return path: RECV_BITMAP of 15 bytes" },
	{ "RECV_BITMAP of 0", rp_build, 11, MFD_EPROTO, "return path: RECV_BITMAP of 0 bytes" },
	{ "RECV_BITMAP in precopy", rp_build, 12, MFD_EPROTO, "return path: RECV_BITMAP outside postcopy recovery (the source is " },
	{ "RESUME_ACK of 0", rp_build, 13, MFD_EPROTO, "return path: RESUME_ACK of 0 bytes, expected 4" },
	{ "RESUME_ACK of 8", rp_build, 14, MFD_EPROTO, "return path: RESUME_ACK of 8 bytes, expected 4" },
	{ "RESUME_ACK 0", rp_build, 15, MFD_EPROTO, "return path: RESUME_ACK outside postcopy recovery" },
	{ "RESUME_ACK 2", rp_build, 16, MFD_EPROTO, "return path: RESUME_ACK outside postcopy recovery" },
	{ "RESULT with a known code", rp_build, 17, MFD_ENOENT, "the destination failed: disk image gone" },
	{ "RESULT with an unknown code", rp_build, 18, MFD_EPROTO, "the destination failed: an odd code" },
	{ "RESULT with EBADMAGIC", rp_build, 19, MFD_EBADMAGIC, "the destination failed: not a migration stream" },
	{ "RESULT without words", rp_build, 20, MFD_EPROTO, "the destination failed: " },
	{ "message header cut", rp_build, 21, MFD_EEOF, "the destination closed the connection without a result" },
	{ "closed at once", rp_build, 22, MFD_EEOF, "the destination closed the connection without a result" },
	{ "REQ_PAGES body cut", rp_build, 23, MFD_EEOF, "the destination closed the connection without a result" },
	{ "PONG of 3", rp_build, 24, MFD_EPROTO, "return path: PONG of 3 bytes, expected 4" },
	{ "SWITCHOVER_ACK of 1", rp_build, 25, MFD_EPROTO, "return path: SWITCHOVER_ACK of 1 bytes, expected 0" },
	{ "RESULT of 2", rp_build, 26, MFD_EPROTO, "return path: RESULT of 2 bytes, expected at least 4" },
	{ "RESULT with a positive code", rp_build, 27, MFD_EPROTO, "return path: RESULT with code 5 (neither 0 nor an error code)" },
	{ "RESUME_ACK in precopy", rp_build, 28, MFD_EPROTO, "return path: RESUME_ACK outside postcopy recovery" },
	/*
	 * Not here: REQ_PAGES checks that need the source in postcopy (pc_cases
	 * below) and RECV_BITMAP's (bitmap size and end marker), which need it in
	 * postcopy recovery: this fake destination cannot take a source that far.
	 * For the same reason RESUME_ACK's value (cases 15 and 16) is not reached:
	 * the state comes first, as for every message (rp_specs[]).  A refused
	 * request fails the source (pausable() does not take the shutdown after
	 * its own protocol error for a network loss).
	 */
};

START_TEST(bad_return_path)
{
	const struct bcase *c = &rp_cases[_i];
	struct fake_dest f;
	struct bytes b = { 0 };
	mfd_migration *src = NULL;
	mfd_error *err = NULL;
	uint8_t *ram = mmap(NULL, ENG_PAGES * PS, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char uri[64];

	ck_assert_ptr_ne(ram, MAP_FAILED);
	for (size_t p = 0; p < ENG_PAGES; p += 2)
		memset(ram + p * PS, (int)p + 1, PS);
	ck_assert_ok(mfd_migration_new(&src, &err), err);
	ck_assert_ok(mfd_ram_block_add(src, "pc.ram", ram, ENG_PAGES * PS, PS, &err), err);
	set(src, "multifd-channels", "1");
	set(src, "channel-timeout-ms", "5000");
	set(src, "vm-stopped-externally", "on");	/* no vCPU here */
	/* 1 MiB/s: precopy is still running when the crafted answer arrives. */
	set(src, "max-bandwidth", "1048576");
	fake_dest_start(&f, uri, sizeof(uri));
	c->build(&b, c->arg);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	int fd = fake_dest_main(&f);

	write_all_fd(fd, b.p, b.len);
	if (c->code == MFD_EEOF)
		shutdown(fd, SHUT_WR);
	int r = mfd_migration_wait(src, WAIT_MS, &err);

	check_result(c, _i, r, err, NULL);
	mfd_error_free(err);
	fake_dest_stop(&f);
	b_free(&b);
	mfd_migration_free(src);
	munmap(ram, ENG_PAGES * PS);
}
END_TEST


/* The destination's RESULT text is peer bytes too: the source's error shows
 * it escaped (case 1: with a NUL inside), with no control character. */
START_TEST(result_text_escaped)
{
	static const char text[] = EVIL_NUL;
	size_t n = _i ? sizeof(text) - 1 : strlen(text);
	struct fake_dest f;
	struct bytes b = { 0 };
	mfd_migration *src = NULL;
	mfd_error *err = NULL;
	uint8_t *ram = mmap(NULL, ENG_PAGES * PS, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t p[64];
	char uri[64];

	ck_assert_ptr_ne(ram, MAP_FAILED);
	ck_assert_ok(mfd_migration_new(&src, &err), err);
	ck_assert_ok(mfd_ram_block_add(src, "pc.ram", ram, ENG_PAGES * PS, PS, &err), err);
	set(src, "multifd-channels", "1");
	set(src, "channel-timeout-ms", "5000");
	set(src, "vm-stopped-externally", "on");	/* no vCPU here */
	set(src, "max-bandwidth", "1048576");
	fake_dest_start(&f, uri, sizeof(uri));
	store_be32(p, (uint32_t)MFD_ENOENT);
	memcpy(p + 4, text, n);
	rp_msg(&b, RP_RESULT, (uint16_t)(4 + n), p);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	write_all_fd(fake_dest_main(&f), b.p, b.len);
	ck_assert_int_eq(mfd_migration_wait(src, WAIT_MS, &err), MFD_ENOENT);

	const char *msg = mfd_error_message(err);

	for (const char *c = msg; *c; c++)
		ck_assert_msg((unsigned char)*c >= 0x20 && *c != 0x7f,
			      "control byte 0x%02x at %zu in the message: %s", (unsigned char)*c,
			      (size_t)(c - msg), msg);
	ck_assert_msg(strstr(msg, _i ? "the destination failed: a\\n[error] x\\x1b[31m%s%n\\x00z"
				     : "the destination failed: a\\n[error] x\\x1b[31m%s%n"),
		      "message lacks the escaped text: %s", msg);
	mfd_error_free(err);
	fake_dest_stop(&f);
	b_free(&b);
	mfd_migration_free(src);
	munmap(ram, ENG_PAGES * PS);
}
END_TEST

/*
 * Page requests once the source is in postcopy: the fake destination lets
 * the source switch (it never answers), then writes one crafted request on
 * the channel that carries them: the preempt channel's reverse direction
 * with postcopy-preempt (fds[1]), else the main channel's return path.
 * The arg's low bits pick the bytes; PC_PRE says preempt is on, PC_ON_MAIN
 * sends on the main channel even so.
 */
#define PC_PRE 0x100u
#define PC_ON_MAIN 0x200u
#define PC_BLOCK (ENG_PAGES * PS)

static void pc_build(struct bytes *b, uint64_t i)
{
	switch (i & 0xff) {
	case 0: rp_msg(b, RP_REQ_PAGES, 15, zeros); break;
	case 1: rp_msg(b, RP_PONG, 4, zeros); break;
	case 2: req(b, 1, 0, PS, 0); break;			/* block 1 of 1 */
	case 3: req(b, 0, 1, PS, 0); break;			/* reserved field */
	case 4: req(b, 0, 0, 0, 0); break;			/* no length */
	case 5: req(b, 0, 0, PS + 1, 0); break;			/* not whole pages */
	case 6: req(b, 0, 0, PS, 100); break;			/* unaligned offset */
	case 7: req(b, 0, 0, PS, PC_BLOCK); break;		/* past the block */
	case 8: req(b, 0, 0, 2 * PS, PC_BLOCK - PS); break;	/* runs past the end */
	case 9: req(b, 0, 0, 4 << 20, 0); break;		/* over 2 MiB */
	case 10: req(b, 0, 0, PS, 0); req(b, 0, 0, PS, 0); req(b, 0xffff, 0, PS, 0); break;
	case 11: req(b, 0, 0, PS, 0); break;			/* on main, with preempt */
	case 12: rp_msg(b, RP_REQ_PAGES, 17, zeros); break;
	case 13: {
		/* "Every page received" in postcopy-active, not in recovery: taken, it
		 * would empty the pusher's map with the pages still missing. */
		uint8_t ones[8];

		memset(ones, 0xff, sizeof(ones));
		bitmap_hdr(b, 0, 8);
		b_raw(b, ones, 8);
		b_be64(b, RECV_BITMAP_END);
		break;
	}
	}
}

static const struct bcase pc_cases[] = {
	{ "preempt: request of 15", pc_build, PC_PRE | 0, MFD_EPROTO, "postcopy: preempt channel: page request of 15 bytes, expected 16" },
	{ "preempt: request of 17", pc_build, PC_PRE | 12, MFD_EPROTO, "preempt channel: page request of 17 bytes, expected 16" },
	{ "preempt: PONG", pc_build, PC_PRE | 1, MFD_EPROTO, "preempt channel: message type 1 (4 bytes) from the destination; only REQ_PAGES (4) travels this way" },
	{ "preempt: block 1", pc_build, PC_PRE | 2, MFD_EPROTO, "preempt channel: page request for block 1 of 1" },
	{ "preempt: reserved", pc_build, PC_PRE | 3, MFD_EPROTO, "preempt channel: page request 0x0+4096 is not whole pages of block 'pc.ram' (262144 bytes)" },
	{ "preempt: length 0", pc_build, PC_PRE | 4, MFD_EPROTO, "page request 0x0+0 is not whole pages" },
	{ "preempt: length 4097", pc_build, PC_PRE | 5, MFD_EPROTO, "page request 0x0+4097 is not whole pages" },
	{ "preempt: offset 100", pc_build, PC_PRE | 6, MFD_EPROTO, "page request 0x64+4096 is not whole pages" },
	{ "preempt: past the block", pc_build, PC_PRE | 7, MFD_EPROTO, "page request 0x40000+4096 is not whole pages" },
	{ "preempt: over the end", pc_build, PC_PRE | 8, MFD_EPROTO, "page request 0x3f000+8192 is not whole pages" },
	{ "preempt: 4 MiB", pc_build, PC_PRE | 9, MFD_EPROTO, "page request 0x0+4194304 is not whole pages" },
	{ "preempt: served, then bad", pc_build, PC_PRE | 10, MFD_EPROTO, "preempt channel: page request for block 65535 of 1" },
	{ "preempt: request on main", pc_build, PC_PRE | PC_ON_MAIN | 11, MFD_EPROTO, "return path: page request on the main channel; with postcopy-preempt requests travel on the preempt channel" },
	{ "main: block 1", pc_build, 2, MFD_EPROTO, "return path: page request for block 1 of 1" },
	{ "main: reserved", pc_build, 3, MFD_EPROTO, "return path: page request 0x0+4096 is not whole pages of block 'pc.ram'" },
	{ "main: offset 100", pc_build, 6, MFD_EPROTO, "return path: page request 0x64+4096 is not whole pages" },
	{ "main: over the end", pc_build, 8, MFD_EPROTO, "return path: page request 0x3f000+8192" },
	{ "main: served, then bad", pc_build, 10, MFD_EPROTO, "return path: page request for block 65535 of 1" },
	{ "main: RECV_BITMAP in postcopy-active", pc_build, 13, MFD_EPROTO, "return path: RECV_BITMAP outside postcopy recovery (the source is postcopy-active)" },
	{ "preempt: RECV_BITMAP in postcopy-active", pc_build, PC_PRE | PC_ON_MAIN | 13, MFD_EPROTO, "return path: RECV_BITMAP outside postcopy recovery (the source is postcopy-active)" },
};

static int fake_dest_fd(struct fake_dest *f, int i)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += WAIT_MS / 1000;
	pthread_mutex_lock(&f->lock);
	while (f->nfds <= i)
		if (pthread_cond_timedwait(&f->cond, &f->lock, &dl) != 0)
			break;
	int fd = f->nfds > i ? f->fds[i] : -1;

	pthread_mutex_unlock(&f->lock);
	ck_assert_int_ge(fd, 0);
	return fd;
}

START_TEST(bad_page_request)
{
	const struct bcase *c = &pc_cases[_i];
	bool pre = c->arg & PC_PRE, on_main = !pre || (c->arg & PC_ON_MAIN);
	struct fake_dest f;
	struct bytes b = { 0 };
	mfd_migration *src = NULL;
	mfd_error *err = NULL;
	uint8_t *ram = mmap(NULL, PC_BLOCK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	char uri[64];

	ck_assert_ptr_ne(ram, MAP_FAILED);
	for (size_t p = 0; p < ENG_PAGES; p++)
		memset(ram + p * PS, (int)p + 1, PS);
	ck_assert_ok(mfd_migration_new(&src, &err), err);
	ck_assert_ok(mfd_ram_block_add(src, "pc.ram", ram, PC_BLOCK, PS, &err), err);
	set(src, "multifd-channels", "1");
	set(src, "channel-timeout-ms", "5000");
	set(src, "vm-stopped-externally", "on");	/* no vCPU here */
	set(src, "postcopy-ram", "on");
	set(src, "postcopy-preempt", pre ? "on" : "off");
	/* 16 KiB/s both ways: the push is far from done when the request comes. */
	set(src, "max-bandwidth", "16384");
	set(src, "max-postcopy-bandwidth", "16384");
	fake_dest_start(&f, uri, sizeof(uri));
	c->build(&b, c->arg);
	ck_assert_ok(mfd_migrate(src, uri, &err), err);
	ck_assert_ok(mfd_migrate_start_postcopy(src, &err), err);
	int fd = fake_dest_fd(&f, on_main ? 0 : 1);
	uint64_t end = test_now_ms() + WAIT_MS;

	while (mfd_migration_state(src) != MFD_STATE_POSTCOPY_ACTIVE && test_now_ms() < end)
		usleep(1000);
	ck_assert_int_eq(mfd_migration_state(src), MFD_STATE_POSTCOPY_ACTIVE);
	write_all_fd(fd, b.p, b.len);
	int r = mfd_migration_wait(src, WAIT_MS, &err);

	check_result(c, _i, r, err, NULL);
	if ((c->arg & 0xff) == 10) {
		/* The two good requests went through before the bad one. */
		struct mfd_stats st = { .size = sizeof(st) };

		ck_assert_int_eq(mfd_migration_stats(src, &st), 0);
		ck_assert_uint_eq(st.ram_postcopy_requests, 2);
	}
	mfd_error_free(err);
	fake_dest_stop(&f);
	b_free(&b);
	mfd_migration_free(src);
	munmap(ram, PC_BLOCK);
}
END_TEST

/*
 * The corpus in this file, by table (every codec built in): 126 stream, 56
 * hello, 43 packet, 39 codec (none 6, zlib/zstd/lz4 11 each), 63 engine
 * hello, 62 RAM-section and engine-command, 29 return-path and 20 postcopy
 * page-request cases: 438, plus
 * the two every-byte truncation sweeps (with 87 in check_loadvm_bad.c and 81
 * in check_multifd.c).  count_cases() prints the exact figure for the build
 * at hand and returns it.
 */
static int count_cases(void)
{
	int codec = 0;

	for (int k = 0; k < 4; k++)
		for (int cc = 0; cc < CC_COUNT; cc++)
			codec += codec_case_applies(k, cc) && mfd_compress_find(codec_names[k]);
	int total = NCASES(stream_cases) + NCASES(hello_cases) + NCASES(pkt_cases) + codec +
		    NCASES(eng_cases) + NCASES(file_cases) + NCASES(rp_cases) + NCASES(pc_cases);

	printf("bad_input: %d malformed cases (stream %d, hello %d, packet %d, codec %d, "
	       "engine hello %d, RAM/commands %d, return path %d, page requests %d) + 2 "
	       "truncation sweeps\n", total, NCASES(stream_cases), NCASES(hello_cases),
	       NCASES(pkt_cases), codec, NCASES(eng_cases), NCASES(file_cases), NCASES(rp_cases),
	       NCASES(pc_cases));
	return total;
}

/* The bar of the reliability brief: at least 300 hand-written cases here
 * alone (a build without some codec has fewer codec cases). */
START_TEST(corpus_size)
{
	ck_assert_int_ge(count_cases(), 300);
}
END_TEST

Suite *suite_bad_input(void)
{
	Suite *s = suite_create("bad_input");
	TCase *unit = tcase_create("unit");

	tcase_add_test(unit, corpus_size);

	tcase_add_loop_test(unit, bad_stream, 0, NCASES(stream_cases));
	tcase_add_loop_test(unit, bad_hello, 0, NCASES(hello_cases));
	tcase_add_loop_test(unit, bad_packet, 0, NCASES(pkt_cases));
	tcase_add_loop_test(unit, bad_compressed, 0, 4 * CC_COUNT);
	tcase_add_loop_test(unit, channel_cut_at_every_byte, 0, 2);
	tcase_set_timeout(unit, 60);
	suite_add_tcase(s, unit);
	TCase *eng = tcase_create("engine");

	tcase_add_loop_test(eng, bad_engine_hello, 0, NCASES(eng_cases));
	tcase_add_loop_test(eng, bad_ram_and_commands, 0, NCASES(file_cases));
	tcase_add_test(eng, valid_file_loads);
	tcase_add_loop_test(eng, peer_strings_escaped, 0, 2 * ESC_KINDS);
	tcase_add_test(eng, engine_stream_cut_at_every_byte);
	tcase_add_loop_test(eng, bad_return_path, 0, NCASES(rp_cases));
	tcase_add_loop_test(eng, result_text_escaped, 0, 2);
	tcase_add_loop_test(eng, bad_page_request, 0, NCASES(pc_cases));
	tcase_set_timeout(eng, 120);
	suite_add_tcase(s, eng);
	return s;
}
