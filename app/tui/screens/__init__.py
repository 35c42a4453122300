"""The chat app's screens: the chat itself, the first run, and the dialogs over it."""
