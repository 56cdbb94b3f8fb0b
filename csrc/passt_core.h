// SPDX-License-Identifier: MIT
/* passt_core.h - the whole C API of passt_py's core, as Python sees it.
 *
 * The text between CDEF-BEGIN and CDEF-END is fed to cffi's cdef() verbatim, so it may hold
 * only plain C declarations (no preprocessor lines). Every function returns a non-negative
 * count or value on success and a negative errno on failure, and touches only memory it was
 * handed: guest memory is reached through struct pc_mem, whose every access is bounds-checked.
 */
#ifndef PASST_CORE_H
#define PASST_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* CDEF-BEGIN */
/* Bumped whenever the C API changes; passt_py.core refuses an extension of another version. */
enum { PC_API_VERSION = 11 };
int pc_api_version(void);

/* ---- checksum.c: Internet checksum (RFC 1071) ---- */
/* Byte order: partial sums are the folded one's complement sum of big-endian 16-bit words
 * (host integers 0..0xffff); checksums are host integers whose big-endian encoding goes into the
 * packet. L4/IPv4-header helpers ignore the current content of the checksum field. */
enum { PC_CSUM_AUTO = 0, PC_CSUM_SCALAR = 1, PC_CSUM_AVX2 = 2 };
uint32_t pc_csum_partial(const void *buf, size_t len, uint32_t init);
uint32_t pc_csum_iov(const struct iovec *iov, size_t n, uint32_t init);
uint16_t pc_csum_fold(uint32_t sum);
int pc_csum_ipv4_header(const void *hdr, size_t len);
uint32_t pc_csum_pseudo_ipv4(const void *src, const void *dst, uint8_t proto, uint16_t len);
uint32_t pc_csum_pseudo_ipv6(const void *src, const void *dst, uint8_t proto, uint32_t len);
int pc_csum_l4_ipv4(const void *src, const void *dst, uint8_t proto, const void *l4, size_t len);
int pc_csum_l4_ipv6(const void *src, const void *dst, uint8_t proto, const void *l4, size_t len);
int pc_csum_icmp4(const void *icmp, size_t len);
/* For tests and benchmarks: available implementations (bit 1 << PC_CSUM_x), a forced one, and
 * in-C repeat loops (checksum, and memcpy as its yardstick) free of call overhead. */
int pc_csum_impls(void);
int pc_csum_partial_impl(int impl, const void *buf, size_t len, uint32_t init);
int pc_bench_csum(int impl, const void *buf, size_t len, unsigned int reps);
int pc_bench_memcpy(void *dst, const void *src, size_t len, unsigned int reps);

/* ---- iov.c: full-transfer readv/writev ---- */
/* Transfer a whole iovec array, resuming at byte offset skip; *done gets the offset reached.
 * Returns 0 when complete, PC_IOV_EOF (readv only) on end of file before completion, -EAGAIN
 * when a non-blocking fd would block (call again with skip = *done), other negative errno. The
 * caller's array is not modified. */
enum { PC_IOV_EOF = 1 };
int pc_writev_all(int fd, const struct iovec *iov, int iovcnt, size_t skip, size_t *done);
int pc_readv_all(int fd, const struct iovec *iov, int iovcnt, size_t skip, size_t *done);

/* ---- guest_mem.c / virtq.c: guest memory and split virtqueues ---- */
/* Guest memory (guest_mem.c): up to PC_MEM_MAX_REGIONS regions mmapped from the front-end's
 * fds; every access is bounds-checked; optional dirty-page log, one bit per 4 KiB page.
 * struct pc_mem is opaque: allocate pc_mem_size() bytes (zeroed) and call pc_mem_init(). */
enum { PC_MEM_MAX_REGIONS = 8, PC_LOG_PAGE_SHIFT = 12 };
struct pc_mem;
size_t pc_mem_size(void);
void pc_mem_init(struct pc_mem *m);
int pc_mem_add_region(struct pc_mem *m, int fd, uint64_t gpa, uint64_t size, uint64_t uva,
		      uint64_t mmap_offset);
