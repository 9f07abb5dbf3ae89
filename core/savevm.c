/* SPDX-License-Identifier: MIT */
/*
 * Source side of the savevm v3 section stream: the phase helpers the
 * migration engine calls, command writers, and the one-shot mfd_savevm().
 */
#include <stdlib.h>
#include <string.h>

#include "core/channel.h"
#include "core/escape.h"
#include "core/migration.h"
#include "core/savevm.h"
#include "core/stream.h"
#include "core/util.h"

static const char *const cmd_names[MFD_CMD_MAX] = {
	[MFD_CMD_INVALID] = "INVALID",
	[MFD_CMD_OPEN_RETURN_PATH] = "OPEN_RETURN_PATH",
	[MFD_CMD_PING] = "PING",
	[MFD_CMD_POSTCOPY_ADVISE] = "POSTCOPY_ADVISE",
	[MFD_CMD_POSTCOPY_LISTEN] = "POSTCOPY_LISTEN",
	[MFD_CMD_POSTCOPY_RUN] = "POSTCOPY_RUN",
	[MFD_CMD_POSTCOPY_RAM_DISCARD] = "POSTCOPY_RAM_DISCARD",
	[MFD_CMD_PACKAGED] = "PACKAGED",
	[MFD_CMD_ENABLE_COLO] = "ENABLE_COLO",
	[MFD_CMD_POSTCOPY_RESUME] = "POSTCOPY_RESUME",
	[MFD_CMD_RECV_BITMAP] = "RECV_BITMAP",
	[MFD_CMD_SWITCHOVER_START] = "SWITCHOVER_START",
};

const char *vm_cmd_name(unsigned cmd)
{
	return cmd < MFD_CMD_MAX ? cmd_names[cmd] : "unknown";
}

const char *vm_record_name(unsigned type)
{
	switch (type) {
	case MFD_VM_EOF: return "EOF";
	case MFD_VM_SECTION_START: return "SECTION_START";
	case MFD_VM_SECTION_PART: return "SECTION_PART";
	case MFD_VM_SECTION_END: return "SECTION_END";
	case MFD_VM_SECTION_FULL: return "SECTION_FULL";
	case MFD_VM_SUBSECTION: return "SUBSECTION";
	case MFD_VM_VMDESCRIPTION: return "VMDESCRIPTION";
	case MFD_VM_CONFIGURATION: return "CONFIGURATION";
	case MFD_VM_COMMAND: return "COMMAND";
	case MFD_VM_SECTION_FOOTER: return "SECTION_FOOTER";
	default: return "unknown";
	}
}

static bool section_active(struct mfd_section *se)
{
	return !se->ops.is_active || se->ops.is_active(se->opaque);
}

/* Turn a handler's failure into one error naming the section and the phase. */
static int handler_failed(struct mfd_section *se, const char *phase, int r, mfd_error *err,
			  mfd_stream *s, mfd_error **errp)
{
	if (!err && s && mfd_stream_error(s, NULL))
		err = error_copy(stream_last_error(s));
	if (!err)
		mfd_error_set(&err, r < 0 ? r : MFD_EHANDLER, "failed with code %d (%s)", r,
			      mfd_strerror(r < 0 ? r : MFD_EHANDLER));
	mfd_error_prefix(err, "section '%s' instance %u: %s", se->idstr, se->instance_id, phase);
	r = error_normalize(err);
	error_propagate(errp, err);
	return r;
}

static int put_section_header(mfd_stream *s, enum mfd_vm_record type, struct mfd_section *se)
{
	mfd_stream_put_u8(s, (uint8_t)type);
	mfd_stream_put_be32(s, se->section_id);
	if (type == MFD_VM_SECTION_START || type == MFD_VM_SECTION_FULL) {
		mfd_stream_put_str(s, se->idstr);
		mfd_stream_put_be32(s, se->instance_id);
		mfd_stream_put_be32(s, se->version_id);
	}
	return mfd_stream_error(s, NULL);
}

