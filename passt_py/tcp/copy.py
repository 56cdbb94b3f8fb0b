# SPDX-License-Identifier: MIT
"""The copying TCP data path: the reference implementation of :class:`TcpDataPath`.

The protocol logic in passt_py.tcp.handler decides *what* to send (sequence numbers, windows, how
many bytes); a data path moves the bytes. This one works anywhere, with plain sockets and
frames handed to the guest link:

- guest -> host: ``send`` of the segment's payload (a view of the guest frame);
- host -> guest: one ``recvmsg_into(MSG_PEEK)`` scattering host data straight into the payload
  room of up to ``MAX_SEGS`` preallocated frames (the socket's SO_PEEK_OFF says where to
  start, so unacknowledged data is never read twice), then headers and checksums per frame.

Work is per call and per segment, never per byte in Python. A zero-copy path (C, reading
into guest RX buffers) implements the same two methods.
"""
from __future__ import annotations

import socket
from typing import Callable, Protocol

from passt_py.tcp.seg import ACK, PSH, FrameTemplate, seq_add

#: Segments built per call at most (bounded work per event; the caller comes back for more).
MAX_SEGS = 64

# Why host_to_guest() stopped (second element of its result).
STOP_WINDOW = 1     # max_bytes delivered (or a per-call limit): call again if the window allows
STOP_NOBUFS = 2     # the guest has no RX buffers: wait for it to add some (RX kick)
STOP_DRAINED = 3    # the socket had less than asked: wait for it to become readable
STOP_EOF = 4        # the peer shut down and every byte has been peeked
STOP_AGAIN = 5      # out of RX buffers, but the guest added some meanwhile: call again


def send_payload(sock: socket.socket, payload: memoryview) -> int:
    """Write guest payload to a non-blocking ``sock``: the bytes it took, 0 if it is full
    (what it did not take is not acknowledged, and the guest sends it again)."""
    try:
        return sock.send(payload)
    except BlockingIOError:
        return 0


class TcpDataPath(Protocol):
    """Moves payload between a connection's host socket and the guest."""

    def send_to_host(self, sock: socket.socket, payload: memoryview) -> int:
        """Write guest payload to ``sock``; bytes accepted (0 if the buffer is full)."""
        ...

    def host_to_guest(self, sock: socket.socket, tpl: FrameTemplate, dst_mac: bytes,
                      src_mac: bytes, seq: int, ack: int, wnd: int, mss: int,
                      max_bytes: int) -> tuple[int, int]:
        """Peek up to ``max_bytes`` at the peek offset and send them as segments from ``seq``.

        Returns (bytes sent, why it stopped: STOP_*). Socket errors propagate as OSError.
        """
        ...


class CopyingDataPath:
    """Plain-socket data path: frames built in Python, pushed through ``to_guest``."""

    def __init__(self, to_guest: Callable[[list[bytes]], None]) -> None:
        self._to_guest = to_guest
        self.frames_sent = 0

    def send_to_host(self, sock: socket.socket, payload: memoryview) -> int:
        """Write guest payload to ``sock``; bytes accepted (0 if the buffer is full)."""
        return send_payload(sock, payload)

    def host_to_guest(self, sock: socket.socket, tpl: FrameTemplate, dst_mac: bytes,
                      src_mac: bytes, seq: int, ack: int, wnd: int, mss: int,
                      max_bytes: int) -> tuple[int, int]:
        """Peek host data into frames of at most ``mss`` bytes and queue them for the guest."""
        if max_bytes <= 0 or mss <= 0:
            return 0, STOP_WINDOW
        room = tpl.header_room()
        frames: list[bytearray] = []
        views: list[memoryview] = []
        left = max_bytes
        while left > 0 and len(frames) < MAX_SEGS:
            size = min(mss, left)
            frame = bytearray(room + size)
            frames.append(frame)
            views.append(memoryview(frame)[room:])
            left -= size
        asked = max_bytes - left
        try:
            got = sock.recvmsg_into(views, 0, socket.MSG_PEEK)[0]
        except (BlockingIOError, InterruptedError):
            return 0, STOP_DRAINED
        finally:
            for view in views:
                view.release()
        if got == 0:
            return 0, STOP_EOF
        out: list[bytes] = []
        left = got
        for frame in frames:
            if left <= 0:
                break
            size = min(len(frame) - room, left)
            if size < len(frame) - room:
                del frame[room + size:]
            left -= size
            flags = ACK | (PSH if left == 0 else 0)
            tpl.finish(frame, dst_mac, src_mac, seq, ack, flags, wnd)
            seq = seq_add(seq, size)
            out.append(frame)   # type: ignore[arg-type]
        self.frames_sent += len(out)
        self._to_guest(out)
        return got, (STOP_WINDOW if got >= asked else STOP_DRAINED)
