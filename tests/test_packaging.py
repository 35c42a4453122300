"""What the binary (packaging/) relies on, checked in the source tree: commands import only what they need, so
`trit ask` starts without Textual, and only `trit` (the chat app) pays for it. The binary itself is built and
tried by packaging/build.sh and packaging/smoke_test.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from network_guard import offline_env

# Runs one trit command in this process, then writes the top-level packages it imported, of the heavy ones.
PROBE = r"""
import json, os, sys
from trit.app.cli import cli
try:
    cli(sys.argv[1:], prog_name="trit")
    code = 0
except SystemExit as e:
    code = e.code or 0
heavy = {"textual", "rich", "pygments", "markdown_it", "huggingface_hub", "httpx2", "tqdm", "torch",
         "transformers", "llama_cpp", "gguf"}
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & heavy)}, f)
"""


def imported(tmp_path, *args) -> dict:
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, input="",
                       env=offline_env({**os.environ, "TRIT_HOME": str(tmp_path / "home"), "PROBE_OUT": str(out)}))
    assert out.exists(), r.stderr
    result = json.loads(out.read_text())
    assert result["code"] == 0, r.stderr
    return result


def test_trit_ask_answers_without_importing_textual_or_the_downloader(tmp_path, tiny_model):
    result = imported(tmp_path, "ask", "--model", tiny_model, "--max-tokens", 4, "--seed", 1, "--no-log", "Hello")
    assert result["heavy"] == []


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["ask", "--help"], ["pull", "--help"], ["models"],
                                  ["history", "list"], ["paths"]])
def test_commands_other_than_the_chat_app_do_not_import_textual(tmp_path, args):
    assert "textual" not in imported(tmp_path, *args)["heavy"]


def test_the_binary_builds_and_works_as_a_user_runs_it():
    """packaging/build.sh from this checkout (its own venv, PyInstaller), then packaging/smoke_test.py on both
    builds outside the tree with no Python on PATH: about 2.5 minutes. Deselect with -k 'not binary' while editing."""
    root = Path(__file__).resolve().parent.parent
    build = subprocess.run([str(root / "packaging" / "build.sh")], cwd=root, capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    smoke = subprocess.run([sys.executable, str(root / "packaging" / "smoke_test.py")], cwd=root,
                           capture_output=True, text=True, timeout=1800)
    print(smoke.stdout[-2000:])
    assert smoke.returncode == 0, smoke.stdout[-4000:] + smoke.stderr[-3000:]
