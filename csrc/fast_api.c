// SPDX-License-Identifier: MIT
/* fast_api.c - the fast path's public calls: life cycle, settings and flow registration
 *
 * Theory of operation
 * -------------------
 * Python sees one object, struct pc_fast (passt_core.h, section fastpath), and these calls on
 * it; the wait itself is pc_fast_poll() in fastpath.c. The object holds what the protocol
 * units share (struct fast_ctx: the RX ring and its settings, the two registration tables of
 * fast_table.c, the counters) and one part per unit. Each call here only routes: a UDP
 * flow's registration, removal and counts go to fast_udp.c, a TCP connection's to
 * fast_tcp.c, each with the shared context as a parameter; what concerns the whole object
 * (allocation, rings, clearing every entry, the counters, the guest's RX kick) is done here
 * by asking each unit for its share. The units never call back into this file.
 */
#include <errno.h>
#include <stdlib.h>

#include "fastpath.h"

/**
 * pc_fast_new() - allocate empty tables
 * @max_entries: flows each table may hold (the flow table's limit)
 * Return: the fast path, or NULL without memory. Free with pc_fast_free().
 */
struct pc_fast *pc_fast_new(unsigned max_entries)
{
	struct pc_fast *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->udp = fast_udp_new();
	f->tcp = fast_tcp_new();
	if (!f->udp || !f->tcp || fast_table_init(&f->c.rxt) || fast_table_init(&f->c.txt)) {
		pc_fast_free(f);
		return NULL;
	}
	f->c.max = max_entries;
	f->c.hdr_len = 12;
	f->kick_fd = -1;
	return f;
}

/**
 * pc_fast_free() - release the tables (NULL is fine)
 * @f:		fast path
 */
void pc_fast_free(struct pc_fast *f)
{
	if (!f)
		return;
	if (f->tcp)
		fast_tcp_drop_all(f->tcp, &f->c);
	fast_tcp_free(f->tcp);
	fast_udp_free(f->udp);
	fast_table_release(&f->c.rxt);
	fast_table_release(&f->c.txt);
	free(f);
}

/**
 * pc_fast_set_rx() - the RX ring datagrams go into, or NULL to hand every datagram to Python
 * @f:		fast path
 * @rx:		running, enabled RX ring, or NULL
 * @hdr_len:	virtio-net header length (10 or 12)
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF
 * @opts:	PC_UDP_RX_CSUM_PARTIAL or PC_UDP_RX_DATA_VALID, as for pc_udp_rx()
 * @batch:	datagrams per socket and event (at least 1)
 */
void pc_fast_set_rx(struct pc_fast *f, struct pc_vq *rx, size_t hdr_len, int mergeable,
		    unsigned opts, unsigned batch)
{
	f->c.rx = rx;
	f->c.hdr_len = hdr_len;
	f->c.mergeable = mergeable;
	fast_udp_set_rx(f->udp, opts, batch);
}

/**
 * pc_fast_set_tx() - the TX ring and its kick fd, or NULL/-1 to hand every kick to Python
 * @f:		fast path
 * @tx:		running, enabled TX ring, or NULL
 * @kick_fd:	its kick eventfd (in the epoll set), or -1
 */
void pc_fast_set_tx(struct pc_fast *f, struct pc_vq *tx, int kick_fd)
{
	f->tx = tx;
	f->kick_fd = tx ? kick_fd : -1;
}

/**
 * pc_fast_add_rx() - deliver a UDP flow socket's datagrams in C (replaces an entry of @fd)
 * @f:		fast path
 * @fd:		the flow's socket, connected to its host peer, in the epoll set for EPOLLIN
 * @tmpl:	header template of its datagrams (any_peer is forced: the socket has one peer)
 * Return: 0, -EINVAL, -ENOSPC when the table holds its maximum, or -ENOMEM
 */
int pc_fast_add_rx(struct pc_fast *f, int fd, const struct pc_udp_flow *tmpl)
{
	return fast_udp_add_rx(&f->c, fd, tmpl);
}

/**
 * pc_fast_add_tx() - send the guest's datagrams of a UDP tuple in C (replaces an entry)
 * @f:		fast path
 * @ipver:	4 or 6
 * @src:	guest address (16 bytes, IPv4 as ::ffff:a.b.c.d)
 * @dst:	address the guest sends to (same form)
 * @sport:	guest port
 * @dport:	destination port
 * @fd:		the flow's socket, connected to the host peer
 * Return: 0, -EINVAL, -ENOSPC when the table holds its maximum, or -ENOMEM
 */
int pc_fast_add_tx(struct pc_fast *f, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		   uint16_t sport, uint16_t dport, int fd)
{
	return fast_udp_add_tx(&f->c, ipver, src, dst, sport, dport, fd);
}

/**
 * pc_fast_remove_rx() - forget a socket's entry (before the socket is closed)
 * @f:		fast path
 * @fd:		the socket
 * Return: datagrams delivered since its count was last taken, or -ENOENT
 */
int64_t pc_fast_remove_rx(struct pc_fast *f, int fd)
{
	return fast_udp_remove_rx(f->udp, &f->c, fd);
}

/**
 * pc_fast_remove_tx() - forget a tuple's entry
 * @f:		fast path
 * @ipver:	as for pc_fast_add_tx()
 * @src:	as for pc_fast_add_tx()
 * @dst:	as for pc_fast_add_tx()
 * @sport:	as for pc_fast_add_tx()
 * @dport:	as for pc_fast_add_tx()
 * Return: datagrams sent since its count was last taken, or -ENOENT
 */