int pc_mem_remove_region(struct pc_mem *m, uint64_t gpa, uint64_t size, uint64_t uva);
void pc_mem_clear(struct pc_mem *m);
int pc_mem_nregions(const struct pc_mem *m);
int pc_mem_set_log(struct pc_mem *m, int fd, uint64_t size, uint64_t offset);
void pc_mem_clear_log(struct pc_mem *m);
void pc_mem_set_logging(struct pc_mem *m, int on);
int pc_mem_logging(const struct pc_mem *m);
int pc_mem_read(const struct pc_mem *m, uint64_t gpa, void *buf, size_t len);
int pc_mem_write(struct pc_mem *m, uint64_t gpa, const void *buf, size_t len);
int64_t pc_mem_uva_to_gpa(const struct pc_mem *m, uint64_t uva);

/* Split virtqueues (virtq.c). struct pc_vq is opaque: pc_vq_size() bytes, pc_vq_init().
 * Chain error kinds: a bad chain is returned to the used ring with length 0, never fatal. */
enum {
	PC_VQ_MAX_SIZE = 32768, PC_VRING_F_LOG = 1, PC_VQ_MAX_INDIRECT = 65536,
	PC_VQ_RX_MAX_IOV = 1024, PC_VQ_RX_MAX_CHAINS = 256, PC_VQ_MAX_HDR = 64,
	PC_VQ_OK = 0, PC_VQ_ERR_HEAD = 1, PC_VQ_ERR_NEXT = 2, PC_VQ_ERR_LOOP = 3,
	PC_VQ_ERR_ADDR = 4, PC_VQ_ERR_DIR = 5, PC_VQ_ERR_INDIRECT = 6, PC_VQ_ERR_SHORT = 7,
	PC_VQ_ERR_IOV = 8
};
struct pc_vq;
/* One good TX frame: its chain head, its payload slices iov[first .. first+nslices), and the
 * first PC_VQ_TX_VNET bytes of its virtio-net header (flags, gso_type, hdr_len, gso_size,
 * csum_start, csum_offset, little-endian; zero-padded when the header is shorter). */
enum { PC_VQ_TX_VNET = 12 };
struct pc_tx_frame { uint32_t head; uint32_t first; uint32_t nslices; uint32_t len;
		     uint8_t vnet[12]; };
/* One bad chain: its head and a PC_VQ_ERR_* kind. */
struct pc_bad_chain { uint32_t head; uint32_t kind; };
/* What one pc_vq_push_rx() call did. */
struct pc_rx_result { uint32_t placed; uint32_t dropped; uint32_t bad; uint32_t notified; };
size_t pc_vq_size(void);
void pc_vq_init(struct pc_vq *vq, struct pc_mem *mem);
int pc_vq_set_num(struct pc_vq *vq, unsigned num);
int pc_vq_set_addr(struct pc_vq *vq, uint64_t desc_uva, uint64_t used_uva, uint64_t avail_uva,
		   uint64_t log_guest_addr, unsigned flags);
int pc_vq_set_base(struct pc_vq *vq, unsigned idx);
void pc_vq_set_call_fd(struct pc_vq *vq, int fd);
void pc_vq_set_features(struct pc_vq *vq, int event_idx, int indirect);
int pc_vq_start(struct pc_vq *vq);
int pc_vq_stop(struct pc_vq *vq);
int pc_vq_started(const struct pc_vq *vq);
int pc_vq_avail_pending(struct pc_vq *vq);
int pc_vq_pop_tx(struct pc_vq *vq, unsigned max_frames, size_t hdr_len,
		 struct pc_tx_frame *frames, struct iovec *iov, unsigned max_iov,
		 struct pc_bad_chain *bad, unsigned *nbad);
int pc_vq_release(struct pc_vq *vq, const struct pc_tx_frame *frames, unsigned nframes,
		  const struct pc_bad_chain *bad, unsigned nbad);
int pc_vq_push_rx(struct pc_vq *vq, const uint8_t *data, const uint32_t *lens, unsigned nframes,
		  size_t hdr_len, int mergeable, const uint8_t *vnet_hdr,
		  struct pc_rx_result *res);
int pc_vq_push_rx_ptrs(struct pc_vq *vq, const uint8_t *const *frames, const uint32_t *lens,
		       unsigned nframes, size_t hdr_len, int mergeable, const uint8_t *vnet_hdr,
		       struct pc_rx_result *res);
/* Publish used elements left pending by the RX paths' NO_FLUSH calls (one used idx update and
 * at most one notification per loop batch); 1 if the guest was (due to be) notified. */
