# SPDX-License-Identifier: MIT
"""Packaging: the wheel builds, installs and runs in a clean venv; a stale C core fails loudly."""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from passt_py.core import API_VERSION

ROOT = Path(__file__).resolve().parent.parent


def test_stale_extension_is_refused_with_clear_message(monkeypatch):
    """An extension built from another C API version makes the import fail, naming the fix."""
    fake = types.ModuleType("passt_py._core")
    fake.ffi = object()
    fake.lib = types.SimpleNamespace(pc_api_version=lambda: 999)
    monkeypatch.setitem(sys.modules, "passt_py._core", fake)
    # The binding is a package: its submodules (passt_py.core._lib loads the extension) must
    # be imported afresh too, or the cached ones would skip the check.
    for name in [m for m in sys.modules if m == "passt_py.core" or m.startswith("passt_py.core.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match="stale.*rebuild"):
        import passt_py.core  # noqa: F401
    assert "passt_py.core" not in sys.modules
    monkeypatch.delitem(sys.modules, "passt_py.core", raising=False)


@pytest.mark.timeout(600)
def test_wheel_installs_and_runs_in_clean_venv(tmp_path):
    """`python -m build --wheel` makes a wheel that installs in a fresh venv and runs."""
    pytest.importorskip("build")
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=540)
    wheels = list(out.glob("passt_py-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheels[0])], check=True,
                   timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    check = subprocess.run([str(py), "-c", "import passt_py.core as c; print(c.lib.pc_api_version())"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert check.stdout.strip() == str(API_VERSION)
    caps = subprocess.run([str(venv / "bin" / "passt-py"), "--print-capabilities"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert caps.returncode == 0 and '"type": "net"' in caps.stdout
