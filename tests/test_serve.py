"""`trit serve` (issue 18) as other tools meet it: the installed command started on a free loopback port, spoken to
by clients no one here wrote (the official `openai` package, simonw's `llm` CLI) and, for the security cases, by raw
HTTP; the real engine on the demo model (a small synthetic model where a reply must run long)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from network_guard import offline_env
from test_cli import trit_command
from test_hostile_input import home, one_line, trit  # noqa: F401 (the fixtures `trit` needs)

HI = [{"role": "user", "content": "Hello there"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running `trit serve`: its port, its stderr lines as they come, and how it ended."""

    def __init__(self, folder: Path, cwd: Path, *args: str, env: dict | None = None):
        self.port, self.home = free_port(), folder
        self.proc = subprocess.Popen(trit_command() + ["serve", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                     env=offline_env({**os.environ, "TRIT_HOME": str(folder), **(env or {})}))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_ready()

    def _read(self):
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "\n".join(self.lines)
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("trit serve did not become ready:\n" + "\n".join(self.lines))

    def log_lines(self, path: str = "/v1/chat/completions") -> list[str]:
        return [line for line in self.lines if f" {path} " in line]

    def wait_log(self, predicate, since: int = 0, timeout: float = 30) -> str:
        """The last stderr line from line `since` on that predicate accepts, waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines[since:] if predicate(line)]
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError("no such log line:\n" + "\n".join(self.lines))

    def stop(self, signum=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            self.proc.kill()
        self._reader.join(timeout=5)
        return code

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
    """(status, headers, parsed JSON or raw bytes) of one raw HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers={k: v for k, v in hdrs.items() if v is not None})
        r = conn.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
    finally:
        conn.close()


def chat_body(**fields) -> dict:
    return {"model": "demo", "messages": HI, "max_tokens": 8, "temperature": 0, **fields}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    served = Served(folder / "home", folder, "--model", "demo")
    yield served
    assert served.stop() == 143
    assert not any("Traceback" in line or "Exception" in line for line in served.lines), "\n".join(served.lines)


# ---- the openai package ------------------------------------------------------------------------------------------
def test_openai_answers_whole_and_streamed_the_same(server):
    client = server.client()
    whole = client.chat.completions.create(model="demo", messages=HI, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-") and whole.model == "demo"
    text = whole.choices[0].message.content
    assert text and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="demo", messages=HI, max_tokens=12, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the same prompt again: all of it but the last token is in the cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens - 1


def test_openai_stream_without_usage_has_none_and_ends_with_done(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat_body(stream=True)),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    events = [e for e in r.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])


def test_content_as_a_list_of_text_parts_and_unknown_fields(server):
    client = server.client()
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    r = client.chat.completions.create(model="demo", messages=parts, max_tokens=4, temperature=0, seed=3,
                                       stop=["\n\n", "###"], top_p=0.5, frequency_penalty=0, user="someone",
                                       extra_body={"an_unknown_field": {"nested": True}})
    assert r.choices[0].message.content is not None


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["demo"]
    status, _, body = request(server.port, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "demo"


@pytest.mark.parametrize("kwargs, error, param, code", [
    (dict(model="llama3"), openai.NotFoundError, "model", "model_not_found"),
    (dict(n=2), openai.BadRequestError, "n", None),
    (dict(temperature="hot"), openai.BadRequestError, "temperature", None),
    (dict(temperature=3), openai.BadRequestError, "temperature", None),
    (dict(max_tokens=0), openai.BadRequestError, "max_tokens", None),
    (dict(stop=[1]), openai.BadRequestError, "stop", None),
    (dict(messages=[{"role": "tool", "content": "x"}]), openai.BadRequestError, "messages[0].role", None),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     openai.BadRequestError, "messages[0].content", None),
    (dict(max_tokens=5000), openai.BadRequestError, "messages", "context_length_exceeded"),
    (dict(messages=[{"role": "user", "content": "word " * 5000}]), openai.BadRequestError, "messages",
     "context_length_exceeded"),
])
def test_openai_errors_are_the_packages_own_exceptions(server, kwargs, error, param, code):
    args = {"model": "demo", "messages": HI, "max_tokens": 4, **kwargs}
    with pytest.raises(error) as e:
        server.client().chat.completions.create(**args)
    body = e.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["param"] == param, body
    assert body["code"] == code
    if kwargs.get("model"):
        assert "demo" in body["message"]  # says what is served


