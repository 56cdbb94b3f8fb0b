// SPDX-License-Identifier: MIT
/* fast_udp.c - the steady state of registered UDP flows, inside the loop's wait
 *
 * Theory of operation
 * -------------------
 * The interpreter's fixed cost per event (dispatch, handler, result decoding) is most of what
 * a UDP request/response or a UDP flood costs the back-end. The hot events of established UDP
 * flows need no decision Python does not take once per flow, so Python registers those flows
 * with the fast path (pc_fast_add_rx(), pc_fast_add_tx()) and this unit runs them:
 *
 * - a flow socket (connected to its host peer) that is readable: its datagrams go into the
 *   guest's RX buffers (pc_udp_rx() with the flow's header template); out of RX buffers, the
 *   socket is muted (left in the epoll set with no events) until the guest's RX kick;
 * - a TX round whose head frame is a datagram of a registered tuple: the datagrams of
 *   registered tuples are sent from guest memory (pc_send_udp_runs()), in order, up to the
 *   first frame that is not one.
 *
 * The entries are FAST_KIND_UDP entries of the shared tables (fast_table.h); their union part
 * (struct fast_udp_entry) is this unit's: the activity count that lets Python's flow expiry
 * see traffic it did not handle, the muted flag and the RX template. What this unit does not
 * handle (a socket error, a stopped ring, a datagram from another peer) it reports to the
 * dispatcher, which hands the plain epoll event to Python with whatever was not consumed left
 * where Python's own path finds it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "passt_core.h"
#include "wire.h"
#include "fast_udp.h"

enum { FAST_SPILL = 65536 };

/**
 * struct fast_udp_part - the UDP unit's own state
 * @rx_opts:	PC_UDP_RX_* checksum options
 * @rx_batch:	datagrams per socket and event
 * @muted:	fds of muted entries (@nmuted of them, room for @muted_cap)
 * @nmuted:	muted entries
 * @muted_cap:	room in @muted
 * @spill:	spill buffer pc_udp_rx() needs (never used: templates take any peer)
 * @idx:	TX round scratch: index list of the round's frames
 * @runs:	TX round scratch: runs of one tuple
 * @items:	TX round scratch: per-datagram results
 */
struct fast_udp_part {
	unsigned rx_opts, rx_batch;
	int *muted;
	unsigned nmuted, muted_cap;
	uint8_t *spill;
	uint32_t idx[FAST_TX_FRAMES];
	struct pc_udp_run runs[FAST_TX_FRAMES];
	struct pc_dgram_ref items[FAST_TX_FRAMES];
};

/**
 * fast_udp_new() - the UDP unit's state, nothing registered
 * Return: the part, or NULL without memory. Free with fast_udp_free().
 */
struct fast_udp_part *fast_udp_new(void)
{
	struct fast_udp_part *u = calloc(1, sizeof(*u));

	if (!u)
		return NULL;
	u->spill = malloc(FAST_SPILL);
	if (!u->spill) {
		free(u);
		return NULL;
	}
	u->rx_batch = 64;
	return u;
}

/**
 * fast_udp_free() - release the UDP unit's state (NULL is fine)
 * @u:		the part
 */
void fast_udp_free(struct fast_udp_part *u)
{
	if (!u)
		return;
	free(u->muted);
	free(u->spill);
	free(u);
}

/**
 * fast_udp_set_rx() - how datagrams go into the RX ring
 * @u:		the part
 * @opts:	PC_UDP_RX_CSUM_PARTIAL or PC_UDP_RX_DATA_VALID, as for pc_udp_rx()
 * @batch:	datagrams per socket and event (0 counts as 1)
 */
void fast_udp_set_rx(struct fast_udp_part *u, unsigned opts, unsigned batch)
{
	u->rx_opts = opts & (PC_UDP_RX_CSUM_PARTIAL | PC_UDP_RX_DATA_VALID);
	u->rx_batch = batch ? batch : 1;
}

/**
 * rx_find() - the RX table entry of a UDP flow's socket
 * @c:		fast path context
 * @fd:		the socket
 * Return: the entry, or NULL (also for a TCP connection's: the UDP calls never see those)
 */
static struct fast_entry *rx_find(const struct fast_ctx *c, int fd)
{
	struct fast_entry *e = fast_table_fd(&c->rxt, fd);

	return e && e->kind == FAST_KIND_UDP ? e : NULL;
}

