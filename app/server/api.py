"""The OpenAI-compatible routes of `trit serve`, and their shapes: /v1/chat/completions (streamed as server-sent
events in OpenAI's chunk format, or whole), /v1/models, /health. Errors are always OpenAI's
{"error": {"message", "type", "param", "code"}}, so that every client raises its own exception for them.

Settings the request leaves out take the model's own defaults (generation_config.json), as Ollama does; fields
this server does not know are ignored, as OpenAI clients send many; a known field of the wrong type is a 400 that
names it.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
import uuid

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from trit.engine import ChatResult, InputError, Piece
from trit.engine.errors import ContextLengthError, one_line

from .security import error_body
from .worker import Busy, EngineWorker, Job

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4  # as OpenAI
RETRY_AFTER_S = "1"


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code, self.headers = status, type_, param, code, headers or {}

    def response(self) -> Response:
        return Response(error_body(str(self), self.type, self.code, self.param), self.status,
                        {**self.headers}, media_type="application/json")


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, "server_error", code="service_unavailable", headers={"Retry-After": RETRY_AFTER_S})


# ---- the request --------------------------------------------------------------------------------------------------
def _number(body: dict, name: str, low: float, high: float):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            isinstance(value, float) and not math.isfinite(value):  # an int of any size compares, never converts
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)[:40]}", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {str(value)[:40]}", param=name)
    return value


def _integer(body: dict, name: str, low: int, high: int = 2**63 - 1):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {json.dumps(value)[:40]}", param=name)
    if not low <= value <= high:  # an int64, as OpenAI's API takes
        raise ApiError(400, f"{name} must be between {low} and {high}", param=name)
    return value


def _text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text ones can be read here."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}.content[{i}] is a {kind!s} part: this model reads text parts only",
                               param=f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def parse_messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", param=where)
        role = ROLES.get(m.get("role"))
        if role is None:
            raise ApiError(400, f"{where}.role must be one of system, user, assistant, got "
                                f"{json.dumps(m.get('role'))[:40]}", param=f"{where}.role")
        out.append({"role": role, "content": _text(m.get("content"), where) if m.get("content") is not None or
                    role != "assistant" else ""})
    return out


def parse_request(body, served: str) -> tuple[list[dict], dict, bool, bool]:
    """(messages, sampling overrides, stream, include usage in the stream)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, f"model must name the served model ({served})", param="model")
    if model != served:
        raise ApiError(404, f"The model `{model}` does not exist: this server serves `{served}`", param="model",
                       code="model_not_found")
    messages = parse_messages(body.get("messages"))
    n = _integer(body, "n", 1)
    if n is not None and n != 1:
        raise ApiError(400, "n must be 1: this server gives one answer per request", param="n")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or
                                not isinstance(options.get("include_usage", False), bool)):
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}", param="stream_options")
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
            raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOP} non-empty strings", param="stop")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    overrides = {"temperature": _number(body, "temperature", 0, 2), "top_p": _number(body, "top_p", 0, 1),
                 "max_tokens": max_tokens, "seed": _integer(body, "seed", 0), "stop": tuple(stop) if stop else None}
    include_usage = bool(stream and options and options.get("include_usage"))
    return messages, {k: v for k, v in overrides.items() if v is not None}, bool(stream), include_usage


# ---- the answer ---------------------------------------------------------------------------------------------------
FINISH = {"stop": "stop", "stop_string": "stop", "length": "length"}


def usage(result: ChatResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.generated_tokens,
            "total_tokens": result.prompt_tokens + result.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": result.reused_tokens}}


def engine_error(e: BaseException) -> ApiError:
    if isinstance(e, ContextLengthError):
        return ApiError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, InputError):  # a sampling setting out of the engine's range
        name = str(e).split(" ", 1)[0]
        return ApiError(400, str(e), param=name if name.isidentifier() else None)
    return ApiError(500, f"the model failed: {one_line(e)}", "server_error")


class RequestLog:
    """One line on stderr per request, written when both the HTTP response and the engine's reply have ended (a
    client that left does not wait for the engine to notice): method, path, status, tokens, finish, seconds."""

    def __init__(self, method: str, path: str, verbose: bool):
        self.method, self.path, self.verbose = method, path, verbose
        self.start = time.perf_counter()
        self.status: int | None = None
        self.result: ChatResult | None = None
        self.engine_running = False
        self.prompt = ""  # the last message, shown with --verbose only
        self._lock = threading.Lock()

    def http_done(self, status: int) -> None:
        with self._lock:
            self.status = status
            if self.engine_running:
                return
        self._write()

    def engine_done(self, result: ChatResult | None) -> None:
        with self._lock:
            self.result, self.engine_running = result, False
            if self.status is None:
                return
        self._write()

    def _write(self) -> None:
        line = f"trit serve: {self.method} {self.path} {self.status}"
        r = self.result
        if r is not None:
            line += (f" prompt={r.prompt_tokens} cached={r.reused_tokens} generated={r.generated_tokens} "
                     f"finish={r.finish_reason}")
        line += f" {time.perf_counter() - self.start:.3f}s"
        if self.verbose and self.prompt:
            line += f" prompt_text={json.dumps(self.prompt, ensure_ascii=False)}"
        try:
            print(line, file=sys.stderr, flush=True)
        except OSError:
            pass


