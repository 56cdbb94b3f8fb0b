// SPDX-License-Identifier: MIT
/* virtq.c - split virtqueues (virtio 1.x, section 2.7) on the device side
 *
 * Theory of operation
 * -------------------
 * A ring is three areas in guest memory: the descriptor table (16 bytes per entry), the avail
 * ring (flags, idx, num heads, used_event) written by the driver, and the used ring (flags,
 * idx, num {id, len} elements, avail_event) written by us. Their front-end virtual addresses
 * arrive with SET_VRING_ADDR; each area must lie inside one region and is translated to our
 * pointers once, and again whenever the memory table changes (generation counter).
 *
 * Everything the guest wrote is hostile. The avail idx is read once per batch with acquire
 * semantics; if it claims more than num new entries the ring is broken (-EIO, nothing is
 * consumed). Each chain is walked with a count bound (num for the table, the entry count for
 * an indirect table), so loops and over-long chains end as errors; every buffer is translated
 * with overflow and region checks (a buffer running over adjacent regions becomes several
 * slices, and a chain may not describe more than 4 GiB, the limit of a used length);
 * direction, `next` and indirect rules are checked per descriptor. A chain that fails
 * any check is classified (PC_VQ_ERR_*), consumed and returned with length 0: one bad chain
 * never stops the ring and never makes us touch memory outside the regions.
 *
 * TX: pc_vq_pop_tx() fills caller arrays with frames (head, slice range, length) and iovecs
 * pointing into guest memory past the virtio-net header; pc_vq_release() returns all heads at
 * once. RX: pc_vq_push_rx() places whole frames (with mergeable buffers over several chains,
 * num_buffers in the header) or none of a frame. Used elements are written first, the used idx
 * is published once with release semantics, the writes are dirty-logged when logging is on,
 * and after a full barrier the notification rules (VRING_AVAIL_F_NO_INTERRUPT, or used_event
 * with VIRTIO_RING_F_EVENT_IDX) decide whether to write the call eventfd, once per batch.
 *
 * A stopped ring (before start, after stop) touches no guest memory and never notifies.
 *
 * Capture (-p) is a hook of the ring, not of a path, so that turning it on changes nothing
 * about which path moves a frame. RX: every path (pc_vq_push_rx*, tcp_path.c, udp_path.c, the
 * fast path) ends by writing used elements and publishing them in vq_flush(); just before the
 * used idx is published, while the buffers are still ours, the elements since the last
 * publication are walked again: an element with a length starts a frame, whose chains are
 * the next num_buffers elements (from its virtio-net header, 1 without the field), each read
 * up to its used length through the same checked chain walk as ever. TX: pc_vq_pop_tx()
 * records each good frame the first time its avail position is popped (the fast path pops a
 * frame to look at it and puts it back; a position already recorded is not recorded again).
 * A record is the Ethernet frame, the virtio-net header left out; with NEEDS_CSUM (partial
 * checksum, both directions, GSO frames included) the frame is copied into the caller's
 * scratch and its checksum completed there; otherwise the record goes out straight from
 * guest memory, one writev() per frame. A failed write turns capture off for the ring and
 * is kept for the caller to report; it never fails the data path.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "guest_mem.h"
#include "virtq.h"

/* A push that ran out of buffers goes on this many times with ones added meanwhile */
#define VQ_RX_RETRIES 2

/* Capture: a pcap record header and the slices of one frame (an RX frame's walk has room
 * for as many slices as pc_vq_push_rx() places a frame in) */
#define CAP_IOV		(PC_VQ_RX_MAX_IOV + 1)
#define CAP_REC_LEN	16

enum {
	DESC_F_NEXT = 1,
	DESC_F_WRITE = 2,
	DESC_F_INDIRECT = 4,
	AVAIL_F_NO_INTERRUPT = 1,
	DESC_SIZE = 16,
};

/**
 * struct rx_chain - one chain collected for the RX frame being placed
 * @head:	head descriptor index
 * @first:	index of its first slice in pc_vq.rx_iov
 * @nslices:	number of slices
 */
struct rx_chain {
	uint32_t head;
	uint32_t first;
	uint32_t nslices;
};

/**
 * struct pc_vq - one split virtqueue
 * @mem:	guest memory the ring and its buffers live in
 * @num:	ring size, 0 until set
 * @desc_uva:	front-end virtual address of the descriptor table
 * @used_uva:	... of the used ring
 * @avail_uva:	... of the avail ring
 * @log_addr:	guest-physical address of the used ring, for dirty logging
 * @log_flags:	SET_VRING_ADDR flags (PC_VRING_F_LOG)
 * @addr_set:	addresses were given
 * @desc:	our pointer to the descriptor table, NULL if not translated
 * @avail:	our pointer to the avail ring
 * @used:	our pointer to the used ring
 * @gen:	memory generation the pointers belong to
 * @last_avail:	next avail index to process
 * @used_idx:	our shadow of the used idx
 * @used_pub:	the used idx last published to the guest (entries past it are pending)
 * @started:	the ring is running
 * @event_idx:	VIRTIO_RING_F_EVENT_IDX negotiated
 * @indirect:	VIRTIO_RING_F_INDIRECT_DESC negotiated
 * @call_fd:	eventfd to signal the guest, -1 for none
 * @rx_iov:	scratch slices of the RX frame being placed
 * @rx_gpa:	guest-physical address of each of @rx_iov, for logging
 * @rx_chain:	scratch chains of the RX frame being placed
 * @cap_fd:	capture file, -1 when capture is off
 * @cap_hdr_len: virtio-net header length of the RX frames, for capture
 * @cap_buf:	caller's scratch for frames whose checksum a capture completes
 * @cap_snap:	its size, the records' snaplen
 * @cap_tx_next: TX avail position from which popped frames are not recorded yet
 * @cap_err:	errno of the write that turned capture off, 0 if none
 * @cap_frames:	records written
 * @cap_bytes:	bytes written (record headers included)
 * @cap_iov:	a record header and the slices of the frame being written
 */
struct pc_vq {
	struct pc_mem *mem;
	unsigned num;
	uint64_t desc_uva;
	uint64_t used_uva;
	uint64_t avail_uva;
	uint64_t log_addr;
	unsigned log_flags;
	int addr_set;
	uint8_t *desc;
	uint8_t *avail;
	uint8_t *used;
	uint64_t gen;
	uint16_t last_avail;
	uint16_t used_idx;
	uint16_t used_pub;
	int started;
	int event_idx;
	int indirect;
	int call_fd;
	struct iovec rx_iov[PC_VQ_RX_MAX_IOV];
	uint64_t rx_gpa[PC_VQ_RX_MAX_IOV];
	struct rx_chain rx_chain[PC_VQ_RX_MAX_CHAINS];
	int cap_fd;
	unsigned cap_hdr_len;
	uint8_t *cap_buf;
	size_t cap_snap;
	uint16_t cap_tx_next;
	int cap_err;
	uint64_t cap_frames;
	uint64_t cap_bytes;
	struct iovec cap_iov[CAP_IOV];
};

