# SPDX-License-Identifier: MIT
"""Capture (-p) as a hook of the C rings (csrc/virtq.c, core.Virtqueue.set_capture()).

On real rings driven by the test (tests/ring_rig.py), whatever path moves a frame: RX frames
of pc_vq_push_rx (Python's frames), pc_tcp_rx (partial checksums, GSO super-frames, deferred
flush), pc_tcp_ctl, pc_udp_rx and the fast path, and TX frames popped by Python or by the fast
path (which looks at a frame and puts it back). Checked: each frame is in the file exactly
once, in order, byte for byte what the guest sees (or sent), with partial checksums completed
and valid; mergeable frames over many chains come out whole; a short snaplen cuts records; a
failing file turns capture off and traffic goes on; a driver rewriting its descriptors before
publication gets no read outside its memory.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time

import pytest
from scapy.all import ARP, IP, TCP, UDP, Ether, IPv6, raw

from passt_py import core
from passt_py.pcap import SNAPLEN, PcapWriter
# rig, wait: fixtures, used by name
from tests.pcap_reader import frames as pcap_frames
from tests.pcap_reader import read_pcap
from tests.ring_rig import (GUEST4, GUEST_MAC, GW4, HDR, OUR_MAC, Wait, kick_rig, rig,  # noqa: F401
                            tcp_template, udp_pair, udp_templates, wait, wait_queued)

VNET = struct.Struct("<BBHHHHH")
OURS, GUESTS = OUR_MAC.hex(":"), GUEST_MAC.hex(":")


@pytest.fixture
def capture(tmp_path):
    """Factory: a pcap file (header written) recorded by the given rings; its path."""
    writers: list[PcapWriter] = []
    rings: list[core.Virtqueue] = []

    def make(*vqs: core.Virtqueue, hdr_len: int = HDR, snaplen: int = SNAPLEN) -> str:
        path = str(tmp_path / f"cap{len(writers)}.pcap")
        w = PcapWriter(path)
        writers.append(w)
        for vq in vqs:
            vq.set_capture(w.fd, hdr_len, snaplen)
            rings.append(vq)
        return path
    yield make
    for vq in rings:
        vq.set_capture(-1)
    for w in writers:
        w.close()


def l4_ok(frame: bytes) -> bool:
    """The frame's IPv4 header and TCP/UDP checksums are what scapy computes."""
    pkt = Ether(frame)
    ref = pkt.copy()
    for layer in (IP, TCP, UDP):
        if layer in ref:
            del ref[layer].chksum
    again = Ether(raw(ref))
    return all(again[layer].chksum == pkt[layer].chksum for layer in (IP, TCP, UDP)
               if layer in pkt)


def complete(frame: bytes, vnet: bytes) -> bytes:
    """``frame`` with a NEEDS_CSUM checksum finished, as a NIC (and the capture) does."""
    flags, _g, _h, _s, start, off = struct.unpack_from("<BBHHHH", vnet)
    if not flags & core.VNET_F_NEEDS_CSUM:
        return frame
    csum = core.csum_fold(core.csum_partial(frame[start:])) or 0xFFFF
    return frame[:start + off] + struct.pack("!H", csum) + frame[start + off + 2:]


def partial(pkt, gso: tuple[int, int] | None = None) -> tuple[bytes, bytes]:
    """(frame, virtio-net header) as a guest with checksum offload sends ``pkt``: the L4
    checksum holds the pseudo-header sum only; gso: (gso_type, gso_size) of a TSO frame."""
    frame = bytearray(raw(pkt))
    v6 = IPv6 in pkt
    l3 = 14 + (40 if v6 else 20)
    proto = pkt[IPv6].nh if v6 else pkt[IP].proto
    off = 16 if proto == 6 else 6
    l4 = len(frame) - l3
    if v6:
        psum = core.pseudo_ipv6(frame[22:38], frame[38:54], proto, l4)
    else:
        psum = core.pseudo_ipv4(frame[26:30], frame[30:34], proto, l4)
    struct.pack_into("!H", frame, l3 + off, psum)
    gtype, gsize = gso or (0, 0)
    hlen = l3 + 20 if gso else 0
    return bytes(frame), VNET.pack(core.VNET_F_NEEDS_CSUM, gtype, hlen, gsize, l3, off, 0)


