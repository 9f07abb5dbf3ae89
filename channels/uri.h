/* SPDX-License-Identifier: MIT */
/*
 * Transport URIs: tcp:HOST:PORT, unix:PATH, fd:N, file:PATH[,offset=N].
 */
#ifndef MFD_CHANNELS_URI_H
#define MFD_CHANNELS_URI_H

#include <stdint.h>
#include <sys/socket.h>

#include <multifd/multifd.h>

enum uri_scheme { URI_TCP = 1, URI_UNIX, URI_FD, URI_FILE };

struct transport_uri {
	enum uri_scheme scheme;
	char *host;		/* tcp: a name, IPv4 or IPv6 literal (no brackets) */
	char port[6];		/* tcp: decimal, as getaddrinfo() wants it */
	char *path;		/* unix, file */
	int fd;			/* fd */
	uint64_t offset;	/* file: 0 unless ",offset=N" */
};

/*
 * Parse uri into *u (zeroed first).  A malformed URI gives MFD_EINVAL with
 * a message that starts with the URI and names the offending part.  Release
 * with transport_uri_clear(), also after a failure.
 */
int transport_uri_parse(const char *uri, struct transport_uri *u, mfd_error **errp);
void transport_uri_clear(struct transport_uri *u);

/*
 * "127.0.0.1:5555", "[::1]:5555" or, for AF_UNIX, the path (or "unnamed").
 * Returns buf.
 */
const char *sockaddr_text(const struct sockaddr *sa, socklen_t len, char *buf, size_t size);

/* Big enough for sockaddr_text() of any inet address and of short paths. */
#define SOCKADDR_TEXT_MAX 128

#endif /* MFD_CHANNELS_URI_H */
