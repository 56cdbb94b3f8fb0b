# SPDX-License-Identifier: MIT
"""The vhost-user socket adapter: SCM_RIGHTS, partial reads, one front-end at a time, no leaks."""
from __future__ import annotations

import array
import os
import socket
import struct

import pytest

from passt_py.vhost_user import wire
from passt_py.vhost_user.events import FrontendConnected, FrontendDisconnected, RingKickFd
from passt_py.vhost_user.transport import VhostUserServer
from passt_py.vhost_user.wire import Message, ProtocolFeature, Request, U64, VringFile, bit
from tests.vhost_fakes import FakeDevice


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send(sock: socket.socket, msg: Message, fds: list[int] = ()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([msg.encode()], anc)


def recv_reply(sock: socket.socket) -> Message:
    hdr = wire.Header.decode(sock.recv(12, socket.MSG_WAITALL))
    payload = sock.recv(hdr.size, socket.MSG_WAITALL) if hdr.size else b""
    return Message(hdr.request, hdr.flags, payload)


def need_reply(request: int, payload: bytes = b"") -> Message:
    return Message(request, wire.VERSION | wire.FLAG_NEED_REPLY, payload)


@pytest.fixture
def dev() -> FakeDevice:
    return FakeDevice()


@pytest.fixture
def server(tmp_path, dev):
    srv = VhostUserServer(dev, str(tmp_path / "vhost.sock"))
    yield srv
    srv.close()


def connect(server: VhostUserServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(server.path)
    events = server.on_readable(server.listen_fd)
    assert any(isinstance(e, FrontendConnected) for e in events)
    return sock


def ack_on(server: VhostUserServer, sock: socket.socket) -> None:
    send(sock, Message(Request.SET_PROTOCOL_FEATURES, wire.VERSION,
                       U64(bit(ProtocolFeature.REPLY_ACK)).encode()))
    server.on_readable(server.conn_fd)


def test_get_features_round_trip(server):
    """A request sent on the socket gets its reply on the socket."""
    sock = connect(server)
    send(sock, Message(Request.GET_FEATURES))
    server.on_readable(server.conn_fd)
    reply = recv_reply(sock)
    assert reply.request == Request.GET_FEATURES and reply.flags & wire.FLAG_REPLY
    assert U64.decode(reply.payload).value & bit(wire.VHOST_USER_F_PROTOCOL_FEATURES)
    sock.close()


def test_descriptor_passes_with_scm_rights(server, dev):
    """An eventfd sent with SET_VRING_CALL reaches the device as the same eventfd."""
    sock = connect(server)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    send(sock, Message(Request.SET_VRING_CALL, wire.VERSION, VringFile(0, False).encode()), [efd])
    server.on_readable(server.conn_fd)
    (kept,) = dev.kept
    os.eventfd_write(efd, 3)
    assert os.eventfd_read(kept) == 3
    os.close(efd)
    sock.close()


def test_partial_message_is_processed_once_complete(server):
    """A message arriving in pieces is handled only when its last byte is there."""
    sock = connect(server)
    ack_on(server, sock)
    data = need_reply(Request.SET_OWNER).encode() + need_reply(Request.GET_QUEUE_NUM).encode()
    for piece in (data[:5], data[5:12], data[12:20], data[20:]):
        sock.sendall(piece)
        server.on_readable(server.conn_fd)
    assert U64.decode(recv_reply(sock).payload).value == 0
    assert U64.decode(recv_reply(sock).payload).value == 1
    sock.close()


def test_partial_payload_with_descriptor_keeps_it_with_its_message(server, dev):
    """Descriptors sent with the first bytes of a message stay with that message."""
    sock = connect(server)
    efd = os.eventfd(0)
    data = Message(Request.SET_VRING_CALL, wire.VERSION, VringFile(1, False).encode()).encode()
    sock.sendmsg([data[:3]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [efd]).tobytes())])
    server.on_readable(server.conn_fd)
    assert dev.kept == []
    sock.sendall(data[3:])
    server.on_readable(server.conn_fd)
    assert len(dev.kept) == 1
    os.close(efd)
    sock.close()


def test_second_frontend_is_refused_while_the_first_is_served(server):
    """A second connection is accepted and closed; the first keeps working."""
    first = connect(server)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.settimeout(5)
    second.connect(server.path)
    assert server.on_readable(server.listen_fd) == []
    assert second.recv(1) == b""
    send(first, Message(Request.GET_QUEUE_NUM))
    server.on_readable(server.conn_fd)
    assert U64.decode(recv_reply(first).payload).value == 1
    first.close()
    second.close()


def test_disconnect_resets_the_device_and_a_new_frontend_connects(server, dev):
    """EOF resets the device; the next front-end is served."""
    first = connect(server)
    fd = server.conn_fd
    first.close()
    events = server.on_readable(fd)
    assert FrontendDisconnected(fd) in events
    assert ("reset",) in dev.calls
    assert server.conn_fd is None
    second = connect(server)
    send(second, Message(Request.GET_QUEUE_NUM))
    server.on_readable(server.conn_fd)
    assert U64.decode(recv_reply(second).payload).value == 1
    second.close()


