"""What a command does with the terminal it runs in, shared by `trit ask` and `trit chat`: which errors are the
user's to read in one line, the signals that stop a reply and keep it, stdout's reader going away."""

from __future__ import annotations

import os
import sys

import click


def is_user_error(e: BaseException) -> bool:
    """Errors whose message tells the user what is wrong and what to do: shown as one line."""
    from trit.engine import EngineError

    from .settings import SettingsError

    store = sys.modules.get("trit.app.store")  # only commands that use the history import sqlite
    return isinstance(e, (EngineError, SettingsError)) or (store is not None and isinstance(e, store.StoreError))


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) stop the reply between two tokens, and what was said is kept,
    marked stopped; the exit code is 128 + the signal's number. A second Ctrl-C stops at once."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP")  # SIGHUP does not exist on Windows

    def __init__(self):
        import threading

        self.event = threading.Event()
        self.signum: int | None = None

    def __enter__(self):
        import signal

        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (getattr(signal, name, None) for name in self.NAMES) if sig is not None}
        return self

    def _handle(self, signum, frame):
        import signal

        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        self.event.set()

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 2)


def quiet_stdout() -> None:
    """The reader of stdout is gone (a closed terminal, a pipe's end that left): what is still printed goes nowhere,
    so the reply can still end and be stored, and Python's exit does not complain about the flush."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


SIGPIPE_EXIT = 128 + 13  # the exit of a process that SIGPIPE ended, as `yes | head -1` leaves `yes`


def say(text: str) -> None:
    try:
        click.echo(text, err=True)
    except OSError:  # stderr is gone with the terminal
        pass