static int put_section_footer(mfd_stream *s, struct mfd_section *se)
{
	mfd_stream_put_u8(s, MFD_VM_SECTION_FOOTER);
	return mfd_stream_put_be32(s, se->section_id);
}

typedef int (*section_writer)(mfd_stream *s, void *opaque, mfd_error **errp);

/* One complete section: header, the handler's payload, footer. Returns the handler's
 * non-negative result (iterate's 0/1) or a negative code. */
static int write_section(mfd_stream *s, enum mfd_vm_record type, struct mfd_section *se,
			 section_writer fn, const char *phase, mfd_error **errp)
{
	mfd_error *err = NULL;
	int r = put_section_header(s, type, se);

	if (r < 0)
		return mfd_stream_error(s, errp);
	r = fn(s, se->opaque, &err);
	if (r < 0 || mfd_stream_error(s, NULL))
		return handler_failed(se, phase, r, err, s, errp);
	mfd_error_free(err);
	if (put_section_footer(s, se) < 0)
		return mfd_stream_error(s, errp);
	return r;
}

int savevm_prepare(mfd_migration *m, mfd_error **errp)
{
	for_each_section(m, se) {
		se->save_setup_done = false;
		se->iterate_done = false;
		if (!se->ops.save_prepare || !section_active(se))
			continue;
		mfd_error *err = NULL;
		int r = se->ops.save_prepare(se->opaque, &err);

		if (r < 0)
			return handler_failed(se, "save_prepare", r, err, NULL, errp);
		mfd_error_free(err);
	}
	return 0;
}

int savevm_header(mfd_migration *m, mfd_stream *s)
{
	size_t len = strlen(m->identity);

	mfd_stream_put_be32(s, MFD_VM_FILE_MAGIC);
	mfd_stream_put_be32(s, MFD_VM_FILE_VERSION);
	mfd_stream_put_u8(s, MFD_VM_CONFIGURATION);
	mfd_stream_put_be32(s, (uint32_t)len);
	return mfd_stream_put_buf(s, m->identity, len);
}

int savevm_setup(mfd_migration *m, mfd_stream *s, mfd_error **errp)
{
	for_each_section(m, se) {
		if (!se->live || !se->ops.save_setup || !section_active(se))
			continue;
		int r = write_section(s, MFD_VM_SECTION_START, se, se->ops.save_setup,
				      "save_setup", errp);

		/* The handler may have acquired resources before failing. */
		se->save_setup_done = true;
		if (r < 0)
			return r;
	}
	return mfd_stream_error(s, errp);
}

int savevm_iterate(mfd_migration *m, mfd_stream *s, bool postcopy, mfd_error **errp)
{
	int all_done = 1;

	for_each_section(m, se) {
		if (!se->live || !se->ops.save_live_iterate || !section_active(se))
			continue;
		if (postcopy && !(se->ops.has_postcopy && se->ops.has_postcopy(se->opaque)))
			continue;
		if (se->ops.is_active_iterate && !se->ops.is_active_iterate(se->opaque))
			continue;
		int r = write_section(s, MFD_VM_SECTION_PART, se, se->ops.save_live_iterate,
				      "save_live_iterate", errp);

		if (r < 0)
			return r;
		se->iterate_done = r > 0;
		if (r == 0)
			all_done = 0;
	}
	int r = mfd_stream_error(s, errp);

	return r < 0 ? r : all_done;
}

static bool section_postcopiable(struct mfd_section *se)
{
	return se->ops.has_postcopy && se->ops.has_postcopy(se->opaque);
}

