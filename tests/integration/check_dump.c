/* SPDX-License-Identifier: MIT */
/*
 * `multifd dump` on real files: a stream written by a `file:` migration of
 * `multifd send` is listed section by section, its --json lines parse, and
 * --check accepts it and names the offset of what is wrong in a truncated
 * and a corrupted copy; a hand-made stream shows commands and a package.
 * Also: `send -q` prints no informational line, `send -v` the library's.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/testlib.h"

static char out[1 << 20];
static char dir[4096], mig[4200], copy[4200];

/* A file: migration of a 4 MiB synthetic guest into a fresh directory. */
static void make_migration(void)
{
	const char *tmp = getenv("TMPDIR");
	char to[4300];
	const char *args[] = { "send", "--size", "4M", "-q", "--to", to, NULL };

	snprintf(dir, sizeof(dir), "%s/mfd-dump.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(mig, sizeof(mig), "%s/guest.mig", dir);
	snprintf(copy, sizeof(copy), "%s/copy.mig", dir);
	snprintf(to, sizeof(to), "file:%s", mig);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "send failed:\n%s", out);
	/* -q: the summary, no "multifd send: ..." line and no library info. */
	ck_assert_ptr_nonnull(strstr(out, "status           completed"));
	ck_assert_ptr_null(strstr(out, "multifd send:"));
	ck_assert_ptr_null(strstr(out, "libmultifd info"));
}

static void cleanup(void)
{
	unlink(mig);
	unlink(copy);
	rmdir(dir);
}

static void *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	void *p;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fstat(fileno(f), &st), 0);
	*len = (size_t)st.st_size;
	p = malloc(*len ? *len : 1);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(fread(p, 1, *len, f), *len);
	fclose(f);
	return p;
}

static void write_file(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "wb");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(p, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

/* ---- a small JSON checker: one value, nothing after it -------------------- */

static const char *json_value(const char *p, int depth);

static const char *json_ws(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

static const char *json_string(const char *p)
{
	if (*p++ != '"')
		return NULL;
	while (*p && *p != '"') {
		if ((unsigned char)*p < 0x20)
			return NULL;
		if (*p == '\\') {
			p++;
			if (*p == 'u') {
				for (int i = 1; i <= 4; i++)
					if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i])
						return NULL;
				p += 4;
			} else if (!*p || !strchr("\"\\/bfnrt", *p)) {
				return NULL;
			}
		}
		p++;
	}
	return *p == '"' ? p + 1 : NULL;
}

static const char *json_value(const char *p, int depth)
{
	p = json_ws(p);
	if (depth > 16)
		return NULL;
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		bool object = *p == '{';

		p = json_ws(p + 1);
		if (*p == close)
			return p + 1;
		for (;;) {
			if (object) {
				if (!(p = json_string(json_ws(p))))
					return NULL;
				p = json_ws(p);
				if (*p++ != ':')
					return NULL;
			}
			if (!(p = json_value(p, depth + 1)))
				return NULL;
			p = json_ws(p);
			if (*p == close)
				return p + 1;
			if (*p++ != ',')
				return NULL;
		}
	}
	if (*p == '"')
		return json_string(p);
	if (!strncmp(p, "true", 4) || !strncmp(p, "null", 4))
		return p + 4;
	if (!strncmp(p, "false", 5))
		return p + 5;
	if (*p == '-' || (*p >= '0' && *p <= '9')) {
		char *end;

		strtod(p, &end);
		return end;
	}
	return NULL;
}

static bool json_line_ok(const char *line)
{
	const char *end = json_value(line, 0);

	return end && *json_ws(end) == '\0';
}

/* The value of integer key @key in the first line of @text containing @match. */
static uint64_t line_u64(const char *text, const char *match, const char *key)
{
	const char *line = strstr(text, match), *nl, *k;
	char pat[64];

	ck_assert_msg(line != NULL, "no line with '%s' in:\n%s", match, text);
	while (line > text && line[-1] != '\n')
		line--;
	nl = strchr(line, '\n');
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	k = strstr(line, pat);
	ck_assert_msg(k && (!nl || k < nl), "no %s in the line with '%s'", key, match);
	return strtoull(k + strlen(pat), NULL, 10);
}

/* ---- the tests ---------------------------------------------------------------- */

