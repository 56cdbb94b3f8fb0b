// SPDX-License-Identifier: MIT
/* iov.c - move a whole iovec array through readv()/writev(), resumable after EAGAIN.
 *
 * Theory of operation
 * -------------------
 * A transfer is described by the caller's iovec array, which is never written, and a byte
 * offset into the concatenation of its segments. Each round builds, on the stack, a window of
 * at most IOV_BATCH entries starting at the current offset (the first one trimmed), issues one
 * readv() or writev(), and moves the offset on by what the kernel took. EINTR is retried; EAGAIN
 * (EWOULDBLOCK) ends the call with the offset reached, so an event loop can call again with that
 * offset once the fd is ready. End of file on read ends the call with PC_IOV_EOF. Nothing is
 * allocated, and the fd's blocking mode is left as the caller set it.
 *
 * Migration streams and pcap files go through here.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

#include "passt_core.h"

/* Entries per system call: well under IOV_MAX (1024), small enough for the stack. */
#define IOV_BATCH	64

/* Bytes per system call: keeps the total below SSIZE_MAX and the kernel's per-call limit. */
#define IOV_CALL_MAX	((size_t)1 << 30)

/**
 * iov_locate() - find the segment and in-segment offset of a byte offset
 * @iov:	segments
 * @iovcnt:	number of segments
 * @skip:	byte offset into the concatenation
 * @idx:	set to the segment index (@iovcnt if @skip is the total length)
 * @off:	set to the offset inside that segment
 *
 * Return: 0, or -EINVAL if @skip is beyond the total length
 */
static int iov_locate(const struct iovec *iov, int iovcnt, size_t skip, int *idx, size_t *off)
{
	int i;

	for (i = 0; i < iovcnt; i++) {
		if (skip < iov[i].iov_len)
			break;
		skip -= iov[i].iov_len;
	}
	if (i == iovcnt && skip)
		return -EINVAL;
	*idx = i;
	*off = skip;
	return 0;
}

/**
 * iov_window() - fill a stack window of segments starting at a position
 * @iov:	caller's segments
 * @iovcnt:	number of caller's segments
 * @idx:	index of the first segment to use
 * @off:	offset inside that segment
 * @win:	window to fill, IOV_BATCH entries
 *
 * Return: number of window entries filled (0 if nothing is left)
 */
static int iov_window(const struct iovec *iov, int iovcnt, int idx, size_t off,
		      struct iovec *win)
{
	size_t bytes = 0;
	int n = 0, j;

	for (j = idx; j < iovcnt && n < IOV_BATCH && bytes < IOV_CALL_MAX; j++) {
		size_t o = j == idx ? off : 0;
		size_t l = iov[j].iov_len - o;

		if (!l)
			continue;
		if (l > IOV_CALL_MAX - bytes)
			l = IOV_CALL_MAX - bytes;
		win[n].iov_base = (char *)iov[j].iov_base + o;
		win[n].iov_len = l;
		bytes += l;
		n++;
	}
	return n;
}

/**
 * iov_xfer_all() - common loop of pc_readv_all() and pc_writev_all()
 * @fd:		file descriptor
 * @iov:	segments, not modified
 * @iovcnt:	number of segments
 * @skip:	byte offset to start from
 * @done:	set to the byte offset reached (may be NULL)
 * @wr:		true to write, false to read
 *
 * Return: 0 when all bytes moved, PC_IOV_EOF on end of file while reading, -EAGAIN if the fd
 *	   would block, -EIO if writev() made no progress, other negative errno from the call
 */
static int iov_xfer_all(int fd, const struct iovec *iov, int iovcnt, size_t skip,
			size_t *done, bool wr)
{
	struct iovec win[IOV_BATCH];
	size_t pos = skip, off;
	int idx, n, ret;

	if (iovcnt < 0 || (iovcnt && !iov))
		return -EINVAL;
	ret = iov_locate(iov, iovcnt, skip, &idx, &off);
	if (ret < 0)
		return ret;

	for (;;) {
		ssize_t r;
		size_t left;

		n = iov_window(iov, iovcnt, idx, off, win);
		if (!n) {
			ret = 0;
			break;
		}
		r = wr ? writev(fd, win, n) : readv(fd, win, n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			ret = (errno == EWOULDBLOCK) ? -EAGAIN : -errno;
			break;
		}
		if (r == 0) {
			ret = wr ? -EIO : PC_IOV_EOF;
			break;
		}
		pos += (size_t)r;
		for (left = (size_t)r; left; ) {
			size_t room = iov[idx].iov_len - off;

			if (left < room) {
				off += left;
				left = 0;
			} else {
				left -= room;
				idx++;
				off = 0;
			}
		}
	}
	if (done)
		*done = pos;
	return ret;
}

/**
 * pc_writev_all() - write all of an iovec array from an offset, resumable
 * @fd:		file descriptor, blocking or not
 * @iov:	segments, not modified
 * @iovcnt:	number of segments, any (batched below IOV_MAX)
 * @skip:	byte offset into the concatenation to start from (0, or a previous *@done)
 * @done:	set to the byte offset reached, on success and on failure (may be NULL)
 *
 * Return: 0 when everything up to the total length is written, -EAGAIN if the fd would block
 *	   (call again with @skip = *@done), -EINVAL if @skip exceeds the total, -EIO if the fd
 *	   accepted nothing, other negative errno from writev()
 */
int pc_writev_all(int fd, const struct iovec *iov, int iovcnt, size_t skip, size_t *done)
{
	return iov_xfer_all(fd, iov, iovcnt, skip, done, true);
}

/**
 * pc_readv_all() - fill all of an iovec array from an offset, resumable
 * @fd:		file descriptor, blocking or not
 * @iov:	segments, not modified
 * @iovcnt:	number of segments, any (batched below IOV_MAX)
 * @skip:	byte offset into the concatenation to start from (0, or a previous *@done)
 * @done:	set to the byte offset reached, on success and on failure (may be NULL)
 *
 * Return: 0 when everything up to the total length is read, PC_IOV_EOF if end of file came
 *	   first (*@done tells how far), -EAGAIN if the fd would block (call again with
 *	   @skip = *@done), -EINVAL if @skip exceeds the total, other negative errno from readv()
 */
int pc_readv_all(int fd, const struct iovec *iov, int iovcnt, size_t skip, size_t *done)
{
	return iov_xfer_all(fd, iov, iovcnt, skip, done, false);
}