int savevm_postcopy_prepare(mfd_migration *m, mfd_stream *s, bool *can_switchover,
				mfd_error **errp)
{
	*can_switchover = true;
	for_each_section(m, se) {
		if (!se->ops.save_postcopy_prepare || !section_active(se))
			continue;
		mfd_error *err = NULL;
		bool ok = true;
		int r = put_section_header(s, MFD_VM_SECTION_PART, se);

		if (r < 0)
			return mfd_stream_error(s, errp);
		r = se->ops.save_postcopy_prepare(s, se->opaque, &ok, &err);
		if (r < 0 || mfd_stream_error(s, NULL))
			return handler_failed(se, "save_postcopy_prepare", r, err, s, errp);
		mfd_error_free(err);
		if (put_section_footer(s, se) < 0)
			return mfd_stream_error(s, errp);
		if (!ok)
			*can_switchover = false;
	}
	return mfd_stream_error(s, errp);
}

int savevm_save_nonlive(mfd_migration *m, mfd_stream *s, mfd_error **errp)
{
	for_each_section(m, se) {
		if (se->live || !se->ops.save_state || !section_active(se))
			continue;
		int r = write_section(s, MFD_VM_SECTION_FULL, se, se->ops.save_state, "save_state",
				      errp);

		if (r < 0)
			return r;
	}
	return mfd_stream_error(s, errp);
}

int savevm_complete_precopy(mfd_migration *m, mfd_stream *s, bool in_postcopy,
				mfd_error **errp)
{
	for_each_section(m, se) {
		if (!se->live || !se->ops.save_live_complete_precopy || !section_active(se))
			continue;
		if (in_postcopy && section_postcopiable(se))
			continue;
		int r = write_section(s, MFD_VM_SECTION_END, se,
				      se->ops.save_live_complete_precopy,
				      "save_live_complete_precopy", errp);

		if (r < 0)
			return r;
	}
	if (in_postcopy)
		return mfd_stream_error(s, errp);
	return savevm_save_nonlive(m, s, errp);
}

int savevm_complete_postcopy(mfd_migration *m, mfd_stream *s, mfd_error **errp)
{
	for_each_section(m, se) {
		if (!se->live || !se->ops.save_live_complete_postcopy || !section_active(se))
			continue;
		if (!section_postcopiable(se))
			continue;
		int r = write_section(s, MFD_VM_SECTION_END, se,
				      se->ops.save_live_complete_postcopy,
				      "save_live_complete_postcopy", errp);

		if (r < 0)
			return r;
	}
	return mfd_stream_error(s, errp);
}

int savevm_eof(mfd_stream *s)
{
	return mfd_stream_put_u8(s, MFD_VM_EOF);
}

static void pending_sum(mfd_migration *m, bool exact, uint64_t *must, uint64_t *can)
{
	*must = *can = 0;
	for_each_section(m, se) {
		void (*fn)(void *, uint64_t *, uint64_t *) =
			exact ? se->ops.state_pending_exact : se->ops.state_pending_estimate;
		uint64_t mp = 0, cp = 0;

		if (!fn || !se->live || !section_active(se))
			continue;
		fn(se->opaque, &mp, &cp);
		/* Saturate: pending figures drive decisions, never allocations. */
		*must = mp > UINT64_MAX - *must ? UINT64_MAX : *must + mp;
		*can = cp > UINT64_MAX - *can ? UINT64_MAX : *can + cp;
	}
}

void savevm_pending_estimate(mfd_migration *m, uint64_t *must, uint64_t *can)
{
	pending_sum(m, false, must, can);
}

void savevm_pending_exact(mfd_migration *m, uint64_t *must, uint64_t *can)
{
	pending_sum(m, true, must, can);
}

bool savevm_switchover_ack_needed(mfd_migration *m)
{
	for_each_section(m, se)
		if (se->ops.switchover_ack_needed && section_active(se) &&
		    se->ops.switchover_ack_needed(se->opaque))
			return true;
	return false;
}

int savevm_resume_prepare(mfd_migration *m, mfd_error **errp)
{
	for_each_section(m, se) {
		if (!se->ops.resume_prepare || !section_active(se))
			continue;
		mfd_error *err = NULL;
		int r = se->ops.resume_prepare(se->opaque, &err);

		if (r < 0)
			return handler_failed(se, "resume_prepare", r, err, NULL, errp);
		mfd_error_free(err);
	}
	return 0;
}

