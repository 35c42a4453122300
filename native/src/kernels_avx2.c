/* AVX2 kernel (with FMA and F16C). Compiled with -mavx2 -mfma -mf16c, called only when the CPU has them. */
#include <immintrin.h>

#include "trit_internal.h"

static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static inline float hsum_f32(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* W.x = sum(code * x) - sum(x) with code = w + 1 in 0..2: maddubs multiplies unsigned codes by signed int8
 * activations without overflow (|2*128 + 2*128| < 2^15). One packed byte holds four rows at the same column, so
 * one activation load serves four rows; a tile of NT tokens reuses each decoded weight vector NT times. */
static inline __attribute__((always_inline)) void tile(int32_t *out, const uint8_t *row, int rows, int cols,
                                                       const int8_t *xq, const int32_t *xsum, int t0, int nt, int pr) {
    const __m256i mask = _mm256_set1_epi8(3), ones16 = _mm256_set1_epi16(1);
    const int vec_end = cols & ~31, quarter = rows / 4;
    __m256i acc[4][2];
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < nt; i++) acc[j][i] = _mm256_setzero_si256();
    for (int c = 0; c < vec_end; c += 32) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(row + c));
        __m256i code[4] = {_mm256_and_si256(b, mask), _mm256_and_si256(_mm256_srli_epi16(b, 2), mask),
                           _mm256_and_si256(_mm256_srli_epi16(b, 4), mask), _mm256_and_si256(_mm256_srli_epi16(b, 6), mask)};
        for (int i = 0; i < nt; i++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + (size_t)(t0 + i) * cols + c));
            for (int j = 0; j < 4; j++)
                acc[j][i] = _mm256_add_epi32(acc[j][i], _mm256_madd_epi16(_mm256_maddubs_epi16(code[j], xv), ones16));
        }
    }
    for (int i = 0; i < nt; i++) {
        const int8_t *x = xq + (size_t)(t0 + i) * cols;
        int32_t sum[4];
        for (int j = 0; j < 4; j++) sum[j] = hsum_i32(acc[j][i]) - xsum[t0 + i];
        for (int c = vec_end; c < cols; c++)
            for (int j = 0; j < 4; j++) sum[j] += (int32_t)((row[c] >> (2 * j)) & 3) * x[c];
        for (int j = 0; j < 4; j++) out[(size_t)(t0 + i) * rows + pr + j * quarter] = sum[j];
    }
}

#define TOKEN_BLOCK 64 /* activations of a block stay in L2 while every row of the share streams past */

static void ternary_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                           const int32_t *xsum, int n_tokens, int pr0, int pr1) {
    for (int tb = 0; tb < n_tokens; tb += TOKEN_BLOCK) {
        int te = tb + TOKEN_BLOCK < n_tokens ? tb + TOKEN_BLOCK : n_tokens;
        for (int pr = pr0; pr < pr1; pr++) {
            const uint8_t *row = packed + (size_t)pr * cols;
            int t = tb;
            for (; t + 2 <= te; t += 2) tile(out, row, rows, cols, xq, xsum, t, 2, pr);
            if (t < te) tile(out, row, rows, cols, xq, xsum, t, 1, pr);
        }
    }
}

static inline __m256 load_bf16x8(const uint16_t *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

static void bf16_matmul(float *out, int out_stride, const uint16_t *w, int cols, const float *x, int n_tokens, int r0,
                        int r1) {
    const int vec_end = cols & ~15;
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            __m256 s0 = _mm256_setzero_ps(), s1 = s0;
            for (int c = 0; c < vec_end; c += 16) {
                s0 = _mm256_fmadd_ps(load_bf16x8(row + c), _mm256_loadu_ps(xt + c), s0);
                s1 = _mm256_fmadd_ps(load_bf16x8(row + c + 8), _mm256_loadu_ps(xt + c + 8), s1);
            }
            float sum = hsum_f32(_mm256_add_ps(s0, s1));
            for (int c = vec_end; c < cols; c++) sum += trit_bf16_to_f32(row[c]) * xt[c];
            out[(size_t)t * out_stride + r] = sum;
        }
    }
}

static float dot_f16(const uint16_t *a, const float *b, int n) {
    __m256 s = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        s = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), s);
    float sum = hsum_f32(s);
    for (; i < n; i++) sum += trit_f16_to_f32(a[i]) * b[i];
    return sum;
}

static void axpy_f16(float *y, float alpha, const uint16_t *x, int n) {
    __m256 va = _mm256_set1_ps(alpha);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] += alpha * trit_f16_to_f32(x[i]);
}

const trit_kernel trit_kernel_avx2 = {"avx2", trit_cpu_has_avx2, ternary_matmul, bf16_matmul, dot_f16, axpy_f16};
