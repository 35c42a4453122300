"""One line to type over the chat: a new title, a file to export to."""

from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class TextEntryScreen(ModalScreen[str | None]):
    """Enter gives the text (None on Esc). `check` may return a one-line problem instead of accepting it."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="entry_cancel")]

    def __init__(self, title: str, value: str, hint: str, check: Callable[[str], str | None] | None = None):
        super().__init__(classes="dialog")
        self.title_text, self.value, self.hint, self.check = title, value, hint, check

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            yield Input(self.value, id="entry")
            yield Static(self.hint, classes="dialog-hint", markup=False)
            yield Static("", classes="dialog-error", id="entry-error", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        problem = self.check(text) if self.check else None
        if problem:
            self.query_one("#entry-error", Static).update(problem)
            return
        self.dismiss(text)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
