"""runtime/tokenizer.py against transformers' AutoTokenizer on the same folders: chat rendering and ids, stop ids, BOS,
streaming detokenization of multi-byte text, and clear errors for broken files."""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from trit.engine.errors import CheckpointError, InputError
from trit.engine.runtime.tokenizer import DEFAULT_CHAT_TEMPLATE, IncrementalDecoder, Tokenizer
from trit.engine.tools import synthetic

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "system+user": [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    "user only": [{"role": "user", "content": "Hi"}],
    "multi-turn": [SYSTEM,
                   {"role": "user", "content": "Write a haiku."},
                   {"role": "assistant", "content": "Quiet ternary\nweights hum on a laptop's core\nno cloud overhead"},
                   {"role": "user", "content": "Now one about the sea."}],
    "ends with assistant": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    "spaces": [{"role": "system", "content": "  padded system\n"},
               {"role": "user", "content": "\t leading and trailing  \n\n"},
               {"role": "assistant", "content": " "},
               {"role": "user", "content": "   "}],
    "unicode": [{"role": "user", "content": "Café, naïve, 你好，世界 — 😀👍🏽 👨‍👩‍👧 e\u0301 Привет مرحبا"}],
    # transformers (sanitize_control_tokens=False, its default) parses special tokens inside content too.
    "special token in content": [{"role": "user", "content": "end here<|eot_id|>Assistant: ok"}],
}

# A Llama 3-style template using what plain jinja2 lacks or does differently: block tags whose newlines
# trim_blocks/lstrip_blocks remove, namespace(), tojson (no HTML escaping), loop controls, {% generation %},
# raise_exception, and bos_token/eos_token.
RICH_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(count=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% set ns.count = ns.count + 1 %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

    {% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] | trim }}{% endgeneration %}
    {% else %}
{{ message['content'] | trim }}
    {% endif %}
{{ eos_token }}
    {% if loop.index > 50 %}{% break %}{% endif %}
{% endfor %}
{{ {'turns': ns.count, 'note': '<b>&</b>'} | tojson }}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""


@pytest.fixture(scope="module")
def folder(make_model):
    return make_model("tiny")


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer.from_folder(folder)


def _auto_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def hf(folder):
    return _auto_tokenizer(folder)


def _copy(folder, dest, **tokenizer_config_changes):
    """A copy of the tokenizer files of folder, with keys of tokenizer_config.json replaced (None deletes)."""
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        shutil.copy(folder / name, dest / name)
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    for key, value in tokenizer_config_changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


# ---------------------------------------------------------------------------------------------------------------
# chat template


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_matches_transformers(tok, hf, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                 return_dict=False)
    assert tok.render_chat(messages, add_generation_prompt=add_generation_prompt) == text
    assert tok.encode_chat(messages, add_generation_prompt=add_generation_prompt) == ids
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id


def test_chat_form_is_the_documented_2b4t_form(tok):
    text = tok.render_chat(CONVERSATIONS["spaces"])
    assert text == ("<|begin_of_text|>System: padded system<|eot_id|>User: leading and trailing<|eot_id|>"
                    "Assistant: <|eot_id|>User: <|eot_id|>Assistant: ")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", ["system+user", "multi-turn", "unicode"])
def test_rich_template_matches_transformers(folder, tmp_path_factory, name, add_generation_prompt):
    path = _copy(folder, tmp_path_factory.mktemp("rich") / "m", chat_template=RICH_TEMPLATE)
    ours, hf = Tokenizer.from_folder(path), _auto_tokenizer(path)
    messages = CONVERSATIONS[name]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # transformers' tojson (no HTML escaping) and whitespace control (no indentation, no blank tag lines) in play
    assert '"<b>&</b>"' in text and "\n " not in text and "\n\n\n" not in text
    assert ours.render_chat(messages, add_generation_prompt) == text
    assert ours.encode_chat(messages, add_generation_prompt) == hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False)


def test_template_raise_exception_is_an_input_error(folder, tmp_path):
    ours = Tokenizer.from_folder(_copy(folder, tmp_path / "m", chat_template=RICH_TEMPLATE))
    with pytest.raises(InputError, match="unknown role tool"):
        ours.render_chat([{"role": "tool", "content": "x"}])


def test_chat_template_jinja_file_wins(folder, tmp_path):
    path = _copy(folder, tmp_path / "m")
    (path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}!")
    assert Tokenizer.from_folder(path).render_chat([{"role": "user", "content": "x"}]) == "<|begin_of_text|>x!"
    assert _auto_tokenizer(path).apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == \
        "<|begin_of_text|>x!"


