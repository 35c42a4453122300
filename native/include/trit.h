/* trit.h — the only contract between the native library and Python (engine/native.py).
 *
 * The library runs the forward pass of a BitNet b1.58 decoder (as transformers' BitNetForCausalLM computes it)
 * over weights the caller keeps in memory (usually memory-mapped from model.safetensors). It never reads files.
 *
 * Conventions
 *   - bf16 values are passed as uint16_t bit patterns.
 *   - A packed ternary matrix with `out` rows and `in` columns is uint8 [out/4][in], exactly as in the Hugging Face
 *     checkpoint: byte P[r][c] holds W[r + j*out/4][c] + 1 in bits 2j+1:2j (j = 0..3). Code 3 is invalid.
 *   - Functions returning int return 0 on success and a negative TRIT_E_* code on failure; trit_last_error()
 *     then gives a one-line message (thread-local).
 *   - Every size and index is checked here, at the boundary.
 */
#ifndef TRIT_H
#define TRIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library exports these functions and nothing else: on Windows by dllexport while it is built (TRIT_BUILD, set
 * by CMake), dllimport for a C program that links it; elsewhere by default visibility, the rest being hidden. */
#if defined(_WIN32) && defined(TRIT_BUILD)
#define TRIT_API __declspec(dllexport)
#elif defined(_WIN32)
#define TRIT_API __declspec(dllimport)
#else
#define TRIT_API __attribute__((visibility("default")))
#endif

/* 2: trit_config.block, trit_weights.output (issue 19); 3: trit_context_read_kv/write_kv (issue 18); 4: the KV
 * cache's element type (trit_context_create_kv), trit_op_attention_kv (issue 20) */
#define TRIT_API_VERSION 4

enum {
    TRIT_OK = 0,
    TRIT_E_INVALID = -1,    /* bad argument or configuration */
    TRIT_E_NOMEM = -2,      /* allocation failed */
    TRIT_E_RANGE = -3,      /* token id outside the vocabulary, or position past the context */
    TRIT_E_UNSUPPORTED = -4 /* kernel not available on this CPU */
};

/* How a projection's weight_scale is applied (config.json quantization_config.linear_class). */
enum {
    TRIT_SCALE_MULTIPLY = 0, /* "autobitlinear": y = (xq.T)/s * weight_scale */
    TRIT_SCALE_DIVIDE = 1    /* "bitlinear":     y = (xq.T)/s / weight_scale */
};

/* The decoder block (config.json's family, engine/formats/checkpoint.py). Both run every projection as a BitLinear.
 * TRIT_BLOCK_BITNET: BitNetForCausalLM: RMSNorm before o and down (attn_sub_norm, ffn_sub_norm), relu(gate)^2 * up.
 * TRIT_BLOCK_LLAMA:  LlamaForCausalLM with the bitnet quantizer: no sub-norms, silu(gate) * up.
 * TRIT_BLOCK_1BITLLM: 1bitLLM's BitnetForCausalLM: the sub-norms, and silu(gate) * up. */
enum { TRIT_BLOCK_BITNET = 0, TRIT_BLOCK_LLAMA = 1, TRIT_BLOCK_1BITLLM = 2 };

/* The largest configuration trit_model_create takes; past any of them it fails with TRIT_E_INVALID before allocating
 * anything. Far above every ternary model (Llama3-8B: hidden 4096, 32 layers, vocabulary 128256), and small enough
 * that every size and index derived from them fits 64 bits, and every row count an int. Python checks config.json
 * against the same numbers (engine/formats/checkpoint.py, LIMITS). */
#define TRIT_MAX_HIDDEN (1 << 16)
#define TRIT_MAX_INTERMEDIATE (1 << 18)
#define TRIT_MAX_LAYERS (1 << 10)
#define TRIT_MAX_HEADS (1 << 10) /* query heads, and kv heads */
#define TRIT_MAX_HEAD_DIM (1 << 10)
#define TRIT_MAX_VOCAB (1 << 22)
#define TRIT_MAX_POSITIONS (1 << 18)
/* max_positions x head_dim: the RoPE tables are computed for every position when the model is made (256 MB here;
 * a 128K context at head_dim 128 is a quarter of it) */
