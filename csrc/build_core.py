# SPDX-License-Identifier: MIT
"""cffi builder for passt_py._core (API mode, out of line).

The cdef is the part of passt_core.h between the CDEF-BEGIN and CDEF-END markers, so the
header compiled into the extension and the API Python sees cannot drift apart.
Set PASST_PY_SANITIZE=1 to build with AddressSanitizer and UBSan (test mode).
"""
import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "passt_core.h"


def _cdef_text() -> str:
    text = HEADER.read_text()
    start = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[start:end]


# Declarations cffi needs that come from system headers in C.
_SYSTEM_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
"""

ffibuilder = FFI()
ffibuilder.cdef(_SYSTEM_CDEF + _cdef_text())

_cflags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration",
           "-D_GNU_SOURCE", "-fno-strict-aliasing"]
_ldflags: list[str] = []
if os.environ.get("PASST_PY_SANITIZE"):
    _cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    _ldflags += ["-fsanitize=address,undefined"]

ffibuilder.set_source(
    "passt_py._core",
    '#include "passt_core.h"\n',
    sources=sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c")),
    include_dirs=[str(HERE)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
