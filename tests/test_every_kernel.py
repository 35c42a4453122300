"""The tests whose results go through a kernel, run again with every other kernel this CPU has forced (TRIT_KERNEL).

The op tests (test_native_ops.py) check each kernel against the scalar one already, in one process; the model-level
tests (whole forward passes against transformers, the KV cache, threads, derived weights, the demo model's
perplexity, chat) run with the CPU's best kernel only, unless forced. So an AVX-512 machine never ran the AVX2 model
path a Zen 3 or Intel laptop runs, and nothing ran the scalar one. Here each of those kernels runs them all again, in
a child pytest: on an AVX2 machine the scalar kernel (about 4 minutes, most of it the demo model's perplexity), on an
AVX-512 one AVX2 and scalar."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trit.engine.runtime import native

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SENSITIVE = ["test_model.py", "test_derived.py", "test_chat.py", "test_demo_model.py", "test_bad_input.py",
                    "test_families.py",
                    "test_native_ops.py", "test_kv_types.py"]
OTHER_KERNELS = [k for k in native.kernels() if k != native.active_kernel()]


@pytest.mark.skipif(not OTHER_KERNELS, reason="this CPU runs one kernel only")
@pytest.mark.parametrize("kernel", OTHER_KERNELS)
def test_the_kernel_sensitive_tests_pass_with_the_kernel_forced(kernel, tmp_path):
    files = [str(ROOT / "tests" / f) for f in KERNEL_SENSITIVE]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                        str(tmp_path / "run"), *files], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "TRIT_KERNEL": kernel})
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    print(f"TRIT_KERNEL={kernel}: {summary}")
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
