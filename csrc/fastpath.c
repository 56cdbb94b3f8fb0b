// SPDX-License-Identifier: MIT
/* fastpath.c - the fast path's wait: readiness events the C core handles inside the event
 * loop's wait, dispatched by the kind of their table entry
 *
 * Theory of operation
 * -------------------
 * The interpreter's fixed cost per event (dispatch, handler, result decoding) is most of what
 * a UDP flood or a TCP bulk transfer costs the back-end. Python registers the flows whose hot
 * events need no decision of its own (fast_api.c) and calls pc_fast_poll() instead of
 * epoll_wait(). This file is that wait and its dispatch, nothing else:
 *
 * - a socket event is looked up in the RX table (fast_table.c) and handed, by the entry's
 *   kind, to the unit that owns it: fast_udp_sock() for a UDP flow socket, fast_tcp_sock()
 *   for a TCP connection's;
 * - the TX ring's kick drains the ring in rounds: each round's head frame is popped alone,
 *   looked at and put back (head_kind()); a round is then popped and classified here, and
 *   the unit of the head's kind takes the leading frames that are its own
 *   (fast_udp_prefix(), fast_tcp_prefix()), up to the first frame of another kind; the next
 *   round looks again;
 * - after the events, the TCP unit gets its deferred work (the more list, the round ends,
 *   connections handed back are reported as PC_FAST_EV_BACK).
 *
 * Anything else (other fds, other events, a frame no unit takes, a bad chain, a socket
 * error, a stopped ring) is returned to Python as the plain epoll event it was, with
 * whatever C did not consume left where Python's own path finds it: a TX batch with a frame
 * C does not handle is given back from that frame on, a datagram C did not deliver stays in
 * its socket, a socket error is reported as EPOLLERR (Python reads the error queue).
 *
 * The units see only what fast_ctx.h declares and never call back into this file.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "passt_core.h"
#include "virtq.h"
#include "fastpath.h"

enum {
	FAST_TX_ROUNDS = 4,		/* then the kick goes to Python, which defers the rest */
	FAST_EVENTS = 64
};

/* What the ring's first frame is, at a look at it alone (put back at once): HEAD_EMPTY,
 * HEAD_OTHER (Python's business), HEAD_UDP (a datagram of a registered tuple) or HEAD_TCP (a
 * segment of a registered connection). A kick while other traffic flows then costs one chain
 * walk, not a whole batch's walk and classification done twice. */
enum { HEAD_EMPTY, HEAD_OTHER, HEAD_UDP, HEAD_TCP };

/**
 * head_kind() - what the TX ring's first frame is, from a look at it alone
 * @f:		fast path (its round's first frame, slice and record are used as scratch)
 * @mark:	the TX ring's avail position, to put the frame back at once
 * Return: HEAD_EMPTY, HEAD_OTHER, HEAD_UDP or HEAD_TCP
 */
static int head_kind(struct pc_fast *f, uint16_t mark)
{
	struct fast_round *r = &f->round;
	const struct pc_pkt *p = &r->recs[0];
	unsigned nbad;
	int n;

	n = pc_vq_pop_tx(f->tx, 1, f->c.hdr_len, r->frames, r->iov, FAST_TX_IOV, r->bad, &nbad);
	pc_vq_rx_seek(f->tx, mark);
	if (n <= 0)
		return n == 0 && !nbad ? HEAD_EMPTY : HEAD_OTHER;
	if (pc_classify(r->frames, r->iov, FAST_TX_IOV, 1, r->recs) < 0 ||
	    p->valid != PC_PKT_OK)
		return HEAD_OTHER;
	if (fast_udp_head(&f->c, p))
		return HEAD_UDP;
	if (fast_tcp_head(f->tcp, &f->c, p))
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
	struct fast_round *r = &f->round;
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
		n = pc_vq_pop_tx(f->tx, FAST_TX_FRAMES, f->c.hdr_len, r->frames, r->iov,
				 FAST_TX_IOV, r->bad, &nbad);
		if (n < 0)
			return REPORT;
		if (!n && !nbad)
			return DONE;
		if (nbad || pc_classify(r->frames, r->iov, FAST_TX_IOV, (unsigned)n, r->recs) < 0) {
			pc_vq_rx_seek(f->tx, mark);	/* Python's path reports bad chains */
			return REPORT;
		}
		k = kind == HEAD_UDP ? fast_udp_prefix(f->udp, &f->c, r, (unsigned)n)
				     : fast_tcp_prefix(f->tcp, &f->c, r, (unsigned)n);
		/* The chains from the first frame not taken on go back, unused, for Python (or
		 * for the next round, when they start with frames of the other kind). */
		pc_vq_rx_seek(f->tx, (uint16_t)(mark + k));
		if (!k || (pc_vq_release(f->tx, r->frames, k, r->bad, 0) >= 0))
			ret = k ? DONE : REPORT;
		fast_tcp_round_end(f->tcp, &f->c, placed);
		if (ret != DONE)
			return ret;
	}
	f->tx_more = 1;		/* more than the rounds' worth: again after the other events */
	return DONE;
}

