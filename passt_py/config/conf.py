# SPDX-License-Identifier: MIT
"""The immutable, validated run-time configuration, built from the command line and the host.

Theory of operation: config.cli turns argv into strings; :func:`build_config` validates every
value (one ConfigError per problem, its message naming the option), then refuses options whose
feature does not exist yet (UNSUPPORTED_OPTIONS), then asks the host (config.netlink,
config.resolvconf) for whatever was not given: per family the outbound interface, its address
and prefix, the gateway, and the resolver's DNS servers and search list. A family the host cannot
route is disabled, as passt does.

Local mode: when no family finds any host interface to copy (an empty network namespace, where
only loopback exists) and -i was not given, passt-py starts anyway, as passt does, with a
link-local setup of its own: the guest gets 169.254.2.1/16 behind the router 169.254.2.2, and for
IPv6 no address at all (it keeps its own link-local one) behind the router fe80::1. Both routers
map to the host's loopback unless --no-map-gw / --map-host-loopback say otherwise, so the guest
still reaches local services. Values given on the command line are kept. An interface that is
named with -i, or found, but usable for no family stays an error.

The result is a frozen :class:`Config` with one :class:`Ip4Config` / :class:`Ip6Config` per enabled
family (None when disabled). Everything later in the program reads it and never changes it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence, TypeVar

from passt_py.config import cli
from passt_py.config.netlink import DiscoveryError, HostIface, discover
from passt_py.config.portspec import NO_FORWARDS, PortForwards, PortSpecError, parse_port_options
from passt_py.config.resolvconf import ResolvConf, read_resolv_conf

# Options accepted by the parser whose feature is not implemented yet: giving one is an error.
# Shrink this as features land; values are still validated before the refusal.
UNSUPPORTED_OPTIONS: tuple[str, ...] = ()

DEFAULT_MTU = 65520  # 802.3 maximum minus its header, rounded to 32 bits, as passt uses
MTU_MIN = 68
MTU_MAX = 65520
IPV6_MIN_MTU = 1280
DEFAULT_MAC = "9a:55:9a:55:9a:55"
DEFAULT_LOG_SIZE = 1 << 20
LOG_SIZE_MIN = 4096
MAX_FLOWS_MAX = 1 << 20
SOCKET_PATH_TEMPLATE = "/tmp/passt_{}.socket"
SOCKET_PATH_PROBES = 64
SUN_PATH_MAX = 107
HOSTNAME_MAX = 253
IFNAMSIZ = 16  # interface names are shorter than this, with their NUL
STATS_DELAY_MAX = 86400
# Local mode (no host interface to copy): passt's link-local addressing for the guest.
LOCAL_ADDR4 = ipaddress.IPv4Address("169.254.2.1")
LOCAL_GW4 = ipaddress.IPv4Address("169.254.2.2")
LOCAL_PREFIX4 = 16
LOCAL_ADDR6 = ipaddress.IPv6Address("::")  # none: the guest keeps only its own link-local one
LOCAL_GW6 = ipaddress.IPv6Address("fe80::1")
LOCAL_PREFIX6 = 64
LOCAL_MODE_NOTE = "no external interface as template, switch to local mode"

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
IpAddress = IPv4 | IPv6
T = TypeVar("T")


class ConfigError(Exception):
    """Invalid or unusable configuration; the message is one line, naming the option at fault."""


@dataclass(frozen=True)
class Ip4Config:
    """IPv4 as the guest sees it, plus the host-side facts it was derived from."""

    addr: IPv4  # the guest's address (by default the host's own)
    prefix_len: int
    gw: IPv4  # the guest's default gateway (by default the host's)
    ifname: str | None = None  # host interface the values came from
    host_addr: IPv4 | None = None  # the host's own address on that interface
    host_mtu: int | None = None
    dns: tuple[IPv4, ...] = ()  # servers advertised to the guest
    dns_match: IPv4 | None = None  # guest-side DNS address whose queries go to dns_host
    dns_host: IPv4 | None = None  # host-side server for those queries (a host loopback resolver)
    map_host_loopback: IPv4 | None = None  # guest address that reaches the host's loopback
    map_guest_addr: IPv4 | None = None
    outbound: IPv4 | None = None  # bind address for outbound sockets
    outbound_if: str | None = None  # SO_BINDTODEVICE for outbound sockets (--outbound-if4)

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The guest's on-link network."""
        return ipaddress.IPv4Network((self.addr, self.prefix_len), strict=False)

    @property
    def netmask(self) -> IPv4:
        """The guest's netmask, for DHCP."""
        return self.network.netmask


