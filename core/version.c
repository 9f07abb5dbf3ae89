/* SPDX-License-Identifier: MIT */
#include "core/util.h"

int mfd_version(void)
{
	return MFD_VERSION_NUMBER;
}

const char *mfd_version_string(void)
{
	return MFD_VERSION_STRING;
}
