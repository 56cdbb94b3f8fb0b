# SPDX-License-Identifier: MIT
"""Migration stream format, in-process save/load round trips, and hostile streams.

A *source* context (a flow table with real handlers and sockets on a loop) is saved into a
stream; a separate *target* context loads it; the flows must then carry traffic on the target.
Hostile streams (truncated anywhere, any byte flipped, bad magic/version, huge counts or lengths)
must be refused with a clear MigrationError before anything changes on the target.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
from l4_helpers import (GUEST4, GUEST6, GW4, GW6, Sink, free_port, guest_udp, make_guest, make_view,
                        pump)
from tcp_peer import GuestPeer, TcpEnv

from passt_py.flow import FlowTable, FlowType
from passt_py.link.ethernet import parse_header
from passt_py.link.ip import parse_ip, parse_udp
from passt_py.loop import EventLoop
from passt_py.migrate import repair as tcp_repair
from passt_py.migrate.codec import (FLAG_OPTIONAL, MAGIC, SEC_END, SEC_META, SEC_TCP,
                                    MigrationError, Reader)
from passt_py.migrate.context import MigrationContext
from passt_py.migrate.record import T_INT, T_TRUE, WireField, decode_record, encode_record
from passt_py.migrate.source import Source
from passt_py.migrate.target import load_bytes
from passt_py.migrate.transfer import Transfer
from passt_py.migrate.versions import COMPAT_VERSION, VERSION, choose_version
from passt_py.tcp.handler import Phase
from passt_py.tcp.seg import FIN
from passt_py.udp.handler import UdpHandler

needs_repair = pytest.mark.skipif(not tcp_repair.direct_repair_allowed(),
                                  reason="TCP_REPAIR needs CAP_NET_ADMIN")


# ---- contexts ----

class UdpEnv:
    """A UDP handler on its own loop, with a context for migration."""

    def __init__(self, max_flows: int = 1024) -> None:
        self.loop = EventLoop()
        self.view = make_view()
        self.guest = make_guest()
        self.flows = FlowTable(self.loop, max_flows=max_flows)
        self.sink = Sink()
        self.udp = UdpHandler(self.loop, self.view, self.guest, self.flows, self.sink)
        self.ctx = MigrationContext(loop=self.loop, view=self.view, guest=self.guest,
                                    flows=self.flows, udp=self.udp,
                                    repair=tcp_repair.RepairControl(None, direct=False))

    def close(self) -> None:
        self.udp.stop_forwards()
        self.udp.close_all()
        self.loop.close()


def _ctx_for(env: TcpEnv, migrate_exit: bool = True) -> MigrationContext:
    return MigrationContext(loop=env.loop, view=env.view, guest=env.guest, flows=env.flows,
                            tcp=env.tcp, repair=tcp_repair.RepairControl(),
                            migrate_exit=migrate_exit)


def save(ctx: MigrationContext) -> tuple[bytes, Source]:
    """Run source pre, save and post; return the stream."""
    src = Source(ctx)
    src.pre()
    data = b"".join(src.sections())
    src.post()
    return data, src


def empty_stream(view=None) -> bytes:
    """A valid stream without flows."""
    env = UdpEnv()
    try:
        return save(env.ctx)[0]
    finally:
        env.close()


# ---- format ----

def test_header_and_section_layout_is_big_endian_and_self_describing() -> None:
    """Header magic/version/compat, then id/flags/length sections, then the SHA-256 end."""
    data = empty_stream()
    magic, version, compat = struct.unpack_from("!QII", data)
    assert (magic, version, compat) == (MAGIC, VERSION, COMPAT_VERSION)
    off, ids = 16, []
    while True:
        sid, flags, length = struct.unpack_from("!HHI", data, off)
        ids.append((sid, flags))
        off += 8 + length
        if sid == SEC_END:
            break
    assert off == len(data)
    assert ids == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 0), (0xFFFF, 0)]
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_version_table_lookup_is_bounded() -> None:
    """The newest known version within [compat, version]; nothing outside the table."""
    assert choose_version(1, 1)[0] == 1
    assert choose_version(2, 2)[0] == 2
    assert choose_version(7, 1)[0] == 2                  # newer source, compatible down to 1
    assert choose_version(7, 2)[0] == 2
    assert choose_version(7, 3) is None                  # newer and incompatible
    assert choose_version(0, 0) is None
    assert choose_version(0xFFFFFFFF, 0xFFFFFFFF) is None


@dataclass
class _Rec:
    a: int
    b: bool
    c: bytes
    d: ipaddress.IPv4Address | ipaddress.IPv6Address
    e: Phase
    f: float = 1.5
    g: str | None = None

    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField(1, "a"), WireField(2, "b"), WireField(3, "c"), WireField(4, "d"),
        WireField(5, "e"), WireField(6, "f"), WireField(9, "g"))


@dataclass
class _Renamed:
    """_Rec after renaming two attributes: the schema keeps their ids and version-1 names."""

    alpha: int
    b: bool
    c: bytes
    d: ipaddress.IPv4Address | ipaddress.IPv6Address
    e: Phase
    f: float = 1.5
    gamma: str | None = None

    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField(1, "a", "alpha"), WireField(2, "b"), WireField(3, "c"), WireField(4, "d"),
        WireField(5, "e"), WireField(6, "f"), WireField(9, "g", "gamma"))


def _decode(cls: type, raw: bytes, version: int):
    return decode_record(cls, Reader(raw, "t"), version)


@pytest.mark.parametrize("version", [1, 2])
def test_record_codec_round_trip_and_type_checks(version: int) -> None:
    """Records carry field ids (version 1: names) and types; wrong types, unknown enums and
    missing fields fail."""
    rec = _Rec(-5, True, b"xyz", ipaddress.IPv6Address("::1"), Phase.ESTABLISHED, 2.5, "s")
    raw = encode_record(rec, version)
    assert _decode(_Rec, raw, version) == rec
    key = (lambda f: bytes([f])) if version == 2 else (lambda f: b"\x01" + "-abcdefg"[f].encode())
    bad_enum = encode_record(_Rec(1, False, b"", GUEST4, Phase.CLOSED), version) \
        .replace(bytes([T_INT]) + struct.pack("!q", Phase.CLOSED),
                 bytes([T_INT]) + struct.pack("!q", 99))
    with pytest.raises(MigrationError, match="e:"):
        _decode(_Rec, bad_enum, version)
    wrong_type = raw.replace(key(1) + bytes([T_INT]), key(1) + bytes([T_TRUE]), 1)
    with pytest.raises(MigrationError, match="_Rec.a"):
        _decode(_Rec, wrong_type, version)
    missing = bytes([1]) + raw[1:raw.index(key(2) + bytes([T_TRUE]))]
    with pytest.raises(MigrationError, match="missing"):
        _decode(_Rec, missing, version)
    twice = bytes([raw[0] + 1]) + raw[1:] + raw[1:raw.index(key(2) + bytes([T_TRUE]))]
    with pytest.raises(MigrationError, match="given twice"):
        _decode(_Rec, twice, version)


@pytest.mark.parametrize("version", [1, 2])
def test_renaming_an_attribute_does_not_change_the_wire(version: int) -> None:
    """A record written before a rename reads into the renamed class, and the renamed class
    writes the same bytes (its schema keeps the ids and the version-1 names)."""
    rec = _Rec(7, False, b"q", GUEST4, Phase.ESTABLISHED, 0.5, "x")
    raw = encode_record(rec, version)
    renamed = _decode(_Renamed, raw, version)
    assert (renamed.alpha, renamed.gamma) == (7, "x")
    assert encode_record(renamed, version) == raw


def test_version_2_records_carry_no_python_names() -> None:
    """No attribute name reaches a version-2 record (that is what made renames dangerous)."""
    rec = _Rec(1, True, b"", GUEST4, Phase.ESTABLISHED, 1.0, None)
    raw = encode_record(rec, 2)
    assert raw[0] == 7 and raw[1] == 1 and raw[2] == T_INT
    assert encode_record(rec, 1)[1:3] == b"\x01a"


# ---- round trips ----

def _udp_reply_reaches(env: UdpEnv, server: socket.socket, peer: tuple, payload: bytes) -> bool:
    env.sink.frames.clear()
    server.sendto(payload, peer)

    def got() -> bool:
        for frame in env.sink.frames:
            pkt = parse_ip(frame, parse_header(frame).ethertype)
            if pkt is not None and pkt.proto == 17 and bytes(parse_udp(pkt.l4).payload) == payload:
                return True
        return False
    return pump(env.loop, got)


@pytest.mark.parametrize("version", [4, 6])
def test_udp_flows_move_and_keep_their_host_port(version: int) -> None:
    """A guest UDP flow is re-created on the target bound to the same port: replies arrive."""
    family, loop_addr, gaddr, gw = (socket.AF_INET, "127.0.0.1", GUEST4, GW4) if version == 4 \
        else (socket.AF_INET6, "::1", GUEST6, GW6)
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((loop_addr, 0))
    server.settimeout(3)
    src, dst = UdpEnv(), UdpEnv()
    try:
        gport = free_port(version)
        src.udp.from_guest(*guest_udp(gaddr, gw, gport, server.getsockname()[1], b"hello"))
        data, peer = server.recvfrom(100)
        assert data == b"hello" and peer[1] == gport
        stream, _ = save(src.ctx)
        assert len(src.flows) == 0          # stateless flows leave the source at once
        report = load_bytes(dst.ctx, stream)
        assert report.udp == 1 and report.failed == 0
        flow = next(iter(dst.flows))
        assert flow.type == FlowType.UDP and flow.side(2).oport == gport
        assert _udp_reply_reaches(dst, server, peer, b"after the move")
        dst.udp.from_guest(*guest_udp(gaddr, gw, gport, server.getsockname()[1], b"again"))
        assert server.recvfrom(100)[0] == b"again"
    finally:
        server.close()
        src.close()
        dst.close()


def test_target_table_may_already_hold_flows() -> None:
    """Loading into a table with entries adds to them; ids and lookups stay consistent."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    src, dst = UdpEnv(), UdpEnv()
    try:
        port = server.getsockname()[1]
        for p in (free_port(), free_port()):
            src.udp.from_guest(*guest_udp(GUEST4, GW4, p, port, b"s"))
        dst.udp.from_guest(*guest_udp(GUEST4, GW4, free_port(), port, b"d"))
        assert len(dst.flows) == 1
        stream, _ = save(src.ctx)
        report = load_bytes(dst.ctx, stream)
        assert report.udp == 2 and len(dst.flows) == 3
        assert sorted(f.id for f in dst.flows) == [0, 1, 2]
    finally:
        server.close()
        src.close()
        dst.close()


