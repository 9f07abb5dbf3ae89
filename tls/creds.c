/* SPDX-License-Identifier: MIT */
/*
 * TLS credentials: one SSL_CTX per mfd_tls_creds, configured once and then
 * shared read-only by every channel of a migration (SSL_new() on a context
 * that is no longer modified is thread-safe).
 *
 * x509 reads the QEMU directory convention (ca-cert.pem, optional ca-crl.pem,
 * server-cert.pem + server-key.pem, client-cert.pem + client-key.pem).  PSK reads
 * "identity:hexkey" lines and runs TLS 1.3 external PSK with (EC)DHE, so a
 * leaked key does not expose past sessions (SSL_OP_ALLOW_NO_DHE_KEX is never
 * set).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "core/escape.h"
#include "core/util.h"
#include "tls/tls.h"

#if MFD_HAVE_TLS

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* TLS 1.3 suites: AES-128-GCM first (fast with AES-NI, and SHA-256 based as
 * the PSK sessions are); TLS 1.2 (x509 only): forward-secret AEAD suites. */
#define X509_CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define PSK_CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

/* A PSK file is a handful of short lines; anything bigger is a mistake. */
#define PSK_FILE_MAX (64 * 1024)

/* The reason of the oldest queued OpenSSL error, and clear the queue. */
static const char *ossl_reason(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	if (r)
		snprintf(buf, len, "%s", r);
	else if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "no detail from OpenSSL");
	ERR_clear_error();
	return buf;
}

void tls_escape(const uint8_t *p, size_t len, char *out, size_t outlen)
{
	escape_bytes(out, outlen, p, len);
}

/* ------------------------------------------------------------------------ */
/* Callbacks                                                                 */

static mfd_tls_creds *creds_of(SSL *ssl)
{
	return SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
}

/* The subject of @cert in RFC 2253 form; false when it does not fit. */
static bool subject_rfc2253(X509 *cert, char *buf, size_t len)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL;
	long n;
	bool ok = false;

	buf[0] = '\0';
	if (!bio)
		return false;
	if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
		n = BIO_get_mem_data(bio, &data);
		if (n >= 0 && (size_t)n < len) {
			memcpy(buf, data, (size_t)n);
			buf[n] = '\0';
			ok = true;
		} else if (n > 0) {
			snprintf(buf, len, "%.*s...", (int)MFD_MIN((size_t)n, len - 4), data);
		}
	}
	BIO_free(bio);
	return ok;
}

int tls_verify_cb(int preverify_ok, X509_STORE_CTX *store)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_hs_note *note = ssl ? SSL_get_app_data(ssl) : NULL;
	mfd_tls_creds *c = ssl ? creds_of(ssl) : NULL;
	X509 *cert = X509_STORE_CTX_get_current_cert(store);
	int depth = X509_STORE_CTX_get_error_depth(store);

	if (!note || !c)
		return preverify_ok;
	if (!preverify_ok) {
		if (!note->verify_err) {
			note->verify_err = X509_STORE_CTX_get_error(store);
			note->verify_depth = depth;
			if (cert)
				subject_rfc2253(cert, note->peer_dn, sizeof(note->peer_dn));
		}
		return 0;
	}
	/* authz looks at the client's own certificate once its chain checked out. */
	if (depth == 0 && c->role == MFD_TLS_SERVER && c->n_authz && cert) {
		char dn[sizeof(note->peer_dn)];
		bool fits = subject_rfc2253(cert, dn, sizeof(dn));

		for (size_t i = 0; fits && i < c->n_authz; i++)
			if (strcmp(dn, c->authz[i]) == 0)
				return 1;
		note->authz_denied = true;
		memcpy(note->peer_dn, dn, sizeof(dn));
		X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
		return 0;
	}
	return 1;
}

