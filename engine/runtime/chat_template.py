"""Chat templates: the jinja2 template of a model rendered exactly as transformers' `apply_chat_template` renders it
(transformers/utils/chat_template_utils.py): the same sandboxed environment, globals, filters and variables. Shared by
every tokenizer, Trit's own and llama.cpp's."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from trit.engine.errors import InputError, one_line


class ChatTemplate:
    """A compiled chat template and the special-token variables it is rendered with (bos_token, eos_token, …).

    Compiling raises `error(f"{source}: the chat template does not compile (…)")`, so each caller names its own
    file and error type."""

    def __init__(self, text: str, variables: Mapping[str, str], *, source: str, error: type[Exception]):
        import jinja2

        self.text = text
        self.variables = {k: v for k, v in variables.items() if v is not None}
        try:
            self._template = _jinja_environment().from_string(text)
        except jinja2.TemplateError as e:
            raise error(f"{source}: the chat template does not compile ({one_line(e)})") from None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, as apply_chat_template(tokenize=False) renders it."""
        import jinja2

        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise InputError("a chat needs a non-empty list of messages")
        chat = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) \
                    or not isinstance(m.get("content"), str):
                raise InputError(f"message {i} must be a dict with string 'role' and 'content', not {m!r:.80}")
            chat.append(_plain({k: v for k, v in m.items() if v is not None}))
        try:
            return self._template.render(messages=chat, tools=None, documents=None,
                                         add_generation_prompt=bool(add_generation_prompt), **self.variables)
        except jinja2.TemplateError as e:  # raise_exception() in the template, or a template bug
            raise InputError(f"the chat template refused these messages: {one_line(e)}") from None


# jinja2, as transformers sets it up (transformers/utils/chat_template_utils.py: _cached_compile_jinja_template)

def _jinja_environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # transformers' AssistantTracker: `{% generation %}...{% endgeneration %}` marks assistant text for its
        # training masks. Rendering only needs the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Unlike jinja's own tojson: no HTML escaping, and json.dumps' options.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def _plain(value: Any) -> Any:
    """Copy of template input made of plain JSON types only (transformers' _plain_template_data): the sandbox must
    not see objects whose methods it does not know."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"
