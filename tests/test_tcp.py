# SPDX-License-Identifier: MIT
"""TCP translation at the handler level: a scripted guest endpoint against real host sockets."""
from __future__ import annotations

import array
import hashlib
import ipaddress
import os
import resource
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from l4_helpers import GUEST4, GW4, checksums_ok
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether
from tcp_peer import FAMILY, GuestPeer, TcpEnv

from passt_py import core
from passt_py.config.portspec import Forward
from passt_py.flow import FlowType
from passt_py.tcp import open as tcp_open
from passt_py.tcp.handler import WS_OURS, Phase, TcpState
from passt_py.tcp.seg import ACK, FIN, PSH, RST, SYN, parse_tcp, seq_add, seq_diff
from tests.conftest import hypothesis_budget

VERSIONS = [4, 6]


@pytest.fixture()
def env():
    e = TcpEnv()
    yield e
    e.close()


def _accept(env: TcpEnv, lst: socket.socket, timeout: float = 3.0) -> socket.socket:
    return env.accept(lst, timeout)


def _outbound(env: TcpEnv, version: int, gport: int = 40000, **kw) -> tuple[GuestPeer, socket.socket]:
    return env.guest_connection(version, gport, **kw)


def _recv_all(env: TcpEnv, sock: socket.socket, size: int, timeout: float = 20.0) -> bytes:
    buf = bytearray()

    def more() -> bool:
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                return len(buf) >= size
            if not chunk:
                return True
            buf.extend(chunk)
    env.pump(more, timeout)
    return bytes(buf)


def _send_all(env: TcpEnv, sock: socket.socket, data: bytes, until=None, timeout: float = 20.0) -> None:
    view = memoryview(data)
    pos = [0]

    def more() -> bool:
        while pos[0] < len(data):
            try:
                pos[0] += sock.send(view[pos[0]:pos[0] + (1 << 20)])
            except BlockingIOError:
                break
        return pos[0] >= len(data) and (until is None or until())
    assert env.pump(more, timeout), f"sent {pos[0]} of {len(data)}"


@pytest.mark.parametrize("version", VERSIONS)
def test_handshake_guest_to_host_loopback(env: TcpEnv, version: int) -> None:
    """A guest SYN to the gateway connects to loopback; SYN-ACK carries MSS and window scale."""
    peer, host = _outbound(env, version, mss=1400)
    synack = [r for r in peer.log if r.seg.flags & SYN][0]
    assert synack.seg.flags == SYN | ACK and synack.seg.ack == seq_add(peer.isn, 1)
    assert synack.seg.ws == WS_OURS
    assert synack.seg.mss == env.view.mtu - (40 if version == 4 else 60)
    assert synack.src == FAMILY[version][3] and synack.dst == FAMILY[version][2]
    assert checksums_ok_tcp(synack.frame)
    assert host.getpeername()[0] == FAMILY[version][1]
    flow = next(iter(env.flows))
    assert flow.type == FlowType.TCP
    assert env.tcp.export(flow).phase == Phase.ESTABLISHED


def checksums_ok_tcp(frame: bytes) -> bool:
    """scapy recomputes the TCP and IP checksums and gets ours."""
    pkt = Ether(frame)
    ours = pkt[TCP].chksum
    del pkt[TCP].chksum
    ip_ok = checksums_ok(frame) if pkt.type == 0x0800 else True   # IPv6 has no header sum
    return Ether(bytes(pkt))[TCP].chksum == ours and ip_ok


def test_connect_refused_answers_rst(env: TcpEnv) -> None:
    """A refused host connect becomes an RST to the guest, and the flow goes away."""
    lst = env.listener(4)
    port = lst.getsockname()[1]
    lst.close()
    env.socks.remove(lst)
    peer = GuestPeer(env, 4, 40001, GW4, port)
    peer.syn()
    assert env.pump(lambda: peer.rst_rcvd)
    rst = peer.log[-1].seg
    assert rst.flags & RST and rst.flags & ACK and rst.ack == seq_add(peer.isn, 1)
    assert env.pump(lambda: len(env.flows) == 0)


