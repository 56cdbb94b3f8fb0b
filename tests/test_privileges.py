# SPDX-License-Identifier: MIT
"""Privileges: root drops to --runas (default nobody) after opening what needs root.

Checks the identity and capabilities of a running passt-py from /proc, the socket file's owner
and mode, clean-up of the socket and PID file after the switch, CAP_NET_ADMIN kept only on
request, and rootless operation inside a user + network namespace (unshare -rn).
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from passt_py.config import privileges
from tests.frontend import Frontend, spawn_passt_py

ROOT = Path(__file__).resolve().parent.parent
ADDR = ["-a", "10.200.0.2/24", "-g", "10.200.0.1"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def wait_for(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def default_caps() -> int:
    """Capabilities a root-started passt-py keeps without --repair-path: CAP_NET_ADMIN when
    this version migrates TCP connections (TCP_REPAIR), else none."""
    from passt_py.service import MIGRATES_TCP
    keep = privileges.needs_net_admin(None, migration=MIGRATES_TCP)
    return 1 << privileges.CAP_NET_ADMIN if keep else 0


def test_net_admin_policy():
    """CAP_NET_ADMIN is kept only for migration without a helper path (default or 'none')."""
    assert privileges.needs_net_admin(None, migration=True)
    assert privileges.needs_net_admin("none", migration=True)
    assert not privileges.needs_net_admin("/run/repair.sock", migration=True)
    assert not privileges.needs_net_admin(None, migration=False)


def nobody() -> tuple[int, int]:
    who = privileges.resolve(None)
    return who.uid, who.gid


# ---- resolution ----
def test_default_identity_is_nobody():
    """Without --runas the target is nobody (its own group)."""
    who = privileges.resolve(None)
    assert who.name == "nobody"
    try:
        assert who.uid == pwd.getpwnam("nobody").pw_uid
    except KeyError:
        assert who.uid == privileges.NOBODY_ID


@pytest.mark.parametrize("spec,uid,gid", [("1234", 1234, 1234), ("1234:2345", 1234, 2345),
                                          ("0:0", 0, 0)])
def test_numeric_runas(spec, uid, gid):
    """UID[:GID] by number; a number without a passwd entry uses itself as the group."""
    who = privileges.resolve(spec)
    assert (who.uid, who.gid) == (uid, gid)


def test_names_are_resolved_and_unknown_names_refused():
    """Names go through passwd/group; an unknown one is a clear error."""
    assert privileges.resolve("root:root").uid == 0
    with pytest.raises(privileges.PrivilegeError, match="no user"):
        privileges.resolve("no-such-user-here")
    with pytest.raises(privileges.PrivilegeError, match="no group"):
        privileges.resolve("root:no-such-group-here")


def test_runas_option_is_accepted_now():
    """--runas is no longer refused as unsupported."""
    from passt_py.config.conf import UNSUPPORTED_OPTIONS
    assert "--runas" not in UNSUPPORTED_OPTIONS


# ---- a running passt-py ----
@needs_root
def test_root_drops_to_nobody_with_no_capabilities(tmp_path):
    """Started as root without --runas: runs as nobody, no groups, no capabilities, the socket
    is nobody's with mode 0660, a front-end still connects, and the files go at exit."""
    tmp_path.chmod(0o700)  # only root may write here: the clean-up helper must do the removal
    sock = str(tmp_path / "p.sock")
    pid_file = tmp_path / "p.pid"
    proc = spawn_passt_py(sock, [*ADDR, "-P", str(pid_file)])
    try:
        uid, gid = nobody()
        assert wait_for(lambda: status(proc.pid)["Uid"].split()[0] == str(uid))
        st = status(proc.pid)
        assert st["Uid"].split() == [str(uid)] * 4
        assert st["Gid"].split() == [str(gid)] * 4
        assert st["Groups"] == ""
        want = default_caps()
        assert int(st["CapEff"], 16) == want and int(st["CapPrm"], 16) == want
        assert st["NoNewPrivs"] == "1"
        info = os.stat(sock)
        assert (info.st_uid, info.st_gid) == (uid, gid)
        assert info.st_mode & 0o777 == 0o660
        with Frontend(sock) as fe:
            fe.connect_all()
            assert fe.get_vring_base(1) == 0
    finally:
        code = stop(proc)
    assert code == 0
    assert not os.path.exists(sock) and not pid_file.exists()


@needs_root
def test_repair_helper_path_means_no_capabilities(tmp_path):
    """With --repair-path (passt-repair does TCP_REPAIR) nothing is kept; the helper's socket
    is removed at exit too."""
    sock = str(tmp_path / "p.sock")
    repair = str(tmp_path / "p.repair")
    proc = spawn_passt_py(sock, [*ADDR, "--repair-path", repair])
    try:
        uid, _gid = nobody()
        assert wait_for(lambda: status(proc.pid)["Uid"].split()[0] == str(uid))
        assert int(status(proc.pid)["CapEff"], 16) == 0
        assert int(status(proc.pid)["CapPrm"], 16) == 0
    finally:
        assert stop(proc) == 0
    assert not os.path.exists(sock) and not os.path.exists(repair)