#define TRIT_MAX_ROPE_CELLS (1 << 26)

typedef struct {
    int32_t hidden_size;
    int32_t intermediate_size;
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t vocab_size;
    int32_t max_positions;
    float rope_theta;
    float rms_eps;
    int32_t scale_mode;     /* TRIT_SCALE_* */
    int32_t ternary_format; /* TRIT_TERNARY_*: how the layer weights' q..down are stored */
    int32_t block;          /* TRIT_BLOCK_* */
} trit_config;

/* One decoder layer. Norm weights are float32 (small; the loader widens bf16 once). */
typedef struct {
    const float *input_norm; /* [hidden] */
    /* packed: q [n_heads*hd/4][hidden], k,v [n_kv*hd/4][hidden], o [hidden/4][n_heads*hd] */
    const uint8_t *q, *k, *v, *o;
    const float *attn_sub_norm;  /* [hidden]; NULL in a TRIT_BLOCK_LLAMA model, which has none */
    const float *post_attn_norm; /* [hidden] */
    const uint8_t *gate, *up;    /* packed [intermediate/4][hidden] */
    const uint8_t *down;         /* packed [hidden/4][intermediate] */
    const float *ffn_sub_norm;   /* [intermediate]; NULL in a TRIT_BLOCK_LLAMA model */
    float q_scale, k_scale, v_scale, o_scale, gate_scale, up_scale, down_scale;
} trit_layer_weights;

/* How the seven ternary projections are stored.
 * TRIT_TERNARY_TQ2: the checkpoint's own packing, 2 bits a weight (see the top of this file).
 * TRIT_TERNARY_T5:  1.6 bits a weight, derived once (trit_convert_tq2_to_t5): G = ceil(rows/5) groups, uint8 [G][cols];
 *   byte B[g][c] holds d_j = W[g + j*G][c] + 1 for j = 0..4 as B = d0 + 3*d1 + 9*d2 + 27*d3 + 81*d4 (0..242);
 *   rows past `rows` (padding) hold weight 0. */
enum { TRIT_TERNARY_TQ2 = 0, TRIT_TERNARY_T5 = 1 };

/* The output head: the tied embedding itself (or the untied bf16 `output` matrix), or a copy in fewer bits derived from
 * it once (engine/derived.py).
 * With a compact head, trit_eval recomputes each thread's 32 highest logits from the exact bf16 rows, so the
 * likeliest tokens always carry exact logits; only the tail is approximate. */
enum {
    TRIT_HEAD_BF16 = 0, /* head = output, or embed when output is NULL */
    TRIT_HEAD_Q8 = 1,   /* head: int8 [vocab][hidden]; head_scales: float [vocab]; row r = scale[r] * q[r] */
    TRIT_HEAD_Q4 = 2    /* head: uint8 [vocab][hidden/2], each 64 columns in 32 bytes: byte i holds column i in its low
                           nibble and column i+32 in its high nibble; head_scales: fp16 [vocab][hidden/32], one per 32
                           columns; the weight is scale * (q - 8), q in 0..15. hidden must be a multiple of 64. */
};
#define TRIT_Q4_GROUP 64
#define TRIT_Q4_BLOCK 32

typedef struct {
    const uint16_t *embed;            /* bf16 [vocab][hidden]: the input embedding, and the head when TRIT_HEAD_BF16 */
    const float *final_norm;          /* [hidden] */
    const trit_layer_weights *layers; /* [n_layers]; copied by trit_model_create */
    int32_t head_type;                /* TRIT_HEAD_* */
    const void *head;                 /* NULL for TRIT_HEAD_BF16 */
    const void *head_scales;          /* float for TRIT_HEAD_Q8, fp16 for TRIT_HEAD_Q4 */
    const uint16_t *output;           /* bf16 [vocab][hidden]: an untied head's exact rows; NULL when tied to embed */
} trit_weights;

typedef struct trit_model trit_model;
typedef struct trit_context trit_context;

