# SPDX-License-Identifier: MIT
"""Collect bench_*.py files when pytest is pointed at bench/ (tests/ stays the default path)."""
from __future__ import annotations

import pathlib

import pytest


def pytest_collect_file(file_path: pathlib.Path, parent: pytest.Collector) -> pytest.Module | None:
    """Treat bench_*.py as test modules; pytest's python_files only matches test_*.py."""
    if parent.session.isinitpath(file_path):
        return None   # named on the command line: pytest collects it itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
