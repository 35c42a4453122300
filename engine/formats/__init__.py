"""Files and the bytes in them: safetensors, the checked checkpoint, ternary packing, the weights derived once
beside a model, GGUF headers and GGUF export."""
