"""One chat turn, the same for the TUI and `trit ask`: the conversation from the store, the reply from the engine,
and the store again when the reply ends — finished, cut short or stopped by the user.

    service = Service(Store())
    dialogue = service.open(cid)                    # or service.new(system=..., model=...)
    for event in service.send(dialogue, "Hello", cancel):
        if isinstance(event, Piece): show(event.text)
        else: turn = event                          # a Turn: the stored message and the engine's figures
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from trit import engine
from trit.engine import ChatResult, Piece, SamplingParams
from trit.engine.kinds import BITNET

from .paths import paths
from .settings import Settings, load_settings
from .store import SAVE_TIMEOUT_S, Message, Store, StoreError, WriteError

DEMO_NAME = "demo"
SAMPLING_KEYS = SamplingParams.names()  # what a conversation's stored params may set; any other key is ignored
SAVE_EVERY_S = 1.0  # how often the reply's text so far is saved while it streams: what a kill -9 leaves behind


class ModelChoiceError(engine.EngineError):
    """The model asked for is not installed or not a model folder."""


@dataclass(frozen=True)
class ModelChoice:
    name: str   # what the store records and the UI shows
    path: Path
    demo: bool = False


def demo_model() -> ModelChoice | None:
    try:
        from trit.assets import DEMO_MODEL
    except ImportError:
        return None
    return ModelChoice(DEMO_NAME, Path(DEMO_MODEL), demo=True) if Path(DEMO_MODEL, "config.json").exists() else None


def choose_model(name: str | None, settings: Settings) -> ModelChoice:
    """A model folder, a .gguf file (or a folder holding one), an installed model's name, or (no name) the default:
    the configured one, else the newest installed one, else the demo model that ships inside Trit. engine.load
    then runs whichever it is."""
    from trit.engine.models import registry

    name = name or settings.default_model or None
    if name is None:
        models = registry.installed(paths().models)
        if models:
            newest = models[-1]
            return ModelChoice(newest.name, newest.path)
        demo = demo_model()
        if demo is None:
            raise ModelChoiceError("no model installed: run `trit pull` to download BitNet b1.58 2B4T, "
                                   "or `trit import PATH` for one on this machine")
        return demo
    if name == DEMO_NAME:
        demo = demo_model()
        if demo is None:
            raise ModelChoiceError("the demo model is not part of this installation")
        return demo
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return ModelChoice(str(folder.resolve()), folder.resolve())
    gguf = engine.find_gguf(folder) if folder.exists() else None
    if gguf is not None:
        return ModelChoice(str(gguf.resolve()), gguf.resolve())
    installed = registry.locate(paths().models, name)
    return ModelChoice(installed.name, installed.path)


def default_model_name(settings: Settings) -> str:
    """The name of the model `trit` and `trit ask` use without --model (as choose_model picks it): the configured
    one, else the newest installed, else the demo; "" when there is none of these."""
    from trit.engine.models import registry

    if settings.default_model:
        return settings.default_model
    models = registry.installed(paths().models)
    return models[-1].name if models else (DEMO_NAME if demo_model() is not None else "")


def adopt_installed(name: str, was: str) -> str | None:
    """After `name` was installed, with `was` the default before: someone who was on the demo (chosen on the first
    screen, or used for want of a model) moves to the real model, as they would expect; a model they chose stays.
    Returns the line that says the default changed, or None. Raises SettingsError when config.toml cannot be
    written."""
    from .settings import save_settings

    settings = load_settings()
    if was == DEMO_NAME and settings.default_model == DEMO_NAME:
        settings.default_model = name
        save_settings(settings)
    if default_model_name(settings) != name or was == name:
        return None
    if was == DEMO_NAME:
        return f"{name} is now the default model, instead of the demo (`trit models --default demo` goes back)"
    return f"{name} is now the default model (the newest installed; `trit models --default NAME` picks another)"


@dataclass
class Dialogue:
    """An open conversation: what the model is shown, and where it is kept (nowhere when `logged` is False)."""
    model: str
    system: str = ""
    params: dict = field(default_factory=dict)  # sampling overrides for this conversation
    messages: list[Message] = field(default_factory=list)  # user and assistant, oldest first
    conversation_id: int | None = None  # set once the first message is stored
    logged: bool = True
    title: str = ""

    def engine_messages(self) -> list[dict]:
        """The list the chat template renders: the system prompt, then every turn with text."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        return out + [{"role": m.role, "content": m.content} for m in self.messages if m.content]

    def context_tokens(self) -> int:
        """Tokens the conversation used at its last reply (prompt and reply), 0 before the first."""
        for m in reversed(self.messages):
            if m.role == "assistant" and m.prompt_tokens is not None:
                return m.prompt_tokens + (m.generated_tokens or 0)
        return 0


