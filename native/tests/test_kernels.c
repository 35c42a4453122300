/* test_kernels: every kernel this CPU runs, against the scalar kernel, through the public API (trit.h) only.
 *
 *   - the ternary matmul, TQ2 and T5, on odd shapes: int32 bit-identical (and the scalar one against a plain sum);
 *   - the activation quantisation: int8 values and scale bit-identical;
 *   - the bf16 / q8 / q4 output heads and attention over the fp16 cache: equal within a stated float tolerance;
 *     attention over a batch of tokens also bit-identical to the same tokens one at a time;
 *   - a whole tiny model (threads splitting rows, prefill tiles, decoding, every head, both ternary formats): logits
 *     close, which also covers what the public operations cannot reach (the quantiser's sum, row shares).
 *
 * One line per check; the last line is "N passed, M failed"; the exit status is 1 if anything failed. Plain C11 with
 * a fixed-seed generator, so a failure reproduces exactly. Run by native/tests/run-aarch64.sh (also under qemu) and
 * native/tests/run-windows.sh (under wine). */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trit.h"

static int passed, failed;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(ok ? "ok   " : "FAIL ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    if (ok)
        passed++;
    else
        failed++;
    fflush(stdout);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- a fixed-seed generator (splitmix64) ------------------------------------------------------------------------ */
static uint64_t rng;

static void seed(uint64_t s) { rng = s * 0x9E3779B97F4A7C15ull + 12345; }

static uint64_t next_u64(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int rand_int(int lo, int hi) { return lo + (int)(next_u64() % (uint64_t)(hi - lo + 1)); } /* inclusive */

static float rand_float(float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(next_u64() >> 40) / 16777216.0);
}

/* Maxima without fmaxf: aarch64 GCC 12.2 crashes vectorising an fmaxf reduction (vect_transform_reduction). NaN
 * loses to a number in max_f; in max_d, the worst error, NaN wins. */
static float max_f(float a, float b) { return b > a ? b : a; }
static double max_d(double worst, double e) { return e <= worst ? worst : e; }

static uint16_t f32_to_bf16(float f) { /* round to nearest even; the test never makes NaNs */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A positive normal fp16 with a random mantissa and exponent e - 15 for e in [e_lo, e_hi], and its value. */
static uint16_t rand_f16(int e_lo, int e_hi, float *value) {
    int e = rand_int(e_lo, e_hi), m = rand_int(0, 1023);
    *value = ldexpf(1.0f + (float)m / 1024.0f, e - 15);
    return (uint16_t)(e << 10 | m);
}

/* ---- the kernels ------------------------------------------------------------------------------------------------- */
static int n_kernels, scalar_index = -1;
static int runnable[16], n_runnable; /* indices of supported kernels, scalar last */

static const char *kname(int k) { return trit_kernel_name(k); }

static void select_kernel(int k) {
    if (trit_kernel_select(kname(k)) != TRIT_OK) {
        fprintf(stderr, "cannot select kernel %s: %s\n", kname(k), trit_last_error());
        exit(2);
    }
}

/* ---- ternary matmul ---------------------------------------------------------------------------------------------- */

/* W [rows][cols] in -1..1 packed as the checkpoint does (trit.h). */
static uint8_t *pack_tq2(const int8_t *w, int rows, int cols) {
    int quarter = rows / 4;
    uint8_t *p = xmalloc((size_t)quarter * cols);
    memset(p, 0, (size_t)quarter * cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            p[(size_t)(r % quarter) * cols + c] |= (uint8_t)((w[(size_t)r * cols + c] + 1) << (2 * (r / quarter)));
    return p;
}

enum { FILL_RANDOM, FILL_MAX, FILL_MIN, FILL_PLUS };

static void check_ternary_shape(int rows, int cols, int n, int fill) {
    const char *what = fill == FILL_RANDOM ? ""
                       : fill == FILL_MAX  ? " (largest sums)"
                       : fill == FILL_MIN  ? " (most negative sums)"
                                           : " (every weight +1)";
    seed((uint64_t)rows * 1000003u + (uint64_t)cols * 101u + (uint64_t)n * 7u + (uint64_t)fill);
    int8_t *w = xmalloc((size_t)rows * cols), *x = xmalloc((size_t)n * cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        w[i] = (int8_t)(fill == FILL_RANDOM ? rand_int(-1, 1)
                        : fill == FILL_PLUS ? 1
                                            : (i % 3 == 0 ? 1 : -1) * (fill == FILL_MAX ? 1 : -1));
    for (size_t i = 0; i < (size_t)n * cols; i++)
        x[i] = (int8_t)(fill == FILL_RANDOM ? rand_int(-128, 127)
                        : fill == FILL_PLUS ? (i / (size_t)cols % 2 ? 127 : -128) /* a token's x all alike */
                                            : (i % 3 == 0 ? 127 : -128));         /* every product at its extreme */
    uint8_t *tq2 = pack_tq2(w, rows, cols);
    uint8_t *t5 = xmalloc((size_t)trit_t5_size(rows, cols));
    if (trit_convert_tq2_to_t5(t5, tq2, rows, cols) != TRIT_OK) {
        check(0, "convert %dx%d to T5: %s", rows, cols, trit_last_error());
        return;
    }
    size_t n_out = (size_t)n * rows;
    int32_t *ref = xmalloc(sizeof(int32_t) * n_out), *want = xmalloc(sizeof(int32_t) * n_out);
    int32_t *got = xmalloc(sizeof(int32_t) * n_out);
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            int64_t s = 0;
            for (int c = 0; c < cols; c++) s += (int64_t)w[(size_t)r * cols + c] * x[(size_t)t * cols + c];
            ref[(size_t)t * rows + r] = (int32_t)s;
        }
    for (int format = TRIT_TERNARY_TQ2; format <= TRIT_TERNARY_T5; format++) {
        const char *fname = format == TRIT_TERNARY_TQ2 ? "tq2" : "t5";
        const uint8_t *packed = format == TRIT_TERNARY_TQ2 ? tq2 : t5;
        memset(want, 0x7f, sizeof(int32_t) * n_out);
        int rc = trit_op_ternary_matmul(scalar_index, format, want, packed, rows, cols, x, n);
        check(rc == TRIT_OK && memcmp(want, ref, sizeof(int32_t) * n_out) == 0,
              "%-4s scalar     = plain sum  rows=%d cols=%d tokens=%d%s", fname, rows, cols, n, what);
        for (int i = 0; i < n_runnable; i++) {
            int k = runnable[i];
            if (k == scalar_index) continue;
            memset(got, 0x7f, sizeof(int32_t) * n_out); /* every output must be written */
            rc = trit_op_ternary_matmul(k, format, got, packed, rows, cols, x, n);
            if (rc == TRIT_E_UNSUPPORTED && format == TRIT_TERNARY_T5) continue; /* reported once, in main */
            size_t bad = 0, first = 0;
            for (size_t j = 0; j < n_out; j++)
                if (got[j] != want[j] && !bad++) first = j;
            if (rc != TRIT_OK)
                check(0, "%-4s %-10s = scalar     rows=%d cols=%d tokens=%d%s: %s", fname, kname(k), rows, cols, n,
                      what, trit_last_error());
            else if (bad)
                check(0,
                      "%-4s %-10s = scalar     rows=%d cols=%d tokens=%d%s: %zu of %zu differ, first [t=%zu][r=%zu] "
                      "%d != %d",
                      fname, kname(k), rows, cols, n, what, bad, n_out, first / (size_t)rows, first % (size_t)rows,
                      got[first], want[first]);
            else
                check(1, "%-4s %-10s = scalar     rows=%d cols=%d tokens=%d%s", fname, kname(k), rows, cols, n, what);
        }
    }
    free(w), free(x), free(tq2), free(t5), free(ref), free(want), free(got);
}

static void check_ternary(void) {
    /* rows a multiple of 4 but not of 16 (T5: not of 5 either), columns not a multiple of 16, 32 or 64; token counts
     * that leave every tile size a remainder, and one past a 64-token block */
    /* clang-format off */
    static const int shapes[][3] = {
        {4, 1, 1},     {8, 15, 2},   {12, 17, 1},  {20, 31, 3},   {36, 33, 4},    {44, 63, 5},    {28, 65, 7},
        {52, 100, 1},  {60, 127, 6}, {68, 129, 9}, {260, 300, 7}, {12, 40, 70},   {132, 2563, 2}, {16, 6912, 1},
        {100, 257, 8}, {4, 48, 3},
        /* batches with rows in lanes: whole and partial blocks of 16 (T5) or 8 (TQ2) row groups, several column
         * slabs and a partial one, token tiles of 5 (T5) and 2 (TQ2) with every remainder */
        {400, 2560, 13}, {172, 1100, 9}, {84, 2052, 10}, {92, 1028, 11}, {164, 4096, 12},
        /* AVX2's T5: per row with 1..7 tokens; rows in lanes with blocks of 8 groups and the last digit's rows past the
         * end, column slabs of 512 and a last one of 4 columns, token tiles of 3 and 2 with their remainders */
        {4, 4, 8}, {28, 36, 10}, {44, 516, 8}, {92, 1540, 70}, {996, 161, 2}, {52, 33, 7}, {164, 1028, 11},
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_ternary_shape(shapes[i][0], shapes[i][1], shapes[i][2], FILL_RANDOM);
    /* every token count the batch tiles see at 1 to 70 (pairs and a last single; TQ2's four code vectors, T5's four and
     * one), on a full and a partial block of 8 byte rows and three column slabs, the last partial; and more tokens than
     * a row block keeps sums for at once (256), so a second block of tokens follows */
    for (int n = 1; n <= 70; n++) check_ternary_shape(44, 1100, n, FILL_RANDOM);
    check_ternary_shape(36, 520, 261, FILL_RANDOM);
    check_ternary_shape(8, 6912, 2, FILL_MAX); /* the longest 2B4T row with every product at +-128 */
    check_ternary_shape(8, 6912, 3, FILL_MIN);
    check_ternary_shape(40, 6912, 9, FILL_MAX); /* the same for the batch kernels, rows in lanes */
    check_ternary_shape(40, 6912, 9, FILL_MIN);
    /* T5 bytes all 242: the largest parts AVX2's T5 decode sums in int16, with every activation -128 or 127 */
    check_ternary_shape(20, 6912, 2, FILL_PLUS);
    check_ternary_shape(40, 6912, 9, FILL_PLUS);
}

/* ---- quantisation ------------------------------------------------------------------------------------------------ */

/* x[i] with x[i] * s exactly k + 0.5 (round half to even must pick k or k + 1 by parity), where it can be found. */
static int fill_ties(float *x, int n) {
    float amax = rand_float(0.5f, 4.0f), s = 127.0f * (1.0f / amax); /* the scale as trit_op_quantize computes it */
    int ties = 0;
    for (int i = 0; i < n; i++) {
        float t = (float)rand_int(-126, 126) + 0.5f, v = t / s;
        for (int step = 0; step < 8 && v * s != t; step++) v = nextafterf(v, v * s < t ? INFINITY : -INFINITY);
        x[i] = v;
        ties += v * s == t;
    }
    x[n / 2] = n % 2 ? amax : -amax;
    return ties;
}

static int fill_quantize(float *x, int n, int kind) {
    if (kind == 1) return fill_ties(x, n);
    for (int i = 0; i < n; i++) {
        switch (kind) {
        case 0: x[i] = rand_float(-3.0f, 3.0f); break;
        case 2: x[i] = rand_float(-1e-7f, 1e-7f); break; /* max below 1e-5: s = 127 / 1e-5 */
        case 3: x[i] = 0.0f; break;
        case 4: x[i] = rand_float(-1e30f, 1e30f); break;
        default: x[i] = (float)rand_int(-1000, 1000) / 8.0f; break;
        }
    }
    return 0;
}

static const char *ties_note(int kind, int ties) {
    static char note[32];
    snprintf(note, sizeof note, " (%d exact ties)", ties);
    return kind == 1 ? note : "";
}

static void check_quantize(void) {
    static const char *kinds[] = {"uniform", "ties", "tiny", "zeros", "huge", "eighths"};
    static const int sizes[] = {1, 3, 7, 15, 16, 17, 31, 33, 64, 100, 2560, 6913};
    for (int kind = 0; kind < 6; kind++)
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            int n = sizes[si];
            seed((uint64_t)kind * 7919u + (uint64_t)n);
            float *x = xmalloc(sizeof(float) * (size_t)n);
            int8_t *want = xmalloc((size_t)n), *got = xmalloc((size_t)n);
            int ties = fill_quantize(x, n, kind);
            select_kernel(scalar_index);
            float s_want = trit_op_quantize(want, x, n);
            for (int i = 0; i < n_runnable; i++) {
                int k = runnable[i];
                if (k == scalar_index) continue;
                select_kernel(k);
                memset(got, 0x55, (size_t)n);
                float s_got = trit_op_quantize(got, x, n);
                int same_s = memcmp(&s_got, &s_want, sizeof(float)) == 0, bad = 0, first = -1;
                for (int j = 0; j < n; j++)
                    if (got[j] != want[j] && !bad++) first = j;
                if (same_s && !bad)
                    check(1, "quantize %-10s = scalar     n=%d %s%s", kname(k), n, kinds[kind], ties_note(kind, ties));
                else
                    check(0,
                          "quantize %-10s = scalar     n=%d %s: scale %.9g vs %.9g, %d values differ "
                          "(first at %d: %d vs %d)",
                          kname(k), n, kinds[kind], s_got, s_want, bad, first, first >= 0 ? got[first] : 0,
                          first >= 0 ? want[first] : 0);
            }
            free(x), free(want), free(got);
        }
}

/* ---- output heads ------------------------------------------------------------------------------------------------ */

/* Float results may differ from the scalar kernel's by summation order and FMA contraction (|error| <= 1e-5 of the
 * sum of |w x| here, with room to spare), and for the compact heads by the SIMD kernels' split of x into two int8
 * parts (|error| <= max|x| / 32512 per element, times sum |w|). */
static void check_head(int head_type, int vocab, int hidden) {
    static const char *names[] = {"bf16", "q8", "q4"};
    seed((uint64_t)head_type * 65537u + (uint64_t)vocab * 131u + (uint64_t)hidden);
    float *x = xmalloc(sizeof(float) * (size_t)hidden), *wf = xmalloc(sizeof(float) * (size_t)vocab * hidden);
    void *head = NULL, *scales = NULL;
    for (int c = 0; c < hidden; c++) x[c] = rand_float(-2.0f, 2.0f);
    if (hidden > 8) x[hidden / 3] = 6.0f; /* one outlier, as real hidden states have */
    if (head_type == TRIT_HEAD_BF16) {
        uint16_t *h = xmalloc(sizeof(uint16_t) * (size_t)vocab * hidden);
        for (size_t i = 0; i < (size_t)vocab * hidden; i++) {
            h[i] = f32_to_bf16(rand_float(-0.1f, 0.1f));
            wf[i] = bf16_to_f32(h[i]);
        }
        head = h;
    } else if (head_type == TRIT_HEAD_Q8) {
        int8_t *h = xmalloc((size_t)vocab * hidden);
        float *sc = xmalloc(sizeof(float) * (size_t)vocab);
        for (int v = 0; v < vocab; v++) sc[v] = rand_float(0.0005f, 0.002f);
        for (size_t i = 0; i < (size_t)vocab * hidden; i++) {
            h[i] = (int8_t)rand_int(-127, 127);
            wf[i] = sc[i / (size_t)hidden] * (float)h[i];
        }
        head = h, scales = sc;
    } else {
        uint8_t *h = xmalloc((size_t)vocab * hidden / 2);
        int blocks = hidden / TRIT_Q4_BLOCK;
        uint16_t *sc = xmalloc(sizeof(uint16_t) * (size_t)vocab * blocks);
        float *scf = xmalloc(sizeof(float) * (size_t)vocab * blocks);
        for (size_t i = 0; i < (size_t)vocab * blocks; i++) sc[i] = rand_f16(3, 6, &scf[i]); /* 2^-12 .. 2^-8 */
        for (size_t i = 0; i < (size_t)vocab * hidden / 2; i++) h[i] = (uint8_t)rand_int(0, 255);
        for (int v = 0; v < vocab; v++)
            for (int c = 0; c < hidden; c++) {
                uint8_t byte = h[(size_t)v * hidden / 2 + c / TRIT_Q4_GROUP * 32 + c % 32];
                int q = c % TRIT_Q4_GROUP < 32 ? byte & 15 : byte >> 4;
                wf[(size_t)v * hidden + c] = scf[(size_t)v * blocks + c / TRIT_Q4_BLOCK] * (float)(q - 8);
            }
        free(scf);
        head = h, scales = sc;
    }
    float amax = 0.0f;
    for (int c = 0; c < hidden; c++) amax = max_f(amax, fabsf(x[c]));
    double *tol = xmalloc(sizeof(double) * (size_t)vocab), *tol_sum = xmalloc(sizeof(double) * (size_t)vocab);
    double *exact = xmalloc(sizeof(double) * (size_t)vocab);
    for (int v = 0; v < vocab; v++) {
        double l1 = 0.0, w1 = 0.0, sum = 0.0;
        for (int c = 0; c < hidden; c++) {
            double wv = wf[(size_t)v * hidden + c];
            sum += wv * x[c];
            l1 += fabs(wv * x[c]);
            w1 += fabs(wv);
        }
        exact[v] = sum;
        tol_sum[v] = 1e-5 * l1 + 1e-30;
        tol[v] = tol_sum[v] + (head_type == TRIT_HEAD_BF16 ? 0.0 : amax / 32512.0 * w1);
    }
    float *want = xmalloc(sizeof(float) * (size_t)vocab), *got = xmalloc(sizeof(float) * (size_t)vocab);
    select_kernel(scalar_index);
    int rc = trit_op_output_head(head_type, want, x, head, scales, vocab, hidden);
    double worst = 0.0;
    for (int v = 0; v < vocab && rc == TRIT_OK; v++) worst = max_d(worst, fabs(want[v] - exact[v]) / tol_sum[v]);
    /* the scalar kernel (no split of x) against a double-precision sum of the same weights */
    check(rc == TRIT_OK && worst <= 1.0,
          "head %-4s scalar     ~ exact sum  vocab=%d hidden=%d (worst %.2g of the tolerance)", names[head_type], vocab,
          hidden, worst);
    for (int i = 0; i < n_runnable; i++) {
        int k = runnable[i];
        if (k == scalar_index) continue;
        select_kernel(k);
        for (int v = 0; v < vocab; v++) got[v] = NAN;
        rc = trit_op_output_head(head_type, got, x, head, scales, vocab, hidden);
        worst = 0.0;
        int at = 0;
        for (int v = 0; v < vocab; v++) {
            double e = fabs((double)got[v] - want[v]) / tol[v];
            if (!(e <= worst)) worst = e, at = v; /* NaN counts as worst */
        }
        check(rc == TRIT_OK && worst <= 1.0,
              "head %-4s %-10s ~ scalar     vocab=%d hidden=%d (worst %.2g of the tolerance, %g vs %g)",
              names[head_type], kname(k), vocab, hidden, worst, got[at], want[at]);
    }
    free(x), free(wf), free(head), free(scales), free(tol), free(tol_sum), free(exact), free(want), free(got);
}

static void check_heads(void) {
    static const int any[][2] = {{1, 1},   {37, 17},  {37, 100}, {50, 64},  {33, 2560},
                                 {21, 80}, {9, 4100}, {5, 2576}, {3, 16400}};
    static const int q4[][2] = {{37, 64}, {50, 128}, {33, 192}, {17, 512}, {11, 2560}, {5, 4096}, {3, 16448}};
    for (size_t i = 0; i < sizeof any / sizeof any[0]; i++) {
        check_head(TRIT_HEAD_BF16, any[i][0], any[i][1]);
        check_head(TRIT_HEAD_Q8, any[i][0], any[i][1]);
    }
    for (size_t i = 0; i < sizeof q4 / sizeof q4[0]; i++) check_head(TRIT_HEAD_Q4, q4[i][0], q4[i][1]);
}

/* ---- element-wise steps: sums to floats, the gated activation, fp16 for the cache, RMSNorm --------------------- */

static float rand_wide(void) { /* any sign, magnitudes from fp16's subnormals to past its overflow */
    float m = rand_float(1.0f, 2.0f) * ldexpf(1.0f, rand_int(-30, 17));
    return next_u64() & 1 ? -m : m;
}

static void check_elementwise(void) {
    static const int sizes[] = {1, 7, 16, 17, 100, 2560, 6913};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int n = sizes[si];
        seed(4242u + (uint64_t)n);
        int32_t *a = xmalloc(sizeof(int32_t) * (size_t)n), *b = xmalloc(sizeof(int32_t) * (size_t)n);
        float *x = xmalloc(sizeof(float) * (size_t)n), *w = xmalloc(sizeof(float) * (size_t)n);
        float *want = xmalloc(sizeof(float) * (size_t)n * 4), *got = xmalloc(sizeof(float) * (size_t)n * 4);
        uint16_t *h_want = xmalloc(sizeof(uint16_t) * (size_t)n), *h_got = xmalloc(sizeof(uint16_t) * (size_t)n);
        for (int i = 0; i < n; i++) {
            a[i] = rand_int(-300000, 300000), b[i] = rand_int(-300000, 300000);
            x[i] = i % 5 == 0 ? (float)(rand_int(-4096, 4096)) / 2048.0f + ldexpf(1.0f, -25) * (float)rand_int(0, 1)
                              : rand_wide(); /* halfway cases among them */
            w[i] = rand_float(-2.0f, 2.0f);
        }
        select_kernel(scalar_index);
        for (int i = 0; i < n; i++) want[n + i] = want[2 * n + i] = x[i];
        trit_op_scale_sums(want, a, 1.3e-3f, n, 0);
        trit_op_scale_sums(want + n, a, -7.7e-4f, n, 1);
        trit_op_relu2_sums(want + 2 * n, a, 2.1e-4f, b, -3.3e-4f, n);
        trit_op_rmsnorm(want + 3 * n, x, w, n, 1e-5f);
        trit_op_to_f16(h_want, x, n);
        for (int r = 0; r < n_runnable; r++) {
            int k = runnable[r];
            if (k == scalar_index) continue;
            select_kernel(k);
            for (int i = 0; i < n; i++) got[i] = NAN, got[n + i] = x[i], got[2 * n + i] = NAN, got[3 * n + i] = NAN;
            memset(h_got, 0xff, sizeof(uint16_t) * (size_t)n);
            trit_op_scale_sums(got, a, 1.3e-3f, n, 0);
            trit_op_scale_sums(got + n, a, -7.7e-4f, n, 1);
            trit_op_relu2_sums(got + 2 * n, a, 2.1e-4f, b, -3.3e-4f, n);
            trit_op_rmsnorm(got + 3 * n, x, w, n, 1e-5f);
            trit_op_to_f16(h_got, x, n);
            check(!memcmp(got, want, sizeof(float) * (size_t)n * 3), "scale and relu2 sums %-10s = scalar     n=%d",
                  kname(k), n);
            int bad = 0, first = -1;
            for (int i = 0; i < n; i++)
                if (h_got[i] != h_want[i] && !bad++) first = i;
            check(!bad, "to_f16 %-10s = scalar     n=%d (%d differ%s%.9g)", kname(k), n, bad, bad ? ", first " : "",
                  bad ? x[first] : 0.0f);
            double worst = 0.0, scale = 0.0;
            for (int i = 0; i < n; i++) {
                worst = max_d(worst, fabs((double)got[3 * n + i] - want[3 * n + i]));
                scale = max_d(scale, fabs((double)want[3 * n + i]));
            }
            check(worst <= 1e-5 * scale, "rmsnorm %-10s ~ scalar     n=%d (max |diff| %.2g of %.2g)", kname(k), n,
                  worst, scale);
        }
        free(a), free(b), free(x), free(w), free(want), free(got), free(h_want), free(h_got);
    }
}

/* ---- attention over the fp16 cache ------------------------------------------------------------------------------- */

static void check_attention(int n_q, int pos0, int n_heads, int n_kv, int hd, float q_range) {
    seed((uint64_t)n_q * 31u + (uint64_t)pos0 * 977u + (uint64_t)n_heads * 7u + (uint64_t)hd);
    int n_keys = pos0 + n_q;
    size_t nq = (size_t)n_q * n_heads * hd, nk = (size_t)n_keys * n_kv * hd;
    float *q = xmalloc(sizeof(float) * nq), *k = xmalloc(sizeof(float) * nk), *v = xmalloc(sizeof(float) * nk);
    float *want = xmalloc(sizeof(float) * nq), *got = xmalloc(sizeof(float) * nq);
    for (size_t i = 0; i < nq; i++) q[i] = rand_float(-q_range, q_range);
    for (size_t i = 0; i < nk; i++) k[i] = rand_float(-1.0f, 1.0f), v[i] = rand_float(-1.0f, 1.0f);
    select_kernel(scalar_index);
    int rc = trit_op_attention(want, q, k, v, n_q, pos0, n_heads, n_kv, hd);
    check(rc == TRIT_OK, "attention scalar     runs       n_q=%d pos0=%d heads=%d/%d head_dim=%d", n_q, pos0, n_heads,
          n_kv, hd);
    for (int i = 0; i < n_runnable; i++) {
        int kk = runnable[i];
        if (kk == scalar_index) continue;
        select_kernel(kk);
        for (size_t j = 0; j < nq; j++) got[j] = NAN;
        rc = trit_op_attention(got, q, k, v, n_q, pos0, n_heads, n_kv, hd);
        /* outputs are averages of values in [-1, 1]: dot products that differ in the last bits move them by far less */
        double worst = 0.0;
        for (size_t j = 0; j < nq; j++) {
            double e = fabs((double)got[j] - want[j]);
            worst = max_d(worst, e);
        }
        check(rc == TRIT_OK && worst <= 2e-5,
              "attention %-10s ~ scalar     n_q=%d pos0=%d heads=%d/%d head_dim=%d (max |diff| %.2g)", kname(kk), n_q,
              pos0, n_heads, n_kv, hd, worst);
        if (n_q == 1) continue;
        /* token by token, as decoding runs: the same floats as the batch, so a prompt's logits do not depend on
         * how it was split */
        size_t row = (size_t)n_heads * hd;
        float *one = xmalloc(sizeof(float) * row);
        int same = 1;
        for (int t = 0; t < n_q && same; t++) {
            rc = trit_op_attention(one, q + t * row, k, v, 1, pos0 + t, n_heads, n_kv, hd);
            same = rc == TRIT_OK && memcmp(one, got + t * row, sizeof(float) * row) == 0;
        }
        free(one);
        check(same, "attention %-10s = itself   n_q=%d pos0=%d heads=%d/%d head_dim=%d token by token", kname(kk), n_q,
              pos0, n_heads, n_kv, hd);
    }
    free(q), free(k), free(v), free(want), free(got);
}

/* The f32 and q8 caches (issue 20): every kernel against the scalar definition, and a decoding token's keys split into
 * chunks and combined against the same token unsplit. */
static void check_kv_attention(int n_q, int pos0, int n_heads, int n_kv, int hd, int split) {
    seed((uint64_t)n_q * 131u + (uint64_t)pos0 * 17u + (uint64_t)n_heads * 5u + (uint64_t)hd);
    int n_keys = pos0 + n_q;
    size_t nq = (size_t)n_q * n_heads * hd, nk = (size_t)n_keys * n_kv * hd;
    float *q = xmalloc(sizeof(float) * nq), *k = xmalloc(sizeof(float) * nk), *v = xmalloc(sizeof(float) * nk);
    float *want = xmalloc(sizeof(float) * nq), *got = xmalloc(sizeof(float) * nq);
    for (size_t i = 0; i < nq; i++) q[i] = rand_float(-1.0f, 1.0f);
    for (size_t i = 0; i < nk; i++) k[i] = rand_float(-1.0f, 1.0f), v[i] = rand_float(-1.0f, 1.0f);
    static const int types[] = {TRIT_KV_F16, TRIT_KV_F32, TRIT_KV_Q8};
    static const char *const type_names[] = {"f16", "f32", "q8"};
    for (int t = 0; t < 3; t++) {
        select_kernel(scalar_index);
        int rc = trit_op_attention_kv(want, q, k, v, n_q, pos0, n_heads, n_kv, hd, types[t], 0);
        for (int i = 0; i < n_runnable; i++) {
            select_kernel(runnable[i]);
            for (int pass = 0; pass < (n_q == 1 ? 2 : 1); pass++) { /* unsplit, then split */
                for (size_t j = 0; j < nq; j++) got[j] = NAN;
                int rc2 = trit_op_attention_kv(got, q, k, v, n_q, pos0, n_heads, n_kv, hd, types[t], pass ? split : 0);
                double worst = 0.0;
                for (size_t j = 0; j < nq; j++) worst = max_d(worst, fabs((double)got[j] - want[j]));
                check(rc == TRIT_OK && rc2 == TRIT_OK && worst <= 2e-5,
                      "attention %-3s %-10s ~ scalar n_q=%d pos0=%d heads=%d/%d head_dim=%d split=%d (max |diff| %.2g)",
                      type_names[t], kname(runnable[i]), n_q, pos0, n_heads, n_kv, hd, pass ? split : 0, worst);
            }
        }
    }
    free(q), free(k), free(v), free(want), free(got);
}

static void check_attentions(void) {
    check_kv_attention(1, 99, 4, 1, 64, 32);
    check_kv_attention(1, 700, 6, 2, 128, 256);
    check_kv_attention(3, 40, 8, 2, 256, 0);
    check_kv_attention(1, 45, 3, 3, 20, 32); /* head_dim not a multiple of 32: the scalar code in every kernel */
    /* AVX2 takes the heads of a group in fours, then a pair, then one, and a block of 32 keys in halves: groups of 5
     * and 7, the last block ending in its second half (53 keys) and in its first (41), and the 2B4T shape (20 heads
     * on 5, head_dim 128) split into its chunks of 512 */
    check_kv_attention(1, 52, 5, 1, 32, 32);
    check_kv_attention(1, 40, 14, 2, 64, 32);
    check_kv_attention(2, 70, 5, 1, 96, 0);
    check_kv_attention(1, 1100, 20, 5, 128, 512); /* TRIT_ATTEND_SPLIT */
    check_attention(1, 0, 2, 1, 8, 1.0f);
    check_attention(1, 9, 4, 2, 20, 2.0f);
    check_attention(5, 3, 4, 2, 64, 1.0f);
    check_attention(3, 30, 8, 8, 13, 4.0f);
    check_attention(2, 100, 4, 1, 128, 1.0f);
    check_attention(7, 0, 6, 3, 6, 1.0f);
    /* prefill blocks: 32 rows of 8 tokens x 4 heads, over several key blocks; 2B4T's shape; rows padded to 30 and 27 */
    check_attention(40, 70, 8, 2, 128, 2.0f);
    check_attention(19, 0, 20, 5, 128, 1.0f);
    check_attention(23, 33, 6, 2, 64, 3.0f);
    check_attention(33, 5, 2, 2, 64, 1.0f);
    /* Falcon3's head_dim 256 (12 heads on 4 KV heads), decoding and prefill; and a multiple of 32 past 128 */
    check_attention(3, 45, 12, 4, 256, 1.0f);
    check_attention(20, 7, 4, 2, 256, 2.0f);
    check_attention(2, 33, 2, 1, 160, 1.0f);
}

/* ---- a tiny model, end to end ------------------------------------------------------------------------------------ */

enum { M_HIDDEN = 128, M_INTER = 204, M_LAYERS = 2, M_HEADS = 4, M_KV = 2, M_HD = 32, M_VOCAB = 96, M_CTX = 16 };

typedef struct {
    trit_config cfg;
    trit_layer_weights layers[M_LAYERS];
    uint16_t *embed;
    float *norms; /* every norm weight, one block */
    uint8_t *tq2[M_LAYERS][7], *t5[M_LAYERS][7];
    int8_t *q8;
    float *q8_scales;
    uint8_t *q4;
    uint16_t *q4_scales;
    uint16_t *output; /* an untied head, for the Llama block */
} tiny_model;

static void make_tiny_model(tiny_model *m) {
    seed(2026);
    memset(m, 0, sizeof *m);
    m->cfg = (trit_config){.hidden_size = M_HIDDEN,
                           .intermediate_size = M_INTER,
                           .n_layers = M_LAYERS,
                           .n_heads = M_HEADS,
                           .n_kv_heads = M_KV,
                           .head_dim = M_HD,
                           .vocab_size = M_VOCAB,
                           .max_positions = M_CTX,
                           .rope_theta = 10000.0f,
                           .rms_eps = 1e-5f,
                           .scale_mode = TRIT_SCALE_MULTIPLY,
                           .ternary_format = TRIT_TERNARY_TQ2};
    m->embed = xmalloc(sizeof(uint16_t) * M_VOCAB * M_HIDDEN);
    for (int i = 0; i < M_VOCAB * M_HIDDEN; i++) m->embed[i] = f32_to_bf16(rand_float(-1.0f, 1.0f));
    m->output = xmalloc(sizeof(uint16_t) * M_VOCAB * M_HIDDEN);
    for (int i = 0; i < M_VOCAB * M_HIDDEN; i++) m->output[i] = f32_to_bf16(rand_float(-1.0f, 1.0f));
    int n_norms = M_LAYERS * (3 * M_HIDDEN + M_INTER) + M_HIDDEN;
    m->norms = xmalloc(sizeof(float) * (size_t)n_norms);
    for (int i = 0; i < n_norms; i++) m->norms[i] = rand_float(0.5f, 1.5f);
    const int shape[7][2] = {/* q k v o gate up down */
                             {M_HIDDEN, M_HIDDEN}, {M_KV * M_HD, M_HIDDEN}, {M_KV * M_HD, M_HIDDEN},
                             {M_HIDDEN, M_HIDDEN}, {M_INTER, M_HIDDEN},     {M_INTER, M_HIDDEN},
                             {M_HIDDEN, M_INTER}};
    float *norm = m->norms;
    for (int l = 0; l < M_LAYERS; l++) {
        for (int p = 0; p < 7; p++) {
            int rows = shape[p][0], cols = shape[p][1];
            int8_t *w = xmalloc((size_t)rows * cols);
            for (size_t i = 0; i < (size_t)rows * cols; i++) w[i] = (int8_t)rand_int(-1, 1);
            m->tq2[l][p] = pack_tq2(w, rows, cols);
            m->t5[l][p] = xmalloc((size_t)trit_t5_size(rows, cols));
            trit_convert_tq2_to_t5(m->t5[l][p], m->tq2[l][p], rows, cols);
            free(w);
        }
        trit_layer_weights *L = &m->layers[l];
        L->input_norm = norm, norm += M_HIDDEN;
        L->attn_sub_norm = norm, norm += M_HIDDEN;
        L->post_attn_norm = norm, norm += M_HIDDEN;
        L->ffn_sub_norm = norm, norm += M_INTER;
        L->q_scale = 0.08f, L->k_scale = 0.1f, L->v_scale = 0.1f, L->o_scale = 0.05f;
        L->gate_scale = 0.1f, L->up_scale = 0.1f, L->down_scale = 0.03f;
    }
    /* the derived heads, quantised from the embedding roughly as engine/derived.py does */
    m->q8 = xmalloc(M_VOCAB * M_HIDDEN);
    m->q8_scales = xmalloc(sizeof(float) * M_VOCAB);
    m->q4 = xmalloc(M_VOCAB * M_HIDDEN / 2);
    m->q4_scales = xmalloc(sizeof(uint16_t) * M_VOCAB * (M_HIDDEN / TRIT_Q4_BLOCK));
    memset(m->q4, 0, M_VOCAB * M_HIDDEN / 2);
    for (int v = 0; v < M_VOCAB; v++) {
        const uint16_t *e = m->embed + (size_t)v * M_HIDDEN;
        float amax = 0.0f;
        for (int c = 0; c < M_HIDDEN; c++) amax = max_f(amax, fabsf(bf16_to_f32(e[c])));
        m->q8_scales[v] = amax / 127.0f;
        for (int c = 0; c < M_HIDDEN; c++)
            m->q8[v * M_HIDDEN + c] = (int8_t)lrintf(bf16_to_f32(e[c]) / m->q8_scales[v]);
        for (int blk = 0; blk < M_HIDDEN / TRIT_Q4_BLOCK; blk++) {
            float d; /* a power of two near amax / 7, exact in fp16 */
            int ex;
            frexpf(amax / 7.0f, &ex);
            d = ldexpf(1.0f, ex - 1);
            m->q4_scales[v * (M_HIDDEN / TRIT_Q4_BLOCK) + blk] = (uint16_t)((ex - 1 + 15) << 10);
            for (int c = blk * TRIT_Q4_BLOCK; c < (blk + 1) * TRIT_Q4_BLOCK; c++) {
                long q = lrintf(bf16_to_f32(e[c]) / d) + 8;
                q = q < 0 ? 0 : q > 15 ? 15 : q;
                m->q4[v * M_HIDDEN / 2 + c / TRIT_Q4_GROUP * 32 + c % 32] |=
                    (uint8_t)(c % TRIT_Q4_GROUP < 32 ? q : q << 4);
            }
        }
    }
}

static void free_tiny_model(tiny_model *m) {
    for (int l = 0; l < M_LAYERS; l++)
        for (int p = 0; p < 7; p++) free(m->tq2[l][p]), free(m->t5[l][p]);
    free(m->embed), free(m->norms), free(m->q8), free(m->q8_scales), free(m->q4), free(m->q4_scales);
    free(m->output);
}

enum { PROMPT = 7, DECODE = 2, N_LOGITS = (PROMPT + DECODE) * M_VOCAB };

/* Logits of a 7-token prompt (all rows) and two decoding steps with the selected kernel; 0 on success. The Llama block
 * runs without the sub-norms and with the untied output head. */
static int run_tiny_model(tiny_model *m, int format, int head_type, int block, float *logits) {
    trit_config cfg = m->cfg;
    cfg.ternary_format = format;
    cfg.block = block;
    trit_layer_weights layers[M_LAYERS];
    for (int l = 0; l < M_LAYERS; l++) {
        uint8_t **w = format == TRIT_TERNARY_T5 ? m->t5[l] : m->tq2[l];
        layers[l] = m->layers[l];
        layers[l].q = w[0], layers[l].k = w[1], layers[l].v = w[2], layers[l].o = w[3];
        layers[l].gate = w[4], layers[l].up = w[5], layers[l].down = w[6];
        if (block == TRIT_BLOCK_LLAMA) layers[l].attn_sub_norm = layers[l].ffn_sub_norm = NULL;
    }
    trit_weights weights = {m->embed, m->norms + M_LAYERS * (3 * M_HIDDEN + M_INTER), layers, head_type, NULL,
                            NULL,     block == TRIT_BLOCK_LLAMA ? m->output : NULL};
    if (head_type == TRIT_HEAD_Q8) weights.head = m->q8, weights.head_scales = m->q8_scales;
    if (head_type == TRIT_HEAD_Q4) weights.head = m->q4, weights.head_scales = m->q4_scales;
    trit_model *model = trit_model_create(&cfg, &weights, 2); /* two threads: each takes a share of the rows */
    if (!model) return -1;
    trit_context *ctx = trit_context_create(model, M_CTX, 0);
    int rc = ctx ? TRIT_OK : -1;
    const int32_t prompt[PROMPT] = {1, 17, 42, 5, 95, 0, 63}, next[DECODE] = {88, 3};
    if (rc == TRIT_OK) rc = trit_eval(ctx, prompt, PROMPT, logits, TRIT_LOGITS_ALL);
    for (int i = 0; i < DECODE && rc == TRIT_OK; i++)
        rc = trit_eval(ctx, &next[i], 1, logits + (size_t)(PROMPT + i) * M_VOCAB, TRIT_LOGITS_LAST);
    trit_context_free(ctx);
    trit_model_free(model);
    return rc;
}

static void check_model(void) {
    static const char *heads[] = {"bf16", "q8", "q4"}, *blocks[] = {"bitnet", "llama", "1bitllm"};
    tiny_model m;
    make_tiny_model(&m);
    float *want = xmalloc(sizeof(float) * N_LOGITS), *got = xmalloc(sizeof(float) * N_LOGITS);
    for (int block = TRIT_BLOCK_BITNET; block <= TRIT_BLOCK_1BITLLM; block++)
        for (int format = TRIT_TERNARY_TQ2; format <= TRIT_TERNARY_T5; format++)
            for (int head = TRIT_HEAD_BF16; head <= TRIT_HEAD_Q4; head++) {
                const char *fname = format == TRIT_TERNARY_TQ2 ? "tq2" : "t5";
                select_kernel(scalar_index);
                int rc = run_tiny_model(&m, format, head, block, want);
                float scale = 0.0f;
                for (int i = 0; i < N_LOGITS; i++) scale = max_f(scale, fabsf(want[i]));
                check(rc == TRIT_OK && scale > 0.0f,
                      "model scalar     runs       %s block, %s weights, %s head (max |logit| %.3g)%s%s", blocks[block],
                      fname, heads[head], scale, rc == TRIT_OK ? "" : ": ", rc == TRIT_OK ? "" : trit_last_error());
                for (int i = 0; i < n_runnable; i++) {
                    int k = runnable[i];
                    if (k == scalar_index) continue;
                    select_kernel(k);
                    for (int j = 0; j < N_LOGITS; j++) got[j] = NAN;
                    rc = run_tiny_model(&m, format, head, block, got);
                    double worst = 0.0;
                    for (int j = 0; j < N_LOGITS; j++) {
                        double e = fabs((double)got[j] - want[j]);
                        worst = max_d(worst, e);
                    }
                    /* The int32 core is exact; float paths differ in the last bits, which can move an activation across
                     * a rounding tie of the int8 quantiser: one step of 1/127 in one input, diluted over the sums. */
                    check(
                        rc == TRIT_OK && worst <= 2e-3 * scale,
                        "model %-10s ~ scalar     %s block, %s weights, %s head (max |diff| %.2g of max |logit| %.3g)",
                        kname(k), blocks[block], fname, heads[head], worst, scale);
                }
            }
    free(want), free(got);
    free_tiny_model(&m);
}

/* ---- a context's cache saved and restored ----------------------------------------------------------------------- */

enum { KV_CTX = 80, KV_PROMPT = 40, KV_NEXT = 3 }; /* past a key block (32 positions), so the rows gather across two */

/* The rows read from one context and written into another (in two pieces, with another batch size) give the same
 * logits and the same cache as the first context, bit for bit; positions out of range are refused and change
 * nothing. With kernel k. */
static void check_kv_rows(int k) {
    select_kernel(k);
    tiny_model m;
    make_tiny_model(&m);
    trit_config cfg = m.cfg;
    cfg.max_positions = KV_CTX;
    trit_weights weights = {m.embed, m.norms + M_LAYERS * (3 * M_HIDDEN + M_INTER), m.layers, TRIT_HEAD_BF16, NULL,
                            NULL};
    for (int l = 0; l < M_LAYERS; l++) {
        uint8_t **w = m.tq2[l];
        m.layers[l].q = w[0], m.layers[l].k = w[1], m.layers[l].v = w[2], m.layers[l].o = w[3];
        m.layers[l].gate = w[4], m.layers[l].up = w[5], m.layers[l].down = w[6];
    }
    trit_model *model = trit_model_create(&cfg, &weights, 2);
    trit_context *a = model ? trit_context_create(model, KV_CTX, 0) : NULL;
    trit_context *b = model ? trit_context_create(model, KV_CTX, 7) : NULL;
    check(a && b, "kv rows: the model and two contexts are made%s%s", a && b ? "" : ": ",
          a && b ? "" : trit_last_error());
    if (!a || !b) {
        trit_context_free(a), trit_context_free(b), trit_model_free(model), free_tiny_model(&m);
        return;
    }
    int32_t tokens[KV_PROMPT + KV_NEXT];
    for (int i = 0; i < KV_PROMPT + KV_NEXT; i++) tokens[i] = rand_int(0, M_VOCAB - 1);
    int64_t row_bytes = trit_context_kv_row_bytes(a);
    size_t row = (size_t)row_bytes / sizeof(uint16_t);
    check(row_bytes == (int64_t)M_LAYERS * M_KV * 2 * M_HD * 2, "kv rows: a row is %lld bytes", (long long)row_bytes);
    uint16_t *rows = xmalloc(sizeof(uint16_t) * row * (KV_PROMPT + KV_NEXT));
    uint16_t *again = xmalloc(sizeof(uint16_t) * row * (KV_PROMPT + KV_NEXT));
    float *want = xmalloc(sizeof(float) * KV_NEXT * M_VOCAB), *got = xmalloc(sizeof(float) * KV_NEXT * M_VOCAB);
    int rc = trit_eval(a, tokens, KV_PROMPT, NULL, TRIT_LOGITS_NONE);
    if (rc == TRIT_OK) rc = trit_context_read_kv(a, 0, 25, rows);
    if (rc == TRIT_OK) rc = trit_context_read_kv(a, 25, KV_PROMPT - 25, rows + 25 * row);
    if (rc == TRIT_OK) rc = trit_context_write_kv(b, 0, 25, rows);
    if (rc == TRIT_OK) rc = trit_context_write_kv(b, 25, KV_PROMPT - 25, rows + 25 * row);
    check(rc == TRIT_OK && trit_context_n_past(b) == KV_PROMPT,
          "kv rows: read from one context, written into another%s%s", rc == TRIT_OK ? "" : ": ",
          rc == TRIT_OK ? "" : trit_last_error());
    if (rc == TRIT_OK) rc = trit_eval(a, tokens + KV_PROMPT, KV_NEXT, want, TRIT_LOGITS_ALL);
    if (rc == TRIT_OK) rc = trit_eval(b, tokens + KV_PROMPT, KV_NEXT, got, TRIT_LOGITS_ALL);
    check(rc == TRIT_OK && !memcmp(want, got, sizeof(float) * KV_NEXT * M_VOCAB),
          "kv rows: the restored context gives the same logits, bit for bit (%s)", trit_kernel_active());
    if (rc == TRIT_OK) rc = trit_context_read_kv(a, 0, KV_PROMPT + KV_NEXT, rows);
    if (rc == TRIT_OK) rc = trit_context_read_kv(b, 0, KV_PROMPT + KV_NEXT, again);
    check(rc == TRIT_OK && !memcmp(rows, again, sizeof(uint16_t) * row * (KV_PROMPT + KV_NEXT)),
          "kv rows: and the same cache after it");

    const int n = KV_PROMPT + KV_NEXT;
    const struct {
        int first, count, code; /* the first one reads, the others write */
        const char *what;
    } refused[] = {
        {0, n + 1, TRIT_E_RANGE, "read past n_past"},
        {n + 1, 1, TRIT_E_RANGE, "write leaving a gap after n_past"},
        {KV_CTX - 5, 6, TRIT_E_RANGE, "write past n_ctx"},
        {1, 0x7fffffff, TRIT_E_RANGE, "write of INT_MAX rows"},
        {0x7fffffff, 1, TRIT_E_RANGE, "write at position INT_MAX"},
        {-1, 1, TRIT_E_INVALID, "write at a negative position"},
        {0, -1, TRIT_E_INVALID, "write of a negative count"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        int is_read = i == 0;
        rc = is_read ? trit_context_read_kv(b, refused[i].first, refused[i].count, again)
                     : trit_context_write_kv(b, refused[i].first, refused[i].count, rows);
        check(rc == refused[i].code && trit_context_n_past(b) == n, "kv rows: a %s is refused (%d: %s)",
              refused[i].what, rc, trit_last_error());
    }
    rc = trit_context_read_kv(b, -1, 1, again);
    check(rc == TRIT_E_INVALID, "kv rows: a read at a negative position is refused (%s)", trit_last_error());
    rc = trit_context_read_kv(b, 1, 0x7fffffff, again);
    check(rc == TRIT_E_RANGE, "kv rows: a read of INT_MAX rows is refused (%s)", trit_last_error());
    rc = trit_context_write_kv(b, 0, 1, NULL);
    check(rc == TRIT_E_INVALID && trit_context_n_past(b) == n, "kv rows: a write without rows is refused");
    check(trit_context_kv_row_bytes(NULL) == TRIT_E_INVALID, "kv rows: no context is refused");
    rc = trit_context_write_kv(b, 10, 0, rows);
    check(rc == TRIT_OK && trit_context_n_past(b) == 10, "kv rows: writing none at 10 keeps 10 positions");
    free(rows), free(again), free(want), free(got);
    trit_context_free(a), trit_context_free(b), trit_model_free(model);
    free_tiny_model(&m);
}

/* ---- sizes at the boundary ------------------------------------------------------------------------------------- */

/* trit.h checks every size it is given: sizes whose sums or products pass INT_MAX are refused or computed exactly,
 * never wrapped (signed overflow is undefined behaviour: run-sanitizers.sh's UBSan build stops at it). None of these
 * calls reads or writes past the small buffers given: each is refused, or is a size computation only. */
static void check_boundaries(void) {
    float buf[64] = {0};
    check(trit_t5_size(INT_MAX, 1) == INT_MAX / 5 + 1, "boundary: trit_t5_size(INT_MAX, 1) is exact (%lld)",
          (long long)trit_t5_size(INT_MAX, 1));
    check(trit_t5_size(INT_MAX, INT_MAX) == (int64_t)(INT_MAX / 5 + 1) * INT_MAX,
          "boundary: trit_t5_size(INT_MAX, INT_MAX) is exact");
    int rc = trit_op_attention(buf, buf, buf, buf, 1, INT_MAX, 1, 1, 2);
    check(rc == TRIT_E_INVALID, "boundary: attention at pos0 = INT_MAX is refused (%d: %s)", rc, trit_last_error());
    rc = trit_op_attention(buf, buf, buf, buf, INT_MAX, 1, 1, 1, 2);
    check(rc == TRIT_E_INVALID, "boundary: attention of INT_MAX queries after one key is refused (%d: %s)", rc,
          trit_last_error());
    buf[0] = 1.0f;
    trit_op_rope(buf, 1, -2, 3, 10000.0f);
    trit_op_rope(buf, 1, 3, 3, 10000.0f);
    trit_op_rope(buf, -1, 2, 3, 10000.0f);
    check(buf[0] == 1.0f && buf[1] == 0.0f, "boundary: rope with a negative or odd head_dim or no heads does nothing");
    /* n_heads * head_dim and n_kv_heads * head_dim past INT_MAX */
    uint8_t byte = 0;
    trit_layer_weights layer = {buf,   &byte, &byte, &byte, &byte, buf,  buf,  &byte, &byte,
                                &byte, buf,   1.0f,  1.0f,  1.0f,  1.0f, 1.0f, 1.0f,  1.0f};
    trit_weights weights = {(uint16_t *)buf, buf, &layer, TRIT_HEAD_BF16, NULL, NULL, NULL};
    trit_config cfg = {.hidden_size = 1 << 16,
                       .intermediate_size = 4,
                       .n_layers = 1,
                       .n_heads = 1 << 16,
                       .n_kv_heads = 1 << 16,
                       .head_dim = 1 << 16,
                       .vocab_size = 4,
                       .max_positions = 4,
                       .rope_theta = 10000.0f,
                       .rms_eps = 1e-5f,
                       .scale_mode = TRIT_SCALE_MULTIPLY,
                       .ternary_format = TRIT_TERNARY_TQ2};
    trit_model *model = trit_model_create(&cfg, &weights, 1);
    check(!model && strstr(trit_last_error(), "n_heads"),
          "boundary: a config whose n_heads * head_dim passes INT_MAX is refused (%s)", trit_last_error());
    trit_model_free(model);
}

/* ---- configurations past the limits ------------------------------------------------------------------------------ */

/* trit_model_create with cfg over the tiny model's weights (layer weights repeated for as many layers as asked):
 * must fail with TRIT_E_INVALID and a message holding `words`, before anything is allocated for the sizes. */
static void check_refused(const tiny_model *m, trit_config cfg, const char *what, const char *words) {
    int n_layers = cfg.n_layers > 0 && cfg.n_layers <= TRIT_MAX_LAYERS + 1 ? cfg.n_layers : M_LAYERS;
    trit_layer_weights *layers = xmalloc(sizeof(trit_layer_weights) * (size_t)n_layers);
    for (int l = 0; l < n_layers; l++) {
        layers[l] = m->layers[l % M_LAYERS];
        layers[l].q = layers[l].k = layers[l].v = layers[l].o = m->tq2[0][0];
        layers[l].gate = layers[l].up = layers[l].down = m->tq2[0][0];
    }
    trit_weights weights = {m->embed, m->norms, layers, TRIT_HEAD_BF16, NULL, NULL, NULL};
    trit_model *model = trit_model_create(&cfg, &weights, 1);
    const char *err = model ? "it was accepted" : trit_last_error();
    /* trit_model_create returns no code: an allocation failure says "out of memory", a refused config what is wrong */
    check(!model && strstr(err, words) && !strstr(err, "out of memory"), "limits: %s is refused (%s)", what, err);
    trit_model_free(model);
    free(layers);
}

static void check_limits(void) {
    tiny_model m;
    make_tiny_model(&m);
    trit_config c = m.cfg;
    c.n_heads = c.n_kv_heads = (1 << 30) + 32, c.head_dim = 4; /* heads x head_dim = 2^32 + 128: 128 in 32 bits */
    check_refused(&m, c, "n_heads x head_dim wrapping around 32 bits to hidden_size", "n_heads");
    c = m.cfg;
    c.max_positions = 0x7fffffff; /* the RoPE tables alone would be 256 GB */
    check_refused(&m, c, "max_positions 2^31 - 1", "max_positions");
    c = m.cfg;
    c.max_positions = TRIT_MAX_POSITIONS, c.n_heads = c.n_kv_heads = 4, c.head_dim = TRIT_MAX_HEAD_DIM;
    c.hidden_size = 4 * TRIT_MAX_HEAD_DIM; /* each size within its limit, their product 2^28 RoPE cells */
    check_refused(&m, c, "max_positions x head_dim past TRIT_MAX_ROPE_CELLS", "max_positions x head_dim");
    c = m.cfg;
    c.hidden_size = TRIT_MAX_HIDDEN + 128, c.n_heads = (TRIT_MAX_HIDDEN + 128) / M_HD, c.n_kv_heads = 1;
    check_refused(&m, c, "hidden_size past TRIT_MAX_HIDDEN", "hidden_size");
    c = m.cfg;
    c.intermediate_size = TRIT_MAX_INTERMEDIATE + 4;
    check_refused(&m, c, "intermediate_size past TRIT_MAX_INTERMEDIATE", "intermediate_size");
    c = m.cfg;
    c.n_layers = TRIT_MAX_LAYERS + 1;
    check_refused(&m, c, "n_layers past TRIT_MAX_LAYERS", "n_layers");
    c = m.cfg;
    c.vocab_size = TRIT_MAX_VOCAB + 1;
    check_refused(&m, c, "vocab_size past TRIT_MAX_VOCAB", "vocab_size");
    c = m.cfg;
    c.head_dim = TRIT_MAX_HEAD_DIM * 2, c.n_heads = 1, c.n_kv_heads = 1, c.hidden_size = TRIT_MAX_HEAD_DIM * 2;
    check_refused(&m, c, "head_dim past TRIT_MAX_HEAD_DIM", "head_dim");
    free_tiny_model(&m);

    float x[8] = {0};
    int rc = trit_op_attention(x, x, x, x, 1, 0x7fffffff, 1, 1, 8); /* pos0 + n_q past int */
    check(rc == TRIT_E_INVALID, "limits: attention at position 2^31 - 1 is refused (%s)", trit_last_error());
}

/* ---- main ------------------------------------------------------------------------------------------------------- */

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("trit %s, %d kernels\n", trit_version(), trit_kernel_count());
    n_kernels = trit_kernel_count();
    const char *active = trit_kernel_active(); /* before any select: what dispatch chose */
    int first_supported = -1;
    for (int k = 0; k < n_kernels; k++) {
        int ok = trit_kernel_supported(k);
        printf("kernel %s: %s\n", kname(k), ok ? "supported" : "not supported on this CPU, skipped");
        if (!strcmp(kname(k), "scalar")) scalar_index = k;
        if (ok && first_supported < 0) first_supported = k;
        if (ok && strcmp(kname(k), "scalar") && n_runnable < 15) runnable[n_runnable++] = k;
    }
    if (scalar_index < 0) {
        check(0, "a kernel named scalar exists");
        printf("%d passed, %d failed\n", passed, failed);
        return 1;
    }
    runnable[n_runnable++] = scalar_index;
    const char *forced = getenv("TRIT_KERNEL");
    if (forced && *forced)
        check(!strcmp(active, forced), "dispatch: TRIT_KERNEL=%s is the active kernel (%s)", forced, active);
    else
        check(!strcmp(active, kname(first_supported)), "dispatch: the active kernel is the best supported one (%s)",
              active);
    check(trit_kernel_supported(scalar_index), "the scalar kernel is supported");
    for (int i = 0; i < n_runnable; i++) {
        int32_t out[4];
        const uint8_t zero = 121; /* every weight 0 in T5 */
        const int8_t x = 1;
        int rc = trit_op_ternary_matmul(runnable[i], TRIT_TERNARY_T5, out, &zero, 4, 1, &x, 1);
        printf("kernel %s: T5 %s\n", kname(runnable[i]),
               rc == TRIT_OK ? "native" : "not native (the engine uses TQ2 with it; the scalar T5 stands in)");
        /* a SIMD kernel that runs T5 prefers it, but avx2, avxvnni and neon, whose T5 measured slower than their TQ2
         * (they run it when asked); the scalar one defines T5 but reads 2-bit codes more cheaply */
        int t5 = rc == TRIT_OK && runnable[i] != scalar_index && strcmp(kname(runnable[i]), "avx2") &&
                 strcmp(kname(runnable[i]), "avxvnni") && strcmp(kname(runnable[i]), "neon");
        select_kernel(runnable[i]);
        check(trit_kernel_preferred_format() == (t5 ? TRIT_TERNARY_T5 : TRIT_TERNARY_TQ2),
              "kernel %s prefers the %s format", kname(runnable[i]), t5 ? "T5" : "TQ2");
    }

    check_ternary();
    check_quantize();
    check_elementwise();
    check_heads();
    check_attentions();
    check_model();
    for (int i = 0; i < n_runnable; i++) check_kv_rows(runnable[i]);
    check_boundaries();
    check_limits();

    printf("tested kernels:");
    for (int i = 0; i < n_runnable; i++) printf(" %s", kname(runnable[i]));
    printf("\n%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