def tcp_pair(family: int = 4) -> tuple[socket.socket, socket.socket]:
    """(ours, peer) connected on loopback, ours non-blocking with SO_PEEK_OFF at 0."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    host = "127.0.0.1" if family == 4 else "::1"
    with socket.socket(fam) as lst:
        lst.bind((host, 0))
        lst.listen(1)
        ours = socket.create_connection(lst.getsockname()[:2])
        peer, _ = lst.accept()
    ours.setblocking(False)
    core.set_peek_offset(ours, 0)
    return ours, peer




def wait_queued_bytes(sock: socket.socket, n: int) -> None:
    import fcntl
    import termios
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if got >= n:
            return
        time.sleep(0.005)
    raise AssertionError("data did not arrive")


# ---- RX ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hdr_len,mergeable", [(12, True), (12, False), (10, False)])
def test_pushed_frames_are_recorded_once_each_as_placed(rig, capture, hdr_len, mergeable):
    """Python's frames (push_rx): each placed frame once, in order, byte for byte; a bad chain
    in front and frames the ring had no room for are not records."""
    r = rig()
    path = capture(r.rxq, hdr_len=hdr_len)
    r.rx.add_chain([(1 << 40, 100, True)])                 # a bad chain: length 0, no frame
    r.rx.add_rx_buffers(6, 9100)
    sent = [raw(Ether(src=OURS, dst=GUESTS) / IP(dst="10.0.0.2") / UDP() /
                (bytes([k]) * n)) for k, n in enumerate((0, 18, 1000, 1471, 9000, 4000, 77, 5))]
    assert r.rxq.push_rx(sent, hdr_len, mergeable) == 6   # two wait for buffers
    assert r.rxq.last_rx.bad == 1
    assert pcap_frames(path) == sent[:6]
    r.rx.add_rx_buffers(2, 2048)
    assert r.rxq.push_rx(sent[6:], hdr_len, mergeable) == 2
    assert pcap_frames(path) == sent
    st = r.rxq.capture
    assert st.on and st.err == 0 and st.frames == 8
    assert st.bytes == sum(16 + len(f) for f in sent)


def test_mergeable_frames_over_many_chains_are_assembled(rig, capture):
    """Chains of 700 bytes in three descriptors each: a 9000-byte frame takes 13 chains (its
    header in the first), and the record is the whole frame, as the guest reassembles it."""
    r = rig(num=512)
    path = capture(r.rxq)
    r.rx.add_rx_buffers(150, 700, segments=3)
    sent = [raw(Ether(src=OURS, dst=GUESTS) / IP(dst="10.0.0.2") / UDP() /
                os.urandom(n)) for n in (9000, 100, 3000, 688 - 42, 689 - 42, 20000)]
    assert r.rxq.push_rx(sent, HDR, True) == len(sent)
    seen = r.rx_frames()
    assert [f for _, f, _ in seen] == sent
    assert [n for _, _, n in seen] == [-(-(HDR + len(f)) // 700) for f in sent]
    assert pcap_frames(path) == sent


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_segments_partial_and_gso_are_recorded_with_full_checksums(rig, capture, family):
    """pc_tcp_rx with GSO and partial checksums, published once per batch (flush=False):
    nothing is recorded before the flush; then every segment once, in order, equal to what
    the guest got with its checksum completed, and valid; GSO frames whole (over 60 KiB)."""
    r = rig(num=1024)
    path = capture(r.rxq)
    ours, peer = tcp_pair(family)
    data = os.urandom(300_000)
    r.rx.add_rx_buffers(600, 4096)
    tmpl = tcp_template(family)
    opts = core.TCP_RX_GSO | core.TCP_RX_CSUM_PARTIAL
    done, deadline = 0, time.monotonic() + 10
    threading.Thread(target=peer.sendall, args=(data,), daemon=True).start()
    while done < len(data) and time.monotonic() < deadline:
        n = r.path.rx(ours.fileno(), tmpl, len(data) - done, opts=opts, flush=False)
        tmpl.seq = (tmpl.seq + n) & 0xFFFFFFFF
        done += n
        if n:               # acknowledged by the guest: the peek offset moves back
            assert len(ours.recv(n)) == n
        else:
            time.sleep(0.002)
    assert done == len(data)
    assert read_pcap(path) == []                        # used elements not published yet
    r.rxq.flush()
    seen = r.rx_frames()
    assert len(seen) >= 5 and max(len(f) for _, f, _ in seen) > 60000
    assert all(v[0] == core.VNET_F_NEEDS_CSUM for v, _, _ in seen)
    got = pcap_frames(path)
    assert got == [complete(f, v) for v, f, _ in seen]
    assert all(l4_ok(f) for f in got)
    assert b"".join(bytes(Ether(f)[TCP].payload) for f in got) == data
    ours.close(), peer.close()


def test_tcp_full_checksums_and_control_segments(rig, capture):
    """Full-checksum segments are recorded as they are; a control segment (pc_tcp_ctl) too."""
    r = rig()
    path = capture(r.rxq)
    ours, peer = tcp_pair()
    peer.sendall(b"z" * 5000)
    wait_queued_bytes(ours, 5000)
    r.rx.add_rx_buffers(16, 2048)
    tmpl = tcp_template()
    assert r.path.ctl(tmpl, core.TCP_SYN | core.TCP_ACK, options=b"\x02\x04\x05\xb4")
    assert r.path.rx(ours.fileno(), tmpl, 1 << 20) == 5000
    seen = [f for _, f, _ in r.rx_frames()]
    assert len(seen) == 5 and pcap_frames(path) == seen
    assert all(l4_ok(f) for f in seen)
    assert Ether(seen[0])[TCP].flags == "SA"
    ours.close(), peer.close()


@pytest.mark.parametrize("family", [4, 6])
def test_udp_datagrams_with_partial_checksums(rig, capture, family):
    """pc_udp_rx with CSUM_PARTIAL: each datagram once, checksum completed and valid."""
    r = rig()
    path = capture(r.rxq)
    ours, peer = udp_pair(family)
    payloads = [os.urandom(n) for n in (0, 1, 1400, 9000, 30000)]
    for p in payloads:
        peer.send(p)
    wait_queued(ours)
    r.rx.add_rx_buffers(64, 4096)
    path_ = core.UdpPath(r.rxq)
    assert path_.rx(ours.fileno(), udp_templates(family),
                    opts=core.UDP_RX_CSUM_PARTIAL) == len(payloads)
    seen = r.rx_frames()
    got = pcap_frames(path)
    assert got == [complete(f, v) for v, f, _ in seen]
    assert all(l4_ok(f) for f in got)
    assert [bytes(Ether(f)[UDP].payload) for f in got] == payloads
    ours.close(), peer.close()


def test_snaplen_cuts_records(rig, capture):
    """With a short snaplen a record holds the frame's first bytes and its whole length."""
    r = rig()
    path = capture(r.rxq, r.txq, snaplen=100)
    r.rx.add_rx_buffers(4, 4096)
    frame = raw(Ether(src=OURS, dst=GUESTS) / IP() / UDP() / os.urandom(1000))
    small = frame[:60]
    assert r.rxq.push_rx([frame, small]) == 2
    pkt, vnet = partial(Ether(src=GUESTS, dst=OURS) / IP() / TCP() / os.urandom(501))
    # csum_start (34) at an even or odd offset of its slice, or a slice's first byte
    splits = [None, [HDR + 33, 17, 7], [HDR + 34, 1, 2], [HDR + 10, 25, 3], [HDR + 1, 2]]
    for split in splits:
        r.tx.add_tx_buffer(pkt, vnet, split=split)
    batch = r.txq.pop_tx(8, HDR)
    r.txq.release(batch)
    recs = read_pcap(path, cut=100)
    assert [(x.caplen, x.origlen) for x in recs] == \
        [(100, len(frame)), (60, 60)] + [(100, len(pkt))] * len(splits)
    # the partial checksum (at byte 50) is completed over the whole frame all the same
    done = complete(pkt, vnet)
    assert done[:100] != pkt[:100]
    assert [x.data for x in recs] == [frame[:100], small] + [done[:100]] * len(splits)


