/* SPDX-License-Identifier: MIT */
/*
 * multifd dump: decode a saved main stream, the file a `file:` migration
 * writes (the engine's 128-byte hello, then the savevm stream) or what
 * mfd_savevm() writes (the savevm stream alone).  One line per record with
 * its byte offset, JSON lines with --json, or only a verdict with --check.
 *
 * The decoder is written from docs/wire-format.md and reads the file through
 * a small buffer: nothing it reads is trusted, every length is bounded before
 * it is used, and the first thing that is wrong ends the dump with
 * "offset N: what was wrong".
 *
 * Section payloads have no length on the wire, so the decoder knows the
 * payloads it can parse: the engine's "ram" section and, in a stream whose
 * identity is the tool's, its "cpu" and "image" devices.  For any other
 * section it searches for the section's footer (0x7e and the section id) and
 * says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "core/json.h"
#include "core/savevm.h"
#include "core/wire.h"

#define DUMP_BUF (1u << 16)
#define MAX_SECTIONS 1024	/* distinct section ids one stream may bind */
#define MAX_BLOCKS 256		/* RAM blocks in a block list */
#define PACKAGE_MAX ((unsigned long long)MFD_PACKAGED_MAX_DEFAULT)	/* the loader's default */
#define SCAN_MAX (256ull << 20)	/* how far to search for an unknown payload's footer */

/**
 * struct reader - buffered, bounded reads from a file or pipe
 * @fd: what is read
 * @buf: bytes read ahead
 * @pos: next byte in @buf
 * @len: bytes valid in @buf
 * @base: file offset of buf[0]
 * @eof: read() returned 0
 * @ioerr: errno of a failed read(), or 0
 */
struct reader {
	int fd;
	uint8_t buf[DUMP_BUF];
	size_t pos, len;
	uint64_t base;
	bool eof;
	int ioerr;
};

struct section {
	bool bound;
	char idstr[256];
	uint32_t instance, version;
};

struct block {
	char name[256];
	uint64_t size, page_size;
	uint64_t at;	/* offset of its entry in the block list */
};

/* What one RAM payload held. */
struct ram_sum {
	uint64_t pages, zero, flushes, bytes;
	uint64_t lo, hi;	/* lowest and highest page offset seen */
	bool blocks, eos;
};

/**
 * struct dump - the state of one decode
 * @rd: the input
 * @out: where records go (NULL with --check)
 * @json: JSON lines instead of text
 * @w: the JSON line being written
 * @out_of_memory: a JSON line could not be written
 * @verbose: text mode lists every RAM page record
 * @tool_guest: the CONFIGURATION names the tool's guest (its devices known)
 * @failed: an error was recorded
 * @err_off: offset of the first error
 * @err: its message
 * @sections: bound section ids (index = section id)
 * @blocks: the RAM block list from the first MEM_SIZE record
 * @nblocks: entries of @blocks
 * @last_block: block of the previous page record (-1: none)
 * @records: top-level records decoded
 * @pages: RAM pages in the whole stream (normal, zero)
 */
struct dump {
	struct reader *rd;
	FILE *out;
	bool json;
	struct json_writer w;
	bool out_of_memory;
	int verbose;
	bool tool_guest;
	bool failed;
	uint64_t err_off;
	char err[512];
	struct section *sections;
	struct block blocks[MAX_BLOCKS];
	unsigned nblocks;
	int last_block;
	uint64_t records, pages, zero_pages;
};

/* ---- reading ------------------------------------------------------------------ */

static uint64_t rd_off(const struct reader *r)
{
	return r->base + r->pos;
}

/* Make @need (<= DUMP_BUF) bytes available; returns how many are. */
static size_t rd_fill(struct reader *r, size_t need)
{
	if (r->len - r->pos >= need)
		return need;
	memmove(r->buf, r->buf + r->pos, r->len - r->pos);
	r->base += r->pos;
	r->len -= r->pos;
	r->pos = 0;
	while (r->len < need && !r->eof && !r->ioerr) {
		ssize_t n = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r->ioerr = errno;
		else if (n == 0)
			r->eof = true;
		else
			r->len += (size_t)n;
	}
	return r->len < need ? r->len : need;
}

static int fail(struct dump *d, uint64_t off, const char *fmt, ...) MFD_PRINTF(3, 4);

static int fail(struct dump *d, uint64_t off, const char *fmt, ...)
{
	va_list ap;

	if (d->failed)
		return -1;
	d->failed = true;
	d->err_off = off;
	va_start(ap, fmt);
	vsnprintf(d->err, sizeof(d->err), fmt, ap);
	va_end(ap);
	return -1;
}

static int short_read(struct dump *d, size_t have, size_t want, const char *what)
{
	if (d->rd->ioerr)
		return fail(d, rd_off(d->rd), "cannot read %s: %s", what, strerror(d->rd->ioerr));
	return fail(d, rd_off(d->rd), "the file ends inside %s (%zu of %zu bytes)", what, have,
		    want);
}

