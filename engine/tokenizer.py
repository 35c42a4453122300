"""Text <-> token ids for a model folder: the byte-level BPE of tokenizer.json, the chat template, stop ids, and
streaming detokenization that never splits a UTF-8 character.

    tok = Tokenizer.from_folder(folder)
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])     # <|begin_of_text|>User: Hi<|eot_id|>Assistant:
    dec = tok.detokenizer()
    for i in generated_ids:
        print(dec.push(i), end="")
    print(dec.flush())

The chat template in tokenizer_config.json (or chat_template.jinja) is rendered exactly as transformers'
`apply_chat_template` renders it: same sandboxed jinja2 environment, globals and filters, same variables. Rendered
text is tokenized with special tokens parsed and without the post-processor's BOS, as transformers does; the
template writes the BOS itself.
"""

from __future__ import annotations

import codecs
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .checkpoint import read_json
from .errors import CheckpointError, InputError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CONFIG_FILE = "config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers saves templates here; it wins over tokenizer_config's

# BitNet b1.58 2B4T's documented chat form (BITNET.md): <BOS>Role: content<|eot_id|>... then "Assistant: ".
# Used only when the folder has no template. Expressions only, so whitespace control cannot change the output.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# tokenizer_config.json keys transformers exposes to templates as its special_tokens_map.
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2 / Llama 3 byte-level alphabet: printable character -> the byte it stands for."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


_CHAR_TO_BYTE = _byte_alphabet()


