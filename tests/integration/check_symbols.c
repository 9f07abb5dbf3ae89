/* SPDX-License-Identifier: MIT */
/*
 * The shared library exports only the public mfd_ API and carries the
 * expected soname.  The ELF file is parsed here directly (no nm/readelf), so
 * every offset read from it is checked against the file size first.
 *
 * Three lists must agree: the functions declared MFD_API in the public
 * headers, the linker version script core/libmultifd.map, and the library's
 * dynamic symbols, each of which must carry the version node the map gives
 * it.  The generated man3 pages must document every public function.
 */
#include <check.h>
#include <ctype.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <multifd/version.h>

#include "tests/lib/testlib.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
/* The soname and the version node prefix follow MFD_ABI_VERSION (docs/abi.md). */
#define SONAME "libmultifd.so." STRINGIFY(MFD_ABI_VERSION)
#define NODE_PREFIX "LIBMULTIFD_" STRINGIFY(MFD_ABI_VERSION)

struct elf_image {
	unsigned char *data;
	size_t size;
	const Elf64_Shdr *shdrs;
	size_t shnum;
};

/* A region [off, off + len) of the file, or NULL when it is out of bounds. */
static const void *region(const struct elf_image *img, uint64_t off, uint64_t len)
{
	if (off > img->size || len > img->size - off)
		return NULL;
	return img->data + off;
}

/* The NUL-terminated string at @off of string table section @strtab, or NULL. */
static const char *string_at(const struct elf_image *img, const Elf64_Shdr *strtab, uint64_t off)
{
	const char *tab = region(img, strtab->sh_offset, strtab->sh_size);

	if (!tab || off >= strtab->sh_size)
		return NULL;
	if (!memchr(tab + off, '\0', strtab->sh_size - off))
		return NULL;
	return tab + off;
}

/* The section linked from @sec (its string table), or NULL. */
static const Elf64_Shdr *linked_section(const struct elf_image *img, const Elf64_Shdr *sec)
{
	if (sec->sh_link == SHN_UNDEF || sec->sh_link >= img->shnum)
		return NULL;
	return &img->shdrs[sec->sh_link];
}

static const Elf64_Shdr *find_section(const struct elf_image *img, uint32_t type)
{
	for (size_t i = 0; i < img->shnum; i++)
		if (img->shdrs[i].sh_type == type)
			return &img->shdrs[i];
	return NULL;
}

/*
 * Loads $MFD_BUILDDIR/libmultifd.so.N (N = MFD_ABI_VERSION) into @img.  Returns 0, or 1 when
 * MFD_BUILDDIR is unset (the caller skips).  Fails the test on any error.
 */
static int load_library(struct elf_image *img)
{
	const char *builddir = getenv("MFD_BUILDDIR");
	char path[4096];
	struct stat st;
	int fd;

	memset(img, 0, sizeof(*img));
	if (!builddir || !*builddir) {
		test_skip("builddir", "symbols: MFD_BUILDDIR is not set (run through `make check`)");
		return 1;
	}
	ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", builddir, SONAME), (int)sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_msg(fd >= 0, "cannot open %s: %s", path, strerror(errno));
	ck_assert_msg(fstat(fd, &st) == 0, "cannot stat %s: %s", path, strerror(errno));
	ck_assert_msg(st.st_size > 0 && (uint64_t)st.st_size < (UINT64_C(1) << 31),
		      "%s: implausible size %lld", path, (long long)st.st_size);
	img->size = (size_t)st.st_size;
	img->data = malloc(img->size);
	ck_assert_ptr_nonnull(img->data);
	for (size_t got = 0; got < img->size;) {
		ssize_t n = read(fd, img->data + got, img->size - got);

		ck_assert_msg(n > 0, "%s: read failed at byte %zu", path, got);
		got += (size_t)n;
	}
	close(fd);

	const Elf64_Ehdr *eh = region(img, 0, sizeof(*eh));

	ck_assert_msg(eh && memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0, "%s: not an ELF file", path);
	ck_assert_msg(eh->e_ident[EI_CLASS] == ELFCLASS64, "%s: not ELF64", path);
	ck_assert_msg(eh->e_type == ET_DYN, "%s: not a shared object (e_type %u)", path, eh->e_type);
	ck_assert_msg(eh->e_shentsize == sizeof(Elf64_Shdr), "%s: section header size %u",
		      path, eh->e_shentsize);
	ck_assert_msg(eh->e_shnum > 0, "%s: no section headers", path);
	img->shnum = eh->e_shnum;
	img->shdrs = region(img, eh->e_shoff, (uint64_t)img->shnum * sizeof(Elf64_Shdr));
	ck_assert_msg(img->shdrs, "%s: section headers (offset %llu, %zu entries) beyond the file",
		      path, (unsigned long long)eh->e_shoff, img->shnum);
	ck_assert_msg(eh->e_shoff % _Alignof(Elf64_Shdr) == 0, "%s: misaligned section headers", path);
	return 0;
}