START_TEST(dump_lists_a_file_migration)
{
	const char *args[] = { "dump", mig, NULL };
	unsigned long long records, pages, zero, bytes;
	const char *v;
	size_t len;

	if (!test_have_tool("dump"))
		return;
	make_migration();
	free(read_file(mig, &len));
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "dump failed:\n%s", out);
	/* The engine's hello (no multifd on file:), then the savevm stream. */
	ck_assert_ptr_nonnull(strstr(out, "         0 HELLO version 1 flags 0x0 channels 0 "));
	ck_assert_ptr_nonnull(strstr(out, "       128 HEADER version 3\n"));
	ck_assert_ptr_nonnull(strstr(out, "       136 CONFIGURATION identity "
				      "\"multifd-tool-guest-1\"\n"));
	ck_assert_ptr_nonnull(strstr(out, "SECTION_START id 2 idstr \"ram\" instance 0 version 1"));
	ck_assert_ptr_nonnull(strstr(out, "RAM_BLOCK name \"pc.ram\" size 4194304 page_size 4096"));
	ck_assert_ptr_nonnull(strstr(out, "SECTION_PART id 2 idstr \"ram\""));
	ck_assert_ptr_nonnull(strstr(out, "SECTION_END id 2 idstr \"ram\""));
	ck_assert_ptr_nonnull(strstr(out, "SECTION_FULL id 0 idstr \"cpu\" instance 0 version 1 "
				      "payload_bytes 144 "));
	ck_assert_ptr_nonnull(strstr(out, "SECTION_FULL id 1 idstr \"image\" instance 0 version 1 "
				      "payload_bytes 8 "));
	ck_assert_ptr_null(strstr(out, "payload_end_guessed"));
	ck_assert_ptr_null(strstr(out, "TRAILING"));
	/* EOF is the file's last byte, and every page of the guest was sent. */
	v = strstr(out, "valid: ");
	ck_assert_ptr_nonnull(v);
	ck_assert_int_eq(sscanf(v, "valid: %llu records, %llu pages, %llu zero pages, %llu bytes",
				&records, &pages, &zero, &bytes), 4);
	ck_assert_uint_eq(bytes, len);
	ck_assert_uint_eq(pages + zero, 1024);
	ck_assert_uint_gt(pages, 0);
	ck_assert_uint_gt(zero, 0);
	{
		char eof[64];

		snprintf(eof, sizeof(eof), "%10zu EOF\n", len - 1);
		ck_assert_msg(strstr(out, eof) != NULL, "no '%s' in:\n%s", eof, out);
	}
	cleanup();
}
END_TEST

START_TEST(dump_json_lines_parse)
{
	const char *args[] = { "dump", "--json", mig, NULL };
	unsigned lines = 0;
	size_t len;
	char *save = NULL;

	if (!test_have_tool("dump"))
		return;
	make_migration();
	free(read_file(mig, &len));
	ck_assert_msg(test_run_tool(out, sizeof(out), false, args) == 0, "dump --json failed:\n%s",
		      out);
	ck_assert_uint_eq(line_u64(out, "\"type\":\"HEADER\"", "offset"), 128);
	ck_assert_uint_eq(line_u64(out, "\"type\":\"HELLO\"", "channels"), 0);
	ck_assert_uint_eq(line_u64(out, "\"idstr\":\"cpu\"", "payload_bytes"), 144);
	ck_assert_uint_eq(line_u64(out, "\"type\":\"EOF\"", "offset"), len - 1);
	ck_assert_uint_eq(line_u64(out, "\"type\":\"SUMMARY\"", "bytes"), len);
	ck_assert_uint_eq(line_u64(out, "\"type\":\"SUMMARY\"", "pages") +
			  line_u64(out, "\"type\":\"SUMMARY\"", "zero_pages"), 1024);
	ck_assert_ptr_nonnull(strstr(out, "\"type\":\"SUMMARY\",\"valid\":true"));
	for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		ck_assert_msg(json_line_ok(line), "not one JSON value: %s", line);
		ck_assert_msg(strncmp(line, "{\"", 2) == 0, "not an object: %s", line);
		lines++;
	}
	/* HELLO HEADER CONFIGURATION START RAM_BLOCK PART... END FULL FULL EOF SUMMARY */
	ck_assert_uint_ge(lines, 11);
	cleanup();
}
END_TEST

