# SPDX-License-Identifier: MIT
"""TCP_REPAIR save/restore of kernel sockets on loopback, and the passt-repair helper protocol.

Each test moves one end of a real loopback connection: the original is saved in repair mode
and closed (silently), a fresh socket is rebuilt from the saved state, and the peer must see one
seamless byte stream both ways (SHA-256 of everything sent and received).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from passt_py.migrate import repair as tr
from passt_py.tcp.sockets import big_buffers
from tests.fake_repair_helper import FakeHelper

pytestmark = pytest.mark.skipif(not tr.direct_repair_allowed(),
                                reason="TCP_REPAIR needs CAP_NET_ADMIN")


def _queued(sock: socket.socket, request: int) -> int:
    """Bytes in a socket's receive (tr.SIOCINQ) or send (tr.SIOCOUTQ) queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def _pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    addr = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.bind((addr, 0))
        srv.listen(1)
        a = socket.create_connection(srv.getsockname()[:2])
        b, _ = srv.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _fill(sock: socket.socket, data: bytes) -> int:
    """Send as much of ``data`` as the socket takes now; returns the count."""
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:sent + (1 << 20)])
        except BlockingIOError:
            break
    return sent


def _exchange(a: socket.socket, b: socket.socket, a_out: bytes, b_out: bytes,
              a_sent: int, b_sent: int, timeout: float = 20.0) -> tuple[bytes, bytes]:
    """Finish sending both streams and collect what each side received."""
    got_a, got_b = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    while (len(got_a) < len(b_out) or len(got_b) < len(a_out)) and time.monotonic() < deadline:
        progressed = False
        for sock, buf in ((a, got_a), (b, got_b)):
            try:
                chunk = sock.recv(1 << 20)
                if chunk:
                    buf += chunk
                    progressed = True
            except BlockingIOError:
                pass
        if a_sent < len(a_out):
            a_sent += _fill(a, a_out[a_sent:])
        if b_sent < len(b_out):
            b_sent += _fill(b, b_out[b_sent:])
        if not progressed:
            time.sleep(0.001)
    return bytes(got_a), bytes(got_b)


def _move(sock: socket.socket, control: tr.RepairControl | None = None) -> socket.socket:
    """Save ``sock`` in repair mode, close it silently, rebuild it from the encoded state."""
    control = control or tr.RepairControl()
    assert tr.freeze(sock) == 0
    assert control.set([sock], tr.TCP_REPAIR_ON) == 0
    state = tr.save(sock)
    encoded = state.pack()
    guard = tr.guard(sock)     # same host: no RST for what the peer sends meanwhile
    sock.close()
    decoded = tr.TcpSockState.unpack(encoded)
    assert decoded == state
    try:
        return tr.restore(decoded, control)
    finally:
        if guard is not None:
            guard.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_queued_data_both_ways_survives_a_move(family: int) -> None:
    """Unread data in the receive queue and unsent/unacked data in the send queue survive."""
    a, b = _pair(family)
    a_out, b_out = os.urandom(12 << 20), os.urandom(3 << 20)
    b_sent = _fill(b, b_out)          # lands in a's receive queue (a reads nothing yet)
    a_sent = _fill(a, a_out)          # b reads nothing: a's send queue fills up
    a2 = _move(a)
    got_a, got_b = _exchange(a2, b, a_out, b_out, a_sent, b_sent)
    assert hashlib.sha256(got_b).digest() == hashlib.sha256(a_out).digest()
    assert hashlib.sha256(got_a).digest() == hashlib.sha256(b_out).digest()
    a2.close()
    b.close()


