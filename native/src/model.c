/* The BitNet b1.58 forward pass over a batch of tokens against a KV cache.
 *
 * One decoder layer (transformers' BitNetDecoderLayer):
 *   h   = x + o( attn_sub_norm( attention( rope(q(n1)), rope(k(n1)), v(n1) ) ) )     n1 = input_norm(x)
 *   out = h + down( ffn_sub_norm( relu(gate(n2))^2 * up(n2) ) )                        n2 = post_attn_norm(h)
 * where every projection is a BitLinear: y = (quantize(x) . T) / s, times or divided by the weight scale.
 * After the last layer: final_norm, then logits against the (tied) embedding matrix.
 *
 * Each step is one job for the thread pool; inside a job, thread i of n takes its share of rows or tokens.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trit_internal.h"

struct trit_model {
    trit_config cfg;
    trit_weights w;
    trit_layer_weights *layers;
    trit_pool *pool;
    float *rope_cos, *rope_sin; /* [max_positions][head_dim/2] */
    pthread_mutex_t lock;       /* one forward pass at a time: contexts share the pool */
};

struct trit_context {
    trit_model *m;
    int n_ctx, max_batch, n_past;
    uint16_t *k_cache, *v_cache; /* fp16 [n_layers][n_ctx][kv_dim] */
    /* scratch for one batch */
    float *x;       /* [B][hidden] residual stream */
    float *xb;      /* [B][hidden] a projection's output before the residual add; the final normed state */
    float *q;       /* [B][hidden] */
    float *kv;      /* [B][2*kv_dim] new keys then values, before they go to the cache */
    float *att;     /* [B][hidden] attention output */
    float *ffn;     /* [B][2*intermediate] gate then up; gate becomes relu2(gate)*up */
    int8_t *xq;     /* [B][max(hidden, intermediate)] quantised activations */
    float *xs;      /* [B] their scales */
    int32_t *xsum;  /* [B] their sums */
    int32_t *acc;   /* [B][hidden + 2*kv_dim + 2*intermediate] int32 sums */
    float *scores;  /* [n_threads][n_ctx] attention scores */
    int score_threads;
};

static int kv_dim(const trit_config *c) { return c->n_kv_heads * c->head_dim; }

/* ---- model ----------------------------------------------------------------------------------------------------- */

static int check_config(const trit_config *c) {
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->vocab_size <= 0 || c->max_positions <= 0)
        return trit_fail(TRIT_E_INVALID, "config: sizes must be positive");
    if (c->n_heads % c->n_kv_heads) return trit_fail(TRIT_E_INVALID, "config: n_heads is not a multiple of n_kv_heads");
    if (c->n_heads * c->head_dim != c->hidden_size)
        return trit_fail(TRIT_E_INVALID, "config: n_heads * head_dim != hidden_size");
    if (c->head_dim % 2 || c->hidden_size % 4 || c->intermediate_size % 4 || kv_dim(c) % 4)
        return trit_fail(TRIT_E_INVALID, "config: dimensions must fit RoPE pairs and 4-row packing");
    if (!(c->rope_theta > 0.0f) || !(c->rms_eps > 0.0f))
        return trit_fail(TRIT_E_INVALID, "config: rope_theta and rms_eps must be positive");
    if (c->scale_mode != TRIT_SCALE_MULTIPLY && c->scale_mode != TRIT_SCALE_DIVIDE)
        return trit_fail(TRIT_E_INVALID, "config: unknown scale_mode %d", c->scale_mode);
    return TRIT_OK;
}

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

