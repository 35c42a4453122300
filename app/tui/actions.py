"""Everything a person can do in the chat app, once: the binding id (the name under [keys] in config.toml), the
default keys, and the words the footer, the command palette and the help screen show. The screens build their
bindings from this table, so a key, the palette and the help never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    id: str           # binding id: remap it with `[keys] id = "keys"` in config.toml
    keys: str         # default keys, comma separated
    action: str       # the Textual action run on the chat screen (or the app, with an "app." prefix)
    title: str        # command palette and help screen
    help: str         # one line under the title
    footer: str = ""  # shown in the footer when not empty

    def binding(self, priority: bool = False) -> Binding:
        return Binding(self.keys, self.action, self.footer or self.title, show=bool(self.footer), id=self.id,
                       priority=priority)


# The prompt's own keys: Enter sends, Ctrl+J adds a line (terminals send the same code for Enter and Shift+Enter).
PROMPT = [
    Action("send", "enter", "send", "Send the message", "Enter sends what you typed"),
    Action("newline", "ctrl+j", "newline", "New line", "Ctrl+J starts a new line in the message"),
]

CHAT = [
    Action("stop", "escape", "stop", "Stop the reply",
           "Stops the reply at once and keeps what was written; else clears the message box (Ctrl+Z undoes)"),
    Action("new_chat", "ctrl+n", "new_chat", "New conversation", "Start a new conversation", footer="New"),
    Action("new_incognito", "ctrl+t", "new_incognito", "New incognito conversation",
           "A conversation that is never written to disk"),
    Action("conversations", "f3", "conversations", "Show or hide the conversations",
           "The list of saved conversations: F3 goes to it, shows it on a narrow terminal, or hides it"),
    Action("search", "ctrl+f", "search", "Search conversations", "Find words in every saved conversation",
           footer="Search"),
    Action("rename", "f2", "rename", "Rename conversation", "Give this conversation another title"),
    Action("delete", "f8", "delete", "Delete conversation", "Remove this conversation from this computer"),
    Action("export", "ctrl+s", "export", "Export to Markdown", "Save this conversation as a Markdown file"),
    Action("attach", "f5", "attach", "Attach a text file",
           "Put a file's text in your next message, under its name; counted against the context first"),
    Action("models", "f4", "models", "Models",
           "Choose this conversation's model, the default for new ones; download or import one"),
    Action("settings", "ctrl+o", "settings", "Conversation settings",
           "System prompt, temperature, top p, max tokens and seed of this conversation"),
    Action("regenerate", "ctrl+r", "regenerate", "Regenerate the reply", "Answer the last message again",
           footer="Regenerate"),
    Action("edit_last", "ctrl+up", "edit_last", "Edit your last message",
           "Put your last message back in the box; Enter sends it again (Up in an empty box does the same)"),
    Action("copy_message", "ctrl+g", "copy_message", "Copy message",
           "Copy the selected message (else the last reply) to the clipboard", footer="Copy"),
    Action("copy_code", "ctrl+l", "copy_code", "Copy a code block",
           "Copy a code block of the selected message (else the last reply)"),
    Action("theme", "f9", "app.change_theme", "Theme", "Choose a colour theme (it is remembered)"),
]

APP = [
    Action("help", "f1", "help", "Keys", "Every key and what it does", footer="Keys"),
    Action("quit", "ctrl+q", "quit", "Quit", "Leave Trit (a reply being written is stopped and kept)"),
]

ALL = PROMPT + CHAT + APP
BY_ID = {a.id: a for a in ALL}


def key_list(action: Action, keymap: dict[str, str]) -> list[str]:
    """The keys an action answers to, after the user's remapping."""
    return [k.strip() for k in keymap.get(action.id, action.keys).split(",") if k.strip()]