def test_guest_state_moves() -> None:
    """The guest's observed MAC and addresses arrive on the target."""
    src, dst = UdpEnv(), UdpEnv()
    try:
        src.guest.mac = bytes.fromhex("52540000beef")
        src.guest.addr6_ll = ipaddress.IPv6Address("fe80::5054:ff:fe00:beef")
        src.guest.arp_answered = True
        dst.guest.__init__()
        load_bytes(dst.ctx, save(src.ctx)[0])
        assert dst.guest.mac == src.guest.mac and dst.guest.addr4 == src.guest.addr4
        assert dst.guest.addr6_ll == src.guest.addr6_ll and dst.guest.arp_answered
    finally:
        src.close()
        dst.close()


def test_source_rollback_recreates_udp_flows_and_listeners() -> None:
    """A failed hand-over puts the UDP flows and -u listeners back on the source."""
    from passt_py.config.portspec import parse_port_options
    env = UdpEnv()
    port = free_port()
    rules = parse_port_options([str(port)])
    env.ctx.udp_forwards = rules
    env.udp.start_forwards(rules)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    try:
        gport = free_port()
        env.udp.from_guest(*guest_udp(GUEST4, GW4, gport, server.getsockname()[1], b"x"))
        src = Source(env.ctx)
        src.pre()
        src.sections()
        assert len(env.flows) == 0 and env.udp.listeners == 0
        src.rollback()
        assert len(env.flows) == 1 and env.udp.listeners >= 1
        assert next(iter(env.flows)).side(2).oport == gport
    finally:
        server.close()
        env.close()