@dataclass(frozen=True)
class Ip6Config:
    """IPv6 as the guest sees it, plus the host-side facts it was derived from."""

    addr: IPv6  # unspecified (::) in local mode: the guest is given no global address
    prefix_len: int
    gw: IPv6  # may be link-local, as on most hosts
    ifname: str | None = None
    host_addr: IPv6 | None = None
    host_mtu: int | None = None
    addr_ll: IPv6 | None = None  # the host's link-local address on that interface
    dns: tuple[IPv6, ...] = ()
    dns_match: IPv6 | None = None
    dns_host: IPv6 | None = None
    map_host_loopback: IPv6 | None = None
    map_guest_addr: IPv6 | None = None
    outbound: IPv6 | None = None
    outbound_if: str | None = None  # --outbound-if6

    @property
    def network(self) -> ipaddress.IPv6Network:
        """The guest's on-link prefix, for router advertisements."""
        return ipaddress.IPv6Network((self.addr, self.prefix_len), strict=False)


@dataclass(frozen=True)
class Config:
    """Everything the back-end needs to run; built only by build_config, never mutated."""

    vhost_user: bool = True
    socket_path: str | None = None  # None: the service probes socket_path_candidates()
    fd: int | None = None  # an already connected vhost-user socket (-F)
    one_off: bool = False
    foreground: bool = False
    debug: bool = False
    trace: bool = False
    quiet: bool = False
    log_file: str | None = None
    log_size: int = DEFAULT_LOG_SIZE
    pid_file: str | None = None
    pcap_file: str | None = None
    check_config: bool = False
    mtu: int = DEFAULT_MTU  # 0: do not advertise an MTU
    mac: bytes = bytes.fromhex(DEFAULT_MAC.replace(":", ""))  # our MAC towards the guest
    ip4: Ip4Config | None = None
    ip6: Ip6Config | None = None
    search: tuple[str, ...] = ()
    hostname: str | None = None
    fqdn: str | None = None
    no_dhcp_dns: bool = False
    no_dhcp_search: bool = False
    no_tcp: bool = False
    no_udp: bool = False
    no_icmp: bool = False
    no_dhcp: bool = False
    no_ndp: bool = False
    no_dhcpv6: bool = False
    no_ra: bool = False
    tcp_forwards: PortForwards = NO_FORWARDS
    udp_forwards: PortForwards = NO_FORWARDS
    max_flows: int = cli.DEFAULT_MAX_FLOWS
    runas: str | None = None
    repair_path: str | None = None
    migrate_exit: bool = False
    migrate_no_linger: bool = False  # close migrated TCP sockets at once (still in repair mode)
    freebind: bool = False  # IP_FREEBIND / IPV6_FREEBIND on the -t/-u listening sockets
    stats_delay: int = 0  # --stats: seconds between statistics lines, 0 for none
    local_mode: bool = False  # no host interface to copy: link-local addressing of our own
    # Things resolution noticed (e.g. a family disabled): main logs them once logging is set up.
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def mac_str(self) -> str:
        """Our MAC in the usual colon form."""
        return format_mac(self.mac)

    def describe(self) -> list[str]:
        """One line per item, for the --debug dump and --check-config."""
        if self.socket_path is not None:
            where = self.socket_path
        elif self.fd is not None:
            where = f"fd {self.fd}"
        else:
            where = "first free " + SOCKET_PATH_TEMPLATE.format("N")
        lines = [
            f"vhost-user socket: {where}",
            f"MTU: {self.mtu if self.mtu else 'not advertised'}",
            f"MAC: {self.mac_str}",
        ]
        if self.local_mode:
            lines.append("mode: local (no host interface as template)")
        for name, ip in (("IPv4", self.ip4), ("IPv6", self.ip6)):
            if ip is None:
                lines.append(f"{name}: disabled")
                continue
            host_mtu = f" (MTU {ip.host_mtu})" if ip.host_mtu else ""
            lines.append(f"{name} interface: {ip.ifname or '(none)'}{host_mtu}")
            if ip.addr.is_unspecified:
                lines.append(f"{name} address: none (the guest's own link-local)")
            else:
                lines.append(f"{name} address: {ip.addr}/{ip.prefix_len}")
            lines.append(f"{name} gateway: {ip.gw}")
            if isinstance(ip, Ip6Config) and ip.addr_ll is not None:
                lines.append(f"{name} host link-local: {ip.addr_ll}")
            lines.append(f"{name} DNS: {' '.join(map(str, ip.dns)) or 'none'}")
            if ip.dns_match is not None:
                lines.append(f"{name} DNS forward: {ip.dns_match} -> host {ip.dns_host}")
            lines.append(f"{name} host loopback mapped from: {ip.map_host_loopback or 'none'}")
            if ip.outbound is not None or ip.outbound_if is not None:
                dev = f" dev {ip.outbound_if}" if ip.outbound_if else ""
                lines.append(f"{name} outbound: {ip.outbound or 'any address'}{dev}")
        lines.append(f"DNS search: {' '.join(self.search) or 'none'}")
        if self.hostname:
            lines.append(f"hostname: {self.hostname}")
        lines.append(f"TCP forwards: {self.tcp_forwards.describe()}")
        lines.append(f"UDP forwards: {self.udp_forwards.describe()}")
        off = [n for n in ("tcp", "udp", "icmp", "dhcp", "ndp", "dhcpv6", "ra") if getattr(self, "no_" + n)]
        lines.append(f"disabled: {' '.join(off) or 'nothing'}")
        lines.append(f"max flows: {self.max_flows}")
        extras = [name for name, on in (("freebind", self.freebind),
                                        ("migrate-exit", self.migrate_exit),
                                        ("migrate-no-linger", self.migrate_no_linger)) if on]
        if self.stats_delay:
            extras.append(f"stats every {self.stats_delay} s")
        if extras:
            lines.append(f"options: {' '.join(extras)}")
        return lines


