# SPDX-License-Identifier: MIT
"""The -t/-u port-spec grammar: what each form forwards and what it must reject."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passt_py.config.portspec import (DEFAULT_EPHEMERAL, Forward, PortSpecError, parse_port_options,
                                      read_ephemeral_range)

EPH = (32768, 60999)


def ranges(pf):
    """(first, last, target_first) of every forward, for compact assertions."""
    return [(f.first, f.last, f.target_first) for f in pf.forwards]


def ports(pf):
    """Every forwarded host port."""
    return {p for f in pf.forwards for p in range(f.first, f.last + 1)}


def test_single_port():
    """A bare port forwards to the same guest port on any address."""
    pf = parse_port_options(["22"], EPH)
    assert pf.forwards == (Forward(None, None, 22, 22, 22),)


def test_range():
    """FIRST-LAST forwards the whole range to the same ports."""
    assert ranges(parse_port_options(["22-80"], EPH)) == [(22, 80, 22)]


def test_mapping_single():
    """PORT:TARGET sends host port PORT to guest port TARGET."""
    pf = parse_port_options(["80:8080"], EPH)
    assert pf.lookup(80).target(80) == 8080


def test_mapping_range_same_length():
    """A range maps onto a target range of the same length, port by port."""
    pf = parse_port_options(["1000-1010:2000-2010"], EPH)
    assert pf.lookup(1005).target(1005) == 2005


def test_comma_list():
    """A comma list forwards each item, sorted by port."""
    assert ranges(parse_port_options(["25,22"], EPH)) == [(22, 22, 22), (25, 25, 25)]


@pytest.mark.parametrize(
    "spec",
    ["0", "65536", "80-22", "1000-1010:2000-2005", "22-23:30", "abc", "22,", "", "~22:23", "22:0", "1-2:65535-65536"],
)
def test_invalid_specs_rejected(spec):
    """Port 0, >65535, reversed ranges, length mismatches and garbage are errors."""
    with pytest.raises(PortSpecError):
        parse_port_options([spec], EPH)


def test_ipv4_bind_address():
    """ADDR/PORTS binds the forward to that address."""
    (fwd,) = parse_port_options(["192.0.2.1/22"], EPH).forwards
    assert (fwd.bind_addr, fwd.ifname) == (ipaddress.ip_address("192.0.2.1"), None)


def test_ipv6_bind_address():
    """An IPv6 address works as bind prefix despite its colons."""
    (fwd,) = parse_port_options(["2001:db8::1/22"], EPH).forwards
    assert fwd.bind_addr == ipaddress.ip_address("2001:db8::1") and fwd.first == 22


def test_address_with_interface():
    """ADDR%IF/PORTS binds to the address on that interface."""
    (fwd,) = parse_port_options(["192.0.2.1%eth0/22"], EPH).forwards
    assert (str(fwd.bind_addr), fwd.ifname) == ("192.0.2.1", "eth0")


def test_interface_alone():
    """%IF/PORTS binds to any address on that interface."""
    (fwd,) = parse_port_options(["%eth0/22"], EPH).forwards
    assert (fwd.bind_addr, fwd.ifname) == (None, "eth0")


@pytest.mark.parametrize("spec", ["300.1.1.1/22", "/22", "%/22", "192.0.2.1%/22"])
def test_bad_bind_prefix_rejected(spec):
    """A malformed address or an empty interface before '/' is an error."""
    with pytest.raises(PortSpecError):
        parse_port_options([spec], EPH)


def test_exclusion_inside_list():
    """~PORT cuts a hole in the other items of the same spec."""
    assert ranges(parse_port_options(["1-1000,~22"], EPH)) == [(1, 21, 1), (23, 1000, 23)]


def test_exclusion_range_in_mapped_range_keeps_offsets():
    """Pieces left around an exclusion keep their original target offsets."""
    pf = parse_port_options(["100-110:200-210,~105"], EPH)
    assert ranges(pf) == [(100, 104, 200), (106, 110, 206)]


def test_exclusion_only_means_all_but_ephemeral():
    """A spec of only exclusions forwards every non-ephemeral port except those."""
    pf = parse_port_options(["~20000-20010"], EPH)
    got = ports(pf)
    assert 19999 in got and 20011 in got and 20005 not in got
    assert EPH[0] not in got and EPH[1] not in got and 65535 in got and 1 in got


def test_exclusions_recorded():
    """Excluded ports are reported by is_excluded()."""
    pf = parse_port_options(["2000-5000,~3000-3010"], EPH)
    assert pf.is_excluded(3005) and not pf.is_excluded(2999)


def test_all_skips_ephemeral_range():
    """'all' forwards every port outside the ephemeral range."""
    pf = parse_port_options(["all"], EPH)
    assert pf.mode == "all"
    assert ports(pf) == set(range(1, EPH[0])) | set(range(EPH[1] + 1, 65536))


def test_none():
    """'none' forwards nothing."""
    pf = parse_port_options(["none"], EPH)
    assert pf.mode == "none" and pf.forwards == ()


def test_no_option_forwards_nothing():
    """Without any -t, nothing is forwarded."""
    assert parse_port_options([], EPH).forwards == ()


@pytest.mark.parametrize("specs", [["all", "22"], ["none", "22"], ["all", "all"]])
def test_keyword_cannot_combine(specs):
    """'all' and 'none' must be the only spec for their option."""
    with pytest.raises(PortSpecError):
        parse_port_options(specs, EPH)


def test_overlap_across_specs_rejected():
    """Two specs claiming the same port are an error, whatever the bind address."""
    with pytest.raises(PortSpecError, match="overlapping"):
        parse_port_options(["192.0.2.1/20-30", "192.0.2.2/25"], EPH)


def test_overlap_within_spec_rejected():
    """Overlapping items inside one spec are an error."""
    with pytest.raises(PortSpecError, match="overlapping"):
        parse_port_options(["20-30,25"], EPH)


def test_adjacent_ranges_accepted():
    """Touching but disjoint ranges are fine."""
    assert ports(parse_port_options(["20-30", "31"], EPH)) == set(range(20, 32))


def test_ephemeral_range_fallback(tmp_path):
    """An unreadable sysctl falls back to Linux's default range."""
    assert read_ephemeral_range(str(tmp_path / "missing")) == DEFAULT_EPHEMERAL


def test_ephemeral_range_read(tmp_path):
    """The sysctl's two numbers are read as the ephemeral range."""
    path = tmp_path / "range"
    path.write_text("40000\t50000\n")
    assert read_ephemeral_range(str(path)) == (40000, 50000)


def test_describe_round_trip_form():
    """describe() shows mappings in the spec's own notation."""
    assert parse_port_options(["192.0.2.1/80:8080"], EPH).describe() == "192.0.2.1/80:8080"


port = st.integers(1, 65535)


@given(a=port, b=port, c=port, d=port)
def test_range_minus_exclusion_property(a, b, c, d):
    """'A-B,~C-D' forwards exactly the ports of A..B not in C..D."""
    a, b = min(a, b), max(a, b)
    c, d = min(c, d), max(c, d)
    expected = set(range(a, b + 1)) - set(range(c, d + 1))
    if not expected:
        return
    assert ports(parse_port_options([f"{a}-{b},~{c}-{d}"], EPH)) == expected
