"""A second Trit process for tests/test_store.py: adds N messages to a shared conversation and to one of its own.

usage: python tests/store_writer.py DBPATH N TAG SHARED_CONVERSATION_ID
Prints "ready" once the store is open, then waits for a line on stdin, so two writers start writing together."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trit.app.store import Store  # noqa: E402


def main() -> None:
    path, count, tag, shared = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    with Store(path) as store:
        own = store.create_conversation(model=tag).id
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            store.add_message(shared if i % 2 == 0 else own, "user", f"{tag} message {i}")
    print(own, flush=True)


if __name__ == "__main__":
    main()
