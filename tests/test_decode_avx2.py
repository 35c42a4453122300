"""Decoding when other programs hold the cores (issue 20): a worker thread that is descheduled no longer holds up the
projections of a token, which the calling thread then finishes alone (trit_pool_run_open; the C test
native/tests/test_threadpool.c checks the pool itself). Whoever computes a piece, the reply is the same."""

from __future__ import annotations

import json
import os

import pytest
from test_hostile_input import home, trit  # noqa: F401  (fixtures)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_two_threads_sharing_one_cpu_reply_as_one_thread(trit):  # noqa: F811
    ask = ("ask", "--model", "demo", "--seed", "3", "--max-tokens", "40", "--json", "Tell me about rivers")
    alone = trit(*ask, "--threads", "1")
    assert alone.returncode == 0, alone.stderr.decode()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # the child and its worker inherit one CPU: the worker is often late
    try:
        shared = trit(*ask, "--threads", "2")
    finally:
        os.sched_setaffinity(0, before)
    assert shared.returncode == 0, shared.stderr.decode()
    reply, expected = json.loads(shared.stdout), json.loads(alone.stdout)
    assert reply["content"] == expected["content"] and reply["content"]
