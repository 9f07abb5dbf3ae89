/* SPDX-License-Identifier: MIT */
/*
 * The multifd channel protocol: the hello each channel starts with and the
 * packets that follow.  docs/wire-format.md describes every byte.  All
 * integers are big-endian.
 */
#ifndef MFD_MULTIFD_WIRE_H
#define MFD_MULTIFD_WIRE_H

#include <stdint.h>

#define MFD_HELLO_MAGIC 0x4d464448u	/* "MFDH" */
#define MFD_HELLO_VERSION 1u
#define MFD_UUID_LEN 16
#define MFD_TOKEN_LEN 32

/*
 * Hello, 128 bytes:
 *   0  be32 magic            4  be32 version          8  be32 flags (0)
 *  12  be16 channel id      14  be16 channel count   16  be32 packet bytes
 *  20  be32 reserved (0)    24  be64 block digest     32  16 session UUID
 *  48  32 token             80  u8 codec name length 81  31 codec name (NUL padded)
 * 112  16 reserved (0)
 */
#define MFD_HELLO_SIZE 128
#define MFD_HELLO_CODEC_MAX 31

/* Packet header, 32 bytes, then (normal + zero) be64 offsets, then the payload:
 *   0  be32 magic    4  be16 version   6  be16 flags
 *   8  be32 block index               12  be32 normal pages
 *  16  be32 zero pages                20  be32 payload bytes
 *  24  be64 packet number
 */
#define MFD_PACKET_MAGIC 0x4d464450u	/* "MFDP" */
#define MFD_PACKET_VERSION 1u
#define MFD_PACKET_HEADER_SIZE 32

enum mfd_packet_flag {
	MFD_PACKET_SYNC = 0x1,		/* every page sent before it is on its way */
	MFD_PACKET_COMPRESSED = 0x2,	/* payload is the codec's output, else raw pages */
	MFD_PACKET_END = 0x4,		/* the last packet of this channel */
};
#define MFD_PACKET_FLAGS_KNOWN (MFD_PACKET_SYNC | MFD_PACKET_COMPRESSED | MFD_PACKET_END)

/* Default and limits of the packet size, in bytes of page data. */
#define MFD_PACKET_BYTES_DEFAULT (512u << 10)
#define MFD_PACKET_BYTES_MIN (4u << 10)
#define MFD_PACKET_BYTES_MAX (16u << 20)

#endif /* MFD_MULTIFD_WIRE_H */
