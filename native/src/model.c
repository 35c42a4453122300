/* The BitNet b1.58 forward pass over a batch of tokens against a KV cache.
 *
 * One decoder layer (transformers' BitNetDecoderLayer):
 *   h   = x + o( attn_sub_norm( attention( rope(q(n1)), rope(k(n1)), v(n1) ) ) )     n1 = input_norm(x)
 *   out = h + down( ffn_sub_norm( relu(gate(n2))^2 * up(n2) ) )                        n2 = post_attn_norm(h)
 * where every projection is a BitLinear: y = (quantize(x) . T) / s, times or divided by the weight scale.
 * The Llama block (TRIT_BLOCK_LLAMA: Falcon-E, Falcon3-1.58bit, Llama3-8B-1.58) is the same without the two sub-norms,
 * and with silu(gate(n2)) * up(n2) for relu(gate(n2))^2 * up(n2); 1bitLLM's (TRIT_BLOCK_1BITLLM) keeps the sub-norms
 * and gates with silu.
 * After the last layer: final_norm, then logits against the output head (the embedding when tied).
 *
 * Each step is one job for the thread pool; inside a job, threads take pieces of the rows as they go (matmuls, the
 * head: see trit_share) or a fixed share of tokens or heads.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <unistd.h>
#endif

#include "trit_internal.h"

struct trit_model {
    trit_config cfg;
    trit_weights w;
    trit_layer_weights *layers;
    trit_pool *pool;
    float *rope_cos, *rope_sin; /* [max_positions][head_dim/2] */
    pthread_mutex_t lock;       /* one forward pass at a time: contexts share the pool */
};

/* The candidates a compact head may misorder: the RESCORE highest logits of a token, recomputed from the exact bf16
 * rows. Each thread keeps the best of the rows it computed; merged, these are the best of the whole vocabulary
 * whatever the threads' shares, so the result does not depend on them. */
#define RESCORE 32

typedef struct {
    float value;
    int32_t index;
} candidate; /* a logit and its token */

/* Scratch each pool thread owns: it prepares the int8 input of a projection itself (norm and quantisation are
 * cheap next to the matmul, and a job less per projection means one barrier less). */
typedef struct {
    int8_t *xq;      /* [B][max(hidden, intermediate)] quantised activations */
    float *xs;       /* [B] their scales */
    int32_t *xsum;   /* [B] their sums */
    float *row;      /* [max(hidden, intermediate)] one token's normed input */
    float *scores;   /* TRIT_ATTEND_SCRATCH floats: attention scores and blocks of keys and values */
    candidate *best; /* [B][RESCORE] the best logits of the head rows this thread computed, per token */
    int *n_best;     /* [B] */
} thread_scratch;

struct trit_context {
    trit_model *m;
    int n_ctx, max_batch, n_past;
    int span;               /* positions each head's cache holds: n_ctx in whole key blocks */
    int kv_type;            /* TRIT_KV_*: the cache's elements */
    void *k_cache;          /* [n_layers][n_kv_heads][span][head_dim] of kv_type; keys in blocks (trit_key_index) */
    void *v_cache;          /* the same, position-major */
    float *k_scales;        /* TRIT_KV_Q8: [n_layers][n_kv_heads][span] */
    float *v_scales;        /* the same for the values */
    float *partial;         /* decoding split into chunks of keys: [n_kv_heads][max_chunks][group][head_dim] */
    float *partial_lse;     /* [n_kv_heads][max_chunks][group] */
    int max_chunks;         /* trit_attend_chunks(n_ctx) */
    trit_share split;       /* the (kv head, chunk) items of one layer, claimed as threads go */
    atomic_int *split_done; /* [n_kv_heads] chunks attended: the thread that attends a head's last one combines */
    /* scratch for one batch */
    float *x;     /* [B][hidden] residual stream; projections o and down add into it */
    float *xn;    /* [B][hidden] the final normed state */
    float *q;     /* [B][hidden] */
    float *kv;    /* [B][2*kv_dim] new keys then values, before they go to the cache */
    float *att;   /* [B][hidden] attention output */
    float *ffn;   /* [B][intermediate] relu(gate)^2 * up */
    int32_t *acc; /* [chunk][max(hidden + 2*kv_dim, 2*intermediate)] int32 sums of one token chunk of a matmul */
    thread_scratch *threads;
    int n_threads;
};

static int kv_dim(const trit_config *c) { return c->n_kv_heads * c->head_dim; }

/* Tokens a matmul takes at a time: their int8 inputs stay in L2 while every row of the thread's share streams past,
 * and their int32 sums become floats while still in cache. T5 batch kernels read the inputs a slab of columns at a
 * time and decode each block of rows once per call, so for them the chunk is the batch: the down projection's 6912
 * columns had made it 72 tokens, and its rows were decoded twice per batch of 128. */
static int token_chunk(const trit_config *c, int cols) {
    if (c->ternary_format == TRIT_TERNARY_T5) return 1 << 20;
    int n = (512 * 1024 / cols) & ~3;
    return n < 16 ? 16 : n;
}

/* ---- model ----------------------------------------------------------------------------------------------------- */

