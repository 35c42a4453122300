/* NEON kernel for AArch64 with the dot-product extension (SDOT: sixteen signed byte products summed into four int32
 * lanes per instruction) and FP16: Apple M-series, Graviton 2 and later, Cortex-A76 / Neoverse N1 and later.
 * Compiled with -march=armv8.2-a+dotprod+fp16; called only when the CPU has both (cpu.c asks it). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "trit_internal.h"

/* The last n < 16 bytes of a row, zero-padded: zero activations add nothing whatever the weight bytes hold. */
static inline int8x16_t load_s8_tail(const int8_t *p, int n) {
    int8_t buf[16] = {0};
    memcpy(buf, p, (size_t)n);
    return vld1q_s8(buf);
}

static inline uint8x16_t load_u8_tail(const uint8_t *p, int n) {
    uint8_t buf[16] = {0};
    memcpy(buf, p, (size_t)n);
    return vld1q_u8(buf);
}

/* ---- ternary matmul, TQ2 ------------------------------------------------------------------------------------------
 * W.x = sum(code * x) - sum(x), code = w + 1 in 0..2, summed by SDOT with the codes as signed bytes. The byte is not
 * shifted to decode rows 1 and 2: masking it in place (0x0C, 0x30) leaves 4 * code and 16 * code, still valid int8,
 * and every int32 lane of their sums is that multiple of the exact sum, divided back with an exact arithmetic shift
 * before the lanes are added. Row 3 is the top two bits, one shift. So 64 weights cost one load and four
 * instructions to decode, then one SDOT per row and token. One packed byte holds four rows at the same column: one
 * activation load serves four SDOT, and a tile of up to 4 tokens reuses each decoded weight vector (prefill). */
#define TQ2_DECODE(b)                                                                                                  \
    const int8x16_t c0 = vreinterpretq_s8_u8(vandq_u8(b, m0)), c1 = vreinterpretq_s8_u8(vandq_u8(b, m1)),              \
                    c2 = vreinterpretq_s8_u8(vandq_u8(b, m2)), c3 = vreinterpretq_s8_u8(vshrq_n_u8(b, 6))
#define TQ2_MASKS const uint8x16_t m0 = vdupq_n_u8(0x03), m1 = vdupq_n_u8(0x0C), m2 = vdupq_n_u8(0x30)

#define ACC_DECL(i) int32x4_t a0_##i = vdupq_n_s32(0), a1_##i = a0_##i, a2_##i = a0_##i, a3_##i = a0_##i;
#define ACC_STEP(i, load)                                                                                              \
    {                                                                                                                  \
        const int8x16_t xv = load;                                                                                     \
        a0_##i = vdotq_s32(a0_##i, c0, xv);                                                                            \
        a1_##i = vdotq_s32(a1_##i, c1, xv);                                                                            \
        a2_##i = vdotq_s32(a2_##i, c2, xv);                                                                            \
        a3_##i = vdotq_s32(a3_##i, c3, xv);                                                                            \
    }
