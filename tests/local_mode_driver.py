# SPDX-License-Identifier: MIT
"""A real guest behind passt-py in local mode, run inside ``unshare -rn`` (an empty namespace).

tests/test_local_mode_guest.py runs ``unshare -rn python -m tests.local_mode_driver --image DIR``:
root only inside a fresh user namespace, which owns a network namespace with nothing but a
loopback interface, so passt-py finds no host interface to copy and has to start in local mode.
Everything happens in there:

- loopback is brought up (a fresh namespace has it down) and a TCP service listens on
  127.0.0.1 (later one on ::1): it reads the guest's bytes to the end and answers with them reversed;
- passt-py starts with no addressing options at all, and QEMU boots the test guest
  (tests/guest/boot.py) against it; the guest's udhcpc takes whatever lease it is offered;
- the guest sends a payload to the gateway address 169.254.2.2 on the service's port (socat),
  which passt-py must carry to the namespace's 127.0.0.1, and stores the answer; then the same
  over IPv6, from the guest's link-local address to fe80::1, which leads to ::1.

The driver asserts nothing: it prints one JSON report (the lease, the guest's routes, digests
and sizes both ways, passt-py's log lines about local mode) on its last stdout line, for the
test to judge. QEMU and passt-py are stopped by PID by boot_guest; every wait is bounded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.guest.boot import Guest, boot_guest  # noqa: E402
from tests.guest.image import GuestImage  # noqa: E402

GATEWAY = "169.254.2.2"
GATEWAY6 = "fe80::1"
PAYLOAD_SIZE = 60_000     # written into the guest through its serial agent: keep it small
SERVICE_TIMEOUT = 60.0
BOOT_TIMEOUT = 90.0


def payload() -> bytes:
    """What the guest sends: a fixed, non-repeating-looking pattern."""
    return bytes((i * 131 + (i >> 8) * 7 + 5) & 0xFF for i in range(PAYLOAD_SIZE))


def sha(data: bytes) -> str:
    """SHA-256 of ``data`` in hex."""
    return hashlib.sha256(data).hexdigest()


class ReversingService:
    """A TCP service on loopback: reads to end of file, answers with the bytes reversed."""

    def __init__(self, family: int) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        self.sock.listen(1)
        self.sock.settimeout(SERVICE_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.peer: tuple[str, int] | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        """One connection: read all, answer reversed, close."""
        try:
            conn, self.peer = self.sock.accept()
            with conn:
                conn.settimeout(SERVICE_TIMEOUT)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                self.received = b"".join(chunks)
                conn.sendall(self.received[::-1])
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.sock.close()


def wait_guest_file(guest: Guest, path: str, size: int, timeout: float) -> bytes:
    """``path`` in the guest once it holds ``size`` bytes (or whatever it holds at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, out = guest.run(f"stat -c %s {path}", timeout=5)
        if rc == 0 and out.strip() == str(size):
            break
        time.sleep(0.3)
    assert guest.agent is not None
    return guest.agent.read_file(path)


def wait_default6(guest: Guest, timeout: float = 30.0) -> str:
    """The guest's IPv6 routes once the RA made fe80::1 its default router (or at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        routes = guest.run("ip -6 route", timeout=10)[1]
        if f"default via {GATEWAY6}" in routes or time.monotonic() >= deadline:
            return routes
        time.sleep(0.3)


def exchange(guest: Guest, family: int) -> dict:
    """The guest's payload (already in /tmp/payload) to the gateway on the port of a loopback
    service of ``family``, and the service's answer back: what each side got."""
    data = payload()
    service = ReversingService(family)
    target = f"TCP4:{GATEWAY}:{service.port}" if family == socket.AF_INET \
        else f"TCP6:[{GATEWAY6}%eth0]:{service.port}"
    guest.check("rm -f /tmp/reply; (socat -b 65536 -t 10 -T 20 OPEN:/tmp/payload!!"
                f"OPEN:/tmp/reply,creat,trunc {target} >/tmp/socat.log 2>&1 &)")
    service.thread.join(SERVICE_TIMEOUT + 5)
    reply = wait_guest_file(guest, "/tmp/reply", len(data), SERVICE_TIMEOUT)
    return {"service": {"error": service.error, "peer": service.peer,
                        "received": len(service.received), "sha_received": sha(service.received),
                        "sent": len(data), "sha_sent": sha(data)},
            "reply": {"received": len(reply), "sha_received": sha(reply),
                      "expected": len(data), "sha_expected": sha(data[::-1])},
            "socat_log": guest.run("cat /tmp/socat.log", timeout=5)[1][-2000:]}


def run(image: GuestImage, report: dict) -> None:
    """Boot the guest against passt-py in this (empty) namespace and exercise it."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    report["host_routes"] = subprocess.run(["ip", "route", "show", "table", "all"],
                                           capture_output=True, text=True, timeout=10).stdout

    def factory(sock: Path) -> list[str]:
        return [sys.executable, "-m", "passt_py", "-f", "-d", "--vhost-user", "-s", str(sock)]

    with boot_guest(factory, None, dhcp=True, image=image, boot_timeout=BOOT_TIMEOUT) as guest:
        try:
            report["lease"] = guest.wait_dhcp(timeout=30)
            report["guest_addr"] = guest.check("ip -4 addr show dev eth0")
            report["guest_routes"] = guest.check("ip -4 route")
            assert guest.agent is not None
            guest.agent.write_file("/tmp/payload", payload())
            report["ipv4"] = exchange(guest, socket.AF_INET)
            report["guest_routes6"] = wait_default6(guest)
            report["ipv6"] = exchange(guest, socket.AF_INET6)
        finally:
            assert guest.backend is not None
            log = guest.backend.output()
            report["backend_log"] = [line for line in log.splitlines()
                                     if "local" in line.lower() or "error" in line.lower()][-40:]
            report["backend_log_tail"] = log[-3000:]


def main() -> int:
    """Parse arguments, run, print the JSON report last."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, required=True, help="guest image cache directory")
    args = ap.parse_args()
    manifest = json.loads((args.image / "manifest.json").read_text())
    image = GuestImage(kernel=args.image / "vmlinuz", initrd=args.image / "initramfs.gz",
                       kernel_version=manifest["kernel_version"], manifest=manifest)
    report: dict = {"error": None}
    try:
        run(image, report)
    except Exception:  # noqa: BLE001 - the report carries any failure to the test
        report["error"] = traceback.format_exc()[-4000:]
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
