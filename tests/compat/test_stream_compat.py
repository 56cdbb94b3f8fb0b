# SPDX-License-Identifier: MIT
"""Migration streams across releases: what v0.1.0 wrote still loads, and v0.1.0 reads ours.

The compatibility rule these tests hold the code to:

1. **Every stream a release wrote stays loadable.** A stream version is frozen once released:
   a new reader keeps reading it (``versions.VERSIONS`` keeps its entry and its stages), and
   rebuilds the same state from it. ``streams/`` holds what v0.1.0 (commit af42e14f, stream
   version 1) writes, with a JSON sidecar of what each stream holds; the current code must
   load each one and rebuild the same guest state and flows: counts, tuples, handler exports,
   TCP sequence numbers and the kernel sockets' queues (length and SHA-256).
2. **Old releases load new streams unless the version is bumped.** A change to the format
   (a section, a record schema) gets a new stream version; a stream whose header range
   [compat_version, version] still contains a version v0.1.0 reads must load in v0.1.0 and
   rebuild the same state; one whose range does not must be refused by it cleanly
   (ENOTSUP, "unsupported version") before anything is built: never half-loaded.
3. **Moving back stays possible.** The current code can still write a stream that v0.1.0
   reads (``Source(ctx, version=1)``), so a guest can migrate back to a v0.1.0 host.

The golden files never change: their SHA-256 are pinned here (GOLDEN). Regenerating them
(``python tests/compat/old_release.py make-streams``, see make_streams.py) is only ever right
for a fix of the generator itself, and needs this table edited and a reason in the commit.

v0.1.0 is rebuilt from this repository's history (old_release.py, cached in
tests/.cache/compat-v0.1.0): without git or without that commit (a shallow clone) these tests
FAIL, they do not skip. Everything that opens sockets runs in a private network namespace
(compat_netns.py) as root: saved ports are free there, and what restored TCP sockets send
(their window probe, a FIN) goes to a silent listener on their vanished peer's address and
never leaves the namespace.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent):                # tests/compat, tests (l4_helpers, tcp_peer)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import compat_describe as cd  # noqa: E402
import compat_netns  # noqa: E402
import old_release  # noqa: E402
from l4_helpers import Sink, guest_udp  # noqa: E402
from tcp_peer import FAMILY, GuestPeer, TcpEnv  # noqa: E402

from passt_py.config.portspec import Forward, parse_port_options  # noqa: E402
from passt_py.flow import FlowTable  # noqa: E402
from passt_py.link.netview import GuestState, Ip4View, Ip6View, NetView  # noqa: E402
from passt_py.loop import EventLoop  # noqa: E402
from passt_py.migrate import repair as tcp_repair  # noqa: E402
from passt_py.migrate.codec import MigrationError  # noqa: E402
from passt_py.migrate.context import MigrationContext  # noqa: E402
from passt_py.migrate.source import Source  # noqa: E402
from passt_py.migrate.target import load_bytes  # noqa: E402
from passt_py.migrate.versions import VERSION, VERSIONS  # noqa: E402
from passt_py.tcp.handler import TcpHandler  # noqa: E402
from passt_py.udp.handler import UdpHandler  # noqa: E402
from passt_py.udp.icmp import IcmpHandler  # noqa: E402

STREAMS = HERE / "streams"
#: name: (SHA-256 of NAME.bin, SHA-256 of NAME.json). Never edit without a reason in the commit.
GOLDEN = {
    "idle": ("36c78a432b04adc1698dbe7f824a1408062bfc421fc9ca164658801623ef96ea",
            "07a4a72f473e00316a66909d3047b57c8fe906e9bd73b3a7754124f62cf68a6a"),
    "ping_udp": ("d2dff340c208224fb7e5ec9cf1ad5f2857476b59efdd676b8e61bf1dd8eae6e3",
                "e7754aa5bc745ad1de5c7fea6ae2b92eee2df4210f11091233557341bbe5a92b"),
    "tcp": ("be73f4c9934c843feb9612da1fbac567c6237715784c57448d98e3fb2eadcb6b",
           "edba6999247f370c42d940893112e84bc74b2828f99b5315f737a7d051c0cb3d"),
}

ESTABLISHED, FIN_WAIT1 = 1, 4
#: Socket fields the target must rebuild exactly (window: the two halves the peer set; our own
#: receive window and snd_wl1 are the kernel's to recompute once the socket runs again).
SOCKET_EXACT = ("local_addr", "local_port", "peer_addr", "peer_port", "snd_seq", "rcv_seq",
                "snd_queue", "rcv_queue", "mss", "snd_wscale", "rcv_wscale", "sack",
                "timestamps", "nodelay", "fin_sent")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not tcp_repair.direct_repair_allowed(),
    reason="needs root: private network namespaces and TCP_REPAIR")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _golden(name: str) -> tuple[bytes, dict]:
    return (STREAMS / f"{name}.bin").read_bytes(), \
        json.loads((STREAMS / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def old_tree() -> Path:
    """v0.1.0 built from git history (once; cached across runs)."""
    try:
        return old_release.ensure_built()
    except old_release.OldReleaseError as e:
        pytest.fail(f"cannot rebuild {old_release.RELEASE}: {e}", pytrace=False)


def _old_load(old_tree: Path, desc: dict, data: bytes) -> dict:
    """Load ``data`` with v0.1.0 (old_load.py in its own namespace); its description."""
    proc = old_release.run_python(old_tree, [str(HERE / "old_load.py"), json.dumps(desc)],
                                  stdin=data, timeout=120)
    assert proc.returncode == 0, f"old_load.py failed:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout)
    assert out["passt_py"].startswith(str(old_tree)), f"not v0.1.0: {out['passt_py']}"
    return out


# ---- comparing what a target rebuilt with what the source held ----

def _tcp_key(entry: dict) -> tuple:
    r = entry["record"]
    return r["guest_addr"], r["guest_port"], r["our_addr"], r["our_port"]


def _expected_record(rec: dict, sock: dict) -> dict:
    """A TCP record as the target's TcpHandler holds it right after adoption: it sends again
    from the guest's last acknowledgement (TcpHandler.adopt), and a host FIN the socket had
    received is known from the socket record (target.activate)."""
    out = dict(rec)
    out["seq_to_guest"] = (rec["seq_acked_by_guest"]
                           + (1 if rec["fin_sent"] and not rec["fin_acked"] else 0)) % 2**32
    out["host_eof"] = rec["host_eof"] or sock["fin_received"]
    return out


def check_rebuilt(want: dict, got: dict) -> None:
    """``got`` (a target's description) rebuilt everything ``want`` (a source's) held."""
    assert "error" not in got, f"the stream was refused: {got['error']}"
    assert got["report"] == {**want["counts"], "failed": 0}
    assert got["guest"] == want["guest"]
    for kind in ("ping", "udp"):
        assert got[kind] == want[kind], kind
    assert len(got["tcp"]) == len(want["tcp"])
    rebuilt = {_tcp_key(e): e for e in got["tcp"]}
    for w in want["tcp"]:
        g = rebuilt.get(_tcp_key(w))
        assert g is not None, f"TCP connection {_tcp_key(w)} not rebuilt"
        name = f"TCP {_tcp_key(w)}"
        assert g["sides"] == w["sides"], name
        assert g["record"] == _expected_record(w["record"], w["socket"]), name
        ws, gs = w["socket"], g["socket"]
        assert {k: gs[k] for k in SOCKET_EXACT} == {k: ws[k] for k in SOCKET_EXACT}, name
        for k in ("snd_wnd", "max_window"):
            assert gs["window"][k] == ws["window"][k], (name, k)
        # Rebuilt as established; a FIN we had sent is sent again (and not acknowledged by
        # the silent peer); a FIN received lives on in the record (host_eof), not the socket.
        assert gs["kstate"] == (FIN_WAIT1 if ws["fin_sent"] else ESTABLISHED), name
        assert gs["fin_received"] is False, name


# ---- the current code as a target ----

def _repair_and_save(flow: Any) -> tcp_repair.TcpSockState:
    """The rebuilt socket's kernel state; it stays in repair mode, so closing it is silent."""
    sock = flow.data.sock
    assert tcp_repair.set_repair(sock, tcp_repair.TCP_REPAIR_ON) == 0
    return tcp_repair.save(sock)


