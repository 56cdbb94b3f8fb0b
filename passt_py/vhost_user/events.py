# SPDX-License-Identifier: MIT
"""Events the vhost-user layer reports to the embedding code (event loop, network, migration).

Small frozen dataclasses, returned by ``Session.handle`` and ``VhostUserServer.on_readable``.
Where an event carries a descriptor, the text says who owns it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class RingKickFd:
    """Watch ``fd`` for kicks on ring ``index`` (None: stop watching; poll instead).

    The device owns the descriptor and closes it when it is replaced, so the loop should
    forget any earlier descriptor of this ring before watching the new one.
    """

    index: int
    fd: int | None


@dataclass(frozen=True)
class RingStarted:
    """Ring ``index`` started: the back-end may now process it."""

    index: int


@dataclass(frozen=True)
class RingStopped:
    """Ring ``index`` stopped; ``next_avail`` is where it will resume."""

    index: int
    next_avail: int


@dataclass(frozen=True)
class RingEnabled:
    """Ring ``index`` was enabled or disabled."""

    index: int
    enabled: bool


@dataclass(frozen=True)
class DeviceStateTransfer:
    """Move the back-end state over ``fd`` (0 save: write it; 1 load: read it).

    The consumer owns ``fd``: it moves the bytes from the event loop, closes the descriptor, and
    reports the result with ``finish_device_state`` (0 success, else a positive error code),
    which is what CHECK_DEVICE_STATE then answers. Until then a CHECK_DEVICE_STATE waits.
    """

    direction: int
    fd: int


@dataclass(frozen=True)
class SendRarp:
    """Announce the guest (migration done): send a RARP/ARP announcement for ``mac``."""

    mac: bytes


@dataclass(frozen=True)
class FrontendConnected:
    """A front-end connected on ``fd`` (the transport emits this)."""

    fd: int


@dataclass(frozen=True)
class FrontendDisconnected:
    """The front-end on ``fd`` went away; the device was reset (the transport emits this)."""

    fd: int


Event = Union[RingKickFd, RingStarted, RingStopped, RingEnabled, DeviceStateTransfer, SendRarp,
              FrontendConnected, FrontendDisconnected]