int pc_vq_flush(struct pc_vq *vq);
/* Capture (-p): with an fd set, every frame the ring carries is appended to it as one classic
 * pcap record (host byte order, microseconds; the caller writes the file header): RX frames
 * when their used elements are published, by whichever path placed them, TX frames when first
 * popped. The virtio-net header is left out and a partial checksum (NEEDS_CSUM) completed, in
 * scratch (snaplen bytes, owned by the caller, also the records' snaplen). hdr_len is the RX
 * header length. A failed write turns the ring's capture off (err says why); traffic goes on.
 * fd -1 turns it off. The fd stays the caller's: turn capture off before closing it. */
struct pc_vq_capture { uint64_t frames; uint64_t bytes; int32_t err; uint32_t on; };
int pc_vq_set_capture(struct pc_vq *vq, int fd, size_t hdr_len, uint8_t *scratch,
		      size_t snaplen);
void pc_vq_capture_stats(const struct pc_vq *vq, struct pc_vq_capture *out);

/* ---- classify.c: the frames of a TX batch, parsed once for every protocol ---- */
/* SECTION classify */
/* Classification of a guest frame (struct pc_pkt.valid). PC_PKT_OK: every field that applies
 * to the protocol is filled; other codes say which check failed first (fields up to it are
 * filled). PC_PKT_OTHER is not an error: not IPv4/IPv6 (ARP...), see ethertype. */
enum {
	PC_PKT_OK = 0, PC_PKT_SHORT_ETH = 1, PC_PKT_OTHER = 2, PC_PKT_IP_HDR = 3,
	PC_PKT_IP_LEN = 4, PC_PKT_IP_FRAG = 5, PC_PKT_IP_EXT = 6, PC_PKT_L4_SHORT = 7,
	PC_PKT_TCP_DOFF = 8, PC_PKT_UDP_LEN = 9, PC_PKT_HDR_MAX = 256
};
/* One classified frame. Offsets are from the start of the Ethernet frame (virtio-net header
 * excluded). Addresses are 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d. For TCP and UDP,
 * sport/dport are the ports and payload_off/len the L4 payload; for ICMP/ICMPv6 sport is the
 * type, dport the code, and the payload follows the 4-byte ICMP header. vnet_flags, gso_type,
 * gso_size, csum_start, csum_offset come from the frame's virtio-net header (TX offloads). */
struct pc_pkt {
	uint32_t len; uint16_t ethertype; uint8_t valid; uint8_t ipver;
	uint8_t proto; uint8_t tcp_flags; uint8_t ttl; uint8_t vnet_flags;
	uint8_t gso_type; uint8_t tcp_doff; uint16_t gso_size;
	uint16_t csum_start; uint16_t csum_offset;
	uint16_t l3_off; uint16_t l4_off; uint16_t opt_off; uint16_t opt_len;
	uint16_t sport; uint16_t dport; uint16_t window; uint16_t ip_len;
	uint32_t seq; uint32_t ack; uint32_t payload_off; uint32_t payload_len;
	uint8_t src[16]; uint8_t dst[16];
};
int pc_classify(const struct pc_tx_frame *frames, const struct iovec *iov, unsigned max_iov,
		unsigned nframes, struct pc_pkt *out);

/* ---- tcp_path.c: the established-TCP data path ---- */
/* SECTION tcp_path: owned by the TCP data-path work */
/* virtio-net header (virtio 1.x 5.1.6): flags, gso_type; and what tcp_path.c needs. */
enum {
	PC_VNET_F_NEEDS_CSUM = 1, PC_VNET_F_DATA_VALID = 2,
	PC_VNET_GSO_NONE = 0, PC_VNET_GSO_TCPV4 = 1, PC_VNET_GSO_UDP = 3, PC_VNET_GSO_TCPV6 = 4,
	PC_VNET_GSO_UDP_L4 = 5, PC_VNET_GSO_ECN = 128
};
/* TCP flags, as in the header's 13th byte. */
enum {
	PC_TCP_FIN = 1, PC_TCP_SYN = 2, PC_TCP_RST = 4, PC_TCP_PSH = 8, PC_TCP_ACK = 16,
	PC_TCP_URG = 32, PC_TCP_ECE = 64, PC_TCP_CWR = 128
};
/* Guest -> host: bytes [off, off + len) of frame `frame` of a TX batch. */
struct pc_payload_ref { uint32_t frame; uint32_t off; uint32_t len; };
int64_t pc_send_payloads(int fd, const struct pc_tx_frame *frames, unsigned nframes,
			 const struct iovec *iov, unsigned max_iov,
			 const struct pc_payload_ref *items, unsigned nitems);