def load_current(desc: dict, data: bytes) -> dict:
    """Load ``data`` with the current code into a target set up as ``desc`` says (call it
    inside a private namespace); describe what was rebuilt, then close everything."""
    peers = [compat_netns.silent_peer(e["socket"]["peer_addr"], e["socket"]["peer_port"])
             for e in desc["tcp"]]
    loop = EventLoop()
    view = cd.build_view(desc["setup"]["view"], NetView, Ip4View, Ip6View)
    guest = GuestState()
    flows = FlowTable(loop, max_flows=1024)
    sink = Sink()
    args = (loop, view, guest, flows, sink)
    ctx = MigrationContext(loop=loop, view=view, guest=guest, flows=flows,
                           icmp=IcmpHandler(*args), udp=UdpHandler(*args),
                           tcp=TcpHandler(*args), repair=tcp_repair.RepairControl())
    try:
        if desc["setup"]["udp_forwards"]:
            ctx.udp.start_forwards(parse_port_options(desc["setup"]["udp_forwards"]))
        try:
            report = load_bytes(ctx, data)
        except MigrationError as e:
            return {"error": {"stage": e.stage, "errno": e.code, "message": str(e)}}
        return {"report": {"ping": report.ping, "udp": report.udp, "tcp": report.tcp,
                           "failed": report.failed},
                "guest": cd.describe_guest(guest),
                **cd.describe_flows(flows, ctx.icmp, ctx.udp, ctx.tcp, _repair_and_save)}
    finally:
        for flow in list(ctx.tcp.connections()):
            tcp_repair.set_repair(flow.data.sock, tcp_repair.TCP_REPAIR_ON)   # silent close
        ctx.tcp.close_all()
        ctx.udp.stop_forwards()
        ctx.udp.close_all()
        ctx.icmp.close_all()
        loop.close()
        for p in peers:
            p.close()


