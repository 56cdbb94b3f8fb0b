// SPDX-License-Identifier: MIT
/* fast_udp.h - interface of fast_udp.c, the steady state of registered UDP flows, for the
 * fast path's dispatcher (fastpath.c, fast_api.c); not part of the cdef.
 */
#ifndef PASST_FAST_UDP_H
#define PASST_FAST_UDP_H

#include <stdint.h>

#include "passt_core.h"
#include "fast_ctx.h"

struct fast_udp_part;

struct fast_udp_part *fast_udp_new(void);
void fast_udp_free(struct fast_udp_part *u);
void fast_udp_set_rx(struct fast_udp_part *u, unsigned opts, unsigned batch);
int fast_udp_add_rx(struct fast_ctx *c, int fd, const struct pc_udp_flow *tmpl);
int fast_udp_add_tx(struct fast_ctx *c, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		    uint16_t sport, uint16_t dport, int fd);
int64_t fast_udp_remove_rx(struct fast_udp_part *u, struct fast_ctx *c, int fd);
int64_t fast_udp_remove_tx(struct fast_udp_part *u, struct fast_ctx *c, unsigned ipver,
			   const uint8_t *src, const uint8_t *dst, uint16_t sport, uint16_t dport);
int64_t fast_udp_rx_count(const struct fast_ctx *c, int fd);
int64_t fast_udp_tx_count(const struct fast_ctx *c, unsigned ipver, const uint8_t *src,
			  const uint8_t *dst, uint16_t sport, uint16_t dport);
unsigned fast_udp_muted(const struct fast_udp_part *u);
int fast_udp_rx_ready(struct fast_udp_part *u, const struct fast_ctx *c, int epfd);
int fast_udp_sock(struct fast_udp_part *u, struct fast_ctx *c, int epfd, struct fast_entry *e,
		  int *placed);
int fast_udp_head(const struct fast_ctx *c, const struct pc_pkt *p);
unsigned fast_udp_prefix(struct fast_udp_part *u, struct fast_ctx *c, struct fast_round *r,
			 unsigned n);

#endif /* PASST_FAST_UDP_H */
