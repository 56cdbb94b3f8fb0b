# SPDX-License-Identifier: MIT
"""UDP translation: guest flows to host loopback, errors, sizes, expiry, -u forwarding."""
from __future__ import annotations

import hashlib
import ipaddress
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from l4_helpers import (GUEST4, GUEST6, GW4, GW6, Sink, checksums_ok, free_port, guest_udp,
                        make_guest, make_view, pump)
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6
from scapy.layers.l2 import Ether

from passt_py.config.portspec import Forward, parse_port_options
from passt_py.flow import FlowTable, FlowType, Pif
from passt_py.loop import EventLoop
from passt_py.udp.handler import MAX_PAYLOAD4, MAX_PAYLOAD6, UDP_TIMEOUT_BIDIR, UdpHandler
from tests.conftest import hypothesis_budget

A = ipaddress.ip_address
FAMILY = {4: (socket.AF_INET, "127.0.0.1", GUEST4, GW4), 6: (socket.AF_INET6, "::1", GUEST6, GW6)}


class Env:
    """A UdpHandler wired to a real loop and a frame sink."""

    def __init__(self, max_flows: int = 1024, view=None, **kwargs: float) -> None:
        self.loop = EventLoop()
        self.view = view or make_view()
        self.guest = make_guest()
        self.flows = FlowTable(self.loop, max_flows=max_flows, sweep_interval=0.02)
        self.sink = Sink()
        self.udp = UdpHandler(self.loop, self.view, self.guest, self.flows, self.sink, **kwargs)
        self.socks: list[socket.socket] = []

    def server(self, version: int, port: int = 0) -> socket.socket:
        """A host UDP socket on loopback (closed with the environment)."""
        family, addr, _g, _gw = FAMILY[version]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(3.0)
        sock.bind((addr, port))
        self.socks.append(sock)
        return sock

    def send(self, version: int, sport: int, dport: int, payload: bytes,
             dst: ipaddress._BaseAddress | None = None) -> None:
        """The guest sends one datagram (to the gateway unless ``dst`` is given)."""
        _f, _a, guest, gw = FAMILY[version]
        self.udp.from_guest(*guest_udp(guest, dst or gw, sport, dport, payload))

    def wait_frames(self, n: int = 1) -> list[bytes]:
        assert pump(self.loop, lambda: len(self.sink.frames) >= n), "no frame for the guest"
        return self.sink.frames

    def close(self) -> None:
        self.udp.stop_forwards()
        self.udp.close_all()
        for sock in self.socks:
            sock.close()
        self.loop.close()


@pytest.fixture()
def env():
    e = Env()
    yield e
    e.close()


def _l3(frame: bytes, version: int):
    return Ether(frame)[IP if version == 4 else IPv6]


@pytest.mark.parametrize("version", [4, 6])
def test_guest_to_host_loopback_via_gateway(env: Env, version: int) -> None:
    """The guest's datagram to the gateway reaches 127.0.0.1/::1; the reply comes back mapped."""
    server = env.server(version)
    port = server.getsockname()[1]
    sport = free_port(version)
    env.send(version, sport, port, b"hello host")
    data, peer = server.recvfrom(65535)
    assert data == b"hello host"
    assert peer[1] == sport, "the guest's source port is preserved on the host"
    server.sendto(b"hello guest", peer)
    frame = env.wait_frames()[0]
    eth = Ether(frame)
    assert eth.dst == "52:54:00:12:34:56" and eth.src == "9a:55:9a:55:9a:55"
    l3 = _l3(frame, version)
    _f, _a, guest, gw = FAMILY[version]
    assert A(l3.src) == gw and A(l3.dst) == guest
    assert l3[UDP].sport == port and l3[UDP].dport == sport
    assert bytes(l3[UDP].payload) == b"hello guest"
    assert checksums_ok(frame)
    assert env.udp.frames_built == 1, "no ring path here: Python built the reply's frame"


