// SPDX-License-Identifier: MIT
/* fastpath.h - internal interface between fastpath.c (tables, the wait, UDP) and fast_tcp.c
 * (established TCP connections); not part of the cdef.
 */
#ifndef PASST_FASTPATH_H
#define PASST_FASTPATH_H

#include <stdint.h>
#include <sys/uio.h>

#include "passt_core.h"

enum {
	FAST_TX_FRAMES = 256,		/* frames per TX round: a whole ring of the usual size */
	FAST_TX_IOV = 2048,
	FAST_TX_ROUNDS = 4,		/* then the kick goes to Python, which defers the rest */
	FAST_EVENTS = 64,
	FAST_SPILL = 65536,
	SLOT_FREE = 0, SLOT_USED = 1, SLOT_GONE = 2,
	KEY_LEN = 37,			/* IP version, source, destination, ports */
	KEY_TCP = 0x80			/* in the version byte: a TCP connection's tuple */
};

/* What an event handler did with its event. */
enum { DONE, REPORT, REPORT_ERR };

struct fast_tcp;

/**
 * struct fast_entry - one registered flow side: a socket whose datagrams C delivers (RX
 *		       table, keyed by fd) or a guest tuple whose datagrams C sends (TX table);
 *		       or either side of a TCP connection C runs (@tcp set)
 * @key:	RX: 0, then the fd; TX: IP version (KEY_TCP added for TCP), source and
 *		destination address (16 bytes each, IPv4 as ::ffff:a.b.c.d), ports
 * @state:	SLOT_*
 * @muted:	RX: out of RX buffers, removed from the epoll set until pc_fast_rx_ready()
 * @fd:		the flow's socket (connected to its host peer)
 * @count:	datagrams moved since the count was last taken
 * @tcp:	the TCP connection both of its entries point to, or NULL (UDP)
 * @tmpl:	RX: header template of the socket's datagrams (its count unused)
 */
struct fast_entry {
	uint8_t key[KEY_LEN];
	uint8_t state;
	uint8_t muted;
	int32_t fd;
	uint64_t count;
	struct fast_tcp *tcp;
	struct pc_udp_flow tmpl;
};

/**
 * struct fast_table - open addressing, linear probing, tombstones; rebuilt (and resized)
 *		       when used and gone slots pass three quarters
 * @slot:	@cap slots, a power of two
 * @cap:	number of slots
 * @live:	used slots
 * @dead:	gone slots (tombstones)
 */
struct fast_table {
	struct fast_entry *slot;
	unsigned cap, live, dead;
};

/**
 * struct fast_tcp - a TCP connection C runs, and its work pending within one wait
 * @s:		the state Python handed over (and takes back)
 * @discard:	bytes the guest acknowledged, still in the socket's receive queue
 * @ack_due:	an ACK to the guest is due at the end of the TX round
 * @touched:	listed in pc_fast.touched
 * @in_more:	listed in pc_fast.more (host data left after its per-event share)
 * @in_back:	listed in pc_fast.backq, or already reported: Python takes it back
 * @rx_wait:	listed in pc_fast.rxwaitq: out of RX buffers until the guest's RX kick
 * @wnd_fresh:	pc_fast_tcp.last_wnd_raw still stands: no guest data taken since it was
 *		computed (the window only limits the guest's data)
 */
struct fast_tcp {
	struct pc_fast_tcp s;
	uint32_t discard;
	uint8_t ack_due, touched, in_more, in_back, rx_wait, wnd_fresh;
};

