// SPDX-License-Identifier: MIT
/* tcp_path.c - the established-TCP data path: payload of classified guest frames sent to
 * host sockets straight from guest memory, host data received straight into guest RX buffers
 * as TCP segments.
 *
 * Theory of operation
 * -------------------
 * Python keeps every piece of TCP state (sequence numbers, windows, retransmission, FIN/RST);
 * this file moves bytes and writes headers, one call per batch or per flow event. The TX
 * batch's frames were classified first (pc_classify(), classify.c), for every protocol:
 *
 *   pc_tcp_runs()       cuts the classified batch into runs of in-order data or bare ACKs of
 *                       one connection, so that Python decides per run, not per frame.
 *   pc_send_payloads()  gathers (frame, offset, length) ranges of one flow into an iovec array
 *                       pointing into guest memory and sendmsg()s it (MSG_DONTWAIT, no SIGPIPE):
 *                       zero copy on our side. It returns what the kernel took, so a partial
 *                       send tells Python exactly where the guest's stream now stands.
 *   pc_tcp_rx()         host to guest for one flow. It first collects RX chains (mergeable or
 *                       not) and plans segments: each gets header room (virtio-net header,
 *                       Ethernet, IPv4/IPv6, TCP with optional timestamps) and up to MSS bytes,
 *                       or up to 64 KiB with a GSO header when the guest takes TSO. Then ONE
 *                       recvmsg(MSG_PEEK | MSG_DONTWAIT) reads the socket straight into the
 *                       payload areas: the only copy, kernel to guest. Only then are headers
 *                       written for the segments the data reached, with IPv4 header checksums,
 *                       and TCP checksums computed here (or left partial, NEEDS_CSUM, when the
 *                       guest negotiated VIRTIO_NET_F_GUEST_CSUM and the caller allows it).
 *                       Chains the data did not reach are given back untouched, as are all of
 *                       them if the socket had nothing. Used elements are written in order,
 *                       dirty-logged with every byte written, and published with one used-idx
 *                       update and at most one notification per call, or per batch of calls
 *                       (PC_TCP_RX_NO_FLUSH, then pc_vq_flush()).
 *   pc_tcp_ctl()        one header-only segment (ACK, FIN, RST, SYN, SYN-ACK with options)
 *                       into the RX ring, and pc_tcp_build() the same frame (or a data frame)
 *                       into a caller buffer, for back-ends without guest rings and for tests.
 *
 * Peek offset contract: pc_tcp_rx() peeks, it never consumes. The caller enables SO_PEEK_OFF on
 * the socket (setsockopt(SOL_SOCKET, SO_PEEK_OFF, bytes already sent to the guest and not yet
 * acknowledged)); each call reads from the peek offset and the kernel advances it by what was
 * read, so f->seq must be the sequence number of the byte at the peek offset. When the guest
 * acknowledges data, the caller recv()s (discards) that many bytes, which moves the peek offset
 * back by the same amount; to retransmit, it sets SO_PEEK_OFF back and rewinds f->seq.
 *
 * Scratch space (chains, slices, iovecs) lives in a caller-allocated struct pc_tcp_scratch,
 * so nothing here is global and the stack use stays small; the per-call limits are the
 * PC_TCP_MAX_* constants (at most 1024 iovecs: the kernel's UIO_MAXIOV).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "classify.h"
#include "virtq.h"
#include "wire.h"

enum {
	TCP_TS_OPTLEN = 12,	/* NOP, NOP, kind 8 length 10 */
	TCP_MAX_OPTLEN = 40,
	HDR_MAX = VNET_MAX + ETH_HLEN + IP6_HLEN + TCP_HLEN + TCP_MAX_OPTLEN,
};

/**
 * struct rx_chain_rec - one RX chain popped by the current pc_tcp_rx() call
 * @head:	head descriptor index
 * @first:	index of its first slice in pc_tcp_scratch.slice
 * @n:		number of slices
 * @bad:	returned with length 0 (a bad chain, or too small to hold anything)
 * @pos:	avail position just after this chain (to give back the chains after it)
 * @total:	bytes in its slices
 */
struct rx_chain_rec {
	uint32_t head;
	uint32_t first;
	uint32_t n;
	uint16_t bad;
	uint16_t pos;
	uint64_t total;
};

/**
 * struct rx_seg - one segment planned by pc_tcp_rx()
 * @chain:	index of its first chain record (bad records may be interleaved)
 * @nchains:	number of chain records, bad ones included
 * @len:	payload bytes planned
 * @iov:	index of its first payload iovec in pc_tcp_scratch.iov
 * @niov:	number of payload iovecs
 */
struct rx_seg {
	uint32_t chain;
	uint32_t nchains;
	uint32_t len;
	uint32_t iov;
	uint32_t niov;
};