/* A run of a TX batch: frames [first, first + count). With data set, they are in-order data
 * segments (ACK, maybe PSH, payload) of one connection: contiguous sequence numbers from seq,
 * `bytes` of payload, ACK fields never going back; ack and window are the last segment's.
 * With acks set, bare ACKs (no payload, no other flag) of one connection, each acknowledging
 * more than the one before: only the last one's ack and window (given) matter. Otherwise
 * without data, one TCP frame that is anything else, or (other set) consecutive frames that
 * are not well-formed TCP segments at all (UDP, ARP, broken frames...). */
struct pc_tcp_run {
	uint32_t first; uint32_t count; uint32_t seq; uint32_t bytes; uint32_t ack;
	uint16_t window; uint8_t data; uint8_t other; uint8_t acks;
};
int pc_tcp_runs(const struct pc_pkt *recs, unsigned n, struct pc_payload_ref *items,
		struct pc_tcp_run *runs, unsigned max_runs);
/* Host -> guest. A flow's header template: guest-facing addresses (IPv4 as ::ffff:a.b.c.d),
 * our seq (of the first byte to send), ack, window field, TTL/hop limit, MSS, timestamps. */
struct pc_tcp_flow {
	uint8_t eth_dst[6]; uint8_t eth_src[6];
	uint8_t src[16]; uint8_t dst[16];
	uint8_t ipver; uint8_t ttl; uint8_t use_ts; uint8_t flags;
	uint16_t sport; uint16_t dport;
	uint32_t seq; uint32_t ack;
	uint16_t window; uint16_t mss;
	uint32_t ts_val; uint32_t ts_ecr;
};
enum {
	PC_TCP_RX_GSO = 1, PC_TCP_RX_CSUM_PARTIAL = 2, PC_TCP_RX_DATA_VALID = 4,
	PC_TCP_RX_NO_FLUSH = 8, PC_TCP_RX_QUEUED = 16,
	PC_TCP_STOP_WINDOW = 1, PC_TCP_STOP_NOBUFS = 2, PC_TCP_STOP_DRAINED = 3,
	PC_TCP_STOP_EOF = 4, PC_TCP_STOP_LIMIT = 5, PC_TCP_STOP_STOPPED = 6, PC_TCP_STOP_AGAIN = 7,
	PC_TCP_MAX_IOV = 1024, PC_TCP_MAX_CHAINS = 1024, PC_TCP_MAX_SLICES = 2048,
	PC_TCP_GSO_MAX = 65535
};
/* What one pc_tcp_rx() call did: payload bytes and segments delivered, RX chains used, bad
 * chains returned, notification due, and why it stopped (PC_TCP_STOP_*). */
struct pc_tcp_rx_result {
	uint32_t bytes; uint32_t segs; uint32_t bufs; uint32_t bad; uint32_t notified;
	uint32_t stop;
};
struct pc_tcp_scratch;
size_t pc_tcp_scratch_size(void);
int pc_tcp_rx(struct pc_vq *vq, struct pc_tcp_scratch *s, int fd, const struct pc_tcp_flow *f,
	      size_t hdr_len, int mergeable, uint32_t max_bytes, unsigned opts,
	      struct pc_tcp_rx_result *res);
int pc_tcp_ctl(struct pc_vq *vq, const struct pc_tcp_flow *f, uint8_t flags,
	       const uint8_t *tcp_opts, size_t opt_len, size_t hdr_len, int mergeable,
	       unsigned opts, struct pc_rx_result *res);
int pc_tcp_build(const struct pc_tcp_flow *f, uint8_t flags, const uint8_t *tcp_opts,
		 size_t opt_len, const uint8_t *payload, size_t len, uint8_t *out, size_t out_len);

/* ---- udp_path.c: guest UDP datagrams to host sockets ---- */
/* SECTION udp_path */
/* One datagram: bytes [off, off + len) of frame `frame` of a TX batch, for socket `fd`
 * (connected). `err` comes back 0 when it was sent, or a negative errno. */
struct pc_dgram_ref { int32_t fd; uint32_t frame; uint32_t off; uint32_t len; int32_t err; };
/* Runs of a classified batch for the UDP fast path: positions [first, first + count) of an
 * index list (frames not taken yet) that are well-formed, unsegmented UDP datagrams with one
 * tuple (udp 1), or one frame that is anything else (udp 0). The caller sets fd per run: a
 * connected socket to send the run on, or -1 to leave it; failed comes back from the send. */
