# SPDX-License-Identifier: MIT
"""The running back-end: binds the vhost-user socket and ties every piece to the event loop.

Order at start-up follows passt: configuration is already valid; the socket is bound; only then
does the process daemonise (so a caller that waits for the daemon knows the socket exists), and
the loop runs until SIGTERM/SIGINT or, with --one-off, until the front-end goes away.

What happens on events:
- the vhost-user socket: messages go to the transport/session; the events they produce
  (kick descriptors, rings started, device state, RARP) are applied here;
- a TX kick: the TX ring is drained in batches, each batch handed to the guest link's demux;
- host sockets: owned by the protocol handlers, which queue frames for the guest; the guest
  link pushes them to the RX ring once per loop batch;
- timers: unsolicited router advertisements, the ARP probe for the guest's MAC, flow expiry.

A capture (-p) runs in the rings themselves (the C core records every frame they carry, see
passt_py.pcap): the same paths run with it as without it.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
import time

from passt_py import core
from passt_py.config import daemon, privileges
from passt_py.config.conf import Config, socket_path_candidates
from passt_py.flow import FlowTable
from passt_py.link import arp
from passt_py.link.dhcp import DhcpServer
from passt_py.link.dhcpv6 import Dhcpv6Server
from passt_py.link.ndp import NdpResponder
from passt_py.link.netview import GuestState, Ip4View, Ip6View, NetView
from passt_py.link.tap import GuestLink
from passt_py.loop import HUP, IN, EventLoop
from passt_py.migrate import repair as tcp_repair
from passt_py.migrate.context import MigrationContext
from passt_py.migrate.source import Source
from passt_py.migrate.transfer import EXIT_DELAY, Transfer
from passt_py.pcap import PcapWriter
from passt_py.stats import StatsReporter, service_counters
from passt_py.tcp.handler import BYTES_PER_EVENT, MAX_WINDOW, TcpHandler
from passt_py.tcp.ring import RingDataPath
from passt_py.udp.handler import RECV_BATCH, UdpHandler
from passt_py.udp.icmp import IcmpHandler
from passt_py.udp.ring import UdpRingPath
from passt_py.vhost_user.device import RX, TX, NetDevice, RxFlush
from passt_py.vhost_user.events import (DeviceStateTransfer, Event, FrontendConnected,
                                        FrontendDisconnected, RingEnabled, RingKickFd, RingStarted,
                                        RingStopped, SendRarp)
from passt_py.vhost_user.transport import VhostUserServer
from passt_py.vhost_user.wire import DEVICE_STATE_SAVE

log = logging.getLogger(__name__)

#: Frames per TX drain: a whole ring of Linux's default size. Per-batch costs (the
#: interpreter's round, one sendmsg per connection, one notification) dominate at MTU 1500,
#: so a batch takes whatever the guest queued (64 gave tcp-tx/1500 ~27 % less throughput).
TX_BATCH = 256
#: A kick drains at most this many batches before yielding to the loop.
TX_BATCHES_PER_KICK = 4
#: Whether this version migrates TCP connections (TCP_REPAIR): then, without --repair-path,
#: CAP_NET_ADMIN is kept when dropping root (passt_py.config.privileges); with it, the passt-repair
#: helper sets TCP_REPAIR for us (passt_py.migrate.source, passt_py.migrate.repair).
MIGRATES_TCP = True
#: ARP probes for the guest's MAC after the rings come up: interval and count.
ARP_PROBE_INTERVAL = 1.0
ARP_PROBE_COUNT = 30
#: DUID-LLT times count seconds from 2000-01-01 UTC (RFC 8415, 11.2).
DUID_TIME_EPOCH = 946684800
#: How often a running capture is checked for a failed write (to log it and close the file).
CAPTURE_CHECK_INTERVAL = 1.0


def netview_from_config(config: Config) -> NetView:
    """The guest-facing view of a validated configuration."""
    ip4 = ip6 = None
    if config.ip4 is not None:
        c4 = config.ip4
        ip4 = Ip4View(addr=c4.addr, prefix_len=c4.prefix_len, gateway=c4.gw, dns=c4.dns,
                      map_host_loopback=c4.map_host_loopback, map_guest_addr=c4.map_guest_addr,
                      host_addr=c4.host_addr, dns_match=c4.dns_match, dns_host=c4.dns_host,
                      outbound=c4.outbound, outbound_if=c4.outbound_if)
    if config.ip6 is not None:
        c6 = config.ip6
        if c6.gw.is_link_local:
            our_ll = c6.gw
        elif c6.addr_ll is not None:
            our_ll = c6.addr_ll
        else:
            our_ll = ipaddress.IPv6Address("fe80::1")
        ip6 = Ip6View(addr=c6.addr, prefix_len=c6.prefix_len, gateway=c6.gw, our_ll=our_ll,
                      dns=c6.dns, map_host_loopback=c6.map_host_loopback,
                      map_guest_addr=c6.map_guest_addr, host_addr=c6.host_addr,
                      dns_match=c6.dns_match, dns_host=c6.dns_host,
                      outbound=c6.outbound, outbound_if=c6.outbound_if)
    return NetView(
        our_mac=config.mac, mtu=config.mtu, ip4=ip4, ip6=ip6, search=config.search,
        hostname=config.hostname, fqdn=config.fqdn, dhcp=not config.no_dhcp,
        dhcp_dns=not config.no_dhcp_dns, dhcp_search=not config.no_dhcp_search,
        dhcpv6=not config.no_dhcpv6, ndp=not config.no_ndp, ra=not config.no_ra,
        icmp=not config.no_icmp, udp=not config.no_udp, tcp=not config.no_tcp,
        freebind=config.freebind)


class Service:
    """One back-end instance: the loop, the vhost-user server, the device and the network."""

    def __init__(self, config: Config, loop: EventLoop | None = None) -> None:
        self.config = config
        self.view = netview_from_config(config)
        self.loop = loop or EventLoop()
        self.device = NetDevice()
        self.server = self._bind(config)
        self.pcap = PcapWriter(config.pcap_file) if config.pcap_file else None
        if self.pcap is not None:
            self.device.set_capture(self.pcap.fd)
            self.loop.call_later(CAPTURE_CHECK_INTERVAL, self._check_capture)
        self.guest = GuestState()
        self.flows = FlowTable(self.loop, max_flows=config.max_flows)
        self.link = GuestLink(self.view, self.guest, self.device.send_frames, self.loop.defer,
                              rx_running=lambda: self.device.ring_active(RX))
        self._rng = random.Random()
        self._kick_fds: dict[int, int] = {}
        self._arp_probes_left = 0
        self._link_up = False
        self._ra_timer = None
        self._setup_protocols()
        self._setup_migration()
        for fd in (self.server.listen_fd, self.server.conn_fd):
            if fd is not None:
                self.loop.add(fd, IN, self._on_socket(fd))

    # ---- set-up ----
    def _bind(self, config: Config) -> VhostUserServer:
        if config.fd is not None:
            return VhostUserServer(self.device, fd=config.fd)
        if config.socket_path is not None:
            return VhostUserServer(self.device, config.socket_path)
        for path in socket_path_candidates():
            try:
                return VhostUserServer(self.device, path)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EEXIST):
                    raise
        raise OSError(errno.EADDRINUSE, "no free default socket path (/tmp/passt_N.socket)")

    def _setup_protocols(self) -> None:
        view, link = self.view, self.link
        if view.ip4 is not None and view.dhcp:
            link.dhcp = DhcpServer(view)
        if view.ip6 is not None:
            if view.dhcpv6:
                link.dhcpv6 = Dhcpv6Server(view, duid_time=int(time.time()) - DUID_TIME_EPOCH)
            if view.ndp:
                link.ndp = NdpResponder(view)
        args = (self.loop, view, self.guest, self.flows, link.to_guest)
        self.icmp = IcmpHandler(*args) if view.icmp else None
        # Data to the guest goes straight into RX buffers (C); what the TCP and UDP paths
        # place is published once per loop batch.
        rx_flush = RxFlush(self.device, self.loop.defer)
        udp_path = UdpRingPath(self.device, rx_flush)
        # Established UDP flows both ways and the steady state of established TCP connections
        # in C, inside the loop's wait.
        self.fast = core.FastPath(self.config.max_flows) if view.udp or view.tcp else None
        self._fast_mac = self.guest.mac
        if self.fast is not None:
            self.loop.set_poller(self._fast_poll)
        self.udp = UdpHandler(*args, rx_path=udp_path, fast=self.fast) if view.udp else None
        link.icmp, link.udp = self.icmp, self.udp
        if self.udp is not None and self.config.udp_forwards.forwards:
            bound = self.udp.start_forwards(self.config.udp_forwards)
            log.info("UDP: %d forwarding sockets bound", bound)
        datapath = RingDataPath(self.device, rx_flush)
        self.tcp = TcpHandler(*args, datapath=datapath, fast=self.fast) if view.tcp else None
        link.tcp = self.tcp
        if self.tcp is not None and self.config.tcp_forwards.forwards:
            bound = self.tcp.start_forwards(self.config.tcp_forwards)
            log.info("TCP: %d listening sockets bound", bound)

    def _setup_migration(self) -> None:
        """The passt-repair helper's socket (unless --repair-path none) and migration state."""
        self._transfer: Transfer | None = None
        self._migrated: Source | None = None            # source that handed its state over
        self._exit_timer = None                         # --migrate-exit, until a rollback
        self.repair_helper: tcp_repair.RepairHelper | None = None
        path = self.config.repair_path
        if path is None and self.server.path is not None:
            path = self.server.path + ".repair"
        if path is not None and path != "none":
            try:
                self.repair_helper = tcp_repair.RepairHelper(path)
            except OSError as exc:
                log.warning("cannot listen for the repair helper on %s: %s", path, exc)
        if self.repair_helper is not None:
            self.loop.add(self.repair_helper.listen_fd, IN, self._on_repair_listen)
        self.repair = tcp_repair.RepairControl(self.repair_helper)
        # Loaded now, while privileges last: see tcp_repair.DropFilter.
        self.drop_filter = tcp_repair.DropFilter.load()

    def _on_repair_listen(self, _mask: int) -> None:
        helper = self.repair_helper
        if helper is not None and helper.accept() and helper.conn_fd is not None:
            self.loop.add(helper.conn_fd, IN | HUP, self._on_repair_conn)

    def _on_repair_conn(self, _mask: int) -> None:
        """The helper only ever speaks when asked: anything else means it went away."""
        helper = self.repair_helper
        if helper is not None and helper.conn_fd is not None:
            self.loop.remove(helper.conn_fd)
            helper.drop()
            log.info("repair helper disconnected")

    def migration_context(self) -> MigrationContext:
        """What migration (passt_py.migrate) needs of this back-end."""
        return MigrationContext(
            loop=self.loop, view=self.view, guest=self.guest, flows=self.flows,
            icmp=self.icmp, udp=self.udp, tcp=self.tcp, repair=self.repair,
            drop=self.drop_filter,
            udp_forwards=self.config.udp_forwards, tcp_forwards=self.config.tcp_forwards,
            migrate_exit=self.config.migrate_exit,
            migrate_no_linger=self.config.migrate_no_linger)

    # ---- vhost-user events ----
    def _on_socket(self, fd: int):
        def handler(_mask: int) -> None:
            self._apply(self.server.on_readable(fd))
        return handler

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, FrontendConnected):
                log.info("front-end connected")
                self.loop.add(event.fd, IN, self._on_socket(event.fd))
            elif isinstance(event, FrontendDisconnected):
                self._frontend_gone(event.fd)
            elif isinstance(event, RingKickFd):
                self._watch_kick(event.index, event.fd)
            elif isinstance(event, (RingStarted, RingEnabled, RingStopped)):
                self._maybe_link_up()
                if not isinstance(event, RingStopped):
                    self._look_at(event.index)
            elif isinstance(event, DeviceStateTransfer):
                self._device_state(event)
            elif isinstance(event, SendRarp):
                self._announce()
        self._sync_fast()

    def _sync_fast(self) -> None:
        """Give the fast path the rings it may use now: running and enabled ones only (and
        the TX kick fd the loop watches); the header format follows the negotiation."""
        fast, dev = self.fast, self.device
        if fast is None:
            return
        if dev.ring_active(RX):
            fast.set_rx(dev.rings[RX], dev.hdr_len, dev.mergeable, dev.udp_rx_opts(),
                        RECV_BATCH)
            fast.set_tcp(dev.tcp_rx_opts(4), dev.tcp_rx_opts(6), BYTES_PER_EVENT, MAX_WINDOW)
        else:
            fast.set_rx(None)
        kick = self._kick_fds.get(TX)
        if dev.ring_active(TX) and kick is not None:
            fast.set_tx(dev.rings[TX], kick)
        else:
            fast.set_tx(None)

    def _fast_poll(self, epfd: int, timeout: float) -> list[tuple[int, int]]:
        """The loop's wait, through the fast path; its templates carry the guest's MAC, so
        they go when the guest shows another (flows register again on their next event)."""
        fast = self.fast
        assert fast is not None
        if self.guest.mac != self._fast_mac:
            self._fast_mac = self.guest.mac
            if self.tcp is not None:
                self.tcp.fast_release()     # TCP entries carry state: taken back, not lost
            fast.clear(epfd)
        return fast.poll(epfd, timeout)

    def _watch_kick(self, index: int, fd: int | None) -> None:
        old = self._kick_fds.pop(index, None)
        if old is not None:
            self.loop.remove(old)
        if fd is not None:
            self._kick_fds[index] = fd
            self.loop.add(fd, IN, lambda _mask, i=index: self._on_kick(i))
        self._look_at(index)

    def _look_at(self, index: int) -> None:
        """A ring (re)started or got a new kick fd: act as on a kick, without one to consume
        (what waited for the old ring's buffers, or TX the guest queued, gets its turn)."""
        self.loop.defer(lambda: self._on_kick(index, consume=False))

    def _on_kick(self, index: int, consume: bool = True) -> None:
        if consume:
            self.device.consume_kick(index)
        if index == TX:
            self._drain_tx()
        elif index == RX:
            if self.fast is not None:
                self.fast.rx_ready(self.loop.fileno())
            self.link.flush()
            if self.tcp is not None:
                self.tcp.rx_ready()
            if self.udp is not None:
                self.udp.rx_ready()

    def _drain_tx(self) -> None:
        for _ in range(TX_BATCHES_PER_KICK):
            batch = self.device.tx_batch(TX_BATCH)
            if batch is None:
                return
            try:
                # In-order TCP data and datagrams of known UDP flows go to their sockets
                # straight from guest memory (zero copy); the rest is copied out for the
                # demux. (A capture recorded every frame when the ring gave it.)
                rest: list[int] | range = range(batch.count)
                if self.tcp is not None or self.udp is not None:
                    rest = self._take_fast(batch)
                frames = [batch.frame(i) for i in rest]
            finally:
                self.device.release(batch)
            self.link.from_guest(frames)
        # More is pending: continue after other events had their turn.
        self.loop.defer(self._drain_tx)

    def _take_fast(self, batch: core.TxBatch) -> list[int] | range:
        """Frames the zero-copy paths took; returns the indices left for the copying path."""
        try:
            recs = core.classify(batch)
        except Exception:  # noqa: BLE001 - a broken batch is the copying path's business
            return range(batch.count)
        rest: list[int] | range = range(batch.count)
        if self.tcp is not None:
            rest = self.tcp.take_batch(recs)
        if self.udp is not None and rest:
            rest = self.udp.take_batch(recs, rest)
        return rest

    def _maybe_link_up(self) -> None:
        """Track whether both rings run; on the way up, probe ARP and advertise routes."""
        if self._link_up == self.device.ready:
            return
        self._link_up = self.device.ready
        if not self._link_up:
            log.info("guest link down (rings stopped)")
            self.link.drop_held()
            return
        log.info("guest link up")
        if self.tcp is not None:
            self.tcp.fast_resume()
        if self._migrated is not None:
            # Our state went out, yet the guest runs here again: QEMU gave up the migration.
            source, self._migrated = self._migrated, None
            if self._exit_timer is not None:
                self._exit_timer.cancel()
                self._exit_timer = None
            source.rollback()
        if self._transfer is not None and not self._transfer.save:
            # Target post: TCP connections go live now that frames reach the guest.
            self._transfer.activate()
        if self.link.ndp is not None:
            self.link.ndp.reset()
        self._arp_probes_left = ARP_PROBE_COUNT if self.view.ip4 is not None else 0
        self._arp_probe()
        self._schedule_ra(first=True)

    def _arp_probe(self) -> None:
        """Ask the guest for its MAC until it answers: it may take its address only later."""
        ip4 = self.view.ip4
        if ip4 is None or self._arp_probes_left <= 0 or not self.device.ready:
            return
        if self.guest.arp_answered:
            self._arp_probes_left = 0
            return
        self._arp_probes_left -= 1
        self.link.to_guest([arp.probe(self.view.our_mac, ip4.gateway, ip4.addr)])
        self.loop.call_later(ARP_PROBE_INTERVAL, self._arp_probe)

    def _schedule_ra(self, first: bool = False) -> None:
        ndp = self.link.ndp
        if ndp is None or not self.view.ra:
            return
        if self._ra_timer is not None:
            self._ra_timer.cancel()
        delay = 0.0 if first else ndp.next_ra_delay(self._rng)
        self._ra_timer = self.loop.call_later(delay, self._send_ra)

    def _send_ra(self) -> None:
        self._ra_timer = None
        ndp = self.link.ndp
        if ndp is None or not self.device.ready:
            return
        frame = ndp.unsolicited_ra()
        if frame is not None:
            self.link.to_guest([frame])
        self._schedule_ra()

    def _announce(self) -> None:
        """The guest moved here (RARP request): refresh what it knows of us right away."""
        if not self._link_up:
            return
        if self.link.ndp is not None:
            self.link.to_guest(self.link.ndp.unsolicited_nas())
        self._schedule_ra(first=True)

    def _device_state(self, event: DeviceStateTransfer) -> None:
        """Save or load our state over ``event.fd``, from the loop (passt_py.migrate.transfer)."""
        if self._transfer is not None and self._transfer.result is None:
            os.close(event.fd)
            log.error("migration: a device-state transfer is already running: refused")
            self._apply(self.server.finish_device_state(errno.EBUSY))
            return
        save = event.direction == DEVICE_STATE_SAVE
        if save and self._migrated is not None:
            # Saving again after a save that was never followed by a resume here: the
            # earlier hand-over is void, serve from here first, then save anew.
            source, self._migrated = self._migrated, None
            source.rollback()
        self._transfer = Transfer(self.migration_context(), event.fd, save,
                                          self._transfer_done)
        self._transfer.start()

    def _transfer_done(self, result: int) -> None:
        transfer = self._transfer
        if result == 0 and transfer is not None and transfer.source is not None:
            self._migrated = transfer.source
            if self.config.migrate_exit:
                log.info("--migrate-exit: exiting once the front-end has our result")
                self._exit_timer = self.loop.call_later(EXIT_DELAY,
                                                        lambda: self.loop.stop(0))
        elif transfer is not None and transfer.source is None and self.repair_helper is not None \
                and self.repair_helper.conn_fd is not None:
            # A target is done with the helper (passt-repair serves one migration and exits
            # when we close); a source keeps it for a rollback if QEMU resumes the guest here.
            self.loop.remove(self.repair_helper.conn_fd)
            self.repair_helper.drop()
        self._apply(self.server.finish_device_state(result))

    def _frontend_gone(self, fd: int) -> None:
        log.info("front-end disconnected")
        if self._transfer is not None and not self._transfer.save:
            self._transfer.discard()
        self.loop.remove(fd)
        for kick in self._kick_fds.values():
            self.loop.remove(kick)
        self._kick_fds.clear()
        self.link.flush()
        for handler in (self.icmp, self.udp, self.tcp):
            # Migrated TCP sockets linger frozen in repair mode: closing them here would let
            # the kernel answer the peers with RSTs.
            if handler is not None and not (handler is self.tcp and self._migrated is not None):
                handler.close_all()
        self.guest.__init__()  # type: ignore[misc]
        self._arp_probes_left = 0
        self._link_up = False
        if self._ra_timer is not None:
            self._ra_timer.cancel()
            self._ra_timer = None
        if self.config.one_off or (self._migrated is not None and self.config.migrate_exit):
            log.info("%s: exiting", "--one-off" if self.config.one_off else "--migrate-exit")
            self.loop.stop(0)

    # ---- capture ----
    def _check_capture(self, final: bool = False) -> None:
        """Every CAPTURE_CHECK_INTERVAL, and at the end (final): a failed capture write is
        logged once and the file closed (the rings stopped writing when it failed)."""
        pcap = self.pcap
        if pcap is None:
            return
        err = self.device.check_capture()
        if err:
            log.error("packet capture to %s failed, capture stopped: %s", pcap.path,
                      os.strerror(err))
        if err or final:
            self.device.set_capture(None)
            pcap.close()
            self.pcap = None
        else:
            self.loop.call_later(CAPTURE_CHECK_INTERVAL, self._check_capture)

    # ---- running ----
    def close(self) -> None:
        """Release everything (sockets, capture, loop)."""
        for handler in (self.icmp, self.udp, self.tcp):
            if handler is not None:
                handler.close_all()
        if self.udp is not None:
            self.udp.stop_forwards()
        if self.tcp is not None:
            self.tcp.stop_forwards()
        if self.repair_helper is not None:
            self.repair_helper.close()
        self.drop_filter.close()
        self.server.close()
        self.device.reset()
        self._check_capture(final=True)
        self.loop.close()


