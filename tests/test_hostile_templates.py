"""Hostile and broken chat templates (issue 17, item 2): a template that fails, loops, recurses or grows without end is
one line naming its file — refused by `trit import` (and pull, which shares the check) before it is installed, and at
`trit ask` when one was copied in by hand, with nothing half-stored — and every render is bounded in steps, time,
characters and depth. Real templates render exactly as transformers renders them. A Hypothesis fuzz test of
ChatTemplate ends the file; TRIT_FUZZ_EXAMPLES=20000 runs it longer."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
import test_hostile_input
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_hostile_input import conversations, installed_models, one_line

from trit.assets import DEMO_MODEL
from trit.engine.errors import CheckpointError, InputError
from trit.engine.runtime.chat_template import TEST_CONVERSATIONS, ChatTemplate, ChatTemplateError, Limits

home, trit = test_hostile_input.home, test_hostile_input.trit  # the fixtures: installed trit, its TRIT_HOME

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason='the gguf package writes the test GGUFs (pip install "trit[gguf]")')
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason='llama-cpp-python is not installed (pip install "trit[gguf]")')

SECONDS = 30  # any one command here; a render is bounded by 5 s and a million steps, far less on these

# The probes of issue 17: each ended in a traceback, ran forever or grew past 3.7 GB; and a word of the line now said.
PROBES = {
    "division by zero": ("{{ 1/0 }}", "ZeroDivisionError"),
    "str plus int": ("{{ 'a' + 1 }}", "TypeError"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "deep"),
    "huge range": ("{% for i in range(10**9) %}{{ i }}{% endfor %}", "Range too big"),
    "huge repetition": ("{{ 'a' * 10**12 }}", "characters"),
    "endless lipsum": ("{{ lipsum(10000000) }}", "steps"),
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "steps"),
}


def demo_copy(tmp_path, template: str | None, where: str = "tokenizer_config.json"):
    """A copy of the demo model to import, its chat template replaced (in tokenizer_config.json or
    chat_template.jinja). The source folder sits apart from the cwd, so the model's name is not also a path."""
    folder = tmp_path / "sources" / "bad-template"
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "trit-demo.json").unlink()
    if template is not None:
        set_template(folder, template, where)
    return folder


def set_template(folder, template: str, where: str = "tokenizer_config.json"):
    if where == "chat_template.jinja":
        (folder / where).write_text(template)
        return folder / where
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder / "tokenizer_config.json"


def write_gguf(path, template: str):
    import gguf_models

    path.parent.mkdir(parents=True, exist_ok=True)
    return gguf_models.write_llama(path, chat_template=template)


def timed(trit, *args):
    start = time.monotonic()
    r = trit(*args)
    assert time.monotonic() - start < SECONDS, r.stderr
    return r


# ---------------------------------------------------------------------------------------------------------------
# trit import refuses them, naming the file


@pytest.mark.parametrize("probe", list(PROBES))
def test_import_refuses_a_template_that_fails_naming_the_file(trit, tmp_path, probe):
    template, word = PROBES[probe]
    folder = demo_copy(tmp_path, template)
    one_line(timed(trit, "import", folder), f"{folder / 'tokenizer_config.json'}", "chat template", word)
    assert installed_models(trit) == []


def test_import_refuses_a_failing_chat_template_jinja(trit, tmp_path):
    folder = demo_copy(tmp_path, PROBES["nested loops"][0], "chat_template.jinja")
    one_line(timed(trit, "import", folder), f"{folder / 'chat_template.jinja'}", "chat template", "steps")
    assert installed_models(trit) == []


@needs_gguf
@pytest.mark.parametrize("probe", list(PROBES))
def test_import_refuses_a_gguf_whose_template_fails(trit, tmp_path, probe):
    template, word = PROBES[probe]
    path = write_gguf(tmp_path / "sources" / "bad.gguf", template)
    one_line(timed(trit, "import", path), str(path), "chat template", word)
    assert installed_models(trit) == []


NO_SYSTEM_ROLE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
                  "{{ raise_exception('System role not supported') }}{% endif %}"
                  "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}")


def test_import_accepts_a_template_that_refuses_only_the_system_role(trit, tmp_path):
    """Gemma's does that: a refusal of one conversation shape is not a broken template."""
    r = timed(trit, "import", demo_copy(tmp_path, NO_SYSTEM_ROLE))
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in installed_models(trit)] == ["bad-template"]


