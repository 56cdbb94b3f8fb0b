/* version.c - the API version compiled into the extension, checked by passt_py.core at import
 * so that a stale build fails loudly instead of misbehaving. */
#include "passt_core.h"

/**
 * pc_api_version() - API version this extension was built from
 * Return: PC_API_VERSION
 */
int pc_api_version(void)
{
	return PC_API_VERSION;
}
