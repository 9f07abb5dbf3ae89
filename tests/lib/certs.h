/* SPDX-License-Identifier: MIT */
/*
 * Test PKI generated at run time with the OpenSSL API (EC P-256 keys):
 * nothing secret is ever committed.  Each directory follows the x509
 * credentials convention (ca-cert.pem, server-cert.pem + server-key.pem or
 * client-cert.pem + client-key.pem):
 *
 *   server/            CA 1, server cert CN=localhost, SAN DNS:localhost, IP:127.0.0.1
 *   server-expired/    the same names, validity ended yesterday
 *   server-notyet/     the same names, valid from tomorrow
 *   server-otherca/    the same names, signed by CA 2 (clients trust CA 1)
 *   server-wronghost/  SAN DNS:wrong.example, IP:10.0.0.1
 *   server-badkey/     server-key.pem belongs to another certificate
 *   client/            client cert CN=client1 (DN "CN=client1,O=libmultifd test")
 *   client2/           client cert CN=client2
 *   client-anon/       ca-cert.pem only
 *   client-otherca/    client cert CN=client1 signed by CA 2
 *   server-crl/        as server/, plus ca-crl.pem (CA 1) revoking client1
 *   client-crl/        as client/, plus ca-crl.pem (CA 1) revoking the server cert
 *   client2-crl/       as client2/, plus ca-crl.pem (CA 1) revoking only the
 *                      expired server cert (so the live server is not revoked)
 *   server-badcrl/     as server/, plus a ca-crl.pem that is not a CRL
 *
 * and PSK files: psk-main ("qemu:<key>" then "spare:<key2>"), psk-otherkey
 * ("qemu:<another key>"), psk-stranger ("stranger:<key>").
 */
#ifndef MFD_TEST_CERTS_H
#define MFD_TEST_CERTS_H

#include <stddef.h>

#define CERTS_CLIENT1_DN "CN=client1,O=libmultifd test"
#define CERTS_CLIENT2_DN "CN=client2,O=libmultifd test"

struct test_pki {
	char root[64];		/* a fresh directory under /tmp */
	char psk_hex[65];	/* the key of "qemu" in psk-main, 32 bytes in hex */
	char psk_other_hex[65];	/* the key of "qemu" in psk-otherkey */
};

/* Generate everything; returns 0, or -1 after printing why to stderr. */
int certs_create(struct test_pki *pki);

/* Remove the directory tree. */
void certs_destroy(struct test_pki *pki);

/* pki->root + "/" + name (+ "/" + file when file is not NULL) into buf. */
const char *certs_path(const struct test_pki *pki, const char *name, const char *file,
		       char *buf, size_t len);

#endif /* MFD_TEST_CERTS_H */
