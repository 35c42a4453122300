"""Tiny GGUF files for the llama.cpp backend's tests, written with the `gguf` package.

write_llama(path)   a `llama`-architecture model with random weights, a byte-level BPE ("gpt2") vocabulary of 256
                    byte tokens, a few merges and Llama 3 style special tokens, and a Llama 3 style chat template.
write_arch(path, a) a header-only GGUF claiming architecture `a` (enough for the checks that refuse it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOS, EOS, EOT, START_HEADER, END_HEADER = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                                           "<|start_header_id|>", "<|end_header_id|>")
SPECIALS = (BOS, EOS, EOT, START_HEADER, END_HEADER)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Pairs merged in this order (GPT-2's byte alphabet: "Ġ" is a space, "Ċ" a newline).
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n"), ("Ġ", "a"), ("r", "e"),
    ("e", "n"), ("Ġ", "s"), ("Ġ", "w"), ("o", "r"), ("a", "t"), ("Ġ", "c"), ("i", "s"), ("Ġ", "i"), ("e", "s"),
    ("Ġ", "o"), ("Ġ", "b"), ("a", "r"), ("Ġ", "f"), ("Ġ", "m"), ("l", "l"), ("Ġ", "p"), ("o", "u"), ("Ġ", "h"),
    ("u", "s"), ("e", "r"), ("a", "s"), ("Ġ", "y"), ("Ġy", "ou"), ("Ġ", "n"), ("s", "t"), ("Ġ", "d"), ("i", "t"),
    ("Ċ", "Ċ"), ("u", "s"), ("s", "y"), ("Ġs", "y"), ("Ġsy", "st"), ("e", "m"), ("Ġsyst", "em"), ("a", "ss"),
    ("s", "s"), ("a", "ss"), ("i", "st"), ("ass", "ist"), ("assist", "an"), ("assistan", "t"), ("u", "se"),
    ("s", "e"), ("u", "se"), ("use", "r"), ("Ã", "©"),  # "é" as one token
]


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of the tiny BPE vocabulary: bytes, merged tokens, then the specials."""
    import gguf

    tokens = byte_alphabet()
    merges = []
    for a, b in MERGES:
        if a + b not in tokens and a in tokens and b in tokens:
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    tokens += SPECIALS
    types += [int(gguf.TokenType.CONTROL)] * len(SPECIALS)
    return tokens, types, merges


def write_llama(path: str | Path, *, seed: int = 0, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                n_head_kv: int = 2, n_ff: int = 128, context_length: int = 512,
                chat_template: str | None = CHAT_TEMPLATE, sampling: dict | None = None, name: str = "tiny-llama",
                logit_scale: float = 3.0) -> Path:
    """A llama model with random float32 weights (float16 embedding) that llama.cpp loads and runs."""
    import gguf

    path = Path(path)
    tokens, types, merges = vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(path, "llama")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(BOS))
    w.add_eos_token_id(tokens.index(EOS))
    w.add_eot_token_id(tokens.index(EOT))
    w.add_add_bos_token(True)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, value in (sampling or {}).items():
        getattr(w, f"add_sampling_{key}")(value)

    w.add_tensor("token_embd.weight", normal(vocab, n_embd).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    head = normal(vocab, n_embd, scale=logit_scale / np.sqrt(n_embd))
    head[[tokens.index(t) for t in SPECIALS]] = 0  # logit 0 among logits of spread 3: replies rarely end at once
    w.add_tensor("output.weight", head)
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(p + "attn_q.weight", normal(n_head * head_dim, n_embd, scale=1 / np.sqrt(n_embd)))
        w.add_tensor(p + "attn_k.weight", normal(n_head_kv * head_dim, n_embd, scale=1 / np.sqrt(n_embd)))
        w.add_tensor(p + "attn_v.weight", normal(n_head_kv * head_dim, n_embd, scale=1 / np.sqrt(n_embd)))
        w.add_tensor(p + "attn_output.weight", normal(n_embd, n_head * head_dim, scale=1 / np.sqrt(n_embd)))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(p + "ffn_gate.weight", normal(n_ff, n_embd, scale=1 / np.sqrt(n_embd)))
        w.add_tensor(p + "ffn_up.weight", normal(n_ff, n_embd, scale=1 / np.sqrt(n_embd)))
        w.add_tensor(p + "ffn_down.weight", normal(n_embd, n_ff, scale=1 / np.sqrt(n_ff)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_arch(path: str | Path, architecture: str, *, n_embd: int = 256, with_vocabulary: bool = False) -> Path:
    """A small GGUF whose header names `architecture`, with one tensor (and the tiny vocabulary if asked)."""
    import gguf

    path = Path(path)
    w = gguf.GGUFWriter(path, architecture)
    w.add_name(f"tiny-{architecture}")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    if with_vocabulary:
        tokens, types, merges = vocabulary()
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    w.add_tensor("token_embd.weight", np.zeros((8, n_embd), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
