# SPDX-License-Identifier: MIT
"""Resumable readv/writev loops for state transfer (csrc/iov.c).

A transfer is resumable: on EAGAIN these raise BlockingIOError whose characters_written is
the byte offset reached; call again with offset=that value when the fd is ready::

    try:
        writev_all(fd, bufs, off)
    except BlockingIOError as e:
        off = e.characters_written   # wait for EPOLLOUT, then retry from off
"""
from __future__ import annotations

import errno
from collections.abc import Sequence

from passt_py.core._lib import BytesLike, _iovec, check, ffi, lib


def _xfer(fn: object, what: str, fd: int, buffers: Sequence[BytesLike], offset: int,
          writable: bool) -> tuple[int, int]:
    """Run one C transfer loop; return (C return code, byte offset reached)."""
    iov, _keep = _iovec(buffers, writable=writable)
    done = ffi.new("size_t *")
    ret = fn(fd, iov, len(buffers), offset, done)
    if ret == -errno.EAGAIN:
        raise BlockingIOError(errno.EAGAIN, f"{what}: would block", done[0])
    check(ret, what)
    return ret, done[0]


def writev_all(fd: int, buffers: Sequence[BytesLike], offset: int = 0) -> int:
    """Write the concatenation of buffers from byte offset onwards; return the total length.

    Retries EINTR and partial writes. Raises BlockingIOError (characters_written = offset
    reached) when a non-blocking fd is full, CoreError on other failures.
    """
    return _xfer(lib.pc_writev_all, "writev_all", fd, buffers, offset, False)[1]


def readv_all(fd: int, buffers: Sequence[BytesLike], offset: int = 0) -> int:
    """Fill writable buffers, in order, from byte offset onwards; return the offset reached.

    The result is the total length of buffers unless end of file came first: a shorter result
    means EOF. Retries EINTR and partial reads. Raises BlockingIOError (characters_written =
    offset reached) when a non-blocking fd is empty, CoreError on other failures.
    """
    return _xfer(lib.pc_readv_all, "readv_all", fd, buffers, offset, True)[1]
