# SPDX-License-Identifier: MIT
"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) into hot spots.

Each line of the file is ``frame;frame;...;leaf COUNT`` with frames like
``function (path/file.py:line)``. Self share: samples whose leaf is the function. Inclusive
share: samples with the function anywhere on the stack (counted once per sample). Samples whose
leaf is the event loop's wait (``EventLoop.run_once``: its own code is epoll_wait and a few
lines; py-spy's idle detection misses that wait here, so it shows up as busy) are reported as
"waiting" and left out of the shares, which are therefore shares of the back-end's busy time.
Run: python bench/pyspy_top.py PROFILE.txt [--top N]
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _label(frame: str) -> str:
    """``file.py:function`` for a raw frame (line numbers dropped, path shortened)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("passt_py/", "site-packages/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker):]
            break
    return f"{path}:{m.group('func')}"


WAIT_LEAF = "passt_py/loop.py:EventLoop.run_once"


def summarise(text: str) -> tuple[int, int, Counter[str], Counter[str]]:
    """Busy samples, waiting samples, self and inclusive counts by ``file:function``."""
    total = waiting = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_label(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        if frames[-1] == WAIT_LEAF:
            waiting += n
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, waiting, own, incl


def report(path: Path, top: int = 15) -> str:
    """Text table of the top self and inclusive shares."""
    total, waiting, own, incl = summarise(path.read_text(errors="replace"))
    if not total:
        return f"{path}: no busy samples"
    lines = [f"{path.name}: {total} busy samples ({waiting} more waiting in epoll), "
             "shares of busy time", "  self %  function"]
    lines += [f"  {n * 100 / total:5.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["  incl %  function (passt_py only)"]
    skip = ("passt_py/__main__.py", "passt_py/main.py", "passt_py/service.py:run",
            "passt_py/loop.py")
    lines += [f"  {n * 100 / total:5.1f}  {f}" for f, n in incl.most_common()
              if f.startswith("passt_py/") and not f.startswith(skip)][:top]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    for path in args.profiles:
        print(report(path, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
