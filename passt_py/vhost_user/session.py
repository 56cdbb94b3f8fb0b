# SPDX-License-Identifier: MIT
"""The vhost-user back-end session: a sans-IO state machine.

Theory of operation: :meth:`Session.handle` takes one decoded message and the descriptors that
came with it and returns a list of outputs: at most one :class:`Reply` for the transport to send,
and events for the embedding code (the event loop, the network layer, the migration code). The
session never touches a socket; it drives the device through the narrow :class:`Device` protocol
(modelled on rust-vmm's back-end trait), so it can be tested against a fake.

State kept here: negotiated virtio and protocol features, ownership, and per ring whether it is
configured (size, addresses), started (kick descriptor set, until GET_VRING_BASE) and enabled.
Every request is checked against that state; a request that is malformed or illegal raises
:class:`ProtocolError` inside its handler, which turns into an error reply when the front-end
expects one (REPLY_ACK with NEED_REPLY, or a request with its own reply) and a log line always.
The session survives every bad message; only framing errors (handled by the transport) end a
connection.

Descriptor ownership: ``handle`` owns the descriptors it is given. A handler takes exactly the
ones its request carries and hands them to the device (which then owns them) or to an event
(whose consumer then owns them); all others are closed before ``handle`` returns.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, TypeVar, Union

from passt_py.vhost_user import wire
from passt_py.vhost_user.events import (
    DeviceStateTransfer, Event, RingEnabled, RingKickFd, RingStarted, RingStopped, SendRarp)
from passt_py.vhost_user.wire import (
    DeviceStateParams, LogDescription, MemoryRegion, MemoryTable, Message, ProtocolFeature,
    RarpPayload, Request, U64, VringAddr, VringFile, VringState, WireError, bit)

log = logging.getLogger(__name__)

#: Protocol features this back-end offers: the single place that decides them.
OFFERED_PROTOCOL_FEATURES = (
    bit(ProtocolFeature.MQ)
    | bit(ProtocolFeature.LOG_SHMFD)
    | bit(ProtocolFeature.RARP)
    | bit(ProtocolFeature.REPLY_ACK)
    | bit(ProtocolFeature.DEVICE_STATE)
)


class ProtocolError(Exception):
    """A request that is malformed or illegal in the current state; ``errno`` is the cause."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.errno = code


class DeviceError(OSError):
    """The device refused a request (bad address, unmappable region ...)."""


class Device(Protocol):
    """What the session needs from a virtio device (the network device implements it).

    Methods taking a descriptor own it from the call on, also when they raise.
    Methods raise :class:`DeviceError` (or another OSError) to refuse a request.
    """

    num_queues: int
    offered_features: int

    def set_features(self, features: int) -> None:
        """Apply the acknowledged virtio feature bits."""

    def set_mem_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> None:
        """Replace the guest memory table (one descriptor per region)."""

    def set_log_base(self, desc: LogDescription, fd: int) -> None:
        """Map the dirty-page log."""

    def set_log_fd(self, fd: int) -> None:
        """Keep the log-change notification descriptor."""

    def set_vring_num(self, index: int, num: int) -> None:
        """Set a ring's size."""

    def set_vring_addr(self, addr: VringAddr) -> None:
        """Set a ring's addresses (front-end virtual addresses) and log flag."""

    def set_vring_base(self, index: int, base: int) -> None:
        """Set the next available index the ring will process."""

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        """Replace the ring's kick descriptor (None: polling)."""

    def set_vring_call(self, index: int, fd: int | None) -> None:
        """Replace the ring's call descriptor (None: no notifications)."""

    def set_vring_err(self, index: int, fd: int | None) -> None:
        """Replace the ring's error descriptor."""

    def set_vring_enabled(self, index: int, enabled: bool) -> None:
        """Enable or disable a ring."""

    def start_ring(self, index: int) -> None:
        """Start processing a configured ring."""

    def stop_ring(self, index: int) -> int:
        """Stop a started ring; return the next available index it would have processed."""

    def reset(self) -> None:
        """Forget the front-end: unmap memory, stop rings, close every descriptor."""


# ---- outputs ----
@dataclass(frozen=True)
class Reply:
    """A message for the transport to send back."""

    message: Message


