// SPDX-License-Identifier: MIT
/* udp_path.c - UDP datagrams between host sockets and guest memory, both ways.
 *
 * Theory of operation
 * -------------------
 * Guest to host (pc_udp_runs, pc_send_udp_runs):
 *
 * Python finds the flow of each datagram (pc_classify() gives addresses, ports and the
 * payload range); this file sends them: one sendmmsg() per run of consecutive datagrams for
 * the same socket, each message an iovec array pointing into the TX batch's slices, which
 * pc_vq_pop_tx() already bounds-checked against guest memory. Nothing is copied in user
 * space. A datagram the kernel refuses gets its own error code and does not hold up the
 * others: UDP has no stream order to keep across datagrams.
 *
 * Host to guest (pc_udp_rx): each datagram is received straight into the guest's RX chains,
 * after room for the virtio-net, Ethernet, IP and UDP headers, which are then written in front
 * of it: one copy, by the kernel. The socket tells the size of its next datagram (FIONREAD),
 * so only the chains it needs are taken; FIONREAD's 0 (an empty queue or an empty datagram)
 * is settled by a zero-length peek, since a datagram may land between the two calls. A
 * datagram from a peer no template of the call covers (a new peer of a -u listener) is handed
 * back to the caller in a spill buffer instead.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "classify.h"
#include "virtq.h"
#include "wire.h"

/* Messages and iovec entries per sendmmsg() call; segments and payload bytes per GSO message
 * (the kernel's UDP_MAX_SEGMENTS, and what an IPv4 datagram holds). */
enum { UDP_MSGS = 64, UDP_IOV = 512, UDP_GSO_SEGS = 64, UDP_GSO_MAX = 65507 };

#ifndef SOL_UDP
#define SOL_UDP		17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT	103	/* linux/udp.h, Linux 4.18 */
#endif

/**
 * range_iov() - point iovec entries at bytes [off, off + len) of a frame's slices
 * @iov:	the frame's first slice
 * @n:		number of slices
 * @off:	offset in the frame
 * @len:	bytes wanted
 * @out:	destination entries
 * @room:	entries available in @out
 * Return: entries used, or -1 if @room is too small
 */
static int range_iov(const struct iovec *iov, unsigned n, uint64_t off, uint64_t len,
		     struct iovec *out, unsigned room)
{
	unsigned k, used = 0;

	for (k = 0; k < n && len; k++) {
		uint64_t take;

		if (off >= iov[k].iov_len) {
			off -= iov[k].iov_len;
			continue;
		}
		if (used == room)
			return -1;
		take = iov[k].iov_len - off < len ? iov[k].iov_len - off : len;
		out[used].iov_base = (uint8_t *)iov[k].iov_base + off;
		out[used].iov_len = take;
		used++;
		off = 0;
		len -= take;
	}
	return (int)used;
}

/**
 * struct dgram_batch - messages for one sendmmsg() call on one socket
 * @msgs:	the messages
 * @first:	each message's first item (its datagrams are consecutive items)
 * @count:	datagrams in each message: more than one is a GSO message (UDP_SEGMENT)
 * @ctl:	each message's UDP_SEGMENT control message
 * @out:	iovec entries of all messages
 * @nmsg:	messages so far
 * @nout:	entries of @out used
 * @fd:		the socket
 * @gso:	0 once a GSO message failed on this socket: one datagram per message from then on
 * @open:	the last message may take more datagrams
 */
struct dgram_batch {
	struct mmsghdr msgs[UDP_MSGS];
	struct pc_dgram_ref *first[UDP_MSGS];
	unsigned count[UDP_MSGS];
	union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } ctl[UDP_MSGS];
	struct iovec out[UDP_IOV];
	unsigned nmsg, nout;
	int fd, gso, open;
};

/**
 * send_one_by_one() - after a GSO message failed: each of its datagrams in a message of its
 *		       own, each with its own fate
 * @b:		batch
 * @m:		the message
 */
