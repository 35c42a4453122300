"""The guard that keeps Trit offline under test: a connection to anything but loopback raises.

The test process installs it from conftest; processes the tests start (the real `trit` command) install it through
tests/offline/sitecustomize.py, which `offline_env()` puts on their PYTHONPATH."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a name that would need a DNS lookup


def _guarded(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise AssertionError(f"network access outside 127.0.0.1 attempted: {address!r} — Trit must stay offline")
        return real(self, address)

    return connect


def install() -> None:
    socket.socket.connect = _guarded(_real_connect)
    socket.socket.connect_ex = _guarded(_real_connect_ex)


def uninstall() -> None:
    socket.socket.connect, socket.socket.connect_ex = _real_connect, _real_connect_ex


def offline_env(env: dict | None = None) -> dict:
    """An environment for a child Python process that installs the guard at start-up."""
    env = dict(os.environ if env is None else env)
    here = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here / "offline"), str(here)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["TRIT_TEST_OFFLINE"] = "1"
    return env
