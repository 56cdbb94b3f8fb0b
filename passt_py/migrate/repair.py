# SPDX-License-Identifier: MIT
"""Kernel TCP socket state: save and restore through TCP_REPAIR, and the passt-repair helper.

Theory of operation: a connected TCP socket in repair mode (TCP_REPAIR on, CAP_NET_ADMIN) stops
talking to its peer and lets its state be read and written: sequence numbers of the send and
receive queues (TCP_REPAIR_QUEUE selects one, TCP_QUEUE_SEQ reads/sets its sequence), their
contents (recv with MSG_PEEK reads the selected queue without consuming it), the options agreed
in the handshake (TCP_REPAIR_OPTIONS: MSS, window scale, SACK, timestamps), the window state
(TCP_REPAIR_WINDOW) and the timestamp clock (TCP_TIMESTAMP). :func:`save` reads all of it into a
:class:`TcpSockState`; :func:`restore` builds an equivalent socket: a fresh socket gets its
address-reuse options and only then goes into repair mode (see :func:`new_socket`), gets its
queue sequence numbers, is bound to the same local address and port and "connected" (in repair
mode connect() sends nothing and lands in ESTABLISHED; the local address and port it ends up
with are checked to be the saved ones), gets the options, timestamp, queue contents and window,
and leaves repair mode, which sends one window probe that makes the peer acknowledge and so
resynchronises both ends. Data in the send queue is restored as sent-but-unacknowledged, so the
retransmission timer delivers whatever the peer had not acked.

A socket closed while in repair mode sends neither FIN nor RST: the source closes (or keeps)
its migrated sockets that way, and nothing reaches the peer until the target takes over.

Half-closed connections: a FIN we sent (FIN_WAIT1/2, CLOSING, LAST_ACK) is restored by
rebuilding the socket as established one sequence number early and shutting it down for
writing after repair mode is off, so the same FIN goes out again; a FIN we received
(CLOSE_WAIT, LAST_ACK, CLOSING) stays counted in the receive sequence number (the queued data
is rebuilt to end just after it), and the owner learns of it from
:attr:`TcpSockState.fin_received` (the new socket itself will not report end of stream).

Repair mode needs CAP_NET_ADMIN. Without it, :class:`RepairHelper` speaks the protocol of
passt's ``passt-repair`` helper (see its manual): we listen on a UNIX socket, the privileged
helper connects, and for each batch we send one signed command byte (1 on, 0 off, -1 off
without window probe) with up to 253 descriptors as SCM_RIGHTS; the helper sets the option on
each and echoes the byte, or closes the connection on failure. :class:`RepairControl` picks the
direct way when it works and the helper otherwise.

Errors: functions return negative errno or raise :class:`RepairError` carrying the errno and
the step that failed; nothing here logs per socket except through the caller.
"""
from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from passt_py import core

log = logging.getLogger(__name__)

# <linux/tcp.h>
TCP_INFO = 11
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
TCP_REPAIR_ON, TCP_REPAIR_OFF, TCP_REPAIR_OFF_NO_WP = 1, 0, -1
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
# <linux/sockios.h>, <netinet/in.h>
SIOCINQ = 0x541B
SIOCOUTQ = 0x5411
IP_FREEBIND = 15
IP_BIND_ADDRESS_NO_PORT = 24
IP_LOCAL_PORT_RANGE = 51        # Linux 6.3
SOL_IP = 0
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_PEEK_OFF = 42

# Kernel TCP states (<net/tcp_states.h>).
ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING = 1, 4, 5, 8, 9, 11
STATE_NAMES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
               11: "CLOSING"}
#: States a connection can be moved in, and what they imply about FINs.
MOVABLE = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING})
_FIN_SENT = frozenset({FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK})
_FIN_RECEIVED = frozenset({CLOSE_WAIT, LAST_ACK, CLOSING})