static void send_one_by_one(struct dgram_batch *b, unsigned m)
{
	const struct msghdr *mh = &b->msgs[m].msg_hdr;
	uint64_t off = 0;
	unsigned j;

	for (j = 0; j < b->count[m]; j++) {
		struct pc_dgram_ref *it = &b->first[m][j];
		struct iovec iov[UDP_IOV];
		struct msghdr one = { .msg_iov = iov };
		int used = range_iov(mh->msg_iov, (unsigned)mh->msg_iovlen, off, it->len, iov,
				     UDP_IOV);

		off += it->len;
		one.msg_iovlen = (size_t)(used < 0 ? 0 : used);
		while (sendmsg(b->fd, &one, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
			if (errno != EINTR) {
				it->err = -errno;
				break;
			}
		}
	}
}

/**
 * flush() - sendmmsg() the batch's messages, recording each datagram's fate
 * @b:		batch (emptied here)
 *
 * A GSO message the kernel refuses (a route that cannot segment, a full buffer, a pending
 * error) is sent again one datagram at a time, so each datagram still gets its own fate.
 */
static void flush(struct dgram_batch *b)
{
	unsigned done = 0, j;

	while (done < b->nmsg) {
		int r = sendmmsg(b->fd, b->msgs + done, b->nmsg - done,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			if (b->count[done] > 1) {
				b->gso = 0;
				send_one_by_one(b, done);
			} else {
				b->first[done]->err = -errno;
			}
			done++;		/* this one failed: go on after it */
			continue;
		}
		for (; r > 0; r--, done++)
			for (j = 0; j < b->count[done]; j++)
				b->first[done][j].err = 0;
	}
	b->nmsg = b->nout = 0;
	b->open = 0;
}

/**
 * can_join() - whether item @it may join the batch's last message as one more GSO segment:
 *		same socket, the message's segment size (a shorter one ends the message), at
 *		most UDP_GSO_SEGS segments and UDP_GSO_MAX bytes
 * @b:		batch
 * @it:		the item
 * Return: non-zero if it may
 */
static int can_join(const struct dgram_batch *b, const struct pc_dgram_ref *it)
{
	const struct pc_dgram_ref *head;
	unsigned m = b->nmsg - 1;

	if (!b->nmsg || !b->open || !b->gso || it->fd != b->fd)
		return 0;
	head = b->first[m];
	return it->len && it->len <= head->len && b->count[m] < UDP_GSO_SEGS &&
	       (uint64_t)head->len * b->count[m] + it->len <= UDP_GSO_MAX;
}

/**
 * set_segment() - make a message a GSO message of segments of its first datagram's size
 * @b:		batch
 * @m:		the message (the batch's last one), given its UDP_SEGMENT control message here
 */
static void set_segment(struct dgram_batch *b, unsigned m)
{
	struct msghdr *mh = &b->msgs[m].msg_hdr;
	struct cmsghdr *c;
	uint16_t seg = (uint16_t)b->first[m]->len;

	mh->msg_control = b->ctl[m].buf;
	mh->msg_controllen = sizeof(b->ctl[m].buf);
	c = CMSG_FIRSTHDR(mh);
	c->cmsg_level = SOL_UDP;
	c->cmsg_type = UDP_SEGMENT;
	c->cmsg_len = CMSG_LEN(sizeof(seg));
	memcpy(CMSG_DATA(c), &seg, sizeof(seg));
}

/**
 * send_datagrams() - send UDP payloads of TX frames to their sockets, from guest memory
 * @frames:	the batch's frames
 * @nframes:	number of frames
 * @iov:	the batch's slices
 * @max_iov:	entries in @iov
 * @items:	(fd, frame, offset, length) per datagram; err is filled in for each
 * @nitems:	number of datagrams
 *
 * Consecutive datagrams of one socket and one size (the last may be shorter) go out as one
 * GSO message (UDP_SEGMENT): one trip through the stack for up to 64 datagrams, which the
 * receiver still gets one by one. A guest's bulk UDP at MTU 1500 costs about half the CPU.
 *
 * Return: @nitems, or -EINVAL (nothing sent) if an item's range is outside its frame
 */
static int send_datagrams(const struct pc_tx_frame *frames, unsigned nframes,
			  const struct iovec *iov, unsigned max_iov, struct pc_dgram_ref *items,
			  unsigned nitems)
{
	struct dgram_batch b;
	unsigned i;

	for (i = 0; i < nitems; i++) {
		if (!pc_tx_range_ok(frames, nframes, max_iov, items[i].frame, items[i].off,
				    items[i].len))
			return -EINVAL;
	}
	b.nmsg = b.nout = 0;
	b.fd = -1;
	b.gso = 1;
	b.open = 0;
	for (i = 0; i < nitems; i++) {
		const struct pc_tx_frame *f = &frames[items[i].frame];
		struct msghdr *mh;
		int join, used;

		if (UDP_IOV - b.nout < f->nslices ||
		    (b.nmsg && items[i].fd != b.fd) ||
		    (b.nmsg == UDP_MSGS && !can_join(&b, &items[i])))
			flush(&b);
		if (items[i].fd != b.fd) {
			b.fd = items[i].fd;
			b.gso = 1;
		}
		join = can_join(&b, &items[i]);
		used = range_iov(iov + f->first, f->nslices, items[i].off, items[i].len,
				 b.out + b.nout, UDP_IOV - b.nout);
		if (used < 0) {			/* more slices than one call holds */
			items[i].err = -EMSGSIZE;
			b.open = 0;		/* the next one must not join across it */
			continue;
		}
		if (join) {
			unsigned m = b.nmsg - 1;

			mh = &b.msgs[m].msg_hdr;
			mh->msg_iovlen += (size_t)used;
			if (b.count[m]++ == 1)
				set_segment(&b, m);
			b.open = items[i].len == b.first[m]->len;
		} else {
			memset(&b.msgs[b.nmsg], 0, sizeof(b.msgs[b.nmsg]));
			mh = &b.msgs[b.nmsg].msg_hdr;
			mh->msg_iov = b.out + b.nout;
			mh->msg_iovlen = (size_t)used;
			b.first[b.nmsg] = &items[i];
			b.count[b.nmsg++] = 1;
			b.open = 1;
		}
		b.nout += (unsigned)used;
	}
	if (b.nmsg)
		flush(&b);
	return (int)nitems;
}

/**
 * pc_udp_runs() - cut an index list of a classified batch into runs of one UDP tuple
 * @recs:	records of the batch
 * @nrecs:	their number
 * @idx:	frames to consider, in order
 * @n:		entries in @idx
 * @runs:	runs out (fd set to -1)
 * @max_runs:	room in @runs (n is always enough)
 *
 * A Python decision per run instead of per datagram: a bulk flow sends long runs.
 *
 * Return: number of runs, or -EINVAL for an index outside @recs or too little room
 */
int pc_udp_runs(const struct pc_pkt *recs, unsigned nrecs, const uint32_t *idx, unsigned n,
		struct pc_udp_run *runs, unsigned max_runs)
{
	unsigned k, nruns = 0;

	for (k = 0; k < n; k++) {
		const struct pc_pkt *p;
		int udp;

		if (idx[k] >= nrecs)
			return -EINVAL;
		p = &recs[idx[k]];
		udp = p->valid == PC_PKT_OK && p->proto == PROTO_UDP && !p->gso_type;
		if (udp && nruns && runs[nruns - 1].udp &&
		    same_tuple(&recs[idx[runs[nruns - 1].first]], p)) {
			runs[nruns - 1].count++;
			continue;
		}
		if (nruns == max_runs)
			return -EINVAL;
		memset(&runs[nruns], 0, sizeof(runs[nruns]));
		runs[nruns].first = k;
		runs[nruns].count = 1;
		runs[nruns].fd = -1;
		runs[nruns].udp = (uint8_t)udp;
		nruns++;
	}
	return (int)nruns;
}

/**
 * pc_send_udp_runs() - send the runs given a socket, straight from guest memory
 * @frames:	the batch's frames
 * @nframes:	number of frames
 * @iov:	the batch's slices
 * @max_iov:	entries in @iov
 * @recs:	the batch's records (payload ranges)
 * @nrecs:	their number
 * @idx:	the index list pc_udp_runs() cut
 * @n:		its entries
 * @runs:	runs, fd set by the caller (-1: not sent); failed is set here
 * @nruns:	their number
 * @items:	n entries of scratch: items[k] is the datagram of position k (err: its fate)
 *
 * Return: datagrams that failed, or -EINVAL with nothing sent
 */
int pc_send_udp_runs(const struct pc_tx_frame *frames, unsigned nframes,
		     const struct iovec *iov, unsigned max_iov, const struct pc_pkt *recs,
		     unsigned nrecs, const uint32_t *idx, unsigned n, struct pc_udp_run *runs,
		     unsigned nruns, struct pc_dgram_ref *items)
{
	unsigned r, k, used = 0, failed = 0;
	int ret;

	for (r = 0; r < nruns; r++) {
		if (runs[r].fd < 0)
			continue;
		if (!runs[r].udp || runs[r].first + runs[r].count > n ||
		    runs[r].first + runs[r].count < runs[r].first)
			return -EINVAL;
		for (k = runs[r].first; k < runs[r].first + runs[r].count; k++) {
			const struct pc_pkt *p;

			if (idx[k] >= nrecs)
				return -EINVAL;
			p = &recs[idx[k]];
			items[used].fd = runs[r].fd;
			items[used].frame = idx[k];
			items[used].off = p->payload_off;
			items[used].len = p->payload_len;
			items[used].err = 0;
			used++;
		}
	}
	ret = send_datagrams(frames, nframes, iov, max_iov, items, used);
	if (ret < 0)
		return ret;
	/* Spread the fates back to index positions, last first (items are a prefix of them) */
	for (r = nruns; r-- > 0;) {
		uint16_t nf = 0;

		if (runs[r].fd < 0)
			continue;
		for (k = runs[r].first + runs[r].count; k-- > runs[r].first;) {
			items[k] = items[--used];
			nf += items[k].err != 0;
		}
		runs[r].failed = nf;
		failed += nf;
	}
	return (int)failed;
}

/* ---- host to guest ---- */

/* Chains and slices one datagram may take (64 KiB in buffers of at least 1 KiB fits). */
enum { RX_CHAINS = 80, RX_SLICES = 256 };

/**
 * struct rx_plan - the RX chains popped for one datagram
 * @slice:	their device-writable slices, chain after chain
 * @gpa:	guest-physical address of each slice (dirty logging)
 * @head:	head index of each chain
 * @first:	index of each chain's first slice
 * @n:		slices of each chain (0 for a bad chain)
 * @total:	bytes of each chain (0 for a bad chain)
 * @pos:	avail position after each chain (to give back what follows it)
 * @nch:	chains popped
 * @nsl:	slices used
 * @have:	bytes in the good chains
 * @good:	good chains
 */
struct rx_plan {
	struct iovec slice[RX_SLICES];
	uint64_t gpa[RX_SLICES];
	uint32_t head[RX_CHAINS];
	uint32_t first[RX_CHAINS];
	uint32_t n[RX_CHAINS];
	uint64_t total[RX_CHAINS];
	uint16_t pos[RX_CHAINS];
	unsigned nch, nsl, good;
	uint64_t have;
};

/**
 * plan_chains() - pop RX chains until they hold @need bytes (one chain without mergeable
 *		   buffers)
 * @vq:		RX ring, in a pc_vq_rx_begin() call
 * @avail_idx:	avail idx from pc_vq_rx_begin()
 * @p:		plan, filled here
 * @need:	bytes wanted
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF negotiated
 * Return: 0 if they hold @need, -ENOBUFS if the ring ran out, -EMSGSIZE if they cannot
 *	   (a chain too small without mergeable buffers, or more chains or slices than a
 *	   datagram may take)
 */
static int plan_chains(struct pc_vq *vq, uint16_t avail_idx, struct rx_plan *p, uint64_t need,
		       int mergeable)
{
	p->nch = p->nsl = p->good = 0;
	p->have = 0;
	while (p->have < need || !p->good) {
		unsigned n = 0;
		uint64_t total = 0;
		uint32_t head = 0;
		int kind;

		if (p->nch == RX_CHAINS)
			return -EMSGSIZE;
		kind = pc_vq_rx_pop(vq, avail_idx, p->slice + p->nsl, p->gpa + p->nsl,
				    RX_SLICES - p->nsl, &n, &total, &head);
		if (kind == -ENOBUFS)
			return -ENOBUFS;
		if (kind == PC_VQ_ERR_IOV && p->nsl)
			return -EMSGSIZE;
		if (kind == PC_VQ_ERR_IOV)	/* too many slices even alone: bad */
			pc_vq_rx_seek(vq, (uint16_t)(pc_vq_rx_mark(vq) + 1));
		p->head[p->nch] = head;
		p->first[p->nch] = p->nsl;
		p->n[p->nch] = kind == PC_VQ_OK ? n : 0;
		p->total[p->nch] = kind == PC_VQ_OK ? total : 0;
		p->pos[p->nch] = pc_vq_rx_mark(vq);
		p->nch++;
		if (kind != PC_VQ_OK)
			continue;
		p->nsl += n;
		p->have += total;
		p->good++;
		if (!mergeable)
			return p->have >= need ? 0 : -EMSGSIZE;
	}
	return 0;
}

/**
 * peer_of() - a peer's address (IPv4 as ::ffff:a.b.c.d) and port, from recvmsg()
 * @sa:		the address recvmsg() returned
 * @addr:	16 bytes
 * @port:	set to the port
 * Return: 4 or 6, or 0 for another family
 */
static int peer_of(const struct sockaddr_storage *sa, uint8_t *addr, uint16_t *port)
{
	if (sa->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

		memset(addr, 0, 10);
		addr[10] = addr[11] = 0xff;
		memcpy(addr + 12, &s4->sin_addr, 4);
		*port = ntohs(s4->sin_port);
		return 4;
	}
	if (sa->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		memcpy(addr, &s6->sin6_addr, 16);
		*port = ntohs(s6->sin6_port);
		return 6;
	}
	return 0;
}

/**
 * match_flow() - the template covering datagrams from a peer
 * @flows:	templates
 * @nflows:	their number
 * @addr:	the peer's address, from peer_of()
 * @port:	its port
 * Return: index in @flows, or -1
 */
static int match_flow(const struct pc_udp_flow *flows, unsigned nflows, const uint8_t *addr,
		      uint16_t port)
{
	unsigned k;

	for (k = 0; k < nflows; k++) {
		if (flows[k].any_peer ||
		    (flows[k].peer_port == port && !memcmp(flows[k].peer, addr, 16)))
			return (int)k;
	}
	return -1;
}

/**
 * udp_headers() - virtio-net, Ethernet, IP and UDP headers of one datagram
 * @f:		template
 * @payload:	the datagram's slices (for the full checksum)
 * @npay:	their number
 * @len:	payload bytes
 * @hdr_len:	virtio-net header length
 * @nbuf:	chains the frame takes (num_buffers)
 * @opts:	PC_UDP_RX_CSUM_PARTIAL or PC_UDP_RX_DATA_VALID, or 0
 * @out:	VNET_MAX + ETH_HLEN + IP6_HLEN + UDP_HLEN bytes
 * Return: bytes written
 */
static size_t udp_headers(const struct pc_udp_flow *f, const struct iovec *payload,
			  unsigned npay, size_t len, size_t hdr_len, unsigned nbuf, unsigned opts,
			  uint8_t *out)
{
	size_t l3 = f->ipver == 4 ? IP4_HLEN : IP6_HLEN;
	uint8_t *vnet = out, *eth = out + hdr_len, *ip = eth + ETH_HLEN, *uh = ip + l3;
	uint16_t ulen = (uint16_t)(UDP_HLEN + len);
	uint32_t psum;

	memset(vnet, 0, hdr_len);
	if (hdr_len >= 12)
		put16le(vnet + 10, (uint16_t)nbuf);
	eth_ip_headers(eth, f->eth_dst, f->eth_src, f->ipver, f->src, f->dst, PROTO_UDP, f->ttl,
		       ulen);
	if (f->ipver == 4)
		psum = pc_csum_pseudo_ipv4(f->src + 12, f->dst + 12, PROTO_UDP, ulen);
	else
		psum = pc_csum_pseudo_ipv6(f->src, f->dst, PROTO_UDP, ulen);
	put16(uh, f->sport);
	put16(uh + 2, f->dport);
	put16(uh + 4, ulen);
	if (opts & PC_UDP_RX_CSUM_PARTIAL) {
		vnet[0] = PC_VNET_F_NEEDS_CSUM;
		put16le(vnet + 6, (uint16_t)(ETH_HLEN + l3));
		put16le(vnet + 8, 6);
		put16(uh + 6, (uint16_t)psum);
	} else {
		uint32_t sum;
		uint16_t csum;

		put16(uh + 6, 0);
		sum = pc_csum_partial(uh, UDP_HLEN, psum);
		csum = pc_csum_fold(pc_csum_iov(payload, npay, sum));
		put16(uh + 6, csum ? csum : 0xffff);		/* RFC 768: 0 means none */
		if (opts & PC_UDP_RX_DATA_VALID)
			vnet[0] = PC_VNET_F_DATA_VALID;
	}
	return hdr_len + ETH_HLEN + l3 + UDP_HLEN;
}

/**
 * write_front() - copy @len bytes to the start of a plan's slices
 * @p:		plan
 * @src:	bytes
 * @len:	their number, at most what the good chains hold
 */
static void write_front(struct rx_plan *p, const uint8_t *src, size_t len)
{
	unsigned k;

	for (k = 0; k < p->nsl && len; k++) {
		size_t take = p->slice[k].iov_len < len ? p->slice[k].iov_len : len;

		memcpy(p->slice[k].iov_base, src, take);
		src += take;
		len -= take;
	}
}

/**
 * give_used() - return a datagram's chains: bad ones empty, good ones with what they hold
 * @vq:		RX ring
 * @p:		plan
 * @len:	frame bytes, virtio-net header included
 * Return: index after the last chain the frame reached (later ones are given back unused)
 */
static unsigned give_used(struct pc_vq *vq, const struct rx_plan *p, uint64_t len)
{
	uint64_t left = len;
	unsigned c, k, last = 0;

	for (c = 0; c < p->nch && left; c++) {
		if (!p->n[c])
			continue;
		last = c;
		left -= p->total[c] < left ? p->total[c] : left;
	}
	for (c = 0; c <= last; c++) {	/* bad chains first: the frame's must be consecutive */
		if (!p->n[c])
			pc_vq_rx_put_used(vq, p->head[c], 0);
	}
	left = len;
	for (c = 0; c <= last; c++) {
		uint64_t written = 0;

		if (!p->n[c])
			continue;
		for (k = p->first[c]; k < p->first[c] + p->n[c] && left; k++) {
			uint64_t take = p->slice[k].iov_len < left ? p->slice[k].iov_len : left;

			pc_vq_log_write(vq, p->gpa[k], take);
			written += take;
			left -= take;
		}
		pc_vq_rx_put_used(vq, p->head[c], (uint32_t)written);
	}
	return last + 1;
}

/**
 * good_chains() - chains of a plan that hold bytes of the first @len
 * @p:		plan
 * @len:	frame bytes
 * Return: their number (num_buffers of the frame)
 */
static unsigned good_chains(const struct rx_plan *p, uint64_t len)
{
	unsigned c, n = 0;

	for (c = 0; c < p->nch && len; c++) {
		if (!p->n[c])
			continue;
		n++;
		len -= p->total[c] < len ? p->total[c] : len;
	}
	return n;
}

/**
 * discard() - drop the socket's next datagram (it cannot be delivered)
 * @fd:		socket
 */
static void discard(int fd)
{
	char byte;

	while (recv(fd, &byte, 1, MSG_DONTWAIT | MSG_TRUNC) < 0 && errno == EINTR)
		;
}

/**
 * recv_stop() - why a receive call on the socket ended the batch
 * @res:	result to set: DRAINED for an empty queue, else ERROR with the error
 * @err:	errno of the failed call
 */
static void recv_stop(struct pc_udp_rx_result *res, int err)
{
	if (err == EAGAIN || err == EWOULDBLOCK) {
		res->stop = PC_UDP_STOP_DRAINED;
	} else {
		res->err = -err;
		res->stop = PC_UDP_STOP_ERROR;
	}
}

/**
 * pc_udp_rx() - receive datagrams from a host socket straight into the guest's RX buffers
 * @vq:		RX ring
 * @fd:		UDP socket (connected to one peer, or a -u listener shared by several flows)
 * @flows:	header templates, all of one IP version (the guest side's); a datagram takes the
 *		first whose peer matches, or with any_peer set; each one's count goes up by the
 *		datagrams delivered for it
 * @nflows:	number of templates (0: every datagram is spilled)
 * @hdr_len:	virtio-net header length (10 or 12)
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF negotiated
 * @max_dgrams:	most datagrams to take from the socket
 * @opts:	PC_UDP_RX_CSUM_PARTIAL (guest negotiated GUEST_CSUM: pseudo-header sum and
 *		NEEDS_CSUM), PC_UDP_RX_DATA_VALID (full checksum and DATA_VALID), PC_UDP_RX_NO_FLUSH
 *		(leave the used elements for pc_vq_flush())
 * @spill:	where a datagram from a peer no template covers goes (with its address in
 *		@res), at least 65535 bytes
 * @spill_len:	its size
 * @res:	what the call did and why it stopped (PC_UDP_STOP_*)
 *
 * Datagrams that cannot be delivered at all (larger than an IP packet of the guest's
 * version, or than the guest's buffers can ever hold) are dropped and counted. A socket error
 * (an ICMP error reported through recv) stops the call with res->err set: the caller reads
 * the error queue and calls again.
 *
 * Return: datagrams delivered, or -EINVAL for bad arguments, or a ring error
 */
int pc_udp_rx(struct pc_vq *vq, int fd, struct pc_udp_flow *flows, unsigned nflows,
	      size_t hdr_len, int mergeable, unsigned max_dgrams, unsigned opts, uint8_t *spill,
	      size_t spill_len, struct pc_udp_rx_result *res)
{
	uint8_t hdr[VNET_MAX + ETH_HLEN + IP6_HLEN + UDP_HLEN];
	struct iovec pay[RX_SLICES];
	struct rx_plan p;
	uint16_t avail_idx, start;
	size_t l3, room, max_payload;
	unsigned d, k, ipver;
	int ret;

	memset(res, 0, sizeof(*res));
	if (hdr_len < 10 || hdr_len > VNET_MAX || spill_len < 65535)
		return -EINVAL;
	for (k = 0; k < nflows; k++) {
		if (flows[k].ipver != flows[0].ipver || (flows[k].ipver != 4 && flows[k].ipver != 6))
			return -EINVAL;
	}
	ipver = nflows ? flows[0].ipver : 6;	/* no template: spilled anyway, any room does */
	l3 = ipver == 4 ? IP4_HLEN : IP6_HLEN;
	room = hdr_len + ETH_HLEN + l3 + UDP_HLEN;
	max_payload = 65535 - UDP_HLEN - (ipver == 4 ? IP4_HLEN : 0);
	ret = pc_vq_rx_begin(vq, &avail_idx);
	if (ret <= 0) {
		res->stop = PC_UDP_STOP_STOPPED;
		return ret;
	}
	start = pc_vq_rx_mark(vq);
	for (d = 0; d < max_dgrams && !res->stop; d++) {
		uint16_t mark = pc_vq_rx_mark(vq);
		struct sockaddr_storage sa;
		uint8_t addr[16] = { 0 };
		uint16_t port = 0;
		struct msghdr mh;
		int inq = 0, npay, fi, family;
		ssize_t got;
		size_t hl;

		if (ioctl(fd, FIONREAD, &inq) < 0 || inq < 0)
			inq = 0;
		if (inq == 0) {		/* empty, or a zero-length datagram: ask the queue itself */
			ssize_t next;

			do
				next = recv(fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
			while (next < 0 && errno == EINTR);
			if (next < 0) {
				recv_stop(res, errno);
				break;
			}
			inq = next > INT_MAX ? INT_MAX : (int)next;
		}
		if ((size_t)inq > max_payload) {	/* cannot be one IP packet for the guest */
			discard(fd);
			res->dropped++;
			continue;
		}
		ret = plan_chains(vq, avail_idx, &p, room + (size_t)inq, mergeable);
		if (ret == -ENOBUFS) {
			pc_vq_rx_seek(vq, mark);
			res->stop = PC_UDP_STOP_NOBUFS;
			break;
		}
		npay = ret ? -1 : range_iov(p.slice, p.nsl, room, (uint64_t)inq + 1, pay, RX_SLICES);
		if (npay < 0) {				/* the guest's buffers can never hold it */
			pc_vq_rx_seek(vq, mark);
			discard(fd);
			res->dropped++;
			continue;
		}
		memset(&mh, 0, sizeof(mh));
		mh.msg_name = &sa;
		mh.msg_namelen = sizeof(sa);
		mh.msg_iov = pay;
		mh.msg_iovlen = (size_t)npay;
		do
			got = recvmsg(fd, &mh, MSG_DONTWAIT);
		while (got < 0 && errno == EINTR);
		if (got < 0) {
			pc_vq_rx_seek(vq, mark);
			recv_stop(res, errno);
			break;
		}
		if ((mh.msg_flags & MSG_TRUNC) || (size_t)got > max_payload) {
			pc_vq_rx_seek(vq, mark);	/* another reader changed the queue */
			res->dropped++;
			continue;
		}
		family = peer_of(&sa, addr, &port);
		fi = nflows == 1 && flows[0].any_peer ? 0 : match_flow(flows, nflows, addr, port);
		if (fi < 0) {				/* copy it out, give the chains back */
			size_t at = 0;

			for (k = 0; k < (unsigned)npay && at < (size_t)got; k++) {
				size_t take = pay[k].iov_len < (size_t)got - at ? pay[k].iov_len
										: (size_t)got - at;

				memcpy(spill + at, pay[k].iov_base, take);
				at += take;
			}
			res->spill_len = (uint32_t)got;
			res->spill_family = (uint8_t)family;
			res->spill_port = port;
			memcpy(res->spill_addr, addr, 16);
			pc_vq_rx_seek(vq, mark);
			res->stop = PC_UDP_STOP_UNKNOWN;
			break;
		}
		npay = range_iov(p.slice, p.nsl, room, (uint64_t)got, pay, RX_SLICES);
		hl = udp_headers(&flows[fi], pay, (unsigned)npay, (size_t)got, hdr_len,
				 good_chains(&p, room + (uint64_t)got), opts, hdr);
		write_front(&p, hdr, hl);
		k = give_used(vq, &p, room + (uint64_t)got);
		for (unsigned c = 0; c < k; c++) {
			res->bufs += p.n[c] != 0;
			res->bad += p.n[c] == 0;
		}
		pc_vq_rx_seek(vq, p.pos[k - 1]);	/* chains it did not reach go back */
		flows[fi].count++;
		res->dgrams++;
		res->bytes += (uint32_t)got;
	}
	if (!res->stop)
		res->stop = PC_UDP_STOP_LIMIT;
	res->notified = (uint32_t)pc_vq_rx_end(vq, start, res->stop == PC_UDP_STOP_NOBUFS,
						!(opts & PC_UDP_RX_NO_FLUSH));
	if (res->stop == PC_UDP_STOP_NOBUFS && pc_vq_rx_moved(vq, avail_idx))
		res->stop = PC_UDP_STOP_LIMIT;	/* buffers came meanwhile: no kick for them */
	return (int)res->dgrams;
}