static int check_config(const trit_config *c) {
    const struct {
        const char *name;
        int32_t value, limit;
    } sizes[] = {{"hidden_size", c->hidden_size, TRIT_MAX_HIDDEN},
                 {"intermediate_size", c->intermediate_size, TRIT_MAX_INTERMEDIATE},
                 {"n_layers", c->n_layers, TRIT_MAX_LAYERS},
                 {"n_heads", c->n_heads, TRIT_MAX_HEADS},
                 {"n_kv_heads", c->n_kv_heads, TRIT_MAX_HEADS},
                 {"head_dim", c->head_dim, TRIT_MAX_HEAD_DIM},
                 {"vocab_size", c->vocab_size, TRIT_MAX_VOCAB},
                 {"max_positions", c->max_positions, TRIT_MAX_POSITIONS}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (sizes[i].value <= 0)
            return trit_fail(TRIT_E_INVALID, "config: %s must be positive, not %d", sizes[i].name, sizes[i].value);
        if (sizes[i].value > sizes[i].limit) /* checked first: the products below then stay far inside 32 bits */
            return trit_fail(TRIT_E_INVALID, "config: %s is %d, more than %d", sizes[i].name, sizes[i].value,
                             sizes[i].limit);
    }
    if ((int64_t)c->max_positions * c->head_dim > TRIT_MAX_ROPE_CELLS)
        return trit_fail(TRIT_E_INVALID, "config: max_positions x head_dim is %lld, more than %d (the RoPE tables)",
                         (long long)c->max_positions * c->head_dim, TRIT_MAX_ROPE_CELLS);
    if (c->n_heads % c->n_kv_heads) return trit_fail(TRIT_E_INVALID, "config: n_heads is not a multiple of n_kv_heads");
    if ((int64_t)c->n_heads * c->head_dim != c->hidden_size) /* int64: the product of two ints can overflow */
        return trit_fail(TRIT_E_INVALID, "config: n_heads * head_dim != hidden_size");
    if (c->head_dim % 2 || c->hidden_size % 4 || c->intermediate_size % 4 || kv_dim(c) % 4)
        return trit_fail(TRIT_E_INVALID, "config: dimensions must fit RoPE pairs and 4-row packing");
    if (!(c->rope_theta > 0.0f) || !(c->rms_eps > 0.0f))
        return trit_fail(TRIT_E_INVALID, "config: rope_theta and rms_eps must be positive");
    if (c->scale_mode != TRIT_SCALE_MULTIPLY && c->scale_mode != TRIT_SCALE_DIVIDE)
        return trit_fail(TRIT_E_INVALID, "config: unknown scale_mode %d", c->scale_mode);
    if (c->ternary_format != TRIT_TERNARY_TQ2 && c->ternary_format != TRIT_TERNARY_T5)
        return trit_fail(TRIT_E_INVALID, "config: unknown ternary_format %d", c->ternary_format);
    if (c->block != TRIT_BLOCK_BITNET && c->block != TRIT_BLOCK_LLAMA && c->block != TRIT_BLOCK_1BITLLM)
        return trit_fail(TRIT_E_INVALID, "config: unknown block %d", c->block);
    return TRIT_OK;
}

/* Every online core (Windows: of this process's processor group, at most 64). */
static int default_threads(void) {
#ifdef _WIN32
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    long n = (long)info.dwNumberOfProcessors;
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
    return n > 0 ? (int)n : 1;
}

trit_model *trit_model_create(const trit_config *config, const trit_weights *weights, int n_threads) {
    if (!config || !weights || !weights->embed || !weights->final_norm || !weights->layers) {
        trit_fail(TRIT_E_INVALID, "model: missing config or weights");
        return NULL;
    }
    if (check_config(config) != TRIT_OK) return NULL;
    if (n_threads > TRIT_MAX_THREADS) {
        trit_fail(TRIT_E_INVALID, "threads: %d is more than %d", n_threads, TRIT_MAX_THREADS);
        return NULL;
    }
    if (weights->head_type != TRIT_HEAD_BF16 && weights->head_type != TRIT_HEAD_Q8 &&
        weights->head_type != TRIT_HEAD_Q4) {
        trit_fail(TRIT_E_INVALID, "model: unknown head type %d", weights->head_type);
        return NULL;
    }
    if ((weights->head_type != TRIT_HEAD_BF16 && (!weights->head || !weights->head_scales)) ||
        (weights->head_type == TRIT_HEAD_Q4 && config->hidden_size % TRIT_Q4_GROUP)) {
        trit_fail(TRIT_E_INVALID, "model: the derived head is missing or does not fit hidden_size");
        return NULL;
    }
    int sub_norms = config->block != TRIT_BLOCK_LLAMA;
    for (int l = 0; l < config->n_layers; l++) {
        const trit_layer_weights *L = &weights->layers[l];
        if (!L->input_norm || !L->q || !L->k || !L->v || !L->o || !L->post_attn_norm || !L->gate || !L->up ||
            !L->down || (sub_norms && (!L->attn_sub_norm || !L->ffn_sub_norm))) {
            trit_fail(TRIT_E_INVALID, "model: layer %d is missing a weight", l);
            return NULL;
        }
    }
    trit_model *m = calloc(1, sizeof *m);
    int half = config->head_dim / 2;
    if (m) {
        pthread_mutex_init(&m->lock, NULL);
        m->cfg = *config;
        m->w = *weights;
        m->layers = malloc(sizeof(trit_layer_weights) * (size_t)config->n_layers);
        m->rope_cos = malloc(sizeof(float) * (size_t)config->max_positions * half);
        m->rope_sin = malloc(sizeof(float) * (size_t)config->max_positions * half);
        m->pool = trit_pool_create(n_threads > 0 ? n_threads : default_threads());
    }
    if (!m || !m->layers || !m->rope_cos || !m->rope_sin || !m->pool) {
        trit_model_free(m);
        trit_fail(TRIT_E_NOMEM, "model: out of memory");
        return NULL;
    }
    memcpy(m->layers, weights->layers, sizeof(trit_layer_weights) * (size_t)config->n_layers);
    for (int l = 0; l < config->n_layers && !sub_norms; l++) /* NULL: the projection reads its input unnormed */
        m->layers[l].attn_sub_norm = m->layers[l].ffn_sub_norm = NULL;
    m->w.layers = m->layers;
    for (int p = 0; p < config->max_positions; p++)
        trit_rope_angles(m->rope_cos + (size_t)p * half, m->rope_sin + (size_t)p * half, config->head_dim, p,
                         config->rope_theta);
    return m;
}

void trit_model_free(trit_model *m) {
    if (!m) return;
    trit_pool_free(m->pool);
    pthread_mutex_destroy(&m->lock);
    free(m->layers);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
}

int trit_model_threads(const trit_model *m) { return trit_pool_size(m->pool); }

void trit_model_run(trit_model *m, trit_task_fn fn, void *arg) {
    pthread_mutex_lock(&m->lock);
    trit_pool_run(m->pool, fn, arg);
    pthread_mutex_unlock(&m->lock);
}

int trit_model_set_threads(trit_model *m, int n_threads) {
    if (n_threads > TRIT_MAX_THREADS)
        return trit_fail(TRIT_E_INVALID, "threads: %d is more than %d", n_threads, TRIT_MAX_THREADS);
    if (n_threads <= 0) n_threads = default_threads();
    trit_pool *pool = trit_pool_create(n_threads);
    if (!pool) return trit_fail(TRIT_E_NOMEM, "model: cannot start %d threads", n_threads);
    pthread_mutex_lock(&m->lock);
    trit_pool *old = m->pool;
    m->pool = pool;
    pthread_mutex_unlock(&m->lock);
    trit_pool_free(old);
    return TRIT_OK;
}

/* ---- context --------------------------------------------------------------------------------------------------- */

