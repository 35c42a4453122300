"""The catalogue of models Trit pulls by name (issue 19): `trit pull falcon-e-3b`, `trit pull --list`, the size shown
before anything is downloaded, the family of every installed model, and a repository of a family Trit does not run
refused after its config.json, before any weights. Through the installed command, against the stand-in hub on
127.0.0.1 (tests/hub_server.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import test_tui
from hub_server import HubServer
from network_guard import offline_env
from test_cli import trit_command
from test_hostile_input import one_line
from test_tui import drive, frozen_app, running, started, steady, until
from tqdm import tqdm

from trit.app.service import ModelChoice
from trit.app.tui.app import TritApp
from trit.app.tui.screens.first_run import FirstRunScreen
from trit.engine.formats.checkpoint import CONFIG_FILE, WEIGHTS_FILE, widen_to_f32
from trit.engine.formats.safetensors_file import SafetensorsFile, write_safetensors
from trit.engine.models import catalogue, download, registry
from trit.engine.tools import synthetic

# the chat app tests' fixtures: TRIT_HOME and HOME of their own, a tiny model as the default
home, tiny, with_tiny = test_tui.home, test_tui.tiny, test_tui.with_tiny
FALCON = catalogue.find("falcon-e-1b")
# 28 layers of ternary q, k, v, o, gate, up, down packed 4 to a byte, and the bf16 embedding and untied head
FALCON_E_3B_BYTES = 28 * (2560 * 2560 * 2 + 2560 * 256 * 2 + 2560 * 10240 * 3) // 4 + 32768 * 2560 * 2 * 2


@pytest.fixture
def hub():
    srv = HubServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def trit(hub, tmp_path):
    """The installed trit with a TRIT_HOME of its own, the offline guard and HF_ENDPOINT the stand-in hub."""

    def run(*args):
        env = offline_env({**os.environ, "TRIT_HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.url})
        r = subprocess.run(trit_command() + [str(a) for a in args], capture_output=True, cwd=tmp_path, timeout=300,
                           env=env)
        r.err = r.stderr.decode("utf-8", "replace")
        r.out = r.stdout.decode("utf-8", "replace")
        return r

    return run


def installed(trit) -> list[dict]:
    r = trit("models", "--json")
    assert r.returncode == 0, r.err
    return [m for m in json.loads(r.out) if not m["builtin"]]


def falcon_e_folder(source, folder):
    """A tiny checkpoint in Falcon-E's on-disk format: LlamaForCausalLM with the bitnet quantizer (bitlinear: the
    scale divides), SiLU, no sub-norms, an untied bf16 lm_head; config.json with the keys of the real repository's.
    Made from the tiny synthetic BitNet model's tensors and tokenizer."""
    shutil.copytree(source, folder)
    cfg = json.loads((source / CONFIG_FILE).read_text())
    config = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
        "head_dim": cfg["hidden_size"] // cfg["num_attention_heads"], "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"], "initializer_range": 0.02, "intermediate_size": cfg["intermediate_size"],
        "is_bitnet_config": True, "max_position_embeddings": cfg["max_position_embeddings"], "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": cfg["num_attention_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"], "num_key_value_heads": cfg["num_key_value_heads"],
        "pretraining_tp": 1, "quantization_config": {"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"},
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 1000000.0, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": cfg["vocab_size"]}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    weights = SafetensorsFile(source / WEIGHTS_FILE)
    tensors = []
    for name, info in weights.tensors.items():
        if "sub_norm" in name:
            continue
        array = np.array(weights.array(name))
        if name.endswith("weight_scale"):  # bitlinear divides by the scale where autobitlinear multiplies
            array = synthetic.f32_to_bf16_bits(1.0 / widen_to_f32(array, info.dtype))
        tensors.append((name, info.dtype, array))
    rng = np.random.default_rng(19)
    head = rng.standard_normal((cfg["vocab_size"], cfg["hidden_size"]), dtype=np.float32)
    tensors.append(("lm_head.weight", "BF16", synthetic.f32_to_bf16_bits(head * synthetic.embedding_std(
        cfg["hidden_size"]))))
    (folder / WEIGHTS_FILE).unlink()
    write_safetensors(folder / WEIGHTS_FILE, tensors)
    return config


