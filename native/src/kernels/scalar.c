/* The scalar kernel: the readable definition every SIMD kernel is tested against. */
#include <math.h>

#include "trit_internal.h"

/* Each packed byte holds four weights of four rows a quarter of the matrix apart; code = w + 1. */
static void ternary_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                           const int32_t *xsum, int n_tokens, int pr0, int pr1) {
    (void)xsum; /* the definition multiplies by w itself */
    int quarter = rows / 4;
    for (int pr = pr0; pr < pr1; pr++) {
        const uint8_t *row = packed + (size_t)pr * cols;
        for (int t = 0; t < n_tokens; t++) {
            const int8_t *x = xq + (size_t)t * cols;
            int32_t acc[4] = {0, 0, 0, 0};
            for (int c = 0; c < cols; c++) {
                uint8_t b = row[c];
                for (int j = 0; j < 4; j++) acc[j] += ((int32_t)((b >> (2 * j)) & 3) - 1) * x[c];
            }
            for (int j = 0; j < 4; j++) out[(size_t)t * rows + pr + j * quarter] = acc[j];
        }
    }
}

/* T5: five rows G apart share a byte, their codes d = w + 1 as the base-3 digits of the byte. */
static void t5_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                      int n_tokens, int g0, int g1) {
    (void)xsum;
    int groups = trit_t5_groups(rows);
    for (int g = g0; g < g1; g++) {
        const uint8_t *row = packed + (size_t)g * cols;
        for (int t = 0; t < n_tokens; t++) {
            const int8_t *x = xq + (size_t)t * cols;
            int32_t acc[5] = {0, 0, 0, 0, 0};
            for (int c = 0; c < cols; c++) {
                int b = row[c];
                for (int j = 0; j < 5; j++, b /= 3) acc[j] += (b % 3 - 1) * x[c];
            }
            for (int j = 0; j < 5; j++)
                if (g + j * groups < rows) out[(size_t)t * rows + g + j * groups] = acc[j];
        }
    }
}

static void bf16_matmul(float *out, int out_stride, const uint16_t *w, int cols, const float *x, int n_tokens, int r0,
                        int r1) {
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            float sum = 0.0f;
            for (int c = 0; c < cols; c++) sum += trit_bf16_to_f32(row[c]) * xt[c];
            out[(size_t)t * out_stride + r] = sum;
        }
    }
}

static void q8_matmul(float *out, int out_stride, const int8_t *w, const float *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        const int8_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            float sum = 0.0f;
            for (int c = 0; c < cols; c++) sum += (float)row[c] * xt[c];
            out[(size_t)t * out_stride + r] = scales[r] * sum;
        }
    }
}

/* Column c of a row: in group c / 64, byte c % 32, low nibble if c % 64 < 32; scale index c / 32. */
static void q4_matmul(float *out, int out_stride, const uint8_t *w, const uint16_t *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * cols / 2;
        const uint16_t *row_scales = scales + (size_t)r * cols / TRIT_Q4_BLOCK;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            float sum = 0.0f;
            for (int blk = 0; blk < cols / TRIT_Q4_BLOCK; blk++) {
                float block_sum = 0.0f;
                for (int c = blk * TRIT_Q4_BLOCK; c < (blk + 1) * TRIT_Q4_BLOCK; c++) {
                    uint8_t byte = row[c / TRIT_Q4_GROUP * 32 + c % 32];
                    int q = c % TRIT_Q4_GROUP < 32 ? byte & 15 : byte >> 4;
                    block_sum += (float)(q - 8) * xt[c];
                }
                sum += trit_f16_to_f32(row_scales[blk]) * block_sum;
            }
            out[(size_t)t * out_stride + r] = sum;
        }
    }
}

static void axpy_f16(float *y, float alpha, const uint16_t *x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * trit_f16_to_f32(x[i]);
}

static float quantize(int8_t *xq, int32_t *sum, const float *x, int n) {
    float s = trit_quantize(xq, x, n);
    *sum = trit_sum_i8(xq, n);
    return s;
}

static void attend(float *out, const float *q, const uint16_t *keys, const uint16_t *values, int kv_stride, int n_keys,
                   int head_dim, int group, float *scores, float *lse) {
    for (int h = 0; h < group; h++)
        trit_attend_head(&trit_kernel_scalar, out + (size_t)h * head_dim, q + (size_t)h * head_dim, keys, values,
                         kv_stride, n_keys, head_dim, scores, lse ? lse + h : NULL);
}