# ---------------------------------------------------------------------------------------------------------------
# files


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _token_content(value: Any) -> str | None:
    """A special-token entry of tokenizer_config.json: a string, or a serialized AddedToken {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _id_list(value: Any) -> list[int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """A model folder's tokenizer. Build with Tokenizer.from_folder(folder).

    bos_id: int | None        the BOS id (tokenizer_config's bos_token, else config.json's bos_token_id)
    stop_ids: frozenset[int]  generation ends on any of these (generation_config.json's eos_token_id, else
                              config.json's, plus tokenizer_config's eos_token when it is a special token)
    vocab_size: int           ids are 0 .. vocab_size-1, added tokens included
    chat_template: str        the jinja template render_chat uses (DEFAULT_CHAT_TEMPLATE when the folder has none)
    """

    def __init__(self, backend, *, bos_token: str | None = None, eos_token: str | None = None,
                 special_tokens: Mapping[str, str] | None = None, chat_template: str | None = None,
                 eos_token_ids: Iterable[int] = (), bos_token_id: int | None = None, byte_level: bool = True,
                 source: str = "tokenizer"):
        import jinja2

        self._tok = backend
        self._source = source
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self._special_ids = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        self._byte_level = byte_level
        self._bytes_cache: dict[int, bytes] = {}

        def token_id(content: str | None, what: str) -> int | None:
            if content is None:
                return None
            i = backend.token_to_id(content)
            if i is None:
                raise CheckpointError(f"{source}: {what} {content!r} is not in the vocabulary of {TOKENIZER_FILE}")
            return i

        self.bos_id: int | None = token_id(bos_token, f"{TOKENIZER_CONFIG_FILE} bos_token")
        if self.bos_id is None and bos_token_id is not None:
            self.bos_id = self._check_id(bos_token_id, "bos_token_id")
        if bos_token is None and self.bos_id is not None:
            bos_token = backend.id_to_token(self.bos_id)
        self.bos_token = bos_token

        stops = {self._check_id(i, "eos_token_id") for i in eos_token_ids}
        eos_id = token_id(eos_token, f"{TOKENIZER_CONFIG_FILE} eos_token")
        if eos_id is not None and eos_id in self._special_ids:
            stops.add(eos_id)
        self.eos_token = eos_token
        self.stop_ids: frozenset[int] = frozenset(stops)

        # What transformers passes as its special_tokens_map: only the tokens that are set.
        self._template_vars = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        for key, value in (("bos_token", bos_token), ("eos_token", eos_token)):
            if value is not None:
                self._template_vars.setdefault(key, value)
        self.chat_template: str = chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE
        self.has_chat_template = chat_template is not None
        try:
            self._template = _jinja_environment().from_string(self.chat_template)
        except jinja2.TemplateError as e:
            raise CheckpointError(f"{source}: the chat template does not compile ({_one_line(e)})") from None

    def _check_id(self, i: int, what: str) -> int:
        if not 0 <= i < self.vocab_size:
            raise CheckpointError(f"{self._source}: {what} {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return i

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Tokenizer":
        """Read tokenizer.json (required), tokenizer_config.json, chat_template.jinja, generation_config.json and
        config.json (all optional) from a model folder."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders

        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found — the model folder needs a Hugging Face {TOKENIZER_FILE}")
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise CheckpointError(f"{path}: not a valid tokenizers file ({_one_line(e)})") from None
        byte_level = isinstance(backend.decoder, decoders.ByteLevel)

        cfg_path = folder / TOKENIZER_CONFIG_FILE
        tcfg = read_json(cfg_path, required=False) or {}
        gen = read_json(folder / GENERATION_CONFIG_FILE, required=False) or {}
        model_cfg = read_json(folder / CONFIG_FILE, required=False) or {}

        special = {k: _token_content(tcfg.get(k)) for k in _SPECIAL_TOKEN_KEYS}

        template = None
        jinja_path = folder / CHAT_TEMPLATE_FILE
        if jinja_path.is_file():
            try:
                template = jinja_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{jinja_path}: not readable ({_one_line(e)})") from None
        else:
            t = tcfg.get("chat_template")
            if isinstance(t, list):  # several named templates: transformers uses "default"
                named = {d.get("name"): d.get("template") for d in t if isinstance(d, Mapping)}
                t = named.get("default")
            if t is not None and not isinstance(t, str):
                raise CheckpointError(f"{cfg_path}: chat_template must be a string")
            template = t or None

        eos_key, eos_src = ("eos_token_id", folder / GENERATION_CONFIG_FILE)
        eos_value = gen.get(eos_key)
        if eos_value is None:
            eos_value, eos_src = model_cfg.get(eos_key), folder / CONFIG_FILE
        eos_ids = [] if eos_value is None else _id_list(eos_value)
        if eos_ids is None:
            raise CheckpointError(f"{eos_src}: eos_token_id must be an integer or a list of integers, "
                                  f"not {eos_value!r}")
        vocab = backend.get_vocab_size(with_added_tokens=True)
        if any(not 0 <= i < vocab for i in eos_ids):
            raise CheckpointError(f"{eos_src}: eos_token_id {eos_value} is outside the vocabulary of "
                                  f"{TOKENIZER_FILE} (0..{vocab - 1})")
        bos_value = model_cfg.get("bos_token_id", gen.get("bos_token_id"))
        bos_id = bos_value if isinstance(bos_value, int) and not isinstance(bos_value, bool) else None

        return cls(backend, bos_token=special["bos_token"], eos_token=special["eos_token"], special_tokens=special,
                   chat_template=template, eos_token_ids=eos_ids, bos_token_id=bos_id, byte_level=byte_level,
                   source=str(folder))

    # -- ids <-> text ---------------------------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of text. Special-token strings in text are parsed as those tokens (as in transformers).
        add_bos puts exactly one BOS in front; without it there is none, whatever tokenizer.json's post-processor
        would add."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise CheckpointError(f"{self._source}: the tokenizer has no BOS token")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ids; special tokens are left out unless skip_special=False. Invalid UTF-8 becomes U+FFFD."""
        return self._tok.decode(self._check_ids(ids), skip_special_tokens=skip_special)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        """The bytes one token contributes to decode() (byte-level tokenizers only): b"" for a skipped special."""
        b = self._bytes_cache.get(token_id)
        if b is None:
            self._check_ids((token_id,))
            token = self._tok.id_to_token(token_id) or ""
            # As tokenizers' ByteLevel decoder: a token written in the byte alphabet stands for those bytes; any
            # other token (an added token with characters outside the alphabet) for its own UTF-8.
            try:
                b = bytes([_CHAR_TO_BYTE[c] for c in token])
            except KeyError:
                b = token.encode("utf-8")
            self._bytes_cache[token_id] = b
        if skip_special and token_id in self._special_ids:
            return b""
        return b

    # -- chat -----------------------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, as transformers' apply_chat_template(tokenize=False) renders it."""
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
                                         add_generation_prompt=bool(add_generation_prompt), **self._template_vars)
        except jinja2.TemplateError as e:  # raise_exception() in the template, or a template bug
            raise InputError(f"the chat template refused these messages: {_one_line(e)}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of render_chat(...), as apply_chat_template(tokenize=True) gives them: special tokens in the
        rendered text are parsed, and no BOS is added beyond the one the template writes."""
        return self._tok.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False).ids

    def detokenizer(self, skip_special: bool = True) -> "IncrementalDecoder":
        """A streaming decoder: push ids one at a time, get text as soon as whole characters are complete."""
        return IncrementalDecoder(self, skip_special=skip_special)


# ---------------------------------------------------------------------------------------------------------------
# streaming


class IncrementalDecoder:
    """push(id) -> newly completed text; flush() -> the rest. The pieces concatenate to tokenizer.decode(ids).

    Byte-level tokenizers (Llama 3, BitNet): each token is a fixed byte string; bytes go through Python's
    incremental UTF-8 decoder, which holds back an incomplete character and replaces invalid bytes with U+FFFD
    the way decode() does. O(token length) per push.
    Other decoders (a fallback; BitNet's tokenizer is byte-level): decode a short window of recent ids and emit
    what grew past the previous window's text (the vLLM / transformers TextStreamer scheme), holding back a trailing
    U+FFFD that may still complete. Exact for valid UTF-8; around invalid bytes the U+FFFD count may differ.
    """

    # Window mode: after this many ids with no stable text, emit anyway (the bytes are really invalid).
    MAX_PENDING = 8

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True, byte_level: bool | None = None):
        self._tok = tokenizer
        self._skip = skip_special
        self._byte_level = tokenizer._byte_level if byte_level is None else byte_level
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []  # window mode: context ids then pending ids
        self._read = 0  # window mode: ids[:read] have been emitted

    def push(self, token_id: int) -> str:
        if self._byte_level:
            b = self._tok.token_bytes(int(token_id), self._skip)
            return self._utf8.decode(b) if b else ""
        self._tok._check_ids((token_id,))
        self._ids.append(int(token_id))
        before = self._tok.decode(self._ids[:self._read], self._skip)
        after = self._tok.decode(self._ids, self._skip)
        pending = len(self._ids) - self._read
        if len(after) > len(before) and (not after.endswith("\ufffd") or pending >= self.MAX_PENDING):
            del self._ids[:self._read]  # the newly emitted ids become the next window's context
            self._read = len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        if self._byte_level:
            return self._utf8.decode(b"", final=True)
        before = self._tok.decode(self._ids[:self._read], self._skip)
        after = self._tok.decode(self._ids, self._skip)
        self._ids, self._read = [], 0
        return after[len(before):] if after.startswith(before) else after
