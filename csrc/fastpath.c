// SPDX-License-Identifier: MIT
/* fastpath.c - readiness events the C core handles inside the event loop's wait
 *
 * Theory of operation
 * -------------------
 * The interpreter's fixed cost per event (dispatch, handler, result decoding) is most of what
 * a UDP request/response or a UDP flood costs the back-end. The hot events of established UDP
 * flows need no decision Python does not take once per flow, so Python registers those flows
 * here and calls pc_fast_poll() instead of epoll_wait():
 *
 * - a UDP flow socket (connected to its host peer) that is readable: its datagrams go into
 *   the guest's RX buffers (pc_udp_rx() with the flow's header template);
 * - the TX ring's kick: the guest's frames are drained while they are datagrams of
 *   registered flows (tuple -> socket) and sent from guest memory (pc_send_udp_runs()).
 *
 * Anything else (other fds, other events, a frame that is not such a datagram, a bad chain, a
 * socket error, a stopped ring) is returned to Python as the plain epoll event it was, with
 * whatever C did not consume left where Python's own path finds it: a TX batch with a frame
 * C does not handle is given back from that frame on, a datagram C did not deliver stays in
 * its socket, a socket error is reported as EPOLLERR (Python reads the error queue).
 *
 * The tables are caches of Python's flow table: Python adds an entry when a flow can take
 * this path and removes it before the socket closes. Activity counts per entry let Python's
 * flow expiry see traffic it did not handle.
 *
 * The same tables and wait carry established TCP connections whose steady state C runs
 * (fast_tcp.c): their sockets by fd, their guest tuples with KEY_TCP in the version byte. A TX
 * round is cut by its head frame's kind (UDP datagrams or TCP segments of registered
 * entries) and taken up to the first frame of another kind; the next round looks again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "passt_core.h"
#include "guest_mem.h"
#include "wire.h"
#include "fastpath.h"

enum { TABLE_MIN = 64 };

/* ---- tables ---- */

/**
 * hash_key() - the home slot of a key (FNV-1a over its KEY_LEN bytes)
 * @k:		KEY_LEN bytes
 * @cap:	slots in the table, a power of two
 * Return: slot index below @cap
 */
static unsigned hash_key(const uint8_t *k, unsigned cap)
{
	uint32_t h = 2166136261u;	/* FNV-1a */
	unsigned i;

	for (i = 0; i < KEY_LEN; i++)
		h = (h ^ k[i]) * 16777619u;
	return h & (cap - 1);
}

/**
 * table_init() - an empty table of TABLE_MIN slots
 * @t:		the table (its previous slots, if any, are not freed)
 * Return: 0, or -ENOMEM (then @t->slot is NULL)
 */
static int table_init(struct fast_table *t)
{
	t->slot = calloc(TABLE_MIN, sizeof(*t->slot));
	t->cap = TABLE_MIN;
	t->live = t->dead = 0;
	return t->slot ? 0 : -ENOMEM;
}

/**
 * fast_table_find() - look a key up
 * @t:		the table
 * @key:	KEY_LEN bytes
 * Return: its live entry, or NULL
 */
struct fast_entry *fast_table_find(const struct fast_table *t, const uint8_t *key)
{
	unsigned i, n;

	for (i = hash_key(key, t->cap), n = 0; n < t->cap; i = (i + 1) & (t->cap - 1), n++) {
		struct fast_entry *e = &t->slot[i];

		if (e->state == SLOT_FREE)
			return NULL;
		if (e->state == SLOT_USED && !memcmp(e->key, key, KEY_LEN))
			return e;
	}
	return NULL;
}

/**
 * table_rebuild() - reinsert the live entries into new slots: no tombstones left
 * @t:		the table
 *
 * The new size is the smallest power of two (at least TABLE_MIN) of four times the live
 * entries plus one, so that the entry about to be added fits.
 *
 * Return: 0, or -ENOMEM (the table is left as it was)
 */
static int table_rebuild(struct fast_table *t)
{
	unsigned cap = TABLE_MIN, k;
	struct fast_entry *slot;

	while (cap < 4 * ((size_t)t->live + 1) && cap < (1u << 30))
		cap <<= 1;
	slot = calloc(cap, sizeof(*slot));
	if (!slot)
		return -ENOMEM;
	for (k = 0; k < t->cap; k++) {
		unsigned i;

		if (t->slot[k].state != SLOT_USED)
			continue;
		for (i = hash_key(t->slot[k].key, cap); slot[i].state; i = (i + 1) & (cap - 1))
			;
		slot[i] = t->slot[k];
	}
	free(t->slot);
	t->slot = slot;
	t->cap = cap;
	t->dead = 0;
	return 0;
}

