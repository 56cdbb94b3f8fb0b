"""The binding layer: the only module that touches cffi's ``ffi`` and ``lib``.

It checks at import that the compiled extension matches the API this Python code was
written for, and turns the C core's negative-errno returns into Python exceptions.
"""
from __future__ import annotations

import errno
import os

try:
    from passt_py._core import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "passt_py's C core (passt_py._core) is not built: run 'pip install .' or "
        "'pip install -e .' from the source tree") from exc

API_VERSION = 1

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


# ---- checksum ----
# SECTION checksum

# ---- iov ----
# SECTION iov

# ---- guest memory and virtqueues ----
# SECTION virtq
