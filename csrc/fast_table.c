// SPDX-License-Identifier: MIT
/* fast_table.c - the fast path's flow-registration tables
 *
 * Theory of operation
 * -------------------
 * The fast path (fastpath.c, fast_udp.c, fast_tcp.c) caches Python's flow table in two
 * tables of this kind: RX entries keyed by socket fd (a zero byte, then the fd), TX entries
 * keyed by the guest's tuple (IP version with KEY_TCP for TCP, addresses, ports). Lookups
 * run on every fast event, so a table is open addressing with linear probing over a power of
 * two of slots, FNV-1a for the home slot. Removal leaves a tombstone; when used and gone
 * slots would pass three quarters, the table is rebuilt at four times its live entries,
 * which both drops the tombstones and grows it. The table never frees what an entry's
 * owner hung off it: the protocol units (the entry's kind) do that before dropping it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fast_table.h"

enum { TABLE_MIN = 64 };

/**
 * hash_key() - the home slot of a key (FNV-1a over its KEY_LEN bytes)
 * @k:		KEY_LEN bytes
 * @cap:	slots in the table, a power of two
 * Return: slot index below @cap
 */
static unsigned hash_key(const uint8_t *k, unsigned cap)
{
	uint32_t h = 2166136261u;	/* FNV-1a */
	unsigned i;

	for (i = 0; i < KEY_LEN; i++)
		h = (h ^ k[i]) * 16777619u;
	return h & (cap - 1);
}

/**
 * fast_table_init() - an empty table of TABLE_MIN slots
 * @t:		the table (its previous slots, if any, are not freed)
 * Return: 0, or -ENOMEM (then @t->slot is NULL)
 */
int fast_table_init(struct fast_table *t)
{
	t->slot = calloc(TABLE_MIN, sizeof(*t->slot));
	t->cap = TABLE_MIN;
	t->live = t->dead = 0;
	return t->slot ? 0 : -ENOMEM;
}

/**
 * fast_table_release() - free a table's slots (what entries point to is their owners')
 * @t:		the table, left empty with no slots
 */
void fast_table_release(struct fast_table *t)
{
	free(t->slot);
	t->slot = NULL;
	t->cap = t->live = t->dead = 0;
}

/**
 * fast_table_find() - look a key up
 * @t:		the table
 * @key:	KEY_LEN bytes
 * Return: its live entry, or NULL
 */
struct fast_entry *fast_table_find(const struct fast_table *t, const uint8_t *key)
{
	unsigned i, n;

	for (i = hash_key(key, t->cap), n = 0; n < t->cap; i = (i + 1) & (t->cap - 1), n++) {
		struct fast_entry *e = &t->slot[i];

		if (e->state == SLOT_FREE)
			return NULL;
		if (e->state == SLOT_USED && !memcmp(e->key, key, KEY_LEN))
			return e;
	}
	return NULL;
}

/**
 * table_rebuild() - reinsert the live entries into new slots: no tombstones left
 * @t:		the table
 *
 * The new size is the smallest power of two (at least TABLE_MIN) of four times the live
 * entries plus one, so that the entry about to be added fits.
 *
 * Return: 0, or -ENOMEM (the table is left as it was)
 */
static int table_rebuild(struct fast_table *t)
{
	unsigned cap = TABLE_MIN, k;
	struct fast_entry *slot;

	while (cap < 4 * ((size_t)t->live + 1) && cap < (1u << 30))
		cap <<= 1;
	slot = calloc(cap, sizeof(*slot));
	if (!slot)
		return -ENOMEM;
	for (k = 0; k < t->cap; k++) {
		unsigned i;

		if (t->slot[k].state != SLOT_USED)
			continue;
		for (i = hash_key(t->slot[k].key, cap); slot[i].state; i = (i + 1) & (cap - 1))
			;
		slot[i] = t->slot[k];
	}
	free(t->slot);
	t->slot = slot;
	t->cap = cap;
	t->dead = 0;
	return 0;
}

/**
 * fast_table_get() - the entry of a key, added if new
 * @t:		the table
 * @key:	KEY_LEN bytes
 * @max:	live entries the table may hold
 * @err:	set to -ENOSPC at @max entries, or -ENOMEM, when NULL is returned
 *
 * A new entry is zeroed but for its key and state (its kind is FAST_KIND_NONE: the caller
 * sets it); the table is rebuilt first when used and gone slots would pass three quarters.
 *
 * Return: the entry, or NULL
 */
struct fast_entry *fast_table_get(struct fast_table *t, const uint8_t *key, unsigned max,
				  int *err)
{
	struct fast_entry *e = fast_table_find(t, key);
	unsigned i;

	if (e)
		return e;
	if (t->live >= max) {
		*err = -ENOSPC;
		return NULL;
	}
	if (4 * (t->live + t->dead + 1) > 3 * t->cap && table_rebuild(t)) {
		*err = -ENOMEM;
		return NULL;
	}
	for (i = hash_key(key, t->cap); t->slot[i].state == SLOT_USED; i = (i + 1) & (t->cap - 1))
		;
	e = &t->slot[i];
	if (e->state == SLOT_GONE)
		t->dead--;
	t->live++;
	memset(e, 0, sizeof(*e));
	memcpy(e->key, key, KEY_LEN);
	e->state = SLOT_USED;
	return e;
}

/**
 * fast_table_drop() - turn a live entry into a tombstone
 * @t:		the table
 * @e:		its live entry (its fields stay readable until the slot is reused)
 */
void fast_table_drop(struct fast_table *t, struct fast_entry *e)
{
	e->state = SLOT_GONE;
	t->live--;
	t->dead++;
}

/**
 * fast_fd_key() - the RX table key of a socket: a zero byte, then the fd
 * @key:	KEY_LEN bytes
 * @fd:		the socket
 */
void fast_fd_key(uint8_t *key, int fd)
{
	memset(key, 0, KEY_LEN);
	memcpy(key + 1, &fd, sizeof(fd));
}

/**
 * fast_tuple_key() - the TX table key of a guest tuple
 * @key:	KEY_LEN bytes
 * @ipver:	4 or 6, plus KEY_TCP for a TCP connection
 * @src:	source address, 16 bytes (IPv4 as ::ffff:a.b.c.d)
 * @dst:	destination address, likewise
 * @sport:	source port
 * @dport:	destination port
 */
void fast_tuple_key(uint8_t *key, unsigned ipver, const uint8_t *src, const uint8_t *dst,
		    uint16_t sport, uint16_t dport)
{
	key[0] = (uint8_t)ipver;
	memcpy(key + 1, src, 16);
	memcpy(key + 17, dst, 16);
	key[33] = (uint8_t)(sport >> 8);
	key[34] = (uint8_t)sport;
	key[35] = (uint8_t)(dport >> 8);
	key[36] = (uint8_t)dport;
}

/**
 * fast_table_fd() - the RX table entry of a socket, of either kind
 * @t:		the RX table
 * @fd:		the socket
 * Return: the entry, or NULL
 */
struct fast_entry *fast_table_fd(const struct fast_table *t, int fd)
{
	uint8_t key[KEY_LEN];

	fast_fd_key(key, fd);
	return fast_table_find(t, key);
}
