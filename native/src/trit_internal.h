/* Definitions shared by the library's source files; never seen by Python. */
#ifndef TRIT_INTERNAL_H
#define TRIT_INTERNAL_H

#include <stdint.h>

#include "trit.h"
#include "threadpool.h"

/* One instruction set's implementation of the hot loops. kernels/scalar.c is the readable definition;
 * every other table must give bit-identical int32 results (and the same floats up to summation order).
 * Every entry but name and supported may be left NULL: registration (kernels/registry.c) gives it the scalar one. */
typedef struct {
    const char *name;
    int (*supported)(void);
    /* For packed rows pr in [pr0, pr1) and every token t:
     *   out[t*rows + pr + j*rows/4] = sum_c W[pr + j*rows/4][c] * xq[t*cols + c]   (j = 0..3)
     * xsum[t] = sum_c xq[t*cols + c]: SIMD kernels sum code*x with code = w + 1 in 0..2, then subtract it. */
    void (*ternary_matmul)(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq,
                           const int32_t *xsum, int n_tokens, int pr0, int pr1);
    /* The same for T5 (trit.h), over groups g in [g0, g1): out[t*rows + g + j*G] for every g + j*G < rows.
     * NULL when the instruction set has no fast way to decode base 3 (trit_kernel_has_t5 tells): the engine then
     * keeps TQ2, and the scalar one stands in if T5 is run anyway. */
    void (*t5_matmul)(int32_t *out, const uint8_t *packed, int rows, int cols, const int8_t *xq, const int32_t *xsum,
                      int n_tokens, int g0, int g1);
    /* Set where the kernel's own t5_matmul measured slower than its TQ2 one: the engine then loads TQ2 unless asked
     * for T5 (trit_kernel_preferred_format). */
    int tq2_faster;
    /* For rows r in [r0, r1) and every token t: out[t*out_stride + r] = sum_c x[t*cols + c] * W[r][c], W bf16. */
    void (*bf16_matmul)(float *out, int out_stride, const uint16_t *w, int cols, const float *x, int n_tokens, int r0,
                        int r1);
    /* Like bf16_matmul for the derived heads: W int8 with a scale per row, or q4 blocks (trit.h). */
    void (*q8_matmul)(float *out, int out_stride, const int8_t *w, const float *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1);
    void (*q4_matmul)(float *out, int out_stride, const uint8_t *w, const uint16_t *scales, int cols, const float *x,
                      int n_tokens, int r0, int r1);
    /* trit_quantize, vectorised: the same int8 values and scale, bit for bit; also returns sum(xq) in *sum. */
    float (*quantize)(int8_t *xq, int32_t *sum, const float *x, int n);
    /* Causal attention of `group` query heads that share one kv head (consecutive in q and out, head_dim apart)
     * against n_keys cached fp16 positions: out[h] = softmax(q[h] . K^T / sqrt(hd)) . V. Keys in blocks
     * (trit_key_index), values kv_stride apart. scores: scratch of group * n_keys floats. Unless lse is NULL, lse[h]
     * = log(sum of exp(score)) of head h: what combines the results of chunks of keys (trit_attend_combine). */
    void (*attend)(float *out, const float *q, const uint16_t *keys, const uint16_t *values, int kv_stride, int n_keys,
                   int head_dim, int group, float *scores, float *lse);
    /* attend for a cache of fp32 keys and values (values head_dim apart), and of int8 ones with a scale per
     * position (TRIT_KV_Q8): key k is keys[.][k] * key_scales[k]. scratch: TRIT_ATTEND_SCRATCH(n_keys, head_dim,
     * group) floats. lse as for attend, never NULL. */
    void (*attend_f32)(float *out, float *lse, const float *q, const float *keys, const float *values, int n_keys,
                       int head_dim, int group, float *scratch);
    void (*attend_q8)(float *out, float *lse, const float *q, const int8_t *keys, const float *key_scales,
                      const int8_t *values, const float *value_scales, int n_keys, int head_dim, int group,
                      float *scratch);
    /* The same for n_q consecutive tokens at once (prefill): token i's heads are at q + i*q_stride (out alike) and
     * see keys 0 .. n_keys0 + i (values head_dim apart). scratch: TRIT_ATTEND_SCRATCH(n_keys0 + n_q, head_dim, group)
     * floats. The scalar one runs the scalar attend token by token, so a kernel with its own attend and no faster
     * batch runs trit_attend_each_token with its attend instead: a batch must give its single tokens' floats. */
    void (*attend_tokens)(float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                          int n_q, int n_keys0, int head_dim, int group, float *scratch);
    /* A projection's int32 sums to floats: out[i] = acc[i] * f, or out[i] += that when add is set. The gate/up pair
     * in one pass: out[i] = relu(gate[i] * fg)^2 * (up[i] * fu). Bit-identical in every kernel. */
    void (*scale_sums)(float *out, const int32_t *acc, float f, int n, int add);
    void (*relu2_sums)(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n);
    /* The Llama block's pair: out[i] = silu(gate[i] * fg) * (up[i] * fu). */
    void (*silu_sums)(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n);
    /* trit_rmsnorm, vectorised: the same floats up to the order of the sum of squares. */
    void (*rmsnorm)(float *out, const float *x, const float *weight, int n, float eps);
    /* dst[i] = trit_f32_to_f16(src[i]), bit for bit (the KV cache). */
    void (*to_f16)(uint16_t *dst, const float *src, int n);
    /* y[i] += alpha * x[i], x fp16. */
    void (*axpy_f16)(float *y, float alpha, const uint16_t *x, int n);
} trit_kernel;

