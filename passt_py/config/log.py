# SPDX-License-Identifier: MIT
"""Logging set-up: where messages go and how much of them, with passt's choices.

Destinations: stderr when running in the foreground (-f, implied by -d), a size-capped file with
-l, otherwise syslog (ident "passt-py", through /dev/log) or stderr if there is no syslog socket.
Levels: warnings and errors with -q, info by default, debug with -d, and TRACE (below DEBUG) with
--trace. Per-packet code must guard its messages with ``if trace_enabled():`` so that nothing
per packet costs anything unless --trace is on.

The log file follows passt's --log-size semantics: the file never grows past the cap; when a new
message would not fit, the oldest part of the file is cut away (about a third, at a line
boundary) by copying the newest part to the front in bounded chunks, never reading it whole.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

ROOT = "passt_py"
SYSLOG_IDENT = "passt-py"
SYSLOG_SOCKET = "/dev/log"
CUT_RATIO = 0.3  # share of the file dropped when it is full
COPY_CHUNK = 64 * 1024

_logger = logging.getLogger(ROOT)


def trace_enabled() -> bool:
    """True when --trace is on; cheap enough to call per packet."""
    return _logger.isEnabledFor(TRACE)


def trace(logger: logging.Logger, msg: str, *args: object) -> None:
    """Log at TRACE level on ``logger``."""
    if logger.isEnabledFor(TRACE):
        logger.log(TRACE, msg, *args)


class RateLimited:
    """At most ``burst`` messages per ``interval`` seconds from one call site.

    A guest can produce a bad descriptor chain or frame per packet; logging each one would let
    it fill the log (and burn CPU) at line rate. Messages over the limit are counted and the
    count is reported with the next message that gets through.
    """

    def __init__(self, logger: logging.Logger, interval: float = 1.0, burst: int = 5,
                 clock=time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._window_start = -interval
        self._sent = 0
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log unless over the limit; returns whether the message was emitted."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        if now - self._window_start >= self.interval:
            self._window_start, self._sent = now, 0
        if self._sent >= self.burst:
            self.suppressed += 1
            return False
        self._sent += 1
        if self.suppressed:
            msg = f"{msg} (%d similar messages suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, msg, *args)
        return True

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)


class CappedFileHandler(logging.Handler):
    """Log file that stays under ``max_bytes`` by dropping its oldest lines when full."""

    def __init__(self, path: str, max_bytes: int) -> None:
        super().__init__()
        if max_bytes < 256:
            raise ValueError("log size cap too small")
        self.path = path
        self.max_bytes = max_bytes
        # Truncated at start like passt's log file; readable by the owner only.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._size = 0
        self._io_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Append one formatted record, making room first if needed."""
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            if len(data) > self.max_bytes // 2:
                data = data[: self.max_bytes // 2 - 1] + b"\n"
            with self._io_lock:
                if self._size + len(data) > self.max_bytes:
                    self._cut(len(data))
                os.pwrite(self._fd, data, self._size)
                self._size += len(data)
        except Exception:  # logging must never take the program down
            self.handleError(record)

    def _cut(self, need: int) -> None:
        """Drop the oldest part of the file so ``need`` more bytes fit, keeping whole lines."""
        keep = min(int(self.max_bytes * (1 - CUT_RATIO)), self.max_bytes - need)
        start = max(0, self._size - keep)
        # Advance to just after the next newline so the kept part starts with a whole line.
        pos = start
        aligned = start == 0 or os.pread(self._fd, 1, start - 1) == b"\n"
        while not aligned and pos < self._size:
            chunk = os.pread(self._fd, min(COPY_CHUNK, self._size - pos), pos)
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                pos += nl + 1
                break
            pos += len(chunk)
        src, dst = pos, 0
        while src < self._size:
            chunk = os.pread(self._fd, min(COPY_CHUNK, self._size - src), src)
            if not chunk:
                break
            os.pwrite(self._fd, chunk, dst)
            src += len(chunk)
            dst += len(chunk)
        os.ftruncate(self._fd, dst)
        self._size = dst

    def close(self) -> None:
        """Close the file descriptor once."""
        with self._io_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


def _syslog_handler() -> logging.Handler | None:
    """Handler for the local syslog socket, or None if there is none."""
    if not os.path.exists(SYSLOG_SOCKET):
        return None
    try:
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError:
        return None
    handler.ident = f"{SYSLOG_IDENT}[{os.getpid()}]: "
    return handler


def level_for(debug: bool, trace: bool, quiet: bool) -> int:
    """Logging level for the -d/--trace/-q combination."""
    if trace:
        return TRACE
    if debug:
        return logging.DEBUG
    if quiet:
        return logging.WARNING
    return logging.INFO


def setup_logging(
    *,
    foreground: bool,
    debug: bool = False,
    trace: bool = False,
    quiet: bool = False,
    log_file: str | None = None,
    log_size: int = 1 << 20,
) -> logging.Logger:
    """Configure the ``passt_py`` logger (replacing earlier handlers) and return it."""
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
        old.close()
    _logger.setLevel(level_for(debug, trace, quiet))
    _logger.propagate = False
    handlers: list[logging.Handler] = []
    timed = logging.Formatter("%(relativeCreated)10.3f %(levelname)s %(name)s: %(message)s")
    if foreground:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(timed if debug or trace else logging.Formatter("%(message)s"))
        handlers.append(stderr)
    if log_file is not None:
        capped = CappedFileHandler(log_file, log_size)
        capped.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(capped)
    elif not foreground:
        syslog = _syslog_handler()
        if syslog is not None:
            syslog.setFormatter(logging.Formatter("%(message)s"))
            handlers.append(syslog)
        else:
            handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        _logger.addHandler(handler)
    return _logger
