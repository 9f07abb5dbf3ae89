/* SPDX-License-Identifier: MIT */
/*
 * The migration object and its registry of device sections.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/migration.h"
#include "core/util.h"

#define DEFAULT_IDENTITY "libmultifd"

int mfd_migration_new(mfd_migration **out, mfd_error **errp)
{
	mfd_migration *m;

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_migration_new: out is NULL");
	m = calloc(1, sizeof(*m));
	if (!m) {
		*out = NULL;
		return mfd_error_set(errp, MFD_ENOMEM, "out of memory for a migration object");
	}
	strcpy(m->identity, DEFAULT_IDENTITY);
	m->next_section_id = 0;
	atomic_init(&m->event_fd, -1);
	log_route_init(&m->log_route, m);
	if (param_table_init(&m->params) < 0) {
		param_table_free(&m->params);
		free(m);
		*out = NULL;
		return mfd_error_set(errp, MFD_ENOMEM, "out of memory for a migration object");
	}
	*out = m;
	return 0;
}

void mfd_migration_free(mfd_migration *m)
{
	if (!m)
		return;
	/* The engine first: its thread may still be unregistering the sections. */
	if (m->teardown)
		m->teardown(m);
	while (m->sections) {
		struct mfd_section *se = m->sections;

		m->sections = se->next;
		free(se);
	}
	param_table_free(&m->params);
	ram_blocks_free(m);
	free(m->vm_config);
	if (atomic_load(&m->event_fd) >= 0)
		close(atomic_load(&m->event_fd));
	log_route_destroy(&m->log_route);
	free(m);
}

int mfd_migration_set_log_handler(mfd_migration *m, mfd_migration_log_fn fn, void *opaque,
				  int max_level)
{
	return m ? log_route_set(&m->log_route, fn, opaque, max_level) : MFD_EINVAL;
}

int mfd_migration_event_fd(mfd_migration *m)
{
	int fd, none = -1;

	if (!m)
		return MFD_EINVAL;
	fd = atomic_load(&m->event_fd);
	if (fd >= 0)
		return fd;
	fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (fd < 0)
		return errno == ENOMEM ? MFD_ENOMEM : MFD_EIO;
	/* Two first callers at once: one descriptor wins, the other goes. */
	if (!atomic_compare_exchange_strong(&m->event_fd, &none, fd)) {
		close(fd);
		fd = none;
	}
	return fd;
}

void migration_notify(mfd_migration *m)
{
	uint64_t one = 1;
	int fd = atomic_load(&m->event_fd);

	/* EAGAIN only at a counter near 2^64: the reader is woken anyway. */
	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
	}
}

static int check_idle(mfd_migration *m, const char *what, mfd_error **errp)
{
	if (!migration_table_open(m))
		return mfd_error_set(errp, MFD_ESTATE, "%s: a save or load is running", what);
	return 0;
}

int mfd_migration_set_identity(mfd_migration *m, const char *identity, mfd_error **errp)
{
	size_t len;

	if (!m || !identity)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_migration_set_identity: NULL argument");
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE, "set identity: a save or load is running");
	if (check_idle(m, "set identity", errp) < 0)
		return MFD_ESTATE;
	len = strlen(identity);
	if (len == 0 || len > 255)
		return mfd_error_set(errp, MFD_EINVAL,
				     "identity must be 1 to 255 bytes, '%.40s%s' has %zu", identity,
				     len > 40 ? "..." : "", len);
	memcpy(m->identity, identity, len + 1);
	return 0;
}

struct mfd_section *section_find(mfd_migration *m, const char *idstr, uint32_t instance_id)
{
	for_each_section(m, se)
		if (se->instance_id == instance_id && strcmp(se->idstr, idstr) == 0)
			return se;
	return NULL;
}

/* The first layout of struct mfd_save_handlers ended with this member. */
#define SAVE_HANDLERS_FIRST_SIZE MFD_OFFSETOF_END(mfd_save_handlers, switchover_ack_needed)

