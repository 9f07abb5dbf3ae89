#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qemu-peer: migrate a guest with QEMU's own multifd (Debian's QEMU 7.2)
over loopback TCP, driven through QMP, and print one JSON object.

  qemu-peer.py --mode static --image-mib N --content random|zero|mixed
               --channels N --compression none|zlib|zstd|lz4 [--level L]
               [--prealloc] [--src-prealloc] [--image-file FILE] [--tls]
  qemu-peer.py --mode kvm --image BOOTSECTOR --ram-mib N --channels N [--cpu MODEL]
               --compression C [--postcopy]
  qemu-peer.py --mode fill --image-mib N --content C --out FILE

static: machine `none` (no CPU) whose RAM is a memory-backend-file mapped
share=on over an image file: the file `--image-file` names, or one this script
fills (in /dev/shm) with the bench data generator below, the same bytes
`make bench` gives libmultifd.  The destination's RAM is anonymous
(memory-backend-ram), untouched until pages arrive, like libmultifd's
`multifd recv`; --prealloc preallocates it.  --src-prealloc maps the source's
RAM in before the migration (prealloc=on), as `multifd send --image` does.
kvm: qemu-system-x86_64 -enable-kvm, machine pc, the boot sector as a raw
IDE disk; --postcopy switches to postcopy after the first pass; --prealloc
preallocates the destination's RAM; --cpu picks the CPU model (auto: host, or
host,-arch-capabilities where this host's KVM refuses the MSR QEMU 7.2 copies;
cpu_model in the output says which ran).  QEMU_PEER_KEEP=1 in the environment
keeps the temporary directory (both QEMUs' logs) and prints nothing about it:
look for the newest /tmp/qemu-peer-*.  Known: Debian's QEMU 7.2 destination
aborts in postcopy with multifd on a 2 GiB KVM guest (yank.c:107,
"yank_unregister_instance: Assertion ... failed"); 512 MiB passes.
fill: write the bench data to FILE and exit (what `make bench` uses so that
both migrators read the very same image).

Both sides get the capabilities multifd and return-path (so the source's
total-time ends when the destination has loaded everything, as libmultifd's
does), postcopy-ram when asked, and the same multifd parameters; the source
also max-bandwidth (unlimited: 1 TiB/s) and downtime-limit.  Output keys:
total_ms (source's total-time), downtime_ms, setup_ms, bytes (transferred),
ram_bytes, iterations (dirty-sync-count), throughput_gib_s (ram_bytes /
total_ms), postcopy_started (whether migrate-start-postcopy was sent before
precopy completed), e2e_ms (migrate command to destination completed, as polled),
cpu_s_src / cpu_s_dst (utime + stime during the migration, /proc/PID/stat),
rss_peak_mib_src / rss_peak_mib_dst (VmHWM).  Errors print {"error": ...}
and exit 1; exit 2 when qemu-system-x86_64 is missing.  Every path stops
both QEMU processes and removes the temporary files.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PAGE = 4096
CODECS_72 = ("none", "zlib", "zstd")


class PeerError(Exception):
    """A failure to report as {"error": ...}."""


# --------------------------------------------------------------------------
# Bench data: random, zero, mixed (half zero, a quarter text, a quarter random)

WORDS = ("the of and to in is that for it as with was on be by this page memory "
         "migration kernel return struct int void const static if else while channel "
         "guest host dirty bitmap socket buffer 0x7f3a = { };").split()
TEXT_POOL = 4 << 20
CHUNK_PAGES = 256  # 1 MiB written at a time


def text_pool(rng):
    """Word-by-word text (compresses 2-4x like real text), TEXT_POOL bytes."""
    out = []
    n = 0
    while n < TEXT_POOL:
        r = rng.getrandbits(64)
        w = WORDS[r % len(WORDS)]
        sep = "\n" if (r >> 32) % 9 == 0 else " "
        out.append(w + sep)
        n += len(w) + 1
    return "".join(out).encode()[:TEXT_POOL]


def fill_image(path, mib, content, seed=0x6d6664):
    """Write MIB MiB of bench data to PATH (every page written, so the file
    is fully resident on tmpfs and no hole changes how pages are read)."""
    rng = random.Random(seed)
    pages = (mib << 20) // PAGE
    zero = bytes(PAGE)
    pool = text_pool(rng) if content == "mixed" else b""
    with open(path, "wb") as f:
        for first in range(0, pages, CHUNK_PAGES):
            n = min(CHUNK_PAGES, pages - first)
            if content == "zero":
                f.write(bytes(n * PAGE))
                continue
            if content == "random":
                f.write(rng.randbytes(n * PAGE))
                continue
            parts = []
            for _ in range(n):
                kind = rng.getrandbits(2)
                if kind < 2:
                    parts.append(zero)
                elif kind == 2:
                    o = rng.randrange(TEXT_POOL - PAGE)
                    parts.append(pool[o:o + PAGE])
                else:
                    parts.append(rng.randbytes(PAGE))
            f.write(b"".join(parts))


# --------------------------------------------------------------------------
# QMP

class Qmp:
    """A minimal QMP client on a unix socket: one command at a time, events
    kept in self.events."""

    def __init__(self, path, deadline):
        self.events = []
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(max(1.0, deadline - time.monotonic()))
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise PeerError("QMP socket %s never came up" % path)
                time.sleep(0.02)
        self.f = self.sock.makefile("rwb", buffering=0)
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise PeerError("QEMU closed its QMP connection")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise PeerError("%s: %s" % (name, r["error"].get("desc", r["error"])))
            if "return" in r:
                return r["return"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# Processes

class Qemu:
    def __init__(self, name, argv, tmp, deadline):
        self.name = name
        self.qmp = None
        sock = os.path.join(tmp, name + ".qmp")
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "wb")
        argv = argv + ["-qmp", "unix:%s,server=on,wait=off" % sock]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not os.path.exists(sock):
                if self.proc.poll() is not None:
                    raise PeerError("%s QEMU exited at start: %s" % (name, self.log_tail()))
                if time.monotonic() > deadline:
                    raise PeerError("%s QEMU did not start in time" % name)
                time.sleep(0.02)
            self.qmp = Qmp(sock, deadline)
        except BaseException:
            self.stop()
            raise

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-600:].decode(errors="replace").strip()
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def cpu_s(self):
        """utime + stime so far, in seconds (None once the process is gone)."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def rss_peak_mib(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def stop(self):
        if self.qmp:
            self.qmp.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait()
        self.log.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------
# Migration

def set_up(q, a, source):
    caps = [{"capability": "multifd", "state": True},
            {"capability": "return-path", "state": True}]
    if a.postcopy:
        caps.append({"capability": "postcopy-ram", "state": True})
    q.cmd("migrate-set-capabilities", capabilities=caps)
    params = {"multifd-channels": a.channels, "multifd-compression": a.compression}
    if a.compression in ("zlib", "zstd"):
        params["multifd-%s-level" % a.compression] = a.level
    if a.tls:
        params["tls-creds"] = "tls0"
    if source:
        params["max-bandwidth"] = 1 << 40
        params["downtime-limit"] = a.downtime_limit
    q.cmd("migrate-set-parameters", **params)


def migrate(a, src_argv, dst_argv, tmp, deadline):
    src = dst = None
    try:
        dst = Qemu("dst", dst_argv + ["-incoming", "defer"], tmp, deadline)
        src = Qemu("src", src_argv, tmp, deadline)
        set_up(dst.qmp, a, False)
        set_up(src.qmp, a, True)
        port = free_port()
        uri = "tcp:127.0.0.1:%d" % port
        dst.qmp.cmd("migrate-incoming", uri=uri)
        if a.mode == "kvm" and a.warmup_ms:
            time.sleep(a.warmup_ms / 1000)
        c0s, c0d = src.cpu_s(), dst.cpu_s()
        t0 = time.monotonic()
        src.qmp.cmd("migrate", uri=uri)
        switched = False
        info = {}
        while True:
            if not src.alive():
                raise PeerError("source QEMU died during the migration: %s" % src.log_tail())
            if not dst.alive():
                raise PeerError("destination QEMU died during the migration: %s"
                                % dst.log_tail())
            info = src.qmp.cmd("query-migrate")
            st = info.get("status")
            if st == "completed":
                break
            if st in ("failed", "cancelled"):
                raise PeerError("migration %s: %s" % (st, info.get("error-desc", "no reason")))
            if a.postcopy and not switched and info.get("ram", {}).get("dirty-sync-count", 0) >= 2:
                src.qmp.cmd("migrate-start-postcopy")
                switched = True
            if time.monotonic() > deadline:
                raise PeerError("timeout: migration still %s" % st)
            time.sleep(0.01)
        while True:
            dinfo = dst.qmp.cmd("query-migrate")
            if dinfo.get("status") == "completed":
                break
            if dinfo.get("status") == "failed":
                raise PeerError("destination: migration failed: %s"
                                % dinfo.get("error-desc", "no reason"))
            if not dst.alive():
                raise PeerError("destination QEMU died: %s" % dst.log_tail())
            if time.monotonic() > deadline:
                raise PeerError("timeout: destination still %s" % dinfo.get("status"))
            time.sleep(0.01)
        e2e_ms = (time.monotonic() - t0) * 1000
        c1s, c1d = src.cpu_s(), dst.cpu_s()
        ram = info.get("ram", {})
        total_ms = info.get("total-time", 0)
        ram_bytes = ram.get("total", 0)
        out = {
            "peer": "qemu",
            "qemu_version": src.qmp.cmd("query-version").get("qemu", {}),
            "mode": a.mode,
            "channels": a.channels,
            "compression": a.compression,
            "level": a.level if a.compression in ("zlib", "zstd") else None,
            "tls": bool(a.tls),
            "postcopy": bool(a.postcopy),
            "postcopy_started": switched,
            "total_ms": total_ms,
            "downtime_ms": info.get("downtime", 0),
            "setup_ms": info.get("setup-time", 0),
            "e2e_ms": round(e2e_ms, 1),
            "bytes": ram.get("transferred", 0),
            "ram_bytes": ram_bytes,
            "multifd_bytes": ram.get("multifd-bytes", 0),
            "iterations": ram.get("dirty-sync-count", 0),
            "postcopy_requests": ram.get("postcopy-requests", 0),
            "throughput_gib_s": round(ram_bytes / (total_ms / 1000) / 2**30, 3)
            if total_ms else 0,
        }
        if None not in (c0s, c1s, c0d, c1d):
            out["cpu_s_src"] = round(c1s - c0s, 2)
            out["cpu_s_dst"] = round(c1d - c0d, 2)
        out["rss_peak_mib_src"] = src.rss_peak_mib()
        out["rss_peak_mib_dst"] = dst.rss_peak_mib()
        return out
    finally:
        for q in (src, dst):
            if q:
                q.stop()


def common_argv(qemu):
    return [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "none"]


def tls_objects(tmp, endpoint):
    user = ",username=bench" if endpoint == "client" else ""
    return ["-object", "tls-creds-psk,id=tls0,endpoint=%s,dir=%s%s" % (endpoint, tmp, user)]


def run_static(a, qemu, tmp, deadline):
    if a.image_file:
        image = os.path.abspath(a.image_file)
        size = os.path.getsize(image)
        if size % (1 << 20):
            raise PeerError("%s: size is not a whole number of MiB" % image)
        if a.image_mib and a.image_mib != size >> 20:
            raise PeerError("%s holds %d MiB, not --image-mib %d"
                            % (image, size >> 20, a.image_mib))
        mib = size >> 20
    else:
        if not a.image_mib:
            raise PeerError("--image-mib is required")
        mib = a.image_mib
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else tmp
        fd, image = tempfile.mkstemp(prefix="qemu-peer-", suffix=".img", dir=shm)
        os.close(fd)
        a.cleanup.append(image)
        fill_image(image, mib, a.content)
    base = common_argv(qemu) + ["-machine", "none,memory-backend=mem0", "-m", "%dM" % mib,
                                "-accel", a.accel]
    src = base + ["-object", "memory-backend-file,id=mem0,size=%dM,mem-path=%s,share=on%s"
                  % (mib, image, ",prealloc=on" if a.src_prealloc else "")]
    dst = base + ["-object", "memory-backend-ram,id=mem0,size=%dM,prealloc=%s"
                  % (mib, "on" if a.prealloc else "off")]
    if a.tls:
        src += tls_objects(tmp, "client")
        dst += tls_objects(tmp, "server")
    out = migrate(a, src, dst, tmp, deadline)
    out.update({"content": a.content if not a.image_file else a.content or "file",
                "image_mib": mib, "prealloc": bool(a.prealloc),
                "src_prealloc": bool(a.src_prealloc)})
    return out


def pick_cpu_model(qemu, want):
    """The first CPU model of @want (comma-free names, or "auto") that this
    host's KVM accepts: QEMU 7.2 copies MSRs the host's KVM may refuse (on
    some hosts `-cpu host` dies with "failed to set MSR 0x10a", the
    arch-capabilities MSR).  A model is accepted when QEMU, stopped before
    the first instruction (-S), is still alive after 3 s."""
    models = ["host", "host,-arch-capabilities"] if want == "auto" else [want]
    tried = []
    for m in models:
        p = subprocess.Popen([qemu, "-enable-kvm", "-machine", "pc", "-cpu", m, "-m", "16M",
                              "-nodefaults", "-display", "none", "-S"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out = p.communicate(timeout=3)[0].decode(errors="replace").strip()
            tried.append("%s: %s" % (m, out.splitlines()[0] if out else "exited %d"
                                     % p.returncode))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return m
    raise PeerError("no CPU model works with KVM here (%s)" % "; ".join(tried))


def run_kvm(a, qemu, tmp, deadline):
    if not a.image or not os.path.isfile(a.image):
        raise PeerError("--image BOOTSECTOR: no such file")
    if not a.ram_mib:
        raise PeerError("--ram-mib is required")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise PeerError("/dev/kvm is not usable")
    cpu = pick_cpu_model(qemu, a.cpu)
    base = common_argv(qemu) + ["-enable-kvm", "-cpu", cpu, "-smp", "1",
                                "-m", "%dM" % a.ram_mib, "-vga", "none",
                                "-drive", "file=%s,format=raw,if=ide,index=0"
                                % os.path.abspath(a.image)]
    # The destination's RAM preallocated (QEMU's prealloc=on) with --prealloc:
    # no first touch of fresh memory during the migration.
    ram = ["-object", "memory-backend-ram,id=pc.ram,size=%dM,prealloc=%s"
           % (a.ram_mib, "on" if a.prealloc else "off"),
           "-machine", "pc,memory-backend=pc.ram"]
    src = base + ["-object", "memory-backend-ram,id=pc.ram,size=%dM" % a.ram_mib,
                  "-machine", "pc,memory-backend=pc.ram"]
    dst = base + ram
    if a.tls:
        src += tls_objects(tmp, "client")
        dst += tls_objects(tmp, "server")
    out = migrate(a, src, dst, tmp, deadline)
    out.update({"ram_mib": a.ram_mib, "cpu_model": cpu, "prealloc": bool(a.prealloc)})
    return out


def main():
    p = argparse.ArgumentParser(description="Migrate with QEMU 7.2's multifd through QMP.")
    p.add_argument("--mode", choices=("static", "kvm", "fill"), required=True)
    p.add_argument("--image-mib", type=int, default=0)
    p.add_argument("--content", choices=("random", "zero", "mixed"), default=None)
    p.add_argument("--image-file", help="static: an existing image instead of generated data")
    p.add_argument("--out", help="fill: where to write the image")
    p.add_argument("--image", help="kvm: the boot sector")
    p.add_argument("--ram-mib", type=int, default=0)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--compression", default="none")
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--prealloc", action="store_true")
    p.add_argument("--src-prealloc", action="store_true",
                   help="static: map the source's RAM in before migrating (prealloc=on)")
    p.add_argument("--postcopy", action="store_true")
    p.add_argument("--tls", action="store_true", help="TLS-PSK on every channel")
    p.add_argument("--downtime-limit", type=int, default=300)
    p.add_argument("--warmup-ms", type=int, default=500,
                   help="kvm: let the guest run this long before migrating")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--accel", default="tcg", help="static: the accelerator (tcg, kvm, qtest)")
    p.add_argument("--cpu", default="auto",
                   help="kvm: the CPU model; auto: host, else host,-arch-capabilities "
                   "(whichever this host's KVM accepts; the output says which ran)")
    a = p.parse_args()
    a.cleanup = []

    def fail(msg, code=1):
        print(json.dumps({"error": msg}))
        sys.exit(code)

    if a.mode == "fill":
        if not a.out or not a.image_mib or not a.content:
            fail("fill needs --out, --image-mib and --content")
        fill_image(a.out, a.image_mib, a.content)
        return
    if a.mode == "static" and not a.content and not a.image_file:
        fail("static needs --content (or --image-file)")
    qemu = shutil.which(a.qemu)
    if not qemu:
        fail("%s is not installed (apt-get install qemu-system-x86)" % a.qemu, 2)
    if a.compression not in CODECS_72:
        fail("QEMU 7.2 multifd has no '%s' compression (none, zlib, zstd)" % a.compression)
    if not 1 <= a.channels <= 255:
        fail("--channels must be 1..255")

    def on_signal(signum, _frame):
        raise PeerError("interrupted by signal %d" % signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, on_signal)
    # A backstop for a wedged QMP read: the alarm raises in the main thread.
    signal.alarm(int(a.timeout) + 30)
    deadline = time.monotonic() + a.timeout
    tmp = tempfile.mkdtemp(prefix="qemu-peer-")
    try:
        if a.tls:
            with open(os.path.join(tmp, "keys.psk"), "w") as f:
                f.write("bench:%s\n" % os.urandom(32).hex())
        run = run_static if a.mode == "static" else run_kvm
        out = run(a, qemu, tmp, deadline)
        signal.alarm(0)
        print(json.dumps(out))
    except PeerError as e:
        signal.alarm(0)
        fail(str(e))
    except OSError as e:
        signal.alarm(0)
        fail("%s" % e)
    finally:
        for path in a.cleanup:
            try:
                os.unlink(path)
            except OSError:
                pass
        if not os.environ.get("QEMU_PEER_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
