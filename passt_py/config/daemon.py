# SPDX-License-Identifier: MIT
"""Running as a daemon: detaching, the PID file, and exit signals the event loop can watch.

Order matters (the service calls these at the right points):

1. create and bind the listening socket (so QEMU can connect as soon as we return to the shell);
2. :func:`daemonise` (without -f): double fork and setsid so the process has no controlling
   terminal and cannot reacquire one, stdin/stdout/stderr to /dev/null, cwd "/". The original
   process exits 0 only after the daemon has written its PID file, so a caller that waits for
   ``passt-py`` to return finds both the socket and the PID file in place;
   in the foreground, :func:`write_pid_file` alone honours -P;
3. :func:`install_exit_signals`: SIGTERM and SIGINT set a flag and, through
   ``signal.set_wakeup_fd``, make a non-blocking pipe readable. The event loop registers
   ``ExitSignals.fd`` with epoll; when it fires, it calls ``drain()`` and, if ``requested``,
   leaves the loop and returns 0. The PID file is removed at interpreter exit (atexit).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from dataclasses import dataclass, field
from types import FrameType

PID_FILE_MODE = 0o644
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PidFile:
    """A PID file we wrote; removed on exit only if it still names this process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        data = f"{self.pid}\n".encode()
        tmp = f"{path}.{self.pid}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PID_FILE_MODE)
        try:
            os.fchmod(fd, PID_FILE_MODE)  # umask must not make it unreadable
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # readers never see a half-written file
        atexit.register(self.remove)

    def remove(self) -> None:
        """Delete the file if it is still ours."""
        if os.getpid() != self.pid:
            return
        try:
            with open(self.path, encoding="ascii") as f:
                if f.read().strip() != str(self.pid):
                    return
            os.unlink(self.path)
        except OSError:
            pass


def write_pid_file(path: str | None) -> PidFile | None:
    """Write -P's file for the current process (foreground mode, or after daemonising)."""
    return PidFile(path) if path else None


def _redirect_stdio() -> None:
    """Point fds 0, 1 and 2 at /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def daemonise(pid_file: str | None = None) -> PidFile | None:
    """Detach from the terminal; returns only in the daemon, after writing ``pid_file``.

    The original process waits on a pipe for the daemon's "ready" byte and exits 0 (or 1 if the
    daemon died before that), so the shell sees a status that means something.
    """
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        ok = os.read(read_fd, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    pid = None
    try:
        os.chdir("/")
        pid = write_pid_file(pid_file)
        _redirect_stdio()
        os.write(write_fd, b"1")
    finally:
        os.close(write_fd)
    return pid


@dataclass
class ExitSignals:
    """Self-pipe for SIGTERM/SIGINT: watch ``fd`` for readability, then check ``requested``."""

    fd: int
    _write_fd: int
    requested: bool = False
    signum: int | None = None
    _previous: dict[int, object] = field(default_factory=dict)
    _previous_wakeup: int = -1

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        """Python-level handler: just record; the C-level wakeup already wrote to the pipe."""
        self.requested = True
        self.signum = signum

    def drain(self) -> list[int]:
        """Empty the pipe; returns the signal numbers it carried."""
        seen: list[int] = []
        for _ in range(1024):
            try:
                data = os.read(self.fd, 256)
            except BlockingIOError:
                break
            if not data:
                break
            seen.extend(data)
        return seen

    def close(self) -> None:
        """Restore the previous handlers and wakeup fd, and close the pipe."""
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        for fd in (self.fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def install_exit_signals() -> ExitSignals:
    """Route SIGTERM and SIGINT to a flag plus a readable fd; call from the main thread."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    sigs = ExitSignals(fd=read_fd, _write_fd=write_fd)
    sigs._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in EXIT_SIGNALS:
        sigs._previous[signum] = signal.signal(signum, sigs._handler)
    return sigs
