/* SPDX-License-Identifier: MIT */
/*
 * Why a TLS channel's SSL call failed, in words: what the failed call left
 * behind (tls_capture()), and the message that names the cause (an unknown
 * PSK identity, a refused certificate, a peer that does not speak TLS, the
 * peer's alert...) with a hint at the fix (tls_error()).
 */
#include <stdio.h>

#include "config.h"
#include "tls/internal.h"

#if MFD_HAVE_TLS

#include <openssl/err.h>

void tls_capture(SSL *ssl, int ret, struct ssl_fail *f)
{
	unsigned long e;

	f->err = SSL_get_error(ssl, ret);
	f->code = 0;
	f->text[0] = '\0';
	/* The oldest libssl error names the cause; later ones are consequences. */
	while ((e = ERR_get_error()) != 0) {
		if (!f->code || (ERR_GET_LIB(f->code) != ERR_LIB_SSL && ERR_GET_LIB(e) == ERR_LIB_SSL))
			f->code = e;
	}
	if (f->code)
		ERR_error_string_n(f->code, f->text, sizeof(f->text));
	ERR_clear_error();
}

const char *tls_peer_word(const struct tls_chan *tc)
{
	return tc->role == MFD_TLS_CLIENT ? "server" : "client";
}

static bool is_alert(unsigned long code)
{
	return ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) >= SSL_AD_REASON_OFFSET;
}

