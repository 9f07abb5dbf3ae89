/* SPDX-License-Identifier: MIT */
/*
 * libmultifd - live migration of a virtual machine's memory and device state.
 *
 * This header is the whole public interface.  A VMM links the library,
 * registers its device-state handlers (and, later, its guest RAM) on an
 * mfd_migration object, and moves the state over channels.
 *
 * Conventions, once for all functions:
 *  - Functions that can fail return int: 0 on success, a negative MFD_E*
 *    code on failure.  Those that can fail for configuration or peer reasons
 *    also take an `mfd_error **errp` out-parameter: when it is not NULL and
 *    *errp is NULL, a failure stores a newly allocated error there (message
 *    plus code) that the caller releases with mfd_error_free().  When *errp
 *    already holds an error it is kept (the first error wins).
 *  - Objects are opaque.  Every *_new/_open has a *_free that accepts NULL.
 *    Whoever creates an object frees it; ownership transfers are stated at
 *    the prototype.
 *  - The library never prints.  Diagnostics go to the log callback.
 *
 * Thread safety: distinct objects may be used from distinct threads freely.
 * One mfd_stream, mfd_channel or mfd_migration must not be used by two
 * threads at once, except where a function says "any thread"
 * (mfd_channel_shutdown(), the log and version functions, mfd_strerror()).
 * Handler callbacks run on the thread that called mfd_savevm()/mfd_loadvm(),
 * or during a migration on its migration (source) or incoming thread.
 */
#ifndef MULTIFD_MULTIFD_H
#define MULTIFD_MULTIFD_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <multifd/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with -fvisibility=hidden; only MFD_API symbols are exported. */
#define MFD_API __attribute__((visibility("default")))

#define MFD_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/**
 * enum mfd_errcode - negative return codes.
 *
 * The codes are coarse classes; the mfd_error message says exactly what was
 * wrong, where, and with which value.  Protocol codes (MFD_EBADMAGIC to
 * MFD_EPROTO) always mean the peer's data was rejected, never the caller's.
 *
 * MFD_EUNKNOWN is the one code that does not mean "nothing happened": the
 * source sent the end of the stream but never learned whether the
 * destination took the VM over (its RESULT was lost, late or cut off).  The
 * source VM stays stopped; the VMM must ask the destination (or its
 * orchestrator) whether the VM runs there, then call its own vm_start only
 * if it does not.  See "Switchover" in docs/architecture.md.
 */
enum mfd_errcode {
	MFD_OK = 0,
	MFD_EINVAL = -1,	/* an argument of the caller is invalid */
	MFD_ENOMEM = -2,	/* out of memory */
	MFD_EIO = -3,		/* the operating system reported an I/O error */
	MFD_EEOF = -4,		/* the data ended early: truncated stream or peer closed */
	MFD_ECANCELED = -5,	/* the operation was cancelled (channel shut down) */
	MFD_ETIMEDOUT = -6,	/* a deadline passed */
	MFD_ENOTSUP = -7,	/* not supported by this build or in this context */
	MFD_ESTATE = -8,	/* the call is not valid in the object's current state */
	MFD_EEXIST = -9,	/* already registered */
	MFD_ENOENT = -10,	/* no such registration */
	MFD_EHANDLER = -11,	/* a VMM handler reported a failure */
	MFD_ETOOBIG = -12,	/* a length or count is beyond its limit */
	MFD_EBADMAGIC = -13,	/* peer: wrong magic number */
	MFD_EBADVERSION = -14,	/* peer: unsupported format or section version */
	MFD_EBADRECORD = -15,	/* peer: unknown or misplaced record type */
	MFD_EBADSECTION = -16,	/* peer: unknown section id or idstr/instance */
	MFD_EBADFOOTER = -17,	/* peer: section footer missing or for another section */
	MFD_EBADCMD = -18,	/* peer: unknown command or wrong command length */
	MFD_EBADCONFIG = -19,	/* peer: configuration record missing or different */
	MFD_EPROTO = -20,	/* peer: other malformed data */
	MFD_EUNKNOWN = -21,	/* switchover outcome unknown: the destination may run the VM */
	MFD_ERUNNING = -22,	/* still running: mfd_migration_wait()'s timeout expired */
};

/** MFD_ERRCODE_MIN - the most negative code in enum mfd_errcode. */
#define MFD_ERRCODE_MIN (-22)

/**
 * typedef mfd_error - an error: a code from enum mfd_errcode and a message.
 */
typedef struct mfd_error mfd_error;

/**
 * mfd_strerror() - a short constant description of an error code.
 * @code: a value of enum mfd_errcode (0 or negative).
 *
 * Any thread.  Returns a static string; never NULL (unknown codes give
 * "unknown error").
 */
MFD_API const char *mfd_strerror(int code);

/**
 * mfd_error_code() - the code of an error.
 * @err: an error, or NULL (gives 0).
 */
MFD_API int mfd_error_code(const mfd_error *err);

/**
 * mfd_error_message() - the message of an error.
 * @err: an error, or NULL (gives "").
 *
 * The string is owned by @err and lives until mfd_error_free().
 */
MFD_API const char *mfd_error_message(const mfd_error *err);

/**
 * mfd_error_free() - release an error.
 * @err: an error, or NULL.
 */
MFD_API void mfd_error_free(mfd_error *err);

/**
 * mfd_error_set() - store a formatted error in *@errp.
 * @errp: where to store; may be NULL (nothing is stored).  An error already
 *        in *@errp is kept and the new one dropped.
 * @code: a negative enum mfd_errcode value.
 * @fmt: printf-style message.
 *
 * For handler implementations, which report failures the same way the
 * library does.  Returns @code, so `return mfd_error_set(errp, ...)` works.
 */
MFD_API int mfd_error_set(mfd_error **errp, int code, const char *fmt, ...)
	MFD_PRINTF(3, 4);

/**
 * mfd_error_prefix() - put context in front of an error's message.
 * @err: an error, or NULL (nothing happens).
 * @fmt: printf-style prefix; ": " is inserted between prefix and message.
 */
MFD_API void mfd_error_prefix(mfd_error *err, const char *fmt, ...) MFD_PRINTF(2, 3);

/**
 * mfd_error_setv() - mfd_error_set() with a va_list, for wrappers.
 * @errp: as mfd_error_set().
 * @code: as mfd_error_set().
 * @fmt: printf-style message.
 * @ap: its arguments.
 */
MFD_API int mfd_error_setv(mfd_error **errp, int code, const char *fmt, va_list ap)
	MFD_PRINTF(3, 0);

/**
 * mfd_error_set_text() - mfd_error_set() with a plain message, for callers
 * that cannot call a variadic function (bindings from other languages).
 * @errp: as mfd_error_set().
 * @code: as mfd_error_set().
 * @msg: the message, copied as is (no format: a '%' is a '%').
 */
MFD_API int mfd_error_set_text(mfd_error **errp, int code, const char *msg);

/**
 * mfd_error_prefixv() - mfd_error_prefix() with a va_list.
 * @err: as mfd_error_prefix().
 * @fmt: printf-style prefix.
 * @ap: its arguments.
 */
MFD_API void mfd_error_prefixv(mfd_error *err, const char *fmt, va_list ap) MFD_PRINTF(2, 0);

/**
 * mfd_error_prefix_text() - mfd_error_prefix() with a plain prefix.
 * @err: as mfd_error_prefix().
 * @prefix: copied as is.
 */
MFD_API void mfd_error_prefix_text(mfd_error *err, const char *prefix);

/* ------------------------------------------------------------------------ */
/* Version and logging                                                       */
/* ------------------------------------------------------------------------ */

/**
 * mfd_version() - the version of the library loaded at run time.
 *
 * Any thread.  Returns major * 10000 + minor * 100 + patch, comparable with
 * MFD_VERSION_NUMBER from the headers the caller was built with.
 */
MFD_API int mfd_version(void);

/**
 * mfd_version_string() - the version as "major.minor.patch".  Any thread.
 */
MFD_API const char *mfd_version_string(void);

/** enum mfd_log_level - severity of a log message, most severe first. */
enum mfd_log_level {
	MFD_LOG_ERROR = 0,
	MFD_LOG_WARNING = 1,
	MFD_LOG_INFO = 2,
	MFD_LOG_DEBUG = 3,
};

/**
 * typedef mfd_log_fn - receives one log message.
 * @level: severity, a value of enum mfd_log_level (an int: an enum's size
 *	is the compiler's choice, which bindings cannot know).
 * @msg: one line, no trailing newline; valid only during the call.
 * @opaque: the pointer given to mfd_log_set_handler().
 *
 * May be called from any library thread; calls are serialized by the
 * library (one at a time).  It must not call back into the library except
 * mfd_strerror() and the version functions.
 */
typedef void (*mfd_log_fn)(int level, const char *msg, void *opaque);

/**
 * mfd_log_set_handler() - route the library's log messages.
 * @fn: the callback, or NULL to drop every message (the default).
 * @opaque: passed back to @fn.
 * @max_level: messages less severe than this are not formatted at all.
 *
 * Any thread; takes effect for messages emitted after it returns.
 */
MFD_API void mfd_log_set_handler(mfd_log_fn fn, void *opaque, enum mfd_log_level max_level);

/**
 * struct mfd_thread_hooks - calls on every thread the library starts.
 * @size: sizeof(struct mfd_thread_hooks) as the caller was built with;
 *	members past it are taken as NULL.
 * @thread_start: runs on the new thread before it does any work, with the
 *	thread already named @name ("mfd-send/3", "mfd-return-path": 15
 *	characters at most, as top -H shows them): pin it, move it to a
 *	cgroup, install a seccomp filter (docs/syscalls.md lists the calls
 *	each feature makes).  It must not call into the library.
 * @thread_exit: runs on the thread after its last library work.
 *
 * Threads: the migration or incoming thread, the return path, the preempt
 * server or reader, one per multifd channel on each side, the postcopy
 * fault thread.
 */
struct mfd_thread_hooks {
	uint32_t size;
	void (*thread_start)(void *opaque, const char *name);
	void (*thread_exit)(void *opaque, const char *name);
};

/**
 * mfd_thread_hooks_set() - install the thread hooks, for the whole process.
 * @hooks: the hooks (copied), or NULL to remove them.
 * @opaque: passed back to them.
 * @errp: MFD_EINVAL for a @size too small to hold @thread_start;
 *	MFD_ENOTSUP for a @size beyond the library's with a non-zero byte
 *	there (hooks this library does not know).
 *
 * Any thread.  A thread takes the hooks installed when it starts and calls
 * the same pair at its exit, so a change never splits a start from its
 * exit; threads that already run keep theirs.  Process-wide because a
 * seccomp filter or a cgroup is the process's policy, whichever migration
 * starts the thread.
 */
MFD_API int mfd_thread_hooks_set(const struct mfd_thread_hooks *hooks, void *opaque,
				 mfd_error **errp);

/* ------------------------------------------------------------------------ */
/* Channels: byte transports                                                 */
/* ------------------------------------------------------------------------ */

/**
 * typedef mfd_channel - a bidirectional byte transport (socket, pipe, file,
 * memory buffer).  One thread at a time does I/O on it in each direction;
 * mfd_channel_shutdown() may come from any thread.
 */
typedef struct mfd_channel mfd_channel;

/** Flags for mfd_channel_new_fd(). */
#define MFD_CHANNEL_OWN_FD 0x1u	/* close the fd when the channel is freed */

