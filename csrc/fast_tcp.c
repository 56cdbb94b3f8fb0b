// SPDX-License-Identifier: MIT
/* fast_tcp.c - the steady state of established TCP connections, inside the loop's wait
 *
 * Theory of operation
 * -------------------
 * A connection moving data spends most of its events on decisions that are always the same:
 * in-order data from the guest goes to the socket and earns an ACK, the guest's ACKs let
 * acknowledged bytes leave the socket's receive queue, readable host data goes into the RX
 * ring as far as the guest's window allows. Python registers a connection here once its
 * state machine has nothing else pending (pc_fast_add_tcp() with its state), and C runs
 * exactly those steps (TcpHandler's own rules, in C):
 *
 * - TX kick: runs of in-order data (ACK, maybe PSH) at RCV.NXT are sent from guest memory;
 *   their ACK fields and windows, and runs of bare ACKs that advance SND.UNA or update the
 *   window, are processed; at the round's end the acknowledged bytes are discarded, host data
 *   is sent if the window allows, and one ACK goes to the guest if data came and none carried
 *   it.
 * - socket readable (or writable, which needs nothing while the window is open): host data
 *   into the RX ring, at most tcp_per_event bytes per event, the rest on the more list.
 *
 * Anything else is Python's. A frame C does not handle (duplicate ACK, gap, SYN/FIN/RST,
 * an ACK of data never sent...) ends C's share of the TX batch: the rest goes back to Python
 * unconsumed, as for UDP. Other socket events (HUP, ERR) are reported as they came. When a
 * step needs a decision (socket full, window closed, no RX buffers, end of stream, an error,
 * a retransmission timer to arm), C does what it safely can and hands the connection back: it
 * stops handling it and reports its fd with PC_FAST_EV_BACK; Python takes the state back with
 * pc_fast_remove_tcp() (the reasons in pc_fast_tcp.back) and registers it again later.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/sockios.h>

#include "passt_core.h"
#include "fastpath.h"

enum {
	TCPI_SND_WND = 228,		/* struct tcp_info: tcpi_snd_wnd (Linux 5.4) */
	TCPI_LEN = TCPI_SND_WND + 4,
	SNDBUF_BOOST = 2,		/* window = this many times a small send buffer... */
	SNDBUF_BOOST_BELOW = 1 << 20,	/* ...below this size */
	DISCARD_CALLS = 64
};

/**
 * pc_tcp_sndbuf_limit() - how much we let the guest queue in a socket of SO_SNDBUF @sndbuf
 * @sndbuf:	SO_SNDBUF
 *
 * The kernel grows a send buffer only after a write found it full, and a window that never
 * exceeds the buffer never fills it: small buffers are boosted so they grow (as passt does).
 * Large ones keep a quarter as margin, since SO_SNDBUF also counts kernel overhead.
 *
 * Return: the limit in bytes
 */
int64_t pc_tcp_sndbuf_limit(int64_t sndbuf)
{
	return sndbuf < SNDBUF_BOOST_BELOW ? sndbuf * SNDBUF_BOOST : sndbuf * 3 / 4;
}

/**
 * pc_tcp_send_window() - the window to offer the guest: what the host peer lets us send
 * @fd:		the connection's socket
 * @local:	the peer is on this host
 * @max_window:	the largest window we offer
 *
 * A peer on this host takes data as fast as it reads, so its own receive window (TCP_INFO)
 * is the whole limit; a remote peer's data waits in our send buffer, so its free space bounds
 * the window too (kernels before 5.4 report no peer window: the buffer alone). Counting our
 * queued bytes against a local peer's window as well closes the window so often that the
 * guest stalls on its reopening (measured: three times the go-backs at MTU 1500).
 *
 * Return: bytes, 0 to @max_window (0 if the socket cannot tell)
 */