/**
 * struct walk - output of a chain walk
 * @iov:	where slices go
 * @gpa:	where their guest-physical addresses go, or NULL
 * @max:	room in @iov (and @gpa)
 * @n:		slices written
 * @total:	bytes in the slices
 */
struct walk {
	struct iovec *iov;
	uint64_t *gpa;
	unsigned max;
	unsigned n;
	uint64_t total;
};

static int vq_flush(struct pc_vq *vq);
static void cap_rx(struct pc_vq *vq, uint16_t old, unsigned n);

/**
 * ld16() - load a little-endian 16-bit ring field written by the guest
 * @p:		aligned pointer into guest memory
 * Return: the value
 */
static inline uint16_t ld16(const uint8_t *p)
{
	return le16toh(__atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_RELAXED));
}

/**
 * ld16_acquire() - load a ring index with acquire semantics (later reads see its entries)
 * @p:		aligned pointer into guest memory
 * Return: the value
 */
static inline uint16_t ld16_acquire(const uint8_t *p)
{
	return le16toh(__atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_ACQUIRE));
}

/**
 * st16() - store a little-endian 16-bit ring field
 * @p:		aligned pointer into guest memory
 * @v:		value
 * @order:	memory order of the store
 */
static inline void st16(uint8_t *p, uint16_t v, int order)
{
	__atomic_store_n((uint16_t *)(void *)p, htole16(v), order);
}

/**
 * pc_vq_size() - bytes to allocate for a struct pc_vq
 * Return: sizeof(struct pc_vq)
 */
size_t pc_vq_size(void)
{
	return sizeof(struct pc_vq);
}

/**
 * pc_vq_init() - initialise a stopped, unconfigured ring
 * @vq:		ring, pc_vq_size() bytes
 * @mem:	guest memory, must outlive the ring
 */
void pc_vq_init(struct pc_vq *vq, struct pc_mem *mem)
{
	memset(vq, 0, sizeof(*vq));
	vq->mem = mem;
	vq->call_fd = -1;
	vq->cap_fd = -1;
}

/**
 * vq_translate() - translate the ring areas to our pointers for the current memory table
 * @vq:		ring with size and addresses set
 * Return: 0, -EINVAL if size or addresses are missing or misaligned, -EFAULT if an area is not
 *	   inside one region (the pointers are then cleared)
 */
static int vq_translate(struct pc_vq *vq)
{
	uint64_t num = vq->num;
	uint8_t *desc, *avail, *used;

	vq->desc = vq->avail = vq->used = NULL;
	if (!vq->num || !vq->addr_set)
		return -EINVAL;
	desc = pc_mem_uva_range(vq->mem, vq->desc_uva, DESC_SIZE * num);
	avail = pc_mem_uva_range(vq->mem, vq->avail_uva, 6 + 2 * num);
	used = pc_mem_uva_range(vq->mem, vq->used_uva, 6 + 8 * num);
	if (!desc || !avail || !used)
		return -EFAULT;
	if ((uintptr_t)desc % 16 || (uintptr_t)avail % 2 || (uintptr_t)used % 4)
		return -EINVAL;
	vq->desc = desc;
	vq->avail = avail;
	vq->used = used;
	vq->gen = vq->mem->gen;
	return 0;
}

/**
 * vq_ready() - make sure the ring pointers match the current memory table
 * @vq:		ring
 * Return: 0, or the error of vq_translate()
 */
static int vq_ready(struct pc_vq *vq)
{
	if (vq->desc && vq->gen == vq->mem->gen)
		return 0;
	return vq_translate(vq);
}

/**
 * pc_vq_set_num() - set the ring size (SET_VRING_NUM)
 * @vq:		stopped ring
 * @num:	size, a power of two from 1 to PC_VQ_MAX_SIZE
 * Return: 0, -EINVAL for a bad size, -EBUSY if the ring is running
 */
int pc_vq_set_num(struct pc_vq *vq, unsigned num)
{
	if (vq->started)
		return -EBUSY;
	if (!num || num > PC_VQ_MAX_SIZE || (num & (num - 1)))
		return -EINVAL;
	vq->num = num;
	vq->desc = NULL;
	return 0;
}

/**
 * pc_vq_set_addr() - set the ring addresses (SET_VRING_ADDR); allowed while running
 * @vq:		ring with its size set
 * @desc_uva:	front-end virtual address of the descriptor table
 * @used_uva:	... of the used ring
 * @avail_uva:	... of the avail ring
 * @log_guest_addr: guest-physical address of the used ring (for dirty logging)
 * @flags:	PC_VRING_F_LOG to log used ring writes
 * Return: 0; -EINVAL without a size or for misaligned areas, -EFAULT if an area is not inside
 *	   one region. On failure the previous addresses stay in force.
 */
int pc_vq_set_addr(struct pc_vq *vq, uint64_t desc_uva, uint64_t used_uva, uint64_t avail_uva,
		   uint64_t log_guest_addr, unsigned flags)
{
	uint64_t o_desc = vq->desc_uva, o_used = vq->used_uva, o_avail = vq->avail_uva;
	uint8_t *o_desc_p = vq->desc, *o_avail_p = vq->avail, *o_used_p = vq->used;
	uint64_t o_gen = vq->gen;
	int o_set = vq->addr_set, ret;

	if (!vq->num)
		return -EINVAL;
	vq->desc_uva = desc_uva;
	vq->used_uva = used_uva;
	vq->avail_uva = avail_uva;
	vq->addr_set = 1;
	ret = vq_translate(vq);
	if (ret) {
		vq->desc_uva = o_desc;
		vq->used_uva = o_used;
		vq->avail_uva = o_avail;
		vq->addr_set = o_set;
		vq->desc = o_desc_p;
		vq->avail = o_avail_p;
		vq->used = o_used_p;
		vq->gen = o_gen;
		return ret;
	}
	vq->log_addr = log_guest_addr;
	vq->log_flags = flags;
	return 0;
}

/**
 * pc_vq_set_base() - set the next avail index to process (SET_VRING_BASE)
 * @vq:		stopped ring
 * @idx:	index, 0 to 65535
 * Return: 0, -EINVAL if out of range, -EBUSY if running
 */
int pc_vq_set_base(struct pc_vq *vq, unsigned idx)
{
	if (vq->started)
		return -EBUSY;
	if (idx > UINT16_MAX)
		return -EINVAL;
	vq->last_avail = (uint16_t)idx;
	vq->cap_tx_next = vq->last_avail;
	return 0;
}

/**
 * pc_vq_set_call_fd() - set the eventfd written to notify the guest
 * @vq:		ring
 * @fd:		eventfd, or -1 for none (the caller keeps ownership)
 */
void pc_vq_set_call_fd(struct pc_vq *vq, int fd)
{
	vq->call_fd = fd < 0 ? -1 : fd;
}