/* The entries of section @sec as an array of @entsize-byte records. */
static const void *section_table(const struct elf_image *img, const Elf64_Shdr *sec,
				 size_t entsize, size_t align, size_t *count)
{
	const void *p = region(img, sec->sh_offset, sec->sh_size);

	ck_assert_msg(p, "section at offset %llu, size %llu, lies beyond the file",
		      (unsigned long long)sec->sh_offset, (unsigned long long)sec->sh_size);
	ck_assert_msg(sec->sh_entsize == entsize, "section entry size %llu, expected %zu",
		      (unsigned long long)sec->sh_entsize, entsize);
	ck_assert_msg(sec->sh_offset % align == 0, "misaligned section at offset %llu",
		      (unsigned long long)sec->sh_offset);
	*count = sec->sh_size / entsize;
	return p;
}

START_TEST(test_exports_are_prefixed)
{
	struct elf_image img;
	size_t nsyms, exported = 0, offenders = 0;
	int have_version = 0, have_strerror = 0;

	if (load_library(&img))
		return;
	const Elf64_Shdr *dynsym = find_section(&img, SHT_DYNSYM);
	ck_assert_msg(dynsym, "no .dynsym section");
	const Elf64_Shdr *dynstr = linked_section(&img, dynsym);
	ck_assert_msg(dynstr && dynstr->sh_type == SHT_STRTAB, ".dynsym has no string table");
	const Elf64_Sym *syms = section_table(&img, dynsym, sizeof(Elf64_Sym),
					      _Alignof(Elf64_Sym), &nsyms);

	for (size_t i = 0; i < nsyms; i++) {
		const Elf64_Sym *s = &syms[i];
		unsigned bind = ELF64_ST_BIND(s->st_info), type = ELF64_ST_TYPE(s->st_info);

		if (s->st_shndx == SHN_UNDEF)
			continue;
		if (bind != STB_GLOBAL && bind != STB_WEAK)
			continue;
		if (type != STT_FUNC && type != STT_OBJECT)
			continue;
		/* The linker defines each version node as an empty absolute symbol. */
		if (s->st_shndx == SHN_ABS && s->st_size == 0 && s->st_value == 0)
			continue;
		const char *name = string_at(&img, dynstr, s->st_name);
		ck_assert_msg(name, "symbol %zu: name offset %u outside .dynstr", i, s->st_name);
		exported++;
		if (strncmp(name, "mfd_", 4) != 0) {
			fprintf(stderr, "symbols: exported without the mfd_ prefix: %s (%s)\n", name,
			       type == STT_FUNC ? "function" : "object");
			offenders++;
		}
		have_version |= strcmp(name, "mfd_version") == 0;
		have_strerror |= strcmp(name, "mfd_strerror") == 0;
	}
	free(img.data);
	ck_assert_msg(offenders == 0, "%zu of %zu exported symbols lack the mfd_ prefix (listed above)",
		      offenders, exported);
	ck_assert_msg(have_version, "mfd_version is not exported");
	ck_assert_msg(have_strerror, "mfd_strerror is not exported");
}
END_TEST