def _outbound(env: TcpEnv, version: int, gport: int) -> tuple[GuestPeer, socket.socket, int]:
    """(guest end, host end, the host listener's port)."""
    peer, host = env.guest_connection(version, gport)
    return peer, host, host.getsockname()[1]


def _move_peers(src: TcpEnv, dst: TcpEnv) -> None:
    for key, peer in list(src.peers.items()):
        peer.env = dst
        dst.peers[key] = peer
    src.peers.clear()


def _recv_into(sock: socket.socket, buf: bytearray) -> None:
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            return
        buf += chunk


@needs_repair
@pytest.mark.parametrize("version", [4, 6])
def test_tcp_connection_moves_with_data_in_flight_both_ways(version: int) -> None:
    """Host data not yet acked by the guest and guest data queued for the host both survive,
    and the streams go on seamlessly after the move (SHA-256 both ways)."""
    src, dst = TcpEnv(), TcpEnv()
    try:
        peer, host, _port = _outbound(src, version, 41000)
        to_guest, to_host = os.urandom(3 << 20), os.urandom(2 << 20)
        # Guest -> host: a stream the host does not read yet (queues fill up, the rest waits
        # in the guest, which goes on sending it after the move).
        peer.send_stream(to_host)
        src.pump(lambda: False, 0.5)
        # Host -> guest: data the guest never acknowledges before the move.
        peer.auto_ack = False
        peer.drop = lambda rec: True
        # (As much of 200 KB as the sockets take: how much fits depends on how far the
        # kernel grew the buffers during the other stream; sendall() could hit EAGAIN.)
        sent = [0]
        deadline = time.monotonic() + 2
        while sent[0] < 200000 and time.monotonic() < deadline:
            try:
                sent[0] += host.send(to_guest[sent[0]:200000])
            except BlockingIOError:
                src.pump(lambda: False, 0.01)
        assert sent[0] >= 65536
        src.pump(lambda: False, 0.3)
        stream, _ = save(_ctx_for(src))
        _move_peers(src, dst)
        peer.drop = None
        peer.auto_ack = True
        report = load_bytes(_ctx_for(dst), stream)
        assert report.tcp == 1 and report.failed == 0
        # Everything continues on the target.
        got_guest_at = len(peer.data)
        host_got = bytearray()

        def progress() -> bool:
            _recv_into(host, host_got)
            while sent[0] < len(to_guest):
                try:
                    sent[0] += host.send(to_guest[sent[0]:sent[0] + (1 << 16)])
                except BlockingIOError:
                    break
            return len(peer.data) >= len(to_guest) and len(host_got) >= len(to_host)
        assert dst.pump(progress, 60), (len(peer.data), len(host_got), got_guest_at)
        assert hashlib.sha256(peer.data).digest() == hashlib.sha256(to_guest).digest()
        assert hashlib.sha256(host_got).digest() == hashlib.sha256(to_host).digest()
        host.close()
    finally:
        src.close()
        dst.close()


