# SPDX-License-Identifier: MIT
"""Reading resolv.conf for the guest's DNS defaults."""

from __future__ import annotations

import ipaddress

from passt_py.config.resolvconf import parse_resolv_conf, read_resolv_conf

A = ipaddress.ip_address


def test_nameservers_in_order():
    """nameserver lines are kept in file order, both families."""
    rc = parse_resolv_conf("nameserver 192.0.2.1\nnameserver 2001:db8::1\n")
    assert rc.nameservers == (A("192.0.2.1"), A("2001:db8::1"))


def test_comments_and_garbage_skipped():
    """Comments and malformed lines do not produce servers."""
    rc = parse_resolv_conf("# nameserver 192.0.2.9\n; x\nnameserver bogus\nnameserver 192.0.2.1 # c\n")
    assert rc.nameservers == (A("192.0.2.1"),)


def test_zone_suffix_dropped():
    """An IPv6 zone index is removed from the address."""
    assert parse_resolv_conf("nameserver fe80::1%eth0\n").nameservers == (A("fe80::1"),)


def test_last_search_line_wins():
    """Like the libc resolver, the last search/domain line is the one used."""
    rc = parse_resolv_conf("search a.test b.test\ndomain c.test.\n")
    assert rc.search == ("c.test",)


def test_missing_file_is_empty(tmp_path):
    """A host without resolv.conf has no DNS defaults."""
    rc = read_resolv_conf(str(tmp_path / "none"))
    assert rc.nameservers == () and rc.search == ()
