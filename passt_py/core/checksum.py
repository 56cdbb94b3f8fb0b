# SPDX-License-Identifier: MIT
"""Internet checksums (csrc/checksum.c).

Byte order as in csrc/checksum.c: a partial sum is the folded one's complement sum of the
big-endian 16-bit words (int 0..0xffff); a checksum is the int whose big-endian encoding
(struct.pack("!H", c)) goes into the packet. IPv4-header and L4 helpers ignore what the
checksum field holds now, so they both compute and verify (compare with the stored field).
"""
from __future__ import annotations

from collections.abc import Sequence

from passt_py.core._lib import BytesLike, _iovec, check, ffi, lib

CSUM_AUTO = lib.PC_CSUM_AUTO
CSUM_SCALAR = lib.PC_CSUM_SCALAR
CSUM_AVX2 = lib.PC_CSUM_AVX2


def csum_partial(data: BytesLike, init: int = 0) -> int:
    """Partial sum of data, continuing from init (exact only after even-length data)."""
    buf = ffi.from_buffer(data)
    return lib.pc_csum_partial(buf, len(buf), init)


def csum_iov(buffers: Sequence[BytesLike], init: int = 0) -> int:
    """Partial sum of buffers laid end to end, each of any length."""
    iov, _keep = _iovec(buffers, writable=False)
    return lib.pc_csum_iov(iov, len(buffers), init)


def csum_fold(total: int) -> int:
    """Fold and complement a partial sum: the checksum field value (0 verifies good data)."""
    return lib.pc_csum_fold(total)


def csum_ipv4_header(hdr: BytesLike) -> int:
    """Header checksum for an IPv4 header of exactly len(hdr) bytes (20..60)."""
    buf = ffi.from_buffer(hdr)
    return check(lib.pc_csum_ipv4_header(buf, len(buf)), "csum_ipv4_header")


def pseudo_ipv4(src: BytesLike, dst: BytesLike, proto: int, length: int) -> int:
    """Partial sum of an IPv4 pseudo-header, to use as init for the L4 segment."""
    return lib.pc_csum_pseudo_ipv4(_addr(src, 4), _addr(dst, 4), proto, length)


def pseudo_ipv6(src: BytesLike, dst: BytesLike, proto: int, length: int) -> int:
    """Partial sum of an IPv6 pseudo-header, to use as init for the L4 segment."""
    return lib.pc_csum_pseudo_ipv6(_addr(src, 16), _addr(dst, 16), proto, length)


def csum_l4_ipv4(src: BytesLike, dst: BytesLike, proto: int, seg: BytesLike) -> int:
    """TCP (6) or UDP (17) checksum over IPv4 for the whole segment seg."""
    buf = ffi.from_buffer(seg)
    return check(lib.pc_csum_l4_ipv4(_addr(src, 4), _addr(dst, 4), proto, buf, len(buf)),
                 "csum_l4_ipv4")


def csum_l4_ipv6(src: BytesLike, dst: BytesLike, proto: int, seg: BytesLike) -> int:
    """TCP (6), UDP (17) or ICMPv6 (58) checksum over IPv6 for the whole segment seg."""
    buf = ffi.from_buffer(seg)
    return check(lib.pc_csum_l4_ipv6(_addr(src, 16), _addr(dst, 16), proto, buf, len(buf)),
                 "csum_l4_ipv6")


def csum_icmp4(msg: BytesLike) -> int:
    """ICMP (IPv4) checksum of the whole message msg."""
    buf = ffi.from_buffer(msg)
    return check(lib.pc_csum_icmp4(buf, len(buf)), "csum_icmp4")


def csum_impls() -> list[int]:
    """Implementations this CPU runs (CSUM_SCALAR, and CSUM_AVX2 where available)."""
    mask = lib.pc_csum_impls()
    return [impl for impl in (CSUM_SCALAR, CSUM_AVX2) if mask & (1 << impl)]


def csum_partial_impl(impl: int, data: BytesLike, init: int = 0) -> int:
    """csum_partial() forced through one implementation, so tests can cover each."""
    buf = ffi.from_buffer(data)
    return check(lib.pc_csum_partial_impl(impl, buf, len(buf), init), "csum_partial_impl")


def bench_csum(data: BytesLike, reps: int, impl: int = CSUM_AUTO) -> int:
    """Checksum data reps times inside C (no per-call overhead), for benchmarks."""
    buf = ffi.from_buffer(data)
    return check(lib.pc_bench_csum(impl, buf, len(buf), reps), "bench_csum")


def bench_memcpy(dst: bytearray, src: BytesLike, reps: int) -> None:
    """Copy src into dst reps times inside C: the yardstick for bench_csum()."""
    d = ffi.from_buffer(dst, require_writable=True)
    s = ffi.from_buffer(src)
    if len(d) < len(s):
        raise ValueError("destination shorter than source")
    check(lib.pc_bench_memcpy(d, s, len(s), reps), "bench_memcpy")


def _addr(addr: BytesLike, size: int) -> object:
    """Address bytes as a C pointer, after checking their length."""
    buf = ffi.from_buffer(addr)
    if len(buf) != size:
        raise ValueError(f"address must be {size} bytes, got {len(buf)}")
    return buf
