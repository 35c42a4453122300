"""Every key, from the same table the bindings are made of, after the user's remapping."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from .. import actions

MORE = [
    ("up (empty box)", "Edit your last message"),
    ("tab / shift+tab", "Move between the list, the messages and the message box"),
    ("up / down", "On a message: the previous or next one"),
    ("enter / delete", "In the list: open / delete the conversation"),
    ("ctrl+p", "Command palette: every action by name"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss_none", "Close", id="help_close")]

    def compose(self) -> ComposeResult:
        keymap = getattr(self.app, "keymap", {})
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0), expand=True)
        table.add_column(style="bold", no_wrap=True, min_width=8)
        table.add_column(ratio=1)
        table.add_column(style="dim", no_wrap=True)
        self.rows = [(", ".join(self.app.get_key_display(Binding(k, "")) for k in actions.key_list(a, keymap)),
                      a.title, a.help, a.id) for a in actions.ALL]
        for keys, title, help_text, action_id in self.rows:
            table.add_row(keys, Text(title) + Text(f" — {help_text}", style="dim"), action_id)
        for keys, what in MORE:
            table.add_row(keys, what, "")
        with Vertical(classes="dialog-box", id="help-box"):
            yield Static("Keys", classes="dialog-title")
            with VerticalScroll():
                yield Static(table)
            yield Static("Remap a key in config.toml (`trit paths` shows where) under [keys], by the name on the "
                         "right: new_chat = \"ctrl+n\" · Esc closes", classes="dialog-hint", markup=False)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