def socket_path_candidates() -> Iterator[str]:
    """Default socket paths to probe, in order, when -s is not given (as passt does)."""
    for i in range(1, SOCKET_PATH_PROBES + 1):
        yield SOCKET_PATH_TEMPLATE.format(i)


# ---------------------------------------------------------------------------------------------
# Value parsers: each raises ValueError with a short reason; _opt() adds the option name.


def format_mac(mac: bytes) -> str:
    """``9a:55:...`` form of a 6-byte MAC."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """A unicast, non-zero MAC address in ``xx:xx:xx:xx:xx:xx`` form."""
    if not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", text):
        raise ValueError(f"invalid MAC address '{text}'")
    mac = bytes.fromhex(text.replace(":", ""))
    if mac[0] & 1:
        raise ValueError(f"MAC address '{text}' is multicast")
    if mac == bytes(6):
        raise ValueError("MAC address is all zeroes")
    return mac


def parse_int(text: str, low: int, high: int, what: str) -> int:
    """Decimal integer within low..high."""
    if not re.fullmatch(r"\d+", text.strip()):
        raise ValueError(f"invalid {what} '{text}'")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} {value} out of range {low}-{high}")
    return value


def parse_mtu(text: str) -> int:
    """0 (do not advertise) or 68..65520."""
    value = parse_int(text, 0, MTU_MAX, "MTU")
    if value and value < MTU_MIN:
        raise ValueError(f"MTU {value} out of range {MTU_MIN}-{MTU_MAX}")
    return value


def _check_unicast(addr: IpAddress, text: str, allow_link_local: bool) -> IpAddress:
    """Reject addresses a guest or gateway cannot have."""
    bad = addr.is_unspecified or addr.is_multicast or addr.is_loopback
    if isinstance(addr, IPv4):
        bad = bad or addr == IPv4("255.255.255.255")
    elif not allow_link_local:
        bad = bad or addr.is_link_local
    if bad:
        raise ValueError(f"unusable address '{text}'")
    return addr


def parse_address(text: str) -> tuple[IpAddress, int | None]:
    """A guest address, optionally with ``/prefix``."""
    addr_text, sep, plen_text = text.partition("/")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ValueError(f"invalid address '{text}'") from None
    _check_unicast(addr, text, allow_link_local=False)
    plen = None
    if sep:
        plen = parse_int(plen_text, 1, addr.max_prefixlen, "prefix length")
    return addr, plen


def parse_netmask(text: str) -> int:
    """IPv4 netmask, dotted (contiguous) or as prefix length -> prefix length."""
    if re.fullmatch(r"\d+", text):
        return parse_int(text, 1, 32, "prefix length")
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        raise ValueError(f"invalid netmask '{text}'") from None


def parse_plain_address(text: str, allow_link_local: bool = True) -> IpAddress:
    """One unicast IPv4 or IPv6 address."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid address '{text}'") from None
    return _check_unicast(addr, text, allow_link_local)


