"""The first start with no model on this computer: say what Trit needs, and offer the download, the demo model that
ships inside Trit, or a model folder already on disk. Whatever goes wrong is one line here, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, ProgressBar, Static

from trit.engine.models import download, importing, registry

from ...paths import paths
from ...service import demo_model


class Abandoned(Exception):
    """The app is closing: stop the transfer (what was downloaded is kept for next time)."""


def needs_first_run(settings) -> bool:
    if settings.default_model:
        return False
    try:
        return not registry.installed(paths().models)
    except Exception:  # an unreadable models folder: let the chat screen say what is wrong when it loads a model
        return False


class Choices(VerticalScroll, can_focus=False):
    """The screen's scrolling body. Not a stop for Tab: it scrolls to whichever choice has the focus, and a focused
    container looks like nothing at all."""


class FirstRunScreen(Screen):
    class Transfer(Message):
        def __init__(self, done: int, total: int, filename: str):
            super().__init__()
            self.done, self.total, self.filename = done, total, filename

    class Finished(Message):
        def __init__(self, error: str | None, what: str = ""):
            super().__init__()
            self.error, self.what = error, what

    def __init__(self, problem: str | None = None):
        """problem: why the configured model cannot be used, when that is why this screen is shown."""
        super().__init__()
        self.problem = problem
        self.busy = False
        self.closing = False
        self.chosen = "download"  # the choice being carried out: it gets the focus back if it fails
        self.demo = demo_model()

    def compose(self) -> ComposeResult:
        with Choices(id="first-run"):
            with Vertical(id="welcome"):
                yield Static("Welcome to Trit", id="welcome-title")
                yield Static("Trit answers with a language model that runs on this computer: nothing you type "
                             "leaves it. " + ("The model in the settings cannot be used — choose another."
                                              if self.problem else "There is no model here yet — choose one to "
                                              "start."), classes="welcome-text")
                with Vertical(classes="choice"):
                    yield Button("Download BitNet b1.58 2B4T", id="download", variant="primary")
                    yield Static(f"1.2 GB from Hugging Face ({download.DEFAULT_REPO}), once. Every file is checked, "
                                 "and an "
                                 "interrupted download continues where it stopped. The only time Trit uses the "
                                 "network.", classes="hint")
                with Vertical(classes="choice"):
                    yield Button("Use the demo model", id="demo", disabled=self.demo is None)
                    yield Static("A tiny model inside Trit, to try the app right away. Its answers are not useful."
                                 if self.demo is not None else
                                 "The demo model is not part of this installation.", classes="hint")
                with Vertical(classes="choice"):
                    with Horizontal(id="import-row"):
                        yield Input(placeholder="a model folder on this computer", id="folder")
                        yield Button("Import", id="import")
                    yield Static("A BitNet b1.58 folder in the Hugging Face format (config.json, "
                                 "model.safetensors, tokenizer.json), copied in after a check. No network.",
                                 classes="hint")
                yield ProgressBar(id="progress", show_eta=True)
                yield Static("", id="first-run-message", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#progress").display = False
        if self.problem:
            self.say(" ".join(self.problem.split()), error=True)
        self.query_one("#download", Button).focus()

    def say(self, text: str, error: bool = False) -> None:
        message = self.query_one("#first-run-message", Static)
        message.update(text)
        message.set_class(error, "error")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if self.busy:
            return
        self.chosen = event.button.id
        if event.button.id == "download":
            self.start("Downloading BitNet b1.58 2B4T…")
            self.download()
        elif event.button.id == "import":
            self.import_folder_from_input()
        elif event.button.id == "demo":
            self.app.choose_default_model("demo")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not self.busy:
            self.chosen = "folder"
            self.import_folder_from_input()

    def import_folder_from_input(self) -> None:
        folder = self.query_one("#folder", Input).value.strip()
        if not folder:
            self.say("Type the folder of a model first.", error=True)
            self.query_one("#folder", Input).focus()
            return
        self.start(f"Importing {folder}…")
        self.import_folder(Path(folder).expanduser())

    def start(self, text: str) -> None:
        self.busy = True
        for button in self.query(Button):
            button.disabled = True
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.say(text)

    def progress(self):
        last = [0.0]

        def report(p) -> None:  # engine.models.registry.Progress, from the worker thread
            if self.closing:
                raise Abandoned()
            now = time.monotonic()
            if now - last[0] >= 0.1 or p.done >= p.total:
                last[0] = now
                self.post_message(self.Transfer(p.done, p.total, p.filename))

        return report

    @work(thread=True, exclusive=True, group="model-transfer", exit_on_error=False)
    def download(self) -> None:
        try:
            m = download.pull(download.DEFAULT_REPO, paths().models, progress=self.progress(),
                         log=lambda line: self.post_message(self.Transfer(-1, -1, line)))
        except Abandoned:
            return
        except Exception as e:  # noqa: BLE001 — every failure is one line on this screen
            self.post_message(self.Finished(one_line(e)))
            return
        self.post_message(self.Finished(None, f"{m.name} is ready"))

    @work(thread=True, exclusive=True, group="model-transfer", exit_on_error=False)
    def import_folder(self, folder: Path) -> None:
        try:
            m = importing.import_model(folder, paths().models, progress=self.progress())
        except Abandoned:
            return
        except Exception as e:  # noqa: BLE001
            self.post_message(self.Finished(one_line(e)))
            return
        self.post_message(self.Finished(None, f"{m.name} is ready"))

    def on_first_run_screen_transfer(self, message: Transfer) -> None:
        if message.done < 0:  # a line from the downloader
            self.say(message.filename)
            return
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=max(message.total, 1), progress=message.done)
        self.say(f"{message.filename}: {message.done / 1e6:,.0f} of {message.total / 1e6:,.0f} MB")

    def on_first_run_screen_finished(self, message: Finished) -> None:
        self.busy = False
        self.query_one("#progress").display = False
        if message.error:
            for button in self.query(Button):
                button.disabled = button.id == "demo" and self.demo is None
            self.say(message.error, error=True)
            self.query_one(f"#{self.chosen}").focus()  # the buttons were disabled, so the focus was lost
            return
        self.app.notify(message.what)
        self.app.start_chat()

    def on_unmount(self) -> None:
        self.closing = True


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, Exception) and type(e).__module__.startswith("trit.") \
        else f"{type(e).__name__}: {text}"