#: Upper bound for each queue we save or accept (the kernel's default tcp_wmem/rmem maxima
#: are 4 and 6 MiB, tuned hosts go higher; a larger queue is refused rather than allocated).
MAX_QUEUE = 32 << 20
#: Bytes per send() when refilling a queue in repair mode (halved on ENOMEM).
FILL_CHUNK = 64 << 10
#: Largest MSS TCP_MAXSEG accepts (MAX_TCP_WINDOW).
USER_MSS_MAX = 32767
#: Descriptors per helper command (SCM_MAX_FD).
HELPER_MAX_FDS = 253
#: How long we wait for the helper's echo.
HELPER_TIMEOUT = 5.0

_WINDOW = struct.Struct("=IIIII")    # struct tcp_repair_window (host order: a kernel ABI)
_OPT = struct.Struct("=II")          # struct tcp_repair_opt
_INT = struct.Struct("=i")
_U32 = struct.Struct("=I")


class RepairError(OSError):
    """A repair-mode step failed: ``errno`` is the cause, ``step`` names what was being done."""

    def __init__(self, code: int, step: str, detail: str = "") -> None:
        super().__init__(code, f"{step}: {detail or os.strerror(code)}")
        self.step = step


IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TcpWindow:
    """struct tcp_repair_window, field by field."""

    snd_wl1: int
    snd_wnd: int
    max_window: int
    rcv_wnd: int
    rcv_wup: int


@dataclass(frozen=True)
class TcpSockState:
    """Everything needed to rebuild one connected TCP socket elsewhere."""

    local_addr: IPAddr
    local_port: int
    peer_addr: IPAddr
    peer_port: int
    kstate: int            # kernel TCP state at save time (informational; see MOVABLE)
    snd_seq: int           # sequence number the restored send queue starts at
    rcv_seq: int           # sequence number the restored receive queue starts at
    snd_queue: bytes       # unacknowledged and unsent data, oldest first
    rcv_queue: bytes       # received data the application has not read yet
    mss: int
    snd_wscale: int        # -1: window scaling not in use
    rcv_wscale: int
    sack: bool
    timestamps: bool
    ts_val: int            # TCP_TIMESTAMP: the timestamp clock as the peer sees it
    window: TcpWindow
    fin_sent: bool
    fin_received: bool
    nodelay: bool

    # ---- encoding: big-endian, explicit, owned here ----
    _FIXED = struct.Struct("!BHHBIIIbbBIIIIIIII")

    def pack(self) -> bytes:
        """Network-order encoding (see :meth:`unpack`)."""
        v = self.local_addr.version
        flags = (self.sack | self.timestamps << 1 | self.fin_sent << 2
                 | self.fin_received << 3 | self.nodelay << 4)
        w = self.window
        fixed = self._FIXED.pack(
            v, self.local_port, self.peer_port, self.kstate, self.snd_seq, self.rcv_seq,
            self.mss, self.snd_wscale, self.rcv_wscale, flags, self.ts_val,
            w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup,
            len(self.snd_queue), len(self.rcv_queue))
        return (fixed + self.local_addr.packed + self.peer_addr.packed
                + self.snd_queue + self.rcv_queue)

    @classmethod
    def unpack(cls, data: bytes | memoryview, max_queue: int = MAX_QUEUE) -> "TcpSockState":
        """Decode and validate one record; raises ValueError on anything malformed."""
        data = memoryview(data)
        if len(data) < cls._FIXED.size:
            raise ValueError("TCP socket record truncated")
        (v, lport, pport, kstate, snd_seq, rcv_seq, mss, snd_ws, rcv_ws, flags, ts_val,
         wl1, swnd, maxw, rwnd, rwup, snd_len, rcv_len) = \
            cls._FIXED.unpack_from(data)
        if v not in (4, 6):
            raise ValueError(f"TCP socket record: bad IP version {v}")
        if kstate not in MOVABLE:
            raise ValueError(f"TCP socket record: state {kstate} cannot be restored")
        if snd_len > max_queue or rcv_len > max_queue:
            raise ValueError(f"TCP socket record: queue of {max(snd_len, rcv_len)} bytes "
                             f"exceeds the limit of {max_queue}")
        if not 0 < mss <= 65535:
            raise ValueError(f"TCP socket record: bad MSS {mss}")
        # Window scaling is negotiated for both directions or for neither (RFC 7323 2.2).
        if not (snd_ws == rcv_ws == -1 or (0 <= snd_ws <= 14 and 0 <= rcv_ws <= 14)):
            raise ValueError(f"TCP socket record: bad window scales {snd_ws}/{rcv_ws}")
        alen = 4 if v == 4 else 16
        off = cls._FIXED.size
        if len(data) != off + 2 * alen + snd_len + rcv_len:
            raise ValueError("TCP socket record: length does not match its queues")
        local = ipaddress.ip_address(bytes(data[off:off + alen]))
        peer = ipaddress.ip_address(bytes(data[off + alen:off + 2 * alen]))
        off += 2 * alen
        snd = bytes(data[off:off + snd_len])
        rcv = bytes(data[off + snd_len:off + snd_len + rcv_len])
        return cls(local, lport, peer, pport, kstate, snd_seq, rcv_seq, snd, rcv, mss, snd_ws,
                   rcv_ws, bool(flags & 1), bool(flags & 2), ts_val,
                   TcpWindow(wl1, swnd, maxw, rwnd, rwup), bool(flags & 4), bool(flags & 8),
                   bool(flags & 16))