#define ACC_FULL(i) ACC_STEP(i, vld1q_s8(x + (size_t)cols * (i) + c))
#define ACC_TAIL(i) ACC_STEP(i, load_s8_tail(x + (size_t)cols * (i) + c, cols - c))
#define ACC_STORE(i)                                                                                                   \
    {                                                                                                                  \
        int32_t *o = out + (size_t)(t0 + i) * rows + pr, s = xsum[t0 + i];                                             \
        o[0] = vaddvq_s32(a0_##i) - s;                                                                                 \
        o[quarter] = vaddvq_s32(vshrq_n_s32(a1_##i, 2)) - s;                                                           \
        o[2 * quarter] = vaddvq_s32(vshrq_n_s32(a2_##i, 4)) - s;                                                       \
        o[3 * quarter] = vaddvq_s32(a3_##i) - s;                                                                       \
    }

#define DEFINE_TILE(NAME, EACH)                                                                                        \
    static void NAME(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, const int32_t *xsum,      \
                     int t0, int pr) {                                                                                 \
        TQ2_MASKS;                                                                                                     \
        const int quarter = rows / 4, full = cols & ~15;                                                               \
        const int8_t *x = xq + (size_t)t0 * cols;                                                                      \
        EACH(ACC_DECL)                                                                                                 \
        int c = 0;                                                                                                     \
        for (; c < full; c += 16) {                                                                                    \
            const uint8x16_t b = vld1q_u8(row + c);                                                                    \
            TQ2_DECODE(b);                                                                                             \
            EACH(ACC_FULL)                                                                                             \
        }                                                                                                              \
        if (c < cols) {                                                                                                \
            const uint8x16_t b = load_u8_tail(row + c, cols - c);                                                      \
            TQ2_DECODE(b);                                                                                             \
            EACH(ACC_TAIL)                                                                                             \
        }                                                                                                              \
        EACH(ACC_STORE)                                                                                                \
    }

#define EACH2(F) F(0) F(1)
#define EACH4(F) F(0) F(1) F(2) F(3)
DEFINE_TILE(tile2, EACH2)
DEFINE_TILE(tile4, EACH4)

/* One token (decoding): 32 columns a step into two sets of accumulators, so that consecutive SDOT into the same
 * register do not wait on each other. */
static void tile1(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, const int32_t *xsum, int t0,
                  int pr) {
    TQ2_MASKS;
    const int quarter = rows / 4;
    const int8_t *x = xq + (size_t)t0 * cols;
    ACC_DECL(0)
    ACC_DECL(1)
    int c = 0;
    for (; c + 32 <= cols; c += 32) {
        const uint8x16_t b0 = vld1q_u8(row + c), b1 = vld1q_u8(row + c + 16);
        {
            TQ2_DECODE(b0);
            const int8x16_t xv = vld1q_s8(x + c);
            a0_0 = vdotq_s32(a0_0, c0, xv);
            a1_0 = vdotq_s32(a1_0, c1, xv);
            a2_0 = vdotq_s32(a2_0, c2, xv);
            a3_0 = vdotq_s32(a3_0, c3, xv);
        }
        {
            TQ2_DECODE(b1);
            const int8x16_t xv = vld1q_s8(x + c + 16);
            a0_1 = vdotq_s32(a0_1, c0, xv);
            a1_1 = vdotq_s32(a1_1, c1, xv);
            a2_1 = vdotq_s32(a2_1, c2, xv);
            a3_1 = vdotq_s32(a3_1, c3, xv);
        }
    }
    if (c + 16 <= cols) {
        const uint8x16_t b = vld1q_u8(row + c);
        TQ2_DECODE(b);
        ACC_FULL(0)
        c += 16;
    }
    if (c < cols) {
        const uint8x16_t b = load_u8_tail(row + c, cols - c);
        TQ2_DECODE(b);
        ACC_TAIL(0)
    }
    a0_0 = vaddq_s32(a0_0, a0_1);
    a1_0 = vaddq_s32(a1_0, a1_1);
    a2_0 = vaddq_s32(a2_0, a2_1);
    a3_0 = vaddq_s32(a3_0, a3_1);
    ACC_STORE(0)
}

#define TOKEN_BLOCK 64 /* activations of a block stay in L2 while every row of the share streams past */
/* An int32 lane sums cols/4 products of up to 16 * 2 * 128 (row 2, scaled): exact below 2^21 columns. */
#define TQ2_MAX_COLS (1 << 20)

static void ternary_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                           const int32_t *xsum, int n_tokens, int pr0, int pr1) {
    if (cols > TQ2_MAX_COLS) { /* wider than any model: the plain definition */
        trit_kernel_scalar.ternary_matmul(out, packed, rows, cols, xq, xsum, n_tokens, pr0, pr1);
        return;
    }
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

/* ---- ternary matmul, T5 ------------------------------------------------------------------------------------------
 * Five rows G apart share a byte b = d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4 (trit.h). Only sums are needed, so no digit is
 * decoded: with the partials m_j = b mod 3^j (m_0 = 0, m_5 = b), m_(j+1) - m_j = 3^j d_j, and sum(x * d_j) is
 * (sum(x * m_(j+1)) - sum(x * m_j)) / 3^j exactly, as in the AVX-512 kernel. SDOT multiplies signed bytes and b runs to
 * 242, so m_5 enters as b - 128 (one EOR) and 128 * sum(x) is added back. b mod 81 and l mod 27 take two subtractions
 * each, umin(v, v - k): where v < k the byte wraps above v and the minimum keeps v. m_2 and m_1 are one 32-byte table
 * lookup each on m_3 < 27. Eleven instructions for 80 weights, then five SDOT per token.
 *
 * The engine keeps TQ2 here (tq2_faster in the table); this entry serves `--ternary t5`. Weights a cycle under llvm-mca
 * 19 (clang-19 -O3; one token / a 4-token tile), TQ2 then T5: apple-m1 24.0/38.3 and 13.7/22.8 (LLVM has one model for
 * every Apple core, M2 too: Apple A7's, with 3 vector pipes where Firestorm has 4); neoverse-n1 and -n2 16.0/25.6 and
 * 10.0/17.3; neoverse-v1 31.9/51.1 and 17.7/32.8; neoverse-v2 31.9/51.1 and 20.0/34.5. So T5 decodes at 0.57-0.63 of
 * TQ2's rate, and a fifth fewer bytes pays for that only where TQ2 is bus-bound 1.6 times over: from about 27 to 38
 * cores on Graviton 2 to 4, never on 4 M1/M2 performance cores (0.64 and 0.57 of TQ2's decode). Another 1.6-bit
 * packing would win: q = ceil(256 v / 243) ^ 0x80 with v the five codes as one base-3 number (llama.cpp's TQ1_0
 * order) makes each partial one MUL, s_j = 3^j q mod 256, and row j = (3 S_j - S_(j+1)) / 256 from six SDOT with no
 * sum(x): 21.8, 14.5 and 29.0 weights a cycle (m1, n1, v1), 0.91 of TQ2, so 1.0-1.25x TQ2's decode where the bus
 * binds; it needs its own format (trit.h, the converter, the engine). */
#define T5_CONSTS                                                                                                      \
    const uint8x16_t n81 = vdupq_n_u8(81), n27 = vdupq_n_u8(27), n128 = vdupq_n_u8(128);                               \
    const uint8x16x2_t mod9 = vld1q_u8_x2(T5_MOD9), mod3 = vld1q_u8_x2(T5_MOD3)
#define T5_PARTIALS(b)                                                                                                 \
    uint8x16_t l = vminq_u8(b, vsubq_u8(b, n81));                                                                      \
    l = vminq_u8(l, vsubq_u8(l, n81));                                                                                 \
    uint8x16_t m = vminq_u8(l, vsubq_u8(l, n27));                                                                      \
    m = vminq_u8(m, vsubq_u8(m, n27));                                                                                 \
    const int8x16_t p1 = vreinterpretq_s8_u8(vqtbl2q_u8(mod3, m)), p2 = vreinterpretq_s8_u8(vqtbl2q_u8(mod9, m)),      \
                    p3 = vreinterpretq_s8_u8(m), p4 = vreinterpretq_s8_u8(l),                                          \
                    p5 = vreinterpretq_s8_u8(veorq_u8(b, n128))

/* v mod 9 and v mod 3 for v = 0..26 (the rest is never looked up) */
static const uint8_t T5_MOD9[32] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8};
static const uint8_t T5_MOD3[32] = {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2};

#define T5_ACC_DECL(i)                                                                                                 \
    int32x4_t e1_##i = vdupq_n_s32(0), e2_##i = e1_##i, e3_##i = e1_##i, e4_##i = e1_##i, e5_##i = e1_##i;
#define T5_ACC_STEP(i, load)                                                                                           \
    {                                                                                                                  \
        const int8x16_t xv = load;                                                                                     \
        e1_##i = vdotq_s32(e1_##i, p1, xv);                                                                            \
        e2_##i = vdotq_s32(e2_##i, p2, xv);                                                                            \
        e3_##i = vdotq_s32(e3_##i, p3, xv);                                                                            \
        e4_##i = vdotq_s32(e4_##i, p4, xv);                                                                            \
        e5_##i = vdotq_s32(e5_##i, p5, xv);                                                                            \
    }
#define T5_ACC_FULL(i) T5_ACC_STEP(i, vld1q_s8(x + (size_t)cols * (i) + c))
#define T5_ACC_TAIL(i) T5_ACC_STEP(i, load_s8_tail(x + (size_t)cols * (i) + c, cols - c))
/* In int64: a row's sums, 128 * sum(x) and the differences can pass int32 before the division brings them back. */
#define T5_ACC_STORE(i)                                                                                                \
    {                                                                                                                  \
        int32_t *o = out + (size_t)(t0 + i) * rows + g, s = xsum[t0 + i];                                              \
        const int64_t m1 = vaddlvq_s32(e1_##i), m2 = vaddlvq_s32(e2_##i), m3 = vaddlvq_s32(e3_##i),                    \
                      m4 = vaddlvq_s32(e4_##i), m5 = vaddlvq_s32(e5_##i) + 128 * (int64_t)s;                           \
        const int64_t sums[5] = {m1, (m2 - m1) / 3, (m3 - m2) / 9, (m4 - m3) / 27, (m5 - m4) / 81};                    \
        for (int j = 0; j < 5 && g + j * groups < rows; j++) o[j * groups] = (int32_t)(sums[j] - s);                   \
    }

#define DEFINE_T5_TILE(NAME, EACH)                                                                                     \
    static void NAME(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, const int32_t *xsum,      \
                     int t0, int g) {                                                                                  \
        T5_CONSTS;                                                                                                     \
        const int groups = trit_t5_groups(rows), full = cols & ~15;                                                    \
        const int8_t *x = xq + (size_t)t0 * cols;                                                                      \
        EACH(T5_ACC_DECL)                                                                                              \
        int c = 0;                                                                                                     \
        for (; c < full; c += 16) {                                                                                    \
            const uint8x16_t b = vld1q_u8(row + c);                                                                    \
            T5_PARTIALS(b);                                                                                            \
            EACH(T5_ACC_FULL)                                                                                          \
        }                                                                                                              \
        if (c < cols) {                                                                                                \
            const uint8x16_t b = load_u8_tail(row + c, cols - c);                                                      \
            T5_PARTIALS(b);                                                                                            \
            EACH(T5_ACC_TAIL)                                                                                          \
        }                                                                                                              \
        EACH(T5_ACC_STORE)                                                                                             \
    }

DEFINE_T5_TILE(t5_tile2, EACH2)
DEFINE_T5_TILE(t5_tile4, EACH4)

/* One token: 32 columns a step into two sets of accumulators, as tile1 does. */
static void t5_tile1(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                     int t0, int g) {
    T5_CONSTS;
    const int groups = trit_t5_groups(rows);
    const int8_t *x = xq + (size_t)t0 * cols;
    T5_ACC_DECL(0)
    T5_ACC_DECL(1)
    int c = 0;
    for (; c + 32 <= cols; c += 32) {
        const uint8x16_t b0 = vld1q_u8(row + c), b1 = vld1q_u8(row + c + 16);
        {
            T5_PARTIALS(b0);
            T5_ACC_STEP(0, vld1q_s8(x + c))
        }
        {
            T5_PARTIALS(b1);
            T5_ACC_STEP(1, vld1q_s8(x + c + 16))
        }
    }
    if (c + 16 <= cols) {
        const uint8x16_t b = vld1q_u8(row + c);
        T5_PARTIALS(b);
        T5_ACC_FULL(0)
        c += 16;
    }
    if (c < cols) {
        const uint8x16_t b = load_u8_tail(row + c, cols - c);
        T5_PARTIALS(b);
        T5_ACC_TAIL(0)
    }
    e1_0 = vaddq_s32(e1_0, e1_1);
    e2_0 = vaddq_s32(e2_0, e2_1);
    e3_0 = vaddq_s32(e3_0, e3_1);
    e4_0 = vaddq_s32(e4_0, e4_1);
    e5_0 = vaddq_s32(e5_0, e5_1);
    T5_ACC_STORE(0)
}

/* An int32 lane sums cols/4 products of up to 128 * 128: exact below 2^19 columns, and all but the lanes is int64. */
#define T5_MAX_COLS (1 << 18)

static void t5_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                      int n_tokens, int g0, int g1) {
    if (cols > T5_MAX_COLS) { /* wider than any model: the plain definition */
        trit_kernel_scalar.t5_matmul(out, packed, rows, cols, xq, xsum, n_tokens, g0, g1);
        return;
    }
    for (int tb = 0; tb < n_tokens; tb += TOKEN_BLOCK) {
        int te = tb + TOKEN_BLOCK < n_tokens ? tb + TOKEN_BLOCK : n_tokens;
        for (int g = g0; g < g1; g++) {
            const uint8_t *row = packed + (size_t)g * cols;
            int t = tb;
            for (; t + 4 <= te; t += 4) t5_tile4(out, row, rows, cols, xq, xsum, t, g);
            for (; t + 2 <= te; t += 2) t5_tile2(out, row, rows, cols, xq, xsum, t, g);
            if (t < te) t5_tile1(out, row, rows, cols, xq, xsum, t, g);
        }
    }
}

/* ---- float matmuls: the bf16 head and the exact rescoring -------------------------------------------------------- */

static inline float32x4_t bf16_lo(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)); }
static inline float32x4_t bf16_hi(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)); }

static void bf16_matmul(float *out, int out_stride, const uint16_t *w, int cols, const float *x, int n_tokens, int r0,
                        int r1) {
    const int vec_end = cols & ~15;
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
            for (int c = 0; c < vec_end; c += 16) {
                const uint16x8_t w0 = vld1q_u16(row + c), w1 = vld1q_u16(row + c + 8);
                s0 = vfmaq_f32(s0, bf16_lo(w0), vld1q_f32(xt + c));
                s1 = vfmaq_f32(s1, bf16_hi(w0), vld1q_f32(xt + c + 4));
                s2 = vfmaq_f32(s2, bf16_lo(w1), vld1q_f32(xt + c + 8));
                s3 = vfmaq_f32(s3, bf16_hi(w1), vld1q_f32(xt + c + 12));
            }
            float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
            for (int c = vec_end; c < cols; c++) sum += trit_bf16_to_f32(row[c]) * xt[c];
            out[(size_t)t * out_stride + r] = sum;
        }
    }
}

