# SPDX-License-Identifier: MIT
"""Load a migration stream with the v0.1.0 release and print what it rebuilt, as JSON.

Run ONLY with the v0.1.0 tree first on sys.path (old_release.run_old), as root::

    python old_load.py SETUP_JSON < stream

SETUP_JSON (a file, or the JSON text itself) is a sidecar (compat_describe.py) (only ``setup`` and the TCP sockets'
peers are used): the target gets the same NetView and -u forwards, and a silent listener on
each TCP peer's address and port (compat_netns.silent_peer), inside a private network
namespace. The stream goes through ``migrate.load_bytes`` like any in-memory load. Output: the
same description make_streams.py writes (guest, flows through the handlers' exports, TCP
sockets through ``tcp_repair.save`` in repair mode), plus the load ``report``, or ``error``
(stage, errno, message) if the release refused the stream.
"""
from __future__ import annotations

import json
import sys

import passt_py

import compat_netns
from compat_describe import build_view, describe_flows, describe_guest
from passt_py import migrate, tcp_repair
from passt_py.flow import FlowTable
from passt_py.icmp import IcmpHandler
from passt_py.loop import EventLoop
from passt_py.netview import GuestState, Ip4View, Ip6View, NetView
from passt_py.portspec import parse_port_options
from passt_py.tcp import TcpHandler
from passt_py.udp import UdpHandler


def _sock_state(flow) -> tcp_repair.TcpSockState:
    sock = flow.data.sock
    assert tcp_repair.set_repair(sock, tcp_repair.TCP_REPAIR_ON) == 0   # closes silently too
    return tcp_repair.save(sock)


def main(argv: list[str]) -> int:
    arg = argv[0]
    setup_doc = json.loads(arg if arg.lstrip().startswith("{") else open(arg).read())
    data = sys.stdin.buffer.read()
    compat_netns.enter_new_netns()
    peers = [compat_netns.silent_peer(e["socket"]["peer_addr"], e["socket"]["peer_port"])
             for e in setup_doc.get("tcp", [])]
    loop = EventLoop()
    view = build_view(setup_doc["setup"]["view"], NetView, Ip4View, Ip6View)
    guest = GuestState()
    flows = FlowTable(loop, max_flows=1024)
    frames: list[bytes] = []
    args = (loop, view, guest, flows, frames.extend)
    ctx = migrate.MigrationContext(loop=loop, view=view, guest=guest, flows=flows,
                                   icmp=IcmpHandler(*args), udp=UdpHandler(*args),
                                   tcp=TcpHandler(*args), repair=tcp_repair.RepairControl())
    if setup_doc["setup"]["udp_forwards"]:
        ctx.udp.start_forwards(parse_port_options(setup_doc["setup"]["udp_forwards"]))
    out: dict = {"passt_py": passt_py.__file__,
                 "reads_versions": [v for v, _stages in migrate.VERSIONS]}
    try:
        report = migrate.load_bytes(ctx, data)
    except migrate.MigrationError as e:
        out["error"] = {"stage": e.stage, "errno": e.code, "message": str(e)}
        print(json.dumps(out, sort_keys=True))
        return 0
    out.update(report={"ping": report.ping, "udp": report.udp, "tcp": report.tcp,
                       "failed": report.failed},
               guest=describe_guest(guest),
               **describe_flows(flows, ctx.icmp, ctx.udp, ctx.tcp, _sock_state))
    print(json.dumps(out, sort_keys=True))
    del peers
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