int64_t pc_tcp_send_window(int fd, int local, uint32_t max_window)
{
	uint8_t info[TCPI_LEN];
	socklen_t len = sizeof(info);
	int64_t space = max_window;
	int peer;

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len))
		return 0;
	peer = len >= TCPI_LEN;
	if (peer) {
		uint32_t wnd;

		memcpy(&wnd, info + TCPI_SND_WND, sizeof(wnd));
		space = wnd;
	}
	if (!(local && peer)) {
		int sndbuf = 0, outq = 0;
		socklen_t sl = sizeof(sndbuf);
		int64_t room;

		if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) ||
		    ioctl(fd, SIOCOUTQ, &outq))
			return 0;
		room = pc_tcp_sndbuf_limit(sndbuf) - outq;
		if (room < space)
			space = room;
	}
	if (space < 0)
		return 0;
	return space > max_window ? max_window : space;
}

/**
 * now_s() - the monotonic clock, in seconds (the clock of pc_fast_tcp's deadlines)
 * Return: CLOCK_MONOTONIC as seconds
 */
static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/**
 * back() - hand a connection back to Python: C leaves it alone from now on
 * @f:		fast path
 * @t:		the connection
 * @why:	PC_FAST_BACK_* reason, added to those already given
 *
 * The connection is queued once for a PC_FAST_EV_BACK report (fast_tcp_report()).
 */
static void back(struct pc_fast *f, struct fast_tcp *t, uint32_t why)
{
	t->s.back |= why;
	if (!t->in_back) {
		t->in_back = 1;
		f->backq[f->nback++] = t;	/* room for every connection (see add) */
	}
}

/**
 * more() - put a connection on the more list: host data is left after its share
 * @f:		fast path
 * @t:		the connection (listed once, however often this is called)
 */
static void more(struct pc_fast *f, struct fast_tcp *t)
{
	if (!t->in_more) {
		t->in_more = 1;
		f->more[f->nmore++] = t;	/* room for twice every connection */
	}
}

/**
 * arm() - set the retransmission deadline one RTO from now
 * @f:		fast path
 * @t:		the connection
 *
 * Python's timer must fire by then: if it is not armed, or armed later than the deadline,
 * the connection is handed back (PC_FAST_BACK_TIMER) so that Python arms it.
 */
static void arm(struct pc_fast *f, struct fast_tcp *t)
{
	t->s.deadline = now_s() + t->s.rto;
	if (!t->s.timer_at || t->s.timer_at > t->s.deadline + 0.001)
		back(f, t, PC_FAST_BACK_TIMER);
}

/**
 * acked() - the guest acknowledged more of our data
 * @f:		fast path
 * @t:		the connection
 * @ack:	the new SND.UNA
 * @n:		bytes it acknowledges beyond the old one (discarded from the socket at the
 *		round's end)
 *
 * Retries and the RTO are reset; the deadline is re-armed while data is still in flight and
 * cleared when everything is acknowledged.
 */
static void acked(struct pc_fast *f, struct fast_tcp *t, uint32_t ack, uint32_t n)
{
	t->discard += n;
	t->s.una = ack;
	t->s.retries = 0;
	t->s.rto = t->s.rto0;
	if (t->s.tmpl.seq != ack)
		arm(f, t);
	else
		t->s.deadline = 0;
}

/**
 * window_raw() - the raw window field to advertise now
 * @f:		fast path
 * @t:		the connection; its wnd_to_guest is set to the window the field stands for
 *
 * While no guest data was taken since the last computation, the last value sent stands
 * (no getsockopt() per segment); otherwise pc_tcp_send_window() is asked again.
 *
 * Return: the window field, scaled by our window scale and capped at 0xffff
 */
static uint16_t window_raw(const struct pc_fast *f, struct fast_tcp *t)
{
	int64_t raw;

	if (t->wnd_fresh && t->s.last_wnd_raw > 0)
		return (uint16_t)t->s.last_wnd_raw;
	t->wnd_fresh = 1;
	raw = pc_tcp_send_window(t->s.fd, t->s.local, f->tcp_max_window) >> t->s.ws_to_guest;
	if (raw > 0xFFFF)
		raw = 0xFFFF;
	t->s.wnd_to_guest = (uint32_t)raw << t->s.ws_to_guest;
	return (uint16_t)raw;
}