/** Modes for mfd_channel_open_file(). */
enum mfd_channel_mode {
	MFD_CHANNEL_READ = 1,
	MFD_CHANNEL_WRITE = 2,	/* creates or truncates the file (mode 0600) */
};

/**
 * mfd_channel_new_fd() - wrap a file descriptor the caller opened.
 * @fd: a socket, pipe end or regular file, open for the directions used.
 * @flags: MFD_CHANNEL_OWN_FD to pass ownership of @fd to the channel;
 *         without it the channel never closes @fd.
 * @name: a name used in error messages (copied), or NULL for "fd:N".
 * @out: receives the channel.
 * @errp: error details.
 */
MFD_API int mfd_channel_new_fd(int fd, unsigned flags, const char *name,
			       mfd_channel **out, mfd_error **errp);

/**
 * mfd_channel_socketpair() - two connected channels (AF_UNIX stream pair).
 * @a: receives one end.
 * @b: receives the other end.
 * @errp: error details.
 *
 * Both ends own their descriptors; free both.
 */
MFD_API int mfd_channel_socketpair(mfd_channel **a, mfd_channel **b, mfd_error **errp);

/**
 * mfd_channel_pipe() - a one-way pipe.
 * @rd: receives the read end.
 * @wr: receives the write end.
 * @errp: error details.
 */
MFD_API int mfd_channel_pipe(mfd_channel **rd, mfd_channel **wr, mfd_error **errp);

/**
 * mfd_channel_open_file() - a channel on a regular file.
 * @path: the file name.
 * @mode: MFD_CHANNEL_READ, or MFD_CHANNEL_WRITE (created/truncated, 0600).
 * @out: receives the channel, which owns the file descriptor.
 * @errp: error details (names the path and the system error).
 */
MFD_API int mfd_channel_open_file(const char *path, enum mfd_channel_mode mode,
				  mfd_channel **out, mfd_error **errp);

/**
 * mfd_channel_new_mem_reader() - a channel reading from a memory buffer.
 * @data: the bytes; borrowed, must outlive the channel.
 * @len: their number.
 * @out: receives the channel.  Reads past @len report end of data.
 * @errp: error details.
 */
MFD_API int mfd_channel_new_mem_reader(const void *data, size_t len,
				       mfd_channel **out, mfd_error **errp);

/**
 * mfd_channel_new_mem_writer() - a channel collecting what is written to it.
 * @max_len: the most bytes it accepts; a write beyond fails with
 *           MFD_ETOOBIG (nothing is dropped silently).  0 means 1 GiB.
 * @out: receives the channel.
 * @errp: error details.
 */
MFD_API int mfd_channel_new_mem_writer(size_t max_len, mfd_channel **out, mfd_error **errp);

/**
 * mfd_channel_mem_contents() - the bytes written so far to a memory writer.
 * @ch: a channel from mfd_channel_new_mem_writer().
 * @data: receives a pointer owned by @ch, valid until the next write or free.
 * @len: receives the length.
 *
 * Returns MFD_EINVAL when @ch is not a memory writer.
 */
MFD_API int mfd_channel_mem_contents(mfd_channel *ch, const void **data, size_t *len);

/**
 * mfd_channel_name() - the channel's name, as used in error messages.
 * @ch: the channel.
 */
MFD_API const char *mfd_channel_name(const mfd_channel *ch);

/**
 * mfd_channel_shutdown() - stop all I/O on a channel, now and later.
 * @ch: the channel, or NULL.
 *
 * Any thread.  A thread blocked reading or writing @ch returns with
 * MFD_ECANCELED; later I/O fails the same way.  The descriptor stays open
 * until mfd_channel_free().  This is how a migration is cancelled.
 */
MFD_API void mfd_channel_shutdown(mfd_channel *ch);

/**
 * mfd_channel_finish() - end the data in the write direction, cleanly.
 * @ch: the channel.
 * @errp: error details.
 *
 * Sends what the transport needs for the peer to see a clean end of data:
 * a TLS close_notify, a socket's write-side shutdown.  A TLS peer that sees
 * the connection end without it reports truncation (MFD_EEOF), never a
 * clean end.  Reading stays possible.  No-op for files and memory.
 */
MFD_API int mfd_channel_finish(mfd_channel *ch, mfd_error **errp);

/**
 * mfd_channel_set_option() - tune a channel.
 * @ch: the channel.
 * @name: the option:
 *	"timeout-ms": longest wait of one blocking read or write (and of a TLS
 *		handshake step); 0 = wait forever (default).  A call that waits
 *		longer fails with MFD_ETIMEDOUT.
 *	"peer-timeout-ms": TCP only: declare the peer dead after this long
 *		without an acknowledgement or a keepalive answer (TCP keepalive and
 *		TCP_USER_TIMEOUT); 0 = the kernel's defaults.
 *	"nodelay": TCP only: 1 (default) sends small writes at once, 0 lets
 *		the kernel coalesce them.
 *	"sndbuf", "rcvbuf": socket buffer sizes in bytes (0 leaves the
 *		kernel's autotuning on, the default).
 *	"zero-copy": TCP only: 1 lets the library's zero-copy sends use
 *		MSG_ZEROCOPY (SO_ZEROCOPY); MFD_ENOTSUP on a kernel without it.
 * @value: the value.
 * @errp: error details: MFD_ENOTSUP when the option does not apply to this
 *	transport, MFD_EINVAL for an unknown name or a value out of range.
 *
 * A TLS channel passes socket options to the channel it wraps.
 */
MFD_API int mfd_channel_set_option(mfd_channel *ch, const char *name, int64_t value,
				   mfd_error **errp);

/**
 * mfd_channel_connect() - open the source side of a transport by URI.
 * @uri: one of
 *	"tcp:HOST:PORT" - HOST a name, an IPv4 literal or "[IPv6]";
 *	"unix:PATH" - a unix stream socket;
 *	"fd:N" - a descriptor the caller opened; borrowed, never closed by the
 *		library (use mfd_channel_new_fd() to pass ownership);
 *	"file:PATH[,offset=N]" - written from byte N (default 0); the bytes
 *		before N are kept, anything after N is cut off, the file is
 *		created when missing.  A comma always starts an option, so a
 *		path containing one must be passed as fd:N.
 * @timeout_ms: deadline for establishing the connection; 0 = 30 s.
 * @out: receives the channel.
 * @errp: error details, naming the part of the URI that is wrong or the
 *	address that could not be reached.
 *
 * TCP channels get TCP_NODELAY.  Name resolution (getaddrinfo) is not
 * bounded by @timeout_ms.  A blocking pipe passed as fd:N is written at
 * most PIPE_BUF bytes at a time, so cancel and deadlines can interrupt it.
 */
MFD_API int mfd_channel_connect(const char *uri, int timeout_ms, mfd_channel **out,
				mfd_error **errp);

/**
 * typedef mfd_listener - the destination side of a transport: where
 * incoming channels come from.
 */
typedef struct mfd_listener mfd_listener;

/**
 * mfd_listener_new() - start listening on a URI.
 * @uri: "tcp:HOST:PORT" (PORT 0 picks a free port), "unix:PATH" (an
 *	existing socket file is replaced), "fd:N" (a listening socket, accepted
 *	on; or a connected socket or file, handed out once as the only
 *	channel), "file:PATH[,offset=N]" (read from byte N, handed out once).
 * @out: receives the listener.
 * @errp: error details.
 */
MFD_API int mfd_listener_new(const char *uri, mfd_listener **out, mfd_error **errp);

/**
 * mfd_listener_uri() - where the listener really listens, as a URI that
 * mfd_channel_connect() accepts (the chosen port for "tcp:HOST:0").
 * @l: the listener.
 */
MFD_API const char *mfd_listener_uri(const mfd_listener *l);

/**
 * mfd_listener_accept() - wait for one incoming channel.
 * @l: the listener.
 * @timeout_ms: how long to wait; 0 = forever.
 * @out: receives the channel (owned by the caller).
 * @errp: MFD_ETIMEDOUT, MFD_ECANCELED after mfd_listener_shutdown(),
 *	MFD_ESTATE once the listener stopped listening or handed out its one
 *	channel.
 */
MFD_API int mfd_listener_accept(mfd_listener *l, int timeout_ms, mfd_channel **out,
				mfd_error **errp);

/**
 * typedef mfd_identify_fn - tells which slot an incoming channel fills.
 * @ch: the new channel; the callback may read from it (a hello).
 * @opaque: as given to mfd_listener_gather().
 * @errp: why the channel is refused.
 *
 * Returns the slot index, or a negative code to refuse the channel (it is
 * closed and the gathering fails).
 */
typedef int (*mfd_identify_fn)(mfd_channel *ch, void *opaque, mfd_error **errp);

/**
 * mfd_listener_gather() - accept exactly @count channels, then stop listening.
 * @l: the listener.
 * @count: how many channels make up the migration (main + multifd ...).
 * @timeout_ms: deadline for all of them together; 0 = forever.
 * @identify: assigns each channel its slot; NULL assigns slots in arrival
 *	order.
 * @opaque: passed to @identify.
 * @slots: array of @count entries, filled with the channels.
 * @errp: MFD_ETIMEDOUT naming the missing slots; MFD_EPROTO for a slot
 *	out of range or filled twice; @identify's own error.
 *
 * On success the listening socket is closed, so later connections are
 * refused instead of queued (a borrowed fd:N listening socket is left open
 * but no longer accepted on).  While @identify runs, the channel's
 * "timeout-ms" is set to the time left before the deadline.  On failure every channel accepted so far is
 * freed and the slots are NULL.
 */
MFD_API int mfd_listener_gather(mfd_listener *l, unsigned count, int timeout_ms,
				mfd_identify_fn identify, void *opaque, mfd_channel **slots,
				mfd_error **errp);

/**
 * mfd_listener_shutdown() - make a blocked or later accept fail with
 * MFD_ECANCELED.  Any thread.
 * @l: the listener, or NULL.
 */
MFD_API void mfd_listener_shutdown(mfd_listener *l);

/**
 * mfd_listener_free() - stop listening and release the listener (a unix
 * socket file it created is removed).
 * @l: the listener, or NULL.
 */
MFD_API void mfd_listener_free(mfd_listener *l);

/* ------------------------------------------------------------------------ */
/* TLS (OpenSSL)                                                             */
/* ------------------------------------------------------------------------ */

/** enum mfd_tls_role - which end of the handshake. */
enum mfd_tls_role {
	MFD_TLS_CLIENT = 1,	/* the source */
	MFD_TLS_SERVER = 2,	/* the destination */
};

/**
 * typedef mfd_tls_creds - credentials and policy for TLS channels; shared
 * by every channel of a migration, read-only once channels use it.
 */
typedef struct mfd_tls_creds mfd_tls_creds;

/**
 * mfd_tls_creds_new_x509() - x509 credentials from a directory.
 * @dir: holds ca-cert.pem, and server-cert.pem + server-key.pem (server)
 *	or client-cert.pem + client-key.pem (client; may be absent when the
 *	server runs with "verify-peer" off), and optionally ca-crl.pem: CRLs
 *	(PEM) from the CA; when present, a peer whose own certificate is
 *	revoked is refused during the handshake (its issuer's CRL must be in
 *	the file and current; the CAs above the peer are not checked).
 * @role: which side these credentials are for.
 * @out: receives the credentials.
 * @errp: names the missing or unreadable file (a ca-crl.pem that is
 *	present but holds no PEM CRL included), or the key that does not
 *	match its certificate.
 *
 * The client always verifies the server's chain and name; the server
 * requires and verifies a client certificate (see "verify-peer", "authz").
 */