class AccessLog:
    """ASGI middleware, outermost: gives each request its RequestLog (scope["state"]["log"]) and its status."""

    def __init__(self, app, verbose: bool = False):
        self.app, self.verbose = app, verbose

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        log = RequestLog(scope["method"], scope["path"], self.verbose)
        scope.setdefault("state", {})["log"] = log
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            log.http_done(status)


async def _until_disconnect(request: Request, cancel) -> None:
    """Waits for the client to go away (the body is read already) and cancels its reply."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


async def _next_event(job: Job, request: Request):
    """The engine's next event, or None when the client left first (its reply is cancelled then)."""
    event = None
    async with anyio.create_task_group() as tg:
        async def watch():
            await _until_disconnect(request, job.cancel)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        event = await job.events.get()
        tg.cancel_scope.cancel()
    return event


def build_app(worker: EngineWorker, verbose: bool = False) -> Starlette:
    def served() -> str:
        if worker.state == "failed":
            raise unavailable(f"the model could not load: {worker.error}")
        if worker.state != "ready":
            raise unavailable("the model is still loading: try again in a moment")
        return worker.name_served

    async def health(request: Request) -> Response:
        try:
            name = served()
        except ApiError as e:
            return e.response()
        return JSONResponse({"status": "ok", "model": name, "waiting": worker.waiting})

    async def models(request: Request) -> Response:
        try:
            name = served()
        except ApiError as e:
            return e.response()
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": int(worker.loaded_at), "owned_by": "trit"}]})

    async def chat_completions(request: Request) -> Response:
        log: RequestLog = request.scope["state"]["log"]
        try:
            name = served()
            try:
                body = json.loads(await request.body())
            except ValueError as e:  # UnicodeDecodeError too
                raise ApiError(400, f"the body is not valid JSON: {e}") from None
            except RecursionError:  # a small body can nest arrays deeper than the parser's stack
                raise ApiError(400, "the body's JSON is nested too deeply to read") from None
            messages, overrides, stream, include_usage = parse_request(body, name)
            log.prompt = messages[-1]["content"]
            job = Job(messages, overrides, asyncio.get_running_loop(), on_result=log.engine_done)
            log.engine_running = True
            try:
                worker.submit(job)
            except Busy as e:
                log.engine_running = False
                raise unavailable(f"the server is busy: {e}") from None
            first = await _next_event(job, request)
            if first is None:
                return Response(status_code=499)  # nobody reads it: the client is gone
            if isinstance(first, BaseException):
                raise engine_error(first)
        except ApiError as e:
            return e.response()
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            return StreamingResponse(_chunks(job, first, ident, created, name, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces = []
        event = first
        while not isinstance(event, (ChatResult, BaseException)):
            pieces.append(event.text)
            event = await _next_event(job, request)
            if event is None:
                return Response(status_code=499)
        if isinstance(event, BaseException):
            return engine_error(event).response()
        if event.finish_reason == "cancelled":
            return unavailable("the server is shutting down: the reply was stopped").response()
        return JSONResponse({
            "id": ident, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": event.text, "refusal": None},
                         "logprobs": None, "finish_reason": FINISH[event.finish_reason]}],
            "usage": usage(event)})

    async def not_found(request: Request, exc) -> Response:
        return ApiError(404, f"no route {request.method} {request.url.path}: this server has /v1/chat/completions, "
                             "/v1/models and /health", code="not_found").response()

    async def not_allowed(request: Request, exc) -> Response:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                        code="method_not_allowed").response()

    async def failed(request: Request, exc) -> Response:
        return ApiError(500, f"the server failed: {one_line(exc)}", "server_error").response()

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], exception_handlers={404: not_found, 405: not_allowed, 500: failed})


async def _chunks(job: Job, first, ident: str, created: int, model: str, include_usage: bool):
    """OpenAI's chunk stream: the role, the text as it comes, the finish reason, the usage when asked, [DONE]. When
    the client leaves, Starlette cancels this generator: the reply is cancelled at its next token."""
    def chunk(delta: dict, finish=None) -> str:
        data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        event = first
        while isinstance(event, Piece):
            yield chunk({"content": event.text})
            event = await job.events.get()
        if isinstance(event, BaseException) or event.finish_reason == "cancelled":
            e = engine_error(event) if isinstance(event, BaseException) else \
                unavailable("the server is shutting down: the reply was stopped")
            yield f"data: {error_body(str(e), e.type, e.code, e.param).decode()}\n\n"
            return
        yield chunk({}, FINISH[event.finish_reason])
        if include_usage:
            yield f"data: {json.dumps({'id': ident, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage(event)})}\n\n"  # noqa: E501
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # a no-op once the reply has ended