def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT (or the front-end leaves, with --one-off); exit status."""
    # Exit signals are caught before the socket exists: whoever sees the socket may send
    # SIGTERM right away, and it must still mean a clean exit (socket and PID file removed).
    signals = daemon.install_exit_signals()
    try:
        service = Service(config)
    except OSError as exc:
        log.error("cannot set up the vhost-user socket: %s", exc)
        signals.close()
        return 1
    where = config.socket_path or (f"fd {config.fd}" if config.fd is not None else None)
    log.info("listening on %s", where or service.server.path)
    if config.foreground:
        pid_file = daemon.write_pid_file(config.pid_file)
    else:
        pid_file = daemon.daemonise(config.pid_file)
    # Everything that needs root is open now (socket, PID file, capture, log, forwards).
    helper = getattr(service, "repair_helper", None)
    try:
        dropped = privileges.drop_privileges(
            config.runas,
            keep_net_admin=privileges.needs_net_admin(config.repair_path,
                                                      migration=MIGRATES_TCP),
            socket_path=service.server.path if config.fd is None else None,
            pid_file=pid_file.path if pid_file is not None else None,
            other_sockets=[helper.path] if helper is not None else [])
    except (privileges.PrivilegeError, OSError) as exc:
        log.error("cannot drop privileges: %s", exc)
        signals.close()
        service.close()
        if pid_file is not None:
            pid_file.remove()
        return 1

    def on_signal(_mask: int) -> None:
        signals.drain()
        if signals.requested:
            log.info("exiting on signal")
            service.loop.stop(0)

    service.loop.add(signals.fd, IN | HUP, on_signal)
    if config.stats_delay:
        StatsReporter(service.loop, config.stats_delay, lambda: service_counters(service)).start()
    try:
        return service.loop.run()
    finally:
        signals.close()
        service.close()
        if pid_file is not None:
            pid_file.remove()
        dropped.finish()
