# SPDX-License-Identifier: MIT
"""Checksum bandwidth against memcpy of the same size, measured in the same run.

The loops run inside C (core.bench_csum / core.bench_memcpy repeat the operation `reps` times
per call) so cffi's call overhead does not blur small sizes; a separate benchmark shows the cost
of one call through the Python wrapper. Run with: python -m pytest bench/bench_checksum.py
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from passt_py import core

SIZES = [64, 1500, 64 * 1024]
BYTES_PER_CALL = 16 << 20     # work per timed call: long enough to dwarf the call itself
IMPL_NAMES = {core.CSUM_SCALAR: "scalar", core.CSUM_AVX2: "avx2"}


def _reps(size: int) -> int:
    """Repetitions so that one timed call processes about BYTES_PER_CALL bytes."""
    return max(1, BYTES_PER_CALL // size)


def _best_seconds(fn: Callable[[], object], rounds: int = 25) -> float:
    """Fastest of several timed runs: the least disturbed by the rest of the machine."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", core.csum_impls(), ids=lambda i: IMPL_NAMES[i])
def test_csum_vs_memcpy(benchmark, capsys, impl, size):
    """Checksum bandwidth and its ratio to memcpy bandwidth at the same size."""
    src = os.urandom(size)
    dst = bytearray(size)
    reps = _reps(size)
    benchmark.pedantic(core.bench_csum, args=(src, reps, impl), rounds=25, warmup_rounds=2)
    csum_s = benchmark.stats.stats.min
    copy_s = _best_seconds(lambda: core.bench_memcpy(dst, src, reps))
    csum_gbs = size * reps / csum_s / 1e9
    copy_gbs = size * reps / copy_s / 1e9
    ratio = csum_gbs / copy_gbs
    benchmark.extra_info.update(csum_GBps=round(csum_gbs, 2), memcpy_GBps=round(copy_gbs, 2),
                                ratio=round(ratio, 3))
    with capsys.disabled():
        print(f"\n  {IMPL_NAMES[impl]:6} {size:6} B: checksum {csum_gbs:6.2f} GB/s, "
              f"memcpy {copy_gbs:6.2f} GB/s, checksum/memcpy {ratio:.2f}")
    assert csum_gbs > 0


@pytest.mark.parametrize("size", SIZES)
def test_csum_one_python_call(benchmark, size):
    """One csum_partial() call through the binding, overhead included."""
    data = os.urandom(size)
    benchmark(core.csum_partial, data)