def test_unreachable_destination_answers_rst(env: TcpEnv) -> None:
    """A SYN to an address with no host mapping (loopback itself) is answered with RST."""
    peer = GuestPeer(env, 4, 40002, ipaddress.ip_address("127.0.0.1"), 80)
    peer.syn()
    assert env.pump(lambda: peer.rst_rcvd, 1.0)
    assert len(env.flows) == 0


def test_connect_timeout_answers_rst() -> None:
    """A host connect that never completes is reset after the connect timeout."""
    env = TcpEnv(connect_timeout=0.3)
    try:
        # A full backlog of a never-accepting listener keeps further SYNs unanswered.
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        env.socks.append(lst)
        port = lst.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        env.socks += fillers
        peer = GuestPeer(env, 4, 40003, GW4, port)
        peer.syn()
        t0 = time.monotonic()
        assert env.pump(lambda: peer.rst_rcvd or peer.established, 5.0)
        if peer.established:
            pytest.skip("the kernel completed the connect despite the full backlog")
        assert time.monotonic() - t0 >= 0.25
    finally:
        env.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_bulk_guest_to_host_sha256(env: TcpEnv, version: int) -> None:
    """8 MB from the guest reach the host socket intact (SHA-256), in order."""
    peer, host = _outbound(env, version, mss=16384)
    data = os.urandom(8 << 20)
    peer.send_stream(data)
    got = bytearray()

    def done() -> bool:
        while True:
            try:
                chunk = host.recv(1 << 20)
            except BlockingIOError:
                break
            got.extend(chunk)
        return len(got) >= len(data)
    assert env.pump(done, 30), f"got {len(got)} of {len(data)}"
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("version", VERSIONS)
def test_bulk_host_to_guest_sha256(env: TcpEnv, version: int) -> None:
    """8 MB from the host reach the guest intact, in MSS-sized checksummed segments."""
    peer, host = _outbound(env, version, mss=1460)
    data = os.urandom(8 << 20)
    _send_all(env, host, data, until=lambda: len(peer.data) >= len(data), timeout=30)
    assert hashlib.sha256(peer.data).digest() == hashlib.sha256(data).digest()
    sizes = {len(r.seg.payload) for r in peer.log if r.seg.payload}
    assert max(sizes) == 1460
    assert all(checksums_ok_tcp(r.frame) for r in peer.log[-5:])


@pytest.mark.parametrize("version", VERSIONS)
def test_half_close_guest_first(env: TcpEnv, version: int) -> None:
    """Guest FIN shuts the host socket for writing; the host still sends; then both close."""
    peer, host = _outbound(env, version)
    peer.send_stream(b"request")
    assert _recv_all(env, host, 7, 3) == b"request"
    peer.fin()
    assert env.pump(lambda: _eof(host), 3), "host did not see the guest's FIN"
    host.sendall(b"late answer")
    assert env.pump(lambda: peer.data == b"late answer")
    host.close()
    env.socks.remove(host)
    assert env.pump(lambda: peer.fin_rcvd)
    assert env.pump(lambda: len(env.flows) == 0)


@pytest.mark.parametrize("version", VERSIONS)
def test_half_close_host_first(env: TcpEnv, version: int) -> None:
    """Host shutdown(SHUT_WR) gives the guest a FIN after the data; the guest still sends."""
    peer, host = _outbound(env, version)
    host.sendall(b"banner")
    host.shutdown(socket.SHUT_WR)
    assert env.pump(lambda: peer.fin_rcvd)
    assert peer.data == b"banner"
    fin = [r for r in peer.log if r.seg.flags & FIN][0]
    assert fin.seg.seq == seq_add(peer.log[0].seg.seq, 1 + 6)
    peer.send_stream(b"still talking")
    assert _recv_all(env, host, 13, 3) == b"still talking"
    peer.fin()
    assert env.pump(lambda: len(env.flows) == 0)
    assert _eof(host)