/**
 * struct pc_tcp_scratch - working space of pc_tcp_rx(), allocated by the caller
 * @slice:	slices of the popped chains, in pop order
 * @gpa:	guest-physical address of each slice, for dirty logging
 * @chain:	chain records, in pop order
 * @seg:	planned segments
 * @iov:	payload areas handed to recvmsg()
 */
struct pc_tcp_scratch {
	struct iovec slice[PC_TCP_MAX_SLICES];
	uint64_t gpa[PC_TCP_MAX_SLICES];
	struct rx_chain_rec chain[PC_TCP_MAX_CHAINS];
	struct rx_seg seg[PC_TCP_MAX_IOV];
	struct iovec iov[PC_TCP_MAX_IOV];
};

/**
 * pc_tcp_scratch_size() - bytes to allocate for a struct pc_tcp_scratch
 * Return: sizeof(struct pc_tcp_scratch)
 */
size_t pc_tcp_scratch_size(void)
{
	return sizeof(struct pc_tcp_scratch);
}

/* ---- guest to host ---- */

/**
 * send_iov() - one sendmsg() of an iovec array, retrying EINTR
 * @fd:		socket
 * @iov:	the data
 * @n:		entries in @iov
 * Return: bytes sent, or -errno
 */
static ssize_t send_iov(int fd, struct iovec *iov, size_t n)
{
	struct msghdr mh;
	ssize_t r;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = n;
	do
		r = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

/**
 * pc_send_payloads() - send payload ranges of TX frames to one socket, from guest memory
 * @fd:		connected stream socket (the flow's host side)
 * @frames:	the batch's frames
 * @nframes:	number of frames
 * @iov:	the batch's slices
 * @max_iov:	entries in @iov
 * @items:	(frame, offset in frame, length) ranges, sent in this order
 * @nitems:	number of ranges
 *
 * The ranges become one iovec array straight into guest memory and go out with
 * sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL), in chunks of PC_TCP_MAX_IOV entries; it stops at the
 * first short send. An error after some bytes were taken is left for the next call to report.
 *
 * Return: bytes the kernel accepted (less than the total when the socket buffer filled up),
 *	   -EINVAL if a range lies outside its frame (nothing sent), -EAGAIN if the socket took
 *	   nothing, or another -errno from sendmsg() with nothing sent
 */
int64_t pc_send_payloads(int fd, const struct pc_tx_frame *frames, unsigned nframes,
			 const struct iovec *iov, unsigned max_iov,
			 const struct pc_payload_ref *items, unsigned nitems)
{
	struct iovec out[PC_TCP_MAX_IOV];
	size_t n = 0, chunk = 0;
	int64_t total = 0;
	unsigned i;

	for (i = 0; i < nitems; i++) {
		if (!pc_tx_range_ok(frames, nframes, max_iov, items[i].frame, items[i].off,
				    items[i].len))
			return -EINVAL;
	}
	for (i = 0; i < nitems; i++) {
		const struct pc_tx_frame *f = &frames[items[i].frame];
		uint64_t skip = items[i].off, left = items[i].len;
		unsigned k;

		for (k = f->first; k < f->first + f->nslices && left; k++) {
			uint64_t take;

			if (skip >= iov[k].iov_len) {
				skip -= iov[k].iov_len;
				continue;
			}
			take = iov[k].iov_len - skip < left ? iov[k].iov_len - skip : left;
			out[n].iov_base = (uint8_t *)iov[k].iov_base + skip;
			out[n].iov_len = take;
			skip = 0;
			left -= take;
			chunk += take;
			if (++n == PC_TCP_MAX_IOV) {
				ssize_t r = send_iov(fd, out, n);

				if (r < 0)
					return total ? total : r;
				total += r;
				if ((size_t)r < chunk)
					return total;
				n = chunk = 0;
			}
		}
	}
	if (n) {
		ssize_t r = send_iov(fd, out, n);

		if (r < 0)
			return total ? total : r;
		total += r;
	}
	return total;
}

/**
 * is_data() - whether a record is a plain in-stream data segment (ACK, maybe PSH, payload)
 * @p:		classified frame
 * Return: non-zero if so
 */
static int is_data(const struct pc_pkt *p)
{
	return p->valid == PC_PKT_OK && p->proto == PROTO_TCP && p->payload_len &&
	       (p->tcp_flags & 0x3f & ~PC_TCP_PSH) == PC_TCP_ACK;
}

/**
 * is_bare_ack() - whether a record is a well-formed TCP segment with only ACK set, no payload
 * @p:		record
 * Return: non-zero if so
 */
static int is_bare_ack(const struct pc_pkt *p)
{
	return p->valid == PC_PKT_OK && p->proto == PROTO_TCP && !p->payload_len &&
	       (p->tcp_flags & 0x3f) == PC_TCP_ACK;
}

/**
 * same_stream() - whether @q continues @p's run: same tuple, next sequence number, ACK not
 *		   going back
 * @p:		last segment of the run
 * @q:		candidate
 * Return: non-zero if so
 */
static int same_stream(const struct pc_pkt *p, const struct pc_pkt *q)
{
	return same_tuple(p, q) && q->seq == p->seq + p->payload_len &&
	       (int32_t)(q->ack - p->ack) >= 0;
}

/**
 * acks_more() - whether bare ACK @q only supersedes bare ACK @p: same connection and
 *		 sequence number, acknowledging more (a repeated ACK is a duplicate, which counts)
 * @p:		the earlier one
 * @q:		the later one
 * Return: non-zero if so
 */
static int acks_more(const struct pc_pkt *p, const struct pc_pkt *q)
{
	return same_tuple(p, q) && q->seq == p->seq && (int32_t)(q->ack - p->ack) > 0;
}

/**
 * pc_tcp_runs() - cut a classified TX batch into runs, so Python decides per run, not per frame
 * @recs:	records from pc_classify()
 * @n:		number of records
 * @items:	n entries: item i is filled with (i, payload offset, payload length), so a run's
 *		payloads are items[first .. first + count), ready for pc_send_payloads()
 * @runs:	output runs, in frame order (see struct pc_tcp_run)
 * @max_runs:	entries in @runs (n is always enough)
 *
 * Return: number of runs, or -ENOSPC if @max_runs is too small
 */
int pc_tcp_runs(const struct pc_pkt *recs, unsigned n, struct pc_payload_ref *items,
		struct pc_tcp_run *runs, unsigned max_runs)
{
	unsigned i, nruns = 0;
	struct pc_tcp_run *r = NULL;

	for (i = 0; i < n; i++) {
		const struct pc_pkt *p = &recs[i];
		int data = is_data(p), tcp = p->valid == PC_PKT_OK && p->proto == PROTO_TCP;
		int bare = is_bare_ack(p);

		items[i].frame = i;
		items[i].off = p->payload_off;
		items[i].len = p->payload_len;
		if (!tcp && r && r->other) {		/* none of TCP's business: one run */
			r->count++;
			continue;
		}
		if (data && r && r->data && same_stream(&recs[i - 1], p)) {
			r->count++;
			r->bytes += p->payload_len;
			r->ack = p->ack;
			r->window = p->window;
			continue;
		}
		if (bare && r && r->acks && acks_more(&recs[i - 1], p)) {
			r->count++;
			r->ack = p->ack;
			r->window = p->window;
			continue;
		}
		if (nruns == max_runs)
			return -ENOSPC;
		r = &runs[nruns++];
		memset(r, 0, sizeof(*r));
		r->first = i;
		r->count = 1;
		r->data = (uint8_t)data;
		r->other = (uint8_t)!tcp;
		r->acks = (uint8_t)bare;
		if (data || bare) {
			r->seq = p->seq;
			r->bytes = p->payload_len;
			r->ack = p->ack;
			r->window = p->window;
		}
	}
	return (int)nruns;
}

/* ---- host to guest ---- */

/**
 * flow_check() - validate a flow template and the TCP options to send with it
 * @f:		template
 * @opt_len:	TCP option bytes
 * Return: 0, or -EINVAL
 */
static int flow_check(const struct pc_tcp_flow *f, size_t opt_len)
{
	if (f->ipver != 4 && f->ipver != 6)
		return -EINVAL;
	if (opt_len > TCP_MAX_OPTLEN || opt_len % 4)
		return -EINVAL;
	return 0;
}

/**
 * build_headers() - write Ethernet, IP and TCP headers (TCP checksum left zero)
 * @f:		valid template
 * @flags:	TCP flags
 * @seq:	sequence number
 * @opt:	TCP option bytes (already padded), or NULL
 * @opt_len:	their length, a multiple of 4, at most 40
 * @payload:	payload bytes that will follow
 * @out:	at least ETH_HLEN + IP6_HLEN + TCP_HLEN + @opt_len bytes
 * Return: header length, or -EMSGSIZE if the IP length field cannot hold the segment
 */
static int build_headers(const struct pc_tcp_flow *f, uint8_t flags, uint32_t seq,
			 const uint8_t *opt, size_t opt_len, size_t payload, uint8_t *out)
{
	size_t tcp_len = TCP_HLEN + opt_len, l3 = f->ipver == 4 ? IP4_HLEN : IP6_HLEN;
	uint8_t *ip = out + ETH_HLEN, *th = ip + l3;

	if (payload > 65535 - tcp_len - (f->ipver == 4 ? IP4_HLEN : 0))
		return -EMSGSIZE;
	eth_ip_headers(out, f->eth_dst, f->eth_src, f->ipver, f->src, f->dst, PROTO_TCP, f->ttl,
		       tcp_len + payload);
	put16(th, f->sport);
	put16(th + 2, f->dport);
	put32(th + 4, seq);
	put32(th + 8, f->ack);
	th[12] = (uint8_t)((tcp_len / 4) << 4);
	th[13] = flags;
	put16(th + 14, f->window);
	put16(th + 16, 0);
	put16(th + 18, 0);
	if (opt_len)
		memcpy(th + TCP_HLEN, opt, opt_len);
	return (int)(ETH_HLEN + l3 + tcp_len);
}

/**
 * ts_option() - the timestamps option of a template, padded with two NOPs
 * @f:		template
 * @out:	TCP_TS_OPTLEN bytes
 */
static void ts_option(const struct pc_tcp_flow *f, uint8_t *out)
{
	out[0] = out[1] = 1;
	out[2] = 8;
	out[3] = 10;
	put32(out + 4, f->ts_val);
	put32(out + 8, f->ts_ecr);
}

/**
 * pseudo_sum() - partial sum of the TCP pseudo-header of a template
 * @f:		valid template
 * @l4_len:	TCP header plus payload length
 * Return: the partial sum (see checksum.c)
 */
static uint32_t pseudo_sum(const struct pc_tcp_flow *f, size_t l4_len)
{
	if (f->ipver == 4)
		return pc_csum_pseudo_ipv4(f->src + 12, f->dst + 12, PROTO_TCP, (uint16_t)l4_len);
	return pc_csum_pseudo_ipv6(f->src, f->dst, PROTO_TCP, (uint32_t)l4_len);
}

/**
 * pc_tcp_build() - build one TCP frame with full checksums into a caller buffer
 * @f:		template (flags field ignored; @flags is used)
 * @flags:	TCP flags
 * @tcp_opts:	TCP option bytes (padded to a multiple of 4, at most 40), or NULL
 * @opt_len:	their length
 * @payload:	payload, or NULL if @len is 0
 * @len:	payload length
 * @out:	destination
 * @out_len:	room at @out
 * Return: frame length, -EINVAL for a bad template or options, -EMSGSIZE if too big for IP,
 *	   -ENOSPC if @out is too small
 */
int pc_tcp_build(const struct pc_tcp_flow *f, uint8_t flags, const uint8_t *tcp_opts,
		 size_t opt_len, const uint8_t *payload, size_t len, uint8_t *out, size_t out_len)
{
	size_t l3 = f->ipver == 4 ? IP4_HLEN : IP6_HLEN, tcp_len;
	uint8_t hdr[ETH_HLEN + IP6_HLEN + TCP_HLEN + TCP_MAX_OPTLEN];
	uint32_t sum;
	int hl, ret = flow_check(f, opt_len);

	if (ret)
		return ret;
	hl = build_headers(f, flags, f->seq, tcp_opts, opt_len, len, hdr);
	if (hl < 0)
		return hl;
	if ((size_t)hl + len > out_len)
		return -ENOSPC;
	tcp_len = TCP_HLEN + opt_len;
	sum = pc_csum_partial(hdr + ETH_HLEN + l3, tcp_len, pseudo_sum(f, tcp_len + len));
	if (len)
		sum = pc_csum_partial(payload, len, sum);
	put16(hdr + ETH_HLEN + l3 + 16, pc_csum_fold(sum));
	memcpy(out, hdr, (size_t)hl);
	if (len)
		memcpy(out + hl, payload, len);
	return (int)(hl + (int)len);
}

/**
 * pc_tcp_ctl() - place one header-only TCP segment (ACK, FIN, RST, SYN...) on the RX ring
 * @vq:		RX ring
 * @f:		template: addresses, ports, seq, ack, window, TTL
 * @flags:	TCP flags
 * @tcp_opts:	TCP option bytes (MSS, window scale, SACK-permitted, timestamps...), padded to a
 *		multiple of 4, at most 40; NULL with @opt_len 0 sends the template's timestamps
 *		option if f->use_ts, else none
 * @opt_len:	their length
 * @hdr_len:	virtio-net header length
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF negotiated
 * @opts:	PC_TCP_RX_DATA_VALID to mark the (fully checksummed) frame valid
 * @res:	what pc_vq_push_rx() did (placed is 0 if the guest offers no buffer now)
 * Return: frames consumed (0 or 1), or a negative errno
 */
int pc_tcp_ctl(struct pc_vq *vq, const struct pc_tcp_flow *f, uint8_t flags,
	       const uint8_t *tcp_opts, size_t opt_len, size_t hdr_len, int mergeable,
	       unsigned opts, struct pc_rx_result *res)
{
	uint8_t frame[ETH_HLEN + IP6_HLEN + TCP_HLEN + TCP_MAX_OPTLEN];
	uint8_t vnet[PC_VQ_MAX_HDR], ts[TCP_TS_OPTLEN];
	uint32_t len;
	int ret;

	memset(res, 0, sizeof(*res));
	if (hdr_len > PC_VQ_MAX_HDR || hdr_len < 10)
		return -EINVAL;
	if (!tcp_opts && !opt_len && f->use_ts) {
		ts_option(f, ts);
		tcp_opts = ts;
		opt_len = sizeof(ts);
	}
	ret = pc_tcp_build(f, flags, tcp_opts, opt_len, NULL, 0, frame, sizeof(frame));
	if (ret < 0)
		return ret;
	len = (uint32_t)ret;
	memset(vnet, 0, sizeof(vnet));
	if (opts & PC_TCP_RX_DATA_VALID)
		vnet[0] = PC_VNET_F_DATA_VALID;
	return pc_vq_push_rx(vq, frame, &len, 1, hdr_len, mergeable, vnet, res);
}

/**
 * scatter() - copy bytes into a segment's slices, from byte @at of the segment
 * @s:		scratch
 * @seg:	the segment
 * @at:		segment offset of the first byte to write
 * @src:	bytes
 * @len:	their number
 *
 * The segment's good chains hold at least @at + @len bytes (checked when planning).
 */
static void scatter(struct pc_tcp_scratch *s, const struct rx_seg *seg, size_t at,
		    const uint8_t *src, size_t len)
{
	uint32_t c, k;

	for (c = seg->chain; c < seg->chain + seg->nchains && len; c++) {
		const struct rx_chain_rec *ch = &s->chain[c];

		if (ch->bad)
			continue;
		for (k = ch->first; k < ch->first + ch->n && len; k++) {
			size_t sl = s->slice[k].iov_len, take;

			if (at >= sl) {
				at -= sl;
				continue;
			}
			take = sl - at < len ? sl - at : len;
			memcpy((uint8_t *)s->slice[k].iov_base + at, src, take);
			src += take;
			len -= take;
			at = 0;
		}
	}
}

/**
 * plan_payload() - append payload iovecs for a segment: its slices after @skip bytes
 * @s:		scratch
 * @seg:	segment with chain, nchains and iov set; niov and len are set here
 * @skip:	header room at the start of the segment
 * @want:	payload bytes wanted
 * @room:	iovec entries still free
 * Return: payload bytes the iovecs cover, at most @want
 */
static size_t plan_payload(struct pc_tcp_scratch *s, struct rx_seg *seg, size_t skip,
			   size_t want, unsigned room)
{
	size_t got = 0;
	uint32_t c, k;

	seg->niov = 0;
	for (c = seg->chain; c < seg->chain + seg->nchains && got < want; c++) {
		const struct rx_chain_rec *ch = &s->chain[c];

		if (ch->bad)
			continue;
		for (k = ch->first; k < ch->first + ch->n && got < want; k++) {
			size_t sl = s->slice[k].iov_len, take;
			struct iovec *v;

			if (skip >= sl) {
				skip -= sl;
				continue;
			}
			if (seg->niov == room)
				goto out;
			take = sl - skip < want - got ? sl - skip : want - got;
			v = &s->iov[seg->iov + seg->niov++];
			v->iov_base = (uint8_t *)s->slice[k].iov_base + skip;
			v->iov_len = take;
			got += take;
			skip = 0;
		}
	}
out:
	seg->len = (uint32_t)got;
	return got;
}

/**
 * finish_segment() - write the headers of a segment the data reached, log it, use its chains
 * @vq:		RX ring
 * @s:		scratch
 * @seg:	the segment, its payload iovecs already clipped to @len
 * @f:		template
 * @flags:	TCP flags of this segment
 * @seq:	its sequence number
 * @len:	payload bytes it carries
 * @hdr_len:	virtio-net header length
 * @opts:	PC_TCP_RX_* options
 * @mss:	MSS, for GSO
 * Return: index after the last chain record this segment uses
 */
static uint32_t finish_segment(struct pc_vq *vq, struct pc_tcp_scratch *s,
			       const struct rx_seg *seg, const struct pc_tcp_flow *f,
			       uint8_t flags, uint32_t seq, size_t len, size_t hdr_len,
			       unsigned opts, unsigned mss)
{
	uint8_t hdr[HDR_MAX], ts[TCP_TS_OPTLEN], *vnet = hdr, *l2 = hdr + hdr_len;
	size_t l3 = f->ipver == 4 ? IP4_HLEN : IP6_HLEN, opt_len = f->use_ts ? TCP_TS_OPTLEN : 0;
	size_t tcp_len = TCP_HLEN + opt_len, l2_len, left;
	uint8_t *csum;
	uint32_t c, k, last = seg->chain, nbuf = 0;
	uint32_t psum;

	if (f->use_ts)
		ts_option(f, ts);
	l2_len = (size_t)build_headers(f, flags, seq, ts, opt_len, len, l2);	/* planned to fit */
	csum = l2 + ETH_HLEN + l3 + 16;
	psum = pseudo_sum(f, tcp_len + len);
	memset(vnet, 0, hdr_len);
	if ((opts & PC_TCP_RX_GSO) && len > mss) {
		vnet[0] = PC_VNET_F_NEEDS_CSUM;
		vnet[1] = f->ipver == 4 ? PC_VNET_GSO_TCPV4 : PC_VNET_GSO_TCPV6;
		put16le(vnet + 2, (uint16_t)l2_len);
		put16le(vnet + 4, (uint16_t)mss);
	}
	if (vnet[1] || (opts & PC_TCP_RX_CSUM_PARTIAL)) {
		vnet[0] = PC_VNET_F_NEEDS_CSUM;
		put16le(vnet + 6, (uint16_t)(ETH_HLEN + l3));
		put16le(vnet + 8, 16);
		put16(csum, (uint16_t)psum);
	} else {
		uint32_t sum = pc_csum_partial(l2 + ETH_HLEN + l3, tcp_len, psum);

		sum = pc_csum_iov(s->iov + seg->iov, seg->niov, sum);
		put16(csum, pc_csum_fold(sum));
		if (opts & PC_TCP_RX_DATA_VALID)
			vnet[0] = PC_VNET_F_DATA_VALID;
	}

	/* Which chains the frame reaches, and how much of each */
	left = hdr_len + l2_len + len;
	for (c = seg->chain; c < seg->chain + seg->nchains && left; c++) {
		if (s->chain[c].bad)
			continue;
		nbuf++;
		last = c;
		left -= s->chain[c].total < left ? s->chain[c].total : left;
	}
	if (hdr_len >= 12)
		put16le(vnet + 10, (uint16_t)nbuf);
	scatter(s, seg, 0, hdr, hdr_len + l2_len);

	for (c = seg->chain; c <= last; c++) {	/* bad ones first: the frame's chains */
		if (s->chain[c].bad)			/* must be consecutive in the used ring */
			pc_vq_rx_put_used(vq, s->chain[c].head, 0);
	}
	left = hdr_len + l2_len + len;
	for (c = seg->chain; c <= last; c++) {
		const struct rx_chain_rec *ch = &s->chain[c];
		uint64_t written = 0;

		if (ch->bad)
			continue;
		for (k = ch->first; k < ch->first + ch->n && left; k++) {
			size_t take = s->slice[k].iov_len < left ? s->slice[k].iov_len : left;

			pc_vq_log_write(vq, s->gpa[k], take);
			written += take;
			left -= take;
		}
		pc_vq_rx_put_used(vq, ch->head, (uint32_t)written);
	}
	return last + 1;
}

/**
 * clip_iov() - cut a segment's payload iovecs down to @len bytes
 * @s:		scratch
 * @seg:	segment
 * @len:	bytes to keep, at most seg->len
 */
static void clip_iov(struct pc_tcp_scratch *s, struct rx_seg *seg, size_t len)
{
	uint32_t k;

	for (k = 0; k < seg->niov; k++) {
		struct iovec *v = &s->iov[seg->iov + k];

		if (v->iov_len >= len) {
			v->iov_len = len;
			seg->niov = k + 1;
			break;
		}
		len -= v->iov_len;
	}
}

/**
 * queued_past_peek() - bytes queued on a socket beyond its peek offset
 * @fd:		TCP socket
 * @n:		set to the count (capped at UINT32_MAX)
 *
 * Planning only as many RX chains as there are bytes to peek keeps a call on a socket with
 * little data from walking (and giving back) the guest's whole RX ring.
 *
 * Return: 1 if known, 0 if the socket could not tell (then nothing is capped)
 */
static int queued_past_peek(int fd, uint32_t *n)
{
	int inq = 0, peek = 0;
	socklen_t sl = sizeof(peek);

	if (ioctl(fd, FIONREAD, &inq) || inq < 0)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek, &sl) || peek < 0)
		peek = 0;
	*n = inq > peek ? (uint32_t)(inq - peek) : 0;
	return 1;
}

