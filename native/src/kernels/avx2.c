/* AVX2 kernel (with FMA and F16C). Compiled with -mavx2 -mfma -mf16c, called only when the CPU has them.
 *
 * The same file is compiled a second time as the AVX-VNNI kernel (kernels/avxvnni.c defines TRIT_AVXVNNI, built with
 * -mavxvnni as well): there every unsigned x signed byte dot product is one VEX vpdpbusd into int32 lanes, where AVX2
 * needs maddubs (pairs into int16) and a later widening madd. dot_into and widen below are the only difference. */
#include <immintrin.h>
#include <math.h>

#include "trit_internal.h"

/* acc += v in int16, in place: written plainly, GCC 12 adds into a new register and copies it back every step */
static inline __attribute__((always_inline)) void add16_into(__m256i *acc, __m256i v) {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpaddw %1, %0, %0" : "+x"(*acc) : "x"(v));
#else
    *acc = _mm256_add_epi16(*acc, v);
#endif
}

/* acc += the dot products of unsigned bytes u and signed bytes x, four at a time. AVX2: maddubs sums pairs into int16
 * lanes (the callers bound how many steps fit before widen); AVX-VNNI: vpdpbusd sums fours into int32 lanes, exactly.
 * widen turns an accumulator into eight int32 sums. */
#ifdef TRIT_AVXVNNI
static inline __attribute__((always_inline)) void dot_into(__m256i *acc, __m256i u, __m256i x) {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(*acc) : "x"(u), "x"(x)); /* the intrinsic copies acc around (GCC 12) */
#else
    *acc = _mm256_dpbusd_avx_epi32(*acc, u, x);
#endif
}
static inline __m256i widen(__m256i acc) { return acc; }
#else
static inline __attribute__((always_inline)) void dot_into(__m256i *acc, __m256i u, __m256i x) {
    add16_into(acc, _mm256_maddubs_epi16(u, x));
}
static inline __m256i widen(__m256i acc) { return _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); }
#endif

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
                                                       const int8_t *xq, const int32_t *xsum, int t0, int nt, int pr,
                                                       int first) {
    const __m256i mask = _mm256_set1_epi8(3);
    const int vec_end = cols & ~31, quarter = rows / 4;
    __m256i acc[4][2];
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < nt; i++) acc[j][i] = _mm256_setzero_si256();
    /* maddubs' int16 pair sums are at most 2 * 2 * 128 = 512: 32 of them add up in int16 exactly, so the widening
     * to int32 (madd) runs once per 32 vectors instead of for each */
    for (int c0 = 0; c0 < vec_end; c0 += 32 * 32) {
        int c1 = c0 + 32 * 32 < vec_end ? c0 + 32 * 32 : vec_end;
        __m256i acc16[4][2];
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < nt; i++) acc16[j][i] = _mm256_setzero_si256();
        for (int c = c0; c < c1; c += 32) {
            if (first) _mm_prefetch((const char *)row + c + TRIT_PREFETCH, _MM_HINT_T0); /* later tokens read L1 */
            __m256i b = _mm256_loadu_si256((const __m256i *)(row + c));
            __m256i code[4] = {_mm256_and_si256(b, mask), _mm256_and_si256(_mm256_srli_epi16(b, 2), mask),
                               _mm256_and_si256(_mm256_srli_epi16(b, 4), mask),
                               _mm256_and_si256(_mm256_srli_epi16(b, 6), mask)};
            for (int i = 0; i < nt; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + (size_t)(t0 + i) * cols + c));
                for (int j = 0; j < 4; j++) dot_into(&acc16[j][i], code[j], xv);
            }
        }
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < nt; i++) acc[j][i] = _mm256_add_epi32(acc[j][i], widen(acc16[j][i]));
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

/* A batch with rows in lanes, as the AVX-512 kernel does with T5: 8 packed rows at a time are transposed so that
 * lane j of a vector holds packed row pr + j at four columns, and a shift and a mask give the codes of rows
 * pr + j + q * rows / 4 (q = 0..3), decoded once per call for every token. A token's four activations there are
 * broadcast to every lane: each code vector then costs a maddubs and an add per token, with no decoding per token and
 * nothing summed across lanes (the per-row tile above spends about a third of its instructions on those). */
#define LANE_ROWS 8
#define LANE_SLAB 512 /* columns: 4 code vectors x 512 / 4 x 32 bytes = 16 KB, in L1 with the activations */

