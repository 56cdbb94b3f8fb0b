# SPDX-License-Identifier: MIT
"""Local mode side by side with real passt, rootless: both in a fresh ``unshare -rn`` namespace.

tests/local_mode_peer_driver.py starts one back-end with no addressing options in an empty
namespace and asks it, through the test front-end, for a DHCP lease, a router advertisement, a
DHCPv6 lease and a TCP connection to 169.254.2.2. What must hold for passt-py on its own: the
lease is 169.254.2.1/16 behind 169.254.2.2, fe80::1 advertises itself as router, and the
connection reaches the namespace's 127.0.0.1 with bytes both ways. Next to real passt: the same
lease option for option, the same router and lifetime, the same silence to DHCPv6, the same
connection. One difference is deliberate and checked: passt's RA carries the guest's own
link-local /64 as prefix and the M flag (nothing a guest can use: Linux ignores link-local
prefixes, and DHCPv6 does not answer); passt-py sends neither.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER_TIMEOUT = 60.0

pytestmark = pytest.mark.usefixtures("userns")


def ask(backend: list[str]) -> dict:
    """The driver's report for ``backend`` in a fresh ``unshare -rn`` namespace."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(["unshare", "-rn", sys.executable, "-m", "tests.local_mode_peer_driver",
                          "--", *backend], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=DRIVER_TIMEOUT)
    lines = out.stdout.strip().splitlines()
    assert lines, f"no report (exit {out.returncode}): {out.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert report["error"] is None, f"{report['error']}\n{report.get('log', '')}"
    return report


@pytest.fixture(scope="module")
def ours() -> dict:
    """What passt-py gives the guest in an empty namespace."""
    return ask([sys.executable, "-m", "passt_py"])


@pytest.fixture(scope="module")
def theirs(real_passt: list[str]) -> dict:
    """What real passt gives the guest in an empty namespace."""
    return ask(real_passt)


def test_passt_py_starts_and_leases_local_addressing(ours):
    """An empty namespace is no error: the guest is offered 169.254.2.1/16 via 169.254.2.2."""
    dhcp = ours["dhcp"]
    assert dhcp["answered"] and dhcp["yiaddr"] == "169.254.2.1" and dhcp["src"] == "169.254.2.2"
    assert dhcp["options"]["subnet_mask"] == ["255.255.0.0"]
    assert dhcp["options"]["router"] == ["169.254.2.2"]
    assert "switch to local mode" in ours["log"]


def test_passt_py_advertises_fe80_1_as_router_with_nothing_to_lease(ours):
    """The RA comes from fe80::1 with a lifetime, no prefix and no M flag; DHCPv6 is silent."""
    ra = ours["ra"]
    assert ra["answered"] and ra["src"] == "fe80::1" and ra["lifetime"] > 0
    assert ra["prefixes"] == [] and ra["M"] == 0
    assert not ours["dhcpv6"]["answered"]


def test_passt_py_gateway_leads_to_namespace_loopback(ours):
    """A TCP connection to 169.254.2.2 is accepted on 127.0.0.1; bytes pass both ways."""
    tcp = ours["tcp"]
    assert tcp["connected"] and tcp["peer"] == "127.0.0.1", tcp
    assert (tcp["host_got"], tcp["guest_got"]) == ("from the guest", "from the host")


def test_lease_matches_real_passt(ours, theirs):
    """The DHCP offer is passt's, option for option."""
    assert ours["dhcp"] == theirs["dhcp"]


def test_router_and_dhcpv6_match_real_passt(ours, theirs):
    """Same router address and lifetime, and the same silence to a DHCPv6 SOLICIT."""
    assert (ours["ra"]["src"], ours["ra"]["lifetime"]) == \
        (theirs["ra"]["src"], theirs["ra"]["lifetime"])
    assert ours["dhcpv6"] == theirs["dhcpv6"]


def test_ra_difference_from_real_passt_is_only_the_unusable_prefix(ours, theirs):
    """passt advertises the guest's own link-local /64 (and M); passt-py leaves both out."""
    assert [p["prefix"].startswith("fe80:") for p in theirs["ra"]["prefixes"]] in ([True], [])
    assert ours["ra"]["prefixes"] == []


def test_tcp_through_gateway_matches_real_passt(ours, theirs):
    """Both carry the connection to the namespace's 127.0.0.1 the same way."""
    assert ours["tcp"] == theirs["tcp"]
