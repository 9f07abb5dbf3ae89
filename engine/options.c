/* SPDX-License-Identifier: MIT */
/*
 * A migration's options turned into the multifd configuration and TLS credentials,
 * with their cross-checks.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

static int level_param(mfd_migration *m, const char *codec)
{
	if (strcmp(codec, "zlib") == 0)
		return (int)m->params.i[MFD_P_MULTIFD_ZLIB_LEVEL];
	if (strcmp(codec, "zstd") == 0)
		return (int)m->params.i[MFD_P_MULTIFD_ZSTD_LEVEL];
	if (strcmp(codec, "lz4") == 0)
		return (int)m->params.i[MFD_P_MULTIFD_LZ4_LEVEL];
	return mfd_compress_find(codec)->level_default;
}

/* zero-copy-send hands guest pages to the kernel's TCP zero-copy send
 * (MSG_ZEROCOPY), QEMU's conditions: multifd, no codec, no TLS. */
int eng_check_zero_copy(mfd_migration *m, bool stream, bool unix_uri, mfd_error **errp)
{
	const char *codec = m->params.s[MFD_P_MULTIFD_COMPRESSION];

	if (stream)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send works on multifd channels: "
				     "it needs a tcp: URI, not fd: or file:");
	if (unix_uri)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send needs a tcp: URI: the "
				     "kernel's zero-copy send (MSG_ZEROCOPY) is for TCP, not unix "
				     "sockets");
	if (strcmp(codec, "none") != 0)
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send sends guest pages as they "
				     "are: it needs multifd-compression none, not %s", codec);
	if (*m->params.s[MFD_P_TLS_CREDS] || *m->params.s[MFD_P_TLS_PSK_FILE])
		return mfd_error_set(errp, MFD_EINVAL, "zero-copy-send cannot be used with TLS "
				     "(tls-creds or tls-psk-file): encryption writes every page "
				     "into a new buffer anyway");
	return 0;
}

int eng_make_config(struct mfd_engine *e, mfd_error **errp)
{
	mfd_migration *m = e->m;
	const char *codec = m->params.s[MFD_P_MULTIFD_COMPRESSION];
	int r = multifd_config_init(&e->mcfg, errp);

	if (r < 0)
		return r;
	e->mcfg.channels = (unsigned)m->params.i[MFD_P_MULTIFD_CHANNELS];
	e->mcfg.packet_bytes = (uint32_t)(m->params.i[MFD_P_MULTIFD_PACKET_SIZE] * 4096);
	e->mcfg.zero_detect = (enum mfd_zero_detect)m->params.i[MFD_P_ZERO_PAGE_DETECTION];
	e->mcfg.adaptive_codec = m->params.i[MFD_P_MULTIFD_COMPRESSION_ADAPTIVE] != 0;
	e->mcfg.zero_copy = !e->incoming && m->params.i[MFD_P_ZERO_COPY_SEND] != 0;
	e->mcfg.timeout_ms = m->params.i[MFD_P_CHANNEL_TIMEOUT_MS];
	if (strcmp(codec, "none") != 0) {
		e->mcfg.codec = mfd_compress_find(codec);
		if (!e->mcfg.codec)
			return mfd_error_set(errp, MFD_ENOTSUP, "multifd-compression '%s' is unknown",
					     codec);
		e->mcfg.level = level_param(m, codec);
	}
	return 0;
}

int eng_make_creds(struct mfd_engine *e, enum mfd_tls_role role, mfd_error **errp)
{
	mfd_migration *m = e->m;
	const char *x509 = m->params.s[MFD_P_TLS_CREDS], *psk = m->params.s[MFD_P_TLS_PSK_FILE];
	const char *authz = m->params.s[MFD_P_TLS_AUTHZ];
	const char *host = m->params.s[MFD_P_TLS_HOSTNAME];
	int64_t minv = m->params.i[MFD_P_TLS_MIN_VERSION];
	int r;

	/* A TLS option that would have no effect is refused, never ignored. */
	if (!*x509 && !*psk) {
		const char *knob = *authz ? "tls-authz" : *host ? "tls-hostname"
				 : minv ? "tls-min-version" : NULL;

		if (knob)
			return mfd_error_set(errp, MFD_EINVAL, "%s needs TLS (tls-creds or "
					     "tls-psk-file): without it the migration is not "
					     "encrypted and %s would do nothing", knob, knob);
		return 0;
	}
	if (*x509 && *psk)
		return mfd_error_set(errp, MFD_EINVAL, "tls-creds and tls-psk-file are both set; "
				     "choose x509 or PSK");
	if (*authz && role != MFD_TLS_SERVER)
		return mfd_error_set(errp, MFD_EINVAL, "tls-authz applies to the destination (it "
				     "lists the client certificate DNs or PSK identities it "
				     "accepts); unset it on the source");
	if (*host && *psk)
		return mfd_error_set(errp, MFD_EINVAL, "tls-hostname applies to x509 (tls-creds): "
				     "a PSK connection verifies no server name; unset it");
	if (*host && role == MFD_TLS_SERVER)
		return mfd_error_set(errp, MFD_EINVAL, "tls-hostname applies to the source (the "
				     "name it checks the server certificate against); unset it on "
				     "the destination");
	r = *x509 ? mfd_tls_creds_new_x509(x509, role, &e->creds, errp)
		  : mfd_tls_creds_new_psk(psk, role, &e->creds, errp);
	if (r == 0 && (r = mfd_tls_creds_set(e->creds, "min-version", minv ? "1.3" : "1.2",
					      errp)) < 0)
		mfd_error_prefix(errp ? *errp : NULL, "tls-min-version");
	if (r < 0 || !*authz)
		return r;
	/* One DN (x509) or PSK identity per '|'-separated entry. */
	char *list = strdup(authz), *save = NULL;

	if (!list)
		return mfd_error_set(errp, MFD_ENOMEM, "tls-authz: out of memory");
	unsigned n = 0;

	for (char *dn = strtok_r(list, "|", &save); dn && r == 0; dn = strtok_r(NULL, "|", &save), n++)
		r = mfd_tls_creds_set(e->creds, "authz", dn, errp);
	free(list);
	if (r == 0 && n == 0)
		r = mfd_error_set(errp, MFD_EINVAL, "tls-authz lists no DN or PSK identity (only "
				  "'|' separators)");
	return r;
}