/* acc + the 16 int8 v times 16 floats x, in four FMAs. */
static inline float32x4_t fma_i8x16(float32x4_t acc, int8x16_t v, const float *x) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
    acc = vfmaq_f32(acc, vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), vld1q_f32(x));
    acc = vfmaq_f32(acc, vcvtq_f32_s32(vmovl_high_s16(lo)), vld1q_f32(x + 4));
    acc = vfmaq_f32(acc, vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), vld1q_f32(x + 8));
    return vfmaq_f32(acc, vcvtq_f32_s32(vmovl_high_s16(hi)), vld1q_f32(x + 12));
}

/* ---- the derived heads ---------------------------------------------------------------------------------------------
 * As in the AVX-512 kernel, x is split into two int8 parts, x ~= s1*a + s2*b with |error| <= max|x| / 64516 for q8
 * and max|x| / 32512 for q4 (far below the weights' own error), so 16 weights cost two SDOT instead of widening,
 * conversions and FMAs. */
typedef struct {
    float s1, s2;
} split_x;

static split_x split_activations(int8_t *a, int8_t *b, const float *x, int n, float s2_per_s1, float lo_min) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    split_x s = {amax > 0.0f ? amax / 127.0f : 1.0f, 0.0f};
    s.s2 = s.s1 * s2_per_s1;
    for (int i = 0; i < n; i++) {
        float hi = nearbyintf(x[i] / s.s1);
        float lo = nearbyintf((x[i] - hi * s.s1) / s.s2);
        a[i] = (int8_t)hi;
        b[i] = (int8_t)(lo > 127.0f ? 127.0f : (lo < lo_min ? lo_min : lo));
    }
    return s;
}

