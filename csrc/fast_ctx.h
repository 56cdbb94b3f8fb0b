// SPDX-License-Identifier: MIT
/* fast_ctx.h - what the fast path's dispatcher shares with its protocol units (not part of
 * the cdef).
 *
 * The dispatcher (fastpath.c, fast_api.c) owns struct pc_fast; the protocol units
 * (fast_udp.c, fast_tcp.c) never see it. They are handed a struct fast_ctx (the RX ring and
 * its settings, the two registration tables, the counters) and, within a TX round, the
 * struct fast_round the dispatcher popped and classified the frames into. Each unit keeps its
 * own state in its own part (struct fast_udp_part, struct fast_tcp_part), opaque to the
 * others.
 */
#ifndef PASST_FAST_CTX_H
#define PASST_FAST_CTX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "passt_core.h"
#include "fast_table.h"

enum {
	FAST_TX_FRAMES = 256,		/* frames per TX round: a whole ring of the usual size */
	FAST_TX_IOV = 2048
};

/* What an event handler did with its event. */
enum { DONE, REPORT, REPORT_ERR };

/**
 * struct fast_ctx - the fast path's shared state, as the protocol units see it
 * @rx:		RX ring, or NULL (data from the host goes to Python)
 * @hdr_len:	virtio-net header length
 * @mergeable:	VIRTIO_NET_F_MRG_RXBUF
 * @max:	entries each table may hold
 * @rxt:	flow sockets, by fd
 * @txt:	guest tuples
 * @stats:	counters (entries and muted sockets are filled in when copied out)
 */
struct fast_ctx {
	struct pc_vq *rx;
	size_t hdr_len;
	int mergeable;
	unsigned max;
	struct fast_table rxt, txt;
	struct pc_fast_stats stats;
};

/**
 * struct fast_round - one TX round: frames popped from the TX ring and classified
 * @frames:	the frames (head, slice range, length)
 * @iov:	their slices, in guest memory
 * @bad:	bad chains of the pop (a round with any goes to Python)
 * @recs:	one classification record per frame
 */
struct fast_round {
	struct pc_tx_frame frames[FAST_TX_FRAMES];
	struct iovec iov[FAST_TX_IOV];
	struct pc_bad_chain bad[FAST_TX_FRAMES];
	struct pc_pkt recs[FAST_TX_FRAMES];
};

#endif /* PASST_FAST_CTX_H */
