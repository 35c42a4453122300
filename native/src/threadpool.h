/* A small persistent thread pool: the caller and n-1 workers run one function together, then meet again.
 * Workers spin briefly between jobs (a forward pass hands out hundreds per token), then sleep. */
#ifndef TRIT_THREADPOOL_H
#define TRIT_THREADPOOL_H

#include <stdatomic.h>

typedef void (*trit_task_fn)(void *arg, int ith, int nth);
typedef struct trit_pool trit_pool;

trit_pool *trit_pool_create(int n_threads); /* n_threads >= 1, including the caller */
void trit_pool_free(trit_pool *pool);
int trit_pool_size(const trit_pool *pool);
/* Runs fn(arg, i, n) for i = 0..n-1, i = 0 on the calling thread; returns when all are done. */
void trit_pool_run(trit_pool *pool, trit_task_fn fn, void *arg);
/* For a job whose threads claim its work as they go (trit_share) and that has no barrier, so that the caller's
 * fn(arg, 0, n) alone does whatever no worker took: returns when that call has and the workers that started have
 * finished; a worker that had not started by then skips the job. On a machine whose cores other programs share, a
 * worker descheduled for a few milliseconds then no longer holds up every job of a token (issue 20). */
void trit_pool_run_open(trit_pool *pool, trit_task_fn fn, void *arg);

/* Inside a job: returns once every thread of the pool has called it (all threads of a job must call it equally). */
void trit_pool_barrier(trit_pool *pool);

/* The half-open share [*begin, *end) of n items that thread ith of nth takes. */
static inline void trit_split(int n, int ith, int nth, int *begin, int *end) {
    int per = (n + nth - 1) / nth;
    int b = ith * per, e = b + per;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

/* Items [0, total) handed out in pieces while a job runs, so a thread that finishes early takes more instead of
 * waiting for a slower one at the end (decoding is bound by the memory bus, and the two threads rarely get equal
 * shares of it). Pieces start at about 1/(2n) of what is left and shrink to min_piece; they are whole multiples of
 * `grain` (a kernel's block) and none crosses a multiple of `segment`, except where a segment or the total ends.
 * Callers make sure a piece's result does not depend on which thread computes it. */
typedef struct {
    atomic_int next;
    int total, segment, min_piece, grain;
} trit_share;

void trit_share_init(trit_share *s, int total, int segment, int min_piece, int grain);
/* The next piece [*begin, *end) for one of nth threads; 0 once every item is taken. */
int trit_share_claim(trit_share *s, int nth, int *begin, int *end);

#endif