START_TEST(test_soname)
{
	struct elf_image img;
	const char *soname = NULL;
	size_t ndyn;

	if (load_library(&img))
		return;
	const Elf64_Shdr *dynamic = find_section(&img, SHT_DYNAMIC);
	ck_assert_msg(dynamic, "no .dynamic section");
	const Elf64_Shdr *dynstr = linked_section(&img, dynamic);
	ck_assert_msg(dynstr && dynstr->sh_type == SHT_STRTAB, ".dynamic has no string table");
	const Elf64_Dyn *dyn = section_table(&img, dynamic, sizeof(Elf64_Dyn),
					     _Alignof(Elf64_Dyn), &ndyn);

	for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
		if (dyn[i].d_tag != DT_SONAME)
			continue;
		soname = string_at(&img, dynstr, dyn[i].d_un.d_val);
		ck_assert_msg(soname, "DT_SONAME offset %llu outside the string table",
			      (unsigned long long)dyn[i].d_un.d_val);
	}
	ck_assert_msg(soname, "no DT_SONAME entry");
	ck_assert_str_eq(soname, SONAME);
	free(img.data);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* The version script, the header and the library agree                     */
/* ------------------------------------------------------------------------ */

/* A list of symbol names, each with the version node it belongs to (or ""). */
struct name_list {
	char **names;
	char **nodes;
	size_t n, cap;
};

static void names_add(struct name_list *l, const char *name, size_t len, const char *node)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 128;
		l->names = realloc(l->names, l->cap * sizeof(*l->names));
		l->nodes = realloc(l->nodes, l->cap * sizeof(*l->nodes));
		ck_assert(l->names && l->nodes);
	}
	l->names[l->n] = strndup(name, len);
	l->nodes[l->n] = strdup(node);
	ck_assert(l->names[l->n] && l->nodes[l->n]);
	l->n++;
}

/* The index of @name in @l, or -1. */
static long names_find(const struct name_list *l, const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->names[i], name) == 0)
			return (long)i;
	return -1;
}

static void names_free(struct name_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->names[i]);
		free(l->nodes[i]);
	}
	free(l->names);
	free(l->nodes);
	memset(l, 0, sizeof(*l));
}

/* $MFD_SRCDIR (or $MFD_BUILDDIR with @builddir), or NULL and a skip message. */
static const char *test_dir(const char *test, int builddir)
{
	const char *var = builddir ? "MFD_BUILDDIR" : "MFD_SRCDIR";
	const char *dir = getenv(var);

	if (!dir || !*dir) {
		test_skip("builddir", "symbols: %s: %s is not set (run through `make check`)", test,
			  var);
		return NULL;
	}
	return dir;
}

/* The contents of @dir/@rel as a NUL-terminated string the caller frees. */
static char *read_text(const char *dir, const char *rel)
{
	char path[4096];
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", dir, rel), (int)sizeof(path));
	f = fopen(path, "r");
	ck_assert_msg(f, "cannot open %s: %s", path, strerror(errno));
	for (;;) {
		buf = realloc(buf, len + 65536 + 1);
		ck_assert_ptr_nonnull(buf);
		size_t n = fread(buf + len, 1, 65536, f);

		len += n;
		if (n < 65536)
			break;
	}
	ck_assert_msg(!ferror(f), "cannot read %s", path);
	fclose(f);
	buf[len] = '\0';
	ck_assert_msg(strlen(buf) == len, "%s contains a NUL byte", path);
	return buf;
}

/* Replaces C comments (and, with @hash, '#' comments to end of line) by spaces. */
static void blank_comments(char *text, int hash)
{
	for (char *p = text; *p; p++) {
		if (p[0] == '/' && p[1] == '*') {
			char *end = strstr(p + 2, "*/");

			ck_assert_msg(end, "unterminated comment");
			memset(p, ' ', (size_t)(end + 2 - p));
			p = end + 1;
		} else if (hash && *p == '#') {
			while (*p && *p != '\n')
				*p++ = ' ';
			if (!*p)
				break;
		}
	}
}

static int is_ident(int c)
{
	return isalnum((unsigned char)c) || c == '_' || c == '.' || c == '*';
}

/*
 * Parses a version script: "NODE { global: a; b; local: *; } [PARENT];"
 * repeated.  The global names go to @out with their node; a wildcard in a
 * global list, a missing "local: *;" or anything else unexpected fails.
 */