int tls_error(struct tls_chan *tc, const char *name, const char *phase,
	      const struct ssl_fail *f, mfd_error **errp)
{
	const struct tls_hs_note *n = &tc->note;
	int reason = f->code ? ERR_GET_REASON(f->code) : 0;
	const char *peer = tls_peer_word(tc);
	bool psk = tc->creds->kind == TLS_PSK;

	if (n->psk_unknown)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: unknown PSK identity '%s' (not in "
				     "the PSK file %s)", name, phase, n->psk_identity,
				     tc->creds->source);
	if (n->authz_denied && psk)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: PSK identity '%s' is not in the "
				     "authz allow-list (tls-authz)", name, phase, n->psk_identity);
	if (n->authz_denied)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: client certificate subject '%s' "
				     "is not in the authz allow-list", name, phase, n->peer_dn);
	if (psk && tc->role == MFD_TLS_CLIENT && (n->verify_err || reason == SSL_R_CERTIFICATE_VERIFY_FAILED))
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the server ignored our pre-shared key "
				     "and sent a certificate instead (is it set up for x509?)", name,
				     phase);
	if (n->verify_err || (ERR_GET_LIB(f->code) == ERR_LIB_SSL &&
			      reason == SSL_R_CERTIFICATE_VERIFY_FAILED)) {
		long v = n->verify_err ? n->verify_err : SSL_get_verify_result(tc->ssl);
		const char *hint = "";
		char extra[400] = "";

		if (v == X509_V_ERR_CERT_REVOKED)
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the peer's certificate is "
					     "revoked (ca-crl.pem): the %s certificate '%s' (depth %d) "
					     "is listed in %s/ca-crl.pem", name, phase, peer,
					     n->peer_dn[0] ? n->peer_dn : "?", n->verify_depth,
					     tc->creds->source);
		if (v == X509_V_ERR_UNABLE_TO_GET_CRL || v == X509_V_ERR_CRL_HAS_EXPIRED ||
		    v == X509_V_ERR_CRL_NOT_YET_VALID || v == X509_V_ERR_CRL_SIGNATURE_FAILURE ||
		    v == X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER) {
			snprintf(extra, sizeof(extra), "; revocation is checked against %s/ca-crl.pem, "
				 "which needs a current CRL from the CA that issued this certificate",
				 tc->creds->source);
			hint = extra;
		} else if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
			snprintf(extra, sizeof(extra), "; the certificate was not issued for '%s'",
				 tc->peer_name);
			hint = extra;
		} else if (v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
			   v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
			   v == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
			   v == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN) {
			snprintf(extra, sizeof(extra), "; it is not signed by the CA in %s/ca-cert.pem",
				 tc->creds->source);
			hint = extra;
		}
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: %s certificate verification failed: "
				     "%s (depth %d, subject '%s')%s", name, phase, peer,
				     X509_verify_cert_error_string(v), n->verify_depth,
				     n->peer_dn[0] ? n->peer_dn : "?", hint);
	}
	if (ERR_GET_LIB(f->code) == ERR_LIB_SSL) {
		switch (reason) {
		case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: peer sent no certificate (this "
					     "server requires one; verify-peer=off accepts anonymous "
					     "clients)", name, phase);
		case SSL_R_BINDER_DOES_NOT_VERIFY:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: PSK key mismatch: the client's "
					     "key for identity '%s' is not the one in %s (binder does "
					     "not verify)", name, phase, n->psk_identity,
					     tc->creds->source);
		case SSL_R_WRONG_VERSION_NUMBER:
		case SSL_R_HTTP_REQUEST:
		case SSL_R_HTTPS_PROXY_REQUEST:
		case SSL_R_UNKNOWN_PROTOCOL:
		case SSL_R_PACKET_LENGTH_TOO_LONG:
#ifdef SSL_R_RECORD_LAYER_FAILURE
		case SSL_R_RECORD_LAYER_FAILURE:
#endif
		case SSL_R_WRONG_SSL_VERSION:
			if (!SSL_is_init_finished(tc->ssl))
				return mfd_error_set(errp, MFD_EPROTO, "%s: %s: peer did not speak TLS "
						     "(plaintext?): %s", name, phase,
						     ERR_reason_error_string(f->code));
			break;
		case SSL_R_UNSUPPORTED_PROTOCOL:
		case SSL_R_NO_PROTOCOLS_AVAILABLE:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: no TLS version acceptable to "
					     "both sides (see min-version): %s", name, phase,
					     ERR_reason_error_string(f->code));
		case SSL_R_NO_SHARED_CIPHER:
			return mfd_error_set(errp, MFD_EPROTO, "%s: %s: no cipher suite in common with "
					     "the %s", name, phase, peer);
		default:
			break;
		}
	}
	if (is_alert(f->code)) {
		int alert = reason - SSL_AD_REASON_OFFSET;
		const char *hint = "";

		if (psk && (alert == SSL_AD_DECRYPT_ERROR || alert == SSL_AD_ILLEGAL_PARAMETER))
			hint = " (PSK key mismatch?)";
		else if (psk && alert == SSL_AD_HANDSHAKE_FAILURE)
			hint = " (unknown PSK identity, key mismatch or authz refusal?)";
		else if (alert == SSL_AD_UNKNOWN_CA || alert == SSL_AD_BAD_CERTIFICATE ||
			 alert == SSL_AD_CERTIFICATE_EXPIRED || alert == SSL_AD_CERTIFICATE_REVOKED ||
			 alert == SSL_AD_UNSUPPORTED_CERTIFICATE || alert == SSL_AD_CERTIFICATE_UNKNOWN)
			hint = " (it rejected our certificate)";
		else if (alert == TLS13_AD_CERTIFICATE_REQUIRED)
			hint = " (it requires a client certificate)";
		else if (alert == SSL_AD_PROTOCOL_VERSION)
			hint = " (no TLS version in common; see min-version)";
		else if (tc->role == MFD_TLS_CLIENT && alert == SSL_AD_HANDSHAKE_FAILURE)
			hint = " (it refused our certificate or its authz, or expects other "
			       "credentials)";
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the %s refused the connection: %s%s",
				     name, phase, peer, ERR_reason_error_string(f->code), hint);
	}
	if (f->err == SSL_ERROR_SSL && psk && tc->note.psk_identity[0] == '\0' &&
	    tc->role == MFD_TLS_SERVER && !SSL_is_init_finished(tc->ssl))
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s: the client offered no pre-shared key "
				     "(is it set up for x509?): %s", name, phase,
				     f->text[0] ? f->text : "handshake failure");
	if (f->code)
		return mfd_error_set(errp, MFD_EPROTO, "%s: %s failed: %s", name, phase, f->text);
	return mfd_error_set(errp, MFD_EIO, "%s: %s failed (SSL error %d, no detail from OpenSSL)",
			     name, phase, f->err);
}

#endif /* MFD_HAVE_TLS */
