"""The ring UDP path: host datagrams received by C straight into the guest's RX buffers.

Built on core.UdpPath (csrc/udp_path.c): per readiness event one C call takes up to a batch of
datagrams from a socket, each received into the RX chains it needs behind room for the
headers, which C then writes (checksum, or the partial-checksum flag when the guest negotiated
GUEST_CSUM). Used elements are published once per loop batch (``flush`` deferred), like the
TCP ring path. A datagram from a peer no template covers comes back in a spill buffer for the
UDP handler to find or create its flow.

Used only without a capture: a capture must see every frame, so it keeps the copying path.
"""
from __future__ import annotations

from typing import Callable

from passt_py import core
from passt_py.vhost_user.device import RX, NetDevice


class UdpRingPath:
    """core.UdpPath on the device's current RX ring, with the flush deferred to the loop."""

    def __init__(self, device: NetDevice, defer: Callable[[Callable[[], None]], None]) -> None:
        self._device = device
        self._defer = defer
        self._path: core.UdpPath | None = None
        self._ring: object = None
        self._flush_due = False

    @property
    def active(self) -> bool:
        """The RX ring runs: datagrams can go straight into it."""
        return self._device.ring_active(RX)

    @property
    def last(self):  # noqa: ANN201 - cffi struct pc_udp_rx_result
        """What the last deliver() did (core.UdpPath.last)."""
        assert self._path is not None
        return self._path.last

    def deliver(self, fd: int, tmpls: core.UdpTemplates, max_dgrams: int) -> int:
        """Receive up to ``max_dgrams`` datagrams from ``fd`` into the guest; see core.UdpPath."""
        ring = self._device.rings[RX]
        if ring is not self._ring or self._path is None:
            self._ring, self._path = ring, core.UdpPath(ring)
        dev = self._device
        opts = core.UDP_RX_CSUM_PARTIAL if dev.guest_csum else 0
        n = self._path.rx(fd, tmpls, dev.hdr_len, dev.mergeable, max_dgrams, opts, flush=False)
        if self._path.last.bufs and not self._flush_due:
            self._flush_due = True
            self._defer(self._flush)
        return n

    def push(self, frame: bytes | memoryview) -> bool:
        """Place one frame built in Python now, behind what deliver() placed (the datagram
        it spilled keeps its place); False if the guest has no buffer for it."""
        return self._device.send_frames([frame]) == 1

    def spilled(self):  # noqa: ANN201 - see core.UdpPath.spilled
        """The datagram the last deliver() could not place (core.UdpPath.spilled)."""
        assert self._path is not None
        return self._path.spilled()

    def _flush(self) -> None:
        self._flush_due = False
        if self._path is not None and self._device.ring_active(RX):
            self._path.flush()