/* In place: r[i] becomes column i of the 8x8 matrix of dwords whose rows were r[0..7]. */
static inline void transpose8(__m256i r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(_mm256_castsi256_ps(r[2 * i]), _mm256_castsi256_ps(r[2 * i + 1]));
        t[2 * i + 1] = _mm256_unpackhi_ps(_mm256_castsi256_ps(r[2 * i]), _mm256_castsi256_ps(r[2 * i + 1]));
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_castps_si256(_mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
        r[4 + i] = _mm256_castps_si256(_mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
    }
}

static inline __m256i lanes_mask(int n) { /* the first n of 8 dwords */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline int lanes_below(int rows, int r0, int n) { /* of rows r0 .. r0 + n - 1, how many are below rows */
    return rows - r0 < n ? rows - r0 : n;
}

/* codes[c4][q][32]: for columns [c0, c0 + 4 * n4) of packed rows [pr, pr + n_rows) (missing rows give unused lanes) */
static void tq2_decode_lanes(uint8_t *codes, const uint8_t *packed, int cols, int pr, int n_rows, int c0, int n4) {
    const __m256i mask = _mm256_set1_epi8(3);
    for (int c = 0; c < n4; c += 8) { /* 8 dwords of four columns */
        int n = n4 - c < 8 ? n4 - c : 8;
        __m256i live = lanes_mask(n), r[8];
        for (int j = 0; j < 8; j++)
            r[j] = j < n_rows ? _mm256_maskload_epi32((const int *)(packed + (size_t)(pr + j) * cols + c0) + c, live)
                              : _mm256_setzero_si256();
        transpose8(r); /* r[i]: dword c + i of every row, row j in lane j */
        for (int i = 0; i < n; i++) {
            uint8_t *at = codes + (size_t)(c + i) * 4 * 32;
            for (int q = 0; q < 4; q++)
                _mm256_store_si256((__m256i *)(at + 32 * q), _mm256_and_si256(_mm256_srli_epi16(r[i], 2 * q), mask));
        }
    }
}

/* Tokens against code vectors q0 .. q0 + NV - 1 of one slab whose four columns hold nq code vectors (TQ2: 4, T5: 5),
 * into part[t][q][lane]: the first slab writes, later ones add. Each broadcast activation serves up to four code
 * vectors (on Zen 3 a broadcast takes a vector pipe, as maddubs and adds do: with two code vectors a step a sixth of
 * that work had been broadcasts). AVX2's int16 sums (at most 32 * 512) are widened every 32 steps into int32 sums kept
 * in memory, so that four code vectors and eight accumulators keep the 16 registers. */
#define L_DECL(i) __m256i a0##i = _mm256_setzero_si256(), a1##i = a0##i, a2##i = a0##i, a3##i = a0##i;
#define L_STEP(i)                                                                                                      \
    {                                                                                                                  \
        __m256i xb = _mm256_set1_epi32(((const int32_t *)(x + (size_t)cols * (i)))[c]);                                \
        dot_into(&a0##i, v0, xb);                                                                                      \
        if (nv > 1) dot_into(&a1##i, v1, xb);                                                                          \
        if (nv > 2) dot_into(&a2##i, v2, xb);                                                                          \
        if (nv > 3) dot_into(&a3##i, v3, xb);                                                                          \
    }
#define L_WIDEN_ONE(i, q)                                                                                              \
    if (nv > q) wide[i][q] = _mm256_add_epi32(wide[i][q], widen(a##q##i)), a##q##i = _mm256_setzero_si256();
#define L_WIDEN(i) L_WIDEN_ONE(i, 0) L_WIDEN_ONE(i, 1) L_WIDEN_ONE(i, 2) L_WIDEN_ONE(i, 3)
#define DEFINE_LANE_TILE(NAME, NT, EACH, NV)                                                                           \
    static __attribute__((noinline)) void NAME(int32_t *part, const uint8_t *codes, int nq, int q0, int cols, int n4,  \
                                               const int8_t *x, int first) {                                           \
        enum { nv = NV };              /* a constant: the unused vectors' work goes */                                 \
        volatile __m256i wide[NT][NV]; /* volatile: in memory, or GCC keeps them and reloads the codes each token */   \
        for (int i = 0; i < NT; i++)                                                                                   \
            for (int q = 0; q < NV; q++) wide[i][q] = _mm256_setzero_si256();                                          \
        EACH(L_DECL)                                                                                                   \
        for (int s0 = 0; s0 < n4; s0 += 32) {                                                                          \
            int s1 = s0 + 32 < n4 ? s0 + 32 : n4;                                                                      \
            for (int c = s0; c < s1; c++) {                                                                            \
                const __m256i *w = (const __m256i *)(codes + (size_t)c * nq * 32) + q0;                                \
                __m256i v0 = _mm256_load_si256(w), v1 = NV > 1 ? _mm256_load_si256(w + 1) : v0,                        \
                        v2 = NV > 2 ? _mm256_load_si256(w + 2) : v0, v3 = NV > 3 ? _mm256_load_si256(w + 3) : v0;      \
                __asm__("" : "+x"(v0), "+x"(v1), "+x"(v2), "+x"(v3)); /* loaded once, not again for each token */      \
                EACH(L_STEP)                                                                                           \
            }                                                                                                          \
            EACH(L_WIDEN)                                                                                              \
        }                                                                                                              \
        for (int i = 0; i < NT; i++)                                                                                   \
            for (int q = 0; q < NV; q++) {                                                                             \
                __m256i *p = (__m256i *)(part + ((size_t)i * nq + q0 + q) * LANE_ROWS);                                \
                _mm256_store_si256(p, first ? wide[i][q] : _mm256_add_epi32(wide[i][q], _mm256_load_si256(p)));        \
            }                                                                                                          \
    }
#define EACH1(F) F(0)
#define EACH2(F) F(0) F(1)
DEFINE_LANE_TILE(lane_tile2, 2, EACH2, 4)
DEFINE_LANE_TILE(lane_tile1, 1, EACH1, 4)
DEFINE_LANE_TILE(lane_tile2_one, 2, EACH2, 1) /* T5's fifth code vector */
DEFINE_LANE_TILE(lane_tile1_one, 1, EACH1, 1)

/* Every token of a slab against its nq code vectors: four at a time, then one. */
static void lane_tiles(int32_t *part, const uint8_t *codes, int nq, int cols, int n4, const int8_t *x, int n_tokens,
                       int first) {
    for (int q0 = 0; q0 < nq; q0 += 4) {
        int four = nq - q0 >= 4, t = 0;
        for (; t + 2 <= n_tokens; t += 2)
            (four ? lane_tile2 : lane_tile2_one)(part + (size_t)t * nq * LANE_ROWS, codes, nq, q0, cols, n4,
                                                 x + (size_t)t * cols, first);
        if (t < n_tokens)
            (four ? lane_tile1 : lane_tile1_one)(part + (size_t)t * nq * LANE_ROWS, codes, nq, q0, cols, n4,
                                                 x + (size_t)t * cols, first);
    }
}

/* Tokens a block of rows takes at a time: their int32 sums (part: up to 5 code vectors x 8 lanes each, 40 KB) stay in
 * cache from slab to slab. Added into the output itself, a matmul's sums (1.3 MB at 128 tokens x 2560 rows) went to
 * L3 and back for every slab. */
#define LANE_TOKENS 256

/* The batch with rows in lanes, for TQ2 and T5 (their decoders write codes[c4][q][32], q < nq <= 5): for byte rows
 * [pr0, pr1), LANE_ROWS at a time, slab after slab, decode(codes, packed, cols, pr, n_rows, c0, n4) and every token;
 * then code vector q's lane j is row pr + j + q * q_rows, written for the rows below `rows` as sum - xsum. */
typedef void (*lanes_decoder)(uint8_t *codes, const uint8_t *packed, int cols, int pr, int n_rows, int c0, int n4);

static void lanes_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                         int n_tokens, int pr0, int pr1, lanes_decoder decode, int nq, int q_rows, uint8_t *codes,
                         int slab) {
    _Alignas(32) int32_t part[LANE_TOKENS * 5 * LANE_ROWS];
    for (int pr = pr0; pr < pr1; pr += LANE_ROWS) {
        int n_rows = pr1 - pr < LANE_ROWS ? pr1 - pr : LANE_ROWS;
        for (int tb = 0; tb < n_tokens; tb += LANE_TOKENS) {
            int nt = n_tokens - tb < LANE_TOKENS ? n_tokens - tb : LANE_TOKENS, last_block = tb + nt == n_tokens;
            for (int c0 = 0; c0 < cols; c0 += slab) {
                int n4 = (cols - c0 < slab ? cols - c0 : slab) / 4;
                decode(codes, packed, cols, pr, n_rows, c0, n4);
                /* the next slab to decode, into L2: a whole block of rows ahead, the activations streaming through L2
                 * (128 tokens x 2560 = 330 KB; down's 72 x 6912 = 500 KB) had evicted much of it again */
                int next_pr = c0 + slab < cols ? pr : pr + LANE_ROWS, next_c0 = c0 + slab < cols ? c0 + slab : 0;
                for (int j = 0; last_block && next_pr + j < pr1 && j < LANE_ROWS; j++)
                    for (int c = 0; c < 4 * n4; c += 64)
                        _mm_prefetch((const char *)packed + (size_t)(next_pr + j) * cols + next_c0 + c, _MM_HINT_T1);
                lane_tiles(part, codes, nq, cols, n4, xq + (size_t)tb * cols + c0, nt, c0 == 0);
            }
            for (int q = 0; q < nq; q++) {
                int r0 = pr + q * q_rows, live = lanes_below(rows, r0, n_rows); /* T5's last rows may end */
                for (int t = 0; t < nt && live > 0; t++) {
                    int32_t *o = out + (size_t)(tb + t) * rows + r0;
                    __m256i v =
                        _mm256_sub_epi32(_mm256_load_si256((const __m256i *)(part + ((size_t)t * nq + q) * LANE_ROWS)),
                                         _mm256_set1_epi32(xsum[tb + t]));
                    if (live == LANE_ROWS) /* a masked store is ~40 micro-ops on AMD Zen: only for a last block */
                        _mm256_storeu_si256((__m256i *)o, v);
                    else
                        _mm256_maskstore_epi32(o, lanes_mask(live), v);
                }
            }
        }
    }
}

static void tq2_matmul_lanes(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                             const int32_t *xsum, int n_tokens, int pr0, int pr1) {
    _Alignas(32) uint8_t codes[LANE_SLAB / 4 * 4 * 32];
    lanes_matmul(out, packed, rows, cols, xq, xsum, n_tokens, pr0, pr1, tq2_decode_lanes, 4, rows / 4, codes,
                 LANE_SLAB);
}

static void ternary_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                           const int32_t *xsum, int n_tokens, int pr0, int pr1) {
    if (n_tokens >= 8 && cols % 4 == 0) { /* every real model; other widths take the per-row tiles below */
        tq2_matmul_lanes(out, packed, rows, cols, xq, xsum, n_tokens, pr0, pr1);
        return;
    }
    for (int tb = 0; tb < n_tokens; tb += TOKEN_BLOCK) {
        int te = tb + TOKEN_BLOCK < n_tokens ? tb + TOKEN_BLOCK : n_tokens;
        for (int pr = pr0; pr < pr1; pr++) {
            const uint8_t *row = packed + (size_t)pr * cols;
            int t = tb;
            for (; t + 2 <= te; t += 2) tile(out, row, rows, cols, xq, xsum, t, 2, pr, t == tb);
            if (t < te) tile(out, row, rows, cols, xq, xsum, t, 1, pr, t == tb);
        }
    }
}

/* T5 (trit.h): a byte B = d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4 holds the codes of five rows. AVX2 has no byte divide and
 * its byte lookup (pshufb) has 16 entries, so B is split by dividing in 16-bit lanes: mulhi by 7282 and 2428 gives
 * h9 = B div 9 and h27 = B div 27 exactly for B < 243 (even bytes alone, odd bytes from their word, put together by a
 * byte blend; h27 of an odd byte needs the even one cleared), r9 = B - 9 h9, and 16-entry lookups read digits off
 * r9 (0..8) and h27 (0..8). One thread, Zen 3, weights in L2: 27 weights a cycle for this decode with the five dot
 * products, against 17 for compares and 15 for 27-entry lookups; TQ2's shifts and masks do 36. */
#define T5_SPLIT(b)                                                                                                    \
    __m256i lo_ = _mm256_and_si256(b, lo8);                                                                            \
    __m256i h9 = _mm256_blendv_epi8(_mm256_mulhi_epu16(lo_, k9), _mm256_mulhi_epu16(b, k9), hi8);                      \
    __m256i h27 =                                                                                                      \
        _mm256_blendv_epi8(_mm256_mulhi_epu16(lo_, k27), _mm256_mulhi_epu16(_mm256_and_si256(b, hi8), k27), hi8);      \
    __m256i r9 = _mm256_sub_epi8(b, _mm256_add_epi8(_mm256_slli_epi16(h9, 3), h9)) /* h9 <= 26: no carry across */
#define T5_CONSTANTS                                                                                                   \
    const __m256i lo8 = _mm256_set1_epi16(0xff), hi8 = _mm256_set1_epi16((short)0xff00), k9 = _mm256_set1_epi16(7282), \
                  k27 = _mm256_set1_epi16(2428),                                                                       \
                  mod3 = _mm256_setr_epi8(0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 1, 2, 0, 1, 2,   \
                                          0, 0, 0, 0, 0, 0, 0),                                                        \
                  div3 = _mm256_setr_epi8(0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2,   \
                                          0, 0, 0, 0, 0, 0, 0)

static inline int t5_digit(int b, int j) {
    for (; j > 0; j--) b /= 3;
    return b % 3;
}

/* One token against one byte row of T5 (decode). The digits are needed only through their dot products S(d_j) with
 * x, so five vectors that are combinations of them do: d0 = r9 mod 3, r9 = d0 + 3 d1, h9 = d2 + 3 d3 + 9 d4,
 * h27 = d3 + 3 d4 and d4 = h27 div 3, one lookup each for d0 and d4 instead of five digits. h9 (up to 26) fills
 * maddubs' int16 sums in 4 steps (4 * 2 * 26 * 128 < 2^15), the others (up to 8) in 16. */
static __attribute__((noinline)) void t5_tile1(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq,
                                               const int32_t *xsum, int t, int g) {
    T5_CONSTANTS;
    const int8_t *x = xq + (size_t)t * cols;
    const int vec_end = cols & ~31, groups = trit_t5_groups(rows);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0, s4 = s0;
    for (int c0 = 0; c0 < vec_end; c0 += 16 * 32) {
        int c2 = c0 + 16 * 32 < vec_end ? c0 + 16 * 32 : vec_end;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a3 = a0, a4 = a0;
        for (int c1 = c0; c1 < c2; c1 += 4 * 32) {
            int c3 = c1 + 4 * 32 < c2 ? c1 + 4 * 32 : c2;
            __m256i a2 = _mm256_setzero_si256();
            for (int c = c1; c < c3; c += 32) {
                _mm_prefetch((const char *)row + c + TRIT_PREFETCH, _MM_HINT_T0);
                __m256i b = _mm256_loadu_si256((const __m256i *)(row + c));
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + c));
                T5_SPLIT(b);
                dot_into(&a0, _mm256_shuffle_epi8(mod3, r9), xv);
                dot_into(&a1, r9, xv);
                dot_into(&a2, h9, xv);
                dot_into(&a3, h27, xv);
                dot_into(&a4, _mm256_shuffle_epi8(div3, h27), xv);
            }
            s2 = _mm256_add_epi32(s2, widen(a2));
        }
        s0 = _mm256_add_epi32(s0, widen(a0)), s1 = _mm256_add_epi32(s1, widen(a1));
        s3 = _mm256_add_epi32(s3, widen(a3)), s4 = _mm256_add_epi32(s4, widen(a4));
    }
    int32_t d0 = hsum_i32(s0), r9 = hsum_i32(s1), h9 = hsum_i32(s2), h27 = hsum_i32(s3), d4 = hsum_i32(s4);
    int32_t sum[5] = {d0, (r9 - d0) / 3, h9 - 3 * h27, h27 - 3 * d4, d4};
    for (int c = vec_end; c < cols; c++)
        for (int j = 0; j < 5; j++) sum[j] += t5_digit(row[c], j) * x[c];
    for (int j = 0; j < 5; j++)
        if (g + j * groups < rows) out[(size_t)t * rows + g + j * groups] = sum[j] - xsum[t];
}

/* The batch: 8 byte rows (groups) at a time transposed as TQ2's are (tq2_decode_lanes), each dword of four columns
 * decoded into its five digits, codes[c4][digit][32]: the lane tiles then run as for TQ2, with five code vectors and
 * the digits' rows groups apart. */
static void t5_decode_lanes(uint8_t *codes, const uint8_t *packed, int cols, int g, int ng, int c0, int n4) {
    T5_CONSTANTS;
    for (int c = 0; c < n4; c += 8) {
        int n = n4 - c < 8 ? n4 - c : 8;
        __m256i live = lanes_mask(n), r[8];
        for (int j = 0; j < 8; j++)
            r[j] = j < ng ? _mm256_maskload_epi32((const int *)(packed + (size_t)(g + j) * cols + c0) + c, live)
                          : _mm256_set1_epi8(121); /* every digit 1: any byte below 243 does */
        transpose8(r);
        for (int i = 0; i < n; i++) {
            __m256i b = r[i];
            T5_SPLIT(b);
            __m256i d3 = _mm256_shuffle_epi8(mod3, h27), d4 = _mm256_shuffle_epi8(div3, h27);
            __m256i d2 = _mm256_sub_epi8(h9, _mm256_add_epi8(h27, _mm256_add_epi8(h27, h27)));
            __m256i *at = (__m256i *)(codes + (size_t)(c + i) * 5 * 32);
            _mm256_store_si256(at, _mm256_shuffle_epi8(mod3, r9));
            _mm256_store_si256(at + 1, _mm256_shuffle_epi8(div3, r9));
            _mm256_store_si256(at + 2, d2);
            _mm256_store_si256(at + 3, d3);
            _mm256_store_si256(at + 4, d4);
        }
    }
}

#define T5_LANE_SLAB 512 /* columns: 5 code vectors x 512 / 4 x 32 bytes = 20 KB */

static void t5_matmul_lanes(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                            const int32_t *xsum, int n_tokens, int g0, int g1) {
    _Alignas(32) uint8_t codes[T5_LANE_SLAB / 4 * 5 * 32];
    lanes_matmul(out, packed, rows, cols, xq, xsum, n_tokens, g0, g1, t5_decode_lanes, 5, trit_t5_groups(rows), codes,
                 T5_LANE_SLAB);
}

static void t5_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                      int n_tokens, int g0, int g1) {
    if (n_tokens >= 8 && cols % 4 == 0) { /* every real model; other widths take the per-row tile below */
        t5_matmul_lanes(out, packed, rows, cols, xq, xsum, n_tokens, g0, g1);
        return;
    }
    for (int g = g0; g < g1; g++) /* a row is read from memory once, then from L1 for the next tokens */
        for (int t = 0; t < n_tokens; t++) t5_tile1(out, packed + (size_t)g * cols, rows, cols, xq, xsum, t, g);
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

static void q8_matmul(float *out, int out_stride, const int8_t *w, const float *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    const int vec_end = cols & ~15;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = w + (size_t)r * cols;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * cols;
            __m256 s0 = _mm256_setzero_ps(), s1 = s0;
            for (int c = 0; c < vec_end; c += 16) {
                __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + c))));
                __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + c + 8))));
                s0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xt + c), s0);
                s1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xt + c + 8), s1);
            }
            float sum = hsum_f32(_mm256_add_ps(s0, s1));
            for (int c = vec_end; c < cols; c++) sum += (float)row[c] * xt[c];
            out[(size_t)t * out_stride + r] = scales[r] * sum;
        }
    }
}

