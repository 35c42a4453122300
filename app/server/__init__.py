"""`trit serve`: one warm model behind an OpenAI-compatible HTTP API on this machine.

    api.py       the routes and OpenAI's request and response shapes
    security.py  what every request passes first (Host, Origin, API key, content type, body size)
    worker.py    the engine thread and its queue
    history.py   --log: conversations kept in the history

uvicorn runs it (h11 and the asyncio loop, both pure Python and already installed with httpx2; no compiled extras):
the socket is bound first, the model loads on the engine thread while /health answers 503, and Ctrl-C or SIGTERM
cancels the replies in flight and ends with 128 + the signal's number, as `trit ask` does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from trit.engine import EngineError

API_KEY_ENV = "TRIT_API_KEY"
MAX_QUEUED = 32  # requests waiting for the model; past it 503 with Retry-After
GRACE_S = 5  # after a signal, how long the cancelled replies get to end their streams


@dataclass
class ServeOptions:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    cors: tuple[str, ...] = ()
    log: bool = False
    verbose: bool = False
    threads: int | None = None
    kv: str | None = None  # the KV cache's type; None: config.toml's


def say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so that clients get 503 rather than a refused connection."""
    address = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a name: resolved by bind
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise EngineError(f"cannot listen on {host}:{port}: {e.strerror or e} — is another server there? "
                          "Give another --port") from None
    return sock


def serve(options: ServeOptions) -> int:
    """Runs until Ctrl-C or SIGTERM; returns the exit status (128 + the signal's number)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from trit import engine

    from ..service import choose_model
    from ..settings import load_settings
    from .api import AccessLog, build_app
    from .history import ServedHistory
    from .security import Guard, is_loopback
    from .worker import EngineWorker

    if not is_loopback(options.host) and not options.api_key:
        raise EngineError(f"--host {options.host} opens the server to other machines: give an API key too "
                          f"(--api-key KEY, or {API_KEY_ENV} in the environment)")
    settings = load_settings()
    choice = choose_model(options.model, settings)  # an unknown name: one line, before anything is bound
    name = Path(choice.name).name if choice.name == str(choice.path) else choice.name
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]

    server: uvicorn.Server | None = None
    caught: list[int] = []

    def failed(message: str) -> None:  # said once the server has stopped
        if server is not None:
            server.should_exit = True

    def load():
        model = engine.load(choice.path, threads=options.threads, kv=options.kv or settings.kv_type or None)
        say(f"trit serve: {name} is ready")
        return name, model

    worker = EngineWorker(load, MAX_QUEUED, ServedHistory() if options.log else None, on_failure=failed)
    app = AccessLog(Guard(build_app(worker, options.verbose), host=options.host, port=port,
                          api_key=options.api_key, cors=options.cors), options.verbose)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            def stop(signum, frame):
                if caught and signum == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: at once
                caught.append(signum)
                # not here: the handler may have interrupted this very thread inside the worker's lock
                threading.Thread(target=worker.cancel_all, daemon=True).start()
                self.should_exit = True

            names = ("SIGINT", "SIGTERM", "SIGHUP")
            previous = {sig: signal.signal(sig, stop) for sig in (getattr(signal, n, None) for n in names) if sig}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, http=H11Protocol, loop="asyncio", lifespan="off", ws="none", log_config=None,
                            log_level="warning", access_log=False, server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=GRACE_S)
    server = Server(config)
    shown = f"[{options.host}]" if ":" in options.host and not options.host.startswith("[") else options.host
    say(f"trit serve: {name} at http://{shown}:{port}/v1 (loading the model; Ctrl-C stops)")
    worker.start()
    try:
        server.run(sockets=[sock])
    finally:
        worker.cancel_all()
        worker.join(timeout=30)
        sock.close()
    if worker.state == "failed":
        raise EngineError(f"the model could not load: {worker.error}")
    if caught:
        say("trit: stopped")
        return 128 + caught[0]
    return 0
