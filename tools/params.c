/* SPDX-License-Identifier: MIT */
/*
 * Migration parameters from the command line: --param NAME=VALUE and the
 * shortcuts for the common ones.  Values are checked by the library itself
 * (mfd_set_param), so the tool accepts exactly what the library accepts,
 * including codecs and parameters added after this tool was written.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const char params_help[] =
	"  --param NAME=VALUE     set a migration parameter (repeatable), e.g.\n"
	"                         --param downtime-limit=100 --param auto-converge=on;\n"
	"                         see multifd(1) for the list\n"
	"  --channels N           multifd channels, 1-255 (multifd-channels, default 2)\n"
	"  --compression CODEC    none, zlib, zstd or lz4 (multifd-compression,\n"
	"                         default none)\n";

const char tls_help[] =
	"  --tls-psk-file FILE    TLS 1.3 with a pre-shared key: lines identity:hexkey\n"
	"                         (tls-psk-file); the same file on both sides\n"
	"  --tls-creds DIR        TLS with x509 certificates: DIR holds ca-cert.pem and\n"
	"                         server-cert.pem/server-key.pem or\n"
	"                         client-cert.pem/client-key.pem (tls-creds)\n";

const char output_help[] =
	"  --postcopy[=PASSES]    postcopy-ram on; the source switches to postcopy\n"
	"                         after PASSES passes over RAM (default 1); give it\n"
	"                         to both sides\n"
	"  --json                 one JSON statistics object (query-migrate keys) per\n"
	"                         second on stdout, and a final one, instead of the\n"
	"                         progress line and the table\n"
	"  -q, --quiet            no progress output\n"
	"  -v, --verbose          show the library's log (twice: debug messages)\n"
	"  -h, --help             this text\n";

int param_add(struct param_list *p, const char *cmd, const char *name, const char *value)
{
	if (p->n == MAX_PARAMS) {
		usage_error(cmd, "more than %d parameters", MAX_PARAMS);
		return -1;
	}
	p->name[p->n] = name;
	p->value[p->n] = value;
	p->owned[p->n] = NULL;
	p->n++;
	return 0;
}

static int param_add_assignment(struct param_list *p, const char *cmd, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char *name;

	if (!eq || eq == arg) {
		usage_error(cmd, "--param '%s' is not NAME=VALUE", arg);
		return -1;
	}
	name = strndup(arg, (size_t)(eq - arg));
	if (!name || param_add(p, cmd, name, eq + 1) < 0) {
		free(name);
		return -1;
	}
	p->owned[p->n - 1] = name;
	return 0;
}

int param_option(struct param_list *p, const char *cmd, int code, const char *arg)
{
	static const struct { int code; const char *name; } shortcuts[] = {
		{ OPT_CHANNELS, "multifd-channels" },
		{ OPT_COMPRESSION, "multifd-compression" },
		{ OPT_TLS_PSK_FILE, "tls-psk-file" },
		{ OPT_TLS_CREDS, "tls-creds" },
	};

	if (code == OPT_PARAM)
		return param_add_assignment(p, cmd, arg) < 0 ? -1 : 1;
	for (size_t i = 0; i < sizeof(shortcuts) / sizeof(shortcuts[0]); i++)
		if (shortcuts[i].code == code)
			return param_add(p, cmd, shortcuts[i].name, arg) < 0 ? -1 : 1;
	return 0;
}

int params_apply(const struct param_list *p, mfd_migration *m, mfd_error **errp)
{
	for (unsigned i = 0; i < p->n; i++) {
		mfd_error *err = NULL;
		int r = mfd_set_param(m, p->name[i], p->value[i], &err);

		if (r < 0) {
			if (!err)
				mfd_error_set(&err, r, "the library refused it");
			/* Say which command-line item it was: the library names only the
			 * parameter. */
			mfd_error_prefix(err, "%s=%s", p->name[i], p->value[i]);
			if (errp && !*errp)
				*errp = err;
			else
				mfd_error_free(err);
			return r;
		}
	}
	return 0;
}

void params_free(struct param_list *p)
{
	for (unsigned i = 0; i < p->n; i++)
		free(p->owned[i]);
	p->n = 0;
}

int common_option(struct common_opts *o, const char *cmd, int c, const char *arg)
{
	switch (c) {
	case OPT_JSON:
		o->json = true;
		return 1;
	case 'q':
		o->quiet = true;
		return 1;
	case 'v':
		o->verbose++;
		return 1;
	case OPT_POSTCOPY: {
		uint64_t passes = 1;

		if (arg && parse_u64(cmd, "--postcopy", arg, 1, 1000000, &passes) < 0)
			return -1;
		o->postcopy_after = (unsigned)passes;
		return param_add(&o->params, cmd, "postcopy-ram", "on") < 0 ? -1 : 1;
	}
	default:
		return param_option(&o->params, cmd, c, arg);
	}
}
