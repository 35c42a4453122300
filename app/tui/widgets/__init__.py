"""The chat app's own widgets: the message box, the conversation list, the messages, the status line."""
