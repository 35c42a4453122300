"""The demo model that ships in assets/: a real trained BitNet b1.58 model, not random weights.

On held-out Jane Austen text (never trained on) the engine's perplexity must match transformers' BitNetForCausalLM on
the same checkpoint, computed here, and the figure the training framework recorded in trit-demo.json, each within
1%; and it must be far below what a model without training gets. A greedy chat reply must end on a stop token.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from trit import engine
from trit.assets import DEMO_HELDOUT, DEMO_INFO_FILE, DEMO_MODEL, demo_info
from trit.engine.runtime.tokenizer import Tokenizer
from trit.engine.tools import synthetic

WINDOW = 512  # the training script's evaluation window: BOS + 511 text tokens (assets/demo/train.py eval_windows)
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         DEMO_INFO_FILE)


def windows(token_ids: list[int], bos: int) -> list[list[int]]:
    step = WINDOW - 1
    return [[bos] + token_ids[i:i + step] for i in range(0, len(token_ids), step)]


def perplexity(ws: list[list[int]], logits_of) -> float:
    """exp(mean NLL) of every token after the BOS of each window, from full logits [n, vocab]."""
    nll, count = 0.0, 0
    for w in ws:
        z = np.asarray(logits_of(w), np.float64)[:-1]
        m = z.max(axis=1, keepdims=True)
        log_softmax = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        nll -= log_softmax[np.arange(len(w) - 1), w[1:]].sum()
        count += len(w) - 1
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def info() -> dict:
    record = demo_info()
    assert record is not None, f"{DEMO_MODEL / DEMO_INFO_FILE} missing or not marked as a demo"
    return record


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A copy of the demo model, so the engine's derived files (q4 head, T5) land in a temp dir, not the source."""
    dst = tmp_path_factory.mktemp("demo") / "model"
    shutil.copytree(DEMO_MODEL, dst)
    return dst


@pytest.fixture(scope="module")
def heldout(folder, info):
    tok = Tokenizer.from_folder(folder)
    ids = tok.encode(DEMO_HELDOUT.read_text(encoding="utf-8"))
    assert len(ids) == info["heldout"]["tokens"], "heldout.txt or the tokenizer changed since training"
    assert info["heldout"]["window"] == WINDOW
    return windows(ids, tok.bos_id)


SUBSET = slice(0, None, 4)  # transformers runs eagerly on the CPU: every 4th window keeps this test fast


@pytest.fixture(scope="module")
def perplexities(folder, heldout) -> dict:
    """Held-out perplexity: the engine with the exact and the default 4.5-bit head on every window, and the engine
    and transformers' BitNetForCausalLM on the same subset of windows."""
    from hf_reference import hf_logits, load_hf_model

    out = {}
    for head in ("bf16", "q4"):
        with engine.load(folder, head=head) as model:
            out[f"engine_{head}"] = perplexity(heldout, model.logits)
            if head == "bf16":
                out["engine_bf16_subset"] = perplexity(heldout[SUBSET], model.logits)
    hf = load_hf_model(folder)
    out["transformers_subset"] = perplexity(heldout[SUBSET], lambda w: hf_logits(hf, w))
    print("\nheld-out perplexity:", json.dumps(out))
    return out


def test_demo_model_ships_complete_and_labelled(info):
    for name in FILES:
        assert (DEMO_MODEL / name).is_file(), f"{name} missing from {DEMO_MODEL}"
    assert DEMO_HELDOUT.is_file()
    assert "demo" in info["name"].lower()
    assert "public domain" in info["source"]["licence"]
    assert info["source"]["package"] and info["source"]["version"]
    size = sum(f.stat().st_size for f in DEMO_MODEL.iterdir() if f.is_file())
    assert size < 8 << 20, f"the demo model is {size} bytes; it should stay a few MB"
    assert demo_info(DEMO_MODEL.parent) is None  # a folder without the record is not a demo


def test_engine_loads_the_shipped_folder():
    # The shipped folder itself, with nothing derived (exact head, the checkpoint's own 2-bit packing).
    with engine.load(DEMO_MODEL, head="bf16", ternary="tq2") as model:
        cfg = model.config
        assert cfg.vocab_size == 4096 and cfg.linear_class == "autobitlinear"
        assert cfg.max_position_embeddings == 4096
        logits = model.logits([cfg.bos_token_id, 1, 2, 3])
        assert logits.shape == (4, cfg.vocab_size) and np.isfinite(logits).all()


def test_tokenizer_agrees_with_transformers(folder):
    from transformers import AutoTokenizer

    ours = Tokenizer.from_folder(folder)
    theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = DEMO_HELDOUT.read_text(encoding="utf-8")[:4000]
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Mr. Darcy?"}]
    expected = theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ours.encode_chat(chat) == list(expected)
    assert ours.render_chat(chat) == ("<|begin_of_text|>System: Be brief.<|eot_id|>User: Who is Mr. Darcy?<|eot_id|>"
                                      "Assistant: ")
    assert ours.stop_ids == {ours.vocab_size - 256 + 1, ours.vocab_size - 256 + 9}  # <|end_of_text|>, <|eot_id|>


def test_engine_reproduces_transformers_and_the_training_framework(perplexities, info):
    ppl, recorded = perplexities, info["perplexity"]
    assert ppl["engine_bf16_subset"] == pytest.approx(ppl["transformers_subset"], rel=0.01)
    assert ppl["engine_bf16"] == pytest.approx(recorded["training_framework"], rel=0.01)
    assert ppl["engine_bf16"] == pytest.approx(recorded["transformers"], rel=0.01)
    # The default 4.5-bit head is an approximation of the exact one; it may cost a little, never much.
    assert ppl["engine_q4"] == pytest.approx(ppl["engine_bf16"], rel=0.03)


def test_far_below_an_untrained_model(perplexities, heldout, tmp_path):
    vocab = 4096
    assert perplexities["engine_bf16"] < vocab / 20
    # A random model of the same shape, as the synthetic generator makes them, on the first windows.
    shape = {k: v for k, v in json.loads((DEMO_MODEL / "config.json").read_text()).items()
             if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "vocab_size", "max_position_embeddings")}
    random_folder = synthetic.write_model(tmp_path / "random", "tiny", seed=0, **shape)
    with engine.load(random_folder, head="bf16", ternary="tq2") as random_model:
        random_ppl = perplexity(heldout[:3], random_model.logits)
    assert perplexities["engine_bf16"] < random_ppl / 100


@pytest.mark.parametrize("prompt", ["Who is Mr. Darcy?", "Continue the story: It was a fine morning at Longbourn."])
def test_greedy_chat_reply_ends_with_a_stop_token(folder, prompt):
    tok = Tokenizer.from_folder(folder)
    model = engine.load(folder)
    ids = tok.encode_chat([{"role": "user", "content": prompt}])
    reply: list[int] = []
    with model.context(1024) as ctx:
        logits = ctx.eval(ids)
        for _ in range(300):
            nxt = int(np.argmax(logits))
            if nxt in tok.stop_ids:
                break
            reply.append(nxt)
            logits = ctx.eval([nxt])
        else:
            pytest.fail(f"no stop token in 300 tokens: {tok.decode(reply)!r}")
    text = tok.decode(reply).strip()
    print(f"\n{prompt!r} -> {text!r}")
    assert len(text.split()) >= 2
    assert not any(tok.is_special(i) for i in reply)
