"""What a careless user or a hostile file gives `trit` (issue 17), through the installed command as a user meets it:
one line on stderr that says what is wrong, exit 1, no traceback, and nothing half-stored."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import numpy as np
import pytest
from network_guard import offline_env
from test_ask import stop_mid_answer
from test_cli import trit_command

from trit.assets import DEMO_MODEL


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def trit(home, tmp_path):
    def run(*args, stdin: bytes = b""):
        argv = trit_command() + [a if isinstance(a, bytes) else str(a) for a in args]
        return subprocess.run(argv, input=stdin, capture_output=True, cwd=tmp_path, timeout=300,
                              env=offline_env({**os.environ, "TRIT_HOME": str(home)}))

    return run


def one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    """The error: the last line on stderr (a progress bar may stand before it, on lines of its own)."""
    err = r.stderr.decode("utf-8", "replace").strip()
    assert r.returncode == 1, err
    last = err.split("\n")[-1]
    assert "Traceback" not in err and last.startswith("trit: ") and "trit: " not in err[:-len(last)], err
    for w in words:
        assert w in last, err
    return last


def installed_models(trit) -> list:
    """`trit models --json` but the demo, which it lists too: it ships inside Trit."""
    r = trit("models", "--json")
    assert r.returncode == 0, r.stderr
    return [m for m in json.loads(r.stdout) if not m["builtin"]]


def conversations(trit) -> list:
    r = trit("history", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("log", [[], ["--no-log"]])
def test_stdin_that_is_not_utf8_is_refused_naming_the_byte(trit, log):
    r = trit("ask", "--model", "demo", *log, "hi", stdin=b"caf\xe9\n")
    one_line(r, "not UTF-8", "byte 3", "0xe9")
    assert conversations(trit) == []


def test_a_pipe_of_binary_junk_is_refused_and_nothing_is_stored(trit):
    junk = np.random.default_rng(17).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    one_line(trit("ask", "--model", "demo", "what is this", stdin=junk), "not UTF-8")
    assert conversations(trit) == []


def test_a_question_that_is_not_utf8_is_refused(trit):
    one_line(trit("ask", "--model", "demo", b"caf\xe9"), "not UTF-8")
    assert conversations(trit) == []


@pytest.mark.parametrize("flag, value, name", [("--temperature", "nan", "temperature"),
                                               ("--temperature", "inf", "temperature"),
                                               ("--top-p", "nan", "top_p"), ("--seed", "-1", "seed")])
def test_sampling_flags_out_of_range_are_one_line_before_anything_is_stored(trit, flag, value, name):
    one_line(trit("ask", "--model", "demo", flag, value, "hi"), name)
    assert conversations(trit) == []


@pytest.mark.parametrize("line, name", [("temperature = -1", "temperature"), ("top_p = 5", "top_p"),
                                        ("max_tokens = 0", "max_tokens"), ("temperature = nan", "temperature")])
def test_sampling_settings_out_of_range_in_config_toml_name_the_file_and_field(trit, home, line, name):
    config = home / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(line + "\n")
    one_line(trit("ask", "--model", "demo", "hi"), str(config), name)


def test_a_model_whose_generation_config_is_out_of_range_is_not_imported(trit, tmp_path):
    folder = tmp_path / "bad-defaults"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "top_p": 5}))
    one_line(trit("import", folder), "generation_config.json", "top_p")
    assert installed_models(trit) == []


def test_config_toml_is_readable_by_its_owner_only(trit, home, tmp_path):
    """It holds the system prompt, as history.db holds the conversations."""
    folder = tmp_path / "mine"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    assert trit("import", folder).returncode == 0
    r = trit("models", "--default", "mine")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((home / "config" / "config.toml").stat().st_mode) == 0o600


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
@pytest.mark.parametrize("what", ["weights", "gguf-import", "gguf-ask", "config"])
def test_a_named_pipe_in_place_of_a_model_file_is_refused_not_waited_on(trit, tmp_path, what):
    """A FIFO blocks open() until a writer comes: `trit ask` and `trit import` used to wait forever."""
    folder = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    fifo = {"weights": folder / "model.safetensors", "config": folder / "config.json"}.get(what, tmp_path / "x.gguf")
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    args = {"weights": ("ask", "-m", folder, "hi"), "config": ("import", folder),
            "gguf-import": ("import", fifo), "gguf-ask": ("ask", "-m", fifo, "hi")}[what]
    one_line(trit(*args), "named pipe")


HUGE = "9" * 20  # past SQLite's 64-bit integers


@pytest.mark.parametrize("args", [("history", "show", HUGE), ("history", "rm", HUGE), ("history", "export", HUGE),
                                  ("ask", "--model", "demo", "--cid", HUGE, "hi")])
def test_an_id_past_sqlites_integers_is_no_conversation_not_an_overflow(trit, args):
    one_line(trit(*args), f"no conversation {HUGE}")


@pytest.mark.parametrize("args", [("history", "list", "-n", HUGE), ("history", "search", "rivers", "-n", HUGE)])
def test_a_huge_count_lists_everything(trit, args):
    r = trit(*args)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr


def test_more_threads_than_the_engine_takes_is_one_line_not_out_of_memory(trit):
    one_line(trit("ask", "--model", "demo", "--threads", 100000, "hi"), "threads: 100000 is more than 256")


@pytest.mark.parametrize("link", ["tokenizer_config.json", "LICENSE"])
@pytest.mark.parametrize("target", ["secret", "/proc/self/environ"])
def test_import_copies_no_link_that_leaves_the_model_folder(trit, tmp_path, home, link, target):
    folder = tmp_path / "linked"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    if target == "secret":
        target = tmp_path / "secret"
        target.write_text("HF_TOKEN=hf_private\n")
        target.chmod(0o600)
    (folder / link).unlink(missing_ok=True)
    (folder / link).symlink_to(target)
    one_line(trit("import", folder), link, "outside the model folder")
    assert not any((home / "data").rglob("*")) or installed_models(trit) == []
    assert not [p for p in home.rglob("*") if p.is_file() and b"HF_TOKEN" in p.read_bytes()]


def demo_copy(tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    return folder


@pytest.mark.parametrize("change, field", [
    ({"rope_scaling": [1, 2]}, "rope_scaling"), ({"head_dim": "32"}, "head_dim"),
    ({"eos_token_id": "x"}, "eos_token_id"), ({"rms_norm_eps": "tiny"}, "rms_norm_eps"),
    ({"num_hidden_layers": 10**7}, "num_hidden_layers"), ({"max_position_embeddings": 2**32 + 16}, "max_position"),
    ({"vocab_size": 2**40}, "vocab_size"),
])
def test_config_json_of_the_wrong_type_or_size_is_refused_naming_the_field(trit, tmp_path, change, field):
    folder = demo_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    one_line(trit("ask", "-m", folder, "--no-log", "hi"), "config.json", field)
    one_line(trit("import", folder), "config.json", field)


def test_config_json_nested_too_deep_is_refused(trit, tmp_path):
    folder = demo_copy(tmp_path)
    (folder / "config.json").write_text("[" * 100000 + "]" * 100000)
    one_line(trit("ask", "-m", folder, "--no-log", "hi"), "config.json", "nested")
    one_line(trit("import", folder), "config.json", "nested")


def rewrite_header(path, change) -> None:
    """The safetensors file with its JSON header changed by change(header) (the data stays as it was)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