def parse_ifname(text: str) -> str:
    """A network interface name that exists on this host (checked now, as a typo would
    otherwise only show as failing connections)."""
    if not 0 < len(text.encode()) < IFNAMSIZ or "/" in text or any(c.isspace() for c in text):
        raise ValueError(f"invalid interface name '{text}'")
    try:
        socket.if_nametoindex(text)
    except OSError:
        raise ValueError(f"no interface '{text}' on this host") from None
    return text


def parse_any_address(text: str) -> IpAddress:
    """An IPv4 or IPv6 address, loopback allowed (DNS servers may live there)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid address '{text}'") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"unusable address '{text}'")
    return addr


def parse_domain(text: str, what: str = "domain name") -> str:
    """A DNS name: dot-separated labels of letters, digits, '-' and '_', up to 253 bytes."""
    name = text.rstrip(".")
    labels = name.split(".")
    ok = 0 < len(name) <= HOSTNAME_MAX and all(
        0 < len(label) <= 63 and re.fullmatch(r"[A-Za-z0-9_-]+", label) for label in labels
    )
    if not ok:
        raise ValueError(f"invalid {what} '{text}'")
    return name


def parse_path(text: str) -> str:
    """Non-empty path made absolute, since daemonising changes directory to /."""
    if not text or "\0" in text:
        raise ValueError("invalid path")
    return os.path.abspath(text)


def parse_socket_path(text: str) -> str:
    """Absolute UNIX socket path that fits sun_path."""
    path = parse_path(text)
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ValueError(f"socket path longer than {SUN_PATH_MAX} bytes")
    return path


def parse_fd(text: str) -> int:
    """An open socket file descriptor."""
    fd = parse_int(text, 0, (1 << 31) - 1, "file descriptor")
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ValueError(f"file descriptor {fd} is not open") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"file descriptor {fd} is not a socket")
    return fd


def parse_runas(text: str) -> str:
    """``USER[:GROUP]`` by name or number (checked for syntax only)."""
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?", text):
        raise ValueError(f"invalid user[:group] '{text}'")
    return text


def _opt(option: str, parse: Callable[[str], T], text: str) -> T:
    """Apply ``parse`` and turn its ValueError into a ConfigError naming ``option``."""
    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(f"{option}: {e}") from None


def _per_family(
    option: str, values: Sequence[str], parse: Callable[[str], IpAddress]
) -> tuple[IPv4 | None, IPv6 | None]:
    """At most one IPv4 and one IPv6 address from a repeatable option."""
    v4: IPv4 | None = None
    v6: IPv6 | None = None
    for text in values:
        addr = _opt(option, parse, text)
        if isinstance(addr, IPv4):
            if v4 is not None:
                raise ConfigError(f"{option}: more than one IPv4 address given")
            v4 = addr
        else:
            if v6 is not None:
                raise ConfigError(f"{option}: more than one IPv6 address given")
            v6 = addr
    return v4, v6


def _classful_prefix(addr: IPv4) -> int:
    """Prefix length implied by the address class, passt's default when -a comes without -n."""
    first = int(addr) >> 24
    if first < 128:
        return 8
    if first < 192:
        return 16
    if first < 224:
        return 24
    return 32


# ---------------------------------------------------------------------------------------------
# Building the Config.


@dataclass
class _Family:
    """Per-family values from the command line, before host discovery fills the gaps."""

    addr: IpAddress | None = None
    prefix_len: int | None = None
    gw: IpAddress | None = None
    map_host_loopback: IpAddress | None = None
    map_none: bool = False
    map_guest: IpAddress | None = None
    outbound: IpAddress | None = None
    outbound_if: str | None = None
    dns_forward: IpAddress | None = None
    dns_host: IpAddress | None = None
    netmask_ignored: bool = False  # -n given, but -a carried a prefix length, which wins


def _given(args: argparse.Namespace, dest: str) -> bool:
    """Whether the option stored in ``dest`` appeared on the command line."""
    value = getattr(args, dest)
    return bool(value) if isinstance(value, (bool, list)) else value is not None


def _spellings(option: str) -> str:
    """All spellings of an option, e.g. ``-t/--tcp-ports``."""
    dests = cli.option_dests()
    dest = dests.get(option)
    names = sorted((n for n, d in dests.items() if d == dest), key=lambda n: (n.startswith("--"), n))
    return "/".join(names) or option


def _reject_unsupported(args: argparse.Namespace) -> None:
    """Refuse the first option of UNSUPPORTED_OPTIONS that was given."""
    for option in UNSUPPORTED_OPTIONS:
        dest = cli.option_dests().get(option)
        if dest is not None and _given(args, dest):
            raise ConfigError(f"option {_spellings(option)} is not supported yet")


