"""A BitNet b1.58 checkpoint folder as a GGUF file for llama.cpp's `bitnet` architecture, so that llama.cpp can
run the very weights Trit runs (`trit bench --vs llama.cpp`).

What llama.cpp (the copy inside llama-cpp-python 0.3.36) expects, read from its source:
- architecture "bitnet"; tensors token_embd, output_norm, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
  attn_sub_norm, ffn_norm, ffn_gate, ffn_up, ffn_down, ffn_sub_norm}; no output tensor (the head is token_embd).
  attn_q and attn_output must be [n_embd, n_embd] and attn_sub_norm [n_embd]: heads x head_dim == hidden.
- keys bitnet.{context_length, embedding_length, block_count, feed_forward_length, attention.head_count,
  attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon}; RoPE is NEOX-style (rotate_half), as
  in Hugging Face, so q/k are written unpermuted.
- a per-projection weight scale is an optional `<tensor>.scale` tensor of shape [1], multiplied into the matmul
  output. Its converter does not write one: it dequantizes the packed weights and lets the TQ quantizer fold the
  magnitude into each 256-weight block's fp16 scale.
- a vocabulary: tokenizer.ggml.model "gpt2" needs tokens and merges.

Here the ternary values are written exactly as Trit applies them: the weight is T x s, with s = weight_scale
("autobitlinear") or 1 / weight_scale ("bitlinear"). When s is exactly an fp16 number (any bf16 "autobitlinear"
scale within fp16's range is) it is folded into the block scales as llama.cpp's converter does; otherwise the blocks
hold T itself (block scale 1) and s goes into a float32 `.scale` tensor. Every quantized tensor is dequantized again
and compared with T x s before it is written: the file is lossless or not written at all.

Differences from llama.cpp's own converter (conversion/bitnet.py, base.py), which ignores linear_class, always
divides by weight_scale, and then re-quantizes with the mean |W|, so its weights come out as T x mean|T| / scale:
this file keeps Trit's (and transformers') magnitudes. The embedding is f16 and norms f32, as the converter writes
them for TQ1_0/TQ2_0. (Its graph still differs from BitNet b1.58: SiLU in the FFN, src/models/bitnet.cpp, and
activations quantized per 256-block rather than per token. Use it for speed only.)

The Llama-block families (Falcon-E, Falcon3-1.58bit, Llama3-8B-1.58) go to llama.cpp's plain `llama` architecture,
whose graph is their block (SiLU gate, no sub-norms): the same tensor names without the sub-norms, `output` for the
untied head (f16), llama.* keys with rope.dimension_count = head_dim. That graph rotates adjacent pairs (RoPE "norm")
where Hugging Face rotates halves, so q and k rows are permuted per head as llama.cpp's converter permutes them. It
has no per-tensor `.scale`: the scale always goes into the block scales, rounded to fp16 when it is not one (a
relative error below 2^-11, far under the 8-bit activations'), and the round trip is checked against T x fp16(s).

`ensure` keeps the files in the model folder's trit/ with a stamp (checkpoint fingerprint, file size) beside each.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from trit.engine.errors import CheckpointError, EngineError
from trit.engine.formats.checkpoint import FAMILIES, FAMILY_BITNET, FAMILY_LLAMA, OUTPUT_HEAD, PROJECTIONS, Checkpoint
from trit.engine.formats.derived import DERIVED_DIR, fingerprint
from trit.engine.formats.packing import unpack_codes

ARCH = "bitnet"
LLAMA_ARCH = "llama"  # llama.cpp's plain Llama graph: the Llama-block families (Falcon-E, Falcon3, Llama3 1.58)
QTYPES = ("tq2_0", "tq1_0")
BLOCK = 256  # weights per TQ1_0 / TQ2_0 block (QK_K)
FINGERPRINT_KEY = "trit.checkpoint"
EXPORT_VERSION = 1
VERSION_KEY = "trit.export_version"
EMBED_ROWS_PER_CHUNK = 8192

# Hugging Face name (after model.layers.N.) -> llama.cpp tensor name (after blk.N.)
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm",
}
_NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm")


class GGUFExportError(EngineError):
    """The checkpoint cannot be written as a llama.cpp bitnet GGUF (or the gguf package is missing)."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFExportError('writing GGUF needs the gguf package: pip install "trit[gguf]"') from None
    return gguf


def qtype_of(name: str):
    gguf = _gguf()
    if name not in QTYPES:
        raise GGUFExportError(f"unknown GGUF ternary type {name!r}; choose from {', '.join(QTYPES)}")
    return getattr(gguf.GGMLQuantizationType, name.upper())


