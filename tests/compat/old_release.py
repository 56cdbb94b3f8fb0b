# SPDX-License-Identifier: MIT
"""The v0.1.0 release, rebuilt from git history, for the stream compatibility tests.

``ensure_built()`` extracts the release's tree (``git archive`` of the full commit hash: CI
clones may not carry tags) into ``tests/.cache/compat-v0.1.0/tree`` and builds its C extension
there (``setup.py build_ext --inplace`` with this interpreter, the way the cffi module is
declared in that tree's setup.py). A file lock serialises concurrent callers; a finished build
is marked by a stamp file holding the commit and reused. Nothing in the repository's own
``.git`` is changed (no worktree is registered).

``run_old(argv, stdin=...)`` runs ``python argv...`` with that tree first on ``sys.path`` and
returns the completed process; the scripts it runs (make_streams.py, old_load.py) put
themselves into a private network namespace (compat_netns.py).

Regenerating the golden streams by hand (see make_streams.py)::

    .venv/bin/python tests/compat/old_release.py make-streams

Missing git or a missing commit (a shallow clone) is an OldReleaseError with the remedy named:
the tests fail on it, they do not skip.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Iterator, Sequence

RELEASE = "v0.1.0"
COMMIT = "af42e14f76148707ed8c0b91d91af5a6a18b01f0"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / "tests" / ".cache" / f"compat-{RELEASE}"
STAMP = "BUILT"
#: Written into the extracted tree: make_streams.py checks it names the release's commit.
COMMIT_FILE = "RELEASE_COMMIT"
BUILD_TIMEOUT = 900


class OldReleaseError(RuntimeError):
    """The old release cannot be had here (no git, commit absent, build failed)."""


def _git(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess:
    git = shutil.which("git")
    if git is None:
        raise OldReleaseError(f"git is not installed: the {RELEASE} compatibility tests rebuild "
                              "that release from the repository's history")
    return subprocess.run([git, "-C", str(REPO), *args], stdout=stdout,
                          stderr=subprocess.PIPE, timeout=120)


def check_history() -> None:
    """Raise OldReleaseError unless the release commit is in this clone."""
    proc = _git("cat-file", "-e", f"{COMMIT}^{{commit}}")
    if proc.returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.decode().strip()
        raise OldReleaseError(
            f"commit {COMMIT} ({RELEASE}) is not in this clone"
            + (" (it is a shallow clone: fetch the full history, e.g. `git fetch --unshallow`, "
               "or actions/checkout with fetch-depth: 0)" if shallow == "true" else
               " (fetch the full history of the repository)")
            + f"; git said: {proc.stderr.decode().strip()}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _extract(dest: Path) -> None:
    """The release's files into ``dest`` (git archive: exactly the commit's tree)."""
    proc = _git("archive", "--format=tar", COMMIT)
    if proc.returncode != 0:
        raise OldReleaseError(f"git archive {COMMIT} failed: {proc.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    (dest / COMMIT_FILE).write_text(COMMIT + "\n")


def _build(tree: Path) -> None:
    """Build passt_py/_core in place (the sanitizer build switch is cleared)."""
    env = {k: v for k, v in os.environ.items() if k != "PASST_PY_SANITIZE"}
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=tree, env=env, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        raise OldReleaseError(f"building {RELEASE}'s C extension failed:\n"
                              f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    shutil.rmtree(tree / "build", ignore_errors=True)
    where = run_python(tree, ["-c", "import passt_py, passt_py._core; print(passt_py.__file__)"])
    if where.returncode != 0 or not where.stdout.strip().startswith(str(tree)):
        raise OldReleaseError(f"the built {RELEASE} tree does not import from {tree}: "
                              f"{where.stdout.strip()} {where.stderr[-2000:]}")


def ensure_built(cache: Path = CACHE) -> Path:
    """The release's tree with its extension built; built once, then reused (file lock)."""
    tree = cache / "tree"
    stamp = cache / STAMP
    with _locked(cache.parent / f"{cache.name}.lock"):
        if stamp.is_file() and stamp.read_text().split()[:1] == [COMMIT] and \
                any((tree / "passt_py").glob("_core*.so")):
            return tree
        check_history()
        shutil.rmtree(cache, ignore_errors=True)     # a build that was interrupted
        try:
            tree.mkdir(parents=True)
            t0 = time.monotonic()
            _extract(tree)
            _build(tree)
            stamp.write_text(f"{COMMIT} built in {time.monotonic() - t0:.1f} s\n")
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)
            raise
    return tree


def run_python(tree: Path, argv: Sequence[str], stdin: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python argv`` with ``tree`` first on sys.path (binary stdin, text output).

    A script's own directory still comes before it (python puts it first): the scripts here
    live in tests/compat, which holds no passt_py.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env.pop("PASST_PY_SANITIZE", None)
    # cwd: the tree itself, never the repository (`python -c` puts the cwd first on sys.path).
    proc = subprocess.run([sys.executable, *argv], env=env, input=stdin, capture_output=True,
                          timeout=timeout, cwd=tree)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


def run_old(argv: Sequence[str], stdin: bytes | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python argv`` under the release (built first if need be)."""
    return run_python(ensure_built(), argv, stdin, timeout)


def main(argv: Sequence[str]) -> int:
    """``build``: build (or reuse) and print the tree; ``make-streams [DIR]``: regenerate."""
    if not argv or argv[0] not in ("build", "make-streams"):
        print(__doc__)
        return 2
    tree = ensure_built()
    if argv[0] == "build":
        print(tree)
        return 0
    out = argv[1] if len(argv) > 1 else str(HERE / "streams")
    proc = run_old([str(HERE / "make_streams.py"), out], timeout=600)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
