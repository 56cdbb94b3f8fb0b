# SPDX-License-Identifier: MIT
"""Run C-core test suites against an AddressSanitizer + UBSan build of passt_py._core.

The main tree's extension is never touched: the package, the C sources and the tests are copied
into a scratch directory, the extension is built there with ``PASST_PY_SANITIZE=1``, and pytest
runs in that copy in a child process whose ``PYTHONPATH`` puts the copy first and whose
``LD_PRELOAD`` carries the compiler's libasan and libubsan (an instrumented extension loaded
into an uninstrumented python needs the runtime loaded first). Leak detection is off (the
interpreter's own allocations would drown real reports); any other report aborts the child with a
distinctive exit code, and its text is looked for in the output as well.

Usage::

    python tests/sanitize_run.py [--workdir DIR] [--keep] [pytest args...]

With no pytest arguments it runs :data:`DEFAULT_SUITES`. Exit status: 0 when pytest passed and no
sanitizer spoke, otherwise non-zero (see the printed summary). ``tests/test_sanitize.py`` drives
this from the normal test run with a bounded subset.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Test files that exercise the C core (run when no pytest arguments are given).
DEFAULT_SUITES = (
    "tests/test_checksum.py",
    "tests/test_iov.py",
    "tests/test_guest_mem.py",
    "tests/test_virtq.py",
    "tests/test_frontend_backend.py",
    "tests/test_hostile_core.py",
    "tests/test_hostile_vhost.py",
    "tests/test_hostile_frames.py",
    "tests/test_hostile_migrate.py",
    "tests/test_fastpath.py",
    "tests/test_fast_tcp.py",
    "tests/test_capture.py",
)
#: Exit code the sanitizers use when they report (distinct from pytest's own 0..5).
SANITIZER_EXIT = 86
#: Lines that mean a sanitizer reported something.
REPORT_RE = re.compile(r"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|"
                       r"SUMMARY: (Address|UndefinedBehavior)Sanitizer")
#: Files and folders copied into the scratch tree.
COPY = ("passt_py", "csrc", "tests", "pyproject.toml", "setup.py")
IGNORE = shutil.ignore_patterns("__pycache__", "*.so", ".cache", "*.pyc", "_core.c", "*.o",
                                ".hypothesis", ".pytest_cache")


class SanitizeError(Exception):
    """The sanitized build could not be made or run (not a sanitizer report)."""


@dataclass
class Result:
    """What one sanitized run produced."""

    returncode: int
    output: str
    reports: list[str]

    @property
    def ok(self) -> bool:
        """Pytest passed and no sanitizer reported."""
        return self.returncode == 0 and not self.reports


def runtime_libs(cc: str = "gcc") -> list[str]:
    """Paths of the compiler's shared ASan and UBSan runtimes (ASan first)."""
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        try:
            path = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise SanitizeError(f"cannot ask {cc} for {name}: {e}") from e
        if not os.path.isabs(path) or not os.path.exists(path):
            raise SanitizeError(f"{cc} has no {name} (install the compiler's sanitizer runtime)")
        libs.append(os.path.realpath(path))
    return libs


def sanitizer_env(libs: list[str], tree: Path) -> dict[str, str]:
    """The child's environment: preload, options, the scratch tree first on the path."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(libs)
    env["ASAN_OPTIONS"] = (f"detect_leaks=0:halt_on_error=1:exitcode={SANITIZER_EXIT}:"
                           "abort_on_error=0:allocator_may_return_null=1:"
                           "detect_stack_use_after_return=0:strict_string_checks=1:"
                           "check_initialization_order=1")
    env["UBSAN_OPTIONS"] = (f"halt_on_error=1:print_stacktrace=1:exitcode={SANITIZER_EXIT}")
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + [p for p in
                                                       env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])
    env["PYTHONMALLOC"] = "malloc"  # every Python object through ASan's allocator: redzones
    env["PASST_PY_SANITIZED"] = "1"
    env.pop("PASST_PY_SANITIZE", None)
    return env


def build(tree: Path, timeout: float = 300.0) -> Path:
    """Copy the sources into ``tree`` and build the sanitized extension there; its path."""
    for name in COPY:
        src = ROOT / name
        dst = tree / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=IGNORE, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    for old in (tree / "passt_py").glob("_core*.so"):
        old.unlink()
    env = dict(os.environ, PASST_PY_SANITIZE="1")
    proc = subprocess.run([sys.executable, "csrc/build_core.py"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    built = sorted((tree / "passt_py").glob("_core*.so"))
    if proc.returncode != 0 or not built:
        raise SanitizeError(f"sanitized build failed ({proc.returncode}):\n"
                            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    so = built[0]
    symbols = subprocess.run(["nm", "-D", str(so)], capture_output=True, text=True).stdout
    if "__asan_report" not in symbols or "__ubsan_handle" not in symbols:
        raise SanitizeError(f"{so} is not instrumented (no __asan_report/__ubsan_handle)")
    return so


def run(tree: Path, pytest_args: list[str], timeout: float = 900.0) -> Result:
    """Run pytest in the sanitized tree; the report lines found in its output."""
    libs = runtime_libs()
    env = sanitizer_env(libs, tree)
    probe = subprocess.run(
        [sys.executable, "-c", "import passt_py._core as c, passt_py.core; print(c.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(tree)):
        raise SanitizeError(f"the sanitized extension does not load from {tree}: "
                            f"{probe.stdout}{probe.stderr[-3000:]}")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-o", "addopts=", *pytest_args]
    try:
        proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        code = -1
        output = (out.decode(errors="replace") if isinstance(out, bytes) else out)
        output += f"\n(timed out after {timeout} s)"
    reports = [line for line in output.splitlines() if REPORT_RE.search(line)]
    return Result(code, output, reports)


def main(argv: list[str] | None = None) -> int:
    """Command line: build, run, print a summary; exit 0 only when clean."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="scratch directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--timeout", type=float, default=1800.0, help="pytest time limit (s)")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    tree = Path(args.workdir or tempfile.mkdtemp(prefix="passt-py-asan-"))
    tree.mkdir(parents=True, exist_ok=True)
    try:
        so = build(tree)
        print(f"sanitized extension: {so}")
        result = run(tree, rest or list(DEFAULT_SUITES), timeout=args.timeout)
    except SanitizeError as e:
        print(f"sanitize_run: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(tree, ignore_errors=True)
    print(result.output[-20000:])
    if result.reports:
        print("sanitizer reports:\n  " + "\n  ".join(result.reports[:50]), file=sys.stderr)
        return SANITIZER_EXIT
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