@needs_gguf
def test_import_accepts_a_gguf_whose_template_refuses_only_the_system_role(trit, tmp_path):
    r = timed(trit, "import", write_gguf(tmp_path / "sources" / "nosys.gguf", NO_SYSTEM_ROLE))
    assert r.returncode == 0, r.stderr


def test_import_refuses_a_template_that_refuses_every_conversation(trit, tmp_path):
    folder = demo_copy(tmp_path, "{{ raise_exception('no, never') }}")
    one_line(timed(trit, "import", folder), "tokenizer_config.json", "refuses every test conversation", "no, never")
    assert installed_models(trit) == []


# ---------------------------------------------------------------------------------------------------------------
# a bad template copied in by hand: one line at trit ask, nothing half-stored, the conversation kept


@pytest.mark.parametrize("probe", ["division by zero", "huge repetition", "nested loops"])
def test_ask_with_a_template_broken_by_hand_is_one_line_and_stores_nothing(trit, home, tmp_path, probe):
    assert timed(trit, "import", demo_copy(tmp_path, None), "--name", "hand").returncode == 0
    assert timed(trit, "ask", "-m", "hand", "hello").returncode == 0
    before = shown(trit)
    config = set_template(home / "data" / "models" / "hand", PROBES[probe][0])
    one_line(timed(trit, "ask", "-m", "hand", "hi"), str(config), "chat template", PROBES[probe][1])
    one_line(timed(trit, "ask", "-c", "and again"), str(config), "chat template")
    assert len(conversations(trit)) == 1 and shown(trit) == before and len(before) == 2


def shown(trit) -> list:
    """The messages of conversation 1, as stored."""
    r = trit("history", "show", "1", "--json")
    assert r.returncode == 0, r.stderr
    return [(m["role"], m["content"]) for m in json.loads(r.stdout)["messages"]]


@needs_gguf
@needs_llama_cpp
def test_ask_with_a_gguf_template_broken_by_hand_is_one_line_and_stores_nothing(trit, home, tmp_path):
    import gguf_models

    (tmp_path / "sources").mkdir()
    good = gguf_models.write_llama(tmp_path / "sources" / "tiny.gguf")
    assert timed(trit, "import", good).returncode == 0
    model = home / "data" / "models" / "tiny" / "tiny.gguf"
    write_gguf(model, PROBES["nested loops"][0])
    one_line(timed(trit, "ask", "-m", "tiny", "hi"), str(model), "chat template", "steps")
    assert conversations(trit) == []


# ---------------------------------------------------------------------------------------------------------------
# ChatTemplate itself: every hostile template is one ChatTemplateError, bounded in time and memory

