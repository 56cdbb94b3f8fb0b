# SPDX-License-Identifier: MIT
"""Host discovery against real kernels: this machine, and fresh namespaces built by the test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from passt_py.config.netlink import DiscoveryError, discover

try:
    from tests import netns as nsutil
except ImportError:  # tests/ is not a package: pytest puts it on sys.path instead
    import netns as nsutil  # type: ignore[no-redef]

needs_netns = pytest.mark.skipif(not nsutil.available(), reason="needs root and iproute2 to create namespaces")

CHECK = [sys.executable, "-m", "passt_py", "--vhost-user", "--check-config", "-d"]
RESOLV = "nameserver 10.200.0.53\nnameserver fd00:200::53\nsearch example.test lab.test\n"


def ip_json(*args: str) -> list:
    """``ip -j ...`` output, the oracle for what the kernel holds."""
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10, check=True).stdout
    return json.loads(out or "[]")


def host_default(family_flag: str) -> dict | None:
    """The machine's first default route for a family, as ip reports it."""
    routes = ip_json(family_flag, "route", "show", "default")
    return routes[0] if routes else None


@pytest.mark.parametrize("family, flag", [(socket.AF_INET, "-4"), (socket.AF_INET6, "-6")])
def test_discovery_matches_ip_on_this_machine(family, flag):
    """discover() finds the same interface and gateway as `ip route show default`."""
    route = host_default(flag)
    if route is None or "gateway" not in route:
        pytest.skip(f"this machine has no {flag} default route via a gateway")
    found = discover(family)
    assert found is not None
    assert (found.ifname, str(found.gateway)) == (route["dev"], route["gateway"])


def test_discovered_address_is_on_interface():
    """The IPv4 address found is one the interface really has, with its prefix length."""
    route = host_default("-4")
    if route is None:
        pytest.skip("this machine has no IPv4 default route")
    found = discover(socket.AF_INET)
    addrs = {(a["local"], a["prefixlen"]) for link in ip_json("-4", "addr", "show", "dev", route["dev"])
             for a in link["addr_info"]}
    assert (str(found.addr), found.prefix_len) in addrs


def test_unknown_interface_raises():
    """Naming an interface that does not exist is a DiscoveryError."""
    with pytest.raises(DiscoveryError):
        discover(socket.AF_INET, "nosuchif0")


def test_interface_mtu_reported():
    """The host interface's MTU is read from the link."""
    found = discover(socket.AF_INET, "lo")
    assert found is not None and found.mtu == ip_json("link", "show", "lo")[0]["mtu"]


@pytest.fixture(scope="module")
def dual_ns():
    """A namespace with IPv4 and IPv6 default routes, MTU 1400 and its own resolv.conf."""
    if not nsutil.available():
        pytest.skip("needs root and iproute2 to create namespaces")
    with nsutil.netns(mtu=1400, resolv_conf=RESOLV) as ns:
        yield ns


@pytest.fixture(scope="module")
def dual_dump(dual_ns):
    """--check-config -d output inside the dual-stack namespace."""
    proc = nsutil.run_in(dual_ns, CHECK)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@needs_netns
def test_ns_ipv4_address_copied(dual_dump):
    """Inside the namespace the guest gets the host's 10.200.0.2/24."""
    assert "IPv4 address: 10.200.0.2/24" in dual_dump


@needs_netns
def test_ns_ipv4_gateway(dual_dump):
    """The IPv4 gateway is the namespace's default route."""
    assert "IPv4 gateway: 10.200.0.1" in dual_dump


@needs_netns
def test_ns_ipv6_address_and_gateway(dual_dump):
    """IPv6 gets fd00:200::2/64 via fd00:200::1."""
    assert "IPv6 address: fd00:200::2/64" in dual_dump and "IPv6 gateway: fd00:200::1" in dual_dump


@needs_netns
def test_ns_interface_and_mtus(dual_dump):
    """The outbound interface is veth0 (MTU 1400) while the guest MTU stays 65520."""
    assert "IPv4 interface: veth0 (MTU 1400)" in dual_dump and "MTU: 65520" in dual_dump


@needs_netns
def test_ns_dns_from_resolv_conf(dual_dump):
    """DNS servers and search list come from the namespace's resolv.conf."""
    assert "IPv4 DNS: 10.200.0.53" in dual_dump
    assert "IPv6 DNS: fd00:200::53" in dual_dump
    assert "DNS search: example.test lab.test" in dual_dump


