"""The whole native model against transformers' BitNetForCausalLM on checkpoints engine.tools.synthetic writes.

Statistics, not tolerances: the int8 quantiser flips on float noise and attention spreads a flip to every later
position, so two correct implementations drift apart (shared/BITNET.md, "rounding flips"). Mean per-position
correlation and top-1 agreement cannot be moved by flips but are by bugs (a wrong weight-scale direction gives
0.48-0.82 correlation). transformers loading our files is itself the proof that the format is the real one.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hf_reference import hf_logits, load_hf_model, mean_correlation, top1_agreement

from trit import engine

N_POSITIONS = 80

# (name, config overrides): GQA ratios 1, 3, 4 and head dims 64, 128
SHAPES = {
    "gqa1-hd64": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512),
    "gqa3-hd128": dict(hidden_size=384, num_attention_heads=3, num_key_value_heads=1, intermediate_size=768),
    "gqa4-hd64": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024),
    "gqa4-hd128": dict(hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1536),
}


def shape_model(make_model, shape: str, linear_class: str, seed: int = 0):
    return make_model("tiny", seed=seed, linear_class=linear_class, num_hidden_layers=3, vocab_size=1024,
                      **SHAPES[shape])


def token_ids(vocab: int, n: int = N_POSITIONS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n)


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_transformers(make_model, shape, linear_class):
    folder = shape_model(make_model, shape, linear_class)
    ids = token_ids(1024)
    # the exact head: this proves the forward pass; the compact heads are measured in test_derived.py. The fp16 cache
    # the thresholds were set with: the q8 cache's cost is measured in test_kv_types.py and `trit bench --kv-quality`
    ours = engine.load(folder, threads=2, head="bf16", kv="f16").logits(ids)
    theirs = hf_logits(load_hf_model(folder), ids)
    assert ours.shape == theirs.shape == (N_POSITIONS, 1024) and ours.dtype == np.float32
    corr, top1 = mean_correlation(ours, theirs), top1_agreement(ours, theirs)
    print(f"{shape} {linear_class}: correlation {corr:.5f}, top-1 {top1:.3f}")
    assert corr >= 0.99 and top1 >= 0.9


def test_wrong_scale_direction_is_caught(make_model, tmp_path):
    """The same weights read with the other linear_class must fail the statistics: the test can fail."""
    folder = shape_model(make_model, "gqa4-hd64", "autobitlinear")
    wrong = tmp_path / "wrong"
    shutil.copytree(folder, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["quantization_config"]["linear_class"] = "bitlinear"
    (wrong / "config.json").write_text(json.dumps(config))
    ids = token_ids(1024)
    ours = engine.load(wrong, threads=2, head="bf16").logits(ids)
    theirs = hf_logits(load_hf_model(folder), ids)
    assert mean_correlation(ours, theirs) < 0.99 or top1_agreement(ours, theirs) < 0.9


@pytest.mark.parametrize("shape", ["gqa3-hd128", "gqa4-hd64"])
def test_decoding_through_the_kv_cache_matches_one_batch(make_model, shape):
    folder = shape_model(make_model, shape, "autobitlinear")
    model = engine.load(folder, threads=2)
    ids = token_ids(1024, seed=1)
    batched = model.logits(ids)
    with model.context() as ctx:
        stepped = np.stack([ctx.eval([t]) for t in ids])
        assert ctx.n_past == len(ids)
    # mixed chunk sizes, and batches smaller than a request (internal chunking), through one cache
    with model.context(max_batch=16) as ctx:
        chunked = np.concatenate([ctx.eval(ids[:5], logits="all"), ctx.eval(ids[5:45], logits="all"),
                                  ctx.eval(ids[45:], logits="all")])
    for other in (stepped, chunked):
        corr, top1 = mean_correlation(other, batched), top1_agreement(other, batched)
        assert corr >= 0.99 and top1 >= 0.9
    # the same per-token arithmetic in every path: in practice identical
    np.testing.assert_allclose(stepped, batched, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(chunked, batched, rtol=1e-4, atol=1e-3)


def test_one_and_two_threads_give_identical_logits(make_model):
    folder = shape_model(make_model, "gqa4-hd128", "autobitlinear")
    ids = token_ids(1024, n=40)
    one = engine.load(folder, threads=1).logits(ids)
    model = engine.load(folder, threads=2)
    assert model.threads == 2
    two = model.logits(ids)
    assert np.array_equal(one, two)
    model.threads = 1
    assert model.threads == 1 and np.array_equal(model.logits(ids), one)


def test_wide_projections_in_pieces_and_token_chunks_give_the_same_logits(make_model):
    """At 2B4T's widths a projection runs in several token chunks and threads claim many pieces of rows as they go
    (small models fit in one piece): neither the threads nor the path may change a logit."""
    folder = make_model("tiny", seed=4, num_hidden_layers=1, vocab_size=1024, hidden_size=2560,
                        num_attention_heads=20, num_key_value_heads=5, intermediate_size=6912)
    ids = token_ids(1024, n=300, seed=3)  # 204 tokens to a chunk at width 2560
    one = engine.load(folder, threads=1).logits(ids)
    model = engine.load(folder, threads=2)
    assert np.array_equal(model.logits(ids), one)
    with model.context() as ctx:
        stepped = np.stack([ctx.eval([t]) for t in ids])
    np.testing.assert_allclose(stepped, one, rtol=1e-4, atol=1e-3)
    # decoding on one thread and on two (which split the 5 kv heads) gives the same logits
    model.threads = 1
    with model.context() as ctx:
        assert np.array_equal(np.stack([ctx.eval([t]) for t in ids[:40]]), stepped[:40])


def test_truncate_keeps_the_prefix(make_model):
    model = engine.load(shape_model(make_model, "gqa4-hd64", "autobitlinear"), threads=2)
    ids = token_ids(1024, n=30, seed=2)
    with model.context() as ctx:
        ctx.eval(ids[:20], logits=None)
        ctx.truncate(10)
        assert ctx.n_past == 10 and ctx.tokens == ids[:10].tolist()
        resumed = ctx.eval(ids[10:], logits="all")
    np.testing.assert_allclose(resumed, model.logits(ids)[10:], rtol=1e-4, atol=1e-3)


def test_logits_last_equals_the_last_row_of_all(tiny_model):
    model = engine.load(tiny_model)
    ids = token_ids(model.config.vocab_size, n=12)
    with model.context() as ctx:
        last = ctx.eval(ids)
    assert np.array_equal(last, model.logits(ids)[-1])


def test_small_models_decode_on_one_thread_unless_asked(make_model, monkeypatch):
    from trit.engine.runtime import model as model_module

    folder = make_model("tiny")
    assert engine.load(folder).threads == 1 and engine.load(folder, threads=2).threads == 2
    monkeypatch.setattr(model_module, "SMALL_MODEL_WEIGHTS", 0)  # as if it were large: every core
    assert engine.load(folder).threads == min(os.cpu_count(), engine.load(folder, threads=64).threads)
