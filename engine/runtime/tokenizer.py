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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from trit.engine.errors import CheckpointError, InputError, one_line
from trit.engine.formats.checkpoint import CONFIG_FILE, GENERATION_CONFIG_FILE, read_json
from trit.engine.runtime.chat_template import ChatTemplate

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
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

# A model with no template whose vocabulary lacks BitNet's <|eot_id|> (1bitLLM's Llama 2 one: base models, trained on
# plain text with no chat form at all) gets a plain transcript that spells no token it does not have, rather than a
# refusal: such a model can still carry on a conversation written as text. BOS, one "Role: content" line per message,
# then "Assistant:" with no space after it: a SentencePiece model writes that space as its reply's first "▁", which
# its decoder drops from the reply's text, and the next turn puts it back (": " + the reply), so the next prompt spells
# what the cached tokens spell. A base model carries on the transcript and writes the user's next line itself, so the
# reply also ends where it starts one (PLAIN_STOP_STRINGS), not only at its EOS.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token is defined else '' }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] | trim + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
PLAIN_STOP_STRINGS = ("\nUser:",)
BITNET_END_OF_TURN = "<|eot_id|>"

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
# the tokenizer


class BaseTokenizer:
    """What a conversation needs of a tokenizer, whoever tokenizes: ids <-> text, the stop ids, the chat template and
    a streaming decoder. Tokenizer (a model folder's tokenizer.json) and the llama.cpp backend's GGUFTokenizer (the
    vocabulary of a GGUF) both build on it.

    vocab_size: int           ids are 0 .. vocab_size-1, added tokens included
    bos_id: int | None        the BOS id, bos_token / eos_token their text (None when the vocabulary has none)
    stop_ids: frozenset[int]  generation ends on any of these
    stop_strings: tuple[str, ...]  and at any of these texts: the end of a turn the template spells without a token
    chat_template: str        the jinja template render_chat uses; has_chat_template: it came with the model
    """

    bos_id: int | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()

    def __init__(self, vocab_size: int, *, byte_level: bool, source: str):
        self.vocab_size = vocab_size
        self._byte_level = byte_level  # IncrementalDecoder: token_bytes() through an incremental UTF-8 decoder
        self._source = source

    def _set_chat_template(self, template: str | None, fallback: str, variables: Mapping[str, str | None],
                           error: type[Exception], source: str | None = None) -> None:
        """source: the file the template came from, named in its errors (default: the tokenizer's source)."""
        self.has_chat_template = template is not None
        self.chat_template: str = template if template is not None else fallback
        self._template = ChatTemplate(self.chat_template, variables, source=source or self._source, error=error)

    def check_chat_template(self) -> None:
        """Render test conversations as `trit import` does: ChatTemplateError (one line naming the template's file)
        when the template fails, goes over its budget, or refuses every conversation shape."""
        self._template.check_renders()

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        raise NotImplementedError

    def encode_continuation(self, text: str) -> list[int]:
        """Token ids of text as it is tokenized in the middle of a longer text: what a prompt's new part costs after
        the cached tokens of the part before it. The same as encode() unless the tokenizer marks a text's start."""
        return self.encode(text)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        raise NotImplementedError

    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        raise NotImplementedError

    def is_special(self, token_id: int) -> bool:
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str | None:
        raise NotImplementedError

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, as transformers' apply_chat_template(tokenize=False) renders it."""
        return self._template.render(messages, add_generation_prompt)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of render_chat(...): special tokens in the rendered text are parsed, and no BOS is added beyond
        the one the template writes."""
        return self.encode(self.render_chat(messages, add_generation_prompt))

    def detokenizer(self, skip_special: bool = True) -> "IncrementalDecoder":
        """A streaming decoder: push ids one at a time, get text as soon as whole characters are complete."""
        return IncrementalDecoder(self, skip_special=skip_special)


class Tokenizer(BaseTokenizer):
    """A model folder's tokenizer. Build with Tokenizer.from_folder(folder).

    bos_id                    tokenizer_config's bos_token, else config.json's bos_token_id
    stop_ids                  generation_config.json's eos_token_id, else config.json's, plus tokenizer_config's
                              eos_token when it is a special token
    chat_template             DEFAULT_CHAT_TEMPLATE when the folder has none, PLAIN_CHAT_TEMPLATE when its
                              vocabulary has no <|eot_id|> either
    """

    def __init__(self, backend, *, bos_token: str | None = None, eos_token: str | None = None,
                 special_tokens: Mapping[str, str] | None = None, chat_template: str | None = None,
                 eos_token_ids: Iterable[int] = (), bos_token_id: int | None = None, byte_level: bool = True,
                 source: str = "tokenizer", chat_template_file: str | None = None):
        super().__init__(backend.get_vocab_size(with_added_tokens=True), byte_level=byte_level, source=source)
        self._tok = backend
        self._special_ids = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        self._bytes_cache: dict[int, bytes] = {}
        self._continuation = None  # the backend without the "▁" it puts at a text's start (encode_continuation)

        def token_id(content: str | None, what: str) -> int | None:
            if content is None:
                return None
            i = backend.token_to_id(content)
            if i is None:
                raise CheckpointError(f"{source}: {what} {content!r} is not in the vocabulary of {TOKENIZER_FILE}")
            return i

        self.bos_id = token_id(bos_token, f"{TOKENIZER_CONFIG_FILE} bos_token")
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
        self.stop_ids = frozenset(stops)

        # What transformers passes as its special_tokens_map: only the tokens that are set.
        variables = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        for key, value in (("bos_token", bos_token), ("eos_token", eos_token)):
            if value is not None:
                variables.setdefault(key, value)
        fallback = DEFAULT_CHAT_TEMPLATE
        if chat_template is None and backend.token_to_id(BITNET_END_OF_TURN) is None:
            fallback, self.stop_strings = PLAIN_CHAT_TEMPLATE, PLAIN_STOP_STRINGS
        self._set_chat_template(chat_template, fallback, variables, CheckpointError, chat_template_file)

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
            raise CheckpointError(f"{path}: not a valid tokenizers file ({one_line(e)})") from None
        byte_level = isinstance(backend.decoder, decoders.ByteLevel)

        cfg_path = folder / TOKENIZER_CONFIG_FILE
        tcfg = read_json(cfg_path, required=False) or {}
        gen = read_json(folder / GENERATION_CONFIG_FILE, required=False) or {}
        model_cfg = read_json(folder / CONFIG_FILE, required=False) or {}

        special = {k: _token_content(tcfg.get(k)) for k in _SPECIAL_TOKEN_KEYS}

        template, template_file = None, None
        jinja_path = folder / CHAT_TEMPLATE_FILE
        if jinja_path.is_file():
            template_file = str(jinja_path)
            try:
                template = jinja_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{jinja_path}: not readable ({one_line(e)})") from None
        else:
            t = tcfg.get("chat_template")
            if isinstance(t, list):  # several named templates: transformers uses "default"
                named = {d.get("name"): d.get("template") for d in t if isinstance(d, Mapping)}
                t = named.get("default")
            if t is not None and not isinstance(t, str):
                raise CheckpointError(f"{cfg_path}: chat_template must be a string")
            template = t or None
            template_file = str(cfg_path) if template is not None else None

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
                   source=str(folder), chat_template_file=template_file)

    # -- ids <-> text ---------------------------------------------------------------------------------------------

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

    def encode_continuation(self, text: str) -> list[int]:
        """SentencePiece-style tokenizers (Llama 2's) put a "▁" in front of every text they encode: a continuation
        must not get one, or the prompt says a space that is not in it."""
        if self._continuation is None:
            self._continuation = _without_start_marker(self._tok)
        return self._continuation.encode(text, add_special_tokens=False).ids

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


def _without_start_marker(backend):
    """The backend, or a copy of it that does not mark the start of a text: Llama 2's legacy normalizer
    (Prepend "▁" then Replace " " -> "▁") without its Prepend, a Metaspace pre-tokenizer with prepend_scheme never."""
    from tokenizers import Tokenizer as Backend

    spec = json.loads(backend.to_str())
    changed = False

    def strip(part):
        nonlocal changed
        if not isinstance(part, dict):
            return part
        if part.get("type") == "Prepend":
            changed = True
            return None
        if part.get("type") == "Metaspace" and part.get("prepend_scheme", "always") != "never":
            changed = True
            return {**part, "prepend_scheme": "never", "add_prefix_space": False}
        if part.get("type") == "Sequence":
            key = "normalizers" if "normalizers" in part else "pretokenizers"
            kept = [q for q in (strip(p) for p in part.get(key, [])) if q is not None]
            return {**part, key: kept}
        return part

    spec["normalizer"] = strip(spec.get("normalizer"))
    spec["pre_tokenizer"] = strip(spec.get("pre_tokenizer"))
    return Backend.from_str(json.dumps(spec)) if changed else backend


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

    def __init__(self, tokenizer: BaseTokenizer, skip_special: bool = True, byte_level: bool | None = None):
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
