"""Each native operation against the numpy reference; the int32 core bit-identical for every kernel this CPU runs."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from trit.engine.formats.packing import pack_ternary
from trit.engine.runtime import native
from trit.engine.tools import reference as ref

RUNNABLE = native.kernels()


def random_packed(rng, rows, cols):
    return pack_ternary(rng.integers(-1, 2, (rows, cols)))


def test_scalar_is_always_there_and_dispatch_follows_the_cpu():
    assert "scalar" in RUNNABLE
    if platform.machine() in ("x86_64", "AMD64") and sys.platform == "linux":
        flags = open("/proc/cpuinfo").read().split()
        has_avx2 = all(f in flags for f in ("avx2", "fma", "f16c"))
        avx512 = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi")
        has_vnni = has_avx2 and all(f in flags for f in avx512)
        assert ("avx2" in RUNNABLE) == has_avx2
        assert ("avx512vnni" in RUNNABLE) == has_vnni
    # unless forced, the active kernel is the best one this CPU runs
    if not os.environ.get("TRIT_KERNEL"):
        assert native.active_kernel() == RUNNABLE[0]


# Odd shapes on purpose: rows not a multiple of any SIMD width, columns not a multiple of 32, 64 or 128.
SHAPES = [(4, 1, 1), (8, 31, 3), (12, 33, 2), (20, 127, 1), (36, 100, 5), (260, 300, 7), (128, 2560, 2), (64, 6912, 1)]


@pytest.mark.parametrize("kernel", RUNNABLE)
@pytest.mark.parametrize("rows,cols,n", SHAPES)
def test_ternary_matmul_int32_is_bit_identical(kernel, rows, cols, n):
    rng = np.random.default_rng(rows * 1000 + cols)
    packed = random_packed(rng, rows, cols)
    xq = rng.integers(-128, 128, (n, cols)).astype(np.int8)
    assert np.array_equal(native.op_ternary_matmul(kernel, packed, xq), ref.ternary_matmul_i32(packed, xq))


def _runs_t5(kernel: str) -> bool:
    """Its own T5 code, preferred or not (AVX2 runs T5 when asked and loads TQ2 unasked): a kernel without refuses."""
    try:
        native.op_ternary_matmul(kernel, np.full((1, 1), 121, np.uint8), np.ones((1, 1), np.int8), rows=4, fmt="t5")
        return True
    except native.NativeError:
        return False


T5_KERNELS = ["scalar"] + [k for k in RUNNABLE if k != "scalar" and _runs_t5(k)]  # scalar defines T5


@pytest.mark.parametrize("kernel", T5_KERNELS)
@pytest.mark.parametrize("rows,cols,n", SHAPES + [(6912, 70, 3), (16, 65, 9), (260, 300, 70), (12, 2560, 8)])
def test_t5_matmul_int32_is_bit_identical(kernel, rows, cols, n):
    """T5 holds the same weights in 1.6 bits: the same exact int32 products, row counts not a multiple of 5 too."""
    rng = np.random.default_rng(rows * 1000 + cols + 1)
    packed = random_packed(rng, rows, cols)
    xq = rng.integers(-128, 128, (n, cols)).astype(np.int8)
    t5 = native.to_t5(packed)
    assert t5.shape == ((rows + 4) // 5, cols) and t5.max() <= 242
    out = native.op_ternary_matmul(kernel, t5, xq, rows=rows, fmt="t5")
    assert np.array_equal(out, ref.ternary_matmul_i32(packed, xq))


def test_t5_layout_is_the_documented_one():
    w = np.random.default_rng(5).integers(-1, 2, (12, 7))  # 12 rows: 3 groups, the last two fifths padding
    t5 = native.to_t5(pack_ternary(w)).astype(int)
    groups = 3
    for g in range(groups):
        for c in range(7):
            digits = [w[g + j * groups, c] + 1 if g + j * groups < 12 else 1 for j in range(5)]
            assert t5[g, c] == sum(d * 3**j for j, d in enumerate(digits))


@pytest.mark.parametrize("kernel", RUNNABLE)
def test_ternary_matmul_extremes(kernel):
    # the largest sums an int8 x ternary product can reach, both signs, over the longest 2B4T row
    cols = 6912
    w = np.ones((8, cols), np.int64)
    w[4:] = -1
    xq = np.full((2, cols), -128, np.int8)
    xq[1] = 127
    out = native.op_ternary_matmul(kernel, pack_ternary(w), xq)
    assert out[0, 0] == -128 * cols and out[0, 4] == 128 * cols and out[1, 0] == 127 * cols
    assert np.array_equal(out, ref.ternary_matmul_i32(pack_ternary(w), xq))


def test_rmsnorm():
    rng = np.random.default_rng(1)
    for n in (7, 128, 2560, 6912):
        x = rng.standard_normal(n).astype(np.float32) * 3
        w = rng.standard_normal(n).astype(np.float32)
        np.testing.assert_allclose(native.op_rmsnorm(x, w, 1e-5), ref.rmsnorm(x, w, 1e-5), rtol=2e-5, atol=2e-6)


def test_quantize_matches_and_rounds_half_to_even():
    rng = np.random.default_rng(2)
    for n in (1, 9, 2560):
        x = (rng.standard_normal(n) * 5).astype(np.float32)
        xq, s = native.op_quantize(x)
        rq, rs = ref.quantize(x)
        assert np.array_equal(xq, rq) and s == rs[0]
    # values whose scaled product lands exactly on a .5 tie: half to even, not half away from zero
    row = np.array([100.0], np.float32)
    s = np.float32(127) * (np.float32(1) / row[0])
    ties = [np.float32(100.0)]
    for k in (2, 3, -3, 10, -10, 0):
        x = np.float32((k + 0.5) / s)
        for _ in range(64):  # walk a few ulps until float32(x * s) is exactly k + 0.5
            if np.float32(x * s) == k + 0.5:
                ties.append(x)
                break
            x = np.nextafter(x, np.float32(np.inf) if np.float32(x * s) < k + 0.5 else np.float32(-np.inf))
    ties = np.array(ties, np.float32)
    assert len(ties) >= 4, "no exact ties found"
    xq, _ = native.op_quantize(ties)
    products = ties * s
    assert np.all(products[1:] == np.floor(products[1:]) + 0.5)
    assert np.array_equal(xq[1:], np.rint(products[1:]).astype(np.int8))  # even neighbours
    assert np.array_equal(xq, ref.quantize(ties)[0])
    # an all-zero row uses the 1e-5 floor, as transformers does
    xq, s = native.op_quantize(np.zeros(4, np.float32))
    assert xq.tolist() == [0, 0, 0, 0] and s == np.float32(127) / np.float32(1e-5)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("pos", [0, 1, 37, 4095])
def test_rope(head_dim, pos):
    rng = np.random.default_rng(pos)
    x = rng.standard_normal((3, head_dim)).astype(np.float32)
    expected = ref.rope(x[None], np.array([pos]), 500000.0)[0]
    np.testing.assert_allclose(native.op_rope(x, pos, 500000.0), expected, rtol=1e-4, atol=2e-4)


# head_dim 256 (Falcon3), also past 4096 positions and with a long batch: the other families' shapes
@pytest.mark.parametrize("heads,kv_heads,head_dim,pos0,n", [(4, 4, 64, 0, 5), (6, 2, 64, 3, 4), (8, 2, 128, 40, 3),
                                                             (3, 1, 128, 0, 1), (12, 4, 256, 0, 5),
                                                             (8, 4, 256, 4200, 2), (2, 1, 256, 37, 40)])
def test_attention(heads, kv_heads, head_dim, pos0, n):
    rng = np.random.default_rng(heads * 100 + pos0)
    q = rng.standard_normal((n, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((pos0 + n, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((pos0 + n, kv_heads, head_dim)).astype(np.float32)
    out = native.op_attention(q.reshape(n, -1), k.reshape(pos0 + n, -1), v.reshape(pos0 + n, -1), pos0, heads,
                              kv_heads, head_dim)
    # the KV cache holds fp16: the reference sees the same rounded keys and values
    half = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    expected = ref.attention(q, half(k), half(v), pos0).reshape(n, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_relu2_sums_is_the_gated_activation_of_the_two_projections():
    rng = np.random.default_rng(3)
    for n in (1, 15, 6912):
        gate, up = rng.integers(-40000, 40000, (2, n), dtype=np.int32)
        fg, fu = np.float32(3.1e-4), np.float32(-2.7e-4)
        want = ref.relu2_gate(gate.astype(np.float32) * fg, up.astype(np.float32) * fu)
        assert np.array_equal(native.op_relu2_sums(gate, fg, up, fu), want)


def test_to_f16_rounds_as_numpy_does():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-9, 6, 5000),
                        [0.0, -0.0, 65504.0, 65519.0, 65520.0, -1e6, 6e-8, 2.9e-8, 3.0e-8, 1e-40]])
    x = x.astype(np.float32)
    assert np.array_equal(native.op_to_f16(x), x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("kind", ["bf16", "q8", "q4"])
def test_output_head(kind):
    from trit.engine.formats import derived

    rng = np.random.default_rng(4)
    hidden, vocab = 2560, 300
    embed = (rng.standard_normal((vocab, hidden)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    x = rng.standard_normal(hidden).astype(np.float32)
    tensors = derived.derive_head(embed, kind) if kind != "bf16" else {"head.bf16": embed}
    expected = x @ derived.dequantized_head(embed, kind, tensors).T
    logits = native.op_output_head(x, kind, tensors["head." + kind], tensors.get("head.scales"))
    # the VNNI q8 path splits x into two int8 parts: error ~1e-5 of |x|, far below the head's own rounding
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    if kind == "bf16":
        np.testing.assert_allclose(logits, ref.output_head(x, embed), rtol=1e-4, atol=1e-3)


def _active_kernel_in_child(kernel: str):
    code = "import trit.engine.runtime.native as n; print(n.active_kernel())"
    # run outside the source tree, so the child imports the same (installed) engine as the tests
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRIT_KERNEL": kernel},
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(native.__file__)))


@pytest.mark.parametrize("kernel", RUNNABLE)
def test_environment_forces_a_kernel(kernel):
    run = _active_kernel_in_child(kernel)
    assert run.returncode == 0 and run.stdout.strip() == kernel


def test_environment_naming_an_unknown_kernel_is_a_clear_error():
    run = _active_kernel_in_child("warp-drive")
    assert run.returncode != 0 and "TRIT_KERNEL=warp-drive" in run.stderr and "unknown kernel" in run.stderr