/* Copy @n (<= DUMP_BUF) bytes out. */
static int get(struct dump *d, void *dst, size_t n, const char *what)
{
	size_t have = rd_fill(d->rd, n);

	if (have < n)
		return short_read(d, have, n, what);
	memcpy(dst, d->rd->buf + d->rd->pos, n);
	d->rd->pos += n;
	return 0;
}

static int skip(struct dump *d, uint64_t n, const char *what)
{
	uint64_t done = 0, start = rd_off(d->rd);

	while (done < n) {
		size_t want = n - done < DUMP_BUF ? (size_t)(n - done) : DUMP_BUF;
		size_t have = rd_fill(d->rd, want);

		d->rd->pos += have;
		done += have;
		if (have < want)
			return d->rd->ioerr ? short_read(d, 0, 1, what)
			       : fail(d, start, "the file ends inside %s (%" PRIu64 " of %"
				      PRIu64 " bytes)", what, done, n);
	}
	return 0;
}

static int peek_u8(struct dump *d, uint8_t *v)
{
	if (rd_fill(d->rd, 1) < 1)
		return -1;
	*v = d->rd->buf[d->rd->pos];
	return 0;
}

static int get_u8(struct dump *d, uint8_t *v, const char *what)
{
	return get(d, v, 1, what);
}