# ---- TX ------------------------------------------------------------------------------------

def test_tx_frames_are_recorded_when_popped_with_checksums_completed(rig, capture):
    """Guest frames with checksum offload (v4/v6, TCP/UDP), split over odd descriptors, and a
    TSO super-frame: recorded once each when popped, in order, checksums completed."""
    r = rig()
    path = capture(r.txq)
    e = Ether(src=GUESTS, dst=OURS)
    want: list[bytes] = []
    for pkt in (e / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=5, dport=9) / b"hello!!",
                e / IPv6(src="fd00::2", dst="fd00::1") / TCP(flags="PA") / os.urandom(1001),
                e / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(flags="A") / os.urandom(3333)):
        frame, vnet = partial(pkt)
        r.tx.add_tx_buffer(frame, vnet, split=[5, 12, 33, 7])
        want.append(raw(pkt))
    tso = e / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(flags="A") / os.urandom(40000)
    frame, vnet = partial(tso, (core.VNET_GSO_TCPV4, 1448))
    r.tx.add_tx_buffer(frame, vnet, split=[HDR + 54, 10001])
    want.append(raw(tso))
    plain = raw(e / ARP(psrc=str(GUEST4), pdst=str(GW4)))
    r.tx.add_tx_buffer(plain)
    want.append(plain)
    batch = r.txq.pop_tx(64, HDR)
    assert batch.count == 5
    got = pcap_frames(path)
    assert got == want and all(l4_ok(f) for f in got[:4])
    r.txq.release(batch)
    assert r.txq.pop_tx(64, HDR).count == 0
    assert pcap_frames(path) == want


