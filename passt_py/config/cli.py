# SPDX-License-Identifier: MIT
"""Command-line parser with passt's option names.

This module only knows the syntax: which options exist, which take a value, which repeat. Values
stay strings here; config.conf turns them into a validated Config, so every semantic error is
reported in one place with one line. Parser errors also become one line (ParseError) rather than
argparse's usage-plus-message exit 2, because passt_py exits 1 on any configuration error.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn, Sequence

from passt_py import __version__

PROG = "passt-py"
DEFAULT_MAX_FLOWS = 131072


class ParseError(Exception):
    """The command line does not follow the syntax (unknown option, missing value...)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises instead of printing usage and exiting with status 2."""

    def error(self, message: str) -> NoReturn:
        raise ParseError(message)


# Long option name -> argparse dest, filled as options are declared, so conf.py can map the
# names in UNSUPPORTED_OPTIONS to parsed values without peeking into argparse internals.
OPTION_DESTS: dict[str, str] = {}


def _add(group: Any, *flags: str, **kwargs: Any) -> None:
    """Declare one option and remember its dest under every spelling."""
    action = group.add_argument(*flags, **kwargs)
    for flag in action.option_strings:
        OPTION_DESTS[flag] = action.dest


def build_parser() -> argparse.ArgumentParser:
    """The full passt-compatible parser."""
    OPTION_DESTS.clear()
    p = _Parser(
        prog=PROG,
        description="User-mode network back-end for QEMU guests over vhost-user (passt-compatible).",
        allow_abbrev=False,
    )
    _general(p.add_argument_group("general"))
    _addressing(p.add_argument_group("addressing"))
    _services(p.add_argument_group("services"))
    return p


def _general(g: Any) -> None:
    """Process, logging, socket and migration options."""
    _add(g, "-f", "--foreground", action="store_true", help="don't daemonise; log to stderr")
    _add(g, "-d", "--debug", action="store_true", help="debug messages; implies --foreground")
    _add(g, "--trace", action="store_true", help="per-packet messages too; implies --debug")
    _add(g, "-q", "--quiet", action="store_true", help="only warnings and errors")
    _add(g, "-e", "--stderr", action="store_true",
         help="log to stderr (deprecated in passt; stderr is the default in the foreground)")
    _add(g, "-l", "--log-file", metavar="PATH", help="log to PATH instead of syslog")
    _add(g, "--log-size", metavar="BYTES", help="cap for the log file (default 1 MiB)")
    _add(g, "-P", "--pid", metavar="PATH", dest="pid_file", help="write the PID to PATH")
    _add(g, "-p", "--pcap", metavar="PATH", help="capture guest traffic to PATH")
    _add(g, "-s", "--socket", "--socket-path", metavar="PATH", dest="socket_path",
         help="UNIX domain socket QEMU connects to")
    _add(g, "--vhost-user", action="store_true", help="speak vhost-user on the socket (required)")
    _add(g, "--print-capabilities", action="store_true",
         help="print the vhost-user backend capabilities as JSON and exit")
    _add(g, "-F", "--fd", metavar="FD", help="use this already connected socket instead")
    _add(g, "-1", "--one-off", action="store_true", help="quit when the front-end disconnects")
    _add(g, "--runas", metavar="UID[:GID]", help="run as this user and group")
    _add(g, "--repair-path", metavar="PATH", help="socket for the TCP_REPAIR helper")
    _add(g, "--migrate-exit", action="store_true", help="exit after a completed migration")
    _add(g, "--migrate-no-linger", action="store_true",
         help="close the migrated TCP sockets (quietly, in repair mode) as soon as the "
              "migration completes, instead of keeping them frozen")
    _add(g, "--chroot-fallback", action="store_true",
         help="accepted for passt's launchers; passt-py never chroots, so it changes nothing")
    _add(g, "--stats", metavar="DELAY",
         help="log event statistics every DELAY seconds")
    _add(g, "--max-flows", metavar="N", help=f"flow table size (default {DEFAULT_MAX_FLOWS})")
    _add(g, "--check-config", action="store_true",
         help="resolve and validate the configuration, print it and exit")
    _add(g, "--version", action="version", version=f"{PROG} {__version__}")


def _addressing(n: Any) -> None:
    """The guest's addresses and the host side's."""
    _add(n, "-m", "--mtu", metavar="MTU", help="MTU advertised to the guest (default 65520)")
    _add(n, "-a", "--address", metavar="ADDR[/PREFIX]", action="append", default=[],
         help="guest address, IPv4 and/or IPv6 (default: the host's); a /PREFIX sets the "
              "prefix length and overrides -n")
    _add(n, "-n", "--netmask", metavar="MASK", help="IPv4 netmask or prefix length")
    _add(n, "-M", "--mac-addr", metavar="MAC", help="our MAC address towards the guest")
    _add(n, "-g", "--gateway", metavar="ADDR", action="append", default=[],
         help="guest's default gateway, IPv4 and/or IPv6 (default: the host's)")
    _add(n, "-i", "--interface", metavar="IF", help="host interface to take addresses from")
    _add(n, "-o", "--outbound", metavar="ADDR", action="append", default=[],
         help="bind the host side of guest-initiated TCP, UDP and ping flows to ADDR "
              "(one per family)")
    _add(n, "--outbound-if4", metavar="IF",
         help="bind IPv4 guest-initiated flows' host sockets to interface IF")
    _add(n, "--outbound-if6", metavar="IF",
         help="bind IPv6 guest-initiated flows' host sockets to interface IF")
    _add(n, "--map-host-loopback", metavar="ADDR", action="append", default=[],
         help="guest address that reaches the host's loopback (default: the gateway)")
    _add(n, "--no-map-gw", action="store_true", help="same as --map-host-loopback none")
    _add(n, "--map-guest-addr", metavar="ADDR", action="append", default=[],
         help="host-side address that reaches the guest's address")
    _add(n, "-4", "--ipv4-only", action="store_true", help="IPv4 only")
    _add(n, "-6", "--ipv6-only", action="store_true", help="IPv6 only")


def _services(s: Any) -> None:
    """DNS, DHCP/NDP, protocols and port forwarding."""
    _add(s, "-D", "--dns", metavar="ADDR", action="append", default=[],
         help="DNS server for the guest, or 'none' (default: from /etc/resolv.conf)")
    _add(s, "-S", "--search", metavar="LIST", action="append", default=[],
         help="DNS search domains, or 'none' (default: from /etc/resolv.conf)")
    _add(s, "-H", "--hostname", metavar="NAME", help="hostname sent to the guest via DHCP")
    _add(s, "--fqdn", metavar="NAME", help="FQDN sent to the guest via DHCP/DHCPv6")
    _add(s, "--no-dhcp-dns", action="store_true", help="no DNS servers via DHCP/DHCPv6/NDP")
    _add(s, "--no-dhcp-search", action="store_true", help="no search list via DHCP/DHCPv6/NDP")
    _add(s, "--dhcp-dns", action="store_true",
         help="DNS servers via DHCP/DHCPv6/NDP (the default)")
    _add(s, "--dhcp-search", action="store_true",
         help="search list via DHCP/DHCPv6/NDP (the default)")
    _add(s, "--dns-forward", metavar="ADDR", action="append", default=[],
         help="guest address whose DNS queries go to --dns-host")
    _add(s, "--dns-host", metavar="ADDR", action="append", default=[],
         help="host-side target for --dns-forward queries")
    _add(s, "--no-tcp", action="store_true", help="disable TCP")
    _add(s, "--no-udp", action="store_true", help="disable UDP")
    _add(s, "--no-icmp", action="store_true", help="disable ICMP echo")
    _add(s, "--no-dhcp", action="store_true", help="disable the DHCP server")
    _add(s, "--no-ndp", action="store_true", help="disable NDP responses")
    _add(s, "--no-dhcpv6", action="store_true", help="disable the DHCPv6 server")
    _add(s, "--no-ra", action="store_true", help="disable router advertisements")
    _add(s, "-t", "--tcp-ports", metavar="SPEC", action="append", default=[],
         help="TCP ports to forward to the guest (see passt(1) for SPEC)")
    _add(s, "-u", "--udp-ports", metavar="SPEC", action="append", default=[],
         help="UDP ports to forward to the guest (see passt(1) for SPEC)")
    _add(s, "--freebind", action="store_true",
         help="-t/-u listening sockets may bind addresses not (yet) on the host")


def option_dests() -> dict[str, str]:
    """OPTION_DESTS, declaring the options first if no parser was built yet."""
    if not OPTION_DESTS:
        build_parser()
    return OPTION_DESTS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default sys.argv[1:]); raises ParseError with one line on bad syntax."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise ParseError(f"unrecognised argument '{extra[0]}'")
    return args
