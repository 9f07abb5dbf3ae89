/* SPDX-License-Identifier: MIT */
/*
 * "test-rle": a toy codec as a VMM would register one, shared by the
 * compress and multifd suites (one name, one implementation).
 */
#ifndef MFD_TESTCODEC_H
#define MFD_TESTCODEC_H

#include <stdatomic.h>

#include <multifd/multifd.h>

/* What test-rle's opaque pointer points to: its setup calls, counted. */
struct test_rle_state {
	atomic_uint send_setups, recv_setups;
};
extern struct test_rle_state test_rle_state;

extern const mfd_compress_ops test_rle_ops;

#endif /* MFD_TESTCODEC_H */
