# SPDX-License-Identifier: MIT
"""A small mutation fuzzer for the targets when atheris is not wanted (pytest, sanitized runs).

No coverage feedback: it mutates the seed corpus (bit flips, byte sets, interesting 16/32-bit
values at random offsets, truncation, extension, splicing of two inputs, duplication of a slice)
with a seeded PRNG for a time or iteration budget, and stops at the first finding, which it
returns with the input that caused it (saved to a crash file when asked). The budget comes from
PASST_PY_FUZZ_SECONDS (default 20 s for all targets together, see tests/fuzz/README.md).
"""
from __future__ import annotations

import hashlib
import os
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

CORPUS = Path(__file__).resolve().parent / "corpus"
DEFAULT_TOTAL_SECONDS = 20.0
INTERESTING16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x10000)


def total_budget() -> float:
    """Seconds for all fuzz targets together in one test run (PASST_PY_FUZZ_SECONDS)."""
    try:
        return max(0.5, float(os.environ.get("PASST_PY_FUZZ_SECONDS", DEFAULT_TOTAL_SECONDS)))
    except ValueError:
        return DEFAULT_TOTAL_SECONDS


def load_corpus(target: str) -> list[bytes]:
    """The committed seeds of ``target`` (may be empty)."""
    folder = CORPUS / target
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def mutate(data: bytes, rng: random.Random, pool: Sequence[bytes], max_len: int) -> bytes:
    """One to four random mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n >= 2:
            i = rng.randrange(n - 1)
            buf[i:i + 2] = rng.choice(INTERESTING16).to_bytes(2, rng.choice(("big", "little")))
        elif op == 3 and n >= 4:
            i = rng.randrange(n - 3)
            buf[i:i + 4] = rng.choice(INTERESTING32).to_bytes(4, rng.choice(("big", "little")))
        elif op == 4 and n:
            del buf[rng.randrange(n):]
        elif op == 5:
            buf += rng.randbytes(rng.randint(1, 64))
        elif op == 6 and pool:
            other = rng.choice(pool)
            cut = rng.randint(0, n)
            buf = buf[:cut] + other[rng.randint(0, len(other)):]
        elif op == 7 and n:
            i = rng.randrange(n)
            j = rng.randint(i, min(n, i + 64))
            buf[j:j] = buf[i:j]
        elif op == 8 and n:
            i = rng.randrange(n)
            del buf[i:i + rng.randint(1, 16)]
    return bytes(buf[:max_len])


@dataclass
class FuzzResult:
    """What a driver run did."""

    target: str
    iterations: int = 0
    seconds: float = 0.0
    finding: str | None = None
    crash_input: bytes | None = None
    crash_file: Path | None = None
    distinct: set[str] = field(default_factory=set)


def run(target_name: str, target: Callable[[bytes], None], seconds: float,
        seed: int = 0, max_len: int = 4096, max_iterations: int | None = None,
        crash_dir: Path | None = None) -> FuzzResult:
    """Fuzz ``target`` for ``seconds`` (or ``max_iterations``); stop at the first finding."""
    rng = random.Random(seed)
    seeds = load_corpus(target_name) or [b""]
    pool = list(seeds)
    res = FuzzResult(target_name)
    start = time.monotonic()
    queue = list(seeds)            # seeds run unmodified first
    while True:
        if max_iterations is not None and res.iterations >= max_iterations:
            break
        if time.monotonic() - start >= seconds and not queue:
            break
        data = queue.pop(0) if queue else mutate(rng.choice(pool), rng, pool, max_len)
        res.iterations += 1
        try:
            target(data)
        except Exception:  # noqa: BLE001 - every exception out of a target is a finding
            res.finding = traceback.format_exc()
            res.crash_input = data
            if crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                name = f"crash-{target_name}-{hashlib.sha1(data).hexdigest()[:16]}"
                res.crash_file = crash_dir / name
                res.crash_file.write_bytes(data)
            break
        if len(pool) < 512 and rng.random() < 0.02:
            pool.append(data)     # keep some mutants as parents: cheap diversity
    res.seconds = time.monotonic() - start
    return res