/**
 * tx_find() - the TX table entry of a guest UDP tuple
 * @c:		fast path context
 * @ipver:	4 or 6
 * @src:	as for fast_tuple_key()
 * @dst:	as for fast_tuple_key()
 * @sport:	as for fast_tuple_key()
 * @dport:	as for fast_tuple_key()
 * Return: the entry, or NULL
 */
static struct fast_entry *tx_find(const struct fast_ctx *c, unsigned ipver, const uint8_t *src,
				  const uint8_t *dst, uint16_t sport, uint16_t dport)
{
	uint8_t key[KEY_LEN];
	struct fast_entry *e;

	fast_tuple_key(key, ipver, src, dst, sport, dport);
	e = fast_table_find(&c->txt, key);
	return e && e->kind == FAST_KIND_UDP ? e : NULL;
}

/**
 * fast_udp_add_rx() - deliver a UDP flow socket's datagrams in C (replaces an entry of @fd)
 * @c:		fast path context
 * @fd:		the flow's socket, connected to its host peer, in the epoll set for EPOLLIN
 * @tmpl:	header template of its datagrams (any_peer is forced: the socket has one peer)
 *
 * A TCP connection's entry of the same fd is left as it is (the call then does nothing).
 *
 * Return: 0, -EINVAL, -ENOSPC when the table holds its maximum, or -ENOMEM
 */
int fast_udp_add_rx(struct fast_ctx *c, int fd, const struct pc_udp_flow *tmpl)
{
	uint8_t key[KEY_LEN];
	struct fast_entry *e;
	int err = 0;

	if (fd < 0 || (tmpl->ipver != 4 && tmpl->ipver != 6))
		return -EINVAL;
	fast_fd_key(key, fd);
	e = fast_table_get(&c->rxt, key, c->max, &err);
	if (!e)
		return err;
	if (e->kind == FAST_KIND_TCP)
		return 0;
	e->kind = FAST_KIND_UDP;
	e->fd = fd;
	e->u.udp.tmpl = *tmpl;
	e->u.udp.tmpl.any_peer = 1;
	return 0;
}

/**
 * fast_udp_add_tx() - send the guest's datagrams of a UDP tuple in C (replaces an entry)
 * @c:		fast path context
 * @ipver:	4 or 6
 * @src:	guest address (16 bytes, IPv4 as ::ffff:a.b.c.d)
 * @dst:	address the guest sends to (same form)
 * @sport:	guest port
 * @dport:	destination port
 * @fd:		the flow's socket, connected to the host peer
 * Return: 0, -EINVAL, -ENOSPC when the table holds its maximum, or -ENOMEM
 */
int fast_udp_add_tx(struct fast_ctx *c, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		    uint16_t sport, uint16_t dport, int fd)
{
	uint8_t key[KEY_LEN];
	struct fast_entry *e;
	int err = 0;

	if (fd < 0 || (ipver != 4 && ipver != 6))
		return -EINVAL;
	fast_tuple_key(key, ipver, src, dst, sport, dport);	/* never a TCP key */
	e = fast_table_get(&c->txt, key, c->max, &err);
	if (!e)
		return err;
	e->kind = FAST_KIND_UDP;
	e->fd = fd;
	return 0;
}

/**
 * forget() - drop an entry, and its fd from the muted list
 * @u:		the part
 * @t:		the table holding it
 * @e:		the entry (FAST_KIND_UDP)
 * Return: its count (datagrams moved since the count was last taken)
 */
static int64_t forget(struct fast_udp_part *u, struct fast_table *t, struct fast_entry *e)
{
	unsigned k;

	for (k = 0; e->u.udp.muted && k < u->nmuted; k++) {
		if (u->muted[k] == e->fd) {
			u->muted[k] = u->muted[--u->nmuted];
			break;
		}
	}
	fast_table_drop(t, e);
	return (int64_t)e->u.udp.count;
}

/**
 * take_count() - an entry's count, which is then reset
 * @e:		the entry (FAST_KIND_UDP), or NULL
 * Return: the count, or -ENOENT for NULL
 */
static int64_t take_count(struct fast_entry *e)
{
	int64_t n;

	if (!e)
		return -ENOENT;
	n = (int64_t)e->u.udp.count;
	e->u.udp.count = 0;
	return n;
}

