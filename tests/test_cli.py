# SPDX-License-Identifier: MIT
"""The command line as a user meets it: `python -m passt_py ...` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from passt_py import __version__
from passt_py.main import main


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run passt-py with ``argv`` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "passt_py", *argv], capture_output=True, text=True, timeout=timeout
    )


def test_help_exits_zero():
    """--help prints usage naming the key options and exits 0."""
    proc = run("--help")
    assert proc.returncode == 0 and "--vhost-user" in proc.stdout and "--tcp-ports" in proc.stdout


def test_version():
    """--version prints the program name and version."""
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"passt-py {__version__}"


def test_print_capabilities_alone():
    """--print-capabilities prints QEMU's expected JSON and exits 0 without --vhost-user."""
    proc = run("--print-capabilities")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"type": "net"}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--vhost-user", "-m", "10"], "-m/--mtu"),
        (["--vhost-user", "-M", "zz"], "-M/--mac-addr"),
        (["--vhost-user", "-a", "300.1.1.1"], "-a/--address"),
        (["--vhost-user", "-n", "255.0.255.0"], "-n/--netmask"),
        (["--vhost-user", "-t", "0"], "-t/--tcp-ports"),
        (["--vhost-user", "-u", "30-20"], "-u/--udp-ports"),
        (["--vhost-user", "-t", "1-100", "-t", "50"], "overlapping"),
        (["--vhost-user", "--bogus"], "--bogus"),
        (["--vhost-user", "-m"], "-m/--mtu"),
        ([], "--vhost-user"),
    ],
)
def test_bad_command_line_is_one_line_exit_1(argv, needle):
    """Any configuration error exits 1 with one stderr line naming the culprit, no traceback."""
    proc = run(*argv)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and needle in lines[0]


def test_outbound_is_accepted_and_shown():
    """-o (once refused as not supported) is accepted, and --check-config shows it."""
    proc = run("--vhost-user", "--check-config", "-a", "10.9.8.7/24", "-g", "10.9.8.1", "-4",
               "-i", "lo", "-o", "192.0.2.10", "--outbound-if4", "lo")
    assert proc.returncode == 0, proc.stderr
    assert "IPv4 outbound: 192.0.2.10 dev lo" in proc.stdout.splitlines()


def test_help_names_the_newer_passt_options():
    """--help lists the options of newer passt versions passt-py accepts."""
    out = run("--help").stdout
    for option in ("--stderr", "--chroot-fallback", "--migrate-no-linger", "--dhcp-dns",
                   "--dhcp-search", "--freebind", "--outbound-if4", "--outbound-if6", "--stats"):
        assert option in out, option


def test_check_config_prints_dump():
    """--check-config prints the resolved configuration and exits 0."""
    proc = run("--vhost-user", "--check-config", "-a", "10.9.8.7/24", "-g", "10.9.8.1", "-4", "-i", "lo")
    assert proc.returncode == 0
    assert "IPv4 address: 10.9.8.7/24" in proc.stdout.splitlines()
    assert "IPv4 gateway: 10.9.8.1" in proc.stdout.splitlines()


def test_debug_logs_config_dump_to_stderr():
    """With -d the same dump is logged at debug level on stderr, line for line."""
    proc = run("--vhost-user", "--check-config", "-d", "-a", "10.9.8.7/24", "-g", "10.9.8.1", "-4", "-i", "lo")
    assert proc.returncode == 0
    dump = proc.stdout.splitlines()
    assert "IPv4 address: 10.9.8.7/24" in dump
    # Each log line on stderr: "<seconds> DEBUG passt_py.main: <dump line>" (passt_py.config.log).
    logged = [line.split(" DEBUG passt_py.main: ", 1)[1] for line in proc.stderr.splitlines()
              if " DEBUG passt_py.main: " in line]
    assert logged == dump, proc.stderr


def test_unwritable_log_file_is_one_line_exit_1(tmp_path):
    """A log file that cannot be created is a configuration error, not a traceback."""
    proc = run("--vhost-user", "--check-config", "-4", "-i", "lo", "-a", "10.9.8.7/24", "-g", "10.9.8.1",
               "-l", str(tmp_path / "missing-dir" / "x.log"))
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "-l/--log-file" in proc.stderr


def test_main_returns_status_in_process(capsys):
    """main() returns 1 on errors instead of raising, so the console script exits 1."""
    assert main(["--vhost-user", "-m", "1"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_main_help_returns_zero(capsys):
    """main(['--help']) returns 0 rather than raising SystemExit."""
    assert main(["--help"]) == 0




def test_sigterm_exits_zero_within_one_second(tmp_path):
    """A running back-end stops with status 0 within 1 s of SIGTERM."""
    sock = tmp_path / "vu.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "passt_py", "--vhost-user", "-f", "-s", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert sock.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no socket"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=1.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_daemon_mode_returns_with_socket_and_pid_file(tmp_path):
    """Without -f the command returns 0 once the socket listens and the PID file is written."""
    sock, pid_path = tmp_path / "vu.sock", tmp_path / "p.pid"
    proc = run("--vhost-user", "-s", str(sock), "-P", str(pid_path), timeout=10)
    pid = int(pid_path.read_text()) if pid_path.exists() else None
    try:
        assert proc.returncode == 0 and sock.exists() and pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while pid_path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pid_path.exists()
    finally:
        if pid is not None and os.path.exists(f"/proc/{pid}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
