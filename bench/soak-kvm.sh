#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Live-guest soak (`make soak`): SOAK_N live migrations of examples/minivmm
# guests between two processes on loopback, mixing RAM sizes, codecs, channel
# counts, precopy and postcopy, each one watched by a hang detector.
#
#   bench/soak-kvm.sh BUILDDIR
#
# Environment: SOAK_N (200) migrations; SOAK_DEADLINE (60) seconds before a
# migration counts as a hang; SOAK_SIZES (64 256 512) MiB; SOAK_CODECS (none
# zstd lz4 zlib); SOAK_CHANNELS (1 2 4); SOAK_POSTCOPY_EVERY (5: every 5th
# migration is a postcopy one, 0: none); SOAK_DIR (a new directory under
# /tmp) keeps each migration's logs.
#
# A migration that has not ended at the deadline (or whose destination does
# not run the guest by then) is a hang: every thread's stack of both processes
# (gdb -batch 'thread apply all bt') and both sides' statistics (the control
# socket's "stats") go to hang-N/ and to the output, then both are killed.
# A migration that fails, or whose destination fails the a-b check, is a
# failure.  Ends with "soak: N migrations, H hangs, F failures"; the exit
# status is 1 when H + F > 0 (and when KVM is missing: this soak is KVM only).
set -u

B=${1:?usage: soak-kvm.sh BUILDDIR}
V=$B/examples/minivmm/minivmm
N=${SOAK_N:-200}
DEADLINE=${SOAK_DEADLINE:-60}
SIZES=${SOAK_SIZES:-64 256 512}
CODECS=${SOAK_CODECS:-none zstd lz4 zlib}
CHANNELS=${SOAK_CHANNELS:-1 2 4}
PC_EVERY=${SOAK_POSTCOPY_EVERY:-5}

if [ ! -x "$V" ]; then
	echo "soak: $V is missing (it is built where <linux/kvm.h> exists)" >&2
	exit 1
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
	echo "soak: needs read-write /dev/kvm" >&2
	exit 1
fi
if ! command -v gdb >/dev/null 2>&1; then
	echo "soak: gdb not found: hangs will be reported without stacks" >&2
fi
DIR=${SOAK_DIR:-$(mktemp -d /tmp/mfd-soak.XXXXXX)}
mkdir -p "$DIR"