MFD_API int mfd_tls_creds_new_x509(const char *dir, enum mfd_tls_role role,
				   mfd_tls_creds **out, mfd_error **errp);

/**
 * mfd_tls_creds_new_psk() - pre-shared-key credentials (TLS 1.3 external
 * PSK with (EC)DHE, so forward secrecy is kept).
 * @psk_file: lines "identity:hexkey"; a server accepts any identity listed,
 *	a client uses the one set with "psk-identity" (default: the first
 *	line's).
 * @role: which side.
 * @out: receives the credentials.
 * @errp: names the file and the line that is malformed.
 */
MFD_API int mfd_tls_creds_new_psk(const char *psk_file, enum mfd_tls_role role,
				  mfd_tls_creds **out, mfd_error **errp);

/**
 * mfd_tls_creds_set() - set a policy option.
 * @c: the credentials (before any channel uses them).
 * @name: "min-version" ("1.2" default, or "1.3"; PSK is always 1.3);
 *	"authz" (server; x509: a subject DN in RFC 2253 form, e.g.
 *	"CN=src1,O=Example"; PSK: an identity of the PSK file; each call adds
 *	one; when any is set, a client whose DN or PSK identity is not listed
 *	is refused during the handshake);
 *	"verify-peer" (server, x509: "on" default, "off" accepts clients
 *	without a certificate); "psk-identity" (client, PSK);
 *	"ciphersuites" (TLS 1.3 suites, OpenSSL syntax); "cipher-list"
 *	(TLS 1.2 ciphers, OpenSSL syntax).
 * @value: the value.
 * @errp: MFD_EINVAL for an unknown name or a bad value, MFD_ESTATE once a
 *	channel used the credentials.
 */
MFD_API int mfd_tls_creds_set(mfd_tls_creds *c, const char *name, const char *value,
			      mfd_error **errp);

/**
 * mfd_tls_creds_free() - release credentials.
 * @c: the credentials, or NULL; no channel may still use them.
 */
MFD_API void mfd_tls_creds_free(mfd_tls_creds *c);

/** Flag for mfd_channel_tls_wrap(). */
#define MFD_CHANNEL_OWN_INNER 0x2u	/* free the wrapped channel with the TLS channel */

/**
 * mfd_channel_tls_wrap() - run a TLS handshake over a channel and return
 * the protected channel.
 * @inner: a connected stream channel (TCP, unix, fd, socketpair).
 * @creds: the credentials; their role decides client or server.
 * @hostname: client: the name or IP address the server certificate must
 *	match (x509; refused when NULL or empty); ignored by servers and PSK.
 * @flags: MFD_CHANNEL_OWN_INNER, or 0 (the caller frees @inner after the
 *	TLS channel).
 * @out: receives the TLS channel.
 * @errp: why the handshake failed: MFD_EPROTO naming the refusal (unknown
 *	PSK identity or key mismatch, certificate chain, expiry, name or authz
 *	refusal, a plaintext peer, an alert from the peer); MFD_EINVAL for a
 *	client without @hostname; the inner channel's MFD_EEOF, MFD_ETIMEDOUT
 *	or MFD_ECANCELED.
 *
 * Returns only after the handshake completed (bounded by the inner
 * channel's "timeout-ms").  On failure @inner is left to the caller,
 * whatever @flags say.  One thread may read while another writes.  Reads
 * return 0 only after the peer's close_notify; a connection that ends
 * without one fails with MFD_EEOF.  Close with mfd_channel_finish() then
 * mfd_channel_free(); freeing without finishing sends nothing.
 */
MFD_API int mfd_channel_tls_wrap(mfd_channel *inner, mfd_tls_creds *creds,
				 const char *hostname, unsigned flags, mfd_channel **out,
				 mfd_error **errp);

/**
 * mfd_channel_free() - close (when owned) and release a channel.
 * @ch: the channel, or NULL.  No thread may be using it.
 */
MFD_API void mfd_channel_free(mfd_channel *ch);

/* ------------------------------------------------------------------------ */
/* Streams: buffered big-endian I/O over a channel                           */
/* ------------------------------------------------------------------------ */

/**
 * typedef mfd_stream - a one-direction buffered stream over a channel.
 *
 * All integers are big-endian on the wire.  The first failure is latched:
 * every later call returns the same code at once, and mfd_stream_error()
 * gives the message.  Section handlers write and read their state through
 * the stream they are handed.
 */
typedef struct mfd_stream mfd_stream;

/** enum mfd_stream_mode - direction of a stream. */
enum mfd_stream_mode {
	MFD_STREAM_READ = 1,
	MFD_STREAM_WRITE = 2,
};

/**
 * mfd_stream_new() - create a stream over a channel.
 * @ch: the channel; borrowed, must outlive the stream.
 * @mode: the direction.
 * @out: receives the stream.
 * @errp: error details.
 */
MFD_API int mfd_stream_new(mfd_channel *ch, enum mfd_stream_mode mode,
			   mfd_stream **out, mfd_error **errp);

/**
 * mfd_stream_free() - release a stream.
 * @s: the stream, or NULL.
 *
 * A write stream is NOT flushed: call mfd_stream_flush() first to know
 * whether the last bytes went out.
 */
MFD_API void mfd_stream_free(mfd_stream *s);

/**
 * mfd_stream_put_u8() - write one byte.
 * @s: a write stream.
 * @v: the value.
 *
 * Returns 0 or the latched error, like every put and get function.
 */
MFD_API int mfd_stream_put_u8(mfd_stream *s, uint8_t v);
/**
 * mfd_stream_put_be16() - write a big-endian 16-bit value.
 * @s: a write stream.
 * @v: the value.
 */
MFD_API int mfd_stream_put_be16(mfd_stream *s, uint16_t v);
/**
 * mfd_stream_put_be32() - write a big-endian 32-bit value.
 * @s: a write stream.
 * @v: the value.
 */
MFD_API int mfd_stream_put_be32(mfd_stream *s, uint32_t v);
/**
 * mfd_stream_put_be64() - write a big-endian 64-bit value.
 * @s: a write stream.
 * @v: the value.
 */
MFD_API int mfd_stream_put_be64(mfd_stream *s, uint64_t v);

/**
 * mfd_stream_put_buf() - write bytes (copied into the stream's buffer, or
 * written straight through when large).
 * @s: the stream.
 * @buf: the bytes.
 * @len: their number.
 */
MFD_API int mfd_stream_put_buf(mfd_stream *s, const void *buf, size_t len);

/**
 * mfd_stream_put_buf_ref() - queue bytes without copying them.
 * @s: the stream.
 * @buf: the bytes; must stay valid and unchanged until the next
 *       mfd_stream_flush() returns (guest pages are sent this way).
 * @len: their number.
 *
 * Consecutive small items and references go out in one vectored write.
 */
MFD_API int mfd_stream_put_buf_ref(mfd_stream *s, const void *buf, size_t len);

/**
 * mfd_stream_put_str() - write a counted string: one length byte, then the
 * bytes without NUL.
 * @s: the stream.
 * @str: the string; longer than 255 bytes fails with MFD_ETOOBIG (latched).
 */
MFD_API int mfd_stream_put_str(mfd_stream *s, const char *str);

/**
 * mfd_stream_flush() - write out everything buffered or queued.
 * @s: a write stream.
 */
MFD_API int mfd_stream_flush(mfd_stream *s);

/**
 * mfd_stream_get_u8() - read one byte.
 * @s: a read stream.
 * @v: receives the value.
 *
 * Data that ends before the value is complete gives MFD_EEOF (latched).
 */
MFD_API int mfd_stream_get_u8(mfd_stream *s, uint8_t *v);
/**
 * mfd_stream_get_be16() - read a big-endian 16-bit value.
 * @s: a read stream.
 * @v: receives the value.
 */
MFD_API int mfd_stream_get_be16(mfd_stream *s, uint16_t *v);
/**
 * mfd_stream_get_be32() - read a big-endian 32-bit value.
 * @s: a read stream.
 * @v: receives the value.
 */
MFD_API int mfd_stream_get_be32(mfd_stream *s, uint32_t *v);
/**
 * mfd_stream_get_be64() - read a big-endian 64-bit value.
 * @s: a read stream.
 * @v: receives the value.
 */
MFD_API int mfd_stream_get_be64(mfd_stream *s, uint64_t *v);

/**
 * mfd_stream_get_buf() - read exactly @len bytes.
 * @s: a read stream.
 * @buf: destination.
 * @len: how many; fewer available before the end gives MFD_EEOF.
 */
MFD_API int mfd_stream_get_buf(mfd_stream *s, void *buf, size_t len);

/**
 * mfd_stream_get_str() - read a counted string written by
 * mfd_stream_put_str().
 * @s: a read stream.
 * @buf: receives the string, NUL-terminated; at least 256 bytes.
 * @len: receives its length (may be NULL).
 */
MFD_API int mfd_stream_get_str(mfd_stream *s, char buf[256], size_t *len);

/**
 * mfd_stream_peek_u8() - look at the next byte without consuming it.
 * @s: a read stream.
 * @v: receives the byte.
 */
MFD_API int mfd_stream_peek_u8(mfd_stream *s, uint8_t *v);

/**
 * mfd_stream_skip() - read and discard @len bytes.
 * @s: a read stream.
 * @len: how many.
 */
MFD_API int mfd_stream_skip(mfd_stream *s, uint64_t len);

/**
 * mfd_stream_set_error() - fail a stream from outside (e.g. a handler that
 * found its data inconsistent).  The error is latched like an I/O error.
 * @s: the stream.
 * @code: a negative code.
 * @fmt: printf-style message.
 *
 * Returns the latched code (the earlier one when the stream had already
 * failed).
 */
MFD_API int mfd_stream_set_error(mfd_stream *s, int code, const char *fmt, ...)
	MFD_PRINTF(3, 4);

/**
 * mfd_stream_error() - the latched error of a stream.
 * @s: the stream.
 * @errp: when the stream has failed, receives a copy of its error.
 *
 * Returns 0 when the stream has not failed, else its code.
 */
MFD_API int mfd_stream_error(const mfd_stream *s, mfd_error **errp);

/**
 * mfd_stream_bytes() - bytes moved so far: handed to the stream for a write
 * stream, consumed by the reader for a read stream.
 * @s: the stream.
 */
MFD_API uint64_t mfd_stream_bytes(const mfd_stream *s);

/**
 * mfd_stream_channel() - the channel under a stream.
 * @s: the stream.
 */
MFD_API mfd_channel *mfd_stream_channel(const mfd_stream *s);

/* ------------------------------------------------------------------------ */
/* Subsections inside a section's payload                                    */
/* ------------------------------------------------------------------------ */

/**
 * mfd_subsection_begin() - start an optional subsection of a device's state.
 * @s: the write stream handed to a save handler.
 * @name: "<idstr>/<part>", 1..255 bytes.
 * @version_id: the subsection's format version.
 *
 * Writes the SUBSECTION marker, name and version; the caller then writes the
 * subsection's fields.  Subsections come after the device's main fields.
 */
MFD_API int mfd_subsection_begin(mfd_stream *s, const char *name, uint32_t version_id);

