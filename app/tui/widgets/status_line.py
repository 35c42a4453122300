"""One line under the message box: the model, how much of the context window is used, and how fast the last reply
came. Whatever does not fit is cut from the right, so the model and the context stay in view."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

CONTEXT_WARNING = 0.8  # from this share of the window on, say that the oldest turns will soon be left out
SEP = ("  ·  ", "dim")
CONTEXT_WARNING_TEXT = ("⚠ {share:.0%} of the context window is used: the oldest messages will soon be left out "
                        "of what the model reads. Ctrl+N starts a fresh conversation.")
CONTEXT_FULL_TEXT = ("⚠ {share:.0%} of the context window is used: the {dropped} oldest message{s} left out of "
                     "what the model reads. Ctrl+N starts a fresh conversation.")


def context_warning_text(share: float, dropped: int) -> str:
    """The line above the message box; the same words as the notice in the conversation once messages are left
    out (chat_view.dropped_notice)."""
    if dropped:
        return CONTEXT_FULL_TEXT.format(share=share, dropped=dropped, s="s are" if dropped != 1 else " is")
    return CONTEXT_WARNING_TEXT.format(share=share)


def model_label(name: str) -> str:
    """A folder's last part rather than its whole path."""
    return name.rstrip("/").rsplit("/", 1)[-1] or name


class StatusLine(Static):
    def __init__(self, **kwargs):
        super().__init__("", markup=False, **kwargs)
        self.model: list = []
        self.model_short: list = []  # what stays of it when the line is short of room
        self.context: list = []
        self.context_short: list = []
        self.speed: list = []
        self.context_warning = False

    def _show(self) -> None:
        """Model, context, speed; when they do not fit, the speed goes first, then the model's explanations, so the
        context meter stays in sight at 40 columns."""
        width = self.content_size.width or 10_000
        for model, context, speed in ((self.model, self.context, self.speed), (self.model, self.context, []),
                                      (self.model_short, self.context, []), (self.model_short, self.context_short, [])):
            parts = [p for p in (model, context, speed) if p]
            pieces: list = []
            for i, part in enumerate(parts):
                if i:
                    pieces.append(SEP)
                pieces += part
            content = Content.assemble(*pieces)
            if content.cell_length <= width:
                break
        self.update(content)

    def on_resize(self) -> None:
        self._show()

    def show_model(self, name: str, *, demo: bool = False, incognito: bool = False, note: str = "") -> None:
        self.model = [("INCOGNITO", "bold $warning"), ("  ", "")] if incognito else []
        self.model.append((model_label(name), "bold"))
        self.model_short = list(self.model) + ([(" (demo)", "$warning")] if demo else [])
        if demo:
            self.model.append((" (demo model: to try the app, not to trust)", "$warning"))
        if note:
            self.model.append((f" {note}", "dim"))
        self._show()

    def show_context(self, used: int, n_ctx: int | None) -> None:
        self.context_warning = False
        if not n_ctx:
            self.context = self.context_short = [(f"context {used:,} tokens", "")] if used else []
        else:
            share = used / n_ctx
            self.context_warning = share >= CONTEXT_WARNING
            mark, style = ("⚠ ", "bold $warning") if self.context_warning else ("", "")
            self.context = [(f"{mark}context {used:,}/{n_ctx:,} ({share:.0%})", style)]
            self.context_short = [(f"{mark}{share:.0%} of context", style)]
        self._show()

    def show_speed(self, decode_tok_s: float | None, first_token_s: float | None) -> None:
        self.speed = []
        if decode_tok_s:
            self.speed.append((f"{decode_tok_s:.1f} tok/s", ""))
        if first_token_s:
            took = f"{first_token_s:.2f} s" if first_token_s >= 1 else f"{first_token_s * 1000:.0f} ms"
            self.speed.append((("  ·  " if self.speed else "") + f"first token {took}", ""))
        self._show()

    @property
    def plain(self) -> str:
        return str(self.render())
