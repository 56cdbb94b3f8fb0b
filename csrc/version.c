// SPDX-License-Identifier: MIT
/* version.c - the API version compiled into the extension
 *
 * Theory of operation
 * -------------------
 * passt_core.h defines PC_API_VERSION, bumped whenever the C API changes. This file compiles
 * it into the extension; passt_py.core compares it with the version it was written for at
 * import, so that a stale build fails loudly instead of misbehaving.
 */
#include "passt_core.h"

/**
 * pc_api_version() - API version this extension was built from
 * Return: PC_API_VERSION
 */
int pc_api_version(void)
{
	return PC_API_VERSION;
}
