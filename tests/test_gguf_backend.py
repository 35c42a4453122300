"""GGUF models through llama-cpp-python behind engine.load / model.chat: a tiny random llama GGUF written here, run
by the real llama.cpp. The conversation logic is runtime/chat.py's own (tests/test_chat.py); these tests check what the
llama.cpp context and tokenizer must get right for it: reuse, logits after reuse, cancelling, overflow, refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install \"trit[gguf]\")")
pytest.importorskip("gguf", reason="the gguf package is not installed (pip install \"trit[gguf]\")")

import gguf_models  # noqa: E402

from trit import engine  # noqa: E402
from trit.engine.backends.llamacpp import library  # noqa: E402
from trit.engine.formats.gguf import BITNET_ARCHITECTURES  # noqa: E402
from trit.engine.runtime.chat import Chat, ChatResult, Piece  # noqa: E402
from trit.engine.runtime.sampling import SamplingParams  # noqa: E402

PARAMS = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, seed=7)
CONVERSATION = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello to the world, é!"}]


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return gguf_models.write_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", seed=3)


@pytest.fixture(scope="module")
def model(gguf_path):
    with engine.load(gguf_path, threads=1) as m:
        yield m


def run(chat_or_model, messages, params=PARAMS, cancel=None):
    stream = chat_or_model.stream(messages, params, cancel) if isinstance(chat_or_model, Chat) \
        else chat_or_model.chat(messages, params, cancel)
    events = list(stream)
    assert isinstance(events[-1], ChatResult) and all(isinstance(e, Piece) for e in events[:-1])
    assert "".join(e.text for e in events[:-1]) == events[-1].text
    return events[-1]


class CancelAfter:
    """is_set() turns true at its n-th call (prefill asks once per chunk, decoding once per token)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def is_set(self):
        self.calls += 1
        return self.calls >= self.n


def kv_positions(ctx):
    lib, mem = ctx._lib, ctx._memory
    return lib.llama_memory_seq_pos_min(mem, 0), lib.llama_memory_seq_pos_max(mem, 0)


def test_chat_streams_and_fills_the_result(model, capfd):
    assert model.backend == "llama.cpp" and engine.Model.backend == "bitnet"
    result = run(model, CONVERSATION)
    assert result.finish_reason in ("stop", "length") and result.generated_tokens == len(result.token_ids) > 0
    assert result.prompt_tokens == len(model.tokenizer.encode_chat(CONVERSATION)) and result.reused_tokens == 0
    assert result.n_ctx == 512 and result.prefill_tok_s > 0 and result.decode_tok_s > 0
    assert result.text == model.tokenizer.decode(result.token_ids)
    assert not result.text or result.time_to_first_token_s > 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # llama.cpp's log does not reach the terminal


def test_template_tokens_and_stops_come_from_the_gguf(model):
    tok = model.tokenizer
    tokens = gguf_models.vocabulary()[0]
    assert tok.stop_ids == {tokens.index(gguf_models.EOS), tokens.index(gguf_models.EOT)}
    ids = tok.encode_chat(CONVERSATION)
    assert ids[0] == tok.bos_id == tokens.index(gguf_models.BOS) and ids.count(tok.bos_id) == 1
    assert tok.decode(ids, skip_special=False) == tok.render_chat(CONVERSATION)
    assert tok.render_chat(CONVERSATION).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.decode(ids) == tok.render_chat(CONVERSATION).replace(gguf_models.BOS, "").replace(
        gguf_models.EOT, "").replace(gguf_models.START_HEADER, "").replace(gguf_models.END_HEADER, "")


def test_streaming_never_splits_a_character(model):
    tok = model.tokenizer
    alphabet = gguf_models.byte_alphabet()
    e_acute = [alphabet[b] for b in "é".encode()]  # two byte tokens
    euro = [alphabet[b] for b in "€".encode()]  # three
    tokens = gguf_models.vocabulary()[0]
    ids = [tokens.index(t) for t in [*e_acute, "a", *euro, euro[0]]]  # ends with half a character
    dec = tok.detokenizer()
    pieces = [dec.push(i) for i in ids]
    assert pieces == ["", "é", "a", "", "", "€", ""]
    assert "".join(pieces) + dec.flush() == tok.decode(ids) == "éa€\ufffd"


