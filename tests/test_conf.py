# SPDX-License-Identifier: MIT
"""Building the Config: defaults copied from a described host, validation, refusals."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket

import pytest

from passt_py.config import cli, conf
from passt_py.config.conf import (DEFAULT_MTU, UNSUPPORTED_OPTIONS, ConfigError, build_config,
                                  format_mac)
from passt_py.config.netlink import DiscoveryError, HostIface
from passt_py.config.resolvconf import ResolvConf

A = ipaddress.ip_address

HOST4 = HostIface(socket.AF_INET, 2, "eth0", 1500, A("192.0.2.10"), 24, A("192.0.2.1"))
HOST6 = HostIface(
    socket.AF_INET6, 2, "eth0", 1500, A("2001:db8::10"), 64, A("fe80::1"), A("fe80::10")
)
RESOLV = ResolvConf((A("192.0.2.53"), A("2001:db8::53")), ("example.test",))


def make(argv, host4=HOST4, host6=HOST6, resolv=RESOLV, calls=None):
    """build_config for ``argv`` on a host described by the arguments."""

    def discover(family, ifname):
        if calls is not None:
            calls.append((family, ifname))
        return host4 if family == socket.AF_INET else host6

    return build_config(cli.parse_args(["--vhost-user", *argv]), discover, lambda: resolv)


def error_of(argv, **kw):
    """The ConfigError message for ``argv``."""
    with pytest.raises(ConfigError) as exc:
        make(argv, **kw)
    return str(exc.value)


def test_guest_gets_host_ipv4_addressing():
    """By default the guest's IPv4 address, prefix and gateway are the host's."""
    ip4 = make([]).ip4
    assert (ip4.addr, ip4.prefix_len, ip4.gw, ip4.ifname) == (A("192.0.2.10"), 24, A("192.0.2.1"), "eth0")


def test_guest_gets_host_ipv6_addressing():
    """By default the guest's IPv6 address, prefix and gateway are the host's."""
    ip6 = make([]).ip6
    assert (ip6.addr, ip6.prefix_len, ip6.gw, ip6.addr_ll) == (A("2001:db8::10"), 64, A("fe80::1"), A("fe80::10"))


def test_default_mtu_is_65520_not_host_mtu():
    """The guest MTU defaults to 65520 whatever the host interface's MTU."""
    assert make([]).mtu == DEFAULT_MTU == 65520


def test_default_mac():
    """Our MAC defaults to 9a:55:9a:55:9a:55."""
    assert make([]).mac_str == "9a:55:9a:55:9a:55"


def test_mac_option():
    """-M sets our MAC."""
    assert format_mac(make(["-M", "02:00:00:00:00:01"]).mac) == "02:00:00:00:00:01"


def test_address_option_uses_classful_prefix():
    """-a without -n gets the prefix length of its address class, as in passt."""
    ip4 = make(["-a", "10.1.2.3"]).ip4
    assert (ip4.addr, ip4.prefix_len) == (A("10.1.2.3"), 8)


def test_address_with_prefix():
    """-a ADDR/LEN sets both."""
    ip4 = make(["-a", "10.1.2.3/20"]).ip4
    assert ip4.prefix_len == 20


def test_netmask_dotted():
    """-n in dotted form becomes a prefix length."""
    assert make(["-n", "255.255.240.0"]).ip4.prefix_len == 20


def test_ipv6_address_option():
    """-a with an IPv6 address sets the guest's IPv6 address, prefix 64 by default."""
    ip6 = make(["-a", "2001:db8::99"]).ip6
    assert (ip6.addr, ip6.prefix_len) == (A("2001:db8::99"), 64)


def test_gateway_option():
    """-g overrides the gateway of its family only."""
    cfg = make(["-g", "192.0.2.254"])
    assert cfg.ip4.gw == A("192.0.2.254") and cfg.ip6.gw == A("fe80::1")


