"""The first start with no model on this computer: say what Trit needs, and offer the download, the demo model that
ships inside Trit, or a model folder already on disk. Whatever goes wrong is one line here, never a traceback."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from trit.engine.models import download, registry

from ...paths import paths
from ...service import demo_model
from ..widgets.model_transfer import ModelTransfer


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
    def __init__(self, problem: str | None = None):
        """problem: why the configured model cannot be used, when that is why this screen is shown."""
        super().__init__()
        self.problem = problem
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
                yield ModelTransfer(message_id="first-run-message")
        yield Footer()

    def on_mount(self) -> None:
        if self.problem:
            self.say(" ".join(self.problem.split()), error=True)
        self.query_one("#download", Button).focus()

    @property
    def transfer(self) -> ModelTransfer:
        return self.query_one(ModelTransfer)

    @property
    def busy(self) -> bool:
        return any(t.busy for t in self.query(ModelTransfer))  # none once the screen has gone

    def say(self, text: str, error: bool = False) -> None:
        self.transfer.say(text, error)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if self.busy:
            return
        self.chosen = event.button.id
        if event.button.id == "download":
            self.disable_choices()
            self.transfer.start_download()
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
        self.disable_choices()
        self.transfer.start_import(Path(folder).expanduser())

    def disable_choices(self) -> None:
        for button in self.query(Button):
            button.disabled = True

    def on_model_transfer_finished(self, message: ModelTransfer.Finished) -> None:
        if message.error:
            for button in self.query(Button):
                button.disabled = button.id == "demo" and self.demo is None
            self.query_one(f"#{self.chosen}").focus()  # the buttons were disabled, so the focus was lost
            return
        self.app.notify(f"{message.name} is ready")
        self.app.start_chat()