@needs_repair
def test_tcp_source_rollback_keeps_the_connection() -> None:
    """After pre+save without hand-over, rollback brings the connection back on the source."""
    src = TcpEnv()
    try:
        peer, host, _ = _outbound(src, 4, 41001)
        source = Source(_ctx_for(src, migrate_exit=False))
        source.pre()
        source.sections()
        host.sendall(b"during")            # frozen: not acked, retransmitted after the thaw
        src.pump(lambda: False, 0.2)
        assert peer.data == b""
        source.rollback()
        assert src.pump(lambda: peer.data == b"during", 10), peer.data
        peer.send_stream(b"back")
        got = bytearray()
        assert src.pump(lambda: (_recv_into(host, got), got == b"back")[1], 10)
        host.close()
    finally:
        src.close()


@needs_repair
def test_many_tcp_connections_move() -> None:
    """Fifty connections with queued data move; each keeps its own stream."""
    src, dst = TcpEnv(), TcpEnv()
    try:
        pairs = [_outbound(src, 4, 42000 + i)[:2] for i in range(50)]
        for i, (_peer, host) in enumerate(pairs):
            host.sendall(bytes([i]) * 1000)
        src.pump(lambda: all(len(p.data) == 1000 for p, _ in pairs), 10)
        stream, _ = save(_ctx_for(src))
        _move_peers(src, dst)
        report = load_bytes(_ctx_for(dst), stream)
        assert report.tcp == 50 and report.failed == 0
        for i, (_peer, host) in enumerate(pairs):
            host.sendall(bytes([i]) * 500)
        assert dst.pump(lambda: all(len(p.data) == 1500 for p, _ in pairs), 20)
        assert all(p.data == bytes([i]) * 1500 for i, (p, _) in enumerate(pairs))
        for _peer, host in pairs:
            host.close()
    finally:
        src.close()
        dst.close()


