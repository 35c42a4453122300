"""The open conversation: one box per message (the assistant's as Markdown with highlighted code), and notices such
as older turns left out of the context."""

from __future__ import annotations

from markdown_it import MarkdownIt
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static

from ...store import Message

WAITING = "reading your message…"


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """The code blocks of a Markdown text: (language, code)."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [((t.info or "").split(" ", 1)[0], t.content) for t in tokens if t.type in ("fence", "code_block")]


def finish_note(message: Message) -> str:
    if message.finish_reason == "cancelled":
        return "stopped" if message.content else "stopped before any text"
    if message.finish_reason == "interrupted":  # its writer died mid-answer (kill -9, a crash)
        return "interrupted" if message.content else "interrupted before any text"
    if message.finish_reason == "in_progress":
        return "still being written by another Trit"
    if message.finish_reason == "length":
        return f"cut short: reached the limit of {message.generated_tokens or 'max'} tokens"
    return ""


def dropped_notice(count: int) -> str:
    return (f"⚠ The conversation has outgrown the model's context window: from here on, the {count} oldest "
            f"message{'s are' if count != 1 else ' is'} left out of what the model reads.")


class MessageBox(Vertical, can_focus=True):
    """A message; focus one (Tab, or click) to copy it or its code."""

    BINDINGS = [
        Binding("up", "step(-1)", "Previous message", show=False, id="message_previous"),
        Binding("down", "step(1)", "Next message", show=False, id="message_next"),
    ]

    def __init__(self, role: str, content: str = "", message: Message | None = None, *, streaming: bool = False):
        super().__init__(classes=role)
        self.role = role
        self.message = message
        self._content = content
        self.streaming = streaming

    def compose(self) -> ComposeResult:
        yield Static("You" if self.role == "user" else "Trit", classes="role")
        if self.role == "user":
            yield Static(self._content, markup=False, classes="body")
        else:
            yield Markdown(self._content, classes="body")
            yield Static(WAITING, classes="waiting")
            yield Static(finish_note(self.message) if self.message else "", classes="note")

    def on_mount(self) -> None:
        if self.role == "assistant":
            self.query_one(".note").display = bool(self.message and finish_note(self.message))
            self.query_one(".waiting").display = False

    @property
    def text(self) -> str:
        return self.message.content if self.message is not None else self._content

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def set_waiting(self, waiting: bool) -> None:
        for widget in self.query(".waiting"):  # none once the box is being removed (a reply that failed)
            widget.display = waiting

    def set_note(self, note: str, *, warning: bool = False) -> None:
        widget = self.query_one(".note", Static)
        widget.update(note)
        widget.display = bool(note)
        widget.set_class(warning, "warning")

    def finish(self, message: Message) -> None:
        self.message = message
        self.streaming = False
        self.set_waiting(False)
        self.set_note(finish_note(message))

    def on_key(self, event: events.Key) -> None:
        # A message takes no text: what is typed while one is focused (a search hit lands on one) goes on in the
        # message box, and Enter goes there too, so nothing typed is lost.
        if event.is_printable or event.key in ("enter", "backspace"):
            event.stop()
            event.prevent_default()
            prompt = self.screen.prompt
            prompt.focus()
            if event.is_printable and event.character:
                prompt.insert(event.character)

    def action_step(self, step: int) -> None:
        boxes = list(self.parent.query_children(MessageBox)) if self.parent else []
        index = boxes.index(self) + step
        if 0 <= index < len(boxes):
            boxes[index].focus()
            boxes[index].scroll_visible()
        elif step > 0:
            self.screen.focus_prompt()


class Notice(Static):
    """A line between messages that says something about the conversation itself."""


class EmptyState(Static):
    """What an empty conversation shows."""


def empty_text(incognito: bool) -> str:
    first = ("Incognito: nothing of this conversation is written to disk,\nand it is gone when you leave it."
             if incognito else "Everything you type stays on this computer.")
    return (f"{first}\n\nEnter sends  ·  Ctrl+J new line  ·  Esc stops a reply\n"
            "Ctrl+F search  ·  Ctrl+P commands  ·  F1 keys")


class ChatView(VerticalScroll, can_focus=False):
    def on_resize(self) -> None:
        # While anchored, Textual's layout moves the scrollbar's thumb to the end without repainting it, so the
        # thumb stayed where it was drawn before the last messages were laid out: repaint it once the layout is done.
        self.call_after_refresh(self.vertical_scrollbar.refresh)

    async def show(self, messages: list[Message], incognito: bool = False) -> None:
        await self.remove_children()
        widgets, dropped = [], 0
        for m in messages:
            if m.role == "assistant" and (m.dropped_messages or 0) > dropped:  # said once, and again when it grows
                widgets.append(Notice(dropped_notice(m.dropped_messages)))
            if m.role == "assistant" and m.dropped_messages is not None:
                dropped = m.dropped_messages
            if m.role in ("user", "assistant"):
                widgets.append(MessageBox(m.role, m.content, m))
        await self.mount_all(widgets or [EmptyState(empty_text(incognito))])
        self.anchor(bool(widgets))  # anchored: kept scrolled to the end while the user has not scrolled away
        if not widgets:
            self.scroll_home(animate=False, immediate=True)

    async def clear_empty_state(self) -> None:
        await self.query_children(EmptyState).remove()
        self.anchor()

    def boxes(self) -> list[MessageBox]:
        return list(self.query_children(MessageBox))

    def box_for(self, message_id: int) -> MessageBox | None:
        return next((b for b in self.boxes() if b.message is not None and b.message.id == message_id), None)

    async def remove_from(self, box: MessageBox) -> None:
        """Remove a box, everything after it, and the notice just before it."""
        children = list(self.children)
        index = children.index(box)
        if index > 0 and isinstance(children[index - 1], Notice):
            index -= 1
        await self.remove_children(children[index:])
