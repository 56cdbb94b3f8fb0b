# SPDX-License-Identifier: MIT
"""The ring UDP path: host datagrams received by C straight into the guest's RX buffers.

Built on core.UdpPath (csrc/udp_path.c): per readiness event one C call takes up to a batch of
datagrams from a socket, each received into the RX chains it needs behind room for the
headers, which C then writes (checksum, or the partial-checksum flag when the guest negotiated
GUEST_CSUM). Used elements are published once per loop batch (device.RxFlush, shared with the
TCP ring path). A datagram from a peer no template covers comes back in a spill buffer for
the UDP handler to find or create its flow.

A capture (-p) changes nothing here: the RX ring records the frames when they are published.
"""
from __future__ import annotations

from typing import Any

from passt_py import core
from passt_py.vhost_user.device import RX, NetDevice, RxFlush


class UdpRingPath:
    """core.UdpPath on the device's current RX ring."""

    def __init__(self, device: NetDevice, flush: RxFlush) -> None:
        self._device = device
        self._flush = flush
        self._path: core.UdpPath | None = None

    @property
    def active(self) -> bool:
        """The RX ring runs: datagrams can go straight into it."""
        return self._device.ring_active(RX)

    @property
    def last(self) -> Any:
        """What the last deliver() did (core.UdpPath.last: struct pc_udp_rx_result)."""
        assert self._path is not None
        return self._path.last

    def deliver(self, fd: int, tmpls: core.UdpTemplates, max_dgrams: int) -> int:
        """Receive up to ``max_dgrams`` datagrams from ``fd`` into the guest; see core.UdpPath."""
        dev = self._device
        ring = dev.rings[RX]
        if self._path is None or self._path.ring is not ring:
            self._path = core.UdpPath(ring)
        n = self._path.rx(fd, tmpls, dev.hdr_len, dev.mergeable, max_dgrams, dev.udp_rx_opts(),
                          flush=False)
        if self._path.last.bufs:
            self._flush.request()
        return n

    def push(self, frame: bytes | memoryview) -> bool:
        """Place one frame built in Python now, behind what deliver() placed (the datagram
        it spilled keeps its place); False if the guest has no buffer for it."""
        return self._device.send_frames([frame]) == 1

    def spilled(self) -> tuple[bytes, Any, int]:
        """The datagram the last deliver() could not place, and its peer (core.UdpPath)."""
        assert self._path is not None
        return self._path.spilled()