/**
 * struct pc_fast - fast-path tables, the rings they use, and scratch for one TX round
 * @rx:		RX ring, or NULL (datagrams from the host go to Python)
 * @tx:		TX ring, or NULL (kicks go to Python)
 * @kick_fd:	the TX ring's kick eventfd, or -1
 * @hdr_len:	virtio-net header length
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF
 * @rx_opts:	PC_UDP_RX_* checksum options
 * @rx_batch:	datagrams per socket and event
 * @max:	entries each table may hold
 * @rxt:	flow sockets, by fd
 * @txt:	guest tuples
 * @muted:	fds of muted entries (@nmuted of them, room for @muted_cap)
 * @stats:	counters
 * @spill:	spill buffer pc_udp_rx() needs (never used: templates take any peer)
 * @tcp_opts4:	PC_TCP_RX_* options of IPv4 connections (GSO, checksums)
 * @tcp_opts6:	the same for IPv6
 * @tcp_per_event: host bytes per connection and event, then the more list
 * @tcp_max_window: the largest window we offer (bytes)
 * @tx_more:	the TX ring had more than FAST_TX_ROUNDS rounds: drain on in the next pass
 * @ntcp:	TCP connections registered
 * @tcp_scratch: pc_tcp_rx() scratch, allocated with the first connection
 * @more:	connections with host data left (@nmore), room for 2 * @ntcp
 * @backq:	connections to hand back, not reported yet (@nback), room for @ntcp
 * @rxwaitq:	connections waiting for RX buffers (@nrxwait), room for @ntcp
 * @touched:	connections a TX round moved data or ACKs for (@ntouched)
 * @frames:	TX round scratch: frames, slices, bad chains, records, index list, runs, items
 */
struct pc_fast {
	struct pc_vq *rx, *tx;
	int kick_fd;
	size_t hdr_len;
	int mergeable;
	unsigned rx_opts, rx_batch;
	unsigned max;
	struct fast_table rxt, txt;
	int *muted;
	unsigned nmuted, muted_cap;
	struct pc_fast_stats stats;
	uint8_t *spill;
	unsigned tcp_opts4, tcp_opts6, tcp_per_event, tcp_max_window;
	unsigned ntcp, nmore, nback, ntouched, nrxwait, list_cap;
	int tx_more;
	struct pc_tcp_scratch *tcp_scratch;
	struct fast_tcp **more, **backq, **rxwaitq;
	struct fast_tcp *touched[FAST_TX_FRAMES];
	struct pc_tx_frame frames[FAST_TX_FRAMES];
	struct iovec iov[FAST_TX_IOV];
	struct pc_bad_chain bad[FAST_TX_FRAMES];
	struct pc_pkt recs[FAST_TX_FRAMES];
	uint32_t idx[FAST_TX_FRAMES];
	struct pc_udp_run runs[FAST_TX_FRAMES];
	struct pc_dgram_ref items[FAST_TX_FRAMES];
	struct pc_tcp_run truns[FAST_TX_FRAMES];
	struct pc_payload_ref pitems[FAST_TX_FRAMES];
};

/* fastpath.c: the tables */
struct fast_entry *fast_table_find(const struct fast_table *t, const uint8_t *key);
struct fast_entry *fast_table_get(struct fast_table *t, const uint8_t *key, unsigned max,
				  int *err);
void fast_table_drop(struct fast_table *t, struct fast_entry *e);
void fast_fd_key(uint8_t *key, int fd);
void fast_tuple_key(uint8_t *key, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		    uint16_t sport, uint16_t dport);

/* fast_tcp.c: the TCP connections' events */
int fast_tcp_sock(struct pc_fast *f, struct fast_tcp *t, uint32_t mask, int *placed);
int fast_tcp_head(struct pc_fast *f, const struct pc_pkt *p);
unsigned fast_tcp_prefix(struct pc_fast *f, unsigned n);
void fast_tcp_round_end(struct pc_fast *f, int *placed);
int fast_tcp_more(struct pc_fast *f, int *placed);
unsigned fast_tcp_report(struct pc_fast *f, struct pc_fast_event *out, unsigned room);
int fast_tcp_rx_ready(struct pc_fast *f);
void fast_tcp_free_all(struct pc_fast *f);

#endif /* PASST_FASTPATH_H */
