"""Pull from a real HTTP server standing in for the Hugging Face Hub (tests/hub_server.py), import from a folder,
list, verify and remove: resumable, verified, and never half-installed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hub_server import HubServer
from network_guard import offline_env
from tqdm import tqdm

from trit import engine
from trit.app.cli import human_size
from trit.engine.models import download, importing, registry
from trit.engine.tools import synthetic

REPO = download.DEFAULT_REPO
NAME = "bitnet-b1.58-2B-4T"
WEIGHTS = "model.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def source(tiny_model):
    return Path(tiny_model)


@pytest.fixture
def server(source, monkeypatch):
    srv = HubServer().start()
    srv.add_repo(REPO, source, extra={"README.md": b"# BitNet\n", ".gitattributes": b"*.safetensors filter=lfs\n"})
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setattr(download, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    yield srv
    srv.stop()


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


def assert_nothing_ready(models: Path) -> None:
    assert registry.installed(models) == []
    assert not (models / NAME).exists()


class Interrupt:
    """A progress callback that presses Ctrl-C once `filename` has `after` bytes on disk."""

    def __init__(self, filename: str, after: int):
        self.filename, self.after = filename, after

    def __call__(self, p: registry.Progress) -> None:
        if p.filename == self.filename and p.file_done > self.after:
            raise KeyboardInterrupt


# ---- pull ----------------------------------------------------------------------------------------------------------


def test_pull_installs_verified_files_that_load_with_the_server_gone(server, source, models):
    m = download.pull(REPO, models)
    assert (m.name, m.source, m.revision, m.verified, m.backend) == (NAME, f"hf:{REPO}", server.repos[REPO].commit,
                                                                    True, "bitnet")
    expected = sorted(p.name for p in source.iterdir() if p.is_file())
    files = sorted(p.name for p in m.path.iterdir() if p.is_file())
    assert files == sorted(expected + [registry.MANIFEST_FILE])  # no README
    assert any((m.path / "trit").glob("*.safetensors"))  # weights for this CPU derived once, at install
    manifest = json.loads((m.path / registry.MANIFEST_FILE).read_text())
    assert manifest["revision"] == server.repos[REPO].commit and manifest["verified"] is True
    assert manifest["files"] == {f: {"size": (source / f).stat().st_size, "sha256": sha256(source / f)}
                                 for f in expected}
    assert not registry.partial_folder(models, NAME).exists()
    server.stop()
    model = engine.load(m.path)  # the network guard is on and the hub is gone
    assert model.logits([1, 2, 3]).tolist() == engine.load(source).logits([1, 2, 3]).tolist()


def test_pull_of_an_installed_revision_downloads_nothing(server, models):
    download.pull(REPO, models)
    server.requests.clear()
    m = download.pull(REPO, models, revision=server.repos[REPO].commit)
    assert m.verified and [r.path.split("?")[0] for r in server.requests] == [
        f"/api/models/{REPO}/revision/{server.repos[REPO].commit}"]


def test_a_dropped_connection_resumes_with_a_range_request(server, source, models):
    size = (source / WEIGHTS).stat().st_size
    server.drop[WEIGHTS] = [size // 3]
    messages = []
    m = download.pull(REPO, models, log=messages.append)
    gets = server.gets(WEIGHTS)
    assert [g.range_start for g in gets] == [None, size // 3] and gets[1].status == 206
    assert server.bytes_sent(WEIGHTS) < 2 * size
    assert sha256(m.path / WEIGHTS) == sha256(source / WEIGHTS)
    assert any(WEIGHTS in msg and "retrying" in msg for msg in messages)


def test_ctrl_c_keeps_the_partial_download_and_the_next_pull_continues_it(server, source, models):
    size = (source / WEIGHTS).stat().st_size
    with pytest.raises(KeyboardInterrupt):
        download.pull(REPO, models, progress=Interrupt(WEIGHTS, size // 2))
    assert_nothing_ready(models)
    kept = registry.partial_folder(models, NAME) / (WEIGHTS + ".incomplete")
    assert size // 2 < kept.stat().st_size < size
    first = server.bytes_sent(WEIGHTS)
    server.requests.clear()

    seen = []
    m = download.pull(REPO, models, progress=seen.append)
    gets = server.gets(WEIGHTS)
    assert len(gets) == 1 and gets[0].range_start == kept_size(seen) > 0
    assert server.gets("config.json") == [] and server.gets("tokenizer.json") == []  # finished files are kept
    assert first + server.bytes_sent(WEIGHTS) < 2 * size
    assert seen[0].done > 0 and seen[-1].done == seen[-1].total  # the bar starts where the data stopped
    assert sha256(m.path / WEIGHTS) == sha256(source / WEIGHTS) and m.verified


def kept_size(progress: list) -> int:
    return next(p.file_done for p in progress if p.filename == WEIGHTS)


def test_the_server_going_away_mid_file_is_a_clear_error_and_the_data_is_kept(server, source, models):
    size = (source / WEIGHTS).stat().st_size
    server.drop[WEIGHTS] = [size // 4]
    server.gone_after_drop = True
    with pytest.raises(download.HubError, match="cannot reach the model hub.*run the same command again"):
        download.pull(REPO, models)
    assert_nothing_ready(models)
    assert (registry.partial_folder(models, NAME) / (WEIGHTS + ".incomplete")).stat().st_size == size // 4

    again = HubServer().start()  # the hub is back (at another address)
    try:
        again.add_repo(REPO, source, commit=server.repos[REPO].commit)
        m = download.pull(REPO, models, endpoint=again.url)
        assert [g.range_start for g in again.gets(WEIGHTS)] == [size // 4]
        assert sha256(m.path / WEIGHTS) == sha256(source / WEIGHTS)
    finally:
        again.stop()


def test_no_server_is_a_clear_error(server, models):
    server.stop()
    with pytest.raises(download.HubError, match=r"cannot reach the model hub at http://127\.0\.0\.1"):
        download.pull(REPO, models)
    assert_nothing_ready(models)


def test_a_server_that_ignores_range_starts_the_file_over(server, source, models):
    server.drop[WEIGHTS] = [1000]
    server.ignore_range = True
    m = download.pull(REPO, models)
    assert [g.status for g in server.gets(WEIGHTS)] == [200, 200]
    assert sha256(m.path / WEIGHTS) == sha256(source / WEIGHTS)


@pytest.mark.parametrize("filename, kind", [(WEIGHTS, "sha256"), ("tokenizer_config.json", "git blob sha1")])
def test_a_checksum_mismatch_names_the_file_and_fetches_it_again(server, source, models, filename, kind):
    server.corrupt[filename] = 1
    messages = []
    m = download.pull(REPO, models, log=messages.append)
    assert len(server.gets(filename)) == 2
    assert any(msg.startswith(f"{filename}: {kind}") and "downloading it again" in msg for msg in messages)
    assert sha256(m.path / filename) == sha256(source / filename) and m.verified


def test_a_second_mismatch_fails_and_nothing_is_installed(server, models):
    server.corrupt[WEIGHTS] = 2
    with pytest.raises(download.ChecksumError, match=f"{WEIGHTS} of {REPO} does not match the sha256"):
        download.pull(REPO, models)
    assert_nothing_ready(models)
    assert not (registry.partial_folder(models, NAME) / (WEIGHTS + ".incomplete")).exists()


def test_sizes_and_checksums_from_head_when_model_info_lacks_them(server, source, models):
    server.blobs = False
    m = download.pull(REPO, models)
    heads = {r.filename for r in server.requests if r.method == "HEAD"}
    assert heads == {p.name for p in source.iterdir() if p.is_file()}
    assert m.verified and sha256(m.path / WEIGHTS) == sha256(source / WEIGHTS)
    server.blobs, server.corrupt[WEIGHTS] = False, 2  # the X-Linked-Etag sha256 is checked too
    with pytest.raises(download.ChecksumError):
        download.pull(REPO, models, name="again")


@pytest.mark.parametrize("repo, revision, message", [
    ("nobody/nothing", None, "no model repository nobody/nothing on http://127.0.0.1"),
    (REPO, "v9", f"{REPO} has no revision 'v9'"),
])
def test_unknown_repository_or_revision(server, models, repo, revision, message):
    with pytest.raises(download.HubError, match=message):
        download.pull(repo, models, revision=revision)
    assert registry.installed(models) == [] and not registry.partial_folder(models, repo.rsplit("/")[1]).exists()


def test_a_missing_file_is_a_clear_error(server, models):
    server.status[WEIGHTS] = [404]
    with pytest.raises(download.HubError, match=f"{WEIGHTS} is not in {REPO} at revision"):
        download.pull(REPO, models)
    assert_nothing_ready(models)


@pytest.mark.parametrize("key", ["info", WEIGHTS])
def test_server_errors_are_retried_then_reported(server, source, models, key):
    server.status[key] = [500]
    assert download.pull(REPO, models).verified  # one 500 is retried
    shutil.rmtree(models)
    server.status[key] = [500] * (len(download.RETRY_DELAYS) + 1)
    with pytest.raises(download.HubError, match="answered HTTP 500.*try again later"):
        download.pull(REPO, models)
    assert_nothing_ready(models)


def test_a_repository_without_the_packed_weights_is_refused(server, source, models):
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file() and p.name != WEIGHTS}
    server.add_repo("someone/shards", files={**files, "model-00001-of-00002.safetensors": b"x"})
    with pytest.raises(download.HubError, match="someone/shards has sharded weights"):
        download.pull("someone/shards", models)
    server.add_repo("someone/nothing", files={"README.md": b"hi"})
    with pytest.raises(download.HubError, match="has no config.json, tokenizer.json, model.safetensors"):
        download.pull("someone/nothing", models)


def test_a_repository_that_is_not_bitnet_is_refused_before_its_weights(server, source, models):
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "model_type": "llama"}).encode()
    server.add_repo("someone/llama", files=files)
    with pytest.raises(download.HubError, match="someone/llama is not a model Trit can run: .*model_type is 'llama'"):
        download.pull("someone/llama", models)
    assert server.gets(WEIGHTS) == []
    assert registry.installed(models) == [] and not registry.partial_folder(models, "llama").exists()


def test_too_little_disk_space_is_refused_before_downloading(server, models, monkeypatch):
    monkeypatch.setattr(registry.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1000))
    with pytest.raises(registry.DiskSpaceError, match=r"not enough disk space .* 509.2 KB still to write, 1.0 KB free"):
        download.pull(REPO, models)
    assert [r for r in server.requests if "/resolve/" in r.path or "/cdn/" in r.path] == []
    assert_nothing_ready(models)


real_open_for_append = download._open_for_append


class FillsUp:
    """A file that raises the given error once `limit` bytes have been written to it."""

    def __init__(self, path, limit, error):
        self.f, self.left, self.error = open(path, "ab"), limit, error

    def write(self, data):
        if len(data) > self.left:
            self.f.write(data[: self.left])  # what fits, as a real short write leaves it
            self.left = 0
            raise self.error
        self.left -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_while_writing_is_a_clear_error_and_keeps_the_data(server, source, models, monkeypatch):
    monkeypatch.setattr(download, "_open_for_append", lambda path: FillsUp(
        path, 100_000 if path.name.startswith(WEIGHTS) else 1 << 30, OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(registry.DiskSpaceError, match=f"the disk is full while writing {WEIGHTS}.*kept in"):
        download.pull(REPO, models)
    assert_nothing_ready(models)
    assert (registry.partial_folder(models, NAME) / (WEIGHTS + ".incomplete")).stat().st_size == 100_000
    monkeypatch.setattr(download, "_open_for_append", real_open_for_append)
    assert sha256(download.pull(REPO, models).path / WEIGHTS) == sha256(source / WEIGHTS)
    assert server.gets(WEIGHTS)[-1].range_start == 100_000


def test_a_new_revision_replaces_the_installed_one(server, source, models, tmp_path):
    first = download.pull(REPO, models)
    other = synthetic.write_model(tmp_path / "other", "tiny", seed=1)
    server.add_repo(REPO, other)
    second = download.pull(REPO, models)
    assert second.revision != first.revision and second.revision == server.repos[REPO].commit
    assert sha256(second.path / WEIGHTS) == sha256(other / WEIGHTS) and len(registry.installed(models)) == 1


# ---- import, list, verify, remove ----------------------------------------------------------------------------------


def test_import_a_folder(source, models):
    m = importing.import_model(source, models)
    assert (m.name, m.source, m.revision, m.verified) == (source.name, f"local:{source.resolve()}", None, True)
    assert m.files[WEIGHTS] == {"size": (source / WEIGHTS).stat().st_size, "sha256": sha256(source / WEIGHTS)}
    assert engine.load(m.path).logits([5]).shape == (1, 1024)
    with pytest.raises(engine.EngineError, match="already installed"):
        importing.import_model(source, models)
    assert importing.import_model(source, models, name="copy").name == "copy"
    assert [p.name for p in (models / registry.PARTIAL_DIR).iterdir() if not p.name.endswith(".lock")] == []


def test_import_a_copied_pull_keeps_its_origin_and_refuses_a_damaged_copy(server, models, tmp_path):
    pulled = download.pull(REPO, models)
    copy = tmp_path / "usb" / NAME
    shutil.copytree(pulled.path, copy)
    m = importing.import_model(copy, tmp_path / "elsewhere")
    assert (m.source, m.revision) == (pulled.source, pulled.revision)
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(engine.CheckpointError, match=f"{WEIGHTS} differs from what its trit-model.json records"):
        importing.import_model(copy, tmp_path / "third")
    assert registry.installed(tmp_path / "third") == []


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "has no config.json"),
    (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "model_type is 'llama'"),
    (lambda d: (d / "notes.txt").write_text("hello"), "has no config.json"),
])
def test_import_a_folder_that_is_not_a_checkpoint(tmp_path, models, make, message):
    folder = tmp_path / "stuff"
    folder.mkdir()
    make(folder)
    with pytest.raises(engine.CheckpointError, match=f"{re.escape(str(folder))} is not a BitNet b1.58 model folder: "
                                                     f".*{message}"):
        importing.import_model(folder, models)
    assert registry.installed(models) == []


def test_import_a_checkpoint_with_broken_weights(source, tmp_path, models):
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    with open(broken / WEIGHTS, "r+b") as f:
        f.truncate((broken / WEIGHTS).stat().st_size - 10)
    with pytest.raises(engine.CheckpointError) as e:
        importing.import_model(broken, models)
    assert str(broken) in str(e.value) and "\n" not in str(e.value) and registry.PARTIAL_DIR not in str(e.value)
    assert registry.installed(models) == []
    assert [p.name for p in (models / registry.PARTIAL_DIR).iterdir() if not p.name.endswith(".lock")] == []


def test_list_locate_verify_remove(source, models):
    a = importing.import_model(source, models, name="a")
    b = importing.import_model(source, models, name="b")
    assert [m.name for m in registry.installed(models)] == ["a", "b"]  # oldest first
    assert registry.locate(models, "b").path == b.path
    with pytest.raises(registry.ModelNotFound, match="no model named 'zz' — `trit models` lists them, `trit pull`"):
        registry.locate(models, "zz")
    assert registry.verify(a) == []
    data = bytearray((a.path / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x10
    (a.path / WEIGHTS).write_bytes(bytes(data))
    (a.path / "tokenizer.json").unlink()
    assert registry.verify(a) == ["model.safetensors", "tokenizer.json"]
    assert registry.locate(models, "a").verified is False
    (models / "stray").mkdir()  # a folder without a manifest is no model
    (models / "stray" / "config.json").write_text("{}")
    assert [m.name for m in registry.installed(models)] == ["a", "b"]
    registry.remove(models, "a")
    assert [m.name for m in registry.installed(models)] == ["b"] and not a.path.exists()
    with pytest.raises(registry.ModelNotFound):
        registry.remove(models, "a")
    with pytest.raises(registry.ModelNotFound):
        registry.remove(models, "stray")


# ---- the trit command ----------------------------------------------------------------------------------------------


@pytest.fixture
def trit(tmp_path, monkeypatch):
    from trit.app.cli import cli

    monkeypatch.setenv("TRIT_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


def test_cli_pull_models_default_rm(server, trit, tmp_path):
    r = trit("pull")
    assert r.exit_code == 0, r.stderr
    assert f"{NAME} is ready" in r.stdout and server.repos[REPO].commit[:7] in r.stdout
    total = sum(len(data) for f, data in server.repos[REPO].files.items() if f in registry.MODEL_FILES)
    # the bar: bytes done of the total, speed, elapsed<left
    assert re.search(rf"{tqdm.format_sizeof(total)}B/{tqdm.format_sizeof(total)}B \[\d\d:\d\d<\d\d:\d\d, *"
                     rf"[\d.]+[kMG]?B/s", r.stderr), r.stderr

    models = tmp_path / "home" / "data" / "models"
    r = trit("models")
    header, row, demo = r.stdout.splitlines()
    assert demo.split()[0] == "demo"  # the demo that ships inside Trit, after the installed models
    assert header.split() == ["NAME", "SIZE", "BACKEND", "FAMILY", "QUANT", "SOURCE", "REVISION", "VERIFIED"]
    size = human_size(registry.locate(models, NAME).size_bytes)
    assert row.split() == ["*", NAME, *size.split(), "bitnet", "bitnet", "ternary", f"hf:{REPO}",
                           server.repos[REPO].commit[:7], "yes"]

    importing.import_model(models / NAME, models, name="second")
    assert trit("models", "--default", NAME).exit_code == 0
    from trit.app.settings import load_settings
    assert load_settings().default_model == NAME
    assert [line.split()[0] for line in trit("models").stdout.splitlines()[1:]] == ["*", "second", "demo"]
    listed = json.loads(trit("models", "--json").stdout)
    assert [(m["name"], m["default"], m["verified"], m["backend"]) for m in listed] == [
        (NAME, True, True, "bitnet"), ("second", False, True, "bitnet"), ("demo", False, None, "bitnet")]

    r = trit("rm", NAME, input="n\n")
    assert r.exit_code == 1 and (models / NAME).is_dir()
    r = trit("rm", NAME, "--yes")
    assert r.exit_code == 0 and not (models / NAME).exists() and load_settings().default_model == ""
    r = trit("models", "--default", NAME)
    assert r.exit_code == 1 and r.stderr.startswith(f"trit: no model named '{NAME}'") and r.stderr.count("\n") == 1


def test_cli_models_verify_reports_damage(source, trit, tmp_path):
    assert trit("import", str(source), "--name", "m").exit_code == 0
    assert trit("models").stdout.splitlines()[1].split()[-1] == "yes"
    weights = tmp_path / "home" / "data" / "models" / "m" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    r = trit("models", "--verify")
    assert r.exit_code == 1 and f"m: damaged: {WEIGHTS}" in r.stderr
    assert r.stdout.splitlines()[1].split()[-1] == "NO"


def test_cli_errors_are_one_line(server, trit, tmp_path):
    r = trit("pull", "nobody/nothing")
    assert r.exit_code == 1 and r.stderr.startswith("trit: no model repository nobody/nothing")
    assert r.stderr.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = trit("import", str(empty))
    assert r.exit_code == 1 and r.stderr == f"trit: {empty} is not a BitNet b1.58 model folder: it has no config.json\n"
    r = trit("rm", "nothing", "--yes")
    assert r.exit_code == 1 and r.stderr.startswith("trit: no model named 'nothing'")
    assert trit("models").stderr.startswith("no models installed")  # beside the table, which lists the demo


def test_cli_ctrl_c_during_pull_says_how_to_continue(server, trit, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_open_for_append", lambda path: FillsUp(
        path, 50_000 if path.name.startswith(WEIGHTS) else 1 << 30, KeyboardInterrupt()))
    r = trit("pull", "--revision", "main")
    assert r.exit_code == 130
    assert "interrupted — what was downloaded is kept; run `trit pull --revision main` again" in r.stderr
    partial = tmp_path / "home" / "data" / "models" / registry.PARTIAL_DIR / NAME / (WEIGHTS + ".incomplete")
    assert partial.stat().st_size == 50_000
    monkeypatch.setattr(download, "_open_for_append", real_open_for_append)
    assert trit("pull", "--revision", "main").exit_code == 0
    assert server.gets(WEIGHTS)[-1].range_start == 50_000


def test_the_real_command_pulls_with_hf_hub_offline_set(server, tmp_path):
    """HF_HUB_OFFLINE=1 (as Trit's tests and users may set it) does not block the one explicit download."""
    from test_cli import trit_command

    # the installed trit (as CI has it); the checkout's own engine/ holds no built library
    env = offline_env({**os.environ, "TRIT_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
                       "HF_ENDPOINT": server.url})
    r = subprocess.run(trit_command() + ["pull"], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert registry.locate(tmp_path / "home" / "data" / "models", NAME).verified


def test_a_client_that_hangs_up_leaves_nothing_on_stderr(server, capsys):
    """CI found `trit pull`'s one-line error preceded by the stand-in hub's traceback of a connection the client had
    reset: run in-process, the CLI's captured stderr held it. A hang-up is the client's business."""
    import socket
    import struct
    import time

    port = int(server.url.rsplit(":", 1)[1])
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
        s.sendall(f"GET /api/models/{REPO} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        s.close()
    time.sleep(0.5)
    assert "Traceback" not in capsys.readouterr().err