# ---- repair mode ----

def set_repair(fd: int | socket.socket, mode: int) -> int:
    """TCP_REPAIR on one socket directly: 0, or negative errno (EPERM without CAP_NET_ADMIN)."""
    sock = _wrap(fd)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, mode)
    except OSError as e:
        return -(e.errno or errno.EIO)
    finally:
        sock.detach()
    return 0


def _wrap(fd: int | socket.socket) -> socket.socket:
    """A socket object over ``fd`` that the caller must detach (never closes the fd)."""
    return socket.socket(fileno=fd.fileno() if isinstance(fd, socket.socket) else fd)


def direct_repair_allowed() -> bool:
    """Whether this process may set TCP_REPAIR itself (probed on a throw-away socket)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    except OSError:
        return False
    finally:
        probe.close()
    return True


# ---- freezing: no segment reaches a socket being moved ----
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_ATTACH_BPF = 50
_DROP_ALL = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))   # BPF "ret #0"
_DROP_PROG = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(_DROP_ALL))      # struct sock_fprog


class DropFilter:
    """A socket filter that drops every segment, attachable after privileges are gone.

    A classic filter needs no privileges on most kernels, but some refuse it (EPERM) to a
    process without CAP_NET_ADMIN, which passt-py gives up when a repair helper does
    TCP_REPAIR. An eBPF program loaded while still privileged (:meth:`load`) is a file
    descriptor anyone holding it may attach, so the freeze keeps working there.
    """

    def __init__(self, prog_fd: int | None = None) -> None:
        self.prog_fd = prog_fd

    @classmethod
    def load(cls) -> DropFilter:
        """Load the eBPF program if this process may (root, CAP_BPF); else classic only."""
        return cls(core.drop_all_filter())

    def attach(self, sock: socket.socket) -> int:
        """Attach to ``sock``: 0, or negative errno of the classic attempt."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_PROG)
            return 0
        except OSError as e:
            err = e.errno or errno.EIO
        if self.prog_fd is None:
            return -err
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, self.prog_fd)
        except OSError:
            return -err
        return 0

    def close(self) -> None:
        """Release the loaded program (sockets it is attached to keep their copy)."""
        if self.prog_fd is not None:
            os.close(self.prog_fd)
            self.prog_fd = None


#: Classic filter only: what a process gets that could not load the eBPF program.
CLASSIC = DropFilter()