/* A TLS 1.3 session carrying an external PSK (the "resumption" it poses as). */
static SSL_SESSION *psk_session(SSL *ssl, const struct tls_psk *p)
{
	static const unsigned char aes128gcm_sha256[2] = { 0x13, 0x01 };
	const SSL_CIPHER *cipher = SSL_CIPHER_find(ssl, aes128gcm_sha256);
	SSL_SESSION *sess;

	if (!cipher)
		return NULL;
	sess = SSL_SESSION_new();
	if (!sess)
		return NULL;
	if (!SSL_SESSION_set1_master_key(sess, p->key, p->key_len) ||
	    !SSL_SESSION_set_cipher(sess, cipher) ||
	    !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION)) {
		SSL_SESSION_free(sess);
		return NULL;
	}
	return sess;
}

static int psk_use_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
		      SSL_SESSION **sessp)
{
	mfd_tls_creds *c = creds_of(ssl);
	struct tls_hs_note *note = SSL_get_app_data(ssl);
	const struct tls_psk *p = &c->psk[c->psk_client];
	SSL_SESSION *sess = psk_session(ssl, p);

	*sessp = NULL;
	if (!sess)
		return 0;
	/* After a HelloRetryRequest the suite is fixed; our key only fits SHA-256 ones. */
	if (md && EVP_MD_get_type(md) !=
		  EVP_MD_get_type(SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(sess)))) {
		SSL_SESSION_free(sess);
		return 1;
	}
	if (note)
		tls_escape((const uint8_t *)p->identity, p->identity_len, note->psk_identity,
			       sizeof(note->psk_identity));
	*id = (const unsigned char *)p->identity;
	*idlen = p->identity_len;
	*sessp = sess;
	return 1;
}

/* Whether a PSK server's authz list holds this identity (bytes, not a string). */
static bool authz_lists(const mfd_tls_creds *c, const unsigned char *identity, size_t len)
{
	for (size_t i = 0; i < c->n_authz; i++)
		if (strlen(c->authz[i]) == len && memcmp(c->authz[i], identity, len) == 0)
			return true;
	return false;
}

static int psk_find_cb(SSL *ssl, const unsigned char *identity, size_t len, SSL_SESSION **sessp)
{
	mfd_tls_creds *c = creds_of(ssl);
	struct tls_hs_note *note = SSL_get_app_data(ssl);

	*sessp = NULL;
	if (note)
		tls_escape(identity, len, note->psk_identity, sizeof(note->psk_identity));
	for (size_t i = 0; i < c->n_psk; i++) {
		/* Identities are names, not secrets: an ordinary byte compare. */
		if (c->psk[i].identity_len == len && memcmp(c->psk[i].identity, identity, len) == 0) {
			if (c->n_authz && !authz_lists(c, identity, len)) {
				/* Known but not allowed: no session, so the handshake fails
				 * before the key is even tried. */
				if (note)
					note->authz_denied = true;
				return 1;
			}
			*sessp = psk_session(ssl, &c->psk[i]);
			return *sessp != NULL;
		}
	}
	/* Unknown: no session, so the handshake fails for want of a certificate. */
	if (note)
		note->psk_unknown = true;
	return 1;
}

/* ------------------------------------------------------------------------ */
/* Construction                                                              */

static void creds_free(mfd_tls_creds *c)
{
	if (!c)
		return;
	SSL_CTX_free(c->ctx);
	for (size_t i = 0; i < c->n_authz; i++)
		free(c->authz[i]);
	free(c->authz);
	for (size_t i = 0; i < c->n_psk; i++) {
		free(c->psk[i].identity);
		OPENSSL_cleanse(c->psk[i].key, sizeof(c->psk[i].key));
	}
	free(c->psk);
	free(c->source);
	free(c);
}

static void apply_verify_mode(mfd_tls_creds *c)
{
	int mode = SSL_VERIFY_PEER;

	if (c->role == MFD_TLS_SERVER) {
		if (c->kind == TLS_PSK || !c->verify_peer)
			mode = SSL_VERIFY_NONE;
		else
			mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
	}
	/* A PSK client keeps SSL_VERIFY_PEER with no trust anchor: a server that
	 * ignores the PSK and shows a certificate instead is refused. */
	SSL_CTX_set_verify(c->ctx, mode, tls_verify_cb);
}

