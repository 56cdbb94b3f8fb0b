# SPDX-License-Identifier: MIT
"""Loading the C core: the one place ``passt_py._core`` is imported.

It checks at import that the compiled extension matches the API this Python code was
written for, and gives the binding modules of this package their shared helpers: the
negative-errno-to-exception rule (:func:`check`), iovec arrays over Python buffers and the
16-byte address form of the C records.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Sequence

try:
    from passt_py._core import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "passt_py's C core (passt_py._core) is not built: run 'pip install .' or "
        "'pip install -e .' from the source tree") from exc

API_VERSION = 11

if lib.pc_api_version() != API_VERSION:  # pragma: no cover - stale builds only
    raise ImportError(
        f"passt_py._core is stale: built for C API {lib.pc_api_version()}, "
        f"this passt_py needs {API_VERSION}; rebuild with 'pip install -e .'")


class CoreError(OSError):
    """A C core call failed; ``errno`` holds the cause."""


def check(ret: int, what: str) -> int:
    """Return ``ret`` if non-negative, else raise CoreError naming ``what`` and the errno."""
    if ret < 0:
        code = -ret
        raise CoreError(code, f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
    return ret


BytesLike = bytes | bytearray | memoryview


def _iovec(buffers: Sequence[BytesLike], writable: bool) -> tuple[object, list[object]]:
    """Build a struct iovec array over buffers; the list keeps their cdata views alive."""
    iov = ffi.new("struct iovec[]", max(len(buffers), 1))
    keep = []
    for i, buf in enumerate(buffers):
        view = ffi.from_buffer("char[]", buf, require_writable=writable)
        keep.append(view)
        iov[i].iov_base = view
        iov[i].iov_len = len(view)
    return iov, keep


def _ip16(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte form used by the C records and templates: IPv4 as ::ffff:a.b.c.d."""
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _ip_from16(raw: bytes, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inverse of _ip16 for a record of IP version ``version``."""
    return ipaddress.IPv4Address(raw[12:]) if version == 4 else ipaddress.IPv6Address(raw)
