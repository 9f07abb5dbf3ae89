/* SPDX-License-Identifier: MIT */
/*
 * Destination side of the savevm v3 section stream.
 *
 * Everything read here comes from the peer: every length is bounded before
 * it is used, every id is looked up before it is trusted, and every refusal
 * names the record, the byte offset and the offending value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/escape.h"
#include "core/migration.h"
#include "core/savevm.h"
#include "core/stream.h"
#include "core/util.h"

#define CMD_LEN_VARIABLE (-1)

struct cmd_spec {
	int len;		/* exact payload length, or CMD_LEN_VARIABLE */
	uint16_t min, max;	/* bounds of a variable length */
};

static const struct cmd_spec cmd_specs[MFD_CMD_MAX] = {
	[MFD_CMD_OPEN_RETURN_PATH] = { 0, 0, 0 },
	[MFD_CMD_PING] = { 4, 0, 0 },
	[MFD_CMD_POSTCOPY_ADVISE] = { CMD_LEN_VARIABLE, 0, 16 },
	[MFD_CMD_POSTCOPY_LISTEN] = { 0, 0, 0 },
	[MFD_CMD_POSTCOPY_RUN] = { 0, 0, 0 },
	/* version, name length, name (>= 1), NUL, at least one 16-byte range */
	[MFD_CMD_POSTCOPY_RAM_DISCARD] = { CMD_LEN_VARIABLE, 20, UINT16_MAX },
	[MFD_CMD_PACKAGED] = { 4, 0, 0 },
	[MFD_CMD_ENABLE_COLO] = { 0, 0, 0 },
	[MFD_CMD_POSTCOPY_RESUME] = { 0, 0, 0 },
	[MFD_CMD_RECV_BITMAP] = { CMD_LEN_VARIABLE, 2, 256 },
	[MFD_CMD_SWITCHOVER_START] = { 0, 0, 0 },
};

struct loadvm {
	mfd_migration *m;
	const struct mfd_loadvm_hooks *hooks;
	mfd_error **errp;
};

/* Offset of the next unread byte, for messages. */
static unsigned long long at(mfd_stream *s)
{
	return (unsigned long long)mfd_stream_bytes(s);
}

static int fail(struct loadvm *lv, mfd_stream *s, int code, const char *fmt, ...)
	MFD_PRINTF(4, 5);

static int fail(struct loadvm *lv, mfd_stream *s, int code, const char *fmt, ...)
{
	mfd_error *err = NULL;
	va_list ap;

	va_start(ap, fmt);
	error_setv(&err, code, fmt, ap);
	va_end(ap);
	mfd_error_prefix(err, "%s", stream_label(s));
	error_propagate(lv->errp, err);
	/* Latch it too, so nothing more is read from a stream we refused. */
	mfd_stream_set_error(s, code, "stream refused");
	return code;
}

/* A read failed: report the stream's latched error. */
static int read_failed(struct loadvm *lv, mfd_stream *s)
{
	return mfd_stream_error(s, lv->errp);
}