/**
 * mfd_subsection_next() - in a load handler, check for a next subsection.
 * @s: the read stream handed to a load handler.
 * @parent: the device's idstr; the subsection name must start with
 *          "<parent>/" or the stream is refused (MFD_EPROTO).
 * @name: receives the subsection name (NUL-terminated), 256 bytes.
 * @version_id: receives its version.
 *
 * Returns 1 when a subsection header was consumed, 0 when the next byte is
 * not a subsection marker (nothing consumed), negative on error.
 */
MFD_API int mfd_subsection_next(mfd_stream *s, const char *parent, char name[256],
				uint32_t *version_id);

/* ------------------------------------------------------------------------ */
/* Compression plugins                                                       */
/* ------------------------------------------------------------------------ */

/** MFD_COMPRESS_NAME_MAX - longest codec name, in bytes. */
#define MFD_COMPRESS_NAME_MAX 31

/**
 * struct mfd_compress_ops - a codec for multifd packets.
 *
 * Compression works per packet: each packet's normal pages are compressed
 * as one independent unit, so a codec never holds bytes across packets (or
 * across a sync).  The library copies the pages out of guest memory before
 * calling send_prepare, because an LZ-style coder reading memory the guest
 * is writing could emit matches that decode to bytes never sent.  A packet
 * whose compressed form is not smaller than its input is sent raw by the
 * library; codecs need not handle that case.
 *
 * Contexts are per channel and per direction, created once and reused for
 * every packet; one thread uses a context at a time.  Return codes: 0 or a
 * negative enum mfd_errcode with *errp set.
 *
 * @size: sizeof(struct mfd_compress_ops) as the codec was built with;
 *	members past it are taken as NULL/0 (see mfd_compress_register()).
 * @name: 1..MFD_COMPRESS_NAME_MAX bytes of [a-z0-9_-]; the value of the
 *	"multifd-compression" parameter; both sides must know it.
 * @level_min: lowest accepted level.
 * @level_max: highest accepted level.
 * @level_default: level used when none is configured.
 * @bound: the most bytes send_prepare may produce for @in_len input bytes.
 *	The receiver refuses larger payloads before reading them.
 * @send_setup: create a compression context at @level (within bounds);
 *	@opaque is the table's @opaque member.
 * @send_prepare: compress @in_len bytes at @in into @out (capacity
 *	@out_cap >= bound(@in_len)); store the size in *@out_len.
 * @send_cleanup: release a compression context (NULL accepted).
 * @recv_setup: create a decompression context; @opaque as for send_setup.
 * @recv: decompress @in_len bytes at @in into exactly the @n buffers of
 *	@out (pages in guest memory).  The input is untrusted: it must expand
 *	to exactly the total size of @out, without trailing input, never
 *	writing outside @out, never allocating by what the input claims;
 *	anything else is MFD_EPROTO with a message saying what was wrong.
 * @recv_cleanup: release a decompression context (NULL accepted).
 * @opaque: the codec's own pointer (a device handle, an object of another
 *	language), passed to send_setup and recv_setup, which can keep it in
 *	the contexts they make; may be NULL.  The library never dereferences
 *	it; it must stay valid until the process ends.
 */
typedef struct mfd_compress_ops {
	uint32_t size;
	const char *name;
	int level_min, level_max, level_default;
	size_t (*bound)(size_t in_len);
	int (*send_setup)(void *opaque, void **ctx, int level, mfd_error **errp);
	int (*send_prepare)(void *ctx, const void *in, size_t in_len, void *out, size_t out_cap,
			    size_t *out_len, mfd_error **errp);
	void (*send_cleanup)(void *ctx);
	int (*recv_setup)(void *opaque, void **ctx, mfd_error **errp);
	int (*recv)(void *ctx, const void *in, size_t in_len, const struct iovec *out, int n,
		    mfd_error **errp);
	void (*recv_cleanup)(void *ctx);
	void *opaque;
} mfd_compress_ops;

/**
 * mfd_compress_register() - add a codec (e.g. a hardware one) for every
 * migration of this process.
 * @ops: the codec; the table and its name are copied (min(@ops->size,
 *	the library's size) bytes), the functions it points to must stay
 *	valid until the process ends.  The built-ins none, zlib, zstd and lz4
 *	(each when built in) are always registered.
 * @errp: MFD_EEXIST when the name is taken; MFD_EINVAL for a bad table (a
 *	@size below the first layout's, a bad name, a missing function, bad
 *	levels); MFD_ENOTSUP for a table that sets members past what this
 *	library knows (built for a newer libmultifd); MFD_ETOOBIG when 32
 *	codecs (built-ins included) are registered already.
 *
 * Any thread.
 */
MFD_API int mfd_compress_register(const mfd_compress_ops *ops, mfd_error **errp);

/**
 * mfd_compress_find() - look a codec up by name.
 * @name: e.g. "zstd".
 *
 * Any thread.  Returns the library's copy of the table (its @size is the
 * library's sizeof; valid until the process ends), or NULL when no codec
 * has that name.
 */
MFD_API const mfd_compress_ops *mfd_compress_find(const char *name);

/**
 * mfd_compress_list() - the names of every registered codec.
 * @names: receives up to @max names (static strings).
 * @max: capacity of @names.
 *
 * Any thread.  Returns the number of codecs (which may exceed @max).
 */
MFD_API int mfd_compress_list(const char **names, int max);

/* ------------------------------------------------------------------------ */
/* Migration object and section handlers                                     */
/* ------------------------------------------------------------------------ */

/**
 * typedef mfd_migration - one side of a migration: the registry of device
 * sections, parameters and, later, the engine.
 */
typedef struct mfd_migration mfd_migration;

/**
 * mfd_migration_new() - create a migration object.
 * @out: receives it.
 * @errp: error details.
 */
MFD_API int mfd_migration_new(mfd_migration **out, mfd_error **errp);

/**
 * mfd_migration_free() - release a migration object and its registrations.
 * @m: the object, or NULL.  save_cleanup/load_cleanup are not called here.
 */
MFD_API void mfd_migration_free(mfd_migration *m);

/**
 * typedef mfd_migration_log_fn - receives one log message of one migration
 * object.
 * @m: the object the message is about.
 * @level: an enum mfd_log_level value.
 * @msg: one line, no trailing newline; valid only during the call.
 * @opaque: as given to mfd_migration_set_log_handler().
 *
 * As mfd_log_fn: calls for one object are serialized; it must not call
 * back into the library except mfd_strerror() and the version functions.
 */
typedef void (*mfd_migration_log_fn)(mfd_migration *m, int level, const char *msg,
				     void *opaque);

/**
 * mfd_migration_set_log_handler() - route one migration object's messages
 * (a VMM that runs several VMs tells their logs apart).
 * @m: the migration object.
 * @fn: the callback, or NULL to send @m's messages to the process-wide
 *	handler (mfd_log_set_handler()) again.
 * @opaque: passed back to @fn.
 * @max_level: messages less severe than this are not formatted.
 *
 * Any thread.  The messages of every thread working for @m (its migration
 * or incoming thread, return path, preempt, multifd and fault threads) and
 * of the library calls that start, cancel or steer @m go to @fn, and to the
 * process-wide handler no more.  Returns 0, or MFD_EINVAL for a NULL @m or
 * a @max_level outside the levels.
 */
MFD_API int mfd_migration_set_log_handler(mfd_migration *m, mfd_migration_log_fn fn,
					  void *opaque, int max_level);

/**
 * mfd_migration_set_identity() - the configuration identity string.
 * @m: the migration object.
 * @identity: 1..255 bytes, e.g. the VMM's machine type ("minivmm-pc-1").
 * @errp: error details.
 *
 * The source writes it in the stream's CONFIGURATION record; the loader
 * refuses a stream whose identity differs (MFD_EBADCONFIG).  The default is
 * "libmultifd".
 */
MFD_API int mfd_migration_set_identity(mfd_migration *m, const char *identity,
				       mfd_error **errp);

/**
 * struct mfd_save_handlers - what a device section does at each phase.
 *
 * Set @size to sizeof(struct mfd_save_handlers); leave unused members NULL
 * (members past @size are taken as NULL, see mfd_register_live()).  A
 * section is *live* (iterative, sent as START/PART/END) when it has
 * save_setup or save_live_iterate, otherwise it is sent once as FULL at
 * completion through save_state.  Every callback gets the opaque pointer
 * given at registration.  Callbacks that return int return 0 on success and
 * a negative code on failure, setting *errp through mfd_error_set() (a
 * failure without a message gets a generic one naming the section).
 *
 * @size: sizeof(struct mfd_save_handlers) as the caller was built with.
 *
 * Source side, in call order:
 * @save_prepare: before anything is written; may refuse the migration.
 * @save_setup: writes the START payload of a live section.
 * @state_pending_estimate: cheap guess of bytes left, split into those that
 *	must go before switchover and those that may follow in postcopy.
 * @state_pending_exact: the same, exact (may sync dirty state); called when
 *	the estimate suggests switchover is near.
 * @is_active: false excludes the section from this migration entirely.
 * @is_active_iterate: false skips the section in this iteration round.
 * @save_live_iterate: writes one PART payload; returns 1 when the section
 *	has nothing more to send for now, 0 when it wants more rounds, or a
 *	negative code.
 * @has_postcopy: true when the section can finish after the destination
 *	starts running (RAM with postcopy-ram).
 * @save_postcopy_prepare: right before postcopy starts (RAM flushes and
 *	syncs multifd there); may write a PART payload; sets *can_switchover to
 *	false to ask for more precopy rounds first.
 * @save_live_complete_precopy: writes the END payload, with the VM stopped.
 * @save_live_complete_postcopy: writes the END payload of a postcopy-capable
 *	section once postcopy has delivered everything.
 * @save_state: writes the FULL payload of a non-live section.
 * @save_cleanup: releases what save_setup acquired; always called after a
 *	successful save_setup, whatever the outcome.
 *
 * Destination side:
 * @load_setup: before the first section of this device is loaded.
 * @load_state: reads one payload (START, PART, END or FULL) and must consume
 *	exactly what the source wrote; @version_id is the version the sender
 *	announced in the section's START or FULL, never above the registered
 *	one.  Failure codes outside enum mfd_errcode become MFD_EHANDLER.
 * @load_cleanup: after the load ended, successfully or not.
 *
 * Both:
 * @resume_prepare: postcopy recovery is about to resume (source side).
 * @switchover_ack_needed: switchover needs this device's consent (e.g. a
 *	device that preloads state on the destination).  When a source
 *	section returns true, the source does not stop the VM before the
 *	destination's SWITCHOVER_ACK; the destination sends it once every one
 *	of its sections that returns true has called
 *	mfd_migration_approve_switchover() (at once when none does).
 */
typedef struct mfd_save_handlers {
	uint32_t size;
	int (*save_prepare)(void *opaque, mfd_error **errp);
	int (*save_setup)(mfd_stream *s, void *opaque, mfd_error **errp);
	void (*save_cleanup)(void *opaque);
	int (*save_live_iterate)(mfd_stream *s, void *opaque, mfd_error **errp);
	int (*save_live_complete_precopy)(mfd_stream *s, void *opaque, mfd_error **errp);
	int (*save_live_complete_postcopy)(mfd_stream *s, void *opaque, mfd_error **errp);
	int (*save_postcopy_prepare)(mfd_stream *s, void *opaque, bool *can_switchover,
				     mfd_error **errp);
	void (*state_pending_estimate)(void *opaque, uint64_t *must_precopy,
				       uint64_t *can_postcopy);
	void (*state_pending_exact)(void *opaque, uint64_t *must_precopy,
				    uint64_t *can_postcopy);
	bool (*is_active)(void *opaque);
	bool (*is_active_iterate)(void *opaque);
	bool (*has_postcopy)(void *opaque);
	int (*save_state)(mfd_stream *s, void *opaque, mfd_error **errp);
	int (*load_state)(mfd_stream *s, void *opaque, uint32_t version_id, mfd_error **errp);
	int (*load_setup)(void *opaque, mfd_error **errp);
	void (*load_cleanup)(void *opaque);
	int (*resume_prepare)(void *opaque, mfd_error **errp);
	bool (*switchover_ack_needed)(void *opaque);
} mfd_save_handlers;

