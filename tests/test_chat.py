"""Conversation turns on the real engine with a small synthetic model: reuse, overflow, cancelling, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from trit import engine
from trit.engine.runtime.chat import Chat, ChatResult, Piece, common_prefix
from trit.engine.runtime.sampling import SamplingParams
from trit.engine.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_folder(make_model):
    return make_model("tiny", seed=5, max_position_embeddings=512)


def new_chat(folder, n_ctx=None):
    return Chat(engine.load(folder, threads=2), Tokenizer.from_folder(folder), n_ctx)


def run(chat, messages, params, cancel=None):
    events = list(chat.stream(messages, params, cancel))
    assert isinstance(events[-1], ChatResult)
    pieces = [e.text for e in events[:-1]]
    assert all(isinstance(e, Piece) for e in events[:-1])
    result = events[-1]
    assert "".join(pieces) == result.text
    return result


PARAMS = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, seed=7)
CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three rivers."}]


def test_same_seed_same_reply_and_counts(model_folder):
    a = run(new_chat(model_folder), CONVERSATION, PARAMS)
    b = run(new_chat(model_folder), CONVERSATION, PARAMS)
    assert a.text == b.text and a.token_ids == b.token_ids and a.generated_tokens == len(a.token_ids) > 0
    assert a.reused_tokens == 0 and a.prompt_tokens > 0 and a.finish_reason in ("stop", "length")


def test_turn_two_prefills_only_its_new_tokens(model_folder):
    """When the reply comes back verbatim in the next prompt, the cache covers the first prompt and the reply."""
    exact = 0
    for seed in range(7, 27):
        chat = new_chat(model_folder)
        first = run(chat, CONVERSATION, SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, seed=seed))
        follow = CONVERSATION + [{"role": "assistant", "content": first.text},
                                 {"role": "user", "content": "And two more?"}]
        cached = len(chat.context.tokens)  # the first prompt and the reply it evaluated
        ids, text = chat.prompt(follow)
        logits, reused, _ = chat.prefill(ids, text=text)
        assert reused >= first.prompt_tokens - 1 and chat.context.n_past == len(ids)
        verbatim = first.text == first.text.strip() and not any(map(chat.tokenizer.is_special, first.token_ids))
        if verbatim:  # the template trims replies, and streamed text leaves special tokens out
            assert reused == cached
            exact += 1
            # the logits after reuse equal a fresh full prefill of the same prompt
            fresh = engine.load(model_folder, threads=2).logits(ids)[-1]
            np.testing.assert_allclose(logits, fresh, rtol=1e-4, atol=1e-3)
            second = run(chat, follow, PARAMS)
            assert second.reused_tokens == len(ids) - 1 and second.prompt_tokens == len(ids)
    print(f"{exact} of 20 replies came back verbatim")
    assert exact >= 1, "no reply came back verbatim: the reuse test did not run"


def test_overflow_drops_the_oldest_turns_and_keeps_the_system_prompt(model_folder):
    chat = new_chat(model_folder, n_ctx=160)
    long_turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "words " * 12}
                  for i in range(9)]
    messages = [CONVERSATION[0]] + long_turns
    result = run(chat, messages, SamplingParams(temperature=0, max_tokens=16))
    assert result.dropped_messages > 0 and result.prompt_tokens + 16 <= 160
    kept = chat.tokenizer.decode(chat.context.tokens[:result.prompt_tokens])
    assert kept.startswith("System: You are terse.") and "turn 8" in kept and "turn 0 " not in kept


def test_a_message_longer_than_the_context_is_a_clear_error(model_folder):
    chat = new_chat(model_folder, n_ctx=64)
    with pytest.raises(engine.InputError, match="does not fit the context"):
        run(chat, [{"role": "user", "content": "words " * 200}], PARAMS)


class CancelAfter:
    def __init__(self, checks):
        self.left = checks

    def is_set(self):
        self.left -= 1
        return self.left < 0


@pytest.mark.parametrize("checks", [0, 1, 5])  # 0-1: during the prefill (chunks of 8), 5: during decoding
def test_cancel_leaves_a_consistent_cache(model_folder, checks):
    chat = new_chat(model_folder)
    chat.context.max_batch = 8  # several prefill chunks, so a cancel can land between them
    cancelled = run(chat, CONVERSATION, PARAMS, CancelAfter(checks))
    assert cancelled.finish_reason == "cancelled"
    assert chat.context.n_past <= cancelled.prompt_tokens + cancelled.generated_tokens
    # the next turn on this cache gives what a fresh engine gives
    again = run(chat, CONVERSATION, PARAMS)
    fresh = run(new_chat(model_folder), CONVERSATION, PARAMS)
    assert again.token_ids == fresh.token_ids


def test_stop_strings_end_the_reply_before_they_show(model_folder):
    free = run(new_chat(model_folder), CONVERSATION, SamplingParams(temperature=0, max_tokens=24))
    if len(free.text) < 6:
        pytest.skip("the random model's greedy reply is too short to cut")
    stop = free.text[3:6]
    cut = run(new_chat(model_folder), CONVERSATION, SamplingParams(temperature=0, max_tokens=24, stop=(stop,)))
    assert cut.finish_reason == "stop_string" and stop not in cut.text and free.text.startswith(cut.text)


def reply_to(model, messages, params=PARAMS):
    events = list(model.chat(messages, params))
    return events[-1]


def follow_up(messages, result, text):
    return messages + [{"role": "assistant", "content": result.text}, {"role": "user", "content": text}]


def test_model_chat_keeps_recent_conversations_warm(model_folder):
    """Two conversations taking turns each continue in their own cache; a third, beyond the budget, takes the
    least recently used one."""
    model = engine.load(model_folder, threads=2)
    model.chat([], PARAMS)  # the sessions exist once chat is first called
    a = [{"role": "user", "content": "Tell me about the sea."}]
    b = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Bonjour?"}]
    ra, rb = reply_to(model, a), reply_to(model, b)
    assert ra.reused_tokens == 0 and rb.reused_tokens == 0
    a2, b2 = follow_up(a, ra, "And rivers?"), follow_up(b, rb, "Encore?")
    ra2, rb2 = reply_to(model, a2), reply_to(model, b2)
    assert ra2.reused_tokens >= ra.prompt_tokens - 1 and rb2.reused_tokens >= rb.prompt_tokens - 1
    regenerated = reply_to(model, a2)  # the same turn again: everything but the last prompt token is cached
    assert regenerated.reused_tokens == regenerated.prompt_tokens - 1
    assert len(model._sessions.sessions) == 2
    model.close()


def test_sessions_are_bounded(model_folder):
    from trit.engine.runtime.chat import ChatSessions

    model = engine.load(model_folder, threads=2)
    sessions = ChatSessions(model, Tokenizer.from_folder(model_folder), max_sessions=1)
    a = [{"role": "user", "content": "Tell me about the sea."}]
    b = [{"role": "user", "content": "Something else entirely, please."}]
    ra = list(sessions.stream(a, PARAMS))[-1]
    list(sessions.stream(b, PARAMS))
    ra2 = list(sessions.stream(follow_up(a, ra, "More."), PARAMS))[-1]
    assert len(sessions.sessions) == 1 and ra2.reused_tokens < ra.prompt_tokens  # a's cache was given to b
    # a budget of one full window on this model holds exactly one conversation
    c = model.config
    one = c.num_hidden_layers * 2 * 512 * c.num_key_value_heads * c.head_dim * 2
    assert ChatSessions(model, sessions.tokenizer, budget_bytes=one).max_sessions == 1
    assert ChatSessions(model, sessions.tokenizer, budget_bytes=3 * one).max_sessions == 3
    sessions.close()
    model.close()


def test_model_chat_defaults_come_from_generation_config(model_folder):
    import json

    model = engine.load(model_folder, threads=2)
    config = json.loads((model_folder / "generation_config.json").read_text())
    params = model.default_params()
    assert params.temperature == config.get("temperature", params.temperature)
    result = reply_to(model, CONVERSATION, model.default_params(seed=3, max_tokens=5))
    assert result.n_ctx == 512 and result.generated_tokens <= 5
    assert set(result.to_dict()) >= {"text", "prompt_tokens", "reused_tokens", "generated_tokens", "prefill_tok_s",
                                     "decode_tok_s", "dropped_messages", "finish_reason"}
    model.close()


def test_a_reply_the_template_trims_is_still_reused(model_folder):
    """The template strips the whitespace a reply ends with; the cached reply tokens before it still count."""
    chat = new_chat(model_folder)
    first = [{"role": "user", "content": "Say something."}]
    ids, text = chat.prompt(first)
    reply = "The tide is out.  \n"
    reply_ids = chat.tokenizer.encode(reply)
    chat.prefill(ids + reply_ids, text=text + reply)
    follow = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    new_ids, _ = chat.prompt(follow)
    kept = common_prefix(chat.context.tokens, new_ids)
    assert kept >= len(ids) + len(chat.tokenizer.encode("The tide is out.")) - 1
    assert chat.tokenizer.decode(new_ids, skip_special=False) == chat.tokenizer.render_chat(follow)


def test_on_the_demo_model_turn_two_prefills_only_its_new_tokens():
    """With trained weights the replies are real text that comes back verbatim: the next turn reuses the whole cache,
    prompt and reply, and its logits equal a fresh prefill of the same prompt."""
    from trit.assets import DEMO_MODEL

    model = engine.load(DEMO_MODEL, threads=2)
    conversation = [{"role": "user", "content": "Who is Mr. Darcy?"}]
    params = model.default_params(temperature=0, max_tokens=40)
    first = list(model.chat(conversation, params))[-1]
    assert first.generated_tokens > 0 and first.text
    cached = len(model._sessions.sessions[0].context.tokens)
    follow = follow_up(conversation, first, "And Elizabeth?")
    second = list(model.chat(follow, params))[-1]
    # everything cached is reused: the prompt and the reply (its last token is not evaluated at the length limit)
    assert second.reused_tokens == cached >= first.prompt_tokens + first.generated_tokens - 1
    chat = model._sessions.sessions[0]
    ids = chat.context.tokens[:second.prompt_tokens]
    assert chat.tokenizer.decode(ids, skip_special=False) == chat.tokenizer.render_chat(follow)
    # the logits after reuse equal those of a fresh prefill of the same tokens
    chat.context.truncate(second.prompt_tokens - 1)
    continued = chat.context.eval(ids[-1:])
    fresh = engine.load(DEMO_MODEL, threads=2).logits(ids)[-1]
    np.testing.assert_allclose(continued, fresh, rtol=1e-4, atol=1e-3)
    assert int(np.argmax(continued)) == int(np.argmax(fresh))
    model.close()
