"""The chat: the saved conversations on the left, the open one in the middle, the message box and a status line.

A reply is written by a ReplyRunner in a thread worker: it walks Service.send (or regenerate, edit_last) and posts
each batch of text to this screen, which appends it to the reply's Markdown through a MarkdownStream; the view
follows the reply only while it is scrolled to the bottom. Esc sets the cancel event the engine checks between
tokens: the reply ends at once, what was written is kept (the service stores it marked cancelled), and the message
box is usable throughout."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Markdown, OptionList, Static

from ...service import Dialogue, Turn, choose_model
from ...settings import SAMPLING_SETTINGS
from ...store import StoreError
from .. import actions
from ..clipboard import copy
from ..reply_runner import USER_ERRORS, ReplyRunner, in_one_line
from ..widgets.chat_view import ChatView, MessageBox, Notice, code_blocks, dropped_notice
from ..widgets.conversation_list import ConversationList
from ..widgets.prompt import PromptInput
from ..widgets.status_line import CONTEXT_WARNING_TEXT, StatusLine
from .code_picker import CodePickerScreen
from .confirm import ConfirmScreen
from .search import SearchScreen
from .settings import ConversationSettings, SettingsScreen
from .text_entry import TextEntryScreen

WAITING_AFTER_S = 1.0  # show "reading your message…" when no text came for this long
BUSY = "A reply is being written — Esc stops it first."
WRITING_SUBTITLE = "writing… Esc stops"
WAITING_SUBTITLE = "writing… Esc stops · your next message waits"


class ChatScreen(Screen):
    BINDINGS = [a.binding() for a in actions.CHAT]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (84, "-wide")]

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

    class ModelLoaded(Message):
        def __init__(self, name: str, n_ctx: int | None, error: str | None = None):
            super().__init__()
            self.name, self.n_ctx, self.error = name, n_ctx, error

    def __init__(self):
        super().__init__()
        self.dialogue: Dialogue | None = None
        self.cancel: threading.Event | None = None
        self.worker = None
        self.stream = None
        self.reply_box: MessageBox | None = None
        self.reply_started = 0.0
        self.got_text = False
        self.pending: str | None = None  # sent while a reply was being written: goes out when it ends
        self.editing = False
        self.loaded_model: str | None = None  # the model the service holds, once loaded
        self.n_ctx: int | None = None
        self.load_failed: str | None = None
        self.replies = 0  # replies ended (finished, stopped or failed) since the screen opened

    @property
    def app_service(self):
        return self.app.service

    @property
    def store(self):
        return self.app.store

    @property
    def generating(self) -> bool:
        return self.cancel is not None

    # ---- layout ----
    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static("Conversations", id="sidebar-title")
                yield ConversationList(id="conversations")
            with Vertical(id="main"):
                yield Static("", id="chat-title", markup=False)
                yield ChatView(id="chat")
                yield Static("", id="context-warning", markup=False)
                yield PromptInput(id="prompt")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.refresh_list()
        self.set_interval(30, self.refresh_list)  # "5 minutes ago" keeps moving
        await self.start_new(logged=self.store is not None)

    def focus_prompt(self) -> None:
        self.query_one(PromptInput).focus()

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def chat(self) -> ChatView:
        return self.query_one(ChatView)

    def error(self, e: BaseException | str) -> None:
        self.app.notify(" ".join(str(e).split()), severity="error", timeout=8)

    # ---- showing a conversation ----
    def refresh_list(self) -> None:
        listing = self.query_one(ConversationList)
        if self.store is None:
            listing.show([], None, self.app.now())
            return
        try:
            conversations = self.store.list_conversations(limit=500)
        except StoreError as e:
            self.error(e)
            return
        listing.show(conversations, self.dialogue.conversation_id if self.dialogue else None, self.app.now())

    async def start_new(self, logged: bool = True) -> None:
        try:
            dialogue = self.app_service.new(logged=logged)
        except USER_ERRORS as e:
            self.error(e)
            return
        await self.show(dialogue)

    async def open_conversation(self, cid: int, focus_message: int | None = None) -> None:
        try:
            dialogue = self.app_service.open(cid)
        except USER_ERRORS as e:
            self.error(e)
            return
        try:
            choose_model(dialogue.model, self.app_service.settings)
        except USER_ERRORS:
            try:
                fallback = self.app_service.new().model
            except USER_ERRORS as e:
                self.error(e)
                return
            self.app.notify(f"This conversation was with {dialogue.model}, which is not installed now: "
                            f"replies will come from {fallback}.", severity="warning", timeout=8)
            dialogue.model = fallback
        await self.show(dialogue)
        if focus_message is not None:
            box = self.chat.box_for(focus_message)
            if box is not None:
                self.chat.release_anchor()
                box.focus()
                self.call_after_refresh(box.scroll_visible, top=True, animate=False)

    async def show(self, dialogue: Dialogue) -> None:
        self.dialogue = dialogue
        self.editing = False
        self.prompt.border_title = None
        self.set_class(not dialogue.logged, "incognito")
        await self.chat.show(dialogue.messages, incognito=not dialogue.logged)
        self.show_title()
        self.show_status()
        self.refresh_list()
        self.focus_prompt()
        self.load_model()

    def show_title(self) -> None:
        d = self.dialogue
        title = d.title
        if d.conversation_id is not None and self.store is not None:
            try:
                title = self.store.conversation(d.conversation_id).title
                d.title = title
            except StoreError:
                pass
        if not d.logged:
            text = f"{title + ' · ' if title else ''}Incognito: nothing of this conversation is written to disk"
        else:
            text = title or "New conversation"
        self.query_one("#chat-title", Static).update(text)

    def show_status(self, speed_from=None) -> None:
        d = self.dialogue
        demo, note = False, ""
        try:
            demo = choose_model(d.model, self.app_service.settings).demo
        except USER_ERRORS:
            note = "not installed"
        if not note and self.loaded_model != d.model:
            note = "cannot be loaded" if self.load_failed == d.model else "loading…"
        status = self.query_one(StatusLine)
        status.show_model(d.model, demo=demo, incognito=not d.logged, note=note)
        n_ctx = self.n_ctx if self.loaded_model == d.model else None
        status.show_context(d.context_tokens(), n_ctx)
        warning = self.query_one("#context-warning", Static)
        warning.display = status.context_warning
        if status.context_warning:
            warning.update(CONTEXT_WARNING_TEXT.format(share=d.context_tokens() / n_ctx))
        last = speed_from or next((m for m in reversed(d.messages) if m.role == "assistant"), None)
        status.show_speed(last.decode_tok_s if last else None, last.time_to_first_token_s if last else None)

    # ---- the model, loaded in the background so the first reply does not wait for it ----
    def load_model(self) -> None:
        if self.generating or self.dialogue is None or self.loaded_model == self.dialogue.model:
            return
        name = self.dialogue.model
        service = self.app_service

        def work() -> None:
            try:
                choice, model = service.model(name)
                self.post_message(self.ModelLoaded(name, model.n_ctx_max))
            except Exception as e:  # noqa: BLE001 — shown as one line
                self.post_message(self.ModelLoaded(name, None, in_one_line(e)))

        self.run_worker(work, thread=True, group="model", exclusive=True, exit_on_error=False)

    def on_chat_screen_model_loaded(self, message: ModelLoaded) -> None:
        if message.error:
            self.load_failed = message.name
            self.error(f"cannot load {message.name}: {message.error}")
        else:
            self.loaded_model, self.n_ctx, self.load_failed = message.name, message.n_ctx, None
        self.app.model_ready = True
        if self.dialogue is not None:
            self.show_status()

    # ---- sending and streaming ----
    def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        event.stop()
        self.run_worker(self.submit(event.text), group="ui", exclusive=False)

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

    async def start_reply(self, events: Callable[[threading.Event], Iterator]) -> None:
        await self.chat.clear_empty_state()
        box = MessageBox("assistant", streaming=True)
        await self.chat.mount(box)
        self.chat.anchor()
        self.reply_box = box
        self.stream = Markdown.get_stream(box.markdown)
        self.cancel = cancel = threading.Event()
        self.got_text = False
        self.reply_started = time.monotonic()
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

    async def on_chat_screen_reply_piece(self, message: ReplyPiece) -> None:
        if self.reply_box is None or self.stream is None:
            return
        if not self.got_text:
            self.got_text = True
            self.reply_box.set_waiting(False)
        await self.stream.write(message.text)

    async def on_chat_screen_reply_done(self, message: ReplyDone) -> None:
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

    async def on_chat_screen_reply_failed(self, message: ReplyFailed) -> None:
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

    async def on_chat_screen_reply_ended(self, message: ReplyEnded) -> None:
        self.replies += 1
        self.cancel = None
        self.worker = None
        self.reply_box = None
        self.prompt.border_subtitle = None
        self.show_status()
        if self.pending is not None:
            text, self.pending = self.pending, None
            await self.submit(text)

    # ---- actions ----
    def action_stop(self) -> None:
        if self.generating:
            if not self.cancel.is_set():
                self.cancel.set()
                if self.reply_box is not None:
                    self.reply_box.set_waiting(False)
                    self.reply_box.set_note("stopping…")
            self.focus_prompt()
        elif self.editing:
            self.editing = False
            self.prompt.border_title = None
            self.prompt.clear()
            self.focus_prompt()
        else:
            self.focus_prompt()

    def action_send(self) -> None:
        self.prompt.action_send()

    async def action_new_chat(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        await self.start_new(logged=self.store is not None)

    async def action_new_incognito(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        await self.start_new(logged=False)
        self.app.notify("Incognito: this conversation is kept in memory only, never written to disk.")

    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if not isinstance(event.option_list, ConversationList):
            return
        cid = int(event.option.id)
        if self.dialogue is not None and cid == self.dialogue.conversation_id:
            self.focus_prompt()
            return
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        await self.open_conversation(cid)

    def action_search(self) -> None:
        if self.store is None:
            self.app.notify("There is no saved history to search this time.", severity="warning")
            return

        async def opened(hit) -> None:
            if hit is None:
                return
            if self.generating:
                self.app.notify(BUSY, severity="warning")
                return
            await self.open_conversation(*hit)

        self.app.push_screen(SearchScreen(self.store, self.app.now), opened)

    def action_rename(self) -> None:
        d = self.dialogue
        if d is None:
            return

        def renamed(title: str | None) -> None:
            if not title:
                return
            if d.conversation_id is not None and d.logged:
                try:
                    self.store.rename(d.conversation_id, title)
                except StoreError as e:
                    self.error(e)
                    return
            d.title = " ".join(title.split())
            self.show_title()
            self.refresh_list()

        self.app.push_screen(TextEntryScreen("Rename conversation", d.title,
                                             "Enter renames · Esc cancels"), renamed)

    def action_delete(self) -> None:
        if self.dialogue is not None and self.dialogue.conversation_id is None:
            if self.dialogue.messages:  # an unsaved (incognito) conversation: nothing on disk to delete
                self.ask_delete(None, "this incognito conversation", len(self.dialogue.messages))
            else:
                self.app.notify("Nothing to delete: this conversation is empty.")
            return
        self.ask_delete(self.dialogue.conversation_id, self.dialogue.title or "Untitled",
                        len(self.dialogue.messages))

    def action_delete_highlighted(self) -> None:
        listing = self.query_one(ConversationList)
        cid = listing.highlighted_id
        if cid is None:
            return
        c = listing.conversation(cid)
        self.ask_delete(cid, c.title or "Untitled", c.message_count)

    def ask_delete(self, cid: int | None, title: str, count: int) -> None:
        if self.generating and (cid is None or cid == self.dialogue.conversation_id):
            self.app.notify(BUSY, severity="warning")
            return

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            if cid is not None:
                try:
                    self.store.delete_conversation(cid)
                except StoreError as e:
                    self.error(e)
                    return
                self.app.notify(f"Deleted “{title}”.")
            if cid is None or cid == self.dialogue.conversation_id:
                await self.start_new(logged=self.store is not None)
            else:
                self.refresh_list()

        what = f"{count} message{'s' if count != 1 else ''}"
        detail = (f"Its {what} are removed from this computer for good; there is no other copy." if cid is not None
                  else f"Its {what} are forgotten now.")
        self.app.push_screen(ConfirmScreen(f"Delete “{title}”?", detail, "Delete"), answered)

    def action_export(self) -> None:
        d = self.dialogue
        if d is None or not d.logged:
            self.app.notify("An incognito conversation is never written to disk, so it is not exported.",
                            severity="warning")
            return
        if d.conversation_id is None:
            self.app.notify("Nothing to export yet.")
            return
        suggestion = unique_path(Path.home() / f"{slug(d.title) or 'conversation'}.md")

        def check(path: str) -> str | None:
            target = Path(path).expanduser()
            if target.is_dir():
                return f"{target} is a folder: add a file name"
            if not target.parent.is_dir():
                return f"there is no folder {target.parent}"
            return None

        def chosen(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                text = self.store.to_markdown(d.conversation_id)
                target.write_text(text, encoding="utf-8")
            except StoreError as e:
                self.error(e)
                return
            except OSError as e:
                self.error(f"cannot write {target}: {e.strerror or e}")
                return
            self.app.notify(f"Saved to {target}", title="Exported")

        self.app.push_screen(TextEntryScreen("Export to Markdown", str(suggestion),
                                             "Enter saves (an existing file is replaced) · Esc cancels", check),
                             chosen)

    def action_settings(self) -> None:
        d = self.dialogue
        if d is None:
            return
        settings = self.app_service.settings

        def saved(result: ConversationSettings | None) -> None:
            if result is None:
                return
            d.system, d.params = result.system, result.params
            if d.conversation_id is not None and d.logged:
                try:
                    self.store.update_conversation(d.conversation_id, system=d.system, params=d.params)
                except StoreError as e:
                    self.error(e)
                    return
            if result.as_default:
                settings.system_prompt = result.system
                for name in SAMPLING_SETTINGS:
                    if name in result.params:
                        setattr(settings, name, result.params[name])
                if self.app.save_settings():
                    self.app.notify("Saved for this conversation and as the default for new ones.")
                return
            self.app.notify("Saved for this conversation.")

        self.app.push_screen(SettingsScreen(d.system, d.params, settings, d.model, d.logged), saved)

    async def action_regenerate(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        d = self.dialogue
        if d is None or not d.messages:
            self.app.notify("There is no reply to write again yet.")
            return
        boxes = self.chat.boxes()
        if boxes and boxes[-1].role == "assistant":
            await self.chat.remove_from(boxes[-1])
        service = self.app_service
        await self.start_reply(lambda cancel: service.regenerate(d, cancel))

    async def on_prompt_input_edit_last_requested(self, event: PromptInput.EditLastRequested) -> None:
        await self.action_edit_last()

    async def action_edit_last(self) -> None:
        if self.generating:
            self.app.notify(BUSY, severity="warning")
            return
        d = self.dialogue
        last = next((m for m in reversed(d.messages) if m.role == "user"), None) if d else None
        if last is None:
            self.app.notify("There is no message of yours to edit yet.")
            return
        self.editing = True
        self.prompt.text = last.content
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.border_title = "Editing your last message · Enter sends it again · Esc cancels"
        self.focus_prompt()

    def copy_target(self) -> MessageBox | None:
        focused = self.focused
        if isinstance(focused, MessageBox):
            return focused
        boxes = self.chat.boxes()
        return next((b for b in reversed(boxes) if b.role == "assistant" and b.text), boxes[-1] if boxes else None)

    def action_copy_message(self) -> None:
        box = self.copy_target()
        if box is None or not box.text:
            self.app.notify("There is no message to copy yet.")
            return
        where = copy(self.app, box.text)
        self.app.notify(f"Copied the {'reply' if box.role == 'assistant' else 'message'} to {where}.")

    def action_copy_code(self) -> None:
        box = self.copy_target()
        blocks = code_blocks(box.text) if box is not None else []
        if not blocks:
            self.app.notify("No code block in this message." if box else "There is no message yet.")
            return

        def picked(index: int | None) -> None:
            if index is not None:
                language, code = blocks[index]
                where = copy(self.app, code)
                self.app.notify(f"Copied the {language + ' ' if language else ''}code block to {where}.")

        if len(blocks) == 1:
            picked(0)
        else:
            self.app.push_screen(CodePickerScreen(blocks), picked)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]


def unique_path(path: Path) -> Path:
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
