"""The engine behind `trit serve`: one thread that loads the model, then runs one reply at a time from a bounded FIFO
queue, so that the event loop never waits on the engine (the native forward pass releases the GIL).

    worker = EngineWorker(load, max_queued=32)   # load() -> (name, model), called on the worker thread
    worker.start()
    job = Job(messages, overrides, loop)         # overrides: SamplingParams fields; max_tokens None = what fits
    worker.submit(job)                           # Busy when the queue is full
    event = await job.events.get()               # Piece ..., then a ChatResult, or an exception
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Callable

from trit.engine import ChatResult
from trit.engine.errors import ContextLengthError


class Busy(Exception):
    """The queue of waiting requests is full."""


class Job:
    """One request's reply: what to run, its cancel switch, and the events the engine sends back to the loop."""

    def __init__(self, messages: list[dict], overrides: dict, loop: asyncio.AbstractEventLoop,
                 on_result: Callable[[ChatResult], None] | None = None):
        self.messages, self.overrides, self.loop = messages, overrides, loop
        self.cancel = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()
        self.on_result = on_result  # the request's log line, from the worker thread

    def emit(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits for this
            pass


class EngineWorker(threading.Thread):
    def __init__(self, load: Callable[[], tuple[str, object]], max_queued: int = 32, history=None,
                 on_failure: Callable[[str], None] | None = None):
        super().__init__(name="trit-engine", daemon=True)
        self._load, self.history, self.on_failure = load, history, on_failure
        self.max_queued = max_queued
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[Job] = []  # queued and running, oldest first
        self.state = "loading"  # then "ready", or "failed" with `error`
        self.error = ""
        self.name_served, self.model, self.loaded_at = "", None, 0.0
        self._stopping = False

    # ---- the event loop's side ------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stopping:
                raise Busy("the server is shutting down")
            if len(self._pending) >= self.max_queued:
                raise Busy(f"{len(self._pending)} requests are already waiting for the model")
            self._pending.append(job)
        self._queue.put(job)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)

    def cancel_all(self) -> None:
        """Shutdown: every queued and running reply stops at its next token; nothing new is taken."""
        with self._lock:
            self._stopping = True
            for job in self._pending:
                job.cancel.set()
        self._queue.put(None)

    # ---- the worker thread ----------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.name_served, self.model = self._load()
            self.loaded_at = time.time()
            self.state = "ready"
        except Exception as e:  # said in one line by the command; requests keep getting 503
            from trit.engine.errors import one_line

            self.error, self.state = one_line(e), "failed"
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        while True:
            job = self._queue.get()
            if job is None:
                break
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._pending.remove(job)
        if self.history is not None:
            self.history.close()

    def _run(self, job: Job) -> None:
        result = None
        try:
            if job.cancel.is_set():  # the client left while it waited
                result = ChatResult("", "cancelled", 0, 0, 0)
            else:
                messages, params = job.messages, self._params(job)
                for event in self.model.chat(messages, params, job.cancel, keep_all=True):
                    if isinstance(event, ChatResult):
                        result = event
                    else:
                        job.emit(event)
                if self.history is not None and result.finish_reason != "cancelled":
                    self.history.record(self.name_served, messages, result)
        except Exception as e:  # a bad request found by the engine (context, sampling) or a failure: said to the client
            job.emit(e)
            return
        finally:
            if job.on_result is not None:
                job.on_result(result)
        job.emit(result)

    def _params(self, job: Job):
        """The model's defaults with the request's settings; max_tokens must fit beside the whole prompt, as the
        OpenAI API does: too long is refused, never cut short. Without max_tokens the reply may take what is left."""
        overrides = dict(job.overrides)
        n_ctx = self.model.n_ctx_max
        prompt = len(self.model.tokenizer.encode_chat(job.messages))
        asked = overrides.get("max_tokens")
        if asked is None:
            default = self.model.default_params().max_tokens
            overrides["max_tokens"] = max(1, min(default, n_ctx - prompt))
        if prompt + overrides["max_tokens"] > n_ctx:
            raise ContextLengthError(
                f"this model's context is {n_ctx} tokens; the messages take {prompt}"
                + (f" and max_tokens asks for {asked} more" if asked is not None else ", with no room for a reply")
                + ": shorten the messages" + (" or lower max_tokens" if asked is not None else ""))
        return self.model.default_params(**overrides)

