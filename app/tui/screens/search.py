"""Search every saved conversation (the store's full-text index); choosing a hit opens its conversation there."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from ...store import SearchHit, StoreError
from ..widgets.conversation_list import time_ago

MATCH = re.compile(r"\[([^\[\]]*)\]")


def snippet_text(snippet: str) -> Text:
    """The store marks matches with [brackets]: show them highlighted instead."""
    text, last = Text(), 0
    for m in MATCH.finditer(snippet):
        text.append(snippet[last:m.start()])
        text.append(m.group(1), style="bold reverse")
        last = m.end()
    text.append(snippet[last:])
    return text


class SearchScreen(ModalScreen[tuple[int, int] | None]):
    BINDINGS = [
        Binding("escape", "dismiss_none", "Close", id="search_close"),
        Binding("down", "to_results", "Results", show=False, id="search_results"),
    ]

    def __init__(self, store, now):
        super().__init__(classes="dialog")
        self.store, self.now = store, now
        self.hits: list[SearchHit] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box", id="search-box"):
            yield Static("Search conversations", classes="dialog-title")
            yield Input(placeholder="words to find in every saved conversation", id="query")
            yield Static("", id="search-count", classes="dialog-hint")
            yield OptionList(id="hits")
            yield Static("Enter opens · Down goes to the results · Esc closes", classes="dialog-hint")

    def on_input_changed(self, event: Input.Changed) -> None:
        self.search(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.hits:
            self.dismiss((self.hits[0].conversation_id, self.hits[0].message_id))

    def search(self, query: str) -> None:
        hits_list = self.query_one("#hits", OptionList)
        count = self.query_one("#search-count", Static)
        try:
            self.hits = self.store.search(query, prefix=True) if query.strip() else []
        except StoreError as e:
            self.hits = []
            count.update(str(e))
            return
        hits_list.clear_options()
        for i, hit in enumerate(self.hits):
            label = Text()
            label.append(hit.title or "Untitled", style="bold")
            label.append(f"  {'you' if hit.role == 'user' else 'Trit'} · {time_ago(hit.created, self.now())}\n",
                         style="dim")
            label.append_text(snippet_text(" ".join(hit.snippet.split())))
            hits_list.add_option(Option(label, id=str(i)))
        if query.strip():
            n = len(self.hits)
            count.update(f"{n} match{'es' if n != 1 else ''}" if n else "no matches")
        else:
            count.update("")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        hit = self.hits[int(event.option.id)]
        self.dismiss((hit.conversation_id, hit.message_id))

    def action_to_results(self) -> None:
        if self.hits:
            results = self.query_one("#hits", OptionList)
            results.focus()
            results.highlighted = 0

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