static int check_header(struct loadvm *lv, mfd_stream *s)
{
	uint32_t magic, version, len;
	uint8_t type;
	char identity[256];

	if (mfd_stream_get_be32(s, &magic) < 0)
		return read_failed(lv, s);
	if (magic != MFD_VM_FILE_MAGIC)
		return fail(lv, s, MFD_EBADMAGIC,
			    "not a migration stream: magic 0x%08x at byte 0, expected 0x%08x",
			    magic, MFD_VM_FILE_MAGIC);
	if (mfd_stream_get_be32(s, &version) < 0)
		return read_failed(lv, s);
	if (version == MFD_VM_FILE_VERSION_COMPAT)
		return fail(lv, s, MFD_EBADVERSION,
			    "stream version 2 is obsolete; this library reads version %u",
			    MFD_VM_FILE_VERSION);
	if (version != MFD_VM_FILE_VERSION)
		return fail(lv, s, MFD_EBADVERSION,
			    "unsupported stream version %u; this library reads version %u",
			    version, MFD_VM_FILE_VERSION);
	if (mfd_stream_get_u8(s, &type) < 0)
		return read_failed(lv, s);
	if (type != MFD_VM_CONFIGURATION)
		return fail(lv, s, MFD_EBADCONFIG,
			    "expected the CONFIGURATION record (0x07) at byte 8, found 0x%02x",
			    type);
	if (mfd_stream_get_be32(s, &len) < 0)
		return read_failed(lv, s);
	if (len == 0 || len > 255)
		return fail(lv, s, MFD_EBADCONFIG,
			    "configuration identity length %u at byte 9 is outside 1..255", len);
	if (mfd_stream_get_buf(s, identity, len) < 0)
		return read_failed(lv, s);
	identity[len] = '\0';
	if (strlen(identity) != len || strcmp(identity, lv->m->identity) != 0) {
		char esc[ESCAPE_BUF_SIZE];

		return fail(lv, s, MFD_EBADCONFIG,
			    "CONFIGURATION at byte 8: the source's identity is '%s', this "
			    "destination is '%s'", escape_bytes(esc, sizeof(esc), identity, len),
			    lv->m->identity);
	}
	return 0;
}

static struct mfd_section *find_by_load_id(mfd_migration *m, uint32_t section_id)
{
	for_each_section(m, se)
		if (se->load_seen && se->load_section_id == section_id)
			return se;
	return NULL;
}

static int check_footer(struct loadvm *lv, mfd_stream *s, struct mfd_section *se,
			uint32_t section_id)
{
	unsigned long long off = at(s);
	uint8_t byte;
	uint32_t id;

	if (mfd_stream_get_u8(s, &byte) < 0)
		return read_failed(lv, s);
	if (byte != MFD_VM_SECTION_FOOTER)
		return fail(lv, s, MFD_EBADFOOTER,
			    "section '%s' (id %u): expected footer 0x7e at byte %llu, found 0x%02x "
			    "(the load handler read a different amount than the source wrote)",
			    se->idstr, section_id, off, byte);
	if (mfd_stream_get_be32(s, &id) < 0)
		return read_failed(lv, s);
	if (id != section_id)
		return fail(lv, s, MFD_EBADFOOTER,
			    "section '%s' (id %u): footer at byte %llu names section id %u",
			    se->idstr, section_id, off, id);
	return 0;
}

static int call_load(struct loadvm *lv, mfd_stream *s, struct mfd_section *se,
		     uint32_t version_id, const char *kind)
{
	mfd_error *err = NULL;
	int r;

	if (!se->ops.load_state)
		return fail(lv, s, MFD_ENOTSUP,
			    "section '%s' instance %u has no load handler on this side", se->idstr,
			    se->instance_id);
	r = se->ops.load_state(s, se->opaque, version_id, &err);
	if (r < 0 || mfd_stream_error(s, NULL)) {
		if (!err && mfd_stream_error(s, NULL))
			err = error_copy(stream_last_error(s));
		if (!err)
			mfd_error_set(&err, r < 0 ? r : MFD_EHANDLER,
				      "load handler failed with code %d (%s)", r,
				      mfd_strerror(r < 0 ? r : MFD_EHANDLER));
		mfd_error_prefix(err, "section '%s' instance %u (%s, version %u)", se->idstr,
				 se->instance_id, kind, version_id);
		r = error_normalize(err);
		error_propagate(lv->errp, err);
		mfd_stream_set_error(s, r, "load handler failed");
		return r;
	}
	mfd_error_free(err);
	return 0;
}

