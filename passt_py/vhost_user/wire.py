# SPDX-License-Identifier: MIT
"""vhost-user wire format: message codes, header flags, feature bits and payload layouts.

Theory of operation: a vhost-user message is a 12-byte header (u32 request, u32 flags, u32 payload
size, native byte order) followed by ``size`` payload bytes; file descriptors travel beside it as
SCM_RIGHTS ancillary data. Every payload layout here is a frozen dataclass with ``decode`` (which
validates the exact size and the fields' own constraints, raising :class:`WireError`) and
``encode``. Whether a request is legal in the current state is the session's business, not this
module's. :class:`FrameReader` splits a byte stream into messages without doing any I/O itself:
the socket adapter asks it how many bytes it wants next, so a read never crosses into the next
message (which keeps each message's descriptors with it).

Numbers and layouts follow QEMU's docs/interop/vhost-user.rst.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

# ---- header ----
HEADER = struct.Struct("=III")
HEADER_SIZE = HEADER.size  # 12

#: Largest payload accepted; a header announcing more is a framing error (connection closed).
#: The largest layout we understand is the memory table (8 + 8 * 32 bytes); 4 KiB leaves room for
#: requests we do not implement, which are read in full and refused.
MAX_PAYLOAD = 4096

#: At most this many descriptors come with one message.
MAX_FDS = 8

VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3


class WireError(ValueError):
    """A message or payload does not match its layout."""


class FramingError(WireError):
    """The byte stream cannot be split into messages any more: the connection must close."""


class Request(enum.IntEnum):
    """Front-end request codes."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


def request_name(code: int) -> str:
    """A readable name for a request code, known or not (for log lines)."""
    try:
        return Request(code).name
    except ValueError:
        return f"request#{code}"


# ---- feature bits (virtio and vhost) ----
VIRTIO_NET_F_MRG_RXBUF = 15
VHOST_F_LOG_ALL = 26
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32


class ProtocolFeature(enum.IntEnum):
    """vhost-user protocol feature bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19


def bit(n: int) -> int:
    """The mask of feature bit ``n``."""
    return 1 << n


# ---- vring constants ----
#: SET_VRING_KICK/CALL/ERR payload: ring index in bits 0-7, bit 8 = no descriptor attached.
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8
#: SET_VRING_ADDR flag: log writes to the used ring.
VRING_F_LOG = 1 << 0
#: Largest split-ring size (virtio 1.x: 32768, a power of two).
VRING_MAX_SIZE = 32768

#: Memory table limits.
MAX_MEM_REGIONS = 8

#: SET_DEVICE_STATE_FD directions and phases.
DEVICE_STATE_SAVE = 0
DEVICE_STATE_LOAD = 1
DEVICE_STATE_PHASE_STOPPED = 0
#: SET_DEVICE_STATE_FD reply: bit 8 = the back-end returns no descriptor of its own.
DEVICE_STATE_NOFD = 1 << 8

U64_MAX = (1 << 64) - 1


# ---- header and message ----
@dataclass(frozen=True)
class Header:
    """The fixed 12-byte message header."""

    request: int
    flags: int
    size: int

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        """Parse a header; a size above MAX_PAYLOAD is a FramingError."""
        if len(data) != HEADER_SIZE:
            raise FramingError(f"header is {len(data)} bytes, needs {HEADER_SIZE}")
        request, flags, size = HEADER.unpack(data)
        if size > MAX_PAYLOAD:
            raise FramingError(f"{request_name(request)}: payload size {size} > {MAX_PAYLOAD}")
        return cls(request, flags, size)

    def encode(self) -> bytes:
        """The header's wire bytes."""
        return HEADER.pack(self.request, self.flags, self.size)

    @property
    def need_reply(self) -> bool:
        """The sender asked for a REPLY_ACK."""
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def version(self) -> int:
        """The protocol version in the low 2 flag bits."""
        return self.flags & VERSION_MASK


@dataclass(frozen=True)
class Message:
    """One message: request code, flags and raw payload (descriptors travel separately)."""

    request: int
    flags: int = VERSION
    payload: bytes = b""

    @property
    def need_reply(self) -> bool:
        """The sender asked for a REPLY_ACK."""
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        """Readable request name."""
        return request_name(self.request)

    def encode(self) -> bytes:
        """Header plus payload, ready to send."""
        return Header(self.request, self.flags, len(self.payload)).encode() + self.payload


def reply(request: int, payload: bytes) -> Message:
    """A reply message to ``request`` (reply flag set, version 1)."""
    return Message(request, VERSION | FLAG_REPLY, payload)


