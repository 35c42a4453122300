"""Copying text out of the app: the system clipboard through the usual command-line tool when this session has a
display, else the terminal's own clipboard (OSC 52), which also works over ssh in terminals that allow it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def system_command() -> list[str] | None:
    """The command that puts stdin on the system clipboard, or None when there is none to reach (ssh, no display)."""
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"):
        return None  # the tools would fill the remote machine's clipboard, not the one in front of the person
    candidates: list[list[str]] = []
    if sys.platform == "darwin":
        candidates.append(["pbcopy"])
    if os.environ.get("WAYLAND_DISPLAY"):
        candidates.append(["wl-copy"])
    if os.environ.get("DISPLAY"):
        candidates += [["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    if sys.platform == "win32":
        candidates.append(["clip.exe"])
    elif os.environ.get("WSL_DISTRO_NAME"):
        candidates.append(["clip.exe"])
    for command in candidates:
        if shutil.which(command[0]):
            return command
    return None


def copy(app, text: str) -> str:
    """Copy text; returns where it went, for the notification. The app's own clipboard (what Ctrl+V pastes in the
    message box) and OSC 52 are always set too: harmless where the system tool worked, the only way where it did not."""
    app.copy_to_clipboard(text)
    command = system_command()
    if command is not None:
        try:
            subprocess.run(command, input=text.encode("utf-8"), check=True, timeout=3,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return f"the clipboard ({command[0]})"
        except (OSError, subprocess.SubprocessError):
            pass
    return "the terminal's clipboard"
