#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""mfd-peer: migrate an image file with libmultifd's own tools, source and
destination as two processes, and print one JSON object with the same keys
as qemu-peer.py.

  mfd-peer.py --tool BUILDDIR/tools/multifd --image-file FILE --channels N
              --compression none|zlib|zstd|lz4 [--level L] [--tls]
              [--dirty-rate MIB] [--param NAME=VALUE]...
              [--src-netns NS --dst-netns NS --dst-addr IP] [--timeout S]

The destination is `multifd recv --listen tcp:ADDR:PORT --size MIB` (RAM
anonymous and untouched until pages arrive), the source `multifd send
--image FILE` (the file mapped copy-on-write: a static guest, dirty rate 0).
Each side's CPU time and peak RSS come from wait4() on its own process, so
they cover that side only (process start and exit included: a few ms).
Figures from the source's final statistics: total_ms (start to the
destination's result on the return path), downtime_ms, setup_ms, bytes
(transferred), iterations (dirty-sync-count), throughput_gib_s (RAM bytes /
total_ms); sync count and the longest SYNC round per side (the library
exposes the maximum, not a distribution).  Errors: {"error": ...}, exit 1.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


class PeerError(Exception):
    pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(pid, port):
    """Whether process PID (in its own network namespace) listens on PORT."""
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return False


