# SPDX-License-Identifier: MIT
"""An in-process vhost-user back-end for tests: transport + session + device in a thread.

The tiny epoll loop here does what the real event loop does with the transport's events: it
watches the listening socket, the connection and the rings' kick descriptors; on a TX kick it
drains the TX ring into ``tx_frames`` (a queue the test reads); frames given to :meth:`send`
are pushed to RX (kept until the guest offers buffers). Device-state transfers write
``save_state`` or read into ``loaded_state`` and report success. Any exception in the loop thread
is kept in ``error`` and stops the loop, so a test can tell "the back-end died" from "it refused".
"""
from __future__ import annotations

import os
import queue
import select
import threading
import traceback

from passt_py.vhost_user import events as ev
from passt_py.vhost_user.device import RX, TX, NetDevice
from passt_py.vhost_user.transport import VhostUserServer
from passt_py.vhost_user.wire import DEVICE_STATE_SAVE


class InprocBackend:
    """Serves vhost-user on ``path`` from a background thread until :meth:`stop`."""

    def __init__(self, path: str, save_state: bytes = b"passt-py test state") -> None:
        self.device = NetDevice()
        self.server = VhostUserServer(self.device, path)
        self.path = path
        self.tx_frames: "queue.Queue[bytes]" = queue.Queue()
        self.events: list[object] = []
        self.save_state = save_state
        self.loaded_state: bytes | None = None
        self.error: str | None = None
        self._rx_queue: list[bytes] = []
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stop = False
        self._epoll = select.epoll()
        self._kick: dict[int, int] = {}          # ring index -> kick fd
        self._handlers: dict[int, object] = {}
        self._state_buf = bytearray()
        self._transfer_fd: int | None = None     # the device-state fd while a transfer runs
        self._thread = threading.Thread(target=self._run, name="inproc-backend", daemon=True)

    # ---- test side ----
    def start(self) -> "InprocBackend":
        """Start serving."""
        self._watch(self.server.listen_fd, select.EPOLLIN, self._on_listen)
        self._watch(self._wake, select.EPOLLIN, self._on_wake)
        self._thread.start()
        return self

    def send(self, frames: list[bytes]) -> None:
        """Queue frames for the guest (pushed to RX as buffers allow)."""
        with self._lock:
            self._rx_queue += frames
        os.eventfd_write(self._wake, 1)

    def stop(self) -> None:
        """Stop the thread and release everything."""
        self._stop = True
        os.eventfd_write(self._wake, 1)
        self._thread.join(5)
        self.server.close()
        self._epoll.close()
        os.close(self._wake)

    @property
    def alive(self) -> bool:
        """The loop thread is running."""
        return self._thread.is_alive()

    def __enter__(self) -> "InprocBackend":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- loop ----
    def _watch(self, fd: int, mask: int, handler) -> None:
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler

    def _unwatch(self, fd: int | None) -> None:
        if fd is None or self._handlers.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _run(self) -> None:
        try:
            while not self._stop:
                for fd, mask in self._epoll.poll(0.5):
                    handler = self._handlers.get(fd)
                    if handler is not None:
                        handler(fd, mask)
        except Exception:  # noqa: BLE001 - the test must see why the back-end died
            self.error = traceback.format_exc()

    def _apply(self, events: list) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, ev.FrontendConnected):
                self._watch(event.fd, select.EPOLLIN, self._on_conn)
            elif isinstance(event, ev.FrontendDisconnected):
                self._unwatch(event.fd)
                for fd in self._kick.values():
                    self._unwatch(fd)
                self._kick.clear()
            elif isinstance(event, ev.RingKickFd):
                self._unwatch(self._kick.pop(event.index, None))
                if event.fd is not None:
                    self._kick[event.index] = event.fd
                    self._watch(event.fd, select.EPOLLIN, self._on_kick)
            elif isinstance(event, ev.DeviceStateTransfer):
                self._start_transfer(event)
        self._drain_tx()
        self._push_rx()

    def _on_listen(self, fd: int, mask: int) -> None:
        self._apply(self.server.on_readable(fd))

    def _on_conn(self, fd: int, mask: int) -> None:
        self._apply(self.server.on_readable(fd))

    def _on_wake(self, fd: int, mask: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass
        self._push_rx()

    def _on_kick(self, fd: int, mask: int) -> None:
        for index, kick in self._kick.items():
            if kick == fd:
                self.device.consume_kick(index)
                if index == TX:
                    self._drain_tx()
                else:
                    self._push_rx()

    def _drain_tx(self) -> None:
        while True:
            batch = self.device.tx_batch(64)
            if batch is None:
                return
            for i in range(batch.count):
                self.tx_frames.put(batch.frame(i))
            self.device.release(batch)

    def _push_rx(self) -> None:
        with self._lock:
            if not self._rx_queue:
                return
            placed = self.device.send_frames(self._rx_queue)
            del self._rx_queue[:placed]

    # ---- device state ----
    def _start_transfer(self, event: ev.DeviceStateTransfer) -> None:
        os.set_blocking(event.fd, False)
        self._transfer_fd = event.fd
        if event.direction == DEVICE_STATE_SAVE:
            self._state_buf = bytearray(self.save_state)
            mask, handler = select.EPOLLOUT, self._on_state_writable
        else:
            self._state_buf = bytearray()
            mask, handler = select.EPOLLIN, self._on_state_readable
        try:
            self._watch(event.fd, mask, handler)
        except PermissionError:
            # A regular file or a device (a hostile front-end's choice): epoll refuses those,
            # and they never block, so serve the transfer now, as passt-py's own loop does.
            # Bounded: a device may never end (/dev/zero), then the transfer fails.
            for _ in range(4096):
                if self._transfer_fd != event.fd:
                    return
                handler(event.fd, mask)
            self._finish_transfer(event.fd, 1)

    def _finish_transfer(self, fd: int, result: int) -> None:
        self._transfer_fd = None
        self._unwatch(fd)
        os.close(fd)
        self._apply(self.server.finish_device_state(result))

    def _on_state_writable(self, fd: int, mask: int) -> None:
        try:
            n = os.write(fd, self._state_buf)
        except BlockingIOError:
            return
        except OSError:
            self._finish_transfer(fd, 1)
            return
        del self._state_buf[:n]
        if not self._state_buf:
            self._finish_transfer(fd, 0)

    def _on_state_readable(self, fd: int, mask: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            self._state_buf += data
            return
        self.loaded_state = bytes(self._state_buf)
        self._finish_transfer(fd, 0)