def freeze(sock: socket.socket, drop: DropFilter = CLASSIC) -> int:
    """Drop every segment for ``sock`` before TCP sees it: 0, or negative errno.

    Repair mode only stops the socket from sending: the kernel still accepts and acknowledges
    data that arrives, and after the state was saved such data would be lost for the target.
    A socket filter returning 0 discards segments before TCP processing, so nothing is acked
    and the peer retransmits it to whoever holds the connection next.
    """
    return drop.attach(sock)


def thaw(sock: socket.socket) -> int:
    """Undo :func:`freeze` (rollback): 0, or negative errno."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0


def guard(sock: socket.socket, drop: DropFilter = CLASSIC) -> socket.socket | None:
    """A listening socket on ``sock``'s local address and port that silently drops everything.

    For a source that closes its frozen sockets (--migrate-exit) on the host that also runs
    the target: between that close and the target's restore, a segment from the peer would find
    no socket and the kernel would answer it with an RST, killing the connection. A listener
    with a drop-all filter catches such segments instead (an established socket, when there is
    one again, takes precedence). Both it and the restored socket use SO_REUSEPORT, so the
    target can still bind. Returns None if the guard cannot be set up (logged by the caller).
    """
    try:
        local = _addr(sock.getsockname())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError:
        return None
    family = socket.AF_INET if local[0].version == 4 else socket.AF_INET6
    g = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        g.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        g.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            g.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if drop.attach(g) < 0:
            raise OSError(errno.EPERM, "drop filter refused")
        g.bind(_sockaddr(local[0], local[1]))
        g.listen(1)
    except OSError:
        g.close()
        return None
    return g


class RepairHelper:
    """Our side of the passt-repair protocol: listen, accept the helper, send commands."""

    def __init__(self, path: str, timeout: float = HELPER_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: socket.socket | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self._listener.bind(path)
            self._listener.listen(1)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise

    @property
    def listen_fd(self) -> int:
        """The listening socket (watch it for the helper connecting)."""
        return self._listener.fileno()

    @property
    def connected(self) -> bool:
        """A helper is connected."""
        return self._conn is not None

    @property
    def conn_fd(self) -> int | None:
        """The helper connection (readable means it hung up)."""
        return self._conn.fileno() if self._conn is not None else None

    def accept(self) -> bool:
        """Take a helper that connected; a second one while one is connected is refused."""
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        if self._conn is not None:
            log.warning("repair helper: refusing a second connection")
            conn.close()
            return False
        conn.settimeout(self.timeout)
        self._conn = conn
        log.info("repair helper connected on %s", self.path)
        return True

    def drop(self) -> None:
        """Close the helper connection (it exits then: one migration per helper)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def command(self, mode: int, fds: Sequence[int]) -> int:
        """Ask the helper to set TCP_REPAIR ``mode`` on ``fds``: 0, or negative errno."""
        if self._conn is None:
            return -errno.ENOTCONN
        byte = struct.pack("b", mode)
        for start in range(0, len(fds), HELPER_MAX_FDS):
            chunk = array.array("i", fds[start:start + HELPER_MAX_FDS])
            try:
                self._conn.sendmsg([byte], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             chunk.tobytes())])
                reply = self._conn.recv(1)
            except socket.timeout:
                log.error("repair helper: no answer within %.1f s", self.timeout)
                self.drop()
                return -errno.ETIMEDOUT
            except OSError as e:
                log.error("repair helper: %s", e)
                self.drop()
                return -(e.errno or errno.EIO)
            if reply != byte:
                log.error("repair helper: failed (it %s)",
                          "closed the connection" if not reply else f"answered {reply!r}")
                self.drop()
                return -errno.EIO
        return 0

    def close(self) -> None:
        """Close both sockets and remove the socket file."""
        self.drop()
        self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class RepairControl:
    """Sets TCP_REPAIR directly when allowed, else through a connected helper."""

    def __init__(self, helper: RepairHelper | None = None, direct: bool | None = None) -> None:
        self.helper = helper
        self._direct = direct

    @property
    def direct(self) -> bool:
        """TCP_REPAIR is allowed to this process now (given, or probed on every call).

        Probed late on purpose: the back-end is set up as root and then drops privileges, so
        what was true at start-up says nothing about the migration.
        """
        return direct_repair_allowed() if self._direct is None else self._direct

    @property
    def available(self) -> bool:
        """Repair mode can be set right now."""
        return self.direct or (self.helper is not None and self.helper.connected)

    def how(self) -> str:
        """How repair mode is obtained, for logs."""
        if self.direct:
            return "directly (CAP_NET_ADMIN)"
        if self.helper is not None and self.helper.connected:
            return f"through the helper on {self.helper.path}"
        return "not at all (no CAP_NET_ADMIN, no helper connected)"

    def set(self, fds: Iterable[int | socket.socket], mode: int) -> int:
        """TCP_REPAIR ``mode`` on every socket: 0, or the first negative errno."""
        nums = [f.fileno() if isinstance(f, socket.socket) else f for f in fds]
        if not nums:
            return 0
        if self.direct:
            for fd in nums:
                rc = set_repair(fd, mode)
                if rc < 0:
                    return rc
            return 0
        if self.helper is None:
            return -errno.EPERM
        return self.helper.command(mode, nums)