static int creds_new(enum mfd_tls_role role, enum tls_kind kind, const char *source,
		     mfd_tls_creds **out, mfd_error **errp)
{
	const char *what = kind == TLS_X509 ? "x509" : "PSK";
	mfd_tls_creds *c;
	char why[256];

	if (!out)
		return mfd_error_set(errp, MFD_EINVAL, "TLS %s credentials: out is NULL", what);
	*out = NULL;
	if (!source || !*source)
		return mfd_error_set(errp, MFD_EINVAL, "TLS %s credentials: no %s given", what,
				     kind == TLS_X509 ? "directory" : "PSK file");
	if (role != MFD_TLS_CLIENT && role != MFD_TLS_SERVER)
		return mfd_error_set(errp, MFD_EINVAL, "TLS %s credentials %s: role %d is neither "
				     "MFD_TLS_CLIENT nor MFD_TLS_SERVER", what, source, (int)role);
	c = calloc(1, sizeof(*c));
	if (!c || !(c->source = strdup(source))) {
		free(c);
		return mfd_error_set(errp, MFD_ENOMEM, "TLS credentials %s: out of memory", source);
	}
	c->role = role;
	c->kind = kind;
	c->verify_peer = true;
	atomic_init(&c->in_use, false);
	ERR_clear_error();
	c->ctx = SSL_CTX_new(TLS_method());
	if (!c->ctx) {
		creds_free(c);
		return mfd_error_set(errp, MFD_ENOMEM, "TLS credentials %s: SSL_CTX_new: %s", source,
				     ossl_reason(why, sizeof(why)));
	}
	SSL_CTX_set_app_data(c->ctx, c);
	/* PSK rides on TLS 1.3 session machinery; x509 accepts 1.2 unless told. */
	SSL_CTX_set_min_proto_version(c->ctx, kind == TLS_PSK ? TLS1_3_VERSION : TLS1_2_VERSION);
	SSL_CTX_set_options(c->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
			    SSL_OP_NO_TICKET);
	/* Every channel is a fresh, fully authenticated session: no resumption. */
	SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(c->ctx, 0);
	if (!SSL_CTX_set_ciphersuites(c->ctx, kind == TLS_PSK ? PSK_CIPHERSUITES : X509_CIPHERSUITES) ||
	    (kind == TLS_X509 && !SSL_CTX_set_cipher_list(c->ctx, TLS12_CIPHERS))) {
		creds_free(c);
		return mfd_error_set(errp, MFD_ENOTSUP, "TLS credentials %s: this OpenSSL lacks the "
				     "default cipher suites: %s", source, ossl_reason(why, sizeof(why)));
	}
	apply_verify_mode(c);
	*out = c;
	return 0;
}

/* dir + "/" + name into buf. */
static int join_path(const char *dir, const char *name, char *buf, size_t len, mfd_error **errp)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);

	if (n < 0 || (size_t)n >= len)
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials %s: path too long", dir);
	return 0;
}

static int check_readable(const char *path, mfd_error **errp)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return error_set_errno(errp, MFD_EINVAL, errno, "x509 credentials: cannot read %s",
					   path);
	close(fd);
	return 0;
}