static void free_thread_scratch(trit_context *ctx) {
    for (int i = 0; i < ctx->n_threads; i++) {
        free(ctx->threads[i].xq);
        free(ctx->threads[i].xs);
        free(ctx->threads[i].xsum);
        free(ctx->threads[i].row);
        free(ctx->threads[i].scores);
        free(ctx->threads[i].best);
        free(ctx->threads[i].n_best);
    }
    free(ctx->threads);
    ctx->threads = NULL;
    ctx->n_threads = 0;
}

/* Scratch for every thread of the model's pool (its size can change between calls). */
static int ensure_thread_scratch(trit_context *ctx) {
    int n = trit_pool_size(ctx->m->pool);
    if (n == ctx->n_threads) return TRIT_OK;
    free_thread_scratch(ctx);
    const trit_config *c = &ctx->m->cfg;
    size_t B = (size_t)ctx->max_batch,
           wide = (size_t)(c->hidden_size > c->intermediate_size ? c->hidden_size : c->intermediate_size);
    ctx->threads = calloc((size_t)n, sizeof(thread_scratch));
    if (!ctx->threads) return trit_fail(TRIT_E_NOMEM, "context: out of memory");
    ctx->n_threads = n;
    for (int i = 0; i < n; i++) {
        thread_scratch *ts = &ctx->threads[i];
        ts->xq = malloc(B * wide);
        ts->xs = malloc(sizeof(float) * B);
        ts->xsum = malloc(sizeof(int32_t) * B);
        ts->row = malloc(sizeof(float) * wide);
        ts->scores = malloc(sizeof(float) * TRIT_ATTEND_SCRATCH(ctx->n_ctx, c->head_dim, c->n_heads / c->n_kv_heads));
        ts->best = malloc(sizeof(candidate) * B * RESCORE);
        ts->n_best = malloc(sizeof(int) * B);
        if (!ts->xq || !ts->xs || !ts->xsum || !ts->row || !ts->scores || !ts->best || !ts->n_best) {
            free_thread_scratch(ctx);
            return trit_fail(TRIT_E_NOMEM, "context: out of memory");
        }
    }
    return TRIT_OK;
}

trit_context *trit_context_create(trit_model *m, int n_ctx, int max_batch) {
    return trit_context_create_kv(m, n_ctx, max_batch, TRIT_KV_F16);
}

trit_context *trit_context_create_kv(trit_model *m, int n_ctx, int max_batch, int kv_type) {
    if (!m) {
        trit_fail(TRIT_E_INVALID, "context: no model");
        return NULL;
    }
    if (kv_type != TRIT_KV_F16 && kv_type != TRIT_KV_F32 && kv_type != TRIT_KV_Q8) {
        trit_fail(TRIT_E_INVALID, "context: unknown KV cache type %d", kv_type);
        return NULL;
    }
    const trit_config *c = &m->cfg;
    if (n_ctx <= 0 || n_ctx > c->max_positions) {
        trit_fail(TRIT_E_INVALID, "context: %d positions requested, the model allows 1 to %d", n_ctx, c->max_positions);
        return NULL;
    }
    if (max_batch <= 0) max_batch = 512;
    if (max_batch > n_ctx) max_batch = n_ctx;
    trit_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) goto oom;
    ctx->m = m;
    ctx->n_ctx = n_ctx;
    ctx->max_batch = max_batch;
    ctx->kv_type = kv_type;
    size_t B = (size_t)max_batch, H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, KV = (size_t)kv_dim(c);
    ctx->span = trit_key_blocks(n_ctx) * TRIT_KEY_BLOCK;
    /* in 64 bits: where size_t has 32, a cache past 4 GB is refused rather than allocated wrapped around */
    uint64_t cache64 = (uint64_t)c->n_layers * (uint64_t)ctx->span * KV;
    size_t element = trit_kv_type_size(kv_type);
    if (cache64 > SIZE_MAX / 4) {
        trit_context_free(ctx);
        trit_fail(TRIT_E_NOMEM, "context: a cache of %d positions (%llu bytes) is more than this system addresses",
                  n_ctx, (unsigned long long)(2 * cache64 * element));
        return NULL;
    }
    size_t cache = (size_t)cache64, heads = (size_t)c->n_layers * c->n_kv_heads, group = c->n_heads / c->n_kv_heads;
    /* calloc of a large block maps zero pages lazily: the cache costs memory only as it fills */
    ctx->k_cache = calloc(cache, element);
    ctx->v_cache = calloc(cache, element);
    if (kv_type == TRIT_KV_Q8) {
        ctx->k_scales = calloc(heads * ctx->span, sizeof(float));
        ctx->v_scales = calloc(heads * ctx->span, sizeof(float));
        if (!ctx->k_scales || !ctx->v_scales) goto oom;
    }
    ctx->max_chunks = trit_attend_chunks(n_ctx, TRIT_ATTEND_SPLIT);
    ctx->partial = malloc(sizeof(float) * (size_t)c->n_kv_heads * ctx->max_chunks * group * c->head_dim);
    ctx->partial_lse = malloc(sizeof(float) * (size_t)c->n_kv_heads * ctx->max_chunks * group);
    ctx->split_done = malloc(sizeof(atomic_int) * (size_t)c->n_kv_heads);
    ctx->x = malloc(sizeof(float) * B * H);
    ctx->xn = malloc(sizeof(float) * B * H);
    ctx->q = malloc(sizeof(float) * B * H);
    ctx->kv = malloc(sizeof(float) * B * 2 * KV);
    ctx->att = malloc(sizeof(float) * B * H);
    ctx->ffn = malloc(sizeof(float) * B * I);
    size_t chunk = (size_t)token_chunk(c, H < I ? H : I); /* the largest chunk: the narrower input */
    chunk = chunk < B ? chunk : B;
    ctx->acc = malloc(sizeof(int32_t) * chunk * (H + 2 * KV > 2 * I ? H + 2 * KV : 2 * I));
    if (!ctx->k_cache || !ctx->v_cache || !ctx->partial || !ctx->partial_lse || !ctx->split_done || !ctx->x ||
        !ctx->xn || !ctx->q || !ctx->kv || !ctx->att || !ctx->ffn || !ctx->acc || ensure_thread_scratch(ctx) != TRIT_OK)
        goto oom;
    return ctx;
oom:
    trit_context_free(ctx);
    trit_fail(TRIT_E_NOMEM, "context: out of memory for %d positions", n_ctx);
    return NULL;
}

