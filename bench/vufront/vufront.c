// SPDX-License-Identifier: MIT
/* vufront - a synthetic vhost-user front-end and minimal guest network stack for benchmarks.
 *
 * Theory of operation
 * -------------------
 * The program plays QEMU and a guest at once, against any vhost-user net back-end:
 *
 * - front-end: guest memory is one memfd mapped at guest-physical address 0; an RX and a TX
 *   split virtqueue live at its start, RX buffers and TX frame slots after them. Negotiation
 *   follows QEMU 10 (GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER, SET_FEATURES,
 *   SET_MEM_TABLE with the memfd, per ring NUM/BASE/ADDR/KICK/CALL/ENABLE). Descriptor i of a
 *   ring always points at buffer i, so the driver side never allocates.
 * - guest: a tiny IPv4 stack with the configured address. It asks ARP for the gateway, answers
 *   ARP for itself, and speaks just enough UDP and TCP (handshake, in-window data, cumulative
 *   ACKs, window scaling, go-back-N on duplicate ACKs or a stall) for one benchmark mode.
 * - host: a second thread, inside the same network namespace as the back-end, is the other end
 *   of the traffic: a UDP/TCP sink, a UDP/TCP sender towards the back-end's forwarded port, or
 *   an echo server for request/response.
 *
 * After set-up and a warm-up the program measures a window of --duration seconds: bytes and
 * transactions, its own two threads' CPU time, and the back-end's utime+stime from
 * /proc/PID/stat. One JSON object goes to stdout. Payload bytes are a constant pattern, so the
 * L4 checksum of every segment is computed from its header plus a closed-form payload sum.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- vhost-user and virtio constants ---- */
enum {
	VU_GET_FEATURES = 1, VU_SET_FEATURES = 2, VU_SET_OWNER = 3, VU_SET_MEM_TABLE = 5,
	VU_SET_VRING_NUM = 8, VU_SET_VRING_ADDR = 9, VU_SET_VRING_BASE = 10,
	VU_SET_VRING_KICK = 12, VU_SET_VRING_CALL = 13,
	VU_GET_PROTOCOL_FEATURES = 15, VU_SET_PROTOCOL_FEATURES = 16, VU_GET_QUEUE_NUM = 17,
	VU_SET_VRING_ENABLE = 18,
};
#define VU_VERSION		0x1u
#define VU_FLAG_REPLY		0x4u
#define F_CSUM			0
#define F_GUEST_CSUM		1
#define F_GUEST_TSO4		7
#define F_GUEST_TSO6		8
#define F_HOST_TSO4		11
#define F_HOST_TSO6		12
#define F_MRG_RXBUF		15
#define F_EVENT_IDX		29
#define F_PROTOCOL_FEATURES	30
#define F_VERSION_1		32
#define PF_MQ			0
#define PF_REPLY_ACK		3
#define DESC_F_WRITE		2
#define USED_F_NO_NOTIFY	1
#define VNET_HDR		12
#define VNET_F_NEEDS_CSUM	1
#define VNET_GSO_TCPV4		1
/* What Linux's virtio-net driver asks for: checksum and TCP segmentation offload both ways. */
#define F_OFFLOADS	((1ull << F_CSUM) | (1ull << F_GUEST_CSUM) | (1ull << F_GUEST_TSO4) | \
			 (1ull << F_GUEST_TSO6) | (1ull << F_HOST_TSO4) | (1ull << F_HOST_TSO6))
#define RXQ			0
#define TXQ			1

/* ---- layout of guest memory ---- */
#define RING_AREA		(64u << 10)
#define BUF_BASE		(1u << 20)
#define PATTERN			0x78

/* ---- network constants ---- */
#define ETH_HLEN		14
#define IP_HLEN			20
#define UDP_HLEN		8
#define TCP_HLEN		20
#define TH_FIN			0x01
#define TH_SYN			0x02
#define TH_RST			0x04
#define TH_PSH			0x08
#define TH_ACK			0x10
#define RCV_WSCALE		7
#define GUEST_SPORT		40000
#define RTO_NS			(10 * 1000000LL)	/* about Linux's tail loss probe */

enum mode {
	M_UDP_TX, M_UDP_RX, M_TCP_TX, M_TCP_RX, M_UDP_RR, M_TCP_RR, M_UDP_FLOWS, M_TCP_FLOWS,
};
static const char *const mode_names[] = {
	"udp-tx", "udp-rx", "tcp-tx", "tcp-rx", "udp-rr", "tcp-rr", "udp-flows", "tcp-flows",
};

/* ---- options ---- */
static struct {
	const char *socket;
	enum mode mode;
	int mtu, ring, rxbuf, size, flows, port_out, port_in, backend_pid, event_idx, spin_us;
	int always_kick, offloads;
	double duration, warmup, timeout;
	uint32_t guest_ip, gw_ip;
	uint8_t guest_mac[6];
} opt = {
	.mtu = 65520, .ring = 256, .rxbuf = 4096, .size = 0, .flows = 10000,
	.port_out = 5001, .port_in = 5101, .backend_pid = 0, .event_idx = 1, .spin_us = 0,
	.offloads = 1,
	.duration = 3.0, .warmup = 0.5, .timeout = 10.0,
	.guest_mac = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 },
};

/* ---- split virtqueue, driver side ---- */
struct vdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vused_elem { uint32_t id, len; };

struct vring {
	unsigned num;
	struct vdesc *desc;
	uint16_t *avail;	/* flags, idx, ring[num], used_event */
	uint16_t *used;		/* flags, idx, then elems, then avail_event */
	uint64_t desc_gpa, avail_gpa, used_gpa, buf_gpa;
	uint8_t *buf;		/* buffer i is at buf + i * stride */
	unsigned stride;
	uint16_t avail_idx, kicked_idx, last_used;
	int kick, call;
	uint16_t *free_ids;	/* TX only: stack of free descriptor ids */
	unsigned nfree;
};

static uint8_t *mem;
static size_t mem_size;
static int mem_fd, vu_sock;
static uint64_t features;
static struct vring rings[2];
static uint8_t gw_mac[6];
static int gw_mac_known;

static inline int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "vufront: %s: %s\n", what, errno ? strerror(errno) : "failed");
	exit(2);
}

static void fail(const char *what)
{
	fprintf(stderr, "vufront: %s\n", what);
	exit(2);
}

static inline uint16_t *used_idx(struct vring *r) { return &r->used[1]; }
static inline struct vused_elem *used_ring(struct vring *r)
{
	return (struct vused_elem *)(void *)&r->used[2];
}
static inline uint16_t *avail_event(struct vring *r)
{
	return (uint16_t *)(void *)(used_ring(r) + r->num);
}

/**
 * ring_init() - lay out one ring and its buffers in guest memory
 * @r:		ring
 * @area:	offset of the ring area
 * @buf:	offset of the first buffer
 * @stride:	bytes per buffer
 */
static void ring_init(struct vring *r, size_t area, size_t buf, unsigned stride)
{
	r->num = (unsigned)opt.ring;
	r->desc_gpa = area;
	r->avail_gpa = area + 16u * r->num;
	r->used_gpa = (r->avail_gpa + 6 + 2u * r->num + 3) & ~3ull;
	r->desc = (struct vdesc *)(void *)(mem + r->desc_gpa);
	r->avail = (uint16_t *)(void *)(mem + r->avail_gpa);
	r->used = (uint16_t *)(void *)(mem + r->used_gpa);
	r->buf_gpa = buf;
	r->buf = mem + buf;
	r->stride = stride;
	r->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	r->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->kick < 0 || r->call < 0)
		die("eventfd");
}