TRIT_API const char *trit_version(void);
TRIT_API int trit_api_version(void);
TRIT_API const char *trit_last_error(void);

/* ---- kernels: one table per instruction set, chosen at run time ---------------------------------------------- */
TRIT_API int trit_kernel_count(void);
TRIT_API const char *trit_kernel_name(int index);
TRIT_API int trit_kernel_supported(int index); /* 1 if this CPU can run it */
/* The kernel in use: the best supported one, or the one named by the TRIT_KERNEL environment variable. */
TRIT_API const char *trit_kernel_active(void);
TRIT_API int trit_kernel_select(const char *name); /* TRIT_E_UNSUPPORTED if this CPU cannot run it */

/* ---- models and contexts ------------------------------------------------------------------------------------- */
/* Checks the configuration and keeps pointers to the weights (they must outlive the model). n_threads <= 0: all
 * cores; more than TRIT_MAX_THREADS is TRIT_E_INVALID (here and in set_threads), not an allocation failure. */
#define TRIT_MAX_THREADS 256
TRIT_API trit_model *trit_model_create(const trit_config *config, const trit_weights *weights, int n_threads);
TRIT_API void trit_model_free(trit_model *model);
TRIT_API int trit_model_threads(const trit_model *model);
TRIT_API int trit_model_set_threads(trit_model *model, int n_threads);
/* Read bandwidth of this machine in GB/s with the model's threads: the best of `repetitions` passes over a buffer of
 * `bytes` (larger than the caches). The bus limit a decoding speed is measured against. */
TRIT_API double trit_measure_read_bandwidth(trit_model *model, int64_t bytes, int repetitions);

/* Size in bytes of a rows x cols ternary matrix in T5, and the conversion from the checkpoint's packing. */
TRIT_API int64_t trit_t5_size(int rows, int cols);
TRIT_API int trit_convert_tq2_to_t5(uint8_t *t5, const uint8_t *tq2, int rows, int cols);
/* Scans packed ternary bytes (TQ2) for code 3; returns the offset of the first bad byte, or -1 if all are valid. */
TRIT_API int64_t trit_find_invalid_code(const uint8_t *packed, int64_t n_bytes);
/* Scans T5 bytes for values past 242 (not five base-3 digits); returns the first bad offset, or -1. */
TRIT_API int64_t trit_find_invalid_t5(const uint8_t *t5, int64_t n_bytes);
/* The ternary format the active kernel runs fastest. */
TRIT_API int trit_kernel_preferred_format(void);

/* The KV cache's element type. F16 (the default); F32, exact; Q8: int8 with one fp32 scale per position and kv head
 * for its key and one for its value (max|x| / 127, x / scale rounded to nearest even), half of F16's bytes. */
enum { TRIT_KV_F16 = 0, TRIT_KV_F32 = 1, TRIT_KV_Q8 = 2 };
/* A KV cache of n_ctx positions (fp16) and the scratch for batches of up to max_batch tokens. */
TRIT_API trit_context *trit_context_create(trit_model *model, int n_ctx, int max_batch);
/* The same with the cache's elements of a TRIT_KV_* type. */
TRIT_API trit_context *trit_context_create_kv(trit_model *model, int n_ctx, int max_batch, int kv_type);
TRIT_API int trit_context_kv_type(const trit_context *ctx);
TRIT_API void trit_context_free(trit_context *ctx);
TRIT_API int trit_context_n_past(const trit_context *ctx);
TRIT_API int trit_context_n_ctx(const trit_context *ctx);
/* Forget every position from n_past on (0 <= n_past <= current n_past): the cache keeps the prefix. */
TRIT_API int trit_context_truncate(trit_context *ctx, int n_past);
/* The cache as rows, to save a context and restore it exactly (engine/formats/kv_file.py): the row of a position
 * holds, for each layer and then each kv head, that position's key and then its value, head_dim elements each of the
 * context's type (Q8: then the key's and the value's fp32 scales). Rows are position after position, so the rows of a
 * longer conversation extend those of its beginning. */
