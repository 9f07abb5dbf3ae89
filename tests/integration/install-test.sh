#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Usage: install-test.sh BUILDDIR SRCDIR
#
# Installs a configured and built tree into a scratch DESTDIR with
# prefix=/usr, checks the installed files (the man3 pages generated in
# BUILDDIR/man3 included), builds and runs install-consumer.c against them
# through pkg-config, then uninstalls and checks that nothing is left.  Then
# does it again with LIBDIR, BINDIR, MANDIR and INCLUDEDIR given on the make
# command line, as a distribution package would.  Exits 0 on success;
# otherwise prints what failed and exits 1.

set -u

if [ $# -ne 2 ]; then
	echo "usage: $0 BUILDDIR SRCDIR" >&2
	exit 2
fi
builddir=$1
srcdir=$2

fail() {
	echo "install-test: FAIL: $*" >&2
	exit 1
}

[ -f "$builddir/config.mk" ] || fail "$builddir is not a configured build directory (no config.mk)"
[ -f "$srcdir/include/multifd/version.h" ] || fail "$srcdir is not the libmultifd source tree"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mfd-install.XXXXXX") || fail "mktemp -d"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
root=$tmp/root
lib=$root/usr/lib

# Values of the build: compiler and sanitizer flags (the consumer must use
# the same sanitizer runtime as the library), version numbers.
config_var() {
	sed -n "s/^$1 = //p" "$builddir/config.mk" | sed -n 1p
}
version_var() {
	sed -n "s/^#define[[:space:]]*$1[[:space:]][[:space:]]*\\([0-9][0-9]*\\).*/\\1/p" "$srcdir/include/multifd/version.h"
}
CC=$(config_var CC)
SAN_FLAGS=$(config_var SAN_FLAGS)
version=$(version_var MFD_VERSION_MAJOR).$(version_var MFD_VERSION_MINOR).$(version_var MFD_VERSION_PATCH)
soname=libmultifd.so.$(version_var MFD_ABI_VERSION)
realname=$soname.$(version_var MFD_VERSION_MINOR).$(version_var MFD_VERSION_PATCH)

# A nested make must not inherit the jobserver or options of `make check`.
unset MAKEFLAGS MFLAGS MAKELEVEL

echo "install-test: make install DESTDIR=$root prefix=/usr"
make -C "$builddir" install DESTDIR="$root" prefix=/usr || fail "make install exited with status $?"

# --- installed files ---------------------------------------------------------

expect_link() {
	[ -L "$1" ] || fail "$1 is not a symbolic link"
	target=$(readlink "$1")
	[ "$target" = "$2" ] || fail "$1 points to '$target', expected '$2'"
}
expect_file() {
	if [ ! -f "$1" ] || [ -L "$1" ]; then
		fail "$1 was not installed (or is not a regular file)"
	fi
}

expect_link "$lib/libmultifd.so" "$soname"
expect_link "$lib/$soname" "$realname"
expect_file "$lib/$realname"
expect_file "$lib/libmultifd.a"
expect_file "$root/usr/include/multifd/multifd.h"
expect_file "$root/usr/include/multifd/version.h"
expect_file "$lib/pkgconfig/multifd.pc"
if [ -f "$builddir/tools/multifd" ]; then
	expect_file "$root/usr/bin/multifd"
	[ -x "$root/usr/bin/multifd" ] || fail "$root/usr/bin/multifd is not executable"
fi
expect_man_pages() {	# MANDIR
	for page in "$srcdir"/man/*.1 "$builddir"/man3/*.3; do
		[ -f "$page" ] || fail "no man page matches $page"
		section=${page##*.}
		expect_file "$1/man$section/${page##*/}"
		cmp -s "$page" "$1/man$section/${page##*/}" || fail "$1/man$section/${page##*/} differs from $page"
	done
	# The overview, a group page and a function's alias page.
	expect_file "$1/man3/libmultifd.3"
	expect_file "$1/man3/mfd_channel.3"
	grep -qx '.so man3/mfd_migrate.3' "$1/man3/mfd_migrate_incoming.3" ||
		fail "$1/man3/mfd_migrate_incoming.3 is not an alias of mfd_migrate.3"
	count=$(ls "$1/man3" | wc -l)
	[ "$count" -ge 20 ] || fail "only $count man3 pages in $1/man3"
}
expect_man_pages "$root/usr/share/man"

# --- an outside program builds and runs against the installation -------------

# The sysroot puts -I and -L inside DESTDIR; the system directories stay on
# the search path for the modules in Requires.private.
pc_path=$lib/pkgconfig:$(pkg-config --variable pc_path pkg-config)
pc() {
	PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_LIBDIR=$pc_path pkg-config "$@"
}
pc_version=$(pc --modversion multifd) || fail "pkg-config cannot read the installed multifd.pc"
[ "$pc_version" = "$version" ] || fail "multifd.pc says version '$pc_version', version.h says '$version'"
flags=$(pc --cflags --libs multifd) || fail "pkg-config --cflags --libs multifd failed"

