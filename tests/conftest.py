# SPDX-License-Identifier: MIT
"""Shared fixtures and the ``qemu`` marker policy.

Tests that boot a real guest are marked ``@pytest.mark.qemu``. When QEMU, a usable accelerator,
root (for network namespaces) or the guest image cannot be had, they SKIP with the reason on a
developer's machine, but FAIL when ``PASST_PY_REQUIRE_QEMU=1`` (CI sets it): in CI a missing
prerequisite is a broken pipeline, not an excuse.

Fixtures:
- ``guest_image`` (session): the cached kernel + initramfs (``tests/guest/image.py``).
- ``guest_netns``: a fresh test network namespace (``tests/netns.py``: host side 10.200.0.2/24 via
  10.200.0.1, fd00:200::2/64 via fd00:200::1) with ping sockets allowed for every group.
- ``guest_boot``: ``guest_boot(factory, netns, **kw) -> Guest``; each guest (QEMU, then its
  back-end) is stopped by PID at teardown, and its timings are reported in the summary.
- ``real_passt``: argv prefix of a vhost-user capable real passt; skips (never fails) without one.
- ``real_passt_repair``: argv prefix of the real passt-repair helper (migration tests); like the
  QEMU prerequisites, it fails in CI when it cannot be had.
- ``userns``: ``unshare -rn`` and ``setpriv`` work (rootless tests); fails in CI otherwise.

Hypothesis: the budget of every property test comes from one profile, chosen with
``PASST_PY_HYPOTHESIS`` (or Hypothesis's own ``--hypothesis-profile``): ``ci`` (the default:
what CI and a plain ``pytest`` run), ``dev`` (a quick pass while editing) or ``long`` (a
search worth leaving running). A test that is much cheaper or dearer than the rest scales the
profile's count with :func:`hypothesis_budget` instead of naming a number of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import pytest
from hypothesis import settings as hypothesis_settings

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # so `tests.guest` / `tests.netns` import however pytest runs

from tests import netns as netns_mod  # noqa: E402
from tests.guest.boot import BackendFactory, Guest, boot_guest  # noqa: E402
from tests.guest.image import GuestImage, ImageError, build_image  # noqa: E402
from tests.guest.qemu import kvm_usable, qemu_binary  # noqa: E402
from tests.guest.real_passt import real_passt_command, real_passt_repair_command  # noqa: E402

REQUIRE_ENV = "PASST_PY_REQUIRE_QEMU"
PING_GROUP_RANGE = "0 2147483647"

# ---- Hypothesis profiles ----
HYPOTHESIS_ENV = "PASST_PY_HYPOTHESIS"
#: Examples per property at weight 1. ``ci`` keeps the counts the suite always ran (weight 1 is
#: Hypothesis's default of 100; see hypothesis_budget() for the weights).
HYPOTHESIS_PROFILES = {"ci": 100, "dev": 15, "long": 2000}
for _name, _examples in HYPOTHESIS_PROFILES.items():
    # No deadline anywhere: these properties drive real sockets, rings and C, whose timing
    # says nothing about correctness (and a loaded CI machine would make them flaky).
    hypothesis_settings.register_profile(_name, max_examples=_examples, deadline=None)


def hypothesis_budget(weight: float = 1.0, **overrides: object) -> hypothesis_settings:
    """Settings for one property: the active profile's example count times ``weight``, at
    least one (``overrides``: other settings of that test, e.g. suppress_health_check).

    The weight says how a property compares with the rest: 3 for a cheap one over a big input
    space (a parser, a checksum), below 1 for one whose every example drives real rings or
    sockets. Evaluated when the test module is imported, after pytest_configure() chose the
    profile.
    """
    base = hypothesis_settings()
    return hypothesis_settings(base, max_examples=max(1, round(base.max_examples * weight)),
                               **overrides)  # type: ignore[arg-type]


_timings: list[tuple[str, dict[str, float]]] = []


def require_qemu() -> bool:
    """True when a missing QEMU prerequisite must fail the test (CI)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def qemu_unavailable(reason: str) -> NoReturn:
    """Skips locally; fails when PASST_PY_REQUIRE_QEMU=1."""
    if require_qemu():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this is a failure)", pytrace=False)
    pytest.skip(reason)


