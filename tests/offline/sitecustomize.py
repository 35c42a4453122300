# Put on a child process's PYTHONPATH by tests/network_guard.offline_env(): the child is as offline as the tests.
import os

if os.environ.get("TRIT_TEST_OFFLINE") == "1":
    import network_guard

    network_guard.install()
