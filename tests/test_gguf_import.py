"""GGUF models installed, listed, chosen and removed like BitNet ones: `trit import model.gguf`, `trit pull REPO
--file F.gguf` from the stand-in hub (tests/hub_server.py), `trit models` with its BACKEND column, `trit ask` on an
installed GGUF through the real entry point, and the refusals: a BitNet GGUF (llama.cpp would compute it with SiLU),
several GGUFs without --file. Installing and listing need no llama.cpp; only chatting does."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the gguf package writes the test models (pip install \"trit[gguf]\")")

import gguf_models  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from hub_server import HubServer  # noqa: E402
from network_guard import offline_env  # noqa: E402
from test_cli import trit_command  # noqa: E402

from trit import engine  # noqa: E402
from trit.engine.models import download, importing, registry  # noqa: E402

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason='llama-cpp-python is not installed (pip install "trit[gguf]")')
FILE = "Tiny-Llama F32.gguf"
NAME = "tiny-llama-f32"  # the file's stem, lower-cased, the space made a '-'


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    return gguf_models.write_llama(tmp_path_factory.mktemp("gguf") / FILE, seed=3)


@pytest.fixture(scope="module")
def bitnet_ggufs(tmp_path_factory) -> dict[str, Path]:
    """A GGUF of llama.cpp's `bitnet` architecture (2 MB), and one as bitnet.cpp writes them: architecture
    'bitnet-b1.58' and its I2_S tensors, a ggml type llama.cpp does not have."""
    folder = tmp_path_factory.mktemp("bitnet-gguf")
    plain = gguf_models.write_arch(folder / "ggml-model-tq2_0.gguf", "bitnet", n_embd=1 << 17, with_vocabulary=True)
    i2_s = gguf_models.write_arch(folder / "ggml-model-i2_s.gguf", "bitnet-b1.58", with_vocabulary=True)
    data = bytearray(i2_s.read_bytes())
    at = data.rindex(b"token_embd.weight") + len(b"token_embd.weight")  # tensor info: n_dims, dims, type, offset
    struct.pack_into("<I", data, at + 4 + 8 * struct.unpack_from("<I", data, at)[0], 36)  # bitnet.cpp's I2_S
    i2_s.write_bytes(bytes(data))
    return {"bitnet": plain, "bitnet-b1.58": i2_s}


@pytest.fixture
def models(tmp_path) -> Path:
    return tmp_path / "home" / "data" / "models"


@pytest.fixture
def trit(tmp_path, monkeypatch):
    """`trit` in this process (click's runner), with its own TRIT_HOME."""
    from trit.app.cli import cli

    monkeypatch.setenv("TRIT_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    return lambda *args, input=None: runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture
def server(monkeypatch):
    srv = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setattr(download, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    yield srv
    srv.stop()


def nothing_left(models: Path) -> bool:
    partial = models / registry.PARTIAL_DIR
    return registry.installed(models) == [] and not any(p for p in partial.glob("*") if p.suffix != ".lock")


# ---- import --------------------------------------------------------------------------------------------------------


def test_import_copies_the_file_with_its_checksum_and_header(gguf_file, models):
    m = importing.import_model(gguf_file, models)
    assert (m.name, m.backend, m.architecture, m.file_type, m.context_length, m.verified) == (
        NAME, "llama.cpp", "llama", "F32", 512, True)
    assert m.source == f"local:{gguf_file.resolve()}" and m.revision is None
    assert sorted(p.name for p in m.path.iterdir()) == sorted([FILE, registry.MANIFEST_FILE])
    manifest = json.loads((m.path / registry.MANIFEST_FILE).read_text())
    assert manifest["backend"] == "llama.cpp" and manifest["file_type"] == "F32"
    assert manifest["files"] == {FILE: {"size": gguf_file.stat().st_size, "sha256": sha256(gguf_file)}}
    assert engine.find_gguf(m.path) == m.path / FILE  # what engine.load runs for the model folder
    assert registry.verify(m) == [] and registry.installed(models) == [m] and registry.locate(models, NAME) == m
    with pytest.raises(engine.EngineError, match=f"a model named '{NAME}' is already installed"):
        importing.import_model(gguf_file, models)
    # a folder holding one GGUF is that GGUF; a copy of an installed model's folder keeps its origin
    again = importing.import_model(m.path, models, name="copy")
    assert (again.name, again.source, again.backend) == ("copy", m.source, "llama.cpp")


@pytest.mark.parametrize("arch", ["bitnet", "bitnet-b1.58"])
def test_a_bitnet_gguf_is_refused_with_the_reason(trit, bitnet_ggufs, models, arch):
    r = trit("import", bitnet_ggufs[arch])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert r.stderr.startswith(f"trit: {bitnet_ggufs[arch]}: a BitNet GGUF (architecture '{arch}')")
    assert "SiLU" in r.stderr and "relu²" in r.stderr and "trit pull" in r.stderr
    assert nothing_left(models)


def test_files_that_are_no_chat_model_are_one_line_errors(trit, tmp_path, gguf_file, models):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_file.read_bytes()[: gguf_file.stat().st_size // 2])
    r = trit("import", cut)
    assert r.exit_code == 1 and r.stderr.startswith(f"trit: {cut}: truncated") and r.stderr.count("\n") == 1
    embedder = gguf_models.write_arch(tmp_path / "embedder.gguf", "bert", with_vocabulary=True)
    r = trit("import", embedder)
    assert r.exit_code == 1 and "does not generate text" in r.stderr and r.stderr.count("\n") == 1
    r = trit("import", tmp_path / "missing.gguf")
    assert r.exit_code == 1 and r.stderr == f"trit: {tmp_path / 'missing.gguf'}: file not found\n"
    assert nothing_left(models)


# ---- list, verify, choose, remove ----------------------------------------------------------------------------------


def test_models_shows_the_backend_and_quantization_and_rm_removes_a_gguf(trit, gguf_file, tiny_model, models):
    r = trit("import", gguf_file)
    assert r.exit_code == 0 and f"{NAME} is ready (llama.cpp, llama F32)" in r.stdout
    assert trit("import", tiny_model, "--name", "bitnet-tiny").exit_code == 0
    header, *rows = trit("models").stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "BACKEND", "FAMILY", "QUANT", "SOURCE", "REVISION", "VERIFIED"]
    cells = {r.split()[0] if not r.startswith("*") else r.split()[1]: r.split() for r in rows}  # size: 2 cells
    assert cells[NAME][3:6] + cells[NAME][-2:] == ["llama.cpp", "llama", "F32", "-", "yes"]
    assert f"local:{gguf_file.resolve()}" in rows[0]
    assert cells["bitnet-tiny"][0] == "*" and cells["bitnet-tiny"][4:7] == ["bitnet", "bitnet", "ternary"]  # newest
    listed = {m["name"]: m for m in json.loads(trit("models", "--json").stdout)}
    assert {k: listed[NAME][k] for k in ("backend", "architecture", "file_type", "context_length", "verified")} == {
        "backend": "llama.cpp", "architecture": "llama", "file_type": "F32", "context_length": 512, "verified": True}
    assert listed["bitnet-tiny"]["backend"] == "bitnet"

    copy = models / NAME / FILE
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x01")
    r = trit("models", "--verify")
    assert r.exit_code == 1 and f"{NAME}: damaged: {FILE}" in r.stderr

    r = trit("rm", NAME, "--yes")
    assert r.exit_code == 0 and f"removed {NAME}" in r.stdout and not (models / NAME).exists()
    assert [m.name for m in registry.installed(models)] == ["bitnet-tiny"]


def test_choose_model_takes_gguf_files_folders_and_installed_names(gguf_file, models, monkeypatch, tmp_path):
    from trit.app.service import choose_model
    from trit.app.settings import Settings

    monkeypatch.setenv("TRIT_HOME", str(tmp_path / "home"))
    by_file = choose_model(str(gguf_file), Settings())
    assert by_file.path == gguf_file.resolve() and by_file.name == str(gguf_file.resolve())
    assert choose_model(str(gguf_file.parent), Settings()).path == gguf_file.resolve()
    importing.import_model(gguf_file, models)
    assert (choose_model(NAME, Settings()).name, choose_model(NAME, Settings()).path) == (NAME, models / NAME)
    assert choose_model(None, Settings()).name == NAME  # the newest installed, whatever its backend


# ---- pull ----------------------------------------------------------------------------------------------------------


def test_pull_of_a_repository_with_one_gguf_installs_just_that_file(server, gguf_file, models):
    data = gguf_file.read_bytes()
    repo = server.add_repo("someone/Tiny-GGUF", files={"Tiny-Llama-F32.gguf": data, "README.md": b"# tiny\n",
                                                        "config.json": b"{}"})
    server.drop["Tiny-Llama-F32.gguf"] = [len(data) // 3]  # the same resumable download as BitNet checkpoints
    m = download.pull("someone/Tiny-GGUF", models)
    assert (m.name, m.backend, m.source, m.revision, m.file_type) == (
        NAME, "llama.cpp", "hf:someone/Tiny-GGUF", repo.commit, "F32")
    assert sorted(p.name for p in m.path.iterdir()) == ["Tiny-Llama-F32.gguf", registry.MANIFEST_FILE]
    assert m.files == {"Tiny-Llama-F32.gguf": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert [g.range_start for g in server.gets("Tiny-Llama-F32.gguf")] == [None, len(data) // 3]
    assert server.gets("README.md") == [] and server.gets("config.json") == []
    server.requests.clear()
    # installed at that commit: no download
    assert download.pull("someone/Tiny-GGUF", models, revision=repo.commit) == m
    assert server.gets("Tiny-Llama-F32.gguf") == []


def test_pull_of_one_gguf_among_several(server, gguf_file, trit, models):
    data = gguf_file.read_bytes()
    server.add_repo("someone/many", files={"tiny-Q4_K_M.gguf": data, "tiny-Q8_0.gguf": data, "F16/tiny-f16.gguf": data,
                                           "mmproj-tiny-f16.gguf": data, "README.md": b"hi"})
    r = trit("pull", "someone/many")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr == ("trit: someone/many holds 3 GGUF models (F16/tiny-f16.gguf, tiny-Q4_K_M.gguf, "
                        "tiny-Q8_0.gguf): choose one with --file, e.g. `trit pull someone/many --file "
                        "F16/tiny-f16.gguf`\n")
    r = trit("pull", "someone/many", "--file", "tiny-Q5_K_M.gguf")
    assert r.exit_code == 1 and r.stderr.startswith("trit: someone/many has no tiny-Q5_K_M.gguf at ")
    assert r.stderr.endswith("its GGUF files: F16/tiny-f16.gguf, tiny-Q4_K_M.gguf, tiny-Q8_0.gguf\n")
    assert trit("pull", "--file", "tiny-Q8_0.gguf").exit_code == 2  # the repository is needed
    assert nothing_left(models)

    r = trit("pull", "someone/many", "--file", "F16/tiny-f16.gguf")
    assert r.exit_code == 0, r.stderr
    assert "tiny-f16 is ready (llama.cpp, llama F32)" in r.stdout
    assert sorted(p.name for p in (models / "tiny-f16").iterdir()) == sorted([registry.MANIFEST_FILE, "tiny-f16.gguf"])
    r = trit("pull", "someone/many", "--file", "tiny-Q8_0.gguf", "--name", "q8")
    assert r.exit_code == 0 and registry.locate(models, "q8").backend == "llama.cpp"
    assert [g.filename for g in server.requests if g.method == "GET" and g.status == 200
            and g.filename.endswith(".gguf")] == ["F16/tiny-f16.gguf", "tiny-Q8_0.gguf"]


def test_pull_refuses_a_bitnet_gguf_after_its_header(server, bitnet_ggufs, models):
    data = bitnet_ggufs["bitnet"].read_bytes()
    server.add_repo("someone/bitnet-gguf", files={"ggml-model-tq2_0.gguf": data})
    seen = []
    with pytest.raises(download.HubError, match=r"^someone/bitnet-gguf/ggml-model-tq2_0.gguf: a BitNet GGUF .*SiLU"):
        download.pull("someone/bitnet-gguf", models, progress=lambda p: seen.append(p.file_done))
    assert max(seen) < len(data) // 4  # stopped once the header was in, not after the whole file
    assert nothing_left(models) and not registry.partial_folder(models, "ggml-model-tq2_0").exists()


# ---- the real command ----------------------------------------------------------------------------------------------


def run(tmp_path, *args, env=None):
    env = {**os.environ, "TRIT_HOME": str(tmp_path / "home"), **(env or {})}
    return subprocess.run(trit_command() + [str(a) for a in args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, input="", env=offline_env(env))


@needs_llama_cpp
def test_ask_an_installed_gguf_model_and_continue(tmp_path, gguf_file):
    assert run(tmp_path, "import", gguf_file).returncode == 0
    r = run(tmp_path, "ask", "-m", NAME, "--max-tokens", 8, "--seed", 1, "--json", "hi")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["role"] == "assistant" and first["model"] == NAME
    assert first["prompt_tokens"] > 0 and 0 < first["generated_tokens"] <= 8 and first["reused_tokens"] == 0
    assert first["finish_reason"] in ("stop", "length") and first["decode_tok_s"] > 0
    r = run(tmp_path, "ask", "-c", "--max-tokens", 8, "--seed", 1, "--json", "and again")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert second["conversation_id"] == first["conversation_id"] and second["model"] == NAME
    assert second["prompt_tokens"] > first["prompt_tokens"]  # the first turn is in the prompt
    shown = json.loads(run(tmp_path, "history", "show", first["conversation_id"], "--json").stdout)
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant", "user", "assistant"]


def test_without_llama_cpp_gguf_models_install_and_list_and_chat_says_what_to_install(tmp_path, gguf_file):
    shadow = tmp_path / "shadow" / "llama_cpp"  # a llama_cpp package that is not there
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named llama_cpp')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    r = run(tmp_path, "import", gguf_file, env=env)
    assert r.returncode == 0 and f"{NAME} is ready" in r.stdout, r.stderr
    r = run(tmp_path, "models", env=env)
    assert r.returncode == 0 and "llama.cpp" in r.stdout
    r = run(tmp_path, "ask", "-m", NAME, "--no-log", "hi", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == ("trit: GGUF models run through llama-cpp-python, which is not installed: "
                        'pip install "trit[gguf]"\n')
