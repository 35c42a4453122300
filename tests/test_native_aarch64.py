"""The C kernel test (native/tests/test_kernels.c) through native/tests/run-aarch64.sh: every kernel against the scalar
one, cross-built for 64-bit ARM and run under qemu-user so that the NEON kernel is checked on an x86 machine too, and
built for this machine and run with ctest.

The aarch64 part needs qemu-user and gcc-aarch64-linux-gnu: without them it is skipped, except under CI (the CI
variable set), where a missing tool is a failure — .ci/run installs them."""

from __future__ import annotations

import re

from native_script import require, run_script, summaries

INSTALL = "apt-get install qemu-user gcc-aarch64-linux-gnu cmake"


def test_neon_kernel_under_qemu(tmp_path):
    require(INSTALL, "cmake", "aarch64-linux-gnu-gcc", "qemu-aarch64")
    out = run_script("run-aarch64.sh", str(tmp_path / "aarch64"))
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
