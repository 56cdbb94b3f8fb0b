# SPDX-License-Identifier: MIT
"""The ring TCP data path: host data peeked by C straight into the guest's RX buffers.

Same contract as passt_py.tcp.copy.CopyingDataPath (see TcpDataPath there), built on
core.TcpPath (csrc/tcp_path.c): one ``recvmsg(MSG_PEEK)`` per call scatters socket data into
RX chains, C writes the Ethernet/IP/TCP headers and checksums (or offload flags: GSO and
partial checksums when the guest negotiated them). Used elements are published once per loop
batch (device.RxFlush, shared with the UDP ring path), so many connections cost one
notification. When the guest has no RX buffers left the call stops with STOP_NOBUFS and the TCP
handler waits for the guest's RX kick instead of dropping frames.

Guest -> host: in-order data leaves from guest memory through TcpHandler.take_batch (zero
copy); ``send_to_host`` here serves the segments that take the copying route (the first data
of a connection, data after a gap...).

Control segments (SYN, pure ACKs, FIN, RST) keep using the guest link's queue; they never
overtake data they must follow (a FIN is only sent once every byte is acknowledged).
"""
from __future__ import annotations

import socket

from passt_py import core
from passt_py.tcp.copy import (STOP_AGAIN, STOP_DRAINED, STOP_EOF, STOP_NOBUFS, STOP_WINDOW,
                               send_payload)
from passt_py.tcp.seg import ACK, PSH, FrameTemplate
from passt_py.vhost_user.device import RX, NetDevice, RxFlush

_STOPS = {
    core.TCP_STOP_WINDOW: STOP_WINDOW,
    core.TCP_STOP_LIMIT: STOP_WINDOW,
    core.TCP_STOP_NOBUFS: STOP_NOBUFS,
    core.TCP_STOP_STOPPED: STOP_NOBUFS,
    core.TCP_STOP_DRAINED: STOP_DRAINED,
    core.TCP_STOP_EOF: STOP_EOF,
    core.TCP_STOP_AGAIN: STOP_AGAIN,
}


class RingDataPath:
    """Host -> guest through core.TcpPath on the device's RX ring; guest -> host by send()."""

    def __init__(self, device: NetDevice, flush: RxFlush) -> None:
        self._device = device
        self._flush = flush
        self._path: core.TcpPath | None = None
        self.frames_sent = 0

    def send_to_host(self, sock: socket.socket, payload: memoryview) -> int:
        """Write guest payload to ``sock``; bytes accepted (0 if the buffer is full)."""
        return send_payload(sock, payload)

    def _tcp_path(self) -> core.TcpPath:
        ring = self._device.rings[RX]
        if self._path is None or self._path.ring is not ring:
            self._path = core.TcpPath(ring)
        return self._path

    def host_to_guest(self, sock: socket.socket, tpl: FrameTemplate, dst_mac: bytes,
                      src_mac: bytes, seq: int, ack: int, wnd: int, mss: int,
                      max_bytes: int) -> tuple[int, int]:
        """Peek up to ``max_bytes`` into guest RX buffers as segments starting at ``seq``."""
        if max_bytes <= 0:
            return 0, STOP_WINDOW
        if not self._device.ring_active(RX):
            return 0, STOP_NOBUFS
        path = self._tcp_path()
        tmpl = self.template(tpl, dst_mac, src_mac)
        tmpl.seq, tmpl.ack, tmpl.window, tmpl.mss = seq, ack, min(wnd, 0xFFFF), mss
        dev = self._device
        n = path.rx(sock.fileno(), tmpl, max_bytes, dev.hdr_len, dev.mergeable,
                    dev.tcp_rx_opts(tpl.version), flush=False)
        if path.last.bufs:
            self._flush.request()
        self.frames_sent += path.last.segs
        return n, _STOPS.get(path.last.stop, STOP_DRAINED)

    @staticmethod
    def template(tpl: FrameTemplate, dst_mac: bytes, src_mac: bytes) -> core.TcpTemplate:
        """The C header template of this connection, cached on its FrameTemplate."""
        cached = tpl.ext
        if cached is None or cached[0] != dst_mac or cached[1] != src_mac:
            tmpl = core.TcpTemplate(dst_mac, src_mac, tpl.src, tpl.dst, tpl.sport, tpl.dport,
                                    ttl=255, flags=ACK | PSH)
            tpl.ext = cached = (dst_mac, src_mac, tmpl)
        return cached[2]