# ---- hostile streams ----

def _tcp_stream() -> bytes:
    """A real stream with a UDP flow and a guest state (and a TCP connection if possible)."""
    env = UdpEnv()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    try:
        env.udp.from_guest(*guest_udp(GUEST4, GW4, free_port(), server.getsockname()[1], b"x"))
        return save(env.ctx)[0]
    finally:
        server.close()
        env.close()


@pytest.fixture(scope="module")
def real_stream() -> bytes:
    return _tcp_stream()


def _section_offsets(data: bytes) -> list[int]:
    offs, off = [], 16
    while off < len(data):
        offs.append(off)
        _sid, _flags, length = struct.unpack_from("!HHI", data, off)
        off += 8 + length
    return offs


def _refused(data: bytes, max_flows: int = 1024) -> MigrationError:
    env = UdpEnv(max_flows)
    before = (len(env.flows), env.guest.mac)
    env.guest.mac = b"\x02" * 6
    try:
        with pytest.raises(MigrationError) as info:
            load_bytes(env.ctx, data)
        assert len(env.flows) == 0 and env.guest.mac == b"\x02" * 6, "target changed"
        assert before[0] == 0
        return info.value
    finally:
        env.close()


def test_truncated_at_every_section_boundary_and_inside(real_stream: bytes) -> None:
    """Cut anywhere (boundaries, inside headers and payloads): 'truncated', nothing applied."""
    cuts = set()
    for off in _section_offsets(real_stream) + [16]:
        cuts.update({off, off + 1, off + 7, off + 8, off + 9})
    cuts.update({0, 1, 8, 15, len(real_stream) - 1, len(real_stream) - 31})
    for cut in sorted(c for c in cuts if c < len(real_stream)):
        err = _refused(real_stream[:cut])
        assert err.code == errno.ENODATA and "truncated" in str(err), (cut, err)


def test_every_flipped_byte_is_refused(real_stream: bytes) -> None:
    """Any single byte changed anywhere is caught (checksum at least), with a clear error."""
    for i in range(len(real_stream)):
        bad = bytearray(real_stream)
        bad[i] ^= 0x5A
        err = _refused(bytes(bad))
        assert err.code and err.stage and str(err), i


