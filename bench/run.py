# SPDX-License-Identifier: MIT
"""One-command benchmark: passt-py against the real passt, same cases, same run.

Each case starts a fresh back-end (passt-py or passt) inside a network namespace created here
(veth pair with a default route, as tests/netns.py makes it), then runs the synthetic
front-end bench/vufront (C, built here with cc) against its vhost-user socket. vufront plays
QEMU and a minimal guest, and its second thread is the host end (sink, sender or echo server).
It reports bytes, transactions, its own CPU time and the back-end's utime+stime over the
measured window, and RSS for the flow cases. Then the micro benchmarks (bench_checksum.py,
bench_ring.py, and bench_migrate.py if present) run through pytest-benchmark.

Output: a markdown table on stdout, a JSON file and a PNG plot (matplotlib, from the ``bench``
extra) in --out. Run:  python -m bench   or   python bench/run.py --help
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests import netns as netns_mod  # noqa: E402

GUEST_IP, PREFIX, GATEWAY = "10.200.0.2", "24", "10.200.0.1"
TCP_OUT, TCP_IN, UDP_OUT, UDP_IN = 5001, 5101, 5002, 5102
VUFRONT_SRC = BENCH / "vufront" / "vufront.c"
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread"]

#: Targets (passt-py / passt): throughput >= 0.9, CPU per GB <= 1.0 (65520) / 0.6 (1500),
#: request/response >= 0.8, checksum at 64 KiB >= 0.8 x memcpy.
TARGET_THROUGHPUT = 0.9
TARGET_CPU = {65520: 1.0, 1500: 0.6}
TARGET_RR = 0.8
TARGET_CSUM = 0.8


@dataclass(frozen=True)
class Case:
    """One synthetic workload: a vufront mode at an MTU (and a size for request/response)."""

    kind: str            # "throughput", "rr" or "memory"
    mode: str
    mtu: int
    size: int = 0
    flows: int = 0

    @property
    def name(self) -> str:
        """Short label, e.g. tcp-tx/65520 or udp-rr/1B."""
        if self.kind == "rr":
            return f"{self.mode}/{self.size}B"
        if self.kind == "memory":
            return f"{self.mode}/{self.flows}"
        return f"{self.mode}/{self.mtu}"


def all_cases(flows: int) -> list[Case]:
    """Every case the harness knows, in report order."""
    cases = [Case("throughput", m, mtu) for mtu in (65520, 1500)
             for m in ("udp-tx", "udp-rx", "tcp-tx", "tcp-rx")]
    cases += [Case("rr", m, 65520, size) for m in ("udp-rr", "tcp-rr") for size in (1, 1024)]
    cases += [Case("memory", m, 65520, flows=flows) for m in ("udp-flows", "tcp-flows")]
    return cases


# ---- building and finding things ----
def build_vufront(build_dir: Path) -> Path:
    """Compile vufront with cc (only when the source is newer); returns the binary."""
    build_dir.mkdir(parents=True, exist_ok=True)
    binary = build_dir / "vufront"
    if binary.exists() and binary.stat().st_mtime >= VUFRONT_SRC.stat().st_mtime:
        return binary
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, *CFLAGS, "-o", str(binary), str(VUFRONT_SRC)], check=True)
    return binary


def find_real_passt(allow_download: bool) -> tuple[list[str] | None, str]:
    """argv prefix of a vhost-user capable passt and where it came from (or None, reason)."""
    on_path = shutil.which("passt")
    if on_path:
        try:
            res = subprocess.run([on_path, "--help"], capture_output=True, text=True, timeout=10)
            if "vhost-user" in res.stdout + res.stderr:
                return [on_path], on_path
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        from tests.guest.real_passt import real_passt_command
        cmd = real_passt_command(allow_download=allow_download)
    except Exception as exc:  # noqa: BLE001 - any failure means: measure passt-py alone
        return None, f"tests/guest/real_passt.py failed: {exc}"
    if cmd is None:
        return None, "no vhost-user capable passt on PATH or from Debian 13"
    return cmd, "Debian 13 package via tests/guest/real_passt.py"


def backend_argv(prefix: list[str], sock: Path, mtu: int) -> list[str]:
    """The same options for both back-ends: address, gateway, MTU, forwarded ports."""
    return [*prefix, "-f", "--vhost-user", "-s", str(sock), "-4", "-a", GUEST_IP, "-n", PREFIX,
            "-g", GATEWAY, "-m", str(mtu), "-t", str(TCP_IN), "-u", str(UDP_IN)]


def offload_note(tso: dict[str, bool]) -> str:
    """Which back-ends took the guest's checksum/TSO offloads (vufront asks, as Linux does)."""
    took = [be for be, on in tso.items() if on]
    if not took:
        return "no back-end took the guest's TSO"
    return ", ".join(took) + " took the guest's TSO (64 KiB frames at any MTU)" + (
        ", " + ", ".join(be for be, on in tso.items() if not on) + " offers none"
        if len(took) < len(tso) else "")


