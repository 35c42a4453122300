"""What ships inside the Trit package, beside the code.

DEMO_MODEL is a complete model folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json): a tiny BitNet b1.58 model that the project trained itself on Jane Austen's novels with
assets/demo/train.py, so that `trit` answers before anything is downloaded. It is a demo, and must be shown as one:
its folder holds trit-demo.json with "demo": true and the name to display (`demo_info`).
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEMO_MODEL: Path = ASSETS / "demo" / "model"
DEMO_HELDOUT: Path = ASSETS / "demo" / "heldout.txt"  # text the demo model never saw while training
DEMO_INFO_FILE = "trit-demo.json"


def demo_info(folder: str | Path = DEMO_MODEL) -> dict | None:
    """The demo record of a model folder (name, data source, training run, perplexities), or None when the folder
    is not a demo model."""
    path = Path(folder) / DEMO_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("demo") is True else None
