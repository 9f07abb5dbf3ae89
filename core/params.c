/* SPDX-License-Identifier: MIT */
/*
 * Migration parameters by name, with QEMU's names, types, defaults and
 * bounds.  No public struct: new parameters never change the ABI.
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/migration.h"
#include "core/params.h"
#include "core/util.h"

enum ptype { P_INT, P_BOOL, P_STR, P_ENUM };

struct pdef {
	const char *name;
	enum ptype type;
	int64_t def, min, max;
	const char *sdef;
	const char *const *choices;	/* P_ENUM */
	bool live;			/* may change while migrating (read atomically) */
};

static const char *const zero_choices[] = { "none", "legacy", "multifd", NULL };
static const char *const tls_version_choices[] = { "1.2", "1.3", NULL };

static const struct pdef defs[MFD_P__COUNT] = {
	[MFD_P_MULTIFD_CHANNELS] = { .name = "multifd-channels", .type = P_INT, .def = 2, .min = 1, .max = 255 },
	[MFD_P_MULTIFD_COMPRESSION] = { .name = "multifd-compression", .type = P_STR, .def = 0, .min = 0, .max = 0, .sdef = "none" },
	[MFD_P_MULTIFD_ZLIB_LEVEL] = { .name = "multifd-zlib-level", .type = P_INT, .def = 1, .min = 0, .max = 9 },
	[MFD_P_MULTIFD_ZSTD_LEVEL] = { .name = "multifd-zstd-level", .type = P_INT, .def = 1, .min = 1, .max = 20 },
	[MFD_P_MULTIFD_LZ4_LEVEL] = { .name = "multifd-lz4-level", .type = P_INT, .def = 1, .min = 1, .max = 65537 },
	[MFD_P_MULTIFD_PACKET_SIZE] = { .name = "multifd-packet-size", .type = P_INT, .def = 128, .min = 1, .max = 4096 },
	[MFD_P_ZERO_PAGE_DETECTION] = { .name = "zero-page-detection", .type = P_ENUM, .def = 2, .min = 0, .max = 2, .sdef = NULL, .choices = zero_choices },
	[MFD_P_MAX_BANDWIDTH] = { .name = "max-bandwidth", .type = P_INT, .def = 0, .min = 0, .max = INT64_MAX, .live = true },
	[MFD_P_DOWNTIME_LIMIT] = { .name = "downtime-limit", .type = P_INT, .def = 300, .min = 1, .max = 2000000, .live = true },
	[MFD_P_AVAIL_SWITCHOVER_BANDWIDTH] = { .name = "avail-switchover-bandwidth", .type = P_INT, .def = 0, .min = 0, .max = INT64_MAX, .live = true },
	[MFD_P_AUTO_CONVERGE] = { .name = "auto-converge", .type = P_BOOL, .def = 0, .min = 0, .max = 1 },
	[MFD_P_CPU_THROTTLE_INITIAL] = { .name = "cpu-throttle-initial", .type = P_INT, .def = 20, .min = 1, .max = 99 },
	[MFD_P_CPU_THROTTLE_INCREMENT] = { .name = "cpu-throttle-increment", .type = P_INT, .def = 10, .min = 1, .max = 99 },
	[MFD_P_MAX_CPU_THROTTLE] = { .name = "max-cpu-throttle", .type = P_INT, .def = 99, .min = 1, .max = 99 },
	[MFD_P_POSTCOPY_RAM] = { .name = "postcopy-ram", .type = P_BOOL, .def = 0, .min = 0, .max = 1 },
	[MFD_P_POSTCOPY_PREEMPT] = { .name = "postcopy-preempt", .type = P_BOOL, .def = 0, .min = 0, .max = 1 },
	[MFD_P_MAX_POSTCOPY_BANDWIDTH] = { .name = "max-postcopy-bandwidth", .type = P_INT, .def = 0, .min = 0, .max = INT64_MAX, .live = true },
	[MFD_P_ZERO_COPY_SEND] = { .name = "zero-copy-send", .type = P_BOOL, .def = 0, .min = 0, .max = 1 },
	[MFD_P_TLS_CREDS] = { .name = "tls-creds", .type = P_STR, .def = 0, .min = 0, .max = 0, .sdef = "" },
	[MFD_P_TLS_PSK_FILE] = { .name = "tls-psk-file", .type = P_STR, .def = 0, .min = 0, .max = 0, .sdef = "" },
	[MFD_P_TLS_HOSTNAME] = { .name = "tls-hostname", .type = P_STR, .def = 0, .min = 0, .max = 0, .sdef = "" },
	[MFD_P_TLS_AUTHZ] = { .name = "tls-authz", .type = P_STR, .def = 0, .min = 0, .max = 0, .sdef = "" },
	[MFD_P_CHANNEL_TIMEOUT_MS] = { .name = "channel-timeout-ms", .type = P_INT, .def = 30000, .min = 100, .max = 3600000 },
	[MFD_P_RETURN_PATH] = { .name = "return-path", .type = P_BOOL, .def = 1, .min = 0, .max = 1 },
	[MFD_P_DEST_RAM_ZEROED] = { .name = "dest-ram-zeroed", .type = P_BOOL, .def = 1, .min = 0, .max = 1 },
	[MFD_P_MULTIFD_COMPRESSION_ADAPTIVE] = { .name = "multifd-compression-adaptive", .type = P_BOOL, .def = 1, .min = 0, .max = 1 },
	[MFD_P_TLS_MIN_VERSION] = { .name = "tls-min-version", .type = P_ENUM, .def = 0, .min = 0, .max = 1, .sdef = NULL, .choices = tls_version_choices },
	[MFD_P_SWITCHOVER_CONFIRM] = { .name = "switchover-confirm", .type = P_BOOL, .def = 0, .min = 0, .max = 1 },
	[MFD_P_VM_STOPPED_EXTERNALLY] = { .name = "vm-stopped-externally", .type = P_BOOL, .def = 0, .min = 0, .max = 1 },
};

