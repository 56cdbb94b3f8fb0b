# SPDX-License-Identifier: MIT
"""Guest memory regions and the dirty-page log (csrc/guest_mem.c).

The vhost-user layer maps the front-end's regions through this wrapper only; every guest
access is bounds-checked in C.
"""
from __future__ import annotations

from passt_py.core._lib import check, ffi, lib


class GuestMemory:
    """Guest memory regions mmapped from the front-end's fds; every access bounds-checked in C.

    The table holds at most 8 regions (the vhost-user baseline); fds passed in stay owned by
    the caller, who may close them once mapped. Rings built on this memory re-translate by
    themselves after any change of the table.
    """

    MAX_REGIONS = lib.PC_MEM_MAX_REGIONS

    def __init__(self) -> None:
        self._raw = ffi.new("char[]", lib.pc_mem_size())
        self._m = ffi.cast("struct pc_mem *", self._raw)
        lib.pc_mem_init(self._m)

    def add_region(self, fd: int, guest_phys_addr: int, size: int, user_addr: int,
                   mmap_offset: int) -> None:
        """Map one region (MAP_SHARED); overlapping or a ninth region raises CoreError."""
        check(lib.pc_mem_add_region(self._m, fd, guest_phys_addr, size, user_addr, mmap_offset),
              "add_region")

    def remove_region(self, guest_phys_addr: int, size: int, user_addr: int) -> None:
        """Unmap the region matching exactly (REM_MEM_REG); CoreError(ENOENT) if none."""
        check(lib.pc_mem_remove_region(self._m, guest_phys_addr, size, user_addr),
              "remove_region")

    def clear(self) -> None:
        """Unmap every region and the dirty log (new SET_MEM_TABLE, reset, close)."""
        if self._m is not None:
            lib.pc_mem_clear(self._m)

    close = clear

    def __del__(self) -> None:
        self.clear()

    @property
    def nregions(self) -> int:
        """Regions currently mapped."""
        return lib.pc_mem_nregions(self._m)

    def set_log(self, fd: int, size: int, offset: int) -> None:
        """Map the dirty log (SET_LOG_BASE mmap_size, mmap_offset), replacing any previous."""
        check(lib.pc_mem_set_log(self._m, fd, size, offset), "set_log")

    def clear_log(self) -> None:
        """Unmap the dirty log; logging stops until a new log is set."""
        lib.pc_mem_clear_log(self._m)

    @property
    def logging(self) -> bool:
        """True while logging is requested (LOG_ALL) *and* a log is mapped."""
        return bool(lib.pc_mem_logging(self._m))

    @logging.setter
    def logging(self, on: bool) -> None:
        lib.pc_mem_set_logging(self._m, 1 if on else 0)

    def read(self, gpa: int, length: int) -> bytes:
        """Copy guest memory out (control paths, tests); CoreError(EFAULT) if out of bounds."""
        if length < 0:
            raise ValueError("negative length")
        buf = ffi.new("uint8_t[]", max(length, 1))
        check(lib.pc_mem_read(self._m, gpa, buf, length), "guest read")
        return ffi.buffer(buf, length)[:]

    def write(self, gpa: int, data: bytes) -> None:
        """Copy into guest memory (all or nothing), dirty-logging the pages written."""
        check(lib.pc_mem_write(self._m, gpa, ffi.from_buffer(data), len(data)), "guest write")

    def uva_to_gpa(self, uva: int) -> int:
        """Guest-physical address of a front-end virtual address (e.g. the used ring's)."""
        return check(lib.pc_mem_uva_to_gpa(self._m, uva), "uva_to_gpa")
