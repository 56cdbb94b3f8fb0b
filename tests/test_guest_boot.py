# SPDX-License-Identifier: MIT
"""The real-guest harness, validated against the real passt as a known-good back-end.

If these pass, a failure of the same checks against passt-py is passt-py's, not the harness's.
passt is only a comparison peer: without it these tests skip, even when PASST_PY_REQUIRE_QEMU=1.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.guest.boot import BackendFactory, Guest, GuestError, boot_guest, migrate
from tests.guest.image import GuestImage

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 60.0


def passt_factory(passt: list[str]) -> BackendFactory:
    """Back-end argv for the real passt in vhost-user mode, foreground."""
    return lambda sock: [*passt, "-f", "--vhost-user", "-s", str(sock)]


@pytest.fixture(scope="module")
def passt_guest(guest_image: GuestImage, module_netns: str,
                real_passt: list[str]) -> Iterator[Guest]:
    """One guest on the real passt, shared by the agent checks of this module."""
    with boot_guest(passt_factory(real_passt), module_netns, image=guest_image,
                    boot_timeout=BOOT_TIMEOUT) as guest:
        yield guest


def test_guest_gets_passt_addressing_by_dhcp_and_pings_gateway(
        guest_boot, guest_netns: str, real_passt: list[str]) -> None:
    """Against real passt: eth0 up, lease 10.200.0.2 via 10.200.0.1 with MTU 65520, ping works."""
    guest = guest_boot(passt_factory(real_passt), guest_netns, dhcp=True,
                       boot_timeout=BOOT_TIMEOUT)
    assert guest.timings["boot_to_ready_s"] < BOOT_TIMEOUT

    lease = guest.wait_dhcp(timeout=30)
    assert lease["ip"] == "10.200.0.2"
    assert lease["router"].split() == ["10.200.0.1"]
    assert lease["mtu"] == "65520"

    flags = int(guest.check("cat /sys/class/net/eth0/flags"), 16)
    assert flags & 0x1, "eth0 is not administratively up"
    assert guest.check("cat /sys/class/net/eth0/mtu").strip() == "65520"
    assert "inet 10.200.0.2/24" in guest.check("ip -4 addr show dev eth0")
    assert "default via 10.200.0.1 dev eth0" in guest.check("ip -4 route")

    rc, out = guest.run("ping -c1 -W5 10.200.0.1", timeout=15)
    assert rc == 0, out
    assert "1 packets received" in out


def test_guest_gets_slaac_address_from_passt(guest_boot, guest_netns: str,
                                             real_passt: list[str]) -> None:
    """Against real passt: the router advertisement gives eth0 an address in fd00:200::/64."""
    guest = guest_boot(passt_factory(real_passt), guest_netns, dhcp=False)
    addr = guest.wait_ipv6("fd00:200:", timeout=30)
    assert addr.endswith("/64")
    # dhcp=False really leaves IPv4 alone, so a test can watch DHCP itself.
    assert guest.run("cat /run/dhcp.lease")[0] != 0
    assert "inet " not in guest.check("ip -4 addr show dev eth0")


def test_agent_reports_exit_status(passt_guest: Guest) -> None:
    """The agent returns the command's own exit status and its stdout+stderr."""
    assert passt_guest.run("echo out; echo err >&2; exit 3") == (3, "out\nerr\n")
    assert passt_guest.run("true") == (0, "")


def test_agent_output_is_binary_safe(passt_guest: Guest) -> None:
    """Any byte value, including NUL, CR and lines that look like agent markers, survives."""
    assert passt_guest.agent is not None
    payload = bytes(range(256)) + b"\n@@END c1 0\n@@READY\r\n"
    passt_guest.agent.write_file("/tmp/blob", payload)
    assert passt_guest.agent.read_file("/tmp/blob") == payload


def test_agent_survives_command_timeout(passt_guest: Guest) -> None:
    """A hung command is killed in the guest (rc 137) and the next command still works."""
    rc, _ = passt_guest.run("sleep 30", timeout=2)
    assert rc == 137
    assert passt_guest.run("echo alive") == (0, "alive\n")


def test_harness_fails_loudly_without_shared_memory(guest_image: GuestImage, guest_netns: str,
                                                     real_passt: list[str]) -> None:
    """Without share=on the guest silently has no network; the harness must refuse to boot."""
    with pytest.raises(GuestError, match="not shared"):
        with boot_guest(passt_factory(real_passt), guest_netns, image=guest_image,
                        share_memory=False, boot_timeout=BOOT_TIMEOUT):
            pass


def test_backend_that_never_creates_socket_is_reported(guest_image: GuestImage,
                                                       guest_netns: str) -> None:
    """A back-end that exits without listening fails the boot with its own output."""
    factory: BackendFactory = lambda sock: ["sh", "-c", "echo backend-said-no; exit 7"]
    with pytest.raises(GuestError, match="backend-said-no"):
        with boot_guest(factory, guest_netns, image=guest_image):
            pass


def test_live_migration_keeps_guest_networking(guest_boot, guest_netns: str,
                                               real_passt: list[str]) -> None:
    """Source → target over QMP (each QEMU with its own passt): the guest keeps its lease and
    still reaches the gateway, and the agent answers on the target's serial port."""
    source = guest_boot(passt_factory(real_passt), guest_netns, name="src")
    lease = source.wait_dhcp(timeout=30)
    source.check("echo before > /tmp/mark")
    uri = f"unix:{source.workdir / 'migrate.sock'}"
    target = guest_boot(passt_factory(real_passt), guest_netns, name="dst", incoming=uri)

    info = migrate(source, target, uri, timeout=60)
    assert info["status"] == "completed"
    source.timings["migration_total_ms"] = info.get("total-time", -1)
    source.timings["migration_downtime_ms"] = info.get("downtime", -1)

    target.connect_agent(timeout=30)
    assert target.check("cat /tmp/mark") == "before\n"
    assert f"inet {lease['ip']}/24" in target.check("ip -4 addr show dev eth0")
    rc, out = target.run("ping -c1 -W5 10.200.0.1", timeout=15)
    assert rc == 0, out