class Side:
    def __init__(self, name, argv, tmp):
        self.name = name
        self.out_path = os.path.join(tmp, name + ".out")
        self.err_path = os.path.join(tmp, name + ".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, start_new_session=True)
        self.status = None
        self.rusage = None
        self.t_end = None

    def poll(self):
        if self.status is None:
            pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.status, self.rusage = status, ru
                self.t_end = time.monotonic()
                self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def kill(self):
        if not self.poll():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            _, self.status, self.rusage = os.wait4(self.proc.pid, 0)

    def final(self):
        """The last JSON object the side printed."""
        try:
            with open(self.out_path) as f:
                lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
            return json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            return {}

    def stderr_tail(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read()[-400:].decode(errors="replace").strip()
        except OSError:
            return ""


def run(a, tmp):
    size = os.path.getsize(a.image_file)
    if size == 0 or size % (1 << 20):
        raise PeerError("%s: size is not a positive whole number of MiB" % a.image_file)
    mib = size >> 20
    port = free_port()
    params = ["--channels", str(a.channels), "--compression", a.compression,
              "--json", "--quiet"]
    if a.compression in ("zlib", "zstd", "lz4"):
        params += ["--param", "multifd-%s-level=%d" % (a.compression, a.level)]
    params += a.param
    if a.tls:
        psk = os.path.join(tmp, "psk.txt")
        with open(psk, "w") as f:
            f.write("bench:%s\n" % os.urandom(32).hex())
        params += ["--tls-psk-file", psk]
    dst_pre = ["ip", "netns", "exec", a.dst_netns] if a.dst_netns else []
    src_pre = ["ip", "netns", "exec", a.src_netns] if a.src_netns else []
    deadline = time.monotonic() + a.timeout
    dst = src = None
    try:
        dst = Side("dst", dst_pre + [a.tool, "recv", "--listen", "tcp:%s:%d" % (a.dst_addr, port),
                                     "--size", str(mib)] +
                   (["--prealloc"] if a.dst_prealloc else []) + params, tmp)
        while not listening(dst.proc.pid, port):
            if dst.poll():
                raise PeerError("multifd recv exited: %s" % dst.stderr_tail())
            if time.monotonic() > deadline:
                raise PeerError("multifd recv did not listen in time")
            time.sleep(0.005)
        t0 = time.monotonic()
        src = Side("src", src_pre + [a.tool, "send", "--to", "tcp:%s:%d" % (a.dst_addr, port),
                                     "--image", a.image_file] +
                  (["--load"] if a.src_load else []) + [
                                     "--dirty-rate", str(a.dirty_rate)] + params, tmp)
        while not (src.poll() and dst.poll()):
            if time.monotonic() > deadline:
                raise PeerError("timeout after %.0f s" % a.timeout)
            time.sleep(0.005)
        e2e_ms = (max(src.t_end, dst.t_end) - t0) * 1000
        for s in (src, dst):
            if s.proc.returncode != 0:
                raise PeerError("multifd %s failed (exit %s): %s"
                                % ("send" if s is src else "recv", s.proc.returncode,
                                   s.stderr_tail()))
        fs, fd = src.final(), dst.final()
        if fs.get("status") != "completed":
            raise PeerError("source ended %s" % fs.get("status"))
        ram = fs.get("ram", {})
        total_ms = fs.get("total-time", 0)
        ram_bytes = ram.get("total", size)
        ms, md = fs.get("multifd", {}), fd.get("multifd", {})

        def cpu(s):
            return round(s.rusage.ru_utime + s.rusage.ru_stime, 3)

        return {
            "peer": "libmultifd",
            "mode": "live" if a.dirty_rate else "static",
            "dirty_rate_mib_s": a.dirty_rate,
            "channels": a.channels,
            "compression": a.compression,
            "level": a.level if a.compression != "none" else None,
            "tls": bool(a.tls),
            "image_mib": mib,
            "dst_prealloc": bool(a.dst_prealloc),
            "src_load": bool(a.src_load),
            "total_ms": total_ms,
            "downtime_ms": fs.get("downtime", 0),
            "setup_ms": fs.get("setup-time", 0),
            "e2e_ms": round(e2e_ms, 1),
            "bytes": ram.get("transferred", 0),
            "ram_bytes": ram_bytes,
            "multifd_bytes": ram.get("multifd-bytes", 0),
            "iterations": ram.get("dirty-sync-count", 0),
            "throughput_gib_s": round(ram_bytes / (total_ms / 1000) / 2**30, 3)
            if total_ms else 0,
            "wire_ratio": round(ram.get("transferred", 0) / ram_bytes, 3) if ram_bytes else 0,
            "cpu_s_src": cpu(src),
            "cpu_s_dst": cpu(dst),
            "rss_peak_mib_src": round(src.rusage.ru_maxrss / 1024, 1),
            "rss_peak_mib_dst": round(dst.rusage.ru_maxrss / 1024, 1),
            "syncs": ms.get("syncs", 0),
            "sync_ms_max_src": ms.get("sync-ms-max", 0),
            "sync_ms_max_dst": md.get("sync-ms-max", 0),
            "zero_copy_bytes": ms.get("zero-copy", {}).get("bytes", 0),
            "zero_copy_sends": ms.get("zero-copy", {}).get("sends", 0),
            "zero_copy_copied": ms.get("zero-copy", {}).get("copied", 0),
            "zero_copy_refused_channels": ms.get("zero-copy", {}).get("refused-channels", 0),
        }
    finally:
        for s in (src, dst):
            if s:
                s.kill()


def main():
    p = argparse.ArgumentParser(description="Migrate an image with multifd send/recv.")
    p.add_argument("--tool", required=True, help="the multifd binary")
    p.add_argument("--image-file", required=True)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--compression", default="none")
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--param", action="append", default=[], help="NAME=VALUE, both sides")
    p.add_argument("--dirty-rate", type=float, default=0,
                   help="MiB/s the source's writer threads dirty (0: a static guest)")
    p.add_argument("--src-netns")
    p.add_argument("--dst-netns")
    p.add_argument("--dst-addr", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--src-load", action="store_true",
                   help="send --image FILE --load: the source copies the image into "
                   "anonymous huge-page RAM, as a VMM's guest RAM, instead of mapping it")
    p.add_argument("--dst-prealloc", action="store_true",
                   help="recv --prealloc: the destination faults its RAM in before "
                   "listening (QEMU's prealloc=on)")
    a = p.parse_args()
    a.param = [x for kv in a.param for x in ("--param", kv)]

    def on_signal(signum, _frame):
        raise PeerError("interrupted by signal %d" % signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    with tempfile.TemporaryDirectory(prefix="mfd-peer-") as tmp:
        try:
            print(json.dumps(run(a, tmp)))
        except (PeerError, OSError) as e:
            print(json.dumps({"error": str(e)}))
            sys.exit(1)


if __name__ == "__main__":
    main()
