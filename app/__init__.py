"""Trit's application layer: the `trit` command, the chat app, the history store, paths and settings."""
