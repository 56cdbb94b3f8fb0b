# SPDX-License-Identifier: MIT
"""The binding layer's shape: passt_py/core/ is the only code touching cffi's ``ffi``/``lib``,
and the package re-exports every public name of its modules as ``core.X``."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from passt_py import core
from passt_py.core import (checksum, classifier, fastpath, guest_mem, iov, repair, tcp_path,
                           udp_path, virtq)

PKG = Path(__file__).resolve().parent.parent / "passt_py"
MODULES = (checksum, classifier, fastpath, guest_mem, iov, repair, tcp_path, udp_path, virtq)


def _c_touches(path: Path) -> list[str]:
    """Where a module outside the binding imports the extension or reaches for ffi/lib."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith("passt_py._core") or node.module == "passt_py.core._lib"
                or any(a.name in ("ffi", "lib") for a in node.names)):
            found.append(f"{path}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import) and any(a.name.startswith("passt_py._core")
                                                  for a in node.names):
            found.append(f"{path}:{node.lineno}: import passt_py._core")
        elif isinstance(node, ast.Attribute) and node.attr in ("ffi", "lib") and \
                isinstance(node.value, ast.Name) and node.value.id == "core":
            found.append(f"{path}:{node.lineno}: core.{node.attr}")
    return found


def test_only_the_binding_touches_the_extension():
    """No module of passt_py outside passt_py/core/ imports _core or uses core.ffi/core.lib."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        if (PKG / "core") in path.parents:
            continue
        bad += _c_touches(path)
    assert bad == []


def test_checker_sees_a_use_of_core_lib(tmp_path):
    """The scan is alive: core.lib and an import of the extension are both reported."""
    src = tmp_path / "m.py"
    src.write_text("from passt_py import core\nfrom passt_py._core import lib\n"
                   "fd = core.lib.pc_drop_all_filter()\n")
    assert len(_c_touches(src)) == 2


def test_package_reexports_every_public_name():
    """Each binding module's public names are in core.__all__ and are the same objects."""
    for mod in MODULES:
        for name, value in vars(mod).items():
            if name.startswith("_") or getattr(value, "__module__", mod.__name__) != mod.__name__:
                continue
            if isinstance(value, type(os)) or name == "annotations":
                continue
            assert name in core.__all__, f"{mod.__name__}.{name}"
            assert getattr(core, name) is value, f"{mod.__name__}.{name}"
    assert all(hasattr(core, name) for name in core.__all__)


def test_names_other_code_uses_stay_where_they_were():
    """core.X for the names the rest of the tree and other branches use keeps working."""
    for name in ("CoreError", "check", "API_VERSION", "ffi", "lib", "GuestMemory", "Virtqueue",
                 "TxBatch", "classify", "PacketRecords", "TcpTemplate", "TcpPath", "UdpPath",
                 "UdpTemplates", "UdpRuns", "FastPath", "csum_partial", "writev_all",
                 "readv_all", "tcp_send_window", "FAST_EV_BACK", "PKT_CODES"):
        assert hasattr(core, name), name
    assert callable(core.classify)          # the function, not the classifier module


def test_drop_all_filter_gives_an_fd_or_none():
    """The repair helper returns a usable program fd where bpf() is allowed, else None."""
    fd = core.drop_all_filter()
    if fd is None:
        pytest.skip("this process may not load an eBPF socket filter")
    try:
        assert fd >= 0 and os.fstat(fd) is not None
    finally:
        os.close(fd)
