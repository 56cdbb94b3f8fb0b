# SPDX-License-Identifier: MIT
"""The virtio-net device behind the vhost-user session.

Theory of operation: :class:`NetDevice` owns the guest memory table and two split virtqueues,
0 = RX (host to guest) and 1 = TX (guest to host), provided by the C core through the wrappers
in ``passt_py.core``. The session drives it through the methods of its ``Device`` protocol
(memory table, ring configuration, start/stop, enable, descriptors); the network layer moves
frames through :meth:`tx_batch` / :meth:`release` and :meth:`send_frames`.

Descriptors: region and log descriptors are closed right after mapping (the mapping stays);
kick and call descriptors are owned by the core's ``Virtqueue`` (closed when replaced or when
the ring is closed); error and log-notification descriptors are kept here until replaced or
:meth:`reset`. Rings touch guest memory only while started; with every ring stopped the device
is suspended (no guest-memory writes, no notifications), as the vhost-user specification
requires after GET_VRING_BASE. A started but disabled ring does nothing visible: TX frames are
drained and dropped, RX gets nothing.

Capture (-p): :meth:`set_capture` hands the pcap file to both rings, and again to every ring
that starts and to the fresh rings of :meth:`reset`, so the C core records every frame the
rings carry whichever path moves it; :meth:`check_capture` tells of a failed write (capture
is then off on every ring: the file ends there).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Callable, Sequence

from passt_py import core
from passt_py.config.log import RateLimited
from passt_py.pcap import SNAPLEN
from passt_py.vhost_user import wire
from passt_py.vhost_user.session import DeviceError
from passt_py.vhost_user.wire import LogDescription, MemoryRegion, VringAddr, bit

log = logging.getLogger(__name__)

RX = 0
TX = 1

#: virtio-net offload feature bits (virtio 1.x, 5.1.3). CSUM: the guest may send frames with
#: a partial checksum (virtio-net header NEEDS_CSUM); nothing here verifies guest checksums
#: and TCP/UDP payloads go to host sockets, which checksum themselves. GUEST_CSUM: we may
#: send partial checksums (NEEDS_CSUM) or mark them verified (DATA_VALID). HOST_TSO4/6: the
#: guest may send TCP segments up to 64 KiB (gso_type/gso_size in the header; the TCP path
#: classifies them like any segment). GUEST_TSO4/6: the TCP path may send segments up to
#: 64 KiB with a GSO header. The spec makes GUEST_TSO* depend on GUEST_CSUM and HOST_TSO* on
#: CSUM: set_features() refuses to use a TSO bit whose checksum bit is missing.
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12

OFFLOAD_FEATURES = (
    bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
)

#: Feature bits offered to the front-end: the single place that decides them. EVENT_IDX and
#: INDIRECT_DESC are implemented by the C core's ring walker; no config space is implemented,
#: so VIRTIO_NET_F_STATUS / MTU / MAC are not offered.
OFFERED_FEATURES = (
    bit(wire.VIRTIO_F_VERSION_1)
    | bit(wire.VIRTIO_NET_F_MRG_RXBUF)
    | bit(wire.VHOST_F_LOG_ALL)
    | bit(wire.VIRTIO_RING_F_INDIRECT_DESC)
    | bit(wire.VIRTIO_RING_F_EVENT_IDX)
    | bit(wire.VHOST_USER_F_PROTOCOL_FEATURES)
    | OFFLOAD_FEATURES
)

#: Frames one TX batch holds at most (the reusable batch is this big).
TX_BATCH_MAX = 256


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _check_mappable(fd: int, offset: int, size: int, what: str) -> None:
    """Refuse a mapping past the end of a regular file (touching it would raise SIGBUS)."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise DeviceError(exc.errno, f"{what}: bad descriptor") from None
    if stat.S_ISREG(st.st_mode) and offset + size > st.st_size:
        raise DeviceError(errno.EINVAL, f"{what}: offset {offset:#x} + size {size:#x} is past "
                          f"the end of its file ({st.st_size:#x} bytes)")


