/* SPDX-License-Identifier: MIT */
/*
 * Errors: a code plus a message, handed out through mfd_error **errp.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

struct mfd_error {
	int code;
	char *msg;
};

static const char *const errcode_text[] = {
	[0] = "success",
	[-MFD_EINVAL] = "invalid argument",
	[-MFD_ENOMEM] = "out of memory",
	[-MFD_EIO] = "input/output error",
	[-MFD_EEOF] = "unexpected end of data",
	[-MFD_ECANCELED] = "operation cancelled",
	[-MFD_ETIMEDOUT] = "timed out",
	[-MFD_ENOTSUP] = "not supported",
	[-MFD_ESTATE] = "invalid in the current state",
	[-MFD_EEXIST] = "already registered",
	[-MFD_ENOENT] = "not registered",
	[-MFD_EHANDLER] = "device handler failed",
	[-MFD_ETOOBIG] = "length or count beyond its limit",
	[-MFD_EBADMAGIC] = "bad magic number",
	[-MFD_EBADVERSION] = "unsupported version",
	[-MFD_EBADRECORD] = "unknown or misplaced record type",
	[-MFD_EBADSECTION] = "unknown section",
	[-MFD_EBADFOOTER] = "section footer mismatch",
	[-MFD_EBADCMD] = "invalid command",
	[-MFD_EBADCONFIG] = "configuration mismatch",
	[-MFD_EPROTO] = "malformed peer data",
	[-MFD_EUNKNOWN] = "outcome unknown: the destination may be running the VM",
	[-MFD_ERUNNING] = "still running",
};

_Static_assert(MFD_ARRAY_SIZE(errcode_text) == 1 - MFD_ERRCODE_MIN,
	       "every error code has a text");

const char *mfd_strerror(int code)
{
	if (code > 0 || code < MFD_ERRCODE_MIN || !errcode_text[-code])
		return "unknown error";
	return errcode_text[-code];
}

int mfd_error_code(const mfd_error *err)
{
	return err ? err->code : 0;
}

const char *mfd_error_message(const mfd_error *err)
{
	return err && err->msg ? err->msg : "";
}

void mfd_error_free(mfd_error *err)
{
	if (!err)
		return;
	free(err->msg);
	free(err);
}

/* Storage for the case where even the error cannot be allocated. */
static char oom_message[] = "out of memory while reporting an error";

static mfd_error *error_alloc(int code, char *msg)
{
	mfd_error *err = malloc(sizeof(*err));

	if (!err) {
		free(msg);
		return NULL;
	}
	err->code = code < 0 ? code : MFD_EINVAL;
	err->msg = msg;
	return err;
}

int error_setv(mfd_error **errp, int code, const char *fmt, va_list ap)
{
	char *msg = NULL;

	if (!errp || *errp)
		return code;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	*errp = error_alloc(code, msg ? msg : strdup(oom_message));
	return code;
}

int mfd_error_set(mfd_error **errp, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	error_setv(errp, code, fmt, ap);
	va_end(ap);
	return code;
}

int error_set_errno(mfd_error **errp, int code, int errnum, const char *fmt, ...)
{
	char *head = NULL;
	va_list ap;

	if (!errp || *errp)
		return code;
	va_start(ap, fmt);
	if (vasprintf(&head, fmt, ap) < 0)
		head = NULL;
	va_end(ap);
	mfd_error_set(errp, code, "%s: %s", head ? head : "system error", strerror(errnum));
	free(head);
	return code;
}

int mfd_error_setv(mfd_error **errp, int code, const char *fmt, va_list ap)
{
	error_setv(errp, code, fmt, ap);
	return code;
}

int mfd_error_set_text(mfd_error **errp, int code, const char *msg)
{
	return mfd_error_set(errp, code, "%s", msg ? msg : "");
}

void mfd_error_prefixv(mfd_error *err, const char *fmt, va_list ap)
{
	char *head = NULL, *msg = NULL;

	if (!err)
		return;
	if (vasprintf(&head, fmt, ap) < 0)
		head = NULL;
	if (head && asprintf(&msg, "%s: %s", head, mfd_error_message(err)) >= 0) {
		free(err->msg);
		err->msg = msg;
	}
	free(head);
}

void mfd_error_prefix(mfd_error *err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mfd_error_prefixv(err, fmt, ap);
	va_end(ap);
}

void mfd_error_prefix_text(mfd_error *err, const char *prefix)
{
	mfd_error_prefix(err, "%s", prefix ? prefix : "");
}

void error_propagate(mfd_error **dst, mfd_error *src)
{
	if (!src)
		return;
	if (dst && !*dst)
		*dst = src;
	else
		mfd_error_free(src);
}

int error_normalize(mfd_error *err)
{
	if (!err)
		return MFD_EHANDLER;
	if (!error_code_is_failure(err->code))
		err->code = MFD_EHANDLER;
	return err->code;
}

mfd_error *error_copy(const mfd_error *err)
{
	if (!err)
		return NULL;
	return error_alloc(err->code, strdup(mfd_error_message(err)));
}

char *util_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}
