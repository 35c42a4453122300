"""Ternary weights <-> the packed uint8 layout of Hugging Face BitNet checkpoints.

Four ternary rows per byte, row-blocked, low bits first, stored as w + 1 (00 -> -1, 01 -> 0, 10 -> +1):
byte P[r, c] holds W[r + j*out/4, c] + 1 in bits 2j+1:2j. Identical to transformers' `pack_weights` /
`unpack_weights` (integrations/bitnet.py) for row counts divisible by 4, the only ones a checkpoint has.
"""

from __future__ import annotations

import numpy as np


def pack_ternary(w: np.ndarray) -> np.ndarray:
    """int [out, in] with values in {-1, 0, 1} -> uint8 [out/4, in]."""
    out = w.shape[0]
    if out % 4:
        raise ValueError(f"row count {out} is not a multiple of 4")
    codes = (w + 1).astype(np.uint8)
    q = out // 4
    return codes[:q] | (codes[q:2 * q] << 2) | (codes[2 * q:3 * q] << 4) | (codes[3 * q:] << 6)


def unpack_codes(p: np.ndarray) -> np.ndarray:
    """uint8 [out/4, in] -> the stored codes w + 1, uint8 [out, in] (3 marks a corrupt byte)."""
    return np.concatenate([(p >> (2 * j)) & 3 for j in range(4)], axis=0)


def unpack_ternary(p: np.ndarray) -> np.ndarray:
    """uint8 [out/4, in] -> int8 [out, in] in {-1, 0, 1}."""
    return unpack_codes(p).astype(np.int8) - 1
