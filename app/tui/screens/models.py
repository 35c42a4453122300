"""The models on this computer, from inside the chat: choose the one this conversation talks to, make one the
default for new conversations, download one of the catalogue (listed under the installed ones, with its size) or
import a folder or GGUF file, with the same progress as the first-run screen. Dismissed with the chosen model's name,
or None."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from trit.engine.models import catalogue, registry

from ...paths import paths
from ...service import DEMO_NAME, adopt_installed, default_model_name, demo_model
from ...settings import SettingsError, load_settings
from ..widgets.model_transfer import ModelTransfer
from ..widgets.status_line import model_label


@dataclass(frozen=True)
class ModelRow:
    name: str
    detail: str


def model_rows(current: str) -> list[ModelRow]:
    """The installed models, newest last as `trit models` lists them, then the demo that ships inside Trit; first
    the conversation's own model when it is none of these (a folder or file given by its path)."""
    rows = [ModelRow(m.name, " · ".join(p for p in (f"{m.size_bytes / 1e9:.2f} GB", m.backend, m.file_type) if p))
            for m in registry.installed(paths().models)]
    if demo_model() is not None:
        rows.append(ModelRow(DEMO_NAME, "inside Trit · to try the app, not to trust"))
    if current and current not in [r.name for r in rows]:
        rows.insert(0, ModelRow(current, "not installed: used from where it is"))
    return rows


PULL = "pull:"  # the option id of a catalogue entry: never an installed model's name, which has no ':'


def available(rows: list[ModelRow]) -> list[catalogue.CatalogueEntry]:
    """The catalogue's models not installed yet (by the repository they came from)."""
    try:
        sources = {m.source for m in registry.installed(paths().models)}
    except Exception:  # noqa: BLE001 — an unreadable models folder: show the whole catalogue
        sources = set()
    names = {r.name for r in rows}
    return [e for e in catalogue.CATALOGUE if f"hf:{e.repo}" not in sources and e.name not in names]


def available_label(entry: catalogue.CatalogueEntry) -> Text:
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append("↓ ", style="dim")
    label.append(entry.name)
    label.append(f"  {registry.format_bytes(entry.download_bytes)} to download · {entry.family}", style="dim")
    return label


class ModelsScreen(ModalScreen[str | None]):
    VERTICAL_BREAKPOINTS = [(0, "-short"), (16, "-tall")]  # a short terminal: the rows go to the list
    BINDINGS = [
        Binding("escape", "close", "Close", id="models_close"),
        Binding("ctrl+d", "make_default", "Make default", id="models_default"),
    ]

    def __init__(self, current: str, settings):
        super().__init__(classes="dialog")
        self.current, self.settings = current, settings
        self.rows: list[ModelRow] = []
        self.default_before = ""  # the default when a transfer began: the demo gives way to what it installs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box", id="models-box"):
            yield Static("Models", classes="dialog-title")
            yield Static("Enter: this conversation uses it (↓: downloads it) · Ctrl+D: the default for new ones · "
                         "Esc closes", classes="dialog-hint", markup=False)
            yield OptionList(id="model-list")
            with Horizontal(id="models-install"):
                yield Button("Download BitNet b1.58 2B4T", id="download", compact=True)
                yield Input(placeholder="or a model folder or .gguf file to import", id="import-path", compact=True)
            yield ModelTransfer()

    def on_mount(self) -> None:
        self.show_rows()
        self.query_one("#model-list", OptionList).focus()

    def show_rows(self, highlight: str | None = None) -> None:
        """List the models again, the cursor on highlight, else where it was, else on the conversation's model."""
        highlight = highlight or (self.highlighted if self.rows else None) or self.current
        try:
            self.rows = model_rows(self.current)
        except Exception as e:  # noqa: BLE001 — an unreadable models folder is one line here
            self.rows = []
            self.query_one(ModelTransfer).say(" ".join(str(e).split()), error=True)
        default = default_model_name(self.settings)
        listing = self.query_one("#model-list", OptionList)
        listing.clear_options()
        for row in self.rows:
            label = Text(no_wrap=True, overflow="ellipsis")
            label.append("● " if row.name == self.current else "  ", style="bold")
            label.append(model_label(row.name), style="bold" if row.name == self.current else "")
            label.append(f"  {row.detail}", style="dim")
            if row.name == default:
                label.append("  default", style="italic")
            listing.add_option(Option(label, id=row.name))
        for entry in available(self.rows):
            listing.add_option(Option(available_label(entry), id=PULL + entry.name))
        names = [r.name for r in self.rows]
        listing.highlighted = names.index(highlight) if highlight in names else (0 if names else None)

    @property
    def highlighted(self) -> str | None:
        listing = self.query_one("#model-list", OptionList)
        index = listing.highlighted
        return self.rows[index].name if index is not None and index < len(self.rows) else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if not event.option.id.startswith(PULL):
            self.dismiss(event.option.id)
        elif not self.transfer.busy:
            self.default_before = default_model_name(self.settings)
            self.transfer.start_download(catalogue.find(event.option.id.removeprefix(PULL)))

    def action_make_default(self) -> None:
        name = self.highlighted
        if name is None:
            return
        self.settings.default_model = name
        if self.app.save_settings():
            self.app.notify(f"New conversations use {model_label(name)}.")
        self.show_rows()

    # ---- installing ----
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "download" and not self.transfer.busy:
            self.default_before = default_model_name(self.settings)
            self.transfer.start_download()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        source = event.value.strip()
        if not source or self.transfer.busy:
            return
        self.default_before = default_model_name(self.settings)
        self.transfer.start_import(Path(source).expanduser())

    @property
    def transfer(self) -> ModelTransfer:
        return self.query_one(ModelTransfer)

    def on_model_transfer_finished(self, message: ModelTransfer.Finished) -> None:
        if message.error:
            return  # said in one line under the list
        self.transfer.say(f"{message.name} is ready: Enter on it to use it here.")
        self.adopt(message.name)
        self.query_one("#import-path", Input).value = ""
        self.show_rows(highlight=message.name)
        self.query_one("#model-list", OptionList).focus()

    def adopt(self, name: str) -> None:
        """As `trit import` and `trit pull` do: someone on the demo gets the real model as the default."""
        if not self.app.settings_writable:  # an unreadable config.toml is never written over
            return
        try:
            changed = adopt_installed(name, self.default_before) is not None
        except SettingsError as e:
            self.app.notify(str(e), severity="error")
            return
        if changed:
            self.settings.default_model = load_settings().default_model  # as adopt_installed left config.toml
            self.app.notify(f"New conversations now use {model_label(name)} (Ctrl+D in F4 picks another).")

    def action_close(self) -> None:
        if self.transfer.busy:  # leaving stops the transfer; what was downloaded is kept for next time
            self.transfer.closing = True
        self.dismiss(None)