/** MFD_INSTANCE_ANY - let mfd_register_live() pick the next free instance id. */
#define MFD_INSTANCE_ANY UINT32_MAX

/** MFD_IDSTR_MAX - longest section idstr, in bytes (it travels as u8 length). */
#define MFD_IDSTR_MAX 255

/**
 * mfd_register_live() - register a device section.
 * @m: the migration object (no save or load may be running).
 * @idstr: the section name, 1..MFD_IDSTR_MAX bytes (copied); the pair
 *         (idstr, instance_id) must be unique and the same on both sides.
 * @instance_id: distinguishes devices of one kind; MFD_INSTANCE_ANY picks
 *         one above every instance already registered under @idstr.
 * @version_id: the format version this side writes and the newest it loads.
 * @ops: the handlers; copied, so the table may be temporary.
 * @opaque: passed to every handler.
 * @errp: error details: MFD_EEXIST for a duplicate, MFD_EINVAL for a bad
 *        idstr or handler table (size below the first layout's; neither
 *        save_state nor a live handler nor load_state set; save_live_iterate
 *        or save_live_complete_precopy without save_setup), MFD_ENOTSUP for
 *        a table that sets members this library does not know (a size
 *        beyond the library's with a non-zero byte there).
 *
 * Sections are saved in registration order.  Returns 0 or a negative code.
 */
MFD_API int mfd_register_live(mfd_migration *m, const char *idstr, uint32_t instance_id,
			      uint32_t version_id, const mfd_save_handlers *ops,
			      void *opaque, mfd_error **errp);

/**
 * mfd_unregister() - remove a registration.
 * @m: the migration object (no save or load may be running).
 * @idstr: as registered.
 * @instance_id: as registered (the id picked for MFD_INSTANCE_ANY).
 *
 * Returns 0, or MFD_ENOENT when no such section is registered.
 */
MFD_API int mfd_unregister(mfd_migration *m, const char *idstr, uint32_t instance_id);

/**
 * mfd_section_instance() - the instance id a registration got.
 * @m: the migration object.
 * @idstr: the section name.
 * @index: 0 for the first registration of @idstr, 1 for the next...
 * @instance_id: receives the id.
 *
 * Returns 0, or MFD_ENOENT.
 */
MFD_API int mfd_section_instance(mfd_migration *m, const char *idstr, unsigned index,
				 uint32_t *instance_id);

/* ------------------------------------------------------------------------ */
/* Guest RAM                                                                 */
/* ------------------------------------------------------------------------ */

/**
 * MFD_RAM_BLOCKS_MAX - most RAM blocks one migration object holds: the
 * return path names a block by a 16-bit index (docs/wire-format.md).
 */
#define MFD_RAM_BLOCKS_MAX 65535

/** MFD_RAM_SHARED - mfd_ram_block_desc.flags: the block is a MAP_SHARED
 * mapping (memfd, hugetlbfs, a file) that other processes may map too. */
#define MFD_RAM_SHARED (1u << 0)
/** MFD_RAM_FRESH - mfd_ram_block_desc.flags, destination: the block was
 * mapped for this load and nothing wrote it (fresh anonymous memory, a new
 * memfd), so every byte reads zero.  With dest-ram-zeroed on, a zero page
 * that arrives for a page not yet written is then skipped without being
 * read.  Without the flag the destination reads such a page first and
 * clears it only where it is not zero (firmware or a kernel the VMM loaded
 * stays correct). */
#define MFD_RAM_FRESH (1u << 1)

/**
 * struct mfd_ram_block_desc - one block of guest RAM, as the VMM maps it.
 * @size: sizeof(struct mfd_ram_block_desc) as the caller was built with;
 *	members past @size are taken as 0, so an older caller's smaller
 *	struct stays valid.  Below the first layout's 72 bytes: MFD_EINVAL.
 * @flags: MFD_RAM_SHARED, MFD_RAM_FRESH; other bits: MFD_EINVAL.
 * @name: 1..255 bytes, unique, the same on both sides (e.g. "pc.ram").
 * @host: where the block lives in this process, 4 KiB aligned; on the
 *	destination pages are written there.  Must stay mapped until the
 *	block is removed or the object freed.
 * @length: bytes, a non-zero multiple of @page_size.
 * @page_size: a power of two from 4 KiB to 1 GiB (2 MiB for hugepages):
 *	the unit of transfer and of the library's dirty bitmap.
 * @dirty_granularity: bytes per bit of the bitmaps the dirty_sync and
 *	dirty_clear hooks exchange for this block (KVM logs 4 KiB pages even
 *	for a block of 2 MiB pages); a power of two from 4 KiB to 1 GiB, 0 =
 *	@page_size.  A bit covering several pages dirties them all; a page
 *	covering several bits is dirty when any of them is.
 * @fd: the file the block is mapped from (a memfd, a hugetlbfs file), or
 *	-1.  Not used by a network migration; recorded for local update and
 *	snapshots (mfd_ram_block_info()).  Not duplicated: it must stay open
 *	as long as the block is registered.
 * @fd_offset: where the block starts in @fd (a multiple of @page_size).
 * @cookie: the VMM's own pointer for the block (its memory slot, say),
 *	handed back to every hook that names the block.
 *
 * A zero-filled struct with @size, @name, @host, @length and @page_size set
 * is a private anonymous block: what mfd_ram_block_add() registers.
 */
struct mfd_ram_block_desc {
	uint32_t size;
	uint32_t flags;
	const char *name;
	void *host;
	uint64_t length;
	uint64_t page_size;
	uint64_t dirty_granularity;
	int32_t fd;
	uint32_t reserved;
	uint64_t fd_offset;
	void *cookie;
};

/**
 * mfd_ram_block_register() - register a block of guest RAM.
 * @m: the migration object, with no migration running.
 * @desc: the block; copied (the name too).
 * @errp: MFD_EEXIST for a duplicate name, MFD_EINVAL naming the bad member,
 *	MFD_ETOOBIG beyond MFD_RAM_BLOCKS_MAX, MFD_ESTATE while a migration
 *	runs (hot-plug between migrations, not during one).
 *
 * Blocks are sent in registration order; the destination must register the
 * same blocks (name, length, page size) in the same order.  Returns the
 * block's index (registration order, what hooks get as @block), or a
 * negative code.
 */
MFD_API int mfd_ram_block_register(mfd_migration *m, const struct mfd_ram_block_desc *desc,
				   mfd_error **errp);

/**
 * mfd_ram_block_add() - register a private anonymous block of guest RAM:
 * mfd_ram_block_register() with only the name, address and sizes.
 * @m: the migration object (no migration running).
 * @name: as mfd_ram_block_desc.name.
 * @host: as mfd_ram_block_desc.host.
 * @size: as mfd_ram_block_desc.length.
 * @page_size: as mfd_ram_block_desc.page_size.
 * @errp: as mfd_ram_block_register().
 *
 * Returns 0 or a negative code.
 */
MFD_API int mfd_ram_block_add(mfd_migration *m, const char *name, void *host, uint64_t size,
			      uint64_t page_size, mfd_error **errp);

/**
 * mfd_ram_block_remove() - unregister a block (hot-unplug between
 * migrations); the blocks after it move down one index.
 * @m: the migration object (no migration running).
 * @name: as registered.
 *
 * Returns 0, MFD_ENOENT, or MFD_ESTATE while a migration runs.
 */
MFD_API int mfd_ram_block_remove(mfd_migration *m, const char *name);

/**
 * mfd_ram_discard() - mark a range of a block as absent: unplugged
 * (virtio-mem, a hot-plug slot mapped PROT_NONE) or given back (a balloon).
 * @m: the migration object (no migration running).
 * @name: the block.
 * @offset: bytes into the block, a multiple of its page size.
 * @length: bytes, a non-zero multiple of its page size, inside the block.
 * @errp: MFD_ENOENT for an unknown block, MFD_EINVAL for a range that is
 *	not whole pages of the block, MFD_ESTATE while a migration runs.
 *
 * The source never reads nor sends an absent page, whatever the dirty log
 * says; a page the source sends into a range the destination marked absent
 * fails the load with MFD_EPROTO instead of being written (both sides
 * should mark the same ranges).  Ranges may overlap earlier ones and are
 * merged.  Returns 0 or a negative code.
 */
MFD_API int mfd_ram_discard(mfd_migration *m, const char *name, uint64_t offset,
			    uint64_t length, mfd_error **errp);

/**
 * mfd_ram_populate() - mark a range present again (plugged): the inverse
 * of mfd_ram_discard(), with the same arguments and errors.
 * @m: the migration object (no migration running).
 * @name: the block.
 * @offset: bytes into the block, a multiple of its page size.
 * @length: bytes, a non-zero multiple of its page size, inside the block.
 * @errp: as mfd_ram_discard().
 */
MFD_API int mfd_ram_populate(mfd_migration *m, const char *name, uint64_t offset,
			     uint64_t length, mfd_error **errp);

/**
 * mfd_ram_block_info() - what a registered block is.
 * @m: the migration object.
 * @index: the block's index (registration order).
 * @desc: receives the block's description (set @desc->size first; members
 *	past it are not written).  The name points into the library's copy,
 *	valid until the block is removed.
 * @absent_bytes: receives the bytes marked absent (NULL: not wanted).
 *
 * Returns 0, MFD_ENOENT past the last block, MFD_EINVAL for a NULL
 * argument or a @desc->size below the first layout.
 */
MFD_API int mfd_ram_block_info(mfd_migration *m, unsigned index, struct mfd_ram_block_desc *desc,
			       uint64_t *absent_bytes);

/**
 * struct mfd_ram_block_offer - a RAM block as the source announces it, for
 * the destination's vm_create hook.
 * @name: the block's name (NUL-terminated, 1..255 bytes).
 * @length: bytes.
 * @page_size: bytes per page.
 */
struct mfd_ram_block_offer {
	const char *name;
	uint64_t length;
	uint64_t page_size;
};

/** MFD_VM_CONFIG_MAX - largest VM configuration a migration carries. */
#define MFD_VM_CONFIG_MAX (1u << 20)

/**
 * mfd_migration_set_vm_config() - what the destination needs to build the
 * VM (machine type, vCPUs, devices, memory layout: the VMM's own format),
 * sent ahead of everything else and handed to its vm_create hook.
 * @m: the source side, with no migration running.
 * @config: copied; NULL with @len 0 removes it.
 * @len: bytes, at most MFD_VM_CONFIG_MAX.
 * @errp: MFD_ETOOBIG beyond the limit, MFD_EINVAL for NULL with a length,
 *	MFD_ESTATE while a migration runs, MFD_ENOMEM.
 *
 * A destination without a vm_create hook refuses a stream that carries one
 * (its "vm-config" section is unknown there).  Returns 0 or a negative code.
 */
