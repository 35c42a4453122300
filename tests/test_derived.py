"""Weights derived once from a checkpoint: the 1.6-bit T5 copy (lossless) and the 8/4-bit heads (lossy, measured)."""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest

from trit import engine
from trit.engine.formats import derived
from trit.engine.runtime import native
from trit.engine.tools import fidelity


@pytest.fixture
def model_copy(make_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(make_model("tiny", seed=3, num_hidden_layers=2, vocab_size=2048), folder)
    return folder


def ids(n=48, vocab=2048, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n)


def test_t5_gives_exactly_the_logits_of_the_checkpoint_packing(model_copy):
    """Same integers, same order of float operations: T5 changes bytes, not results."""
    tq2 = engine.load(model_copy, ternary="tq2").logits(ids())
    t5 = engine.load(model_copy, ternary="t5").logits(ids())
    assert np.array_equal(tq2, t5)


def test_auto_picks_what_the_kernel_runs_fastest(model_copy):
    model = engine.load(model_copy)
    assert model.ternary == native.preferred_ternary_format()
    assert model.ternary == ("t5" if native.active_kernel() == "avx512vnni" else "tq2")  # scalar, avx2, neon: tq2


def test_derived_files_are_made_once_and_reused(model_copy):
    engine.load(model_copy, ternary="t5", head="q8")
    files = {p.name: p.stat().st_mtime_ns for p in (model_copy / "trit").iterdir()}
    assert set(files) == {"ternary-t5.safetensors", "head-q8.safetensors"}
    engine.load(model_copy, ternary="t5", head="q8")
    assert {p.name: p.stat().st_mtime_ns for p in (model_copy / "trit").iterdir()} == files


def test_a_damaged_or_stale_derived_file_is_derived_again(model_copy):
    expected = engine.load(model_copy, ternary="t5", head="q4").logits(ids())
    path = model_copy / "trit" / "head-q4.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert np.array_equal(engine.load(model_copy, ternary="t5", head="q4").logits(ids()), expected)
    # a different checkpoint in the same folder: the old T5 file must not be used
    from trit.engine.tools import synthetic

    other = synthetic.write_model(model_copy.parent / "other", "tiny", seed=4, num_hidden_layers=2, vocab_size=2048)
    shutil.copy(other / "model.safetensors", model_copy / "model.safetensors")
    fresh = engine.load(other, ternary="tq2").logits(ids())
    assert np.array_equal(engine.load(model_copy, ternary="t5").logits(ids()), fresh)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_model_folder_still_loads(model_copy):
    model_copy.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        model = engine.load(model_copy, ternary="t5", head="q8")
        assert model.logits(ids()).shape == (48, 2048)
    finally:
        model_copy.chmod(stat.S_IRWXU)


def test_derived_tensors_stay_in_memory_when_the_folder_cannot_be_written(model_copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(derived, "write_safetensors", refuse)
    model = engine.load(model_copy, ternary="t5", head="q4")
    assert not (model_copy / "trit").exists() or not any((model_copy / "trit").iterdir())
    assert np.array_equal(model.logits(ids()), engine.load(model_copy, ternary="t5", head="q4").logits(ids()))


@pytest.mark.parametrize("head,max_kl,min_top1", [("q8", 5e-4, 0.98), ("q4", 2e-2, 0.95)])
def test_compact_heads_stay_close_to_the_exact_one(make_model, head, max_kl, min_top1):
    """Bounds loose enough for random models; the measured values go in the closing note and `trit bench`."""
    folder = make_model("small", seed=0)
    result = fidelity.fidelity(folder, head, ids(128, vocab=8192, seed=1))
    print(result)
    assert result["kl_nats"] <= max_kl and result["top1_agreement"] >= min_top1


def test_quantised_heads_round_trip_within_their_step():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 256)).astype(np.float32)
    q, scale = derived.quantize_q8(rows)
    assert np.all(np.abs(derived.dequantize_q8(q, scale) - rows) <= scale[:, None] / 2 + 1e-7)
    nib, d = derived.quantize_q4(rows)
    step = np.repeat(np.abs(d.astype(np.float32)), 32, axis=1)
    assert np.all(np.abs(derived.dequantize_q4(nib, d) - rows) <= step * 1.0001)


@pytest.mark.parametrize("head", ["q8", "q4"])
def test_a_compact_head_gives_the_exact_logits_of_its_best_candidates(model_copy, head):
    """The 32 highest logits of the compact head are recomputed from the bf16 rows, whichever thread computed them."""
    exact = engine.load(model_copy, head="bf16", threads=2).logits(ids())
    for threads in (1, 2):
        compact = engine.load(model_copy, head=head, threads=threads).logits(ids())
        same = compact == exact
        assert np.all(same.sum(axis=1) >= 32)
        # the exact argmax is among the candidates unless the compact head misjudged it badly
        assert same[np.arange(len(exact)), exact.argmax(axis=1)].mean() >= 0.95
