"""The KV caches of logged conversations, kept on disk so that `trit ask -c` (and the chat app reopening a
conversation) in a new process prefills only the new message: `<cache>/kv/<conversation id>.kv`, in the format of
engine/formats/kv_file.py, readable by the user only. The history owns them (Store.warm): deleting a conversation
deletes its cache. Within a size budget (config.toml `kv_cache_mb`), the least recently used go first."""

from __future__ import annotations

from pathlib import Path

from .paths import paths, why_unwritable

KV_DIR = "kv"
SUFFIX = ".kv"
MB = 1 << 20


class WarmCache:
    def __init__(self, folder: Path | None = None):
        self.folder = folder if folder is not None else paths().cache / KV_DIR

    def path(self, cid: int) -> Path:
        return self.folder / f"{cid}{SUFFIX}"

    def _files(self, cid: int | None = None) -> list[Path]:
        """The cache of one conversation (or of all), and any temporary file a write cut short left beside it."""
        pattern = f"{cid}{SUFFIX}*" if cid is not None else f"*{SUFFIX}*"
        try:
            return [p for p in self.folder.glob(pattern) if p.is_file()]
        except OSError:
            return []

    def forget(self, cid: int | None = None) -> None:
        """Delete a conversation's cache (every one when cid is None). Raises OSError with what to do."""
        for p in self._files(cid):
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                why = why_unwritable(self.folder, e.errno) or e.strerror or str(e)
                raise OSError(e.errno, f"its saved cache {p} could not be deleted: {why}; delete it by hand") from None

    def evict(self, budget_mb: int, keep: Path | None = None) -> None:
        """Delete the least recently used caches until the rest fit the budget; `keep` (the one just written) goes
        last, and only if it alone is over the budget. Raises OSError."""
        files = []
        for p in self._files():
            if p.suffix != SUFFIX:  # a write under way in another process
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((p == keep, st.st_mtime, st.st_size, p))
        total = 0
        for _, _, size, p in sorted(files, key=lambda f: (f[0], f[1]), reverse=True):  # keep first, then newest
            total += size
            if total > budget_mb * MB:
                p.unlink(missing_ok=True)

    def note(self, error: OSError) -> str:
        """One line for a cache that could not be saved: the answer stands, only the next turn is slower."""
        why = why_unwritable(self.folder, error.errno) or error.strerror or str(error)
        return f"the conversation's cache was not saved in {self.folder} (the next turn prefills it again): {why}"

