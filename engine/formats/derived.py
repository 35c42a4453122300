"""Weights derived once from a checkpoint, so that decoding reads fewer bytes per token.

Decoding reads every weight once per token: for the 2B4T, 521 MB of 2-bit ternary projections and 657 MB of bf16
output head (the tied embedding).
- Ternary, T5: the same values at 1.6 bits (5 per byte, native/include/trit.h), 417 MB. Lossless.
- Head, q8: int8 with a float scale per row, 328 MB; q4: an fp16 scale per 32 weights, 4.5 bits a weight, 185 MB.
  Both are lossy: tools/fidelity.py measures what they cost (KL divergence and top-1 agreement against the exact
  head), and "bf16" keeps the exact one.

Derived files live beside the model in trit/, stamped with a fingerprint of the checkpoint they came from; a stale
or damaged file is derived again.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trit.engine.errors import CheckpointError
from trit.engine.formats.safetensors_file import SafetensorsFile, widen_to_f32, write_safetensors
from trit.engine.runtime import native

if TYPE_CHECKING:  # checkpoint.py derives 1bitLLM's ternary weights from here when it opens one: no import back
    from trit.engine.formats.checkpoint import Checkpoint

HEADS = tuple(native.HEAD_TYPES)  # ("bf16", "q8", "q4"): the names, as the native library numbers them
TERNARY_FORMATS = tuple(native.TERNARY_FORMATS)  # ("tq2", "t5")
Q4_BLOCK = 32  # columns per fp16 scale
Q4_GROUP = 64  # columns per 32 bytes of nibbles
DERIVED_DIR = "trit"
ROWS_PER_CHUNK = 8192  # bounds the float32 temporary while deriving (8192 x 2560 x 4 B = 84 MB)


def fingerprint(checkpoint: Checkpoint) -> str:
    """Size of model.safetensors (of every shard), plus a CRC of its header and of 64 pages spread across it: cheap
    to compute, and it changes when the checkpoint does."""
    sizes, crc = [], 0
    for path in checkpoint.weight_files:
        size = path.stat().st_size
        sizes.append(str(size))
        with open(path, "rb") as f:
            for offset in np.linspace(0, max(size - 4096, 0), 64).astype(np.int64):
                f.seek(int(offset))
                crc = zlib.crc32(f.read(4096), crc)
    return f"{'+'.join(sizes)}:{crc:08x}"


def quantize_q8(rows_f32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: row ~= scale * q, q in -127..127."""
    amax = np.max(np.abs(rows_f32), axis=1)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(rows_f32 / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_q4(rows_f32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of 32 columns: d = (the value of largest magnitude) / -8 in fp16, q = round(x / d) + 8 in 0..15.
    Nibbles: each 64 columns in 32 bytes, byte i holding column i (low nibble) and column i + 32 (high nibble), the
    order in which a SIMD kernel unpacks them (native/include/trit.h)."""
    n, hidden = rows_f32.shape
    blocks = rows_f32.reshape(n, hidden // Q4_BLOCK, Q4_BLOCK)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=2)[..., None], axis=2)[..., 0]
    d = (extreme / np.float32(-8)).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1, d32, out=np.zeros_like(d32), where=d32 != 0)
    q = np.clip(np.rint(blocks * inv[..., None]) + 8, 0, 15).astype(np.uint8).reshape(n, hidden // Q4_GROUP, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, hidden // 2), d


def dequantize_q8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None]


def dequantize_q4(nibbles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    n = nibbles.shape[0]
    g = nibbles.reshape(n, -1, 32)
    q = np.stack([g & 15, g >> 4], axis=2).reshape(n, -1).astype(np.float32) - 8
    return q * np.repeat(scales.astype(np.float32), Q4_BLOCK, axis=1)


def derive_head(embed_bf16: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """The head tensors of `kind` for an embedding given as bf16 bit patterns [vocab, hidden]."""
    vocab, hidden = embed_bf16.shape
    if kind == "q8":
        q = np.empty((vocab, hidden), np.int8)
        scales = np.empty(vocab, np.float32)
        for r in range(0, vocab, ROWS_PER_CHUNK):
            q[r:r + ROWS_PER_CHUNK], scales[r:r + ROWS_PER_CHUNK] = quantize_q8(
                widen_to_f32(embed_bf16[r:r + ROWS_PER_CHUNK], "BF16"))
        return {"head.q8": q, "head.scales": scales}
    if kind == "q4":
        if hidden % Q4_GROUP:
            raise CheckpointError(f"a 4-bit head needs hidden_size divisible by {Q4_GROUP}, not {hidden}")
        q = np.empty((vocab, hidden // 2), np.uint8)
        scales = np.empty((vocab, hidden // Q4_BLOCK), np.float16)
        for r in range(0, vocab, ROWS_PER_CHUNK):
            q[r:r + ROWS_PER_CHUNK], scales[r:r + ROWS_PER_CHUNK] = quantize_q4(
                widen_to_f32(embed_bf16[r:r + ROWS_PER_CHUNK], "BF16"))
        return {"head.q4": q, "head.scales": scales}
    raise ValueError(f"head must be one of {', '.join(HEADS)}, not {kind!r}")


def derive_t5(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """Every ternary projection converted to T5 by the native library (it defines the format)."""
    out = {}
    for name in checkpoint.packed_names():
        checkpoint.check_ternary_codes(name)
        tq2 = checkpoint.raw(name)
        rows, cols = tq2.shape[0] * 4, tq2.shape[1]
        t5 = np.empty((native.lib().trit_t5_size(rows, cols) // cols, cols), np.uint8)
        native.check(native.lib().trit_convert_tq2_to_t5(native.ptr(t5), native.ptr(tq2), rows, cols))
        out[name] = t5
    return out


DTYPE_NAMES = {np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32",
               np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16"}  # bf16 is kept as its bit patterns


def _head_shapes(kind: str, vocab: int, hidden: int) -> dict[str, tuple[int, ...]]:
    if kind == "q8":
        return {"head.q8": (vocab, hidden), "head.scales": (vocab,)}
    return {"head.q4": (vocab, hidden // 2), "head.scales": (vocab, hidden // Q4_BLOCK)}


def _t5_shapes(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name in checkpoint.packed_names():
        rows, cols = checkpoint.file.tensors[name].shape[0] * 4, checkpoint.file.tensors[name].shape[1]
        shapes[name] = ((rows + 4) // 5, cols)
    return shapes


def _load_or_derive(checkpoint: Checkpoint, filename: str, shapes: dict, derive) -> dict[str, np.ndarray]:
    """Memory-map trit/<filename> when it is current, else derive it now and save it (atomically) for next time.
    A folder that cannot be written keeps the derived tensors in memory only."""
    stamp = fingerprint(checkpoint)
    path = Path(checkpoint.folder) / DERIVED_DIR / filename
    if path.exists():
        try:
            f = SafetensorsFile(path)
            if f.metadata.get("checkpoint") == stamp and {n: t.shape for n, t in f.tensors.items()} == shapes:
                return {name: f.array(name) for name in shapes}
        except CheckpointError:
            pass  # damaged: derive again below
    tensors = derive()
    try:
        path.parent.mkdir(exist_ok=True)
        write_safetensors(path, [(n, DTYPE_NAMES[a.dtype], a) for n, a in tensors.items()],
                          metadata={"format": "trit-derived", "checkpoint": stamp})
    except OSError:
        return tensors
    f = SafetensorsFile(path)
    return {name: f.array(name) for name in tensors}


def absmean_ternary(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """Float master weights (1bitLLM) quantised as their BitLinear does at every forward: s = 1 / mean |W| (at least
    1e-5 in the mean), T = clip(round(W * s), -1, 1), rounding half to even as torch does; the projection is then
    T / s. Written packed, with s as weight_scale (divided by: "bitlinear"), into trit/ once."""
    from trit.engine.formats.packing import pack_ternary

    names = checkpoint.packed_names()

    def derive() -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            w = checkpoint.f32(name)
            scale = np.float32(1) / np.maximum(np.mean(np.abs(w), dtype=np.float32), np.float32(1e-5))
            out[name] = pack_ternary(np.clip(np.rint(w * scale), -1, 1).astype(np.int8))
            out[name + "_scale"] = np.array([scale], np.float32)
        return out

    shapes = {}
    for name in names:
        rows, cols = checkpoint.file.tensors[name].shape
        shapes[name], shapes[name + "_scale"] = (rows // 4, cols), (1,)
    return _load_or_derive(checkpoint, "ternary-absmean.safetensors", shapes, derive)


def embedding_bf16(checkpoint: Checkpoint) -> np.ndarray:
    """The input embedding as bf16 bit patterns, the form native code reads: as stored, or (f16/f32 masters) rounded
    to bf16 once into trit/."""
    return _bf16(checkpoint, "model.embed_tokens.weight", "embedding-bf16.safetensors")


def _bf16(checkpoint: Checkpoint, name: str, filename: str) -> np.ndarray:
    if checkpoint.file.tensors[name].dtype == "BF16":
        return checkpoint.raw(name)

    def derive() -> dict[str, np.ndarray]:
        stored, dtype = checkpoint.raw(name), checkpoint.file.tensors[name].dtype
        out = np.empty(stored.shape, np.uint16)
        for r in range(0, stored.shape[0], ROWS_PER_CHUNK):
            u = widen_to_f32(stored[r:r + ROWS_PER_CHUNK], dtype).view(np.uint32)
            out[r:r + ROWS_PER_CHUNK] = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16  # nearest, ties to even
        return {"bf16": out}

    return _load_or_derive(checkpoint, filename, {"bf16": checkpoint.file.tensors[name].shape}, derive)["bf16"]


def output_bf16(checkpoint: Checkpoint) -> np.ndarray:
    """The output head's exact rows as bf16 bit patterns [vocab, hidden]: the tied embedding, or lm_head.weight as
    stored when bf16. An f16 or f32 lm_head is rounded to bf16 once (derived, like the compact heads): native code
    reads one 16-bit head format, and bf16 keeps every logit within 2^-9 of its size."""
    if checkpoint.config.tie_word_embeddings:
        return embedding_bf16(checkpoint)
    return _bf16(checkpoint, checkpoint.config.output_head, "output-bf16.safetensors")


def head(checkpoint: Checkpoint, kind: str) -> dict[str, np.ndarray]:
    """The derived head tensors ("head.q8"/"head.q4" and "head.scales") of a checkpoint: from the tied embedding, or
    from the untied lm_head."""
    rows = output_bf16(checkpoint)
    name = "head" if checkpoint.config.tie_word_embeddings else "output-head"  # a tied file never passes as untied
    return _load_or_derive(checkpoint, f"{name}-{kind}.safetensors", _head_shapes(kind, *rows.shape),
                           lambda: derive_head(rows, kind))


def ternary_t5(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """Every ternary projection in T5, by its checkpoint name."""
    return _load_or_derive(checkpoint, "ternary-t5.safetensors", _t5_shapes(checkpoint),
                           lambda: derive_t5(checkpoint))


def dequantized_head(embed_bf16: np.ndarray, kind: str, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The head a derived form stands for, dequantised to float32 (for tests on small vocabularies)."""
    if kind == "bf16":
        return widen_to_f32(embed_bf16, "BF16")
    if kind == "q8":
        return dequantize_q8(tensors["head.q8"], tensors["head.scales"])
    return dequantize_q4(tensors["head.q4"], tensors["head.scales"])