def test_same_seed_same_text(model):
    a = run(Chat(model, model.tokenizer), CONVERSATION)
    b = run(Chat(model, model.tokenizer), CONVERSATION)
    assert a.text == b.text and a.token_ids == b.token_ids
    c = run(Chat(model, model.tokenizer), CONVERSATION, PARAMS.replace(seed=8))
    assert c.token_ids != a.token_ids


def test_turn_two_reuses_the_cache_and_its_logits_equal_a_fresh_run(model):
    chat = Chat(model, model.tokenizer)
    first = run(chat, CONVERSATION)
    follow = CONVERSATION + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Again?"}]
    ids, text = chat.prompt(follow)
    logits, reused, _ = chat.prefill(ids, text=text)
    assert reused >= first.prompt_tokens and chat.context.tokens == ids
    assert kv_positions(chat.context) == (0, len(ids) - 1)
    with model.context() as fresh:
        expected = fresh.eval(ids)
    # Not bitwise: llama.cpp's CPU flash attention (on by default) takes Q·K in f16, and the batches differ.
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    # through model.chat: the session that held turn one continues it
    one = run(model, CONVERSATION)
    two = run(model, CONVERSATION + [{"role": "assistant", "content": one.text}, {"role": "user", "content": "Again?"}])
    assert two.reused_tokens >= one.prompt_tokens


def test_cancel_mid_decode_leaves_a_consistent_cache(model):
    chat = Chat(model, model.tokenizer)
    cut = run(chat, CONVERSATION, PARAMS.replace(max_tokens=40), cancel=CancelAfter(6))  # 1 prefill chunk, 5 tokens
    assert cut.finish_reason == "cancelled" and cut.generated_tokens == 4
    ids = model.tokenizer.encode_chat(CONVERSATION)
    assert chat.context.tokens == ids + cut.token_ids and kv_positions(chat.context) == (0, len(ids) + 3)
    # the same four tokens, not cancelled: a reply that ended at max_tokens
    whole = Chat(model, model.tokenizer)
    assert run(whole, CONVERSATION, PARAMS.replace(max_tokens=4)).token_ids == cut.token_ids
    follow = CONVERSATION + [{"role": "assistant", "content": cut.text}, {"role": "user", "content": "Go on."}]
    prompt, text = chat.prompt(follow)
    logits, reused, _ = chat.prefill(prompt, text=text)
    assert reused == len(ids) + 4
    with model.context() as fresh:
        expected = fresh.eval(prompt)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    after, other = run(chat, follow), run(whole, follow)
    assert after.token_ids == other.token_ids and after.text == other.text and after.generated_tokens > 0


def test_cancel_mid_prefill_leaves_a_consistent_cache(gguf_path):
    with engine.GGUFModel(gguf_path, threads=1, batch=8) as small_batches:
        chat = Chat(small_batches, small_batches.tokenizer)
        long = [CONVERSATION[0], {"role": "user", "content": "the cat sat on the mat " * 6}]
        ids = small_batches.tokenizer.encode_chat(long)
        assert len(ids) > 3 * 8
        cut = run(chat, long, cancel=CancelAfter(3))  # two chunks of 8, then the cancel
        assert cut.finish_reason == "cancelled" and cut.generated_tokens == 0 and cut.text == ""
        assert chat.context.tokens == ids[:16] and kv_positions(chat.context) == (0, 15)
        again = run(chat, long)
        fresh = run(Chat(small_batches, small_batches.tokenizer), long)
        assert again.reused_tokens == 16 and again.token_ids == fresh.token_ids and again.text == fresh.text


