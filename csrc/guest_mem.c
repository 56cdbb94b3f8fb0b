// SPDX-License-Identifier: MIT
/* guest_mem.c - guest memory regions and the dirty-page log
 *
 * Theory of operation
 * -------------------
 * The vhost-user front-end hands over its guest RAM as file descriptors, one per region, each
 * with the region's guest-physical address (gpa), its size, the front-end's own virtual address
 * for it (uva, used in SET_VRING_ADDR) and the offset of the region in the file. We mmap() each
 * region MAP_SHARED: the file offset is rounded down to a page and the rounding is added back to
 * the pointer, so any offset works. A table of at most PC_MEM_MAX_REGIONS (the vhost-user
 * baseline) regions is searched linearly: it is tiny and the search is cheaper than a tree.
 *
 * Every translation checks that [addr, addr + len) does not wrap and lies inside one region;
 * pc_mem_gpa_span() returns the part inside the region so that callers (read/write, descriptor
 * walking) can split a buffer that runs over adjacent regions into several slices. Overlapping
 * regions (in gpa or uva space) are refused so that every address has one meaning.
 *
 * The dirty log (SET_LOG_BASE) is a bitmap shared with the front-end: bit (gpa >> 12) set means
 * the page changed; it is set with an atomic OR because the front-end clears words while we
 * set bits. Bits beyond the mapped log are ignored: the front-end sizes the log to cover RAM.
 *
 * Every change of the region table bumps a generation counter; virtq.c caches host pointers to
 * its rings and re-translates them when the generation moved, so a ring never dereferences a
 * region that was unmapped.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* before any system header (the build defines it too) */
#endif
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guest_mem.h"

/**
 * pc_mem_size() - bytes to allocate for a struct pc_mem
 * Return: sizeof(struct pc_mem)
 */
size_t pc_mem_size(void)
{
	return sizeof(struct pc_mem);
}

/**
 * pc_mem_init() - initialise an empty memory table without logging
 * @m:		memory table, pc_mem_size() bytes
 */
void pc_mem_init(struct pc_mem *m)
{
	memset(m, 0, sizeof(*m));
}

/**
 * map_fd() - mmap() @size bytes of @fd from @offset, rounding the offset down to a page
 * @fd:		file descriptor
 * @size:	bytes wanted
 * @offset:	file offset of the first byte wanted
 * @map:	set to the start of the mapping
 * @map_len:	set to the length of the mapping
 * Return: pointer to the byte at @offset, or NULL with errno set
 */
static uint8_t *map_fd(int fd, uint64_t size, uint64_t offset, void **map, size_t *map_len)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t lead = offset % page;
	void *p;

	if (size > SIZE_MAX - lead || offset > (uint64_t)INT64_MAX) {
		errno = EINVAL;
		return NULL;
	}
	p = mmap(NULL, size + lead, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
		 (off_t)(offset - lead));
	if (p == MAP_FAILED)
		return NULL;
	*map = p;
	*map_len = size + lead;
	return (uint8_t *)p + lead;
}

/**
 * ranges_overlap() - do [a, a + alen) and [b, b + blen) share a byte?
 * @a:		start of the first range
 * @alen:	its length, non-zero, a + alen does not wrap
 * @b:		start of the second range
 * @blen:	its length, non-zero, b + blen does not wrap
 * Return: non-zero if they overlap
 */
static int ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/**
 * pc_mem_add_region() - map one region of guest memory
 * @m:		memory table
 * @fd:		file descriptor of the region (the caller keeps ownership; may close it after)
 * @gpa:	guest-physical address of the region
 * @size:	its size in bytes, non-zero
 * @uva:	front-end virtual address of the region
 * @mmap_offset: offset of the region in @fd
 * Return: 0, -EINVAL on a bad size or wrap, -ENOSPC if the table is full, -EEXIST if it
 *	   overlaps a region already mapped (in gpa or uva), or -errno from mmap()
 */
int pc_mem_add_region(struct pc_mem *m, int fd, uint64_t gpa, uint64_t size, uint64_t uva,
		      uint64_t mmap_offset)
{
	struct pc_region *r;
	unsigned i;

	if (!size || size > UINT64_MAX - gpa || size > UINT64_MAX - uva ||
	    size > UINT64_MAX - mmap_offset)
		return -EINVAL;
	if (m->n >= PC_MEM_MAX_REGIONS)
		return -ENOSPC;
	for (i = 0; i < m->n; i++) {
		if (ranges_overlap(gpa, size, m->r[i].gpa, m->r[i].size) ||
		    ranges_overlap(uva, size, m->r[i].uva, m->r[i].size))
			return -EEXIST;
	}
	r = &m->r[m->n];
	r->hva = map_fd(fd, size, mmap_offset, &r->map, &r->map_len);
	if (!r->hva)
		return -errno;
	r->gpa = gpa;
	r->size = size;
	r->uva = uva;
	m->n++;
	m->gen++;
	return 0;
}

