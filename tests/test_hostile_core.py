# SPDX-License-Identifier: MIT
"""Fuzz targets (tests/fuzz/targets.py) within the CI budget: no crash, no disagreement.

Each target gets an equal share of PASST_PY_FUZZ_SECONDS (default 20 s in total). With atheris
installed (and outside a sanitized run) the target runs coverage-guided in a child process;
otherwise, and under ASan/UBSan (tests/sanitize_run.py), the mutation driver runs it in this
process so the instrumented extension sees every input. Long runs: tests/fuzz/README.md.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import qemu_unavailable
from tests.fuzz import driver, run as fuzz_run, targets

ROOT = Path(__file__).resolve().parent.parent
SANITIZED = os.environ.get("PASST_PY_SANITIZED") == "1"
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def share() -> float:
    """This target's slice of the total budget."""
    return driver.total_budget() / len(targets.TARGETS)


def netns_ok() -> bool:
    from tests.fuzz import netns_guard
    return netns_guard.available()


def test_run_script_lists_the_targets():
    """tests/fuzz/run.py knows every target (it cannot import them before instrumenting)."""
    assert set(fuzz_run.TARGET_NAMES) == set(targets.TARGETS)
    assert set(fuzz_run.NEEDS_NETNS) == targets.NEEDS_NETNS


def test_seed_corpora_exist_for_every_target():
    """Each target has committed seeds to start from."""
    for name in targets.TARGETS:
        assert driver.load_corpus(name), f"no seeds in tests/fuzz/corpus/{name}"


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_finds_nothing(name, tmp_path):
    """Within its budget the target finds no crash, uncaught error or disagreement."""
    if name in targets.NEEDS_NETNS and not netns_ok():
        qemu_unavailable("needs a private network namespace (root or a user namespace)")
    seconds = share()
    if HAVE_ATHERIS and not SANITIZED:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.run", name, "--engine", "atheris",
             "--seconds", str(max(1, int(seconds))), "--seed", "4242",
             "--crash-dir", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=seconds * 3 + 120)
        out = proc.stdout + proc.stderr
        done = re.search(r"Done (\d+) runs in (\d+) second", out)
        assert proc.returncode == 0, out[-6000:]
        assert done and int(done.group(1)) > 0, out[-3000:]
        print(f"atheris {name}: {done.group(1)} runs in {done.group(2)} s")
        return
    if name in targets.NEEDS_NETNS:
        from tests.fuzz import netns_guard
        with netns_guard.private_netns():
            try:
                res = driver.run(name, targets.TARGETS[name], seconds, seed=4242,
                                 crash_dir=tmp_path)
            finally:
                for attr in ("_frame_rig", "_migrate_rig"):
                    if getattr(targets, attr) is not None:
                        getattr(targets, attr).close()
                        setattr(targets, attr, None)
    else:
        res = driver.run(name, targets.TARGETS[name], seconds, seed=4242, crash_dir=tmp_path)
    print(f"driver {name}: {res.iterations} runs in {res.seconds:.1f} s")
    assert res.finding is None, f"{res.finding}\ninput: {res.crash_input!r:.400}"
    assert res.iterations > 0