/* ---- vhost-user messages ---- */
static void vu_send(uint32_t req, const void *payload, uint32_t size, int fd)
{
	uint32_t hdr[3] = { req, VU_VERSION, size };
	struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)payload, size } };
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	if (sendmsg(vu_sock, &mh, MSG_NOSIGNAL) != (ssize_t)(sizeof(hdr) + size))
		die("vhost-user sendmsg");
}

static void read_full(void *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(vu_sock, (char *)buf + got, n - got);

		if (r <= 0)
			fail("vhost-user: back-end closed the connection");
		got += (size_t)r;
	}
}

static uint64_t vu_get_u64(uint32_t req)
{
	uint32_t hdr[3];
	uint64_t v = 0;

	vu_send(req, NULL, 0, -1);
	read_full(hdr, sizeof(hdr));
	if (hdr[0] != req || !(hdr[1] & VU_FLAG_REPLY) || hdr[2] != 8)
		fail("vhost-user: bad reply");
	read_full(&v, 8);
	return v;
}

static void vu_u64(uint32_t req, uint64_t v) { vu_send(req, &v, 8, -1); }

static void vu_state(uint32_t req, uint32_t index, uint32_t num)
{
	uint32_t p[2] = { index, num };

	vu_send(req, p, sizeof(p), -1);
}

/**
 * vu_connect() - connect and negotiate like QEMU, then start both rings
 */
static void vu_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t offered, want, proto = 0;
	int64_t deadline = now_ns() + 5000000000LL;
	int q;

	vu_sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (vu_sock < 0)
		die("socket");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", opt.socket);
	while (connect(vu_sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (now_ns() > deadline)
			die("connect to back-end");
		usleep(20000);
	}
	offered = vu_get_u64(VU_GET_FEATURES);
	want = (1ull << F_VERSION_1) | (1ull << F_MRG_RXBUF) | (1ull << F_PROTOCOL_FEATURES);
	if (opt.event_idx)
		want |= 1ull << F_EVENT_IDX;
	if (opt.offloads)
		want |= F_OFFLOADS;
	if (!(offered & (1ull << F_VERSION_1)))
		fail("back-end does not offer VIRTIO_F_VERSION_1");
	if (offered & (1ull << F_PROTOCOL_FEATURES)) {
		uint64_t p = vu_get_u64(VU_GET_PROTOCOL_FEATURES);

		proto = p & (1ull << PF_MQ);
		vu_u64(VU_SET_PROTOCOL_FEATURES, proto);
		if (proto & (1ull << PF_MQ))
			(void)vu_get_u64(VU_GET_QUEUE_NUM);
	}
	vu_send(VU_SET_OWNER, NULL, 0, -1);
	for (q = 0; q < 2; q++)
		vu_send(VU_SET_VRING_CALL, (uint64_t[]){ (uint64_t)q }, 8, rings[q].call);
	features = offered & want;
	/* The spec ties each TSO bit to its checksum bit; so does Linux's driver. */
	if (!(features & (1ull << F_CSUM)))
		features &= ~((1ull << F_HOST_TSO4) | (1ull << F_HOST_TSO6));
	if (!(features & (1ull << F_GUEST_CSUM)))
		features &= ~((1ull << F_GUEST_TSO4) | (1ull << F_GUEST_TSO6));
	vu_u64(VU_SET_FEATURES, features);
	{
		/* u32 nregions + u32 padding, then gpa, size, user address, mmap offset */
		uint64_t table[5] = { 1, 0, mem_size, (uint64_t)(uintptr_t)mem, 0 };

		vu_send(VU_SET_MEM_TABLE, table, sizeof(table), mem_fd);
	}
	for (q = 0; q < 2; q++) {
		struct vring *r = &rings[q];
		struct { uint32_t index, flags; uint64_t desc, used, avail, log; } addr = {
			(uint32_t)q, 0, (uint64_t)(uintptr_t)r->desc,
			(uint64_t)(uintptr_t)r->used, (uint64_t)(uintptr_t)r->avail, 0,
		};

		vu_state(VU_SET_VRING_NUM, (uint32_t)q, r->num);
		vu_state(VU_SET_VRING_BASE, (uint32_t)q, 0);
		vu_send(VU_SET_VRING_ADDR, &addr, sizeof(addr), -1);
		vu_send(VU_SET_VRING_KICK, (uint64_t[]){ (uint64_t)q }, 8, r->kick);
		vu_send(VU_SET_VRING_CALL, (uint64_t[]){ (uint64_t)q }, 8, r->call);
	}
	if (features & (1ull << F_PROTOCOL_FEATURES))
		for (q = 0; q < 2; q++)
			vu_state(VU_SET_VRING_ENABLE, (uint32_t)q, 1);
	/* A request with a reply: everything before it has been handled. */
	(void)vu_get_u64(VU_GET_FEATURES);
}

/* ---- ring operations ---- */
static void rx_post_all(void)
{
	struct vring *r = &rings[RXQ];
	unsigned i;

	for (i = 0; i < r->num; i++) {
		r->desc[i] = (struct vdesc){ r->buf_gpa + (uint64_t)i * r->stride, r->stride,
					     DESC_F_WRITE, 0 };
		r->avail[2 + i] = (uint16_t)i;
	}
	r->avail_idx = (uint16_t)r->num;
	__atomic_store_n(&r->avail[1], r->avail_idx, __ATOMIC_RELEASE);
}

static void tx_init(void)
{
	struct vring *r = &rings[TXQ];
	unsigned i;

	r->free_ids = calloc(r->num, sizeof(uint16_t));
	if (!r->free_ids)
		die("calloc");
	for (i = 0; i < r->num; i++)
		r->free_ids[i] = (uint16_t)(r->num - 1 - i);
	r->nfree = r->num;
	memset(r->buf, PATTERN, (size_t)r->num * r->stride);
}

/**
 * ring_notify() - publish new avail entries and kick if the device wants it
 * @r:	ring
 * Return: 1 if a kick was sent
 */
