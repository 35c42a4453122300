"""Prefill through the batch kernels' row blocks, as the engine runs them (issue 20).

The AVX2 batch path keeps a block of rows' int32 sums for up to 256 tokens at a time and takes the next 256 after; a
narrow model's projections take a whole batch in one call (the token chunk is 512 KB of activations: 4096 tokens at
width 128), so a batch of 300 tokens crosses into a second block in every matmul. Decoding one token at a time takes
the per-row path instead, so the two must agree. Under every kernel (tests/test_every_kernel.py).
"""

from __future__ import annotations

import numpy as np

from trit import engine


def test_a_prompt_past_one_block_of_tokens_gives_the_logits_of_decoding(make_model):
    folder = make_model("tiny", seed=5, num_hidden_layers=2, vocab_size=1024)
    model = engine.load(folder, threads=2)
    ids = np.random.default_rng(5).integers(0, 1024, 300)
    with model.context(len(ids), max_batch=len(ids)) as ctx:  # one batch (the default is 128 tokens)
        batched = ctx.eval(ids, logits="all")
    with model.context() as ctx:
        stepped = np.stack([ctx.eval([t]) for t in ids])
    # the same int32 sums on both paths; attention's floats may be summed in another order by a batch kernel
    np.testing.assert_allclose(stepped, batched, rtol=1e-4, atol=1e-3)