NAME = "model.layers.0.mlp.down_proj.weight"


@pytest.mark.parametrize("change", [
    lambda h: h[NAME].update(data_offsets=[str(o) for o in h[NAME]["data_offsets"]]),
    lambda h: h[NAME].update(dtype=["U8"]),
    lambda h: h[NAME].update(shape=[2**70, 1]),
    lambda h: h[NAME].update(shape=[2**32, 2**32 + 1]),  # a product that wraps around in 64 bits
    lambda h: h[NAME].update(shape=[-1, 4]),
    lambda h: h.update(__metadata__=[1]),
], ids=["offsets-as-strings", "dtype-as-list", "shape-2^70", "shape-wraps", "shape-negative", "metadata-list"])
def test_a_safetensors_header_of_the_wrong_types_is_refused(trit, tmp_path, change):
    folder = demo_copy(tmp_path)
    rewrite_header(folder / "model.safetensors", change)
    one_line(trit("ask", "-m", folder, "--no-log", "hi"), "model.safetensors")


def test_sigterm_stops_the_answer_and_keeps_it_as_ctrl_c_does(make_model, home, tmp_path):
    import signal

    code, shown, _, stored = stop_mid_answer(home, make_model, tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert stored["finish_reason"] == "cancelled" and 0 < stored["generated_tokens"] < 3000
    assert stored["content"] and shown.rstrip("\n") == stored["content"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="no SIGHUP on this system")
def test_closing_the_terminal_keeps_the_answer_already_shown(make_model, home, tmp_path):
    import signal

    code, shown, _, stored = stop_mid_answer(home, make_model, tmp_path, signal.SIGHUP, close_stdout=True)
    assert code in (128 + signal.SIGHUP, 141)  # the hang-up, or the write that found the terminal gone first
    assert stored["finish_reason"] == "cancelled" and 0 < stored["generated_tokens"] < 3000
    assert stored["content"].startswith(shown.strip())


def test_a_turn_that_never_starts_leaves_no_question_behind(trit, tmp_path):
    """The model fails to load: neither the question nor an empty conversation is kept, and the next `-c` does not
    find two questions in a row."""
    broken = demo_copy(tmp_path, "broken")
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    one_line(trit("ask", "-m", broken, "first"), "model.safetensors")
    one_line(trit("ask", "-m", "demo", "--threads", 100000, "second"), "threads")
    assert conversations(trit) == []

    r = trit("ask", "-m", "demo", "--max-tokens", 4, "--json", "third")
    assert r.returncode == 0, r.stderr
    cid = json.loads(r.stdout)["conversation_id"]
    one_line(trit("ask", "-c", "-m", broken, "fourth"), "model.safetensors")
    shown = trit("history", "show", cid, "--json")
    assert [m["role"] for m in json.loads(shown.stdout)["messages"]] == ["user", "assistant"], shown.stderr
    assert len(conversations(trit)) == 1


def poke(path, tensor: str, value: bytes, index: int = 0) -> None:
    """Write `value` over element `index` of a tensor of a safetensors file, in place."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8:8 + n])[tensor]
    size = {"BF16": 2, "F16": 2, "F32": 4}[entry["dtype"]]
    at = 8 + n + entry["data_offsets"][0] + index * size
    raw[at:at + len(value)] = value
    path.write_bytes(bytes(raw))


BF16_NAN, BF16_HUGE = (0x7FC0).to_bytes(2, "little"), (0x7F7F).to_bytes(2, "little")  # NaN; 3.39e38


@pytest.mark.parametrize("tensor, value, words", [
    ("model.norm.weight", BF16_NAN, ("model.norm.weight", "NaN or infinity")),
    ("model.embed_tokens.weight", BF16_NAN, ("embed_tokens", "NaN or infinity")),
    ("model.layers.0.self_attn.q_proj.weight_scale", BF16_HUGE, ("q_proj.weight_scale", "weight scale")),
], ids=["nan-norm", "nan-embedding", "huge-scale"])
def test_a_model_whose_weights_give_nan_is_not_imported_and_not_run(trit, tmp_path, tensor, value, words):
    folder = demo_copy(tmp_path, "nan")
    poke(folder / "model.safetensors", tensor, value, index=7 if "embed" in tensor else 0)
    one_line(trit("import", folder), *words)
    assert installed_models(trit) == []
    if "embed" in tensor:
        return  # only the tokens whose rows are bad would meet it at run time
    # run without importing: one line, and the question is not kept (the turn never started)
    one_line(trit("ask", "-m", folder, "--max-tokens", 4, "hi"), *(words if "scale" in tensor else ("NaN",)))
    assert conversations(trit) == []


def test_a_foreign_sqlite_file_at_the_history_path_is_left_as_it_was(trit, home):
    import sqlite3

    db = home / "data" / "history.db"
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as c:
        c.execute("create table notes (body text)")
        c.execute("insert into notes values ('mine')")
    c.close()
    before = db.read_bytes()
    one_line(trit("history", "list"), "not a Trit history", "not changed")
    assert db.read_bytes() == before and not db.with_name("history.db-wal").exists()