void trit_context_free(trit_context *ctx) {
    if (!ctx) return;
    free_thread_scratch(ctx);
    free(ctx->k_cache);
    free(ctx->v_cache);
    free(ctx->k_scales);
    free(ctx->v_scales);
    free(ctx->partial);
    free(ctx->partial_lse);
    free(ctx->split_done);
    free(ctx->x);
    free(ctx->xn);
    free(ctx->q);
    free(ctx->kv);
    free(ctx->att);
    free(ctx->ffn);
    free(ctx->acc);
    free(ctx);
}

int trit_context_n_past(const trit_context *ctx) { return ctx->n_past; }
int trit_context_n_ctx(const trit_context *ctx) { return ctx->n_ctx; }
int trit_context_kv_type(const trit_context *ctx) { return ctx->kv_type; }

/* Layer l's kv head h in the cache. */
static trit_kv_head kv_head(const trit_context *ctx, int l, int h) {
    const trit_config *c = &ctx->m->cfg;
    size_t head = (size_t)l * c->n_kv_heads + h, at = head * ctx->span * c->head_dim * trit_kv_type_size(ctx->kv_type);
    trit_kv_head kv = {ctx->kv_type, (const char *)ctx->k_cache + at, (const char *)ctx->v_cache + at,
                       ctx->k_scales ? ctx->k_scales + head * ctx->span : NULL,
                       ctx->v_scales ? ctx->v_scales + head * ctx->span : NULL};
    return kv;
}

int trit_context_truncate(trit_context *ctx, int n_past) {
    if (n_past < 0 || n_past > ctx->n_past)
        return trit_fail(TRIT_E_RANGE, "context: cannot keep %d positions of %d", n_past, ctx->n_past);
    ctx->n_past = n_past; /* later positions are overwritten before they are read again */
    return TRIT_OK;
}

/* Bytes of one (layer, kv head)'s part of a row: key, value, and Q8's two scales. */
static size_t kv_head_row_bytes(const trit_context *ctx) {
    return 2 * (size_t)ctx->m->cfg.head_dim * trit_kv_type_size(ctx->kv_type) + (ctx->kv_type == TRIT_KV_Q8 ? 8 : 0);
}

static size_t kv_row_bytes(const trit_context *ctx) {
    return (size_t)ctx->m->cfg.n_layers * ctx->m->cfg.n_kv_heads * kv_head_row_bytes(ctx);
}

int64_t trit_context_kv_row_bytes(const trit_context *ctx) {
    if (!ctx) return trit_fail(TRIT_E_INVALID, "context: none given");
    return (int64_t)kv_row_bytes(ctx);
}

/* Positions [first, first + n) in a cache whose last usable position is end - 1; rows and the context given. */
static int check_kv_rows(const trit_context *ctx, int first, int n, int end, const void *rows, const char *what) {
    if (!ctx || first < 0 || n < 0 || (!rows && n > 0))
        return trit_fail(TRIT_E_INVALID, "context: %s: bad arguments", what);
    if (n > end - first)
        return trit_fail(TRIT_E_RANGE, "context: %s: %d positions from %d run past %d", what, n, first, end);
    return TRIT_OK;
}

/* One position's keys and values between the cache and a row (to_row: from the cache); the key's elements one by
 * one, as they sit a key block apart. */
#define COPY_KEY(T)                                                                                                    \
    for (int d = 0; d < hd; d++) {                                                                                     \
        T *cell = (T *)keys + trit_key_index(pos, d, hd);                                                              \
        if (to_row)                                                                                                    \
            memcpy(row + d * sizeof(T), cell, sizeof(T));                                                              \
        else                                                                                                           \
            memcpy(cell, row + d * sizeof(T), sizeof(T));                                                              \
    }
static void copy_kv_row(const trit_context *ctx, int pos, unsigned char *row, int to_row) {
    const trit_config *c = &ctx->m->cfg;
    int hd = c->head_dim;
    size_t element = trit_kv_type_size(ctx->kv_type), bytes = (size_t)hd * element;
    for (int l = 0; l < c->n_layers; l++)
        for (int h = 0; h < c->n_kv_heads; h++, row += kv_head_row_bytes(ctx)) {
            trit_kv_head kv = kv_head(ctx, l, h);
            char *keys = (char *)kv.keys, *value = (char *)kv.values + (size_t)pos * bytes;
            if (ctx->kv_type == TRIT_KV_F32)
                COPY_KEY(float)
            else if (ctx->kv_type == TRIT_KV_Q8)
                COPY_KEY(int8_t)
            else
                COPY_KEY(uint16_t)
            if (to_row)
                memcpy(row + bytes, value, bytes);
            else
                memcpy(value, row + bytes, bytes);
            if (ctx->kv_type != TRIT_KV_Q8) continue;
            float *ks = (float *)kv.key_scales + pos, *vs = (float *)kv.value_scales + pos;
            if (to_row)
                memcpy(row + 2 * bytes, ks, 4), memcpy(row + 2 * bytes + 4, vs, 4);
            else
                memcpy(ks, row + 2 * bytes, 4), memcpy(vs, row + 2 * bytes + 4, 4);
        }
}
#undef COPY_KEY

int trit_context_read_kv(const trit_context *ctx, int first, int n, void *out) {
    int rc = check_kv_rows(ctx, first, n, ctx ? ctx->n_past : 0, out, "read_kv");
    if (rc != TRIT_OK) return rc;
    size_t row = kv_row_bytes(ctx);
    for (int p = 0; p < n; p++) copy_kv_row(ctx, first + p, (unsigned char *)out + (size_t)p * row, 1);
    return TRIT_OK;
}

int trit_context_write_kv(trit_context *ctx, int first, int n, const void *in) {
    int rc = check_kv_rows(ctx, first, n, ctx ? ctx->n_ctx : 0, in, "write_kv");
    if (rc != TRIT_OK) return rc;
    if (first > ctx->n_past) /* a gap would leave positions nobody wrote */
        return trit_fail(TRIT_E_RANGE, "context: write_kv: position %d is past the %d held", first, ctx->n_past);
    size_t row = kv_row_bytes(ctx);
    for (int p = 0; p < n; p++) copy_kv_row(ctx, first + p, (unsigned char *)in + (size_t)p * row, 0);
    ctx->n_past = first + n;
    return TRIT_OK;
}

/* ---- the jobs of one forward pass ------------------------------------------------------------------------------ */

typedef struct {
    trit_context *ctx;
    const trit_kernel *kern;
    int n;    /* tokens in this batch */
    int pos0; /* position of the first */
    int layer;
} batch;

/* One BitLinear projection of a job: up to three share an input (q, k, v or gate, up). */
typedef struct {
    const uint8_t *w;
    int rows;
    float scale;
    float *out; /* [n][out_stride], columns from 0 */
    int out_stride;
    int32_t *acc; /* [n][rows] */
} projection;

