/* SPDX-License-Identifier: MIT */
/*
 * Every constant of the wire, in one private header that the library and the
 * tools (multifd dump) share.  docs/wire-format.md describes every byte; the
 * section numbers below are its.  All integers are big-endian.
 */
#ifndef MFD_CORE_WIRE_H
#define MFD_CORE_WIRE_H

#include <stdint.h>

/* ---- 3. The main stream (the savevm v3 protocol) -------------------------- */

#define MFD_VM_FILE_MAGIC 0x5145564du	/* "QEVM" */
#define MFD_VM_FILE_VERSION 3u
#define MFD_VM_FILE_VERSION_COMPAT 2u	/* obsolete; refused with its own message */

/* Top-level record types. */
enum mfd_vm_record {
	MFD_VM_EOF = 0x00,
	MFD_VM_SECTION_START = 0x01,
	MFD_VM_SECTION_PART = 0x02,
	MFD_VM_SECTION_END = 0x03,
	MFD_VM_SECTION_FULL = 0x04,
	MFD_VM_SUBSECTION = 0x05,
	MFD_VM_VMDESCRIPTION = 0x06,
	MFD_VM_CONFIGURATION = 0x07,
	MFD_VM_COMMAND = 0x08,
	MFD_VM_SECTION_FOOTER = 0x7e,
};

/* Commands carried in MFD_VM_COMMAND records. */
enum mfd_vm_cmd {
	MFD_CMD_INVALID = 0,
	MFD_CMD_OPEN_RETURN_PATH = 1,
	MFD_CMD_PING = 2,
	MFD_CMD_POSTCOPY_ADVISE = 3,
	MFD_CMD_POSTCOPY_LISTEN = 4,
	MFD_CMD_POSTCOPY_RUN = 5,
	MFD_CMD_POSTCOPY_RAM_DISCARD = 6,
	MFD_CMD_PACKAGED = 7,
	MFD_CMD_ENABLE_COLO = 8,
	MFD_CMD_POSTCOPY_RESUME = 9,
	MFD_CMD_RECV_BITMAP = 10,
	MFD_CMD_SWITCHOVER_START = 11,
	MFD_CMD_MAX
};

#define MFD_DISCARD_VERSION 0	/* POSTCOPY_RAM_DISCARD's version byte */

/* ---- 8. The multifd channels ------------------------------------------------ */

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

/* ---- 7. The migration engine's framing -------------------------------------- */

/* RAM record flags in the low bits of a be64 (offset | flags) word, QEMU's values. */
#define RAM_FLAG_ZERO 0x002u
#define RAM_FLAG_MEM_SIZE 0x004u
#define RAM_FLAG_PAGE 0x008u
#define RAM_FLAG_EOS 0x010u
#define RAM_FLAG_CONTINUE 0x020u
#define RAM_FLAG_MULTIFD_FLUSH 0x200u
#define RAM_FLAGS_MASK 0xfffu	/* offsets are multiples of >= 4 KiB pages */
#define RAM_SECTION_VERSION 1u

/* Main-channel hello, 128 bytes, sent before the savevm stream. */
#define MAIN_HELLO_MAGIC 0x4d46444du	/* "MFDM" */
#define MAIN_HELLO_VERSION 1u
#define MAIN_HELLO_SIZE 128
#define MAIN_HELLO_RETURN_PATH 0x1u
#define MAIN_HELLO_PREEMPT 0x2u		/* a preempt channel follows the main channel */
#define MAIN_HELLO_RESUME 0x4u		/* postcopy recovery: reconnecting a paused session */
#define MAIN_HELLO_POSTCOPY 0x8u	/* postcopy-ram is on at the source */
#define MAIN_HELLO_CONFIRM 0x10u	/* switchover-confirm is on at the source */
#define MAIN_HELLO_FLAGS 0x1fu
/* switchover-confirm: after the destination's RESULT 0 the source writes
 * be32 SWITCHOVER_CONFIRM_MAGIC, be32 1 on the main channel, after EOF. */
#define SWITCHOVER_CONFIRM_MAGIC 0x4d464443u	/* "MFDC" */
#define SWITCHOVER_CONFIRM_LEN 8

/* Preempt-channel hello, 128 bytes: magic, version, flags, UUID at 32, token at 48. */
#define PREEMPT_HELLO_MAGIC 0x4d464451u	/* "MFDQ" */
#define PREEMPT_HELLO_VERSION 2u	/* 2: page requests travel on it (7.4) */
#define PREEMPT_HELLO_SIZE 128

/* Return-path messages: be16 type, be16 length, payload. */
enum rp_type {
	RP_PONG = 1,		/* be32 value */
	RP_RESULT = 2,		/* be32 code (0 = loaded), then the message bytes */
	RP_SWITCHOVER_ACK = 3,	/* nothing: the destination consents to switchover */
	RP_REQ_PAGES = 4,	/* be16 block, be16 0, be32 length, be64 offset: postcopy wants pages */
	RP_RECV_BITMAP = 5,	/* be16 block, be16 0, be32 0, be64 bytes; then the bitmap and
				 * be64 RECV_BITMAP_END outside the message */
	RP_RESUME_ACK = 6,	/* be32 1: the destination resumed postcopy */
};
#define RP_MSG_MAX 4096
#define RP_REQ_PAGES_LEN 16
#define RP_REQ_MAX_BYTES (1u << 21)	/* most bytes one page request may ask for */
#define RP_RECV_BITMAP_LEN 16
#define RECV_BITMAP_END 0x0123456789abcdefull

#endif /* MFD_CORE_WIRE_H */