MFD_API int mfd_migration_set_vm_config(mfd_migration *m, const void *config, size_t len,
					mfd_error **errp);

/* ------------------------------------------------------------------------ */
/* Parameters                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Parameters are set by name, with QEMU's names where they exist.  Each has
 * a type (integer, boolean or string) and a default; both sides of a
 * migration must agree on multifd-channels, multifd-compression and
 * multifd-packet-size (a mismatch fails the migration with a message).
 *
 *   multifd-channels          int 1..255, 2
 *   multifd-compression       string: none|zlib|zstd|lz4|<registered codec>, none
 *   multifd-zlib-level        int 0..9, 1
 *   multifd-zstd-level        int 1..20, 1
 *   multifd-lz4-level         int 1..65537 (acceleration), 1
 *   multifd-compression-adaptive bool, on (source): with a codec, each
 *                             channel compresses only while that moves its
 *                             pages sooner than sending them raw, measured
 *                             as it goes (a fast link goes raw, a slow one
 *                             compressed; the destination accepts both);
 *                             off: every packet that shrinks is compressed
 *   multifd-packet-size       int pages per packet 1..4096, 128
 *   zero-page-detection       string: none|legacy|multifd, multifd
 *   max-bandwidth             int bytes/s, 0 = unlimited, 0
 *   downtime-limit            int ms 1..2000000, 300
 *   avail-switchover-bandwidth int bytes/s, 0 = use the measured bandwidth
 *   auto-converge             bool, off
 *   cpu-throttle-initial      int percent 1..99, 20
 *   cpu-throttle-increment    int percent 1..99, 10
 *   max-cpu-throttle          int percent 1..99, 99
 *   postcopy-ram              bool, off  (both sides; needs the return path
 *                             and, on the destination, userfaultfd)
 *   postcopy-preempt          bool, off  (both sides; page requests and the
 *                             pages they ask for on a channel of their own)
 *   max-postcopy-bandwidth    int bytes/s, 0 = unlimited (background push)
 *   zero-copy-send            bool, off (source): multifd pages go with the
 *                             kernel's TCP zero-copy send (MSG_ZEROCOPY), the
 *                             kernel pinning guest pages instead of copying
 *                             them; every sync waits until it is done with
 *                             them.  Needs a tcp: URI, multifd-compression
 *                             none and no TLS (mfd_migrate() fails otherwise).
 *                             Pinned pages count against RLIMIT_MEMLOCK unless
 *                             the process has CAP_IPC_LOCK; a channel whose
 *                             pages cannot be pinned even with none in flight
 *                             copies from then on (logged once as a warning,
 *                             counted in mfd_stats).  Gains on real NICs; on
 *                             loopback and veth the kernel copies at delivery
 *                             (zero_copy_copied) and it gains nothing.
 *   tls-creds                 string: directory of x509 PEM files, "" = no TLS
 *                             (ca-cert.pem, own cert and key, optional
 *                             ca-crl.pem: see mfd_tls_creds_new_x509())
 *   tls-psk-file              string: identity:hexkey file, "" = no PSK
 *   tls-hostname              string (source, x509 only): server name to
 *                             verify, "" = the URI's host
 *   tls-authz                 string (destination): allowed client DNs
 *                             (x509) or PSK identities (PSK), separated by
 *                             '|', "" = any client the CA or PSK file admits
 *   tls-min-version           string: 1.2|1.3, 1.2: the lowest TLS version
 *                             accepted (x509; PSK is always TLS 1.3)
 *                             The TLS options above are refused by
 *                             mfd_migrate()/mfd_migrate_incoming() where
 *                             they would have no effect: without tls-creds
 *                             or tls-psk-file, tls-authz on the source,
 *                             tls-hostname on the destination or with PSK.
 *   channel-timeout-ms        int 100..3600000: deadline for connecting and
 *                             gathering channels and for any stalled I/O, 30000
 *   return-path               bool, on: the destination reports its result
 *   dest-ram-zeroed           bool, on (destination): a zero page that
 *                             arrives for a page not yet written in this
 *                             load is not written where the memory already
 *                             reads zero: not even read in a block
 *                             registered MFD_RAM_FRESH, read and compared in
 *                             any other; off: every zero page is read and
 *                             cleared where it is not zero
 *   switchover-confirm        bool, off (both sides; needs the return path):
 *                             the destination starts the VM only after the
 *                             source confirmed it got RESULT 0 (one more
 *                             round trip in the downtime); a source without
 *                             the result then restarts its VM instead of
 *                             ending in MFD_EUNKNOWN
 *   vm-stopped-externally     bool, off (source): the guest cannot run during
 *                             the migration (a stopped VM, a snapshot, a
 *                             test), so no vm_stop hook is needed.  Off, a
 *                             source with RAM blocks and no vm_stop hook is
 *                             refused (MFD_EINVAL): its vCPUs would write
 *                             the RAM being sent at switchover
 *
 * Booleans accept on/off, true/false, yes/no, 1/0.  Parameters may be set
 * until mfd_migrate()/mfd_migrate_incoming() starts; then MFD_ESTATE, except
 * max-bandwidth, max-postcopy-bandwidth, downtime-limit and
 * avail-switchover-bandwidth, which may change at any time from any thread
 * and take effect at once (as QEMU's migrate-set-parameters).
 */

/**
 * mfd_set_param() - set a parameter from its string form.
 * @m: the migration object.
 * @name: the parameter's name.
 * @value: the value as text ("4", "zstd", "on").
 * @errp: MFD_ENOENT for an unknown name, MFD_EINVAL naming the bounds for a
 *	bad value, MFD_ENOTSUP for a feature this build lacks.
 */
MFD_API int mfd_set_param(mfd_migration *m, const char *name, const char *value,
			  mfd_error **errp);

/**
 * mfd_set_param_int() - set an integer or boolean parameter.
 * @m: the migration object.
 * @name: the parameter's name.
 * @value: the value (0/1 for booleans).
 * @errp: as mfd_set_param(); MFD_EINVAL for a string parameter.
 */
MFD_API int mfd_set_param_int(mfd_migration *m, const char *name, int64_t value,
			      mfd_error **errp);

/**
 * mfd_get_param() - a parameter's value as text.
 * @m: the migration object.
 * @name: the parameter's name.
 * @buf: receives the NUL-terminated text.
 * @len: size of @buf; a value that does not fit is MFD_ETOOBIG (never cut).
 * @errp: error details.
 */
MFD_API int mfd_get_param(mfd_migration *m, const char *name, char *buf, size_t len,
			  mfd_error **errp);

/**
 * mfd_get_param_int() - an integer or boolean parameter's value.
 * @m: the migration object.
 * @name: the parameter's name.
 * @value: receives it.
 * @errp: error details; MFD_EINVAL for a string parameter.
 */
MFD_API int mfd_get_param_int(mfd_migration *m, const char *name, int64_t *value,
			      mfd_error **errp);

/**
 * mfd_param_bounds() - the range of an integer parameter.
 * @name: the parameter's name.
 * @min: receives the lowest accepted value.
 * @max: receives the highest.
 *
 * Returns 0, MFD_ENOENT for an unknown name, MFD_EINVAL for a string one.
 */
MFD_API int mfd_param_bounds(const char *name, int64_t *min, int64_t *max);

/** Types in struct mfd_param_info.type. */
#define MFD_PARAM_INT 0		/* an integer in [min, max] */
#define MFD_PARAM_BOOL 1	/* "on"/"off" (1/0 through the _int calls) */
#define MFD_PARAM_STRING 2	/* text: mfd_set_param() and mfd_get_param() only */
#define MFD_PARAM_CHOICE 3	/* one word of @choices (its index through the _int calls) */

/**
 * struct mfd_param_info - what mfd_param_next() says of one parameter.
 * @size: set by the caller to sizeof(struct mfd_param_info); the library
 *	writes no member past it.
 * @type: MFD_PARAM_INT, _BOOL, _STRING or _CHOICE.
 * @live: 1 when it may change while a migration runs.
 * @reserved: 0.
 * @min: lowest value (0 for a boolean or a choice; 0 for a string).
 * @max: highest value (1 for a boolean, the last index for a choice).
 * @name: its name, for mfd_set_param() (static storage).
 * @default_text: its default, as mfd_get_param() prints it (static).
 * @choices: for MFD_PARAM_CHOICE the accepted words, NULL-terminated
 *	(static); else NULL.
 */
struct mfd_param_info {
	uint32_t size;
	uint32_t type;
	uint32_t live;
	uint32_t reserved;
	int64_t min;
	int64_t max;
	const char *name;
	const char *default_text;
	const char *const *choices;
};

/**
 * mfd_param_next() - enumerate the parameters (for a VMM's own option
 * parser, a management API, bindings).
 * @index: 0 for the first; then what the previous call returned.
 * @info: filled (up to @info->size).
 *
 * Any thread.  Returns the index to pass next (> 0), 0 once there is no
 * parameter at @index, MFD_EINVAL for a NULL @info or a @size below the
 * first layout's.
 *
 *	struct mfd_param_info pi = { .size = sizeof(pi) };
 *	for (int i = 0; (i = mfd_param_next(i, &pi)) > 0;)
 *		printf("%s = %s\n", pi.name, pi.default_text);
 */
MFD_API int mfd_param_next(int index, struct mfd_param_info *info);

/* ------------------------------------------------------------------------ */
/* The migration engine                                                      */
/* ------------------------------------------------------------------------ */

/** enum mfd_state - where a migration is. */
enum mfd_state {
	MFD_STATE_NONE = 0,	/* never started */
	MFD_STATE_SETUP,	/* connecting channels, sending the setup sections */
	MFD_STATE_ACTIVE,	/* iterating: RAM and live sections while the VM runs */
	MFD_STATE_DEVICE,	/* VM stopped: final RAM and device state */
	MFD_STATE_COMPLETED,	/* the destination has everything and said so */
	MFD_STATE_FAILED,
	MFD_STATE_CANCELLING,
	MFD_STATE_CANCELLED,
	MFD_STATE_POSTCOPY_ACTIVE,	/* the destination runs the guest; pages follow */
	MFD_STATE_POSTCOPY_PAUSED,	/* postcopy lost its connection; waiting to recover */
	MFD_STATE_POSTCOPY_RECOVER,	/* reconnecting after a pause */
};

/**
 * mfd_state_name() - "none", "setup", "active", "device", "completed",
 * "failed", "cancelling", "cancelled", "postcopy-active", "postcopy-paused",
 * "postcopy-recover" (QEMU's status strings).  Any thread.
 * @state: the state.
 */
MFD_API const char *mfd_state_name(enum mfd_state state);

/**
 * struct mfd_policy_info - what a switchover policy decides on.
 * @iteration: completed passes over RAM (dirty-bitmap syncs).
 * @pending_bytes: bytes still to send before the VM may stop (RAM dirty
 *	pages and what live sections report).
 * @bandwidth: smoothed measured bytes/s of the migration.
 * @downtime_limit_ms: the downtime-limit parameter.
 * @switchover_cost_ms: measured fixed cost of the switchover itself: the
 *	slowest of the last 8 multifd SYNC rounds (0 without multifd).
 * @dirty_rate: bytes/s the guest dirtied during the last pass.
 */
struct mfd_policy_info {
	uint64_t iteration;
	uint64_t pending_bytes;
	uint64_t bandwidth;
	uint64_t downtime_limit_ms;
	uint64_t switchover_cost_ms;
	uint64_t dirty_rate;
};

