"""What a lossy choice costs: a derived head (q8, q4: trit.engine.formats.derived) against the exact bf16 head, and a
KV cache type (f16, q8) against the exact f32 cache; KL divergence and top-1 agreement of the logits, and for the
caches held-out perplexity."""

from __future__ import annotations

import math
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


def kv_quality(folder: str | os.PathLike, token_ids, window: int = 1024, threads: int | None = None,
               kinds=("f16", "q8")) -> list[dict]:
    """Each KV cache type against the f32 cache over the text of token_ids, cut into windows of `window` tokens (each
    in a fresh context, so that positions up to window - 1 are measured): mean KL of the next-token distributions,
    top-1 agreement and the perplexity of each, f32's first. The exact bf16 head, so that only the cache differs."""
    ids = list(token_ids)
    windows = [ids[i:i + window] for i in range(0, len(ids) - 1, window) if len(ids[i:i + window]) > 1]

    def logits_of(kv):
        with load(folder, threads=threads, head="bf16", kv=kv) as model:
            return [model.logits(w) for w in windows]

    def perplexity(logits) -> float:
        nll = count = 0
        for w, z in zip(windows, logits):
            z = z[:-1].astype(np.float64)
            z = z - z.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            nll -= log_p[np.arange(len(w) - 1), w[1:]].sum()
            count += len(w) - 1
        return math.exp(nll / count)

    exact = logits_of("f32")
    rows = [{"kv": "f32", "positions": sum(len(w) for w in windows), "kl_nats": 0.0, "top1_agreement": 1.0,
             "perplexity": perplexity(exact)}]
    for kv in kinds:
        approx = logits_of(kv)
        kl, top1 = kl_and_top1(np.concatenate(exact), np.concatenate(approx))
        rows.append({"kv": kv, "positions": rows[0]["positions"], "kl_nats": kl, "top1_agreement": top1,
                     "perplexity": perplexity(approx)})
    return rows
