"""Installing a model from the app: the download of BitNet b1.58 2B4T or the import of a folder or GGUF file, in a
thread, with a progress bar and one line of news. The first-run screen and the models dialog both use it; whatever
goes wrong is one line here, never a traceback."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import ProgressBar, Static

from trit.engine.models import catalogue, download, importing
from trit.engine.models.catalogue import CatalogueEntry
from trit.engine.models.registry import format_bytes

from ...paths import paths


class Abandoned(Exception):
    """The app is closing: stop the transfer (what was downloaded is kept for next time)."""


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, Exception) and type(e).__module__.startswith("trit.") \
        else f"{type(e).__name__}: {text}"


class ModelTransfer(Vertical):
    class Finished(Message):
        """The transfer ended: error is one line, or None and name is the installed model's."""

        def __init__(self, error: str | None, name: str = ""):
            super().__init__()
            self.error, self.name = error, name

    class Progress(Message):
        def __init__(self, done: int, total: int, filename: str):
            super().__init__()
            self.done, self.total, self.filename = done, total, filename

    def __init__(self, *, message_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.message_id = message_id
        self.busy = False
        self.closing = False

    def compose(self) -> ComposeResult:
        yield ProgressBar(classes="transfer-progress", show_eta=True)
        yield Static("", classes="transfer-message", id=self.message_id, markup=False)

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False

    def say(self, text: str, error: bool = False) -> None:
        message = self.query_one(".transfer-message", Static)
        message.update(text)
        message.set_class(error, "error")

    @property
    def said(self) -> str:
        return str(self.query_one(".transfer-message", Static).render())

    def start_download(self, entry: CatalogueEntry | None = None) -> None:
        """Download a model of the catalogue (default: BitNet b1.58 2B4T)."""
        entry = entry or catalogue.for_repo(download.DEFAULT_REPO)
        self._begin(f"Downloading {entry.name} ({entry.repo}, about {format_bytes(entry.download_bytes)})…")
        self._download(entry.repo)

    def start_import(self, source: Path) -> None:
        self._begin(f"Importing {source}…")
        self._import(source)

    def _begin(self, text: str) -> None:
        self.busy = True
        bar = self.query_one(ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.say(text)

    def _report(self):
        last = [0.0]

        def report(p) -> None:  # engine.models.registry.Progress, from the worker thread
            if self.closing:
                raise Abandoned()
            now = time.monotonic()
            if now - last[0] >= 0.1 or p.done >= p.total:
                last[0] = now
                self.post_message(self.Progress(p.done, p.total, p.filename))

        return report

    @work(thread=True, exclusive=True, group="model-transfer", exit_on_error=False)
    def _download(self, repo: str) -> None:
        try:
            m = download.pull(repo, paths().models, progress=self._report(),
                              log=lambda line: self.post_message(self.Progress(-1, -1, line)))
        except Abandoned:
            return
        except Exception as e:  # noqa: BLE001 — every failure is one line
            self.post_message(self.Finished(one_line(e)))
            return
        self.post_message(self.Finished(None, m.name))

    @work(thread=True, exclusive=True, group="model-transfer", exit_on_error=False)
    def _import(self, source: Path) -> None:
        try:
            m = importing.import_model(source, paths().models, progress=self._report())
        except Abandoned:
            return
        except Exception as e:  # noqa: BLE001
            self.post_message(self.Finished(one_line(e)))
            return
        self.post_message(self.Finished(None, m.name))

    def on_model_transfer_progress(self, message: Progress) -> None:
        message.stop()
        if message.done < 0:  # a line from the downloader
            self.say(message.filename)
            return
        self.query_one(ProgressBar).update(total=max(message.total, 1), progress=message.done)
        self.say(f"{message.filename}: {message.done / 1e6:,.0f} of {message.total / 1e6:,.0f} MB")

    def on_model_transfer_finished(self, message: Finished) -> None:
        # seen here first (posted to this widget), then bubbles to the screen
        self.busy = False
        self.query_one(ProgressBar).display = False
        if message.error:
            self.say(message.error, error=True)

    def on_unmount(self) -> None:
        self.closing = True
