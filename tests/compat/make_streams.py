# SPDX-License-Identifier: MIT
"""Write the golden migration streams of the v0.1.0 release (tests/compat/streams/).

Run ONLY with the v0.1.0 tree first on sys.path: this script uses that release's API and its
own test helpers (``<tree>/tests/l4_helpers.py``, ``tcp_peer.py``), never the current ones, so
it keeps working however the current code changes. Needs root (a private network namespace,
TCP_REPAIR). Each stream gets a JSON sidecar describing what it holds, taken from the source's
state (handler exports, ``tcp_repair.save`` of the frozen sockets) and cross-checked against
the stream as that release parses it.

Regenerating (only ever for v0.1.0; the files are pinned in test_stream_compat.py, and changing
them needs a reason in the commit)::

    .venv/bin/python tests/compat/old_release.py make-streams          # cached build, or:

    git worktree add --detach /tmp/v010 af42e14f76148707ed8c0b91d91af5a6a18b01f0
    (cd /tmp/v010 && /work/main/.venv/bin/python setup.py build_ext --inplace)
    PYTHONPATH=/tmp/v010 .venv/bin/python tests/compat/make_streams.py tests/compat/streams
    git worktree remove --force /tmp/v010

Streams (all addresses loopback on the host side; guest side as in the tests' NetView):

- ``idle``: the guest's MAC and addresses (no global IPv6 address, a link-local one), no flows;
- ``ping_udp``: ICMP echo flows v4 and v6, outbound UDP flows v4 (answered) and v6, and a UDP
  flow a host client started through a -u forward (v4);
- ``tcp``: four connections: outbound v4 and inbound (-t) v6 with data queued both ways (host
  data the guest has not acknowledged; guest data the frozen host peer has not acknowledged),
  outbound v6 where the host peer sent its data and a FIN, inbound v4 the guest half-closed.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
import passt_py  # noqa: E402  (the release's, first on sys.path)

TREE = Path(passt_py.__file__).resolve().parent.parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))
sys.path.insert(1, str(TREE / "tests"))       # the release's own test helpers

import compat_netns  # noqa: E402
from compat_describe import (describe_flows, describe_guest, describe_socket,  # noqa: E402
                             describe_view, header_of, jsonable)
from l4_helpers import (GUEST4, GUEST6, GUEST_MAC, GW4, GW6, OUR_MAC, Sink,  # noqa: E402
                        guest_udp, make_guest, make_view)
from tcp_peer import FAMILY, GuestPeer, TcpEnv  # noqa: E402

from passt_py import core, migrate, tcp_repair  # noqa: E402
from passt_py.ethernet import parse_header  # noqa: E402
from passt_py.flow import FlowTable, FlowType  # noqa: E402
from passt_py.icmp import IcmpHandler  # noqa: E402
from passt_py.ip import IPPROTO_ICMP, IPPROTO_ICMPV6, ip_frame, l4_checksum, parse_ip  # noqa
from passt_py.loop import EventLoop  # noqa: E402
from passt_py.portspec import Forward, parse_port_options  # noqa: E402
from passt_py.udp import UdpHandler  # noqa: E402

RELEASE = "v0.1.0"
COMMIT = "af42e14f76148707ed8c0b91d91af5a6a18b01f0"
SCHEMA = 1

# Host-side ports: fixed, so the sidecars read easily (the namespace is private).
UDP_SERVER4, UDP_SERVER6, UDP_FWD4, UDP_CLIENT4 = 7001, 7002, 7003, 7004
TCP_OUT4, TCP_IN6, TCP_OUT6, TCP_IN4 = 8001, 8002, 8003, 8004
TCP_CLIENT6, TCP_CLIENT4 = 9002, 9004


# ---- sources ----

class Env:
    """Handlers on one loop and the migration context over them."""

    def __init__(self, icmp: bool = False, udp: bool = False, tcp: bool = False) -> None:
        self.loop = EventLoop()
        self.view = make_view()
        self.guest = make_guest()
        self.flows = FlowTable(self.loop, max_flows=1024)
        self.sink = Sink()
        args = (self.loop, self.view, self.guest, self.flows, self.sink)
        self.ctx = migrate.MigrationContext(
            loop=self.loop, view=self.view, guest=self.guest, flows=self.flows,
            icmp=IcmpHandler(*args) if icmp else None, udp=UdpHandler(*args) if udp else None,
            tcp=None, repair=tcp_repair.RepairControl(), migrate_exit=True)
        self.udp_forwards: list[str] = []

    def pump(self, cond, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            self.loop.run_once(0.01)
        return cond()


def _echo_frame(version: int, ident: int, seq: int, payload: bytes) -> bytes:
    src, dst = (GUEST4, GW4) if version == 4 else (GUEST6, GW6)
    msg = bytearray(struct.pack("!BBHHH", 8 if version == 4 else 128, 0, 0, ident, seq)
                    + payload)
    if version == 4:
        struct.pack_into("!H", msg, 2, core.csum_icmp4(msg))
    else:
        struct.pack_into("!H", msg, 2, l4_checksum(src, dst, IPPROTO_ICMPV6, msg))
    return ip_frame(OUR_MAC, GUEST_MAC, src, dst,
                    IPPROTO_ICMP if version == 4 else IPPROTO_ICMPV6, bytes(msg), ttl=64)


def _parsed(frame: bytes):
    return parse_ip(frame, parse_header(frame).ethertype)


def idle_source() -> Env:
    env = Env()
    env.guest.mac = bytes.fromhex("525400abcdef")
    env.guest.addr6 = None
    env.guest.addr6_ll = ipaddress.IPv6Address("fe80::5054:ff:feab:cdef")
    env.guest.arp_answered = True
    return env


def ping_udp_source() -> Env:
    env = Env(icmp=True, udp=True)
    # Echo flows: the guest pings the gateway, which is the host's loopback.
    for version, ident in ((4, 0x1234), (6, 0x5678)):
        before = len(env.sink.frames)
        env.ctx.icmp.from_guest(_parsed(_echo_frame(version, ident, 1, b"ping")))
        assert env.pump(lambda: len(env.sink.frames) > before), f"no echo reply (IPv{version})"
    # Outbound UDP: v4 answered by the server (bidirectional), v6 not.
    servers = []
    for version, port, gport, answer in ((4, UDP_SERVER4, 40001, True),
                                         (6, UDP_SERVER6, 40002, False)):
        family, lo, gaddr, gw = FAMILY[version]
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((lo, port))
        server.settimeout(3)
        servers.append(server)
        env.ctx.udp.from_guest(*guest_udp(gaddr, gw, gport, port, b"query"))
        data, peer = server.recvfrom(100)
        assert data == b"query"
        if answer:
            before = len(env.sink.frames)
            server.sendto(b"answer", peer)
            assert env.pump(lambda: len(env.sink.frames) > before), "no UDP answer"
    # A flow started from the host through a -u forward.
    env.udp_forwards = [f"127.0.0.1/{UDP_FWD4}:5353"]
    assert env.ctx.udp.start_forwards(parse_port_options(env.udp_forwards)) == 1
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", UDP_CLIENT4))
    servers.append(client)
    before = len(env.sink.frames)
    client.sendto(b"from the host", ("127.0.0.1", UDP_FWD4))
    assert env.pump(lambda: len(env.sink.frames) > before), "forwarded datagram not seen"
    env.keep = servers  # type: ignore[attr-defined]
    return env


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        pass


def tcp_source() -> TcpEnv:
    env = TcpEnv()
    env.ctx = migrate.MigrationContext(  # type: ignore[attr-defined]
        loop=env.loop, view=env.view, guest=env.guest, flows=env.flows, tcp=env.tcp,
        repair=tcp_repair.RepairControl(), migrate_exit=True)
    env.udp_forwards = []  # type: ignore[attr-defined]

    def outbound(version: int, gport: int, port: int) -> tuple[GuestPeer, socket.socket]:
        family, lo, _g, gw = FAMILY[version]
        lst = socket.socket(family, socket.SOCK_STREAM)
        lst.bind((lo, port))
        lst.listen(4)
        env.socks.append(lst)
        peer = GuestPeer(env, version, gport, gw, port)
        assert peer.connect(), "no SYN-ACK"
        lst.settimeout(3)
        host, _ = lst.accept()
        host.setblocking(False)
        return peer, host

    def inbound(version: int, port: int, gport: int, cport: int) -> tuple[GuestPeer, socket.socket]:
        family, lo, _g, _gw = FAMILY[version]
        env.accepting[gport] = {}
        assert env.tcp.start_forwards([Forward(ipaddress.ip_address(lo), None, port, port,
                                               gport)]) == 1
        client = socket.socket(family, socket.SOCK_STREAM)
        client.bind((lo, cport))
        client.setblocking(False)
        client.connect_ex((lo, port))
        assert env.pump(lambda: any(p.gport == gport for p in env.peers.values()))
        peer = next(p for p in env.peers.values() if p.gport == gport)
        assert peer.accept_syn()
        env.pump(lambda: False, 0.05)
        return peer, client

    def queue_both_ways(peer: GuestPeer, host: socket.socket, to_guest: bytes,
                        to_host: bytes) -> None:
        # Host -> guest: sent to the guest, never acknowledged (it stays in our socket).
        peer.auto_ack = False
        peer.drop = lambda rec: True
        host.sendall(to_guest)
        env.pump(lambda: False, 0.2)
        # Guest -> host: the host peer is frozen, so its kernel acknowledges nothing and the
        # data stays in our socket's send queue.
        assert tcp_repair.freeze(host) == 0
        peer.drop = lambda rec: bool(rec.seg.payload)     # our ACKs only: RCV.NXT stays
        peer.send_stream(to_host)
        assert env.pump(lambda: peer.stream_done(), 3), "guest data not acknowledged"
        peer.drop = lambda rec: True

    p1, h1 = outbound(4, 41001, TCP_OUT4)
    queue_both_ways(p1, h1, bytes(range(256)) * 4, b"guest to host, v4 " * 40)
    p2, h2 = inbound(6, TCP_IN6, 8080, TCP_CLIENT6)
    queue_both_ways(p2, h2, b"host to guest over IPv6 " * 60, b"g6" * 300)
    p3, h3 = outbound(6, 41003, TCP_OUT6)
    h3.sendall(b"last words" * 30)
    h3.shutdown(socket.SHUT_WR)
    assert env.pump(lambda: p3.fin_rcvd, 3), "no FIN from the host peer"
    env.pump(lambda: False, 0.1)
    p4, h4 = inbound(4, TCP_IN4, 8081, TCP_CLIENT4)
    p4.fin()
    env.pump(lambda: False, 0.2)
    _drain(h4)
    env.pump(lambda: False, 0.1)
    env.keep = [h1, h2, h3, h4]  # type: ignore[attr-defined]
    return env


# ---- save and describe ----

def _parse(ctx, data: bytes) -> "migrate.Loaded":
    """The stream as this release parses it (nothing applied)."""
    r, w = os.pipe()
    try:
        os.write(w, data)          # a few KiB: fits the pipe
        os.close(w)
        w = -1
        reader = migrate.StreamReader()
        assert reader.pump(r)
        return migrate.parse_stream(ctx, reader)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def save(name: str, env, out_dir: Path) -> dict:
    ctx = env.ctx
    handlers = (ctx.icmp, ctx.udp, ctx.tcp)
    before = describe_flows(ctx.flows, *handlers)    # stateless flows leave in pre()
    source = migrate.Source(ctx)
    source.pre()
    data = b"".join(source.sections())
    assert source.report.failed == 0 and source.report.unrepairable == 0, source.report
    frozen = {flow.id: sock for flow, sock in source._tcp}
    assert len(frozen) == sum(1 for f in ctx.flows if f.type == FlowType.TCP), \
        "a TCP connection was not saved"
    tcp = describe_flows(ctx.flows, *handlers, lambda f: tcp_repair.save(frozen[f.id]))["tcp"]
    desc = {
        "schema": SCHEMA,
        "written_by": {"release": RELEASE, "commit": COMMIT,
                       "impl_version": passt_py.__version__, "kernel": os.uname().release},
        "stream": {"file": f"{name}.bin", "bytes": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()},
        "format": header_of(data),
        "setup": {"view": describe_view(ctx.view), "udp_forwards": env.udp_forwards},
        "guest": describe_guest(ctx.guest),
        "counts": {"ping": len(before["ping"]), "udp": len(before["udp"]), "tcp": len(tcp)},
        "ping": before["ping"], "udp": before["udp"], "tcp": tcp,
    }
    _cross_check(ctx, data, desc)
    source.post()
    (out_dir / f"{name}.bin").write_bytes(data)
    (out_dir / f"{name}.json").write_text(json.dumps(desc, indent=1, sort_keys=True) + "\n")
    return desc


def _cross_check(ctx, data: bytes, desc: dict) -> None:
    """The sidecar says what the stream holds, as this release reads it back."""
    loaded = _parse(ctx, data)
    assert describe_guest(loaded.guest) == desc["guest"]
    assert sorted(json.dumps(jsonable(s), sort_keys=True) for s in loaded.ping) == \
        [json.dumps(e["record"], sort_keys=True) for e in desc["ping"]]
    assert sorted(json.dumps(jsonable(s), sort_keys=True) for s in loaded.udp) == \
        [json.dumps(e["record"], sort_keys=True) for e in desc["udp"]]
    got = sorted(([jsonable(st), describe_socket(ks)] for st, ks in loaded.tcp),
                 key=lambda e: json.dumps(e[0], sort_keys=True))
    want = [[e["record"], e["socket"]] for e in desc["tcp"]]
    for (st, ks), (wst, wks) in zip(got, want, strict=True):
        assert st == wst, (st, wst)
        assert ks == wks, (ks, wks)


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0] if argv else HERE / "streams")
    marker = TREE / "RELEASE_COMMIT"        # written by old_release.py
    if marker.is_file():
        found = marker.read_text().strip()
    else:                                    # a git worktree
        found = subprocess.run(["git", "-C", str(TREE), "rev-parse", "HEAD"], text=True,
                               capture_output=True).stdout.strip()
    if found != COMMIT:
        sys.exit(f"passt_py comes from {TREE}, which is not {RELEASE} ({found or 'unknown'}): "
                 "put that release's tree first on sys.path")
    compat_netns.enter_new_netns()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, build in (("idle", idle_source), ("ping_udp", ping_udp_source),
                        ("tcp", tcp_source)):
        desc = save(name, build(), out_dir)
        print(f"{name}: {desc['stream']['bytes']} bytes, {desc['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