@dataclass(frozen=True)
class Room:
    """How a message measures against the context, before it is sent: its own tokens, and how many a message may
    have beside the system prompt, the chat template's framing and the reply's room (older turns are left out to
    make room, never this message)."""
    tokens: int
    room: int
    n_ctx: int
    reply_room: int

    @property
    def fits(self) -> bool:
        return self.tokens <= self.room


@dataclass
class Turn:
    """The end of one reply: the assistant message as stored, and the engine's figures for it. `unsaved` says, in
    one line, what could not be kept and why (a full disk, a read-only folder, a lock held too long); the message
    then has no id."""
    message: Message
    result: ChatResult
    conversation_id: int | None
    unsaved: str | None = None
    cache_note: str | None = None  # why the conversation's KV cache was not kept on disk: the answer stands

    def to_dict(self) -> dict:
        return self.message.to_dict()


class Service:
    """The store and one loaded model; loads the model a conversation names when it is first needed."""

    def __init__(self, store: Store | None, settings: Settings | None = None, threads: int | None = None,
                 kv: str | None = None):
        self.store = store
        self.settings = settings or load_settings()
        self.threads = threads
        self.kv = kv or self.settings.kv_type or None  # --kv, else config.toml's, else the engine's default
        self._loaded: tuple[ModelChoice, engine.Model] | None = None
        self._lock = threading.Lock()
        self._unsaved: str | None = None  # why this turn's question could not be stored: the reply is not either

    # ---- models ---------------------------------------------------------------------------------------------------
    def model(self, name: str | None = None) -> tuple[ModelChoice, engine.Model]:
        choice = choose_model(name, self.settings)
        with self._lock:
            if self._loaded is None or self._loaded[0].path != choice.path:
                if self._loaded is not None:
                    self._loaded[1].close()
                    self._loaded = None
                self._loaded = (choice, engine.load(choice.path, threads=self.threads, kv=self.kv))
            return self._loaded

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded[1].close()
            self._loaded = None

    # ---- conversations --------------------------------------------------------------------------------------------
    def new(self, *, model: str | None = None, system: str | None = None, params: dict | None = None,
            logged: bool = True) -> Dialogue:
        choice = choose_model(model, self.settings)
        system = self.settings.system_prompt if system is None else system
        return Dialogue(choice.name, system, dict(params or {}), logged=logged and self.store is not None)

    def open(self, cid: int, *, logged: bool = True) -> Dialogue:
        if self.store is None:
            raise engine.EngineError("no history store is open")
        c = self.store.conversation(cid)
        return Dialogue(c.model, c.system, dict(c.params), self.store.messages(cid), c.id, logged, c.title)

    def last(self, *, logged: bool = True) -> Dialogue:
        cid = self.store.last_conversation_id() if self.store is not None else None
        if cid is None:
            raise engine.EngineError("there is no conversation to continue yet: ask without -c first")
        return self.open(cid, logged=logged)

    def params_for(self, dialogue: Dialogue, model: engine.Model):
        overrides = {**self.settings.sampling_overrides(), **dialogue.params}
        return model.default_params(**{k: v for k, v in overrides.items() if k in SAMPLING_KEYS and v is not None})

    def measure(self, dialogue: Dialogue, text: str) -> Room:
        """`text` as the next message of this conversation, counted with its model's tokenizer (the model is loaded
        if it is not yet): a file can be refused before anything is sent or stored."""
        from trit.engine.runtime.chat import reply_room

        _, model = self.model(dialogue.model)
        n_ctx = model.n_ctx_max  # the context ChatSessions gives every conversation
        reply = reply_room(self.params_for(dialogue, model).max_tokens, n_ctx)
        system = [{"role": "system", "content": dialogue.system}] if dialogue.system else []
        frame = len(model.tokenizer.encode_chat(system + [{"role": "user", "content": ""}]))
        whole = len(model.tokenizer.encode_chat(system + [{"role": "user", "content": text}]))
        return Room(whole - frame, n_ctx - reply - frame, n_ctx, reply)

    def count_tokens(self, dialogue: Dialogue, text: str) -> int:
        """Tokens of `text` alone, with the conversation's model's tokenizer."""
        return len(self.model(dialogue.model)[1].tokenizer.encode(text))

    def _store(self, dialogue: Dialogue, role: str, content: str, wait: float | None = None, **stats) -> Message:
        if not dialogue.logged:
            return Message(id=None, conversation_id=None, role=role, content=content,
                           created=_now(), **stats)
        if dialogue.conversation_id is None:
            c = self.store.create_conversation(model=dialogue.model, system=dialogue.system,
                                               params=dialogue.params, title=dialogue.title)
            dialogue.conversation_id = c.id
        return self.store.add_message(dialogue.conversation_id, role, content, wait=wait, **stats)

    # ---- one turn -------------------------------------------------------------------------------------------------
    def send(self, dialogue: Dialogue, text: str, cancel=None) -> Iterator[Piece | Turn]:
        """Append the user's message (stored at once), then stream the reply and store it when it ends. A turn that
        never starts (the model does not load, the message can never be answered) takes its message back out, and
        the conversation too when this message was to begin it: nothing is kept that the history would show as a
        question nobody answered."""
        beginning = dialogue.conversation_id is None
        self._unsaved = None
        try:
            question = self._store(dialogue, "user", text)
        except WriteError as e:  # the history cannot take it now: answer all the same, and say what was not kept
            self._unsaved = f"your question and its answer were not saved: {e}"
            question = Message(id=None, conversation_id=dialogue.conversation_id, role="user", content=text,
                               created=_now())
        dialogue.messages.append(question)
        started = False
        try:
            for event in self.reply(dialogue, cancel):
                started = True
                yield event
        except Exception:
            if not started:
                self._forget_from(dialogue, len(dialogue.messages) - 1)
                if beginning and dialogue.logged and dialogue.conversation_id is not None and not dialogue.messages:
                    self.store.delete_conversation(dialogue.conversation_id)
                    dialogue.conversation_id = None
            raise

    def reply(self, dialogue: Dialogue, cancel=None) -> Iterator[Piece | Turn]:
        """Stream the assistant's answer to the conversation as it stands. The reply is written into its row as it
        streams (every SAVE_EVERY_S), so a process killed mid-answer leaves it there, marked interrupted."""
        choice, model = self.model(dialogue.model)
        params = self.params_for(dialogue, model)
        result = None
        pieces: list[str] = []
        draft = self._begin_reply(dialogue, choice)
        saved_at = time.monotonic()
        warm = self._warm_path(dialogue, model)
        try:
            for event in model.chat(dialogue.engine_messages(), params, cancel,
                                    **({"saved": warm} if warm is not None else {})):
                if isinstance(event, Piece):
                    # what was shown before this piece: everything saved has reached the screen
                    if draft is not None and (len(pieces) == 1 or time.monotonic() - saved_at >= SAVE_EVERY_S):
                        self.store.save_draft(draft.id, "".join(pieces), len(pieces))
                        saved_at = time.monotonic()
                    pieces.append(event.text)
                    yield event
                else:
                    result = event
        except (GeneratorExit, KeyboardInterrupt):  # stopped from outside: keep what was shown, marked stopped
            try:
                self._keep_reply(dialogue, choice, ChatResult("".join(pieces), "cancelled", 0, 0, len(pieces)),
                                 draft)
            except StoreError:
                pass  # the draft saved last stays, shown as interrupted
            raise
        except Exception:
            if draft is not None:  # the reply failed: it is not kept, as before it was written as it streamed
                try:
                    self.store.delete_messages_from(dialogue.conversation_id, draft.id)
                except StoreError:
                    pass
            raise
        unsaved = self._unsaved
        try:
            message = self._keep_reply(dialogue, choice, result, draft)
        except WriteError as e:
            unsaved = f"the answer was not saved: {e}"
            message = self._reply_message(dialogue, choice, result)
            dialogue.messages.append(message)
        yield Turn(message, result, dialogue.conversation_id, unsaved, self._kept_warm(warm, result))

    def _warm_path(self, dialogue: Dialogue, model: engine.Model) -> Path | None:
        """Where this conversation's KV cache is kept between processes; None when it is not kept: nothing of the
        conversation is (--no-log, incognito, a history that cannot take it now), the budget is 0, or the model runs
        on llama.cpp (whose caches are not saved)."""
        warm = self.store.warm if self.store is not None else None
        if (warm is None or not dialogue.logged or dialogue.conversation_id is None or self._unsaved is not None
                or model.backend != BITNET or self.settings.kv_cache_mb <= 0):
            return None
        return warm.path(dialogue.conversation_id)

    def _kept_warm(self, path: Path | None, result: ChatResult) -> str | None:
        """After the engine saved the cache to `path`: the oldest caches past the budget go. One line when the cache
        could not be saved or the folder cannot be tidied, else None."""
        if path is None:
            return None
        if result.cache_error is not None:
            return self.store.warm.note(result.cache_error)
        try:
            self.store.warm.evict(self.settings.kv_cache_mb, keep=path)
        except OSError as e:
            return self.store.warm.note(e)
        return None

    def _begin_reply(self, dialogue: Dialogue, choice: ModelChoice) -> Message | None:
        """The reply's row, marked as being written, or None when nothing is logged or the history cannot take it
        now (the final save tries again, waiting longer)."""
        if not dialogue.logged or self._unsaved is not None or dialogue.conversation_id is None:
            return None
        try:
            return self.store.begin_reply(dialogue.conversation_id, choice.name)
        except WriteError:
            return None

    @staticmethod
    def _reply_stats(choice: ModelChoice, result: ChatResult) -> dict:
        return dict(model=choice.name, finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
                    reused_tokens=result.reused_tokens, generated_tokens=result.generated_tokens,
                    dropped_messages=result.dropped_messages, prefill_tok_s=round(result.prefill_tok_s, 2),
                    decode_tok_s=round(result.decode_tok_s, 2),
                    time_to_first_token_s=round(result.time_to_first_token_s, 4))

    def _reply_message(self, dialogue: Dialogue, choice: ModelChoice, result: ChatResult) -> Message:
        """The reply as a message that is not stored (no id)."""
        return Message(id=None, conversation_id=dialogue.conversation_id, role="assistant", content=result.text,
                       created=_now(), **self._reply_stats(choice, result))

    def _keep_reply(self, dialogue: Dialogue, choice: ModelChoice, result: ChatResult,
                    draft: Message | None = None) -> Message:
        if self._unsaved is not None:
            message = self._reply_message(dialogue, choice, result)
        elif draft is not None:
            message = self.store.finish_reply(draft.id, result.text, **self._reply_stats(choice, result))
        elif dialogue.logged:
            message = self._store(dialogue, "assistant", result.text, wait=SAVE_TIMEOUT_S,
                                  **self._reply_stats(choice, result))
        else:
            message = self._store(dialogue, "assistant", result.text, **self._reply_stats(choice, result))
        dialogue.messages.append(message)
        return message

    def regenerate(self, dialogue: Dialogue, cancel=None) -> Iterator[Piece | Turn]:
        """Replace the last reply with a new one."""
        self._unsaved = None
        if dialogue.messages and dialogue.messages[-1].role == "assistant":
            self._forget_from(dialogue, len(dialogue.messages) - 1)
        if not dialogue.messages or dialogue.messages[-1].role != "user":
            raise engine.EngineError("there is no message to answer again")
        yield from self.reply(dialogue, cancel)

    def edit_last(self, dialogue: Dialogue, text: str, cancel=None) -> Iterator[Piece | Turn]:
        """Replace the last user message (and the reply to it) and send it again."""
        users = [i for i, m in enumerate(dialogue.messages) if m.role == "user"]
        if not users:
            raise engine.EngineError("there is no message to edit")
        self._forget_from(dialogue, users[-1])
        yield from self.send(dialogue, text, cancel)

    def _forget_from(self, dialogue: Dialogue, index: int) -> None:
        first = dialogue.messages[index]
        if dialogue.logged and first.id is not None:
            self.store.delete_messages_from(dialogue.conversation_id, first.id)
        del dialogue.messages[index:]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
