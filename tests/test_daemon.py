# SPDX-License-Identifier: MIT
"""Daemonising, the PID file and exit signals, exercised in real child processes."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from passt_py.config.daemon import PidFile, install_exit_signals

# A stand-in for the service: daemonise, then wait (bounded) for SIGTERM on the wakeup fd.
DAEMON_SCRIPT = textwrap.dedent(
    """
    import select, sys
    from passt_py.config.daemon import daemonise, install_exit_signals
    daemonise(sys.argv[1])
    sigs = install_exit_signals()
    for _ in range(100):
        if select.select([sigs.fd], [], [], 0.1)[0]:
            sigs.drain()
        if sigs.requested:
            sys.exit(0)
    sys.exit(3)
    """
)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(predicate, timeout: float) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def daemon(tmp_path):
    """Start the stand-in daemon; yields (launcher result, pid file path, daemon pid)."""
    pid_path = tmp_path / "d.pid"
    launcher = subprocess.run([sys.executable, "-c", DAEMON_SCRIPT, str(pid_path)], timeout=10)
    pid = int(pid_path.read_text()) if pid_path.exists() else None
    yield launcher, pid_path, pid
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_launcher_returns_zero_with_pid_file_written(daemon):
    """The original process exits 0 only once the PID file exists."""
    launcher, pid_path, pid = daemon
    assert launcher.returncode == 0 and pid is not None and _alive(pid)


def test_pid_file_mode_0644(daemon):
    """The PID file is world-readable, owner-writable."""
    _, pid_path, _ = daemon
    assert stat.S_IMODE(os.stat(pid_path).st_mode) == 0o644


def test_daemon_detached_from_session(daemon):
    """The daemon is in a new session, not a session leader, with stdin on /dev/null."""
    _, _, pid = daemon
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    session = int(fields[3])
    assert session not in (os.getsid(0), pid)
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull


def test_sigterm_exits_and_removes_pid_file(daemon):
    """SIGTERM ends the daemon within 1 s and its PID file goes away."""
    _, pid_path, pid = daemon
    os.kill(pid, signal.SIGTERM)
    assert _wait(lambda: not _alive(pid) and not pid_path.exists(), 1.0)


def test_exit_signal_wakes_fd():
    """A signal makes the wakeup fd readable and sets the flag."""
    sigs = install_exit_signals()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        ready = select.select([sigs.fd], [], [], 1.0)[0]
        assert ready and sigs.drain() == [signal.SIGINT] and sigs.requested
    finally:
        sigs.close()


def test_close_restores_previous_handler():
    """close() puts back the handlers that were installed before."""
    before = signal.getsignal(signal.SIGTERM)
    install_exit_signals().close()
    assert signal.getsignal(signal.SIGTERM) is before


def test_pid_file_left_alone_if_rewritten(tmp_path):
    """remove() keeps a PID file that another process has since claimed."""
    path = tmp_path / "p.pid"
    pf = PidFile(str(path))
    path.write_text("1\n")
    pf.remove()
    assert path.exists()


def test_pid_file_removed_if_ours(tmp_path):
    """remove() deletes the PID file this process wrote."""
    path = tmp_path / "p.pid"
    PidFile(str(path)).remove()
    assert not path.exists()
