/* The kernels built into this library and the one in use: the best this CPU runs (cpu.c tells which it can), unless
 * TRIT_KERNEL names another. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "trit_internal.h"

/* Best first. */
static const trit_kernel *const KERNELS[] = {
#ifdef TRIT_X86
    &trit_kernel_avx512,
    &trit_kernel_avx2,
#endif
#if defined(__aarch64__)
    &trit_kernel_neon,
#endif
    &trit_kernel_scalar,
};
#define N_KERNELS ((int)(sizeof KERNELS / sizeof KERNELS[0]))

static _Atomic(const trit_kernel *) active;

int trit_kernel_count(void) { return N_KERNELS; }

const trit_kernel *trit_kernel_at(int index) { return index >= 0 && index < N_KERNELS ? KERNELS[index] : NULL; }

const char *trit_kernel_name(int index) {
    const trit_kernel *k = trit_kernel_at(index);
    return k ? k->name : NULL;
}

int trit_kernel_supported(int index) {
    const trit_kernel *k = trit_kernel_at(index);
    return k ? k->supported() : 0;
}

int trit_kernel_select(const char *name) {
    for (int i = 0; i < N_KERNELS; i++) {
        if (name && strcmp(KERNELS[i]->name, name) == 0) {
            if (!KERNELS[i]->supported())
                return trit_fail(TRIT_E_UNSUPPORTED, "kernel %s is not supported by this CPU", name);
            atomic_store(&active, KERNELS[i]);
            return TRIT_OK;
        }
    }
    return trit_fail(TRIT_E_INVALID, "unknown kernel %s", name ? name : "(null)");
}

/* TRIT_KERNEL names a kernel to force (tests, and users whose CPU misreports); otherwise the best supported. */
const trit_kernel *trit_active_kernel(void) {
    const trit_kernel *k = atomic_load(&active);
    if (k) return k;
    const char *forced = getenv("TRIT_KERNEL");
    if (forced && *forced && trit_kernel_select(forced) == TRIT_OK) return atomic_load(&active);
    for (int i = 0; i < N_KERNELS; i++) {
        if (KERNELS[i]->supported()) {
            atomic_store(&active, KERNELS[i]);
            return KERNELS[i];
        }
    }
    return &trit_kernel_scalar;
}

const char *trit_kernel_active(void) { return trit_active_kernel()->name; }