# ---- save ----

def _getint(sock: socket.socket, opt: int, step: str) -> int:
    """getsockopt(IPPROTO_TCP) as RepairError naming the step."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, opt)
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, step) from None


def _setint(sock: socket.socket, opt: int, value: int, step: str) -> None:
    """setsockopt(IPPROTO_TCP) as RepairError naming the step."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, step) from None


def _ioctl_int(sock: socket.socket, req: int, step: str) -> int:
    """An int-valued socket ioctl (SIOCINQ/SIOCOUTQ)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), req, b"\0\0\0\0")
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, step) from None
    return _INT.unpack(buf)[0]


#: Room for acknowledged bytes still at the head of the send queue's first buffer.
ACKED_HEAD_MAX = 1 << 20


def _peek_queue(sock: socket.socket, queue: int, length: int, step: str) -> bytes:
    """The last ``length`` bytes of the selected queue (repair mode).

    The send queue is peeked whole buffer by buffer: when the peer acknowledged part of the
    first one, those bytes (before the unacknowledged ``length`` that SIOCOUTQ counts) come
    too, so the queue's data is its tail. Anything else than ``length`` (plus such a head,
    for the send queue) is an error.
    """
    if length < 0 or length > MAX_QUEUE:
        raise RepairError(errno.EFBIG, step, f"queue of {length} bytes exceeds {MAX_QUEUE}")
    _setint(sock, TCP_REPAIR_QUEUE, queue, step)
    if length == 0:
        return b""
    room = length + (ACKED_HEAD_MAX if queue == TCP_SEND_QUEUE else 1)
    buf = bytearray(room)
    try:
        n = sock.recv_into(buf, room, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        n = 0
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, step) from None
    if n < length or n >= room or (n > length and queue != TCP_SEND_QUEUE):
        raise RepairError(errno.EIO, step, f"peeked {n} bytes of {length}")
    return bytes(buf[n - length:n])


def _addr(sa: tuple) -> tuple[IPAddr, int]:
    """(address, port) from a socket address, v4-mapped IPv6 unwrapped."""
    addr = ipaddress.ip_address(str(sa[0]).partition("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr, int(sa[1])


def save(sock: socket.socket) -> TcpSockState:
    """Read the state of a connected socket that is already in repair mode."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104)
        local, peer = _addr(sock.getsockname()), _addr(sock.getpeername())
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, "socket info") from None
    kstate, options, wscale = info[0], info[5], info[6]
    if kstate not in MOVABLE:
        raise RepairError(errno.ENOTCONN, "state",
                          f"{STATE_NAMES.get(kstate, kstate)} cannot be moved")
    fin_sent, fin_received = kstate in _FIN_SENT, kstate in _FIN_RECEIVED
    outq = _ioctl_int(sock, SIOCOUTQ, "send queue length")
    inq = _ioctl_int(sock, SIOCINQ, "receive queue length")
    # The send queue: write_seq counts a FIN we queued; the data does not contain it.
    _setint(sock, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "select send queue")
    write_seq = _getint(sock, TCP_QUEUE_SEQ, "send sequence") & 0xFFFFFFFF
    fin_in_queue = 1 if fin_sent and outq > 0 else 0
    snd = _peek_queue(sock, TCP_SEND_QUEUE, outq - fin_in_queue, "read send queue")
    _setint(sock, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "select receive queue")
    rcv_nxt = _getint(sock, TCP_QUEUE_SEQ, "receive sequence") & 0xFFFFFFFF
    # A peek offset (SO_PEEK_OFF, used by the data path) would make us start mid-queue and
    # would move on as we peek: switch it off and put it back afterwards.
    try:
        peek_off = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        if peek_off >= 0:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
    except OSError:
        peek_off = -1
    try:
        rcv = _peek_queue(sock, TCP_RECV_QUEUE, inq, "read receive queue")
    finally:
        if peek_off >= 0:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, peek_off)
            except OSError:
                pass
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _WINDOW.size)
        window = TcpWindow(*_WINDOW.unpack(raw))
        ts_val = _U32.unpack(struct.pack("=i", sock.getsockopt(
            socket.IPPROTO_TCP, TCP_TIMESTAMP)))[0]
        mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, "window/timestamp/MSS") from None
    _setint(sock, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "deselect queue")
    has_ws = bool(options & TCPI_OPT_WSCALE)
    return TcpSockState(
        local_addr=local[0], local_port=local[1], peer_addr=peer[0], peer_port=peer[1],
        kstate=kstate,
        # Rebuilt as established: a FIN we sent is sent again, so it gets its number back.
        snd_seq=(write_seq - len(snd) - (1 if fin_sent else 0)) & 0xFFFFFFFF,
        # Received data is rebuilt to end at rcv_nxt, so a FIN received stays acknowledged
        # (the peer's later segments are in sequence); the owner learns of it by the flag.
        rcv_seq=(rcv_nxt - len(rcv)) & 0xFFFFFFFF,
        snd_queue=snd, rcv_queue=rcv, mss=mss,
        snd_wscale=(wscale & 0xF) if has_ws else -1, rcv_wscale=(wscale >> 4) if has_ws else -1,
        sack=bool(options & TCPI_OPT_SACK), timestamps=bool(options & TCPI_OPT_TIMESTAMPS),
        ts_val=ts_val, window=window, fin_sent=fin_sent, fin_received=fin_received,
        nodelay=nodelay)