def test_both_directions_in_one_file_in_order(rig, capture):
    """One file for both rings: a guest frame popped, our answer pushed, another popped."""
    r = rig()
    path = capture(r.rxq, r.txq)
    r.rx.add_rx_buffers(4, 2048)
    e = Ether(src=GUESTS, dst=OURS)
    ask = raw(e / ARP(op=1, psrc=str(GUEST4), pdst=str(GW4)))
    answer = raw(Ether(src=OURS, dst=GUESTS) / ARP(op=2, psrc=str(GW4), pdst=str(GUEST4)))
    again = raw(e / IP(src=str(GUEST4), dst=str(GW4)) / UDP() / b"x")
    r.tx.add_tx_buffer(ask)
    r.txq.release(r.txq.pop_tx(8, HDR))
    r.rxq.push_rx([answer])
    r.tx.add_tx_buffer(again)
    r.txq.release(r.txq.pop_tx(8, HDR))
    recs = read_pcap(path)
    assert [x.data for x in recs] == [ask, answer, again]
    assert recs[0].time <= recs[1].time <= recs[2].time
    assert abs(recs[2].time - time.time()) < 60


def _udp_frame(sport: int, dport: int, payload: bytes) -> bytes:
    from passt_py.link.ip import udp_frame
    return udp_frame(OUR_MAC, GUEST_MAC, GUEST4, GW4, sport, dport, payload)