def file_requests(hub) -> list[str]:
    """The files the hub or its CDN was asked for, in order."""
    return [r.filename for r in hub.requests if "/resolve/" in r.path or "/cdn/" in r.path]


# ---- pull by name ---------------------------------------------------------------------------------------------------


def test_pull_by_name_says_what_it_costs_before_downloading_and_installs(hub, trit, tiny_model):
    hub.add_repo(download.DEFAULT_REPO, tiny_model)
    r = trit("pull", "bitnet-2b")
    assert r.returncode == 0, r.err
    entry = catalogue.find("bitnet-2b")
    total = sum(len(data) for f, data in hub.repos[download.DEFAULT_REPO].files.items() if f in registry.MODEL_FILES)
    # the catalogue's size before the hub is asked, then the hub's exact total before the weights come
    assert r.err.startswith("bitnet-2b: microsoft/bitnet-b1.58-2B-4T — BitNet b1.58, 2.4B parameters, about 1.2 GB\n"
                            ), r.err
    bar = re.search(r"bitnet-b1.58-2B-4T: +0%\|[^|]*\| ([^/]+)/([^ ]+) ", r.err)  # the hub's exact total
    assert bar and bar[2] == f"{tqdm.format_sizeof(total)}B" and "model.safetensors" not in r.err[:bar.end()], r.err
    assert registry.format_bytes(entry.download_bytes) == "1.2 GB"  # computed: what the README has always said
    assert "bitnet-b1.58-2B-4T is ready" in r.out
    [m] = installed(trit)
    assert (m["name"], m["source"], m["family"]) == ("bitnet-b1.58-2B-4T", f"hf:{download.DEFAULT_REPO}", "bitnet")
    # the same repository by its id, or `trit pull` alone, is the model already installed: nothing downloaded again
    hub.requests.clear()
    for args in (["microsoft/bitnet-b1.58-2B-4T"], []):
        r = trit("pull", *args)
        assert r.returncode == 0 and "bitnet-b1.58-2B-4T is ready" in r.out, r.err
    assert file_requests(hub) == []


def test_pull_falcon_e_by_name_from_the_hub(hub, trit, tiny_model, tmp_path):
    """The second family: the name reaches the right repository, the size is said first, and it installs, lists as
    its family and answers."""
    config = falcon_e_folder(tiny_model, tmp_path / "falcon")
    hub.add_repo(FALCON.repo, tmp_path / "falcon")
    r = trit("pull", "falcon-e-1b")
    assert r.err.startswith(f"falcon-e-1b: {FALCON.repo} — Falcon-E, 1.7B parameters, about 664.8 MB\n"), r.err
    assert r.returncode == 0, r.err
    [m] = installed(trit)
    assert (m["name"], m["source"], m["family"]) == ("Falcon-E-1B-Instruct", f"hf:{FALCON.repo}", "llama")
    assert catalogue.family_of(config) == "llama"
    r = trit("ask", "-m", "Falcon-E-1B-Instruct", "--max-tokens", "8", "--json", "Hello")
    assert r.returncode == 0 and json.loads(r.out)["generated_tokens"] > 0, r.err