/**
 * rx_opts() - the PC_TCP_RX_* options for a connection's IP version
 * @f:		fast path
 * @t:		the connection
 * Return: tcp_opts4 or tcp_opts6
 */
static unsigned rx_opts(const struct pc_fast *f, const struct fast_tcp *t)
{
	return t->s.tmpl.ipver == 4 ? f->tcp_opts4 : f->tcp_opts6;
}

/**
 * queued() - bytes queued in a connection's socket past its peek offset
 * @t:		the connection
 *
 * The peek offset stands after what is in flight plus what the guest acknowledged and is
 * not discarded yet, so both are taken off the socket's receive queue length.
 *
 * Return: the count, or -1 if the socket cannot tell
 */
static int64_t queued(const struct fast_tcp *t)
{
	int inq = 0;

	if (ioctl(t->s.fd, SIOCINQ, &inq) || inq < 0)
		return -1;
	return (int64_t)inq - (t->s.tmpl.seq - t->s.una) - t->discard;
}

/**
 * to_guest() - move the host data the guest's window allows into the RX ring
 * @f:		fast path
 * @t:		the connection
 * @placed:	set when RX buffers were filled
 *
 * At most tcp_per_event bytes per call; a connection with more left goes on the more list,
 * one out of RX buffers on the RX-wait list, and one that needs a decision (zero window,
 * our window closed, an error, a stopped ring) is handed back. End of stream is not looked
 * for here: it comes as EPOLLRDHUP, which is Python's.
 */
static void to_guest(struct pc_fast *f, struct fast_tcp *t, int *placed)
{
	struct pc_fast_tcp *s = &t->s;
	uint32_t in_flight = s->tmpl.seq - s->una;
	int64_t room = (int64_t)s->wnd_from_guest - in_flight, limit, ready;
	struct pc_tcp_rx_result res;
	int capped = 1;			/* more may be queued than this call asks for */
	unsigned opts;
	uint16_t raw;
	int n;

	if (t->rx_wait)
		return;				/* the guest's RX kick brings it back */
	if (s->back || !f->rx) {
		back(f, t, PC_FAST_BACK_H2G);
		return;
	}
	if (room <= 0) {
		if (!s->wnd_from_guest && !in_flight)
			back(f, t, PC_FAST_BACK_H2G);	/* zero window: Python probes */
		return;
	}
	limit = room < f->tcp_per_event ? room : f->tcp_per_event;
	ready = queued(t);
	if (!ready)
		return;				/* nothing new (the usual case after guest data) */
	opts = rx_opts(f, t) | PC_TCP_RX_NO_FLUSH;
	if (ready > 0) {			/* measured: pc_tcp_rx() need not probe again */
		capped = ready > limit;
		limit = capped ? limit : ready;
		opts |= PC_TCP_RX_QUEUED;
	}
	raw = window_raw(f, t);
	if (!raw) {
		back(f, t, PC_FAST_BACK_H2G);	/* our window closes: Python polls it */
		return;
	}
	s->tmpl.window = raw;
	n = pc_tcp_rx(f->rx, f->tcp_scratch, s->fd, &s->tmpl, f->hdr_len, f->mergeable,
		      (uint32_t)limit, opts, &res);
	if (res.bufs)
		*placed = 1;
	if (n < 0) {
		back(f, t, PC_FAST_BACK_H2G);	/* Python meets the error and resets */
		return;
	}
	if (n > 0) {
		s->tmpl.seq += (uint32_t)n;
		s->acked_to_guest = s->tmpl.ack;
		s->last_wnd_raw = raw;
		s->to_guest += (uint32_t)n;
		s->segs += res.segs;
		t->ack_due = 0;
		if (!s->deadline)
			arm(f, t);
	}
	switch (res.stop) {
	case PC_TCP_STOP_DRAINED:
	case PC_TCP_STOP_WINDOW:		/* all it asked for: the window, or our share */
		if (capped && n == limit && limit < room)
			more(f, t);
		break;
	case PC_TCP_STOP_LIMIT:
		if (n > 0)
			more(f, t);
		else
			back(f, t, PC_FAST_BACK_H2G);
		break;
	case PC_TCP_STOP_AGAIN:			/* buffers came while the ring ran out */
		more(f, t);
		break;
	case PC_TCP_STOP_NOBUFS:		/* wait for the guest's RX kick, drop nothing */
		t->rx_wait = 1;
		f->rxwaitq[f->nrxwait++] = t;	/* room for every connection */
		break;
	default:				/* stopped ring, end of stream */
		back(f, t, PC_FAST_BACK_H2G);
	}
}