def test_fast_path_frames_and_its_looks_are_recorded_once(rig, wait, capture):
    """The fast path sends [udp, udp, ARP, udp] as far as the ARP, looks at the ARP and puts it
    back (twice: a look, then its batch), and Python pops the rest: four records, in order.
    Datagrams it delivers to the guest inside the wait are recorded too."""
    r = rig()
    path = capture(r.rxq, r.txq)
    kick = kick_rig(r, wait)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(sink.getsockname())
    assert wait.fast.add_tx(GUEST4, GW4, 40000, 5000, sock.fileno())
    arp = raw(Ether(src=GUEST_MAC.hex(":"), dst="ff:ff:ff:ff:ff:ff") /
              ARP(op=1, hwsrc=GUEST_MAC.hex(":"), psrc=str(GUEST4), pdst=str(GW4)))
    tx = [_udp_frame(40000, 5000, b"a"), _udp_frame(40000, 5000, b"b"), arp,
          _udp_frame(40000, 5000, b"c")]
    for f in tx:
        r.tx.add_tx_buffer(f)
    os.eventfd_write(kick, 1)
    assert wait.poll() == [(kick, select.EPOLLIN)]
    assert pcap_frames(path) == tx                   # C's two, its looks, and what it left
    batch = r.txq.pop_tx(64, HDR)
    assert [batch.frame(i) for i in range(batch.count)] == tx[2:]
    r.txq.release(batch)
    assert pcap_frames(path) == tx                   # Python's pop records nothing again
    # RX inside the wait
    ours, peer = udp_pair(4)
    wait.ep.register(ours.fileno(), select.EPOLLIN)
    wait.fast.set_rx(r.rxq, HDR, True, core.UDP_RX_CSUM_PARTIAL, 64)
    assert wait.fast.add_rx(ours.fileno(), udp_templates(4))
    r.rx.add_rx_buffers(16, 4096)
    for k in range(5):
        peer.send(b"%d" % k * 300)
    wait_queued(ours)
    assert wait.poll() == []
    seen = r.rx_frames()
    assert len(seen) == 5
    rx = [complete(f, v) for v, f, _ in seen]
    assert pcap_frames(path) == tx + rx and all(l4_ok(f) for f in rx)
    os.close(kick)
    for s in (sink, sock, ours, peer):
        s.close()


# ---- failures ------------------------------------------------------------------------------

def test_a_failing_file_turns_capture_off_and_traffic_flows(rig):
    """A full disk (/dev/full) on RX, a pipe nobody reads on TX: the first write fails, capture
    is off on that ring with the errno kept, and every frame still goes through."""
    r = rig()
    full = os.open("/dev/full", os.O_WRONLY)
    rd, wr = os.pipe()
    os.close(rd)
    try:
        r.rxq.set_capture(full, HDR, SNAPLEN)
        r.txq.set_capture(wr, HDR, SNAPLEN)
        r.rx.add_rx_buffers(8, 2048)
        sent = [raw(Ether() / IP() / UDP() / (bytes([k]) * 100)) for k in range(4)]
        assert r.rxq.push_rx(sent[:2]) == 2
        st = r.rxq.capture
        assert (st.on, st.err, st.frames) == (False, errno.ENOSPC, 0)
        assert r.rxq.push_rx(sent[2:]) == 2
        assert [f for _, f, _ in r.rx_frames()] == sent
        for f in sent:
            r.tx.add_tx_buffer(f)
        batch = r.txq.pop_tx(8, HDR)
        assert [batch.frame(i) for i in range(batch.count)] == sent
        r.txq.release(batch)
        st = r.txq.capture
        assert (st.on, st.err, st.frames) == (False, errno.EPIPE, 0)
        # Turned on again (a new file), it records again and the error is gone.
        ok = os.open("/dev/null", os.O_WRONLY)
        r.rxq.set_capture(ok, HDR, SNAPLEN)
        assert r.rxq.push_rx(sent[:1]) == 1
        st = r.rxq.capture
        assert (st.on, st.err, st.frames) == (True, 0, 1)
        r.rxq.set_capture(-1)
        assert not r.rxq.capture.on
        os.close(ok)
    finally:
        r.rxq.set_capture(-1)
        r.txq.set_capture(-1)
        os.close(full)
        os.close(wr)


def test_bad_settings_are_refused(rig):
    r = rig()
    with pytest.raises(core.CoreError):
        r.rxq.set_capture(1, core.lib.PC_VQ_MAX_HDR + 1, SNAPLEN)
    assert not r.rxq.capture.on


