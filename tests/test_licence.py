# SPDX-License-Identifier: MIT
"""One licence for the whole project: every source file says MIT, as pyproject.toml does.

The C files are checked with the rest of the C house rules (tests/test_c_style.py); this
covers the Python modules, tests, benchmarks and shell scripts git tracks.
"""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPDX = "SPDX-License-Identifier: MIT"
FIRST_LINES = 3             # the tag must be within a file's first lines (after a shebang)


def _tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", *patterns], capture_output=True,
                         text=True, check=True).stdout.split()
    return [f for f in out if (ROOT / f).is_file()]


def test_the_package_metadata_says_mit() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "MIT" in str(meta.get("license", "")) + " ".join(meta.get("classifiers", []))


def test_every_python_and_shell_file_carries_the_mit_tag() -> None:
    files = _tracked("*.py", "*.sh", ".ci/run")
    assert len(files) > 100, "git ls-files found too few files: wrong tree?"
    missing = [f for f in files
               if SPDX not in "\n".join((ROOT / f).read_text().splitlines()[:FIRST_LINES])]
    assert not missing, "no MIT SPDX line near the top of: " + ", ".join(missing)
