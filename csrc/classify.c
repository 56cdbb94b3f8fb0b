// SPDX-License-Identifier: MIT
/* classify.c - the frames of a TX batch, parsed once into compact records for every protocol
 *
 * Theory of operation
 * -------------------
 * pc_vq_pop_tx() hands over a TX batch as frames (head, slice range, length, the first bytes
 * of the virtio-net header) and slices pointing into guest memory. pc_classify() reads at most
 * PC_PKT_HDR_MAX bytes of each frame (headers may span slices: they are gathered into a small
 * local buffer) and fills one struct pc_pkt per frame: Ethernet type, IP version, addresses
 * (IPv4 as ::ffff:a.b.c.d), protocol, ports (ICMP type and code), TCP seq/ack/window/flags/
 * options, payload offset and length, the frame's virtio-net offload fields, and a validity
 * code saying which check failed first. Every protocol's path (TCP, UDP, ICMP, and the fast
 * path's dispatch) starts from these records, so a frame's headers are parsed once.
 *
 * Everything in a frame is hostile. Lengths claimed by headers (IPv4 total length and header
 * length, IPv6 payload length, extension header lengths, TCP data offset, UDP length) are
 * checked against the frame's real length before they are used; nothing past the slices is
 * read; at most IP6_MAX_EXT IPv6 extension headers are walked. Fragments are flagged, not
 * parsed. Checksums are never verified: guests with VIRTIO_NET_F_CSUM leave them partial, and
 * the host kernel re-checksums whatever we send anyway. Payloads stay where they are: senders
 * take (frame, offset, length) ranges, which pc_tx_range_ok() checks against the batch.
 */
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "classify.h"
#include "wire.h"

enum {
	IP6_MAX_EXT = 8,	/* extension headers walked before giving up */
};

/**
 * gather() - copy the first bytes of a frame out of its slices
 * @iov:	the frame's slices
 * @n:		their number
 * @buf:	destination
 * @want:	bytes wanted
 * Return: bytes copied, less than @want only if the slices hold less
 */
static size_t gather(const struct iovec *iov, unsigned n, uint8_t *buf, size_t want)
{
	size_t got = 0;
	unsigned k;

	for (k = 0; k < n && got < want; k++) {
		size_t take = iov[k].iov_len < want - got ? iov[k].iov_len : want - got;

		memcpy(buf + got, iov[k].iov_base, take);
		got += take;
	}
	return got;
}

/**
 * map_v4() - store an IPv4 address as ::ffff:a.b.c.d
 * @out:	16 bytes
 * @a:		4 address bytes
 */
static void map_v4(uint8_t *out, const uint8_t *a)
{
	memset(out, 0, 10);
	out[10] = out[11] = 0xff;
	memcpy(out + 12, a, 4);
}

/**
 * classify_l4() - fill the L4 fields of a record
 * @p:		record with the L3 fields filled
 * @buf:	the frame's first @have bytes
 * @have:	bytes in @buf
 * @l4:		offset of the L4 header
 * @end:	offset just past the IP packet (from its length field, checked against the frame)
 * Return: PC_PKT_OK or the code of the failed check
 */