struct pc_udp_run { uint32_t first; uint32_t count; int32_t fd; uint16_t failed; uint8_t udp;
		    uint8_t pad; };
int pc_udp_runs(const struct pc_pkt *recs, unsigned nrecs, const uint32_t *idx, unsigned n,
		struct pc_udp_run *runs, unsigned max_runs);
/* Send every run with fd >= 0, one sendmmsg() per run of one socket: items has room for n entries, one per
 * index position, whose err the caller reads for runs with failures. Return: datagrams that
 * failed, or -EINVAL (nothing sent) for a bad index or payload range. */
int pc_send_udp_runs(const struct pc_tx_frame *frames, unsigned nframes,
		     const struct iovec *iov, unsigned max_iov, const struct pc_pkt *recs,
		     unsigned nrecs, const uint32_t *idx, unsigned n, struct pc_udp_run *runs,
		     unsigned nruns, struct pc_dgram_ref *items);
/* Host -> guest: the header template of one flow's datagrams (guest-facing addresses, IPv4
 * as ::ffff:a.b.c.d) and, on a socket several flows share, the host peer it takes datagrams
 * from (any_peer: every datagram of the socket). count goes up per datagram delivered. With no
 * template at all, every datagram is spilled (a -u listener before its first peer). */
struct pc_udp_flow {
	uint8_t eth_dst[6]; uint8_t eth_src[6];
	uint8_t src[16]; uint8_t dst[16]; uint8_t peer[16];
	uint16_t sport; uint16_t dport; uint16_t peer_port;
	uint8_t ipver; uint8_t ttl; uint8_t any_peer; uint8_t pad[3];
	uint32_t count;
};
enum {
	PC_UDP_RX_CSUM_PARTIAL = 1, PC_UDP_RX_DATA_VALID = 2, PC_UDP_RX_NO_FLUSH = 4,
	PC_UDP_STOP_DRAINED = 1, PC_UDP_STOP_NOBUFS = 2, PC_UDP_STOP_LIMIT = 3,
	PC_UDP_STOP_UNKNOWN = 4, PC_UDP_STOP_STOPPED = 5, PC_UDP_STOP_ERROR = 6
};
/* What one pc_udp_rx() call did: datagrams and payload bytes delivered, RX chains used, bad
 * chains returned, datagrams dropped (undeliverable), notification due, why it stopped, the
 * socket error (STOP_ERROR), and the datagram left in the spill buffer (STOP_UNKNOWN): its
 * length and its peer (family 4 or 6, address as ::ffff:a.b.c.d for IPv4, port). */
struct pc_udp_rx_result {
	uint32_t dgrams; uint32_t bytes; uint32_t bufs; uint32_t bad; uint32_t dropped;
	uint32_t notified; uint32_t stop; int32_t err;
	uint32_t spill_len; uint16_t spill_port; uint8_t spill_family; uint8_t pad;
	uint8_t spill_addr[16];
};
int pc_udp_rx(struct pc_vq *vq, int fd, struct pc_udp_flow *flows, unsigned nflows,
	      size_t hdr_len, int mergeable, unsigned max_dgrams, unsigned opts, uint8_t *spill,
	      size_t spill_len, struct pc_udp_rx_result *res);

/* ---- fast_api.c, fastpath.c: readiness events C handles inside the loop's wait ---- */
/* SECTION fastpath */
/* Established UDP flows registered by Python: a readable flow socket's datagrams go into the
 * RX ring, the TX kick's datagrams of registered tuples to their sockets; every other event
 * (and what C leaves) comes back as the epoll event it was, a socket error as EPOLLERR. */
struct pc_fast;
struct pc_fast_event { int32_t fd; uint32_t events; };
struct pc_fast_stats {
	uint64_t rx_dgrams; uint64_t tx_dgrams; uint64_t dropped; uint64_t handled;
	uint64_t reported; uint32_t rx_entries; uint32_t tx_entries; uint32_t muted;
	uint32_t tcp_entries;
};
struct pc_fast *pc_fast_new(unsigned max_entries);
void pc_fast_free(struct pc_fast *f);
void pc_fast_set_rx(struct pc_fast *f, struct pc_vq *rx, size_t hdr_len, int mergeable,
		    unsigned opts, unsigned batch);
