# SPDX-License-Identifier: MIT
"""The C core under AddressSanitizer and UBSan: the core's test suites find no report.

One scratch build per module (tests/sanitize_run.py: a copy of the tree, PASST_PY_SANITIZE=1,
the compiler's runtimes preloaded into a child python). The default run covers the C-core suites
and the hostile-input suites with a short budget (6 s of fuzzing, the ``dev`` Hypothesis
profile of tests/conftest.py: a couple of minutes on two cores); PASST_PY_SANITIZE_LONG=1 gives
them the normal budget instead (20 s, the ``ci`` profile), or set PASST_PY_FUZZ_SECONDS /
PASST_PY_HYPOTHESIS yourself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import sanitize_run

pytestmark = pytest.mark.skipif(os.environ.get("PASST_PY_SANITIZED") == "1",
                                reason="already inside a sanitized run")


@pytest.fixture(scope="module")
def sanitized_tree(tmp_path_factory) -> Path:
    """A scratch tree with the instrumented extension built in it."""
    if shutil.which("gcc") is None or shutil.which("nm") is None:
        pytest.skip("gcc and nm are needed for the sanitized build")
    try:
        sanitize_run.runtime_libs()
    except sanitize_run.SanitizeError as e:
        pytest.skip(str(e))
    tree = tmp_path_factory.mktemp("asan-tree")
    sanitize_run.build(tree)
    return tree


def test_sanitized_build_catches_a_deliberate_overflow(sanitized_tree):
    """The set-up is live: a read past a heap buffer through the C core is reported."""
    env = sanitize_run.sanitizer_env(sanitize_run.runtime_libs(), sanitized_tree)
    code = ("from passt_py._core import ffi, lib\n"
            "buf = ffi.new('char[]', 100)\n"
            "lib.pc_csum_partial(buf, 100 + 64, 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=sanitized_tree, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == sanitize_run.SANITIZER_EXIT, proc.stderr[-3000:]
    assert "heap-buffer-overflow" in proc.stderr


@pytest.mark.timeout(1200)
def test_core_suites_are_clean_under_asan_and_ubsan(sanitized_tree):
    """Checksum, iov, guest memory, virtqueue, front-end and hostile suites: no report."""
    long = os.environ.get("PASST_PY_SANITIZE_LONG") == "1"
    budget = {"PASST_PY_FUZZ_SECONDS": "20" if long else "6",
              "PASST_PY_HYPOTHESIS": "ci" if long else "dev"}
    saved = {k: os.environ.get(k) for k in budget}
    for key, value in budget.items():
        os.environ[key] = saved[key] or value
    try:
        result = sanitize_run.run(sanitized_tree, ["-x", *sanitize_run.DEFAULT_SUITES],
                                  timeout=1100)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not result.reports, "\n".join(result.reports) + "\n" + result.output[-8000:]
    assert result.returncode == 0, result.output[-8000:]
