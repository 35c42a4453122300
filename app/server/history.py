"""`trit serve --log`: what API callers said and were answered, kept in the history as `trit ask` keeps it.

A request whose messages are exactly an earlier request's messages plus that request's answer (a client continuing
its conversation, as every OpenAI client does: it sends the whole conversation again) is appended to the same stored
conversation: its new user message and the answer. Anything else starts a new conversation holding every message
sent. What continues what is remembered while the server runs; after a restart a follow-up starts a new one.
Without --log nothing is written: the API caller decides what is kept.
"""

from __future__ import annotations

import hashlib
import json
import sys

from trit.engine import ChatResult

REMEMBERED = 256  # conversations whose next request can still be recognised


def _key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps([[m["role"], m["content"]] for m in messages]).encode()).hexdigest()


class ServedHistory:
    """Used from the engine's thread only (one SQLite connection, opened there on first use)."""

    def __init__(self):
        self._store = None
        self._conversations: dict[str, int] = {}  # key of messages + answer -> conversation id

    def record(self, model: str, messages: list[dict], result: ChatResult) -> None:
        from trit.app.store import Store, StoreError

        answer = {"role": "assistant", "content": result.text}
        try:
            if self._store is None:
                self._store = Store()
            cid = self._conversations.pop(_key(messages[:-1]), None) if messages[-1]["role"] == "user" else None
            if cid is None:
                system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
                cid = self._store.create_conversation(model=model, system=system).id
                new = [m for m in messages if m["role"] != "system"]
            else:
                new = messages[-1:]
            for m in new:
                self._store.add_message(cid, m["role"], m["content"])
            self._store.add_message(cid, "assistant", result.text, model=model, finish_reason=result.finish_reason,
                                    prompt_tokens=result.prompt_tokens, reused_tokens=result.reused_tokens,
                                    generated_tokens=result.generated_tokens)
        except StoreError as e:  # the answer was given all the same; the server's log says what was not kept
            print(f"trit serve: the conversation was not saved: {e}", file=sys.stderr, flush=True)
            return
        self._conversations[_key(messages + [answer])] = cid
        while len(self._conversations) > REMEMBERED:
            self._conversations.pop(next(iter(self._conversations)))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
