/* wire.h - header sizes, protocol numbers and big/little-endian field access shared by the
 * data-path files (tcp_path.c, udp_path.c). */
#ifndef PASST_WIRE_H
#define PASST_WIRE_H

#include <stdint.h>

enum {
	ETH_HLEN = 14,
	IP4_HLEN = 20,
	IP6_HLEN = 40,
	UDP_HLEN = 8,
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

#endif /* PASST_WIRE_H */
