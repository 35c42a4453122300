"""What runs a model: the native binding (the only ctypes code), the model and its KV contexts, conversations
with KV reuse across turns, sampling, the tokenizer and chat template."""
