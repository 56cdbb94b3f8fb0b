# SPDX-License-Identifier: MIT
"""Minimal QMP client: enough to quit QEMU and drive live migration from tests.

QMP is line-delimited JSON over a UNIX socket: a greeting, then ``qmp_capabilities``, then
commands whose replies (``return`` or ``error``) are interleaved with asynchronous events. Events
that arrive while waiting for a reply are queued so ``wait_event`` can still see them.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any


class QMPError(RuntimeError):
    """QEMU answered a command with an error, or the connection broke."""


class QMPClient:
    """A connected, capability-negotiated QMP session."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        """Connects (retrying until the socket accepts, bounded) and negotiates capabilities."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except OSError as e:
                sock.close()
                last = e
                if time.monotonic() >= deadline:
                    raise QMPError(f"cannot connect to QMP at {path}: {last}") from e
                time.sleep(0.05)
        self._sock = sock
        self._buf = b""
        self._events: deque[dict] = deque()
        self._next_id = 0
        greeting = self._read_message(deadline)
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        self.version = greeting["QMP"].get("version", {})
        self.execute("qmp_capabilities", timeout=max(0.1, deadline - time.monotonic()))

    def _read_message(self, deadline: float) -> dict:
        """Reads one JSON message, bounded by deadline."""
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPError("timed out waiting for QMP message")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout as e:
                raise QMPError("timed out waiting for QMP message") from e
            if not chunk:
                raise QMPError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        if not line.strip():
            return self._read_message(deadline)
        return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None,
                timeout: float = 30.0) -> Any:
        """Runs a command and returns its ``return`` value; raises QMPError on ``error``."""
        self._next_id += 1
        msg_id = f"t{self._next_id}"
        msg: dict[str, Any] = {"execute": command, "id": msg_id}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QMPError(f"QMP send failed: {e}") from e
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self._events.append(reply)
                continue
            if reply.get("id") != msg_id:
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"{command}: {err.get('class')}: {err.get('desc')}")
            return reply.get("return")

    def wait_event(self, name: str, timeout: float = 30.0) -> dict:
        """Returns the next event called name (queued or new), bounded by timeout."""
        for ev in list(self._events):
            if ev["event"] == name:
                self._events.remove(ev)
                return ev
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("event") == name:
                return msg
            if "event" in msg:
                self._events.append(msg)

    def events(self) -> list[dict]:
        """Drains and returns the events queued so far (without reading the socket)."""
        out = list(self._events)
        self._events.clear()
        return out

    def close(self) -> None:
        """Closes the socket; QEMU keeps running."""
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "QMPClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