static void parse_map(char *text, struct name_list *out)
{
	enum { OUTSIDE, OPENED, GLOBAL, LOCAL, CLOSED } state = OUTSIDE;
	char node[128] = "";
	int saw_local_all = 0;

	blank_comments(text, 1);
	for (char *p = text; *p;) {
		if (isspace((unsigned char)*p)) {
			p++;
			continue;
		}
		if (is_ident(*p)) {
			char *start = p;

			while (is_ident(*p))
				p++;
			size_t len = (size_t)(p - start);

			while (isspace((unsigned char)*p))
				p++;
			if (state == OUTSIDE) {
				ck_assert_msg(len < sizeof(node) && *p == '{',
					      "map: expected 'NODE {' at '%.20s'", start);
				memcpy(node, start, len);
				node[len] = '\0';
				state = OPENED;
				p++;
			} else if ((state == OPENED || state == GLOBAL || state == LOCAL) && *p == ':') {
				ck_assert_msg((len == 6 && !strncmp(start, "global", 6)) ||
					      (len == 5 && !strncmp(start, "local", 5)),
					      "map: unknown scope '%.*s'", (int)len, start);
				state = len == 6 ? GLOBAL : LOCAL;
				p++;
			} else if (state == GLOBAL && *p == ';') {
				ck_assert_msg(!memchr(start, '*', len),
					      "map: wildcard '%.*s' in the global list of %s",
					      (int)len, start, node);
				names_add(out, start, len, node);
				p++;
			} else if (state == LOCAL && *p == ';') {
				ck_assert_msg(len == 1 && *start == '*',
					      "map: local list of %s names '%.*s' instead of '*'",
					      node, (int)len, start);
				saw_local_all = 1;
				p++;
			} else if (state == CLOSED && *p == ';') {
				state = OUTSIDE;	/* the parent node's name */
				p++;
			} else {
				ck_abort_msg("map: unexpected '%.*s' in node '%s'", (int)len, start, node);
			}
		} else if (*p == '}' && state != OUTSIDE && state != CLOSED) {
			state = CLOSED;
			p++;
		} else if (*p == ';' && state == CLOSED) {
			state = OUTSIDE;
			p++;
		} else {
			ck_abort_msg("map: unexpected character '%c' in node '%s'", *p, node);
		}
	}
	ck_assert_msg(state == OUTSIDE, "map: node '%s' is not closed", node);
	ck_assert_msg(saw_local_all, "map: no 'local: *;' (unlisted symbols would be exported)");
}

/* Adds the name of every function declared MFD_API in the C text @text. */
static void parse_header(char *text, const char *file, struct name_list *out)
{
	blank_comments(text, 0);
	/* Preprocessor lines (the definition of MFD_API itself) are not declarations. */
	for (char *p = text; *p; p++) {
		if ((p == text || p[-1] == '\n')) {
			char *q = p;

			while (*q == ' ' || *q == '\t')
				q++;
			if (*q == '#') {
				while (*q && !(*q == '\n' && q[-1] != '\\'))
					*q++ = ' ';
				p = q;
				if (!*p)
					break;
			}
		}
	}
	for (char *p = text; (p = strstr(p, "MFD_API")) != NULL; p += 7) {
		if ((p > text && is_ident(p[-1])) || is_ident(p[7]))
			continue;
		char *paren = strchr(p, '(');
		char *semi = strchr(p, ';');

		ck_assert_msg(paren && (!semi || paren < semi),
			      "%s: an MFD_API declaration that is not a function: '%.60s'", file, p);
		char *end = paren;

		while (end > p && isspace((unsigned char)end[-1]))
			end--;
		char *start = end;

		while (start > p && (isalnum((unsigned char)start[-1]) || start[-1] == '_'))
			start--;
		ck_assert_msg(start < end, "%s: no function name before '(' in '%.60s'", file, p);
		names_add(out, start, (size_t)(end - start), "");
	}
}

