/* SPDX-License-Identifier: MIT */
/*
 * The test PKI (see certs.h), built with the OpenSSL 3 API.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "tests/lib/certs.h"

const char *certs_path(const struct test_pki *pki, const char *name, const char *file,
		       char *buf, size_t len)
{
	if (file)
		snprintf(buf, len, "%s/%s/%s", pki->root, name, file);
	else
		snprintf(buf, len, "%s/%s", pki->root, name);
	return buf;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 ? -1 : 0;
}

void certs_destroy(struct test_pki *pki)
{
	if (pki->root[0])
		nftw(pki->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	pki->root[0] = '\0';
}

#if MFD_HAVE_TLS

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DAY (24L * 60 * 60)

struct cert_spec {
	const char *cn;
	const char *san;	/* e.g. "DNS:localhost,IP:127.0.0.1", or NULL */
	bool ca;
	const char *eku;	/* "serverAuth", "clientAuth", or NULL */
	long from_days, to_days;	/* validity, relative to now */
};

static int fail(const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256] = "";

	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	fprintf(stderr, "certs: %s failed: %s\n", what, buf);
	ERR_clear_error();
	return -1;
}

static EVP_PKEY *new_key(void)
{
	return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
	int ok = ext && X509_add_ext(x, ext, -1);

	X509_EXTENSION_free(ext);
	return ok ? 0 : fail(value);
}

/* A certificate for key, signed by issuer (NULL: self-signed). */
static X509 *make_cert(const struct cert_spec *s, EVP_PKEY *key, X509 *issuer,
		       EVP_PKEY *issuer_key)
{
	static uint64_t serial = 1000;
	X509 *x = X509_new();
	X509_NAME *name;
	X509V3_CTX ctx;

	if (!x)
		return NULL;
	name = X509_get_subject_name(x);
	if (!X509_set_version(x, X509_VERSION_3) ||
	    !ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial++) ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), s->from_days * DAY) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), s->to_days * DAY) ||
	    !X509_set_pubkey(x, key) ||
	    !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
					(const unsigned char *)"libmultifd test", -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)s->cn,
					-1, -1, 0) ||
	    !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name)) {
		fail("certificate fields");
		X509_free(x);
		return NULL;
	}
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
	if (add_ext(x, &ctx, NID_basic_constraints, s->ca ? "critical,CA:TRUE" : "critical,CA:FALSE") ||
	    add_ext(x, &ctx, NID_key_usage,
		    s->ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") ||
	    add_ext(x, &ctx, NID_subject_key_identifier, "hash") ||
	    add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") ||
	    (s->eku && add_ext(x, &ctx, NID_ext_key_usage, s->eku)) ||
	    (s->san && add_ext(x, &ctx, NID_subject_alt_name, s->san))) {
		X509_free(x);
		return NULL;
	}
	if (!X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256())) {
		fail("X509_sign");
		X509_free(x);
		return NULL;
	}
	return x;
}

static int write_cert(const char *path, X509 *x)
{
	FILE *f = fopen(path, "w");
	int ok;

	if (!f) {
		fprintf(stderr, "certs: %s: %s\n", path, strerror(errno));
		return -1;
	}
	ok = PEM_write_X509(f, x);
	return fclose(f) == 0 && ok ? 0 : fail(path);
}

