# SPDX-License-Identifier: MIT
"""TCP data-path throughput: host->guest (TcpPath.rx) and guest->host (classify+send_payloads).

Each case moves BENCH_TCP_BYTES (default 512 MiB) over a real loopback TCP connection whose
other end is a child process (a writer for host->guest, a discarding reader for guest->host),
so the kernel's share of the work is in the numbers, as it is in a real back-end.

host->guest: a memfd ring of 1024 mergeable RX buffers; one rx() call per loop, then what the
guest would do, untimed: the consumed buffers are offered again, and the delivered bytes are
acknowledged (recv MSG_TRUNC, which moves the peek offset back). "64KiB" uses GSO + partial
checksums into 4 KiB buffers (a TSO guest); "1500" makes MSS segments with full TCP checksums
into 2 KiB buffers (a guest without offloads), "1500-partial" the same
with NEEDS_CSUM.
guest->host: the ring holds TX frames (64 KiB frames in 4 KiB descriptors, like a TSO skb, or
1514-byte frames); one loop is pop_tx + classify + send_payloads (whatever the socket takes)
+ release; republishing the frames is untimed.

Reported per case: GB/s inside the timed calls, CPU seconds per GB of this process (user+sys,
of this thread: the kernel's copy on our side is counted) in the timed calls, and memcpy bandwidth as the yardstick.
Run: python -m pytest bench/bench_tcp_path.py -s   or   python bench/bench_tcp_path.py
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from passt_py import core  # noqa: E402
from passt_py.core import GuestMemory, TcpPath, TcpTemplate, Virtqueue  # noqa: E402
from tests.virtq_driver import DriverRing, GuestRam  # noqa: E402

TOTAL = int(os.environ.get("BENCH_TCP_BYTES", 512 << 20))
GPA = 0x100000
RAM = 96 << 20
NUM = 1024
HDR = 12
RESULTS: dict[str, tuple[float, float]] = {}

_WRITER = r"""
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
left = int(sys.argv[2]); buf = bytes(range(256)) * 4096
while left > 0:
    left -= s.send(buf[:min(left, len(buf))])
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
"""
_READER = r"""
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
buf = bytearray(1 << 20)
while s.recv_into(buf, len(buf), socket.MSG_TRUNC):
    pass
"""


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (ours, peer)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    ours = socket.socket()
    ours.connect(lst.getsockname())
    peer, _ = lst.accept()
    lst.close()
    return ours, peer


def _child(code: str, peer: socket.socket, *args: str) -> subprocess.Popen:
    """Run code in a child given peer's fd number first; our copy of peer is closed."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(peer.fileno()), *args],
                            pass_fds=(peer.fileno(),))
    peer.close()
    return proc


def _cpu() -> float:
    return time.thread_time()     # user + system of this thread, ns resolution


def _ring(ram: GuestRam, index: int) -> tuple[DriverRing, Virtqueue, GuestMemory]:
    mem = GuestMemory()
    ram.map_into(mem)
    ring = DriverRing(ram, NUM)
    vq = Virtqueue(mem, index)
    vq.set_num(NUM)
    desc, used, avail, log = ring.vring_addr()
    vq.set_addr(desc, used, avail, log)
    vq.start()
    return ring, vq, mem


def bench_h2g(case: str) -> tuple[float, float]:
    """Host to guest through TcpPath.rx(); returns (GB/s, CPU s per GB) of the timed calls."""
    buf, opts = {"64KiB": (4096, core.TCP_RX_GSO | core.TCP_RX_CSUM_PARTIAL),
                 "1500": (2048, 0), "1500-partial": (2048, core.TCP_RX_CSUM_PARTIAL)}[case]
    ram = GuestRam(((GPA, RAM),))
    ring, vq, mem = _ring(ram, 0)
    heads = ring.add_rx_buffers(NUM, buf)
    path = TcpPath(vq)
    ours, peer = _pair()
    proc = _child(_WRITER, peer, str(TOTAL))
    ours.setblocking(False)
    core.set_peek_offset(ours, 0)
    import ipaddress
    tmpl = TcpTemplate(b"\x52\x54\0\0\0\1", b"\x9a\x55\0\0\0\2",
                       ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("10.0.0.2"),
                       443, 40000, mss=1460)
    discard = bytearray(8 << 20)
    done, wall, cpu, nxt = 0, 0.0, 0.0, 0
    while done < TOTAL:
        t0, c0 = time.perf_counter(), _cpu()
        n = path.rx(ours.fileno(), tmpl, 8 << 20, HDR, True, opts)
        wall += time.perf_counter() - t0
        cpu += _cpu() - c0
        used = path.last.bufs
        if used:                            # the guest recycles its buffers, in ring order
            ring.republish([heads[(nxt + k) % NUM] for k in range(used)])
            nxt = (nxt + used) % NUM
            ring.last_used = ring.used_idx
        if n:
            tmpl.seq = (tmpl.seq + n) & 0xFFFFFFFF
            ours.recv_into(discard, n, socket.MSG_TRUNC)     # the guest's ACK
            done += n
        elif path.last.stop == core.TCP_STOP_EOF:
            break
        else:
            import select
            select.select([ours], [], [], 1.0)
    ours.close()
    proc.wait(10)
    vq.close()
    mem.clear()
    ram.close()
    assert done == TOTAL
    return done / wall / 1e9, cpu / (done / 1e9)