/* The activations split into int8 a and b (x ~ (256 a + b) * s2, trit_q4_split_x) are put together again as int16
 * 256 a + b: a 16-bit lane of weights holds four nibbles, taken out by shifts and masks, and one madd multiplies 16 of
 * them by their activations (at most 2 * 15 * 32767 a lane, exact). A group of 64 weights so costs 4 multiplies, not
 * the 8 of maddubs on a and b and the madds that widened them, and each int32 lane sums the same four columns as
 * before, so the logits are the same floats. One thread on Zen 3 reads the 2B4T head 6-8% faster (issue 20). The
 * nibbles' offset of 8 is subtracted per block at the end. */
#define HEAD_MAX_COLS 16384

/* The int16 activations of a group of 64 columns in the order its nibbles come out of 16-bit lanes: the low nibbles
 * of even bytes (columns 0, 2, .. 30), of odd bytes (1, 3, .. 31), then the high nibbles' (32, 34, .. and 33, 35, ..).
 */
static void q4_pair_x(int16_t *x16, const int8_t *a, const int8_t *b, int cols) {
    for (int c = 0; c < cols; c += TRIT_Q4_GROUP)
        for (int part = 0; part < 4; part++)
            for (int k = 0; k < 16; k++) {
                int col = c + 32 * (part >> 1) + 2 * k + (part & 1);
                x16[c + 16 * part + k] = (int16_t)(256 * a[col] + b[col]);
            }
}