def test_more_datagrams_reuse_flow(env: Env) -> None:
    """Later datagrams of the same tuple use the same flow and socket."""
    server = env.server(4)
    port = server.getsockname()[1]
    sport = free_port()
    for i in range(5):
        env.send(4, sport, port, b"n%d" % i)
    got = [server.recvfrom(100) for _ in range(5)]
    assert [d for d, _ in got] == [b"n%d" % i for i in range(5)]
    assert len({p for _, p in got}) == 1
    assert len(env.flows) == 1


def test_taken_source_port_falls_back(env: Env) -> None:
    """If the guest's source port is taken on the host, an ephemeral port is used."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("0.0.0.0", 0))
    env.socks.append(blocker)
    taken = blocker.getsockname()[1]
    server = env.server(4)
    env.send(4, taken, server.getsockname()[1], b"x")
    data, peer = server.recvfrom(100)
    assert data == b"x" and peer[1] != taken
    server.sendto(b"y", peer)
    l3 = _l3(env.wait_frames()[0], 4)
    assert l3[UDP].dport == taken, "the guest still sees its own port"


def test_same_port_two_destinations(env: Env) -> None:
    """Two flows from one guest port to two servers both keep the guest's port."""
    s1, s2 = env.server(4), env.server(4)
    sport = free_port()
    env.send(4, sport, s1.getsockname()[1], b"a")
    env.send(4, sport, s2.getsockname()[1], b"b")
    assert s1.recvfrom(10) == (b"a", ("127.0.0.1", sport))
    assert s2.recvfrom(10) == (b"b", ("127.0.0.1", sport))
    s2.sendto(b"from2", ("127.0.0.1", sport))
    s1.sendto(b"from1", ("127.0.0.1", sport))
    frames = env.wait_frames(2)
    by_sport = {_l3(f, 4)[UDP].sport: bytes(_l3(f, 4)[UDP].payload) for f in frames}
    assert by_sport == {s1.getsockname()[1]: b"from1", s2.getsockname()[1]: b"from2"}


@pytest.mark.parametrize("version", [4, 6])
def test_largest_datagrams_both_ways(env: Env, version: int) -> None:
    """64 KiB minus headers passes both ways intact."""
    size = MAX_PAYLOAD4 if version == 4 else MAX_PAYLOAD6
    server = env.server(version)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    up, down = os.urandom(size), os.urandom(size)
    env.send(version, free_port(version), server.getsockname()[1], up)
    data, peer = server.recvfrom(70000)
    assert hashlib.sha256(data).digest() == hashlib.sha256(up).digest()
    server.sendto(down, peer)
    frame = env.wait_frames()[0]
    payload = bytes(_l3(frame, version)[UDP].payload)
    assert hashlib.sha256(payload).digest() == hashlib.sha256(down).digest()
    assert checksums_ok(frame)


def test_expiry_one_way() -> None:
    """A flow with traffic one way only expires after the short timeout; its socket closes."""
    env = Env(timeout=0.1, timeout_bidir=5.0)
    try:
        server = env.server(4)
        env.send(4, free_port(), server.getsockname()[1], b"x")
        flow = next(iter(env.flows))
        fd = flow.data.sock.fileno()
        assert pump(env.loop, lambda: len(env.flows) == 0, timeout=2.0)
        assert not env.loop.watching(fd)
        assert flow.data.sock.fileno() == -1
    finally:
        env.close()


def test_expiry_bidirectional_longer() -> None:
    """Once the host answered, the flow lives for the longer bidirectional timeout."""
    env = Env(timeout=0.1, timeout_bidir=0.6)
    try:
        server = env.server(4)
        env.send(4, free_port(), server.getsockname()[1], b"x")
        _d, peer = server.recvfrom(10)
        server.sendto(b"y", peer)
        env.wait_frames()
        pump(env.loop, lambda: False, timeout=0.3)
        assert len(env.flows) == 1
        assert pump(env.loop, lambda: len(env.flows) == 0, timeout=2.0)
    finally:
        env.close()