/**
 * struct mfd_vmm_hooks - what the library asks of the VMM.
 *
 * Set @size to sizeof(struct mfd_vmm_hooks); NULL members are skipped, and
 * members past @size are taken as NULL (see mfd_migration_set_hooks()).  All
 * hooks run on the migration thread unless said otherwise, and get the
 * opaque pointer given to mfd_migration_set_hooks().
 *
 * @size: sizeof(struct mfd_vmm_hooks) as the caller was built with.
 * @vm_stop: stop the vCPUs (source, at switchover); a failure fails the
 *	migration and the VM keeps running.  Required on a source with RAM
 *	blocks, unless the vm-stopped-externally parameter says the guest
 *	cannot run (mfd_migrate() refuses the migration otherwise).
 * @vm_start: resume the vCPUs: on the source after a failure or cancel
 *	that happened while they were stopped, but never after the end of
 *	the stream went out unless the destination reported failure (the
 *	migration then ends with MFD_EUNKNOWN and the VMM decides); on the
 *	destination after the state is in place and RESULT 0 was written
 *	(with switchover-confirm, once the source confirmed).
 * @dirty_log_start: begin dirty tracking (e.g. KVM_MEM_LOG_DIRTY_PAGES).
 * @dirty_log_stop: end it (migration over, whatever the outcome).
 * @dirty_sync: report what the guest wrote in block @block (index in
 *	registration order, @cookie from its descriptor) since the last
 *	call by OR-ing one bit per dirty granule (the block's
 *	dirty_granularity, its page size by default) into @bitmap (@nbits
 *	bits, 64 per word, bit i of word w = granule w*64+i); the
 *	KVM_GET_DIRTY_LOG shape.  Without @dirty_clear the hook also restarts
 *	the log (write-protects again) before it returns; with @dirty_clear
 *	it must not (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: the library asks for
 *	each range just before it reads it).  mfd_ram_mark_dirty() works
 *	beside this hook: a sync takes both.  Without it only the built-in
 *	tracker (mfd_ram_mark_dirty()) reports writes.
 * @throttle: auto-converge: slow the vCPUs to run @percent of the time
 *	less (0 = full speed again).
 * @switchover_policy: precopy policy; return 1 to stop the VM and finish,
 *	0 to keep iterating, MFD_POLICY_POSTCOPY (2) to switch to postcopy
 *	(only honoured with postcopy-ram on; otherwise it means 0).  NULL uses
 *	the default: pending bytes / bandwidth + switchover cost <=
 *	downtime-limit; with postcopy-ram, also postcopy once precopy stalled:
 *	5 passes in a row without the pending bytes going below 90 % of their
 *	smallest figure (the guest dirties as fast as the link moves).  A
 *	stall is logged as a warning with its figures and counted in
 *	mfd_stats.precopy_stalls, with or without this hook.
 * @state_changed: the state moved from @from to @to, values of enum
 *	mfd_state (ints, as every enum value in a callback or a struct of
 *	this header: see docs/abi.md).  Called on the thread
 *	that changed it (the caller of mfd_migrate*() for none -> setup, the
 *	migration or incoming thread, or the canceller);
 *	must not call back into the library except the query functions.
 * @dirty_sync_begin: a sync round begins (@round counts from 1 for the
 *	migration): called once before the round's @dirty_sync calls (reap a
 *	dirty ring, collect a VFIO or vhost-user log here).  Called even
 *	without @dirty_sync.  A failure fails the migration.
 * @dirty_sync_end: the round's last @dirty_sync returned; not called when
 *	@dirty_sync_begin failed.
 * @dirty_clear: manual protection: the library is about to read the
 *	granules of block @block set in @mask (@nbits bits from granule
 *	@first, @first a multiple of 64, the layout of @dirty_sync's bitmap;
 *	KVM_CLEAR_DIRTY_LOG's shape): write-protect them again and clear
 *	their dirty bits, so a write from now on is reported by the next
 *	sync.  Every granule in @mask was reported by @dirty_sync (or is in
 *	the first pass, which sends every page: then @mask covers whole
 *	ranges, for KVM_DIRTY_LOG_INITIALLY_SET); the library calls it
 *	before it reads any of them, in ranges of at most 2^18 granules (1
 *	GiB of 4 KiB pages, as QEMU), never twice for a granule between two
 *	syncs, and not once the VM is stopped.  A granule outside @mask may
 *	have been written since the sync: it must keep its dirty bit.  A
 *	failure fails the migration (a page could otherwise be lost).
 * @vm_create: destination: the source's description arrived, before any
 *	RAM or device state loads: its VM configuration (set there with
 *	mfd_migration_set_vm_config(); NULL and 0 without one) and its RAM
 *	block table (@nblocks entries, valid during the call).  Build the VM
 *	here: the hook may register RAM blocks (mfd_ram_block_register() and
 *	the other block calls) and sections (mfd_register*(), their
 *	load_setup runs after the hook), which a running migration otherwise
 *	refuses; afterwards the table must match the source's (else
 *	MFD_EPROTO naming the block).  Called once, on the incoming thread,
 *	when the source's RAM section starts (a source with RAM blocks or a
 *	VM configuration always sends one).  With this hook the destination
 *	may start with no blocks at all.  A failure fails the load.
 */
typedef struct mfd_vmm_hooks {
	uint32_t size;
	int (*vm_stop)(void *opaque, mfd_error **errp);
	int (*vm_start)(void *opaque, mfd_error **errp);
	int (*dirty_log_start)(void *opaque, mfd_error **errp);
	void (*dirty_log_stop)(void *opaque);
	int (*dirty_sync)(void *opaque, unsigned block, void *cookie, uint64_t *bitmap,
			  uint64_t nbits, mfd_error **errp);
	void (*throttle)(void *opaque, int percent);
	int (*switchover_policy)(void *opaque, const struct mfd_policy_info *info);
	void (*state_changed)(void *opaque, int from, int to);
	int (*dirty_sync_begin)(void *opaque, uint64_t round, mfd_error **errp);
	int (*dirty_sync_end)(void *opaque, uint64_t round, mfd_error **errp);
	int (*dirty_clear)(void *opaque, unsigned block, void *cookie, uint64_t first,
			   uint64_t nbits, const uint64_t *mask, mfd_error **errp);
	int (*vm_create)(void *opaque, const void *config, size_t config_len,
			 const struct mfd_ram_block_offer *blocks, unsigned nblocks,
			 mfd_error **errp);
} mfd_vmm_hooks;

/** MFD_POLICY_POSTCOPY - switchover_policy's answer "start postcopy now". */
#define MFD_POLICY_POSTCOPY 2

/**
 * mfd_migration_set_hooks() - install the VMM's hooks.
 * @m: the migration object (not migrating).
 * @hooks: copied (min(@hooks->size, the library's size) bytes).
 * @opaque: passed to every hook.
 * @errp: MFD_EINVAL for a @size below the first layout's (the members up
 *	to @state_changed); MFD_ENOTSUP for a @size beyond the library's with
 *	a non-zero byte there (a program built for a newer libmultifd that
 *	sets hooks this library does not know); MFD_ESTATE while migrating.
 */
MFD_API int mfd_migration_set_hooks(mfd_migration *m, const mfd_vmm_hooks *hooks, void *opaque,
				    mfd_error **errp);

/**
 * mfd_ram_mark_dirty() - the built-in dirty tracker: note that the guest
 * wrote [@addr, @addr + @len).
 * @m: the migration object.
 * @addr: a host address inside a registered RAM block.
 * @len: bytes.
 *
 * Any thread, lock-free; cheap enough to call on every guest write a VMM
 * emulates.  Used when no dirty_sync hook is installed.  Addresses outside
 * every block are ignored.
 */
MFD_API void mfd_ram_mark_dirty(mfd_migration *m, const void *addr, size_t len);

/**
 * mfd_migrate() - start migrating to @uri and return at once.
 * @m: the source side, with RAM blocks, sections, hooks and parameters set.
 * @uri: "tcp:HOST:PORT" or "unix:PATH" (main channel plus
 *	multifd-channels more); "fd:N" or "file:PATH" carry everything on the
 *	one channel (RAM pages on the main stream, no multifd).
 * @errp: MFD_ESTATE when a migration is running; MFD_EINVAL when RAM
 *	blocks are registered without a vm_stop hook (unless
 *	vm-stopped-externally is on); parameter problems.
 *
 * The migration thread connects, runs the section handlers in QEMU's
 * order, asks @vm_stop at switchover, and ends completed, failed or
 * cancelled; see mfd_migration_wait().  A failure after the end of the
 * stream went out, without the destination's result, is MFD_EUNKNOWN and
 * leaves the VM stopped (see enum mfd_errcode).  A finished migration
 * object can migrate again.
 */
MFD_API int mfd_migrate(mfd_migration *m, const char *uri, mfd_error **errp);

/**
 * mfd_migrate_incoming() - start listening on @uri and return at once.
 * @m: the destination side, with the same RAM blocks and sections.
 * @uri: as mfd_listener_new(); "tcp:HOST:0" picks a port, see
 *	mfd_migration_listen_uri().
 * @errp: error details.
 *
 * The incoming thread waits (without a deadline; mfd_migrate_cancel() stops
 * it) for the source's main channel, then for its multifd channels within
 * channel-timeout-ms, loads the stream, places RAM, reports the result to
 * the source through the return path, calls @vm_start and ends completed
 * or failed.  @vm_start is called only once that report was written; if
 * it fails afterwards the error says the VM runs nowhere (the source has
 * completed).  Connections that are not the source's (silent past a hello
 * deadline, junk, a foreign hello or session token, a failed TLS handshake)
 * are closed and logged as warnings, and the wait goes on; more than 64 of
 * them fail the migration with MFD_EPROTO (docs/security.md §4.1).  The
 * listener closes once the session's channels are all in.
 */
MFD_API int mfd_migrate_incoming(mfd_migration *m, const char *uri, mfd_error **errp);

/**
 * struct mfd_channel_set - connections a VMM opened itself (a jailer or an
 * orchestrator passed their fds, or they go over several NICs).
 * @size: sizeof(struct mfd_channel_set) as the caller was built with;
 *	members past it are taken as 0.
 * @main: the main channel: the section stream, and the return path when it
 *	is on (a bidirectional socket then).  Required.
 * @preempt: the postcopy-preempt channel; required when postcopy-ram and
 *	postcopy-preempt are on, refused otherwise.
 * @nmultifd: how many multifd channels @multifd holds: multifd-channels, or
 *	0 to carry everything on @main (as an fd: URI: no multifd, no return
 *	path, no postcopy).
 * @multifd: the multifd channels, NULL when @nmultifd is 0.
 *
 * Wrap descriptors with mfd_channel_new_fd() (MFD_CHANNEL_OWN_FD to let the
 * migration close them).  Each side gives its own ends of the same
 * connections; TLS, when configured, is set up on them by the library.
 */
struct mfd_channel_set {
	uint32_t size;
	uint32_t nmultifd;
	mfd_channel *main;
	mfd_channel *preempt;
	mfd_channel **multifd;
};