static bool file_exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/* Load NAME-cert.pem and NAME-key.pem, checking that they belong together. */
static int load_own_cert(mfd_tls_creds *c, const char *dir, const char *prefix, mfd_error **errp)
{
	char cert[PATH_MAX], key[PATH_MAX], file[32], why[256];
	int r;

	snprintf(file, sizeof(file), "%s-cert.pem", prefix);
	if ((r = join_path(dir, file, cert, sizeof(cert), errp)) < 0)
		return r;
	snprintf(file, sizeof(file), "%s-key.pem", prefix);
	if ((r = join_path(dir, file, key, sizeof(key), errp)) < 0)
		return r;
	if ((r = check_readable(cert, errp)) < 0 || (r = check_readable(key, errp)) < 0)
		return r;
	ERR_clear_error();
	if (SSL_CTX_use_certificate_chain_file(c->ctx, cert) != 1)
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: %s holds no usable PEM "
				     "certificate: %s", cert, ossl_reason(why, sizeof(why)));
	if (SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1) {
		/* OpenSSL also lands here when the key does not fit the certificate. */
		unsigned long e = ERR_peek_error();

		if (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
		    ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH) {
			ERR_clear_error();
			return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: the key in %s does "
					     "not match the certificate in %s", key, cert);
		}
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: %s holds no usable PEM "
				     "private key: %s", key, ossl_reason(why, sizeof(why)));
	}
	if (SSL_CTX_check_private_key(c->ctx) != 1) {
		ERR_clear_error();
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: the key in %s does not "
				     "match the certificate in %s", key, cert);
	}
	return 0;
}

/*
 * ca-crl.pem, when present: every CRL in it goes into the trust store and the
 * peer's own certificate (the leaf, not the CAs above it) must be listed in
 * none.  A file that is there but holds no CRL is an error, never skipped.
 */
static int load_crl(mfd_tls_creds *c, const char *dir, mfd_error **errp)
{
	char crl[PATH_MAX], why[256];
	X509_STORE *store = SSL_CTX_get_cert_store(c->ctx);
	X509_CRL *x;
	BIO *bio;
	int r, n = 0;

	if ((r = join_path(dir, "ca-crl.pem", crl, sizeof(crl), errp)) < 0)
		return r;
	if (!file_exists(crl))
		return 0;
	if ((r = check_readable(crl, errp)) < 0)
		return r;
	ERR_clear_error();
	bio = BIO_new_file(crl, "r");
	if (!bio)
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: cannot read %s: %s", crl,
				     ossl_reason(why, sizeof(why)));
	while ((x = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL))) {
		int ok = X509_STORE_add_crl(store, x);

		X509_CRL_free(x);
		if (!ok) {
			BIO_free(bio);
			return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: %s: CRL %d cannot "
					     "be used: %s", crl, n + 1, ossl_reason(why, sizeof(why)));
		}
		n++;
	}
	BIO_free(bio);
	/* The loop ends at the first read that fails: past the last CRL ("no start
	 * line") is the normal end, anything else is a damaged entry. */
	if (n == 0)
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: %s holds no usable PEM "
				     "CRL: %s", crl, ossl_reason(why, sizeof(why)));
	if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE)
		return mfd_error_set(errp, MFD_EINVAL, "x509 credentials: %s: entry %d is not a "
				     "usable PEM CRL: %s", crl, n + 1, ossl_reason(why, sizeof(why)));
	ERR_clear_error();
	X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(c->ctx), X509_V_FLAG_CRL_CHECK);
	return 0;
}