static int write_key(const char *path, EVP_PKEY *key)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	int ok;

	if (!f) {
		fprintf(stderr, "certs: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	return fclose(f) == 0 && ok ? 0 : fail(path);
}

/* One credentials directory: the CA to trust plus, optionally, own cert/key. */
static int write_dir(const struct test_pki *pki, const char *name, X509 *ca, const char *role,
		     X509 *cert, EVP_PKEY *key)
{
	char path[256], file[32];

	certs_path(pki, name, NULL, path, sizeof(path));
	if (mkdir(path, 0700) < 0) {
		fprintf(stderr, "certs: mkdir %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (write_cert(certs_path(pki, name, "ca-cert.pem", path, sizeof(path)), ca) < 0)
		return -1;
	if (!role)
		return 0;
	snprintf(file, sizeof(file), "%s-cert.pem", role);
	if (write_cert(certs_path(pki, name, file, path, sizeof(path)), cert) < 0)
		return -1;
	snprintf(file, sizeof(file), "%s-key.pem", role);
	return write_key(certs_path(pki, name, file, path, sizeof(path)), key);
}

/* A CRL from ca (signed with ca_key) listing the n certificates in revoked. */
static int write_crl(const struct test_pki *pki, const char *name, X509 *ca, EVP_PKEY *ca_key,
		     X509 *const *revoked, int n)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *last = X509_gmtime_adj(NULL, -DAY), *next = X509_gmtime_adj(NULL, 30 * DAY);
	char path[256];
	FILE *f = NULL;
	int r = -1;

	if (!crl || !last || !next || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) ||
	    !X509_CRL_set1_lastUpdate(crl, last) || !X509_CRL_set1_nextUpdate(crl, next)) {
		fail("CRL fields");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		X509_REVOKED *rev = X509_REVOKED_new();

		if (!rev || !X509_REVOKED_set_serialNumber(rev, X509_get_serialNumber(revoked[i])) ||
		    !X509_REVOKED_set_revocationDate(rev, last) || !X509_CRL_add0_revoked(crl, rev)) {
			X509_REVOKED_free(rev);
			fail("CRL entry");
			goto out;
		}
	}
	if (!X509_CRL_sort(crl) || !X509_CRL_sign(crl, ca_key, EVP_sha256())) {
		fail("X509_CRL_sign");
		goto out;
	}
	f = fopen(certs_path(pki, name, "ca-crl.pem", path, sizeof(path)), "w");
	if (!f) {
		fprintf(stderr, "certs: %s: %s\n", path, strerror(errno));
		goto out;
	}
	r = PEM_write_X509_CRL(f, crl) ? 0 : fail(path);
	if (fclose(f) != 0)
		r = -1;
out:
	ASN1_TIME_free(last);
	ASN1_TIME_free(next);
	X509_CRL_free(crl);
	return r;
}

static void to_hex(const unsigned char *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
}

static int write_text(const struct test_pki *pki, const char *name, const char *text)
{
	char path[256];
	int fd;
	FILE *f;

	certs_path(pki, name, NULL, path, sizeof(path));
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		fprintf(stderr, "certs: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	fputs(text, f);
	return fclose(f) == 0 ? 0 : -1;
}

static int write_psk_files(struct test_pki *pki)
{
	unsigned char k[3][32];
	char hex[3][65], text[512];

	if (RAND_bytes(&k[0][0], sizeof(k)) != 1)
		return fail("RAND_bytes");
	for (int i = 0; i < 3; i++)
		to_hex(k[i], sizeof(k[i]), hex[i]);
	memcpy(pki->psk_hex, hex[0], sizeof(pki->psk_hex));
	memcpy(pki->psk_other_hex, hex[1], sizeof(pki->psk_other_hex));
	/* The spare entry has a 16-byte key: the shortest accepted. */
	snprintf(text, sizeof(text), "qemu:%s\nspare:%.32s\n", hex[0], hex[2]);
	if (write_text(pki, "psk-main", text) < 0)
		return -1;
	snprintf(text, sizeof(text), "qemu:%s\n", hex[1]);
	if (write_text(pki, "psk-otherkey", text) < 0)
		return -1;
	snprintf(text, sizeof(text), "stranger:%s\n", hex[0]);
	return write_text(pki, "psk-stranger", text);
}

#define SERVER_SAN "DNS:localhost,IP:127.0.0.1"

int certs_create(struct test_pki *pki)
{
	static const struct cert_spec ca1_spec = { "libmultifd test CA", NULL, true, NULL, -1, 30 };
	static const struct cert_spec ca2_spec = { "another CA", NULL, true, NULL, -1, 30 };
	static const struct cert_spec server_spec = { "localhost", SERVER_SAN, false, "serverAuth", -1, 30 };
	static const struct cert_spec expired_spec = { "localhost", SERVER_SAN, false, "serverAuth", -30, -1 };
	static const struct cert_spec notyet_spec = { "localhost", SERVER_SAN, false, "serverAuth", 1, 30 };
	static const struct cert_spec wronghost_spec = { "wrong.example", "DNS:wrong.example,IP:10.0.0.1",
							 false, "serverAuth", -1, 30 };
	static const struct cert_spec client1_spec = { "client1", NULL, false, "clientAuth", -1, 30 };
	static const struct cert_spec client2_spec = { "client2", NULL, false, "clientAuth", -1, 30 };
	EVP_PKEY *k[12] = { NULL };
	X509 *c[12] = { NULL };
	int r = -1;

	memset(pki, 0, sizeof(*pki));
	snprintf(pki->root, sizeof(pki->root), "/tmp/mfd-tls-XXXXXX");
	if (!mkdtemp(pki->root)) {
		fprintf(stderr, "certs: mkdtemp: %s\n", strerror(errno));
		pki->root[0] = '\0';
		return -1;
	}
	for (int i = 0; i < 12; i++)
		if (!(k[i] = new_key())) {
			fail("EC P-256 key generation");
			goto out;
		}
	/* 0 CA1, 1 CA2, 2 server, 3 expired, 4 not yet, 5 other CA, 6 wrong host,
	 * 7 client1, 8 client2, 9 client1 by CA2, 10 the server cert for key 11 */
	if (!(c[0] = make_cert(&ca1_spec, k[0], NULL, NULL)) ||
	    !(c[1] = make_cert(&ca2_spec, k[1], NULL, NULL)) ||
	    !(c[2] = make_cert(&server_spec, k[2], c[0], k[0])) ||
	    !(c[3] = make_cert(&expired_spec, k[3], c[0], k[0])) ||
	    !(c[4] = make_cert(&notyet_spec, k[4], c[0], k[0])) ||
	    !(c[5] = make_cert(&server_spec, k[5], c[1], k[1])) ||
	    !(c[6] = make_cert(&wronghost_spec, k[6], c[0], k[0])) ||
	    !(c[7] = make_cert(&client1_spec, k[7], c[0], k[0])) ||
	    !(c[8] = make_cert(&client2_spec, k[8], c[0], k[0])) ||
	    !(c[9] = make_cert(&client1_spec, k[9], c[1], k[1])) ||
	    !(c[10] = make_cert(&server_spec, k[11], c[0], k[0])))
		goto out;
	if (write_dir(pki, "server", c[0], "server", c[2], k[2]) ||
	    write_dir(pki, "server-expired", c[0], "server", c[3], k[3]) ||
	    write_dir(pki, "server-notyet", c[0], "server", c[4], k[4]) ||
	    write_dir(pki, "server-otherca", c[0], "server", c[5], k[5]) ||
	    write_dir(pki, "server-wronghost", c[0], "server", c[6], k[6]) ||
	    write_dir(pki, "server-badkey", c[0], "server", c[10], k[10]) ||
	    write_dir(pki, "client", c[0], "client", c[7], k[7]) ||
	    write_dir(pki, "client2", c[0], "client", c[8], k[8]) ||
	    write_dir(pki, "client-anon", c[0], NULL, NULL, NULL) ||
	    write_dir(pki, "client-otherca", c[0], "client", c[9], k[9]) ||
	    write_psk_files(pki))
		goto out;
	/* Revocation: each side's CA directory may carry ca-crl.pem. */
	if (write_dir(pki, "server-crl", c[0], "server", c[2], k[2]) ||
	    write_crl(pki, "server-crl", c[0], k[0], &c[7], 1) ||
	    write_dir(pki, "client-crl", c[0], "client", c[7], k[7]) ||
	    write_crl(pki, "client-crl", c[0], k[0], &c[2], 1) ||
	    write_dir(pki, "client2-crl", c[0], "client", c[8], k[8]) ||
	    write_crl(pki, "client2-crl", c[0], k[0], &c[3], 1) ||
	    write_dir(pki, "server-badcrl", c[0], "server", c[2], k[2]) ||
	    write_text(pki, "server-badcrl/ca-crl.pem", "-----BEGIN X509 CRL-----\n"
		       "bm90IGEgQ1JM\n-----END X509 CRL-----\n"))
		goto out;
	r = 0;
out:
	for (int i = 0; i < 12; i++) {
		X509_free(c[i]);
		EVP_PKEY_free(k[i]);
	}
	if (r < 0)
		certs_destroy(pki);
	return r;
}

#else /* !MFD_HAVE_TLS */

int certs_create(struct test_pki *pki)
{
	memset(pki, 0, sizeof(*pki));
	fprintf(stderr, "certs: built without TLS\n");
	return -1;
}

#endif /* MFD_HAVE_TLS */
