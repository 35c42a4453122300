"""Chat templates: the jinja2 template of a model rendered exactly as transformers' `apply_chat_template` renders it
(transformers/utils/chat_template_utils.py): the same sandboxed environment, globals, filters and variables. Shared by
every tokenizer, Trit's own and llama.cpp's.

A template comes with the model, so it may be hostile or broken. jinja2's sandbox stops it reaching out of the
template, but not from running forever or filling the memory, and its errors are Python's. So one render has a
budget (Limits): steps (loop iterations, calls and filters), seconds, characters (the output, all text written into
`{% set %}` blocks and macros, and any one value made), call depth and integer size. The template is metered where
it could grow or loop: its syntax tree is rewritten before compiling so that every `for` counts its iterations,
every `~` and every output is measured before it is joined, and the sandbox's hooks check every call, filter and
`*` `+` `%` `**` before they run — checking before, not after, matters: `'a' * 10**10` must never be allocated.
Whatever fails while rendering (a budget, ZeroDivisionError, TypeError, RecursionError, MemoryError, a jinja2 error)
becomes one ChatTemplateError line naming the template's file; nothing else escapes render().
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trit.engine.errors import InputError, one_line


class ChatTemplateError(InputError):
    """A chat template that fails or runs past its budget while rendering a conversation: one line naming the file
    the template came from and why."""


@dataclass(frozen=True)
class Limits:
    """The budget of one render. Real templates use a tiny part of it (a few steps and ~100 characters per message);
    characters grow with the conversation so that no real conversation, however long, reaches them."""

    steps: int = 1_000_000       # loop iterations, calls and filters
    seconds: float = 5.0         # wall clock, checked at each step
    chars: int = 4 << 20         # plus 8 per character of the messages: output, text written, any one value
    depth: int = 100             # nested calls (a macro calling a macro); Python's own limit is near 200
    int_bits: int = 1 << 16      # results of integer * and **


# Test conversations `trit import` renders (check_renders): the full shape first, then the shapes of templates that
# refuse a system message or an assistant turn with raise_exception().
_SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
_USER = {"role": "user", "content": "What is the capital of France?"}
_ASSISTANT = {"role": "assistant", "content": "Paris."}
_AGAIN = {"role": "user", "content": "And of Italy?"}
TEST_CONVERSATIONS = ([_SYSTEM, _USER, _ASSISTANT, _AGAIN], [_USER, _ASSISTANT, _AGAIN], [_SYSTEM, _USER], [_USER])


class ChatTemplate:
    """A compiled chat template and the special-token variables it is rendered with (bos_token, eos_token, …).

    Compiling raises `error(f"{source}: the chat template does not compile (…)")`, so each caller names its own
    file and error type; rendering raises ChatTemplateError naming `source` too."""

    def __init__(self, text: str, variables: Mapping[str, str], *, source: str, error: type[Exception],
                 limits: Limits = Limits()):
        self.text, self.source, self.limits = text, source, limits
        self.variables = {k: v for k, v in variables.items() if v is not None}
        # jinja2 folds constant expressions while compiling: that work has a budget too ('x'|center(10**10))
        token = _BUDGET.set(_Budget(limits, 0, compiling=True))
        try:
            env = _jinja_environment()
            self._template = env.from_string(_metered(env, env.parse(text)))
        except Exception as e:  # noqa: BLE001 — jinja2's errors, and Python's for a template nested too deep
            why = "it is nested too deep" if isinstance(e, RecursionError) else one_line(e)
            raise error(f"{source}: the chat template does not compile ({why})") from None
        finally:
            _BUDGET.reset(token)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, as apply_chat_template(tokenize=False) renders it. InputError when the
        template refuses the conversation (its raise_exception()), ChatTemplateError when it fails or goes over
        budget."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise InputError("a chat needs a non-empty list of messages")
        chat = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) \
                    or not isinstance(m.get("content"), str):
                raise InputError(f"message {i} must be a dict with string 'role' and 'content', not {m!r:.80}")
            chat.append(_plain({k: v for k, v in m.items() if v is not None}))
        budget = _Budget(self.limits, sum(len(m["content"]) for m in chat))
        token = _BUDGET.set(budget)
        try:
            out, size = [], 0
            for piece in self._template.generate(messages=chat, tools=None, documents=None,
                                                 add_generation_prompt=bool(add_generation_prompt),
                                                 **self.variables):
                size += len(piece)
                budget.check_size(size, "its output")
                out.append(piece)
            return "".join(out)
        except _Refused as e:
            raise InputError(f"the chat template refused these messages: {one_line(e)}") from None
        except _OverBudget as e:
            raise self._error(str(e)) from None
        except RecursionError:
            raise self._error("nests too deep (a macro that calls itself without end?)") from None
        except MemoryError:
            raise self._error("needs more memory than there is") from None
        except Exception as e:  # noqa: BLE001 — a template bug: 1/0, 'a' + 1, an undefined name, …
            raise self._error(f"fails ({_describe(e)})") from None
        finally:
            _BUDGET.reset(token)

    def _error(self, why: str) -> ChatTemplateError:
        return ChatTemplateError(f"{self.source}: the chat template {why} — fix the template in that file, or use "
                                 "another model")

    def check_renders(self) -> None:
        """Render TEST_CONVERSATIONS with a generation prompt until one renders. ChatTemplateError (one line naming
        the file) when the template fails or goes over budget on one, or refuses them all."""
        refusals = []
        for chat in TEST_CONVERSATIONS:
            try:
                self.render(chat, add_generation_prompt=True)
                return
            except ChatTemplateError:
                raise
            except InputError as e:
                refusals.append(str(e).removeprefix("the chat template refused these messages: "))
        raise self._error(f"refuses every test conversation, with and without a system message ({refusals[0]})")


def _describe(e: BaseException) -> str:
    text = one_line(e)
    return text if text.startswith(type(e).__name__) else f"{type(e).__name__}: {text}"


# ---------------------------------------------------------------------------------------------------------------
# the budget of one render


class _OverBudget(Exception):
    """A render went past one of its Limits (the text completes "the chat template …")."""


class _Refused(Exception):
    """raise_exception(message) in a template: it does not accept this conversation."""


class _Budget:
    def __init__(self, limits: Limits, input_chars: int, compiling: bool = False):
        self.limits, self.compiling = limits, compiling
        self.steps = 0
        self.deadline = time.monotonic() + limits.seconds
        self.chars = limits.chars + 8 * input_chars
        self.written = 0
        self.depth = 0

    def tick(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.limits.steps:
            raise _OverBudget(f"runs past {self.limits.steps} steps (loop iterations, calls and filters): a loop "
                              "that does not end?")
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"runs longer than {self.limits.seconds:g} s")

    def check_size(self, n: int, what: str) -> None:
        if n > self.chars:
            raise _OverBudget(f"makes more than {self.chars} characters ({what})")

    def write(self, n: int) -> None:
        """n characters output, into the prompt or a block, macro or `set` being built."""
        self.written += n
        if self.written > self.chars:
            raise _OverBudget(f"writes more than {self.chars} characters")

    def check_int(self, bits: int) -> None:
        if bits > self.limits.int_bits:
            raise _OverBudget(f"makes an integer of more than {self.limits.int_bits} bits")


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chat_template_budget")


def _budget() -> _Budget:
    """The budget of the render, or of the compiling, under way."""
    return _BUDGET.get()


def _render_budget() -> _Budget:
    """The budget of the render under way, for the meters: while compiling they raise, so that jinja2, which folds
    what it can into constants, leaves them for render time (a constant is printed without a meter)."""
    b = _BUDGET.get()
    if b.compiling:
        raise LookupError("meters run at render time")
    return b


def _measure(value: Any, limit: int) -> int:
    """About how many characters value takes as text: strings their length, containers the sum of their items
    (each shared item counted at each place, as printing it would). Stops counting past limit."""
    if isinstance(value, str):  # most calls, cheaply
        return len(value)
    from jinja2.utils import Namespace

    sizes: dict[int, int] = {}

    def size(v: Any, depth: int) -> int:
        if isinstance(v, (str, bytes)):
            return len(v)
        if v is None or isinstance(v, (bool, float, range)):
            return 8
        if isinstance(v, int):
            return v.bit_length() // 3 + 1
        if isinstance(v, Namespace):
            v = v._Namespace__attrs  # what its repr prints
        if not isinstance(v, (Mapping, list, tuple, set, frozenset)):
            return 8
        key = id(v)
        if key in sizes:
            return sizes[key]
        sizes[key] = limit + 1  # a value that contains itself is endless as text
        if depth > 200:
            raise RecursionError
        if isinstance(v, (list, tuple)) and set(map(type, v)) <= {str}:  # words, lines: at C speed
            sizes[key] = 2 + 2 * len(v) + sum(map(len, v))
            return sizes[key]
        items = (x for kv in v.items() for x in kv) if isinstance(v, Mapping) else v
        total = 2
        for x in items:
            total += 2 + size(x, depth + 1)
            if total > limit:
                break
        sizes[key] = total
        return total

    return size(value, 0)


# ---------------------------------------------------------------------------------------------------------------
# checks before an operation that can make a value far larger than its operands

_SEQUENCES = (str, bytes, list, tuple)
_FORMAT_NUMBER = re.compile(r"\d+")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _largest_number(spec: str) -> int:
    return max((int(d) for d in _FORMAT_NUMBER.findall(spec[:1000])), default=0)


def _pretty_size(value: Any, indent: int, limit: int, separators: int = 0) -> int:
    """At most how long value printed one item a line is, each line indented by `indent` per level (tojson with
    indent, pprint) and followed by `separators` characters; escapes up to 6 characters for one. Stops counting
    past limit."""
    total, todo = 0, [(value, 0)]
    while todo and total <= limit:
        v, depth = todo.pop()
        size = 0
        if isinstance(v, Mapping):
            todo += [(x, depth + 1) for kv in v.items() for x in kv]
        elif isinstance(v, (list, tuple)):
            todo += [(x, depth + 1) for x in v]
        else:
            size = 6 * _measure(v, limit)
        total += 4 + separators + depth * indent + size
    return total


def _check_percent(b: _Budget, fmt: Any, args: Any) -> None:
    """`fmt % args` and the format filter: each conversion prints at most an argument, padded to its width."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    if not isinstance(fmt, str):
        return
    specs = re.findall(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?", fmt)
    if not specs:
        return
    widths = [int(w) for spec in specs for w in spec if w.isdigit()]
    if any(w == "*" for spec in specs for w in spec):
        widths += [a for a in (args if isinstance(args, tuple) else (args,)) if _is_int(a)]
    padding = len(specs) * max(widths, default=0)
    if isinstance(args, Mapping):  # '%(a)s%(a)s…': any one value, as often as there are conversions
        printed = len(specs) * max((_measure(v, b.chars) for v in args.values()), default=0)
    else:  # each argument once; %r may print escapes, up to 6 characters for one
        printed = 6 * _measure(args, b.chars)
    b.check_size(len(fmt) + padding + printed, "a % format")


def _check_format(b: _Budget, fmt: str, args: tuple, kwargs: Mapping) -> None:
    """str.format / format_map: each field prints at most its argument, padded to the width in its spec."""
    fields, width = 0, 0
    for _, name, spec, _ in string.Formatter().parse(fmt):
        if name is not None:
            fields += 1
            width = max(width, _largest_number(spec or ""))
        if fields > b.chars:
            break
    nested = [v for v in (*args, *kwargs.values()) if _is_int(v)]  # '{:{}}'.format(x, width)
    width = max(width, *nested) if nested else width
    b.check_size(len(fmt) + fields * (_measure((args, kwargs), b.chars) + width), "a str.format")


def _check_str_method(b: _Budget, s: str | bytes, name: str, args: tuple, kwargs: Mapping) -> None:
    """The str (and bytes) methods whose result can be far longer than the string and their arguments."""
    if isinstance(s, bytes):  # the same methods, measured as text of the same length
        s = s.decode("latin-1")
        args = tuple(a.decode("latin-1") if isinstance(a, bytes) else a for a in args)
    if name in ("ljust", "rjust", "center", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if _is_int(width):
            b.check_size(width, f"str.{name}")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(tab):
            b.check_size(len(s) + s.count("\t") * tab, "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(b, s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((_measure(v, b.chars) for v in args[0].values()), default=1)
        b.check_size(len(s) * max(longest, 1), "str.translate")


def _check_replace(b: _Budget, s: str, old: str, new: str, count: Any) -> None:
    n = s.count(old) if old else len(s) + 1
    if _is_int(count) and count >= 0:
        n = min(n, count)
    b.check_size(len(s) + n * max(len(new) - len(old), 0), "a replace")


def _check_binop(b: _Budget, op: str, left: Any, right: Any) -> None:
    if op == "+" and isinstance(left, str) and isinstance(right, str):  # most calls, cheaply
        b.check_size(len(left) + len(right), "a + concatenation")
    elif op == "*":
        if _is_int(left) and _is_int(right):
            b.check_int(left.bit_length() + right.bit_length())
        elif isinstance(left, _SEQUENCES) and _is_int(right) or isinstance(right, _SEQUENCES) and _is_int(left):
            seq, n = (left, right) if _is_int(right) else (right, left)
            if n > 0:
                b.check_size(_measure(seq, b.chars) * n if n <= b.chars else b.chars + 1, "a * repetition")
    elif op == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            b.check_int(left.bit_length() * right if right <= b.limits.int_bits else b.limits.int_bits + 1)
    elif op == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            b.check_size(_measure(left, b.chars) + _measure(right, b.chars), "a + concatenation")
    elif op == "%":
        _check_percent(b, left, right)


def _checked_result(b: _Budget, value: Any, what: str) -> Any:
    """A value made by a call or filter: no larger than the budget allows (a generator is measured by its
    consumer)."""
    if isinstance(value, (str, bytes)):
        size = len(value)
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        size = _measure(value, b.chars)
    else:
        size = 0
        if _is_int(value):
            b.check_int(value.bit_length())
    b.check_size(size, what)
    if b.compiling:  # constants folded into the template: all of them together within the budget
        b.write(size)
    return value


# Filters that can make a value far larger than their input, and what bounds it before they run.
def _filter_precheck(b: _Budget, name: str, a: Mapping[str, Any]) -> None:
    value = next((a[k] for k in ("value", "s", "iterable", "x") if k in a), None)
    text_len = len(value) if isinstance(value, str) else _measure(value, b.chars)
    if name == "center" and _is_int(a.get("width")):
        b.check_size(a["width"], "the center filter")
    elif name == "indent":
        width = a.get("width", 4)
        w = width if _is_int(width) else _measure(width, b.chars)
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        b.check_size(text_len + lines * max(w, 0) if w <= b.chars else b.chars + 1, "the indent filter")
    elif name == "batch" and _is_int(a.get("linecount")):
        b.check_size(a["linecount"], "the batch filter")
        b.tick(max(a["linecount"], 0) // 64)
    elif name == "slice" and _is_int(a.get("slices")):
        b.check_size(a["slices"], "the slice filter")
        b.tick(max(a["slices"], 0))
    elif name == "format":
        _check_percent(b, _as_text(b, value), tuple(a.get("args", ())) or dict(a.get("kwargs", {})))
    elif name == "replace":
        _check_replace(b, *(_as_text(b, a.get(k)) for k in ("s", "old", "new")), a.get("count"))
    elif name == "wordwrap":
        wrap = a.get("wrapstring")
        b.check_size(text_len * (1 + (len(wrap) if isinstance(wrap, str) else 1)), "the wordwrap filter")
    elif name == "tojson":
        indent = a.get("indent")
        w = max(indent if _is_int(indent) else len(indent) if isinstance(indent, str) else 0, 0)
        b.check_size(w, "the tojson filter's indent")  # json.dumps makes the indent string first
        separators = _measure(a.get("separators"), b.chars) if a.get("separators") is not None else 0
        b.check_size(_pretty_size(a.get("x"), w, b.chars, separators), "the tojson filter")
    elif name == "sum":
        start = a.get("start", 0)
        if not isinstance(start, (int, float)):  # list + list in a loop: quadratic
            raise _OverBudget("sums something other than numbers (the sum filter with a start that is not a number)")
    elif name == "pprint":
        b.check_size(_pretty_size(value, 1, b.chars), "the pprint filter")


def _as_text(b: _Budget, value: Any) -> str:
    """value as the format and replace filters print it before they work on it (a list: its repr)."""
    if isinstance(value, str):
        return value
    b.check_size(_measure(value, b.chars), "a value printed")
    return str(value)


_PRECHECKED = frozenset({"center", "indent", "batch", "slice", "format", "replace", "wordwrap", "tojson", "sum",
                         "pprint"})


def _metered_filter(name: str, f: Callable) -> Callable:
    signature = inspect.signature(f) if name in _PRECHECKED else None
    # jinja2's async variants take an eval context their signature does not show
    hidden = int(getattr(f, "jinja_pass_arg", None) is not None and signature is not None
                 and next(iter(signature.parameters), None) not in ("eval_ctx", "environment", "context"))

    @functools.wraps(f)  # keeps jinja_pass_arg, so jinja2 passes the context/environment as before
    def filter(*args, **kwargs):
        b = _budget()
        b.tick()
        if signature is not None:
            bound = signature.bind(*args[hidden:], **kwargs)
            bound.apply_defaults()
            _filter_precheck(b, name, bound.arguments)
        if name == "join":
            return _join(b, f, args, kwargs)
        return _checked_result(b, f(*args, **kwargs), f"the {name} filter")

    return filter


def _join(b: _Budget, f: Callable, args: tuple, kwargs: Mapping) -> Any:
    """The join filter on items measured first: its input may be a generator (map, select), so it is listed."""
    eval_ctx, value, *rest = args
    items = list(value)
    sep = rest[0] if rest else kwargs.get("d", "")
    b.check_size(_measure(items, b.chars) + len(items) * _measure(sep, b.chars), "the join filter")
    return _checked_result(b, f(eval_ctx, items, *rest, **kwargs), "the join filter")


# ---------------------------------------------------------------------------------------------------------------
# the syntax tree, metered (filters whose names a template cannot spell: they are not identifiers)

_COUNT_LOOP, _CONCAT, _OUTPUT, _LITERAL = "~count", "~concat", "~output", "~literal"


class _Counted:
    """A for loop's iterable, one step per item. len() as the iterable's, for loop.length and loop.last."""

    def __init__(self, iterable: Any):
        self.iterable = iterable

    def __len__(self) -> int:
        return len(self.iterable)

    def __iter__(self):
        b = _render_budget()
        for item in self.iterable:
            b.tick()
            yield item


def _count_loop(iterable: Any) -> _Counted:
    _render_budget()
    return _Counted(iterable)


def _output(value: Any) -> Any:
    """`{{ value }}`: charged as the text it prints, before jinja2 prints it."""
    b = _render_budget()
    b.write(len(value) if isinstance(value, str) else _measure(value, b.chars))
    return value


def _literal(empty: str, n: int) -> str:
    _render_budget().write(n)
    return empty


def _metered(env, tree):
    """The template's syntax tree with meters in: every for loop counted, every `~` measured before joining, every
    output charged."""
    from jinja2 import nodes
    from jinja2.runtime import markup_join, str_join
    from jinja2.utils import pass_eval_context
    from jinja2.visitor import NodeTransformer

    @pass_eval_context
    def concat(eval_ctx, parts):
        b = _render_budget()
        b.check_size(sum(_measure(p, b.chars) for p in parts), "a ~ concatenation")
        # as jinja2 compiles `~`: markup_join inside {% autoescape %} (or one set at render time), else str_join
        return (markup_join if eval_ctx.autoescape or eval_ctx.volatile else str_join)(parts)

    env.filters.update({_COUNT_LOOP: _count_loop, _CONCAT: concat, _OUTPUT: _output, _LITERAL: _literal})

    def call(name, node, *args):
        return nodes.Filter(node, name, list(args), [], None, None).set_lineno(node.lineno)

    class Meters(NodeTransformer):
        def __init__(self):
            self.eval_ctx = nodes.EvalContext(env)  # as jinja2's compiler tracks it: {% autoescape %} in scope

        def visit_ScopedEvalContextModifier(self, node):
            saved = self.eval_ctx.save()
            node = self.visit_EvalContextModifier(node)
            self.eval_ctx.revert(saved)
            return node

        def visit_EvalContextModifier(self, node):
            for keyword in node.options:
                try:
                    setattr(self.eval_ctx, keyword.key, keyword.value.as_const(self.eval_ctx))
                except nodes.Impossible:
                    self.eval_ctx.volatile = True
            return self.generic_visit(node)

        def visit_For(self, node):
            node = self.generic_visit(node)
            node.iter = call(_COUNT_LOOP, node.iter)
            return node

        def visit_Concat(self, node):
            node = self.generic_visit(node)
            try:  # constant: folded as jinja2 folds it (a plain str, even under autoescape), within the budget
                return nodes.Const(node.as_const(self.eval_ctx)).set_lineno(node.lineno)
            except Exception:  # noqa: BLE001 — nodes.Impossible, or the compile budget spent
                return call(_CONCAT, nodes.Tuple(node.nodes, "load").set_lineno(node.lineno))

        def visit_Output(self, node):
            node = self.generic_visit(node)
            literal = sum(len(c.data) for c in node.nodes if isinstance(c, nodes.TemplateData))
            node.nodes = [c if isinstance(c, nodes.TemplateData) else call(_OUTPUT, c) for c in node.nodes]
            if literal:
                node.nodes.insert(0, call(_LITERAL, nodes.Const("").set_lineno(node.lineno),
                                          nodes.Const(literal).set_lineno(node.lineno)))
            return node

    tree = Meters().visit(tree)
    tree.set_environment(env)
    return tree


# ---------------------------------------------------------------------------------------------------------------
# jinja2, as transformers sets it up (transformers/utils/chat_template_utils.py: _cached_compile_jinja_template),
# with the sandbox's hooks metering calls and operators


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
        raise _Refused(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Unlike jinja's own tojson: no HTML escaping, and json.dumps' options.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        _budget().check_size(len(str(format)) * 16, "strftime_now")
        return datetime.now().strftime(format)

    def lipsum(n=5, html=True, min=20, max=100):
        # jinja2's lorem ipsum: n paragraphs of up to max words, each a step
        b = _budget()
        if _is_int(n) and _is_int(max):
            b.tick(abs(n) * abs(max) // 16)
        return jinja2.utils.generate_lorem_ipsum(n, html, min, max)

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

    class MeteredSandbox(ImmutableSandboxedEnvironment):
        # Not folded into constants while compiling, and checked here before they run.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            b = _budget()
            b.tick()
            _check_binop(b, operator, left, right)
            return self.binop_table[operator](left, right)

        def call(self, context, obj, /, *args, **kwargs):
            b = _budget()
            b.tick()
            target = getattr(obj, "__wrapped__", obj)  # the sandbox's wrapper of str.format
            owner = getattr(target, "__self__", None)
            if isinstance(owner, (str, bytes)):
                name = getattr(target, "__name__", "")
                if name == "join" and args:  # its argument may be a generator (map, select): listed, measured
                    args = (list(args[0]), *args[1:])
                    b.check_size(_measure(args[0], b.chars) + len(owner) * len(args[0]), "str.join")
                elif name in ("format", "format_map"):
                    _check_format(b, owner, args, kwargs if name == "format" else
                                  (args[0] if args and isinstance(args[0], Mapping) else {}))
                else:
                    _check_str_method(b, owner, name, args, kwargs)
            if b.depth >= b.limits.depth:
                raise _OverBudget(f"nests calls more than {b.limits.depth} deep (a macro that calls itself "
                                  "without end?)")
            b.depth += 1
            try:
                result = super().call(context, obj, *args, **kwargs)
            finally:
                b.depth -= 1
            return _checked_result(b, result, "a call")

    env = MeteredSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _metered_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["lipsum"] = lipsum
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