#define HEAD_MAX_COLS 16384

static void q8_matmul_float(float *out, int out_stride, const int8_t *w, const float *scales, int cols, const float *x,
                            int n_tokens, int r0, int r1) {
    const int vec_end = cols & ~15;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            float32x4_t s = vdupq_n_f32(0.0f);
            for (int c = 0; c < vec_end; c += 16) s = fma_i8x16(s, vld1q_s8(row + c), xt + c);
            float sum = vaddvq_f32(s);
            for (int c = vec_end; c < cols; c++) sum += (float)row[c] * xt[c];
            out[(size_t)t * out_stride + r] = scales[r] * sum;
        }
    }
}

static void q8_matmul(float *out, int out_stride, const int8_t *w, const float *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    if (cols > HEAD_MAX_COLS || cols % 16) { /* shapes no BitNet has: the float path */
        q8_matmul_float(out, out_stride, w, scales, cols, x, n_tokens, r0, r1);
        return;
    }
    if (r0 >= r1) return; /* no rows: no need to split x */
    int8_t a[HEAD_MAX_COLS], b[HEAD_MAX_COLS];
    for (int t = 0; t < n_tokens; t++) {
        const split_x s = split_activations(a, b, x + (size_t)t * cols, cols, 1.0f / 254.0f, -127.0f);
        for (int r = r0; r < r1; r++) {
            const int8_t *row = w + (size_t)r * cols;
            int32x4_t aa0 = vdupq_n_s32(0), ab0 = aa0, aa1 = aa0, ab1 = aa0;
            int c = 0;
            for (; c + 32 <= cols; c += 32) {
                const int8x16_t w0 = vld1q_s8(row + c), w1 = vld1q_s8(row + c + 16);
                aa0 = vdotq_s32(aa0, w0, vld1q_s8(a + c));
                ab0 = vdotq_s32(ab0, w0, vld1q_s8(b + c));
                aa1 = vdotq_s32(aa1, w1, vld1q_s8(a + c + 16));
                ab1 = vdotq_s32(ab1, w1, vld1q_s8(b + c + 16));
            }
            if (c < cols) {
                const int8x16_t w0 = vld1q_s8(row + c);
                aa0 = vdotq_s32(aa0, w0, vld1q_s8(a + c));
                ab0 = vdotq_s32(ab0, w0, vld1q_s8(b + c));
            }
            const int32_t ia = vaddvq_s32(vaddq_s32(aa0, aa1)), ib = vaddvq_s32(vaddq_s32(ab0, ab1));
            out[(size_t)t * out_stride + r] = scales[r] * ((float)ia * s.s1 + (float)ib * s.s2);
        }
    }
}