/**
 * pc_vq_set_features() - apply negotiated ring features
 * @vq:		ring
 * @event_idx:	VIRTIO_RING_F_EVENT_IDX negotiated
 * @indirect:	VIRTIO_RING_F_INDIRECT_DESC negotiated
 */
void pc_vq_set_features(struct pc_vq *vq, int event_idx, int indirect)
{
	vq->event_idx = !!event_idx;
	vq->indirect = !!indirect;
}

/**
 * pc_vq_start() - start the ring; the used idx shadow is read from the used ring
 * @vq:		ring with size and addresses set
 * Return: 0, or -EINVAL / -EFAULT from translation
 */
int pc_vq_start(struct pc_vq *vq)
{
	int ret = vq_translate(vq);

	if (ret)
		return ret;
	vq->used_idx = ld16_acquire(vq->used + 2);
	vq->used_pub = vq->used_idx;
	vq->cap_tx_next = vq->last_avail;
	vq->started = 1;
	return 0;
}

/**
 * pc_vq_stop() - stop the ring (GET_VRING_BASE)
 * @vq:		ring
 *
 * Used elements still pending (written by deferred-flush RX calls, not yet published) are
 * published first, so that every chain counted in the returned index reached the guest;
 * otherwise no guest memory is touched.
 *
 * Return: the next avail index to process
 */
int pc_vq_stop(struct pc_vq *vq)
{
	if (vq->started && vq->used_idx != vq->used_pub && !vq_ready(vq))
		vq_flush(vq);
	vq->started = 0;
	return vq->last_avail;
}

/**
 * pc_vq_started() - is the ring running?
 * @vq:		ring
 * Return: 1 if started, else 0
 */
int pc_vq_started(const struct pc_vq *vq)
{
	return vq->started;
}

/**
 * vq_avail_idx() - read the driver's avail idx and check it against our position
 * @vq:		running, translated ring
 * @pending:	set to the number of new chains
 * Return: the avail idx, or -EIO if it is more than num ahead (broken ring)
 */
static int vq_avail_idx(const struct pc_vq *vq, unsigned *pending)
{
	uint16_t idx = ld16_acquire(vq->avail + 2);

	*pending = (uint16_t)(idx - vq->last_avail);
	if (*pending > vq->num)
		return -EIO;
	return idx;
}

/**
 * pc_vq_avail_pending() - how many chains the driver made available
 * @vq:		ring
 * Return: the count (0 when stopped), -EIO for a broken ring, or a translation error
 */
int pc_vq_avail_pending(struct pc_vq *vq)
{
	unsigned pending;
	int ret;

	if (!vq->started)
		return 0;
	ret = vq_ready(vq);
	if (ret)
		return ret;
	ret = vq_avail_idx(vq, &pending);
	return ret < 0 ? ret : (int)pending;
}

/**
 * walk_chain() - walk and check one descriptor chain, collecting its buffers as slices
 * @vq:		running, translated ring
 * @head:	head index from the avail ring
 * @write:	1 if every buffer must be device-writable (RX), 0 if device-readable (TX)
 * @w:		output slices; w->n and w->total are reset
 * Return: PC_VQ_OK or the PC_VQ_ERR_* kind of the first check that failed
 */
static unsigned walk_chain(const struct pc_vq *vq, unsigned head, int write, struct walk *w)
{
	const uint8_t *table = vq->desc;
	unsigned size = vq->num, idx = head, count = 0;
	int in_indirect = 0;

	w->n = 0;
	w->total = 0;
	if (head >= vq->num)
		return PC_VQ_ERR_HEAD;
	for (;;) {
		uint64_t addr, left;
		uint32_t len;
		uint16_t flags, next;
		uint8_t raw[DESC_SIZE];

		if (++count > size)
			return PC_VQ_ERR_LOOP;
		memcpy(raw, table + (size_t)DESC_SIZE * idx, DESC_SIZE);	/* read once */
		memcpy(&addr, raw, 8);
		memcpy(&len, raw + 8, 4);
		memcpy(&flags, raw + 12, 2);
		memcpy(&next, raw + 14, 2);
		addr = le64toh(addr);
		len = le32toh(len);
		flags = le16toh(flags);
		next = le16toh(next);

		if (flags & DESC_F_INDIRECT) {
			if (!vq->indirect || in_indirect || (flags & DESC_F_NEXT) || !len ||
			    len % DESC_SIZE || len / DESC_SIZE > PC_VQ_MAX_INDIRECT)
				return PC_VQ_ERR_INDIRECT;
			table = pc_mem_gpa_range(vq->mem, addr, len);
			if (!table)
				return PC_VQ_ERR_INDIRECT;
			size = len / DESC_SIZE;
			idx = 0;
			count = 0;
			in_indirect = 1;
			continue;
		}
		if (!!(flags & DESC_F_WRITE) != write)
			return PC_VQ_ERR_DIR;
		if (len > UINT64_MAX - addr)
			return PC_VQ_ERR_ADDR;
		for (left = len; left; ) {
			uint64_t span;
			uint8_t *p = pc_mem_gpa_span(vq->mem, addr, left, &span);

			if (!p)
				return PC_VQ_ERR_ADDR;
			if (w->n >= w->max)
				return PC_VQ_ERR_IOV;
			w->iov[w->n].iov_base = p;
			w->iov[w->n].iov_len = span;
			if (w->gpa)
				w->gpa[w->n] = addr;
			w->n++;
			w->total += span;
			if (w->total > UINT32_MAX)	/* lengths are 32-bit on the wire */
				return PC_VQ_ERR_ADDR;
			addr += span;
			left -= span;
		}
		if (!(flags & DESC_F_NEXT))
			return PC_VQ_OK;
		if (next >= size)
			return PC_VQ_ERR_NEXT;
		idx = next;
	}
}

/**
 * vq_put_used() - write one used element (not yet published)
 * @vq:		running, translated ring
 * @slot:	free-running used index of the element
 * @id:		head index
 * @len:	bytes written into the chain
 */
static void vq_put_used(struct pc_vq *vq, uint16_t slot, uint32_t id, uint32_t len)
{
	uint8_t *e = vq->used + 4 + 8 * (size_t)(slot % vq->num);
	uint32_t v[2] = { htole32(id), htole32(len) };

	memcpy(e, v, sizeof(v));
}

/**
 * vq_log_used() - dirty-log a byte range of the used ring, if the ring logs
 * @vq:		ring
 * @off:	offset in the used ring
 * @len:	bytes
 */
static void vq_log_used(struct pc_vq *vq, uint64_t off, uint64_t len)
{
	if (vq->log_flags & PC_VRING_F_LOG)
		pc_mem_log_range(vq->mem, vq->log_addr + off, len);
}

/**
 * vq_set_avail_event_to() - write the avail event (EVENT_IDX): kick when avail idx passes @idx
 * @vq:		running, translated ring
 * @idx:	the index
 */