extern const trit_kernel trit_kernel_scalar;
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define TRIT_X86 1
extern const trit_kernel trit_kernel_avx2;
extern const trit_kernel trit_kernel_avx512;
#ifdef TRIT_HAVE_AVXVNNI /* the compiler builds kernels/avxvnni.c (CMakeLists.txt) */
extern const trit_kernel trit_kernel_avxvnni;
#endif
#endif
#if defined(__aarch64__)
extern const trit_kernel trit_kernel_neon;
#endif

/* kernels/registry.c: the registered tables, their NULL entries filled */
const trit_kernel *trit_active_kernel(void);
const trit_kernel *trit_kernel_at(int index);
int trit_kernel_has_t5(const trit_kernel *k); /* its own T5 matmul, not the scalar one lent at registration */

/* model.c: runs a job on the model's threads, between forward passes */
void trit_model_run(trit_model *model, trit_task_fn fn, void *arg);

/* cpu.c: what this CPU (and its OS) can run */
int trit_cpu_has_avx2(void);
int trit_cpu_has_avx512vnni(void);
int trit_cpu_has_avxvnni(void);      /* AVX2 and the VEX-encoded vpdpbusd */
int trit_cpu_has_neon_dotprod(void); /* AArch64 with SDOT and FP16 */

/* error.c: set the thread's last error and return code */
int trit_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ops.c: single operations of the forward pass, in plain C */
static inline float trit_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}
float trit_f16_to_f32(uint16_t h);
uint16_t trit_f32_to_f16(float f);
void trit_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);
float trit_quantize(int8_t *xq, const float *x, int n);
int32_t trit_sum_i8(const int8_t *x, int n);
void trit_rope_angles(float *cos_out, float *sin_out, int head_dim, int pos, float theta);
void trit_rope_apply(float *x, int n_heads, int head_dim, const float *cos_pos, const float *sin_pos);
void trit_output_head(const trit_kernel *kern, int head_type, const void *head, const void *scales, float *logits,
                      int vocab, int hidden, const float *x, int n_tokens, int r0, int r1);
static inline int trit_t5_groups(int rows) { return rows / 5 + (rows % 5 != 0); } /* ceil; rows + 4 can overflow */
/* The q4 heads' activations: x ~ (256 a + b) * s2 with int8 a (x / s1 rounded, s1 = max|x| / 127) and b the rounded
 * rest in steps of s2 = s1 / 256; block_x[k] = 8 * sum of 256 a + b over block k (the nibbles' offset of 8).
 * pair_order stores each 128 as 0..31, 64..95, 32..63, 96..127: the order of a 64-byte load's low, then high,
 * nibbles. */
void trit_q4_split_x(int8_t *a, int8_t *b, float *block_x, float *s2, const float *x, int cols, int pair_order);

/* Decoding reads every weight once per token, and a core spends long enough on each line that the hardware prefetcher
 * alone leaves the bus idle part of the time: kernels that stream rows ask for the line this many bytes ahead (rows
 * are contiguous, so it runs on into the next ones). One thread decoding a 70 MB T5 matrix on Ice Lake: +50%. */
#define TRIT_PREFETCH 4096

/* Row groups (packed byte rows) a batch kernel computes together: threads take a matmul's rows in multiples of it. */
#define TRIT_ROW_GROUP_BLOCK 16

