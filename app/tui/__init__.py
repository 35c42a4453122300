"""The chat app (Textual). `trit` with no arguments runs it; nothing else in Trit imports Textual."""

from __future__ import annotations


def run() -> int:
    from .app import run as run_app

    return run_app()
