/* SPDX-License-Identifier: MIT */
/*
 * Peer bytes made safe to print: every name, identity or text that came off
 * the wire goes through escape_bytes() before it reaches an mfd_error
 * message or a log line, so a peer cannot forge lines or send terminal
 * escapes to whoever reads them.
 */
#ifndef MFD_CORE_ESCAPE_H
#define MFD_CORE_ESCAPE_H

#include <stddef.h>

/* Enough for a 255-byte wire name in the common case; longer renderings are
 * cut and end in "...". */
#define ESCAPE_BUF_SIZE 256

/*
 * Render @len bytes at @data into @out (@size bytes, NUL-terminated) as
 * printable ASCII: bytes 0x20..0x7e stay as they are except the backslash
 * ("\\"); newline, carriage return and tab become "\n", "\r", "\t"; every
 * other byte (controls, DEL, NUL, bytes >= 0x80) becomes "\xNN".  An
 * escape is never cut in half: when the rest does not fit, "..." ends the
 * text.  @size must be at least 4 (else @out gets "" if @size > 0).
 * Returns @out, so that a call can be a printf argument.
 */
const char *escape_bytes(char *out, size_t size, const void *data, size_t len);

/* escape_bytes() of the NUL-terminated string @s (NULL prints as "(null)"). */
const char *escape_str(char *out, size_t size, const char *s);

#endif