# ---- 1: the golden files ----

def test_golden_streams_are_pinned() -> None:
    """The v0.1.0 streams and sidecars are exactly the committed ones, and agree."""
    assert sorted(p.name for p in STREAMS.iterdir()) == \
        sorted(f"{n}.{ext}" for n in GOLDEN for ext in ("bin", "json")), \
        "a stream was added or removed: pin it in GOLDEN (and say why in the commit)"
    for name, (bin_sha, json_sha) in GOLDEN.items():
        data, desc = _golden(name)
        assert _sha(data) == bin_sha, f"{name}.bin changed: golden streams are never rewritten"
        assert _sha((STREAMS / f"{name}.json").read_bytes()) == json_sha, \
            f"{name}.json changed: golden sidecars are never rewritten"
        assert desc["stream"] == {"file": f"{name}.bin", "bytes": len(data), "sha256": bin_sha}
        assert desc["written_by"]["commit"] == old_release.COMMIT
        assert cd.header_of(data) == desc["format"]
        assert data[-32:] == hashlib.sha256(data[:-32]).digest()


@needs_root
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_stream_loads_in_the_current_code(name: str) -> None:
    """Rule 1: the current code rebuilds from a v0.1.0 stream everything it held."""
    data, desc = _golden(name)
    with compat_netns.private_netns():
        got = load_current(desc, data)
    check_rebuilt(desc, got)


@needs_root
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_stream_loads_in_v010(old_tree: Path, name: str) -> None:
    """The yardstick: v0.1.0 itself rebuilds its streams as the sidecars say (this checks
    the sidecars, the comparison and the old loader, which the tests below rely on)."""
    data, desc = _golden(name)
    check_rebuilt(desc, _old_load(old_tree, desc, data))


# ---- 2, 3: streams the current code writes ----