int64_t pc_fast_remove_tx(struct pc_fast *f, unsigned ipver, const uint8_t *src,
			  const uint8_t *dst, uint16_t sport, uint16_t dport)
{
	return fast_udp_remove_tx(f->udp, &f->c, ipver, src, dst, sport, dport);
}

/**
 * pc_fast_rx_count() - datagrams delivered from a socket since the caller last asked
 * @f:		fast path
 * @fd:		the socket
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t pc_fast_rx_count(struct pc_fast *f, int fd)
{
	return fast_udp_rx_count(&f->c, fd);
}

/**
 * pc_fast_tx_count() - guest datagrams of a tuple sent since the caller last asked
 * @f:		fast path
 * @ipver:	as for pc_fast_add_tx()
 * @src:	as for pc_fast_add_tx()
 * @dst:	as for pc_fast_add_tx()
 * @sport:	as for pc_fast_add_tx()
 * @dport:	as for pc_fast_add_tx()
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t pc_fast_tx_count(struct pc_fast *f, unsigned ipver, const uint8_t *src,
			 const uint8_t *dst, uint16_t sport, uint16_t dport)
{
	return fast_udp_tx_count(&f->c, ipver, src, dst, sport, dport);
}

/**
 * pc_fast_clear() - forget every entry (a new front-end, the guest's MAC changed);
 *		    TCP connections are dropped with their state: take them back first
 * @f:		fast path
 * @epfd:	epoll set muted sockets are restored in
 * Return: 0, or -ENOMEM (the tables are then left as they were)
 */
int pc_fast_clear(struct pc_fast *f, int epfd)
{
	struct fast_table rxt = { 0 }, txt = { 0 };

	if (fast_table_init(&rxt) || fast_table_init(&txt)) {
		fast_table_release(&rxt);
		fast_table_release(&txt);
		return -ENOMEM;
	}
	fast_tcp_drop_all(f->tcp, &f->c);
	pc_fast_rx_ready(f, epfd);
	fast_table_release(&f->c.rxt);
	fast_table_release(&f->c.txt);
	f->c.rxt = rxt;
	f->c.txt = txt;
	return 0;
}

/**
 * pc_fast_stats() - copy the counters out
 * @f:		fast path
 * @out:	counters
 */
void pc_fast_stats(const struct pc_fast *f, struct pc_fast_stats *out)
{
	unsigned ntcp = fast_tcp_count(f->tcp);

	*out = f->c.stats;
	out->rx_entries = f->c.rxt.live - ntcp;
	out->tx_entries = f->c.txt.live - ntcp;
	out->tcp_entries = ntcp;
	out->muted = fast_udp_muted(f->udp);
}

/**
 * pc_fast_rx_ready() - the guest added RX buffers: sockets muted for lack of them read again,
 *		       TCP connections that waited for them send (RX buffers published)
 * @f:		fast path
 * @epfd:	the epoll set
 * Return: sockets restored and connections resumed
 */
int pc_fast_rx_ready(struct pc_fast *f, int epfd)
{
	int n = fast_udp_rx_ready(f->udp, &f->c, epfd);

	return n + fast_tcp_rx_ready(f->tcp, &f->c);
}

/**
 * pc_fast_set_tcp() - how TCP connections' data goes into the RX ring
 * @f:		fast path
 * @opts4:	PC_TCP_RX_* options (GSO, checksums) for IPv4 connections
 * @opts6:	the same for IPv6
 * @per_event:	host bytes per connection and event (then after the other events)
 * @max_window:	the largest window offered to the guest, bytes
 */
void pc_fast_set_tcp(struct pc_fast *f, unsigned opts4, unsigned opts6, unsigned per_event,
		     unsigned max_window)
{
	fast_tcp_set(f->tcp, opts4, opts6, per_event, max_window);
}

/**
 * pc_fast_add_tcp() - run an established connection's steady state in C
 * @f:		fast path
 * @conn:	its state (back and the counters are reset); @conn->fd in the epoll set
 *		(edge-triggered), with SO_PEEK_OFF enabled
 * Return: 0, -EINVAL, -EEXIST if its socket or tuple has an entry, -ENOSPC when a table holds
 *	   its maximum, or -ENOMEM
 */
int pc_fast_add_tcp(struct pc_fast *f, const struct pc_fast_tcp *conn)
{
	return fast_tcp_add(f->tcp, &f->c, conn);
}

/**
 * pc_fast_remove_tcp() - take a connection back from C (before its socket closes, or when
 *			  Python handles one of its events)
 * @f:		fast path
 * @fd:		its socket
 * @out:	its state now: back says what C left for Python (PC_FAST_BACK_H2G also when
 *		host data was left for later), the counters what moved since it was added
 * Return: 0, or -ENOENT without an entry (@out untouched)
 */
int pc_fast_remove_tcp(struct pc_fast *f, int fd, struct pc_fast_tcp *out)
{
	return fast_tcp_remove(f->tcp, &f->c, fd, out);
}

/**
 * pc_fast_tcp_events() - events C handled for a connection since the caller last asked
 * @f:		fast path
 * @fd:		its socket
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t pc_fast_tcp_events(struct pc_fast *f, int fd)
{
	return fast_tcp_events(&f->c, fd);
}