/* q4 with x split as above, s2 = s1 / 256 so that x ~= s2 * (256 a + b). Decoding: with y = byte ^ 0x88, the signed
 * bytes y << 4 and y & 0xF0 are 16 * (q - 8) for the low and the high nibble, so the -8 offset costs nothing.
 * Per 32-column block, SDOT leaves four int32 lanes of 16 * sum((q - 8) * a) (and b), which meet the block's fp16
 * scale in one FMA. */
static void q4_matmul_float(float *out, int out_stride, const uint8_t *w, const uint16_t *scales, int cols,
                            const float *x, int n_tokens, int r0, int r1) {
    const uint8x16_t flip = vdupq_n_u8(0x88), high = vdupq_n_u8(0xF0);
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * cols / 2;
        const uint16_t *row_scales = scales + (size_t)r * cols / TRIT_Q4_BLOCK;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            float32x4_t acc = vdupq_n_f32(0.0f);
            for (int g = 0; g < cols / TRIT_Q4_GROUP; g++) {
                const uint8x16_t y0 = veorq_u8(vld1q_u8(row + g * 32), flip);
                const uint8x16_t y1 = veorq_u8(vld1q_u8(row + g * 32 + 16), flip);
                const float *xg = xt + g * TRIT_Q4_GROUP;
                float32x4_t lo = fma_i8x16(vdupq_n_f32(0.0f), vreinterpretq_s8_u8(vshlq_n_u8(y0, 4)), xg);
                lo = fma_i8x16(lo, vreinterpretq_s8_u8(vshlq_n_u8(y1, 4)), xg + 16);
                float32x4_t hi = fma_i8x16(vdupq_n_f32(0.0f), vreinterpretq_s8_u8(vandq_u8(y0, high)), xg + 32);
                hi = fma_i8x16(hi, vreinterpretq_s8_u8(vandq_u8(y1, high)), xg + 48);
                acc = vfmaq_n_f32(acc, lo, trit_f16_to_f32(row_scales[2 * g]) * (1.0f / 16.0f));
                acc = vfmaq_n_f32(acc, hi, trit_f16_to_f32(row_scales[2 * g + 1]) * (1.0f / 16.0f));
            }
            out[(size_t)t * out_stride + r] = vaddvq_f32(acc);
        }
    }
}

