/* SPDX-License-Identifier: MIT */
/*
 * The "vm-config" section: the VMM's description of its VM
 * (mfd_migration_set_vm_config()), sent before everything else so the
 * destination's vm_create hook can build the VM before RAM loads.  START
 * carries be32 length + bytes; END is empty.
 */
#include <stdlib.h>

#include "engine/internal.h"
#include "core/stream.h"

static int save_setup(mfd_stream *s, void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;

	mfd_stream_put_be32(s, (uint32_t)e->m->vm_config_len);
	mfd_stream_put_buf(s, e->m->vm_config, e->m->vm_config_len);
	return mfd_stream_error(s, errp);
}

static int save_complete(mfd_stream *s, void *opaque, mfd_error **errp)
{
	(void)s;
	(void)opaque;
	(void)errp;
	return 0;
}

static int load_state(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint32_t len;
	int r;

	(void)version_id;
	if (e->dst.vm_config_seen)
		return 0;	/* END: nothing */
	if ((r = mfd_stream_get_be32(s, &len)) < 0)
		return r;
	if (len > MFD_VM_CONFIG_MAX)
		return mfd_error_set(errp, MFD_EPROTO, "vm-config: %u bytes, at most %u accepted",
				     len, MFD_VM_CONFIG_MAX);
	if (len && !(e->dst.vm_config = malloc(len)))
		return mfd_error_set(errp, MFD_ENOMEM, "vm-config: out of memory for %u bytes", len);
	e->dst.vm_config_len = len;
	if (len && (r = mfd_stream_get_buf(s, e->dst.vm_config, len)) < 0)
		return r;
	e->dst.vm_config_seen = true;
	return 0;
}

static const mfd_save_handlers vmconfig_ops = {
	.size = sizeof(mfd_save_handlers),
	.save_setup = save_setup,
	.save_live_complete_precopy = save_complete,
	.load_state = load_state,
};

int vmconfig_register(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;

	if (e->incoming ? !e->dst.lazy : m->vm_config_len == 0)
		return 0;
	if (section_find(m, "vm-config", 0))
		return mfd_error_set(errp, MFD_EEXIST,
				     "section 'vm-config' instance 0 is reserved for the VM "
				     "configuration (mfd_migration_set_vm_config())");
	int r = mfd_register_live(m, "vm-config", 0, 1, &vmconfig_ops, e, errp);

	if (r < 0)
		return r;
	e->vmconfig_se = eng_section_to_head(m);
	return 0;
}

void vmconfig_unregister(struct mfd_engine *e)
{
	if (e->vmconfig_se)
		mfd_unregister(e->m, "vm-config", 0);
	e->vmconfig_se = NULL;
	free(e->dst.vm_config);
	e->dst.vm_config = NULL;
	e->dst.vm_config_len = 0;
	e->dst.vm_config_seen = false;
}