def _parse_families(args: argparse.Namespace) -> tuple[_Family, _Family]:
    """Addresses from -a, -n, -g, --map-*, -o, --dns-* split by family."""
    f4, f6 = _Family(), _Family()
    for text in args.address:
        addr, plen = _opt("-a/--address", parse_address, text)
        fam = f4 if isinstance(addr, IPv4) else f6
        if fam.addr is not None:
            raise ConfigError(f"-a/--address: more than one IPv{addr.version} address given")
        fam.addr, fam.prefix_len = addr, plen
    if args.netmask is not None:
        plen = _opt("-n/--netmask", parse_netmask, args.netmask)
        if f4.prefix_len is None:
            f4.prefix_len = plen
        else:                       # as in passt, ADDR/PREFIX wins over -n
            f4.netmask_ignored = plen != f4.prefix_len
    f4.gw, f6.gw = _per_family("-g/--gateway", args.gateway, parse_plain_address)
    if args.no_map_gw and args.map_host_loopback:
        raise ConfigError("--no-map-gw: conflicts with --map-host-loopback")
    if args.no_map_gw:
        f4.map_none = f6.map_none = True
    map_values = [v for v in args.map_host_loopback if v != "none"]
    if len(map_values) != len(args.map_host_loopback):
        if map_values:
            raise ConfigError("--map-host-loopback: 'none' cannot be combined with addresses")
        f4.map_none = f6.map_none = True
    f4.map_host_loopback, f6.map_host_loopback = _per_family(
        "--map-host-loopback", map_values, parse_plain_address
    )
    f4.map_guest, f6.map_guest = _per_family("--map-guest-addr", args.map_guest_addr, parse_plain_address)
    f4.outbound, f6.outbound = _per_family("-o/--outbound", args.outbound, parse_plain_address)
    f4.outbound_if = _parsed(args, "--outbound-if4", parse_ifname)
    f6.outbound_if = _parsed(args, "--outbound-if6", parse_ifname)
    f4.dns_forward, f6.dns_forward = _per_family("--dns-forward", args.dns_forward, parse_plain_address)
    f4.dns_host, f6.dns_host = _per_family("--dns-host", args.dns_host, parse_any_address)
    return f4, f6


def _parse_dns(args: argparse.Namespace) -> tuple[IpAddress, ...] | None:
    """Servers from -D; None when -D was not given (use resolv.conf), () for 'none'."""
    if not args.dns:
        return None
    if "none" in args.dns:
        if len(args.dns) > 1:
            raise ConfigError("-D/--dns: 'none' cannot be combined with addresses")
        return ()
    servers: list[IpAddress] = []
    for text in args.dns:
        addr = _opt("-D/--dns", parse_any_address, text)
        if addr not in servers:
            servers.append(addr)
    return tuple(servers)


def _parse_search(args: argparse.Namespace) -> tuple[str, ...] | None:
    """Domains from -S (space-separated, repeatable); None when not given, () for 'none'."""
    if not args.search:
        return None
    words = [w for text in args.search for w in text.split()]
    if "none" in words:
        if len(words) > 1:
            raise ConfigError("-S/--search: 'none' cannot be combined with domains")
        return ()
    if not words:
        raise ConfigError("-S/--search: empty search list")
    return tuple(_opt("-S/--search", parse_domain, w) for w in words)


def _ports(option: str, specs: Sequence[str]) -> PortForwards:
    """Parsed -t/-u specs, errors naming the option."""
    try:
        return parse_port_options(specs)
    except PortSpecError as e:
        raise ConfigError(f"{option}: {e}") from None


def _guest_dns(
    servers: Sequence[IpAddress], version: int, map_addr: IpAddress | None, notes: list[str]
) -> tuple[tuple[IpAddress, ...], IpAddress | None, IpAddress | None]:
    """(advertised, dns_match, dns_host) for one family.

    A loopback resolver on the host (systemd-resolved, dnsmasq) means nothing to the guest: like
    passt, advertise the address mapped to the host's loopback instead and remember where its
    queries must go. Without such a mapping the server is dropped.
    """
    advertised: list[IpAddress] = []
    match = host = None
    for addr in servers:
        if addr.version != version:
            continue
        if addr.is_loopback:
            if map_addr is None:
                notes.append(f"DNS server {addr} is on host loopback and loopback is not mapped: skipped")
                continue
            if match is not None:
                continue
            match, host = map_addr, addr
            addr = map_addr
        if addr not in advertised:
            advertised.append(addr)
    return tuple(advertised), match, host