def test_bad_magic_and_unknown_versions_are_refused(real_stream: bytes) -> None:
    """Bad magic → EPROTO; a version outside the table → ENOTSUP, said in words."""
    err = _refused(b"\0" * 8 + real_stream[8:])
    assert err.code == errno.EPROTO and "magic" in str(err)
    err = _refused(real_stream[:8] + struct.pack("!II", 9, 9) + real_stream[16:])
    assert err.code == errno.ENOTSUP and "version 9" in str(err)


def _resign(body: bytes) -> bytes:
    """A stream from header+sections with a correct end marker (so only the content lies)."""
    end = struct.pack("!HHI", SEC_END, 0, 32)
    return body + end + hashlib.sha256(body + end).digest()


def _body(data: bytes) -> bytes:
    return data[:-40]


def test_huge_section_length_refused_before_allocation(real_stream: bytes) -> None:
    """A section announcing 4 GiB fails at its header, without waiting for or allocating it."""
    body = _body(real_stream)
    first = _section_offsets(real_stream)[0]
    for sid in (SEC_META, SEC_TCP, 0x1234):
        forged = body[:first] + struct.pack("!HHI", sid, 0, 0xFFFFFFFF)
        err = _refused(forged)
        assert err.code == errno.E2BIG, err


def test_huge_counts_refused(real_stream: bytes) -> None:
    """Counts in the metadata beyond the flow table, or not matching the records, fail."""
    body = bytearray(_body(real_stream))
    meta_off = _section_offsets(real_stream)[0] + 8
    r = Reader(body[meta_off:], "t")
    r.text(), r.text()
    counts_at = meta_off + r.off
    body[counts_at:counts_at + 12] = struct.pack("!III", 0xFFFFFFFF, 0, 0)
    err = _refused(_resign(bytes(body)))
    assert err.code == errno.E2BIG and "flows announced" in str(err)
    body[counts_at:counts_at + 12] = struct.pack("!III", 0, 2, 0)
    err = _refused(_resign(bytes(body)))
    assert "metadata announced" in str(err)


def test_config_mismatch_is_refused_with_both_configs_named(real_stream: bytes) -> None:
    """A target with another MTU refuses, and the message names both sides' settings."""
    env = UdpEnv()
    env.ctx.view = make_view().__class__(**{**make_view().__dict__, "mtu": 1500})
    try:
        with pytest.raises(MigrationError) as info:
            load_bytes(env.ctx, real_stream)
        assert info.value.stage == "meta" and "MTU 65520" in str(info.value) \
            and "MTU 1500" in str(info.value)
    finally:
        env.close()


def test_unknown_optional_section_skipped_unknown_required_refused(real_stream: bytes) -> None:
    """Forward compatibility: flag bit 0 lets an old reader skip what it does not know."""
    body = _body(real_stream)
    extra = struct.pack("!HHI", 0x0777, FLAG_OPTIONAL, 3) + b"new"
    env = UdpEnv()
    try:
        report = load_bytes(env.ctx, _resign(body + extra))
        assert report.udp == 1
    finally:
        env.close()
    err = _refused(_resign(body + struct.pack("!HHI", 0x0777, 0, 3) + b"new"))
    assert err.code == errno.ENOTSUP and "0x0777" in str(err)