# ---- running one case ----
@dataclass
class Sample:
    """What one vufront run measured (the JSON it printed, plus derived numbers)."""

    backend: str
    case: str
    raw: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """vufront ran and reported status ok."""
        return self.error is None and self.raw.get("status") == "ok"

    @property
    def gbit_s(self) -> float:
        """Payload throughput over the window."""
        return float(self.raw.get("gbit_s", 0.0))

    @property
    def cpu_per_gb(self) -> float | None:
        """Back-end CPU seconds per 10^9 payload bytes (None without bytes)."""
        gb = self.raw.get("bytes", 0) / 1e9
        return self.raw["backend_cpu_s"] / gb if gb > 0 else None

    @property
    def tps(self) -> float:
        """Request/response transactions per second."""
        return float(self.raw.get("tps", 0.0))

    @property
    def cpu_per_trans_us(self) -> float | None:
        """Back-end CPU microseconds per transaction (None without transactions)."""
        n = self.raw.get("transactions", 0)
        return self.raw["backend_cpu_s"] / n * 1e6 if n else None

    @property
    def offloads(self) -> bool:
        """The back-end took the guest's TCP segmentation offload (HOST_TSO4, bit 11)."""
        return bool(int(self.raw.get("features", 0)) >> 11 & 1)

    @property
    def gen_load(self) -> float:
        """Share of one CPU the front-end thread used over the window."""
        secs = self.raw.get("seconds", 0)
        return self.raw.get("frontend_cpu_s", 0) / secs if secs else 0.0