static int load_start_full(struct loadvm *lv, mfd_stream *s, uint8_t type)
{
	unsigned long long off = at(s) - 1;
	uint32_t section_id, instance_id, version_id;
	char idstr[256], esc[ESCAPE_BUF_SIZE];
	uint8_t len;
	struct mfd_section *se, *other;
	int r;

	if (mfd_stream_get_be32(s, &section_id) < 0 || mfd_stream_get_u8(s, &len) < 0)
		return read_failed(lv, s);
	if (len == 0)
		return fail(lv, s, MFD_EPROTO, "%s at byte %llu (id %u): empty idstr",
			    vm_record_name(type), off, section_id);
	if (mfd_stream_get_buf(s, idstr, len) < 0)
		return read_failed(lv, s);
	idstr[len] = '\0';
	if (strlen(idstr) != len)
		return fail(lv, s, MFD_EPROTO,
			    "%s at byte %llu (id %u): idstr contains a NUL byte: '%s'",
			    vm_record_name(type), off, section_id,
			    escape_bytes(esc, sizeof(esc), idstr, len));
	if (mfd_stream_get_be32(s, &instance_id) < 0 || mfd_stream_get_be32(s, &version_id) < 0)
		return read_failed(lv, s);
	se = section_find(lv->m, idstr, instance_id);
	if (!se)
		return fail(lv, s, MFD_EBADSECTION,
			    "%s at byte %llu: unknown section '%s' instance %u (not registered "
			    "on this side)", vm_record_name(type), off,
			    escape_bytes(esc, sizeof(esc), idstr, len), instance_id);
	if (version_id > se->version_id)
		return fail(lv, s, MFD_EBADVERSION,
			    "%s at byte %llu: section '%s' instance %u: the stream has version %u, "
			    "this side loads up to version %u", vm_record_name(type), off, idstr,
			    instance_id, version_id, se->version_id);
	other = find_by_load_id(lv->m, section_id);
	if (other && other != se)
		return fail(lv, s, MFD_EBADSECTION,
			    "%s at byte %llu: section id %u of '%s' is already used by '%s' "
			    "instance %u", vm_record_name(type), off, section_id, idstr,
			    other->idstr, other->instance_id);
	if (se->load_seen && se->load_section_id != section_id)
		return fail(lv, s, MFD_EBADSECTION,
			    "%s at byte %llu: section '%s' instance %u arrives as id %u, it was "
			    "id %u before", vm_record_name(type), off, idstr, instance_id,
			    section_id, se->load_section_id);
	se->load_seen = true;
	se->load_section_id = section_id;
	se->load_version_id = version_id;
	r = call_load(lv, s, se, version_id, vm_record_name(type));
	if (r < 0)
		return r;
	return check_footer(lv, s, se, section_id);
}

static int load_part_end(struct loadvm *lv, mfd_stream *s, uint8_t type)
{
	unsigned long long off = at(s) - 1;
	uint32_t section_id;
	struct mfd_section *se;
	int r;

	if (mfd_stream_get_be32(s, &section_id) < 0)
		return read_failed(lv, s);
	se = find_by_load_id(lv->m, section_id);
	if (!se)
		return fail(lv, s, MFD_EBADSECTION,
			    "%s at byte %llu: unknown section id %u (no START or FULL introduced it)",
			    vm_record_name(type), off, section_id);
	r = call_load(lv, s, se, se->load_version_id, vm_record_name(type));
	if (r < 0)
		return r;
	return check_footer(lv, s, se, section_id);
}

static int loadvm_loop(struct loadvm *lv, mfd_stream *s, int depth);