def _eof(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False


@pytest.mark.parametrize("version", VERSIONS)
def test_rst_from_guest_resets_host(env: TcpEnv, version: int) -> None:
    """A guest RST resets the host connection (ECONNRESET there) and removes the flow."""
    peer, host = _outbound(env, version)
    peer.rst()
    assert env.pump(lambda: len(env.flows) == 0)
    with pytest.raises(ConnectionResetError):
        host.setblocking(True)
        host.settimeout(2)
        host.recv(10)


@pytest.mark.parametrize("version", VERSIONS)
def test_rst_from_host_resets_guest(env: TcpEnv, version: int) -> None:
    """A host RST (SO_LINGER 0 close) becomes an RST to the guest."""
    peer, host = _outbound(env, version)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    host.close()
    env.socks.remove(host)
    assert env.pump(lambda: peer.rst_rcvd)
    assert env.pump(lambda: len(env.flows) == 0)


def test_out_of_window_rst_ignored(env: TcpEnv) -> None:
    """An RST far outside the window does not kill the connection."""
    peer, host = _outbound(env, 4)
    peer.raw(RST, seq=seq_add(peer.snd_nxt, 1 << 30))
    env.pump(lambda: False, 0.1)
    assert len(env.flows) == 1
    peer.send_stream(b"alive")
    assert _recv_all(env, host, 5, 3) == b"alive"


def test_zero_window_then_reopen(env: TcpEnv) -> None:
    """With the guest's window closed nothing is sent; probes come; reopening resumes."""
    peer, host = _outbound(env, 4)
    peer.auto_ack = False
    peer.wnd_bytes = 0
    peer.ack()
    host.sendall(b"x" * 5000)
    env.pump(lambda: False, 0.6)
    assert not peer.data
    assert len(env.flows) == 1
    peer.wnd_bytes = 65535
    peer.auto_ack = True
    peer.ack()
    assert env.pump(lambda: len(peer.data) == 5000)


def test_zero_window_probes_sent(env: TcpEnv) -> None:
    """While the guest's window stays closed, the handler probes it (and does not give up)."""
    peer, host = _outbound(env, 4)
    peer.wnd_bytes = 0
    peer.ack()
    host.sendall(b"y" * 100)
    before = len(peer.log)
    env.pump(lambda: False, 1.5)
    probes = [r for r in peer.log[before:] if not r.seg.payload and not r.seg.flags & (SYN | FIN | RST)]
    assert probes, "no zero-window probe"
    assert len(env.flows) == 1 and not peer.data
    peer.wnd_bytes = 65535
    peer.ack()
    assert env.pump(lambda: len(peer.data) == 100)


def test_guest_window_limits_what_is_sent(env: TcpEnv) -> None:
    """Never more than the guest's window is in flight."""
    peer, host = _outbound(env, 4, ws=None, wnd=3000)
    peer.auto_ack = False
    host.sendall(b"z" * 100000)
    env.pump(lambda: False, 0.3)
    assert len(peer.data) == 3000


def test_our_window_follows_the_host_peer(env: TcpEnv) -> None:
    """When the host does not read, our advertised window closes; reading reopens it."""
    peer, host = _outbound(env, 4, mss=60000)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    peer.send_stream(os.urandom(8 << 20))
    env.pump(lambda: False, 1.0)
    wnds = [r.seg.wnd << WS_OURS for r in peer.log if r.seg.flags & ACK and not r.seg.flags & SYN]
    assert min(wnds) < max(wnds) // 10, "window never closed"
    assert len(peer.data) == 0 and seq_diff(peer.snd_una, peer.stream_base) < 8 << 20
    got = _recv_all(env, host, 8 << 20, 30)
    assert len(got) == 8 << 20


def test_retransmission_after_dropped_segments(env: TcpEnv) -> None:
    """Segments lost on the way to the guest are sent again after the RTO."""
    peer, host = _outbound(env, 4)
    lost = {"n": 0}

    def drop(rec) -> bool:
        if rec.seg.payload and lost["n"] < 3:
            lost["n"] += 1
            return True
        return False
    peer.drop = drop
    data = os.urandom(20000)
    host.sendall(data)
    assert env.pump(lambda: bytes(peer.data) == data, 5)
    assert env.tcp.retransmits >= 1


def test_fast_retransmit_on_three_dup_acks(env: TcpEnv) -> None:
    """Three duplicate ACKs make the handler resend at once, well before the RTO."""
    e = TcpEnv(rto=5.0)
    try:
        peer, host = _outbound(e, 4)
        first = {"done": False}

        def drop(rec) -> bool:
            if rec.seg.payload and not first["done"]:
                first["done"] = True
                return True
            return False
        peer.drop = drop
        data = os.urandom(1460 * 10)
        host.sendall(data)
        t0 = time.monotonic()
        assert e.pump(lambda: bytes(peer.data) == data, 3)
        assert time.monotonic() - t0 < 2.0
        assert e.tcp.retransmits >= 1
    finally:
        e.close()


def test_retry_limit_resets_both_sides() -> None:
    """A guest that never acknowledges gets RST after the retry limit; so does the host."""
    env = TcpEnv(rto=0.02, max_retries=3)
    try:
        peer, host = _outbound(env, 4)
        peer.auto_ack = False
        host.sendall(b"anyone?")
        assert env.pump(lambda: peer.rst_rcvd, 5)
        assert env.pump(lambda: len(env.flows) == 0)
        host.settimeout(2)
        with pytest.raises(ConnectionResetError):
            host.setblocking(True)
            host.recv(10)
    finally:
        env.close()


def test_keepalive_answered(env: TcpEnv) -> None:
    """A guest keepalive (seq one below) is answered with an ACK of the current state."""
    peer, host = _outbound(env, 4)
    before = len(peer.log)
    peer.raw(ACK, seq=seq_add(peer.snd_nxt, -1))
    assert env.pump(lambda: len(peer.log) > before, 1)
    assert peer.log[-1].seg.ack == peer.snd_nxt


def test_unknown_flow_gets_rst(env: TcpEnv) -> None:
    """A non-SYN segment for no connection is answered with RST; an RST is not."""
    peer = GuestPeer(env, 4, 40100, GW4, 9)
    peer.raw(ACK, seq=1000, ack=5000, payload=b"hello")
    env.dispatch()
    assert peer.rst_rcvd and peer.log[-1].seg.seq == 5000
    n = len(peer.log)
    peer.raw(RST, seq=1)
    env.dispatch()
    assert len(peer.log) == n


def test_hostile_segments_dropped_cleanly(env: TcpEnv) -> None:
    """Bad offsets, SYN+FIN, null flags and truncated headers are dropped; the flow lives."""
    peer, host = _outbound(env, 4)
    tpl = peer.tpl
    good = bytearray(tpl.control(b"\0" * 6, b"\0" * 6, peer.snd_nxt, peer.rcv_nxt, ACK, 100,
                                 b"", b"data"))
    l4 = 14 + 20
    cases = []
    for off in (0, 4, 15):
        f = bytearray(good)
        f[l4 + 12] = off << 4
        cases.append(f)
    for flags in (SYN | FIN, SYN | RST, 0, FIN, PSH):
        f = bytearray(good)
        f[l4 + 13] = flags
        cases.append(f)
    trunc = bytearray(good[:l4 + 10])
    trunc[16:18] = (30).to_bytes(2, "big")
    cases.append(trunc)
    bad_opt = bytearray(tpl.control(b"\0" * 6, b"\0" * 6, peer.snd_nxt, peer.rcv_nxt, ACK, 100,
                                    b"\x02\x09\x00\x00", b""))
    cases.append(bad_opt)
    for frame in cases:
        try:
            env.inject(bytes(frame))
        except AssertionError:
            pass    # not even IP: the demux would have dropped it
    # A SYN on the established tuple: challenge ACK, not a new connection.
    peer.raw(SYN, seq=12345, ack=0)
    # Data acknowledging bytes never sent: dropped.
    peer.raw(ACK, ack=seq_add(peer.rcv_nxt, 1 << 20), payload=b"bogus")
    env.pump(lambda: False, 0.1)
    assert len(env.flows) == 1
    assert not _recv_all(env, host, 1, 0.2)
    peer.send_stream(b"fine")
    assert _recv_all(env, host, 4, 3) == b"fine"


def test_out_of_order_data_not_delivered(env: TcpEnv) -> None:
    """Data after a gap is not written to the host; a duplicate ACK names the gap."""
    peer, host = _outbound(env, 4)
    peer.raw(ACK, seq=seq_add(peer.snd_nxt, 10), payload=b"later")
    env.pump(lambda: False, 0.1)
    assert peer.log[-1].seg.ack == peer.snd_nxt
    assert not _recv_all(env, host, 1, 0.2)
    peer.send_stream(b"0123456789later")
    assert _recv_all(env, host, 15, 3) == b"0123456789later"


@pytest.mark.parametrize("version", VERSIONS)
def test_inbound_forward_handshake_and_data(env: TcpEnv, version: int) -> None:
    """-t: a host connection becomes a SYN to the guest from the mapped address; data flows."""
    port = _free_tcp_port(version)
    env.accepting[8080] = {}
    bound = env.tcp.start_forwards([Forward(None, None, port, port, 8080)])
    assert bound == 2
    family, lo, guest, gw = FAMILY[version]
    client = socket.socket(family, socket.SOCK_STREAM)
    client.setblocking(False)
    env.socks.append(client)
    client.connect_ex((lo, port))
    assert env.pump(lambda: any(p.gport == 8080 for p in env.peers.values()))
    peer = next(p for p in env.peers.values() if p.gport == 8080)
    syn = peer.log[0]
    assert syn.seg.flags == SYN and syn.src == gw and syn.dst == guest
    assert syn.seg.sport == client.getsockname()[1] and syn.seg.ws == WS_OURS
    peer.accept_syn()
    env.pump(lambda: False, 0.05)
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert env.pump(lambda: peer.data == b"GET / HTTP/1.0\r\n\r\n")
    body = os.urandom(3 << 20)
    peer.send_stream(body)
    got = bytearray()

    def transfer() -> bool:
        if peer.stream_done() and not peer.fin_sent_once:
            peer.fin()
            peer.fin_sent_once = True
        while True:
            try:
                chunk = client.recv(1 << 20)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            got.extend(chunk)
    peer.fin_sent_once = False
    assert env.pump(transfer, 20)
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    client.close()
    env.socks.remove(client)
    assert env.pump(lambda: peer.fin_rcvd and len(env.flows) == 0)


def test_inbound_guest_refuses(env: TcpEnv) -> None:
    """The guest's RST to our SYN resets the host client."""
    port = _free_tcp_port(4)
    env.accepting[8081] = {}
    env.tcp.start_forwards([Forward(None, None, port, port, 8081)])
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    env.socks.append(client)
    assert env.pump(lambda: any(p.gport == 8081 for p in env.peers.values()))
    peer = next(p for p in env.peers.values() if p.gport == 8081)
    syn = peer.log[0].seg
    peer.raw(RST | ACK, seq=0, ack=seq_add(syn.seq, 1))
    assert env.pump(lambda: len(env.flows) == 0)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        client.recv(10)


def test_many_concurrent_connections() -> None:
    """1,000 guest connections at once, each echoing its own payload back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        if hard != resource.RLIM_INFINITY and hard < 2200:
            pytest.skip(f"needs 2200 file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2200, hard))
    env = TcpEnv(max_flows=2048)
    try:
        lst = env.listener(4)
        port = lst.getsockname()[1]
        peers = [GuestPeer(env, 4, 20000 + i, GW4, port) for i in range(1000)]
        for p in peers:
            p.syn()
        hosts: list[socket.socket] = []

        def accept_all() -> bool:
            while True:
                try:
                    s, _ = lst.accept()
                except BlockingIOError:
                    break
                s.setblocking(False)
                hosts.append(s)
            return len(hosts) == 1000 and all(p.established for p in peers)
        assert env.pump(accept_all, 30), f"{len(hosts)} accepted"
        env.socks += hosts
        for p in peers:
            p.send_stream(b"ping %d" % p.gport)
        got = {}

        def echo() -> bool:
            for s in hosts:
                if s in got:
                    continue
                try:
                    msg = s.recv(100)
                except BlockingIOError:
                    continue
                got[s] = msg
                s.sendall(msg.replace(b"ping", b"pong"))
            return len(got) == 1000 and all(p.data for p in peers)
        assert env.pump(echo, 30)
        assert all(bytes(p.data) == b"pong %d" % p.gport for p in peers)
        assert len(env.flows) == 1000
    finally:
        env.close()


def test_idle_connection_reset() -> None:
    """After the idle timeout both sides are reset."""
    env = TcpEnv(idle_timeout=0.2)
    try:
        peer, host = _outbound(env, 4)
        assert env.pump(lambda: peer.rst_rcvd, 3)
        assert len(env.flows) == 0
    finally:
        env.close()


def test_export_adopt_roundtrip(env: TcpEnv) -> None:
    """export() gives the state record; adopt() rebuilds a working flow around a socket."""
    peer, host = _outbound(env, 4)
    host.sendall(b"before")
    assert env.pump(lambda: peer.data == b"before")
    flow = next(iter(env.flows))
    st = env.tcp.export(flow)
    assert isinstance(st, TcpState) and st.seq_to_guest == st.seq_acked_by_guest
    assert st.seq_from_guest == peer.snd_nxt and st.ws_from_guest == 7
    # Detach the socket from the old flow as migration would (it keeps the connection).
    c = flow.data
    env.loop.remove(c.fd)
    sock = c.sock.dup()
    c.st.phase = Phase.CLOSED
    env.flows.close(flow)
    c.sock.close()
    sock.setsockopt(socket.SOL_SOCKET, 32, 64 << 20)    # SO_SNDBUFFORCE, as a restore may
    flow2 = env.tcp.opener.adopt(st, sock)
    assert flow2.type == FlowType.TCP
    # The adopted socket is back at the regular size (the next migration must fit it), and
    # knows its peer is on this host.
    big = env.tcp.opener.big_snd
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == \
        (2 * big if big else 128 << 20), big
    assert flow2.data.local is True
    host.sendall(b"after")
    assert env.pump(lambda: peer.data == b"beforeafter")
    peer.send_stream(b"back")
    assert _recv_all(env, host, 4, 3) == b"back"


def _free_tcp_port(version: int) -> int:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_parse_tcp_options() -> None:
    """MSS, window scale (capped at 14), SACK-permitted and timestamps are recognised."""
    from passt_py.tcp.seg import FrameTemplate
    tpl = FrameTemplate(GUEST4, GW4, 1, 2)
    opts = b"\x02\x04\x05\xb4\x01\x03\x03\x0f\x04\x02\x08\x0a" + b"\0" * 8
    frame = tpl.control(b"\0" * 6, b"\0" * 6, 1, 0, SYN, 100, opts)
    seg = parse_tcp(memoryview(frame)[34:])
    assert seg is not None and (seg.mss, seg.ws, seg.sack_ok, seg.ts) == (1460, 14, True, True)


@hypothesis_budget(2, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=80), st.integers(0, 0xFF), st.integers(0, 15))
def test_random_segments_never_raise_nor_hurt_other_flows(env: TcpEnv, junk: bytes, flags: int,
                                                          doff: int) -> None:
    """Arbitrary TCP headers on a live tuple and on an unknown one: nothing raises, and a
    bystander connection keeps working."""
    if not env.peers:
        env.victim = _outbound(env, 4, gport=41000)[0]
        env.bystander = _outbound(env, 4, gport=41002)
    victim = env.victim
    peer, host = env.bystander
    for tpl in (victim.tpl, GuestPeer(env, 4, 41001, GW4, 9).tpl):
        frame = bytearray(tpl.control(b"\0" * 6, b"\0" * 6, 0, 0, 0, 0, b"", junk))
        frame[34 + 12] = doff << 4
        frame[34 + 13] = flags
        frame[34 + 4:34 + 12] = (junk + bytes(8))[:8]
        env.inject(bytes(frame))
    env.pump(lambda: True, 0.01)
    peer.send_stream(b"ok")
    assert _recv_all(env, host, 2, 2) == b"ok"
    assert not peer.rst_rcvd


def test_acks_of_one_batch_free_the_socket_once(env: TcpEnv) -> None:
    """Three ACKs from the guest in one batch drop the acknowledged bytes with one receive
    (one window update to the host peer, not three), at the end of the batch; the stream
    goes on intact and a migration-style export finds the queue at the guest's last ACK."""
    import fcntl
    import termios
    peer, host = _outbound(env, 4)
    peer.auto_ack = False
    data = os.urandom(30000)
    host.sendall(data)
    assert env.pump(lambda: len(peer.data) == len(data))
    c = next(iter(env.flows)).data
    queued = array.array("i", [0])
    fcntl.ioctl(c.fd, termios.FIONREAD, queued)
    assert queued[0] == len(data)            # nothing acknowledged yet
    calls: list[int] = []
    real = env.tcp._discard
    env.tcp._discard = lambda conn, n: (calls.append(n), real(conn, n))[1]
    base = seq_add(peer.rcv_nxt, -len(data))
    for part in (10000, 20000, 30000):        # one batch: handled back to back, no loop turn
        peer.raw(ACK, ack=seq_add(base, part))
    assert calls == []
    env.loop.run_once(0)                      # the end of the batch
    assert calls == [30000]
    fcntl.ioctl(c.fd, termios.FIONREAD, queued)
    assert queued[0] == 0
    more = os.urandom(5000)
    host.sendall(more)
    peer.raw(ACK)
    assert env.pump(lambda: len(peer.data) == len(data) + len(more))
    peer.auto_ack = True
    peer.ack()
    assert bytes(peer.data) == data + more
    st = env.tcp.export(next(iter(env.flows)))    # settles what is still due
    fcntl.ioctl(c.fd, termios.FIONREAD, queued)
    assert queued[0] == 0 and st.seq_acked_by_guest == st.seq_to_guest


def _our_windows(peer: GuestPeer, since: int = 0) -> list[int]:
    return [r.seg.wnd << WS_OURS for r in peer.log[since:]
            if r.seg.flags & ACK and not r.seg.flags & SYN]


def test_window_to_a_local_peer_is_its_receive_window(env: TcpEnv) -> None:
    """A host peer on this host (loopback) reads as fast as it can: the window we offer the
    guest is the peer's receive window, not what our send buffer holds (a small send buffer
    would cap the guest's flight at a buffer per round trip)."""
    peer, host = _outbound(env, 4, mss=1460)
    c = next(iter(env.flows)).data
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # the kernel doubles it
    sndbuf = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    peer.send_stream(os.urandom(64 << 10))
    got = _recv_all(env, host, 64 << 10)
    assert len(got) == 64 << 10
    before = len(peer.log)
    peer.raw(ACK, seq=seq_add(peer.snd_nxt, -1))      # a keepalive: answered with our window
    assert env.pump(lambda: len(_our_windows(peer, before)) > 0, 2)
    wnd = _our_windows(peer, before)[-1]
    assert c.local is True
    assert wnd > 4 * sndbuf, (wnd, sndbuf)


def _send_mss(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


@pytest.mark.parametrize("version", [4, 6])
def test_loopback_peer_gets_loopback_segments(env: TcpEnv, version: int) -> None:
    """The guest's MSS is not forced on a connection to a peer on this host: there is no path
    to fit, and 1460-byte loopback segments cost the kernel about twice the CPU per byte. Both
    ends of the host connection send segments far larger than the guest's; the bytes still
    arrive intact."""
    peer, host = _outbound(env, version, mss=1400)
    c = next(iter(env.flows)).data
    assert _send_mss(c.sock) > 16000 and _send_mss(host) > 16000, (
        _send_mss(c.sock), _send_mss(host))
    data = os.urandom(200_000)
    peer.send_stream(data)
    assert hashlib.sha256(_recv_all(env, host, len(data))).digest() == \
        hashlib.sha256(data).digest()


def test_remote_peer_sees_the_guests_mss(env: TcpEnv, monkeypatch) -> None:
    """A peer elsewhere sees the segment size the guest asked for, as if the guest were
    talking to it: the host socket announces and uses the guest's MSS. (Loopback is all the
    test has: the destination is taken for a remote one.)"""
    monkeypatch.setattr(tcp_open, "is_loopback", lambda addr: False)
    peer, host = _outbound(env, 4, mss=1400)
    c = next(iter(env.flows)).data
    assert _send_mss(c.sock) <= 1400 and _send_mss(host) <= 1400, (
        _send_mss(c.sock), _send_mss(host))


def test_window_to_a_remote_peer_is_bounded_by_the_send_buffer(env: TcpEnv) -> None:
    """A peer elsewhere drains our send buffer only at the network's pace: the window also
    stays within the buffer's free space (what the buffer-bound rule allows)."""
    peer, host = _outbound(env, 4, mss=1460)
    c = next(iter(env.flows)).data
    c.local = False                   # as for a peer elsewhere: loopback is all the test has
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sndbuf = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    before = len(peer.log)
    peer.raw(ACK, seq=seq_add(peer.snd_nxt, -1))
    assert env.pump(lambda: len(_our_windows(peer, before)) > 0, 2)
    assert 0 < _our_windows(peer, before)[-1] <= core.tcp_sndbuf_limit(sndbuf)


def test_gaps_in_one_batch_get_three_duplicate_acks(env: TcpEnv) -> None:
    """Segments behind a gap, many in one TX batch (a whole flight behind one loss), get
    three duplicate ACKs (enough for a fast retransmit), not one each; the next batch gets
    its own three; the stream recovers once the gap is filled."""
    peer, host = _outbound(env, 4)
    peer.auto_ack = False
    env.pump(lambda: False, 0.05)
    start = peer.snd_nxt
    for batch in range(2):
        before = len(peer.log)
        for k in range(10):                             # one batch: no loop turn between
            peer.raw(ACK, seq=seq_add(start, 100 + 1000 * (10 * batch + k)), payload=b"g" * 10)
        env.dispatch()
        dups = [r for r in peer.log[before:] if not r.seg.payload]
        assert len(dups) == 3 and all(r.seg.ack == start for r in dups), dups
        env.loop.run_once(0)                            # the end of the batch
        env.dispatch()
        assert len([r for r in peer.log[before:] if not r.seg.payload]) == 3
    assert not _recv_all(env, host, 1, 0.2)
    peer.send_stream(b"in order")
    assert _recv_all(env, host, 8, 3) == b"in order"


def test_old_duplicates_in_one_batch_get_one_ack(env: TcpEnv) -> None:
    """Data we already have (a sender going back after a stall) is answered with one ACK at
    the end of the batch, not one per segment: duplicate ACKs for each would tell a sender
    that counts them that more was lost."""
    peer, host = _outbound(env, 4)
    data = os.urandom(8000)
    peer.send_stream(data)
    assert _recv_all(env, host, len(data)) == data
    env.pump(lambda: False, 0.05)
    before = len(peer.log)
    for k in range(8):                                  # the same stream again, one batch
        peer.raw(ACK, seq=seq_add(peer.stream_base, 1000 * k), payload=data[1000 * k:1000 * (k + 1)])
    env.dispatch()
    assert len(peer.log) == before                      # nothing until the batch ends
    env.loop.run_once(0)
    env.dispatch()
    acks = peer.log[before:]
    assert len(acks) == 1 and acks[0].seg.ack == peer.snd_nxt and not acks[0].seg.payload
    assert not _recv_all(env, host, 1, 0.2)             # nothing written twice
