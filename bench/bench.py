#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""make bench: the limits, libmultifd's figures and QEMU 7.2's on the same
machine, the same data and in the same run; a table with ratios,
BUILDDIR/bench/results.json (every figure) and BUILDDIR/bench/results.png.

  bench.py --build BUILDDIR --src SRCDIR [--mib M] [--quick]

Run by bench/run.sh (which checks the tools and installs QEMU); see
bench/README.md for what each figure is and how each limit is computed.
"""
import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

GIB = float(1 << 30)


def load_peer(src):
    spec = importlib.util.spec_from_file_location("qemu_peer",
                                                  os.path.join(src, "bench", "qemu-peer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def out(line=""):
    print(line, flush=True)


def fmt(v, spec="%.3f"):
    return spec % v if isinstance(v, (int, float)) else "-"


def pct(r):
    return "%4.0f%%" % (100 * r) if isinstance(r, (int, float)) else "    -"


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return round(a / b, 3)
    return None


class Bench:
    def __init__(self, a):
        self.a = a
        self.build = os.path.abspath(a.build)
        self.src = os.path.abspath(a.src)
        self.tool = os.path.join(self.build, "tools", "multifd")
        self.bin = os.path.join(self.build, "bench")
        self.peer = load_peer(self.src)
        self.cpus = os.cpu_count() or 1
        self.iperf_cpu = {}  # (streams, client netns) -> (sender, receiver) cores
        self.root = os.geteuid() == 0
        q = a.quick
        self.mib = a.mib or (256 if q else 1024)
        self.channels = [1, 4] if q else [1, 2, 4, 8]
        self.codecs = ["none", "zlib", "zstd", "lz4"]
        self.secs = 1 if q else 3
        self.limit_mib = min(self.mib, 128 if q else 256)
        self.pc_mib = 256 if q else 512
        self.net_rates = [1, 10] if q else [1, 10, 25]
        self.net_channels = [4] if q else [1, 4]
        # "X-adaptive": codec X with multifd-compression-adaptive on (the
        # default); plain X: every packet that shrinks is compressed.
        self.net_codecs = ["none", "lz4", "zstd", "zstd-adaptive"]
        self.adaptive_codecs = ["lz4", "zstd"]
        self.has_qemu = shutil.which("qemu-system-x86_64") is not None and not a.no_qemu
        self.r = {"meta": {}, "limits": {}, "stream": {}, "ours": {}, "qemu": {},
                  "qemu_dst_prealloc": {},
                  "datapath": {}, "live": {}, "postcopy": {}, "netns": {}, "targets": {}}
        self.tmp = None
        self.netns_up = False

    # ---------------------------------------------------------------- helpers

    def run_json(self, argv, timeout=600):
        """Run ARGV, return its last JSON line (or {"error": ...})."""
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"error": "timeout after %d s: %s" % (timeout, " ".join(argv[:3]))}
        lines = [ln for ln in p.stdout.decode(errors="replace").splitlines()
                 if ln.startswith("{")]
        res = None
        if lines:
            try:
                res = json.loads(lines[-1])
            except ValueError:
                res = None
        if res is None or (p.returncode not in (0,) and "error" not in res):
            err = p.stderr.decode(errors="replace").strip().splitlines()
            return {"error": "exit %d: %s" % (p.returncode, err[-1] if err else "no output"),
                    "returncode": p.returncode}
        if p.returncode != 0:
            res["returncode"] = p.returncode
        return res

    def free_port(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def iperf(self, streams, client_ns=None, server_ns=None, addr="127.0.0.1"):
        port = self.free_port()
        sp = ["ip", "netns", "exec", server_ns] if server_ns else []
        cp = ["ip", "netns", "exec", client_ns] if client_ns else []
        srv = subprocess.Popen(sp + ["iperf3", "-s", "-1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            c = subprocess.run(cp + ["iperf3", "-c", addr, "-p", str(port), "-P", str(streams),
                                     "-t", str(self.secs), "-J"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=60)
            r = json.loads(c.stdout.decode(errors="replace") or "{}")
        except (subprocess.TimeoutExpired, ValueError):
            r = {}
        finally:
            try:
                srv.wait(5)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        try:
            gib = round(r["end"]["sum_received"]["bits_per_second"] / 8 / GIB, 3)
        except (KeyError, TypeError):
            return None
        try:
            # CPU both ends used: what moving a GiB through TCP costs here.
            cpu = r["end"]["cpu_utilization_percent"]
            self.iperf_cpu[(streams, client_ns)] = (cpu["host_total"] / 100.0,
                                                    cpu["remote_total"] / 100.0)
        except (KeyError, TypeError):
            pass
        return gib

    def ossl(self, cipher):
        try:
            p = subprocess.run(["openssl", "speed", "-mr", "-evp", cipher, "-bytes", "16384",
                                "-seconds", str(self.secs)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, timeout=120)
            for ln in p.stdout.decode().splitlines():
                if ln.startswith("+F:"):
                    return round(float(ln.split(":")[3]) / GIB, 3)
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            pass
        return None

    def image(self, content):
        return os.path.join(self.tmp, content + ".img")

    def netns(self, *args):
        subprocess.run(["sh", os.path.join(self.src, "bench", "netns.sh")] + list(args),
                       check=True, stdout=subprocess.DEVNULL)

    # ---------------------------------------------------------------- parts

    def meta(self):
        rev = subprocess.run(["git", "-C", self.src, "describe", "--always", "--dirty"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        self.r["meta"] = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kernel": os.uname().release, "cpus": self.cpus, "mib": self.mib,
            "quick": bool(self.a.quick), "revision": rev.stdout.decode().strip() or "unknown",
            "load_at_start": float(load),
        }
        m = self.r["meta"]
        out("libmultifd bench: %d MiB images, %d CPUs, %s, %s, revision %s, load %.2f%s"
            % (self.mib, self.cpus, m["kernel"], m["date"], m["revision"], m["load_at_start"],
               " (quick)" if self.a.quick else ""))
        out("Figures are GiB/s of guest RAM unless said otherwise; ratios compare figures of "
            "this run only.")

    def make_images(self):
        t0 = time.monotonic()
        for content in ("random", "zero", "mixed"):
            self.peer.fill_image(self.image(content), self.mib, content)
        out("bench data: %s/{random,zero,mixed}.img, %d MiB each (%.1f s to write); the same "
            "files feed libmultifd and QEMU" % (self.tmp, self.mib, time.monotonic() - t0))

    def limits(self):
        L = self.r["limits"]
        L["iperf3_gib_s"] = {str(n): self.iperf(n) for n in sorted(set(self.channels + [2]))}
        cpu = self.iperf_cpu.get((1, None))
        if cpu and L["iperf3_gib_s"].get("1"):
            # Core-seconds per GiB of TCP over loopback, sending and receiving side.
            L["tcp_core_s_per_gib"] = {"send": round(cpu[0] / L["iperf3_gib_s"]["1"], 3),
                                       "recv": round(cpu[1] / L["iperf3_gib_s"]["1"], 3)}
        L["openssl_aes128gcm_gib_s"] = self.ossl("aes-128-gcm")
        L["openssl_chacha20_gib_s"] = self.ossl("chacha20-poly1305")
        lim = self.run_json([os.path.join(self.bin, "multifd-bench"), "--limits", "--mib",
                             str(self.limit_mib), "--image", self.image("mixed"), "--json"])
        L["memcpy_gib_s"] = lim.get("memcpy_gib_per_s")
        L["first_touch_gib_s"] = lim.get("first_touch_gib_per_s")
        L["first_touch_thp_gib_s"] = lim.get("first_touch_thp_gib_per_s")
        L["codecs"] = {c["codec"]: {"level": c["level"], "compress_gib_s": c["compress_gib_per_s"],
                                    "decompress_gib_s": c["decompress_gib_per_s"],
                                    "ratio": c["ratio"]} for c in lim.get("codecs", [])}
        out()
        out("%-52s %9s" % ("limits (one core or thread each)", "GiB/s"))
        for n, v in L["iperf3_gib_s"].items():
            out("%-52s %9s" % ("iperf3 loopback, %s stream%s" % (n, "s" if n != "1" else ""),
                               fmt(v)))
        t = L.get("tcp_core_s_per_gib")
        if t:
            out("%-52s %9s" % ("  TCP's CPU per GiB, sender + receiver (core-s)",
                               "%.2f+%.2f" % (t["send"], t["recv"])))
        out("%-52s %9s" % ("memcpy", fmt(L["memcpy_gib_s"])))
        out("%-52s %9s" % ("first touch of fresh anonymous memory", fmt(L["first_touch_gib_s"])))
        out("%-52s %9s" % ("first touch, MADV_HUGEPAGE", fmt(L["first_touch_thp_gib_s"])))
        out("%-52s %9s" % ("openssl speed aes-128-gcm (16 KiB)", fmt(L["openssl_aes128gcm_gib_s"])))
        out("%-52s %9s" % ("openssl speed chacha20-poly1305 (16 KiB)",
                           fmt(L["openssl_chacha20_gib_s"])))
        for name, c in L["codecs"].items():
            out("%-52s %9s" % ("%s-%d compress, mixed image (RAM bytes; ratio %.2f)"
                               % (name, c["level"], c["ratio"]), fmt(c["compress_gib_s"])))
            out("%-52s %9s" % ("%s-%d decompress, mixed image (RAM bytes)" % (name, c["level"]),
                               fmt(c["decompress_gib_s"])))
        if lim.get("error"):
            out("  multifd-bench --limits failed: %s" % lim["error"])

    def iperf_n(self, n):
        return self.r["limits"]["iperf3_gib_s"].get(str(n))

    def codec_limit(self, codec, ch):
        """What the codec allows on the cores in use: each channel is one
        compressing thread on the source and one decompressing thread on the
        destination; together they share the machine's CPUs."""
        c = self.r["limits"]["codecs"].get(codec)
        if not c or not c["compress_gib_s"] or not c["decompress_gib_s"]:
            return None
        C, D = c["compress_gib_s"], c["decompress_gib_s"]
        return round(min(ch * C, ch * D, self.cpus / (1 / C + 1 / D)), 3)

    def aes_limit(self, ch):
        """AES-GCM on the cores in use: encrypt on one side, decrypt on the
        other, one thread per channel and side."""
        A = self.r["limits"].get("openssl_aes128gcm_gib_s")
        if not A:
            return None
        return round(min(ch * A, self.cpus * A / 2), 3)

    def tls_ceiling(self, ch):
        """What TLS can reach on this machine when AES-GCM and TCP share its
        cores: each channel's sending thread encrypts and pays TCP's sending
        side, and all threads together pay encryption, decryption and both
        sides of TCP (iperf3 -P 1's CPU, per GiB) on self.cpus cores."""
        A = self.r["limits"].get("openssl_aes128gcm_gib_s")
        t = self.r["limits"].get("tcp_core_s_per_gib")
        if not A or not t:
            return None
        per_thread = ch / (1 / A + t["send"])
        machine = self.cpus / (2 / A + t["send"] + t["recv"])
        return round(min(per_thread, machine), 3)

    def tls_limit(self, ch):
        """TLS over the loopback link: AES-GCM on the cores in use, but never
        above what plain TCP gives with as many streams."""
        a, ip = self.aes_limit(ch), self.iperf_n(ch)
        if a is None or ip is None:
            return a if ip is None else ip
        return min(a, ip)

    def stream(self):
        out()
        out("%-40s %9s %9s %6s" % ("raw channels (stream-bench)", "GiB/s", "limit", "ratio"))
        for conns in ([1] if self.a.quick else [1, 2]):
            for tls in ("none", "aes128"):
                r = self.run_json([os.path.join(self.bin, "stream-bench"), "--conns", str(conns),
                                   "--tls", tls, "--mib", str(self.mib), "--json"])
                lim = self.iperf_n(conns) if tls == "none" else self.tls_limit(conns)
                r["limit_gib_s"] = lim
                r["ratio"] = ratio(r.get("gib_per_s"), lim)
                self.r["stream"]["%s.%dconn" % (tls, conns)] = r
                out("%-40s %9s %9s %6s" % ("%d conn, tls=%s" % (conns, tls),
                                          fmt(r.get("gib_per_s")), fmt(lim), pct(r["ratio"])))
        out("  limit: iperf3 with as many streams; TLS: AES-GCM on the cores in use "
            "(min(conns, CPUs/2) x openssl), at most iperf3's figure")

    def cell_limit(self, content, codec, tls, ch, res):
        """(limit, what it is) for one cell of the matrix."""
        ours = self.r["ours"]
        if tls == "tls":
            if content == "random" and codec == "none":
                return self.tls_limit(ch), "AES-GCM x cores"
            plain = ours.get("%s.%s.plain.%dch" % (content, codec, ch), {})
            return plain.get("throughput_gib_s"), "plain"
        if codec == "none":
            if content == "random":
                return self.iperf_n(ch), "iperf3"
            if content == "zero":
                return self.r["limits"]["memcpy_gib_s"], "memcpy"
            w = res.get("wire_ratio")
            ip = self.iperf_n(ch)
            if w and ip:
                return round(min(ip / w, self.r["limits"]["memcpy_gib_s"] or 1e9), 3), \
                    "iperf3/wire"
            return None, "iperf3/wire"
        if content == "random":
            return ours.get("random.none.plain.%dch" % ch, {}).get("throughput_gib_s"), "nocomp"
        return self.codec_limit(codec, ch), "codec x cores"

    def cells(self):
        for content in ("random", "zero", "mixed"):
            for codec in self.codecs:
                if content == "zero" and codec != "none":
                    continue  # zero pages never reach a codec
                for tls in ("plain", "tls"):
                    for ch in self.channels:
                        yield content, codec, tls, ch

    def run_ours(self, image, ch, codec, tls=False, extra=(), netns=None):
        """CODEC alone measures the codec (adaptive compression off, every
        packet that shrinks is compressed); CODEC-adaptive lets each channel
        send raw when that is faster (the library's default)."""
        adaptive = codec.endswith("-adaptive")
        codec = codec[:-len("-adaptive")] if adaptive else codec
        argv = [sys.executable, os.path.join(self.src, "bench", "mfd-peer.py"), "--tool",
                self.tool, "--image-file", image, "--channels", str(ch), "--compression", codec]
        if codec != "none":
            argv += ["--param", "multifd-compression-adaptive=%s" % ("on" if adaptive else "off")]
        if tls:
            argv.append("--tls")
        if netns:
            argv += ["--src-netns", netns[0], "--dst-netns", netns[1], "--dst-addr", netns[3]]
        return self.run_json(argv + list(extra), timeout=900)

    def best_of_two(self, run):
        """RUN once, and once more when it took under 5 s: the faster of the
        two counts (this machine is shared; both peers get the same rule).
        Every figure is kept in runs_gib_s."""
        first = run()
        if first.get("error") or first.get("e2e_ms", 1e9) >= 5000:
            first["runs_gib_s"] = [first.get("throughput_gib_s")]
            return first
        second = run()
        runs = [first.get("throughput_gib_s"), second.get("throughput_gib_s")]
        best = second if not second.get("error") and \
            second.get("throughput_gib_s", 0) > first.get("throughput_gib_s", 0) else first
        best["runs_gib_s"] = runs
        return best

    def run_qemu(self, image, ch, codec, dst_prealloc=False):
        return self.run_json([sys.executable, os.path.join(self.src, "bench", "qemu-peer.py"),
                              "--mode", "static", "--image-file", image, "--channels", str(ch),
                              "--compression", codec, "--src-prealloc", "--timeout", "600"] +
                             (["--prealloc"] if dst_prealloc else []), timeout=700)

    def matrix(self):
        out()
        out("guest RAM over multifd, precopy of a static %d MiB image, loopback TCP; "
            "libmultifd (multifd send/recv, two processes)%s" % (
                self.mib, " and QEMU 7.2 (qemu-peer.py, same image, channels, codec)"
                if self.has_qemu else ""))
        if not self.has_qemu:
            out("  QEMU columns skipped: qemu-system-x86_64 is not installed "
                "(run.sh installs it when run as root)")
        hdr = "%-23s %7s %7s %-6s %5s %7s %7s %11s %11s %9s" % (
            "content codec tls ch", "GiB/s", "limit", "(kind)", "ratio", "QEMU", "x QEMU",
            "cpu s/GiB", "peak RSS", "sync ms")
        out(hdr)
        out("%-23s %7s %7s %-6s %5s %7s %7s %11s %11s %9s" % (
            "", "", "", "", "", "", "", "src   dst", "src  dst", "src dst"))
        for content, codec, tls, ch in self.cells():
            key = "%s.%s.%s.%dch" % (content, codec, tls, ch)
            res = self.best_of_two(lambda: self.run_ours(self.image(content), ch, codec,
                                                         tls == "tls"))
            lim, kind = self.cell_limit(content, codec, tls, ch, res)
            res["limit_gib_s"], res["limit_kind"] = lim, kind
            res["ratio"] = ratio(res.get("throughput_gib_s"), lim)
            gib = res.get("ram_bytes", 0) / GIB
            for side in ("src", "dst"):
                if gib and "cpu_s_" + side in res:
                    res["cpu_s_per_gib_" + side] = round(res["cpu_s_" + side] / gib, 3)
            self.r["ours"][key] = res
            q = None
            if self.has_qemu and tls == "plain" and codec in ("none", "zlib", "zstd"):
                q = self.best_of_two(lambda: self.run_qemu(self.image(content), ch, codec))
                if q.get("ram_bytes"):
                    for side in ("src", "dst"):
                        if "cpu_s_" + side in q:
                            q["cpu_s_per_gib_" + side] = round(q["cpu_s_" + side] /
                                                               (q["ram_bytes"] / GIB), 3)
                self.r["qemu"][key] = q
                res["vs_qemu"] = ratio(res.get("throughput_gib_s"), q.get("throughput_gib_s"))
            label = "%-6s %-4s %-5s %dch" % (content, codec, tls, ch)
            if res.get("error"):
                out("%-23s FAILED: %s" % (label, res["error"][:90]))
                continue
            qv = q.get("throughput_gib_s") if q else None
            out("%-23s %7s %7s %-6s %5s %7s %7s %5s %5s %5.0f %4.0f %4s %3s%s" % (
                label, fmt(res["throughput_gib_s"]), fmt(lim), kind[:6], pct(res["ratio"]),
                fmt(qv) if q else ("n/a" if self.has_qemu and tls == "plain" else ""),
                ("%.1fx" % res["vs_qemu"]) if res.get("vs_qemu") else "",
                fmt(res.get("cpu_s_per_gib_src"), "%.2f"), fmt(res.get("cpu_s_per_gib_dst"), "%.2f"),
                res.get("rss_peak_mib_src", 0), res.get("rss_peak_mib_dst", 0),
                res.get("sync_ms_max_src", "-"), res.get("sync_ms_max_dst", "-"),
                ("  QEMU: " + q["error"][:60]) if q and q.get("error") else ""))
        out("  limit kinds: iperf3 = iperf3 loopback with as many streams; memcpy; iperf3/wire ="
            " iperf3 / bytes on the wire per RAM byte;")
        out("  codec x cores = min(ch x C, ch x D, CPUs / (1/C + 1/D)) from the codec's own"
            " speeds above; nocomp = the same cell without codec")
        out("  (incompressible packets go raw); AES-GCM x cores = min(ch, CPUs/2) x openssl,"
            " at most iperf3's figure; plain = the same cell without TLS.")
        out("  cpu s/GiB: user+system CPU of each process (wait4) per GiB of guest RAM; peak "
            "RSS includes the guest RAM each side maps (%d MiB);" % self.mib)
        out("  sync ms: the longest multifd SYNC round on each side (the library reports the "
            "maximum only). QEMU n/a: lz4 is not in 7.2.")
        out("  A cell that took under 5 s is run twice and the faster run counts, for both "
            "peers (runs_gib_s in results.json).")

    def adaptive(self):
        """Adaptive compression (the library's default) on loopback, where the
        link is faster than any codec: it should come close to nocomp.  Both
        it and its nocomp reference run with the destination's RAM prefaulted:
        on the bench machine first touch of memory the host took back costs the
        destination 5-8x more CPU in some runs than in others (bench/README.md),
        which would swamp the few percent this compares."""
        out()
        out("%-32s %9s %9s %6s %9s %6s %6s" % (
            "adaptive compression, loopback", "GiB/s", "nocomp", "ratio", "forced", "x", "wire"))
        pre = ("--dst-prealloc",)
        for ch in self.channels:
            self.r["ours"]["mixed.none-prealloc.plain.%dch" % ch] = self.best_of_two(
                lambda: self.run_ours(self.image("mixed"), ch, "none", extra=pre))
        for codec in self.adaptive_codecs:
            for ch in self.channels:
                key = "mixed.%s-adaptive.plain.%dch" % (codec, ch)
                res = self.best_of_two(lambda: self.run_ours(self.image("mixed"), ch,
                                                             codec + "-adaptive", extra=pre))
                self.r["ours"][key] = res
                none = self.r["ours"].get("mixed.none-prealloc.plain.%dch" % ch, {})
                forced = self.r["ours"].get("mixed.%s.plain.%dch" % (codec, ch), {})
                v = res.get("throughput_gib_s")
                res["ratio_nocomp"] = ratio(v, none.get("throughput_gib_s"))
                res["ratio_forced"] = ratio(v, forced.get("throughput_gib_s"))
                label = "mixed %s adaptive %d ch" % (codec, ch)
                if res.get("error"):
                    out("%-32s FAILED: %s" % (label, res["error"][:80]))
                    continue
                out("%-32s %9s %9s %6s %9s %6s %6s" % (
                    label, fmt(v), fmt(none.get("throughput_gib_s")), pct(res["ratio_nocomp"]),
                    fmt(forced.get("throughput_gib_s")),
                    ("%.1fx" % res["ratio_forced"]) if res["ratio_forced"] else "",
                    fmt(res.get("wire_ratio"), "%.2f")))
        out("  nocomp: the same cell without codec; both with the destination prefaulted "
            "(recv --prealloc).  forced: the matrix cell with the codec on every packet "
            "(multifd-compression-adaptive=off)")

    def zerocopy(self):
        """zero-copy-send against the same cell without it: random pages, no
        codec.  On loopback the kernel copies at delivery (copied = sends), so
        what is left to win is the source's CPU."""
        out()
        out("%-32s %9s %9s %6s %11s %11s %8s" % (
            "zero-copy-send, loopback", "GiB/s", "nocomp", "ratio", "src cpu/GiB",
            "nocomp", "copied"))
        for ch in self.channels:
            key = "random.none-zerocopy.plain.%dch" % ch
            res = self.best_of_two(lambda: self.run_ours(self.image("random"), ch, "none",
                                                         extra=["--param",
                                                                "zero-copy-send=on"]))
            gib = res.get("ram_bytes", 0) / GIB
            for side in ("src", "dst"):
                if gib and "cpu_s_" + side in res:
                    res["cpu_s_per_gib_" + side] = round(res["cpu_s_" + side] / gib, 3)
            self.r["ours"][key] = res
            none = self.r["ours"].get("random.none.plain.%dch" % ch, {})
            v = res.get("throughput_gib_s")
            res["ratio_nocomp"] = ratio(v, none.get("throughput_gib_s"))
            res["cpu_ratio_nocomp"] = ratio(res.get("cpu_s_per_gib_src"),
                                            none.get("cpu_s_per_gib_src"))
            label = "random zero-copy %d ch" % ch
            if res.get("error"):
                out("%-32s FAILED: %s" % (label, res["error"][:80]))
                continue
            sends = res.get("zero_copy_sends", 0)
            out("%-32s %9s %9s %6s %11s %11s %8s" % (
                label, fmt(v), fmt(none.get("throughput_gib_s")), pct(res["ratio_nocomp"]),
                fmt(res.get("cpu_s_per_gib_src"), "%.2f"),
                fmt(none.get("cpu_s_per_gib_src"), "%.2f"),
                ("%.0f%%" % (100.0 * res.get("zero_copy_copied", 0) / sends)) if sends
                else "-"))
        out("  nocomp: the matrix's random/none/plain cell; copied: sends the kernel copied "
            "after all (loopback and veth copy at delivery)")

    def vmm_memory(self):
        """Random pages without codec, with memory set up as a VMM sets up guest
        RAM: the source's RAM anonymous and huge-page backed, holding the image
        (send --image --load; the matrix maps the image from the page cache,
        4 KiB pages), the destination's faulted in before listening (recv
        --prealloc, QEMU's prealloc=on; the matrix leaves it untouched).
        What the data path gives once memory is out of the way, against
        iperf3, with and without zero-copy-send."""
        out()
        out("%-34s %7s %7s %6s %11s %9s" % (
            "VMM-like memory, random", "GiB/s", "limit", "ratio", "cpu s/GiB", "QEMU*"))
        for ch in self.channels:
            q = None
            if self.has_qemu:
                q = self.best_of_two(lambda: self.run_qemu(self.image("random"), ch, "none",
                                                           dst_prealloc=True))
                # Not a like-for-like cell (its source maps the file): kept
                # beside the matrix's QEMU figures, not among the targets.
                self.r["qemu_dst_prealloc"]["random.none.%dch" % ch] = q
            for variant in ("plain", "zerocopy", "tls"):
                zc, tls = variant == "zerocopy", variant == "tls"
                key = "random.none-vmm%s.%s.%dch" % ("-zerocopy" if zc else "",
                                                     "tls" if tls else "plain", ch)
                extra = ["--src-load", "--dst-prealloc"] + \
                    (["--param", "zero-copy-send=on"] if zc else [])
                res = self.best_of_two(lambda: self.run_ours(self.image("random"), ch, "none",
                                                             tls, extra=extra))
                gib = res.get("ram_bytes", 0) / GIB
                if gib and "cpu_s_src" in res:
                    res["cpu_s_per_gib_src"] = round(res["cpu_s_src"] / gib, 3)
                v = res.get("throughput_gib_s")
                lim = self.tls_limit(ch) if tls else self.iperf_n(ch)
                res["limit_gib_s"], res["limit_kind"] = lim, "AES-GCM" if tls else "iperf3"
                res["ratio"] = ratio(v, lim)
                self.r["ours"][key] = res
                label = "%s%d ch" % ("zero-copy-send, " if zc else "TLS, " if tls else "", ch)
                if res.get("error"):
                    out("%-34s FAILED: %s" % (label, res["error"][:80]))
                    continue
                out("%-34s %7s %7s %6s %11s %9s" % (
                    label, fmt(v), fmt(lim), pct(res["ratio"]),
                    fmt(res.get("cpu_s_per_gib_src"), "%.2f"),
                    fmt(q.get("throughput_gib_s")) if q and variant == "plain" else ""))
        out("  limit: iperf3 with as many streams; TLS: AES-GCM x cores as in the matrix.")
        out("  cpu s/GiB: the source process's, loading the image included. QEMU*: QEMU 7.2 "
            "with prealloc=on on both sides, its source")
        out("  mapping the image file (memory-backend-file): not like for like, not a target.")

    def datapath(self):
        out()
        out("%-40s %9s %9s %6s" % ("multifd data path alone (multifd-bench)", "GiB/s", "iperf3",
                                   "ratio"))
        for content, codec, ch in ([("random", "none", c) for c in self.channels] +
                                   [("zero", "none", 2), ("mixed", "none", 2),
                                    ("mixed", "lz4", 2)]):
            r = self.run_json([os.path.join(self.bin, "multifd-bench"), "--mib", str(self.mib),
                               "--pages", content, "--image", self.image(content), "--channels",
                               str(ch), "--codec", codec, "--json"])
            lim = self.iperf_n(ch)
            r["ratio_iperf3"] = ratio(r.get("gib_per_s"), lim)
            self.r["datapath"]["%s.%s.%dch" % (content, codec, ch)] = r
            out("%-40s %9s %9s %6s" % ("%s pages, %s, %d ch" % (content, codec, ch),
                                      fmt(r.get("gib_per_s")), fmt(lim), pct(r["ratio_iperf3"])))
        out("  one process, destination prefaulted, no main channel or engine: what the multifd "
            "channels alone move")

    def live(self):
        out()
        res = self.run_ours(self.image("mixed"), 4, "none", extra=["--dirty-rate", "64"])
        self.r["live"]["mixed.none.4ch.dirty64"] = res
        out("live (multifd send --dirty-rate 64, mixed image, 4 ch, downtime-limit 300 ms): "
            "total %s ms, downtime %s ms, %s iterations%s" % (
                res.get("total_ms", "-"), res.get("downtime_ms", "-"), res.get("iterations", "-"),
                ("  FAILED: " + res["error"]) if res.get("error") else ""))

    def postcopy(self):
        out()
        out("%-40s %9s %9s %9s %8s" % ("postcopy (postcopy-bench, %d MiB)" % self.pc_mib,
                                      "median", "p99", "faults", "time"))
        for preempt in ("off", "on"):
            r = self.run_json([os.path.join(self.bin, "postcopy-bench"), "--mib", str(self.pc_mib),
                               "--preempt", preempt, "--json"], timeout=300)
            if r.get("returncode") == 77:
                out("  skipped: userfaultfd needs root")
                return
            self.r["postcopy"]["preempt_" + preempt] = r
            if r.get("error"):
                out("%-40s FAILED: %s" % ("preempt " + preempt, r["error"]))
                continue
            out("%-40s %6s us %6s us %9s %5s ms" % ("preempt %s, push unlimited" % preempt,
                                                   r.get("median_us"), r.get("p99_us"),
                                                   r.get("faults"), r.get("postcopy_ms")))
        out("  fault -> page placed on the destination, measured by the library")

    def net(self):
        out()
        if not self.root or not shutil.which("ip") or not shutil.which("tc"):
            out("veth between network namespaces: skipped (needs root, ip and tc)")
            return
        names = subprocess.run(["sh", os.path.join(self.src, "bench", "netns.sh"), "names"],
                               stdout=subprocess.PIPE).stdout.decode().split()
        out("across a veth pair between two network namespaces, tc tbf rate limit, mixed image,"
            " destination prefaulted: GiB/s of guest RAM (wire ratio)")
        out("%-10s %8s  %s" % ("rate", "iperf3", "  ".join("%-17s" % ("%s %dch" % (z, c))
                                                           for c in self.net_channels
                                                           for z in self.net_codecs)))
        for rate in self.net_rates:
            key = "%dgbit" % rate
            try:
                self.netns("up", str(rate))
                self.netns_up = True
            except subprocess.CalledProcessError:
                out("%-10s could not set up the namespaces" % key)
                return
            entry = {"iperf3_gib_s": {str(c): self.iperf(c, names[0], names[1], names[3])
                                      for c in self.net_channels}, "cells": {}}
            row = []
            for ch in self.net_channels:
                for codec in self.net_codecs:
                    # The destination prefaulted: the link and the codecs are
                    # compared here, not first touch (bench/README.md, noise).
                    r = self.run_ours(self.image("mixed"), ch, codec, netns=names,
                                      extra=("--dst-prealloc",))
                    entry["cells"]["mixed.%s.%dch" % (codec, ch)] = r
                    row.append("%-17s" % ("%s (%s)" % (fmt(r.get("throughput_gib_s")),
                                                       fmt(r.get("wire_ratio"), "%.2f"))
                                          if not r.get("error") else "FAILED"))
            self.r["netns"][key] = entry
            out("%-10s %8s  %s" % ("%d Gbit/s" % rate,
                                   fmt(entry["iperf3_gib_s"][str(self.net_channels[-1])]),
                                   "  ".join(row)))
        self.netns("down")
        self.netns_up = False
        out("  iperf3 with %d stream(s) through the same limit; compression pays where its "
            "figure beats none's" % self.net_channels[-1])

    # ---------------------------------------------------------------- targets

    def targets(self):
        T = self.r["targets"]
        ours, qemu = self.r["ours"], self.r["qemu"]

        def add(key, text, cell, v, ref, bar, kind="ratio"):
            if kind == "ratio":
                r = ratio(v, ref)
                met = r is not None and r >= bar
            elif kind == "min":
                r = ratio(v, ref)
                met = isinstance(v, (int, float)) and v >= bar
            else:  # "max"
                r = ratio(v, ref)
                met = isinstance(v, (int, float)) and v <= bar
            T[key] = {"target": text, "cell": cell, "ours": v, "reference": ref, "ratio": r,
                      "bar": bar, "met": met}

        def g(cell, field="throughput_gib_s"):
            return ours.get(cell, {}).get(field)

        for ch in self.channels:
            c = "random.none.plain.%dch" % ch
            add("nocomp_vs_iperf3.%dch" % ch, "nocomp random >= 90%% iperf3 -P %d" % ch, c, g(c),
                self.iperf_n(ch), 0.9)
        for ch in self.channels:
            c = "random.none-vmm.plain.%dch" % ch
            add("nocomp_vmm_memory_vs_iperf3.%dch" % ch,
                "  same, VMM-like memory, %d ch" % ch, c, g(c), self.iperf_n(ch), 0.9)
        for ch in self.channels:
            c = "zero.none.plain.%dch" % ch
            add("zero_pages.%dch" % ch, "zero pages >= 6 GiB/s, %d ch" % ch, c, g(c), 6.0, 6.0,
                "min")
        for codec in self.codecs[1:]:
            for ch in self.channels:
                c = "mixed.%s.plain.%dch" % (codec, ch)
                add("codec_mixed.%s.%dch" % (codec, ch),
                    "%s mixed >= 90%% codec x cores, %d ch" % (codec, ch), c, g(c),
                    self.codec_limit(codec, ch), 0.9)
        for codec in self.codecs[1:]:
            for ch in self.channels:
                c = "random.%s.plain.%dch" % (codec, ch)
                add("codec_random_vs_nocomp.%s.%dch" % (codec, ch),
                    "%s random >= nocomp (5%% noise), %d ch" % (codec, ch), c, g(c),
                    g("random.none.plain.%dch" % ch), 0.95)
        for codec in self.adaptive_codecs:
            for ch in self.channels:
                c = "mixed.%s-adaptive.plain.%dch" % (codec, ch)
                add("adaptive_vs_nocomp.%s.%dch" % (codec, ch),
                    "%s adaptive mixed >= 95%% nocomp, %d ch" % (codec, ch), c, g(c),
                    g("mixed.none-prealloc.plain.%dch" % ch), 0.95)
        nn = self.r["netns"]
        for rate in self.net_rates:
            cells = nn.get("%dgbit" % rate, {}).get("cells", {})
            for ch in self.net_channels:
                best = max([cells.get("mixed.%s.%dch" % (z, ch), {}).get("throughput_gib_s") or 0
                            for z in ("none", "zstd")])
                v = cells.get("mixed.zstd-adaptive.%dch" % ch, {}).get("throughput_gib_s")
                if best and v is not None:
                    add("adaptive_net.%dgbit.%dch" % (rate, ch),
                        "zstd adaptive >= 90%% max(none, zstd), %d Gb %dch" % (rate, ch),
                        "netns %d Gbit/s" % rate, v, best, 0.9)
        for ch in self.channels:
            c = "random.none.tls.%dch" % ch
            add("tls_vs_aes.%dch" % ch, "TLS random >= 80%% AES-GCM x cores, %d ch" % ch, c, g(c),
                self.tls_limit(ch), 0.8)
        for ch in self.channels:
            c = "random.none-vmm.tls.%dch" % ch
            add("tls_vmm_memory_vs_aes.%dch" % ch, "  same, VMM-like memory, %d ch" % ch, c,
                g(c), self.tls_limit(ch), 0.8)
        # Context, not a target: the bar above counts AES alone, but TCP over
        # loopback takes as much CPU again on the same cores.
        for ch in self.channels:
            c = "random.none-vmm.tls.%dch" % ch
            ceil, v = self.tls_ceiling(ch), g(c)
            if ceil:
                T["tls_vs_ceiling.%dch" % ch] = {
                    "target": "  (TLS vs AES+TCP ceiling, %d ch)" % ch, "cell": c, "ours": v,
                    "reference": ceil, "ratio": ratio(v, ceil), "bar": None, "met": None}
        for cell, q in qemu.items():
            if not q.get("throughput_gib_s"):
                continue  # QEMU failed there: reported in the matrix
            add("vs_qemu." + cell, "faster than QEMU 7.2: " + cell.replace(".plain", ""), cell,
                g(cell), q.get("throughput_gib_s"), 1.0)
        pc = self.r["postcopy"].get("preempt_on", {})
        if pc and not pc.get("error"):
            add("postcopy_fault_median_us", "postcopy fault median <= 100 us (preempt)",
                "postcopy-bench", pc.get("median_us"), 100, 100, "max")
        lv = self.r["live"].get("mixed.none.4ch.dirty64", {})
        if lv and not lv.get("error"):
            add("live_downtime_ms", "live downtime <= 100 ms (limit 300)", "dirty 64 MiB/s",
                lv.get("downtime_ms"), 100, 100, "max")
        # Memory per channel: peak RSS growth from the fewest to the most
        # channels, random pages (every packet full), per codec and side.
        n = self.channels[-1] - self.channels[0]
        for codec in self.codecs:
            lo = "random.%s.plain.%dch" % (codec, self.channels[0])
            hi = "random.%s.plain.%dch" % (codec, self.channels[-1])
            for side in ("src", "dst"):
                a, b = g(lo, "rss_peak_mib_" + side), g(hi, "rss_peak_mib_" + side)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and n:
                    T["rss_per_channel_mib.%s.%s" % (codec, side)] = {
                        "target": "memory per channel, %s, %s (MiB)" % (codec, side),
                        "cell": hi, "ours": round((b - a) / n, 2), "reference": None,
                        "ratio": None, "bar": None, "met": None}
        out()
        out("MISSION §7 targets, this run")
        out("%-44s %8s %9s %7s  %s" % ("target", "ours", "reference", "ratio", "met"))
        met = total = 0
        for key, t in T.items():
            if t["met"] is not None:
                total += 1
                met += bool(t["met"])
            out("%-44s %8s %9s %7s  %s" % (
                t["target"][:44], fmt(t["ours"]), fmt(t["reference"]),
                pct(t["ratio"]) if t["ratio"] is not None else "",
                "" if t["met"] is None else ("yes" if t["met"] else "NO")))
        out("%d of %d targets met" % (met, total))
        self.r["meta"]["targets_met"] = met
        self.r["meta"]["targets_total"] = total

    # ---------------------------------------------------------------- output

    def noise_probe(self, when):
        r = self.run_ours(self.image("random"), 2, "none")
        self.r["meta"]["probe_" + when] = r.get("throughput_gib_s")

    def write(self):
        with open("/proc/loadavg") as f:
            self.r["meta"]["load_at_end"] = float(f.read().split()[0])
        a, b = self.r["meta"].get("probe_start"), self.r["meta"].get("probe_end")
        if a and b:
            self.r["meta"]["probe_spread_pct"] = round(100 * abs(a - b) / max(a, b), 1)
            out()
            out("noise: random/none/2ch measured at the start and the end: %.3f and %.3f GiB/s "
                "(%.0f%% apart); load %.2f -> %.2f" % (a, b, self.r["meta"]["probe_spread_pct"],
                                                      self.r["meta"]["load_at_start"],
                                                      self.r["meta"]["load_at_end"]))
        d = os.path.join(self.build, "bench")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "results.json")
        with open(path, "w") as f:
            json.dump(self.r, f, indent=1, sort_keys=False)
            f.write("\n")
        rev = self.r["meta"]["revision"] + ("-quick" if self.a.quick else "")
        shutil.copyfile(path, os.path.join(d, "results-%s.json" % rev))
        out()
        out("results: %s (and results-%s.json, for bench/compare OLD NEW)" % (path, rev))
        self.plot(d)

    def plot(self, d):
        if not shutil.which("gnuplot"):
            out("plot: skipped (gnuplot is missing; scripts/install-deps installs gnuplot-nox)")
            return
        mat = os.path.join(d, "results-matrix.dat")
        net = os.path.join(d, "results-netns.dat")
        with open(mat, "w") as f:
            f.write("# cell ours qemu limit\n")
            for key, r in self.r["ours"].items():
                if ".plain." not in key:
                    continue
                q = self.r["qemu"].get(key, {}).get("throughput_gib_s")
                f.write("%s %s %s %s\n" % (key.replace(".plain", "").replace(".", "/"),
                                           r.get("throughput_gib_s", "NaN") or "NaN",
                                           q if q is not None else "NaN",
                                           r.get("limit_gib_s") or "NaN"))
        with open(net, "w") as f:
            f.write("rate_gbit " + " ".join("%s/%dch" % (z, c) for c in self.net_channels
                                             for z in self.net_codecs) + "\n")
            for key, e in self.r["netns"].items():
                f.write(key.replace("gbit", "") + " " + " ".join(
                    str(e["cells"].get("mixed.%s.%dch" % (z, c), {}).get("throughput_gib_s")
                        or "NaN") for c in self.net_channels for z in self.net_codecs) + "\n")
        png = os.path.join(d, "results.png")
        p = subprocess.run(["gnuplot", "-e", "matrix='%s'; netns='%s'; out='%s'; ncols=%d; "
                            "title='libmultifd bench %s, %d MiB'" % (
                                mat, net, png, len(self.net_channels) * len(self.net_codecs),
                                self.r["meta"]["revision"], self.mib),
                            os.path.join(self.src, "bench", "plot.gp")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode == 0:
            out("plot: %s" % png)
        else:
            out("plot: gnuplot failed: %s" % p.stderr.decode(errors="replace").strip()[-200:])

    def run(self):
        self.meta()
        self.tmp = tempfile.mkdtemp(prefix="mfd-bench-",
                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            self.make_images()
            self.limits()
            self.noise_probe("start")
            self.stream()
            self.matrix()
            self.adaptive()
            self.zerocopy()
            self.vmm_memory()
            self.datapath()
            self.live()
            self.postcopy()
            self.net()
            self.noise_probe("end")
            self.targets()
            self.write()
        finally:
            if self.netns_up:
                try:
                    self.netns("down")
                except subprocess.CalledProcessError:
                    pass
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description="make bench")
    p.add_argument("--build", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--mib", type=int, default=0, help="image size (default 1024, quick 256)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-qemu", action="store_true")
    a = p.parse_args()

    def on_signal(signum, _frame):
        raise SystemExit("bench: interrupted by signal %d" % signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    Bench(a).run()


if __name__ == "__main__":
    main()