def test_a_catalogue_repository_whose_config_this_version_refuses_is_said_so_before_its_weights(hub, trit, tiny_model,
                                                                                                  tmp_path):
    """The catalogue's shapes were not all read from the real files: should a repository's config.json turn out to be
    one the engine refuses, the pull says so as a catalogue entry (not "see trit pull --list", which lists it),
    after config.json and before any weights."""
    config = falcon_e_folder(tiny_model, tmp_path / "falcon")
    del config["quantization_config"]
    (tmp_path / "falcon" / CONFIG_FILE).write_text(json.dumps(config))
    hub.add_repo(FALCON.repo, tmp_path / "falcon")
    line = one_line(trit("pull", "falcon-e-1b"),
                    f"{FALCON.repo} is in Trit's catalogue, but this version does not run it yet: config.json: ")
    assert "quantization_config" in line or "16-bit" in line, line
    assert WEIGHTS_FILE not in file_requests(hub) and file_requests(hub)[0] == CONFIG_FILE
    assert installed(trit) == []


def sharded_folder(source, folder, shards: int = 2) -> None:
    """The same model with its tensors in `shards` files and model.safetensors.index.json, as transformers'
    save_pretrained writes a checkpoint larger than its max_shard_size (Falcon3-10B, Llama3-8B-1.58 may be)."""
    shutil.copytree(source, folder)
    weights = SafetensorsFile(source / WEIGHTS_FILE)
    names = list(weights.tensors)
    weight_map, size = {}, 0
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = [(n, weights.tensors[n].dtype, np.array(weights.array(n))) for n in names[k::shards]]
        write_safetensors(folder / shard, part)
        weight_map.update({n: shard for n, _, _ in part})
        size += sum(a.nbytes for _, _, a in part)
    (folder / WEIGHTS_FILE).unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def test_a_sharded_repository_is_pulled_with_its_index_and_every_shard(hub, trit, tiny_model, tmp_path):
    sharded_folder(tiny_model, tmp_path / "sharded")
    hub.add_repo("someone/sharded", tmp_path / "sharded", extra={"README.md": b"# sharded\n"})
    r = trit("pull", "someone/sharded")
    requested = file_requests(hub)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    # the config first, the weights last, the index before its shards, nothing else
    assert requested[0] == CONFIG_FILE and requested.index("model.safetensors.index.json") < requested.index(shards[0])
    assert [f for f in requested if f.endswith(".safetensors")] == shards and "README.md" not in requested
    from trit.engine.formats import checkpoint

    if not hasattr(checkpoint, "SHARDED_INDEX_FILE"):  # an engine that reads no shards yet (branch families)
        assert r.returncode == 1 and "Traceback" not in r.err, r.err
        assert r.err.strip().splitlines()[-1].endswith("sharded safetensors are not supported; expected one "
                                                       "model.safetensors"), r.err
        assert installed(trit) == []
        return
    assert r.returncode == 0, r.err
    [m] = installed(trit)
    assert m["name"] == "sharded" and m["verified"] and sorted(m["path"] and os.listdir(m["path"])) == sorted(
        [CONFIG_FILE, "generation_config.json", "model.safetensors.index.json", *shards, "tokenizer.json",
         "tokenizer_config.json", "trit", "trit-model.json"])


