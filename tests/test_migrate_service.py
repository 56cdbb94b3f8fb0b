# SPDX-License-Identifier: MIT
"""Migration through the device-state channel of two passt-py processes, driven like QEMU.

The test front-end (tests/frontend.py) plays QEMU: it suspends the source's rings, reads the
state from SET_DEVICE_STATE_FD(save) to EOF, writes it into the target with
SET_DEVICE_STATE_FD(load) and asks CHECK_DEVICE_STATE on both. Flows made on the source must
work on the target; broken streams must give a non-zero CHECK while the back-end keeps
serving; a failed save must leave the source serving the guest.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import pytest
from pyroute2.netns import popns, pushns

from passt_py.link.ethernet import parse_header
from passt_py.link.ip import parse_ip, parse_udp, udp_frame
from passt_py.vhost_user.wire import Request
from tests import netns
from tests.frontend import Frontend
from tests.procs import stop

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and iproute2")

GUEST = ipaddress.IPv4Address("10.200.0.2")
GW = ipaddress.IPv4Address("10.200.0.1")
GUEST_MAC = bytes.fromhex("525400123456")
OUR_MAC = bytes.fromhex("9a559a559a55")


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.netns() as name:
        yield name


@contextlib.contextmanager
def backend(ns: str, *extra: str) -> Iterator[str]:
    """A passt-py process in ``ns``; yields its socket path; stopped by PID."""
    workdir = tempfile.mkdtemp(prefix="pm-", dir="/tmp")
    path = os.path.join(workdir, "vu.sock")
    log = open(os.path.join(workdir, "log"), "wb")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "passt_py",
                             "--vhost-user", "-f", "-d", "-s", path, *extra],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert proc.poll() is None, open(log.name).read()
            assert time.monotonic() < deadline, "no socket"
            time.sleep(0.02)
        yield path
    finally:
        stop(proc)
        log.close()


def _log(path: str) -> str:
    """The back-end's log so far."""
    with open(os.path.join(os.path.dirname(path), "log")) as f:
        return f.read()


def _server(ns: str) -> socket.socket:
    pushns(ns)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        popns()
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def _guest_udp(fe: Frontend, sport: int, dport: int, payload: bytes) -> None:
    fe.send_frame(udp_frame(OUR_MAC, GUEST_MAC, GUEST, GW, sport, dport, payload))


def _udp_payloads(fe: Frontend, timeout: float = 5.0) -> list[bytes]:
    out = []
    for frame in fe.recv_frames(8, timeout=timeout):
        eth = parse_header(frame)
        pkt = parse_ip(frame, eth.ethertype) if eth else None
        if pkt is not None and pkt.proto == 17:
            out.append(bytes(parse_udp(pkt.l4).payload))
    return out


def _flow_on_source(ns: str, path: str, server: socket.socket) -> tuple[Frontend, tuple]:
    fe = Frontend(path)
    fe.connect_all()
    fe.provide_rx(64)
    _guest_udp(fe, 40000, server.getsockname()[1], b"hello")
    data, peer = server.recvfrom(100)
    assert data == b"hello" and peer[1] == 40000
    return fe, peer


def test_state_moves_between_two_processes_and_flows_work_there(ns: str) -> None:
    """Save from A, load into B: CHECK 0 on both, and B delivers replies on A's UDP flow."""
    server = _server(ns)
    with backend(ns, "--migrate-exit") as a, backend(ns) as b:
        fe_a, peer = _flow_on_source(ns, a, server)
        state, check = fe_a.save_state()
        assert check == 0 and state[:8] == b"passt-py"
        with Frontend(b) as fe_b:
            fe_b.negotiate()
            assert fe_b.load_state(state) == 0
            fe_b.start()
            fe_b.provide_rx(64)
            server.sendto(b"on the target", peer)
            assert b"on the target" in _udp_payloads(fe_b)
        fe_a.close()
    server.close()


def test_hostile_stream_fails_check_and_target_keeps_serving(ns: str) -> None:
    """Garbage, then a truncated real stream: CHECK non-zero; a good stream still loads."""
    server = _server(ns)
    with backend(ns, "--migrate-exit") as a, backend(ns) as b:
        fe_a, _peer = _flow_on_source(ns, a, server)
        state, check = fe_a.save_state()
        assert check == 0
        with Frontend(b) as fe_b:
            fe_b.negotiate()
            assert fe_b.load_state(os.urandom(5000)) != 0
            assert fe_b.get_u64(Request.GET_QUEUE_NUM) == 1
            assert fe_b.load_state(state[:len(state) // 2]) != 0
            assert fe_b.load_state(state[:8] + struct.pack("!II", 99, 99) + state[16:]) != 0
            assert fe_b.load_state(state) == 0
            fe_b.start()
        fe_a.close()
        text = _log(b)
    server.close()
    assert "failed at stage read" in text and "unsupported version 99" in text


def test_failed_save_rolls_back_and_source_keeps_serving(ns: str) -> None:
    """The front-end drops the pipe: CHECK non-zero, and the UDP flow works again on A."""
    server = _server(ns)
    with backend(ns) as a:
        fe_a, peer = _flow_on_source(ns, a, server)
        _state, check = fe_a.save_state(close_early=True)
        assert check != 0
        fe_a.start(base=fe_a.stopped_bases)
        fe_a.provide_rx(64)
        server.sendto(b"still here", peer)
        assert b"still here" in _udp_payloads(fe_a)
        _guest_udp(fe_a, 40000, server.getsockname()[1], b"and back")
        assert server.recvfrom(100)[0] == b"and back"
        fe_a.close()
        text = _log(a)
    server.close()
    assert "rolled back" in text


def test_resume_after_handover_rolls_back_on_the_source(ns: str) -> None:
    """The state went out (CHECK 0) but QEMU resumes the guest here: the rings start again
    and the source serves the guest's flows again."""
    server = _server(ns)
    with backend(ns) as a:
        fe_a, peer = _flow_on_source(ns, a, server)
        _state, check = fe_a.save_state()
        assert check == 0
        fe_a.start(base=fe_a.stopped_bases)
        fe_a.provide_rx(64)
        server.sendto(b"resumed here", peer)
        assert b"resumed here" in _udp_payloads(fe_a)
        fe_a.close()
        text = _log(a)
    server.close()
    assert "rolled back" in text
