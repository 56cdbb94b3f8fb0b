/* udp_path.c - guest UDP datagrams to host sockets, straight from guest memory.
 *
 * Python finds the flow of each datagram (pc_classify() gives addresses, ports and the
 * payload range); this file sends them: one sendmmsg() per run of consecutive datagrams for
 * the same socket, each message an iovec array pointing into the TX batch's slices, which
 * pc_vq_pop_tx() already bounds-checked against guest memory. Nothing is copied in user
 * space. A datagram the kernel refuses gets its own error code and does not hold up the
 * others: UDP has no stream order to keep across datagrams.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "guest_mem.h"

/* Messages and iovec entries per sendmmsg() call. */
enum { UDP_MSGS = 64, UDP_IOV = 512 };

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
 * flush() - sendmmsg() a run of messages for one socket, recording each one's fate
 * @fd:		the socket
 * @msgs:	the messages
 * @n:		their number
 * @items:	the items they belong to, in the same order (err is set for each)
 */
static void flush(int fd, struct mmsghdr *msgs, unsigned n, struct pc_dgram_ref **items)
{
	unsigned done = 0;

	while (done < n) {
		int r = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			items[done++]->err = -errno;	/* this one failed: go on after it */
			continue;
		}
		while (r-- > 0)
			items[done++]->err = 0;
	}
}

/**
 * pc_send_datagrams() - send UDP payloads of TX frames to their sockets, from guest memory
 * @frames:	the batch's frames
 * @nframes:	number of frames
 * @iov:	the batch's slices
 * @max_iov:	entries in @iov
 * @items:	(fd, frame, offset, length) per datagram; err is filled in for each
 * @nitems:	number of datagrams
 *
 * Return: @nitems, or -EINVAL (nothing sent) if an item's range is outside its frame
 */
int pc_send_datagrams(const struct pc_tx_frame *frames, unsigned nframes,
		      const struct iovec *iov, unsigned max_iov, struct pc_dgram_ref *items,
		      unsigned nitems)
{
	struct mmsghdr msgs[UDP_MSGS];
	struct pc_dgram_ref *owner[UDP_MSGS];
	struct iovec out[UDP_IOV];
	unsigned i, nmsg = 0, nout = 0;
	int fd = -1;

	for (i = 0; i < nitems; i++) {
		if (!pc_tx_range_ok(frames, nframes, max_iov, items[i].frame, items[i].off,
				    items[i].len))
			return -EINVAL;
	}
	for (i = 0; i < nitems; i++) {
		const struct pc_tx_frame *f = &frames[items[i].frame];
		int used;

		if (nmsg && (items[i].fd != fd || nmsg == UDP_MSGS || UDP_IOV - nout < f->nslices)) {
			flush(fd, msgs, nmsg, owner);
			nmsg = nout = 0;
		}
		fd = items[i].fd;
		used = range_iov(iov + f->first, f->nslices, items[i].off, items[i].len, out + nout,
				 UDP_IOV - nout);
		if (used < 0) {			/* more slices than one call holds */
			items[i].err = -EMSGSIZE;
			continue;
		}
		memset(&msgs[nmsg], 0, sizeof(msgs[nmsg]));
		msgs[nmsg].msg_hdr.msg_iov = out + nout;
		msgs[nmsg].msg_hdr.msg_iovlen = (size_t)used;
		owner[nmsg++] = &items[i];
		nout += (unsigned)used;
	}
	if (nmsg)
		flush(fd, msgs, nmsg, owner);
	return (int)nitems;
}
