"""Issue 19, end to end: each family's own tokenizer conventions and chat template through the installed `trit` (the
reply ends at the family's end-of-turn token, the prompt is the one transformers renders, the KV cache carries over
a `trit chat` turn), `trit import` of a sharded checkpoint and of each family's folder, and llama.cpp's logits on a
Llama-family GGUF."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import test_hostile_input
from test_hostile_input import conversations, installed_models, one_line

from trit.engine.formats.checkpoint import OUTPUT_HEAD, WEIGHTS_FILE, widen_to_f32
from trit.engine.formats.safetensors_file import SafetensorsFile, write_safetensors
from trit.engine.tools.synthetic import f32_to_bf16_bits

home, trit = test_hostile_input.home, test_hostile_input.trit  # the fixtures: TRIT_HOME, the installed trit in it

# preset -> the token that ends an assistant turn in that family
END_OF_TURN = {"falcon-e-tiny": "<|im_end|>", "falcon3-tiny": "<|endoftext|>", "llama3-tiny": "<|eot_id|>",
               "1bitllm-tiny": "</s>"}
FAMILIES = list(END_OF_TURN)
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def family(make_model):
    return lambda preset: make_model(preset, seed=3)


def token_id(folder, token: str) -> int:
    from tokenizers import Tokenizer

    i = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(token)
    assert i is not None, f"{token} is not in {folder}'s vocabulary"
    return i


def rewritten(folder, dest, embedding=None, head=None):
    """A copy of the model with the embedding and/or the untied head replaced: embedding(shape) and head(float32
    array) give the new float32 values."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(WEIGHTS_FILE, "trit"))
    f = SafetensorsFile(folder / WEIGHTS_FILE)

    def as_stored(values: np.ndarray, dtype: str) -> np.ndarray:
        return f32_to_bf16_bits(values) if dtype == "BF16" else values.astype(np.float16)

    tensors = []
    for name, info in f.tensors.items():
        array = f.array(name)
        if name == "model.embed_tokens.weight" and embedding is not None:
            array = as_stored(embedding(info.shape), info.dtype)
        elif name == OUTPUT_HEAD and head is not None:
            array = as_stored(head(widen_to_f32(array, info.dtype)), info.dtype)
        tensors.append((name, info.dtype, array))
    write_safetensors(dest / WEIGHTS_FILE, tensors)
    return dest


def always_says(folder, dest, token: str):
    """Every embedding row one large constant vector and the head's row for `token` along it: the residual stream
    is that vector whatever the layers add, so `token` is the likeliest next token at every position. The real
    engine then runs a model that ends its turn (or not) at once."""
    target = token_id(folder, token)

    def head(h):
        h[:] = 0
        h[target] = 10.0
        return h

    return rewritten(folder, dest, embedding=lambda shape: np.full(shape, 100.0, np.float32), head=head)


def never_says_a_special_token(folder, dest):
    """The head's logits spread ten times wider and its special-token rows zero: a random model's reply never holds
    a special token (a quarter of a tiny vocabulary is special), which the reply's text would skip and the next
    turn's prompt would not spell. With a SentencePiece vocabulary only pieces that start a word ("▁...") are left,
    as a real model's reply starts with one (its decoder drops that space from the reply, the template puts it
    back)."""
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    silent = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    pieces = tokenizer["model"]["vocab"]
    if tokenizer["model"].get("byte_fallback"):
        silent |= {i for piece, i in pieces.items() if not piece.startswith("\u2581")}

    def head(h):
        h *= 10
        h[sorted(silent)] = 0
        return h

    return rewritten(folder, dest, head=head)


def ask_json(trit, folder, *args):
    r = trit("ask", "-m", folder, "--max-tokens", 8, "--seed", 1, "--json", *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


# ---- 1. each family's conventions, through `trit ask` and `trit chat` ------------------------------------------------
@pytest.mark.parametrize("preset", FAMILIES)
def test_the_reply_ends_at_the_familys_end_of_turn_token(family, tmp_path, trit, preset):
    folder = always_says(family(preset), tmp_path / "m", END_OF_TURN[preset])
    out = ask_json(trit, folder, QUESTION)
    assert (out["finish_reason"], out["generated_tokens"], out["content"]) == ("stop", 0, ""), out


def test_a_special_token_that_is_no_end_of_turn_does_not_end_the_reply(family, tmp_path, trit):
    folder = always_says(family("falcon-e-tiny"), tmp_path / "m", "<|im_start|>")
    out = ask_json(trit, folder, QUESTION)
    assert (out["finish_reason"], out["generated_tokens"]) == ("length", 8), out


# How each family's template opens the assistant's turn (Falcon-E: ChatML; Falcon3: <|assistant|> lines; Llama 3:
# role headers)
ASSISTANT_TURN = {"falcon-e-tiny": "<|im_start|>assistant\n", "falcon3-tiny": "<|assistant|>\n",
                  "llama3-tiny": "<|start_header_id|>assistant<|end_header_id|>\n\n"}


@pytest.mark.parametrize("preset", list(ASSISTANT_TURN))
def test_the_prompt_is_the_familys_template_as_transformers_renders_it(family, trit, preset):
    from transformers import AutoTokenizer

    folder = family(preset)
    out = ask_json(trit, folder, "-n", "-s", "Be brief.", QUESTION)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    hf = AutoTokenizer.from_pretrained(folder)
    assert hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).endswith(ASSISTANT_TURN[preset])
    assert out["prompt_tokens"] == len(hf.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])