@pytest.mark.parametrize("body, words", [
    (b"[" * 200_000 + b"]" * 200_000, "nested"),
    (b'{"model": "demo", "messages": "caf\xe9"}', "JSON"),
    (b'[1, 2]', "object"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}', "max_tokens"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 4000 + b"}",
     "max_tokens"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 300 + b"}", "seed"),
    (b'{"model": "demo", "messages": {"role": "user"}}', "messages"),
    (b'{"model": ["demo"], "messages": []}', "model"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "top_p": ' + b"9" * 400 + b"}", "top_p"),
], ids=["deep", "latin1", "list", "nan", "inf", "huge-int", "huge-seed", "messages-object", "model-list",
        "huge-top-p"])
def test_hostile_bodies_are_a_400_naming_what_is_wrong(server, body, words):
    """Issue 17's bar for the API: one clear message, the right status, the server unharmed."""
    status, _, reply = request(server.port, "POST", "/v1/chat/completions", body)
    assert status == 400 and words in reply["error"]["message"], reply
    assert request(server.port, "GET", "/health")[0] == 200


def test_a_long_conversation_is_refused_never_cut_short(server):
    """Today's Chat.fit drops the oldest turns; through the API that would answer a conversation the client did not
    send. The whole conversation fits or it is a 400."""
    turns = []
    for i in range(40):
        turns += [{"role": "user", "content": f"question {i} " + "lorem ipsum " * 40},
                  {"role": "assistant", "content": "answer " * 40}]
    turns.append({"role": "user", "content": "and the last one?"})
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="demo", messages=turns, max_tokens=8)
    assert e.value.body["code"] == "context_length_exceeded" and "4096" in e.value.body["message"]


