// SPDX-License-Identifier: MIT
/* guest_mem.h - internal interface between guest_mem.c and virtq.c (not part of the cdef).
 *
 * struct pc_mem is opaque to Python; virtq.c needs its translation and logging helpers,
 * which are declared here so that the two files share one definition. The ring primitives
 * other units use are in virtq.h.
 */
#ifndef PASST_GUEST_MEM_H
#define PASST_GUEST_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "passt_core.h"

/**
 * struct pc_region - one mapped region of guest memory
 * @gpa:	guest-physical address of the first byte
 * @size:	length in bytes
 * @uva:	front-end (QEMU) virtual address of the first byte
 * @hva:	our address of the first byte (inside @map)
 * @map:	start of our mmap() (page-aligned, may precede @hva)
 * @map_len:	length of our mmap()
 */
struct pc_region {
	uint64_t gpa;
	uint64_t size;
	uint64_t uva;
	uint8_t *hva;
	void *map;
	size_t map_len;
};

/**
 * struct pc_mem - the guest's memory table and its dirty-page log
 * @r:		regions, @n of them in use, in no particular order
 * @n:		number of regions in use
 * @gen:	bumped on every change of the table, so that rings re-translate
 * @log:	dirty bitmap (one bit per 4 KiB guest page), NULL if none mapped
 * @log_size:	bytes in @log
 * @log_map:	our mmap() of the log
 * @log_map_len: its length
 * @log_on:	logging requested (LOG_ALL negotiated); effective only with @log
 */
struct pc_mem {
	struct pc_region r[PC_MEM_MAX_REGIONS];
	unsigned n;
	uint64_t gen;
	uint8_t *log;
	uint64_t log_size;
	void *log_map;
	size_t log_map_len;
	int log_on;
};

uint8_t *pc_mem_gpa_span(const struct pc_mem *m, uint64_t gpa, uint64_t len, uint64_t *span);
uint8_t *pc_mem_gpa_range(const struct pc_mem *m, uint64_t gpa, uint64_t len);
uint8_t *pc_mem_uva_range(const struct pc_mem *m, uint64_t uva, uint64_t len);
void pc_mem_log_range(struct pc_mem *m, uint64_t gpa, uint64_t len);

/**
 * pc_mem_log_active() - is dirty logging in effect?
 * @m:		guest memory
 * Return: non-zero if logging was requested and a log is mapped
 */
static inline int pc_mem_log_active(const struct pc_mem *m)
{
	return m->log_on && m->log;
}

#endif /* PASST_GUEST_MEM_H */
