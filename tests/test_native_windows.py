"""The C kernel test (native/tests/test_kernels.c) through native/tests/run-windows.sh: trit.dll and test_kernels.exe
cross-built for 64-bit Windows with MinGW-w64 and run under wine, so that the Windows build is checked on a Linux
machine: every kernel this CPU runs against the scalar one, each forced in turn, a DLL that exports trit.h's functions
and needs no MinGW runtime beside it.

It needs MinGW-w64 (posix threads) and wine: without them it is skipped, except under CI (the CI variable set), where a
missing tool is a failure — .ci/run must install them."""

from __future__ import annotations

import re

from native_script import require, run_script, summaries

INSTALL = "apt-get install --no-install-recommends gcc-mingw-w64-x86-64-posix wine64 wine cmake"


def test_kernels_under_wine(tmp_path):
    require(INSTALL, "cmake", "x86_64-w64-mingw32-gcc-posix", "x86_64-w64-mingw32-objdump", "wine")
    out = run_script("run-windows.sh", str(tmp_path / "windows"))
    # the DLL stands alone and exports the API only
    assert re.search(r"^trit\.dll imports: (\S+ )*$", out, re.M), out
    assert re.search(r"^trit\.dll exports the \d+ functions of trit\.h and nothing else$", out, re.M), out
    # ctest's run, then one run per supported kernel, forced: scalar always among them
    supported = re.findall(r"^kernel (\S+): supported$", out, re.M)
    runs = summaries(out)
    assert "scalar" in supported and len(runs) == 1 + len(set(supported)), out
    assert all(failed == 0 and passed > 0 for passed, failed in runs), out
    tested = re.search(r"^tested kernels: (.*)$", out, re.M)
    assert tested and tested.group(1).split()[-1] == "scalar", out
    assert re.search(r"^== kernel-scalar: wine test_kernels\.exe with TRIT_KERNEL=scalar$", out, re.M), out
