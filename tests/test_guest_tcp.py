# SPDX-License-Identifier: MIT
"""TCP through passt-py with a real Linux guest under QEMU: bulk transfers, -t, many
connections, iperf3. Host-side sockets live in the test's network namespace; payloads are
checked by SHA-256 on both ends (``sha256sum`` in the guest)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tests.netns import in_netns
from tests.test_guest_passt_py import passt_py
from tests.procs import stop

pytestmark = pytest.mark.qemu

SIZE = 100 << 20
FAMILIES = [
    pytest.param(socket.AF_INET, "127.0.0.1", "10.200.0.1", "4", id="ipv4"),
    pytest.param(socket.AF_INET6, "::1", "fd00:200::1", "6", id="ipv6"),
]


def _tcp_target(gw: str, port: int, v: str) -> str:
    return f"TCP4:{gw}:{port}" if v == "4" else f"TCP6:[{gw}]:{port}"


def _boot(guest_boot, guest_netns, *extra: str, v: str = "4"):
    guest = guest_boot(passt_py(*extra), guest_netns, dhcp=True)
    guest.wait_dhcp(timeout=30)
    if v == "6":
        guest.wait_ipv6("fd00:200:", timeout=30)
    return guest


class Sink(threading.Thread):
    """Accepts one connection and hashes everything until EOF."""

    def __init__(self, lst: socket.socket) -> None:
        super().__init__(daemon=True)
        self.lst = lst
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.lst.settimeout(30)
            conn, _ = self.lst.accept()
            conn.settimeout(30)
            with conn:
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    self.digest.update(chunk)
                    self.size += len(chunk)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _guest_sha(guest, path: str) -> str:
    return guest.check(f"sha256sum {path}", timeout=30).split()[0]


@pytest.mark.parametrize("family,loop_addr,gw,v", FAMILIES)
def test_tcp_guest_to_host_100mb(guest_boot, guest_netns, family, loop_addr, gw, v):
    """100 MB from the guest to the host's loopback through the gateway, hash-verified."""
    guest = _boot(guest_boot, guest_netns, v=v)
    guest.check(f"head -c {SIZE} /dev/urandom > /tmp/data", timeout=60)
    want = _guest_sha(guest, "/tmp/data")
    with in_netns(guest_netns):
        lst = socket.socket(family, socket.SOCK_STREAM)
    lst.bind((loop_addr, 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    sink = Sink(lst)
    sink.start()
    t0 = time.monotonic()
    guest.check(f"socat -u OPEN:/tmp/data {_tcp_target(gw, port, v)}", timeout=55)
    sink.join(30)
    elapsed = time.monotonic() - t0
    lst.close()
    assert sink.error is None, sink.error
    assert sink.size == SIZE
    assert sink.digest.hexdigest() == want
    print(f"guest->host {SIZE >> 20} MB in {elapsed:.2f} s ({SIZE / elapsed / 1e6:.0f} MB/s)")


@pytest.mark.parametrize("family,loop_addr,gw,v", FAMILIES)
def test_tcp_host_to_guest_100mb_through_forward(guest_boot, guest_netns, family, loop_addr,
                                                 gw, v):
    """100 MB from the host to a -t forwarded port reach the guest intact."""
    guest = _boot(guest_boot, guest_netns, "-t", "8080", v=v)
    if v == "6":
        guest.check("ping -6 -c1 -W5 fd00:200::1", timeout=15)
    guest.check(f"(socat -u TCP{v}-LISTEN:8080,reuseaddr OPEN:/tmp/in,creat,trunc "
                f">/tmp/socat.log 2>&1 &) ; sleep 0.5")
    data = os.urandom(SIZE)
    with in_netns(guest_netns):
        client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(30)
    t0 = time.monotonic()
    client.connect((loop_addr, 8080))
    client.sendall(data)
    client.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""         # the guest's FIN: socat is done
    elapsed = time.monotonic() - t0
    client.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if guest.check("stat -c %s /tmp/in", timeout=5).strip() == str(SIZE):
            break
        time.sleep(0.3)
    assert _guest_sha(guest, "/tmp/in") == hashlib.sha256(data).hexdigest()
    print(f"host->guest {SIZE >> 20} MB in {elapsed:.2f} s ({SIZE / elapsed / 1e6:.0f} MB/s)")


def test_tcp_guest_to_host_download_and_upload_http_style(guest_boot, guest_netns):
    """Request/response both ways on one connection: the guest sends, then reads a reply."""
    guest = _boot(guest_boot, guest_netns)
    body = os.urandom(10 << 20)
    with in_netns(guest_netns):
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    got = {}

    def serve() -> None:
        lst.settimeout(30)
        conn, _ = lst.accept()
        conn.settimeout(30)
        req = b""
        while b"\r\n\r\n" not in req:
            chunk = conn.recv(4096)
            if not chunk:
                break
            req += chunk
        got["req"] = req
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + body)
        conn.close()
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    guest.check(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socat -t 30 - TCP4:10.200.0.1:{port} "
                f"> /tmp/resp", timeout=55)
    th.join(10)
    lst.close()
    assert got["req"].startswith(b"GET / HTTP/1.0")
    head = len(b"HTTP/1.0 200 OK\r\n\r\n")
    out = guest.check(f"tail -c +{head + 1} /tmp/resp | sha256sum", timeout=30).split()[0]
    assert out == hashlib.sha256(body).hexdigest()


def test_tcp_200_concurrent_connections_from_guest(guest_boot, guest_netns):
    """200 guest connections open at once; each gets its own echo."""
    guest = _boot(guest_boot, guest_netns)
    n = 200
    with in_netns(guest_netns):
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(n)
    port = lst.getsockname()[1]
    peak = {"open": 0}

    def serve() -> None:
        conns = []
        lst.settimeout(40)
        try:
            while len(conns) < n:
                c, _ = lst.accept()
                c.settimeout(20)
                conns.append(c)
            peak["open"] = len(conns)     # all open at the same time
            for c in conns:
                msg = b""
                while not msg.endswith(b"\n"):
                    chunk = c.recv(100)
                    if not chunk:
                        break
                    msg += chunk
                c.sendall(msg.upper())
                c.close()
        except OSError as e:
            peak["error"] = repr(e)
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    guest.check("mkdir -p /tmp/c")
    script = (f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); "
              f"(echo hello$i | socat -t 30 - TCP4:10.200.0.1:{port} > /tmp/c/$i 2>&1 &); "
              f"done; sleep 1")
    guest.check(script, timeout=30)
    th.join(45)
    lst.close()
    assert peak.get("open") == n, peak
    deadline = time.monotonic() + 20
    out = ""
    while time.monotonic() < deadline:
        out = guest.check("cat /tmp/c/* | grep -c HELLO", timeout=10).strip()
        if out == str(n):
            break
        time.sleep(0.5)
    assert out == str(n)