def test_saved_state_has_queues_and_options() -> None:
    """save() reads both queues whole and the options negotiated on loopback."""
    a, b = _pair()
    b.sendall(b"x" * 1000)
    time.sleep(0.05)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tr.RepairControl().set([a], tr.TCP_REPAIR_ON)
    st = tr.save(a)
    assert st.rcv_queue == b"x" * 1000 and st.snd_queue == b""
    assert st.kstate == tr.ESTABLISHED and st.timestamps and st.sack and st.snd_wscale >= 0
    assert st.mss > 0 and (st.local_addr, st.local_port) == (
        ipaddress.ip_address(a.getsockname()[0]), a.getsockname()[1])
    tr.RepairControl().set([a], tr.TCP_REPAIR_OFF)
    a.close()
    b.close()


def test_peek_offset_is_ignored_and_kept() -> None:
    """A data path's SO_PEEK_OFF does not shift what is saved, and is put back."""
    a, b = _pair()
    b.sendall(b"0123456789")
    time.sleep(0.05)
    a.setsockopt(socket.SOL_SOCKET, tr.SO_PEEK_OFF, 0)
    assert a.recv(4, socket.MSG_PEEK) == b"0123"
    tr.RepairControl().set([a], tr.TCP_REPAIR_ON)
    st = tr.save(a)
    assert st.rcv_queue == b"0123456789"
    tr.RepairControl().set([a], tr.TCP_REPAIR_OFF)
    assert a.getsockopt(socket.SOL_SOCKET, tr.SO_PEEK_OFF) == 4
    a.close()
    b.close()


def test_frozen_socket_acks_nothing_and_thaws() -> None:
    """While frozen, data for the socket is not acknowledged; after thaw it arrives."""
    a, b = _pair()
    assert tr.freeze(a) == 0
    ctl = tr.RepairControl()
    ctl.set([a], tr.TCP_REPAIR_ON)
    b.send(b"y" * 1000)
    time.sleep(0.3)
    assert _queued(a, tr.SIOCINQ) == 0
    assert _queued(b, tr.SIOCOUTQ) == 1000
    assert tr.thaw(a) == 0
    ctl.set([a], tr.TCP_REPAIR_OFF)
    deadline = time.monotonic() + 5
    while _queued(a, tr.SIOCINQ) < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.recv(2000) == b"y" * 1000
    a.close()
    b.close()


def test_closing_in_repair_mode_sends_nothing() -> None:
    """The peer sees neither FIN nor RST when a repaired socket is closed."""
    a, b = _pair()
    tr.RepairControl().set([a], tr.TCP_REPAIR_ON)
    a.close()
    time.sleep(0.2)
    with pytest.raises(BlockingIOError):
        b.recv(10)          # no EOF, no ECONNRESET


def test_fin_we_sent_is_sent_again() -> None:
    """A connection we half-closed (FIN_WAIT2) moves, and the peer still sees our EOF once."""
    a, b = _pair()
    a.sendall(b"tail")
    a.shutdown(socket.SHUT_WR)
    time.sleep(0.1)
    a2 = _move(a)
    got = bytearray()
    deadline = time.monotonic() + 5
    eof = False
    while not eof and time.monotonic() < deadline:
        try:
            chunk = b.recv(100)
            if not chunk:
                eof = True
            got += chunk
        except BlockingIOError:
            time.sleep(0.01)
    assert bytes(got) == b"tail" and eof
    b.sendall(b"reply")
    deadline = time.monotonic() + 5
    data = b""
    while len(data) < 5 and time.monotonic() < deadline:
        try:
            data += a2.recv(10)
        except BlockingIOError:
            time.sleep(0.01)
    assert data == b"reply"
    a2.close()
    b.close()