/**
 * fast_table_get() - the entry of a key, added if new
 * @t:		the table
 * @key:	KEY_LEN bytes
 * @max:	live entries the table may hold
 * @err:	set to -ENOSPC at @max entries, or -ENOMEM, when NULL is returned
 *
 * A new entry is zeroed but for its key and state; the table is rebuilt first when used and
 * gone slots would pass three quarters of it.
 *
 * Return: the entry, or NULL
 */
struct fast_entry *fast_table_get(struct fast_table *t, const uint8_t *key, unsigned max,
				    int *err)
{
	struct fast_entry *e = fast_table_find(t, key);
	unsigned i;

	if (e)
		return e;
	if (t->live >= max) {
		*err = -ENOSPC;
		return NULL;
	}
	if (4 * (t->live + t->dead + 1) > 3 * t->cap && table_rebuild(t)) {
		*err = -ENOMEM;
		return NULL;
	}
	for (i = hash_key(key, t->cap); t->slot[i].state == SLOT_USED; i = (i + 1) & (t->cap - 1))
		;
	e = &t->slot[i];
	if (e->state == SLOT_GONE)
		t->dead--;
	t->live++;
	memset(e, 0, sizeof(*e));
	memcpy(e->key, key, KEY_LEN);
	e->state = SLOT_USED;
	return e;
}

/**
 * fast_table_drop() - turn a live entry into a tombstone
 * @t:		the table
 * @e:		its live entry (its fields stay readable until the slot is reused)
 */
void fast_table_drop(struct fast_table *t, struct fast_entry *e)
{
	e->state = SLOT_GONE;
	t->live--;
	t->dead++;
}

/**
 * fast_fd_key() - the RX table key of a socket: a zero byte, then the fd
 * @key:	KEY_LEN bytes
 * @fd:		the socket
 */
void fast_fd_key(uint8_t *key, int fd)
{
	memset(key, 0, KEY_LEN);
	memcpy(key + 1, &fd, sizeof(fd));
}

/**
 * fast_tuple_key() - the TX table key of a guest tuple
 * @key:	KEY_LEN bytes
 * @ipver:	4 or 6, plus KEY_TCP for a TCP connection
 * @src:	source address, 16 bytes (IPv4 as ::ffff:a.b.c.d)
 * @dst:	destination address, likewise
 * @sport:	source port
 * @dport:	destination port
 */
void fast_tuple_key(uint8_t *key, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		    uint16_t sport, uint16_t dport)
{
	key[0] = (uint8_t)ipver;
	memcpy(key + 1, src, 16);
	memcpy(key + 17, dst, 16);
	key[33] = (uint8_t)(sport >> 8);
	key[34] = (uint8_t)sport;
	key[35] = (uint8_t)(dport >> 8);
	key[36] = (uint8_t)dport;
}

/**
 * fd_find() - the RX table entry of a socket, UDP flow or TCP connection
 * @f:		fast path
 * @fd:		the socket
 * Return: the entry, or NULL
 */
static struct fast_entry *fd_find(const struct pc_fast *f, int fd)
{
	uint8_t key[KEY_LEN];

	fast_fd_key(key, fd);
	return fast_table_find(&f->rxt, key);
}

/**
 * rx_find() - the RX table entry of a UDP flow's socket
 * @f:		fast path
 * @fd:		the socket
 * Return: the entry, or NULL (also for a TCP connection's: the UDP calls never see those)
 */
static struct fast_entry *rx_find(const struct pc_fast *f, int fd)
{
	struct fast_entry *e = fd_find(f, fd);

	return e && !e->tcp ? e : NULL;
}

/**
 * tx_find() - the TX table entry of a guest tuple
 * @f:		fast path
 * @ipver:	as for fast_tuple_key()
 * @src:	as for fast_tuple_key()
 * @dst:	as for fast_tuple_key()
 * @sport:	as for fast_tuple_key()
 * @dport:	as for fast_tuple_key()
 * Return: the entry, or NULL
 */
static struct fast_entry *tx_find(const struct pc_fast *f, unsigned ipver, const uint8_t *src,
				  const uint8_t *dst, uint16_t sport, uint16_t dport)
{
	uint8_t key[KEY_LEN];

	fast_tuple_key(key, ipver, src, dst, sport, dport);
	return fast_table_find(&f->txt, key);
}

