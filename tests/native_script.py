"""Running native/tests' shell scripts from pytest: the cross-built C kernel test under qemu (aarch64) or wine
(Windows). A script's tools missing is a skip here and a failure under CI (the CI variable set), whose .ci/run
installs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "native" / "tests"
SUMMARY = re.compile(r"^(?:\d+: )?(\d+) passed, (\d+) failed$", re.M)  # ctest -V prefixes "1: "


def require(install: str, *tools: str) -> None:
    import pytest

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must install them (.ci/run does)", pytrace=False)
        pytest.skip(reason)


def run_script(name: str, *args: str) -> str:
    script = SCRIPTS / name
    proc = subprocess.run(["bash", str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{name} {' '.join(args)} exited with {proc.returncode}:\n{proc.stdout[-8000:]}"
    return proc.stdout


def summaries(out: str) -> list[tuple[int, int]]:
    """(passed, failed) of every run of the C test in a script's output."""
    return [(int(p), int(f)) for p, f in SUMMARY.findall(out)]