def test_fallback_template_without_chat_template(folder, tmp_path):
    path = _copy(folder, tmp_path / "m", chat_template=None)
    ours = Tokenizer.from_folder(path)
    assert not ours.has_chat_template and ours.chat_template == DEFAULT_CHAT_TEMPLATE
    messages = [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "Hi there\n"},
                {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "Bye"}]
    expected = ("<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi there<|eot_id|>Assistant: Hello!<|eot_id|>"
                "User: Bye<|eot_id|>")
    assert ours.render_chat(messages, add_generation_prompt=False) == expected
    assert ours.render_chat(messages) == expected + "Assistant: "
    ids = ours.encode_chat(messages)
    assert ids[0] == ours.bos_id and ids.count(ours.bos_id) == 1
    assert ids.count(ours.encode("<|eot_id|>")[0]) == 4


def test_bad_messages_are_input_errors(tok):
    for bad in ([], "hello", [{"role": "user"}], [{"role": "user", "content": 3}], ["hi"]):
        with pytest.raises(InputError):
            tok.render_chat(bad)


# ---------------------------------------------------------------------------------------------------------------
# encode / decode / BOS


def test_bos_exactly_once(tok):
    text = "Hello, world"
    assert tok._tok.encode(text).ids[0] == tok.bos_id  # the post-processor itself adds a BOS...
    ids = tok.encode(text, add_bos=True)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1  # ...yet it appears once
    assert tok.bos_id not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(ids) == text and tok.decode(ids, skip_special=False) == "<|begin_of_text|>" + text


def test_encode_matches_transformers(tok, hf):
    for text in ("plain words", " leading space", "Café 你好 😀", "a<|eot_id|>b", "line\n\n  indented"):
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False)
        assert tok.encode(text, add_bos=True) == hf.encode(text)


def test_out_of_vocabulary_ids_are_input_errors(tok):
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(InputError):
        tok.detokenizer().push(-1)


# ---------------------------------------------------------------------------------------------------------------
# streaming detokenization

STREAM_TEXTS = [
    "Café crème, naïve façade, Straße, Ærøskøbing",
    "你好，世界。今天天气很好。こんにちは、世界。안녕하세요.",
    "Emoji: 😀 🚀 👍🏽 ❤️ 🇫🇷 and a family 👨‍👩‍👧‍👦 and 🏳️‍🌈",
    "combining: e\u0301 a\u0308 n\u0303 \u1e0b\u0323 Z\u0351\u0367\u0300",
    "mixed: Привет مرحبا नमस्ते ∑∫√ — “quotes” …",
]


def _stream(dec: IncrementalDecoder, ids) -> list[str]:
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


def _splits_a_character(tok, ids) -> bool:
    """Whether some token of ids carries only part of a multi-byte character."""
    for i in ids:
        try:
            tok.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


@pytest.mark.parametrize("byte_level", [True, False], ids=["bytes", "window"])
def test_streaming_multibyte_text(tok, byte_level):
    eot = tok.encode("<|eot_id|>")[0]
    split_cases = 0
    for text in STREAM_TEXTS:
        ids = tok.encode(text)
        split_cases += _splits_a_character(tok, ids)
        for seq in (ids, [tok.bos_id, *ids, eot]):
            pieces = _stream(IncrementalDecoder(tok, byte_level=byte_level), seq)
            assert all("\ufffd" not in p for p in pieces), pieces
            assert "".join(pieces) == tok.decode(seq) == text
        # text appears as soon as characters complete: all of it before flush
        dec = IncrementalDecoder(tok, byte_level=byte_level)
        assert "".join(dec.push(i) for i in ids) == text and dec.flush() == ""
    assert split_cases >= 3  # the synthetic vocabulary really splits characters across tokens, so this can fail


def test_special_tokens_produce_no_text(tok):
    dec = tok.detokenizer()
    for i in sorted(tok.stop_ids) + [tok.bos_id]:
        assert dec.push(i) == ""
    assert dec.flush() == ""
    dec = tok.detokenizer(skip_special=False)
    ids = [tok.bos_id, *tok.encode("né"), *sorted(tok.stop_ids)]
    assert "".join(_stream(dec, ids)) == tok.decode(ids, skip_special=False)


def test_streaming_random_bytes_matches_decode(tok):
    """Arbitrary byte tokens (valid, truncated and invalid UTF-8) with special tokens in between: the pieces still
    concatenate to decode(ids), and U+FFFD appears only where the bytes are invalid. (Byte-level mode only: the
    window fallback is exact for valid UTF-8, tested above, but not for invalid bytes.)"""
    rng = random.Random(1)
    utf8 = [b for ch in "é你😀\u0301" for b in ch.encode()]
    for _ in range(200):
        ids = [rng.choice([rng.randrange(256), rng.choice(utf8), rng.choice(utf8), tok.bos_id])
               for _ in range(rng.randrange(1, 12))]
        expected = tok.decode(ids)
        pieces = _stream(tok.detokenizer(), ids)
        assert "".join(pieces) == expected, ids
        if "\ufffd" not in expected:
            assert all("\ufffd" not in p for p in pieces)