def test_fin_received_is_reported() -> None:
    """A peer's FIN (CLOSE_WAIT) is kept in the state for the owner, queued data included."""
    a, b = _pair()
    b.sendall(b"last words")
    b.shutdown(socket.SHUT_WR)
    time.sleep(0.1)
    tr.RepairControl().set([a], tr.TCP_REPAIR_ON)
    st = tr.save(a)
    assert st.fin_received and not st.fin_sent and st.rcv_queue == b"last words"
    a.close()
    a2 = tr.restore(st, tr.RepairControl())
    deadline = time.monotonic() + 5
    data = b""
    while len(data) < 10 and time.monotonic() < deadline:
        try:
            data += a2.recv(100)
        except BlockingIOError:
            time.sleep(0.01)
    assert data == b"last words"
    a2.sendall(b"ok")
    deadline = time.monotonic() + 5
    echo = b""
    while not echo and time.monotonic() < deadline:
        try:
            echo = b.recv(10)
        except BlockingIOError:
            time.sleep(0.01)
    assert echo == b"ok"
    a2.close()
    b.close()


def test_restore_while_original_exists_fails_cleanly() -> None:
    """Same host, original still open: EADDRNOTAVAIL, the peer is not disturbed."""
    a, b = _pair()
    ctl = tr.RepairControl()
    ctl.set([a], tr.TCP_REPAIR_ON)
    st = tr.save(a)
    with pytest.raises(tr.RepairError) as info:
        tr.restore(st, ctl)
    assert info.value.errno == errno.EADDRNOTAVAIL and info.value.step == "connect"
    ctl.set([a], tr.TCP_REPAIR_OFF)
    a.sendall(b"still here")
    time.sleep(0.05)
    assert b.recv(100) == b"still here"
    a.close()
    b.close()


@pytest.mark.parametrize("mutate", [
    lambda d: d[:10],
    lambda d: bytes([9]) + d[1:],                                     # IP version
    lambda d: d[:5] + bytes([7]) + d[6:],                            # state CLOSE
    lambda d: d + b"extra",
    lambda d: d[:45] + struct.pack("!I", 1 << 30) + d[49:],          # send queue length
], ids=["truncated", "version", "state", "trailing", "huge-queue"])
def test_bad_records_are_refused(mutate) -> None:
    """Malformed socket records raise ValueError before anything is allocated or built."""
    a, b = _pair()
    b.sendall(b"abc")
    time.sleep(0.05)
    tr.RepairControl().set([a], tr.TCP_REPAIR_ON)
    data = tr.save(a).pack()
    tr.RepairControl().set([a], tr.TCP_REPAIR_OFF)
    with pytest.raises(ValueError):
        tr.TcpSockState.unpack(mutate(data))
    a.close()
    b.close()


def _helper_control(tmp_path, fail_after=None) -> tuple[tr.RepairControl, FakeHelper]:
    helper = tr.RepairHelper(str(tmp_path / "sock.repair"))
    fake = FakeHelper(helper.path, fail_after)
    fake.start()
    deadline = time.monotonic() + 5
    while not helper.accept() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helper.connected
    return tr.RepairControl(helper, direct=False), fake


def test_move_through_the_helper_protocol(tmp_path) -> None:
    """With the helper doing TCP_REPAIR, a connection moves just the same."""
    control, fake = _helper_control(tmp_path)
    a, b = _pair()
    a_out, b_out = os.urandom(1 << 20), os.urandom(1 << 20)
    b_sent, a_sent = _fill(b, b_out), _fill(a, a_out)
    a2 = _move(a, control)
    got_a, got_b = _exchange(a2, b, a_out, b_out, a_sent, b_sent)
    assert got_a == b_out and got_b == a_out
    assert [m for m, _ in fake.commands] == [1, 1, 0]
    control.helper.close()
    a2.close()
    b.close()


def test_helper_batches_at_most_253_fds(tmp_path) -> None:
    """300 sockets go in two commands (253 + 47), each echoed."""
    control, fake = _helper_control(tmp_path)
    socks = [socket.socket() for _ in range(300)]
    assert control.set(socks, tr.TCP_REPAIR_ON) == 0
    assert fake.commands == [(1, 253), (1, 47)]
    for s in socks:
        s.close()
    control.helper.close()


