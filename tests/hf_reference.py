"""Test helpers: transformers' BitNetForCausalLM as the reference, and the statistics the tests compare with.

Imported by tests as a plain module (`from hf_reference import ...`; pytest puts tests/ on sys.path).

Two things about transformers 5.23 that these helpers work around:
- `integrations/bitnet.py` wraps activation quantisation and weight unpacking in `torch.compile`. Compiling costs
  seconds per model and per shape, so every call here runs with TorchDynamo disabled
  (`torch._dynamo.config.patch(disable=True)`, scoped, not process-wide): the functions then run eagerly, which is
  their plain PyTorch meaning.
- Loading an "autobitlinear" checkpoint with `dtype=torch.float32` keeps the non-ternary tensors (embedding, norms)
  in the checkpoint's bf16 (its deserialiser opts every tensor out of the dtype cast), and the first forward then
  fails on a bf16 x float32 matmul. `load_hf_model` widens every floating tensor to float32 afterwards; widening
  bf16 is exact, so this is the model a correct float32 load would give.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def quiet_eager():
    """TorchDynamo off, no progress bars, no warnings, for the duration of the block."""
    import torch._dynamo
    import transformers

    tlog = transformers.utils.logging
    old_verbosity = tlog.get_verbosity()
    bars_were_enabled = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings(), torch._dynamo.config.patch(disable=True):
            warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
            yield
    finally:
        tlog.set_verbosity(old_verbosity)
        if bars_were_enabled:
            tlog.enable_progress_bar()


def load_hf_model(folder: str | Path):
    """transformers' BitNetForCausalLM for a packed checkpoint folder, every floating tensor in float32, eval mode."""
    import torch
    from transformers import BitNetForCausalLM

    with quiet_eager():
        model = BitNetForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and t.dtype != torch.float32:
            t.data = t.data.float()  # exact for bf16/f16; shared (tied) tensors are widened once, in place
    model.eval()
    return model


def hf_logits(model_or_folder, token_ids) -> np.ndarray:
    """float32 logits [n, vocab] of transformers' model for token_ids [n] in a fresh context."""
    import torch

    model = model_or_folder if not isinstance(model_or_folder, (str, Path)) else load_hf_model(model_or_folder)
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64).reshape(1, -1))
    with quiet_eager(), torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float().numpy()


def mean_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over positions (rows) of the Pearson correlation of two logit matrices [n, vocab]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    r = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return float(r.mean())


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of positions whose argmax token agrees."""
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def logit_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """The end-to-end statistics, plus the max absolute difference for the record."""
    return {"corr": mean_correlation(a, b), "top1": top1_agreement(a, b),
            "max_abs": float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))}
