"""Text files attached to a message: `trit ask -f FILE` and the chat app's F5 read them the same way and put each in
the message under its name, before what was typed."""

from __future__ import annotations

import stat
from pathlib import Path

from trit.engine import InputError

from .paths import human_size

MAX_FILE_BYTES = 16 << 20  # far beyond any context (128k tokens are under 1 MB of text): refused unread


def read_text_file(path: Path) -> str:
    """A file's text. Only regular files are opened (a named pipe would wait for a writer forever); text that is not
    UTF-8 is refused as stdin's is, naming the file and the byte. A missing file is an OSError."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a file (a folder, a pipe or a device): attach a text file")
    if info.st_size > MAX_FILE_BYTES:
        raise InputError(f"{path} is {human_size(info.st_size)}: far more than a model's context holds; give a "
                         "part of it")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): convert it "
                         f"first, e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}-utf8{path.suffix}`") from None


def with_files(files: list[tuple[str, str]], *parts: str) -> str:
    """The message: each file under its name, then the other parts that are not empty."""
    attached = [f"{name}:\n\n{body.rstrip()}" for name, body in files]
    return "\n\n".join(part for part in (*attached, *parts) if part)
