"""The message box: Enter sends, Ctrl+J starts a new line (a terminal sends the same code for Enter and Shift+Enter,
so Shift+Enter cannot be told apart reliably), Up in an empty box asks to edit the last message.

Enter and Ctrl+J are handled in the box's own key handler, not by bindings: a priority binding runs when the key
reaches the app, before the box has taken the characters typed just before it, so a fast typist (or a paste through
tmux) would send half a message. Their keys still come from the "send" and "newline" entries of the keymap."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.strip import Strip
from textual.widgets import TextArea

from .. import actions

PLACEHOLDER = "Message Trit  ·  Enter sends  ·  Ctrl+J new line"


class PromptInput(TextArea):
    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    class EditLastRequested(Message):
        """Up was pressed in the empty box."""

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, placeholder=PLACEHOLDER,
                         compact=True, **kwargs)

    def render_line(self, y: int) -> Strip:
        # Textual wraps the placeholder to the box's width and fails on a width of 0, which a narrow terminal gives
        # for a frame before the sidebar is hidden (38 to 40 columns): nothing fits, so draw nothing.
        if self.content_size.width <= 0:
            return Strip.blank(self.size.width)
        return super().render_line(y)

    def keys_for(self, action_id: str) -> list[str]:
        return actions.key_list(actions.BY_ID[action_id], getattr(self.app, "keymap", {}))

    async def _on_key(self, event: events.Key) -> None:
        pressed = {event.key, *event.aliases}
        if pressed & set(self.keys_for("send")):
            event.stop()
            event.prevent_default()
            self.action_send()
            return
        if pressed & set(self.keys_for("newline")):
            event.stop()
            event.prevent_default()
            self.action_newline()
            return
        await super()._on_key(event)

    def action_send(self) -> None:
        """Hand the text over and empty the box at once, so that what is typed next starts a new message."""
        text = self.text
        if text.strip():
            self.clear()
            self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        self.insert("\n")

    # PageUp and PageDown read the conversation above, as in a terminal; the box is a few lines at most
    def action_cursor_page_up(self) -> None:
        self.screen.chat.scroll_page_up()

    def action_cursor_page_down(self) -> None:
        self.screen.chat.scroll_page_down()

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and not self.text:
            self.post_message(self.EditLastRequested())
            return
        super().action_cursor_up(select)
