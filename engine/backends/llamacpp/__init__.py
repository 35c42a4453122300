"""Any GGUF model (Llama 3.2, Qwen, Gemma, …) through llama-cpp-python, behind the same chat interface as Trit's own
engine: `trit.load("model.gguf")` returns a GGUFModel (model.py) with .chat / .default_params / .close like
runtime.model.Model.

    info = check_gguf("model.gguf")               # header only, no llama.cpp: architecture, context, vocabulary…
    with trit.load("model.gguf") as model:         # model.backend == "llama.cpp"
        for event in model.chat([{"role": "user", "content": "Hi"}], model.default_params(seed=1)):
            ...

One conversation engine for both backends: runtime.chat.Chat drives a KV context through tokens / n_ctx / max_batch /
eval / truncate (runtime.chat.KVContext); LlamaCppContext implements it on a llama_context, so prompt fitting, KV
reuse across turns, sampling (runtime.sampling.Sampler on the last logits llama.cpp computes), stop strings and
cancelling are exactly the native engine's. What comes from the GGUF: the chat template (`tokenizer.chat_template`,
rendered by runtime.chat_template as every template is), BOS/EOS/EOT, the vocabulary (llama.cpp tokenizes and
detokenizes, tokenizer.py) and the sampling defaults (`general.sampling.*`).

library.py loads llama-cpp-python when first needed; formats/gguf.py reads a GGUF's header without it.

Only the C API mirrored by llama_cpp.llama_cpp (llama.h) is used, not llama-cpp-python's Llama class: one
llama_model, and one llama_context per cached conversation (its KV cache and nothing else). llama.cpp's log goes to a
callback that keeps error lines for messages and prints nothing.

BitNet GGUFs are refused: llama.cpp's bitnet graph computes the FFN with SiLU where BitNet b1.58 uses relu², so
its text is wrong. Trit's own engine runs BitNet from the packed Hugging Face checkpoint.
"""