/**
 * fast_udp_remove_rx() - forget a socket's entry (before the socket is closed)
 * @u:		the part
 * @c:		fast path context
 * @fd:		the socket
 * Return: datagrams delivered since its count was last taken, or -ENOENT
 */
int64_t fast_udp_remove_rx(struct fast_udp_part *u, struct fast_ctx *c, int fd)
{
	struct fast_entry *e = rx_find(c, fd);

	return e ? forget(u, &c->rxt, e) : -ENOENT;
}

/**
 * fast_udp_remove_tx() - forget a tuple's entry
 * @u:		the part
 * @c:		fast path context
 * @ipver:	as for fast_udp_add_tx()
 * @src:	as for fast_udp_add_tx()
 * @dst:	as for fast_udp_add_tx()
 * @sport:	as for fast_udp_add_tx()
 * @dport:	as for fast_udp_add_tx()
 * Return: datagrams sent since its count was last taken, or -ENOENT
 */
int64_t fast_udp_remove_tx(struct fast_udp_part *u, struct fast_ctx *c, unsigned ipver,
			   const uint8_t *src, const uint8_t *dst, uint16_t sport, uint16_t dport)
{
	struct fast_entry *e = tx_find(c, ipver, src, dst, sport, dport);

	return e ? forget(u, &c->txt, e) : -ENOENT;
}

/**
 * fast_udp_rx_count() - datagrams delivered from a socket since the caller last asked
 * @c:		fast path context
 * @fd:		the socket
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t fast_udp_rx_count(const struct fast_ctx *c, int fd)
{
	return take_count(rx_find(c, fd));
}

/**
 * fast_udp_tx_count() - guest datagrams of a tuple sent since the caller last asked
 * @c:		fast path context
 * @ipver:	as for fast_udp_add_tx()
 * @src:	as for fast_udp_add_tx()
 * @dst:	as for fast_udp_add_tx()
 * @sport:	as for fast_udp_add_tx()
 * @dport:	as for fast_udp_add_tx()
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t fast_udp_tx_count(const struct fast_ctx *c, unsigned ipver, const uint8_t *src,
			  const uint8_t *dst, uint16_t sport, uint16_t dport)
{
	return take_count(tx_find(c, ipver, src, dst, sport, dport));
}

/**
 * fast_udp_muted() - sockets muted for lack of RX buffers
 * @u:		the part
 * Return: their number
 */
unsigned fast_udp_muted(const struct fast_udp_part *u)
{
	return u->nmuted;
}

/**
 * fast_udp_rx_ready() - the guest added RX buffers: sockets muted for lack of them read again
 * @u:		the part
 * @c:		fast path context
 * @epfd:	the epoll set
 * Return: sockets restored
 */
int fast_udp_rx_ready(struct fast_udp_part *u, const struct fast_ctx *c, int epfd)
{
	int n = 0;

	while (u->nmuted) {
		int fd = u->muted[--u->nmuted];
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
		struct fast_entry *e = rx_find(c, fd);

		if (e)
			e->u.udp.muted = 0;
		if (!epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev))
			n++;
	}
	return n;
}

/**
 * mute() - take a socket out of the epoll set until fast_udp_rx_ready()
 * @u:		the part
 * @epfd:	the epoll set
 * @e:		the socket's entry
 *
 * The fd stays registered with an empty event mask, so restoring it is one EPOLL_CTL_MOD.
 *
 * Return: 0, or -errno (the entry is left as it was)
 */
static int mute(struct fast_udp_part *u, int epfd, struct fast_entry *e)
{
	struct epoll_event ev = { .events = 0, .data.fd = e->fd };

	if (u->nmuted == u->muted_cap) {
		unsigned cap = u->muted_cap ? 2 * u->muted_cap : 16;
		int *m = realloc(u->muted, cap * sizeof(*m));

		if (!m)
			return -ENOMEM;
		u->muted = m;
		u->muted_cap = cap;
	}
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, e->fd, &ev))
		return -errno;
	e->u.udp.muted = 1;
	u->muted[u->nmuted++] = e->fd;
	return 0;
}

/**
 * fast_udp_sock() - a UDP flow socket is readable: its datagrams into the guest's RX buffers
 * @u:		the part
 * @c:		fast path context (its RX ring is set)
 * @epfd:	the epoll set (to mute the socket when RX buffers run out)
 * @e:		the socket's entry (FAST_KIND_UDP)
 * @placed:	set when RX buffers were filled
 * Return: DONE, REPORT (Python handles the event) or REPORT_ERR (a socket error)
 */
