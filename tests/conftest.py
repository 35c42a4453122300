"""Shared fixtures, and the guard that keeps every test offline."""

from __future__ import annotations

import ipaddress
import json
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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


_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _guarded(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise AssertionError(f"network access outside 127.0.0.1 attempted: {address!r} — Trit must stay offline")
        return real(self, address)

    return connect


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Any connection to a non-loopback address fails the test that made it."""
    socket.socket.connect = _guarded(_real_connect)
    socket.socket.connect_ex = _guarded(_real_connect_ex)
    yield
    socket.socket.connect, socket.socket.connect_ex = _real_connect, _real_connect_ex


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """make_model(preset="tiny", seed=0, linear_class=..., **config) -> folder of a synthetic packed model,
    written once per distinct set of arguments in the session."""
    from engine import synthetic

    cache: dict[str, object] = {}

    def make(preset: str = "tiny", **kwargs):
        key = json.dumps([preset, kwargs], sort_keys=True)
        if key not in cache:
            folder = tmp_path_factory.mktemp("model")
            cache[key] = synthetic.write_model(folder, preset, overwrite=True, **kwargs)
        return cache[key]

    return make


@pytest.fixture
def tiny_model(make_model):
    return make_model("tiny", seed=0)