def test_a_model_with_no_template_and_no_eot_token_gets_a_plain_transcript(family, trit):
    """1bitLLM's models are base models with Llama 2's vocabulary and no chat template: the prompt is a plain
    transcript in tokens the vocabulary has (BitNet's fallback would spell <|eot_id|> as text it never saw)."""
    from transformers import AutoTokenizer

    folder = family("1bitllm-tiny")
    out = ask_json(trit, folder, "-n", QUESTION)
    hf = AutoTokenizer.from_pretrained(folder)
    assert hf.chat_template is None and hf.eos_token == "</s>" and "<|eot_id|>" not in hf.get_vocab()
    assert out["prompt_tokens"] == len(hf(f"<s>User: {QUESTION}\nAssistant:", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("preset", FAMILIES)
def test_each_chat_follow_up_reuses_the_whole_turn_before_with_each_template(family, tmp_path, trit, preset):
    """The cached tokens of a turn (the reply's sampled ones, which need not be how the tokenizer would split its
    text) are kept and only the follow-up is prefilled, whatever the template and the tokenizer: a SentencePiece one
    (1bitLLM) marks every text's start with a space, which the follow-up's tokens must not get."""
    folder = never_says_a_special_token(family(preset), tmp_path / "m")
    questions = ["Who is Mr Darcy?", "And his friend?", "Where do they live?", "Thanks."]
    r = trit("chat", "-m", folder, "--max-tokens", 6, "--seed", 3, stdin="\n".join(questions + [""]).encode())
    assert r.returncode == 0, r.stderr.decode()
    (c,) = conversations(trit)
    replies = json.loads(trit("history", "show", c["id"], "--json").stdout)["messages"][1::2]
    assert len(replies) == len(questions)
    for before, after in zip(replies, replies[1:]):
        assert after["reused_tokens"] >= before["prompt_tokens"] + before["generated_tokens"] - 1 > 0, (before, after)


# ---- 2. `trit import` of a sharded checkpoint and of each family's folder --------------------------------------------
@pytest.mark.parametrize("preset", FAMILIES)
def test_import_installs_each_familys_folder_and_it_answers(family, trit, preset):
    r = trit("import", family(preset), "--name", "m")
    assert r.returncode == 0, r.stderr.decode()
    assert [m["name"] for m in installed_models(trit)] == ["m"]
    out = ask_json(trit, "m", "-n", QUESTION)
    assert out["generated_tokens"] > 0 or out["finish_reason"] == "stop"


def test_import_installs_a_sharded_checkpoint_with_its_index(family, tmp_path, trit):
    from test_families import shard

    sharded = shard(family("falcon3-tiny"), tmp_path / "sharded", n_shards=3)
    r = trit("import", sharded, "--name", "sharded")
    assert r.returncode == 0, r.stderr.decode()
    (model,) = installed_models(trit)
    assert model["name"] == "sharded"
    installed = sorted(p.name for p in (tmp_path / "home").rglob("model-0000*-of-00003.safetensors"))
    assert installed == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    a = ask_json(trit, "sharded", "-n", QUESTION)
    b = ask_json(trit, family("falcon3-tiny"), "-n", QUESTION)
    assert a["content"] == b["content"] and a["generated_tokens"] == b["generated_tokens"]


def test_import_refuses_shards_without_their_index_in_one_line(family, tmp_path, trit):
    from test_families import shard

    sharded = shard(family("falcon-e-tiny"), tmp_path / "sharded")
    (sharded / "model.safetensors.index.json").unlink()
    one_line(trit("import", sharded), "model.safetensors.index.json")
    assert installed_models(trit) == []


# ---- 3. llama.cpp on a Llama-family GGUF ----------------------------------------------------------------------------
def llamacpp_logits(path, ids) -> np.ndarray:
    """llama.cpp's float32 logits [n, vocab] for every position of ids from position 0."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids), n_threads=2,
                          logits_all=True, verbose=False)
    try:
        llm.eval(list(map(int, ids)))
        return np.array(llm.scores[:len(ids)], np.float32)
    finally:
        llm.close()


def agree(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(mean per-position correlation, top-1 agreement where ours has a clear best token). llama.cpp quantizes
    activations per 256-weight block, Trit per token: the logits move by about 0.05% of their spread, which flips
    only near-ties (top two within a tenth of the spread, ~1 in 8 positions on falcon3-tiny's flat random head)."""
    from hf_reference import mean_correlation, top1_agreement

    top2 = np.sort(ours, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 0.1 * ours.std(axis=1)
    return mean_correlation(ours, theirs), top1_agreement(ours[clear], theirs[clear])


@pytest.mark.parametrize("preset", ["falcon-e-tiny", "falcon3-tiny", "llama3-tiny"])
def test_llamacpp_runs_the_llama_family_gguf_with_trits_logits(family, tmp_path, preset):
    """The export is right when llama.cpp's plain `llama` graph, on the TQ2_0 file, gives Trit's logits by
    tests/test_families.py's thresholds. Like with like: both keep 8-bit activations and an fp16 KV cache, and Trit's
    head is read as stored (bf16), as llama.cpp reads its f16 copy. Without the RoPE row permutation the same file
    fails them (corr ~0.74, top-1 ~0.27 on falcon3-tiny)."""
    pytest.importorskip("llama_cpp")
    from test_families import CORR_MIN, TOP1_MIN, token_ids

    from trit import engine
    from trit.engine.formats import gguf_export

    folder = family(preset)
    ids = token_ids(1024, 64)
    ours = engine.load(folder, threads=2, head="bf16").logits(ids)
    corr, top1 = agree(ours, llamacpp_logits(gguf_export.export(folder, tmp_path / "m.gguf", "tq2_0"), ids))
    assert corr >= CORR_MIN and top1 >= TOP1_MIN, (corr, top1)


def test_llamacpp_without_the_rope_permutation_fails_the_thresholds(family, tmp_path, monkeypatch):
    """The negative control: q and k rows left in Hugging Face's rotate-half order."""
    pytest.importorskip("llama_cpp")
    from test_families import CORR_MIN, TOP1_MIN, token_ids

    from trit import engine
    from trit.engine.formats import gguf_export

    folder = family("falcon3-tiny")
    monkeypatch.setattr(gguf_export, "_rope_pairs_adjacent", lambda t, n_head: t)
    ids = token_ids(1024, 64)
    ours = engine.load(folder, threads=2, head="bf16").logits(ids)
    corr, top1 = agree(ours, llamacpp_logits(gguf_export.export(folder, tmp_path / "m.gguf", "tq2_0"), ids))
    assert corr < CORR_MIN or top1 < TOP1_MIN, (corr, top1)


def test_trit_bench_vs_llamacpp_runs_a_llama_family_model(family, trit):
    pytest.importorskip("llama_cpp")
    r = trit("bench", family("falcon-e-tiny"), "--vs", "llama.cpp", "--pp", 16, "--tg", 4, "-r", 1, "--threads", 2,
             "--json")
    assert r.returncode == 0, r.stderr.decode()
    vs = json.loads(r.stdout)["vs_llama_cpp"]
    assert [x["qtype"] for x in vs["results"]] == ["tq2_0", "tq1_0"] and vs["ratios"]["tq2_0"]["tg"] > 0
    assert "SiLU" not in vs["warning"]  # the llama graph is the Llama block: its text is right too


@pytest.mark.parametrize("index, words", [
    (b'{"weight_map": {"model.norm.weight": "../outside.safetensors"}}', ["outside.safetensors", "file name"]),
    (b'{"weight_map": {"model.norm.weight": "model-00009-of-00009.safetensors"}}',
     ["model-00009-of-00009.safetensors: file not found", "model.safetensors.index.json names it"]),
    (b"[1, 2]", ["model.safetensors.index.json", "weight_map"]),
    (b'{"weight_map": {"a": 1}}', ["model.safetensors.index.json", "weight_map"]),
    (b"\xff\xfe{", ["model.safetensors.index.json"]),
    (b'{"weight_map": ' * 5000, ["model.safetensors.index.json", "nested"]),
], ids=["outside", "missing-shard", "list", "not-names", "not-utf8", "nested"])
def test_import_refuses_a_hostile_shard_index_in_one_line(family, tmp_path, trit, index, words):
    from test_families import shard

    sharded = shard(family("falcon-e-tiny"), tmp_path / "sharded")
    (sharded / "model.safetensors.index.json").write_bytes(index)
    one_line(trit("import", sharded), *words)
    assert installed_models(trit) == []