void savevm_cleanup(mfd_migration *m)
{
	for_each_section(m, se) {
		if (se->save_setup_done && se->ops.save_cleanup)
			se->ops.save_cleanup(se->opaque);
		se->save_setup_done = false;
	}
}

/* ---- commands ---------------------------------------------------------- */

int savevm_send_command(mfd_stream *s, enum mfd_vm_cmd cmd, uint16_t len,
			    const void *payload)
{
	mfd_stream_put_u8(s, MFD_VM_COMMAND);
	mfd_stream_put_be16(s, (uint16_t)cmd);
	mfd_stream_put_be16(s, len);
	return mfd_stream_put_buf(s, payload, len);
}

int savevm_send_open_return_path(mfd_stream *s)
{
	return savevm_send_command(s, MFD_CMD_OPEN_RETURN_PATH, 0, NULL);
}

int savevm_send_ping(mfd_stream *s, uint32_t value)
{
	uint8_t b[4];

	store_be32(b, value);
	return savevm_send_command(s, MFD_CMD_PING, sizeof(b), b);
}

int savevm_send_postcopy_advise(mfd_stream *s, uint64_t summary, uint64_t target_page)
{
	uint8_t b[16];

	store_be64(b, summary);
	store_be64(b + 8, target_page);
	return savevm_send_command(s, MFD_CMD_POSTCOPY_ADVISE, sizeof(b), b);
}

int savevm_send_postcopy_listen(mfd_stream *s)
{
	return savevm_send_command(s, MFD_CMD_POSTCOPY_LISTEN, 0, NULL);
}

int savevm_send_postcopy_run(mfd_stream *s)
{
	return savevm_send_command(s, MFD_CMD_POSTCOPY_RUN, 0, NULL);
}

size_t savevm_discard_ranges_max(size_t name_len)
{
	/* version, name length, name, terminator, then 16 bytes per range */
	return (UINT16_MAX - 3 - name_len) / 16;
}

int savevm_send_postcopy_ram_discard(mfd_stream *s, const char *block,
					 const uint64_t *ranges, size_t n)
{
	size_t name_len = strlen(block);
	uint8_t *buf, *p;
	size_t len;
	int r;

	if (name_len == 0 || name_len > 255)
		return mfd_stream_set_error(s, MFD_EINVAL,
					    "discard: block name must be 1 to 255 bytes");
	if (n == 0 || n > savevm_discard_ranges_max(name_len))
		return mfd_stream_set_error(s, MFD_ETOOBIG,
					    "discard: %zu ranges for block '%s'; one command "
					    "carries 1 to %zu", n, block,
					    savevm_discard_ranges_max(name_len));
	len = 3 + name_len + 16 * n;
	buf = malloc(len);
	if (!buf)
		return mfd_stream_set_error(s, MFD_ENOMEM, "discard: out of memory");
	p = buf;
	*p++ = MFD_DISCARD_VERSION;
	*p++ = (uint8_t)name_len;
	memcpy(p, block, name_len);
	p += name_len;
	*p++ = 0;
	for (size_t i = 0; i < n; i++, p += 16) {
		store_be64(p, ranges[2 * i]);
		store_be64(p + 8, ranges[2 * i + 1]);
	}
	r = savevm_send_command(s, MFD_CMD_POSTCOPY_RAM_DISCARD, (uint16_t)len, buf);
	free(buf);
	return r;
}

int savevm_send_packaged(mfd_stream *s, const void *blob, uint32_t len)
{
	uint8_t b[4];

	if (len > MFD_PACKAGED_MAX_DEFAULT)
		return mfd_stream_set_error(s, MFD_ETOOBIG,
					    "package of %u bytes; destinations accept at most %u",
					    len, MFD_PACKAGED_MAX_DEFAULT);
	store_be32(b, len);
	savevm_send_command(s, MFD_CMD_PACKAGED, sizeof(b), b);
	return mfd_stream_put_buf(s, blob, len);
}

