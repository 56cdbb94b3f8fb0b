# SPDX-License-Identifier: MIT
"""Local mode with a real guest, rootless: passt-py in a fresh ``unshare -rn`` namespace.

The namespace has no interface but loopback, so there is no host addressing to copy: passt-py
must start anyway (as passt does) and give the guest 169.254.2.1/16 behind the router
169.254.2.2, which leads to the namespace's loopback. tests/local_mode_driver.py does the work
inside the namespace (passt-py, QEMU with the test guest, a TCP service on 127.0.0.1) and
reports; this file judges the report. What must hold: the guest's DHCP lease is exactly local
mode's, its default route is the gateway, and a payload sent by the guest to 169.254.2.2 reaches
the service on 127.0.0.1 intact (SHA-256), as does the service's answer on its way back; and
the same over IPv6 between the guest's link-local address and fe80::1, which leads to ::1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest.image import GuestImage

ROOT = Path(__file__).resolve().parent.parent
DRIVER_TIMEOUT = 240.0

pytestmark = [pytest.mark.qemu, pytest.mark.usefixtures("userns")]


@pytest.fixture(scope="module")
def report(guest_image: GuestImage) -> dict:
    """The driver's JSON report, from one guest booted in a fresh ``unshare -rn``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(["unshare", "-rn", sys.executable, "-m", "tests.local_mode_driver",
                          "--image", str(guest_image.directory)],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=DRIVER_TIMEOUT)
    lines = out.stdout.strip().splitlines()
    assert lines, f"no report (exit {out.returncode}): {out.stderr[-3000:]}"
    rep = json.loads(lines[-1])
    assert out.returncode == 0 and rep["error"] is None, (
        f"{rep['error']}\n{rep.get('backend_log_tail', '')}")
    return rep


def test_namespace_really_has_no_routes(report):
    """The premise: nothing routable in the namespace (only loopback's local table)."""
    assert "default" not in report["host_routes"]
    assert all(" lo " in f" {line} " or not line.strip()
               for line in report["host_routes"].splitlines()), report["host_routes"]


def test_backend_says_it_is_in_local_mode(report):
    """passt-py logs that it found no template interface and switched to local mode."""
    assert any("switch to local mode" in line for line in report["backend_log"]), \
        report["backend_log"]


def test_guest_leases_169_254_2_1_behind_169_254_2_2(report):
    """DHCP gives 169.254.2.1/16, router and server 169.254.2.2, MTU 65520."""
    lease = report["lease"]
    assert lease["ip"] == "169.254.2.1"
    assert lease["subnet"] == "255.255.0.0"
    assert lease["router"].split() == ["169.254.2.2"]
    assert lease["serverid"] == "169.254.2.2"
    assert lease["mtu"] == "65520"
    assert "inet 169.254.2.1/16" in report["guest_addr"]
    assert "default via 169.254.2.2 dev eth0" in report["guest_routes"]


@pytest.mark.parametrize("family,loopback", [("ipv4", "127.0.0.1"), ("ipv6", "::1")])
def test_guest_reaches_host_loopback_service_through_gateway(report, family, loopback):
    """Bytes from the guest to the gateway (169.254.2.2, or fe80::1 from the guest's
    link-local address) reach the namespace's loopback service intact."""
    svc = report[family]["service"]
    assert svc["error"] is None, (svc, report[family]["socat_log"])
    assert svc["peer"][0] == loopback
    assert (svc["received"], svc["sha_received"]) == (svc["sent"], svc["sha_sent"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_service_answer_reaches_guest(report, family):
    """The service's answer comes back to the guest intact."""
    rep = report[family]["reply"]
    assert (rep["received"], rep["sha_received"]) == (rep["expected"], rep["sha_expected"]), \
        report[family]["socat_log"]


def test_guest_ipv6_default_route_is_fe80_1(report):
    """The RA makes fe80::1 the guest's IPv6 router, with no global address to go with it."""
    assert "default via fe80::1 dev eth0" in report["guest_routes6"]