@pytest.mark.parametrize("version", [4, 6])
def test_port_unreachable_relayed(env: Env, version: int) -> None:
    """Sending to a closed loopback port gives the guest an ICMP port unreachable."""
    closed_port = free_port(version)
    sport = free_port(version)
    env.send(version, sport, closed_port, b"anyone there?")
    frame = env.wait_frames()[0]
    assert checksums_ok(frame)
    l3 = _l3(frame, version)
    _f, _a, guest, gw = FAMILY[version]
    assert A(l3.src) == gw and A(l3.dst) == guest
    if version == 4:
        assert l3[ICMP].type == 3 and l3[ICMP].code == 3
        quoted, qudp = l3[IPerror], l3[UDPerror]
    else:
        assert l3[ICMPv6DestUnreach].code == 4
        quoted, qudp = l3[IPerror6], l3[UDPerror]
    assert A(quoted.src) == guest and A(quoted.dst) == gw
    assert qudp.sport == sport and qudp.dport == closed_port
    assert bytes(qudp.payload).startswith(b"anyone there?")


def test_error_does_not_lose_next_datagram(env: Env) -> None:
    """After an ICMP error, the flow still sends: the server, once up, gets the next datagram."""
    port = free_port()
    sport = free_port()
    env.send(4, sport, port, b"first")
    env.wait_frames()
    server = env.server(4, port)
    env.send(4, sport, port, b"second")
    assert server.recvfrom(100)[0] == b"second"


@pytest.mark.parametrize("version", [4, 6])
def test_forward_host_to_guest_and_back(env: Env, version: int) -> None:
    """-u: a host datagram to a forwarded port reaches the guest; its reply reaches the host."""
    family, lo, guest, gw = FAMILY[version]
    host_port, guest_port = free_port(version), 5353
    rules = parse_port_options([f"{lo}/{host_port}:{guest_port}" if version == 4
                                else f"[{lo}]/{host_port}:{guest_port}"])
    assert env.udp.start_forwards(rules) == 1
    client = env.server(version)
    cport = client.getsockname()[1]
    client.sendto(b"query", (lo, host_port))
    frame = env.wait_frames()[0]
    assert checksums_ok(frame)
    l3 = _l3(frame, version)
    assert A(l3.src) == gw and A(l3.dst) == guest
    assert l3[UDP].sport == cport and l3[UDP].dport == guest_port
    assert bytes(l3[UDP].payload) == b"query"
    env.send(version, guest_port, cport, b"answer")
    data, peer = client.recvfrom(100)
    assert data == b"answer" and peer[1] == host_port
    flow = next(iter(env.flows))
    assert flow.sides[0].pif == Pif.HOST and flow.timeout == UDP_TIMEOUT_BIDIR  # Env: default


def test_forward_goes_to_observed_guest_address(env: Env) -> None:
    """Forwarded datagrams go to the address the guest actually uses."""
    env.guest.addr4 = A("10.0.2.99")
    host_port = free_port()
    env.udp.start_forwards([Forward(A("127.0.0.1"), None, host_port, host_port, 7000)])
    client = env.server(4)
    client.sendto(b"q", ("127.0.0.1", host_port))
    l3 = _l3(env.wait_frames()[0], 4)
    assert l3.dst == "10.0.2.99" and l3[UDP].dport == 7000


def test_forward_wildcard_all_families(env: Env) -> None:
    """A rule without a bind address listens on every enabled family."""
    port = free_port()
    assert env.udp.start_forwards(parse_port_options([str(port)])) == 2
    assert env.udp.listeners == 2
    env.udp.stop_forwards()
    assert env.udp.listeners == 0