/**
 * send_ack() - send a bare ACK to the guest: it sent data, and none of ours carried the
 *		acknowledgement
 * @f:		fast path
 * @t:		the connection (handed back if the ACK cannot go now)
 */
static void send_ack(struct pc_fast *f, struct fast_tcp *t)
{
	struct pc_fast_tcp *s = &t->s;
	struct pc_rx_result res;
	uint16_t raw;

	t->ack_due = 0;
	if (s->back || !f->rx) {
		back(f, t, PC_FAST_BACK_ACK);
		return;
	}
	raw = window_raw(f, t);
	if (!raw) {
		back(f, t, PC_FAST_BACK_ACK);	/* window closed: Python polls it */
		return;
	}
	s->tmpl.window = raw;
	if (pc_tcp_ctl(f->rx, &s->tmpl, PC_TCP_ACK, NULL, 0, f->hdr_len, f->mergeable,
		       rx_opts(f, t) & PC_TCP_RX_DATA_VALID, &res) <= 0) {
		back(f, t, PC_FAST_BACK_ACK);	/* no RX buffer: Python's queue holds it */
		return;
	}
	s->acked_to_guest = s->tmpl.ack;
	s->last_wnd_raw = raw;
}

/**
 * discard() - drop acknowledged bytes from a socket's receive queue
 * @fd:		the socket
 * @n:		bytes to drop (they were peeked, never read), in at most DISCARD_CALLS calls
 */
static void discard(int fd, uint32_t n)
{
	unsigned i;

	for (i = 0; n && i < DISCARD_CALLS; i++) {
		ssize_t got = recv(fd, NULL, n, MSG_TRUNC | MSG_DONTWAIT);

		if (got <= 0)
			return;
		n -= (size_t)got < n ? (uint32_t)got : n;
	}
}

/**
 * fast_tcp_sock() - a registered connection's socket is readable and/or writable
 * @f:		fast path
 * @t:		the connection
 * @mask:	EPOLLIN and/or EPOLLOUT
 * @placed:	set when RX buffers were filled
 * Return: DONE, or REPORT for a connection already handed back (Python sees the event)
 */
int fast_tcp_sock(struct pc_fast *f, struct fast_tcp *t, uint32_t mask, int *placed)
{
	if (t->s.back)
		return REPORT;
	t->s.events++;
	if (mask & EPOLLIN)
		to_guest(f, t, placed);
	return DONE;
}

/**
 * find_tx() - the registered connection a guest TCP frame belongs to
 * @f:		fast path
 * @p:		the classified frame
 * Return: the connection, or NULL if its tuple is not registered
 */
static struct fast_tcp *find_tx(const struct pc_fast *f, const struct pc_pkt *p)
{
	uint8_t key[KEY_LEN];
	struct fast_entry *e;

	fast_tuple_key(key, p->ipver | KEY_TCP, p->src, p->dst, p->sport, p->dport);
	e = fast_table_find(&f->txt, key);
	return e ? e->tcp : NULL;
}

/**
 * fast_tcp_head() - whether a classified frame belongs to a connection C runs
 * @f:		fast path
 * @p:		the frame (well-formed TCP)
 * Return: non-zero if so
 */
int fast_tcp_head(struct pc_fast *f, const struct pc_pkt *p)
{
	struct fast_tcp *t = find_tx(f, p);

	return t && !t->s.back;
}