BAD_INDEXES = {
    "a shard missing": (lambda index: index, ["names model-00002-of-00002.safetensors, not in the repository"]),
    "no weight_map": (lambda index: {"metadata": index["metadata"]}, ["has no weight_map"]),
    "lists for names": (lambda index: {"weight_map": {k: [v] for k, v in index["weight_map"].items()}},
                        ["has no weight_map"]),
    "not an object": (lambda index: [index], ["has no weight_map"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_a_sharded_repository_with_a_bad_index_is_refused_before_the_shards(hub, trit, tiny_model, tmp_path, case):
    change, words = BAD_INDEXES[case]
    folder = tmp_path / "sharded"
    sharded_folder(tiny_model, folder)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps(change(json.loads(index.read_text()))))
    if case == "a shard missing":
        (folder / "model-00002-of-00002.safetensors").unlink()
    hub.add_repo("someone/sharded", folder)
    one_line(trit("pull", "someone/sharded"), "someone/sharded: model.safetensors.index.json ", *words)
    assert not any(f.endswith(".safetensors") for f in file_requests(hub))
    assert installed(trit) == []


# ---- refused before the weights -------------------------------------------------------------------------------------


def bitnet_config(tiny_model) -> dict:
    return json.loads((tiny_model / CONFIG_FILE).read_text())


UNSUPPORTED = {
    # a BitNet whose weights are the bf16 masters, not packed
    "no-quantization": (lambda c: {k: v for k, v in c.items() if k != "quantization_config"},
                        ["quantization_config"]),
    # an ordinary Llama-architecture model
    "qwen2": (lambda c: {**{k: v for k, v in c.items() if k != "quantization_config"},
                         "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu"},
              ["qwen2"]),
    "gptq": (lambda c: {**c, "quantization_config": {"quant_method": "gptq", "bits": 4}}, ["quant_method", "gptq"]),
    # config.json that is JSON but no object
    "list": (lambda c: [c], ["config.json", "object"]),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_a_repository_trit_does_not_run_is_refused_before_its_weights(hub, trit, tiny_model, case):
    change, words = UNSUPPORTED[case]
    files = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()}
    files[CONFIG_FILE] = json.dumps(change(bitnet_config(tiny_model))).encode()
    hub.add_repo(f"someone/{case}", files=files)
    r = trit("pull", f"someone/{case}")
    one_line(r, f"someone/{case} is not a model Trit can run: ", *words, "`trit pull --list` shows the models")
    requested = file_requests(hub)
    assert requested[0] == CONFIG_FILE and not any(f.endswith(".safetensors") for f in requested), requested
    assert installed(trit) == []


def test_a_config_json_of_megabytes_is_refused_before_anything_is_downloaded(hub, trit, tiny_model):
    """The listing says each file's size: a config.json is a few KB, so one of 2 MiB (a hostile or broken repository)
    is refused from the listing, as a hub could list one of gigabytes."""
    files = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()}
    files[CONFIG_FILE] = files[CONFIG_FILE].rstrip() + b" " * (2 << 20) + b"\n"
    hub.add_repo("someone/big-config", files=files)
    one_line(trit("pull", "someone/big-config"), "someone/big-config", "config.json is 2.1 MB")
    assert file_requests(hub) == [] and installed(trit) == []


def test_a_name_that_is_not_in_the_catalogue_is_one_line_and_asks_nothing(hub, trit):
    one_line(trit("pull", "falcon-e-5b"), "'falcon-e-5b'", "`trit pull --list`", "OWNER/REPO")
    assert hub.requests == []


# ---- the list -------------------------------------------------------------------------------------------------------


def test_pull_list_shows_every_model_with_its_size_and_downloads_nothing(hub, trit, tiny_model):
    r = trit("pull", "--list")
    assert r.returncode == 0, r.err
    header, *rows = r.out.splitlines()
    assert re.split(r"\s{2,}", header) == ["NAME", "PARAMS", "DOWNLOAD", "CONTEXT", "KV AT FULL CONTEXT", "FAMILY",
                                           "LICENCE", "REPO"]
    assert [row.split()[0] for row in rows] == [e.name for e in catalogue.CATALOGUE]
    assert {"bitnet-2b", "falcon-e-1b", "falcon-e-3b", "falcon3-1b", "falcon3-3b", "falcon3-7b", "falcon3-10b",
            "llama3-8b-1.58", "bitnet-large", "bitnet-3b"} == {e.name for e in catalogue.CATALOGUE}
    falcon = next(row for row in rows if row.startswith("falcon-e-3b "))
    # 28 layers x 2 KV heads x 128 x (key + value) x 2 bytes = 28 KiB a position, times 32768 positions
    assert re.search(r"\b987\.0 MB\s+32K\s+939\.5 MB\s+Falcon-E\s+TII Falcon-LLM 2\.0\s+tiiuae/Falcon-E-3B-Instruct$",
                     falcon)
    assert "computed" in r.err and hub.requests == []
    listed = json.loads(trit("models", "--available", "--json").out)
    assert [e["name"] for e in listed] == [e.name for e in catalogue.CATALOGUE]
    assert listed[2] == {"name": "falcon-e-3b", "repo": "tiiuae/Falcon-E-3B-Instruct", "family": "Falcon-E",
                         "parameters": catalogue.find("falcon-e-3b").parameters, "download_bytes": FALCON_E_3B_BYTES,
                         "context_length": 32768, "full_context_kv_bytes": 28 * 2 * 2 * 128 * 2 * 32768,
                         "licence": "TII Falcon-LLM 2.0", "installed": False,
                         "description": catalogue.find("falcon-e-3b").description}
    assert trit("models", "--available").out == r.out
    # once installed, the list says so
    hub.add_repo(download.DEFAULT_REPO, tiny_model)
    assert trit("pull").returncode == 0
    assert trit("pull", "--list").out.splitlines()[1].split()[-1] == "installed"
    r = trit("pull", "--list", "falcon-e-3b")
    assert r.returncode == 2 and "--list downloads nothing" in r.err



# ---- the chat app: the first-run screen and the F4 models dialog, keyboard only ------------------------------------


@pytest.fixture
def app_hub(hub, tiny_model, tmp_path, home, monkeypatch):
    """The stand-in hub serving the 2B4T (the tiny model) and Falcon-E-1B (tiny, in its format), as HF_ENDPOINT."""
    hub.add_repo(download.DEFAULT_REPO, tiny_model)
    falcon_e_folder(tiny_model, tmp_path / "falcon")
    hub.add_repo(FALCON.repo, tmp_path / "falcon")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


@drive
async def test_the_first_run_screen_offers_the_catalogue_and_downloads_the_one_chosen(app_hub, tmp_path):
    from textual.widgets import Button, Select

    app = TritApp()
    async with running(app) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FirstRunScreen), what="the first-run screen")
        screen = app.screen
        button, picker = screen.query_one("#download", Button), screen.query_one("#catalogue", Select)
        hint, message = screen.query_one("#download-hint"), screen.query_one("#first-run-message")
        assert app.focused is button and str(button.label) == "Download bitnet-2b"
        assert str(hint.render()).startswith("About 1.2 GB from Hugging Face (microsoft/bitnet-b1.58-2B-4T), once")
        await pilot.press("shift+tab")  # to the catalogue, above the button
        assert app.focused is picker
        await pilot.press("enter")  # open it
        await pilot.pause(0.2)
        await pilot.press("down", "enter")  # the second: falcon-e-1b
        await until(pilot, lambda: picker.value == "falcon-e-1b", what="falcon-e-1b chosen")
        assert str(button.label) == "Download falcon-e-1b"
        assert str(hint.render()).startswith(f"About 664.8 MB from Hugging Face ({FALCON.repo}), once")
        assert "(Falcon-E, TII Falcon-LLM 2.0 licence)" in str(hint.render())
        await pilot.press("tab", "enter")  # on to the button: download it
        await until(pilot, lambda: app.screen is not screen or message.has_class("error"),
                    what=lambda: str(message.render()))
        chat = await started(pilot)  # installed and opened on it
        assert "Falcon-E-1B-Instruct" in str(chat.query_one("#status").render())