/* One 64-column group: the int32 lanes 256 * A + B of its two blocks. */
#define Q4_GROUP(g, lo_out, hi_out)                                                                                    \
    {                                                                                                                  \
        const uint8x16_t y0 = veorq_u8(vld1q_u8(row + (g)*32), flip);                                                  \
        const uint8x16_t y1 = veorq_u8(vld1q_u8(row + (g)*32 + 16), flip);                                             \
        const int8x16_t l0 = vreinterpretq_s8_u8(vshlq_n_u8(y0, 4)), l1 = vreinterpretq_s8_u8(vshlq_n_u8(y1, 4));      \
        const int8x16_t h0 = vreinterpretq_s8_u8(vandq_u8(y0, high)), h1 = vreinterpretq_s8_u8(vandq_u8(y1, high));    \
        const int8_t *ag = a + (g)*TRIT_Q4_GROUP, *bg = b + (g)*TRIT_Q4_GROUP;                                         \
        int32x4_t la = vdotq_s32(vdotq_s32(zero, l0, vld1q_s8(ag)), l1, vld1q_s8(ag + 16));                            \
        int32x4_t lb = vdotq_s32(vdotq_s32(zero, l0, vld1q_s8(bg)), l1, vld1q_s8(bg + 16));                            \
        int32x4_t ha = vdotq_s32(vdotq_s32(zero, h0, vld1q_s8(ag + 32)), h1, vld1q_s8(ag + 48));                       \
        int32x4_t hb = vdotq_s32(vdotq_s32(zero, h0, vld1q_s8(bg + 32)), h1, vld1q_s8(bg + 48));                       \
        lo_out = vcvtq_f32_s32(vmlaq_n_s32(lb, la, 256));                                                              \
        hi_out = vcvtq_f32_s32(vmlaq_n_s32(hb, ha, 256));                                                              \
    }

