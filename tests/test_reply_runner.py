"""The reply runner (app/tui/reply_runner.py) on its own, with no Textual: a real thread walks an event source that
behaves as the service does (pieces, then one Turn; the cancel event checked between pieces, as the engine checks it
between tokens), and the test's thread sets the real threading.Event, as Esc does on the UI thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from network_guard import offline_env

from trit.app.service import Turn
from trit.app.store import Message, StoreError
from trit.app.tui.reply_runner import ReplyRunner
from trit.engine import ChatResult, EngineError, InputError, Piece

WAIT_S = 30.0  # a generous bound for what takes milliseconds, so a busy machine does not fail the test


def turn(text: str, finish_reason: str = "stop") -> Turn:
    message = Message(id=None, conversation_id=None, role="assistant", content=text, created="2026-03-14T15:09:26Z",
                      finish_reason=finish_reason)
    return Turn(message, ChatResult(text, finish_reason, 10, 0, len(text)), None)


class Calls:
    """What the runner called, in order, from whichever thread; `seen` is set at every call."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.seen = threading.Condition()
        self.bugs: list[BaseException] = []
        self.threads: set[str] = set()

    def _add(self, *call) -> None:
        with self.seen:
            self.calls.append(call)
            self.threads.add(threading.current_thread().name)
            self.seen.notify_all()

    def wait_for(self, condition) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: condition(self.calls), WAIT_S), f"never came; calls: {self.calls}"

    def runner(self, events, cancel: threading.Event | None = None, **kwargs) -> ReplyRunner:
        return ReplyRunner(events, cancel or threading.Event(),
                           on_pieces=lambda text: self._add("pieces", text),
                           on_done=lambda t: self._add("done", t),
                           on_failed=lambda error, unanswerable: self._add("failed", error, unanswerable),
                           on_ended=lambda: self._add("ended"),
                           on_bug=self.bugs.append, **kwargs)

    @property
    def text(self) -> str:
        return "".join(c[1] for c in self.calls if c[0] == "pieces")

    @property
    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


def in_a_thread(runner: ReplyRunner) -> None:
    thread = threading.Thread(target=runner.run, name="reply")
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the runner did not end"


WORDS = [f"word{i} " for i in range(200)]


def test_pieces_arrive_in_order_batched_the_first_at_once():
    calls = Calls()

    def events(cancel):
        yield Piece(WORDS[0])
        calls.wait_for(lambda c: c)  # the first piece is delivered before any other is written
        yield from (Piece(w) for w in WORDS[1:])
        yield turn("".join(WORDS))

    in_a_thread(calls.runner(events, every_s=3600.0))
    assert calls.calls[0] == ("pieces", WORDS[0])
    assert calls.calls[1] == ("pieces", "".join(WORDS[1:]))  # the rest in one batch, before the Turn
    assert calls.kinds == ["pieces", "pieces", "done", "ended"] and calls.calls[2][1].message.content == calls.text
    assert calls.threads == {"reply"}


def test_with_no_wait_every_piece_goes_out_as_it_comes():
    calls = Calls()

    def events(cancel):
        for i, word in enumerate(WORDS[:20]):
            yield Piece(word)
            calls.wait_for(lambda c: len(c) == i + 1)  # delivered before the source goes on
        yield turn("".join(WORDS[:20]))

    in_a_thread(calls.runner(events, every_s=0.0))
    assert calls.calls[:20] == [("pieces", w) for w in WORDS[:20]]
    assert calls.kinds[20:] == ["done", "ended"]


def test_cancel_stops_between_pieces_and_what_was_written_still_arrives():
    calls, cancel = Calls(), threading.Event()
    handed = []

    def events(given):  # as the engine: checks the event between tokens, then ends with a Turn marked cancelled
        handed.append(given)
        written = []
        for word in WORDS:
            if given.is_set():
                break
            written.append(word)
            yield Piece(word)
            if len(written) == 5:
                assert given.wait(WAIT_S), "never cancelled"  # a slow token: Esc comes meanwhile
        yield turn("".join(written), "cancelled")

    runner = calls.runner(events, cancel, every_s=3600.0)  # pieces 2 to 5 wait in a batch when Esc comes
    thread = threading.Thread(target=runner.run, name="reply")
    thread.start()
    calls.wait_for(lambda c: c and c[0][0] == "pieces")
    cancel.set()  # from this thread, as Esc from the UI thread
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert handed == [cancel]
    done = [c[1] for c in calls.calls if c[0] == "done"]
    assert calls.text == "".join(WORDS[:5]) and [t.message.content for t in done] == [calls.text]
    assert done[0].message.finish_reason == "cancelled" and calls.kinds[-2:] == ["done", "ended"]


@pytest.mark.parametrize("error, unanswerable", [
    (EngineError("cannot read model.safetensors:\n  the file is truncated"), False),
    (InputError("the message is longer than the context window\n(4,096 tokens)"), True),
    (StoreError("history.db is read-only;   make it writable"), False),
])
def test_an_error_ends_in_one_line_after_what_was_written(error, unanswerable):
    calls = Calls()

    def events(cancel):
        yield Piece("Half ")
        yield Piece("a reply")
        raise error

    in_a_thread(calls.runner(events, every_s=3600.0))
    assert calls.text == "Half a reply"
    (failed,) = [c for c in calls.calls if c[0] == "failed"]
    assert failed[1] == " ".join(str(error).split()) and "\n" not in failed[1] and failed[2] is unanswerable
    assert calls.kinds[-2:] == ["failed", "ended"] and "done" not in calls.kinds and calls.bugs == []


def test_an_error_before_any_text_fails_without_pieces():
    calls = Calls()

    def events(cancel):
        raise StoreError("history.db is read-only")
        yield  # a generator, as the service's methods are

    in_a_thread(calls.runner(events))
    assert calls.calls == [("failed", "history.db is read-only", False), ("ended",)]


def test_a_bug_is_logged_and_said_in_one_line():
    calls = Calls()
    bug = ValueError("no\nsuch value")

    def events(cancel):
        yield Piece("x")
        raise bug

    in_a_thread(calls.runner(events))
    assert calls.bugs == [bug]
    assert calls.calls[-2:] == [("failed", "unexpected error: ValueError: no such value", False), ("ended",)]


def test_on_ended_runs_even_when_a_callback_fails():
    calls = Calls()

    def refuse(*args) -> None:
        raise RuntimeError("the screen is gone")

    runner = calls.runner(lambda cancel: iter([Piece("a"), turn("a")]))
    runner.on_done = refuse
    in_a_thread(runner)
    assert [type(b) for b in calls.bugs] == [RuntimeError]
    assert calls.kinds == ["pieces", "failed", "ended"]
    # even when saying so fails too: the error reaches whoever runs the runner, after on_ended
    calls = Calls()
    runner = calls.runner(lambda cancel: iter([Piece("a"), turn("a")]))
    runner.on_done = runner.on_failed = refuse
    with pytest.raises(RuntimeError):
        runner.run()
    assert calls.kinds == ["pieces", "ended"]


def test_the_runner_imports_no_textual(tmp_path):
    code = "import sys, trit.app.tui.reply_runner; assert 'textual' not in sys.modules, 'textual imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=offline_env({**os.environ, "TRIT_HOME": str(tmp_path)}))
    assert r.returncode == 0, r.stderr
