"""The user's settings: `config.toml` in the config folder. Missing keys take the defaults below; unknown keys are
kept when the file is written back, so a newer Trit's settings survive an older one."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04's): the same parser, before it joined the standard library
    import tomli as tomllib

from .paths import paths, why_unwritable

CONFIG_FILE = "config.toml"
# The sampling settings config.toml and a conversation's settings hold, by their SamplingParams names.
SAMPLING_SETTINGS = ("temperature", "top_p", "max_tokens", "seed")
FLOAT_SETTINGS = ("temperature", "top_p")  # None by default (the model's own), a float when set
OPTIONAL_INT_SETTINGS = ("seed",)  # None by default (a new one for every reply), an int when set
# The KV cache's element types (engine/runtime/native.py KV_TYPES): fp16, int8 with a scale per position (half the
# memory), exact fp32.
KV_TYPES = ("f16", "q8", "f32")


class SettingsError(Exception):
    """config.toml cannot be read: the message names the file and what to fix."""


@dataclass
class Settings:
    default_model: str = ""    # a model name from `trit models`, or a folder; "" = the one installed, else the demo
    system_prompt: str = ""    # "" = the model's own default (none for BitNet)
    temperature: float | None = None  # None = the model's generation_config.json
    top_p: float | None = None
    max_tokens: int = 1024
    seed: int | None = None  # None = a different reply each time; a number gives the same reply to the same words
    theme: str = "textual-dark"
    kv_cache_mb: int = 2048  # disk for conversations' saved KV caches (ask -c starts warm); 0 keeps none
    kv_type: str = ""  # the KV cache's elements (KV_TYPES); "" = the engine's default; --kv overrides it
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> keys, e.g. {"new_chat": "ctrl+n"}
    extra: dict = field(default_factory=dict, repr=False)  # keys this version does not know

    def sampling_overrides(self) -> dict:
        """The sampling settings the user set, as SamplingParams keyword arguments."""
        values = {name: getattr(self, name) for name in SAMPLING_SETTINGS}
        return {k: v for k, v in values.items() if v is not None}


def config_path() -> Path:
    return paths().config / CONFIG_FILE


def _check(name: str, value, default):
    expected = type(default) if default is not None else (int, float)
    if name in FLOAT_SETTINGS:
        expected = (int, float)
    elif name in OPTIONAL_INT_SETTINGS:
        expected = int
    if isinstance(value, bool) or not isinstance(value, expected):
        raise SettingsError(f"{config_path()}: {name} = {value!r} is not valid; fix or delete that line")
    return float(value) if name in FLOAT_SETTINGS else value


def _check_sampling(path: Path, values: dict) -> None:
    """Ranges as the engine's SamplingParams defines them (temperature -1, top_p 5, max_tokens 0 are refused)."""
    from trit.engine import SamplingError, SamplingParams

    for name, value in values.items():
        try:
            SamplingParams(**{name: value})
        except SamplingError as e:
            raise SettingsError(f"{path}: {e}; fix or delete that line") from None


def load_settings() -> Settings:
    path = config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"{path}: not valid TOML ({e}); fix it or delete the file to start from defaults")
    defaults = Settings()
    known = {f.name for f in fields(Settings)} - {"extra"}
    values = {name: _check(name, data[name], getattr(defaults, name)) for name in known if name in data}
    _check_sampling(path, {k: v for k, v in values.items() if k in SAMPLING_SETTINGS})
    if values.get("kv_cache_mb", 0) < 0:
        raise SettingsError(f"{path}: kv_cache_mb = {values['kv_cache_mb']} must be 0 (keep none) or more; fix or "
                            "delete that line")
    if values.get("kv_type", "") not in ("", *KV_TYPES):
        raise SettingsError(f"{path}: kv_type = {values['kv_type']!r} must be one of {', '.join(KV_TYPES)}; fix or "
                            "delete that line")
    if "keys" in values and not all(isinstance(v, str) for v in values["keys"].values()):
        raise SettingsError(f"{path}: every entry under [keys] must be a string such as \"ctrl+n\"")
    return Settings(**values, extra={k: v for k, v in data.items() if k not in known})


def save_settings(settings: Settings) -> Path:
    """Write config.toml (see write_private_toml)."""
    path = config_path()
    data = {k: v for k, v in asdict(settings).items() if k != "extra" and v is not None}
    write_private_toml(path, {**settings.extra, **data}, "the settings")
    return path


def write_private_toml(path: Path, data: dict, what: str) -> None:
    """Write a TOML file atomically (a crash mid-write leaves the old file), readable by its owner only, like the
    history: config.toml and prompts.toml hold system prompts. A write that fails leaves the old file and no
    temporary one, and says what is full or read-only; `what` names what is left unchanged."""
    tmp = path.with_suffix(".toml.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with open(fd, "w", encoding="utf-8") as f:
                f.write(tomli_w.dumps(data))
            os.chmod(tmp, 0o600)  # an older tmp file keeps its mode through O_CREAT
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        why = why_unwritable(path.parent, e.errno) or e.strerror or str(e)
        raise SettingsError(f"cannot save {path}: {why}; {what} there are unchanged") from None
