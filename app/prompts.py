"""System prompts saved by name (llm's templates, Ollama's SYSTEM): `prompts.toml` in the config folder, one key per
name, readable by its owner only. `trit prompts` manages them; `trit ask -t NAME` and `trit chat -t NAME` use one;
the chat app can offer saved_prompts() and take saved_prompt(name).

    pirate = "Answer as a pirate would."
    terse = \"\"\"
    Answer in one line.
    No lists.\"\"\"
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from .paths import paths
from .settings import SettingsError, write_private_toml

PROMPTS_FILE = "prompts.toml"
# a name is typed after -t and shown in lists: no spaces, no quoting, nothing a shell would read
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PromptError(SettingsError):
    """A saved prompt that is not there, a bad name, or a prompts.toml that cannot be read: one line."""


def prompts_path() -> Path:
    return paths().config / PROMPTS_FILE


def saved_prompts() -> dict[str, str]:
    """Every saved prompt, by name, in name order; {} when none was ever saved."""
    path = prompts_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PromptError(f"{path}: not valid TOML ({e}); fix it, or delete it to start again") from None
    for name, text in data.items():
        if not isinstance(text, str):
            raise PromptError(f"{path}: {name} is not text (a quoted string); fix or delete that line")
    return dict(sorted(data.items()))


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise PromptError(f"{name!r} cannot be a prompt's name: use up to 64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name


def saved_prompt(name: str) -> str:
    """The text saved as `name`; an unknown name says which names there are."""
    prompts = saved_prompts()
    if name not in prompts:
        there = f"saved: {', '.join(prompts)}" if prompts else \
            'none is saved yet: trit prompts save NAME "You are …"'
        raise PromptError(f"no saved prompt {name!r}; {there}")
    return prompts[name]


def save_prompt(name: str, text: str) -> bool:
    """Save `text` as `name`, replacing what was saved under it; True when it replaced one."""
    check_name(name)
    text = text.strip()
    if not text:
        raise PromptError(f"the prompt for {name!r} is empty: give its text, or `trit prompts rm {name}` to remove it")
    prompts = saved_prompts()
    replaced = name in prompts
    prompts[name] = text
    write_private_toml(prompts_path(), dict(sorted(prompts.items())), "the saved prompts")
    return replaced


def remove_prompt(name: str) -> None:
    saved_prompt(name)  # an unknown name: one line with the names there are
    prompts = saved_prompts()
    del prompts[name]
    write_private_toml(prompts_path(), prompts, "the saved prompts")