/* Every function declared MFD_API in $srcdir/include/multifd/\*.h. */
static void header_functions(const char *srcdir, struct name_list *out)
{
	char dirpath[4096];
	DIR *d;
	struct dirent *de;
	size_t files = 0;

	ck_assert_int_lt(snprintf(dirpath, sizeof(dirpath), "%s/include/multifd", srcdir),
			 (int)sizeof(dirpath));
	d = opendir(dirpath);
	ck_assert_msg(d, "cannot open %s: %s", dirpath, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		char rel[512];

		if (len < 3 || strcmp(de->d_name + len - 2, ".h") != 0)
			continue;
		ck_assert_int_lt(snprintf(rel, sizeof(rel), "include/multifd/%s", de->d_name),
				 (int)sizeof(rel));
		char *text = read_text(srcdir, rel);

		parse_header(text, rel, out);
		free(text);
		files++;
	}
	closedir(d);
	ck_assert_msg(files > 0, "no header in %s", dirpath);
	ck_assert_msg(out->n > 0, "no MFD_API function in %s", dirpath);
}

static void map_symbols(const char *srcdir, struct name_list *out)
{
	char *text = read_text(srcdir, "core/libmultifd.map");

	parse_map(text, out);
	free(text);
	ck_assert_msg(out->n > 0, "core/libmultifd.map lists no symbol");
	/* An ABI bump restarts the script: no node of an older ABI may remain
	 * (LIBMULTIFD_1 or LIBMULTIFD_1.N for ABI 1). */
	for (size_t i = 0; i < out->n; i++) {
		const char *rest = out->nodes[i] + strlen(NODE_PREFIX);

		ck_assert_msg(strncmp(out->nodes[i], NODE_PREFIX, strlen(NODE_PREFIX)) == 0 &&
				      (*rest == '\0' || *rest == '.'),
			      "core/libmultifd.map lists %s under node %s; ABI %d's nodes are "
			      NODE_PREFIX " and " NODE_PREFIX ".N",
			      out->names[i], out->nodes[i], MFD_ABI_VERSION);
	}
	for (size_t i = 0; i < out->n; i++)
		for (size_t j = i + 1; j < out->n; j++)
			ck_assert_msg(strcmp(out->names[i], out->names[j]) != 0,
				      "core/libmultifd.map lists %s twice (nodes %s and %s)",
				      out->names[i], out->nodes[i], out->nodes[j]);
}

/*
 * The library's exported (defined, global or weak) functions and objects,
 * each with the name of its version (from .gnu.version and .gnu.version_d;
 * "" when the symbol has none).  Returns 1 when MFD_BUILDDIR is unset.
 */
static int library_symbols(struct name_list *out)
{
	struct elf_image img;
	size_t nsyms, nver = 0;
	const uint16_t *versym = NULL;

	if (load_library(&img))
		return 1;
	const Elf64_Shdr *dynsym = find_section(&img, SHT_DYNSYM);
	ck_assert_msg(dynsym, "no .dynsym section");
	const Elf64_Shdr *dynstr = linked_section(&img, dynsym);
	ck_assert_msg(dynstr && dynstr->sh_type == SHT_STRTAB, ".dynsym has no string table");
	const Elf64_Sym *syms = section_table(&img, dynsym, sizeof(Elf64_Sym),
					      _Alignof(Elf64_Sym), &nsyms);
	const Elf64_Shdr *vs = find_section(&img, SHT_GNU_versym);
	const Elf64_Shdr *vd = find_section(&img, SHT_GNU_verdef);

	if (vs) {
		versym = section_table(&img, vs, sizeof(uint16_t), _Alignof(uint16_t), &nver);
		ck_assert_msg(nver == nsyms, ".gnu.version has %zu entries, .dynsym %zu", nver, nsyms);
	}
	for (size_t i = 0; i < nsyms; i++) {
		const Elf64_Sym *s = &syms[i];
		unsigned bind = ELF64_ST_BIND(s->st_info), type = ELF64_ST_TYPE(s->st_info);

		if (s->st_shndx == SHN_UNDEF || (bind != STB_GLOBAL && bind != STB_WEAK))
			continue;
		const char *name = string_at(&img, dynstr, s->st_name);
		ck_assert_msg(name, "symbol %zu: name offset %u outside .dynstr", i, s->st_name);
		if (type != STT_FUNC && type != STT_OBJECT && type != STT_GNU_IFUNC &&
		    type != STT_TLS)
			continue;
		const char *version = "";

		if (versym && (versym[i] & 0x7fff) > 1) {
			unsigned want = versym[i] & 0x7fff;
			uint64_t off = 0;
			size_t seen = 0;
			const char *found = NULL;

			ck_assert_msg(vd, "%s has version index %u but there is no .gnu.version_d",
				      name, want);
			const Elf64_Shdr *vdstr = linked_section(&img, vd);
			ck_assert_msg(vdstr && vdstr->sh_type == SHT_STRTAB,
				      ".gnu.version_d has no string table");
			/* vd->sh_info entries, chained by vd_next (relative offsets). */
			while (seen++ < vd->sh_info) {
				const Elf64_Verdef *def = region(&img, vd->sh_offset + off, sizeof(*def));

				ck_assert_msg(def && off + sizeof(*def) <= vd->sh_size,
					      ".gnu.version_d entry at %llu beyond the section",
					      (unsigned long long)off);
				if (def->vd_ndx == want) {
					const Elf64_Verdaux *aux = region(&img,
						vd->sh_offset + off + def->vd_aux, sizeof(*aux));

					ck_assert_msg(aux, ".gnu.version_d aux entry beyond the file");
					found = string_at(&img, vdstr, aux->vda_name);
					ck_assert_msg(found, "version name outside the string table");
					ck_assert_msg(!(def->vd_flags & VER_FLG_BASE),
						      "%s is versioned with the base (file) version", name);
					break;
				}
				if (def->vd_next == 0)
					break;
				off += def->vd_next;
			}
			ck_assert_msg(found, "%s: version index %u is not defined in .gnu.version_d",
				      name, want);
			version = found;
		}
		/* The linker defines each version node as an absolute symbol of its name. */
		if (s->st_shndx == SHN_ABS && strcmp(name, version) == 0)
			continue;
		names_add(out, name, strlen(name), version);
	}
	free(img.data);
	return 0;
}