static bool ops_have_content(const mfd_save_handlers *ops)
{
	return ops->save_state || ops->save_setup || ops->save_live_iterate || ops->load_state;
}

int mfd_register_live(mfd_migration *m, const char *idstr, uint32_t instance_id,
		      uint32_t version_id, const mfd_save_handlers *ops, void *opaque,
		      mfd_error **errp)
{
	struct mfd_section *se, **tail;
	mfd_save_handlers in;
	char where[MFD_IDSTR_MAX + 16];
	size_t len;
	int r;

	if (!m || !idstr || !ops)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_register_live: NULL argument");
	if (check_idle(m, "register", errp) < 0)
		return MFD_ESTATE;
	len = strlen(idstr);
	if (len == 0 || len > MFD_IDSTR_MAX)
		return mfd_error_set(errp, MFD_EINVAL,
				     "section idstr must be 1 to %d bytes, '%.40s%s' has %zu",
				     MFD_IDSTR_MAX, idstr, len > 40 ? "..." : "", len);
	snprintf(where, sizeof(where), "section '%s'", idstr);
	r = util_struct_in(&in, sizeof(in), ops, SAVE_HANDLERS_FIRST_SIZE, where,
			   "mfd_save_handlers", errp);
	if (r < 0)
		return r;
	ops = &in;
	if (!ops_have_content(ops))
		return mfd_error_set(errp, MFD_EINVAL,
				     "section '%s': the handler table has neither save_state, a "
				     "live save handler, nor load_state", idstr);
	if ((ops->save_live_iterate || ops->save_live_complete_precopy) && !ops->save_setup)
		return mfd_error_set(errp, MFD_EINVAL,
				     "section '%s': a live section (save_live_iterate or "
				     "save_live_complete_precopy) needs save_setup for its START "
				     "payload", idstr);
	if (instance_id == MFD_INSTANCE_ANY) {
		uint32_t next = 0;

		for_each_section(m, s)
			if (strcmp(s->idstr, idstr) == 0 && s->instance_id >= next)
				next = s->instance_id + 1;
		if (next == MFD_INSTANCE_ANY)
			return mfd_error_set(errp, MFD_ETOOBIG,
					     "section '%s': no instance id left", idstr);
		instance_id = next;
	} else if (section_find(m, idstr, instance_id)) {
		return mfd_error_set(errp, MFD_EEXIST,
				     "section '%s' instance %u is already registered", idstr,
				     instance_id);
	}
	if (m->next_section_id == UINT32_MAX)
		return mfd_error_set(errp, MFD_ETOOBIG, "no section id left");
	se = calloc(1, sizeof(*se));
	if (!se)
		return mfd_error_set(errp, MFD_ENOMEM, "out of memory registering '%s'", idstr);
	memcpy(se->idstr, idstr, len + 1);
	se->instance_id = instance_id;
	se->version_id = version_id;
	se->section_id = m->next_section_id++;
	se->ops = in;
	se->opaque = opaque;
	se->live = ops->save_setup || ops->save_live_iterate;
	for (tail = &m->sections; *tail; tail = &(*tail)->next)
		;
	*tail = se;
	return 0;
}

int mfd_unregister(mfd_migration *m, const char *idstr, uint32_t instance_id)
{
	if (!m || !idstr)
		return MFD_EINVAL;
	if (m->busy)
		return MFD_ESTATE;
	for (struct mfd_section **p = &m->sections; *p; p = &(*p)->next) {
		struct mfd_section *se = *p;

		if (se->instance_id == instance_id && strcmp(se->idstr, idstr) == 0) {
			*p = se->next;
			free(se);
			return 0;
		}
	}
	return MFD_ENOENT;
}

int mfd_section_instance(mfd_migration *m, const char *idstr, unsigned index,
			 uint32_t *instance_id)
{
	if (!m || !idstr || !instance_id)
		return MFD_EINVAL;
	for_each_section(m, se) {
		if (strcmp(se->idstr, idstr) != 0)
			continue;
		if (index-- == 0) {
			*instance_id = se->instance_id;
			return 0;
		}
	}
	return MFD_ENOENT;
}
