# SPDX-License-Identifier: MIT
"""The binding layer: the only package that touches cffi's ``ffi`` and ``lib``.

One module per C unit, each a thin layer over its functions that turns their negative-errno
returns into Python exceptions:

- ``_lib``: loading ``passt_py._core`` (checked against :data:`API_VERSION` at import),
  :class:`CoreError`, :func:`check` and the helpers the modules share;
- ``checksum`` (csrc/checksum.c), ``iov`` (csrc/iov.c), ``guest_mem`` (csrc/guest_mem.c),
  ``virtq`` (csrc/virtq.c), ``classifier`` (csrc/classify.c), ``tcp_path``
  (csrc/tcp_path.c), ``udp_path`` (csrc/udp_path.c), ``fastpath`` (csrc/fast_api.c,
  fastpath.c, fast_udp.c, fast_tcp.c), ``repair`` (csrc/sock_filter.c).

This package re-exports every public name, so ``from passt_py import core; core.X`` is the
way to use it; the submodules say which C unit a name belongs to.
"""
from __future__ import annotations

from passt_py.core._lib import (
    API_VERSION, BytesLike, CoreError, check, ffi, lib,
)
from passt_py.core.checksum import (
    CSUM_AUTO, CSUM_AVX2, CSUM_SCALAR, bench_csum, bench_memcpy, csum_fold, csum_icmp4,
    csum_impls, csum_iov, csum_ipv4_header, csum_l4_ipv4, csum_l4_ipv6, csum_partial,
    csum_partial_impl, pseudo_ipv4, pseudo_ipv6,
)
from passt_py.core.iov import (
    readv_all, writev_all,
)
from passt_py.core.guest_mem import (
    GuestMemory,
)
from passt_py.core.virtq import (
    CaptureStats, PUSH_RX_JOIN_MAX, RxResult, SNAPLEN, TxBatch, VQ_ERRORS, VQ_MAX_SIZE,
    VRING_F_LOG, Virtqueue,
)
from passt_py.core.classifier import (
    PKT_CODES, PKT_HDR_MAX, PKT_IP_EXT, PKT_IP_FRAG, PKT_IP_HDR, PKT_IP_LEN, PKT_L4_SHORT,
    PKT_OK, PKT_OTHER, PKT_SHORT_ETH, PKT_TCP_DOFF, PKT_UDP_LEN, PacketRecords,
    VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_GSO_ECN, VNET_GSO_NONE, VNET_GSO_TCPV4,
    VNET_GSO_TCPV6, VNET_GSO_UDP, VNET_GSO_UDP_L4, classify,
)
from passt_py.core.tcp_path import (  # noqa: F401  (_SO_PEEK_OFF: for tests)
    TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH, TCP_RST, TCP_RX_CSUM_PARTIAL,
    TCP_RX_DATA_VALID, TCP_RX_GSO, TCP_RX_NO_FLUSH, TCP_STOP_AGAIN, TCP_STOP_DRAINED,
    TCP_STOP_EOF, TCP_STOP_LIMIT, TCP_STOP_NOBUFS, TCP_STOP_STOPPED, TCP_STOP_WINDOW, TCP_SYN,
    TCP_URG, TcpPath, TcpRxResult, TcpTemplate, _SO_PEEK_OFF, send_payload_runs, send_payloads,
    set_peek_offset, tcp_build, tcp_runs,
)
from passt_py.core.udp_path import (
    UDP_RX_CSUM_PARTIAL, UDP_RX_DATA_VALID, UDP_SPILL, UDP_STOP_DRAINED, UDP_STOP_ERROR,
    UDP_STOP_LIMIT, UDP_STOP_NOBUFS, UDP_STOP_STOPPED, UDP_STOP_UNKNOWN, UdpPath, UdpRuns,
    UdpTemplates,
)
from passt_py.core.fastpath import (
    FAST_BACK_ACK, FAST_BACK_ERR, FAST_BACK_FULL, FAST_BACK_H2G, FAST_BACK_TIMER, FAST_EV_BACK,
    FastPath, tcp_send_window, tcp_sndbuf_limit,
)
from passt_py.core.repair import drop_all_filter

__all__ = [
    "API_VERSION", "BytesLike", "CSUM_AUTO", "CSUM_AVX2", "CSUM_SCALAR", "CaptureStats",
    "CoreError", "FAST_BACK_ACK", "FAST_BACK_ERR", "FAST_BACK_FULL", "FAST_BACK_H2G",
    "FAST_BACK_TIMER", "FAST_EV_BACK", "FastPath", "GuestMemory", "PKT_CODES", "PKT_HDR_MAX",
    "PKT_IP_EXT", "PKT_IP_FRAG", "PKT_IP_HDR", "PKT_IP_LEN", "PKT_L4_SHORT", "PKT_OK",
    "PKT_OTHER", "PKT_SHORT_ETH", "PKT_TCP_DOFF", "PKT_UDP_LEN", "PUSH_RX_JOIN_MAX",
    "PacketRecords", "RxResult", "SNAPLEN", "TCP_ACK", "TCP_CWR", "TCP_ECE", "TCP_FIN", "TCP_PSH",
    "TCP_RST", "TCP_RX_CSUM_PARTIAL", "TCP_RX_DATA_VALID", "TCP_RX_GSO", "TCP_RX_NO_FLUSH",
    "TCP_STOP_AGAIN", "TCP_STOP_DRAINED", "TCP_STOP_EOF", "TCP_STOP_LIMIT", "TCP_STOP_NOBUFS",
    "TCP_STOP_STOPPED", "TCP_STOP_WINDOW", "TCP_SYN", "TCP_URG", "TcpPath", "TcpRxResult",
    "TcpTemplate", "TxBatch", "UDP_RX_CSUM_PARTIAL", "UDP_RX_DATA_VALID", "UDP_SPILL",
    "UDP_STOP_DRAINED", "UDP_STOP_ERROR", "UDP_STOP_LIMIT", "UDP_STOP_NOBUFS",
    "UDP_STOP_STOPPED", "UDP_STOP_UNKNOWN", "UdpPath", "UdpRuns", "UdpTemplates",
    "VNET_F_DATA_VALID", "VNET_F_NEEDS_CSUM", "VNET_GSO_ECN", "VNET_GSO_NONE",
    "VNET_GSO_TCPV4", "VNET_GSO_TCPV6", "VNET_GSO_UDP", "VNET_GSO_UDP_L4", "VQ_ERRORS",
    "VQ_MAX_SIZE", "VRING_F_LOG", "Virtqueue", "bench_csum", "bench_memcpy", "check",
    "classify", "csum_fold", "csum_icmp4", "csum_impls", "csum_iov", "csum_ipv4_header",
    "csum_l4_ipv4", "csum_l4_ipv6", "csum_partial", "csum_partial_impl", "drop_all_filter",
    "ffi", "lib", "pseudo_ipv4", "pseudo_ipv6", "readv_all", "send_payload_runs",
    "send_payloads", "set_peek_offset", "tcp_build", "tcp_runs", "tcp_send_window",
    "tcp_sndbuf_limit", "writev_all",
]
