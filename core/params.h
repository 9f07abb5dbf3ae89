/* SPDX-License-Identifier: MIT */
/*
 * Migration parameters: the table behind mfd_set_param() and friends.
 */
#ifndef MFD_CORE_PARAMS_H
#define MFD_CORE_PARAMS_H

#include <stdint.h>

#include <multifd/multifd.h>

enum mfd_param_id {
	MFD_P_MULTIFD_CHANNELS,
	MFD_P_MULTIFD_COMPRESSION,
	MFD_P_MULTIFD_ZLIB_LEVEL,
	MFD_P_MULTIFD_ZSTD_LEVEL,
	MFD_P_MULTIFD_LZ4_LEVEL,
	MFD_P_MULTIFD_PACKET_SIZE,
	MFD_P_ZERO_PAGE_DETECTION,
	MFD_P_MAX_BANDWIDTH,
	MFD_P_DOWNTIME_LIMIT,
	MFD_P_AVAIL_SWITCHOVER_BANDWIDTH,
	MFD_P_AUTO_CONVERGE,
	MFD_P_CPU_THROTTLE_INITIAL,
	MFD_P_CPU_THROTTLE_INCREMENT,
	MFD_P_MAX_CPU_THROTTLE,
	MFD_P_POSTCOPY_RAM,
	MFD_P_POSTCOPY_PREEMPT,
	MFD_P_MAX_POSTCOPY_BANDWIDTH,
	MFD_P_ZERO_COPY_SEND,
	MFD_P_TLS_CREDS,
	MFD_P_TLS_PSK_FILE,
	MFD_P_TLS_HOSTNAME,
	MFD_P_TLS_AUTHZ,
	MFD_P_CHANNEL_TIMEOUT_MS,
	MFD_P_RETURN_PATH,
	MFD_P_DEST_RAM_ZEROED,
	MFD_P_MULTIFD_COMPRESSION_ADAPTIVE,
	MFD_P_TLS_MIN_VERSION,
	MFD_P_SWITCHOVER_CONFIRM,
	MFD_P_VM_STOPPED_EXTERNALLY,
	MFD_P__COUNT
};

struct mfd_params {
	int64_t i[MFD_P__COUNT];
	char *s[MFD_P__COUNT];
};

/* A parameter that may change while a migration runs (max-bandwidth,
 * downtime-limit, ...): read it with this from any thread. */
static inline int64_t param_live(const struct mfd_params *p, enum mfd_param_id id)
{
	return __atomic_load_n(&p->i[id], __ATOMIC_RELAXED);
}

int param_table_init(struct mfd_params *p);
void param_table_free(struct mfd_params *p);

#endif /* MFD_CORE_PARAMS_H */