HOSTILE = {
    **{name: probe for name, probe in PROBES.items()},
    "silent nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                            "steps"),
    "loops over a long string": ("{% set s = 'a' * 4000000 %}{% for a in s %}{% for b in s %}{% endfor %}"
                                 "{% endfor %}", "steps"),
    "doubling with ~": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", "characters"),
    "doubling with +": ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}", "characters"),
    "many ~ operands": ("{% set b = 'x' * 4000000 %}{{ b" + " ~ b" * 500 + " }}", "characters"),
    "nested lists printed": ("{% set ns = namespace(s=['a']) %}{% for i in range(64) %}"
                             "{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ ns.s }}", "characters"),
    "output into a set block": ("{% set x %}{% for i in range(100000) %}{{ 'y' * 1000000 }}{% endfor %}"
                                "{% endset %}", "characters"),
    "center": ("{{ 'a' | center(10**11) }}", "center"),
    "ljust": ("{{ 'a'.ljust(10**11) }}", "ljust"),
    "bytes.center": ("{{ 'a'.encode().center(10**11) }}", "center"),
    "bytes %": ("{{ 'a%99999999999s'.encode() % ('b'.encode(),) }}", "format"),
    "format width": ("{{ '{:>99999999999}'.format('a') }}", "format"),
    "nested format width": ("{{ '{:{}}'.format('a', 10**11) }}", "format"),
    "percent width": ("{{ '%99999999999s' % 'a' }}", "format"),
    "format filter": ("{{ '%99999999999s' | format('a') }}", "format"),
    "repeated %(name)s": ("{{ ('%(a)s' * 400000) % {'a': 'b' * 1000} }}", "format"),
    "power": ("{{ 2 ** 1000000000 }}", "integer"),
    "squaring": ("{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
                 "integer"),
    "replace": ("{{ ('a' * 1000000).replace('', 'b' * 1000000) }}", "replace"),
    "replace filter on a list": ("{{ (['a' * 1000] * 1000) | replace('a', 'b' * 1000000) }}", "replace"),
    "format filter on a list": ("{{ (['%99999999999s'] * 3) | format('x') }}", "format"),
    "str.join": ("{{ ('x' * 3000000).join(['a', 'b', 'c']) }}", "join"),
    "join filter": ("{% set b = 'x' * 3000000 %}{{ [b, b, b, b] | join }}", "join"),
    "indent": ("{{ ('\\n' * 1000000) | indent('x' * 1000, blank=True) }}", "indent"),
    "batch": ("{{ [1] | batch(10**10, 'x') | list }}", "batch"),
    "slice": ("{{ [1] | slice(10**10) | list }}", "slice"),
    "tojson indent": ("{{ [[1, [2]]] | tojson(indent=10**10) }}", "tojson"),
    "tojson indent of a number": ("{{ 1 | tojson(indent=10**10) }}", "tojson"),  # json makes the indent first
    "tojson separators": ("{{ ([1] * 100000) | tojson(separators=('x' * 100000, ':')) }}", "tojson"),
    "sum of lists": ("{{ ([[1]] * 100000) | sum(start=[]) }}", "sum"),
    "expandtabs": ("{{ ('\\t' * 1000000).expandtabs(1000000) }}", "expandtabs"),
    "translate": ("{{ ('a' * 1000000).translate({97: 'b' * 1000000}) }}", "translate"),
    "dict.fromkeys": ("{{ dict.fromkeys(range(100000), 'x' * 1000000) }}", "characters"),
    "strftime_now": ("{{ strftime_now('%c' * 1000000) }}", "strftime_now"),
    "wordwrap": ("{{ ('a' * 1000000) | wordwrap(1, wrapstring='x' * 1000) }}", "wordwrap"),
    "recursive loop": ("{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}", "deep"),
    "huge int printed": ("{{ 10 ** 5000 }}", "ValueError"),
    "undefined": ("{{ foo.bar.baz }}", "UndefinedError"),
    "include": ("{% include 'x' %}", "no loader"),
}

# Run apart, under a 2 GB address-space limit (Linux): a template that allocates before it is checked fails with
# MemoryError there, one that loops without end times out.
_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from trit.engine.errors import CheckpointError, InputError
    from trit.engine.runtime.chat_template import ChatTemplate, Limits
    template, limits = json.loads(sys.stdin.read())
    start = time.monotonic()
    try:
        text = ChatTemplate(template, {"bos_token": "<s>"}, source="T.json", error=CheckpointError,
                            limits=Limits(**limits)).render([{"role": "user", "content": "hi"}])
        out = {"text": text[:200]}
    except InputError as e:
        out = {"error": type(e).__name__, "message": str(e)}
    out["seconds"] = time.monotonic() - start
    # VmHWM: this program's peak (ru_maxrss would include the parent's, inherited across the fork)
    peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    out["peak_mb"] = int(peak[0]) // 1024
    print(json.dumps(out))