def test_descriptors_rewritten_before_publication_stay_in_bounds(rig, capture):
    """A driver that points a placed chain outside its memory before the flush (deferred
    publication): the record of that frame is cut or left out, never read from outside; the
    other frames are recorded and the used elements published as ever."""
    r = rig()
    path = capture(r.rxq)
    heads = r.rx.add_rx_buffers(3, 2048)
    sent = [raw(Ether(src=OURS, dst=GUESTS) / IP() / UDP() / (bytes([k]) * 1000))
            for k in range(3)]
    ours, peer = udp_pair(4)
    for f in sent:
        peer.send(bytes(Ether(f)[UDP].payload))
    wait_queued(ours)
    assert core.UdpPath(r.rxq).rx(ours.fileno(), udp_templates(4), flush=False) == 3
    r.rx.write_desc(r.rx.layout[heads[1]][0], 1 << 40, 2048, 2)    # WRITE, far away
    r.rxq.flush()
    assert len(r.rx.pop_used()) == 3
    recs = read_pcap(path)
    assert len(recs) == 2
    assert [bytes(Ether(x.data)[UDP].payload)[:1] for x in recs] == [b"\0", b"\2"]
    ours.close(), peer.close()


# ---- the whole back-end ----------------------------------------------------------------------

def _mask_l4_checksum(frame: bytes) -> bytes:
    """An IPv4 TCP/UDP frame with its L4 checksum field zeroed (the guest sees it partial)."""
    if frame[12:14] != b"\x08\x00" or frame[23] not in (6, 17):
        return frame
    at = 14 + (frame[14] & 0xF) * 4 + (16 if frame[23] == 6 else 6)
    return frame[:at] + b"\0\0" + frame[at + 2:]


def test_the_service_with_offloads_keeps_its_paths_and_records_every_frame(tmp_path):
    """-p with checksum offload and TSO negotiated both ways: TCP bulk data (GSO frames with
    partial checksums into the guest) and UDP round trips run through the ring paths and C's
    fast paths as without a capture; the pcap has every frame the guest sent, as sent (one
    with a partial checksum, completed), and every frame it got, in order, checksums
    completed; GSO frames whole."""
    from passt_py.config.conf import config_from_argv
    from passt_py.link.ip import udp_frame
    from passt_py.service import Service
    from passt_py.vhost_user import device
    from passt_py.vhost_user.wire import bit
    from tests.frontend import DEFAULT_FEATURES, Frontend
    from tests.pcap_reader import l4_checksums_ok
    from tests.service_rig import ARGS, GUEST
    from tests.service_rig import GUEST_MAC as G_MAC
    from tests.service_rig import GW
    from tests.service_rig import OUR_MAC as O_MAC
    from tests.service_rig import on_loop
    from tests.tcp_guest import GuestStack

    pcap, path = tmp_path / "cap.pcap", str(tmp_path / "vu.sock")
    service = Service(config_from_argv(["--vhost-user", "-s", path, *ARGS, "-p", str(pcap)]))
    thread = threading.Thread(target=service.loop.run, daemon=True)
    thread.start()
    fe = Frontend(path, mem_size=64 << 20)
    sent: list[bytes] = []
    seen: list[bytes] = []
    send, recv = fe.send_frame, fe.recv_frames

    def send_frame(frame, *args, **kw):
        sent.append(bytes(frame))
        return send(frame, *args, **kw)

    def recv_frames(*args, **kw):
        got = recv(*args, **kw)
        seen.extend(got)
        return got
    fe.send_frame, fe.recv_frames = send_frame, recv_frames
    socks: list[socket.socket] = []
    try:
        fe.negotiate(DEFAULT_FEATURES | bit(device.VIRTIO_NET_F_CSUM)
                     | bit(device.VIRTIO_NET_F_GUEST_CSUM) | bit(device.VIRTIO_NET_F_GUEST_TSO4)
                     | bit(device.VIRTIO_NET_F_HOST_TSO4))
        fe.start()
        fe.provide_rx(256, 4096)
        guest = GuestStack(fe, GUEST, GW, G_MAC, O_MAC)
        # TCP both ways: C's steady state must move bytes, capture or not
        lst = socket.socket()
        socks.append(lst)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.settimeout(5)
        conn = guest.connect(lst.getsockname()[1])
        host, _ = lst.accept()
        socks.append(host)
        data = os.urandom(400_000)
        threading.Thread(target=host.sendall, args=(data,), daemon=True).start()
        assert guest.run([conn], lambda: len(conn.data) == len(data), timeout=15)
        assert conn.data == data
        for _ in range(10):
            conn.send_data(b"g" * 1000)
        host.settimeout(5)
        got = b""
        while len(got) < 10000:
            got += host.recv(65536)
        guest.run([conn], lambda: conn.snd_una == conn.snd, timeout=5)
        tcp = service.tcp
        assert on_loop(service, lambda: (tcp.fast_release(), tcp.fast_bytes)[1]) > 0
        # UDP round trips: past the first, both directions in C inside the wait
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(sink)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        port = sink.getsockname()[1]
        for k in range(20):
            fe.send_frame(udp_frame(O_MAC, G_MAC, GUEST, GW, 40030, port, b"q%d" % k))
            payload, peer = sink.recvfrom(100)
            sink.sendto(payload[::-1], peer)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(
                    f[12:14] == b"\x08\x00" and f[23] == 17 and f.endswith(payload[::-1])
                    for f in fe.recv_frames(1, timeout=0.5)):
                pass
        st = service.fast.stats()
        assert st.tx_dgrams > 0 and st.rx_dgrams > 0
        # One datagram with a partial checksum, as a guest with checksum offload sends it
        frame, vnet = partial(Ether(src=G_MAC.hex(":"), dst=O_MAC.hex(":")) /
                              IP(src=str(GUEST), dst=str(GW)) / UDP(sport=40030, dport=port) /
                              b"offloaded")
        fe.rings[1].add_tx_buffer(frame, vnet)
        fe.kick_tx()
        assert sink.recv(100) == b"offloaded"
        sent.append(complete(frame, vnet))
        # Every frame sent is in the file once the back-end took it
        deadline = time.monotonic() + 5
        while True:
            frames = pcap_frames(pcap, live=True)
            tx = [f for f in frames if f[6:12] == G_MAC]
            if len(tx) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        fe.close()
        service.loop.stop(0)
        thread.join(5)
        service.close()
        for s in socks:
            s.close()
    rx = [f for f in frames if f[6:12] == O_MAC]
    assert len(tx) + len(rx) == len(frames)
    assert tx == sent
    assert [_mask_l4_checksum(f) for f in rx[:len(seen)]] == [_mask_l4_checksum(f) for f in seen]
    assert all(l4_checksums_ok(f) for f in frames)
    assert max(len(f) for f in rx) > 20000, "GSO frames are recorded whole"
    assert any(not l4_checksums_ok(f) for f in seen), "the guest got partial checksums"


