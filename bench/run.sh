#!/bin/sh
# SPDX-License-Identifier: MIT
#
# make bench: the limits, our figures and QEMU 7.2's, measured in one run on
# this machine on the same data; a table with ratios, BUILDDIR/bench/results.json
# and BUILDDIR/bench/results.png.
#
#   bench/run.sh BUILDDIR [MIB]          (make bench [BENCH_MIB=M] [BENCH_QUICK=1])
#
# This script checks the tools and, run as root, installs Debian's QEMU
# (qemu-system-x86) when it is missing; bench/bench.py does the measuring.
# BENCH_QUICK=1: 256 MiB images, channels {1, 4}, shorter limits (a few
# minutes); the full run (1024 MiB, channels {1, 2, 4, 8}) takes about 15.
# BENCH_NO_QEMU=1 leaves QEMU out.  Ratios compare figures of this run only.
set -eu

builddir=${1:?usage: run.sh BUILDDIR [MIB]}
mib=${2:-}
srcdir=$(cd "$(dirname "$0")/.." && pwd)

need() {
	command -v "$1" >/dev/null 2>&1 || {
		echo "bench: $1 is missing (scripts/install-deps installs it)" >&2
		exit 1
	}
}
need iperf3
need openssl
need python3
need gnuplot

if [ -z "${BENCH_NO_QEMU:-}" ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "bench: installing qemu-system-x86 (Debian's QEMU, the peer to compare with)"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null 2>&1 ||
			{ apt-get update >/dev/null 2>&1 &&
				apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null 2>&1; } ||
			echo "bench: could not install qemu-system-x86: the QEMU columns are skipped"
	else
		echo "bench: qemu-system-x86_64 is missing and installing it needs root" \
			"(apt-get install qemu-system-x86): the QEMU columns are skipped"
	fi
fi

set -- --build "$builddir" --src "$srcdir"
[ -n "$mib" ] && set -- "$@" --mib "$mib"
[ -n "${BENCH_QUICK:-}" ] && [ "${BENCH_QUICK}" != 0 ] && set -- "$@" --quick
[ -n "${BENCH_NO_QEMU:-}" ] && set -- "$@" --no-qemu
exec python3 "$srcdir/bench/bench.py" "$@"
