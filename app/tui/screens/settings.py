"""The settings of one conversation: its system prompt and sampling. Empty fields take the defaults of config.toml,
else the model's own; "also for new conversations" writes them to config.toml."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static, TextArea

from ...prompts import saved_prompts
from ...settings import Settings, SettingsError
from ..widgets.status_line import model_label

# field, label, type, what it does; the ranges are SamplingParams' own
FIELDS = [
    ("temperature", "Temperature", float, "0: always the likeliest word; higher: more varied"),
    ("top_p", "Top p", float, "only the likeliest words that make up this share"),
    ("max_tokens", "Max tokens", int, "the longest reply, in tokens"),
    ("seed", "Seed", int, "the same seed writes the same reply again"),
]


@dataclass
class ConversationSettings:
    system: str
    params: dict
    as_default: bool


class SettingsScreen(ModalScreen[ConversationSettings | None]):
    BINDINGS = [
        Binding("escape", "dismiss_none", "Cancel", id="settings_cancel"),
        Binding("ctrl+s", "save", "Save", id="settings_save"),
    ]

    def __init__(self, system: str, params: dict, defaults: Settings, model: str, logged: bool):
        super().__init__(classes="dialog")
        self.system, self.params, self.defaults, self.model, self.logged = system, params, defaults, model, logged
        try:
            self.saved = saved_prompts()
        except SettingsError:  # a damaged prompts.toml: `trit prompts list` says what is wrong; the dialog works
            self.saved = {}

    def default_text(self, name: str) -> str:
        value = getattr(self.defaults, name, None)
        if value is None:
            return "default: a new one each time" if name == "seed" else "default: model's"
        return f"default: {value}"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box", id="settings-box"):
            yield Static("Conversation settings", classes="dialog-title")
            yield Static(f"model {model_label(self.model)}" + ("" if self.logged else
                                                               " · incognito: kept only until you leave it"),
                         classes="dialog-hint", markup=False)
            with VerticalScroll(id="settings-form"):
                yield Label("System prompt: what the model is told before the conversation", id="system-label")
                if self.saved:  # `trit prompts save NAME TEXT` keeps them; choosing one fills the box below
                    yield Select([(name, name) for name in self.saved], prompt="a saved prompt…", id="saved-prompt",
                                 compact=True)
                yield TextArea(self.system, id="system", soft_wrap=True, show_line_numbers=False,
                               tab_behavior="focus", compact=True,
                               placeholder="none" if not self.defaults.system_prompt else "")
                for name, label, kind, hint in FIELDS:
                    with Horizontal(classes="field"):
                        yield Label(label, classes="field-label")
                        value = self.params.get(name)
                        yield Input("" if value is None else str(value), placeholder=self.default_text(name),
                                    id=name, type="number" if kind is float else "integer",
                                    compact=True)
                        yield Static(hint, classes="field-hint")
                yield Checkbox("Also use these for new conversations (saved in config.toml)", id="as-default",
                               compact=True)
            yield Static("", id="settings-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save  ctrl+s", variant="primary", id="save", compact=True)
                yield Button("Cancel  esc", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#system", TextArea).focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "saved-prompt" and isinstance(event.value, str):
            self.query_one("#system", TextArea).text = self.saved[event.value]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()

    def action_save(self) -> None:
        from trit.engine import SamplingParams

        params = {}
        for name, label, kind, _ in FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            if not raw:
                continue
            try:
                value = kind(raw)
                SamplingParams(**{name: value})
            except ValueError:  # not a number, or out of range (SamplingError is a ValueError)
                value = None
            if value is None:
                error = self.query_one("#settings-error", Static)
                error.update(f"{label}: {raw!r} is not a valid value")
                error.display = True
                self.query_one(f"#{name}", Input).focus()
                return
            params[name] = value
        self.dismiss(ConversationSettings(self.query_one("#system", TextArea).text.strip(), params,
                                          self.query_one("#as-default", Checkbox).value))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
