// SPDX-License-Identifier: MIT
/* fast_tcp.h - interface of fast_tcp.c, the steady state of established TCP connections, for
 * the fast path's dispatcher (fastpath.c, fast_api.c); not part of the cdef.
 */
#ifndef PASST_FAST_TCP_H
#define PASST_FAST_TCP_H

#include <stdint.h>

#include "passt_core.h"
#include "fast_ctx.h"

struct fast_tcp_part;

struct fast_tcp_part *fast_tcp_new(void);
void fast_tcp_free(struct fast_tcp_part *p);
void fast_tcp_drop_all(struct fast_tcp_part *p, struct fast_ctx *c);
void fast_tcp_set(struct fast_tcp_part *p, unsigned opts4, unsigned opts6, unsigned per_event,
		  unsigned max_window);
int fast_tcp_add(struct fast_tcp_part *p, struct fast_ctx *c, const struct pc_fast_tcp *conn);
int fast_tcp_remove(struct fast_tcp_part *p, struct fast_ctx *c, int fd,
		    struct pc_fast_tcp *out);
int64_t fast_tcp_events(const struct fast_ctx *c, int fd);
unsigned fast_tcp_count(const struct fast_tcp_part *p);
int fast_tcp_sock(struct fast_tcp_part *p, struct fast_ctx *c, struct fast_entry *e,
		  uint32_t mask, int *placed);
int fast_tcp_head(const struct fast_tcp_part *p, const struct fast_ctx *c,
		  const struct pc_pkt *pkt);
unsigned fast_tcp_prefix(struct fast_tcp_part *p, struct fast_ctx *c, struct fast_round *r,
			 unsigned n);
void fast_tcp_round_end(struct fast_tcp_part *p, struct fast_ctx *c, int *placed);
int fast_tcp_pending(const struct fast_tcp_part *p);
int fast_tcp_more(struct fast_tcp_part *p, struct fast_ctx *c, int *placed);
unsigned fast_tcp_report(struct fast_tcp_part *p, struct pc_fast_event *out, unsigned room);
int fast_tcp_rx_ready(struct fast_tcp_part *p, struct fast_ctx *c);

#endif /* PASST_FAST_TCP_H */
