# SPDX-License-Identifier: MIT
"""What TCP repair needs from the C core (csrc/sock_filter.c).

A socket frozen for migration must drop every segment that arrives while it is in repair
mode; a classic filter may be refused to an unprivileged process, so an eBPF program is
loaded while privileges last and kept as a descriptor anyone holding it may attach.
"""
from __future__ import annotations

from passt_py.core._lib import lib


def drop_all_filter() -> int | None:
    """Load the drop-everything eBPF socket filter: its program fd (close-on-exec, the
    caller's to close), or None where this process may not load it (no root, no CAP_BPF)."""
    fd = lib.pc_drop_all_filter()
    return fd if fd >= 0 else None
