/* The thread pool (src/threadpool.c) on its own: jobs of trit_pool_run and trit_pool_run_open mixed, many thousands
 * of them, with 2 to 4 threads. Every item of a job is done exactly once whoever takes it; a regular job runs on every
 * thread and its barrier holds them all; an open job ends once the caller's share is done, without a worker that had
 * not started it (on one CPU, as when other programs hold the cores, that is most of them), and that worker's late
 * wake-up never runs a job that has ended. Built from the source beside libtrit, as the pool is not exported. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sched.h>
#endif

#include "../src/threadpool.h"

#define ITEMS 512

typedef struct {
    trit_share share;
    atomic_int done[ITEMS];
    atomic_int ran[8];         /* threads that ran fn */
    atomic_int arrived, early; /* at the barrier; passed it before every thread arrived */
    trit_pool *pool;
} job;

static void claim_all(void *arg, int ith, int nth) {
    job *j = arg;
    atomic_fetch_add(&j->ran[ith], 1);
    int b, e;
    while (trit_share_claim(&j->share, nth, &b, &e))
        for (int i = b; i < e; i++) atomic_fetch_add(&j->done[i], 1);
}

static void claim_then_meet(void *arg, int ith, int nth) {
    job *j = arg;
    claim_all(arg, ith, nth);
    atomic_fetch_add(&j->arrived, 1);
    trit_pool_barrier(j->pool);
    if (atomic_load(&j->arrived) != nth) atomic_fetch_add(&j->early, 1);
}

static int failures;

static void check(int ok, const char *what, int round) {
    if (!ok && failures++ < 10) fprintf(stderr, "FAIL %s (job %d)\n", what, round);
}

static int run(int n_threads, int rounds) {
    trit_pool *pool = trit_pool_create(n_threads);
    if (!pool) return -1;
    int skipped = 0;
    job *j = malloc(sizeof *j);
    for (int r = 0; r < rounds; r++) {
        memset(j, 0, sizeof *j);
        j->pool = pool;
        int open = r % 3 != 0;
        trit_share_init(&j->share, ITEMS, 0, 1 + r % 7, 1 + r % 3);
        if (open)
            trit_pool_run_open(pool, claim_all, j);
        else
            trit_pool_run(pool, claim_then_meet, j);
        check(atomic_load(&j->early) == 0, "no thread passed the barrier before all arrived", r);
        for (int i = 0; i < ITEMS; i++) check(atomic_load(&j->done[i]) == 1, "an item done exactly once", r);
        check(atomic_load(&j->ran[0]) == 1, "the caller ran the job", r);
        for (int t = 1; t < n_threads; t++) {
            int ran = atomic_load(&j->ran[t]);
            check(ran == (open ? ran & 1 : 1), open ? "a worker ran an open job at most once" : "a worker ran a job",
                  r);
            skipped += open && !ran;
        }
        /* the job has ended: a worker must not touch it any more (the next round clears it while they could) */
    }
    free(j);
    trit_pool_free(pool);
    return skipped;
}

int main(void) {
    for (int n = 2; n <= 4; n++) {
        int skipped = run(n, 3000);
        if (skipped < 0) return fprintf(stderr, "FAIL pool of %d threads not created\n", n), 1;
        printf("%d threads: open jobs of 2000 that workers skipped, summed over the workers: %d\n", n, skipped);
    }
#ifdef __linux__
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    if (sched_setaffinity(0, sizeof one, &one) == 0) { /* the workers, created after this, inherit the one CPU */
        int skipped = run(2, 3000);
        printf("one CPU, 2 threads: open jobs of 2000 the worker skipped: %d\n", skipped);
        check(skipped > 0, "on one CPU an open job ends without the worker at least once", 0);
    }
#endif
    if (failures) return fprintf(stderr, "%d failures\n", failures), 1;
    puts("threadpool: ok");
    return 0;
}
