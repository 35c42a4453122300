/* AVX-512 kernel with VNNI (vpdpbusd: 64 unsigned x signed byte products summed into 16 int32 lanes per
 * instruction). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only when the CPU has them. */
#include <immintrin.h>

#include "trit_internal.h"

/* W.x = sum(code * x) - sum(x), code = w + 1 in 0..2 (unsigned operand), x the int8 activations (signed).
 * Each 64-byte load holds four rows at the same 64 columns: one activation load serves four vpdpbusd, and a tile of
 * 4 tokens reuses each decoded weight vector four times (prefill; 16 accumulators fit the 32 registers). Columns past the last full 64 use masked loads,
 * whose zero bytes add nothing. The accumulators are named registers: an array would be spilled to the stack. */
#define DECODE(b)                                                                                                 \
    __m512i c0 = _mm512_and_si512(b, mask), c1 = _mm512_and_si512(_mm512_srli_epi16(b, 2), mask),                  \
            c2 = _mm512_and_si512(_mm512_srli_epi16(b, 4), mask), c3 = _mm512_and_si512(_mm512_srli_epi16(b, 6), mask)
/* acc += dot(u8 a, s8 b) in place. The intrinsic makes GCC 12 copy the accumulator around every instruction. */
static inline __attribute__((always_inline)) void dpbusd(__m512i *acc, __m512i a, __m512i b) {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(*acc) : "v"(a), "v"(b));
#else
    *acc = _mm512_dpbusd_epi32(*acc, a, b);
#endif
}

#define ACC_DECL(i) __m512i a0_##i = _mm512_setzero_si512(), a1_##i = a0_##i, a2_##i = a0_##i, a3_##i = a0_##i;
#define ACC_STEP(i, load)                                                                                         \
    {                                                                                                             \
        __m512i xv = load;                                                                                        \
        dpbusd(&a0_##i, c0, xv);                                                                   \
        dpbusd(&a1_##i, c1, xv);                                                                   \
        dpbusd(&a2_##i, c2, xv);                                                                   \
        dpbusd(&a3_##i, c3, xv);                                                                   \
    }
#define ACC_FULL(i) ACC_STEP(i, _mm512_loadu_si512(x + (size_t)(i) * cols + c))
#define ACC_TAIL(i) ACC_STEP(i, _mm512_maskz_loadu_epi8(live, x + (size_t)(i) * cols + c))
#define ACC_STORE(i)                                                                                              \
    {                                                                                                             \
        int32_t *o = out + (size_t)(t0 + i) * rows + pr, s = xsum[t0 + i];                                        \
        o[0] = _mm512_reduce_add_epi32(a0_##i) - s;                                                               \
        o[quarter] = _mm512_reduce_add_epi32(a1_##i) - s;                                                         \
        o[2 * quarter] = _mm512_reduce_add_epi32(a2_##i) - s;                                                     \
        o[3 * quarter] = _mm512_reduce_add_epi32(a3_##i) - s;                                                     \
    }

#define DEFINE_TILE(NAME, EACH)                                                                                   \
    static __attribute__((noinline)) void NAME(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, const int32_t *xsum, \
                     int t0, int pr) {                                                                            \
        const __m512i mask = _mm512_set1_epi8(3);                                                                 \
        const int quarter = rows / 4, full = cols & ~63;                                                          \
        const int8_t *x = xq + (size_t)t0 * cols;                                                                 \
        EACH(ACC_DECL)                                                                                            \
        int c = 0;                                                                                                \
        for (; c < full; c += 64) {                                                                               \
            __m512i b = _mm512_loadu_si512(row + c);                                                              \
            DECODE(b);                                                                                            \
            EACH(ACC_FULL)                                                                                        \
        }                                                                                                         \
        if (c < cols) {                                                                                           \
            __mmask64 live = ((__mmask64)1 << (cols - c)) - 1;                                                    \
            __m512i b = _mm512_maskz_loadu_epi8(live, row + c);                                                   \
            DECODE(b);                                                                                            \
            EACH(ACC_TAIL)                                                                                        \
        }                                                                                                         \
        EACH(ACC_STORE)                                                                                           \
    }

#define EACH1(F) F(0)
#define EACH2(F) F(0) F(1)
#define EACH4(F) F(0) F(1) F(2) F(3)
DEFINE_TILE(tile1, EACH1)
DEFINE_TILE(tile2, EACH2)
DEFINE_TILE(tile4, EACH4)

#define TOKEN_BLOCK 64 /* activations of a block stay in L2 while every row of the share streams past */

static void ternary_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                           const int32_t *xsum, int n_tokens, int pr0, int pr1) {
    for (int tb = 0; tb < n_tokens; tb += TOKEN_BLOCK) {
        int te = tb + TOKEN_BLOCK < n_tokens ? tb + TOKEN_BLOCK : n_tokens;
        for (int pr = pr0; pr < pr1; pr++) {
            const uint8_t *row = packed + (size_t)pr * cols;
            int t = tb;
            for (; t + 4 <= te; t += 4) tile4(out, row, rows, cols, xq, xsum, t, pr);
            for (; t + 2 <= te; t += 2) tile2(out, row, rows, cols, xq, xsum, t, pr);
            if (t < te) tile1(out, row, rows, cols, xq, xsum, t, pr);
        }
    }
}

static inline __m512 load_bf16x16(const uint16_t *p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

static void bf16_matmul(float *out, int out_stride, const uint16_t *w, int cols, const float *x, int n_tokens, int r0,
                        int r1) {
    const int vec_end = cols & ~31;
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            __m512 s0 = _mm512_setzero_ps(), s1 = s0;
            for (int c = 0; c < vec_end; c += 32) {
                s0 = _mm512_fmadd_ps(load_bf16x16(row + c), _mm512_loadu_ps(xt + c), s0);
                s1 = _mm512_fmadd_ps(load_bf16x16(row + c + 16), _mm512_loadu_ps(xt + c + 16), s1);
            }
            float sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
            for (int c = vec_end; c < cols; c++) sum += trit_bf16_to_f32(row[c]) * xt[c];
            out[(size_t)t * out_stride + r] = sum;
        }
    }
}

static float dot_f16(const uint16_t *a, const float *b, int n) {
    __m512 s = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        s = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))), _mm512_loadu_ps(b + i), s);
    float sum = _mm512_reduce_add_ps(s);
    for (; i < n; i++) sum += trit_f16_to_f32(a[i]) * b[i];
    return sum;
}

static void axpy_f16(float *y, float alpha, const uint16_t *x, int n) {
    __m512 va = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, v, _mm512_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] += alpha * trit_f16_to_f32(x[i]);
}

const trit_kernel trit_kernel_avx512 = {"avx512vnni", trit_cpu_has_avx512vnni, ternary_matmul, bf16_matmul, dot_f16,
                                        axpy_f16};
