/* SPDX-License-Identifier: MIT */
/*
 * "test-rle": a toy codec as a VMM would register one, shared by the
 * compress and multifd suites (one name, one implementation).
 */
#ifndef MFD_TESTCODEC_H
#define MFD_TESTCODEC_H

#include <multifd/multifd.h>

extern const mfd_compress_ops test_rle_ops;

#endif /* MFD_TESTCODEC_H */