class _Source:
    """A current-code source (in a private namespace): ping and UDP flows v4/v6 (one UDP
    flow through a -u forward), TCP outbound v4 and inbound v6 with data queued both ways."""

    def __init__(self) -> None:
        self.env = TcpEnv()
        env = self.env
        self.l4_sink = Sink()                 # ICMP/UDP frames (TcpEnv routes TCP only)
        args = (env.loop, env.view, env.guest, env.flows, self.l4_sink)
        self.icmp, self.udp = IcmpHandler(*args), UdpHandler(*args)
        self.udp_forwards = ["127.0.0.1/7003:5353"]
        self.ctx = MigrationContext(
            loop=env.loop, view=env.view, guest=env.guest, flows=env.flows, icmp=self.icmp,
            udp=self.udp, tcp=env.tcp, repair=tcp_repair.RepairControl(), migrate_exit=True)
        self.socks: list[socket.socket] = []
        env.guest.addr6_ll = ipaddress.IPv6Address("fe80::5054:ff:fe12:3456")
        env.guest.arp_answered = True
        self._ping_udp()
        self._tcp()

    def _frames_after(self, n: int) -> bool:
        return self.env.pump(lambda: len(self.l4_sink.frames) > n, 3)

    def _ping_udp(self) -> None:
        from l4_helpers import echo_frame, parsed
        for version, ident in ((4, 0x2345), (6, 0x6789)):
            n = len(self.l4_sink.frames)
            self.icmp.from_guest(parsed(echo_frame(version, ident, 1, b"ping")))
            assert self._frames_after(n), f"no echo reply (IPv{version})"
        for version, port, gport in ((4, 7001, 40011), (6, 7002, 40012)):
            family, lo, gaddr, gw = FAMILY[version]
            server = socket.socket(family, socket.SOCK_DGRAM)
            self.socks.append(server)
            server.bind((lo, port))
            server.settimeout(3)
            self.udp.from_guest(*guest_udp(gaddr, gw, gport, port, b"query"))
            _data, peer = server.recvfrom(100)
            n = len(self.l4_sink.frames)
            server.sendto(b"answer", peer)
            assert self._frames_after(n), "no UDP answer"
        assert self.udp.start_forwards(parse_port_options(self.udp_forwards)) == 1
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socks.append(client)
        client.bind(("127.0.0.1", 7004))
        n = len(self.l4_sink.frames)
        client.sendto(b"from the host", ("127.0.0.1", 7003))
        assert self._frames_after(n), "forwarded datagram not seen"

    def _queue_both_ways(self, peer: GuestPeer, host: socket.socket, to_guest: bytes,
                         to_host: bytes) -> None:
        env = self.env
        peer.auto_ack = False
        peer.drop = lambda rec: True          # host data: sent, never acknowledged
        host.sendall(to_guest)
        env.pump(lambda: False, 0.2)
        assert tcp_repair.freeze(host) == 0   # guest data: never acknowledged by the host
        peer.drop = lambda rec: bool(rec.seg.payload)
        peer.send_stream(to_host)
        assert env.pump(peer.stream_done, 3), "guest data not acknowledged"
        peer.drop = lambda rec: True

    def _tcp(self) -> None:
        env = self.env
        family, lo, _g, gw = FAMILY[4]
        lst = env.listener(4)
        peer = GuestPeer(env, 4, 41011, gw, lst.getsockname()[1])
        assert peer.connect(), "no SYN-ACK"
        lst.settimeout(3)
        host, _ = lst.accept()
        host.setblocking(False)
        self.socks.append(host)
        self._queue_both_ways(peer, host, os.urandom(1500), os.urandom(900))
        family, lo, _g, _gw = FAMILY[6]
        env.accepting[8080] = {}
        assert env.tcp.start_forwards([Forward(ipaddress.ip_address(lo), None, 8012, 8012,
                                               8080)]) == 1
        client = socket.socket(family, socket.SOCK_STREAM)
        self.socks.append(client)
        client.bind((lo, 9012))
        client.setblocking(False)
        client.connect_ex((lo, 8012))
        assert env.pump(lambda: any(p.gport == 8080 for p in env.peers.values()))
        peer6 = next(p for p in env.peers.values() if p.gport == 8080)
        assert peer6.accept_syn()
        env.pump(lambda: False, 0.05)
        self._queue_both_ways(peer6, client, os.urandom(1200), os.urandom(700))

    def save(self, version: int) -> tuple[dict, bytes]:
        """Source pre and save in stream ``version``; the sidecar-style description."""
        ctx = self.ctx
        handlers = (ctx.icmp, ctx.udp, ctx.tcp)
        before = cd.describe_flows(ctx.flows, *handlers)
        source = Source(ctx) if version == VERSION else Source(ctx, version=version)
        source.pre()
        data = b"".join(source.sections())
        assert source.report.failed == 0 and source.report.unrepairable == 0
        frozen = {flow.id: sock for flow, sock in source.frozen}
        tcp = cd.describe_flows(ctx.flows, *handlers,
                                lambda f: tcp_repair.save(frozen[f.id]))["tcp"]
        assert len(tcp) == 2 and len(frozen) == 2
        desc = {"setup": {"view": cd.describe_view(ctx.view),
                          "udp_forwards": self.udp_forwards},
                "guest": cd.describe_guest(ctx.guest),
                "counts": {"ping": len(before["ping"]), "udp": len(before["udp"]),
                           "tcp": len(tcp)},
                "ping": before["ping"], "udp": before["udp"], "tcp": tcp}
        return desc, data

    def close(self) -> None:
        self.env.close()          # sockets frozen in repair mode: closed silently
        self.udp.stop_forwards()
        self.udp.close_all()
        self.icmp.close_all()
        for s in self.socks:
            s.close()