class NetDevice:
    """A virtio-net device with one queue pair, backed by the C core."""

    num_queues = 2
    offered_features = OFFERED_FEATURES

    def __init__(self) -> None:
        self.mem = core.GuestMemory()
        self.rings = [core.Virtqueue(self.mem, i) for i in range(self.num_queues)]
        self._err_fds: list[int | None] = [None] * self.num_queues
        self._started = [False] * self.num_queues
        self._enabled = [False] * self.num_queues
        self._log_fd: int | None = None
        self._features = 0
        self._tx_spare: core.TxBatch | None = core.TxBatch(TX_BATCH_MAX)
        self._regions: list[MemoryRegion] = []
        self.has_memory = False
        self._capture_fd: int | None = None
        self._capture_err = 0
        # Guest-triggered ring errors can come once per packet: a few log lines per second.
        self._ring_log = RateLimited(log)

    # ---- what the network layer uses ----
    @property
    def features(self) -> int:
        """The acknowledged virtio feature bits."""
        return self._features

    @property
    def hdr_len(self) -> int:
        """virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else the legacy 10."""
        if self._features & (bit(wire.VIRTIO_F_VERSION_1) | bit(wire.VIRTIO_NET_F_MRG_RXBUF)):
            return 12
        return 10

    @property
    def mergeable(self) -> bool:
        """MRG_RXBUF negotiated: an RX frame may span several buffers."""
        return bool(self._features & bit(wire.VIRTIO_NET_F_MRG_RXBUF))

    def _has(self, feature: int) -> bool:
        return bool(self._features & bit(feature))

    @property
    def guest_csum(self) -> bool:
        """GUEST_CSUM: RX frames may carry NEEDS_CSUM (partial) or DATA_VALID."""
        return self._has(VIRTIO_NET_F_GUEST_CSUM)

    @property
    def host_csum(self) -> bool:
        """CSUM: TX frames may come with a partial checksum (NEEDS_CSUM): never verify them."""
        return self._has(VIRTIO_NET_F_CSUM)

    def guest_tso(self, ipver: int) -> bool:
        """GUEST_TSO4 (ipver 4) / GUEST_TSO6 (6), with GUEST_CSUM as the spec requires."""
        feature = VIRTIO_NET_F_GUEST_TSO4 if ipver == 4 else VIRTIO_NET_F_GUEST_TSO6
        return self.guest_csum and self._has(feature)

    def host_tso(self, ipver: int) -> bool:
        """HOST_TSO4/6: the guest may send TCP segments up to 64 KiB of that family."""
        feature = VIRTIO_NET_F_HOST_TSO4 if ipver == 4 else VIRTIO_NET_F_HOST_TSO6
        return self.host_csum and self._has(feature)

    def udp_rx_opts(self) -> int:
        """core.UDP_RX_* options for the C paths that receive datagrams into RX buffers:
        a partial checksum (the guest completes it) when it negotiated GUEST_CSUM."""
        return core.UDP_RX_CSUM_PARTIAL if self.guest_csum else 0

    def tcp_rx_opts(self, ipver: int) -> int:
        """core.TCP_RX_* options for core.TcpPath.rx() as negotiated, for one IP version
        (a capture completes partial checksums itself: it changes nothing here)."""
        if not self.guest_csum:
            return 0
        opts = core.TCP_RX_CSUM_PARTIAL
        if self.guest_tso(ipver):
            opts |= core.TCP_RX_GSO
        return opts

    @property
    def ready(self) -> bool:
        """Both rings started and enabled: traffic can flow both ways."""
        return all(self._started) and all(self._enabled)

    @property
    def suspended(self) -> bool:
        """No ring started: guest memory must not be written."""
        return not any(self._started)

    def ring_active(self, index: int) -> bool:
        """Ring ``index`` is started and enabled."""
        return self._started[index] and self._enabled[index]

    def kick_fd(self, index: int) -> int | None:
        """The kick descriptor of ring ``index`` (owned by the ring), if any."""
        fd = self.rings[index].kick_fd
        return fd if fd >= 0 else None

    def consume_kick(self, index: int) -> bool:
        """Read a pending kick on ring ``index`` without blocking; True if kicked (or polled)."""
        return self.rings[index].kick_pending()

    def tx_batch(self, max_frames: int = TX_BATCH_MAX) -> core.TxBatch | None:
        """Pop up to ``max_frames`` guest frames; None if TX is stopped or had nothing.

        Frames are ``batch.frame(i)`` for i < ``batch.count`` (virtio-net header stripped). Pass
        the batch to :meth:`release` before asking for the next one. A started but disabled TX
        ring is drained and its frames dropped, as the specification asks.
        """
        if not self._started[TX]:
            return None
        spare, self._tx_spare = self._tx_spare, None
        try:
            batch = self.rings[TX].pop_tx(max_frames, self.hdr_len, spare)
        except core.CoreError as exc:
            self._tx_spare = spare or core.TxBatch(TX_BATCH_MAX)
            self._ring_log.warning("TX ring unusable: %s", exc)
            return None
        if batch.bad:
            self._ring_log.warning("TX: dropped bad chains %s", batch.bad_chains())
        if batch.count and self._enabled[TX]:
            return batch
        if batch.count or batch.bad:
            self.rings[TX].release(batch)
        self._tx_spare = batch
        return None

    def release(self, batch: core.TxBatch) -> None:
        """Return a TX batch's buffers to the guest (one used-ring update, one notify)."""
        try:
            self.rings[TX].release(batch)
        finally:
            self._tx_spare = batch

    def send_frames(self, frames: Sequence[bytes]) -> int:
        """Place frames on RX; return how many were consumed (placed or dropped as too big).

        Returns 0 when RX is not started and enabled, or has no buffers: keep the frames and
        retry when the guest kicks RX.
        """
        if not frames or not self.ring_active(RX):
            return 0
        try:
            return self.rings[RX].push_rx(frames, self.hdr_len, self.mergeable)
        except core.CoreError as exc:
            self._ring_log.warning("RX ring unusable: %s", exc)
            return 0

    def rx_avail(self) -> int:
        """How many RX buffers the guest offers right now (0 if RX is not active)."""
        if not self.ring_active(RX):
            return 0
        try:
            return self.rings[RX].avail_pending
        except core.CoreError:
            return 0

    # ---- capture ----
    def set_capture(self, fd: int | None) -> None:
        """Record every frame both rings carry into the pcap file open at ``fd`` (its header
        written; the caller keeps the fd), or stop (None): call before closing the fd."""
        self._capture_fd = fd
        self._capture_err = 0
        self._sync_capture()

    def check_capture(self) -> int:
        """0 while capture works (or is off); else the errno of the write that failed, once:
        capture is then off on every ring, as the file ends with that write."""
        self._sync_capture()
        err, self._capture_err = self._capture_err, 0
        return err

    def _capture_failed(self) -> None:
        """A ring's capture write failed: capture ends for every ring (check_capture())."""
        if self._capture_fd is None:
            return
        for ring in self.rings:
            err = ring.capture.err
            if err:
                self._capture_fd, self._capture_err = None, err
                return

    def _sync_capture(self) -> None:
        """Give the rings the capture as it stands (the header length follows the features),
        unless a ring's write failed: then take it from all of them."""
        self._capture_failed()
        for ring in self.rings:
            if self._capture_fd is None:
                ring.set_capture(-1)
            else:
                ring.set_capture(self._capture_fd, self.hdr_len, SNAPLEN)

    # ---- the session's Device protocol ----
    def set_features(self, features: int) -> None:
        """Apply acknowledged features: ring features, dirty logging, the capture's header
        length."""
        self._features = features
        for ring in self.rings:
            ring.set_features(bool(features & bit(wire.VIRTIO_RING_F_EVENT_IDX)),
                              bool(features & bit(wire.VIRTIO_RING_F_INDIRECT_DESC)))
        self.mem.logging = bool(features & bit(wire.VHOST_F_LOG_ALL))
        self._sync_capture()

    def set_mem_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> None:
        """Replace the memory table; the descriptors are closed once mapped (or on failure).

        A table refused by the checks (a region past the end of its file) leaves the old table
        in place; a mapping failure halfway leaves no memory at all.
        """
        try:
            for region, fd in zip(regions, fds, strict=True):
                _check_mappable(fd, region.mmap_offset, region.size, "memory region")
            self._clear_regions()
            for region, fd in zip(regions, fds):
                self.mem.add_region(fd, region.guest_phys_addr, region.size, region.user_addr,
                                    region.mmap_offset)
                self._regions.append(region)
            self.has_memory = True
        except (OSError, ValueError):
            self._clear_regions()
            raise
        finally:
            for fd in fds:
                _close(fd)

    def _clear_regions(self) -> None:
        """Unmap every region but keep the dirty log (a new table may come mid-migration)."""
        for region in self._regions:
            try:
                self.mem.remove_region(region.guest_phys_addr, region.size, region.user_addr)
            except core.CoreError:
                pass
        self._regions = []
        self.has_memory = False

    def set_log_base(self, desc: LogDescription, fd: int) -> None:
        """Map the dirty log; the descriptor is closed once mapped."""
        try:
            _check_mappable(fd, desc.offset, desc.size, "dirty log")
            self.mem.set_log(fd, desc.size, desc.offset)
        finally:
            _close(fd)

    def set_log_fd(self, fd: int) -> None:
        """Keep the log notification descriptor (replacing an earlier one)."""
        _close(self._log_fd)
        self._log_fd = fd

    def set_vring_num(self, index: int, num: int) -> None:
        """Set ring ``index``'s size."""
        self.rings[index].set_num(num)

    def set_vring_addr(self, addr: VringAddr) -> None:
        """Set ring addresses; the core checks alignment and that they lie in guest memory."""
        if not self.has_memory:
            raise DeviceError(errno.EFAULT, "ring addresses before any memory table")
        self.rings[addr.index].set_addr(addr.desc_user_addr, addr.used_user_addr,
                                        addr.avail_user_addr, addr.log_guest_addr, addr.flags)

    def set_vring_base(self, index: int, base: int) -> None:
        """Set the next avail index ring ``index`` processes."""
        self.rings[index].set_base(base)

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        """Replace the kick descriptor (the ring owns it and closes the old one)."""
        self.rings[index].set_kick_fd(-1 if fd is None else fd)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        """Replace the call descriptor (the ring owns it and writes it to notify the guest)."""
        self.rings[index].set_call_fd(-1 if fd is None else fd)

    def set_vring_err(self, index: int, fd: int | None) -> None:
        """Replace the error descriptor (kept, never written: no ring errors are reported)."""
        _close(self._err_fds[index])
        self._err_fds[index] = fd

    def set_vring_enabled(self, index: int, enabled: bool) -> None:
        """Enable or disable ring ``index``."""
        self._enabled[index] = enabled

    def start_ring(self, index: int) -> None:
        """Start ring ``index`` (size and addresses set), capturing if capture is on."""
        self._sync_capture()
        self.rings[index].start()
        self._started[index] = True

    def stop_ring(self, index: int) -> int:
        """Stop ring ``index``; return its next avail index."""
        self._started[index] = False
        return self.rings[index].stop()

    def reset(self) -> None:
        """Forget the front-end: close rings and descriptors, unmap memory and log."""
        for index, ring in enumerate(self.rings):
            ring.close()
            _close(self._err_fds[index])
            self._err_fds[index] = None
        _close(self._log_fd)
        self._log_fd = None
        self.mem.clear()
        self.mem.clear_log()
        self.mem.logging = False
        self._regions = []
        self.has_memory = False
        self._features = 0
        self._started = [False] * self.num_queues
        self._enabled = [False] * self.num_queues
        # Fresh rings: a new front-end must not inherit sizes, addresses or indices.
        self._capture_failed()
        self.rings = [core.Virtqueue(self.mem, i) for i in range(self.num_queues)]
        self._sync_capture()
        self._tx_spare = core.TxBatch(TX_BATCH_MAX)


class RxFlush:
    """One publication of the RX ring's used elements per loop batch, for every RX path.

    The C RX paths (TCP and UDP towards the guest) leave what they placed unpublished, so
    that many flows served in one loop iteration cost the guest one used-index update and
    at most one notification; the first path that placed something asks for the flush, which
    runs once the loop's current batch of events is done.
    """

    def __init__(self, device: NetDevice, defer: Callable[[Callable[[], None]], None]) -> None:
        self._device = device
        self._defer = defer
        self._due = False

    def request(self) -> None:
        """Publish at the end of this loop batch (once, however often it is asked)."""
        if not self._due:
            self._due = True
            self._defer(self._run)

    def _run(self) -> None:
        self._due = False
        if self._device.ring_active(RX):
            self._device.rings[RX].flush()