def arch_of(checkpoint: Checkpoint) -> str:
    family = checkpoint.config.family
    if family == FAMILY_BITNET:
        return ARCH
    if family == FAMILY_LLAMA:
        return LLAMA_ARCH
    # 1bitLLM's float masters are quantised at load into trit/, not held as packed ternary in the checkpoint
    raise GGUFExportError(f"{FAMILIES[family]} models are not exported to GGUF here: only BitNet b1.58 and the "
                          "Llama-block ternary families")


def _rope_pairs_adjacent(t: np.ndarray, n_head: int) -> np.ndarray:
    """q/k rows reordered per head from rotate-half (Hugging Face) to adjacent pairs (llama.cpp's llama graph): row
    i of each half-pair block goes to 2i, row half + i to 2i + 1, as llama.cpp's convert_hf_to_gguf permutes them."""
    rows = t.shape[0]
    return t.reshape(n_head, 2, rows // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def gguf_name(hf_name: str) -> str:
    """The llama.cpp name of a checkpoint tensor: model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == OUTPUT_HEAD:
        return "output.weight"
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and len(parts) >= 4:
        rest = ".".join(parts[3:])
        for hf, ll in _LAYER_NAMES.items():
            if rest == hf + ".weight":
                return f"blk.{parts[2]}.{ll}.weight"
            if rest == hf + ".weight_scale":
                return f"blk.{parts[2]}.{ll}.scale"
    raise KeyError(hf_name)


def effective_scale(checkpoint: Checkpoint, projection_weight: str) -> np.float32:
    """The factor Trit multiplies T by for this projection (see engine.formats.checkpoint.ModelConfig.linear_class)."""
    stored = np.float32(checkpoint.scale(projection_weight + "_scale"))
    return stored if checkpoint.config.linear_class == "autobitlinear" else np.float32(1) / stored


def ternary(checkpoint: Checkpoint, projection_weight: str) -> np.ndarray:
    """The ternary matrix T [out, in] as int8 in {-1, 0, 1}; the invalid code 3 is an error."""
    codes = unpack_codes(checkpoint.raw(projection_weight))
    if (codes == 3).any():
        raise CheckpointError(f"{checkpoint.file.path}: tensor {projection_weight} holds the invalid 2-bit code 3")
    return codes.astype(np.int8) - 1


def folds(scale: np.float32) -> bool:
    """Whether a weight scale goes into the fp16 block scales exactly (else it is written as a `.scale` tensor)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(scale) and scale != 0 and np.float32(np.float16(scale)) == scale)


def quantize_ternary(t: np.ndarray, scale: np.float32, qtype: str,
                     round_scale: bool = False) -> tuple[np.ndarray, bool]:
    """T x scale in llama.cpp's TQ1_0/TQ2_0 (gguf.quants), checked lossless by dequantizing.

    Returns (bytes [out, in/256 x type_size], folded): folded is True when scale lives in the block scales; False
    when the blocks hold T (block scale 1) and the caller must write scale as a `.scale` tensor. round_scale: a graph
    with no `.scale` (llama's) gets T x fp16(scale) instead, always folded."""
    gguf = _gguf()
    q = qtype_of(qtype)
    if t.shape[-1] % BLOCK:
        raise GGUFExportError(f"a row of {t.shape[-1]} weights is not a multiple of {BLOCK}, the {qtype.upper()} "
                              f"block: llama.cpp cannot hold this model in {qtype.upper()}")
    if round_scale:
        with np.errstate(over="ignore"):
            scale = np.float32(np.float16(scale))
        if not folds(scale):
            raise GGUFExportError(f"a weight scale of {scale} does not fit an fp16 block scale")
    folded = folds(scale)
    expected = t.astype(np.float32) * (scale if folded else np.float32(1))
    data = gguf.quants.quantize(expected, q)
    back = gguf.quants.dequantize(data, q).reshape(expected.shape)
    if not np.array_equal(back, expected):
        bad = int(np.argmax((back != expected).ravel()))
        raise GGUFExportError(f"{qtype.upper()} is not lossless here: weight {bad} is {back.ravel()[bad]} after the "
                              f"round trip, {expected.ravel()[bad]} before")
    return data, folded