int fast_udp_sock(struct fast_udp_part *u, struct fast_ctx *c, int epfd, struct fast_entry *e,
		  int *placed)
{
	struct pc_udp_rx_result res;
	int ret;

	ret = pc_udp_rx(c->rx, e->fd, &e->u.udp.tmpl, 1, c->hdr_len, c->mergeable, u->rx_batch,
			u->rx_opts | PC_UDP_RX_NO_FLUSH, u->spill, FAST_SPILL, &res);
	c->stats.dropped += res.dropped;
	c->stats.rx_dgrams += res.dgrams;
	e->u.udp.count += res.dgrams;
	if (res.bufs)
		*placed = 1;
	if (ret < 0)
		return REPORT;
	switch (res.stop) {
	case PC_UDP_STOP_DRAINED:
	case PC_UDP_STOP_LIMIT:		/* level-triggered: the next wait reports the rest */
		return DONE;
	case PC_UDP_STOP_NOBUFS:	/* mute until the guest adds buffers (its RX kick) */
		return mute(u, epfd, e) ? REPORT : DONE;
	case PC_UDP_STOP_ERROR:
		return REPORT_ERR;
	default:			/* stopped ring, or a datagram spilled (cannot happen) */
		return REPORT;
	}
}

/**
 * fast_udp_head() - whether a classified frame is a datagram of a registered tuple
 * @c:		fast path context
 * @p:		the frame (well-formed)
 * Return: non-zero if so
 */
int fast_udp_head(const struct fast_ctx *c, const struct pc_pkt *p)
{
	return p->proto == PROTO_UDP && !p->gso_type &&
	       tx_find(c, p->ipver, p->src, p->dst, p->sport, p->dport);
}

/**
 * fast_udp_prefix() - send the registered datagrams of a classified round, in order, up to
 *		       the first frame that is not one
 * @u:		the part (its index, run and item arrays are the round's scratch)
 * @c:		fast path context
 * @r:		the round
 * @n:		frames in the round
 *
 * A datagram refused with ECONNREFUSED (an earlier ICMP error, cleared by that send) is sent
 * once more on its own; other failures are counted as drops.
 *
 * Return: frames taken (a prefix); 0 when nothing was sent (Python's path decides)
 */
unsigned fast_udp_prefix(struct fast_udp_part *u, struct fast_ctx *c, struct fast_round *r,
			 unsigned n)
{
	unsigned i, k = 0, nruns = 0;
	int nr, failed;

	for (i = 0; i < n; i++)
		u->idx[i] = i;
	nr = pc_udp_runs(r->recs, n, u->idx, n, u->runs, FAST_TX_FRAMES);
	if (nr <= 0)
		return 0;
	for (i = 0; i < (unsigned)nr; i++) {
		const struct pc_pkt *p = &r->recs[u->runs[i].first];
		struct fast_entry *e;

		if (!u->runs[i].udp)
			break;
		e = tx_find(c, p->ipver, p->src, p->dst, p->sport, p->dport);
		if (!e)
			break;
		u->runs[i].fd = e->fd;
		e->u.udp.count += u->runs[i].count;
		k += u->runs[i].count;
		nruns++;
	}
	if (!k)
		return 0;
	failed = pc_send_udp_runs(r->frames, n, r->iov, FAST_TX_IOV, r->recs, n, u->idx, k,
				  u->runs, nruns, u->items);
	if (failed < 0)
		return 0;	/* nothing was sent: Python's path decides */
	for (i = 0; failed && i < k; i++) {
		struct pc_dgram_ref *it = &u->items[i];

		if (!it->err)
			continue;
		if (it->err == -ECONNREFUSED) {
			/* A pending error from an earlier ICMP message, cleared by this send:
			 * once more, alone (the items array is this one's scratch). */
			struct pc_dgram_ref one = *it;
			struct pc_udp_run run = { .first = 0, .count = 1, .fd = it->fd, .udp = 1 };
			uint32_t at = it->frame;

			one.err = 0;
			if (pc_send_udp_runs(r->frames, n, r->iov, FAST_TX_IOV, r->recs, n, &at,
					     1, &run, 1, &one) == 0)
				continue;
		}
		c->stats.dropped++;
	}
	c->stats.tx_dgrams += k;
	return k;
}
