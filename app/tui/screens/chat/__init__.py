"""The chat screen, in parts: screen.py lays it out and shows a conversation, replying.py sends a message and writes
the reply into the view (through app/tui/reply_runner.py, which knows nothing of Textual), conversation_actions.py
holds what a person does to conversations."""

from .screen import ChatScreen

__all__ = ["ChatScreen"]
