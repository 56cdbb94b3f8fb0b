# SPDX-License-Identifier: MIT
"""A private, throw-away network namespace for the stream compatibility tests (root only).

Streams hold loopback addresses and ports. Building sources and rebuilding flows inside a
namespace of their own means: every saved port is free on load, ping sockets can be allowed
(``ping_group_range`` is per namespace; the caller's is never touched), and whatever a restored
TCP socket sends meets nothing outside. The namespace disappears with its last socket.

- :func:`enter_new_netns` moves the calling thread (a script's only thread) for good;
- :func:`private_netns` moves the calling thread in and back out (in-process tests).
- :func:`silent_peer` is a listening socket that drops every segment: put on the address and
  port of a restored connection's vanished peer, it keeps the kernel from answering that
  connection's window probe or retransmissions with an RST (the socket stays ESTABLISHED).

This module imports nothing of passt_py: scripts running under the old release use it too.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from typing import Iterator

CLONE_NEWNET = 0x40000000
PING_GROUP_RANGE = "0 2147483647"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SO_ATTACH_FILTER = 26

_libc = ctypes.CDLL(None, use_errno=True)
# BPF "ret #0": drop everything (struct sock_filter; struct sock_fprog points at it).
_DROP_ALL = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))
_DROP_PROG = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(_DROP_ALL))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _set_up() -> None:
    """Loopback up and ping sockets for everyone, in the namespace just entered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write(PING_GROUP_RANGE)


def enter_new_netns() -> None:
    """Move the calling thread into a new network namespace, loopback up, pings allowed."""
    before = _netns_inode()
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) (needs root)")
    if _netns_inode() == before:                 # never touch the caller's sysctls
        raise OSError(errno.EPERM, "unshare(CLONE_NEWNET) left the namespace unchanged")
    _set_up()


@contextlib.contextmanager
def private_netns() -> Iterator[None]:
    """The calling thread in a new network namespace for the ``with`` body, then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_new_netns()
        try:
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back to the original namespace")
    finally:
        os.close(home)


def silent_peer(addr: str, port: int) -> socket.socket:
    """A listener on ``addr``/``port`` that drops every segment before TCP sees it."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_PROG)
        s.bind((addr, port))
        s.listen(1)
    except BaseException:
        s.close()
        raise
    return s
