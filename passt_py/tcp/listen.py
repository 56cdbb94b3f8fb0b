# SPDX-License-Identifier: MIT
"""The -t listening sockets: host ports forwarded to the guest.

Theory of operation: one listening socket per forwarded port and address family (IPv6 ones
IPV6_V6ONLY, optionally bound to an address or interface, with --freebind to an address
the host does not have yet); each accepted connection becomes
an inbound flow through the opener (passt_py.tcp.open), up to ACCEPT_BATCH per wake-up.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from passt_py.config.log import trace
from passt_py.config.portspec import Forward, PortForwards
from passt_py.link import fwd, hostsock
from passt_py.loop import IN
from passt_py.tcp.sockets import sockaddr
from passt_py.tcp.state import IPAddr

if TYPE_CHECKING:
    from passt_py.tcp.handler import TcpHandler

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64
LISTEN_BACKLOG = 128


@dataclass
class Listener:
    """One -t listening socket: host ``port`` forwarded to guest ``target_port``."""

    sock: socket.socket
    version: int
    addr: IPAddr
    port: int
    target_port: int


class TcpListeners:
    """The open -t listening sockets."""

    def __init__(self, handler: TcpHandler) -> None:
        self._h = handler
        self._listeners: list[Listener] = []

    def start(self, rules: PortForwards | Iterable[Forward]) -> int:
        """Open the -t listening sockets; returns how many were bound (failures logged)."""
        return fwd.open_listeners(self._h.view, rules, self._listen, "TCP")

    def _listen(self, rule: Forward, version: int, port: int) -> None:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        addr = rule.bind_addr if rule.bind_addr is not None else fwd.unspecified(version)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if rule.ifname is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, rule.ifname.encode())
            if self._h.view.freebind:
                hostsock.set_freebind(sock, version)
            sock.bind(sockaddr(addr, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        lst = Listener(sock, version, addr, port, rule.target(port))
        self._listeners.append(lst)
        self._h.loop.add(sock.fileno(), IN, lambda _m, l=lst: self._on_listener(l))

    def stop(self) -> None:
        """Close every listening socket (connections already accepted stay)."""
        listeners, self._listeners = self._listeners, []
        for lst in listeners:
            self._h.loop.remove(lst.sock.fileno())
            lst.sock.close()

    def count(self) -> int:
        """How many -t listening sockets are open."""
        return len(self._listeners)

    def _on_listener(self, lst: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                trace(log, "TCP forward port %d: accept failed: %s", lst.port, e)
                return
            self._h.opener.inbound(lst, sock, peer)