@pytest.mark.parametrize(
    "argv, option",
    [
        (["-a", "300.1.2.3"], "-a/--address"),
        (["-a", "127.0.0.1"], "-a/--address"),
        (["-a", "10.0.0.1", "-a", "10.0.0.2"], "-a/--address"),
        (["-n", "255.0.255.0"], "-n/--netmask"),
        (["-n", "33"], "-n/--netmask"),
        (["-M", "zz:00:00:00:00:00"], "-M/--mac-addr"),
        (["-M", "01:00:00:00:00:00"], "-M/--mac-addr"),
        (["-m", "67"], "-m/--mtu"),
        (["-m", "65521"], "-m/--mtu"),
        (["-m", "abc"], "-m/--mtu"),
        (["-g", "not-an-ip"], "-g/--gateway"),
        (["-D", "1.2.3"], "-D/--dns"),
        (["-S", "bad..domain"], "-S/--search"),
        (["--max-flows", "0"], "--max-flows"),
        (["--log-size", "10"], "--log-size"),
        (["-F", "999"], "-F/--fd"),
        (["-s", "/tmp/" + "x" * 200], "-s/--socket"),
        (["-t", "0"], "-t/--tcp-ports"),
        (["-u", "10-5"], "-u/--udp-ports"),
        (["-t", "22", "-t", "20-30"], "-t/--tcp-ports"),
    ],
)
def test_bad_values_name_their_option(argv, option):
    """Each malformed value is one error that names the option."""
    message = error_of(argv)
    assert message.startswith(option) and "\n" not in message


def test_small_mtu_rejected_with_ipv6():
    """An MTU below 1280 cannot work for IPv6."""
    assert "1280" in error_of(["-m", "1000"])


def test_small_mtu_accepted_ipv4_only():
    """An MTU below 1280 is fine once IPv6 is off."""
    assert make(["-4", "-m", "576"]).mtu == 576


def test_mtu_zero_means_not_advertised():
    """-m 0 disables MTU advertisement instead of failing."""
    assert make(["-m", "0"]).mtu == 0


def test_ipv4_only_skips_ipv6_discovery():
    """-4 disables IPv6 without asking the host about it."""
    calls = []
    cfg = make(["-4"], calls=calls)
    assert cfg.ip6 is None and [c[0] for c in calls] == [socket.AF_INET]


def test_ipv6_only():
    """-6 disables IPv4."""
    cfg = make(["-6"])
    assert cfg.ip4 is None and cfg.ip6 is not None


def test_ipv4_and_ipv6_only_conflict():
    """-4 and -6 together are an error."""
    assert "-4/--ipv4-only" in error_of(["-4", "-6"])


def test_family_without_default_route_is_disabled():
    """No IPv6 default route: IPv6 is off and a note says why."""
    cfg = make([], host6=None)
    assert cfg.ip6 is None and any("IPv6 disabled" in n for n in cfg.notes)


def test_no_family_under_interface_option_is_an_error():
    """With -i naming an interface neither family can use, the configuration fails (no local
    mode: the user asked for that interface); local mode itself is in tests/test_local_mode.py."""
    assert "no usable host interface on eth7" in error_of(["-i", "eth7"], host4=None, host6=None)


def test_interface_found_but_unusable_for_every_family_is_an_error():
    """An interface exists but has no default gateway for either family: an error that says
    what to give, not local mode (which is for namespaces with no interface at all)."""
    no_gw4 = HostIface(socket.AF_INET, 2, "eth0", 1500, A("192.0.2.10"), 24, None)
    assert "no usable host interface: give -a and -g" in error_of([], host4=no_gw4, host6=None)


def test_options_can_stand_in_for_missing_host_route():
    """-a and -g give a family the host cannot provide."""
    ip4 = make(["-a", "10.0.0.2/24", "-g", "10.0.0.1"], host4=None).ip4
    assert (ip4.addr, ip4.gw, ip4.ifname) == (A("10.0.0.2"), A("10.0.0.1"), None)


def test_interface_passed_to_discovery():
    """-i names the interface discovery must use."""
    calls = []
    make(["-i", "eth7"], calls=calls)
    assert {c[1] for c in calls} == {"eth7"}


def test_unknown_interface_error_names_option():
    """A discovery failure under -i is reported against -i."""

    def discover(family, ifname):
        raise DiscoveryError(f"no such interface '{ifname}'")

    with pytest.raises(ConfigError, match="^-i/--interface: no such interface 'nope'"):
        build_config(cli.parse_args(["--vhost-user", "-i", "nope"]), discover, lambda: RESOLV)


def test_dns_from_resolv_conf_split_by_family():
    """Name servers from resolv.conf go to the family they belong to."""
    cfg = make([])
    assert cfg.ip4.dns == (A("192.0.2.53"),) and cfg.ip6.dns == (A("2001:db8::53"),)


def test_search_from_resolv_conf():
    """The search list comes from resolv.conf by default."""
    assert make([]).search == ("example.test",)