def _embedding_f16(checkpoint: Checkpoint, name: str = "model.embed_tokens.weight") -> np.ndarray:
    """A float matrix (the embedding, or an untied head in bf16, f16 or f32) as f16, a chunk of rows at a time."""
    raw = checkpoint.raw(name)
    dtype = checkpoint.file.tensors[name].dtype
    out = np.empty(raw.shape, np.float16)
    for start in range(0, raw.shape[0], EMBED_ROWS_PER_CHUNK):
        stop = min(raw.shape[0], start + EMBED_ROWS_PER_CHUNK)
        rows = raw[start:stop]
        out[start:stop] = (rows.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else rows
    return out


def _vocabulary(checkpoint: Checkpoint, writer) -> str:
    """Write the tokenizer metadata llama.cpp needs: a "gpt2" (byte-level BPE) vocabulary from tokenizer.json when
    it holds one covering the model's vocab, else "none" with the vocab size (llama.cpp then makes dummy tokens).
    Returns the tokenizer model written. Speed does not depend on it; the load does."""
    gguf = _gguf()
    cfg = checkpoint.config
    path = checkpoint.folder / "tokenizer.json"
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model = tok["model"]
        if model.get("type") != "BPE":
            raise ValueError("not BPE")
        vocab: dict[str, int] = dict(model["vocab"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        added = {int(a["id"]): a for a in tok.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError):
        writer.add_tokenizer_model("none")
        writer.add_vocab_size(cfg.vocab_size)
        return "none"
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * cfg.vocab_size
    for text, i in vocab.items():
        if 0 <= i < cfg.vocab_size:
            tokens[i], types[i] = text, int(gguf.TokenType.NORMAL)
    for i, a in added.items():
        if 0 <= i < cfg.vocab_size:
            tokens[i] = a["content"]
            types[i] = int(gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")  # Llama 3's split, which 2B4T's tokenizer (and the synthetic one) uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if cfg.bos_token_id is not None:
        writer.add_bos_token_id(int(cfg.bos_token_id))
        writer.add_add_bos_token(True)
    if cfg.eos_token_ids:
        writer.add_eos_token_id(int(cfg.eos_token_ids[-1]))
    try:
        config = json.loads((checkpoint.folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = config["chat_template"]
        if isinstance(template, str):
            writer.add_chat_template(template)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "gpt2"


def _norms(checkpoint: Checkpoint) -> tuple[str, ...]:
    return _NORMS if checkpoint.config.has_sub_norms else _NORMS[:2]


def _untied(checkpoint: Checkpoint) -> bool:
    return not checkpoint.config.tie_word_embeddings


def _tensors(checkpoint: Checkpoint, qtype: str):
    """(gguf name, array, raw ggml type or None) for every tensor, in file order, one at a time."""
    gguf = _gguf()
    q = qtype_of(qtype)
    f32 = gguf.GGMLQuantizationType.F32
    cfg = checkpoint.config
    llama = arch_of(checkpoint) == LLAMA_ARCH
    yield "token_embd.weight", _embedding_f16(checkpoint), None
    yield "output_norm.weight", checkpoint.f32("model.norm.weight"), f32
    if _untied(checkpoint):
        yield "output.weight", _embedding_f16(checkpoint, OUTPUT_HEAD), None
    heads = {"self_attn.q_proj": cfg.num_attention_heads, "self_attn.k_proj": cfg.num_key_value_heads}
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name in _norms(checkpoint):
            yield gguf_name(p + name + ".weight"), checkpoint.f32(p + name + ".weight"), f32
        for name in PROJECTIONS:
            full = p + name + ".weight"
            scale = effective_scale(checkpoint, full)
            t = ternary(checkpoint, full)
            if llama and name in heads:
                t = _rope_pairs_adjacent(t, heads[name])
            data, folded = quantize_ternary(t, scale, qtype, round_scale=llama)
            yield gguf_name(full), data, q
            if not folded:
                yield gguf_name(full + "_scale"), np.array([scale], np.float32), f32


def _plan(checkpoint: Checkpoint, qtype: str) -> list[tuple[str, tuple[int, ...], np.dtype, int, object]]:
    """(name, numpy shape, dtype, nbytes, raw type) of every tensor, without computing any: the header comes first."""
    gguf = _gguf()
    cfg = checkpoint.config
    q = qtype_of(qtype)
    block_size, type_size = gguf.GGML_QUANT_SIZES[q]
    f32 = gguf.GGMLQuantizationType.F32
    plan = [("token_embd.weight", (cfg.vocab_size, cfg.hidden_size), np.dtype(np.float16),
             cfg.vocab_size * cfg.hidden_size * 2, None),
            ("output_norm.weight", (cfg.hidden_size,), np.dtype(np.float32), cfg.hidden_size * 4, f32)]
    if _untied(checkpoint):
        plan.append(("output.weight", (cfg.vocab_size, cfg.hidden_size), np.dtype(np.float16),
                     cfg.vocab_size * cfg.hidden_size * 2, None))
    llama = arch_of(checkpoint) == LLAMA_ARCH
    shapes = {n: s for n, (s, _) in cfg.expected_tensors().items()}
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        for name in _norms(checkpoint):
            n = shapes[p + name + ".weight"][0]
            plan.append((gguf_name(p + name + ".weight"), (n,), np.dtype(np.float32), 4 * n, f32))
        for name in PROJECTIONS:
            full = p + name + ".weight"
            rows4, cols = shapes[full]
            if cols % block_size:
                raise GGUFExportError(f"{full}: a row of {cols} weights is not a multiple of {block_size}, the "
                                      f"{qtype.upper()} block: llama.cpp cannot hold this model in {qtype.upper()}")
            byte_shape = (4 * rows4, cols // block_size * type_size)
            plan.append((gguf_name(full), byte_shape, np.dtype(np.uint8), byte_shape[0] * byte_shape[1], q))
            scale = effective_scale(checkpoint, full)
            if not llama and not folds(scale):
                plan.append((gguf_name(full + "_scale"), (1,), np.dtype(np.float32), 4, f32))
    return plan


def check_shape(checkpoint: Checkpoint) -> None:
    """llama.cpp's bitnet loader wants q and o square; the TQ block must divide every row (of both graphs)."""
    cfg = checkpoint.config
    if arch_of(checkpoint) == ARCH and cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        raise GGUFExportError("llama.cpp's bitnet graph needs heads x head_dim == hidden_size")
    for n in (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim):
        if n % BLOCK:
            raise GGUFExportError(f"hidden_size, intermediate_size and heads x head_dim must be multiples of {BLOCK} "
                                  f"for TQ1_0/TQ2_0 (llama.cpp's block); this model has {cfg.hidden_size}, "
                                  f"{cfg.intermediate_size} and {cfg.num_attention_heads * cfg.head_dim}")


def write_atomically(out_path: str | os.PathLike, arch: str, describe, plan, tensors) -> Path:
    """A GGUF file at out_path, written to a temporary file beside it and renamed into place when complete (an
    interrupted write leaves nothing half-written under the name). `describe(writer)` adds the metadata; `plan` lists
    (name, shape, dtype, nbytes, raw_dtype) and `tensors` yields (name, array) in the same order."""
    gguf = _gguf()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        describe(writer)
        for name, shape, dtype, nbytes, raw in plan:
            writer.add_tensor_info(name, shape, dtype, nbytes, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (name, array), (planned, shape, dtype, nbytes, _) in zip(tensors, plan, strict=True):
            if name != planned or array.nbytes != nbytes or array.dtype != dtype:
                raise AssertionError(f"GGUF plan mismatch at {name} (planned {planned})")
            writer.write_tensor_data(np.ascontiguousarray(array))
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp made it 0600; readable as the process's other files are
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def export(checkpoint: Checkpoint | str | os.PathLike, out_path: str | os.PathLike, qtype: str = "tq2_0") -> Path:
    """Write the checkpoint as a GGUF file llama.cpp loads as `bitnet` (or `llama`); ternary projections in `qtype`
    ("tq2_0" or "tq1_0")."""
    gguf = _gguf()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
    check_shape(ckpt)
    cfg = ckpt.config

    def describe(writer) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(ckpt.folder.name)
        writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.upper()}"))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        if arch_of(ckpt) == LLAMA_ARCH:
            writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)  # as the converter writes it: factor 1, no scaling
        writer.add_rope_scaling_factor(1.0)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        _vocabulary(ckpt, writer)
        writer.add_string(FINGERPRINT_KEY, fingerprint(ckpt))
        writer.add_uint32(VERSION_KEY, EXPORT_VERSION)
        writer.add_string("trit.linear_class", cfg.linear_class)

    tensors = ((name, array) for name, array, _ in _tensors(ckpt, qtype))
    return write_atomically(out_path, arch_of(ckpt), describe, _plan(ckpt, qtype), tensors)


def gguf_path(folder: str | os.PathLike, qtype: str) -> Path:
    return Path(folder) / DERIVED_DIR / f"llamacpp-{qtype}.gguf"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".stamp.json")


def _stamp(checkpoint: Checkpoint) -> dict:
    return {"checkpoint": fingerprint(checkpoint), "export_version": EXPORT_VERSION}


def is_current(path: Path, checkpoint: Checkpoint) -> bool:
    """True when path is a GGUF this module wrote from this very checkpoint. The stamp beside it says so (reading
    the GGUF's own metadata would parse the whole vocabulary: seconds for 128k tokens)."""
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        return stamp == {**_stamp(checkpoint), "size": path.stat().st_size}
    except (OSError, ValueError):
        return False


def ensure(folder: str | os.PathLike, qtype: str, log=None) -> Path:
    """The cached GGUF of a model folder in trit/, written once (and again when the checkpoint changes)."""
    ckpt = Checkpoint(folder)
    path = gguf_path(folder, qtype)
    if not is_current(path, ckpt):
        if log:
            log(f"converting {ckpt.folder} to GGUF {qtype.upper()} for llama.cpp at {path} (once)…")
        _stamp_path(path).unlink(missing_ok=True)
        export(ckpt, path, qtype)
        try:
            _stamp_path(path).write_text(json.dumps({**_stamp(ckpt), "size": path.stat().st_size}), encoding="utf-8")
        except OSError:
            pass  # converted again next time
    return path
