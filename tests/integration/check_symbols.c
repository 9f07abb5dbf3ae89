/* SPDX-License-Identifier: MIT */
/*
 * The shared library exports only the public mfd_ API and carries the
 * expected soname.  The ELF file is parsed here directly (no nm/readelf), so
 * every offset read from it is checked against the file size first.
 */
#include <check.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SONAME "libmultifd.so.0"

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
 * Loads $MFD_BUILDDIR/libmultifd.so.0 into @img.  Returns 0, or 1 when
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
		printf("symbols: skipped, MFD_BUILDDIR is not set (run through `make check`)\n");
		fflush(stdout);
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

Suite *suite_symbols(void);

Suite *suite_symbols(void)
{
	Suite *s = suite_create("symbols");
	TCase *tc = tcase_create("shared-library");

	tcase_add_test(tc, test_exports_are_prefixed);
	tcase_add_test(tc, test_soname);
	suite_add_tcase(s, tc);
	return s;
}
