"""One reply, walked from the service's events to four callbacks, with no Textual: the chat screen runs it in a thread
worker and turns each callback into a message to itself; the tests run it in a plain thread.

Service.send (reply, regenerate, edit_last) yields Pieces, then one Turn. The pieces go out in batches, at most one
every PIECES_EVERY_S, the first at once (it is what ends "reading your message…"). Esc sets the cancel event, which
the engine checks between tokens; it then ends the reply with a Turn marked cancelled, and every piece written before
it reaches on_pieces first. An error ends the reply in on_failed, as one line. on_ended runs last, whatever happened.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from trit import engine
from trit.engine import Piece

from ..settings import SettingsError
from ..store import StoreError

if TYPE_CHECKING:
    from ..service import Turn

USER_ERRORS = (engine.EngineError, StoreError, SettingsError)  # said to the person as they are; anything else is a bug
PIECES_EVERY_S = 0.05  # 20 redraws a second look smooth and leave the CPU to the model


def in_one_line(error: BaseException) -> str:
    """An error's message with its line breaks and runs of spaces made single spaces (its type's name if empty)."""
    return " ".join(str(error).split()) or type(error).__name__


def _ignore(error: BaseException) -> None:
    pass


@dataclass
class ReplyRunner:
    events: Callable[[threading.Event], Iterable[Piece | Turn]]  # e.g. lambda cancel: service.send(d, text, cancel)
    cancel: threading.Event
    on_pieces: Callable[[str], None]          # text written since the last call, in order
    on_done: Callable[[Turn], None]           # the reply as stored: finished, cut short or stopped
    on_failed: Callable[[str, bool], None]    # (one line, unanswerable: the message can never be answered)
    on_ended: Callable[[], None]              # after all the others, always
    on_bug: Callable[[BaseException], None] = _ignore  # an unexpected exception, to log before on_failed
    every_s: float = PIECES_EVERY_S

    def run(self) -> None:
        """Walk the events to their end, in the calling thread."""
        batch: list[str] = []
        try:
            try:
                self._walk(batch)
            finally:
                self._send(batch)  # what was written before an error is shown with it
        except engine.InputError as e:
            self.on_failed(in_one_line(e), True)
        except USER_ERRORS as e:
            self.on_failed(in_one_line(e), False)
        except Exception as e:  # noqa: BLE001 — a bug must not end in a traceback over the chat
            self.on_bug(e)
            self.on_failed(" ".join(f"unexpected error: {type(e).__name__}: {e}".split()), False)
        finally:
            self.on_ended()

    def _walk(self, batch: list[str]) -> None:
        # Each on_pieces call costs the screen a Markdown parse on the UI thread, which holds the GIL the decoding
        # loop needs between native calls: hence batches rather than one call per piece.
        sent_at: float | None = None
        for event in self.events(self.cancel):
            if isinstance(event, Piece):
                batch.append(event.text)
                now = time.monotonic()
                if sent_at is None or now - sent_at >= self.every_s:
                    self._send(batch)
                    sent_at = now
            else:
                self._send(batch)
                self.on_done(event)

    def _send(self, batch: list[str]) -> None:
        if batch:
            text = "".join(batch)
            batch.clear()  # before the call: a callback that raises is not called again with the same text
            self.on_pieces(text)
