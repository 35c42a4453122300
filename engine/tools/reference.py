"""BitNet b1.58 forward pass in plain numpy: the specification in code.

This is what the C engine is compared against. It follows transformers' `BitNetForCausalLM`
(models/bitnet/modeling_bitnet.py, integrations/bitnet.py) operation by operation and is written to be read,
not to be fast: one function per operation, everything in float32 except the exact integer core of BitLinear.
It handles any checkpoint `engine.formats.checkpoint.Checkpoint` accepts (the 2B4T shape included), but is only quick
on small models.

One decoder layer (see shared BITNET.md):

    n1  = input_layernorm(x)
    h   = x + o_proj(attn_sub_norm(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))))
    n2  = post_attention_layernorm(h)
    out = h + down_proj(ffn_sub_norm(relu(gate_proj(n2))**2 * up_proj(n2)))

and the model: embed -> layers -> model.norm -> logits = normed @ embed_tokens^T (tied head).

The Llama block (transformers' LlamaDecoderLayer with the bitnet quantizer: Falcon-E, Falcon3-1.58bit,
Llama3-8B-1.58) is the same without the two sub-norms and with SiLU gating:

    h   = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))
    out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2))

and its head may be untied: logits = normed @ lm_head^T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trit.engine.formats.checkpoint import HIDDEN_ACT, LINEAR_CLASSES, OUTPUT_HEAD, Checkpoint, widen_to_f32
from trit.engine.formats.packing import unpack_ternary

F32 = np.float32


# --- the operations ------------------------------------------------------------------------------------------------

def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis, in float32 (as BitNetRMSNorm)."""
    x = np.asarray(x, F32)
    variance = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
    return np.asarray(weight, F32) * (x * (F32(1) / np.sqrt(variance + F32(eps))))


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (last axis) absmax int8 quantisation of the activations.

    s  = 127 / max(|x|, 1e-5)                        float32, shape [..., 1]
    xq = clip(round_half_even(x * s), -128, 127)     int8

    In float32, s is computed as 127 * (1 / max): that is what transformers' `127 / tensor` does (torch
    evaluates a scalar divided by a tensor as reciprocal, then multiply), and it differs from a correctly rounded
    127 / max in the last bit for about a quarter of all rows. Bit-identical s keeps ties rounding identically.
    """
    x = np.asarray(x, F32)
    absmax = np.max(np.abs(x), axis=-1, keepdims=True)
    s = F32(127) * (F32(1) / np.maximum(absmax, F32(1e-5)))
    xq = np.clip(np.rint(x * s), -128, 127).astype(np.int8)  # np.rint rounds half to even, like torch.round
    return xq, s.astype(F32)


def ternary_matmul_i32(packed: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Exact integer product xq · Tᵀ: packed uint8 [out/4, in], xq int8 [n, in] -> int32 [n, out].

    T is the ternary matrix {-1, 0, +1} [out, in]. Every term is an integer of magnitude <= 128 and |sum| <= 128*in,
    which fits int32 for in < 2**24 and is exact in float64 (53-bit mantissa). So the product is computed with
    float64 BLAS and is identical to an int32 dot product; an integer numpy matmul gives the same, far slower.
    """
    t = unpack_ternary(np.asarray(packed, np.uint8))
    xq = np.asarray(xq, np.int8)
    if xq.shape[-1] != t.shape[1]:
        raise ValueError(f"activation width {xq.shape[-1]} does not match the weight's {t.shape[1]} columns")
    assert t.shape[1] < 2**24, "128 * in must fit int32"
    acc = xq.astype(np.float64) @ t.astype(np.float64).T
    return acc.astype(np.int32)