int mfd_tls_creds_new_x509(const char *dir, enum mfd_tls_role role, mfd_tls_creds **out,
			   mfd_error **errp)
{
	char ca[PATH_MAX], why[256];
	mfd_tls_creds *c;
	int r = creds_new(role, TLS_X509, dir, &c, errp);

	if (r < 0)
		return r;
	if ((r = join_path(dir, "ca-cert.pem", ca, sizeof(ca), errp)) < 0 ||
	    (r = check_readable(ca, errp)) < 0)
		goto fail;
	ERR_clear_error();
	if (SSL_CTX_load_verify_locations(c->ctx, ca, NULL) != 1) {
		r = mfd_error_set(errp, MFD_EINVAL, "x509 credentials: %s holds no usable PEM CA "
				  "certificate: %s", ca, ossl_reason(why, sizeof(why)));
		goto fail;
	}
	if ((r = load_crl(c, dir, errp)) < 0)
		goto fail;
	if (role == MFD_TLS_SERVER) {
		STACK_OF(X509_NAME) *names;

		if ((r = load_own_cert(c, dir, "server", errp)) < 0)
			goto fail;
		/* Tell clients which CA we trust (the CertificateRequest's list). */
		names = SSL_load_client_CA_file(ca);
		if (names)
			SSL_CTX_set_client_CA_list(c->ctx, names);
		ERR_clear_error();
	} else {
		/* A client certificate is optional: servers may run verify-peer=off. */
		char cert[PATH_MAX], key[PATH_MAX];

		if ((r = join_path(dir, "client-cert.pem", cert, sizeof(cert), errp)) < 0 ||
		    (r = join_path(dir, "client-key.pem", key, sizeof(key), errp)) < 0)
			goto fail;
		if (file_exists(cert) || file_exists(key)) {
			if ((r = load_own_cert(c, dir, "client", errp)) < 0)
				goto fail;
		}
	}
	*out = c;
	return 0;
fail:
	creds_free(c);
	return r;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* One "identity:hexkey" line (no newline) into c->psk[c->n_psk]. */
static int parse_psk_line(mfd_tls_creds *c, const char *file, unsigned lineno, char *line,
			  size_t len, mfd_error **errp)
{
	char *colon = memrchr(line, ':', len);
	struct tls_psk *p = &c->psk[c->n_psk];
	size_t idlen, hexlen;
	const char *hex;

	if (!colon)
		return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: expected identity:hexkey, "
				     "found no ':'", file, lineno);
	idlen = (size_t)(colon - line);
	hex = colon + 1;
	hexlen = len - idlen - 1;
	if (idlen == 0)
		return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: empty identity", file,
				     lineno);
	if (idlen > 255)
		return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: identity of %zu bytes, "
				     "the limit is 255", file, lineno, idlen);
	if (hexlen % 2)
		return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: the key has an odd number "
				     "of hex digits (%zu)", file, lineno, hexlen);
	if (hexlen / 2 < TLS_PSK_MIN || hexlen / 2 > TLS_PSK_MAX)
		return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: the key is %zu bytes, it "
				     "must be %d to %d", file, lineno, hexlen / 2, TLS_PSK_MIN,
				     TLS_PSK_MAX);
	for (size_t i = 0; i < hexlen; i += 2) {
		int hi = hexval(hex[i]), lo = hexval(hex[i + 1]);

		if (hi < 0 || lo < 0) {
			OPENSSL_cleanse(p->key, sizeof(p->key));
			return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: the key has a "
					     "non-hex character at column %zu", file, lineno,
					     idlen + 2 + i + (hi >= 0));
		}
		p->key[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	for (size_t i = 0; i < c->n_psk; i++)
		if (c->psk[i].identity_len == idlen && memcmp(c->psk[i].identity, line, idlen) == 0)
			return mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: identity '%.*s' "
					     "is listed twice", file, lineno, (int)idlen, line);
	p->identity = strndup(line, idlen);
	if (!p->identity)
		return mfd_error_set(errp, MFD_ENOMEM, "PSK file %s: out of memory", file);
	p->identity_len = idlen;
	p->key_len = hexlen / 2;
	c->n_psk++;
	return 0;
}