/**
 * fast_tcp_prefix() - send and process the leading frames of a classified TX round that are
 *		       in-order data or ACKs of registered connections
 * @f:		fast path (recs, frames, iov hold the round)
 * @n:		frames in the round
 *
 * Return: frames taken (a prefix); the rest is left for Python or the next round
 */
unsigned fast_tcp_prefix(struct pc_fast *f, unsigned n)
{
	int nr = pc_tcp_runs(f->recs, n, f->pitems, f->truns, FAST_TX_FRAMES);
	unsigned r, k = 0;

	for (r = 0; nr > 0 && r < (unsigned)nr; r++) {
		const struct pc_tcp_run *run = &f->truns[r];
		struct pc_fast_tcp *s;
		struct fast_tcp *t;
		int32_t una_d;

		if (run->other || (!run->data && !run->acks))
			break;
		t = find_tx(f, &f->recs[run->first]);
		if (!t || t->s.back)
			break;
		s = &t->s;
		/* not at RCV.NXT (gap, old data, keepalive), or acknowledging data never sent */
		if (run->seq != s->tmpl.ack || (int32_t)(run->ack - s->tmpl.seq) > 0)
			break;
		una_d = (int32_t)(run->ack - s->una);
		if (run->acks && (una_d < 0 ||
				  (!una_d && s->tmpl.seq != s->una &&
				   (uint32_t)run->window << s->ws_from_guest == s->wnd_from_guest)))
			break;		/* old, or a duplicate ACK: Python counts those */
		if (run->data) {
			int64_t sent = pc_send_payloads(s->fd, f->frames, n, f->iov, FAST_TX_IOV,
							f->pitems + run->first, run->count);

			if (sent == -EINVAL)
				break;
			if (sent == -EAGAIN)
				sent = 0;
			if (sent < 0) {
				back(f, t, PC_FAST_BACK_ERR);
			} else {
				s->tmpl.ack += (uint32_t)sent;
				s->to_host += (uint64_t)sent;
				t->wnd_fresh = 0;	/* the window is the guest's data's */
				if (sent < run->bytes)	/* the guest resends the rest */
					back(f, t, PC_FAST_BACK_FULL);
				else
					t->ack_due = 1;
			}
		}
		if (una_d > 0)
			acked(f, t, run->ack, (uint32_t)una_d);
		if (una_d >= 0)
			s->wnd_from_guest = (uint32_t)run->window << s->ws_from_guest;
		s->events++;
		if (!t->touched) {
			t->touched = 1;
			f->touched[f->ntouched++] = t;
		}
		k += run->count;
	}
	return k;
}

/**
 * fast_tcp_round_end() - per connection a TX round touched: acknowledged bytes leave the
 *			  socket, host data goes out, then an ACK if one is still due
 * @f:		fast path
 * @placed:	set when RX buffers were filled
 */
void fast_tcp_round_end(struct pc_fast *f, int *placed)
{
	unsigned i;

	for (i = 0; i < f->ntouched; i++) {
		struct fast_tcp *t = f->touched[i];

		t->touched = 0;
		if (t->discard) {
			discard(t->s.fd, t->discard);
			t->discard = 0;
		}
		if (t->s.back & (PC_FAST_BACK_ERR | PC_FAST_BACK_FULL))
			continue;
		to_guest(f, t, placed);
		if (t->ack_due)
			send_ack(f, t);
	}
	f->ntouched = 0;
}

/**
 * fast_tcp_more() - one more share of host data for each connection on the more list
 * @f:		fast path
 * @placed:	set when RX buffers were filled
 * Return: non-zero if the list held any
 */
int fast_tcp_more(struct pc_fast *f, int *placed)
{
	unsigned i, n = f->nmore;

	for (i = 0; i < n; i++) {
		struct fast_tcp *t = f->more[i];

		t->in_more = 0;
		to_guest(f, t, placed);		/* may list it again, past n */
	}
	if (n && f->nmore > n)
		memmove(f->more, f->more + n, (f->nmore - n) * sizeof(*f->more));
	f->nmore -= n;
	return n > 0;
}

/**
 * fast_tcp_report() - events for connections handed back and not reported yet
 * @f:		fast path
 * @out:	where they go (fd, PC_FAST_EV_BACK)
 * @room:	entries in @out
 * Return: events written
 */
