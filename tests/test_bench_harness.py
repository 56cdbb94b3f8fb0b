# SPDX-License-Identifier: MIT
"""The benchmark generator (bench/vufront) against passt-py, briefly, on real rings.

The numbers in bench/README.md are only as good as the generator: this checks, in every CI
run, that it still builds warning-free, negotiates what a Linux guest would (the checksum and
TSO offloads where the back-end offers them, none with --no-offloads), moves bytes in each
direction at MTU 1500, and that TSO really changes the frames (64 KiB frames at MTU 1500 with
it, MTU-sized frames without it). It measures nothing: rates belong to bench/, not to tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import Case, build_vufront, run_case
from tests import netns as netns_mod

HOST_TSO4 = 11      # VIRTIO_NET_F_HOST_TSO4
GUEST_TSO4 = 7      # VIRTIO_NET_F_GUEST_TSO4


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """vufront built into a temporary directory, a work directory, the benchmark namespace."""
    vufront = build_vufront(tmp_path_factory.mktemp("vufront"))
    work = tmp_path_factory.mktemp("bench-work")
    os.chmod(work, 0o755)
    with netns_mod.netns(name=f"pptb-{os.getpid()}") as ns:
        yield vufront, ns, work


@pytest.mark.parametrize("offloads", [True, False], ids=["offloads", "no-offloads"])
@pytest.mark.parametrize("mode", ["tcp-tx", "tcp-rx", "udp-tx", "udp-rx"])
def test_generator_moves_bytes_with_and_without_offloads(harness, mode: str,
                                                         offloads: bool) -> None:
    vufront, ns, work = harness
    sample = run_case(vufront, ns, work, "passt-py", [sys.executable, "-m", "passt_py"],
                      Case("throughput", mode, 1500), 0.5,
                      extra=() if offloads else ("--no-offloads",))
    assert sample.ok, (sample.error, sample.raw)
    raw = sample.raw
    assert raw["bytes"] > 10 << 20, raw
    for bit in (HOST_TSO4, GUEST_TSO4):
        assert bool(raw["features"] >> bit & 1) == offloads, hex(raw["features"])
    if mode == "tcp-tx":
        # Bytes the host read over the window per frame the guest sent in it (the window's
        # edges cut a little either way): TSO frames of up to 44 segments, or one MSS each.
        per_frame = raw["bytes"] / raw["tx_frames"]
        if offloads:
            assert per_frame > 16000, per_frame
        else:
            assert per_frame < 1600, per_frame


def test_the_migration_benchmark_still_runs() -> None:
    """bench/bench_migrate.py's save/load case with one TCP flow runs to the end against
    this tree, so a change to the migration API cannot leave the benchmark broken unseen."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable", "bench/bench_migrate.py",
                           "-k", "save_load_tcp_flows and 1]"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]
