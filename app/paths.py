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
