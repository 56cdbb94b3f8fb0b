# SPDX-License-Identifier: MIT
"""A stand-in for passt-repair: connects to a back-end's repair socket and applies each command.

Shared by tests/test_tcp_repair.py (in a thread) and tests/rootless_migration_driver.py (as a
process of its own). Like the real helper, it takes one command byte (the TCP_REPAIR mode) with
up to 253 descriptors, sets the mode on each, closes them and echoes the byte back.
"""
from __future__ import annotations

import array
import os
import socket
import struct
import threading

from passt_py.migrate import repair as tr


class FakeHelper(threading.Thread):
    """Plays passt-repair: connects, applies each command byte to the fds, echoes it.

    ``commands`` records (mode, descriptor count) per command; with ``fail_after`` it stops
    answering (closing what it got) after that many commands.
    """

    def __init__(self, path: str, fail_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.fail_after = fail_after
        self.commands: list[tuple[int, int]] = []

    def run(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        sock.settimeout(5)
        try:
            while True:
                msg, anc, _flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(253 * 4))
                if not msg:
                    return
                fds = array.array("i")
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(data[:len(data) - len(data) % 4])
                mode = struct.unpack("b", msg)[0]
                self.commands.append((mode, len(fds)))
                if self.fail_after is not None and len(self.commands) > self.fail_after:
                    for fd in fds:
                        os.close(fd)
                    return
                for fd in fds:
                    tr.set_repair(fd, mode)
                    os.close(fd)
                sock.send(msg)
        except OSError:
            return
        finally:
            sock.close()
