/* passt_core.h - the whole C API of passt_py's core, as Python sees it.
 *
 * The text between CDEF-BEGIN and CDEF-END is fed to cffi's cdef() verbatim, so it may hold
 * only plain C declarations (no preprocessor lines). Every function returns a non-negative
 * count or value on success and a negative errno on failure, and touches only memory it was
 * handed: guest memory is reached through struct pc_mem, whose every access is bounds-checked.
 */
#ifndef PASST_CORE_H
#define PASST_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* CDEF-BEGIN */
/* Bumped whenever the C API changes; passt_py.core refuses an extension of another version. */
enum { PC_API_VERSION = 1 };
int pc_api_version(void);

/* ---- checksum.c: Internet checksum (RFC 1071) ---- */
/* SECTION checksum: owned by the checksum work; see checksum.c */

/* ---- iov.c: full-transfer readv/writev ---- */
/* SECTION iov: owned by the iov work; see iov.c */

/* ---- guest_mem.c / virtq.c: guest memory and split virtqueues ---- */
/* SECTION virtq: owned by the virtqueue work; see guest_mem.c, virtq.c */

/* CDEF-END */

#endif /* PASST_CORE_H */