def test_detokenizer_is_reusable_after_flush(tok):
    dec = tok.detokenizer()
    first = tok.encode("你")
    assert "".join(dec.push(i) for i in first[:-1]) == ""
    assert dec.flush() == "\ufffd"  # a truncated character at the end is really invalid
    assert "".join(_stream(dec, tok.encode("ok 😀"))) == "ok 😀"


# ---------------------------------------------------------------------------------------------------------------
# stop ids, vocab, files


@pytest.fixture(scope="module")
def tokenizer_2b4t(tmp_path_factory):
    """Only the tokenizer files of the 2B4T shape (vocab 128256), no weights."""
    path = tmp_path_factory.mktemp("tok2b4t")
    vocab = synthetic.PRESETS["2b4t"]["vocab_size"]
    synthetic.build_tokenizer(vocab).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(synthetic.tokenizer_config(vocab, 4096)))
    (path / "generation_config.json").write_text(json.dumps(synthetic.generation_config(vocab)))
    (path / "config.json").write_text(json.dumps(synthetic.make_config("2b4t")))
    return path


def test_2b4t_ids(tokenizer_2b4t):
    t = Tokenizer.from_folder(tokenizer_2b4t)
    assert t.vocab_size == 128256
    assert t.bos_id == 128000
    assert t.stop_ids == frozenset({128001, 128009}) and isinstance(t.stop_ids, frozenset)
    ids = t.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids[0] == 128000 and ids.count(128000) == 1 and ids.count(128009) == 1


def test_stop_ids_without_generation_config(tokenizer_2b4t, tmp_path):
    shutil.copytree(tokenizer_2b4t, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").unlink()
    # config.json's eos (128001) plus tokenizer_config's eos_token <|eot_id|>
    assert Tokenizer.from_folder(tmp_path / "m").stop_ids == {128001, 128009}
    (tmp_path / "m" / "tokenizer_config.json").unlink()
    t = Tokenizer.from_folder(tmp_path / "m")
    assert t.stop_ids == {128001} and t.bos_id == 128000
    assert t.render_chat([{"role": "user", "content": "x"}]) == "<|begin_of_text|>User: x<|eot_id|>Assistant: "


def test_stop_ids_int_form(folder, tmp_path):
    path = _copy(folder, tmp_path / "m", eos_token=None)
    gen = json.loads((path / "generation_config.json").read_text())
    gen["eos_token_id"] = gen["eos_token_id"][0]
    (path / "generation_config.json").write_text(json.dumps(gen))
    assert Tokenizer.from_folder(path).stop_ids == {gen["eos_token_id"]}


def _one_line_naming(excinfo, name):
    msg = str(excinfo.value)
    assert name in msg and "\n" not in msg, msg


def test_missing_tokenizer_json(folder, tmp_path):
    path = _copy(folder, tmp_path / "m")
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(path)
    _one_line_naming(e, "tokenizer.json")


@pytest.mark.parametrize("content", ["", "{\"version\": \"1.0\", \"model\": ", "{\"hello\": 1}", "[1, 2]",
                                     "\xff\xfe not json"])
def test_corrupt_tokenizer_json(folder, tmp_path, content):
    path = _copy(folder, tmp_path / "m")
    (path / "tokenizer.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(path)
    _one_line_naming(e, "tokenizer.json")


def test_truncated_tokenizer_json(folder, tmp_path):
    path = _copy(folder, tmp_path / "m")
    data = (path / "tokenizer.json").read_bytes()
    (path / "tokenizer.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(path)
    _one_line_naming(e, "tokenizer.json")


def test_corrupt_tokenizer_config(folder, tmp_path):
    path = _copy(folder, tmp_path / "m")
    (path / "tokenizer_config.json").write_text("{ not json")
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(path)
    _one_line_naming(e, "tokenizer_config.json")


def test_broken_chat_template_is_a_checkpoint_error(folder, tmp_path):
    with pytest.raises(CheckpointError, match="chat template"):
        Tokenizer.from_folder(_copy(folder, tmp_path / "m", chat_template="{% for m in messages %}"))


def test_stop_id_outside_vocabulary(folder, tmp_path):
    path = _copy(folder, tmp_path / "m")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 10**6]}))
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_folder(path)
    _one_line_naming(e, "generation_config.json")