# ---- payloads ----
def _exact(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise WireError(f"{what} payload is {len(data)} bytes, needs {size}")


_U64 = struct.Struct("=Q")
_STATE = struct.Struct("=II")
_ADDR = struct.Struct("=IIQQQQ")
_REGION = struct.Struct("=QQQQ")
_MEM_HDR = struct.Struct("=II")
_LOG = struct.Struct("=QQ")


@dataclass(frozen=True)
class U64:
    """A single u64 payload."""

    value: int
    SIZE = _U64.size

    @classmethod
    def decode(cls, data: bytes) -> "U64":
        """Parse exactly 8 bytes."""
        _exact(data, _U64.size, "u64")
        return cls(_U64.unpack(data)[0])

    def encode(self) -> bytes:
        """Wire bytes."""
        return _U64.pack(self.value)


@dataclass(frozen=True)
class VringState:
    """A (ring index, number) pair: SET_VRING_NUM/BASE, GET_VRING_BASE, SET_VRING_ENABLE."""

    index: int
    num: int
    SIZE = _STATE.size

    @classmethod
    def decode(cls, data: bytes) -> "VringState":
        """Parse exactly 8 bytes."""
        _exact(data, _STATE.size, "vring state")
        return cls(*_STATE.unpack(data))

    def encode(self) -> bytes:
        """Wire bytes."""
        return _STATE.pack(self.index, self.num)


@dataclass(frozen=True)
class VringAddr:
    """SET_VRING_ADDR: front-end virtual addresses of a split ring's parts."""

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int
    SIZE = _ADDR.size

    @classmethod
    def decode(cls, data: bytes) -> "VringAddr":
        """Parse exactly 40 bytes; only the LOG flag is defined."""
        _exact(data, _ADDR.size, "vring address")
        addr = cls(*_ADDR.unpack(data))
        if addr.flags & ~VRING_F_LOG:
            raise WireError(f"vring address flags {addr.flags:#x} has unknown bits")
        return addr

    def encode(self) -> bytes:
        """Wire bytes."""
        return _ADDR.pack(self.index, self.flags, self.desc_user_addr, self.used_user_addr,
                          self.avail_user_addr, self.log_guest_addr)


@dataclass(frozen=True)
class VringFile:
    """SET_VRING_KICK/CALL/ERR: ring index and whether a descriptor is attached."""

    index: int
    nofd: bool

    SIZE = _U64.size

    @classmethod
    def decode(cls, data: bytes) -> "VringFile":
        """Parse a u64 whose only defined bits are the index (0-7) and no-fd (8)."""
        value = U64.decode(data).value
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise WireError(f"vring file payload {value:#x} has unknown bits")
        return cls(value & VRING_IDX_MASK, bool(value & VRING_NOFD_MASK))

    def encode(self) -> bytes:
        """Wire bytes."""
        return U64((self.index & VRING_IDX_MASK) | (VRING_NOFD_MASK if self.nofd else 0)).encode()


@dataclass(frozen=True)
class MemoryRegion:
    """One guest memory region: guest-physical base, size, front-end address, offset in its fd."""

    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int
    SIZE = _REGION.size

    @classmethod
    def decode(cls, data: bytes) -> "MemoryRegion":
        """Parse exactly 32 bytes; the region must be non-empty and not wrap any address space."""
        _exact(data, _REGION.size, "memory region")
        region = cls(*_REGION.unpack(data))
        region.validate()
        return region

    def validate(self) -> None:
        """Raise WireError unless the region is non-empty and no range wraps past 2^64."""
        if self.size == 0:
            raise WireError("memory region of size 0")
        for name, base in (("guest address", self.guest_phys_addr),
                           ("user address", self.user_addr),
                           ("mmap offset", self.mmap_offset)):
            if base + self.size - 1 > U64_MAX:
                raise WireError(f"memory region {name} {base:#x} + {self.size:#x} wraps")

    def encode(self) -> bytes:
        """Wire bytes."""
        return _REGION.pack(self.guest_phys_addr, self.size, self.user_addr, self.mmap_offset)


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


@dataclass(frozen=True)
class MemoryTable:
    """SET_MEM_TABLE: 1 to 8 regions, none overlapping another in guest or user addresses."""

    regions: tuple[MemoryRegion, ...] = field(default_factory=tuple)

    @classmethod
    def decode(cls, data: bytes) -> "MemoryTable":
        """Parse the count, padding and regions; accept the exact or the full 8-slot size."""
        if len(data) < _MEM_HDR.size:
            raise WireError(f"memory table payload is {len(data)} bytes, needs at least 8")
        count, _padding = _MEM_HDR.unpack_from(data)
        if not 1 <= count <= MAX_MEM_REGIONS:
            raise WireError(f"memory table has {count} regions, needs 1..{MAX_MEM_REGIONS}")
        exact = _MEM_HDR.size + count * _REGION.size
        full = _MEM_HDR.size + MAX_MEM_REGIONS * _REGION.size
        if len(data) not in (exact, full):
            raise WireError(f"memory table payload is {len(data)} bytes for {count} regions, "
                            f"needs {exact} or {full}")
        regions = tuple(
            MemoryRegion.decode(data[_MEM_HDR.size + i * _REGION.size:
                                     _MEM_HDR.size + (i + 1) * _REGION.size])
            for i in range(count))
        table = cls(regions)
        table.validate()
        return table

    def validate(self) -> None:
        """Raise WireError on a bad count, a bad region or overlapping regions."""
        if not 1 <= len(self.regions) <= MAX_MEM_REGIONS:
            raise WireError(f"memory table has {len(self.regions)} regions, "
                            f"needs 1..{MAX_MEM_REGIONS}")
        for region in self.regions:
            region.validate()
        for i, a in enumerate(self.regions):
            for b in self.regions[i + 1:]:
                if _overlap((a.guest_phys_addr, a.size), (b.guest_phys_addr, b.size)):
                    raise WireError(f"memory regions overlap in guest addresses: "
                                    f"{a.guest_phys_addr:#x} and {b.guest_phys_addr:#x}")
                if _overlap((a.user_addr, a.size), (b.user_addr, b.size)):
                    raise WireError(f"memory regions overlap in user addresses: "
                                    f"{a.user_addr:#x} and {b.user_addr:#x}")

    def encode(self) -> bytes:
        """Wire bytes (exact size: only the regions in use)."""
        return _MEM_HDR.pack(len(self.regions), 0) + b"".join(r.encode() for r in self.regions)


@dataclass(frozen=True)
class LogDescription:
    """SET_LOG_BASE with LOG_SHMFD: size of the dirty log and its offset in the attached fd."""

    size: int
    offset: int
    SIZE = _LOG.size

    @classmethod
    def decode(cls, data: bytes) -> "LogDescription":
        """Parse exactly 16 bytes; the log must be non-empty and not wrap."""
        _exact(data, _LOG.size, "log description")
        log = cls(*_LOG.unpack(data))
        if log.size == 0:
            raise WireError("dirty log of size 0")
        if log.offset + log.size - 1 > U64_MAX:
            raise WireError("dirty log offset + size wraps")
        return log

    def encode(self) -> bytes:
        """Wire bytes."""
        return _LOG.pack(self.size, self.offset)


@dataclass(frozen=True)
class DeviceStateParams:
    """SET_DEVICE_STATE_FD: transfer direction (0 save, 1 load) and migration phase (0 stopped)."""

    direction: int
    phase: int
    SIZE = _STATE.size

    @classmethod
    def decode(cls, data: bytes) -> "DeviceStateParams":
        """Parse exactly 8 bytes; only the defined direction and phase values are accepted."""
        _exact(data, _STATE.size, "device state parameters")
        params = cls(*_STATE.unpack(data))
        if params.direction not in (DEVICE_STATE_SAVE, DEVICE_STATE_LOAD):
            raise WireError(f"device state direction {params.direction} is neither save nor load")
        if params.phase != DEVICE_STATE_PHASE_STOPPED:
            raise WireError(f"device state phase {params.phase} is not 'stopped' (0)")
        return params

    def encode(self) -> bytes:
        """Wire bytes."""
        return _STATE.pack(self.direction, self.phase)


@dataclass(frozen=True)
class RarpPayload:
    """SEND_RARP: a u64 whose first 6 bytes are the guest's MAC address."""

    mac: bytes
    SIZE = _U64.size

    @classmethod
    def decode(cls, data: bytes) -> "RarpPayload":
        """Parse exactly 8 bytes and keep the first six."""
        _exact(data, _U64.size, "RARP")
        return cls(bytes(data[:6]))

    def encode(self) -> bytes:
        """Wire bytes (MAC then two zero bytes)."""
        if len(self.mac) != 6:
            raise WireError(f"MAC is {len(self.mac)} bytes, needs 6")
        return self.mac + b"\0\0"


# ---- stream framing ----
class FrameReader:
    """Splits a byte stream into messages; sans-IO.

    Ask :meth:`need` how many bytes to read next (never more than the rest of the current
    message), then :meth:`feed` what was read with any descriptors that came with it. When a
    message completes, ``feed`` returns it with all descriptors received since the previous one.
    The caller owns those descriptors. :meth:`take_fds` hands back descriptors of an incomplete
    message (to close them when the connection ends).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header: Header | None = None
        self._fds: list[int] = []

    def need(self) -> int:
        """How many more bytes the current message needs (at least 1)."""
        if self._header is None:
            return HEADER_SIZE - len(self._buf)
        return self._header.size - len(self._buf)

    def feed(self, data: bytes, fds: list[int] | None = None) -> tuple[Message, list[int]] | None:
        """Add bytes (at most need()) and descriptors; return a completed message, if any."""
        if fds:
            self._fds.extend(fds)
        if self._header is None:
            take = min(len(data), HEADER_SIZE - len(self._buf))
            if take < len(data):
                raise FramingError("fed more bytes than need()")
            self._buf += data
            if len(self._buf) < HEADER_SIZE:
                return None
            self._header = Header.decode(bytes(self._buf))
            self._buf.clear()
        elif data:
            if len(self._buf) + len(data) > self._header.size:
                raise FramingError("fed more bytes than need()")
            self._buf += data
        if len(self._buf) < self._header.size:
            return None
        msg = Message(self._header.request, self._header.flags, bytes(self._buf))
        fds_out, self._fds = self._fds, []
        self._header = None
        self._buf.clear()
        return msg, fds_out

    @property
    def idle(self) -> bool:
        """No partial message is buffered."""
        return self._header is None and not self._buf

    def take_fds(self) -> list[int]:
        """Descriptors received for the incomplete message; the caller must close them."""
        fds, self._fds = self._fds, []
        return fds