/**
 * forget() - drop an entry, and its fd from the muted list
 * @f:		fast path
 * @t:		the table holding it
 * @e:		the entry
 * Return: its count (datagrams moved since the count was last taken)
 */
static int64_t forget(struct pc_fast *f, struct fast_table *t, struct fast_entry *e)
{
	unsigned k;

	for (k = 0; e->muted && k < f->nmuted; k++) {
		if (f->muted[k] == e->fd) {
			f->muted[k] = f->muted[--f->nmuted];
			break;
		}
	}
	fast_table_drop(t, e);
	return (int64_t)e->count;
}

/**
 * take_count() - an entry's count, which is then reset
 * @e:		the entry, or NULL
 * Return: the count, or -ENOENT for NULL
 */
static int64_t take_count(struct fast_entry *e)
{
	int64_t n;

	if (!e)
		return -ENOENT;
	n = (int64_t)e->count;
	e->count = 0;
	return n;
}

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
	f->spill = malloc(FAST_SPILL);
	if (!f->spill || table_init(&f->rxt) || table_init(&f->txt)) {
		pc_fast_free(f);
		return NULL;
	}
	f->max = max_entries;
	f->kick_fd = -1;
	f->hdr_len = 12;
	f->rx_batch = 64;
	f->tcp_per_event = 1u << 20;
	f->tcp_max_window = 0xFFFFu << 8;
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
	if (f->rxt.slot)
		fast_tcp_free_all(f);
	free(f->rxt.slot);
	free(f->txt.slot);
	free(f->muted);
	free(f->spill);
	free(f->tcp_scratch);
	free(f->more);
	free(f->backq);
	free(f->rxwaitq);
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
	f->rx = rx;
	f->hdr_len = hdr_len;
	f->mergeable = mergeable;
	f->rx_opts = opts & (PC_UDP_RX_CSUM_PARTIAL | PC_UDP_RX_DATA_VALID);
	f->rx_batch = batch ? batch : 1;
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
	uint8_t key[KEY_LEN];
	struct fast_entry *e;
	int err = 0;

	if (fd < 0 || (tmpl->ipver != 4 && tmpl->ipver != 6))
		return -EINVAL;
	fast_fd_key(key, fd);
	e = fast_table_get(&f->rxt, key, f->max, &err);
	if (!e)
		return err;
	e->fd = fd;
	e->tmpl = *tmpl;
	e->tmpl.any_peer = 1;
	return 0;
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
	uint8_t key[KEY_LEN];
	struct fast_entry *e;
	int err = 0;

	if (fd < 0 || (ipver != 4 && ipver != 6))
		return -EINVAL;
	fast_tuple_key(key, ipver, src, dst, sport, dport);
	e = fast_table_get(&f->txt, key, f->max, &err);
	if (!e)
		return err;
	e->fd = fd;
	return 0;
}

/**
 * pc_fast_remove_rx() - forget a socket's entry (before the socket is closed)
 * @f:		fast path
 * @fd:		the socket
 * Return: datagrams delivered since its count was last taken, or -ENOENT
 */
int64_t pc_fast_remove_rx(struct pc_fast *f, int fd)
{
	struct fast_entry *e = rx_find(f, fd);

	return e ? forget(f, &f->rxt, e) : -ENOENT;
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
	struct fast_entry *e = tx_find(f, ipver, src, dst, sport, dport);

	return e ? forget(f, &f->txt, e) : -ENOENT;
}

/**
 * pc_fast_rx_count() - datagrams delivered from a socket since the caller last asked
 * @f:		fast path
 * @fd:		the socket
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t pc_fast_rx_count(struct pc_fast *f, int fd)
{
	return take_count(rx_find(f, fd));
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
	return take_count(tx_find(f, ipver, src, dst, sport, dport));
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
	struct fast_table rxt, txt;

	if (table_init(&rxt) || table_init(&txt)) {
		free(rxt.slot);
		free(txt.slot);
		return -ENOMEM;
	}
	fast_tcp_free_all(f);
	pc_fast_rx_ready(f, epfd);
	free(f->rxt.slot);
	free(f->txt.slot);
	f->rxt = rxt;
	f->txt = txt;
	return 0;
}

/**
 * pc_fast_stats() - copy the counters out
 * @f:		fast path
 * @out:	counters
 */
