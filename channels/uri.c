/* SPDX-License-Identifier: MIT */
/*
 * Transport URI parser.  Strict on purpose: a typo must fail here with the
 * offending part named, never turn into a different host, port or file.
 *
 * In file: URIs ',' always starts an option, so a path cannot contain one;
 * such a file is opened by the caller and passed as fd:N.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "channels/uri.h"
#include "core/util.h"

#define SCHEMES "tcp:, unix:, fd: or file:"
#define HOST_NAME_LEN_MAX 253	/* the longest DNS name */

static int bad(mfd_error **errp, const char *uri, const char *fmt, ...) MFD_PRINTF(3, 4);

static int bad(mfd_error **errp, const char *uri, const char *fmt, ...)
{
	char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	mfd_error_set(errp, MFD_EINVAL, "%s: %s", uri, msg ? msg : "malformed URI");
	free(msg);
	return MFD_EINVAL;
}

enum dec_result { DEC_OK, DEC_NOT_A_NUMBER, DEC_TOO_BIG };

/* All of s[0..len) as a decimal number <= max; no sign, no blanks. */
static enum dec_result parse_decimal(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	bool too_big = false;

	if (len == 0)
		return DEC_NOT_A_NUMBER;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return DEC_NOT_A_NUMBER;
		d = (unsigned)(s[i] - '0');
		if (v > (max - d) / 10)
			too_big = true;
		else
			v = v * 10 + d;
	}
	if (too_big)
		return DEC_TOO_BIG;
	*out = v;
	return DEC_OK;
}

static bool host_char_ok(char c)
{
	return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_';
}

static int parse_tcp(const char *uri, const char *rest, struct transport_uri *u,
		     mfd_error **errp)
{
	const char *host = rest, *host_end, *port;
	uint64_t v;

	if (*rest == '[') {
		host = rest + 1;
		host_end = strchr(host, ']');
		if (!host_end)
			return bad(errp, uri, "missing ']'");
		if (host_end == host)
			return bad(errp, uri, "empty IPv6 address between '[' and ']'");
		if (host_end[1] != ':')
			return host_end[1] ? bad(errp, uri, "expected ':' after ']', found '%c'",
						 host_end[1])
					   : bad(errp, uri, "missing ':PORT' after ']'");
		port = host_end + 2;
	} else {
		const char *colon = strchr(rest, ':');

		if (!colon)
			return bad(errp, uri, "missing ':PORT'");
		if (strchr(colon + 1, ':'))
			return bad(errp, uri, "too many ':' (an IPv6 address goes in brackets, "
				   "e.g. tcp:[::1]:PORT)");
		host_end = colon;
		port = colon + 1;
		if (host_end == host)
			return bad(errp, uri, "missing host (use 0.0.0.0 or [::] to listen on "
				   "every address)");
		for (const char *c = host; c < host_end; c++)
			if (!host_char_ok(*c))
				return bad(errp, uri, "host '%.*s' contains '%c'",
					   (int)(host_end - host), host, *c);
		if (host_end - host > HOST_NAME_LEN_MAX)
			return bad(errp, uri, "host is %d bytes long, the limit is %d",
				   (int)(host_end - host), HOST_NAME_LEN_MAX);
	}
	u->host = strndup(host, (size_t)(host_end - host));
	if (!u->host)
		return mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
	if (*rest == '[') {
		struct in6_addr a;
		char *zone = strchr(u->host, '%');

		/* A zone ("%eth0") is left to getaddrinfo(); the address part must parse. */
		if (zone)
			*zone = '\0';
		int ok = inet_pton(AF_INET6, u->host, &a) == 1;

		if (zone)
			*zone = '%';
		if (!ok)
			return bad(errp, uri, "'%s' is not an IPv6 address", u->host);
	}
	if (!*port)
		return bad(errp, uri, "missing port after ':'");
	switch (parse_decimal(port, strlen(port), 65535, &v)) {
	case DEC_NOT_A_NUMBER:
		return bad(errp, uri, "port '%s' is not a decimal number", port);
	case DEC_TOO_BIG:
		return bad(errp, uri, "port %s is out of range 0..65535", port);
	case DEC_OK:
		break;
	}
	snprintf(u->port, sizeof(u->port), "%u", (unsigned)v);
	return 0;
}

static int parse_unix(const char *uri, const char *rest, struct transport_uri *u,
		      mfd_error **errp)
{
	size_t len = strlen(rest), max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;

	if (len == 0)
		return bad(errp, uri, "missing path");
	if (len > max)
		return bad(errp, uri, "path is %zu bytes long, a unix socket path holds at most %zu",
			   len, max);
	u->path = strdup(rest);
	return u->path ? 0 : mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
}

static int parse_fd(const char *uri, const char *rest, struct transport_uri *u,
		    mfd_error **errp)
{
	uint64_t v;

	if (!*rest)
		return bad(errp, uri, "missing descriptor number");
	switch (parse_decimal(rest, strlen(rest), INT32_MAX, &v)) {
	case DEC_NOT_A_NUMBER:
		return bad(errp, uri, "descriptor '%s' is not a decimal number >= 0", rest);
	case DEC_TOO_BIG:
		return bad(errp, uri, "descriptor %s is out of range 0..%d", rest, INT32_MAX);
	case DEC_OK:
		break;
	}
	u->fd = (int)v;
	return 0;
}