def _iperf3() -> str:
    path = shutil.which("iperf3")
    if path is None:
        pytest.skip("iperf3 is not installed on the host")
    return path


@pytest.mark.parametrize("mtu", [65520, 1500])
def test_tcp_iperf3_both_directions(guest_boot, guest_netns, mtu):
    """iperf3 from the guest to a host server, forward and reverse, completes at this MTU."""
    iperf3 = _iperf3()
    guest = _boot(guest_boot, guest_netns, "--mtu", str(mtu))
    assert guest.check("cat /sys/class/net/eth0/mtu").strip() == str(mtu)
    port = 5201
    server = subprocess.Popen(
        ["ip", "netns", "exec", guest_netns, iperf3, "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        results = {}
        for name, flag in (("send", ""), ("recv", "-R")):
            out = guest.check(f"iperf3 -c 10.200.0.1 -p {port} -t 3 -J {flag}", timeout=40)
            report = json.loads(out)
            results[name] = report["end"]["sum_received"]["bits_per_second"]
            assert report["end"]["sum_received"]["bytes"] > 0
        print(f"iperf3 mtu {mtu}: guest->host {results['send'] / 1e9:.2f} Gbit/s, "
              f"host->guest {results['recv'] / 1e9:.2f} Gbit/s")
    finally:
        stop(server)