def bitlinear(x: np.ndarray, packed: np.ndarray, weight_scale: float, linear_class: str) -> np.ndarray:
    """One BitLinear projection (no bias): float32 [n, in] -> float32 [n, out].

    y = (xq · T) / s, then  * weight_scale  ("autobitlinear")  or  / weight_scale  ("bitlinear").
    """
    xq, s = quantize(x)
    y = ternary_matmul_i32(packed, xq).astype(F32) / s
    ws = F32(weight_scale)
    if linear_class == "autobitlinear":
        return y * ws
    if linear_class == "bitlinear":
        return y / ws
    raise ValueError(f"linear_class must be one of {LINEAR_CLASSES}, not {linear_class!r}")


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2i/hd) for i < hd/2, as transformers computes it: the exponent 2i/hd in float32, the power
    correctly rounded to float32 (torch's pow of a Python float base is; numpy's float32 pow is not), then 1 / that."""
    exponent = np.arange(0, head_dim, 2, dtype=F32) / F32(head_dim)
    power = (np.float64(theta) ** exponent.astype(np.float64)).astype(F32)
    return F32(1) / power


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding of x [n, heads, hd] at positions [n], Llama "rotate_half" pairing (dim i with i + hd/2)."""
    x = np.asarray(x, F32)
    hd = x.shape[-1]
    angles = np.asarray(positions).astype(F32)[:, None] * rope_inv_freq(hd, theta)[None, :]  # [n, hd/2]
    angles = np.concatenate([angles, angles], axis=-1)[:, None, :]                            # [n, 1, hd]
    cos, sin = np.cos(angles), np.sin(angles)
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)                          # rotate_half(x)
    return x * cos + rotated * sin


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos0: int = 0) -> np.ndarray:
    """Causal grouped-query attention. q [n, H, hd] are the queries at positions pos0 .. pos0+n-1;
    k, v [T, KV, hd] are the keys and values of positions 0 .. T-1 (T >= pos0 + n). Query head h reads
    kv head h // (H / KV); query i sees keys 0 .. pos0+i. Returns [n, H, hd] float32."""
    q, k, v = (np.asarray(a, F32) for a in (q, k, v))
    n, heads, hd = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale = F32(hd ** -0.5)
    out = np.empty_like(q)
    for h in range(heads):
        kh, vh = k[:, h // group, :], v[:, h // group, :]
        for i in range(n):
            visible = pos0 + i + 1
            scores = (kh[:visible] @ q[i, h]) * scale
            p = np.exp(scores - scores.max())
            p /= p.sum()
            out[i, h] = p @ vh[:visible]
    return out


def relu2_gate(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """relu(gate)^2 * up."""
    r = np.maximum(np.asarray(gate, F32), F32(0))
    return r * r * np.asarray(up, F32)


def silu_gate(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, silu(g) = g * sigmoid(g)."""
    g = np.asarray(gate, F32)
    with np.errstate(over="ignore"):  # exp(-g) is inf for g < -88: the quotient is then -0, as in torch
        return g / (F32(1) + np.exp(-g)) * np.asarray(up, F32)


ACTIVATIONS = {"relu2": relu2_gate, "silu": silu_gate}


def through_f16(x: np.ndarray) -> np.ndarray:
    """x rounded to fp16 and back: what a KV cache stored in fp16 (the engine's, llama.cpp's) gives attention."""
    return np.asarray(x, F32).astype(np.float16).astype(F32)


def embed(embed_bf16: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Rows of the bf16 embedding (uint16 bit patterns) for the tokens, widened to float32."""
    return widen_to_f32(np.asarray(embed_bf16)[np.asarray(token_ids)], "BF16")


def output_head(x: np.ndarray, embed_bf16: np.ndarray) -> np.ndarray:
    """Logits = x @ Eᵀ in float32, E the tied embedding [vocab, hidden] as bf16 bit patterns."""
    return np.asarray(x, F32) @ widen_to_f32(np.asarray(embed_bf16), "BF16").T


# --- the model ------------------------------------------------------------------------------------------------------

def layer(ckpt: Checkpoint, i: int, x: np.ndarray, positions: np.ndarray,
          linear_class: str | None = None, *, activation: str | None = None, kv_f16: bool = False) -> np.ndarray:
    """Decoder layer i on hidden states x [n, hidden] of a fresh context at `positions` [n]. activation overrides the
    family's ("relu2" or "silu"); kv_f16 rounds keys (after RoPE) and values to fp16, as a KV cache in fp16 does."""
    c = ckpt.config
    lc = linear_class or c.linear_class
    act = ACTIVATIONS[activation or HIDDEN_ACT[c.family]]
    eps = c.rms_norm_eps
    p = f"model.layers.{i}."
    n = x.shape[0]

    def proj(name, inp):
        return bitlinear(inp, ckpt.raw(p + name + ".weight"), ckpt.scale(p + name + ".weight_scale"), lc)

    # attention block
    n1 = rmsnorm(x, ckpt.f32(p + "input_layernorm.weight"), eps)
    q = proj("self_attn.q_proj", n1).reshape(n, c.num_attention_heads, c.head_dim)
    k = proj("self_attn.k_proj", n1).reshape(n, c.num_key_value_heads, c.head_dim)
    v = proj("self_attn.v_proj", n1).reshape(n, c.num_key_value_heads, c.head_dim)
    q = rope(q, positions, c.rope_theta)
    k = rope(k, positions, c.rope_theta)
    if kv_f16:
        k, v = through_f16(k), through_f16(v)
    a = attention(q, k, v, pos0=int(positions[0])).reshape(n, c.num_attention_heads * c.head_dim)
    if c.has_sub_norms:
        a = rmsnorm(a, ckpt.f32(p + c.sub_norm_names[0] + ".weight"), eps)
    h = x + proj("self_attn.o_proj", a)

    # feed-forward block
    n2 = rmsnorm(h, ckpt.f32(p + "post_attention_layernorm.weight"), eps)
    g = act(proj("mlp.gate_proj", n2), proj("mlp.up_proj", n2))
    if c.has_sub_norms:
        g = rmsnorm(g, ckpt.f32(p + c.sub_norm_names[1] + ".weight"), eps)
    return h + proj("mlp.down_proj", g)


def forward(checkpoint: Checkpoint | str | Path, token_ids, *, return_hidden: bool = False,
            linear_class: str | None = None, activation: str | None = None, tied: bool | None = None,
            kv_f16: bool = False):
    """Logits float32 [n, vocab] for token_ids [n] in a fresh context (positions 0 .. n-1).

    With return_hidden=True, returns (logits, hidden) where hidden [n, hidden_size] are the final normed states.
    linear_class, activation and tied override the checkpoint's weight-scale direction, FFN activation and head (only
    for tests proving a wrong one is caught); kv_f16 stores keys and values in fp16, as the engine's cache does.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
    c = ckpt.config
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("no tokens")
    if ids.min() < 0 or ids.max() >= c.vocab_size:
        raise ValueError(f"token ids must lie in [0, {c.vocab_size})")
    if linear_class is not None and linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class must be one of {LINEAR_CLASSES}, not {linear_class!r}")
    positions = np.arange(ids.size)
    E = ckpt.f32("model.embed_tokens.weight")  # exact from bf16, f16 (1bitLLM's masters) or f32

    x = E[ids]
    for i in range(c.num_hidden_layers):
        x = layer(ckpt, i, x, positions, linear_class, activation=activation, kv_f16=kv_f16)
    hidden = rmsnorm(x, ckpt.f32("model.norm.weight"), c.rms_norm_eps)
    if c.tie_word_embeddings if tied is None else tied:
        logits = hidden @ E.T
    else:  # the untied head as stored (bf16, f16 or f32), widened exactly
        logits = hidden @ ckpt.f32(OUTPUT_HEAD).T
    return (logits, hidden) if return_hidden else logits