static int read_psk_file(mfd_tls_creds *c, const char *file, mfd_error **errp)
{
	char *buf = NULL;
	size_t len = 0, lines = 1;
	unsigned lineno = 0;
	int fd, r = 0;

	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return error_set_errno(errp, MFD_EINVAL, errno, "PSK file %s: cannot open",
					   file);
	buf = malloc(PSK_FILE_MAX + 1);
	if (!buf) {
		close(fd);
		return mfd_error_set(errp, MFD_ENOMEM, "PSK file %s: out of memory", file);
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, PSK_FILE_MAX + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = error_set_errno(errp, MFD_EINVAL, errno, "PSK file %s: read", file);
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > PSK_FILE_MAX) {
			r = mfd_error_set(errp, MFD_EINVAL, "PSK file %s: larger than %d bytes",
					  file, PSK_FILE_MAX);
			goto out;
		}
	}
	for (size_t i = 0; i < len; i++)
		lines += buf[i] == '\n';
	c->psk = calloc(lines, sizeof(*c->psk));
	if (!c->psk) {
		r = mfd_error_set(errp, MFD_ENOMEM, "PSK file %s: out of memory", file);
		goto out;
	}
	for (size_t pos = 0; pos < len;) {
		char *line = buf + pos, *nl = memchr(line, '\n', len - pos);
		size_t llen = nl ? (size_t)(nl - line) : len - pos;

		pos += llen + (nl != NULL);
		lineno++;
		if (llen && line[llen - 1] == '\r')
			llen--;
		if (llen == 0)
			continue;
		if (memchr(line, '\0', llen)) {
			r = mfd_error_set(errp, MFD_EINVAL, "PSK file %s:%u: NUL byte in the line",
					  file, lineno);
			goto out;
		}
		if ((r = parse_psk_line(c, file, lineno, line, llen, errp)) < 0)
			goto out;
	}
	if (c->n_psk == 0)
		r = mfd_error_set(errp, MFD_EINVAL, "PSK file %s: no identity:hexkey line", file);
out:
	OPENSSL_cleanse(buf, PSK_FILE_MAX + 1);
	free(buf);
	close(fd);
	return r;
}