def test_helper_failure_is_an_error_not_a_hang(tmp_path) -> None:
    """A helper that hangs up instead of echoing makes set() fail with EIO at once."""
    control, _fake = _helper_control(tmp_path, fail_after=0)
    s = socket.socket()
    assert control.set([s], tr.TCP_REPAIR_ON) == -errno.EIO
    assert not control.available
    s.close()
    control.helper.close()


def test_no_helper_no_capability_is_eperm() -> None:
    """Without CAP_NET_ADMIN and without a helper, set() says EPERM."""
    control = tr.RepairControl(None, direct=False)
    assert not control.available
    s = socket.socket()
    assert control.set([s], tr.TCP_REPAIR_ON) == -errno.EPERM
    s.close()


@pytest.mark.parametrize("side", ["outbound", "inbound"])
def test_guard_listener_covers_the_gap_between_close_and_restore(side: str) -> None:
    """Source closed, target not yet restored: the peer's segments are dropped, not reset,
    and they reach the restored socket afterwards."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    victim, peer = (a, b) if side == "outbound" else (b, a)
    ctl = tr.RepairControl()
    tr.freeze(victim)
    ctl.set([victim], tr.TCP_REPAIR_ON)
    state = tr.save(victim)
    guard = tr.guard(victim)
    assert guard is not None
    victim.close()
    peer.send(b"in the gap")
    time.sleep(0.3)
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)                     # no RST came back
    restored = tr.restore(state, ctl)
    deadline = time.monotonic() + 5
    got = b""
    while not got and time.monotonic() < deadline:
        try:
            got = restored.recv(100)
        except BlockingIOError:
            time.sleep(0.02)
    assert got == b"in the gap"
    guard.close()
    restored.close()
    peer.close()


@pytest.mark.parametrize("forced_reuse", [True, False], ids=["forced-reuse", "fallback"])
def test_a_port_another_connections_time_wait_holds_is_taken_back(monkeypatch,
                                                                   forced_reuse: bool) -> None:
    """The connection's local port also carries another connection's TIME_WAIT (another
    peer, a socket without SO_REUSEADDR): a plain bind() refuses the port even with
    SO_REUSEADDR, yet the 4-tuple is free. Repair mode's forced reuse lets bind() take it;
    without it (fallback) the rebuilt socket gets it through connect(). Either way it is the
    saved port, and data queued before the move and sent after it arrives."""
    calls: list[int] = []
    fallback = tr._bind_for_connect
    monkeypatch.setattr(tr, "_bind_for_connect",
                        lambda sock, st: calls.append(st.local_port) or fallback(sock, st))
    srv1 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv1.bind(("127.0.0.1", 0))
    srv1.listen(1)
    old = socket.create_connection(srv1.getsockname())
    old_peer, _ = srv1.accept()
    port = old.getsockname()[1]
    old.close()                                  # closes first: TIME_WAIT on our side
    time.sleep(0.05)
    old_peer.close()
    srv2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv2.bind(("127.0.0.1", 0))
    srv2.listen(1)
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a.setsockopt(tr.SOL_IP, tr.IP_LOCAL_PORT_RANGE, struct.pack("=I", port | port << 16))
    a.connect(srv2.getsockname())                # the same local port, another peer
    b, _ = srv2.accept()
    assert a.getsockname()[1] == port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))     # what a plain bind() meets
    a.setblocking(False)
    b.setblocking(False)
    before, after = os.urandom(5000), os.urandom(7000)
    a.send(before)
    a2 = _move(a, tr.RepairControl() if forced_reuse else _PlainReuse())
    assert a2.getsockname() == ("127.0.0.1", port)
    assert calls == ([] if forced_reuse else [port])
    a2.setblocking(True)
    a2.sendall(after)
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < len(before) + len(after) and time.monotonic() < deadline:
        try:
            got += b.recv(1 << 16)
        except BlockingIOError:
            time.sleep(0.001)
    assert bytes(got) == before + after
    for s in (a2, b, srv1, srv2):
        s.close()


class _PlainReuse(tr.RepairControl):
    """Direct repair mode, after which the socket has plain SO_REUSEADDR again (what the
    restore used to do): without repair mode's forced reuse, bind() refuses a port that a
    listener or a TIME_WAIT holds, so the restore falls back to :func:`tr._bind_for_connect`."""

    def __init__(self) -> None:
        super().__init__(None, direct=True)

    def set(self, fds: list[socket.socket], mode: int) -> int:  # type: ignore[override]
        fds = list(fds)
        rc = super().set(fds, mode)
        if rc == 0 and mode == tr.TCP_REPAIR_ON:
            for s in fds:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return rc


def _forwarding_listener(family: int, outside_range: bool) -> socket.socket:
    """A listening socket as -t forwarding opens it (SO_REUSEADDR, wildcard address, IPv6
    only): on a port outside net.ipv4.ip_local_port_range like -t 10001, or an ephemeral one."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(v) for v in f.read().split())
    ports = ([p for p in [*range(10001, 10101), *range(high + 1, min(high + 101, 65536))]
              if not low <= p <= high] if outside_range else [0])
    wildcard = "0.0.0.0" if family == socket.AF_INET else "::"
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((wildcard, port))
        except OSError:
            sock.close()
            continue
        sock.listen(8)
        return sock
    pytest.skip("no free port outside ip_local_port_range")


