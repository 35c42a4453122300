"""Issue 20 on x86 laptops: T5 (1.6-bit) weights run by the AVX2 kernel's own code, and the AVX-VNNI kernel (AVX2 with
the VEX vpdpbusd: Intel Core 12th gen on, AMD Zen 5). The int32 sums bit for bit against the definition on the shapes
that reach each new path: one byte row per token (decode, 1..7 tokens, any width) and rows in lanes (prefill, 8 tokens
on, widths a multiple of 4), with groups, columns and tokens that leave every block a remainder."""

from __future__ import annotations

import json
import platform
import sys

import numpy as np
import pytest
from test_hostile_input import home, trit  # noqa: F401  (fixtures)

from trit.engine.formats.packing import pack_ternary
from trit.engine.runtime import native
from trit.engine.tools import reference as ref

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 kernels")

SIMD = [k for k in native.kernels() if k != "scalar"]  # avx2, and avxvnni / avx512vnni where the CPU has them

# (rows, cols, tokens). Per row: 1..7 tokens, widths not a multiple of 32. Rows in lanes: 8..70 tokens (tiles of 3
# and their remainders), groups (ceil(rows / 5)) not a multiple of 8, the last digit's rows past the end, column
# slabs of 384 with a last one of 4 columns.
SHAPES = [(4, 33, 1), (52, 33, 7), (996, 161, 2), (8, 6912, 1), (100, 2560, 3), (4, 4, 8), (28, 36, 10),
          (44, 388, 8), (40, 1540, 9), (92, 772, 70), (12, 40, 69), (164, 2052, 11)]


def x86_flags() -> set:
    if sys.platform != "linux":
        pytest.skip("reads /proc/cpuinfo")
    return set(open("/proc/cpuinfo").read().split())


@pytest.mark.parametrize("kernel", SIMD)
@pytest.mark.parametrize("rows,cols,n", SHAPES)
def test_t5_runs_natively_and_gives_the_exact_sums(kernel, rows, cols, n):
    rng = np.random.default_rng(rows * 7919 + cols * 31 + n)
    packed = pack_ternary(rng.integers(-1, 2, (rows, cols)))
    xq = rng.integers(-128, 128, (n, cols)).astype(np.int8)
    # a kernel without its own T5 refuses it here (the engine would keep TQ2 with it)
    out = native.op_ternary_matmul(kernel, native.to_t5(packed), xq, rows=rows, fmt="t5")
    assert np.array_equal(out, ref.ternary_matmul_i32(packed, xq))


@pytest.mark.parametrize("kernel", SIMD)
@pytest.mark.parametrize("n", [1, 2, 9])
@pytest.mark.parametrize("weight", [1, -1])
def test_t5_sums_at_their_limits(kernel, n, weight):
    """Every weight +1 makes every byte 242, whose parts are the largest the AVX2 decode sums in int16 (B div 9 = 26
    four steps at a time); with every activation -128 or 127 each product is at its extreme, over 2B4T's longest
    row."""
    rows, cols = 20, 6912
    packed = pack_ternary(np.full((rows, cols), weight))
    for value in (-128, 127):
        xq = np.full((n, cols), value, np.int8)
        out = native.op_ternary_matmul(kernel, native.to_t5(packed), xq, rows=rows, fmt="t5")
        assert np.array_equal(out, ref.ternary_matmul_i32(packed, xq))
        assert (out == weight * value * cols).all()


def test_the_avxvnni_kernel_is_built_and_chosen_after_avx512_and_before_avx2():
    assert native.all_kernels() == ["avx512vnni", "avxvnni", "avx2", "scalar"]
    flags = x86_flags()
    avx2 = {"avx2", "fma", "f16c"} <= flags
    assert ("avxvnni" in native.kernels()) == (avx2 and "avx_vnni" in flags)


def test_avx2_runs_a_t5_file_derived_with_another_kernel_and_keeps_tq2_by_default(trit, home,  # noqa: F811
                                                                                   monkeypatch):
    """The T5 file is the same bytes whichever kernel derived it (the scalar one here, as an AVX-512 machine would):
    AVX2 reads it, not derives it again. Unasked, AVX2 loads TQ2: its T5 measured slower on a shared Zen 3 (issue
    20)."""
    if "avx2" not in native.kernels():
        pytest.skip("this CPU has no AVX2")
    bench = ("bench", "--synthetic", "tiny", "--pp", "8", "--tg", "2", "-r", "1", "--threads", "1", "--json")
    monkeypatch.setenv("TRIT_KERNEL", "scalar")
    r = trit(*bench, "--ternary", "t5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ternary"] == "t5"
    t5 = home / "cache" / "synthetic" / "tiny-seed0" / "trit" / "ternary-t5.safetensors"
    made = t5.stat().st_mtime_ns
    monkeypatch.setenv("TRIT_KERNEL", "avx2")
    r = trit(*bench, "--ternary", "t5")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["kernel"] == "avx2" and result["ternary"] == "t5"
    assert t5.stat().st_mtime_ns == made
    r = trit(*bench)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ternary"] == "tq2"