START_TEST(dump_check_finds_the_offset)
{
	const char *check[] = { "dump", "--check", mig, NULL };
	const char *check_copy[] = { "dump", "--check", copy, NULL };
	const char *json[] = { "dump", "--json", mig, NULL };
	uint64_t cpu_footer;
	char want[128];
	uint8_t *data;
	size_t len;

	if (!test_have_tool("dump"))
		return;
	make_migration();
	data = read_file(mig, &len);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check), 0);
	ck_assert_str_eq(out, "");

	/* Cut in the middle of a page of the first PART. */
	write_file(copy, data, len / 2);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check_copy), 1);
	ck_assert_msg(strstr(out, ": offset ") && strstr(out, "the file ends inside a page's data"),
		      "%s", out);
	/* Cut right after the last section: no EOF record. */
	write_file(copy, data, len - 1);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check_copy), 1);
	snprintf(want, sizeof(want), "offset %zu: the file ends without an EOF record", len - 1);
	ck_assert_msg(strstr(out, want) != NULL, "no '%s' in: %s", want, out);

	/* The footer of the "cpu" section, where the JSON says it is, broken. */
	ck_assert_int_eq(test_run_tool(out, sizeof(out), false, json), 0);
	cpu_footer = line_u64(out, "\"idstr\":\"cpu\"", "footer_offset");
	ck_assert_uint_lt(cpu_footer, len);
	ck_assert_uint_eq(data[cpu_footer], 0x7e);
	data[cpu_footer] = 0x55;
	write_file(copy, data, len);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check_copy), 1);
	snprintf(want, sizeof(want), "offset %" PRIu64 ": byte 0x55 where the footer (0x7e) of "
		 "section 'cpu'", cpu_footer);
	ck_assert_msg(strstr(out, want) != NULL, "no '%s' in: %s", want, out);
	data[cpu_footer] = 0x7e;

	/* The savevm magic after the 128-byte hello. */
	data[128] ^= 0xff;
	write_file(copy, data, len);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check_copy), 1);
	ck_assert_msg(strstr(out, "offset 128: stream magic 0xae45564d") != NULL, "%s", out);
	free(data);
	cleanup();
}
END_TEST

/* Byte flips and cuts anywhere: always a verdict (0 or 1), never a crash. */
START_TEST(dump_survives_corruption)
{
	const char *check_copy[] = { "dump", "-v", copy, NULL };
	uint8_t *data, *bad;
	unsigned seed = 12345, invalid = 0;
	size_t len;

	if (!test_have_tool("dump"))
		return;
	make_migration();
	data = read_file(mig, &len);
	bad = malloc(len);
	ck_assert_ptr_nonnull(bad);
	for (int i = 0; i < 60; i++) {
		size_t cut = len;
		int r;

		memcpy(bad, data, len);
		for (int k = 0; k < 3; k++) {
			size_t pos = (size_t)rand_r(&seed) % (i % 2 ? len : 600);

			bad[pos] = (uint8_t)rand_r(&seed);
		}
		if (i % 5 == 0)
			cut = (size_t)rand_r(&seed) % len;
		write_file(copy, bad, cut);
		r = test_run_tool(out, sizeof(out), true, check_copy);
		ck_assert_msg(r == 0 || r == 1, "dump exited %d on corrupted copy %d:\n%.2000s", r,
			      i, out);
		ck_assert_ptr_null(strstr(out, "runtime error"));
		invalid += r == 1;
	}
	/* Most random flips land in page data, which no check covers. */
	ck_assert_uint_gt(invalid, 0);
	free(bad);
	free(data);
	cleanup();
}
END_TEST

