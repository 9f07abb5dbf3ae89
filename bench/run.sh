#!/bin/sh
# SPDX-License-Identifier: MIT
#
# make bench: the limits and our figures, measured in one run on this machine;
# a table with ratios, and results.json in the build directory.
#
#   bench/run.sh BUILDDIR [MIB]
#
# Limits: iperf3 over loopback (1, 2, 4 streams), memcpy, each codec's own
# single-thread speed on the bench data, `openssl speed` (one core).
# Ours: stream-bench (raw channels, plain and TLS) and multifd-bench (guest RAM
# over multifd: {random, zero, mixed} x {1, 2, 4} channels x each codec) and
# postcopy-bench (fault latency with and without the preempt channel).
# Ratios compare figures of this run only: the machine is shared and noisy.
set -eu

builddir=${1:?usage: run.sh BUILDDIR [MIB]}
mib=${2:-1024}
bin="$builddir/bench"
out="$builddir/results.json"
secs=3
cores=$(nproc)

need() {
	command -v "$1" >/dev/null 2>&1 || { echo "bench: $1 is missing (scripts/install-deps installs it)" >&2; exit 1; }
}
need iperf3
need jq
need openssl
need python3

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

iperf() { # streams -> GiB/s
	port=$(free_port)
	iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
	spid=$!
	sleep 0.3
	v=$(iperf3 -c 127.0.0.1 -p "$port" -P "$1" -t "$secs" -J 2>/dev/null |
		jq '.end.sum_received.bits_per_second / 8 / 1073741824')
	wait "$spid" 2>/dev/null || true
	printf '%.3f' "$v"
}

ossl() { # evp cipher -> GiB/s on one core
	openssl speed -mr -evp "$1" -bytes 16384 -seconds "$secs" 2>/dev/null |
		awk -F: '/^\+F:/ { printf "%.3f", $4 / 1073741824 }'
}

calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }

row() { # label value limit
	printf '%-40s %9.3f %9.3f %6.0f%%\n' "$1" "$2" "$3" "$(calc "($3 > 0) ? 100 * $2 / $3 : 0")"
}

echo "libmultifd bench: $mib MiB per run, $cores CPUs, $(uname -r), $(date -u +%FT%TZ)"

# ---- limits ----
ip1=$(iperf 1); ip2=$(iperf 2); ip4=$(iperf 4)
aes=$(ossl aes-128-gcm); cha=$(ossl chacha20-poly1305)
limits=$("$bin/multifd-bench" --limits --mib "$mib" --json)
memcpy=$(echo "$limits" | jq '.memcpy_gib_per_s')
printf '\n%-40s %9s\n' "limit" "GiB/s"
printf '%-40s %9.3f\n' "iperf3 loopback, 1 stream" "$ip1" "iperf3 loopback, 2 streams" "$ip2" \
	"iperf3 loopback, 4 streams" "$ip4" "memcpy, 1 thread" "$memcpy" \
	"openssl aes-128-gcm, 1 core" "$aes" "openssl chacha20-poly1305, 1 core" "$cha"
for z in $(echo "$limits" | jq -r '.codecs[].codec'); do
	c=$(echo "$limits" | jq ".codecs[] | select(.codec == \"$z\") | .compress_gib_per_s")
	d=$(echo "$limits" | jq ".codecs[] | select(.codec == \"$z\") | .decompress_gib_per_s")
	printf '%-40s %9.3f\n' "$z compress, 1 thread (RAM bytes)" "$c" "$z decompress, 1 thread (RAM bytes)" "$d"
done

iperf_n() { case $1 in 1) echo "$ip1" ;; 2) echo "$ip2" ;; *) echo "$ip4" ;; esac; }

# ---- transport: raw channels ----
printf '\n%-40s %9s %9s %7s\n' "transport (stream-bench)" "GiB/s" "limit" "ratio"
json_stream=""
for conns in 1 2; do
	for tls in none aes128 chacha20; do
		v=$("$bin/stream-bench" --conns "$conns" --tls "$tls" --mib "$mib" --json | jq '.gib_per_s')
		case $tls in
		none) lim=$(iperf_n "$conns") ;;
		aes128) lim=$(calc "$aes * $conns") ;;
		chacha20) lim=$(calc "$cha * $conns") ;;
		esac
		row "$conns conn, tls=$tls" "$v" "$lim"
		json_stream="$json_stream${json_stream:+, }{\"conns\": $conns, \"tls\": \"$tls\", \"gib_per_s\": $v, \"limit\": $lim}"
	done