/* Read a PACKAGED blob and load it as a nested stream. */
static int load_packaged(struct loadvm *lv, mfd_stream *s, const uint8_t *payload,
			 unsigned long long cmd_off, int depth)
{
	uint32_t len = load_be32(payload);
	uint32_t max = lv->hooks && lv->hooks->packaged_max ? lv->hooks->packaged_max
							   : MFD_PACKAGED_MAX_DEFAULT;
	unsigned long long off = at(s);
	mfd_channel *ch = NULL;
	mfd_stream *inner = NULL;
	uint8_t *blob = NULL;
	size_t have = 0;
	int r;

	if (depth >= MFD_LOADVM_MAX_DEPTH)
		return fail(lv, s, MFD_EBADCMD,
			    "PACKAGED command at byte %llu inside a package (nesting limit %d)",
			    cmd_off, MFD_LOADVM_MAX_DEPTH);
	if (len > max)
		return fail(lv, s, MFD_ETOOBIG,
			    "PACKAGED command at byte %llu announces %u bytes, the limit is %u",
			    cmd_off, len, max);
	/* Grow with the data actually received, so a lying length costs nothing. */
	while (have < len) {
		size_t chunk = MFD_MIN((size_t)len - have, (size_t)1 << 20);
		uint8_t *p = realloc(blob, have + chunk);

		if (!p) {
			free(blob);
			return fail(lv, s, MFD_ENOMEM, "out of memory for a %u-byte package", len);
		}
		blob = p;
		if (mfd_stream_get_buf(s, blob + have, chunk) < 0) {
			free(blob);
			return read_failed(lv, s);
		}
		have += chunk;
	}
	r = mfd_channel_new_mem_reader(blob, len, &ch, lv->errp);
	if (r == 0)
		r = mfd_stream_new(ch, MFD_STREAM_READ, &inner, lv->errp);
	if (r == 0) {
		char *label = NULL;

		if (asprintf(&label, "%s: package at byte %llu", stream_label(s), off) >= 0) {
			stream_set_label(inner, label);
			free(label);
		}
		r = loadvm_loop(lv, inner, depth + 1);
		if (r >= 0 && mfd_stream_bytes(inner) != len)
			r = fail(lv, inner, MFD_EPROTO,
				 "%llu unread bytes after the end of the package",
				 (unsigned long long)(len - mfd_stream_bytes(inner)));
	}
	mfd_stream_free(inner);
	mfd_channel_free(ch);
	free(blob);
	if (r < 0)
		mfd_stream_set_error(s, r, "package refused");
	return r;
}

static int load_discard(struct loadvm *lv, mfd_stream *s, const uint8_t *p, uint16_t len,
			unsigned long long off, mfd_error **errp)
{
	char name[256];
	uint8_t name_len;
	size_t n;
	uint64_t *ranges;
	int r;

	if (p[0] != MFD_DISCARD_VERSION)
		return fail(lv, s, MFD_EBADVERSION,
			    "POSTCOPY_RAM_DISCARD at byte %llu: version %u, expected %u", off, p[0],
			    MFD_DISCARD_VERSION);
	name_len = p[1];
	if (name_len == 0 || (size_t)name_len + 3 > len)
		return fail(lv, s, MFD_EBADCMD,
			    "POSTCOPY_RAM_DISCARD at byte %llu: block name length %u does not fit "
			    "the %u-byte command", off, name_len, len);
	memcpy(name, p + 2, name_len);
	name[name_len] = '\0';
	if (strlen(name) != name_len || p[2 + name_len] != 0) {
		char esc[ESCAPE_BUF_SIZE];

		return fail(lv, s, MFD_EBADCMD,
			    "POSTCOPY_RAM_DISCARD at byte %llu: block name is not a NUL-terminated "
			    "string of %u bytes: '%s'", off, name_len,
			    escape_bytes(esc, sizeof(esc), p + 2, name_len));
	}
	if ((len - 3 - name_len) % 16 != 0 || len - 3 - name_len == 0)
		return fail(lv, s, MFD_EBADCMD,
			    "POSTCOPY_RAM_DISCARD at byte %llu: %u bytes of ranges, expected a "
			    "non-zero multiple of 16", off, len - 3 - name_len);
	if (!lv->hooks || !lv->hooks->postcopy_ram_discard)
		return fail(lv, s, MFD_ENOTSUP,
			    "POSTCOPY_RAM_DISCARD at byte %llu: postcopy is not enabled here", off);
	n = (size_t)(len - 3 - name_len) / 16;
	ranges = malloc(n * 2 * sizeof(*ranges));
	if (!ranges)
		return fail(lv, s, MFD_ENOMEM, "out of memory for %zu discard ranges", n);
	for (size_t i = 0; i < n; i++) {
		const uint8_t *q = p + 3 + name_len + 16 * i;

		ranges[2 * i] = load_be64(q);
		ranges[2 * i + 1] = load_be64(q + 8);
	}
	r = lv->hooks->postcopy_ram_discard(lv->hooks->opaque, name, ranges, n, errp);
	free(ranges);
	return r;
}