void pc_fast_stats(const struct pc_fast *f, struct pc_fast_stats *out)
{
	*out = f->stats;
	out->rx_entries = f->rxt.live - f->ntcp;
	out->tx_entries = f->txt.live - f->ntcp;
	out->tcp_entries = f->ntcp;
	out->muted = f->nmuted;
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
	int n = 0;

	while (f->nmuted) {
		int fd = f->muted[--f->nmuted];
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
		struct fast_entry *e = rx_find(f, fd);

		if (e)
			e->muted = 0;
		if (!epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev))
			n++;
	}
	return n + fast_tcp_rx_ready(f);
}

/**
 * mute() - take a socket out of the epoll set until pc_fast_rx_ready()
 * @f:		fast path
 * @epfd:	the epoll set
 * @e:		the socket's entry
 *
 * The fd stays registered with an empty event mask, so restoring it is one EPOLL_CTL_MOD.
 *
 * Return: 0, or -errno (the entry is left as it was)
 */
static int mute(struct pc_fast *f, int epfd, struct fast_entry *e)
{
	struct epoll_event ev = { .events = 0, .data.fd = e->fd };

	if (f->nmuted == f->muted_cap) {
		unsigned cap = f->muted_cap ? 2 * f->muted_cap : 16;
		int *m = realloc(f->muted, cap * sizeof(*m));

		if (!m)
			return -ENOMEM;
		f->muted = m;
		f->muted_cap = cap;
	}
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, e->fd, &ev))
		return -errno;
	e->muted = 1;
	f->muted[f->nmuted++] = e->fd;
	return 0;
}

/* ---- the events ---- */

/**
 * fast_rx() - a UDP flow socket is readable: its datagrams into the guest's RX buffers
 * @f:		fast path
 * @epfd:	the epoll set (to mute the socket when RX buffers run out)
 * @e:		the socket's entry
 * @placed:	set when RX buffers were filled
 * Return: DONE, REPORT (Python handles the event) or REPORT_ERR (a socket error)
 */
static int fast_rx(struct pc_fast *f, int epfd, struct fast_entry *e, int *placed)
{
	struct pc_udp_rx_result res;
	int ret;

	ret = pc_udp_rx(f->rx, e->fd, &e->tmpl, 1, f->hdr_len, f->mergeable, f->rx_batch,
			f->rx_opts | PC_UDP_RX_NO_FLUSH, f->spill, FAST_SPILL, &res);
	f->stats.dropped += res.dropped;
	f->stats.rx_dgrams += res.dgrams;
	e->count += res.dgrams;
	if (res.bufs)
		*placed = 1;
	if (ret < 0)
		return REPORT;
	switch (res.stop) {
	case PC_UDP_STOP_DRAINED:
	case PC_UDP_STOP_LIMIT:		/* level-triggered: the next wait reports the rest */
		return DONE;
	case PC_UDP_STOP_NOBUFS:	/* mute until the guest adds buffers (its RX kick) */
		return mute(f, epfd, e) ? REPORT : DONE;
	case PC_UDP_STOP_ERROR:
		return REPORT_ERR;
	default:			/* stopped ring, or a datagram spilled (cannot happen) */
		return REPORT;
	}
}

/**
 * tx_prefix() - send the registered datagrams of a classified round, in order, up to the
 *		 first frame that is not one
 * @f:		fast path (recs, frames, iov hold the round)
 * @n:		frames in the round
 *
 * A datagram refused with ECONNREFUSED (an earlier ICMP error, cleared by that send) is sent
 * once more on its own; other failures are counted as drops.
 *
 * Return: frames taken (a prefix); 0 when nothing was sent (Python's path decides)
 */
