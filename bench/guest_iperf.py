# SPDX-License-Identifier: MIT
"""Real-guest throughput: iperf3 in a QEMU (TCG or KVM) guest against each back-end.

The guest image and boot come from tests/guest (boot.py, image.py); its iperf3 is the client,
the host's iperf3 the server on 127.0.0.1 inside the harness's namespace, reached from the
guest at the gateway address. Per back-end and MTU: one guest, both directions (-R for host ->
guest), iperf3's received bytes and the back-end's utime+stime over each iperf3 run. The
emulated guest is usually the bottleneck, so CPU per GB is the number that compares back-ends.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from tests import netns as netns_mod

IPERF_PORT = 5201


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all threads) from /proc/PID/stat."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_guest_iperf(backends: dict[str, list[str]], argv_for: Callable[[list[str], Path, int],
                                                                     list[str]],
                    ns: str, mtus: tuple[int, ...], seconds: int,
                    progress: Callable[[str], None]) -> dict[str, Any]:
    """Boot one guest per back-end and MTU; iperf3 both ways; returns results by case name."""
    from tests.guest.boot import GuestError, boot_guest
    from tests.guest.image import build_image

    iperf3 = shutil.which("iperf3")
    if iperf3 is None:
        return {"error": "iperf3 is not installed on the host (Debian package iperf3)"}
    progress("real guest: building/loading the guest image")
    image = build_image()
    out: dict[str, Any] = {}
    for mtu in mtus:
        for be, prefix in backends.items():
            for direction in ("guest->host", "host->guest"):
                out.setdefault(f"{direction}/{mtu}", {})[be] = {"error": "not run"}
            progress(f"real guest: {be} MTU {mtu}: booting")
            try:
                with boot_guest(lambda sock, p=prefix, m=mtu: argv_for(p, sock, m), ns,
                                dhcp=True, image=image) as guest:
                    guest.wait_dhcp(timeout=30)
                    assert guest.backend is not None
                    pid = guest.backend.pid
                    got_mtu = guest.check("cat /sys/class/net/eth0/mtu").strip()
                    server = netns_mod.popen_in(ns, [iperf3, "-s", "-B", "127.0.0.1", "-p",
                                                     str(IPERF_PORT)],
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
                    try:
                        time.sleep(0.5)
                        for direction, flag in (("guest->host", ""), ("host->guest", "-R")):
                            progress(f"real guest: {be} MTU {mtu}: iperf3 {direction}")
                            c0 = proc_cpu_seconds(pid)
                            text = guest.check(f"iperf3 -c 10.200.0.1 -p {IPERF_PORT} "
                                               f"-t {seconds} -J {flag}", timeout=seconds + 40)
                            cpu = proc_cpu_seconds(pid) - c0
                            rep = json.loads(text)["end"]["sum_received"]
                            gb = rep["bytes"] / 1e9
                            out[f"{direction}/{mtu}"][be] = {
                                "gbit_s": rep["bits_per_second"] / 1e9, "bytes": rep["bytes"],
                                "backend_cpu_s": cpu,
                                "cpu_s_per_gb": cpu / gb if gb else None,
                                "guest_mtu": got_mtu}
                    finally:
                        server.terminate()
                        try:
                            server.wait(5)
                        except subprocess.TimeoutExpired:
                            server.kill()
                            server.wait(5)
            except (GuestError, OSError, ValueError, KeyError, AssertionError) as exc:
                for direction in ("guest->host", "host->guest"):
                    entry = out[f"{direction}/{mtu}"][be]
                    if "error" in entry:
                        entry["error"] = str(exc)[-800:]
    return out


def guest_table(res: dict[str, Any]) -> list[str]:
    """Markdown lines for the real-guest results."""
    if "error" in res:
        return ["### Real guest (iperf3)", "", res["error"], ""]

    def f(v: Any, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    lines = ["### Real guest (QEMU, iperf3, one stream)", "",
             "| direction/MTU | Gbit/s passt-py | Gbit/s passt | CPU s/GB passt-py | "
             "CPU s/GB passt | CPU ratio |", "|---|---:|---:|---:|---:|---:|"]
    for name, by in res.items():
        a, b = by.get("passt-py", {}), by.get("passt", {})
        ca, cb = a.get("cpu_s_per_gb"), b.get("cpu_s_per_gb")
        ratio = ca / cb if ca is not None and cb else None
        lines.append(f"| {name} | {f(a.get('gbit_s'), '.2f')} | {f(b.get('gbit_s'), '.2f')} | "
                     f"{f(ca, '.3f')} | {f(cb, '.3f')} | {f(ratio, '.2f')} |")
    errs = [f"- {be} {name}: {e['error']}" for name, by in res.items() for be, e in by.items()
            if "error" in e]
    return lines + [""] + (["Failed:", *errs, ""] if errs else [])