int param_table_init(struct mfd_params *p)
{
	memset(p, 0, sizeof(*p));
	for (int i = 0; i < MFD_P__COUNT; i++) {
		p->i[i] = defs[i].def;
		if (defs[i].type == P_STR && !(p->s[i] = strdup(defs[i].sdef)))
			return MFD_ENOMEM;
	}
	return 0;
}

void param_table_free(struct mfd_params *p)
{
	for (int i = 0; i < MFD_P__COUNT; i++) {
		free(p->s[i]);
		p->s[i] = NULL;
	}
}

static int find(const char *name, mfd_error **errp)
{
	if (name)
		for (int i = 0; i < MFD_P__COUNT; i++)
			if (strcmp(defs[i].name, name) == 0)
				return i;
	return mfd_error_set(errp, MFD_ENOENT, "unknown parameter '%s'", name ? name : "(null)");
}

static int check_idle(mfd_migration *m, int id, const char *name, mfd_error **errp)
{
	if (id >= 0 && defs[id].live)
		return 0;
	if (m->busy)
		return mfd_error_set(errp, MFD_ESTATE,
				     "parameter '%s' cannot change while a migration runs (only "
				     "max-bandwidth, max-postcopy-bandwidth, downtime-limit and "
				     "avail-switchover-bandwidth can)", name);
	return 0;
}

static int set_int(mfd_migration *m, int id, int64_t v, mfd_error **errp)
{
	const struct pdef *d = &defs[id];

	if (v < d->min || v > d->max) {
		if (d->type == P_BOOL)
			return mfd_error_set(errp, MFD_EINVAL, "%s is a boolean, %lld is neither 0 nor 1",
					     d->name, (long long)v);
		return mfd_error_set(errp, MFD_EINVAL, "%s %lld is outside %lld..%lld", d->name,
				     (long long)v, (long long)d->min, (long long)d->max);
	}
	__atomic_store_n(&m->params.i[id], v, __ATOMIC_RELAXED);
	return 0;
}

int mfd_set_param_int(mfd_migration *m, const char *name, int64_t value, mfd_error **errp)
{
	int id;

	if (!m)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_set_param_int: migration is NULL");
	if ((id = find(name, errp)) < 0)
		return id;
	if (check_idle(m, id, name, errp) < 0)
		return MFD_ESTATE;
	if (defs[id].type == P_STR || defs[id].type == P_ENUM)
		return mfd_error_set(errp, MFD_EINVAL, "%s takes a string, not a number", name);
	return set_int(m, id, value, errp);
}

static int parse_bool(const char *v, int64_t *out)
{
	static const char *const on[] = { "on", "true", "yes", "1" };
	static const char *const off[] = { "off", "false", "no", "0" };

	for (int i = 0; i < 4; i++) {
		if (strcasecmp(v, on[i]) == 0)
			return (*out = 1), 0;
		if (strcasecmp(v, off[i]) == 0)
			return (*out = 0), 0;
	}
	return -1;
}