static unsigned tx_prefix(struct pc_fast *f, unsigned n)
{
	unsigned r, k = 0, nruns = 0;
	int nr, failed;

	for (r = 0; r < n; r++)
		f->idx[r] = r;
	nr = pc_udp_runs(f->recs, n, f->idx, n, f->runs, FAST_TX_FRAMES);
	if (nr <= 0)
		return 0;
	for (r = 0; r < (unsigned)nr; r++) {
		const struct pc_pkt *p = &f->recs[f->runs[r].first];
		struct fast_entry *e;

		if (!f->runs[r].udp)
			break;
		e = tx_find(f, p->ipver, p->src, p->dst, p->sport, p->dport);
		if (!e)
			break;
		f->runs[r].fd = e->fd;
		e->count += f->runs[r].count;
		k += f->runs[r].count;
		nruns++;
	}
	if (!k)
		return 0;
	failed = pc_send_udp_runs(f->frames, n, f->iov, FAST_TX_IOV, f->recs, n, f->idx, k,
				  f->runs, nruns, f->items);
	if (failed < 0)
		return 0;	/* nothing was sent: Python's path decides */
	for (r = 0; failed && r < k; r++) {
		struct pc_dgram_ref *it = &f->items[r];

		if (!it->err)
			continue;
		if (it->err == -ECONNREFUSED) {
			/* A pending error from an earlier ICMP message, cleared by this send:
			 * once more, alone (the items array is this one's scratch). */
			struct pc_dgram_ref one = *it;
			struct pc_udp_run run = { .first = 0, .count = 1, .fd = it->fd, .udp = 1 };
			uint32_t at = it->frame;

			one.err = 0;
			if (pc_send_udp_runs(f->frames, n, f->iov, FAST_TX_IOV, f->recs, n, &at,
					     1, &run, 1, &one) == 0)
				continue;
		}
		f->stats.dropped++;
	}
	f->stats.tx_dgrams += k;
	return k;
}

/* What the ring's first frame is, at a look at it alone (put back at once): HEAD_EMPTY,
 * HEAD_OTHER (Python's business), HEAD_UDP (a datagram of a registered tuple) or HEAD_TCP (a
 * segment of a registered connection). A kick while other traffic flows then costs one chain
 * walk, not a whole batch's walk and classification done twice. */
enum { HEAD_EMPTY, HEAD_OTHER, HEAD_UDP, HEAD_TCP };

/**
 * head_kind() - what the TX ring's first frame is, from a look at it alone
 * @f:		fast path (its first frame, slice and record entries are used as scratch)
 * @mark:	the TX ring's avail position, to put the frame back at once
 * Return: HEAD_EMPTY, HEAD_OTHER, HEAD_UDP or HEAD_TCP
 */
static int head_kind(struct pc_fast *f, uint16_t mark)
{
	const struct pc_pkt *p = &f->recs[0];
	unsigned nbad;
	int n;

	n = pc_vq_pop_tx(f->tx, 1, f->hdr_len, f->frames, f->iov, FAST_TX_IOV, f->bad, &nbad);
	pc_vq_rx_seek(f->tx, mark);
	if (n <= 0)
		return n == 0 && !nbad ? HEAD_EMPTY : HEAD_OTHER;
	if (pc_classify(f->frames, f->iov, FAST_TX_IOV, 1, f->recs) < 0 ||
	    p->valid != PC_PKT_OK)
		return HEAD_OTHER;
	if (p->proto == PROTO_UDP && !p->gso_type &&
	    tx_find(f, p->ipver, p->src, p->dst, p->sport, p->dport))
		return HEAD_UDP;
	if (p->proto == PROTO_TCP && f->ntcp && fast_tcp_head(f, p))
		return HEAD_TCP;
	return HEAD_OTHER;
}

/**
 * fast_tx() - the TX kick: drain datagrams of registered tuples and segments of registered
 *	       connections, a round per run of one kind
 * @f:		fast path
 * @placed:	set when RX buffers were filled (ACKs and data sent to the guest)
 * @consume:	read the kick eventfd first
 *
 * After FAST_TX_ROUNDS rounds the rest waits for the next pass of the wait (tx_more), after
 * the other events, as Python's drain defers it.
 *
 * Return: DONE when the ring is empty or the rest is deferred, REPORT when a frame C does
 *	   not handle (or a bad chain, or a broken ring) leaves the rest to Python
 */
