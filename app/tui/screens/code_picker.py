"""Which code block to copy, when a message has several."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option


class CodePickerScreen(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="picker_cancel")]

    def __init__(self, blocks: list[tuple[str, str]]):
        super().__init__(classes="dialog")
        self.blocks = blocks

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static("Copy which code block?", classes="dialog-title")
            options = []
            for i, (language, code) in enumerate(self.blocks):
                first = next((line.strip() for line in code.splitlines() if line.strip()), "")
                lines = code.count("\n") or 1
                options.append(Option(f"{i + 1}. {language or 'text'} · {lines} line{'s' if lines != 1 else ''}"
                                      f" · {first[:50]}", id=str(i)))
            yield OptionList(*options, id="blocks")
            yield Static("Enter copies · Esc cancels", classes="dialog-hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