@drive
async def test_the_models_dialog_lists_the_catalogue_under_the_installed_and_downloads_one(app_hub, with_tiny):
    from textual.widgets import OptionList

    from trit.app.tui.screens.models import ModelsScreen

    tiny_model = with_tiny
    app = TritApp()
    async with running(app) as pilot:
        await started(pilot)
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models dialog")
        dialog = app.screen
        listing = dialog.query_one("#model-list", OptionList)
        ids = [listing.get_option_at_index(i).id for i in range(listing.option_count)]
        assert ids == [str(tiny_model), "demo"] + [f"pull:{e.name}" for e in catalogue.CATALOGUE]
        assert "1.2 GB to download · BitNet b1.58" in str(listing.get_option("pull:bitnet-2b").prompt)
        while listing.get_option_at_index(listing.highlighted).id != "pull:bitnet-2b":
            await pilot.press("down")
        assert dialog.highlighted is None  # not a model to use or make the default yet
        await pilot.press("ctrl+d")  # so this does nothing
        await pilot.press("enter")  # downloads it
        await until(pilot, lambda: dialog.transfer.busy or "ready" in dialog.transfer.said,
                    what=lambda: dialog.transfer.said)
        # the widget clears busy as the Finished message reaches it, and the screen says "ready" as it bubbles on:
        # CI once looked in between and saw the download's last line
        await until(pilot, lambda: not dialog.transfer.busy and "ready" in dialog.transfer.said,
                    what=lambda: dialog.transfer.said)
        assert dialog.transfer.said == "bitnet-b1.58-2B-4T is ready: Enter on it to use it here."
        ids = [listing.get_option_at_index(i).id for i in range(listing.option_count)]
        assert ids[:3] == [str(tiny_model), "bitnet-b1.58-2B-4T", "demo"] and "pull:bitnet-2b" not in ids
        assert dialog.highlighted == "bitnet-b1.58-2B-4T" and app.focused is listing
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, ModelsScreen), what="the dialog to close")