static int ring_notify(struct vring *r)
{
	uint16_t old = r->kicked_idx, new = r->avail_idx;
	int kick;

	if (old == new)
		return 0;
	__atomic_store_n(&r->avail[1], new, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (features & (1ull << F_EVENT_IDX)) {
		uint16_t ev = __atomic_load_n(avail_event(r), __ATOMIC_ACQUIRE);

		kick = (uint16_t)(new - ev - 1) < (uint16_t)(new - old);
	} else {
		kick = !(__atomic_load_n(&r->used[0], __ATOMIC_ACQUIRE) & USED_F_NO_NOTIFY);
	}
	r->kicked_idx = new;
	if (opt.always_kick)
		kick = 1;
	if (kick) {
		uint64_t one = 1;

		if (write(r->kick, &one, 8) != 8)
			die("kick");
	}
	return kick;
}

/** ring_arm() - ask for a call on the next used entry (before sleeping) */
static void ring_arm(struct vring *r)
{
	if (features & (1ull << F_EVENT_IDX))
		__atomic_store_n(&r->avail[2 + r->num], r->last_used, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static unsigned tx_reclaim(void)
{
	struct vring *r = &rings[TXQ];
	uint16_t end = __atomic_load_n(used_idx(r), __ATOMIC_ACQUIRE);
	unsigned n = 0;

	while (r->last_used != end) {
		uint32_t id = used_ring(r)[r->last_used % r->num].id;

		if (id < r->num)
			r->free_ids[r->nfree++] = (uint16_t)id;
		r->last_used++;
		n++;
	}
	return n;
}

static uint16_t tx_cur;

/** tx_get() - a free TX slot: returns the frame start (after the virtio-net header) or NULL */
static uint8_t *tx_get(void)
{
	struct vring *r = &rings[TXQ];
	uint8_t *p;

	if (!r->nfree && !tx_reclaim())
		return NULL;
	if (!r->nfree)
		return NULL;
	tx_cur = r->free_ids[--r->nfree];
	p = r->buf + (size_t)tx_cur * r->stride;
	memset(p, 0, VNET_HDR);
	return p + VNET_HDR;
}

static uint64_t tx_frames;

static void tx_commit(unsigned len)
{
	struct vring *r = &rings[TXQ];

	r->desc[tx_cur] = (struct vdesc){ r->buf_gpa + (uint64_t)tx_cur * r->stride,
					  VNET_HDR + len, 0, 0 };
	r->avail[2 + r->avail_idx % r->num] = tx_cur;
	r->avail_idx++;
	tx_frames++;
	/* Publish early so the device sees work while more is being built. */
	if ((uint16_t)(r->avail_idx - r->kicked_idx) >= 32)
		ring_notify(r);
}

/* ---- checksums ---- */
static uint32_t sum16(const void *data, size_t len, uint32_t sum)
{
	const uint8_t *p = data;

	while (len > 1) {
		sum += (uint32_t)p[0] << 8 | p[1];
		p += 2;
		len -= 2;
	}
	if (len)
		sum += (uint32_t)p[0] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/** pattern_sum() - ones' complement partial sum of @len pattern bytes (even start) */
static uint32_t pattern_sum(unsigned len)
{
	return (uint32_t)(len / 2) * (PATTERN << 8 | PATTERN) + ((len & 1) ? PATTERN << 8 : 0);
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

/* ---- frame building ---- */
static void eth_hdr(uint8_t *f, const uint8_t *dst, uint16_t type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, opt.guest_mac, 6);
	put16(f + 12, type);
}

static void send_arp(int op, const uint8_t *tha, uint32_t tip)
{
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	uint8_t *f = tx_get();

	if (!f)
		return;
	eth_hdr(f, op == 1 ? bcast : tha, 0x0806);
	put16(f + 14, 1);
	put16(f + 16, 0x0800);
	f[18] = 6;
	f[19] = 4;
	put16(f + 20, (uint16_t)op);
	memcpy(f + 22, opt.guest_mac, 6);
	put32(f + 28, opt.guest_ip);
	memcpy(f + 32, op == 1 ? (const uint8_t[6]){ 0 } : tha, 6);
	put32(f + 38, tip);
	memset(f + 42, 0, 18);
	tx_commit(60);
}

/** ip_hdr() - IPv4 header to the gateway; returns the L4 pseudo-header sum */
static uint32_t ip_hdr(uint8_t *ip, uint8_t proto, unsigned l4len)
{
	static uint16_t id;

	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, (uint16_t)(IP_HLEN + l4len));
	put16(ip + 4, id++);
	put16(ip + 6, 0x4000);
	ip[8] = 64;
	ip[9] = proto;
	put16(ip + 10, 0);
	put32(ip + 12, opt.guest_ip);
	put32(ip + 16, opt.gw_ip);
	put16(ip + 10, fold(sum16(ip, IP_HLEN, 0)));
	return (opt.guest_ip >> 16) + (opt.guest_ip & 0xffff) + (opt.gw_ip >> 16) +
	       (opt.gw_ip & 0xffff) + proto + l4len;
}

static void put16le(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

/**
 * l4_csum() - the L4 checksum of a frame as Linux's driver leaves it: partial (NEEDS_CSUM, the
 * pseudo-header sum only, the device completes it) when the device took CSUM, else complete
 * @f:		frame (after the virtio-net header)
 * @l4hlen:	L4 header length (options included)
 * @len:	payload bytes (pattern)
 * @pseudo:	pseudo-header sum from ip_hdr()
 * @off:	offset of the checksum field in the L4 header
 */
static void l4_csum(uint8_t *f, unsigned l4hlen, unsigned len, uint32_t pseudo, unsigned off)
{
	uint8_t *l4 = f + ETH_HLEN + IP_HLEN, *vnet = f - VNET_HDR;
	uint16_t c;

	if (features & (1ull << F_CSUM)) {
		vnet[0] = VNET_F_NEEDS_CSUM;
		put16le(vnet + 6, ETH_HLEN + IP_HLEN);
		put16le(vnet + 8, (uint16_t)off);
		put16(l4 + off, (uint16_t)~fold(pseudo));
		return;
	}
	c = fold(sum16(l4, l4hlen, pseudo) + pattern_sum(len));
	put16(l4 + off, (off == 6 && !c) ? 0xffff : c);	/* UDP: 0 means "none" */
}

/** send_udp() - one datagram of @len pattern bytes to the gateway; 0 if the ring is full */
static int send_udp(uint16_t sport, uint16_t dport, unsigned len)
{
	uint8_t *f = tx_get(), *u;
	uint32_t sum;

	if (!f)
		return 0;
	eth_hdr(f, gw_mac, 0x0800);
	u = f + ETH_HLEN + IP_HLEN;
	memset(u + UDP_HLEN, PATTERN, len < 24 ? len : 24);
	sum = ip_hdr(f + ETH_HLEN, 17, UDP_HLEN + len);
	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, (uint16_t)(UDP_HLEN + len));
	put16(u + 6, 0);
	l4_csum(f, UDP_HLEN, len, sum, 6);
	tx_commit(ETH_HLEN + IP_HLEN + UDP_HLEN + len);
	return 1;
}

/* ---- shared state with the host thread ---- */
static atomic_ullong host_bytes, host_msgs;
static atomic_int host_go, host_stop, host_error;
static uint64_t guest_rx_bytes, transactions, retransmits;
static int64_t rr_sent_at;
static uint16_t guest_sport = GUEST_SPORT;	/* first (or only) guest port */
static uint32_t iss_base;
static uint64_t rto_count;
/* Why the guest side last stopped sending before it slept (TCP): a diagnosis of who waits. */
enum { WAIT_OTHER, WAIT_RING, WAIT_WINDOW, WAIT_CWND, WAIT_KINDS };
static const char *const wait_names[WAIT_KINDS] = { "other", "ring", "window", "cwnd" };
static unsigned last_stop;
static uint64_t waits[WAIT_KINDS];

/* ---- TCP, guest side ---- */
enum tcp_state { T_CLOSED, T_LISTEN, T_SYN_SENT, T_SYN_RCVD, T_EST };

struct tcb {
	enum tcp_state state;
	uint16_t lport, rport;
	uint32_t snd_una, snd_nxt, snd_max, snd_wnd, app_end, cwnd, ssthresh;
	uint32_t rcv_nxt, rcv_acked;
	int snd_wscale, dupacks, need_ack;
	unsigned mss;
	int64_t last_progress;
};

static struct tcb *tcbs;
static unsigned ntcb, established;

#define SEQ_LT(a, b)	((int32_t)((a) - (b)) < 0)
#define SEQ_LE(a, b)	((int32_t)((a) - (b)) <= 0)

/** send_tcp() - one segment; @len pattern bytes of payload; SYNs carry MSS and WS options */
static int send_tcp(struct tcb *t, uint8_t flags, uint32_t seq, unsigned len)
{
	uint8_t *f = tx_get(), *th;
	unsigned optlen = (flags & TH_SYN) ? 8 : 0, win;
	uint32_t sum;

	if (!f)
		return 0;
	eth_hdr(f, gw_mac, 0x0800);
	th = f + ETH_HLEN + IP_HLEN;
	memset(th + TCP_HLEN + optlen, PATTERN, len < 24 ? len : 24);
	sum = ip_hdr(f + ETH_HLEN, 6, TCP_HLEN + optlen + len);
	put16(th, t->lport);
	put16(th + 2, t->rport);
	put32(th + 4, seq);
	put32(th + 8, (flags & TH_ACK) ? t->rcv_nxt : 0);
	th[12] = (uint8_t)(((TCP_HLEN + optlen) / 4) << 4);
	th[13] = flags;
	win = (flags & TH_SYN) ? 65535 : (8u << 20) >> RCV_WSCALE;
	put16(th + 14, (uint16_t)(win > 65535 ? 65535 : win));
	put16(th + 16, 0);
	put16(th + 18, 0);
	if (optlen) {
		th[20] = 2;
		th[21] = 4;
		put16(th + 22, (uint16_t)(opt.mtu - IP_HLEN - TCP_HLEN));
		th[24] = 1;
		th[25] = 3;
		th[26] = 3;
		th[27] = RCV_WSCALE;
	}
	l4_csum(f, TCP_HLEN + optlen, len, sum, 16);
	if (len > t->mss) {	/* one TSO frame of several segments (HOST_TSO4) */
		f[-VNET_HDR + 1] = VNET_GSO_TCPV4;
		put16le(f - VNET_HDR + 2, (uint16_t)(ETH_HLEN + IP_HLEN + TCP_HLEN + optlen));
		put16le(f - VNET_HDR + 4, (uint16_t)t->mss);
	}
	tx_commit(ETH_HLEN + IP_HLEN + TCP_HLEN + optlen + len);
	if (flags & TH_ACK) {
		t->rcv_acked = t->rcv_nxt;
		t->need_ack = 0;
	}
	return 1;
}

static void tcp_connect(struct tcb *t, uint16_t lport)
{
	memset(t, 0, sizeof(*t));
	t->lport = lport;
	t->rport = (uint16_t)opt.port_out;
	t->snd_una = t->snd_nxt = iss_base + lport * 0x10000u;
	if (send_tcp(t, TH_SYN, t->snd_nxt, 0)) {
		t->snd_nxt++;
		t->snd_max = t->snd_nxt;
		t->state = T_SYN_SENT;
		t->last_progress = now_ns();
	}
}

/** tcp_go_back() - loss: resend from snd_una with half the congestion window (Reno-like) */
static void tcp_go_back(struct tcb *t)
{
	uint32_t flight = t->snd_max - t->snd_una;

	t->ssthresh = flight / 2 > 2 * t->mss ? flight / 2 : 2 * t->mss;
	t->cwnd = t->ssthresh;
	t->snd_nxt = t->snd_una;
	t->dupacks = 0;
	retransmits++;
}

/** tcp_output() - send new or rewound data up to the window and the application limit */
static unsigned tcp_output(struct tcb *t, int64_t now)
{
	unsigned sent = 0;

	if (t->state != T_EST)
		return 0;
	if (t->snd_nxt != t->snd_una && now - t->last_progress > RTO_NS) {
		tcp_go_back(t);		/* stalled */
		rto_count++;
		t->last_progress = now;
	}
	/* With HOST_TSO4 a frame carries as many whole segments as an IP packet holds. */
	unsigned seg_max = (features & (1ull << F_HOST_TSO4)) ?
		(65535u - IP_HLEN - TCP_HLEN) / t->mss * t->mss : t->mss;

	for (;;) {
		uint32_t wnd = t->snd_wnd < t->cwnd ? t->snd_wnd : t->cwnd;
		uint32_t limit = t->snd_una + wnd, len;

		if (SEQ_LT(t->app_end, limit))
			limit = t->app_end;
		last_stop = t->cwnd < t->snd_wnd ? WAIT_CWND : WAIT_WINDOW;
		if (!SEQ_LT(t->snd_nxt, limit))
			break;
		len = limit - t->snd_nxt;
		if (len > seg_max)
			len = seg_max;
		if (len < t->mss && t->app_end != limit && t->snd_nxt != t->snd_una)
			break;	/* no small segments while data is in flight */
		last_stop = WAIT_RING;
		if (!send_tcp(t, TH_ACK | TH_PSH, t->snd_nxt, len))
			break;
		last_stop = WAIT_OTHER;
		if (t->snd_nxt == t->snd_una)
			t->last_progress = now;
		t->snd_nxt += len;
		if (SEQ_LT(t->snd_max, t->snd_nxt))
			t->snd_max = t->snd_nxt;
		sent++;
	}
	return sent;
}

static void tcp_parse_opts(struct tcb *t, const uint8_t *o, unsigned n)
{
	unsigned i = 0;

	while (i < n) {
		if (o[i] == 0)
			break;
		if (o[i] == 1) {
			i++;
			continue;
		}
		if (i + 1 >= n || o[i + 1] < 2 || i + o[i + 1] > n)
			break;
		if (o[i] == 2 && o[i + 1] == 4 && get16(o + i + 2) >= 64)
			t->mss = get16(o + i + 2);
		if (o[i] == 3 && o[i + 1] == 3)
			t->snd_wscale = o[i + 2] > 14 ? 14 : o[i + 2];
		i += o[i + 1];
	}
	if (t->mss > (unsigned)(opt.mtu - IP_HLEN - TCP_HLEN))
		t->mss = (unsigned)(opt.mtu - IP_HLEN - TCP_HLEN);
}


static struct tcb *tcb_for(uint16_t lport)
{
	if (opt.mode == M_TCP_FLOWS) {
		unsigned i = (unsigned)(uint16_t)(lport - guest_sport);

		return i < ntcb ? &tcbs[i] : NULL;
	}
	return tcbs[0].lport == lport ? &tcbs[0] : NULL;
}

static void tcp_input(const uint8_t *ip, unsigned iplen, int64_t now)
{
	const uint8_t *th = ip + IP_HLEN;
	unsigned doff, plen;
	uint32_t seq, ack, win;
	uint8_t flags;
	struct tcb *t;

	if (iplen < IP_HLEN + TCP_HLEN)
		return;
	doff = (unsigned)(th[12] >> 4) * 4;
	if (doff < TCP_HLEN || IP_HLEN + doff > iplen)
		return;
	plen = iplen - IP_HLEN - doff;
	seq = get32(th + 4);
	ack = get32(th + 8);
	flags = th[13];
	win = get16(th + 14);
	t = tcb_for(get16(th + 2));
	if (!t)
		return;
	if (flags & TH_RST) {
		if (t->state != T_LISTEN && t->state != T_CLOSED) {
			fprintf(stderr, "vufront: connection reset by the back-end\n");
			t->state = T_CLOSED;
			host_error = 1;
		}
		return;
	}
	if (t->state == T_LISTEN && (flags & TH_SYN) && !(flags & TH_ACK)) {
		t->rport = get16(th);
		t->rcv_nxt = seq + 1;
		t->snd_una = t->snd_nxt = iss_base ^ 0x5a5a5a5au;
		t->mss = 536;
		tcp_parse_opts(t, th + TCP_HLEN, doff - TCP_HLEN);
		t->snd_wnd = win;
		t->cwnd = 10 * t->mss;
		t->ssthresh = 64u << 20;
		if (send_tcp(t, TH_SYN | TH_ACK, t->snd_nxt, 0)) {
			t->snd_nxt++;
			t->snd_max = t->app_end = t->snd_nxt;
			t->state = T_SYN_RCVD;
		}
		return;
	}
	if (t->state == T_SYN_SENT) {
		if ((flags & (TH_SYN | TH_ACK)) != (TH_SYN | TH_ACK) || ack != t->snd_nxt)
			return;
		t->rcv_nxt = seq + 1;
		t->snd_una = ack;
		t->mss = 536;
		tcp_parse_opts(t, th + TCP_HLEN, doff - TCP_HLEN);
		t->snd_wnd = win;
		t->cwnd = 10 * t->mss;
		t->ssthresh = 64u << 20;
		t->app_end = opt.mode == M_TCP_TX ? t->snd_una - 1 : t->snd_nxt;
		t->state = T_EST;
		established++;
		t->need_ack = 1;
		t->last_progress = now;
		return;
	}
	if (!(flags & TH_ACK))
		return;
	if (t->state == T_SYN_RCVD) {
		if (ack != t->snd_nxt)
			return;
		t->state = T_EST;
		established++;
	}
	if (t->state != T_EST)
		return;
	if (SEQ_LT(t->snd_una, ack) && SEQ_LE(ack, t->snd_max)) {
		uint32_t acked = ack - t->snd_una;

		/* slow start, then about one MSS per window */
		if (t->cwnd < t->ssthresh)
			t->cwnd += acked;
		else
			t->cwnd += (uint32_t)((uint64_t)t->mss * acked / t->cwnd) + 1;
		if (t->cwnd > (64u << 20))
			t->cwnd = 64u << 20;
		t->snd_una = ack;
		if (SEQ_LT(t->snd_nxt, ack))
			t->snd_nxt = ack;
		t->dupacks = 0;
		t->last_progress = now;
	} else if (ack == t->snd_una && !plen && t->snd_nxt != t->snd_una) {
		/* passt answers a gap with a pair of duplicate ACKs: two are enough. */
		if (++t->dupacks == 2)
			tcp_go_back(t);
	}
	t->snd_wnd = win << t->snd_wscale;
	if (plen || (flags & TH_FIN)) {
		if (seq == t->rcv_nxt) {
			t->rcv_nxt += plen + ((flags & TH_FIN) ? 1 : 0);
			guest_rx_bytes += plen;
			if (opt.mode == M_TCP_RX && t->rcv_nxt - t->rcv_acked >= 4u * t->mss &&
			    t->rcv_nxt - t->rcv_acked >= 65536)
				send_tcp(t, TH_ACK, t->snd_nxt, 0);
		}
		t->need_ack = 1;
	}
}

static void udp_input(const uint8_t *ip, unsigned iplen)
{
	const uint8_t *u = ip + IP_HLEN;
	unsigned len;

	if (iplen < IP_HLEN + UDP_HLEN)
		return;
	len = get16(u + 4);
	if (len < UDP_HLEN || IP_HLEN + len > iplen)
		return;
	len -= UDP_HLEN;
	if (opt.mode == M_UDP_RX && get16(u + 2) == opt.port_in) {
		guest_rx_bytes += len;
	} else if (opt.mode == M_UDP_RR && get16(u + 2) == guest_sport && len == (unsigned)opt.size &&
		   rr_sent_at) {
		transactions++;
		rr_sent_at = 0;
	}
}

static void arp_input(const uint8_t *a, unsigned len)
{
	if (len < 28 || get16(a) != 1 || get16(a + 2) != 0x0800)
		return;
	if (get16(a + 6) == 2 && get32(a + 14) == opt.gw_ip) {
		memcpy(gw_mac, a + 8, 6);
		gw_mac_known = 1;
	} else if (get16(a + 6) == 1 && get32(a + 24) == opt.guest_ip) {
		if (!gw_mac_known && get32(a + 14) == opt.gw_ip) {
			memcpy(gw_mac, a + 8, 6);
			gw_mac_known = 1;
		}
		send_arp(2, a + 8, get32(a + 14));
	}
}

static void frame_input(const uint8_t *f, unsigned len, int64_t now)
{
	const uint8_t *ip = f + ETH_HLEN;
	unsigned iplen;

	if (len < ETH_HLEN)
		return;
	if (get16(f + 12) == 0x0806) {
		arp_input(ip, len - ETH_HLEN);
		return;
	}
	if (get16(f + 12) != 0x0800 || len < ETH_HLEN + IP_HLEN || ip[0] != 0x45)
		return;
	iplen = get16(ip + 2);
	if (iplen > len - ETH_HLEN || get32(ip + 16) != opt.guest_ip)
		return;
	if (ip[9] == 6)
		tcp_input(ip, iplen, now);
	else if (ip[9] == 17)
		udp_input(ip, iplen);
}

/**
 * rx_process() - handle used RX buffers (mergeable: several per frame) and repost them
 * Return: frames handled
 */
static unsigned rx_process(int64_t now)
{
	struct vring *r = &rings[RXQ];
	uint16_t end = __atomic_load_n(used_idx(r), __ATOMIC_ACQUIRE);
	unsigned frames = 0;

	while (r->last_used != end) {
		struct vused_elem *e = &used_ring(r)[r->last_used % r->num];
		uint8_t *buf = r->buf + (size_t)(e->id % r->num) * r->stride;
		unsigned nbuf = 1, total = e->len, k;

		if ((features & (1ull << F_MRG_RXBUF)) && (buf[10] | buf[11]))
			nbuf = (unsigned)(buf[10] | buf[11] << 8);
		if ((uint16_t)(end - r->last_used) < nbuf)
			break;	/* rest of the frame not there yet */
		for (k = 1; k < nbuf; k++)
			total += used_ring(r)[(uint16_t)(r->last_used + k) % r->num].len;
		/* Headers are in the first buffer (>= 128 bytes); the rest is payload, not read. */
		if (total > VNET_HDR)
			frame_input(buf + VNET_HDR, total - VNET_HDR, now);
		for (k = 0; k < nbuf; k++) {
			uint32_t id = used_ring(r)[(uint16_t)(r->last_used + k) % r->num].id;

			r->avail[2 + r->avail_idx % r->num] = (uint16_t)(id % r->num);
			r->avail_idx++;
		}
		r->last_used = (uint16_t)(r->last_used + nbuf);
		frames++;
	}
	return frames;
}

/* ---- host side (second thread, in the back-end's network namespace) ---- */
static int host_socket(int type, int port, int do_bind)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1, big = 8 << 20;
	struct timeval tv = { 0, 100000 };
	int s = socket(AF_INET, type | SOCK_CLOEXEC, 0);

	if (s < 0)
		die("host socket");
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
	setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (do_bind) {
		if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			die("host bind");
		if (type == SOCK_STREAM && listen(s, 4096) < 0)
			die("host listen");
	} else {
		int64_t deadline = now_ns() + 5000000000LL;

		while (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			if (host_stop || now_ns() > deadline)
				die("host connect to the forwarded port");
			usleep(10000);
		}
	}
	if (type == SOCK_STREAM)
		setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return s;
}

static int host_accept(int l)
{
	while (!host_stop) {
		int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);

		if (s >= 0) {
			int one = 1;

			setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			return s;
		}
		if (errno != EAGAIN && errno != EINTR)
			die("host accept");
	}
	return -1;
}

static int host_listen_fd = -1, host_udp_fd = -1;

/** host_prepare() - bind what must exist before the guest sends (main thread, at start) */
static void host_prepare(void)
{
	switch (opt.mode) {
	case M_UDP_TX: case M_UDP_RR: case M_UDP_FLOWS:
		host_udp_fd = host_socket(SOCK_DGRAM, opt.port_out, 1);
		break;
	case M_TCP_TX: case M_TCP_RR: case M_TCP_FLOWS:
		host_listen_fd = host_socket(SOCK_STREAM, opt.port_out, 1);
		break;
	default:
		break;
	}
}

static void *host_main(void *arg)
{
	static uint8_t buf[1 << 20];
	size_t chunk = (size_t)opt.size;
	int s;

	(void)arg;
	memset(buf, PATTERN, sizeof(buf));
	switch (opt.mode) {
	case M_UDP_TX: case M_UDP_FLOWS: {
		struct mmsghdr mm[64];
		struct iovec iov[64];
		unsigned i;

		for (i = 0; i < 64; i++) {
			iov[i] = (struct iovec){ buf, 1 };
			mm[i].msg_hdr = (struct msghdr){ .msg_iov = &iov[i], .msg_iovlen = 1 };
		}
		while (!host_stop) {
			int n = recvmmsg(host_udp_fd, mm, 64, MSG_TRUNC, NULL);

			for (i = 0; n > 0 && i < (unsigned)n; i++)
				host_bytes += mm[i].msg_len;
			if (n > 0)
				host_msgs += (unsigned)n;
		}
		break;
	}
	case M_UDP_RX: {
		struct mmsghdr mm[32];
		struct iovec iov = { buf, chunk };
		unsigned i;

		while (!host_go && !host_stop)
			usleep(1000);
		s = host_socket(SOCK_DGRAM, opt.port_in, 0);
		for (i = 0; i < 32; i++)
			mm[i].msg_hdr = (struct msghdr){ .msg_iov = &iov, .msg_iovlen = 1 };
		while (!host_stop) {
			int n = sendmmsg(s, mm, 32, 0);

			if (n > 0)
				host_msgs += (unsigned)n;
			else if (errno != EAGAIN && errno != ECONNREFUSED && errno != ENOBUFS)
				die("host sendmmsg");
		}
		break;
	}
	case M_TCP_TX:
		s = host_accept(host_listen_fd);
		while (!host_stop && s >= 0) {
			ssize_t n = recv(s, buf, sizeof(buf), 0);

			if (n > 0)
				host_bytes += (unsigned long long)n;
			else if (n == 0 || (errno != EAGAIN && errno != EINTR))
				break;
		}
		break;
	case M_TCP_RX:
		while (!host_go && !host_stop)
			usleep(1000);
		s = host_socket(SOCK_STREAM, opt.port_in, 0);
		while (!host_stop) {
			ssize_t n = send(s, buf, sizeof(buf), MSG_NOSIGNAL);

			if (n > 0)
				host_bytes += (unsigned long long)n;
			else if (n < 0 && errno != EAGAIN && errno != EINTR)
				break;
		}
		break;
	case M_UDP_RR:
		while (!host_stop) {
			struct sockaddr_storage from;
			socklen_t fl = sizeof(from);
			ssize_t n = recvfrom(host_udp_fd, buf, sizeof(buf), 0,
					     (struct sockaddr *)&from, &fl);

			if (n > 0)
				sendto(host_udp_fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
		}
		break;
	case M_TCP_RR:
		s = host_accept(host_listen_fd);
		while (!host_stop && s >= 0) {
			size_t got = 0;

			while (got < chunk && !host_stop) {
				ssize_t n = recv(s, buf + got, chunk - got, 0);

				if (n > 0)
					got += (size_t)n;
				else if (n == 0 || (errno != EAGAIN && errno != EINTR))
					goto out;
			}
			if (got == chunk && send(s, buf, chunk, MSG_NOSIGNAL) != (ssize_t)chunk)
				break;
		}
out:
		break;
	case M_TCP_FLOWS:
		while (!host_stop) {
			int c = accept4(host_listen_fd, NULL, NULL, SOCK_CLOEXEC);

			if (c >= 0)
				host_msgs++;	/* kept open until exit */
			else if (errno == EMFILE || errno == ENFILE)
				die("host accept (raise the fd limit)");
		}
		break;
	}
	return NULL;
}

/* ---- measurement ---- */
struct snap {
	int64_t t;
	double self_cpu, host_cpu, backend_cpu;
	uint64_t host_bytes, host_msgs, guest_bytes, trans, tx_frames;
};

static pthread_t host_thread;

static double thread_cpu(clockid_t c)
{
	struct timespec ts;

	if (clock_gettime(c, &ts))
		return 0;
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double backend_cpu(void)
{
	char path[64], buf[1024], *p;
	unsigned long ut = 0, st = 0;
	FILE *f;

	if (!opt.backend_pid)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", opt.backend_pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	p = fgets(buf, sizeof(buf), f);
	fclose(f);
	if (!p || !(p = strrchr(buf, ')')))
		return 0;
	/* after ")": state(3) ... utime(14) stime(15) */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long backend_rss_kib(void)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	if (!opt.backend_pid)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/status", opt.backend_pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static void take(struct snap *s)
{
	clockid_t hc;

	s->t = now_ns();
	s->self_cpu = thread_cpu(CLOCK_THREAD_CPUTIME_ID);
	s->host_cpu = pthread_getcpuclockid(host_thread, &hc) ? 0 : thread_cpu(hc);
	s->backend_cpu = backend_cpu();
	s->host_bytes = host_bytes;
	s->host_msgs = host_msgs;
	s->guest_bytes = guest_rx_bytes;
	s->trans = transactions;
	s->tx_frames = tx_frames;
}

/* ---- the main loop ---- */
static void wait_events(int64_t timeout_ns)
{
	struct pollfd p[2] = { { rings[RXQ].call, POLLIN, 0 }, { rings[TXQ].call, POLLIN, 0 } };
	uint64_t v;
	int ms = (int)(timeout_ns / 1000000);

	if (opt.spin_us) {
		/* Busy-poll both used rings a while before sleeping: no wake-up latency. */
		int64_t until = now_ns() + opt.spin_us * 1000LL;

		do {
			if (__atomic_load_n(used_idx(&rings[RXQ]), __ATOMIC_ACQUIRE) !=
			    rings[RXQ].last_used ||
			    __atomic_load_n(used_idx(&rings[TXQ]), __ATOMIC_ACQUIRE) !=
			    rings[TXQ].last_used)
				return;
			__builtin_ia32_pause();
		} while (now_ns() < until);
	}
	ring_arm(&rings[RXQ]);
	ring_arm(&rings[TXQ]);
	/* Entries the device used before it could see the armed event bring no call: look. */
	if (__atomic_load_n(used_idx(&rings[RXQ]), __ATOMIC_ACQUIRE) != rings[RXQ].last_used ||
	    __atomic_load_n(used_idx(&rings[TXQ]), __ATOMIC_ACQUIRE) != rings[TXQ].last_used)
		return;
	if (poll(p, 2, ms < 1 ? 1 : ms) > 0) {
		if (p[0].revents && read(p[0].fd, &v, 8) < 0 && errno != EAGAIN)
			die("read call");
		if (p[1].revents && read(p[1].fd, &v, 8) < 0 && errno != EAGAIN)
			die("read call");
	}
}

/** produce() - mode-specific guest transmit work; returns frames queued */
static unsigned produce(int64_t now, int setup_done)
{
	unsigned n = 0;
	unsigned payload_udp = (unsigned)(opt.mtu - IP_HLEN - UDP_HLEN);
	static unsigned next_flow;

	if (!gw_mac_known)
		return 0;
	switch (opt.mode) {
	case M_UDP_TX:
		while (send_udp(guest_sport, (uint16_t)opt.port_out,
				opt.size ? (unsigned)opt.size : payload_udp))
			n++;
		break;
	case M_UDP_RR:
		if (rr_sent_at && now - rr_sent_at > RTO_NS) {
			rr_sent_at = 0;
			retransmits++;
		}
		if (!rr_sent_at && send_udp(guest_sport, (uint16_t)opt.port_out, (unsigned)opt.size)) {
			rr_sent_at = now;
			n++;
		}
		break;
	case M_UDP_FLOWS:
		while (setup_done && next_flow < (unsigned)opt.flows &&
		       send_udp((uint16_t)(guest_sport + next_flow), (uint16_t)opt.port_out, 1)) {
			next_flow++;
			n++;
		}
		break;
	case M_TCP_TX:
		if ((tcbs[0].state == T_CLOSED ||
		     (tcbs[0].state == T_SYN_SENT && now - tcbs[0].last_progress > RTO_NS)) &&
		    !setup_done)
			tcp_connect(&tcbs[0], guest_sport);
		else if (tcbs[0].state == T_EST)
			tcbs[0].app_end = tcbs[0].snd_una + tcbs[0].snd_wnd;
		n += tcp_output(&tcbs[0], now);
		break;
	case M_TCP_RR: {
		struct tcb *t = &tcbs[0];

		if ((t->state == T_CLOSED ||
		     (t->state == T_SYN_SENT && now - t->last_progress > RTO_NS)) && !setup_done) {
			tcp_connect(t, guest_sport);
			break;
		}
		if (t->state != T_EST)
			break;
		/* Response complete (all of it received): the next request. */
		if (t->app_end == t->snd_una && guest_rx_bytes >= (uint64_t)opt.size) {
			guest_rx_bytes -= (uint64_t)opt.size;
			if (rr_sent_at)
				transactions++;
			t->app_end = t->snd_una + (uint32_t)opt.size;
			rr_sent_at = now;
		} else if (!rr_sent_at && t->app_end == t->snd_una) {
			t->app_end = t->snd_una + (uint32_t)opt.size;
			rr_sent_at = now;
		}
		n += tcp_output(t, now);
		break;
	}
	case M_TCP_FLOWS:
		/* At most 64 handshakes in flight: their SYN-ACKs must fit the RX ring. */
		while (setup_done && next_flow < ntcb && next_flow - established < 64 &&
		       rings[TXQ].nfree > 1) {
			tcp_connect(&tcbs[next_flow], (uint16_t)(guest_sport + next_flow));
			next_flow++;
			n++;
		}
		{
			int64_t stale = now - RTO_NS * 5;
			unsigned i;

			for (i = 0; i < next_flow && rings[TXQ].nfree > 1; i++)
				if (tcbs[i].state == T_SYN_SENT && tcbs[i].last_progress < stale)
					tcp_connect(&tcbs[i], (uint16_t)(guest_sport + i));
		}
		break;
	default:
		break;
	}
	/* Pending ACKs (TCP receivers, handshakes). */
	if (opt.mode == M_TCP_FLOWS) {
		unsigned i;

		for (i = 0; i < ntcb; i++)
			if (tcbs[i].need_ack && send_tcp(&tcbs[i], TH_ACK, tcbs[i].snd_nxt, 0))
				n++;
	} else if (ntcb && tcbs[0].need_ack && send_tcp(&tcbs[0], TH_ACK, tcbs[0].snd_nxt, 0)) {
		n++;
	}
	return n;
}

static void print_json(const struct snap *a, const struct snap *b, long rss_idle, long rss_peak,
		       const char *status)
{
	double secs = (double)(b->t - a->t) / 1e9;
	uint64_t bytes;

	switch (opt.mode) {
	case M_UDP_RX: case M_TCP_RX:
		bytes = b->guest_bytes - a->guest_bytes;
		break;
	default:
		bytes = b->host_bytes - a->host_bytes;
		break;
	}
	printf("{\"mode\": \"%s\", \"mtu\": %d, \"size\": %d, \"status\": \"%s\", "
	       "\"seconds\": %.6f, \"bytes\": %llu, \"gbit_s\": %.6f, \"transactions\": %llu, "
	       "\"tps\": %.3f, \"retransmits\": %llu, \"rto\": %llu, \"tx_frames\": %llu, "
	       "\"frontend_cpu_s\": %.6f, \"host_cpu_s\": %.6f, \"backend_cpu_s\": %.6f, "
	       "\"rss_idle_kib\": %ld, \"rss_kib\": %ld, \"flows\": %llu, "
	       "\"features\": %llu, \"waits\": {\"%s\": %llu, \"%s\": %llu, \"%s\": %llu, "
	       "\"%s\": %llu}}\n",
	       mode_names[opt.mode], opt.mtu, opt.size, status, secs, (unsigned long long)bytes,
	       secs > 0 ? (double)bytes * 8 / secs / 1e9 : 0.0,
	       (unsigned long long)(b->trans - a->trans),
	       secs > 0 ? (double)(b->trans - a->trans) / secs : 0.0,
	       (unsigned long long)retransmits, (unsigned long long)rto_count,
	       (unsigned long long)(b->tx_frames - a->tx_frames),
	       b->self_cpu - a->self_cpu, b->host_cpu - a->host_cpu,
	       b->backend_cpu - a->backend_cpu, rss_idle, rss_peak,
	       (unsigned long long)(opt.mode == M_TCP_FLOWS ? established : b->host_msgs),
	       (unsigned long long)features,
	       wait_names[0], (unsigned long long)waits[0], wait_names[1],
	       (unsigned long long)waits[1], wait_names[2], (unsigned long long)waits[2],
	       wait_names[3], (unsigned long long)waits[3]);
	fflush(stdout);
}

static uint32_t parse_ip(const char *s)
{
	struct in_addr a;

	if (inet_pton(AF_INET, s, &a) != 1)
		fail("bad IPv4 address");
	return ntohl(a.s_addr);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: vufront --socket PATH --mode MODE [options]\n"
		"modes: udp-tx udp-rx tcp-tx tcp-rx udp-rr tcp-rr udp-flows tcp-flows\n"
		"  --mtu N          guest MTU (65520)       --ring N       ring size (256)\n"
		"  --rxbuf N        RX buffer bytes (4096)  --size N       UDP payload/RR size\n"
		"  --duration S     window (3)              --warmup S     warm-up (0.5)\n"
		"  --guest-ip A     guest address           --gateway A    gateway address\n"
		"  --port-out N     host sink/echo (5001)   --port-in N    forwarded port (5101)\n"
		"  --backend-pid P  measure its CPU and RSS --flows N      flows (10000)\n"
		"  --no-event-idx   do not negotiate VIRTIO_RING_F_EVENT_IDX\n"
		"  --spin-us N      busy-poll the used rings N us before sleeping (0)\n"
		"  --no-offloads    do not negotiate CSUM/GUEST_CSUM/HOST_TSO*/GUEST_TSO*\n"
		"  --always-kick    kick after every publication, whatever the device asked\n"
		"                   (diagnostic: exposes a device's missed notification races)\n");
	exit(2);
}

static void parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "socket", 1, 0, 's' }, { "mode", 1, 0, 'm' }, { "mtu", 1, 0, 'M' },
		{ "ring", 1, 0, 'r' }, { "rxbuf", 1, 0, 'b' }, { "size", 1, 0, 'z' },
		{ "duration", 1, 0, 'd' }, { "warmup", 1, 0, 'w' }, { "guest-ip", 1, 0, 'a' },
		{ "gateway", 1, 0, 'g' }, { "port-out", 1, 0, 'o' }, { "port-in", 1, 0, 'i' },
		{ "backend-pid", 1, 0, 'p' }, { "flows", 1, 0, 'f' }, { "timeout", 1, 0, 'T' },
		{ "no-event-idx", 0, 0, 'E' }, { "spin-us", 1, 0, 'S' },
		{ "always-kick", 0, 0, 'K' }, { "no-offloads", 0, 0, 'O' }, { 0, 0, 0, 0 },
	};
	int c;
	unsigned i;

	opt.guest_ip = parse_ip("10.200.0.2");
	opt.gw_ip = parse_ip("10.200.0.1");
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': opt.socket = optarg; break;
		case 'm':
			for (i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
				if (!strcmp(optarg, mode_names[i]))
					break;
			if (i == sizeof(mode_names) / sizeof(mode_names[0]))
				usage();
			opt.mode = (enum mode)i;
			break;
		case 'M': opt.mtu = atoi(optarg); break;
		case 'r': opt.ring = atoi(optarg); break;
		case 'b': opt.rxbuf = atoi(optarg); break;
		case 'z': opt.size = atoi(optarg); break;
		case 'd': opt.duration = atof(optarg); break;
		case 'w': opt.warmup = atof(optarg); break;
		case 'a': opt.guest_ip = parse_ip(optarg); break;
		case 'g': opt.gw_ip = parse_ip(optarg); break;
		case 'o': opt.port_out = atoi(optarg); break;
		case 'i': opt.port_in = atoi(optarg); break;
		case 'p': opt.backend_pid = atoi(optarg); break;
		case 'f': opt.flows = atoi(optarg); break;
		case 'T': opt.timeout = atof(optarg); break;
		case 'E': opt.event_idx = 0; break;
		case 'S': opt.spin_us = atoi(optarg); break;
		case 'K': opt.always_kick = 1; break;
		case 'O': opt.offloads = 0; break;
		default: usage();
		}
	}
	if (!opt.socket || opt.mtu < 576 || opt.mtu > 65520 || opt.ring < 8 ||
	    opt.ring > 32768 || (opt.ring & (opt.ring - 1)) || opt.rxbuf < 128 ||
	    opt.flows < 1 || opt.flows > 25000 || opt.duration <= 0)
		usage();
	if ((opt.mode == M_UDP_RR || opt.mode == M_TCP_RR) && opt.size <= 0)
		opt.size = 1;
	if (opt.mode == M_UDP_RX && !opt.size)
		opt.size = opt.mtu - IP_HLEN - UDP_HLEN;
	if (opt.mode == M_TCP_RX || opt.mode == M_TCP_TX)
		opt.size = 0;
	if (opt.size > opt.mtu - IP_HLEN - ((opt.mode == M_UDP_RX || opt.mode == M_UDP_RR) ?
					    UDP_HLEN : TCP_HLEN))
		fail("--size must fit one segment/datagram at this MTU");
}