int mfd_set_param(mfd_migration *m, const char *name, const char *value, mfd_error **errp)
{
	const struct pdef *d;
	int64_t v;
	int id;

	if (!m || !value)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_set_param: NULL argument");
	if ((id = find(name, errp)) < 0)
		return id;
	if (check_idle(m, id, name, errp) < 0)
		return MFD_ESTATE;
	d = &defs[id];
	switch (d->type) {
	case P_STR: {
		char *copy;

		if (id == MFD_P_MULTIFD_COMPRESSION && !mfd_compress_find(value))
			return mfd_error_set(errp, MFD_ENOTSUP,
					     "multifd-compression '%s' is not a registered codec",
					     value);
		if (strlen(value) > 4095)
			return mfd_error_set(errp, MFD_EINVAL, "%s: value of %zu bytes is too long",
					     name, strlen(value));
		if (!(copy = strdup(value)))
			return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", name);
		free(m->params.s[id]);
		m->params.s[id] = copy;
		return 0;
	}
	case P_ENUM: {
		char list[64] = "";

		for (int k = 0; d->choices[k]; k++) {
			if (strcmp(d->choices[k], value) == 0)
				return set_int(m, id, k, errp);
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
				 k ? ", " : "", d->choices[k]);
		}
		return mfd_error_set(errp, MFD_EINVAL, "%s '%s' is not one of %s", name, value,
				     list);
	}
	case P_BOOL:
		if (parse_bool(value, &v) < 0)
			return mfd_error_set(errp, MFD_EINVAL,
					     "%s '%s' is not a boolean (on/off, true/false, yes/no, 1/0)",
					     name, value);
		return set_int(m, id, v, errp);
	case P_INT: {
		char *end;

		errno = 0;
		long long ll = strtoll(value, &end, 0);

		if (errno || end == value || *end)
			return mfd_error_set(errp, MFD_EINVAL, "%s '%s' is not an integer", name,
					     value);
		return set_int(m, id, ll, errp);
	}
	}
	return MFD_EINVAL;
}

int mfd_get_param(mfd_migration *m, const char *name, char *buf, size_t len, mfd_error **errp)
{
	char tmp[32];
	const char *text;
	int id;

	if (!m || !buf)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_get_param: NULL argument");
	if ((id = find(name, errp)) < 0)
		return id;
	switch (defs[id].type) {
	case P_STR:
		text = m->params.s[id];
		break;
	case P_ENUM:
		text = defs[id].choices[m->params.i[id]];
		break;
	case P_BOOL:
		text = m->params.i[id] ? "on" : "off";
		break;
	default:
		snprintf(tmp, sizeof(tmp), "%lld", (long long)param_live(&m->params, id));
		text = tmp;
	}
	if (strlen(text) >= len)
		return mfd_error_set(errp, MFD_ETOOBIG, "%s: value needs %zu bytes, buffer has %zu",
				     name, strlen(text) + 1, len);
	memcpy(buf, text, strlen(text) + 1);
	return 0;
}

int mfd_get_param_int(mfd_migration *m, const char *name, int64_t *value, mfd_error **errp)
{
	int id;

	if (!m || !value)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_get_param_int: NULL argument");
	if ((id = find(name, errp)) < 0)
		return id;
	if (defs[id].type == P_STR)
		return mfd_error_set(errp, MFD_EINVAL, "%s is a string parameter", name);
	*value = param_live(&m->params, id);
	return 0;
}

/* mfd_param_next()'s default texts, made once. */
static char default_texts[MFD_P__COUNT][24];
static pthread_once_t default_texts_once = PTHREAD_ONCE_INIT;

static void make_default_texts(void)
{
	for (int i = 0; i < MFD_P__COUNT; i++)
		if (defs[i].type == P_INT)
			snprintf(default_texts[i], sizeof(default_texts[i]), "%lld",
				 (long long)defs[i].def);
}

int mfd_param_next(int index, struct mfd_param_info *info)
{
	static const uint32_t types[] = { [P_INT] = MFD_PARAM_INT, [P_BOOL] = MFD_PARAM_BOOL,
					  [P_STR] = MFD_PARAM_STRING, [P_ENUM] = MFD_PARAM_CHOICE };
	struct mfd_param_info pi = { 0 };
	const struct pdef *d;

	if (!info || info->size < offsetof(struct mfd_param_info, choices) + sizeof(pi.choices))
		return MFD_EINVAL;
	if (index < 0 || index >= MFD_P__COUNT)
		return 0;
	pthread_once(&default_texts_once, make_default_texts);
	d = &defs[index];
	pi.size = info->size;
	pi.type = types[d->type];
	pi.live = d->live;
	pi.min = d->type == P_STR ? 0 : d->type == P_BOOL ? 0 : d->min;
	pi.max = d->type == P_STR ? 0 : d->type == P_BOOL ? 1 : d->max;
	pi.name = d->name;
	pi.default_text = d->type == P_STR ? d->sdef : d->type == P_ENUM ? d->choices[d->def]
			: d->type == P_BOOL ? (d->def ? "on" : "off") : default_texts[index];
	pi.choices = d->type == P_ENUM ? d->choices : NULL;
	memcpy(info, &pi, info->size < sizeof(pi) ? info->size : sizeof(pi));
	return index + 1;
}

int mfd_param_bounds(const char *name, int64_t *min, int64_t *max)
{
	int id = find(name, NULL);

	if (id < 0)
		return MFD_ENOENT;
	if (defs[id].type == P_STR || !min || !max)
		return MFD_EINVAL;
	*min = defs[id].min;
	*max = defs[id].max;
	return 0;
}
