"""llama.cpp's tokenizer for a GGUF's vocabulary, as a trit.engine.runtime.tokenizer.BaseTokenizer."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from trit.engine.errors import InputError
from trit.engine.formats.gguf import GGUFError
from trit.engine.runtime.tokenizer import BaseTokenizer

if TYPE_CHECKING:
    from trit.engine.backends.llamacpp.model import GGUFModel

# Used when the GGUF has no chat template: plain turns, each closed by the EOS token.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] | trim + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class GGUFTokenizer(BaseTokenizer):
    """llama.cpp's tokenizer for the GGUF's vocabulary, with the chat-template rendering (the same sandboxed jinja2
    environment, runtime/chat_template.py) and streaming decoder of every tokenizer (every token is a byte string
    here, so a character split across tokens is held back until it is complete).

    The GGUF's tokenizer.chat_template is rendered with bos_token / eos_token set to the vocabulary's tokens. When
    the vocabulary asks for a BOS (tokenizer.ggml.add_bos_token) and the template does not write it, it is put in
    front, as llama.cpp does. stop_ids: every end-of-generation token llama.cpp knows (EOS, EOT, EOM and the like).
    """

    def __init__(self, model: GGUFModel):
        super().__init__(model.config.vocab_size, byte_level=True, source=str(model.path))
        lib = model._lib
        self._lib, self._vocab = lib, model._vocab
        self._bytes_cache: dict[tuple[int, bool], bytes] = {}
        v = self._vocab

        def valid(i: int) -> int | None:
            return i if 0 <= i < self.vocab_size else None

        self.bos_id = valid(lib.llama_vocab_bos(v))
        self.eos_id: int | None = valid(lib.llama_vocab_eos(v))
        self.eot_id: int | None = valid(lib.llama_vocab_eot(v))
        self.add_bos: bool = bool(lib.llama_vocab_get_add_bos(v)) and self.bos_id is not None
        self.bos_token = self._text(self.bos_id)
        self.eos_token = self._text(self.eos_id if self.eos_id is not None else self.eot_id)
        self.stop_ids = frozenset(i for i in range(self.vocab_size) if lib.llama_vocab_is_eog(v, i))
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                     "pad_token": self._text(valid(lib.llama_vocab_pad(v))),
                     "sep_token": self._text(valid(lib.llama_vocab_sep(v)))}
        self._set_chat_template(model.info.chat_template, FALLBACK_CHAT_TEMPLATE, variables, GGUFError)

    def _lib_vocab(self):
        if self._vocab is None:
            raise InputError(f"{self._source}: the model is closed")
        return self._lib, self._vocab

    def _text(self, token_id: int | None) -> str | None:
        """A token's text as the vocabulary stores it (special tokens read as written in templates)."""
        if token_id is None:
            return None
        lib, v = self._lib_vocab()
        raw = lib.llama_vocab_get_text(v, token_id)
        return raw.decode("utf-8", errors="replace") if raw else None

    # -- ids <-> text ---------------------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of text; special-token strings in it are parsed as those tokens. add_bos puts one BOS in front."""
        lib, v = self._lib_vocab()
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (lib.llama_token * cap)()
            n = lib.llama_tokenize(v, data, len(data), buf, cap, False, True)
            if n >= 0:
                ids = list(buf[:n])
                break
            if -n <= cap:  # not a buffer shortfall
                raise InputError(f"llama.cpp could not tokenize the text ({n})")
            cap = -n
        if add_bos:
            if self.bos_id is None:
                raise GGUFError(f"{self._source}: the vocabulary has no BOS token")
            ids = [self.bos_id, *ids]
        return ids

    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        """The bytes one token spells (b"" for a control token when skip_special)."""
        key = (int(token_id), bool(skip_special))
        b = self._bytes_cache.get(key)
        if b is None:
            self._check_ids((token_id,))
            lib, v = self._lib_vocab()
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = lib.llama_token_to_piece(v, key[0], buf, size, 0, not skip_special)
                if n >= 0:
                    b = buf.raw[:n]
                    break
                size = -n
            self._bytes_cache[key] = b
        return b

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ids; control tokens are left out unless skip_special=False. Invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_bytes(i, skip_special) for i in self._check_ids(ids)).decode("utf-8", "replace")

    def is_special(self, token_id: int) -> bool:
        lib, v = self._lib_vocab()
        return bool(lib.llama_vocab_get_attr(v, int(token_id)) & lib.LLAMA_TOKEN_ATTR_CONTROL)

    def id_to_token(self, token_id: int) -> str | None:
        return self._text(int(token_id)) if 0 <= int(token_id) < self.vocab_size else None

    # -- chat -----------------------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        text = super().render_chat(messages, add_generation_prompt)
        if self.add_bos and self.bos_token and not text.startswith(self.bos_token):
            text = self.bos_token + text
        return text
