/* SPDX-License-Identifier: MIT */
/*
 * Internal extras of mfd_stream.
 */
#ifndef MFD_CORE_STREAM_H
#define MFD_CORE_STREAM_H

#include <multifd/multifd.h>

/* Name used at the start of error messages ("main stream"); copied. */
int stream_set_label(mfd_stream *s, const char *label);
const char *stream_label(const mfd_stream *s);

/* Reading: bytes already buffered, which the next reads take without waiting. */
size_t stream_buffered(const mfd_stream *s);

/* The latched error itself (owned by the stream), or NULL. */
const mfd_error *stream_last_error(const mfd_stream *s);

#endif /* MFD_CORE_STREAM_H */