# ---- restore ----

def _sockaddr(addr: IPAddr, port: int) -> tuple:
    """The socket address tuple for ``addr``'s family."""
    return (str(addr), port) if addr.version == 4 else (str(addr), port, 0, 0)


def new_socket(state: TcpSockState) -> socket.socket:
    """A fresh socket of the right family with its bind options, ready for repair mode.

    The options are set here, before repair mode, and never after it: turning TCP_REPAIR on
    gives the socket forced address reuse (the kernel's SK_FORCE_REUSE, which lets bind() take
    a port that a listener, a TIME_WAIT or anything else holds), and setting SO_REUSEADDR
    afterwards replaces that with plain reuse, so bind() to a port our own listener forwards
    (every inbound connection of a -t port) fails with EADDRINUSE. Every path (:func:`restore`,
    the migration's batches, direct or through the helper) creates its sockets here.
    """
    family = socket.AF_INET if state.local_addr.version == 4 else socket.AF_INET6
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, "socket") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)   # see guard()
        sock.setsockopt(SOL_IP, IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError as e:
        sock.close()
        raise RepairError(e.errno or errno.EIO, "socket options") from None
    return sock


def _fill(sock: socket.socket, queue: int, data: bytes, step: str) -> None:
    """Write ``data`` into the selected queue (repair mode), in chunks the kernel accepts."""
    _setint(sock, TCP_REPAIR_QUEUE, queue, step)
    view = memoryview(data)
    chunk = FILL_CHUNK
    while view:
        try:
            n = sock.send(view[:chunk], socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno in (errno.ENOMEM, errno.EAGAIN, errno.ENOBUFS) and chunk > 1024:
                chunk //= 2
                continue
            raise RepairError(e.errno or errno.EIO, step) from None
        view = view[n:]


def _grow_buffers(sock: socket.socket, state: TcpSockState) -> None:
    """Make room for the queues being restored (forced sizes need CAP_NET_ADMIN)."""
    for opt, force, size in ((socket.SO_SNDBUF, SO_SNDBUFFORCE, len(state.snd_queue)),
                             (socket.SO_RCVBUF, SO_RCVBUFFORCE, len(state.rcv_queue))):
        if size <= 0:
            continue
        want = size + 65536          # the kernel doubles it: room for the data and overhead
        try:
            if sock.getsockopt(socket.SOL_SOCKET, opt) >= want:
                continue
            sock.setsockopt(socket.SOL_SOCKET, force, want)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, want)
            except OSError:
                pass


def restore_in_repair(sock: socket.socket, state: TcpSockState,
                      drop: DropFilter = CLASSIC) -> None:
    """Rebuild ``state`` on ``sock``, from :func:`new_socket` and already in repair mode.

    Leaves the socket in repair mode; :func:`finish` takes it out. Raises RepairError.
    The socket is frozen while it is rebuilt: once connect() has hashed it, a segment from
    the peer would otherwise land before the saved receive queue is back in place. A value
    of the record that the kernel interface cannot carry is a RepairError too (EINVAL).
    """
    try:
        _restore_in_repair(sock, state, drop)
    except (ValueError, OverflowError, struct.error) as e:
        raise RepairError(errno.EINVAL, "record", str(e)) from None


def _restore_in_repair(sock: socket.socket, state: TcpSockState, drop: DropFilter) -> None:
    frozen = freeze(sock, drop) == 0     # best effort (see DropFilter)
    _grow_buffers(sock, state)
    # The MSS option set later (TCP_REPAIR_OPTIONS) only clamps: the segment size the send
    # queue is cut into comes from the MSS computed at connect(), which would otherwise be the
    # 536-byte default; thousands of tiny "unacknowledged" segments then crawl out in loss
    # recovery. A user MSS (at most MAX_TCP_WINDOW) makes connect() start from a real one.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, min(state.mss, USER_MSS_MAX))
    except OSError:
        pass
    _setint(sock, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "select send queue")
    _setint(sock, TCP_QUEUE_SEQ, _signed(state.snd_seq), "set send sequence")
    _setint(sock, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "select receive queue")
    _setint(sock, TCP_QUEUE_SEQ, _signed(state.rcv_seq), "set receive sequence")
    _bind_and_connect(sock, state)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 0)    # no lasting user clamp
    except OSError:
        pass
    opts = [_OPT.pack(TCPOPT_MSS, state.mss)]
    if state.snd_wscale >= 0:
        opts.append(_OPT.pack(TCPOPT_WINDOW, state.snd_wscale | state.rcv_wscale << 16))
    if state.sack:
        opts.append(_OPT.pack(TCPOPT_SACK_PERM, 0))
    if state.timestamps:
        opts.append(_OPT.pack(TCPOPT_TIMESTAMP, 0))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, b"".join(opts))
        if state.timestamps:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, _signed(state.ts_val))
        if state.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, "options/timestamp") from None
    _fill(sock, TCP_SEND_QUEUE, state.snd_queue, "fill send queue")
    _fill(sock, TCP_RECV_QUEUE, state.rcv_queue, "fill receive queue")
    _setint(sock, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "deselect queue")
    w = state.window
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW,
                        _WINDOW.pack(w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup))
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, "window") from None
    if frozen and thaw(sock) < 0:
        raise RepairError(errno.EIO, "thaw")