/**
 * pc_mem_remove_region() - unmap the region matching @gpa, @size and @uva exactly
 * @m:		memory table
 * @gpa:	guest-physical address of the region
 * @size:	its size
 * @uva:	its front-end virtual address
 * Return: 0, or -ENOENT if no region matches
 */
int pc_mem_remove_region(struct pc_mem *m, uint64_t gpa, uint64_t size, uint64_t uva)
{
	unsigned i;

	for (i = 0; i < m->n; i++) {
		struct pc_region *r = &m->r[i];

		if (r->gpa != gpa || r->size != size || r->uva != uva)
			continue;
		munmap(r->map, r->map_len);
		m->r[i] = m->r[--m->n];
		memset(&m->r[m->n], 0, sizeof(m->r[m->n]));
		m->gen++;
		return 0;
	}
	return -ENOENT;
}

/**
 * pc_mem_clear() - unmap every region and the log
 * @m:		memory table
 */
void pc_mem_clear(struct pc_mem *m)
{
	unsigned i;

	for (i = 0; i < m->n; i++)
		munmap(m->r[i].map, m->r[i].map_len);
	memset(m->r, 0, sizeof(m->r));
	m->n = 0;
	m->gen++;
	pc_mem_clear_log(m);
}

/**
 * pc_mem_nregions() - number of regions mapped
 * @m:		memory table
 * Return: the count, 0 to PC_MEM_MAX_REGIONS
 */
int pc_mem_nregions(const struct pc_mem *m)
{
	return (int)m->n;
}

/**
 * pc_mem_set_log() - map the dirty log shared by the front-end (SET_LOG_BASE)
 * @m:		memory table
 * @fd:		log file descriptor (the caller keeps ownership)
 * @size:	log size in bytes (mmap_size), non-zero
 * @offset:	offset of the log in @fd (mmap_offset)
 * Return: 0, -EINVAL on a zero size, or -errno from mmap(); the previous log stays on failure
 */
int pc_mem_set_log(struct pc_mem *m, int fd, uint64_t size, uint64_t offset)
{
	void *map;
	size_t map_len;
	uint8_t *log;

	if (!size || size > UINT64_MAX - offset)
		return -EINVAL;
	log = map_fd(fd, size, offset, &map, &map_len);
	if (!log)
		return -errno;
	pc_mem_clear_log(m);
	m->log = log;
	m->log_size = size;
	m->log_map = map;
	m->log_map_len = map_len;
	return 0;
}

/**
 * pc_mem_clear_log() - unmap the dirty log, if any; the logging request is kept
 * @m:		memory table
 */
void pc_mem_clear_log(struct pc_mem *m)
{
	if (m->log_map)
		munmap(m->log_map, m->log_map_len);
	m->log = NULL;
	m->log_size = 0;
	m->log_map = NULL;
	m->log_map_len = 0;
}

/**
 * pc_mem_set_logging() - request or stop dirty logging (VHOST_F_LOG_ALL negotiated or not)
 * @m:		memory table
 * @on:		non-zero to log; takes effect only while a log is mapped
 */
void pc_mem_set_logging(struct pc_mem *m, int on)
{
	m->log_on = !!on;
}

/**
 * pc_mem_logging() - is dirty logging in effect?
 * @m:		memory table
 * Return: 1 if requested and a log is mapped, else 0
 */
int pc_mem_logging(const struct pc_mem *m)
{
	return pc_mem_log_active(m) ? 1 : 0;
}

/**
 * pc_mem_gpa_span() - translate a guest-physical address, as far as its region goes
 * @m:		memory table
 * @gpa:	guest-physical address
 * @len:	bytes wanted from @gpa, non-zero
 * @span:	set to the bytes available contiguously from @gpa, at most @len
 * Return: our pointer to @gpa, or NULL if @gpa is in no region or @gpa + @len wraps
 */
uint8_t *pc_mem_gpa_span(const struct pc_mem *m, uint64_t gpa, uint64_t len, uint64_t *span)
{
	unsigned i;

	if (len > UINT64_MAX - gpa)
		return NULL;
	for (i = 0; i < m->n; i++) {
		const struct pc_region *r = &m->r[i];
		uint64_t off = gpa - r->gpa;

		if (gpa < r->gpa || off >= r->size)
			continue;
		*span = r->size - off < len ? r->size - off : len;
		return r->hva + off;
	}
	return NULL;
}

/**
 * pc_mem_gpa_range() - translate a guest-physical range that must lie in one region
 * @m:		memory table
 * @gpa:	guest-physical address
 * @len:	length, non-zero
 * Return: our pointer to @gpa, or NULL if the range is not wholly inside one region
 */
