# SPDX-License-Identifier: MIT
"""Client for the guest's serial command agent (the loop in the initramfs's /agent.sh).

Wire format, chosen so any output survives a serial line and the host always finds the end:
- host → guest: ``<id> <timeout_s> <base64 of a shell script>\\n``; an empty line is a ping;
- guest → host: ``@@READY`` (at start and for each ping), then per command ``@@BEGIN <id>``,
  base64 lines of the combined stdout+stderr, ``@@END <id> <rc>``.
The guest runs each command under ``timeout -s KILL`` so a hung command returns rc 137 and the
agent stays usable; the host waits a little longer than that before giving up.

QEMU's ``-serial unix:...,server=on,wait=off`` drops bytes written while nobody is connected, so the
host may miss the first READY: ``wait_ready`` pings until one arrives.
"""

from __future__ import annotations

import base64
import binascii
import socket
import time
from pathlib import Path

from .image import BEGIN_PREFIX, END_PREFIX, READY_LINE


class AgentError(RuntimeError):
    """The agent did not answer in time, or answered something unparseable."""


class AgentClient:
    """One connection to the guest agent's serial port."""

    def __init__(self, path: str | Path, connect_timeout: float = 10.0) -> None:
        """Connects to QEMU's serial UNIX socket, retrying while QEMU creates it (bounded)."""
        deadline = time.monotonic() + connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except OSError as e:
                sock.close()
                if time.monotonic() >= deadline:
                    raise AgentError(f"cannot connect to agent socket {path}: {e}") from e
                time.sleep(0.05)
        self._sock = sock
        self._buf = b""
        self._seq = 0
        self.transcript: list[str] = []  # non-protocol lines seen, for diagnostics

    def _readline(self, deadline: float) -> str | None:
        """Next line (without CR/LF), or None when the deadline passes first."""
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(min(remaining, 1.0))
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise AgentError("agent connection closed (QEMU exited?)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("ascii", errors="replace").strip("\r\x00 ")

    def wait_ready(self, timeout: float = 60.0, ping_interval: float = 1.0) -> float:
        """Blocks until the agent says READY; returns seconds waited. Raises AgentError."""
        start = time.monotonic()
        deadline = start + timeout
        next_ping = start + ping_interval
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise AgentError(f"guest agent not ready after {timeout}s")
            line = self._readline(min(deadline, next_ping))
            if line == READY_LINE:
                # Swallow READYs answering our earlier pings so they can't confuse run().
                self._drain(0.2)
                return time.monotonic() - start
            if line:
                self.transcript.append(line)
            if time.monotonic() >= next_ping:
                self._sock.sendall(b"\n")
                next_ping = time.monotonic() + ping_interval

    def _drain(self, quiet: float) -> None:
        """Discards input until nothing has arrived for `quiet` seconds."""
        while True:
            line = self._readline(time.monotonic() + quiet)
            if line is None:
                return
            if line and line != READY_LINE:
                self.transcript.append(line)

    def run_bytes(self, cmd: str, timeout: float = 30.0) -> tuple[int, bytes]:
        """Runs cmd with the guest's sh; returns (exit status, raw combined output)."""
        self._seq += 1
        cid = f"c{self._seq}"
        guest_timeout = max(1, int(timeout + 0.999))
        payload = base64.b64encode(cmd.encode()).decode()
        self._sock.sendall(f"{cid} {guest_timeout} {payload}\n".encode())
        # Serial transfer of large output is slow under TCG: allow extra time after the command.
        deadline = time.monotonic() + guest_timeout + 15.0
        in_body = False
        body: list[str] = []
        while True:
            line = self._readline(deadline)
            if line is None:
                raise AgentError(f"no reply to {cmd!r} within {guest_timeout + 15}s")
            if line == f"{BEGIN_PREFIX} {cid}":
                in_body = True
                continue
            parts = line.split()
            if len(parts) == 3 and parts[0] == END_PREFIX and parts[1] == cid:
                try:
                    rc = int(parts[2])
                    data = base64.b64decode("".join(body), validate=False)
                except (ValueError, binascii.Error) as e:
                    raise AgentError(f"bad agent reply for {cmd!r}: {line}") from e
                return rc, data
            if in_body:
                body.append(line)
            elif line and line != READY_LINE:
                self.transcript.append(line)

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        """Runs cmd in the guest; returns (exit status, output decoded as UTF-8, lenient)."""
        rc, data = self.run_bytes(cmd, timeout)
        return rc, data.decode("utf-8", errors="replace")

    def check(self, cmd: str, timeout: float = 30.0) -> str:
        """Runs cmd and returns its output; raises AgentError on a non-zero exit status."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise AgentError(f"guest command {cmd!r} exited {rc}:\n{out}")
        return out

    def read_file(self, path: str, timeout: float = 60.0) -> bytes:
        """Fetches a guest file's bytes (binary-safe through the agent's base64 framing)."""
        rc, data = self.run_bytes(f"cat '{path}'", timeout)
        if rc != 0:
            raise AgentError(f"cannot read {path}: {data!r}")
        return data

    def write_file(self, path: str, data: bytes, chunk: int = 3000,
                   timeout: float = 30.0) -> None:
        """Writes bytes to a guest file, in base64 chunks small enough for one command line."""
        self.check(f": > '{path}'", timeout)
        for i in range(0, len(data), chunk):
            b64 = base64.b64encode(data[i:i + chunk]).decode()
            self.check(f"echo {b64} | base64 -d >> '{path}'", timeout)

    def close(self) -> None:
        """Closes the connection (the guest agent keeps running)."""
        try:
            self._sock.close()
        except OSError:
            pass