/* A stream by hand: commands with arguments, a package, an unknown device. */
START_TEST(dump_decodes_commands_and_packages)
{
	static const uint8_t stream[] = {
		'Q', 'E', 'V', 'M', 0, 0, 0, 3,
		0x07, 0, 0, 0, 10, 'l', 'i', 'b', 'm', 'u', 'l', 't', 'i', 'f', 'd',	/* 8 */
		0x08, 0, 1, 0, 0,						/* 23 */
		0x08, 0, 2, 0, 4, 0, 0, 0, 7,					/* 28 PING(7) */
		0x04, 0, 0, 0, 5, 3, 'd', 'e', 'v', 0, 0, 0, 0, 0, 0, 0, 1,	/* 37 FULL */
		0xca, 0xfe, 0xf0, 0x0d, 0x7e, 0, 0, 0, 5,
		0x08, 0, 7, 0, 4, 0, 0, 0, 10,					/* 63 PACKAGED */
		0x08, 0, 4, 0, 0,						/* 72 LISTEN */
		0x08, 0, 5, 0, 0,						/* 77 RUN */
		0x08, 0, 11, 0, 0,						/* 82 */
		0x00,								/* 87 EOF */
	};
	const char *args[] = { "dump", copy, NULL };
	const char *check[] = { "dump", "--check", copy, NULL };
	const char *tmp = getenv("TMPDIR");
	uint8_t bad[sizeof(stream)];

	if (!test_have_tool("dump"))
		return;
	snprintf(dir, sizeof(dir), "%s/mfd-dump.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(mig, sizeof(mig), "%s/none", dir);
	snprintf(copy, sizeof(copy), "%s/hand.mig", dir);
	write_file(copy, stream, sizeof(stream));
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "dump failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "         0 HEADER version 3\n"));
	ck_assert_ptr_nonnull(strstr(out, "        23 COMMAND name \"OPEN_RETURN_PATH\" len 0\n"));
	ck_assert_ptr_nonnull(strstr(out, "        28 COMMAND name \"PING\" len 4 value 7\n"));
	ck_assert_ptr_nonnull(strstr(out, "        37 SECTION_FULL id 5 idstr \"dev\" instance 0 "
				      "version 1 payload_bytes 4 payload_end_guessed "
				      "footer_offset 58\n"));
	ck_assert_ptr_nonnull(strstr(out, "        63 COMMAND name \"PACKAGED\" len 4 "
				      "package_bytes 10\n"));
	ck_assert_ptr_nonnull(strstr(out, "        72   COMMAND name \"POSTCOPY_LISTEN\" len 0\n"));
	ck_assert_ptr_nonnull(strstr(out, "        77   COMMAND name \"POSTCOPY_RUN\" len 0\n"));
	ck_assert_ptr_nonnull(strstr(out, "        82 COMMAND name \"SWITCHOVER_START\" len 0\n"));
	ck_assert_ptr_nonnull(strstr(out, "        87 EOF\n"));

	/* A PING with 3 bytes of payload. */
	memcpy(bad, stream, sizeof(bad));
	bad[32] = 3;
	write_file(copy, bad, sizeof(bad));
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check), 1);
	ck_assert_msg(strstr(out, "offset 31: command PING with a payload of 3 bytes"), "%s", out);
	/* A package one byte longer than its records. */
	memcpy(bad, stream, sizeof(bad));
	bad[71] = 11;
	write_file(copy, bad, sizeof(bad));
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check), 1);
	ck_assert_msg(strstr(out, "offset 82: 1 bytes left in the package"), "%s", out);
	/* Command 12 does not exist. */
	memcpy(bad, stream, sizeof(bad));
	bad[84] = 12;
	write_file(copy, bad, sizeof(bad));
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check), 1);
	ck_assert_msg(strstr(out, "offset 83: unknown command 12"), "%s", out);
	cleanup();
}
END_TEST

/* ---- a byte builder for RAM records ----------------------------------------- */

struct buf {
	uint8_t b[16384];
	size_t n;
};

static void put(struct buf *b, const void *p, size_t len)
{
	ck_assert_uint_le(b->n + len, sizeof(b->b));
	memcpy(b->b + b->n, p, len);
	b->n += len;
}

static void put_u8(struct buf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void put_be(struct buf *b, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--)
		put_u8(b, (uint8_t)(v >> (8 * i)));
}

static void put_name(struct buf *b, const char *s)
{
	put_u8(b, (uint8_t)strlen(s));
	put(b, s, strlen(s));
}

static void put_section(struct buf *b, uint8_t type, uint32_t id)
{
	put_u8(b, type);
	put_be(b, id, 4);
	if (type == 0x01 || type == 0x04) {
		put_name(b, "ram");
		put_be(b, 0, 4);
		put_be(b, 1, 4);
	}
}

static void put_footer(struct buf *b, uint32_t id)
{
	put_u8(b, 0x7e);
	put_be(b, id, 4);
}

/* The RAM section as a multifd source writes it: block list and flush in
 * START, zero and normal pages (named, then CONTINUE) and flushes in PART. */
