"""A BitNet b1.58 checkpoint as the F16 GGUF bitnet.cpp quantizes to I2_S (`trit bench --vs bitnet.cpp`, issue 20).

bitnet.cpp (Microsoft's BitNet, its llama.cpp fork as carried by ygqdan/BitNet-linux) runs 2B4T as architecture
`bitnet-25` (src/llama.cpp, build_bitnet_158: relu² FFN, sub-norms). What its loader reads:
- keys bitnet-25.{context_length, embedding_length, block_count, feed_forward_length, attention.head_count,
  attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon, rope.dimension_count};
- tensors token_embd, output_norm, blk.N.{attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm, attn_q, attn_k, attn_v,
  attn_output, ffn_gate, ffn_up, ffn_down}; no output tensor (tied head) and no per-tensor `.scale` (this graph has
  none): the scale lives in the weights, which are written as F16 T x s;
- a "gpt2" vocabulary with tokens, types and merges (written as formats/gguf_export writes it).

`llama-quantize in out I2_S` then takes each projection's max |W| as its one I2_S scale and codes the signs, so
T x s comes back exactly as T and s, with s rounded to fp16 (f16 is exact for T x fp16(s): T is -1, 0 or 1). Trit
applies s in float32, a relative difference below 2^-11 — these files are for speed, as the activations bitnet.cpp
quantizes per tensor differ from Trit's anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trit.engine.formats import gguf_export
from trit.engine.formats.checkpoint import FAMILIES, FAMILY_BITNET, PROJECTIONS, Checkpoint
from trit.engine.formats.derived import fingerprint

ARCH = "bitnet-25"
# bitnet.cpp's I2_S packs 128 weights of a row per block on x86 (QK_I2_S) and quantizes 4 rows at a time
I2S_BLOCK = 128
I2S_ROWS = 4


class Bitnet25Error(gguf_export.GGUFExportError):
    """The checkpoint cannot be run by bitnet.cpp's bitnet-25 graph."""


def check(checkpoint: Checkpoint) -> None:
    """bitnet-25 is the 2B4T block: BitNet b1.58 with sub-norms, q and o square; I2_S needs rows of 128."""
    cfg = checkpoint.config
    if cfg.family != FAMILY_BITNET or not cfg.has_sub_norms:
        raise Bitnet25Error(f"bitnet.cpp's bitnet-25 graph runs BitNet b1.58 2B4T's architecture only; "
                            f"{checkpoint.folder} is a {FAMILIES[cfg.family]} model: compare it with --vs llama.cpp")
    if cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        raise Bitnet25Error("bitnet.cpp's bitnet-25 graph needs heads x head_dim == hidden_size")
    kv = cfg.num_key_value_heads * cfg.head_dim
    for n in (cfg.hidden_size, cfg.intermediate_size, kv):
        if n % I2S_BLOCK:
            raise Bitnet25Error(f"bitnet.cpp's I2_S needs hidden_size, intermediate_size and kv heads x head_dim to "
                                f"be multiples of {I2S_BLOCK}; this model has {cfg.hidden_size}, "
                                f"{cfg.intermediate_size} and {kv}")


def projection_f16(checkpoint: Checkpoint, weight: str) -> np.ndarray:
    """T x s of one projection as f16 [out, in]: the values bitnet.cpp's quantizer turns into I2_S."""
    scale = np.float16(gguf_export.effective_scale(checkpoint, weight))
    if not np.isfinite(scale) or scale == 0:
        raise Bitnet25Error(f"{checkpoint.file.path}: {weight}_scale gives a weight scale of {scale} in f16")
    return gguf_export.ternary(checkpoint, weight).astype(np.float16) * scale


def _tensors(checkpoint: Checkpoint):
    """(gguf name, array) in file order, one at a time (the 2B4T shape is 4.8 GB in f16)."""
    cfg = checkpoint.config
    yield "token_embd.weight", gguf_export._embedding_f16(checkpoint)
    yield "output_norm.weight", checkpoint.f32("model.norm.weight")
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name in gguf_export._NORMS:
            yield gguf_export.gguf_name(p + name + ".weight"), checkpoint.f32(p + name + ".weight")
        for name in PROJECTIONS:
            yield gguf_export.gguf_name(p + name + ".weight"), projection_f16(checkpoint, p + name + ".weight")


def _plan(checkpoint: Checkpoint) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    cfg = checkpoint.config
    f16, f32 = np.dtype(np.float16), np.dtype(np.float32)
    shapes = {n: s for n, (s, _) in cfg.expected_tensors().items()}
    plan = [("token_embd.weight", (cfg.vocab_size, cfg.hidden_size), f16),
            ("output_norm.weight", (cfg.hidden_size,), f32)]
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name in gguf_export._NORMS:
            plan.append((gguf_export.gguf_name(p + name + ".weight"), tuple(shapes[p + name + ".weight"]), f32))
        for name in PROJECTIONS:
            rows4, cols = shapes[p + name + ".weight"]  # the checkpoint packs 4 rows per byte
            plan.append((gguf_export.gguf_name(p + name + ".weight"), (4 * rows4, cols), f16))
    return plan


def export(checkpoint: Checkpoint | str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the F16 bitnet-25 GGUF (gguf_export.write_atomically: complete or absent)."""
    gguf = gguf_export._gguf()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
    check(ckpt)
    cfg = ckpt.config

    def describe(writer) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(ckpt.folder.name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        gguf_export._vocabulary(ckpt, writer)
        writer.add_string(gguf_export.FINGERPRINT_KEY, fingerprint(ckpt))

    plan = [(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize, None) for name, shape, dtype in _plan(ckpt)]
    return gguf_export.write_atomically(out_path, ARCH, describe, plan, _tensors(ckpt))