uint8_t *pc_mem_gpa_range(const struct pc_mem *m, uint64_t gpa, uint64_t len)
{
	uint64_t span;
	uint8_t *p = pc_mem_gpa_span(m, gpa, len, &span);

	return p && span == len ? p : NULL;
}

/**
 * pc_mem_uva_range() - translate a front-end virtual range that must lie in one region
 * @m:		memory table
 * @uva:	front-end virtual address
 * @len:	length, non-zero
 * Return: our pointer to @uva, or NULL if the range is not wholly inside one region
 */
uint8_t *pc_mem_uva_range(const struct pc_mem *m, uint64_t uva, uint64_t len)
{
	unsigned i;

	if (!len || len > UINT64_MAX - uva)
		return NULL;
	for (i = 0; i < m->n; i++) {
		const struct pc_region *r = &m->r[i];
		uint64_t off = uva - r->uva;

		if (uva >= r->uva && off < r->size && len <= r->size - off)
			return r->hva + off;
	}
	return NULL;
}

/**
 * pc_mem_uva_to_gpa() - guest-physical address of a front-end virtual address
 * @m:		memory table
 * @uva:	front-end virtual address
 * Return: the guest-physical address, or -EFAULT if @uva is in no region
 */
int64_t pc_mem_uva_to_gpa(const struct pc_mem *m, uint64_t uva)
{
	unsigned i;

	for (i = 0; i < m->n; i++) {
		const struct pc_region *r = &m->r[i];

		if (uva >= r->uva && uva - r->uva < r->size)
			return (int64_t)(r->gpa + (uva - r->uva));
	}
	return -EFAULT;
}

/**
 * pc_mem_log_range() - mark the pages of [gpa, gpa + len) dirty, if logging is in effect
 * @m:		memory table
 * @gpa:	guest-physical address of the first byte written
 * @len:	bytes written (0: nothing to log)
 *
 * Pages whose bit lies beyond the mapped log are skipped; a range that would wrap is
 * clamped at the top of the address space.
 */
void pc_mem_log_range(struct pc_mem *m, uint64_t gpa, uint64_t len)
{
	uint64_t first, last, page, nbits;

	if (!len || !pc_mem_log_active(m))
		return;
	if (len > UINT64_MAX - gpa)
		len = UINT64_MAX - gpa;
	nbits = m->log_size * 8;
	first = gpa >> PC_LOG_PAGE_SHIFT;
	last = (gpa + len - 1) >> PC_LOG_PAGE_SHIFT;
	if (last >= nbits)
		last = nbits - 1;
	for (page = first; page <= last && page < nbits; page++)
		__atomic_fetch_or(&m->log[page / 8], (uint8_t)(1u << (page % 8)),
				  __ATOMIC_RELAXED);
}

/**
 * pc_mem_read() - copy guest memory out, bounds-checked, across adjacent regions
 * @m:		memory table
 * @gpa:	guest-physical address
 * @buf:	destination, @len bytes
 * @len:	bytes to copy
 * Return: 0, or -EFAULT if any byte is outside guest memory (@buf may be partly written)
 */
int pc_mem_read(const struct pc_mem *m, uint64_t gpa, void *buf, size_t len)
{
	uint8_t *dst = buf;

	if (len > UINT64_MAX - gpa)
		return -EFAULT;
	while (len) {
		uint64_t span;
		const uint8_t *p = pc_mem_gpa_span(m, gpa, len, &span);

		if (!p)
			return -EFAULT;
		memcpy(dst, p, span);
		dst += span;
		gpa += span;
		len -= span;
	}
	return 0;
}

/**
 * pc_mem_write() - copy into guest memory, bounds-checked, logging the pages written
 * @m:		memory table
 * @gpa:	guest-physical address
 * @buf:	source, @len bytes
 * @len:	bytes to copy
 * Return: 0, or -EFAULT if any byte is outside guest memory (nothing is written then)
 */
int pc_mem_write(struct pc_mem *m, uint64_t gpa, const void *buf, size_t len)
{
	const uint8_t *src = buf;
	uint64_t at = gpa, left = len;

	if (len > UINT64_MAX - gpa)
		return -EFAULT;
	while (left) {		/* check first, so that a failed write writes nothing */
		uint64_t span;

		if (!pc_mem_gpa_span(m, at, left, &span))
			return -EFAULT;
		at += span;
		left -= span;
	}
	at = gpa;
	left = len;
	while (left) {
		uint64_t span = 0;
		uint8_t *p = pc_mem_gpa_span(m, at, left, &span);

		memcpy(p, src, span);
		src += span;
		at += span;
		left -= span;
	}
	pc_mem_log_range(m, gpa, len);
	return 0;
}
