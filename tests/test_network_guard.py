"""The offline guard itself: a test that could never fail would prove nothing."""

import socket

import pytest


def test_connection_to_outside_address_fails():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(AssertionError, match="network access"):
            s.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed, and never contacted
    finally:
        s.close()


def test_loopback_is_allowed():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.connect(server.getsockname())
    finally:
        client.close()
        server.close()


def test_processes_the_tests_start_are_guarded_too():
    import subprocess
    import sys

    from network_guard import offline_env

    code = "import socket; socket.create_connection(('192.0.2.1', 443), timeout=1)"
    r = subprocess.run([sys.executable, "-c", code], env=offline_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Trit must stay offline" in r.stderr
