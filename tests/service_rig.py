"""A whole Service on its own thread with the test front-end connected: the rings are real,
the guest is the test. Shared by the TCP and UDP service tests."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from passt_py.conf import config_from_argv
from passt_py.service import Service
from tests.frontend import Frontend

import ipaddress

#: The guest's addressing in these rigs (IPv4 only, nothing configured by DHCP/NDP).
GUEST = ipaddress.IPv4Address("10.9.8.7")
GW = ipaddress.IPv4Address("10.9.8.1")
GUEST_MAC = bytes.fromhex("525400abcdef")
OUR_MAC = bytes.fromhex("9a559a559a55")
ARGS = ["-a", "10.9.8.7/24", "-g", "10.9.8.1", "-4", "-i", "lo", "--no-dhcp", "--no-ndp",
        "--no-dhcpv6", "--no-ra"]


T = TypeVar("T")


def on_loop(service: Service, fn: Callable[[], T], timeout: float = 5.0) -> T:
    """``fn()`` run on the service's own thread (between two waits of its loop): what the
    back-end holds in C is only consistent there."""
    done = threading.Event()
    box: list[T] = []
    service.loop.defer(lambda: (box.append(fn()), done.set()))
    assert done.wait(timeout), "the service loop did not run the call"
    return box[0]


@contextmanager
def service_with_frontend(tmp_path: Path, rx_buffers: int, mem_size: int = 32 << 20,
                          extra: Sequence[str] = ()) -> Iterator[tuple[Service, Frontend]]:
    """(service, front-end) with ``rx_buffers`` 4 KiB RX buffers offered; stopped after.
    ``extra``: more command-line options (forwards...)."""
    path = str(tmp_path / "vu.sock")
    service = Service(config_from_argv(["--vhost-user", "-s", path, *ARGS, *extra]))
    thread = threading.Thread(target=service.loop.run, daemon=True)
    thread.start()
    fe = Frontend(path, mem_size=mem_size).connect_all()
    try:
        fe.provide_rx(rx_buffers, 4096)
        yield service, fe
    finally:
        fe.close()
        service.loop.stop(0)
        thread.join(5)
        service.close()
