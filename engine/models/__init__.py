"""Models on disk: the installed-model registry, downloads from the Hugging Face Hub (the only network code)
and imports from a folder or file."""
