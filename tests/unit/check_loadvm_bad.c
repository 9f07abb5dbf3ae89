/* SPDX-License-Identifier: MIT */
/*
 * Malformed main streams: each one must be refused with its own code and a
 * message naming what was wrong, and a valid stream cut at any byte must end
 * in a clean "unexpected end of data".
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/savevm.h"
#include "tests/lib/testlib.h"

/* Destination sections: "dev" (non-live, version 2, 4-byte payload), "live"
 * (version 1, 4-byte payloads), "saveonly" (no load handler). */
static int load4(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	(void)version_id;
	(void)errp;
	return mfd_stream_get_be32(s, opaque);
}

static int save4(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)errp;
	return mfd_stream_put_be32(s, *(uint32_t *)opaque);
}

static const mfd_save_handlers dev_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = save4,
	.load_state = load4,
};

static const mfd_save_handlers live_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_setup = save4,
	.save_live_iterate = save4,
	.load_state = load4,
};

static const mfd_save_handlers saveonly_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_state = save4,
};

static uint32_t dev_value, live_value, saveonly_value;

static mfd_migration *dest(void)
{
	mfd_migration *m = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_register_live(m, "dev", 0, 2, &dev_ops, &dev_value, &err), err);
	ck_assert_ok(mfd_register_live(m, "live", 0, 1, &live_ops, &live_value, &err), err);
	ck_assert_ok(mfd_register_live(m, "saveonly", 0, 1, &saveonly_ops, &saveonly_value,
				       &err), err);
	return m;
}

/* Section header helpers. */
static void start_full(struct bytes *b, uint8_t type, uint32_t id, const char *idstr,
		       uint32_t inst, uint32_t ver)
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