/**
 * sock_event() - a socket event of a registered entry, to the unit of the entry's kind
 * @f:		fast path
 * @epfd:	the epoll set
 * @e:		the socket's RX table entry
 * @mask:	the events (EPOLLIN and/or EPOLLOUT only)
 * @placed:	set when RX buffers were filled
 * Return: DONE, REPORT or REPORT_ERR, as the unit decided (REPORT if none takes it)
 */
static int sock_event(struct pc_fast *f, int epfd, struct fast_entry *e, uint32_t mask,
		      int *placed)
{
	switch (e->kind) {
	case FAST_KIND_TCP:
		return fast_tcp_sock(f->tcp, &f->c, e, mask, placed);
	case FAST_KIND_UDP:
		if (mask == EPOLLIN && f->c.rx)
			return fast_udp_sock(f->udp, &f->c, epfd, e, placed);
		return REPORT;
	default:
		return REPORT;
	}
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
		unsigned k = fast_tcp_report(f->tcp, out, max_out), room = max_out - k;
		int n, i, placed = 0, busy = 0;

		if (!room)
			return (int)k;
		n = epoll_wait(epfd, ev, (int)(room < FAST_EVENTS ? room : FAST_EVENTS),
			       k || fast_tcp_pending(f->tcp) || f->tx_more ? 0 : wait);
		if (n < 0)
			return errno == EINTR ? (int)k : -errno;
		for (i = 0; i < n; i++) {
			int fd = ev[i].data.fd, how = REPORT;
			uint32_t mask = ev[i].events;
			struct fast_entry *e;

			if (mask == EPOLLIN && fd == f->kick_fd && f->tx && f->c.txt.live &&
			    pc_vq_started(f->tx))
				how = fast_tx(f, &placed, 1);
			else if (f->c.rxt.live && !(mask & ~(uint32_t)(EPOLLIN | EPOLLOUT)) &&
				 (e = fast_table_fd(&f->c.rxt, fd)))
				how = sock_event(f, epfd, e, mask, &placed);
			if (how == DONE) {
				f->c.stats.handled++;
				continue;
			}
			out[k].fd = fd;
			out[k].events = mask | (how == REPORT_ERR ? (uint32_t)EPOLLERR : 0);
			k++;
		}
		if (fast_tcp_pending(f->tcp))
			busy = fast_tcp_more(f->tcp, &f->c, &placed);
		if (f->tx_more && k < max_out) {
			f->tx_more = 0;
			busy = 1;
			if (f->tx && f->c.txt.live && pc_vq_started(f->tx) &&
			    fast_tx(f, &placed, 0) == DONE) {
				f->c.stats.handled++;
			} else if (f->kick_fd >= 0) {	/* Python drains what C leaves */
				out[k].fd = f->kick_fd;
				out[k].events = EPOLLIN;
				k++;
			}
		}
		k += fast_tcp_report(f->tcp, out + k, max_out - k);
		if (placed)
			pc_vq_flush(f->c.rx);
		f->c.stats.reported += k;
		if (k || timeout_ms == 0)
			return (int)k;
		if (!n && !busy && !fast_tcp_pending(f->tcp) && !f->tx_more)
			return 0;			/* the wait timed out */
		if (timeout_ms > 0) {
			int64_t left = deadline - now_ms();

			if (left <= 0)
				return 0;
			wait = (int)left;
		}
	}
}