/**
 * mfd_migrate_channels() - mfd_migrate() over connections the VMM opened.
 * @m: the source side, as for mfd_migrate().
 * @set: the connections; the migration takes every channel in it, also
 *	when this call fails (they are freed then), and frees them when it
 *	ends.  The array @set->multifd itself stays the caller's.
 * @errp: MFD_EINVAL for a malformed set (a @size below the first layout's,
 *	no main channel, a multifd count that is not multifd-channels, a
 *	preempt channel missing or not expected); MFD_ENOTSUP for a @size
 *	beyond the library's with a non-zero byte there; as mfd_migrate()
 *	otherwise.
 *
 * Everything else is mfd_migrate()'s: the hellos go out on these channels
 * as on connections the library opened.  A postcopy recovery reconnects by
 * URI (mfd_migrate_resume()).  For x509 TLS set tls-hostname: there is no
 * URI host to verify the destination's certificate against.
 */
MFD_API int mfd_migrate_channels(mfd_migration *m, const struct mfd_channel_set *set,
				 mfd_error **errp);

/**
 * mfd_migrate_incoming_channels() - mfd_migrate_incoming() over connections
 * the VMM accepted (or was passed).
 * @m: the destination side, as for mfd_migrate_incoming().
 * @set: the destination's ends, taken as by mfd_migrate_channels().  The
 *	multifd channels may come in any order: each says which it is in its
 *	hello.
 * @errp: MFD_EINVAL for a malformed set; as mfd_migrate_incoming()
 *	otherwise.
 *
 * The library checks every channel's hello as it checks an accepted
 * connection's (session, token, TLS), but does not take a bad one for a
 * stray: the VMM vouched for these, so the migration fails naming the
 * channel and why.  A postcopy recovery listens on a URI
 * (mfd_migrate_recover()).
 */
MFD_API int mfd_migrate_incoming_channels(mfd_migration *m, const struct mfd_channel_set *set,
					  mfd_error **errp);

/**
 * mfd_migration_listen_uri() - where mfd_migrate_incoming() listens.
 * @m: the destination side.
 * @buf: receives the URI.
 * @len: size of @buf.
 *
 * Returns 0, MFD_ESTATE when not listening, MFD_ETOOBIG when @buf is short.
 */
MFD_API int mfd_migration_listen_uri(mfd_migration *m, char *buf, size_t len);

/**
 * mfd_migration_event_fd() - a descriptor that becomes readable when the
 * migration moves, for a VMM built around an event loop (epoll, poll).
 * @m: either side.
 *
 * An eventfd owned by @m (never close it; it lives until
 * mfd_migration_free() and serves every migration of @m): each state change
 * (the state_changed hook's moves) and the end of a migration, once
 * mfd_migration_wait() no longer blocks, add to its counter.  Read its 8
 * bytes to reset it, then ask mfd_migration_state(); at the end call
 * mfd_migration_wait() for the result.  Several changes between two reads
 * wake the loop once.  Non-blocking and close-on-exec.
 *
 * Returns the descriptor, MFD_EINVAL for a NULL @m, or MFD_ENOMEM/MFD_EIO
 * when no eventfd could be made.
 */
MFD_API int mfd_migration_event_fd(mfd_migration *m);

/**
 * mfd_migration_wait() - wait for the end of a migration.
 * @m: either side.
 * @timeout_ms: 0 = forever.
 * @errp: the migration's error when it failed or was cancelled.
 *
 * Returns 0 when completed, MFD_ERUNNING when still running after
 * @timeout_ms (nothing failed: wait again, or cancel), MFD_ESTATE when none
 * was started, else the migration's error code (MFD_ETIMEDOUT then means
 * the migration itself failed on a deadline, e.g. channel-timeout-ms).
 * Joins the migration thread once it ended; calling it again returns the
 * same result.
 */
MFD_API int mfd_migration_wait(mfd_migration *m, int timeout_ms, mfd_error **errp);

/**
 * mfd_migrate_cancel() - cancel a running migration.  Any thread, any
 * state; a no-op when nothing runs.  The source ends cancelled with its VM
 * running; the destination ends failed.
 * @m: either side.
 */
MFD_API void mfd_migrate_cancel(mfd_migration *m);

/**
 * mfd_migrate_start_postcopy() - switch a running precopy migration to
 * postcopy at the next iteration boundary.  Any thread.
 * @m: the source side, migrating with postcopy-ram on.
 * @errp: MFD_ESTATE when no precopy migration with postcopy-ram runs.
 *
 * The migration thread runs every section's save_postcopy_prepare (RAM
 * flushes and syncs multifd there, so no precopy page can land after
 * postcopy placed a newer one), stops the VM, sends the discard list and
 * the device state, and the destination starts the guest; the remaining
 * pages follow on the main channel, requested pages first (on the preempt
 * channel with postcopy-preempt).  If the connection breaks from here on,
 * both sides go to postcopy-paused instead of failing: see
 * mfd_migrate_recover() and mfd_migrate_resume().
 */
MFD_API int mfd_migrate_start_postcopy(mfd_migration *m, mfd_error **errp);

/**
 * mfd_migrate_recover() - destination: listen on @uri for the source to
 * reconnect a paused postcopy migration.  Any thread.
 * @m: the destination side, in postcopy-paused.
 * @uri: as mfd_migrate_incoming(); "tcp:HOST:0" picks a port, see
 *	mfd_migration_listen_uri().
 * @errp: MFD_ESTATE when not paused; listener errors.
 *
 * The guest keeps running on the pages it has; threads touching a missing
 * page wait.  Once the source resumes (mfd_migrate_resume()), the
 * destination sends its received-pages bitmap, re-requests the pages its
 * guest waits for, and postcopy continues to completion.
 */
MFD_API int mfd_migrate_recover(mfd_migration *m, const char *uri, mfd_error **errp);

/**
 * mfd_migrate_resume() - source: reconnect a paused postcopy migration to
 * the destination's recovery listener.  Any thread.
 * @m: the source side, in postcopy-paused.
 * @uri: where the destination's mfd_migrate_recover() listens.
 * @errp: MFD_ESTATE when not paused.
 *
 * Returns once the request is queued; the migration thread reconnects
 * (main channel, and the preempt channel with postcopy-preempt), proves it
 * is the same session, fetches the destination's received-pages bitmap and
 * sends what is missing.  A failed attempt leaves the migration paused, so
 * it can be retried.
 */
MFD_API int mfd_migrate_resume(mfd_migration *m, const char *uri, mfd_error **errp);

/**
 * mfd_migration_approve_switchover() - a destination device is ready for the
 * source to switch over.  Any thread, typically from a load handler.
 * @m: the destination side.
 *
 * Each section whose switchover_ack_needed handler returned true calls it
 * once; the last call sends SWITCHOVER_ACK on the return path.  Returns 0,
 * MFD_ESTATE when no incoming migration is waiting for approvals.
 */
MFD_API int mfd_migration_approve_switchover(mfd_migration *m);

/**
 * mfd_migration_state() - the current state.  Any thread.
 * @m: either side.
 */
MFD_API enum mfd_state mfd_migration_state(mfd_migration *m);

/**
 * struct mfd_stats - what query-migrate reports, plus ours.
 *
 * Set @size to sizeof(struct mfd_stats) before calling mfd_migration_stats();
 * fields past @size are not written, so later versions can append fields.
 * Times in ms, sizes in bytes.  @status is a value of enum mfd_state (an
 * int32_t: docs/abi.md).
 */
struct mfd_stats {
	uint32_t size;
	int32_t status;
	uint64_t total_time, setup_time, downtime, expected_downtime;
	uint64_t ram_transferred, ram_remaining, ram_total;
	uint64_t ram_duplicate, ram_normal, ram_normal_bytes;
	uint64_t ram_dirty_sync_count, ram_dirty_pages_rate;
	double ram_mbps;
	uint64_t ram_pages_per_second, ram_multifd_bytes, ram_postcopy_requests;
	uint64_t iterations;
	int throttle_percent;
	unsigned channels;
	uint64_t multifd_syncs, multifd_sync_ms_max;
	double compression_ratio;	/* wire bytes / page bytes, 1 without a codec */
	uint64_t channel_bytes[256], channel_packets[256], channel_busy_ms[256];
	/* Postcopy (destination: faults it served; source: requests it served). */
	uint64_t postcopy_faults;		/* destination: missing-page faults */
	uint64_t postcopy_fault_us_median;	/* fault to page placed */
	uint64_t postcopy_fault_us_p99;
	uint64_t postcopy_fault_us_max;
	uint64_t postcopy_blocktime_ms;		/* sum of the time faulting threads waited */
	uint64_t postcopy_pauses;		/* connection losses survived */
	uint64_t postcopy_time_ms;		/* from the switch to the end */
	/* zero-copy-send (source). */
	uint64_t zero_copy_bytes;		/* page bytes handed over without a copy */
	uint64_t zero_copy_sends;		/* zero-copy sends the kernel completed */
	uint64_t zero_copy_copied;		/* of which it copied after all (loopback) */
	uint64_t dirty_sync_missed_zero_copy;	/* channel syncs that found a send copied */
	unsigned zero_copy_refused_channels;	/* copying: the kernel refused to pin pages */
	/* Source: times precopy stalled (5 passes in a row without the pending
	 * bytes going below 90 % of their smallest figure); see switchover_policy. */
	uint64_t precopy_stalls;
};

/**
 * mfd_migration_stats() - a snapshot of the statistics.  Any thread.
 * @m: either side.
 * @st: filled up to st->size bytes.
 */
MFD_API int mfd_migration_stats(mfd_migration *m, struct mfd_stats *st);

/**
 * mfd_migration_stats_json() - the statistics as a JSON object with
 * query-migrate's key names ("status", "total-time", "ram": {"transferred",
 * ...}) plus a "multifd" object of ours.  Any thread.
 * @m: either side.
 *
 * Returns a malloc'd string the caller frees, or NULL without memory.
 */
MFD_API char *mfd_migration_stats_json(mfd_migration *m);

/* ------------------------------------------------------------------------ */
/* Whole-state save and load (snapshot) over one channel                      */
/* ------------------------------------------------------------------------ */

/**
 * mfd_savevm() - write the complete state of every registered section as a
 * savevm v3 stream, with the VM assumed stopped.
 * @m: the migration object.
 * @ch: where to write (a file, socket, pipe or memory writer).
 * @errp: error details (which section failed, and why).
 *
 * Runs save_prepare, save_setup (START), save_live_iterate (PART) until
 * every live section reports it is done, save_live_complete_precopy (END),
 * save_state (FULL), writes EOF, flushes, and finally runs save_cleanup.
 * Handlers run on the calling thread.  With the VM stopped a live section
 * must eventually report done from save_live_iterate; one that never does
 * keeps this call iterating.
 */
MFD_API int mfd_savevm(mfd_migration *m, mfd_channel *ch, mfd_error **errp);

/**
 * mfd_loadvm() - read a stream written by mfd_savevm() and hand every
 * section to its registered handler.  (Streams of the migration engine, even
 * on file:, start with its own hello and carry RAM: load those with
 * mfd_migrate_incoming().)
 * @m: the migration object, with the same sections registered.
 * @ch: where to read.
 * @errp: error details; every malformed input gets its own code and a
 *        message with the byte offset and the offending value.
 *
 * Checks the header and configuration first; then runs load_setup for each
 * section, loads until EOF, and runs load_cleanup for each section that
 * was set up, whatever the outcome.  The reader buffers ahead: bytes that
 * follow the EOF record on @ch may have been consumed.  Handler codes
 * outside enum mfd_errcode are reported as MFD_EHANDLER.
 */
MFD_API int mfd_loadvm(mfd_migration *m, mfd_channel *ch, mfd_error **errp);

#ifdef __cplusplus
}
#endif

#endif /* MULTIFD_MULTIFD_H */