def bench_g2h(case: str) -> tuple[float, float]:
    """Guest to host: pop_tx + classify + send_payloads + release; (GB/s, CPU s per GB)."""
    size, nframes = {"64KiB": (65536, 48), "1500": (1460, 256)}[case]
    ram = GuestRam(((GPA, RAM),))
    ring, vq, mem = _ring(ram, 1)
    frame = bytes(14 + 20 + 20) + bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = bytearray(frame)
    frame[12:14] = b"\x08\x00"
    frame[14] = 0x45
    frame[16:18] = (len(frame) - 14).to_bytes(2, "big") if len(frame) - 14 < 65536 else b"\xff\xff"
    frame[23] = 6
    frame[14 + 20 + 12] = 0x50
    if len(frame) - 14 > 65535:
        frame = frame[:14 + 65535]
    split = [HDR] + [4096] * ((len(frame)) // 4096) if size > 4096 else None
    heads = [ring.add_tx_buffer(bytes(frame), split=split, publish=False) for _ in range(nframes)]
    ring.set_avail_idx(0)
    ring.avail_idx = 0
    ours, peer = _pair()
    proc = _child(_READER, peer)
    ours.setblocking(False)
    batch = core.TxBatch(64, max_iov=4096)
    done, wall, cpu, pending = 0, 0.0, 0.0, 0
    payload = len(frame) - 54
    while done < TOTAL:
        if pending == 0:                               # the guest queues frames again
            ring.republish(heads)
            pending = nframes
        t0, c0 = time.perf_counter(), _cpu()
        vq.pop_tx(64, HDR, batch)
        recs = core.classify(batch)
        items = [(i, recs[i].payload_off, recs[i].payload_len) for i in range(batch.count)]
        sent = 0
        while sent < batch.count * payload:             # the TCP code would queue the rest
            k = sent // payload
            first = (k, recs[k].payload_off + sent % payload, payload - sent % payload)
            sent += core.send_payloads(ours.fileno(), batch, [first] + items[k + 1:])
            if sent < batch.count * payload:
                wall += time.perf_counter() - t0
                cpu += _cpu() - c0
                import select
                select.select([], [ours], [], 1.0)
                t0, c0 = time.perf_counter(), _cpu()
        pending -= batch.count
        vq.release(batch)
        wall += time.perf_counter() - t0
        cpu += _cpu() - c0
        done += sent
    ours.close()
    proc.wait(10)
    vq.close()
    mem.clear()
    ram.close()
    return done / wall / 1e9, cpu / (done / 1e9)


def memcpy_gbs(size: int) -> float:
    """memcpy bandwidth (GB/s) for size-byte copies, in C."""
    src, dst = bytes(size), bytearray(size)
    reps = max(1, (1 << 30) // size)
    t0 = time.perf_counter()
    core.bench_memcpy(dst, src, reps)
    return size * reps / (time.perf_counter() - t0) / 1e9


CASES = ["h2g-64KiB", "h2g-1500", "h2g-1500-partial", "g2h-64KiB", "g2h-1500"]


@pytest.mark.parametrize("case", CASES)
def test_tcp_path_throughput(case: str) -> None:
    """Throughput and CPU cost per GB of one direction and frame size."""
    kind, size = case.split("-", 1)
    gbs, cpu = (bench_h2g if kind == "h2g" else bench_g2h)(size)
    RESULTS[case] = (gbs, cpu)
    print(f"\n{case:18s} {gbs:6.2f} GB/s  {cpu:6.3f} CPU s/GB")
    assert gbs > 0


def test_memcpy_yardstick() -> None:
    """memcpy bandwidth next to the data path numbers."""
    for size in (65536, 16 << 20):
        gbs = memcpy_gbs(size)
        print(f"\nmemcpy {size:>9d} B  {gbs:6.2f} GB/s  {1 / gbs:6.3f} s/GB")


if __name__ == "__main__":
    for c in CASES:
        test_tcp_path_throughput(c)
    test_memcpy_yardstick()