def test_missing_repeated_and_reordered_sections_refused(real_stream: bytes) -> None:
    """The version's stage order is enforced."""
    offs = _section_offsets(real_stream)
    head = real_stream[:16]
    secs = [real_stream[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]
    assert "missing" in str(_refused(_resign(head + b"".join(secs[1:]))))
    assert "order" in str(_refused(_resign(head + secs[0] + secs[0] + b"".join(secs[1:]))))
    swapped = str(_refused(_resign(head + secs[1] + secs[0] + b"".join(secs[2:]))))
    assert "meta: required section missing" in swapped


def test_trailing_data_after_end_refused(real_stream: bytes) -> None:
    """Bytes after the end marker are an error, not ignored."""
    err = _refused(real_stream + b"x")
    assert "after the end marker" in str(err)


def test_garbage_streams_never_crash() -> None:
    """Random bytes of many lengths: always a MigrationError, never another exception."""
    rng = __import__("random").Random(6)
    for n in list(range(0, 40)) + [100, 1000, 70000]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if n >= 8 and rng.random() < 0.5:
            data = struct.pack("!QII", MAGIC, 1, 1) + data[16:]
        _refused(data)


@pytest.mark.skipif(not __import__("tests.netns", fromlist=["x"]).available(),
                    reason="needs root and iproute2 (a namespace allowing ping sockets)")
@pytest.mark.parametrize("version", [4, 6])
def test_ping_flows_move_and_keep_the_guest_echo_id(version: int) -> None:
    """A ping flow is re-created on the target; replies still carry the guest's echo id."""
    from l4_helpers import echo_frame, parsed
    from pyroute2.netns import popns, pushns

    from passt_py.udp.icmp import IcmpHandler
    from tests import netns
    with netns.netns() as ns:
        netns.run_in(ns, ["sh", "-c", "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range"])
        pushns(ns)
        envs = []
        try:
            for _ in range(2):
                env = UdpEnv()
                env.icmp = IcmpHandler(env.loop, env.view, env.guest, env.flows, env.sink)
                env.ctx.icmp = env.icmp
                envs.append(env)
            src, dst = envs
            src.icmp.from_guest(parsed(echo_frame(version, 0x4242, 1, b"one")))
            assert pump(src.loop, lambda: len(src.sink.frames) == 1)
            report = load_bytes(dst.ctx, save(src.ctx)[0])
            assert report.ping == 1 and report.failed == 0 and len(src.flows) == 0
            dst.icmp.from_guest(parsed(echo_frame(version, 0x4242, 2, b"two")))
            assert pump(dst.loop, lambda: len(dst.sink.frames) == 1)
            reply = parsed(dst.sink.frames[0])
            kind, _code, _csum, ident, seq = struct.unpack_from("!BBHHH", reply.l4)
            assert kind in (0, 129) and ident == 0x4242 and seq == 2
            assert len(dst.flows) == 1
        finally:
            for env in envs:
                env.icmp.close_all()
                env.close()
            popns()


@needs_repair
def test_lingering_source_stays_silent_and_acks_nothing() -> None:
    """Without --migrate-exit the source keeps the socket frozen in repair mode: the peer
    gets no FIN/RST, and what it sends stays unacknowledged (for the target to receive)."""
    src = TcpEnv()
    try:
        peer, host, _ = _outbound(src, 4, 41002)
        source = Source(_ctx_for(src, migrate_exit=False))
        source.pre()
        source.sections()
        source.post()
        host.send(b"to the target")
        src.pump(lambda: False, 0.3)
        with pytest.raises(BlockingIOError):
            host.recv(10)                               # neither EOF nor reset
        assert tcp_repair._ioctl_int(host, tcp_repair.SIOCOUTQ, "outq") == len(b"to the target")
        assert len(src.flows) == 1 and peer.data == b""
        host.close()
    finally:
        src.close()


@needs_repair
def test_a_connection_that_cannot_be_rebuilt_is_reset_towards_the_guest() -> None:
    """The target cannot rebuild a connection (the lingering source still holds its 4-tuple):
    the guest gets an RST for it at once, the restored one beside it carries on."""
    src, dst = TcpEnv(), TcpEnv()
    try:
        lost_peer, lost_host, _ = _outbound(src, 4, 41050)
        kept_peer, kept_host, _ = _outbound(src, 4, 41051)
        stream, source = save(_ctx_for(src, migrate_exit=False))
        # The lingering source holds both 4-tuples; it lets go of one (closed in repair mode:
        # nothing reaches the peer), and the target's connect() meets the other.
        for flow in list(src.flows):
            c = flow.data
            if getattr(c, "st", None) is not None and c.st.guest_port == 41051:
                c.sock.close()          # in repair mode: nothing reaches the peer
        _move_peers(src, dst)
        report = load_bytes(_ctx_for(dst), stream)
        assert report.tcp == 1 and report.failed == 1
        assert dst.pump(lambda: lost_peer.rst_rcvd, 5), "the guest must hear of the lost one"
        assert not kept_peer.rst_rcvd
        kept_host.sendall(b"still here")
        assert dst.pump(lambda: kept_peer.data == b"still here", 10), kept_peer.data
        lost_host.close()
        kept_host.close()
    finally:
        src.close()
        dst.close()


@needs_repair
def test_when_every_connection_is_lost_the_guest_still_hears_of_it_at_once() -> None:
    """As above with the lost connection alone, through the service's Transfer, which
    activates only when there is something to hand over: a lost connection is such a thing,
    and its guest end gets the RST as soon as the link is up."""
    src, dst = TcpEnv(), TcpEnv()
    try:
        lost_peer, lost_host, _ = _outbound(src, 4, 41052)
        stream, _source = save(_ctx_for(src, migrate_exit=False))
        _move_peers(src, dst)
        r, w = os.pipe()
        results: list[int] = []
        transfer = Transfer(_ctx_for(dst), r, False, results.append)
        transfer.start()
        assert len(stream) < 60000          # fits in the pipe at once
        os.write(w, stream)
        os.close(w)
        assert dst.pump(lambda: bool(results), 5), "the target never finished loading"
        assert results == [0] and transfer.report is not None
        assert transfer.report.tcp == 0 and transfer.report.failed == 1
        assert not lost_peer.rst_rcvd
        transfer.activate()
        assert dst.pump(lambda: lost_peer.rst_rcvd, 5), "the guest must hear of the lost one"
        lost_host.close()
    finally:
        src.close()
        dst.close()


@needs_repair
@pytest.mark.parametrize("seen", [True, False], ids=["seen-by-source", "after-last-look"])
@pytest.mark.parametrize("version", [4, 6])
def test_host_end_of_stream_around_the_freeze_reaches_the_guest_once(
        version: int, seen: bool) -> None:
    """The host peer writes and closes while the guest has not acknowledged its data, and the
    guest moves: on the target the guest gets every byte, then exactly one FIN, whether the
    source's TCP had seen the end (record) or it only reached the socket (kernel state)."""
    src, dst = TcpEnv(), TcpEnv()
    try:
        peer, host, _ = _outbound(src, version, 41060)
        data = os.urandom(150_000)
        peer.auto_ack = False
        peer.drop = lambda rec: True          # in flight, never acknowledged on the source
        host.setblocking(True)
        host.sendall(data)
        host.shutdown(socket.SHUT_WR)
        if seen:
            src.pump(lambda: False, 0.3)
        else:
            time.sleep(0.2)                   # reaches the socket; the loop does not run
        stream, _ = save(_ctx_for(src))
        _move_peers(src, dst)
        peer.drop = None
        peer.auto_ack = True
        fins = []
        peer_on = peer.on_segment
        peer.on_segment = lambda rec: (fins.append(rec) if rec.seg.flags & FIN else None,
                                       peer_on(rec))[1]
        report = load_bytes(_ctx_for(dst), stream)
        assert report.tcp == 1 and report.failed == 0
        assert dst.pump(lambda: peer.fin_rcvd, 10), \
            f"{len(peer.data)}/{len(data)}, no FIN {[f.data.st for f in dst.flows]}"
        assert hashlib.sha256(peer.data).digest() == hashlib.sha256(data).digest()
        dst.pump(lambda: False, 0.3)
        assert len(fins) == 1
        peer.fin()
        host.settimeout(5)
        assert host.recv(10) == b""
        assert dst.pump(lambda: len(dst.flows) == 0, 5)
        host.close()
    finally:
        src.close()
        dst.close()
