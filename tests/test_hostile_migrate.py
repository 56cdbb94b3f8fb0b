# SPDX-License-Identifier: MIT
"""Hostile migration streams into a target back-end (passt_py.migrate.target.load_bytes).

Real streams from a source holding ping, UDP and TCP flows, then corrupted in the places a
checksum cannot protect (a source that lies, a stream re-sealed after tampering). Random
tampering may be refused (MigrationError, the target unchanged) or applied flow by flow: either
way no other exception escapes and the link keeps serving (tests/fuzz/targets.fuzz_migrate).
Specific lies have one right outcome each: a record that can never be valid refuses the whole
stream; a value only the owning handler can judge costs that flow alone. Runs in a private
network namespace (tests/fuzz/netns_guard.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from passt_py.migrate.codec import MigrationError
from passt_py.migrate.source import Source
from passt_py.migrate.target import load_bytes
from tests.conftest import hypothesis_budget, qemu_unavailable
from tests.frames import ACK, SYN, synack_isn, tcp4_frame, udp4_frame
from tests.fuzz import driver, netns_guard, targets
from tests.l4_helpers import echo_frame

SEEDS = driver.load_corpus("migrate")


@pytest.fixture(scope="module")
def ns():
    if not netns_guard.available():
        qemu_unavailable("needs a private network namespace (root or a user namespace)")
    with netns_guard.private_netns():
        yield
        for attr in ("_migrate_rig",):
            rig = getattr(targets, attr)
            if rig is not None:
                rig.close()
                setattr(targets, attr, None)


def test_seed_streams_load(ns):
    """The committed seeds are real streams: each loads without an error."""
    assert SEEDS
    for seed in SEEDS:
        targets.fuzz_migrate(seed)


@st.composite
def tampered(draw) -> bytes:
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not body:
            break
        i = draw(st.integers(0, len(body) - 1))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            body[i] = draw(st.integers(0, 255))
        elif kind == 1 and i + 4 <= len(body):
            body[i:i + 4] = draw(st.sampled_from(
                [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])).to_bytes(4, "big")
        elif kind == 2 and i + 2 <= len(body):
            body[i:i + 2] = draw(st.sampled_from([0, 0xFFFF, 0x8000, 0xFF])).to_bytes(2, "big")
        else:
            del body[i:]
    return bytes(body)


@hypothesis_budget(1, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=tampered())
def test_tampered_resealed_streams_are_refused_or_applied_cleanly(ns, body):
    """A lying source: refused (and then nothing changed on the target) or applied, never an
    unexpected exception or a logged traceback (see targets.fuzz_migrate)."""
    targets.fuzz_migrate(body)


@contextlib.contextmanager
def _one_tcp_connection_saved(patch_state=None, patch_socket=None):
    """A real save of one established guest connection to a host peer that stays connected.

    Yields (honest stream, lying stream, host peer socket): both streams are complete and
    sealed by the source itself (the checksum cannot tell); the lying one is written with
    ``patch_state`` applied to the connection's TcpState record and ``patch_socket`` to its
    kernel socket record (tcp_repair.TcpSockState). The source closes its socket quietly
    (--migrate-exit, repair mode, a guard listener), so a target in this namespace can restore
    the connection and the peer notices nothing."""
    import passt_py.tcp.handler as tcp_mod
    from passt_py.migrate import repair as tcp_repair
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(5)
    port = lst.getsockname()[1]
    rig = targets.FrameRig()
    host = None
    try:
        isn = synack_isn(rig.feed([tcp4_frame(42000, port, SYN, 1000)], 3), 42000)
        host, _ = lst.accept()
        deadline = time.monotonic() + 3
        while isn is None and time.monotonic() < deadline:
            isn = synack_isn(rig.feed([], 1), 42000)
        assert isn is not None, "no SYN-ACK from the source"
        rig.feed([tcp4_frame(42000, port, ACK, 1001, isn + 1)], 2)
        src = Source(targets.migrate_context(rig, migrate_exit=True))
        src.pre()
        honest = b"".join(src.sections())
        real_export, real_save = tcp_mod.TcpHandler.export, tcp_repair.save
        tcp_mod.TcpHandler.export = lambda self, flow: (patch_state or _same)(
            real_export(self, flow))
        tcp_repair.save = lambda sock: (patch_socket or _same)(real_save(sock))
        try:
            lying = b"".join(src.sections())
        finally:
            tcp_mod.TcpHandler.export, tcp_repair.save = real_export, real_save
        assert lying != honest
        src.post()
        rig.close()
        rig = None
        yield honest, lying, host
        del src                             # its guard listener goes with it
    finally:
        if rig is not None:
            rig.close()
        if host is not None:
            host.close()
        lst.close()


def _same(x):
    return x


def _open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def _frames_to_guest_carry(rig: targets.FrameRig, payload: bytes) -> bool:
    """Whether the rig, run for a while, sends the guest a frame ending in ``payload``."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if any(f.endswith(payload) for f in rig.feed([], 2)):
            return True
    return False