def test_overflow_drops_the_oldest_turns_but_not_the_system_prompt(gguf_path):
    with engine.GGUFModel(gguf_path, threads=1, n_ctx=96) as small:
        messages = [{"role": "system", "content": "SYSTEM RULES"}]
        for i in range(6):
            messages += [{"role": "user", "content": f"question {i} about the weather"},
                         {"role": "assistant", "content": f"answer {i} is sunny"}]
        messages.append({"role": "user", "content": "last question"})
        result = run(small, messages, PARAMS.replace(max_tokens=16))
        assert result.dropped_messages > 0 and result.n_ctx == 96
        assert result.prompt_tokens + result.generated_tokens <= 96
        chat = small._sessions.sessions[-1]
        prompt = small.tokenizer.decode(chat.context.tokens[:result.prompt_tokens], skip_special=False)
        assert "SYSTEM RULES" in prompt and "last question" in prompt and "question 0" not in prompt


def test_sampling_defaults_come_from_the_gguf(model, tmp_path):
    assert model.default_params() == SamplingParams()
    path = gguf_models.write_llama(tmp_path / "sampling.gguf", n_layer=1,
                                   sampling={"temp": 0.6, "top_k": 20, "top_p": 0.9, "penalty_repeat": 1.1})
    info = engine.check_gguf(path)
    assert info.sampling == pytest.approx({"temperature": 0.6, "top_k": 20, "top_p": 0.9,
                                           "repetition_penalty": 1.1})
    with engine.load(path, threads=1) as m:
        p = m.default_params(top_k=5)
        assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty) == pytest.approx((0.6, 5, 0.9, 1.1))


def test_header_info_and_folder_dispatch(gguf_path, tmp_path):
    info = engine.check_gguf(gguf_path)
    assert (info.architecture, info.name, info.context_length, info.file_type) == ("llama", "tiny-llama", 512, "F32")
    assert info.vocab_size == len(gguf_models.vocabulary()[0]) and info.chat_template == gguf_models.CHAT_TEMPLATE
    assert info.backend == "llama.cpp" and info.summary()["architecture"] == "llama"
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny.gguf").write_bytes(gguf_path.read_bytes())
    assert engine.find_gguf(folder) == folder / "tiny.gguf"
    with engine.load(folder, threads=1) as m:
        assert m.backend == "llama.cpp" and m.path == folder / "tiny.gguf"


@pytest.mark.parametrize("arch", sorted(BITNET_ARCHITECTURES))
def test_a_bitnet_gguf_is_refused_with_the_reason(tmp_path, arch):
    path = gguf_models.write_arch(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(engine.EngineError) as e:
        engine.load(path)
    message = str(e.value)
    assert "\n" not in message and "SiLU" in message and "relu²" in message and "trit import" in message


def test_bad_files_are_one_clear_line(gguf_path, tmp_path, capfd):
    data = gguf_path.read_bytes()
    cases = {
        "text.gguf": (b"hello, I am not a model\n" * 3, "not a GGUF file"),
        "empty.gguf": (b"", "not a GGUF file"),
        "half.gguf": (data[:len(data) // 2], "truncated"),
        "header.gguf": (data[:100], "truncated"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(engine.GGUFError) as e:
            engine.load(tmp_path / name)
        assert expected in str(e.value) and "\n" not in str(e.value), name
    with pytest.raises(engine.GGUFError, match="file not found"):
        engine.load(tmp_path / "missing.gguf")
    unknown = gguf_models.write_arch(tmp_path / "unknown.gguf", "no-such-arch", with_vocabulary=True)
    with pytest.raises(engine.GGUFError) as e:
        engine.load(unknown)
    assert "unknown model architecture: 'no-such-arch'" in str(e.value) and "\n" not in str(e.value)
    embedding = gguf_models.write_arch(tmp_path / "bert.gguf", "bert")
    with pytest.raises(engine.GGUFError, match="does not generate text"):
        engine.load(embedding)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_without_llama_cpp_one_line_says_what_to_install(gguf_path, monkeypatch):
    monkeypatch.setattr(library, "_lib", None)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    with pytest.raises(engine.EngineError, match=r'pip install "trit\[gguf\]"') as e:
        engine.load(gguf_path)
    assert "\n" not in str(e.value)