@needs_netns
def test_ns_debug_dump_on_stderr(dual_ns):
    """-d logs the resolved configuration on stderr (at debug level, line for line what
    --check-config prints) before anything else happens."""
    proc = nsutil.run_in(dual_ns, CHECK)
    lines = proc.stderr.splitlines()
    marker = " DEBUG passt_py.main: "
    logged = [line.split(marker, 1)[1] for line in lines if marker in line]
    assert "IPv4 address: 10.200.0.2/24" in logged, proc.stderr
    assert logged == proc.stdout.splitlines(), proc.stderr
    # Nothing but resolution's notes (warnings, replayed first) comes before the dump.
    first = next(i for i, line in enumerate(lines) if marker in line)
    assert all(" WARNING passt_py.main: " in line for line in lines[:first]), proc.stderr


@needs_netns
def test_ns_mtu_option(dual_ns):
    """-m overrides the advertised MTU."""
    proc = nsutil.run_in(dual_ns, [*CHECK, "-m", "1400"])
    assert "MTU: 1400" in proc.stdout.splitlines()


@needs_netns
def test_ns_explicit_interface(dual_ns):
    """-i veth0 resolves the same addressing as the default route."""
    proc = nsutil.run_in(dual_ns, [*CHECK, "-i", "veth0"])
    assert "IPv4 address: 10.200.0.2/24" in proc.stdout.splitlines()


@needs_netns
def test_ns_discover_in_process_equivalent(dual_ns):
    """discover() run inside the namespace returns the veth0 values."""
    code = (
        "import socket; from passt_py.config.netlink import discover; "
        "h = discover(socket.AF_INET6); print(h.ifname, h.addr, h.prefix_len, h.gateway, h.mtu)"
    )
    proc = nsutil.run_in(dual_ns, [sys.executable, "-c", code])
    assert proc.stdout.split() == ["veth0", "fd00:200::2", "64", "fd00:200::1", "1400"]


@needs_netns
def test_ns_ipv4_only_host_disables_ipv6():
    """Without an IPv6 default route, IPv6 is disabled and IPv4 still works."""
    with nsutil.netns(host6=None) as ns:
        proc = nsutil.run_in(ns, CHECK)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and "IPv6: disabled" in lines and "IPv4 gateway: 10.200.0.1" in lines


@needs_netns
def test_ns_without_default_route_fails_cleanly():
    """With no default route at all the back-end exits 1 with one line."""
    with nsutil.netns(gw4=None, gw6=None) as ns:
        proc = nsutil.run_in(ns, CHECK)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1


@needs_netns
def test_ns_without_default_route_discovers_routed_interface_without_gateway():
    """No default route: the interface with a route still stands in (gateway None), as passt's
    template; only a namespace without any such interface means local mode."""
    code = (
        "import socket; from passt_py.config.netlink import discover; "
        "h = discover(socket.AF_INET); print(h.ifname, h.addr, h.gateway)"
    )
    with nsutil.netns(gw4=None, gw6=None) as ns:
        proc = nsutil.run_in(ns, [sys.executable, "-c", code])
    assert proc.stdout.split() == ["veth0", "10.200.0.2", "None"], proc.stderr


@needs_netns
def test_namespace_removed_even_on_failure():
    """The helper deletes its namespaces when the body raises."""
    name = None
    with pytest.raises(RuntimeError):
        with nsutil.netns(resolv_conf="nameserver 10.200.0.1\n") as ns:
            name = ns
            raise RuntimeError("boom")
    assert name is not None and not nsutil.exists(name) and not nsutil.exists(f"{name}-gw")


@needs_netns
def test_namespace_addresses_configurable():
    """Custom addresses given to the helper are what discovery sees."""
    with nsutil.netns(host4="10.201.0.5/16", gw4="10.201.0.1", host6=None) as ns:
        proc = nsutil.run_in(ns, CHECK)
    assert "IPv4 address: 10.201.0.5/16" in proc.stdout.splitlines()



def test_discovery_leaves_pyroute2_out_of_the_back_end():
    """discover() answers from a short-lived child: pyroute2 (about 20 MiB resident) never
    loads into the process that then serves the guest for its whole life."""
    code = ("import socket, sys; from passt_py.config import netlink; "
            "found = netlink.discover(socket.AF_INET, 'lo'); "
            "loaded = any(m.startswith('pyroute2') for m in sys.modules); "
            "print(loaded, found.ifname, found.ifindex, found.mtu)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    # Not loaded, and the child's answer made it back whole (ip is the oracle).
    lo = ip_json("link", "show", "lo")[0]
    assert out == ["False", "lo", str(lo["ifindex"]), str(lo["mtu"])]