done
echo "  limits: iperf3 with as many streams; TLS: openssl's one-core speed x connections"

# ---- multifd: guest RAM ----
# Codec limit on the cores in use: with one channel the source compresses while
# the destination decompresses, so the slower side bounds; with more channels
# both sides share the machine's cores: cores / (1/C + 1/D).
printf '\n%-40s %9s %9s %7s\n' "multifd (multifd-bench)" "GiB/s" "limit" "ratio"
json_mfd=""
for pages in random zero mixed; do
	for codec in none $(echo "$limits" | jq -r '.codecs[].codec'); do
		[ "$pages" = zero ] && [ "$codec" != none ] && continue
		for ch in 1 2 4; do
			r=$("$bin/multifd-bench" --mib "$mib" --pages "$pages" --channels "$ch" --codec "$codec" --json)
			v=$(echo "$r" | jq '.gib_per_s')
			wire=$(echo "$r" | jq '.wire_ratio')
			if [ "$codec" = none ]; then
				case $pages in
				zero) lim=$memcpy ;;
				*) lim=$(calc "$(iperf_n "$ch") / $wire") ;;
				esac
				eval "none_${pages}_$ch=$v"
			elif [ "$pages" = random ]; then
				# Incompressible: packets go raw; the bar is nocomp's own figure.
				eval "lim=\$none_random_$ch"
			else
				c=$(echo "$limits" | jq ".codecs[] | select(.codec == \"$codec\") | .compress_gib_per_s")
				d=$(echo "$limits" | jq ".codecs[] | select(.codec == \"$codec\") | .decompress_gib_per_s")
				if [ "$ch" = 1 ]; then
					lim=$(calc "($c < $d) ? $c : $d")
				else
					lim=$(calc "$cores / (1 / $c + 1 / $d)")
				fi
			fi
			row "$pages pages, $ch ch, $codec" "$v" "$lim"
			json_mfd="$json_mfd${json_mfd:+, }{\"pages\": \"$pages\", \"channels\": $ch, \"codec\": \"$codec\", \"gib_per_s\": $v, \"wire_ratio\": $wire, \"limit\": $lim}"
		done
	done
done
echo "  limits: none = iperf3 with as many streams / wire ratio (zero pages: memcpy);"
echo "  codecs on mixed pages = the codec's own speed on the cores in use (see above);"
echo "  codecs on random pages = nocomp's figure with as many channels (packets go raw)"

# ---- postcopy: page-fault latency under a busy background push ----
printf '\n%-40s %9s %9s %9s %7s\n' "postcopy (postcopy-bench, 512 MiB)" "median" "p99" "faults" "time"
json_pc=""
for preempt in off on; do
	set +e
	r=$("$bin/postcopy-bench" --mib 512 --preempt "$preempt" --json)
	rc=$?
	set -e
	if [ "$rc" = 77 ]; then
		echo "  skipped: userfaultfd needs root"
		break
	fi
	[ "$rc" = 0 ] || { echo "bench: postcopy-bench failed" >&2; exit 1; }
	printf '%-40s %7s us %6s us %9s %5s ms\n' "preempt $preempt, push unlimited" \
		"$(echo "$r" | jq .median_us)" "$(echo "$r" | jq .p99_us)" \
		"$(echo "$r" | jq .faults)" "$(echo "$r" | jq .postcopy_ms)"
	json_pc="$json_pc${json_pc:+, }$r"
done
echo "  fault -> page placed on the destination, measured by the library; target:"
echo "  median <= 100 us with the preempt channel (MISSION §7)"

echo "{\"mib\": $mib, \"cpus\": $cores, \"limits\": {\"iperf3\": {\"1\": $ip1, \"2\": $ip2, \"4\": $ip4}, \"openssl_aes128gcm\": $aes, \"openssl_chacha20\": $cha, \"local\": $limits}, \"stream\": [$json_stream], \"multifd\": [$json_mfd], \"postcopy\": [$json_pc]}" | jq . >"$out"
echo
echo "results: $out"