class Backend:
    """A back-end process started for one case inside the namespace, stopped by PID."""

    def __init__(self, name: str, argv: list[str], ns: str, sock: Path, log: Path) -> None:
        self.name, self.sock, self.log = name, sock, log
        if sock.exists():
            sock.unlink()
        self._out = open(log, "wb")
        self.proc = netns_mod.popen_in(ns, argv, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not create {sock}: {self.tail()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        """ip netns exec execs the back-end: the PID is the back-end's own."""
        return self.proc.pid

    def tail(self) -> str:
        """The end of the back-end's log."""
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, by PID with bounded waits."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.kill(self.proc.pid, sig)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._out.close()


def pin_prefixes(enabled: bool) -> tuple[list[str], list[str]]:
    """taskset prefixes: the back-end alone on CPU 0, vufront (both threads) on CPU 1."""
    taskset = shutil.which("taskset")
    if not enabled or taskset is None or (os.cpu_count() or 1) < 2:
        return [], []
    return [taskset, "-c", "0"], [taskset, "-c", "1"]


def run_case(vufront: Path, ns: str, workdir: Path, backend: str, prefix: list[str], case: Case,
             duration: float,
             profile: Callable[[int, float], subprocess.Popen | None] | None = None,
             pin: tuple[list[str], list[str]] = ([], []), extra: tuple[str, ...] = ()
             ) -> Sample:
    """Start the back-end, run vufront for one case, stop the back-end."""
    sock = workdir / f"{backend}.sock"
    log = workdir / f"{backend}-{case.name.replace('/', '_')}.log"
    sample = Sample(backend, case.name)
    try:
        be = Backend(backend, pin[0] + backend_argv(prefix, sock, case.mtu), ns, sock, log)
    except RuntimeError as exc:
        sample.error = str(exc)
        return sample
    try:
        udp = case.mode.startswith("udp")
        argv = [*pin[1], str(vufront), "--socket", str(sock), "--mode", case.mode,
                "--mtu", str(case.mtu), "--duration", str(duration), "--backend-pid", str(be.pid),
                "--port-out", str(UDP_OUT if udp else TCP_OUT),
                "--port-in", str(UDP_IN if udp else TCP_IN)]
        argv += extra
        if case.size:
            argv += ["--size", str(case.size)]
        if case.flows:
            argv += ["--flows", str(case.flows)]
        proc = netns_mod.popen_in(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        spy = profile(be.pid, duration) if profile is not None else None
        try:
            out, err = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(timed out)"
        if spy is not None:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        line = next((ln for ln in out.splitlines() if ln.startswith("{")), "")
        if line:
            sample.raw = json.loads(line)
        if not sample.ok:
            sample.error = (f"status {sample.raw.get('status', 'none')}: {err.strip()[-500:]}"
                            f" | back-end: {be.tail()[-500:]}")
    finally:
        be.stop()
    return sample


def median_sample(samples: list[Sample]) -> Sample:
    """The run with the median primary number (throughput, tps or RSS)."""
    good = [s for s in samples if s.ok] or samples
    key = (lambda s: s.raw.get("rss_kib", 0)) if "flows" in samples[0].case else \
        (lambda s: s.tps or s.gbit_s)
    return sorted(good, key=key)[len(good) // 2]


# ---- physical limits ----
def loopback_tcp(ns: str, seconds: float = 1.5) -> tuple[float | None, float | None]:
    """Kernel TCP over loopback, host to host, no back-end: what any socket path is bounded by.
    Returns Gbit/s and the sending thread's CPU seconds per GB: the least a back-end's
    guest -> host TCP can cost, since the sender's kernel also delivers to the reader (loopback
    runs the receive path in the sender's context) and wakes it.

    Runs in the namespace (so the same kernel paths and sysctls as the cases) via a small Python
    program: 1 MiB send() and recv_into() calls, so Python's share is negligible; the reader is
    a separate process, and the bytes come from 16 MiB of random data (a cache-hot or all-zero
    buffer, which reads from one shared page, flatters the sender's CPU by a quarter to a third).
    """
    prog = f"""
import os, socket, time
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1)
port = lst.getsockname()[1]
if os.fork() == 0:      # the reader is another process, as vufront's host end is
    c, _ = lst.accept(); v = memoryview(bytearray(1 << 20))
    while c.recv_into(v): pass
    os._exit(0)
s = socket.create_connection(("127.0.0.1", port))
# 1 MiB sends cycling through 16 MiB of random bytes, as a back-end's sends come from a guest's
# TX buffers (vufront's: 17 MiB) and not from one cache-hot (or zero-page) buffer
pool = memoryview(os.urandom(16 << 20)); sent = 0
def send():
    global sent
    s.sendall(pool[sent % (16 << 20):][:1 << 20]); sent += 1 << 20
end = time.monotonic() + 0.3
while time.monotonic() < end: send()
start, base, cpu = time.monotonic(), sent, time.thread_time()
while time.monotonic() < start + {seconds}: send()
got, secs, cpu = sent - base, time.monotonic() - start, time.thread_time() - cpu
s.close(); os.wait()
print(got * 8 / secs / 1e9, cpu / (got / 1e9))
"""
    try:
        res = netns_mod.run_in(ns, [sys.executable, "-c", prog], timeout=seconds + 20)
        gbit, cpu = res.stdout.strip().splitlines()[-1].split()
        return float(gbit), float(cpu)
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None, None


def memcpy_gbit(micro: dict[str, Any]) -> float | None:
    """memcpy bandwidth at 64 KiB from bench_checksum.py, in Gbit/s (one copy per byte)."""
    for b in micro.get("bench_checksum", {}).get("benchmarks", []):
        if b["name"].startswith("test_csum_vs_memcpy") and "65536" in b["name"]:
            gbs = b["extra"].get("memcpy_GBps")
            if gbs:
                return float(gbs) * 8
    return None


# ---- micro benchmarks ----
def run_micro(workdir: Path, include_migrate: bool) -> dict[str, Any]:
    """bench_checksum.py and bench_ring.py (and bench_migrate.py) through pytest-benchmark."""
    files = [BENCH / "bench_checksum.py", BENCH / "bench_ring.py"]
    migrate = BENCH / "bench_migrate.py"
    out: dict[str, Any] = {}
    if include_migrate and migrate.exists():
        files.append(migrate)
    for f in files:
        js = workdir / f"{f.stem}.json"
        res = subprocess.run([sys.executable, "-m", "pytest", str(f), "-q", "-p",
                              "no:cacheprovider", f"--benchmark-json={js}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
        entry: dict[str, Any] = {"returncode": res.returncode}
        if js.exists():
            data = json.loads(js.read_text())
            entry["benchmarks"] = [
                {"name": b["name"], "min_s": b["stats"]["min"], "median_s": b["stats"]["median"],
                 "extra": b.get("extra_info", {})} for b in data.get("benchmarks", [])]
        if res.returncode != 0:
            entry["error"] = (res.stdout + res.stderr)[-1500:]
            entry["failed"] = [ln.removeprefix("FAILED ").split(" - ")[0].split("::")[-1]
                               for ln in res.stdout.splitlines() if ln.startswith("FAILED ")]
        out[f.stem] = entry
    return out


def checksum_ratios(micro: dict[str, Any]) -> dict[str, float]:
    """checksum/memcpy bandwidth ratio at 64 KiB per implementation."""
    ratios = {}
    for b in micro.get("bench_checksum", {}).get("benchmarks", []):
        if b["name"].startswith("test_csum_vs_memcpy") and "65536" in b["name"]:
            impl = b["name"].split("[")[1].split("-")[0]
            ratios[impl] = b["extra"].get("ratio", 0.0)
    return ratios


# ---- reporting ----
def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return a / b if a is not None and b and b > 0 else None


def _fmt(v: float | None, spec: str = ".2f") -> str:
    """A number for the table, or a dash."""
    return "—" if v is None else format(v, spec)


def _mark(ok: bool | None) -> str:
    """A check or a cross after a ratio that has a target."""
    return "" if ok is None else (" ✓" if ok else " ✗")


def report(results: dict[str, dict[str, Sample]], cases: list[Case], micro: dict[str, Any],
           meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Markdown tables and the target verdicts."""
    py, ref = "passt-py", "passt"
    lines: list[str] = []
    verdicts: dict[str, Any] = {}
    thr = [c for c in cases if c.kind == "throughput"]
    limits = meta.get("limits", {})
    if thr and limits:
        sender = limits.get("sender_cpu_s_per_gb")
        lines += ["Physical limits on this machine: " + ", ".join(
            f"{k} {v:.1f} Gbit/s" + (f" at {sender:.3f} s/GB of its sender's CPU"
                                     if k == "kernel TCP loopback" and sender else "")
            for k, v in limits.items() if v is not None and k != "sender_cpu_s_per_gb")
            + " (any back-end copies each byte at least once and crosses a host socket; "
            "the sender's CPU per GB is the least guest -> host TCP can cost).", ""]
    if thr:
        lines += ["### Throughput and back-end CPU (synthetic front-end)", "",
                  "| case | Gbit/s passt-py | Gbit/s passt | ratio | CPU s/GB passt-py | "
                  "CPU s/GB passt | ratio | gen CPU py/passt |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in thr:
            a, b = results.get(c.name, {}).get(py), results.get(c.name, {}).get(ref)
            ga = a.gbit_s if a and a.ok else None
            gb = b.gbit_s if b and b.ok else None
            ca = a.cpu_per_gb if a and a.ok else None
            cb = b.cpu_per_gb if b and b.ok else None
            rt, rc = _ratio(ga, gb), _ratio(ca, cb)
            ok_t = None if rt is None else rt >= TARGET_THROUGHPUT
            ok_c = None if rc is None else rc <= TARGET_CPU[c.mtu]
            verdicts[c.name] = {"throughput_ratio": rt, "throughput_ok": ok_t,
                                "cpu_ratio": rc, "cpu_ok": ok_c}
            gen = "/".join(f"{s.gen_load * 100:.0f}%" if s and s.ok else "—" for s in (a, b))
            lines.append(f"| {c.name} | {_fmt(ga)} | {_fmt(gb)} | {_fmt(rt)}{_mark(ok_t)} | "
                         f"{_fmt(ca, '.3f')} | {_fmt(cb, '.3f')} | {_fmt(rc)}{_mark(ok_c)} | "
                         f"{gen} |")
        lines.append("")
    rr = [c for c in cases if c.kind == "rr"]
    if rr:
        lines += ["### Request/response (transactions per second)", "",
                  "| case | tps passt-py | tps passt | ratio | CPU µs/trans passt-py | "
                  "CPU µs/trans passt |", "|---|---:|---:|---:|---:|---:|"]
        for c in rr:
            a, b = results.get(c.name, {}).get(py), results.get(c.name, {}).get(ref)
            ta = a.tps if a and a.ok else None
            tb = b.tps if b and b.ok else None
            r = _ratio(ta, tb)
            ok = None if r is None else r >= TARGET_RR
            verdicts[c.name] = {"tps_ratio": r, "tps_ok": ok}
            lines.append(f"| {c.name} | {_fmt(ta, '.0f')} | {_fmt(tb, '.0f')} | "
                         f"{_fmt(r)}{_mark(ok)} | "
                         f"{_fmt(a.cpu_per_trans_us if a and a.ok else None, '.1f')} | "
                         f"{_fmt(b.cpu_per_trans_us if b and b.ok else None, '.1f')} |")
        lines.append("")
    mem = [c for c in cases if c.kind == "memory"]
    if mem:
        lines += ["### Memory (back-end RSS, MiB)", "",
                  "| case | idle passt-py | idle passt | with flows passt-py | "
                  "with flows passt | flows opened py/passt |", "|---|---:|---:|---:|---:|---:|"]
        for c in mem:
            a, b = results.get(c.name, {}).get(py), results.get(c.name, {}).get(ref)

            def mib(s: Sample | None, key: str) -> str:
                """An RSS field in MiB, or a dash."""
                v = s.raw.get(key, -1) if s and s.raw else -1
                return f"{v / 1024:.1f}" if v and v > 0 else "—"

            fl = "/".join(str(s.raw.get("flows", "—")) if s and s.raw else "—" for s in (a, b))
            lines.append(f"| {c.name} | {mib(a, 'rss_idle_kib')} | {mib(b, 'rss_idle_kib')} | "
                         f"{mib(a, 'rss_kib')} | {mib(b, 'rss_kib')} | {fl} |")
        lines.append("")
    broken = [f"{name}: exit {m['returncode']}" for name, m in micro.items()
              if m.get("returncode") and name != "bench_migrate"]
    ratios = checksum_ratios(micro)
    if ratios:
        best = max(ratios.values())
        verdicts["checksum_64KiB"] = {"ratios": ratios, "ok": best >= TARGET_CSUM}
        lines += ["### Micro benchmarks", "",
                  "checksum/memcpy bandwidth at 64 KiB: " + ", ".join(
                      f"{k} {v:.2f}" for k, v in ratios.items())
                  + _mark(best >= TARGET_CSUM), ""]
        ring = [b for b in micro.get("bench_ring", {}).get("benchmarks", [])
                if "frames_per_s" in b["extra"]]
        if ring:
            lines += ["| ring case | frames/s |", "|---|---:|"]
            lines += [f"| {b['name'].removeprefix('test_ring_throughput')} | "
                      f"{b['extra']['frames_per_s']:,.0f} |" for b in ring]
            lines.append("")
    if broken:
        lines += ["micro benchmarks that failed: " + ", ".join(broken), ""]
    mig = micro.get("bench_migrate")
    if mig:
        lines += ["### Migration (bench_migrate.py)", ""]
        if mig.get("benchmarks"):
            lines += ["| benchmark | median ms | extra |", "|---|---:|---|"]
            lines += [f"| {b['name']} | {b['median_s'] * 1e3:.2f} | "
                      f"{json.dumps(b['extra'])} |" for b in mig["benchmarks"]]
        else:
            lines.append(f"bench_migrate.py did not produce results "
                         f"(exit {mig.get('returncode')}).")
        if mig.get("failed"):
            lines += ["", "failed (no number): " + ", ".join(mig["failed"])]
        lines.append("")
    errors = [f"- {s.backend} {s.case}: {s.error}" for by in results.values()
              for s in by.values() if s.error]
    if errors:
        lines += ["### Failed runs", "", *errors, ""]
    lines.append(f"_{meta['note']}_")
    return "\n".join(lines), verdicts


def plot(results: dict[str, dict[str, Sample]], cases: list[Case], path: Path) -> str | None:
    """Bars per case: throughput and back-end CPU per GB; returns an error text or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install '.[bench]'): no PNG"
    thr = [c for c in cases if c.kind == "throughput"]
    rr = [c for c in cases if c.kind == "rr"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 11))
    width = 0.38
    for ax, items, getter, title in (
            (axes[0], thr, lambda s: s.gbit_s, "throughput (Gbit/s, higher is better)"),
            (axes[1], thr, lambda s: s.cpu_per_gb or 0, "back-end CPU s per GB (lower is better)"),
            (axes[2], rr, lambda s: s.tps, "request/response (transactions/s)")):
        names = [c.name for c in items]
        top = 0.0
        for i, be in enumerate(("passt-py", "passt")):
            vals = [getter(results[c.name][be]) if be in results.get(c.name, {})
                    and results[c.name][be].ok else 0 for c in items]
            top = max([top, *vals])
            ax.bar([x + (i - 0.5) * width for x in range(len(names))], vals, width, label=be)
        if "CPU" in title and top > 0:
            ax.set_yscale("log")  # passt-py and passt differ by orders of magnitude here
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# ---- main ----
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see bench/README.md for what each option is for)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="all",
                   help="comma list of case names or kinds/modes (throughput, rr, memory, "
                        "udp-tx, tcp-rr/1B, .../1500); default all")
    p.add_argument("--duration", type=float, default=2.5, help="measured seconds per run")
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the median is kept")
    p.add_argument("--flows", type=int, default=10000, help="flows for the memory cases")
    p.add_argument("--backends", default="passt-py,passt", help="which back-ends")
    p.add_argument("--no-download", action="store_true",
                   help="do not fetch Debian's passt when none is on PATH")
    p.add_argument("--no-micro", action="store_true", help="skip the pytest micro benchmarks")
    p.add_argument("--no-migrate", action="store_true", help="skip bench_migrate.py")
    p.add_argument("--pin", action="store_true",
                   help="pin the back-end to CPU 0 and vufront to CPU 1 (taskset)")
    p.add_argument("--spin-us", type=int, default=0,
                   help="vufront busy-polls the rings this long before sleeping")
    p.add_argument("--no-offloads", action="store_true",
                   help="vufront negotiates no checksum/TSO offloads (as a guest with them off)")
    p.add_argument("--guest", action="store_true",
                   help="also boot a real guest (QEMU) per back-end and MTU and run iperf3")
    p.add_argument("--guest-seconds", type=int, default=5, help="iperf3 -t for --guest")
    p.add_argument("--profile", metavar="DIR",
                   help="sample passt-py with py-spy during each case (raw stacks into DIR); "
                        "a hot-spot summary is appended to the table")
    p.add_argument("--out", default=str(BENCH / "results"), help="directory for JSON and PNG")
    return p.parse_args(argv)


def select_cases(spec: str, flows: int) -> list[Case]:
    """Cases matching a comma list of kinds, modes, names or name suffixes ("all": every one)."""
    cases = all_cases(flows)
    if spec == "all":
        return cases
    want = [w.strip() for w in spec.split(",") if w.strip()]
    return [c for c in cases if any(w in (c.kind, c.mode, c.name) or c.name.endswith("/" + w)
                                    for w in want)]


def progress(text: str) -> None:
    """One status line on stderr: rewritten in place on a terminal, a new line otherwise."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text)
    elif text:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run everything selected; print the table; write JSON and PNG. Exit status 0 or 2."""
    args = parse_args(argv)
    if not netns_mod.available():
        print("needs root and iproute2 (it creates a network namespace)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vufront = build_vufront(BENCH / ".build")
    cases = select_cases(args.cases, args.flows)
    backends: dict[str, list[str]] = {}
    wanted = [b.strip() for b in args.backends.split(",")]
    if "passt-py" in wanted:
        backends["passt-py"] = [sys.executable, "-m", "passt_py"]
    note = ""
    if "passt" in wanted:
        cmd, where = find_real_passt(not args.no_download)
        if cmd:
            backends["passt"] = cmd
            note = f"real passt: {where}"
        else:
            note = f"no real passt ({where}): passt-py measured alone"
            print(note, file=sys.stderr)
    profile_dir = Path(args.profile) if args.profile else None
    pin = pin_prefixes(args.pin)
    vu_extra = (("--spin-us", str(args.spin_us)) if args.spin_us else ()) + \
        (("--no-offloads",) if args.no_offloads else ())
    results: dict[str, dict[str, Sample]] = {}
    total = len(cases) * len(backends) * args.repeat
    done = 0
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="passt-py-bench-") as tmp, \
            netns_mod.netns(name=f"ppbench-{os.getpid()}") as ns:
        work = Path(tmp)
        os.chmod(work, 0o755)  # passt drops to nobody: it must reach its socket
        for case in cases:
            for be, prefix in backends.items():
                runs = []
                for _ in range(args.repeat):
                    done += 1
                    progress(f"[{done}/{total}] {be:8} {case.name:16} "
                             f"({time.monotonic() - t0:.0f} s)")
                    prof = None
                    if profile_dir is not None and be == "passt-py":
                        prof = _py_spy(profile_dir, case)
                    runs.append(run_case(vufront, ns, work, be, prefix, case, args.duration,
                                         prof, pin, vu_extra))
                results.setdefault(case.name, {})[be] = median_sample(runs)
        micro: dict[str, Any] = {}
        if not args.no_micro:
            progress(f"micro benchmarks (pytest-benchmark) ({time.monotonic() - t0:.0f} s)")
            micro = run_micro(work, not args.no_migrate)
        limits: dict[str, float | None] = {}
        if any(c.kind == "throughput" for c in cases):
            progress(f"physical limits ({time.monotonic() - t0:.0f} s)")
            limits["kernel TCP loopback"], limits["sender_cpu_s_per_gb"] = loopback_tcp(ns)
            limits["memcpy 64 KiB (cache-resident)"] = memcpy_gbit(micro)
        guest: dict[str, Any] | None = None
        if args.guest:
            from bench.guest_iperf import run_guest_iperf
            guest = run_guest_iperf(backends, backend_argv, ns, (65520, 1500),
                                    args.guest_seconds, progress)
    progress("")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    tso = {be: any(s.offloads for per in results.values() for b, s in per.items() if b == be)
           for be in backends}
    meta = {"note": note + f"; vufront generator; {offload_note(tso)}; "
                           f"{args.duration} s per run, "
                           f"median of {args.repeat}; {os.cpu_count()} CPUs"
                           + ("; back-end pinned to CPU 0, vufront to CPU 1" if pin[0] else "")
                           + f"; load average {load0:.1f} at start, "
                             f"{os.getloadavg()[0]:.1f} at end",
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "limits": limits}
    table, verdicts = report(results, cases, micro, meta)
    if guest is not None:
        from bench.guest_iperf import guest_table
        table += "\n\n" + "\n".join(guest_table(guest))
    if profile_dir is not None:
        from bench.pyspy_top import report as spy_report
        spy = [spy_report(f, 8) for f in sorted(profile_dir.glob("*.txt"))]
        table += "\n\n### passt-py profile (py-spy, Python frames)\n\n```\n" + \
            "\n\n".join(spy) + "\n```"
    print(table)
    data = {"meta": meta, "cases": [asdict(c) | {"name": c.name} for c in cases],
            "results": {c: {b: {"raw": s.raw, "error": s.error, "cpu_s_per_gb": s.cpu_per_gb}
                            for b, s in by.items()} for c, by in results.items()},
            "verdicts": verdicts, "micro": micro, "guest": guest}
    (out / "latest.json").write_text(json.dumps(data, indent=1))
    (out / "latest.md").write_text(table + "\n")
    err = plot(results, cases, out / "latest.png")
    print(f"\nwrote {out / 'latest.json'}, {out / 'latest.md'}"
          + (f", {out / 'latest.png'}" if err is None else f" ({err})"), file=sys.stderr)
    return 0


def _py_spy(directory: Path, case: Case) -> Callable[[int, float], subprocess.Popen | None]:
    """A profiler hook: py-spy samples the back-end (Python stacks) over the measured window."""
    directory.mkdir(parents=True, exist_ok=True)

    def hook(pid: int, duration: float) -> subprocess.Popen | None:
        spy = shutil.which("py-spy")
        if spy is None:
            return None
        base = directory / case.name.replace("/", "_")
        time.sleep(0.6)  # past vufront's set-up and warm-up
        return subprocess.Popen([spy, "record", "-p", str(pid), "-d",
                                 str(max(1, int(duration))), "-r", "200", "-f", "raw", "-o",
                                 f"{base}.txt", "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return hook


if __name__ == "__main__":
    sys.exit(main())
