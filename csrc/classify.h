// SPDX-License-Identifier: MIT
/* classify.h - internal interface of classify.c for the data paths (not part of the cdef).
 *
 * pc_classify() itself, struct pc_pkt and the PC_PKT_* codes are public: passt_core.h,
 * section classify.
 */
#ifndef PASST_CLASSIFY_H
#define PASST_CLASSIFY_H

#include <stdint.h>

#include "passt_core.h"

int pc_tx_range_ok(const struct pc_tx_frame *frames, unsigned nframes, unsigned max_iov,
		   uint32_t frame, uint32_t off, uint32_t len);

#endif /* PASST_CLASSIFY_H */
