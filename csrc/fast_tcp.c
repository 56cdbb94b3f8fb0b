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
 *   into the RX ring, at most per_event bytes (pc_fast_set_tcp()) per event, the rest on
 *   the more list.
 *
 * Anything else is Python's. A frame C does not handle (duplicate ACK, gap, SYN/FIN/RST,
 * an ACK of data never sent...) ends C's share of the TX batch: the rest goes back to Python
 * unconsumed, as for UDP. Other socket events (HUP, ERR) are reported as they came. When a
 * step needs a decision (socket full, window closed, no RX buffers, end of stream, an error,
 * a retransmission timer to arm), C does what it safely can and hands the connection back: it
 * stops handling it and reports its fd with PC_FAST_EV_BACK; Python takes the state back with
 * pc_fast_remove_tcp() (the reasons in pc_fast_tcp.back) and registers it again later.
 *
 * Everything TCP keeps is this unit's: the connections (struct fast_tcp, hung off both of
 * their FAST_KIND_TCP table entries), the lists of connections with work pending, the RX
 * settings and the scratch of pc_tcp_rx() and of a TX round's runs (struct fast_tcp_part).
 * The dispatcher reaches it only through fast_tcp.h, with the shared struct fast_ctx and the
 * round's struct fast_round as parameters.
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
#include "wire.h"
#include "fast_tcp.h"

enum {
	TCPI_SND_WND = 228,		/* struct tcp_info: tcpi_snd_wnd (Linux 5.4) */
	TCPI_LEN = TCPI_SND_WND + 4,
	SNDBUF_BOOST = 2,		/* window = this many times a small send buffer... */
	SNDBUF_BOOST_BELOW = 1 << 20,	/* ...below this size */
	DISCARD_CALLS = 64
};

/**
 * struct fast_tcp - a TCP connection C runs, and its work pending within one wait
 * @s:		the state Python handed over (and takes back)
 * @discard:	bytes the guest acknowledged, still in the socket's receive queue
 * @ack_due:	an ACK to the guest is due at the end of the TX round
 * @touched:	listed in fast_tcp_part.touched
 * @in_more:	listed in fast_tcp_part.more (host data left after its per-event share)
 * @in_back:	listed in fast_tcp_part.backq, or already reported: Python takes it back
 * @rx_wait:	listed in fast_tcp_part.rxwaitq: out of RX buffers until the guest's RX kick
 * @wnd_fresh:	pc_fast_tcp.last_wnd_raw still stands: no guest data taken since it was
 *		computed (the window only limits the guest's data)
 */
struct fast_tcp {
	struct pc_fast_tcp s;
	uint32_t discard;
	uint8_t ack_due, touched, in_more, in_back, rx_wait, wnd_fresh;
};

/**
 * struct fast_tcp_part - the TCP unit's own state
 * @opts4:	PC_TCP_RX_* options of IPv4 connections (GSO, checksums)
 * @opts6:	the same for IPv6
 * @per_event:	host bytes per connection and event, then the more list
 * @max_window:	the largest window we offer (bytes)
 * @ntcp:	connections registered
 * @nmore:	connections on @more
 * @nback:	connections on @backq
 * @ntouched:	connections on @touched
 * @nrxwait:	connections on @rxwaitq
 * @list_cap:	connections the lists have room for
 * @scratch:	pc_tcp_rx() scratch, allocated with the first connection
 * @more:	connections with host data left, room for 2 * @list_cap
 * @backq:	connections to hand back, not reported yet, room for @list_cap
 * @rxwaitq:	connections waiting for RX buffers, room for 2 * @list_cap
 * @touched:	connections a TX round moved data or ACKs for
 * @truns:	TX round scratch: runs of one connection
 * @pitems:	TX round scratch: payload references of the round's frames
 */