@lru_cache(maxsize=1)
def qemu_problem() -> str | None:
    """Why QEMU guests cannot run here, or None if they can."""
    binary = qemu_binary()
    if binary is None:
        return "qemu-system-x86_64 not found (run .ci/install-system.sh as root)"
    try:
        accels = subprocess.run([binary, "-accel", "help"], capture_output=True, text=True,
                                timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"qemu-system-x86_64 does not run: {e}"
    if not kvm_usable() and not re.search(r"^tcg$", accels, re.M):
        return "no usable accelerator: /dev/kvm unusable (absent or PVM) and QEMU lacks TCG"
    if not netns_mod.available():
        return "guest tests need root and iproute2 to create network namespaces"
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Checks the Hypothesis profile choice; registers the marker unless pyproject.toml does."""
    profile = os.environ.get(HYPOTHESIS_ENV)
    if profile and profile not in HYPOTHESIS_PROFILES:
        raise pytest.UsageError(f"{HYPOTHESIS_ENV}={profile}: not a profile "
                                f"(one of {', '.join(HYPOTHESIS_PROFILES)})")
    if os.environ.get("PASST_PY_EXAMPLES"):
        raise pytest.UsageError(f"PASST_PY_EXAMPLES is gone: choose a Hypothesis profile with "
                                f"{HYPOTHESIS_ENV}={'|'.join(HYPOTHESIS_PROFILES)}")
    # Loaded here, before any test module is imported (hypothesis_budget() reads it then);
    # Hypothesis's own --hypothesis-profile, when given, wins.
    if not config.getoption("hypothesis_profile", None):
        hypothesis_settings.load_profile(profile or "ci")
    if any(line.startswith("qemu:") for line in config.getini("markers")):
        return
    config.addinivalue_line(
        "markers", "qemu: boots a real Linux guest under QEMU "
                   f"(fails, not skips, when {REQUIRE_ENV}=1)")


@pytest.fixture(autouse=True)
def _qemu_marker_policy(request: pytest.FixtureRequest) -> None:
    """Applies the skip-or-fail policy to tests marked ``qemu`` before any guest fixture runs."""
    if request.node.get_closest_marker("qemu") is not None:
        problem = qemu_problem()
        if problem is not None:
            qemu_unavailable(problem)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The guest kernel + initramfs, built once and cached across runs."""
    problem = qemu_problem()
    if problem is not None:
        qemu_unavailable(problem)
    try:
        return build_image()
    except ImageError as e:
        qemu_unavailable(f"guest image cannot be built: {e}")


def _make_netns() -> ExitStack:
    """Enters a test namespace and allows ping sockets in it; the stack deletes it."""
    stack = ExitStack()
    ns = stack.enter_context(netns_mod.netns())
    res = netns_mod.run_in(ns, ["sh", "-c", f"echo '{PING_GROUP_RANGE}' > "
                                            "/proc/sys/net/ipv4/ping_group_range"])
    if res.returncode != 0:
        stack.close()
        raise RuntimeError(f"cannot set ping_group_range in {ns}: {res.stderr}")
    stack.ns = ns  # type: ignore[attr-defined]
    return stack


@pytest.fixture
def guest_netns() -> Iterator[str]:
    """A fresh test network namespace (see tests/netns.py), deleted afterwards."""
    if not netns_mod.available():
        qemu_unavailable("network namespaces need root and iproute2")
    with _make_netns() as stack:
        yield stack.ns  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def module_netns() -> Iterator[str]:
    """Like guest_netns, shared by one module's tests (e.g. one guest for many checks)."""
    if not netns_mod.available():
        qemu_unavailable("network namespaces need root and iproute2")
    with _make_netns() as stack:
        yield stack.ns  # type: ignore[attr-defined]


GuestBoot = Callable[..., Guest]


@pytest.fixture
def guest_boot(guest_image: GuestImage, request: pytest.FixtureRequest) -> Iterator[GuestBoot]:
    """Factory: ``guest_boot(backend_factory, netns, dhcp=True, **boot_guest_kwargs)``."""
    booted: list[Guest] = []
    with ExitStack() as stack:
        def boot(factory: BackendFactory | None, netns: str | None, dhcp: bool = True,
                 **kwargs: object) -> Guest:
            kwargs.setdefault("image", guest_image)
            guest = stack.enter_context(boot_guest(factory, netns, dhcp, **kwargs))
            booted.append(guest)
            return guest
        yield boot
    for guest in booted:
        _timings.append((request.node.nodeid, guest.timings))


def record_guest_timings(nodeid: str, guest: Guest) -> None:
    """Adds a guest's timings to the end-of-run summary (for guests booted outside guest_boot)."""
    _timings.append((nodeid, guest.timings))


@pytest.fixture(scope="session")
def real_passt() -> list[str]:
    """argv prefix of the real passt with vhost-user (the reference the side-by-side tests
    compare with); skipped when unavailable, failed in CI (PASST_PY_REQUIRE_QEMU)."""
    cmd = real_passt_command()
    if cmd is None:
        qemu_unavailable("no vhost-user capable passt (not on PATH, Debian 13 package not "
                         "fetchable)")
    return cmd


@pytest.fixture(scope="session")
def real_passt_repair() -> list[str]:
    """argv prefix of the real passt-repair (fetched once, cached under tests/.cache)."""
    cmd = real_passt_repair_command()
    if cmd is None:
        qemu_unavailable("no real passt-repair (not on PATH, Debian 13 package not fetchable)")
    return cmd


@lru_cache(maxsize=1)
def _userns_problem() -> str | None:
    import shutil
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) missing"
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                            timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -rn failed: {e}"
    return None if ok else "user namespaces unavailable (unshare -rn fails)"


@pytest.fixture
def userns() -> None:
    """Rootless tests need ``unshare -rn``: skipped locally without it, a failure in CI."""
    problem = _userns_problem()
    if problem is not None:
        qemu_unavailable(problem)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints guest boot/DHCP timings so regressions in the harness are visible."""
    if not _timings:
        return
    terminalreporter.section("guest timings (seconds)")
    for nodeid, timings in _timings:
        fields = " ".join(f"{k}={v}" for k, v in timings.items())
        terminalreporter.write_line(f"{nodeid}: {fields}")
