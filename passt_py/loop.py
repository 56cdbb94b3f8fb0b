# SPDX-License-Identifier: MIT
"""The event loop: epoll over file descriptors, a timer heap, and deferred work.

It knows nothing about protocols. Owners register a file descriptor with a callback that
receives the epoll event mask; timers call back at (or shortly after) a monotonic deadline;
deferred callbacks run once after the current batch of events, which is where work that
should happen once per batch (ring flushes, notifications) goes.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

FdCallback = Callable[[int], None]
TimerCallback = Callable[[], None]
#: Waits on the epoll fd like epoll's poll(timeout) and returns the (fd, mask) events it did
#: not handle itself (core.FastPath.poll: the C core's hot paths).
Poller = Callable[[int, float], "list[tuple[int, int]]"]

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR
HUP = select.EPOLLHUP | select.EPOLLRDHUP

#: How many epoll events one wait returns at most.
MAX_EVENTS = 256


@dataclass(order=True)
class Timer:
    """A one-shot timer; cancel() makes it a no-op without touching the heap."""

    deadline: float
    seq: int
    callback: TimerCallback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Stop the timer from firing."""
        self.cancelled = True


class EventLoop:
    """epoll + timers + deferred work; run() returns when stop() is called."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, FdCallback] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._deferred: list[TimerCallback] = []
        self._poller: Poller | None = None
        self._running = False
        self.exit_code = 0

    # ---- file descriptors ----
    def add(self, fd: int, events: int, callback: FdCallback) -> None:
        """Watch ``fd`` for ``events``; ``callback(mask)`` runs when any fire."""
        self._epoll.register(fd, events)
        self._handlers[fd] = callback

    def modify(self, fd: int, events: int) -> None:
        """Change the events watched on an already registered ``fd``."""
        self._epoll.modify(fd, events)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (no error if it was not watched or is already closed)."""
        if self._handlers.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        """The epoll fd (for a poller that acts on some events itself)."""
        return self._epoll.fileno()

    def set_poller(self, poller: Poller | None) -> None:
        """Wait through ``poller`` instead of epoll's poll(); None: epoll's again."""
        self._poller = poller

    def watching(self, fd: int) -> bool:
        """Whether ``fd`` is registered."""
        return fd in self._handlers

    # ---- timers and deferred work ----
    def call_later(self, delay: float, callback: TimerCallback) -> Timer:
        """Run ``callback`` once after ``delay`` seconds."""
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def defer(self, callback: TimerCallback) -> None:
        """Run ``callback`` once after the current batch of events."""
        self._deferred.append(callback)

    # ---- running ----
    def stop(self, exit_code: int = 0) -> None:
        """Make run() return ``exit_code`` after the current iteration."""
        self._running = False
        self.exit_code = exit_code

    def run(self) -> int:
        """Dispatch events until stop(); returns the exit code given to stop()."""
        self._running = True
        while self._running:
            self.run_once(self._next_timeout())
        return self.exit_code

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, dispatch fd events, expired timers, deferred work."""
        try:
            if self._poller is not None:
                events = self._poller(self._epoll.fileno(), timeout)
            else:
                events = self._epoll.poll(timeout, MAX_EVENTS)
        except InterruptedError:
            events = []
        for fd, mask in events:
            handler = self._handlers.get(fd)
            if handler is not None:
                self._guarded(handler, mask)
        self._run_timers()
        self._run_deferred()

    def _guarded(self, callback: Callable[..., None], *args: int) -> None:
        """Run a callback; an exception is a bug, logged with its traceback, not fatal."""
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - one broken handler must not stop the back-end
            log.exception("unhandled error in event handler %r", callback)

    def _next_timeout(self) -> float:
        if self._deferred:
            return 0.0
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return 1.0
        return max(0.0, min(1.0, self._timers[0].deadline - time.monotonic()))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guarded(timer.callback)

    def _run_deferred(self) -> None:
        # Bounded: work deferred by deferred work runs in the next iteration.
        pending, self._deferred = self._deferred, []
        for callback in pending:
            self._guarded(callback)

    def close(self) -> None:
        """Release the epoll fd."""
        self._epoll.close()


def set_nonblocking(fd: int) -> None:
    """Make ``fd`` non-blocking (eventfds and sockets handed over by the front-end)."""
    os.set_blocking(fd, False)
