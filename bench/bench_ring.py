# SPDX-License-Identifier: MIT
"""Virtqueue throughput: TX drain+release and RX fill, C core against the pure-Python reference.

Both run on the same kind of ring in a memfd (the reference directly on the shared mmap), with
the driver's refill (republishing the consumed heads) done in untimed setup, so a round times
exactly one device-side batch: for the C core, the Python wrapper call included.

TX frames of 64 B are one descriptor; 64 KiB frames are cut in 4 KiB descriptors (like a
TSO skb's fragments). RX buffers are 1536-byte mergeable chains, so a 64 KiB frame takes 43.
Run: python -m pytest bench/bench_ring.py -s   (prints frames/s and the C factor per case)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from passt_py.core import GuestMemory, TxBatch, Virtqueue  # noqa: E402
from passt_py.ref import virtq as ref  # noqa: E402
from tests.virtq_driver import DriverRing, GuestRam  # noqa: E402

RAM = 48 << 20
GPA = 0x100000
RX_BUF = 1536
# case -> (direction, frame size, ring size, frames per round)
CASES = {
    "tx-64B": ("tx", 64, 256, 256),
    "tx-64KiB": ("tx", 65536, 1024, 48),
    "rx-64B": ("rx", 64, 256, 256),
    "rx-64KiB": ("rx", 65536, 1024, 23),
}
RESULTS: dict[tuple[str, str], float] = {}


class Bench:
    """A ring set up for one case, with a C device or a reference device on it."""

    def __init__(self, case: str, impl: str) -> None:
        self.kind, self.size, num, self.nframes = CASES[case]
        self.ram = GuestRam(((GPA, RAM),))
        self.ring = DriverRing(self.ram, num)
        if self.kind == "tx":
            data = bytes(range(256)) * (self.size // 256) or bytes(self.size)
            split = [4096] * (len(data) // 4096) if self.size > 4096 else None
            self.heads = [self.ring.add_tx_buffer(data, split=split, publish=False)
                          for _ in range(self.nframes)]
            self.ring.set_avail_idx(0)
            self.ring.avail_idx = 0
        else:
            self.ring.add_rx_buffers(num, RX_BUF)
            self.frames = [bytes([i & 0xFF]) * self.size for i in range(self.nframes)]
        self.impl = impl
        desc, used, avail, log = self.ring.vring_addr()
        if impl == "c":
            self.mem = GuestMemory()
            self.ram.map_into(self.mem)
            self.vq = Virtqueue(self.mem, 0)
            self.vq.set_num(num)
            self.vq.set_addr(desc, used, avail, log, 0)
            self.vq.start()
            self.batch = TxBatch(self.nframes, max_iov=self.nframes * 20)
        else:
            rmem = ref.RefMemory(self.ram.mm, [ref.RefRegion(r.gpa, r.size, r.uva, r.offset)
                                              for r in self.ram.regions])
            self.rvq = ref.RefVirtqueue(rmem, num, desc, used, avail, log)

    def refill(self) -> None:
        """Driver side, untimed: make the chains the last round consumed available again."""
        if self.kind == "tx":
            self.ring.pop_used()
            self.ring.republish(self.heads)
        else:
            self.ring.republish([h for h, _ in self.ring.pop_used()])

    def round(self) -> int:
        """One device-side batch; returns frames handled."""
        if self.impl == "c":
            if self.kind == "tx":
                b = self.vq.pop_tx(self.nframes, 12, self.batch)
                n = b.count
                self.vq.release(b)
                return n
            return self.vq.push_rx(self.frames)
        if self.kind == "tx":
            frames, bad = self.rvq.pop_tx(self.nframes, 12, self.nframes * 20)
            self.rvq.release([h for h, _ in frames] + [h for h, _ in bad])
            return len(frames)
        return self.rvq.push_rx(self.frames)[0]

    def close(self) -> None:
        if self.impl == "c":
            self.vq.close()
            self.mem.clear()
        self.ram.close()


@pytest.mark.parametrize("impl", ["c", "ref"])
@pytest.mark.parametrize("case", list(CASES))
def test_ring_throughput(benchmark, case: str, impl: str) -> None:
    """Frames per second for one batch round; every round must handle the whole batch."""
    b = Bench(case, impl)
    try:
        b.refill()
        assert b.round() == b.nframes          # warm-up and correctness of the setup
        rounds = 300 if impl == "c" else (10 if "KiB" in case else 40)
        benchmark.pedantic(b.round, setup=b.refill, rounds=rounds, iterations=1)
        fps = b.nframes / benchmark.stats.stats.median
        benchmark.extra_info["frames_per_s"] = fps
        RESULTS[(case, impl)] = fps
        assert b.round() == 0                   # nothing left over without a refill
    finally:
        b.close()


@pytest.fixture(scope="module", autouse=True)
def _report():
    """Print frames/s per case and the C core's factor over the reference."""
    yield
    lines = ["", "virtqueue frames/s (median round)       C            ref    C factor"]
    for case in CASES:
        c, r = RESULTS.get((case, "c")), RESULTS.get((case, "ref"))
        if c and r:
            lines.append(f"  {case:<34} {c:>12,.0f} {r:>12,.0f} {c / r:>9.1f}x")
    print("\n".join(lines))