def test_the_service_logs_a_failing_capture_once_and_goes_on(tmp_path, caplog):
    """The capture file fails (the disk is full) mid-session: the service logs it once and
    closes the file; the rings stop recording and traffic goes on."""
    import logging

    from passt_py.link.ip import udp_frame
    from tests.service_rig import GUEST
    from tests.service_rig import GUEST_MAC as G_MAC
    from tests.service_rig import GW
    from tests.service_rig import OUR_MAC as O_MAC
    from tests.service_rig import service_with_frontend

    caplog.set_level(logging.ERROR, logger="passt_py.service")
    with service_with_frontend(tmp_path, 64, extra=["-p", str(tmp_path / "cap.pcap")]) \
            as (service, fe):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        port = sink.getsockname()[1]
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, service.pcap.fd)          # the same fd, now always ENOSPC
        os.close(full)
        for k in range(5):
            fe.send_frame(udp_frame(O_MAC, G_MAC, GUEST, GW, 40040, port, b"%d" % k))
            assert sink.recv(100) == b"%d" % k
        deadline = time.monotonic() + 5
        while service.pcap is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.pcap is None
        assert not any(ring.capture.on for ring in service.device.rings)
        fe.send_frame(udp_frame(O_MAC, G_MAC, GUEST, GW, 40040, port, b"after"))
        assert sink.recv(100) == b"after"
        sink.close()
    errors = [r for r in caplog.records if "capture" in r.getMessage()]
    assert len(errors) == 1 and "No space left" in errors[0].getMessage()