static void q4_matmul(float *out, int out_stride, const uint8_t *w, const uint16_t *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    if (cols > HEAD_MAX_COLS || cols % 256) { /* 8 scales at a time; shapes no BitNet has take the definition */
        trit_kernel_scalar.q4_matmul(out, out_stride, w, scales, cols, x, n_tokens, r0, r1);
        return;
    }
    _Alignas(32) int8_t a[HEAD_MAX_COLS], b[HEAD_MAX_COLS];
    _Alignas(32) int16_t x16[HEAD_MAX_COLS];
    _Alignas(32) float block_x[HEAD_MAX_COLS / TRIT_Q4_BLOCK];
    const int blocks = cols / TRIT_Q4_BLOCK;
    const __m256i low4 = _mm256_set1_epi16(15);
    for (int t = 0; t < n_tokens; t++) {
        float s2;
        trit_q4_split_x(a, b, block_x, &s2, x + (size_t)t * cols, cols, 0);
        q4_pair_x(x16, a, b, cols);
        for (int r = r0; r < r1; r++) {
            const uint8_t *row = w + (size_t)r * cols / 2;
            const uint16_t *rs = scales + (size_t)r * blocks;
            __m256 acc_lo = _mm256_setzero_ps(), acc_hi = acc_lo, offset = acc_lo;
            for (int c0 = 0; c0 < cols; c0 += 256) { /* 8 scales = 4 groups at a time */
                __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rs + c0 / TRIT_Q4_BLOCK)));
                offset = _mm256_fmadd_ps(d, _mm256_load_ps(block_x + c0 / TRIT_Q4_BLOCK), offset);
                _mm_prefetch((const char *)(rs + c0 / TRIT_Q4_BLOCK) + TRIT_PREFETCH / 8, _MM_HINT_T0);
                for (int g = 0; g < 4; g++) {
                    int c = c0 + 64 * g;
                    /* every 32 bytes, though a line is 64: prefetching every other step read 15-20% slower here */
                    _mm_prefetch((const char *)row + c / 2 + TRIT_PREFETCH, _MM_HINT_T0);
                    __m256i q = _mm256_loadu_si256((const __m256i *)(row + c / 2));
                    const __m256i *xg = (const __m256i *)(x16 + c);
                    __m256i s_lo = _mm256_add_epi32(
                        _mm256_madd_epi16(_mm256_and_si256(q, low4), _mm256_load_si256(xg)),
                        _mm256_madd_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 8), low4), _mm256_load_si256(xg + 1)));
                    __m256i s_hi = _mm256_add_epi32(
                        _mm256_madd_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), _mm256_load_si256(xg + 2)),
                        _mm256_madd_epi16(_mm256_srli_epi16(q, 12), _mm256_load_si256(xg + 3)));
                    acc_lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_lo),
                                             _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(2 * g)), acc_lo);
                    acc_hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_hi),
                                             _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(2 * g + 1)), acc_hi);
                }
            }
            out[(size_t)t * out_stride + r] = s2 * (hsum_f32(_mm256_add_ps(acc_lo, acc_hi)) - hsum_f32(offset));
        }
    }
}