static int parse_file_option(const char *uri, const char *opt, size_t len, bool *have_offset,
			     struct transport_uri *u, mfd_error **errp)
{
	static const char key[] = "offset=";
	const size_t klen = sizeof(key) - 1;

	if (len == 0)
		return bad(errp, uri, "empty option after ','");
	if (len < klen || memcmp(opt, key, klen) != 0)
		return bad(errp, uri, "unknown option '%.*s' (expected offset=N)", (int)len, opt);
	if (*have_offset)
		return bad(errp, uri, "offset given twice");
	*have_offset = true;
	opt += klen;
	len -= klen;
	if (len == 0)
		return bad(errp, uri, "missing value after offset=");
	switch (parse_decimal(opt, len, INT64_MAX, &u->offset)) {
	case DEC_NOT_A_NUMBER:
		return bad(errp, uri, "offset '%.*s' is not a decimal number of bytes", (int)len,
			   opt);
	case DEC_TOO_BIG:
		return bad(errp, uri, "offset %.*s is out of range 0..%lld", (int)len, opt,
			   (long long)INT64_MAX);
	case DEC_OK:
		break;
	}
	return 0;
}

static int parse_file(const char *uri, const char *rest, struct transport_uri *u,
		      mfd_error **errp)
{
	const char *comma = strchr(rest, ',');
	size_t path_len = comma ? (size_t)(comma - rest) : strlen(rest);
	bool have_offset = false;

	if (path_len == 0)
		return bad(errp, uri, "missing path");
	while (comma) {
		const char *opt = comma + 1;
		int r;

		comma = strchr(opt, ',');
		r = parse_file_option(uri, opt, comma ? (size_t)(comma - opt) : strlen(opt),
				      &have_offset, u, errp);
		if (r < 0)
			return r;
	}
	u->path = strndup(rest, path_len);
	return u->path ? 0 : mfd_error_set(errp, MFD_ENOMEM, "%s: out of memory", uri);
}

int transport_uri_parse(const char *uri, struct transport_uri *u, mfd_error **errp)
{
	static const struct {
		const char *name;
		enum uri_scheme scheme;
		int (*parse)(const char *uri, const char *rest, struct transport_uri *u,
			     mfd_error **errp);
	} schemes[] = {
		{ "tcp", URI_TCP, parse_tcp },
		{ "unix", URI_UNIX, parse_unix },
		{ "fd", URI_FD, parse_fd },
		{ "file", URI_FILE, parse_file },
	};
	const char *colon;
	int r;

	memset(u, 0, sizeof(*u));
	u->fd = -1;
	if (!uri)
		return mfd_error_set(errp, MFD_EINVAL, "URI is NULL");
	if (!*uri)
		return mfd_error_set(errp, MFD_EINVAL, "empty URI (expected " SCHEMES ")");
	colon = strchr(uri, ':');
	if (!colon)
		return mfd_error_set(errp, MFD_EINVAL, "no scheme in '%s' (expected " SCHEMES ")",
				     uri);
	for (size_t i = 0; i < MFD_ARRAY_SIZE(schemes); i++) {
		size_t n = strlen(schemes[i].name);

		if ((size_t)(colon - uri) != n || memcmp(uri, schemes[i].name, n) != 0)
			continue;
		u->scheme = schemes[i].scheme;
		r = schemes[i].parse(uri, colon + 1, u, errp);
		if (r < 0)
			transport_uri_clear(u);
		return r;
	}
	return mfd_error_set(errp, MFD_EINVAL, "unknown scheme '%.*s' in '%s' (expected " SCHEMES
			     ")", (int)(colon - uri), uri, uri);
}

void transport_uri_clear(struct transport_uri *u)
{
	free(u->host);
	free(u->path);
	memset(u, 0, sizeof(*u));
	u->fd = -1;
}

const char *sockaddr_text(const struct sockaddr *sa, socklen_t len, char *buf, size_t size)
{
	char host[NI_MAXHOST], serv[NI_MAXSERV];

	if (sa->sa_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
		size_t off = offsetof(struct sockaddr_un, sun_path);

		if (len <= off)
			snprintf(buf, size, "unnamed");
		else if (sun->sun_path[0])
			snprintf(buf, size, "%.*s", (int)strnlen(sun->sun_path, len - off),
				 sun->sun_path);
		else	/* abstract namespace: shown as ss(8) does */
			snprintf(buf, size, "@%.*s", (int)(len - off - 1), sun->sun_path + 1);
		return buf;
	}
	if (getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(buf, size, "(address family %d)", sa->sa_family);
	else if (sa->sa_family == AF_INET6)
		snprintf(buf, size, "[%s]:%s", host, serv);
	else
		snprintf(buf, size, "%s:%s", host, serv);
	return buf;
}