/**
 * pc_tcp_rx() - move data from a host socket into the guest as TCP segments of one flow
 * @vq:		RX ring
 * @s:		scratch, pc_tcp_scratch_size() bytes
 * @fd:		the flow's socket, with SO_PEEK_OFF enabled (see the peek offset contract)
 * @f:		template: addresses, ports, seq of the byte at the peek offset, ack, window
 *		field, TTL, MSS, timestamps; f->flags go on every segment, except PSH, which
 *		only the last segment of the call carries
 * @hdr_len:	virtio-net header length (10 or 12)
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF negotiated
 * @max_bytes:	most payload bytes to deliver (what the guest's window allows)
 * @opts:	PC_TCP_RX_GSO: segments up to 64 KiB with a GSO header (the guest negotiated
 *		VIRTIO_NET_F_GUEST_TSO4/6 for this IP version), checksum left partial;
 *		PC_TCP_RX_CSUM_PARTIAL: every segment NEEDS_CSUM with the pseudo-header sum
 *		(VIRTIO_NET_F_GUEST_CSUM negotiated; a capture completes it when recording);
 *		PC_TCP_RX_DATA_VALID: full checksums and the DATA_VALID flag (GUEST_CSUM);
 *		PC_TCP_RX_NO_FLUSH: leave the used elements for pc_vq_flush();
 *		PC_TCP_RX_QUEUED: the caller measured what is queued past the peek offset
 *		and @max_bytes is no more than that: no FIONREAD/SO_PEEK_OFF probe, no 1-byte
 *		peek for end of stream (the caller learns that from EPOLLRDHUP); a call that
 *		delivered everything it planned stops with PC_TCP_STOP_DRAINED
 * @res:	what the call did and why it stopped (PC_TCP_STOP_*)
 *
 * Return: payload bytes delivered (f->seq advances by this much), 0 with res->stop telling
 *	   why nothing moved (EOF, socket empty, no buffers, stopped ring), -EINVAL for a bad
 *	   template, -EIO for a broken ring, or -errno of recvmsg() (nothing delivered)
 */