struct fast_tcp_part {
	unsigned opts4, opts6, per_event, max_window;
	unsigned ntcp, nmore, nback, ntouched, nrxwait, list_cap;
	struct pc_tcp_scratch *scratch;
	struct fast_tcp **more, **backq, **rxwaitq;
	struct fast_tcp *touched[FAST_TX_FRAMES];
	struct pc_tcp_run truns[FAST_TX_FRAMES];
	struct pc_payload_ref pitems[FAST_TX_FRAMES];
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
 * @p:		the TCP part
 * @t:		the connection
 * @why:	PC_FAST_BACK_* reason, added to those already given
 *
 * The connection is queued once for a PC_FAST_EV_BACK report (fast_tcp_report()).
 */
static void back(struct fast_tcp_part *p, struct fast_tcp *t, uint32_t why)
{
	t->s.back |= why;
	if (!t->in_back) {
		t->in_back = 1;
		p->backq[p->nback++] = t;	/* room for every connection (see add) */
	}
}

/**
 * more() - put a connection on the more list: host data is left after its share
 * @p:		the TCP part
 * @t:		the connection (listed once, however often this is called)
 */
static void more(struct fast_tcp_part *p, struct fast_tcp *t)
{
	if (!t->in_more) {
		t->in_more = 1;
		p->more[p->nmore++] = t;	/* room for twice every connection */
	}
}

/**
 * arm() - set the retransmission deadline one RTO from now
 * @p:		the TCP part
 * @t:		the connection
 *
 * Python's timer must fire by then: if it is not armed, or armed later than the deadline,
 * the connection is handed back (PC_FAST_BACK_TIMER) so that Python arms it.
 */
static void arm(struct fast_tcp_part *p, struct fast_tcp *t)
{
	t->s.deadline = now_s() + t->s.rto;
	if (!t->s.timer_at || t->s.timer_at > t->s.deadline + 0.001)
		back(p, t, PC_FAST_BACK_TIMER);
}

/**
 * acked() - the guest acknowledged more of our data
 * @p:		the TCP part
 * @t:		the connection
 * @ack:	the new SND.UNA
 * @n:		bytes it acknowledges beyond the old one (discarded from the socket at the
 *		round's end)
 *
 * Retries and the RTO are reset; the deadline is re-armed while data is still in flight and
 * cleared when everything is acknowledged.
 */
static void acked(struct fast_tcp_part *p, struct fast_tcp *t, uint32_t ack, uint32_t n)
{
	t->discard += n;
	t->s.una = ack;
	t->s.retries = 0;
	t->s.rto = t->s.rto0;
	if (t->s.tmpl.seq != ack)
		arm(p, t);
	else
		t->s.deadline = 0;
}

/**
 * window_raw() - the raw window field to advertise now
 * @p:		the TCP part
 * @t:		the connection; its wnd_to_guest is set to the window the field stands for
 *
 * While no guest data was taken since the last computation, the last value sent stands
 * (no getsockopt() per segment); otherwise pc_tcp_send_window() is asked again.
 *
 * Return: the window field, scaled by our window scale and capped at 0xffff
 */
static uint16_t window_raw(const struct fast_tcp_part *p, struct fast_tcp *t)
{
	int64_t raw;

	if (t->wnd_fresh && t->s.last_wnd_raw > 0)
		return (uint16_t)t->s.last_wnd_raw;
	t->wnd_fresh = 1;
	raw = pc_tcp_send_window(t->s.fd, t->s.local, p->max_window) >> t->s.ws_to_guest;
	if (raw > 0xFFFF)
		raw = 0xFFFF;
	t->s.wnd_to_guest = (uint32_t)raw << t->s.ws_to_guest;
	return (uint16_t)raw;
}

/**
 * rx_opts() - the PC_TCP_RX_* options for a connection's IP version
 * @p:		the TCP part
 * @t:		the connection
 * Return: opts4 or opts6
 */
static unsigned rx_opts(const struct fast_tcp_part *p, const struct fast_tcp *t)
{
	return t->s.tmpl.ipver == 4 ? p->opts4 : p->opts6;
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
 * @p:		the TCP part
 * @c:		fast path context
 * @t:		the connection
 * @placed:	set when RX buffers were filled
 *
 * At most per_event bytes per call; a connection with more left goes on the more list,
 * one out of RX buffers on the RX-wait list, and one that needs a decision (zero window,
 * our window closed, an error, a stopped ring) is handed back. End of stream is not looked
 * for here: it comes as EPOLLRDHUP, which is Python's.
 */
static void to_guest(struct fast_tcp_part *p, const struct fast_ctx *c, struct fast_tcp *t,
		     int *placed)
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
	if (s->back || !c->rx) {
		back(p, t, PC_FAST_BACK_H2G);
		return;
	}
	if (room <= 0) {
		if (!s->wnd_from_guest && !in_flight)
			back(p, t, PC_FAST_BACK_H2G);	/* zero window: Python probes */
		return;
	}
	limit = room < p->per_event ? room : p->per_event;
	ready = queued(t);
	if (!ready)
		return;				/* nothing new (the usual case after guest data) */
	opts = rx_opts(p, t) | PC_TCP_RX_NO_FLUSH;
	if (ready > 0) {			/* measured: pc_tcp_rx() need not probe again */
		capped = ready > limit;
		limit = capped ? limit : ready;
		opts |= PC_TCP_RX_QUEUED;
	}
	raw = window_raw(p, t);
	if (!raw) {
		back(p, t, PC_FAST_BACK_H2G);	/* our window closes: Python polls it */
		return;
	}
	s->tmpl.window = raw;
	n = pc_tcp_rx(c->rx, p->scratch, s->fd, &s->tmpl, c->hdr_len, c->mergeable,
		      (uint32_t)limit, opts, &res);
	if (res.bufs)
		*placed = 1;
	if (n < 0) {
		back(p, t, PC_FAST_BACK_H2G);	/* Python meets the error and resets */
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
			arm(p, t);
	}
	switch (res.stop) {
	case PC_TCP_STOP_DRAINED:
	case PC_TCP_STOP_WINDOW:		/* all it asked for: the window, or our share */
		if (capped && n == limit && limit < room)
			more(p, t);
		break;
	case PC_TCP_STOP_LIMIT:
		if (n > 0)
			more(p, t);
		else
			back(p, t, PC_FAST_BACK_H2G);
		break;
	case PC_TCP_STOP_AGAIN:			/* buffers came while the ring ran out */
		more(p, t);
		break;
	case PC_TCP_STOP_NOBUFS:		/* wait for the guest's RX kick, drop nothing */
		t->rx_wait = 1;
		p->rxwaitq[p->nrxwait++] = t;	/* room for every connection */
		break;
	default:				/* stopped ring, end of stream */
		back(p, t, PC_FAST_BACK_H2G);
	}
}

/**
 * send_ack() - send a bare ACK to the guest: it sent data, and none of ours carried the
 *		acknowledgement
 * @p:		the TCP part
 * @c:		fast path context
 * @t:		the connection (handed back if the ACK cannot go now)
 */
static void send_ack(struct fast_tcp_part *p, const struct fast_ctx *c, struct fast_tcp *t)
{
	struct pc_fast_tcp *s = &t->s;
	struct pc_rx_result res;
	uint16_t raw;

	t->ack_due = 0;
	if (s->back || !c->rx) {
		back(p, t, PC_FAST_BACK_ACK);
		return;
	}
	raw = window_raw(p, t);
	if (!raw) {
		back(p, t, PC_FAST_BACK_ACK);	/* window closed: Python polls it */
		return;
	}
	s->tmpl.window = raw;
	if (pc_tcp_ctl(c->rx, &s->tmpl, PC_TCP_ACK, NULL, 0, c->hdr_len, c->mergeable,
		       rx_opts(p, t) & PC_TCP_RX_DATA_VALID, &res) <= 0) {
		back(p, t, PC_FAST_BACK_ACK);	/* no RX buffer: Python's queue holds it */
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
 * fast_tcp_new() - the TCP unit's state, no connection registered
 * Return: the part, or NULL without memory. Free with fast_tcp_free().
 */
struct fast_tcp_part *fast_tcp_new(void)
{
	struct fast_tcp_part *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->per_event = 1u << 20;
	p->max_window = 0xFFFFu << 8;
	return p;
}

/**
 * fast_tcp_free() - release the TCP unit's state (NULL is fine); the connections must have
 *		     been dropped first (fast_tcp_drop_all())
 * @p:		the TCP part
 */
void fast_tcp_free(struct fast_tcp_part *p)
{
	if (!p)
		return;
	free(p->scratch);
	free(p->more);
	free(p->backq);
	free(p->rxwaitq);
	free(p);
}

/**
 * fast_tcp_count() - connections registered
 * @p:		the TCP part
 * Return: their number (each has one entry in either table)
 */
unsigned fast_tcp_count(const struct fast_tcp_part *p)
{
	return p->ntcp;
}

/**
 * fast_tcp_sock() - a registered connection's socket is readable and/or writable
 * @p:		the TCP part
 * @c:		fast path context
 * @e:		the socket's entry (FAST_KIND_TCP)
 * @mask:	EPOLLIN and/or EPOLLOUT
 * @placed:	set when RX buffers were filled
 * Return: DONE, or REPORT for a connection already handed back (Python sees the event)
 */
int fast_tcp_sock(struct fast_tcp_part *p, struct fast_ctx *c, struct fast_entry *e,
		  uint32_t mask, int *placed)
{
	struct fast_tcp *t = e->u.tcp;

	if (t->s.back)
		return REPORT;
	t->s.events++;
	if (mask & EPOLLIN)
		to_guest(p, c, t, placed);
	return DONE;
}

/**
 * find_tx() - the registered connection a guest TCP frame belongs to
 * @c:		fast path context
 * @pkt:	the classified frame
 * Return: the connection, or NULL if its tuple is not registered
 */
static struct fast_tcp *find_tx(const struct fast_ctx *c, const struct pc_pkt *pkt)
{
	uint8_t key[KEY_LEN];
	struct fast_entry *e;

	fast_tuple_key(key, pkt->ipver | KEY_TCP, pkt->src, pkt->dst, pkt->sport, pkt->dport);
	e = fast_table_find(&c->txt, key);
	return e && e->kind == FAST_KIND_TCP ? e->u.tcp : NULL;
}

/**
 * fast_tcp_head() - whether a classified frame is a segment of a connection C runs
 * @p:		the TCP part
 * @c:		fast path context
 * @pkt:	the frame (well-formed)
 * Return: non-zero if so
 */
int fast_tcp_head(const struct fast_tcp_part *p, const struct fast_ctx *c,
		  const struct pc_pkt *pkt)
{
	struct fast_tcp *t;

	if (pkt->proto != PROTO_TCP || !p->ntcp)
		return 0;
	t = find_tx(c, pkt);
	return t && !t->s.back;
}

/**
 * fast_tcp_prefix() - send and process the leading frames of a classified TX round that are
 *		       in-order data or ACKs of registered connections
 * @p:		the TCP part (its run and payload arrays are the round's scratch)
 * @c:		fast path context
 * @r:		the round
 * @n:		frames in the round
 *
 * Return: frames taken (a prefix); the rest is left for Python or the next round
 */
unsigned fast_tcp_prefix(struct fast_tcp_part *p, struct fast_ctx *c, struct fast_round *r,
			 unsigned n)
{
	int nr = pc_tcp_runs(r->recs, n, p->pitems, p->truns, FAST_TX_FRAMES);
	unsigned i, k = 0;

	for (i = 0; nr > 0 && i < (unsigned)nr; i++) {
		const struct pc_tcp_run *run = &p->truns[i];
		struct pc_fast_tcp *s;
		struct fast_tcp *t;
		int32_t una_d;

		if (run->other || (!run->data && !run->acks))
			break;
		t = find_tx(c, &r->recs[run->first]);
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
			int64_t sent = pc_send_payloads(s->fd, r->frames, n, r->iov, FAST_TX_IOV,
							p->pitems + run->first, run->count);

			if (sent == -EINVAL)
				break;
			if (sent == -EAGAIN)
				sent = 0;
			if (sent < 0) {
				back(p, t, PC_FAST_BACK_ERR);
			} else {
				s->tmpl.ack += (uint32_t)sent;
				s->to_host += (uint64_t)sent;
				t->wnd_fresh = 0;	/* the window is the guest's data's */
				if (sent < run->bytes)	/* the guest resends the rest */
					back(p, t, PC_FAST_BACK_FULL);
				else
					t->ack_due = 1;
			}
		}
		if (una_d > 0)
			acked(p, t, run->ack, (uint32_t)una_d);
		if (una_d >= 0)
			s->wnd_from_guest = (uint32_t)run->window << s->ws_from_guest;
		s->events++;
		if (!t->touched) {
			t->touched = 1;
			p->touched[p->ntouched++] = t;
		}
		k += run->count;
	}
	return k;
}

/**
 * fast_tcp_round_end() - per connection a TX round touched: acknowledged bytes leave the
 *			  socket, host data goes out, then an ACK if one is still due
 * @p:		the TCP part
 * @c:		fast path context
 * @placed:	set when RX buffers were filled
 */
void fast_tcp_round_end(struct fast_tcp_part *p, struct fast_ctx *c, int *placed)
{
	unsigned i;

	for (i = 0; i < p->ntouched; i++) {
		struct fast_tcp *t = p->touched[i];

		t->touched = 0;
		if (t->discard) {
			discard(t->s.fd, t->discard);
			t->discard = 0;
		}
		if (t->s.back & (PC_FAST_BACK_ERR | PC_FAST_BACK_FULL))
			continue;
		to_guest(p, c, t, placed);
		if (t->ack_due)
			send_ack(p, c, t);
	}
	p->ntouched = 0;
}

/**
 * fast_tcp_pending() - whether connections have host data left for the next pass
 * @p:		the TCP part
 * Return: non-zero if the more list holds any (the wait must not block)
 */
int fast_tcp_pending(const struct fast_tcp_part *p)
{
	return p->nmore > 0;
}

/**
 * fast_tcp_more() - one more share of host data for each connection on the more list
 * @p:		the TCP part
 * @c:		fast path context
 * @placed:	set when RX buffers were filled
 * Return: non-zero if the list held any
 */
int fast_tcp_more(struct fast_tcp_part *p, struct fast_ctx *c, int *placed)
{
	unsigned i, n = p->nmore;

	for (i = 0; i < n; i++) {
		struct fast_tcp *t = p->more[i];

		t->in_more = 0;
		to_guest(p, c, t, placed);	/* may list it again, past n */
	}
	if (n && p->nmore > n)
		memmove(p->more, p->more + n, (p->nmore - n) * sizeof(*p->more));
	p->nmore -= n;
	return n > 0;
}

/**
 * fast_tcp_report() - events for connections handed back and not reported yet
 * @p:		the TCP part
 * @out:	where they go (fd, PC_FAST_EV_BACK)
 * @room:	entries in @out
 * Return: events written
 */
unsigned fast_tcp_report(struct fast_tcp_part *p, struct pc_fast_event *out, unsigned room)
{
	unsigned k = p->nback < room ? p->nback : room, i;

	for (i = 0; i < k; i++) {
		out[i].fd = p->backq[i]->s.fd;
		out[i].events = PC_FAST_EV_BACK;
	}
	if (k && p->nback > k)
		memmove(p->backq, p->backq + k, (p->nback - k) * sizeof(*p->backq));
	p->nback -= k;
	return k;
}

/**
 * fast_tcp_rx_ready() - the guest added RX buffers: connections waiting for them send on
 * @p:		the TCP part
 * @c:		fast path context
 * Return: connections resumed
 */
int fast_tcp_rx_ready(struct fast_tcp_part *p, struct fast_ctx *c)
{
	unsigned i, n = p->nrxwait;
	int placed = 0;

	for (i = 0; i < n; i++) {
		struct fast_tcp *t = p->rxwaitq[i];

		t->rx_wait = 0;
		to_guest(p, c, t, &placed);	/* may wait again, listed past n */
	}
	if (n && p->nrxwait > n)
		memmove(p->rxwaitq, p->rxwaitq + n, (p->nrxwait - n) * sizeof(*p->rxwaitq));
	p->nrxwait -= n;
	if (placed && c->rx)
		pc_vq_flush(c->rx);
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
 * fast_tcp_drop_all() - forget every TCP connection (their state is lost); their table
 *			 entries stay for the caller, who is discarding the tables
 * @p:		the TCP part
 * @c:		fast path context (the connections are found through its RX table)
 */
void fast_tcp_drop_all(struct fast_tcp_part *p, struct fast_ctx *c)
{
	unsigned i;

	for (i = 0; c->rxt.slot && i < c->rxt.cap; i++) {
		struct fast_entry *e = &c->rxt.slot[i];

		if (e->state == SLOT_USED && e->kind == FAST_KIND_TCP && e->u.tcp) {
			free(e->u.tcp);
			e->u.tcp = NULL;
		}
	}
	p->ntcp = p->nmore = p->nback = p->ntouched = p->nrxwait = 0;
}

/**
 * fast_tcp_set() - how TCP connections' data goes into the RX ring
 * @p:		the TCP part
 * @opts4:	PC_TCP_RX_* options (GSO, checksums) for IPv4 connections
 * @opts6:	the same for IPv6
 * @per_event:	host bytes per connection and event (then after the other events)
 * @max_window:	the largest window offered to the guest, bytes
 */
void fast_tcp_set(struct fast_tcp_part *p, unsigned opts4, unsigned opts6, unsigned per_event,
		  unsigned max_window)
{
	unsigned mask = PC_TCP_RX_GSO | PC_TCP_RX_CSUM_PARTIAL | PC_TCP_RX_DATA_VALID;

	p->opts4 = opts4 & mask;
	p->opts6 = opts6 & mask;
	p->per_event = per_event ? per_event : 1;
	p->max_window = max_window;
}

/**
 * lists_for() - grow the connection lists to hold every registered connection
 * @p:		the TCP part
 * @ntcp:	connections they must have room for (the more and RX-wait lists twice over)
 * Return: 0, or -ENOMEM (the lists that did grow are kept)
 */
static int lists_for(struct fast_tcp_part *p, unsigned ntcp)
{
	struct fast_tcp **m, **b;
	unsigned cap;

	if (ntcp <= p->list_cap)
		return 0;
	cap = p->list_cap ? 2 * p->list_cap : 64;
	while (cap < ntcp)
		cap *= 2;
	m = realloc(p->more, 2 * (size_t)cap * sizeof(*m));
	if (!m)
		return -ENOMEM;
	p->more = m;
	b = realloc(p->backq, (size_t)cap * sizeof(*b));
	if (!b)
		return -ENOMEM;
	p->backq = b;
	b = realloc(p->rxwaitq, 2 * (size_t)cap * sizeof(*b));
	if (!b)
		return -ENOMEM;
	p->rxwaitq = b;
	p->list_cap = cap;
	return 0;
}

/**
 * fast_tcp_add() - run an established connection's steady state in C
 * @p:		the TCP part
 * @c:		fast path context (an entry goes into either table)
 * @conn:	its state (back and the counters are reset); @conn->fd in the epoll set
 *		(edge-triggered), with SO_PEEK_OFF enabled
 * Return: 0, -EINVAL, -EEXIST if its socket or tuple has an entry, -ENOSPC when a table holds
 *	   its maximum, or -ENOMEM
 */
int fast_tcp_add(struct fast_tcp_part *p, struct fast_ctx *c, const struct pc_fast_tcp *conn)
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
	if (fast_table_find(&c->rxt, rkey) || fast_table_find(&c->txt, tkey))
		return -EEXIST;
	if (!p->scratch && !(p->scratch = malloc(pc_tcp_scratch_size())))
		return -ENOMEM;
	if (lists_for(p, p->ntcp + 1))
		return -ENOMEM;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	re = fast_table_get(&c->rxt, rkey, c->max, &err);
	if (!re) {
		free(t);
		return err;
	}
	re->kind = FAST_KIND_TCP;
	re->fd = conn->fd;
	re->u.tcp = t;
	te = fast_table_get(&c->txt, tkey, c->max, &err);
	if (!te) {
		fast_table_drop(&c->rxt, fast_table_find(&c->rxt, rkey));
		free(t);
		return err;
	}
	te->kind = FAST_KIND_TCP;
	te->fd = conn->fd;
	te->u.tcp = t;
	t->s = *conn;
	t->s.back = 0;
	t->s.rx_wait = 0;
	if (conn->rx_wait) {
		t->rx_wait = 1;
		p->rxwaitq[p->nrxwait++] = t;
	}
	t->s.to_host = t->s.to_guest = t->s.segs = t->s.events = 0;
	p->ntcp++;
	return 0;
}

/**
 * tcp_entry() - the RX table entry of a TCP connection's socket
 * @c:		fast path context
 * @fd:		the socket
 * Return: the entry, or NULL if @fd is not a registered TCP connection
 */
static struct fast_entry *tcp_entry(const struct fast_ctx *c, int fd)
{
	struct fast_entry *e = fast_table_fd(&c->rxt, fd);

	return e && e->kind == FAST_KIND_TCP ? e : NULL;
}

/**
 * fast_tcp_remove() - take a connection back from C (before its socket closes, or when
 *		       Python handles one of its events)
 * @p:		the TCP part
 * @c:		fast path context
 * @fd:		its socket
 * @out:	its state now: back says what C left for Python (PC_FAST_BACK_H2G also when
 *		host data was left for later), the counters what moved since it was added
 * Return: 0, or -ENOENT without an entry (@out untouched)
 */
int fast_tcp_remove(struct fast_tcp_part *p, struct fast_ctx *c, int fd,
		    struct pc_fast_tcp *out)
{
	struct fast_entry *e = tcp_entry(c, fd);
	uint8_t key[KEY_LEN];
	struct fast_tcp *t;

	if (!e)
		return -ENOENT;
	t = e->u.tcp;
	*out = t->s;
	out->rx_wait = t->rx_wait;
	if (t->in_more || t->rx_wait)
		out->back |= PC_FAST_BACK_H2G;
	if (t->ack_due)
		out->back |= PC_FAST_BACK_ACK;
	/* Only the lists it is on (a scan each; touched is empty outside a wait). */
	if (t->in_more)
		unlist(p->more, &p->nmore, t);
	if (t->in_back)
		unlist(p->backq, &p->nback, t);
	if (t->rx_wait)
		unlist(p->rxwaitq, &p->nrxwait, t);
	fast_table_drop(&c->rxt, e);
	tx_key(key, &t->s);
	e = fast_table_find(&c->txt, key);
	if (e && e->kind == FAST_KIND_TCP && e->u.tcp == t)
		fast_table_drop(&c->txt, e);
	free(t);
	p->ntcp--;
	return 0;
}

/**
 * fast_tcp_events() - events C handled for a connection since the caller last asked
 * @c:		fast path context
 * @fd:		its socket
 * Return: the count (then reset), or -ENOENT without an entry
 */
int64_t fast_tcp_events(const struct fast_ctx *c, int fd)
{
	struct fast_entry *e = tcp_entry(c, fd);
	int64_t n;

	if (!e)
		return -ENOENT;
	n = (int64_t)e->u.tcp->s.events;
	e->u.tcp->s.events = 0;
	return n;
}
