/* The single operations of a BitNet b1.58 forward pass, in plain C: each is the definition, written to be read. */
#include <math.h>
#include <string.h>

#include "trit_internal.h"

float trit_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: renormalise */
        exp = 113;
        while (!(mant & 0x400)) {
            mant <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
    union {
        uint32_t u;
        float f;
    } v = {bits};
    return v.f;
}

/* Round to nearest even, as F16C's vcvtps2ph does, so every kernel stores the same cache bits. */
uint16_t trit_f32_to_f16(float f) {
    union {
        float f;
        uint32_t u;
    } v = {f};
    uint32_t x = v.u, sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: overflow */
    /* below the smallest normal half: subnormal or zero */
    if (absx < 0x38800000) {
        if (absx < 0x33000000) return (uint16_t)sign;
        uint32_t mant = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23); /* 14..24 */
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((absx >> 13) - (112u << 10));
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

/* RMSNorm in fp32: out = x / sqrt(mean(x^2) + eps) * weight. */
void trit_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/* Per-token int8 activation quantisation: s = 127 / max|x|, xq = round_half_even(x * s) clamped to int8. */
float trit_quantize(int8_t *xq, const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    /* 127 * (1 / max), not 127 / max: torch evaluates a scalar over a tensor that way, and the two differ in the
     * last bit for about a quarter of all rows; a different s would round some ties differently. */
    float s = 127.0f * (1.0f / (amax > 1e-5f ? amax : 1e-5f));
    for (int i = 0; i < n; i++) {
        float r = nearbyintf(x[i] * s); /* default rounding mode: to nearest, ties to even */
        xq[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -128.0f ? -128.0f : r));
    }
    return s;
}

int32_t trit_sum_i8(const int8_t *x, int n) {
    int32_t sum = 0;
    for (int i = 0; i < n; i++) sum += x[i];
    return sum;
}

/* RoPE angles for one position, as transformers computes them: inv_freq and the angle in fp32. */
void trit_rope_angles(float *cos_out, float *sin_out, int head_dim, int pos, float theta) {
    for (int i = 0; i < head_dim / 2; i++) {
        /* torch's float pow is correctly rounded; powf is not always, so round a double pow instead */
        float exponent = (float)(2 * i) / (float)head_dim;
        float inv_freq = 1.0f / (float)pow((double)theta, (double)exponent);
        float angle = (float)pos * inv_freq;
        cos_out[i] = cosf(angle);
        sin_out[i] = sinf(angle);
    }
}

/* RoPE with Llama's rotate_half pairing: element i turns with element i + head_dim/2. */
void trit_rope_apply(float *x, int n_heads, int head_dim, const float *cos_pos, const float *sin_pos) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cos_pos[i] - b * sin_pos[i];
            v[i + half] = b * cos_pos[i] + a * sin_pos[i];
        }
    }
}

trit_kv_head trit_kv_head_from(const trit_kv_head *kv, int k0, int head_dim) {
    size_t at = (size_t)k0 * (size_t)head_dim * trit_kv_type_size(kv->type); /* bytes: keys and values alike */
    trit_kv_head from = {kv->type, (const char *)kv->keys + at, (const char *)kv->values + at,
                         kv->key_scales ? kv->key_scales + k0 : NULL, kv->value_scales ? kv->value_scales + k0 : NULL};
    return from;
}

void trit_attend_kv(const trit_kernel *kern, float *out, float *lse, const float *q, int q_stride,
                    const trit_kv_head *kv, int n_q, int n_keys0, int head_dim, int group, float *scratch) {
    if (kv->type == TRIT_KV_F16) {
        if (n_q == 1)
            kern->attend(out, q, kv->keys, kv->values, head_dim, n_keys0 + 1, head_dim, group, scratch, lse);
        else if (n_q > 1)
            kern->attend_tokens(out, q, q_stride, kv->keys, kv->values, n_q, n_keys0, head_dim, group, scratch);
        return;
    }
    float own[TRIT_MAX_HEADS]; /* an lse nobody asked for */
    for (int i = 0; i < n_q; i++) {
        float *o = out + (size_t)i * q_stride, *l = lse && n_q == 1 ? lse : own;
        const float *qi = q + (size_t)i * q_stride;
        if (kv->type == TRIT_KV_F32)
            kern->attend_f32(o, l, qi, kv->keys, kv->values, n_keys0 + i + 1, head_dim, group, scratch);
        else
            kern->attend_q8(o, l, qi, kv->keys, kv->key_scales, kv->values, kv->value_scales, n_keys0 + i + 1, head_dim,
                            group, scratch);
    }
}