static void q4_matmul(float *out, int out_stride, const uint8_t *w, const uint16_t *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    if (cols > HEAD_MAX_COLS) {
        q4_matmul_float(out, out_stride, w, scales, cols, x, n_tokens, r0, r1);
        return;
    }
    if (r0 >= r1) return;
    int8_t a[HEAD_MAX_COLS], b[HEAD_MAX_COLS];
    const int groups = cols / TRIT_Q4_GROUP, blocks = cols / TRIT_Q4_BLOCK;
    const uint8x16_t flip = vdupq_n_u8(0x88), high = vdupq_n_u8(0xF0);
    const int32x4_t zero = vdupq_n_s32(0);
    for (int t = 0; t < n_tokens; t++) {
        const split_x s = split_activations(a, b, x + (size_t)t * cols, cols, 1.0f / 256.0f, -128.0f);
        for (int r = r0; r < r1; r++) {
            const uint8_t *row = w + (size_t)r * cols / 2;
            const uint16_t *rs = scales + (size_t)r * blocks;
            float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
            int g = 0;
            for (; g + 2 <= groups; g += 2) { /* four blocks: their four scales in one load */
                const float32x4_t d = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(rs + 2 * g)));
                float32x4_t p0, p1, p2, p3;
                Q4_GROUP(g, p0, p1)
                Q4_GROUP(g + 1, p2, p3)
                acc0 = vfmaq_laneq_f32(acc0, p0, d, 0);
                acc1 = vfmaq_laneq_f32(acc1, p1, d, 1);
                acc0 = vfmaq_laneq_f32(acc0, p2, d, 2);
                acc1 = vfmaq_laneq_f32(acc1, p3, d, 3);
            }
            if (g < groups) {
                const uint16_t last[4] = {rs[2 * g], rs[2 * g + 1], 0, 0};
                const float32x4_t d = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(last)));
                float32x4_t p0, p1;
                Q4_GROUP(g, p0, p1)
                acc0 = vfmaq_laneq_f32(acc0, p0, d, 0);
                acc1 = vfmaq_laneq_f32(acc1, p1, d, 1);
            }
            out[(size_t)t * out_stride + r] = s.s2 * (1.0f / 16.0f) * vaddvq_f32(vaddq_f32(acc0, acc1));
        }
    }
}

/* ---- activations and the KV cache -------------------------------------------------------------------------------- */

/* FCVTNS rounds to nearest, ties to even, like nearbyintf in the default mode; the saturating narrows clamp to int8
 * as the scalar code does; FMAXNM ignores a NaN as the scalar comparison does. */
static float quantize(int8_t *xq, int32_t *sum, const float *x, int n) {
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = vmaxnmq_f32(m0, vabsq_f32(vld1q_f32(x + i)));
        m1 = vmaxnmq_f32(m1, vabsq_f32(vld1q_f32(x + i + 4)));
        m2 = vmaxnmq_f32(m2, vabsq_f32(vld1q_f32(x + i + 8)));
        m3 = vmaxnmq_f32(m3, vabsq_f32(vld1q_f32(x + i + 12)));
    }
    float amax = vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m0, m1), vmaxnmq_f32(m2, m3)));
    for (; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float s = 127.0f * (1.0f / (amax > 1e-5f ? amax : 1e-5f));
    const float32x4_t vs = vdupq_n_f32(s);
    const int8x16_t ones = vdupq_n_s8(1);
    int32x4_t total = vdupq_n_s32(0);
    for (i = 0; i + 16 <= n; i += 16) {
        const int32x4_t q0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i), vs));
        const int32x4_t q1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 4), vs));
        const int32x4_t q2 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 8), vs));
        const int32x4_t q3 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + i + 12), vs));
        const int16x8_t h0 = vqmovn_high_s32(vqmovn_s32(q0), q1), h1 = vqmovn_high_s32(vqmovn_s32(q2), q3);
        const int8x16_t q = vqmovn_high_s16(vqmovn_s16(h0), h1);
        vst1q_s8(xq + i, q);
        total = vdotq_s32(total, q, ones);
    }
    int32_t acc = vaddvq_s32(total);
    for (; i < n; i++) {
        float r = nearbyintf(x[i] * s);
        xq[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -128.0f ? -128.0f : r));
        acc += xq[i];
    }
    *sum = acc;
    return s;
}