def test_oversized_header_closes_the_connection(server, dev):
    """A header announcing more than MAX_PAYLOAD bytes ends the connection."""
    sock = connect(server)
    sock.sendall(struct.pack("=III", 1, 1, wire.MAX_PAYLOAD + 1))
    events = server.on_readable(server.conn_fd)
    assert any(isinstance(e, FrontendDisconnected) for e in events)
    assert sock.recv(1) == b""
    sock.close()


def test_too_many_descriptors_are_refused_without_leaks(server):
    """More than 8 descriptors: the message is refused and nothing leaks."""
    sock = connect(server)
    ack_on(server, sock)
    before = open_fds()
    fds = [os.eventfd(0) for _ in range(12)]
    send(sock, need_reply(Request.SET_OWNER), fds)
    for fd in fds:
        os.close(fd)
    server.on_readable(server.conn_fd)
    assert U64.decode(recv_reply(sock).payload).value != 0
    assert open_fds() == before
    sock.close()


def test_no_descriptor_leaks_over_a_session_with_hostile_messages(server):
    """fds sent with valid, unknown and bad requests are all closed by the end."""
    before = open_fds()
    sock = connect(server)
    fds = [os.eventfd(0) for _ in range(4)]
    send(sock, Message(Request.SET_VRING_CALL, wire.VERSION, VringFile(0, False).encode()),
         fds[:1])
    send(sock, Message(999, wire.VERSION, b"junk"), fds[1:2])
    send(sock, Message(Request.SET_OWNER), fds[2:3])
    send(sock, Message(Request.SET_VRING_KICK, wire.VERSION, VringFile(5, False).encode()),
         fds[3:])
    for fd in fds:
        os.close(fd)
    fd = server.conn_fd
    server.on_readable(fd)
    sock.close()
    server.on_readable(fd)
    assert open_fds() == before


def test_descriptors_of_an_incomplete_message_are_closed_on_disconnect(server):
    """A front-end dying mid-message does not leak the descriptors it sent."""
    before = open_fds()
    sock = connect(server)
    efd = os.eventfd(0)
    sock.sendmsg([struct.pack("=II", Request.SET_VRING_CALL, 1)],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [efd]).tobytes())])
    os.close(efd)
    fd = server.conn_fd
    server.on_readable(fd)
    sock.close()
    server.on_readable(fd)
    assert open_fds() == before


def test_kick_descriptor_is_reported_to_the_loop(server, dev, tmp_path):
    """Starting a ring yields RingKickFd so the loop can watch it."""
    sock = connect(server)
    send(sock, Message(Request.SET_PROTOCOL_FEATURES, wire.VERSION, U64(0).encode()))
    send(sock, Message(Request.SET_VRING_NUM, wire.VERSION, struct.pack("=II", 0, 64)))
    send(sock, Message(Request.SET_VRING_ADDR, wire.VERSION, bytes(40)))
    efd = os.eventfd(0)
    send(sock, Message(Request.SET_VRING_KICK, wire.VERSION, VringFile(0, False).encode()), [efd])
    os.close(efd)
    events = server.on_readable(server.conn_fd)
    kicks = [e for e in events if isinstance(e, RingKickFd)]
    assert kicks and kicks[0].fd in dev.kept
    sock.close()


def test_stale_socket_file_is_replaced(tmp_path, dev):
    """A socket file left by a dead back-end does not stop a new one from listening."""
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    srv = VhostUserServer(dev, path)
    assert srv.listen_fd is not None
    srv.close()


def test_live_socket_path_is_not_stolen(server, dev):
    """A path another back-end listens on is refused."""
    with pytest.raises(OSError):
        VhostUserServer(FakeDevice(), server.path)


def test_preconnected_descriptor_is_served(dev):
    """--fd with a connected socket serves that front-end directly."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    srv = VhostUserServer(dev, fd=ours.detach())
    assert srv.listen_fd is None and srv.conn_fd is not None
    send(theirs, Message(Request.GET_QUEUE_NUM))
    events = srv.on_readable(srv.conn_fd)
    assert any(isinstance(e, FrontendConnected) for e in events)
    theirs.settimeout(5)
    assert U64.decode(recv_reply(theirs).payload).value == 1
    theirs.close()
    srv.close()


def test_preconnected_listening_descriptor_accepts(tmp_path, dev):
    """--fd with a listening socket accepts front-ends on it."""
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(tmp_path / "l.sock"))
    lsock.listen(1)
    srv = VhostUserServer(dev, fd=lsock.detach())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "l.sock"))
    assert any(isinstance(e, FrontendConnected) for e in srv.on_readable(srv.listen_fd))
    client.close()
    srv.close()
