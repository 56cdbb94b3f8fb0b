# SPDX-License-Identifier: MIT
"""A private, empty network namespace for the calling thread, for fuzzing that opens sockets.

Guest frames decide where the back-end sends UDP datagrams and pings; a fuzzer must not be able
to reach anything but this machine's loopback. :func:`private_netns` moves the calling thread
(only: network namespaces are per task) into a fresh namespace holding just ``lo`` (brought up),
allows ping sockets there, and moves it back on exit. Sockets opened inside stay in that
namespace; close them before leaving. Needs CAP_SYS_ADMIN (root, or a user namespace of ours).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsUnavailable(Exception):
    """No new network namespace can be made here (not privileged)."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def only_loopback() -> bool:
    """True when the calling thread's namespace has no interface but ``lo``."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def available() -> bool:
    """Whether :func:`private_netns` can work (tried, then undone)."""
    try:
        with private_netns():
            return True
    except (NetnsUnavailable, OSError):
        return False


@contextmanager
def private_netns() -> Iterator[None]:
    """Run the body in a new network namespace with only ``lo`` (up) and ping sockets allowed."""
    old = os.open(f"/proc/self/task/{threading_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsUnavailable(f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            _lo_up()
            try:
                with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
                    f.write("0 2147483647")
            except OSError:
                pass  # ICMP handlers then find no ping socket: still a valid target
            if not only_loopback():
                raise NetnsUnavailable("the new namespace is not empty")
            yield
        finally:
            _check(_libc.setns(old, CLONE_NEWNET), "setns back")
    finally:
        os.close(old)


def threading_native_id() -> int:
    """The calling thread's kernel task id."""
    import threading
    return threading.get_native_id()
