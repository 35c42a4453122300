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
    return trit_op_attention_kv(out, q, k, v, n_q, pos0, n_heads, n_kv_heads, head_dim, TRIT_KV_F16, 0);
}

int trit_op_attention_kv(float *out, const float *q, const float *k, const float *v, int n_q, int pos0, int n_heads,
                         int n_kv_heads, int head_dim, int kv_type, int split) {
    if (n_q <= 0 || pos0 < 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || head_dim <= 0)
        return trit_fail(TRIT_E_INVALID, "attention: bad sizes");
    if (n_heads > TRIT_MAX_HEADS || head_dim > TRIT_MAX_HEAD_DIM || n_q > TRIT_MAX_POSITIONS ||
        pos0 > TRIT_MAX_POSITIONS - n_q) /* so that the positions and the cache's size below fit an int */
        return trit_fail(TRIT_E_INVALID, "attention: sizes past trit.h's TRIT_MAX_*");
    if ((kv_type != TRIT_KV_F16 && kv_type != TRIT_KV_F32 && kv_type != TRIT_KV_Q8) || split < 0 ||
        split % TRIT_KEY_BLOCK || (split && n_q != 1))
        return trit_fail(TRIT_E_INVALID, "attention: bad KV type or split");
    const trit_kernel *kern = trit_active_kernel();
    int n_keys = pos0 + n_q, kv = n_kv_heads * head_dim, group = n_heads / n_kv_heads;
    int span = trit_key_blocks(n_keys) * TRIT_KEY_BLOCK; /* positions a head's cache holds: whole key blocks */
    int chunks = split ? trit_attend_chunks(n_keys, split) : 1;
    size_t cells = (size_t)span * kv, size = trit_kv_type_size(kv_type);
    /* the cache's layout: [kv head][span][head_dim], keys in blocks (trit_key_index) */
    char *kh = calloc(cells, size), *vh = calloc(cells, size);
    float *ks = calloc((size_t)span * n_kv_heads, sizeof(float)),
          *vs = calloc((size_t)span * n_kv_heads, sizeof(float));
    float *scratch = malloc(sizeof(float) * TRIT_ATTEND_SCRATCH(n_keys, head_dim, group));
    float *partial = malloc(sizeof(float) * (size_t)chunks * group * (head_dim + 1)), *lse = partial;
    int8_t *row = malloc((size_t)head_dim);
    if (!kh || !vh || !ks || !vs || !scratch || !partial || !row) {
        free(kh), free(vh), free(ks), free(vs), free(scratch), free(partial), free(row);
        return trit_fail(TRIT_E_NOMEM, "attention: out of memory");
    }
    for (int p = 0; p < n_keys; p++)
        for (int g = 0; g < n_kv_heads; g++) { /* stored as the engine stores them (model.c: store_kv) */
            size_t from = (size_t)p * kv + (size_t)g * head_dim, head = (size_t)g * span * head_dim;
            if (kv_type == TRIT_KV_Q8) {
                trit_quantize_kv(row, ks + (size_t)g * span + p, k + from, head_dim);
                for (int d = 0; d < head_dim; d++) ((int8_t *)kh)[head + trit_key_index(p, d, head_dim)] = row[d];
                trit_quantize_kv((int8_t *)vh + head + (size_t)p * head_dim, vs + (size_t)g * span + p, v + from,
                                 head_dim);
            } else
                for (int d = 0; d < head_dim; d++) {
                    size_t key_at = head + trit_key_index(p, d, head_dim), value_at = head + (size_t)p * head_dim + d;
                    if (kv_type == TRIT_KV_F32) {
                        ((float *)kh)[key_at] = k[from + d];
                        ((float *)vh)[value_at] = v[from + d];
                    } else {
                        ((uint16_t *)kh)[key_at] = trit_f32_to_f16(k[from + d]);
                        ((uint16_t *)vh)[value_at] = trit_f32_to_f16(v[from + d]);
                    }
                }
        }
    lse = partial + (size_t)chunks * group * head_dim;
    for (int g = 0; g < n_kv_heads; g++) {
        size_t at = (size_t)g * group * head_dim, kv_at = (size_t)g * span * head_dim * size;
        trit_kv_head whole = {kv_type, kh + kv_at, vh + kv_at, ks + (size_t)g * span, vs + (size_t)g * span};
        if (!split) {
            trit_attend_kv(kern, out + at, NULL, q + at, n_heads * head_dim, &whole, n_q, pos0, head_dim, group,
                           scratch);
            continue;
        }
        for (int c = 0; c < chunks; c++) { /* as model.c's attend_split, one chunk after another */
            int k0 = c * split, nk = n_keys - k0 < split ? n_keys - k0 : split;
            trit_kv_head part = trit_kv_head_from(&whole, k0, head_dim);
            trit_attend_kv(kern, partial + (size_t)c * group * head_dim, lse + (size_t)c * group, q + at,
                           n_heads * head_dim, &part, 1, nk - 1, head_dim, group, scratch);
        }
        trit_attend_combine(out + at, partial, lse, chunks, group, head_dim);
    }
    free(kh), free(vh), free(ks), free(vs), free(scratch), free(partial), free(row);
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
