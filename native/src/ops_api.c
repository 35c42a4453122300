/* The single operations exported for tests: thin, checked wrappers over what the forward pass calls. */
#include <limits.h>
#include <stdlib.h>

#include "trit_internal.h"

void trit_op_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    trit_active_kernel()->rmsnorm(out, x, weight, n, eps);
}

float trit_op_quantize(int8_t *xq, const float *x, int n) {
    int32_t sum;
    return trit_active_kernel()->quantize(xq, &sum, x, n);
}

int trit_op_ternary_matmul(int kernel_index, int format, int32_t *out, const uint8_t *packed, int rows, int cols,
                           const int8_t *xq, int n_tokens) {
    const trit_kernel *k = trit_kernel_at(kernel_index);
    if (!k) return trit_fail(TRIT_E_INVALID, "no kernel %d", kernel_index);
    if (!k->supported()) return trit_fail(TRIT_E_UNSUPPORTED, "kernel %s is not supported by this CPU", k->name);
    if (format == TRIT_TERNARY_T5 && !trit_kernel_has_t5(k))
        return trit_fail(TRIT_E_UNSUPPORTED, "kernel %s does not run the T5 format", k->name);
    if (format != TRIT_TERNARY_TQ2 && format != TRIT_TERNARY_T5) return trit_fail(TRIT_E_INVALID, "unknown format");
    if (rows <= 0 || rows % 4 || cols <= 0 || n_tokens <= 0)
        return trit_fail(TRIT_E_INVALID, "matmul: rows must be a positive multiple of 4, cols and tokens positive");
    int32_t *xsum = malloc(sizeof(int32_t) * (size_t)n_tokens);
    if (!xsum) return trit_fail(TRIT_E_NOMEM, "matmul: out of memory");
    for (int t = 0; t < n_tokens; t++) xsum[t] = trit_sum_i8(xq + (size_t)t * cols, cols);
    if (format == TRIT_TERNARY_T5)
        k->t5_matmul(out, packed, rows, cols, xq, xsum, n_tokens, 0, trit_t5_groups(rows));
    else
        k->ternary_matmul(out, packed, rows, cols, xq, xsum, n_tokens, 0, rows / 4);
    free(xsum);
    return TRIT_OK;
}

void trit_op_rope(float *x, int n_heads, int head_dim, int pos, float theta) {
    if (n_heads <= 0 || head_dim <= 0 || head_dim % 2) {
        trit_fail(TRIT_E_INVALID, "rope: heads must be positive, head_dim positive and even");
        return;
    }
    float *cs = malloc(sizeof(float) * (size_t)head_dim);
    if (!cs) return;
    trit_rope_angles(cs, cs + head_dim / 2, head_dim, pos, theta);
    trit_rope_apply(x, n_heads, head_dim, cs, cs + head_dim / 2);
    free(cs);
}

int trit_op_attention(float *out, const float *q, const float *k, const float *v, int n_q, int pos0, int n_heads,
                      int n_kv_heads, int head_dim) {
    if (n_q <= 0 || pos0 < 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || head_dim <= 0)
        return trit_fail(TRIT_E_INVALID, "attention: bad sizes");
    if (n_heads > TRIT_MAX_HEADS || head_dim > TRIT_MAX_HEAD_DIM || n_q > TRIT_MAX_POSITIONS ||
        pos0 > TRIT_MAX_POSITIONS - n_q) /* so that the positions and the cache's size below fit an int */
        return trit_fail(TRIT_E_INVALID, "attention: sizes past trit.h's TRIT_MAX_*");
    const trit_kernel *kern = trit_active_kernel();
    int n_keys = pos0 + n_q, kv = n_kv_heads * head_dim, group = n_heads / n_kv_heads;
    int span = trit_key_blocks(n_keys) * TRIT_KEY_BLOCK; /* positions a head's cache holds: whole key blocks */
    size_t cells = (size_t)span * kv;
    /* the cache's layout: [kv head][span][head_dim], keys in blocks (trit_key_index) */
    uint16_t *kh = calloc(cells, sizeof(uint16_t)), *vh = calloc(cells, sizeof(uint16_t));
    float *scratch = malloc(sizeof(float) * TRIT_ATTEND_SCRATCH(n_keys, head_dim, group));
    if (!kh || !vh || !scratch) {
        free(kh), free(vh), free(scratch);
        return trit_fail(TRIT_E_NOMEM, "attention: out of memory");
    }
    for (int p = 0; p < n_keys; p++)
        for (int g = 0; g < n_kv_heads; g++)
            for (int d = 0; d < head_dim; d++) {
                size_t from = (size_t)p * kv + (size_t)g * head_dim + d, head = (size_t)g * span * head_dim;
                kh[head + trit_key_index(p, d, head_dim)] = trit_f32_to_f16(k[from]);
                vh[head + (size_t)p * head_dim + d] = trit_f32_to_f16(v[from]);
            }
    for (int g = 0; g < n_kv_heads; g++) {
        size_t at = (size_t)g * group * head_dim, kv_at = (size_t)g * span * head_dim;
        trit_attend_tokens(kern, out + at, q + at, n_heads * head_dim, kh + kv_at, vh + kv_at, n_q, pos0, head_dim,
                           group, scratch);
    }
    free(kh), free(vh), free(scratch);
    return TRIT_OK;
}

void trit_op_silu_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    trit_active_kernel()->silu_sums(out, gate, fg, up, fu, n);
}

void trit_op_relu2_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    trit_active_kernel()->relu2_sums(out, gate, fg, up, fu, n);
}

void trit_op_scale_sums(float *out, const int32_t *acc, float f, int n, int add) {
    trit_active_kernel()->scale_sums(out, acc, f, n, add);
}

void trit_op_to_f16(uint16_t *dst, const float *src, int n) { trit_active_kernel()->to_f16(dst, src, n); }

int trit_op_output_head(int head_type, float *logits, const float *x, const void *head, const void *scales, int vocab,
                        int hidden) {
    if (vocab <= 0 || hidden <= 0 || (head_type == TRIT_HEAD_Q4 && hidden % TRIT_Q4_GROUP) ||
        (head_type != TRIT_HEAD_BF16 && !scales) || head_type < TRIT_HEAD_BF16 || head_type > TRIT_HEAD_Q4)
        return trit_fail(TRIT_E_INVALID, "output head: bad arguments");
    trit_output_head(trit_active_kernel(), head_type, head, scales, logits, vocab, hidden, x, 1, 0, vocab);
    return TRIT_OK;
}