START_TEST(test_map_matches_library)
{
	struct name_list map = { 0 }, lib = { 0 };
	const char *srcdir = test_dir("map/library", 0);
	size_t missing = 0, unlisted = 0;

	if (!srcdir)
		return;
	if (library_symbols(&lib))
		return;
	map_symbols(srcdir, &map);
	for (size_t i = 0; i < map.n; i++)
		if (names_find(&lib, map.names[i]) < 0) {
			fprintf(stderr, "symbols: %s is in core/libmultifd.map (%s) but the library "
				"does not export it\n", map.names[i], map.nodes[i]);
			missing++;
		}
	for (size_t i = 0; i < lib.n; i++)
		if (names_find(&map, lib.names[i]) < 0) {
			fprintf(stderr, "symbols: the library exports %s, which is not in "
				"core/libmultifd.map\n", lib.names[i]);
			unlisted++;
		}
	ck_assert_msg(missing == 0, "%zu symbols of the version script are not exported (listed above)",
		      missing);
	ck_assert_msg(unlisted == 0, "%zu exported symbols are not in the version script (listed above)",
		      unlisted);
	names_free(&map);
	names_free(&lib);
}
END_TEST

START_TEST(test_map_matches_header)
{
	struct name_list map = { 0 }, api = { 0 };
	const char *srcdir = test_dir("map/header", 0);
	size_t missing = 0, extra = 0;

	if (!srcdir)
		return;
	map_symbols(srcdir, &map);
	header_functions(srcdir, &api);
	for (size_t i = 0; i < api.n; i++)
		if (names_find(&map, api.names[i]) < 0) {
			fprintf(stderr, "symbols: %s is declared MFD_API but is not in "
				"core/libmultifd.map\n", api.names[i]);
			missing++;
		}
	for (size_t i = 0; i < map.n; i++)
		if (names_find(&api, map.names[i]) < 0) {
			fprintf(stderr, "symbols: core/libmultifd.map lists %s, which no header "
				"declares MFD_API\n", map.names[i]);
			extra++;
		}
	ck_assert_msg(missing == 0, "%zu MFD_API functions are missing from the version script "
		      "(listed above)", missing);
	ck_assert_msg(extra == 0, "%zu symbols of the version script are not declared MFD_API "
		      "(listed above)", extra);
	names_free(&map);
	names_free(&api);
}
END_TEST