# ---- snapshots at 80x24 and 40x12 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
def test_snapshot_first_run_catalogue(home, tiny, monkeypatch, snap_compare, size):
    """falcon-e-3b chosen on the first-run screen: the button and the hint say what it downloads."""
    monkeypatch.setattr("trit.app.tui.screens.first_run.demo_model",
                        lambda: ModelChoice("demo", tiny, demo=True))  # as an installation that ships it

    async def run_before(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, FirstRunScreen))
        await pilot.press("shift+tab", "enter", "down", "down", "enter")
        await steady(pilot)

    assert snap_compare(frozen_app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
def test_snapshot_models_dialog_catalogue(with_tiny, snap_compare, size):
    """F4: the installed models, then the catalogue's with their download sizes, the cursor on the first of them."""

    async def run_before(pilot):
        await started(pilot)
        await pilot.press("f4", "down", "down")
        await steady(pilot)

    assert snap_compare(frozen_app(), terminal_size=size, run_before=run_before)


# The synthetic preset of each catalogue entry (what `trit bench --synthetic NAME` measures): the same shape.
PRESET_OF = {"bitnet-2b": "2b4t", "falcon-e-1b": "falcon-e-1b", "falcon-e-3b": "falcon-e-3b",
             "falcon3-1b": "falcon3-1b-1.58", "falcon3-3b": "falcon3-3b-1.58", "falcon3-7b": "falcon3-7b-1.58",
             "falcon3-10b": "falcon3-10b-1.58", "llama3-8b-1.58": "llama3-8b-1.58",
             "bitnet-large": "bitnet-b1.58-large", "bitnet-3b": "bitnet-b1.58-3b"}


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_the_catalogue_and_the_synthetic_presets_agree_on_each_shape(name):
    """Both hold the real repositories' shapes (sizes shown before a pull; the shapes benchmarks measure): one cannot
    drift from the other unnoticed."""
    shape, context = catalogue.find(name).shape, catalogue.find(name).context
    p = synthetic.PRESETS[PRESET_OF[name]]
    heads = p["num_attention_heads"]
    assert (p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"], heads, p["num_key_value_heads"],
            p.get("head_dim", p["hidden_size"] // heads), p["vocab_size"], p.get("tie_word_embeddings", True),
            p["max_position_embeddings"]) == (shape.hidden, shape.intermediate, shape.layers, shape.heads,
                                              shape.kv_heads, shape.head_dim, shape.vocab, shape.tied, context)