void pc_fast_set_tx(struct pc_fast *f, struct pc_vq *tx, int kick_fd);
int pc_fast_add_rx(struct pc_fast *f, int fd, const struct pc_udp_flow *tmpl);
int pc_fast_add_tx(struct pc_fast *f, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		   uint16_t sport, uint16_t dport, int fd);
int64_t pc_fast_remove_rx(struct pc_fast *f, int fd);
int64_t pc_fast_remove_tx(struct pc_fast *f, unsigned ipver, const uint8_t *src,
			  const uint8_t *dst, uint16_t sport, uint16_t dport);
int64_t pc_fast_rx_count(struct pc_fast *f, int fd);
int64_t pc_fast_tx_count(struct pc_fast *f, unsigned ipver, const uint8_t *src,
			 const uint8_t *dst, uint16_t sport, uint16_t dport);
int pc_fast_clear(struct pc_fast *f, int epfd);
void pc_fast_stats(const struct pc_fast *f, struct pc_fast_stats *out);
int pc_fast_rx_ready(struct pc_fast *f, int epfd);
int pc_fast_poll(struct pc_fast *f, int epfd, int timeout_ms, struct pc_fast_event *out,
		 unsigned max_out);
/* fast_tcp.c: an established TCP connection C runs between Python's decisions, as handed
 * over (pc_fast_add_tcp()) and taken back (pc_fast_remove_tcp()). tmpl is its frames' header
 * template: tmpl.seq the next sequence number to the guest (SND.NXT), tmpl.ack the next one
 * expected from it (RCV.NXT). una: the guest's last ACK; acked_to_guest: our last ACK;
 * windows in bytes (wnd_from_guest scaled); last_wnd_raw: the window field last sent. Times
 * are seconds of CLOCK_MONOTONIC, 0 for none: deadline (retransmission), timer_at (when the
 * caller's timer fires), rto/rto0 (current, initial). rx_wait: waiting for RX buffers (the
 * guest's RX kick, pc_fast_rx_ready()). back: why C handed it back
 * (PC_FAST_BACK_*); to_host, to_guest, segs, events: what C moved since it was added. */
struct pc_fast_tcp {
	struct pc_tcp_flow tmpl;
	uint32_t una; uint32_t acked_to_guest; uint32_t wnd_from_guest; uint32_t wnd_to_guest;
	uint32_t retries; uint32_t back; int32_t fd; int32_t last_wnd_raw;
	uint8_t ws_from_guest; uint8_t ws_to_guest; uint8_t local; uint8_t rx_wait;
	double rto; double rto0; double deadline; double timer_at;
	uint64_t to_host; uint64_t to_guest; uint64_t segs; uint64_t events;
};
/* PC_FAST_EV_BACK: event bit of a connection handed back. Reasons: an ACK is due; host data
 * is due (or a zero window to probe, end of stream, no RX buffers); the socket refused data
 * (window closed until it drains); a send failed (reset); a timer must be armed. */
enum {
	PC_FAST_EV_BACK = 0x10000000,
	PC_FAST_BACK_ACK = 1, PC_FAST_BACK_H2G = 2, PC_FAST_BACK_FULL = 4, PC_FAST_BACK_ERR = 8,
	PC_FAST_BACK_TIMER = 16
};
void pc_fast_set_tcp(struct pc_fast *f, unsigned opts4, unsigned opts6, unsigned per_event,
		     unsigned max_window);
int pc_fast_add_tcp(struct pc_fast *f, const struct pc_fast_tcp *conn);
int pc_fast_remove_tcp(struct pc_fast *f, int fd, struct pc_fast_tcp *out);
int64_t pc_fast_tcp_events(struct pc_fast *f, int fd);
int64_t pc_tcp_sndbuf_limit(int64_t sndbuf);
int64_t pc_tcp_send_window(int fd, int local, uint32_t max_window);

/* ---- migration helpers ---- */
/* sock_filter.c: a loaded eBPF socket filter that drops every packet (fd, or -errno). Loaded
 * while the process may still call bpf(); any process holding the fd can then attach it with
 * SO_ATTACH_BPF, even on kernels that refuse classic filters without CAP_NET_ADMIN. */
int pc_drop_all_filter(void);

/* CDEF-END */

#endif /* PASST_CORE_H */