def _accepted(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A loopback connection through ``listener``: (the peer, the accepted socket)."""
    addr = "127.0.0.1" if listener.family == socket.AF_INET else "::1"
    peer = socket.create_connection((addr, listener.getsockname()[1]))
    acc, _ = listener.accept()
    peer.setblocking(False)
    acc.setblocking(False)
    return peer, acc


def _move_inbound_and_talk(listener: socket.socket, control: tr.RepairControl) -> None:
    """Move an accepted connection while ``listener`` stays open; check port and streams.

    Half of each stream is queued before the move, the rest goes out after the restore.
    """
    peer, acc = _accepted(listener)
    local = acc.getsockname()[:2]
    peer_out, acc_out = os.urandom(1 << 20), os.urandom(1 << 20)
    peer_sent = _fill(peer, peer_out[:len(peer_out) // 2])
    acc_sent = _fill(acc, acc_out[:len(acc_out) // 2])
    try:
        moved = _move(acc, control)
    except BaseException:
        peer.close()
        raise
    try:
        assert moved.getsockname()[:2] == local
        got_moved, got_peer = _exchange(moved, peer, acc_out, peer_out, acc_sent, peer_sent)
        assert hashlib.sha256(got_peer).digest() == hashlib.sha256(acc_out).digest()
        assert hashlib.sha256(got_moved).digest() == hashlib.sha256(peer_out).digest()
    finally:
        moved.close()
        peer.close()


@pytest.mark.parametrize("port", ["forwarded", "ephemeral"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_inbound_connection_is_restored_on_the_port_its_listener_holds(family: int,
                                                                       port: str) -> None:
    """A connection is rebuilt on the port a listening socket of the same process holds
    (every -t connection on the target): it gets exactly its saved port, and data sent both
    ways after the restore arrives intact."""
    listener = _forwarding_listener(family, outside_range=port == "forwarded")
    try:
        _move_inbound_and_talk(listener, tr.RepairControl())
    finally:
        listener.close()


def test_inbound_connection_is_restored_on_its_listeners_port_through_the_helper(
        tmp_path) -> None:
    """Through the passt-repair protocol (the path without CAP_NET_ADMIN), a connection is
    rebuilt on the port its listener holds, and data flows both ways after the restore."""
    control, fake = _helper_control(tmp_path)
    listener = _forwarding_listener(socket.AF_INET, outside_range=True)
    try:
        _move_inbound_and_talk(listener, control)
    finally:
        listener.close()
        control.helper.close()
    assert [m for m, _ in fake.commands] == [1, 1, 0]


def test_a_port_bind_refuses_outside_the_local_port_range_is_an_error() -> None:
    """bind() refuses the saved port (a listener holds it and forced reuse is lost) and the
    port is outside ip_local_port_range, where the kernel ignores the fallback's one-port
    range: the restore raises RepairError naming wanted and obtained ports instead of
    returning a socket on another port, and the peer hears nothing of it."""
    listener = _forwarding_listener(socket.AF_INET, outside_range=True)
    peer, acc = _accepted(listener)
    port = acc.getsockname()[1]
    control = _PlainReuse()
    try:
        assert tr.freeze(acc) == 0 and control.set([acc], tr.TCP_REPAIR_ON) == 0
        state = tr.save(acc)
        acc.close()                          # in repair mode: silently
        with pytest.raises(tr.RepairError) as info:
            tr.restore(state, control).close()
        assert info.value.errno == errno.EADDRINUSE and info.value.step == "bind"
        assert f"wanted 127.0.0.1 port {port}, got 127.0.0.1 port " in str(info.value)
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            peer.recv(1)                     # no data, no FIN, no RST
    finally:
        peer.close()
        listener.close()


def _restore_as_nobody(state: tr.TcpSockState, path: str, ready: int, expect: bytes,
                       reply: bytes) -> int:
    """In a child that gave up root: restore through the helper on ``path``, report on
    ``ready``, read ``expect``, send ``reply``. Exit status 0 = ok, 1 = still privileged,
    2 = no helper, 3 = restore failed, 4 = wrong port, 5 = wrong data."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    if tr.direct_repair_allowed():
        return 1
    helper = tr.RepairHelper(path)
    deadline = time.monotonic() + 20
    while not helper.accept() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not helper.connected:
        return 2
    try:
        sock = tr.restore(state, tr.RepairControl(helper))
    except tr.RepairError as e:
        os.write(ready, f"{e}".encode())
        return 3
    local = sock.getsockname()
    if (ipaddress.ip_address(local[0]), local[1]) != (state.local_addr, state.local_port):
        os.write(ready, f"{sock.getsockname()}".encode())
        return 4
    os.write(ready, b"ok")
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < len(expect) and time.monotonic() < deadline:
        select.select([sock], [], [], 0.1)
        try:
            got += sock.recv(1 << 16)
        except BlockingIOError:
            pass
    if bytes(got) != expect:
        return 5
    sock.setblocking(True)
    sock.sendall(reply)
    sock.close()
    helper.close()
    return 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give it up")
def test_real_passt_repair_restores_on_the_port_its_listener_holds() -> None:
    """Without CAP_NET_ADMIN, through the real passt-repair: a connection is rebuilt on the
    port its listener holds; data queued before the move and sent after it arrives."""
    from tests.guest.real_passt import real_passt_repair_command
    helper_cmd = real_passt_repair_command()
    if helper_cmd is None:
        pytest.skip("no passt-repair at hand")
    listener = _forwarding_listener(socket.AF_INET, outside_range=True)
    peer, acc = _accepted(listener)
    before, after, reply = os.urandom(3000), os.urandom(5000), os.urandom(2000)
    peer.sendall(before)
    time.sleep(0.05)
    control = tr.RepairControl()
    assert tr.freeze(acc) == 0 and control.set([acc], tr.TCP_REPAIR_ON) == 0
    state = tr.save(acc)
    acc.close()
    workdir = tempfile.mkdtemp(prefix="repair-")       # tmp_path is closed to nobody
    os.chown(workdir, 65534, 65534)
    path = os.path.join(workdir, "sock.repair")
    ready_r, ready_w = os.pipe()
    proc = None
    pid = os.fork()
    if pid == 0:
        code = 9
        try:
            os.close(ready_r)
            code = _restore_as_nobody(state, path, ready_w, before + after, reply)
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc = subprocess.Popen([*helper_cmd, path], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        readable, _, _ = select.select([ready_r], [], [], 30)
        said = os.read(ready_r, 4096) if readable else b"(nothing)"
        assert said == b"ok", said
        peer.setblocking(True)
        peer.sendall(after)
        peer.settimeout(10)
        got = bytearray()
        while len(got) < len(reply):
            chunk = peer.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        assert bytes(got) == reply
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(ready_r)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        peer.close()
        listener.close()
        shutil.rmtree(workdir, ignore_errors=True)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_full_send_queue_moves_to_a_target_without_forced_sizes(monkeypatch) -> None:
    """A connection socket with the send buffer passt-py gives it, filled as far as it goes
    (the peer reads nothing), is rebuilt on a target that cannot force buffer sizes (no
    CAP_NET_ADMIN, as under passt-repair): the buffer's headroom makes the queue fit, and
    every byte reaches the peer. Without the headroom the refill fails with EAGAIN."""
    snd, _rcv = big_buffers()
    monkeypatch.setattr(tr, "SO_SNDBUFFORCE", -1)        # setsockopt fails: as unprivileged
    monkeypatch.setattr(tr, "SO_RCVBUFFORCE", -1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if snd:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)
        a.connect(srv.getsockname())
        b, _ = srv.accept()
    a.setblocking(False)
    b.setblocking(False)
    data = os.urandom(40 << 20)
    sent = _fill(a, data)
    assert 0 < sent < len(data)
    a2 = _move(a)
    got = bytearray()
    deadline = time.monotonic() + 20
    while len(got) < sent and time.monotonic() < deadline:
        try:
            got += b.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data[:sent]).digest()
    a2.close()
    b.close()


def test_restored_send_queue_uses_full_sized_segments() -> None:
    """The send queue is rebuilt in segments of the connection's MSS, not the 536-byte
    default (thousands of tiny segments would crawl out in loss recovery)."""
    a, b = _pair()
    sent = _fill(a, os.urandom(8 << 20))
    assert sent > 1 << 20
    a2 = _move(a)
    info = a2.getsockopt(socket.IPPROTO_TCP, tr.TCP_INFO, 104)
    snd_mss = struct.unpack_from("=I", info, 16)[0]
    assert snd_mss > 16000, snd_mss
    a2.close()
    b.close()


def _frozen_as_nobody(drop: tr.DropFilter) -> int:
    """In a child that gave up root: freeze, check nothing is acked, thaw. Exit status 0 = ok,
    1 = the filter was refused, 2 = data got through the filter, 3 = thaw lost data."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)                   # all capabilities go with root
    a, b = _pair()
    if tr.freeze(a, drop) < 0:
        return 1
    b.send(b"z" * 1000)
    time.sleep(0.3)
    if _queued(a, tr.SIOCINQ) != 0 or _queued(b, tr.SIOCOUTQ) != 1000:
        return 2
    guard = tr.guard(a, drop)
    if guard is None:
        return 1
    guard.close()
    tr.thaw(a)
    deadline = time.monotonic() + 5      # the peer retransmits what the filter dropped
    while _queued(a, tr.SIOCINQ) < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    return 0 if a.recv(2000) == b"z" * 1000 else 3


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give it up")
def test_freeze_still_works_after_privileges_are_dropped() -> None:
    """The drop filter loaded while root is attachable by the unprivileged process: on kernels
    that refuse classic filters without CAP_NET_ADMIN, the freeze and the guard still work."""
    import encodings.idna  # noqa: F401 - the child can no longer read the stdlib under /root
    drop = tr.DropFilter.load()
    assert drop.prog_fd is not None, "root can load the eBPF drop filter"
    try:
        pid = os.fork()
        if pid == 0:
            code = 4
            try:
                code = _frozen_as_nobody(drop)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        drop.close()
    assert os.waitstatus_to_exitcode(status) == 0