static uint32_t load_be16(const uint8_t *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t load_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t load_be64(const uint8_t *p)
{
	return (uint64_t)load_be32(p) << 32 | load_be32(p + 4);
}

static int get_be16(struct dump *d, uint32_t *v, const char *what)
{
	uint8_t b[2];

	if (get(d, b, 2, what) < 0)
		return -1;
	*v = load_be16(b);
	return 0;
}

static int get_be32(struct dump *d, uint32_t *v, const char *what)
{
	uint8_t b[4];

	if (get(d, b, 4, what) < 0)
		return -1;
	*v = load_be32(b);
	return 0;
}

static int get_be64(struct dump *d, uint64_t *v, const char *what)
{
	uint8_t b[8];

	if (get(d, b, 8, what) < 0)
		return -1;
	*v = load_be64(b);
	return 0;
}

/* A counted string (u8 n, n bytes) into @s (256 bytes): every name in the
 * stream must be 1..255 bytes without a NUL. */
static int get_name(struct dump *d, char s[256], const char *what)
{
	uint64_t at = rd_off(d->rd);
	uint8_t n;

	if (get_u8(d, &n, what) < 0 || get(d, s, n, what) < 0)
		return -1;
	s[n] = '\0';
	if (n == 0)
		return fail(d, at, "%s is empty", what);
	if (strlen(s) != n)
		return fail(d, at, "%s contains a NUL byte", what);
	return 0;
}

/* ---- output ------------------------------------------------------------------- */

/* A name for a text line: printable ASCII kept, the rest as \xNN. */
static void text_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p >= 0x7f || *p == '"' || *p == '\\')
			fprintf(f, "\\x%02x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* Start a record: "OFFSET TYPE" or {"offset":N,"type":"TYPE". */
static bool rec_begin(struct dump *d, uint64_t off, unsigned depth, const char *type)
{
	if (!d->out)
		return false;
	if (d->json) {
		json_init(&d->w, JSON_COMPACT);
		json_begin_object(&d->w);
		json_key_u64(&d->w, "offset", off);
		json_key_u64(&d->w, "depth", depth);
		json_key_str(&d->w, "type", type);
	} else {
		fprintf(d->out, "%10" PRIu64 " %*s%s", off, (int)depth * 2, "", type);
	}
	return true;
}

/* Close the JSON object of @d->w and print it as one line: whole, or (out
 * of memory) not at all. */
static void json_line(struct dump *d)
{
	char *line;

	json_end_object(&d->w);
	line = json_finish(&d->w);
	if (line)
		fprintf(d->out, "%s\n", line);
	else
		d->out_of_memory = true;
	free(line);
}

static void rec_end(struct dump *d)
{
	if (d->json)
		json_line(d);
	else
		fputc('\n', d->out);
}

static void field_u64(struct dump *d, const char *key, uint64_t v)
{
	if (d->json)
		json_key_u64(&d->w, key, v);
	else
		fprintf(d->out, " %s %" PRIu64, key, v);
}

static void field_hex(struct dump *d, const char *key, uint64_t v)
{
	if (d->json)
		json_key_u64(&d->w, key, v);
	else
		fprintf(d->out, " %s 0x%" PRIx64, key, v);
}

static void field_str(struct dump *d, const char *key, const char *v)
{
	if (d->json) {
		json_key_str(&d->w, key, v);
	} else {
		fprintf(d->out, " %s ", key);
		text_str(d->out, v);
	}
}

static void field_bool(struct dump *d, const char *key, bool v)
{
	if (d->json)
		json_key_bool(&d->w, key, v);
	else if (v)
		fprintf(d->out, " %s", key);
}

/* ---- the engine's hello and the stream header ------------------------------------ */

static int dump_hello(struct dump *d)
{
	uint8_t h[MAIN_HELLO_SIZE];
	char codec[32];
	uint32_t flags;

	if (get(d, h, MAIN_HELLO_SIZE, "the main-channel hello") < 0)
		return -1;
	if (load_be32(h + 4) != 1)
		return fail(d, 4, "main-channel hello version %" PRIu32 ", expected 1",
			    load_be32(h + 4));
	flags = load_be32(h + 8);
	if (flags & ~0xfu)
		return fail(d, 8, "unknown main-channel hello flags 0x%" PRIx32, flags);
	if (h[80] < 1 || h[80] > 31)
		return fail(d, 80, "codec name length %u is not 1..31", h[80]);
	memcpy(codec, h + 81, h[80]);
	codec[h[80]] = '\0';
	if (strlen(codec) != h[80])
		return fail(d, 81, "the codec name contains a NUL byte");
	for (unsigned i = 14; i < MAIN_HELLO_SIZE; i++) {
		if ((i >= 16 && i < 20) || (i >= 32 && i < 81 + (unsigned)h[80]))
			continue;
		if (h[i])
			return fail(d, i, "reserved hello byte %u is 0x%02x, not 0", i, h[i]);
	}
	if (rec_begin(d, 0, 0, "HELLO")) {
		field_u64(d, "version", 1);
		field_hex(d, "flags", flags);
		field_bool(d, "return_path", flags & 1);
		field_bool(d, "postcopy_preempt", flags & 2);
		field_bool(d, "resume", flags & 4);
		field_bool(d, "postcopy_ram", flags & 8);
		field_u64(d, "channels", load_be16(h + 12));
		field_u64(d, "packet_bytes", load_be32(h + 16));
		field_str(d, "compression", codec);
		rec_end(d);
	}
	return 0;
}

static int dump_header(struct dump *d)
{
	uint64_t at = rd_off(d->rd);
	uint32_t magic, version, len;
	char identity[256];
	uint8_t type;

	if (get_be32(d, &magic, "the stream header") < 0 ||
	    get_be32(d, &version, "the stream header") < 0)
		return -1;
	if (magic != MFD_VM_FILE_MAGIC)
		return fail(d, at, "stream magic 0x%08" PRIx32 ", expected 0x%08x (\"QEVM\")", magic,
			    MFD_VM_FILE_MAGIC);
	if (version != 3)
		return fail(d, at + 4, "stream version %" PRIu32 ", expected 3%s", version,
			    version == 2 ? " (version 2 is obsolete)" : "");
	if (rec_begin(d, at, 0, "HEADER")) {
		field_u64(d, "version", version);
		rec_end(d);
	}
	at = rd_off(d->rd);
	if (get_u8(d, &type, "the CONFIGURATION record") < 0)
		return -1;
	if (type != MFD_VM_CONFIGURATION)
		return fail(d, at, "record type 0x%02x where the CONFIGURATION record (0x07) must "
			    "be", type);
	if (get_be32(d, &len, "the CONFIGURATION record") < 0)
		return -1;
	if (len < 1 || len > 255)
		return fail(d, at + 1, "CONFIGURATION identity length %" PRIu32 " is not 1..255",
			    len);
	if (get(d, identity, len, "the CONFIGURATION identity") < 0)
		return -1;
	identity[len] = '\0';
	if (strlen(identity) != len)
		return fail(d, at + 5, "the CONFIGURATION identity contains a NUL byte");
	d->tool_guest = !strcmp(identity, GUEST_IDENTITY);
	if (rec_begin(d, at, 0, "CONFIGURATION")) {
		field_str(d, "identity", identity);
		rec_end(d);
	}
	return 0;
}

/* ---- section payloads ----------------------------------------------------------- */

static int ram_blocks(struct dump *d, uint64_t at, uint64_t total)
{
	uint64_t sum = 0;

	if (d->nblocks)
		return fail(d, at, "ram: a second block list");
	if (total == 0)
		return fail(d, at, "ram: block list with 0 bytes of RAM");
	while (sum < total) {
		struct block *b = &d->blocks[d->nblocks];
		uint64_t bat = rd_off(d->rd);

		if (d->nblocks == MAX_BLOCKS)
			return fail(d, bat, "ram: more than %u RAM blocks", MAX_BLOCKS);
		if (get_name(d, b->name, "the RAM block name") < 0 ||
		    get_be64(d, &b->size, "the RAM block size") < 0 ||
		    get_be64(d, &b->page_size, "the RAM block page size") < 0)
			return -1;
		if (b->page_size < 4096 || b->page_size > (1ull << 30) ||
		    (b->page_size & (b->page_size - 1)))
			return fail(d, bat, "ram: block '%s' page size %" PRIu64 " is not a power "
				    "of two from 4 KiB to 1 GiB", b->name, b->page_size);
		if (b->size == 0 || b->size % b->page_size || b->size > total - sum)
			return fail(d, bat, "ram: block '%s' size %" PRIu64 " is 0, not a multiple "
				    "of its page size, or beyond the announced %" PRIu64 " bytes",
				    b->name, b->size, total);
		for (unsigned i = 0; i < d->nblocks; i++)
			if (!strcmp(d->blocks[i].name, b->name))
				return fail(d, bat, "ram: block '%s' is listed twice", b->name);
		b->at = bat;
		sum += b->size;
		d->nblocks++;
	}
	return 0;
}

/* The block list, after the line of the section that carried it. */
static void print_blocks(struct dump *d, unsigned depth)
{
	for (unsigned i = 0; i < d->nblocks; i++) {
		const struct block *b = &d->blocks[i];

		if (rec_begin(d, b->at, depth, "RAM_BLOCK")) {
			field_str(d, "name", b->name);
			field_u64(d, "size", b->size);
			field_u64(d, "page_size", b->page_size);
			rec_end(d);
		}
	}
}

/* One page record: the block (named or CONTINUE), the offset, the data. */
static int ram_page(struct dump *d, uint64_t at, uint64_t word, unsigned depth,
		    struct ram_sum *sum)
{
	unsigned flags = (unsigned)(word & RAM_FLAGS_MASK);
	uint64_t off = word & ~(uint64_t)RAM_FLAGS_MASK;
	const struct block *b;

	if (!(flags & RAM_FLAG_CONTINUE)) {
		char name[256];

		if (get_name(d, name, "the page's block name") < 0)
			return -1;
		d->last_block = -1;
		for (unsigned i = 0; i < d->nblocks; i++)
			if (!strcmp(d->blocks[i].name, name))
				d->last_block = (int)i;
		if (d->last_block < 0)
			return fail(d, at, "ram: page of unknown block '%s'", name);
	} else if (d->last_block < 0) {
		return fail(d, at, "ram: CONTINUE record with no block named before");
	}
	b = &d->blocks[d->last_block];
	if ((off & (b->page_size - 1)) || off > b->size - b->page_size)
		return fail(d, at, "ram: page offset 0x%" PRIx64 " is not a page of block '%s' (%"
			    PRIu64 " bytes)", off, b->name, b->size);
	if (flags & RAM_FLAG_ZERO) {
		uint8_t fill;

		if (get_u8(d, &fill, "a ZERO record's fill byte") < 0)
			return -1;
		if (fill)
			return fail(d, at, "ram: ZERO record with fill byte 0x%02x", fill);
		sum->zero++;
		d->zero_pages++;
	} else {
		if (skip(d, b->page_size, "a page's data") < 0)
			return -1;
		sum->pages++;
		d->pages++;
		sum->bytes += b->page_size;
	}
	sum->lo = off < sum->lo ? off : sum->lo;
	sum->hi = off > sum->hi ? off : sum->hi;
	if (d->verbose && !d->json && rec_begin(d, at, depth, flags & RAM_FLAG_ZERO ? "ZERO" : "PAGE")) {
		field_str(d, "block", b->name);
		field_hex(d, "offset", off);
		field_hex(d, "flags", flags);
		rec_end(d);
	}
	return 0;
}

/* The "ram" section's payload: 64-bit records up to EOS (7.2). */
static int payload_ram(struct dump *d, const struct section *sec, unsigned depth,
		       struct ram_sum *sum)
{
	memset(sum, 0, sizeof(*sum));
	sum->lo = UINT64_MAX;
	if (sec->version != 1)
		return fail(d, rd_off(d->rd), "ram: section version %" PRIu32 ", expected 1",
			    sec->version);
	for (;;) {
		uint64_t at = rd_off(d->rd), word;
		unsigned flags;

		if (get_be64(d, &word, "a RAM record") < 0)
			return -1;
		flags = (unsigned)(word & RAM_FLAGS_MASK);
		if (flags == RAM_FLAG_EOS) {
			sum->eos = true;
			return 0;
		}
		if (flags == RAM_FLAG_MEM_SIZE) {
			if (ram_blocks(d, at, word & ~(uint64_t)RAM_FLAGS_MASK) < 0)
				return -1;
			sum->blocks = true;
		} else if (!d->nblocks) {
			return fail(d, at, "ram: record flags 0x%x before the block list", flags);
		} else if (flags == RAM_FLAG_MULTIFD_FLUSH) {
			sum->flushes++;
		} else if ((flags & ~RAM_FLAG_CONTINUE) == RAM_FLAG_PAGE ||
			   (flags & ~RAM_FLAG_CONTINUE) == RAM_FLAG_ZERO) {
			if (ram_page(d, at, word, depth + 1, sum) < 0)
				return -1;
		} else {
			return fail(d, at, "ram: unknown combination of record flags 0x%x", flags);
		}
	}
}

/* A payload of a known, fixed size (the tool's own devices). */
static int payload_fixed(struct dump *d, const struct section *sec, uint64_t bytes)
{
	char what[300];

	snprintf(what, sizeof(what), "the payload of section '%s'", sec->idstr);
	return skip(d, bytes, what);
}

/* Any other section: its payload ends at the first "7e <id>" (a guess the
 * text and JSON say is one).  Leaves the reader at that footer. */
static int payload_scan(struct dump *d, uint32_t id, uint64_t *len)
{
	uint8_t pat[5] = { MFD_VM_SECTION_FOOTER, (uint8_t)(id >> 24), (uint8_t)(id >> 16),
			   (uint8_t)(id >> 8), (uint8_t)id };
	uint64_t start = rd_off(d->rd);

	for (;;) {
		size_t have = rd_fill(d->rd, 5);

		if (have < 5) {
			if (d->rd->ioerr)
				return short_read(d, have, 5, "a section payload");
			return fail(d, start, "section id %" PRIu32 ": no footer after the payload "
				    "before the end of the file", id);
		}
		if (!memcmp(d->rd->buf + d->rd->pos, pat, 5)) {
			*len = rd_off(d->rd) - start;
			return 0;
		}
		if (rd_off(d->rd) - start >= SCAN_MAX)
			return fail(d, start, "section id %" PRIu32 ": no footer in the %llu MiB "
				    "after the section header", id, SCAN_MAX >> 20);
		d->rd->pos++;
	}
}

static const char *rec_name(uint8_t type)
{
	switch (type) {
	case MFD_VM_SECTION_START: return "SECTION_START";
	case MFD_VM_SECTION_PART: return "SECTION_PART";
	case MFD_VM_SECTION_END: return "SECTION_END";
	case MFD_VM_SECTION_FULL: return "SECTION_FULL";
	default: return "?";
	}
}

/* START, PART, END or FULL at @at: header, payload, footer, then one line. */
static int dump_section(struct dump *d, uint64_t at, uint8_t type, unsigned depth)
{
	struct section *sec;
	struct ram_sum ram;
	uint64_t payload_at, payload_len = 0, foot_at;
	uint32_t id, foot_id;
	bool is_ram = false, guessed = false;
	uint8_t foot;
	int r;

	if (get_be32(d, &id, "the section id") < 0)
		return -1;
	if (id >= MAX_SECTIONS)
		return fail(d, at + 1, "section id %" PRIu32 " is beyond the %u this tool tracks",
			    id, MAX_SECTIONS);
	sec = &d->sections[id];
	if (type == MFD_VM_SECTION_START || type == MFD_VM_SECTION_FULL) {
		struct section s = { .bound = true };

		if (get_name(d, s.idstr, "the section's idstr") < 0 ||
		    get_be32(d, &s.instance, "the section's instance id") < 0 ||
		    get_be32(d, &s.version, "the section's version id") < 0)
			return -1;
		if (sec->bound && (strcmp(sec->idstr, s.idstr) || sec->instance != s.instance))
			return fail(d, at + 1, "section id %" PRIu32 " was bound to '%s' instance %"
				    PRIu32 ", now '%s' instance %" PRIu32, id, sec->idstr,
				    sec->instance, s.idstr, s.instance);
		for (unsigned i = 0; i < MAX_SECTIONS; i++)
			if (i != id && d->sections[i].bound && d->sections[i].instance == s.instance &&
			    !strcmp(d->sections[i].idstr, s.idstr))
				return fail(d, at + 1, "section '%s' instance %" PRIu32 " had id %u, "
					    "now %" PRIu32, s.idstr, s.instance, i, id);
		*sec = s;
	} else if (!sec->bound) {
		return fail(d, at + 1, "%s for section id %" PRIu32 ", which no START or FULL "
			    "bound", rec_name(type), id);
	}
	payload_at = rd_off(d->rd);
	if (!strcmp(sec->idstr, "ram") && sec->instance == 0) {
		is_ram = true;
		r = payload_ram(d, sec, depth, &ram);
	} else if (d->tool_guest && !strcmp(sec->idstr, "cpu") && sec->version == 1) {
		r = payload_fixed(d, sec, 18 * 8);
	} else if (d->tool_guest && !strcmp(sec->idstr, "image") && sec->version == 1) {
		r = payload_fixed(d, sec, 8);
	} else {
		guessed = true;
		r = payload_scan(d, id, &payload_len);
	}
	if (r < 0)
		return -1;
	payload_len = rd_off(d->rd) - payload_at;
	foot_at = rd_off(d->rd);
	if (get_u8(d, &foot, "the section footer") < 0)
		return -1;
	if (foot != MFD_VM_SECTION_FOOTER)
		return fail(d, foot_at, "byte 0x%02x where the footer (0x7e) of section '%s' (id %"
			    PRIu32 ") must be: the payload is not what this decoder expects",
			    foot, sec->idstr, id);
	if (get_be32(d, &foot_id, "the section footer") < 0)
		return -1;
	if (foot_id != id)
		return fail(d, foot_at + 1, "footer of section id %" PRIu32 " names id %" PRIu32,
			    id, foot_id);
	if (!rec_begin(d, at, depth, rec_name(type)))
		return 0;
	field_u64(d, "id", id);
	field_str(d, "idstr", sec->idstr);
	field_u64(d, "instance", sec->instance);
	field_u64(d, "version", sec->version);
	field_u64(d, "payload_bytes", payload_len);
	if (guessed)
		field_bool(d, "payload_end_guessed", true);
	if (is_ram) {
		field_u64(d, "pages", ram.pages);
		field_u64(d, "zero_pages", ram.zero);
		field_u64(d, "flushes", ram.flushes);
		if (ram.pages + ram.zero) {
			field_hex(d, "lowest_offset", ram.lo);
			field_hex(d, "highest_offset", ram.hi);
		}
		field_bool(d, "block_list", ram.blocks);
		field_bool(d, "eos", ram.eos);
	}
	field_u64(d, "footer_offset", foot_at);
	rec_end(d);
	if (is_ram && ram.blocks)
		print_blocks(d, depth + 1);
	return 0;
}

/* ---- commands ------------------------------------------------------------------- */

static int dump_stream(struct dump *d, unsigned depth, uint64_t end, bool *quit);

/* Check a command's length rule (3.6); 0 or an error. */
static int cmd_len_ok(struct dump *d, uint64_t at, uint32_t cmd, uint32_t len)
{
	bool ok;

	switch (cmd) {
	case MFD_CMD_PING: case MFD_CMD_PACKAGED: ok = len == 4; break;
	case MFD_CMD_POSTCOPY_ADVISE: ok = len == 0 || len == 16; break;
	case MFD_CMD_POSTCOPY_RAM_DISCARD: ok = len >= 20; break;
	case MFD_CMD_RECV_BITMAP: ok = len >= 2 && len <= 256; break;
	default: ok = len == 0; break;
	}
	if (!ok)
		return fail(d, at, "command %s with a payload of %" PRIu32 " bytes", vm_cmd_name(cmd),
			    len);
	return 0;
}

static int dump_discard(struct dump *d, uint64_t at, const uint8_t *p, uint32_t len,
			unsigned depth)
{
	char name[256];
	uint32_t n = p[1];
	uint64_t ranges, bytes = 0;

	if (p[0] != 0)
		return fail(d, at + 5, "POSTCOPY_RAM_DISCARD version %u, expected 0", p[0]);
	if (n < 1 || 3 + n > len)
		return fail(d, at + 6, "POSTCOPY_RAM_DISCARD block name length %" PRIu32
			    " does not fit the command", n);
	memcpy(name, p + 2, n);
	name[n] = '\0';
	if (strlen(name) != n || p[2 + n] != 0)
		return fail(d, at + 7, "POSTCOPY_RAM_DISCARD block name has a NUL byte or no "
			    "0x00 after it");
	if ((len - 3 - n) == 0 || (len - 3 - n) % 16)
		return fail(d, at + 5, "POSTCOPY_RAM_DISCARD ranges of %" PRIu32 " bytes, not a "
			    "non-zero multiple of 16", len - 3 - n);
	ranges = (len - 3 - n) / 16;
	for (uint64_t i = 0; i < ranges; i++)
		bytes += load_be64(p + 3 + n + 16 * i + 8);
	if (rec_begin(d, at, depth, "COMMAND")) {
		field_str(d, "name", "POSTCOPY_RAM_DISCARD");
		field_u64(d, "len", len);
		field_str(d, "block", name);
		field_u64(d, "ranges", ranges);
		field_u64(d, "bytes", bytes);
		rec_end(d);
	}
	return 0;
}

static int dump_command(struct dump *d, uint64_t at, unsigned depth, bool *quit)
{
	uint8_t *p = NULL;
	uint32_t cmd, len;
	int r = 0;

	if (get_be16(d, &cmd, "the command number") < 0 ||
	    get_be16(d, &len, "the command length") < 0)
		return -1;
	if (cmd < 1 || cmd >= MFD_CMD_MAX)
		return fail(d, at + 1, "unknown command %" PRIu32, cmd);
	if (cmd_len_ok(d, at + 3, cmd, len) < 0)
		return -1;
	if (len) {
		p = malloc(len);
		if (!p)
			return fail(d, at, "no memory for a command of %" PRIu32 " bytes", len);
		if (get(d, p, len, "the command payload") < 0) {
			free(p);
			return -1;
		}
	}
	if (cmd == MFD_CMD_POSTCOPY_RAM_DISCARD) {
		r = dump_discard(d, at, p, len, depth);
	} else if (cmd == MFD_CMD_RECV_BITMAP) {
		char name[256];

		/* The length rule made len 2..256, so p[0] == len - 1 fits. */
		memcpy(name, p + 1, p[0] < len ? p[0] : 0);
		name[p[0] < len ? p[0] : 0] = '\0';
		if (p[0] != len - 1 || strlen(name) != p[0])
			r = fail(d, at + 5, "RECV_BITMAP block name length %u in a %" PRIu32
				 "-byte command, or a NUL in the name", p[0], len);
		else if (rec_begin(d, at, depth, "COMMAND")) {
			field_str(d, "name", vm_cmd_name(cmd));
			field_u64(d, "len", len);
			field_str(d, "block", name);
			rec_end(d);
		}
	} else if (cmd == MFD_CMD_PACKAGED) {
		uint64_t plen = load_be32(p), start;

		if (depth > 0)
			r = fail(d, at, "PACKAGED command inside a package");
		else if (plen > PACKAGE_MAX)
			r = fail(d, at, "PACKAGED command announces %" PRIu64 " bytes, over the "
				 "%llu MiB limit", plen, PACKAGE_MAX >> 20);
		if (r == 0 && rec_begin(d, at, depth, "COMMAND")) {
			field_str(d, "name", vm_cmd_name(cmd));
			field_u64(d, "len", len);
			field_u64(d, "package_bytes", plen);
			rec_end(d);
		}
		/* The package is a nested stream; a RUN in it ends the package, and
		 * the main stream goes on (postcopy). */
		bool run = false;

		start = rd_off(d->rd);
		if (r == 0)
			r = dump_stream(d, depth + 1, start + plen, &run);
		if (r == 0 && rd_off(d->rd) != start + plen)
			r = fail(d, rd_off(d->rd), "%" PRIu64 " bytes left in the package after "
				 "its end", start + plen - rd_off(d->rd));
	} else if (rec_begin(d, at, depth, "COMMAND")) {
		field_str(d, "name", vm_cmd_name(cmd));
		field_u64(d, "len", len);
		if (cmd == MFD_CMD_PING)
			field_u64(d, "value", load_be32(p));
		if (cmd == MFD_CMD_POSTCOPY_ADVISE && len == 16) {
			field_hex(d, "page_size_summary", load_be64(p));
			field_u64(d, "target_page_size", load_be64(p + 8));
		}
		rec_end(d);
	}
	/* RUN ends a package (the destination's guest starts there). */
	if (r == 0 && cmd == MFD_CMD_POSTCOPY_RUN && depth > 0)
		*quit = true;
	free(p);
	return r;
}

/* ---- records ------------------------------------------------------------------ */

/*
 * Records up to EOF.  @depth 0 is the main stream; 1 a package, which must
 * end at @end (with EOF, or after POSTCOPY_RUN).  Sets *@quit when RUN ended
 * a package.
 */
static int dump_stream(struct dump *d, unsigned depth, uint64_t end, bool *quit)
{
	bool inner_quit = false;

	for (;;) {
		uint64_t at = rd_off(d->rd);
		uint8_t type;
		int r;

		if (depth > 0 && at >= end)
			return fail(d, at, "the package ends without an EOF record");
		if (peek_u8(d, &type) < 0) {
			if (d->rd->ioerr)
				return short_read(d, 0, 1, "a record");
			return fail(d, at, "the file ends without an EOF record");
		}
		d->rd->pos++;
		d->records++;
		switch (type) {
		case MFD_VM_EOF:
			if (rec_begin(d, at, depth, "EOF"))
				rec_end(d);
			return 0;
		case MFD_VM_SECTION_START: case MFD_VM_SECTION_PART: case MFD_VM_SECTION_END: case MFD_VM_SECTION_FULL:
			r = dump_section(d, at, type, depth);
			break;
		case MFD_VM_COMMAND:
			r = dump_command(d, at, depth, &inner_quit);
			break;
		case MFD_VM_SUBSECTION: case MFD_VM_VMDESCRIPTION: case MFD_VM_CONFIGURATION: case MFD_VM_SECTION_FOOTER:
			return fail(d, at, "record type 0x%02x is not allowed at the top level",
				    type);
		default:
			return fail(d, at, "unknown record type 0x%02x", type);
		}
		if (r < 0)
			return -1;
		if (depth > 0 && rd_off(d->rd) > end)
			return fail(d, at, "a record runs past the end of its package");
		if (inner_quit) {
			*quit = true;
			return 0;
		}
	}
}

/* The whole file: [hello] header CONFIGURATION records EOF. */
static int dump_file(struct dump *d)
{
	uint8_t b[4];
	bool quit = false;
	uint64_t tail = 0;

	if (rd_fill(d->rd, 4) < 4) {
		if (d->rd->ioerr)
			return short_read(d, d->rd->len, 4, "the file");
		return fail(d, 0, "the file is %zu bytes: too short for a stream", d->rd->len);
	}
	memcpy(b, d->rd->buf, 4);
	if (load_be32(b) == MAIN_HELLO_MAGIC && dump_hello(d) < 0)
		return -1;
	if (dump_header(d) < 0 || dump_stream(d, 0, 0, &quit) < 0)
		return -1;
	/* The loader reads nothing after EOF; say what is there. */
	for (size_t n; (n = rd_fill(d->rd, DUMP_BUF)) > 0;) {
		tail += n;
		d->rd->pos += n;
	}
	if (d->rd->ioerr)
		return short_read(d, 0, 1, "the bytes after EOF");
	if (tail && rec_begin(d, rd_off(d->rd) - tail, 0, "TRAILING")) {
		field_u64(d, "bytes", tail);
		rec_end(d);
	}
	return 0;
}

/* ---- the command -------------------------------------------------------------------- */

#define DUMP_SYNOPSIS "usage: multifd dump [--json | --check] [-v] FILE\n"

static void dump_usage(FILE *f)
{
	fprintf(f, DUMP_SYNOPSIS
		"\n"
		"Decode a saved main stream: the file a 'file:' migration writes (for example\n"
		"'multifd send --to file:PATH'), or a bare savevm stream.  One line per record\n"
		"with its byte offset: the hello, header, CONFIGURATION, each section record\n"
		"(id, idstr, instance, version, payload size, footer; RAM page counts), each\n"
		"command with its arguments, EOF.  FILE '-' reads stdin.\n"
		"\n"
		"  --json                 one JSON object per line instead (keys in multifd(1))\n"
		"  --check                print nothing; exit 0 when the stream is valid, else\n"
		"                         1 with \"offset N: what was wrong\" on stderr\n"
		"  -v, --verbose          also list every RAM page record\n"
		"  -h, --help             this text\n");
}

int cmd_dump(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "check", no_argument, NULL, 'c' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct dump d = { .last_block = -1 };
	struct reader *rd;
	bool check = false;
	const char *path;
	int c, r;

	while ((c = getopt_long(argc, argv, SHORT_OPTIONS, opts, NULL)) != -1) {
		if (c == 'j')
			d.json = true;
		else if (c == 'c')
			check = true;
		else if (c == 'v')
			d.verbose++;
		else if (c == 'q')
			continue;
		else if (c == 'h') {
			dump_usage(stdout);
			return EXIT_OK;
		} else
			return bad_option("dump", DUMP_SYNOPSIS, c, argv);
	}
	if (optind == argc)
		return usage_error("dump", "FILE is required");
	if (optind + 1 != argc)
		return usage_error("dump", "unexpected argument '%s'", argv[optind + 1]);
	if (check && d.json)
		return usage_error("dump", "--check and --json exclude each other");
	path = argv[optind];
	rd = calloc(1, sizeof(*rd));
	d.sections = calloc(MAX_SECTIONS, sizeof(*d.sections));
	if (!rd || !d.sections) {
		free(rd);
		free(d.sections);
		fprintf(stderr, "multifd dump: out of memory\n");
		return EXIT_FAIL;
	}
	rd->fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
	if (rd->fd < 0) {
		fprintf(stderr, "multifd dump: %s: %s\n", path, strerror(errno));
		free(rd);
		free(d.sections);
		return EXIT_FAIL;
	}
	d.rd = rd;
	d.out = check ? NULL : stdout;
	r = dump_file(&d);
	if (d.out && !d.json && r == 0)
		fprintf(d.out, "valid: %" PRIu64 " records, %" PRIu64 " pages, %" PRIu64
			" zero pages, %" PRIu64 " bytes\n", d.records, d.pages, d.zero_pages,
			rd_off(rd));
	if (d.out && d.json) {
		json_init(&d.w, JSON_COMPACT);
		json_begin_object(&d.w);
		json_key_str(&d.w, "type", r == 0 ? "SUMMARY" : "ERROR");
		json_key_bool(&d.w, "valid", r == 0);
		json_key_u64(&d.w, "records", d.records);
		json_key_u64(&d.w, "pages", d.pages);
		json_key_u64(&d.w, "zero_pages", d.zero_pages);
		json_key_u64(&d.w, "bytes", rd_off(rd));
		if (r < 0) {
			json_key_u64(&d.w, "error_offset", d.err_off);
			json_key_str(&d.w, "error", d.err);
		}
		json_line(&d);
	}
	if (r < 0)
		fprintf(stderr, "multifd dump: %s: offset %" PRIu64 ": %s\n", path, d.err_off, d.err);
	if (d.out_of_memory)
		fprintf(stderr, "multifd dump: out of memory: JSON lines are missing\n");
	fflush(stdout);
	if (rd->fd != STDIN_FILENO)
		close(rd->fd);
	free(rd);
	free(d.sections);
	return r < 0 || d.out_of_memory ? EXIT_FAIL : EXIT_OK;
}
