"""A conversation turn, streamed: the chat template, KV-prefix reuse across turns, sampling, stopping, cancelling.

    chat = Chat(model, tokenizer)
    for event in chat.stream(messages, params, cancel=event):
        if isinstance(event, Piece): print(event.text, end="")
        else: result = event                      # the last event: a ChatResult

The context keeps the tokens of the previous turn, generated ones included, and the text they spell. The cached
tokens that spell a prefix of the new prompt's text are kept, and only the rest of the text is tokenized and
prefilled: tokenizing the whole prompt again would split the reply's first word from "Assistant: " differently and
lose the reuse. When the cache's text is not known, the longest common token prefix is reused. A cancel is noticed
between prefill chunks and between decoded tokens, and leaves the cache consistent (it holds exactly the tokens
evaluated).

stream(..., saved=PATH) keeps the cache on disk between processes (engine/formats/kv_file.py): before the turn the
file is loaded when it holds more of the conversation than the context does, tokens and text both (without the text
the next turn's reuse would be lost); after it, the file is extended with the turn's new positions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Protocol, Sequence

from trit.engine.errors import ContextLengthError, EngineError, InputError
from trit.engine.runtime.sampling import Sampler, SamplingParams, StopStrings
from trit.engine.runtime.tokenizer import BaseTokenizer

if TYPE_CHECKING:  # the model owns its conversations (Model.chat): chat.py needs the type only
    from trit.engine.runtime.model import Model


class Cancel(Protocol):
    def is_set(self) -> bool: ...


class KVContext(Protocol):
    """What Chat needs of a KV cache: engine.runtime.model.Context (native) and engine.backends.llamacpp.LlamaCppContext
    (llama.cpp) both are one. A model gives them out with model.context(n_ctx) and has config.vocab_size."""

    tokens: list[int]  # the tokens the cache holds, positions 0..n-1
    n_ctx: int
    max_batch: int  # a prefill is fed in chunks of at most this many tokens; a cancel is noticed between them

    def eval(self, token_ids, logits: str | None = "last"): ...  # -> float32 [vocab] for "last", None for None

    def truncate(self, n_past: int) -> None: ...  # keep at most the first n_past tokens (tokens says how many)

    def close(self) -> None: ...


@dataclass
class Piece:
    text: str


@dataclass
class ChatResult:
    text: str
    finish_reason: str  # "stop" (end-of-turn token), "stop_string", "length", "cancelled"
    prompt_tokens: int
    reused_tokens: int  # of the prompt, found in the cache
    generated_tokens: int
    dropped_messages: int = 0  # oldest turns left out so the conversation fits the context
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    time_to_first_token_s: float = 0.0
    n_ctx: int = 0  # the context window; prompt_tokens + generated_tokens of it are in use
    token_ids: list[int] = field(default_factory=list, repr=False)
    cache_error: OSError | None = field(default=None, repr=False)  # why the cache could not be saved (stream's saved)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("token_ids", "cache_error")}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def reply_room(max_tokens: int, n_ctx: int) -> int:
    """The positions a prompt leaves free for the reply: max_tokens, but never more than half the context."""
    return max(1, min(max_tokens, n_ctx // 2))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Chat:
    """One model's conversation engine with a KV cache that carries over from turn to turn."""

    def __init__(self, model: Model, tokenizer: BaseTokenizer, n_ctx: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.context: KVContext = model.context(n_ctx)
        self._text = ""  # what context.tokens spell, when known exactly
        self.last_prompt_tokens = 0

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    def prompt(self, messages: Sequence[Mapping]) -> tuple[list[int], str]:
        """The prompt's token ids, and the text they spell ("" when not known exactly).

        The text is the rendered prompt as its own tokens spell it (decode(encode(rendered))): the same text for a
        byte-level tokenizer, and for a SentencePiece one the text with the spaces its "▁" markers stand for, which
        is what the cached tokens spell too."""
        rendered = self.tokenizer.render_chat(messages)
        ids = self.tokenizer.encode(rendered)
        text = self.tokenizer.decode(ids, skip_special=False)
        cached = self.context.tokens
        keep = self._reusable_tokens(text)
        if keep:
            kept = self.tokenizer.decode(cached[:keep], skip_special=False)
            suffix_ids = self.tokenizer.encode_continuation(text[len(kept):])
            if self.tokenizer.decode(cached[:keep] + suffix_ids, skip_special=False) == text:
                return cached[:keep] + suffix_ids, text
        return ids, text

    def _reusable_tokens(self, rendered: str, cached: Sequence[int] | None = None, text: str | None = None) -> int:
        """How many cached tokens spell a prefix of the new prompt's text: all of them for a follow-up; fewer when
        the conversation changed, or when the template trimmed the whitespace a reply ended with. cached and text:
        another cache's (a saved one), instead of the context's."""
        if cached is None:
            cached, text = self.context.tokens, self._text
        if not text or not cached:
            return 0
        if rendered.startswith(text):
            return len(cached)
        spells_prefix = lambda k: rendered.startswith(self.tokenizer.decode(cached[:k], skip_special=False))  # noqa: E731
        lo, hi = 0, len(cached)  # the largest k whose text is a prefix (prefixes of a prefix are prefixes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if spells_prefix(mid) else (lo, mid - 1)
        return lo

    def fit(self, messages: Sequence[Mapping], reply_room: int,
            keep_all: bool = False) -> tuple[list[int], str, int]:
        """Prompt ids with room for the reply, the text they spell, and how many of the oldest turns were dropped
        to make it fit (never the system prompt). keep_all: drop none, raise ContextLengthError instead (an API
        caller decides what to leave out, never the engine behind its back)."""
        messages = list(messages)
        system = [m for m in messages[:1] if m.get("role") == "system"]
        turns = messages[len(system):]
        dropped = 0
        while True:
            ids, text = self.prompt(system + turns)
            if len(ids) + reply_room <= self.n_ctx:
                return ids, text, dropped
            if keep_all:
                raise ContextLengthError(f"the conversation is {len(ids)} tokens long and does not fit the context of "
                                         f"{self.n_ctx} with room for a reply of {reply_room}: shorten it")
            if len(turns) <= 1:
                raise InputError(f"the message is {len(ids)} tokens long and does not fit the context of {self.n_ctx} "
                                 f"with room for a reply of {reply_room}: shorten it")
            turns, dropped = turns[1:], dropped + 1

    def prefill(self, ids: list[int], cancel: Cancel | None = None, text: str = ""):
        """Evaluate what the cache does not already hold; returns (logits of the last prompt token, reused, seconds)
        or (None, reused, seconds) if cancelled between chunks. `text`: what ids spell, kept for the next turn."""
        ctx = self.context
        reused = min(common_prefix(ctx.tokens, ids), len(ids) - 1)  # the last token is evaluated for its logits
        ctx.truncate(reused)
        reused = len(ctx.tokens)  # fewer when the cache cannot be cut back there (a recurrent model's state)
        self._text = ""  # known again once the whole prompt is in
        t = time.perf_counter()
        logits = None
        for start in range(reused, len(ids), ctx.max_batch):
            if cancel is not None and cancel.is_set():
                return None, reused, time.perf_counter() - t
            chunk = ids[start:start + ctx.max_batch]
            logits = ctx.eval(chunk, logits="last" if start + len(chunk) == len(ids) else None)
        self._text = text
        return logits, reused, time.perf_counter() - t

    def restore(self, messages: Sequence[Mapping], path: Path) -> int:
        """Load the cache saved at `path` when it holds more of this conversation's prompt than the context does;
        returns the positions restored (0: the file was missing, not this model's, damaged, or no better)."""
        if not hasattr(self.context, "write_kv"):  # llama.cpp's contexts are not saved
            return 0
        from trit.engine.formats import kv_file

        stamp = kv_file.stamp(self.model)
        saved = kv_file.peek(path, stamp, self.n_ctx)
        if saved is None or self.tokenizer.decode(saved.tokens, skip_special=False) != saved.text:
            return 0
        rendered = self.tokenizer.render_chat(messages)
        if self._reusable_tokens(rendered, saved.tokens, saved.text) <= self._reusable_tokens(rendered):
            return 0
        self._text = ""  # the context is replaced: its text is known again only if the whole file loads
        if kv_file.load(path, self.context, stamp) is None:
            return 0
        self._text = saved.text
        return len(saved.tokens)

    def save(self, path: Path) -> None:
        """Write the cache and its text to `path` (extending what is there when it can). Raises OSError."""
        if not hasattr(self.context, "read_kv") or not self._text or not self.context.tokens:
            return  # nothing whose text is known: a file from an earlier turn stays as valid as it was
        from trit.engine.formats import kv_file

        kv_file.save(path, self.context, self._text, kv_file.stamp(self.model))

    def stream(self, messages: Sequence[Mapping], params: SamplingParams,
               cancel: Cancel | None = None, keep_all: bool = False,
               saved: Path | None = None) -> Iterator[Piece | ChatResult]:
        start = time.perf_counter()  # a cache loaded from disk counts in the time to the first token
        if saved is not None:
            self.restore(messages, saved)
        ids, prompt_text, dropped = self.fit(messages, reply_room(params.max_tokens, self.n_ctx), keep_all)
        self.last_prompt_tokens = len(ids)
        logits, reused, prefill_s = self.prefill(ids, cancel, prompt_text)
        result = ChatResult("", "cancelled", len(ids), reused, 0, dropped,
                            prefill_tok_s=(len(ids) - reused) / prefill_s if prefill_s > 0 else 0.0,
                            n_ctx=self.n_ctx)
        if logits is None:
            yield self._saved(result, saved)
            return
        sampler = Sampler(params, self.model.config.vocab_size)
        decoder, stops = self.tokenizer.detokenizer(), StopStrings(tuple(params.stop) + self.tokenizer.stop_strings)
        history, text, generated = list(ids), [], []
        result.finish_reason = "length"
        decode_start = time.perf_counter()
        limit = min(params.max_tokens, self.n_ctx - len(ids))
        try:
            while len(generated) < limit:
                if cancel is not None and cancel.is_set():
                    result.finish_reason = "cancelled"
                    break
                token = sampler.sample(logits, history)
                if token in self.tokenizer.stop_ids:
                    result.finish_reason = "stop"
                    break
                generated.append(token)
                history.append(token)
                emit, stopped = stops.push(decoder.push(token))
                if emit:
                    if not text:
                        result.time_to_first_token_s = time.perf_counter() - start
                    text.append(emit)
                    yield Piece(emit)
                if stopped:
                    result.finish_reason = "stop_string"
                    break
                if len(generated) < limit:
                    logits = self.context.eval([token])
        finally:  # the text the cache now spells, so that the next turn can continue it
            if self._text:  # decoded whole: a SentencePiece decoder drops the space a reply's first "▁" stands for
                self._text = self.tokenizer.decode(self.context.tokens, skip_special=False)
        if result.finish_reason in ("stop", "length", "cancelled"):
            tail = stops.push(decoder.flush())[0] + stops.flush()
            if tail:
                text.append(tail)
                yield Piece(tail)
        seconds = time.perf_counter() - decode_start
        result.text, result.generated_tokens, result.token_ids = "".join(text), len(generated), generated
        result.decode_tok_s = len(generated) / seconds if seconds > 0 else 0.0
        yield self._saved(result, saved)

    def _saved(self, result: ChatResult, path: Path | None) -> ChatResult:
        """The result, once the cache is saved to `path` (if given); a failure to save is in result.cache_error."""
        if path is not None:
            try:
                self.save(path)
            except OSError as e:
                result.cache_error = e
        return result


DEFAULT_CACHE_BUDGET = 1 << 30  # bytes of KV cache kept for recent conversations (three full 2B4T windows)
# At most this many cached conversations, whatever the budget: a llama.cpp context also holds compute buffers that the
# KV budget does not count.
MAX_SESSIONS = 4


class ChatSessions:
    """The KV caches of a few recent conversations, so that switching between them does not prefill them again.

    A request goes to the cache that already holds most of its prompt: one it extends (the next turn), or one that
    covers at least half of it (the same conversation with its last reply regenerated or last message edited).
    Otherwise it gets a new cache while the budget allows, else the least recently used one."""

    def __init__(self, model: Model, tokenizer: BaseTokenizer, n_ctx: int | None = None,
                 max_sessions: int | None = None, budget_bytes: int = DEFAULT_CACHE_BUDGET):
        self.model, self.tokenizer = model, tokenizer
        self.n_ctx = n_ctx or model.n_ctx_max
        if max_sessions is None:
            full = model.config.kv_bytes_per_token() * self.n_ctx
            max_sessions = max(1, min(MAX_SESSIONS, budget_bytes // full))
        self.max_sessions = max_sessions
        self.sessions: list[Chat] = []  # least recently used first
        self._lock = threading.Lock()  # one turn at a time: the model's threads are all busy with it anyway

    def pick(self, messages: Sequence[Mapping]) -> Chat:
        """The session this conversation should continue in, made the most recently used."""
        best, best_reuse, best_ids = None, -1, []
        for chat in self.sessions:
            ids = chat.prompt(messages)[0]
            reuse = common_prefix(chat.context.tokens, ids)
            if reuse > best_reuse:
                best, best_reuse, best_ids = chat, reuse, ids
        # The same conversation: its last prompt is all there (a follow-up, or the reply regenerated), or most of the
        # new prompt is (a message edited near the end). A shared system prompt alone is not enough.
        if best is not None and (best_reuse >= best.last_prompt_tokens - 1 or 2 * best_reuse >= len(best_ids)):
            chosen = best
        elif len(self.sessions) < self.max_sessions:
            chosen = Chat(self.model, self.tokenizer, self.n_ctx)
        else:
            chosen = self.sessions[0]
        if chosen in self.sessions:
            self.sessions.remove(chosen)
        self.sessions.append(chosen)
        return chosen

    def stream(self, messages: Sequence[Mapping], params: SamplingParams,
               cancel: Cancel | None = None, keep_all: bool = False,
               saved: Path | None = None) -> Iterator[Piece | ChatResult]:
        if not self._lock.acquire(timeout=60):
            raise EngineError("the model is still busy with another reply")
        try:
            yield from self.pick(messages).stream(messages, params, cancel, keep_all, saved=saved)
        finally:
            self._lock.release()

    def close(self) -> None:
        for chat in self.sessions:
            chat.context.close()
        self.sessions.clear()
