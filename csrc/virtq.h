// SPDX-License-Identifier: MIT
/* virtq.h - internal interface of virtq.c for the other C units (not part of the cdef).
 *
 * struct pc_vq stays private to virtq.c. The data paths that fill RX buffers themselves
 * (tcp_path.c, udp_path.c) drive an RX call through these primitives: begin, pop chains,
 * write used elements, end (publication and notification); mark and seek give chains back.
 * The fast path's dispatcher (fastpath.c) uses mark and seek on the TX ring too, to look at
 * a frame and put it back. The public ring calls (pc_vq_pop_tx(), pc_vq_release(),
 * pc_vq_flush(), ...) are in passt_core.h; see each function's comment in virtq.c.
 */
#ifndef PASST_VIRTQ_H
#define PASST_VIRTQ_H

#include <stdint.h>

#include "passt_core.h"

struct iovec;

int pc_vq_rx_begin(struct pc_vq *vq, uint16_t *avail_idx);
int pc_vq_rx_pop(struct pc_vq *vq, uint16_t avail_idx, struct iovec *iov, uint64_t *gpa,
		 unsigned max, unsigned *n, uint64_t *total, uint32_t *head);
uint16_t pc_vq_rx_mark(const struct pc_vq *vq);
void pc_vq_rx_seek(struct pc_vq *vq, uint16_t mark);
void pc_vq_rx_put_used(struct pc_vq *vq, uint32_t head, uint32_t len);
int pc_vq_rx_end(struct pc_vq *vq, uint16_t start, int want_kick, int flush);
int pc_vq_rx_moved(struct pc_vq *vq, uint16_t seen);
void pc_vq_log_write(struct pc_vq *vq, uint64_t gpa, uint64_t len);

#endif /* PASST_VIRTQ_H */