/* cvtps2dq rounds to nearest even in the default MXCSR mode, like nearbyintf; values past int8 saturate in the
 * packs exactly as the scalar clamp does. */
static float quantize(int8_t *xq, int32_t *sum, const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float amax = _mm_cvtss_f32(m);
    for (; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float s = 127.0f * (1.0f / (amax > 1e-5f ? amax : 1e-5f));
    __m256 vs = _mm256_set1_ps(s);
    __m256i total = _mm256_setzero_si256();
    for (i = 0; i + 32 <= n; i += 32) {
        __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
        __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs));
        __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vs));
        __m256i q3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vs));
        __m256i w01 = _mm256_packs_epi32(q0, q1), w23 = _mm256_packs_epi32(q2, q3);
        __m256i b =
            _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(xq + i), b);
        total = _mm256_add_epi32(total, _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
    }
    int32_t acc = hsum_i32(total);
    for (; i < n; i++) {
        float r = nearbyintf(x[i] * s);
        xq[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -128.0f ? -128.0f : r));
        acc += xq[i];
    }
    *sum = acc;
    return s;
}

/* e^x for x <= 0: x = n ln2 + r, a degree-6 polynomial for e^r, times 2^n built in the exponent bits. */
static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n =
        _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
}

static inline __m256 load_f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Eight elements i.. of a KV cache of a TRIT_KV_* type as floats (int8 ones unscaled). */
static inline __attribute__((always_inline)) __m256 load_kv8(const void *base, size_t i, int type) {
    if (type == TRIT_KV_F32) return _mm256_loadu_ps((const float *)base + i);
    if (type == TRIT_KV_Q8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)base + i))));
    return load_f16x8((const uint16_t *)base + i);
}

/* o_r[0..31] (r = 0, 1) += sum over keys k < n of p_r[k] * V_k[0..31] (rows of a cache of `type`, v_step elements
 * apart), one FMA chain per element in key order, from 0 when from_zero; the eight accumulators are named registers.
 * `prefetch` bytes of each row are asked for TRIT_PREFETCH ahead (decoding streams the values from memory). */