def _bind_and_connect(sock: socket.socket, state: TcpSockState) -> None:
    """Put the connection back on exactly its saved local address and port, or raise.

    connect() in repair mode sends nothing and hashes the socket as established. Whatever
    bind() or the fallback did, the address the socket really got is checked afterwards: a
    connection restored on another port is dead (the peer's next segment meets whatever holds
    the right port, a listener answers it with an RST), so it is an error, never a success.
    """
    refused = ""
    try:
        sock.bind(_sockaddr(state.local_addr, state.local_port))
    except OSError as e:
        if e.errno != errno.EADDRINUSE or not _bind_for_connect(sock, state):
            raise RepairError(e.errno or errno.EIO, "bind",
                              f"{state.local_addr} port {state.local_port}: {e.strerror}"
                              ) from None
        refused = " (bind() refused the port)"
    try:
        sock.connect(_sockaddr(state.peer_addr, state.peer_port))
        got = _addr(sock.getsockname())
    except OSError as e:
        raise RepairError(e.errno or errno.EIO, "connect",
                          f"to {state.peer_addr} port {state.peer_port}: {e.strerror}") from None
    if got != (state.local_addr, state.local_port):
        raise RepairError(errno.EADDRINUSE, "bind",
                          f"wanted {state.local_addr} port {state.local_port}, got {got[0]} "
                          f"port {got[1]}{refused}")