int savevm_send_enable_colo(mfd_stream *s)
{
	return savevm_send_command(s, MFD_CMD_ENABLE_COLO, 0, NULL);
}

int savevm_send_postcopy_resume(mfd_stream *s)
{
	return savevm_send_command(s, MFD_CMD_POSTCOPY_RESUME, 0, NULL);
}

int savevm_send_recv_bitmap(mfd_stream *s, const char *block)
{
	uint8_t b[256];
	size_t len = strlen(block);

	if (len == 0 || len > 255)
		return mfd_stream_set_error(s, MFD_EINVAL,
					    "recv-bitmap: block name must be 1 to 255 bytes");
	b[0] = (uint8_t)len;
	memcpy(b + 1, block, len);
	return savevm_send_command(s, MFD_CMD_RECV_BITMAP, (uint16_t)(len + 1), b);
}

int savevm_send_switchover_start(mfd_stream *s)
{
	return savevm_send_command(s, MFD_CMD_SWITCHOVER_START, 0, NULL);
}

/* ---- subsections --------------------------------------------------------- */

int mfd_subsection_begin(mfd_stream *s, const char *name, uint32_t version_id)
{
	if (!name || !*name || strlen(name) > 255)
		return mfd_stream_set_error(s, MFD_EINVAL,
					    "subsection name must be 1 to 255 bytes");
	mfd_stream_put_u8(s, MFD_VM_SUBSECTION);
	mfd_stream_put_str(s, name);
	return mfd_stream_put_be32(s, version_id);
}

int mfd_subsection_next(mfd_stream *s, const char *parent, char name[256], uint32_t *version_id)
{
	uint8_t marker;
	size_t len, plen = parent ? strlen(parent) : 0;
	char esc[ESCAPE_BUF_SIZE];
	int r = mfd_stream_peek_u8(s, &marker);

	if (r < 0)
		return r;
	if (marker != MFD_VM_SUBSECTION)
		return 0;
	mfd_stream_get_u8(s, &marker);
	r = mfd_stream_get_str(s, name, &len);
	if (r == 0)
		r = mfd_stream_get_be32(s, version_id);
	if (r < 0)
		return r;
	if (strlen(name) != len)
		return mfd_stream_set_error(s, MFD_EPROTO, "subsection name contains a NUL byte: "
					    "'%s'", escape_bytes(esc, sizeof(esc), name, len));
	if (!parent || len <= plen + 1 || memcmp(name, parent, plen) != 0 || name[plen] != '/')
		return mfd_stream_set_error(s, MFD_EPROTO,
					    "subsection '%s' does not belong to '%s' (expected "
					    "'%s/<name>')", escape_bytes(esc, sizeof(esc), name, len),
					    parent ? parent : "", parent ? parent : "");
	return 1;
}

/* ---- one-shot save --------------------------------------------------------- */

int mfd_savevm(mfd_migration *m, mfd_channel *ch, mfd_error **errp)
{
	mfd_stream *s = NULL;
	int r;

	if (!m || !ch)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_savevm: NULL argument");
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "mfd_savevm: a save or load is running");
	r = mfd_stream_new(ch, MFD_STREAM_WRITE, &s, errp);
	if (r < 0)
		return r;
	m->busy = true;
	r = savevm_prepare(m, errp);
	if (r == 0)
		r = savevm_header(m, s) < 0 ? mfd_stream_error(s, errp) : 0;
	if (r == 0)
		r = savevm_setup(m, s, errp);
	while (r == 0) {
		r = savevm_iterate(m, s, false, errp);
		if (r > 0) {
			r = 0;
			break;
		}
	}
	if (r == 0)
		r = savevm_complete_precopy(m, s, false, errp);
	if (r == 0)
		savevm_eof(s);
	if (r == 0)
		r = mfd_stream_flush(s) < 0 ? mfd_stream_error(s, errp) : 0;
	savevm_cleanup(m);
	m->busy = false;
	mfd_stream_free(s);
	return r;
}