def _resolve_family(
    version: int,
    fam: _Family,
    host: HostIface | None,
    dns: Sequence[IpAddress],
    notes: list[str],
) -> Ip4Config | Ip6Config | None:
    """Merge command-line values with the host's for one family; None when unusable."""
    name = f"IPv{version}"
    addr = fam.addr if fam.addr is not None else (host.addr if host else None)
    gw = fam.gw if fam.gw is not None else (host.gateway if host else None)
    if addr is None or gw is None:
        why = "no address" if addr is None else "no default gateway"
        where = f" on {host.ifname}" if host else " (no default route)"
        notes.append(f"{name} disabled: {why}{where}")
        return None
    if fam.prefix_len is not None:
        prefix_len = fam.prefix_len
    elif fam.addr is None and host is not None:
        prefix_len = host.prefix_len
    else:
        prefix_len = _classful_prefix(addr) if isinstance(addr, IPv4) else 64
    if fam.map_none:
        map_addr = None
    else:
        map_addr = fam.map_host_loopback if fam.map_host_loopback is not None else gw
    advertised, match, dns_host = _guest_dns(dns, version, map_addr, notes)
    common = dict(
        addr=addr,
        prefix_len=prefix_len,
        gw=gw,
        ifname=host.ifname if host else None,
        host_addr=host.addr if host else None,
        host_mtu=host.mtu if host else None,
        dns=advertised,
        dns_match=fam.dns_forward if fam.dns_forward is not None else match,
        dns_host=fam.dns_host if fam.dns_host is not None else dns_host,
        map_host_loopback=map_addr,
        map_guest_addr=fam.map_guest,
        outbound=fam.outbound,
        outbound_if=fam.outbound_if,
    )
    if version == 4:
        return Ip4Config(**common)  # type: ignore[arg-type]
    return Ip6Config(addr_ll=host.addr_ll if host else None, **common)  # type: ignore[arg-type]


def _check_family_options(args: argparse.Namespace, f4: _Family, f6: _Family) -> tuple[bool, bool]:
    """Which families may be used, after -4/-6; addresses of an excluded family are errors."""
    if args.ipv4_only and args.ipv6_only:
        raise ConfigError("-4/--ipv4-only: conflicts with -6/--ipv6-only")
    use4, use6 = not args.ipv6_only, not args.ipv4_only
    for use, fam, flag in ((use4, f4, "-6/--ipv6-only"), (use6, f6, "-4/--ipv4-only")):
        if not use and (fam.addr is not None or fam.gw is not None):
            raise ConfigError(f"{flag}: conflicts with an address of the other family")
    return use4, use6


@dataclass(frozen=True)
class _Values:
    """Every command-line value, parsed and checked on its own, before host discovery."""

    mtu: int
    mac: bytes
    log_size: int
    max_flows: int
    log_file: str | None
    pid_file: str | None
    pcap_file: str | None
    repair_path: str | None
    socket_path: str | None
    fd: int | None
    hostname: str | None
    fqdn: str | None
    runas: str | None
    stats_delay: int
    f4: _Family
    f6: _Family
    use4: bool
    use6: bool
    dns: tuple[IpAddress, ...] | None
    search: tuple[str, ...] | None
    tcp: PortForwards
    udp: PortForwards


def _check_modes(args: argparse.Namespace) -> None:
    """Refuse the mode and logging combinations that cannot work together."""
    if not args.vhost_user:
        raise ConfigError("--vhost-user is required: only vhost-user mode is supported")
    if args.quiet and (args.debug or args.trace):
        raise ConfigError("-q/--quiet: conflicts with -d/--debug and --trace")
    if args.fd is not None and args.socket_path is not None:
        raise ConfigError("-F/--fd: conflicts with -s/--socket")
    if args.dhcp_dns and args.no_dhcp_dns:
        raise ConfigError("--dhcp-dns: conflicts with --no-dhcp-dns")
    if args.dhcp_search and args.no_dhcp_search:
        raise ConfigError("--dhcp-search: conflicts with --no-dhcp-search")


def _parsed(args: argparse.Namespace, option: str, parse: Callable[[str], T]) -> T | None:
    """The parsed value of ``option`` (spelled "-x/--long"), or None when it was not given."""
    text = getattr(args, cli.option_dests()[option.split("/")[-1]])
    return None if text is None else _opt(option, parse, text)


