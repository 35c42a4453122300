"""The C kernel test (native/tests/test_kernels.c) through native/tests/run-aarch64.sh: every kernel against the scalar
one, cross-built for 64-bit ARM and run under qemu-user so that the NEON kernel is checked on an x86 machine too, and
built for this machine and run with ctest.

The aarch64 part needs qemu-user and gcc-aarch64-linux-gnu: without them it is skipped, except under CI (the CI
variable set), where a missing tool is a failure — .ci/run installs them."""

from __future__ import annotations

import re

import pytest
from native_script import require, run_script, summaries

INSTALL = "apt-get install qemu-user gcc-aarch64-linux-gnu cmake"


@pytest.fixture(scope="module")
def aarch64_run(tmp_path_factory) -> str:
    """The output of run-aarch64.sh, built and run once for this module's tests."""
    require(INSTALL, "cmake", "aarch64-linux-gnu-gcc", "qemu-aarch64")
    return run_script("run-aarch64.sh", str(tmp_path_factory.mktemp("aarch64")))


def test_neon_kernel_under_qemu(aarch64_run):
    out = aarch64_run
    runs = summaries(out)
    assert len(runs) == 3 and all(failed == 0 and passed > 0 for passed, failed in runs), out
    # qemu's max CPU has the dot product: the NEON kernel was checked against the scalar one
    assert re.search(r"^tested kernels: neon scalar$", out, re.M), out
    assert re.search(r"^ok +tq2 +neon +=", out, re.M) and re.search(r"^ok +model neon", out, re.M), out
    # on a Cortex-A72 (no dot product) dispatch leaves it out
    assert re.search(r"^kernel neon: not supported", out, re.M), out


def test_kernels_of_this_machine(tmp_path):
    require(INSTALL, "cmake")
    out = run_script("run-aarch64.sh", "--native", str(tmp_path / "native"))
    runs = summaries(out)
    assert len(runs) == 1 and runs[0][1] == 0 and runs[0][0] > 0, out
    tested = re.search(r"tested kernels: (.*)$", out, re.M)
    assert tested and tested.group(1).split()[-1] == "scalar", out


def test_neon_t5_is_native_and_bit_exact(aarch64_run):
    """Issue 20: the NEON kernel runs the 1.6-bit T5 format itself (`trit bench --ternary t5` measures it on an ARM
    machine) with the same int32 sums as the scalar T5 on every odd shape the TQ2 kernel is checked on, yet keeps TQ2
    as the engine's choice: under llvm-mca its T5 decode costs more than the 20% fewer bytes save on M1/M2 laptops."""
    out = aarch64_run
    assert re.search(r"^kernel neon: T5 native$", out, re.M), out
    t5 = re.findall(r"^ok +t5 +neon += scalar +rows=(\d+) cols=(\d+) tokens=(\d+)", out, re.M)
    tq2 = re.findall(r"^ok +tq2 +neon += scalar +rows=(\d+) cols=(\d+) tokens=(\d+)", out, re.M)
    assert t5 and sorted(t5) == sorted(tq2), out  # every shape, in both runs on qemu's max CPU
    assert any(int(c) % 16 and int(t) % 4 == 3 for _, c, t in t5), out  # a column tail and every token tile
    assert re.search(r"^ok +model neon +~ scalar +bitnet block, t5 weights", out, re.M), out
    assert re.search(r"^ok +kernel neon prefers the TQ2 format$", out, re.M), out
