# SPDX-License-Identifier: MIT
"""A whole two-process migration with a live TCP connection, rootless, inside ``unshare -rn``.

Each test runs tests/rootless_migration_driver.py in a fresh user + network namespace (root
only inside it, nothing but loopback): source and target passt-py without CAP_NET_ADMIN, the
test front-end as QEMU and guest, a host peer socket on 127.0.0.1, the device state saved and
loaded through SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, and TCP_REPAIR done by the repair
helper (--repair-path): the real passt-repair when one is at hand (tests/guest/real_passt.py's
cache; never downloaded here), and always the fake one of tests/fake_repair_helper.py.

What must hold: every byte sent both ways before, across and after the move arrives intact
(SHA-256), the host peer keeps its one connection (no reset, no reconnection, a clean end of
file when the guest closes), and both back-ends log the connection saved and restored. The
control test shows the back-ends really cannot set TCP_REPAIR themselves: without a helper the
connection does not survive, so the passing tests owe it to the helper.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER_TIMEOUT = 50.0

pytestmark = pytest.mark.usefixtures("userns")     # skipped locally without it, fails in CI



def run_driver(helper: str) -> dict:
    """The driver's JSON report for one scenario in a fresh ``unshare -rn`` namespace."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(["unshare", "-rn", sys.executable, "-m",
                          "tests.rootless_migration_driver", "--helper", helper],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=DRIVER_TIMEOUT)
    lines = out.stdout.strip().splitlines()
    assert lines, f"no report (exit {out.returncode}): {out.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert out.returncode == 0 and report["error"] is None, (
        f"{report['error']}\n{json.dumps(report.get('log_tails'), indent=1)[-4000:]}")
    return report


def log_text(report: dict, name: str) -> str:
    """One back-end's migration-related log lines."""
    return "\n".join(report["logs"][name])


def assert_streams_intact(report: dict) -> None:
    """Both directions: everything sent arrived, byte for byte."""
    for direction, s in report["streams"].items():
        assert s["received"] == s["sent"], (direction, s)
        assert s["sha_received"] == s["sha_sent"], (direction, s)


def assert_same_connection(report: dict) -> None:
    """The host peer kept its one connection to the end: no reset, no new connection."""
    assert not report["guest_saw_rst"]
    assert report["host_error"] is None
    assert report["host_state_before_close"] == 1          # TCP_ESTABLISHED
    assert report["host_eof_after_guest_fin"]              # the guest's FIN, not an RST
    assert not report["second_connection"]


def assert_data_was_in_flight(report: dict) -> None:
    """At the move, guest data was acknowledged but unread by the host, and host data was
    sent but not taken by the guest: the queues themselves had to move."""
    _before, flight, _after = report["phases"]
    assert flight["host_got"] < flight["guest_acked"], flight
    assert flight["guest_got"] < flight["host_sent"], flight


def assert_moved_by_the_helper(report: dict) -> None:
    """Neither back-end could set TCP_REPAIR; both logged the connection moving anyway."""
    assert report["backends"] == {"source": {"cap_net_admin": False},
                                  "target": {"cap_net_admin": False}}
    src, dst = log_text(report, "source"), log_text(report, "target")
    for text in (src, dst):
        assert "repair helper connected" in text, text
        assert "directly (CAP_NET_ADMIN)" not in text, text
        for bad in ("TCP_REPAIR unavailable", "not restored", "not adopted", "failed at stage"):
            assert bad not in text, text
    assert "frozen, in repair mode through the helper" in src, src
    assert "(0 ping, 0 UDP, 1 TCP flows)" in src, src
    assert "source done; 1 TCP connection(s) closed quietly" in src, src
    assert "1 TCP flows restored, 0 failed" in dst, dst
    assert "1 of 1 restored TCP connections handed to the guest" in dst, dst


def assert_helpers_served(report: dict) -> None:
    """Each helper served its back-end and left when it was let go."""
    for name, helper in report["helpers"].items():
        assert helper["exit"] == 0 and helper["ended_by_itself"], (name, helper)
    if report["helper"] == "fake":
        # (mode, descriptors): repair on for the one socket; the target also switches it off.
        assert report["helpers"]["source"]["commands"] == [[1, 1]]
        assert report["helpers"]["target"]["commands"] == [[1, 1], [0, 1]]


@pytest.mark.parametrize("helper", ["fake", "real"])
def test_live_tcp_connection_moves_rootless_through_the_repair_helper(
        helper: str, request: pytest.FixtureRequest) -> None:
    """Source and target passt-py in one unshare -rn namespace, no CAP_NET_ADMIN: the
    connection moves through the helper, with data both ways before, across and after."""
    if helper == "real":
        # Fetched out here (the namespace has no network); the driver takes it from the cache.
        request.getfixturevalue("real_passt_repair")
    report = run_driver(helper)
    assert report["migration"]["check_save"] == 0 and report["migration"]["check_load"] == 0
    assert [p.get("complete") for p in report["phases"]] == [True, None, True], report["phases"]
    assert_data_was_in_flight(report)
    assert_streams_intact(report)
    assert_same_connection(report)
    assert_moved_by_the_helper(report)
    assert_helpers_served(report)
    assert report["source_exit"] == 0                      # --migrate-exit


def test_without_a_helper_the_connection_cannot_move() -> None:
    """Control: the same scenario with no helper loses the connection, so the back-ends
    really lack TCP_REPAIR of their own and the test above exercises the helper."""
    report = run_driver("none")
    assert report["backends"]["source"]["cap_net_admin"] is False
    assert "TCP_REPAIR unavailable" in log_text(report, "source")
    assert "0 TCP flows restored" in log_text(report, "target")
    assert report["phases"][-1]["complete"] is False
    streams = report["streams"]
    assert (streams["guest_to_host"]["received"] < streams["guest_to_host"]["sent"]
            or streams["host_to_guest"]["received"] < streams["host_to_guest"]["sent"])
