/* SPDX-License-Identifier: MIT */
/*
 * Statistics: the figures the owning threads publish, mfd_migration_stats() and its JSON.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

uint64_t engine_bytes_sent(struct mfd_engine *e)
{
	uint64_t bytes = e->out ? mfd_stream_bytes(e->out) : 0;

	if (e->src.send) {
		struct mfd_multifd_stats *st = malloc(sizeof(*st));

		if (st) {
			multifd_send_stats(e->src.send, st);
			for (unsigned i = 0; i < st->channels; i++)
				bytes += st->ch[i].wire_bytes;
			free(st);
		}
	}
	return bytes;
}

/* Bytes of this connection's main stream: written (source) or read (destination). */
uint64_t eng_main_stream_bytes(struct mfd_engine *e)
{
	return e->out ? mfd_stream_bytes(e->out) : e->in ? mfd_stream_bytes(e->in) : 0;
}

/* The two figures only the migration thread can compute (its streams and
 * the dirty bitmaps are its own): refreshed at each pass and each event. */
void engine_publish(struct mfd_engine *e)
{
	STAT_SET(e, main_bytes, e->main_bytes_dropped + atomic_load(&e->src.pre_bytes) +
				eng_main_stream_bytes(e));
	STAT_SET(e, remaining, e->incoming ? 0 : ramsec_remaining(e));
}

int mfd_migration_stats(mfd_migration *m, struct mfd_stats *out)
{
	struct mfd_engine *e = m ? __atomic_load_n(&m->engine, __ATOMIC_ACQUIRE) : NULL;
	struct mfd_stats st;
	struct mfd_multifd_stats *ms = calloc(1, sizeof(*ms));
	uint64_t now = engine_now_ns(), page_bytes = 0, wire = 0;

	if (!out || out->size == 0) {
		free(ms);
		return MFD_EINVAL;
	}
	memset(&st, 0, sizeof(st));
	st.size = out->size;
	if (!e || !ms) {
		free(ms);
		memcpy(out, &st, MFD_MIN((size_t)out->size, sizeof(st)));
		return e ? MFD_ENOMEM : 0;
	}
	pthread_mutex_lock(&e->lock);
	st.status = (int32_t)e->state;
	uint64_t end = e->t_end_ns ? e->t_end_ns : now;

	st.total_time = e->t_start_ns ? (end - e->t_start_ns) / 1000000 : 0;
	st.setup_time = e->t_setup_ns ? (e->t_setup_ns - e->t_start_ns) / 1000000 : 0;
	st.downtime = e->downtime_ns / 1000000;
	st.expected_downtime = STAT_GET(e, expected_downtime_ms);
	st.ram_transferred = STAT_GET(e, main_bytes);
	st.ram_remaining = STAT_GET(e, remaining);
	st.ram_total = e->ram_total;
	st.ram_duplicate = STAT_GET(e, zero_pages);
	st.ram_normal = STAT_GET(e, normal_pages);
	st.ram_normal_bytes = STAT_GET(e, normal_bytes);
	st.ram_dirty_sync_count = STAT_GET(e, dirty_syncs);
	st.ram_dirty_pages_rate = STAT_GET(e, dirty_rate_pages);
	st.iterations = STAT_GET(e, iterations);
	st.throttle_percent = e->src.throttle;
	st.channels = e->use_multifd ? e->nchan : 0;
	if (e->src.send)
		multifd_send_stats(e->src.send, ms);
	else if (e->dst.recv)
		multifd_recv_stats(e->dst.recv, ms);
	else if (e->final_ms)
		*ms = *e->final_ms;
	pthread_mutex_unlock(&e->lock);
	for (unsigned i = 0; i < ms->channels; i++) {
		st.ram_multifd_bytes += ms->ch[i].wire_bytes;
		st.ram_duplicate += ms->ch[i].zero_pages;
		st.ram_normal += ms->ch[i].normal_pages;
		st.channel_bytes[i] = ms->ch[i].wire_bytes;
		st.channel_packets[i] = ms->ch[i].packets;
		st.channel_busy_ms[i] = ms->ch[i].busy_ns / 1000000;
		page_bytes += ms->ch[i].normal_bytes;
		wire += ms->ch[i].wire_bytes;
		/* Bytes a channel copied since pinning was refused went to the
		 * zero-copy write too: not zero-copy. */
		st.zero_copy_bytes += ms->ch[i].zc_bytes - ms->ch[i].zc_copy_bytes;
		st.zero_copy_sends += ms->ch[i].zc_sends;
		st.zero_copy_copied += ms->ch[i].zc_copied;
		st.dirty_sync_missed_zero_copy += ms->ch[i].zc_missed_syncs;
		st.zero_copy_refused_channels += ms->ch[i].zc_refused;
	}
	pthread_mutex_lock(&e->lock);
	st.ram_postcopy_requests = STAT_GET(e, pc_requests);
	st.postcopy_pauses = STAT_GET(e, pauses);
	st.precopy_stalls = STAT_GET(e, precopy_stalls);
	if (e->t_pc_ns)
		/* Rounded up: a postcopy that happened never reads as 0 ms. */
		st.postcopy_time_ms =
			((e->t_pc_end_ns ? e->t_pc_end_ns : now) - e->t_pc_ns + 999999) / 1000000;
	if (e->dst.pcd) {
		pcd_stats(e, &st);
	} else {
		st.postcopy_faults = e->dst.pc_kept[0];
		st.postcopy_fault_us_median = e->dst.pc_kept[1];
		st.postcopy_fault_us_p99 = e->dst.pc_kept[2];
		st.postcopy_fault_us_max = e->dst.pc_kept[3];
		st.postcopy_blocktime_ms = e->dst.pc_kept[4];
	}
	pthread_mutex_unlock(&e->lock);
	st.multifd_syncs = ms->syncs;
	st.multifd_sync_ms_max = ms->sync_ns_max / 1000000;
	st.ram_transferred += st.ram_multifd_bytes;
	st.ram_normal_bytes += page_bytes;
	st.compression_ratio = page_bytes ? (double)wire / (double)page_bytes : 1.0;
	if (st.total_time > 0) {
		st.ram_mbps = (double)st.ram_transferred * 8 / 1e6 / ((double)st.total_time / 1000);
		st.ram_pages_per_second =
			(st.ram_duplicate + st.ram_normal) * 1000 / st.total_time;
	}
	free(ms);
	memcpy(out, &st, MFD_MIN((size_t)out->size, sizeof(st)));
	return 0;
}