int pc_tcp_rx(struct pc_vq *vq, struct pc_tcp_scratch *s, int fd, const struct pc_tcp_flow *f,
	      size_t hdr_len, int mergeable, uint32_t max_bytes, unsigned opts,
	      struct pc_tcp_rx_result *res)
{
	size_t l3 = f->ipver == 4 ? IP4_HLEN : IP6_HLEN;
	size_t tcp_len = TCP_HLEN + (f->use_ts ? TCP_TS_OPTLEN : 0);
	size_t room = hdr_len + ETH_HLEN + l3 + tcp_len, ip_max, seg_max;
	uint32_t nch = 0, nsl = 0, niov = 0, nseg = 0, cut = 0, k;
	uint16_t start, avail_idx;
	uint64_t planned = 0, off;
	uint32_t queued = 0;
	unsigned stop = 0;
	int by_queue = 0;
	ssize_t got = 0;
	int ret, err = 0;

	memset(res, 0, sizeof(*res));
	if (flow_check(f, 0) || !f->mss || hdr_len < 10 || hdr_len > VNET_MAX)
		return -EINVAL;
	ret = pc_vq_rx_begin(vq, &avail_idx);
	if (ret <= 0) {
		res->stop = PC_TCP_STOP_STOPPED;
		return ret;
	}
	/* (no chain at all: the plan stops at once, so spare the socket its two syscalls) */
	if (opts & PC_TCP_RX_QUEUED) {
		by_queue = 1;
	} else if (max_bytes && avail_idx != pc_vq_rx_mark(vq) &&
		   queued_past_peek(fd, &queued) && queued < max_bytes) {
		max_bytes = queued ? queued : 1;	/* 1: still learn about EOF and errors */
		by_queue = 1;
	}
	ip_max = PC_TCP_GSO_MAX - tcp_len - (f->ipver == 4 ? IP4_HLEN : 0);
	seg_max = f->mss < ip_max ? f->mss : ip_max;
	if ((opts & PC_TCP_RX_GSO) && ip_max > seg_max)
		seg_max = ip_max / seg_max * seg_max;
	start = pc_vq_rx_mark(vq);