def test_dns_option_replaces_resolv_conf():
    """-D replaces the host's servers."""
    cfg = make(["-D", "198.51.100.1", "-D", "198.51.100.2"])
    assert cfg.ip4.dns == (A("198.51.100.1"), A("198.51.100.2")) and cfg.ip6.dns == ()


def test_dns_none():
    """-D none advertises no servers."""
    cfg = make(["-D", "none"])
    assert cfg.ip4.dns == () and cfg.ip6.dns == ()


def test_search_option_and_none():
    """-S sets the search list; -S none empties it."""
    assert make(["-S", "a.test b.test"]).search == ("a.test", "b.test")
    assert make(["-S", "none"]).search == ()


def test_loopback_resolver_is_advertised_as_mapped_gateway():
    """A host loopback resolver is offered as the gateway and remembered as the real target."""
    cfg = make([], resolv=ResolvConf((A("127.0.0.53"),), ()))
    ip4 = cfg.ip4
    assert (ip4.dns, ip4.dns_match, ip4.dns_host) == ((A("192.0.2.1"),), A("192.0.2.1"), A("127.0.0.53"))


def test_loopback_resolver_dropped_without_mapping():
    """With --no-map-gw a loopback resolver cannot be reached and is dropped."""
    cfg = make(["--no-map-gw"], resolv=ResolvConf((A("127.0.0.53"),), ()))
    assert cfg.ip4.dns == () and cfg.ip4.map_host_loopback is None


def test_map_host_loopback_defaults_to_gateway():
    """The gateway address reaches the host's loopback unless told otherwise."""
    assert make([]).ip4.map_host_loopback == A("192.0.2.1")


def test_map_host_loopback_option():
    """--map-host-loopback picks another address for that family."""
    assert make(["--map-host-loopback", "192.0.2.2"]).ip4.map_host_loopback == A("192.0.2.2")


def test_vhost_user_required():
    """Without --vhost-user the configuration is refused."""
    with pytest.raises(ConfigError, match="--vhost-user"):
        build_config(cli.parse_args([]), lambda f, i: HOST4, lambda: RESOLV)


UNSUPPORTED_VALUES = {
    "--runas": ["--runas", "nobody"],
    "--repair-path": ["--repair-path", "/tmp/repair.sock"],
    "--migrate-exit": ["--migrate-exit"],
    "--dns-forward": ["--dns-forward", "192.0.2.3"],
    "--dns-host": ["--dns-host", "127.0.0.1"],
    "--map-guest-addr": ["--map-guest-addr", "192.0.2.4"],
    "--fqdn": ["--fqdn", "vm.example.test"],
    "--tcp-ports": ["-t", "22"],
    "--udp-ports": ["-u", "53"],
}


@pytest.mark.parametrize("option", UNSUPPORTED_OPTIONS or sorted(UNSUPPORTED_VALUES))
def test_unsupported_options_refused(option, monkeypatch):
    """An option of UNSUPPORTED_OPTIONS is refused with one clear line (with none left
    unsupported, the mechanism is tried on each option in turn)."""
    if not UNSUPPORTED_OPTIONS:
        monkeypatch.setattr(conf, "UNSUPPORTED_OPTIONS", (option,))
    message = error_of(UNSUPPORTED_VALUES[option])
    assert message.startswith("option ") and message.endswith("is not supported yet") and option in message


def test_unsupported_values_still_validated_first():
    """A malformed value of an unsupported option is reported as malformed."""
    assert "not supported" not in error_of(["--dns-forward", "x.y"])


def test_debug_implies_foreground():
    """-d runs in the foreground, as in passt."""
    cfg = make(["-d"])
    assert cfg.debug and cfg.foreground


def test_trace_implies_debug():
    """--trace turns on debug too."""
    cfg = make(["--trace"])
    assert cfg.trace and cfg.debug


def test_quiet_and_debug_conflict():
    """-q with -d is contradictory."""
    assert "-q/--quiet" in error_of(["-q", "-d"])


def test_paths_made_absolute(tmp_path, monkeypatch):
    """Relative -P/-l paths survive the daemon's chdir to /."""
    monkeypatch.chdir(tmp_path)
    cfg = make(["-P", "x.pid", "-l", "x.log"])
    assert (cfg.pid_file, cfg.log_file) == (str(tmp_path / "x.pid"), str(tmp_path / "x.log"))


