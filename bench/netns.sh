#!/bin/sh
# SPDX-License-Identifier: MIT
#
# A "real NIC" for make bench: two network namespaces joined by a veth pair,
# each end rate-limited by a tc token bucket.  Needs root (and iproute2).
#
#   bench/netns.sh up GBIT     create (or re-create) the pair at GBIT Gbit/s
#   bench/netns.sh down        remove everything (always safe to call)
#   bench/netns.sh names       print "SRC_NS DST_NS SRC_ADDR DST_ADDR"
#
# Source side: namespace mfdbench-src, 10.231.77.1; destination side:
# mfdbench-dst, 10.231.77.2.  The tbf burst is 4 ms worth of the rate (at
# least 256 KiB, so that 64 KiB GSO segments pass) and the queue holds 20 ms.
set -eu

SRC=mfdbench-src
DST=mfdbench-dst
SRC_ADDR=10.231.77.1
DST_ADDR=10.231.77.2

down() {
	ip netns del "$SRC" 2>/dev/null || true
	ip netns del "$DST" 2>/dev/null || true
}

up() {
	gbit=$1
	case $gbit in
	'' | *[!0-9]*) echo "netns.sh: rate must be a whole number of Gbit/s" >&2; exit 2 ;;
	esac
	down
	# Half-built state is removed on any failure.
	trap 'down' EXIT INT TERM
	ip netns add "$SRC"
	ip netns add "$DST"
	ip link add mfdb-s netns "$SRC" type veth peer name mfdb-d netns "$DST"
	ip -n "$SRC" addr add "$SRC_ADDR/24" dev mfdb-s
	ip -n "$DST" addr add "$DST_ADDR/24" dev mfdb-d
	for ns in "$SRC" "$DST"; do
		ip -n "$ns" link set lo up
	done
	ip -n "$SRC" link set mfdb-s up
	ip -n "$DST" link set mfdb-d up
	burst=$((gbit * 1000000000 / 8 / 250))
	[ "$burst" -ge 262144 ] || burst=262144
	ip netns exec "$SRC" tc qdisc add dev mfdb-s root tbf rate "${gbit}gbit" \
		burst "$burst" latency 20ms
	ip netns exec "$DST" tc qdisc add dev mfdb-d root tbf rate "${gbit}gbit" \
		burst "$burst" latency 20ms
	trap - EXIT INT TERM
}

case ${1:-} in
up) up "${2:-}" ;;
down) down ;;
names) echo "$SRC $DST $SRC_ADDR $DST_ADDR" ;;
*) echo "usage: netns.sh up GBIT | down | names" >&2; exit 2 ;;
esac
