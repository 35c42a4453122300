"""The saved conversations, most recently used first: title and how long ago."""

from __future__ import annotations

from datetime import datetime, timedelta

import humanize
from rich.text import Text
from textual.binding import Binding
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from ...store import Conversation


def time_ago(iso: str, now: datetime) -> str:
    try:
        then = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return ""
    return humanize.naturaltime(max(now - then, timedelta(0)))  # a clock set back is not the future


class ConversationList(OptionList):
    BINDINGS = [Binding("delete", "screen.delete_highlighted", "Delete", show=False, id="list_delete")]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conversations: list[Conversation] = []

    def show(self, conversations: list[Conversation], current: int | None, now: datetime) -> None:
        highlighted = self.highlighted_id
        self.conversations = conversations
        self.clear_options()
        options = []
        for c in conversations:
            label = Text(no_wrap=True, overflow="ellipsis")
            label.append(c.title or "Untitled", style="bold" if c.id == current else "")
            label.append("\n")
            label.append(time_ago(c.updated, now), style="dim")
            options.append(Option(label, id=str(c.id)))
        self.add_options(options)
        keep = highlighted if self.has_focus and highlighted is not None else current  # do not move a browsing cursor
        index = next((i for i, c in enumerate(conversations) if c.id == keep), None)
        self.highlighted = index

    @property
    def highlighted_id(self) -> int | None:
        if self.highlighted is None or self.highlighted >= len(self.conversations):
            return None
        return self.conversations[self.highlighted].id

    def conversation(self, cid: int) -> Conversation | None:
        return next((c for c in self.conversations if c.id == cid), None)
