"""Sending a message and writing the reply into the view: the chat screen's part between the message box and the
ReplyRunner.

The runner walks Service.send (or regenerate, edit_last) in a thread worker; its callbacks post messages to the
screen, which appends each batch of text to the reply's Markdown through a MarkdownStream; the view follows the reply
only while it is scrolled to the bottom. Esc sets the cancel event the engine checks between tokens: the reply ends at
once, what was written is kept (the service stores it marked cancelled), and the message box is usable throughout. A
message sent meanwhile waits, and goes out when the reply ends."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from textual.message import Message
from textual.widgets import Markdown

from ....attachments import with_files
from ....service import Turn
from ...reply_runner import ReplyRunner
from ...widgets.chat_view import MessageBox, Notice, dropped_notice
from ...widgets.prompt import PromptInput

WAITING_AFTER_S = 1.0  # show "reading your message…" when no text came for this long
WRITING_SUBTITLE = "writing… Esc stops"
WAITING_SUBTITLE = "writing… Esc stops · your next message waits"


class Replying:
    """Mixed into ChatScreen, whose __init__ sets the state used here (cancel, worker, reply_box, stream, got_text,
    pending, editing)."""

    # ---- messages from the reply worker (posted from its thread) ----
    class ReplyPiece(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class ReplyDone(Message):
        def __init__(self, turn: Turn):
            super().__init__()
            self.turn = turn

    class ReplyFailed(Message):
        def __init__(self, error: str, unanswerable: bool = False):
            super().__init__()
            self.error, self.unanswerable = error, unanswerable

    class ReplyEnded(Message):
        pass

    @property
    def generating(self) -> bool:
        return self.cancel is not None

    # ---- sending ----
    def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        event.stop()
        text = with_files(self.attachments, event.text)  # the files F5 attached go with this message
        self.show_attachments([])
        self.run_worker(self.submit(text), group="ui", exclusive=False)

    async def submit(self, text: str) -> None:
        if self.dialogue is None:
            return
        if self.generating:
            if self.pending is None:  # one message waits for the reply being written, and goes right after it
                self.pending = text
                self.prompt.border_subtitle = WAITING_SUBTITLE
                if not self.cancel.is_set():
                    self.app.notify("Your message goes out when this reply ends — Esc ends it now.")
            else:
                self.give_back(text)
                self.app.notify("A message is already waiting to go out after this reply.", severity="warning")
            return
        service, d = self.app_service, self.dialogue
        with self.reply_claimed():
            if self.editing:
                users = [b for b in self.chat.boxes() if b.role == "user"]
                if users:
                    await self.chat.remove_from(users[-1])
                self.editing = False
                self.prompt.border_title = None
                events = lambda cancel: service.edit_last(d, text, cancel)  # noqa: E731
            else:
                events = lambda cancel: service.send(d, text, cancel)  # noqa: E731
            await self.chat.clear_empty_state()
            await self.chat.mount(MessageBox("user", text))
        await self.start_reply(events)

    def give_back(self, text: str) -> None:
        """Put a message that was not sent back in the box, before whatever was typed since."""
        typed = self.prompt.text
        self.prompt.text = text + ("\n" + typed if typed else "")
        self.prompt.move_cursor(self.prompt.document.end)

    # ---- streaming ----
    @contextmanager
    def reply_claimed(self) -> Iterator[threading.Event]:
        """A reply is under way from here on, before the awaits that lead to it: a second Enter meanwhile waits for it
        (pending) instead of starting a second reply beside it. If the way there fails, no reply is under way."""
        if self.cancel is None:
            self.cancel = threading.Event()
        try:
            yield self.cancel
        except BaseException:
            self.cancel = None
            raise

    async def start_reply(self, events: Callable[[threading.Event], Iterator]) -> None:
        with self.reply_claimed() as cancel:
            await self.chat.clear_empty_state()
            box = MessageBox("assistant", streaming=True)
            await self.chat.mount(box)
        self.chat.anchor()
        self.reply_box = box
        self.stream = Markdown.get_stream(box.markdown)
        self.got_text = False
        self.prompt.border_subtitle = WAITING_SUBTITLE if self.pending is not None else WRITING_SUBTITLE
        self.set_timer(WAITING_AFTER_S, self.check_waiting)
        post = self.post_message  # thread-safe: the runner's callbacks run in the worker's thread
        runner = ReplyRunner(events, cancel,
                             on_pieces=lambda text: post(self.ReplyPiece(text)),
                             on_done=lambda turn: post(self.ReplyDone(turn)),
                             on_failed=lambda error, unanswerable: post(self.ReplyFailed(error, unanswerable)),
                             on_ended=lambda: post(self.ReplyEnded()),
                             on_bug=lambda e: self.app.log.error("reply failed", repr(e)))
        self.worker = self.run_worker(runner.run, thread=True, group="reply", exit_on_error=False)

    def check_waiting(self) -> None:
        if self.reply_box is not None and self.generating and not self.got_text:
            self.reply_box.set_waiting(True)

    async def on_replying_reply_piece(self, message: ReplyPiece) -> None:
        if self.reply_box is None or self.stream is None:
            return
        if not self.got_text:
            self.got_text = True
            self.reply_box.set_waiting(False)
        await self.stream.write(message.text)

    async def on_replying_reply_done(self, message: ReplyDone) -> None:
        turn = message.turn
        box = self.reply_box
        if self.stream is not None:
            await self.stream.stop()
            self.stream = None
        if box is None:
            return
        if box.markdown.source != turn.message.content:  # a piece that came after Esc, or text trimmed at the end
            await box.markdown.update(turn.message.content)
        box.finish(turn.message)
        if turn.unsaved:
            self.error(turn.unsaved)
        if turn.cache_note:
            self.app.notify(turn.cache_note, severity="warning", timeout=8)
        user = [b for b in self.chat.boxes() if b.role == "user"]
        if user and len(self.dialogue.messages) >= 2 and user[-1].message is None:
            user[-1].message = self.dialogue.messages[-2]
        earlier = [m.dropped_messages or 0 for m in self.dialogue.messages[:-1] if m.role == "assistant"]
        if turn.result.dropped_messages > (earlier[-1] if earlier else 0):
            await self.chat.mount(Notice(dropped_notice(turn.result.dropped_messages)), before=box)
        if turn.result.n_ctx:
            self.n_ctx = turn.result.n_ctx
        self.loaded_model = self.dialogue.model
        self.show_title()
        self.show_status(speed_from=turn.message)
        self.refresh_list()

    async def on_replying_reply_failed(self, message: ReplyFailed) -> None:
        self.error(message.error)
        if self.stream is not None:
            await self.stream.stop()
            self.stream = None
        box = self.reply_box
        if box is None:
            return
        users = [b for b in self.chat.boxes() if b.role == "user"]
        d = self.dialogue
        kept = bool(users) and bool(d.messages) and d.messages[-1].role == "user" and \
            d.messages[-1].content == users[-1].text
        if users and (message.unanswerable or not kept):  # not part of the conversation: give it back to edit
            self.give_back(users[-1].text)
            await self.chat.remove_from(users[-1])
            if not self.chat.boxes():
                await self.chat.show([], incognito=not d.logged)
        elif box.markdown.source:
            box.set_waiting(False)
            box.set_note(f"not finished: {message.error}", warning=True)
        else:
            await box.remove()

    async def on_replying_reply_ended(self, message: ReplyEnded) -> None:
        self.cancel = None
        self.worker = None
        self.reply_box = None
        self.prompt.border_subtitle = None
        self.show_status()
        if self.pending is not None:
            text, self.pending = self.pending, None
            await self.submit(text)

    # ---- stopping ----
    def action_stop(self) -> None:
        if self.generating:
            if not self.cancel.is_set():
                self.cancel.set()
                if self.reply_box is not None:
                    self.reply_box.set_waiting(False)
                    self.reply_box.set_note("stopping…")
            self.focus_prompt()
        elif self.list_open:
            self.close_list()
        elif self.editing:
            self.editing = False
            self.prompt.border_title = None
            self.prompt.clear()
            self.focus_prompt()
        elif self.prompt.has_focus and self.prompt.text:
            self.prompt.clear()  # the draft goes; Ctrl+Z brings it back
        elif self.prompt.has_focus and self.attachments:
            self.show_attachments([])
        else:
            self.focus_prompt()

    def action_send(self) -> None:
        self.prompt.action_send()