unsigned fast_tcp_report(struct pc_fast *f, struct pc_fast_event *out, unsigned room)
{
	unsigned k = f->nback < room ? f->nback : room, i;

	for (i = 0; i < k; i++) {
		out[i].fd = f->backq[i]->s.fd;
		out[i].events = PC_FAST_EV_BACK;
	}
	if (k && f->nback > k)
		memmove(f->backq, f->backq + k, (f->nback - k) * sizeof(*f->backq));
	f->nback -= k;
	return k;
}

/**
 * fast_tcp_rx_ready() - the guest added RX buffers: connections waiting for them send on
 * @f:		fast path
 * Return: connections resumed
 */
int fast_tcp_rx_ready(struct pc_fast *f)
{
	unsigned i, n = f->nrxwait;
	int placed = 0;

	for (i = 0; i < n; i++) {
		struct fast_tcp *t = f->rxwaitq[i];

		t->rx_wait = 0;
		to_guest(f, t, &placed);	/* may wait again, listed past n */
	}
	if (n && f->nrxwait > n)
		memmove(f->rxwaitq, f->rxwaitq + n, (f->nrxwait - n) * sizeof(*f->rxwaitq));
	f->nrxwait -= n;
	if (placed && f->rx)
		pc_vq_flush(f->rx);
	return (int)n;
}

/**
 * unlist() - take a connection off a list, keeping the order of the others
 * @list:	the list
 * @n:		its length, decremented if @t was on it
 * @t:		the connection
 */
static void unlist(struct fast_tcp **list, unsigned *n, const struct fast_tcp *t)
{
	unsigned i;

	for (i = 0; i < *n; i++) {
		if (list[i] == t) {
			if (i + 1 < *n)
				memmove(list + i, list + i + 1, (*n - i - 1) * sizeof(*list));
			(*n)--;
			return;
		}
	}
}

/**
 * tx_key() - the TX table key of a connection: the tuple of the guest's frames
 * @key:	KEY_LEN bytes
 * @s:		the connection's state
 */
static void tx_key(uint8_t *key, const struct pc_fast_tcp *s)
{
	/* the guest's frames: from its address and port to ours */
	fast_tuple_key(key, s->tmpl.ipver | KEY_TCP, s->tmpl.dst, s->tmpl.src, s->tmpl.dport,
		       s->tmpl.sport);
}

/**
 * fast_tcp_free_all() - forget every TCP connection (their state is lost)
 * @f:		fast path
 */
void fast_tcp_free_all(struct pc_fast *f)
{
	unsigned i;

	for (i = 0; i < f->rxt.cap; i++) {
		struct fast_entry *e = &f->rxt.slot[i];

		if (e->state == SLOT_USED && e->tcp) {
			free(e->tcp);
			e->tcp = NULL;
		}
	}
	f->ntcp = f->nmore = f->nback = f->ntouched = f->nrxwait = 0;
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
	unsigned mask = PC_TCP_RX_GSO | PC_TCP_RX_CSUM_PARTIAL | PC_TCP_RX_DATA_VALID;

	f->tcp_opts4 = opts4 & mask;
	f->tcp_opts6 = opts6 & mask;
	f->tcp_per_event = per_event ? per_event : 1;
	f->tcp_max_window = max_window;
}

/**
 * lists_for() - grow the connection lists to hold every registered connection
 * @f:		fast path
 * @ntcp:	connections they must have room for (the more and RX-wait lists twice over)
 * Return: 0, or -ENOMEM (the lists that did grow are kept)
 */