static int fast_tx(struct pc_fast *f, int *placed, int consume)
{
	uint64_t v;
	unsigned round;

	if (consume && read(f->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return REPORT;
	for (round = 0; round < FAST_TX_ROUNDS; round++) {
		uint16_t mark = pc_vq_rx_mark(f->tx);	/* an avail position (any ring) */
		int n, kind = head_kind(f, mark), ret = REPORT;
		unsigned nbad, k;

		if (kind == HEAD_EMPTY)
			return DONE;
		if (kind == HEAD_OTHER)
			return REPORT;
		n = pc_vq_pop_tx(f->tx, FAST_TX_FRAMES, f->hdr_len, f->frames, f->iov,
				 FAST_TX_IOV, f->bad, &nbad);
		if (n < 0)
			return REPORT;
		if (!n && !nbad)
			return DONE;
		if (nbad || pc_classify(f->frames, f->iov, FAST_TX_IOV, (unsigned)n, f->recs) < 0) {
			pc_vq_rx_seek(f->tx, mark);	/* Python's path reports bad chains */
			return REPORT;
		}
		k = kind == HEAD_UDP ? tx_prefix(f, (unsigned)n) : fast_tcp_prefix(f, (unsigned)n);
		/* The chains from the first frame not taken on go back, unused, for Python (or
		 * for the next round, when they start with frames of the other kind). */
		pc_vq_rx_seek(f->tx, (uint16_t)(mark + k));
		if (!k || (pc_vq_release(f->tx, f->frames, k, f->bad, 0) >= 0))
			ret = k ? DONE : REPORT;
		fast_tcp_round_end(f, placed);
		if (ret != DONE)
			return ret;
	}
	f->tx_more = 1;		/* more than the rounds' worth: again after the other events */
	return DONE;
}

/**
 * now_ms() - the monotonic clock, in milliseconds (pc_fast_poll()'s overall timeout)
 * Return: CLOCK_MONOTONIC as milliseconds
 */
static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/**
 * pc_fast_poll() - epoll_wait() that handles the fast events itself
 * @f:		fast path
 * @epfd:	the event loop's epoll set (registered with data.fd set to the fd)
 * @timeout_ms:	as for epoll_wait() (-1: no limit)
 * @out:	events for the caller: fd and mask
 * @max_out:	room in @out
 *
 * Waits again after a wake-up that brought only events handled here, until @timeout_ms has
 * passed overall: the caller's timers are due then. RX buffers filled here are published
 * (and the guest notified) before returning or waiting again.
 *
 * Return: events in @out (0: timeout, or interrupted by a signal), or -errno
 */
int pc_fast_poll(struct pc_fast *f, int epfd, int timeout_ms, struct pc_fast_event *out,
		 unsigned max_out)
{
	struct epoll_event ev[FAST_EVENTS];
	int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
	int wait = timeout_ms;

	if (!max_out)
		return -EINVAL;
	for (;;) {
		unsigned k = fast_tcp_report(f, out, max_out), room = max_out - k;
		int n, i, placed = 0, busy = 0;

		if (!room)
			return (int)k;
		n = epoll_wait(epfd, ev, (int)(room < FAST_EVENTS ? room : FAST_EVENTS),
			       k || f->nmore || f->tx_more ? 0 : wait);
		if (n < 0)
			return errno == EINTR ? (int)k : -errno;
		for (i = 0; i < n; i++) {
			int fd = ev[i].data.fd, how = REPORT;
			uint32_t mask = ev[i].events;
			struct fast_entry *e;

			if (mask == EPOLLIN && fd == f->kick_fd && f->tx && f->txt.live &&
			    pc_vq_started(f->tx))
				how = fast_tx(f, &placed, 1);
			else if (f->rxt.live && !(mask & ~(uint32_t)(EPOLLIN | EPOLLOUT)) &&
				 (e = fd_find(f, fd))) {
				if (e->tcp)
					how = fast_tcp_sock(f, e->tcp, mask, &placed);
				else if (mask == EPOLLIN && f->rx)
					how = fast_rx(f, epfd, e, &placed);
			}
			if (how == DONE) {
				f->stats.handled++;
				continue;
			}
			out[k].fd = fd;
			out[k].events = mask | (how == REPORT_ERR ? (uint32_t)EPOLLERR : 0);
			k++;
		}
		if (f->nmore)
			busy = fast_tcp_more(f, &placed);
		if (f->tx_more && k < max_out) {
			f->tx_more = 0;
			busy = 1;
			if (f->tx && f->txt.live && pc_vq_started(f->tx) &&
			    fast_tx(f, &placed, 0) == DONE) {
				f->stats.handled++;
			} else if (f->kick_fd >= 0) {	/* Python drains what C leaves */
				out[k].fd = f->kick_fd;
				out[k].events = EPOLLIN;
				k++;
			}
		}
		k += fast_tcp_report(f, out + k, max_out - k);
		if (placed)
			pc_vq_flush(f->rx);
		f->stats.reported += k;
		if (k || timeout_ms == 0)
			return (int)k;
		if (!n && !busy && !f->nmore && !f->tx_more)
			return 0;			/* the wait timed out */
		if (timeout_ms > 0) {
			int64_t left = deadline - now_ms();

			if (left <= 0)
				return 0;
			wait = (int)left;
		}
	}
}
