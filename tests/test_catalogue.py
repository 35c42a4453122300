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
import test_hostile_input
from hub_server import HubServer
from network_guard import offline_env
from test_cli import trit_command
from test_hostile_input import one_line
from tqdm import tqdm

from trit.engine.errors import CheckpointError
from trit.engine.formats.checkpoint import CONFIG_FILE, WEIGHTS_FILE, widen_to_f32
from trit.engine.formats.safetensors_file import SafetensorsFile, write_safetensors
from trit.engine.models import catalogue, download, registry
from trit.engine.tools import synthetic

home = test_hostile_input.home  # the fixture: TRIT_HOME
FALCON = catalogue.find("falcon-e-1b")
# 28 layers of ternary q, k, v, o, gate, up, down packed 4 to a byte, and the bf16 embedding and untied head
FALCON_E_3B_BYTES = 28 * (2560 * 2560 * 2 + 2560 * 256 * 2 + 2560 * 10240 * 3) // 4 + 32768 * 2560 * 2 * 2


@pytest.fixture
def hub():
    srv = HubServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def trit(hub, home, tmp_path):
    """The installed trit with TRIT_HOME, the offline guard and HF_ENDPOINT the stand-in hub."""

    def run(*args):
        env = offline_env({**os.environ, "TRIT_HOME": str(home), "HF_ENDPOINT": hub.url})
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
    assert entry.download_bytes == pytest.approx(1.19e9, rel=0.02)  # the real 2B4T's model.safetensors
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
    """The second family. Until the engine runs the Llama block (issue 19, branch families) the repository is
    refused after its config.json, in one line, before any weights; once it does, it installs and lists as its
    family. Either way the name reaches the right repository and the size is said first."""
    config = falcon_e_folder(tiny_model, tmp_path / "falcon")
    hub.add_repo(FALCON.repo, tmp_path / "falcon")
    r = trit("pull", "falcon-e-1b")
    assert r.err.startswith(f"falcon-e-1b: {FALCON.repo} — Falcon-E, 1.7B parameters, about 664.8 MB\n"), r.err
    try:
        family = catalogue.family_of(config)
    except CheckpointError:
        line = one_line(r, f"{FALCON.repo} is not a model Trit can run: config.json: ", "`trit pull --list`")
        assert "model_type" in line or "architecture" in line
        assert WEIGHTS_FILE not in file_requests(hub) and file_requests(hub)[0] == CONFIG_FILE
        assert installed(trit) == []
        return
    assert r.returncode == 0, r.err
    [m] = installed(trit)
    assert (m["name"], m["source"], m["family"]) == ("Falcon-E-1B-Instruct", f"hf:{FALCON.repo}", family)


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


def test_a_name_that_is_not_in_the_catalogue_is_one_line_and_asks_nothing(hub, trit):
    one_line(trit("pull", "falcon-e-5b"), "'falcon-e-5b'", "`trit pull --list`", "OWNER/REPO")
    assert hub.requests == []


# ---- the list -------------------------------------------------------------------------------------------------------


def test_pull_list_shows_every_model_with_its_size_and_downloads_nothing(hub, trit, tiny_model):
    r = trit("pull", "--list")
    assert r.returncode == 0, r.err
    header, *rows = r.out.splitlines()
    assert header.split() == ["NAME", "PARAMS", "DOWNLOAD", "CONTEXT", "FAMILY", "LICENCE", "REPO"]
    assert [row.split()[0] for row in rows] == [e.name for e in catalogue.CATALOGUE]
    assert {"bitnet-2b", "falcon-e-1b", "falcon-e-3b", "falcon3-1b", "falcon3-3b", "falcon3-7b", "falcon3-10b",
            "llama3-8b-1.58", "bitnet-large", "bitnet-3b"} == {e.name for e in catalogue.CATALOGUE}
    falcon = next(row for row in rows if row.startswith("falcon-e-3b "))
    assert re.search(r"\b987\.0 MB\s+32K\s+Falcon-E\s+TII Falcon-LLM 2\.0\s+tiiuae/Falcon-E-3B-Instruct$", falcon)
    assert "computed" in r.err and hub.requests == []
    listed = json.loads(trit("models", "--available", "--json").out)
    assert [e["name"] for e in listed] == [e.name for e in catalogue.CATALOGUE]
    assert listed[2] == {"name": "falcon-e-3b", "repo": "tiiuae/Falcon-E-3B-Instruct", "family": "Falcon-E",
                         "parameters": catalogue.find("falcon-e-3b").parameters, "download_bytes": FALCON_E_3B_BYTES,
                         "context_length": 32768, "licence": "TII Falcon-LLM 2.0", "installed": False,
                         "description": catalogue.find("falcon-e-3b").description}
    assert trit("models", "--available").out == r.out
    # once installed, the list says so
    hub.add_repo(download.DEFAULT_REPO, tiny_model)
    assert trit("pull").returncode == 0
    assert trit("pull", "--list").out.splitlines()[1].split()[-1] == "installed"
    r = trit("pull", "--list", "falcon-e-3b")
    assert r.returncode == 2 and "--list downloads nothing" in r.err