consumer=$tmp/install-consumer
echo "install-test: $CC -std=c11 $SAN_FLAGS install-consumer.c $flags"
# shellcheck disable=SC2086 # word splitting of the flag lists is wanted
$CC -std=c11 -Wall -Wextra -Werror $SAN_FLAGS -o "$consumer" \
	"$srcdir/tests/integration/install-consumer.c" $flags ||
	fail "install-consumer.c does not build against the installed headers and library"

loaded=$(LD_TRACE_LOADED_OBJECTS=1 LD_LIBRARY_PATH=$lib "$consumer" | sed -n "s/^[[:space:]]*$soname => \\([^ ]*\\).*/\\1/p")
[ "$loaded" = "$lib/$soname" ] || fail "the consumer loads '$loaded' instead of $lib/$soname"

output=$(LD_LIBRARY_PATH=$lib "$consumer")
status=$?
printf '%s\n' "$output"
[ $status -eq 0 ] || fail "install-consumer exited with status $status (runtime version differs from the header?)"
printf '%s\n' "$output" | grep -qx "runtime-version-string: $version" ||
	fail "install-consumer did not report version $version"

# --- uninstall leaves nothing behind ----------------------------------------

echo "install-test: make uninstall DESTDIR=$root prefix=/usr"
make -C "$builddir" uninstall DESTDIR="$root" prefix=/usr || fail "make uninstall exited with status $?"
left=$(find "$root" ! -type d)
[ -z "$left" ] || fail "make uninstall left files behind:
$left"

# --- directory overrides on the make command line -----------------------------

root=$tmp/root2
multiarch=/usr/lib/x86_64-linux-gnu
lib=$root$multiarch
dirs="PREFIX=/usr LIBDIR=$multiarch BINDIR=/usr/sbin MANDIR=/usr/man INCLUDEDIR=/usr/include/mfd"
echo "install-test: make install DESTDIR=$root $dirs"
# shellcheck disable=SC2086 # one word per variable
make -C "$builddir" install DESTDIR="$root" $dirs || fail "make install $dirs exited with status $?"
expect_link "$lib/libmultifd.so" "$soname"
expect_link "$lib/$soname" "$realname"
expect_file "$lib/$realname"
expect_file "$lib/libmultifd.a"
expect_file "$lib/pkgconfig/multifd.pc"
expect_file "$root/usr/include/mfd/multifd/multifd.h"
expect_file "$root/usr/include/mfd/multifd/version.h"
if [ -f "$builddir/tools/multifd" ]; then
	expect_file "$root/usr/sbin/multifd"
fi
expect_man_pages "$root/usr/man"
[ ! -e "$root/usr/lib/libmultifd.a" ] || fail "LIBDIR=$multiarch was ignored: $root/usr/lib/libmultifd.a exists"
[ ! -e "$root/usr/share/man" ] || fail "MANDIR=/usr/man was ignored: $root/usr/share/man exists"

pc_path=$lib/pkgconfig:$(pkg-config --variable pc_path pkg-config)
# (pkgconf puts the sysroot in front of directory variables, pkg-config not)
pc_libdir=$(pc --variable libdir multifd) || fail "pkg-config cannot read $lib/pkgconfig/multifd.pc"
pc_libdir=${pc_libdir#"$root"}
[ "$pc_libdir" = "$multiarch" ] || fail "multifd.pc says libdir '$pc_libdir', expected '$multiarch'"
pc_includedir=$(pc --variable includedir multifd)
pc_includedir=${pc_includedir#"$root"}
[ "$pc_includedir" = "/usr/include/mfd" ] || fail "multifd.pc says includedir '$pc_includedir', expected /usr/include/mfd"
flags=$(pc --cflags --libs multifd) || fail "pkg-config --cflags --libs multifd failed"
echo "install-test: $CC install-consumer.c $flags"
# shellcheck disable=SC2086
$CC -std=c11 -Wall -Wextra -Werror $SAN_FLAGS -o "$consumer" \
	"$srcdir/tests/integration/install-consumer.c" $flags ||
	fail "install-consumer.c does not build against the installation in $multiarch"
LD_LIBRARY_PATH=$lib "$consumer" >/dev/null || fail "install-consumer fails against $lib"

echo "install-test: make uninstall DESTDIR=$root $dirs"
# shellcheck disable=SC2086
make -C "$builddir" uninstall DESTDIR="$root" $dirs || fail "make uninstall $dirs exited with status $?"
left=$(find "$root" ! -type d)
[ -z "$left" ] || fail "make uninstall $dirs left files behind:
$left"

echo "install-test: ok"