START_TEST(dump_counts_ram_records)
{
	static struct buf b;
	const char *args[] = { "dump", "-v", copy, NULL };
	const char *check[] = { "dump", "--check", copy, NULL };
	const char *tmp = getenv("TMPDIR");
	uint8_t page[4096];
	size_t part_at, second_page;

	if (!test_have_tool("dump"))
		return;
	snprintf(dir, sizeof(dir), "%s/mfd-dump.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(mig, sizeof(mig), "%s/none", dir);
	snprintf(copy, sizeof(copy), "%s/ram.mig", dir);
	memset(page, 0xab, sizeof(page));
	b.n = 0;
	put(&b, "QEVM", 4);
	put_be(&b, 3, 4);
	put_u8(&b, 0x07);
	put_be(&b, 4, 4);
	put(&b, "test", 4);
	put_section(&b, 0x01, 0);			/* 17 */
	put_be(&b, 0x40000 | 0x004, 8);			/* MEM_SIZE, 256 KiB */
	put_name(&b, "pc.ram");
	put_be(&b, 0x40000, 8);
	put_be(&b, 4096, 8);
	put_be(&b, 0x200, 8);				/* MULTIFD_FLUSH */
	put_be(&b, 0x010, 8);				/* EOS */
	put_footer(&b, 0);
	part_at = b.n;
	put_section(&b, 0x02, 0);
	put_be(&b, 0x3000 | 0x002, 8);			/* ZERO, named */
	put_name(&b, "pc.ram");
	put_u8(&b, 0);
	second_page = b.n;
	put_be(&b, 0x5000 | 0x008 | 0x020, 8);		/* PAGE, CONTINUE */
	put(&b, page, sizeof(page));
	put_be(&b, 0x3f000 | 0x008 | 0x020, 8);
	put(&b, page, sizeof(page));
	put_be(&b, 0x200, 8);
	put_be(&b, 0x010, 8);
	put_footer(&b, 0);
	put_u8(&b, 0x00);
	write_file(copy, b.b, b.n);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "dump failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "        17 SECTION_START id 0 idstr \"ram\" instance 0 "
				      "version 1 payload_bytes 47 pages 0 zero_pages 0 flushes 1 "
				      "block_list eos"));
	ck_assert_ptr_nonnull(strstr(out, "        42   RAM_BLOCK name \"pc.ram\" size 262144 "
				      "page_size 4096\n"));
	ck_assert_ptr_nonnull(strstr(out, " pages 2 zero_pages 1 flushes 1 lowest_offset 0x3000 "
				      "highest_offset 0x3f000 eos"));
	ck_assert_ptr_nonnull(strstr(out, "ZERO block \"pc.ram\" offset 0x3000 flags 0x2\n"));
	ck_assert_ptr_nonnull(strstr(out, "PAGE block \"pc.ram\" offset 0x5000 flags 0x28\n"));
	ck_assert_ptr_nonnull(strstr(out, "valid: 3 records, 2 pages, 1 zero pages"));

	/* A page beyond the 256 KiB block. */
	b.b[second_page + 5] = 0x04;	/* offset 0x45000 */
	write_file(copy, b.b, b.n);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check), 1);
	{
		char want[128];

		snprintf(want, sizeof(want), "offset %zu: ram: page offset 0x45000 is not a page "
			 "of block 'pc.ram'", second_page);
		ck_assert_msg(strstr(out, want) != NULL, "no '%s' in: %s", want, out);
	}
	/* A PART for a section id nothing bound. */
	b.b[second_page + 5] = 0x00;
	b.b[part_at + 4] = 9;
	write_file(copy, b.b, b.n);
	ck_assert_int_eq(test_run_tool(out, sizeof(out), true, check), 1);
	ck_assert_msg(strstr(out, "SECTION_PART for section id 9, which no START or FULL bound"),
		      "%s", out);
	cleanup();
}
END_TEST

