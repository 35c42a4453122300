"""The `trit` command as a user runs it: a separate process, its exit code, stdout and stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from network_guard import offline_env


def trit_command() -> list[str]:
    # the entry point installed beside this Python (a venv not activated has it off PATH), else the same code via -m
    beside = Path(sys.executable).with_name("trit")
    exe = str(beside) if beside.is_file() else shutil.which("trit")
    return [exe] if exe else [sys.executable, "-m", "trit.app"]


@pytest.fixture
def run(tmp_path):
    def run(*args, env=None):
        return subprocess.run(trit_command() + list(args), capture_output=True, text=True, cwd=tmp_path,
                              env=offline_env({**os.environ, "TRIT_HOME": str(tmp_path / "home"), **(env or {})}),
                              timeout=600)

    return run


def test_version(run):
    r = run("--version")
    assert r.returncode == 0 and "trit" in r.stdout and "0.1.0" in r.stdout


def test_paths_follow_trit_home(run, tmp_path):
    r = run("paths")
    assert r.returncode == 0
    assert str(tmp_path / "home") in r.stdout and "models" in r.stdout


def test_bench_synthetic_json(run, tmp_path):
    r = run("bench", "--synthetic", "tiny", "--pp", "32", "--tg", "8", "-r", "2", "--threads", "2", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["n_prompt"] == 32 and result["n_gen"] == 8 and result["threads"] == 2
    assert result["pp_tok_s"] > 0 and result["tg_tok_s"] > 0 and len(result["tg_runs"]) == 2
    from trit.engine.runtime import native

    assert result["kernel"] == native.active_kernel() and result["peak_rss_mb"] > 0  # the best, unless forced
    assert (tmp_path / "home" / "cache" / "synthetic" / "tiny-seed0" / "config.json").exists()


def test_bench_text_output_on_a_model_folder(run, tiny_model):
    r = run("bench", str(tiny_model), "--pp", "16", "--tg", "4", "-r", "1")
    assert r.returncode == 0, r.stderr
    assert "pp16" in r.stdout and "tg4" in r.stdout and "tok/s" in r.stdout and "peak RSS" in r.stdout


def test_bench_on_a_folder_that_is_not_a_model_is_one_clear_line(run, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("bench", str(tmp_path / "empty"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "config.json" in r.stderr and "Traceback" not in r.stderr


def test_bench_needs_a_model(run):
    r = run("bench")
    assert r.returncode == 2 and "--synthetic" in r.stderr