static inline __attribute__((always_inline)) void pv_rows2(float *o0, float *o1, int from_zero, const float *p0,
                                                           const float *p1, const void *v, size_t v_step, int n,
                                                           int prefetch, int type) {
    __m256 a0 = from_zero ? _mm256_setzero_ps() : _mm256_loadu_ps(o0), a1 = from_zero ? a0 : _mm256_loadu_ps(o0 + 8),
           a2 = from_zero ? a0 : _mm256_loadu_ps(o0 + 16), a3 = from_zero ? a0 : _mm256_loadu_ps(o0 + 24),
           b0 = from_zero ? a0 : _mm256_loadu_ps(o1), b1 = from_zero ? a0 : _mm256_loadu_ps(o1 + 8),
           b2 = from_zero ? a0 : _mm256_loadu_ps(o1 + 16), b3 = from_zero ? a0 : _mm256_loadu_ps(o1 + 24);
    size_t size = trit_kv_type_size(type);
    for (int k = 0; k < n; k++) {
        const char *vk = (const char *)v + (size_t)k * v_step * size;
        for (int i = 0; i < prefetch; i += 64) _mm_prefetch(vk + TRIT_PREFETCH + i, _MM_HINT_T0);
        __m256 v0 = load_kv8(vk, 0, type), v1 = load_kv8(vk, 8, type), v2 = load_kv8(vk, 16, type),
               v3 = load_kv8(vk, 24, type);
        __m256 p = _mm256_set1_ps(p0[k]);
        a0 = _mm256_fmadd_ps(p, v0, a0), a1 = _mm256_fmadd_ps(p, v1, a1);
        a2 = _mm256_fmadd_ps(p, v2, a2), a3 = _mm256_fmadd_ps(p, v3, a3);
        p = _mm256_set1_ps(p1[k]);
        b0 = _mm256_fmadd_ps(p, v0, b0), b1 = _mm256_fmadd_ps(p, v1, b1);
        b2 = _mm256_fmadd_ps(p, v2, b2), b3 = _mm256_fmadd_ps(p, v3, b3);
    }
    _mm256_storeu_ps(o0, a0), _mm256_storeu_ps(o0 + 8, a1);
    _mm256_storeu_ps(o0 + 16, a2), _mm256_storeu_ps(o0 + 24, a3);
    _mm256_storeu_ps(o1, b0), _mm256_storeu_ps(o1 + 8, b1);
    _mm256_storeu_ps(o1 + 16, b2), _mm256_storeu_ps(o1 + 24, b3);
}

/* The scores of 4 query heads (q0..q3, head_dim floats each) for the n <= 16 keys of a key block starting at `row`
 * (its dimension 0 at the first of those keys): one FMA chain per key in the order of d, times vscale, stored to
 * dst[h][0 .. n). Each dimension of the keys is loaded and converted once for the four heads (q8 and f16 cost a
 * conversion per 8 elements), and 4 heads by 16 keys fill the registers: 8 sums, 2 keys, the broadcast query. The sums
 * are named registers (GCC spilled an array of them). `prefetch` asks for the block TRIT_PREFETCH ahead. */
static inline __attribute__((always_inline)) void score_quad(int type, float *const dst[4], int n, const float *q0,
                                                             const float *q1, const float *q2, const float *q3,
                                                             const char *row, __m256 vscale0, __m256 vscale1,
                                                             int head_dim, int prefetch) {
    const size_t step = TRIT_KEY_BLOCK * trit_kv_type_size(type);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, e0 = a0, e1 = a0;
#pragma GCC unroll 4
    for (int d = 0; d < head_dim; d++, row += step) {
        for (size_t i = 0; prefetch && i < step; i += 64) _mm_prefetch(row + TRIT_PREFETCH + i, _MM_HINT_T0);
        __m256 k0 = load_kv8(row, 0, type), k1 = load_kv8(row, 8, type);
        __m256 x = _mm256_broadcast_ss(q0 + d);
        a0 = _mm256_fmadd_ps(x, k0, a0), a1 = _mm256_fmadd_ps(x, k1, a1);
        x = _mm256_broadcast_ss(q1 + d);
        b0 = _mm256_fmadd_ps(x, k0, b0), b1 = _mm256_fmadd_ps(x, k1, b1);
        x = _mm256_broadcast_ss(q2 + d);
        c0 = _mm256_fmadd_ps(x, k0, c0), c1 = _mm256_fmadd_ps(x, k1, c1);
        x = _mm256_broadcast_ss(q3 + d);
        e0 = _mm256_fmadd_ps(x, k0, e0), e1 = _mm256_fmadd_ps(x, k1, e1);
    }
    __m256 sums[8] = {a0, a1, b0, b1, c0, c1, e0, e1};
    for (int h = 0; h < 4; h++) {
        _Alignas(32) float s[16];
        float *to = n == 16 ? dst[h] : s; /* a last block's keys past n_keys go to s, not into the next head's row */
        _mm256_storeu_ps(to, _mm256_mul_ps(sums[2 * h], vscale0));
        _mm256_storeu_ps(to + 8, _mm256_mul_ps(sums[2 * h + 1], vscale1));
        for (int j = 0; to == s && j < n; j++) dst[h][j] = s[j];
    }
}

/* o_h[0..15] (h = 0..3) += sum over keys k < n of p_h[k] * V_k[0..15] (rows of a cache of `type`, v_step elements
 * apart), one FMA chain per element in key order, from 0 when from_zero: each value converted once for the four heads,
 * the eight sums named registers. */
static inline __attribute__((always_inline)) void pv_quad(float *const o[4], int from_zero, const float *const p[4],
                                                          const void *v, size_t v_step, int n, int type) {
    __m256 z = _mm256_setzero_ps();
    __m256 a0 = from_zero ? z : _mm256_loadu_ps(o[0]), a1 = from_zero ? z : _mm256_loadu_ps(o[0] + 8),
           b0 = from_zero ? z : _mm256_loadu_ps(o[1]), b1 = from_zero ? z : _mm256_loadu_ps(o[1] + 8),
           c0 = from_zero ? z : _mm256_loadu_ps(o[2]), c1 = from_zero ? z : _mm256_loadu_ps(o[2] + 8),
           e0 = from_zero ? z : _mm256_loadu_ps(o[3]), e1 = from_zero ? z : _mm256_loadu_ps(o[3] + 8);
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    size_t size = trit_kv_type_size(type);
#pragma GCC unroll 4
    for (int k = 0; k < n; k++) {
        const char *vk = (const char *)v + (size_t)k * v_step * size;
        __m256 v0 = load_kv8(vk, 0, type), v1 = load_kv8(vk, 8, type);
        __m256 w = _mm256_broadcast_ss(p0 + k);
        a0 = _mm256_fmadd_ps(w, v0, a0), a1 = _mm256_fmadd_ps(w, v1, a1);
        w = _mm256_broadcast_ss(p1 + k);
        b0 = _mm256_fmadd_ps(w, v0, b0), b1 = _mm256_fmadd_ps(w, v1, b1);
        w = _mm256_broadcast_ss(p2 + k);
        c0 = _mm256_fmadd_ps(w, v0, c0), c1 = _mm256_fmadd_ps(w, v1, c1);
        w = _mm256_broadcast_ss(p3 + k);
        e0 = _mm256_fmadd_ps(w, v0, e0), e1 = _mm256_fmadd_ps(w, v1, e1);
    }
    _mm256_storeu_ps(o[0], a0), _mm256_storeu_ps(o[0] + 8, a1), _mm256_storeu_ps(o[1], b0);
    _mm256_storeu_ps(o[1] + 8, b1), _mm256_storeu_ps(o[2], c0), _mm256_storeu_ps(o[2] + 8, c1);
    _mm256_storeu_ps(o[3], e0), _mm256_storeu_ps(o[3] + 8, e1);
}

