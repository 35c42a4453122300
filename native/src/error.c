#include <stdarg.h>
#include <stdio.h>

#include "trit_internal.h"

#ifndef TRIT_VERSION
#define TRIT_VERSION "0.0.0"
#endif

static _Thread_local char last_error[512];

int trit_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *trit_last_error(void) { return last_error; }
const char *trit_version(void) { return TRIT_VERSION; }
int trit_api_version(void) { return TRIT_API_VERSION; }