def _bind_for_connect(sock: socket.socket, state: TcpSockState) -> bool:
    """bind() refused the port: leave it for connect() to take.

    A TIME_WAIT of another connection from the same port (another peer, a socket without
    SO_REUSEADDR) makes bind() refuse the port even with SO_REUSEADDR, though the 4-tuple is
    free: connect() checks the 4-tuple. So bind the address alone (IP_BIND_ADDRESS_NO_PORT) and
    give the socket a local port range of that one port (IP_LOCAL_PORT_RANGE). False where the
    kernel has no such options (before Linux 6.3): the bind() error stands.

    Only a backstop: the forced reuse of repair mode (see :func:`new_socket`) makes bind() take
    such a port itself. And the kernel silently ignores a range outside
    net.ipv4.ip_local_port_range (connect() then takes any port), and connect() never takes a
    port that bind() holds (a listener's): the caller checks the port the socket really got.
    """
    port = state.local_port
    try:
        sock.setsockopt(SOL_IP, IP_LOCAL_PORT_RANGE, struct.pack("=I", port | port << 16))
        sock.setsockopt(SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind(_sockaddr(state.local_addr, 0))
    except OSError:
        return False
    return True


def finish(sock: socket.socket, state: TcpSockState) -> None:
    """After repair mode is off: send our FIN again if one had been sent."""
    if state.fin_sent:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise RepairError(e.errno or errno.EIO, "resend FIN") from None


def _signed(value: int) -> int:
    """A u32 as the C int setsockopt takes."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def restore(state: TcpSockState, control: RepairControl) -> socket.socket:
    """A new connected socket equivalent to ``state``, out of repair mode; raises RepairError."""
    sock = new_socket(state)
    try:
        rc = control.set([sock], TCP_REPAIR_ON)
        if rc < 0:
            raise RepairError(-rc, "repair on")
        restore_in_repair(sock, state)
        rc = control.set([sock], TCP_REPAIR_OFF)
        if rc < 0:
            raise RepairError(-rc, "repair off")
        finish(sock, state)
    except BaseException:
        # Still in repair mode on failure: closing sends nothing to the peer.
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def wait_acked(sock: socket.socket, timeout: float) -> bool:
    """Wait (bounded) until the send queue is empty; for tests and benchmarks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ioctl_int(sock, SIOCOUTQ, "send queue length") == 0:
            return True
        time.sleep(0.005)
    return False