def _write_current(version: int) -> tuple[dict, bytes]:
    with compat_netns.private_netns():
        src = _Source()
        try:
            return src.save(version)
        finally:
            src.close()


def _writable_versions() -> list[int]:
    """Every stream version the current code can write (the newest by default)."""
    return sorted(v for v, _stages in VERSIONS)


def _reads(version: int, compat: int, known: list[int]) -> bool:
    """Whether a reader knowing versions ``known`` accepts a [compat, version] stream."""
    return any(compat <= v <= version for v in known)


@needs_root
@pytest.mark.parametrize("version", _writable_versions())
def test_a_stream_the_current_code_writes_loads_in_v010(old_tree: Path, version: int) -> None:
    """Rule 2: v0.1.0 rebuilds everything from a current stream whose header range holds a
    version it reads; a stream outside that range it refuses cleanly (ENOTSUP)."""
    desc, data = _write_current(version)
    header = cd.header_of(data)
    got = _old_load(old_tree, desc, data)
    if _reads(header["version"], header["compat_version"], got["reads_versions"]):
        check_rebuilt(desc, got)
    else:
        assert "error" in got, f"v0.1.0 loaded a stream of versions " \
            f"{header['compat_version']}..{header['version']}, which it cannot read"
        assert got["error"]["errno"] == errno.ENOTSUP and \
            "unsupported version" in got["error"]["message"], got["error"]


@needs_root
def test_the_current_code_still_writes_a_stream_v010_reads(old_tree: Path) -> None:
    """Rule 3: moving a guest back to a v0.1.0 host stays possible."""
    proc = old_release.run_python(old_tree, ["-c", "from passt_py import migrate; "
                                             "print([v for v, _ in migrate.VERSIONS])"])
    known = json.loads(proc.stdout)
    _data, desc = _golden("idle")
    view = cd.build_view(desc["setup"]["view"], NetView, Ip4View, Ip6View)
    ranges = []
    for version in _writable_versions():
        loop = EventLoop()
        try:
            ctx = MigrationContext(loop=loop, view=view, guest=GuestState(),
                                   flows=FlowTable(loop))
            source = Source(ctx) if version == VERSION else Source(ctx, version=version)
            source.pre()
            header = cd.header_of(b"".join(source.sections()))
        finally:
            loop.close()
        ranges.append((header["compat_version"], header["version"]))
    assert any(_reads(v, c, known) for c, v in ranges), \
        f"v0.1.0 reads versions {known}; the current code writes only {ranges}"
