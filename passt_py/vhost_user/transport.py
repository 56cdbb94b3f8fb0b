# SPDX-License-Identifier: MIT
"""The vhost-user socket adapter: UNIX stream socket, SCM_RIGHTS, one front-end at a time.

Theory of operation: :class:`VhostUserServer` owns the listening socket (or a pre-connected one
handed over with ``--fd``) and at most one connection. The embedding event loop watches
:attr:`listen_fd` and :attr:`conn_fd` and calls :meth:`on_readable` with the descriptor that
became readable. Reads are sized by :class:`~passt_py.vhost_user.wire.FrameReader`, so a read
never goes past the current message and the descriptors that arrive with a message stay with it.
Complete messages go to the sans-IO :class:`~passt_py.vhost_user.session.Session`; its replies are
sent here and its events are returned to the caller.

Use level-triggered polling: :meth:`serve` returns as soon as a message produced events (so
they are applied before the next message changes the device again) and leaves the rest for the
next call. A second front-end while one is connected is accepted, logged and closed. A framing
error (a header announcing more than MAX_PAYLOAD bytes), end of file or a socket error ends the
connection: the session and device are reset (memory unmapped, rings stopped, descriptors
closed) and the server accepts the next front-end.
"""
from __future__ import annotations

import array
import errno
import logging
import os
import select
import socket
import stat
from typing import Sequence

from passt_py.vhost_user import wire
from passt_py.vhost_user.events import Event, FrontendConnected, FrontendDisconnected
from passt_py.vhost_user.session import Device, Output, Reply, Session
from passt_py.vhost_user.wire import FrameReader, FramingError

log = logging.getLogger(__name__)