/* The key cache of one kv head is in blocks of TRIT_KEY_BLOCK positions, each stored dimension-major ([head_dim][32]
 * fp16): a kernel reads one dimension of 32 keys as one vector, keys in lanes, with nothing to transpose. Values stay
 * position-major ([position][head_dim]). Caches hold whole blocks. */
#define TRIT_KEY_BLOCK 32
static inline size_t trit_key_index(int pos, int d, int head_dim) {
    return ((size_t)(pos / TRIT_KEY_BLOCK) * (size_t)head_dim + (size_t)d) * TRIT_KEY_BLOCK +
           (size_t)(pos % TRIT_KEY_BLOCK);
}
static inline int trit_key_blocks(int n_keys) { return (n_keys + TRIT_KEY_BLOCK - 1) / TRIT_KEY_BLOCK; }

/* Rows (token x query head) that attend_tokens kernels score at once, and their scratch: scores for every key and
 * row, plus f32 copies of a block of keys and values. */
#define TRIT_ATTEND_ROWS 32
#define TRIT_ATTEND_KEY_BLOCK TRIT_KEY_BLOCK
#define TRIT_ATTEND_SCRATCH(n_keys, head_dim, group)                                                                   \
    ((size_t)(n_keys) * ((group) > TRIT_ATTEND_ROWS ? (group) : TRIT_ATTEND_ROWS) +                                    \
     (2 * (size_t)TRIT_ATTEND_KEY_BLOCK + TRIT_ATTEND_ROWS) * (size_t)(head_dim) + 64)

/* One kv head's cache, of a TRIT_KV_* type: keys in blocks (trit_key_index), values [position][head_dim]; with Q8,
 * a scale per position for each. */
typedef struct {
    int type;
    const void *keys, *values;
    const float *key_scales, *value_scales;
} trit_kv_head;
static inline size_t trit_kv_type_size(int type) { return type == TRIT_KV_F32 ? 4 : type == TRIT_KV_Q8 ? 1 : 2; }
/* The same cache from position k0 on (a multiple of TRIT_KEY_BLOCK), as if it began there. */
trit_kv_head trit_kv_head_from(const trit_kv_head *kv, int k0, int head_dim);

/* n_q consecutive tokens' query heads (q_stride apart) against kv, token i seeing keys 0 .. n_keys0 + i: one token
 * through the kernel's attend of kv's type, several through attend_tokens for F16 and the type's attend token after
 * token for the others (AVX2 and scalar attend each token alone too). Scratch as for attend_tokens; lse (of a single
 * token: group floats) may be NULL. */
void trit_attend_kv(const trit_kernel *kern, float *out, float *lse, const float *q, int q_stride,
                    const trit_kv_head *kv, int n_q, int n_keys0, int head_dim, int group, float *scratch);
/* Decoding deep in the context, the keys are split into chunks of TRIT_ATTEND_SPLIT, attended apart (threads take
 * chunks, not only kv heads) and combined: out[h] = sum_c exp(lse[c][h] - L) out_c[h] with L = log sum_c
 * exp(lse[c][h]). partial: [n_chunks][group][head_dim], lse: [n_chunks][group]. A multiple of TRIT_KEY_BLOCK. */
#define TRIT_ATTEND_SPLIT 512
static inline int trit_attend_chunks(int n_keys, int split) { return (n_keys + split - 1) / split; }
void trit_attend_combine(float *out, const float *partial, const float *lse, int n_chunks, int group, int head_dim);
/* An attend_tokens for a kernel without a faster one: its `attend` for each token in turn. */
void trit_attend_each_token(void (*attend)(float *out, const float *q, const uint16_t *keys, const uint16_t *values,
                                           int kv_stride, int n_keys, int head_dim, int group, float *scores,
                                           float *lse),
                            float *out, const float *q, int q_stride, const uint16_t *keys, const uint16_t *values,
                            int n_q, int n_keys0, int head_dim, int group, float *scratch);

/* One query head against positions 0..n_keys-1 of its kv head; scores is scratch of n_keys floats; lse as for
 * attend (one float, or NULL). */
void trit_attend_head(const trit_kernel *kern, float *out, const float *q, const uint16_t *keys, const uint16_t *values,
                      int kv_stride, int n_keys, int head_dim, float *scores, float *lse);
/* A key or value of the Q8 cache: dst = x / scale rounded to nearest even, *scale = max|x| / 127 (0 for all zeros).
 * One definition for every kernel, so every kernel stores the same bytes. */
void trit_quantize_kv(int8_t *dst, float *scale, const float *x, int n);

#endif
