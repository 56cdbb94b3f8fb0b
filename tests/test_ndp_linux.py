# SPDX-License-Identifier: MIT
"""NDP against the real Linux IPv6 stack: the kernel, on a tap in a private netns, is the guest.

Skipped without root, /dev/net/tun or unshare. See tests/ndp_tap_driver.py for the scenarios.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("ndp_tap_driver.py")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun")
    or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, /dev/net/tun, unshare and iproute2")


def _run(scenario: str) -> dict:
    proc = subprocess.run(["unshare", "-n", sys.executable, str(DRIVER), scenario],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def slaac() -> dict:
    return _run("slaac")


@pytest.fixture(scope="module")
def dad() -> dict:
    return _run("dad")


def _addrs(state: dict) -> dict[str, dict]:
    return {a["local"]: a for link in state["addr"] for a in link["addr_info"]}


def _default_route(state: dict) -> dict:
    return next(r for r in state["route"] if r["dst"] == "default")


def test_kernel_forms_slaac_address_from_our_prefix(slaac):
    """The advertised /64 yields a SLAAC address that passes DAD (we do not defend it)."""
    addr = _addrs(slaac)["2001:db8:1:0:5054:ff:fe12:3456"]
    assert addr["prefixlen"] == 64
    assert addr["dynamic"] is True
    assert "tentative" not in addr and "dadfailed" not in addr


def test_kernel_link_local_passes_dad(slaac):
    """The guest's own link-local is not defended."""
    addr = _addrs(slaac)["fe80::5054:ff:fe12:3456"]
    assert "tentative" not in addr and "dadfailed" not in addr


def test_kernel_installs_default_route_via_our_link_local(slaac):
    """The RA makes us the default router with the 65535 s lifetime."""
    route = _default_route(slaac)
    assert route["gateway"] == "fe80::1"
    assert route["protocol"] == "ra"
    assert 65000 < route["expires"] <= 65535


def test_kernel_takes_mtu_and_hop_limit_from_ra(slaac):
    """The MTU option and Cur Hop Limit reach the kernel's settings."""
    assert slaac["mtu6"] == 4000
    assert slaac["hop_limit"] == 64
    assert _default_route(slaac)["metrics"][0] == {"mtu": 4000, "hoplimit": 64}


def test_kernel_resolves_router_from_ra_source_link_layer(slaac):
    """Our link-local maps to our MAC and is flagged as a router."""
    neigh = {n["dst"]: n for n in slaac["neigh"]}
    assert neigh["fe80::1"]["lladdr"] == "9a:55:9a:55:9a:55"
    assert "router" in neigh["fe80::1"]


def test_kernel_resolves_on_link_neighbours_through_our_nas(slaac):
    """An on-link global and an arbitrary link-local both resolve to our MAC."""
    neigh = {n["dst"]: n for n in slaac["neigh"]}
    for dst in ("2001:db8:1::99", "fe80::77"):
        assert neigh[dst]["lladdr"] == "9a:55:9a:55:9a:55"
        assert neigh[dst]["state"] == ["REACHABLE"]


def test_dad_for_our_link_local_fails_in_kernel(dad):
    """A guest claiming our link-local sees the conflict."""
    assert _addrs(dad)["fe80::1"].get("dadfailed") is True


def test_dad_for_guest_and_other_addresses_succeeds_in_kernel(dad):
    """The guest's address and any other it picks are not defended."""
    addrs = _addrs(dad)
    for local in ("2001:db8:1::2", "2001:db8:1::1234", "fe80::5054:ff:fe12:3456"):
        assert "dadfailed" not in addrs[local] and "tentative" not in addrs[local]
