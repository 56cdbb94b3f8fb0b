// SPDX-License-Identifier: MIT
/* fastpath.h - struct pc_fast, the fast path's dispatcher object, shared by its two files:
 * fast_api.c (the public calls: life cycle, settings, registration) and fastpath.c (the
 * wait and its dispatch); not part of the cdef.
 *
 * The protocol units (fast_udp.c, fast_tcp.c) do not include this header: they are handed
 * @c and @round (fast_ctx.h) and keep their own state in @udp and @tcp.
 */
#ifndef PASST_FASTPATH_H
#define PASST_FASTPATH_H

#include "passt_core.h"
#include "fast_ctx.h"
#include "fast_udp.h"
#include "fast_tcp.h"

/**
 * struct pc_fast - fast-path state: what the units share, the TX ring, the units' parts
 * @c:		the context the protocol units are handed (RX ring, tables, counters)
 * @tx:		TX ring, or NULL (kicks go to Python)
 * @kick_fd:	the TX ring's kick eventfd, or -1
 * @tx_more:	the TX ring had more than FAST_TX_ROUNDS rounds: drain on in the next pass
 * @udp:	the UDP unit's state (fast_udp.c)
 * @tcp:	the TCP unit's state (fast_tcp.c)
 * @round:	TX round scratch: frames, slices, bad chains, records
 */
struct pc_fast {
	struct fast_ctx c;
	struct pc_vq *tx;
	int kick_fd;
	int tx_more;
	struct fast_udp_part *udp;
	struct fast_tcp_part *tcp;
	struct fast_round round;
};

#endif /* PASST_FASTPATH_H */
