/* SPDX-License-Identifier: MIT */
/*
 * The hellos of the main and preempt channels: encoders and the destination's checks.
 * Wire layout in docs/wire-format.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/internal.h"

/* Reserved bytes are zero on the wire; a peer that sets them speaks something
 * we do not know.  Returns the offset of the first non-zero byte or -1. */
int eng_first_nonzero(const uint8_t *h, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		if (h[i])
			return (int)i;
	return -1;
}

void eng_main_hello_encode(struct mfd_engine *e, uint8_t h[MAIN_HELLO_SIZE], bool resume)
{
	const char *codec = e->mcfg.codec ? e->mcfg.codec->name : "none";
	uint32_t flags = (e->use_rp ? MAIN_HELLO_RETURN_PATH : 0) |
			 (e->postcopy ? MAIN_HELLO_POSTCOPY : 0) | (e->preempt ? MAIN_HELLO_PREEMPT : 0) |
			 (resume ? MAIN_HELLO_RESUME : 0) | (e->confirm ? MAIN_HELLO_CONFIRM : 0);

	memset(h, 0, MAIN_HELLO_SIZE);
	store_be32(h, MAIN_HELLO_MAGIC);
	store_be32(h + 4, MAIN_HELLO_VERSION);
	store_be32(h + 8, flags);
	store_be16(h + 12, (uint16_t)(e->use_multifd ? e->nchan : 0));
	store_be32(h + 16, e->mcfg.packet_bytes);
	memcpy(h + 32, e->mcfg.uuid, MFD_UUID_LEN);
	memcpy(h + 48, e->mcfg.token, MFD_TOKEN_LEN);
	h[80] = (uint8_t)strlen(codec);
	memcpy(h + 81, codec, strlen(codec));
}

/* Destination: the main hello fixes the session; the multifd hellos are checked
 * against it. */
int eng_main_hello_check(struct mfd_engine *e, mfd_channel *ch, bool *stray,
			    mfd_error **errp)
{
	uint8_t h[MAIN_HELLO_SIZE];
	struct iovec iov = { h, sizeof(h) };
	const char *want = e->mcfg.codec ? e->mcfg.codec->name : "none";
	char codec[32], esc[ESCAPE_BUF_SIZE];
	unsigned n;
	int r = channel_readv_full(ch, &iov, 1, errp);

	/* Nothing, junk or someone else's hello: not a source of ours. */
	*stray = true;
	if (r < 0)
		return r;
	if (load_be32(h) == MFD_HELLO_MAGIC)
		return mfd_error_set(errp, MFD_EPROTO,
				     "a multifd channel arrived before the main channel");
	if (load_be32(h) != MAIN_HELLO_MAGIC)
		return mfd_error_set(errp, MFD_EBADMAGIC,
				     "main channel: magic 0x%08x, expected 0x%08x (not a libmultifd "
				     "source?)", load_be32(h), MAIN_HELLO_MAGIC);
	if (load_be32(h + 4) != MAIN_HELLO_VERSION)
		return mfd_error_set(errp, MFD_EBADVERSION, "main channel: hello version %u, this "
				     "library speaks %u", load_be32(h + 4), MAIN_HELLO_VERSION);
	/* A libmultifd source: what does not match is a configuration error. */
	*stray = false;
	uint32_t flags = load_be32(h + 8);

	if (flags & ~MAIN_HELLO_FLAGS)
		return mfd_error_set(errp, MFD_EPROTO, "main channel: unknown hello flags 0x%x",
				     flags);
	if (flags & MAIN_HELLO_RESUME)
		return mfd_error_set(errp, MFD_ESTATE, "main channel: the source resumes a paused "
				     "postcopy migration, but this side starts a new one (use "
				     "mfd_migrate_recover() on the paused destination)");
	if (!!(flags & MAIN_HELLO_POSTCOPY) != e->postcopy ||
	    !!(flags & MAIN_HELLO_PREEMPT) != e->preempt)
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source has postcopy-ram %s and postcopy-preempt %s, this side "
				     "%s and %s (set them alike on both sides)",
				     flags & MAIN_HELLO_POSTCOPY ? "on" : "off",
				     flags & MAIN_HELLO_PREEMPT ? "on" : "off", e->postcopy ? "on" : "off",
				     e->preempt ? "on" : "off");
	if (e->postcopy && !(flags & MAIN_HELLO_RETURN_PATH))
		return mfd_error_set(errp, MFD_EPROTO, "postcopy-ram needs the return path, which "
				     "the source turned off");
	if (!!(flags & MAIN_HELLO_CONFIRM) != e->confirm)
		return mfd_error_set(errp, MFD_EPROTO, "the source has switchover-confirm %s, this "
				     "side %s (set it alike on both sides)",
				     flags & MAIN_HELLO_CONFIRM ? "on" : "off", e->confirm ? "on" : "off");
	n = load_be16(h + 12);
	if (n != (e->use_multifd ? e->nchan : 0))
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source uses %u multifd channels, this side expects %u (set "
				     "multifd-channels alike)", n, e->use_multifd ? e->nchan : 0);
	if (load_be32(h + 16) != e->mcfg.packet_bytes)
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source's packets hold %u bytes, this side's %u (set "
				     "multifd-packet-size alike)", load_be32(h + 16),
				     e->mcfg.packet_bytes);
	if (h[80] == 0 || h[80] > 31)
		return mfd_error_set(errp, MFD_EPROTO, "main channel: codec name length %u", h[80]);
	memcpy(codec, h + 81, h[80]);
	codec[h[80]] = '\0';
	if (strlen(codec) != h[80])
		return mfd_error_set(errp, MFD_EPROTO, "main channel: codec name of %u bytes "
				     "contains a NUL byte: '%s'", h[80],
				     escape_bytes(esc, sizeof(esc), h + 81, h[80]));
	if (strcmp(codec, want) != 0)
		return mfd_error_set(errp, MFD_EPROTO,
				     "the source compresses with '%s', this side expects '%s' (set "
				     "multifd-compression alike)",
				     escape_bytes(esc, sizeof(esc), codec, h[80]), want);
	int bad = eng_first_nonzero(h, 14, 16);

	if (bad < 0)
		bad = eng_first_nonzero(h, 20, 32);
	if (bad < 0)
		bad = eng_first_nonzero(h, 81 + (size_t)h[80], MAIN_HELLO_SIZE);
	if (bad >= 0)
		return mfd_error_set(errp, MFD_EPROTO, "main channel: reserved hello byte %d is "
				     "0x%02x, not 0", bad, h[bad]);
	e->use_rp = flags & MAIN_HELLO_RETURN_PATH;
	memcpy(e->mcfg.uuid, h + 32, MFD_UUID_LEN);
	memcpy(e->mcfg.token, h + 48, MFD_TOKEN_LEN);
	return 0;
}

void eng_preempt_hello_encode(struct mfd_engine *e, uint8_t h[PREEMPT_HELLO_SIZE])
{
	memset(h, 0, PREEMPT_HELLO_SIZE);
	store_be32(h, PREEMPT_HELLO_MAGIC);
	store_be32(h + 4, PREEMPT_HELLO_VERSION);
	memcpy(h + 32, e->mcfg.uuid, MFD_UUID_LEN);
	memcpy(h + 48, e->mcfg.token, MFD_TOKEN_LEN);
}