int mfd_tls_creds_new_psk(const char *psk_file, enum mfd_tls_role role, mfd_tls_creds **out,
			  mfd_error **errp)
{
	mfd_tls_creds *c;
	int r = creds_new(role, TLS_PSK, psk_file, &c, errp);

	if (r < 0)
		return r;
	if ((r = read_psk_file(c, psk_file, errp)) < 0) {
		creds_free(c);
		return r;
	}
	if (role == MFD_TLS_CLIENT)
		SSL_CTX_set_psk_use_session_callback(c->ctx, psk_use_cb);
	else
		SSL_CTX_set_psk_find_session_callback(c->ctx, psk_find_cb);
	*out = c;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Policy                                                                    */

static int set_bool(const char *name, const char *value, bool *out, mfd_error **errp)
{
	if (strcmp(value, "on") == 0)
		*out = true;
	else if (strcmp(value, "off") == 0)
		*out = false;
	else
		return mfd_error_set(errp, MFD_EINVAL, "TLS option %s: '%s' is neither 'on' nor "
				     "'off'", name, value);
	return 0;
}

int mfd_tls_creds_set(mfd_tls_creds *c, const char *name, const char *value, mfd_error **errp)
{
	char why[256];

	if (!c || !name || !value)
		return mfd_error_set(errp, MFD_EINVAL, "mfd_tls_creds_set: NULL argument");
	if (atomic_load(&c->in_use))
		return mfd_error_set(errp, MFD_ESTATE, "TLS credentials %s: option %s set after a "
				     "channel used them", c->source, name);
	ERR_clear_error();
	if (strcmp(name, "min-version") == 0) {
		int v;

		if (strcmp(value, "1.2") == 0)
			v = TLS1_2_VERSION;
		else if (strcmp(value, "1.3") == 0)
			v = TLS1_3_VERSION;
		else
			return mfd_error_set(errp, MFD_EINVAL, "TLS option min-version: '%s' is "
					     "neither '1.2' nor '1.3'", value);
		if (c->kind == TLS_PSK)
			return 0;	/* PSK is TLS 1.3 only whatever the floor */
		SSL_CTX_set_min_proto_version(c->ctx, v);
		return 0;
	}
	if (strcmp(name, "authz") == 0) {
		char *dn, **grown;

		if (c->role != MFD_TLS_SERVER)
			return mfd_error_set(errp, MFD_EINVAL, "TLS option authz applies to server "
					     "credentials only (it lists the client certificate DNs "
					     "or PSK identities the server accepts)");
		if (!*value)
			return mfd_error_set(errp, MFD_EINVAL, "TLS option authz: empty %s",
					     c->kind == TLS_PSK ? "PSK identity" : "DN");
		grown = realloc(c->authz, (c->n_authz + 1) * sizeof(*c->authz));
		if (!grown)
			return mfd_error_set(errp, MFD_ENOMEM, "TLS option authz: out of memory");
		c->authz = grown;
		dn = strdup(value);
		if (!dn)
			return mfd_error_set(errp, MFD_ENOMEM, "TLS option authz: out of memory");
		c->authz[c->n_authz++] = dn;
		return 0;
	}
	if (strcmp(name, "verify-peer") == 0) {
		int r;

		if (c->kind != TLS_X509 || c->role != MFD_TLS_SERVER)
			return mfd_error_set(errp, MFD_EINVAL, "TLS option verify-peer applies to "
					     "x509 server credentials only (clients always verify)");
		if ((r = set_bool(name, value, &c->verify_peer, errp)) < 0)
			return r;
		apply_verify_mode(c);
		return 0;
	}
	if (strcmp(name, "psk-identity") == 0) {
		size_t len = strlen(value);

		if (c->kind != TLS_PSK || c->role != MFD_TLS_CLIENT)
			return mfd_error_set(errp, MFD_EINVAL, "TLS option psk-identity applies to "
					     "PSK client credentials only");
		for (size_t i = 0; i < c->n_psk; i++) {
			if (c->psk[i].identity_len == len && memcmp(c->psk[i].identity, value, len) == 0) {
				c->psk_client = i;
				return 0;
			}
		}
		return mfd_error_set(errp, MFD_EINVAL, "TLS option psk-identity: '%s' is not in "
				     "the PSK file %s", value, c->source);
	}
	if (strcmp(name, "ciphersuites") == 0) {
		if (!SSL_CTX_set_ciphersuites(c->ctx, value))
			return mfd_error_set(errp, MFD_EINVAL, "TLS option ciphersuites: '%s' "
					     "names no usable TLS 1.3 suite: %s", value,
					     ossl_reason(why, sizeof(why)));
		return 0;
	}
	if (strcmp(name, "cipher-list") == 0) {
		if (!SSL_CTX_set_cipher_list(c->ctx, value))
			return mfd_error_set(errp, MFD_EINVAL, "TLS option cipher-list: '%s' "
					     "names no usable cipher: %s", value,
					     ossl_reason(why, sizeof(why)));
		return 0;
	}
	return mfd_error_set(errp, MFD_EINVAL, "TLS option '%s' is unknown (known: min-version, "
			     "authz, verify-peer, psk-identity, ciphersuites, cipher-list)", name);
}

void mfd_tls_creds_free(mfd_tls_creds *c)
{
	creds_free(c);
}

#else /* !MFD_HAVE_TLS */

struct mfd_tls_creds {
	int unused;
};

int mfd_tls_creds_new_x509(const char *dir, enum mfd_tls_role role, mfd_tls_creds **out,
			   mfd_error **errp)
{
	(void)dir;
	(void)role;
	if (out)
		*out = NULL;
	return mfd_error_set(errp, MFD_ENOTSUP, "TLS x509 credentials: libmultifd was built "
			     "without TLS (configure --disable-tls)");
}

int mfd_tls_creds_new_psk(const char *psk_file, enum mfd_tls_role role, mfd_tls_creds **out,
			  mfd_error **errp)
{
	(void)psk_file;
	(void)role;
	if (out)
		*out = NULL;
	return mfd_error_set(errp, MFD_ENOTSUP, "TLS PSK credentials: libmultifd was built "
			     "without TLS (configure --disable-tls)");
}

int mfd_tls_creds_set(mfd_tls_creds *c, const char *name, const char *value, mfd_error **errp)
{
	(void)c;
	(void)name;
	(void)value;
	return mfd_error_set(errp, MFD_ENOTSUP, "TLS options: libmultifd was built without TLS "
			     "(configure --disable-tls)");
}

void mfd_tls_creds_free(mfd_tls_creds *c)
{
	(void)c;
}

#endif /* MFD_HAVE_TLS */
