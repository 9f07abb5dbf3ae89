/* SPDX-License-Identifier: MIT */
/*
 * The destination's postcopy hooks (advise, listen, run, discard, recovery) and its
 * reconnection after a pause.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

static int find_block(mfd_migration *m, const char *name)
{
	for (unsigned b = 0; b < m->nblocks; b++)
		if (strcmp(m->blocks[b].name, name) == 0)
			return (int)b;
	return -1;
}

int eng_lh_advise(void *opaque, bool has_summary, uint64_t summary, uint64_t target,
		     mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint64_t mine = 0;

	if (!e->postcopy)
		return mfd_error_set(errp, MFD_ENOTSUP, "the source advises postcopy, but "
				     "postcopy-ram is off on this side");
	for (unsigned b = 0; b < e->m->nblocks; b++)
		mine |= e->m->blocks[b].page_size;
	/* With vm_create the blocks are not there yet: eng_dest_ram_ready()
	 * checks the summary once they are. */
	if (has_summary && !e->dst.ram_ready) {
		e->dst.pc_summary = summary;
		e->dst.pc_summary_due = true;
		mine = summary;
	}
	if (has_summary && (summary != mine || target != 4096))
		return mfd_error_set(errp, MFD_EPROTO,
				     "POSTCOPY_ADVISE: the source's page sizes (mask 0x%llx, target "
				     "%llu) differ from this side's (0x%llx, 4096)",
				     (unsigned long long)summary, (unsigned long long)target,
				     (unsigned long long)mine);
	if (pc_at(e) != PC_NONE)
		return pc_move(e, PC_ADVISED, errp);	/* says why not */
	int r = pcd_new(e, errp);

	return r < 0 ? r : pc_move(e, PC_ADVISED, errp);
}

int eng_lh_listen(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int r;

	if (pc_at(e) != PC_ADVISED)
		return pc_move(e, PC_LISTENING, errp);	/* says why not */
	/* Every precopy page is in place (the prepare section synced multifd); the
	 * channels carry nothing more. */
	if (e->dst.recv && (r = multifd_recv_finish(e->dst.recv, errp)) < 0)
		return r;
	if ((r = pcd_listen(e, errp)) < 0)
		return r;
	return eng_start_pre_reader(e, errp);
}

int eng_lh_run(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	mfd_migration *m = e->m;
	int r;

	if ((r = pc_move(e, PC_RUNNING, errp)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	e->t_pc_ns = engine_now_ns();
	pthread_mutex_unlock(&e->lock);
	if (m->hooks.vm_start && (r = m->hooks.vm_start(m->hooks_opaque, errp)) < 0) {
		mfd_error_prefix(errp ? *errp : NULL, "postcopy: vm_start hook");
		return errp && *errp ? error_normalize(*errp) : MFD_EHANDLER;
	}
	eng_set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
	/* The package ends here; the loader goes on with the main stream. */
	return MFD_LOADVM_QUIT;
}

int eng_lh_discard(void *opaque, const char *block, const uint64_t *ranges, size_t n,
		      mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int b = find_block(e->m, block), r = 0;
	char esc[ESCAPE_BUF_SIZE];

	if (b < 0)
		return mfd_error_set(errp, MFD_EPROTO, "POSTCOPY_RAM_DISCARD: unknown block '%s'",
				     escape_str(esc, sizeof(esc), block));
	for (size_t i = 0; i < n && r == 0; i++)
		r = pcd_discard(e, (unsigned)b, ranges[2 * i], ranges[2 * i + 1], errp);
	return r;
}

int eng_lh_recv_bitmap(void *opaque, const char *block, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	int b = find_block(e->m, block);
	char esc[ESCAPE_BUF_SIZE];

	if (atomic_load(&e->state_pub) != MFD_STATE_POSTCOPY_RECOVER || !e->dst.pcd)
		return mfd_error_set(errp, MFD_EPROTO, "RECV_BITMAP outside postcopy recovery");
	if (b < 0)
		return mfd_error_set(errp, MFD_EPROTO, "RECV_BITMAP: unknown block '%s'",
				     escape_str(esc, sizeof(esc), block));
	return pcd_send_bitmap(e, (unsigned)b, errp);
}

int eng_lh_resume(void *opaque, mfd_error **errp)
{
	struct mfd_engine *e = opaque;
	uint8_t one[4];
	int r;

	if (atomic_load(&e->state_pub) != MFD_STATE_POSTCOPY_RECOVER)
		return mfd_error_set(errp, MFD_EPROTO, "POSTCOPY_RESUME outside postcopy recovery");
	store_be32(one, 1);
	if ((r = eng_rp_send(e, RP_RESUME_ACK, one, 4, errp)) < 0)
		return r;
	eng_set_state(e, MFD_STATE_POSTCOPY_ACTIVE);
	/* Requests the broken connection swallowed. */
	pcd_resend_requests(e);
	return 0;
}

/* Destination, recovery: the source reconnects to the new listener. */
int eng_dest_reconnect(struct mfd_engine *e, mfd_error **errp)
{
	mfd_channel *raw = NULL;
	int r;

	e->dst.strays = 0;
	if ((r = eng_gather(e, 1, 0, eng_screen_resume, &raw, errp)) < 0)
		return r;
	if (e->preempt && (r = eng_accept_preempt(e, errp)) < 0)
		return r;
	listener_stop(e->dst.listener);
	eng_relax_timeouts(e);
	mfd_channel_set_option(e->pre_ch, "timeout-ms", 0, NULL);
	if ((r = mfd_stream_new(e->main_ch, MFD_STREAM_READ, &e->in, errp)) < 0)
		return r;
	stream_set_label(e->in, "main channel");
	return eng_start_pre_reader(e, errp);
}

bool eng_dest_pausable(struct mfd_engine *e, int r)
{
	pthread_mutex_lock(&e->lock);
	bool failed = e->err != NULL, asked = e->link == LINK_PAUSE;

	pthread_mutex_unlock(&e->lock);
	return pc_running(e) && !failed && (asked || eng_network_error(e, r));
}
