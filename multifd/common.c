/* SPDX-License-Identifier: MIT */
/*
 * Pieces shared by the multifd sender and receiver: configuration defaults,
 * the hello encoder, zero-page detection, constant-time comparison.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "core/util.h"
#include "multifd/internal.h"

int multifd_config_init(struct mfd_multifd_config *cfg, mfd_error **errp)
{
	uint8_t rnd[MFD_UUID_LEN + MFD_TOKEN_LEN];
	size_t got = 0;

	memset(cfg, 0, sizeof(*cfg));
	cfg->channels = 2;
	cfg->codec = NULL;
	cfg->level = 0;
	cfg->packet_bytes = MFD_PACKET_BYTES_DEFAULT;
	cfg->zero_detect = MFD_ZERO_MULTIFD;
	cfg->timeout_ms = 30000;	/* channel-timeout-ms's default */
	while (got < sizeof(rnd)) {
		ssize_t n = getrandom(rnd + got, sizeof(rnd) - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return error_set_errno(errp, MFD_EIO, errno,
						   "multifd: no random bytes for the session token");
		got += (size_t)n;
	}
	memcpy(cfg->uuid, rnd, MFD_UUID_LEN);
	/* RFC 4122 version 4 layout, so the UUID reads as one in logs. */
	cfg->uuid[6] = (uint8_t)((cfg->uuid[6] & 0x0f) | 0x40);
	cfg->uuid[8] = (uint8_t)((cfg->uuid[8] & 0x3f) | 0x80);
	memcpy(cfg->token, rnd + MFD_UUID_LEN, MFD_TOKEN_LEN);
	return 0;
}

void multifd_hello_encode(uint8_t out[MFD_HELLO_SIZE], const struct mfd_multifd_config *cfg,
		      uint16_t channel_id, uint64_t block_digest)
{
	const char *codec = cfg->codec ? cfg->codec->name : "none";
	size_t len = strlen(codec);

	memset(out, 0, MFD_HELLO_SIZE);
	store_be32(out, MFD_HELLO_MAGIC);
	store_be32(out + 4, MFD_HELLO_VERSION);
	store_be16(out + 12, channel_id);
	store_be16(out + 14, (uint16_t)cfg->channels);
	store_be32(out + 16, cfg->packet_bytes);
	store_be64(out + 24, block_digest);
	memcpy(out + 32, cfg->uuid, MFD_UUID_LEN);
	memcpy(out + 48, cfg->token, MFD_TOKEN_LEN);
	out[80] = (uint8_t)len;
	memcpy(out + 81, codec, len);
}

int util_consttime_memcmp(const void *a, const void *b, size_t len)
{
	const volatile uint8_t *x = a, *y = b;
	uint8_t acc = 0;

	for (size_t i = 0; i < len; i++)
		acc |= (uint8_t)(x[i] ^ y[i]);
	return acc != 0;
}

typedef uint64_t v4u64 __attribute__((vector_size(32)));

/*
 * Most non-zero pages differ from zero in their first bytes, so look there
 * first; then OR the page together 128 bytes at a time in vector registers,
 * leaving early at the first non-zero chunk.
 */
bool util_page_is_zero(const void *page, size_t len)
{
	const uint8_t *p = page;
	uint64_t head[2];

	if (len < 256) {
		for (size_t i = 0; i < len; i++)
			if (p[i])
				return false;
		return true;
	}
	memcpy(head, p, sizeof(head));
	if (head[0] | head[1])
		return false;
	for (size_t off = 0; off < len; off += 128) {
		v4u64 a, b, c, d;

		memcpy(&a, p + off, 32);
		memcpy(&b, p + off + 32, 32);
		memcpy(&c, p + off + 64, 32);
		memcpy(&d, p + off + 96, 32);
		a |= b | c | d;
		if (a[0] | a[1] | a[2] | a[3])
			return false;
	}
	return true;
}
