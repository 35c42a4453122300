"""The code as the project's formatters and linters hold it: ruff for Python (pyproject.toml's [tool.ruff]: 120
columns, pyflakes, pycodestyle, import order) and clang-format for C (native/.clang-format, through
native/tests/check-format.sh). A failure names the lines; `ruff check --fix` and `check-format.sh --fix` mend most.

clang-format comes from the system (Debian's 14, the version the tree is formatted with): without it the C check is
skipped, except under CI, where .ci/run installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_python_passes_ruff():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_c_is_formatted_as_clang_format_says():
    if shutil.which("clang-format") is None:
        if os.environ.get("CI"):
            pytest.fail("clang-format not installed: CI must install it (.ci/run does)", pytrace=False)
        pytest.skip("clang-format not installed (apt-get install clang-format)")
    r = subprocess.run(["bash", str(ROOT / "native" / "tests" / "check-format.sh")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