static uint8_t classify_l4(struct pc_pkt *p, const uint8_t *buf, size_t have, size_t l4,
			   size_t end)
{
	size_t doff;

	p->l4_off = (uint16_t)l4;
	switch (p->proto) {
	case PROTO_TCP:
		if (l4 + TCP_HLEN > end)
			return PC_PKT_L4_SHORT;
		if (l4 + TCP_HLEN > have)
			return PC_PKT_IP_EXT;
		doff = (size_t)(buf[l4 + 12] >> 4) * 4;
		p->sport = get16(buf + l4);
		p->dport = get16(buf + l4 + 2);
		p->seq = get32(buf + l4 + 4);
		p->ack = get32(buf + l4 + 8);
		p->tcp_doff = (uint8_t)doff;
		p->tcp_flags = buf[l4 + 13];
		p->window = get16(buf + l4 + 14);
		if (doff < TCP_HLEN || l4 + doff > end)
			return PC_PKT_TCP_DOFF;
		if (l4 + doff > have)
			return PC_PKT_IP_EXT;
		p->opt_off = (uint16_t)(l4 + TCP_HLEN);
		p->opt_len = (uint16_t)(doff - TCP_HLEN);
		p->payload_off = (uint32_t)(l4 + doff);
		p->payload_len = (uint32_t)(end - l4 - doff);
		return PC_PKT_OK;
	case PROTO_UDP:
		if (l4 + 8 > end)
			return PC_PKT_L4_SHORT;
		if (l4 + 8 > have)
			return PC_PKT_IP_EXT;
		p->sport = get16(buf + l4);
		p->dport = get16(buf + l4 + 2);
		/* The UDP length field bounds the payload; IP padding after it is not data. */
		if (get16(buf + l4 + 4) < 8 || get16(buf + l4 + 4) > end - l4)
			return PC_PKT_UDP_LEN;
		p->payload_off = (uint32_t)(l4 + 8);
		p->payload_len = (uint32_t)(get16(buf + l4 + 4) - 8);
		return PC_PKT_OK;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		if (l4 + 4 > end)
			return PC_PKT_L4_SHORT;
		if (l4 + 4 > have)
			return PC_PKT_IP_EXT;
		p->sport = buf[l4];
		p->dport = buf[l4 + 1];
		p->payload_off = (uint32_t)(l4 + 4);
		p->payload_len = (uint32_t)(end - l4 - 4);
		return PC_PKT_OK;
	default:
		p->payload_off = (uint32_t)l4;
		p->payload_len = (uint32_t)(end - l4);
		return PC_PKT_OK;
	}
}

/**
 * classify_one() - classify one frame from its first bytes and its real length
 * @p:		record, zeroed, with len and the virtio-net fields filled
 * @buf:	the frame's first @have bytes
 * @have:	min(frame length, PC_PKT_HDR_MAX)
 * Return: the validity code
 */
static uint8_t classify_one(struct pc_pkt *p, const uint8_t *buf, size_t have)
{
	size_t len = p->len, l4, end;
	unsigned i;

	if (len < ETH_HLEN)
		return PC_PKT_SHORT_ETH;
	p->ethertype = get16(buf + 12);
	p->l3_off = ETH_HLEN;
	if (p->ethertype == ETH_P_IP) {
		size_t ihl, tot;

		if (len < ETH_HLEN + IP4_HLEN || buf[ETH_HLEN] >> 4 != 4)
			return PC_PKT_IP_HDR;
		p->ipver = 4;
		ihl = (size_t)(buf[ETH_HLEN] & 0xf) * 4;
		if (ihl < IP4_HLEN || ETH_HLEN + ihl > len)
			return PC_PKT_IP_HDR;
		tot = get16(buf + ETH_HLEN + 2);
		p->ip_len = (uint16_t)tot;
		p->ttl = buf[ETH_HLEN + 8];
		p->proto = buf[ETH_HLEN + 9];
		map_v4(p->src, buf + ETH_HLEN + 12);
		map_v4(p->dst, buf + ETH_HLEN + 16);
		if (tot < ihl || ETH_HLEN + tot > len)
			return PC_PKT_IP_LEN;
		if (get16(buf + ETH_HLEN + 6) & 0x3fff)		/* MF or an offset */
			return PC_PKT_IP_FRAG;
		l4 = ETH_HLEN + ihl;
		end = ETH_HLEN + tot;
		return classify_l4(p, buf, have, l4, end);
	}
	if (p->ethertype == ETH_P_IPV6) {
		uint8_t nh;

		if (len < ETH_HLEN + IP6_HLEN || buf[ETH_HLEN] >> 4 != 6)
			return PC_PKT_IP_HDR;
		p->ipver = 6;
		p->ip_len = get16(buf + ETH_HLEN + 4);
		nh = buf[ETH_HLEN + 6];
		p->ttl = buf[ETH_HLEN + 7];
		memcpy(p->src, buf + ETH_HLEN + 8, 16);
		memcpy(p->dst, buf + ETH_HLEN + 24, 16);
		p->proto = nh;
		end = ETH_HLEN + IP6_HLEN + (size_t)p->ip_len;
		if (end > len)
			return PC_PKT_IP_LEN;
		l4 = ETH_HLEN + IP6_HLEN;
		for (i = 0; nh == 0 || nh == 43 || nh == 60; i++) {	/* hop-by-hop, routing, dst */
			if (i == IP6_MAX_EXT || l4 + 8 > end || l4 + 8 > have)
				return PC_PKT_IP_EXT;
			nh = buf[l4];
			l4 += ((size_t)buf[l4 + 1] + 1) * 8;
			p->proto = nh;
		}
		if (l4 > end)
			return PC_PKT_IP_EXT;
		if (nh == 44)
			return PC_PKT_IP_FRAG;
		return classify_l4(p, buf, have, l4, end);
	}
	return PC_PKT_OTHER;
}

