# SPDX-License-Identifier: MIT
"""ARP: the back-end answers for every address but the guest's, and asks for the guest's MAC."""
import ipaddress

from scapy.layers.l2 import ARP, Ether

from passt_py.link import arp

OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_MAC = bytes.fromhex("525400123456")
GUEST = ipaddress.IPv4Address("10.200.0.2")
GW = ipaddress.IPv4Address("10.200.0.1")


def _request(target: str, sender: str = "10.200.0.2") -> bytes:
    return bytes(Ether(src="52:54:00:12:34:56", dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc="52:54:00:12:34:56", psrc=sender, pdst=target))


def test_request_for_gateway_gets_reply_with_our_mac():
    """A request for the gateway is answered with our MAC, addressed to the asker."""
    reply = Ether(arp.reply_to(_request("10.200.0.1"), OUR_MAC, GUEST))
    assert reply[Ether].dst == "52:54:00:12:34:56"
    assert reply[Ether].src == "9a:55:9a:55:9a:55"
    assert reply[ARP].op == 2
    assert reply[ARP].hwsrc == "9a:55:9a:55:9a:55" and reply[ARP].psrc == "10.200.0.1"
    assert reply[ARP].hwdst == "52:54:00:12:34:56" and reply[ARP].pdst == "10.200.0.2"


def test_request_for_any_other_address_is_answered():
    """Every host on the link but the guest is the back-end."""
    reply = Ether(arp.reply_to(_request("10.200.0.77"), OUR_MAC, GUEST))
    assert reply[ARP].psrc == "10.200.0.77"


def test_request_for_guest_own_address_is_ignored():
    """Duplicate address detection by the guest must not find a conflict."""
    assert arp.reply_to(_request("10.200.0.2", sender="0.0.0.0"), OUR_MAC, GUEST) is None


def test_gratuitous_arp_is_ignored():
    """An announcement (sender == target) is not a question."""
    assert arp.reply_to(_request("10.200.0.2", sender="10.200.0.2"), OUR_MAC, None) is None


def test_replies_and_truncated_frames_are_ignored():
    """Only complete Ethernet/IPv4 requests get an answer."""
    reply = bytes(Ether() / ARP(op=2, psrc="10.200.0.2", pdst="10.200.0.1"))
    assert arp.reply_to(reply, OUR_MAC, GUEST) is None
    for cut in range(0, 42):
        assert arp.reply_to(_request("10.200.0.1")[:cut], OUR_MAC, GUEST) is None


def test_probe_asks_for_guest_mac():
    """The probe is a broadcast who-has for the guest's address, from our MAC."""
    frame = Ether(arp.probe(OUR_MAC, GW, GUEST))
    assert frame[Ether].dst == "ff:ff:ff:ff:ff:ff"
    assert frame[ARP].op == 1 and frame[ARP].pdst == "10.200.0.2"
    assert frame[ARP].psrc == "10.200.0.1" and frame[ARP].hwsrc == "9a:55:9a:55:9a:55"
