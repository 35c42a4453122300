"""What a lossy derived head (q8, q4: trit.engine.formats.derived) costs: KL divergence and top-1 agreement of its
logits against the exact bf16 head's."""

from __future__ import annotations

import os

import numpy as np

from trit.engine.locate import load


def kl_and_top1(exact: np.ndarray, approx: np.ndarray) -> tuple[float, float]:
    """Mean KL(softmax(exact) || softmax(approx)) over rows, in nats, and the share of rows whose argmax agrees."""
    def log_softmax(z):
        z = z.astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(exact), log_softmax(approx)
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    return kl, float(np.mean(exact.argmax(-1) == approx.argmax(-1)))


def fidelity(folder: str | os.PathLike, kind: str, token_ids, threads: int | None = None) -> dict:
    """KL divergence and top-1 agreement of a derived head against the exact one, over the positions of token_ids."""
    exact = load(folder, threads=threads, head="bf16").logits(token_ids)
    approx = load(folder, threads=threads, head=kind).logits(token_ids)
    kl, top1 = kl_and_top1(exact, approx)
    return {"head": kind, "positions": len(exact), "kl_nats": kl, "top1_agreement": top1}
