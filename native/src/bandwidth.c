/* How fast this machine reads memory: the bus limit that decoding, which reads every weight once per token, is
 * measured against. Every pool thread streams its share of a buffer larger than the caches. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trit_internal.h"

typedef struct {
    const uint64_t *words;
    size_t n_words;
    uint64_t sums[64]; /* one per thread, so the reads cannot be optimised away */
} read_job;

static void run_read(void *arg, int ith, int nth) {
    read_job *j = arg;
    size_t per = j->n_words / (size_t)nth, begin = per * (size_t)ith, end = begin + per;
    uint64_t s[8] = {0};
    for (size_t i = begin; i + 8 <= end; i += 8) { /* one cache line */
#if defined(__GNUC__)
        /* as the kernels do: a plain loop leaves the bus idle part of the time and measured ~25% less */
        __builtin_prefetch(j->words + i + TRIT_PREFETCH / sizeof(uint64_t));
#endif
        for (int k = 0; k < 8; k++) s[k] += j->words[i + k];
    }
    if (ith < 64) j->sums[ith] = s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

double trit_measure_read_bandwidth(trit_model *model, int64_t bytes, int repetitions) {
    if (!model || bytes < (1 << 20) || repetitions < 1) return trit_fail(TRIT_E_INVALID, "bandwidth: bad arguments");
    size_t n_words = (size_t)bytes / sizeof(uint64_t);
    uint64_t *words = malloc(n_words * sizeof(uint64_t));
    if (!words) return trit_fail(TRIT_E_NOMEM, "bandwidth: cannot allocate %lld bytes", (long long)bytes);
    memset(words, 1, n_words * sizeof(uint64_t)); /* fault every page in before timing */
    read_job job = {words, n_words, {0}};
    double best = 0.0;
    for (int r = 0; r < repetitions; r++) {
        double t = seconds();
        trit_model_run(model, run_read, &job);
        t = seconds() - t;
        double gbs = (double)(n_words * sizeof(uint64_t)) / t / 1e9;
        if (gbs > best) best = gbs;
    }
    free(words);
    return best;
}