def _parsed_or(args: argparse.Namespace, option: str, parse: Callable[[str], T], default: T) -> T:
    """The parsed value of ``option``, or ``default``."""
    parsed = _parsed(args, option, parse)
    return default if parsed is None else parsed


def _parse_values(args: argparse.Namespace) -> _Values:
    """Parse every value, in the order their errors are reported (the first one wins)."""
    mtu = _parsed_or(args, "-m/--mtu", parse_mtu, DEFAULT_MTU)
    mac = _parsed_or(args, "-M/--mac-addr", parse_mac, parse_mac(DEFAULT_MAC))
    log_size = _parsed_or(args, "--log-size", lambda t: parse_int(t, LOG_SIZE_MIN, 1 << 40, "log size"),
                          DEFAULT_LOG_SIZE)
    max_flows = _parsed_or(args, "--max-flows", lambda t: parse_int(t, 1, MAX_FLOWS_MAX, "flow count"),
                           cli.DEFAULT_MAX_FLOWS)
    log_file = _parsed(args, "-l/--log-file", parse_path)
    pid_file = _parsed(args, "-P/--pid", parse_path)
    pcap_file = _parsed(args, "-p/--pcap", parse_path)
    repair_path = _parsed(args, "--repair-path", parse_path)
    socket_path = _parsed(args, "-s/--socket", parse_socket_path)
    fd = _parsed(args, "-F/--fd", parse_fd)
    hostname = _parsed(args, "-H/--hostname", lambda t: parse_domain(t, "hostname"))
    fqdn = _parsed(args, "--fqdn", lambda t: parse_domain(t, "FQDN"))
    runas = _parsed(args, "--runas", parse_runas)
    stats_delay = _parsed_or(args, "--stats", lambda t: parse_int(t, 1, STATS_DELAY_MAX, "delay"), 0)
    f4, f6 = _parse_families(args)
    use4, use6 = _check_family_options(args, f4, f6)
    dns = _parse_dns(args)
    search = _parse_search(args)
    tcp = _ports("-t/--tcp-ports", args.tcp_ports)
    udp = _ports("-u/--udp-ports", args.udp_ports)
    if use6 and 0 < mtu < IPV6_MIN_MTU:
        raise ConfigError(f"-m/--mtu: {mtu} is below the IPv6 minimum {IPV6_MIN_MTU} (add -4 to turn IPv6 off)")
    return _Values(mtu=mtu, mac=mac, log_size=log_size, max_flows=max_flows, log_file=log_file,
                   pid_file=pid_file, pcap_file=pcap_file, repair_path=repair_path,
                   socket_path=socket_path, fd=fd, hostname=hostname, fqdn=fqdn, runas=runas,
                   stats_delay=stats_delay,
                   f4=f4, f6=f6, use4=use4, use6=use6, dns=dns, search=search, tcp=tcp, udp=udp)


def _local_family(version: int, fam: _Family) -> _Family:
    """``fam`` with what the command line left open filled in with local mode's addressing."""
    addr, plen, gw = ((LOCAL_ADDR4, LOCAL_PREFIX4, LOCAL_GW4) if version == 4
                      else (LOCAL_ADDR6, LOCAL_PREFIX6, LOCAL_GW6))
    if fam.addr is None:
        fam = replace(fam, addr=addr, prefix_len=fam.prefix_len or plen)
    return fam if fam.gw is not None else replace(fam, gw=gw)


def _local_mode(
    v: _Values, dns: Sequence[IpAddress], notes: list[str]
) -> tuple[Ip4Config | None, Ip6Config | None]:
    """(ip4, ip6) for local mode: every enabled family with passt's link-local addressing.

    The notes of the failed attempt (families "disabled") would only mislead: one note says
    what happened instead."""
    notes.clear()
    notes.append(LOCAL_MODE_NOTE)
    ip4 = _resolve_family(4, _local_family(4, v.f4), None, dns, notes) if v.use4 else None
    ip6 = _resolve_family(6, _local_family(6, v.f6), None, dns, notes) if v.use6 else None
    return ip4, ip6  # type: ignore[return-value]