void trit_attend_combine(float *out, const float *partial, const float *lse, int n_chunks, int group, int head_dim) {
    for (int h = 0; h < group; h++) {
        float top = -INFINITY, total = 0.0f;
        for (int c = 0; c < n_chunks; c++) top = fmaxf(top, lse[c * group + h]);
        float *o = out + (size_t)h * head_dim;
        memset(o, 0, sizeof(float) * (size_t)head_dim);
        for (int c = 0; c < n_chunks; c++) {
            float w = expf(lse[c * group + h] - top);
            const float *p = partial + ((size_t)c * group + h) * head_dim;
            total += w;
            for (int d = 0; d < head_dim; d++) o[d] += w * p[d];
        }
        for (int d = 0; d < head_dim; d++) o[d] /= total;
    }
}

void trit_quantize_kv(int8_t *dst, float *scale, const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < n; i++) {
        float r = nearbyintf(x[i] * inv);
        dst[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
    *scale = amax / 127.0f;
}

void trit_attend_each_token(void (*attend)(float *out, const float *q, const uint16_t *keys, const uint16_t *values,
                                           int kv_stride, int n_keys, int head_dim, int group, float *scores,
                                           float *lse),
                            float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                            int n_q, int n_keys0, int head_dim, int group, float *scratch) {
    for (int i = 0; i < n_q; i++)
        attend(out + (size_t)i * q_stride, q + (size_t)i * q_stride, keys, values, head_dim, n_keys0 + i + 1, head_dim,
               group, scratch, NULL);
}

/* softmax(q . K^T / sqrt(hd)) . V for one head over n_keys cached positions. Each score sums q[d] * k[d] in the
 * order of d, a block of keys at a time (their dimension d is one contiguous row of the block). */
void trit_attend_head(const trit_kernel *kern, float *out, const float *q, const uint16_t *keys, const uint16_t *values,
                      int kv_stride, int n_keys, int head_dim, float *scores, float *lse) {
    float scale = 1.0f / sqrtf((float)head_dim);
    float max = -INFINITY;
    for (int k0 = 0; k0 < n_keys; k0 += TRIT_KEY_BLOCK) {
        float acc[TRIT_KEY_BLOCK] = {0};
        const uint16_t *block = keys + trit_key_index(k0, 0, head_dim);
        for (int d = 0; d < head_dim; d++)
            kern->axpy_f16(acc, q[d], block + (size_t)d * TRIT_KEY_BLOCK, TRIT_KEY_BLOCK);
        for (int k = k0; k < n_keys && k < k0 + TRIT_KEY_BLOCK; k++) {
            scores[k] = acc[k - k0] * scale;
            if (scores[k] > max) max = scores[k];
        }
    }
    float sum = 0.0f;
    for (int p = 0; p < n_keys; p++) {
        scores[p] = expf(scores[p] - max);
        sum += scores[p];
    }
    float inv = 1.0f / sum;
    if (lse) *lse = max + logf(sum);
    memset(out, 0, sizeof(float) * (size_t)head_dim);
    for (int p = 0; p < n_keys; p++) kern->axpy_f16(out, scores[p] * inv, values + (size_t)p * kv_stride, head_dim);
}

void trit_q4_split_x(int8_t *a, int8_t *b, float *block_x, float *s2, const float *x, int cols, int pair_order) {
    float amax = 0.0f;
    for (int i = 0; i < cols; i++) amax = fmaxf(amax, fabsf(x[i]));
    float s1 = amax > 0.0f ? amax / 127.0f : 1.0f;
    *s2 = s1 / 256.0f;
    for (int blk = 0; blk < cols / TRIT_Q4_BLOCK; blk++) {
        int32_t sum = 0;
        for (int i = blk * TRIT_Q4_BLOCK; i < (blk + 1) * TRIT_Q4_BLOCK; i++) {
            float hi = nearbyintf(x[i] / s1), lo = nearbyintf((x[i] - hi * s1) / *s2);
            int at = pair_order ? (i & ~127) + ((i & 32) << 1) + ((i & 64) >> 1) + (i & 31) : i;
            a[at] = (int8_t)hi;
            b[at] = (int8_t)(lo > 127.0f ? 127.0f : (lo < -128.0f ? -128.0f : lo));
            sum += 256 * a[at] + b[at];
        }
        block_x[blk] = 8.0f * (float)sum;
    }
}
