/* SPDX-License-Identifier: MIT */
/*
 * A program outside the project: built by install-test.sh against the
 * installed headers and library (found through pkg-config only), it checks
 * that the library loaded at run time is the one the header describes.
 */
#include <multifd/multifd.h>

#include <stdio.h>

int main(void)
{
	int version = mfd_version();
	const char *version_string = mfd_version_string();
	const char *error = mfd_strerror(-1);

	printf("header-version: %d\n", MFD_VERSION_NUMBER);
	printf("runtime-version: %d\n", version);
	printf("runtime-version-string: %s\n", version_string ? version_string : "(null)");
	printf("strerror(-1): %s\n", error ? error : "(null)");
	return version == MFD_VERSION_NUMBER && version_string && error ? 0 : 1;
}