def test_turn_two_reuses_the_cache_and_answers_as_a_fresh_server(server, tmp_path):
    client = server.client()
    first = client.chat.completions.create(model="demo", messages=HI, max_tokens=16, temperature=0)
    turn2 = HI + [{"role": "assistant", "content": first.choices[0].message.content},
                  {"role": "user", "content": "Tell me more."}]
    second = client.chat.completions.create(model="demo", messages=turn2, max_tokens=16, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    fresh = Served(tmp_path / "home", tmp_path, "--model", "demo")
    try:
        alone = fresh.client().chat.completions.create(model="demo", messages=turn2, max_tokens=16, temperature=0)
    finally:
        fresh.stop()
    assert alone.usage.prompt_tokens_details.cached_tokens == 0
    # the same text; the prompt's count may differ by a token: the cache keeps the reply's tokens as generated,
    # where a fresh server tokenizes its text (engine/runtime/chat.py)
    assert alone.choices[0].message.content == second.choices[0].message.content


# ---- llm ----------------------------------------------------------------------------------------------------------
def test_llm_cli_talks_to_it(server, tmp_path):
    user = tmp_path / "llm"
    user.mkdir()
    (user / "extra-openai-models.yaml").write_text(
        f"- model_id: trit-demo\n  model_name: demo\n  api_base: \"{server.url}\"\n")
    env = offline_env({**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}, "LLM_USER_PATH": str(user)})
    for stream in ([], ["--no-stream"]):
        r = subprocess.run([sys.executable, "-m", "llm", "-m", "trit-demo", *stream, "-o", "max_tokens", "8",
                            "-o", "temperature", "0", "Hello there"], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip(), r.stderr
    r = subprocess.run([sys.executable, "-m", "llm", "-m", "trit-demo", "-o", "max_tokens", "9999", "Hi"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "context" in r.stderr, r.stderr


# ---- security -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1",
                                  "localhost.evil.example:{port}"])
def test_a_foreign_host_header_is_refused(server, host):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends its own name."""
    since = len(server.lines)
    status, _, body = request(server.port, "POST", "/v1/chat/completions", chat_body(),
                              {"Host": host.format(port=server.port)})
    assert status == 403 and body["error"]["code"] == "forbidden_host"
    status, _, _ = request(server.port, "GET", "/v1/models", headers={"Host": host.format(port=server.port)})
    assert status == 403
    line = server.wait_log(lambda line: " 403 " in line and "/v1/chat/completions" in line, since)
    assert "generated=" not in line


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_the_servers_own_names_are_accepted(server, host):
    assert request(server.port, "GET", "/v1/models", headers={"Host": host.format(port=server.port)})[0] == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json"])
def test_a_foreign_origin_is_refused_before_any_work(server, content_type):
    """A cross-site "simple" POST (text/plain, no preflight) reaches a server whatever CORS says afterwards: it must
    not run a generation."""
    since = len(server.lines)
    status, headers, body = request(server.port, "POST", "/v1/chat/completions", chat_body(),
                                    {"Origin": "https://evil.example", "Content-Type": content_type})
    assert status == 403 and body["error"]["code"] == "forbidden_origin"
    assert not any(k.startswith("access-control-") for k in headers)
    line = server.wait_log(lambda line: " 403 " in line, since)
    assert "generated=" not in line


def test_posts_must_be_json(server):
    status, _, body = request(server.port, "POST", "/v1/chat/completions", chat_body(),
                              {"Content-Type": "text/plain"})
    assert status == 415 and body["error"]["type"] == "invalid_request_error"
    status, _, body = request(server.port, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]


def test_an_oversized_body_is_refused_with_and_without_content_length(server):
    big = chat_body(messages=[{"role": "user", "content": "x" * (2 << 20)}])
    status, _, body = request(server.port, "POST", "/v1/chat/completions", big)
    assert status == 413 and body["error"]["code"] == "request_too_large"

    def chunks():  # chunked transfer: no Content-Length to refuse it by
        data = json.dumps(big).encode()
        for i in range(0, len(data), 64 << 10):
            yield data[i:i + 64 << 10]

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=chunks(), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while still sending: the server closed the connection, as it should
    finally:
        conn.close()
    assert request(server.port, "GET", "/health")[0] == 200
    assert any(" 413 " in line for line in server.log_lines())


def test_nothing_is_written_to_the_history_without_log(server):
    server.client().chat.completions.create(model="demo", messages=HI, max_tokens=4)
    assert not (server.home / "data" / "history.db").exists() or listed(server.home) == []


def test_the_log_has_one_line_per_request_and_no_prompt_text_unless_verbose(server, tmp_path):
    since = len(server.lines)
    server.client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "tide tables"}],
                                            max_tokens=4)
    line = server.wait_log(lambda line: "/v1/chat/completions 200" in line, since)
    assert line.startswith("trit serve: POST /v1/chat/completions 200 prompt=") and "generated=" in line
    assert line.endswith("s") and not any("tide tables" in line for line in server.lines)
    verbose = Served(tmp_path / "home", tmp_path, "--model", "demo", "--verbose")
    try:
        verbose.client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "tide tables"}],
                                                 max_tokens=4)
        assert "tide tables" in verbose.wait_log(lambda line: "/v1/chat/completions 200" in line)
    finally:
        verbose.stop()


def listed(folder: Path) -> list:
    r = subprocess.run(trit_command() + ["history", "list", "--json"], capture_output=True, text=True,
                       env=offline_env({**os.environ, "TRIT_HOME": str(folder)}), timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_log_keeps_each_conversation_and_appends_its_follow_ups(tmp_path):
    served = Served(tmp_path / "home", tmp_path, "--model", "demo", "--log")
    try:
        client = served.client()
        system = {"role": "system", "content": "Be brief."}
        first = client.chat.completions.create(model="demo", messages=[system, *HI], max_tokens=6, temperature=0)
        follow = [system, *HI, {"role": "assistant", "content": first.choices[0].message.content},
                  {"role": "user", "content": "And then?"}]
        client.chat.completions.create(model="demo", messages=follow, max_tokens=6, temperature=0)
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Another"}], max_tokens=4)
    finally:
        assert served.stop() == 143
    kept = listed(tmp_path / "home")
    assert sorted(c["message_count"] for c in kept) == [2, 4]
    r = subprocess.run(trit_command() + ["history", "show", str(max(kept, key=lambda c: c["message_count"])["id"]),
                                         "--json"], capture_output=True, text=True, timeout=60,
                       env=offline_env({**os.environ, "TRIT_HOME": str(tmp_path / "home")}))
    stored = json.loads(r.stdout)
    assert stored["conversation"]["system"] == "Be brief."
    assert [m["content"] for m in stored["messages"]][:3] == [c["content"] for c in follow[1:]]


def test_an_api_key_is_required_when_given(tmp_path):
    served = Served(tmp_path / "home", tmp_path, "--model", "demo", "--cors", "http://localhost:3000",
                    env={"TRIT_API_KEY": "s3cret"})
    try:
        assert "s3cret" not in " ".join(served.proc.args)
        with pytest.raises(openai.AuthenticationError) as e:
            served.client(api_key="wrong").chat.completions.create(model="demo", messages=HI, max_tokens=4)
        assert e.value.body["code"] == "invalid_api_key"
        status, _, body = request(served.port, "POST", "/v1/chat/completions", chat_body())
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert request(served.port, "GET", "/v1/models")[0] == 401
        ok = served.client(api_key="s3cret").chat.completions.create(model="demo", messages=HI, max_tokens=4)
        assert ok.choices[0].message.content is not None
        # the origin given with --cors: its preflight and its request get CORS headers
        status, headers, _ = request(served.port, "OPTIONS", "/v1/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type", "Content-Type": None})
        assert status == 204 and headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "authorization" in headers["access-control-allow-headers"].lower()
        status, headers, _ = request(served.port, "POST", "/v1/chat/completions", chat_body(), {
            "Origin": "http://localhost:3000", "Authorization": "Bearer s3cret"})
        assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
        assert request(served.port, "POST", "/v1/chat/completions", chat_body(), {
            "Origin": "http://localhost:3001", "Authorization": "Bearer s3cret"})[0] == 403
    finally:
        served.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_a_non_loopback_host_without_a_key_is_refused_at_start(trit, host):  # noqa: F811
    r = trit("serve", "--model", "demo", "--host", host, "--port", str(free_port()))
    one_line(r, "--api-key", host)


def test_an_unknown_model_and_a_busy_port_are_one_line(trit, server):  # noqa: F811
    one_line(trit("serve", "--model", "no-such-model", "--port", str(free_port())), "no-such-model")
    one_line(trit("serve", "--model", "demo", "--port", str(server.port)), str(server.port), "--port")


def test_a_model_that_cannot_load_is_one_line(trit, tmp_path):  # noqa: F811
    import shutil

    from trit.assets import DEMO_MODEL

    folder = tmp_path / "broken"
    shutil.copytree(DEMO_MODEL, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = trit("serve", "--model", folder, "--port", str(free_port()))
    one_line(r, "model.safetensors")


# ---- concurrency and cancelling -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(make_model, tmp_path_factory):
    """A model whose replies run long (random weights rarely say end-of-turn), slow enough to catch mid-answer."""
    folder = tmp_path_factory.mktemp("slow")
    model = make_model("small", seed=1)
    served = Served(folder / "home", folder, "--model", str(model))
    yield served, Path(model).name
    assert served.stop() == 143
    assert not any("Traceback" in line or "Exception" in line for line in served.lines), "\n".join(served.lines)


def long_body(name: str, **fields) -> dict:
    return {"model": name, "messages": [{"role": "user", "content": "Write at length."}], "max_tokens": 3000,
            "temperature": 0, **fields}


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_cancels_its_reply_and_frees_the_engine(slow_server, stream):
    served, name = slow_server
    since = len(served.lines)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=60)
    body = json.dumps(long_body(name, stream=stream)).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (served.port, len(body)) + body)
    if stream:
        assert sock.recv(256).startswith(b"HTTP/1.1 200")  # the answer has started
    time.sleep(0.3)
    sock.close()
    line = served.wait_log(lambda line: "finish=cancelled" in line, since)
    assert sum("finish=cancelled" in line for line in served.lines[since:]) == 1  # one line per request
    generated = int(line.split("generated=")[1].split()[0])
    assert 0 < generated < 3000, line
    t = time.monotonic()
    r = served.client().chat.completions.create(model=name, messages=HI, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length" and time.monotonic() - t < 30


def test_two_concurrent_clients_are_both_answered(slow_server):
    served, name = slow_server
    results = {}

    def ask(i):
        results[i] = served.client().chat.completions.create(
            model=name, messages=[{"role": "user", "content": f"client {i}"}], max_tokens=40, temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1]
    assert all(r.usage.completion_tokens == 40 for r in results.values())
    assert results[0].id != results[1].id


def test_past_the_queue_bound_a_request_gets_503_with_retry_after(slow_server):
    """32 replies waiting (one running): the next is told to come back, and the queue drains when they leave."""
    served, name = slow_server
    body = json.dumps(long_body(name, stream=True)).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n" \
           b"Content-Length: %d\r\n\r\n" % (served.port, len(body))
    socks = []
    try:
        for _ in range(32):
            socks.append(socket.create_connection(("127.0.0.1", served.port), timeout=60))
            socks[-1].sendall(head + body)
        deadline = time.monotonic() + 30
        while request(served.port, "GET", "/health")[2]["waiting"] < 32:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, headers, error = request(served.port, "POST", "/v1/chat/completions", long_body(name))
        assert status == 503 and headers["retry-after"] == "1", error
        assert error["error"]["code"] == "service_unavailable" and "busy" in error["error"]["message"]
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 30
    while request(served.port, "GET", "/health")[2]["waiting"]:
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.05)
    r = served.client().chat.completions.create(model=name, messages=HI, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_cancels_the_replies_in_flight_and_exits_cleanly(make_model, tmp_path, signum, code):
    model = make_model("small", seed=1)
    served = Served(tmp_path / "home", tmp_path, "--model", str(model))
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(long_body(Path(model).name, stream=True)),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.read1(64)
    t = time.monotonic()
    assert served.stop(signum) == code
    assert time.monotonic() - t < 20
    conn.close()
    err = "\n".join(served.lines)
    assert "Traceback" not in err and served.lines[-1] == "trit: stopped", err
    assert any("finish=cancelled" in line for line in served.lines), err


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def test_load_eight_clients_twenty_requests_each(server, record_property):
    """All answered, none lost or mixed up: each request asks its own question, greedy, and must get the answer that
    question got alone; and no leak."""
    warm = server.client()

    def ask(api, tag: str, stream: bool) -> tuple[str, int]:
        """(the answer's text, its prompt tokens), checking the reply's shape."""
        messages = [{"role": "user", "content": tag}]
        if not stream:
            r = api.chat.completions.create(model="demo", messages=messages, max_tokens=8, temperature=0)
            assert r.object == "chat.completion" and r.usage.completion_tokens <= 8
            return r.choices[0].message.content, r.usage.prompt_tokens
        chunks = list(api.chat.completions.create(model="demo", messages=messages, max_tokens=8, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))
        assert len({ch.id for ch in chunks}) == 1 and chunks[-1].usage.completion_tokens <= 8
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), chunks[-1].usage.prompt_tokens

    tags = {(c, i): f"client {c} asks question {i} about {['tides', 'bells', 'lamps', 'ships'][i % 4]}"
            for c in range(8) for i in range(20)}
    alone = {key: ask(warm, tag, False) for key, tag in tags.items()}  # also the warm-up
    before = rss(server.proc.pid)
    latencies, failures = [], []

    def client(c):
        api = server.client()
        for i in range(20):
            t = time.perf_counter()
            try:
                assert ask(api, tags[c, i], stream=bool(i % 2)) == alone[c, i]
            except Exception as e:  # noqa: BLE001 (counted, then asserted on)
                failures.append(f"{c}/{i}: {e!r}")
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - start
    after = rss(server.proc.pid)
    latencies.sort()
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
    for key, value in (("requests", len(latencies)), ("p50_s", round(p50, 4)), ("p95_s", round(p95, 4)),
                       ("wall_s", round(wall, 2)), ("rss_before_mb", before >> 20), ("rss_after_mb", after >> 20)):
        record_property(key, value)
    print(f"\n160 requests in {wall:.2f}s: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms; "
          f"server RSS {before >> 20} MB -> {after >> 20} MB")
    assert failures == [] and len(latencies) == 160
    assert after - before < 64 << 20


# ---- trit ask --server --------------------------------------------------------------------------------------------
def test_ask_server_answers_as_the_api_does_and_keeps_nothing_here(server, trit, home):  # noqa: F811
    api = server.client().chat.completions.create(model="demo", messages=HI, max_tokens=12, temperature=0)
    r = trit("ask", "--server", server.url, "--max-tokens", "12", "--temperature", "0", "Hello there")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == api.choices[0].message.content + "\n"
    r = subprocess.run(trit_command() + ["ask", "--json", "-u", "--max-tokens", "12", "--temperature", "0",
                                         "Hello there"], capture_output=True, timeout=120,
                       env=offline_env({**os.environ, "TRIT_HOME": str(home), "TRIT_SERVER": server.url}))
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["content"] == api.choices[0].message.content and answer["model"] == "demo"
    assert answer["reused_tokens"] > 0 and "reused by the server" in r.stderr.decode()
    assert not (home / "data" / "history.db").exists()


def test_ask_server_mistakes_are_one_line(server, trit):  # noqa: F811
    one_line(trit("ask", "--server", f"http://127.0.0.1:{free_port()}/v1", "Hi"), "cannot reach", "trit serve")
    one_line(trit("ask", "--server", server.url, "--model", "llama3", "Hi"), "404", "demo")
    one_line(trit("ask", "--server", server.url, "--max-tokens", "9999", "Hi"), "400", "context")
    r = trit("ask", "--server", server.url, "-c", "Hi")
    assert r.returncode == 2 and b"--server" in r.stderr


# ---- while the model loads ------------------------------------------------------------------------------------------
def test_until_the_model_has_loaded_requests_get_503_with_retry_after():
    """The socket is bound before the model loads: meanwhile /health and chat requests are told to come back. The
    server's own app and engine thread, in this process; only the loading is held back (the demo loads too fast to
    catch otherwise), then the real demo model loads."""
    import asyncio

    from trit import engine
    from trit.app.server.api import AccessLog, build_app
    from trit.app.server.security import Guard
    from trit.app.server.worker import EngineWorker
    from trit.assets import DEMO_MODEL

    go = threading.Event()

    def load():
        go.wait(30)
        return "demo", engine.load(DEMO_MODEL)

    worker = EngineWorker(load)
    app = AccessLog(Guard(build_app(worker), host="127.0.0.1", port=8080))

    async def call(method: str, path: str, body: bytes = b""):
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json")],
                 "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1),
                 "root_path": "", "asgi": {"version": "3.0", "spec_version": "2.3"}}
        sent, received = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return received.pop(0) if received else await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    body = json.dumps(chat_body()).encode()
    worker.start()
    try:
        for method, path, data in (("GET", "/health", b""), ("POST", "/v1/chat/completions", body)):
            status, headers, error = asyncio.run(call(method, path, data))
            assert status == 503 and headers["retry-after"] == "1", error
            assert error["error"]["code"] == "service_unavailable" and "loading" in error["error"]["message"]
        go.set()
        deadline = time.monotonic() + 30
        while worker.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert asyncio.run(call("GET", "/health"))[0] == 200
        status, _, reply = asyncio.run(call("POST", "/v1/chat/completions", body))
        assert status == 200 and reply["choices"][0]["message"]["content"] is not None
    finally:
        go.set()
        worker.cancel_all()
        worker.join(30)
        if worker.model is not None:
            worker.model.close()