""")


def render_apart(template: str, **limits) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([template, limits]), text=True,
                       capture_output=True, timeout=SECONDS)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status")


@needs_linux
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_is_one_line_bounded_in_time_and_memory(name):
    template, word = HOSTILE[name]
    out = render_apart(template)
    assert out.get("error") == "ChatTemplateError", out
    message = out["message"]
    assert "\n" not in message and message.startswith("T.json: the chat template ") and word in message, out
    assert "memory" not in message  # stopped by its budget before allocating, not by running out
    assert out["seconds"] < 6 and out["peak_mb"] < 200, out


@needs_linux
def test_the_deadline_stops_a_template_that_is_slow_within_its_steps():
    """A macro calling itself twice, 90 deep: few steps a second, 2^90 of them."""
    out = render_apart("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                       "{{ f(90) }}", seconds=0.5)
    assert out.get("error") == "ChatTemplateError" and "longer than 0.5 s" in out["message"], out
    assert out["seconds"] < 2, out


def test_limits_are_the_render_s_own():
    template = ChatTemplate("{% for m in messages %}{% for i in range(10) %}.{% endfor %}{% endfor %}", {},
                            source="T", error=CheckpointError, limits=Limits(steps=100))
    assert template.render([{"role": "user", "content": "x"}] * 8) == "." * 80  # 12 steps each: m, range(), 10 i
    with pytest.raises(ChatTemplateError, match="past 100 steps"):
        template.render([{"role": "user", "content": "x"}] * 9)
    assert template.render([{"role": "user", "content": "x"}]) == "." * 10  # the next render starts afresh


def test_characters_grow_with_the_conversation():
    """A long conversation is never refused for its length: its budget grows with it."""
    template = ChatTemplate("{% for m in messages %}{{ m.content ~ m.content }}{% endfor %}", {}, source="T",
                            error=CheckpointError, limits=Limits(chars=1000))
    long = [{"role": "user", "content": "y" * 5000}] * 3
    assert template.render(long) == "y" * 30000


def test_a_refusal_is_an_input_error_in_one_line():
    template = ChatTemplate("{{ raise_exception('two\\nlines') }}", {}, source="T", error=CheckpointError)
    with pytest.raises(InputError) as e:
        template.render([{"role": "user", "content": "x"}])
    assert not isinstance(e.value, ChatTemplateError) and str(e.value) == \
        "the chat template refused these messages: two"


@pytest.mark.parametrize("template, why", [("{{ " + "(" * 100000 + "1" + ")" * 100000 + " }}", "nested too deep"),
                                           ("{% if 1 %}" * 200 + "{% endif %}" * 200, "indentation"),
                                           ("{% for m in messages %}", "for")],
                         ids=["nested parentheses", "nested ifs", "unclosed for"])
def test_a_template_that_cannot_compile_is_the_caller_s_error_in_one_line(template, why):
    with pytest.raises(CheckpointError) as e:
        ChatTemplate(template, {}, source="T.json", error=CheckpointError)
    assert str(e.value).startswith("T.json: the chat template does not compile") and why in str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# real templates render exactly as transformers renders them, metered or not

REAL_TEMPLATES = {
    "bitnet-2b4t": json.loads((DEMO_MODEL / "tokenizer_config.json").read_text())["chat_template"],
    "llama-3": ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "chatml": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}"),
    "falcon": ("{% for message in messages %}{% if not loop.first %}{{ '\n' }}{% endif %}"
               "{% if message['role'] == 'system' %}{{ 'System: ' }}{% elif message['role'] == 'user' %}"
               "{{ 'User: ' }}{% elif message['role'] == 'assistant' %}{{ 'Falcon: ' }}{% endif %}"
               "{{ message['content'] }}{% endfor %}{% if add_generation_prompt %}{{ '\n' + 'Falcon:' }}"
               "{% endif %}"),
    "gemma (no system role)": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"),
    "gguf test model": None,  # tests/gguf_models.CHAT_TEMPLATE, read where gguf is installed
    # What the meters rewrite or check, each once: ~, output, loops (loop.last, recursive), macros and call blocks,
    # set blocks, filters (join, indent, center, replace, format, tojson, batch, slice, sum, wordwrap), str methods,
    # * + % ** and str.format, within {% autoescape %} too.
    "kitchen sink": textwrap.dedent("""\
        {%- macro turn(m, sep='|') -%}[{{ m.role | upper ~ sep ~ m.content | trim }}]{%- endmacro -%}
        {%- macro wrap() -%}<{{ caller() }}>{%- endmacro -%}
        {%- set ns = namespace(n=0, words=[]) -%}
        {%- set header %}{% for i in range(3) %}{{ '=' * (i + 1) }}{% endfor %}{% endset -%}
        {{ bos_token ~ header }}
        {% for m in messages if m.content -%}
          {%- set ns.n = ns.n + 1 -%}{%- set ns.words = ns.words + m.content.split() -%}
          {{ turn(m) }}{% if not loop.last %},{% endif %}{{ loop.index ~ '/' ~ loop.length }}
          {%- call wrap() %}{{ '%s-%03d' % (m.role, loop.index) }}{% endcall %}
        {% endfor -%}
        {{ ns.words | join(' ') | wordwrap(20) | indent(2, first=True) }}
        {{ ns.words | map('upper') | join(', ') | center(60) }}
        {{ '{0}:{1:>5}'.format('n', ns.n) }} {{ 2 ** 10 }} {{ [1, 2] + [3] }} {{ 'ab'.ljust(4, '.') }}
        {{ messages | map(attribute='role') | list | tojson(indent=2) }}
        {{ [1, 2, 3, 4, 5] | batch(2, 0) | list }} {{ [1, 2, 3] | slice(2) | list }} {{ [1, 2, 3] | sum }}
        {{ 'x<y' | replace('<', ' lt ') }} {{ '%5.1f' | format(3.14159) }} {{ 'a\tb'.expandtabs(4) }}
        {%- for x in [[1, [2, 3]], 4] recursive %}{% if x is iterable %}({{ loop(x) }}){% else %}{{ x }}{% endif %}
        {%- endfor %}
        {% autoescape true %}{{ '<b>' ~ 'x' }}{{ '<i>' | safe ~ '&' }}{% endautoescape %}
        {% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"""),
}

CHATS = [list(c) for c in TEST_CONVERSATIONS] + [
    [{"role": "user", "content": "Café, naïve, 你好 😀 \t tabs and  spaces \n\n"},
     {"role": "assistant", "content": "  "}, {"role": "user", "content": "<|eot_id|> {{ not a template }}"}]]
VARIABLES = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


def _real_template(name: str) -> str:
    if REAL_TEMPLATES[name] is None:
        gguf_models = pytest.importorskip("gguf_models")
        pytest.importorskip("gguf")
        return gguf_models.CHAT_TEMPLATE
    return REAL_TEMPLATES[name]


@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("name", list(REAL_TEMPLATES))
def test_real_templates_render_as_transformers_renders_them(name, chat):
    from transformers.utils.chat_template_utils import render_jinja_template

    text = _real_template(name)
    ours = ChatTemplate(text, VARIABLES, source=name, error=CheckpointError)
    for prompt in (True, False):
        try:
            theirs = render_jinja_template([CHATS[chat]], chat_template=text, add_generation_prompt=prompt,
                                           **VARIABLES)[0][0]
        except Exception as e:  # noqa: BLE001 — transformers refuses: so must we, in our way
            with pytest.raises(InputError, match="refused these messages"):
                ours.render(CHATS[chat], prompt)
            assert "System role not supported" in str(e) or "alternate" in str(e)
        else:
            assert ours.render(CHATS[chat], prompt) == theirs


@pytest.mark.parametrize("template", ["{{ messages | tojson(indent=4) }}", "{{ messages | pprint }}"])
def test_a_long_conversation_printed_indented_is_not_refused(template):
    """The bound on tojson(indent=…) and pprint counts each line's indent, not the whole text times a guess."""
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = [{"role": "user", "content": "word " * 2000}] * 5
    ours = ChatTemplate(template, {}, source="T", error=CheckpointError)
    assert ours.render(chat) == render_jinja_template([chat], chat_template=template)[0][0]


@pytest.mark.parametrize("name", list(REAL_TEMPLATES))
def test_real_templates_pass_the_import_check(name):
    ChatTemplate(_real_template(name), VARIABLES, source=name, error=CheckpointError).check_renders()


# ---------------------------------------------------------------------------------------------------------------
# fuzz: random templates from jinja fragments, random messages; a string or one line, nothing else, no hang

FUZZ_EXAMPLES = int(os.environ.get("TRIT_FUZZ_EXAMPLES", "200"))
FUZZ_LIMITS = Limits(steps=20_000, seconds=1.0, chars=200_000)  # smaller than a real render's, so examples are quick

_NUMBERS = st.sampled_from(["0", "1", "2", "-1", "3", "64", "100000", "10**9", "10**12", "2**64", "1.5", "0.0"])
_NAMES = st.sampled_from(["v", "w", "ns.a", "m", "m.content", "m.role", "messages", "messages[0]", "loop.index",
                          "bos_token", "add_generation_prompt", "undefined_name"])
_STRINGS = st.sampled_from(["''", "'a'", "'%s'", "'{}'", "'{:>9}'", "'<|eot_id|>'", "'\\n'", "'\\t'", "'%(a)s'",
                            "'{0}{0}'"])


def _expressions():
    atoms = st.one_of(_NUMBERS, _NAMES, _STRINGS, st.sampled_from(
        ["[]", "{}", "none", "range(100000)", "('ab' * 100000)", "(messages * 1000)", "lipsum(100)"]))

    def grow(e):
        binary = st.tuples(e, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "~", "==", "and", "or", "in"]),
                           e).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        filters = st.tuples(e, st.sampled_from([
            "length", "list", "join", "upper", "trim", "tojson", "string", "first", "last", "sum", "unique",
            "reverse", "sort", "int", "center(N)", "indent(N)", "batch(N)", "slice(N)", "replace('a', X)",
            "format(X)", "join(X)", "wordwrap(N)", "tojson(indent=N)", "map('string')", "default(X)", "truncate(N)",
            "pprint", "items", "dictsort", "selectattr('role')", "attr(X)"]), e, _NUMBERS).map(
            lambda t: f"({t[0]} | {t[1].replace('N', t[3]).replace('X', t[2])})")
        calls = st.one_of(
            st.tuples(e, st.sampled_from(["ljust", "center", "zfill", "replace", "join", "split", "format",
                                          "expandtabs", "strip", "startswith", "count"]), e).map(
                lambda t: f"{t[0]}.{t[1]}({t[2]})"),
            st.tuples(st.sampled_from(["range", "lipsum", "dict", "namespace", "strftime_now", "raise_exception",
                                       "cycler", "joiner"]), e).map(lambda t: f"{t[0]}({t[1]})"),
            st.lists(e, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
            st.tuples(e, e).map(lambda t: f"{t[0]}[{t[1]}]"),
            st.tuples(e, e, e).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"))
        return st.one_of(binary, filters, calls)

    return st.recursive(atoms, grow, max_leaves=8)


def _templates():
    e = _expressions()
    simple = st.one_of(
        e.map(lambda x: f"{{{{ {x} }}}}"),
        st.sampled_from(["text", "\n", "{# comment #}", "{% break %}", "{{ f(v) }}", "{{ loop(w) }}"]),
        e.map(lambda x: f"{{% set v = {x} %}}"),
        e.map(lambda x: f"{{% set ns = namespace(a={x}) %}}"),
        e.map(lambda x: f"{{% set ns.a = {x} %}}"))

    def grow(body):
        block = st.lists(body, min_size=1, max_size=3).map("".join)
        return st.one_of(
            st.tuples(st.sampled_from(["m", "w"]), e, block, st.sampled_from(["", " recursive"])).map(
                lambda t: f"{{% for {t[0]} in {t[1]}{t[3]} %}}{t[2]}{{% endfor %}}"),
            st.tuples(e, block, block).map(lambda t: f"{{% if {t[0]} %}}{t[1]}{{% else %}}{t[2]}{{% endif %}}"),
            block.map(lambda b: f"{{% macro f(v) %}}{b}{{% endmacro %}}"),
            block.map(lambda b: f"{{% set w %}}{b}{{% endset %}}"),
            block.map(lambda b: f"{{% filter upper %}}{b}{{% endfilter %}}"),
            block.map(lambda b: f"{{% generation %}}{b}{{% endgeneration %}}"),
            block)

    # names the fragments use, defined first so that not every template stops at an undefined one
    prelude = "{% set v = 'x' %}{% set w = [1, 'two'] %}{% set ns = namespace(a='y') %}{% set m = messages[0] %}"
    return st.recursive(simple, grow, max_leaves=10).map(lambda body: prelude + body)


_MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", ""]),
                                            "content": st.text(max_size=40)}), min_size=1, max_size=4)


@settings(derandomize=True, max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=5),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(template=_templates(), messages=_MESSAGES, prompt=st.booleans())
def test_fuzz_a_template_renders_or_is_one_line(template, messages, prompt):
    try:
        chat = ChatTemplate(template, VARIABLES, source="T.json", error=CheckpointError, limits=FUZZ_LIMITS)
    except CheckpointError as e:
        assert str(e).startswith("T.json: the chat template does not compile (") and "\n" not in str(e)
        event("does not compile")
        return
    try:
        assert isinstance(chat.render(messages, prompt), str)
        event("renders")
    except InputError as e:
        assert "\n" not in str(e) and (str(e).startswith("T.json: the chat template ") or not isinstance(
            e, ChatTemplateError) and str(e).startswith("the chat template refused these messages: "))
        # the kind of failure, for --hypothesis-show-statistics: "fails (TypeError", "runs past", "makes more", …
        event(" ".join(str(e).removeprefix("T.json: the chat template ").split()[:2])
              if isinstance(e, ChatTemplateError) else "refuses the messages")
