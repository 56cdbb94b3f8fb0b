# SPDX-License-Identifier: MIT
"""Port forwarding specifications: the grammar of passt's -t/--tcp-ports and -u/--udp-ports.

Theory of operation: each occurrence of -t or -u carries one spec string. A spec is either a
keyword (``none``, ``all``) or an optional bind prefix followed by a comma list of port items::

    [ADDR][%IF]/ITEM[,ITEM...]      or      ITEM[,ITEM...]

An item is ``PORT``, ``FIRST-LAST``, either of them followed by ``:TARGET`` or
``:TFIRST-TLAST`` (same length), or an exclusion ``~PORT`` / ``~FIRST-LAST``. A spec made only of
exclusions means "every non-ephemeral port except these", as does ``all`` without exclusions.

All specs given for one option are combined by :func:`parse_port_options` into one immutable
:class:`PortForwards`, whose ``forwards`` are the concrete ranges to bind, exclusions already cut
out. A port may be claimed by at most one spec per option (passt keeps a single bitmap per protocol,
whatever the bind address), so overlaps are errors.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

PORT_MIN = 1
PORT_MAX = 65535
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
# Linux's default when the sysctl cannot be read.
DEFAULT_EPHEMERAL = (32768, 60999)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Mode = Literal["none", "all", "spec"]


class PortSpecError(ValueError):
    """A port spec that does not follow the grammar or conflicts with another one."""


@dataclass(frozen=True)
class Forward:
    """Host ports first..last (bound to bind_addr/ifname if given) map to target_first.. in the guest."""

    bind_addr: IpAddress | None
    ifname: str | None
    first: int
    last: int
    target_first: int

    def target(self, port: int) -> int:
        """Guest port for host ``port``, which must lie in first..last."""
        if not self.first <= port <= self.last:
            raise ValueError(f"port {port} outside {self.first}-{self.last}")
        return self.target_first + (port - self.first)

    def __str__(self) -> str:
        prefix = ""
        if self.bind_addr is not None or self.ifname is not None:
            addr = "" if self.bind_addr is None else str(self.bind_addr)
            iface = "" if self.ifname is None else f"%{self.ifname}"
            prefix = f"{addr}{iface}/"
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        if self.target_first != self.first:
            tlast = self.target_first + self.last - self.first
            tgt = str(self.target_first) if tlast == self.target_first else f"{self.target_first}-{tlast}"
            ports += f":{tgt}"
        return prefix + ports


@dataclass(frozen=True)
class PortForwards:
    """Everything one option (-t or -u) asks to forward; ``forwards`` never overlap."""

    mode: Mode
    forwards: tuple[Forward, ...] = ()
    excluded: tuple[tuple[int, int], ...] = ()

    def is_excluded(self, port: int) -> bool:
        """True when ``port`` was excluded with ``~``."""
        return any(first <= port <= last for first, last in self.excluded)

    def lookup(self, port: int) -> Forward | None:
        """The forward covering host ``port``, if any."""
        for fwd in self.forwards:
            if fwd.first <= port <= fwd.last:
                return fwd
        return None

    def port_count(self) -> int:
        """How many host ports are forwarded in total."""
        return sum(f.last - f.first + 1 for f in self.forwards)

    def describe(self) -> str:
        """Compact one-line form for the configuration dump."""
        if self.mode == "none" or not self.forwards:
            return "none"
        text = ",".join(str(f) for f in self.forwards)
        if self.mode == "all":
            text = f"all ({text})"
        return text


NO_FORWARDS = PortForwards(mode="none")


def read_ephemeral_range(path: str = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range; ``all`` must leave it alone so outbound sockets work."""
    try:
        with open(path, encoding="ascii") as f:
            first, last = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    if not PORT_MIN <= first <= last <= PORT_MAX:
        return DEFAULT_EPHEMERAL
    return first, last