Output = Union[Reply, Event]


# ---- internal bookkeeping ----
@dataclass
class _Ring:
    """What the session knows about one ring."""

    num: int | None = None
    addr: bool = False
    base: int = 0
    started: bool = False
    enabled: bool = False
    kick: bool = False


class _Fds:
    """Descriptors that came with one message; whatever is not taken gets closed."""

    def __init__(self, fds: Sequence[int]) -> None:
        self._fds = list(fds)

    def take(self, count: int, what: str) -> list[int]:
        """Take exactly ``count`` descriptors or raise."""
        if len(self._fds) != count:
            raise ProtocolError(errno.EINVAL,
                                f"{what} needs {count} descriptor(s), got {len(self._fds)}")
        taken, self._fds = self._fds, []
        return taken

    def none(self, what: str) -> None:
        """Raise if any descriptor came with a request that takes none."""
        if self._fds:
            raise ProtocolError(errno.EINVAL,
                                f"{what} takes no descriptors, got {len(self._fds)}")

    def close(self) -> None:
        """Close every descriptor not taken."""
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


_P = TypeVar("_P")

#: Marker a handler returns to hold its reply back (CHECK_DEVICE_STATE during a transfer).
_DEFER = b"\0defer"


def _empty(msg: Message) -> None:
    """Refuse a payload on a request that takes none."""
    if msg.payload:
        raise ProtocolError(errno.EINVAL,
                            f"{msg.name} takes no payload, got {len(msg.payload)} bytes")


def _decode(kind: type[_P], msg: Message) -> _P:
    """Decode ``msg``'s payload as ``kind``; a layout error becomes a ProtocolError."""
    try:
        return kind.decode(msg.payload)
    except WireError as exc:
        raise ProtocolError(errno.EINVAL, f"{msg.name}: {exc}") from None