	/* Plan: collect chains for segments until the window, the buffers or a limit ends it */
	while (planned < max_bytes) {
		size_t want = max_bytes - planned < seg_max ? max_bytes - planned : seg_max;
		uint64_t need = room + want, have = 0;
		uint16_t seg_mark = pc_vq_rx_mark(vq);
		uint32_t c0 = nch, sl0 = nsl, good = 0;
		struct rx_seg *seg = &s->seg[nseg];

		if (nseg == PC_TCP_MAX_IOV || niov == PC_TCP_MAX_IOV) {
			stop = PC_TCP_STOP_LIMIT;
			break;
		}
		while (have < need) {
			struct rx_chain_rec *ch = &s->chain[nch];
			unsigned n;
			uint64_t total;
			uint32_t head;
			int kind;

			if (nch == PC_TCP_MAX_CHAINS) {
				stop = PC_TCP_STOP_LIMIT;
				break;
			}
			kind = pc_vq_rx_pop(vq, avail_idx, s->slice + nsl, s->gpa + nsl,
					    PC_TCP_MAX_SLICES - nsl, &n, &total, &head);
			if (kind == -ENOBUFS) {
				stop = PC_TCP_STOP_NOBUFS;
				break;
			}
			if (kind == PC_VQ_ERR_IOV && nsl) {
				stop = PC_TCP_STOP_LIMIT;
				break;
			}
			if (kind == PC_VQ_ERR_IOV)	/* too many slices even alone: bad */
				pc_vq_rx_seek(vq, (uint16_t)(pc_vq_rx_mark(vq) + 1));
			ch->head = head;
			ch->first = nsl;
			ch->n = kind == PC_VQ_OK ? n : 0;
			ch->bad = kind != PC_VQ_OK;
			ch->pos = pc_vq_rx_mark(vq);
			ch->total = kind == PC_VQ_OK ? total : 0;
			nch++;
			if (ch->bad)
				continue;
			nsl += n;
			have += total;
			good++;
			if (!mergeable) {
				if (have <= room) {	/* cannot hold a byte of payload: drop it */
					ch->bad = 1;
					nsl = sl0;
					have = 0;
					good = 0;
					continue;
				}
				break;
			}
		}
		if (!good || have <= room) {
			/* nothing usable for this segment: give its chains back untouched */
			pc_vq_rx_seek(vq, seg_mark);
			nch = c0;
			nsl = sl0;
			if (!stop)
				stop = PC_TCP_STOP_NOBUFS;
			break;
		}
		if (have - room < want)		/* a smaller chain, or the last buffers */
			want = (size_t)(have - room);
		seg->chain = c0;
		seg->nchains = nch - c0;
		seg->iov = niov;
		if (!plan_payload(s, seg, room, want, PC_TCP_MAX_IOV - niov)) {
			pc_vq_rx_seek(vq, seg_mark);
			nch = c0;
			nsl = sl0;
			stop = PC_TCP_STOP_LIMIT;
			break;
		}
		niov += seg->niov;
		planned += seg->len;
		nseg++;
		if (seg->len < want && !stop)	/* out of iovecs */
			stop = PC_TCP_STOP_LIMIT;
		if (stop)
			break;
	}
	if (!stop)
		stop = by_queue ? PC_TCP_STOP_DRAINED : PC_TCP_STOP_WINDOW;