static int lists_for(struct pc_fast *f, unsigned ntcp)
{
	struct fast_tcp **m, **b;
	unsigned cap;

	if (ntcp <= f->list_cap)
		return 0;
	cap = f->list_cap ? 2 * f->list_cap : 64;
	while (cap < ntcp)
		cap *= 2;
	m = realloc(f->more, 2 * (size_t)cap * sizeof(*m));
	if (!m)
		return -ENOMEM;
	f->more = m;
	b = realloc(f->backq, (size_t)cap * sizeof(*b));
	if (!b)
		return -ENOMEM;
	f->backq = b;
	b = realloc(f->rxwaitq, 2 * (size_t)cap * sizeof(*b));
	if (!b)
		return -ENOMEM;
	f->rxwaitq = b;
	f->list_cap = cap;
	return 0;
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
	uint8_t rkey[KEY_LEN], tkey[KEY_LEN];
	struct fast_entry *re, *te;
	struct fast_tcp *t;
	int err = 0;

	if (conn->fd < 0 || (conn->tmpl.ipver != 4 && conn->tmpl.ipver != 6) ||
	    !conn->tmpl.mss || conn->ws_from_guest > 14 || conn->ws_to_guest > 14)
		return -EINVAL;
	fast_fd_key(rkey, conn->fd);
	tx_key(tkey, conn);
	if (fast_table_find(&f->rxt, rkey) || fast_table_find(&f->txt, tkey))
		return -EEXIST;
	if (!f->tcp_scratch && !(f->tcp_scratch = malloc(pc_tcp_scratch_size())))
		return -ENOMEM;
	if (lists_for(f, f->ntcp + 1))
		return -ENOMEM;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	re = fast_table_get(&f->rxt, rkey, f->max, &err);
	if (!re) {
		free(t);
		return err;
	}
	re->fd = conn->fd;
	re->tcp = t;
	te = fast_table_get(&f->txt, tkey, f->max, &err);
	if (!te) {
		fast_table_drop(&f->rxt, fast_table_find(&f->rxt, rkey));
		free(t);
		return err;
	}
	te->fd = conn->fd;
	te->tcp = t;
	t->s = *conn;
	t->s.back = 0;
	t->s.rx_wait = 0;
	if (conn->rx_wait) {
		t->rx_wait = 1;
		f->rxwaitq[f->nrxwait++] = t;
	}
	t->s.to_host = t->s.to_guest = t->s.segs = t->s.events = 0;
	f->ntcp++;
	return 0;
}

/**
 * tcp_entry() - the RX table entry of a TCP connection's socket
 * @f:		fast path
 * @fd:		the socket
 * Return: the entry, or NULL if @fd is not a registered TCP connection
 */
static struct fast_entry *tcp_entry(const struct pc_fast *f, int fd)
{
	uint8_t key[KEY_LEN];
	struct fast_entry *e;

	fast_fd_key(key, fd);
	e = fast_table_find(&f->rxt, key);
	return e && e->tcp ? e : NULL;
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
	struct fast_entry *e = tcp_entry(f, fd);
	uint8_t key[KEY_LEN];
	struct fast_tcp *t;

	if (!e)
		return -ENOENT;
	t = e->tcp;
	*out = t->s;
	out->rx_wait = t->rx_wait;
	if (t->in_more || t->rx_wait)
		out->back |= PC_FAST_BACK_H2G;
	if (t->ack_due)
		out->back |= PC_FAST_BACK_ACK;
	/* Only the lists it is on (a scan each; touched is empty outside a wait). */
	if (t->in_more)
		unlist(f->more, &f->nmore, t);
	if (t->in_back)
		unlist(f->backq, &f->nback, t);
	if (t->rx_wait)
		unlist(f->rxwaitq, &f->nrxwait, t);
	fast_table_drop(&f->rxt, e);
	tx_key(key, &t->s);
	e = fast_table_find(&f->txt, key);
	if (e && e->tcp == t)
		fast_table_drop(&f->txt, e);
	free(t);
	f->ntcp--;
	return 0;
}

/**
 * pc_fast_tcp_events() - events C handled for a connection since the caller last asked
 * @f:		fast path
 * @fd:		its socket
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t pc_fast_tcp_events(struct pc_fast *f, int fd)
{
	struct fast_entry *e = tcp_entry(f, fd);
	int64_t n;

	if (!e)
		return -ENOENT;
	n = (int64_t)e->tcp->s.events;
	e->tcp->s.events = 0;
	return n;
}