/**
 * pc_classify() - classify every frame of a TX batch into compact records
 * @frames:	the batch's frames (from pc_vq_pop_tx())
 * @iov:	the batch's slices
 * @max_iov:	entries in @iov (every frame's slices must lie inside)
 * @nframes:	number of frames
 * @out:	@nframes records
 *
 * Reads at most PC_PKT_HDR_MAX bytes of each frame; payloads stay where they are.
 *
 * Return: @nframes, or -EINVAL if a frame's slices are outside @iov (nothing is read then)
 */
int pc_classify(const struct pc_tx_frame *frames, const struct iovec *iov, unsigned max_iov,
		unsigned nframes, struct pc_pkt *out)
{
	uint8_t buf[PC_PKT_HDR_MAX];
	unsigned i;

	for (i = 0; i < nframes; i++) {
		if (frames[i].first > max_iov || frames[i].nslices > max_iov - frames[i].first)
			return -EINVAL;
	}
	for (i = 0; i < nframes; i++) {
		const struct pc_tx_frame *f = &frames[i];
		struct pc_pkt *p = &out[i];
		size_t have;

		memset(p, 0, sizeof(*p));
		p->len = f->len;
		p->vnet_flags = f->vnet[0];
		p->gso_type = f->vnet[1];
		p->gso_size = get16le(f->vnet + 4);
		p->csum_start = get16le(f->vnet + 6);
		p->csum_offset = get16le(f->vnet + 8);
		have = gather(iov + f->first, f->nslices, buf,
			      f->len < PC_PKT_HDR_MAX ? f->len : PC_PKT_HDR_MAX);
		if (have < p->len && have < PC_PKT_HDR_MAX)	/* slices shorter than len */
			p->len = (uint32_t)have;
		p->valid = classify_one(p, buf, have);
	}
	return (int)nframes;
}

/**
 * pc_tx_range_ok() - check a payload range against its TX frame
 * @frames:	the batch's frames
 * @nframes:	number of frames
 * @max_iov:	slices in the batch
 * @frame:	frame index
 * @off:	offset in the frame
 * @len:	length
 * Return: 1 if the frame exists, the range is inside it and its slices inside the batch
 */
int pc_tx_range_ok(const struct pc_tx_frame *frames, unsigned nframes, unsigned max_iov,
		   uint32_t frame, uint32_t off, uint32_t len)
{
	const struct pc_tx_frame *f;

	if (frame >= nframes)
		return 0;
	f = &frames[frame];
	return (uint64_t)off + len <= f->len && f->first <= max_iov &&
	       f->nslices <= max_iov - f->first;
}
