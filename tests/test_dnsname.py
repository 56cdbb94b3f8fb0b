# SPDX-License-Identifier: MIT
"""Domain names in DNS wire format, plain and compressed, for DHCP and DHCPv6 options."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dns import dns_get_str

from passt_py.link import dnsname
from tests.conftest import hypothesis_budget


def test_absolute_name_ends_with_root():
    """A name is its labels, each length-prefixed, then the root label."""
    assert dnsname.encode_name("guest.example.com") == b"\x05guest\x07example\x03com\x00"


def test_trailing_dot_is_ignored():
    """``example.com.`` and ``example.com`` encode the same."""
    assert dnsname.encode_name("example.com.") == dnsname.encode_name("example.com")


def test_relative_name_has_no_root():
    """A partial name (RFC 4702/4704) omits the root label."""
    assert dnsname.encode_name("guest", absolute=False) == b"\x05guest"


def test_empty_label_is_rejected():
    """``a..b`` cannot be encoded."""
    assert dnsname.encode_name("a..b") is None


def test_long_label_is_rejected():
    """Labels are at most 63 bytes."""
    assert dnsname.encode_name("a" * 64 + ".com") is None
    assert dnsname.encode_name("a" * 63 + ".com") is not None


def test_long_name_is_rejected():
    """Names are at most 255 bytes on the wire."""
    assert dnsname.encode_name(".".join(["a" * 63] * 4)) is None


def test_non_ascii_is_rejected():
    """Only ASCII (already IDNA-encoded) names are sent."""
    assert dnsname.encode_name("bücher.example") is None


def test_plain_list_skips_bad_names():
    """The uncompressed list leaves out names that cannot be encoded, and the root."""
    assert dnsname.encode_list(["a.b", "x..y", ".", "c"]) == b"\x01a\x01b\x00\x01c\x00"


def test_compressed_list_points_at_earlier_suffix():
    """A suffix seen before becomes a pointer to where it started."""
    assert dnsname.encode_list_compressed(["example.com", "lab.example.com"]) == (
        b"\x07example\x03com\x00\x03lab\xc0\x00")


def test_compressed_list_points_into_middle_of_name():
    """A suffix that began inside an earlier name is found too."""
    data = dnsname.encode_list_compressed(["a.example.com", "b.example.com"])
    assert data == b"\x01a\x07example\x03com\x00\x01b\xc0\x02"


def test_compressed_list_is_case_insensitive():
    """Suffixes match regardless of case, as DNS names do."""
    data = dnsname.encode_list_compressed(["Example.COM", "x.example.com"])
    assert data == b"\x07Example\x03COM\x00\x01x\xc0\x00"


def test_compressed_duplicate_is_one_pointer():
    """A name given twice is a bare pointer the second time."""
    assert dnsname.encode_list_compressed(["a.b", "a.b"]) == b"\x01a\x01b\x00\xc0\x00"


_LABEL = st.text(alphabet="abcxyz-0", min_size=1, max_size=6)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@hypothesis_budget(2)
@given(st.lists(_NAME, min_size=1, max_size=8))
def test_compressed_list_decodes_to_names(names: list[str]):
    """Following pointers from the start of the data gives back every name, in order."""
    data = dnsname.encode_list_compressed(names)
    decoded, pos = [], 0
    while pos < len(data):
        name, used = _decode(data, pos)
        decoded.append(name)
        pos += used
    assert decoded == names


def _decode(data: bytes, pos: int) -> tuple[str, int]:
    """One name at ``pos`` (scapy's decoder) and the bytes it occupies there."""
    name = dns_get_str(data[pos:], full=data)[0]
    used, cur = 0, pos
    while True:
        length = data[cur]
        if length & 0xC0:
            used = cur + 2 - pos
            break
        if length == 0:
            used = cur + 1 - pos
            break
        cur += 1 + length
    return name.decode().rstrip("."), used