static void vq_set_avail_event_to(struct pc_vq *vq, uint16_t idx)
{
	uint64_t off = 4 + 8 * (uint64_t)vq->num;

	if (!vq->event_idx)
		return;
	st16(vq->used + off, idx, __ATOMIC_RELAXED);
	vq_log_used(vq, off, 2);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/**
 * vq_set_avail_event() - tell the driver (EVENT_IDX) to kick when it passes our position
 * @vq:		running, translated ring
 */
static void vq_set_avail_event(struct pc_vq *vq)
{
	vq_set_avail_event_to(vq, vq->last_avail);
}

/**
 * vq_want_buffers() - ask for a kick on the next buffer the driver adds (EVENT_IDX)
 * @vq:		running, translated ring
 *
 * For a device that stopped because the chains left are not enough for its next frame: the
 * event goes to the driver's current avail idx, not to where we stopped, which the driver
 * is already past (it would never kick for buffers added after the ones we left).
 */
static void vq_want_buffers(struct pc_vq *vq)
{
	vq_set_avail_event_to(vq, ld16_acquire(vq->avail + 2));
}

/**
 * vq_flush() - publish used elements written since the last publication, log them, notify
 * @vq:		running, translated ring; vq->used_idx is the new used idx
 *
 * Elements written without a publication in between (pc_tcp_rx() with PC_TCP_RX_NO_FLUSH)
 * are published together here, so the guest sees one used idx update for the whole batch.
 *
 * Return: 1 if a notification was due (and sent when a call fd is set), else 0
 */
static int vq_flush(struct pc_vq *vq)
{
	uint16_t new = vq->used_idx, old = vq->used_pub;
	unsigned n = (uint16_t)(new - old), start = old % vq->num, first;

	if (!n)
		return 0;
	if (vq->cap_fd >= 0)		/* before the guest may take the buffers back */
		cap_rx(vq, old, n < vq->num ? n : vq->num);
	st16(vq->used + 2, new, __ATOMIC_RELEASE);
	vq->used_pub = new;

	if (pc_mem_log_active(vq->mem)) {
		if (n > vq->num)
			n = vq->num;
		first = vq->num - start < n ? vq->num - start : n;
		vq_log_used(vq, 4 + 8 * (uint64_t)start, 8 * (uint64_t)first);
		if (n > first)
			vq_log_used(vq, 4, 8 * (uint64_t)(n - first));
		vq_log_used(vq, 2, 2);
	}

	__atomic_thread_fence(__ATOMIC_SEQ_CST);	/* used idx visible before we read flags */
	if (vq->event_idx) {
		uint16_t event = ld16(vq->avail + 4 + 2 * (size_t)vq->num);

		if (!((uint16_t)(new - event - 1) < (uint16_t)(new - old)))
			return 0;
	} else if (ld16(vq->avail) & AVAIL_F_NO_INTERRUPT) {
		return 0;
	}
	if (vq->call_fd >= 0) {
		uint64_t one = 1;
		ssize_t ret = write(vq->call_fd, &one, sizeof(one));

		(void)ret;	/* EAGAIN only if the counter is saturated: already signalled */
	}
	return 1;
}

/**
 * copy_vnet_header() - keep the first bytes of a TX chain's virtio-net header (offload info)
 * @iov:	slices of the chain, holding at least @hdr_len bytes
 * @n:		number of slices
 * @hdr_len:	virtio-net header length
 * @out:	PC_VQ_TX_VNET bytes: the first min(@hdr_len, PC_VQ_TX_VNET) header bytes, the rest
 *		zeroed
 */
static void copy_vnet_header(const struct iovec *iov, unsigned n, size_t hdr_len, uint8_t *out)
{
	size_t want = hdr_len < PC_VQ_TX_VNET ? hdr_len : PC_VQ_TX_VNET, got = 0;
	unsigned k;

	memset(out, 0, PC_VQ_TX_VNET);
	for (k = 0; k < n && got < want; k++) {
		size_t take = iov[k].iov_len < want - got ? iov[k].iov_len : want - got;

		memcpy(out + got, iov[k].iov_base, take);
		got += take;
	}
}

/**
 * skip_header() - drop the first @hdr_len bytes from a run of slices
 * @iov:	slices, holding at least @hdr_len bytes
 * @n:		number of slices
 * @hdr_len:	bytes to drop
 * Return: index of the first slice left (slices before it are wholly header)
 */
static unsigned skip_header(struct iovec *iov, unsigned n, size_t hdr_len)
{
	unsigned k = 0;

	while (hdr_len && k < n) {
		if (iov[k].iov_len <= hdr_len) {
			hdr_len -= iov[k].iov_len;
			k++;
		} else {
			iov[k].iov_base = (uint8_t *)iov[k].iov_base + hdr_len;
			iov[k].iov_len -= hdr_len;
			hdr_len = 0;
		}
	}
	return k;
}

/* ---- capture (-p) ---- */

/**
 * pc_vq_set_capture() - record every frame of the ring into a pcap file, or stop
 * @vq:		ring
 * @fd:		file to append records to (the caller keeps it, and wrote the file header),
 *		or -1 to turn capture off
 * @hdr_len:	virtio-net header length of RX frames, at most PC_VQ_MAX_HDR
 * @scratch:	@snaplen bytes, used while a frame's checksum is completed; must stay valid
 *		while capture is on
 * @snaplen:	most bytes of a frame recorded, the snaplen of the file header
 *
 * TX frames already popped (a position the fast path put back) are not recorded when popped
 * again, also across calls that only change the settings. Turning capture on clears the
 * error a failed write left.
 *
 * Return: 0, or -EINVAL for a bad @hdr_len, no @scratch or a zero @snaplen
 */
int pc_vq_set_capture(struct pc_vq *vq, int fd, size_t hdr_len, uint8_t *scratch,
		      size_t snaplen)
{
	if (fd < 0) {
		vq->cap_fd = -1;
		vq->cap_buf = NULL;
		vq->cap_snap = 0;
		return 0;
	}
	if (hdr_len > PC_VQ_MAX_HDR || !scratch || !snaplen || snaplen > UINT32_MAX)
		return -EINVAL;
	if (vq->cap_fd < 0)
		vq->cap_tx_next = vq->last_avail;
	vq->cap_fd = fd;
	vq->cap_hdr_len = (unsigned)hdr_len;
	vq->cap_buf = scratch;
	vq->cap_snap = snaplen;
	vq->cap_err = 0;
	return 0;
}

/**
 * pc_vq_capture_stats() - what the ring's capture did, and whether it is still on
 * @vq:		ring
 * @out:	records and bytes written, errno of the write that turned it off (0 if none),
 *		and 1 while capture is on
 */
void pc_vq_capture_stats(const struct pc_vq *vq, struct pc_vq_capture *out)
{
	out->frames = vq->cap_frames;
	out->bytes = vq->cap_bytes;
	out->err = vq->cap_err;
	out->on = vq->cap_fd >= 0;
}

/**
 * cap_copy() - copy the first bytes of a run of slices into a buffer
 * @iov:	slices
 * @n:		number of slices
 * @dst:	destination
 * @len:	bytes to copy, at most the bytes in the slices
 */
static void cap_copy(const struct iovec *iov, unsigned n, uint8_t *dst, size_t len)
{
	size_t done = 0;
	unsigned k;

	for (k = 0; k < n && done < len; k++) {
		size_t take = iov[k].iov_len < len - done ? iov[k].iov_len : len - done;

		memcpy(dst + done, iov[k].iov_base, take);
		done += take;
	}
}

/**
 * cap_sum_from() - one's complement sum of a frame's bytes from an offset to its end
 * @iov:	the frame's slices
 * @n:		number of slices
 * @start:	offset of the first byte summed
 *
 * The sum runs from the slice holding @start (pc_csum_iov() keeps the byte lanes right over
 * slices of any length); the bytes of that slice before @start are taken out again, and the
 * lanes swapped when @start is odd in it.
 *
 * Return: partial sum in 0..0xffff, as pc_csum_partial() over the bytes would give
 */
static uint32_t cap_sum_from(const struct iovec *iov, unsigned n, size_t start)
{
	size_t off = 0, head;
	uint32_t sum, before;
	unsigned k;

	for (k = 0; k < n && off + iov[k].iov_len <= start; k++)
		off += iov[k].iov_len;
	if (k == n)
		return 0;
	head = start - off;
	sum = pc_csum_iov(iov + k, n - k, 0);
	before = pc_csum_partial(iov[k].iov_base, head, 0);
	sum += 0xffff - before;				/* one's complement subtraction */
	sum = (sum & 0xffff) + (sum >> 16);
	if (head & 1)
		sum = (sum >> 8 | sum << 8) & 0xffff;
	return sum;
}

/**
 * cap_record() - append one frame to the capture file as a pcap record
 * @vq:		ring with capture on
 * @ts:		the record's time (CLOCK_REALTIME)
 * @iov:	the Ethernet frame's slices (virtio-net header excluded); may be
 *		vq->cap_iov + 1 itself
 * @n:		number of slices
 * @len:	the frame's length (its original length: @iov may hold less, when a chain
 *		could not be walked whole)
 * @vnet:	the frame's virtio-net header, PC_VQ_TX_VNET bytes (zero-padded)
 *
 * With NEEDS_CSUM, the frame wholly in @iov and the field inside the recorded bytes, the
 * checksum at csum_start + csum_offset is completed (the sum from csum_start to the end of the
 * frame, the pseudo-header sum the field holds included) in a copy of the recorded bytes; a
 * frame of more slices than vq->cap_iov holds is copied too. Any other frame goes out from
 * where it is.
 */
static void cap_record(struct pc_vq *vq, const struct timespec *ts, const struct iovec *iov,
		       unsigned n, uint64_t len, const uint8_t *vnet)
{
	uint32_t rec[4];
	uint64_t have = 0;
	size_t cap, start = (size_t)vnet[6] | (size_t)vnet[7] << 8;
	size_t field = start + ((size_t)vnet[8] | (size_t)vnet[9] << 8);
	unsigned k, cnt;
	int fix, ret;

	for (k = 0; k < n; k++)
		have += iov[k].iov_len;
	if (have > len)
		have = len;
	cap = have < vq->cap_snap ? (size_t)have : vq->cap_snap;
	fix = (vnet[0] & PC_VNET_F_NEEDS_CSUM) && have == len && field + 2 <= cap;
	rec[0] = (uint32_t)ts->tv_sec;
	rec[1] = (uint32_t)(ts->tv_nsec / 1000);
	rec[2] = (uint32_t)cap;
	rec[3] = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;

	if (fix || n >= CAP_IOV) {
		cap_copy(iov, n, vq->cap_buf, cap);
		if (fix) {
			uint16_t sum = pc_csum_fold(cap == len ?
				pc_csum_partial(vq->cap_buf + start, cap - start, 0) :
				cap_sum_from(iov, n, start));

			vq->cap_buf[field] = (uint8_t)((sum ? sum : 0xffff) >> 8);
			vq->cap_buf[field + 1] = (uint8_t)(sum ? sum : 0xffff);
		}
		vq->cap_iov[1].iov_base = vq->cap_buf;
		vq->cap_iov[1].iov_len = cap;
		cnt = 2;
	} else {
		size_t left = cap;

		for (k = 0, cnt = 1; k < n && left; k++, cnt++) {
			vq->cap_iov[cnt].iov_base = iov[k].iov_base;
			vq->cap_iov[cnt].iov_len = iov[k].iov_len < left ? iov[k].iov_len : left;
			left -= vq->cap_iov[cnt].iov_len;
		}
	}
	vq->cap_iov[0].iov_base = rec;
	vq->cap_iov[0].iov_len = CAP_REC_LEN;
	ret = pc_writev_all(vq->cap_fd, vq->cap_iov, (int)cnt, 0, NULL);
	vq->cap_iov[0].iov_base = NULL;
	if (ret) {		/* a short record may be in the file: nothing more after it */
		vq->cap_err = ret < 0 ? -ret : EIO;
		vq->cap_fd = -1;
		return;
	}
	vq->cap_frames++;
	vq->cap_bytes += CAP_REC_LEN + cap;
}

/**
 * cap_clip() - cut the slices of one RX chain down to the bytes written into it
 * @iov:	slices of the chain
 * @n:		number of slices
 * @len:	the chain's used length
 * @got:	set to the bytes left in the slices
 * Return: number of slices left
 */
static unsigned cap_clip(struct iovec *iov, unsigned n, uint64_t len, uint64_t *got)
{
	uint64_t done = 0;
	unsigned k;

	for (k = 0; k < n && done < len; k++) {
		if (iov[k].iov_len > len - done)
			iov[k].iov_len = (size_t)(len - done);
		done += iov[k].iov_len;
	}
	*got = done;
	return k;
}

/**
 * cap_used() - read one used element this ring wrote
 * @vq:		running, translated ring
 * @slot:	free-running used index
 * @id:		set to the head index
 * @len:	set to the used length
 */
static void cap_used(const struct pc_vq *vq, uint16_t slot, uint32_t *id, uint32_t *len)
{
	uint32_t v[2];

	memcpy(v, vq->used + 4 + 8 * (size_t)(slot % vq->num), sizeof(v));
	*id = le32toh(v[0]);
	*len = le32toh(v[1]);
}

/**
 * cap_rx() - record the RX frames of the used elements about to be published
 * @vq:		running, translated ring with capture on
 * @old:	first used index not published yet
 * @n:		number of elements from @old, at most the ring size
 *
 * An element of length 0 (a bad chain, a dropped frame, a TX chain) is no frame. Any other
 * starts one, which takes as many elements as its header's num_buffers says (1 without the
 * field; never past @n). Chains are walked again with every check of the first walk, so a
 * driver that rewrote its descriptors meanwhile gets a wrong record at worst, never a read
 * outside guest memory.
 */
static void cap_rx(struct pc_vq *vq, uint16_t old, unsigned n)
{
	unsigned i = 0, hdr_len = vq->cap_hdr_len;
	struct timespec ts;
	int have_ts = 0;

	while (i < n && vq->cap_fd >= 0) {
		uint8_t vnet[PC_VQ_TX_VNET];
		uint64_t got = 0, claimed = 0;
		unsigned niov = 0, chains = 0, nbuf = 0, k;
		uint32_t id, len;

		cap_used(vq, (uint16_t)(old + i++), &id, &len);
		if (!len)
			continue;
		for (;;) {
			struct walk w = { vq->cap_iov + 1 + niov, NULL, CAP_IOV - 1 - niov, 0, 0 };
			uint64_t part;

			walk_chain(vq, id, 1, &w);	/* slices up to a failure stay usable */
			niov += cap_clip(w.iov, w.n, len, &part);
			got += part;
			claimed += len;
			chains++;
			if (!nbuf && got >= hdr_len) {
				copy_vnet_header(vq->cap_iov + 1, niov, hdr_len, vnet);
				nbuf = hdr_len >= 12 ? ((unsigned)vnet[10] | (unsigned)vnet[11] << 8)
						     : 1;
				if (!nbuf)
					nbuf = 1;
			}
			if ((nbuf && chains >= nbuf) || i >= n)
				break;
			cap_used(vq, (uint16_t)(old + i++), &id, &len);
		}
		if (got < hdr_len || !nbuf)
			continue;		/* not even a whole header */
		if (!have_ts) {
			clock_gettime(CLOCK_REALTIME, &ts);
			have_ts = 1;
		}
		k = skip_header(vq->cap_iov + 1, niov, hdr_len);
		cap_record(vq, &ts, vq->cap_iov + 1 + k, niov - k, claimed - hdr_len, vnet);
	}
}

/**
 * pc_vq_pop_tx() - drain up to @max_frames available chains of a TX ring
 * @vq:		ring
 * @max_frames:	most chains to consume (good and bad together)
 * @hdr_len:	virtio-net header length to skip at the start of each chain
 * @frames:	good frames, room for @max_frames
 * @iov:	payload slices of the good frames, pointing into guest memory
 * @max_iov:	room in @iov; a chain that does not fit is left for the next call, unless
 *		@iov is still empty, in which case it is bad (PC_VQ_ERR_IOV)
 * @bad:	bad chains (head, kind), room for @max_frames
 * @nbad:	set to the number of bad chains
 *
 * The slices stay valid until the memory table changes. All consumed heads, good and bad,
 * must be given back with pc_vq_release().
 *
 * Return: number of good frames (0 if stopped), -EIO if the avail idx is broken, or a
 *	   translation error
 */
int pc_vq_pop_tx(struct pc_vq *vq, unsigned max_frames, size_t hdr_len,
		 struct pc_tx_frame *frames, struct iovec *iov, unsigned max_iov,
		 struct pc_bad_chain *bad, unsigned *nbad)
{
	unsigned pending, good = 0, nb = 0, used_iov = 0;
	struct timespec ts;
	int ret, have_ts = 0;

	*nbad = 0;
	if (!vq->started)
		return 0;
	ret = vq_ready(vq);
	if (ret)
		return ret;
	ret = vq_avail_idx(vq, &pending);
	if (ret < 0)
		return ret;

	while (pending && good + nb < max_frames) {
		unsigned head = ld16(vq->avail + 4 + 2 * (size_t)(vq->last_avail % vq->num));
		struct walk w = { iov + used_iov, NULL, max_iov - used_iov, 0, 0 };
		unsigned kind = walk_chain(vq, head, 0, &w);
		uint16_t pos = vq->last_avail;
		unsigned k;

		if (kind == PC_VQ_OK && w.total < hdr_len)
			kind = PC_VQ_ERR_SHORT;
		if (kind == PC_VQ_ERR_IOV && used_iov)
			break;		/* no room left in this batch: next call */
		vq->last_avail++;
		pending--;
		if (kind != PC_VQ_OK) {
			bad[nb].head = head;
			bad[nb].kind = kind;
			nb++;
			continue;
		}
		copy_vnet_header(w.iov, w.n, hdr_len, frames[good].vnet);
		k = skip_header(w.iov, w.n, hdr_len);
		frames[good].head = head;
		frames[good].first = used_iov + k;
		frames[good].nslices = w.n - k;
		frames[good].len = (uint32_t)(w.total - hdr_len);
		if (vq->cap_fd >= 0 && (int16_t)(uint16_t)(pos - vq->cap_tx_next) >= 0) {
			if (!have_ts) {
				clock_gettime(CLOCK_REALTIME, &ts);
				have_ts = 1;
			}
			cap_record(vq, &ts, iov + frames[good].first, frames[good].nslices,
				   frames[good].len, frames[good].vnet);
			vq->cap_tx_next = (uint16_t)(pos + 1);
		}
		good++;
		used_iov += w.n;
	}
	if (good + nb)
		vq_set_avail_event(vq);
	*nbad = nb;
	return (int)good;
}

/**
 * pc_vq_release() - return consumed TX heads to the used ring (length 0) and notify once
 * @vq:		ring; if stopped, nothing is written (the heads are dropped)
 * @frames:	good frames from pc_vq_pop_tx()
 * @nframes:	their number
 * @bad:	bad chains from pc_vq_pop_tx()
 * @nbad:	their number
 * Return: 1 if a notification was due, 0 if not, or a translation error
 */
int pc_vq_release(struct pc_vq *vq, const struct pc_tx_frame *frames, unsigned nframes,
		  const struct pc_bad_chain *bad, unsigned nbad)
{
	unsigned i;
	int ret;

	if (!vq->started || !(nframes + nbad))
		return 0;
	ret = vq_ready(vq);
	if (ret)
		return ret;
	for (i = 0; i < nframes; i++)
		vq_put_used(vq, vq->used_idx++, frames[i].head, 0);
	for (i = 0; i < nbad; i++)
		vq_put_used(vq, vq->used_idx++, bad[i].head, 0);
	return vq_flush(vq);
}

/**
 * struct src - cursor over the bytes of one RX frame: header, then payload
 * @hdr:	header bytes
 * @hdr_len:	header length
 * @data:	payload
 * @len:	payload length
 * @pos:	bytes consumed so far
 */
struct src {
	const uint8_t *hdr;
	size_t hdr_len;
	const uint8_t *data;
	size_t len;
	size_t pos;
};

/**
 * src_copy() - copy the next bytes of a frame into a slice of guest memory
 * @s:		cursor
 * @dst:	destination
 * @room:	bytes available at @dst
 * Return: bytes copied, at most @room
 */
static size_t src_copy(struct src *s, uint8_t *dst, size_t room)
{
	size_t done = 0;

	while (done < room && s->pos < s->hdr_len + s->len) {
		size_t n;

		if (s->pos < s->hdr_len) {
			n = s->hdr_len - s->pos;
			n = n < room - done ? n : room - done;
			memcpy(dst + done, s->hdr + s->pos, n);
		} else {
			n = s->hdr_len + s->len - s->pos;
			n = n < room - done ? n : room - done;
			memcpy(dst + done, s->data + (s->pos - s->hdr_len), n);
		}
		done += n;
		s->pos += n;
	}
	return done;
}

static int push_rx(struct pc_vq *vq, const uint8_t *data, const uint8_t *const *ptrs,
		   const uint32_t *lens, unsigned nframes, size_t hdr_len, int mergeable,
		   const uint8_t *vnet_hdr, struct pc_rx_result *res);

/**
 * pc_vq_push_rx() - place a batch of frames into an RX ring, whole frames only
 * @vq:		ring
 * @data:	the frames' bytes, back to back
 * @lens:	length of each frame
 * @nframes:	number of frames
 * @hdr_len:	virtio-net header length, at most PC_VQ_MAX_HDR; if 12 or more, bytes 10..11
 *		carry num_buffers (the number of chains the frame uses)
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF: a frame may use several chains; if not, a frame that
 *		does not fit its one chain is dropped and the chain returned with length 0
 * @vnet_hdr:	@hdr_len header bytes to write (num_buffers is overwritten), or NULL for zeros
 * @res:	set to the counts of frames placed and dropped, bad chains, and whether a
 *		notification was due
 *
 * Chains are popped in order; a bad chain is returned with length 0 and skipped. A frame that
 * needs more than PC_VQ_RX_MAX_CHAINS chains or PC_VQ_RX_MAX_IOV slices is dropped, its chains
 * returned with length 0. When the ring runs out of buffers in the middle of a frame, that
 * frame and its chains (bad ones included) are given back untouched and the call stops.
 * Every byte written is dirty-logged, and the used ring once per call.
 *
 * Return: frames consumed (placed + dropped), 0 if stopped, -EINVAL for a bad @hdr_len,
 *	   -EIO if the avail idx is broken, or a translation error
 */
int pc_vq_push_rx(struct pc_vq *vq, const uint8_t *data, const uint32_t *lens, unsigned nframes,
		  size_t hdr_len, int mergeable, const uint8_t *vnet_hdr,
		  struct pc_rx_result *res)
{
	return push_rx(vq, data, NULL, lens, nframes, hdr_len, mergeable, vnet_hdr, res);
}

/**
 * pc_vq_push_rx_ptrs() - pc_vq_push_rx() for frames that are not back to back
 * @vq:		ring
 * @frames:	pointer to each frame's bytes
 * @lens:	length of each frame
 * @nframes:	number of frames
 * @hdr_len:	as for pc_vq_push_rx()
 * @mergeable:	as for pc_vq_push_rx()
 * @vnet_hdr:	as for pc_vq_push_rx()
 * @res:	as for pc_vq_push_rx()
 *
 * Large frames built separately reach the guest without first being joined into one buffer.
 * Return: as for pc_vq_push_rx()
 */
int pc_vq_push_rx_ptrs(struct pc_vq *vq, const uint8_t *const *frames, const uint32_t *lens,
		       unsigned nframes, size_t hdr_len, int mergeable, const uint8_t *vnet_hdr,
		       struct pc_rx_result *res)
{
	return push_rx(vq, NULL, frames, lens, nframes, hdr_len, mergeable, vnet_hdr, res);
}

/**
 * push_rx() - the body of pc_vq_push_rx() and pc_vq_push_rx_ptrs()
 * @vq:		ring
 * @data:	frames back to back, or NULL if @ptrs is given
 * @ptrs:	pointer to each frame, or NULL
 * @lens:	length of each frame
 * @nframes:	number of frames
 * @hdr_len:	virtio-net header length
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF
 * @vnet_hdr:	header bytes, or NULL
 * @res:	counts
 * Return: as for pc_vq_push_rx()
 */
static int push_rx(struct pc_vq *vq, const uint8_t *data, const uint8_t *const *ptrs,
		   const uint32_t *lens, unsigned nframes, size_t hdr_len, int mergeable,
		   const uint8_t *vnet_hdr, struct pc_rx_result *res)
{
	uint8_t hdr[PC_VQ_MAX_HDR];
	uint16_t start = vq->last_avail, avail_idx;
	unsigned pending, f, retries = 0;
	size_t off = 0;
	int ret;

	memset(res, 0, sizeof(*res));
	if (!vq->started)
		return 0;
	if (hdr_len > PC_VQ_MAX_HDR)
		return -EINVAL;
	ret = vq_ready(vq);
	if (ret)
		return ret;
	ret = vq_avail_idx(vq, &pending);
	if (ret < 0)
		return ret;
	avail_idx = (uint16_t)ret;

	f = 0;
again:
	for (; f < nframes; off += lens[f], f++) {
		uint64_t need = hdr_len + (uint64_t)lens[f], got = 0;
		uint16_t f_last = vq->last_avail, f_used = vq->used_idx;
		unsigned nch = 0, niov = 0, nbad = 0, c, k;
		int too_big = 0;
		struct src s;

		while (!nch || got < need) {
			unsigned head, kind;
			struct walk w;

			if (nch == PC_VQ_RX_MAX_CHAINS) {
				too_big = 1;
				break;
			}
			if (vq->last_avail == avail_idx) {	/* out of buffers: undo frame */
				vq->last_avail = f_last;
				vq->used_idx = f_used;
				res->bad -= nbad;
				goto done;
			}
			head = ld16(vq->avail + 4 + 2 * (size_t)(vq->last_avail % vq->num));
			vq->last_avail++;
			w.iov = vq->rx_iov + niov;
			w.gpa = vq->rx_gpa + niov;
			w.max = PC_VQ_RX_MAX_IOV - niov;
			kind = walk_chain(vq, head, 1, &w);
			if (kind == PC_VQ_ERR_IOV && niov) {
				vq_put_used(vq, vq->used_idx++, head, 0);
				too_big = 1;
				break;
			}
			if (kind != PC_VQ_OK) {
				vq_put_used(vq, vq->used_idx++, head, 0);
				res->bad++;
				nbad++;
				continue;
			}
			vq->rx_chain[nch].head = head;
			vq->rx_chain[nch].first = niov;
			vq->rx_chain[nch].nslices = w.n;
			nch++;
			niov += w.n;
			got += w.total;
			if (!mergeable)
				break;
		}

		if (too_big || got < need) {
			for (c = 0; c < nch; c++)
				vq_put_used(vq, vq->used_idx++, vq->rx_chain[c].head, 0);
			res->dropped++;
			continue;
		}

		if (vnet_hdr)
			memcpy(hdr, vnet_hdr, hdr_len);
		else
			memset(hdr, 0, hdr_len);
		if (hdr_len >= 12) {
			hdr[10] = (uint8_t)(nch & 0xff);
			hdr[11] = (uint8_t)(nch >> 8);
		}
		s.hdr = hdr;
		s.hdr_len = hdr_len;
		s.data = ptrs ? ptrs[f] : data + off;
		s.len = lens[f];
		s.pos = 0;
		for (c = 0; c < nch; c++) {
			const struct rx_chain *ch = &vq->rx_chain[c];
			uint64_t written = 0;

			for (k = ch->first; k < ch->first + ch->nslices; k++) {
				size_t n = src_copy(&s, vq->rx_iov[k].iov_base,
						    vq->rx_iov[k].iov_len);

				pc_mem_log_range(vq->mem, vq->rx_gpa[k], n);
				written += n;
			}
			vq_put_used(vq, vq->used_idx++, ch->head, (uint32_t)written);
		}
		res->placed++;
	}
done:
	if (f < nframes) {		/* stopped for buffers: kick us when there are more */
		vq_want_buffers(vq);
		if (pc_vq_rx_moved(vq, avail_idx) && retries++ < VQ_RX_RETRIES) {
			ret = vq_avail_idx(vq, &pending);	/* they came meanwhile: go on */
			if (ret >= 0) {
				avail_idx = (uint16_t)ret;
				goto again;
			}
		}
	} else if (vq->last_avail != start)
		vq_set_avail_event(vq);
	res->notified = (uint32_t)vq_flush(vq);
	return (int)(res->placed + res->dropped);
}

/* ---- RX primitives for the TCP data path (tcp_path.c), declared in guest_mem.h ---- */

/**
 * pc_vq_rx_begin() - check that an RX ring can be used now and read the driver's avail idx
 * @vq:		ring
 * @avail_idx:	set to the avail idx (chains up to it may be popped)
 * Return: 1 if the ring is running and usable, 0 if stopped, -EIO for a broken avail idx,
 *	   or a translation error
 */
int pc_vq_rx_begin(struct pc_vq *vq, uint16_t *avail_idx)
{
	unsigned pending;
	int ret;

	if (!vq->started)
		return 0;
	ret = vq_ready(vq);
	if (ret)
		return ret;
	ret = vq_avail_idx(vq, &pending);
	if (ret < 0)
		return ret;
	*avail_idx = (uint16_t)ret;
	return 1;
}

/**
 * pc_vq_rx_pop() - pop the next available chain of an RX ring and walk it
 * @vq:		ring, after pc_vq_rx_begin() returned 1
 * @avail_idx:	the avail idx pc_vq_rx_begin() read
 * @iov:	where the chain's device-writable slices go
 * @gpa:	their guest-physical addresses
 * @max:	room in @iov and @gpa
 * @n:		set to the number of slices
 * @total:	set to the bytes in the slices
 * @head:	set to the head index
 *
 * A chain needing more than @max slices is left in the ring (PC_VQ_ERR_IOV is returned and
 * nothing is consumed); any other bad chain is consumed and its kind returned: the caller
 * gives it back with length 0 through pc_vq_rx_put_used().
 *
 * Return: PC_VQ_OK or a PC_VQ_ERR_* kind, or -ENOBUFS if no chain is available
 */
int pc_vq_rx_pop(struct pc_vq *vq, uint16_t avail_idx, struct iovec *iov, uint64_t *gpa,
		 unsigned max, unsigned *n, uint64_t *total, uint32_t *head)
{
	struct walk w = { iov, gpa, max, 0, 0 };
	unsigned h, kind;

	if (vq->last_avail == avail_idx)
		return -ENOBUFS;
	h = ld16(vq->avail + 4 + 2 * (size_t)(vq->last_avail % vq->num));
	kind = walk_chain(vq, h, 1, &w);
	*head = h;
	*n = w.n;
	*total = w.total;
	if (kind == PC_VQ_ERR_IOV)
		return (int)kind;
	vq->last_avail++;
	return (int)kind;
}

/**
 * pc_vq_rx_mark() - the avail position of the next chain pc_vq_rx_pop() would take
 * @vq:		ring
 * Return: the position (a free-running 16-bit index)
 */
uint16_t pc_vq_rx_mark(const struct pc_vq *vq)
{
	return vq->last_avail;
}

/**
 * pc_vq_rx_seek() - move the avail position: back, to give chains popped at or after @mark
 *		     back untouched, or one past the current one, to consume a chain
 *		     pc_vq_rx_pop() left (PC_VQ_ERR_IOV) as bad
 * @vq:		ring
 * @mark:	a position from pc_vq_rx_mark() of the current call (no used element written
 *		for the chains given back), or pc_vq_rx_mark() + 1
 */
void pc_vq_rx_seek(struct pc_vq *vq, uint16_t mark)
{
	vq->last_avail = mark;
}

/**
 * pc_vq_rx_put_used() - write one used element, unpublished until pc_vq_rx_end()/flush
 * @vq:		running, translated ring
 * @head:	head index of the chain
 * @len:	bytes written into it
 */
void pc_vq_rx_put_used(struct pc_vq *vq, uint32_t head, uint32_t len)
{
	vq_put_used(vq, vq->used_idx++, head, len);
}

/**
 * pc_vq_rx_end() - finish an RX call: avail event, then publication and notification
 * @vq:		running, translated ring
 * @start:	pc_vq_rx_mark() at the start of the call
 * @want_kick:	the call ran out of buffers: ask the driver (EVENT_IDX) to kick on new ones
 *		even if no chain was consumed
 * @flush:	publish and notify now; if 0, the used elements stay pending for pc_vq_flush()
 * Return: 1 if a notification was due, else 0
 */
int pc_vq_rx_end(struct pc_vq *vq, uint16_t start, int want_kick, int flush)
{
	if (want_kick)
		vq_want_buffers(vq);
	else if (vq->last_avail != start)
		vq_set_avail_event(vq);
	return flush ? vq_flush(vq) : 0;
}

/**
 * pc_vq_rx_moved() - after asking for a kick on new buffers: did some come meanwhile?
 * @vq:		running, translated ring
 * @seen:	the avail idx the call planned with (pc_vq_rx_begin())
 *
 * The driver may have added buffers after the call read its avail idx and before the avail
 * event asked for a kick: those bring none, so the caller must not wait for one.
 *
 * Return: 1 if the avail idx moved past @seen (call again rather than wait), else 0
 */
int pc_vq_rx_moved(struct pc_vq *vq, uint16_t seen)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return ld16_acquire(vq->avail + 2) != seen;
}

/**
 * pc_vq_flush() - publish pending used elements, log them and notify once if due
 * @vq:		ring; a stopped or untranslatable ring publishes nothing
 * Return: 1 if a notification was due, else 0
 */
int pc_vq_flush(struct pc_vq *vq)
{
	if (!vq->started || vq_ready(vq))
		return 0;
	return vq_flush(vq);
}

/**
 * pc_vq_log_write() - dirty-log bytes the device wrote into a buffer of this ring's memory
 * @vq:		ring
 * @gpa:	guest-physical address of the first byte written
 * @len:	bytes written
 */
void pc_vq_log_write(struct pc_vq *vq, uint64_t gpa, uint64_t len)
{
	pc_mem_log_range(vq->mem, gpa, len);
}
