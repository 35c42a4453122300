"""The first start with no model on this computer: say what Trit needs, and offer a download from the catalogue
(BitNet b1.58 2B4T unless another is chosen, each with its size), the demo model that ships inside Trit, or a model
folder already on disk. Whatever goes wrong is one line here, never a traceback."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Select, Static

from trit.engine.models import catalogue, download, registry
from trit.engine.models.registry import format_bytes

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


def option_label(entry: catalogue.CatalogueEntry) -> str:
    return f"{entry.name}  {format_bytes(entry.download_bytes)}"  # the family is in the hint: rows fit 40 columns


def download_label(entry: catalogue.CatalogueEntry) -> str:
    return f"Download {entry.name}"  # its size is in the list above and the hint below: the button fits 40 columns


def download_hint(entry: catalogue.CatalogueEntry) -> str:
    return (f"About {format_bytes(entry.download_bytes)} from Hugging Face ({entry.repo}), once: {entry.description} "
            f"({entry.family}, {entry.licence} licence). Every file is checked, and an interrupted download continues "
            "where it stopped. The only time Trit uses the network.")


class FirstRunScreen(Screen):
    def __init__(self, problem: str | None = None):
        """problem: why the configured model cannot be used, when that is why this screen is shown."""
        super().__init__()
        self.problem = problem
        self.chosen = "download"  # the choice being carried out: it gets the focus back if it fails
        self.entry = catalogue.for_repo(download.DEFAULT_REPO)  # what the download button fetches
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
                    # the list before the button: Tab from the button still goes on to the next choice
                    yield Select([(option_label(e), e.name) for e in catalogue.CATALOGUE], value=self.entry.name,
                                 allow_blank=False, id="catalogue")
                    yield Button(download_label(self.entry), id="download", variant="primary")
                    yield Static(download_hint(self.entry), id="download-hint", classes="hint", markup=False)
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
            self.transfer.start_download(self.entry)
        elif event.button.id == "import":
            self.import_folder_from_input()
        elif event.button.id == "demo":
            self.app.choose_default_model("demo")

    def on_select_changed(self, event: Select.Changed) -> None:
        entry = catalogue.find(str(event.value))
        if entry is None or entry is self.entry:
            return
        self.entry = entry
        button = self.query_one("#download", Button)
        button.label = download_label(entry)
        button.refresh(layout=True)  # its width follows the new label
        self.query_one("#download-hint", Static).update(download_hint(entry))

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
        for widget in self.query("Button, #catalogue"):
            widget.disabled = True

    def on_model_transfer_finished(self, message: ModelTransfer.Finished) -> None:
        if message.error:
            for widget in self.query("Button, #catalogue"):
                widget.disabled = widget.id == "demo" and self.demo is None
            self.query_one(f"#{self.chosen}").focus()  # the buttons were disabled, so the focus was lost
            return
        self.app.notify(f"{message.name} is ready")
        self.app.start_chat()