@needs_root
def test_runas_numeric_user_and_group(tmp_path):
    """--runas 4321:5432 switches to exactly that user and group."""
    sock = str(tmp_path / "p.sock")
    proc = spawn_passt_py(sock, [*ADDR, "--runas", "4321:5432"])
    try:
        assert wait_for(lambda: status(proc.pid)["Uid"].split()[0] == "4321")
        st = status(proc.pid)
        assert st["Gid"].split() == ["5432"] * 4
        assert int(st["CapEff"], 16) == default_caps()
        assert (os.stat(sock).st_uid, os.stat(sock).st_gid) == (4321, 5432)
    finally:
        assert stop(proc) == 0
    assert not os.path.exists(sock)


@needs_root
@pytest.mark.parametrize("keep", [False, True])
def test_cap_net_admin_kept_only_on_request(keep):
    """keep_net_admin leaves CAP_NET_ADMIN alone in the sets; otherwise nothing is left."""
    code = ("from passt_py.config import privileges\n"
            f"d = privileges.drop_privileges('4321', keep_net_admin={keep})\n"
            "print(d.note)\n"
            "print(open('/proc/self/status').read())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    st = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    want = (1 << privileges.CAP_NET_ADMIN) if keep else 0
    assert int(st["CapEff"], 16) == want and int(st["CapPrm"], 16) == want
    assert int(st["CapInh"], 16) == 0
    assert st["Uid"].split() == ["4321"] * 4
    assert ("kept CAP_NET_ADMIN" in out.stdout) == keep


def test_not_root_changes_nothing():
    """Without root, --runas is ignored with a note (as passt does)."""
    code = ("import os\n"
            "from passt_py.config import privileges\n"
            "os.setgid(4321) if os.geteuid() == 0 else None\n"
            "os.setuid(4321) if os.geteuid() == 0 else None\n"
            "uid = os.getuid()\n"
            "d = privileges.drop_privileges('nobody')\n"
            "assert os.getuid() == uid, 'uid changed'\n"
            "print(d.note)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ignored" in out.stdout


def test_rootless_in_a_user_and_network_namespace(tmp_path, userns):
    """Under unshare -rn (root only inside its own user namespace, a private network) passt-py
    starts, stays as it is (nobody is not mapped) and serves a test front-end."""
    sock = str(tmp_path / "p.sock")
    log_file = tmp_path / "log"
    argv = ["unshare", "-rn", sys.executable, "-m", "passt_py", "--vhost-user", "-f",
            "-s", sock, *ADDR, "-l", str(log_file), "--debug"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        with Frontend(sock) as fe:
            fe.connect_all()
            assert fe.get_vring_base(0) == 0
        assert "staying UID" in log_file.read_text()
    finally:
        code = stop(proc)
    assert code == 0


@needs_root
def test_no_file_wider_than_needed_even_with_umask_zero(tmp_path):
    """With umask 0: the socket is 0660 (nobody's), capture and log 0600, PID file 0644."""
    sock = str(tmp_path / "p.sock")
    files = {"-p": tmp_path / "cap.pcap", "-l": tmp_path / "log", "-P": tmp_path / "p.pid"}
    argv = [sys.executable, "-m", "passt_py", "--vhost-user", "-f", "-s", sock, *ADDR]
    for opt, path in files.items():
        argv += [opt, str(path)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.umask(0))
    try:
        uid, _gid = nobody()
        assert wait_for(lambda: os.path.exists(sock)
                        and status(proc.pid)["Uid"].split()[0] == str(uid), 10)
        assert wait_for(lambda: os.stat(sock).st_mode & 0o777 == 0o660)
        modes = {opt: path.stat().st_mode & 0o777 for opt, path in files.items()}
        assert modes == {"-p": 0o600, "-l": 0o600, "-P": 0o644}
    finally:
        assert stop(proc) == 0


def test_tcp_connections_move_rootless_directly_and_through_the_helper(userns):
    """Migration's TCP part works without real privileges: inside unshare -rn (root only in
    its own user namespace, which owns the private network namespace) connections with data
    queued both ways are saved and rebuilt with TCP_REPAIR, directly and through the
    passt-repair helper protocol, and socket filters (the freeze) are allowed."""
    tests = ("test_queued_data_both_ways_survives_a_move or test_move_through_the_helper_protocol"
             " or test_frozen_socket_acks_nothing_and_thaws")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(["unshare", "-rn", "sh", "-c",
                          'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider '
                          'tests/test_tcp_repair.py -k "$1"', sys.executable, tests],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "4 passed" in out.stdout, out.stdout[-2000:]