def test_tcp_record_with_one_sided_window_scaling_is_refused(ns):
    """snd_wscale 7 with rcv_wscale -1 (scaling one way only, impossible in TCP) refuses the
    whole stream: MigrationError at the TCP stage naming the scales, nothing applied (guest
    state, flows, sockets), and the target still serves: ARP, and the honest stream of the
    same connection, which then carries the host's data to the guest."""
    lie = lambda ks: dataclasses.replace(ks, snd_wscale=7, rcv_wscale=-1)  # noqa: E731
    with _one_tcp_connection_saved(patch_socket=lie) as (honest, lying, host):
        target = targets.FrameRig()
        try:
            ctx = targets.migrate_context(target)
            guest_before, fds_before = copy.deepcopy(target.guest), _open_fds()
            with pytest.raises(MigrationError) as refused:
                load_bytes(ctx, lying)
            assert refused.value.stage == "tcp", refused.value
            assert "bad window scales 7/-1" in str(refused.value)
            assert target.guest == guest_before
            assert len(target.flows) == 0
            assert _open_fds() == fds_before           # no socket was even built
            assert target.arp_still_works()
            report = load_bytes(ctx, honest)
            assert (report.tcp, report.failed) == (1, 0), report
            assert target.guest != guest_before        # (the guest section was applied now)
            host.sendall(b"after the refusal")
            assert _frames_to_guest_carry(target, b"after the refusal")
        finally:
            target.close()


def test_tcp_record_with_port_out_of_range_is_dropped_alone(ns, caplog):
    """A TCP state record whose guest-side port is 70000 (a valid integer in the record codec,
    but no TCP port) does not become a connection: the rest of the stream applies (the guest
    state), that connection alone is refused, its host peer is reset rather than left waiting,
    and nothing breaks afterwards (no traceback from frames built for port 70000, ARP answered).
    """
    lie = lambda st: dataclasses.replace(st, guest_port=70000)  # noqa: E731
    with _one_tcp_connection_saved(patch_state=lie) as (_honest, lying, host):
        target = targets.FrameRig()
        trap = targets.error_trap()
        try:
            ctx = targets.migrate_context(target)
            guest_before = copy.deepcopy(target.guest)
            with caplog.at_level(logging.ERROR, logger="passt_py"):
                report = load_bytes(ctx, lying)
                assert target.arp_still_works()      # runs the loop: deferred work included
            assert target.guest != guest_before      # the rest of the stream was applied
            assert (report.tcp, report.failed) == (0, 1), report
            assert len(target.flows) == 0
            assert [r for r in trap.records if r.exc_info] == [], "a traceback was logged"
            assert any("not adopted" in r.getMessage() and "reset" in r.getMessage()
                       for r in caplog.records), caplog.text
            host.settimeout(3)
            with pytest.raises(ConnectionResetError):
                host.recv(1)
        finally:
            target.close()


def test_ping_and_udp_records_with_ids_out_of_range_are_skipped(ns, caplog):
    """Ping ids and UDP ports above 65535 (valid integers in the record codec) are refused per
    flow by adopt(), so a stream carrying them loads: those flows are counted as failed and
    logged, nothing is raised out of the load, the rest of the stream applies."""
    import ipaddress

    from passt_py.udp.handler import UdpFlowState, UdpHandler
    from passt_py.udp.icmp import IcmpHandler, PingFlowState
    rig = targets.FrameRig()
    try:
        ping = PingFlowState(guest_addr=targets.GUEST4, guest_id=70000, dest=targets.GW4,
                             host_addr=ipaddress.IPv4Address("127.0.0.1"), host_id=70000)
        udp = UdpFlowState(forwarded=False, guest_addr=targets.GUEST4, guest_port=70000,
                           our_addr=targets.GW4, our_port=9,
                           host_addr=ipaddress.IPv4Address("127.0.0.1"), host_port=9,
                           local_addr=ipaddress.IPv4Address("0.0.0.0"), local_port=0,
                           bidir=False)
        with pytest.raises(ValueError):
            rig.icmp.adopt(ping)
        with pytest.raises(ValueError):
            rig.udp.adopt(udp)
        assert len(rig.flows) == 0
        # The same through a whole stream: a source with one ping and one UDP flow whose
        # records say 70000.
        rig.feed([echo_frame(4, 0x1234, 1, b"ping"), udp4_frame(40000, 9, b"udp")], 3)
        assert len(rig.flows) == 2
        real_ping, real_udp = IcmpHandler.export, UdpHandler.export
        IcmpHandler.export = lambda self, flow: dataclasses.replace(
            real_ping(self, flow), guest_id=70000)
        UdpHandler.export = lambda self, flow: dataclasses.replace(
            real_udp(self, flow), guest_port=70000)
        try:
            src = Source(targets.migrate_context(rig))
            src.pre()
            stream = b"".join(src.sections())
            src.rollback()
        finally:
            IcmpHandler.export, UdpHandler.export = real_ping, real_udp
    finally:
        rig.close()
    target = targets.FrameRig()
    try:
        guest_before = copy.deepcopy(target.guest)
        caplog.clear()                # (the source's rollback re-adopted the same records)
        with caplog.at_level(logging.WARNING, logger="passt_py.udp.migration"):
            report = load_bytes(targets.migrate_context(target), stream)
        assert (report.ping, report.udp, report.failed) == (0, 0, 2), report
        assert len(target.flows) == 0
        assert target.guest != guest_before          # the guest section applied
        skipped = [r.getMessage() for r in caplog.records if "not re-created" in r.getMessage()]
        assert len(skipped) == 2 and "ping flow" in skipped[0] and "UDP flow" in skipped[1], \
            skipped
        assert target.arp_still_works()
    finally:
        target.close()
