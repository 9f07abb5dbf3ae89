/* SPDX-License-Identifier: MIT */
/*
 * libmultifd version numbers, known at compile time.
 *
 * The shared library's soname follows MFD_ABI_VERSION (libmultifd.so.<ABI>),
 * which only changes when the binary interface breaks.  Use mfd_version() to
 * learn the version of the library actually loaded at run time.
 */
#ifndef MULTIFD_VERSION_H
#define MULTIFD_VERSION_H

#define MFD_VERSION_MAJOR 0
#define MFD_VERSION_MINOR 1
#define MFD_VERSION_PATCH 0
#define MFD_VERSION_STRING "0.1.0"

/** MFD_ABI_VERSION - soname number of the shared library. */
#define MFD_ABI_VERSION 1

/** MFD_VERSION_NUMBER - the version as one comparable integer (major*10000 + minor*100 + patch). */
#define MFD_VERSION_NUMBER \
	(MFD_VERSION_MAJOR * 10000 + MFD_VERSION_MINOR * 100 + MFD_VERSION_PATCH)

#endif /* MULTIFD_VERSION_H */
