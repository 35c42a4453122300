"""TritApp: settings, history and the service, then the first-run screen or the chat.

Startup problems (a config.toml that does not parse, a history that cannot be opened) are notifications, and the
app carries on: with default settings that it then never writes over the user's file, or with nothing saved."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from queue import Full
from typing import Callable, Iterable

from textual.app import App, SystemCommand
from textual.screen import Screen

from trit.engine import EngineError

from ..service import Service, choose_model
from ..settings import Settings, SettingsError, load_settings, save_settings
from ..store import Store, StoreError
from . import actions
from .screens.chat import ChatScreen
from .screens.first_run import FirstRunScreen, needs_first_run
from .screens.help import HelpScreen

STOP_WAIT_S = 5.0  # how long quitting waits for a stopped reply to be stored


def styles_path() -> Path | None:
    """assets/styles/trit.tcss, wherever the assets package is (installed or in the source tree); None (the app runs
    with Textual's own styles) if an installation lacks it."""
    candidates = []
    spec = importlib.util.find_spec("trit.assets")
    if spec is not None:
        candidates += [Path(p) / "styles" / "trit.tcss" for p in (spec.submodule_search_locations or [])]
    candidates.append(Path(__file__).resolve().parents[2] / "assets" / "styles" / "trit.tcss")
    return next((p for p in candidates if p.is_file()), None)


class TritApp(App):
    TITLE = "Trit"
    CSS_PATH = styles_path()
    BINDINGS = [a.binding(priority=a.id == "quit") for a in actions.APP]

    def __init__(self, *, clock: Callable[[], datetime] | None = None, store: Store | None = None):
        """clock: what "now" is for "5 minutes ago" (tests fix it). store: a history to use instead of the
        default one."""
        super().__init__()
        self.clock = clock
        self.settings = Settings()
        self.settings_writable = True  # False when config.toml exists but could not be read: never overwrite it
        self.store = store
        self._own_store = store is None
        self.service: Service | None = None
        self.keymap: dict[str, str] = {}
        self.stop_signum: int | None = None  # SIGTERM or SIGHUP received: leaving

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        # Plain text unless asked: notices carry titles, paths and config.toml's own words ("[keys]"), which
        # Textual's markup would eat or misread.
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def now(self) -> datetime:
        return self.clock() if self.clock is not None else datetime.now(timezone.utc)

    # ---- start ----
    def on_mount(self) -> None:
        problems = []
        try:
            self.settings = load_settings()
        except SettingsError as e:
            self.settings_writable = False
            problems.append(f"{e} — using the default settings for now")
        if self.settings.theme in self.available_themes:
            self.theme = self.settings.theme
        else:
            problems.append(f"unknown theme {self.settings.theme!r} in config.toml; F9 chooses one")
        self.keymap = dict(self.settings.keys)
        unknown = sorted(set(self.keymap) - set(actions.BY_ID))
        if unknown:
            problems.append(f"config.toml [keys]: no action called {', '.join(unknown)} (F1 lists the names)")
        self.set_keymap(self.keymap)
        if self.store is None:
            try:
                self.store = Store()
            except StoreError as e:
                problems.append(f"{e} — nothing is saved this time")
        self.service = Service(self.store, self.settings)
        for problem in problems:
            self.notify(problem, severity="error", timeout=15)
        self.watch(self, "theme", self.remember_theme, init=False)
        self.catch_stop_signals()
        self.survive_a_closed_terminal()
        problem = None
        if not needs_first_run(self.settings):
            try:
                choose_model(None, self.settings)
            except EngineError as e:  # the configured model is gone: choose again, knowing why
                problem = f"{e}"
        if problem is not None or needs_first_run(self.settings):
            self.push_screen(FirstRunScreen(problem))
        else:
            self.push_screen(ChatScreen())

    def start_chat(self) -> None:
        """After the first-run screen found a model."""
        self.switch_screen(ChatScreen())

    def choose_default_model(self, name: str) -> None:
        self.settings.default_model = name
        if self.save_settings():
            self.start_chat()

    def save_settings(self) -> bool:
        if not self.settings_writable:
            self.notify("config.toml could not be read, so it is not written over; fix it to save settings.",
                        severity="warning")
            return True  # the choice holds for this session
        try:
            save_settings(self.settings)
        except OSError as e:
            self.notify(f"cannot save the settings: {e.strerror or e}", severity="error")
            return False
        return True

    def remember_theme(self, theme: str) -> None:
        if theme != self.settings.theme:
            self.settings.theme = theme
            self.save_settings()

    # ---- the command palette: every action of the table ----
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        ours = {a.title for a in actions.ALL}
        for command in super().get_system_commands(screen):
            if command.title not in ours:
                yield command
        table = list(actions.APP)
        if isinstance(screen, ChatScreen):
            table += [a for a in actions.CHAT + actions.PROMPT if a.id != "newline"]
        for a in table:
            keys = ", ".join(actions.key_list(a, self.keymap))
            target = self if a.action.startswith("app.") or a in actions.APP else screen
            action = a.action.removeprefix("app.")
            yield SystemCommand(a.title, f"{a.help} ({keys})",
                                lambda target=target, action=action: target.run_action(action))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # ---- leaving ----
    def chat_screen(self) -> ChatScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, ChatScreen)), None)

    def catch_stop_signals(self) -> None:
        """SIGTERM, and SIGHUP (the terminal closed), leave as Ctrl+Q does: a reply being written is stopped and kept,
        marked stopped; the exit code is 128 + the signal's number, as `trit ask` gives."""
        loop = asyncio.get_running_loop()
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is None:  # no SIGHUP on Windows
                continue
            try:
                loop.add_signal_handler(sig, self.stop_signal, sig)
            except (NotImplementedError, RuntimeError):  # a loop without signal handlers (Windows' proactor)
                pass

    def stop_signal(self, signum: int) -> None:
        if self.stop_signum is not None:  # already leaving (closing a terminal sends SIGHUP more than once)
            return
        self.stop_signum = signum
        self.run_worker(self.action_quit(return_code=128 + signum), group="leaving")

    def survive_a_closed_terminal(self) -> None:
        """Textual's writer thread dies of EIO on its first write to a closed terminal, and the next screen refresh
        then blocks the event loop for good on the thread's full queue: the stopped reply would never be stored and
        the app never leave. A write waits while the thread lives, and is dropped once it is dead."""
        writer = getattr(self._driver, "_writer_thread", None)
        queue = getattr(writer, "_queue", None)
        if writer is None or queue is None:  # another driver (Windows, a test's headless one): nothing to guard
            return

        def write(text: str) -> None:
            while writer.is_alive():
                try:
                    queue.put(text, timeout=0.1)
                    return
                except Full:
                    continue

        writer.write = write

    async def action_quit(self, return_code: int = 0) -> None:
        chat = self.chat_screen()
        if chat is not None and chat.generating:
            chat.cancel.set()  # the service stores what was written, marked stopped
            worker = chat.worker
            if worker is not None:
                try:
                    await asyncio.wait_for(worker.wait(), STOP_WAIT_S)
                except Exception:  # noqa: BLE001 — leaving anyway
                    pass
        if self.stop_signum == getattr(signal, "SIGHUP", None):
            self.leave_without_terminal(return_code)
        self.exit(return_code=return_code)

    def leave_without_terminal(self, return_code: int) -> None:
        """The terminal is gone (SIGHUP): what was said is stored, so close the history and leave now. Textual's
        shutdown would restore a terminal that no longer exists: its writer thread has died of EIO, and the next
        write waits forever on the thread's full queue."""
        self.on_unmount()
        os._exit(return_code)

    def on_unmount(self) -> None:
        chat = self.chat_screen()
        busy = chat is not None and chat.worker is not None and not chat.worker.is_finished
        if self.service is not None and not busy:  # never free a model a thread may still be using
            self.service.close()
        if self.store is not None and self._own_store and not busy:
            self.store.close()


def run() -> int:
    # The reply is decoded in a worker thread that gives up the GIL for every native call; with Python's default
    # 5 ms switch interval, a busy UI thread would make it wait up to that long to get it back, token after token.
    sys.setswitchinterval(0.0005)
    app = TritApp()
    app.run()
    return app.return_code or 0