# The n-th word of a list, cycling.
pick() {
	idx=$1
	shift
	set -- $1
	idx=$((idx % $#))
	eval "echo \${$((idx + 1))}"
}

# ctl SOCK WORDS...: one control command, bounded (a hung VMM must not hang us).
ctl() {
	sock=$1
	shift
	timeout 10 "$V" ctl "$sock" "$@" 2>&1
}

json_num() {
	sed -n "s/.*\"$1\": \([0-9][0-9]*\).*/\1/p" | head -n 1
}

# spawn NAME ARGS...: start a minivmm; sets PID.
spawn() {
	name=$1
	shift
	"$V" "$@" --serial "$W/$name.serial" --control "$W/$name.sock" \
		>"$W/$name.log" 2>&1 </dev/null &
	PID=$!
	t=0
	while [ ! -S "$W/$name.sock" ]; do
		if ! kill -0 "$PID" 2>/dev/null || [ $t -ge 200 ]; then
			echo "minivmm $name did not start:"
			tail -n 5 "$W/$name.log"
			return 1
		fi
		sleep 0.1
		t=$((t + 1))
	done
}

stop_both() {
	for p in ${SRC:-} ${DST:-}; do
		kill -9 "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	SRC=
	DST=
}

# hang WHY: dump both sides' stacks and statistics, then kill them.
hang() {
	H=$((H + 1))
	mkdir -p "$W/hang"
	echo "soak: $LABEL: HANG: $1 (logs in $W)"
	for side in src dst; do
		eval "p=\${$(echo $side | tr a-z A-Z):-}"
		[ -n "$p" ] || continue
		if command -v gdb >/dev/null 2>&1; then
			timeout 60 gdb -batch -nx -p "$p" -ex 'info threads' \
				-ex 'thread apply all bt' >"$W/hang/$side.gdb" 2>&1
		fi
		ctl "$W/$side.sock" stats >"$W/hang/$side.stats"
		ctl "$W/$side.sock" state >>"$W/hang/$side.stats"
		echo "--- $side (pid $p) statistics:"
		cat "$W/hang/$side.stats"
		echo "--- $side (pid $p) stacks:"
		grep -E '^(Thread|#)' "$W/hang/$side.gdb" 2>/dev/null | head -n 200
	done
	stop_both
}

fail() {
	F=$((F + 1))
	echo "soak: $LABEL: FAILED: $1 (logs in $W)"
	stop_both
}

# One migration; returns after counting it.
one() {
	i=$1
	# Strides that mix every size with every codec and channel count early.
	size=$(pick "$i" "$SIZES")
	codec=$(pick "$i" "$CODECS")
	chans=$(pick $((i + i / 3)) "$CHANNELS")
	mode=precopy
	if [ "$PC_EVERY" -gt 0 ] && [ $((i % PC_EVERY)) -eq $((PC_EVERY - 1)) ]; then
		mode=postcopy
	fi
	LABEL="$((i + 1))/$N ${size} MiB $codec ${chans}ch $mode"
	W=$DIR/m$((i + 1))
	mkdir -p "$W"
	params="--ram $size --param multifd-channels=$chans --param multifd-compression=$codec"
	if [ $mode = postcopy ]; then
		params="$params --param postcopy-ram=on"
	fi
	SRC=
	DST=
	# The guest dirties all of its RAM as fast as it can: auto-converge
	# lets precopy end (as in the minivmm suite).
	spawn src run $params --param auto-converge=on || { fail "source did not start"; return; }
	SRC=$PID
	spawn dst incoming tcp:127.0.0.1:0 $params || { fail "destination did not start"; return; }
	DST=$PID
	# Migrate a guest that runs (as the minivmm suite does).
	t=0
	until ctl "$W/src.sock" laps | grep -q '^laps=[1-9]'; do
		[ $t -lt 200 ] || { fail "the source guest does not run"; return; }
		sleep 0.1
		t=$((t + 1))
	done
	uri=$(ctl "$W/dst.sock" uri)
	case $uri in tcp:*) ;; *) fail "destination uri: $uri"; return ;; esac
	out=$(ctl "$W/src.sock" migrate "$uri")
	[ "$out" = ok ] || { fail "migrate: $out"; return; }
	start=$(date +%s)
	if [ $mode = postcopy ]; then
		# At once: a small guest would be migrated by precopy before.
		out=$(ctl "$W/src.sock" postcopy)
		case $out in ok*|error:*complet*) ;; *) fail "postcopy: $out"; return ;; esac
	fi
	left=$((DEADLINE - ($(date +%s) - start)))
	[ $left -gt 0 ] || left=1
	out=$(timeout $((left + 10)) "$V" ctl "$W/src.sock" wait $((left * 1000)) 2>&1)
	rc=$?
	if [ $rc -eq 124 ] || [ "${out#error: still}" != "$out" ]; then
		hang "source still migrating after ${DEADLINE} s: ${out:-wait timed out}"
		return
	fi
	echo "$out" >"$W/src.stats"
	case $out in
	*'"status": "completed"'*) ;;
	*) fail "source: $out"; return ;;
	esac
	# The destination runs the guest, and it passes the a-b check.
	while :; do
		st=$(ctl "$W/dst.sock" state)
		[ "$st" = "migration=completed vcpu=running" ] && break
		if [ $(($(date +%s) - start)) -ge "$DEADLINE" ]; then
			hang "destination not running after ${DEADLINE} s: $st"
			return
		fi
		sleep 0.1
	done
	ctl "$W/dst.sock" stats >"$W/dst.stats"
	ctl "$W/dst.sock" stop >/dev/null
	chk=$(ctl "$W/dst.sock" check)
	case $chk in ok\ *) ;; *) fail "a-b check on the destination: $chk"; return ;; esac
	printf 'soak: %s: ok, total %s ms, downtime %s ms, %s passes\n' "$LABEL" \
		"$(json_num total-time <"$W/src.stats")" "$(json_num downtime <"$W/src.stats")" \
		"$(json_num dirty-sync-count <"$W/src.stats")"
	ctl "$W/src.sock" quit >/dev/null
	ctl "$W/dst.sock" quit >/dev/null
	for p in $SRC $DST; do
		t=0
		while kill -0 "$p" 2>/dev/null && [ $t -lt 50 ]; do
			sleep 0.1
			t=$((t + 1))
		done
	done
	stop_both
	rm -rf "$W"
}

H=0
F=0
SRC=
DST=
trap 'stop_both; echo "soak: interrupted after $i migrations, $H hangs, $F failures"; exit 1' INT TERM
echo "soak: $N live minivmm migrations (sizes $SIZES MiB, codecs $CODECS, channels $CHANNELS," \
	"deadline $DEADLINE s), logs of the bad ones in $DIR"
i=0
while [ $i -lt "$N" ]; do
	one $i
	i=$((i + 1))
done
echo "soak: $N migrations, $H hangs, $F failures"
[ $((H + F)) -eq 0 ] && rmdir "$DIR" 2>/dev/null
[ $((H + F)) -eq 0 ]
