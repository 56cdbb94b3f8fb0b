# SPDX-License-Identifier: MIT
"""Run one fuzz target: coverage-guided with atheris, or with the mutation driver.

    python -m tests.fuzz.run TARGET [--engine atheris|driver] [--seconds N] [--runs N]
                                    [--seed N] [--crash-dir DIR] [-- libFuzzer args...]

atheris instruments the Python modules the target reaches (passt_py and its pure-Python
reference, which mirrors the C walks and so stands in for coverage of csrc/, which gcc cannot
instrument for libFuzzer) and feeds libFuzzer's mutations; the corpus directory given to it is a
scratch copy of tests/fuzz/corpus/TARGET, so new inputs never land in the tree unless
``--grow-corpus`` is given. Targets in NEEDS_NETNS enter a private network namespace first.
Exit status 0: no finding; 1: a finding (printed, input saved under --crash-dir); 2: set-up.
The last line printed is ``fuzz TARGET: N iterations in S s, F findings`` for the callers.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


#: The targets of tests/fuzz/targets.py (a test checks the lists agree).
TARGET_NAMES = ("virtq", "checksum", "iov", "frames", "vhost", "migrate")
NEEDS_NETNS = ("frames", "migrate")
#: Modules the targets reach, imported under instrumentation.
INSTRUMENTED = ("passt_py.link.arp", "passt_py.link.dhcp", "passt_py.link.dhcpv6",
                "passt_py.link.dnsname", "passt_py.link.ethernet", "passt_py.flow",
                "passt_py.link.fwd", "passt_py.udp.icmp", "passt_py.link.ip", "passt_py.loop",
                "passt_py.link.ndp", "passt_py.link.netview", "passt_py.link.tap",
                "passt_py.udp.handler", "passt_py.udp.context", "passt_py.udp.errqueue",
                "passt_py.udp.fast", "passt_py.udp.forward", "passt_py.udp.rx",
                "passt_py.udp.sockets", "passt_py.udp.tx", "passt_py.vhost_user.wire",
                "passt_py.vhost_user.session", "passt_py.vhost_user.device",
                "passt_py.tcp.handler", "passt_py.migrate.codec", "passt_py.migrate.context",
                "passt_py.migrate.section", "passt_py.migrate.meta", "passt_py.migrate.versions",
                "passt_py.migrate.source", "passt_py.migrate.target", "passt_py.migrate.record",
                "passt_py.tcp.migration", "passt_py.udp.migration", "passt_py.tcp.conn",
                "passt_py.tcp.state",
                "passt_py.migrate.repair")


def _enter_netns(stack: contextlib.ExitStack) -> None:
    from tests.fuzz import netns_guard
    stack.enter_context(netns_guard.private_netns())


def _atheris(name: str, seconds: float, runs: int | None, seed: int, crash_dir: Path,
             extra: list[str], grow: bool) -> int:
    import importlib

    import atheris
    with atheris.instrument_imports(include=["passt_py", "tests.fuzz.targets"]):
        from tests.fuzz import targets
        for module in INSTRUMENTED:   # the targets import these lazily: instrument them now
            try:
                importlib.import_module(module)
            except ImportError:
                pass                  # not written yet: its target part is skipped
    target = targets.TARGETS[name]
    corpus_src = Path(__file__).resolve().parent / "corpus" / name
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    corpus = corpus_src if grow else work / "corpus"
    if not grow:
        corpus.mkdir()
        if corpus_src.is_dir():
            for p in corpus_src.iterdir():
                shutil.copy(p, corpus / p.name)
    crash_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={max(1, int(seconds))}",
            f"-seed={seed or 1}", f"-artifact_prefix={crash_dir}/", "-print_final_stats=1",
            "-max_len=8192", "-rss_limit_mb=4096", "-timeout=20", *extra]
    if runs is not None:
        argv.append(f"-runs={runs}")
    atheris.Setup(argv, target)
    atheris.Fuzz()           # exits the process: libFuzzer prints "Done N runs in S second(s)"
    return 0


def _driver(name: str, seconds: float, runs: int | None, seed: int, crash_dir: Path) -> int:
    from tests.fuzz import driver, targets
    res = driver.run(name, targets.TARGETS[name], seconds, seed=seed, max_iterations=runs,
                     crash_dir=crash_dir)
    if res.finding:
        print(res.finding, file=sys.stderr)
        print(f"input saved as {res.crash_file}", file=sys.stderr)
    print(f"fuzz {name}: {res.iterations} iterations in {res.seconds:.1f} s, "
          f"{1 if res.finding else 0} findings", flush=True)
    return 1 if res.finding else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one passt_py fuzz target")
    parser.add_argument("target")
    parser.add_argument("--engine", choices=("atheris", "driver"), default="atheris")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--seed", type=int, default=int(time.time()) & 0xFFFF)
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    parser.add_argument("--grow-corpus", action="store_true",
                        help="atheris: add new inputs to tests/fuzz/corpus/TARGET")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    # passt_py must not be imported before atheris instruments it: names are listed here.
    if args.target not in TARGET_NAMES:
        print(f"unknown target {args.target}; known: {', '.join(TARGET_NAMES)}",
              file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.target in NEEDS_NETNS:
            try:
                _enter_netns(stack)
            except Exception as e:  # noqa: BLE001 - report why, as a set-up failure
                print(f"cannot enter a private network namespace: {e}", file=sys.stderr)
                return 2
        if args.engine == "atheris":
            return _atheris(args.target, args.seconds, args.runs, args.seed, args.crash_dir,
                            extra, args.grow_corpus)
        return _driver(args.target, args.seconds, args.runs, args.seed, args.crash_dir)


if __name__ == "__main__":
    sys.exit(main())