/* The three things a layer does with projections' sums (project, project_add, project_gated below). */
typedef enum {
    PROJECT,       /* each projection's floats into its output: q, k, v */
    PROJECT_ADD,   /* added into the output, the residual stream: o, down */
    PROJECT_GATED, /* the gate/up pair: relu(gate)^2 * up into the gate's output */
} projection_mode;

/* What a projection reads: RMSNorm(x) with `norm` (x itself when norm is NULL: the Llama block's o and down), x the
 * residual stream or the attention output, or the FFN product relu(gate)^2 * up (or silu(gate) * up), which the
 * gate/up job leaves in the gate half of the FFN buffer. */
typedef struct {
    const batch *b;
    projection_mode mode;
    const float *x; /* [n][cols] */
    const float *norm;
    int cols;
    int n_proj;
    projection p[3];
    int chunk_groups; /* the row groups of one token chunk: every projection's in turn, or the gate's (and up's) */
    trit_share share; /* chunk after chunk, their groups */
} matmul_job;

/* A group is one packed byte row: T5 packs 5 rows a fifth apart, TQ2 4 rows a quarter apart. */
static int row_groups(const trit_config *c, int rows) {
    return c->ternary_format == TRIT_TERNARY_T5 ? trit_t5_groups(rows) : rows / 4;
}

/* The int8 input. One token (decoding): every thread quantises it into its own scratch, no barrier needed.
 * A batch: threads split the tokens, write the first thread's scratch, and meet at a barrier. */
static const thread_scratch *prepare_input(const matmul_job *j, int ith, int nth) {
    trit_context *ctx = j->b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int n = j->b->n, batch = n > 1, t0 = 0, t1 = n;
    thread_scratch *own = &ctx->threads[ith], *in = batch ? &ctx->threads[0] : own;
    if (batch) trit_split(n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        const float *x = j->x + (size_t)t * j->cols;
        if (j->norm) {
            j->b->kern->rmsnorm(own->row, x, j->norm, j->cols, c->rms_eps);
            x = own->row;
        }
        in->xs[t] = j->b->kern->quantize(in->xq + (size_t)t * j->cols, &in->xsum[t], x, j->cols);
    }
    if (batch) trit_pool_barrier(ctx->m->pool);
    return in;
}

/* Groups [g0, g1) of projection k (of gate and up when gated) for tokens [c0, c0 + nc): their int32 sums, then
 * floats y = acc / s, times or divided by the weight scale, written or added; or relu(gate)^2 * up into the gate's
 * output. */
static void matmul_piece(const matmul_job *j, const thread_scratch *in, int c0, int nc, int k, int g0, int g1) {
    const trit_config *c = &j->b->ctx->m->cfg;
    const trit_kernel *kern = j->b->kern;
    int divide = c->scale_mode == TRIT_SCALE_DIVIDE, t5 = c->ternary_format == TRIT_TERNARY_T5;
    int gated = j->mode == PROJECT_GATED, add = j->mode == PROJECT_ADD;
    const int8_t *xq = in->xq + (size_t)c0 * j->cols;
    for (int i = k; i < (gated ? 2 : k + 1); i++) {
        const projection *p = &j->p[i];
        if (t5)
            kern->t5_matmul(p->acc, p->w, p->rows, j->cols, xq, in->xsum + c0, nc, g0, g1);
        else
            kern->ternary_matmul(p->acc, p->w, p->rows, j->cols, xq, in->xsum + c0, nc, g0, g1);
    }
    const projection *p = &j->p[k], *up = &j->p[1];
    int stride = row_groups(c, p->rows);
    for (int t = 0; t < nc; t++) {
        float s = in->xs[c0 + t];
        const int32_t *acc = p->acc + (size_t)t * p->rows;
        float *out = p->out + (size_t)(c0 + t) * p->out_stride;
        float f = divide ? 1.0f / (s * p->scale) : p->scale / s;
        for (int q = 0; q < (t5 ? 5 : 4); q++) {
            int r0 = g0 + q * stride, r1 = g1 + q * stride < p->rows ? g1 + q * stride : p->rows;
            if (r1 <= r0) continue;
            if (gated)
                (c->block == TRIT_BLOCK_BITNET ? kern->relu2_sums : kern->silu_sums)(
                    out + r0, acc + r0, f, up->acc + (size_t)t * up->rows + r0,
                    divide ? 1.0f / (s * up->scale) : up->scale / s, r1 - r0);
            else
                kern->scale_sums(out + r0, acc + r0, f, r1 - r0, add);
        }
    }
}

/* Token chunk after chunk, threads take pieces of the row groups (see trit_share); a piece's sums do not depend on
 * who computes them. A chunk's int32 sums reuse the previous chunk's buffer, so a thread whose next piece is in a
 * later chunk first waits at a barrier for every thread to be done with the earlier ones. */
static void run_matmul(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    const thread_scratch *in = prepare_input(j, ith, nth);
    const trit_config *c = &j->b->ctx->m->cfg;
    int chunk = token_chunk(c, j->cols), chunks = (j->b->n + chunk - 1) / chunk, passed = 0, a, e;
    while (trit_share_claim(&j->share, nth, &a, &e)) {
        int ci = a / j->chunk_groups, c0 = ci * chunk, nc = j->b->n - c0 < chunk ? j->b->n - c0 : chunk;
        for (; passed < ci; passed++) trit_pool_barrier(j->b->ctx->m->pool);
        a -= ci * j->chunk_groups;
        e -= ci * j->chunk_groups;
        for (int k = 0, first = 0; k < (j->mode == PROJECT_GATED ? 1 : j->n_proj);
             first += row_groups(c, j->p[k].rows), k++) {
            int groups = row_groups(c, j->p[k].rows), g0 = a > first ? a - first : 0;
            int g1 = e - first < groups ? e - first : groups;
            if (g0 < g1) matmul_piece(j, in, c0, nc, k, g0, g1);
        }
    }
    for (; passed < chunks - 1; passed++) trit_pool_barrier(j->b->ctx->m->pool);
}