START_TEST(test_symbols_carry_version)
{
	struct name_list map = { 0 }, lib = { 0 };
	const char *srcdir = test_dir("versions", 0);
	size_t wrong = 0;

	if (!srcdir)
		return;
	if (library_symbols(&lib))
		return;
	map_symbols(srcdir, &map);
	for (size_t i = 0; i < lib.n; i++) {
		long m = names_find(&map, lib.names[i]);

		if (m < 0)
			continue;	/* reported by test_map_matches_library */
		if (strcmp(lib.nodes[i], map.nodes[m]) != 0) {
			fprintf(stderr, "symbols: %s has version '%s', the map puts it in '%s'\n",
				lib.names[i], lib.nodes[i][0] ? lib.nodes[i] : "(none)", map.nodes[m]);
			wrong++;
		}
	}
	ck_assert_msg(wrong == 0, "%zu exported symbols lack their version node (listed above; "
		      "was the library linked with -Wl,--version-script?)", wrong);
	names_free(&map);
	names_free(&lib);
}
END_TEST

/*
 * Every MFD_API function is documented in a generated man3 page (a
 * ".SS name()" heading and its prototype in a SYNOPSIS) and has an alias
 * page of its own name, or is the name of a page.
 */
START_TEST(test_man3_covers_api)
{
	struct name_list api = { 0 };
	const char *srcdir = test_dir("man3", 0);
	const char *builddir = test_dir("man3", 1);
	char mandir[4096];
	char *pages[64];
	size_t npages = 0, undocumented = 0;
	DIR *d;
	struct dirent *de;

	if (!srcdir || !builddir)
		return;
	header_functions(srcdir, &api);
	ck_assert_int_lt(snprintf(mandir, sizeof(mandir), "%s/man3", builddir), (int)sizeof(mandir));
	d = opendir(mandir);
	ck_assert_msg(d, "cannot open %s: %s (make builds it)", mandir, strerror(errno));
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);

		if (len < 3 || strcmp(de->d_name + len - 2, ".3") != 0)
			continue;
		char *text = read_text(mandir, de->d_name);

		if (strncmp(text, ".so ", 4) == 0) {
			free(text);
			continue;
		}
		ck_assert_msg(npages < sizeof(pages) / sizeof(pages[0]), "too many man3 pages");
		pages[npages++] = text;
	}
	closedir(d);
	ck_assert_msg(npages > 1, "%s holds no generated page", mandir);
	for (size_t i = 0; i < api.n; i++) {
		char heading[256], alias[512];
		int found = 0;

		ck_assert_int_lt(snprintf(heading, sizeof(heading), "\n.SS %s()\n", api.names[i]),
				 (int)sizeof(heading));
		for (size_t p = 0; p < npages && !found; p++) {
			/* roff escapes '-' only; names have none, so the text is literal. */
			found = strstr(pages[p], heading) != NULL;
		}
		ck_assert_int_lt(snprintf(alias, sizeof(alias), "%s/%s.3", mandir, api.names[i]),
				 (int)sizeof(alias));
		if (!found || access(alias, R_OK) != 0) {
			fprintf(stderr, "symbols: %s() %s\n", api.names[i],
				found ? "has no man3 page of its own name" :
				"is not documented in any page of man3/");
			undocumented++;
		}
	}
	for (size_t p = 0; p < npages; p++)
		free(pages[p]);
	ck_assert_msg(undocumented == 0, "%zu MFD_API functions lack their man3 page (listed above)",
		      undocumented);
	names_free(&api);
}
END_TEST

Suite *suite_symbols(void);

Suite *suite_symbols(void)
{
	Suite *s = suite_create("symbols");
	TCase *tc = tcase_create("shared-library");

	tcase_add_test(tc, test_exports_are_prefixed);
	tcase_add_test(tc, test_soname);
	tcase_add_test(tc, test_map_matches_library);
	tcase_add_test(tc, test_map_matches_header);
	tcase_add_test(tc, test_symbols_carry_version);
	suite_add_tcase(s, tc);

	tc = tcase_create("man3");
	tcase_add_test(tc, test_man3_covers_api);
	suite_add_tcase(s, tc);
	return s;
}