static int dispatch_command(struct loadvm *lv, mfd_stream *s, uint16_t cmd,
			    const uint8_t *payload, uint16_t len, unsigned long long off, int depth,
			    mfd_error **errp);

static int no_hook(struct loadvm *lv, mfd_stream *s, unsigned cmd, unsigned long long off)
{
	const char *why = cmd == MFD_CMD_PING || cmd == MFD_CMD_RECV_BITMAP
				  ? "it needs a return path, and none is open"
				  : "that feature is not enabled on this destination";

	return fail(lv, s, MFD_ENOTSUP, "command %s at byte %llu refused: %s",
		    vm_cmd_name(cmd), off, why);
}

static int load_command(struct loadvm *lv, mfd_stream *s, int depth)
{
	unsigned long long off = at(s) - 1;
	uint16_t cmd, len;
	uint8_t small[256], *payload = small;
	mfd_error *err = NULL;
	int r;

	if (mfd_stream_get_be16(s, &cmd) < 0 || mfd_stream_get_be16(s, &len) < 0)
		return read_failed(lv, s);
	if (cmd == MFD_CMD_INVALID || cmd >= MFD_CMD_MAX)
		return fail(lv, s, MFD_EBADCMD, "unknown command %u at byte %llu", cmd, off);
	const struct cmd_spec *spec = &cmd_specs[cmd];

	if (spec->len != CMD_LEN_VARIABLE && len != spec->len)
		return fail(lv, s, MFD_EBADCMD,
			    "command %s at byte %llu has length %u, it must be %d",
			    vm_cmd_name(cmd), off, len, spec->len);
	if (spec->len == CMD_LEN_VARIABLE && (len < spec->min || len > spec->max))
		return fail(lv, s, MFD_EBADCMD,
			    "command %s at byte %llu has length %u, allowed %u..%u",
			    vm_cmd_name(cmd), off, len, spec->min, spec->max);
	if (cmd == MFD_CMD_POSTCOPY_ADVISE && len != 0 && len != 16)
		return fail(lv, s, MFD_EBADCMD,
			    "command POSTCOPY_ADVISE at byte %llu has length %u, it must be 0 or 16",
			    off, len);
	if (len > sizeof(small) && !(payload = malloc(len)))
		return fail(lv, s, MFD_ENOMEM, "out of memory for a %u-byte command", len);
	if (mfd_stream_get_buf(s, payload, len) < 0) {
		r = read_failed(lv, s);
		goto out;
	}
	r = dispatch_command(lv, s, cmd, payload, len, off, depth, &err);
	if (r < 0 && !mfd_stream_error(s, NULL)) {
		/* A hook failed: name the command, keep the hook's own words. */
		if (!err)
			mfd_error_set(&err, MFD_EHANDLER, "failed with code %d (%s)", r,
				      mfd_strerror(r));
		mfd_error_prefix(err, "%s: command %s at byte %llu", stream_label(s),
				 vm_cmd_name(cmd), off);
		r = error_normalize(err);
		mfd_stream_set_error(s, r, "command %s failed", vm_cmd_name(cmd));
	}
	if (r < 0)
		error_propagate(lv->errp, err);
	else
		mfd_error_free(err);	/* a hook that succeeded has nothing to report */
out:
	if (payload != small)
		free(payload);
	return r;
}