int main(int argc, char **argv)
{
	unsigned tx_stride;
	struct snap a = { 0 }, b = { 0 };
	int64_t start, deadline, measure_at = 0, end_at = 0, arp_at = 0, settle_at = 0;
	long rss_idle = -1, rss_peak = -1;
	int setup_done = 0, measuring = 0;
	const char *status = "ok";

	parse_args(argc, argv);
	/* Fresh ports and sequence numbers per run: a back-end may remember the last one. */
	iss_base = (uint32_t)now_ns() ^ (uint32_t)getpid() << 16;
	if (opt.mode != M_UDP_FLOWS && opt.mode != M_TCP_FLOWS)
		guest_sport = (uint16_t)(GUEST_SPORT + (uint32_t)now_ns() % 20000);
	signal(SIGPIPE, SIG_IGN);
	{
		struct rlimit rl = { 65536, 65536 };

		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* A TSO frame may hold a whole 64 KiB IP packet whatever the MTU. */
	tx_stride = ((unsigned)(VNET_HDR + ETH_HLEN + (opt.offloads ? 65535 : opt.mtu)) + 4095) &
		    ~4095u;
	mem_size = BUF_BASE + (size_t)opt.ring * ((unsigned)opt.rxbuf + tx_stride);
	mem_size = (mem_size + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
	mem_fd = memfd_create("vufront-guest", MFD_CLOEXEC);
	if (mem_fd < 0 || ftruncate(mem_fd, (off_t)mem_size))
		die("memfd");
	mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, mem_fd, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	ring_init(&rings[RXQ], 0, BUF_BASE, (unsigned)opt.rxbuf);
	ring_init(&rings[TXQ], RING_AREA,
		  BUF_BASE + (size_t)opt.ring * (unsigned)opt.rxbuf, tx_stride);
	rx_post_all();
	tx_init();
	ntcb = opt.mode == M_TCP_FLOWS ? (unsigned)opt.flows : 1;
	tcbs = calloc(ntcb, sizeof(*tcbs));
	if (!tcbs)
		die("calloc");
	if (opt.mode == M_TCP_RX) {
		tcbs[0].state = T_LISTEN;
		tcbs[0].lport = (uint16_t)opt.port_in;
	}
	host_prepare();
	if (pthread_create(&host_thread, NULL, host_main, NULL))
		die("pthread_create");
	vu_connect();
	ring_notify(&rings[RXQ]);
	{
		uint64_t one = 1;

		if (write(rings[RXQ].kick, &one, 8) != 8)
			die("kick");
	}
	start = now_ns();
	deadline = start + (int64_t)(opt.timeout * 1e9);
	for (;;) {
		int64_t now = now_ns();
		unsigned work;

		if (!gw_mac_known && now >= arp_at) {
			send_arp(1, NULL, opt.gw_ip);
			arp_at = now + 100000000LL;
		}
		if (!setup_done && gw_mac_known) {
			int ready = 0;

			switch (opt.mode) {
			case M_TCP_TX: case M_TCP_RR:
				ready = tcbs[0].state == T_EST;
				break;
			case M_TCP_RX: case M_UDP_RX:
				host_go = 1;
				ready = guest_rx_bytes > 0;
				break;
			case M_UDP_FLOWS: case M_TCP_FLOWS:
				if (!settle_at)
					settle_at = now + 500000000LL;
				if (now >= settle_at && rss_idle < 0) {
					rss_idle = backend_rss_kib();
					ready = 1;
				}
				break;
			default:
				ready = 1;
			}
			if (ready) {
				setup_done = 1;
				measure_at = now + (int64_t)(opt.warmup * 1e9);
			}
		}
		if (setup_done && !measuring && now >= measure_at &&
		    opt.mode != M_UDP_FLOWS && opt.mode != M_TCP_FLOWS) {
			take(&a);
			measuring = 1;
			end_at = now + (int64_t)(opt.duration * 1e9);
		}
		if (measuring && now >= end_at && opt.mode != M_UDP_FLOWS &&
		    opt.mode != M_TCP_FLOWS) {
			take(&b);
			break;
		}
		if (setup_done && (opt.mode == M_UDP_FLOWS || opt.mode == M_TCP_FLOWS)) {
			uint64_t done = opt.mode == M_UDP_FLOWS ? host_msgs : established;

			if (!measuring) {
				take(&a);
				measuring = 1;
				deadline = now + 30000000000LL;
			}
			if (!end_at && (done >= (uint64_t)opt.flows || now > deadline))
				end_at = now + 1000000000LL;	/* let it settle, then look */
			if (end_at && now >= end_at) {
				rss_peak = backend_rss_kib();
				take(&b);
				if (done < (uint64_t)opt.flows)
					status = "incomplete";
				break;
			}
		}
		if (host_error) {
			status = "error";
			take(&b);
			break;
		}
		if (!measuring && now > deadline) {
			status = "setup-timeout";
			take(&b);
			a = b;
			break;
		}
		work = tx_reclaim();
		work += rx_process(now);
		work += produce(now, setup_done);
		ring_notify(&rings[RXQ]);
		ring_notify(&rings[TXQ]);
		if (!work) {
			int64_t wait = 10000000LL;

			if (opt.mode == M_UDP_RR || opt.mode == M_TCP_RR || opt.mode == M_TCP_TX)
				wait = 2000000LL;
			if (measuring)
				waits[last_stop]++;
			last_stop = WAIT_OTHER;
			wait_events(wait);
		}
	}
	host_stop = 1;
	if (getenv("VUFRONT_DEBUG"))
		fprintf(stderr, "rto %llu ", (unsigned long long)rto_count),
		fprintf(stderr, "tcb0: state %d wnd %u cwnd %u wscale %d mss %u una %u nxt %u "
			"max %u\n", tcbs[0].state, tcbs[0].snd_wnd, tcbs[0].cwnd,
			tcbs[0].snd_wscale, tcbs[0].mss,
			tcbs[0].snd_una, tcbs[0].snd_nxt, tcbs[0].snd_max);
	print_json(&a, &b, rss_idle, rss_peak, status);
	/* The host thread may sit in a blocking call: leave without joining it. */
	_exit(strcmp(status, "ok") ? 1 : 0);
}