class Session:
    """One front-end's session with the device; see the module docstring."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._clear()

    def _clear(self) -> None:
        """Back to the state of a fresh connection."""
        self._rings = [_Ring() for _ in range(self.device.num_queues)]
        self.features = 0
        self.protocol_features = 0
        self.owned = False
        self._transfer_active = False
        self._transfer_result = 0
        self._pending_check: Message | None = None

    # ---- public API ----
    @property
    def offered_features(self) -> int:
        """Virtio/vhost feature bits offered: the device's plus protocol-feature negotiation."""
        return self.device.offered_features | bit(wire.VHOST_USER_F_PROTOCOL_FEATURES)

    def has_protocol_feature(self, feature: ProtocolFeature) -> bool:
        """Whether ``feature`` was negotiated."""
        return bool(self.protocol_features & bit(feature))

    def ring_started(self, index: int) -> bool:
        """Whether ring ``index`` is started."""
        return self._rings[index].started

    def ring_enabled(self, index: int) -> bool:
        """Whether ring ``index`` is enabled."""
        return self._rings[index].enabled

    @property
    def suspended(self) -> bool:
        """All rings stopped: no guest-memory writes, no notifications."""
        return not any(r.started for r in self._rings)

    def handle(self, msg: Message, fds: Sequence[int] = ()) -> list[Output]:
        """Process one request; return the reply (if any) and events, in order."""
        events: list[Output] = []
        held = _Fds(fds)
        handler = _HANDLERS.get(msg.request)
        try:
            if msg.flags & wire.VERSION_MASK != wire.VERSION:
                raise ProtocolError(errno.EPROTO,
                                    f"{msg.name}: version {msg.flags & wire.VERSION_MASK}, "
                                    f"needs {wire.VERSION}")
            if handler is None:
                raise ProtocolError(errno.ENOSYS, f"{msg.name} is not supported")
            own = handler(self, msg, held, events)
        except ProtocolError as exc:
            log.warning("vhost-user %s refused: %s", msg.name, exc)
            return self._error_reply(msg, exc.errno) + events
        except OSError as exc:
            log.warning("vhost-user %s failed: %s", msg.name, exc)
            return self._error_reply(msg, exc.errno or errno.EIO) + events
        except ValueError as exc:
            log.warning("vhost-user %s refused: %s", msg.name, exc)
            return self._error_reply(msg, errno.EINVAL) + events
        except Exception:  # noqa: BLE001 - a front-end must never be able to end the process
            log.exception("vhost-user %s: internal error", msg.name)
            return self._error_reply(msg, errno.EIO) + events
        finally:
            held.close()
        if own is _DEFER:
            self._pending_check = msg
            return events
        if own is not None:
            return [Reply(wire.reply(msg.request, own))] + events
        if msg.need_reply and self.has_protocol_feature(ProtocolFeature.REPLY_ACK):
            return [Reply(wire.reply(msg.request, U64(0).encode()))] + events
        return events

    def reject(self, msg: Message, reason: str, code: int = errno.EINVAL) -> list[Output]:
        """Refuse a message the transport found unusable (e.g. too many descriptors)."""
        log.warning("vhost-user %s refused: %s", msg.name, reason)
        return self._error_reply(msg, code)

    def finish_device_state(self, result: int) -> list[Output]:
        """Record a device-state transfer's result (0 ok); answer a waiting CHECK_DEVICE_STATE."""
        self._transfer_active = False
        self._transfer_result = result
        if self._pending_check is None:
            return []
        msg, self._pending_check = self._pending_check, None
        return [Reply(wire.reply(msg.request, U64(result).encode()))]

    @property
    def device_state_result(self) -> int:
        """What CHECK_DEVICE_STATE would answer now (0 = success)."""
        return self._transfer_result

    def reset(self) -> list[Event]:
        """The front-end is gone: reset the device and forget everything negotiated."""
        events: list[Event] = []
        for index, ring in enumerate(self._rings):
            if ring.started:
                events.append(RingStopped(index, self.device.stop_ring(index)))
            if ring.kick or ring.started:
                events.append(RingKickFd(index, None))
        self.device.reset()
        self._clear()
        return events

    # ---- helpers ----
    def _own_reply(self, msg: Message) -> bool:
        req = msg.request
        if req in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM,
                   Request.GET_VRING_BASE, Request.SET_DEVICE_STATE_FD,
                   Request.CHECK_DEVICE_STATE):
            return True
        return req == Request.SET_LOG_BASE and self.has_protocol_feature(ProtocolFeature.LOG_SHMFD)

    def _error_reply(self, msg: Message, code: int) -> list[Output]:
        code = code or errno.EIO
        req = msg.request
        if self._own_reply(msg):
            if req in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                       Request.GET_QUEUE_NUM, Request.GET_VRING_BASE):
                # No error value exists in these replies: an empty payload cannot be mistaken
                # for an answer, and the front-end fails the request on the size.
                return [Reply(wire.reply(req, b""))]
            if req == Request.SET_DEVICE_STATE_FD:
                return [Reply(wire.reply(req, U64((code & 0xFF or 1) | wire.DEVICE_STATE_NOFD)
                                          .encode()))]
            return [Reply(wire.reply(req, U64(code).encode()))]
        if msg.need_reply and self.has_protocol_feature(ProtocolFeature.REPLY_ACK):
            return [Reply(wire.reply(req, U64(code).encode()))]
        return []

    def _ring(self, msg: Message, index: int) -> _Ring:
        if not 0 <= index < len(self._rings):
            raise ProtocolError(errno.ERANGE,
                                f"{msg.name}: ring {index} out of range 0..{len(self._rings) - 1}")
        return self._rings[index]

    def _require(self, msg: Message, feature: ProtocolFeature) -> None:
        if not self.has_protocol_feature(feature):
            raise ProtocolError(errno.ENOTSUP,
                                f"{msg.name} needs protocol feature {feature.name}")

    # ---- handlers: each returns its own reply payload, or None ----
    def _get_features(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        _empty(msg)
        fds.none(msg.name)
        return U64(self.offered_features).encode()

    def _set_features(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        value = _decode(U64, msg).value
        unknown = value & ~self.offered_features
        if unknown:
            raise ProtocolError(errno.EINVAL, f"features {unknown:#x} were not offered")
        self.device.set_features(value)
        self.features = value
        if not value & bit(wire.VHOST_USER_F_PROTOCOL_FEATURES):
            # Without protocol features there is no SET_VRING_ENABLE: rings are enabled now.
            for index, ring in enumerate(self._rings):
                if not ring.enabled:
                    self.device.set_vring_enabled(index, True)
                    ring.enabled = True
                    events.append(RingEnabled(index, True))
        log.info("vhost-user features %#x", value)
        return None

    def _get_protocol_features(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        _empty(msg)
        fds.none(msg.name)
        return U64(OFFERED_PROTOCOL_FEATURES).encode()

    def _set_protocol_features(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        value = _decode(U64, msg).value
        unknown = value & ~OFFERED_PROTOCOL_FEATURES
        if unknown:
            raise ProtocolError(errno.EINVAL, f"protocol features {unknown:#x} were not offered")
        self.protocol_features = value
        log.info("vhost-user protocol features %#x", value)
        return None

    def _get_queue_num(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        _empty(msg)
        fds.none(msg.name)
        # For a network device the count is in queue pairs (one RX plus one TX ring).
        return U64(len(self._rings) // 2).encode()

    def _set_owner(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        _empty(msg)
        fds.none(msg.name)
        self.owned = True
        return None

    def _reset_owner(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        _empty(msg)
        fds.none(msg.name)
        # Deprecated; the specification recommends disabling all rings and nothing more.
        for index, ring in enumerate(self._rings):
            if ring.enabled:
                self.device.set_vring_enabled(index, False)
                ring.enabled = False
                events.append(RingEnabled(index, False))
        return None

    def _set_mem_table(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        table = _decode(MemoryTable, msg)
        taken = fds.take(len(table.regions), msg.name)
        self.device.set_mem_table(table.regions, taken)
        log.info("vhost-user memory table: %s", ", ".join(
            f"gpa {r.guest_phys_addr:#x}+{r.size:#x}" for r in table.regions))
        return None

    def _set_log_base(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        self._require(msg, ProtocolFeature.LOG_SHMFD)
        desc = _decode(LogDescription, msg)
        (fd,) = fds.take(1, msg.name)
        self.device.set_log_base(desc, fd)
        return U64(0).encode()

    def _set_log_fd(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        _empty(msg)
        (fd,) = fds.take(1, msg.name)
        self.device.set_log_fd(fd)
        return None

    def _set_vring_num(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        state = _decode(VringState, msg)
        ring = self._ring(msg, state.index)
        num = state.num
        if not 1 <= num <= wire.VRING_MAX_SIZE or num & (num - 1):
            raise ProtocolError(errno.EINVAL, f"ring size {num} is not a power of two "
                                f"in 1..{wire.VRING_MAX_SIZE}")
        if ring.started:
            raise ProtocolError(errno.EBUSY, f"ring {state.index} is started")
        self.device.set_vring_num(state.index, num)
        ring.num = num
        return None

    def _set_vring_addr(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        addr = _decode(VringAddr, msg)
        ring = self._ring(msg, addr.index)
        if ring.num is None:
            raise ProtocolError(errno.EINVAL, f"ring {addr.index} has no size yet")
        # Allowed while started: the front-end toggles used-ring logging this way.
        self.device.set_vring_addr(addr)
        ring.addr = True
        return None

    def _set_vring_base(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        state = _decode(VringState, msg)
        ring = self._ring(msg, state.index)
        if state.num > 0xFFFF:
            raise ProtocolError(errno.EINVAL,
                                f"split ring base {state.num:#x} has reserved bits set")
        if ring.started:
            raise ProtocolError(errno.EBUSY, f"ring {state.index} is started")
        self.device.set_vring_base(state.index, state.num)
        ring.base = state.num
        return None

    def _get_vring_base(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        fds.none(msg.name)
        state = _decode(VringState, msg)
        ring = self._ring(msg, state.index)
        if ring.started:
            ring.base = self.device.stop_ring(state.index)
            ring.started = False
            events.append(RingStopped(state.index, ring.base))
        if ring.kick:
            # A restart comes with a fresh SET_VRING_KICK; drop the old descriptor now.
            self.device.set_vring_kick(state.index, None)
            ring.kick = False
            events.append(RingKickFd(state.index, None))
        return VringState(state.index, ring.base).encode()

    def _vring_file(self, msg: Message, fds: _Fds) -> tuple[int, _Ring, int | None]:
        vf = _decode(VringFile, msg)
        ring = self._ring(msg, vf.index)
        if vf.nofd:
            fds.none(f"{msg.name} with the no-descriptor flag")
            return vf.index, ring, None
        (fd,) = fds.take(1, msg.name)
        return vf.index, ring, fd

    def _set_vring_kick(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        index, ring, fd = self._vring_file(msg, fds)
        if not ring.started and (ring.num is None or not ring.addr):
            if fd is not None:
                os.close(fd)
            raise ProtocolError(errno.EINVAL, f"ring {index} cannot start: size or addresses "
                                "not set")
        self.device.set_vring_kick(index, fd)
        ring.kick = fd is not None
        events.append(RingKickFd(index, fd))
        if not ring.started:
            self.device.start_ring(index)
            ring.started = True
            events.append(RingStarted(index))
        return None

    def _set_vring_call(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        index, _ring, fd = self._vring_file(msg, fds)
        self.device.set_vring_call(index, fd)
        return None

    def _set_vring_err(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        index, _ring, fd = self._vring_file(msg, fds)
        self.device.set_vring_err(index, fd)
        return None

    def _set_vring_enable(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        state = _decode(VringState, msg)
        ring = self._ring(msg, state.index)
        if state.num not in (0, 1):
            raise ProtocolError(errno.EINVAL, f"enable value {state.num} is neither 0 nor 1")
        enabled = bool(state.num)
        self.device.set_vring_enabled(state.index, enabled)
        if ring.enabled != enabled:
            ring.enabled = enabled
            events.append(RingEnabled(state.index, enabled))
        return None

    def _send_rarp(self, msg: Message, fds: _Fds, events: list[Output]) -> None:
        fds.none(msg.name)
        self._require(msg, ProtocolFeature.RARP)
        events.append(SendRarp(_decode(RarpPayload, msg).mac))
        return None

    def _set_device_state_fd(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        self._require(msg, ProtocolFeature.DEVICE_STATE)
        params = _decode(DeviceStateParams, msg)
        if not self.suspended:
            raise ProtocolError(errno.EBUSY, "device state transfer while rings are started")
        (fd,) = fds.take(1, msg.name)
        self._transfer_active = True
        self._transfer_result = 0
        events.append(DeviceStateTransfer(params.direction, fd))
        log.info("vhost-user device state %s starts",
                 "save" if params.direction == wire.DEVICE_STATE_SAVE else "load")
        return U64(wire.DEVICE_STATE_NOFD).encode()

    def _check_device_state(self, msg: Message, fds: _Fds, events: list[Output]) -> bytes:
        self._require(msg, ProtocolFeature.DEVICE_STATE)
        _empty(msg)
        fds.none(msg.name)
        if self._transfer_active:
            return _DEFER
        return U64(self._transfer_result).encode()


_HANDLERS: dict[int, Callable[[Session, Message, _Fds, list[Output]], bytes | None]] = {
    Request.GET_FEATURES: Session._get_features,
    Request.SET_FEATURES: Session._set_features,
    Request.SET_OWNER: Session._set_owner,
    Request.RESET_OWNER: Session._reset_owner,
    Request.GET_PROTOCOL_FEATURES: Session._get_protocol_features,
    Request.SET_PROTOCOL_FEATURES: Session._set_protocol_features,
    Request.GET_QUEUE_NUM: Session._get_queue_num,
    Request.SET_MEM_TABLE: Session._set_mem_table,
    Request.SET_LOG_BASE: Session._set_log_base,
    Request.SET_LOG_FD: Session._set_log_fd,
    Request.SET_VRING_NUM: Session._set_vring_num,
    Request.SET_VRING_ADDR: Session._set_vring_addr,
    Request.SET_VRING_BASE: Session._set_vring_base,
    Request.GET_VRING_BASE: Session._get_vring_base,
    Request.SET_VRING_KICK: Session._set_vring_kick,
    Request.SET_VRING_CALL: Session._set_vring_call,
    Request.SET_VRING_ERR: Session._set_vring_err,
    Request.SET_VRING_ENABLE: Session._set_vring_enable,
    Request.SEND_RARP: Session._send_rarp,
    Request.SET_DEVICE_STATE_FD: Session._set_device_state_fd,
    Request.CHECK_DEVICE_STATE: Session._check_device_state,
}