static int dispatch_command(struct loadvm *lv, mfd_stream *s, uint16_t cmd,
			    const uint8_t *payload, uint16_t len, unsigned long long off, int depth,
			    mfd_error **errp)
{
	const struct mfd_loadvm_hooks *h = lv->hooks;
	void *o = h ? h->opaque : NULL;
	int r;

	switch (cmd) {
	case MFD_CMD_OPEN_RETURN_PATH:
		if (!h || !h->open_return_path)
			return no_hook(lv, s, cmd, off);
		r = h->open_return_path(o, errp);
		break;
	case MFD_CMD_PING:
		if (!h || !h->ping)
			return no_hook(lv, s, cmd, off);
		r = h->ping(o, load_be32(payload), errp);
		break;
	case MFD_CMD_POSTCOPY_ADVISE:
		if (!h || !h->postcopy_advise)
			return no_hook(lv, s, cmd, off);
		r = h->postcopy_advise(o, len == 16, len ? load_be64(payload) : 0,
				       len ? load_be64(payload + 8) : 0, errp);
		break;
	case MFD_CMD_POSTCOPY_LISTEN:
		if (!h || !h->postcopy_listen)
			return no_hook(lv, s, cmd, off);
		r = h->postcopy_listen(o, errp);
		break;
	case MFD_CMD_POSTCOPY_RUN:
		if (!h || !h->postcopy_run)
			return no_hook(lv, s, cmd, off);
		r = h->postcopy_run(o, errp);
		break;
	case MFD_CMD_POSTCOPY_RAM_DISCARD:
		r = load_discard(lv, s, payload, len, off, errp);
		break;
	case MFD_CMD_PACKAGED:
		r = load_packaged(lv, s, payload, off, depth);
		break;
	case MFD_CMD_ENABLE_COLO:
		if (!h || !h->enable_colo)
			return no_hook(lv, s, cmd, off);
		r = h->enable_colo(o, errp);
		break;
	case MFD_CMD_POSTCOPY_RESUME:
		if (!h || !h->postcopy_resume)
			return no_hook(lv, s, cmd, off);
		r = h->postcopy_resume(o, errp);
		break;
	case MFD_CMD_RECV_BITMAP: {
		char name[256];

		if (payload[0] != len - 1)
			return fail(lv, s, MFD_EBADCMD,
				    "RECV_BITMAP at byte %llu: name length %u in a %u-byte command",
				    off, payload[0], len);
		memcpy(name, payload + 1, payload[0]);
		name[payload[0]] = '\0';
		if (strlen(name) != payload[0]) {
			char esc[ESCAPE_BUF_SIZE];

			return fail(lv, s, MFD_EBADCMD,
				    "RECV_BITMAP at byte %llu: block name contains a NUL byte: '%s'",
				    off, escape_bytes(esc, sizeof(esc), payload + 1, payload[0]));
		}
		if (!h || !h->recv_bitmap)
			return no_hook(lv, s, cmd, off);
		r = h->recv_bitmap(o, name, errp);
		break;
	}
	case MFD_CMD_SWITCHOVER_START:
		/* Informational: a destination without the hook has nothing to prepare. */
		r = h && h->switchover_start ? h->switchover_start(o, errp) : 0;
		break;
	default:
		return fail(lv, s, MFD_EBADCMD, "unknown command %u at byte %llu", cmd, off);
	}
	/* Only POSTCOPY_RUN (directly or inside a package) ends the load loop early. */
	if (r > 0 && cmd != MFD_CMD_POSTCOPY_RUN && cmd != MFD_CMD_PACKAGED)
		r = 0;
	return r;
}

