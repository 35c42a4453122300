"""Where Trit keeps things: platformdirs' per-user folders, or everything under TRIT_HOME when it is set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "trit"


@dataclass(frozen=True)
class Paths:
    data: Path    # models, the history database
    config: Path  # config.toml
    cache: Path   # things that can be made again: synthetic benchmark models

    @property
    def models(self) -> Path:
        return self.data / "models"


def paths() -> Paths:
    home = os.environ.get("TRIT_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(data=root / "data", config=root / "config", cache=root / "cache")
    return Paths(
        data=Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
        config=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
        cache=Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
    )


FULL_BELOW = 1 << 20  # bytes: with less free than this, a write that failed failed because the disk is full


def why_unwritable(folder: Path, error: int | None = None) -> str | None:
    """Why nothing can be written into `folder` now, and what to do, as the end of a one-line message: a read-only
    file system or folder, or a full disk. `error` is the errno of the write that failed, when known. None when
    neither holds (the failure was something else)."""
    import errno
    import shutil

    here = next((p for p in (folder, *folder.parents) if p.exists()), folder)  # the folder may not exist yet
    read_only_fs = error == errno.EROFS
    try:
        read_only_fs = read_only_fs or bool(os.statvfs(here).f_flag & os.ST_RDONLY)
        free = shutil.disk_usage(here).free
    except (OSError, AttributeError):  # no statvfs on Windows
        free = None
    if read_only_fs:
        return (f"{here} is on a read-only file system; make it writable, or set TRIT_HOME to a folder you can "
                "write to")
    if error in (errno.EACCES, errno.EPERM) or not os.access(here, os.W_OK):
        return f"{here} is read-only for you; make it writable (chmod u+w), or set TRIT_HOME to another folder"
    if error in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or (free is not None and free < FULL_BELOW):
        return f"the disk holding {here} is full ({free} bytes free); free some space and try again"
    return None


def human_size(n: int) -> str:
    """A size on disk as people read it: 1.2 GB, 340.0 KB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
