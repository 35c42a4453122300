"""The chat: the saved conversations on the left, the open one in the middle, the message box and a status line.

This module lays the screen out, shows a conversation (its messages, title and status line) and loads its model in
the background. Sending and writing the reply is in replying.py, what a person does to conversations (rename, delete,
export, settings, regenerate, edit, copy, search) in conversation_actions.py: both are mixed into ChatScreen."""

from __future__ import annotations

import threading

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from ....service import Dialogue, choose_model
from ....store import StoreError
from ... import actions
from ...reply_runner import USER_ERRORS, in_one_line
from ...widgets.chat_view import ChatView, MessageBox
from ...widgets.conversation_list import ConversationList
from ...widgets.prompt import PromptInput
from ...widgets.status_line import StatusLine, context_warning_text
from .conversation_actions import ConversationActions
from .replying import Replying


class ChatScreen(Replying, ConversationActions, Screen):
    BINDINGS = [a.binding() for a in actions.CHAT]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (84, "-wide")]

    class ModelLoaded(Message):
        def __init__(self, name: str, n_ctx: int | None, error: str | None = None):
            super().__init__()
            self.name, self.n_ctx, self.error = name, n_ctx, error

    def __init__(self):
        super().__init__()
        self.dialogue: Dialogue | None = None  # the conversation shown
        # the reply being written (replying.py)
        self.cancel: threading.Event | None = None  # None when no reply is written; Esc sets it
        self.worker = None  # the thread writing it: quitting waits for it to store what was written
        self.stream = None  # the MarkdownStream its text goes through
        self.reply_box: MessageBox | None = None
        self.got_text = False  # none yet after WAITING_AFTER_S: the box says it is reading the message
        self.pending: str | None = None  # sent while a reply was being written: goes out when it ends
        self.editing = False  # the box holds the last message, and Enter sends it again in its place
        self.loaded_model: str | None = None  # the model the service holds, once loaded
        self.n_ctx: int | None = None
        self.load_failed: str | None = None
        self.attachments: list[tuple[str, str]] = []  # (name, text) of the files F5 attached to the next message
        self.pending_attachment: tuple[str, str] | None = None  # read and counted, while the F5 dialog closes

    @property
    def app_service(self):
        return self.app.service

    @property
    def store(self):
        return self.app.store

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
                yield Static("", id="attachments", markup=False)
                yield PromptInput(id="prompt")
        yield StatusLine(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.refresh_list()
        self.set_interval(30, self.refresh_list)  # "5 minutes ago" keeps moving
        last = None
        if self.store is not None:
            try:
                last = self.store.last_conversation_id()
            except StoreError:
                pass
        if last is not None:  # where the person left off, as oterm does; Ctrl+N starts afresh
            await self.open_conversation(last)
        if self.dialogue is None:
            await self.start_new(logged=self.store is not None)

    def focus_prompt(self) -> None:
        self.query_one(PromptInput).focus()

    # ---- the list of conversations: beside the chat when there is room, else over it on F3 ----
    @property
    def list_open(self) -> bool:
        """The narrow terminal's list is showing in place of the conversation."""
        return self.has_class("-narrow") and self.has_class("-list-open")

    def action_conversations(self) -> None:
        listing = self.query_one(ConversationList)
        if self.has_class("-narrow"):
            self.toggle_class("-list-open")
        elif listing.has_focus or self.has_class("-list-hidden"):  # shown and not focused: F3 only goes to it
            self.toggle_class("-list-hidden")
        self.call_after_refresh(self.focus_list_or_prompt)

    def focus_list_or_prompt(self) -> None:
        if self.query_one("#sidebar").display:
            self.query_one(ConversationList).focus()
        else:
            self.focus_prompt()

    def close_list(self) -> None:
        if self.list_open:
            self.remove_class("-list-open")
            self.focus_prompt()

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
        self.remove_class("-list-open")
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
        last = speed_from or next((m for m in reversed(d.messages) if m.role == "assistant"), None)
        if status.context_warning:
            dropped = next((m.dropped_messages or 0 for m in reversed(d.messages) if m.role == "assistant"), 0)
            warning.update(context_warning_text(d.context_tokens() / n_ctx, dropped))
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
        if self.dialogue is not None:
            self.show_status()