/* Exit status of `python3 -c @script @arg`. */
static int run_python(const char *script, const char *arg)
{
	int status;
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		execlp("python3", "python3", "-c", script, arg, (char *)NULL);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Names with a quote, a newline, a control byte, a byte that is not UTF-8
 * and a character that is: every --json line must still be JSON (python3's
 * parser decides), with the names as they were, the bad byte as U+00FF. */
START_TEST(dump_json_escapes_hostile_names)
{
	static struct buf b;
	static const char name[] = "pc\"ram\n\x01\xff\xc3\xa9";
	static const char idstr[] = "dev\"\\\n\x1b[2J\xc3";
	static const char script[] =
		"import json, sys\n"
		"recs = [json.loads(l) for l in open(sys.argv[1], encoding='utf-8')]\n"
		"names = [r.get('name') for r in recs if r['type'] == 'RAM_BLOCK']\n"
		"ids = [r.get('idstr') for r in recs if r['type'] == 'SECTION_FULL']\n"
		"assert names == ['pc\"ram\\n\\x01\\xff\\xe9'], names\n"
		"assert ids == ['dev\"\\\\\\n\\x1b[2J\\xc3'], ids\n"
		"assert recs[-1]['type'] == 'SUMMARY' and recs[-1]['valid'], recs[-1]\n";
	const char *args[] = { "dump", "--json", copy, NULL };
	const char *tmp = getenv("TMPDIR");
	char json_path[4300];

	if (!test_have_tool("dump"))
		return;
	snprintf(dir, sizeof(dir), "%s/mfd-dump.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(mig, sizeof(mig), "%s/none", dir);
	snprintf(copy, sizeof(copy), "%s/names.mig", dir);
	snprintf(json_path, sizeof(json_path), "%s/names.json", dir);
	b.n = 0;
	put(&b, "QEVM", 4);
	put_be(&b, 3, 4);
	put_u8(&b, 0x07);
	put_be(&b, 4, 4);
	put(&b, "test", 4);
	put_section(&b, 0x01, 0);			/* START "ram" */
	put_be(&b, 0x40000 | 0x004, 8);			/* MEM_SIZE, 256 KiB */
	put_name(&b, name);
	put_be(&b, 0x40000, 8);
	put_be(&b, 4096, 8);
	put_be(&b, 0x010, 8);				/* EOS */
	put_footer(&b, 0);
	put_u8(&b, 0x04);				/* FULL, a device */
	put_be(&b, 1, 4);
	put_name(&b, idstr);
	put_be(&b, 0, 4);
	put_be(&b, 1, 4);
	put(&b, "\xca\xfe", 2);
	put_footer(&b, 1);
	put_u8(&b, 0x00);				/* EOF */
	write_file(copy, b.b, b.n);
	ck_assert_msg(test_run_tool(out, sizeof(out), false, args) == 0, "dump failed:\n%s", out);
	write_file(json_path, out, strlen(out));
	ck_assert_msg(run_python(script, json_path) == 0, "python3 rejects:\n%s", out);
	/* No raw control byte in the text at all, the lines included. */
	for (const char *p = out; *p; p++)
		ck_assert_msg((unsigned char)*p >= 0x20 || *p == '\n', "raw byte 0x%02x in:\n%s",
			      (unsigned char)*p, out);
	unlink(json_path);
	cleanup();
}
END_TEST

START_TEST(send_verbose_shows_library_info)
{
	const char *tmp = getenv("TMPDIR");
	char to[4300];
	const char *args[] = { "send", "--size", "1M", "-v", "--to", to, NULL };

	if (!test_have_tool("dump"))
		return;
	snprintf(dir, sizeof(dir), "%s/mfd-dump.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(mig, sizeof(mig), "%s/guest.mig", dir);
	snprintf(copy, sizeof(copy), "%s/none", dir);
	snprintf(to, sizeof(to), "file:%s", mig);
	ck_assert_msg(test_run_tool(out, sizeof(out), true, args) == 0, "send -v failed:\n%s", out);
	ck_assert_ptr_nonnull(strstr(out, "multifd send: 1 MiB synthetic guest to file:"));
	ck_assert_ptr_nonnull(strstr(out, "libmultifd info: migration outgoing: active -> device"));
	cleanup();
}
END_TEST

Suite *suite_dump(void)
{
	Suite *s = suite_create("dump");
	TCase *tc = tcase_create("dump");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, dump_lists_a_file_migration);
	tcase_add_test(tc, dump_json_lines_parse);
	tcase_add_test(tc, dump_check_finds_the_offset);
	tcase_add_test(tc, dump_survives_corruption);
	tcase_add_test(tc, dump_decodes_commands_and_packages);
	tcase_add_test(tc, dump_counts_ram_records);
	tcase_add_test(tc, dump_json_escapes_hostile_names);
	tcase_add_test(tc, send_verbose_shows_library_info);
	suite_add_tcase(s, tc);
	return s;
}
