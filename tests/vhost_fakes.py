# SPDX-License-Identifier: MIT
"""A fake vhost-user device for session and transport tests (no guest memory, no C core)."""
from __future__ import annotations

import errno
import os
from typing import Sequence

from passt_py.vhost_user import wire
from passt_py.vhost_user.session import DeviceError
from passt_py.vhost_user.wire import LogDescription, MemoryRegion, VringAddr, bit

OFFERED = (bit(wire.VIRTIO_F_VERSION_1) | bit(wire.VIRTIO_NET_F_MRG_RXBUF)
           | bit(wire.VHOST_F_LOG_ALL))


class FakeDevice:
    """Records calls; owns descriptors the way the real device does (closes them on reset)."""

    num_queues = 2
    offered_features = OFFERED

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.kept: list[int] = []
        self.fail_mem = False
        self.consumed = [0, 0]
        self.bases = [0, 0]

    def _keep(self, fd: int | None) -> None:
        if fd is not None:
            self.kept.append(fd)

    def set_features(self, features: int) -> None:
        self.calls.append(("features", features))

    def set_mem_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> None:
        for fd in fds:
            os.close(fd)
        if self.fail_mem:
            raise DeviceError(errno.EINVAL, "unmappable")
        self.calls.append(("mem", tuple(regions)))

    def set_log_base(self, desc: LogDescription, fd: int) -> None:
        os.close(fd)
        self.calls.append(("log", desc))

    def set_log_fd(self, fd: int) -> None:
        self._keep(fd)

    def set_vring_num(self, index: int, num: int) -> None:
        self.calls.append(("num", index, num))

    def set_vring_addr(self, addr: VringAddr) -> None:
        self.calls.append(("addr", addr.index))

    def set_vring_base(self, index: int, base: int) -> None:
        self.bases[index] = base

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self._keep(fd)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self._keep(fd)

    def set_vring_err(self, index: int, fd: int | None) -> None:
        self._keep(fd)

    def set_vring_enabled(self, index: int, enabled: bool) -> None:
        self.calls.append(("enable", index, enabled))

    def start_ring(self, index: int) -> None:
        self.calls.append(("start", index))

    def stop_ring(self, index: int) -> int:
        self.calls.append(("stop", index))
        return (self.bases[index] + self.consumed[index]) & 0xFFFF

    def reset(self) -> None:
        self.calls.append(("reset",))
        for fd in self.kept:
            os.close(fd)
        self.kept.clear()
