"""Migration of the back-end state through the vhost-user device-state channel.

Theory of operation
-------------------
QEMU hands us a pipe with SET_DEVICE_STATE_FD once the rings are suspended. As the *source*
we write our state into it, as the *target* we read it; CHECK_DEVICE_STATE then reports the
result. The bytes move from the event loop on a non-blocking descriptor (core.writev_all /
core.readv_all, resumed on EAGAIN), so the vhost-user socket is never blocked.

Stream format (every integer big-endian, explicitly encoded, no padding)::

    header   magic u64 | version u32 | compat_version u32
    section  id u16 | flags u16 | length u32 | payload[length]     (repeated, in stage order)
    end      id 0xFFFF | flags 0 | length 32 | SHA-256 of every byte before this payload

A section with flag bit 0 (OPTIONAL) may be skipped by a reader that does not know its id;
an unknown section without it is an error. The reader picks the newest version it knows
between the stream's compat_version and version (a bounded walk over VERSIONS), and that
version's stage list says which sections must come, in which order. Sections of version 1:

    META   implementation name and version, flow counts, configuration fingerprint
    GUEST  the guest's observed MAC and addresses
    PING   ICMP echo flows (optional: they are re-created on demand anyway)
    UDP    UDP flows (optional, likewise)
    TCP    TCP connections: guest-side state (tcp.py) + kernel socket state (tcp_repair.py)

Flow records use a small self-describing record codec (passt_py.migrate.record): the owner's
state dataclass, field by field, each with its numeric field id from the owner's declared
schema (version 1: its name) and a type tag; the target checks every value against the
dataclass's annotations before anything is built.

Compatibility rule: a stream version is never changed once released; a change to a section or
to a record schema (tests/test_migrate_schema.py pins them) makes a new version, and every
version released stays readable (tests/compat holds streams written by passt-py 0.1.0). A
source writes the newest version unless asked for an older one (``Source(version=...)``), so
moving back to an older release stays possible; that release reads a stream only in a version
it knows.

Source: *pre* stops the host side (listening sockets closed, flow sockets muted), freezes the
TCP sockets (a drop-everything socket filter, so nothing arrives that the state would miss) and
puts them into repair mode (directly with CAP_NET_ADMIN, else through the passt-repair
helper; without either the connections are named in the log and left out). *save* exports
every flow into sections. *post* keeps the migrated sockets open, frozen and in repair mode
(the kernel sends nothing, so no RST reaches the peers), or with ``--migrate-exit`` closes them
quietly, leaving a drop-all guard listener on each address until the process exits. The
lingering sockets keep their address/port pairs, so a target on the *same host* cannot rebuild
them (EADDRNOTAVAIL, logged with that hint): there the source must run with --migrate-exit.
*rollback* (the transfer failed, or the rings start here again because QEMU gave up
after our state went out) takes the sockets out of repair mode, unfreezes and unmutes them and
re-creates listeners and UDP/ping flows: the guest keeps its connections here.

Target: the whole stream is read (bounded: every length is checked against the limits and the
bytes actually received before anything is allocated for it), its checksum verified, and every
section parsed and validated, including the fingerprint against our own configuration, before
anything changes. Then the flows are rebuilt into the table, which may hold entries already;
a flow that cannot be rebuilt is dropped (TCP: its peer gets an RST) and the rest go on.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from passt_py import core
from passt_py.flow import Flow, FlowRefused, FlowTable, FlowType
from passt_py.link.netview import GuestState, NetView
from passt_py.loop import ERR, HUP, IN, OUT, EventLoop
from passt_py.migrate import record as migrate_record
from passt_py.migrate import repair as tcp_repair
from passt_py.migrate.record import decode_record, encode_record, pack_addr, pack_text
from passt_py.tcp import handler as tcp
from passt_py.udp import handler as udp
from passt_py.udp import icmp

log = logging.getLogger(__name__)

MAGIC = 0x7061_7373_742D_7079       # "passt-py"
#: Version 2: flow records carry numeric field ids (passt_py.migrate.record); version 1
#: (passt-py 0.1.0) carried field names. Both are read; both can be written (Source).
VERSION = 2
COMPAT_VERSION = 2
IMPLEMENTATION = "passt-py"

HEADER = struct.Struct("!QII")
SECTION = struct.Struct("!HHI")
FLAG_OPTIONAL = 0x0001
DIGEST_LEN = 32                      # SHA-256

SEC_META = 0x0001
SEC_GUEST = 0x0002
SEC_PING = 0x0003
SEC_UDP = 0x0004
SEC_TCP = 0x0005
SEC_END = 0xFFFF

#: Hard cap on a whole stream; the limits below bound each part.
MAX_STREAM = 1 << 30
MAX_META = 4096
MAX_GUEST = 256
MAX_RECORD = 2 * tcp_repair.MAX_QUEUE + 4096
#: Bytes read per system call into a growing section buffer.
READ_CHUNK = 1 << 20
#: With --migrate-exit: how long after the transfer we stay, for CHECK_DEVICE_STATE and in case
#: QEMU gives up and resumes the guest here (the rings start again: rollback, no exit).
EXIT_DELAY = 2.0


class MigrationError(Exception):
    """A migration step failed: ``code`` is a positive errno, ``stage`` the step's name."""

    def __init__(self, code: int, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.code = code
        self.stage = stage


# ---- primitive encoding (passt_py.migrate.record) ----

class Reader(migrate_record.Reader):
    """Bounds-checked cursor over one section payload; its errors name the stage."""

    def fail(self, message: str) -> MigrationError:  # type: ignore[override]
        """The error for malformed content at this point of this stage."""
        return MigrationError(errno.EBADMSG, self.stage, message)


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


# ---- what migration works on ----

@dataclass
class MigrationContext:
    """The parts of a running back-end that migration reads and rebuilds."""

    loop: EventLoop
    view: NetView
    guest: GuestState
    flows: FlowTable
    icmp: Any = None
    udp: Any = None
    tcp: Any = None
    repair: tcp_repair.RepairControl | None = None
    drop: tcp_repair.DropFilter = tcp_repair.CLASSIC    # the freeze (see DropFilter)
    udp_forwards: Any = None
    tcp_forwards: Any = None
    migrate_exit: bool = False
    max_stream: int = MAX_STREAM


def fingerprint(view: NetView) -> bytes:
    """What source and target must agree on: MTU, our MAC, the guest's addresses and routes."""
    out = bytearray(_U32.pack(view.mtu) + view.our_mac)
    for fam in (view.ip4, view.ip6):
        if fam is None:
            out += b"\0"
            continue
        out += b"\1" + pack_addr(fam.addr) + bytes([fam.prefix_len]) + pack_addr(fam.gateway)
    return bytes(out)


def _describe_fingerprint(raw: bytes) -> str:
    """A fingerprint in words, for the mismatch message."""
    try:
        r = Reader(raw, "meta")
        mtu = r.u32()
        mac = bytes(r.take(6))
        parts = [f"MTU {mtu}", "MAC " + ":".join(f"{b:02x}" for b in mac)]
        for name in ("IPv4", "IPv6"):
            if r.u8():
                addr = r.addr()
                plen = r.u8()
                gw = r.addr()
                parts.append(f"{name} {addr}/{plen} via {gw}")
            else:
                parts.append(f"no {name}")
        return ", ".join(parts)
    except MigrationError:
        return "(unreadable)"


@dataclass
class Meta:
    """The META section."""

    implementation: str
    impl_version: str
    counts: tuple[int, int, int]          # ping, UDP, TCP flows
    fingerprint: bytes


@dataclass
class Loaded:
    """Everything parsed and validated from a stream, before anything is applied."""

    version: int = 0
    meta: Meta | None = None
    guest: GuestState | None = None
    ping: list[Any] = field(default_factory=list)
    udp: list[Any] = field(default_factory=list)
    tcp: list[tuple[Any, tcp_repair.TcpSockState]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


@dataclass
class Report:
    """What a save or load did, for logs, tests and benchmarks."""

    ping: int = 0
    udp: int = 0
    tcp: int = 0
    failed: int = 0
    unrepairable: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: Target: restored TCP sockets waiting for :func:`activate` (state record, socket state,
    #: socket).
    pending: list[tuple[Any, tcp_repair.TcpSockState, socket.socket]] = field(
        default_factory=list)
    #: Target: TCP connections that could not be rebuilt (state records), whose guest end is
    #: reset by :func:`activate` so the guest's application learns at once.
    lost: list[Any] = field(default_factory=list)


@dataclass
class Saved:
    """The source's encoded flow records, from which each stage writes its section."""

    ping: list[bytes]
    udp: list[bytes]
    tcp: list[bytes]            # per connection: framed state record + framed socket record


# ---- source ----

def _tcp_events() -> int:
    """The events tcp.py watches on a connection's socket (restored on unmute)."""
    return IN | OUT | ERR | HUP | tcp.ET


class Source:
    """The source side: quiesce (pre), write the sections (save), linger (post) or roll back."""

    def __init__(self, ctx: MigrationContext, version: int = VERSION) -> None:
        if version not in {v for v, _ in VERSIONS}:
            raise ValueError(f"cannot write stream version {version}")
        self.ctx = ctx
        self.version = version          # what to write: VERSION, or 1 for passt-py 0.1.0
        self.report = Report()
        self._ping_states: list[Any] = []
        self._udp_states: list[Any] = []
        self._tcp: list[tuple[Flow, socket.socket]] = []   # frozen (and maybe repaired)
        self._repaired = False
        self._muted: list[int] = []
        self._listeners_closed = False
        self._done = False
        self._guards: list[socket.socket] = []   # see tcp_repair.guard

    # -- pre --
    def pre(self) -> None:
        """Stop the host side and take the TCP sockets out of play."""
        ctx = self.ctx
        for handler, states in ((ctx.icmp, self._ping_states), (ctx.udp, self._udp_states)):
            if handler is None:
                continue
            kinds = (FlowType.PING4, FlowType.PING6) if handler is ctx.icmp else (FlowType.UDP,)
            for flow in [f for f in ctx.flows if f.type in kinds]:
                try:
                    states.append(handler.export(flow))
                except Exception as e:  # noqa: BLE001 - one bad flow must not stop the rest
                    log.warning("migration pre: flow %d not exported: %s", flow.id, e)
                    self.report.failed += 1
        # Stateless flows and listeners are closed now and re-created by whoever serves next.
        if ctx.udp is not None:
            ctx.udp.stop_forwards()
            ctx.udp.close_all()
        if ctx.icmp is not None:
            ctx.icmp.close_all()
        if ctx.tcp is not None:
            ctx.tcp.stop_forwards()
        self._listeners_closed = True
        if ctx.tcp is not None:
            self._pre_tcp()

    def _pre_tcp(self) -> None:
        ctx = self.ctx
        socks: list[tuple[Flow, socket.socket]] = []
        ctx.tcp.settle()            # acknowledged bytes leave the queues before they freeze
        for flow in ctx.tcp.connections():
            conn = flow.data
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                ctx.loop.modify(sock.fileno(), 0)
                self._muted.append(sock.fileno())
            except (OSError, ValueError):
                pass
            if conn.st.phase != tcp.Phase.ESTABLISHED:
                log.info("migration pre: TCP flow %d is not established (%s): not moved",
                         flow.id, conn.st.phase.name)
                continue
            socks.append((flow, sock))
        if not socks:
            return
        repair = ctx.repair
        if repair is None or not repair.available:
            self.report.unrepairable = len(socks)
            log.error("migration: TCP_REPAIR unavailable (%s): these %d TCP connections will "
                      "NOT survive the migration: %s",
                      repair.how() if repair else "no repair control", len(socks),
                      ", ".join(repr(f) for f, _ in socks))
            return
        unfrozen = sum(1 for _flow, sock in socks if tcp_repair.freeze(sock, ctx.drop) < 0)
        if unfrozen:
            log.warning("migration: %d TCP sockets could not be frozen (socket filter refused): "
                        "data arriving after the save may be acknowledged here and lost",
                        unfrozen)
        rc = repair.set([s for _, s in socks], tcp_repair.TCP_REPAIR_ON)
        if rc < 0:
            for _flow, sock in socks:
                tcp_repair.thaw(sock)
            self.report.unrepairable = len(socks)
            log.error("migration: repair mode %s failed (%s): these %d TCP connections will "
                      "NOT survive the migration: %s", repair.how(), os.strerror(-rc),
                      len(socks), ", ".join(repr(f) for f, _ in socks))
            return
        log.info("migration: %d TCP connection(s) frozen, in repair mode %s", len(socks),
                 repair.how())
        self._tcp = socks
        self._repaired = True

    # -- save --
    def sections(self) -> list[bytes]:
        """The whole stream, as buffers for one writev (header, sections, end marker).

        The sections are written from the version table the target reads (VERSIONS): each
        stage saves its own section, so writer and reader cannot disagree on their order."""
        t0 = time.perf_counter()
        saved = self._records()
        # Each version is its own compat_version: a reader picks exactly the one written.
        bufs: list[bytes] = [HEADER.pack(MAGIC, self.version, self.version)]
        digest = hashlib.sha256(bufs[0])
        for stage in dict(VERSIONS)[self.version]:
            parts = stage.save(self.ctx, saved)
            head = SECTION.pack(stage.section, FLAG_OPTIONAL if stage.optional else 0,
                                sum(len(p) for p in parts))
            bufs.append(head)
            digest.update(head)
            for p in parts:
                bufs.append(p)
                digest.update(p)
        end = SECTION.pack(SEC_END, 0, DIGEST_LEN)
        digest.update(end)
        bufs += [end, digest.digest()]
        self.report.ping, self.report.udp = len(saved.ping), len(saved.udp)
        self.report.tcp = len(saved.tcp)
        self.report.bytes = sum(len(b) for b in bufs)
        self.report.seconds = time.perf_counter() - t0
        return bufs

    def _records(self) -> Saved:
        """Every flow's record, encoded for this stream's version (a TCP connection whose
        state cannot be read stays behind, alone)."""
        ctx = self.ctx
        saved = Saved([encode_record(s, self.version) for s in self._ping_states],
                      [encode_record(s, self.version) for s in self._udp_states], [])
        for flow, sock in self._tcp:
            try:
                st = ctx.tcp.export(flow)
                ks = tcp_repair.save(sock)
            except Exception as e:  # noqa: BLE001 - that connection alone stays behind
                log.error("migration save: TCP flow %d not saved: %s", flow.id, e)
                self.report.failed += 1
                continue
            rec = encode_record(st, self.version)
            ksb = ks.pack()
            saved.tcp.append(_U32.pack(len(rec)) + rec + _U32.pack(len(ksb)) + ksb)
        return saved

    # -- post --
    def post(self) -> None:
        """The state went out: stay quiet (or close quietly with --migrate-exit)."""
        self._done = True
        if self.ctx.migrate_exit:
            # In repair mode close() sends nothing: the peers never notice. A guard listener
            # takes over the address meanwhile, so what the peers send before the target has
            # the connection is dropped quietly rather than answered with an RST.
            unguarded = 0
            for flow, sock in self._tcp:
                g = tcp_repair.guard(sock, self.ctx.drop)
                if g is not None:
                    self._guards.append(g)
                else:
                    unguarded += 1
                self.ctx.loop.remove(sock.fileno())
                self.ctx.flows.close(flow)
            self._tcp = []
            if unguarded:
                log.warning("migration: no guard listener for %d closed TCP connection(s): "
                            "on this host, what their peers send before the target restores "
                            "them is answered with an RST", unguarded)
        log.info("migration: source done; %d TCP connection(s) %s", self.report.tcp,
                 "closed quietly" if self.ctx.migrate_exit
                 else "kept frozen in repair mode (no RST)")

    # -- rollback --
    def rollback(self) -> None:
        """Serve the guest here again: sockets out of repair mode, host side back."""
        ctx = self.ctx
        if self._repaired and self._tcp:
            rc = ctx.repair.set([s for _, s in self._tcp], tcp_repair.TCP_REPAIR_OFF) \
                if ctx.repair is not None else -errno.EPERM
            if rc < 0:
                log.error("migration rollback: repair off failed (%s): TCP connections may "
                          "stall", os.strerror(-rc))
            for _flow, sock in self._tcp:
                tcp_repair.thaw(sock)
        self._repaired = False
        events = _tcp_events() if ctx.tcp is not None else 0
        for fd in self._muted:
            try:
                ctx.loop.modify(fd, events)
            except (OSError, ValueError):
                pass                       # the connection closed meanwhile
        self._muted = []
        if self._listeners_closed:
            if ctx.udp is not None and ctx.udp_forwards is not None:
                ctx.udp.start_forwards(ctx.udp_forwards)
            if ctx.tcp is not None and ctx.tcp_forwards is not None:
                ctx.tcp.start_forwards(ctx.tcp_forwards)
            self._listeners_closed = False
        restored = _adopt_all(ctx.icmp, self._ping_states, "ping", ctx)
        restored += _adopt_all(ctx.udp, self._udp_states, "UDP", ctx)
        self._ping_states, self._udp_states = [], []
        log.warning("migration rolled back: the guest stays here (%d TCP connections and %d "
                    "UDP/ping flows back in service)", len(self._tcp), restored)
        self._tcp = []


def _framed(records: list[bytes]) -> list[bytes]:
    """Each record preceded by its u32 length."""
    out: list[bytes] = []
    for rec in records:
        out += [_U32.pack(len(rec)), rec]
    return out


def _impl_version() -> str:
    """Our version, for the META section (informational)."""
    import passt_py
    return str(getattr(passt_py, "__version__", "unknown"))


def _adopt_all(handler: Any, states: Iterable[Any], what: str, ctx: MigrationContext) -> int:
    """Re-create stateless flows one by one; a failure costs that flow only."""
    if handler is None:
        return 0
    done = 0
    for st in states:
        try:
            handler.adopt(st)
            done += 1
        except (OSError, FlowRefused, ValueError) as e:
            log.warning("migration: %s flow %s not re-created: %s", what, st, e)
    return done


# ---- target: reading ----

class StreamReader:
    """Reads one stream from a non-blocking fd, bounded, checksummed, section by section."""

    def __init__(self, max_stream: int = MAX_STREAM) -> None:
        self.max_stream = max_stream
        self.total = 0
        self.header: tuple[int, int, int] | None = None
        self.sections: list[tuple[int, int, bytes]] = []
        self.complete = False
        self._digest = hashlib.sha256()
        self._want: bytearray = bytearray(HEADER.size)
        self._off = 0
        self._what = "header"
        self._cur: tuple[int, int, int] | None = None
        self._payload = bytearray()

    def _fail(self, code: int, message: str) -> MigrationError:
        """An error of the read stage."""
        return MigrationError(code, "read", message)

    def pump(self, fd: int) -> bool:
        """Read what is available; True once the end marker and EOF arrived.

        Raises MigrationError on a malformed stream; returns False when the fd is drained.
        """
        while not self.complete:
            try:
                got = core.readv_all(fd, [self._want], self._off)
            except BlockingIOError as e:
                self._off = e.characters_written
                return False
            except OSError as e:
                raise self._fail(e.errno or errno.EIO, f"read failed: {e}") from None
            if got < len(self._want):
                if self._what == "eof":
                    self.complete = True
                    return True
                raise self._fail(errno.ENODATA, f"stream truncated in the {self._what} "
                                 f"(after {self.total + got} bytes)")
            self._off = 0
            self.total += len(self._want)
            self._step(bytes(self._want))
        return True

    def _next(self, n: int, what: str) -> None:
        """Read ``n`` bytes of ``what`` next."""
        self._want = bytearray(n)
        self._what = what

    def _step(self, data: bytes) -> None:
        """One piece of the stream arrived whole: check it and say what comes next."""
        what = self._what
        if what == "eof":
            raise self._fail(errno.EBADMSG, "data after the end marker")
        if what == "checksum":
            if data != self._digest.digest():
                raise self._fail(errno.EBADMSG, "checksum mismatch: the stream is corrupted")
            self._next(1, "eof")
            return
        self._digest.update(data)
        if what == "header":
            magic, version, compat = HEADER.unpack(data)
            if magic != MAGIC:
                raise self._fail(errno.EPROTO, f"bad magic 0x{magic:016x}: not a passt-py "
                                 "migration stream")
            self.header = (magic, version, compat)
            if _choose_version(version, compat) is None:
                raise self._fail(errno.ENOTSUP, f"unsupported version {version} (compatible "
                                 f"down to {compat}); this back-end reads "
                                 f"{', '.join(str(v) for v, _ in VERSIONS)}")
            self._next(SECTION.size, "section header")
        elif what == "section header":
            sid, flags, length = SECTION.unpack(data)
            if sid == SEC_END:
                if length != DIGEST_LEN or flags:
                    raise self._fail(errno.EBADMSG, f"bad end marker (length {length})")
                self._next(DIGEST_LEN, "checksum")
                return
            limit = _SECTION_LIMITS.get(sid, self.max_stream)
            if length > limit or self.total + length + SECTION.size + DIGEST_LEN > \
                    self.max_stream:
                raise self._fail(errno.E2BIG, f"section 0x{sid:04x} of {length} bytes "
                                 f"exceeds the limit")
            if len(self.sections) >= MAX_SECTIONS:
                raise self._fail(errno.E2BIG, "too many sections")
            self._cur = (sid, flags, length)
            self._payload = bytearray()
            self._payload_chunk()
        elif what == "section payload":
            self._payload += data
            self._payload_chunk()

    def _payload_chunk(self) -> None:
        """Ask for the next piece of the current section (memory grows with what arrives)."""
        assert self._cur is not None
        sid, flags, length = self._cur
        left = length - len(self._payload)
        if left > 0:
            self._next(min(left, READ_CHUNK), "section payload")
            return
        self.sections.append((sid, flags, bytes(self._payload)))
        self._payload = bytearray()
        self._next(SECTION.size, "section header")


MAX_SECTIONS = 64
_SECTION_LIMITS = {SEC_META: MAX_META, SEC_GUEST: MAX_GUEST}


# ---- target: parsing (validation only, nothing changes) ----

def _parse_meta(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """META: who wrote the stream, flow counts, and the fingerprint we must share."""
    impl = r.text()
    version = r.text()
    counts = r.unpack(struct.Struct("!III"))
    fp = bytes(r.take(r.u16()))
    r.end()
    ours = fingerprint(ctx.view)
    if fp != ours:
        raise MigrationError(errno.EINVAL, "meta",
                             f"configuration mismatch: source has {_describe_fingerprint(fp)}; "
                             f"this back-end has {_describe_fingerprint(ours)}")
    total = sum(counts)
    if total > ctx.flows.max_flows:
        raise MigrationError(errno.E2BIG, "meta", f"{total} flows announced, this back-end "
                             f"holds at most {ctx.flows.max_flows}")
    out.meta = Meta(impl, version, counts, fp)
    log.info("migration: stream from %s %s: %d ping, %d UDP, %d TCP flows", impl, version,
             *counts)


def _parse_guest(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """GUEST: MAC, ARP flag, addresses."""
    mac = bytes(r.take(6))
    flags = r.u8()
    addr4, addr6, addr6_ll = r.addr(), r.addr(), r.addr()
    r.end()
    if (addr4 is not None and addr4.version != 4) or (addr6 is not None and addr6.version != 6) \
            or (addr6_ll is not None and addr6_ll.version != 6):
        raise r.fail("address of the wrong family")
    out.guest = GuestState(mac=mac, addr4=addr4, addr6=addr6,  # type: ignore[arg-type]
                           addr6_ll=addr6_ll, arp_answered=bool(flags & 1))


def _records(r: Reader, expected: int, what: str) -> list[memoryview]:
    """u32 count (must match META) and length-prefixed records, each bounded."""
    count = r.u32()
    if count != expected:
        raise r.fail(f"{count} {what} records, metadata announced {expected}")
    recs = []
    for _ in range(count):
        n = r.u32()
        if n > MAX_RECORD:
            raise r.fail(f"{what} record of {n} bytes")
        recs.append(r.take(n))
    return recs


def _parse_flows(cls: type, what: str, idx: int, attr: str):
    """A parser for a section of ``cls`` records (PING, UDP)."""
    def parse(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
        assert out.meta is not None
        states = []
        for rec in _records(r, out.meta.counts[idx], what):
            rr = Reader(rec, r.stage)
            states.append(decode_record(cls, rr, out.version, MAX_RECORD))
            rr.end()
        r.end()
        setattr(out, attr, states)
    return parse


def _parse_tcp(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """TCP: per connection the guest-side state record and the kernel socket record."""
    assert out.meta is not None
    count = r.u32()
    if count != out.meta.counts[2]:
        raise r.fail(f"{count} TCP records, metadata announced {out.meta.counts[2]}")
    items = []
    for _ in range(count):
        n = r.u32()
        if n > MAX_RECORD:
            raise r.fail(f"TCP state record of {n} bytes")
        rr = Reader(r.take(n), r.stage)
        st = decode_record(tcp.TcpState, rr, out.version, MAX_RECORD)
        rr.end()
        n = r.u32()
        if n > MAX_RECORD:
            raise r.fail(f"TCP socket record of {n} bytes")
        try:
            ks = tcp_repair.TcpSockState.unpack(r.take(n))
        except ValueError as e:
            raise r.fail(str(e)) from None
        items.append((st, ks))
    r.end()
    out.tcp = items


# ---- target: applying ----

def _apply_guest(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """What we knew of the guest, so no ARP/NDP round is needed before traffic flows."""
    g = out.guest
    assert g is not None
    ctx.guest.mac, ctx.guest.addr4 = g.mac, g.addr4
    ctx.guest.addr6, ctx.guest.addr6_ll = g.addr6, g.addr6_ll
    ctx.guest.arp_answered = g.arp_answered


def _apply_ping(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """Ping flows, each with a new socket."""
    report.ping = _adopt_all(ctx.icmp, out.ping, "ping", ctx)
    report.failed += len(out.ping) - report.ping


def _apply_udp(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """UDP flows, each with a socket bound like the original."""
    report.udp = _adopt_all(ctx.udp, out.udp, "UDP", ctx)
    report.failed += len(out.udp) - report.udp


def _apply_tcp(ctx: MigrationContext, out: Loaded, report: Report) -> None:
    """TCP connections: sockets rebuilt in repair mode, then adopted by the TCP handler."""
    if not out.tcp:
        return
    if ctx.tcp is None:
        log.error("migration: %d TCP connections arrived but TCP is disabled here: reset",
                  len(out.tcp))
        report.failed += len(out.tcp)
        return
    control = ctx.repair
    if control is None or not control.available:
        log.error("migration: TCP_REPAIR unavailable (%s): %d TCP connections cannot be "
                  "restored", control.how() if control else "no repair control", len(out.tcp))
        report.failed += len(out.tcp)
        report.lost += [st for st, _ks in out.tcp]
        return
    # Repair mode is switched for all sockets at once: one helper round trip per 253 sockets
    # (passt-repair), not two per connection.
    fresh: list[tuple[Any, tcp_repair.TcpSockState, socket.socket]] = []
    for st, ks in out.tcp:
        try:
            fresh.append((st, ks, tcp_repair.new_socket(ks)))
        except tcp_repair.RepairError as e:
            _restore_failed(st, ks, e, report)
    rc = control.set([sock for _, _, sock in fresh], tcp_repair.TCP_REPAIR_ON)
    if rc < 0:
        log.error("migration: repair mode %s failed (%s): %d TCP connections cannot be "
                  "restored", control.how(), os.strerror(-rc), len(fresh))
        for _st, _ks, sock in fresh:
            sock.close()
        report.failed += len(fresh)
        report.lost += [st for st, _ks, _sock in fresh]
        return
    built: list[tuple[Any, tcp_repair.TcpSockState, socket.socket]] = []
    for st, ks, sock in fresh:
        try:
            tcp_repair.restore_in_repair(sock, ks, ctx.drop)
        except tcp_repair.RepairError as e:
            sock.close()                 # still in repair mode: nothing reaches the peer
            _restore_failed(st, ks, e, report)
            continue
        built.append((st, ks, sock))
    rc = control.set([sock for _, _, sock in built], tcp_repair.TCP_REPAIR_OFF)
    if rc < 0:
        log.error("migration: leaving repair mode %s failed (%s): %d TCP connections lost",
                  control.how(), os.strerror(-rc), len(built))
        for _st, _ks, sock in built:
            sock.close()
        report.failed += len(built)
        report.lost += [st for st, _ks, _sock in built]
        return
    for st, ks, sock in built:
        try:
            tcp_repair.finish(sock, ks)
            sock.setblocking(False)
        except OSError as e:
            _drop_restored(ctx, ks, sock, e, report)
            continue
        report.tcp += 1
        report.pending.append((st, ks, sock))


def activate(ctx: MigrationContext, report: Report) -> None:
    """Target post: hand the restored TCP sockets to the TCP handler.

    Done once the guest link is up (the rings run), so the handler's resynchronisation (our
    window, data the guest has not acknowledged) reaches the guest instead of being dropped
    by a device that is not started yet. Until then the kernel keeps what the peers send.
    """
    lost, report.lost = report.lost, []
    for st in lost if ctx.tcp is not None else ():
        try:
            ctx.tcp.reset_guest_end(st)
        except (ValueError, OSError) as e:      # a record too broken to address the guest
            log.warning("migration: no RST to the guest for a lost TCP connection: %s", e)
    pending, report.pending = report.pending, []
    adopted = 0
    for st, ks, sock in pending:
        # The host's FIN may have reached the socket after the source last looked: the
        # rebuilt socket will not report it, the record must.
        st.host_eof = st.host_eof or ks.fin_received
        try:
            ctx.tcp.adopt(st, sock)
            adopted += 1
        except (FlowRefused, OSError, ValueError) as e:
            report.tcp -= 1
            _drop_restored(ctx, ks, sock, e, report)
    if pending:
        log.info("migration: %d of %d restored TCP connections handed to the guest", adopted,
                 len(pending))


def discard(ctx: MigrationContext, report: Report) -> None:
    """The guest went away before :func:`activate`: reset what was restored for it."""
    report.lost = []
    pending, report.pending = report.pending, []
    for _st, ks, sock in pending:
        _drop_restored(ctx, ks, sock, OSError(errno.ENOTCONN, "the guest is gone"), report)


def _drop_restored(ctx: MigrationContext, ks: tcp_repair.TcpSockState, sock: socket.socket,
                   e: Exception, report: Report) -> None:
    """A rebuilt connection we cannot serve: reset it so the peer does not wait forever."""
    log.error("migration: TCP connection [%s]:%d -> [%s]:%d not adopted (%s): reset",
              ks.local_addr, ks.local_port, ks.peer_addr, ks.peer_port, e)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    ctx.loop.remove(sock.fileno())
    sock.close()
    report.failed += 1


def _restore_failed(st: Any, ks: tcp_repair.TcpSockState, e: tcp_repair.RepairError,
                    report: Report) -> None:
    hint = (" (another socket on this host still holds the connection: is the source "
            "lingering? use --migrate-exit there)" if e.errno == errno.EADDRNOTAVAIL else "")
    log.error("migration: TCP connection [%s]:%d -> [%s]:%d not restored: %s%s",
              ks.local_addr, ks.local_port, ks.peer_addr, ks.peer_port, e, hint)
    report.failed += 1
    report.lost.append(st)


@dataclass(frozen=True)
class Stage:
    """One section of a version: how the source writes it, how the target parses and
    applies it."""

    name: str
    section: int
    optional: bool
    save: Callable[[MigrationContext, Saved], list[bytes]]
    parse: Callable[[MigrationContext, Reader, Loaded], None]
    apply: Callable[[MigrationContext, Loaded, Report], None] | None


def _parse_ping(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """PING: icmp.PingFlowState records."""
    _parse_flows(icmp.PingFlowState, "ping", 0, "ping")(ctx, r, out)


def _parse_udp(ctx: MigrationContext, r: Reader, out: Loaded) -> None:
    """UDP: udp.UdpFlowState records."""
    _parse_flows(udp.UdpFlowState, "UDP", 1, "udp")(ctx, r, out)


def _save_meta(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """META: who writes, the flow counts, the configuration fingerprint."""
    fp = fingerprint(ctx.view)
    return [pack_text(IMPLEMENTATION) + pack_text(_impl_version())
            + struct.pack("!III", len(saved.ping), len(saved.udp), len(saved.tcp))
            + _U16.pack(len(fp)) + fp]


def _save_guest(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """GUEST: the guest's MAC and the addresses we saw it use."""
    g = ctx.guest
    return [g.mac + bytes([int(g.arp_answered)]) + pack_addr(g.addr4) + pack_addr(g.addr6)
            + pack_addr(g.addr6_ll)]


def _save_ping(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """PING: count, then each record framed."""
    return [_U32.pack(len(saved.ping))] + _framed(saved.ping)


def _save_udp(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """UDP: count, then each record framed."""
    return [_U32.pack(len(saved.udp))] + _framed(saved.udp)


def _save_tcp(ctx: MigrationContext, saved: Saved) -> list[bytes]:
    """TCP: count, then per connection its (already framed) pair of records."""
    return [_U32.pack(len(saved.tcp))] + saved.tcp


STAGES_V1: tuple[Stage, ...] = (
    Stage("meta", SEC_META, False, _save_meta, _parse_meta, None),
    Stage("guest", SEC_GUEST, False, _save_guest, _parse_guest, _apply_guest),
    Stage("ping", SEC_PING, True, _save_ping, _parse_ping, _apply_ping),
    Stage("udp", SEC_UDP, True, _save_udp, _parse_udp, _apply_udp),
    Stage("tcp", SEC_TCP, False, _save_tcp, _parse_tcp, _apply_tcp),
)

#: Versions this back-end reads, oldest first: (version, ordered stages).
VERSIONS: tuple[tuple[int, tuple[Stage, ...]], ...] = ((1, STAGES_V1), (2, STAGES_V1))


def _choose_version(version: int, compat: int) -> tuple[int, tuple[Stage, ...]] | None:
    """The newest version we know within [compat, version] (a bounded walk)."""
    best = None
    for i in range(len(VERSIONS)):
        v, stages = VERSIONS[i]
        if compat <= v <= version:
            best = (v, stages)
    return best


def parse_stream(ctx: MigrationContext, reader: StreamReader) -> Loaded:
    """Validate every section of a complete stream against its version's stages."""
    assert reader.header is not None
    chosen = _choose_version(reader.header[1], reader.header[2])
    if chosen is None:
        raise MigrationError(errno.ENOTSUP, "read", "unsupported version")
    version, stages = chosen
    out = Loaded(version=version)
    by_id = {s.section: (i, s) for i, s in enumerate(stages)}
    last = -1
    seen: set[int] = set()
    for sid, flags, payload in reader.sections:
        entry = by_id.get(sid)
        if entry is None:
            if flags & FLAG_OPTIONAL:
                out.skipped.append(sid)
                log.info("migration: skipping unknown optional section 0x%04x", sid)
                continue
            raise MigrationError(errno.ENOTSUP, "read", f"unknown required section 0x{sid:04x}")
        index, stage = entry
        if index <= last:
            raise MigrationError(errno.EBADMSG, stage.name,
                                 "section out of order or repeated")
        for missing in stages[last + 1:index]:
            if not missing.optional:
                raise MigrationError(errno.EBADMSG, missing.name, "required section missing")
        last = index
        seen.add(sid)
        try:
            stage.parse(ctx, Reader(payload, stage.name), out)
        except (ValueError, TypeError, struct.error) as e:
            raise MigrationError(errno.EBADMSG, stage.name, str(e)) from None
    for stage in stages[last + 1:]:
        if not stage.optional:
            raise MigrationError(errno.EBADMSG, stage.name, "required section missing")
    return out


def apply_stream(ctx: MigrationContext, out: Loaded) -> Report:
    """Rebuild state from a validated stream; failures of single flows are counted."""
    t0 = time.perf_counter()
    report = Report()
    chosen = _choose_version(out.version, out.version)
    assert chosen is not None
    for stage in chosen[1]:
        if stage.apply is not None:
            stage.apply(ctx, out, report)
    report.seconds = time.perf_counter() - t0
    return report


def load_bytes(ctx: MigrationContext, data: bytes) -> Report:
    """Read, validate and apply a whole stream held in memory (tests, tools)."""
    r, w = os.pipe()
    reader = StreamReader(ctx.max_stream)
    try:
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        view = memoryview(data)
        while True:
            n = 0
            if view:
                try:
                    n = os.write(w, view[:65536])
                except BlockingIOError:
                    n = 0
                view = view[n:]
            if not view and w >= 0:
                os.close(w)
                w = -1
            if reader.pump(r):
                break
        report = apply_stream(ctx, parse_stream(ctx, reader))
        activate(ctx, report)
        return report
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# ---- driving a transfer from the event loop ----

class Transfer:
    """One device-state transfer on a non-blocking fd; ``done(result)`` gets 0 or an errno."""

    def __init__(self, ctx: MigrationContext, fd: int, save: bool,
                 done: Callable[[int], None]) -> None:
        self.ctx = ctx
        self.fd = fd
        self.save = save
        self._done = done
        self._bufs: list[bytes] = []
        self._off = 0
        self._total = 0
        self.source: Source | None = None
        self.reader: StreamReader | None = None
        self.report: Report | None = None
        self.result: int | None = None
        self._t0 = time.perf_counter()

    def start(self) -> None:
        """Run source pre+save or get ready to read; then wait for the fd."""
        os.set_blocking(self.fd, False)
        if self.save:
            self.source = Source(self.ctx)
            try:
                self.source.pre()
                self._bufs = self.source.sections()
            except Exception as e:  # noqa: BLE001 - whatever happens, the guest stays here
                log.exception("migration source: preparing the state failed")
                self._fail(_code(e), "save", str(e))
                return
            self._total = sum(len(b) for b in self._bufs)
            # QEMU waits for the end of the stream with the guest stopped: write now (a
            # small state fits the pipe at once), wait for the fd only for the rest.
            self._on_ready(OUT)
            if self.result is None:
                self.ctx.loop.add(self.fd, OUT, self._on_ready)
        else:
            self.reader = StreamReader(self.ctx.max_stream)
            self.ctx.loop.add(self.fd, IN, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        """The fd is ready: move bytes; any failure ends the transfer (and rolls back)."""
        try:
            if self.save:
                self._write()
            else:
                self._read(mask)
        except MigrationError as e:
            self._fail(e.code, e.stage, str(e))
        except Exception as e:  # noqa: BLE001 - never crash the back-end on a transfer
            log.exception("migration: unexpected failure")
            self._fail(_code(e), "transfer", str(e))

    def _write(self) -> None:
        try:
            core.writev_all(self.fd, self._bufs, self._off)
        except BlockingIOError as e:
            self._off = e.characters_written
            return
        except OSError as e:
            raise MigrationError(e.errno or errno.EIO, "write", str(e)) from None
        assert self.source is not None
        self.source.post()
        self.report = self.source.report
        log.info("migration: %d bytes of state written in %.1f ms (%d ping, %d UDP, %d TCP "
                 "flows)", self._total, 1000 * (time.perf_counter() - self._t0),
                 self.report.ping, self.report.udp, self.report.tcp)
        self._finish(0)

    def _read(self, mask: int) -> None:
        assert self.reader is not None
        if not self.reader.pump(self.fd):
            if mask & (ERR | HUP) and not mask & IN:
                raise MigrationError(errno.EPIPE, "read", "state channel closed early")
            return
        loaded = parse_stream(self.ctx, self.reader)
        self.report = apply_stream(self.ctx, loaded)
        r = self.report
        log.info("migration: %d bytes of state loaded in %.1f ms: %d ping, %d UDP, %d TCP "
                 "flows restored, %d failed", self.reader.total,
                 1000 * (time.perf_counter() - self._t0), r.ping, r.udp, r.tcp, r.failed)
        self._finish(0)

    def activate(self) -> None:
        """Target post, once the guest link is up: see :func:`activate`."""
        if self.report is not None and self.report.pending:
            activate(self.ctx, self.report)

    def discard(self) -> None:
        """The front-end left before the link came up: see :func:`discard`."""
        if self.report is not None and self.report.pending:
            discard(self.ctx, self.report)

    def _fail(self, code: int, stage: str, message: str) -> None:
        log.error("migration %s failed at stage %s: %s", "save" if self.save else "load",
                  stage, message)
        if self.source is not None:
            try:
                self.source.rollback()
            except Exception:  # noqa: BLE001 - report the original failure
                log.exception("migration: rollback failed")
        self._finish(code or errno.EIO)

    def _finish(self, result: int) -> None:
        if self.result is not None:
            return
        self.result = result
        self.ctx.loop.remove(self.fd)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self._done(result)


def _code(exc: BaseException) -> int:
    """The errno CHECK_DEVICE_STATE reports for an exception."""
    if isinstance(exc, MigrationError):
        return exc.code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