char *mfd_migration_stats_json(mfd_migration *m)
{
	struct mfd_stats st = { .size = sizeof(st) };
	struct json_writer w;

	if (!m || mfd_migration_stats(m, &st) < 0)
		return NULL;
	/* The migration's table; without a migration the object's (then nothing
	 * changes it behind our back). */
	uint64_t page_size = 4096;

	if (m->engine) {
		pthread_mutex_lock(&m->engine->lock);
		if (m->engine->ram_page_size)
			page_size = m->engine->ram_page_size;
		pthread_mutex_unlock(&m->engine->lock);
	} else if (m->nblocks) {
		page_size = m->blocks[0].page_size;
	}
	json_init(&w, JSON_SPACED);
	json_begin_object(&w);
	json_key_str(&w, "status", mfd_state_name(st.status));
	json_key_u64(&w, "total-time", st.total_time);
	json_key_u64(&w, "setup-time", st.setup_time);
	json_key_u64(&w, "downtime", st.downtime);
	json_key_u64(&w, "expected-downtime", st.expected_downtime);
	json_key(&w, "cpu-throttle-percentage");
	json_i64(&w, st.throttle_percent);
	json_key_u64(&w, "precopy-stalls", st.precopy_stalls);

	json_key(&w, "ram");
	json_begin_object(&w);
	json_key_u64(&w, "transferred", st.ram_transferred);
	json_key_u64(&w, "remaining", st.ram_remaining);
	json_key_u64(&w, "total", st.ram_total);
	json_key_u64(&w, "duplicate", st.ram_duplicate);
	json_key_u64(&w, "normal", st.ram_normal);
	json_key_u64(&w, "normal-bytes", st.ram_normal_bytes);
	json_key_u64(&w, "dirty-sync-count", st.ram_dirty_sync_count);
	json_key_u64(&w, "dirty-pages-rate", st.ram_dirty_pages_rate);
	json_key_double(&w, "mbps", st.ram_mbps, 3);
	json_key_u64(&w, "pages-per-second", st.ram_pages_per_second);
	json_key_u64(&w, "multifd-bytes", st.ram_multifd_bytes);
	json_key_u64(&w, "postcopy-requests", st.ram_postcopy_requests);
	json_key_u64(&w, "page-size", page_size);
	json_key_u64(&w, "dirty-sync-missed-zero-copy", st.dirty_sync_missed_zero_copy);
	json_end_object(&w);

	json_key(&w, "multifd");
	json_begin_object(&w);
	json_key_u64(&w, "channels", st.channels);
	json_key_u64(&w, "iterations", st.iterations);
	json_key_u64(&w, "syncs", st.multifd_syncs);
	json_key_u64(&w, "sync-ms-max", st.multifd_sync_ms_max);
	json_key_double(&w, "compression-ratio", st.compression_ratio, 4);
	json_key(&w, "zero-copy");
	json_begin_object(&w);
	json_key_u64(&w, "bytes", st.zero_copy_bytes);
	json_key_u64(&w, "sends", st.zero_copy_sends);
	json_key_u64(&w, "copied", st.zero_copy_copied);
	json_key_u64(&w, "refused-channels", st.zero_copy_refused_channels);
	json_end_object(&w);
	json_key(&w, "per-channel");
	json_begin_array(&w);
	for (unsigned i = 0; i < st.channels; i++) {
		json_begin_object(&w);
		json_key_u64(&w, "id", i);
		json_key_u64(&w, "bytes", st.channel_bytes[i]);
		json_key_u64(&w, "packets", st.channel_packets[i]);
		json_key_u64(&w, "busy-ms", st.channel_busy_ms[i]);
		json_end_object(&w);
	}
	json_end_array(&w);
	json_end_object(&w);

	json_key(&w, "postcopy");
	json_begin_object(&w);
	json_key_u64(&w, "requests", st.ram_postcopy_requests);
	json_key_u64(&w, "faults", st.postcopy_faults);
	json_key_u64(&w, "fault-us-median", st.postcopy_fault_us_median);
	json_key_u64(&w, "fault-us-p99", st.postcopy_fault_us_p99);
	json_key_u64(&w, "fault-us-max", st.postcopy_fault_us_max);
	json_key_u64(&w, "blocktime-ms", st.postcopy_blocktime_ms);
	json_key_u64(&w, "pauses", st.postcopy_pauses);
	json_key_u64(&w, "time-ms", st.postcopy_time_ms);
	json_end_object(&w);
	json_end_object(&w);
	return json_finish(&w);
}

void eng_publish_table(struct mfd_engine *e)
{
	mfd_migration *m = e->m;

	pthread_mutex_lock(&e->lock);
	e->ram_total = ramsec_total(m);
	e->ram_page_size = m->nblocks ? m->blocks[0].page_size : 4096;
	pthread_mutex_unlock(&e->lock);
}