/* The definition of prefill: the tokens one after another. */
static void attend_tokens(float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                          int n_q, int n_keys0, int head_dim, int group, float *scratch) {
    trit_attend_each_token(attend, out, q, q_stride, keys, values, n_q, n_keys0, head_dim, group, scratch);
}

/* scores[k] = exp(scores[k] - max) / sum, in key order; returns log(sum of exp(scores)) as they came. */
static float softmax(float *scores, int n) {
    float max = -INFINITY, sum = 0.0f;
    for (int k = 0; k < n; k++) max = scores[k] > max ? scores[k] : max;
    for (int k = 0; k < n; k++) {
        scores[k] = expf(scores[k] - max);
        sum += scores[k];
    }
    float inv = 1.0f / sum;
    for (int k = 0; k < n; k++) scores[k] *= inv;
    return max + logf(sum);
}

/* The other cache types, head by head as trit_attend_head: each score sums q[d] * k[d] in the order of d. */
static void attend_f32(float *out, float *lse, const float *q, const float *keys, const float *values, int n_keys,
                       int head_dim, int group, float *scratch) {
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int h = 0; h < group; h++) {
        const float *qh = q + (size_t)h * head_dim;
        float *o = out + (size_t)h * head_dim;
        for (int k = 0; k < n_keys; k++) {
            float s = 0.0f;
            for (int d = 0; d < head_dim; d++) s += qh[d] * keys[trit_key_index(k, d, head_dim)];
            scratch[k] = s * scale;
        }
        lse[h] = softmax(scratch, n_keys);
        for (int d = 0; d < head_dim; d++) o[d] = 0.0f;
        for (int k = 0; k < n_keys; k++)
            for (int d = 0; d < head_dim; d++) o[d] += scratch[k] * values[(size_t)k * head_dim + d];
    }
}

/* The scales multiply a key's whole dot product and a value's weight, so the sums are over the int8 elements. */
static void attend_q8(float *out, float *lse, const float *q, const int8_t *keys, const float *key_scales,
                      const int8_t *values, const float *value_scales, int n_keys, int head_dim, int group,
                      float *scratch) {
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int h = 0; h < group; h++) {
        const float *qh = q + (size_t)h * head_dim;
        float *o = out + (size_t)h * head_dim;
        for (int k = 0; k < n_keys; k++) {
            float s = 0.0f;
            for (int d = 0; d < head_dim; d++) s += qh[d] * (float)keys[trit_key_index(k, d, head_dim)];
            scratch[k] = s * key_scales[k] * scale;
        }
        lse[h] = softmax(scratch, n_keys);
        for (int d = 0; d < head_dim; d++) o[d] = 0.0f;
        for (int k = 0; k < n_keys; k++) {
            float p = scratch[k] * value_scales[k];
            for (int d = 0; d < head_dim; d++) o[d] += p * (float)values[(size_t)k * head_dim + d];
        }
    }
}

static void scale_sums(float *out, const int32_t *acc, float f, int n, int add) {
    for (int i = 0; i < n; i++) out[i] = add ? out[i] + (float)acc[i] * f : (float)acc[i] * f;
}

/* BitNet's FFN activation (relu squared) times the up projection, straight from the two matmuls' sums */
static void relu2_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    for (int i = 0; i < n; i++) {
        float g = (float)gate[i] * fg;
        g = g > 0.0f ? g : 0.0f;
        out[i] = g * g * ((float)up[i] * fu);
    }
}

/* silu in float as torch computes it: g * sigmoid(g), sigmoid(g) = 1 / (1 + exp(-g)). One definition for every
 * kernel: the FFN activation costs little next to the matmuls around it. */
static void silu_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    for (int i = 0; i < n; i++) {
        float g = (float)gate[i] * fg;
        out[i] = g / (1.0f + expf(-g)) * ((float)up[i] * fu);
    }
}

static void to_f16(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = trit_f32_to_f16(src[i]);
}

static int always(void) { return 1; }

const trit_kernel trit_kernel_scalar = {
    .name = "scalar",
    .supported = always,
    .ternary_matmul = ternary_matmul,
    .t5_matmul = t5_matmul,
    .bf16_matmul = bf16_matmul,
    .q8_matmul = q8_matmul,
    .q4_matmul = q4_matmul,
    .quantize = quantize,
    .attend = attend,
    .attend_tokens = attend_tokens,
    .attend_f32 = attend_f32,
    .attend_q8 = attend_q8,
    .scale_sums = scale_sums,
    .relu2_sums = relu2_sums,
    .silu_sums = silu_sums,
    .rmsnorm = trit_rmsnorm,
    .to_f16 = to_f16,
    .axpy_f16 = axpy_f16,
};
