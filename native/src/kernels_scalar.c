/* The scalar kernel: the readable definition every SIMD kernel is tested against. */
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

static float dot_f16(const uint16_t *a, const float *b, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += trit_f16_to_f32(a[i]) * b[i];
    return sum;
}

static void axpy_f16(float *y, float alpha, const uint16_t *x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * trit_f16_to_f32(x[i]);
}

static int always(void) { return 1; }

const trit_kernel trit_kernel_scalar = {"scalar", always, ternary_matmul, bf16_matmul, dot_f16, axpy_f16};