/* As in the AVX-512 kernel: the heads of a group share every key and value read, and in fours every conversion of one
 * too (score_quad, pv_quad; converting q8 once per pair of heads had taken a third of the time 4000 keys deep); a
 * remaining pair or single head runs two heads of 32 keys or dimensions (a single one repeats itself into a spare
 * row). Neither loop keeps a whole head in registers, so any multiple of 32 runs here: Falcon3's head_dim 256 had
 * taken the scalar path. One body for every cache type (a constant where it is inlined): q8's key scales multiply the
 * scores, its value scales the weights p. Every sum keeps its order whichever tile computes it. The caller checks
 * head_dim % 32. */
static inline __attribute__((always_inline)) void attend_any(int type, float *out, const float *q, const void *keys,
                                                             const float *key_scales, const void *values,
                                                             const float *value_scales, int kv_stride, int n_keys,
                                                             int head_dim, int group, float *scores, float *lse) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t size = trit_kv_type_size(type);
    const int quads = group / 4 * 4;
    /* the first block of values, into L2 while the scores are computed (later blocks are asked for while the one
     * before them is used) */
    for (size_t i = 0, n = (size_t)(n_keys < 64 ? n_keys : 64) * kv_stride * size; i < n; i += 64)
        _mm_prefetch((const char *)values + i, _MM_HINT_T1);
    /* scores, a block of 32 keys at a time: every tile of heads reads it while it is in L1, and the first prefetches
     * the keys ahead (decoding streams them from memory) */
    for (int k0 = 0; k0 < n_keys; k0 += TRIT_KEY_BLOCK) {
        const char *kt = (const char *)keys + trit_key_index(k0, 0, head_dim) * size;
        __m256 vscale[4];
        for (int i = 0; i < 4; i++)
            vscale[i] = type == TRIT_KV_Q8
                            ? _mm256_mul_ps(_mm256_loadu_ps(key_scales + k0 + 8 * i), _mm256_set1_ps(scale))
                            : _mm256_set1_ps(scale);
        for (int h0 = 0; h0 < quads; h0 += 4)
            for (int j = 0; j < TRIT_KEY_BLOCK && k0 + j < n_keys; j += 16) {
                const float *q0 = q + (size_t)h0 * head_dim;
                float *dst[4];
                for (int h = 0; h < 4; h++) dst[h] = scores + (size_t)(h0 + h) * n_keys + k0 + j;
                int n = n_keys - k0 - j < 16 ? n_keys - k0 - j : 16;
                score_quad(type, dst, n, q0, q0 + head_dim, q0 + 2 * (size_t)head_dim, q0 + 3 * (size_t)head_dim,
                           kt + (size_t)j * size, vscale[j / 8], vscale[j / 8 + 1], head_dim, h0 == 0 && j == 0);
            }
        for (int h0 = quads; h0 < group; h0 += 2) {
            const float *q0 = q + (size_t)h0 * head_dim, *q1 = h0 + 1 < group ? q0 + head_dim : q0;
            __m256 a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
            for (int d = 0; d < head_dim; d++) {
                const char *row = kt + (size_t)d * TRIT_KEY_BLOCK * size;
                for (int i = 0; h0 == 0 && i < TRIT_KEY_BLOCK * (int)size; i += 64)
                    _mm_prefetch(row + TRIT_PREFETCH + i, _MM_HINT_T0);
                __m256 x0 = _mm256_set1_ps(q0[d]), x1 = _mm256_set1_ps(q1[d]);
                for (int i = 0; i < 4; i++) {
                    __m256 kv = load_kv8(row, 8 * (size_t)i, type);
                    a[i] = _mm256_fmadd_ps(x0, kv, a[i]);
                    b[i] = _mm256_fmadd_ps(x1, kv, b[i]);
                }
            }
            _Alignas(32) float s0[TRIT_KEY_BLOCK], s1[TRIT_KEY_BLOCK];
            for (int i = 0; i < 4; i++) {
                _mm256_store_ps(s0 + 8 * i, _mm256_mul_ps(a[i], vscale[i]));
                _mm256_store_ps(s1 + 8 * i, _mm256_mul_ps(b[i], vscale[i]));
            }
            for (int k = k0; k < n_keys && k < k0 + TRIT_KEY_BLOCK; k++) {
                scores[(size_t)h0 * n_keys + k] = s0[k - k0];
                if (h0 + 1 < group) scores[(size_t)(h0 + 1) * n_keys + k] = s1[k - k0];
            }
        }
    }
    for (int h = 0; h < group; h++) {
        float *sc = scores + (size_t)h * n_keys;
        int k;
        /* the maximum on 8 lanes (a chain of scalar comparisons had cost a tenth of the time) */
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        for (k = 0; k + 8 <= n_keys; k += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(sc + k));
        _Alignas(32) float lanes[8];
        _mm256_store_ps(lanes, vmax);
        float max = -INFINITY;
        for (int i = 0; i < 8; i++) max = lanes[i] > max ? lanes[i] : max;
        for (; k < n_keys; k++) max = sc[k] > max ? sc[k] : max;
        __m256 vsum = _mm256_setzero_ps(), m = _mm256_set1_ps(max);
        for (k = 0; k + 8 <= n_keys; k += 8) {
            __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + k), m));
            _mm256_storeu_ps(sc + k, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum_f32(vsum);
        for (; k < n_keys; k++) {
            sc[k] = expf(sc[k] - max);
            sum += sc[k];
        }
        float inv = 1.0f / sum;
        if (lse) lse[h] = max + logf(sum);
        if (type == TRIT_KV_Q8)
            for (k = 0; k < n_keys; k++) sc[k] = sc[k] * inv * value_scales[k];
        else
            for (k = 0; k < n_keys; k++) sc[k] *= inv;
    }
    /* the values in blocks of 64 keys, each read from memory once and then from L1 for every tile of heads and
     * dimensions; a last single head repeats itself and stores into a spare row */
    _Alignas(32) float spare[32] = {0};
    /* with fours of heads, every tile asks for its share of the next block's rows, so that the misses are spread over
     * the block (the first tile asking for all of them had waited for them: 15% of the time 4000 keys deep) */
    const size_t row = (size_t)kv_stride * size, row_bytes = (size_t)head_dim * size;
    const int tiles = head_dim / 32 * (quads / 2), rows_per_tile = quads ? (64 + tiles - 1) / tiles : 0;
    for (int k0 = 0; k0 < n_keys; k0 += 64) {
        int kb = n_keys - k0 < 64 ? n_keys - k0 : 64, tile = 0;
        for (int d0 = 0; d0 < head_dim; d0 += 32) {
            for (int h0 = 0; h0 < quads; h0 += 4)
                for (int j = 0; j < 32; j += 16, tile++) {
                    for (int k = k0 + 64 + tile * rows_per_tile;
                         k < n_keys && k < k0 + 64 + (tile + 1) * rows_per_tile && k < k0 + 128; k++)
                        for (size_t i = 0; i < row_bytes; i += 64)
                            _mm_prefetch((const char *)values + k * row + i, _MM_HINT_T0);
                    float *o[4];
                    const float *p[4];
                    for (int h = 0; h < 4; h++)
                        o[h] = out + (size_t)(h0 + h) * head_dim + d0 + j,
                        p[h] = scores + (size_t)(h0 + h) * n_keys + k0;
                    pv_quad(o, k0 == 0, p, (const char *)values + ((size_t)k0 * kv_stride + d0 + j) * size,
                            (size_t)kv_stride, kb, type);
                }
            for (int h0 = quads; h0 < group; h0 += 2) {
                int two = h0 + 1 < group;
                float *o0 = out + (size_t)h0 * head_dim + d0, *o1 = two ? o0 + head_dim : spare;
                const float *p0 = scores + (size_t)h0 * n_keys + k0, *p1 = two ? p0 + n_keys : p0;
                pv_rows2(o0, o1, k0 == 0, p0, p1, (const char *)values + ((size_t)k0 * kv_stride + d0) * size,
                         (size_t)kv_stride, kb, d0 == 0 && h0 == 0 ? kv_stride * (int)size : 0, type);
            }
        }
    }
}