TRIT_API int64_t trit_context_kv_row_bytes(const trit_context *ctx);
/* Copies the rows of positions [first, first + n) into out (n rows); first + n must not pass n_past. */
TRIT_API int trit_context_read_kv(const trit_context *ctx, int first, int n, void *out);
/* Writes the rows of positions [first, first + n) from in, first <= n_past and first + n <= n_ctx; n_past becomes
 * first + n (the positions after them are forgotten). Out of range (TRIT_E_RANGE), nothing is written. */
TRIT_API int trit_context_write_kv(trit_context *ctx, int first, int n, const void *in);

enum { TRIT_LOGITS_NONE = 0, TRIT_LOGITS_LAST = 1, TRIT_LOGITS_ALL = 2 };
/* Runs n_tokens tokens at positions n_past.. (any n_tokens; batches of max_batch internally) and advances n_past.
 * logits: float [vocab] for TRIT_LOGITS_LAST, [n_tokens][vocab] for TRIT_LOGITS_ALL, NULL for NONE.
 * On error nothing is appended. */
TRIT_API int trit_eval(trit_context *ctx, const int32_t *tokens, int n_tokens, float *logits, int logits_mode);

/* ---- single operations, for tests against the reference (they use the active kernel) -------------------------- */
TRIT_API void trit_op_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);
/* Per-row int8 quantisation (round half to even); returns s = 127 * (1 / max(|x|, 1e-5)) in fp32, as torch computes
 * it. */
TRIT_API float trit_op_quantize(int8_t *xq, const float *x, int n);
/* out[t][r] = sum_c W[r][c] * xq[t][c], exact in int32; out is int32 [n_tokens][rows]; W in TRIT_TERNARY_* format. */
TRIT_API int trit_op_ternary_matmul(int kernel_index, int format, int32_t *out, const uint8_t *packed, int rows,
                                    int cols, const int8_t *xq, int n_tokens);
/* Rotates [n_heads][head_dim] in place for one position (rotate_half pairing: i with i + head_dim/2). Sizes that are
 * not positive (or an odd head_dim) leave x as it is and set trit_last_error(). */
TRIT_API void trit_op_rope(float *x, int n_heads, int head_dim, int pos, float theta);
/* Causal grouped-query attention of n_q query rows at positions pos0.. against keys/values at positions 0..pos0+n_q-1.
 * q: [n_q][n_heads*hd], k, v: [pos0+n_q][n_kv_heads*hd] (stored as fp16 inside, as in the KV cache), out like q. */
TRIT_API int trit_op_attention(float *out, const float *q, const float *k, const float *v, int n_q, int pos0,
                               int n_heads, int n_kv_heads, int head_dim);
/* The same with keys and values stored as kv_type; split > 0 (a multiple of 32): a single query row (n_q == 1) attends
 * to chunks of `split` keys apart and combines them, as the engine decodes deep in the context. */
TRIT_API int trit_op_attention_kv(float *out, const float *q, const float *k, const float *v, int n_q, int pos0,
                                  int n_heads, int n_kv_heads, int head_dim, int kv_type, int split);
/* The gated FFN activation from the gate and up matmuls' int32 sums: out = relu(gate * fg)^2 * (up * fu). */
TRIT_API void trit_op_relu2_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n);
/* The Llama FFN activation: out = silu(gate * fg) * (up * fu), silu(g) = g / (1 + exp(-g)). */
TRIT_API void trit_op_silu_sums(float *out, const int32_t *gate, float fg, const int32_t *up, float fu, int n);
/* out = acc * f, or out += acc * f when add is set (a projection's sums to floats). */
TRIT_API void trit_op_scale_sums(float *out, const int32_t *acc, float f, int n, int add);
/* fp32 to fp16 bits, rounded to nearest even (the KV cache). */
TRIT_API void trit_op_to_f16(uint16_t *dst, const float *src, int n);
/* logits[v] = sum_c x[c] * H[v][c] with the head in any TRIT_HEAD_* form. */
TRIT_API int trit_op_output_head(int head_type, float *logits, const float *x, const void *head, const void *scales,
                                 int vocab, int hidden);

#ifdef __cplusplus
}
#endif
#endif
