/* AVX-512 kernel with VNNI (vpdpbusd: 64 unsigned x signed byte products summed into 16 int32 lanes per
 * instruction) and VBMI (byte permutes). Compiled with -mavx512{f,bw,vl,vnni,vbmi}; called only when the CPU has
 * them all (Ice Lake and later, Zen 4 and later). */
#include <immintrin.h>
#include <math.h>

#include "trit_internal.h"

/* W.x = sum(code * x) - sum(x), code = w + 1 in 0..2 (unsigned operand), x the int8 activations (signed).
 * Each 64-byte load holds four rows at the same 64 columns: one activation load serves four vpdpbusd, and a tile of
 * 4 tokens reuses each decoded weight vector four times (prefill; 16 accumulators fit the 32 registers). Columns past
 * the last full 64 use masked loads, whose zero bytes add nothing. The accumulators are named registers: an array would
 * be spilled to the stack. */
#define DECODE(b)                                                                                                      \
    __m512i c0 = _mm512_and_si512(b, mask), c1 = _mm512_and_si512(_mm512_srli_epi16(b, 2), mask),                      \
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
#define ACC_STEP(i, load)                                                                                              \
    {                                                                                                                  \
        __m512i xv = load;                                                                                             \
        dpbusd(&a0_##i, c0, xv);                                                                                       \
        dpbusd(&a1_##i, c1, xv);                                                                                       \
        dpbusd(&a2_##i, c2, xv);                                                                                       \
        dpbusd(&a3_##i, c3, xv);                                                                                       \
    }
#define ACC_FULL(i) ACC_STEP(i, _mm512_loadu_si512(x + (size_t)cols * (i) + c))
#define ACC_TAIL(i) ACC_STEP(i, _mm512_maskz_loadu_epi8(live, x + (size_t)cols * (i) + c))
#define ACC_STORE(i)                                                                                                   \
    {                                                                                                                  \
        int32_t *o = out + (size_t)(t0 + i) * rows + pr, s = xsum[t0 + i];                                             \
        o[0] = _mm512_reduce_add_epi32(a0_##i) - s;                                                                    \
        o[quarter] = _mm512_reduce_add_epi32(a1_##i) - s;                                                              \
        o[2 * quarter] = _mm512_reduce_add_epi32(a2_##i) - s;                                                          \
        o[3 * quarter] = _mm512_reduce_add_epi32(a3_##i) - s;                                                          \
    }

#define DEFINE_TILE(NAME, EACH)                                                                                        \
    static __attribute__((noinline)) void NAME(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, \
                                               const int32_t *xsum, int t0, int pr) {                                  \
        const __m512i mask = _mm512_set1_epi8(3);                                                                      \
        const int quarter = rows / 4, full = cols & ~63;                                                               \
        const int8_t *x = xq + (size_t)t0 * cols;                                                                      \
        EACH(ACC_DECL)                                                                                                 \
        int c = 0;                                                                                                     \
        for (; c < full; c += 64) {                                                                                    \
            _mm_prefetch((const char *)row + c + TRIT_PREFETCH, _MM_HINT_T0);                                          \
            __m512i b = _mm512_loadu_si512(row + c);                                                                   \
            DECODE(b);                                                                                                 \
            EACH(ACC_FULL)                                                                                             \
        }                                                                                                              \
        if (c < cols) {                                                                                                \
            __mmask64 live = ((__mmask64)1 << (cols - c)) - 1;                                                         \
            __m512i b = _mm512_maskz_loadu_epi8(live, row + c);                                                        \
            DECODE(b);                                                                                                 \
            EACH(ACC_TAIL)                                                                                             \
        }                                                                                                              \
        EACH(ACC_STORE)                                                                                                \
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

/* T5 decode: two compares split off the top digit d4 (b >= 81, b >= 162), which leaves l = b mod 81 in 0..80;
 * digits 0..3 of l come from one 128-entry table lookup each (vpermi2b). */
typedef struct {
    __m512i lo[4], hi[4];   /* digit j of l, for l = 0..63 and 64..127 */
    __m512i mlo[3], mhi[3]; /* l mod 3^(j+1): the low j+1 digits as one number */
} t5_tables;

static t5_tables make_t5_tables(void) {
    _Alignas(64) uint8_t table[4][128], low[3][128];
    for (int l = 0; l < 128; l++) {
        for (int j = 0, v = l; j < 4; j++, v /= 3) table[j][l] = (uint8_t)(l < 81 ? v % 3 : 0);
        for (int j = 0, m = 3; j < 3; j++, m *= 3) low[j][l] = (uint8_t)(l < 81 ? l % m : 0);
    }
    t5_tables t;
    for (int j = 0; j < 4; j++) {
        t.lo[j] = _mm512_load_si512(table[j]);
        t.hi[j] = _mm512_load_si512(table[j] + 64);
    }
    for (int j = 0; j < 3; j++) {
        t.mlo[j] = _mm512_load_si512(low[j]);
        t.mhi[j] = _mm512_load_si512(low[j] + 64);
    }
    return t;
}

#define T5_DECODE(b)                                                                                                   \
    __mmask64 k1 = _mm512_cmpge_epu8_mask(b, n81), k2 = _mm512_cmpge_epu8_mask(b, n162);                               \
    __m512i l = _mm512_mask_sub_epi8(b, k1, b, n81);                                                                   \
    l = _mm512_mask_sub_epi8(l, k2, l, n81);                                                                           \
    __m512i d0 = _mm512_permutex2var_epi8(tab.lo[0], l, tab.hi[0]);                                                    \
    __m512i d1 = _mm512_permutex2var_epi8(tab.lo[1], l, tab.hi[1]);                                                    \
    __m512i d2 = _mm512_permutex2var_epi8(tab.lo[2], l, tab.hi[2]);                                                    \
    __m512i d3 = _mm512_permutex2var_epi8(tab.lo[3], l, tab.hi[3]);                                                    \
    __m512i d4 = _mm512_maskz_mov_epi8(k1, one);                                                                       \
    d4 = _mm512_mask_add_epi8(d4, k2, d4, one)

/* One token's sums need the digits only through sum(x * d_j). With m_j = b mod 3^j (m_0 = 0, m_5 = b),
 * m_(j+1) - m_j = 3^j d_j, so sum(x * d_j) = (sum(x * m_(j+1)) - sum(x * m_j)) / 3^j exactly: the vpdpbusd run on
 * b mod 3, 9, 27 (three lookups), l = b mod 81 and b itself, and the rows are told apart after the sums. Three
 * lookups and the two reductions of l instead of four lookups and four more instructions for d4. */
#define T5_PARTIALS(b)                                                                                                 \
    __mmask64 k1 = _mm512_cmpge_epu8_mask(b, n81), k2 = _mm512_cmpge_epu8_mask(b, n162);                               \
    __m512i l = _mm512_mask_sub_epi8(b, k1, b, n81);                                                                   \
    l = _mm512_mask_sub_epi8(l, k2, l, n81);                                                                           \
    __m512i d0 = _mm512_permutex2var_epi8(tab.mlo[0], l, tab.mhi[0]);                                                  \
    __m512i d1 = _mm512_permutex2var_epi8(tab.mlo[1], l, tab.mhi[1]);                                                  \
    __m512i d2 = _mm512_permutex2var_epi8(tab.mlo[2], l, tab.mhi[2]);                                                  \
    __m512i d3 = l, d4 = b

#define T5_ACC_DECL(i)                                                                                                 \
    __m512i e0_##i = _mm512_setzero_si512(), e1_##i = e0_##i, e2_##i = e0_##i, e3_##i = e0_##i, e4_##i = e0_##i;
#define T5_ACC_STEP(i, load)                                                                                           \
    {                                                                                                                  \
        __m512i xv = load;                                                                                             \
        dpbusd(&e0_##i, d0, xv);                                                                                       \
        dpbusd(&e1_##i, d1, xv);                                                                                       \
        dpbusd(&e2_##i, d2, xv);                                                                                       \
        dpbusd(&e3_##i, d3, xv);                                                                                       \
        dpbusd(&e4_##i, d4, xv);                                                                                       \
    }
#define T5_ACC_FULL(i) T5_ACC_STEP(i, _mm512_loadu_si512(x + (size_t)cols * (i) + c))
#define T5_ACC_TAIL(i) T5_ACC_STEP(i, _mm512_maskz_loadu_epi8(live, x + (size_t)cols * (i) + c))
#define T5_STORE_ONE(sum, j)                                                                                           \
    if (g + groups * (j) < rows) o[groups * (j)] = (sum) - (s);
#define T5_ACC_STORE(i)                                                                                                \
    {                                                                                                                  \
        int32_t *o = out + (size_t)(t0 + i) * rows + g, s = xsum[t0 + i];                                              \
        int32_t m1 = _mm512_reduce_add_epi32(e0_##i), m2 = _mm512_reduce_add_epi32(e1_##i),                            \
                m3 = _mm512_reduce_add_epi32(e2_##i), m4 = _mm512_reduce_add_epi32(e3_##i),                            \
                m5 = _mm512_reduce_add_epi32(e4_##i);                                                                  \
        T5_STORE_ONE(m1, 0)                                                                                            \
        T5_STORE_ONE((m2 - m1) / 3, 1)                                                                                 \
        T5_STORE_ONE((m3 - m2) / 9, 2)                                                                                 \
        T5_STORE_ONE((m4 - m3) / 27, 3)                                                                                \
        T5_STORE_ONE((m5 - m4) / 81, 4)                                                                                \
    }

#define DEFINE_T5_TILE(NAME, EACH)                                                                                     \
    static __attribute__((noinline)) void NAME(int32_t *out, const uint8_t *row, int rows, int cols, const int8_t *xq, \
                                               const int32_t *xsum, int t0, int g, const t5_tables *tables) {          \
        const t5_tables tab = *tables;                                                                                 \
        const __m512i n81 = _mm512_set1_epi8(81), n162 = _mm512_set1_epi8((char)162);                                  \
        const int groups = trit_t5_groups(rows), full = cols & ~63;                                                    \
        const int8_t *x = xq + (size_t)t0 * cols;                                                                      \
        EACH(T5_ACC_DECL)                                                                                              \
        int c = 0;                                                                                                     \
        for (; c < full; c += 64) {                                                                                    \
            _mm_prefetch((const char *)row + c + TRIT_PREFETCH, _MM_HINT_T0);                                          \
            __m512i b = _mm512_loadu_si512(row + c);                                                                   \
            T5_PARTIALS(b);                                                                                            \
            EACH(T5_ACC_FULL)                                                                                          \
        }                                                                                                              \
        if (c < cols) {                                                                                                \
            __mmask64 live = ((__mmask64)1 << (cols - c)) - 1;                                                         \
            __m512i b = _mm512_maskz_loadu_epi8(live, row + c);                                                        \
            T5_PARTIALS(b);                                                                                            \
            EACH(T5_ACC_TAIL)                                                                                          \
        }                                                                                                              \
        EACH(T5_ACC_STORE)                                                                                             \
    }

DEFINE_T5_TILE(t5_tile1, EACH1)
DEFINE_T5_TILE(t5_tile2, EACH2)

/* In place: r[i] becomes column i of the 16x16 matrix whose rows were r[0..15]. */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
    }
}

/* A batch with rows in lanes: 16 row groups at a time are decoded so that lane j of a vector holds the four codes of
 * row g + j at four columns, and a token's four activations there are broadcast to every lane. Each of the five
 * vectors then makes 16 rows' sums at once: nothing is summed across lanes (per-row tiles of 5 rows x 4 tokens spent
 * about a tenth of their instructions on that). The broadcast goes to a register that all five vpdpbusd read:
 * vpdpbusd's embedded broadcast loads once per instruction, and Ice Lake, which runs two vpdpbusd a cycle, has only
 * two load ports for those and the codes (1.75x as fast in one thread). Columns go in slabs so the codes stay in L2. */
#define LANE_GROUPS TRIT_ROW_GROUP_BLOCK
#define LANE_SLAB 1024 /* columns; 5 digits x 1024 x 16 groups = 80 KB of codes */

/* codes[c4][digit][64]: for columns [c0, c0 + 4 * n4) of groups [g, g + ng) (missing groups give unused lanes) */
static void t5_decode_lanes(uint8_t *codes, const uint8_t *packed, int cols, int g, int ng, int c0, int n4,
                            const t5_tables *tables) {
    const t5_tables tab = *tables;
    const __m512i n81 = _mm512_set1_epi8(81), n162 = _mm512_set1_epi8((char)162), one = _mm512_set1_epi8(1);
    for (int c = 0; c < 4 * n4; c += 64) {
        int n = 4 * n4 - c < 64 ? 4 * n4 - c : 64;
        __mmask64 live = n == 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
        __m512 r[16];
        for (int j = 0; j < 16; j++) /* row j: 64 bytes = 16 dwords of four columns */
            r[j] = _mm512_castsi512_ps(j < ng ? _mm512_maskz_loadu_epi8(live, packed + (size_t)(g + j) * cols + c0 + c)
                                              : _mm512_setzero_si512());
        transpose16(r); /* r[i]: the dword of four columns c + 4i of every row, row j in lane j */
        for (int i = 0; i < n / 4; i++) {
            __m512i b = _mm512_castps_si512(r[i]);
            T5_DECODE(b);
            uint8_t *at = codes + (size_t)(c / 4 + i) * 5 * 64;
            _mm512_store_si512(at, d0);
            _mm512_store_si512(at + 64, d1);
            _mm512_store_si512(at + 128, d2);
            _mm512_store_si512(at + 192, d3);
            _mm512_store_si512(at + 256, d4);
        }
    }
}

#define EACH3(F) F(0) F(1) F(2)
#define EACH5(F) F(0) F(1) F(2) F(3) F(4)
#define LANE_DECL(i)                                                                                                   \
    __m512i h0_##i = _mm512_setzero_si512(), h1_##i = h0_##i, h2_##i = h0_##i, h3_##i = h0_##i, h4_##i = h0_##i;
#define LANE_STEP(i)                                                                                                   \
    {                                                                                                                  \
        const __m512i xb = _mm512_set1_epi32(((const int32_t *)(x + (size_t)cols * (i)))[c]);                          \
        dpbusd(&h0_##i, w0, xb);                                                                                       \
        dpbusd(&h1_##i, w1, xb);                                                                                       \
        dpbusd(&h2_##i, w2, xb);                                                                                       \
        dpbusd(&h3_##i, w3, xb);                                                                                       \
        dpbusd(&h4_##i, w4, xb);                                                                                       \
    }
/* rows g..g+15 of digit j for token i: the first slab writes sum - xsum, later slabs add */
#define LANE_STORE_ONE(acc, j, i)                                                                                      \
    {                                                                                                                  \
        int r0 = groups * (j) + g, n = rows - r0 < ng ? rows - r0 : ng;                                                \
        if (n > 0) {                                                                                                   \
            __mmask16 m = (__mmask16)((1u << n) - 1);                                                                  \
            int32_t *o = out + (size_t)(t0 + i) * rows + r0;                                                           \
            __m512i v = first ? _mm512_sub_epi32(acc, _mm512_set1_epi32(xsum[t0 + i]))                                 \
                              : _mm512_add_epi32(acc, _mm512_maskz_loadu_epi32(m, o));                                 \
            _mm512_mask_storeu_epi32(o, m, v);                                                                         \
        }                                                                                                              \
    }
#define LANE_STORE(i)                                                                                                  \
    {                                                                                                                  \
        LANE_STORE_ONE(h0_##i, 0, i)                                                                                   \
        LANE_STORE_ONE(h1_##i, 1, i)                                                                                   \
        LANE_STORE_ONE(h2_##i, 2, i)                                                                                   \
        LANE_STORE_ONE(h3_##i, 3, i)                                                                                   \
        LANE_STORE_ONE(h4_##i, 4, i)                                                                                   \
    }
#define DEFINE_LANE_TILE(NAME, EACH)                                                                                   \
    static __attribute__((noinline)) void NAME(int32_t *out, const uint8_t *codes, int rows, int cols, int c0, int n4, \
                                               const int8_t *xq, const int32_t *xsum, int t0, int g, int ng,           \
                                               int first) {                                                            \
        const int groups = trit_t5_groups(rows);                                                                       \
        const int8_t *x = xq + (size_t)t0 * cols + c0;                                                                 \
        EACH(LANE_DECL)                                                                                                \
        for (int c = 0; c < n4; c++) {                                                                                 \
            const uint8_t *w = codes + (size_t)c * 5 * 64;                                                             \
            __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 64), w2 = _mm512_load_si512(w + 128),        \
                    w3 = _mm512_load_si512(w + 192), w4 = _mm512_load_si512(w + 256);                                  \
            EACH(LANE_STEP)                                                                                            \
        }                                                                                                              \
        EACH(LANE_STORE)                                                                                               \
    }
DEFINE_LANE_TILE(lane_tile5, EACH5)
DEFINE_LANE_TILE(lane_tile4, EACH4)
DEFINE_LANE_TILE(lane_tile3, EACH3)
DEFINE_LANE_TILE(lane_tile2, EACH2)
DEFINE_LANE_TILE(lane_tile1, EACH1)

static void t5_matmul_lanes(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                            const int32_t *xsum, int n_tokens, int g0, int g1, const t5_tables *tables) {
    _Alignas(64) uint8_t codes[LANE_SLAB / 4 * 5 * 64];
    for (int g = g0; g < g1; g += LANE_GROUPS) {
        int ng = g1 - g < LANE_GROUPS ? g1 - g : LANE_GROUPS;
        for (int c0 = 0; c0 < cols; c0 += LANE_SLAB) {
            int n4 = (cols - c0 < LANE_SLAB ? cols - c0 : LANE_SLAB) / 4, first = c0 == 0;
            t5_decode_lanes(codes, packed, cols, g, ng, c0, n4, tables);
            for (int j = 0; g + LANE_GROUPS + j < g1 && j < LANE_GROUPS; j++) /* the next block's slab, into L2 */
                for (int c = 0; c < 4 * n4; c += 64)
                    _mm_prefetch((const char *)packed + (size_t)(g + LANE_GROUPS + j) * cols + c0 + c, _MM_HINT_T1);
            int t = 0;
            for (; t + 5 <= n_tokens; t += 5) lane_tile5(out, codes, rows, cols, c0, n4, xq, xsum, t, g, ng, first);
            switch (n_tokens - t) {
            case 4: lane_tile4(out, codes, rows, cols, c0, n4, xq, xsum, t, g, ng, first); break;
            case 3: lane_tile3(out, codes, rows, cols, c0, n4, xq, xsum, t, g, ng, first); break;
            case 2: lane_tile2(out, codes, rows, cols, c0, n4, xq, xsum, t, g, ng, first); break;
            case 1: lane_tile1(out, codes, rows, cols, c0, n4, xq, xsum, t, g, ng, first); break;
            }
        }
    }
}

static void t5_matmul(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                      int n_tokens, int g0, int g1) {
    const t5_tables tables = make_t5_tables();
    if (n_tokens >= 8 && cols % 4 == 0) { /* every real model; other widths take the per-row tiles below */
        t5_matmul_lanes(out, packed, rows, cols, xq, xsum, n_tokens, g0, g1, &tables);
        return;
    }
    for (int tb = 0; tb < n_tokens; tb += TOKEN_BLOCK) {
        int te = tb + TOKEN_BLOCK < n_tokens ? tb + TOKEN_BLOCK : n_tokens;
        for (int g = g0; g < g1; g++) {
            const uint8_t *row = packed + (size_t)g * cols;
            int t = tb;
            for (; t + 2 <= te; t += 2) t5_tile2(out, row, rows, cols, xq, xsum, t, g, &tables);
            if (t < te) t5_tile1(out, row, rows, cols, xq, xsum, t, g, &tables);
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

/* x is split into two int8 parts, x ~= s1*a + s2*b with |error| <= max|x| / 64516 (far below the int8 weights' own
 * error), so each 64 weights cost two vpdpbusd instead of sixteen conversions and FMAs. vpdpbusd wants one unsigned
 * operand: the weights are flipped to q + 128 with a xor, and 128 * sum(a) is taken off again. */
typedef struct {
    float s1, s2;
    int32_t sum_a, sum_b;
} split_x;

static split_x split_activations(int8_t *a, int8_t *b, const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    split_x s = {amax > 0.0f ? amax / 127.0f : 1.0f, 0.0f, 0, 0};
    s.s2 = s.s1 / 254.0f;
    for (int i = 0; i < n; i++) {
        float hi = nearbyintf(x[i] / s.s1);
        float lo = nearbyintf((x[i] - hi * s.s1) / s.s2);
        a[i] = (int8_t)hi;
        b[i] = (int8_t)(lo > 127.0f ? 127.0f : (lo < -127.0f ? -127.0f : lo));
        s.sum_a += a[i];
        s.sum_b += b[i];
    }
    return s;
}

#define HEAD_MAX_COLS 16384

static void q8_matmul(float *out, int out_stride, const int8_t *w, const float *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    if (cols > HEAD_MAX_COLS || cols % 64) { /* shapes no BitNet has: the plain definition */
        trit_kernel_avx2.q8_matmul(out, out_stride, w, scales, cols, x, n_tokens, r0, r1);
        return;
    }
    _Alignas(64) int8_t a[HEAD_MAX_COLS], b[HEAD_MAX_COLS];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int t = 0; t < n_tokens; t++) {
        split_x s = split_activations(a, b, x + (size_t)t * cols, cols);
        for (int r = r0; r < r1; r++) {
            const int8_t *row = w + (size_t)r * cols;
            __m512i acc_a = _mm512_setzero_si512(), acc_b = acc_a;
            for (int c = 0; c < cols; c += 64) {
                __m512i wu = _mm512_xor_si512(_mm512_loadu_si512(row + c), flip);
                dpbusd(&acc_a, wu, _mm512_load_si512(a + c));
                dpbusd(&acc_b, wu, _mm512_load_si512(b + c));
            }
            int32_t ia = _mm512_reduce_add_epi32(acc_a) - 128 * s.sum_a;
            int32_t ib = _mm512_reduce_add_epi32(acc_b) - 128 * s.sum_b;
            out[(size_t)t * out_stride + r] = scales[r] * ((float)ia * s.s1 + (float)ib * s.s2);
        }
    }
}

/* The same split of x, with s2 = s1 / 256 so that x ~= s2 * (256 a + b): per 64 columns (two blocks of 32) two
 * vpdpbusd of the nibbles q in 0..15 give int32 lanes 0..7 for the first block and 8..15 for the second, which meet
 * their fp16 scales in one FMA. The -8 offset comes off at the end: 8 * sum over blocks of d * (256 A + B). */
static void q4_matmul(float *out, int out_stride, const uint8_t *w, const uint16_t *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1) {
    if (cols > HEAD_MAX_COLS || cols % 512) { /* 16 scales at a time; other widths take the AVX2 path */
        trit_kernel_avx2.q4_matmul(out, out_stride, w, scales, cols, x, n_tokens, r0, r1);
        return;
    }
    /* One 64-byte load holds groups 2p and 2p+1: its low nibbles are their elements 0..31, its high nibbles 32..63.
     * The activations are stored in that order (a pair's 128 as 0..31, 64..95, 32..63, 96..127), so both nibble
     * vectors meet theirs without a shuffle; each then gives 256 a + b as one vpdpbusd into the other's shifted sum. */
    _Alignas(64) int8_t a[HEAD_MAX_COLS], b[HEAD_MAX_COLS];
    _Alignas(64) float block_x[HEAD_MAX_COLS / TRIT_Q4_BLOCK]; /* 8 * sum of (256 a + b) over each block */
    const int blocks = cols / TRIT_Q4_BLOCK;
    const __m512i low4 = _mm512_set1_epi8(15);
    /* the scale of each lane, from the 16 scales of 4 pairs: low nibbles of pair p are blocks 4p (lanes 0-7) and
     * 4p+2 (8-15), high nibbles blocks 4p+1 and 4p+3 */
    __m512i idx_lo[4], idx_hi[4];
    for (int p = 0; p < 4; p++) {
        idx_lo[p] = _mm512_set_epi32(4 * p + 2, 4 * p + 2, 4 * p + 2, 4 * p + 2, 4 * p + 2, 4 * p + 2, 4 * p + 2,
                                     4 * p + 2, 4 * p, 4 * p, 4 * p, 4 * p, 4 * p, 4 * p, 4 * p, 4 * p);
        idx_hi[p] = _mm512_add_epi32(idx_lo[p], _mm512_set1_epi32(1));
    }
    for (int t = 0; t < n_tokens; t++) {
        float s2;
        trit_q4_split_x(a, b, block_x, &s2, x + (size_t)t * cols, cols, 1);
        for (int r = r0; r < r1; r++) {
            const uint8_t *row = w + (size_t)r * cols / 2;
            const uint16_t *rs = scales + (size_t)r * blocks;
            __m512 acc_lo = _mm512_setzero_ps(), acc_hi = acc_lo, offset = acc_lo;
            for (int c0 = 0; c0 < cols; c0 += 512) { /* 16 scales = 4 pairs at a time */
                __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rs + c0 / TRIT_Q4_BLOCK)));
                offset = _mm512_fmadd_ps(d, _mm512_load_ps(block_x + c0 / TRIT_Q4_BLOCK), offset);
                _mm_prefetch((const char *)(rs + c0 / TRIT_Q4_BLOCK) + TRIT_PREFETCH / 8, _MM_HINT_T0);
                for (int p = 0; p < 4; p++) {
                    int c = c0 + 128 * p;
                    _mm_prefetch((const char *)row + c / 2 + TRIT_PREFETCH, _MM_HINT_T0);
                    __m512i q = _mm512_loadu_si512(row + c / 2);
                    __m512i lo = _mm512_and_si512(q, low4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
                    __m512i s_lo = _mm512_setzero_si512(), s_hi = s_lo;
                    dpbusd(&s_lo, lo, _mm512_load_si512(a + c));
                    dpbusd(&s_hi, hi, _mm512_load_si512(a + c + 64));
                    s_lo = _mm512_slli_epi32(s_lo, 8);
                    s_hi = _mm512_slli_epi32(s_hi, 8);
                    dpbusd(&s_lo, lo, _mm512_load_si512(b + c));
                    dpbusd(&s_hi, hi, _mm512_load_si512(b + c + 64));
                    acc_lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s_lo), _mm512_permutexvar_ps(idx_lo[p], d), acc_lo);
                    acc_hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s_hi), _mm512_permutexvar_ps(idx_hi[p], d), acc_hi);
                }
            }
            out[(size_t)t * out_stride + r] =
                s2 * (_mm512_reduce_add_ps(_mm512_add_ps(acc_lo, acc_hi)) - _mm512_reduce_add_ps(offset));
        }
    }
}

static float quantize(int8_t *xq, int32_t *sum, const float *x, int n) {
    __m512 vmax = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    float amax = _mm512_reduce_max_ps(vmax);
    for (; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float s = 127.0f * (1.0f / (amax > 1e-5f ? amax : 1e-5f));
    __m512 vs = _mm512_set1_ps(s);
    __m512i total = _mm512_setzero_si512();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vs)); /* round half to even */
        _mm_storeu_si128((__m128i *)(xq + i), _mm512_cvtsepi32_epi8(q));           /* saturate to int8 */
        total = _mm512_add_epi32(
            total, _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-128)));
    }
    int32_t acc = _mm512_reduce_add_epi32(total);
    for (; i < n; i++) {
        float r = nearbyintf(x[i] * s);
        xq[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -128.0f ? -128.0f : r));
        acc += xq[i];
    }
    *sum = acc;
    return s;
}

/* e^x for x <= 0 (softmax after subtracting the max): x = n ln2 + r, a degree-6 polynomial for e^r, times 2^n. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 load_f16x16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

#define KEY_BLOCK 64 /* values of one block stay in L1 while every head of the group reads them */

/* o_r[0..63] (r = 0..3) += sum over keys k < n of p_r[k * p_step] * V_k[0..63], one FMA chain per element in key
 * order; from_zero starts the chains at 0 instead of o_r. V_k is at v + k * v_step, fp16 or f32. The sixteen
 * accumulators are named registers: where a loop over the heads could not be unrolled, GCC kept an array of them in
 * memory, a load and a store around every FMA (decoding's attention, 1.1-1.6x slower). */
#define PV_DECL(r)                                                                                                     \
    __m512 a##r##0 = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(o##r),                                          \
           a##r##1 = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(o##r + 16),                                     \
           a##r##2 = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(o##r + 32),                                     \
           a##r##3 = from_zero ? _mm512_setzero_ps() : _mm512_loadu_ps(o##r + 48);
#define PV_STEP(r)                                                                                                     \
    {                                                                                                                  \
        __m512 pr = _mm512_set1_ps(p##r[(size_t)k * p_step]);                                                          \
        a##r##0 = _mm512_fmadd_ps(pr, v0, a##r##0);                                                                    \
        a##r##1 = _mm512_fmadd_ps(pr, v1, a##r##1);                                                                    \
        a##r##2 = _mm512_fmadd_ps(pr, v2, a##r##2);                                                                    \
        a##r##3 = _mm512_fmadd_ps(pr, v3, a##r##3);                                                                    \
    }
#define PV_STORE(r)                                                                                                    \
    _mm512_storeu_ps(o##r, a##r##0), _mm512_storeu_ps(o##r + 16, a##r##1), _mm512_storeu_ps(o##r + 32, a##r##2),       \
        _mm512_storeu_ps(o##r + 48, a##r##3);
static inline __attribute__((always_inline)) void pv_rows4(float *o0, float *o1, float *o2, float *o3, int from_zero,
                                                           const float *p0, const float *p1, const float *p2,
                                                           const float *p3, int p_step, const void *v, size_t v_step,
                                                           int n, int f16, int prefetch) {
    PV_DECL(0)
    PV_DECL(1)
    PV_DECL(2)
    PV_DECL(3)
    for (int k = 0; k < n; k++) {
        __m512 v0, v1, v2, v3;
        if (f16) {
            const uint16_t *vk = (const uint16_t *)v + (size_t)k * v_step;
            for (int i = 0; i < prefetch; i += 64) /* the whole row of a key this far ahead (decoding) */
                _mm_prefetch((const char *)vk + TRIT_PREFETCH + i, _MM_HINT_T0);
            v0 = load_f16x16(vk), v1 = load_f16x16(vk + 16), v2 = load_f16x16(vk + 32), v3 = load_f16x16(vk + 48);
        } else {
            const float *vk = (const float *)v + (size_t)k * v_step;
            v0 = _mm512_loadu_ps(vk), v1 = _mm512_loadu_ps(vk + 16), v2 = _mm512_loadu_ps(vk + 32),
            v3 = _mm512_loadu_ps(vk + 48);
        }
        PV_STEP(0) PV_STEP(1) PV_STEP(2) PV_STEP(3)
    }
    PV_STORE(0)
    PV_STORE(1)
    PV_STORE(2)
    PV_STORE(3)
}

/* One token (decoding). It rounds exactly as attend_tokens does, so a prompt gives the same logits whether it was
 * evaluated in one batch or token by token: each score is one chain of FMAs over d from 0, times the scale; the
 * softmax sums in key order; out accumulates p * V in key order. For that the keys go in lanes: the cache stores a
 * block of 32 keys dimension by dimension (kt[d][key]), and every head of the group (four at a time) reads it. */
static void attend(float *out, const float *q, const uint16_t *keys, const uint16_t *values, int kv_stride, int n_keys,
                   int head_dim, int group, float *scores, float *lse) {
    if (head_dim % 64 || head_dim > 256) {
        trit_kernel_scalar.attend(out, q, keys, values, kv_stride, n_keys, head_dim, group, scores, lse);
        return;
    }
    const __m512 vscale = _mm512_set1_ps(1.0f / sqrtf((float)head_dim));
    static const float zero_q[256]; /* the missing heads of a last set of four */
    for (int k0 = 0; k0 < n_keys; k0 += 32) {
        int kb = n_keys - k0 < 32 ? n_keys - k0 : 32;
        const uint16_t *kt = keys + trit_key_index(k0, 0, head_dim); /* [head_dim][32]: keys in lanes */
        __mmask16 live_lo = kb >= 16 ? 0xffff : (__mmask16)((1u << kb) - 1);
        __mmask16 live_hi = kb <= 16 ? 0 : kb == 32 ? 0xffff : (__mmask16)((1u << (kb - 16)) - 1);
        for (int h0 = 0; h0 < group; h0 += 4) {
            const float *qh[4];
            for (int h = 0; h < 4; h++) qh[h] = h0 + h < group ? q + (size_t)(h0 + h) * head_dim : zero_q;
            __m512 lo0 = _mm512_setzero_ps(), lo1 = lo0, lo2 = lo0, lo3 = lo0, hi0 = lo0, hi1 = lo0, hi2 = lo0,
                   hi3 = lo0;
            for (int d = 0; d < head_dim; d++) {
                if (h0 == 0) _mm_prefetch((const char *)(kt + (size_t)d * 32) + TRIT_PREFETCH, _MM_HINT_T0);
                __m512 a = load_f16x16(kt + (size_t)d * 32), b = load_f16x16(kt + (size_t)d * 32 + 16);
                __m512 q0 = _mm512_set1_ps(qh[0][d]), q1 = _mm512_set1_ps(qh[1][d]), q2 = _mm512_set1_ps(qh[2][d]),
                       q3 = _mm512_set1_ps(qh[3][d]);
                lo0 = _mm512_fmadd_ps(q0, a, lo0), hi0 = _mm512_fmadd_ps(q0, b, hi0);
                lo1 = _mm512_fmadd_ps(q1, a, lo1), hi1 = _mm512_fmadd_ps(q1, b, hi1);
                lo2 = _mm512_fmadd_ps(q2, a, lo2), hi2 = _mm512_fmadd_ps(q2, b, hi2);
                lo3 = _mm512_fmadd_ps(q3, a, lo3), hi3 = _mm512_fmadd_ps(q3, b, hi3);
            }
            __m512 lo[4] = {lo0, lo1, lo2, lo3}, hi[4] = {hi0, hi1, hi2, hi3};
            for (int h = 0; h < 4 && h0 + h < group; h++) {
                float *sc = scores + (size_t)(h0 + h) * n_keys + k0;
                _mm512_mask_storeu_ps(sc, live_lo, _mm512_mul_ps(lo[h], vscale));
                _mm512_mask_storeu_ps(sc + 16, live_hi, _mm512_mul_ps(hi[h], vscale));
            }
        }
    }
    for (int h0 = 0; h0 < group; h0 += 4) { /* softmax, four heads at a time so the sums' dependency chains overlap */
        int nh = group - h0 < 4 ? group - h0 : 4;
        float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f}, max[4];
        for (int h = 0; h < nh; h++) {
            float *sc = scores + (size_t)(h0 + h) * n_keys;
            __m512 vmax = _mm512_set1_ps(-INFINITY);
            for (int k = 0; k < n_keys; k += 16) {
                __mmask16 live = n_keys - k >= 16 ? 0xffff : (__mmask16)((1u << (n_keys - k)) - 1);
                vmax = _mm512_mask_max_ps(vmax, live, vmax, _mm512_maskz_loadu_ps(live, sc + k));
            }
            max[h] = _mm512_reduce_max_ps(vmax);
            __m512 m = _mm512_set1_ps(max[h]);
            for (int k = 0; k < n_keys; k += 16) {
                __mmask16 live = n_keys - k >= 16 ? 0xffff : (__mmask16)((1u << (n_keys - k)) - 1);
                _mm512_mask_storeu_ps(sc + k, live, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sc + k), m)));
            }
        }
        const float *e[4];
        for (int h = 0; h < 4; h++) e[h] = scores + (size_t)(h0 + (h < nh ? h : 0)) * n_keys;
        for (int k = 0; k < n_keys; k++) {
            sum[0] += e[0][k], sum[1] += e[1][k], sum[2] += e[2][k], sum[3] += e[3][k];
        }
        for (int h = 0; h < nh; h++) {
            float *sc = scores + (size_t)(h0 + h) * n_keys;
            __m512 inv = _mm512_set1_ps(1.0f / sum[h]);
            if (lse) lse[h0 + h] = max[h] + logf(sum[h]);
            for (int k = 0; k < n_keys; k += 16) {
                __mmask16 live = n_keys - k >= 16 ? 0xffff : (__mmask16)((1u << (n_keys - k)) - 1);
                _mm512_mask_storeu_ps(sc + k, live, _mm512_mul_ps(_mm512_maskz_loadu_ps(live, sc + k), inv));
            }
        }
    }
    /* the values in blocks, so each is read from memory once and then from L1 for every head and dimension; a last
     * set of fewer than four heads repeats its first head and stores only its own */
    _Alignas(64) float spare[3][64] = {{0}};
    for (int k0 = 0; k0 < n_keys; k0 += KEY_BLOCK) {
        int kb = n_keys - k0 < KEY_BLOCK ? n_keys - k0 : KEY_BLOCK;
        for (int d0 = 0; d0 < head_dim; d0 += 64)
            for (int h0 = 0; h0 < group; h0 += 4) {
                float *o[4];
                const float *p[4];
                for (int h = 0; h < 4; h++) {
                    int own = h0 + h < group;
                    o[h] = own ? out + (size_t)(h0 + h) * head_dim + d0 : spare[h - 1];
                    p[h] = scores + (size_t)(own ? h0 + h : h0) * n_keys + k0;
                }
                pv_rows4(o[0], o[1], o[2], o[3], k0 == 0, p[0], p[1], p[2], p[3], 1,
                         values + (size_t)k0 * kv_stride + d0, (size_t)kv_stride, kb, 1,
                         d0 == 0 && h0 == 0 ? kv_stride * (int)sizeof(uint16_t) : 0);
            }
    }
}

/* Prefill: the rows r = token * group + head of up to TRIT_ATTEND_ROWS tokens' heads (two vectors of 16) are scored
 * against every key together. A vector holds one key's scores for 16 rows: the queries are transposed once (qt[d][r])
 * and each key element is broadcast from an f32 copy of a block of keys, so no dot product needs a horizontal sum and
 * each key is converted once for all rows. Softmax runs across keys with the rows in lanes; then out[r] += p[r][k] *
 * V[k] for 4 rows and 64 dimensions at a time, from an f32 copy of a block of values. */
#define ROWS TRIT_ATTEND_ROWS
_Static_assert(ROWS == 32, "attend_tokens keeps its rows in two vectors of 16");
#define KB TRIT_ATTEND_KEY_BLOCK

static void to_f32_block(float *dst, const uint16_t *src, int n_rows, int head_dim) {
    for (int i = 0; i < n_rows * head_dim; i += 16) _mm512_storeu_ps(dst + i, load_f16x16(src + i));
    for (int i = n_rows * head_dim; i < KB * head_dim; i += 16) _mm512_storeu_ps(dst + i, _mm512_setzero_ps());
}

#define SCORE_STEP(j)                                                                                                  \
    {                                                                                                                  \
        __m512 kv = _mm512_set1_ps(kf[d * KB + k + (j)]);                                                              \
        lo##j = _mm512_fmadd_ps(a, kv, lo##j);                                                                         \
        hi##j = _mm512_fmadd_ps(b, kv, hi##j);                                                                         \
    }
#define SCORE_STORE(j)                                                                                                 \
    if (k + (j) < kb) {                                                                                                \
        _mm512_storeu_ps(st + (size_t)(k0 + k + (j)) * ROWS, _mm512_mul_ps(lo##j, vscale));                            \
        _mm512_storeu_ps(st + (size_t)(k0 + k + (j)) * ROWS + 16, _mm512_mul_ps(hi##j, vscale));                       \
    }
#define EACH8(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
#define ZERO2(j) __m512 lo##j = _mm512_setzero_ps(), hi##j = lo##j;

static void attend_tokens(float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                          int n_q, int n_keys0, int head_dim, int group, float *scratch) {
    if (head_dim % 64 || head_dim > 256 || group > ROWS) {
        for (int i = 0; i < n_q; i++)
            attend(out + (size_t)i * q_stride, q + (size_t)i * q_stride, keys, values, head_dim, n_keys0 + i + 1,
                   head_dim, group, scratch, NULL);
        return;
    }
    const float scale = 1.0f / sqrtf((float)head_dim);
    const __m512 vscale = _mm512_set1_ps(scale);
    const int per_block = ROWS / group;
    for (int t0 = 0; t0 < n_q; t0 += per_block) {
        int nt = n_q - t0 < per_block ? n_q - t0 : per_block, rows = nt * group, n_keys = n_keys0 + t0 + nt;
        float *st = scratch, *qt = st + (size_t)n_keys * ROWS, *kf = qt + (size_t)ROWS * head_dim;
        float *pad = kf + (size_t)KB * head_dim; /* where rows past the last go */
        float *row_out[ROWS];
        _Alignas(64) int32_t limit[ROWS]; /* row r sees keys 0 .. limit[r] - 1 */
        for (int r = 0; r < ROWS; r++) {
            int t = t0 + r / group, h = r % group;
            row_out[r] = r < rows ? out + (size_t)t * q_stride + (size_t)h * head_dim : pad;
            limit[r] = r < rows ? n_keys0 + t + 1 : n_keys;
            for (int d = 0; d < head_dim; d++)
                qt[d * ROWS + r] = r < rows ? q[(size_t)t * q_stride + (size_t)h * head_dim + d] : 0.0f;
        }
        /* scores: st[k][r] */
        for (int k0 = 0; k0 < n_keys; k0 += KB) {
            int kb = n_keys - k0 < KB ? n_keys - k0 : KB;
            to_f32_block(kf, keys + trit_key_index(k0, 0, head_dim), KB, head_dim); /* kf[d][key]: whole block */
            for (int k = 0; k < kb; k += 8) {
                EACH8(ZERO2)
                for (int d = 0; d < head_dim; d++) {
                    __m512 a = _mm512_loadu_ps(qt + d * ROWS), b = _mm512_loadu_ps(qt + d * ROWS + 16);
                    EACH8(SCORE_STEP)
                }
                EACH8(SCORE_STORE)
            }
        }
        /* softmax over each row's keys, rows in lanes; both vectors of rows in one pass, so their dependency chains
         * (each a running max or sum over the keys in order) overlap */
        const __m512i lim0 = _mm512_load_si512(limit), lim1 = _mm512_load_si512(limit + 16);
        __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, n0 = m0, n1 = m0, sum0 = _mm512_setzero_ps(), sum1 = sum0;
        int k = 0;
        for (; k + 2 <= n_keys; k += 2) { /* a max needs no order: even and odd keys apart */
            __m512i k_even = _mm512_set1_epi32(k), k_odd = _mm512_set1_epi32(k + 1);
            const float *s0 = st + (size_t)k * ROWS;
            m0 = _mm512_mask_max_ps(m0, _mm512_cmplt_epi32_mask(k_even, lim0), m0, _mm512_loadu_ps(s0));
            m1 = _mm512_mask_max_ps(m1, _mm512_cmplt_epi32_mask(k_even, lim1), m1, _mm512_loadu_ps(s0 + 16));
            n0 = _mm512_mask_max_ps(n0, _mm512_cmplt_epi32_mask(k_odd, lim0), n0, _mm512_loadu_ps(s0 + ROWS));
            n1 = _mm512_mask_max_ps(n1, _mm512_cmplt_epi32_mask(k_odd, lim1), n1, _mm512_loadu_ps(s0 + ROWS + 16));
        }
        if (k < n_keys) {
            __m512i kv = _mm512_set1_epi32(k);
            m0 = _mm512_mask_max_ps(m0, _mm512_cmplt_epi32_mask(kv, lim0), m0, _mm512_loadu_ps(st + (size_t)k * ROWS));
            m1 = _mm512_mask_max_ps(m1, _mm512_cmplt_epi32_mask(kv, lim1), m1,
                                    _mm512_loadu_ps(st + (size_t)k * ROWS + 16));
        }
        m0 = _mm512_max_ps(m0, n0), m1 = _mm512_max_ps(m1, n1);
        for (k = 0; k < n_keys; k++) {
            __m512i kv = _mm512_set1_epi32(k);
            float *s0 = st + (size_t)k * ROWS;
            __m512 e0 =
                _mm512_maskz_mov_ps(_mm512_cmplt_epi32_mask(kv, lim0), exp512(_mm512_sub_ps(_mm512_loadu_ps(s0), m0)));
            __m512 e1 = _mm512_maskz_mov_ps(_mm512_cmplt_epi32_mask(kv, lim1),
                                            exp512(_mm512_sub_ps(_mm512_loadu_ps(s0 + 16), m1)));
            _mm512_storeu_ps(s0, e0);
            _mm512_storeu_ps(s0 + 16, e1);
            sum0 = _mm512_add_ps(sum0, e0);
            sum1 = _mm512_add_ps(sum1, e1);
        }
        __m512 inv0 = _mm512_div_ps(_mm512_set1_ps(1.0f), sum0), inv1 = _mm512_div_ps(_mm512_set1_ps(1.0f), sum1);
        for (k = 0; k < n_keys; k++) {
            float *s0 = st + (size_t)k * ROWS;
            _mm512_storeu_ps(s0, _mm512_mul_ps(_mm512_loadu_ps(s0), inv0));
            _mm512_storeu_ps(s0 + 16, _mm512_mul_ps(_mm512_loadu_ps(s0 + 16), inv1));
        }
        /* out[r] = sum_k p[r][k] * V[k] */
        for (int k0 = 0; k0 < n_keys; k0 += KB) {
            int kb = n_keys - k0 < KB ? n_keys - k0 : KB;
            to_f32_block(kf, values + (size_t)k0 * head_dim, kb, head_dim);
            for (int r0 = 0; r0 < rows; r0 += 4)
                for (int d0 = 0; d0 < head_dim; d0 += 64) {
                    const float *p = st + (size_t)k0 * ROWS + r0;
                    pv_rows4(row_out[r0] + d0, row_out[r0 + 1] + d0, row_out[r0 + 2] + d0, row_out[r0 + 3] + d0,
                             k0 == 0, p, p + 1, p + 2, p + 3, ROWS, kf + d0, (size_t)head_dim, kb, 0, 0);
                }
        }
    }
}
#undef ROWS
#undef KB

static void axpy_f16(float *y, float alpha, const uint16_t *x, int n) {
    __m512 va = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, v, _mm512_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] += alpha * trit_f16_to_f32(x[i]);
}

static void scale_sums(float *out, const int32_t *acc, float f, int n, int add) {
    __m512 vf = _mm512_set1_ps(f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(acc + i)), vf);
        _mm512_storeu_ps(out + i, add ? _mm512_add_ps(_mm512_loadu_ps(out + i), y) : y);
    }
    trit_kernel_scalar.scale_sums(out + i, acc + i, f, n - i, add); /* the tail, by the definition */
}

static void relu2_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n) {
    __m512 vg = _mm512_set1_ps(fg), vu = _mm512_set1_ps(fu), zero = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(gate + i)), vg);
        __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(up + i)), vu);
        g = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, zero, _CMP_GT_OQ), g);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(g, g), u));
    }
    trit_kernel_scalar.relu2_sums(out + i, gate + i, fg, up + i, fu, n - i);
}

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        s0 = _mm512_fmadd_ps(a, a, s0);
        s1 = _mm512_fmadd_ps(b, b, s1);
    }
    float ss = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for (; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i,
                         _mm512_mul_ps(_mm512_loadu_ps(weight + i), _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv)));
    for (; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/* vcvtps2ph rounds to nearest even, as trit_f32_to_f16 does */
static void to_f16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = trit_f32_to_f16(src[i]);
}

const trit_kernel trit_kernel_avx512 = {
    .name = "avx512vnni",
    .supported = trit_cpu_has_avx512vnni,
    .ternary_matmul = ternary_matmul,
    .t5_matmul = t5_matmul,
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