_ANC_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * array.array("i").itemsize)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Descriptors from SCM_RIGHTS control messages (other control messages are ignored)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _bind_unix(path: str) -> socket.socket:
    """Listen on ``path``, replacing a stale socket file nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # stale: left over by a back-end that is gone
            else:
                raise OSError(errno.EADDRINUSE, f"{path}: another back-end listens here") from None
            finally:
                probe.close()
            sock.bind(path)
        sock.listen(1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class VhostUserServer:
    """Serves one vhost-user front-end at a time for ``device``."""

    def __init__(self, device: Device, path: str | None = None, *, fd: int | None = None) -> None:
        """Listen on UNIX socket ``path``, or adopt descriptor ``fd`` (listening or connected)."""
        if (path is None) == (fd is None):
            raise ValueError("give exactly one of path or fd")
        self.session = Session(device)
        self.path = path
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._reader = FrameReader()
        self._truncated = False
        self._pending: list[Event] = []
        if path is not None:
            self._listener = _bind_unix(path)
            log.info("vhost-user: listening on %s", path)
            return
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ValueError(f"fd {fd} is not a UNIX stream socket")
        sock.setblocking(False)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            self._listener = sock
        else:
            self._adopt(sock)

    # ---- descriptors for the event loop ----
    @property
    def listen_fd(self) -> int | None:
        """The listening socket's descriptor (None with a pre-connected --fd socket)."""
        return self._listener.fileno() if self._listener is not None else None

    @property
    def conn_fd(self) -> int | None:
        """The connected front-end's descriptor, if one is connected."""
        return self._conn.fileno() if self._conn is not None else None

    @property
    def connected(self) -> bool:
        """A front-end is connected."""
        return self._conn is not None

    # ---- entry points ----
    def on_readable(self, fd: int) -> list[Event]:
        """``fd`` (listening or connection) is readable: accept or process what arrived."""
        if self._listener is not None and fd == self._listener.fileno():
            return self.accept()
        if self._conn is not None and fd == self._conn.fileno():
            return self.serve()
        return []

    def accept(self) -> list[Event]:
        """Accept a front-end; refuse (accept, log, close) one more while one is connected."""
        events = self._take_pending()
        if self._listener is None:
            return events
        while True:
            if self._conn is not None and self._peer_hung_up():
                # The front-end hung up but its end of file is unread yet (QEMU restarting
                # quickly): leave the new one queued until serve() has ended the old one.
                return events
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return events
            except OSError as exc:
                log.warning("vhost-user: accept failed: %s", exc)
                return events
            if self._conn is not None:
                log.warning("vhost-user: refusing a second front-end; one is already connected")
                sock.close()
                continue
            events.append(self._adopt(sock))

    def serve(self) -> list[Event]:
        """Process complete messages until the socket is drained or one produces events.

        Returning at the first events keeps them in step with the device: a later message could
        otherwise close a kick descriptor before the caller has even seen it. Whatever is left
        keeps the socket readable, so a level-triggered loop (epoll's default) comes back.
        """
        events = self._take_pending()
        produced = False
        while self._conn is not None and not produced:
            try:
                data, ancdata, flags, _addr = self._conn.recvmsg(
                    self._reader.need(), _ANC_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("vhost-user: receive failed: %s", exc)
                events += self.disconnect()
                break
            fds = _fds_from_ancillary(ancdata)
            if flags & socket.MSG_CTRUNC:
                # More descriptors than any request carries: the surplus never reached us.
                self._truncated = True
            if not data:
                _close_all(fds)
                log.info("vhost-user: front-end closed the connection")
                events += self.disconnect()
                break
            try:
                done = self._reader.feed(data, fds)
            except FramingError as exc:
                _close_all(fds)
                log.warning("vhost-user: framing error, closing the connection: %s", exc)
                events += self.disconnect()
                break
            if done is None:
                continue
            msg, msg_fds = done
            if self._truncated:
                self._truncated = False
                _close_all(msg_fds)
                outputs = self.session.reject(msg, f"more than {wire.MAX_FDS} descriptors")
            else:
                outputs = self.session.handle(msg, msg_fds)
            produced_events = self._dispatch(outputs)
            produced = bool(produced_events)
            events += produced_events
        return events

    def finish_device_state(self, result: int) -> list[Event]:
        """A device-state transfer ended with ``result`` (0 ok); answer a waiting CHECK."""
        return self._dispatch(self.session.finish_device_state(result))

    def disconnect(self) -> list[Event]:
        """Drop the front-end: reset session and device, close the connection."""
        if self._conn is None:
            return []
        fd = self._conn.fileno()
        _close_all(self._reader.take_fds())
        self._reader = FrameReader()
        self._truncated = False
        events: list[Event] = list(self.session.reset())
        self._conn.close()
        self._conn = None
        events.append(FrontendDisconnected(fd))
        return events

    def close(self) -> None:
        """Shut down: drop the front-end, stop listening, remove the socket file."""
        self.disconnect()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.path is not None:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass  # gone, or not ours to remove after dropping root (see privileges)

    # ---- internals ----
    def _adopt(self, sock: socket.socket) -> FrontendConnected:
        sock.setblocking(False)
        self._conn = sock
        self._reader = FrameReader()
        log.info("vhost-user: front-end connected (fd %d)", sock.fileno())
        event = FrontendConnected(sock.fileno())
        if self._listener is None:
            # Pre-connected socket: report it on the first call, the loop learns the fd.
            self._pending.append(event)
        return event

    def _peer_hung_up(self) -> bool:
        """The connected front-end closed its end (data may still be queued before the EOF)."""
        assert self._conn is not None
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLRDHUP)
        return any(mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
                   for _fd, mask in poller.poll(0))

    def _take_pending(self) -> list[Event]:
        pending, self._pending = self._pending, []
        return pending

    def _dispatch(self, outputs: list[Output]) -> list[Event]:
        events: list[Event] = []
        for out in outputs:
            if isinstance(out, Reply):
                if not self._send(out):
                    events += self.disconnect()
                    break
            else:
                events.append(out)
        return events

    def _send(self, reply: Reply) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.sendall(reply.message.encode())
        except OSError as exc:  # includes a full socket buffer: the front-end does not read
            log.warning("vhost-user: sending %s reply failed: %s", reply.message.name, exc)
            return False
        return True