static void run_projections(const batch *b, projection_mode mode, const float *x, const float *norm, int cols,
                            int n_proj, const projection *p) {
    matmul_job j = {b, mode, x, norm, cols, n_proj, {{0}}, 0, {0}};
    const trit_config *c = &b->ctx->m->cfg;
    int32_t *acc = b->ctx->acc;
    int chunk = token_chunk(c, cols), chunks = (b->n + chunk - 1) / chunk;
    for (int k = 0; k < n_proj; k++) {
        j.p[k] = p[k];
        j.p[k].acc = acc;
        acc += (size_t)(b->n < chunk ? b->n : chunk) * p[k].rows; /* room for one chunk */
        if (mode != PROJECT_GATED || k == 0) j.chunk_groups += row_groups(c, p[k].rows);
    }
    /* pieces of at least ~32 KB of weights (the claim costs far less than reading them), in whole blocks of the
     * kernels' batch tiles */
    trit_share_init(&j.share, chunks * j.chunk_groups, j.chunk_groups, (32768 + cols - 1) / cols, TRIT_ROW_GROUP_BLOCK);
    /* one token has no barrier (its own input per thread, one chunk): a worker that is late is not waited for */
    (b->n == 1 ? trit_pool_run_open : trit_pool_run)(b->ctx->m->pool, run_matmul, &j);
}

/* out = W . RMSNorm(x) for each of n_proj projections of the same input: q, k, v. */
static void project(const batch *b, const float *x, const float *norm, int cols, int n_proj, const projection *p) {
    run_projections(b, PROJECT, x, norm, cols, n_proj, p);
}

/* out += W . RMSNorm(x): o and down, added into the residual stream. */
static void project_add(const batch *b, const float *x, const float *norm, int cols, const projection *p) {
    run_projections(b, PROJECT_ADD, x, norm, cols, 1, p);
}

/* gate.out = relu(W_gate . n)^2 * (W_up . n) (silu(W_gate . n) * (W_up . n) in the Llama block), n = RMSNorm(x):
 * the FFN's two projections of one input in one pass. */
static void project_gated(const batch *b, const float *x, const float *norm, int cols, const projection gate_up[2]) {
    run_projections(b, PROJECT_GATED, x, norm, cols, 2, gate_up);
}

/* A key and a value of kv head h at position pos into the cache, in its type; a key as a column of a key block. */
static void store_kv(const batch *b, int h, int pos, const float *key, const float *value) {
    trit_context *ctx = b->ctx;
    int hd = ctx->m->cfg.head_dim;
    trit_kv_head kv = kv_head(ctx, b->layer, h);
    if (ctx->kv_type == TRIT_KV_F32) {
        for (int d = 0; d < hd; d++) ((float *)kv.keys)[trit_key_index(pos, d, hd)] = key[d];
        memcpy((float *)kv.values + (size_t)pos * hd, value, sizeof(float) * (size_t)hd);
    } else if (ctx->kv_type == TRIT_KV_Q8) {
        int8_t cells[TRIT_MAX_HEAD_DIM];
        trit_quantize_kv(cells, (float *)kv.key_scales + pos, key, hd);
        for (int d = 0; d < hd; d++) ((int8_t *)kv.keys)[trit_key_index(pos, d, hd)] = cells[d];
        trit_quantize_kv((int8_t *)kv.values + (size_t)pos * hd, (float *)kv.value_scales + pos, value, hd);
    } else {
        for (int d0 = 0; d0 < hd; d0 += 128) { /* converted by the kernel */
            uint16_t cells[128];
            int n = hd - d0 < 128 ? hd - d0 : 128;
            b->kern->to_f16(cells, key + d0, n);
            for (int d = 0; d < n; d++) ((uint16_t *)kv.keys)[trit_key_index(pos, d0 + d, hd)] = cells[d];
        }
        b->kern->to_f16((uint16_t *)kv.values + (size_t)pos * hd, value, hd);
    }
}

/* RoPE on token t's queries and keys of kv heads [h0, h1) (and the query heads that read them); those keys and
 * values into the cache. */
static void rope_store(const batch *b, int t, int h0, int h1) {
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int KV = kv_dim(c), half = c->head_dim / 2, group = c->n_heads / c->n_kv_heads, pos = b->pos0 + t;
    const float *cs = ctx->m->rope_cos + (size_t)pos * half, *sn = ctx->m->rope_sin + (size_t)pos * half;
    float *k = ctx->kv + (size_t)t * 2 * KV, *v = k + KV;
    trit_rope_apply(ctx->q + (size_t)t * c->hidden_size + (size_t)h0 * group * c->head_dim, (h1 - h0) * group,
                    c->head_dim, cs, sn);
    trit_rope_apply(k + (size_t)h0 * c->head_dim, h1 - h0, c->head_dim, cs, sn);
    for (int h = h0; h < h1; h++) store_kv(b, h, pos, k + (size_t)h * c->head_dim, v + (size_t)h * c->head_dim);
}

static void run_rope_store(void *arg, int ith, int nth) {
    const batch *b = arg;
    int t0, t1;
    trit_split(b->n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) rope_store(b, t, 0, b->ctx->m->cfg.n_kv_heads);
}

/* Tokens attended as one block: up to TRIT_ATTEND_ROWS query rows. */
static int attention_block(const trit_config *c) {
    int group = c->n_heads / c->n_kv_heads;
    return group < TRIT_ATTEND_ROWS ? TRIT_ATTEND_ROWS / group : 1;
}

/* One decoding token deep in the context (more than TRIT_ATTEND_SPLIT keys): one (kv head, chunk of keys) pair per
 * item, so that every thread streams its share of the cache however few kv heads there are (5 on 2 threads had left
 * one idle a third of the time), then each kv head's chunks are combined. The chunks depend on the position only, so
 * the results do not depend on the threads. No barrier inside the job (on a busy machine each one waits for a thread
 * the OS has put aside): threads claim items as they go; each item turns a copy of its queries (RoPE), only the
 * chunk that holds the new position turns and stores the new key, and whoever attends a head's last chunk combines
 * them. */
static int decodes_split(const batch *b) { return b->n == 1 && b->pos0 + 1 > TRIT_ATTEND_SPLIT; }