static void attend(float *out, const float *q, const uint16_t *keys, const uint16_t *values, int kv_stride, int n_keys,
                   int head_dim, int group, float *scores, float *lse) {
    if (head_dim % 32)
        trit_kernel_scalar.attend(out, q, keys, values, kv_stride, n_keys, head_dim, group, scores, lse);
    else
        attend_any(TRIT_KV_F16, out, q, keys, NULL, values, NULL, kv_stride, n_keys, head_dim, group, scores, lse);
}

static void attend_f32(float *out, float *lse, const float *q, const float *keys, const float *values, int n_keys,
                       int head_dim, int group, float *scratch) {
    if (head_dim % 32)
        trit_kernel_scalar.attend_f32(out, lse, q, keys, values, n_keys, head_dim, group, scratch);
    else
        attend_any(TRIT_KV_F32, out, q, keys, NULL, values, NULL, head_dim, n_keys, head_dim, group, scratch, lse);
}

static void attend_q8(float *out, float *lse, const float *q, const int8_t *keys, const float *key_scales,
                      const int8_t *values, const float *value_scales, int n_keys, int head_dim, int group,
                      float *scratch) {
    if (head_dim % 32)
        trit_kernel_scalar.attend_q8(out, lse, q, keys, key_scales, values, value_scales, n_keys, head_dim, group,
                                     scratch);
    else
        attend_any(TRIT_KV_Q8, out, q, keys, key_scales, values, value_scales, head_dim, n_keys, head_dim, group,
                   scratch, lse);
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

/* Prefill: this kernel's attend for one token after another, so a batch gives the floats of single tokens. */
static void attend_tokens(float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                          int n_q, int n_keys0, int head_dim, int group, float *scratch) {
    trit_attend_each_token(attend, out, q, q_stride, keys, values, n_q, n_keys0, head_dim, group, scratch);
}

static void scale_sums(float *out, const int32_t *acc, float f, int n, int add) {
    __m256 vf = _mm256_set1_ps(f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc + i))), vf);
        _mm256_storeu_ps(out + i, add ? _mm256_add_ps(_mm256_loadu_ps(out + i), y) : y);
    }
    trit_kernel_scalar.scale_sums(out + i, acc + i, f, n - i, add); /* the tail, by the definition */
}

static void relu2_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    __m256 vg = _mm256_set1_ps(fg), vu = _mm256_set1_ps(fu), zero = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(gate + i))), vg);
        __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(up + i))), vu);
        g = _mm256_and_ps(g, _mm256_cmp_ps(g, zero, _CMP_GT_OQ));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, g), u));
    }
    trit_kernel_scalar.relu2_sums(out + i, gate + i, fg, up + i, fu, n - i);
}

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    float ss = hsum_f32(_mm256_add_ps(s0, s1));
    for (; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i,
                         _mm256_mul_ps(_mm256_loadu_ps(weight + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv)));
    for (; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/* vcvtps2ph rounds to nearest even, as trit_f32_to_f16 does */
static void to_f16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = trit_f32_to_f16(src[i]);
}

#ifdef TRIT_AVXVNNI
const trit_kernel trit_kernel_avxvnni = {
    .name = "avxvnni",
    .supported = trit_cpu_has_avxvnni,
#else
const trit_kernel trit_kernel_avx2 = {
    .name = "avx2",
    .supported = trit_cpu_has_avx2,
#endif
    .ternary_matmul = ternary_matmul,
    .t5_matmul = t5_matmul,
    /* on a shared 2-core Zen 3 (issue 20) T5 cost 19% more CPU time a decoded token and 14% more in prefill: its
     * decode costs more than TQ2's 25% more bytes save. 0 here makes the engine load T5 where that measures faster */
    .tq2_faster = 1,
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
    .rmsnorm = rmsnorm,
    .to_f16 = to_f16,
    .axpy_f16 = axpy_f16,
};