def test_config_is_frozen():
    """Config cannot be changed after it is built."""
    cfg = make([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mtu = 1500  # type: ignore[misc]


def test_describe_lists_resolved_values():
    """describe() has one line each for address, gateway, MTU, DNS, search and forwards."""
    lines = make([]).describe()
    for expected in (
        "IPv4 address: 192.0.2.10/24",
        "IPv4 gateway: 192.0.2.1",
        "IPv6 address: 2001:db8::10/64",
        "MTU: 65520",
        "IPv4 DNS: 192.0.2.53",
        "DNS search: example.test",
        "TCP forwards: none",
    ):
        assert expected in lines


# ---- options of newer passt versions ----


def test_address_prefix_wins_over_netmask():
    """-a ADDR/PREFIX with -n: the prefix length from -a wins (as in passt), with a note."""
    cfg = make(["-a", "10.1.2.3/20", "-n", "255.255.255.0"])
    assert cfg.ip4.prefix_len == 20 and str(cfg.ip4.netmask) == "255.255.240.0"
    assert any("-n/--netmask ignored" in n for n in cfg.notes)


def test_netmask_still_applies_to_a_bare_address():
    """-a ADDR -n MASK: the netmask sets the prefix length, no note."""
    cfg = make(["-a", "10.1.2.3", "-n", "255.255.0.0"])
    assert cfg.ip4.prefix_len == 16 and not any("netmask" in n for n in cfg.notes)


def test_address_prefix_sets_the_netmask():
    """-a ADDR/PREFIX alone sets the netmask handed out by DHCP."""
    assert str(make(["-a", "10.1.2.3/26"]).ip4.netmask) == "255.255.255.192"


@pytest.mark.parametrize("argv", [["-e"], ["--stderr"], ["--chroot-fallback"]])
def test_accepted_options_that_change_nothing(argv):
    """-e/--stderr (deprecated in passt) and --chroot-fallback (passt-py never chroots) are
    accepted and leave the configuration as it is without them."""
    assert make(argv) == make([])


def test_dhcp_dns_and_search_positive_forms():
    """--dhcp-dns / --dhcp-search keep DNS servers and search list in DHCP/NDP (the
    default), and conflict with their --no- forms."""
    cfg = make(["--dhcp-dns", "--dhcp-search"])
    assert not cfg.no_dhcp_dns and not cfg.no_dhcp_search
    assert "--dhcp-dns" in error_of(["--dhcp-dns", "--no-dhcp-dns"])
    assert "--dhcp-search" in error_of(["--no-dhcp-search", "--dhcp-search"])


def test_outbound_addresses_per_family():
    """-o takes one address per family into that family's configuration."""
    cfg = make(["-o", "192.0.2.77", "-o", "2001:db8::77"])
    assert cfg.ip4.outbound == A("192.0.2.77") and cfg.ip6.outbound == A("2001:db8::77")
    assert "IPv4 outbound: 192.0.2.77" in cfg.describe()


def test_outbound_interfaces_per_family():
    """--outbound-if4 / --outbound-if6 name an existing interface for their family only."""
    cfg = make(["--outbound-if4", "lo"])
    assert cfg.ip4.outbound_if == "lo" and cfg.ip6.outbound_if is None
    cfg = make(["--outbound-if6", "lo"])
    assert cfg.ip6.outbound_if == "lo" and cfg.ip4.outbound_if is None


@pytest.mark.parametrize("argv, option", [
    (["--outbound-if4", "no-such-if0"], "--outbound-if4"),
    (["--outbound-if6", "a" * 16], "--outbound-if6"),
    (["-o", "not-an-address"], "-o/--outbound"),
    (["-o", "192.0.2.1", "-o", "192.0.2.2"], "-o/--outbound"),
    (["--stats", "0"], "--stats"),
    (["--stats", "soon"], "--stats"),
])
def test_new_option_values_checked(argv, option):
    """Bad values of the newer options are one error naming the option."""
    assert error_of(argv).startswith(option)


def test_freebind_migrate_no_linger_and_stats_reach_the_config():
    """--freebind, --migrate-no-linger and --stats DELAY are carried into the Config."""
    cfg = make(["--freebind", "--migrate-no-linger", "--stats", "30"])
    assert cfg.freebind and cfg.migrate_no_linger and cfg.stats_delay == 30
    assert make([]).stats_delay == 0 and not make([]).freebind