def test_flow_limit_refuses_new_keeps_old() -> None:
    """At the flow limit a new flow gets ICMP admin-prohibited; old flows keep working."""
    env = Env(max_flows=2)
    try:
        servers = [env.server(4) for _ in range(3)]
        sport = free_port()
        for i, s in enumerate(servers[:2]):
            env.send(4, sport, s.getsockname()[1], b"ok%d" % i)
            assert s.recvfrom(10)[0] == b"ok%d" % i
        env.send(4, sport, servers[2].getsockname()[1], b"refused")
        frame = env.wait_frames()[0]
        l3 = _l3(frame, 4)
        assert l3[ICMP].type == 3 and l3[ICMP].code == 13
        assert l3[UDPerror].dport == servers[2].getsockname()[1]
        assert checksums_ok(frame)
        servers[2].settimeout(0.2)
        with pytest.raises(socket.timeout):
            servers[2].recvfrom(10)
        env.send(4, sport, servers[0].getsockname()[1], b"still")
        assert servers[0].recvfrom(10)[0] == b"still"
        assert len(env.flows) == 2
    finally:
        env.close()


def test_close_all_closes_sockets(env: Env) -> None:
    """close_all removes every UDP flow and closes its socket."""
    server = env.server(4)
    env.send(4, free_port(), server.getsockname()[1], b"x")
    env.send(6, free_port(6), env.server(6).getsockname()[1], b"x")
    socks = [f.data.sock for f in env.flows]
    assert env.udp.close_all() == 2
    assert len(env.flows) == 0 and all(s.fileno() == -1 for s in socks)


def test_ignored_and_malformed(env: Env) -> None:
    """Multicast, port 0, disabled UDP and odd tuples are dropped without raising."""
    server = env.server(4)
    port = server.getsockname()[1]
    env.send(4, 1000, port, b"x", dst=A("224.0.0.251"))
    env.send(4, 0, port, b"x")
    env.send(4, 1000, 0, b"x")
    env.send(4, 1000, port, b"x", dst=A("127.0.0.1"))
    env.send(6, 1000, port, b"x", dst=A("ff02::fb"))
    assert len(env.flows) == 0
    env.udp.from_guest(None, None)  # type: ignore[arg-type]
    assert len(env.flows) == 0


def test_udp_disabled() -> None:
    """With UDP disabled in the view nothing is forwarded."""
    env = Env(view=make_view(udp=False))
    try:
        env.send(4, 1000, env.server(4).getsockname()[1], b"x")
        assert len(env.flows) == 0
    finally:
        env.close()


def test_flow_sides_recorded(env: Env) -> None:
    """A guest flow's sides: guest tuple on TAP, translated tuple on HOST."""
    server = env.server(4)
    port = server.getsockname()[1]
    sport = free_port()
    env.send(4, sport, port, b"x")
    flow = env.flows.lookup(FlowType.UDP, next(iter(env.flows)).sides[0])
    assert flow is not None
    tap, host = flow.sides
    assert (tap.pif, tap.eaddr, tap.eport, tap.oaddr, tap.oport) == (Pif.TAP, GUEST4, sport, GW4, port)
    assert (host.pif, host.eaddr, host.eport) == (Pif.HOST, A("127.0.0.1"), port)
    assert host.oport == sport


@hypothesis_budget(0.5)
@given(sport=st.integers(0, 65535), port_zero=st.booleans(), payload=st.binary(max_size=256),
       dst=st.sampled_from([GW4, A("224.0.0.251"), A("255.255.255.255"), A("10.0.2.255"),
                            A("0.0.0.0"), A("127.0.0.1")]))
def test_arbitrary_datagrams_never_raise(sport: int, port_zero: bool, payload: bytes,
                                         dst: ipaddress.IPv4Address) -> None:
    """Any source port and payload (to a closed loopback port, or unroutable) are handled."""
    env = Env()
    try:
        env.send(4, sport, 0 if port_zero else free_port(), payload, dst=dst)
        env.loop.run_once(0)
    finally:
        env.close()
