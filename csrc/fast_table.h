// SPDX-License-Identifier: MIT
/* fast_table.h - the fast path's flow-registration tables (fast_table.c); not part of the cdef.
 *
 * Two tables of one kind: RX, keyed by socket fd, and TX, keyed by the guest's tuple. An
 * entry carries its kind (FAST_KIND_UDP or FAST_KIND_TCP) and a union that belongs to the
 * protocol unit of that kind: fast_udp.c reads and writes @u.udp, fast_tcp.c @u.tcp. The
 * dispatcher (fastpath.c) only switches on the kind, as passt's epoll references do. The
 * table itself knows keys and slots, nothing of either protocol.
 */
#ifndef PASST_FAST_TABLE_H
#define PASST_FAST_TABLE_H

#include <stdint.h>

#include "passt_core.h"

enum {
	SLOT_FREE = 0, SLOT_USED = 1, SLOT_GONE = 2,
	KEY_LEN = 37,			/* IP version, source, destination, ports */
	KEY_TCP = 0x80			/* in the version byte: a TCP connection's tuple */
};

/* What a live entry is: which protocol unit owns its union. */
enum fast_kind { FAST_KIND_NONE = 0, FAST_KIND_UDP = 1, FAST_KIND_TCP = 2 };

struct fast_tcp;

/**
 * struct fast_udp_entry - the UDP unit's part of an entry (a flow socket or a guest tuple)
 * @count:	datagrams moved since the count was last taken
 * @muted:	RX: out of RX buffers, removed from the epoll set until pc_fast_rx_ready()
 * @tmpl:	RX: header template of the socket's datagrams (its count unused)
 */
struct fast_udp_entry {
	uint64_t count;
	uint8_t muted;
	struct pc_udp_flow tmpl;
};

/**
 * struct fast_entry - one registered flow side: a socket whose data C delivers (RX table,
 *		       keyed by fd) or a guest tuple whose data C sends (TX table)
 * @key:	RX: 0, then the fd; TX: IP version (KEY_TCP added for TCP), source and
 *		destination address (16 bytes each, IPv4 as ::ffff:a.b.c.d), ports
 * @state:	SLOT_*
 * @kind:	FAST_KIND_*: whose @u this is (NONE only between fast_table_get() and the
 *		owner's filling it in)
 * @fd:		the flow's socket (connected to its host peer)
 * @u:		the owner's part: @u.udp (FAST_KIND_UDP), or @u.tcp, the connection both of its
 *		entries point to (FAST_KIND_TCP)
 */
struct fast_entry {
	uint8_t key[KEY_LEN];
	uint8_t state;
	uint8_t kind;
	int32_t fd;
	union {
		struct fast_udp_entry udp;
		struct fast_tcp *tcp;
	} u;
};

/**
 * struct fast_table - open addressing, linear probing, tombstones; rebuilt (and resized)
 *		       when used and gone slots pass three quarters
 * @slot:	@cap slots, a power of two
 * @cap:	number of slots
 * @live:	used slots
 * @dead:	gone slots (tombstones)
 */
struct fast_table {
	struct fast_entry *slot;
	unsigned cap, live, dead;
};

int fast_table_init(struct fast_table *t);
void fast_table_release(struct fast_table *t);
struct fast_entry *fast_table_find(const struct fast_table *t, const uint8_t *key);
struct fast_entry *fast_table_get(struct fast_table *t, const uint8_t *key, unsigned max,
				  int *err);
void fast_table_drop(struct fast_table *t, struct fast_entry *e);
void fast_fd_key(uint8_t *key, int fd);
void fast_tuple_key(uint8_t *key, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		    uint16_t sport, uint16_t dport);
struct fast_entry *fast_table_fd(const struct fast_table *t, int fd);

#endif /* PASST_FAST_TABLE_H */