static void attend_split(const batch *b, int ith, int nth) {
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int group = c->n_heads / c->n_kv_heads, hd = c->head_dim, half = hd / 2, pos = b->pos0, n_keys = pos + 1;
    int chunks = trit_attend_chunks(n_keys, TRIT_ATTEND_SPLIT), i0, i1;
    size_t per_head = (size_t)ctx->max_chunks * group;
    const float *cs = ctx->m->rope_cos + (size_t)pos * half, *sn = ctx->m->rope_sin + (size_t)pos * half;
    thread_scratch *ts = &ctx->threads[ith];
    while (trit_share_claim(&ctx->split, nth, &i0, &i1))
        for (int i = i0; i < i1; i++) {
            int kvh = i / chunks, chunk = i % chunks, k0 = chunk * TRIT_ATTEND_SPLIT;
            int nk = n_keys - k0 < TRIT_ATTEND_SPLIT ? n_keys - k0 : TRIT_ATTEND_SPLIT;
            float *q = ts->row; /* [group][head_dim] */
            memcpy(q, ctx->q + (size_t)kvh * group * hd, sizeof(float) * (size_t)group * hd);
            trit_rope_apply(q, group, hd, cs, sn);
            if (chunk == chunks - 1) {
                float *k = ctx->kv + (size_t)kvh * hd;
                trit_rope_apply(k, 1, hd, cs, sn);
                store_kv(b, kvh, pos, k, k + kv_dim(c));
            }
            trit_kv_head whole = kv_head(ctx, b->layer, kvh), part = trit_kv_head_from(&whole, k0, hd);
            size_t at = kvh * per_head + (size_t)chunk * group;
            trit_attend_kv(b->kern, ctx->partial + at * hd, ctx->partial_lse + at, q, 0, &part, 1, nk - 1, hd, group,
                           ts->scores);
            if (atomic_fetch_add_explicit(&ctx->split_done[kvh], 1, memory_order_acq_rel) == chunks - 1)
                trit_attend_combine(ctx->att + (size_t)kvh * group * hd, ctx->partial + kvh * per_head * hd,
                                    ctx->partial_lse + kvh * per_head, chunks, group, hd);
        }
}

/* Item i of the attention: a block of tokens and a kv head, after RoPE and the cache store of that head when the
 * batch is a single block. */
static void attend_block(const batch *b, int i, float *scratch) {
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int group = c->n_heads / c->n_kv_heads, per_block = attention_block(c);
    int blocks = (b->n + per_block - 1) / per_block, t0 = i / c->n_kv_heads * per_block, kvh = i % c->n_kv_heads;
    int nt = b->n - t0 < per_block ? b->n - t0 : per_block;
    if (blocks == 1)
        for (int t = 0; t < nt; t++) rope_store(b, t, kvh, kvh + 1);
    size_t head_at = (size_t)t0 * c->hidden_size + (size_t)kvh * group * c->head_dim;
    trit_kv_head kv = kv_head(ctx, b->layer, kvh);
    trit_attend_kv(b->kern, ctx->att + head_at, NULL, ctx->q + head_at, c->hidden_size, &kv, nt, b->pos0 + t0,
                   c->head_dim, group, scratch);
}

/* Causal grouped-query attention: one (block of tokens, kv head) pair per item, with the query heads h that read kv
 * head h / (H / KV) together, so they share every key and value read. The blocks do not depend on the threads, so
 * neither do the results. When the batch is a single block (decoding), an item first does RoPE and the cache store
 * of its own kv head, which no other item reads: one job and one barrier less a layer. */
static void run_attention(void *arg, int ith, int nth) {
    const batch *b = arg;
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int per_block = attention_block(c), blocks = (b->n + per_block - 1) / per_block;
    if (decodes_split(b)) {
        attend_split(b, ith, nth);
        return;
    }
    float *scratch = ctx->threads[ith].scores;
    if (b->n == 1) { /* one token: its kv heads claimed as threads go, so that it runs as an open job */
        int i0, i1;
        while (trit_share_claim(&ctx->split, nth, &i0, &i1))
            for (int i = i0; i < i1; i++) attend_block(b, i, scratch);
        return;
    }
    /* round robin: a later block attends to more positions, so contiguous shares would be uneven */
    for (int i = ith; i < blocks * c->n_kv_heads; i += nth) attend_block(b, i, scratch);
}

static void run_pool_job(const batch *b, trit_task_fn fn) { trit_pool_run(b->ctx->m->pool, fn, (void *)b); }

/* Six jobs a layer, each ending in a barrier: q/k/v, RoPE and the cache (within attention when decoding), attention,
 * o, gate/up, down. */
static void forward_layer(batch *b) {
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    const trit_layer_weights *L = &ctx->m->layers[b->layer];
    int H = c->hidden_size, I = c->intermediate_size, KV = kv_dim(c);

    /* attention block */
    projection qkv[3] = {
        {L->q, H, L->q_scale, ctx->q, H, NULL},
        {L->k, KV, L->k_scale, ctx->kv, 2 * KV, NULL},
        {L->v, KV, L->v_scale, ctx->kv + KV, 2 * KV, NULL},
    };
    project(b, ctx->x, L->input_norm, H, 3, qkv);
    if (b->n > attention_block(c)) run_pool_job(b, run_rope_store);
    if (b->n ==
        1) { /* threads claim a token's items (kv heads, or their chunks of keys): a late worker is not waited for */
        int chunks = decodes_split(b) ? trit_attend_chunks(b->pos0 + 1, TRIT_ATTEND_SPLIT) : 1;
        trit_share_init(&ctx->split, c->n_kv_heads * chunks, 0, 1, 1);
        for (int h = 0; h < c->n_kv_heads; h++) atomic_init(&ctx->split_done[h], 0);
        trit_pool_run_open(ctx->m->pool, run_attention, b);
    } else {
        run_pool_job(b, run_attention);
    }
    projection o = {L->o, H, L->o_scale, ctx->x, H, NULL};
    project_add(b, ctx->att, L->attn_sub_norm, H, &o);

    /* feed-forward block */
    projection gate_up[2] = {
        {L->gate, I, L->gate_scale, ctx->ffn, I, NULL},
        {L->up, I, L->up_scale, NULL, 0, NULL}, /* only its sums: run_matmul multiplies them into the gate's */
    };
    project_gated(b, ctx->x, L->post_attn_norm, H, gate_up);
    projection down = {L->down, H, L->down_scale, ctx->x, H, NULL};
    project_add(b, ctx->ffn, L->ffn_sub_norm, I, &down);
}

/* Final norm and the output head, for tokens [first, n). */
typedef struct {
    const batch *b;
    int first;
    float *logits;
    trit_share share; /* the vocabulary's rows */
} head_job;

static void run_final_norm(void *arg, int ith, int nth) {
    const batch *b = arg;
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int H = c->hidden_size, t0, t1;
    trit_split(b->n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++)
        b->kern->rmsnorm(ctx->xn + (size_t)t * H, ctx->x + (size_t)t * H, ctx->m->w.final_norm, H, c->rms_eps);
}

