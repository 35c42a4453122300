/* The kernels built into this library and the one in use: the best this CPU runs (cpu.c tells which it can), unless
 * TRIT_KERNEL names another.
 *
 * Registration completes every table, once: an entry a kernel's file leaves NULL (an operation it has no faster way to
 * do) is the scalar kernel's. This is the only place a kernel falls back to the scalar one as a whole entry; callers
 * never test an entry for NULL. The tables as the files wrote them are kept: they tell which entries are a kernel's
 * own. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "trit_internal.h"

/* Best first, as each kernel's file defines it. */
static const trit_kernel *const OWN[] = {
#ifdef TRIT_X86
    &trit_kernel_avx512,
#ifdef TRIT_HAVE_AVXVNNI
    &trit_kernel_avxvnni,
#endif
    &trit_kernel_avx2,
#endif
#if defined(__aarch64__)
    &trit_kernel_neon,
#endif
    &trit_kernel_scalar,
};
#define N_KERNELS ((int)(sizeof OWN / sizeof OWN[0]))

static trit_kernel tables[N_KERNELS]; /* OWN[i] with its NULL entries filled: what the library runs */
static pthread_once_t registered = PTHREAD_ONCE_INIT;
static _Atomic(const trit_kernel *) active;

/* The kernel whose own entries stand in for another's NULL ones before the scalar kernel's: every CPU with AVX-512
 * VNNI runs AVX2, so the avx512 kernel takes the avx2 kernel's entries it has no code of its own for (the KV cache's
 * f32 and q8 attention, which are written and tested here on AVX2 only). */
static const trit_kernel *understudy(const trit_kernel *own) {
#ifdef TRIT_X86
    if (own == &trit_kernel_avx512) return &trit_kernel_avx2;
#endif
    (void)own;
    return NULL;
}

/* Every entry but name and supported, which a kernel must give. */
static trit_kernel complete(const trit_kernel *own) {
    const trit_kernel *scalar = &trit_kernel_scalar, *lender = understudy(own);
    trit_kernel k = *own;
#define FILL(entry)                                                                                                    \
    if (!k.entry && lender) k.entry = lender->entry;                                                                   \
    if (!k.entry) k.entry = scalar->entry
    FILL(ternary_matmul);
    FILL(t5_matmul);
    FILL(bf16_matmul);
    FILL(q8_matmul);
    FILL(q4_matmul);
    FILL(quantize);
    FILL(attend);
    FILL(attend_tokens);
    FILL(attend_f32);
    FILL(attend_q8);
    FILL(scale_sums);
    FILL(relu2_sums);
    FILL(silu_sums);
    FILL(rmsnorm);
    FILL(to_f16);
    FILL(axpy_f16);
#undef FILL
    return k;
}

static void register_kernels(void) {
    for (int i = 0; i < N_KERNELS; i++) tables[i] = complete(OWN[i]);
}

int trit_kernel_count(void) { return N_KERNELS; }

const trit_kernel *trit_kernel_at(int index) {
    pthread_once(&registered, register_kernels);
    return index >= 0 && index < N_KERNELS ? &tables[index] : NULL;
}

/* The table as k's file wrote it; k is one of the registered tables. */
static const trit_kernel *own_table(const trit_kernel *k) { return OWN[k - tables]; }

int trit_kernel_has_t5(const trit_kernel *k) { return own_table(k)->t5_matmul != NULL; }

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
        const trit_kernel *k = trit_kernel_at(i);
        if (name && strcmp(k->name, name) == 0) {
            if (!k->supported()) return trit_fail(TRIT_E_UNSUPPORTED, "kernel %s is not supported by this CPU", name);
            atomic_store(&active, k);
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
        k = trit_kernel_at(i);
        if (k->supported()) {
            atomic_store(&active, k);
            return k;
        }
    }
    return trit_kernel_at(N_KERNELS - 1); /* the scalar kernel: always supported */
}

const char *trit_kernel_active(void) { return trit_active_kernel()->name; }

/* T5 where the kernel's own code decodes it fast, unless its table says TQ2 measured faster there (avx2 and avxvnni on
 * 2 cores, NEON on laptops: their files have the figures); the scalar kernel defines T5 but reads 2-bit codes more
 * cheaply. */
int trit_kernel_preferred_format(void) {
    const trit_kernel *k = trit_active_kernel();
    return trit_kernel_has_t5(k) && own_table(k) != &trit_kernel_scalar && !k->tq2_faster ? TRIT_TERNARY_T5
                                                                                          : TRIT_TERNARY_TQ2;
}