def _from_host(
    args: argparse.Namespace,
    v: _Values,
    discover_host: Callable[[int, str | None], HostIface | None],
    resolv: Callable[[], ResolvConf],
    notes: list[str],
) -> tuple[Ip4Config | None, Ip6Config | None, tuple[str, ...], bool]:
    """(ip4, ip6, search, local): what the command line left open, filled from the host per
    family; a family the host cannot route is disabled (a note says why). When no family finds
    a host interface at all and no -i was given, local mode (``local`` True); an interface
    named or found but unusable for every family is an error."""
    resolved = resolv() if v.dns is None or v.search is None else ResolvConf()
    dns = v.dns if v.dns is not None else resolved.nameservers
    search = v.search if v.search is not None else resolved.search
    ip4 = ip6 = None
    hosts: list[HostIface] = []
    try:
        if v.use4:
            host4 = discover_host(socket.AF_INET, args.interface)
            hosts += [host4] if host4 is not None else []
            ip4 = _resolve_family(4, v.f4, host4, dns, notes)
        if v.use6:
            host6 = discover_host(socket.AF_INET6, args.interface)
            hosts += [host6] if host6 is not None else []
            ip6 = _resolve_family(6, v.f6, host6, dns, notes)
    except DiscoveryError as e:
        option = "-i/--interface: " if args.interface else ""
        raise ConfigError(f"{option}{e}") from None
    local = ip4 is None and ip6 is None
    if local and (args.interface or hosts):
        # An interface was named, or found but unusable: not the empty namespace local mode
        # is for, so say what is missing instead of guessing.
        only = " (IPv4 only)" if args.ipv4_only else " (IPv6 only)" if args.ipv6_only else ""
        where = f" on {args.interface}" if args.interface else ""
        raise ConfigError(f"no usable host interface{where}{only}: give -a and -g")
    if local:
        ip4, ip6 = _local_mode(v, dns, notes)
    return ip4, ip6, tuple(search), local  # type: ignore[return-value]


def _assemble(
    args: argparse.Namespace,
    v: _Values,
    ip4: Ip4Config | None,
    ip6: Ip6Config | None,
    search: tuple[str, ...],
    notes: list[str],
    local_mode: bool = False,
) -> Config:
    """The Config from checked values, the host's answers and the flags taken as they are."""
    debug = bool(args.debug or args.trace)
    return Config(
        vhost_user=True,
        socket_path=v.socket_path,
        fd=v.fd,
        one_off=args.one_off,
        foreground=bool(args.foreground or debug),
        debug=debug,
        trace=args.trace,
        quiet=args.quiet,
        log_file=v.log_file,
        log_size=v.log_size,
        pid_file=v.pid_file,
        pcap_file=v.pcap_file,
        check_config=args.check_config,
        mtu=v.mtu,
        mac=v.mac,
        ip4=ip4,
        ip6=ip6,
        search=search,
        hostname=v.hostname,
        fqdn=v.fqdn,
        no_dhcp_dns=args.no_dhcp_dns,
        no_dhcp_search=args.no_dhcp_search,
        no_tcp=args.no_tcp,
        no_udp=args.no_udp,
        no_icmp=args.no_icmp,
        no_dhcp=args.no_dhcp,
        no_ndp=args.no_ndp,
        no_dhcpv6=args.no_dhcpv6,
        no_ra=args.no_ra,
        tcp_forwards=v.tcp,
        udp_forwards=v.udp,
        max_flows=v.max_flows,
        runas=v.runas,
        repair_path=v.repair_path,
        migrate_exit=args.migrate_exit,
        migrate_no_linger=args.migrate_no_linger,
        freebind=args.freebind,
        stats_delay=v.stats_delay,
        local_mode=local_mode,
        notes=tuple(notes),
    )


def build_config(
    args: argparse.Namespace,
    discover_host: Callable[[int, str | None], HostIface | None] = discover,
    resolv: Callable[[], ResolvConf] = read_resolv_conf,
) -> Config:
    """Validate ``args`` (from cli.parse_args) and fill defaults from the host.

    ``discover_host`` and ``resolv`` are the host queries, replaceable so tests can describe a
    host without touching its network. Raises ConfigError with one line on any problem. The
    steps run in this order, which decides which error is reported: modes, every value,
    unsupported options, then the host.
    """
    _check_modes(args)
    values = _parse_values(args)
    _reject_unsupported(args)
    notes: list[str] = []
    if values.f4.netmask_ignored:
        notes.append("-n/--netmask ignored: the prefix length given with -a/--address wins")
    ip4, ip6, search, local = _from_host(args, values, discover_host, resolv, notes)
    return _assemble(args, values, ip4, ip6, search, notes, local)


def config_from_argv(argv: Sequence[str] | None = None) -> Config:
    """cli.parse_args + build_config, with parse errors as ConfigError too."""
    try:
        args = cli.parse_args(argv)
    except cli.ParseError as e:
        raise ConfigError(str(e)) from None
    return build_config(args)