void trit_output_head(const trit_kernel *kern, int head_type, const void *head, const void *scales, float *logits,
                      int vocab, int hidden, const float *x, int n_tokens, int r0, int r1) {
    if (head_type == TRIT_HEAD_Q8)
        kern->q8_matmul(logits, vocab, head, scales, hidden, x, n_tokens, r0, r1);
    else if (head_type == TRIT_HEAD_Q4)
        kern->q4_matmul(logits, vocab, head, scales, hidden, x, n_tokens, r0, r1);
    else
        kern->bf16_matmul(logits, vocab, head, hidden, x, n_tokens, r0, r1);
}

/* Higher logit first; of equal logits the lower token id, so the set chosen is unique. */
static int ranks_before(const candidate *a, const candidate *b) {
    return a->value > b->value || (a->value == b->value && a->index < b->index);
}

/* Inserts into best[0..*n), kept in rank order and at most RESCORE long. */
static void consider(candidate *best, int *n, candidate c) {
    if (*n == RESCORE && !ranks_before(&c, &best[*n - 1])) return;
    int i = *n < RESCORE ? (*n)++ : *n - 1;
    for (; i > 0 && ranks_before(&c, &best[i - 1]); i--) best[i] = best[i - 1];
    best[i] = c;
}

/* Threads take pieces of the vocabulary; with a compact head, each then keeps its best rows per token, and after a
 * barrier every thread merges all the lists of a token and rescores its share of the winners. */
static void run_head(void *arg, int ith, int nth) {
    head_job *j = arg;
    const trit_model *m = j->b->ctx->m;
    const trit_config *c = &m->cfg;
    thread_scratch *ts = j->b->ctx->threads;
    int r0, r1, n = j->b->n - j->first, compact = m->w.head_type != TRIT_HEAD_BF16;
    const uint16_t *exact = m->w.output ? m->w.output : m->w.embed; /* the untied head, or the tied embedding */
    const void *head = compact ? m->w.head : (const void *)exact;
    const float *x = j->b->ctx->xn + (size_t)j->first * c->hidden_size;
    for (int t = 0; t < n; t++) ts[ith].n_best[t] = 0;
    while (trit_share_claim(&j->share, nth, &r0, &r1)) {
        trit_output_head(j->b->kern, m->w.head_type, head, m->w.head_scales, j->logits, c->vocab_size, c->hidden_size,
                         x, n, r0, r1);
        for (int t = 0; compact && t < n; t++) {
            const float *logits = j->logits + (size_t)t * c->vocab_size;
            candidate *best = ts[ith].best + (size_t)t * RESCORE;
            for (int r = r0; r < r1; r++) consider(best, &ts[ith].n_best[t], (candidate){logits[r], r});
        }
    }
    if (!compact) return;
    trit_pool_barrier(m->pool); /* every thread's candidates are in */
    for (int t = 0; t < n; t++) {
        candidate best[RESCORE];
        int n_best = 0;
        for (int i = 0; i < nth; i++)
            for (int k = 0; k < ts[i].n_best[t]; k++) consider(best, &n_best, ts[i].best[(size_t)t * RESCORE + k]);
        for (int k = (t * RESCORE + ith) % nth; k < n_best; k += nth)
            j->b->kern->bf16_matmul(j->logits + (size_t)t * c->vocab_size, 0, exact, c->hidden_size,
                                    x + (size_t)t * c->hidden_size, 1, best[k].index, best[k].index + 1);
    }
}

static void forward_batch(trit_context *ctx, const int32_t *tokens, int n, float *logits, int first_logit) {
    trit_model *m = ctx->m;
    const trit_config *c = &m->cfg;
    int H = c->hidden_size;
    batch b = {ctx, trit_active_kernel(), n, ctx->n_past, 0};
    for (int t = 0; t < n; t++) {
        const uint16_t *row = m->w.embed + (size_t)tokens[t] * H;
        for (int i = 0; i < H; i++) ctx->x[(size_t)t * H + i] = trit_bf16_to_f32(row[i]);
    }
    for (b.layer = 0; b.layer < c->n_layers; b.layer++) forward_layer(&b);
    if (n == 1) /* one token's norm, without waking the workers */
        run_final_norm(&b, 0, 1);
    else
        run_pool_job(&b, run_final_norm);
    if (logits && first_logit < n) {
        head_job j = {&b, first_logit, logits, {0}};
        trit_share_init(&j.share, c->vocab_size, 0, 256, 1);
        trit_pool_run(m->pool, run_head, &j);
    }
    ctx->n_past += n;
}

int trit_eval(trit_context *ctx, const int32_t *tokens, int n_tokens, float *logits, int logits_mode) {
    if (!ctx || (!tokens && n_tokens > 0) || n_tokens < 0) return trit_fail(TRIT_E_INVALID, "eval: bad arguments");
    if (logits_mode != TRIT_LOGITS_NONE && logits_mode != TRIT_LOGITS_LAST && logits_mode != TRIT_LOGITS_ALL)
        return trit_fail(TRIT_E_INVALID, "eval: unknown logits mode %d", logits_mode);
    if (logits_mode != TRIT_LOGITS_NONE && !logits) return trit_fail(TRIT_E_INVALID, "eval: no logits buffer");
    if (logits_mode == TRIT_LOGITS_LAST && n_tokens == 0)
        return trit_fail(TRIT_E_INVALID, "eval: no token to give logits for");
    trit_model *m = ctx->m;
    const trit_config *c = &m->cfg;
    for (int t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return trit_fail(TRIT_E_RANGE, "eval: token id %d is outside the vocabulary (0..%d)", tokens[t],
                             c->vocab_size - 1);
    if (n_tokens > ctx->n_ctx - ctx->n_past)
        return trit_fail(TRIT_E_RANGE, "eval: %d tokens at position %d run past the context of %d", n_tokens,
                         ctx->n_past, ctx->n_ctx);

    pthread_mutex_lock(&m->lock);
    if (ensure_thread_scratch(ctx) != TRIT_OK) { /* threads were changed after this context was made */
        pthread_mutex_unlock(&m->lock);
        return TRIT_E_NOMEM;
    }
    for (int done = 0; done < n_tokens; done += ctx->max_batch) {
        int n = n_tokens - done < ctx->max_batch ? n_tokens - done : ctx->max_batch;
        if (logits_mode == TRIT_LOGITS_ALL)
            forward_batch(ctx, tokens + done, n, logits + (size_t)done * c->vocab_size, 0);
        else if (logits_mode == TRIT_LOGITS_LAST && done + n == n_tokens)
            forward_batch(ctx, tokens + done, n, logits, n - 1);
        else
            forward_batch(ctx, tokens + done, n, NULL, n);
    }
    pthread_mutex_unlock(&m->lock);
    return TRIT_OK;
}