/* A good FULL section of "dev" with id `id`. */
static void good_dev(struct bytes *b, uint32_t id)
{
	start_full(b, 0x04, id, "dev", 0, 2);
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

struct bad_case {
	const char *name;
	int code;
	const char *msg;
};

static const struct bad_case cases[] = {
	/* 0 */ { "empty", MFD_EEOF, "unexpected end of data at byte 0" },
	{ "magic off by one", MFD_EBADMAGIC, "magic 0x5145564e at byte 0, expected 0x5145564d" },
	{ "multifd magic on the main channel", MFD_EBADMAGIC, "magic 0x11223344" },
	{ "obsolete version 2", MFD_EBADVERSION, "stream version 2 is obsolete" },
	{ "version 4", MFD_EBADVERSION, "unsupported stream version 4" },
	/* 5 */ { "version 0", MFD_EBADVERSION, "unsupported stream version 0" },
	{ "version max", MFD_EBADVERSION, "unsupported stream version 4294967295" },
	{ "no configuration", MFD_EBADCONFIG, "expected the CONFIGURATION record (0x07) at byte 8, found 0x00" },
	{ "section instead of configuration", MFD_EBADCONFIG, "found 0x04" },
	{ "configuration length 0", MFD_EBADCONFIG, "identity length 0 at byte 9 is outside 1..255" },
	/* 10 */ { "configuration length 256", MFD_EBADCONFIG, "identity length 256" },
	{ "configuration length max", MFD_EBADCONFIG, "identity length 4294967295" },
	{ "identity differs", MFD_EBADCONFIG, "the source's identity is 'qemu-pc', this destination is 'libmultifd'" },
	{ "identity with NUL", MFD_EBADCONFIG, "the source's identity is 'libmulti\\x00d'" },
	{ "identity prefix", MFD_EBADCONFIG, "identity is 'libmultif'" },
	/* 15 */ { "record 0x09", MFD_EBADRECORD, "unknown record type 0x09 at byte 23" },
	{ "record 0xff", MFD_EBADRECORD, "unknown record type 0xff at byte 23" },
	{ "record 0x42", MFD_EBADRECORD, "unknown record type 0x42" },
	{ "second configuration", MFD_EBADRECORD, "record CONFIGURATION (0x07) at byte 23 is not allowed here" },
	{ "top-level subsection", MFD_EBADRECORD, "record SUBSECTION (0x05) at byte 23" },
	/* 20 */ { "top-level footer", MFD_EBADRECORD, "record SECTION_FOOTER (0x7e) at byte 23" },
	{ "description before EOF", MFD_EBADRECORD, "record VMDESCRIPTION (0x06)" },
	{ "START with empty idstr", MFD_EPROTO, "SECTION_START at byte 23 (id 0): empty idstr" },
	{ "FULL with empty idstr", MFD_EPROTO, "SECTION_FULL at byte 23 (id 5): empty idstr" },
	{ "idstr past the end", MFD_EEOF, "unexpected end of data at byte 32 (needed 197 more)" },
	/* 25 */ { "idstr with NUL", MFD_EPROTO, "idstr contains a NUL byte" },
	{ "unknown idstr", MFD_EBADSECTION, "SECTION_FULL at byte 23: unknown section 'nope' instance 0" },
	{ "unknown instance", MFD_EBADSECTION, "unknown section 'dev' instance 1" },
	{ "version too new", MFD_EBADVERSION, "section 'dev' instance 0: the stream has version 3, this side loads up to version 2" },
	{ "version max", MFD_EBADVERSION, "the stream has version 4294967295" },
	/* 30 */ { "PART of unknown id", MFD_EBADSECTION, "SECTION_PART at byte 23: unknown section id 7" },
	{ "END of unknown id", MFD_EBADSECTION, "SECTION_END at byte 23: unknown section id 7" },
	{ "PART before START", MFD_EBADSECTION, "SECTION_PART at byte 49: unknown section id 1" },
	{ "footer byte wrong", MFD_EBADFOOTER, "section 'dev' (id 0): expected footer 0x7e at byte 44, found 0x7f" },
	{ "footer names another id", MFD_EBADFOOTER, "footer at byte 44 names section id 9" },
	/* 35 */ { "footer missing", MFD_EBADFOOTER, "expected footer 0x7e at byte 44, found 0x00" },
	{ "payload shorter than the handler reads", MFD_EBADFOOTER, "section 'dev' (id 0): expected footer" },
	{ "id reused by another section", MFD_EBADSECTION, "section id 0 of 'live' is already used by 'dev' instance 0" },
	{ "section under a second id", MFD_EBADSECTION, "section 'dev' instance 0 arrives as id 4, it was id 0 before" },
	{ "command 0", MFD_EBADCMD, "unknown command 0 at byte 23" },
	/* 40 */ { "command 12", MFD_EBADCMD, "unknown command 12 at byte 23" },
	{ "command 0xffff", MFD_EBADCMD, "unknown command 65535" },
	{ "OPEN_RETURN_PATH with payload", MFD_EBADCMD, "command OPEN_RETURN_PATH at byte 23 has length 1, it must be 0" },
	{ "PING of 3 bytes", MFD_EBADCMD, "command PING at byte 23 has length 3, it must be 4" },
	{ "PING of 65535 bytes", MFD_EBADCMD, "PING at byte 23 has length 65535" },
	/* 45 */ { "ADVISE of 8 bytes", MFD_EBADCMD, "POSTCOPY_ADVISE at byte 23 has length 8, it must be 0 or 16" },
	{ "ADVISE of 17 bytes", MFD_EBADCMD, "POSTCOPY_ADVISE at byte 23 has length 17, allowed 0..16" },
	{ "LISTEN with payload", MFD_EBADCMD, "POSTCOPY_LISTEN at byte 23 has length 4" },
	{ "RUN with payload", MFD_EBADCMD, "POSTCOPY_RUN at byte 23 has length 1" },
	{ "DISCARD of 19 bytes", MFD_EBADCMD, "POSTCOPY_RAM_DISCARD at byte 23 has length 19, allowed 20..65535" },
	/* 50 */ { "PACKAGED of 5 bytes", MFD_EBADCMD, "PACKAGED at byte 23 has length 5, it must be 4" },
	{ "ENABLE_COLO with payload", MFD_EBADCMD, "ENABLE_COLO at byte 23 has length 1" },
	{ "RESUME with payload", MFD_EBADCMD, "POSTCOPY_RESUME at byte 23 has length 2" },
	{ "RECV_BITMAP of 1 byte", MFD_EBADCMD, "RECV_BITMAP at byte 23 has length 1, allowed 2..256" },
	{ "RECV_BITMAP of 300 bytes", MFD_EBADCMD, "RECV_BITMAP at byte 23 has length 300" },
	/* 55 */ { "SWITCHOVER_START with payload", MFD_EBADCMD, "SWITCHOVER_START at byte 23 has length 1" },
	{ "command payload cut", MFD_EEOF, "unexpected end of data at byte 30 (needed 2 more)" },
	{ "PING without a return path", MFD_ENOTSUP, "command PING at byte 23 refused: it needs a return path" },
	{ "OPEN_RETURN_PATH not enabled", MFD_ENOTSUP, "command OPEN_RETURN_PATH at byte 23 refused" },
	{ "ADVISE without postcopy", MFD_ENOTSUP, "command POSTCOPY_ADVISE at byte 23 refused: that feature is not enabled" },
	/* 60 */ { "LISTEN without postcopy", MFD_ENOTSUP, "command POSTCOPY_LISTEN at byte 23 refused" },
	{ "RUN without postcopy", MFD_ENOTSUP, "command POSTCOPY_RUN at byte 23 refused" },
	{ "RESUME without postcopy", MFD_ENOTSUP, "command POSTCOPY_RESUME at byte 23 refused" },
	{ "COLO not supported", MFD_ENOTSUP, "command ENABLE_COLO at byte 23 refused" },
	{ "RECV_BITMAP without a return path", MFD_ENOTSUP, "command RECV_BITMAP at byte 23 refused: it needs a return path" },
	/* 65 */ { "RECV_BITMAP name length lies", MFD_EBADCMD, "RECV_BITMAP at byte 23: name length 5 in a 3-byte command" },
	{ "RECV_BITMAP name with NUL", MFD_EBADCMD, "RECV_BITMAP at byte 23: block name contains a NUL byte" },
	{ "DISCARD version 1", MFD_EBADVERSION, "POSTCOPY_RAM_DISCARD at byte 23: version 1, expected 0" },
	{ "DISCARD empty name", MFD_EBADCMD, "block name length 0 does not fit the 20-byte command" },
	{ "DISCARD name past the command", MFD_EBADCMD, "block name length 200 does not fit the 20-byte command" },
	/* 70 */ { "DISCARD name not terminated", MFD_EBADCMD, "block name is not a NUL-terminated string of 4 bytes" },
	{ "DISCARD ranges not a multiple of 16", MFD_EBADCMD, "17 bytes of ranges, expected a non-zero multiple of 16" },
	{ "DISCARD without postcopy", MFD_ENOTSUP, "POSTCOPY_RAM_DISCARD at byte 23: postcopy is not enabled here" },
	{ "PACKAGED beyond the limit", MFD_ETOOBIG, "PACKAGED command at byte 49 announces 4294967295 bytes, the limit is 268435456" },
	{ "PACKAGED cut short", MFD_EEOF, "unexpected end of data at byte 42 (needed 90 more)" },
	/* 75 */ { "PACKAGED inside a package", MFD_EBADCMD, "package at byte 32: PACKAGED command at byte 26 inside a package (nesting limit 1)" },
	{ "PACKAGED with bytes after its EOF", MFD_EPROTO, "package at byte 32: 3 unread bytes after the end of the package" },
	{ "PACKAGED holding a bad record", MFD_EBADRECORD, "package at byte 32: unknown record type 0x33 at byte 0" },
	{ "PACKAGED empty", MFD_EEOF, "package at byte 32: unexpected end of data at byte 0" },
	{ "no EOF after the configuration", MFD_EEOF, "unexpected end of data at byte 23 (needed 1 more)" },
	/* 80 */ { "section without a load handler", MFD_ENOTSUP, "section 'saveonly' instance 0 has no load handler on this side" },
	{ "PACKAGED holding an unknown section", MFD_EBADSECTION, "package at byte 32: SECTION_FULL at byte 0: unknown section 'ghost' instance 0" },
	{ "FULL cut inside the payload", MFD_EEOF, "unexpected end of data at byte 42 (needed 2 more)" },
	{ "footer cut", MFD_EEOF, "unexpected end of data at byte 47 (needed 2 more)" },
	{ "START header cut", MFD_EEOF, "unexpected end of data at byte 38 (needed 2 more)" },
	/* 85 */ { "magic cut", MFD_EEOF, "unexpected end of data at byte 2 (needed 2 more)" },
};

static void build(int i, struct bytes *b)
{
	static const uint8_t zeros[300];

	if (i >= 15 && i != 85)
		b_header(b);
	switch (i) {
	case 0: break;
	case 1: b_be32(b, 0x5145564e); b_be32(b, 3); break;
	case 2: b_be32(b, 0x11223344); b_be32(b, 1); break;
	case 3: b_be32(b, 0x5145564d); b_be32(b, 2); break;
	case 4: b_be32(b, 0x5145564d); b_be32(b, 4); break;
	case 5: b_be32(b, 0x5145564d); b_be32(b, 0); break;
	case 6: b_be32(b, 0x5145564d); b_be32(b, 0xffffffff); break;
	case 7: case 8: case 9: case 10: case 11: case 12: case 13: case 14:
		b_be32(b, 0x5145564d);
		b_be32(b, 3);
		if (i == 7) { b_u8(b, 0x00); break; }
		if (i == 8) { b_u8(b, 0x04); break; }
		b_u8(b, 0x07);
		if (i == 9) { b_be32(b, 0); break; }
		if (i == 10) { b_be32(b, 256); b_raw(b, zeros, 256); break; }
		if (i == 11) { b_be32(b, 0xffffffff); break; }
		if (i == 12) { b_be32(b, 7); b_raw(b, "qemu-pc", 7); break; }
		if (i == 13) { b_be32(b, 10); b_raw(b, "libmulti\0d", 10); break; }
		b_be32(b, 9); b_raw(b, "libmultif", 9); b_u8(b, 0);
		break;
	case 15: b_u8(b, 0x09); break;
	case 16: b_u8(b, 0xff); break;
	case 17: b_u8(b, 0x42); break;
	case 18: b_u8(b, 0x07); b_be32(b, 10); b_raw(b, "libmultifd", 10); break;
	case 19: b_u8(b, 0x05); break;
	case 20: footer(b, 0); break;
	case 21: b_u8(b, 0x06); b_be32(b, 0); break;
	case 22: b_u8(b, 0x01); b_be32(b, 0); b_u8(b, 0); break;
	case 23: b_u8(b, 0x04); b_be32(b, 5); b_u8(b, 0); break;
	case 24: b_u8(b, 0x04); b_be32(b, 0); b_u8(b, 200); b_raw(b, "dev", 3); break;
	case 25: b_u8(b, 0x04); b_be32(b, 0); b_u8(b, 3); b_raw(b, "d\0v", 3);
		b_be32(b, 0); b_be32(b, 1); break;
	case 26: start_full(b, 0x04, 0, "nope", 0, 1); break;
	case 27: start_full(b, 0x04, 0, "dev", 1, 1); break;
	case 28: start_full(b, 0x04, 0, "dev", 0, 3); break;
	case 29: start_full(b, 0x04, 0, "dev", 0, 0xffffffff); break;
	case 30: b_u8(b, 0x02); b_be32(b, 7); break;
	case 31: b_u8(b, 0x03); b_be32(b, 7); break;
	case 32: good_dev(b, 0); b_u8(b, 0x02); b_be32(b, 1); break;
	case 33: case 34: case 35:
		start_full(b, 0x04, 0, "dev", 0, 2);
		b_be32(b, 1);
		if (i == 33) { b_u8(b, 0x7f); b_be32(b, 0); }
		if (i == 34) footer(b, 9);
		if (i == 35) b_u8(b, 0x00);
		break;
	case 36: start_full(b, 0x04, 0, "dev", 0, 2); b_be16(b, 1); footer(b, 0); b_u8(b, 0);
		break;
	case 37: good_dev(b, 0); start_full(b, 0x01, 0, "live", 0, 1); break;
	case 38: good_dev(b, 0); start_full(b, 0x04, 4, "dev", 0, 2); break;
	case 39: cmd(b, 0, 0, NULL); break;
	case 40: cmd(b, 12, 0, NULL); break;
	case 41: cmd(b, 0xffff, 0, NULL); break;
	case 42: cmd(b, 1, 1, zeros); break;
	case 43: cmd(b, 2, 3, zeros); break;
	case 44: b_u8(b, 0x08); b_be16(b, 2); b_be16(b, 0xffff); break;
	case 45: cmd(b, 3, 8, zeros); break;
	case 46: cmd(b, 3, 17, zeros); break;
	case 47: cmd(b, 4, 4, zeros); break;
	case 48: cmd(b, 5, 1, zeros); break;
	case 49: cmd(b, 6, 19, zeros); break;
	case 50: cmd(b, 7, 5, zeros); break;
	case 51: cmd(b, 8, 1, zeros); break;
	case 52: cmd(b, 9, 2, zeros); break;
	case 53: cmd(b, 10, 1, zeros); break;
	case 54: cmd(b, 10, 300, zeros); break;
	case 55: cmd(b, 11, 1, zeros); break;
	case 56: b_u8(b, 0x08); b_be16(b, 2); b_be16(b, 4); b_be16(b, 0); break;
	case 57: { uint8_t p[4] = { 0, 0, 0, 1 }; cmd(b, 2, 4, p); break; }
	case 58: cmd(b, 1, 0, NULL); break;
	case 59: cmd(b, 3, 0, NULL); break;
	case 60: cmd(b, 4, 0, NULL); break;
	case 61: cmd(b, 5, 0, NULL); break;
	case 62: cmd(b, 9, 0, NULL); break;
	case 63: cmd(b, 8, 0, NULL); break;
	case 64: cmd(b, 10, 4, "\x03ram"); break;
	case 65: cmd(b, 10, 3, "\x05ra"); break;
	case 66: cmd(b, 10, 4, "\x03r\0m"); break;
	case 67: case 68: case 69: case 70: case 71: case 72: {
		struct bytes p = { 0 };

		b_u8(&p, i == 67 ? 1 : 0);
		if (i == 68) { b_u8(&p, 0); b_raw(&p, zeros, 18); }
		else if (i == 69) { b_u8(&p, 200); b_raw(&p, zeros, 18); }
		else if (i == 70) { b_u8(&p, 4); b_raw(&p, "ramX", 4); b_u8(&p, 'Y');
			b_raw(&p, zeros, 16); }
		else { b_u8(&p, 4); b_raw(&p, "pc.r", 4); b_u8(&p, 0);
			b_raw(&p, zeros, i == 71 ? 17 : 16); }
		cmd(b, 6, (uint16_t)p.len, p.p);
		b_free(&p);
		break;
	}
	case 73: { uint8_t p[4] = { 0xff, 0xff, 0xff, 0xff }; good_dev(b, 0);
		cmd(b, 7, 4, p); break; }
	case 74: { uint8_t p[4] = { 0, 0, 0, 100 }; cmd(b, 7, 4, p); b_raw(b, zeros, 10); break; }
	case 75: { struct bytes in = { 0 }; uint8_t p[4] = { 0, 0, 0, 0 };
		good_dev(&in, 0);
		cmd(&in, 7, 4, p);
		uint8_t q[4] = { 0, 0, 0, (uint8_t)in.len };
		cmd(b, 7, 4, q);
		b_raw(b, in.p, in.len);
		b_free(&in);
		break; }
	case 76: { struct bytes in = { 0 };
		good_dev(&in, 0); b_u8(&in, 0); b_raw(&in, "xyz", 3);
		uint8_t q[4] = { 0, 0, 0, (uint8_t)in.len };
		cmd(b, 7, 4, q); b_raw(b, in.p, in.len); b_free(&in); break; }
	case 77: { uint8_t q[4] = { 0, 0, 0, 1 }; cmd(b, 7, 4, q); b_u8(b, 0x33); break; }
	case 78: { uint8_t q[4] = { 0, 0, 0, 0 }; cmd(b, 7, 4, q); break; }
	case 79: break;
	case 80: start_full(b, 0x04, 0, "saveonly", 0, 1); b_be32(b, 0); footer(b, 0); break;
	case 81: { struct bytes in = { 0 };
		start_full(&in, 0x04, 0, "ghost", 0, 1);
		uint8_t q[4] = { 0, 0, 0, (uint8_t)in.len };
		cmd(b, 7, 4, q); b_raw(b, in.p, in.len); b_free(&in); break; }
	case 82: start_full(b, 0x04, 0, "dev", 0, 2); b_be16(b, 0); break;
	case 83: good_dev(b, 0); b->len -= 2; break;
	case 84: start_full(b, 0x04, 0, "dev", 0, 2); b->len -= 2; break;
	case 85: b_be16(b, 0x5145); break;
	}
}

START_TEST(malformed_stream)
{
	struct bytes b = { 0 };
	mfd_migration *m = dest();
	mfd_error *err = NULL;
	const struct bad_case *c = &cases[_i];

	build(_i, &b);
	int r = load_from_mem(m, b.p, b.len, &err);

	ck_assert_msg(r == c->code, "case %d '%s': expected %d (%s), got %d: %s", _i, c->name,
		      c->code, mfd_strerror(c->code), r, mfd_error_message(err));
	ck_assert_msg(err && strstr(mfd_error_message(err), c->msg),
		      "case %d '%s': message '%s' lacks '%s'", _i, c->name,
		      mfd_error_message(err), c->msg);
	ck_assert_int_eq(mfd_error_code(err), c->code);
	mfd_error_free(err);
	b_free(&b);
	mfd_migration_free(m);
}
END_TEST

static int setup_calls;

static int count_setup(void *opaque, mfd_error **errp)
{
	(void)opaque;
	(void)errp;
	setup_calls++;
	return 0;
}

START_TEST(foreign_stream_runs_no_handler)
{
	const mfd_save_handlers ops = {
		.size = sizeof(mfd_save_handlers),
		.load_state = load4,
		.load_setup = count_setup,
	};
	static const uint8_t junk[] = "GET / HTTP/1.1\r\n\r\n";
	mfd_migration *m = NULL;
	mfd_error *err = NULL;

	ck_assert_ok(mfd_migration_new(&m, &err), err);
	ck_assert_ok(mfd_register_live(m, "dev", 0, 1, &ops, &dev_value, &err), err);
	ck_assert_int_eq(load_from_mem(m, junk, sizeof(junk) - 1, &err), MFD_EBADMAGIC);
	ck_assert_mfd_error(err, MFD_EBADMAGIC, "not a migration stream: magic 0x47455420");
	ck_assert_int_eq(setup_calls, 0);
	mfd_migration_free(m);
}
END_TEST

START_TEST(valid_hand_built_stream_loads)
{
	/* The builders above are right: the same pieces, well formed, load. */
	struct bytes b = { 0 };
	mfd_migration *m = dest();
	mfd_error *err = NULL;
	struct bytes in = { 0 };

	b_header(&b);
	good_dev(&b, 0);
	start_full(&b, 0x01, 1, "live", 0, 1);
	b_be32(&b, 7);
	footer(&b, 1);
	b_u8(&b, 0x02);
	b_be32(&b, 1);
	b_be32(&b, 8);
	footer(&b, 1);
	cmd(&b, 11, 0, NULL);	/* SWITCHOVER_START is informational */
	good_dev(&in, 0);
	b_u8(&in, 0);
	uint8_t q[4] = { 0, 0, 0, (uint8_t)in.len };
	cmd(&b, 7, 4, q);
	b_raw(&b, in.p, in.len);
	b_u8(&b, 0x03);
	b_be32(&b, 1);
	b_be32(&b, 9);
	footer(&b, 1);
	b_u8(&b, 0x00);
	ck_assert_ok(load_from_mem(m, b.p, b.len, &err), err);
	ck_assert_uint_eq(dev_value, 0x11223344);
	ck_assert_uint_eq(live_value, 9);
	b_free(&in);
	b_free(&b);
	mfd_migration_free(m);
}
END_TEST

/* ---- truncation at every byte offset ---------------------------------------- */

static void *valid_vm_stream(size_t *len, mfd_migration **dst)
{
	mfd_migration *src = NULL;
	mfd_error *err = NULL;
	static struct fake_dev s_ram, s_cpu, s_dev, d_ram, d_cpu, d_dev;
	void *buf;

	ck_assert_ok(mfd_migration_new(&src, &err), err);
	ck_assert_ok(mfd_migration_new(dst, &err), err);
	fake_dev_init(&s_ram, "ram", true, 700, 1);
	fake_dev_init(&s_cpu, "cpu", false, 90, 2);
	fake_dev_init(&s_dev, "virtio-blk", false, 33, 3);
	s_ram.chunk = 250;
	fake_dev_init(&d_ram, "ram", true, 0, 0);
	fake_dev_init(&d_cpu, "cpu", false, 0, 0);
	fake_dev_init(&d_dev, "virtio-blk", false, 0, 0);
	fake_register(src, &s_ram, 0, 4);
	fake_register(src, &s_cpu, 0, 1);
	fake_register(src, &s_dev, 3, 1);
	fake_register(*dst, &d_ram, 0, 4);
	fake_register(*dst, &d_cpu, 0, 1);
	fake_register(*dst, &d_dev, 3, 1);
	buf = save_to_mem(src, len);
	mfd_migration_free(src);
	return buf;
}

START_TEST(truncation_at_every_offset)
{
	mfd_migration *dst = NULL;
	size_t len;
	uint8_t *buf = valid_vm_stream(&len, &dst);
	mfd_error *err = NULL;

	ck_assert_uint_gt(len, 900);
	/* The whole stream loads. */
	ck_assert_ok(load_from_mem(dst, buf, len, &err), err);
	for (size_t cut = 0; cut < len; cut++) {
		int r = load_from_mem(dst, buf, cut, &err);

		ck_assert_msg(r == MFD_EEOF, "cut at %zu of %zu: code %d: %s", cut, len, r,
			      mfd_error_message(err));
		ck_assert_msg(strstr(mfd_error_message(err), "unexpected end of data"),
			      "cut at %zu: %s", cut, mfd_error_message(err));
		mfd_error_free(err);
		err = NULL;
	}
	free(buf);
	mfd_migration_free(dst);
}
END_TEST

START_TEST(truncation_inside_a_package_at_every_offset)
{
	struct bytes b = { 0 }, in = { 0 };
	mfd_migration *m = dest();
	mfd_error *err = NULL;
	size_t body;

	b_header(&b);
	good_dev(&in, 0);
	good_dev(&in, 0);
	b_u8(&in, 0);
	uint8_t q[4] = { 0, 0, 0, (uint8_t)in.len };
	cmd(&b, 7, 4, q);
	body = b.len;
	b_raw(&b, in.p, in.len);
	b_u8(&b, 0);
	ck_assert_ok(load_from_mem(m, b.p, b.len, &err), err);
	for (size_t cut = body; cut < b.len; cut++) {
		int r = load_from_mem(m, b.p, cut, &err);

		ck_assert_msg(r == MFD_EEOF, "cut at %zu: %d %s", cut, r, mfd_error_message(err));
		mfd_error_free(err);
		err = NULL;
	}
	b_free(&in);
	b_free(&b);
	mfd_migration_free(m);
}
END_TEST

struct half_writer {
	mfd_channel *ch;
	const uint8_t *buf;
	size_t len;
};

static void *write_half_and_close(void *arg)
{
	struct half_writer *h = arg;
	mfd_stream *s = NULL;

	if (mfd_stream_new(h->ch, MFD_STREAM_WRITE, &s, NULL) == 0) {
		mfd_stream_put_buf(s, h->buf, h->len);
		mfd_stream_flush(s);
		mfd_stream_free(s);
	}
	mfd_channel_free(h->ch);	/* the peer vanishes mid-stream */
	return NULL;
}

START_TEST(peer_closing_mid_stream)
{
	mfd_migration *dst = NULL;
	size_t len;
	uint8_t *buf = valid_vm_stream(&len, &dst);
	struct half_writer h = { .buf = buf, .len = len / 2 };
	mfd_channel *rd = NULL;
	mfd_error *err = NULL;
	pthread_t t;

	ck_assert_ok(mfd_channel_socketpair(&h.ch, &rd, &err), err);
	ck_assert_int_eq(pthread_create(&t, NULL, write_half_and_close, &h), 0);
	ck_assert_int_eq(mfd_loadvm(dst, rd, &err), MFD_EEOF);
	ck_assert_mfd_error(err, MFD_EEOF, "socketpair:1: unexpected end of data at byte");
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	mfd_channel_free(rd);
	free(buf);
	mfd_migration_free(dst);
}
END_TEST

Suite *suite_loadvm_bad(void)
{
	Suite *s = suite_create("loadvm_bad");
	TCase *tc = tcase_create("malformed");

	tcase_add_loop_test(tc, malformed_stream, 0, (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, valid_hand_built_stream_loads);
	tcase_add_test(tc, foreign_stream_runs_no_handler);
	tcase_add_test(tc, truncation_at_every_offset);
	tcase_add_test(tc, truncation_inside_a_package_at_every_offset);
	tcase_add_test(tc, peer_closing_mid_stream);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}