def _parse_port(text: str) -> int:
    """One port number, 1..65535."""
    if not text.isdigit():
        raise PortSpecError(f"invalid port '{text}'")
    port = int(text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise PortSpecError(f"port {port} out of range {PORT_MIN}-{PORT_MAX}")
    return port


def _parse_range(text: str) -> tuple[int, int]:
    """``PORT`` or ``FIRST-LAST`` with FIRST <= LAST."""
    if "-" in text:
        a, _, b = text.partition("-")
        first, last = _parse_port(a), _parse_port(b)
        if first > last:
            raise PortSpecError(f"reversed port range '{text}'")
        return first, last
    port = _parse_port(text)
    return port, port


def _parse_bind(prefix: str) -> tuple[IpAddress | None, str | None]:
    """``ADDR``, ``ADDR%IF`` or ``%IF`` before the slash."""
    addr_text, sep, ifname = prefix.partition("%")
    if sep and not ifname:
        raise PortSpecError(f"empty interface name in '{prefix}'")
    if ifname and (len(ifname) > 15 or "/" in ifname or ifname.strip() != ifname):
        raise PortSpecError(f"invalid interface name '{ifname}'")
    addr: IpAddress | None = None
    if addr_text:
        text = addr_text[1:-1] if addr_text.startswith("[") and addr_text.endswith("]") else addr_text
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise PortSpecError(f"invalid bind address '{addr_text}'") from None
    elif not ifname:
        raise PortSpecError("empty bind address before '/'")
    return addr, ifname or None


def _subtract(first: int, last: int, holes: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Pieces of first..last left after removing the sorted ``holes``."""
    cur = first
    for h_first, h_last in holes:
        if h_last < cur or h_first > last:
            continue
        if h_first > cur:
            yield cur, h_first - 1
        cur = max(cur, h_last + 1)
        if cur > last:
            return
    if cur <= last:
        yield cur, last


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, coalesced copy of ``ranges``."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _parse_items(
    items: str, ephemeral: tuple[int, int]
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Comma list -> (included (first, last, target_first) pieces, exclusions)."""
    include: list[tuple[int, int, int]] = []
    exclude: list[tuple[int, int]] = []
    for item in items.split(","):
        if not item:
            raise PortSpecError("empty item in port list")
        if item.startswith("~"):
            if ":" in item:
                raise PortSpecError(f"exclusion '{item}' cannot have a target port")
            exclude.append(_parse_range(item[1:]))
            continue
        src, sep, dst = item.partition(":")
        first, last = _parse_range(src)
        target_first = first
        if sep:
            t_first, t_last = _parse_range(dst)
            if t_last - t_first != last - first:
                raise PortSpecError(f"target range in '{item}' differs in length from source range")
            target_first = t_first
        include.append((first, last, target_first))
    exclude = _merge(exclude)
    if not include:
        # Only exclusions: everything else that is not ephemeral.
        include = [(f, l, f) for f, l in _subtract(PORT_MIN, PORT_MAX, [ephemeral])]
    pieces: list[tuple[int, int, int]] = []
    for first, last, target_first in include:
        for p_first, p_last in _subtract(first, last, exclude):
            pieces.append((p_first, p_last, target_first + (p_first - first)))
    return pieces, exclude


def parse_port_spec(
    spec: str, ephemeral: tuple[int, int] = DEFAULT_EPHEMERAL
) -> tuple[tuple[Forward, ...], tuple[tuple[int, int], ...]]:
    """One non-keyword spec -> (forwards, exclusions); overlaps inside the spec are errors."""
    spec = spec.strip()
    if not spec:
        raise PortSpecError("empty port specifier")
    bind_addr: IpAddress | None = None
    ifname: str | None = None
    prefix, sep, items = spec.rpartition("/")
    if sep:
        bind_addr, ifname = _parse_bind(prefix)
    else:
        items = spec
    pieces, exclude = _parse_items(items, ephemeral)
    forwards = tuple(Forward(bind_addr, ifname, f, l, t) for f, l, t in pieces)
    _check_overlap(forwards)
    return forwards, tuple(exclude)


def _check_overlap(forwards: Iterable[Forward]) -> None:
    """Reject two forwards claiming the same host port."""
    ordered = sorted(forwards, key=lambda f: f.first)
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.first <= prev.last:
            raise PortSpecError(f"overlapping port ranges at port {cur.first}")


def parse_port_options(
    specs: Iterable[str], ephemeral: tuple[int, int] | None = None
) -> PortForwards:
    """All specs given for one option combined; raises PortSpecError on any conflict."""
    specs = list(specs)
    if not specs:
        return NO_FORWARDS
    if ephemeral is None:
        ephemeral = read_ephemeral_range()
    keywords = [s.strip() for s in specs if s.strip() in ("none", "all")]
    if keywords:
        if len(specs) > 1:
            raise PortSpecError(f"'{keywords[0]}' cannot be combined with other port specifiers")
        if keywords[0] == "none":
            return NO_FORWARDS
        pieces = _subtract(PORT_MIN, PORT_MAX, [ephemeral])
        return PortForwards(mode="all", forwards=tuple(Forward(None, None, f, l, f) for f, l in pieces))
    forwards: list[Forward] = []
    excluded: list[tuple[int, int]] = []
    for spec in specs:
        fwds, excl = parse_port_spec(spec, ephemeral)
        forwards.extend(fwds)
        excluded.extend(excl)
    _check_overlap(forwards)
    return PortForwards(
        mode="spec",
        forwards=tuple(sorted(forwards, key=lambda f: f.first)),
        excluded=tuple(_merge(excluded)),
    )
