# SPDX-License-Identifier: MIT
"""--stats DELAY, and the newer options' way from the Config into a Service.

The reporter logs one line of counters every DELAY seconds; the service's counters cover the
flows by type and what the handlers count; a real passt-py process with --stats prints them.
The service part also checks that -o, --outbound-if4, --freebind and --migrate-no-linger
reach the guest view and the migration context the handlers and the source read.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from passt_py.config.conf import config_from_argv
from passt_py.loop import EventLoop
from passt_py.service import Service
from passt_py.stats import StatsReporter, format_counters, service_counters

ARGS = ["-a", "10.9.8.7/24", "-g", "10.9.8.1", "-4", "-i", "lo", "--no-dhcp", "--no-ndp",
        "--no-dhcpv6", "--no-ra"]


def test_reporter_logs_a_line_every_delay(caplog) -> None:
    """A line of name=value pairs every DELAY seconds, from the collector's current values."""
    loop = EventLoop()
    seen = iter(range(100))
    reporter = StatsReporter(loop, 0.05, lambda: {"flows_tcp": next(seen), "x": 7})
    caplog.set_level(logging.INFO, logger="passt_py.stats")
    try:
        reporter.start()
        deadline = time.monotonic() + 2
        while reporter.lines < 3 and time.monotonic() < deadline:
            loop.run_once(0.01)
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "passt_py.stats"]
    assert lines[:3] == ["stats: flows_tcp=0 x=7", "stats: flows_tcp=1 x=7",
                         "stats: flows_tcp=2 x=7"]


def test_format_keeps_the_order_given() -> None:
    """The names come out in the collector's order, so lines line up from one to the next."""
    assert format_counters({"b": 1, "a": 2}) == "b=1 a=2"


def test_service_counters_and_option_wiring(tmp_path: Path) -> None:
    """A Service built with the newer options: its counters start at zero, and the options
    reach the guest view (outbound, freebind) and the migration context (no-linger)."""
    config = config_from_argv(["--vhost-user", "-s", str(tmp_path / "vu.sock"), *ARGS,
                               "-o", "10.9.8.99", "--outbound-if4", "lo", "--freebind",
                               "--migrate-no-linger"])
    service = Service(config)
    try:
        counters = service_counters(service)
        assert counters["flows_tcp"] == counters["flows_udp"] == counters["flows_ping"] == 0
        assert {"tcp_resets", "udp_dropped", "link_dropped", "flows_refused"} <= set(counters)
        assert service.view.ip4.outbound == ipaddress.IPv4Address("10.9.8.99")
        assert service.view.ip4.outbound_if == "lo" and service.view.freebind
        ctx = service.migration_context()
        assert ctx.migrate_no_linger and not ctx.migrate_exit
    finally:
        service.close()


def test_passt_py_with_stats_prints_them(tmp_path: Path) -> None:
    """passt-py -f --stats 1 logs a statistics line within a couple of seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "passt_py", "--vhost-user", "-f", "-s", str(tmp_path / "vu.sock"),
         *ARGS, "--stats", "1"], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    out = b""
    try:
        deadline = time.monotonic() + 10
        while b"stats:" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
            chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                break
            out += chunk
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        proc.stderr.close()
    line = next((ln for ln in out.decode().splitlines() if "stats:" in ln), "")
    assert "flows_tcp=0" in line, out.decode()
