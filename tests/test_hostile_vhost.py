# SPDX-License-Identifier: MIT
"""Hostile vhost-user front-ends: sequences of wrong messages over a real socket.

Every request code with payloads of wrong sizes and hostile numbers (ring indices, sizes, bases,
addresses, memory tables), missing and extra descriptors of the wrong kinds, wrong flags,
in random orders. After each sequence the back-end is alive, has leaked no descriptor, and the
next front-end negotiates and moves a frame. Against the in-process back-end (fast, many
sequences) and a real passt-py process (a normal ARP exchange through the rings after).
"""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from passt_py.vhost_user import wire
from passt_py.vhost_user.wire import Message, Request
from tests.conftest import hypothesis_budget
from tests.frontend import Frontend, FrontendError, spawn_passt_py
from tests.fuzz import targets
from tests.inproc_backend import InprocBackend
from tests.procs import stop


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def hostile_sequence(fe: Frontend, data: bytes) -> None:
    """Send messages decoded from ``data``; read whatever comes back without waiting long."""
    r = targets.Reader(data)
    fe.sock.settimeout(0.01)
    for _ in range(1 + r.uint(1) % 16):
        if not r.left():
            break
        request = r.pick(targets.REQUESTS)
        flags = wire.VERSION | (wire.FLAG_NEED_REPLY if r.uint(1) & 1 else 0)
        payload = targets.vhost_payload(r, request)
        fds = [targets.new_fd(r.uint(1), fe.ram.fd) for _ in range(r.pick((0, 1, 1, 2, 9)))]
        try:
            if r.uint(1) == 0xFF:   # a lying size field in the header
                fe.send_raw(struct.pack("=III", request, flags, r.uint(2)) + payload, fds)
            else:
                fe.send_raw(Message(request, flags, payload).encode(), fds)
        except OSError:
            return                   # the back-end hung up on us: allowed
        finally:
            for fd in fds:
                os.close(fd)
        try:
            while True:
                fe.sock.recv(4096)
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            return
        if fe.sock.fileno() < 0:
            return


def wait_disconnected(backend: InprocBackend) -> None:
    """Until the back-end has seen the last front-end go (it refuses a second one)."""
    deadline = time.monotonic() + 5
    while backend.server.conn_fd is not None and time.monotonic() < deadline:
        time.sleep(0.005)


def arp_round_trip(path: str) -> bool:
    """A new front-end's guest asks for the gateway's MAC and gets the answer."""
    from scapy.layers.l2 import ARP, Ether
    with Frontend(path) as fe:
        fe.connect_all()
        fe.provide_rx(16)
        req = Ether(src="52:54:00:12:34:56", dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc="52:54:00:12:34:56", psrc="10.200.0.2", pdst="10.200.0.1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fe.send_frame(bytes(req))
            for f in fe.recv_frames(4, timeout=0.5):
                if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
                    return True
    return False


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    be = InprocBackend(str(tmp_path_factory.mktemp("hv") / "vhost.sock")).start()
    yield be
    be.stop()
    assert be.error is None, be.error


@hypothesis_budget(0.6,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300))
def test_hostile_message_sequences_leave_the_backend_serving(backend, data):
    """Any sequence: the back-end survives, leaks nothing, serves the next front-end."""
    with Frontend(backend.path, mem_size=targets.VhostRig.MEM) as fe:
        fe.negotiate()
        hostile_sequence(fe, data)
    wait_disconnected(backend)
    assert backend.alive, backend.error
    with Frontend(backend.path) as fe:
        fe.connect_all()
        fe.send_frame(b"\xaa" * 100)
        got = None
        while got != b"\xaa" * 100:
            got = backend.tx_frames.get(timeout=5)
    assert backend.error is None, backend.error


def test_hostile_sequences_do_not_leak_descriptors(backend):
    """Fifty sequences with stray descriptors leave the process's fd count where it was."""
    import random
    rng = random.Random(7)
    # No warm-up: a first front-end creates nothing that outlives it (checked: a fresh
    # InprocBackend's fd count is the same before and after one), so a leak of the very
    # first session counts too.
    before = fd_count()
    for _ in range(50):
        with Frontend(backend.path, mem_size=targets.VhostRig.MEM) as fe:
            fe.negotiate()
            hostile_sequence(fe, rng.randbytes(200))
        wait_disconnected(backend)
    while not backend.tx_frames.empty():
        backend.tx_frames.get_nowait()
    assert fd_count() <= before, "descriptors leaked across hostile sessions"


def test_partial_message_then_disconnect(backend):
    """A header announcing a payload that never comes, then a hang-up: next front-end works."""
    with Frontend(backend.path) as fe:
        fe.send_raw(struct.pack("=III", Request.SET_MEM_TABLE, wire.VERSION, 200) + b"\0" * 10)
    wait_disconnected(backend)
    with Frontend(backend.path) as fe:
        fe.connect_all()
        fe.send_frame(b"\x55" * 64)
        assert backend.tx_frames.get(timeout=5) == b"\x55" * 64


def test_second_frontend_while_one_is_connected_is_refused_or_queued(backend):
    """A second connection cannot take over the device of the first."""
    wait_disconnected(backend)
    with Frontend(backend.path) as first:
        first.connect_all()
        try:
            second = Frontend(backend.path, timeout=1.0)
        except OSError:
            second = None
        if second is not None:
            with second:
                try:
                    second.get_u64(Request.GET_FEATURES)
                except (FrontendError, OSError):
                    pass
        first.send_frame(b"\x66" * 80)
        got = backend.tx_frames.get(timeout=5)
        while got != b"\x66" * 80:
            got = backend.tx_frames.get(timeout=5)


def test_driver_vhost_target_in_process():
    """The session-level target (real NetDevice, no socket) over its seeds and some mutants."""
    from tests.fuzz import driver
    res = driver.run("vhost", targets.fuzz_vhost, 2.0, seed=99)
    assert res.finding is None, res.finding


# ---- a real passt-py process ----
@pytest.fixture
def passt_py(tmp_path):
    path = str(tmp_path / "passt-py.sock")
    proc = spawn_passt_py(path, ["-a", "10.200.0.2/24", "-g", "10.200.0.1"])
    yield path, proc
    stop(proc)


def test_passt_py_survives_hostile_frontends_and_serves_the_next(passt_py):
    """Twenty hostile sequences, then a normal guest gets its ARP answer; no fd leak."""
    import random
    path, proc = passt_py
    rng = random.Random(11)
    assert arp_round_trip(path)
    time.sleep(0.2)
    before = fd_count(proc.pid)
    for _ in range(20):
        with Frontend(path, mem_size=targets.VhostRig.MEM) as fe:
            fe.negotiate()
            hostile_sequence(fe, rng.randbytes(250))
        assert proc.poll() is None
    assert arp_round_trip(path)
    time.sleep(0.3)
    assert fd_count(proc.pid) <= before
    assert proc.poll() is None
