/* SPDX-License-Identifier: MIT */
/*
 * Internal interface between the TLS credentials (tls/creds.c) and the TLS
 * channel (tls/channel.c), plus hooks the tests use.  Nothing here is
 * exported from the shared library.
 */
#ifndef MFD_TLS_TLS_H
#define MFD_TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include <multifd/multifd.h>

/*
 * Test hooks.  tls_request_key_update() asks for a TLS 1.3 KeyUpdate
 * (the peer must answer with its own); it goes out with the next record.
 * tls_channel_version() and _cipher() name what the handshake agreed on
 * ("TLSv1.3", "TLS_AES_128_GCM_SHA256"); NULL when @ch is not a TLS channel.
 */
int tls_request_key_update(mfd_channel *ch, mfd_error **errp);
const char *tls_channel_version(mfd_channel *ch);
const char *tls_channel_cipher(mfd_channel *ch);

#if MFD_HAVE_TLS

#include <stdatomic.h>

#include <openssl/ssl.h>

#define TLS_PSK_MIN 16	/* bytes of key, the least a PSK file may give */
#define TLS_PSK_MAX 64

enum tls_kind { TLS_X509 = 1, TLS_PSK = 2 };

struct tls_psk {
	char *identity;		/* NUL-terminated for messages; compared on identity_len bytes */
	size_t identity_len;
	size_t key_len;
	uint8_t key[TLS_PSK_MAX];
};

struct mfd_tls_creds {
	/* Set at creation and by mfd_tls_creds_set() before any channel uses them;
	 * read-only afterwards, so any number of channels may share them. */
	enum mfd_tls_role role;
	enum tls_kind kind;
	SSL_CTX *ctx;		/* app data: this struct */
	char *source;		/* the directory or PSK file, for messages */
	bool verify_peer;	/* server, x509 */
	char **authz;		/* server, x509: allowed client subject DNs (RFC 2253) */
	size_t n_authz;
	struct tls_psk *psk;
	size_t n_psk;
	size_t psk_client;	/* client: the entry it presents */
	/* Any thread: set once a channel used the credentials. */
	atomic_bool in_use;
};

/*
 * What the callbacks saw during one handshake, so that the channel can say
 * precisely why it failed.  Each SSL's app data points at one; written under
 * the channel's SSL lock.
 */
struct tls_hs_note {
	bool psk_unknown;	/* server: the client's identity is not in the file */
	char psk_identity[96];	/* the identity offered (server) or used (client), escaped */
	bool authz_denied;
	char peer_dn[512];	/* subject of the peer certificate refused (authz or verify) */
	int verify_err;		/* first X509_V_ERR_* of the chain check, 0 when none */
	int verify_depth;
};

/* The verify callback for SSL_CTX_set_verify(): records failures, applies authz. */
int tls_verify_cb(int preverify_ok, X509_STORE_CTX *store);

/* Escape an identity for messages: escape_bytes() (core/escape.h). */
void tls_escape(const uint8_t *p, size_t len, char *out, size_t outlen);

#endif /* MFD_HAVE_TLS */

#endif /* MFD_TLS_TLS_H */
