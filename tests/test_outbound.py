# SPDX-License-Identifier: MIT
"""-o/--outbound, --outbound-if4/6 and --freebind, seen from the host's network.

Each test builds a throw-away pair of namespaces (tests/netns.py): "host" with veth0
(10.200.0.2/24, fd00:200::2/64) and the peer namespace behind it holding 10.200.0.1 and
fd00:200::1. The handlers run with their sockets in "host"; a server (or a raw socket, for
ping) in the peer namespace sees the source address of the guest's flows. A second address (.3 / ::3) on veth0 is the -o
address; a second veth pair (veth2, 10.201.0.2 <-> 10.201.0.1) is the --outbound-if4 device,
reached only through a default route of higher metric, so the plain routing never picks it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import subprocess
from typing import Iterator

import netns
import pytest
import tcp_peer
from l4_helpers import (GUEST4, GUEST6, Sink, echo_frame, free_port, guest_udp, make_guest,
                        make_view, parsed, pump)
from tcp_peer import GuestPeer, TcpEnv

from passt_py.config.portspec import Forward
from passt_py.flow import FlowTable
from passt_py.link.netview import NetView
from passt_py.loop import EventLoop
from passt_py.udp.handler import UdpHandler
from passt_py.udp.icmp import IcmpHandler

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and iproute2")

A = ipaddress.ip_address
PEER = {4: A("10.200.0.1"), 6: A("fd00:200::1")}       # in the peer namespace
HOST = {4: A("10.200.0.2"), 6: A("fd00:200::2")}       # veth0's first address
OUTBOUND = {4: A("10.200.0.3"), 6: A("fd00:200::3")}   # veth0's second one: the -o address
SIDE4 = A("10.201.0.2")                                # veth2, the --outbound-if4 device
ABSENT = {4: A("10.200.0.77"), 6: A("fd00:200::77")}   # on no interface at all


def _ip(*args: str) -> None:
    """One ``ip`` command, failing the test with its stderr."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr.strip()}"


@pytest.fixture()
def spaces() -> Iterator[tuple[str, str]]:
    """(host namespace, peer namespace) with the extra addresses and the side link."""
    with netns.netns() as ns:
        gw = ns + "-gw"
        _ip("-n", ns, "addr", "add", "10.200.0.3/24", "dev", "veth0")
        # Deprecated, so the kernel's own source selection never picks it: only -o does.
        _ip("-n", ns, "addr", "add", "fd00:200::3/64", "dev", "veth0", "nodad",
            "preferred_lft", "0")
        _ip("-n", ns, "link", "add", "veth2", "type", "veth", "peer", "name", "veth3",
            "netns", gw)
        _ip("-n", ns, "addr", "add", "10.201.0.2/24", "dev", "veth2")
        _ip("-n", gw, "addr", "add", "10.201.0.1/24", "dev", "veth3")
        _ip("-n", ns, "link", "set", "veth2", "up")
        _ip("-n", gw, "link", "set", "veth3", "up")
        _ip("-n", ns, "route", "add", "default", "via", "10.201.0.1", "dev", "veth2",
            "metric", "200")
        yield ns, gw


def _view(version: int, **fam: object) -> NetView:
    """The tests' guest view with ``fam`` set on the IPv``version`` part."""
    view = make_view()
    if version == 4:
        return dataclasses.replace(view, ip4=dataclasses.replace(view.ip4, **fam))
    return dataclasses.replace(view, ip6=dataclasses.replace(view.ip6, **fam))


def _family(version: int) -> socket.AddressFamily:
    return socket.AF_INET if version == 4 else socket.AF_INET6


@contextlib.contextmanager
def _tcp_env(view: NetView, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpEnv]:
    """A TcpEnv whose handler sees ``view``."""
    monkeypatch.setattr(tcp_peer, "make_view", lambda: view)
    env = TcpEnv()
    try:
        yield env
    finally:
        env.close()