static int loadvm_loop(struct loadvm *lv, mfd_stream *s, int depth)
{
	for (;;) {
		unsigned long long off = at(s);
		uint8_t type;
		int r;

		if (mfd_stream_get_u8(s, &type) < 0)
			return read_failed(lv, s);
		switch (type) {
		case MFD_VM_EOF:
			return 0;
		case MFD_VM_SECTION_START:
		case MFD_VM_SECTION_FULL:
			r = load_start_full(lv, s, type);
			break;
		case MFD_VM_SECTION_PART:
		case MFD_VM_SECTION_END:
			r = load_part_end(lv, s, type);
			break;
		case MFD_VM_COMMAND:
			r = load_command(lv, s, depth);
			if (r == MFD_LOADVM_QUIT)
				return r;
			break;
		case MFD_VM_CONFIGURATION:
		case MFD_VM_SUBSECTION:
		case MFD_VM_SECTION_FOOTER:
		case MFD_VM_VMDESCRIPTION:
			return fail(lv, s, MFD_EBADRECORD,
				    "record %s (0x%02x) at byte %llu is not allowed here",
				    vm_record_name(type), type, off);
		default:
			return fail(lv, s, MFD_EBADRECORD, "unknown record type 0x%02x at byte %llu",
				    type, off);
		}
		if (r < 0)
			return r;
	}
}

int loadvm_begin(mfd_migration *m, mfd_stream *s, const struct mfd_loadvm_hooks *hooks,
		     mfd_error **errp)
{
	struct loadvm lv = { .m = m, .hooks = hooks, .errp = errp };
	int r = 0;

	for_each_section(m, se) {
		se->load_seen = false;
		se->load_setup_done = false;
	}
	/* Refuse a stream that is not ours before any handler runs. */
	r = check_header(&lv, s);
	if (r < 0)
		return r;
	return loadvm_setup_new(m, errp);
}

int loadvm_setup_new(mfd_migration *m, mfd_error **errp)
{
	int r = 0;

	for_each_section(m, se) {
		if (se->load_setup_done)
			continue;
		/* From here on this section gets its load_cleanup, whatever happens. */
		se->load_setup_done = true;
		if (!se->ops.load_setup)
			continue;
		mfd_error *err = NULL;

		r = se->ops.load_setup(se->opaque, &err);
		if (r < 0) {
			if (!err)
				mfd_error_set(&err, MFD_EHANDLER, "failed with code %d", r);
			mfd_error_prefix(err, "section '%s' instance %u: load_setup", se->idstr,
					 se->instance_id);
			r = error_normalize(err);
			error_propagate(errp, err);
			break;
		}
		mfd_error_free(err);
	}
	return r;
}

int loadvm_run(mfd_migration *m, mfd_stream *s, const struct mfd_loadvm_hooks *hooks,
		   bool header, mfd_error **errp)
{
	struct loadvm lv = { .m = m, .hooks = hooks, .errp = errp };
	int r = header ? check_header(&lv, s) : 0;

	if (r == 0)
		r = loadvm_loop(&lv, s, 0);
	return r;
}

void loadvm_end(mfd_migration *m)
{
	for_each_section(m, se) {
		if (se->load_setup_done && se->ops.load_cleanup)
			se->ops.load_cleanup(se->opaque);
		se->load_setup_done = false;
	}
}

int loadvm_state(mfd_migration *m, mfd_stream *s, const struct mfd_loadvm_hooks *hooks,
		     mfd_error **errp)
{
	int r = loadvm_begin(m, s, hooks, errp);

	if (r == 0)
		r = loadvm_run(m, s, hooks, false, errp);
	loadvm_end(m);
	return r == MFD_LOADVM_QUIT ? 0 : r;
}

int mfd_loadvm(mfd_migration *m, mfd_channel *ch, mfd_error **errp)
{
	mfd_stream *s = NULL;
	int r;

	if (!m || !ch)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_loadvm: NULL argument");
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "mfd_loadvm: a save or load is running");
	r = mfd_stream_new(ch, MFD_STREAM_READ, &s, errp);
	if (r < 0)
		return r;
	m->busy = true;
	r = loadvm_state(m, s, NULL, errp);
	m->busy = false;
	mfd_stream_free(s);
	return r;
}