	/* One copy: peek the socket straight into the planned payload areas */
	if (niov) {
		struct msghdr mh;

		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = s->iov;
		mh.msg_iovlen = niov;
		do
			got = recvmsg(fd, &mh, MSG_PEEK | MSG_DONTWAIT);
		while (got < 0 && errno == EINTR);
		if (got < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				err = -errno;
			got = 0;
			stop = PC_TCP_STOP_DRAINED;
		} else if (!got) {
			stop = PC_TCP_STOP_EOF;
		} else if ((uint64_t)got < planned) {
			stop = PC_TCP_STOP_DRAINED;
		}
	}

	/* Headers for the segments the data reached; bad chains before them returned */
	for (k = 0, off = 0; k < nseg && off < (uint64_t)got; k++) {
		struct rx_seg *seg = &s->seg[k];
		size_t len = (uint64_t)got - off < seg->len ? (size_t)((uint64_t)got - off)
							     : seg->len;
		uint8_t flags = f->flags & (uint8_t)~PC_TCP_PSH;

		if (off + len == (uint64_t)got)
			flags |= f->flags & PC_TCP_PSH;
		clip_iov(s, seg, len);
		cut = finish_segment(vq, s, seg, f, flags, f->seq + (uint32_t)off, len, hdr_len,
				     opts, seg_max < f->mss ? (unsigned)seg_max : f->mss);
		off += len;
		res->segs++;
	}
	for (k = 0; k < cut; k++) {
		res->bufs += !s->chain[k].bad;
		res->bad += s->chain[k].bad;
	}
	pc_vq_rx_seek(vq, cut ? s->chain[cut - 1].pos : start);
	res->bytes = (uint32_t)got;
	res->stop = stop;
	res->notified = (uint32_t)pc_vq_rx_end(vq, start, stop == PC_TCP_STOP_NOBUFS,
						!(opts & PC_TCP_RX_NO_FLUSH));
	if (stop == PC_TCP_STOP_NOBUFS && pc_vq_rx_moved(vq, avail_idx))
		res->stop = PC_TCP_STOP_AGAIN;	/* buffers came meanwhile: no kick for them */
	return err && !got ? err : (int)got;
}
