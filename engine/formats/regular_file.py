"""Opening a file of a model for reading, only when it is a regular file. A FIFO named model.safetensors or x.gguf
would block open() until some writer came, and a device reads without end: both hung `trit ask` and `trit import`.
Such a path fails like a missing file does, with an OSError whose strerror says what it is."""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

# A FIFO opened without O_NONBLOCK waits for a writer; with it, open returns at once and fstat can tell. The flag
# changes nothing for a regular file's reads. Windows has neither FIFOs in the file system nor the flag.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a directory" if stat.S_ISDIR(mode) else "a device"
        raise OSError(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
    return os.fdopen(fd, "rb")
