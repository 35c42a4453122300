"""engine/reference.py, the numpy specification, against transformers' BitNetForCausalLM.

Exact where the maths is exact (activation quantisation, the int32 ternary product); to float tolerance for each
float operation given the same input; end to end by statistics that a rounding flip cannot move but a bug does
(shared BITNET.md, "Comparing against the reference"). A negative control proves the end-to-end test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_reference import hf_logits, load_hf_model, logit_stats, quiet_eager  # noqa: E402

from trit.engine.formats.checkpoint import Checkpoint  # noqa: E402
from trit.engine.formats.packing import pack_ternary  # noqa: E402
from trit.engine.tools import reference as R  # noqa: E402

# importing transformers' BitNet code makes torch define jit script methods, which warn on every import path
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

CORR_MIN = 0.99
TOP1_MIN = 0.9
N_TOKENS = 80
OTHER_CLASS = {"autobitlinear": "bitlinear", "bitlinear": "autobitlinear"}

# name -> config.json overrides. GQA ratios 1, 3, 4; head dims 64 and 128. Small enough to run in a second each.
SHAPES = {
    "mha1-hd64": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
                      intermediate_size=512, num_hidden_layers=2),
    "gqa3-hd128": dict(hidden_size=384, num_attention_heads=3, num_key_value_heads=1, head_dim=128,
                       intermediate_size=512, num_hidden_layers=3),
    "gqa3-hd64": dict(hidden_size=384, num_attention_heads=6, num_key_value_heads=2, head_dim=64,
                      intermediate_size=384, num_hidden_layers=2),
    "gqa4-hd64": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                      intermediate_size=512, num_hidden_layers=2),
    "gqa4-hd128": dict(hidden_size=512, num_attention_heads=4, num_key_value_heads=1, head_dim=128,
                       intermediate_size=384, num_hidden_layers=3),
}
CASES = [(shape, lc) for shape in SHAPES for lc in ("autobitlinear", "bitlinear")]


def tensor(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """(shape, linear_class) -> folder of a random packed checkpoint written by engine.tools.synthetic, made once."""
    from trit.engine.tools.synthetic import write_model

    made = {}

    def get(shape: str, linear_class: str):
        key = (shape, linear_class)
        if key not in made:
            seed = list(SHAPES).index(shape) * 2 + (linear_class == "bitlinear")
            folder = tmp_path_factory.mktemp(f"{shape}-{linear_class}")
            made[key] = write_model(folder, "tiny", seed=seed, linear_class=linear_class,
                                    vocab_size=1024, **SHAPES[shape])
        return made[key]

    return get


# --- the integer core: exact ----------------------------------------------------------------------------------------

def activation_rows(rng, n=48, width=320):
    """Activations with everything a quantiser can get wrong: exact .5 ties, the clamp, zero rows, tiny rows."""
    x = rng.standard_normal((n, width)).astype(np.float32) * rng.uniform(0.01, 30, (n, 1)).astype(np.float32)
    # absmax 127 makes s exactly 1, so k + 0.5 lands exactly on a tie: half-even rounding must be used
    x[0] = rng.integers(-120, 120, width) + 0.5
    x[0, 0] = 127.0
    x[1] = -x[0]
    x[2] = 0.0                                     # absmax clamps to 1e-5
    x[3] = rng.standard_normal(width) * 1e-9       # below the clamp: |x * s| < 0.5
    x[4, :] = 1.0
    x[4, 0] = -1.0                                 # -1 * 127 -> -127, never -128
    x[5] = rng.standard_normal(width).astype(np.float32) * np.float32(1e4)
    return x


def test_quantize_is_bit_identical_to_transformers():
    from transformers.integrations.bitnet import BitLinear

    x = activation_rows(np.random.default_rng(1))
    xq, s = R.quantize(x)
    with quiet_eager():
        tq, ts = BitLinear.activation_quant(None, tensor(x))
    assert xq.dtype == np.int8 and s.dtype == np.float32 and s.shape == (x.shape[0], 1)
    np.testing.assert_array_equal(xq, tq.numpy())
    np.testing.assert_array_equal(s.view(np.uint32), ts.numpy().view(np.uint32))
    assert np.all(xq[0] % 2 == np.rint(x[0]) % 2)  # ties went to even
    assert not xq[2].any() and not xq[3].any()


def test_quantize_matches_autobitlinear_fake_quant():
    """AutoBitLinear quantises as round(x*s)/s in float; the integers behind it are the same."""
    from transformers.integrations.bitnet import ActQuant

    x = activation_rows(np.random.default_rng(2))
    xq, s = R.quantize(x)
    with quiet_eager(), torch.no_grad():
        fake = ActQuant.forward(None, tensor(x)).numpy()
    np.testing.assert_array_equal((xq.astype(np.float32) / s), fake)


@pytest.mark.parametrize("out_features,in_features", [(64, 320), (256, 6912), (1024, 128)])
def test_ternary_matmul_is_exact(out_features, in_features):
    from transformers.integrations.bitnet import unpack_weights

    rng = np.random.default_rng(out_features + in_features)
    w = rng.integers(-1, 2, (out_features, in_features)).astype(np.int8)
    packed = pack_ternary(w)
    xq = rng.integers(-128, 128, (17, in_features)).astype(np.int8)
    xq[0] = -128                                   # the extreme sums: |xq . T| = 128 * in
    w_extreme = w.copy()
    w_extreme[0] = -1
    packed_extreme = pack_ternary(w_extreme)

    for p, wt in ((packed, w), (packed_extreme, w_extreme)):
        got = R.ternary_matmul_i32(p, xq)
        with quiet_eager():
            t = unpack_weights(tensor(p), dtype=torch.int64)  # transformers' own unpacking of the same bytes
        want = (tensor(xq).to(torch.int64) @ t.T).numpy()
        assert got.dtype == np.int32 and got.shape == (17, out_features)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, xq.astype(np.int64) @ wt.astype(np.int64).T)
    assert R.ternary_matmul_i32(packed_extreme, xq)[0, 0] == 128 * in_features


# --- float operations, same input: to float tolerance ----------------------------------------------------------------

@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_bitlinear_matches_transformers_module(linear_class):
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear, unpack_weights

    rng = np.random.default_rng(3)
    out_f, in_f = 96, 256
    w = rng.integers(-1, 2, (out_f, in_f)).astype(np.int8)
    packed = pack_ternary(w)
    scale = np.float32(1.7)
    x = activation_rows(rng, n=24, width=in_f)
    got = R.bitlinear(x, packed, scale, linear_class)

    with quiet_eager(), torch.no_grad():
        if linear_class == "bitlinear":
            m = BitLinear(in_f, out_f, bias=False, dtype=torch.float32)
            m.weight.copy_(tensor(packed))
        else:
            m = AutoBitLinear(in_f, out_f, bias=False, dtype=torch.float32)
            m.weight.copy_(unpack_weights(tensor(packed), dtype=torch.float32))
        m.weight_scale.fill_(float(scale))
        want = m(tensor(x)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    other = R.bitlinear(x, packed, scale, OTHER_CLASS[linear_class])
    assert not np.allclose(other, want, rtol=0.1)


def test_rmsnorm_matches_transformers():
    from transformers.models.bitnet.modeling_bitnet import BitNetRMSNorm

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((10, 384)) * rng.uniform(1e-3, 50, (10, 1))).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 384).astype(np.float32)
    norm = BitNetRMSNorm(384, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(tensor(w))
        want = norm(tensor(x)).numpy()
    np.testing.assert_allclose(R.rmsnorm(x, w, 1e-5), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_matches_transformers(head_dim):
    from transformers import BitNetConfig
    from transformers.models.bitnet.modeling_bitnet import BitNetRotaryEmbedding, apply_rotary_pos_emb

    cfg = BitNetConfig(hidden_size=head_dim * 4, num_attention_heads=4, num_key_value_heads=4, head_dim=head_dim,
                       rope_theta=500000.0, max_position_embeddings=4096)
    rot = BitNetRotaryEmbedding(cfg)
    rng = np.random.default_rng(head_dim)
    positions = np.array([0, 1, 2, 7, 63, 100, 1000, 4095])
    x = rng.standard_normal((len(positions), 4, head_dim)).astype(np.float32)
    # torch's float32 pow is vectorised per CPU (AVX2, AVX-512 builds of SLEEF): equal to its last bit or one off
    np.testing.assert_array_max_ulp(R.rope_inv_freq(head_dim, 500000.0), rot.inv_freq.numpy(), maxulp=1)
    with torch.no_grad():
        cos, sin = rot(tensor(x), tensor(positions)[None])
        q = tensor(x).transpose(0, 1)[None]                       # [1, heads, n, hd]
        want, _ = apply_rotary_pos_emb(q, q, cos, sin)
    want = want[0].transpose(0, 1).numpy()
    np.testing.assert_allclose(R.rope(x, positions, 500000.0), want, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(R.rope(x[:1], positions[:1], 500000.0), x[:1])  # position 0 is the identity


@pytest.mark.parametrize("heads,kv_heads,pos0", [(4, 4, 0), (6, 2, 0), (8, 2, 0), (4, 1, 9)])
def test_attention_matches_transformers(heads, kv_heads, pos0):
    """Causal GQA, including queries that start after a prefix (pos0 > 0), against eager_attention_forward."""
    from types import SimpleNamespace

    from transformers.models.bitnet.modeling_bitnet import eager_attention_forward

    rng = np.random.default_rng(heads * 10 + kv_heads + pos0)
    n, hd = 12, 64
    total = pos0 + n
    q = rng.standard_normal((n, heads, hd)).astype(np.float32) * 3
    k = rng.standard_normal((total, kv_heads, hd)).astype(np.float32) * 3
    v = rng.standard_normal((total, kv_heads, hd)).astype(np.float32)
    qpos = pos0 + np.arange(n)
    mask = np.where(np.arange(total)[None, :] <= qpos[:, None], 0.0, -np.inf).astype(np.float32)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    with torch.no_grad():
        want, _ = eager_attention_forward(module, tensor(q).transpose(0, 1)[None], tensor(k).transpose(0, 1)[None],
                                          tensor(v).transpose(0, 1)[None], tensor(mask)[None, None],
                                          scaling=hd ** -0.5)
    np.testing.assert_allclose(R.attention(q, k, v, pos0), want[0].numpy(), rtol=1e-5, atol=1e-5)


def test_relu2_gate_and_output_head():
    rng = np.random.default_rng(5)
    g, u = rng.standard_normal((2, 7, 33)).astype(np.float32)
    np.testing.assert_array_equal(R.relu2_gate(g, u), np.where(g > 0, g * g, 0).astype(np.float32) * u)
    e = rng.standard_normal((50, 16)).astype(np.float32)
    e_bf16 = (e.view(np.uint32) >> 16).astype(np.uint16)          # truncated to bf16 bit patterns
    x = rng.standard_normal((3, 16)).astype(np.float32)
    widened = (e_bf16.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(R.output_head(x, e_bf16), x @ widened.T, rtol=1e-6)


# --- one decoder layer, same input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,linear_class", [("gqa4-hd64", "autobitlinear"), ("gqa3-hd128", "bitlinear")])
def test_layer_matches_transformers(model_dir, shape, linear_class):
    """Layer 0 from the same hidden states. A rounding flip can move a few positions, not most of them."""
    folder = model_dir(shape, linear_class)
    ckpt = Checkpoint(folder)
    hf = load_hf_model(folder)
    rng = np.random.default_rng(6)
    n = 40
    x = R.embed(ckpt.raw("model.embed_tokens.weight"), rng.integers(0, ckpt.config.vocab_size, n))
    positions = np.arange(n)
    got = R.layer(ckpt, 0, x, positions)

    with quiet_eager(), torch.no_grad():
        hs = tensor(x)[None]
        pos = tensor(positions)[None]
        cos_sin = hf.model.rotary_emb(hs, pos)
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        want = hf.model.layers[0](hs, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        want = (want[0] if isinstance(want, tuple) else want)[0].numpy()
    err = np.abs(got - want).max(axis=-1) / np.abs(want).max(axis=-1)
    assert np.mean(err < 1e-4) >= 0.9, err
    assert np.median(err) < 1e-5, err


# --- end to end: statistics ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,linear_class", CASES)
def test_forward_agrees_with_transformers(model_dir, shape, linear_class, record_property):
    folder = model_dir(shape, linear_class)
    ckpt = Checkpoint(folder)
    assert ckpt.config.linear_class == linear_class
    ids = np.random.default_rng(7).integers(0, ckpt.config.vocab_size, N_TOKENS)
    want = hf_logits(load_hf_model(folder), ids)

    got, hidden = R.forward(ckpt, ids, return_hidden=True)
    assert got.dtype == np.float32 and got.shape == (N_TOKENS, ckpt.config.vocab_size)
    assert hidden.shape == (N_TOKENS, ckpt.config.hidden_size)
    np.testing.assert_array_equal(got, R.output_head(hidden, ckpt.raw("model.embed_tokens.weight")))
    stats = logit_stats(got, want)
    record_property("stats", stats)
    assert stats["corr"] >= CORR_MIN and stats["top1"] >= TOP1_MIN, stats

    # negative control: the other weight-scale direction must fail the same thresholds
    wrong = logit_stats(R.forward(ckpt, ids, linear_class=OTHER_CLASS[linear_class]), want)
    record_property("wrong_direction_stats", wrong)
    assert wrong["corr"] < CORR_MIN and wrong["top1"] < TOP1_MIN, wrong


def test_forward_prefix_is_consistent(model_dir):
    """Causality: the logits of a prefix do not depend on the tokens after it.

    The hidden states are compared exactly: every sum that forms them runs over one row (per-row norms, per-query
    attention, exact integer ternary products). The logits are one BLAS sgemm over all rows, and BLAS may sum in a
    different order for 10 rows than for 24 (seen on AMD Zen 3: most logits differ in the last bits), so they are
    compared to float32 rounding; a causality bug moves them by whole units."""
    ckpt = Checkpoint(model_dir("mha1-hd64", "autobitlinear"))
    ids = np.random.default_rng(8).integers(0, ckpt.config.vocab_size, 24)
    prefix_logits, prefix_hidden = R.forward(ckpt, ids[:10], return_hidden=True)
    logits, hidden = R.forward(ckpt, ids, return_hidden=True)
    np.testing.assert_array_equal(prefix_hidden, hidden[:10])
    np.testing.assert_allclose(prefix_logits, logits[:10], rtol=1e-5, atol=1e-5 * np.abs(logits).max())


def test_forward_rejects_bad_input(model_dir):
    folder = model_dir("mha1-hd64", "autobitlinear")
    with pytest.raises(ValueError):
        R.forward(folder, [0, 1024])
    with pytest.raises(ValueError):
        R.forward(folder, [])
    with pytest.raises(ValueError):
        R.forward(folder, [1], linear_class="linear")
