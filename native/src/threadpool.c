#define _POSIX_C_SOURCE 200809L
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* About 50-100 us of spinning: long enough to bridge the gaps between operations of one forward pass,
 * short enough that idle workers go to sleep between tokens. */
#define SPIN_ROUNDS 20000

struct trit_pool {
    int n;
    pthread_t *threads;
    atomic_uint generation; /* bumped once per job */
    atomic_int pending;     /* workers still running the current job */
    atomic_int stop;
    atomic_int arrived;      /* threads at the in-job barrier */
    atomic_uint barrier_gen; /* bumped when the last one arrives */
    /* The job's generation (high 32 bits), JOB_CLOSED, and the workers inside it (low bits): a worker enters only a
     * job still open under the generation it saw, so fn, arg and open stay as they are while any worker runs. */
    _Atomic uint64_t state;
    trit_task_fn fn;
    void *arg;
    int open; /* trit_pool_run_open: done when the caller's call returns and the workers inside have left */
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

typedef struct {
    trit_pool *pool;
    int ith;
} worker_arg;

#define JOB_CLOSED ((uint64_t)1 << 31)
#define JOB_INSIDE (JOB_CLOSED - 1)

/* Enters job `gen` unless it is closed or already past. */
static int enter_job(trit_pool *pool, unsigned gen) {
    uint64_t s = atomic_load(&pool->state);
    do {
        if ((unsigned)(s >> 32) != gen || (s & JOB_CLOSED)) return 0;
    } while (!atomic_compare_exchange_weak(&pool->state, &s, s + 1));
    return 1;
}

static void *worker_main(void *p) {
    worker_arg wa = *(worker_arg *)p;
    free(p);
    trit_pool *pool = wa.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ROUNDS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool->mutex);
            while (atomic_load_explicit(&pool->generation, memory_order_acquire) == seen)
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
        }
        seen = gen;
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        if (!enter_job(pool, gen)) continue; /* an open job the caller finished without this worker */
        int open = pool->open;
        pool->fn(pool->arg, wa.ith, pool->n);
        atomic_fetch_sub(&pool->state, 1); /* before pending: once that is 0 the caller may start the next job */
        if (!open) atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel);
    }
}

trit_pool *trit_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    trit_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n = n_threads;
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->arrived, 0);
    atomic_init(&pool->barrier_gen, 0);
    atomic_init(&pool->state, 0);
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) {
        free(pool);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa || (wa->pool = pool, wa->ith = i, pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0)) {
            free(wa);
            pool->n = i; /* keep the workers that started; free() stops them */
            trit_pool_free(pool);
            return NULL;
        }
    }
    return pool;
}

static void wake_workers(trit_pool *pool) {
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->state, (uint64_t)(atomic_load(&pool->generation) + 1) << 32);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
}

void trit_pool_free(trit_pool *pool) {
    if (!pool) return;
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    wake_workers(pool);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int trit_pool_size(const trit_pool *pool) { return pool->n; }

void trit_pool_barrier(trit_pool *pool) {
    if (pool->n == 1) return;
    unsigned gen = atomic_load_explicit(&pool->barrier_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->arrived, 1, memory_order_acq_rel) == pool->n - 1) {
        atomic_store_explicit(&pool->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->barrier_gen, 1, memory_order_acq_rel);
        return;
    }
    for (unsigned spins = 1; atomic_load_explicit(&pool->barrier_gen, memory_order_acquire) == gen; spins++) {
        if (spins % 1024 == 0)
            sched_yield();
        else
            cpu_relax();
    }
}

/* Yield now and then: when other programs hold the cores, a worker we wait for may need ours to finish. */
static void wait_a_little(unsigned spins) {
    if (spins % 1024 == 0)
        sched_yield();
    else
        cpu_relax();
}

static void run_job(trit_pool *pool, trit_task_fn fn, void *arg, int open) {
    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pool->open = open;
    atomic_store_explicit(&pool->pending, pool->n - 1, memory_order_release);
    wake_workers(pool);
    fn(arg, 0, pool->n);
    if (open) atomic_fetch_or(&pool->state, JOB_CLOSED); /* a worker not in yet never enters */
    for (unsigned spins = 1; open ? (atomic_load(&pool->state) & JOB_INSIDE) != 0
                                  : atomic_load_explicit(&pool->pending, memory_order_acquire) > 0;
         spins++)
        wait_a_little(spins);
}

void trit_pool_run(trit_pool *pool, trit_task_fn fn, void *arg) { run_job(pool, fn, arg, 0); }

void trit_pool_run_open(trit_pool *pool, trit_task_fn fn, void *arg) { run_job(pool, fn, arg, 1); }

void trit_share_init(trit_share *s, int total, int segment, int min_piece, int grain) {
    atomic_init(&s->next, 0);
    s->total = total;
    s->segment = segment > 0 ? segment : total;
    s->grain = grain > 0 ? grain : 1;
    s->min_piece = min_piece > s->grain ? min_piece : s->grain;
}

int trit_share_claim(trit_share *s, int nth, int *begin, int *end) {
    int b = atomic_load_explicit(&s->next, memory_order_relaxed), e;
    do {
        if (b >= s->total) return 0;
        int segment_end = (b / s->segment + 1) * s->segment;
        if (segment_end > s->total) segment_end = s->total;
        int piece = (segment_end - b) / (2 * nth), start = b - b / s->segment * s->segment;
        if (piece < s->min_piece) piece = s->min_piece;
        e = b + piece;
        e -= (e - (b - start)) % s->grain; /* end on a grain boundary of the segment */
        if (e <= b) e = b + s->grain;
        if (e > segment_end) e = segment_end;
    } while (!atomic_compare_exchange_weak_explicit(&s->next, &b, e, memory_order_relaxed, memory_order_relaxed));
    *begin = b;
    *end = e;
    return 1;
}
