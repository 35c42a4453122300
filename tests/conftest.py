"""Shared fixtures, and the guard that keeps every test offline."""

from __future__ import annotations

import json
import os
import signal

import network_guard
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# A shell starts a background job with SIGINT ignored, and a child inherits an ignored signal: the tests that press
# Ctrl-C in `trit pull` or `trit chat` would then wait for an exit that never comes. The children get Python's default.
if hasattr(signal, "SIGINT") and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Any connection to a non-loopback address fails the test that made it."""
    network_guard.install()
    yield
    network_guard.uninstall()


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """make_model(preset="tiny", seed=0, linear_class=..., **config) -> folder of a synthetic packed model,
    written once per distinct set of arguments in the session."""
    from trit.engine.tools import synthetic

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