def _tcp_source(spaces: tuple[str, str], version: int, view: NetView,
                monkeypatch: pytest.MonkeyPatch) -> ipaddress._BaseAddress:
    """The address the peer namespace's server sees the guest's connection come from."""
    ns, gw = spaces
    with netns.in_netns(gw):
        server = socket.socket(_family(version), socket.SOCK_STREAM)
    with server:
        server.bind((str(PEER[version]), 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        with netns.in_netns(ns), _tcp_env(view, monkeypatch) as env:
            peer = GuestPeer(env, version, 40123, PEER[version], port)
            assert peer.connect(), "no SYN-ACK: the connection did not go through"
            box: list[socket.socket] = []

            def accepted() -> bool:
                with contextlib.suppress(BlockingIOError):
                    box.append(server.accept()[0])
                return bool(box)
            assert env.pump(accepted, 5), "the peer namespace never saw the connection"
            with box[0] as conn:
                return A(conn.getpeername()[0])


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_outbound_address_is_the_source_the_peer_sees(spaces, version, monkeypatch) -> None:
    """With -o, the guest's TCP connection leaves from that address (else the route's)."""
    plain = _tcp_source(spaces, version, make_view(), monkeypatch)
    bound = _tcp_source(spaces, version, _view(version, outbound=OUTBOUND[version]),
                        monkeypatch)
    assert plain == HOST[version]
    assert bound == OUTBOUND[version]


def test_tcp_outbound_if4_leaves_through_that_device(spaces, monkeypatch) -> None:
    """With --outbound-if4 veth2 the connection takes veth2's route and its address."""
    assert _tcp_source(spaces, 4, _view(4, outbound_if="veth2"), monkeypatch) == SIDE4


def test_outbound_of_the_other_family_changes_nothing(spaces, monkeypatch) -> None:
    """An IPv6 -o and --outbound-if6 leave IPv4 flows alone (per family, as passt)."""
    view = _view(6, outbound=OUTBOUND[6], outbound_if="veth2")
    assert _tcp_source(spaces, 4, view, monkeypatch) == HOST[4]


def _udp_source(spaces: tuple[str, str], version: int, view: NetView) -> ipaddress._BaseAddress:
    """The address the peer namespace's UDP server sees the guest's datagram come from."""
    ns, gw = spaces
    with netns.in_netns(gw):
        server = socket.socket(_family(version), socket.SOCK_DGRAM)
    with server:
        server.bind((str(PEER[version]), 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        with netns.in_netns(ns):
            loop = EventLoop()
            flows = FlowTable(loop, max_flows=64)
            udp = UdpHandler(loop, view, make_guest(), flows, Sink())
            try:
                guest = GUEST4 if version == 4 else GUEST6
                udp.from_guest(*guest_udp(guest, PEER[version], free_port(version), port,
                                          b"who am I"))
                pump(loop, lambda: False, 0.1)
                data, src = server.recvfrom(100)
            finally:
                udp.close_all()
                loop.close()
        assert data == b"who am I"
        return A(src[0])


@pytest.mark.parametrize("version", [4, 6])
def test_udp_outbound_address_is_the_source_the_peer_sees(spaces, version) -> None:
    """With -o, the guest's UDP flow leaves from that address (else the route's)."""
    assert _udp_source(spaces, version, make_view()) == HOST[version]
    assert _udp_source(spaces, version, _view(version, outbound=OUTBOUND[version])) \
        == OUTBOUND[version]


def test_udp_outbound_if4_leaves_through_that_device(spaces) -> None:
    """With --outbound-if4 veth2 the datagram takes veth2's route and its address."""
    assert _udp_source(spaces, 4, _view(4, outbound_if="veth2")) == SIDE4


def _ping_source(spaces: tuple[str, str], version: int, view: NetView) -> ipaddress._BaseAddress:
    """The source address of the guest's echo request, as a raw socket in the peer namespace
    sees it."""
    ns, gw = spaces
    subprocess.run(netns.exec_argv(ns, ["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"]),
                   check=True, timeout=10)
    proto = socket.IPPROTO_ICMP if version == 4 else socket.IPPROTO_ICMPV6
    with netns.in_netns(gw):
        raw = socket.socket(_family(version), socket.SOCK_RAW, proto)
    with raw:
        raw.settimeout(5)
        with netns.in_netns(ns):
            loop = EventLoop()
            ping = IcmpHandler(loop, view, make_guest(), FlowTable(loop, max_flows=8), Sink())
            try:
                ping.from_guest(parsed(echo_frame(version, 7, 1, b"source?", dst=PEER[version])))
                while True:
                    data, src = raw.recvfrom(2048)
                    kind = data[20] if version == 4 else data[0]   # IPv4 raw: with its header
                    if kind in (8, 128):                          # the echo request
                        return A(src[0])
            finally:
                ping.close_all()
                loop.close()


@pytest.mark.parametrize("version", [4, 6])
def test_ping_outbound_address_is_the_source_the_peer_sees(spaces, version) -> None:
    """With -o, the guest's echo requests leave from that address too (as in passt)."""
    assert _ping_source(spaces, version, make_view()) == HOST[version]
    assert _ping_source(spaces, version, _view(version, outbound=OUTBOUND[version])) \
        == OUTBOUND[version]


@pytest.mark.parametrize("version", [4, 6])
def test_freebind_binds_a_forward_to_an_absent_address(spaces, version, monkeypatch) -> None:
    """-t ADDR/PORT with ADDR on no interface: refused without --freebind, bound with it,
    and once ADDR appears on the host a client reaches the forward there."""
    ns, _gw = spaces
    port = free_port(version)
    rule = Forward(ABSENT[version], None, port, port, 8080)
    with netns.in_netns(ns):
        with _tcp_env(make_view(), monkeypatch) as env:
            assert env.tcp.start_forwards([rule]) == 0
        view = dataclasses.replace(make_view(), freebind=True)
        with _tcp_env(view, monkeypatch) as env:
            assert env.tcp.start_forwards([rule]) == 1
            plen = "24" if version == 4 else "64"
            _ip("-n", ns, "addr", "add", f"{ABSENT[version]}/{plen}", "dev", "veth0",
                *(["nodad"] if version == 6 else []))
            with socket.create_connection((str(ABSENT[version]), port), timeout=5) as client:
                assert A(client.getpeername()[0]) == ABSENT[version]
                assert env.pump(lambda: env.tcp.listeners == 1 and bool(env.unclaimed), 5), \
                    "the forward did not turn the connection into a SYN for the guest"


@pytest.mark.parametrize("version", [4, 6])
def test_freebind_binds_a_udp_forward_to_an_absent_address(spaces, version) -> None:
    """-u ADDR/PORT with ADDR on no interface: refused without --freebind, bound with it."""
    ns, _gw = spaces
    port = free_port(version)
    rule = Forward(ABSENT[version], None, port, port, 5353)
    with netns.in_netns(ns):
        for freebind, expected in ((False, 0), (True, 1)):
            loop = EventLoop()
            view = dataclasses.replace(make_view(), freebind=freebind)
            udp = UdpHandler(loop, view, make_guest(), FlowTable(loop, max_flows=8), Sink())
            try:
                assert udp.start_forwards([rule]) == expected
            finally:
                udp.stop_forwards()
                loop.close()