trit_model *trit_model_create(const trit_config *config, const trit_weights *weights, int n_threads) {
    if (!config || !weights || !weights->embed || !weights->final_norm || !weights->layers) {
        trit_fail(TRIT_E_INVALID, "model: missing config or weights");
        return NULL;
    }
    if (check_config(config) != TRIT_OK) return NULL;
    for (int l = 0; l < config->n_layers; l++) {
        const trit_layer_weights *L = &weights->layers[l];
        if (!L->input_norm || !L->q || !L->k || !L->v || !L->o || !L->attn_sub_norm || !L->post_attn_norm ||
            !L->gate || !L->up || !L->down || !L->ffn_sub_norm) {
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

int trit_model_set_threads(trit_model *m, int n_threads) {
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

int64_t trit_find_invalid_code(const uint8_t *packed, int64_t n_bytes) {
    /* a 2-bit field holds 3 when both of its bits are set */
    for (int64_t i = 0; i < n_bytes; i++)
        if (packed[i] & (packed[i] >> 1) & 0x55) return i;
    return -1;
}

/* ---- context --------------------------------------------------------------------------------------------------- */

trit_context *trit_context_create(trit_model *m, int n_ctx, int max_batch) {
    if (!m) {
        trit_fail(TRIT_E_INVALID, "context: no model");
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
    size_t B = (size_t)max_batch, H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, KV = (size_t)kv_dim(c);
    size_t cache = (size_t)c->n_layers * n_ctx * KV;
    /* calloc of a large block maps zero pages lazily: the cache costs memory only as it fills */
    ctx->k_cache = calloc(cache, sizeof(uint16_t));
    ctx->v_cache = calloc(cache, sizeof(uint16_t));
    ctx->x = malloc(sizeof(float) * B * H);
    ctx->xb = malloc(sizeof(float) * B * H);
    ctx->q = malloc(sizeof(float) * B * H);
    ctx->kv = malloc(sizeof(float) * B * 2 * KV);
    ctx->att = malloc(sizeof(float) * B * H);
    ctx->ffn = malloc(sizeof(float) * B * 2 * I);
    ctx->xq = malloc(B * (H > I ? H : I));
    ctx->xs = malloc(sizeof(float) * B);
    ctx->xsum = malloc(sizeof(int32_t) * B);
    ctx->acc = malloc(sizeof(int32_t) * B * (H + 2 * KV + 2 * I));
    ctx->score_threads = trit_model_threads(m);
    ctx->scores = malloc(sizeof(float) * (size_t)ctx->score_threads * n_ctx);
    if (!ctx->k_cache || !ctx->v_cache || !ctx->x || !ctx->xb || !ctx->q || !ctx->kv || !ctx->att || !ctx->ffn ||
        !ctx->xq || !ctx->xs || !ctx->xsum || !ctx->acc || !ctx->scores)
        goto oom;
    return ctx;
oom:
    trit_context_free(ctx);
    trit_fail(TRIT_E_NOMEM, "context: out of memory for %d positions", n_ctx);
    return NULL;
}

void trit_context_free(trit_context *ctx) {
    if (!ctx) return;
    free(ctx->k_cache);
    free(ctx->v_cache);
    free(ctx->x);
    free(ctx->xb);
    free(ctx->q);
    free(ctx->kv);
    free(ctx->att);
    free(ctx->ffn);
    free(ctx->xq);
    free(ctx->xs);
    free(ctx->xsum);
    free(ctx->acc);
    free(ctx->scores);
    free(ctx);
}

int trit_context_n_past(const trit_context *ctx) { return ctx->n_past; }
int trit_context_n_ctx(const trit_context *ctx) { return ctx->n_ctx; }

int trit_context_truncate(trit_context *ctx, int n_past) {
    if (n_past < 0 || n_past > ctx->n_past)
        return trit_fail(TRIT_E_RANGE, "context: cannot keep %d positions of %d", n_past, ctx->n_past);
    ctx->n_past = n_past; /* later positions are overwritten before they are read again */
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

/* x (+= residual, if given) -> RMSNorm -> int8 with per-token scale. The norm goes to scratch `normed`. */
typedef struct {
    const batch *b;
    float *x;
    const float *residual; /* may be NULL */
    const float *norm;
    int dim;
    float *normed;
} norm_quant_job;

static void run_norm_quant(void *arg, int ith, int nth) {
    norm_quant_job *j = arg;
    const trit_config *c = &j->b->ctx->m->cfg;
    int t0, t1;
    trit_split(j->b->n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        float *x = j->x + (size_t)t * j->dim, *normed = j->normed + (size_t)t * j->dim;
        if (j->residual)
            for (int i = 0; i < j->dim; i++) x[i] += j->residual[(size_t)t * j->dim + i];
        trit_rmsnorm(normed, x, j->norm, j->dim, c->rms_eps);
        int8_t *xq = j->b->ctx->xq + (size_t)t * j->dim;
        j->b->ctx->xs[t] = trit_quantize(xq, normed, j->dim);
        j->b->ctx->xsum[t] = trit_sum_i8(xq, j->dim);
    }
}

/* Up to three BitLinear projections of the same quantised input (q, k, v or gate, up). */
typedef struct {
    const uint8_t *w;
    int rows;
    float scale;
    float *out; /* [n][out_stride], columns from 0 */
    int out_stride;
    int32_t *acc; /* [n][rows] */
} projection;

typedef struct {
    const batch *b;
    int cols;
    int n_proj;
    projection p[3];
} matmul_job;

static void run_matmul(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    trit_context *ctx = j->b->ctx;
    int divide = ctx->m->cfg.scale_mode == TRIT_SCALE_DIVIDE;
    for (int k = 0; k < j->n_proj; k++) {
        const projection *p = &j->p[k];
        int quarter = p->rows / 4, pr0, pr1;
        trit_split(quarter, ith, nth, &pr0, &pr1);
        j->b->kern->ternary_matmul(p->acc, p->w, p->rows, j->cols, ctx->xq, ctx->xsum, j->b->n, pr0, pr1);
        for (int t = 0; t < j->b->n; t++) {
            const int32_t *acc = p->acc + (size_t)t * p->rows;
            float *out = p->out + (size_t)t * p->out_stride, s = ctx->xs[t];
            for (int q = 0; q < 4; q++)
                for (int r = pr0 + q * quarter; r < pr1 + q * quarter; r++)
                    out[r] = divide ? (float)acc[r] / s / p->scale : (float)acc[r] / s * p->scale;
        }
    }
}

static void matmul(const batch *b, int cols, int n_proj, const projection *p) {
    matmul_job j = {b, cols, n_proj, {{0}}};
    int32_t *acc = b->ctx->acc;
    for (int k = 0; k < n_proj; k++) {
        j.p[k] = p[k];
        j.p[k].acc = acc;
        acc += (size_t)b->n * p[k].rows;
    }
    trit_pool_run(b->ctx->m->pool, run_matmul, &j);
}

/* RoPE on the new queries and keys; keys and values into the fp16 cache. */
static void run_rope_store(void *arg, int ith, int nth) {
    const batch *b = arg;
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int KV = kv_dim(c), half = c->head_dim / 2, t0, t1;
    trit_split(b->n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        int pos = b->pos0 + t;
        const float *cs = ctx->m->rope_cos + (size_t)pos * half, *sn = ctx->m->rope_sin + (size_t)pos * half;
        float *k = ctx->kv + (size_t)t * 2 * KV, *v = k + KV;
        trit_rope_apply(ctx->q + (size_t)t * c->hidden_size, c->n_heads, c->head_dim, cs, sn);
        trit_rope_apply(k, c->n_kv_heads, c->head_dim, cs, sn);
        size_t at = ((size_t)b->layer * ctx->n_ctx + pos) * KV;
        for (int i = 0; i < KV; i++) {
            ctx->k_cache[at + i] = trit_f32_to_f16(k[i]);
            ctx->v_cache[at + i] = trit_f32_to_f16(v[i]);
        }
    }
}

/* Causal grouped-query attention: one (token, head) pair per item; query head h reads kv head h / (H / KV). */
static void run_attention(void *arg, int ith, int nth) {
    const batch *b = arg;
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int KV = kv_dim(c), group = c->n_heads / c->n_kv_heads, i0, i1;
    size_t layer_at = (size_t)b->layer * ctx->n_ctx * KV;
    float *scores = ctx->scores + (size_t)ith * ctx->n_ctx;
    trit_split(b->n * c->n_heads, ith, nth, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        int t = i / c->n_heads, h = i % c->n_heads;
        size_t head_at = (size_t)t * c->hidden_size + (size_t)h * c->head_dim;
        size_t kv_at = layer_at + (size_t)(h / group) * c->head_dim;
        trit_attend_head(b->kern, ctx->att + head_at, ctx->q + head_at, ctx->k_cache + kv_at, ctx->v_cache + kv_at, KV,
                         b->pos0 + t + 1, c->head_dim, scores);
    }
}

/* relu(gate)^2 * up, then ffn_sub_norm and quantisation, per token. */
static void run_gate_norm_quant(void *arg, int ith, int nth) {
    const batch *b = arg;
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int I = c->intermediate_size, t0, t1;
    trit_split(b->n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        float *gate = ctx->ffn + (size_t)t * 2 * I, *up = gate + I;
        trit_relu2_gate(gate, gate, up, I);
        trit_rmsnorm(up, gate, ctx->m->layers[b->layer].ffn_sub_norm, I, c->rms_eps);
        ctx->xs[t] = trit_quantize(ctx->xq + (size_t)t * I, up, I);
        ctx->xsum[t] = trit_sum_i8(ctx->xq + (size_t)t * I, I);
    }
}

static void run_pool_job(const batch *b, trit_task_fn fn) { trit_pool_run(b->ctx->m->pool, fn, (void *)b); }

static void norm_quant(const batch *b, float *x, const float *residual, const float *norm, int dim, float *normed) {
    norm_quant_job j = {b, x, residual, norm, dim, normed};
    trit_pool_run(b->ctx->m->pool, run_norm_quant, &j);
}

static void forward_layer(batch *b) {
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    const trit_layer_weights *L = &ctx->m->layers[b->layer];
    int H = c->hidden_size, I = c->intermediate_size, KV = kv_dim(c);

    /* attention block; the previous layer's FFN output (in xb) joins the residual stream here */
    norm_quant(b, ctx->x, b->layer > 0 ? ctx->xb : NULL, L->input_norm, H, ctx->att);
    projection qkv[3] = {
        {L->q, H, L->q_scale, ctx->q, H, NULL},
        {L->k, KV, L->k_scale, ctx->kv, 2 * KV, NULL},
        {L->v, KV, L->v_scale, ctx->kv + KV, 2 * KV, NULL},
    };
    matmul(b, H, 3, qkv);
    run_pool_job(b, run_rope_store);
    run_pool_job(b, run_attention);
    norm_quant(b, ctx->att, NULL, L->attn_sub_norm, H, ctx->att);
    projection o = {L->o, H, L->o_scale, ctx->xb, H, NULL};
    matmul(b, H, 1, &o);

    /* feed-forward block */
    norm_quant(b, ctx->x, ctx->xb, L->post_attn_norm, H, ctx->att);
    projection gate_up[2] = {
        {L->gate, I, L->gate_scale, ctx->ffn, 2 * I, NULL},
        {L->up, I, L->up_scale, ctx->ffn + I, 2 * I, NULL},
    };
    matmul(b, H, 2, gate_up);
    run_pool_job(b, run_gate_norm_quant);
    projection down = {L->down, H, L->down_scale, ctx->xb, H, NULL};
    matmul(b, I, 1, &down);
}

/* Final norm (after the last residual add) and the tied output head, for tokens [first, n). */
typedef struct {
    const batch *b;
    int first;
    float *logits;
} head_job;

static void run_final_norm(void *arg, int ith, int nth) {
    const batch *b = arg;
    trit_context *ctx = b->ctx;
    const trit_config *c = &ctx->m->cfg;
    int H = c->hidden_size, t0, t1;
    trit_split(b->n, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        float *x = ctx->x + (size_t)t * H, *y = ctx->xb + (size_t)t * H;
        for (int i = 0; i < H; i++) x[i] += y[i];
        trit_rmsnorm(y, x, ctx->m->w.final_norm, H, c->rms_eps);
    }
}

static void run_head(void *arg, int ith, int nth) {
    head_job *j = arg;
    const trit_config *c = &j->b->ctx->m->cfg;
    int r0, r1;
    trit_split(c->vocab_size, ith, nth, &r0, &r1);
    j->b->kern->bf16_matmul(j->logits, c->vocab_size, j->b->ctx->m->w.embed, c->hidden_size,
                            j->b->ctx->xb + (size_t)j->first * c->hidden_size, j->b->n - j->first, r0, r1);
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
    run_pool_job(&b, run_final_norm);
    if (logits && first_logit < n) {
        head_job j = {&b, first_logit, logits};
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
    if (trit_pool_size(m->pool) > ctx->score_threads) { /* threads were raised after this context was made */
        float *scores = realloc(ctx->scores, sizeof(float) * (size_t)trit_pool_size(m->pool) * ctx->n_ctx);
        if (!scores) {
            pthread_mutex_unlock(&m->lock);
            return trit_fail(TRIT_E_NOMEM, "eval: out of memory");
        }
        ctx->scores = scores;
        ctx->score_threads = trit_pool_size(m->pool);
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