static inline float32x4_t f16_lo(uint16x8_t v) { return vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(v))); }
static inline float32x4_t f16_hi(uint16x8_t v) { return vcvt_high_f32_f16(vreinterpretq_f16_u16(v)); }

static void axpy_f16(float *y, float alpha, const uint16_t *x, int n) {
    const float32x4_t va = vdupq_n_f32(alpha);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(x + i);
        vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, f16_lo(h)));
        vst1q_f32(y + i + 4, vfmaq_f32(vld1q_f32(y + i + 4), va, f16_hi(h)));
    }
    for (; i < n; i++) y[i] += alpha * trit_f16_to_f32(x[i]);
}

/* The query heads that share a kv head, one at a time through the shared definition with this kernel's fp16 dot
 * product and axpy. (The x86 kernels read each key and value once for the whole group; a NEON version of that is
 * still to come.) */
static void attend(float *out, const float *q, const uint16_t *keys, const uint16_t *values, int kv_stride, int n_keys,
                   int head_dim, int group, float *scores, float *lse) {
    for (int h = 0; h < group; h++)
        trit_attend_head(&trit_kernel_neon, out + (size_t)h * head_dim, q + (size_t)h * head_dim, keys, values,
                         kv_stride, n_keys, head_dim, scores, lse ? lse + h : NULL);
}

/* Prefill: this kernel's attend for one token after another, so a batch gives the floats of single tokens. */
static void attend_tokens(float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                          int n_q, int n_keys0, int head_dim, int group, float *scratch) {
    trit_attend_each_token(attend, out, q, q_stride, keys, values, n_q, n_keys0, head_dim, group, scratch);
}

static void scale_sums(float *out, const int32_t *acc, float f, int n, int add) {
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t y = vmulq_n_f32(vcvtq_f32_s32(vld1q_s32(acc + i)), f);
        vst1q_f32(out + i, add ? vaddq_f32(vld1q_f32(out + i), y) : y);
    }
    trit_kernel_scalar.scale_sums(out + i, acc + i, f, n - i, add); /* the tail, by the definition */
}

static void relu2_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t g = vmulq_n_f32(vcvtq_f32_s32(vld1q_s32(gate + i)), fg);
        const float32x4_t u = vmulq_n_f32(vcvtq_f32_s32(vld1q_s32(up + i)), fu);
        g = vbslq_f32(vcgtq_f32(g, zero), g, zero);
        vst1q_f32(out + i, vmulq_f32(vmulq_f32(g, g), u));
    }
    trit_kernel_scalar.relu2_sums(out + i, gate + i, fg, up + i, fu, n - i);
}

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        s0 = vfmaq_f32(s0, a, a);
        s1 = vfmaq_f32(s1, b, b);
    }
    float ss = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vmulq_f32(vld1q_f32(weight + i), vmulq_n_f32(vld1q_f32(x + i), inv)));
    for (; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/* FCVTN rounds to nearest even in the default FPCR mode, as trit_f32_to_f16 does */
static void to_f16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(src + i)), vld1q_f32(src + i + 4));
        vst1q_u16(dst + i, vreinterpretq_u16_f16(h));
    }
    for (; i < n; i++) dst[i] = trit_f32_to_f16(src[i]);
}

const trit_kernel trit_kernel_neon = {
    .name = "neon",
    .supported = trit_cpu_has_neon_dotprod,
    .ternary_matmul = ternary_matmul,
    .t5_matmul = t5_matmul,
    .tq2_faster = 1, /* see t5_matmul: the bytes it saves pay only where dozens of cores share the bus */
    .bf16_matmul = bf16_matmul,
    .q8_matmul = q8_matmul,
    .q4_matmul = q4_matmul,
    .quantize = quantize,
    .attend = attend,
    .attend_tokens = attend_tokens,
    .scale_sums = scale_sums,
    .relu2_sums = relu2_sums,
    .rmsnorm = rmsnorm,
    .to_f16 = to_f16,
    .axpy_f16 = axpy_f16,
};
#endif
