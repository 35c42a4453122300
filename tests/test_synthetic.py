"""engine/synthetic.py: random packed models that transformers reads exactly as it reads the published checkpoint.

The packing is checked byte for byte against transformers' own pack/unpack, the written folder against
formats/checkpoint.py and transformers' BitNetForCausalLM / AutoTokenizer, and the tokenizer for the Llama 3 id layout
and lossless round trips. The 2b4t shape is checked through its config only (writing it takes ~20 s and 1.2 GB).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from trit.engine.errors import CheckpointError  # noqa: E402
from trit.engine.formats.checkpoint import Checkpoint, ModelConfig  # noqa: E402
from trit.engine.formats.packing import pack_ternary, unpack_ternary  # noqa: E402
from trit.engine.tools import synthetic as S  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  \n\n\ttabs\r\nCRLF",
    "Crème brûlée, naïve façade, Ångström, Øresund, İstanbul",
    "你好，世界。日本語のテキスト。한국어 텍스트.",
    "Emoji 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and ❤️",
    "Combining: e\u0301 a\u0308 — zero width\u200bjoiner, NBSP\u00a0here, math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√",
    "def f(x):\n    return x ** 2  # 3.14159 1234567890",
    "",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def eager_quiet():
    """transformers' BitNet code wraps unpacking and activation quantisation in torch.compile; compiling costs
    seconds per shape, so run it eagerly (same maths), and silence its CPU/progress chatter."""
    import torch._dynamo
    import transformers

    tlog = transformers.utils.logging
    old = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings(), torch._dynamo.config.patch(disable=True):
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(old)


def load_hf(folder):
    """BitNetForCausalLM in float32 plus its loading info. transformers 5.23 leaves the embedding and norms of an
    autobitlinear checkpoint in bf16 despite dtype=float32 (its deserialiser claims every *.weight); widen them,
    which is exact, or the first matmul fails on mixed dtypes."""
    import torch
    from transformers import BitNetForCausalLM

    with eager_quiet():
        model, info = BitNetForCausalLM.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True,
                                                        local_files_only=True)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and t.dtype != torch.float32:
            t.data = t.data.float()
    return model.eval(), info


def hf_logits(model, ids) -> np.ndarray:
    import torch

    with eager_quiet(), torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)]), use_cache=False).logits[0].numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """linear_class -> a tiny model folder (seed 0), written once."""
    made = {}

    def get(linear_class="autobitlinear"):
        if linear_class not in made:
            made[linear_class] = S.write_model(tmp_path_factory.mktemp("tiny") / "m", "tiny",
                                               linear_class=linear_class)
        return made[linear_class]

    return get


# --- packing against transformers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 1), (8, 3), (12, 7), (64, 128), (640, 33), (160, 256)])
def test_pack_is_byte_identical_to_transformers(shape):
    torch = pytest.importorskip("torch")
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    w = rng.integers(-1, 2, size=shape, dtype=np.int8)
    ours = pack_ternary(w)
    theirs = pack_weights(torch.from_numpy(w).clone()).numpy()  # pack_weights adds 1 in place: give it a copy
    assert ours.dtype == np.uint8 and ours.shape == (shape[0] // 4, shape[1])
    assert ours.tobytes() == theirs.tobytes()

    back = unpack_ternary(ours)
    np.testing.assert_array_equal(back, w)
    # unpack_weights is wrapped in torch.compile; __wrapped__ is the plain function (same maths, no compile)
    np.testing.assert_array_equal(unpack_weights.__wrapped__(torch.from_numpy(ours), dtype=torch.int8).numpy(), w)


def test_unpack_matches_transformers_on_every_byte():
    """All 81 valid bytes (codes 0..2 in each 2-bit field) in every row block."""
    torch = pytest.importorskip("torch")
    from transformers.integrations.bitnet import unpack_weights

    codes = np.array([[(b // 3 ** j) % 3 for j in range(4)] for b in range(81)], np.uint8)
    packed = (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6).reshape(9, 9)
    ours = unpack_ternary(packed)
    theirs = unpack_weights.__wrapped__(torch.from_numpy(packed), dtype=torch.int8).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(pack_ternary(ours), packed)


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-6, 6, 10000),
                        # exact ties: low 16 bits 0x8000, with even and odd bf16 mantissas
                        (np.arange(1000, dtype=np.uint32) << 16 | 0x3F808000).view(np.float32),
                        np.float32([0.0, -0.0, 1.0, -1.0, 65504.0, 1e-40])])
    ours = S.f32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


# --- the written folder ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_tiny_model_opens_in_checkpoint_and_transformers(tiny, linear_class):
    pytest.importorskip("torch")
    import torch

    folder = tiny(linear_class)
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)

    ck = Checkpoint(folder)  # checks every tensor's name, shape and dtype against config.json
    cfg = ck.config
    assert cfg.linear_class == linear_class
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (128, 2, 4, 2)
    assert cfg.bos_token_id == 768 and cfg.eos_token_ids == (769,)
    raw_cfg = json.loads((folder / "config.json").read_text())
    assert raw_cfg["architectures"] == ["BitNetForCausalLM"] and raw_cfg["hidden_act"] == "relu2"
    assert raw_cfg["quantization_config"] == {"quant_method": "bitnet", "linear_class": linear_class,
                                              "quantization_mode": "offline"}
    for name, info in ck.file.tensors.items():
        assert info.dtype == ("U8" if name.endswith("proj.weight") else "BF16"), name

    model, info = load_hf(folder)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight

    sd = model.state_dict()
    for name in ck.packed_names():
        ours = unpack_ternary(ck.raw(name))
        theirs = sd[name]
        if linear_class == "autobitlinear":  # unpacked at load, to the model dtype
            assert theirs.dtype == torch.float32
            np.testing.assert_array_equal(theirs.numpy(), ours.astype(np.float32), err_msg=name)
        else:  # BitLinear keeps the packed bytes and unpacks on every forward
            assert theirs.dtype == torch.uint8
            assert theirs.numpy().tobytes() == ck.raw(name).tobytes(), name
        assert sd[name + "_scale"].item() == ck.scale(name + "_scale")
    for name in ck.file.tensors:
        if ck.file.tensors[name].dtype == "BF16" and not name.endswith("_scale"):
            np.testing.assert_array_equal(sd[name].numpy(), ck.f32(name), err_msg=name)


def test_weights_look_as_intended(tiny):
    ck = Checkpoint(tiny())
    w = np.concatenate([unpack_ternary(ck.raw(n)).ravel() for n in ck.packed_names()])
    frac = np.bincount(w + 1, minlength=3) / w.size
    np.testing.assert_allclose(frac, 1 / 3, atol=0.01)  # uniform-ish ternary
    for name in ck.packed_names():
        codes = ck.raw(name)
        assert not np.any(((codes[..., None] >> np.arange(0, 8, 2, dtype=np.uint8)) & 3) == 3), name
        cols = ck.file.tensors[name].shape[1]
        assert ck.scale(name + "_scale") == pytest.approx(1 / np.sqrt(cols * 170 / 256), rel=4e-3)
    emb = ck.f32("model.embed_tokens.weight")
    assert emb.std() == pytest.approx(S.embedding_std(128), rel=0.05) and abs(emb.mean()) < 0.01
    norms = [ck.f32(n) for n in ck.file.tensors if n.endswith("norm.weight")]
    assert all(0.7 < n.min() and n.max() < 1.3 and n.std() > 0.05 for n in norms)


def test_bitlinear_stores_the_reciprocal_scale(tiny):
    auto, bit = Checkpoint(tiny("autobitlinear")), Checkpoint(tiny("bitlinear"))
    for name in auto.packed_names():
        assert auto.raw(name).tobytes() == bit.raw(name).tobytes()  # same seed -> same ternary weights
        assert auto.scale(name + "_scale") * bit.scale(name + "_scale") == pytest.approx(1.0, rel=8e-3)


def test_logits_are_informative_and_both_linear_classes_agree(tiny):
    """Logits must spread across the vocabulary, change with position and context, and not just echo the input
    token (the layers, not the embedding, must decide the top-1, or end-to-end tests could not see a broken layer).
    The two linear classes store reciprocal scales for the same function: their logits must agree."""
    pytest.importorskip("torch")
    auto, _ = load_hf(tiny("autobitlinear"))
    bit, _ = load_hf(tiny("bitlinear"))
    ids = np.random.default_rng(5).integers(0, 768, 48)
    a, b = hf_logits(auto, ids), hf_logits(bit, ids)
    assert np.all(np.isfinite(a))
    assert 2.0 < a.std(axis=-1).mean() < 8.0
    top = a.argmax(-1)
    assert len(set(top.tolist())) > 16
    assert np.mean(top == ids) < 0.3
    c = np.corrcoef(a)
    assert c[~np.eye(len(ids), dtype=bool)].mean() < 0.8  # positions differ
    r = np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    assert r > 0.98 and np.mean(a.argmax(-1) == b.argmax(-1)) > 0.8


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = S.write_model(tmp_path / "a", seed=7)
    b = S.write_model(tmp_path / "b", seed=7)
    c = S.write_model(tmp_path / "c", seed=8)
    for f in MODEL_FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()  # the tokenizer has no seed
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_overrides_reach_config_and_tensors(tmp_path):
    folder = S.write_model(tmp_path / "m", num_hidden_layers=3, vocab_size=600, hidden_size=256,
                           num_attention_heads=2, num_key_value_heads=1, intermediate_size=512, rope_theta=10000.0,
                           max_position_embeddings=256)
    cfg = Checkpoint(folder).config
    assert (cfg.num_hidden_layers, cfg.vocab_size, cfg.hidden_size, cfg.head_dim) == (3, 600, 256, 128)
    assert cfg.rope_theta == 10000.0 and cfg.max_position_embeddings == 256
    assert cfg.bos_token_id == 600 - 256
    tk = json.loads((folder / "tokenizer_config.json").read_text())
    assert tk["model_max_length"] == 256
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 344, "eos_token_id": [345, 353], "do_sample": True, "temperature": 0.6,
                   "top_p": 0.9}


def test_a_tensor_depends_only_on_seed_and_name(tmp_path):
    two = Checkpoint(S.write_model(tmp_path / "two", num_hidden_layers=2))
    three = Checkpoint(S.write_model(tmp_path / "three", num_hidden_layers=3))
    for name in two.file.tensors:  # layers 0-1, embedding and final norm: unchanged by adding layer 2
        assert two.raw(name).tobytes() == three.raw(name).tobytes(), name


@pytest.mark.parametrize("bad, error", [
    (dict(vocab_size=511), ValueError),
    (dict(hiden_size=128), ValueError),
    (dict(hidden_size=100), CheckpointError),  # 4 heads of 25: odd head_dim
    (dict(num_key_value_heads=3), CheckpointError),
])
def test_bad_arguments_are_refused(tmp_path, bad, error):
    with pytest.raises(error):
        S.write_model(tmp_path / "m", **bad)
    with pytest.raises(ValueError):
        S.write_model(tmp_path / "m", "huge")
    with pytest.raises(ValueError):
        S.write_model(tmp_path / "m", linear_class="linear")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(path, tensors, metadata=None):
        next(iter(tensors))
        open(str(path) + ".partial", "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "write_safetensors", boom)
    with pytest.raises(KeyboardInterrupt):
        S.write_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_existing_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert S.write_model(empty) == empty and (empty / "model.safetensors").exists()  # an empty folder is filled
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        S.write_model(full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    S.write_model(full, overwrite=True, seed=3)
    assert sorted(p.name for p in full.iterdir()) == sorted(MODEL_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no temporary folders left


# --- the 2b4t shape, without writing it -----------------------------------------------------------------------------

def test_2b4t_preset_is_the_published_shape():
    raw = S.make_config("2b4t")
    cfg = ModelConfig.from_dict(raw)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (2560, 6912, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (20, 5, 128)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.rope_theta, cfg.rms_norm_eps) == (128256, 4096, 5e5, 1e-5)
    assert cfg.linear_class == "autobitlinear" and cfg.bos_token_id == 128000 and cfg.eos_token_ids == (128001,)
    assert raw["tie_word_embeddings"] is True and raw["torch_dtype"] == "bfloat16"
    assert S.generation_config(cfg.vocab_size)["eos_token_id"] == [128001, 128009]

    expected = cfg.expected_tensors()
    layer0 = {k.removeprefix("model.layers.0."): v[0] for k, v in expected.items() if k.startswith("model.layers.0.")}
    assert layer0["self_attn.q_proj.weight"] == (640, 2560) and layer0["self_attn.o_proj.weight"] == (640, 2560)
    assert layer0["self_attn.k_proj.weight"] == (160, 2560) and layer0["self_attn.v_proj.weight"] == (160, 2560)
    assert layer0["mlp.gate_proj.weight"] == (1728, 2560) and layer0["mlp.up_proj.weight"] == (1728, 2560)
    assert layer0["mlp.down_proj.weight"] == (640, 6912) and layer0["mlp.ffn_sub_norm.weight"] == (6912,)
    assert expected["model.embed_tokens.weight"][0] == (128256, 2560) and "lm_head.weight" not in expected
    size = sum(np.prod(shape) * (1 if "U8" in dtypes else 2) for shape, dtypes in expected.values())
    assert 1.15e9 < size < 1.2e9  # ~1.2 GB, like the published model.safetensors


# --- tokenizer ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size", [512, 1024, 128256])
def test_token_ids_are_contiguous_with_llama3_specials(vocab_size):
    tok = S.build_tokenizer(vocab_size)
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    vocab = tok.get_vocab(with_added_tokens=True)
    assert sorted(vocab.values()) == list(range(vocab_size))
    base = vocab_size - 256
    named = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 2: "<|reserved_special_token_0|>",
             5: "<|reserved_special_token_3|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>",
             8: "<|reserved_special_token_4|>", 9: "<|eot_id|>", 10: "<|reserved_special_token_5|>",
             255: "<|reserved_special_token_250|>"}
    for k, content in named.items():
        assert tok.id_to_token(base + k) == content
    assert all(tok.id_to_token(i).startswith("<|") for i in range(base, vocab_size))
    assert not any(tok.id_to_token(i).startswith("<|") for i in range(base))
    assert S.special_token_ids(vocab_size) == {"bos": base, "end_of_text": base + 1, "eot": base + 9}
    if vocab_size == 128256:
        assert (base, base + 1, base + 9) == (128000, 128001, 128009)
    # byte tokens first, id = byte value, written in the ByteLevel alphabet: decoding id b gives byte b
    from tokenizers import pre_tokenizers

    assert set(S._byte_chars()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert [tok.decode([i]) for i in (65, 32, 10, 0)] == ["A", " ", "\n", "\0"]


@pytest.mark.parametrize("vocab_size", [512, 1024, 128256])
def test_tokenizer_round_trips_any_text(vocab_size):
    tok = S.build_tokenizer(vocab_size)
    rng = np.random.default_rng(vocab_size)
    points = np.concatenate([rng.integers(0x20, 0x7F, 400), rng.integers(0xA0, 0x800, 200),
                             rng.integers(0x800, 0xD800, 200), rng.integers(0xE000, 0xFFFE, 100),
                             rng.integers(0x10000, 0x110000, 100), [0, 9, 10, 13] * 5])
    random_texts = ["".join(map(chr, rng.permutation(points)[:n])) for n in (1, 7, 60, 500)]
    for text in TEXTS + random_texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert all(0 <= i < vocab_size - 256 for i in ids)  # plain text never becomes a special token
        assert tok.decode(ids, skip_special_tokens=False) == text
    enc = tok.encode("Hi", add_special_tokens=True).ids
    assert enc[0] == vocab_size - 256 and enc.count(vocab_size - 256) == 1  # BOS prepended once
    text = "a<|eot_id|>b"
    assert vocab_size - 247 in tok.encode(text, add_special_tokens=False).ids  # special tokens are matched in text


def test_trained_merges_make_common_words_single_tokens():
    tok = S.build_tokenizer(128256)
    assert len(tok.encode(" the", add_special_tokens=False).ids) == 1
    assert len(tok.encode("The quick brown fox", add_special_tokens=False).ids) <= 6


def test_autotokenizer_and_chat_template(tiny):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    folder = tiny()
    with eager_quiet():
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(tok) == 1024
    assert tok.bos_token == "<|begin_of_text|>" and tok.bos_token_id == 768
    assert tok.eos_token == "<|eot_id|>" and tok.eos_token_id == 777
    assert tok.convert_tokens_to_ids(["<|end_of_text|>", "<|start_header_id|>"]) == [769, 774]
    for text in TEXTS:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text

    messages = [{"role": "system", "content": "  You are a helpful assistant.\n"},
                {"role": "user", "content": "What is 2+2? 🤔 "}]
    want = ("<|begin_of_text|>System: You are a helpful assistant.<|eot_id|>"
            "User: What is 2+2? 🤔<|eot_id|>Assistant: ")
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == want
    assert tok.apply_chat_template(messages, tokenize=False) == want.removesuffix("Assistant: ")
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids[0] == 768 and ids.count(768) == 1 and ids.count(777) == 2
    assert tok.decode(ids) == want

    # a multi-turn conversation, and the same string from plain jinja2, which is how the engine renders it
    import jinja2

    turns = messages + [{"role": "assistant", "content": " 4 "}, {"role": "user", "content": "Thanks"}]
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    plain = jinja2.Environment().from_string(template).render(messages=turns, bos_token=tok.bos_token,
                                                              add_generation_prompt=True)
    assert plain == tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert plain.endswith("<|eot_id|>Assistant: 4<|eot_id|>User: Thanks<|eot_id|>Assistant: ")
