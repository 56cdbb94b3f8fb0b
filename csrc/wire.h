// SPDX-License-Identifier: MIT
/* wire.h - header sizes, protocol numbers and big/little-endian field access shared by the
 * data-path files (classify.c, tcp_path.c, udp_path.c, fast_udp.c, fast_tcp.c). */
#ifndef PASST_WIRE_H
#define PASST_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "passt_core.h"

enum {
	ETH_HLEN = 14,
	IP4_HLEN = 20,
	IP6_HLEN = 40,
	UDP_HLEN = 8,
	TCP_HLEN = 20,		/* without options */
	ETH_P_IP = 0x0800,
	ETH_P_IPV6 = 0x86dd,
	PROTO_ICMP = 1,
	PROTO_TCP = 6,
	PROTO_UDP = 17,
	PROTO_ICMPV6 = 58,
	VNET_MAX = 12,		/* flags..num_buffers: the header without hash reporting */
};

/**
 * get16() - read a big-endian 16-bit field
 * @p:		first byte
 * Return: the value
 */
static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/**
 * get32() - read a big-endian 32-bit field
 * @p:		first byte
 * Return: the value
 */
static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/**
 * put16() - write a big-endian 16-bit field
 * @p:		first byte
 * @v:		value
 */
static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/**
 * put32() - write a big-endian 32-bit field
 * @p:		first byte
 * @v:		value
 */
static inline void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

/**
 * put16le() - write a little-endian 16-bit field (virtio-net header)
 * @p:		first byte
 * @v:		value
 */
static inline void put16le(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/**
 * get16le() - read a little-endian 16-bit field (virtio-net header)
 * @p:		first byte
 * Return: the value
 */
static inline uint16_t get16le(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

/**
 * same_tuple() - whether two classified records belong to one flow: same IP version,
 *		  addresses and ports
 * @p:		one record
 * @q:		the other
 * Return: non-zero if so
 */
static inline int same_tuple(const struct pc_pkt *p, const struct pc_pkt *q)
{
	return p->sport == q->sport && p->dport == q->dport && p->ipver == q->ipver &&
	       !memcmp(p->src, q->src, 16) && !memcmp(p->dst, q->dst, 16);
}

/**
 * ipv4_header_csum() - checksum field of the IPv4 header eth_ip_headers() writes
 * @tot_len:	total length field
 * @ttl:	TTL
 * @proto:	IP protocol
 * @s4:		source address, 4 bytes
 * @d4:		destination address, 4 bytes
 *
 * From the field values, not the written bytes: version/IHL 0x45, ID 0, DF, no options.
 * Called per segment, where a general checksum's set-up would cost more than the sum.
 *
 * Return: the value for the checksum field (as put16() stores it)
 */
static inline uint16_t ipv4_header_csum(size_t tot_len, uint8_t ttl, uint8_t proto,
					const uint8_t *s4, const uint8_t *d4)
{
	uint32_t sum = 0x4500 + (uint32_t)tot_len + 0x4000 + ((uint32_t)ttl << 8 | proto) +
		       (uint32_t)(s4[0] << 8 | s4[1]) + (uint32_t)(s4[2] << 8 | s4[3]) +
		       (uint32_t)(d4[0] << 8 | d4[1]) + (uint32_t)(d4[2] << 8 | d4[3]);

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/**
 * eth_ip_headers() - write the Ethernet and IPv4 (DF, ID 0, checksum) or IPv6 header
 * @eth:	ETH_HLEN + IP6_HLEN bytes
 * @dmac:	destination MAC
 * @smac:	source MAC
 * @ipver:	4 or 6
 * @src:	source address (IPv4 as ::ffff:a.b.c.d)
 * @dst:	destination address (likewise)
 * @proto:	IP protocol
 * @ttl:	TTL or hop limit
 * @l4_len:	transport header and payload bytes (fits the length field: checked by callers)
 * Return: bytes written (ETH_HLEN plus the IP header)
 */
static inline size_t eth_ip_headers(uint8_t *eth, const uint8_t *dmac, const uint8_t *smac,
				    int ipver, const uint8_t *src, const uint8_t *dst,
				    uint8_t proto, uint8_t ttl, size_t l4_len)
{
	uint8_t *ip = eth + ETH_HLEN;

	memcpy(eth, dmac, 6);
	memcpy(eth + 6, smac, 6);
	if (ipver == 4) {
		put16(eth + 12, ETH_P_IP);
		memset(ip, 0, IP4_HLEN);
		ip[0] = 0x45;
		put16(ip + 2, (uint16_t)(IP4_HLEN + l4_len));
		put16(ip + 6, 0x4000);				/* DF, ID 0 */
		ip[8] = ttl;
		ip[9] = proto;
		memcpy(ip + 12, src + 12, 4);
		memcpy(ip + 16, dst + 12, 4);
		put16(ip + 10, ipv4_header_csum(IP4_HLEN + l4_len, ttl, proto, src + 12, dst + 12));
		return ETH_HLEN + IP4_HLEN;
	}
	put16(eth + 12, ETH_P_IPV6);
	put32(ip, 0x60000000);
	put16(ip + 4, (uint16_t)l4_len);
	ip[6] = proto;
	ip[7] = ttl;
	memcpy(ip + 8, src, 16);
	memcpy(ip + 24, dst, 16);
	return ETH_HLEN + IP6_HLEN;
}

#endif /* PASST_WIRE_H */
