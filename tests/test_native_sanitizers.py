"""libtrit under AddressSanitizer and UndefinedBehaviorSanitizer (issue 17): native/tests/run-sanitizers.sh builds it
and the C kernel test with TRIT_SANITIZE=ON and runs that test with every kernel this CPU has; then the engine tests
whose work is native code run in a child pytest that loads this libtrit (TRIT_LIBRARY, the sanitizer runtimes
preloaded, tests/sanitized_child.py checking both and giving the kernels heap copies of the weights).

Every report aborts its process and is also written to a log file here, so a report from a `trit` command that a test
expected to fail is not lost in that test's captured stderr. The compiler lacking the sanitizer runtimes is a skip."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from native_script import SCRIPTS, require, summaries
from network_guard import offline_env

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "apt-get install cmake gcc"
# The engine tests that run the most native code: each operation with every kernel, whole forward passes against
# transformers, the KV cache, threads, derived weights (T5, compact heads), chat's cache reuse and cancel, malformed
# models and inputs at the native boundary, the demo model, a cache saved and restored (also from damaged files). Not
# the demo model's held-out perplexity (the transformers half of it alone takes half a minute and it runs no native
# path the rest does not).
ENGINE_TESTS = ["test_native_ops.py", "test_model.py", "test_chat.py", "test_derived.py", "test_bad_input.py",
                "test_families.py",
                "test_demo_model.py"] + [
    f"test_warm_cache.py::{t}" for t in ("test_a_turn_in_a_new_process_with_the_saved_cache_gives_the_logits_of_a_"
                                         "fresh_prefill", "test_a_follow_up_appends_only_its_new_positions",
                                         "test_a_mutated_cache_file_is_refused_or_gives_back_exactly_what_was_saved")]
NOT_PERPLEXITY = "not reproduces_transformers and not far_below"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(build folder, run-sanitizers.sh's output, the runtimes to preload): one sanitized build for this module."""
    require(INSTALL, "cmake")
    folder = tmp_path_factory.mktemp("sanitizers")
    proc = subprocess.run(["bash", str(SCRIPTS / "run-sanitizers.sh"), str(folder)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    if proc.returncode == 3:
        pytest.skip(f"no sanitizer runtime: {proc.stdout.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"run-sanitizers.sh exited with {proc.returncode}:\n{proc.stdout[-8000:]}"
    preload = re.search(r"^preload: (\S+) (\S+)$", proc.stdout, re.M)
    assert preload, proc.stdout
    return folder, proc.stdout, [preload.group(1), preload.group(2)]


@pytest.fixture
def sanitized_env(build, tmp_path):
    """The environment of a Python child that loads the sanitized libtrit; reports go to tmp_path/reports/."""
    folder, _, preload = build
    for runtime in preload:
        if not Path(runtime).is_file():  # -print-file-name echoes the bare name when the compiler has no such file
            pytest.skip(f"the compiler's {runtime} cannot be preloaded into python (Clang's runtimes are named "
                        "otherwise)")
    reports = tmp_path / "reports"
    reports.mkdir()
    return offline_env({
        **os.environ,
        "TRIT_LIBRARY": str(folder / "libtrit.so"),
        "LD_PRELOAD": " ".join(preload),
        # Python's own allocations live until exit by design: leak checking would report them, not Trit's
        "ASAN_OPTIONS": f"detect_leaks=0:abort_on_error=1:log_path={reports / 'asan'}",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={reports / 'ubsan'}",
    })


def sanitizer_reports(env: dict) -> str:
    folder = Path(env["ASAN_OPTIONS"].rsplit("log_path=", 1)[1]).parent
    return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(folder.iterdir()))


def test_the_library_is_built_with_both_sanitizers(build):
    folder, _, _ = build
    data = (folder / "libtrit.so").read_bytes()
    assert b"__asan_report_load" in data and b"__ubsan_handle_" in data


def test_the_kernel_test_passes_under_the_sanitizers_with_every_kernel(build):
    _, out, _ = build
    supported = re.findall(r"^kernel (\S+): supported$", out, re.M)
    runs = summaries(out)
    # dispatch's choice, then each supported kernel forced: scalar always among them
    assert "scalar" in supported and len(runs) == 1 + len(set(supported)), out
    assert all(failed == 0 and passed > 0 for passed, failed in runs), out
    for kernel in set(supported):
        assert re.search(rf"^== kernel-{kernel}: test_kernels with TRIT_KERNEL={kernel}$", out, re.M), out
    assert re.search(r"^== sanitizers: passed in \d+ s$", out, re.M), out


def test_a_read_past_a_buffer_in_libtrit_is_caught(sanitized_env):
    """The control: the sanitized library with these settings does report an out-of-bounds read in its own code (a
    weight vector shorter than the size passed), so the engine run below cannot pass for want of checking."""
    probe = ("import numpy as np\n"
             "from trit.engine.runtime import native\n"
             "x = np.ones(1024, np.float32); w = np.ones(1000, np.float32); out = np.empty_like(x)\n"
             "native.lib().trit_op_rmsnorm(native.ptr(out), native.ptr(x), native.ptr(w), x.size, 1e-5)\n"
             "print('not caught')\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=sanitized_env)
    reports = sanitizer_reports(sanitized_env)
    assert r.returncode != 0 and "not caught" not in r.stdout, r.stdout + r.stderr
    assert "AddressSanitizer: heap-buffer-overflow" in reports, reports + r.stderr
    assert re.search(r" in \w*rmsnorm ", reports), reports  # the kernel's own frame: scalar's is trit_rmsnorm


def test_the_engine_tests_pass_with_the_sanitized_library(build, sanitized_env, tmp_path):
    folder, _, _ = build
    files = [str(ROOT / "tests" / f) for f in ENGINE_TESTS]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sanitized_child",
                        "--basetemp", str(tmp_path / "run"), "-k", NOT_PERPLEXITY, *files],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200, env=sanitized_env)
    reports = sanitizer_reports(sanitized_env)
    assert not reports, reports
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    print(f"sanitized engine tests: {summary}")
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-4000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    # the child loaded this build and no other (sanitized_child.py refuses to run otherwise)
    assert f"sanitized libtrit: {(folder / 'libtrit.so').resolve()}" in r.stdout, r.stdout[-4000:]
