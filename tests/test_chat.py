"""Conversation turns on the real engine with a small synthetic model: reuse, overflow, cancelling, seeds."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.chat import Chat, ChatResult, Piece
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer


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
